// File: cityos/grpc_util.h
//
// The one place where absl::Status and grpc::Status meet. Service adapters
// convert at the edge:
//
//   grpc::Status Publish(...) override {
//     return cityos::ToGrpcStatus(bus_->Publish(...));
//   }
#ifndef CITYOS_GRPC_UTIL_H_
#define CITYOS_GRPC_UTIL_H_

#include <grpcpp/grpcpp.h>

#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace cityos {

// Same code, same message. (absl and gRPC share the canonical code numbers.)
grpc::Status ToGrpcStatus(const absl::Status& status);
absl::Status FromGrpcStatus(const grpc::Status& status);

// Serving status of a gRPC health check (grpc.health.v1).
enum class HealthStatus { kUnknown, kServing, kNotServing, kServiceUnknown };

// "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN", "UNKNOWN".
const char* HealthStatusName(HealthStatus s);

// Calls grpc.health.v1.Health/Check for `service` ("" = the whole server).
// Errors are the call's status (e.g. UNAVAILABLE when nothing listens, or
// NOT_FOUND when the server does not know `service`).
absl::StatusOr<HealthStatus> CheckHealth(grpc::ChannelInterface& channel,
                                         const std::string& service,
                                         absl::Duration timeout);

}  // namespace cityos

#endif  // CITYOS_GRPC_UTIL_H_
