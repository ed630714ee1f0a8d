// Tests of calendar accounting periods in the city time zone
// (services/carbon/periods.h).
#include "periods.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "cityos/proto_time.h"

namespace cityos::carbon {
namespace {

using ::testing::HasSubstr;

absl::Time Utc(int y, int m, int d, int hh = 0, int mm = 0) {
  return absl::FromCivil(absl::CivilMinute(y, m, d, hh, mm), absl::UTCTimeZone());
}

class PeriodsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    absl::StatusOr<absl::TimeZone> tz = LoadCityTimeZone("Asia/Shanghai");
    ASSERT_TRUE(tz.ok()) << tz.status();
    tz_ = *tz;
  }
  absl::Time Local(int y, int m, int d, int hh = 0) {
    return absl::FromCivil(absl::CivilHour(y, m, d, hh), tz_);
  }
  absl::TimeZone tz_;
};

TEST_F(PeriodsTest, UtcInstantIsAprilInShanghai) {
  const absl::Time t = Utc(2025, 3, 31, 17, 30);  // 2025-04-01T01:30+08:00
  Period month = PeriodOf(t, v1::GRANULARITY_MONTH, tz_);
  EXPECT_EQ(month.start, Utc(2025, 3, 31, 16));  // 2025-04-01T00:00+08:00
  EXPECT_EQ(month.end, Utc(2025, 4, 30, 16));    // 2025-05-01T00:00+08:00
  EXPECT_TRUE(month.Contains(t));
  Period day = PeriodOf(t, v1::GRANULARITY_DAY, tz_);
  EXPECT_EQ(day.start, Local(2025, 4, 1));
  EXPECT_EQ(day.end, Local(2025, 4, 2));
  Period hour = PeriodOf(t, v1::GRANULARITY_HOUR, tz_);
  EXPECT_EQ(hour.start, Utc(2025, 3, 31, 17));
  EXPECT_EQ(hour.end, Utc(2025, 3, 31, 18));
  Period year = PeriodOf(t, v1::GRANULARITY_YEAR, tz_);
  EXPECT_EQ(year.start, Local(2025, 1, 1));
  EXPECT_EQ(year.end, Local(2026, 1, 1));
  // 16:00Z is local midnight of April 1, so 15:59Z is still March.
  EXPECT_EQ(PeriodOf(Utc(2025, 3, 31, 15, 59), v1::GRANULARITY_MONTH, tz_).start, Local(2025, 3, 1));
  // Boundaries are half-open: the start belongs to the period, the end does not.
  EXPECT_EQ(PeriodOf(month.start, v1::GRANULARITY_MONTH, tz_), month);
  EXPECT_EQ(PeriodOf(month.end, v1::GRANULARITY_MONTH, tz_).start, month.end);
  EXPECT_EQ(NextPeriod(month, v1::GRANULARITY_MONTH, tz_).start, month.end);
}

TEST_F(PeriodsTest, LeapYears) {
  Period feb2024 = PeriodOf(Local(2024, 2, 10), v1::GRANULARITY_MONTH, tz_);
  EXPECT_EQ(feb2024.end - feb2024.start, absl::Hours(24 * 29));
  Period feb2025 = PeriodOf(Local(2025, 2, 10), v1::GRANULARITY_MONTH, tz_);
  EXPECT_EQ(feb2025.end - feb2025.start, absl::Hours(24 * 28));
  Period feb2100 = PeriodOf(Local(2100, 2, 10), v1::GRANULARITY_MONTH, tz_);
  EXPECT_EQ(feb2100.end - feb2100.start, absl::Hours(24 * 28));  // not a leap year
  Period feb2000 = PeriodOf(Local(2000, 2, 10), v1::GRANULARITY_MONTH, tz_);
  EXPECT_EQ(feb2000.end - feb2000.start, absl::Hours(24 * 29));
  Period y2024 = PeriodOf(Local(2024, 6, 1), v1::GRANULARITY_YEAR, tz_);
  EXPECT_EQ(y2024.end - y2024.start, absl::Hours(24 * 366));
  Period y2023 = PeriodOf(Local(2023, 6, 1), v1::GRANULARITY_YEAR, tz_);
  EXPECT_EQ(y2023.end - y2023.start, absl::Hours(24 * 365));
  Period leap_day = PeriodOf(Local(2024, 2, 29, 23), v1::GRANULARITY_DAY, tz_);
  EXPECT_EQ(leap_day.start, Local(2024, 2, 29));
  EXPECT_EQ(leap_day.end, Local(2024, 3, 1));
  absl::StatusOr<std::vector<Period>> days =
      PeriodsOverlapping(Local(2024, 2, 1), Local(2024, 3, 1), v1::GRANULARITY_DAY, tz_);
  ASSERT_TRUE(days.ok());
  EXPECT_EQ(days->size(), 29u);
}

TEST_F(PeriodsTest, OverlappingAlignsToWholePeriods) {
  // 2025-01-15 .. 2025-04-01T00:30 local: Jan, Feb, Mar, Apr.
  absl::StatusOr<std::vector<Period>> months = PeriodsOverlapping(
      Local(2025, 1, 15), Local(2025, 4, 1) + absl::Minutes(30), v1::GRANULARITY_MONTH, tz_);
  ASSERT_TRUE(months.ok()) << months.status();
  ASSERT_EQ(months->size(), 4u);
  EXPECT_EQ((*months)[0].start, Local(2025, 1, 1));
  EXPECT_EQ((*months)[3].start, Local(2025, 4, 1));
  EXPECT_EQ((*months)[3].end, Local(2025, 5, 1));
  for (size_t i = 1; i < months->size(); ++i) EXPECT_EQ((*months)[i].start, (*months)[i - 1].end);
  // Ending exactly on a boundary does not add the next period.
  absl::StatusOr<std::vector<Period>> q1 =
      PeriodsOverlapping(Local(2025, 1, 1), Local(2025, 4, 1), v1::GRANULARITY_MONTH, tz_);
  ASSERT_TRUE(q1.ok());
  EXPECT_EQ(q1->size(), 3u);
  absl::StatusOr<std::vector<Period>> hours =
      PeriodsOverlapping(Utc(2025, 3, 31, 15, 30), Utc(2025, 3, 31, 17, 1), v1::GRANULARITY_HOUR, tz_);
  ASSERT_TRUE(hours.ok());
  EXPECT_EQ(hours->size(), 3u);
  absl::StatusOr<std::vector<Period>> years =
      PeriodsOverlapping(Local(2020, 5, 1), Local(2025, 1, 1, 1), v1::GRANULARITY_YEAR, tz_);
  ASSERT_TRUE(years.ok());
  EXPECT_EQ(years->size(), 6u);
}

TEST_F(PeriodsTest, TooManyPeriodsRejected) {
  // 10,000 hours are fine; 10,001 are not.
  const absl::Time from = Local(2024, 1, 1);
  absl::StatusOr<std::vector<Period>> ok = PeriodsOverlapping(from, from + absl::Hours(10000),
                                                              v1::GRANULARITY_HOUR, tz_);
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_EQ(ok->size(), 10000u);
  absl::StatusOr<std::vector<Period>> over =
      PeriodsOverlapping(from, from + absl::Hours(10001), v1::GRANULARITY_HOUR, tz_);
  ASSERT_FALSE(over.ok());
  EXPECT_EQ(over.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(over.status().message(), HasSubstr("10001"));
  EXPECT_THAT(over.status().message(), HasSubstr("10000"));
  // A century of days, and a custom limit.
  EXPECT_FALSE(PeriodsOverlapping(Local(1950, 1, 1), Local(2050, 1, 1), v1::GRANULARITY_DAY, tz_).ok());
  EXPECT_FALSE(PeriodsOverlapping(from, Local(2024, 1, 4), v1::GRANULARITY_DAY, tz_, 2).ok());
  EXPECT_TRUE(PeriodsOverlapping(from, Local(2024, 1, 3), v1::GRANULARITY_DAY, tz_, 2).ok());
}

TEST_F(PeriodsTest, BadArguments) {
  const absl::Time t = Local(2024, 1, 1);
  absl::StatusOr<std::vector<Period>> g = PeriodsOverlapping(t, t + absl::Hours(1), v1::GRANULARITY_UNSPECIFIED, tz_);
  ASSERT_FALSE(g.ok());
  EXPECT_EQ(g.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(g.status().message(), HasSubstr("GRANULARITY_UNSPECIFIED"));
  absl::StatusOr<std::vector<Period>> empty = PeriodsOverlapping(t, t, v1::GRANULARITY_DAY, tz_);
  ASSERT_FALSE(empty.ok());
  EXPECT_THAT(empty.status().message(), HasSubstr("not after its start"));
  EXPECT_FALSE(PeriodsOverlapping(t, t - absl::Hours(1), v1::GRANULARITY_DAY, tz_).ok());
  EXPECT_FALSE(PeriodsOverlapping(absl::InfinitePast(), t, v1::GRANULARITY_DAY, tz_).ok());
  EXPECT_FALSE(PeriodsOverlapping(t, absl::InfiniteFuture(), v1::GRANULARITY_DAY, tz_).ok());
  Period none = PeriodOf(t, v1::GRANULARITY_UNSPECIFIED, tz_);
  EXPECT_EQ(none.start, none.end);
  absl::StatusOr<absl::TimeZone> bad = LoadCityTimeZone("Mars/Olympus_Mons");
  ASSERT_FALSE(bad.ok());
  EXPECT_THAT(bad.status().message(), HasSubstr("Mars/Olympus_Mons"));
}

TEST_F(PeriodsTest, NamesAndTimeRange) {
  EXPECT_EQ(GranularityName(v1::GRANULARITY_HOUR), "hour");
  EXPECT_EQ(GranularityName(v1::GRANULARITY_YEAR), "year");
  Period p = PeriodOf(Local(2025, 4, 5), v1::GRANULARITY_MONTH, tz_);
  common::v1::TimeRange r = ToTimeRange(p);
  EXPECT_EQ(*TimestampFromProto(r.start(), "start"), p.start);
  EXPECT_EQ(*TimestampFromProto(r.end(), "end"), p.end);
}

}  // namespace
}  // namespace cityos::carbon
