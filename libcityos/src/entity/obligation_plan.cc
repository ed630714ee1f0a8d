// Compiling obligations into plans and applying plans to serialized payloads
// (see obligation_plan.h and docs/entities.md).
#include "entity/obligation_plan.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "cityos/entity.h"
#include "cityos/status.h"
#include "cityos/wire.h"
#include "core/strings.h"
#include "entity/entity_internal.h"
#include "google/protobuf/descriptor.pb.h"
#include "google/protobuf/timestamp.pb.h"

namespace cityos::entity_internal {

namespace pb = google::protobuf;
using exchange::v1::Obligation;
using exchange::v1::ObligationKind;

FieldAction* WireNode::GetOrAdd(uint32_t number) {
  for (FieldAction& f : fields) {
    if (f.number == number) return &f;
  }
  fields.emplace_back();
  fields.back().number = number;
  return &fields.back();
}

void WireNode::Sort() {
  std::sort(fields.begin(), fields.end(),
            [](const FieldAction& a, const FieldAction& b) { return a.number < b.number; });
  for (FieldAction& f : fields) {
    if (f.child != nullptr) f.child->Sort();
  }
}

bool ChangesData(ObligationKind kind) {
  switch (kind) {
    case exchange::v1::OBLIGATION_KIND_REDACT:
    case exchange::v1::OBLIGATION_KIND_PSEUDONYMIZE:
    case exchange::v1::OBLIGATION_KIND_COARSEN_LOCATION:
    case exchange::v1::OBLIGATION_KIND_COARSEN_TIME:
      return true;
    default:
      return false;
  }
}

namespace {

struct EnvInfo {
  const char* name;
  EnvAttr attr;
  bool is_string;
};

constexpr EnvInfo kEnvelope[] = {
    {"id", EnvAttr::kId, true},
    {"source", EnvAttr::kSource, true},
    {"spec_version", EnvAttr::kSpecVersion, true},
    {"type", EnvAttr::kType, true},
    {"subject", EnvAttr::kSubject, true},
    {"time", EnvAttr::kTime, false},
    {"data_content_type", EnvAttr::kDataContentType, true},
    {"data_schema", EnvAttr::kDataSchema, true},
    {"domain", EnvAttr::kDomain, true},
    {"classification", EnvAttr::kClassification, false},
    {"data_subject", EnvAttr::kDataSubject, true},
    {"owner", EnvAttr::kOwner, true},
    {"region", EnvAttr::kRegion, true},
    {"jurisdiction", EnvAttr::kJurisdiction, true},
    {"publisher", EnvAttr::kPublisher, true},
};

absl::Status PathError(std::string_view path, std::string_view type, std::string_view what) {
  return absl::InvalidArgumentError(
      absl::StrFormat("obligation path \"%s\" on %s: %s", path, type, what));
}

absl::Status CompileEnvelope(const Obligation& o, std::string_view path, std::string_view type,
                             Plan* plan) {
  std::string_view name = path.substr(6);  // after "event."
  EnvAction a;
  a.kind = o.kind();
  bool is_string = true;
  if (name.substr(0, 11) == "extensions.") {
    a.attr = EnvAttr::kExtension;
    a.extension = std::string(name.substr(11));
    if (a.extension.empty()) return PathError(path, type, "no extension attribute named");
  } else {
    const EnvInfo* info = nullptr;
    for (const EnvInfo& e : kEnvelope) {
      if (name == e.name) info = &e;
    }
    if (info == nullptr) {
      return PathError(path, type, absl::StrFormat("\"%s\" is not an event attribute", name));
    }
    a.attr = info->attr;
    is_string = info->is_string;
  }
  switch (o.kind()) {
    case exchange::v1::OBLIGATION_KIND_REDACT:
      if (a.attr == EnvAttr::kId || a.attr == EnvAttr::kType || a.attr == EnvAttr::kSource ||
          a.attr == EnvAttr::kSpecVersion) {
        return PathError(path, type, "a required event attribute cannot be redacted");
      }
      break;
    case exchange::v1::OBLIGATION_KIND_PSEUDONYMIZE:
      if (!is_string) return PathError(path, type, "pseudonymize needs a string attribute");
      break;
    case exchange::v1::OBLIGATION_KIND_COARSEN_LOCATION:
      return PathError(path, type, "no event attribute is a location");
    case exchange::v1::OBLIGATION_KIND_COARSEN_TIME:
      if (a.attr != EnvAttr::kTime) {
        return PathError(path, type, "coarsen_time applies to event.time only");
      }
      break;
    default:
      break;
  }
  plan->envelope.push_back(std::move(a));
  return absl::OkStatus();
}

absl::StatusOr<int64_t> GranularityNanos(const Obligation& o) {
  const auto& g = o.time_granularity();
  if (g.seconds() < 0 || g.nanos() < 0 || g.nanos() > 999999999 ||
      (g.seconds() == 0 && g.nanos() == 0) || g.seconds() > 315576000000) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "coarsen_time: time_granularity must be positive, got %ds %dns", g.seconds(), g.nanos()));
  }
  return g.seconds() * 1000000000 + g.nanos();
}

// Finds the latitude/longitude double fields of a location message type.
bool LocationFields(const pb::Descriptor* d, uint32_t* lat, uint32_t* lon) {
  const pb::FieldDescriptor* la = d->FindFieldByName("latitude");
  const pb::FieldDescriptor* lo = d->FindFieldByName("longitude");
  auto ok = [](const pb::FieldDescriptor* f) {
    return f != nullptr && !f->is_repeated() && f->type() == pb::FieldDescriptor::TYPE_DOUBLE;
  };
  if (!ok(la) || !ok(lo)) return false;
  *lat = static_cast<uint32_t>(la->number());
  *lon = static_cast<uint32_t>(lo->number());
  return true;
}

absl::Status CompilePayloadPath(const Obligation& o, std::string_view path,
                                const pb::Descriptor* root, double cell_m, int64_t granularity,
                                Plan* plan) {
  std::vector<std::string_view> tokens;
  CITYOS_RETURN_IF_ERROR(SplitPath(path, "obligation path", &tokens));
  std::string_view type = plan->type;
  AttrAction attr{o.kind(), {}, cell_m, granularity};
  for (std::string_view t : tokens) attr.tokens.emplace_back(t);
  if (root == nullptr) {
    // Unknown type: nothing can be checked; the event path refuses to apply
    // (fail closed), entities of unknown types carry no attributes.
    plan->attributes.push_back(std::move(attr));
    return absl::OkStatus();
  }
  if (plan->root == nullptr) plan->root = std::make_unique<WireNode>();
  WireNode* node = plan->root.get();
  const pb::Descriptor* d = root;
  for (size_t i = 0; i < tokens.size(); ++i) {
    const pb::FieldDescriptor* f = d->FindFieldByName(std::string(tokens[i]));
    if (f == nullptr) {
      return PathError(path, type, absl::StrFormat("%s has no field \"%s\"", d->full_name(),
                                                   tokens[i]));
    }
    FieldAction* fa = node->GetOrAdd(static_cast<uint32_t>(f->number()));
    // For a map field act on the values: field 2 of every entry.
    const pb::FieldDescriptor* target = f;
    if (f->is_map()) {
      if (fa->child == nullptr) fa->child = std::make_unique<WireNode>();
      node = fa->child.get();
      target = f->message_type()->map_value();
    }
    bool last = i + 1 == tokens.size();
    if (last && o.kind() == exchange::v1::OBLIGATION_KIND_REDACT) {
      // A map field is redacted whole (all its entries).
      fa->redact = true;
      break;
    }
    if (f->is_map()) fa = node->GetOrAdd(2);
    if (!last) {
      if (target->cpp_type() != pb::FieldDescriptor::CPPTYPE_MESSAGE) {
        return PathError(path, type,
                         absl::StrFormat("field \"%s\" of %s is not a message", tokens[i],
                                         d->full_name()));
      }
      if (fa->child == nullptr) fa->child = std::make_unique<WireNode>();
      node = fa->child.get();
      d = target->message_type();
      continue;
    }
    switch (o.kind()) {
      case exchange::v1::OBLIGATION_KIND_PSEUDONYMIZE:
        if (target->cpp_type() != pb::FieldDescriptor::CPPTYPE_STRING) {
          return PathError(path, type,
                           absl::StrFormat("pseudonymize needs a string or bytes field, \"%s\" of "
                                           "%s is %s",
                                           tokens[i], d->full_name(), target->type_name()));
        }
        fa->pseudonymize = true;
        break;
      case exchange::v1::OBLIGATION_KIND_COARSEN_LOCATION: {
        uint32_t lat = 0, lon = 0;
        if (target->cpp_type() != pb::FieldDescriptor::CPPTYPE_MESSAGE ||
            !LocationFields(target->message_type(), &lat, &lon)) {
          return PathError(path, type,
                           absl::StrFormat("coarsen_location needs a location (GeoPoint or a "
                                           "message with double latitude and longitude); \"%s\" "
                                           "of %s is not one",
                                           tokens[i], d->full_name()));
        }
        if (fa->child == nullptr) fa->child = std::make_unique<WireNode>();
        WireNode* loc = fa->child.get();
        // Several cell sizes on one field: the coarsest wins.
        loc->cell_m = std::max(loc->cell_m, cell_m);
        loc->lat_field = lat;
        loc->lon_field = lon;
        break;
      }
      case exchange::v1::OBLIGATION_KIND_COARSEN_TIME:
        if (target->cpp_type() != pb::FieldDescriptor::CPPTYPE_MESSAGE ||
            target->message_type()->full_name() != "google.protobuf.Timestamp") {
          return PathError(path, type,
                           absl::StrFormat("coarsen_time needs a google.protobuf.Timestamp; "
                                           "\"%s\" of %s is not one",
                                           tokens[i], d->full_name()));
        }
        if (fa->child == nullptr) fa->child = std::make_unique<WireNode>();
        fa->child->granularity_nanos = std::max(fa->child->granularity_nanos, granularity);
        break;
      default:
        break;
    }
  }
  plan->attributes.push_back(std::move(attr));
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<Plan>> CompilePlan(absl::Span<const Obligation> obligations,
                                                  std::string_view type,
                                                  const pb::Descriptor* descriptor) {
  auto plan = std::make_unique<Plan>();
  plan->type = std::string(type);
  plan->descriptor = descriptor;
  for (const Obligation& o : obligations) {
    if (!ChangesData(o.kind())) continue;
    plan->obligations.push_back(o);
    double cell_m = 0;
    int64_t granularity = 0;
    const auto* paths = &o.field_paths();
    google::protobuf::RepeatedPtrField<std::string> default_paths;
    if (o.kind() == exchange::v1::OBLIGATION_KIND_COARSEN_LOCATION) {
      if (!(o.grid_cell_m() > 0) || !std::isfinite(o.grid_cell_m())) {
        return absl::InvalidArgumentError(absl::StrFormat(
            "coarsen_location: grid_cell_m must be a positive number, got %g", o.grid_cell_m()));
      }
      cell_m = o.grid_cell_m();
      if (paths->empty()) {
        // The default is the entity location: the payload's top-level
        // `location`, when the type has one.
        if (descriptor != nullptr && descriptor->FindFieldByName("location") == nullptr) continue;
        *default_paths.Add() = "location";
        paths = &default_paths;
      }
    } else if (o.kind() == exchange::v1::OBLIGATION_KIND_COARSEN_TIME) {
      CITYOS_ASSIGN_OR_RETURN(granularity, GranularityNanos(o));
      if (paths->empty()) {
        *default_paths.Add() = "event.time";
        paths = &default_paths;
      }
    }
    for (const std::string& path : *paths) {
      std::string_view p = path;
      if (p.substr(0, 6) == "event.") {
        CITYOS_RETURN_IF_ERROR(CompileEnvelope(o, p, type, plan.get()));
        if (!plan->envelope.empty()) plan->envelope.back().granularity_nanos = granularity;
      } else {
        CITYOS_RETURN_IF_ERROR(
            CompilePayloadPath(o, p, descriptor, cell_m, granularity, plan.get()));
      }
    }
  }
  if (plan->root != nullptr) plan->root->Sort();
  // The attribute tree and the envelope get the semantics of the wire
  // rewrite: each field is acted on once per kind (two coarsenings of one
  // field: the coarsest; a pseudonym is never hashed again), and redactions
  // come first, then pseudonyms, then coarsening of what remains.
  auto rank = [](ObligationKind k) {
    return k == exchange::v1::OBLIGATION_KIND_REDACT ? 0
           : k == exchange::v1::OBLIGATION_KIND_PSEUDONYMIZE ? 1
                                                            : 2;
  };
  std::vector<AttrAction> attributes;
  for (AttrAction& a : plan->attributes) {
    bool merged = false;
    for (AttrAction& b : attributes) {
      if (b.kind == a.kind && b.tokens == a.tokens) {
        b.cell_m = std::max(b.cell_m, a.cell_m);
        b.granularity_nanos = std::max(b.granularity_nanos, a.granularity_nanos);
        merged = true;
      }
    }
    if (!merged) attributes.push_back(std::move(a));
  }
  std::stable_sort(attributes.begin(), attributes.end(),
                   [&](const AttrAction& a, const AttrAction& b) {
                     return rank(a.kind) < rank(b.kind);
                   });
  plan->attributes = std::move(attributes);
  std::vector<EnvAction> envelope;
  for (EnvAction& a : plan->envelope) {
    bool merged = false;
    for (EnvAction& b : envelope) {
      if (b.kind == a.kind && b.attr == a.attr && b.extension == a.extension) {
        b.granularity_nanos = std::max(b.granularity_nanos, a.granularity_nanos);
        merged = true;
      }
    }
    if (!merged) envelope.push_back(std::move(a));
  }
  std::stable_sort(envelope.begin(), envelope.end(), [&](const EnvAction& a, const EnvAction& b) {
    return rank(a.kind) < rank(b.kind);
  });
  plan->envelope = std::move(envelope);
  return plan;
}

// --- wire format ---

namespace {

bool Rewrite(const WireNode& node, std::string_view in, const FastHmacSha256& hmac,
             std::string* out, int depth) {
  if (depth > wire::kMaxDepth) return false;
  wire::Reader r(in);
  const char* copy_from = r.position();
  const bool location = node.cell_m > 0;
  const bool time = node.granularity_nanos > 0;
  double lat = 0, lon = 0;
  int64_t seconds = 0;
  int32_t nanos = 0;
  while (!r.done()) {
    const char* field_start = r.position();
    uint32_t number, type;
    if (!r.ReadTag(&number, &type)) return false;
    const FieldAction* fa = node.Find(number);
    bool loc_field = location && (number == node.lat_field || number == node.lon_field);
    bool time_field = time && (number == 1 || number == 2);
    if (fa == nullptr && !loc_field && !time_field) {
      // Untouched fields are copied in runs.
      if (!r.SkipField(number, type, depth)) return false;
      continue;
    }
    out->append(copy_from, field_start - copy_from);
    if (fa != nullptr && fa->redact) {
      if (!r.SkipField(number, type, depth)) return false;
    } else if (loc_field && type == wire::kFixed64) {
      // Two halves rather than ReadFixed64, which GCC warns about here
      // (-Wmaybe-uninitialized on its unchecked second half).
      uint32_t lo, hi;
      if (!r.ReadFixed32(&lo) || !r.ReadFixed32(&hi)) return false;
      const uint64_t bits = uint64_t{lo} | uint64_t{hi} << 32;
      std::memcpy(number == node.lat_field ? &lat : &lon, &bits, sizeof(bits));
    } else if (time_field && type == wire::kVarint) {
      uint64_t v;
      if (!r.ReadVarint(&v)) return false;
      if (number == 1) {
        seconds = static_cast<int64_t>(v);
      } else {
        nanos = static_cast<int32_t>(v);
      }
    } else if (fa != nullptr && type == wire::kLengthDelimited &&
               (fa->pseudonymize || fa->child != nullptr)) {
      std::string_view content;
      if (!r.ReadLengthDelimited(&content)) return false;
      if (fa->pseudonymize) {
        std::string pseudonym = hmac.Pseudonymize(content);
        wire::AppendLengthDelimitedHeader(number, pseudonym.size(), out);
        out->append(pseudonym);
      } else {
        // Write the rewritten content, then slide it to make room for its
        // length (content is small: a memmove beats a scratch buffer).
        wire::AppendVarint(wire::MakeTag(number, wire::kLengthDelimited), out);
        size_t at = out->size();
        if (!Rewrite(*fa->child, content, hmac, out, depth + 1)) return false;
        size_t n = out->size() - at;
        size_t k = wire::VarintSize(n);
        out->resize(out->size() + k);
        char* base = out->data() + at;
        std::memmove(base + k, base, n);
        wire::WriteVarint(n, reinterpret_cast<uint8_t*>(base));
      }
    } else {
      // A wire type the action does not expect (e.g. a scalar where a
      // message was declared): keep it as it is.
      if (!r.SkipField(number, type, depth)) return false;
      out->append(field_start, r.position() - field_start);
    }
    copy_from = r.position();
  }
  out->append(copy_from, r.position() - copy_from);
  if (location) {
    common::v1::GeoPoint in;
    in.set_latitude(lat);
    in.set_longitude(lon);
    common::v1::GeoPoint c = CoarsenLocation(in, node.cell_m);
    // proto3 leaves zeros out, as the reflection serializer does.
    uint64_t bits;
    if (c.latitude() != 0) {
      const double d = c.latitude();
      std::memcpy(&bits, &d, sizeof(bits));
      wire::AppendFixed64Field(node.lat_field, bits, out);
    }
    if (c.longitude() != 0) {
      const double d = c.longitude();
      std::memcpy(&bits, &d, sizeof(bits));
      wire::AppendFixed64Field(node.lon_field, bits, out);
    }
  }
  if (time) {
    CoarsenTime(node.granularity_nanos, &seconds, &nanos);
    if (seconds != 0) wire::AppendVarintField(1, static_cast<uint64_t>(seconds), out);
    if (nanos != 0) {
      wire::AppendVarintField(2, static_cast<uint64_t>(static_cast<int64_t>(nanos)), out);
    }
  }
  return true;
}

}  // namespace

bool RewriteWire(const WireNode& node, std::string_view in, const FastHmacSha256& hmac,
                 std::string* out) {
  return Rewrite(node, in, hmac, out, 0);
}

void CoarsenTime(int64_t granularity_nanos, int64_t* seconds, int32_t* nanos) {
  if (granularity_nanos <= 0) return;
  __int128 t = static_cast<__int128>(*seconds) * 1000000000 + *nanos;
  __int128 g = granularity_nanos;
  __int128 r = t % g;
  if (r < 0) r += g;
  t -= r;
  __int128 s = t / 1000000000;
  __int128 n = t % 1000000000;
  if (n < 0) {
    n += 1000000000;
    s -= 1;
  }
  *seconds = static_cast<int64_t>(s);
  *nanos = static_cast<int32_t>(n);
}

// --- reflection (reference) ---

void RewriteReflection(const WireNode& node, const FastHmacSha256& hmac, pb::Message* m) {
  const pb::Descriptor* d = m->GetDescriptor();
  const pb::Reflection* r = m->GetReflection();
  // Map entries always carry their value on the wire, so it counts as present.
  const bool entry = d->options().map_entry();
  for (const FieldAction& fa : node.fields) {
    const pb::FieldDescriptor* f = d->FindFieldByNumber(static_cast<int>(fa.number));
    if (f == nullptr) continue;
    if (fa.redact) {
      r->ClearField(m, f);
      continue;
    }
    if (fa.pseudonymize && f->cpp_type() == pb::FieldDescriptor::CPPTYPE_STRING) {
      if (f->is_repeated()) {
        for (int i = 0; i < r->FieldSize(*m, f); ++i) {
          r->SetRepeatedString(m, f, i, hmac.Pseudonymize(r->GetRepeatedString(*m, f, i)));
        }
      } else if (r->HasField(*m, f) || entry) {
        r->SetString(m, f, hmac.Pseudonymize(r->GetString(*m, f)));
      }
    }
    if (fa.child != nullptr && f->cpp_type() == pb::FieldDescriptor::CPPTYPE_MESSAGE) {
      if (f->is_repeated()) {
        for (int i = 0; i < r->FieldSize(*m, f); ++i) {
          RewriteReflection(*fa.child, hmac, r->MutableRepeatedMessage(m, f, i));
        }
      } else if (r->HasField(*m, f) || entry) {
        RewriteReflection(*fa.child, hmac, r->MutableMessage(m, f));
      }
    }
  }
  if (node.cell_m > 0) {
    const pb::FieldDescriptor* la = d->FindFieldByNumber(static_cast<int>(node.lat_field));
    const pb::FieldDescriptor* lo = d->FindFieldByNumber(static_cast<int>(node.lon_field));
    common::v1::GeoPoint in;
    in.set_latitude(r->GetDouble(*m, la));
    in.set_longitude(r->GetDouble(*m, lo));
    common::v1::GeoPoint c = CoarsenLocation(in, node.cell_m);
    r->SetDouble(m, la, c.latitude());
    r->SetDouble(m, lo, c.longitude());
  }
  if (node.granularity_nanos > 0) {
    const pb::FieldDescriptor* s = d->FindFieldByNumber(1);
    const pb::FieldDescriptor* n = d->FindFieldByNumber(2);
    int64_t seconds = r->GetInt64(*m, s);
    int32_t nanos = r->GetInt32(*m, n);
    CoarsenTime(node.granularity_nanos, &seconds, &nanos);
    r->SetInt64(m, s, seconds);
    r->SetInt32(m, n, nanos);
  }
}

// --- envelope ---

namespace {

std::string* EnvString(EnvAttr attr, event::v1::Event* e) {
  switch (attr) {
    case EnvAttr::kId:
      return e->mutable_id();
    case EnvAttr::kSource:
      return e->mutable_source();
    case EnvAttr::kSpecVersion:
      return e->mutable_spec_version();
    case EnvAttr::kType:
      return e->mutable_type();
    case EnvAttr::kSubject:
      return e->mutable_subject();
    case EnvAttr::kDataContentType:
      return e->mutable_data_content_type();
    case EnvAttr::kDataSchema:
      return e->mutable_data_schema();
    case EnvAttr::kDomain:
      return e->mutable_domain();
    case EnvAttr::kDataSubject:
      return e->mutable_data_subject();
    case EnvAttr::kOwner:
      return e->mutable_owner();
    case EnvAttr::kRegion:
      return e->mutable_region();
    case EnvAttr::kJurisdiction:
      return e->mutable_jurisdiction();
    case EnvAttr::kPublisher:
      return e->mutable_publisher();
    default:
      return nullptr;
  }
}

}  // namespace

void ApplyEnvelope(absl::Span<const EnvAction> actions, const FastHmacSha256& hmac,
                   event::v1::Event* event) {
  for (const EnvAction& a : actions) {
    if (a.attr == EnvAttr::kTime) {
      if (a.kind == exchange::v1::OBLIGATION_KIND_REDACT) {
        event->clear_time();
      } else if (a.kind == exchange::v1::OBLIGATION_KIND_COARSEN_TIME && event->has_time()) {
        int64_t s = event->time().seconds();
        int32_t n = event->time().nanos();
        CoarsenTime(a.granularity_nanos, &s, &n);
        event->mutable_time()->set_seconds(s);
        event->mutable_time()->set_nanos(n);
      }
      continue;
    }
    if (a.attr == EnvAttr::kClassification) {
      if (a.kind == exchange::v1::OBLIGATION_KIND_REDACT) event->clear_classification();
      continue;
    }
    if (a.attr == EnvAttr::kExtension) {
      auto* ext = event->mutable_extensions();
      auto it = ext->find(a.extension);
      if (it == ext->end()) continue;
      if (a.kind == exchange::v1::OBLIGATION_KIND_REDACT) {
        ext->erase(it);
      } else if (a.kind == exchange::v1::OBLIGATION_KIND_PSEUDONYMIZE) {
        it->second = hmac.Pseudonymize(it->second);
      }
      continue;
    }
    std::string* s = EnvString(a.attr, event);
    if (s == nullptr) continue;
    if (a.kind == exchange::v1::OBLIGATION_KIND_REDACT) {
      s->clear();
    } else if (a.kind == exchange::v1::OBLIGATION_KIND_PSEUDONYMIZE && !s->empty()) {
      // An empty attribute means "none": it stays empty rather than becoming
      // the pseudonym of the empty string.
      *s = hmac.Pseudonymize(*s);
    }
  }
}

}  // namespace cityos::entity_internal
