// Calendar accounting periods in the city time zone (periods.h).
#include "periods.h"

#include "absl/strings/str_cat.h"
#include "cityos/proto_time.h"

namespace cityos::carbon {

Period PeriodOf(absl::Time t, v1::Granularity g, const absl::TimeZone& tz) {
  if (t == absl::InfinitePast() || t == absl::InfiniteFuture()) return {t, t};
  switch (g) {
    case v1::GRANULARITY_HOUR: {
      const absl::CivilHour h = absl::ToCivilHour(t, tz);
      return {absl::FromCivil(h, tz), absl::FromCivil(h + 1, tz)};
    }
    case v1::GRANULARITY_DAY: {
      const absl::CivilDay d = absl::ToCivilDay(t, tz);
      return {absl::FromCivil(d, tz), absl::FromCivil(d + 1, tz)};
    }
    case v1::GRANULARITY_MONTH: {
      const absl::CivilMonth m = absl::ToCivilMonth(t, tz);
      return {absl::FromCivil(m, tz), absl::FromCivil(m + 1, tz)};
    }
    case v1::GRANULARITY_YEAR: {
      const absl::CivilYear y = absl::ToCivilYear(t, tz);
      return {absl::FromCivil(y, tz), absl::FromCivil(y + 1, tz)};
    }
    default:
      return {t, t};
  }
}

Period NextPeriod(const Period& p, v1::Granularity g, const absl::TimeZone& tz) {
  return PeriodOf(p.end, g, tz);
}

absl::StatusOr<std::vector<Period>> PeriodsOverlapping(absl::Time from, absl::Time to, v1::Granularity g,
                                                       const absl::TimeZone& tz, size_t max_periods) {
  if (g != v1::GRANULARITY_HOUR && g != v1::GRANULARITY_DAY && g != v1::GRANULARITY_MONTH &&
      g != v1::GRANULARITY_YEAR) {
    return absl::InvalidArgumentError(absl::StrCat("granularity ", v1::Granularity_Name(g),
                                                   " is not one of HOUR, DAY, MONTH, YEAR"));
  }
  if (from == absl::InfinitePast() || to == absl::InfiniteFuture() || from == absl::InfiniteFuture() ||
      to == absl::InfinitePast()) {
    return absl::InvalidArgumentError("range must have a finite start and end");
  }
  if (to <= from) {
    return absl::InvalidArgumentError(absl::StrCat("range end ", absl::FormatTime(to, absl::UTCTimeZone()),
                                                   " is not after its start ",
                                                   absl::FormatTime(from, absl::UTCTimeZone())));
  }
  // Count first, so that a huge range fails without building a huge vector.
  size_t count = 0;
  switch (g) {
    case v1::GRANULARITY_HOUR:
      count = static_cast<size_t>((absl::ToCivilHour(to - absl::Nanoseconds(1), tz) -
                                   absl::ToCivilHour(from, tz)) + 1);
      break;
    case v1::GRANULARITY_DAY:
      count = static_cast<size_t>(
          (absl::ToCivilDay(to - absl::Nanoseconds(1), tz) - absl::ToCivilDay(from, tz)) + 1);
      break;
    case v1::GRANULARITY_MONTH:
      count = static_cast<size_t>(
          (absl::ToCivilMonth(to - absl::Nanoseconds(1), tz) - absl::ToCivilMonth(from, tz)) + 1);
      break;
    default:
      count = static_cast<size_t>(
          (absl::ToCivilYear(to - absl::Nanoseconds(1), tz) - absl::ToCivilYear(from, tz)) + 1);
      break;
  }
  if (count > max_periods) {
    return absl::InvalidArgumentError(absl::StrCat("range covers ", count, " ", GranularityName(g),
                                                   " periods, more than the limit of ", max_periods));
  }
  std::vector<Period> out;
  out.reserve(count);
  for (Period p = PeriodOf(from, g, tz); p.start < to; p = NextPeriod(p, g, tz)) out.push_back(p);
  return out;
}

std::string GranularityName(v1::Granularity g) {
  switch (g) {
    case v1::GRANULARITY_HOUR:
      return "hour";
    case v1::GRANULARITY_DAY:
      return "day";
    case v1::GRANULARITY_MONTH:
      return "month";
    case v1::GRANULARITY_YEAR:
      return "year";
    default:
      return "unspecified";
  }
}

common::v1::TimeRange ToTimeRange(const Period& p) {
  common::v1::TimeRange r;
  TimestampToProto(p.start, r.mutable_start());
  TimestampToProto(p.end, r.mutable_end());
  return r;
}

absl::StatusOr<absl::TimeZone> LoadCityTimeZone(const std::string& name) {
  absl::TimeZone tz;
  if (name.empty() || !absl::LoadTimeZone(name, &tz)) {
    return absl::InvalidArgumentError(absl::StrCat("unknown time zone '", name, "'"));
  }
  return tz;
}

}  // namespace cityos::carbon
