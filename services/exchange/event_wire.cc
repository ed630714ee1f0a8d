#include "event_wire.h"

#include <cstring>

#include "cityos/entity.h"
#include "google/protobuf/descriptor.h"

namespace cityos {
namespace {

// The envelope attributes an event and an entity both carry, as a decision
// reads them (the views name their fields alike).
template <typename View>
ResourceView CommonResource(const View& view) {
  ResourceView v;
  v.domain = view.domain;
  v.type = view.type;
  v.classification = view.classification;
  v.owner = view.owner;
  v.region = view.region;
  v.jurisdiction = view.jurisdiction;
  v.data_subject = view.data_subject;
  return v;
}

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

// exchange.v1 field numbers the entity rewrite uses.
constexpr uint32_t kEntityAttributes = 3;  // Entity.attributes
constexpr uint32_t kMapEntries = 1;        // ValueMap.fields, ValueList.values
constexpr uint32_t kValueTime = 6;
constexpr uint32_t kValueDuration = 7;
constexpr uint32_t kValueGeo = 8;
constexpr uint32_t kValueList = 9;
constexpr uint32_t kValueMap = 10;

using Tokens = std::vector<std::string>;

void AppendField(uint32_t field, std::string_view content, std::string* out) {
  wire::AppendLengthDelimitedHeader(field, content.size(), out);
  out->append(content);
}

bool RewriteMapField(std::string_view message, uint32_t map_field, const Tokens& tokens,
                     size_t i, int depth, std::string* out);

// A Value at token `i` (not the last) of the path, as EntityWalker's Element
// (and, with `lists`, its walk into a list's elements) treats it: a nested
// message (`map_value`) is walked with the next token; a list's elements are
// each treated so (not lists in lists); a time, duration or point whose
// component the last token may name is left to the parsed path (false).
bool RewriteValue(std::string_view value, const Tokens& tokens, size_t i, bool lists, int depth,
                  std::string* out) {
  uint32_t kind = 0;
  int kinds = 0;
  {
    wire::Reader r(value);
    while (!r.done()) {
      uint32_t number, wire_type;
      if (!r.ReadTag(&number, &wire_type) || !r.SkipField(number, wire_type, depth)) return false;
      if (number >= 1 && number <= 10) {
        kind = number;
        ++kinds;
      }
    }
  }
  // A oneof set more than once: a parse keeps (or merges into) the last one.
  if (kinds > 1) return false;
  const bool component = i + 2 == tokens.size();
  if (component && (kind == kValueTime || kind == kValueDuration || kind == kValueGeo)) {
    return false;
  }
  if (kind != kValueMap && !(lists && kind == kValueList)) {
    out->append(value);
    return true;
  }
  wire::Reader r(value);
  while (!r.done()) {
    const char* start = r.position();
    uint32_t number, wire_type;
    if (!r.ReadTag(&number, &wire_type)) return false;
    if (number != kind) {
      if (!r.SkipField(number, wire_type, depth)) return false;
      out->append(start, static_cast<size_t>(r.position() - start));
      continue;
    }
    std::string_view content;
    if (wire_type != wire::kLengthDelimited || !r.ReadLengthDelimited(&content)) return false;
    std::string rewritten;
    if (kind == kValueMap) {
      if (!RewriteMapField(content, kMapEntries, tokens, i + 1, depth + 1, &rewritten)) {
        return false;
      }
    } else {
      // ValueList: each element (field 1) as a value at this token.
      wire::Reader list(content);
      while (!list.done()) {
        const char* element_start = list.position();
        uint32_t n, t;
        if (!list.ReadTag(&n, &t)) return false;
        if (n != kMapEntries || t != wire::kLengthDelimited) {
          if (!list.SkipField(n, t, depth + 1)) return false;
          rewritten.append(element_start, static_cast<size_t>(list.position() - element_start));
          continue;
        }
        std::string_view element;
        if (!list.ReadLengthDelimited(&element)) return false;
        std::string element_out;
        if (!RewriteValue(element, tokens, i, false, depth + 2, &element_out)) return false;
        AppendField(kMapEntries, element_out, &rewritten);
      }
    }
    AppendField(kind, rewritten, out);
  }
  return true;
}

// A message whose field `map_field` is a map<string, Value>: entries keyed
// tokens[i] are dropped (the last token) or have their value rewritten;
// everything else is copied as is.
bool RewriteMapField(std::string_view message, uint32_t map_field, const Tokens& tokens,
                     size_t i, int depth, std::string* out) {
  const bool last = i + 1 == tokens.size();
  const std::string& token = tokens[i];
  wire::Reader r(message);
  // Fields copied as they are accumulate in one run of bytes, appended when
  // an entry is dropped or rewritten (and at the end): one append for most
  // entities rather than one per field.
  const char* run = r.position();
  while (!r.done()) {
    const char* start = r.position();
    uint32_t number, wire_type;
    if (!r.ReadTag(&number, &wire_type)) return false;
    if (number != map_field || wire_type != wire::kLengthDelimited) {
      if (!r.SkipField(number, wire_type, depth)) return false;
      continue;
    }
    std::string_view entry;
    if (!r.ReadLengthDelimited(&entry)) return false;
    // The entry: key (1) and value (2), both length-delimited; anything else
    // is left to a parse.
    // (Each at most once: a parse would merge repeated values.)
    std::string_view key, value;
    bool have_key = false, have_value = false;
    wire::Reader e(entry);
    while (!e.done()) {
      uint32_t n, t;
      std::string_view content;
      if (!e.ReadTag(&n, &t) || t != wire::kLengthDelimited || (n != 1 && n != 2) ||
          !e.ReadLengthDelimited(&content)) {
        return false;
      }
      bool& seen = n == 1 ? have_key : have_value;
      if (seen) return false;
      seen = true;
      (n == 1 ? key : value) = content;
    }
    if (key != token) continue;  // copied with the run
    out->append(run, static_cast<size_t>(start - run));
    run = r.position();
    if (last) continue;  // redacted
    std::string rewritten;
    if (!RewriteValue(value, tokens, i, true, depth + 2, &rewritten)) return false;
    // As protobuf writes a map entry: key, then value, both always.
    wire::AppendLengthDelimitedHeader(
        map_field,
        wire::LengthDelimitedFieldSize(1, key.size()) +
            wire::LengthDelimitedFieldSize(2, rewritten.size()),
        out);
    AppendField(1, key, out);
    AppendField(2, rewritten, out);
  }
  out->append(run, static_cast<size_t>(r.position() - run));
  return true;
}

bool ReadDouble(wire::Reader* r, double* v) {
  uint64_t bits;
  if (!r->ReadFixed64(&bits)) return false;
  std::memcpy(v, &bits, sizeof(*v));
  return true;
}

}  // namespace

bool EntityHeaderView::Parse(std::string_view bytes) {
  *this = EntityHeaderView();
  // Only what SerializeAsString writes is read here: its known fields (1 to
  // 15) in field-number order, each singular one at most once and only when
  // not its default (proto3: no empty string, no zero enum or version), the
  // repeated ones (3 attributes, 15 obligations) as one run, with their
  // declared wire types, unknown fields after all of them; the strings the
  // decision reads valid UTF-8 (a parse refuses them otherwise). Anything
  // else (a field twice, where a parse keeps the last or merges, a field out
  // of order, a wrong wire type, ...) is left to the parse.
  wire::Reader r(bytes);
  uint32_t last = 0;      // the last known field number seen
  bool unknown = false;   // an unknown field seen
  auto string_field = [](std::string_view content, std::string_view* out) {
    if (content.empty() || !wire::IsValidUtf8(content.data(), content.size())) return false;
    *out = content;
    return true;
  };
  while (!r.done()) {
    uint32_t number, wire_type;
    if (!r.ReadTag(&number, &wire_type)) return false;
    if (number > 15) {
      unknown = true;
      if (!r.SkipField(number, wire_type)) return false;
      continue;
    }
    if (unknown || number < last) return false;
    if (number == last && number != 3 && number != 15) return false;
    last = number;
    const bool varint = number == 7 || number == 9;
    if (wire_type != (varint ? wire::kVarint : wire::kLengthDelimited)) return false;
    if (varint) {
      uint64_t value;
      if (!r.ReadVarint(&value) || value == 0) return false;
      if (number == 9) {
        classification = static_cast<event::v1::Classification>(static_cast<int32_t>(value));
      }
      continue;
    }
    std::string_view content;
    if (!r.ReadLengthDelimited(&content)) return false;
    bool ok = true;
    switch (number) {
      case 1: ok = string_field(content, &type); break;
      case 2: ok = string_field(content, &id); break;
      case 4: {
        has_location = true;
        // GeoPoint: latitude (1) then longitude (2), each at most once.
        wire::Reader g(content);
        uint32_t seen = 0;
        while (!g.done()) {
          uint32_t n, t;
          if (!g.ReadTag(&n, &t) || (n != 1 && n != 2) || n <= seen || t != wire::kFixed64 ||
              !ReadDouble(&g, n == 1 ? &latitude : &longitude)) {
            return false;
          }
          seen = n;
        }
        break;
      }
      case 8: ok = string_field(content, &domain); break;
      case 10: ok = string_field(content, &owner); break;
      case 11: ok = string_field(content, &region); break;
      case 12: ok = string_field(content, &jurisdiction); break;
      case 13: ok = string_field(content, &data_subject); break;
      case 14: ok = !content.empty() && wire::IsValidUtf8(content.data(), content.size()); break;
      case 15: has_obligations = true; break;
      default: break;  // 3 attributes, 5 and 6 times: not read
    }
    if (!ok) return false;
  }
  return true;
}

ResourceView EntityHeaderView::Resource() const {
  ResourceView v = CommonResource(*this);
  v.entity_id = id;
  if (has_location) v.location = std::make_pair(latitude, longitude);
  return v;
}

std::optional<EntityWireRedaction> EntityWireRedaction::Compile(
    absl::Span<const exchange::v1::Obligation> obligations, std::string_view type) {
  EntityWireRedaction plan;
  const google::protobuf::Descriptor* root =
      google::protobuf::DescriptorPool::generated_pool()->FindMessageTypeByName(std::string(type));
  for (const exchange::v1::Obligation& o : obligations) {
    switch (o.kind()) {
      case exchange::v1::OBLIGATION_KIND_REDACT:
        break;
      case exchange::v1::OBLIGATION_KIND_PSEUDONYMIZE:
      case exchange::v1::OBLIGATION_KIND_COARSEN_LOCATION:
      case exchange::v1::OBLIGATION_KIND_COARSEN_TIME:
        return std::nullopt;
      default:
        continue;  // carried only, changes no data
    }
    for (const std::string& path : o.field_paths()) {
      if (std::string_view(path).substr(0, 6) == "event.") return std::nullopt;
      Tokens tokens;
      size_t start = 0;
      while (true) {
        size_t dot = path.find('.', start);
        size_t end = dot == std::string::npos ? path.size() : dot;
        if (end == start) return std::nullopt;
        tokens.push_back(path.substr(start, end - start));
        if (dot == std::string::npos) break;
        start = dot + 1;
      }
      const std::string& leaf = tokens.back();
      if (tokens.front() == "location" || leaf == "unit" ||
          (leaf.size() > 5 && leaf.compare(leaf.size() - 5, 5, "_unit") == 0)) {
        return std::nullopt;
      }
      // A protobuf map on the way applies the rest to every value: parsed path.
      const google::protobuf::Descriptor* d = root;
      for (size_t i = 0; i + 1 < tokens.size() && d != nullptr; ++i) {
        const google::protobuf::FieldDescriptor* f = d->FindFieldByName(tokens[i]);
        if (f == nullptr) break;
        if (f->is_map()) return std::nullopt;
        d = f->cpp_type() == google::protobuf::FieldDescriptor::CPPTYPE_MESSAGE ? f->message_type()
                                                                               : nullptr;
      }
      bool seen = false;
      for (const Tokens& p : plan.paths_) seen = seen || p == tokens;
      if (!seen) plan.paths_.push_back(std::move(tokens));
    }
  }
  return plan;
}

bool EntityWireRedaction::Apply(std::string_view entity, std::string* out) const {
  const size_t mark = out->size();
  if (paths_.empty()) {
    out->append(entity);
    return true;
  }
  std::string current, next;
  std::string_view in = entity;
  for (size_t k = 0; k < paths_.size(); ++k) {
    const bool final_pass = k + 1 == paths_.size();
    std::string* dst = final_pass ? out : &next;
    if (!final_pass) next.clear();
    if (!RewriteMapField(in, kEntityAttributes, paths_[k], 0, 0, dst)) {
      out->resize(mark);
      return false;
    }
    if (!final_pass) {
      current.swap(next);
      in = current;
    }
  }
  return true;
}

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
  ResourceView v = CommonResource(*this);
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
