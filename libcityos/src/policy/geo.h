// Internal: the little geometry the PDP needs for emergency areas. Kept here
// (not in the entity module) so the PDP has no dependency on the entity
// store; the semantics are those of cityos.common.v1.GeoArea.
#ifndef CITYOS_SRC_POLICY_GEO_H_
#define CITYOS_SRC_POLICY_GEO_H_

#include <optional>
#include <string_view>
#include <utility>

#include "absl/status/status.h"
#include "cityos/common/v1/common.pb.h"

namespace cityos::policy_internal {

// OK when `area` has exactly one valid shape; INVALID_ARGUMENT naming the
// field (prefixed by `field`) otherwise.
absl::Status ValidateArea(const common::v1::GeoArea& area,
                          std::string_view field);

// True when `code` equals `prefix` or extends it by `-`-separated tokens
// ("CN-ZJ" covers "CN-ZJ-QZ" but not "CN-ZJX").
bool RegionCovers(std::string_view prefix, std::string_view code);

// Great-circle distance in metres (haversine, mean earth radius).
double HaversineMetres(double lat1, double lon1, double lat2, double lon2);

// Whether a resource at `location` (lat, lon; may be unknown) with region
// code `region` (may be empty) lies in `area`: region areas cover region codes
// by prefix; shapes contain locations. An attribute the area cannot be
// compared with (no location for a shape, no region for a code) is outside.
bool InArea(const common::v1::GeoArea& area,
            const std::optional<std::pair<double, double>>& location,
            std::string_view region);

}  // namespace cityos::policy_internal

#endif  // CITYOS_SRC_POLICY_GEO_H_
