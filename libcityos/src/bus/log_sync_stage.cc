// The sync stage of `fsync` streams: see log_sync_stage.h.
#include "bus/log_sync_stage.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

#include "absl/strings/str_cat.h"

namespace cityos::bus_internal {

LogSyncStage::LogSyncStage(
    log_internal::SegmentedLog* log, std::string dir,
    std::function<void(uint64_t last_sequence)> on_durable,
    uint64_t max_unsynced_bytes)
    : log_(log),
      dir_(std::move(dir)),
      on_durable_(std::move(on_durable)),
      max_unsynced_bytes_(std::max<uint64_t>(1, max_unsynced_bytes)) {
  const log_internal::LogState st = log_->State();
  durable_time_ns_.store(st.events > 0 ? absl::ToUnixNanos(st.last_time) : 0);
  durable_last_.store(st.last_sequence);
  thread_ = std::thread([this] { Run(); });
}

void LogSyncStage::Admit(uint64_t bytes) {
  std::unique_lock<std::mutex> lock(mu_);
  if (std::this_thread::get_id() != stage_thread_.load()) {
    space_cv_.wait(lock, [&] {
      return admitted_bytes_ == 0 ||
             admitted_bytes_ + bytes <= max_unsynced_bytes_ || closing_ ||
             !failed_.ok();
    });
  }
  admitted_bytes_ += bytes;
}

void LogSyncStage::Written(absl::StatusOr<uint64_t> first_sequence,
                           uint32_t count, uint64_t bytes,
                           absl::Time publish_time, Done done) {
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

absl::Status LogSyncStage::Close() {
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

void LogSyncStage::PauseSyncsForTest(bool pause) {
  TestPause& p = Pause();
  {
    std::lock_guard<std::mutex> lock(p.mu);
    p.paused = pause;
  }
  p.cv.notify_all();
}

LogSyncStage::TestPause& LogSyncStage::Pause() {
  static TestPause p;
  return p;
}

void LogSyncStage::Run() {
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

void LogSyncStage::Process(std::vector<Entry>& batch) {
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

absl::Status LogSyncStage::SyncThrough(uint64_t target) {
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
      const std::string path =
          absl::StrCat(dir_, "/", log_internal::SegmentFileName(newest));
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
  const int err = fail_syncs_for_test_.load() ? EIO
                  : ::fdatasync(fd_) == 0     ? 0
                                              : errno;
  if (err != 0) {
    return absl::InternalError(
        absl::StrCat("fdatasync ", fd_path_, ": ", std::strerror(err)));
  }
  return absl::OkStatus();
}

}  // namespace cityos::bus_internal
