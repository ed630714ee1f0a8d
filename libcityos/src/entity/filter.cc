// Entity filters: validation, matching, areas, attribute lookup and
// projection (cityos/entity.h; semantics in exchange.proto and
// docs/entities.md).
#include <algorithm>
#include <cmath>
#include <string>
#include <string_view>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "cityos/entity.h"
#include "cityos/status.h"
#include "core/strings.h"
#include "entity/entity_internal.h"

namespace cityos {
namespace entity_internal {

using exchange::v1::Value;

absl::Status SplitPath(std::string_view path, std::string_view what,
                       std::vector<std::string_view>* tokens) {
  tokens->clear();
  if (path.empty()) return absl::InvalidArgumentError(absl::StrCat(AV(what), ": empty path"));
  size_t start = 0;
  while (true) {
    size_t dot = path.find('.', start);
    std::string_view token =
        path.substr(start, dot == std::string_view::npos ? std::string_view::npos : dot - start);
    if (token.empty()) {
      return absl::InvalidArgumentError(
          absl::StrFormat("%s: empty token %d in path \"%s\"", what, tokens->size() + 1, path));
    }
    for (unsigned char c : token) {
      if (c <= 0x20 || c == 0x7f) {
        return absl::InvalidArgumentError(absl::StrFormat(
            "%s: whitespace or control character in path \"%s\"", what, path));
      }
    }
    tokens->push_back(token);
    if (dot == std::string_view::npos) break;
    start = dot + 1;
  }
  return absl::OkStatus();
}

namespace {

bool IsNumber(const Value& v) {
  return v.kind_case() == Value::kIntValue || v.kind_case() == Value::kDoubleValue;
}

// int64 fits exactly in x86's 80-bit long double; elsewhere the comparison
// of huge integers with doubles is as exact as long double allows.
long double AsNumber(const Value& v) {
  return v.kind_case() == Value::kIntValue ? static_cast<long double>(v.int_value())
                                           : static_cast<long double>(v.double_value());
}

bool UnitsCompatible(const Value& a, const Value& b) {
  return a.unit().empty() || b.unit().empty() || a.unit() == b.unit();
}

template <typename T>
int Order(const T& a, const T& b) {
  return a < b ? -1 : (b < a ? 1 : 0);
}

int OrderSecondsNanos(int64_t as, int32_t an, int64_t bs, int32_t bn) {
  if (as != bs) return as < bs ? -1 : 1;
  return Order(an, bn);
}

}  // namespace

bool CompareValues(const Value& a, const Value& b, int* order) {
  if (!UnitsCompatible(a, b)) return false;
  if (IsNumber(a) && IsNumber(b)) {
    if (a.kind_case() == Value::kIntValue && b.kind_case() == Value::kIntValue) {
      *order = Order(a.int_value(), b.int_value());
      return true;
    }
    long double x = AsNumber(a), y = AsNumber(b);
    if (std::isnan(x) || std::isnan(y)) return false;
    *order = Order(x, y);
    return true;
  }
  if (a.kind_case() != b.kind_case()) return false;
  switch (a.kind_case()) {
    case Value::kStringValue:
      // std::string compares char_traits<char>, i.e. as unsigned bytes: for
      // UTF-8 that is code point order.
      *order = a.string_value().compare(b.string_value());
      *order = *order < 0 ? -1 : (*order > 0 ? 1 : 0);
      return true;
    case Value::kTimeValue:
      *order = OrderSecondsNanos(a.time_value().seconds(), a.time_value().nanos(),
                                 b.time_value().seconds(), b.time_value().nanos());
      return true;
    case Value::kDurationValue:
      *order = OrderSecondsNanos(a.duration_value().seconds(), a.duration_value().nanos(),
                                 b.duration_value().seconds(), b.duration_value().nanos());
      return true;
    default:
      return false;
  }
}

bool ValuesEqual(const Value& a, const Value& b) {
  if (!UnitsCompatible(a, b)) return false;
  if (IsNumber(a) && IsNumber(b)) {
    int order;
    return CompareValues(a, b, &order) && order == 0;
  }
  if (a.kind_case() != b.kind_case() || IsNull(a)) return false;
  switch (a.kind_case()) {
    case Value::kBoolValue:
      return a.bool_value() == b.bool_value();
    case Value::kStringValue:
      return a.string_value() == b.string_value();
    case Value::kBytesValue:
      return a.bytes_value() == b.bytes_value();
    case Value::kTimeValue:
    case Value::kDurationValue: {
      int order;
      return CompareValues(a, b, &order) && order == 0;
    }
    case Value::kGeoValue:
      return a.geo_value().latitude() == b.geo_value().latitude() &&
             a.geo_value().longitude() == b.geo_value().longitude();
    case Value::kListValue: {
      const auto& x = a.list_value().values();
      const auto& y = b.list_value().values();
      if (x.size() != y.size()) return false;
      for (int i = 0; i < x.size(); ++i) {
        if (!ValuesEqual(x[i], y[i])) return false;
      }
      return true;
    }
    case Value::kMapValue: {
      const auto& x = a.map_value().fields();
      const auto& y = b.map_value().fields();
      if (x.size() != y.size()) return false;
      for (const auto& [k, v] : x) {
        auto it = y.find(k);
        if (it == y.end() || !ValuesEqual(v, it->second)) return false;
      }
      return true;
    }
    default:
      return false;
  }
}

}  // namespace entity_internal

namespace {

using common::v1::GeoArea;
using common::v1::GeoPoint;
using exchange::v1::AttributeFilter;
using exchange::v1::Comparison;
using exchange::v1::Entity;
using exchange::v1::EntityFilter;
using exchange::v1::Value;
using entity_internal::CompareValues;
using entity_internal::IsNull;
using entity_internal::SplitPath;
using entity_internal::ValuesEqual;

// Mean earth radius (IUGG), metres: the sphere great-circle distances use.
constexpr double kEarthRadiusM = 6371008.8;
constexpr double kDegToRad = M_PI / 180.0;

absl::Status CheckPoint(const GeoPoint& p, std::string_view what) {
  if (!(p.latitude() >= -90 && p.latitude() <= 90)) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%s: latitude %g outside [-90, 90]", what, p.latitude()));
  }
  if (!(p.longitude() >= -180 && p.longitude() <= 180)) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%s: longitude %g outside [-180, 180]", what, p.longitude()));
  }
  return absl::OkStatus();
}

absl::Status CheckTimestamp(const google::protobuf::Timestamp& t, std::string_view what) {
  if (t.nanos() < 0 || t.nanos() > 999999999) {
    return absl::InvalidArgumentError(absl::StrFormat("%s: nanos %d out of range", what, t.nanos()));
  }
  return absl::OkStatus();
}

absl::Status CheckArea(const GeoArea& area) {
  switch (area.shape_case()) {
    case GeoArea::kBoundingBox: {
      const auto& b = area.bounding_box();
      if (!b.has_south_west() || !b.has_north_east()) {
        return absl::InvalidArgumentError("filter.area.bounding_box: both corners are required");
      }
      CITYOS_RETURN_IF_ERROR(CheckPoint(b.south_west(), "filter.area.bounding_box.south_west"));
      CITYOS_RETURN_IF_ERROR(CheckPoint(b.north_east(), "filter.area.bounding_box.north_east"));
      if (b.south_west().latitude() > b.north_east().latitude()) {
        return absl::InvalidArgumentError(absl::StrFormat(
            "filter.area.bounding_box: south latitude %g above north latitude %g",
            b.south_west().latitude(), b.north_east().latitude()));
      }
      return absl::OkStatus();
    }
    case GeoArea::kCircle: {
      const auto& c = area.circle();
      if (!c.has_center()) return absl::InvalidArgumentError("filter.area.circle: no center");
      CITYOS_RETURN_IF_ERROR(CheckPoint(c.center(), "filter.area.circle.center"));
      if (!(c.radius_m() > 0) || !std::isfinite(c.radius_m())) {
        return absl::InvalidArgumentError(absl::StrFormat(
            "filter.area.circle: radius_m must be a positive number, got %g", c.radius_m()));
      }
      return absl::OkStatus();
    }
    case GeoArea::kPolygon: {
      const auto& v = area.polygon().vertices();
      if (v.size() < 3) {
        return absl::InvalidArgumentError(absl::StrFormat(
            "filter.area.polygon: needs at least 3 vertices, got %d", v.size()));
      }
      for (int i = 0; i < v.size(); ++i) {
        CITYOS_RETURN_IF_ERROR(
            CheckPoint(v[i], absl::StrFormat("filter.area.polygon.vertices[%d]", i)));
      }
      return absl::OkStatus();
    }
    case GeoArea::kRegion: {
      const std::string& r = area.region();
      if (r.empty()) return absl::InvalidArgumentError("filter.area.region: empty region code");
      for (size_t start = 0;;) {
        size_t dash = r.find('-', start);
        size_t end = dash == std::string::npos ? r.size() : dash;
        if (end == start) {
          return absl::InvalidArgumentError(
              absl::StrFormat("filter.area.region: empty token in \"%s\"", r));
        }
        for (size_t i = start; i < end; ++i) {
          unsigned char c = r[i];
          if (!std::isalnum(c)) {
            return absl::InvalidArgumentError(absl::StrFormat(
                "filter.area.region: character '%c' not allowed in \"%s\"", c, r));
          }
        }
        if (dash == std::string::npos) break;
        start = dash + 1;
      }
      return absl::OkStatus();
    }
    case GeoArea::SHAPE_NOT_SET:
      return absl::OkStatus();
  }
  return absl::OkStatus();
}

bool HasOperand(const Value& v) { return !IsNull(v); }

absl::Status CheckAttributeFilter(const AttributeFilter& f, int index) {
  std::string what = absl::StrFormat("filter.attributes[%d]", index);
  std::vector<std::string_view> tokens;
  CITYOS_RETURN_IF_ERROR(SplitPath(f.path(), what + ".path", &tokens));
  switch (f.comparison()) {
    case exchange::v1::COMPARISON_EQUAL:
    case exchange::v1::COMPARISON_NOT_EQUAL:
    case exchange::v1::COMPARISON_LESS:
    case exchange::v1::COMPARISON_LESS_OR_EQUAL:
    case exchange::v1::COMPARISON_GREATER:
    case exchange::v1::COMPARISON_GREATER_OR_EQUAL:
      if (!HasOperand(f.value())) {
        return absl::InvalidArgumentError(absl::StrFormat(
            "%s: comparison %s on \"%s\" needs a value", what,
            exchange::v1::Comparison_Name(f.comparison()), f.path()));
      }
      return absl::OkStatus();
    case exchange::v1::COMPARISON_PREFIX:
      if (f.value().kind_case() != Value::kStringValue) {
        return absl::InvalidArgumentError(absl::StrFormat(
            "%s: COMPARISON_PREFIX on \"%s\" needs a string value", what, f.path()));
      }
      return absl::OkStatus();
    case exchange::v1::COMPARISON_IN:
      if (f.values().empty()) {
        return absl::InvalidArgumentError(
            absl::StrFormat("%s: COMPARISON_IN on \"%s\" needs at least one value", what, f.path()));
      }
      for (int i = 0; i < f.values_size(); ++i) {
        if (!HasOperand(f.values(i))) {
          return absl::InvalidArgumentError(
              absl::StrFormat("%s.values[%d]: null operand for \"%s\"", what, i, f.path()));
        }
      }
      return absl::OkStatus();
    case exchange::v1::COMPARISON_EXISTS:
    case exchange::v1::COMPARISON_NOT_EXISTS:
      return absl::OkStatus();
    default:
      return absl::InvalidArgumentError(
          absl::StrFormat("%s: comparison not set for \"%s\"", what, f.path()));
  }
}

bool MatchesAttribute(const AttributeFilter& f, const Entity& entity) {
  const Value* v = FindAttribute(entity, f.path());
  if (v != nullptr && IsNull(*v)) v = nullptr;  // a null attribute counts as absent
  int order = 0;
  switch (f.comparison()) {
    case exchange::v1::COMPARISON_EXISTS:
      return v != nullptr;
    case exchange::v1::COMPARISON_NOT_EXISTS:
      return v == nullptr;
    case exchange::v1::COMPARISON_EQUAL:
      return v != nullptr && ValuesEqual(*v, f.value());
    case exchange::v1::COMPARISON_NOT_EQUAL:
      if (v == nullptr) return true;
      // Differing kinds never match, NOT_EQUAL included: a string "5" is
      // neither equal nor unequal to the number 5.
      if (!(v->kind_case() == f.value().kind_case() ||
            ((v->kind_case() == Value::kIntValue || v->kind_case() == Value::kDoubleValue) &&
             (f.value().kind_case() == Value::kIntValue ||
              f.value().kind_case() == Value::kDoubleValue)))) {
        return false;
      }
      return !ValuesEqual(*v, f.value());
    case exchange::v1::COMPARISON_LESS:
      return v != nullptr && CompareValues(*v, f.value(), &order) && order < 0;
    case exchange::v1::COMPARISON_LESS_OR_EQUAL:
      return v != nullptr && CompareValues(*v, f.value(), &order) && order <= 0;
    case exchange::v1::COMPARISON_GREATER:
      return v != nullptr && CompareValues(*v, f.value(), &order) && order > 0;
    case exchange::v1::COMPARISON_GREATER_OR_EQUAL:
      return v != nullptr && CompareValues(*v, f.value(), &order) && order >= 0;
    case exchange::v1::COMPARISON_IN:
      if (v == nullptr) return false;
      for (const Value& operand : f.values()) {
        if (ValuesEqual(*v, operand)) return true;
      }
      return false;
    case exchange::v1::COMPARISON_PREFIX:
      return v != nullptr && v->kind_case() == Value::kStringValue &&
             std::string_view(v->string_value()).substr(0, f.value().string_value().size()) ==
                 f.value().string_value();
    default:
      return false;
  }
}

bool BeforeOrEqual(const google::protobuf::Timestamp& a, const google::protobuf::Timestamp& b) {
  return a.seconds() < b.seconds() || (a.seconds() == b.seconds() && a.nanos() <= b.nanos());
}
bool Before(const google::protobuf::Timestamp& a, const google::protobuf::Timestamp& b) {
  return a.seconds() < b.seconds() || (a.seconds() == b.seconds() && a.nanos() < b.nanos());
}

double HaversineM(const GeoPoint& a, const GeoPoint& b) {
  double lat1 = a.latitude() * kDegToRad, lat2 = b.latitude() * kDegToRad;
  double dlat = lat2 - lat1;
  double dlon = (b.longitude() - a.longitude()) * kDegToRad;
  double h = std::sin(dlat / 2) * std::sin(dlat / 2) +
             std::cos(lat1) * std::cos(lat2) * std::sin(dlon / 2) * std::sin(dlon / 2);
  h = std::min(1.0, h);
  return 2 * kEarthRadiusM * std::asin(std::sqrt(h));
}

// Even-odd ray casting in the (longitude, latitude) plane. Polygons are
// treated as planar in degrees; one spanning the antimeridian is not
// supported (split it in two areas).
bool InPolygon(const google::protobuf::RepeatedPtrField<GeoPoint>& v, const GeoPoint& p) {
  bool inside = false;
  double x = p.longitude(), y = p.latitude();
  for (int i = 0, j = v.size() - 1; i < v.size(); j = i++) {
    double xi = v[i].longitude(), yi = v[i].latitude();
    double xj = v[j].longitude(), yj = v[j].latitude();
    if ((yi > y) != (yj > y)) {
      double cross_x = xi + (y - yi) * (xj - xi) / (yj - yi);
      if (x < cross_x) inside = !inside;
    }
  }
  return inside;
}

}  // namespace

bool InArea(const GeoArea& area, const GeoPoint* point, std::string_view region) {
  switch (area.shape_case()) {
    case GeoArea::kRegion: {
      const std::string& code = area.region();
      if (code.empty() || region.size() < code.size()) return false;
      if (region.substr(0, code.size()) != code) return false;
      return region.size() == code.size() || region[code.size()] == '-';
    }
    case GeoArea::kBoundingBox: {
      if (point == nullptr) return false;
      const auto& sw = area.bounding_box().south_west();
      const auto& ne = area.bounding_box().north_east();
      double lat = point->latitude(), lon = point->longitude();
      if (!(lat >= sw.latitude() && lat <= ne.latitude())) return false;
      if (sw.longitude() <= ne.longitude()) {
        return lon >= sw.longitude() && lon <= ne.longitude();
      }
      // Crosses the antimeridian: west of it up to 180, east of it from -180.
      return lon >= sw.longitude() || lon <= ne.longitude();
    }
    case GeoArea::kCircle:
      if (point == nullptr) return false;
      return HaversineM(area.circle().center(), *point) <= area.circle().radius_m();
    case GeoArea::kPolygon:
      if (point == nullptr) return false;
      return InPolygon(area.polygon().vertices(), *point);
    case GeoArea::SHAPE_NOT_SET:
      return false;
  }
  return false;
}

absl::Status ValidateFilter(const EntityFilter& filter) {
  for (int i = 0; i < filter.ids_size(); ++i) {
    if (filter.ids(i).empty()) {
      return absl::InvalidArgumentError(absl::StrFormat("filter.ids[%d]: empty id", i));
    }
  }
  for (int i = 0; i < filter.attributes_size(); ++i) {
    CITYOS_RETURN_IF_ERROR(CheckAttributeFilter(filter.attributes(i), i));
  }
  if (filter.has_area()) CITYOS_RETURN_IF_ERROR(CheckArea(filter.area()));
  if (filter.has_observed()) {
    const auto& r = filter.observed();
    if (r.has_start()) CITYOS_RETURN_IF_ERROR(CheckTimestamp(r.start(), "filter.observed.start"));
    if (r.has_end()) CITYOS_RETURN_IF_ERROR(CheckTimestamp(r.end(), "filter.observed.end"));
    if (r.has_start() && r.has_end() && Before(r.end(), r.start())) {
      return absl::InvalidArgumentError("filter.observed: end before start");
    }
  }
  return absl::OkStatus();
}

bool MatchesFilter(const EntityFilter& filter, const Entity& entity) {
  if (!filter.type().empty() && filter.type() != entity.type()) return false;
  if (!filter.owner().empty() && filter.owner() != entity.owner()) return false;
  if (!filter.data_subject().empty() && filter.data_subject() != entity.data_subject()) {
    return false;
  }
  if (!filter.ids().empty() &&
      std::find(filter.ids().begin(), filter.ids().end(), entity.id()) == filter.ids().end()) {
    return false;
  }
  if (filter.has_observed()) {
    const auto& r = filter.observed();
    if ((r.has_start() || r.has_end()) && !entity.has_observed_time()) return false;
    if (r.has_start() && !BeforeOrEqual(r.start(), entity.observed_time())) return false;
    if (r.has_end() && !Before(entity.observed_time(), r.end())) return false;
  }
  if (filter.has_area() && filter.area().shape_case() != GeoArea::SHAPE_NOT_SET) {
    if (!InArea(filter.area(), entity.has_location() ? &entity.location() : nullptr,
                entity.region())) {
      return false;
    }
  }
  for (const AttributeFilter& f : filter.attributes()) {
    if (!MatchesAttribute(f, entity)) return false;
  }
  return true;
}

const Value* FindAttribute(const Entity& entity, std::string_view path) {
  if (path.empty()) return nullptr;
  size_t dot = path.find('.');
  std::string_view head = path.substr(0, dot);
  auto it = entity.attributes().find(std::string(head));
  if (it == entity.attributes().end()) return nullptr;
  const Value* v = &it->second;
  while (dot != std::string_view::npos) {
    size_t start = dot + 1;
    dot = path.find('.', start);
    std::string_view token =
        path.substr(start, dot == std::string_view::npos ? std::string_view::npos : dot - start);
    if (v->kind_case() == Value::kMapValue) {
      auto f = v->map_value().fields().find(std::string(token));
      if (f == v->map_value().fields().end()) return nullptr;
      v = &f->second;
    } else if (v->kind_case() == Value::kListValue) {
      // A numeric token indexes a list: `needs.0`.
      size_t index = 0;
      if (token.empty()) return nullptr;
      for (char c : token) {
        if (c < '0' || c > '9' || index > (1u << 30)) return nullptr;
        index = index * 10 + static_cast<size_t>(c - '0');
      }
      if (index >= static_cast<size_t>(v->list_value().values_size())) return nullptr;
      v = &v->list_value().values(static_cast<int>(index));
    } else {
      return nullptr;
    }
  }
  return v;
}

}  // namespace cityos
