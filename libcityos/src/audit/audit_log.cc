// The hash-chained, checkpoint-signed audit log (cityos/audit.h); the file
// format is in docs/audit-format.md.
//
// Appenders queue entries under `mu_`; one writer thread takes the whole
// queue, chains and serializes it, writes it with one write(2) and one
// fdatasync (group commit), and only then publishes the entries to the query
// indexes (under `index_mu_`), so Query and Verify only ever see durable data.
#include "cityos/audit.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "audit/audit_format.h"
#include "audit/signing_internal.h"
#include "cityos/clock.h"
#include "cityos/logging.h"
#include "cityos/principal.h"
#include "cityos/proto_time.h"
#include "cityos/signing.h"
#include "cityos/status.h"
#include "core/file_util.h"
#include "core/strings.h"

namespace cityos {
namespace audit_internal {
namespace {

using exchange::v1::AuditCheckpoint;
using exchange::v1::AuditEntry;
using exchange::v1::VerifyAuditResponse;

// The writer takes at most this many entries per batch (bounds the memory of
// one write and the latency of the entries behind it).
constexpr size_t kMaxBatch = 8192;

absl::Status ErrnoStatus(std::string_view what, const std::string& path) {
  const int e = errno;
  std::string msg = absl::StrCat(AV(what), " ", path, ": ", std::strerror(e));
  if (e == ENOSPC || e == EDQUOT) return absl::ResourceExhaustedError(msg);
  return absl::InternalError(msg);
}

absl::Status WriteAll(int fd, std::string_view data, const std::string& path) {
  while (!data.empty()) {
    ssize_t n = ::write(fd, data.data(), data.size());
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return ErrnoStatus("cannot write audit log", path);
    data.remove_prefix(static_cast<size_t>(n));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> PreadAll(int fd, uint64_t offset, size_t n, const std::string& path) {
  std::string out(n, '\0');
  size_t done = 0;
  while (done < n) {
    ssize_t r = ::pread(fd, out.data() + done, n - done, static_cast<off_t>(offset + done));
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) return ErrnoStatus("cannot read audit log", path);
    if (r == 0) break;
    done += static_cast<size_t>(r);
  }
  out.resize(done);
  return out;
}

void SyncDir(const std::string& dir) {
  int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd >= 0) {
    ::fsync(fd);
    ::close(fd);
  }
}

absl::Time EntryTime(const AuditEntry& e) {
  return absl::FromUnixSeconds(e.time().seconds()) + absl::Nanoseconds(e.time().nanos());
}

std::string Where(const std::string& path, uint64_t offset) {
  return absl::StrCat(std::filesystem::path(path).filename().string(), " offset ", offset);
}

// Interned strings: the indexes store small ids, not copies of strings.
class Interner {
 public:
  Interner() { Id(""); }
  uint32_t Id(const std::string& s) {
    auto [it, inserted] = ids_.try_emplace(s, static_cast<uint32_t>(ids_.size()));
    return it->second;
  }
  // -1 when never seen.
  int64_t Find(const std::string& s) const {
    auto it = ids_.find(s);
    return it == ids_.end() ? int64_t{-1} : static_cast<int64_t>(it->second);
  }
  size_t size() const { return ids_.size(); }

 private:
  absl::flat_hash_map<std::string, uint32_t> ids_;
};

// What Query needs of an entry without reading it, and where it is.
struct EntryMeta {
  absl::Time time;
  uint64_t offset = 0;
  uint32_t segment = 0;
  uint32_t principal = 0;
  uint32_t action = 0;
  uint32_t data_subject = 0;
  uint8_t severity = 0;
};
struct CheckpointMeta {
  uint64_t sequence = 0;
  uint32_t segment = 0;
  uint64_t offset = 0;
};
struct Segment {
  std::string path;
  int read_fd = -1;
  uint64_t durable_size = 0;  // bytes of complete, synced records
};


class AuditLogImpl final : public AuditLog {
 public:
  explicit AuditLogImpl(AuditOptions options) : options_(std::move(options)) {
    clock_ = options_.clock != nullptr ? options_.clock : Clock::Real();
    if (options_.checkpoint_every == 0) options_.checkpoint_every = 1;
    if (options_.max_queued == 0) options_.max_queued = 1;
  }
  ~AuditLogImpl() override {
    (void)Close();
    for (Segment& s : segments_) {
      if (s.read_fd >= 0) ::close(s.read_fd);
    }
    if (lock_fd_ >= 0) ::close(lock_fd_);  // releases the flock
  }

  absl::Status Init();

  void Append(AuditEntry entry) override;
  absl::StatusOr<uint64_t> Flush() override;
  absl::StatusOr<AuditPage> Query(const AuditQuery& query) override;
  absl::StatusOr<VerifyAuditResponse> Verify(uint64_t from, uint64_t to) override;
  uint64_t last_sequence() const override {
    absl::MutexLock l(&mu_);
    return durable_sequence_;
  }
  std::string key_id() const override { return key_->key_id(); }
  std::string public_key_pem() const override { return key_->public_key_pem(); }
  absl::Status Close() override;

 private:
  absl::Status LoadSegment(size_t index, bool last, std::string* tail_fault)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(index_mu_);
  // Adds a durable entry (the next sequence) to the indexes.
  void PublishEntry(EntryMeta meta, const AuditEntry& e) ABSL_EXCLUSIVE_LOCKS_REQUIRED(index_mu_);
  absl::StatusOr<AuditEntry> ReadEntry(uint64_t sequence) const
      ABSL_SHARED_LOCKS_REQUIRED(index_mu_);
  absl::StatusOr<AuditCheckpoint> ReadCheckpoint(const CheckpointMeta& cp) const
      ABSL_SHARED_LOCKS_REQUIRED(index_mu_);
  absl::StatusOr<std::string> ReadRecord(uint32_t segment, uint64_t offset, uint8_t type) const
      ABSL_SHARED_LOCKS_REQUIRED(index_mu_);

  void WriterLoop();
  // Chains, serializes, writes and syncs one batch; publishes it.
  absl::Status WriteBatch(std::vector<AuditEntry>& batch, bool closing);
  void AppendCheckpoint(std::string* buf, std::vector<CheckpointMeta>* cps);
  absl::Status OpenNewSegment(uint64_t first_sequence);

  AuditOptions options_;
  Clock* clock_ = nullptr;
  std::unique_ptr<SigningKey> key_;
  UniquePkey public_key_;  // key_'s public half, for Verify

  // Appenders and the writer.
  mutable absl::Mutex mu_;
  absl::CondVar writer_cv_;  // work for the writer
  absl::CondVar space_cv_;   // the queue was taken
  absl::CondVar done_cv_;    // a batch is durable (or failed)
  std::vector<AuditEntry> queue_ ABSL_GUARDED_BY(mu_);
  absl::Time first_queued_ ABSL_GUARDED_BY(mu_);  // real time
  uint64_t next_sequence_ ABSL_GUARDED_BY(mu_) = 1;
  uint64_t durable_sequence_ ABSL_GUARDED_BY(mu_) = 0;
  int flush_waiters_ ABSL_GUARDED_BY(mu_) = 0;
  absl::Time checkpoint_due_ ABSL_GUARDED_BY(mu_) = absl::InfiniteFuture();
  absl::Status status_ ABSL_GUARDED_BY(mu_);
  bool closing_ ABSL_GUARDED_BY(mu_) = false;
  bool writer_exited_ ABSL_GUARDED_BY(mu_) = false;
  bool warned_closed_ ABSL_GUARDED_BY(mu_) = false;
  std::thread writer_;
  absl::Mutex close_mu_;
  bool closed_ ABSL_GUARDED_BY(close_mu_) = false;

  int lock_fd_ = -1;  // flock(2)ed <dir>/LOCK

  // Writer thread only (and Init before it starts).
  int write_fd_ = -1;
  uint64_t write_size_ = 0;
  std::string last_hash_ = std::string(kHashSize, '\0');
  uint64_t written_sequence_ = 0;
  uint64_t unsigned_count_ = 0;
  absl::Time first_unsigned_ = absl::InfiniteFuture();  // real time

  // Durable entries, for Query and Verify. Entry `s` is entries_[s - 1].
  mutable absl::Mutex index_mu_;
  std::vector<Segment> segments_ ABSL_GUARDED_BY(index_mu_);
  std::vector<EntryMeta> entries_ ABSL_GUARDED_BY(index_mu_);
  std::vector<CheckpointMeta> checkpoints_ ABSL_GUARDED_BY(index_mu_);
  Interner principals_ ABSL_GUARDED_BY(index_mu_);
  Interner actions_ ABSL_GUARDED_BY(index_mu_);
  Interner subjects_ ABSL_GUARDED_BY(index_mu_);
  Interner orgs_ ABSL_GUARDED_BY(index_mu_);
  // Org id by principal id (id 0 is the empty principal, org "").
  std::vector<uint32_t> principal_org_ ABSL_GUARDED_BY(index_mu_) = {0};
  // Sequences by principal id / data subject id (ascending).
  std::vector<std::vector<uint64_t>> by_principal_ ABSL_GUARDED_BY(index_mu_) =
      std::vector<std::vector<uint64_t>>(1);
  std::vector<std::vector<uint64_t>> by_subject_ ABSL_GUARDED_BY(index_mu_);
  // Whether entry times never decrease with the sequence (then a time range
  // is a sequence range, found by binary search).
  bool times_sorted_ ABSL_GUARDED_BY(index_mu_) = true;
};

absl::Status AuditLogImpl::Init() {
  if (options_.dir.empty()) return absl::InvalidArgumentError("audit: dir is required");
  std::error_code ec;
  if (!std::filesystem::exists(options_.dir, ec)) {
    std::filesystem::create_directories(options_.dir, ec);
    if (ec) {
      return absl::InternalError(
          absl::StrCat("cannot create audit directory ", options_.dir, ": ", ec.message()));
    }
    ::chmod(options_.dir.c_str(), 0700);
  }
  // One writer per directory: a second one would fork the chain.
  const std::string lock_path = options_.dir + "/LOCK";
  lock_fd_ = ::open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (lock_fd_ < 0) return ErrnoStatus("cannot open", lock_path);
  if (::flock(lock_fd_, LOCK_EX | LOCK_NB) != 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("audit log ", options_.dir, " is in use by another AuditLog (", lock_path,
                     " is locked)"));
  }
  const std::string key_file = options_.signing_key_file.empty()
                                   ? options_.dir + "/signing.key"
                                   : options_.signing_key_file;
  CITYOS_ASSIGN_OR_RETURN(key_, SigningKey::LoadOrCreate(key_file));
  CITYOS_ASSIGN_OR_RETURN(public_key_, ParseEd25519PublicKey(key_->public_key_raw()));

  CITYOS_ASSIGN_OR_RETURN(std::vector<std::string> paths, ListSegments(options_.dir));
  std::string tail_fault;
  {
    absl::MutexLock l(&index_mu_);
    for (size_t i = 0; i < paths.size(); ++i) {
      segments_.push_back(Segment{paths[i], -1, 0});
      CITYOS_RETURN_IF_ERROR(LoadSegment(i, i + 1 == paths.size(), &tail_fault));
    }
  }
  if (!tail_fault.empty()) {
    return absl::DataLossError(absl::StrCat(
        "audit log ", options_.dir, " was altered after its last signed checkpoint: ",
        tail_fault, "; move the directory aside and check it with `cityosctl audit verify`"));
  }
  if (!paths.empty()) {
    const std::string& path = paths.back();
    write_fd_ = ::open(path.c_str(), O_WRONLY | O_APPEND | O_CLOEXEC);
    if (write_fd_ < 0) return ErrnoStatus("cannot open audit log", path);
    absl::MutexLock l(&index_mu_);
    write_size_ = segments_.back().durable_size;
  }
  {
    absl::MutexLock l(&mu_);
    next_sequence_ = written_sequence_ + 1;
    durable_sequence_ = written_sequence_;
    if (unsigned_count_ > 0) {
      // Entries a crash left unsigned are signed soon after the restart.
      first_unsigned_ = absl::Now();
      checkpoint_due_ = first_unsigned_ + options_.checkpoint_interval;
    }
  }
  writer_ = std::thread([this] { WriterLoop(); });
  return absl::OkStatus();
}

absl::Status AuditLogImpl::LoadSegment(size_t index, bool last, std::string* tail_fault) {
  Segment& seg = segments_[index];
  CITYOS_ASSIGN_OR_RETURN(std::string data, ReadFileToString(seg.path));
  size_t pos = 0;
  while (pos < data.size()) {
    Record rec;
    DecodeResult r = DecodeRecord(data, pos, &rec);
    if (r != DecodeResult::kOk) {
      if (last && IsTornTail(data, pos, r)) {
        LogWarn("audit", "cutting the torn tail of the audit log",
                {{"file", seg.path},
                 {"offset", absl::StrCat(pos)},
                 {"bytes", absl::StrCat(data.size() - pos)}});
        int fd = ::open(seg.path.c_str(), O_WRONLY | O_CLOEXEC);
        if (fd < 0 || ::ftruncate(fd, static_cast<off_t>(pos)) != 0 || ::fsync(fd) != 0) {
          absl::Status s = ErrnoStatus("cannot truncate torn audit log", seg.path);
          if (fd >= 0) ::close(fd);
          return s;
        }
        ::close(fd);
        break;
      }
      return absl::DataLossError(absl::StrCat(
          "audit log ", seg.path, " is corrupt at offset ", pos, ": ",
          r == DecodeResult::kBadCrc      ? "record checksum mismatch"
          : r == DecodeResult::kBadLength ? "impossible record length"
                                          : "record cut short before the end of the log"));
    }
    if (rec.type == kEntryRecord) {
      AuditEntry e;
      if (!e.ParseFromArray(rec.payload.data(), static_cast<int>(rec.payload.size()))) {
        return absl::DataLossError(absl::StrCat("audit log ", seg.path, " offset ", pos,
                                                ": entry record does not parse"));
      }
      if (e.sequence() != written_sequence_ + 1) {
        return absl::DataLossError(absl::StrCat(
            "audit log ", seg.path, " offset ", pos, ": entry ", e.sequence(),
            " follows entry ", written_sequence_,
            " (entries missing or reordered); move the directory aside and check it with "
            "`cityosctl audit verify`"));
      }
      if (tail_fault->empty() &&
          (EntryHash(e) != e.hash() || e.previous_hash() != last_hash_)) {
        *tail_fault = absl::StrCat(Where(seg.path, pos), ": entry ", e.sequence(),
                                   " does not chain to its predecessor");
      }
      written_sequence_ = e.sequence();
      last_hash_ = e.hash();
      if (unsigned_count_++ == 0) first_unsigned_ = absl::Now();
      EntryMeta meta;
      meta.offset = pos;
      meta.segment = static_cast<uint32_t>(index);
      PublishEntry(meta, e);
    } else if (rec.type == kCheckpointRecord) {
      AuditCheckpoint cp;
      if (!cp.ParseFromArray(rec.payload.data(), static_cast<int>(rec.payload.size()))) {
        return absl::DataLossError(absl::StrCat("audit log ", seg.path, " offset ", pos,
                                                ": checkpoint record does not parse"));
      }
      // Faults before a signed checkpoint are Verify's to report; only the
      // unsigned tail must be sound before the log is extended and signed.
      tail_fault->clear();
      unsigned_count_ = 0;
      checkpoints_.push_back(CheckpointMeta{cp.sequence(), static_cast<uint32_t>(index), pos});
    } else {
      return absl::DataLossError(absl::StrCat("audit log ", seg.path, " offset ", pos,
                                              ": unknown record type ", rec.type));
    }
    pos += rec.size;
  }
  seg.durable_size = pos;
  seg.read_fd = ::open(seg.path.c_str(), O_RDONLY | O_CLOEXEC);
  if (seg.read_fd < 0) return ErrnoStatus("cannot open audit log", seg.path);
  return absl::OkStatus();
}

void AuditLogImpl::PublishEntry(EntryMeta meta, const AuditEntry& e) {
  const uint64_t seq = entries_.size() + 1;
  meta.time = EntryTime(e);
  meta.severity = static_cast<uint8_t>(e.severity());
  meta.principal = principals_.Id(e.principal());
  if (principal_org_.size() < principals_.size()) {  // a new principal
    absl::StatusOr<Principal> parsed = Principal::FromSpiffeId(e.principal());
    principal_org_.push_back(parsed.ok() ? orgs_.Id(parsed->org) : 0);
    by_principal_.emplace_back();
  }
  meta.action = actions_.Id(e.action());
  meta.data_subject = subjects_.Id(e.data_subject());
  if (by_subject_.size() < subjects_.size()) by_subject_.resize(subjects_.size());
  by_principal_[meta.principal].push_back(seq);
  if (meta.data_subject != 0) by_subject_[meta.data_subject].push_back(seq);
  if (!entries_.empty() && meta.time < entries_.back().time) times_sorted_ = false;
  entries_.push_back(meta);
}

void AuditLogImpl::Append(AuditEntry entry) {
  absl::MutexLock l(&mu_);
  while (queue_.size() >= options_.max_queued && !closing_) space_cv_.Wait(&mu_);
  // Read the clock under the lock, so that default times follow the
  // sequence (then a time range is found by binary search).
  if (!entry.has_time()) TimestampToProto(clock_->Now(), entry.mutable_time());
  if (closing_ || !status_.ok()) {
    if (!warned_closed_) {
      warned_closed_ = true;
      LogError("audit", closing_ ? "audit entry appended after Close: dropped"
                                 : "audit log failed: entries are dropped",
               {{"dir", options_.dir}, {"status", status_.ToString()},
                {"action", entry.action()}});
    }
    return;
  }
  entry.set_sequence(next_sequence_++);
  queue_.push_back(std::move(entry));
  if (queue_.size() == 1) {
    first_queued_ = absl::Now();
    writer_cv_.Signal();
  } else if (queue_.size() == kMaxBatch || queue_.size() >= options_.max_queued) {
    writer_cv_.Signal();
  }
}

absl::StatusOr<uint64_t> AuditLogImpl::Flush() {
  absl::MutexLock l(&mu_);
  const uint64_t target = next_sequence_ - 1;
  ++flush_waiters_;
  writer_cv_.Signal();
  while (durable_sequence_ < target && status_.ok() && !writer_exited_) done_cv_.Wait(&mu_);
  --flush_waiters_;
  if (!status_.ok()) return status_;
  return durable_sequence_;
}

void AuditLogImpl::WriterLoop() {
  for (;;) {
    std::vector<AuditEntry> batch;
    bool closing = false;
    {
      absl::MutexLock l(&mu_);
      for (;;) {
        const absl::Time now = absl::Now();
        if (closing_) break;
        if (!queue_.empty() && (flush_waiters_ > 0 || queue_.size() >= kMaxBatch ||
                                queue_.size() >= options_.max_queued ||
                                now >= first_queued_ + options_.flush_interval)) {
          break;
        }
        if (now >= checkpoint_due_) break;
        absl::Time deadline = checkpoint_due_;
        if (!queue_.empty()) deadline = std::min(deadline, first_queued_ + options_.flush_interval);
        writer_cv_.WaitWithDeadline(&mu_, deadline);
      }
      if (queue_.size() > kMaxBatch) {
        batch.assign(std::make_move_iterator(queue_.begin()),
                     std::make_move_iterator(queue_.begin() + kMaxBatch));
        queue_.erase(queue_.begin(), queue_.begin() + kMaxBatch);
        first_queued_ = absl::Now();
      } else {
        batch.swap(queue_);
      }
      closing = closing_ && queue_.empty();
      space_cv_.SignalAll();
      if (!status_.ok()) {
        // A failed log writes nothing more; waiters get the error.
        done_cv_.SignalAll();
        if (closing) {
          writer_exited_ = true;
          return;
        }
        continue;
      }
    }
    absl::Status s = WriteBatch(batch, closing);
    absl::MutexLock l(&mu_);
    if (!s.ok()) {
      LogError("audit", "audit log write failed", {{"status", s.ToString()}});
      status_ = s;
    } else {
      durable_sequence_ = written_sequence_;
    }
    checkpoint_due_ = unsigned_count_ > 0 ? first_unsigned_ + options_.checkpoint_interval
                                          : absl::InfiniteFuture();
    done_cv_.SignalAll();
    if (closing) {
      writer_exited_ = true;
      return;
    }
  }
}

absl::Status AuditLogImpl::OpenNewSegment(uint64_t first_sequence) {
  const std::string path = options_.dir + "/" + SegmentFileName(first_sequence);
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_APPEND | O_CLOEXEC, 0600);
  if (fd < 0) return ErrnoStatus("cannot create audit log", path);
  int rfd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (rfd < 0) {
    absl::Status s = ErrnoStatus("cannot open audit log", path);
    ::close(fd);
    return s;
  }
  SyncDir(options_.dir);
  if (write_fd_ >= 0) ::close(write_fd_);
  write_fd_ = fd;
  write_size_ = 0;
  absl::MutexLock l(&index_mu_);
  segments_.push_back(Segment{path, rfd, 0});
  return absl::OkStatus();
}

void AuditLogImpl::AppendCheckpoint(std::string* buf, std::vector<CheckpointMeta>* cps) {
  AuditCheckpoint cp;
  cp.set_sequence(written_sequence_);
  cp.set_hash(last_hash_);
  TimestampToProto(clock_->Now(), cp.mutable_time());
  cp.set_signature(key_->Sign(CheckpointMessage(cp.sequence(), cp.hash())));
  cp.set_key_id(key_->key_id());
  cp.ByteSizeLong();
  uint32_t segment;
  {
    absl::MutexLock l(&index_mu_);
    segment = static_cast<uint32_t>(segments_.size() - 1);
  }
  cps->push_back(CheckpointMeta{cp.sequence(), segment, write_size_ + buf->size()});
  AppendRecord(kCheckpointRecord, SerializeDeterministic(cp), buf);
  unsigned_count_ = 0;
  first_unsigned_ = absl::InfiniteFuture();
}

absl::Status AuditLogImpl::WriteBatch(std::vector<AuditEntry>& batch, bool closing) {
  std::string buf;
  std::vector<EntryMeta> metas;  // where each entry of `batch` went
  std::vector<CheckpointMeta> cps;
  metas.reserve(batch.size());
  std::string segment_path;
  uint32_t segment = 0;
  auto current_segment = [&] {
    absl::MutexLock l(&index_mu_);
    segment = static_cast<uint32_t>(segments_.size() - 1);
    segment_path = segments_.back().path;
  };
  if (write_fd_ >= 0) current_segment();
  for (AuditEntry& e : batch) {
    if (write_fd_ < 0 ||
        (write_size_ + buf.size() >= options_.segment_bytes && write_size_ + buf.size() > 0)) {
      if (write_fd_ >= 0 && !buf.empty()) {
        // Finish the old segment before the new one exists.
        CITYOS_RETURN_IF_ERROR(WriteAll(write_fd_, buf, segment_path));
        if (::fdatasync(write_fd_) != 0) return ErrnoStatus("cannot sync audit log", segment_path);
        write_size_ += buf.size();
        buf.clear();
        absl::MutexLock l(&index_mu_);
        segments_.back().durable_size = write_size_;
      }
      CITYOS_RETURN_IF_ERROR(OpenNewSegment(e.sequence()));
      current_segment();
    }
    e.set_node(options_.node);
    e.set_previous_hash(last_hash_);
    e.clear_hash();
    e.set_hash(HashOfUnhashedEntry(e));
    e.ByteSizeLong();
    last_hash_ = e.hash();
    written_sequence_ = e.sequence();
    EntryMeta meta;
    meta.offset = write_size_ + buf.size();
    meta.segment = segment;
    metas.push_back(meta);
    AppendRecord(kEntryRecord, SerializeDeterministic(e), &buf);
    if (unsigned_count_++ == 0) first_unsigned_ = absl::Now();
    if (unsigned_count_ >= options_.checkpoint_every) AppendCheckpoint(&buf, &cps);
  }
  if (unsigned_count_ > 0 && (closing || absl::Now() >= first_unsigned_ +
                                                            options_.checkpoint_interval)) {
    AppendCheckpoint(&buf, &cps);
  }
  if (buf.empty()) return absl::OkStatus();
  CITYOS_RETURN_IF_ERROR(WriteAll(write_fd_, buf, segment_path));
  if (::fdatasync(write_fd_) != 0) return ErrnoStatus("cannot sync audit log", segment_path);
  write_size_ += buf.size();
  absl::MutexLock l(&index_mu_);
  segments_.back().durable_size = write_size_;
  for (size_t i = 0; i < batch.size(); ++i) PublishEntry(metas[i], batch[i]);
  checkpoints_.insert(checkpoints_.end(), cps.begin(), cps.end());
  return absl::OkStatus();
}

absl::Status AuditLogImpl::Close() {
  absl::MutexLock cl(&close_mu_);
  if (!closed_) {
    closed_ = true;
    {
      absl::MutexLock l(&mu_);
      closing_ = true;
      writer_cv_.Signal();
      space_cv_.SignalAll();
    }
    if (writer_.joinable()) writer_.join();
    if (write_fd_ >= 0) {
      ::close(write_fd_);
      write_fd_ = -1;
    }
  }
  absl::MutexLock l(&mu_);
  return status_;
}

absl::StatusOr<std::string> AuditLogImpl::ReadRecord(uint32_t segment, uint64_t offset,
                                                     uint8_t type) const {
  const Segment& seg = segments_[segment];
  CITYOS_ASSIGN_OR_RETURN(std::string header,
                          PreadAll(seg.read_fd, offset, kRecordHeaderSize, seg.path));
  if (header.size() < kRecordHeaderSize) {
    return absl::DataLossError(absl::StrCat("audit log ", seg.path, " offset ", offset,
                                            ": record cut short"));
  }
  const auto* u = reinterpret_cast<const unsigned char*>(header.data());
  const uint32_t len = static_cast<uint32_t>(u[0]) | static_cast<uint32_t>(u[1]) << 8 |
                       static_cast<uint32_t>(u[2]) << 16 | static_cast<uint32_t>(u[3]) << 24;
  if (len > kMaxRecordPayload) {
    return absl::DataLossError(absl::StrCat("audit log ", seg.path, " offset ", offset,
                                            ": impossible record length"));
  }
  CITYOS_ASSIGN_OR_RETURN(std::string data,
                          PreadAll(seg.read_fd, offset, kRecordHeaderSize + len, seg.path));
  Record rec;
  if (DecodeRecord(data, 0, &rec) != DecodeResult::kOk || rec.type != type) {
    return absl::DataLossError(absl::StrCat("audit log ", seg.path, " offset ", offset,
                                            ": record damaged since it was written"));
  }
  return std::string(rec.payload);
}

absl::StatusOr<AuditEntry> AuditLogImpl::ReadEntry(uint64_t sequence) const {
  const EntryMeta& m = entries_[sequence - 1];
  CITYOS_ASSIGN_OR_RETURN(std::string payload, ReadRecord(m.segment, m.offset, kEntryRecord));
  AuditEntry e;
  if (!e.ParseFromString(payload)) {
    return absl::DataLossError(absl::StrCat("audit log ", segments_[m.segment].path,
                                            " offset ", m.offset, ": entry does not parse"));
  }
  return e;
}

absl::StatusOr<AuditCheckpoint> AuditLogImpl::ReadCheckpoint(const CheckpointMeta& c) const {
  CITYOS_ASSIGN_OR_RETURN(std::string payload,
                          ReadRecord(c.segment, c.offset, kCheckpointRecord));
  AuditCheckpoint cp;
  if (!cp.ParseFromString(payload)) {
    return absl::DataLossError(absl::StrCat("audit log ", segments_[c.segment].path,
                                            " offset ", c.offset,
                                            ": checkpoint does not parse"));
  }
  return cp;
}

absl::StatusOr<AuditPage> AuditLogImpl::Query(const AuditQuery& q) {
  absl::ReaderMutexLock l(&index_mu_);
  const size_t limit = q.limit == 0 ? 100 : q.limit;
  // Candidates: a posting list when the filter names a principal or data
  // subject, otherwise a range of sequences.
  const std::vector<uint64_t>* postings = nullptr;
  if (!q.principal.empty()) {
    int64_t id = principals_.Find(q.principal);
    if (id < 0) return AuditPage{};
    postings = &by_principal_[static_cast<size_t>(id)];
  }
  int64_t subject_id = -1;
  if (!q.data_subject.empty()) {
    subject_id = subjects_.Find(q.data_subject);
    if (subject_id < 0) return AuditPage{};
    const auto* s = &by_subject_[static_cast<size_t>(subject_id)];
    if (postings == nullptr || s->size() < postings->size()) postings = s;
  }
  int64_t principal_id = q.principal.empty() ? -1 : principals_.Find(q.principal);
  int64_t action_id = -1;
  if (!q.action.empty()) {
    action_id = actions_.Find(q.action);
    if (action_id < 0) return AuditPage{};
  }
  int64_t org_id = -1;
  if (!q.principal_org.empty()) {
    org_id = orgs_.Find(q.principal_org);
    if (org_id < 0 || q.principal_org.empty()) return AuditPage{};
  }
  auto matches = [&](uint64_t seq) {
    const EntryMeta& m = entries_[seq - 1];
    return (principal_id < 0 || m.principal == principal_id) &&
           (subject_id < 0 || m.data_subject == subject_id) &&
           (action_id < 0 || m.action == action_id) &&
           (org_id < 0 || principal_org_[m.principal] == org_id) &&
           m.severity >= static_cast<uint8_t>(q.min_severity) && m.time >= q.from &&
           m.time < q.to;
  };
  std::vector<uint64_t> hits;
  bool more = false;
  auto consider = [&](uint64_t seq) {
    if (!matches(seq)) return true;
    if (hits.size() == limit) {
      more = true;
      return false;
    }
    hits.push_back(seq);
    return true;
  };
  if (postings != nullptr) {
    for (auto it = std::upper_bound(postings->begin(), postings->end(), q.after_sequence);
         it != postings->end() && consider(*it); ++it) {
    }
  } else {
    uint64_t lo = q.after_sequence + 1, hi = entries_.size() + 1;  // [lo, hi)
    if (times_sorted_) {
      auto by_time = [](const EntryMeta& m, absl::Time t) { return m.time < t; };
      lo = std::max<uint64_t>(
          lo, std::lower_bound(entries_.begin(), entries_.end(), q.from, by_time) -
                  entries_.begin() + 1);
      hi = std::lower_bound(entries_.begin(), entries_.end(), q.to, by_time) -
           entries_.begin() + 1;
    }
    for (uint64_t seq = lo; seq < hi && consider(seq); ++seq) {
    }
  }
  AuditPage page;
  for (uint64_t seq : hits) {
    CITYOS_ASSIGN_OR_RETURN(AuditEntry e, ReadEntry(seq));
    page.entries.push_back(std::move(e));
  }
  if (!hits.empty()) {
    auto by_seq = [](const CheckpointMeta& c, uint64_t s) { return c.sequence < s; };
    auto first = std::lower_bound(checkpoints_.begin(), checkpoints_.end(), hits.front(), by_seq);
    auto last = std::lower_bound(checkpoints_.begin(), checkpoints_.end(), hits.back(), by_seq);
    if (last != checkpoints_.end()) ++last;
    for (auto it = first; it < last; ++it) {
      CITYOS_ASSIGN_OR_RETURN(AuditCheckpoint cp, ReadCheckpoint(*it));
      page.checkpoints.push_back(std::move(cp));
    }
  }
  if (more) page.next_after_sequence = hits.back();
  return page;
}

// Feeds records of data[pos...] to the verifier; false when it is done.
// `base` is the file offset of data[0] (for messages).
bool FeedRecords(std::string_view data, uint64_t base, const std::string& path, bool last_file,
                 ChainVerifier* v) {
  const std::string file = std::filesystem::path(path).filename().string();
  size_t pos = 0;
  while (pos < data.size() && !v->done()) {
    Record rec;
    DecodeResult r = DecodeRecord(data, pos, &rec);
    const RecordPlace where{file, base + pos};
    if (r != DecodeResult::kOk) {
      if (last_file && IsTornTail(data, pos, r)) {
        v->Note(absl::StrCat("ignored an incomplete last record at ", PlaceString(where),
                             " (an interrupted write)"));
        return false;
      }
      v->OnUnreadable(where, r == DecodeResult::kBadCrc
                                 ? "record checksum (CRC-32C) mismatch: the file is damaged "
                                   "(or was edited without recomputing the checksum); nothing "
                                   "after it can be read"
                             : r == DecodeResult::kBadLength
                                 ? "impossible record length: the file is damaged"
                                 : "record cut short in the middle of the log");
      return false;
    }
    if (rec.type == kEntryRecord) {
      AuditEntry e;
      if (!e.ParseFromArray(rec.payload.data(), static_cast<int>(rec.payload.size()))) {
        v->OnUnreadable(where, "entry record does not parse");
        return false;
      }
      if (!v->OnEntry(e, where)) return false;
    } else if (rec.type == kCheckpointRecord) {
      AuditCheckpoint cp;
      if (!cp.ParseFromArray(rec.payload.data(), static_cast<int>(rec.payload.size()))) {
        v->OnUnreadable(where, "checkpoint record does not parse");
        return false;
      }
      if (!v->OnCheckpoint(cp, where)) return false;
    } else {
      v->OnUnreadable(where, absl::StrCat("unknown record type ", rec.type));
      return false;
    }
    pos += rec.size;
  }
  return !v->done();
}

absl::StatusOr<VerifyAuditResponse> AuditLogImpl::Verify(uint64_t from, uint64_t to) {
  struct Part {
    std::string path;
    int fd;
    uint64_t start, end;
  };
  std::vector<Part> parts;
  {
    absl::ReaderMutexLock l(&index_mu_);
    const uint64_t last = entries_.size();
    if (from == 0) from = 1;
    if (to == 0 || to > last) to = last;
    if (last == 0) {
      VerifyAuditResponse empty;
      empty.set_ok(true);
      empty.set_message("the audit log is empty");
      return empty;
    }
    if (from > to) {
      return absl::InvalidArgumentError(absl::StrCat("audit verify: empty range ", from, "..",
                                                     to, " (the newest entry is ", last, ")"));
    }
    // Start at the entry before `from`: it anchors the chain link.
    const EntryMeta& anchor = entries_[from > 1 ? from - 2 : 0];
    for (size_t i = anchor.segment; i < segments_.size(); ++i) {
      parts.push_back(Part{segments_[i].path, segments_[i].read_fd,
                           i == anchor.segment ? anchor.offset : 0, segments_[i].durable_size});
    }
  }
  ChainVerifier v(public_key_.get(), key_->key_id(), from, to);
  for (const Part& p : parts) {
    CITYOS_ASSIGN_OR_RETURN(std::string data, PreadAll(p.fd, p.start, p.end - p.start, p.path));
    if (!FeedRecords(data, p.start, p.path, false, &v)) break;
  }
  return v.Finish();
}

}  // namespace
}  // namespace audit_internal

absl::StatusOr<std::unique_ptr<AuditLog>> AuditLog::Open(AuditOptions options) {
  auto log = std::make_unique<audit_internal::AuditLogImpl>(std::move(options));
  CITYOS_RETURN_IF_ERROR(log->Init());
  return std::unique_ptr<AuditLog>(std::move(log));
}

absl::StatusOr<exchange::v1::VerifyAuditResponse> VerifyAuditDir(
    std::string_view dir, std::string_view public_key_pem) {
  using namespace audit_internal;  // NOLINT: local to this function
  absl::StatusOr<UniquePkey> key = ParseEd25519PublicKey(public_key_pem);
  if (!key.ok()) return Annotate(key.status(), "audit verify: public key");
  std::error_code ec;
  if (!std::filesystem::is_directory(std::string(dir), ec)) {
    return absl::InvalidArgumentError(
        absl::StrCat("audit verify: ", AV(dir), " is not a readable directory"));
  }
  CITYOS_ASSIGN_OR_RETURN(std::vector<std::string> paths, ListSegments(std::string(dir)));
  ChainVerifier v(key->get(), Sha256Hex(RawPublicKey(key->get())), 1, 0);
  for (size_t i = 0; i < paths.size(); ++i) {
    absl::StatusOr<std::string> data = ReadFileToString(paths[i]);
    if (!data.ok()) return absl::InvalidArgumentError(data.status().message());
    if (!FeedRecords(*data, 0, paths[i], i + 1 == paths.size(), &v)) break;
  }
  return v.Finish();
}

}  // namespace cityos
