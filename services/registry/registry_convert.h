// Conversions between the cityos.registry.v1 contract and the registry's
// library types (registry.h). Pure functions, no I/O; thread-safe.
//
// Proto -> library conversions only check what the library cannot see
// (malformed Durations); field contents are checked by the Registry, whose
// messages name the field by its path in the request.
//
//   ServiceRecord record = ServiceRecordFromProto(request.registration());
//   CITYOS_ASSIGN_OR_RETURN(absl::Duration ttl, DurationFromProto(request.ttl(), "ttl"));
#ifndef CITYOS_SERVICES_REGISTRY_REGISTRY_CONVERT_H_
#define CITYOS_SERVICES_REGISTRY_REGISTRY_CONVERT_H_

#include <string_view>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "cityos/proto_time.h"
#include "cityos/registry/v1/registry.pb.h"
#include "registry.h"

namespace cityos {

// Durations and timestamps: cityos/proto_time.h.

ServiceRecord ServiceRecordFromProto(const registry::v1::ServiceRegistration& proto);
void ServiceRecordToProto(const ServiceRecord& record, registry::v1::ServiceRegistration* out);

void InstanceToProto(const InstanceInfo& info, registry::v1::ServiceInstance* out);
InstanceInfo InstanceFromProto(const registry::v1::ServiceInstance& proto);

InstanceFilter InstanceFilterFromProto(const registry::v1::InstanceFilter& proto);

registry::v1::ChangeType ChangeTypeToProto(ChangeType t);
registry::v1::ChangeReason ChangeReasonToProto(ChangeReason r);
void ChangeToProto(const Change& change, registry::v1::ServiceChange* out);

}  // namespace cityos

#endif  // CITYOS_SERVICES_REGISTRY_REGISTRY_CONVERT_H_
