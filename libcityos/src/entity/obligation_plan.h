// Internal: compiled obligation plans. A plan is built once per (payload
// type, obligations) from the type's descriptor and applied either to the
// serialized payload bytes (the hot path: no parse, no reflection) or, for
// reference and tests, to a parsed message through reflection. Both give
// messages that compare equal.
#ifndef CITYOS_ENTITY_OBLIGATION_PLAN_H_
#define CITYOS_ENTITY_OBLIGATION_PLAN_H_

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "cityos/event/v1/event.pb.h"
#include "cityos/exchange/v1/exchange.pb.h"
#include "entity/pseudonym_internal.h"
#include "google/protobuf/descriptor.h"
#include "google/protobuf/message.h"

namespace cityos::entity_internal {

// What to do inside one message of the payload.
struct WireNode;

// What to do with one field (every occurrence: repeated elements and map
// entries alike).
struct FieldAction {
  uint32_t number = 0;
  bool redact = false;        // drop it (wins over everything else)
  bool pseudonymize = false;  // string/bytes: replace by the pseudonym
  std::unique_ptr<WireNode> child;  // message: rewrite its content
};

struct WireNode {
  std::vector<FieldAction> fields;  // sorted by number after compilation
  // COARSEN_LOCATION: this message is a location whose double fields
  // `lat_field` and `lon_field` snap to the centre of a `cell_m` cell.
  double cell_m = 0;
  uint32_t lat_field = 0;
  uint32_t lon_field = 0;
  // COARSEN_TIME: this message is a google.protobuf.Timestamp truncated to a
  // multiple of `granularity_nanos`.
  int64_t granularity_nanos = 0;

  const FieldAction* Find(uint32_t number) const {
    for (const FieldAction& f : fields) {
      if (f.number == number) return &f;
      if (f.number > number) break;
    }
    return nullptr;
  }
  FieldAction* GetOrAdd(uint32_t number);
  void Sort();
};

// Envelope attributes an `event.<name>` path can name.
enum class EnvAttr {
  kId,
  kSource,
  kSpecVersion,
  kType,
  kSubject,
  kTime,
  kDataContentType,
  kDataSchema,
  kDomain,
  kClassification,
  kDataSubject,
  kOwner,
  kRegion,
  kJurisdiction,
  kPublisher,
  kExtension,  // event.extensions.<name>
};

struct EnvAction {
  exchange::v1::ObligationKind kind;
  EnvAttr attr;
  std::string extension;  // kExtension only
  int64_t granularity_nanos = 0;
};

// One payload path as the entity view applies it (attribute paths).
struct AttrAction {
  exchange::v1::ObligationKind kind;
  std::vector<std::string> tokens;
  double cell_m = 0;
  int64_t granularity_nanos = 0;
};

struct Plan {
  std::string type;                       // payload type name; may be unknown
  const google::protobuf::Descriptor* descriptor = nullptr;  // null: unknown type
  std::vector<exchange::v1::Obligation> obligations;  // the data-changing ones
  std::unique_ptr<WireNode> root;         // null when no payload path applies
  std::vector<EnvAction> envelope;
  std::vector<AttrAction> attributes;
};

// Whether the kind changes data (the others are only carried).
bool ChangesData(exchange::v1::ObligationKind kind);

// Compiles the data-changing obligations for `type`. With `descriptor` null
// (a payload type this binary does not know) any payload path is an error
// when `require_type` holds, and is kept unchecked otherwise (entities of
// unknown types have no attributes to act on).
absl::StatusOr<std::unique_ptr<Plan>> CompilePlan(
    absl::Span<const exchange::v1::Obligation> obligations, std::string_view type,
    const google::protobuf::Descriptor* descriptor);

// Rewrites the serialized message `in` per `node` into `out` (appended).
// False when `in` is not a well-formed protobuf encoding.
bool RewriteWire(const WireNode& node, std::string_view in, const FastHmacSha256& hmac,
                 std::string* out);

// The same on a parsed message, through reflection (reference
// implementation: tests and benchmarks compare the two).
void RewriteReflection(const WireNode& node, const FastHmacSha256& hmac,
                       google::protobuf::Message* message);

// Coarsens seconds/nanos to a multiple of `granularity_nanos` since the epoch
// (floor, so times before 1970 go down too).
void CoarsenTime(int64_t granularity_nanos, int64_t* seconds, int32_t* nanos);

// Applies the envelope actions to an event.
void ApplyEnvelope(absl::Span<const EnvAction> actions, const FastHmacSha256& hmac,
                   event::v1::Event* event);

}  // namespace cityos::entity_internal

#endif  // CITYOS_ENTITY_OBLIGATION_PLAN_H_
