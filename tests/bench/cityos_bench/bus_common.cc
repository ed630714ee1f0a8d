#include "bus_common.h"

#include <sys/resource.h>
#include <time.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "measure.h"

namespace cityos::bench {

const Principal& BenchPrincipal() {
  static const Principal* p =
      new Principal{.trust_domain = "bench.city",
                    .org = "bench",
                    .kind = PrincipalKind::kService,
                    .name = "pub",
                    .roles = {"admin"}};
  return *p;
}

absl::StatusOr<std::unique_ptr<ScopedBus>> ScopedBus::Open(
    BenchContext& ctx, std::string_view name) {
  absl::StatusOr<std::string> dir = ctx.NewDir(name);
  if (!dir.ok()) return dir.status();
  auto scoped = std::unique_ptr<ScopedBus>(new ScopedBus(ctx, *dir));
  absl::StatusOr<std::unique_ptr<Bus>> bus =
      Bus::Open({.data_dir = *dir + "/bus"});
  if (!bus.ok()) return bus.status();
  scoped->bus_ = std::move(*bus);
  return scoped;
}

ScopedBus::~ScopedBus() {
  if (bus_ != nullptr) {
    bus_->Close().IgnoreError();
    bus_.reset();
  }
  ctx_.RemoveDir(dir_);
}

absl::StatusOr<absl::Duration> ScopedBus::Reopen() {
  if (absl::Status s = bus_->Close(); !s.ok()) return s;
  bus_.reset();
  absl::Time start = absl::Now();
  absl::StatusOr<std::unique_ptr<Bus>> bus =
      Bus::Open({.data_dir = dir_ + "/bus"});
  if (!bus.ok()) return bus.status();
  bus_ = std::move(*bus);
  return absl::Now() - start;
}

void WaitIdleOrDie(Window& window, std::string_view what) {
  // Callbacks still pending refer to the caller's stack: never return early.
  if (!window.WaitIdle(absl::Seconds(120))) {
    std::fprintf(
        stderr, "cityos-bench: %.*s: publishes not acknowledged within 120 s\n",
        static_cast<int>(what.size()), what.data());
    std::abort();
  }
}

std::vector<std::shared_ptr<const event::v1::Event>> SharedBatch(
    const std::shared_ptr<const event::v1::Event>& event, size_t n) {
  return std::vector<std::shared_ptr<const event::v1::Event>>(n, event);
}

absl::StatusOr<uint64_t> Prefill(BenchContext& ctx, Bus& bus,
                                 const event::v1::Event& event,
                                 uint64_t events) {
  const size_t batch = ctx.options().batch;
  const auto shared = std::make_shared<const event::v1::Event>(event);
  Window window(8);
  std::atomic<uint64_t> acked{0};
  absl::Mutex mu;
  absl::Status first_error;
  const absl::Time deadline = absl::Now() + ctx.options().max_time;
  uint64_t sent = 0;
  while (sent < events && absl::Now() < deadline) {
    size_t n = static_cast<size_t>(std::min<uint64_t>(batch, events - sent));
    window.Acquire();
    bus.PublishSharedAsync(BenchPrincipal(), SharedBatch(shared, n),
                     [&, n](absl::StatusOr<std::vector<PublishResult>> r) {
                       if (r.ok()) {
                         acked += n;
                       } else {
                         absl::MutexLock lock(&mu);
                         if (first_error.ok()) first_error = r.status();
                       }
                       window.Release();
                     });
    sent += n;
    absl::MutexLock lock(&mu);
    if (!first_error.ok()) break;
  }
  WaitIdleOrDie(window, "prefill");
  absl::MutexLock lock(&mu);
  if (!first_error.ok()) return first_error;
  return acked.load();
}

double ProcessCpuSeconds() {
  struct rusage u {};
  getrusage(RUSAGE_SELF, &u);
  return static_cast<double>(u.ru_utime.tv_sec + u.ru_stime.tv_sec) +
         static_cast<double>(u.ru_utime.tv_usec + u.ru_stime.tv_usec) / 1e6;
}

double ThreadCpuSeconds() {
  timespec t{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
  return static_cast<double>(t.tv_sec) + static_cast<double>(t.tv_nsec) / 1e9;
}

}  // namespace cityos::bench
