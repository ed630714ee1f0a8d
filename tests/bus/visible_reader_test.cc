// bus_internal::VisibleReader: records up to `visible` only; one read past
// it (retention skipped the reader ahead) is held, not lost, and handed out
// once visible without reading the log again; the reader's errors pass
// through.
#include "bus/visible_reader.h"

#include <deque>
#include <memory>
#include <utility>

#include "gtest/gtest.h"

namespace cityos::bus_internal {
namespace {

using log_internal::LogReader;
using log_internal::LogRecord;

// Hands out the queued sequences in order (a gap = records retention
// removed); counts its reads.
class ScriptedReader final : public LogReader {
 public:
  ScriptedReader(uint64_t next, std::deque<uint64_t> sequences, int* reads)
      : next_(next), sequences_(std::move(sequences)), reads_(reads) {}
  absl::StatusOr<bool> Next(LogRecord* record) override {
    ++*reads_;
    if (fail_) return absl::DataLossError("segment 3: bad record at offset 96");
    if (sequences_.empty()) return false;
    record->sequence = sequences_.front();
    record->payload = "event " + std::to_string(record->sequence);
    sequences_.pop_front();
    next_ = record->sequence + 1;
    return true;
  }
  uint64_t next_sequence() const override { return next_; }
  bool fail_ = false;

 private:
  uint64_t next_;
  std::deque<uint64_t> sequences_;
  int* reads_;
};

TEST(VisibleReader, HandsOutRecordsUpToVisible) {
  int reads = 0;
  VisibleReader r(std::make_unique<ScriptedReader>(5, std::deque<uint64_t>{5, 6, 7}, &reads));
  auto got = r.Next(6);
  ASSERT_TRUE(got.ok());
  ASSERT_NE(*got, nullptr);
  EXPECT_EQ((*got)->sequence, 5u);
  EXPECT_EQ((*got)->payload, "event 5");
  got = r.Next(6);
  ASSERT_NE(*got, nullptr);
  EXPECT_EQ((*got)->sequence, 6u);
  // 7 is not visible yet: the log is not even read.
  EXPECT_EQ(*r.Next(6), nullptr);
  EXPECT_EQ(reads, 2);
  EXPECT_EQ(r.next_sequence(), 7u);
  got = r.Next(7);
  ASSERT_NE(*got, nullptr);
  EXPECT_EQ((*got)->sequence, 7u);
  EXPECT_EQ(*r.Next(100), nullptr);  // the end of the log, for now
}

TEST(VisibleReader, RecordPastVisibleIsHeldNotLost) {
  int reads = 0;
  // The reader is at 3, but retention removed 3..8: its next record is 9,
  // acknowledged after the caller took visible = 8.
  VisibleReader r(std::make_unique<ScriptedReader>(3, std::deque<uint64_t>{9, 10}, &reads));
  EXPECT_EQ(*r.Next(8), nullptr);
  EXPECT_EQ(reads, 1);
  EXPECT_EQ(r.next_sequence(), 9u);  // where the caller's position is now
  EXPECT_EQ(*r.Next(8), nullptr);    // still not visible: held, no read
  EXPECT_EQ(reads, 1);
  auto got = r.Next(9);
  ASSERT_TRUE(got.ok());
  ASSERT_NE(*got, nullptr);
  EXPECT_EQ((*got)->sequence, 9u);
  EXPECT_EQ((*got)->payload, "event 9");
  EXPECT_EQ(reads, 1);  // handed out from the hold
  got = r.Next(10);
  ASSERT_NE(*got, nullptr);
  EXPECT_EQ((*got)->sequence, 10u);
}

TEST(VisibleReader, ReaderErrorsPassThrough) {
  int reads = 0;
  auto scripted = std::make_unique<ScriptedReader>(1, std::deque<uint64_t>{1}, &reads);
  scripted->fail_ = true;
  VisibleReader r(std::move(scripted));
  auto got = r.Next(5);
  EXPECT_EQ(got.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_NE(got.status().message().find("segment 3"), std::string::npos);
}

}  // namespace
}  // namespace cityos::bus_internal
