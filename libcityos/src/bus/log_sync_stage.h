// File: bus/log_sync_stage.h
//
// The second stage of an `fsync` stream's writer. The stream's SegmentedLog is
// opened with log_internal::Durability::kNone: its flusher thread only
// write(2)s each group (and syncs a segment when it seals it) and reports every
// written append here. This stage's own thread fdatasync(2)s the active segment
// and only then acknowledges, in append order. While it syncs one group the log
// already writes the next, so an append waits for at most the rest of the sync
// in progress plus its own (before: the rest of the group in progress, write
// and sync, then its own write and sync).
//
// Guarantee, as in the log's own kFsync mode: an append is acknowledged only
// once its records and every record before them are on stable storage. Records
// are written in sequence order; one fdatasync covers everything written to
// the segment before it; a segment is synced by the log when it is sealed
// (Roll), before the next segment file exists; so when the newest segment file
// starts after an append's last record, that record is already durable. After a
// failed fdatasync nothing more is acknowledged (every later append fails
// FAILED_PRECONDITION until the stream is reopened), as in the log.
//
// Readers must not see records before they are acknowledged: the owner caps
// what it hands out at durable_last().
//
// Internal to libcityos (used by log_backend.cc, the tests and log_bench).
#ifndef CITYOS_BUS_LOG_SYNC_STAGE_H_
#define CITYOS_BUS_LOG_SYNC_STAGE_H_

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "log/log_format.h"
#include "log/segmented_log.h"

namespace cityos::bus_internal {

class LogSyncStage {
 public:
  using Done = absl::AnyInvocable<void(absl::StatusOr<uint64_t> first_sequence,
                                       absl::Time publish_time) &&>;

  // Default bound on admitted but not yet synced bytes (see Admit()).
  static constexpr uint64_t kDefaultMaxUnsyncedBytes = uint64_t{16} << 20;

  // `log` must be open on `dir` with Durability::kNone, and stay alive (it may
  // be closed) until Close() returns. `on_durable` runs on the stage's thread
  // after each sync, after that sync's callbacks, with the last durable
  // sequence (wake readers there). What the log holds when the stage starts
  // (recovered at Open) counts as durable, as it does for the log itself.
  LogSyncStage(log_internal::SegmentedLog* log, std::string dir,
               std::function<void(uint64_t last_sequence)> on_durable,
               uint64_t max_unsynced_bytes = kDefaultMaxUnsyncedBytes);

  LogSyncStage(const LogSyncStage&) = delete;
  LogSyncStage& operator=(const LogSyncStage&) = delete;
  ~LogSyncStage() { Close().IgnoreError(); }

  // Call before handing an append of `bytes` bytes (as framed in the segment)
  // to the log; then pass the same `bytes` to Written(). Back-pressure, as the
  // log's max_pending_bytes: blocks while more than max_unsynced_bytes are
  // admitted and not yet synced (an append is always admitted when nothing
  // is), so one sync stays bounded. Never blocks on the stage's own thread
  // (an append from an acknowledgement callback).
  void Admit(uint64_t bytes);

  // The log's append callback for one admitted append of `count` records and
  // `bytes` bytes, written (or failed, then passed on as is) at
  // `publish_time`. Call in the log's callback order (its flusher thread);
  // never blocks. `done` runs later on the stage's thread, in the order of
  // these calls.
  void Written(absl::StatusOr<uint64_t> first_sequence, uint32_t count,
               uint64_t bytes, absl::Time publish_time, Done done);

  // OK, or why every append is refused (after a failed fdatasync).
  absl::Status Refusal() const {
    std::lock_guard<std::mutex> lock(mu_);
    return failed_;
  }

  // Newest sequence known durable (acknowledged or about to be). Lock-free.
  uint64_t durable_last() const {
    return durable_last_.load(std::memory_order_acquire);
  }
  // Publish time of that record (InfinitePast if the log was always empty).
  absl::Time durable_last_time() const {
    const int64_t ns = durable_time_ns_.load(std::memory_order_acquire);
    return ns == 0 ? absl::InfinitePast() : absl::FromUnixNanos(ns);
  }

  // Call after the log's Close(): syncs and completes every append still
  // queued, stops the thread. Returns the first fdatasync error met while
  // draining. Idempotent (later calls return OK). Must not be called from an
  // acknowledgement or on_durable (FAILED_PRECONDITION), as for the log.
  absl::Status Close();

  // Test hook: while set, every fdatasync of the stage fails with EIO.
  void FailSyncsForTest(bool fail) { fail_syncs_for_test_.store(fail); }
  // Test hook: number of fdatasync calls the stage made.
  uint64_t syncs_for_test() const { return syncs_.load(); }
  // Test hook for every stage of the process: while set, a stage that has
  // written appends to sync waits before its fdatasync (so a test can look at
  // what readers see of written but unsynced records).
  static void PauseSyncsForTest(bool pause);

 private:
  struct TestPause {
    std::mutex mu;
    std::condition_variable cv;
    bool paused = false;
  };
  static TestPause& Pause();

  struct Entry {
    absl::StatusOr<uint64_t> first;
    uint32_t count;
    uint64_t bytes;
    absl::Time time;
    Done done;
  };

  void Run();

  // One group: everything written since the last sync, in append order.
  void Process(std::vector<Entry>& batch);

  // Makes every record up to `target` durable: fdatasync of the segment that
  // holds it, unless a newer segment exists (then the log synced it when it
  // sealed it, before creating the newer file).
  absl::Status SyncThrough(uint64_t target);

  log_internal::SegmentedLog* const log_;
  const std::string dir_;
  const std::function<void(uint64_t)> on_durable_;
  const uint64_t max_unsynced_bytes_;

  mutable std::mutex mu_;
  std::condition_variable work_cv_;   // the stage waits for written appends
  std::condition_variable space_cv_;  // Admit() waits for synced bytes
  std::vector<Entry> queue_;          // guarded by mu_
  uint64_t admitted_bytes_ = 0;       // mu_: admitted, not yet synced
  bool closing_ = false;              // mu_
  bool stopped_ = false;              // mu_: the thread has exited
  absl::Status failed_;               // mu_: refuse appends after this
  absl::Status close_error_;          // mu_

  std::atomic<uint64_t> durable_last_{0};
  std::atomic<int64_t> durable_time_ns_{0};
  std::atomic<bool> fail_syncs_for_test_{false};
  std::atomic<uint64_t> syncs_{0};

  // Stage-thread state.
  int fd_ = -1;  // the newest segment, read-only (fdatasync only)
  uint64_t fd_first_ = 0;
  std::string fd_path_;
  uint32_t seen_segments_ = 0;
  uint64_t seen_first_ = 0;

  // The stage thread's id, for the checks of Admit() and Close() (which must
  // not read thread_ while Close() joins it).
  std::atomic<std::thread::id> stage_thread_{};
  std::thread thread_;  // last: starts after every member is ready
};

}  // namespace cityos::bus_internal

#endif  // CITYOS_BUS_LOG_SYNC_STAGE_H_
