// File: cityos/proto_time.h
//
// google.protobuf.Duration / Timestamp <-> absl::Duration / absl::Time, with
// the range checks every service needs for untrusted input:
//
//   CITYOS_ASSIGN_OR_RETURN(absl::Duration ttl, DurationFromProto(request.ttl(), "ttl"));
//   TimestampToProto(lease.expire_time, response->mutable_expire_time());
#ifndef CITYOS_PROTO_TIME_H_
#define CITYOS_PROTO_TIME_H_

#include <string_view>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "google/protobuf/duration.pb.h"
#include "google/protobuf/timestamp.pb.h"

namespace cityos {

// INVALID_ARGUMENT naming `field` when the value is outside the range
// google/protobuf/duration.proto documents (+-10,000 years) or its seconds and
// nanos disagree in sign.
absl::StatusOr<absl::Duration> DurationFromProto(const google::protobuf::Duration& d,
                                                 std::string_view field);
// Infinite durations are clamped to the largest representable one.
void DurationToProto(absl::Duration d, google::protobuf::Duration* out);

// INVALID_ARGUMENT naming `field` when it is outside 0001-01-01..9999-12-31
// or its nanos are out of range.
absl::StatusOr<absl::Time> TimestampFromProto(const google::protobuf::Timestamp& t,
                                              std::string_view field);
// Leaves `out` untouched for an infinite time (the library's "none").
void TimestampToProto(absl::Time t, google::protobuf::Timestamp* out);

}  // namespace cityos

#endif  // CITYOS_PROTO_TIME_H_
