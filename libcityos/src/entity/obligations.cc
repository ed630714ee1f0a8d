// ObligationApplier: applies the data-changing obligations of a decision to
// events (on the serialized payload) and to entities (on the attribute
// tree), with compiled plans cached per (payload type, obligations).
#include <atomic>
#include <cstring>
#include <cmath>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/mutex.h"
#include "cityos/entity.h"
#include "cityos/status.h"
#include "cityos/wire.h"
#include "entity/entity_internal.h"
#include "entity/obligation_plan.h"
#include "entity/pseudonym_internal.h"

namespace cityos {

namespace pb = google::protobuf;
using entity_internal::AttrAction;
using entity_internal::EnvAction;
using entity_internal::EnvAttr;
using entity_internal::FastHmacSha256;
using entity_internal::Plan;
using exchange::v1::Obligation;
using exchange::v1::Value;

namespace {

// One top-level field (of an event or of its Any payload, for ApplyToWire):
// its number, its whole encoding [begin, end) and, for length-delimited
// fields, its content.
struct WireField {
  uint32_t number = 0;
  const char* begin = nullptr;
  const char* end = nullptr;
  std::string_view content;
  bool delimited = false;
};

// Reads the next field from `r`; false when malformed (groups are refused: no
// event field is one).
bool NextField(wire::Reader* r, WireField* f) {
  f->begin = r->position();
  uint32_t type;
  if (!r->ReadTag(&f->number, &type)) return false;
  f->delimited = type == wire::kLengthDelimited;
  if (f->delimited) {
    if (!r->ReadLengthDelimited(&f->content)) return false;
  } else if (type == wire::kStartGroup || !r->SkipField(f->number, type)) {
    return false;
  }
  f->end = r->position();
  return true;
}

std::atomic<uint64_t> next_applier_id{1};

// Plans beyond this many are dropped wholesale: decisions carry a handful of
// obligation sets, so reaching it means churn, not a working set.
constexpr size_t kMaxCachedPlans = 4096;

uint64_t Mix(uint64_t h, uint64_t v) {
  h ^= v + 0x9e3779b97f4a7c15ULL + (h << 6) + (h >> 2);
  return h;
}

uint64_t HashKey(absl::Span<const Obligation> obligations, std::string_view type) {
  uint64_t h = std::hash<std::string_view>{}(type);
  for (const Obligation& o : obligations) {
    if (!entity_internal::ChangesData(o.kind())) continue;
    h = Mix(h, static_cast<uint64_t>(o.kind()));
    for (const std::string& p : o.field_paths()) h = Mix(h, std::hash<std::string_view>{}(p));
    uint64_t bits;
    double cell = o.grid_cell_m();
    std::memcpy(&bits, &cell, sizeof(bits));
    h = Mix(h, bits);
    h = Mix(h, static_cast<uint64_t>(o.time_granularity().seconds()));
    h = Mix(h, static_cast<uint64_t>(o.time_granularity().nanos()));
  }
  return h;
}

bool SameObligations(const std::vector<Obligation>& cached,
                     absl::Span<const Obligation> obligations) {
  size_t i = 0;
  for (const Obligation& o : obligations) {
    if (!entity_internal::ChangesData(o.kind())) continue;
    if (i >= cached.size()) return false;
    const Obligation& c = cached[i++];
    if (c.kind() != o.kind() || c.grid_cell_m() != o.grid_cell_m() ||
        c.time_granularity().seconds() != o.time_granularity().seconds() ||
        c.time_granularity().nanos() != o.time_granularity().nanos() ||
        c.field_paths_size() != o.field_paths_size()) {
      return false;
    }
    for (int j = 0; j < c.field_paths_size(); ++j) {
      if (c.field_paths(j) != o.field_paths(j)) return false;
    }
  }
  return i == cached.size();
}

bool AnyChangesData(absl::Span<const Obligation> obligations) {
  for (const Obligation& o : obligations) {
    if (entity_internal::ChangesData(o.kind())) return true;
  }
  return false;
}

}  // namespace

struct ObligationApplier::Impl {
  explicit Impl(PseudonymKey k) : key(std::move(k)), hmac(key.key()), id(next_applier_id++) {}

  absl::StatusOr<std::shared_ptr<const Plan>> GetPlan(absl::Span<const Obligation> obligations,
                                                      std::string_view type);

  PseudonymKey key;
  FastHmacSha256 hmac;
  const uint64_t id;
  absl::Mutex mu;
  absl::flat_hash_map<uint64_t, std::vector<std::shared_ptr<const Plan>>> cache
      ABSL_GUARDED_BY(mu);
  size_t cached ABSL_GUARDED_BY(mu) = 0;
};

absl::StatusOr<std::shared_ptr<const Plan>> ObligationApplier::Impl::GetPlan(
    absl::Span<const Obligation> obligations, std::string_view type) {
  // The last plan this thread used for this applier: a subscription applies
  // the same decision to a run of events, so this usually hits without
  // touching the shared lock, and without hashing the obligations (compared
  // as they are instead: one or two obligations of a path or two).
  struct Memo {
    uint64_t applier = 0;
    uint64_t hash = 0;
    std::shared_ptr<const Plan> plan;
  };
  thread_local Memo memo;
  if (memo.applier == id && memo.plan->type == type &&
      SameObligations(memo.plan->obligations, obligations)) {
    return memo.plan;
  }
  uint64_t h = HashKey(obligations, type);
  {
    absl::ReaderMutexLock lock(&mu);
    auto it = cache.find(h);
    if (it != cache.end()) {
      for (const auto& plan : it->second) {
        if (plan->type == type && SameObligations(plan->obligations, obligations)) {
          memo = {id, h, plan};
          return plan;
        }
      }
    }
  }
  CITYOS_ASSIGN_OR_RETURN(
      std::unique_ptr<Plan> compiled,
      entity_internal::CompilePlan(obligations, type, entity_internal::FindPayloadType(type)));
  std::shared_ptr<const Plan> plan(std::move(compiled));
  {
    absl::MutexLock lock(&mu);
    if (cached >= kMaxCachedPlans) {
      cache.clear();
      cached = 0;
    }
    cache[h].push_back(plan);
    ++cached;
  }
  memo = {id, h, plan};
  return plan;
}

ObligationApplier::ObligationApplier(PseudonymKey key)
    : impl_(std::make_unique<Impl>(std::move(key))) {}

ObligationApplier::~ObligationApplier() = default;

absl::Status ObligationApplier::Apply(absl::Span<const Obligation> obligations,
                                      event::v1::Event* event) {
  if (!AnyChangesData(obligations)) return absl::OkStatus();
  std::string_view type = event->has_proto_data()
                              ? entity_internal::TypeNameFromUrl(event->proto_data().type_url())
                              : std::string_view();
  CITYOS_ASSIGN_OR_RETURN(std::shared_ptr<const Plan> plan, impl_->GetPlan(obligations, type));
  // The rewritten payload is built aside and swapped in last, so an error
  // leaves the event untouched. The buffer is per thread and keeps its
  // capacity (it receives the old payload's storage on swap).
  thread_local std::string buffer;
  bool rewrite = false;
  if (plan->descriptor == nullptr && !plan->attributes.empty() &&
      event->data_case() != event::v1::Event::DATA_NOT_SET) {
    // Fail closed: a redaction that cannot be applied must not deliver.
    return absl::InvalidArgumentError(absl::StrFormat(
        "obligation path \"%s\" cannot be applied: payload type \"%s\" is unknown to this node",
        absl::StrJoin(plan->attributes.front().tokens, "."),
        event->has_proto_data() ? std::string(type) : std::string("(not protobuf)")));
  }
  if (plan->root != nullptr && event->has_proto_data()) {
    buffer.clear();
    if (!entity_internal::RewriteWire(*plan->root, event->proto_data().value(), impl_->hmac,
                                      &buffer)) {
      return absl::InvalidArgumentError(
          absl::StrFormat("payload of type \"%s\" does not parse", type));
    }
    rewrite = true;
  }
  entity_internal::ApplyEnvelope(plan->envelope, impl_->hmac, event);
  if (rewrite) event->mutable_proto_data()->mutable_value()->swap(buffer);
  return absl::OkStatus();
}

absl::Status ObligationApplier::ApplyToWire(absl::Span<const Obligation> obligations,
                                            std::string_view wire, std::string* out) {
  if (!AnyChangesData(obligations)) {
    out->append(wire);
    return absl::OkStatus();
  }
  auto not_an_event = [] {
    return absl::InvalidArgumentError("obligations: the serialized event does not parse");
  };
  // The payload: the last of the `data` oneof's fields wins, as in a parse.
  constexpr uint32_t kBinaryData = 20, kTextData = 21, kProtoData = 22;
  WireField any_field;
  int any_count = 0;
  uint32_t data_field = 0;
  int data_count = 0;
  {
    wire::Reader r(wire);
    WireField f;
    while (!r.done()) {
      if (!NextField(&r, &f)) return not_an_event();
      if (f.number == kBinaryData || f.number == kTextData || f.number == kProtoData) {
        if (!f.delimited) return not_an_event();
        data_field = f.number;
        ++data_count;
        if (f.number == kProtoData) {
          any_field = f;
          ++any_count;
        }
      }
    }
  }
  std::string_view type_url, value;
  int value_count = 0;
  if (data_field == kProtoData) {
    wire::Reader r(any_field.content);
    WireField f;
    while (!r.done()) {
      if (!NextField(&r, &f)) return not_an_event();
      if (f.number == 1 && f.delimited) type_url = f.content;
      if (f.number == 2 && f.delimited) {
        value = f.content;
        ++value_count;
      }
    }
  }
  std::string_view type =
      data_field == kProtoData ? entity_internal::TypeNameFromUrl(type_url) : std::string_view();
  CITYOS_ASSIGN_OR_RETURN(std::shared_ptr<const Plan> plan, impl_->GetPlan(obligations, type));
  if (!plan->envelope.empty() || data_count > 1 || any_count > 1 || value_count > 1) {
    // Envelope obligations, or an unusual encoding (more than one member of
    // the payload oneof: a parse keeps the last, and the bytes must not keep
    // the others): the reference path.
    thread_local event::v1::Event parsed;
    if (!parsed.ParseFromArray(wire.data(), static_cast<int>(wire.size()))) {
      return not_an_event();
    }
    CITYOS_RETURN_IF_ERROR(Apply(obligations, &parsed));
    parsed.AppendToString(out);
    return absl::OkStatus();
  }
  if (plan->descriptor == nullptr && !plan->attributes.empty() && data_field != 0) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "obligation path \"%s\" cannot be applied: payload type \"%s\" is unknown to this node",
        absl::StrJoin(plan->attributes.front().tokens, "."),
        data_field == kProtoData ? std::string(type) : std::string("(not protobuf)")));
  }
  if (plan->root == nullptr || data_field != kProtoData || value_count == 0) {
    // Nothing to rewrite (an absent value rewrites to an absent value).
    out->append(wire);
    return absl::OkStatus();
  }
  thread_local std::string buffer;
  buffer.clear();
  if (!entity_internal::RewriteWire(*plan->root, value, impl_->hmac, &buffer)) {
    return absl::InvalidArgumentError(
        absl::StrFormat("payload of type \"%s\" does not parse", type));
  }
  // The Any again, its value replaced, every other field as it was.
  thread_local std::string any;
  any.clear();
  {
    wire::Reader r(any_field.content);
    WireField f;
    while (!r.done()) {
      NextField(&r, &f);  // checked above
      if (f.number == 2 && f.delimited) {
        if (!buffer.empty()) {  // proto3: an empty value is not written
          wire::AppendLengthDelimitedHeader(2, buffer.size(), &any);
          any.append(buffer);
        }
      } else {
        any.append(f.begin, static_cast<size_t>(f.end - f.begin));
      }
    }
  }
  out->reserve(out->size() + wire.size() + 16);
  out->append(wire.data(), static_cast<size_t>(any_field.begin - wire.data()));
  wire::AppendLengthDelimitedHeader(kProtoData, any.size(), out);
  out->append(any);
  out->append(any_field.end, static_cast<size_t>(wire.data() + wire.size() - any_field.end));
  return absl::OkStatus();
}

namespace {

// GeoPoints, Timestamps and Durations are leaves of the attribute tree, but
// a payload path may still redact one of their fields: the component reads
// as its proto3 default, as it does in the redacted payload.
void RedactComponent(std::string_view field, Value* v) {
  if (v->kind_case() == Value::kGeoValue) {
    if (field == "latitude") v->mutable_geo_value()->set_latitude(0);
    if (field == "longitude") v->mutable_geo_value()->set_longitude(0);
  } else if (v->kind_case() == Value::kTimeValue || v->kind_case() == Value::kDurationValue) {
    pb::Message* m = v->kind_case() == Value::kTimeValue
                         ? static_cast<pb::Message*>(v->mutable_time_value())
                         : v->mutable_duration_value();
    const pb::FieldDescriptor* f = m->GetDescriptor()->FindFieldByName(std::string(field));
    if (f != nullptr) m->GetReflection()->ClearField(m, f);
  }
}

class EntityWalker {
 public:
  EntityWalker(const AttrAction& a, const FastHmacSha256& hmac) : a_(a), hmac_(hmac) {}

  void Run(const pb::Descriptor* d, pb::Map<std::string, Value>* fields) { Walk(d, fields, 0); }

 private:
  void Walk(const pb::Descriptor* d, pb::Map<std::string, Value>* fields, size_t i) {
    const std::string& token = a_.tokens[i];
    auto it = fields->find(token);
    if (it == fields->end()) return;
    const pb::FieldDescriptor* f = d != nullptr ? d->FindFieldByName(token) : nullptr;
    bool last = i + 1 == a_.tokens.size();
    if (last && a_.kind == exchange::v1::OBLIGATION_KIND_REDACT) {
      fields->erase(it);
      UnitSibling(fields, token, nullptr);
      return;
    }
    const pb::Descriptor* element_type = nullptr;
    if (f != nullptr) {
      const pb::FieldDescriptor* target = f->is_map() ? f->message_type()->map_value() : f;
      if (target->cpp_type() == pb::FieldDescriptor::CPPTYPE_MESSAGE) {
        element_type = target->message_type();
      }
    }
    Value& v = it->second;
    if (f != nullptr && f->is_map()) {
      // A protobuf map: the rest of the path applies to every value.
      if (v.kind_case() != Value::kMapValue) return;
      for (auto& [key, element] : *v.mutable_map_value()->mutable_fields()) {
        Element(element_type, &element, i, last);
      }
    } else if (v.kind_case() == Value::kListValue) {
      for (Value& element : *v.mutable_list_value()->mutable_values()) {
        Element(element_type, &element, i, last);
      }
    } else {
      Element(element_type, &v, i, last);
      if (last && a_.kind == exchange::v1::OBLIGATION_KIND_PSEUDONYMIZE &&
          v.kind_case() == Value::kStringValue) {
        UnitSibling(fields, token, &v.string_value());
      }
    }
  }

  // The entity view copies `x_unit` (and `unit` for `value`) into the unit
  // of the number `x`; redacting or pseudonymizing the unit field does the
  // same to that copy, as the view of the obligated payload would show.
  static void UnitSibling(pb::Map<std::string, Value>* fields, std::string_view token,
                          const std::string* replacement) {
    std::string number;
    if (token == "unit") {
      number = "value";
    } else if (token.size() > 5 && token.substr(token.size() - 5) == "_unit") {
      number = std::string(token.substr(0, token.size() - 5));
    } else {
      return;
    }
    auto it = fields->find(number);
    if (it == fields->end() || it->second.unit().empty()) return;
    if (replacement == nullptr) {
      it->second.clear_unit();
    } else {
      it->second.set_unit(*replacement);
    }
  }

  void Element(const pb::Descriptor* d, Value* v, size_t i, bool last) {
    if (!last) {
      if (v->kind_case() == Value::kMapValue) {
        Walk(d, v->mutable_map_value()->mutable_fields(), i + 1);
      } else if (i + 2 == a_.tokens.size() && a_.kind == exchange::v1::OBLIGATION_KIND_REDACT) {
        RedactComponent(a_.tokens[i + 1], v);
      }
      return;
    }
    switch (a_.kind) {
      case exchange::v1::OBLIGATION_KIND_PSEUDONYMIZE:
        if (v->kind_case() == Value::kStringValue) {
          v->set_string_value(hmac_.Pseudonymize(v->string_value()));
        } else if (v->kind_case() == Value::kBytesValue) {
          v->set_bytes_value(hmac_.Pseudonymize(v->bytes_value()));
        }
        break;
      case exchange::v1::OBLIGATION_KIND_COARSEN_LOCATION:
        if (v->kind_case() == Value::kGeoValue) {
          *v->mutable_geo_value() = CoarsenLocation(v->geo_value(), a_.cell_m);
        } else if (v->kind_case() == Value::kMapValue) {
          // A location message other than GeoPoint: its latitude/longitude.
          auto* m = v->mutable_map_value()->mutable_fields();
          auto lat = m->find("latitude");
          auto lon = m->find("longitude");
          common::v1::GeoPoint p;
          if (lat != m->end() && lat->second.kind_case() == Value::kDoubleValue) {
            p.set_latitude(lat->second.double_value());
          }
          if (lon != m->end() && lon->second.kind_case() == Value::kDoubleValue) {
            p.set_longitude(lon->second.double_value());
          }
          common::v1::GeoPoint c = CoarsenLocation(p, a_.cell_m);
          (*m)["latitude"].set_double_value(c.latitude());
          (*m)["longitude"].set_double_value(c.longitude());
        }
        break;
      case exchange::v1::OBLIGATION_KIND_COARSEN_TIME:
        if (v->kind_case() == Value::kTimeValue) {
          int64_t s = v->time_value().seconds();
          int32_t n = v->time_value().nanos();
          entity_internal::CoarsenTime(a_.granularity_nanos, &s, &n);
          v->mutable_time_value()->set_seconds(s);
          v->mutable_time_value()->set_nanos(n);
        }
        break;
      default:
        break;
    }
  }

  const AttrAction& a_;
  const FastHmacSha256& hmac_;
};

std::string* EntityEnvString(EnvAttr attr, exchange::v1::Entity* e) {
  switch (attr) {
    case EnvAttr::kId:
      return e->mutable_event_id();
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
    default:
      // source, subject, publisher, ... are not part of an entity.
      return nullptr;
  }
}

void ApplyEntityEnvelope(const EnvAction& a, const FastHmacSha256& hmac,
                         exchange::v1::Entity* e) {
  if (a.attr == EnvAttr::kTime) {
    if (a.kind == exchange::v1::OBLIGATION_KIND_REDACT) {
      e->clear_observed_time();
    } else if (a.kind == exchange::v1::OBLIGATION_KIND_COARSEN_TIME && e->has_observed_time()) {
      int64_t s = e->observed_time().seconds();
      int32_t n = e->observed_time().nanos();
      entity_internal::CoarsenTime(a.granularity_nanos, &s, &n);
      e->mutable_observed_time()->set_seconds(s);
      e->mutable_observed_time()->set_nanos(n);
    }
    return;
  }
  if (a.attr == EnvAttr::kClassification) {
    if (a.kind == exchange::v1::OBLIGATION_KIND_REDACT) e->clear_classification();
    return;
  }
  std::string* s = EntityEnvString(a.attr, e);
  if (s == nullptr) return;
  if (a.kind == exchange::v1::OBLIGATION_KIND_REDACT) {
    s->clear();
  } else if (a.kind == exchange::v1::OBLIGATION_KIND_PSEUDONYMIZE && !s->empty()) {
    *s = hmac.Pseudonymize(*s);
  }
}

}  // namespace

absl::Status ObligationApplier::Apply(absl::Span<const Obligation> obligations,
                                      exchange::v1::Entity* entity) {
  if (!AnyChangesData(obligations)) return absl::OkStatus();
  CITYOS_ASSIGN_OR_RETURN(std::shared_ptr<const Plan> plan,
                          impl_->GetPlan(obligations, entity->type()));
  for (const AttrAction& a : plan->attributes) {
    EntityWalker(a, impl_->hmac).Run(plan->descriptor, entity->mutable_attributes());
    // The entity location is the payload's top-level `location`.
    if (a.tokens.size() == 2 && a.tokens[0] == "location" && entity->has_location() &&
        a.kind == exchange::v1::OBLIGATION_KIND_REDACT) {
      if (a.tokens[1] == "latitude") entity->mutable_location()->set_latitude(0);
      if (a.tokens[1] == "longitude") entity->mutable_location()->set_longitude(0);
    }
    if (a.tokens.size() == 1 && a.tokens[0] == "location" && entity->has_location()) {
      if (a.kind == exchange::v1::OBLIGATION_KIND_REDACT) {
        entity->clear_location();
      } else if (a.kind == exchange::v1::OBLIGATION_KIND_COARSEN_LOCATION) {
        *entity->mutable_location() = CoarsenLocation(entity->location(), a.cell_m);
      }
    }
  }
  for (const EnvAction& a : plan->envelope) ApplyEntityEnvelope(a, impl_->hmac, entity);
  return absl::OkStatus();
}

absl::Status ObligationApplier::Check(const Obligation& obligation,
                                      std::string_view payload_type) {
  if (!entity_internal::ChangesData(obligation.kind())) return absl::OkStatus();
  const pb::Descriptor* d = entity_internal::FindPayloadType(payload_type);
  if (d == nullptr) {
    bool payload_paths = false;
    for (const std::string& p : obligation.field_paths()) {
      if (std::string_view(p).substr(0, 6) != "event.") payload_paths = true;
    }
    if (payload_paths) {
      return absl::InvalidArgumentError(
          absl::StrFormat("payload type \"%s\" is unknown to this node", payload_type));
    }
  }
  return entity_internal::CompilePlan({&obligation, 1}, payload_type, d).status();
}

}  // namespace cityos
