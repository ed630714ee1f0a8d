// Reading an event's envelope straight from its serialized form, and writing
// the exchange's Subscribe responses as bytes around stored events.
//
// Replay reads events as the bus stored them (Message::wire()). Deciding one
// needs only its envelope (type, subject, owner, classification, ...), which
// EnvelopeView reads without building a cityos.event.v1.Event (no allocation:
// every field is a view into the bytes). The delivery then carries the stored
// bytes (after obligations applied on the wire), framed as an
// ExchangeDelivery inside a SubscribeResponse by the Append* helpers, which
// write the fields in field-number order as protobuf's own serializer does.
#ifndef CITYOS_SERVICES_EXCHANGE_EVENT_WIRE_H_
#define CITYOS_SERVICES_EXCHANGE_EVENT_WIRE_H_

#include <cstdint>
#include <string>
#include <string_view>

#include "absl/time/time.h"
#include "cityos/event/v1/event.pb.h"
#include "cityos/policy.h"
#include "cityos/wire.h"

namespace cityos {

// The envelope attributes of a serialized cityos.event.v1.Event. Views into
// the bytes given to Parse (which must outlive the view).
struct EnvelopeView {
  std::string_view source;
  std::string_view type;
  std::string_view subject;
  std::string_view domain;
  event::v1::Classification classification = event::v1::CLASSIFICATION_UNSPECIFIED;
  std::string_view data_subject;
  std::string_view owner;
  std::string_view region;
  std::string_view jurisdiction;
  // The kEntityIdExtension extension's value (the last entry, as a parse
  // keeps), empty when absent.
  std::string_view entity_id_extension;
  // Bytes of the payload (binary_data, text_data or proto_data content).
  size_t payload_bytes = 0;

  // False when `wire` is not a well-formed encoding of an event's top level
  // and its extensions' entries at the wire level (cityos::wire::Reader's
  // rules; UTF-8 is not checked), or when it holds more than one payload
  // field (binary_data, text_data, proto_data: a parse keeps only the last
  // member of the oneof, the bytes would keep them all); the view is then
  // unspecified and the caller takes the parsed path.
  bool Parse(std::string_view wire);

  // What EntityIdOf gives the parsed event: the entity-id extension when
  // non-empty, else the source.
  std::string_view entity_id() const {
    return entity_id_extension.empty() ? source : entity_id_extension;
  }
  // What ResourceView::Of gives the parsed event.
  ResourceView Resource() const;
};

// Serialized-response writing: cityos/wire.h (AppendVarint kept here by name
// for the response's `missed` field).
using wire::AppendVarint;

// One cityos.exchange.v1.ExchangeDelivery as field 1 of a SubscribeResponse
// (`out` appended): the event bytes, publish_time, the decision (serialized
// cityos.exchange.v1.Decision) and, when `stream` is not empty, the resume
// token "<stream>:<sequence>".
void AppendDelivery(std::string_view event, absl::Time publish_time, std::string_view decision,
                    std::string_view stream, uint64_t sequence, std::string* out);

}  // namespace cityos

#endif  // CITYOS_SERVICES_EXCHANGE_EVENT_WIRE_H_
