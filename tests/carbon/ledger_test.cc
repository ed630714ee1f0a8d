// Tests of the carbon ledger (services/carbon/ledger.h): reference vectors,
// hierarchy totals, every quarantine reason, dedup, cumulative readings,
// restatements, rankings, pagination and reopening from ledger.db.
#include "ledger.h"

#include <gtest/gtest.h>

#include <map>

#include <memory>
#include <string>
#include <vector>

#include "cityos/clock.h"
#include "cityos/proto_time.h"
#include "factors.h"
#include "periods.h"
#include "regions.h"
#include "testutil.h"
#include "units.h"

namespace cityos::carbon {

inline RegionTree QuzhouTree() {
  absl::StatusOr<RegionTree> t = RegionTree::Create({
      {"CN", "China", "", "", "cn"},
      {"CN-ZJ", "Zhejiang", "CN", "CN-EAST", "zhejiang"},
      {"CN-ZJ-QZ", "Quzhou", "CN-ZJ", "", "quzhou"},
      {"CN-ZJ-QZ-KC", "Kecheng", "CN-ZJ-QZ", "", "kecheng"},
      {"CN-ZJ-QZ-QJ", "Qujiang", "CN-ZJ-QZ", "", "qujiang"},
      {"CN-BJ", "Beijing", "CN", "", "beijing"},
  });
  EXPECT_TRUE(t.ok()) << t.status();
  return *std::move(t);
}

class LedgerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    tz_ = *LoadCityTimeZone("Asia/Shanghai");
    tree_ = QuzhouTree();
    OpenFactors(/*seed=*/true);
    Reopen();
  }

  void OpenFactors(bool seed) {
    absl::StatusOr<std::unique_ptr<FactorRegistry>> f =
        FactorRegistry::Open(dir_.File("factors.db"), &clock_, tz_);
    ASSERT_TRUE(f.ok()) << f.status();
    factors_ = *std::move(f);
    if (seed) {
      absl::StatusOr<int> n =
          factors_->SeedCsv(CITYOS_CARBON_FACTORS_CSV, "seed");
      ASSERT_TRUE(n.ok()) << n.status();
    }
  }

  LedgerOptions Options() {
    LedgerOptions o;
    o.tz = tz_;
    return o;
  }

  void Reopen() { Reopen(Options()); }
  void Reopen(LedgerOptions o) {
    ledger_.reset();
    absl::StatusOr<std::unique_ptr<CarbonLedger>> l = CarbonLedger::Open(
        dir_.path(), &tree_, factors_.get(), &clock_, std::move(o));
    ASSERT_TRUE(l.ok()) << l.status();
    ledger_ = *std::move(l);
  }

  absl::Time T(int y, int mo, int d, int h = 0, int mi = 0) {
    return absl::FromCivil(absl::CivilSecond(y, mo, d, h, mi, 0), tz_);
  }

  v1::Account Acc(const std::string& id, v1::AccountKind kind,
                  const std::string& parent, const std::string& region = "",
                  const std::string& industry = "") {
    v1::Account a;
    a.set_account_id(id);
    a.set_kind(kind);
    a.set_parent_id(parent);
    a.set_name(id);
    a.set_region(region);
    a.set_industry_code(industry);
    if (kind == v1::ACCOUNT_KIND_ENTERPRISE) a.set_org(id);
    return a;
  }

  v1::Account Meter(const std::string& id, const std::string& parent,
                    v1::EnergyKind kind = v1::ENERGY_KIND_ELECTRICITY,
                    const std::string& unit = "kWh", double max_per_hour = 0,
                    const std::string& tariff = "") {
    v1::Account a = Acc(id, v1::ACCOUNT_KIND_METER, parent);
    a.mutable_meter()->set_energy_kind(kind);
    a.mutable_meter()->set_unit(unit);
    a.mutable_meter()->set_max_per_hour(max_per_hour);
    a.mutable_meter()->set_tariff_id(tariff);
    return a;
  }

  void Create(const v1::Account& a) {
    absl::StatusOr<v1::Account> r = ledger_->CreateAccount(a);
    ASSERT_TRUE(r.ok()) << r.status();
  }

  // quzhou-steel (C3110, Kecheng) > site-1 > line-1 > m-1 (electricity, max
  // 5000 kWh/h)
  //                                        > line-2 > m-2 (electricity)
  //                              > site-2 (Qujiang) > m-3 (natural gas, m3)
  // quzhou-cement (C3011, Qujiang) > m-c (electricity)
  // beijing-co (C3110, CN-BJ) > m-bj
  void BuildCity() {
    Create(Acc("quzhou-steel", v1::ACCOUNT_KIND_ENTERPRISE, "", "CN-ZJ-QZ-KC",
               "C3110"));
    Create(Acc("quzhou-steel/site-1", v1::ACCOUNT_KIND_SITE, "quzhou-steel"));
    Create(Acc("quzhou-steel/site-1/line-1", v1::ACCOUNT_KIND_LINE,
               "quzhou-steel/site-1"));
    Create(Meter("quzhou-steel/site-1/line-1/m-1", "quzhou-steel/site-1/line-1",
                 v1::ENERGY_KIND_ELECTRICITY, "kWh", 5000));
    Create(Acc("quzhou-steel/site-1/line-2", v1::ACCOUNT_KIND_LINE,
               "quzhou-steel/site-1"));
    Create(
        Meter("quzhou-steel/site-1/line-2/m-2", "quzhou-steel/site-1/line-2"));
    Create(Acc("quzhou-steel/site-2", v1::ACCOUNT_KIND_SITE, "quzhou-steel",
               "CN-ZJ-QZ-QJ"));
    Create(Meter("quzhou-steel/site-2/m-3", "quzhou-steel/site-2",
                 v1::ENERGY_KIND_NATURAL_GAS, "m3"));
    Create(Acc("quzhou-cement", v1::ACCOUNT_KIND_ENTERPRISE, "", "CN-ZJ-QZ-QJ",
               "C3011"));
    Create(Meter("quzhou-cement/m-c", "quzhou-cement"));
    Create(
        Acc("beijing-co", v1::ACCOUNT_KIND_ENTERPRISE, "", "CN-BJ", "C3110"));
    Create(Meter("beijing-co/m-bj", "beijing-co"));
  }

  ReadingInput Reading(const std::string& meter, double value, absl::Time start,
                       absl::Duration len, const std::string& unit = "kWh",
                       v1::EnergyKind kind = v1::ENERGY_KIND_ELECTRICITY,
                       v1::ReadingKind rk = v1::READING_KIND_INTERVAL) {
    ReadingInput in;
    in.event_id = "ev-" + std::to_string(++event_seq_);
    v1::MeterReading& r = in.reading;
    r.set_meter_id(meter);
    r.set_energy_kind(kind);
    r.set_reading_kind(rk);
    r.set_value(value);
    r.set_unit(unit);
    if (rk != v1::READING_KIND_CUMULATIVE)
      TimestampToProto(start, r.mutable_interval_start());
    TimestampToProto(start + len, r.mutable_interval_end());
    return in;
  }

  ReadingInput Cumulative(const std::string& meter, double value,
                          absl::Time at) {
    return Reading(meter, value, at, absl::ZeroDuration(), "kWh",
                   v1::ENERGY_KIND_ELECTRICITY, v1::READING_KIND_CUMULATIVE);
  }

  BatchResult Account(std::vector<ReadingInput> in) {
    return ledger_->AccountReadings(in);
  }

  // Total of an account over one period of `g` containing `t`.
  // An account's emission records as stored, serialized, by record id.
  std::map<std::string, std::string> RecordsById(const std::string& account) {
    v1::ListEmissionRecordsRequest req;
    req.set_account_id(account);
    req.set_page_size(1000);
    auto got = ledger_->ListRecords(req);
    EXPECT_TRUE(got.ok()) << got.status();
    std::map<std::string, std::string> out;
    if (!got.ok()) return out;
    for (const v1::EmissionRecord& rec : got->records())
      out[rec.record_id()] = rec.SerializeAsString();
    return out;
  }

  // `got` holds exactly the records of `want`, field for field.
  static void ExpectSameRecords(const std::map<std::string, std::string>& want,
                                const std::map<std::string, std::string>& got) {
    ASSERT_EQ(got.size(), want.size());
    for (const auto& [id, bytes] : want) {
      auto it = got.find(id);
      ASSERT_NE(it, got.end()) << id;
      v1::EmissionRecord a, b;
      ASSERT_TRUE(a.ParseFromString(bytes));
      ASSERT_TRUE(b.ParseFromString(it->second));
      EXPECT_EQ(a.DebugString(), b.DebugString()) << id;
    }
  }

  v1::EmissionTotal Total(const std::string& account, v1::Granularity g,
                          absl::Time t, bool as_reported = false) {
    Period p = PeriodOf(t, g, tz_);
    absl::StatusOr<std::vector<v1::EmissionTotal>> r =
        ledger_->Emissions(account, g, p.start, p.end, as_reported);
    EXPECT_TRUE(r.ok()) << r.status();
    if (!r.ok() || r->size() != 1) return {};
    return r->front();
  }
  v1::EmissionTotal RegionTotal(const std::string& region, v1::Granularity g,
                                absl::Time t) {
    Period p = PeriodOf(t, g, tz_);
    absl::StatusOr<std::vector<v1::EmissionTotal>> r =
        ledger_->RegionEmissions(region, g, p.start, p.end, false);
    EXPECT_TRUE(r.ok()) << r.status();
    if (!r.ok() || r->size() != 1) return {};
    return r->front();
  }

  testing::TempDir dir_;
  SimulatedClock clock_{
      absl::FromUnixSeconds(1735689600)};  // 2025-01-01T00:00Z
  absl::TimeZone tz_;
  RegionTree tree_;
  std::unique_ptr<FactorRegistry> factors_;
  std::unique_ptr<CarbonLedger> ledger_;
  int event_seq_ = 0;
};

namespace {

constexpr char kM1[] = "quzhou-steel/site-1/line-1/m-1";
constexpr char kM2[] = "quzhou-steel/site-1/line-2/m-2";
constexpr char kM3[] = "quzhou-steel/site-2/m-3";

TEST_F(LedgerTest, ReferenceVectorNationalFactor) {
  BuildCity();
  // Beijing has no grid region in the tree: CN 2023 = 0.5306 kgCO2/kWh.
  BatchResult r = Account(
      {Reading("beijing-co/m-bj", 32000, T(2024, 3, 1), absl::Hours(1))});
  ASSERT_EQ(r.accounted, 1u);
  ASSERT_EQ(r.records.size(), 1u);
  const v1::EmissionRecord& rec = r.records[0];
  EXPECT_NEAR(rec.emissions_kg(), 16979.2, 1e-6);
  EXPECT_NEAR(rec.market_based_kg(), 16979.2,
              1e-6);  // no tariff: market = location
  EXPECT_EQ(rec.factor().region(), "CN");
  EXPECT_EQ(rec.factor().vintage(), "2023");
  EXPECT_EQ(rec.scope(), v1::SCOPE_2);
  EXPECT_EQ(rec.activity_unit(), "kWh");
  EXPECT_EQ(rec.enterprise_id(), "beijing-co");
  EXPECT_EQ(rec.meter_id(), "beijing-co/m-bj");
  EXPECT_EQ(rec.region(), "CN-BJ");
  EXPECT_EQ(rec.industry_code(), "C3110");
  EXPECT_EQ(rec.method(), "energy-x-factor");
  EXPECT_EQ(rec.source_event_id(), "ev-1");
  EXPECT_TRUE(rec.restatement_id().empty());
  v1::EmissionTotal t = Total("beijing-co", v1::GRANULARITY_DAY, T(2024, 3, 1));
  EXPECT_NEAR(t.scope2_location_kg(), 16979.2, 1e-6);
  EXPECT_NEAR(t.total_kg(), 16979.2, 1e-6);
  EXPECT_EQ(t.readings(), 1u);
  ASSERT_EQ(t.energy_size(), 1);
  EXPECT_EQ(t.energy(0).energy_kind(), v1::ENERGY_KIND_ELECTRICITY);
  EXPECT_DOUBLE_EQ(t.energy(0).quantity(), 32000);
  EXPECT_EQ(t.energy(0).unit(), "kWh");
}

TEST_F(LedgerTest, ReferenceVectorEastGridForKecheng) {
  BuildCity();
  // 32 MWh in MWh: converted to kWh; CN-ZJ-QZ-KC -> CN-EAST 2023 = 0.5500.
  Create(Meter("quzhou-steel/site-1/m-mwh", "quzhou-steel/site-1",
               v1::ENERGY_KIND_ELECTRICITY, "MWh"));
  BatchResult r = Account({Reading(kM2, 32000, T(2024, 3, 1), absl::Hours(1)),
                           Reading("quzhou-steel/site-1/m-mwh", 32,
                                   T(2024, 3, 1), absl::Hours(1), "MWh")});
  ASSERT_EQ(r.accounted, 2u);
  EXPECT_NEAR(r.records[0].emissions_kg(), 17600.0, 1e-6);
  EXPECT_EQ(r.records[0].factor().region(), "CN-EAST");
  EXPECT_DOUBLE_EQ(r.records[0].factor().value(), 0.55);
  EXPECT_NEAR(r.records[1].emissions_kg(), 17600.0, 1e-6);
  EXPECT_DOUBLE_EQ(r.records[1].activity(), 32000);
  EXPECT_EQ(r.records[1].activity_unit(), "kWh");
  EXPECT_EQ(r.records[0].site_id(), "quzhou-steel/site-1");
  EXPECT_EQ(r.records[0].line_id(), "quzhou-steel/site-1/line-2");
}

TEST_F(LedgerTest, EnterpriseTotalIncludesProcessInScope1) {
  BuildCity();
  v1::EmissionFactor f;
  f.set_kind(v1::FACTOR_KIND_PROCESS);
  f.set_key("clinker");
  f.set_region("CN");
  f.set_vintage("test");
  f.set_value(500);
  f.set_unit("kgCO2/t");
  f.set_source("test clinker calcination factor");
  ASSERT_TRUE(factors_->Add(f, "test").ok());
  // Energy: 21,199,290.91 kWh x 0.55 = 11,659,610.0005 kg = 11,659.61 t.
  BatchResult r = Account({Reading("quzhou-cement/m-c", 21199290.91,
                                   T(2024, 3, 1), absl::Hours(24 * 31))});
  ASSERT_EQ(r.accounted, 1u)
      << (r.quarantine.empty() ? "" : r.quarantine[0].detail());
  ProcessInput p;
  p.event_id = "proc-1";
  p.activity.set_account_id("quzhou-cement");
  p.activity.set_method("cement-clinker");
  p.activity.set_activity_key("clinker");
  p.activity.set_quantity(4982.28);  // t x 500 = 2,491,140 kg = 2,491.14 t
  p.activity.set_unit("t");
  TimestampToProto(T(2024, 3, 1), p.activity.mutable_interval_start());
  TimestampToProto(T(2024, 4, 1), p.activity.mutable_interval_end());
  BatchResult pr = ledger_->AccountProcess({p});
  ASSERT_EQ(pr.accounted, 1u)
      << (pr.process_rejected.empty() ? "" : pr.process_rejected[0].detail);
  EXPECT_EQ(pr.records[0].source(), v1::EMISSION_SOURCE_PROCESS);
  EXPECT_EQ(pr.records[0].scope(), v1::SCOPE_1);
  EXPECT_EQ(pr.records[0].method(), "cement-clinker");
  EXPECT_NEAR(pr.records[0].emissions_kg(), 2491140, 1e-6);
  // Duplicate process entry is counted, not recorded.
  BatchResult dup = ledger_->AccountProcess({p});
  EXPECT_EQ(dup.duplicates, 1u);
  EXPECT_EQ(dup.accounted, 0u);

  v1::EmissionTotal t =
      Total("quzhou-cement", v1::GRANULARITY_MONTH, T(2024, 3, 15));
  EXPECT_NEAR(t.scope2_location_kg() / 1000, 11659.61, 1e-5);
  EXPECT_NEAR(t.process_kg() / 1000, 2491.14, 1e-9);
  EXPECT_NEAR(t.scope1_kg() / 1000, 2491.14, 1e-9);
  EXPECT_NEAR(t.total_kg() / 1000, 14150.75, 1e-5);
  EXPECT_EQ(t.readings(), 2u);
  // The region of the enterprise and its parents carry the same total.
  EXPECT_NEAR(RegionTotal("CN-ZJ-QZ-QJ", v1::GRANULARITY_YEAR, T(2024, 3, 15))
                      .total_kg() /
                  1000,
              14150.75, 1e-5);
}

TEST_F(LedgerTest, SupplierTariffGivesMarketBasedFigure) {
  BuildCity();
  v1::EmissionFactor f;
  f.set_kind(v1::FACTOR_KIND_SUPPLIER);
  f.set_key("electricity");
  f.set_region("CN");
  f.set_vintage("2024");
  f.set_value(0.1);
  f.set_unit("kgCO2/kWh");
  f.set_tariff_id("green-ppa-1");
  f.set_source("test green power purchase agreement");
  ASSERT_TRUE(factors_->Add(f, "test").ok());
  Create(Meter("quzhou-steel/m-green", "quzhou-steel",
               v1::ENERGY_KIND_ELECTRICITY, "kWh", 0, "green-ppa-1"));
  BatchResult r = Account(
      {Reading("quzhou-steel/m-green", 32000, T(2024, 3, 1), absl::Hours(1))});
  ASSERT_EQ(r.accounted, 1u);
  EXPECT_NEAR(r.records[0].emissions_kg(), 17600.0, 1e-6);
  EXPECT_NEAR(r.records[0].market_based_kg(), 3200.0, 1e-6);
  EXPECT_EQ(r.records[0].market_factor().factor_id(),
            r.records[0].market_factor().factor_id());
  EXPECT_DOUBLE_EQ(r.records[0].market_factor().value(), 0.1);
  v1::EmissionTotal t =
      Total("quzhou-steel", v1::GRANULARITY_DAY, T(2024, 3, 1));
  EXPECT_NEAR(t.scope2_market_kg(), 3200.0, 1e-6);
  EXPECT_NEAR(t.scope2_location_kg(), 17600.0, 1e-6);
}

TEST_F(LedgerTest, FuelIsScope1) {
  BuildCity();
  BatchResult r = Account({Reading(kM3, 1000, T(2024, 3, 1), absl::Hours(1),
                                   "m3", v1::ENERGY_KIND_NATURAL_GAS)});
  ASSERT_EQ(r.accounted, 1u);
  EXPECT_EQ(r.records[0].scope(), v1::SCOPE_1);
  EXPECT_NEAR(r.records[0].emissions_kg(), 2162.2, 1e-6);
  EXPECT_EQ(r.records[0].market_based_kg(), 0);
  EXPECT_EQ(r.records[0].region(), "CN-ZJ-QZ-QJ");
  v1::EmissionTotal t =
      Total("quzhou-steel", v1::GRANULARITY_DAY, T(2024, 3, 1));
  EXPECT_NEAR(t.scope1_kg(), 2162.2, 1e-6);
  EXPECT_EQ(t.process_kg(), 0);
}

TEST_F(LedgerTest, TotalsPerLineSiteEnterpriseRegionIndustry) {
  BuildCity();
  const absl::Time t0 = T(2024, 3, 1, 10);
  BatchResult r = Account({
      Reading(kM1, 1000, t0, absl::Minutes(15)),                      // 550
      Reading(kM1, 1000, t0 + absl::Minutes(15), absl::Minutes(15)),  // 550
      Reading(kM2, 2000, t0, absl::Minutes(15)),                      // 1100
      Reading(kM3, 100, t0, absl::Minutes(15), "m3",
              v1::ENERGY_KIND_NATURAL_GAS),                       // 216.22
      Reading("quzhou-cement/m-c", 4000, t0, absl::Minutes(15)),  // 2200
      Reading("beijing-co/m-bj", 1000, t0, absl::Minutes(15)),    // 530.6
  });
  ASSERT_EQ(r.accounted, 6u);
  EXPECT_NEAR(
      Total("quzhou-steel/site-1/line-1", v1::GRANULARITY_HOUR, t0).total_kg(),
      1100, 1e-9);
  EXPECT_NEAR(
      Total("quzhou-steel/site-1/line-2", v1::GRANULARITY_DAY, t0).total_kg(),
      1100, 1e-9);
  EXPECT_NEAR(
      Total("quzhou-steel/site-1", v1::GRANULARITY_MONTH, t0).total_kg(), 2200,
      1e-9);
  EXPECT_NEAR(Total("quzhou-steel/site-2", v1::GRANULARITY_YEAR, t0).total_kg(),
              216.22, 1e-9);
  v1::EmissionTotal e = Total("quzhou-steel", v1::GRANULARITY_DAY, t0);
  EXPECT_NEAR(e.total_kg(), 2416.22, 1e-9);
  EXPECT_NEAR(e.scope1_kg(), 216.22, 1e-9);
  EXPECT_NEAR(e.scope2_location_kg(), 2200, 1e-9);
  EXPECT_EQ(e.readings(), 4u);
  EXPECT_EQ(e.energy_size(), 2);
  // Regions: site-1 is in Kecheng, site-2 and the cement works in Qujiang.
  EXPECT_NEAR(RegionTotal("CN-ZJ-QZ-KC", v1::GRANULARITY_DAY, t0).total_kg(),
              2200, 1e-9);
  EXPECT_NEAR(RegionTotal("CN-ZJ-QZ-QJ", v1::GRANULARITY_DAY, t0).total_kg(),
              2416.22, 1e-9);
  EXPECT_NEAR(RegionTotal("CN-ZJ-QZ", v1::GRANULARITY_DAY, t0).total_kg(),
              4616.22, 1e-9);
  EXPECT_NEAR(RegionTotal("CN", v1::GRANULARITY_DAY, t0).total_kg(), 5146.82,
              1e-9);
  EXPECT_NEAR(RegionTotal("CN-BJ", v1::GRANULARITY_DAY, t0).total_kg(), 530.6,
              1e-9);
  // Hours: the two periods of the day's hour 10 and 11.
  Period day = PeriodOf(t0, v1::GRANULARITY_DAY, tz_);
  auto hours =
      ledger_->Emissions("quzhou-steel/site-1/line-1", v1::GRANULARITY_HOUR,
                         day.start, day.end, false);
  ASSERT_TRUE(hours.ok());
  ASSERT_EQ(hours->size(), 24u);
  EXPECT_NEAR((*hours)[10].total_kg(), 1100, 1e-9);
  EXPECT_EQ((*hours)[9].total_kg(), 0);
  // Industries: C31 groups steel + beijing; with the Qujiang filter only
  // site-2.
  v1::GetIndustryEmissionsRequest ir;
  ir.set_industry_code("C3");
  ir.set_group_digits(3);
  ir.set_granularity(v1::GRANULARITY_DAY);
  auto ind = ledger_->IndustryEmissions(ir, day.start, day.end);
  ASSERT_TRUE(ind.ok()) << ind.status();
  ASSERT_EQ(ind->industries_size(), 2);
  EXPECT_EQ(ind->industries(0).industry_code(), "C30");
  EXPECT_NEAR(ind->industries(0).totals(0).total_kg(), 2200, 1e-9);
  EXPECT_EQ(ind->industries(1).industry_code(), "C31");
  EXPECT_EQ(ind->industries(1).enterprises(), 2u);
  EXPECT_NEAR(ind->industries(1).totals(0).total_kg(), 2416.22 + 530.6, 1e-9);
  ir.set_region("CN-ZJ-QZ-QJ");
  ind = ledger_->IndustryEmissions(ir, day.start, day.end);
  ASSERT_TRUE(ind.ok());
  ASSERT_EQ(ind->industries_size(), 2);
  EXPECT_NEAR(ind->industries(1).totals(0).total_kg(), 216.22, 1e-9);
  EXPECT_EQ(ind->industries(1).enterprises(), 1u);
  // Contributors of the enterprise (sites) and of Quzhou (districts).
  auto c = ledger_->Contributors("quzhou-steel", false, day.start, day.end);
  ASSERT_EQ(c.size(), 2u);
  EXPECT_EQ(c[0].account_id(), "quzhou-steel/site-1");
  EXPECT_NEAR(c[0].share(), 2200 / 2416.22, 1e-12);
  auto cr = ledger_->Contributors("CN-ZJ-QZ", true, day.start, day.end);
  ASSERT_EQ(cr.size(), 2u);
  EXPECT_EQ(cr[0].account_id(), "CN-ZJ-QZ-QJ");
  auto ce = ledger_->Contributors("CN-ZJ-QZ-QJ", true, day.start, day.end);
  ASSERT_EQ(ce.size(), 2u);
  EXPECT_EQ(ce[0].account_id(), "quzhou-cement");
  EXPECT_EQ(ce[1].account_id(), "quzhou-steel");
  EXPECT_NEAR(ce[1].emissions_kg(), 216.22, 1e-9);
  EXPECT_NEAR(ledger_->TotalKg("CN-ZJ-QZ", true, day.start, day.end), 4616.22,
              1e-9);
  // Touched: the meter's chain and region chain, with the latest interval end.
  bool saw_line = false, saw_city = false;
  for (const TouchedTotal& tt : r.touched) {
    if (tt.account_id == "quzhou-steel/site-1/line-1") {
      saw_line = true;
      EXPECT_EQ(tt.time, t0 + absl::Minutes(30));
    }
    if (tt.region == "CN-ZJ-QZ") saw_city = true;
  }
  EXPECT_TRUE(saw_line);
  EXPECT_TRUE(saw_city);
}

TEST_F(LedgerTest, EveryQuarantineReason) {
  BuildCity();
  const absl::Time t0 = T(2024, 3, 1, 10);
  Create(Meter("beijing-co/m-steam", "beijing-co", v1::ENERGY_KIND_STEAM,
               "GJ"));  // no steam factor seeded
  ASSERT_EQ(Account({Reading(kM1, 100, t0, absl::Minutes(15))}).accounted, 1u);
  ASSERT_EQ(Account({Cumulative(kM2, 5000, t0)}).baselines, 1u);
  ReadingInput no_kind =
      Reading(kM1, 1, t0 + absl::Hours(5), absl::Minutes(15));
  no_kind.reading.set_reading_kind(v1::READING_KIND_UNSPECIFIED);
  std::vector<std::pair<ReadingInput, v1::QuarantineReason>> cases = {
      {Reading("nope/m-9", 1, t0, absl::Minutes(15)),
       v1::QUARANTINE_REASON_UNKNOWN_METER},
      {Reading(kM1, 1, t0, absl::Minutes(15), "m3",
               v1::ENERGY_KIND_NATURAL_GAS),
       v1::QUARANTINE_REASON_UNIT_MISMATCH},
      {Reading(kM1, 1, t0, absl::Minutes(15), "MWh"),
       v1::QUARANTINE_REASON_UNIT_MISMATCH},
      {Reading(kM1, -5, t0 + absl::Hours(1), absl::Minutes(15)),
       v1::QUARANTINE_REASON_NEGATIVE_VALUE},
      {Cumulative(kM2, 4000, t0 + absl::Hours(1)),
       v1::QUARANTINE_REASON_METER_RESET},
      {Reading(kM1, 1, clock_.Now() + absl::Minutes(10), absl::Minutes(15)),
       v1::QUARANTINE_REASON_FUTURE_TIMESTAMP},
      {Reading(kM1, 1, t0 + absl::Hours(2), absl::ZeroDuration()),
       v1::QUARANTINE_REASON_BAD_INTERVAL},
      {Reading(kM1, 1, t0 + absl::Hours(2), -absl::Minutes(15)),
       v1::QUARANTINE_REASON_BAD_INTERVAL},
      {no_kind, v1::QUARANTINE_REASON_BAD_INTERVAL},
      {Reading(kM1, 101, t0, absl::Minutes(15)),
       v1::QUARANTINE_REASON_DUPLICATE_CONFLICT},
      {Reading(kM1, 32000000, t0 + absl::Hours(3), absl::Minutes(15)),
       v1::QUARANTINE_REASON_IMPLAUSIBLE},
      {Reading("beijing-co/m-steam", 10, t0, absl::Hours(1), "GJ",
               v1::ENERGY_KIND_STEAM),
       v1::QUARANTINE_REASON_NO_FACTOR},
  };
  for (const auto& [in, reason] : cases) {
    BatchResult r = Account({in});
    ASSERT_EQ(r.quarantined, 1u) << v1::QuarantineReason_Name(reason);
    ASSERT_EQ(r.quarantine.size(), 1u);
    EXPECT_EQ(r.quarantine[0].reason(), reason) << r.quarantine[0].detail();
    EXPECT_FALSE(r.quarantine[0].detail().empty());
    EXPECT_EQ(r.quarantine[0].source_event_id(), in.event_id);
    EXPECT_EQ(r.accounted, 0u);
    EXPECT_TRUE(r.records.empty());
  }
  // The future reading did not push the hour tiers forward: hourly figures of
  // t0 remain.
  EXPECT_NEAR(Total(kM1, v1::GRANULARITY_HOUR, t0).total_kg(), 55, 1e-9);
  // A reading within the 5 min tolerance is accepted.
  EXPECT_EQ(Account({Reading(kM1, 1, clock_.Now() - absl::Minutes(10),
                             absl::Minutes(14))})
                .accounted,
            1u);
  // Quarantined readings are listed newest first, filterable by reason, per
  // account.
  v1::ListQuarantinedReadingsRequest q;
  q.set_account_id("quzhou-steel");
  auto all = ledger_->ListQuarantine(q);
  ASSERT_TRUE(all.ok()) << all.status();
  EXPECT_EQ(all->readings_size(), 10);  // not the unknown meter nor beijing's
  EXPECT_EQ(all->readings(0).reason(), v1::QUARANTINE_REASON_IMPLAUSIBLE);
  q.set_reason(v1::QUARANTINE_REASON_BAD_INTERVAL);
  auto bad = ledger_->ListQuarantine(q);
  ASSERT_TRUE(bad.ok());
  EXPECT_EQ(bad->readings_size(), 3);
  v1::ListQuarantinedReadingsRequest everything;
  auto every = ledger_->ListQuarantine(everything);
  ASSERT_TRUE(every.ok());
  EXPECT_EQ(every->readings_size(), 12);
  EXPECT_EQ(every->readings(11).reason(), v1::QUARANTINE_REASON_UNKNOWN_METER);
  EXPECT_EQ(every->readings(11).reading().meter_id(), "nope/m-9");
  // Quarantine counts appear in the figures.
  EXPECT_GE(Total("quzhou-steel", v1::GRANULARITY_YEAR, t0).quarantined(), 9u);
}

TEST_F(LedgerTest, WhSentAsKwhIsImplausibleAndWhUnitIsRejected) {
  BuildCity();
  const absl::Time t0 = T(2024, 3, 1, 10);
  // 32,000 kWh really, sent in Wh as if kWh: 32,000,000 "kWh" in 15 min.
  BatchResult r = Account({Reading(kM1, 32000000, t0, absl::Minutes(15))});
  ASSERT_EQ(r.quarantine.size(), 1u);
  EXPECT_EQ(r.quarantine[0].reason(), v1::QUARANTINE_REASON_IMPLAUSIBLE);
  EXPECT_NE(r.quarantine[0].detail().find("32000000 kWh in 15m"),
            std::string::npos)
      << r.quarantine[0].detail();
  EXPECT_NE(r.quarantine[0].detail().find("max 5000 kWh/h"), std::string::npos)
      << r.quarantine[0].detail();
  BatchResult w =
      Account({Reading(kM1, 32000000, t0, absl::Minutes(15), "Wh")});
  ASSERT_EQ(w.quarantine.size(), 1u);
  EXPECT_EQ(w.quarantine[0].reason(), v1::QUARANTINE_REASON_UNIT_MISMATCH);
  EXPECT_NE(w.quarantine[0].detail().find("'Wh' is not accepted"),
            std::string::npos)
      << w.quarantine[0].detail();
  // At the limit it is accepted: 1250 kWh in 15 min = 5000 kWh/h.
  EXPECT_EQ(Account({Reading(kM1, 1250, t0, absl::Minutes(15))}).accounted, 1u);
  EXPECT_EQ(Total("quzhou-steel", v1::GRANULARITY_DAY, t0).readings(), 1u);
}

TEST_F(LedgerTest, DedupRepeatConflictAndOutOfOrder) {
  BuildCity();
  const absl::Time t0 = T(2024, 3, 1, 10);
  ReadingInput a = Reading(kM1, 100, t0, absl::Minutes(15));
  ReadingInput b = Reading(kM1, 200, t0 + absl::Minutes(15), absl::Minutes(15));
  ASSERT_EQ(Account({b}).accounted, 1u);
  // Out of order: the earlier interval after the later one is accepted.
  ASSERT_EQ(Account({a}).accounted, 1u);
  // Exact repeats (same batch and later batches) are counted, not recorded.
  BatchResult rep = Account({a, b, a});
  EXPECT_EQ(rep.duplicates, 3u);
  EXPECT_EQ(rep.accounted, 0u);
  EXPECT_TRUE(rep.records.empty());
  // Conflicting value for an accounted key.
  ReadingInput c = Reading(kM1, 150, t0, absl::Minutes(15));
  BatchResult conf = Account({c});
  ASSERT_EQ(conf.quarantine.size(), 1u);
  EXPECT_EQ(conf.quarantine[0].reason(),
            v1::QUARANTINE_REASON_DUPLICATE_CONFLICT);
  EXPECT_NE(conf.quarantine[0].detail().find("accounted with value 100"),
            std::string::npos);
  // Same start, different end: a different key.
  EXPECT_EQ(Account({Reading(kM1, 10, t0, absl::Minutes(5))}).accounted, 1u);
  EXPECT_NEAR(
      Total("quzhou-steel/site-1/line-1", v1::GRANULARITY_DAY, t0).total_kg(),
      310 * 0.55, 1e-9);
  // Older than the in-memory window (48 h behind the newest): checked in the
  // database.
  ASSERT_EQ(Account({Reading(kM1, 1, t0 + absl::Hours(100), absl::Minutes(15))})
                .accounted,
            1u);
  BatchResult old =
      Account({a, Reading(kM1, 999, t0 + absl::Minutes(15), absl::Minutes(15)),
               Reading(kM1, 7, t0 - absl::Hours(5), absl::Minutes(15))});
  EXPECT_EQ(old.duplicates, 1u);
  ASSERT_EQ(old.quarantine.size(), 1u);
  EXPECT_EQ(old.quarantine[0].reason(),
            v1::QUARANTINE_REASON_DUPLICATE_CONFLICT);
  EXPECT_EQ(old.accounted, 1u);
}

TEST_F(LedgerTest, CumulativeReadingsAndMeterReset) {
  BuildCity();
  const absl::Time t0 = T(2024, 3, 1, 10);
  BatchResult base = Account({Cumulative(kM2, 1000, t0)});
  EXPECT_EQ(base.baselines, 1u);
  EXPECT_EQ(base.accounted, 0u);
  BatchResult r = Account({Cumulative(kM2, 1400, t0 + absl::Minutes(15)),
                           Cumulative(kM2, 1500, t0 + absl::Minutes(30))});
  ASSERT_EQ(r.accounted, 2u);
  EXPECT_DOUBLE_EQ(r.records[0].activity(), 400);
  EXPECT_EQ(*TimestampFromProto(r.records[0].interval_start(), "s"), t0);
  EXPECT_EQ(*TimestampFromProto(r.records[0].interval_end(), "e"),
            t0 + absl::Minutes(15));
  EXPECT_DOUBLE_EQ(r.records[1].activity(), 100);
  // Repeat of a register: duplicate; different value at the same time:
  // conflict.
  EXPECT_EQ(Account({Cumulative(kM2, 1500, t0 + absl::Minutes(30))}).duplicates,
            1u);
  BatchResult conf = Account({Cumulative(kM2, 1600, t0 + absl::Minutes(30))});
  ASSERT_EQ(conf.quarantine.size(), 1u);
  EXPECT_EQ(conf.quarantine[0].reason(),
            v1::QUARANTINE_REASON_DUPLICATE_CONFLICT);
  // Out-of-order cumulative before the latest register: BAD_INTERVAL
  // (documented).
  BatchResult ooo = Account({Cumulative(kM2, 1450, t0 + absl::Minutes(20))});
  ASSERT_EQ(ooo.quarantine.size(), 1u);
  EXPECT_EQ(ooo.quarantine[0].reason(), v1::QUARANTINE_REASON_BAD_INTERVAL);
  // Reset: quarantined, becomes the new baseline.
  BatchResult reset = Account({Cumulative(kM2, 20, t0 + absl::Minutes(45))});
  ASSERT_EQ(reset.quarantine.size(), 1u);
  EXPECT_EQ(reset.quarantine[0].reason(), v1::QUARANTINE_REASON_METER_RESET);
  BatchResult after = Account({Cumulative(kM2, 70, t0 + absl::Minutes(60))});
  ASSERT_EQ(after.accounted, 1u);
  EXPECT_DOUBLE_EQ(after.records[0].activity(), 50);
  EXPECT_NEAR(Total(kM2, v1::GRANULARITY_DAY, t0).energy(0).quantity(), 550,
              1e-9);
  // The register survives a reopen.
  Reopen();
  BatchResult next = Account({Cumulative(kM2, 100, t0 + absl::Minutes(75))});
  ASSERT_EQ(next.accounted, 1u);
  EXPECT_DOUBLE_EQ(next.records[0].activity(), 30);
  EXPECT_EQ(Account({Cumulative(kM2, 70, t0 + absl::Minutes(60))}).duplicates,
            1u);
}

TEST_F(LedgerTest, RestatementWithNewVintage) {
  // A registry that only knows the 2023 CN factor (valid back to 2020).
  factors_.reset();
  std::remove(dir_.File("factors.db").c_str());
  OpenFactors(/*seed=*/false);
  Reopen();
  auto grid = [](const std::string& vintage, double value, int64_t start_s) {
    v1::EmissionFactor f;
    f.set_kind(v1::FACTOR_KIND_GRID);
    f.set_key("electricity");
    f.set_region("CN");
    f.set_vintage(vintage);
    f.set_value(value);
    f.set_unit("kgCO2/kWh");
    f.set_source("MEE+NBS " + vintage);
    f.mutable_valid()->mutable_start()->set_seconds(start_s);
    return f;
  };
  ASSERT_TRUE(
      factors_->Add(grid("2023", 0.5306, 1577808000 /*2020-01-01*/), "test")
          .ok());
  Create(Acc("bj", v1::ACCOUNT_KIND_ENTERPRISE, "", "CN-BJ", "C3110"));
  Create(Acc("bj/site", v1::ACCOUNT_KIND_SITE, "bj"));
  Create(Meter("bj/site/m", "bj/site"));
  Create(Acc("other", v1::ACCOUNT_KIND_ENTERPRISE, "", "CN-BJ", "C3110"));
  Create(Meter("other/m", "other"));
  const absl::Time t0 = T(2022, 6, 1);
  BatchResult r =
      Account({Reading("bj/site/m", 32000, t0, absl::Hours(1)),
               Reading("bj/site/m", 10000, t0 + absl::Hours(1), absl::Hours(1)),
               Reading("other/m", 1000, t0, absl::Hours(1))});
  ASSERT_EQ(r.accounted, 3u);
  EXPECT_EQ(r.records[0].factor().vintage(), "2023");
  const double before = 42000 * 0.5306;
  EXPECT_NEAR(Total("bj", v1::GRANULARITY_YEAR, t0).total_kg(), before, 1e-6);

  // The 2022 factor is published: only restated figures change.
  ASSERT_TRUE(
      factors_->Add(grid("2022", 0.5366, 1640966400 /*2022-01-01*/), "test")
          .ok());
  EXPECT_NEAR(Total("bj", v1::GRANULARITY_YEAR, t0).total_kg(), before, 1e-6);
  absl::StatusOr<CarbonLedger::RestateResult> res =
      ledger_->Restate("rs-1", {"bj"}, "", T(2022, 1, 1), T(2023, 1, 1), {});
  ASSERT_TRUE(res.ok()) << res.status();
  EXPECT_EQ(res->records, 2u);
  EXPECT_NEAR(res->delta_kg, 42000 * (0.5366 - 0.5306), 1e-6);
  EXPECT_EQ(res->enterprises, std::vector<std::string>{"bj"});
  const double after = 42000 * 0.5366;
  EXPECT_NEAR(Total("bj", v1::GRANULARITY_YEAR, t0).total_kg(), after, 1e-6);
  EXPECT_NEAR(
      Total("bj", v1::GRANULARITY_YEAR, t0, /*as_reported=*/true).total_kg(),
      before, 1e-6);
  EXPECT_NEAR(Total("bj/site/m", v1::GRANULARITY_HOUR, t0).total_kg(),
              32000 * 0.5366, 1e-6);
  EXPECT_NEAR(Total("other", v1::GRANULARITY_YEAR, t0).total_kg(), 530.6,
              1e-9);  // out of scope
  EXPECT_NEAR(RegionTotal("CN-BJ", v1::GRANULARITY_YEAR, t0).total_kg(),
              after + 530.6, 1e-6);

  v1::ListEmissionRecordsRequest lr;
  lr.set_account_id("bj");
  auto cur = ledger_->ListRecords(lr);
  ASSERT_TRUE(cur.ok()) << cur.status();
  ASSERT_EQ(cur->records_size(), 2);
  EXPECT_EQ(cur->records(0).restatement_id(), "rs-1");
  EXPECT_EQ(cur->records(0).factor().vintage(), "2022");
  EXPECT_NEAR(cur->records(0).emissions_kg(), 32000 * 0.5366, 1e-6);
  lr.set_as_reported(true);
  auto rep = ledger_->ListRecords(lr);
  ASSERT_TRUE(rep.ok());
  ASSERT_EQ(rep->records_size(), 2);
  EXPECT_TRUE(rep->records(0).restatement_id().empty());
  EXPECT_NEAR(rep->records(0).emissions_kg(), 16979.2, 1e-6);

  // New 2022 readings now use the 2022 factor on the hot path.
  BatchResult late =
      Account({Reading("other/m", 1000, t0 + absl::Hours(5), absl::Hours(1))});
  ASSERT_EQ(late.accounted, 1u);
  EXPECT_EQ(late.records[0].factor().vintage(), "2022");

  // Errors change nothing: unknown account, no factor for the period.
  EXPECT_EQ(
      ledger_->Restate("rs-x", {"nope"}, "", T(2022, 1, 1), T(2023, 1, 1), {})
          .status()
          .code(),
      absl::StatusCode::kNotFound);
  EXPECT_EQ(ledger_->Restate("rs-x", {}, "", T(2022, 1, 1), T(2023, 1, 1), {})
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);

  // A second restatement with an explicit factor: back to the 2023 one.
  auto f2023 = factors_->List(v1::ListEmissionFactorsRequest());
  std::string id2023;
  for (const auto& f : f2023) {
    if (f.vintage() == "2023") id2023 = f.factor_id();
  }
  auto res2 = ledger_->Restate("rs-2", {}, "CN-BJ", T(2022, 1, 1),
                               T(2023, 1, 1), {id2023});
  ASSERT_TRUE(res2.ok()) << res2.status();
  EXPECT_EQ(res2->records, 4u);  // bj x2, other x2
  EXPECT_NEAR(Total("bj", v1::GRANULARITY_YEAR, t0).total_kg(), before, 1e-6);
  EXPECT_NEAR(Total("other", v1::GRANULARITY_YEAR, t0).total_kg(), 1061.2,
              1e-6);

  // Reopen: as reported and current both restored.
  Reopen();
  EXPECT_NEAR(Total("bj", v1::GRANULARITY_YEAR, t0).total_kg(), before, 1e-6);
  EXPECT_NEAR(Total("other", v1::GRANULARITY_YEAR, t0, true).total_kg(),
              530.6 + 536.6, 1e-6);
  EXPECT_NEAR(Total("other", v1::GRANULARITY_YEAR, t0).total_kg(), 1061.2,
              1e-6);
  lr.set_account_id("other");
  lr.set_as_reported(false);
  auto cur2 = ledger_->ListRecords(lr);
  ASSERT_TRUE(cur2.ok());
  ASSERT_EQ(cur2->records_size(), 2);
  EXPECT_EQ(cur2->records(0).restatement_id(), "rs-2");
}

TEST_F(LedgerTest, AccountValidationAndInheritance) {
  BuildCity();
  auto code = [&](const v1::Account& a) {
    return ledger_->CreateAccount(a).status().code();
  };
  EXPECT_EQ(code(Acc("bad id!", v1::ACCOUNT_KIND_ENTERPRISE, "", "CN")),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(
      code(Acc(std::string(129, 'a'), v1::ACCOUNT_KIND_ENTERPRISE, "", "CN")),
      absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(code(Acc("", v1::ACCOUNT_KIND_ENTERPRISE, "", "CN")),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(code(Acc("x", v1::ACCOUNT_KIND_UNSPECIFIED, "", "CN")),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(code(Acc("quzhou-steel", v1::ACCOUNT_KIND_ENTERPRISE, "", "CN")),
            absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(code(Acc("x/line", v1::ACCOUNT_KIND_LINE, "quzhou-steel")),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(code(Acc("x/site", v1::ACCOUNT_KIND_SITE, "missing")),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(code(Acc("x/site", v1::ACCOUNT_KIND_SITE, "")),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(code(Acc("x", v1::ACCOUNT_KIND_ENTERPRISE, "", "XX-NOPE")),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(code(Acc("x", v1::ACCOUNT_KIND_ENTERPRISE, "quzhou-steel", "CN")),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(
      code(Acc("quzhou-steel/m-x", v1::ACCOUNT_KIND_METER, "quzhou-steel")),
      absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(code(Meter("quzhou-steel/m-x", "quzhou-steel",
                       v1::ENERGY_KIND_ELECTRICITY, "Wh")),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(code(Meter("quzhou-steel/m-x", "quzhou-steel",
                       v1::ENERGY_KIND_UNSPECIFIED, "kWh")),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(code(Meter("quzhou-steel/m-x", "quzhou-steel/site-1/line-1/m-1")),
            absl::StatusCode::kInvalidArgument);
  absl::Status s = ledger_
                       ->CreateAccount(Meter("quzhou-steel/m-x", "quzhou-steel",
                                             v1::ENERGY_KIND_COAL, "m3"))
                       .status();
  EXPECT_NE(s.message().find("'m3'"), std::string::npos) << s;
  // Inheritance.
  auto m1 = ledger_->GetAccount(kM1);
  ASSERT_TRUE(m1.ok());
  EXPECT_EQ(m1->region(), "CN-ZJ-QZ-KC");
  EXPECT_EQ(m1->industry_code(), "C3110");
  EXPECT_EQ(m1->org(), "quzhou-steel");
  EXPECT_TRUE(m1->has_create_time());
  EXPECT_EQ(ledger_->GetAccount(kM3)->region(), "CN-ZJ-QZ-QJ");
  EXPECT_EQ(ledger_->ChildCount("quzhou-steel"), 2u);
  EXPECT_EQ(ledger_->EnterpriseOf(kM1), "quzhou-steel");
  EXPECT_EQ(ledger_->EnterpriseOf("quzhou-steel"), "quzhou-steel");
  EXPECT_TRUE(ledger_->AccountCovers("quzhou-steel/site-1", kM1));
  EXPECT_FALSE(ledger_->AccountCovers("quzhou-steel/site-2", kM1));
  // Individuals.
  v1::Account p = Acc("person/ds-1", v1::ACCOUNT_KIND_INDIVIDUAL, "");
  EXPECT_EQ(code(p), absl::StatusCode::kInvalidArgument);  // no data subject
  p.set_data_subject("ds-1");
  Create(p);
  p.set_account_id("person/ds-1b");
  EXPECT_EQ(code(p), absl::StatusCode::kAlreadyExists);
  // `person/<data subject>` ids are that person's individual account's only
  // (the ingest books the person's credits there).
  v1::Account squat = Acc("person/ds-2", v1::ACCOUNT_KIND_INDIVIDUAL, "");
  squat.set_data_subject("ds-3");
  EXPECT_EQ(code(squat), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(code(Acc("person/ds-2", v1::ACCOUNT_KIND_SITE, "quzhou-steel")),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(code(Acc("person/ds-2", v1::ACCOUNT_KIND_ENTERPRISE, "", "CN")),
            absl::StatusCode::kInvalidArgument);
  v1::Account own = Acc("person/ds-2", v1::ACCOUNT_KIND_INDIVIDUAL, "");
  own.set_data_subject("ds-2");
  EXPECT_EQ(code(own), absl::StatusCode::kOk);
  ASSERT_TRUE(ledger_->FindIndividual("ds-1").has_value());
  EXPECT_EQ(ledger_->FindIndividual("ds-1")->account_id(), "person/ds-1");
  EXPECT_EQ(ledger_->EnterpriseOf("person/ds-1"), "");
}

TEST_F(LedgerTest, ListAccountsFiltersAndPages) {
  BuildCity();
  v1::ListAccountsRequest req;
  req.set_kind(v1::ACCOUNT_KIND_METER);
  req.set_page_size(2);
  std::vector<std::string> ids;
  for (int guard = 0; guard < 10; ++guard) {
    auto r = ledger_->ListAccounts(req, nullptr);
    ASSERT_TRUE(r.ok());
    for (const auto& a : r->accounts()) ids.push_back(a.account_id());
    if (r->next_page_token().empty()) break;
    req.set_page_token(r->next_page_token());
  }
  EXPECT_EQ(ids, (std::vector<std::string>{
                     "beijing-co/m-bj", "quzhou-cement/m-c", kM1, kM2, kM3}));
  v1::ListAccountsRequest reg;
  reg.set_region("CN-ZJ-QZ-QJ");
  auto r = ledger_->ListAccounts(
      reg, [](const v1::Account& a) { return a.org() != "quzhou-cement"; });
  ASSERT_TRUE(r.ok());
  ASSERT_EQ(r->accounts_size(), 2);
  EXPECT_EQ(r->accounts(0).account_id(), "quzhou-steel/site-2");
  v1::ListAccountsRequest bad;
  bad.set_page_size(1001);
  EXPECT_EQ(ledger_->ListAccounts(bad, nullptr).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(LedgerTest, ListRecordsPaginationOldestFirst) {
  BuildCity();
  const absl::Time t0 = T(2024, 3, 1);
  std::vector<ReadingInput> in;
  for (int i = 24; i >= 0; --i)
    in.push_back(
        Reading(kM1, i + 1, t0 + absl::Minutes(15 * i), absl::Minutes(15)));
  in.push_back(Reading(kM2, 5, t0, absl::Minutes(15)));
  ASSERT_EQ(Account(in).accounted, 26u);
  v1::ListEmissionRecordsRequest req;
  req.set_account_id("quzhou-steel/site-1/line-1");
  req.set_page_size(10);
  TimestampToProto(t0, req.mutable_range()->mutable_start());
  TimestampToProto(t0 + absl::Hours(6), req.mutable_range()->mutable_end());
  std::vector<double> values;
  absl::Time last = absl::InfinitePast();
  int pages = 0;
  for (;;) {
    auto r = ledger_->ListRecords(req);
    ASSERT_TRUE(r.ok()) << r.status();
    ++pages;
    for (const auto& rec : r->records()) {
      absl::Time s = *TimestampFromProto(rec.interval_start(), "s");
      EXPECT_GE(s, last);
      last = s;
      EXPECT_EQ(rec.meter_id(), kM1);
      values.push_back(rec.activity());
    }
    if (r->next_page_token().empty()) break;
    req.set_page_token(r->next_page_token());
  }
  EXPECT_EQ(pages, 3);
  ASSERT_EQ(values.size(), 24u);  // the 25th starts at t0 + 6h (excluded)
  EXPECT_EQ(values.front(), 1);
  EXPECT_EQ(values.back(), 24);
  req.set_page_token("garbage");
  EXPECT_EQ(ledger_->ListRecords(req).status().code(),
            absl::StatusCode::kInvalidArgument);
  req.clear_page_token();
  req.set_account_id("nope");
  EXPECT_EQ(ledger_->ListRecords(req).status().code(),
            absl::StatusCode::kNotFound);
  // Quarantine pages.
  for (int i = 0; i < 5; ++i)
    Account({Reading(kM1, -1, t0 + absl::Hours(i), absl::Minutes(15))});
  v1::ListQuarantinedReadingsRequest q;
  q.set_account_id("quzhou-steel");
  q.set_page_size(2);
  int n = 0;
  for (int guard = 0; guard < 10; ++guard) {
    auto r = ledger_->ListQuarantine(q);
    ASSERT_TRUE(r.ok());
    n += r->readings_size();
    if (r->next_page_token().empty()) break;
    q.set_page_token(r->next_page_token());
  }
  EXPECT_EQ(n, 5);
}

// More records than one multi-row INSERT holds (64 rows each, plain rows
// with their constant columns as literals; the rest one by one): what is
// stored and read back equals what AccountReadings returned, also after a
// reopen.
TEST_F(LedgerTest, ManyRecordsInOneWriteReadBackExactly) {
  BuildCity();
  const absl::Time t0 = T(2024, 3, 1);
  std::vector<ReadingInput> in;
  for (int i = 0; i < 150; ++i) {
    in.push_back(Reading(i % 2 ? kM1 : kM2, 1 + i % 7,
                         t0 + absl::Minutes(15 * (i / 2)), absl::Minutes(15)));
  }
  BatchResult r = Account(in);
  ASSERT_EQ(r.accounted, 150u);
  ASSERT_EQ(r.records.size(), 150u);
  ASSERT_TRUE(ledger_->Flush().ok());
  std::map<std::string, std::string> want;
  for (const v1::EmissionRecord& rec : r.records)
    want[rec.record_id()] = rec.SerializeAsString();
  const std::map<std::string, std::string> got = RecordsById("quzhou-steel");
  ExpectSameRecords(want, got);
  const v1::EmissionTotal before =
      Total("quzhou-steel", v1::GRANULARITY_DAY, t0);
  Reopen();
  EXPECT_EQ(RecordsById("quzhou-steel"), got);
  // The replay adds the records up in another order than ingest did: the
  // sums may differ in the last bits.
  const v1::EmissionTotal after = Total("quzhou-steel", v1::GRANULARITY_DAY, t0);
  EXPECT_NEAR(after.total_kg(), before.total_kg(), 1e-9 * before.total_kg());
  EXPECT_EQ(after.readings(), 150u);
  EXPECT_EQ(before.readings(), 150u);
  EXPECT_GT(before.total_kg(), 0);
}

// The writer sorts a transaction's records into key order by merging their
// ascending runs (or, past 64 runs, with a plain sort): readings going back
// in time, interval by interval, make one run per interval. Both ways every
// record reads back exactly, also after a reopen.
TEST_F(LedgerTest, RecordsWrittenBackwardsInTimeReadBackExactly) {
  BuildCity();
  const absl::Time t0 = T(2024, 3, 2);
  std::map<std::string, std::string> want;
  int slot = 0;
  for (int intervals : {40, 100}) {  // 40 runs: merged; 100 runs: sorted
    std::vector<ReadingInput> in;
    for (int k = 0; k < intervals; ++k, ++slot) {
      const absl::Time start = t0 - absl::Minutes(15 * (slot + 1));
      in.push_back(Reading(kM1, 1 + slot % 5, start, absl::Minutes(15)));
      in.push_back(Reading(kM2, 2 + slot % 3, start, absl::Minutes(15)));
    }
    BatchResult r = Account(in);
    ASSERT_EQ(r.accounted, in.size());
    for (const v1::EmissionRecord& rec : r.records)
      want[rec.record_id()] = rec.SerializeAsString();
  }
  ASSERT_TRUE(ledger_->Flush().ok());
  ExpectSameRecords(want, RecordsById("quzhou-steel"));
  Reopen();
  ExpectSameRecords(want, RecordsById("quzhou-steel"));
}

TEST_F(LedgerTest, ReopenRestoresEverything) {
  BuildCity();
  const absl::Time t0 = T(2024, 3, 1, 10);
  ASSERT_EQ(Account({Reading(kM1, 1000, t0, absl::Minutes(15)),
                     Reading(kM3, 100, t0, absl::Minutes(15), "m3",
                             v1::ENERGY_KIND_NATURAL_GAS),
                     Reading(kM1, -1, t0, absl::Minutes(30))})
                .accounted,
            2u);
  v1::ValueAdded va;
  va.set_account_id("quzhou-steel");
  TimestampToProto(T(2024, 1, 1), va.mutable_period()->mutable_start());
  TimestampToProto(T(2025, 1, 1), va.mutable_period()->mutable_end());
  va.set_value_added_10k_yuan(10);
  ASSERT_TRUE(ledger_->SetValueAdded(va).ok());
  ASSERT_TRUE(ledger_->Flush().ok());
  v1::EmissionTotal before = Total("quzhou-steel", v1::GRANULARITY_DAY, t0);
  Reopen();
  v1::EmissionTotal after = Total("quzhou-steel", v1::GRANULARITY_DAY, t0);
  EXPECT_EQ(before.SerializeAsString(), after.SerializeAsString());
  EXPECT_NEAR(after.total_kg(), 550 + 216.22, 1e-9);
  EXPECT_EQ(after.quarantined(), 1u);
  EXPECT_NEAR(RegionTotal("CN-ZJ-QZ", v1::GRANULARITY_MONTH, t0).total_kg(),
              766.22, 1e-9);
  EXPECT_EQ(ledger_->GetAccount(kM1)->meter().max_per_hour(), 5000);
  EXPECT_EQ(ledger_->ChildCount("quzhou-steel/site-1"), 2u);
  ASSERT_TRUE(
      ledger_->ValueAdded("quzhou-steel", {T(2024, 1, 1), T(2025, 1, 1)})
          .has_value());
  // Dedup state and record ids survive.
  BatchResult r =
      Account({Reading(kM1, 1000, t0, absl::Minutes(15)),
               Reading(kM1, 5, t0, absl::Minutes(15)),
               Reading(kM1, 10, t0 + absl::Minutes(15), absl::Minutes(15))});
  EXPECT_EQ(r.duplicates, 1u);
  EXPECT_EQ(r.quarantined, 1u);
  ASSERT_EQ(r.accounted, 1u);
  EXPECT_EQ(r.records[0].record_id(), "r3");
  v1::ListEmissionRecordsRequest lr;
  lr.set_account_id("quzhou-steel");
  auto recs = ledger_->ListRecords(lr);
  ASSERT_TRUE(recs.ok());
  EXPECT_EQ(recs->records_size(), 3);
  EXPECT_EQ(recs->records(0).factor().region(), "CN-EAST");
}

TEST_F(LedgerTest, RankingsByTotalIntensityChangeAndK) {
  BuildCity();
  const absl::Time jan = T(2024, 1, 10), feb = T(2024, 2, 10);
  ASSERT_EQ(Account({Reading(kM1, 1000, jan, absl::Hours(1)),
                     Reading("quzhou-cement/m-c", 1000, jan, absl::Hours(1)),
                     Reading("beijing-co/m-bj", 2000, jan, absl::Hours(1)),
                     Reading(kM1, 3000, feb, absl::Hours(1)),
                     Reading("quzhou-cement/m-c", 1000, feb, absl::Hours(1)),
                     Reading("beijing-co/m-bj", 1000, feb, absl::Hours(1))})
                .accounted,
            6u);
  v1::GetRankingRequest req;
  req.set_subject(v1::RANKING_SUBJECT_ENTERPRISES);
  req.set_metric(v1::RANKING_METRIC_TOTAL);
  TimestampToProto(T(2024, 2, 1), req.mutable_period()->mutable_start());
  TimestampToProto(T(2024, 3, 1), req.mutable_period()->mutable_end());
  auto r = ledger_->Ranking(req);
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->entries_size(), 3);
  EXPECT_EQ(r->entries(0).id(), "quzhou-steel");
  EXPECT_NEAR(r->entries(0).value(), 1650, 1e-9);
  EXPECT_EQ(r->entries(0).unit(), "kg");
  EXPECT_EQ(r->entries(1).id(), "quzhou-cement");
  EXPECT_EQ(r->entries(2).rank(), 3u);
  // Region filter and ascending.
  req.set_region("CN-ZJ-QZ");
  req.set_ascending(true);
  r = ledger_->Ranking(req);
  ASSERT_TRUE(r.ok());
  ASSERT_EQ(r->entries_size(), 2);
  EXPECT_EQ(r->entries(0).id(), "quzhou-cement");
  // CHANGE vs January: steel +200 %, cement 0 %, beijing -50 %.
  req.clear_region();
  req.set_ascending(false);
  req.set_metric(v1::RANKING_METRIC_CHANGE);
  r = ledger_->Ranking(req);
  ASSERT_TRUE(r.ok());
  ASSERT_EQ(r->entries_size(), 3);
  EXPECT_NEAR(r->entries(0).value(), 200, 1e-9);
  EXPECT_NEAR(r->entries(2).value(), -50, 1e-9);
  EXPECT_EQ(r->entries(0).unit(), "%");
  // INTENSITY needs value added for the period.
  v1::ValueAdded va;
  va.set_account_id("quzhou-steel");
  *va.mutable_period() = req.period();
  va.set_value_added_10k_yuan(2);
  ASSERT_TRUE(ledger_->SetValueAdded(va).ok());
  va.set_account_id("quzhou-steel/site-1");
  EXPECT_EQ(ledger_->SetValueAdded(va).code(),
            absl::StatusCode::kInvalidArgument);
  req.set_metric(v1::RANKING_METRIC_INTENSITY);
  r = ledger_->Ranking(req);
  ASSERT_TRUE(r.ok());
  ASSERT_EQ(r->entries_size(), 1);
  EXPECT_NEAR(r->entries(0).value(), 1.65 / 2, 1e-12);
  EXPECT_EQ(r->ranked(), 1u);
  // K from grades; ties share a rank.
  for (const char* e : {"quzhou-steel", "quzhou-cement", "beijing-co"}) {
    v1::Grade g;
    g.set_account_id(e);
    *g.mutable_period() = req.period();
    g.set_k(std::string(e) == "beijing-co" ? 0.5 : 0.9);
    ASSERT_TRUE(ledger_->SetGrade(g).ok());
  }
  req.set_metric(v1::RANKING_METRIC_K);
  req.set_ascending(true);
  r = ledger_->Ranking(req);
  ASSERT_TRUE(r.ok());
  ASSERT_EQ(r->entries_size(), 3);
  EXPECT_EQ(r->entries(0).id(), "beijing-co");
  EXPECT_EQ(r->entries(1).rank(), 2u);
  EXPECT_EQ(r->entries(2).rank(), 2u);
  // REGIONS (sub-regions of Quzhou) and INDUSTRIES.
  req.set_subject(v1::RANKING_SUBJECT_REGIONS);
  EXPECT_EQ(ledger_->Ranking(req).status().code(),
            absl::StatusCode::kInvalidArgument);  // K: enterprises only
  req.set_metric(v1::RANKING_METRIC_TOTAL);
  req.set_region("CN-ZJ-QZ");
  req.set_ascending(false);
  r = ledger_->Ranking(req);
  ASSERT_TRUE(r.ok());
  ASSERT_EQ(r->entries_size(), 2);
  EXPECT_EQ(r->entries(0).id(), "CN-ZJ-QZ-KC");
  EXPECT_EQ(r->entries(0).name(), "Kecheng");
  req.set_subject(v1::RANKING_SUBJECT_INDUSTRIES);
  req.clear_region();
  r = ledger_->Ranking(req);
  ASSERT_TRUE(r.ok());
  ASSERT_EQ(r->entries_size(), 2);
  EXPECT_EQ(r->entries(0).id(), "C31");
  EXPECT_NEAR(r->entries(0).value(), 1650 + 530.6, 1e-9);
  req.clear_period();
  EXPECT_EQ(ledger_->Ranking(req).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(LedgerTest, OldHoursFoldIntoDaysAndMonths) {
  LedgerOptions o = Options();
  o.hourly_days = 2;
  o.daily_days = 40;
  o.meter_hourly_days = 2;
  o.meter_daily_days = 40;
  Reopen(o);
  BuildCity();
  const absl::Time t0 = T(2024, 3, 1, 10);
  ASSERT_EQ(Account({Reading(kM2, 1000, t0, absl::Hours(1))}).accounted, 1u);
  ASSERT_EQ(
      Account({Reading(kM2, 1000, t0 + absl::Hours(24 * 5), absl::Hours(1))})
          .accounted,
      1u);
  // Hour of t0 folded into its day: hourly query refused, daily still right.
  Period hour = PeriodOf(t0, v1::GRANULARITY_HOUR, tz_);
  EXPECT_EQ(
      ledger_->Emissions(kM2, v1::GRANULARITY_HOUR, hour.start, hour.end, false)
          .status()
          .code(),
      absl::StatusCode::kFailedPrecondition);
  EXPECT_NEAR(Total(kM2, v1::GRANULARITY_DAY, t0).total_kg(), 550, 1e-9);
  EXPECT_NEAR(
      Total(kM2, v1::GRANULARITY_HOUR, t0 + absl::Hours(24 * 5)).total_kg(),
      550, 1e-9);
  // Far ahead: March folds into a month bucket.
  ASSERT_EQ(
      Account({Reading(kM2, 1000, T(2024, 6, 1), absl::Hours(1))}).accounted,
      1u);
  EXPECT_EQ(ledger_
                ->Emissions(kM2, v1::GRANULARITY_DAY, T(2024, 3, 1),
                            T(2024, 3, 2), false)
                .status()
                .code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_NEAR(Total(kM2, v1::GRANULARITY_MONTH, t0).total_kg(), 1100, 1e-9);
  EXPECT_NEAR(Total(kM2, v1::GRANULARITY_YEAR, t0).total_kg(), 1650, 1e-9);
  // A late reading for the folded month lands in the month bucket; reopen
  // agrees.
  ASSERT_EQ(Account({Reading(kM2, 1000, t0 + absl::Hours(48), absl::Hours(1))})
                .accounted,
            1u);
  EXPECT_NEAR(Total(kM2, v1::GRANULARITY_MONTH, t0).total_kg(), 1650, 1e-9);
  Reopen(o);
  EXPECT_NEAR(Total(kM2, v1::GRANULARITY_MONTH, t0).total_kg(), 1650, 1e-9);
  EXPECT_NEAR(RegionTotal("CN-ZJ-QZ-KC", v1::GRANULARITY_YEAR, t0).total_kg(),
              2200, 1e-9);
}

TEST_F(LedgerTest, QueryArgumentErrors) {
  BuildCity();
  EXPECT_EQ(ledger_
                ->Emissions("nope", v1::GRANULARITY_DAY, T(2024, 1, 1),
                            T(2024, 1, 2), false)
                .status()
                .code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(ledger_
                ->Emissions(kM1, v1::GRANULARITY_UNSPECIFIED, T(2024, 1, 1),
                            T(2024, 1, 2), false)
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ledger_
                ->Emissions(kM1, v1::GRANULARITY_HOUR, T(2020, 1, 1),
                            T(2024, 1, 2), false)
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);  // > 10,000 periods
  EXPECT_EQ(ledger_
                ->RegionEmissions("XX", v1::GRANULARITY_DAY, T(2024, 1, 1),
                                  T(2024, 1, 2), false)
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace cityos::carbon
