#include "audit/audit_format.h"

#include <openssl/evp.h>

#include <algorithm>
#include <filesystem>
#include <system_error>

#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "audit/signing_internal.h"
#include "core/strings.h"
#include "google/protobuf/io/coded_stream.h"
#include "google/protobuf/io/zero_copy_stream_impl_lite.h"
#include "log/crc32c.h"

namespace cityos::audit_internal {

namespace crc32c = log_internal::crc32c;
using exchange::v1::AuditCheckpoint;
using exchange::v1::AuditEntry;
using exchange::v1::AuditFault;

namespace {

void PutFixed32(std::string* out, uint32_t v) {
  char b[4] = {static_cast<char>(v), static_cast<char>(v >> 8), static_cast<char>(v >> 16),
               static_cast<char>(v >> 24)};
  out->append(b, 4);
}

uint32_t GetFixed32(const char* p) {
  const auto* u = reinterpret_cast<const unsigned char*>(p);
  return static_cast<uint32_t>(u[0]) | static_cast<uint32_t>(u[1]) << 8 |
         static_cast<uint32_t>(u[2]) << 16 | static_cast<uint32_t>(u[3]) << 24;
}

// CRC of the type byte followed by the payload.
uint32_t RecordCrc(uint8_t type, std::string_view payload) {
  const char t = static_cast<char>(type);
  return crc32c::Extend(crc32c::Value(&t, 1), payload.data(), payload.size());
}

std::string Hex(std::string_view bytes, size_t max = 8) {
  return absl::BytesToHexString(AV(bytes.substr(0, max)));
}

}  // namespace

std::string SegmentFileName(uint64_t first_sequence) {
  return absl::StrFormat("audit-%020d.log", first_sequence);
}

bool ParseSegmentFileName(std::string_view name, uint64_t* first_sequence) {
  constexpr std::string_view kPrefix = "audit-", kSuffix = ".log";
  if (name.size() != kPrefix.size() + 20 + kSuffix.size() || !name.starts_with(kPrefix) ||
      !name.ends_with(kSuffix)) {
    return false;
  }
  std::string_view digits = name.substr(kPrefix.size(), 20);
  if (!std::all_of(digits.begin(), digits.end(), [](char c) { return c >= '0' && c <= '9'; })) {
    return false;
  }
  return absl::SimpleAtoi(AV(digits), first_sequence);
}

absl::StatusOr<std::vector<std::string>> ListSegments(const std::string& dir) {
  std::error_code ec;
  std::vector<std::pair<uint64_t, std::string>> found;
  for (const auto& de : std::filesystem::directory_iterator(dir, ec)) {
    uint64_t first = 0;
    if (ParseSegmentFileName(de.path().filename().string(), &first)) {
      found.emplace_back(first, de.path().string());
    }
  }
  if (ec) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot read audit directory ", dir, ": ", ec.message()));
  }
  std::sort(found.begin(), found.end());
  std::vector<std::string> out;
  for (auto& f : found) out.push_back(std::move(f.second));
  return out;
}

void AppendRecord(uint8_t type, std::string_view payload, std::string* out) {
  PutFixed32(out, static_cast<uint32_t>(payload.size()));
  PutFixed32(out, crc32c::Mask(RecordCrc(type, payload)));
  out->push_back(static_cast<char>(type));
  out->append(payload.data(), payload.size());
}

DecodeResult DecodeRecord(std::string_view data, size_t pos, Record* out) {
  if (data.size() - pos < kRecordHeaderSize) return DecodeResult::kTruncated;
  const uint32_t len = GetFixed32(data.data() + pos);
  if (len > kMaxRecordPayload) return DecodeResult::kBadLength;
  if (data.size() - pos - kRecordHeaderSize < len) return DecodeResult::kTruncated;
  out->type = static_cast<uint8_t>(data[pos + 8]);
  out->payload = data.substr(pos + kRecordHeaderSize, len);
  out->size = kRecordHeaderSize + len;
  if (crc32c::Unmask(GetFixed32(data.data() + pos + 4)) != RecordCrc(out->type, out->payload)) {
    return DecodeResult::kBadCrc;
  }
  return DecodeResult::kOk;
}

bool IsTornTail(std::string_view data, size_t pos, DecodeResult why) {
  if (why == DecodeResult::kTruncated) return true;
  std::string_view rest = data.substr(pos);
  // Some file systems extend the file before the data lands: zeros.
  if (std::all_of(rest.begin(), rest.end(), [](char c) { return c == 0; })) return true;
  if (why == DecodeResult::kBadCrc) {
    return pos + kRecordHeaderSize + GetFixed32(data.data() + pos) == data.size();
  }
  return false;
}

std::string SerializeDeterministic(const google::protobuf::MessageLite& m) {
  std::string out;
  {
    google::protobuf::io::StringOutputStream sos(&out);
    google::protobuf::io::CodedOutputStream cos(&sos);
    cos.SetSerializationDeterministic(true);
    m.SerializeWithCachedSizes(&cos);
  }
  return out;
}

std::string EntryHash(const AuditEntry& e) {
  if (e.hash().empty()) return HashOfUnhashedEntry(e);
  AuditEntry copy = e;
  copy.clear_hash();
  return HashOfUnhashedEntry(copy);
}

std::string HashOfUnhashedEntry(const AuditEntry& e) {
  e.ByteSizeLong();  // caches sizes for SerializeWithCachedSizes
  const std::string body = SerializeDeterministic(e);
  std::string md(kHashSize, '\0');
  EVP_MD_CTX* ctx = EVP_MD_CTX_new();
  unsigned int len = 0;
  EVP_DigestInit_ex(ctx, EVP_sha256(), nullptr);
  EVP_DigestUpdate(ctx, e.previous_hash().data(), e.previous_hash().size());
  EVP_DigestUpdate(ctx, body.data(), body.size());
  EVP_DigestFinal_ex(ctx, reinterpret_cast<unsigned char*>(md.data()), &len);
  EVP_MD_CTX_free(ctx);
  return md;
}

std::string CheckpointMessage(uint64_t sequence, std::string_view hash) {
  std::string m(8, '\0');
  for (int i = 0; i < 8; ++i) m[i] = static_cast<char>(sequence >> (56 - 8 * i));
  m.append(hash.data(), hash.size());
  return m;
}

std::string PlaceString(const RecordPlace& place) {
  return absl::StrCat(AV(place.file), " offset ", place.offset);
}

ChainVerifier::ChainVerifier(EVP_PKEY* key, std::string key_id, uint64_t from, uint64_t to)
    : key_(key), key_id_(std::move(key_id)), from_(from == 0 ? 1 : from), to_(to) {}

void ChainVerifier::Fault(uint64_t sequence, AuditFault fault, std::string message) {
  response_.set_ok(false);
  response_.set_first_bad_sequence(sequence);
  response_.set_fault(fault);
  response_.set_message(std::move(message));
  done_ = true;
}

bool ChainVerifier::OnEntry(const AuditEntry& e, const RecordPlace& where) {
  if (done_) return false;
  const uint64_t seq = e.sequence();
  if (seq < from_ && (!have_last_ || seq > last_sequence_)) {
    // Before the range: anchors the link of the first checked entry.
    have_last_ = true;
    last_sequence_ = seq;
    last_hash_ = e.hash();
    return true;
  }
  if (to_ != 0 && seq > to_ && have_last_ && last_sequence_ >= to_) {
    done_ = true;
    return false;
  }
  const uint64_t expected = have_last_ ? last_sequence_ + 1 : 1;
  if (seq != expected) {
    std::string why = seq < expected ? "repeated or out of order" : "entries missing or reordered";
    if (!have_last_) {
      Fault(seq, exchange::v1::AUDIT_FAULT_SEQUENCE_GAP,
            absl::StrCat(PlaceString(where), ": the first entry has sequence ", seq,
                         ", expected 1 (entries missing)"));
    } else {
      Fault(seq, exchange::v1::AUDIT_FAULT_SEQUENCE_GAP,
            absl::StrCat(PlaceString(where), ": entry ", seq, " follows entry ", last_sequence_,
                         ", expected ", expected, " (", why, ")"));
    }
    return false;
  }
  const std::string computed = EntryHash(e);
  if (computed != e.hash()) {
    Fault(seq, exchange::v1::AUDIT_FAULT_HASH_MISMATCH,
          absl::StrCat(PlaceString(where), ": entry ", seq, " has hash ", Hex(e.hash()),
                       "... but its content hashes to ", Hex(computed),
                       "... (the entry was edited)"));
    return false;
  }
  const std::string expected_prev = have_last_ ? last_hash_ : std::string(kHashSize, '\0');
  if (e.previous_hash() != expected_prev) {
    Fault(seq, exchange::v1::AUDIT_FAULT_CHAIN_BROKEN,
          absl::StrCat(PlaceString(where), ": entry ", seq, " has previous_hash ",
                       Hex(e.previous_hash()), "... but entry ", seq - 1, " has hash ",
                       Hex(expected_prev),
                       "... (an entry before it was deleted, inserted, replaced or reordered)"));
    return false;
  }
  have_last_ = true;
  last_sequence_ = seq;
  last_hash_ = e.hash();
  response_.set_entries_checked(response_.entries_checked() + 1);
  return true;
}

bool ChainVerifier::OnCheckpoint(const AuditCheckpoint& cp, const RecordPlace& where) {
  if (done_) return false;
  const uint64_t seq = cp.sequence();
  if (seq < from_ || (to_ != 0 && seq > to_)) return true;
  if (!have_last_ || last_sequence_ != seq) {
    Fault(seq, exchange::v1::AUDIT_FAULT_BAD_SIGNATURE,
          absl::StrCat(PlaceString(where), ": checkpoint for entry ", seq,
                       " does not follow that entry (the last entry before it is ",
                       have_last_ ? absl::StrCat(last_sequence_) : std::string("none"), ")"));
    return false;
  }
  std::string since = response_.has_last_good_checkpoint()
                          ? absl::StrCat(response_.last_good_checkpoint().sequence() + 1)
                          : std::string("1");
  if (cp.hash() != last_hash_) {
    Fault(seq, exchange::v1::AUDIT_FAULT_BAD_SIGNATURE,
          absl::StrCat(PlaceString(where), ": checkpoint ", seq, " signed hash ", Hex(cp.hash()),
                       "... but entry ", seq, " has hash ", Hex(last_hash_),
                       "... (entries ", since, "..", seq,
                       " were altered and rehashed after signing)"));
    return false;
  }
  absl::Status s = VerifyWithKey(key_, CheckpointMessage(seq, cp.hash()), cp.signature());
  if (!s.ok()) {
    Fault(seq, exchange::v1::AUDIT_FAULT_BAD_SIGNATURE,
          absl::StrCat(PlaceString(where), ": checkpoint ", seq,
                       " signature does not verify with key ", key_id_,
                       cp.key_id() != key_id_ ? absl::StrCat(" (it names key ", cp.key_id(), ")")
                                              : std::string(),
                       " (forged checkpoint, or entries ", since, "..", seq, " altered)"));
    return false;
  }
  *response_.mutable_last_good_checkpoint() = cp;
  response_.set_checkpoints_checked(response_.checkpoints_checked() + 1);
  return true;
}

void ChainVerifier::OnUnreadable(const RecordPlace& where, std::string_view what) {
  if (done_) return;
  // No fault code names storage damage; the entry that cannot be read is the
  // one after the last good one, and the message says what it is.
  Fault(have_last_ ? last_sequence_ + 1 : from_, exchange::v1::AUDIT_FAULT_HASH_MISMATCH,
        absl::StrCat(PlaceString(where), ": ", AV(what)));
}

exchange::v1::VerifyAuditResponse ChainVerifier::Finish() {
  if (response_.fault() == exchange::v1::AUDIT_FAULT_UNSPECIFIED &&
      response_.first_bad_sequence() == 0) {
    response_.set_ok(true);
    std::string msg = absl::StrCat("verified ", response_.entries_checked(), " entries and ",
                                   response_.checkpoints_checked(), " checkpoints");
    if (have_last_ && response_.entries_checked() > 0 &&
        (!response_.has_last_good_checkpoint() ||
         response_.last_good_checkpoint().sequence() < last_sequence_)) {
      const uint64_t first_unsigned = response_.has_last_good_checkpoint()
                                          ? response_.last_good_checkpoint().sequence() + 1
                                          : std::max<uint64_t>(from_, 1);
      absl::StrAppend(&msg, "; entries ", std::max(first_unsigned, from_), "..", last_sequence_,
                      " are not covered by a signed checkpoint in the range (only by the chain)");
    }
    if (!note_.empty()) absl::StrAppend(&msg, "; ", note_);
    response_.set_message(msg);
  }
  return response_;
}

}  // namespace cityos::audit_internal
