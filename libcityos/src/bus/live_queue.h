// Internal: the bounded queue of one live subscriber. Publishers push without
// ever waiting; when the queue is full the event is dropped for this
// subscriber only and counted, and the subscriber learns the count on its
// next read. Memory per subscriber is bounded by `capacity` pointers (the
// messages themselves are shared by every subscriber).
#ifndef CITYOS_SRC_BUS_LIVE_QUEUE_H_
#define CITYOS_SRC_BUS_LIVE_QUEUE_H_

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

namespace cityos::bus_internal {

class LiveQueue {
 public:
  // `dropped` counts events dropped because the queue was full (for the
  // process metrics); a default Counter counts nothing.
  explicit LiveQueue(size_t capacity, Counter dropped = Counter())
      : ring_(capacity), dropped_(dropped) {}

  // Moves in what fits; counts the rest as missed. Never blocks for long.
  void Push(absl::Span<MessagePtr> messages) {
    bool wake;
    uint64_t dropped = 0;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (!end_.ok() || closed_) return;
      for (MessagePtr& m : messages) {
        if (size_ == ring_.size()) {
          ++dropped;
          continue;
        }
        ring_[(head_ + size_) % ring_.size()] = std::move(m);
        ++size_;
      }
      missed_ += dropped;
      wake = waiting_;
    }
    if (dropped > 0) dropped_.Add(dropped);
    if (wake) cv_.notify_one();
  }

  // Pops up to `max` into `out`, waiting up to `timeout` for the first.
  absl::Status Pop(size_t max, absl::Duration timeout, std::vector<Delivery>* out,
                   uint64_t* missed) {
    std::unique_lock<std::mutex> lock(mu_);
    if (size_ == 0 && !closed_ && end_.ok() && missed_ == 0 &&
        timeout > absl::ZeroDuration()) {
      waiting_ = true;
      cv_.wait_for(lock, absl::ToChronoNanoseconds(timeout), [this] {
        return size_ > 0 || closed_ || !end_.ok() || missed_ > 0;
      });
      waiting_ = false;
    }
    if (missed != nullptr) {
      *missed = missed_;
      missed_ = 0;
    }
    size_t n = std::min(max, size_);
    for (size_t i = 0; i < n; ++i) {
      out->push_back(Delivery{std::move(ring_[head_]), 1});
      head_ = (head_ + 1) % ring_.size();
    }
    size_ -= n;
    if (n > 0) return absl::OkStatus();
    if (closed_) return absl::CancelledError("subscription closed");
    return end_;
  }

  void Close() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      closed_ = true;
      ReleaseLocked();
    }
    cv_.notify_all();
  }

  // Ends the subscription with `reason`; queued events are discarded.
  void Terminate(absl::Status reason) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (end_.ok()) end_ = std::move(reason);
      ReleaseLocked();
    }
    cv_.notify_all();
  }

  size_t depth() {
    std::lock_guard<std::mutex> lock(mu_);
    return size_;
  }

 private:
  void ReleaseLocked() {
    for (size_t i = 0; i < size_; ++i) ring_[(head_ + i) % ring_.size()].reset();
    size_ = 0;
  }

  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<MessagePtr> ring_;
  size_t head_ = 0;
  size_t size_ = 0;
  uint64_t missed_ = 0;
  bool waiting_ = false;
  bool closed_ = false;
  absl::Status end_;  // OK while active
  const Counter dropped_;
};

}  // namespace cityos::bus_internal

#endif  // CITYOS_SRC_BUS_LIVE_QUEUE_H_
