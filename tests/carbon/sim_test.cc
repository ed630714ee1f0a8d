// Tests of the demo-city simulator (examples/city-sim): determinism with a
// seed, the accounts it asks for (valid per the carbon brief's unit table),
// rates over simulated time (SimulatedClock), the consenting share, the
// anomalies it injects, the config, the plug-in publishing on a real bus as
// the simulated organisations, and its meter readings through a real
// mosquitto broker into the MQTT bridge.
#include "sim.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <functional>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "cityos/bus.h"
#include "cityos/clock.h"
#include "cityos/config.h"
#include "cityos/event.h"
#include "cityos/mobility/v1/mobility.pb.h"
#include "cityos/plugin.h"
#include "cityos/proto_time.h"
#include "mqtt_bridge.h"
#include "sim_plugin.h"
#include "testutil.h"

namespace cityos::citysim {
namespace {

namespace cv1 = carbon::v1;
using ::cityos::testing::TempDir;

absl::Time T(const char* rfc3339) {
  absl::Time t;
  std::string err;
  EXPECT_TRUE(absl::ParseTime(absl::RFC3339_full, rfc3339, &t, &err)) << err;
  return t;
}

std::unique_ptr<CitySim> Make(SimConfig c) {
  auto sim = CitySim::Create(std::move(c));
  EXPECT_TRUE(sim.ok()) << sim.status();
  return sim.ok() ? *std::move(sim) : nullptr;
}

SimConfig Quiet() {  // no injected anomalies
  SimConfig c = DefaultQuzhouConfig();
  c.rates.duplicate_share = c.rates.out_of_order_share = c.rates.impossible_share = 0;
  return c;
}

std::vector<std::string> Serialized(const std::vector<SimEvent>& events) {
  std::vector<std::string> out;
  for (const SimEvent& e : events) {
    out.push_back(
        absl::StrCat(e.org, "|", e.service, "|", e.district, "|", e.event.SerializeAsString()));
  }
  return out;
}

// Independent oracle: the brief's unit table.
bool BriefUnit(cv1::EnergyKind k, const std::string& u) {
  static const std::map<cv1::EnergyKind, std::set<std::string>> kUnits = {
      {cv1::ENERGY_KIND_ELECTRICITY, {"kWh", "MWh"}},
      {cv1::ENERGY_KIND_NATURAL_GAS, {"m3"}},
      {cv1::ENERGY_KIND_STEAM, {"GJ", "t"}},
      {cv1::ENERGY_KIND_DIESEL, {"kg", "t"}},
      {cv1::ENERGY_KIND_GASOLINE, {"kg", "t"}},
      {cv1::ENERGY_KIND_COAL, {"kg", "t"}},
      {cv1::ENERGY_KIND_LPG, {"kg", "t"}},
      {cv1::ENERGY_KIND_FUEL_OIL, {"kg", "t"}},
      {cv1::ENERGY_KIND_HEAT, {"GJ"}}};
  auto it = kUnits.find(k);
  return it != kUnits.end() && it->second.contains(u);
}

TEST(CitySim, SameSeedSameEventsAndWindowsCompose) {
  const absl::Time a = T("2026-11-28T00:00:00+08:00");
  const absl::Time b = a + absl::Hours(5) + absl::Minutes(17) + absl::Seconds(3);
  const absl::Time c = a + absl::Hours(12);
  SimConfig cfg = DefaultQuzhouConfig();
  cfg.seed = 42;
  auto s1 = Make(cfg), s2 = Make(cfg);
  const auto whole = Serialized(s1->Generate(a, c));
  ASSERT_GT(whole.size(), 500u);
  EXPECT_EQ(whole, Serialized(s2->Generate(a, c)));
  std::vector<std::string> parts = Serialized(s1->Generate(a, b));
  for (auto& p : Serialized(s1->Generate(b, c))) parts.push_back(std::move(p));
  EXPECT_EQ(whole, parts);
  std::set<std::string> ids;
  for (const SimEvent& e : s1->Generate(a, c)) ids.insert(e.event.id());
  // Every event but the injected duplicates has its own id.
  EXPECT_GT(ids.size(), whole.size() * 9 / 10);

  cfg.seed = 43;
  EXPECT_NE(whole, Serialized(Make(cfg)->Generate(a, c)));
}

TEST(CitySim, AccountsAreValidAndCoverEveryReading) {
  auto sim = Make(DefaultQuzhouConfig());
  const std::vector<cv1::Account> accounts = sim->Accounts();
  std::map<std::string, cv1::Account> by_id;
  std::set<std::string> regions = {"CN-ZJ-QZ-KC", "CN-ZJ-QZ-QJ", "CN-ZJ-QZ-LY", "CN-ZJ-QZ-JS"};
  std::set<std::string> industries;
  int meters = 0;
  for (const cv1::Account& a : accounts) {
    SCOPED_TRACE(a.account_id());
    ASSERT_FALSE(a.account_id().empty());
    EXPECT_LE(a.account_id().size(), 128u);
    for (char ch : a.account_id()) {
      EXPECT_TRUE(std::isalnum(static_cast<unsigned char>(ch)) || ch == '.' || ch == '_' ||
                  ch == '/' || ch == '-');
    }
    EXPECT_TRUE(by_id.emplace(a.account_id(), a).second) << "duplicate";
    EXPECT_FALSE(a.org().empty());
    switch (a.kind()) {
      case cv1::ACCOUNT_KIND_ENTERPRISE:
        EXPECT_TRUE(a.parent_id().empty());
        EXPECT_FALSE(a.industry_code().empty());
        EXPECT_TRUE(regions.contains(a.region()));
        industries.insert(a.industry_code().substr(0, 3));
        break;
      case cv1::ACCOUNT_KIND_SITE:
        ASSERT_TRUE(by_id.contains(a.parent_id()));  // parents first
        EXPECT_EQ(by_id[a.parent_id()].kind(), cv1::ACCOUNT_KIND_ENTERPRISE);
        EXPECT_TRUE(regions.contains(a.region()));
        break;
      case cv1::ACCOUNT_KIND_LINE:
        ASSERT_TRUE(by_id.contains(a.parent_id()));
        EXPECT_EQ(by_id[a.parent_id()].kind(), cv1::ACCOUNT_KIND_SITE);
        break;
      case cv1::ACCOUNT_KIND_METER:
        ASSERT_TRUE(by_id.contains(a.parent_id()));
        EXPECT_EQ(by_id[a.parent_id()].kind(), cv1::ACCOUNT_KIND_LINE);
        EXPECT_TRUE(BriefUnit(a.meter().energy_kind(), a.meter().unit()))
            << a.meter().unit() << " for " << cv1::EnergyKind_Name(a.meter().energy_kind());
        EXPECT_TRUE(carbon::IsKnownEnergyUnit(a.meter().unit()));  // passes the MQTT bridge too
        EXPECT_GT(a.meter().max_per_hour(), 0);
        ++meters;
        break;
      default:
        ADD_FAILURE() << "unexpected kind " << a.kind();
    }
  }
  EXPECT_EQ(meters, 18);
  // Several industries: steel, cement, chemicals, textiles, data centre.
  EXPECT_EQ(industries, (std::set<std::string>{"C31", "C30", "C26", "C17", "I65"}));

  // Every reading of a quiet day is for a registered meter, with its unit,
  // and plausible against its max_per_hour; every event is a valid envelope.
  auto quiet = Make(Quiet());
  const absl::Time day = T("2026-11-28T00:00:00+08:00");
  std::set<std::string> kinds;
  for (const SimEvent& e : quiet->Generate(day, day + absl::Hours(24))) {
    ASSERT_TRUE(ValidateEvent(e.event).ok()) << ValidateEvent(e.event);
    kinds.insert(e.event.type());
    EXPECT_EQ(e.event.owner(), e.org);
    if (e.event.type() == "cityos.carbon.v1.MeterReading") {
      cv1::MeterReading r;
      ASSERT_TRUE(e.event.proto_data().UnpackTo(&r));
      ASSERT_TRUE(by_id.contains(r.meter_id())) << r.meter_id();
      const cv1::MeterSpec& spec = by_id[r.meter_id()].meter();
      EXPECT_EQ(r.unit(), spec.unit());
      EXPECT_EQ(r.energy_kind(), spec.energy_kind());
      EXPECT_GE(r.value(), 0);
      EXPECT_LE(r.value() / 0.25, spec.max_per_hour()) << r.meter_id();
      EXPECT_EQ(e.event.subject(), "carbon.meter.reading.quzhou." + e.district);
      EXPECT_EQ(e.service, "meters");
    } else if (e.event.type() == "cityos.carbon.v1.ProcessActivity") {
      cv1::ProcessActivity p;
      ASSERT_TRUE(e.event.proto_data().UnpackTo(&p));
      ASSERT_TRUE(by_id.contains(p.account_id()));
      EXPECT_EQ(by_id[p.account_id()].kind(), cv1::ACCOUNT_KIND_LINE);
      EXPECT_EQ(p.activity_key(), "clinker");
      EXPECT_EQ(p.unit(), "t");
      EXPECT_EQ(e.event.subject(), "carbon.process.quzhou.jiangshan");
      EXPECT_EQ(e.org, "js-cement");
    } else {
      EXPECT_EQ(e.event.classification(), event::v1::CLASSIFICATION_PERSONAL) << e.event.type();
      EXPECT_FALSE(e.event.data_subject().empty());
      EXPECT_EQ(e.event.jurisdiction(), "CN");
    }
  }
  EXPECT_TRUE(kinds.contains("cityos.carbon.v1.MeterReading"));
  EXPECT_TRUE(kinds.contains("cityos.carbon.v1.ProcessActivity"));
  EXPECT_TRUE(kinds.contains("cityos.mobility.v1.TransitRide"));
  EXPECT_TRUE(kinds.contains("cityos.mobility.v1.Trip"));
  EXPECT_TRUE(kinds.contains("cityos.payments.v1.GreenPayment"));
  EXPECT_TRUE(kinds.contains("cityos.payments.v1.EInvoice"));
}

// Readings per meter in [from, to) of a quiet simulation.
std::map<std::string, int> ReadingsPerMeter(const std::vector<SimEvent>& events) {
  std::map<std::string, int> n;
  for (const SimEvent& e : events) {
    cv1::MeterReading r;
    if (e.event.proto_data().UnpackTo(&r)) ++n[r.meter_id()];
  }
  return n;
}

TEST(CitySim, ReadingRatesPerInterval) {
  const absl::Time day = T("2026-11-28T00:00:00+08:00");
  for (int per : {1, 3}) {
    SimConfig c = Quiet();
    c.citizens = 0;
    c.rates.readings_per_interval = per;
    auto sim = Make(c);
    EXPECT_EQ(sim->reading_length(), absl::Minutes(15) / per);
    auto n = ReadingsPerMeter(sim->Generate(day, day + absl::Hours(24)));
    ASSERT_EQ(n.size(), 18u);
    for (const auto& [meter, count] : n) EXPECT_EQ(count, 96 * per) << meter << " per=" << per;
    // Values are kWh of the reading's length: a third of the 15-min one.
    std::vector<SimEvent> events = sim->Generate(day, day + absl::Hours(1));
    for (const SimEvent& e : events) {
      cv1::MeterReading r;
      if (!e.event.proto_data().UnpackTo(&r)) continue;
      EXPECT_EQ(ToAbslTime(r.interval_end()) - ToAbslTime(r.interval_start()),
                absl::Minutes(15) / per);
    }
  }
}

TEST(CitySim, RunnerHonoursSpeedOverSimulatedTimeAndNeverRunsAhead) {
  SimConfig c = Quiet();
  c.citizens = 0;
  auto sim = Make(c);
  const absl::Time now0 = T("2026-11-29T12:00:00+08:00");
  SimulatedClock clock(now0);
  SimRunner runner(sim.get(), &clock, now0 - absl::Hours(10), /*speed=*/60);
  EXPECT_TRUE(runner.Step().empty());  // no time has passed
  clock.Advance(absl::Minutes(5));     // 5 min x 60 = 5 h simulated
  auto n = ReadingsPerMeter(runner.Step());
  ASSERT_EQ(n.size(), 18u);
  for (const auto& [m, count] : n) EXPECT_EQ(count, 20) << m;  // ends at start .. start+4h45m
  EXPECT_EQ(runner.sim_now(), now0 - absl::Hours(5));
  clock.Advance(absl::Minutes(10));  // 10 h more would pass now: capped at now
  n = ReadingsPerMeter(runner.Step());
  EXPECT_EQ(runner.sim_now(), clock.Now());
  for (const auto& [m, count] : n) EXPECT_EQ(count, 21) << m;  // start+5h .. start+10h15m
  clock.Advance(absl::Minutes(15));                            // real time now: one interval
  n = ReadingsPerMeter(runner.Step());
  for (const auto& [m, count] : n) EXPECT_EQ(count, 1) << m;
}

TEST(CitySim, PersonalRatesAndConsentShare) {
  SimConfig c = DefaultQuzhouConfig();
  c.enterprises.clear();
  c.citizens = 200;
  c.consent_share = 0.6;
  auto sim = Make(c);
  ASSERT_EQ(sim->citizens().size(), 200u);
  std::vector<std::string> consenting = sim->ConsentingSubjects();
  EXPECT_EQ(consenting.size(), 120u);
  EXPECT_TRUE(std::is_sorted(consenting.begin(), consenting.end()));
  std::set<std::string> all;
  for (const SimCitizen& p : sim->citizens()) {
    EXPECT_TRUE(absl::StartsWith(p.data_subject, "qz-p-"));
    all.insert(p.data_subject);
  }
  EXPECT_EQ(all.size(), 200u);
  for (const std::string& s : consenting) EXPECT_TRUE(all.contains(s));
  c.consent_share = 0.25;
  c.citizens = 10;
  EXPECT_EQ(Make(c)->ConsentingSubjects().size(), 3u);  // round(2.5) = 3
  c.consent_share = 0;
  EXPECT_TRUE(Make(c)->ConsentingSubjects().empty());

  // 30 days of 200 citizens: per-day means near the configured rates.
  const absl::Time from = T("2026-10-01T00:00:00+08:00");
  std::map<std::string, int> n;
  for (const SimEvent& e : sim->Generate(from, from + absl::Hours(24 * 30))) {
    std::string k = e.event.type();
    if (k == "cityos.mobility.v1.TransitRide") {
      mobility::v1::TransitRide r;
      ASSERT_TRUE(e.event.proto_data().UnpackTo(&r));
      k = r.mode() == mobility::v1::TRAVEL_MODE_METRO ? "metro" : "bus";
      EXPECT_EQ(e.org, r.mode() == mobility::v1::TRAVEL_MODE_METRO ? "quzhou-metro" : "quzhou-bus");
    }
    ++n[k];
  }
  const double person_days = 200.0 * 30;
  auto near = [&](const std::string& k, double rate) {
    EXPECT_NEAR(n[k] / person_days, rate, rate * 0.1) << k;
  };
  near("metro", c.rates.metro_rides_per_day);
  near("bus", c.rates.bus_rides_per_day);
  near("cityos.mobility.v1.Trip", c.rates.walks_per_day + c.rates.bike_trips_per_day);
  near("cityos.payments.v1.GreenPayment", c.rates.green_payments_per_day);
  near("cityos.payments.v1.EInvoice", c.rates.einvoices_per_day);
}

TEST(CitySim, InjectsDuplicatesLateAndImpossibleReadings) {
  SimConfig c = DefaultQuzhouConfig();
  c.citizens = 0;
  c.rates.duplicate_share = 0.05;
  c.rates.out_of_order_share = 0.05;
  c.rates.impossible_share = 0.02;
  auto sim = Make(c);
  std::map<std::string, double> max_per_hour;
  for (const cv1::Account& a : sim->Accounts()) {
    if (a.kind() == cv1::ACCOUNT_KIND_METER)
      max_per_hour[a.account_id()] = a.meter().max_per_hour();
  }
  const absl::Time day = T("2026-11-28T00:00:00+08:00");
  std::map<std::pair<std::string, absl::Time>, int> seen;
  std::map<std::string, absl::Time> latest;
  int duplicates = 0, late = 0, negative = 0, spikes = 0;
  for (const SimEvent& e : sim->Generate(day, day + absl::Hours(24))) {
    cv1::MeterReading r;
    if (!e.event.proto_data().UnpackTo(&r)) continue;
    const absl::Time start = ToAbslTime(r.interval_start());
    if (++seen[{r.meter_id(), start}] == 2) ++duplicates;
    auto it = latest.find(r.meter_id());
    if (it != latest.end() && start < it->second) ++late;
    latest[r.meter_id()] = std::max(latest[r.meter_id()], start);
    if (r.value() < 0) ++negative;
    if (r.value() / 0.25 > max_per_hour[r.meter_id()]) ++spikes;  // the ledger's IMPLAUSIBLE
  }
  EXPECT_GT(duplicates, 0);
  EXPECT_GT(late, 0);
  EXPECT_GT(negative, 0);
  EXPECT_GT(spikes, 0);
  // A quiet simulation has none of them.
  auto quiet = Make(Quiet());
  for (const SimEvent& e : quiet->Generate(day, day + absl::Hours(24))) {
    cv1::MeterReading r;
    if (e.event.proto_data().UnpackTo(&r)) {
      EXPECT_GE(r.value(), 0);
    }
  }
}

TEST(CitySim, ValueAddedPerMonthAndYear) {
  SimConfig c = Quiet();
  c.citizens = 0;
  auto sim = Make(c);
  // Across the new year (Asia/Shanghai): December and 2026 for each of the 5.
  const absl::Time ny = T("2027-01-01T00:00:00+08:00");
  std::vector<cv1::ValueAdded> got;
  for (const SimEvent& e : sim->Generate(ny - absl::Minutes(30), ny + absl::Minutes(30))) {
    cv1::ValueAdded v;
    if (!e.event.proto_data().UnpackTo(&v)) continue;
    EXPECT_EQ(e.org, "quzhou-stats");
    EXPECT_TRUE(absl::StartsWith(e.event.subject(), "carbon.output.quzhou."));
    EXPECT_EQ(ToAbslTime(v.period().end()), ny);
    got.push_back(v);
  }
  ASSERT_EQ(got.size(), 10u);
  std::map<std::string, double> year, dec;
  for (const cv1::ValueAdded& v : got) {
    EXPECT_GT(v.value_added_10k_yuan(), 0);
    const absl::Time start = ToAbslTime(v.period().start());
    if (start == T("2026-01-01T00:00:00+08:00"))
      year[v.account_id()] = v.value_added_10k_yuan();
    else if (start == T("2026-12-01T00:00:00+08:00"))
      dec[v.account_id()] = v.value_added_10k_yuan();
    else
      ADD_FAILURE() << "unexpected period start " << start;
  }
  EXPECT_EQ(year.size(), 5u);
  EXPECT_EQ(dec.size(), 5u);
  // The year is the sum of its months (steel: 120,000 x 10k yuan a year).
  double months = 0;
  for (int m = 0; m < 12; ++m) {
    const absl::Time end =
        absl::FromCivil(absl::CivilMonth(2026, m + 2), absl::FixedTimeZone(8 * 3600));
    for (const SimEvent& e : sim->Generate(end - absl::Seconds(1), end + absl::Seconds(1))) {
      cv1::ValueAdded v;
      if (e.event.proto_data().UnpackTo(&v) && v.account_id() == "qz-steel" &&
          ToAbslTime(v.period().end()) - ToAbslTime(v.period().start()) < absl::Hours(24 * 32)) {
        months += v.value_added_10k_yuan();
      }
    }
  }
  EXPECT_NEAR(year["qz-steel"], months, 0.05);
  EXPECT_NEAR(year["qz-steel"], 120000, 120000 * 0.1);
  // Backfill at start: the previous month and the previous year.
  std::vector<SimEvent> back = sim->ValueAddedBackfill(T("2027-03-15T10:00:00+08:00"));
  ASSERT_EQ(back.size(), 10u);
  std::map<absl::Time, int> starts;
  for (const SimEvent& e : back) {
    cv1::ValueAdded v;
    ASSERT_TRUE(e.event.proto_data().UnpackTo(&v));
    ++starts[ToAbslTime(v.period().start())];
  }
  EXPECT_EQ(starts, (std::map<absl::Time, int>{{T("2026-01-01T00:00:00+08:00"), 5},
                                               {T("2027-02-01T00:00:00+08:00"), 5}}));
}

TEST(CitySim, ConfigOverlaysAndErrorsNameTheKey) {
  auto node = ConfigNode::LoadString(R"(
seed: 9
consent_share: 0.5
citizens: {count: 20, metro_rides_per_day: 2}
rates: {interval: 30m, readings_per_interval: 2, speed: 120}
enterprises:
  - id: demo-dc
    industry: I6550
    district: qujiang
    value_added_per_year: 1000
    sites:
      - id: s1
        lines:
          - id: hall
            meters:
              - {id: elec, energy: electricity, unit: MWh, per_hour: 2}
)",
                                     "sim.yaml");
  ASSERT_TRUE(node.ok()) << node.status();
  auto c = ParseSimConfig(*node);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->seed, 9u);
  EXPECT_EQ(c->citizens, 20);
  EXPECT_EQ(c->rates.metro_rides_per_day, 2);
  EXPECT_EQ(c->rates.interval, absl::Minutes(30));
  EXPECT_EQ(c->rates.speed, 120);
  ASSERT_EQ(c->enterprises.size(), 1u);
  EXPECT_EQ(c->enterprises[0].org, "demo-dc");
  EXPECT_EQ(c->districts.size(), 4u);
  auto sim = Make(*c);
  EXPECT_EQ(sim->Accounts().back().account_id(), "demo-dc/s1/hall/elec");
  EXPECT_EQ(sim->ConsentingSubjects().size(), 10u);

  struct Bad {
    const char* yaml;
    const char* expected;
  };
  for (const Bad& b : std::vector<Bad>{
           {"speedy: 3", "speedy: unknown key"},
           {"rates: {readings_per_interval: 0}", "readings_per_interval"},
           {"consent_share: 1.5", "consent_share"},
           {"enterprises: [{id: x, industry: C1, district: kecheng, value_added_per_year: 1, "
            "sites: [{id: s, lines: [{id: l, meters: [{id: m, energy: electricity, unit: Wh, "
            "per_hour: 1}]}]}]}]",
            "\"Wh\" is not accepted"},
           {"enterprises: [{id: x, industry: C1, district: nowhere, value_added_per_year: 1, "
            "sites: [{id: s, lines: []}]}]",
            "unknown \"nowhere\""},
           {"city: {time_zone: Mars/Olympus}", "time_zone"},
       }) {
    auto n = ConfigNode::LoadString(b.yaml, "sim.yaml");
    ASSERT_TRUE(n.ok()) << b.yaml;
    auto r = ParseSimConfig(*n);
    ASSERT_FALSE(r.ok()) << b.yaml;
    EXPECT_NE(r.status().message().find(b.expected), std::string_view::npos)
        << b.yaml << " -> " << r.status().message();
    EXPECT_NE(r.status().message().find("sim.yaml"), std::string_view::npos)
        << r.status().message();
  }
}

// ---- the standalone binary (json mode) ---------------------------------------

TEST(CitySimBinary, JsonLinesAreTheSimulatorsEvents) {
  testing::CommandResult r = testing::RunCommand(
      {CITY_SIM_BIN, "--seed", "11", "--from", "2026-11-28T08:00:00+08:00", "--duration", "2h"},
      absl::Seconds(60));
  ASSERT_EQ(r.code, 0) << r.err;
  std::vector<std::string> lines = absl::StrSplit(r.out, '\n', absl::SkipEmpty());
  SimConfig c = DefaultQuzhouConfig();
  c.seed = 11;
  const absl::Time from = T("2026-11-28T08:00:00+08:00");
  std::vector<SimEvent> events = Make(c)->Generate(from, from + absl::Hours(2));
  ASSERT_EQ(lines.size(), events.size());
  for (size_t i = 0; i < events.size(); ++i) {
    ASSERT_TRUE(absl::StrContains(lines[i], absl::StrCat("\"id\":\"", events[i].event.id(), "\"")))
        << i << ": " << lines[i];
    ASSERT_TRUE(absl::StrContains(lines[i], absl::StrCat("\"org\":\"", events[i].org, "\"")))
        << lines[i];
  }
  r = testing::RunCommand({CITY_SIM_BIN, "--seed", "11", "--mode", "consenting"},
                          absl::Seconds(60));
  ASSERT_EQ(r.code, 0) << r.err;
  std::vector<std::string> subjects = absl::StrSplit(r.out, '\n', absl::SkipEmpty());
  EXPECT_EQ(subjects, Make(c)->ConsentingSubjects());
  r = testing::RunCommand({CITY_SIM_BIN, "--mode", "accounts"}, absl::Seconds(60));
  ASSERT_EQ(r.code, 0) << r.err;
  std::vector<std::string> accounts = absl::StrSplit(r.out, '\n', absl::SkipEmpty());
  EXPECT_EQ(accounts.size(), Make(DefaultQuzhouConfig())->Accounts().size());
  r = testing::RunCommand({CITY_SIM_BIN, "--mode", "grpc"}, absl::Seconds(60));
  EXPECT_EQ(r.code, 2);
  EXPECT_TRUE(absl::StrContains(r.err, "--address")) << r.err;
}

// ---- the plug-in on a real bus ---------------------------------------------------

class FakeContext final : public PluginContext {
 public:
  FakeContext(Bus* bus, Clock* clock, std::string dir)
      : bus_(bus), clock_(clock), dir_(std::move(dir)) {
    info_.name = "test-node";
    info_.data_dir = dir_;
    info_.trust_domain = "demo.city";
  }
  const NodeInfo& node() const override { return info_; }
  std::string ServingAddress() const override { return info_.listen_address; }
  Clock* clock() override { return clock_; }
  Bus* bus() override { return bus_; }
  PolicyDecisionPoint* policy() override { return nullptr; }  // the plug-in uses none
  AuditLog* audit() override { return nullptr; }
  absl::StatusOr<std::string> PluginDataDir(std::string_view plugin) override {
    std::string d = dir_ + "/" + std::string(plugin);
    ::mkdir(d.c_str(), 0700);
    return d;
  }
  absl::StatusOr<Principal> Authenticate(const grpc::ServerContextBase&) override {
    return absl::UnimplementedError("no RPCs here");
  }

 private:
  Bus* bus_;
  Clock* clock_;
  std::string dir_;
  NodeInfo info_;
};

bool WaitUntil(const std::function<bool()>& done, absl::Duration timeout = absl::Seconds(20)) {
  absl::Time deadline = absl::Now() + timeout;
  while (absl::Now() < deadline) {
    if (done()) return true;
    absl::SleepFor(absl::Milliseconds(20));
  }
  return done();
}

TEST(CitySimPlugin, PublishesAsTheSimulatedOrganisations) {
  TempDir dir;
  auto bus = Bus::Open({.data_dir = dir.File("bus")});
  ASSERT_TRUE(bus.ok()) << bus.status();
  SimulatedClock clock(T("2026-11-29T10:00:00+08:00"));
  FakeContext ctx(bus->get(), &clock, dir.path());
  Principal watcher{.trust_domain = "demo.city", .org = "carbon-office", .name = "carbon"};
  auto sub = (*bus)->Subscribe(watcher, {.subject_pattern = ">"});
  ASSERT_TRUE(sub.ok()) << sub.status();

  PluginRegistry registry;
  ASSERT_TRUE(RegisterCitySimPlugin(registry).ok());
  auto plugin = registry.Create("city-sim");
  ASSERT_TRUE(plugin.ok()) << plugin.status();
  auto cfg = ConfigNode::LoadString(
      "seed: 5\nbackfill: 3h\ntick: 20ms\ncitizens: {count: 50}\n"
      "rates: {speed: 3600}\n",
      "node.yaml");
  ASSERT_TRUE(cfg.ok());
  ASSERT_TRUE((*plugin)->Configure(*cfg).ok());
  ASSERT_TRUE((*plugin)->Start(ctx).ok());
  EXPECT_TRUE((*plugin)->Services().empty());
  auto* sim_plugin = static_cast<CitySimPlugin*>(plugin->get());

  // Setup files for the demo: the accounts and the consenting subjects.
  const std::string accounts = testing::ReadFile(dir.File("city-sim/accounts.jsonl"));
  EXPECT_EQ(std::count(accounts.begin(), accounts.end(), '\n'),
            static_cast<long>(sim_plugin->sim()->Accounts().size()));
  const std::string consenting = testing::ReadFile(dir.File("city-sim/consenting_subjects.txt"));
  EXPECT_EQ(std::count(consenting.begin(), consenting.end(), '\n'), 30);  // 0.6 x 50

  clock.Advance(absl::Seconds(10));  // x3600 would be 10 h: capped at now, 3 h of events
  std::map<std::string, std::set<std::string>> publishers;  // type -> SPIFFE ids
  std::vector<Delivery> got;
  ASSERT_TRUE(WaitUntil([&] {
    std::vector<Delivery> batch;
    if (!(*sub)->Next(1000, absl::Milliseconds(50), &batch).ok()) return false;
    for (auto& d : batch) {
      publishers[d.message->event().type()].insert(d.message->event().publisher());
      got.push_back(std::move(d));
    }
    return publishers.contains("cityos.carbon.v1.MeterReading") &&
           publishers.contains("cityos.carbon.v1.ProcessActivity") &&
           publishers.contains("cityos.carbon.v1.ValueAdded") &&
           publishers.contains("cityos.mobility.v1.TransitRide") &&
           publishers.contains("cityos.payments.v1.GreenPayment") &&
           sim_plugin->stats().sim_now == clock.Now();
  }));
  (*plugin)->Stop();
  EXPECT_TRUE(publishers["cityos.carbon.v1.MeterReading"].contains(
      "spiffe://demo.city/org/qz-steel/svc/meters"));
  EXPECT_TRUE(publishers["cityos.carbon.v1.ProcessActivity"].contains(
      "spiffe://demo.city/org/js-cement/svc/mes"));
  EXPECT_EQ(publishers["cityos.carbon.v1.ValueAdded"],
            std::set<std::string>{"spiffe://demo.city/org/quzhou-stats/svc/value-added"});
  EXPECT_TRUE(publishers["cityos.mobility.v1.TransitRide"].contains(
      "spiffe://demo.city/org/quzhou-metro/svc/ticketing"));
  EXPECT_EQ(publishers["cityos.payments.v1.GreenPayment"],
            std::set<std::string>{"spiffe://demo.city/org/alipay-sim/svc/payments"});
  // Nothing in the future; the stats count what the bus took.
  for (const Delivery& d : got) EXPECT_LE(ToAbslTime(d.message->event().time()), clock.Now());
  EXPECT_GE(sim_plugin->stats().published, got.size());
  EXPECT_EQ(sim_plugin->stats().publish_failures, 0u);
}

// ---- meter readings over MQTT into the bridge -------------------------------------

std::string FindBinary(const std::string& name) {
  std::vector<std::string> dirs;
  if (const char* path = std::getenv("PATH")) dirs = absl::StrSplit(path, ':', absl::SkipEmpty());
  for (const char* d : {"/usr/sbin", "/usr/local/sbin", "/usr/bin"}) dirs.push_back(d);
  for (const std::string& d : dirs) {
    if (::access((d + "/" + name).c_str(), X_OK) == 0) return d + "/" + name;
  }
  return "";
}

bool PortAccepts(int port) {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bool ok = ::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0;
  ::close(fd);
  return ok;
}

TEST(CitySimPlugin, MeterReadingsViaMqttReachTheBridgeUnchanged) {
  TempDir dir;
  const std::string mosquitto = FindBinary("mosquitto");
  ASSERT_FALSE(mosquitto.empty()) << "mosquitto not on PATH";
  testing::HeldPort held;
  const int port = held.port();
  held.Release();
  testing::WriteFile(dir.File("m.conf"), absl::StrCat("listener ", port,
                                                      " 127.0.0.1\n"
                                                      "allow_anonymous true\npersistence false\n"));
  auto broker = testing::Subprocess::Start({mosquitto, "-c", dir.File("m.conf")});
  ASSERT_TRUE(broker.ok()) << broker.status();
  ASSERT_TRUE(WaitUntil([&] { return PortAccepts(port); }));

  absl::Mutex mu;
  std::vector<event::v1::Event> bridged;
  carbon::MqttBridgeOptions bo;
  bo.port = port;
  bo.client_id = "sim-test-bridge";
  bo.org = "quzhou-grid";
  for (const SimDistrict& d : DefaultQuzhouConfig().districts)
    bo.districts.push_back({"quzhou", d.token, d.region});
  auto bridge = carbon::MqttBridge::Start(bo, [&](std::vector<event::v1::Event> events) {
    absl::MutexLock lock(&mu);
    for (auto& e : events) bridged.push_back(std::move(e));
    return absl::OkStatus();
  });
  ASSERT_TRUE(bridge.ok()) << bridge.status();
  ASSERT_TRUE(WaitUntil([&] { return (*bridge)->stats().subscriptions >= 1; }));

  auto bus = Bus::Open({.data_dir = dir.File("bus")});
  ASSERT_TRUE(bus.ok());
  SimulatedClock clock(T("2026-11-29T10:00:00+08:00"));
  FakeContext ctx(bus->get(), &clock, dir.path());
  auto plugin = MakeCitySimPlugin();
  auto cfg = ConfigNode::LoadString(
      absl::StrCat(
          "seed: 5\nbackfill: 1h\ntick: 20ms\ncitizens: {count: 0}\nbackfill_value_added: false\n"
          "rates: {speed: 7200}\nmeters_via_mqtt: true\nmqtt: {port: ",
          port, ", client_id: sim-test}\n"),
      "node.yaml");
  ASSERT_TRUE(cfg.ok());
  ASSERT_TRUE(plugin->Configure(*cfg).ok());
  ASSERT_TRUE(plugin->Start(ctx).ok());
  // The plug-in publishes only while its MQTT client is connected: let the
  // clock move once that is so (otherwise readings are dropped and counted).
  ASSERT_TRUE(WaitUntil([&] { return plugin->stats().mqtt_connected; }));
  clock.Advance(absl::Seconds(1));  // x7200 = 2 h: capped at now, 1 h of readings
  ASSERT_TRUE(WaitUntil([&] { return plugin->stats().sim_now == clock.Now(); }));
  plugin->Stop();
  const CitySimStats st = plugin->stats();
  const uint64_t expected = st.mqtt_published;
  EXPECT_GT(expected, 0u);
  ASSERT_TRUE(WaitUntil([&] { return (*bridge)->stats().published >= expected; }))
      << (*bridge)->stats().published << " of " << expected << " (dropped " << st.mqtt_dropped
      << ")";
  (*bridge)->Stop();
  EXPECT_EQ((*bridge)->stats().rejected, 0u);
  // Same readings as the simulator generated, meter ids with '/' intact.
  std::set<std::string> want, have;
  for (const SimEvent& e :
       plugin->sim()->Generate(clock.Now() - absl::Hours(1) - absl::Minutes(15), clock.Now())) {
    cv1::MeterReading r;
    if (e.event.proto_data().UnpackTo(&r)) want.insert(r.SerializeAsString());
  }
  absl::MutexLock lock(&mu);
  for (const auto& e : bridged) {
    cv1::MeterReading r;
    ASSERT_TRUE(e.proto_data().UnpackTo(&r));
    EXPECT_TRUE(absl::StrContains(r.meter_id(), "/"));
    have.insert(r.SerializeAsString());
  }
  for (const std::string& h : have) EXPECT_TRUE(want.contains(h));
  EXPECT_EQ(st.mqtt_dropped, 0u);
}

}  // namespace
}  // namespace cityos::citysim
