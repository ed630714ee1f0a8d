// cityos-bench: small measuring tools shared by scenarios.
#ifndef CITYOS_TESTS_BENCH_CITYOS_BENCH_MEASURE_H_
#define CITYOS_TESTS_BENCH_CITYOS_BENCH_MEASURE_H_

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "scenario.h"

namespace cityos::bench {

// Monotonic nanoseconds.
inline int64_t NowNanos() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// events / seconds, 0 when no time passed.
inline double Rate(uint64_t events, int64_t nanos) {
  return nanos <= 0
             ? 0.0
             : static_cast<double>(events) * 1e9 / static_cast<double>(nanos);
}

// Latency samples in nanoseconds, written concurrently into a fixed capacity
// (samples beyond it are counted but not kept). Thread-safe Add().
class LatencySamples {
 public:
  explicit LatencySamples(size_t capacity) : samples_(capacity) {}
  void Add(int64_t nanos) {
    size_t i = next_.fetch_add(1, std::memory_order_relaxed);
    if (i < samples_.size()) samples_[i] = nanos;
  }
  // Sorts the kept samples; call once all writers are done.
  void Finish();
  size_t count() const;  // kept
  // Nearest-rank percentile (0 < p <= 100) in microseconds; 0 when empty.
  // REQUIRES: Finish() was called.
  double PercentileMicros(double p) const;
  // Adds p50_us, p99_us, p999_us, max_us (prefixed by `prefix`) to `out`.
  void AddTo(nlohmann::ordered_json& out, const std::string& prefix = "") const;

 private:
  std::vector<int64_t> samples_;
  std::atomic<size_t> next_{0};
};

// Counting semaphore bounding what one publisher keeps in flight.
class Window {
 public:
  explicit Window(size_t slots) : free_(slots), slots_(slots) {}
  void Acquire();
  void Release();
  // Waits until every slot is free again, or `timeout`; false on timeout.
  bool WaitIdle(absl::Duration timeout);

 private:
  absl::Mutex mu_;
  size_t free_ ABSL_GUARDED_BY(mu_);
  const size_t slots_;
};

// The process's resident set size in bytes (/proc/self/statm), 0 if unknown.
uint64_t ResidentBytes();

// Bytes the allocator has handed out and not yet taken back (glibc
// mallinfo2: arena in use plus mmapped chunks).
uint64_t HeapInUseBytes();

// Gives freed heap memory back to the kernel (malloc_trim), so that a
// following RSS baseline is not inflated by earlier scenarios.
void TrimHeap();

// The 1-minute load average (/proc/loadavg), -1 if unknown.
double LoadAverage1m();

// Samples ResidentBytes() every `period` on its own thread and keeps the
// highest value, from construction until Stop().
class RssSampler {
 public:
  explicit RssSampler(absl::Duration period);
  ~RssSampler();
  // Stops sampling; returns the peak seen.
  uint64_t Stop();

 private:
  struct State;
  std::shared_ptr<State> state_;
};

// Rounds to `digits` decimals (for readable JSON).
double Round(double v, int digits);

}  // namespace cityos::bench

#endif  // CITYOS_TESTS_BENCH_CITYOS_BENCH_MEASURE_H_
