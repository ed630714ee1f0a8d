#include "registry_service.h"

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "cityos/grpc_util.h"
#include "registry_convert.h"

namespace cityos {
namespace {

using registry::v1::ResolveRequest;

grpc::Status Unavailable() {
  return grpc::Status(grpc::StatusCode::UNAVAILABLE, "the node is shutting down");
}

}  // namespace

RegistryServiceImpl::RegistryServiceImpl(Registry* registry, PrincipalResolver resolver,
                                         RegistryServiceOptions options)
    : registry_(registry), resolver_(std::move(resolver)), options_(options) {}

grpc::Status RegistryServiceImpl::Register(grpc::ServerContext* context,
                                           const registry::v1::RegisterRequest* request,
                                           registry::v1::RegisterResponse* response) {
  absl::StatusOr<Principal> who = resolver_(context);
  if (!who.ok()) return ToGrpcStatus(who.status());
  if (!request->has_registration()) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "registration: required");
  }
  absl::Duration ttl = absl::ZeroDuration();
  if (request->has_ttl()) {
    absl::StatusOr<absl::Duration> d = DurationFromProto(request->ttl(), "ttl");
    if (!d.ok()) return ToGrpcStatus(d.status());
    ttl = *d;
  }
  absl::StatusOr<Lease> lease =
      registry_->Register(*who, ServiceRecordFromProto(request->registration()), ttl);
  if (!lease.ok()) return ToGrpcStatus(lease.status());
  response->set_lease_id(lease->lease_id);
  DurationToProto(lease->ttl, response->mutable_ttl());
  InstanceToProto(lease->instance, response->mutable_instance());
  return grpc::Status::OK;
}

grpc::Status RegistryServiceImpl::Heartbeat(grpc::ServerContext* context,
                                            const registry::v1::HeartbeatRequest* request,
                                            registry::v1::HeartbeatResponse* response) {
  absl::StatusOr<Principal> who = resolver_(context);
  if (!who.ok()) return ToGrpcStatus(who.status());
  absl::StatusOr<Lease> lease = registry_->Heartbeat(*who, request->lease_id());
  if (!lease.ok()) return ToGrpcStatus(lease.status());
  DurationToProto(lease->ttl, response->mutable_ttl());
  TimestampToProto(lease->instance.expire_time, response->mutable_expire_time());
  return grpc::Status::OK;
}

grpc::Status RegistryServiceImpl::Deregister(grpc::ServerContext* context,
                                             const registry::v1::DeregisterRequest* request,
                                             registry::v1::DeregisterResponse* response) {
  absl::StatusOr<Principal> who = resolver_(context);
  if (!who.ok()) return ToGrpcStatus(who.status());
  return ToGrpcStatus(registry_->Deregister(*who, request->lease_id()));
}

grpc::Status RegistryServiceImpl::Resolve(grpc::ServerContext* context,
                                          const registry::v1::ResolveRequest* request,
                                          registry::v1::ResolveResponse* response) {
  absl::StatusOr<Principal> who = resolver_(context);
  if (!who.ok()) return ToGrpcStatus(who.status());
  std::string_view name;
  std::string_view proto_service;
  switch (request->target_case()) {
    case ResolveRequest::kName:
      if (request->name().empty()) {
        return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "name: must not be empty");
      }
      name = request->name();
      break;
    case ResolveRequest::kProtoService:
      if (request->proto_service().empty()) {
        return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                            "proto_service: must not be empty");
      }
      proto_service = request->proto_service();
      break;
    case ResolveRequest::TARGET_NOT_SET:
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                          "target: one of name and proto_service is required");
  }
  absl::StatusOr<std::vector<InstanceInfo>> found =
      registry_->Resolve(name, proto_service, request->org());
  if (!found.ok()) return ToGrpcStatus(found.status());
  for (const InstanceInfo& info : *found) InstanceToProto(info, response->add_instances());
  return grpc::Status::OK;
}

grpc::Status RegistryServiceImpl::List(grpc::ServerContext* context,
                                       const registry::v1::ListRequest* request,
                                       registry::v1::ListResponse* response) {
  absl::StatusOr<Principal> who = resolver_(context);
  if (!who.ok()) return ToGrpcStatus(who.status());
  absl::StatusOr<std::vector<InstanceInfo>> found =
      registry_->List(InstanceFilterFromProto(request->filter()));
  if (!found.ok()) return ToGrpcStatus(found.status());
  for (const InstanceInfo& info : *found) InstanceToProto(info, response->add_instances());
  return grpc::Status::OK;
}

grpc::Status RegistryServiceImpl::Watch(grpc::ServerContext* context,
                                        const registry::v1::WatchRequest* request,
                                        grpc::ServerWriter<registry::v1::WatchResponse>* writer) {
  absl::StatusOr<Principal> who = resolver_(context);
  if (!who.ok()) return ToGrpcStatus(who.status());
  if (draining_.load()) return Unavailable();
  std::vector<Change> snapshot;
  absl::StatusOr<std::unique_ptr<Watcher>> watcher =
      registry_->Watch(InstanceFilterFromProto(request->filter()),
                       request->initial_snapshot() ? &snapshot : nullptr);
  if (!watcher.ok()) return ToGrpcStatus(watcher.status());
  // The watch is in place: every change from now on reaches this call.
  writer->SendInitialMetadata();
  if (request->initial_snapshot()) {
    registry::v1::WatchResponse response;
    response.set_snapshot(true);
    for (const Change& c : snapshot) ChangeToProto(c, response.add_changes());
    if (!writer->Write(response)) {
      return grpc::Status(grpc::StatusCode::CANCELLED, "the call was cancelled");
    }
  }
  while (!context->IsCancelled()) {
    if (draining_.load()) return Unavailable();
    absl::StatusOr<std::vector<Change>> changes =
        (*watcher)->Next(options_.max_changes_per_response, options_.poll_interval);
    if (!changes.ok()) return ToGrpcStatus(changes.status());
    if (changes->empty()) continue;
    registry::v1::WatchResponse response;
    for (const Change& c : *changes) ChangeToProto(c, response.add_changes());
    if (!writer->Write(response)) break;
  }
  return grpc::Status(grpc::StatusCode::CANCELLED, "the call was cancelled");
}

}  // namespace cityos
