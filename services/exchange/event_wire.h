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
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/time/time.h"
#include "absl/types/span.h"
#include "cityos/event/v1/event.pb.h"
#include "cityos/exchange/v1/exchange.pb.h"
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

// The fields of a serialized cityos.exchange.v1.Entity (as the state store
// keeps it) that deciding it needs, read without parsing its attributes. Views
// into the bytes given to Parse (which must outlive the view).
struct EntityHeaderView {
  std::string_view type;
  std::string_view id;
  std::string_view domain;
  event::v1::Classification classification = event::v1::CLASSIFICATION_UNSPECIFIED;
  std::string_view owner;
  std::string_view region;
  std::string_view jurisdiction;
  std::string_view data_subject;
  bool has_location = false;
  double latitude = 0;
  double longitude = 0;
  // Whether the entity carries obligations (field 15) already.
  bool has_obligations = false;

  // False when `wire` is not what SerializeAsString writes for the fields
  // read here: not well formed at the top level (Reader's rules), a known
  // field (1-15) out of field-number order or after an unknown one, a
  // singular field twice (a parse keeps the last, or merges `location`), a
  // default value written (empty string, zero enum or version), a declared
  // field with another wire type, a string read here not valid UTF-8, or a
  // `location` other than latitude then longitude, each at most once. The
  // caller then parses the entity (and so fails as the parsed path does when
  // it does not parse).
  bool Parse(std::string_view wire);
  // What ResourceView::Of gives the parsed entity.
  ResourceView Resource() const;
};

// Redaction of entity attributes on a serialized cityos.exchange.v1.Entity,
// giving what ObligationApplier::Apply(obligations, &entity) gives on the
// parsed one (attribute paths through nested messages (`map_value`) and
// repeated messages (`list_value`)). Only the cases where that is a pure
// removal of map entries are handled here; Compile says when the
// obligations need the parsed path (any kind other than redact that changes
// data, `event.` paths, the `location` attribute (it is also the entity
// location), unit fields (they change a sibling's unit), protobuf map fields
// on the way).
class EntityWireRedaction {
 public:
  // nullopt when the wire cannot apply `obligations` to entities of payload
  // type `type` (the caller parses and applies). The caller must have
  // checked that ObligationApplier accepts them (its errors withhold).
  static std::optional<EntityWireRedaction> Compile(
      absl::Span<const exchange::v1::Obligation> obligations, std::string_view type);

  // Appends `entity` with the redactions applied to `out`. False (and `out`
  // as it was) when `entity` is not well formed or holds a value the wire
  // does not rewrite (a time, duration or point whose component a path
  // names); the caller then takes the parsed path.
  bool Apply(std::string_view entity, std::string* out) const;

  bool empty() const { return paths_.empty(); }

 private:
  std::vector<std::vector<std::string>> paths_;
};

// One cityos.exchange.v1.ExchangeDelivery as field 1 of a SubscribeResponse
// (`out` appended): the event bytes, publish_time, the decision (serialized
// cityos.exchange.v1.Decision) and, when `stream` is not empty, the resume
// token "<stream>:<sequence>".
void AppendDelivery(std::string_view event, absl::Time publish_time, std::string_view decision,
                    std::string_view stream, uint64_t sequence, std::string* out);

}  // namespace cityos

#endif  // CITYOS_SERVICES_EXCHANGE_EVENT_WIRE_H_
