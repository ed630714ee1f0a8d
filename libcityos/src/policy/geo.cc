#include "policy/geo.h"

#include <algorithm>
#include <cmath>
#include <string>

#include "absl/strings/str_cat.h"
#include "core/strings.h"

namespace cityos::policy_internal {
namespace {

constexpr double kEarthRadiusM = 6371008.8;
constexpr double kPi = 3.14159265358979323846;

bool ValidPoint(const common::v1::GeoPoint& p) {
  return std::isfinite(p.latitude()) && std::isfinite(p.longitude()) &&
         p.latitude() >= -90 && p.latitude() <= 90 && p.longitude() >= -180 &&
         p.longitude() <= 180;
}

bool ValidRegionCode(std::string_view code) {
  if (code.empty() || code.size() > 64) return false;
  bool token_start = true;
  for (char c : code) {
    if (c == '-') {
      if (token_start) return false;  // empty token
      token_start = true;
      continue;
    }
    if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
          (c >= '0' && c <= '9'))) {
      return false;
    }
    token_start = false;
  }
  return !token_start;
}

// Longitude `lon` within [west, east], a box that may cross the antimeridian.
bool LongitudeIn(double lon, double west, double east) {
  if (west <= east) return lon >= west && lon <= east;
  return lon >= west || lon <= east;
}

// Even-odd ray casting on the plane of (lon, lat): adequate for city-sized
// polygons, which is what emergency areas are.
bool InPolygon(const common::v1::GeoPolygon& poly, double lat, double lon) {
  bool inside = false;
  const int n = poly.vertices_size();
  for (int i = 0, j = n - 1; i < n; j = i++) {
    const double yi = poly.vertices(i).latitude(),
                 xi = poly.vertices(i).longitude();
    const double yj = poly.vertices(j).latitude(),
                 xj = poly.vertices(j).longitude();
    if ((yi > lat) != (yj > lat)) {
      const double x_cross = (xj - xi) * (lat - yi) / (yj - yi) + xi;
      if (lon < x_cross) inside = !inside;
    }
  }
  return inside;
}

}  // namespace

absl::Status ValidateArea(const common::v1::GeoArea& area,
                          std::string_view field) {
  const std::string f(field);
  switch (area.shape_case()) {
    case common::v1::GeoArea::kBoundingBox: {
      const auto& b = area.bounding_box();
      if (!ValidPoint(b.south_west()) || !ValidPoint(b.north_east())) {
        return absl::InvalidArgumentError(absl::StrCat(
            f, ".bounding_box: corners must be valid WGS84 points"));
      }
      if (b.south_west().latitude() > b.north_east().latitude()) {
        return absl::InvalidArgumentError(absl::StrCat(
            f, ".bounding_box: south_west latitude is north of north_east"));
      }
      return absl::OkStatus();
    }
    case common::v1::GeoArea::kCircle: {
      const auto& c = area.circle();
      if (!ValidPoint(c.center())) {
        return absl::InvalidArgumentError(
            absl::StrCat(f, ".circle.center: not a valid WGS84 point"));
      }
      if (!(c.radius_m() > 0) || !std::isfinite(c.radius_m())) {
        return absl::InvalidArgumentError(
            absl::StrCat(f, ".circle.radius_m: must be greater than 0"));
      }
      return absl::OkStatus();
    }
    case common::v1::GeoArea::kPolygon: {
      const auto& p = area.polygon();
      if (p.vertices_size() < 3) {
        return absl::InvalidArgumentError(absl::StrCat(
            f, ".polygon: needs at least 3 vertices, got ", p.vertices_size()));
      }
      for (int i = 0; i < p.vertices_size(); ++i) {
        if (!ValidPoint(p.vertices(i))) {
          return absl::InvalidArgumentError(absl::StrCat(
              f, ".polygon.vertices[", i, "]: not a valid WGS84 point"));
        }
      }
      return absl::OkStatus();
    }
    case common::v1::GeoArea::kRegion:
      if (!ValidRegionCode(area.region())) {
        return absl::InvalidArgumentError(absl::StrCat(
            f, ".region: \"", area.region(),
            "\" is not a region code (tokens of [A-Za-z0-9] joined by -)"));
      }
      return absl::OkStatus();
    case common::v1::GeoArea::SHAPE_NOT_SET:
      break;
  }
  return absl::InvalidArgumentError(absl::StrCat(
      f, ": required (a bounding_box, circle, polygon or region)"));
}

bool RegionCovers(std::string_view prefix, std::string_view code) {
  if (prefix.empty() || code.size() < prefix.size()) return false;
  if (code.substr(0, prefix.size()) != prefix) return false;
  return code.size() == prefix.size() || code[prefix.size()] == '-';
}

double HaversineMetres(double lat1, double lon1, double lat2, double lon2) {
  const double rad = kPi / 180.0;
  const double dlat = (lat2 - lat1) * rad, dlon = (lon2 - lon1) * rad;
  const double a = std::sin(dlat / 2) * std::sin(dlat / 2) +
                   std::cos(lat1 * rad) * std::cos(lat2 * rad) *
                       std::sin(dlon / 2) * std::sin(dlon / 2);
  return 2 * kEarthRadiusM * std::asin(std::min(1.0, std::sqrt(a)));
}

bool InArea(const common::v1::GeoArea& area,
            const std::optional<std::pair<double, double>>& location,
            std::string_view region) {
  switch (area.shape_case()) {
    case common::v1::GeoArea::kRegion:
      return !region.empty() && RegionCovers(area.region(), region);
    case common::v1::GeoArea::kBoundingBox: {
      if (!location) return false;
      const auto& b = area.bounding_box();
      return location->first >= b.south_west().latitude() &&
             location->first <= b.north_east().latitude() &&
             LongitudeIn(location->second, b.south_west().longitude(),
                         b.north_east().longitude());
    }
    case common::v1::GeoArea::kCircle: {
      if (!location) return false;
      const auto& c = area.circle();
      return HaversineMetres(c.center().latitude(), c.center().longitude(),
                             location->first, location->second) <= c.radius_m();
    }
    case common::v1::GeoArea::kPolygon:
      if (!location) return false;
      return InPolygon(area.polygon(), location->first, location->second);
    case common::v1::GeoArea::SHAPE_NOT_SET:
      break;
  }
  return false;
}

}  // namespace cityos::policy_internal
