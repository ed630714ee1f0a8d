// Internal helpers shared by the entity view, filters and obligations.
#ifndef CITYOS_ENTITY_ENTITY_INTERNAL_H_
#define CITYOS_ENTITY_ENTITY_INTERNAL_H_

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "cityos/exchange/v1/exchange.pb.h"
#include "google/protobuf/any.pb.h"
#include "google/protobuf/descriptor.h"
#include "google/protobuf/message.h"

namespace cityos::entity_internal {

// Splits a dot-separated path into its tokens. INVALID_ARGUMENT (naming
// `what`) for an empty path, an empty token, or a token holding whitespace
// or control characters. Tokens are not restricted to protobuf identifiers
// because attribute paths also walk map keys (`labels.building-3`).
absl::Status SplitPath(std::string_view path, std::string_view what,
                       std::vector<std::string_view>* tokens);

// Whether the value's kind is set (an unset kind is null).
inline bool IsNull(const exchange::v1::Value& v) {
  return v.kind_case() == exchange::v1::Value::KIND_NOT_SET;
}

// Value equality as filters define it: ints and doubles numerically, other
// kinds only with the same kind; differing non-empty units never equal.
bool ValuesEqual(const exchange::v1::Value& a, const exchange::v1::Value& b);

// Three-way order of two values of ordered kinds (numbers, strings by code
// point, times, durations). Returns false when they are not comparable
// (different kinds, unordered kinds, different units, NaN).
bool CompareValues(const exchange::v1::Value& a, const exchange::v1::Value& b, int* order);

// `cityos.health.v1.VitalSigns` from `type.googleapis.com/cityos.health.v1.VitalSigns`.
std::string_view TypeNameFromUrl(std::string_view type_url);
// The message type in the generated pool, or null.
const google::protobuf::Descriptor* FindPayloadType(std::string_view name);
bool IsGeoPointType(const google::protobuf::Descriptor* d);
// The payload as a message of its type. INVALID_ARGUMENT naming the type when
// it is unknown or the bytes do not parse.
absl::StatusOr<std::unique_ptr<google::protobuf::Message>> ParsePayload(
    const google::protobuf::Any& any);
// Sets the attributes and location of `entity` from `payload`.
void PayloadToAttributes(const google::protobuf::Message& payload, exchange::v1::Entity* entity);

}  // namespace cityos::entity_internal

#endif  // CITYOS_ENTITY_ENTITY_INTERNAL_H_
