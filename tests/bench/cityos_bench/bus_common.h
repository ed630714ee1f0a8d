// cityos-bench: helpers shared by the bus scenario groups.
#ifndef CITYOS_TESTS_BENCH_CITYOS_BENCH_BUS_COMMON_H_
#define CITYOS_TESTS_BENCH_CITYOS_BENCH_BUS_COMMON_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "cityos/bus.h"
#include "cityos/principal.h"
#include "measure.h"
#include "scenario.h"

namespace cityos::bench {

// The principal every scenario publishes and subscribes as.
const Principal& BenchPrincipal();

// A Bus on a fresh directory under the run's root; closed and its directory
// removed on destruction.
class ScopedBus {
 public:
  static absl::StatusOr<std::unique_ptr<ScopedBus>> Open(BenchContext& ctx,
                                                         std::string_view name);
  ~ScopedBus();

  Bus* bus() const { return bus_.get(); }
  const std::string& dir() const { return dir_; }
  // Closes and reopens the bus on the same directory (recovery runs again; the
  // bus's own caches start empty). Returns how long Open took.
  absl::StatusOr<absl::Duration> Reopen();

 private:
  ScopedBus(BenchContext& ctx, std::string dir)
      : ctx_(ctx), dir_(std::move(dir)) {}
  BenchContext& ctx_;
  std::string dir_;
  std::unique_ptr<Bus> bus_;
};

// `n` references to one shared event (for Bus::PublishShared*).
std::vector<std::shared_ptr<const event::v1::Event>> SharedBatch(
    const std::shared_ptr<const event::v1::Event>& event, size_t n);

// Waits until every slot of `window` is free; aborts the run after 120 s (a
// hung bus), since pending callbacks refer to the caller's stack.
void WaitIdleOrDie(Window& window, std::string_view what);

// Stores up to `events` copies of `event` with PublishAsync (batches of
// ctx.options().batch, 8 in flight), stopping after ctx.options().max_time.
// Returns how many were acknowledged.
absl::StatusOr<uint64_t> Prefill(BenchContext& ctx, Bus& bus,
                                 const event::v1::Event& event,
                                 uint64_t events);

// CPU seconds this process has used (all threads, user + system), and the
// calling thread's.
double ProcessCpuSeconds();
double ThreadCpuSeconds();

}  // namespace cityos::bench

#endif  // CITYOS_TESTS_BENCH_CITYOS_BENCH_BUS_COMMON_H_
