// Internal: a log reader that hands out no record newer than the newest one
// readers may see. Stream readers and durable consumers of the log backend
// read through one.
//
// Why: `visible` (the log's last acknowledged sequence) is taken when a read
// begins, and the reader then reads on. Usually a reader stops at `visible`
// before reading further; but when retention has removed the records at the
// reader's position, LogReader::Next skips to the oldest retained record,
// which can be one acknowledged after `visible` was taken. That record is
// held, not handed out (nor lost): a later read whose `visible` includes it
// hands it out without reading the log again.
#ifndef CITYOS_SRC_BUS_VISIBLE_READER_H_
#define CITYOS_SRC_BUS_VISIBLE_READER_H_

#include <cstdint>
#include <memory>
#include <utility>

#include "absl/status/statusor.h"
#include "cityos/status.h"
#include "log/segmented_log.h"

namespace cityos::bus_internal {

class VisibleReader {
 public:
  VisibleReader() = default;
  explicit VisibleReader(std::unique_ptr<log_internal::LogReader> reader)
      : reader_(std::move(reader)) {}

  // The next record whose sequence is at most `visible`; null when there is
  // none yet. Valid until the next call. The reader's errors as they are.
  absl::StatusOr<const log_internal::LogRecord*> Next(uint64_t visible) {
    if (!held_) {
      if (reader_->next_sequence() > visible) return nullptr;
      CITYOS_ASSIGN_OR_RETURN(bool more, reader_->Next(&record_));
      if (!more) return nullptr;
    }
    held_ = record_.sequence > visible;
    if (held_) return nullptr;
    return &record_;
  }

  // The sequence of the next record handed out (at least: retention may
  // skip further).
  uint64_t next_sequence() const { return held_ ? record_.sequence : reader_->next_sequence(); }

 private:
  std::unique_ptr<log_internal::LogReader> reader_;
  log_internal::LogRecord record_;
  bool held_ = false;  // record_ was read but is newer than `visible` was
};

}  // namespace cityos::bus_internal

#endif  // CITYOS_SRC_BUS_VISIBLE_READER_H_
