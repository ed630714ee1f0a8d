// File: cityos/event.h
//
// Building and validating event envelopes (cityos.event.v1.Event).
//
//   CITYOS_ASSIGN_OR_RETURN(
//       cityos::event::v1::Event ev,
//       cityos::EventBuilder()
//           .Source("//quzhou.city/meters/m-17")
//           .Subject("carbon.meter.reading.quzhou.kecheng")
//           .Classification(cityos::event::v1::CLASSIFICATION_INTERNAL)
//           .Owner("quzhou-grid")
//           .Region("CN-ZJ-QZ-KC")
//           .ProtoData(reading)        // sets type, schema and content type
//           .Build());                 // fills id and time, then validates
#ifndef CITYOS_EVENT_H_
#define CITYOS_EVENT_H_

#include <cstddef>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "cityos/event/v1/event.pb.h"

namespace google::protobuf {
class Message;
}

namespace cityos {

class Clock;

// Limits applied by ValidateEvent.
struct EventLimits {
  // Largest serialized event accepted, in bytes. Default: 1 MiB.
  size_t max_event_bytes = 1 << 20;
};

// OK if `event` is a complete, well-formed envelope. Otherwise
// INVALID_ARGUMENT naming the attribute and what is wrong with it, e.g.
// "event.subject: token 2 is empty in \"carbon..reading\"" or
// "event.data_subject: required when classification is PERSONAL".
// Checks: id, source, type, subject, time, domain, owner, classification
// present; spec_version "1.0" or empty; subject syntax (no wildcards); domain
// equals the subject's first token; data_subject and jurisdiction present for
// PERSONAL / SENSITIVE and data_subject absent otherwise; jurisdiction is two
// upper-case letters when set; extension names are CloudEvents-legal; the
// serialized size is within `limits`.
absl::Status ValidateEvent(const event::v1::Event& event,
                           const EventLimits& limits = {});

// Fluent builder of an envelope. Not thread-safe.
class EventBuilder {
 public:
  // `clock` supplies the time when Time() is not called; null means the real
  // clock.
  explicit EventBuilder(Clock* clock = nullptr);

  EventBuilder& Id(std::string_view id);
  EventBuilder& Source(std::string_view source);
  EventBuilder& Type(std::string_view type);
  // Also sets the domain to the subject's first token unless Domain() is
  // called.
  EventBuilder& Subject(std::string_view subject);
  EventBuilder& Time(absl::Time time);
  EventBuilder& Domain(std::string_view domain);
  EventBuilder& Classification(event::v1::Classification c);
  EventBuilder& DataSubject(std::string_view person);
  EventBuilder& Owner(std::string_view org);
  EventBuilder& Region(std::string_view region);
  EventBuilder& Jurisdiction(std::string_view code);
  EventBuilder& Extension(std::string_view name, std::string_view value);
  // The publisher's SPIFFE id. The bus overwrites it on Publish; it must be
  // set (to the publishing principal) for Bus::PublishShared.
  EventBuilder& Publisher(std::string_view spiffe_id);
  // Packs `payload` as proto_data; sets type to its full name (unless Type()
  // was called), data_schema to its type URL and content type to
  // application/protobuf.
  EventBuilder& ProtoData(const google::protobuf::Message& payload);
  EventBuilder& TextData(std::string_view content_type, std::string_view text);
  EventBuilder& BinaryData(std::string_view content_type,
                           std::string_view bytes);

  // Fills id (UUIDv7) and time (now) when unset, then validates.
  absl::StatusOr<event::v1::Event> Build(const EventLimits& limits = {}) &&;
  absl::StatusOr<event::v1::Event> Build(const EventLimits& limits = {}) &;

 private:
  Clock* clock_;
  bool domain_set_ = false;
  bool type_set_ = false;
  event::v1::Event event_;
};

// Converts between google.protobuf.Timestamp fields and absl::Time.
absl::Time ToAbslTime(const google::protobuf::Timestamp& ts);
void SetTimestamp(absl::Time t, google::protobuf::Timestamp* ts);

}  // namespace cityos

#endif  // CITYOS_EVENT_H_
