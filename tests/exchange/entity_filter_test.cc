// Filters: every comparison over every kind mix, areas, ranges, validation.
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "cityos/entity.h"
#include "gtest/gtest.h"

namespace cityos {
namespace {

using common::v1::GeoArea;
using exchange::v1::AttributeFilter;
using exchange::v1::Comparison;
using exchange::v1::Entity;
using exchange::v1::EntityFilter;
using exchange::v1::Value;

Value Int(int64_t v) { Value x; x.set_int_value(v); return x; }
Value Dbl(double v) { Value x; x.set_double_value(v); return x; }
Value Str(std::string v) { Value x; x.set_string_value(std::move(v)); return x; }
Value Bool(bool v) { Value x; x.set_bool_value(v); return x; }
Value Bytes(std::string v) { Value x; x.set_bytes_value(std::move(v)); return x; }
Value Time(int64_t s, int32_t n = 0) {
  Value x; x.mutable_time_value()->set_seconds(s); x.mutable_time_value()->set_nanos(n); return x;
}
Value Dur(int64_t s) { Value x; x.mutable_duration_value()->set_seconds(s); return x; }
Value Geo(double lat, double lon) {
  Value x; x.mutable_geo_value()->set_latitude(lat); x.mutable_geo_value()->set_longitude(lon);
  return x;
}
Value WithUnit(Value v, std::string unit) { v.set_unit(std::move(unit)); return v; }

Entity OneAttribute(const Value& v) {
  Entity e;
  e.set_type("t");
  e.set_id("i");
  (*e.mutable_attributes())["a"] = v;
  return e;
}

bool Matches(const Entity& e, Comparison c, const Value& operand) {
  EntityFilter f;
  AttributeFilter* a = f.add_attributes();
  a->set_path("a");
  a->set_comparison(c);
  if (c == exchange::v1::COMPARISON_IN) {
    *a->add_values() = operand;
  } else if (c != exchange::v1::COMPARISON_EXISTS && c != exchange::v1::COMPARISON_NOT_EXISTS) {
    *a->mutable_value() = operand;
  }
  EXPECT_TRUE(ValidateFilter(f).ok()) << ValidateFilter(f);
  return MatchesFilter(f, e);
}

struct Row {
  const char* name;
  Value attribute;
  Value operand;
  // EQ, NE, LT, LE, GT, GE, IN, PREFIX (-1: not applicable)
  int eq, ne, lt, le, gt, ge, in, prefix;
};

TEST(MatchesFilter, ComparisonTable) {
  using namespace exchange::v1;  // NOLINT
  std::vector<Row> rows = {
      {"int<int", Int(3), Int(5), 0, 1, 1, 1, 0, 0, 0, -1},
      {"int==int", Int(5), Int(5), 1, 0, 0, 1, 0, 1, 1, -1},
      {"int==double", Int(5), Dbl(5.0), 1, 0, 0, 1, 0, 1, 1, -1},
      {"double>int", Dbl(5.5), Int(5), 0, 1, 0, 0, 1, 1, 0, -1},
      {"big int vs double", Int(9007199254740993), Dbl(9007199254740992.0), 0, 1, 0, 0, 1, 1, 0,
       -1},
      {"nan", Dbl(std::nan("")), Dbl(1), 0, 1, 0, 0, 0, 0, 0, -1},
      {"string code point", Str("Z"), Str("a"), 0, 1, 1, 1, 0, 0, 0, 0},
      {"string utf8 order", Str("\xc3\xa9"), Str("z"), 0, 1, 0, 0, 1, 1, 0, 0},
      {"string prefix", Str("hospital-12/icu"), Str("hospital-12"), 0, 1, 0, 0, 1, 1, 0, 1},
      {"string==", Str("x"), Str("x"), 1, 0, 0, 1, 0, 1, 1, 1},
      {"string vs int", Str("5"), Int(5), 0, 0, 0, 0, 0, 0, 0, -1},
      {"bool==", Bool(true), Bool(true), 1, 0, 0, 0, 0, 0, 1, -1},
      {"bool!=", Bool(true), Bool(false), 0, 1, 0, 0, 0, 0, 0, -1},
      {"bool vs int", Bool(true), Int(1), 0, 0, 0, 0, 0, 0, 0, -1},
      {"bytes==", Bytes("ab"), Bytes("ab"), 1, 0, 0, 0, 0, 0, 1, -1},
      {"bytes vs string", Bytes("ab"), Str("ab"), 0, 0, 0, 0, 0, 0, 0, 0},
      {"time<", Time(100, 5), Time(100, 6), 0, 1, 1, 1, 0, 0, 0, -1},
      {"time==", Time(100, 6), Time(100, 6), 1, 0, 0, 1, 0, 1, 1, -1},
      {"duration>", Dur(60), Dur(30), 0, 1, 0, 0, 1, 1, 0, -1},
      {"time vs duration", Time(60), Dur(60), 0, 0, 0, 0, 0, 0, 0, -1},
      {"geo==", Geo(1, 2), Geo(1, 2), 1, 0, 0, 0, 0, 0, 1, -1},
      {"geo!=", Geo(1, 2), Geo(1, 3), 0, 1, 0, 0, 0, 0, 0, -1},
      {"units equal", WithUnit(Dbl(5), "kWh"), WithUnit(Dbl(5), "kWh"), 1, 0, 0, 1, 0, 1, 1, -1},
      {"units differ", WithUnit(Dbl(5), "kWh"), WithUnit(Dbl(5), "MWh"), 0, 1, 0, 0, 0, 0, 0, -1},
      {"operand unitless", WithUnit(Dbl(5), "kWh"), Dbl(4), 0, 1, 0, 0, 1, 1, 0, -1},
  };
  const Comparison comps[] = {COMPARISON_EQUAL, COMPARISON_NOT_EQUAL, COMPARISON_LESS,
                              COMPARISON_LESS_OR_EQUAL, COMPARISON_GREATER,
                              COMPARISON_GREATER_OR_EQUAL, COMPARISON_IN, COMPARISON_PREFIX};
  for (const Row& r : rows) {
    Entity e = OneAttribute(r.attribute);
    int want[] = {r.eq, r.ne, r.lt, r.le, r.gt, r.ge, r.in, r.prefix};
    for (int i = 0; i < 8; ++i) {
      if (want[i] < 0) continue;
      EXPECT_EQ(Matches(e, comps[i], r.operand), want[i] == 1)
          << r.name << " " << Comparison_Name(comps[i]);
    }
    EXPECT_TRUE(Matches(e, COMPARISON_EXISTS, Value()));
    EXPECT_FALSE(Matches(e, COMPARISON_NOT_EXISTS, Value()));
  }
}

TEST(MatchesFilter, AbsentAttribute) {
  using namespace exchange::v1;  // NOLINT
  Entity e = OneAttribute(Int(1));
  auto absent = [&](Comparison c, const Value& v) {
    EntityFilter f;
    auto* a = f.add_attributes();
    a->set_path("missing.deep");
    a->set_comparison(c);
    if (c == COMPARISON_IN) *a->add_values() = v; else *a->mutable_value() = v;
    return MatchesFilter(f, e);
  };
  EXPECT_TRUE(absent(COMPARISON_NOT_EQUAL, Int(1)));
  EXPECT_TRUE(absent(COMPARISON_NOT_EXISTS, Value()));
  EXPECT_FALSE(absent(COMPARISON_EXISTS, Value()));
  EXPECT_FALSE(absent(COMPARISON_EQUAL, Int(1)));
  EXPECT_FALSE(absent(COMPARISON_LESS, Int(1)));
  EXPECT_FALSE(absent(COMPARISON_IN, Int(1)));
  EXPECT_FALSE(absent(COMPARISON_PREFIX, Str("")));
}

TEST(MatchesFilter, InWithSeveralValuesAndNestedPath) {
  Entity e;
  Value stop;
  (*stop.mutable_map_value()->mutable_fields())["stop_id"] = Str("S42");
  (*e.mutable_attributes())["boarding_stop"] = stop;
  EntityFilter f;
  auto* a = f.add_attributes();
  a->set_path("boarding_stop.stop_id");
  a->set_comparison(exchange::v1::COMPARISON_IN);
  *a->add_values() = Int(42);
  *a->add_values() = Str("S41");
  ASSERT_TRUE(ValidateFilter(f).ok());
  EXPECT_FALSE(MatchesFilter(f, e));
  *a->add_values() = Str("S42");
  EXPECT_TRUE(MatchesFilter(f, e));
}

TEST(MatchesFilter, EnvelopeConditions) {
  Entity e = OneAttribute(Int(1));
  e.set_owner("hospital-a");
  e.set_data_subject("p-1");
  e.mutable_observed_time()->set_seconds(1000);
  EntityFilter f;
  EXPECT_TRUE(MatchesFilter(f, e));
  f.set_type("t");
  f.add_ids("x");
  EXPECT_FALSE(MatchesFilter(f, e));
  f.add_ids("i");
  EXPECT_TRUE(MatchesFilter(f, e));
  f.set_owner("hospital-b");
  EXPECT_FALSE(MatchesFilter(f, e));
  f.set_owner("hospital-a");
  f.set_data_subject("p-2");
  EXPECT_FALSE(MatchesFilter(f, e));
  f.set_data_subject("p-1");
  EXPECT_TRUE(MatchesFilter(f, e));
  // [start, end)
  f.mutable_observed()->mutable_start()->set_seconds(1000);
  f.mutable_observed()->mutable_end()->set_seconds(1001);
  EXPECT_TRUE(MatchesFilter(f, e));
  f.mutable_observed()->mutable_end()->set_seconds(1000);
  EXPECT_FALSE(MatchesFilter(f, e));
  f.mutable_observed()->clear_end();
  f.mutable_observed()->mutable_start()->set_nanos(1);
  EXPECT_FALSE(MatchesFilter(f, e));
  f.set_type("other");
  f.clear_observed();
  EXPECT_FALSE(MatchesFilter(f, e));
}

GeoArea Box(double s, double w, double n, double e) {
  GeoArea a;
  auto* b = a.mutable_bounding_box();
  b->mutable_south_west()->set_latitude(s);
  b->mutable_south_west()->set_longitude(w);
  b->mutable_north_east()->set_latitude(n);
  b->mutable_north_east()->set_longitude(e);
  return a;
}

common::v1::GeoPoint Pt(double lat, double lon) {
  common::v1::GeoPoint p;
  p.set_latitude(lat);
  p.set_longitude(lon);
  return p;
}

TEST(InArea, BoundingBoxIncludingAntimeridian) {
  GeoArea box = Box(28, 118, 30, 119);
  auto p = Pt(29, 118.5);
  EXPECT_TRUE(InArea(box, &p, ""));
  p = Pt(29, 119.5);
  EXPECT_FALSE(InArea(box, &p, ""));
  p = Pt(30, 119);  // edges are inside
  EXPECT_TRUE(InArea(box, &p, ""));
  EXPECT_FALSE(InArea(box, nullptr, ""));
  GeoArea fiji = Box(-20, 175, -15, -178);  // west > east: crosses 180
  p = Pt(-17, 179.9);
  EXPECT_TRUE(InArea(fiji, &p, ""));
  p = Pt(-17, -179);
  EXPECT_TRUE(InArea(fiji, &p, ""));
  p = Pt(-17, 0);
  EXPECT_FALSE(InArea(fiji, &p, ""));
  p = Pt(-17, -170);
  EXPECT_FALSE(InArea(fiji, &p, ""));
}

TEST(InArea, CircleHaversine) {
  GeoArea c;
  *c.mutable_circle()->mutable_center() = Pt(0, 0);
  // One degree of arc on the 6371008.8 m sphere is 111195.08 m.
  c.mutable_circle()->set_radius_m(111196);
  auto p = Pt(0, 1);
  EXPECT_TRUE(InArea(c, &p, ""));
  c.mutable_circle()->set_radius_m(111194);
  EXPECT_FALSE(InArea(c, &p, ""));
  // Across the antimeridian the distance is short.
  *c.mutable_circle()->mutable_center() = Pt(0, 179.9);
  c.mutable_circle()->set_radius_m(30000);
  p = Pt(0, -179.9);
  EXPECT_TRUE(InArea(c, &p, ""));
}

TEST(InArea, PolygonRayCasting) {
  GeoArea a;
  // A concave "L": the notch at (1.5, 1.5) is outside.
  for (auto [lat, lon] : std::vector<std::pair<double, double>>{
           {0, 0}, {0, 2}, {1, 2}, {1, 1}, {2, 1}, {2, 0}}) {
    *a.mutable_polygon()->add_vertices() = Pt(lat, lon);
  }
  auto p = Pt(0.5, 0.5);
  EXPECT_TRUE(InArea(a, &p, ""));
  p = Pt(0.5, 1.5);
  EXPECT_TRUE(InArea(a, &p, ""));
  p = Pt(1.5, 1.5);
  EXPECT_FALSE(InArea(a, &p, ""));
  p = Pt(1.5, 0.5);
  EXPECT_TRUE(InArea(a, &p, ""));
  p = Pt(3, 3);
  EXPECT_FALSE(InArea(a, &p, ""));
}

TEST(InArea, RegionByTokens) {
  GeoArea a;
  a.set_region("CN-ZJ-QZ");
  EXPECT_TRUE(InArea(a, nullptr, "CN-ZJ-QZ"));
  EXPECT_TRUE(InArea(a, nullptr, "CN-ZJ-QZ-KC"));
  EXPECT_FALSE(InArea(a, nullptr, "CN-ZJ-QZX"));
  EXPECT_FALSE(InArea(a, nullptr, "CN-ZJ"));
  EXPECT_FALSE(InArea(a, nullptr, ""));
}

TEST(MatchesFilter, AreaNeedsLocation) {
  Entity e = OneAttribute(Int(1));
  EntityFilter f;
  *f.mutable_area() = Box(0, 0, 1, 1);
  EXPECT_FALSE(MatchesFilter(f, e));
  *e.mutable_location() = Pt(0.5, 0.5);
  EXPECT_TRUE(MatchesFilter(f, e));
  f.mutable_area()->set_region("CN");
  EXPECT_FALSE(MatchesFilter(f, e));
  e.set_region("CN-ZJ");
  EXPECT_TRUE(MatchesFilter(f, e));
}

TEST(ValidateFilter, NamesTheBadPart) {
  using namespace exchange::v1;  // NOLINT
  auto err = [](const EntityFilter& f) { return std::string(ValidateFilter(f).message()); };
  EntityFilter f;
  EXPECT_TRUE(ValidateFilter(f).ok());
  auto* a = f.add_attributes();
  a->set_path("x..y");
  a->set_comparison(COMPARISON_EXISTS);
  EXPECT_NE(err(f).find("filter.attributes[0].path"), std::string::npos) << err(f);
  a->set_path("");
  EXPECT_NE(err(f).find("empty path"), std::string::npos);
  a->set_path("x.y");
  EXPECT_TRUE(ValidateFilter(f).ok());
  a->set_comparison(COMPARISON_UNSPECIFIED);
  EXPECT_NE(err(f).find("comparison not set"), std::string::npos);
  a->set_comparison(COMPARISON_LESS);
  EXPECT_NE(err(f).find("needs a value"), std::string::npos);
  a->set_comparison(COMPARISON_IN);
  EXPECT_NE(err(f).find("at least one value"), std::string::npos);
  a->set_comparison(COMPARISON_PREFIX);
  *a->mutable_value() = Int(3);
  EXPECT_NE(err(f).find("string value"), std::string::npos);
  f.clear_attributes();
  *f.mutable_area() = Box(5, 0, 1, 1);
  EXPECT_NE(err(f).find("south latitude"), std::string::npos);
  *f.mutable_area() = Box(0, 0, 1, 200);
  EXPECT_NE(err(f).find("longitude"), std::string::npos);
  f.mutable_area()->mutable_circle()->set_radius_m(-1);
  EXPECT_NE(err(f).find("no center"), std::string::npos);
  *f.mutable_area()->mutable_circle()->mutable_center() = Pt(0, 0);
  EXPECT_NE(err(f).find("radius_m"), std::string::npos);
  f.mutable_area()->mutable_polygon()->add_vertices();
  EXPECT_NE(err(f).find("at least 3"), std::string::npos);
  f.mutable_area()->set_region("CN--ZJ");
  EXPECT_NE(err(f).find("empty token"), std::string::npos);
  f.clear_area();
  f.mutable_observed()->mutable_start()->set_seconds(10);
  f.mutable_observed()->mutable_end()->set_seconds(9);
  EXPECT_NE(err(f).find("end before start"), std::string::npos);
}

}  // namespace
}  // namespace cityos
