// File: services/carbon/periods.h
//
// Accounting periods: clock hours, calendar days, months and years in the
// city's time zone (e.g. Asia/Shanghai), as half-open [start, end) instants.
//
//   absl::TimeZone tz;
//   absl::LoadTimeZone("Asia/Shanghai", &tz);
//   Period april = PeriodOf(t, v1::GRANULARITY_MONTH, tz);
//   // 2025-03-31T17:30Z -> [2025-03-31T16:00Z, 2025-04-30T16:00Z)
//
// Pure functions; thread-safe.
#ifndef CITYOS_SERVICES_CARBON_PERIODS_H_
#define CITYOS_SERVICES_CARBON_PERIODS_H_

#include <cstddef>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "cityos/carbon/v1/carbon_events.pb.h"
#include "cityos/common/v1/common.pb.h"

namespace cityos::carbon {

// A half-open interval [start, end).
struct Period {
  absl::Time start;
  absl::Time end;

  bool Contains(absl::Time t) const { return start <= t && t < end; }
  friend bool operator==(const Period& a, const Period& b) {
    return a.start == b.start && a.end == b.end;
  }
  friend bool operator!=(const Period& a, const Period& b) { return !(a == b); }
};

// The period of granularity `g` containing `t` in `tz`. For UNSPECIFIED (or
// an infinite `t`): the empty period {t, t}.
Period PeriodOf(absl::Time t, v1::Granularity g, const absl::TimeZone& tz);

// The period following `p` (which must be a period of `g`).
Period NextPeriod(const Period& p, v1::Granularity g, const absl::TimeZone& tz);

// The periods of `g` overlapping [from, to), oldest first (the first starts
// at or before `from`, the last ends at or after `to`). INVALID_ARGUMENT for
// UNSPECIFIED `g`, an infinite bound, to <= from, or more than `max_periods`
// periods (the message names the count limit).
absl::StatusOr<std::vector<Period>> PeriodsOverlapping(absl::Time from, absl::Time to, v1::Granularity g,
                                                       const absl::TimeZone& tz,
                                                       size_t max_periods = 10000);

// "hour", "day", "month", "year"; "unspecified".
std::string GranularityName(v1::Granularity g);

// The period as a TimeRange proto.
common::v1::TimeRange ToTimeRange(const Period& p);

// Loads `name` (e.g. "Asia/Shanghai"); INVALID_ARGUMENT naming it if unknown.
absl::StatusOr<absl::TimeZone> LoadCityTimeZone(const std::string& name);

}  // namespace cityos::carbon

#endif  // CITYOS_SERVICES_CARBON_PERIODS_H_
