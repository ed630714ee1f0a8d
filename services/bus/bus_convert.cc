#include "bus_convert.h"

#include <cstdint>
#include <string>

#include "absl/strings/str_format.h"

namespace cityos {
namespace {

// Limits of google.protobuf.Duration and Timestamp (see their .proto files).

// Defaults the contract documents for unset fields.
constexpr absl::Duration kDefaultSyncInterval = absl::Milliseconds(100);
constexpr uint64_t kDefaultSegmentBytes = 64ull << 20;
constexpr absl::Duration kDefaultAckWait = absl::Seconds(30);
constexpr uint32_t kDefaultMaxInFlight = 1024;

std::string Sub(std::string_view parent, std::string_view child) {
  if (parent.empty()) return std::string(child);
  return absl::StrFormat("%s.%s", parent, child);
}

absl::Status Invalid(std::string_view field, std::string_view message) {
  return absl::InvalidArgumentError(absl::StrFormat("%s: %s", field, message));
}

// An optional Duration field: `fallback` when absent or zero; negative is an
// error.
absl::StatusOr<absl::Duration> OptionalDuration(bool present, const google::protobuf::Duration& d,
                                                std::string_view field,
                                                absl::Duration fallback) {
  if (!present) return fallback;
  absl::StatusOr<absl::Duration> v = DurationFromProto(d, field);
  if (!v.ok()) return v.status();
  if (*v < absl::ZeroDuration()) return Invalid(field, "must not be negative");
  if (*v == absl::ZeroDuration()) return fallback;
  return *v;
}

bool IsFinite(absl::Time t) {
  return t != absl::InfinitePast() && t != absl::InfiniteFuture();
}

}  // namespace





absl::StatusOr<Durability> DurabilityFromProto(bus::v1::Durability d, std::string_view field) {
  switch (d) {
    case bus::v1::DURABILITY_UNSPECIFIED:
    case bus::v1::DURABILITY_FSYNC:
      return Durability::kFsync;
    case bus::v1::DURABILITY_INTERVAL:
      return Durability::kInterval;
    case bus::v1::DURABILITY_NONE:
      return Durability::kNone;
    default:
      return Invalid(field, absl::StrFormat("unknown value %d", static_cast<int>(d)));
  }
}

bus::v1::Durability DurabilityToProto(Durability d) {
  switch (d) {
    case Durability::kFsync:
      return bus::v1::DURABILITY_FSYNC;
    case Durability::kInterval:
      return bus::v1::DURABILITY_INTERVAL;
    case Durability::kNone:
      return bus::v1::DURABILITY_NONE;
  }
  return bus::v1::DURABILITY_UNSPECIFIED;
}

absl::StatusOr<StartPosition> StartPositionFromProto(const bus::v1::StartPosition& proto,
                                                     std::string_view field) {
  using P = bus::v1::StartPosition;
  switch (proto.kind()) {
    case P::KIND_UNSPECIFIED:
    case P::KIND_NEW:
      return StartPosition::New();
    case P::KIND_EARLIEST:
      return StartPosition::Earliest();
    case P::KIND_LAST:
      return StartPosition::Last();
    case P::KIND_SEQUENCE:
      if (proto.sequence() == 0) {
        return Invalid(Sub(field, "sequence"), "must be at least 1 with KIND_SEQUENCE");
      }
      return StartPosition::AtSequence(proto.sequence());
    case P::KIND_TIME: {
      if (!proto.has_time()) return Invalid(Sub(field, "time"), "required with KIND_TIME");
      absl::StatusOr<absl::Time> t = TimestampFromProto(proto.time(), Sub(field, "time"));
      if (!t.ok()) return t.status();
      return StartPosition::AtTime(*t);
    }
    default:
      return Invalid(Sub(field, "kind"),
                     absl::StrFormat("unknown value %d", static_cast<int>(proto.kind())));
  }
}

void StartPositionToProto(const StartPosition& start, bus::v1::StartPosition* out) {
  using P = bus::v1::StartPosition;
  out->Clear();
  switch (start.kind) {
    case StartPosition::Kind::kNew:
      out->set_kind(P::KIND_NEW);
      break;
    case StartPosition::Kind::kEarliest:
      out->set_kind(P::KIND_EARLIEST);
      break;
    case StartPosition::Kind::kLast:
      out->set_kind(P::KIND_LAST);
      break;
    case StartPosition::Kind::kSequence:
      out->set_kind(P::KIND_SEQUENCE);
      out->set_sequence(start.sequence);
      break;
    case StartPosition::Kind::kTime:
      out->set_kind(P::KIND_TIME);
      TimestampToProto(start.time, out->mutable_time());
      break;
  }
}

absl::StatusOr<StreamConfig> StreamConfigFromProto(const bus::v1::StreamConfig& proto,
                                                   std::string_view field) {
  StreamConfig c;
  c.name = proto.name();
  c.subjects.assign(proto.subjects().begin(), proto.subjects().end());
  absl::StatusOr<Durability> durability =
      DurabilityFromProto(proto.durability(), Sub(field, "durability"));
  if (!durability.ok()) return durability.status();
  c.durability = *durability;
  absl::StatusOr<absl::Duration> sync =
      OptionalDuration(proto.has_sync_interval(), proto.sync_interval(),
                       Sub(field, "sync_interval"), kDefaultSyncInterval);
  if (!sync.ok()) return sync.status();
  c.sync_interval = *sync;
  absl::StatusOr<absl::Duration> max_age =
      OptionalDuration(proto.has_max_age(), proto.max_age(), Sub(field, "max_age"),
                       absl::ZeroDuration());
  if (!max_age.ok()) return max_age.status();
  c.max_age = *max_age;
  c.max_bytes = proto.max_bytes();
  c.segment_bytes = proto.segment_bytes() == 0 ? kDefaultSegmentBytes : proto.segment_bytes();
  return c;
}

void StreamConfigToProto(const StreamConfig& config, bus::v1::StreamConfig* out) {
  out->Clear();
  out->set_name(config.name);
  for (const std::string& s : config.subjects) out->add_subjects(s);
  out->set_durability(DurabilityToProto(config.durability));
  DurationToProto(config.sync_interval, out->mutable_sync_interval());
  if (config.max_age > absl::ZeroDuration()) {
    DurationToProto(config.max_age, out->mutable_max_age());
  }
  out->set_max_bytes(config.max_bytes);
  out->set_segment_bytes(config.segment_bytes);
}

void StreamInfoToProto(const StreamInfo& info, bus::v1::StreamInfo* out) {
  out->Clear();
  StreamConfigToProto(info.config, out->mutable_config());
  bus::v1::StreamState* state = out->mutable_state();
  state->set_first_sequence(info.first_sequence);
  state->set_last_sequence(info.last_sequence);
  state->set_events(info.events);
  state->set_bytes(info.bytes);
  state->set_segments(info.segments);
  if (IsFinite(info.first_time)) TimestampToProto(info.first_time, state->mutable_first_time());
  if (IsFinite(info.last_time)) TimestampToProto(info.last_time, state->mutable_last_time());
  out->set_consumers(info.consumers);
}

absl::StatusOr<ConsumerConfig> ConsumerConfigFromProto(const bus::v1::ConsumerConfig& proto,
                                                       std::string_view field) {
  ConsumerConfig c;
  c.stream = proto.stream();
  c.name = proto.name();
  absl::StatusOr<StartPosition> start = StartPositionFromProto(proto.start(), Sub(field, "start"));
  if (!start.ok()) return start.status();
  c.start = *start;
  c.filter_subject = proto.filter_subject();
  absl::StatusOr<absl::Duration> ack_wait = OptionalDuration(
      proto.has_ack_wait(), proto.ack_wait(), Sub(field, "ack_wait"), kDefaultAckWait);
  if (!ack_wait.ok()) return ack_wait.status();
  c.ack_wait = *ack_wait;
  c.max_in_flight = proto.max_in_flight() == 0 ? kDefaultMaxInFlight : proto.max_in_flight();
  c.max_deliveries = proto.max_deliveries();
  return c;
}

void ConsumerConfigToProto(const ConsumerConfig& config, bus::v1::ConsumerConfig* out) {
  out->Clear();
  out->set_stream(config.stream);
  out->set_name(config.name);
  StartPositionToProto(config.start, out->mutable_start());
  out->set_filter_subject(config.filter_subject);
  DurationToProto(config.ack_wait, out->mutable_ack_wait());
  out->set_max_in_flight(config.max_in_flight);
  out->set_max_deliveries(config.max_deliveries);
}

void ConsumerInfoToProto(const ConsumerInfo& info, bus::v1::ConsumerInfo* out) {
  out->Clear();
  ConsumerConfigToProto(info.config, out->mutable_config());
  bus::v1::ConsumerState* state = out->mutable_state();
  state->set_ack_floor(info.ack_floor);
  state->set_next_sequence(info.next_sequence);
  state->set_in_flight(info.in_flight);
  state->set_pending(info.pending);
  state->set_members(info.members);
  state->set_redelivered(info.redelivered);
}

absl::StatusOr<SubscribeOptions> SubscribeOptionsFromProto(
    const bus::v1::SubscribeRequest& proto) {
  SubscribeOptions o;
  o.subject_pattern = proto.subject_pattern();
  o.stream = proto.stream();
  o.consumer = proto.consumer();
  if (!o.stream.empty() && o.consumer.empty()) {
    absl::StatusOr<StartPosition> start = StartPositionFromProto(proto.start(), "start");
    if (!start.ok()) return start.status();
    o.start = *start;
  }
  return o;
}

void PublishResultToProto(const PublishResult& result, bus::v1::PublishResult* out) {
  out->set_stream(result.stream);
  out->set_sequence(result.sequence);
}


}  // namespace cityos
