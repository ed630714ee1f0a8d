#include "bus/validate.h"

#include <cstdint>

#include "absl/strings/str_format.h"
#include "cityos/subject.h"
#include "cityos/wire.h"

namespace cityos::bus_internal {

absl::Status ValidateName(std::string_view what, std::string_view name) {
  bool ok = !name.empty() && name.size() <= 64;
  for (char c : name) {
    ok = ok && ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                c == '_' || c == '-');
  }
  if (!ok) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "%s \"%s\": must be 1-64 characters of A-Z a-z 0-9 _ -", what, name));
  }
  return absl::OkStatus();
}

absl::Status ValidateStreamConfig(const StreamConfig& c) {
  if (absl::Status s = ValidateName("stream name", c.name); !s.ok()) return s;
  if (c.subjects.empty()) {
    return absl::InvalidArgumentError(
        absl::StrFormat("stream %s: subjects: at least one pattern is required", c.name));
  }
  for (size_t i = 0; i < c.subjects.size(); ++i) {
    if (absl::Status s = ValidatePattern(c.subjects[i]); !s.ok()) {
      return absl::InvalidArgumentError(
          absl::StrFormat("stream %s: subjects[%d]: %s", c.name, i, s.message()));
    }
  }
  if (c.durability == Durability::kInterval && c.sync_interval <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "stream %s: sync_interval must be positive with durability interval", c.name));
  }
  if (c.max_age < absl::ZeroDuration()) {
    return absl::InvalidArgumentError(
        absl::StrFormat("stream %s: max_age must not be negative", c.name));
  }
  if (c.segment_bytes < (64u << 10) || c.segment_bytes > (1ull << 40)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "stream %s: segment_bytes %d is out of range (64 KiB to 1 TiB)", c.name,
        c.segment_bytes));
  }
  return absl::OkStatus();
}

absl::Status ValidateConsumerConfig(const ConsumerConfig& c) {
  if (absl::Status s = ValidateName("stream name", c.stream); !s.ok()) return s;
  if (absl::Status s = ValidateName("consumer name", c.name); !s.ok()) return s;
  if (!c.filter_subject.empty()) {
    if (absl::Status s = ValidatePattern(c.filter_subject); !s.ok()) {
      return absl::InvalidArgumentError(
          absl::StrFormat("consumer %s: filter_subject: %s", c.name, s.message()));
    }
  }
  if (c.ack_wait <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError(
        absl::StrFormat("consumer %s: ack_wait must be positive", c.name));
  }
  if (c.max_in_flight == 0) {
    return absl::InvalidArgumentError(
        absl::StrFormat("consumer %s: max_in_flight must be at least 1", c.name));
  }
  if (c.start.kind == StartPosition::Kind::kSequence && c.start.sequence == 0) {
    return absl::InvalidArgumentError(
        absl::StrFormat("consumer %s: start sequence must be at least 1", c.name));
  }
  return absl::OkStatus();
}

namespace {

// The walk behind IsWellFormedEventWire: cityos::wire::Reader checks the wire
// structure as protobuf 3.21's parser does (tags, varints, lengths, groups and
// their depth); this adds what the schema says: valid UTF-8 in every proto3
// `string` field it knows, and the nested Timestamp, Any and map entries (a
// known field sent with another wire type is an unknown field to protobuf too,
// and unknown fields are kept as bytes).

// What a length-delimited field's body must be.
enum class Body : uint8_t { kAny, kUtf8, kMessage, kMapEntry, kAnyMessage };

// Per message type: the checks by field number (fields past the end: kAny).
struct Table {
  const Body* body;
  uint32_t size;
};

using B = Body;
// cityos.event.v1.Event: 1-5, 7, 8, 10, 12-15, 17, 21 are strings; 6 `time`
// (google.protobuf.Timestamp: no strings); 16 `extensions` (map<string, string>);
// 20 `binary_data` (bytes); 22 `proto_data` (google.protobuf.Any).
constexpr Body kEventBodies[] = {
    B::kAny,  B::kUtf8, B::kUtf8, B::kUtf8,     B::kUtf8, B::kUtf8,  // 0-5
    B::kMessage, B::kUtf8, B::kUtf8, B::kAny, B::kUtf8, B::kAny,     // 6-11
    B::kUtf8, B::kUtf8, B::kUtf8, B::kUtf8, B::kMapEntry, B::kUtf8,  // 12-17
    B::kAny,  B::kAny,  B::kAny,  B::kUtf8, B::kAnyMessage};         // 18-22
constexpr Body kMapEntryBodies[] = {B::kAny, B::kUtf8, B::kUtf8};   // key, value
constexpr Body kAnyBodies[] = {B::kAny, B::kUtf8};                  // type_url; value: bytes
constexpr Table kEventTable{kEventBodies, sizeof(kEventBodies)};
constexpr Table kMapEntryTable{kMapEntryBodies, sizeof(kMapEntryBodies)};
constexpr Table kAnyTable{kAnyBodies, sizeof(kAnyBodies)};

bool Walk(std::string_view bytes, Table table, int depth);

inline bool CheckBody(std::string_view body, Body k, int depth) {
  if (k == Body::kUtf8) return wire::IsValidUtf8(body);  // the common case first
  if (k == Body::kMessage) return wire::IsWellFormedMessage(body, depth + 1);
  if (k == Body::kMapEntry) return Walk(body, kMapEntryTable, depth + 1);
  return Walk(body, kAnyTable, depth + 1);  // kAnyMessage
}

// Walks the fields of a message at nesting `depth` described by `table`.
bool Walk(std::string_view bytes, Table table, int depth) {
  if (depth > wire::kMaxDepth) return false;
  wire::Reader r(bytes);
  while (!r.done()) {
    uint32_t field, type;
    if (!r.ReadTag(&field, &type)) return false;
    // An event is mostly length-delimited fields: those first.
    if (type == wire::kLengthDelimited) {
      std::string_view body;
      if (!r.ReadLengthDelimited(&body)) return false;
      const Body k = field < table.size ? table.body[field] : Body::kAny;
      if (k != Body::kAny && !CheckBody(body, k, depth)) return false;
    } else if (!r.SkipField(field, type, depth)) {
      return false;
    }
  }
  return true;
}

}  // namespace

bool IsWellFormedEventWire(std::string_view bytes) { return Walk(bytes, kEventTable, 0); }

}  // namespace cityos::bus_internal
