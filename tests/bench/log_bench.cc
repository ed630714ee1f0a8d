// Benchmarks of the durable segmented log: group-commit append in each
// durability mode with 1, 4 and 16 concurrent publishers (each keeping
// `window` batches in flight, default 8), 256-byte events, batches of 1 or
// 16 events;
// and replay (sequential read) throughput.
//
// Durability 0 is what a bus stream of durability `fsync` runs: the log's
// own kFsync, a two-stage pipeline (its flusher writes each group, its syncer
// fdatasyncs everything written and acknowledges in order; see
// log/segmented_log.h).
//
// Counters: events_per_s, ack_p50_us / ack_p99_us / ack_p999_us (time from
// AppendAsync to its callback, per batch), groups_per_s (write calls),
// syncs_per_s (durability 0: the log's syncer's fdatasync calls).
// The log lives in $CITYOS_BENCH_DIR (default: /var/tmp), which must be on
// the disk being measured (not tmpfs). Run with
// --benchmark_format=json for figures that compare across runs.
#include <stdlib.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <semaphore>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "benchmark/benchmark.h"
#include "log/log_format.h"
#include "log/segmented_log.h"

namespace cityos::log_internal {
namespace {

constexpr size_t kEventBytes = 256;
constexpr auto kRunFor = std::chrono::milliseconds(1500);

int64_t NowNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

std::string NewBenchDir() {
  const char* base = ::getenv("CITYOS_BENCH_DIR");
  std::string tmpl = absl::StrCat(base != nullptr ? base : "/var/tmp",
                                  "/cityos_log_bench_XXXXXX");
  if (::mkdtemp(tmpl.data()) == nullptr) std::abort();
  return tmpl;
}

double Percentile(std::vector<int64_t>& v, double q) {
  if (v.empty()) return 0;
  const size_t k = std::min(v.size() - 1, static_cast<size_t>(q * v.size()));
  std::nth_element(v.begin(), v.begin() + k, v.end());
  return static_cast<double>(v[k]);
}

// Args: durability (0 fsync, 1 interval, 2 none),
// publishers, batch size (events per AppendAsync), window (batches in flight
// per publisher).
void BM_Append(benchmark::State& state) {
  const auto durability = static_cast<Durability>(state.range(0));
  const int publishers = static_cast<int>(state.range(1));
  const int batch = static_cast<int>(state.range(2));
  const int window_size = static_cast<int>(state.range(3));
  const std::string dir = NewBenchDir();
  LogOptions o;
  o.dir = dir;
  o.durability = durability;
  o.sync_interval = absl::Milliseconds(100);
  auto log = std::move(*SegmentedLog::Open(o));
  const std::string payload(kEventBytes, 'e');
  const std::vector<std::string_view> views(batch, payload);
  std::vector<std::vector<int64_t>> latencies(publishers);
  std::atomic<uint64_t> groups{0};
  log->SetAppendListener([&](uint64_t) { groups.fetch_add(1); });
  auto append = [&](absl::AnyInvocable<void(absl::StatusOr<uint64_t>) &&> done) {
    log->AppendAsync(views, std::move(done));
  };
  uint64_t events = 0;
  double seconds = 0;
  for (auto _ : state) {
    std::atomic<uint64_t> acked{0};
    const int64_t start = NowNs();
    const int64_t end =
        start +
        std::chrono::duration_cast<std::chrono::nanoseconds>(kRunFor).count();
    std::vector<std::thread> threads;
    for (int p = 0; p < publishers; ++p) {
      threads.emplace_back([&, p] {
        std::counting_semaphore<> window(window_size);
        std::vector<int64_t>& lat = latencies[p];
        lat.reserve(1 << 20);
        while (NowNs() < end) {
          window.acquire();
          const int64_t t = NowNs();
          append([&, t](absl::StatusOr<uint64_t> r) {
            if (!r.ok()) std::abort();
            lat.push_back(NowNs() - t);  // only the log's acknowledging thread writes
            acked.fetch_add(views.size(), std::memory_order_relaxed);
            window.release();
          });
        }
        for (int i = 0; i < window_size; ++i) window.acquire();
      });
    }
    for (auto& t : threads) t.join();
    seconds = static_cast<double>(NowNs() - start) / 1e9;
    events = acked.load();
    state.SetIterationTime(seconds);
  }
  std::vector<int64_t> all;
  for (auto& v : latencies) all.insert(all.end(), v.begin(), v.end());
  state.counters["events_per_s"] = static_cast<double>(events) / seconds;
  state.counters["groups_per_s"] = static_cast<double>(groups.load()) / seconds;
  if (durability == Durability::kFsync) {
    state.counters["syncs_per_s"] = static_cast<double>(log->syncs_for_test()) / seconds;
  }
  state.counters["ack_p50_us"] = Percentile(all, 0.50) / 1e3;
  state.counters["ack_p99_us"] = Percentile(all, 0.99) / 1e3;
  state.counters["ack_p999_us"] = Percentile(all, 0.999) / 1e3;
  state.SetItemsProcessed(static_cast<int64_t>(events));
  state.SetBytesProcessed(static_cast<int64_t>(events * kEventBytes));
  (void)log->Close();
  log.reset();
  std::filesystem::remove_all(dir);
}

void AppendArgs(benchmark::internal::Benchmark* b) {
  b->ArgNames({"durability", "publishers", "batch", "window"});
  for (int d : {0, 1, 2}) {
    for (int batch : {1, 16}) {
      for (int p : {1, 4, 16}) b->Args({d, p, batch, 8});
    }
  }
  // Deeper pipelines: what group commit sustains when fdatasync is slow.
  b->Args({0, 16, 16, 32});
  b->Args({0, 16, 16, 64});
  // The bus benchmark's shape (batches of 64, 2 in flight per publisher).
  for (int p : {1, 4, 16}) b->Args({0, p, 64, 2});
}
BENCHMARK(BM_Append)
    ->Apply(AppendArgs)
    ->Iterations(1)
    ->UseManualTime()
    ->Unit(benchmark::kMillisecond);

// Replay: one reader over a log of `events` 256-byte records written in
// batches of 64 (page cache warm, as for a consumer catching up).
void BM_Replay(benchmark::State& state) {
  const uint64_t events = static_cast<uint64_t>(state.range(0));
  const std::string dir = NewBenchDir();
  LogOptions o;
  o.dir = dir;
  o.durability = Durability::kNone;
  auto log = std::move(*SegmentedLog::Open(o));
  const std::string payload(kEventBytes, 'r');
  const std::vector<std::string_view> views(64, payload);
  for (uint64_t i = 0; i < events; i += views.size()) {
    if (!log->Append(views).ok()) std::abort();
  }
  uint64_t read = 0;
  for (auto _ : state) {
    auto reader = std::move(*log->NewReader(1));
    LogRecord rec;
    uint64_t n = 0;
    while (*reader->Next(&rec)) ++n;
    if (n != log->LastSequence()) std::abort();
    read += n;
  }
  state.SetItemsProcessed(static_cast<int64_t>(read));
  state.SetBytesProcessed(static_cast<int64_t>(read * kEventBytes));
  state.counters["events_per_s"] = benchmark::Counter(
      static_cast<double>(read), benchmark::Counter::kIsRate);
  (void)log->Close();
  log.reset();
  std::filesystem::remove_all(dir);
}
BENCHMARK(BM_Replay)->Arg(1 << 20)->Unit(benchmark::kMillisecond);

}  // namespace
}  // namespace cityos::log_internal

BENCHMARK_MAIN();
