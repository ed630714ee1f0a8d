// The demo-city simulator (see sim.h): the default Quzhou city, config
// parsing and validation, and the deterministic event generation.
#include "sim.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "cityos/carbon/v1/carbon_events.pb.h"
#include "cityos/clock.h"
#include "cityos/config.h"
#include "cityos/event.h"
#include "cityos/id.h"
#include "cityos/logging.h"
#include "cityos/mobility/v1/mobility.pb.h"
#include "cityos/payments/v1/payments.pb.h"
#include "cityos/proto_time.h"
#include "cityos/status.h"

namespace cityos::citysim {

namespace cv1 = carbon::v1;

// ---- deterministic randomness -------------------------------------------------

namespace {

constexpr char kLog[] = "city-sim";

uint64_t Mix(uint64_t x) {  // SplitMix64 finaliser
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

uint64_t Key(uint64_t seed, std::string_view what, int64_t n) {
  uint64_t h = 0xcbf29ce484222325ull ^ Mix(seed);
  for (char c : what) {
    h ^= static_cast<uint8_t>(c);
    h *= 0x100000001b3ull;
  }
  return Mix(Mix(h) ^ Mix(static_cast<uint64_t>(n) + 0x632be59bd9b4e019ull));
}

class Rng {
 public:
  explicit Rng(uint64_t state) : s_(state) {}
  uint64_t Next() { return Mix(s_ += 0x9e3779b97f4a7c15ull); }
  double Uniform() { return static_cast<double>(Next() >> 11) * 0x1.0p-53; }  // [0, 1)
  double Between(double lo, double hi) { return lo + (hi - lo) * Uniform(); }
  int64_t Int(int64_t n) { return static_cast<int64_t>(Next() % static_cast<uint64_t>(n)); }
  double Normal() {
    double u1 = std::max(Uniform(), 1e-12), u2 = Uniform();
    return std::sqrt(-2.0 * std::log(u1)) * std::cos(2 * M_PI * u2);
  }
  int Poisson(double lambda) {
    if (lambda <= 0) return 0;
    double l = std::exp(-lambda), p = 1;
    int k = 0;
    do {
      ++k;
      p *= Uniform();
    } while (p > l && k < 1000);
    return k - 1;
  }

 private:
  uint64_t s_;
};

std::string Hex(uint64_t v, int digits) {
  std::string s = absl::StrFormat("%016x", v);
  return s.substr(16 - digits);
}

// A UUIDv7 whose time is `t` and whose random bits come from `h`.
std::string DetId(absl::Time t, uint64_t h) {
  Uuid u{};
  uint64_t ms = static_cast<uint64_t>(absl::ToUnixMillis(t));
  for (int i = 0; i < 6; ++i) u[i] = static_cast<uint8_t>(ms >> (40 - 8 * i));
  uint64_t r1 = Mix(h), r2 = Mix(h ^ 0x5bd1e9955bd1e995ull);
  u[6] = static_cast<uint8_t>(0x70 | ((r1 >> 8) & 0x0f));
  u[7] = static_cast<uint8_t>(r1);
  u[8] = static_cast<uint8_t>(0x80 | ((r2 >> 56) & 0x3f));
  for (int i = 9; i < 16; ++i) u[i] = static_cast<uint8_t>(r2 >> (8 * (15 - i)));
  return UuidToString(u);
}

double Round3(double v) { return std::round(v * 1000.0) / 1000.0; }

int64_t FloorDiv(absl::Duration a, absl::Duration b) {
  return static_cast<int64_t>(std::floor(absl::FDivDuration(a, b)));
}

bool IsAccountIdPart(std::string_view s) {
  if (s.empty() || s.size() > 64) return false;
  for (char c : s) {
    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
          c == '_' || c == '-')) {
      return false;
    }
  }
  return true;
}

bool IsToken(std::string_view s) {
  if (s.empty() || s.size() > 64) return false;
  for (char c : s) {
    if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '-')) return false;
  }
  return true;
}

struct EnergyName {
  const char* name;
  cv1::EnergyKind kind;
};
constexpr EnergyName kEnergies[] = {
    {"electricity", cv1::ENERGY_KIND_ELECTRICITY},
    {"natural_gas", cv1::ENERGY_KIND_NATURAL_GAS},
    {"steam", cv1::ENERGY_KIND_STEAM},
    {"diesel", cv1::ENERGY_KIND_DIESEL},
    {"gasoline", cv1::ENERGY_KIND_GASOLINE},
    {"coal", cv1::ENERGY_KIND_COAL},
    {"lpg", cv1::ENERGY_KIND_LPG},
    {"fuel_oil", cv1::ENERGY_KIND_FUEL_OIL},
    {"heat", cv1::ENERGY_KIND_HEAT},
};

SimMeter Meter(std::string id, cv1::EnergyKind e, std::string unit, double per_hour,
               std::string tariff = "") {
  return SimMeter{std::move(id), e, std::move(unit), per_hour, std::move(tariff)};
}

}  // namespace

bool SimUnitAccepted(cv1::EnergyKind kind, std::string_view unit) {
  switch (kind) {
    case cv1::ENERGY_KIND_ELECTRICITY:
      return unit == "kWh" || unit == "MWh";
    case cv1::ENERGY_KIND_NATURAL_GAS:
      return unit == "m3";
    case cv1::ENERGY_KIND_STEAM:
      return unit == "GJ" || unit == "t";
    case cv1::ENERGY_KIND_DIESEL:
    case cv1::ENERGY_KIND_GASOLINE:
    case cv1::ENERGY_KIND_COAL:
    case cv1::ENERGY_KIND_LPG:
    case cv1::ENERGY_KIND_FUEL_OIL:
      return unit == "kg" || unit == "t";
    case cv1::ENERGY_KIND_HEAT:
      return unit == "GJ";
    default:
      return false;
  }
}

// ---- the default city -----------------------------------------------------------

SimConfig DefaultQuzhouConfig() {
  SimConfig c;
  c.districts = {
      {"kecheng", "CN-ZJ-QZ-KC", "Kecheng", 28.970, 118.870},
      {"qujiang", "CN-ZJ-QZ-QJ", "Qujiang", 28.980, 118.960},
      {"longyou", "CN-ZJ-QZ-LY", "Longyou", 29.030, 119.170},
      {"jiangshan", "CN-ZJ-QZ-JS", "Jiangshan", 28.740, 118.630},
  };
  using cv1::ENERGY_KIND_COAL, cv1::ENERGY_KIND_DIESEL, cv1::ENERGY_KIND_ELECTRICITY,
      cv1::ENERGY_KIND_NATURAL_GAS, cv1::ENERGY_KIND_STEAM;
  // Steel: an electric-arc melt shop and a rolling mill, around the clock.
  c.enterprises.push_back(
      SimEnterprise{"qz-steel",
                    "Quzhou Special Steel",
                    "qz-steel",
                    "C3120",
                    "kecheng",
                    LoadProfile::kContinuous,
                    120000,
                    {SimSite{"site-1",
                             "Kecheng works",
                             "kecheng",
                             {SimLine{"melt-shop",
                                      "EAF melt shop",
                                      {Meter("elec", ENERGY_KIND_ELECTRICITY, "kWh", 18000),
                                       Meter("gas", ENERGY_KIND_NATURAL_GAS, "m3", 1500)},
                                      {}},
                              SimLine{"rolling-mill",
                                      "Rolling mill",
                                      {Meter("elec", ENERGY_KIND_ELECTRICITY, "kWh", 6000),
                                       Meter("gas", ENERGY_KIND_NATURAL_GAS, "m3", 900)},
                                      {}}}}}});
  // Cement: a clinker kiln (coal + process emissions) and cement grinding.
  c.enterprises.push_back(
      SimEnterprise{"js-cement",
                    "Jiangshan Cement",
                    "js-cement",
                    "C3011",
                    "jiangshan",
                    LoadProfile::kContinuous,
                    60000,
                    {SimSite{"plant-1",
                             "Jiangshan plant",
                             "jiangshan",
                             {SimLine{"kiln-1",
                                      "Clinker kiln 1",
                                      {Meter("elec", ENERGY_KIND_ELECTRICITY, "kWh", 9000),
                                       Meter("coal", ENERGY_KIND_COAL, "t", 28)},
                                      {SimProcess{"cement-clinker", "clinker", "t", 210}}},
                              SimLine{"grinding",
                                      "Cement grinding",
                                      {Meter("elec", ENERGY_KIND_ELECTRICITY, "kWh", 7000)},
                                      {}}}}}});
  // Fluorochemicals: synthesis with purchased steam and gas, a site fleet.
  c.enterprises.push_back(
      SimEnterprise{"qz-chem",
                    "Quzhou Fluorochemicals",
                    "qz-chem",
                    "C2614",
                    "kecheng",
                    LoadProfile::kContinuous,
                    150000,
                    {SimSite{"site-1",
                             "Chemical park",
                             "kecheng",
                             {SimLine{"synthesis",
                                      "Synthesis unit",
                                      {Meter("elec", ENERGY_KIND_ELECTRICITY, "kWh", 12000),
                                       Meter("steam", ENERGY_KIND_STEAM, "GJ", 170),
                                       Meter("gas", ENERGY_KIND_NATURAL_GAS, "m3", 2500)},
                                      {}},
                              SimLine{"logistics",
                                      "Site logistics",
                                      {Meter("diesel", ENERGY_KIND_DIESEL, "kg", 150)},
                                      {}}}}}});
  // Textiles: spinning and dyeing on two shifts.
  c.enterprises.push_back(SimEnterprise{
      "ly-textile",
      "Longyou Textiles",
      "ly-textile",
      "C1711",
      "longyou",
      LoadProfile::kTwoShift,
      12000,
      {SimSite{
          "mill-1",
          "Longyou mill",
          "longyou",
          {SimLine{
               "spinning", "Spinning", {Meter("elec", ENERGY_KIND_ELECTRICITY, "kWh", 3500)}, {}},
           SimLine{"dyeing",
                   "Dyeing",
                   {Meter("elec", ENERGY_KIND_ELECTRICITY, "kWh", 1200),
                    Meter("steam", ENERGY_KIND_STEAM, "GJ", 18),
                    Meter("gas", ENERGY_KIND_NATURAL_GAS, "m3", 300)},
                   {}}}}}});
  // Data centre: two halls (one on a green tariff) and backup diesel.
  c.enterprises.push_back(SimEnterprise{
      "qj-datacentre",
      "Qujiang Cloud Data Centre",
      "qj-datacentre",
      "I6550",
      "qujiang",
      LoadProfile::kDataCentre,
      30000,
      {SimSite{
          "campus-1",
          "Qujiang campus",
          "qujiang",
          {SimLine{"hall-a", "Hall A", {Meter("elec", ENERGY_KIND_ELECTRICITY, "kWh", 4000)}, {}},
           SimLine{"hall-b",
                   "Hall B",
                   {Meter("elec", ENERGY_KIND_ELECTRICITY, "kWh", 3500, "zj-green-2026")},
                   {}},
           SimLine{"backup",
                   "Backup generators",
                   {Meter("diesel", ENERGY_KIND_DIESEL, "kg", 5)},
                   {}}}}}});
  return c;
}

// ---- config ----------------------------------------------------------------------

namespace {

absl::StatusOr<cv1::EnergyKind> ParseEnergy(const ConfigNode& n, std::string_view key) {
  CITYOS_ASSIGN_OR_RETURN(std::string s, n.GetString(key));
  for (const EnergyName& e : kEnergies) {
    if (s == e.name) return e.kind;
  }
  return n.Error(key, absl::StrCat("\"", s,
                                   "\" is not an energy kind (electricity, natural_gas, "
                                   "steam, diesel, gasoline, coal, lpg, fuel_oil, heat)"));
}

absl::StatusOr<LoadProfile> ParseProfile(const ConfigNode& n) {
  CITYOS_ASSIGN_OR_RETURN(std::string s, n.GetString("profile", "continuous"));
  if (s == "continuous") return LoadProfile::kContinuous;
  if (s == "two_shift") return LoadProfile::kTwoShift;
  if (s == "data_centre") return LoadProfile::kDataCentre;
  return n.Error("profile", "expected continuous, two_shift or data_centre");
}

absl::StatusOr<SimEnterprise> ParseEnterprise(const ConfigNode& n) {
  CITYOS_RETURN_IF_ERROR(n.CheckKeys(
      {"id", "name", "org", "industry", "district", "profile", "value_added_per_year", "sites"}));
  SimEnterprise e;
  CITYOS_ASSIGN_OR_RETURN(e.id, n.GetString("id"));
  CITYOS_ASSIGN_OR_RETURN(e.name, n.GetString("name", e.id));
  CITYOS_ASSIGN_OR_RETURN(e.org, n.GetString("org", e.id));
  CITYOS_ASSIGN_OR_RETURN(e.industry_code, n.GetString("industry"));
  CITYOS_ASSIGN_OR_RETURN(e.district, n.GetString("district"));
  CITYOS_ASSIGN_OR_RETURN(e.profile, ParseProfile(n));
  CITYOS_ASSIGN_OR_RETURN(e.value_added_per_year, n.GetDouble("value_added_per_year"));
  CITYOS_ASSIGN_OR_RETURN(std::vector<ConfigNode> sites, n.Elements("sites"));
  for (const ConfigNode& sn : sites) {
    CITYOS_RETURN_IF_ERROR(sn.CheckKeys({"id", "name", "district", "lines"}));
    SimSite site;
    CITYOS_ASSIGN_OR_RETURN(site.id, sn.GetString("id"));
    CITYOS_ASSIGN_OR_RETURN(site.name, sn.GetString("name", site.id));
    CITYOS_ASSIGN_OR_RETURN(site.district, sn.GetString("district", e.district));
    CITYOS_ASSIGN_OR_RETURN(std::vector<ConfigNode> lines, sn.Elements("lines"));
    for (const ConfigNode& ln : lines) {
      CITYOS_RETURN_IF_ERROR(ln.CheckKeys({"id", "name", "meters", "processes"}));
      SimLine line;
      CITYOS_ASSIGN_OR_RETURN(line.id, ln.GetString("id"));
      CITYOS_ASSIGN_OR_RETURN(line.name, ln.GetString("name", line.id));
      CITYOS_ASSIGN_OR_RETURN(std::vector<ConfigNode> meters, ln.ElementsOrEmpty("meters"));
      for (const ConfigNode& mn : meters) {
        CITYOS_RETURN_IF_ERROR(mn.CheckKeys({"id", "energy", "unit", "per_hour", "tariff"}));
        SimMeter m;
        CITYOS_ASSIGN_OR_RETURN(m.id, mn.GetString("id"));
        CITYOS_ASSIGN_OR_RETURN(m.energy, ParseEnergy(mn, "energy"));
        CITYOS_ASSIGN_OR_RETURN(m.unit, mn.GetString("unit"));
        if (!SimUnitAccepted(m.energy, m.unit)) {
          return mn.Error("unit",
                          absl::StrCat("\"", m.unit, "\" is not accepted for this energy kind"));
        }
        CITYOS_ASSIGN_OR_RETURN(m.per_hour, mn.GetDouble("per_hour"));
        if (!(m.per_hour > 0)) return mn.Error("per_hour", "must be positive");
        CITYOS_ASSIGN_OR_RETURN(m.tariff_id, mn.GetString("tariff", ""));
        line.meters.push_back(std::move(m));
      }
      CITYOS_ASSIGN_OR_RETURN(std::vector<ConfigNode> procs, ln.ElementsOrEmpty("processes"));
      for (const ConfigNode& pn : procs) {
        CITYOS_RETURN_IF_ERROR(pn.CheckKeys({"method", "key", "unit", "per_hour"}));
        SimProcess p;
        CITYOS_ASSIGN_OR_RETURN(p.method, pn.GetString("method"));
        CITYOS_ASSIGN_OR_RETURN(p.key, pn.GetString("key"));
        CITYOS_ASSIGN_OR_RETURN(p.unit, pn.GetString("unit", "t"));
        CITYOS_ASSIGN_OR_RETURN(p.per_hour, pn.GetDouble("per_hour"));
        if (!(p.per_hour > 0)) return pn.Error("per_hour", "must be positive");
        line.processes.push_back(std::move(p));
      }
      site.lines.push_back(std::move(line));
    }
    e.sites.push_back(std::move(site));
  }
  return e;
}

}  // namespace

absl::StatusOr<SimConfig> ParseSimConfig(const ConfigNode& s,
                                         std::initializer_list<std::string_view> allowed_extra) {
  if (!s.IsMap()) return s.Error("", "expected a map");
  static const std::set<std::string, std::less<>> kKeys = {
      "seed", "consent_share", "citizens", "rates", "city", "enterprises", "orgs"};
  for (const std::string& k : s.Keys()) {
    if (kKeys.contains(k)) continue;
    if (std::find(allowed_extra.begin(), allowed_extra.end(), k) != allowed_extra.end()) continue;
    return s.Error(k, "unknown key");
  }
  SimConfig c = DefaultQuzhouConfig();
  CITYOS_ASSIGN_OR_RETURN(int64_t seed, s.GetInt("seed", 1));
  c.seed = static_cast<uint64_t>(seed);
  CITYOS_ASSIGN_OR_RETURN(c.consent_share, s.GetDouble("consent_share", c.consent_share));

  CITYOS_ASSIGN_OR_RETURN(ConfigNode cit, s.ChildOrEmpty("citizens"));
  CITYOS_RETURN_IF_ERROR(cit.CheckKeys({"count", "subject_prefix", "metro_rides_per_day",
                                        "bus_rides_per_day", "walks_per_day", "bike_trips_per_day",
                                        "green_payments_per_day", "einvoices_per_day"}));
  CITYOS_ASSIGN_OR_RETURN(int64_t count, cit.GetInt("count", c.citizens));
  c.citizens = static_cast<int>(count);
  CITYOS_ASSIGN_OR_RETURN(c.subject_prefix, cit.GetString("subject_prefix", c.subject_prefix));
  SimRates& r = c.rates;
  CITYOS_ASSIGN_OR_RETURN(r.metro_rides_per_day,
                          cit.GetDouble("metro_rides_per_day", r.metro_rides_per_day));
  CITYOS_ASSIGN_OR_RETURN(r.bus_rides_per_day,
                          cit.GetDouble("bus_rides_per_day", r.bus_rides_per_day));
  CITYOS_ASSIGN_OR_RETURN(r.walks_per_day, cit.GetDouble("walks_per_day", r.walks_per_day));
  CITYOS_ASSIGN_OR_RETURN(r.bike_trips_per_day,
                          cit.GetDouble("bike_trips_per_day", r.bike_trips_per_day));
  CITYOS_ASSIGN_OR_RETURN(r.green_payments_per_day,
                          cit.GetDouble("green_payments_per_day", r.green_payments_per_day));
  CITYOS_ASSIGN_OR_RETURN(r.einvoices_per_day,
                          cit.GetDouble("einvoices_per_day", r.einvoices_per_day));

  CITYOS_ASSIGN_OR_RETURN(ConfigNode rates, s.ChildOrEmpty("rates"));
  CITYOS_RETURN_IF_ERROR(
      rates.CheckKeys({"interval", "readings_per_interval", "speed", "noise", "duplicate_share",
                       "out_of_order_share", "impossible_share"}));
  CITYOS_ASSIGN_OR_RETURN(r.interval, rates.GetDuration("interval", r.interval));
  CITYOS_ASSIGN_OR_RETURN(int64_t per,
                          rates.GetInt("readings_per_interval", r.readings_per_interval));
  r.readings_per_interval = static_cast<int>(per);
  CITYOS_ASSIGN_OR_RETURN(r.speed, rates.GetDouble("speed", r.speed));
  CITYOS_ASSIGN_OR_RETURN(r.noise, rates.GetDouble("noise", r.noise));
  CITYOS_ASSIGN_OR_RETURN(r.duplicate_share, rates.GetDouble("duplicate_share", r.duplicate_share));
  CITYOS_ASSIGN_OR_RETURN(r.out_of_order_share,
                          rates.GetDouble("out_of_order_share", r.out_of_order_share));
  CITYOS_ASSIGN_OR_RETURN(r.impossible_share,
                          rates.GetDouble("impossible_share", r.impossible_share));

  CITYOS_ASSIGN_OR_RETURN(ConfigNode city, s.ChildOrEmpty("city"));
  CITYOS_RETURN_IF_ERROR(
      city.CheckKeys({"token", "region", "name", "jurisdiction", "time_zone", "districts"}));
  CITYOS_ASSIGN_OR_RETURN(c.city_token, city.GetString("token", c.city_token));
  CITYOS_ASSIGN_OR_RETURN(c.city_region, city.GetString("region", c.city_region));
  CITYOS_ASSIGN_OR_RETURN(c.city_name, city.GetString("name", c.city_name));
  CITYOS_ASSIGN_OR_RETURN(c.jurisdiction, city.GetString("jurisdiction", c.jurisdiction));
  CITYOS_ASSIGN_OR_RETURN(c.time_zone, city.GetString("time_zone", c.time_zone));
  if (city.Has("districts")) {
    c.districts.clear();
    CITYOS_ASSIGN_OR_RETURN(std::vector<ConfigNode> ds, city.Elements("districts"));
    for (const ConfigNode& d : ds) {
      CITYOS_RETURN_IF_ERROR(d.CheckKeys({"token", "region", "name", "latitude", "longitude"}));
      SimDistrict sd;
      CITYOS_ASSIGN_OR_RETURN(sd.token, d.GetString("token"));
      CITYOS_ASSIGN_OR_RETURN(sd.region, d.GetString("region"));
      CITYOS_ASSIGN_OR_RETURN(sd.name, d.GetString("name", sd.token));
      CITYOS_ASSIGN_OR_RETURN(sd.latitude, d.GetDouble("latitude", 0));
      CITYOS_ASSIGN_OR_RETURN(sd.longitude, d.GetDouble("longitude", 0));
      c.districts.push_back(std::move(sd));
    }
  }
  if (s.Has("enterprises")) {
    c.enterprises.clear();
    CITYOS_ASSIGN_OR_RETURN(std::vector<ConfigNode> es, s.Elements("enterprises"));
    for (const ConfigNode& e : es) {
      CITYOS_ASSIGN_OR_RETURN(SimEnterprise ent, ParseEnterprise(e));
      c.enterprises.push_back(std::move(ent));
    }
  }
  CITYOS_ASSIGN_OR_RETURN(ConfigNode orgs, s.ChildOrEmpty("orgs"));
  CITYOS_RETURN_IF_ERROR(
      orgs.CheckKeys({"metro", "bus", "trips", "payments", "einvoices", "statistics"}));
  CITYOS_ASSIGN_OR_RETURN(c.orgs.metro, orgs.GetString("metro", c.orgs.metro));
  CITYOS_ASSIGN_OR_RETURN(c.orgs.bus, orgs.GetString("bus", c.orgs.bus));
  CITYOS_ASSIGN_OR_RETURN(c.orgs.trips, orgs.GetString("trips", c.orgs.trips));
  CITYOS_ASSIGN_OR_RETURN(c.orgs.payments, orgs.GetString("payments", c.orgs.payments));
  CITYOS_ASSIGN_OR_RETURN(c.orgs.einvoices, orgs.GetString("einvoices", c.orgs.einvoices));
  CITYOS_ASSIGN_OR_RETURN(c.orgs.statistics, orgs.GetString("statistics", c.orgs.statistics));
  if (absl::Status v = ValidateSimConfig(c); !v.ok()) return s.Error("", std::string(v.message()));
  return c;
}

absl::Status ValidateSimConfig(const SimConfig& c) {
  auto bad = [](auto&&... parts) { return absl::InvalidArgumentError(absl::StrCat(parts...)); };
  if (!IsToken(c.city_token))
    return bad("city.token: \"", c.city_token, "\" is not a subject token");
  absl::TimeZone tz;
  if (!absl::LoadTimeZone(c.time_zone, &tz))
    return bad("city.time_zone: unknown \"", c.time_zone, "\"");
  if (c.jurisdiction.size() != 2)
    return bad("city.jurisdiction: expected an ISO 3166-1 alpha-2 code");
  if (c.districts.empty()) return bad("city.districts: at least one required");
  std::set<std::string> districts;
  for (size_t i = 0; i < c.districts.size(); ++i) {
    const SimDistrict& d = c.districts[i];
    if (!IsToken(d.token))
      return bad("city.districts[", i, "].token: \"", d.token, "\" is not a subject token");
    if (d.region.empty()) return bad("city.districts[", i, "].region: required");
    if (!districts.insert(d.token).second)
      return bad("city.districts[", i, "]: duplicate ", d.token);
  }
  std::set<std::string> ids;
  for (size_t i = 0; i < c.enterprises.size(); ++i) {
    const SimEnterprise& e = c.enterprises[i];
    const std::string where = absl::StrCat("enterprises[", i, "] (", e.id, ")");
    if (!IsAccountIdPart(e.id)) return bad(where, ".id: 1-64 characters of [A-Za-z0-9._-]");
    if (!ids.insert(e.id).second) return bad(where, ": duplicate id");
    if (e.org.empty()) return bad(where, ".org: required");
    if (e.industry_code.empty()) return bad(where, ".industry: required");
    if (!districts.contains(e.district))
      return bad(where, ".district: unknown \"", e.district, "\"");
    if (!(e.value_added_per_year > 0)) return bad(where, ".value_added_per_year: must be positive");
    if (e.sites.empty()) return bad(where, ".sites: at least one required");
    std::set<std::string> sites;
    for (const SimSite& s : e.sites) {
      if (!IsAccountIdPart(s.id) || !sites.insert(s.id).second) {
        return bad(where, ": site id \"", s.id, "\" is malformed or duplicate");
      }
      if (!districts.contains(s.district))
        return bad(where, ": site ", s.id, " district unknown \"", s.district, "\"");
      std::set<std::string> lines;
      for (const SimLine& l : s.lines) {
        if (!IsAccountIdPart(l.id) || !lines.insert(l.id).second) {
          return bad(where, ": line id \"", l.id, "\" is malformed or duplicate");
        }
        std::set<std::string> meters;
        for (const SimMeter& m : l.meters) {
          const std::string mid = absl::StrCat(e.id, "/", s.id, "/", l.id, "/", m.id);
          if (!IsAccountIdPart(m.id) || !meters.insert(m.id).second || mid.size() > 128) {
            return bad(where, ": meter id \"", mid, "\" is malformed, duplicate or over 128");
          }
          if (!SimUnitAccepted(m.energy, m.unit)) {
            return bad(where, ": meter ", mid, ": unit \"", m.unit,
                       "\" is not accepted for its energy kind");
          }
          if (!(m.per_hour > 0)) return bad(where, ": meter ", mid, ": per_hour must be positive");
        }
        for (const SimProcess& p : l.processes) {
          if (p.key.empty() || p.method.empty() || p.unit.empty() || !(p.per_hour > 0)) {
            return bad(where, ": line ", l.id, ": a process needs method, key, unit, per_hour > 0");
          }
        }
      }
    }
  }
  const SimRates& r = c.rates;
  if (r.readings_per_interval < 1) return bad("rates.readings_per_interval: at least 1");
  if (r.interval / r.readings_per_interval < absl::Seconds(1)) {
    return bad("rates.interval: each reading must cover at least 1s");
  }
  if (!(r.speed > 0)) return bad("rates.speed: must be positive");
  for (double v : {r.noise, r.duplicate_share, r.out_of_order_share, r.impossible_share}) {
    if (!(v >= 0 && v <= 1)) return bad("rates: noise and shares must be within 0-1");
  }
  if (r.duplicate_share + r.out_of_order_share + r.impossible_share > 1) {
    return bad("rates: duplicate + out_of_order + impossible shares exceed 1");
  }
  for (double v : {r.metro_rides_per_day, r.bus_rides_per_day, r.walks_per_day,
                   r.bike_trips_per_day, r.green_payments_per_day, r.einvoices_per_day}) {
    if (!(v >= 0 && v <= 100)) return bad("citizens: per-day rates must be within 0-100");
  }
  if (c.citizens < 0 || c.citizens > 10'000'000) return bad("citizens.count: 0-10,000,000");
  if (!(c.consent_share >= 0 && c.consent_share <= 1))
    return bad("consent_share: must be within 0-1");
  const std::string* orgs[] = {&c.orgs.metro,    &c.orgs.bus,       &c.orgs.trips,
                               &c.orgs.payments, &c.orgs.einvoices, &c.orgs.statistics};
  for (const std::string* o : orgs) {
    if (o->empty()) return bad("orgs: every org must be set");
  }
  return absl::OkStatus();
}

// ---- CitySim ----------------------------------------------------------------------

CitySim::CitySim(SimConfig config) : config_(std::move(config)) {}

absl::StatusOr<std::unique_ptr<CitySim>> CitySim::Create(SimConfig config) {
  CITYOS_RETURN_IF_ERROR(ValidateSimConfig(config));
  std::unique_ptr<CitySim> sim(new CitySim(std::move(config)));
  const SimConfig& c = sim->config_;
  absl::LoadTimeZone(c.time_zone, &sim->tz_);
  sim->slot_ = c.rates.interval / c.rates.readings_per_interval;
  for (const SimEnterprise& e : c.enterprises) {
    for (const SimSite& s : e.sites) {
      const std::string region = sim->District(s.district).region;
      for (const SimLine& l : s.lines) {
        const std::string line_id = absl::StrCat(e.id, "/", s.id, "/", l.id);
        for (const SimMeter& m : l.meters) {
          sim->meters_.push_back(
              MeterRef{absl::StrCat(line_id, "/", m.id), e.org, s.district, region, e.profile, m});
        }
        for (const SimProcess& p : l.processes) {
          sim->processes_.push_back(
              ProcessRef{line_id, e.id, e.org, s.district, region, e.profile, p});
        }
      }
    }
  }
  std::vector<size_t> order(static_cast<size_t>(c.citizens));
  std::iota(order.begin(), order.end(), 0);
  for (int i = 0; i < c.citizens; ++i) {
    uint64_t h = Key(c.seed, "citizen", i);
    sim->citizens_.push_back(
        SimCitizen{absl::StrCat(c.subject_prefix, Hex(h, 12)),
                   c.districts[Key(c.seed, "home", i) % c.districts.size()].token, false});
  }
  // Exactly round(share x N) consent, chosen by the seed.
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    return Key(c.seed, "consent", static_cast<int64_t>(a)) <
           Key(c.seed, "consent", static_cast<int64_t>(b));
  });
  const size_t consenting = static_cast<size_t>(std::llround(c.consent_share * c.citizens));
  for (size_t i = 0; i < consenting; ++i) sim->citizens_[order[i]].consents = true;
  return sim;
}

const SimDistrict& CitySim::District(const std::string& token) const {
  for (const SimDistrict& d : config_.districts) {
    if (d.token == token) return d;
  }
  return config_.districts.front();  // unreachable after validation
}

double CitySim::Profile(LoadProfile p, absl::Time t) const {
  absl::CivilSecond cs = absl::ToCivilSecond(t, tz_);
  double h = cs.hour() + cs.minute() / 60.0;
  switch (p) {
    case LoadProfile::kContinuous:  // a little more at night (cheaper power)
      return 0.93 + 0.06 * std::cos(2 * M_PI * (h - 3) / 24);
    case LoadProfile::kTwoShift:
      if (h < 6 || h >= 22) return 0.2;
      if (h >= 12 && h < 13) return 0.75;
      return 1.0;
    case LoadProfile::kDataCentre:  // cooling load follows the afternoon heat
      return 0.95 + 0.05 * std::cos(2 * M_PI * (h - 15) / 24);
  }
  return 1.0;
}

namespace {

using Pending = TimedSimEvent;

void Push(std::vector<Pending>* out, absl::Time emit, std::string org, std::string service,
          std::string district, absl::StatusOr<event::v1::Event> ev) {
  if (!ev.ok()) {  // a bug in the simulator, not bad input: the config was validated
    LogError(kLog, "generated an invalid event", {{"error", ev.status().ToString()}});
    return;
  }
  out->push_back(Pending{
      emit, SimEvent{std::move(org), std::move(service), std::move(district), *std::move(ev)}});
}

}  // namespace

// Each generator appends in a fixed order; one stable sort by emission time
// then orders everything, ties kept in generation order (so the result does
// not depend on how a period is cut into windows).
std::vector<SimEvent> CitySim::Generate(absl::Time from, absl::Time to) const {
  std::vector<SimEvent> out;
  if (to <= from) return out;
  std::vector<Pending> pending;
  for (const MeterRef& m : meters_) Readings(m, from, to, &pending);
  for (const ProcessRef& p : processes_) Process(p, from, to, &pending);
  ValueAdded(from, to, &pending);
  for (size_t i = 0; i < citizens_.size(); ++i) Personal(i, from, to, &pending);
  std::stable_sort(pending.begin(), pending.end(),
                   [](const Pending& a, const Pending& b) { return a.emit < b.emit; });
  out.reserve(pending.size());
  for (Pending& p : pending) out.push_back(std::move(p.e));
  return out;
}

void CitySim::Readings(const MeterRef& m, absl::Time from, absl::Time to,
                       std::vector<Pending>* out) const {
  const SimRates& r = config_.rates;
  const absl::Duration max_delay = 4 * slot_;
  const int64_t k0 = FloorDiv(from - max_delay - absl::UnixEpoch(), slot_) - 1;
  const int64_t k1 = FloorDiv(to - absl::UnixEpoch(), slot_) + 1;
  const double hours = absl::ToDoubleHours(slot_);
  for (int64_t k = k0; k < k1; ++k) {
    const absl::Time start = absl::UnixEpoch() + k * slot_;
    const absl::Time end = start + slot_;
    const uint64_t key = Key(config_.seed, m.id, k);
    Rng rng(key);
    double value = m.meter.per_hour * hours * Profile(m.profile, start + slot_ / 2) *
                   std::max(0.0, 1.0 + r.noise * rng.Normal());
    value = Round3(value);
    absl::Duration delay;
    bool duplicate = false;
    const double u = rng.Uniform();
    const double sign_or_spike = rng.Uniform();
    const int64_t late_slots = 1 + rng.Int(4);
    if (u < r.impossible_share) {
      value = sign_or_spike < 0.5 ? -value : Round3(value * 1000);  // negative, or Wh sent as kWh
    } else if (u < r.impossible_share + r.out_of_order_share) {
      delay = late_slots * slot_;
    } else if (u < r.impossible_share + r.out_of_order_share + r.duplicate_share) {
      duplicate = true;
    }
    const absl::Time emit = end + delay;
    if (emit < from || emit >= to) continue;
    cv1::MeterReading reading;
    reading.set_meter_id(m.id);
    reading.set_energy_kind(m.meter.energy);
    reading.set_reading_kind(cv1::READING_KIND_INTERVAL);
    reading.set_value(value);
    reading.set_unit(m.meter.unit);
    TimestampToProto(start, reading.mutable_interval_start());
    TimestampToProto(end, reading.mutable_interval_end());
    for (int copy = 0; copy < (duplicate ? 2 : 1); ++copy) {
      Push(out, emit, m.org, "meters", m.district,
           EventBuilder()
               .Id(DetId(end, key ^ static_cast<uint64_t>(copy)))
               .Source(absl::StrCat("//", config_.city_token, ".city/meters/", m.id))
               .Subject(absl::StrCat("carbon.meter.reading.", config_.city_token, ".", m.district))
               .Time(end)
               .Classification(event::v1::CLASSIFICATION_INTERNAL)
               .Owner(m.org)
               .Region(m.region)
               .ProtoData(reading)
               .Build());
    }
  }
}

void CitySim::Process(const ProcessRef& p, absl::Time from, absl::Time to,
                      std::vector<Pending>* out) const {
  const absl::Duration hour = absl::Hours(1);
  const int64_t k0 = FloorDiv(from - absl::UnixEpoch(), hour) - 1;
  const int64_t k1 = FloorDiv(to - absl::UnixEpoch(), hour) + 1;
  for (int64_t k = k0; k < k1; ++k) {
    const absl::Time start = absl::UnixEpoch() + k * hour;
    const absl::Time end = start + hour;
    if (end < from || end >= to) continue;
    const uint64_t key = Key(config_.seed, absl::StrCat(p.line_id, "#", p.process.key), k);
    Rng rng(key);
    cv1::ProcessActivity a;
    a.set_account_id(p.line_id);
    a.set_method(p.process.method);
    a.set_activity_key(p.process.key);
    a.set_quantity(Round3(p.process.per_hour * Profile(p.profile, start + hour / 2) *
                          std::max(0.0, 1.0 + config_.rates.noise * rng.Normal())));
    a.set_unit(p.process.unit);
    TimestampToProto(start, a.mutable_interval_start());
    TimestampToProto(end, a.mutable_interval_end());
    Push(out, end, p.org, "mes", p.district,
         EventBuilder()
             .Id(DetId(end, key))
             .Source(absl::StrCat("//", config_.city_token, ".city/", p.enterprise, "/mes"))
             .Subject(absl::StrCat("carbon.process.", config_.city_token, ".", p.district))
             .Time(end)
             .Classification(event::v1::CLASSIFICATION_INTERNAL)
             .Owner(p.org)
             .Region(p.region)
             .ProtoData(a)
             .Build());
  }
}

namespace {

// Value added of enterprise `e` in calendar month `m` (10,000 yuan).
double MonthValue(const SimConfig& c, const SimEnterprise& e, absl::CivilMonth m) {
  Rng rng(Key(c.seed, absl::StrCat(e.id, "#va"), m.year() * 12 + m.month()));
  return std::round(e.value_added_per_year / 12.0 * std::max(0.5, 1.0 + 0.05 * rng.Normal()) *
                    100) /
         100;
}

}  // namespace

void CitySim::ValueAdded(absl::Time from, absl::Time to, std::vector<Pending>* out) const {
  const absl::CivilMonth first = absl::CivilMonth(absl::ToCivilSecond(from, tz_)) - 1;
  for (absl::CivilMonth m = first;; ++m) {
    const absl::Time start = absl::FromCivil(m, tz_);
    const absl::Time end = absl::FromCivil(m + 1, tz_);
    if (end >= to) break;
    if (end < from) continue;
    for (const SimEnterprise& e : config_.enterprises) {
      const SimDistrict& d = District(e.district);
      auto emit = [&](absl::Time ps, absl::Time pe, double value, const char* what) {
        cv1::ValueAdded v;
        v.set_account_id(e.id);
        TimestampToProto(ps, v.mutable_period()->mutable_start());
        TimestampToProto(pe, v.mutable_period()->mutable_end());
        v.set_value_added_10k_yuan(value);
        Push(out, pe, config_.orgs.statistics, "value-added", e.district,
             EventBuilder()
                 .Id(DetId(
                     pe, Key(config_.seed, absl::StrCat(e.id, "#", what), absl::ToUnixSeconds(ps))))
                 .Source(absl::StrCat("//", config_.city_token, ".city/", config_.orgs.statistics))
                 .Subject(absl::StrCat("carbon.output.", config_.city_token, ".", e.district))
                 .Time(pe)
                 .Classification(event::v1::CLASSIFICATION_INTERNAL)
                 .Owner(config_.orgs.statistics)
                 .Region(d.region)
                 .ProtoData(v)
                 .Build());
      };
      emit(start, end, MonthValue(config_, e, m), "month");
      if (m.month() == 12) {
        double year = 0;
        for (int i = 1; i <= 12; ++i) year += MonthValue(config_, e, absl::CivilMonth(m.year(), i));
        emit(absl::FromCivil(absl::CivilYear(m.year()), tz_), end, std::round(year * 100) / 100,
             "year");
      }
    }
  }
}

std::vector<SimEvent> CitySim::ValueAddedBackfill(absl::Time at) const {
  std::vector<SimEvent> out;
  const absl::CivilMonth this_month(absl::ToCivilSecond(at, tz_));
  const absl::CivilYear this_year(absl::ToCivilSecond(at, tz_));
  // The month before, then the year before (whose end is this year's start).
  std::vector<SimEvent> month = Generate(absl::FromCivil(this_month, tz_) - absl::Seconds(1),
                                         absl::FromCivil(this_month, tz_) + absl::Seconds(1));
  std::vector<SimEvent> year = Generate(absl::FromCivil(this_year, tz_) - absl::Seconds(1),
                                        absl::FromCivil(this_year, tz_) + absl::Seconds(1));
  const absl::Time month_start = absl::FromCivil(this_month - 1, tz_);
  const absl::Time year_start = absl::FromCivil(this_year - 1, tz_);
  for (auto* v : {&month, &year}) {
    for (SimEvent& e : *v) {
      cv1::ValueAdded va;
      if (!e.event.proto_data().UnpackTo(&va)) continue;
      const absl::Time start = ToAbslTime(va.period().start());
      // The previous month from the first window, the previous year (not
      // December) from the second.
      if ((v == &month && start == month_start) || (v == &year && start == year_start)) {
        out.push_back(std::move(e));
      }
    }
  }
  return out;
}

void CitySim::Personal(size_t i, absl::Time from, absl::Time to, std::vector<Pending>* out) const {
  const SimCitizen& who = citizens_[i];
  const SimDistrict& home = District(who.district);
  const SimRates& r = config_.rates;
  const std::string& city = config_.city_token;
  const absl::CivilDay first(absl::ToCivilSecond(from, tz_));
  const absl::CivilDay last(absl::ToCivilSecond(to, tz_));
  for (absl::CivilDay day = first; day <= last; ++day) {
    const absl::Time midnight = absl::FromCivil(day, tz_);
    const int64_t day_no = day - absl::CivilDay(1970, 1, 1);
    Rng rng(Key(config_.seed, who.data_subject, day_no));
    auto place = [&](std::string name, std::string stop) {
      mobility::v1::Place p;
      p.set_name(std::move(name));
      p.set_stop_id(std::move(stop));
      p.mutable_location()->set_latitude(home.latitude + rng.Between(-0.03, 0.03));
      p.mutable_location()->set_longitude(home.longitude + rng.Between(-0.03, 0.03));
      p.set_region(home.region);
      return p;
    };
    auto money = [](int64_t fen, common::v1::Money* m) {
      m->set_currency_code("CNY");
      m->set_amount_minor(fen);
    };
    auto emit = [&](absl::Time t, const std::string& org, const char* service,
                    const std::string& subject, uint64_t key,
                    const google::protobuf::Message& payload) {
      if (t < from || t >= to) return;
      Push(out, t, org, service, who.district,
           EventBuilder()
               .Id(DetId(t, key))
               .Source(absl::StrCat("//", city, ".city/", org, "/", service))
               .Subject(subject)
               .Time(t)
               .Classification(event::v1::CLASSIFICATION_PERSONAL)
               .DataSubject(who.data_subject)
               .Jurisdiction(config_.jurisdiction)
               .Owner(org)
               .Region(home.region)
               .ProtoData(payload)
               .Build());
    };
    // A commuter's time: peaks at 7-9 and 17-19, otherwise 6-22.
    auto daytime = [&]() {
      double u = rng.Uniform();
      double h = u < 0.35 ? rng.Between(7, 9) : u < 0.7 ? rng.Between(17, 19) : rng.Between(6, 22);
      return midnight + absl::Seconds(static_cast<int64_t>(h * 3600));
    };
    const int metro = rng.Poisson(r.metro_rides_per_day);
    const int bus = rng.Poisson(r.bus_rides_per_day);
    const int walks = rng.Poisson(r.walks_per_day);
    const int bikes = rng.Poisson(r.bike_trips_per_day);
    const int payments = rng.Poisson(r.green_payments_per_day);
    const int invoices = rng.Poisson(r.einvoices_per_day);
    for (int n = 0; n < metro + bus; ++n) {
      const bool is_metro = n < metro;
      const uint64_t key = rng.Next();
      mobility::v1::TransitRide ride;
      const std::string& org = is_metro ? config_.orgs.metro : config_.orgs.bus;
      ride.set_ride_id(absl::StrCat(org, "-", Hex(key, 16)));
      ride.set_mode(is_metro ? mobility::v1::TRAVEL_MODE_METRO : mobility::v1::TRAVEL_MODE_BUS);
      const int line = 1 + static_cast<int>(rng.Int(is_metro ? 2 : 30));
      ride.set_line_id(is_metro ? absl::StrCat("M", line) : absl::StrCat("K", line));
      ride.set_line_name(is_metro ? absl::StrCat("Metro Line ", line)
                                  : absl::StrCat("Bus K", line));
      ride.set_operator_org(org);
      const absl::Time board = daytime();
      const absl::Time alight = board + absl::Minutes(8 + rng.Int(35));
      *ride.mutable_boarding_stop() = place(absl::StrCat(home.name, " stop ", 1 + rng.Int(40)),
                                            absl::StrCat(ride.line_id(), "-", 1 + rng.Int(20)));
      TimestampToProto(board, ride.mutable_boarding_time());
      *ride.mutable_alighting_stop() = place(absl::StrCat(home.name, " stop ", 1 + rng.Int(40)),
                                             absl::StrCat(ride.line_id(), "-", 1 + rng.Int(20)));
      TimestampToProto(alight, ride.mutable_alighting_time());
      money(is_metro ? 200 + 100 * rng.Int(4) : 200, ride.mutable_fare());
      ride.set_distance_m(std::round(rng.Between(2000, 15000)));
      emit(alight, org, "ticketing", absl::StrCat("mobility.transit.ride.", city), key, ride);
    }
    for (int n = 0; n < walks + bikes; ++n) {
      const bool walk = n < walks;
      const uint64_t key = rng.Next();
      mobility::v1::Trip trip;
      trip.set_trip_id(absl::StrCat(walk ? "walk-" : "bike-", Hex(key, 16)));
      trip.set_mode(walk ? mobility::v1::TRAVEL_MODE_WALK : mobility::v1::TRAVEL_MODE_BICYCLE);
      const absl::Time start = daytime();
      const absl::Time end = start + absl::Minutes(walk ? 25 + rng.Int(70) : 8 + rng.Int(40));
      TimestampToProto(start, trip.mutable_start_time());
      TimestampToProto(end, trip.mutable_end_time());
      *trip.mutable_origin() = place(absl::StrCat(home.name, " residential area"), "");
      *trip.mutable_destination() = place(absl::StrCat(home.name, walk ? " park" : " centre"), "");
      trip.set_distance_m(std::round(walk ? rng.Between(1500, 8000) : rng.Between(1500, 9000)));
      trip.set_provider(config_.orgs.trips);
      emit(end, config_.orgs.trips, "trips", absl::StrCat("mobility.trip.", city), key, trip);
    }
    for (int n = 0; n < payments; ++n) {
      const uint64_t key = rng.Next();
      payments::v1::GreenPayment pay;
      pay.set_payment_id(absl::StrCat("pay-", Hex(key, 16)));
      pay.set_payer_id(who.data_subject);
      const double kind = rng.Uniform();
      if (kind < 0.04) {
        pay.set_green_kind(payments::v1::GREEN_KIND_UTILITY_BILL);
        pay.set_merchant_category("4900");
        pay.set_utility_account_ref(
            absl::StrCat("util-", Hex(Key(config_.seed, who.data_subject, -1), 10)));
        money(5000 + rng.Int(30000), pay.mutable_amount());
      } else if (kind < 0.06) {
        pay.set_green_kind(payments::v1::GREEN_KIND_ONLINE_REGISTRATION);
        pay.set_merchant_category("8062");
        money(500 + 500 * rng.Int(4), pay.mutable_amount());
      } else {
        pay.set_green_kind(payments::v1::GREEN_KIND_OFFLINE_PAYMENT);
        static constexpr const char* kMcc[] = {"5411", "5812", "5499", "5912", "5814"};
        pay.set_merchant_category(kMcc[rng.Int(5)]);
        // Some small payments fall under the 1-yuan minimum of the credit rules.
        money(rng.Uniform() < 0.05 ? 10 + rng.Int(90) : 100 + rng.Int(30000), pay.mutable_amount());
      }
      pay.set_merchant_id(absl::StrCat("m-", Hex(rng.Next(), 8)));
      pay.set_provider(config_.orgs.payments);
      const absl::Time t = daytime();
      TimestampToProto(t, pay.mutable_time());
      emit(t, config_.orgs.payments, "payments", absl::StrCat("payments.green.", city), key, pay);
    }
    for (int n = 0; n < invoices; ++n) {
      const uint64_t key = rng.Next();
      payments::v1::EInvoice inv;
      inv.set_invoice_id(absl::StrCat("inv-", Hex(key, 16)));
      inv.set_seller_tax_id(absl::StrCat("913308", Hex(rng.Next(), 12)));
      inv.set_seller_name(absl::StrCat(home.name, " store ", 1 + rng.Int(200)));
      inv.set_buyer_id(who.data_subject);
      const absl::Time t = daytime();
      TimestampToProto(t, inv.mutable_issue_time());
      const int64_t net = 500 + rng.Int(50000);
      const int64_t tax = net * 13 / 100;
      payments::v1::EInvoiceItem* item = inv.add_items();
      item->set_description("goods");
      item->set_quantity(1);
      item->set_unit("pcs");
      money(net, item->mutable_unit_price());
      money(net, item->mutable_amount());
      item->set_tax_rate_percent(13);
      money(net, inv.mutable_net_amount());
      money(tax, inv.mutable_tax_amount());
      money(net + tax, inv.mutable_total_amount());
      emit(t, config_.orgs.einvoices, "einvoice", absl::StrCat("payments.einvoice.", city), key,
           inv);
    }
  }
}

std::vector<cv1::Account> CitySim::Accounts() const {
  std::vector<cv1::Account> out;
  // An account below `parent`: its id "<parent's id>/<id>", in the parent's org.
  auto child = [](const cv1::Account& parent, const std::string& id, cv1::AccountKind kind,
                  std::string name) {
    cv1::Account a;
    a.set_account_id(absl::StrCat(parent.account_id(), "/", id));
    a.set_kind(kind);
    a.set_parent_id(parent.account_id());
    a.set_name(std::move(name));
    a.set_org(parent.org());
    return a;
  };
  for (const SimEnterprise& e : config_.enterprises) {
    cv1::Account ent;
    ent.set_account_id(e.id);
    ent.set_kind(cv1::ACCOUNT_KIND_ENTERPRISE);
    ent.set_name(e.name);
    ent.set_org(e.org);
    ent.set_industry_code(e.industry_code);
    ent.set_region(District(e.district).region);
    (*ent.mutable_labels())["source"] = "city-sim";
    out.push_back(ent);
    for (const SimSite& s : e.sites) {
      const SimDistrict& d = District(s.district);
      cv1::Account site = child(ent, s.id, cv1::ACCOUNT_KIND_SITE, s.name);
      site.set_region(d.region);
      out.push_back(site);
      for (const SimLine& l : s.lines) {
        const cv1::Account line = child(site, l.id, cv1::ACCOUNT_KIND_LINE, l.name);
        out.push_back(line);
        for (const SimMeter& m : l.meters) {
          cv1::Account meter =
              child(line, m.id, cv1::ACCOUNT_KIND_METER, absl::StrCat(l.name, " ", m.id, " meter"));
          cv1::MeterSpec* spec = meter.mutable_meter();
          spec->set_energy_kind(m.energy);
          spec->set_unit(m.unit);
          // 2.5x the full-load mean: above any profile peak with noise, far
          // below a Wh figure sent as kWh (x1000).
          spec->set_max_per_hour(m.per_hour * 2.5);
          spec->set_tariff_id(m.tariff_id);
          Rng rng(Key(config_.seed, meter.account_id(), 0));
          spec->mutable_location()->set_latitude(d.latitude + rng.Between(-0.02, 0.02));
          spec->mutable_location()->set_longitude(d.longitude + rng.Between(-0.02, 0.02));
          out.push_back(meter);
        }
      }
    }
  }
  return out;
}

std::vector<std::string> CitySim::ConsentingSubjects() const {
  std::vector<std::string> out;
  for (const SimCitizen& c : citizens_) {
    if (c.consents) out.push_back(c.data_subject);
  }
  std::sort(out.begin(), out.end());
  return out;
}

std::vector<std::pair<std::string, std::string>> CitySim::Publishers() const {
  const std::string& city = config_.city_token;
  std::vector<std::pair<std::string, std::string>> out;
  std::set<std::string> seen;
  for (const SimEnterprise& e : config_.enterprises) {
    if (!seen.insert(e.org).second) continue;
    out.emplace_back(e.org, absl::StrCat("carbon.meter.reading.", city, ".>"));
    bool process = false;
    for (const ProcessRef& p : processes_) process = process || p.org == e.org;
    if (process) out.emplace_back(e.org, absl::StrCat("carbon.process.", city, ".>"));
  }
  out.emplace_back(config_.orgs.statistics, absl::StrCat("carbon.output.", city, ".>"));
  out.emplace_back(config_.orgs.metro, absl::StrCat("mobility.transit.ride.", city));
  out.emplace_back(config_.orgs.bus, absl::StrCat("mobility.transit.ride.", city));
  out.emplace_back(config_.orgs.trips, absl::StrCat("mobility.trip.", city));
  out.emplace_back(config_.orgs.payments, absl::StrCat("payments.green.", city));
  out.emplace_back(config_.orgs.einvoices, absl::StrCat("payments.einvoice.", city));
  return out;
}

// ---- SimRunner ----------------------------------------------------------------------

SimRunner::SimRunner(const CitySim* sim, Clock* clock, absl::Time sim_start, double speed)
    : sim_(sim),
      clock_(clock),
      real_start_(clock->Now()),
      sim_start_(sim_start),
      done_(sim_start),
      speed_(speed) {}

std::vector<SimEvent> SimRunner::Step() {
  const absl::Time now = clock_->Now();
  absl::Time target = sim_start_ + (now - real_start_) * speed_;
  target = std::min(target, now);
  if (target <= done_) return {};
  std::vector<SimEvent> events = sim_->Generate(done_, target);
  done_ = target;
  return events;
}

}  // namespace cityos::citysim
