#include "log/segmented_log.h"

#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "cityos/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "log/log_format.h"

namespace cityos::log_internal {
namespace {

using ::testing::HasSubstr;

// A fresh directory under testing::TempDir(), removed at scope exit.
class ScopedTempDir {
 public:
  ScopedTempDir() {
    std::string tmpl = testing::TempDir() + "/cityos_log_XXXXXX";
    char* p = ::mkdtemp(tmpl.data());
    EXPECT_NE(p, nullptr);
    path_ = tmpl;
  }
  ~ScopedTempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  const std::string& path() const { return path_; }
  std::string File(uint64_t first_sequence, bool index = false) const {
    return path_ + "/" +
           (index ? IndexFileName(first_sequence)
                  : SegmentFileName(first_sequence));
  }

 private:
  std::string path_;
};

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void WriteFile(const std::string& path, const std::string& contents) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << contents;
}

uint64_t FileSizeOf(const std::string& path) {
  return std::filesystem::file_size(path);
}

std::string Payload(uint64_t i, size_t size = 100) {
  std::string p = absl::StrCat("event-", i, "-");
  while (p.size() < size)
    p.push_back(static_cast<char>('a' + (i + p.size()) % 26));
  p.resize(size);
  return p;
}

LogOptions Options(const std::string& dir) {
  LogOptions o;
  o.dir = dir;
  return o;
}

std::unique_ptr<SegmentedLog> OpenOrDie(const LogOptions& o) {
  absl::StatusOr<std::unique_ptr<SegmentedLog>> log = SegmentedLog::Open(o);
  EXPECT_TRUE(log.ok()) << log.status();
  return log.ok() ? std::move(*log) : nullptr;
}

// Appends payloads Payload(from)..Payload(to) one per batch.
void AppendRange(SegmentedLog& log, uint64_t from, uint64_t to,
                 size_t size = 100) {
  for (uint64_t i = from; i <= to; ++i) {
    const std::string p = Payload(i, size);
    const std::string_view v[] = {p};
    absl::StatusOr<uint64_t> seq = log.Append(v);
    ASSERT_TRUE(seq.ok()) << seq.status();
    ASSERT_EQ(*seq, i);
  }
}

// Reads everything from `start`; checks payload i == Payload(i, size).
std::vector<LogRecord> ReadAll(SegmentedLog& log, uint64_t start = 1) {
  std::vector<LogRecord> out;
  absl::StatusOr<std::unique_ptr<LogReader>> reader = log.NewReader(start);
  EXPECT_TRUE(reader.ok());
  LogRecord rec;
  for (;;) {
    absl::StatusOr<bool> more = (*reader)->Next(&rec);
    EXPECT_TRUE(more.ok()) << more.status();
    if (!more.ok() || !*more) break;
    out.push_back(rec);
  }
  return out;
}

void ExpectPayloads(const std::vector<LogRecord>& recs, uint64_t first,
                    uint64_t last, size_t size = 100) {
  ASSERT_EQ(recs.size(), last + 1 - first);
  for (uint64_t i = first; i <= last; ++i) {
    const LogRecord& r = recs[i - first];
    ASSERT_EQ(r.sequence, i);
    ASSERT_EQ(r.payload, Payload(i, size)) << "sequence " << i;
  }
}

// Offset of record `seq` in segment 1 when every record carries `size` bytes.
uint64_t OffsetOf(uint64_t seq, size_t size = 100) {
  return kSegmentHeaderSize + (seq - 1) * (kRecordOverhead + size);
}

// ---------------------------------------------------------------- format

TEST(LogFormat, RecordRoundTrips) {
  std::string buf;
  AppendRecord(&buf, 42, -7, "hello", /*batch_continues=*/true);
  AppendRecord(&buf, 43, 1700000000123456789, "", /*batch_continues=*/false);
  ASSERT_EQ(buf.size(), 2 * kRecordOverhead + 5);
  RecordView rec;
  const char* why = "";
  ASSERT_EQ(DecodeRecord(buf.data(), buf.size(), &rec, &why),
            DecodeResult::kOk);
  EXPECT_EQ(rec.sequence, 42u);
  EXPECT_EQ(rec.time_ns, -7);
  EXPECT_EQ(rec.payload, "hello");
  EXPECT_TRUE(rec.batch_continues);
  EXPECT_EQ(rec.encoded_size, kRecordOverhead + 5);
  // Length word: 16 + 5 with the continue bit, little-endian.
  EXPECT_EQ(DecodeFixed32(buf.data()), 21u | kBatchContinuesBit);
  EXPECT_EQ(static_cast<unsigned char>(buf[0]), 21);
  ASSERT_EQ(DecodeRecord(buf.data() + rec.encoded_size,
                         buf.size() - rec.encoded_size, &rec, &why),
            DecodeResult::kOk);
  EXPECT_EQ(rec.sequence, 43u);
  EXPECT_EQ(rec.time_ns, 1700000000123456789);
  EXPECT_EQ(rec.payload, "");
  EXPECT_FALSE(rec.batch_continues);
}

TEST(LogFormat, DetectsTruncationAndCorruption) {
  std::string buf;
  AppendRecord(&buf, 1, 5, "payload", false);
  RecordView rec;
  const char* why = "";
  for (size_t n = 0; n < buf.size(); ++n) {
    EXPECT_EQ(DecodeRecord(buf.data(), n, &rec, &why), DecodeResult::kTruncated)
        << n;
  }
  for (size_t i = 4; i < buf.size(); ++i) {  // every byte the CRC covers
    std::string bad = buf;
    bad[i] ^= 0x01;
    EXPECT_EQ(DecodeRecord(bad.data(), bad.size(), &rec, &why),
              DecodeResult::kCorrupt)
        << i;
  }
  std::string zeros(64, '\0');
  EXPECT_EQ(DecodeRecord(zeros.data(), zeros.size(), &rec, &why),
            DecodeResult::kCorrupt);
}

TEST(LogFormat, SegmentHeaderAndNames) {
  char header[kSegmentHeaderSize];
  EncodeSegmentHeader(12345, header);
  EXPECT_EQ(std::string(header, 8), "CTYOSLOG");
  absl::StatusOr<uint64_t> first = DecodeSegmentHeader(header, sizeof(header));
  ASSERT_TRUE(first.ok());
  EXPECT_EQ(*first, 12345u);
  header[17] ^= 1;
  EXPECT_FALSE(DecodeSegmentHeader(header, sizeof(header)).ok());
  EXPECT_FALSE(DecodeSegmentHeader(header, 10).ok());

  EXPECT_EQ(SegmentFileName(1), "00000000000000000001.log");
  EXPECT_EQ(IndexFileName(77), "00000000000000000077.idx");
  uint64_t seq = 0;
  EXPECT_EQ(ParseFileName("00000000000000000077.idx", &seq), FileKind::kIndex);
  EXPECT_EQ(seq, 77u);
  EXPECT_EQ(ParseFileName("00000000000000000001.log", &seq),
            FileKind::kSegment);
  EXPECT_EQ(ParseFileName("00000000000000000001.log.tmp", &seq),
            FileKind::kTemp);
  EXPECT_EQ(ParseFileName("0000000000000000001.log", &seq), FileKind::kOther);
  EXPECT_EQ(ParseFileName("LOCK", &seq), FileKind::kOther);
  EXPECT_EQ(ParseFileName("99999999999999999999.log", &seq), FileKind::kOther);
}

TEST(LogFormat, IndexFileRoundTripsAndDetectsDamage) {
  SegmentSummary s;
  s.first_sequence = 10;
  s.last_sequence = 99;
  s.size = 5000;
  s.first_time_ns = 1;
  s.last_time_ns = 2;
  s.index = {{10, 1, 32}, {50, 2, 4200}};
  std::string enc = EncodeIndexFile(s);
  EXPECT_EQ(enc.size(), kIndexHeaderSize + 2 * kIndexEntrySize + 4);
  absl::StatusOr<SegmentSummary> d = DecodeIndexFile(enc);
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->last_sequence, 99u);
  ASSERT_EQ(d->index.size(), 2u);
  EXPECT_EQ(d->index[1].offset, 4200u);
  enc[60] ^= 1;
  EXPECT_FALSE(DecodeIndexFile(enc).ok());
  EXPECT_FALSE(DecodeIndexFile(enc.substr(0, 20)).ok());
}

// ---------------------------------------------------------------- basics

TEST(SegmentedLog, AppendsAndReadsBack) {
  ScopedTempDir dir;
  SimulatedClock clock(absl::FromUnixSeconds(1700000000));
  LogOptions o = Options(dir.path());
  o.clock = &clock;
  auto log = OpenOrDie(o);
  ASSERT_NE(log, nullptr);
  EXPECT_EQ(log->State().last_sequence, 0u);
  EXPECT_EQ(log->State().events, 0u);
  const std::string a = Payload(1), b = Payload(2), c = Payload(3);
  const std::string_view batch[] = {a, b, c};
  absl::StatusOr<uint64_t> first = log->Append(batch);
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_EQ(*first, 1u);
  clock.Advance(absl::Seconds(1));
  AppendRange(*log, 4, 10);
  std::vector<LogRecord> recs = ReadAll(*log);
  ExpectPayloads(recs, 1, 10);
  EXPECT_EQ(recs[0].publish_time, absl::FromUnixSeconds(1700000000));
  EXPECT_EQ(recs[2].publish_time, absl::FromUnixSeconds(1700000000));
  EXPECT_EQ(recs[3].publish_time, absl::FromUnixSeconds(1700000001));
  LogState st = log->State();
  EXPECT_EQ(st.first_sequence, 1u);
  EXPECT_EQ(st.last_sequence, 10u);
  EXPECT_EQ(st.events, 10u);
  EXPECT_EQ(st.segments, 1u);
  EXPECT_EQ(st.bytes, kSegmentHeaderSize + 10 * (kRecordOverhead + 100));
  EXPECT_EQ(st.first_time, absl::FromUnixSeconds(1700000000));
  EXPECT_EQ(st.last_time, absl::FromUnixSeconds(1700000001));
  EXPECT_EQ(FileSizeOf(dir.File(1)), st.bytes);
}

TEST(SegmentedLog, PublishTimeNeverDecreases) {
  ScopedTempDir dir;
  SimulatedClock clock(absl::FromUnixSeconds(2000));
  LogOptions o = Options(dir.path());
  o.clock = &clock;
  auto log = OpenOrDie(o);
  AppendRange(*log, 1, 1);
  clock.Set(absl::FromUnixSeconds(1000));  // the clock steps back
  AppendRange(*log, 2, 2);
  std::vector<LogRecord> recs = ReadAll(*log);
  ASSERT_EQ(recs.size(), 2u);
  EXPECT_EQ(recs[1].publish_time, absl::FromUnixSeconds(2000));
}

TEST(SegmentedLog, RollsOverAndReadsAcrossSegments) {
  ScopedTempDir dir;
  LogOptions o = Options(dir.path());
  o.segment_bytes = 2048;
  o.index_interval_bytes = 300;
  auto log = OpenOrDie(o);
  AppendRange(*log, 1, 200);
  LogState st = log->State();
  EXPECT_GT(st.segments, 10u);
  EXPECT_EQ(st.last_sequence, 200u);
  ExpectPayloads(ReadAll(*log), 1, 200);
  // Sealed segments have an index file; the active one does not.
  uint32_t logs = 0, idxs = 0;
  for (const auto& e : std::filesystem::directory_iterator(dir.path())) {
    const std::string ext = e.path().extension();
    logs += ext == ".log";
    idxs += ext == ".idx";
  }
  EXPECT_EQ(logs, st.segments);
  EXPECT_EQ(idxs, st.segments - 1);
  // Every segment but the last is past segment_bytes; readers cross them.
  for (uint64_t start : {1, 2, 17, 18, 19, 100, 150, 200}) {
    ExpectPayloads(ReadAll(*log, start), start, 200);
  }
  ASSERT_TRUE(log->Close().ok());
  auto again = OpenOrDie(o);
  EXPECT_EQ(again->State().segments, st.segments);
  EXPECT_FALSE(again->recovery_info().truncated);
  ExpectPayloads(ReadAll(*again, 1), 1, 200);
  AppendRange(*again, 201, 220);
  ExpectPayloads(ReadAll(*again, 190), 190, 220);
}

TEST(SegmentedLog, ReaderStartsAtSequence) {
  ScopedTempDir dir;
  LogOptions o = Options(dir.path());
  o.segment_bytes = 4096;
  o.index_interval_bytes = 512;
  auto log = OpenOrDie(o);
  AppendRange(*log, 1, 100);
  for (uint64_t start = 1; start <= 100; ++start) {
    std::vector<LogRecord> recs = ReadAll(*log, start);
    ASSERT_FALSE(recs.empty());
    ASSERT_EQ(recs.front().sequence, start);
    ASSERT_EQ(recs.back().sequence, 100u);
  }
  // Below the first: starts at the first. Above the last: waits.
  EXPECT_EQ(ReadAll(*log, 0).front().sequence, 1u);
  auto reader = *log->NewReader(105);
  LogRecord rec;
  EXPECT_FALSE(*reader->Next(&rec));
  AppendRange(*log, 101, 106);
  ASSERT_TRUE(*reader->Next(&rec));
  EXPECT_EQ(rec.sequence, 105u);
  EXPECT_EQ(rec.payload, Payload(105));
  ASSERT_TRUE(*reader->Next(&rec));
  EXPECT_EQ(rec.sequence, 106u);
  EXPECT_FALSE(*reader->Next(&rec));
  EXPECT_EQ(reader->next_sequence(), 107u);
}

TEST(SegmentedLog, FindsSequenceByTime) {
  ScopedTempDir dir;
  const absl::Time t0 = absl::FromUnixSeconds(1700000000);
  SimulatedClock clock(t0);
  LogOptions o = Options(dir.path());
  o.clock = &clock;
  o.segment_bytes = 2048;
  o.index_interval_bytes = 256;
  auto log = OpenOrDie(o);
  // Record i published at t0 + 10s * ((i - 1) / 3): three per timestamp.
  for (uint64_t i = 1; i <= 90; ++i) {
    clock.Set(t0 + absl::Seconds(10 * ((i - 1) / 3)));
    AppendRange(*log, i, i);
  }
  EXPECT_EQ(*log->SequenceAtOrAfter(t0 - absl::Hours(1)), 1u);
  EXPECT_EQ(*log->SequenceAtOrAfter(t0), 1u);
  for (uint64_t k = 0; k < 30; ++k) {
    const absl::Time tk = t0 + absl::Seconds(10 * k);
    EXPECT_EQ(*log->SequenceAtOrAfter(tk), 3 * k + 1) << k;
    EXPECT_EQ(*log->SequenceAtOrAfter(tk - absl::Nanoseconds(1)), 3 * k + 1);
    EXPECT_EQ(*log->SequenceAtOrAfter(tk + absl::Nanoseconds(1)), 3 * k + 4);
  }
  EXPECT_EQ(*log->SequenceAtOrAfter(t0 + absl::Hours(1)), 91u);
  // A reader from a time: look up, then read.
  const uint64_t seq = *log->SequenceAtOrAfter(t0 + absl::Seconds(205));
  std::vector<LogRecord> recs = ReadAll(*log, seq);
  ASSERT_FALSE(recs.empty());
  EXPECT_EQ(recs.front().sequence, 64u);
  EXPECT_EQ(recs.front().publish_time, t0 + absl::Seconds(210));
}

TEST(SegmentedLog, ReadersRunConcurrentlyWithAppends) {
  ScopedTempDir dir;
  LogOptions o = Options(dir.path());
  o.segment_bytes = 16 << 10;
  o.durability = Durability::kNone;
  auto log = OpenOrDie(o);
  constexpr int kWriters = 4;
  constexpr int kBatches = 300;
  constexpr int kBatchSize = 5;
  constexpr uint64_t kTotal = kWriters * kBatches * kBatchSize;
  std::atomic<bool> reader_failed{false};
  std::vector<std::thread> threads;
  for (int r = 0; r < 2; ++r) {
    threads.emplace_back([&] {
      auto reader = *log->NewReader(1);
      LogRecord rec;
      uint64_t expect = 1;
      while (expect <= kTotal && !reader_failed) {
        absl::StatusOr<bool> more = reader->Next(&rec);
        if (!more.ok() || (*more && (rec.sequence != expect ||
                                     rec.payload.rfind("w", 0) != 0))) {
          reader_failed = true;
          break;
        }
        if (*more) {
          ++expect;
        } else {
          std::this_thread::yield();
        }
      }
    });
  }
  for (int w = 0; w < kWriters; ++w) {
    threads.emplace_back([&, w] {
      for (int b = 0; b < kBatches; ++b) {
        std::vector<std::string> ps;
        for (int i = 0; i < kBatchSize; ++i) {
          ps.push_back(absl::StrCat("w", w, "-b", b, "-i", i));
        }
        std::vector<std::string_view> vs(ps.begin(), ps.end());
        ASSERT_TRUE(log->Append(vs).ok());
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_FALSE(reader_failed);
  // Batches are contiguous: the five records of each batch are adjacent.
  std::vector<LogRecord> recs = ReadAll(*log);
  ASSERT_EQ(recs.size(), kTotal);
  for (size_t i = 0; i < recs.size(); i += kBatchSize) {
    const std::string prefix =
        recs[i].payload.substr(0, recs[i].payload.rfind('-'));
    for (int j = 0; j < kBatchSize; ++j) {
      EXPECT_EQ(recs[i + j].payload, absl::StrCat(prefix, "-i", j));
    }
  }
}

TEST(SegmentedLog, AsyncCallbacksAndListenerSeeDurableBatches) {
  ScopedTempDir dir;
  auto log = OpenOrDie(Options(dir.path()));
  std::atomic<uint64_t> listened{0};
  log->SetAppendListener([&](uint64_t last) {
    // Readers already see everything up to `last`.
    EXPECT_GE(log->LastSequence(), last);
    listened = last;
  });
  constexpr int kBatches = 200;
  std::vector<uint64_t> firsts(kBatches, 0);
  std::atomic<int> done{0};
  absl::Notification all_done;
  const std::string p = "xy";
  const std::string_view two[] = {p, p};
  for (int i = 0; i < kBatches; ++i) {
    log->AppendAsync(two, [&, i](absl::StatusOr<uint64_t> first) {
      ASSERT_TRUE(first.ok());
      firsts[i] = *first;
      // Runs on the flusher thread: a blocking Append is refused there.
      if (i == 0) {
        EXPECT_EQ(log->Append(two).status().code(),
                  absl::StatusCode::kFailedPrecondition);
      }
      if (++done == kBatches) all_done.Notify();
    });
  }
  all_done.WaitForNotification();
  for (int i = 0; i < kBatches; ++i) EXPECT_EQ(firsts[i], 1u + 2 * i);
  ASSERT_TRUE(log->Close().ok());
  EXPECT_EQ(listened.load(), 2u * kBatches);
}

TEST(SegmentedLog, WorksInEveryDurabilityMode) {
  for (Durability d :
       {Durability::kFsync, Durability::kInterval, Durability::kNone}) {
    ScopedTempDir dir;
    LogOptions o = Options(dir.path());
    o.durability = d;
    o.sync_interval = absl::Milliseconds(5);
    o.segment_bytes = 4096;
    {
      auto log = OpenOrDie(o);
      AppendRange(*log, 1, 120);
      ExpectPayloads(ReadAll(*log), 1, 120);
      absl::SleepFor(absl::Milliseconds(10));  // let kInterval sync once
    }
    auto log = OpenOrDie(o);
    EXPECT_FALSE(log->recovery_info().truncated);
    ExpectPayloads(ReadAll(*log), 1, 120);
  }
}

TEST(SegmentedLog, ReopenPreservesEverything) {
  ScopedTempDir dir;
  SimulatedClock clock(absl::FromUnixSeconds(1700000000));
  LogOptions o = Options(dir.path());
  o.clock = &clock;
  o.segment_bytes = 4096;
  LogState before;
  {
    auto log = OpenOrDie(o);
    for (uint64_t i = 1; i <= 100; ++i) {
      clock.Advance(absl::Milliseconds(7));
      AppendRange(*log, i, i);
    }
    before = log->State();
  }
  for (bool verify : {true, false}) {
    o.verify_sealed_segments = verify;
    auto log = OpenOrDie(o);
    LogState after = log->State();
    EXPECT_EQ(after.first_sequence, before.first_sequence);
    EXPECT_EQ(after.last_sequence, before.last_sequence);
    EXPECT_EQ(after.bytes, before.bytes);
    EXPECT_EQ(after.segments, before.segments);
    EXPECT_EQ(after.first_time, before.first_time);
    EXPECT_EQ(after.last_time, before.last_time);
    std::vector<LogRecord> recs = ReadAll(*log);
    ExpectPayloads(recs, 1, 100);
    EXPECT_EQ(recs[99].publish_time,
              absl::FromUnixSeconds(1700000000) + absl::Milliseconds(700));
    EXPECT_EQ(*log->SequenceAtOrAfter(absl::FromUnixSeconds(1700000000) +
                                      absl::Milliseconds(350)),
              50u);
  }
}

TEST(SegmentedLog, RebuildsMissingOrBadIndexFiles) {
  ScopedTempDir dir;
  LogOptions o = Options(dir.path());
  o.segment_bytes = 2048;
  { AppendRange(*OpenOrDie(o), 1, 60); }
  ASSERT_TRUE(std::filesystem::remove(dir.File(1, /*index=*/true)));
  std::string idx = ReadFile(dir.File(18, true));
  ASSERT_FALSE(idx.empty());
  idx[10] ^= 1;
  WriteFile(dir.File(18, true), idx);
  WriteFile(dir.path() + "/00000000000000000099.log.tmp", "junk");
  o.verify_sealed_segments = false;
  auto log = OpenOrDie(o);
  EXPECT_EQ(log->recovery_info().index_files_rebuilt, 2u);
  EXPECT_EQ(log->recovery_info().temp_files_removed, 1u);
  EXPECT_TRUE(std::filesystem::exists(dir.File(1, true)));
  EXPECT_FALSE(
      std::filesystem::exists(dir.path() + "/00000000000000000099.log.tmp"));
  ExpectPayloads(ReadAll(*log, 1), 1, 60);
  ExpectPayloads(ReadAll(*log, 30), 30, 60);
}

// ---------------------------------------------------------------- recovery

// Writes records 1..10 (100-byte payloads) in one segment and closes.
void WriteTen(const std::string& dir) {
  AppendRange(*OpenOrDie(Options(dir)), 1, 10);
}

TEST(SegmentedLog, RecoversFromTornLastWrite) {
  struct Case {
    const char* name;
    std::function<void(const std::string& file)> damage;
  };
  const Case cases[] = {
      {"cut mid-record",
       [](const std::string& f) {
         std::filesystem::resize_file(f, OffsetOf(10) + 50);
       }},
      {"cut mid-header",
       [](const std::string& f) {
         std::filesystem::resize_file(f, OffsetOf(10) + 3);
       }},
      {"garbage appended",
       [](const std::string& f) {
         std::string c = ReadFile(f);
         c.resize(OffsetOf(10) + 40);
         c += "this is not a record at all, just garbage bytes\x01\x02\x03";
         WriteFile(f, c);
       }},
      {"zero-filled tail",
       [](const std::string& f) {
         std::string c = ReadFile(f);
         c.resize(OffsetOf(10) + 60);
         c.append(8192, '\0');
         WriteFile(f, c);
       }},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    ScopedTempDir dir;
    WriteTen(dir.path());
    const uint64_t before = FileSizeOf(dir.File(1));
    c.damage(dir.File(1));
    auto log = OpenOrDie(Options(dir.path()));
    ASSERT_NE(log, nullptr);
    const RecoveryInfo& info = log->recovery_info();
    EXPECT_TRUE(info.truncated);
    EXPECT_EQ(info.file, dir.File(1));
    EXPECT_EQ(info.offset, OffsetOf(10));
    EXPECT_THAT(info.ToString(), HasSubstr(dir.File(1)));
    EXPECT_EQ(FileSizeOf(dir.File(1)), OffsetOf(10));
    EXPECT_LT(FileSizeOf(dir.File(1)), before);
    EXPECT_EQ(log->State().last_sequence, 9u);
    ExpectPayloads(ReadAll(*log), 1, 9);
    AppendRange(*log, 10, 12);  // the log goes on from the cut
    ExpectPayloads(ReadAll(*log), 1, 12);
  }
}

TEST(SegmentedLog, RecoversFromCrcCorruptionOfLastRecord) {
  ScopedTempDir dir;
  WriteTen(dir.path());
  std::string c = ReadFile(dir.File(1));
  c[OffsetOf(10) + kRecordOverhead + 42] ^= 0x20;  // a payload byte
  WriteFile(dir.File(1), c);
  auto log = OpenOrDie(Options(dir.path()));
  EXPECT_TRUE(log->recovery_info().truncated);
  EXPECT_THAT(log->recovery_info().reason, HasSubstr("CRC"));
  EXPECT_EQ(log->recovery_info().bytes_truncated, kRecordOverhead + 100);
  ExpectPayloads(ReadAll(*log), 1, 9);
}

TEST(SegmentedLog, DropsIncompleteBatchAtTail) {
  ScopedTempDir dir;
  {
    auto log = OpenOrDie(Options(dir.path()));
    AppendRange(*log, 1, 2);
    std::vector<std::string> ps = {Payload(3), Payload(4), Payload(5)};
    std::vector<std::string_view> vs(ps.begin(), ps.end());
    ASSERT_EQ(*log->Append(vs), 3u);
  }
  // Tear the batch inside its last record: records 3 and 4 are intact but
  // belong to a batch that was never completely written.
  std::filesystem::resize_file(dir.File(1), OffsetOf(5) + 30);
  auto log = OpenOrDie(Options(dir.path()));
  EXPECT_TRUE(log->recovery_info().truncated);
  EXPECT_EQ(log->recovery_info().offset, OffsetOf(3));
  EXPECT_EQ(log->recovery_info().records_truncated, 2u);
  ExpectPayloads(ReadAll(*log), 1, 2);
  // Same when the tear falls exactly on a record boundary.
  AppendRange(*log, 3, 3);
  std::vector<std::string> ps = {Payload(4), Payload(5)};
  std::vector<std::string_view> vs(ps.begin(), ps.end());
  ASSERT_EQ(*log->Append(vs), 4u);
  ASSERT_TRUE(log->Close().ok());
  std::filesystem::resize_file(dir.File(1), OffsetOf(5));
  log = OpenOrDie(Options(dir.path()));
  EXPECT_TRUE(log->recovery_info().truncated);
  EXPECT_EQ(log->recovery_info().offset, OffsetOf(4));
  ExpectPayloads(ReadAll(*log), 1, 3);
}

TEST(SegmentedLog, MidLogCorruptionIsRefusedThenRepaired) {
  ScopedTempDir dir;
  WriteTen(dir.path());
  std::string c = ReadFile(dir.File(1));
  c[OffsetOf(4) + kRecordOverhead + 7] ^= 0x01;  // payload of record 4
  WriteFile(dir.File(1), c);

  absl::StatusOr<std::unique_ptr<SegmentedLog>> open =
      SegmentedLog::Open(Options(dir.path()));
  ASSERT_FALSE(open.ok());
  EXPECT_EQ(open.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(open.status().message(), HasSubstr(dir.File(1)));
  EXPECT_THAT(open.status().message(),
              HasSubstr(absl::StrCat("offset ", OffsetOf(4))));
  EXPECT_THAT(open.status().message(),
              HasSubstr(absl::StrCat("cityosd repair-log ", dir.path())));
  // Nothing was changed by the refused open.
  EXPECT_EQ(ReadFile(dir.File(1)), c);

  absl::StatusOr<RepairReport> report = SegmentedLog::Repair(dir.path());
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_EQ(report->file, dir.File(1));
  EXPECT_EQ(report->offset, OffsetOf(4));
  EXPECT_EQ(report->last_good_sequence, 3u);
  EXPECT_EQ(report->bytes_dropped, 7 * (kRecordOverhead + 100));
  EXPECT_EQ(report->records_dropped_estimate, 6u);  // 5..10 still pass CRC
  EXPECT_EQ(report->segments_removed, 0u);
  EXPECT_THAT(report->ToString(), HasSubstr("last good sequence 3"));

  auto log = OpenOrDie(Options(dir.path()));
  EXPECT_FALSE(log->recovery_info().truncated);
  ExpectPayloads(ReadAll(*log), 1, 3);
  AppendRange(*log, 4, 5);
  ExpectPayloads(ReadAll(*log), 1, 5);
  ASSERT_TRUE(log->Close().ok());
  // Repairing an intact log changes nothing.
  report = SegmentedLog::Repair(dir.path());
  ASSERT_TRUE(report.ok());
  EXPECT_TRUE(report->file.empty());
  EXPECT_EQ(report->last_good_sequence, 5u);
}

TEST(SegmentedLog, CorruptionInSealedSegmentIsRefusedThenRepaired) {
  ScopedTempDir dir;
  LogOptions o = Options(dir.path());
  o.segment_bytes = 1024;
  { AppendRange(*OpenOrDie(o), 1, 40); }
  // Damage the last record of the first (sealed) segment: it is followed by
  // more segments, so this is not a torn tail.
  const uint64_t first_size = FileSizeOf(dir.File(1));
  std::string c = ReadFile(dir.File(1));
  c[first_size - 3] ^= 0x40;
  WriteFile(dir.File(1), c);
  absl::StatusOr<std::unique_ptr<SegmentedLog>> open = SegmentedLog::Open(o);
  ASSERT_EQ(open.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(open.status().message(), HasSubstr(dir.File(1)));
  const uint64_t bad_offset = first_size - (kRecordOverhead + 100);
  EXPECT_THAT(open.status().message(),
              HasSubstr(absl::StrCat("offset ", bad_offset)));

  const uint32_t segments_before =
      std::distance(std::filesystem::directory_iterator(dir.path()),
                    std::filesystem::directory_iterator{});
  absl::StatusOr<RepairReport> report = SegmentedLog::Repair(dir.path());
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_EQ(report->offset, bad_offset);
  EXPECT_GT(report->segments_removed, 0u);
  const uint64_t kept =
      (bad_offset - kSegmentHeaderSize) / (kRecordOverhead + 100);
  EXPECT_EQ(report->last_good_sequence, kept);
  EXPECT_EQ(report->records_dropped_estimate, 40 - kept - 1);
  EXPECT_GT(segments_before, 3u);
  auto log = OpenOrDie(o);
  EXPECT_EQ(log->State().segments, 1u);
  ExpectPayloads(ReadAll(*log), 1, kept);
  AppendRange(*log, kept + 1, kept + 30);
  ExpectPayloads(ReadAll(*log), 1, kept + 30);
}

TEST(SegmentedLog, BadSegmentHeaderIsRefused) {
  ScopedTempDir dir;
  LogOptions o = Options(dir.path());
  o.segment_bytes = 1024;
  { AppendRange(*OpenOrDie(o), 1, 40); }
  std::string c = ReadFile(dir.File(9));
  ASSERT_FALSE(c.empty());
  c[2] = 'X';  // magic
  WriteFile(dir.File(9), c);
  absl::StatusOr<std::unique_ptr<SegmentedLog>> open = SegmentedLog::Open(o);
  ASSERT_EQ(open.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(open.status().message(), HasSubstr(dir.File(9)));
  EXPECT_THAT(open.status().message(), HasSubstr("offset 0"));
  absl::StatusOr<RepairReport> report = SegmentedLog::Repair(dir.path());
  ASSERT_TRUE(report.ok());
  EXPECT_EQ(report->file, dir.File(9));
  EXPECT_EQ(report->last_good_sequence, 8u);
  auto log = OpenOrDie(o);
  ExpectPayloads(ReadAll(*log), 1, 8);
}

TEST(SegmentedLog, SequenceGapIsRefusedEvenAtTheTail) {
  ScopedTempDir dir;
  WriteTen(dir.path());
  // A well-formed record whose sequence skips ahead cannot be a torn write.
  std::string c = ReadFile(dir.File(1));
  AppendRecord(&c, 15, 0, Payload(15), false);
  WriteFile(dir.File(1), c);
  absl::StatusOr<std::unique_ptr<SegmentedLog>> open =
      SegmentedLog::Open(Options(dir.path()));
  ASSERT_EQ(open.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(open.status().message(), HasSubstr("sequence gap"));
  EXPECT_THAT(open.status().message(),
              HasSubstr(absl::StrCat("offset ", OffsetOf(11))));
  absl::StatusOr<RepairReport> report = SegmentedLog::Repair(dir.path());
  ASSERT_TRUE(report.ok());
  EXPECT_EQ(report->last_good_sequence, 10u);
  ExpectPayloads(ReadAll(*OpenOrDie(Options(dir.path()))), 1, 10);
}

// ---------------------------------------------------------------- retention

TEST(SegmentedLog, RetentionByAgeDeletesWholeSegmentsOnly) {
  ScopedTempDir dir;
  const absl::Time t0 = absl::FromUnixSeconds(1700000000);
  SimulatedClock clock(t0);
  LogOptions o = Options(dir.path());
  o.clock = &clock;
  o.segment_bytes = 1024;  // 8 records of 124 bytes per segment
  o.max_age = absl::Hours(1);
  auto log = OpenOrDie(o);
  for (uint64_t i = 1; i <= 40; ++i) {  // one record a minute
    AppendRange(*log, i, i);
    clock.Advance(absl::Minutes(1));
  }
  const LogState before = log->State();
  EXPECT_EQ(before.segments, 5u);
  ASSERT_TRUE(log->ApplyRetention().ok());
  EXPECT_EQ(log->State().segments, 5u);  // nothing is an hour old yet
  // Now t0+40min. At t0+69min, segment 1 (records at 0..7 min, newest 7 min)
  // is 62 min old; segment 9 (8..15) is 54 min old and stays.
  clock.Advance(absl::Minutes(29));
  ASSERT_TRUE(log->ApplyRetention().ok());
  LogState after = log->State();
  EXPECT_EQ(after.segments, 4u);
  EXPECT_EQ(after.first_sequence, 9u);
  EXPECT_EQ(after.first_time, t0 + absl::Minutes(8));
  EXPECT_FALSE(std::filesystem::exists(dir.File(1)));
  EXPECT_FALSE(std::filesystem::exists(dir.File(1, true)));
  ExpectPayloads(ReadAll(*log, 1), 9, 40);
  // Far in the future everything but the active segment goes.
  clock.Advance(absl::Hours(10));
  ASSERT_TRUE(log->ApplyRetention().ok());
  after = log->State();
  EXPECT_EQ(after.segments, 1u);
  EXPECT_EQ(after.first_sequence, 33u);
  EXPECT_EQ(after.last_sequence, 40u);
  ASSERT_TRUE(log->Close().ok());
  auto again = OpenOrDie(o);
  EXPECT_EQ(again->State().first_sequence, 33u);
  AppendRange(*again, 41, 41);
}

TEST(SegmentedLog, RetentionBySizeKeepsActiveSegment) {
  ScopedTempDir dir;
  LogOptions o = Options(dir.path());
  o.segment_bytes = 1024;
  o.max_bytes = 3000;
  auto log = OpenOrDie(o);
  AppendRange(*log, 1, 40);
  ASSERT_TRUE(log->ApplyRetention().ok());
  LogState st = log->State();
  EXPECT_LE(st.bytes, 3000u);
  EXPECT_EQ(st.segments, 2u);  // five 1024-byte segments: the oldest 3 go
  EXPECT_EQ(st.last_sequence, 40u);
  ExpectPayloads(ReadAll(*log, 1), st.first_sequence, 40);
  o.max_bytes = 1;  // smaller than any segment: only the active one stays
  log.reset();
  log = OpenOrDie(o);
  ASSERT_TRUE(log->ApplyRetention().ok());
  EXPECT_EQ(log->State().segments, 1u);
  EXPECT_EQ(log->State().first_sequence, 33u);
}

TEST(SegmentedLog, ReaderInDeletedSegmentContinues) {
  ScopedTempDir dir;
  LogOptions o = Options(dir.path());
  o.segment_bytes = 1024;
  o.max_bytes = 1;
  auto log = OpenOrDie(o);
  AppendRange(*log, 1, 40);
  auto reader = *log->NewReader(1);
  LogRecord rec;
  for (uint64_t i = 1; i <= 3; ++i) ASSERT_TRUE(*reader->Next(&rec));
  auto late = *log->NewReader(1);  // not yet positioned
  ASSERT_TRUE(log->ApplyRetention().ok());
  EXPECT_FALSE(std::filesystem::exists(dir.File(1)));
  // The positioned reader finishes segment 1 from its open file, then skips
  // to the oldest retained record.
  std::vector<uint64_t> seen;
  while (*reader->Next(&rec)) seen.push_back(rec.sequence);
  ASSERT_EQ(seen.size(), 5u + 8u);
  EXPECT_EQ(seen[0], 4u);
  EXPECT_EQ(seen[4], 8u);
  EXPECT_EQ(seen[5], 33u);
  ASSERT_TRUE(*late->Next(&rec));
  EXPECT_EQ(rec.sequence, 33u);
}

// ---------------------------------------------------------------- errors

TEST(SegmentedLog, RejectsInvalidOptions) {
  ScopedTempDir dir;
  struct Case {
    std::function<void(LogOptions&)> mutate;
    const char* field;
  };
  const Case cases[] = {
      {[](LogOptions& o) { o.dir.clear(); }, "dir"},
      {[](LogOptions& o) { o.segment_bytes = 100; }, "segment_bytes"},
      {[](LogOptions& o) { o.index_interval_bytes = 0; },
       "index_interval_bytes"},
      {[](LogOptions& o) {
         o.durability = Durability::kInterval;
         o.sync_interval = absl::ZeroDuration();
       },
       "sync_interval"},
      {[](LogOptions& o) { o.max_age = -absl::Seconds(1); }, "max_age"},
      {[](LogOptions& o) { o.max_pending_bytes = 0; }, "max_pending_bytes"},
      {[](LogOptions& o) { o.max_unsynced_bytes = 0; }, "max_unsynced_bytes"},
      {[](LogOptions& o) { o.durability = static_cast<Durability>(7); },
       "durability"},
  };
  for (const Case& c : cases) {
    LogOptions o = Options(dir.path());
    c.mutate(o);
    absl::StatusOr<std::unique_ptr<SegmentedLog>> log = SegmentedLog::Open(o);
    ASSERT_FALSE(log.ok()) << c.field;
    EXPECT_EQ(log.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(log.status().message(), HasSubstr(c.field));
  }
}

TEST(SegmentedLog, RejectsBadBatches) {
  ScopedTempDir dir;
  auto log = OpenOrDie(Options(dir.path()));
  EXPECT_EQ(log->Append({}).status().code(),
            absl::StatusCode::kInvalidArgument);
  const std::string big(kMaxPayloadBytes + 1, 'x');
  const std::string_view vs[] = {"ok", big};
  absl::StatusOr<uint64_t> r = log->Append(vs);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(r.status().message(), HasSubstr("payload 1"));
  // Nothing of the rejected batch was written; sequences stay gap-free.
  AppendRange(*log, 1, 1);
  EXPECT_EQ(log->State().last_sequence, 1u);
}

TEST(SegmentedLog, SecondOpenOfSameDirectoryFails) {
  ScopedTempDir dir;
  auto log = OpenOrDie(Options(dir.path()));
  absl::StatusOr<std::unique_ptr<SegmentedLog>> second =
      SegmentedLog::Open(Options(dir.path()));
  EXPECT_EQ(second.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(SegmentedLog::Repair(dir.path()).status().code(),
            absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE(log->Close().ok());
  EXPECT_TRUE(SegmentedLog::Open(Options(dir.path())).ok());
}

TEST(SegmentedLog, AppendAfterCloseFailsAndCloseIsIdempotent) {
  ScopedTempDir dir;
  auto log = OpenOrDie(Options(dir.path()));
  AppendRange(*log, 1, 3);
  auto reader = *log->NewReader(1);
  EXPECT_TRUE(log->Close().ok());
  EXPECT_TRUE(log->Close().ok());
  const std::string_view v[] = {"late"};
  EXPECT_EQ(log->Append(v).status().code(),
            absl::StatusCode::kFailedPrecondition);
  bool called = false;
  log->AppendAsync(v, [&](absl::StatusOr<uint64_t> r) {
    called = true;
    EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition);
  });
  EXPECT_TRUE(called);
  // Readers keep working after Close (and after the log is gone).
  log.reset();
  LogRecord rec;
  int n = 0;
  while (*reader->Next(&rec)) ++n;
  EXPECT_EQ(n, 3);
}

TEST(SegmentedLog, FsyncFailureRefusesLaterAppends) {
  for (Durability d : {Durability::kFsync, Durability::kNone}) {
    ScopedTempDir dir;
    LogOptions o = Options(dir.path());
    o.durability = d;
    auto log = OpenOrDie(o);
    AppendRange(*log, 1, 3);
    log->FailSyncsForTest(true);
    const std::string_view v[] = {"x"};
    if (d == Durability::kFsync) {
      absl::StatusOr<uint64_t> r = log->Append(v);
      EXPECT_EQ(r.status().code(), absl::StatusCode::kInternal);
      EXPECT_THAT(r.status().message(), HasSubstr("fdatasync"));
      EXPECT_THAT(r.status().message(), HasSubstr(dir.File(1)));
      EXPECT_EQ(log->LastSequence(), 3u);  // not acknowledged
      // From now on every append is refused, even once syncs work again.
      log->FailSyncsForTest(false);
      r = log->Append(v);
      EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition);
      EXPECT_THAT(r.status().message(), HasSubstr("reopen"));
    } else {
      ASSERT_TRUE(log->Append(v).ok());  // kNone acks after write(2)
      EXPECT_FALSE(log->Close().ok());   // the final sync fails
    }
    log.reset();
    // Reopening recovers; the unacknowledged record may or may not be there.
    log = OpenOrDie(o);
    const uint64_t last = log->State().last_sequence;
    EXPECT_GE(last, 3u);
    std::vector<LogRecord> recs = ReadAll(*log);
    ASSERT_GE(recs.size(), 3u);
    recs.resize(3);
    ExpectPayloads(recs, 1, 3);
    const std::string_view w[] = {"after reopen"};
    EXPECT_EQ(*log->Append(w), last + 1);
  }
}

// ------------------------------------------------------- kFsync pipeline

// Pauses every kFsync log's syncer before its fdatasync; releases it even
// when an assertion fails.
struct PauseSyncs {
  PauseSyncs() { SegmentedLog::PauseSyncsForTest(true); }
  ~PauseSyncs() { Release(); }
  void Release() { SegmentedLog::PauseSyncsForTest(false); }
};

uint64_t SegmentBytesIn(const std::string& dir) {
  uint64_t total = 0;
  for (const auto& e : std::filesystem::directory_iterator(dir)) {
    if (e.path().extension() == ".log") total += e.file_size();
  }
  return total;
}

size_t SegmentFilesIn(const std::string& dir) {
  size_t n = 0;
  for (const auto& e : std::filesystem::directory_iterator(dir)) {
    if (e.path().extension() == ".log") ++n;
  }
  return n;
}

TEST(SegmentedLog, FsyncHidesWrittenRecordsUntilSyncedAcrossRollOvers) {
  ScopedTempDir dir;
  LogOptions o = Options(dir.path());
  o.segment_bytes = 1024;  // a roll-over for every big record
  // During a sync the flusher is woken only once this much is queued
  // (max_pending_bytes / 2), so it writes the big records while paused.
  o.max_pending_bytes = 64 << 10;
  constexpr size_t kBig = 1000;
  auto log = OpenOrDie(o);
  std::atomic<uint64_t> listened{0};
  log->SetAppendListener([&](uint64_t last) { listened = last; });
  AppendRange(*log, 1, 2);  // small: both in segment 1
  // The listener runs after the acknowledgement.
  for (int i = 0; i < 5000 && listened.load() != 2; ++i) {
    absl::SleepFor(absl::Milliseconds(1));
  }
  ASSERT_EQ(listened.load(), 2u);
  absl::StatusOr<std::unique_ptr<LogReader>> reader = log->NewReader(1);
  ASSERT_TRUE(reader.ok());
  LogRecord rec;
  for (uint64_t i = 1; i <= 2; ++i) {
    ASSERT_TRUE(*(*reader)->Next(&rec));
    ASSERT_EQ(rec.sequence, i);
  }
  const uint64_t synced_before = log->syncs_for_test();

  // Records 3..83 in three phases: 3 alone (the group the paused syncer
  // holds), then two phases of 40 big records; each crosses the eager-write
  // threshold, so the flusher writes it as one group into a new segment (a
  // group is never split), 82 KB written and unsynced in all.
  constexpr uint64_t kLast = 83;
  std::vector<uint64_t> order;
  absl::Mutex mu;
  absl::Notification all_done;
  std::vector<std::string> payloads;
  for (uint64_t i = 3; i <= kLast; ++i) payloads.push_back(Payload(i, kBig));
  {
    PauseSyncs pause;
    const auto wait_for_files = [&](size_t n) {
      for (int i = 0; i < 5000 && SegmentFilesIn(dir.path()) < n; ++i) {
        absl::SleepFor(absl::Milliseconds(1));
      }
    };
    const uint64_t empty = SegmentBytesIn(dir.path());
    for (uint64_t i = 3; i <= kLast; ++i) {
      if (i == 4) {  // 3 is written
        for (int k = 0; k < 5000 && SegmentBytesIn(dir.path()) == empty; ++k) {
          absl::SleepFor(absl::Milliseconds(1));
        }
        // The syncer has taken 3's group and is held before its sync.
        for (int k = 0; k < 5000 && SegmentedLog::SyncsHeldForTest() == 0; ++k) {
          absl::SleepFor(absl::Milliseconds(1));
        }
        ASSERT_EQ(SegmentedLog::SyncsHeldForTest(), 1);
      }
      if (i == 44) wait_for_files(2);
      const std::string_view v[] = {payloads[i - 3]};
      log->AppendAsync(v, [&, i](absl::StatusOr<uint64_t> first) {
        EXPECT_TRUE(first.ok()) << first.status();
        if (first.ok()) {
          EXPECT_EQ(*first, i);
        }
        // Acknowledged: visible to readers.
        EXPECT_GE(log->LastSequence(), i);
        absl::MutexLock l(&mu);
        order.push_back(i);
        if (i == kLast) all_done.Notify();
      });
    }
    // The flusher writes most of them (rolling over) ...
    wait_for_files(3);
    EXPECT_GE(SegmentFilesIn(dir.path()), 3u);
    absl::SleepFor(absl::Milliseconds(20));
    // ... but nothing of them is acknowledged or visible while no
    // fdatasync ran: not the records, not the new segments.
    {
      absl::MutexLock l(&mu);
      EXPECT_TRUE(order.empty());
    }
    EXPECT_EQ(log->LastSequence(), 2u);
    const LogState st = log->State();
    EXPECT_EQ(st.last_sequence, 2u);
    EXPECT_EQ(st.events, 2u);
    EXPECT_EQ(st.segments, 1u);  // the new segment files are not published
    absl::StatusOr<bool> more = (*reader)->Next(&rec);
    ASSERT_TRUE(more.ok()) << more.status();
    EXPECT_FALSE(*more);
    absl::StatusOr<std::unique_ptr<LogReader>> late = log->NewReader(10);
    ASSERT_TRUE(late.ok());
    more = (*late)->Next(&rec);
    ASSERT_TRUE(more.ok()) << more.status();
    EXPECT_FALSE(*more);
    EXPECT_EQ(*log->SequenceAtOrAfter(absl::InfiniteFuture()), 3u);
    EXPECT_EQ(listened.load(), 2u);
  }
  all_done.WaitForNotification();
  {
    absl::MutexLock l(&mu);
    ASSERT_EQ(order.size(), kLast - 2);
    for (uint64_t i = 0; i < order.size(); ++i) EXPECT_EQ(order[i], i + 3);
  }
  EXPECT_GT(log->syncs_for_test(), synced_before);
  // The reader that stopped at 2 goes on through the new segments.
  for (uint64_t i = 3; i <= kLast; ++i) {
    absl::StatusOr<bool> more = (*reader)->Next(&rec);
    ASSERT_TRUE(more.ok()) << more.status();
    ASSERT_TRUE(*more) << "sequence " << i;
    ASSERT_EQ(rec.sequence, i);
    ASSERT_EQ(rec.payload, Payload(i, kBig));
  }
  EXPECT_GE(log->State().segments, 3u);
  ASSERT_TRUE(log->Close().ok());
  EXPECT_EQ(listened.load(), kLast);
  log = OpenOrDie(o);
  EXPECT_FALSE(log->recovery_info().truncated);
  std::vector<LogRecord> recs = ReadAll(*log);
  ASSERT_EQ(recs.size(), kLast);
  for (uint64_t i = 1; i <= kLast; ++i) {
    ASSERT_EQ(recs[i - 1].sequence, i);
    ASSERT_EQ(recs[i - 1].payload, Payload(i, i <= 2 ? 100 : kBig));
  }
}

TEST(SegmentedLog, FsyncAppendsFromCallbacksNeverWaitForTheLogsThreads) {
  ScopedTempDir dir;
  LogOptions o = Options(dir.path());
  o.max_pending_bytes = 256;  // back-pressure at once
  auto log = OpenOrDie(o);
  constexpr int kChain = 50;
  std::atomic<int> acked{0};
  absl::Notification done;
  const std::string p = Payload(1);
  std::function<void(absl::StatusOr<uint64_t>)> next;
  next = [&](absl::StatusOr<uint64_t> first) {
    EXPECT_TRUE(first.ok()) << first.status();
    if (++acked == kChain) {
      done.Notify();
      return;
    }
    // On the syncer thread: two appends, over the pending bound, must not
    // block (the syncer would wait for itself).
    const std::string_view v[] = {p, p};
    log->AppendAsync(v, [](absl::StatusOr<uint64_t>) {});
    log->AppendAsync(v, [&](absl::StatusOr<uint64_t> r) { next(std::move(r)); });
  };
  const std::string_view v[] = {p};
  log->AppendAsync(v, [&](absl::StatusOr<uint64_t> r) { next(std::move(r)); });
  done.WaitForNotification();
  ASSERT_TRUE(log->Close().ok());
  EXPECT_EQ(log->State().last_sequence, 1u + 4u * (kChain - 1));
}

TEST(SegmentedLog, FsyncCloseSyncsAndAcknowledgesEverythingQueued) {
  ScopedTempDir dir;
  LogOptions o = Options(dir.path());
  o.segment_bytes = 4096;
  constexpr int kAppends = 300;
  std::atomic<int> ok{0};
  std::vector<std::string> payloads;
  for (int i = 1; i <= kAppends; ++i) payloads.push_back(Payload(i));
  {
    auto log = OpenOrDie(o);
    for (int i = 0; i < kAppends; ++i) {
      const std::string_view v[] = {payloads[i]};
      log->AppendAsync(v, [&](absl::StatusOr<uint64_t> first) {
        if (first.ok()) ok.fetch_add(1);
      });
    }
    ASSERT_TRUE(log->Close().ok());
    EXPECT_EQ(ok.load(), kAppends);
    EXPECT_EQ(log->LastSequence(), uint64_t{kAppends});
  }
  auto log = OpenOrDie(o);
  EXPECT_FALSE(log->recovery_info().truncated);
  ExpectPayloads(ReadAll(*log), 1, kAppends);
}

TEST(SegmentedLog, FsyncFailedSyncFailsEveryAppendWrittenBehindIt) {
  ScopedTempDir dir;
  auto log = OpenOrDie(Options(dir.path()));
  AppendRange(*log, 1, 2);
  std::vector<absl::Status> results(20);
  std::atomic<int> done{0};
  absl::Notification all;
  const std::string p = Payload(3);
  {
    PauseSyncs pause;
    log->FailSyncsForTest(true);
    for (int i = 0; i < 20; ++i) {
      const std::string_view v[] = {p};
      log->AppendAsync(v, [&, i](absl::StatusOr<uint64_t> first) {
        results[i] = first.status();
        if (++done == 20) all.Notify();
      });
    }
    absl::SleepFor(absl::Milliseconds(20));  // let the flusher write some
  }
  all.WaitForNotification();
  // Whatever was written when the sync failed fails INTERNAL, everything
  // after it FAILED_PRECONDITION; nothing is acknowledged or visible.
  bool refused = false;
  for (const absl::Status& s : results) {
    ASSERT_FALSE(s.ok());
    if (s.code() == absl::StatusCode::kFailedPrecondition) refused = true;
    if (refused) {
      EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
    } else {
      EXPECT_EQ(s.code(), absl::StatusCode::kInternal) << s;
      EXPECT_THAT(s.message(), HasSubstr("fdatasync"));
    }
  }
  EXPECT_EQ(results[0].code(), absl::StatusCode::kInternal);
  EXPECT_EQ(log->LastSequence(), 2u);
  EXPECT_EQ(ReadAll(*log).size(), 2u);
  log->FailSyncsForTest(false);
  const std::string_view v[] = {p};
  EXPECT_EQ(log->Append(v).status().code(),
            absl::StatusCode::kFailedPrecondition);
}

// Polls `cond` (no timing assertion: the caller asserts the condition).
template <typename Cond>
void WaitUntil(Cond cond) {
  for (int i = 0; i < 10000 && !cond(); ++i) {
    absl::SleepFor(absl::Milliseconds(1));
  }
}

// A failed fdatasync at a roll-over (on the flusher, while the syncer holds
// the group written before): the group it covered fails INTERNAL
// "fdatasync <old segment>", the group that rolls and every later one
// FAILED_PRECONDITION; nothing is acknowledged. Both with every sync failing
// and with only the first one failing (Linux reports a writeback error once
// per open file: the syncer's later fdatasync of the same file succeeds and
// must not acknowledge what the failed one covered).
TEST(SegmentedLog, FsyncFailedRollOverSyncFailsCoveredGroupsInternal) {
  for (const bool fail_once : {false, true}) {
    SCOPED_TRACE(fail_once ? "first sync fails" : "every sync fails");
    ScopedTempDir dir;
    LogOptions o = Options(dir.path());
    o.segment_bytes = 1024;
    // During a sync the flusher is woken once max_pending_bytes / 2 are
    // queued: a big record wakes it, so it rolls while the syncer is paused.
    o.max_pending_bytes = 1024;
    auto log = OpenOrDie(o);
    AppendRange(*log, 1, 2);  // small: segment 1 stays under 1024 bytes
    const std::string a = Payload(3, 900);
    const std::string b = Payload(4, 900);
    const std::string c = Payload(5);
    absl::Status results[3];
    std::atomic<int> done{0};
    absl::Notification all;
    const auto record = [&](int i) {
      return [&, i](absl::StatusOr<uint64_t> first) {
        results[i] = first.status();
        if (++done == 3) all.Notify();
      };
    };
    {
      PauseSyncs pause;
      const std::string_view va[] = {a};
      log->AppendAsync(va, record(0));  // segment 1 now over segment_bytes
      WaitUntil([&] { return log->unsynced_bytes_for_test() > 0; });
      ASSERT_GT(log->unsynced_bytes_for_test(), 0u);  // written, held
      if (fail_once) {
        log->FailNextSyncsForTest(1);
      } else {
        log->FailSyncsForTest(true);
      }
      const std::string_view vb[] = {b};
      log->AppendAsync(vb, record(1));  // rolls: syncs segment 1 and fails
      WaitUntil([&] { return log->refuses_appends_for_test(); });
      ASSERT_TRUE(log->refuses_appends_for_test());
      const std::string_view vc[] = {c};
      log->AppendAsync(vc, record(2));
      EXPECT_EQ(done.load(), 0);  // completed in order, behind the held one
    }
    all.WaitForNotification();
    EXPECT_EQ(results[0].code(), absl::StatusCode::kInternal) << results[0];
    EXPECT_THAT(results[0].message(), HasSubstr("fdatasync"));
    EXPECT_THAT(results[0].message(), HasSubstr(dir.File(1)));
    for (int i = 1; i < 3; ++i) {
      EXPECT_EQ(results[i].code(), absl::StatusCode::kFailedPrecondition)
          << results[i];
      EXPECT_THAT(results[i].message(), HasSubstr("reopen"));
    }
    EXPECT_EQ(log->LastSequence(), 2u);
    EXPECT_EQ(ReadAll(*log).size(), 2u);
    EXPECT_EQ(log->State().segments, 1u);
    log->FailSyncsForTest(false);
    const std::string_view v[] = {c};
    EXPECT_EQ(log->Append(v).status().code(),
              absl::StatusCode::kFailedPrecondition);
    log.reset();
    log = OpenOrDie(o);  // reopening recovers the acknowledged prefix
    std::vector<LogRecord> recs = ReadAll(*log);
    ASSERT_GE(recs.size(), 2u);
    recs.resize(2);
    ExpectPayloads(recs, 1, 2);
  }
}

// Written but unsynced bytes never exceed max_unsynced_bytes: with the
// syncer paused, the flusher writes up to the bound and leaves the rest
// queued; once released, every append is acknowledged in order, each
// fdatasync covering at most the bound.
TEST(SegmentedLog, FsyncBoundsWrittenButUnsyncedBytes) {
  ScopedTempDir dir;
  LogOptions o = Options(dir.path());
  constexpr uint64_t kBound = 4096;
  constexpr size_t kPayload = 200;
  constexpr uint64_t kBatchBytes = kRecordOverhead + kPayload;
  constexpr int kAppends = 500;  // ~110 KB: past the 64 KiB eager-write mark
  o.max_unsynced_bytes = kBound;
  o.max_pending_bytes = uint64_t{1} << 20;  // the queue holds them all
  o.segment_bytes = 32 << 10;               // and a few roll-overs
  auto log = OpenOrDie(o);
  std::vector<std::string> payloads;
  for (int i = 1; i <= kAppends; ++i) payloads.push_back(Payload(i, kPayload));
  std::vector<uint64_t> order;
  absl::Mutex mu;
  absl::Notification all;
  const auto append = [&](int i) {
    const std::string_view v[] = {payloads[i - 1]};
    log->AppendAsync(v, [&, i](absl::StatusOr<uint64_t> first) {
      EXPECT_TRUE(first.ok()) << first.status();
      if (first.ok()) {
        EXPECT_EQ(*first, uint64_t(i));
      }
      absl::MutexLock l(&mu);
      order.push_back(i);
      if (i == kAppends) all.Notify();
    });
  };
  {
    PauseSyncs pause;
    for (int i = 1; i <= kAppends; ++i) append(i);
    // The flusher fills up to the bound, then waits for a sync.
    WaitUntil([&] {
      return log->unsynced_bytes_for_test() + kBatchBytes > kBound;
    });
    EXPECT_GT(log->unsynced_bytes_for_test() + kBatchBytes, kBound);
    EXPECT_LE(log->unsynced_bytes_for_test(), kBound);
    EXPECT_LE(log->max_unsynced_bytes_seen_for_test(), kBound);
    absl::MutexLock l(&mu);
    EXPECT_TRUE(order.empty());
  }
  all.WaitForNotification();
  EXPECT_LE(log->max_unsynced_bytes_seen_for_test(), kBound);
  {
    absl::MutexLock l(&mu);
    ASSERT_EQ(order.size(), size_t{kAppends});
    for (int i = 0; i < kAppends; ++i) EXPECT_EQ(order[i], uint64_t(i + 1));
  }
  // Each fdatasync covered at most kBound bytes.
  EXPECT_GE(log->syncs_for_test(), kAppends * kBatchBytes / kBound);
  // A single batch over the bound is still written (alone).
  const std::string big = Payload(kAppends + 1, 3 * kBound);
  const std::string_view v[] = {big};
  absl::StatusOr<uint64_t> seq = log->Append(v);
  ASSERT_TRUE(seq.ok()) << seq.status();
  EXPECT_EQ(*seq, uint64_t{kAppends + 1});
  ASSERT_TRUE(log->Close().ok());
  log = OpenOrDie(o);
  std::vector<LogRecord> recs = ReadAll(*log);
  ASSERT_EQ(recs.size(), size_t{kAppends + 1});
  recs.pop_back();
  ExpectPayloads(recs, 1, kAppends, kPayload);
}

// Child-side check for the forked full-disk test: prints and exits.
#define CHILD_CHECK(cond, msg)                                    \
  do {                                                            \
    if (!(cond)) {                                                \
      std::fprintf(stderr, "child check failed: %s: %s\n", #cond, \
                   std::string(msg).c_str());                     \
      std::fflush(stderr);                                        \
      ::_exit(1);                                                 \
    }                                                             \
  } while (false)

TEST(SegmentedLog, FullDiskFailsCleanlyAndRecovers) {
  ScopedTempDir dir;
  int pipe_fds[2];
  ASSERT_EQ(::pipe(pipe_fds), 0);
  const pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    ::close(pipe_fds[0]);
    // write(2) past RLIMIT_FSIZE fails with EFBIG instead of killing us.
    ::signal(SIGXFSZ, SIG_IGN);
    struct rlimit rl;
    ::getrlimit(RLIMIT_FSIZE, &rl);
    constexpr rlim_t kLimit = 64 << 10;
    rl.rlim_cur = kLimit;
    CHILD_CHECK(::setrlimit(RLIMIT_FSIZE, &rl) == 0, "setrlimit");
    LogOptions o = Options(dir.path());
    o.segment_bytes = 1 << 20;
    auto opened = SegmentedLog::Open(o);
    CHILD_CHECK(opened.ok(), opened.status().ToString());
    SegmentedLog& log = **opened;
    // Many batches in flight at once: when the disk fills, the failing
    // group and everything queued behind it fail, nothing half-written.
    constexpr int kBatches = 400;
    constexpr int kBatchSize = 4;
    std::vector<std::vector<std::string>> payloads(kBatches);
    std::vector<absl::StatusOr<uint64_t>> results(kBatches, 0);
    std::atomic<int> done{0};
    absl::Notification all;
    // The first few synchronously (they fit), then the rest all at once:
    // together they need ~250 KB, so some must fail, whatever the grouping.
    constexpr int kSync = 5;
    for (int b = 0; b < kBatches; ++b) {
      for (int i = 0; i < kBatchSize; ++i) {
        payloads[b].push_back(absl::StrCat("batch ", b, " item ", i, " ",
                                           std::string(100 + b % 50, 'p')));
      }
      std::vector<std::string_view> vs(payloads[b].begin(), payloads[b].end());
      if (b < kSync) {
        results[b] = log.Append(vs);
        CHILD_CHECK(results[b].ok(), results[b].status().ToString());
        ++done;
        continue;
      }
      log.AppendAsync(vs, [&, b](absl::StatusOr<uint64_t> r) {
        results[b] = std::move(r);
        if (++done == kBatches) all.Notify();
      });
    }
    all.WaitForNotification();
    int ok = 0, exhausted = 0;
    std::map<uint64_t, int> by_sequence;  // first sequence -> batch
    for (int b = 0; b < kBatches; ++b) {
      if (results[b].ok()) {
        ++ok;
        by_sequence[*results[b]] = b;
      } else {
        CHILD_CHECK(
            results[b].status().code() == absl::StatusCode::kResourceExhausted,
            results[b].status().ToString());
        CHILD_CHECK(
            absl::StrContains(results[b].status().message(), dir.File(1)),
            results[b].status().ToString());
        CHILD_CHECK(
            absl::StrContains(results[b].status().message(), "File too large"),
            results[b].status().ToString());
        ++exhausted;
      }
    }
    CHILD_CHECK(ok > 0 && exhausted > 0, absl::StrCat(ok, "/", exhausted));
    // The acknowledged batches tile 1..last, and nothing else is on disk.
    const LogState st = log.State();
    CHILD_CHECK(st.last_sequence == uint64_t{kBatchSize} * ok, "gap-free");
    CHILD_CHECK(FileSizeOf(dir.File(1)) == st.bytes, "no partial write");
    CHILD_CHECK(st.bytes <= kLimit, "limit");
    auto reader = *log.NewReader(1);
    LogRecord rec;
    for (const auto& [first, b] : by_sequence) {
      for (int i = 0; i < kBatchSize; ++i) {
        absl::StatusOr<bool> more = reader->Next(&rec);
        CHILD_CHECK(more.ok() && *more, "read");
        CHILD_CHECK(rec.sequence == first + i, "sequence");
        CHILD_CHECK(rec.payload == payloads[b][i], "payload");
      }
    }
    CHILD_CHECK(!*reader->Next(&rec), "nothing more");
    // Space returns: the log keeps working.
    rl.rlim_cur = rl.rlim_max;
    CHILD_CHECK(::setrlimit(RLIMIT_FSIZE, &rl) == 0, "raise limit");
    const std::string_view more[] = {"after", "space", "returned"};
    absl::StatusOr<uint64_t> r = log.Append(more);
    CHILD_CHECK(r.ok() && *r == st.last_sequence + 1, r.status().ToString());
    CHILD_CHECK(log.Close().ok(), "close");
    const uint64_t last = *r + 2;
    CHILD_CHECK(::write(pipe_fds[1], &last, sizeof(last)) == sizeof(last),
                "pipe");
    ::_exit(0);
  }
  ::close(pipe_fds[1]);
  uint64_t last = 0;
  const ssize_t n = ::read(pipe_fds[0], &last, sizeof(last));
  ::close(pipe_fds[0]);
  int wstatus = 0;
  ASSERT_EQ(::waitpid(pid, &wstatus, 0), pid);
  ASSERT_TRUE(WIFEXITED(wstatus));
  ASSERT_EQ(WEXITSTATUS(wstatus), 0) << "see the child's stderr above";
  ASSERT_EQ(n, static_cast<ssize_t>(sizeof(last)));
  auto log = OpenOrDie(Options(dir.path()));
  EXPECT_FALSE(log->recovery_info().truncated);
  EXPECT_EQ(log->State().last_sequence, last);
  std::vector<LogRecord> recs = ReadAll(*log);
  ASSERT_EQ(recs.size(), last);
  EXPECT_EQ(recs.back().payload, "returned");
}

}  // namespace
}  // namespace cityos::log_internal
