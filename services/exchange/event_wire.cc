#include "event_wire.h"

#include "cityos/entity.h"

namespace cityos {
namespace {

// A map<string, string> entry (at nesting depth 1): key (1) and value (2).
bool ParseMapEntry(std::string_view entry, std::string_view* key, std::string_view* value) {
  wire::Reader r(entry);
  *key = {};
  *value = {};
  while (!r.done()) {
    uint32_t number, wire_type;
    if (!r.ReadTag(&number, &wire_type)) return false;
    if (wire_type != wire::kLengthDelimited) {
      if (!r.SkipField(number, wire_type, 1)) return false;
      continue;
    }
    std::string_view content;
    if (!r.ReadLengthDelimited(&content)) return false;
    if (number == 1) *key = content;
    if (number == 2) *value = content;
  }
  return true;
}

}  // namespace

bool EnvelopeView::Parse(std::string_view bytes) {
  *this = EnvelopeView();
  wire::Reader r(bytes);
  constexpr std::string_view kEntityKey = kEntityIdExtension;
  int payload_fields = 0;
  while (!r.done()) {
    uint32_t number, wire_type;
    if (!r.ReadTag(&number, &wire_type)) return false;
    // A field whose wire type does not match its declaration is kept as an
    // unknown field by a parse: skipped here too.
    if (wire_type != wire::kLengthDelimited) {
      if (number == 11 && wire_type == wire::kVarint) {
        uint64_t varint;
        if (!r.ReadVarint(&varint)) return false;
        classification = static_cast<event::v1::Classification>(static_cast<int32_t>(varint));
      } else if (!r.SkipField(number, wire_type)) {
        return false;
      }
      continue;
    }
    std::string_view content;
    if (!r.ReadLengthDelimited(&content)) return false;
    switch (number) {
      case 2: source = content; break;
      case 4: type = content; break;
      case 5: subject = content; break;
      case 10: domain = content; break;
      case 12: data_subject = content; break;
      case 13: owner = content; break;
      case 14: region = content; break;
      case 15: jurisdiction = content; break;
      case 16: {
        std::string_view key, value;
        if (!ParseMapEntry(content, &key, &value)) return false;
        if (key == kEntityKey) entity_id_extension = value;
        break;
      }
      case 20:
      case 21:
      case 22:
        // A parse keeps only the last member of the payload oneof (and merges
        // repeated proto_data); the stored bytes would still carry the others,
        // which obligations on the wire would not touch. Such events take the
        // parsed path.
        if (++payload_fields > 1) return false;
        payload_bytes = content.size();
        break;
      default:
        break;
    }
  }
  return true;
}

ResourceView EnvelopeView::Resource() const {
  ResourceView v;
  v.domain = domain;
  v.type = type;
  v.classification = classification;
  v.owner = owner;
  v.region = region;
  v.jurisdiction = jurisdiction;
  v.data_subject = data_subject;
  v.subject = subject;
  return v;
}

void AppendDelivery(std::string_view event, absl::Time publish_time, std::string_view decision,
                    std::string_view stream, uint64_t sequence, std::string* out) {
  // publish_time as a google.protobuf.Timestamp, always present (as
  // TimestampToProto on a mutable field leaves it).
  const wire::Timestamp ts(publish_time);
  // The resume token "<stream>:<sequence>", built on the stack.
  char digits[24];
  char* const digits_end = digits + sizeof(digits);
  char* d = digits_end;
  if (!stream.empty()) {
    uint64_t s = sequence;
    do {
      *--d = static_cast<char>('0' + s % 10);
      s /= 10;
    } while (s != 0);
  }
  const size_t token_size =
      stream.empty() ? 0 : stream.size() + 1 + static_cast<size_t>(digits_end - d);
  const size_t body = wire::LengthDelimitedFieldSize(1, event.size()) +
                      wire::LengthDelimitedFieldSize(2, ts.body_size) +
                      wire::LengthDelimitedFieldSize(3, decision.size()) +
                      (token_size > 0 ? wire::LengthDelimitedFieldSize(4, token_size) : 0);
  // Everything but the event, the decision and the token's stream goes
  // through this buffer: two headers, the timestamp, two more headers.
  uint8_t buf[4 * 15 + wire::Timestamp::kMaxBodySize];
  auto flush = [&](uint8_t* end) {
    out->append(reinterpret_cast<const char*>(buf), static_cast<size_t>(end - buf));
  };
  out->reserve(out->size() + wire::LengthDelimitedFieldSize(1, body));
  uint8_t* p = wire::WriteLengthDelimitedHeader(1, body, buf);
  p = wire::WriteLengthDelimitedHeader(1, event.size(), p);
  flush(p);
  out->append(event);
  p = wire::WriteLengthDelimitedHeader(2, ts.body_size, buf);
  p = ts.WriteBody(p);
  p = wire::WriteLengthDelimitedHeader(3, decision.size(), p);
  flush(p);
  out->append(decision);
  if (token_size > 0) {
    flush(wire::WriteLengthDelimitedHeader(4, token_size, buf));
    out->append(stream);
    out->push_back(':');
    out->append(d, static_cast<size_t>(digits_end - d));
  }
}

}  // namespace cityos
