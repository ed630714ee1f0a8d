// Internal: the bounded queue of one live subscriber. Publishers push without
// ever waiting; when the queue is full the event is dropped for this
// subscriber only and counted, and the subscriber learns the count on its
// next read. Memory per subscriber is bounded by `capacity` pointers (the
// messages themselves are shared by every subscriber).
//
// The hand-off (docs/benchmarks.md, "In-process hand-off"):
//  - The ring is read without a lock: publishers (serialized among themselves
//    by `push_mu_`) publish a new `tail_` with a sequentially consistent
//    store (which also releases the slots written before it; see Sleep() for
//    why seq_cst), the reader (serialized by `pop_mu_`) publishes `head_`
//    with a release store. A publisher never waits for the reader, only for
//    another publisher of the same queue.
//  - One reader at a time: a second thread calling Pop while the first
//    waits waits for the first's whole wait (wait_turn_mu_), then for its own.
//  - A reader that finds the queue empty announces that it sleeps
//    (`sleep_state_`) before it checks the queue a last time; a publisher
//    wakes it (futex, through the condition variable) only when it sees that
//    announcement, and only the first such publisher does. Both sides store
//    and then load with sequentially consistent operations, so either the
//    reader sees the new tail or the publisher sees the sleeper: no lost
//    wake-up.
//  - Before it sleeps, the reader may spin for a short, adaptive time
//    (BusOptions::reader_spin at most; 0 never spins), but only while the
//    readers of the process leave a usable CPU to spare (see SpinAllowed):
//    otherwise spinning would take the CPU that the publisher and the other
//    readers need.
//  - A reader that does not ask for the missed count (missed == nullptr) is
//    not woken by drops: the count waits for the next caller that asks.
#ifndef CITYOS_SRC_BUS_LIVE_QUEUE_H_
#define CITYOS_SRC_BUS_LIVE_QUEUE_H_

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "cityos/bus.h"
#include "cityos/metrics.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

namespace cityos::bus_internal {

// Spinning policy shared by every live queue of the process.
struct LiveQueueSpin {
  // Live queues whose reader has blocked in Pop at least once and that are not
  // closed yet: the threads that may want a CPU to spin on.
  static std::atomic<int>& Readers() {
    static std::atomic<int> readers{0};
    return readers;
  }
  // Readers spinning right now.
  static std::atomic<int>& Spinners() {
    static std::atomic<int> spinners{0};
    return spinners;
  }
  // The CPUs this process may run on (CPU_COUNT of sched_getaffinity, so a
  // container's or taskset's cpuset counts, not the machine's), computed once;
  // at least 1. In live_queue.cc.
  static int UsableCpus();
  // A reader spins only while the readers of the process, and the spinners
  // among them, leave at least one usable CPU for everyone else (the
  // publishers): with 2 usable CPUs one reader may spin, two may not.
  static int MaxSpinners() {
    static const int max = UsableCpus() - 1;
    return max;
  }
  static bool SpinAllowed() {
    return Readers().load(std::memory_order_relaxed) <= MaxSpinners() &&
           Spinners().load(std::memory_order_relaxed) < MaxSpinners();
  }
  static void Pause() {
#if defined(__x86_64__) || defined(__i386__)
    _mm_pause();
#elif defined(__aarch64__)
    asm volatile("yield" ::: "memory");
#endif
  }
  // The shortest spin (or the whole budget when BusOptions::reader_spin is
  // shorter). The longest is BusOptions::reader_spin (default 50 us; a batch
  // of 64 events takes a publisher about 10-20 us); a spin that fails halves
  // the next one, down to nothing (then one in kProbeEvery waits probes again
  // with the shortest).
  static constexpr int64_t kMinSpinNanos = 2'000;
  static constexpr uint32_t kProbeEvery = 64;
};

class LiveQueue {
 public:
  // `dropped` counts events dropped because the queue was full (for the
  // process metrics); a default Counter counts nothing. `reader_spin` is the
  // longest spin before the reader sleeps (BusOptions::reader_spin; zero or
  // less never spins, more than BusOptions::kMaxReaderSpin counts as that).
  explicit LiveQueue(size_t capacity, Counter dropped = Counter(),
                     absl::Duration reader_spin = absl::Microseconds(50))
      : capacity_(capacity),
        ring_(capacity),
        dropped_(dropped),
        max_spin_nanos_(std::clamp<int64_t>(
            absl::ToInt64Nanoseconds(reader_spin), 0,
            absl::ToInt64Nanoseconds(BusOptions::kMaxReaderSpin))),
        min_spin_nanos_(std::min(max_spin_nanos_, LiveQueueSpin::kMinSpinNanos)),
        spin_nanos_(max_spin_nanos_) {}

  ~LiveQueue() { Unregister(); }

  LiveQueue(const LiveQueue&) = delete;
  LiveQueue& operator=(const LiveQueue&) = delete;

  // Moves in what fits; counts the rest as missed. Never waits for the reader.
  void Push(absl::Span<MessagePtr> messages) {
    if (messages.empty()) return;
    uint64_t dropped = 0;
    {
      std::lock_guard<std::mutex> lock(push_mu_);
      if (ended_.load(std::memory_order_relaxed)) return;  // set under push_mu_
      const uint64_t tail = tail_.load(std::memory_order_relaxed);
      const uint64_t head = head_.load(std::memory_order_acquire);
      const uint64_t room = capacity_ - (tail - head);
      const size_t n = static_cast<size_t>(std::min<uint64_t>(room, messages.size()));
      dropped = messages.size() - n;
      size_t slot = static_cast<size_t>(tail % capacity_);
      for (size_t i = 0; i < n; ++i) {
        ring_[slot] = std::move(messages[i]);
        if (++slot == capacity_) slot = 0;
      }
      // Sequentially consistent, as is the reader's announcement in Sleep():
      // either the reader's check sees this, or the load of sleep_state_
      // below sees the reader (x86: one locked instruction per batch).
      if (n > 0) tail_.store(tail + n, std::memory_order_seq_cst);
      if (dropped > 0) missed_.fetch_add(dropped, std::memory_order_seq_cst);
    }
    if (dropped > 0) dropped_.Add(dropped);
    // Only the first publisher to see the reader's announcement wakes it;
    // later ones leave the wake-up in flight alone (the reader announces
    // itself again, and re-checks, before it sleeps again).
    uint32_t state = sleep_state_.load(std::memory_order_seq_cst);
    if (state == kAsleep &&
        sleep_state_.compare_exchange_strong(state, kWoken, std::memory_order_seq_cst)) {
      WakeAll();
    }
  }

  // Pops up to `max` into `out`, waiting up to `timeout` (InfiniteDuration:
  // no limit) for the first, or for a missed count when `missed` is given.
  // Without `missed`, drops neither end the wait nor are reset: the count
  // waits for the next caller that asks. One reader at a time: a concurrent
  // second caller waits until the first's wait ends, then waits itself.
  absl::Status Pop(size_t max, absl::Duration timeout, std::vector<Delivery>* out,
                   uint64_t* missed) {
    const bool with_missed = missed != nullptr;
    if (timeout > absl::ZeroDuration() && !Ready(with_missed)) Wait(timeout, with_missed);
    std::lock_guard<std::mutex> lock(pop_mu_);
    // Before the ring: Close and Terminate set it, then discard the ring.
    const bool ended = ended_.load(std::memory_order_acquire);
    // Without `missed` the count stays for the next caller that asks.
    if (missed != nullptr) *missed = missed_.exchange(0, std::memory_order_acq_rel);
    const uint64_t head = head_.load(std::memory_order_relaxed);
    const uint64_t tail = tail_.load(std::memory_order_acquire);
    const size_t n = static_cast<size_t>(std::min<uint64_t>(max, tail - head));
    size_t slot = static_cast<size_t>(head % capacity_);
    for (size_t i = 0; i < n; ++i) {
      out->push_back(Delivery{std::move(ring_[slot]), 1});
      if (++slot == capacity_) slot = 0;
    }
    if (n > 0) {
      head_.store(head + n, std::memory_order_release);
      return absl::OkStatus();
    }
    if (ended) {
      if (closed_) return absl::CancelledError("subscription closed");
      return end_;
    }
    return absl::OkStatus();
  }

  void Close() {
    {
      std::lock_guard<std::mutex> push(push_mu_);
      std::lock_guard<std::mutex> pop(pop_mu_);
      closed_ = true;
      EndLocked();
    }
    WakeAll();
    Unregister();
  }

  // Ends the subscription with `reason`; queued events are discarded.
  void Terminate(absl::Status reason) {
    {
      std::lock_guard<std::mutex> push(push_mu_);
      std::lock_guard<std::mutex> pop(pop_mu_);
      if (end_.ok()) end_ = std::move(reason);
      EndLocked();
    }
    WakeAll();
    Unregister();
  }

  // Queued events. head_ and tail_ are read one after the other, so while
  // both move the difference may briefly exceed the capacity: clamped.
  size_t depth() const {
    const uint64_t head = head_.load(std::memory_order_acquire);
    const uint64_t tail = tail_.load(std::memory_order_acquire);
    return tail >= head ? static_cast<size_t>(std::min<uint64_t>(tail - head, capacity_)) : 0;
  }

  // For tests: how many Pop calls waited (spun or slept), and spun.
  uint64_t waits() const { return waits_.load(std::memory_order_relaxed); }
  uint64_t spins() const { return spins_.load(std::memory_order_relaxed); }

 private:
  // Something for the reader: events, the end, or (when the reader asks for
  // it) a missed count. Sequentially consistent loads (plain loads on x86),
  // for Sleep().
  bool Ready(bool with_missed) const {
    return tail_.load(std::memory_order_seq_cst) != head_.load(std::memory_order_seq_cst) ||
           (with_missed && missed_.load(std::memory_order_seq_cst) > 0) ||
           ended_.load(std::memory_order_seq_cst);
  }

  // Timeouts this long or longer (InfiniteDuration included) wait without a
  // deadline: steady_clock::now() + the timeout would overflow.
  static constexpr absl::Duration kForever = absl::Hours(24 * 365 * 100);

  // Waits until Ready(with_missed) or `timeout` passes: a short spin when
  // allowed, then a sleep.
  void Wait(absl::Duration timeout, bool with_missed) {
    // One waiter at a time (readers may take turns from several threads), so
    // that one announcement in sleep_state_ describes the only sleeper.
    std::lock_guard<std::mutex> turn(wait_turn_mu_);
    if (Ready(with_missed)) return;
    waits_.fetch_add(1, std::memory_order_relaxed);
    if (!registered_.exchange(true, std::memory_order_acq_rel)) {
      if (ended_.load(std::memory_order_acquire)) {
        registered_.store(false, std::memory_order_release);
      } else {
        LiveQueueSpin::Readers().fetch_add(1, std::memory_order_relaxed);
        // Close may have run between the two checks: it unregisters only
        // what it finds registered, so undo it here if needed.
        if (ended_.load(std::memory_order_acquire)) Unregister();
      }
    }
    const auto start = std::chrono::steady_clock::now();
    const bool forever = timeout >= kForever;
    const auto deadline = forever ? std::chrono::steady_clock::time_point::max()
                                  : start + absl::ToChronoNanoseconds(timeout);
    if (Spin(start, deadline, with_missed)) return;
    Sleep(deadline, forever, with_missed);
  }

  // Spins for up to the adaptive budget; true when Ready(with_missed).
  bool Spin(std::chrono::steady_clock::time_point start,
            std::chrono::steady_clock::time_point deadline, bool with_missed) {
    if (max_spin_nanos_ == 0) return false;
    int64_t budget = spin_nanos_.load(std::memory_order_relaxed);
    if (budget == 0) {
      if (waits_since_probe_.fetch_add(1, std::memory_order_relaxed) + 1 <
          LiveQueueSpin::kProbeEvery) {
        return false;
      }
      waits_since_probe_.store(0, std::memory_order_relaxed);
      budget = min_spin_nanos_;
    }
    if (!LiveQueueSpin::SpinAllowed()) return false;
    std::atomic<int>& spinners = LiveQueueSpin::Spinners();
    if (spinners.fetch_add(1, std::memory_order_relaxed) >= LiveQueueSpin::MaxSpinners()) {
      spinners.fetch_sub(1, std::memory_order_relaxed);
      return false;
    }
    spins_.fetch_add(1, std::memory_order_relaxed);
    // `deadline` may be time_point::max(): never added to.
    const auto until = std::min(deadline, start + std::chrono::nanoseconds(budget));
    bool ready = false;
    for (uint32_t i = 1;; ++i) {
      if (Ready(with_missed)) {
        ready = true;
        break;
      }
      LiveQueueSpin::Pause();
      // The clock and the reader count every 16 pauses (about a µs).
      if (i % 16 == 0 &&
          (std::chrono::steady_clock::now() >= until ||
           LiveQueueSpin::Readers().load(std::memory_order_relaxed) >
               LiveQueueSpin::MaxSpinners())) {
        break;
      }
    }
    spinners.fetch_sub(1, std::memory_order_relaxed);
    spin_nanos_.store(ready                         ? max_spin_nanos_
                      : budget / 2 >= min_spin_nanos_ ? budget / 2
                                                      : 0,
                      std::memory_order_relaxed);
    return ready;
  }

  // Sleeps until Ready(with_missed), or `deadline` unless `forever`. A
  // wake-up that finds nothing the reader waits for (a drop, when it does not
  // ask for the missed count) sleeps again.
  void Sleep(std::chrono::steady_clock::time_point deadline, bool forever,
             bool with_missed) {
    std::unique_lock<std::mutex> lock(wait_mu_);
    while (true) {
      // Announced (again after each wake-up, so that a publisher that found
      // the reader already woken and skipped its wake-up is seen here), then
      // checked; all sequentially consistent, as in Push().
      sleep_state_.store(kAsleep, std::memory_order_seq_cst);
      if (Ready(with_missed)) break;
      if (forever) {
        cv_.wait(lock);
      } else if (cv_.wait_until(lock, deadline) == std::cv_status::timeout) {
        break;
      }
    }
    sleep_state_.store(kAwake, std::memory_order_relaxed);
  }

  void WakeAll() {
    // Taking the mutex orders this after a sleeper's last check: it is then
    // either blocked in wait (and notified) or has not announced itself yet
    // (and will see what was published before this call).
    { std::lock_guard<std::mutex> lock(wait_mu_); }
    cv_.notify_all();
  }

  // Under push_mu_ and pop_mu_.
  void EndLocked() {
    ended_.store(true, std::memory_order_release);
    uint64_t head = head_.load(std::memory_order_relaxed);
    const uint64_t tail = tail_.load(std::memory_order_relaxed);
    size_t slot = static_cast<size_t>(head % capacity_);
    for (; head != tail; ++head) {
      ring_[slot].reset();
      if (++slot == capacity_) slot = 0;
    }
    head_.store(tail, std::memory_order_release);
  }

  void Unregister() {
    if (registered_.exchange(false, std::memory_order_acq_rel)) {
      LiveQueueSpin::Readers().fetch_sub(1, std::memory_order_relaxed);
    }
  }

  const size_t capacity_;
  std::vector<MessagePtr> ring_;  // slots [head_, tail_) modulo capacity_ are queued
  const Counter dropped_;

  // Written by publishers (under push_mu_) / by the reader (under pop_mu_).
  alignas(64) std::atomic<uint64_t> tail_{0};
  alignas(64) std::atomic<uint64_t> head_{0};
  alignas(64) std::atomic<uint64_t> missed_{0};
  std::atomic<bool> ended_{false};  // closed or terminated; set under both mutexes
  // The reader's announcement: kAsleep while it may block in Sleep(), kWoken
  // once a publisher has taken it upon itself to wake it.
  static constexpr uint32_t kAwake = 0, kAsleep = 1, kWoken = 2;
  std::atomic<uint32_t> sleep_state_{kAwake};

  std::mutex push_mu_;
  alignas(64) std::mutex pop_mu_;
  bool closed_ = false;  // under push_mu_ and pop_mu_ (written), either (read)
  absl::Status end_;     // likewise; OK while active

  std::mutex wait_turn_mu_;
  std::mutex wait_mu_;
  std::condition_variable cv_;
  std::atomic<bool> registered_{false};  // counted in LiveQueueSpin::Readers()
  // The reader's adaptive spin, within [min_spin_nanos_, max_spin_nanos_] or
  // 0 (atomic only because readers may take turns from different threads).
  const int64_t max_spin_nanos_;
  const int64_t min_spin_nanos_;
  std::atomic<int64_t> spin_nanos_;
  std::atomic<uint32_t> waits_since_probe_{0};
  std::atomic<uint64_t> waits_{0};  // for tests
  std::atomic<uint64_t> spins_{0};  // likewise
};

}  // namespace cityos::bus_internal

#endif  // CITYOS_SRC_BUS_LIVE_QUEUE_H_
