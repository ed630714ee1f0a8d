// Internal: the on-disk format of the audit log (docs/audit-format.md) and
// the chain verifier shared by AuditLog::Verify and VerifyAuditDir.
#ifndef CITYOS_SRC_AUDIT_AUDIT_FORMAT_H_
#define CITYOS_SRC_AUDIT_AUDIT_FORMAT_H_

#include <openssl/evp.h>

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "cityos/exchange/v1/exchange.pb.h"

namespace cityos::audit_internal {

// Record types.
inline constexpr uint8_t kEntryRecord = 1;
inline constexpr uint8_t kCheckpointRecord = 2;
// [u32 length][u32 masked crc32c][u8 type]
inline constexpr size_t kRecordHeaderSize = 9;
// Larger lengths are corruption, never a torn write.
inline constexpr uint32_t kMaxRecordPayload = 16u << 20;
inline constexpr size_t kHashSize = 32;

// "audit-<first sequence, 20 digits>.log".
std::string SegmentFileName(uint64_t first_sequence);
// The first sequence of a segment file name, or false if it is not one.
bool ParseSegmentFileName(std::string_view name, uint64_t* first_sequence);
// Segment files of `dir` sorted by first sequence (full paths).
absl::StatusOr<std::vector<std::string>> ListSegments(const std::string& dir);

// Appends one record to `out`.
void AppendRecord(uint8_t type, std::string_view payload, std::string* out);

enum class DecodeResult {
  kOk,
  kTruncated,  // ends before the header or payload is complete
  kBadLength,  // length above kMaxRecordPayload
  kBadCrc,     // checksum mismatch
};
struct Record {
  uint8_t type = 0;
  std::string_view payload;
  size_t size = 0;  // header + payload
};
// Decodes the record at data[pos...].
DecodeResult DecodeRecord(std::string_view data, size_t pos, Record* out);
// True when data[pos...] can be cut as the remains of an interrupted write:
// an incomplete record, a bad record that is the last one, or zeros to the end.
bool IsTornTail(std::string_view data, size_t pos, DecodeResult why);

// Deterministic protobuf serialization.
std::string SerializeDeterministic(const google::protobuf::MessageLite& m);
// SHA-256(previous_hash || deterministic serialization of `e` with hash
// cleared), 32 raw bytes.
std::string EntryHash(const exchange::v1::AuditEntry& e);
// The same without a copy. REQUIRES: e.hash() is empty.
std::string HashOfUnhashedEntry(const exchange::v1::AuditEntry& e);
// The signed bytes of a checkpoint: 8-byte big-endian sequence || hash.
std::string CheckpointMessage(uint64_t sequence, std::string_view hash);

// Where a record is: a segment file name and a byte offset in it. Turned
// into text ("audit-...log offset 123") only for messages.
struct RecordPlace {
  std::string_view file;
  uint64_t offset = 0;
};
std::string PlaceString(const RecordPlace& place);

// Checks a stream of records in file order against the rules of
// docs/audit-format.md, stopping at the first fault. Entries before `from`
// only anchor the chain (their stored hash is taken as given); entries after
// `to` end the check.
class ChainVerifier {
 public:
  // `key` (not owned) must outlive the verifier. to == 0: no upper bound.
  ChainVerifier(EVP_PKEY* key, std::string key_id, uint64_t from, uint64_t to);

  // Each returns false when verification is over (fault found or past `to`).
  bool OnEntry(const exchange::v1::AuditEntry& e, const RecordPlace& where);
  bool OnCheckpoint(const exchange::v1::AuditCheckpoint& cp, const RecordPlace& where);
  // A record that cannot be read (checksum, length, unknown type, parse).
  void OnUnreadable(const RecordPlace& where, std::string_view what);
  void Note(std::string note) { note_ = std::move(note); }

  bool done() const { return done_; }
  exchange::v1::VerifyAuditResponse Finish();

 private:
  void Fault(uint64_t sequence, exchange::v1::AuditFault fault, std::string message);

  EVP_PKEY* key_;
  std::string key_id_;
  uint64_t from_, to_;
  bool have_last_ = false;
  uint64_t last_sequence_ = 0;
  std::string last_hash_;
  bool done_ = false;
  std::string note_;
  exchange::v1::VerifyAuditResponse response_;
};

}  // namespace cityos::audit_internal

#endif  // CITYOS_SRC_AUDIT_AUDIT_FORMAT_H_
