#include "cityos/id.h"

#include <gtest/gtest.h>

#include <set>
#include <thread>
#include <vector>

namespace cityos {
namespace {

TEST(UuidV7, VersionVariantAndTime) {
  // Ahead of every id this process issued before (the generator never goes
  // back in time), whatever today's date and the order tests run in.
  absl::Time t = absl::FromUnixMillis(absl::ToUnixMillis(absl::Now() + absl::Hours(1)));
  Uuid u = NewUuidV7At(t);
  EXPECT_EQ(u[6] >> 4, 7);
  EXPECT_EQ(u[8] >> 6, 2);
  EXPECT_EQ(UuidV7Time(u), t);
}

TEST(UuidV7, StrictlyIncreasingWithinAMillisecondAndWhenTheClockGoesBack) {
  // Near real time (the generator is process-wide: no test may push it far
  // ahead), then the same millisecond over and over, then a step back.
  absl::Time t = absl::Now();
  std::string prev = UuidToString(NewUuidV7At(t));
  for (int i = 0; i < 10000; ++i) {
    // Same millisecond, then a step back in time.
    std::string next = UuidToString(NewUuidV7At(i < 5000 ? t : t - absl::Seconds(10)));
    ASSERT_LT(prev, next) << i;
    prev = next;
  }
}

TEST(UuidV7, UniqueAcrossThreads) {
  std::vector<std::vector<std::string>> per(4);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&per, t] {
      for (int i = 0; i < 5000; ++i) per[t].push_back(NewEventId());
    });
  }
  for (auto& th : threads) th.join();
  std::set<std::string> all;
  for (auto& v : per) all.insert(v.begin(), v.end());
  EXPECT_EQ(all.size(), 20000u);
}

TEST(Uuid, ParseRoundTripAndErrors) {
  Uuid u = NewUuidV7();
  auto parsed = ParseUuid(UuidToString(u));
  ASSERT_TRUE(parsed.ok());
  EXPECT_EQ(*parsed, u);
  EXPECT_FALSE(ParseUuid("short").ok());
  EXPECT_FALSE(ParseUuid("0190b5a4x3c1e-7a02-8f3d-0123456789ab").ok());
  EXPECT_FALSE(ParseUuid("0190b5a4-3c1e-7a02-8f3d-0123456789az").ok());
}

}  // namespace
}  // namespace cityos
