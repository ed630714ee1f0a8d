#include "registry_convert.h"

#include <cstdint>
#include <string>

#include "absl/strings/str_format.h"
#include "cityos/event.h"

namespace cityos {

ServiceRecord ServiceRecordFromProto(const registry::v1::ServiceRegistration& p) {
  ServiceRecord r;
  r.name = p.name();
  r.org = p.org();
  r.domain = p.domain();
  r.endpoint = p.endpoint();
  r.proto_services.assign(p.proto_services().begin(), p.proto_services().end());
  r.published_subjects.assign(p.published_subjects().begin(), p.published_subjects().end());
  r.version = p.version();
  r.labels.insert(p.labels().begin(), p.labels().end());
  return r;
}

void ServiceRecordToProto(const ServiceRecord& r, registry::v1::ServiceRegistration* out) {
  out->set_name(r.name);
  out->set_org(r.org);
  out->set_domain(r.domain);
  out->set_endpoint(r.endpoint);
  for (const std::string& s : r.proto_services) out->add_proto_services(s);
  for (const std::string& s : r.published_subjects) out->add_published_subjects(s);
  out->set_version(r.version);
  for (const auto& [k, v] : r.labels) (*out->mutable_labels())[k] = v;
}

void InstanceToProto(const InstanceInfo& info, registry::v1::ServiceInstance* out) {
  ServiceRecordToProto(info.record, out->mutable_registration());
  out->set_principal(info.principal);
  TimestampToProto(info.register_time, out->mutable_register_time());
  TimestampToProto(info.heartbeat_time, out->mutable_heartbeat_time());
  TimestampToProto(info.expire_time, out->mutable_expire_time());
}

InstanceInfo InstanceFromProto(const registry::v1::ServiceInstance& p) {
  InstanceInfo info;
  info.record = ServiceRecordFromProto(p.registration());
  info.principal = p.principal();
  info.register_time = ToAbslTime(p.register_time());
  info.heartbeat_time = ToAbslTime(p.heartbeat_time());
  info.expire_time = ToAbslTime(p.expire_time());
  return info;
}

InstanceFilter InstanceFilterFromProto(const registry::v1::InstanceFilter& p) {
  return {.org = p.org(), .name = p.name(), .domain = p.domain(),
          .proto_service = p.proto_service()};
}

registry::v1::ChangeType ChangeTypeToProto(ChangeType t) {
  switch (t) {
    case ChangeType::kAdded:
      return registry::v1::CHANGE_TYPE_ADDED;
    case ChangeType::kUpdated:
      return registry::v1::CHANGE_TYPE_UPDATED;
    case ChangeType::kRemoved:
      return registry::v1::CHANGE_TYPE_REMOVED;
  }
  return registry::v1::CHANGE_TYPE_UNSPECIFIED;
}

registry::v1::ChangeReason ChangeReasonToProto(ChangeReason r) {
  switch (r) {
    case ChangeReason::kSnapshot:
      return registry::v1::CHANGE_REASON_SNAPSHOT;
    case ChangeReason::kRegistered:
      return registry::v1::CHANGE_REASON_REGISTERED;
    case ChangeReason::kLeaseExpired:
      return registry::v1::CHANGE_REASON_LEASE_EXPIRED;
    case ChangeReason::kDeregistered:
      return registry::v1::CHANGE_REASON_DEREGISTERED;
  }
  return registry::v1::CHANGE_REASON_UNSPECIFIED;
}

void ChangeToProto(const Change& change, registry::v1::ServiceChange* out) {
  out->set_type(ChangeTypeToProto(change.type));
  out->set_reason(ChangeReasonToProto(change.reason));
  InstanceToProto(change.instance, out->mutable_instance());
  TimestampToProto(change.time, out->mutable_time());
  out->set_revision(change.revision);
}

}  // namespace cityos
