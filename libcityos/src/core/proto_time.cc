#include "cityos/proto_time.h"

#include "absl/strings/str_format.h"

namespace cityos {
namespace {

constexpr int64_t kMaxDurationSeconds = 315'576'000'000;
constexpr int64_t kMinTimestampSeconds = -62'135'596'800;  // 0001-01-01T00:00:00Z
constexpr int64_t kMaxTimestampSeconds = 253'402'300'799;  // 9999-12-31T23:59:59Z
constexpr int32_t kMaxNanos = 999'999'999;

absl::Status Invalid(std::string_view field, std::string_view message) {
  return absl::InvalidArgumentError(absl::StrFormat("%s: %s", field, message));
}

bool IsFinite(absl::Time t) {
  return t != absl::InfinitePast() && t != absl::InfiniteFuture();
}

}  // namespace

absl::StatusOr<absl::Duration> DurationFromProto(const google::protobuf::Duration& d,
                                                 std::string_view field) {
  if (d.seconds() < -kMaxDurationSeconds || d.seconds() > kMaxDurationSeconds) {
    return Invalid(field, absl::StrFormat("seconds %d is out of range", d.seconds()));
  }
  if (d.nanos() < -kMaxNanos || d.nanos() > kMaxNanos) {
    return Invalid(field, absl::StrFormat("nanos %d is out of range", d.nanos()));
  }
  if ((d.seconds() < 0 && d.nanos() > 0) || (d.seconds() > 0 && d.nanos() < 0)) {
    return Invalid(field, "seconds and nanos have different signs");
  }
  return absl::Seconds(d.seconds()) + absl::Nanoseconds(d.nanos());
}

void DurationToProto(absl::Duration d, google::protobuf::Duration* out) {
  if (d == absl::InfiniteDuration()) d = absl::Seconds(kMaxDurationSeconds);
  if (d == -absl::InfiniteDuration()) d = -absl::Seconds(kMaxDurationSeconds);
  int64_t seconds = absl::IDivDuration(d, absl::Seconds(1), &d);
  out->set_seconds(seconds);
  out->set_nanos(static_cast<int32_t>(absl::ToInt64Nanoseconds(d)));
}

absl::StatusOr<absl::Time> TimestampFromProto(const google::protobuf::Timestamp& t,
                                              std::string_view field) {
  if (t.seconds() < kMinTimestampSeconds || t.seconds() > kMaxTimestampSeconds) {
    return Invalid(field, absl::StrFormat("seconds %d is outside 0001-01-01..9999-12-31",
                                          t.seconds()));
  }
  if (t.nanos() < 0 || t.nanos() > kMaxNanos) {
    return Invalid(field, absl::StrFormat("nanos %d is out of range", t.nanos()));
  }
  return absl::FromUnixSeconds(t.seconds()) + absl::Nanoseconds(t.nanos());
}

void TimestampToProto(absl::Time t, google::protobuf::Timestamp* out) {
  if (!IsFinite(t)) return;
  // ToUnixSeconds rounds towards the infinite past, so the rest is in [0, 1s).
  const int64_t seconds = absl::ToUnixSeconds(t);
  out->set_seconds(seconds);
  out->set_nanos(static_cast<int32_t>(absl::ToInt64Nanoseconds(t - absl::FromUnixSeconds(seconds))));
}

}  // namespace cityos
