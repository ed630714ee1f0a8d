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
// Internal to libcityos (header-only: included by log_backend.cc, the tests
// and log_bench).
#ifndef CITYOS_BUS_LOG_SYNC_STAGE_H_
#define CITYOS_BUS_LOG_SYNC_STAGE_H_

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <cerrno>
#include <cstring>
#include <filesystem>
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
#include "absl/strings/str_cat.h"
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
               uint64_t max_unsynced_bytes = kDefaultMaxUnsyncedBytes)
      : log_(log),
        dir_(std::move(dir)),
        on_durable_(std::move(on_durable)),
        max_unsynced_bytes_(std::max<uint64_t>(1, max_unsynced_bytes)) {
    const log_internal::LogState st = log_->State();
    durable_time_ns_.store(st.events > 0 ? absl::ToUnixNanos(st.last_time) : 0);
    durable_last_.store(st.last_sequence);
    thread_ = std::thread([this] { Run(); });
  }

  LogSyncStage(const LogSyncStage&) = delete;
  LogSyncStage& operator=(const LogSyncStage&) = delete;
  ~LogSyncStage() { Close().IgnoreError(); }

  // Call before handing an append of `bytes` bytes (as framed in the segment)
  // to the log; then pass the same `bytes` to Written(). Back-pressure, as the
  // log's max_pending_bytes: blocks while more than max_unsynced_bytes are
  // admitted and not yet synced (an append is always admitted when nothing
  // is), so one sync stays bounded. Never blocks on the stage's own thread
  // (an append from an acknowledgement callback).
  void Admit(uint64_t bytes) {
    std::unique_lock<std::mutex> lock(mu_);
    if (std::this_thread::get_id() != stage_thread_.load()) {
      space_cv_.wait(lock, [&] {
        return admitted_bytes_ == 0 || admitted_bytes_ + bytes <= max_unsynced_bytes_ ||
               closing_ || !failed_.ok();
      });
    }
    admitted_bytes_ += bytes;
  }

  // The log's append callback for one admitted append of `count` records and
  // `bytes` bytes, written (or failed, then passed on as is) at
  // `publish_time`. Call in the log's callback order (its flusher thread);
  // never blocks. `done` runs later on the stage's thread, in the order of
  // these calls.
  void Written(absl::StatusOr<uint64_t> first_sequence, uint32_t count,
               uint64_t bytes, absl::Time publish_time, Done done) {
    {
      std::unique_lock<std::mutex> lock(mu_);
      if (!stopped_) {
        const bool was_empty = queue_.empty();
        queue_.push_back(Entry{std::move(first_sequence), count, bytes,
                               publish_time, std::move(done)});
        if (was_empty) work_cv_.notify_one();
        return;
      }
      admitted_bytes_ -= std::min(admitted_bytes_, bytes);
    }
    space_cv_.notify_all();
    // Stopped: nothing will sync this any more.
    std::move(done)(absl::FailedPreconditionError(absl::StrCat(
                        "log ", dir_, " is closed: append not synced")),
                    absl::InfinitePast());
  }

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
  absl::Status Close() {
    if (std::this_thread::get_id() == stage_thread_.load()) {
      return absl::FailedPreconditionError(
          "Close must not be called from an acknowledgement callback");
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (closing_) return absl::OkStatus();
      closing_ = true;
      work_cv_.notify_one();
      space_cv_.notify_all();
    }
    if (thread_.joinable()) thread_.join();
    if (fd_ >= 0) {
      ::close(fd_);
      fd_ = -1;
    }
    std::lock_guard<std::mutex> lock(mu_);
    return close_error_;
  }

  // Test hook: while set, every fdatasync of the stage fails with EIO.
  void FailSyncsForTest(bool fail) { fail_syncs_for_test_.store(fail); }
  // Test hook: number of fdatasync calls the stage made.
  uint64_t syncs_for_test() const { return syncs_.load(); }
  // Test hook for every stage of the process: while set, a stage that has
  // written appends to sync waits before its fdatasync (so a test can look at
  // what readers see of written but unsynced records).
  static void PauseSyncsForTest(bool pause) {
    TestPause& p = Pause();
    {
      std::lock_guard<std::mutex> lock(p.mu);
      p.paused = pause;
    }
    p.cv.notify_all();
  }

 private:
  struct TestPause {
    std::mutex mu;
    std::condition_variable cv;
    bool paused = false;
  };
  static TestPause& Pause() {
    static TestPause p;
    return p;
  }

  struct Entry {
    absl::StatusOr<uint64_t> first;
    uint32_t count;
    uint64_t bytes;
    absl::Time time;
    Done done;
  };

  void Run() {
    stage_thread_.store(std::this_thread::get_id());
    std::vector<Entry> batch;
    for (;;) {
      {
        std::unique_lock<std::mutex> lock(mu_);
        work_cv_.wait(lock, [&] { return !queue_.empty() || closing_; });
        if (queue_.empty()) {  // closing, and everything completed
          stopped_ = true;
          return;
        }
        batch.swap(queue_);
      }
      Process(batch);
      batch.clear();
    }
  }

  // One group: everything written since the last sync, in append order.
  void Process(std::vector<Entry>& batch) {
    uint64_t target = 0;
    int64_t target_time_ns = 0;
    uint64_t bytes = 0;
    for (const Entry& e : batch) {
      bytes += e.bytes;
      if (!e.first.ok()) continue;
      target = *e.first + e.count - 1;
      target_time_ns = absl::ToUnixNanos(e.time);
    }
    absl::Status refused = Refusal();
    absl::Status sync_error;
    if (target != 0 && refused.ok()) {
      sync_error = SyncThrough(target);
      if (!sync_error.ok()) {
        // The log writes nothing more either: appends written after this
        // sync could otherwise reappear after a restart although they
        // were failed.
        log_->Refuse(sync_error);
        std::lock_guard<std::mutex> lock(mu_);
        failed_ = absl::FailedPreconditionError(absl::StrCat(
            "log ", dir_, " refuses appends after an earlier failure (",
            sync_error.message(), "); close and reopen it to recover"));
        if (closing_ && close_error_.ok()) close_error_ = sync_error;
      }
    }
    const bool durable = target != 0 && refused.ok() && sync_error.ok();
    if (durable) {
      durable_time_ns_.store(target_time_ns, std::memory_order_release);
      durable_last_.store(target, std::memory_order_release);
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      admitted_bytes_ -= std::min(admitted_bytes_, bytes);
    }
    space_cv_.notify_all();
    for (Entry& e : batch) {
      if (!e.first.ok()) {
        std::move(e.done)(e.first.status(), absl::InfinitePast());
      } else if (!refused.ok()) {
        std::move(e.done)(refused, absl::InfinitePast());
      } else if (!sync_error.ok()) {
        std::move(e.done)(sync_error, absl::InfinitePast());
      } else {
        std::move(e.done)(*e.first, e.time);
      }
    }
    if (durable && on_durable_) on_durable_(target);
  }

  // Makes every record up to `target` durable: fdatasync of the segment that
  // holds it, unless a newer segment exists (then the log synced it when it
  // sealed it, before creating the newer file).
  absl::Status SyncThrough(uint64_t target) {
    const log_internal::LogState st = log_->State();
    if (fd_ < 0 || st.segments != seen_segments_ ||
        st.first_sequence != seen_first_) {
      uint64_t newest = 0;
      std::error_code ec;
      for (const auto& entry : std::filesystem::directory_iterator(dir_, ec)) {
        uint64_t first = 0;
        if (log_internal::ParseFileName(entry.path().filename().string(),
                                        &first) ==
                log_internal::FileKind::kSegment &&
            first > newest) {
          newest = first;
        }
      }
      if (ec) {
        return absl::InternalError(
            absl::StrCat("listing log dir ", dir_, ": ", ec.message()));
      }
      if (newest == 0) {
        return absl::InternalError(
            absl::StrCat("log dir ", dir_, " holds no segment file"));
      }
      if (fd_ < 0 || newest != fd_first_) {
        const std::string path = absl::StrCat(
            dir_, "/", log_internal::SegmentFileName(newest));
        const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
        if (fd < 0) {
          return absl::InternalError(
              absl::StrCat("open ", path, ": ", std::strerror(errno)));
        }
        if (fd_ >= 0) ::close(fd_);
        fd_ = fd;
        fd_first_ = newest;
        fd_path_ = path;
      }
      seen_segments_ = st.segments;
      seen_first_ = st.first_sequence;
    }
    if (fd_first_ > target) return absl::OkStatus();  // sealed: already synced
    {
      TestPause& p = Pause();
      std::unique_lock<std::mutex> lock(p.mu);
      p.cv.wait(lock, [&] { return !p.paused; });
    }
    syncs_.fetch_add(1, std::memory_order_relaxed);
    const int err = fail_syncs_for_test_.load()    ? EIO
                    : ::fdatasync(fd_) == 0        ? 0
                                                   : errno;
    if (err != 0) {
      return absl::InternalError(
          absl::StrCat("fdatasync ", fd_path_, ": ", std::strerror(err)));
    }
    return absl::OkStatus();
  }

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
