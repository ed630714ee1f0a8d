// The embedded backend's fsync streams (the log's own two-stage kFsync
// pipeline: its flusher writes each group, its syncer fdatasyncs and then
// acknowledges in order): readers, consumers and stream info never see a
// record before it is acknowledged, and Close syncs and acknowledges
// everything queued.
#include <gtest/gtest.h>

#include <atomic>
#include <filesystem>
#include <string>

#include "absl/synchronization/notification.h"
#include "cityos/bus_backend.h"
#include "cityos/event.h"
#include "log/segmented_log.h"
#include "testutil.h"

namespace cityos::bus_internal {
namespace {

using log_internal::SegmentedLog;

event::v1::Event SampleEvent(const std::string& id) {
  auto e = EventBuilder()
               .Id(id)
               .Source("//fsync-test")
               .Type("test.v1.Fsync")
               .Subject("carbon.fsync.a")
               .Classification(event::v1::CLASSIFICATION_INTERNAL)
               .Owner("grid")
               .TextData("text/plain", "payload")
               .Build();
  EXPECT_TRUE(e.ok()) << e.status();
  return *std::move(e);
}

// Pauses the syncs of every kFsync log (what a backend fsync stream runs);
// releases them even when an assertion fails.
struct PauseGuard {
  PauseGuard() { SegmentedLog::PauseSyncsForTest(true); }
  ~PauseGuard() { SegmentedLog::PauseSyncsForTest(false); }
};

uint64_t SegmentBytes(const std::string& log_dir) {
  uint64_t total = 0;
  for (const auto& e : std::filesystem::directory_iterator(log_dir)) {
    if (e.path().extension() == ".log") total += e.file_size();
  }
  return total;
}

TEST(LogBackendFsync, HidesWrittenRecordsUntilTheyAreSynced) {
  testing::TempDir dir;
  auto backend = OpenLogBackend({.dir = dir.path()});
  ASSERT_TRUE(backend.ok()) << backend.status();
  BusBackend& b = **backend;
  StreamConfig config;
  config.name = "s";
  config.subjects = {"carbon.>"};
  config.durability = cityos::Durability::kFsync;
  ASSERT_TRUE(b.CreateStream(config).ok());
  ConsumerConfig cc;
  cc.stream = "s";
  cc.name = "c";
  cc.start = StartPosition::Earliest();
  ASSERT_TRUE(b.CreateConsumer(cc).ok());
  auto member = b.JoinConsumer("s", "c");
  ASSERT_TRUE(member.ok());
  auto reader = b.Read("s", 1);
  ASSERT_TRUE(reader.ok());
  const uint64_t empty_size = SegmentBytes(dir.path() + "/s/log");

  event::v1::Event e = SampleEvent("e1");
  AppendRecord rec{e.subject(), &e};
  absl::Notification acked;
  absl::StatusOr<uint64_t> result;
  {
    PauseGuard pause;
    b.Append("s", {&rec, 1}, [&](absl::StatusOr<uint64_t> first, absl::Time) {
      result = std::move(first);
      acked.Notify();
    });
    // The log writes it ...
    for (int i = 0; i < 5000 && SegmentBytes(dir.path() + "/s/log") == empty_size; ++i) {
      absl::SleepFor(absl::Milliseconds(1));
    }
    ASSERT_GT(SegmentBytes(dir.path() + "/s/log"), empty_size);
    absl::SleepFor(absl::Milliseconds(20));
    // ... but it is neither acknowledged nor visible.
    EXPECT_FALSE(acked.HasBeenNotified());
    StoredRecord out;
    auto more = (*reader)->Next(&out);
    ASSERT_TRUE(more.ok()) << more.status();
    EXPECT_FALSE(*more);
    EXPECT_EQ((*reader)->next_sequence(), 1u);
    auto waited = b.WaitForSequence("s", 1, absl::Now() + absl::Milliseconds(20));
    ASSERT_TRUE(waited.ok());
    EXPECT_EQ(*waited, 0u);
    auto info = b.GetStream("s");
    ASSERT_TRUE(info.ok());
    EXPECT_EQ(info->last_sequence, 0u);
    EXPECT_EQ(info->events, 0u);
    auto start = b.ResolveStart("s", StartPosition::New());
    ASSERT_TRUE(start.ok());
    EXPECT_EQ(*start, 1u);
    std::vector<FetchedRecord> fetched;
    ASSERT_TRUE(b.Fetch("s", "c", *member, 10, absl::Now() + absl::Milliseconds(20), &fetched)
                    .ok());
    EXPECT_TRUE(fetched.empty());
    auto cinfo = b.GetConsumer("s", "c");
    ASSERT_TRUE(cinfo.ok());
    EXPECT_EQ(cinfo->pending, 0u);
  }
  acked.WaitForNotification();
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(*result, 1u);
  StoredRecord out;
  auto more = (*reader)->Next(&out);
  ASSERT_TRUE(more.ok());
  ASSERT_TRUE(*more);
  EXPECT_EQ(out.sequence, 1u);
  EXPECT_EQ(out.subject, "carbon.fsync.a");
  auto info = b.GetStream("s");
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->last_sequence, 1u);
  EXPECT_EQ(info->events, 1u);
  EXPECT_NE(info->last_time, absl::InfinitePast());
  std::vector<FetchedRecord> fetched;
  ASSERT_TRUE(
      b.Fetch("s", "c", *member, 10, absl::Now() + absl::Seconds(5), &fetched).ok());
  ASSERT_EQ(fetched.size(), 1u);
  EXPECT_EQ(fetched[0].record.sequence, 1u);
  ASSERT_TRUE(b.Close().ok());
}

TEST(LogBackendFsync, CloseSyncsAndAcknowledgesEverythingQueued) {
  testing::TempDir dir;
  std::atomic<int> ok{0};
  constexpr int kAppends = 200;
  {
    auto backend = OpenLogBackend({.dir = dir.path()});
    ASSERT_TRUE(backend.ok()) << backend.status();
    StreamConfig config;
    config.name = "s";
    config.subjects = {"carbon.>"};
    config.durability = cityos::Durability::kFsync;
    ASSERT_TRUE((*backend)->CreateStream(config).ok());
    event::v1::Event e = SampleEvent("e");
    AppendRecord rec{e.subject(), &e};
    for (int i = 0; i < kAppends; ++i) {
      (*backend)->Append("s", {&rec, 1}, [&](absl::StatusOr<uint64_t> first, absl::Time) {
        if (first.ok()) ok.fetch_add(1);
      });
    }
    ASSERT_TRUE((*backend)->Close().ok());
    EXPECT_EQ(ok.load(), kAppends);
  }
  auto reopened = OpenLogBackend({.dir = dir.path()});
  ASSERT_TRUE(reopened.ok()) << reopened.status();
  auto info = (*reopened)->GetStream("s");
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->last_sequence, uint64_t{kAppends});
  ASSERT_TRUE((*reopened)->Close().ok());
}

}  // namespace
}  // namespace cityos::bus_internal
