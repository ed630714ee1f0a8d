// cityos.registry.v1.RegistryService over a Registry (registry.h). A thin
// adapter: it learns the caller from a PrincipalResolver, translates proto <->
// library (registry_convert.h) and absl::Status <-> grpc::Status
// (cityos::ToGrpcStatus), and owns no registry state of its own.
//
//   std::unique_ptr<Registry> registry = Registry::Create({});
//   RegistryServiceImpl service(registry.get(), [&](grpc::ServerContext* call) {
//     return context.Authenticate(*call);
//   });
//   builder.RegisterService(&service);
//
// Every RPC first resolves its caller; a resolver error (UNAUTHENTICATED) is
// returned as is. Any authenticated caller may Resolve, List and Watch.
//
// Watch: after the watch is in place the call sends its initial metadata (so a
// client knows every later change will reach it), then the snapshot if asked
// for, then changes in the order applied, at most `max_changes_per_response`
// per message. It polls its Watcher every `poll_interval` to notice a
// cancelled call or the node draining (BeginShutdown): the stream then ends
// with CANCELLED or UNAVAILABLE. A watcher that falls too far behind ends with
// RESOURCE_EXHAUSTED. With the synchronous gRPC API every open Watch holds a
// server thread.
#ifndef CITYOS_SERVICES_REGISTRY_REGISTRY_SERVICE_H_
#define CITYOS_SERVICES_REGISTRY_REGISTRY_SERVICE_H_

#include <grpcpp/grpcpp.h>

#include <atomic>
#include <cstddef>
#include <functional>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "cityos/principal.h"
#include "cityos/registry/v1/registry.grpc.pb.h"
#include "registry.h"

namespace cityos {

// Who is calling. OK with the caller's principal, or UNAUTHENTICATED (or any
// other error, returned to the caller as is). Must be thread-safe. (The same
// type as the bus service's.)
using PrincipalResolver = std::function<absl::StatusOr<Principal>(grpc::ServerContext*)>;

struct RegistryServiceOptions {
  // Watch: how long one wait for changes lasts before the call checks whether
  // it was cancelled or the node is draining. Default: 100 ms.
  absl::Duration poll_interval = absl::Milliseconds(100);
  // Watch: most changes per response after the snapshot. Default: 256.
  size_t max_changes_per_response = 256;
};

class RegistryServiceImpl final : public registry::v1::RegistryService::Service {
 public:
  // `registry` is not owned and must outlive the service and every call on it.
  // REQUIRES: registry != nullptr, resolver is set.
  RegistryServiceImpl(Registry* registry, PrincipalResolver resolver,
                      RegistryServiceOptions options = {});

  // From now on open Watch calls end with UNAVAILABLE within one poll
  // interval and new ones are refused (the node is stopping). Unary calls keep
  // working. Thread-safe.
  void BeginShutdown() { draining_.store(true); }

  grpc::Status Register(grpc::ServerContext* context,
                        const registry::v1::RegisterRequest* request,
                        registry::v1::RegisterResponse* response) override;
  grpc::Status Heartbeat(grpc::ServerContext* context,
                         const registry::v1::HeartbeatRequest* request,
                         registry::v1::HeartbeatResponse* response) override;
  grpc::Status Deregister(grpc::ServerContext* context,
                          const registry::v1::DeregisterRequest* request,
                          registry::v1::DeregisterResponse* response) override;
  grpc::Status Resolve(grpc::ServerContext* context, const registry::v1::ResolveRequest* request,
                       registry::v1::ResolveResponse* response) override;
  grpc::Status List(grpc::ServerContext* context, const registry::v1::ListRequest* request,
                    registry::v1::ListResponse* response) override;
  grpc::Status Watch(grpc::ServerContext* context, const registry::v1::WatchRequest* request,
                     grpc::ServerWriter<registry::v1::WatchResponse>* writer) override;

 private:
  Registry* const registry_;
  const PrincipalResolver resolver_;
  const RegistryServiceOptions options_;
  std::atomic<bool> draining_{false};
};

}  // namespace cityos

#endif  // CITYOS_SERVICES_REGISTRY_REGISTRY_SERVICE_H_
