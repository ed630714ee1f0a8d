// Conversions between the cityos.bus.v1 contract and the in-process Bus types
// (cityos/bus.h). Pure functions, no I/O; thread-safe.
//
// Proto -> library conversions check what the library cannot see (unknown
// enum values, malformed Durations and Timestamps, a start position that lacks
// its argument) and return INVALID_ARGUMENT naming the field by its path in
// the request, e.g. "config.sync_interval: must not be negative". Names,
// patterns and overlap are checked by the Bus itself. Unset proto fields (0,
// UNSPECIFIED, absent messages) take the defaults the contract documents:
//
//   StreamConfig: durability FSYNC, sync_interval 100 ms, max_age 0 (keep),
//                 max_bytes 0 (no limit), segment_bytes 64 MiB.
//   ConsumerConfig: start KIND_NEW, ack_wait 30 s, max_in_flight 1024,
//                   max_deliveries 0 (unlimited).
//   StartPosition: KIND_UNSPECIFIED is KIND_NEW.
//
//   CITYOS_ASSIGN_OR_RETURN(StreamConfig config,
//                           StreamConfigFromProto(request.config(), "config"));
#ifndef CITYOS_SERVICES_BUS_BUS_CONVERT_H_
#define CITYOS_SERVICES_BUS_BUS_CONVERT_H_

#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "cityos/bus.h"
#include "cityos/proto_time.h"
#include "cityos/bus/v1/bus.pb.h"
#include "google/protobuf/duration.pb.h"
#include "google/protobuf/timestamp.pb.h"

namespace cityos {

// --- scalars ---

// Durations and timestamps: cityos/proto_time.h.

absl::StatusOr<Durability> DurabilityFromProto(bus::v1::Durability d, std::string_view field);
bus::v1::Durability DurabilityToProto(Durability d);

// --- messages ---

// `field` is the path of `proto` in the request ("config", "start", ...); it
// prefixes every error message.
absl::StatusOr<StartPosition> StartPositionFromProto(const bus::v1::StartPosition& proto,
                                                     std::string_view field);
void StartPositionToProto(const StartPosition& start, bus::v1::StartPosition* out);

absl::StatusOr<StreamConfig> StreamConfigFromProto(const bus::v1::StreamConfig& proto,
                                                   std::string_view field);
void StreamConfigToProto(const StreamConfig& config, bus::v1::StreamConfig* out);
void StreamInfoToProto(const StreamInfo& info, bus::v1::StreamInfo* out);

absl::StatusOr<ConsumerConfig> ConsumerConfigFromProto(const bus::v1::ConsumerConfig& proto,
                                                       std::string_view field);
void ConsumerConfigToProto(const ConsumerConfig& config, bus::v1::ConsumerConfig* out);
void ConsumerInfoToProto(const ConsumerInfo& info, bus::v1::ConsumerInfo* out);

// The library's subscription options for a Subscribe request. `start` is only
// read in replay mode (a stream without a consumer), as the contract says.
absl::StatusOr<SubscribeOptions> SubscribeOptionsFromProto(
    const bus::v1::SubscribeRequest& proto);

void PublishResultToProto(const PublishResult& result, bus::v1::PublishResult* out);

}  // namespace cityos

#endif  // CITYOS_SERVICES_BUS_BUS_CONVERT_H_
