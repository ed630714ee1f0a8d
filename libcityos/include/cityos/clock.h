// File: cityos/clock.h
//
// A clock interface so that code with timeouts, leases, expiry and retention
// can be tested without sleeping:
//
//   cityos::SimulatedClock clock(absl::FromUnixSeconds(1700000000));
//   lease_table.Expire(clock.Now());
//   clock.Advance(absl::Seconds(30));
#ifndef CITYOS_CLOCK_H_
#define CITYOS_CLOCK_H_

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace cityos {

// Thread-safe source of wall-clock time.
class Clock {
 public:
  virtual ~Clock() = default;
  // The current time.
  virtual absl::Time Now() = 0;
  // The process-wide real clock (absl::Now()). Never deleted.
  static Clock* Real();
};

// A clock that moves only when told to. Thread-safe.
class SimulatedClock final : public Clock {
 public:
  explicit SimulatedClock(absl::Time start = absl::UnixEpoch()) : now_(start) {}
  absl::Time Now() override;
  // Moves the clock forward by `d`. REQUIRES: d >= 0.
  void Advance(absl::Duration d);
  // Sets the time; may move backwards (to test clock steps).
  void Set(absl::Time t);

 private:
  absl::Mutex mu_;
  absl::Time now_ ABSL_GUARDED_BY(mu_);
};

}  // namespace cityos

#endif  // CITYOS_CLOCK_H_
