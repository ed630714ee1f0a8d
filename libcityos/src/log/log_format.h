// File: log/log_format.h
//
// The on-disk format of the durable segmented log (docs/bus-log-format.md is
// the normative description; keep the two in step): constants, little-endian
// coding, segment / index file names and headers, record framing, and a
// buffered scanner that walks the records of one segment file.
//
//   std::string buf;
//   AppendRecord(&buf, /*sequence=*/7, time_ns, "payload",
//                /*batch_continues=*/false);
//   SegmentScanner scanner(fd, kSegmentHeaderSize, file_size);
//   RecordView rec;
//   while (scanner.Next(&rec) == SegmentScanner::kRecord) Use(rec);
//
// Internal to libcityos (not a public header).
#ifndef CITYOS_LOG_LOG_FORMAT_H_
#define CITYOS_LOG_LOG_FORMAT_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace cityos::log_internal {

// Segment file header: magic "CTYOSLOG", u32 version, u32 header size,
// u64 first sequence, u32 reserved (0), u32 masked CRC32C of bytes [0, 28).
inline constexpr char kSegmentMagic[8] = {'C', 'T', 'Y', 'O',
                                          'S', 'L', 'O', 'G'};
inline constexpr char kIndexMagic[8] = {'C', 'T', 'Y', 'O', 'S', 'I', 'D', 'X'};
inline constexpr uint32_t kFormatVersion = 1;
inline constexpr size_t kSegmentHeaderSize = 32;

// Record: u32 length word | u32 masked CRC32C | u64 sequence |
// i64 publish time (unix ns) | payload. The low 30 bits of the length word
// are the number of bytes after the CRC (16 + payload size); bit 31 is set on
// every record of a batch but its last; bit 30 is reserved (0).
inline constexpr size_t kRecordPrefixSize = 8;  // length word + CRC
inline constexpr size_t kRecordFixedBody = 16;  // sequence + time
inline constexpr size_t kRecordOverhead = kRecordPrefixSize + kRecordFixedBody;
inline constexpr uint32_t kBatchContinuesBit = 0x80000000u;
inline constexpr uint32_t kReservedBit = 0x40000000u;
inline constexpr uint32_t kLengthMask = 0x3fffffffu;
// Largest payload the format admits (readers reject longer lengths).
inline constexpr size_t kMaxPayloadBytes = size_t{64} << 20;

// Index file: 56-byte header, `entry_count` 24-byte entries, u32 masked
// CRC32C of everything before it.
inline constexpr size_t kIndexHeaderSize = 56;
inline constexpr size_t kIndexEntrySize = 24;

// ---- little-endian fixed-width coding
inline void EncodeFixed32(char* dst, uint32_t v) {
  for (int i = 0; i < 4; ++i) dst[i] = static_cast<char>(v >> (8 * i));
}
inline void EncodeFixed64(char* dst, uint64_t v) {
  for (int i = 0; i < 8; ++i) dst[i] = static_cast<char>(v >> (8 * i));
}
inline uint32_t DecodeFixed32(const char* p) {
  const auto* u = reinterpret_cast<const unsigned char*>(p);
  uint32_t v = 0;
  for (int i = 3; i >= 0; --i) v = (v << 8) | u[i];
  return v;
}
inline uint64_t DecodeFixed64(const char* p) {
  const auto* u = reinterpret_cast<const unsigned char*>(p);
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | u[i];
  return v;
}

// ---- file names: 20 zero-padded decimal digits of the first sequence.
enum class FileKind { kSegment, kIndex, kTemp, kOther };
std::string SegmentFileName(uint64_t first_sequence);  // "…0001.log"
std::string IndexFileName(uint64_t first_sequence);    // "…0001.idx"
// Classifies a directory entry; for kSegment / kIndex sets *first_sequence.
// Temp files are any name ending in ".tmp".
FileKind ParseFileName(std::string_view name, uint64_t* first_sequence);

// ---- segment header
void EncodeSegmentHeader(uint64_t first_sequence, char dst[kSegmentHeaderSize]);
// Returns the first sequence, or an error text (InvalidArgument) saying what
// is wrong with the header. REQUIRES: n bytes readable at p.
absl::StatusOr<uint64_t> DecodeSegmentHeader(const char* p, size_t n);

// ---- records
// One decoded record. `payload` points into the buffer that was decoded.
struct RecordView {
  uint64_t sequence = 0;
  int64_t time_ns = 0;
  std::string_view payload;
  bool batch_continues = false;
  size_t encoded_size = 0;  // bytes the record occupies on disk
};

// Appends one framed record to *dst.
// REQUIRES: payload.size() <= kMaxPayloadBytes.
void AppendRecord(std::string* dst, uint64_t sequence, int64_t time_ns,
                  std::string_view payload, bool batch_continues);

enum class DecodeResult {
  kOk,         // *rec filled
  kTruncated,  // fewer than the record's bytes are available
  kCorrupt,    // bad length word or CRC mismatch; *why says which
};
// Decodes the record at p[0, avail). Does not check the sequence number.
DecodeResult DecodeRecord(const char* p, size_t avail, RecordView* rec,
                          const char** why);

// Reads the records of one segment file sequentially through a buffer
// (pread, so the fd may be shared). Not thread-safe.
class SegmentScanner {
 public:
  enum Result {
    kRecord,     // *rec is valid until the next call
    kEnd,        // offset() == limit
    kTruncated,  // a record starting at record_offset() runs past the limit
    kCorrupt,    // bad bytes at record_offset(); error() says what
    kIoError,    // pread failed; io_errno() is the errno
  };
  // Scans [offset, limit) of `fd` (not owned; must stay open while scanning).
  SegmentScanner(int fd, uint64_t offset, uint64_t limit,
                 size_t chunk_bytes = 256 << 10);
  SegmentScanner(const SegmentScanner&) = delete;
  SegmentScanner& operator=(const SegmentScanner&) = delete;

  Result Next(RecordView* rec);
  // Restarts at [offset, limit) of `fd`, keeping the buffer's memory.
  void Reset(int fd, uint64_t offset, uint64_t limit);
  // Raises the limit (a growing active segment). REQUIRES: limit >= offset().
  void SetLimit(uint64_t limit) { limit_ = limit; }
  uint64_t limit() const { return limit_; }
  // File offset of the next record to decode.
  uint64_t offset() const { return offset_; }
  // File offset of the record last returned, or of the bad bytes.
  uint64_t record_offset() const { return record_offset_; }
  const char* error() const { return error_; }
  int io_errno() const { return io_errno_; }

 private:
  // Makes [offset_, offset_ + n) available in buf_; false on pread error.
  bool Fill(size_t n);

  int fd_;
  uint64_t offset_;
  uint64_t limit_;
  uint64_t record_offset_;
  size_t chunk_bytes_;
  std::string buf_;
  uint64_t buf_file_offset_ = 0;  // file offset of buf_[0]
  size_t buf_len_ = 0;            // valid bytes in buf_
  const char* error_ = "";
  int io_errno_ = 0;
};

// Searches [from, limit) of a file for any offset where a record with a
// valid CRC, a legal length and a sequence in (after_sequence,
// after_sequence + limit - from] starts; used to tell a torn tail (nothing
// valid follows) from corruption in the middle. Counts every such record
// found, skipping over each one, into *count if not null. Returns the offset
// of the first one, or -1 if none. IO errors are returned.
absl::StatusOr<int64_t> FindValidRecordAfter(int fd, uint64_t from,
                                             uint64_t limit,
                                             uint64_t after_sequence,
                                             uint64_t* count);

// ---- sparse index
struct IndexEntry {
  uint64_t sequence;
  int64_t time_ns;
  uint64_t offset;
};

// What an index file records about its (sealed) segment.
struct SegmentSummary {
  uint64_t first_sequence = 0;
  uint64_t last_sequence = 0;  // first_sequence - 1 when empty
  uint64_t size = 0;           // segment file size in bytes
  int64_t first_time_ns = 0;
  int64_t last_time_ns = 0;
  std::vector<IndexEntry> index;
};
std::string EncodeIndexFile(const SegmentSummary& summary);
// InvalidArgument with the reason if the contents are not a valid index.
absl::StatusOr<SegmentSummary> DecodeIndexFile(std::string_view contents);

}  // namespace cityos::log_internal

#endif  // CITYOS_LOG_LOG_FORMAT_H_
