// The sync stage of fsync streams (bus/log_sync_stage.h): the log writes, the
// stage fdatasyncs and acknowledges in order; readers of the embedded backend
// never see a record before it is acknowledged; a failed fdatasync fails the
// appends it covers and refuses every later one.
#include "bus/log_sync_stage.h"

#include <gtest/gtest.h>

#include <atomic>
#include <filesystem>
#include <mutex>
#include <semaphore>
#include <string>
#include <thread>
#include <vector>

#include "absl/synchronization/notification.h"
#include "cityos/bus_backend.h"
#include "cityos/event.h"
#include "log/segmented_log.h"
#include "testutil.h"

namespace cityos::bus_internal {
namespace {

using log_internal::Durability;
using log_internal::LogOptions;
using log_internal::LogRecord;
using log_internal::SegmentedLog;

// A log opened as fsync streams open theirs, with a stage behind it.
struct Staged {
  explicit Staged(const std::string& dir, uint64_t segment_bytes = uint64_t{64} << 20,
                  uint64_t max_unsynced = LogSyncStage::kDefaultMaxUnsyncedBytes) {
    LogOptions o;
    o.dir = dir;
    o.durability = Durability::kNone;
    o.segment_bytes = segment_bytes;
    auto opened = SegmentedLog::Open(o);
    EXPECT_TRUE(opened.ok()) << opened.status();
    log = *std::move(opened);
    stage = std::make_unique<LogSyncStage>(
        log.get(), dir, [this](uint64_t last) { last_durable_seen.store(last); }, max_unsynced);
  }
  ~Staged() {
    EXPECT_TRUE(log->Close().ok());
    EXPECT_TRUE(stage->Close().ok());
  }

  // AppendAsync through the stage, as the backend does.
  void Append(const std::vector<std::string_view>& payloads, LogSyncStage::Done done) {
    const uint32_t n = static_cast<uint32_t>(payloads.size());
    uint64_t bytes = 0;
    for (auto p : payloads) bytes += p.size() + log_internal::kRecordOverhead;
    stage->Admit(bytes);
    log->AppendAsyncTimed(payloads, [this, n, bytes, done = std::move(done)](
                                        absl::StatusOr<uint64_t> first, absl::Time t) mutable {
      stage->Written(std::move(first), n, bytes, t, std::move(done));
    });
  }

  std::unique_ptr<SegmentedLog> log;
  std::unique_ptr<LogSyncStage> stage;
  std::atomic<uint64_t> last_durable_seen{0};
};

std::vector<LogRecord> ReadAll(SegmentedLog& log) {
  std::vector<LogRecord> out;
  auto reader = log.NewReader(1);
  EXPECT_TRUE(reader.ok());
  LogRecord r;
  while (true) {
    auto more = (*reader)->Next(&r);
    EXPECT_TRUE(more.ok()) << more.status();
    if (!more.ok() || !*more) break;
    out.push_back(r);
  }
  return out;
}

TEST(LogSyncStage, AcknowledgesInOrderAfterSyncingAcrossRollOvers) {
  testing::TempDir dir;
  // Small segments and a small unsynced bound: roll-overs and back-pressure.
  Staged s(dir.path(), /*segment_bytes=*/4096, /*max_unsynced=*/8192);
  constexpr int kThreads = 4;
  constexpr int kBatches = 200;
  std::mutex mu;
  std::vector<uint64_t> acked_first;  // in callback order
  std::vector<uint64_t> acked_durable;
  std::atomic<int> done{0};
  std::vector<std::unique_ptr<std::counting_semaphore<2>>> windows;
  for (int t = 0; t < kThreads; ++t) {
    windows.push_back(std::make_unique<std::counting_semaphore<2>>(2));
  }
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      const std::string payload(100 + 40 * t, static_cast<char>('a' + t));
      // Threads 0 and 1 append without waiting (held back by the unsynced
      // bound in Admit); 2 and 3 keep two batches in flight (small groups,
      // many roll-overs).
      std::counting_semaphore<2>& window = *windows[t];
      for (int b = 0; b < kBatches; ++b) {
        std::vector<std::string_view> batch(1 + b % 5, payload);
        const bool windowed = t >= 2;
        if (windowed) window.acquire();
        s.Append(batch, [&, n = batch.size(), windowed](absl::StatusOr<uint64_t> first,
                                                        absl::Time stored_at) {
          if (windowed) window.release();
          ASSERT_TRUE(first.ok()) << first.status();
          EXPECT_NE(stored_at, absl::InfinitePast());
          std::lock_guard<std::mutex> lock(mu);
          acked_first.push_back(*first);
          // Everything acknowledged is durable and visible to readers.
          acked_durable.push_back(s.stage->durable_last() >= *first + n - 1 ? 1 : 0);
          done.fetch_add(1);
        });
      }
    });
  }
  for (auto& th : threads) th.join();
  while (done.load() < kThreads * kBatches) absl::SleepFor(absl::Milliseconds(1));
  std::lock_guard<std::mutex> lock(mu);
  ASSERT_EQ(acked_first.size(), size_t{kThreads * kBatches});
  for (size_t i = 1; i < acked_first.size(); ++i) {
    EXPECT_LT(acked_first[i - 1], acked_first[i]) << "acknowledged out of order at " << i;
  }
  for (uint64_t d : acked_durable) EXPECT_EQ(d, 1u);
  EXPECT_GT(s.stage->syncs_for_test(), 0u);
  EXPECT_GT(s.log->State().segments, 2u);  // the stage followed roll-overs
  EXPECT_EQ(s.stage->durable_last(), s.log->LastSequence());
  EXPECT_EQ(s.last_durable_seen.load(), s.log->LastSequence());
  EXPECT_EQ(ReadAll(*s.log).size(), s.log->LastSequence());
}

TEST(LogSyncStage, FailedSyncFailsTheAppendAndRefusesLaterOnes) {
  testing::TempDir dir;
  Staged s(dir.path());
  const std::string payload(64, 'x');
  auto append = [&](absl::Time* stored = nullptr) {
    absl::Notification n;
    absl::StatusOr<uint64_t> result;
    s.Append({payload, payload}, [&](absl::StatusOr<uint64_t> first, absl::Time t) {
      result = std::move(first);
      if (stored != nullptr) *stored = t;
      n.Notify();
    });
    n.WaitForNotification();
    return result;
  };
  ASSERT_TRUE(append().ok());
  EXPECT_EQ(s.stage->durable_last(), 2u);

  s.stage->FailSyncsForTest(true);
  absl::StatusOr<uint64_t> failed = append();
  ASSERT_FALSE(failed.ok());
  EXPECT_EQ(failed.status().code(), absl::StatusCode::kInternal);
  EXPECT_NE(failed.status().message().find("fdatasync"), std::string_view::npos)
      << failed.status();
  EXPECT_EQ(s.stage->durable_last(), 2u);  // never acknowledged, never visible

  // fsyncgate: even once syncs work again nothing more is acknowledged.
  s.stage->FailSyncsForTest(false);
  EXPECT_EQ(s.stage->Refusal().code(), absl::StatusCode::kFailedPrecondition);
  absl::StatusOr<uint64_t> later = append();
  ASSERT_FALSE(later.ok());
  EXPECT_EQ(later.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(later.status().message().find("reopen"), std::string_view::npos) << later.status();
  EXPECT_EQ(s.stage->durable_last(), 2u);
  // The log itself refuses too: the refused append was never written (it
  // could otherwise reappear after a restart although it failed). The log
  // holds the acknowledged append and the one whose sync failed, two records
  // each.
  EXPECT_EQ(ReadAll(*s.log).size(), 4u);
}

TEST(LogSyncStage, AppendsFromAnAcknowledgementNeverWaitForTheirOwnThread) {
  testing::TempDir dir;
  // Every append beyond the first admitted one waits for a sync ...
  Staged s(dir.path(), uint64_t{64} << 20, /*max_unsynced=*/1);
  const std::string payload(32, 'x');
  std::atomic<int> acked{0};
  absl::Notification all;
  s.Append({payload}, [&](absl::StatusOr<uint64_t> first, absl::Time) {
    ASSERT_TRUE(first.ok()) << first.status();
    // ... but not on the stage's thread, which alone can sync: two appends
    // from this callback (the second over the bound) must not deadlock.
    for (int i = 0; i < 2; ++i) {
      s.Append({payload}, [&](absl::StatusOr<uint64_t> r, absl::Time) {
        EXPECT_TRUE(r.ok()) << r.status();
        if (acked.fetch_add(1) == 1) all.Notify();
      });
    }
  });
  ASSERT_TRUE(all.WaitForNotificationWithTimeout(absl::Seconds(30)));
  EXPECT_EQ(s.stage->durable_last(), 3u);
}

TEST(LogSyncStage, AppendAfterCloseFails) {
  testing::TempDir dir;
  Staged s(dir.path());
  ASSERT_TRUE(s.log->Close().ok());
  ASSERT_TRUE(s.stage->Close().ok());
  const std::string payload(10, 'x');
  absl::Notification n;
  absl::Status status;
  s.Append({payload}, [&](absl::StatusOr<uint64_t> first, absl::Time) {
    status = first.status();
    n.Notify();
  });
  n.WaitForNotification();
  EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition);
}

// ---- through the embedded backend

event::v1::Event SampleEvent(const std::string& id) {
  auto e = EventBuilder()
               .Id(id)
               .Source("//stage-test")
               .Type("test.v1.Stage")
               .Subject("carbon.stage.a")
               .Classification(event::v1::CLASSIFICATION_INTERNAL)
               .Owner("grid")
               .TextData("text/plain", "payload")
               .Build();
  EXPECT_TRUE(e.ok()) << e.status();
  return *std::move(e);
}

// Releases paused syncs even when an assertion fails.
struct PauseGuard {
  PauseGuard() { LogSyncStage::PauseSyncsForTest(true); }
  ~PauseGuard() { LogSyncStage::PauseSyncsForTest(false); }
};

uint64_t SegmentBytes(const std::string& log_dir) {
  uint64_t total = 0;
  for (const auto& e : std::filesystem::directory_iterator(log_dir)) {
    if (e.path().extension() == ".log") total += e.file_size();
  }
  return total;
}

TEST(LogSyncStage, BackendHidesWrittenRecordsUntilTheyAreSynced) {
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
  EXPECT_EQ(out.subject, "carbon.stage.a");
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

TEST(LogSyncStage, BackendCloseSyncsAndAcknowledgesEverythingQueued) {
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
