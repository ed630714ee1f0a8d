// The entity view of an event (EntityFromEvent) and attribute projection
// (cityos/entity.h; mapping rules in docs/entities.md).
#include <cmath>
#include <limits>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "cityos/entity.h"
#include "cityos/status.h"
#include "core/strings.h"
#include "entity/entity_internal.h"
#include "google/protobuf/descriptor.h"
#include "google/protobuf/dynamic_message.h"
#include "google/protobuf/message.h"

namespace cityos {
namespace entity_internal {

namespace pb = google::protobuf;

std::string_view TypeNameFromUrl(std::string_view type_url) {
  size_t slash = type_url.rfind('/');
  return slash == std::string_view::npos ? type_url : type_url.substr(slash + 1);
}

const pb::Descriptor* FindPayloadType(std::string_view name) {
  return pb::DescriptorPool::generated_pool()->FindMessageTypeByName(std::string(name));
}

bool IsGeoPointType(const pb::Descriptor* d) {
  return d->full_name() == "cityos.common.v1.GeoPoint";
}

namespace {

// The prototype of a payload type, or null when the type is unknown.
const pb::Message* PrototypeFor(std::string_view type) {
  // Looking a type up in the generated pool takes the pool's lock and builds
  // a std::string, and the factory takes its own lock: per event on the
  // ingest path that is a good part of the view's cost. Known types are
  // remembered per thread (descriptors and prototypes of the generated pool
  // live as long as the process); unknown ones are not, since the pool can
  // still learn them and a producer sending random type names must not grow
  // the cache.
  thread_local absl::flat_hash_map<std::string, const pb::Message*> cache;
  auto it = cache.find(AV(type));
  if (it != cache.end()) return it->second;
  const pb::Descriptor* d = FindPayloadType(type);
  if (d == nullptr) return nullptr;
  const pb::Message* prototype = pb::MessageFactory::generated_factory()->GetPrototype(d);
  if (prototype == nullptr) {
    // Types in the generated pool always have a generated prototype; the
    // dynamic factory covers descriptors linked without their classes.
    static pb::DynamicMessageFactory* dynamic = new pb::DynamicMessageFactory();
    static absl::Mutex* mu = new absl::Mutex();
    absl::MutexLock lock(mu);
    prototype = dynamic->GetPrototype(d);
  }
  if (prototype != nullptr) cache.emplace(std::string(type), prototype);
  return prototype;
}

}  // namespace

absl::StatusOr<std::unique_ptr<pb::Message>> ParsePayload(const pb::Any& any) {
  std::string_view type = TypeNameFromUrl(any.type_url());
  const pb::Message* prototype = PrototypeFor(type);
  if (prototype == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrFormat("payload type \"%s\" is unknown to this node", type));
  }
  std::unique_ptr<pb::Message> m(prototype->New());
  if (!m->ParseFromString(any.value())) {
    return absl::InvalidArgumentError(
        absl::StrFormat("payload of type \"%s\" does not parse", type));
  }
  return m;
}

namespace {

using exchange::v1::Value;

void MessageToValueMap(const pb::Message& m, exchange::v1::ValueMap* out);

// A scalar element of field `f` (repeated: at `index`; else index -1).
void ScalarToValue(const pb::Message& m, const pb::FieldDescriptor* f, int index, Value* v) {
  const pb::Reflection* r = m.GetReflection();
  bool rep = index >= 0;
  switch (f->cpp_type()) {
    case pb::FieldDescriptor::CPPTYPE_INT32:
      v->set_int_value(rep ? r->GetRepeatedInt32(m, f, index) : r->GetInt32(m, f));
      break;
    case pb::FieldDescriptor::CPPTYPE_INT64:
      v->set_int_value(rep ? r->GetRepeatedInt64(m, f, index) : r->GetInt64(m, f));
      break;
    case pb::FieldDescriptor::CPPTYPE_UINT32:
      v->set_int_value(rep ? r->GetRepeatedUInt32(m, f, index) : r->GetUInt32(m, f));
      break;
    case pb::FieldDescriptor::CPPTYPE_UINT64: {
      uint64_t u = rep ? r->GetRepeatedUInt64(m, f, index) : r->GetUInt64(m, f);
      // Above int64's range the value can only be kept approximately.
      if (u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
        v->set_double_value(static_cast<double>(u));
      } else {
        v->set_int_value(static_cast<int64_t>(u));
      }
      break;
    }
    case pb::FieldDescriptor::CPPTYPE_DOUBLE:
      v->set_double_value(rep ? r->GetRepeatedDouble(m, f, index) : r->GetDouble(m, f));
      break;
    case pb::FieldDescriptor::CPPTYPE_FLOAT:
      v->set_double_value(rep ? r->GetRepeatedFloat(m, f, index) : r->GetFloat(m, f));
      break;
    case pb::FieldDescriptor::CPPTYPE_BOOL:
      v->set_bool_value(rep ? r->GetRepeatedBool(m, f, index) : r->GetBool(m, f));
      break;
    case pb::FieldDescriptor::CPPTYPE_ENUM: {
      int number = rep ? r->GetRepeatedEnumValue(m, f, index) : r->GetEnumValue(m, f);
      const pb::EnumValueDescriptor* e = f->enum_type()->FindValueByNumber(number);
      // An enum number this binary does not know stays a number.
      if (e != nullptr) {
        v->set_string_value(e->name());
      } else {
        v->set_int_value(number);
      }
      break;
    }
    case pb::FieldDescriptor::CPPTYPE_STRING: {
      std::string s = rep ? r->GetRepeatedString(m, f, index) : r->GetString(m, f);
      if (f->type() == pb::FieldDescriptor::TYPE_BYTES) {
        v->set_bytes_value(std::move(s));
      } else {
        v->set_string_value(std::move(s));
      }
      break;
    }
    case pb::FieldDescriptor::CPPTYPE_MESSAGE:
      break;  // handled by the caller
  }
}

void MessageToValue(const pb::Message& m, Value* v) {
  const pb::Descriptor* d = m.GetDescriptor();
  const std::string& name = d->full_name();
  const pb::Reflection* r = m.GetReflection();
  if (name == "google.protobuf.Timestamp" || name == "google.protobuf.Duration") {
    int64_t seconds = r->GetInt64(m, d->field(0));
    int32_t nanos = r->GetInt32(m, d->field(1));
    auto* t = name == "google.protobuf.Timestamp"
                  ? static_cast<pb::Message*>(v->mutable_time_value())
                  : static_cast<pb::Message*>(v->mutable_duration_value());
    // Both well-known types are {int64 seconds = 1; int32 nanos = 2;}.
    t->GetReflection()->SetInt64(t, t->GetDescriptor()->field(0), seconds);
    t->GetReflection()->SetInt32(t, t->GetDescriptor()->field(1), nanos);
    return;
  }
  if (IsGeoPointType(d)) {
    v->mutable_geo_value()->CopyFrom(m);
    return;
  }
  if (d->well_known_type() >= pb::Descriptor::WELLKNOWNTYPE_DOUBLEVALUE &&
      d->well_known_type() <= pb::Descriptor::WELLKNOWNTYPE_BOOLVALUE) {
    // Wrappers (google.protobuf.DoubleValue, ...) are their value.
    ScalarToValue(m, d->field(0), -1, v);
    return;
  }
  MessageToValueMap(m, v->mutable_map_value());
}

// The key of a map entry as text.
std::string MapKeyText(const pb::Message& entry, const pb::FieldDescriptor* key) {
  const pb::Reflection* r = entry.GetReflection();
  switch (key->cpp_type()) {
    case pb::FieldDescriptor::CPPTYPE_STRING:
      return r->GetString(entry, key);
    case pb::FieldDescriptor::CPPTYPE_INT32:
      return absl::StrCat(r->GetInt32(entry, key));
    case pb::FieldDescriptor::CPPTYPE_INT64:
      return absl::StrCat(r->GetInt64(entry, key));
    case pb::FieldDescriptor::CPPTYPE_UINT32:
      return absl::StrCat(r->GetUInt32(entry, key));
    case pb::FieldDescriptor::CPPTYPE_UINT64:
      return absl::StrCat(r->GetUInt64(entry, key));
    case pb::FieldDescriptor::CPPTYPE_BOOL:
      return r->GetBool(entry, key) ? "true" : "false";
    default:
      return "";
  }
}

void ElementToValue(const pb::Message& m, const pb::FieldDescriptor* f, int index, Value* v) {
  const pb::Reflection* r = m.GetReflection();
  if (f->cpp_type() == pb::FieldDescriptor::CPPTYPE_MESSAGE) {
    MessageToValue(index >= 0 ? r->GetRepeatedMessage(m, f, index) : r->GetMessage(m, f), v);
  } else {
    ScalarToValue(m, f, index, v);
  }
}

// Whether field `f` of `m` contributes an attribute: explicit-presence
// fields when set; implicit-presence numbers and bools always (0 free beds
// is a fact); strings and bytes when non-empty and enums when not 0 (the
// proto3 conventions for "not given"); repeated and map fields when not
// empty.
bool Contributes(const pb::Message& m, const pb::FieldDescriptor* f) {
  const pb::Reflection* r = m.GetReflection();
  if (f->is_repeated()) return r->FieldSize(m, f) > 0;
  if (f->has_presence()) return r->HasField(m, f);
  switch (f->cpp_type()) {
    case pb::FieldDescriptor::CPPTYPE_STRING:
    case pb::FieldDescriptor::CPPTYPE_ENUM:
      return r->HasField(m, f);
    default:
      return true;
  }
}

// The unit of numeric field `f`: the string sibling `<name>_unit`, or for a
// field named `value` the sibling `unit` (cityos payloads such as
// carbon.v1.MeterReading carry units that way).
const pb::FieldDescriptor* UnitField(const pb::FieldDescriptor* f) {
  // Descriptors of the generated pool live as long as the process; the
  // answer per field is remembered per thread (no lock on the ingest path).
  thread_local absl::flat_hash_map<const pb::FieldDescriptor*, const pb::FieldDescriptor*> cache;
  auto it = cache.find(f);
  if (it != cache.end()) return it->second;
  const pb::Descriptor* d = f->containing_type();
  const pb::FieldDescriptor* u = d->FindFieldByName(f->name() + "_unit");
  if (u == nullptr && f->name() == "value") u = d->FindFieldByName("unit");
  if (u != nullptr &&
      (u->is_repeated() || u->cpp_type() != pb::FieldDescriptor::CPPTYPE_STRING)) {
    u = nullptr;
  }
  cache.emplace(f, u);
  return u;
}

std::string UnitOf(const pb::Message& m, const pb::FieldDescriptor* f) {
  const pb::FieldDescriptor* u = UnitField(f);
  return u == nullptr ? std::string() : m.GetReflection()->GetString(m, u);
}

void MessageToValueMap(const pb::Message& m, exchange::v1::ValueMap* out) {
  const pb::Descriptor* d = m.GetDescriptor();
  const pb::Reflection* r = m.GetReflection();
  auto* fields = out->mutable_fields();
  for (int i = 0; i < d->field_count(); ++i) {
    const pb::FieldDescriptor* f = d->field(i);
    if (!Contributes(m, f)) continue;
    Value& v = (*fields)[f->name()];
    if (f->is_map()) {
      const pb::Descriptor* entry = f->message_type();
      const pb::FieldDescriptor* key = entry->map_key();
      const pb::FieldDescriptor* value = entry->map_value();
      auto* map = v.mutable_map_value()->mutable_fields();
      for (int j = 0; j < r->FieldSize(m, f); ++j) {
        const pb::Message& e = r->GetRepeatedMessage(m, f, j);
        ElementToValue(e, value, -1, &(*map)[MapKeyText(e, key)]);
      }
    } else if (f->is_repeated()) {
      auto* list = v.mutable_list_value()->mutable_values();
      for (int j = 0; j < r->FieldSize(m, f); ++j) ElementToValue(m, f, j, list->Add());
    } else {
      ElementToValue(m, f, -1, &v);
      if (v.kind_case() == Value::kIntValue || v.kind_case() == Value::kDoubleValue) {
        std::string unit = UnitOf(m, f);
        if (!unit.empty()) v.set_unit(std::move(unit));
      }
    }
  }
}

}  // namespace

void PayloadToAttributes(const pb::Message& payload, exchange::v1::Entity* entity) {
  exchange::v1::ValueMap map;
  MessageToValueMap(payload, &map);
  entity->mutable_attributes()->swap(*map.mutable_fields());
  // The `location` field of each payload type, if it is a GeoPoint;
  // remembered per thread like UnitField's answers.
  thread_local absl::flat_hash_map<const pb::Descriptor*, const pb::FieldDescriptor*> locations;
  const pb::Descriptor* d = payload.GetDescriptor();
  auto it = locations.find(d);
  if (it == locations.end()) {
    const pb::FieldDescriptor* f = d->FindFieldByName("location");
    if (f != nullptr && (f->is_repeated() || f->cpp_type() != pb::FieldDescriptor::CPPTYPE_MESSAGE ||
                         !IsGeoPointType(f->message_type()))) {
      f = nullptr;
    }
    it = locations.emplace(d, f).first;
  }
  const pb::FieldDescriptor* loc = it->second;
  if (loc != nullptr && payload.GetReflection()->HasField(payload, loc)) {
    entity->mutable_location()->CopyFrom(payload.GetReflection()->GetMessage(payload, loc));
  }
}

}  // namespace entity_internal

const std::string& EntityIdOf(const event::v1::Event& event) {
  // Events carry a handful of extensions at most, so a scan beats hashing
  // the key (live subscriptions ask this for every event).
  const auto& ext = event.extensions();
  if (ext.size() <= 4) {
    constexpr std::string_view kKey = kEntityIdExtension;
    for (const auto& [key, value] : ext) {
      if (key == kKey) return value.empty() ? event.source() : value;
    }
    return event.source();
  }
  auto it = ext.find(kEntityIdExtension);
  return it != ext.end() && !it->second.empty() ? it->second : event.source();
}

absl::StatusOr<exchange::v1::Entity> EntityFromEvent(const event::v1::Event& event) {
  exchange::v1::Entity e;
  e.set_type(event.type());
  e.set_id(EntityIdOf(event));
  if (event.has_proto_data()) {
    CITYOS_ASSIGN_OR_RETURN(std::unique_ptr<google::protobuf::Message> payload,
                            entity_internal::ParsePayload(event.proto_data()));
    entity_internal::PayloadToAttributes(*payload, &e);
  }
  if (event.has_time()) *e.mutable_observed_time() = event.time();
  e.set_domain(event.domain());
  e.set_classification(event.classification());
  e.set_owner(event.owner());
  e.set_region(event.region());
  e.set_jurisdiction(event.jurisdiction());
  e.set_data_subject(event.data_subject());
  e.set_event_id(event.id());
  return e;
}

namespace {

// A tree of projected paths: a node with `whole` keeps its subtree.
struct ProjectionNode {
  bool whole = false;
  absl::flat_hash_map<std::string, std::unique_ptr<ProjectionNode>> children;
};

void Prune(const ProjectionNode& node, google::protobuf::Map<std::string, exchange::v1::Value>* map);

void PruneValue(const ProjectionNode& node, exchange::v1::Value* v) {
  if (node.whole) return;
  if (v->kind_case() == exchange::v1::Value::kMapValue) {
    Prune(node, v->mutable_map_value()->mutable_fields());
  } else if (v->kind_case() == exchange::v1::Value::kListValue) {
    // A path through a list applies to every element.
    for (auto& element : *v->mutable_list_value()->mutable_values()) PruneValue(node, &element);
  }
}

void Prune(const ProjectionNode& node,
           google::protobuf::Map<std::string, exchange::v1::Value>* map) {
  for (auto it = map->begin(); it != map->end();) {
    auto child = node.children.find(it->first);
    if (child == node.children.end()) {
      it = map->erase(it);
      continue;
    }
    PruneValue(*child->second, &it->second);
    ++it;
  }
}

}  // namespace

absl::Status Project(absl::Span<const std::string> paths, exchange::v1::Entity* entity) {
  if (paths.empty()) return absl::OkStatus();
  ProjectionNode root;
  std::vector<std::string_view> tokens;
  for (size_t i = 0; i < paths.size(); ++i) {
    CITYOS_RETURN_IF_ERROR(
        entity_internal::SplitPath(paths[i], absl::StrFormat("projection[%d]", i), &tokens));
    ProjectionNode* node = &root;
    for (std::string_view t : tokens) {
      auto& child = node->children[std::string(t)];
      if (child == nullptr) child = std::make_unique<ProjectionNode>();
      node = child.get();
    }
    node->whole = true;
  }
  Prune(root, entity->mutable_attributes());
  return absl::OkStatus();
}

}  // namespace cityos
