// AuditLog: chaining, checkpoints, reopen, group commit, recovery.
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <set>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "audit_test_util.h"
#include "cityos/clock.h"
#include "cityos/signing.h"
#include "gmock/gmock.h"

namespace cityos {
namespace {

using audit_internal::kCheckpointRecord;
using audit_internal::kEntryRecord;
using audit_test::MakeEntry;
using audit_test::ReadRecords;
using ::testing::HasSubstr;

constexpr char kAlice[] = "spiffe://demo.city/org/hospital-a/svc/records";

AuditOptions Options(const std::string& dir) {
  AuditOptions o;
  o.dir = dir;
  o.node = "n1";
  o.checkpoint_every = 5;
  o.checkpoint_interval = absl::Hours(1);  // only count-based and Close
  return o;
}

std::unique_ptr<AuditLog> OpenOrDie(const AuditOptions& o) {
  auto log = AuditLog::Open(o);
  EXPECT_TRUE(log.ok()) << log.status();
  return log.ok() ? std::move(*log) : nullptr;
}

TEST(AuditLog, ChainsEntriesAndSignsCheckpointsAcrossReopen) {
  testing::TempDir tmp;
  const std::string dir = tmp.File("audit");
  std::string key_id;
  {
    auto log = OpenOrDie(Options(dir));
    ASSERT_NE(log, nullptr);
    key_id = log->key_id();
    for (int i = 0; i < 12; ++i) log->Append(MakeEntry(kAlice, "read", absl::StrCat("a", i)));
    auto flushed = log->Flush();
    ASSERT_TRUE(flushed.ok()) << flushed.status();
    EXPECT_EQ(*flushed, 12u);
    ASSERT_TRUE(log->Close().ok());
    EXPECT_TRUE(log->Close().ok());  // idempotent
    log->Append(MakeEntry(kAlice, "read", "after close"));  // ignored
    EXPECT_EQ(log->last_sequence(), 12u);
  }
  EXPECT_EQ(testing::FileMode(dir), 0700);
  EXPECT_EQ(testing::FileMode(dir + "/signing.key"), 0600);
  {
    auto log = OpenOrDie(Options(dir));
    ASSERT_NE(log, nullptr);
    EXPECT_EQ(log->key_id(), key_id);
    EXPECT_EQ(log->last_sequence(), 12u);
    for (int i = 0; i < 4; ++i) log->Append(MakeEntry(kAlice, "read", absl::StrCat("b", i)));
    ASSERT_TRUE(log->Close().ok());
  }
  auto records = ReadRecords(dir);
  std::vector<uint64_t> entries, checkpoints;
  std::string prev(32, '\0');
  for (const auto& r : records) {
    if (r.type == kEntryRecord) {
      auto e = audit_test::EntryOf(r);
      entries.push_back(e.sequence());
      EXPECT_EQ(e.previous_hash(), prev) << e.sequence();
      EXPECT_EQ(e.hash(), audit_internal::EntryHash(e));
      EXPECT_EQ(e.node(), "n1");
      EXPECT_TRUE(e.has_time());
      prev = e.hash();
    } else {
      auto c = audit_test::CheckpointOf(r);
      checkpoints.push_back(c.sequence());
      EXPECT_EQ(c.key_id(), key_id);
      EXPECT_EQ(c.hash(), prev);
      EXPECT_TRUE(VerifyEd25519(testing::ReadFile(dir + "/signing.key.pub"),
                                audit_internal::CheckpointMessage(c.sequence(), c.hash()),
                                c.signature())
                      .ok());
    }
  }
  std::vector<uint64_t> want(16);
  for (int i = 0; i < 16; ++i) want[i] = i + 1;
  EXPECT_EQ(entries, want);
  // Every 5, at the first Close (12), then 5 after 12 would be 17: Close at 16.
  EXPECT_EQ(checkpoints, (std::vector<uint64_t>{5, 10, 12, 16}));

  auto log = OpenOrDie(Options(dir));
  ASSERT_NE(log, nullptr);
  auto v = log->Verify(0, 0);
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_TRUE(v->ok()) << v->message();
  EXPECT_EQ(v->entries_checked(), 16u);
  EXPECT_EQ(v->checkpoints_checked(), 4u);
  EXPECT_EQ(v->last_good_checkpoint().sequence(), 16u);
  auto part = log->Verify(6, 11);
  ASSERT_TRUE(part.ok());
  EXPECT_TRUE(part->ok()) << part->message();
  EXPECT_EQ(part->entries_checked(), 6u);
  EXPECT_EQ(part->checkpoints_checked(), 1u);  // 10
  EXPECT_EQ(log->Verify(13, 12).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(log->Verify(17, 0).status().code(), absl::StatusCode::kInvalidArgument);

  auto offline = VerifyAuditDir(dir, testing::ReadFile(dir + "/signing.key.pub"));
  ASSERT_TRUE(offline.ok()) << offline.status();
  EXPECT_TRUE(offline->ok()) << offline->message();
  EXPECT_EQ(offline->entries_checked(), 16u);
  EXPECT_EQ(offline->checkpoints_checked(), 4u);
}

TEST(AuditLog, EmptyLogVerifiesAndCloseWritesNothing) {
  testing::TempDir tmp;
  auto log = OpenOrDie(Options(tmp.path()));
  ASSERT_NE(log, nullptr);
  EXPECT_EQ(*log->Flush(), 0u);
  auto v = log->Verify(0, 0);
  ASSERT_TRUE(v.ok());
  EXPECT_TRUE(v->ok());
  EXPECT_EQ(v->entries_checked(), 0u);
  ASSERT_TRUE(log->Close().ok());
  EXPECT_TRUE(ReadRecords(tmp.path()).empty());
}

TEST(AuditLog, ConcurrentAppendersAreGapFreeAndComplete) {
  testing::TempDir tmp;
  AuditOptions o = Options(tmp.path());
  o.checkpoint_every = 100;
  auto log = OpenOrDie(o);
  ASSERT_NE(log, nullptr);
  constexpr int kThreads = 8, kPerThread = 2000;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kPerThread; ++i) {
        log->Append(MakeEntry(kAlice, "publish", absl::StrCat("t", t, "n", i)));
        if (i % 500 == 499) {
          ASSERT_TRUE(log->Flush().ok());
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  auto flushed = log->Flush();
  ASSERT_TRUE(flushed.ok());
  EXPECT_EQ(*flushed, uint64_t{kThreads * kPerThread});
  std::set<std::string> reasons;
  uint64_t expect = 1;
  AuditQuery q;
  q.limit = 1000;
  for (;;) {
    auto page = log->Query(q);
    ASSERT_TRUE(page.ok()) << page.status();
    for (const auto& e : page->entries) {
      ASSERT_EQ(e.sequence(), expect++);
      ASSERT_TRUE(reasons.insert(e.reason()).second) << e.reason();
    }
    if (page->next_after_sequence == 0) break;
    q.after_sequence = page->next_after_sequence;
  }
  EXPECT_EQ(reasons.size(), size_t{kThreads * kPerThread});
  // Per thread, entries keep the order of that thread's appends.
  std::vector<int> next(kThreads, 0);
  q = AuditQuery();
  q.limit = kThreads * kPerThread;
  auto all = log->Query(q);
  ASSERT_TRUE(all.ok());
  for (const auto& e : all->entries) {
    int t = 0, n = 0;
    ASSERT_EQ(std::sscanf(e.reason().c_str(), "t%dn%d", &t, &n), 2);
    ASSERT_EQ(n, next[t]++) << "thread " << t;
  }
  auto v = log->Verify(0, 0);
  ASSERT_TRUE(v.ok());
  EXPECT_TRUE(v->ok()) << v->message();
  EXPECT_EQ(v->entries_checked(), uint64_t{kThreads * kPerThread});
}

TEST(AuditLog, FlushMakesEntriesDurableOnDisk) {
  testing::TempDir tmp;
  AuditOptions o = Options(tmp.path());
  o.flush_interval = absl::Hours(1);  // only Flush (or a full batch) writes
  o.checkpoint_every = 1000;
  auto log = OpenOrDie(o);
  ASSERT_NE(log, nullptr);
  for (int i = 0; i < 100; ++i) log->Append(MakeEntry(kAlice, "read"));
  EXPECT_EQ(log->last_sequence(), 0u);  // queued, not yet written
  auto flushed = log->Flush();
  ASSERT_TRUE(flushed.ok());
  EXPECT_EQ(*flushed, 100u);
  EXPECT_EQ(log->last_sequence(), 100u);
  // Another reader of the files (no Close) sees all of them.
  auto v = VerifyAuditDir(tmp.path(), log->public_key_pem());
  ASSERT_TRUE(v.ok());
  EXPECT_TRUE(v->ok()) << v->message();
  EXPECT_EQ(v->entries_checked(), 100u);
  EXPECT_THAT(v->message(), HasSubstr("entries 1..100 are not covered by a signed checkpoint"));
}

TEST(AuditLog, IntervalCheckpointSignsAQuietTail) {
  testing::TempDir tmp;
  AuditOptions o = Options(tmp.path());
  o.checkpoint_every = 1000000;
  o.checkpoint_interval = absl::Milliseconds(20);
  auto log = OpenOrDie(o);
  ASSERT_NE(log, nullptr);
  log->Append(MakeEntry(kAlice, "read"));
  log->Append(MakeEntry(kAlice, "read"));
  ASSERT_TRUE(log->Flush().ok());
  const absl::Time deadline = absl::Now() + absl::Seconds(20);
  size_t checkpoints = 0;
  while (absl::Now() < deadline && checkpoints == 0) {
    absl::SleepFor(absl::Milliseconds(10));
    auto page = log->Query({});
    ASSERT_TRUE(page.ok());
    checkpoints = page->checkpoints.size();
  }
  ASSERT_EQ(checkpoints, 1u);
  auto page = log->Query({});
  EXPECT_EQ(page->checkpoints[0].sequence(), 2u);
  EXPECT_EQ(page->checkpoints[0].hash(), page->entries[1].hash());
}

TEST(AuditLog, BackPressureNeverDropsEntries) {
  testing::TempDir tmp;
  AuditOptions o = Options(tmp.path());
  o.max_queued = 3;
  o.checkpoint_every = 50;
  auto log = OpenOrDie(o);
  ASSERT_NE(log, nullptr);
  for (int i = 0; i < 500; ++i) log->Append(MakeEntry(kAlice, "read", absl::StrCat(i)));
  ASSERT_EQ(*log->Flush(), 500u);
  auto v = log->Verify(0, 0);
  EXPECT_TRUE(v->ok());
  EXPECT_EQ(v->entries_checked(), 500u);
}

TEST(AuditLog, RollsSegmentsAndReopens) {
  testing::TempDir tmp;
  AuditOptions o = Options(tmp.path());
  o.segment_bytes = 4096;
  o.checkpoint_every = 7;
  {
    auto log = OpenOrDie(o);
    ASSERT_NE(log, nullptr);
    for (int i = 0; i < 300; ++i) {
      log->Append(MakeEntry(kAlice, "read", std::string(50, 'x')));
      if (i % 37 == 0) {
        ASSERT_TRUE(log->Flush().ok());
      }
    }
    ASSERT_TRUE(log->Close().ok());
  }
  auto paths = audit_internal::ListSegments(tmp.path());
  ASSERT_TRUE(paths.ok());
  EXPECT_GT(paths->size(), 5u);
  // Each file is named after its first entry.
  for (const std::string& p : *paths) {
    uint64_t first = 0;
    ASSERT_TRUE(audit_internal::ParseSegmentFileName(
        std::filesystem::path(p).filename().string(), &first));
    auto recs = ReadRecords(tmp.path());
    bool found = false;
    for (const auto& r : recs) {
      if (r.file == p && r.type == kEntryRecord) {
        EXPECT_EQ(audit_test::EntryOf(r).sequence(), first) << p;
        found = true;
        break;
      }
    }
    EXPECT_TRUE(found) << p;
  }
  auto log = OpenOrDie(o);
  ASSERT_NE(log, nullptr);
  EXPECT_EQ(log->last_sequence(), 300u);
  log->Append(MakeEntry(kAlice, "read"));
  ASSERT_EQ(*log->Flush(), 301u);
  auto v = log->Verify(150, 0);
  ASSERT_TRUE(v.ok());
  EXPECT_TRUE(v->ok()) << v->message();
  EXPECT_EQ(v->entries_checked(), 152u);
  AuditQuery q;
  q.after_sequence = 295;
  auto page = log->Query(q);
  ASSERT_EQ(page->entries.size(), 6u);
  EXPECT_EQ(page->entries[0].sequence(), 296u);
}

// The newest segment file, and its records.
std::string LastSegment(const std::string& dir) {
  auto paths = audit_internal::ListSegments(dir);
  return paths->back();
}

TEST(AuditLog, CutsATornTail) {
  for (int variant = 0; variant < 3; ++variant) {
    SCOPED_TRACE(variant);
    testing::TempDir tmp;
    std::string last_record;
    {
      auto log = OpenOrDie(Options(tmp.path()));
      ASSERT_NE(log, nullptr);
      for (int i = 0; i < 8; ++i) log->Append(MakeEntry(kAlice, "read"));
      ASSERT_TRUE(log->Close().ok());
    }
    const std::string path = LastSegment(tmp.path());
    const std::string good = testing::ReadFile(path);
    std::string torn = good;
    auto e = MakeEntry(kAlice, "read", "torn");
    e.set_sequence(9);
    std::string rec;
    audit_internal::AppendRecord(kEntryRecord, audit_test::Payload(e), &rec);
    if (variant == 0) torn += rec.substr(0, rec.size() / 2);   // cut short
    if (variant == 1) torn += std::string(100, '\0');         // zeros
    if (variant == 2) {                                       // last record garbled
      rec[rec.size() - 3] ^= 0x40;
      torn += rec;
    }
    testing::WriteFile(path, torn);
    auto log = OpenOrDie(Options(tmp.path()));
    ASSERT_NE(log, nullptr);
    EXPECT_EQ(log->last_sequence(), 8u);
    EXPECT_EQ(testing::ReadFile(path), good);
    log->Append(MakeEntry(kAlice, "read", "after"));
    ASSERT_EQ(*log->Flush(), 9u);
    EXPECT_TRUE(log->Verify(0, 0)->ok());
  }
}

TEST(AuditLog, RefusesCorruptionInTheMiddleNamingFileAndOffset) {
  testing::TempDir tmp;
  {
    auto log = OpenOrDie(Options(tmp.path()));
    ASSERT_NE(log, nullptr);
    for (int i = 0; i < 8; ++i) log->Append(MakeEntry(kAlice, "read", "some reason"));
    ASSERT_TRUE(log->Close().ok());
  }
  auto records = ReadRecords(tmp.path());
  const int i3 = audit_test::IndexOfEntry(records, 3);
  ASSERT_GE(i3, 0);
  const std::string path = records[i3].file;
  std::string data = testing::ReadFile(path);
  data[records[i3].offset + 20] ^= 0x01;  // a bit flip, CRC not recomputed
  testing::WriteFile(path, data);
  auto log = AuditLog::Open(Options(tmp.path()));
  ASSERT_EQ(log.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(log.status().message(), HasSubstr(path));
  EXPECT_THAT(log.status().message(),
              HasSubstr(absl::StrCat("offset ", records[i3].offset)));
  EXPECT_THAT(log.status().message(), HasSubstr("checksum"));
  // The offline verifier reports the damage as what it is.
  auto v = VerifyAuditDir(tmp.path(), testing::ReadFile(tmp.File("signing.key.pub")));
  ASSERT_TRUE(v.ok());
  EXPECT_FALSE(v->ok());
  EXPECT_EQ(v->first_bad_sequence(), 3u);
  EXPECT_THAT(v->message(), HasSubstr("CRC-32C"));
  EXPECT_THAT(v->message(), HasSubstr(absl::StrCat("offset ", records[i3].offset)));
  EXPECT_EQ(v->entries_checked(), 2u);
}

TEST(AuditLog, RefusesATamperedUnsignedTail) {
  testing::TempDir tmp;
  {
    auto log = OpenOrDie(Options(tmp.path()));
    ASSERT_NE(log, nullptr);
    for (int i = 0; i < 8; ++i) log->Append(MakeEntry(kAlice, "read", "r"));
    ASSERT_TRUE(log->Close().ok());  // checkpoints at 5 and 8
  }
  auto records = ReadRecords(tmp.path());
  ASSERT_EQ(records.back().type, kCheckpointRecord);
  records.pop_back();  // as if the node crashed before the checkpoint at 8
  const int i7 = audit_test::IndexOfEntry(records, 7);
  auto e = audit_test::EntryOf(records[i7]);
  e.set_reason("edited");
  records[i7].payload = audit_test::Payload(e);
  audit_test::WriteRecords(records);
  auto log = AuditLog::Open(Options(tmp.path()));
  ASSERT_EQ(log.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(log.status().message(), HasSubstr("entry 7"));
  EXPECT_THAT(log.status().message(), HasSubstr("after its last signed checkpoint"));
}

TEST(AuditLog, RefusesAGroupReadableKey) {
  testing::TempDir tmp;
  AuditOptions o = Options(tmp.File("audit"));
  o.signing_key_file = tmp.File("node.key");
  {
    auto log = OpenOrDie(o);
    ASSERT_NE(log, nullptr);
  }
  EXPECT_EQ(testing::FileMode(tmp.File("node.key")), 0600);
  EXPECT_EQ(testing::FileMode(tmp.File("node.key.pub")), 0644);
  ASSERT_EQ(::chmod(tmp.File("node.key").c_str(), 0640), 0);
  auto log = AuditLog::Open(o);
  EXPECT_EQ(log.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(log.status().message(), HasSubstr("chmod 600"));
}

// A crash leaves entries after the last checkpoint unsigned: after the
// restart they are signed within checkpoint_interval, and the checkpoints
// from before are found by Query (indexes rebuilt from the files).
TEST(AuditLog, SignsTheUnsignedTailLeftByACrash) {
  testing::TempDir tmp;
  {
    auto log = OpenOrDie(Options(tmp.path()));
    ASSERT_NE(log, nullptr);
    for (int i = 0; i < 8; ++i) log->Append(MakeEntry(kAlice, "read"));
    ASSERT_TRUE(log->Close().ok());  // checkpoints at 5 and 8
  }
  auto records = ReadRecords(tmp.path());
  ASSERT_EQ(records.back().type, kCheckpointRecord);
  records.pop_back();  // as if killed before the checkpoint at 8
  audit_test::WriteRecords(records);
  AuditOptions o = Options(tmp.path());
  o.checkpoint_interval = absl::Milliseconds(10);
  auto log = OpenOrDie(o);
  ASSERT_NE(log, nullptr);
  auto page = log->Query({});
  ASSERT_TRUE(page.ok());
  ASSERT_EQ(page->entries.size(), 8u);
  ASSERT_GE(page->checkpoints.size(), 1u);
  EXPECT_EQ(page->checkpoints[0].sequence(), 5u);
  const absl::Time deadline = absl::Now() + absl::Seconds(20);
  while (absl::Now() < deadline && page->checkpoints.size() < 2) {
    absl::SleepFor(absl::Milliseconds(5));
    page = log->Query({});
  }
  ASSERT_EQ(page->checkpoints.size(), 2u);
  EXPECT_EQ(page->checkpoints[1].sequence(), 8u);
  auto v = log->Verify(0, 0);
  EXPECT_TRUE(v->ok()) << v->message();
  EXPECT_EQ(v->last_good_checkpoint().sequence(), 8u);
}

TEST(AuditLog, OneWriterPerDirectory) {
  testing::TempDir tmp;
  auto first = OpenOrDie(Options(tmp.path()));
  ASSERT_NE(first, nullptr);
  auto second = AuditLog::Open(Options(tmp.path()));
  EXPECT_EQ(second.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(second.status().message(), HasSubstr("in use"));
  first.reset();
  EXPECT_NE(OpenOrDie(Options(tmp.path())), nullptr);
}

TEST(AuditLog, VerifyAuditDirRejectsBadInput) {
  testing::TempDir tmp;
  EXPECT_EQ(VerifyAuditDir(tmp.path(), "no key").status().code(),
            absl::StatusCode::kInvalidArgument);
  auto key = SigningKey::Generate();
  EXPECT_EQ(VerifyAuditDir(tmp.File("missing"), (*key)->public_key_pem()).status().code(),
            absl::StatusCode::kInvalidArgument);
  auto empty = VerifyAuditDir(tmp.path(), (*key)->public_key_pem());
  ASSERT_TRUE(empty.ok());
  EXPECT_TRUE(empty->ok());
}

}  // namespace
}  // namespace cityos
