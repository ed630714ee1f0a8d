// File: cityos/entity.h
//
// Entities and what the exchange does to data before delivering it:
//  - the entity view of an event (type, id, attributes from the protobuf
//    payload by reflection, location), per the rules at the top of
//    proto/cityos/exchange/v1/exchange.proto;
//  - filters over entities (EntityFilter: ids, attribute comparisons, areas,
//    time ranges);
//  - obligations (redact, pseudonymize, coarsen location and time) applied to
//    an event's payload or to an entity, on field paths that reach into
//    nested, repeated and map fields.
//
//   CITYOS_ASSIGN_OR_RETURN(exchange::v1::Entity e, EntityFromEvent(event));
//   CITYOS_RETURN_IF_ERROR(ValidateFilter(filter));
//   if (MatchesFilter(filter, e)) { ... }
//   ObligationApplier applier(PseudonymKey::ForRecipient(node_secret, "hospital-a"));
//   CITYOS_RETURN_IF_ERROR(applier.Apply(decision.obligations, &event));
#ifndef CITYOS_ENTITY_H_
#define CITYOS_ENTITY_H_

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "cityos/event/v1/event.pb.h"
#include "cityos/exchange/v1/exchange.pb.h"

namespace cityos {

// Event extension attribute naming the entity id (else the event's source).
inline constexpr char kEntityIdExtension[] = "cityosentityid";

// The entity id of an event: its non-empty kEntityIdExtension, else its
// source (as EntityFromEvent sets it).
const std::string& EntityIdOf(const event::v1::Event& event);

// The entity state an event carries: type = event type, id = the
// `cityosentityid` extension or the source, attributes = the payload's fields
// (proto payloads from the generated descriptor pool; binary and text
// payloads give no attributes), location = the payload's top-level `location`
// GeoPoint, envelope attributes copied. `version` and `update_time` are left
// for the store. INVALID_ARGUMENT when the payload type is unknown to this
// binary or does not parse.
absl::StatusOr<exchange::v1::Entity> EntityFromEvent(const event::v1::Event& event);

// INVALID_ARGUMENT naming the bad part (empty or malformed path, comparison
// without operand, IN without values, bad area, range end before start).
absl::Status ValidateFilter(const exchange::v1::EntityFilter& filter);
// Whether `entity` satisfies every condition of `filter` (as documented in
// exchange.proto). REQUIRES: ValidateFilter(filter).ok().
bool MatchesFilter(const exchange::v1::EntityFilter& filter, const exchange::v1::Entity& entity);
// Area membership: bounding box, circle (haversine), polygon (ray casting),
// region (code prefix by `-` tokens, against `region`).
bool InArea(const common::v1::GeoArea& area, const common::v1::GeoPoint* point,
            std::string_view region);
// Attribute at a dot-separated path of the entity's attributes, or null.
// Tokens walk `map_value`s by key; on a `list_value` a decimal token is an
// index (`needs.0`). The pointer is into `entity`.
const exchange::v1::Value* FindAttribute(const exchange::v1::Entity& entity,
                                         std::string_view path);
// Keeps only the attributes at `paths` (and their parents); empty = all.
// INVALID_ARGUMENT for a malformed path.
absl::Status Project(absl::Span<const std::string> paths, exchange::v1::Entity* entity);

// The HMAC-SHA256 key of one recipient: derived from the node's secret and the
// recipient org, so two recipients never get the same pseudonyms.
class PseudonymKey {
 public:
  static PseudonymKey ForRecipient(std::string_view node_secret, std::string_view recipient_org);
  // base64url (unpadded) HMAC-SHA256 of `value`.
  std::string Pseudonymize(std::string_view value) const;
  const std::string& key() const { return key_; }

 private:
  explicit PseudonymKey(std::string key) : key_(std::move(key)) {}
  std::string key_;
};

// Applies obligations. Kinds that change data: REDACT, PSEUDONYMIZE,
// COARSEN_LOCATION, COARSEN_TIME; the others (AGGREGATE_ONLY,
// RETENTION_LIMIT, NO_ONWARD_TRANSFER) are carried, not applied. Paths are
// payload field paths, or `event.<attribute>` for envelope attributes
// (`event.data_subject`, `event.time`, `event.source`, `event.subject`). A
// path that names no field of the payload type is INVALID_ARGUMENT; a path
// whose field is absent in this event is fine. Compiled plans are cached per
// (payload type, obligations), so applying the same decision to many events
// is cheap. Thread-safe.
class ObligationApplier {
 public:
  explicit ObligationApplier(PseudonymKey key);
  ~ObligationApplier();
  ObligationApplier(const ObligationApplier&) = delete;
  ObligationApplier& operator=(const ObligationApplier&) = delete;

  absl::Status Apply(absl::Span<const exchange::v1::Obligation> obligations,
                     event::v1::Event* event);
  // The same on a serialized event (`wire`, e.g. as a bus stream stores it):
  // appends the obligated event, serialized, to `out`. Payload obligations
  // rewrite the payload bytes in place and every other byte is copied as is
  // (no parse of the event); obligations on `event.` paths parse the event,
  // apply them and serialize it. Parsing `out`'s bytes gives the event
  // Apply() gives. Errors as Apply(), plus INVALID_ARGUMENT when `wire` is not
  // an event's encoding; `out` is left as it was on error.
  absl::Status ApplyToWire(absl::Span<const exchange::v1::Obligation> obligations,
                           std::string_view wire, std::string* out);
  // The same on an entity's attributes (paths are attribute paths; `event.`
  // paths act on the envelope fields of the entity; `location` also acts on
  // the entity location). Leaves `entity->obligations()` to the caller.
  absl::Status Apply(absl::Span<const exchange::v1::Obligation> obligations,
                     exchange::v1::Entity* entity);
  // INVALID_ARGUMENT when an obligation's paths do not fit `payload_type`
  // (checked when policies load, where the type is known).
  static absl::Status Check(const exchange::v1::Obligation& obligation,
                            std::string_view payload_type);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Snaps a point to the centre of its square grid cell of `cell_m` metres
// (cells are `cell_m` of latitude and `cell_m` of longitude at the cell's
// latitude band; docs/entities.md gives the formulas).
common::v1::GeoPoint CoarsenLocation(const common::v1::GeoPoint& p, double cell_m);

}  // namespace cityos

#endif  // CITYOS_ENTITY_H_
