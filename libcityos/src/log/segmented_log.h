// File: log/segmented_log.h
//
// The durable segmented log under each bus stream: an append-only sequence of
// records (sequence number, publish time, opaque payload) kept in segment
// files in one directory, with group commit, crash recovery, sparse indexes
// by sequence and by time, repair and retention. docs/bus-log-format.md
// describes the files.
//
//   LogOptions options;
//   options.dir = "/var/lib/cityos/streams/carbon";
//   options.durability = Durability::kFsync;
//   CITYOS_ASSIGN_OR_RETURN(std::unique_ptr<SegmentedLog> log,
//                           SegmentedLog::Open(options));
//   if (log->recovery_info().truncated) {
//     LogWarn("bus", log->recovery_info().ToString());
//   }
//   std::string_view events[] = {"a", "b"};
//   log->AppendAsync(events, [](absl::StatusOr<uint64_t> first) { ... });
//   CITYOS_ASSIGN_OR_RETURN(std::unique_ptr<LogReader> reader,
//                           log->NewReader(1));
//   LogRecord record;
//   while (true) {
//     CITYOS_ASSIGN_OR_RETURN(bool more, reader->Next(&record));
//     if (!more) break;
//     Use(record);
//   }
//
// kFsync pipeline. A kFsync log runs two threads: the flusher (writer) takes
// what is queued (appenders framed it), write(2)s it and hands the written
// range to the syncer; the syncer runs one fdatasync(2) for every range
// written since its last one, then makes those records visible to readers
// and runs their callbacks in append order. With no sync running, an append
// wakes the flusher at once. While the syncer syncs, appends collect in the
// queue; the flusher is woken for them when the sync ends or once 64 KiB are
// queued (half of max_pending_bytes if smaller), so one wake-up of each
// thread serves several appends while most of a group is still written
// during the sync before it. Written but unsynced bytes never exceed
// max_unsynced_bytes (the flusher takes only the whole batches that fit).
// Guarantee: an append is acknowledged, and its records visible to readers,
// only once they and every record before them are on stable storage; a
// failed fdatasync fails the appends it covered (INTERNAL) and every later
// one (FAILED_PRECONDITION) until the log is reopened. A segment is synced
// by the flusher when it is sealed (Roll), before the next segment file
// exists; that fdatasync and the syncer's are serialized (sync_mu_), so an
// error Linux reports to only one of them is seen by the other. The syncer
// publishes the new segment to readers in order, after the records before
// it.
//
// Internal to libcityos (not a public header).
#ifndef CITYOS_LOG_SEGMENTED_LOG_H_
#define CITYOS_LOG_SEGMENTED_LOG_H_

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "cityos/clock.h"
#include "log/log_format.h"

namespace cityos::log_internal {

// When an append is acknowledged (its callback runs with a sequence).
enum class Durability {
  kFsync,     // after write(2) and fdatasync(2) of the batch (group commit,
              // in two stages: see "kFsync pipeline" below)
  kInterval,  // after write(2); the flusher fdatasyncs every sync_interval
  kNone,      // after write(2); synced only on segment roll-over and Close()
};

struct LogOptions {
  // Directory of this log (one per stream); created with parents if missing.
  // Required.
  std::string dir;
  // Default: kFsync.
  Durability durability = Durability::kFsync;
  // kInterval only: longest time written data stays unsynced. Must be > 0.
  // Default: 100 ms.
  absl::Duration sync_interval = absl::Milliseconds(100);
  // Roll to a new segment file once the active one reaches this size (a
  // group commit is never split, so a segment may exceed it by one group).
  // At least 1024. Default: 64 MiB.
  uint64_t segment_bytes = uint64_t{64} << 20;
  // One sparse index entry per this many bytes of segment. > 0. Default: 4096.
  uint64_t index_interval_bytes = 4096;
  // Retention (ApplyRetention): delete sealed segments whose newest record is
  // older than now - max_age. Zero keeps forever. >= 0. Default: 0.
  absl::Duration max_age = absl::ZeroDuration();
  // Retention: delete the oldest sealed segments while the log is larger than
  // this many bytes. 0 = no limit. Default: 0.
  uint64_t max_bytes = 0;
  // Source of publish timestamps and of "now" for retention. Not owned; must
  // outlive the log. Default (null): Clock::Real().
  Clock* clock = nullptr;
  // Back-pressure: AppendAsync blocks while this many bytes are queued and
  // not yet written (a batch is always admitted into an empty queue).
  // > 0. Default: 64 MiB.
  uint64_t max_pending_bytes = uint64_t{64} << 20;
  // kFsync only: most bytes written but not yet fdatasync'ed at any time
  // (what one fdatasync may have to flush). The flusher writes from the
  // queue only as much as fits under it (whole batches; a single batch
  // larger than this is written alone once nothing is unsynced) and leaves
  // the rest queued until a sync ends. > 0. Default: 16 MiB.
  uint64_t max_unsynced_bytes = uint64_t{16} << 20;
  // Open() CRC-checks every record of sealed segments too. When false, a
  // sealed segment with a valid index file whose recorded size matches the
  // file is trusted without reading it (the last segment is always scanned).
  // Default: true.
  bool verify_sealed_segments = true;
};

// One record as returned by a reader.
struct LogRecord {
  uint64_t sequence = 0;
  absl::Time publish_time;
  // A copy owned by the record; LogReader::Next() reuses its capacity.
  std::string payload;
};

// A snapshot of the log's extent. An empty log has last_sequence ==
// first_sequence - 1, events == 0 and both times absl::InfinitePast().
struct LogState {
  uint64_t first_sequence = 1;  // oldest retained record (or next to come)
  uint64_t last_sequence = 0;   // newest acknowledged record
  uint64_t events = 0;
  uint64_t bytes = 0;  // size of all retained segment files
  uint32_t segments = 0;
  absl::Time first_time = absl::InfinitePast();
  absl::Time last_time = absl::InfinitePast();
};

// What Open() did to recover; `truncated` is the one case a caller should log.
struct RecoveryInfo {
  bool truncated = false;  // a torn tail was cut off the last segment
  std::string file;        // that segment
  uint64_t offset = 0;     // its new size (where the cut was made)
  uint64_t bytes_truncated = 0;
  // Complete records removed with the torn tail because the batch they
  // belonged to was incomplete (never acknowledged).
  uint64_t records_truncated = 0;
  std::string reason;  // what was found at the cut
  uint32_t index_files_rebuilt = 0;
  uint32_t temp_files_removed = 0;
  std::string ToString() const;
};

// What Repair() dropped.
struct RepairReport {
  std::string file;     // first file cut or removed ("" if nothing was wrong)
  uint64_t offset = 0;  // where `file` was cut (0: removed whole)
  uint64_t records_dropped_estimate = 0;  // CRC-valid records found in the
                                          // dropped bytes (lower bound)
  uint64_t bytes_dropped = 0;
  uint32_t segments_removed = 0;
  uint64_t last_good_sequence = 0;  // newest record kept
  std::string reason;               // what was wrong at file:offset
  std::string ToString() const;
};

// Reads records in sequence order. Not thread-safe; use one per thread.
// A reader may outlive its SegmentedLog (it then reads what was committed).
class LogReader {
 public:
  virtual ~LogReader() = default;
  // Reads the next acknowledged record into *record. Returns false at the
  // current end of the log (not an error; call again later, e.g. from the
  // append listener). DATA_LOSS naming file and offset on a corrupt record,
  // INTERNAL on an I/O error. If retention removed the records at
  // next_sequence(), the reader skips to the oldest retained record.
  virtual absl::StatusOr<bool> Next(LogRecord* record) = 0;
  // Sequence number the next call to Next() returns (if it returns a record
  // and retention has not removed it).
  virtual uint64_t next_sequence() const = 0;
};

class SegmentedLog {
 public:
  // Runs once per AppendAsync call with the first sequence of the batch or
  // the error; see AppendAsync for the thread it runs on.
  using AppendCallback =
      absl::AnyInvocable<void(absl::StatusOr<uint64_t> first_sequence) &&>;

  // Opens the log in options.dir, creating it if empty, and recovers: every
  // segment header and (unless verify_sealed_segments is false) every record
  // is checked. A torn or corrupt tail of the last segment — bytes after
  // which no valid record follows, including a zero-filled tail, and any
  // incomplete batch — is truncated away and reported in recovery_info().
  // Anything else (a bad record followed by valid ones, a sequence gap, a bad
  // record or incomplete batch in a sealed segment, a bad segment header)
  // returns DATA_LOSS naming the file and byte offset and the repair command.
  // Bad options → INVALID_ARGUMENT naming the field; the directory already
  // open (in this or another process) → FAILED_PRECONDITION; I/O errors →
  // INTERNAL. Stray "*.tmp" files are deleted and missing or bad index files
  // of sealed segments rebuilt.
  static absl::StatusOr<std::unique_ptr<SegmentedLog>> Open(
      const LogOptions& options);

  // Repairs the log in `dir` (which must not be open): keeps the longest good
  // prefix — truncates the first segment with a bad record at that record (or
  // at the start of its incomplete batch), deletes every later segment — and
  // reports what it dropped. A log with nothing wrong is left as is (report
  // with empty `file`). Never called implicitly. This is what
  // `cityosd repair-log <dir>` runs.
  static absl::StatusOr<RepairReport> Repair(const std::string& dir);

  SegmentedLog(const SegmentedLog&) = delete;
  SegmentedLog& operator=(const SegmentedLog&) = delete;
  // Calls Close().
  ~SegmentedLog();

  // Appends `payloads` atomically (all or none, also across a crash) with
  // consecutive sequence numbers; their publish time is the clock's now,
  // made non-decreasing within the log. The payloads are copied before the
  // call returns. `done` runs exactly once on the log's flusher thread (the
  // syncer thread for kFsync) when
  // the batch is durable per options.durability, with the first sequence; or
  // with an error:
  //   INVALID_ARGUMENT  empty batch or a payload over kMaxPayloadBytes;
  //   RESOURCE_EXHAUSTED the disk (or file size limit) is full: nothing of
  //                     this batch or of any batch queued behind it was kept,
  //                     sequence numbers were rolled back; retry later;
  //   INTERNAL          another write error (same rollback), or fdatasync
  //                     failed (then the log refuses all later appends;
  //                     kFsync: the batches written before the failed sync
  //                     get INTERNAL, every later one FAILED_PRECONDITION);
  //   FAILED_PRECONDITION the log is closed or refuses appends after an
  //                     fdatasync failure (reopen to recover).
  // After Close() (no flusher any more) `done` runs on the calling thread
  // before AppendAsync returns. Blocks while options.max_pending_bytes are
  // queued (for kFsync the queue drains only as syncs leave room under
  // max_unsynced_bytes); never on the log's own threads. Thread-safe. `done` must not block
  // for long: it delays every later acknowledgement.
  void AppendAsync(absl::Span<const std::string_view> payloads,
                   AppendCallback done);

  // As AppendAsync, but `done` also receives the publish time the batch was
  // stamped with (InfinitePast on error), so callers can report exactly what
  // is stored.
  using TimedAppendCallback = absl::AnyInvocable<void(
      absl::StatusOr<uint64_t> first_sequence, absl::Time publish_time) &&>;
  void AppendAsyncTimed(absl::Span<const std::string_view> payloads,
                        TimedAppendCallback done);

  // Blocking form of AppendAsync: returns the first sequence or the error.
  // Thread-safe. Must not be called from an AppendCallback or the listener
  // (FAILED_PRECONDITION).
  absl::StatusOr<uint64_t> Append(absl::Span<const std::string_view> payloads);

  // A reader starting at `start_sequence` (below the oldest retained record:
  // at the oldest; above the newest: waits for that sequence). Readers see
  // only acknowledged records, never block appends (they share a mutex with
  // the flusher only for index look-ups) and may run concurrently with them
  // and with each other. Thread-safe.
  absl::StatusOr<std::unique_ptr<LogReader>> NewReader(uint64_t start_sequence);

  // The sequence of the first acknowledged record with publish_time >= t,
  // found through the time index plus a short scan; last_sequence + 1 if
  // there is none. Thread-safe.
  absl::StatusOr<uint64_t> SequenceAtOrAfter(absl::Time t);

  // A consistent snapshot of the acknowledged extent. Thread-safe.
  LogState State() const;
  // Newest acknowledged sequence (0 if none ever). Thread-safe, lock-free.
  uint64_t LastSequence() const;

  // Deletes whole sealed segments, oldest first: by age (newest record older
  // than clock now - max_age) and by size (while the log exceeds max_bytes).
  // Never deletes the active segment. Readers inside a deleted segment keep
  // its file open and finish it, then continue at the next retained record.
  // Not run automatically: the owner calls it (e.g. on a timer). Thread-safe.
  absl::Status ApplyRetention();

  // Registers `listener` (null clears it), run on the flusher (kFsync:
  // syncer) thread after
  // each durable group, after its callbacks, with the group's last sequence.
  // It must not block for long or call Append/Close. Thread-safe.
  void SetAppendListener(std::function<void(uint64_t last_sequence)> listener);

  // Writes everything queued, syncs the active segment, stops the flusher
  // and releases the directory lock. Idempotent; returns the first error
  // seen while closing. Must not be called from a callback or the listener.
  absl::Status Close();

  // Test hook: while set, every fdatasync of a segment fails with EIO.
  void FailSyncsForTest(bool fail) { fail_syncs_for_test_.store(fail); }
  // Test hook for every kFsync log of the process: while set, a syncer that
  // has written records to sync waits before its fdatasync (so a test can
  // look at what readers see of written but unsynced records).
  static void PauseSyncsForTest(bool pause);
  // Test hook: how many syncers PauseSyncsForTest holds right now.
  static int SyncsHeldForTest();
  // Test hook: the next `n` fdatasyncs of a segment fail with EIO (as Linux
  // reports a writeback error once per open file, to whichever call checks
  // first).
  void FailNextSyncsForTest(int n) { fail_next_syncs_for_test_.store(n); }
  // Test hook: fdatasync calls made by the syncer (kFsync).
  uint64_t syncs_for_test() const { return syncs_.load(); }
  // Test hooks (kFsync): bytes written but not yet synced now, and the most
  // there ever were.
  uint64_t unsynced_bytes_for_test() const;
  uint64_t max_unsynced_bytes_seen_for_test() const;
  // Test hook: the log refuses appends (after an fdatasync or truncate
  // failure).
  bool refuses_appends_for_test() const;

  // What Open() recovered. Valid for the life of the log.
  const RecoveryInfo& recovery_info() const { return recovery_; }
  const LogOptions& options() const { return options_; }

 private:
  struct Segment;
  struct Shared;
  class Reader;
  struct PendingBatch {
    uint64_t first_sequence;
    uint32_t count;       // 0: an error entry (status set) without records
    absl::Status status;  // pre-set error, OK otherwise
    AppendCallback done;
    uint64_t bytes = 0;  // framed size of its records in pending_
  };
  // What one written group adds to its segment once it is durable.
  struct Extent {
    std::shared_ptr<Segment> seg;  // null: nothing written
    bool new_segment = false;  // seg was created for this group: publish it
    uint64_t end = 0;          // seg's size after the group
    uint64_t last_sequence = 0;
    int64_t first_time_ns = 0;
    int64_t last_time_ns = 0;
    std::vector<IndexEntry> index;
  };
  // kFsync: a group handed from the flusher to the syncer.
  struct WrittenGroup {
    Extent extent;
    uint64_t bytes = 0;
    absl::Status status;  // not OK: the write failed; fail every batch
    std::vector<PendingBatch> batches;
    uint64_t id = 0;  // set by HandOff: 1, 2, ... in write order
  };
  struct TestPause;
  static TestPause& Pause();

  explicit SegmentedLog(const LogOptions& options);
  // AppendAsync; when `time_ns_out` is set, stores the batch's publish time
  // there (under mu_, before the flusher can see the batch).
  void AppendAsyncImpl(absl::Span<const std::string_view> payloads,
                       AppendCallback done, int64_t* time_ns_out);
  absl::Status Recover();
  void FlusherLoop();
  void SyncerLoop();
  bool pipelined() const { return options_.durability == Durability::kFsync; }
  // Makes `extent` visible to readers (under shared_->mu).
  void CommitLocked(Extent& extent);
  // Runs the callbacks of `batches`: each its own pre-set error, else
  // `status` if not OK, else its first sequence.
  static void Complete(std::vector<PendingBatch>& batches,
                       const absl::Status& status);
  // kFsync: hands `group` to the syncer.
  void HandOff(WrittenGroup group);
  void ProcessGroup(std::string& buf, std::vector<PendingBatch>& batches);
  // Fails `batches` and everything still queued with `status`; rolls the
  // next sequence back to `first_sequence`.
  void FailGroup(std::vector<PendingBatch>& batches, const absl::Status& status,
                 uint64_t first_sequence);
  absl::Status Roll(uint64_t first_sequence);
  absl::Status SyncActive();
  // fdatasync(2) of `fd`, or EIO from a test hook; 0 or an errno.
  int SyncFile(int fd);
  void Poison(const absl::Status& status);
  // An fdatasync failed with `error` (INTERNAL): poisons the log and records
  // that the groups handed off up to id `covered_through` fail with `error`
  // (the later ones with failed_).
  void PoisonSync(const absl::Status& error, uint64_t covered_through);
  // kFsync: the flusher may take the first queued batch now (it fits under
  // max_unsynced_bytes).
  bool FlusherCanWriteLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const LogOptions options_;
  Clock* const clock_;
  std::shared_ptr<Shared> shared_;  // segment list, shared with readers
  int lock_fd_ = -1;
  RecoveryInfo recovery_;

  // Serializes every "fdatasync + poison on failure" (the flusher's roll-over
  // sync and the syncer's): Linux reports a writeback error of a file only
  // to the first fdatasync that checks, so the second must see failed_.
  // Acquired before mu_.
  absl::Mutex sync_mu_ ABSL_ACQUIRED_BEFORE(mu_);
  mutable absl::Mutex mu_;                    // appenders <-> flusher hand-off
  absl::CondVar work_cv_;                     // flusher waits for work
  absl::CondVar space_cv_;                    // appenders wait for queue space
  std::string pending_ ABSL_GUARDED_BY(mu_);  // framed records, in order
  std::vector<PendingBatch> pending_batches_ ABSL_GUARDED_BY(mu_);
  uint64_t next_sequence_ ABSL_GUARDED_BY(mu_) = 1;
  int64_t last_time_ns_ ABSL_GUARDED_BY(mu_) = 0;
  bool closing_ ABSL_GUARDED_BY(mu_) = false;
  absl::Status failed_ ABSL_GUARDED_BY(mu_);  // fsyncgate: no appends after
  std::shared_ptr<const std::function<void(uint64_t)>> listener_
      ABSL_GUARDED_BY(mu_);

  absl::Mutex close_mu_;
  bool closed_ ABSL_GUARDED_BY(close_mu_) = false;
  absl::Status close_status_ ABSL_GUARDED_BY(close_mu_);

  // kFsync pipeline (guarded by mu_).
  absl::CondVar sync_cv_;  // the syncer waits for written groups
  std::vector<WrittenGroup> written_ ABSL_GUARDED_BY(mu_);
  uint64_t unsynced_bytes_ ABSL_GUARDED_BY(mu_) = 0;  // written, not synced
  uint64_t max_unsynced_seen_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t handed_off_groups_ ABSL_GUARDED_BY(mu_) = 0;  // last id given
  // The first failed fdatasync (INTERNAL) and the last group id it covered:
  // those groups fail with it, later ones with failed_.
  absl::Status sync_error_ ABSL_GUARDED_BY(mu_);
  uint64_t sync_covered_through_ ABSL_GUARDED_BY(mu_) = 0;
  bool flusher_waiting_ ABSL_GUARDED_BY(mu_) = false;
  bool syncer_waiting_ ABSL_GUARDED_BY(mu_) = false;
  bool syncing_ ABSL_GUARDED_BY(mu_) = false;       // an fdatasync runs
  bool flusher_done_ ABSL_GUARDED_BY(mu_) = false;  // flusher has exited
  absl::Status syncer_close_status_ ABSL_GUARDED_BY(mu_);
  uint64_t eager_write_bytes_ = 0;  // wake the flusher during a sync past this

  std::atomic<bool> fail_syncs_for_test_{false};
  std::atomic<int> fail_next_syncs_for_test_{0};
  std::atomic<uint64_t> syncs_{0};
  std::thread flusher_;
  std::atomic<std::thread::id> flusher_id_{};
  std::thread syncer_;
  std::atomic<std::thread::id> syncer_id_{};
  bool OnLogThread() const {
    const std::thread::id me = std::this_thread::get_id();
    return me == flusher_id_.load() || me == syncer_id_.load();
  }

  // Flusher-thread state (also touched by Open before the thread starts).
  std::shared_ptr<Segment> active_;
  uint64_t active_size_ = 0;                   // bytes written to active_
  uint64_t active_last_index_offset_ = 0;      // offset of its last index entry
  bool dirty_ = false;                         // written but not synced
  // The active segment as written (ahead of what readers see for kFsync).
  uint64_t active_written_last_ = 0;
  int64_t active_written_first_time_ns_ = 0;
  int64_t active_written_last_time_ns_ = 0;
  std::vector<IndexEntry> active_written_index_;
  bool active_unpublished_ = false;  // kFsync: created, not yet published
  absl::Time next_sync_;                       // kInterval deadline when dirty_
  absl::Status flusher_close_status_;          // set by the flusher on exit
  std::vector<IndexEntry> new_index_entries_;  // scratch, reused per group
};

}  // namespace cityos::log_internal

#endif  // CITYOS_LOG_SEGMENTED_LOG_H_
