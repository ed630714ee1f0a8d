#include "log/log_format.h"

#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/ascii.h"
#include "absl/strings/str_format.h"
#include "log/crc32c.h"

namespace cityos::log_internal {
namespace {

constexpr size_t kNameDigits = 20;

bool ParseDigits(std::string_view s, uint64_t* v) {
  if (s.size() != kNameDigits) return false;
  uint64_t r = 0;
  for (char c : s) {
    if (!absl::ascii_isdigit(static_cast<unsigned char>(c))) return false;
    const uint64_t d = static_cast<uint64_t>(c - '0');
    if (r > (UINT64_MAX - d) / 10) return false;
    r = r * 10 + d;
  }
  *v = r;
  return true;
}

// CRC of a record's body (sequence, time, payload) as stored: masked.
uint32_t RecordCrc(const char* body_fixed, std::string_view payload) {
  uint32_t crc = crc32c::Value(body_fixed, kRecordFixedBody);
  crc = crc32c::Extend(crc, payload.data(), payload.size());
  return crc32c::Mask(crc);
}

}  // namespace

std::string SegmentFileName(uint64_t first_sequence) {
  return absl::StrFormat("%020u.log", first_sequence);
}

std::string IndexFileName(uint64_t first_sequence) {
  return absl::StrFormat("%020u.idx", first_sequence);
}

FileKind ParseFileName(std::string_view name, uint64_t* first_sequence) {
  if (name.ends_with(".tmp")) return FileKind::kTemp;
  if (name.size() != kNameDigits + 4) return FileKind::kOther;
  const std::string_view digits = name.substr(0, kNameDigits);
  const std::string_view ext = name.substr(kNameDigits);
  FileKind kind;
  if (ext == ".log") {
    kind = FileKind::kSegment;
  } else if (ext == ".idx") {
    kind = FileKind::kIndex;
  } else {
    return FileKind::kOther;
  }
  return ParseDigits(digits, first_sequence) ? kind : FileKind::kOther;
}

void EncodeSegmentHeader(uint64_t first_sequence,
                         char dst[kSegmentHeaderSize]) {
  std::memcpy(dst, kSegmentMagic, 8);
  EncodeFixed32(dst + 8, kFormatVersion);
  EncodeFixed32(dst + 12, kSegmentHeaderSize);
  EncodeFixed64(dst + 16, first_sequence);
  EncodeFixed32(dst + 24, 0);
  EncodeFixed32(dst + 28, crc32c::Mask(crc32c::Value(dst, 28)));
}

absl::StatusOr<uint64_t> DecodeSegmentHeader(const char* p, size_t n) {
  if (n < kSegmentHeaderSize) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "segment header truncated (%u of %u bytes)", n, kSegmentHeaderSize));
  }
  if (std::memcmp(p, kSegmentMagic, 8) != 0) {
    return absl::InvalidArgumentError("bad segment magic");
  }
  if (crc32c::Unmask(DecodeFixed32(p + 28)) != crc32c::Value(p, 28)) {
    return absl::InvalidArgumentError("segment header CRC mismatch");
  }
  const uint32_t version = DecodeFixed32(p + 8);
  if (version != kFormatVersion) {
    return absl::InvalidArgumentError(
        absl::StrFormat("unsupported segment format version %u", version));
  }
  if (DecodeFixed32(p + 12) != kSegmentHeaderSize) {
    return absl::InvalidArgumentError("unexpected segment header size");
  }
  return DecodeFixed64(p + 16);
}

void AppendRecord(std::string* dst, uint64_t sequence, int64_t time_ns,
                  std::string_view payload, bool batch_continues) {
  const size_t start = dst->size();
  dst->resize(start + kRecordOverhead);
  char* h = dst->data() + start;
  uint32_t length = static_cast<uint32_t>(kRecordFixedBody + payload.size());
  if (batch_continues) length |= kBatchContinuesBit;
  EncodeFixed32(h, length);
  EncodeFixed64(h + 8, sequence);
  EncodeFixed64(h + 16, static_cast<uint64_t>(time_ns));
  EncodeFixed32(h + 4, RecordCrc(h + 8, payload));
  dst->append(payload.data(), payload.size());
}

DecodeResult DecodeRecord(const char* p, size_t avail, RecordView* rec,
                          const char** why) {
  if (avail < kRecordPrefixSize) return DecodeResult::kTruncated;
  const uint32_t word = DecodeFixed32(p);
  if ((word & kReservedBit) != 0) {
    *why = "reserved bit set in record length word";
    return DecodeResult::kCorrupt;
  }
  const size_t length = word & kLengthMask;
  if (length < kRecordFixedBody ||
      length > kRecordFixedBody + kMaxPayloadBytes) {
    *why = "bad record length";
    return DecodeResult::kCorrupt;
  }
  if (avail < kRecordPrefixSize + length) return DecodeResult::kTruncated;
  const char* body = p + kRecordPrefixSize;
  const std::string_view payload(body + kRecordFixedBody,
                                 length - kRecordFixedBody);
  if (DecodeFixed32(p + 4) != RecordCrc(body, payload)) {
    *why = "record CRC mismatch";
    return DecodeResult::kCorrupt;
  }
  rec->sequence = DecodeFixed64(body);
  rec->time_ns = static_cast<int64_t>(DecodeFixed64(body + 8));
  rec->payload = payload;
  rec->batch_continues = (word & kBatchContinuesBit) != 0;
  rec->encoded_size = kRecordPrefixSize + length;
  return DecodeResult::kOk;
}

SegmentScanner::SegmentScanner(int fd, uint64_t offset, uint64_t limit,
                               size_t chunk_bytes)
    : fd_(fd),
      offset_(offset),
      limit_(limit),
      record_offset_(offset),
      chunk_bytes_(chunk_bytes) {}

void SegmentScanner::Reset(int fd, uint64_t offset, uint64_t limit) {
  fd_ = fd;
  offset_ = offset;
  limit_ = limit;
  record_offset_ = offset;
  buf_file_offset_ = 0;
  buf_len_ = 0;
  error_ = "";
  io_errno_ = 0;
}

bool SegmentScanner::Fill(size_t n) {
  if (offset_ >= buf_file_offset_ &&
      offset_ + n <= buf_file_offset_ + buf_len_) {
    return true;
  }
  // Reload from offset_: read at least n bytes, up to a chunk, within limit.
  const uint64_t want =
      std::min<uint64_t>(std::max(n, chunk_bytes_), limit_ - offset_);
  if (buf_.size() < want) buf_.resize(want);
  size_t got = 0;
  while (got < want) {
    const ssize_t r = ::pread(fd_, buf_.data() + got, want - got,
                              static_cast<off_t>(offset_ + got));
    if (r < 0) {
      if (errno == EINTR) continue;
      io_errno_ = errno;
      buf_len_ = 0;
      return false;
    }
    if (r == 0) break;  // file shorter than limit: treated as truncation
    got += static_cast<size_t>(r);
  }
  buf_file_offset_ = offset_;
  buf_len_ = got;
  return true;
}

SegmentScanner::Result SegmentScanner::Next(RecordView* rec) {
  record_offset_ = offset_;
  if (offset_ >= limit_) return kEnd;
  const uint64_t remaining = limit_ - offset_;
  if (!Fill(std::min<uint64_t>(remaining, kRecordOverhead))) return kIoError;
  size_t avail = buf_file_offset_ + buf_len_ - offset_;
  const char* p = buf_.data() + (offset_ - buf_file_offset_);
  DecodeResult r = DecodeRecord(p, avail, rec, &error_);
  if (r == DecodeResult::kTruncated && avail >= kRecordPrefixSize) {
    // The length word is plausible; load the whole record if the limit
    // allows it.
    const size_t need = kRecordPrefixSize + (DecodeFixed32(p) & kLengthMask);
    if (need <= remaining && need > avail) {
      if (!Fill(need)) return kIoError;
      avail = buf_file_offset_ + buf_len_ - offset_;
      p = buf_.data() + (offset_ - buf_file_offset_);
      r = DecodeRecord(p, avail, rec, &error_);
    }
  }
  switch (r) {
    case DecodeResult::kOk:
      offset_ += rec->encoded_size;
      return kRecord;
    case DecodeResult::kTruncated:
      error_ = "record truncated";
      return kTruncated;
    case DecodeResult::kCorrupt:
      return kCorrupt;
  }
  return kCorrupt;
}

absl::StatusOr<int64_t> FindValidRecordAfter(int fd, uint64_t from,
                                             uint64_t limit,
                                             uint64_t after_sequence,
                                             uint64_t* count) {
  if (count != nullptr) *count = 0;
  if (from >= limit) return -1;
  std::string buf(limit - from, '\0');
  size_t got = 0;
  while (got < buf.size()) {
    const ssize_t r = ::pread(fd, buf.data() + got, buf.size() - got,
                              static_cast<off_t>(from + got));
    if (r < 0) {
      if (errno == EINTR) continue;
      return absl::InternalError(
          absl::StrFormat("pread: %s", std::strerror(errno)));
    }
    if (r == 0) break;
    got += static_cast<size_t>(r);
  }
  const uint64_t max_sequence = after_sequence + (limit - from);
  int64_t first = -1;
  size_t i = 0;
  while (i + kRecordOverhead <= got) {
    const char* p = buf.data() + i;
    const uint64_t seq = DecodeFixed64(p + kRecordPrefixSize);
    RecordView rec;
    const char* why = "";
    if (seq > after_sequence && seq <= max_sequence &&
        DecodeRecord(p, got - i, &rec, &why) == DecodeResult::kOk) {
      if (first < 0) first = static_cast<int64_t>(from + i);
      if (count == nullptr) break;
      ++*count;
      i += rec.encoded_size;
    } else {
      ++i;
    }
  }
  return first;
}

std::string EncodeIndexFile(const SegmentSummary& s) {
  std::string out(kIndexHeaderSize + s.index.size() * kIndexEntrySize + 4,
                  '\0');
  char* p = out.data();
  std::memcpy(p, kIndexMagic, 8);
  EncodeFixed32(p + 8, kFormatVersion);
  EncodeFixed32(p + 12, static_cast<uint32_t>(s.index.size()));
  EncodeFixed64(p + 16, s.first_sequence);
  EncodeFixed64(p + 24, s.last_sequence);
  EncodeFixed64(p + 32, s.size);
  EncodeFixed64(p + 40, static_cast<uint64_t>(s.first_time_ns));
  EncodeFixed64(p + 48, static_cast<uint64_t>(s.last_time_ns));
  char* e = p + kIndexHeaderSize;
  for (const IndexEntry& entry : s.index) {
    EncodeFixed64(e, entry.sequence);
    EncodeFixed64(e + 8, static_cast<uint64_t>(entry.time_ns));
    EncodeFixed64(e + 16, entry.offset);
    e += kIndexEntrySize;
  }
  EncodeFixed32(e, crc32c::Mask(crc32c::Value(p, e - p)));
  return out;
}

absl::StatusOr<SegmentSummary> DecodeIndexFile(std::string_view c) {
  if (c.size() < kIndexHeaderSize + 4) {
    return absl::InvalidArgumentError("index file truncated");
  }
  const char* p = c.data();
  if (std::memcmp(p, kIndexMagic, 8) != 0) {
    return absl::InvalidArgumentError("bad index magic");
  }
  const uint32_t n = DecodeFixed32(p + 12);
  if (c.size() != kIndexHeaderSize + uint64_t{n} * kIndexEntrySize + 4) {
    return absl::InvalidArgumentError("index file size mismatch");
  }
  const size_t crc_at = c.size() - 4;
  if (crc32c::Unmask(DecodeFixed32(p + crc_at)) != crc32c::Value(p, crc_at)) {
    return absl::InvalidArgumentError("index CRC mismatch");
  }
  if (DecodeFixed32(p + 8) != kFormatVersion) {
    return absl::InvalidArgumentError("unsupported index format version");
  }
  SegmentSummary s;
  s.first_sequence = DecodeFixed64(p + 16);
  s.last_sequence = DecodeFixed64(p + 24);
  s.size = DecodeFixed64(p + 32);
  s.first_time_ns = static_cast<int64_t>(DecodeFixed64(p + 40));
  s.last_time_ns = static_cast<int64_t>(DecodeFixed64(p + 48));
  s.index.reserve(n);
  const char* e = p + kIndexHeaderSize;
  for (uint32_t i = 0; i < n; ++i, e += kIndexEntrySize) {
    s.index.push_back({DecodeFixed64(e),
                       static_cast<int64_t>(DecodeFixed64(e + 8)),
                       DecodeFixed64(e + 16)});
  }
  return s;
}

}  // namespace cityos::log_internal
