#include "log/segmented_log.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <map>
#include <system_error>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/notification.h"
#include "cityos/status.h"
#include "log/log_format.h"

namespace cityos::log_internal {

// One segment file. The fd stays open for the life of the object, so a
// reader holding a shared_ptr can finish a segment that retention unlinked.
struct SegmentedLog::Segment {
  Segment(std::string dir, uint64_t first, int fd_in)
      : path(absl::StrCat(dir, "/", SegmentFileName(first))),
        index_path(absl::StrCat(dir, "/", IndexFileName(first))),
        first_sequence(first),
        fd(fd_in),
        last_sequence(first - 1) {}
  ~Segment() {
    if (fd >= 0) ::close(fd);
  }
  Segment(const Segment&) = delete;
  Segment& operator=(const Segment&) = delete;

  const std::string path;
  const std::string index_path;
  const uint64_t first_sequence;
  const int fd;
  // Bytes of the file that hold acknowledged records (plus the header).
  // Written under Shared::mu; readable without it.
  std::atomic<uint64_t> committed_size{0};
  // Set (under Shared::mu) when a newer segment exists; after that
  // committed_size never changes.
  std::atomic<bool> sealed{false};
  // Guarded by Shared::mu (an annotation cannot name another object's mutex).
  uint64_t last_sequence;  // first_sequence - 1 when empty
  int64_t first_time_ns = 0;
  int64_t last_time_ns = 0;
  std::vector<IndexEntry> index;

  bool empty() const { return last_sequence < first_sequence; }
};

// State shared between the log and its readers (which may outlive it).
struct SegmentedLog::Shared {
  std::string dir;
  mutable absl::Mutex mu;
  // Oldest first; back() is the active segment. Never empty once open.
  std::vector<std::shared_ptr<Segment>> segments ABSL_GUARDED_BY(mu);
  std::atomic<uint64_t> committed_last{0};
};

namespace {

constexpr uint64_t kMinSegmentBytes = 1024;
constexpr size_t kScanChunkBytes = size_t{1} << 20;

// Owns a file descriptor.
class ScopedFd {
 public:
  explicit ScopedFd(int fd = -1) : fd_(fd) {}
  ~ScopedFd() {
    if (fd_ >= 0) ::close(fd_);
  }
  ScopedFd(const ScopedFd&) = delete;
  ScopedFd& operator=(const ScopedFd&) = delete;
  int get() const { return fd_; }
  int release() { return std::exchange(fd_, -1); }

 private:
  int fd_;
};

bool IsOutOfSpace(int err) {
  return err == ENOSPC || err == EDQUOT || err == EFBIG;
}

// "<op> <path>: <errno text>" as RESOURCE_EXHAUSTED for a full disk or file
// size limit, INTERNAL otherwise.
absl::Status ErrnoStatus(std::string_view op, const std::string& path,
                         int err) {
  std::string msg =
      absl::StrCat(std::string(op), " ", path, ": ", std::strerror(err));
  if (IsOutOfSpace(err)) return absl::ResourceExhaustedError(msg);
  return absl::InternalError(msg);
}

absl::Status DataLossAt(const std::string& dir, const std::string& path,
                        uint64_t offset, const std::string& reason) {
  return absl::DataLossError(absl::StrFormat(
      "log corruption in %s at byte offset %u: %s; run `cityosd repair-log "
      "%s` to keep the good prefix (it reports what it drops)",
      path, offset, reason, dir));
}

int PwriteAll(int fd, const char* data, size_t n, uint64_t offset) {
  while (n > 0) {
    const ssize_t r = ::pwrite(fd, data, n, static_cast<off_t>(offset));
    if (r < 0) {
      if (errno == EINTR) continue;
      return errno;
    }
    data += r;
    n -= static_cast<size_t>(r);
    offset += static_cast<uint64_t>(r);
  }
  return 0;
}

absl::Status PreadExact(int fd, char* dst, size_t n, uint64_t offset,
                        const std::string& path, size_t* got) {
  *got = 0;
  while (*got < n) {
    const ssize_t r =
        ::pread(fd, dst + *got, n - *got, static_cast<off_t>(offset + *got));
    if (r < 0) {
      if (errno == EINTR) continue;
      return ErrnoStatus("read", path, errno);
    }
    if (r == 0) break;
    *got += static_cast<size_t>(r);
  }
  return absl::OkStatus();
}

absl::Status SyncDir(const std::string& dir) {
  ScopedFd fd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (fd.get() < 0) return ErrnoStatus("open", dir, errno);
  if (::fsync(fd.get()) != 0) return ErrnoStatus("fsync", dir, errno);
  return absl::OkStatus();
}

absl::StatusOr<uint64_t> FileSize(int fd, const std::string& path) {
  struct stat st;
  if (::fstat(fd, &st) != 0) return ErrnoStatus("fstat", path, errno);
  return static_cast<uint64_t>(st.st_size);
}

absl::Status UnlinkIfExists(const std::string& path) {
  if (::unlink(path.c_str()) != 0 && errno != ENOENT) {
    return ErrnoStatus("unlink", path, errno);
  }
  return absl::OkStatus();
}

// Writes `contents` to `path` through "<path>.tmp" and rename(2). Syncs the
// file (and the directory) only if `sync`.
absl::Status WriteFileAtomically(const std::string& dir,
                                 const std::string& path,
                                 std::string_view contents, bool sync) {
  const std::string tmp = path + ".tmp";
  ScopedFd fd(
      ::open(tmp.c_str(), O_CREAT | O_TRUNC | O_WRONLY | O_CLOEXEC, 0644));
  if (fd.get() < 0) return ErrnoStatus("create", tmp, errno);
  int err = PwriteAll(fd.get(), contents.data(), contents.size(), 0);
  if (err == 0 && sync && ::fdatasync(fd.get()) != 0) err = errno;
  if (err == 0 && ::rename(tmp.c_str(), path.c_str()) != 0) err = errno;
  if (err != 0) {
    ::unlink(tmp.c_str());
    return ErrnoStatus("write", path, err);
  }
  if (sync) return SyncDir(dir);
  return absl::OkStatus();
}

// Creates an empty segment (header only) durably; returns its open fd.
absl::StatusOr<int> CreateSegmentFile(const std::string& dir,
                                      uint64_t first_sequence) {
  char header[kSegmentHeaderSize];
  EncodeSegmentHeader(first_sequence, header);
  const std::string path =
      absl::StrCat(dir, "/", SegmentFileName(first_sequence));
  CITYOS_RETURN_IF_ERROR(WriteFileAtomically(
      dir, path, std::string_view(header, sizeof(header)), /*sync=*/true));
  const int fd = ::open(path.c_str(), O_RDWR | O_CLOEXEC);
  if (fd < 0) return ErrnoStatus("open", path, errno);
  return fd;
}

absl::StatusOr<int> LockDir(const std::string& dir) {
  const std::string path = dir + "/LOCK";
  ScopedFd fd(::open(path.c_str(), O_CREAT | O_RDWR | O_CLOEXEC, 0644));
  if (fd.get() < 0) return ErrnoStatus("open", path, errno);
  if (::flock(fd.get(), LOCK_EX | LOCK_NB) != 0) {
    if (errno == EWOULDBLOCK) {
      return absl::FailedPreconditionError(absl::StrCat(
          "log directory ", dir, " is in use by another open log"));
    }
    return ErrnoStatus("flock", path, errno);
  }
  return fd.release();
}

struct DirListing {
  std::map<uint64_t, std::string> segments;  // first sequence -> file name
  std::map<uint64_t, std::string> indexes;
  std::vector<std::string> temps;
};

absl::StatusOr<DirListing> ListDir(const std::string& dir) {
  DIR* d = ::opendir(dir.c_str());
  if (d == nullptr) return ErrnoStatus("opendir", dir, errno);
  DirListing out;
  while (struct dirent* e = ::readdir(d)) {
    const std::string name = e->d_name;
    uint64_t seq = 0;
    switch (ParseFileName(name, &seq)) {
      case FileKind::kSegment:
        out.segments[seq] = name;
        break;
      case FileKind::kIndex:
        out.indexes[seq] = name;
        break;
      case FileKind::kTemp:
        out.temps.push_back(name);
        break;
      case FileKind::kOther:
        break;
    }
  }
  ::closedir(d);
  return out;
}

// The result of scanning one segment's records.
struct ScanOutcome {
  bool bad = false;  // stopped at bad bytes or a sequence gap
  bool gap = false;  // ... a CRC-valid record with the wrong sequence
  uint64_t bad_offset = 0;
  std::string reason;
  uint64_t good_end = kSegmentHeaderSize;  // end of the last valid record
  uint64_t next_sequence = 0;              // after the last valid record
  // State at the end of the last complete batch (what recovery keeps).
  uint64_t batch_end = kSegmentHeaderSize;
  uint64_t batch_last_sequence = 0;
  int64_t first_time_ns = 0;
  int64_t batch_last_time_ns = 0;
  size_t batch_index_entries = 0;
  uint64_t records_after_batch_end = 0;
  std::vector<IndexEntry> index;
};

absl::StatusOr<ScanOutcome> ScanSegmentFile(int fd, const std::string& path,
                                            uint64_t size,
                                            uint64_t first_sequence,
                                            uint64_t index_interval) {
  ScanOutcome out;
  out.next_sequence = first_sequence;
  out.batch_last_sequence = first_sequence - 1;
  SegmentScanner scanner(fd, kSegmentHeaderSize, size, kScanChunkBytes);
  uint64_t last_index_offset = 0;
  RecordView rec;
  for (;;) {
    const SegmentScanner::Result r = scanner.Next(&rec);
    if (r == SegmentScanner::kEnd) break;
    if (r == SegmentScanner::kIoError) {
      return ErrnoStatus("read", path, scanner.io_errno());
    }
    if (r != SegmentScanner::kRecord) {
      out.bad = true;
      out.bad_offset = scanner.record_offset();
      out.reason = scanner.error();
      break;
    }
    const uint64_t offset = scanner.record_offset();
    if (rec.sequence != out.next_sequence) {
      out.bad = true;
      out.gap = true;
      out.bad_offset = offset;
      out.reason = absl::StrFormat("sequence gap: expected %u, found %u",
                                   out.next_sequence, rec.sequence);
      break;
    }
    if (out.index.empty() || offset - last_index_offset >= index_interval) {
      out.index.push_back({rec.sequence, rec.time_ns, offset});
      last_index_offset = offset;
    }
    if (rec.sequence == first_sequence) out.first_time_ns = rec.time_ns;
    ++out.next_sequence;
    ++out.records_after_batch_end;
    out.good_end = scanner.offset();
    if (!rec.batch_continues) {
      out.batch_end = out.good_end;
      out.batch_last_sequence = rec.sequence;
      out.batch_last_time_ns = rec.time_ns;
      out.batch_index_entries = out.index.size();
      out.records_after_batch_end = 0;
    }
  }
  return out;
}

absl::Status ValidateOptions(const LogOptions& o) {
  if (o.dir.empty()) {
    return absl::InvalidArgumentError("LogOptions.dir must not be empty");
  }
  if (o.durability != Durability::kFsync &&
      o.durability != Durability::kInterval &&
      o.durability != Durability::kNone) {
    return absl::InvalidArgumentError("LogOptions.durability is not valid");
  }
  if (o.durability == Durability::kInterval &&
      o.sync_interval <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError(
        "LogOptions.sync_interval must be > 0 for Durability::kInterval");
  }
  if (o.segment_bytes < kMinSegmentBytes) {
    return absl::InvalidArgumentError(
        absl::StrFormat("LogOptions.segment_bytes must be >= %u (got %u)",
                        kMinSegmentBytes, o.segment_bytes));
  }
  if (o.index_interval_bytes == 0) {
    return absl::InvalidArgumentError(
        "LogOptions.index_interval_bytes must be > 0");
  }
  if (o.max_age < absl::ZeroDuration()) {
    return absl::InvalidArgumentError("LogOptions.max_age must be >= 0");
  }
  if (o.max_pending_bytes == 0) {
    return absl::InvalidArgumentError(
        "LogOptions.max_pending_bytes must be > 0");
  }
  if (o.max_unsynced_bytes == 0) {
    return absl::InvalidArgumentError(
        "LogOptions.max_unsynced_bytes must be > 0");
  }
  return absl::OkStatus();
}

}  // namespace

std::string RecoveryInfo::ToString() const {
  std::string s;
  if (truncated) {
    s = absl::StrFormat(
        "truncated torn tail of %s at offset %u (%u bytes, %u complete "
        "records of an unacknowledged batch): %s",
        file, offset, bytes_truncated, records_truncated, reason);
  } else {
    s = "clean";
  }
  if (index_files_rebuilt > 0) {
    absl::StrAppend(&s, "; rebuilt ", index_files_rebuilt, " index files");
  }
  if (temp_files_removed > 0) {
    absl::StrAppend(&s, "; removed ", temp_files_removed, " temp files");
  }
  return s;
}

std::string RepairReport::ToString() const {
  if (file.empty()) {
    return absl::StrFormat("log intact; last good sequence %u",
                           last_good_sequence);
  }
  return absl::StrFormat(
      "cut %s at offset %u (%s); dropped %u bytes, about %u records, %u "
      "segment files removed; last good sequence %u",
      file, offset, reason, bytes_dropped, records_dropped_estimate,
      segments_removed, last_good_sequence);
}

// ---------------------------------------------------------------- reader

class SegmentedLog::Reader final : public LogReader {
 public:
  Reader(std::shared_ptr<Shared> shared, uint64_t start)
      : shared_(std::move(shared)),
        next_(start),
        scanner_(-1, 0, 0, 256 << 10) {}

  absl::StatusOr<bool> Next(LogRecord* record) override {
    for (;;) {
      if (seg_ == nullptr) Position();
      scanner_.SetLimit(seg_->committed_size.load(std::memory_order_acquire));
      RecordView rec;
      switch (scanner_.Next(&rec)) {
        case SegmentScanner::kRecord:
          if (rec.sequence < next_) continue;  // positioning scan
          if (rec.sequence != next_) {
            return DataLossAt(
                shared_->dir, seg_->path, scanner_.record_offset(),
                absl::StrFormat("sequence gap: expected %u, found %u", next_,
                                rec.sequence));
          }
          record->sequence = rec.sequence;
          record->publish_time = absl::FromUnixNanos(rec.time_ns);
          record->payload.assign(rec.payload.data(), rec.payload.size());
          ++next_;
          return true;
        case SegmentScanner::kEnd:
          if (!seg_->sealed.load(std::memory_order_acquire)) return false;
          // Sealed: committed_size is final; re-check it, then move on.
          if (scanner_.offset() <
              seg_->committed_size.load(std::memory_order_acquire)) {
            continue;
          }
          seg_.reset();
          continue;
        case SegmentScanner::kTruncated:
        case SegmentScanner::kCorrupt:
          return DataLossAt(shared_->dir, seg_->path, scanner_.record_offset(),
                            scanner_.error());
        case SegmentScanner::kIoError:
          return ErrnoStatus("read", seg_->path, scanner_.io_errno());
      }
    }
  }

  uint64_t next_sequence() const override { return next_; }

 private:
  // Finds the segment and index offset to scan from for next_.
  void Position() {
    absl::ReaderMutexLock l(&shared_->mu);
    const auto& segs = shared_->segments;
    if (next_ < segs.front()->first_sequence) {
      next_ = segs.front()->first_sequence;  // retention removed the rest
    }
    auto it =
        std::upper_bound(segs.begin(), segs.end(), next_,
                         [](uint64_t seq, const std::shared_ptr<Segment>& s) {
                           return seq < s->first_sequence;
                         });
    seg_ = *std::prev(it);
    uint64_t offset = kSegmentHeaderSize;
    const auto& idx = seg_->index;
    auto e = std::upper_bound(
        idx.begin(), idx.end(), next_,
        [](uint64_t seq, const IndexEntry& x) { return seq < x.sequence; });
    if (e != idx.begin()) offset = std::prev(e)->offset;
    scanner_.Reset(seg_->fd, offset,
                   seg_->committed_size.load(std::memory_order_acquire));
  }

  const std::shared_ptr<Shared> shared_;
  uint64_t next_;
  std::shared_ptr<Segment> seg_;
  SegmentScanner scanner_;
};

// ---------------------------------------------------------------- open

SegmentedLog::SegmentedLog(const LogOptions& options)
    : options_(options),
      clock_(options.clock != nullptr ? options.clock : Clock::Real()),
      shared_(std::make_shared<Shared>()) {
  shared_->dir = options.dir;
}

SegmentedLog::~SegmentedLog() { Close().IgnoreError(); }

absl::StatusOr<std::unique_ptr<SegmentedLog>> SegmentedLog::Open(
    const LogOptions& options) {
  CITYOS_RETURN_IF_ERROR(ValidateOptions(options));
  std::unique_ptr<SegmentedLog> log(new SegmentedLog(options));
  CITYOS_RETURN_IF_ERROR(log->Recover());
  // Small enough that most of a group is written while the previous one
  // syncs (on a slow disk the write at the end of the sync would otherwise
  // lengthen every cycle), large enough to save most wake-ups.
  log->eager_write_bytes_ = std::max<uint64_t>(
      1, std::min<uint64_t>(uint64_t{64} << 10, options.max_pending_bytes / 2));
  log->flusher_ = std::thread([raw = log.get()] { raw->FlusherLoop(); });
  if (log->pipelined()) {
    log->syncer_ = std::thread([raw = log.get()] { raw->SyncerLoop(); });
  }
  return log;
}

absl::Status SegmentedLog::Recover() {
  const std::string& dir = options_.dir;
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) {
    return absl::InternalError(
        absl::StrCat("create directory ", dir, ": ", ec.message()));
  }
  CITYOS_ASSIGN_OR_RETURN(lock_fd_, LockDir(dir));
  CITYOS_ASSIGN_OR_RETURN(DirListing listing, ListDir(dir));
  for (const std::string& name : listing.temps) {
    CITYOS_RETURN_IF_ERROR(UnlinkIfExists(absl::StrCat(dir, "/", name)));
    ++recovery_.temp_files_removed;
  }
  for (const auto& [seq, name] : listing.indexes) {
    if (listing.segments.count(seq) == 0) {  // orphan
      CITYOS_RETURN_IF_ERROR(UnlinkIfExists(absl::StrCat(dir, "/", name)));
    }
  }

  std::vector<std::shared_ptr<Segment>> segments;
  uint64_t prev_last = 0;
  size_t i = 0;
  for (const auto& [name_seq, name] : listing.segments) {
    const bool is_last = ++i == listing.segments.size();
    const std::string path = absl::StrCat(dir, "/", name);
    const int raw_fd = ::open(path.c_str(), O_RDWR | O_CLOEXEC);
    if (raw_fd < 0) return ErrnoStatus("open", path, errno);
    auto seg = std::make_shared<Segment>(dir, name_seq, raw_fd);
    CITYOS_ASSIGN_OR_RETURN(uint64_t size, FileSize(seg->fd, path));
    char header[kSegmentHeaderSize];
    size_t got = 0;
    CITYOS_RETURN_IF_ERROR(
        PreadExact(seg->fd, header, sizeof(header), 0, path, &got));
    absl::StatusOr<uint64_t> first = DecodeSegmentHeader(header, got);
    if (!first.ok()) {
      return DataLossAt(dir, path, 0, std::string(first.status().message()));
    }
    if (*first != name_seq) {
      return DataLossAt(dir, path, 0,
                        absl::StrFormat("header names first sequence %u, file "
                                        "name %u",
                                        *first, name_seq));
    }
    if (!segments.empty() && name_seq != prev_last + 1) {
      return DataLossAt(dir, path, 0,
                        absl::StrFormat("sequence gap between segments: "
                                        "expected first sequence %u",
                                        prev_last + 1));
    }

    // A sealed segment may be trusted through a valid index file.
    bool have_summary = false;
    bool index_ok = false;
    if (!is_last && listing.indexes.count(name_seq) != 0) {
      std::string contents;
      ScopedFd ifd(::open(seg->index_path.c_str(), O_RDONLY | O_CLOEXEC));
      if (ifd.get() >= 0) {
        struct stat st;
        if (::fstat(ifd.get(), &st) == 0) {
          contents.resize(static_cast<size_t>(st.st_size));
          CITYOS_RETURN_IF_ERROR(PreadExact(ifd.get(), contents.data(),
                                            contents.size(), 0, seg->index_path,
                                            &got));
          contents.resize(got);
        }
      }
      absl::StatusOr<SegmentSummary> summary = DecodeIndexFile(contents);
      index_ok = summary.ok() && summary->first_sequence == name_seq &&
                 summary->size == size &&
                 summary->last_sequence + 1 >= name_seq;
      if (index_ok && !options_.verify_sealed_segments) {
        seg->last_sequence = summary->last_sequence;
        seg->first_time_ns = summary->first_time_ns;
        seg->last_time_ns = summary->last_time_ns;
        seg->index = std::move(summary->index);
        have_summary = true;
      }
    }
    if (!have_summary) {
      CITYOS_ASSIGN_OR_RETURN(ScanOutcome scan,
                              ScanSegmentFile(seg->fd, path, size, name_seq,
                                              options_.index_interval_bytes));
      if (scan.bad && (!is_last || scan.gap)) {
        return DataLossAt(dir, path, scan.bad_offset, scan.reason);
      }
      if (scan.bad) {
        CITYOS_ASSIGN_OR_RETURN(
            int64_t valid_after,
            FindValidRecordAfter(seg->fd, scan.bad_offset + 1, size,
                                 scan.next_sequence - 1, nullptr));
        if (valid_after >= 0) {
          return DataLossAt(
              dir, path, scan.bad_offset,
              absl::StrFormat("%s, followed by a valid record at offset %u",
                              scan.reason, valid_after));
        }
      }
      if (!is_last && scan.batch_end != size) {
        return DataLossAt(dir, path, scan.batch_end,
                          "incomplete batch at the end of a sealed segment");
      }
      if (scan.batch_end != size) {
        // Torn tail of the last segment: cut it off.
        if (::ftruncate(seg->fd, static_cast<off_t>(scan.batch_end)) != 0) {
          return ErrnoStatus("truncate", path, errno);
        }
        if (::fdatasync(seg->fd) != 0) {
          return ErrnoStatus("fdatasync", path, errno);
        }
        recovery_.truncated = true;
        recovery_.file = path;
        recovery_.offset = scan.batch_end;
        recovery_.bytes_truncated = size - scan.batch_end;
        recovery_.records_truncated = scan.records_after_batch_end;
        recovery_.reason = scan.bad ? scan.reason : "incomplete batch";
        size = scan.batch_end;
      }
      seg->last_sequence = scan.batch_last_sequence;
      seg->first_time_ns = scan.first_time_ns;
      seg->last_time_ns = scan.batch_last_time_ns;
      scan.index.resize(scan.batch_index_entries);
      seg->index = std::move(scan.index);
      if (!is_last && !index_ok) {
        SegmentSummary summary{
            seg->first_sequence, seg->last_sequence, size,
            seg->first_time_ns,  seg->last_time_ns,  seg->index};
        // Best effort: a missing index is rebuilt at the next open.
        if (WriteFileAtomically(dir, seg->index_path, EncodeIndexFile(summary),
                                /*sync=*/false)
                .ok()) {
          ++recovery_.index_files_rebuilt;
        }
      }
    }
    if (is_last) {
      // The active segment's index lives in memory; written when sealed.
      CITYOS_RETURN_IF_ERROR(UnlinkIfExists(seg->index_path));
    }
    seg->committed_size.store(size);
    seg->sealed.store(!is_last);
    prev_last = seg->last_sequence;
    segments.push_back(std::move(seg));
  }
  if (segments.empty()) {
    CITYOS_ASSIGN_OR_RETURN(int fd, CreateSegmentFile(dir, 1));
    segments.push_back(std::make_shared<Segment>(dir, 1, fd));
    segments.back()->committed_size.store(kSegmentHeaderSize);
    prev_last = 0;
  }

  active_ = segments.back();
  active_size_ = active_->committed_size.load();
  active_last_index_offset_ =
      active_->index.empty() ? 0 : active_->index.back().offset;
  active_written_last_ = active_->last_sequence;
  active_written_first_time_ns_ = active_->first_time_ns;
  active_written_last_time_ns_ = active_->last_time_ns;
  active_written_index_ = active_->index;
  int64_t last_time_ns = 0;
  for (const auto& s : segments) {
    if (!s->empty()) last_time_ns = s->last_time_ns;
  }
  {
    absl::MutexLock l(&mu_);
    next_sequence_ = prev_last + 1;
    last_time_ns_ = last_time_ns;
  }
  shared_->committed_last.store(prev_last);
  absl::MutexLock l(&shared_->mu);
  shared_->segments = std::move(segments);
  return absl::OkStatus();
}

// ---------------------------------------------------------------- repair

absl::StatusOr<RepairReport> SegmentedLog::Repair(const std::string& dir) {
  if (dir.empty()) return absl::InvalidArgumentError("dir must not be empty");
  struct stat st;
  if (::stat(dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
    return absl::NotFoundError(absl::StrCat("no log directory ", dir));
  }
  CITYOS_ASSIGN_OR_RETURN(int lock_raw, LockDir(dir));
  ScopedFd lock_fd(lock_raw);
  CITYOS_ASSIGN_OR_RETURN(DirListing listing, ListDir(dir));
  for (const std::string& name : listing.temps) {
    CITYOS_RETURN_IF_ERROR(UnlinkIfExists(absl::StrCat(dir, "/", name)));
  }

  RepairReport report;
  bool cut = false;
  bool kept_any = false;
  uint64_t prev_last = 0;
  uint64_t first_removed = 0;
  const auto note_cut = [&](const std::string& path, uint64_t offset,
                            std::string reason) {
    if (report.file.empty()) {
      report.file = path;
      report.offset = offset;
      report.reason = std::move(reason);
    }
  };
  for (const auto& [name_seq, name] : listing.segments) {
    const std::string path = absl::StrCat(dir, "/", name);
    const std::string index_path =
        absl::StrCat(dir, "/", IndexFileName(name_seq));
    ScopedFd fd(::open(path.c_str(), O_RDWR | O_CLOEXEC));
    if (fd.get() < 0) return ErrnoStatus("open", path, errno);
    CITYOS_ASSIGN_OR_RETURN(uint64_t size, FileSize(fd.get(), path));

    std::string why;
    if (!cut) {
      char header[kSegmentHeaderSize];
      size_t got = 0;
      CITYOS_RETURN_IF_ERROR(
          PreadExact(fd.get(), header, sizeof(header), 0, path, &got));
      absl::StatusOr<uint64_t> first = DecodeSegmentHeader(header, got);
      if (!first.ok()) {
        why = std::string(first.status().message());
      } else if (*first != name_seq) {
        why = "header does not match file name";
      } else if (kept_any && name_seq != prev_last + 1) {
        why = absl::StrFormat("sequence gap between segments: expected %u",
                              prev_last + 1);
      }
      if (!why.empty()) {
        note_cut(path, 0, why);
        cut = true;
      }
    }
    if (cut) {  // remove the whole segment
      uint64_t count = 0;
      CITYOS_RETURN_IF_ERROR(FindValidRecordAfter(fd.get(), kSegmentHeaderSize,
                                                  size, name_seq - 1, &count)
                                 .status());
      report.records_dropped_estimate += count;
      report.bytes_dropped += size;
      ++report.segments_removed;
      if (first_removed == 0 && !kept_any) first_removed = name_seq;
      CITYOS_RETURN_IF_ERROR(UnlinkIfExists(path));
      CITYOS_RETURN_IF_ERROR(UnlinkIfExists(index_path));
      continue;
    }

    CITYOS_ASSIGN_OR_RETURN(
        ScanOutcome scan,
        ScanSegmentFile(fd.get(), path, size, name_seq, size + 1));
    if (scan.batch_end != size) {
      uint64_t after = 0;
      if (scan.bad) {
        CITYOS_RETURN_IF_ERROR(
            FindValidRecordAfter(fd.get(), scan.bad_offset + 1, size,
                                 scan.next_sequence - 1, &after)
                .status());
      }
      note_cut(path, scan.batch_end,
               scan.bad ? scan.reason : std::string("incomplete batch"));
      report.records_dropped_estimate += scan.records_after_batch_end + after;
      report.bytes_dropped += size - scan.batch_end;
      if (::ftruncate(fd.get(), static_cast<off_t>(scan.batch_end)) != 0) {
        return ErrnoStatus("truncate", path, errno);
      }
      if (::fdatasync(fd.get()) != 0) {
        return ErrnoStatus("fdatasync", path, errno);
      }
      CITYOS_RETURN_IF_ERROR(UnlinkIfExists(index_path));  // rebuilt on open
      cut = true;
    }
    kept_any = true;
    prev_last = scan.batch_last_sequence;
    report.last_good_sequence = prev_last;
  }
  if (!kept_any && first_removed != 0) {
    // Keep the numbering: an empty segment where the first one was.
    CITYOS_ASSIGN_OR_RETURN(int fd, CreateSegmentFile(dir, first_removed));
    ::close(fd);
    report.last_good_sequence = first_removed - 1;
  }
  CITYOS_RETURN_IF_ERROR(SyncDir(dir));
  return report;
}

// ---------------------------------------------------------------- append

void SegmentedLog::AppendAsync(absl::Span<const std::string_view> payloads,
                               AppendCallback done) {
  AppendAsyncImpl(payloads, std::move(done), nullptr);
}

void SegmentedLog::AppendAsyncTimed(absl::Span<const std::string_view> payloads,
                                    TimedAppendCallback done) {
  auto time_ns = std::make_shared<int64_t>(0);
  int64_t* slot = time_ns.get();
  AppendAsyncImpl(
      payloads,
      [time_ns = std::move(time_ns), done = std::move(done)](
          absl::StatusOr<uint64_t> first) mutable {
        absl::Time t = first.ok() ? absl::FromUnixNanos(*time_ns) : absl::InfinitePast();
        std::move(done)(std::move(first), t);
      },
      slot);
}

void SegmentedLog::AppendAsyncImpl(absl::Span<const std::string_view> payloads,
                                   AppendCallback done, int64_t* time_ns_out) {
  absl::Status error;
  size_t bytes = 0;
  if (payloads.empty()) {
    error = absl::InvalidArgumentError("append: empty batch");
  } else if (payloads.size() > (size_t{1} << 30)) {
    error = absl::InvalidArgumentError("append: too many payloads in a batch");
  }
  for (size_t i = 0; error.ok() && i < payloads.size(); ++i) {
    if (payloads[i].size() > kMaxPayloadBytes) {
      error = absl::InvalidArgumentError(absl::StrFormat(
          "append: payload %u of the batch has %u bytes; the limit is %u", i,
          payloads[i].size(), kMaxPayloadBytes));
    }
    bytes += kRecordOverhead + payloads[i].size();
  }
  const int64_t now_ns = absl::ToUnixNanos(clock_->Now());
  {
    absl::MutexLock l(&mu_);
    if (!closing_) {
      const bool on_log_thread = OnLogThread();
      while (error.ok() && !on_log_thread && !closing_ && failed_.ok() &&
             !pending_.empty() &&
             pending_.size() + bytes > options_.max_pending_bytes) {
        if (flusher_waiting_) work_cv_.Signal();  // it must drain the queue
        space_cv_.Wait(&mu_);
      }
    }
    if (!closing_) {
      const bool was_empty = pending_batches_.empty();
      if (error.ok() && !failed_.ok()) error = failed_;
      if (!error.ok()) {
        pending_batches_.push_back({0, 0, std::move(error), std::move(done)});
      } else {
        const int64_t t = std::max(now_ns, last_time_ns_);
        last_time_ns_ = t;
        if (time_ns_out != nullptr) *time_ns_out = t;
        const uint64_t first = next_sequence_;
        const uint32_t n = static_cast<uint32_t>(payloads.size());
        next_sequence_ += n;
        const size_t start = pending_.size();
        for (uint32_t i = 0; i < n; ++i) {
          AppendRecord(&pending_, first + i, t, payloads[i], i + 1 < n);
        }
        pending_batches_.push_back({first, n, absl::OkStatus(),
                                    std::move(done), pending_.size() - start});
      }
      if (!pipelined()) {
        if (was_empty) work_cv_.Signal();
      } else if (flusher_waiting_ && FlusherCanWriteLocked() &&
                 (!syncing_ || pending_.size() >= eager_write_bytes_)) {
        // During a sync the syncer wakes the flusher when it ends, or an
        // appender once eager_write_bytes_ are queued: one wake-up for
        // several appends instead of one per append.
        work_cv_.Signal();
      }
      return;
    }
  }
  // Closed: no flusher to run the callback.
  if (error.ok()) {
    error = absl::FailedPreconditionError(
        absl::StrCat("log ", options_.dir, " is closed"));
  }
  std::move(done)(std::move(error));
}

absl::StatusOr<uint64_t> SegmentedLog::Append(
    absl::Span<const std::string_view> payloads) {
  if (OnLogThread()) {
    return absl::FailedPreconditionError(
        "Append must not be called from an append callback or listener");
  }
  absl::Notification done;
  absl::StatusOr<uint64_t> result;
  AppendAsync(payloads, [&](absl::StatusOr<uint64_t> r) {
    result = std::move(r);
    done.Notify();
  });
  done.WaitForNotification();
  return result;
}

void SegmentedLog::SetAppendListener(
    std::function<void(uint64_t last_sequence)> listener) {
  std::shared_ptr<const std::function<void(uint64_t)>> p;
  if (listener) {
    p = std::make_shared<const std::function<void(uint64_t)>>(
        std::move(listener));
  }
  absl::MutexLock l(&mu_);
  listener_ = std::move(p);
}

// ---------------------------------------------------------------- flusher

void SegmentedLog::FlusherLoop() {
  flusher_id_.store(std::this_thread::get_id());
  std::string buf;
  std::vector<PendingBatch> batches;
  for (;;) {
    bool exit = false;
    if (pipelined()) {
      {
        absl::MutexLock l(&mu_);
        // Written but unsynced bytes stay within max_unsynced_bytes: the
        // flusher takes the longest prefix of the queue (whole batches) that
        // fits and leaves the rest queued until a sync ends (a batch is
        // always taken when nothing is unsynced).
        while (!FlusherCanWriteLocked() &&
               !(closing_ && pending_batches_.empty())) {
          flusher_waiting_ = true;
          work_cv_.Wait(&mu_);
          flusher_waiting_ = false;
        }
        if (!pending_batches_.empty()) {
          const uint64_t room =
              unsynced_bytes_ >= options_.max_unsynced_bytes
                  ? 0
                  : options_.max_unsynced_bytes - unsynced_bytes_;
          size_t k = 0;
          uint64_t take = 0;
          while (k < pending_batches_.size() &&
                 (take + pending_batches_[k].bytes <= room ||
                  (k == 0 && unsynced_bytes_ == 0))) {
            take += pending_batches_[k].bytes;
            ++k;
          }
          if (k == pending_batches_.size()) {
            buf.swap(pending_);
            batches.swap(pending_batches_);
          } else {
            buf.assign(pending_, 0, take);
            pending_.erase(0, take);
            batches.assign(
                std::make_move_iterator(pending_batches_.begin()),
                std::make_move_iterator(pending_batches_.begin() + k));
            pending_batches_.erase(pending_batches_.begin(),
                                   pending_batches_.begin() + k);
          }
          space_cv_.SignalAll();
        }
        exit = closing_ && pending_batches_.empty();
      }
      if (!batches.empty()) ProcessGroup(buf, batches);
      buf.clear();
      batches.clear();
      if (exit) {
        // The syncer syncs and completes what is still written, then exits.
        absl::MutexLock l(&mu_);
        flusher_done_ = true;
        sync_cv_.Signal();
        break;
      }
      continue;
    }
    {
      absl::MutexLock l(&mu_);
      while (pending_batches_.empty() && !closing_) {
        if (options_.durability == Durability::kInterval && dirty_) {
          if (absl::Now() >= next_sync_) break;
          work_cv_.WaitWithDeadline(&mu_, next_sync_);
        } else {
          work_cv_.Wait(&mu_);
        }
      }
      exit = closing_ && pending_batches_.empty();
      if (!pending_batches_.empty()) {
        buf.swap(pending_);
        batches.swap(pending_batches_);
        space_cv_.SignalAll();
      }
    }
    if (!batches.empty()) ProcessGroup(buf, batches);
    buf.clear();
    batches.clear();
    if (dirty_ && (exit || (options_.durability == Durability::kInterval &&
                            absl::Now() >= next_sync_))) {
      absl::Status s = SyncActive();
      if (!s.ok() && exit) flusher_close_status_ = s;
    }
    if (exit) break;
  }
}

void SegmentedLog::ProcessGroup(std::string& buf,
                                std::vector<PendingBatch>& batches) {
  uint64_t first_seq = 0;
  uint64_t last_seq = 0;
  for (const PendingBatch& b : batches) {
    if (b.count == 0) continue;
    if (first_seq == 0) first_seq = b.first_sequence;
    last_seq = b.first_sequence + b.count - 1;
  }
  if (!buf.empty()) {
    absl::Status st;
    {
      // Poisoned (a failure while writing or syncing an earlier group):
      // nothing more is written.
      absl::MutexLock l(&mu_);
      st = failed_;
    }
    if (!st.ok()) {
      FailGroup(batches, st, first_seq);
      return;
    }
    if (active_size_ >= options_.segment_bytes &&
        active_size_ > kSegmentHeaderSize) {
      st = Roll(first_seq);
    }
    const uint64_t offset = active_size_;
    if (st.ok()) {
      const int err = PwriteAll(active_->fd, buf.data(), buf.size(), offset);
      if (err != 0) {
        st = ErrnoStatus("write", active_->path, err);
        // Nothing half-written: cut back to where the group started.
        if (::ftruncate(active_->fd, static_cast<off_t>(offset)) != 0) {
          const absl::Status t = ErrnoStatus("truncate", active_->path, errno);
          Poison(t);
          st = absl::InternalError(
              absl::StrCat(st.message(), "; then ", t.message()));
        }
      }
    }
    if (!st.ok()) {
      FailGroup(batches, st, first_seq);
      return;
    }

    // Index entries every index_interval_bytes; then publish (kFsync: the
    // syncer does, once the group is durable).
    const uint64_t end = offset + buf.size();
    int64_t first_time_ns = 0;
    int64_t last_time_ns = 0;
    new_index_entries_.clear();
    for (size_t p = 0; p < buf.size();) {
      const char* h = buf.data() + p;
      const uint64_t seq = DecodeFixed64(h + kRecordPrefixSize);
      const int64_t t =
          static_cast<int64_t>(DecodeFixed64(h + kRecordPrefixSize + 8));
      if (p == 0) first_time_ns = t;
      last_time_ns = t;
      const uint64_t at = offset + p;
      if (active_last_index_offset_ == 0 ||
          at - active_last_index_offset_ >= options_.index_interval_bytes) {
        new_index_entries_.push_back({seq, t, at});
        active_last_index_offset_ = at;
      }
      p += kRecordPrefixSize + (DecodeFixed32(h) & kLengthMask);
    }
    if (active_written_last_ < active_->first_sequence) {
      active_written_first_time_ns_ = first_time_ns;
    }
    active_written_last_time_ns_ = last_time_ns;
    active_written_last_ = last_seq;
    active_written_index_.insert(active_written_index_.end(),
                                 new_index_entries_.begin(),
                                 new_index_entries_.end());
    Extent extent{active_,       std::exchange(active_unpublished_, false),
                  end,           last_seq,
                  first_time_ns, last_time_ns,
                  new_index_entries_};
    active_size_ = end;
    if (!dirty_) {
      dirty_ = true;
      next_sync_ = absl::Now() + options_.sync_interval;
    }
    if (pipelined()) {
      HandOff(WrittenGroup{std::move(extent), buf.size(), absl::OkStatus(),
                           std::move(batches)});
      return;
    }
    {
      absl::MutexLock l(&shared_->mu);
      CommitLocked(extent);
    }
  } else if (pipelined()) {
    // Only pre-set errors: completed in order by the syncer.
    HandOff(WrittenGroup{Extent{}, 0, absl::OkStatus(), std::move(batches)});
    return;
  }
  Complete(batches, absl::OkStatus());
  if (last_seq != 0) {
    std::shared_ptr<const std::function<void(uint64_t)>> listener;
    {
      absl::MutexLock l(&mu_);
      listener = listener_;
    }
    if (listener) (*listener)(last_seq);
  }
}

void SegmentedLog::FailGroup(std::vector<PendingBatch>& batches,
                             const absl::Status& status,
                             uint64_t first_sequence) {
  std::vector<PendingBatch> behind;
  {
    absl::MutexLock l(&mu_);
    behind.swap(pending_batches_);
    pending_.clear();
    if (first_sequence != 0) next_sequence_ = first_sequence;
    space_cv_.SignalAll();
  }
  if (pipelined()) {
    // In order behind the groups written before: through the syncer.
    batches.insert(batches.end(), std::make_move_iterator(behind.begin()),
                   std::make_move_iterator(behind.end()));
    Extent extent;
    if (active_unpublished_) {  // a roll made it: readers must get to it
      extent.seg = active_;
      extent.new_segment = true;
      extent.end = active_size_;
      active_unpublished_ = false;
    }
    HandOff(WrittenGroup{std::move(extent), 0, status, std::move(batches)});
    return;
  }
  Complete(batches, status);
  Complete(behind, status);
}

void SegmentedLog::Complete(std::vector<PendingBatch>& batches,
                            const absl::Status& status) {
  for (PendingBatch& b : batches) {
    if (b.count == 0) {
      std::move(b.done)(std::move(b.status));
    } else if (!status.ok()) {
      std::move(b.done)(status);
    } else {
      std::move(b.done)(b.first_sequence);
    }
  }
}

void SegmentedLog::CommitLocked(Extent& e) {
  if (e.seg == nullptr) return;
  auto& segs = shared_->segments;
  if (e.new_segment) {
    segs.back()->sealed.store(true, std::memory_order_release);
    segs.push_back(e.seg);
  }
  if (e.last_sequence < e.seg->first_sequence) return;  // nothing written
  Segment& seg = *e.seg;
  if (seg.empty()) seg.first_time_ns = e.first_time_ns;
  seg.last_time_ns = e.last_time_ns;
  seg.last_sequence = e.last_sequence;
  seg.index.insert(seg.index.end(), e.index.begin(), e.index.end());
  seg.committed_size.store(e.end, std::memory_order_release);
  shared_->committed_last.store(e.last_sequence, std::memory_order_release);
}

void SegmentedLog::HandOff(WrittenGroup group) {
  absl::MutexLock l(&mu_);
  unsynced_bytes_ += group.bytes;
  max_unsynced_seen_ = std::max(max_unsynced_seen_, unsynced_bytes_);
  group.id = ++handed_off_groups_;
  written_.push_back(std::move(group));
  if (syncer_waiting_) sync_cv_.Signal();
}

bool SegmentedLog::FlusherCanWriteLocked() const {
  if (pending_batches_.empty()) return false;
  return unsynced_bytes_ == 0 ||
         unsynced_bytes_ + pending_batches_.front().bytes <=
             options_.max_unsynced_bytes;
}

uint64_t SegmentedLog::unsynced_bytes_for_test() const {
  absl::MutexLock l(&mu_);
  return unsynced_bytes_;
}

uint64_t SegmentedLog::max_unsynced_bytes_seen_for_test() const {
  absl::MutexLock l(&mu_);
  return max_unsynced_seen_;
}

bool SegmentedLog::refuses_appends_for_test() const {
  absl::MutexLock l(&mu_);
  return !failed_.ok();
}

struct SegmentedLog::TestPause {
  // Read before every kFsync sync; the mutex is taken only while set.
  std::atomic<bool> set{false};
  absl::Mutex mu;
  bool paused ABSL_GUARDED_BY(mu) = false;
  int waiting ABSL_GUARDED_BY(mu) = 0;  // syncers held by the pause
};

SegmentedLog::TestPause& SegmentedLog::Pause() {
  static TestPause* p = new TestPause;
  return *p;
}

void SegmentedLog::PauseSyncsForTest(bool pause) {
  TestPause& p = Pause();
  absl::MutexLock l(&p.mu);
  p.paused = pause;
  p.set.store(pause, std::memory_order_relaxed);
}

int SegmentedLog::SyncsHeldForTest() {
  TestPause& p = Pause();
  absl::MutexLock l(&p.mu);
  return p.waiting;
}

void SegmentedLog::SyncerLoop() {
  syncer_id_.store(std::this_thread::get_id());
  std::vector<WrittenGroup> groups;
  for (;;) {
    {
      absl::MutexLock l(&mu_);
      while (written_.empty() && !flusher_done_) {
        syncer_waiting_ = true;
        sync_cv_.Wait(&mu_);
        syncer_waiting_ = false;
      }
      if (written_.empty()) return;  // flusher done, everything completed
      groups.swap(written_);
      syncing_ = true;
    }
    // One fdatasync for everything written: records are written in order,
    // and a segment older than the last one written was synced by the
    // flusher when it was sealed (before the newer file existed).
    std::shared_ptr<Segment> target;
    uint64_t bytes = 0;
    for (const WrittenGroup& g : groups) {
      bytes += g.bytes;
      if (g.status.ok() && g.extent.seg != nullptr &&
          g.extent.last_sequence >= g.extent.seg->first_sequence) {
        target = g.extent.seg;
      }
    }
    bool synced = true;  // nothing to sync counts as synced
    if (target != nullptr) {
      TestPause& p = Pause();
      if (p.set.load(std::memory_order_relaxed)) {
        absl::MutexLock l(&p.mu);
        ++p.waiting;
        p.mu.Await(absl::Condition(
            +[](bool* paused) { return !*paused; }, &p.paused));
        --p.waiting;
      }
    }
    bool ack;
    absl::Status sync_error;      // for the groups a failed sync covered
    absl::Status refused_status;  // for the later ones
    uint64_t covered_through = 0;
    {
      // "fdatasync + poison on failure" and the decision to acknowledge run
      // under sync_mu_, as the flusher's roll-over sync does: if that one
      // got the file's writeback error (Linux reports it once per open
      // file), failed_ is set before this sync runs, whose success would
      // prove nothing; and a roll-over sync failing after this one
      // succeeded does not take back what this one made durable.
      absl::MutexLock sl(&sync_mu_);
      if (target != nullptr) {
        bool refused;
        {
          absl::MutexLock l(&mu_);
          refused = !failed_.ok();
        }
        if (refused) {
          synced = false;
        } else {
          syncs_.fetch_add(1, std::memory_order_relaxed);
          const int err = SyncFile(target->fd);
          if (err != 0) {
            synced = false;
            PoisonSync(absl::InternalError(absl::StrCat("fdatasync ",
                                                        target->path, ": ",
                                                        std::strerror(err))),
                       groups.back().id);
          }
        }
      }
      absl::MutexLock l(&mu_);
      // A failure seen meanwhile (e.g. a failed truncate): acknowledge
      // nothing more, nor make anything more visible (not even a new
      // segment: the records before it may never have been).
      ack = synced && failed_.ok();
      if (!ack) {
        sync_error = sync_error_;
        refused_status = failed_;
        covered_through = sync_covered_through_;
        if (target != nullptr && closing_ && syncer_close_status_.ok()) {
          syncer_close_status_ =
              groups.back().id <= covered_through ? sync_error : failed_;
        }
      }
      syncing_ = false;
      unsynced_bytes_ -= std::min(unsynced_bytes_, bytes);
      // Wake the flusher for what queued up during the sync.
      if (flusher_waiting_ && FlusherCanWriteLocked()) work_cv_.Signal();
    }
    uint64_t last_seq = 0;
    if (ack) {
      absl::MutexLock l(&shared_->mu);
      for (WrittenGroup& g : groups) {
        // A failed write: only its segment (made by a roll) to publish.
        CommitLocked(g.extent);
        if (g.status.ok() && g.extent.seg != nullptr &&
            g.extent.last_sequence >= g.extent.seg->first_sequence) {
          last_seq = std::max(last_seq, g.extent.last_sequence);
        }
      }
    }
    for (WrittenGroup& g : groups) {
      if (!g.status.ok()) {
        Complete(g.batches, g.status);
      } else if (ack) {
        Complete(g.batches, absl::OkStatus());
      } else {
        // Covered by the failed fdatasync: its error; written after it (or
        // refused before syncing): FAILED_PRECONDITION.
        Complete(g.batches, g.id <= covered_through && !sync_error.ok()
                                ? sync_error
                                : refused_status);
      }
    }
    groups.clear();
    if (last_seq != 0) {
      std::shared_ptr<const std::function<void(uint64_t)>> listener;
      {
        absl::MutexLock l(&mu_);
        listener = listener_;
      }
      if (listener) (*listener)(last_seq);
    }
  }
}

int SegmentedLog::SyncFile(int fd) {
  if (fail_syncs_for_test_.load(std::memory_order_relaxed)) return EIO;
  if (fail_next_syncs_for_test_.load(std::memory_order_relaxed) > 0 &&
      fail_next_syncs_for_test_.fetch_sub(1) > 0) {
    return EIO;
  }
  return ::fdatasync(fd) == 0 ? 0 : errno;
}

absl::Status SegmentedLog::SyncActive() {
  absl::MutexLock sl(&sync_mu_);
  if (pipelined()) {
    // The syncer's fdatasync failed (it may have taken the file's only
    // error report): this one would prove nothing.
    absl::MutexLock l(&mu_);
    if (!failed_.ok()) return failed_;
  }
  if (const int err = SyncFile(active_->fd); err != 0) {
    absl::Status s = absl::InternalError(
        absl::StrCat("fdatasync ", active_->path, ": ", std::strerror(err)));
    uint64_t covered;
    {
      absl::MutexLock l(&mu_);
      covered = handed_off_groups_;  // all written before: in this segment
    }
    PoisonSync(s, covered);
    if (pipelined()) {
      // kFsync: the groups written before (in this segment) fail with `s`
      // through the syncer; the group that rolls was not covered by it.
      absl::MutexLock l(&mu_);
      return failed_;
    }
    return s;
  }
  dirty_ = false;
  return absl::OkStatus();
}

void SegmentedLog::Poison(const absl::Status& status) {
  absl::MutexLock l(&mu_);
  if (failed_.ok()) {
    failed_ = absl::FailedPreconditionError(absl::StrCat(
        "log ", options_.dir, " refuses appends after an earlier failure (",
        status.message(), "); close and reopen it to recover"));
  }
}

void SegmentedLog::PoisonSync(const absl::Status& error,
                              uint64_t covered_through) {
  absl::MutexLock l(&mu_);
  if (!failed_.ok()) return;  // an earlier failure decides
  failed_ = absl::FailedPreconditionError(absl::StrCat(
      "log ", options_.dir, " refuses appends after an earlier failure (",
      error.message(), "); close and reopen it to recover"));
  sync_error_ = error;
  sync_covered_through_ = covered_through;
}

absl::Status SegmentedLog::Roll(uint64_t first_sequence) {
  // Seal the active segment: its data durable, its index written.
  if (dirty_) CITYOS_RETURN_IF_ERROR(SyncActive());
  // The segment as written (kFsync: readers may not see all of it yet).
  SegmentSummary summary{active_->first_sequence,        active_written_last_,
                         active_size_,                   active_written_first_time_ns_,
                         active_written_last_time_ns_,   active_written_index_};
  // Best effort: a missing or bad index is rebuilt by the next Open().
  WriteFileAtomically(options_.dir, active_->index_path,
                      EncodeIndexFile(summary), /*sync=*/false)
      .IgnoreError();
  CITYOS_ASSIGN_OR_RETURN(int fd,
                          CreateSegmentFile(options_.dir, first_sequence));
  auto seg = std::make_shared<Segment>(options_.dir, first_sequence, fd);
  seg->committed_size.store(kSegmentHeaderSize);
  if (pipelined()) {
    // Published by the syncer, after the records of the sealed one.
    active_unpublished_ = true;
  } else {
    absl::MutexLock l(&shared_->mu);
    active_->sealed.store(true, std::memory_order_release);
    shared_->segments.push_back(seg);
  }
  active_ = std::move(seg);
  active_size_ = kSegmentHeaderSize;
  active_last_index_offset_ = 0;
  active_written_last_ = first_sequence - 1;
  active_written_first_time_ns_ = 0;
  active_written_last_time_ns_ = 0;
  active_written_index_.clear();
  return absl::OkStatus();
}

absl::Status SegmentedLog::Close() {
  if (OnLogThread()) {
    return absl::FailedPreconditionError(
        "Close must not be called from an append callback or listener");
  }
  absl::MutexLock cl(&close_mu_);
  if (closed_) return close_status_;
  {
    absl::MutexLock l(&mu_);
    closing_ = true;
    work_cv_.Signal();
    space_cv_.SignalAll();
  }
  if (flusher_.joinable()) flusher_.join();
  if (syncer_.joinable()) syncer_.join();
  close_status_ = flusher_close_status_;
  if (close_status_.ok()) {
    absl::MutexLock l(&mu_);
    close_status_ = syncer_close_status_;
  }
  if (lock_fd_ >= 0) {
    ::close(lock_fd_);
    lock_fd_ = -1;
  }
  closed_ = true;
  return close_status_;
}

// ---------------------------------------------------------------- queries

absl::StatusOr<std::unique_ptr<LogReader>> SegmentedLog::NewReader(
    uint64_t start_sequence) {
  return std::unique_ptr<LogReader>(new Reader(shared_, start_sequence));
}

uint64_t SegmentedLog::LastSequence() const {
  return shared_->committed_last.load(std::memory_order_acquire);
}

LogState SegmentedLog::State() const {
  LogState s;
  absl::ReaderMutexLock l(&shared_->mu);
  const auto& segs = shared_->segments;
  s.first_sequence = segs.front()->first_sequence;
  s.last_sequence = shared_->committed_last.load(std::memory_order_acquire);
  s.events = s.last_sequence + 1 - s.first_sequence;
  s.segments = static_cast<uint32_t>(segs.size());
  bool have_first = false;
  for (const auto& seg : segs) {
    s.bytes += seg->committed_size.load(std::memory_order_acquire);
    if (seg->empty()) continue;
    if (!have_first) {
      s.first_time = absl::FromUnixNanos(seg->first_time_ns);
      have_first = true;
    }
    s.last_time = absl::FromUnixNanos(seg->last_time_ns);
  }
  return s;
}

absl::StatusOr<uint64_t> SegmentedLog::SequenceAtOrAfter(absl::Time t) {
  const int64_t t_ns = absl::ToUnixNanos(t);
  std::shared_ptr<Segment> seg;
  uint64_t offset = kSegmentHeaderSize;
  uint64_t limit = 0;
  {
    absl::ReaderMutexLock l(&shared_->mu);
    for (const auto& s : shared_->segments) {
      if (!s->empty() && s->last_time_ns >= t_ns) {
        seg = s;
        break;
      }
    }
    if (seg == nullptr) return shared_->committed_last.load() + 1;
    if (seg->first_time_ns >= t_ns) return seg->first_sequence;
    // Last index entry strictly before t: every record before it is too.
    auto e = std::partition_point(
        seg->index.begin(), seg->index.end(),
        [t_ns](const IndexEntry& x) { return x.time_ns < t_ns; });
    if (e != seg->index.begin()) offset = std::prev(e)->offset;
    limit = seg->committed_size.load(std::memory_order_acquire);
  }
  SegmentScanner scanner(seg->fd, offset, limit);
  RecordView rec;
  for (;;) {
    switch (scanner.Next(&rec)) {
      case SegmentScanner::kRecord:
        if (rec.time_ns >= t_ns) return rec.sequence;
        break;
      case SegmentScanner::kEnd:
        return seg->last_sequence + 1;  // unreachable: last_time >= t
      case SegmentScanner::kTruncated:
      case SegmentScanner::kCorrupt:
        return DataLossAt(options_.dir, seg->path, scanner.record_offset(),
                          scanner.error());
      case SegmentScanner::kIoError:
        return ErrnoStatus("read", seg->path, scanner.io_errno());
    }
  }
}

absl::Status SegmentedLog::ApplyRetention() {
  if (options_.max_age == absl::ZeroDuration() && options_.max_bytes == 0) {
    return absl::OkStatus();
  }
  const int64_t cutoff_ns = absl::ToUnixNanos(clock_->Now() - options_.max_age);
  std::vector<std::shared_ptr<Segment>> doomed;
  {
    absl::MutexLock l(&shared_->mu);
    auto& segs = shared_->segments;
    uint64_t total = 0;
    for (const auto& s : segs) total += s->committed_size.load();
    size_t k = 0;
    while (k + 1 < segs.size()) {  // never the active segment
      const Segment& s = *segs[k];
      const bool too_old = options_.max_age > absl::ZeroDuration() &&
                           (s.empty() || s.last_time_ns < cutoff_ns);
      const bool too_big = options_.max_bytes > 0 && total > options_.max_bytes;
      if (!too_old && !too_big) break;
      total -= s.committed_size.load();
      ++k;
    }
    doomed.assign(segs.begin(), segs.begin() + static_cast<ptrdiff_t>(k));
    segs.erase(segs.begin(), segs.begin() + static_cast<ptrdiff_t>(k));
  }
  // Readers holding a doomed segment keep its fd (and data) until done.
  absl::Status status;
  for (const auto& s : doomed) {
    absl::Status st = UnlinkIfExists(s->path);
    if (status.ok() && !st.ok()) status = st;
    st = UnlinkIfExists(s->index_path);
    if (status.ok() && !st.ok()) status = st;
  }
  return status;
}

}  // namespace cityos::log_internal
