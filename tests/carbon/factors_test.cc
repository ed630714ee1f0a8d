// Tests of the emission factor registry (services/carbon/factors.h): seeding
// the shared reference CSV, selection by kind, key, tariff, validity, region
// and vintage, the issue's reference vectors, validation, persistence.
// This file replaces the global operator new/delete with malloc/free to count
// allocations; GCC 12 then flags every inlined new/delete pair it sees.
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"

#include "factors.h"

#include <atomic>
#include <cmath>
#include <fstream>
#include <functional>
#include <map>
#include <sstream>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/strings/match.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "cityos/clock.h"
#include "cityos/proto_time.h"
#include "regions.h"
#include "testutil.h"

#include <cstdlib>
#include <new>

// Counts heap allocations made by the current thread while enabled, to show
// that Select's hot path (SelectInto into a reused result) does not allocate.
namespace {
thread_local bool g_count_allocations = false;
thread_local int g_allocations = 0;
}  // namespace

void* operator new(std::size_t n) {
  if (g_count_allocations) ++g_allocations;
  if (void* p = std::malloc(n == 0 ? 1 : n)) return p;
  throw std::bad_alloc();
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }

#ifndef CARBON_REFERENCE_DIR
#error "CARBON_REFERENCE_DIR (config/carbon) must be defined by the build"
#endif

namespace cityos::carbon {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

const std::string kCsv = std::string(CARBON_REFERENCE_DIR) + "/emission-factors.csv";

class FactorsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(absl::LoadTimeZone("Asia/Shanghai", &tz_));
    // The reference file is part of the acceptance vectors: its absence is a
    // failure, not a reason to skip.
    std::ifstream probe(kCsv);
    ASSERT_TRUE(probe.good()) << "reference CSV missing: " << kCsv;
    Reopen();
    absl::StatusOr<RegionTree> tree = RegionTree::Create({
        {"CN", "China", "", "", "cn"},
        {"CN-ZJ", "Zhejiang", "CN", "CN-EAST", "zhejiang"},
        {"CN-ZJ-QZ", "Quzhou", "CN-ZJ", "", "quzhou"},
        {"CN-ZJ-QZ-KC", "Kecheng", "CN-ZJ-QZ", "", "kecheng"},
        {"JP", "Japan", "", "", "jp"},
    });
    ASSERT_TRUE(tree.ok()) << tree.status();
    tree_ = *std::move(tree);
  }

  void Reopen() {
    reg_.reset();
    absl::StatusOr<std::unique_ptr<FactorRegistry>> reg = FactorRegistry::Open(dir_.File("factors.db"), &clock_, tz_);
    ASSERT_TRUE(reg.ok()) << reg.status();
    reg_ = *std::move(reg);
  }

  int Seed() {
    absl::StatusOr<int> n = reg_->SeedCsv(kCsv, "spiffe://test/seed");
    EXPECT_TRUE(n.ok()) << n.status();
    return n.ok() ? *n : -1;
  }

  absl::Time Local(int y, int m, int d, int hh = 0) { return absl::FromCivil(absl::CivilHour(y, m, d, hh), tz_); }

  FactorQuery Grid(absl::Time at, std::vector<std::string> regions, std::string unit = "kWh") {
    return FactorQuery{v1::FACTOR_KIND_GRID, "electricity", "", at, std::move(regions), std::move(unit)};
  }

  static v1::EmissionFactor Factor(v1::FactorKind kind, std::string key, std::string region, std::string vintage,
                                   double value, std::string unit) {
    v1::EmissionFactor f;
    f.set_kind(kind);
    f.set_key(std::move(key));
    f.set_region(std::move(region));
    f.set_vintage(std::move(vintage));
    f.set_value(value);
    f.set_unit(std::move(unit));
    f.set_source("test source");
    return f;
  }

  static void SetValidity(v1::EmissionFactor& f, absl::Time start, absl::Time end) {
    if (start != absl::InfinitePast()) TimestampToProto(start, f.mutable_valid()->mutable_start());
    if (end != absl::InfiniteFuture()) TimestampToProto(end, f.mutable_valid()->mutable_end());
  }

  // Data rows of the reference CSV: (kind,key,region,vintage) -> source.
  static std::vector<std::pair<std::string, std::string>> CsvRows() {
    std::ifstream in(kCsv);
    std::vector<std::pair<std::string, std::string>> rows;
    std::string line;
    while (std::getline(in, line)) {
      absl::string_view t = absl::StripAsciiWhitespace(line);
      if (t.empty() || t[0] == '#') continue;
      std::vector<std::string> parts = absl::StrSplit(t, absl::MaxSplits(',', 6));
      if (parts.size() != 7 || parts[0] == "kind") continue;
      rows.emplace_back(absl::StrCat(parts[1], "/", parts[2], "/", parts[3]), parts[6]);
    }
    return rows;
  }

  testing::TempDir dir_;
  SimulatedClock clock_{absl::FromUnixSeconds(1764000000)};
  absl::TimeZone tz_;
  std::unique_ptr<FactorRegistry> reg_;
  RegionTree tree_;
};

TEST_F(FactorsTest, ReferenceVectorsFromTheIssue) {
  Seed();
  // A CN national-average reading: 32,000 kWh x 0.5306 = 16,979.2 kg.
  absl::StatusOr<SelectedFactor> cn = reg_->Select(Grid(Local(2024, 3, 1), {"CN", "IPCC"}));
  ASSERT_TRUE(cn.ok()) << cn.status();
  EXPECT_EQ(cn->ref.value(), 0.5306);
  EXPECT_EQ(cn->ref.unit(), "kgCO2/kWh");
  EXPECT_EQ(cn->ref.region(), "CN");
  EXPECT_EQ(cn->ref.vintage(), "2023");
  EXPECT_EQ(cn->ref.factor_id(), "grid/electricity/CN/2023");
  EXPECT_NEAR(32000 * cn->kg_per_unit, 16979.2, 1e-9);
  EXPECT_EQ(cn->valid_start, Local(2023, 1, 1));
  EXPECT_EQ(cn->valid_end, absl::InfiniteFuture());

  // A Kecheng meter: CN-EAST comes before CN -> 32,000 x 0.5500 = 17,600.0 kg.
  const std::vector<std::string> kc = tree_.FactorRegions("CN-ZJ-QZ-KC");
  ASSERT_THAT(kc, ElementsAre("CN-ZJ-QZ-KC", "CN-ZJ-QZ", "CN-ZJ", "CN-EAST", "CN", "IPCC"));
  absl::StatusOr<SelectedFactor> east = reg_->Select(Grid(Local(2024, 3, 1), kc));
  ASSERT_TRUE(east.ok()) << east.status();
  EXPECT_EQ(east->ref.region(), "CN-EAST");
  EXPECT_EQ(east->ref.value(), 0.55);
  EXPECT_NEAR(32000 * east->kg_per_unit, 17600.0, 1e-9);

  // 32 MWh gives the same figures.
  absl::StatusOr<SelectedFactor> cn_mwh = reg_->Select(Grid(Local(2024, 3, 1), {"CN", "IPCC"}, "MWh"));
  ASSERT_TRUE(cn_mwh.ok()) << cn_mwh.status();
  EXPECT_EQ(cn_mwh->ref.factor_id(), cn->ref.factor_id());
  EXPECT_NEAR(32 * cn_mwh->kg_per_unit, 16979.2, 1e-9);
  absl::StatusOr<SelectedFactor> east_mwh = reg_->Select(Grid(Local(2024, 3, 1), kc, "MWh"));
  ASSERT_TRUE(east_mwh.ok());
  EXPECT_NEAR(32 * east_mwh->kg_per_unit, 17600.0, 1e-9);
}

TEST_F(FactorsTest, VintageByValidity) {
  Seed();
  // 2022 reading: vintage 2023 is not valid yet -> CN 2022.
  absl::StatusOr<SelectedFactor> y2022 = reg_->Select(Grid(Local(2022, 7, 1), {"CN", "IPCC"}));
  ASSERT_TRUE(y2022.ok()) << y2022.status();
  EXPECT_EQ(y2022->ref.vintage(), "2022");
  EXPECT_EQ(y2022->ref.value(), 0.5366);
  // The last instant of 2022 in Shanghai is still 2022; the first of 2023 is 2023.
  EXPECT_EQ(reg_->Select(Grid(Local(2023, 1, 1) - absl::Nanoseconds(1), {"CN"}))->ref.vintage(), "2022");
  EXPECT_EQ(reg_->Select(Grid(Local(2023, 1, 1), {"CN"}))->ref.vintage(), "2023");
  // 2024 reading: both valid, the later vintage wins.
  absl::StatusOr<SelectedFactor> y2024 = reg_->Select(Grid(Local(2024, 7, 1), {"CN", "IPCC"}));
  ASSERT_TRUE(y2024.ok());
  EXPECT_EQ(y2024->ref.vintage(), "2023");
  EXPECT_EQ(y2024->ref.value(), 0.5306);
  // A 2022 Kecheng reading: CN-EAST has only 2023, so the first region with a
  // candidate is CN.
  absl::StatusOr<SelectedFactor> kc2022 = reg_->Select(Grid(Local(2022, 7, 1), tree_.FactorRegions("CN-ZJ-QZ-KC")));
  ASSERT_TRUE(kc2022.ok());
  EXPECT_EQ(kc2022->ref.region(), "CN");
  EXPECT_EQ(kc2022->ref.value(), 0.5366);
}

TEST_F(FactorsTest, JapaneseFiscalYears) {
  Seed();
  const std::vector<std::string> jp = tree_.FactorRegions("JP");
  absl::StatusOr<SelectedFactor> before = reg_->Select(Grid(Local(2023, 3, 31, 23), jp));
  ASSERT_TRUE(before.ok()) << before.status();
  EXPECT_EQ(before->ref.vintage(), "FY2022");
  EXPECT_EQ(before->ref.value(), 0.437);
  absl::StatusOr<SelectedFactor> after = reg_->Select(Grid(Local(2023, 4, 1), jp));
  ASSERT_TRUE(after.ok());
  EXPECT_EQ(after->ref.vintage(), "FY2023");
  EXPECT_EQ(after->ref.value(), 0.421);
  EXPECT_EQ(after->valid_start, Local(2023, 4, 1));
  // Before FY2022 started there is no Japanese factor at all.
  absl::StatusOr<SelectedFactor> none = reg_->Select(Grid(Local(2022, 3, 31), jp));
  EXPECT_EQ(none.status().code(), absl::StatusCode::kNotFound);
}

TEST_F(FactorsTest, ExplicitValidityEndIsRespected) {
  Seed();
  v1::EmissionFactor pilot = Factor(v1::FACTOR_KIND_GRID, "electricity", "CN-ZJ-QZ", "2025-pilot", 0.5, "kgCO2/kWh");
  SetValidity(pilot, Local(2025, 1, 1), Local(2025, 7, 1));
  absl::StatusOr<v1::EmissionFactor> added = reg_->Add(pilot, "spiffe://test/admin");
  ASSERT_TRUE(added.ok()) << added.status();
  const std::vector<std::string> kc = tree_.FactorRegions("CN-ZJ-QZ-KC");
  absl::StatusOr<SelectedFactor> in = reg_->Select(Grid(Local(2025, 6, 30, 23), kc));
  ASSERT_TRUE(in.ok());
  EXPECT_EQ(in->ref.factor_id(), added->factor_id());
  EXPECT_EQ(in->valid_end, Local(2025, 7, 1));
  // At and after its end it is not chosen: back to CN-EAST 2023.
  absl::StatusOr<SelectedFactor> out = reg_->Select(Grid(Local(2025, 7, 1), kc));
  ASSERT_TRUE(out.ok());
  EXPECT_EQ(out->ref.region(), "CN-EAST");
  EXPECT_EQ(out->ref.vintage(), "2023");
  absl::StatusOr<SelectedFactor> before = reg_->Select(Grid(Local(2024, 12, 31, 23), kc));
  EXPECT_EQ(before->ref.region(), "CN-EAST");
}

TEST_F(FactorsTest, SameStartLatestAddedWins) {
  Seed();
  v1::EmissionFactor rev = Factor(v1::FACTOR_KIND_GRID, "electricity", "CN", "2023-rev", 0.5401, "kgCO2/kWh");
  SetValidity(rev, Local(2023, 1, 1), absl::InfiniteFuture());
  ASSERT_TRUE(reg_->Add(rev, "admin").ok());
  absl::StatusOr<SelectedFactor> s = reg_->Select(Grid(Local(2024, 1, 1), {"CN"}));
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(s->ref.vintage(), "2023-rev");
}

TEST_F(FactorsTest, SupplierTariffSelection) {
  Seed();
  v1::EmissionFactor green = Factor(v1::FACTOR_KIND_SUPPLIER, "electricity", "CN-ZJ", "2024", 0.1, "kgCO2/kWh");
  green.set_tariff_id("qz-green-1");
  SetValidity(green, Local(2024, 1, 1), absl::InfiniteFuture());
  absl::StatusOr<v1::EmissionFactor> g = reg_->Add(green, "admin");
  ASSERT_TRUE(g.ok()) << g.status();
  EXPECT_EQ(g->energy_kind(), v1::ENERGY_KIND_ELECTRICITY);  // filled from the key
  v1::EmissionFactor other = green;
  other.set_tariff_id("qz-green-2");
  other.set_value(0.2);
  ASSERT_TRUE(reg_->Add(other, "admin").ok());

  FactorQuery q{v1::FACTOR_KIND_SUPPLIER, "electricity", "qz-green-1", Local(2024, 6, 1),
                tree_.FactorRegions("CN-ZJ-QZ-KC"), "kWh"};
  absl::StatusOr<SelectedFactor> s = reg_->Select(q);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->ref.factor_id(), g->factor_id());
  EXPECT_NEAR(32000 * s->kg_per_unit, 3200.0, 1e-9);
  q.tariff_id = "qz-green-2";
  EXPECT_EQ(reg_->Select(q)->ref.value(), 0.2);
  // Unknown tariff, or before the tariff's validity: NOT_FOUND naming the tariff.
  q.tariff_id = "qz-brown";
  absl::StatusOr<SelectedFactor> none = reg_->Select(q);
  ASSERT_EQ(none.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(none.status().message(), HasSubstr("tariff 'qz-brown'"));
  q.tariff_id = "qz-green-1";
  q.at = Local(2023, 12, 31);
  EXPECT_EQ(reg_->Select(q).status().code(), absl::StatusCode::kNotFound);
  // Grid selection ignores supplier factors.
  EXPECT_EQ(reg_->Select(Grid(Local(2024, 6, 1), tree_.FactorRegions("CN-ZJ-QZ-KC")))->ref.region(), "CN-EAST");
}

TEST_F(FactorsTest, PerTerajouleFactorAppliesToGigajoules) {
  Seed();
  const std::vector<std::string> kc = tree_.FactorRegions("CN-ZJ-QZ-KC");
  // Diesel in GJ: the CN guideline factor is per kg and does not apply; the
  // IPCC default of 74,100 kgCO2/TJ does, x0.001 per GJ.
  FactorQuery q{v1::FACTOR_KIND_FUEL, "diesel", "", Local(2024, 1, 1), kc, "GJ"};
  absl::StatusOr<SelectedFactor> gj = reg_->Select(q);
  ASSERT_TRUE(gj.ok()) << gj.status();
  EXPECT_EQ(gj->ref.region(), "IPCC");
  EXPECT_EQ(gj->ref.unit(), "kgCO2/TJ");
  EXPECT_EQ(gj->ref.value(), 74100);
  EXPECT_NEAR(100 * gj->kg_per_unit, 7410.0, 1e-9);
  // Diesel in kg and t: the CN guideline factor.
  q.activity_unit = "kg";
  absl::StatusOr<SelectedFactor> kg = reg_->Select(q);
  ASSERT_TRUE(kg.ok());
  EXPECT_EQ(kg->ref.region(), "CN");
  EXPECT_NEAR(kg->kg_per_unit, 3.0959, 1e-12);
  q.activity_unit = "t";
  EXPECT_NEAR(reg_->Select(q)->kg_per_unit, 3095.9, 1e-9);
  // A heat factor in kgCO2/TJ for GJ heat activity.
  ASSERT_TRUE(reg_->Add(Factor(v1::FACTOR_KIND_FUEL, "heat", "CN", "guideline", 110000, "kgCO2/TJ"), "admin").ok());
  FactorQuery heat{v1::FACTOR_KIND_FUEL, "heat", "", Local(2024, 1, 1), kc, "GJ"};
  absl::StatusOr<SelectedFactor> h = reg_->Select(heat);
  ASSERT_TRUE(h.ok()) << h.status();
  EXPECT_NEAR(h->kg_per_unit, 110.0, 1e-12);
}

TEST_F(FactorsTest, NotFoundNamesKeyRegionsAndTime) {
  Seed();
  absl::StatusOr<SelectedFactor> s = reg_->Select(Grid(Local(2021, 6, 1), {"CN", "IPCC"}));
  ASSERT_EQ(s.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(s.status().message(), HasSubstr("'electricity'"));
  EXPECT_THAT(s.status().message(), HasSubstr("[CN, IPCC]"));
  EXPECT_THAT(s.status().message(), HasSubstr("2021-05-31T16:00:00Z"));
  EXPECT_THAT(s.status().message(), HasSubstr("grid"));
  FactorQuery q{v1::FACTOR_KIND_PROCESS, "clinker", "", Local(2024, 1, 1), {"CN"}, "t"};
  absl::StatusOr<SelectedFactor> p = reg_->Select(q);
  ASSERT_EQ(p.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(p.status().message(), HasSubstr("'clinker'"));
  // A factor whose unit does not apply to the activity is no candidate.
  absl::StatusOr<SelectedFactor> wh = reg_->Select(Grid(Local(2024, 1, 1), {"CN"}, "GJ"));
  ASSERT_EQ(wh.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(wh.status().message(), HasSubstr("'GJ'"));
  FactorQuery unspecified = Grid(Local(2024, 1, 1), {"CN"});
  unspecified.kind = v1::FACTOR_KIND_UNSPECIFIED;
  EXPECT_EQ(reg_->Select(unspecified).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(FactorsTest, SeedingKeepsSourcesAndIsIdempotent) {
  const std::vector<std::pair<std::string, std::string>> rows = CsvRows();
  ASSERT_GE(rows.size(), 17u);
  const uint64_t gen0 = reg_->generation();
  EXPECT_EQ(Seed(), static_cast<int>(rows.size()));
  EXPECT_EQ(reg_->size(), rows.size());
  const uint64_t gen1 = reg_->generation();
  EXPECT_GT(gen1, gen0);
  std::map<std::string, v1::EmissionFactor> seeded;
  for (const v1::EmissionFactor& x : reg_->List({})) {
    seeded[absl::StrCat(x.key(), "/", x.region(), "/", x.vintage())] = x;
  }
  for (const auto& [id, source] : rows) {
    auto it = seeded.find(id);
    ASSERT_NE(it, seeded.end()) << id;
    absl::StatusOr<v1::EmissionFactor> f = reg_->Get(it->second.factor_id());
    ASSERT_TRUE(f.ok()) << f.status();
    EXPECT_EQ(f->source(), source) << id;
    EXPECT_FALSE(f->source().empty());
    EXPECT_EQ(f->added_by(), "spiffe://test/seed");
    EXPECT_EQ(*TimestampFromProto(f->add_time(), "add_time"), clock_.Now());
  }
  absl::StatusOr<v1::EmissionFactor> gasoline = reg_->Get("fuel/gasoline/CN/guideline");
  ASSERT_TRUE(gasoline.ok());
  EXPECT_EQ(gasoline->energy_kind(), v1::ENERGY_KIND_GASOLINE);
  EXPECT_EQ(*TimestampFromProto(gasoline->valid().start(), "start"), absl::UnixEpoch());
  EXPECT_FALSE(gasoline->valid().has_end());
  absl::StatusOr<v1::EmissionFactor> coal = reg_->Get("fuel/raw_coal/CN/guideline");
  ASSERT_TRUE(coal.ok());
  EXPECT_EQ(coal->energy_kind(), v1::ENERGY_KIND_COAL);
  // Seeding again adds nothing and changes nothing.
  EXPECT_EQ(Seed(), 0);
  EXPECT_EQ(reg_->size(), rows.size());
  EXPECT_EQ(reg_->generation(), gen1);
  // Nor after reopening.
  Reopen();
  EXPECT_EQ(Seed(), 0);
  EXPECT_EQ(reg_->size(), rows.size());
}

TEST_F(FactorsTest, SeedingHandlesCommasHeaderAndBom) {
  const std::string path = dir_.File("extra.csv");
  testing::WriteFile(path,
                     "\xEF\xBB\xBF# extra factors\r\n"
                     "kind,key,region,vintage,value,unit,source\r\n"
                     "\r\n"
                     "process,clinker,CN,2024,525.0,kgCO2/t,Cement method, clinker calcination (CaO 65%, MgO 1.5%)\r\n"
                     "FUEL, lpg ,CN-ZJ,FY2024,3.0,kgCO2/kg,  provincial, with spaces  \n");
  absl::StatusOr<int> n = reg_->SeedCsv(path, "seed");
  ASSERT_TRUE(n.ok()) << n.status();
  EXPECT_EQ(*n, 2);
  absl::StatusOr<v1::EmissionFactor> clinker = reg_->Get("process/clinker/CN/2024");
  ASSERT_TRUE(clinker.ok()) << clinker.status();
  EXPECT_EQ(clinker->source(), "Cement method, clinker calcination (CaO 65%, MgO 1.5%)");
  EXPECT_EQ(clinker->energy_kind(), v1::ENERGY_KIND_UNSPECIFIED);
  EXPECT_EQ(*TimestampFromProto(clinker->valid().start(), "start"), Local(2024, 1, 1));
  absl::StatusOr<v1::EmissionFactor> lpg = reg_->Get("fuel/lpg/CN-ZJ/FY2024");
  ASSERT_TRUE(lpg.ok()) << lpg.status();
  EXPECT_EQ(lpg->key(), "lpg");
  EXPECT_EQ(lpg->source(), "provincial, with spaces");
  EXPECT_EQ(*TimestampFromProto(lpg->valid().start(), "start"), Local(2024, 4, 1));
  // Process factor selection in t and kg.
  FactorQuery q{v1::FACTOR_KIND_PROCESS, "clinker", "", Local(2024, 5, 1), tree_.FactorRegions("CN-ZJ-QZ-KC"), "t"};
  absl::StatusOr<SelectedFactor> s = reg_->Select(q);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_NEAR(1000 * s->kg_per_unit, 525000.0, 1e-9);
}

TEST_F(FactorsTest, BadCsvLineNamesFileAndLine) {
  struct Case {
    std::string bad_line;
    std::string want;
  };
  const Case cases[] = {
      {"grid,electricity,CN,2023,abc,kgCO2/kWh,src", "value 'abc'"},
      {"grid,electricity,CN,2023,0,kgCO2/kWh,src", "not positive"},
      {"grid,electricity,CN,2023,0.5,kgCO2/Wh,src", "'kgCO2/Wh'"},
      {"grid,electricity,CN,2023,0.5,kgCO2/kWh,", "source"},
      {"grid,electricity,CN,2023,0.5", "want 7 fields"},
      {"nuclear,electricity,CN,2023,0.5,kgCO2/kWh,src", "'nuclear'"},
      {"fuel,clinker,CN,2023,0.5,kgCO2/t,src", "'clinker'"},
      {"grid,electricity,,2023,0.5,kgCO2/kWh,src", "region ''"},
  };
  for (const Case& c : cases) {
    const std::string path = dir_.File("bad.csv");
    testing::WriteFile(path, "# kind,key,region,vintage,value,unit,source\n"
                             "grid,electricity,CN,2023,0.5306,kgCO2/kWh,ok row\n"
                             "\n" +
                                 c.bad_line + "\n");
    absl::StatusOr<int> n = reg_->SeedCsv(path, "seed");
    ASSERT_FALSE(n.ok()) << c.bad_line;
    EXPECT_EQ(n.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(n.status().message(), HasSubstr(path + ":4:")) << n.status();
    EXPECT_THAT(n.status().message(), HasSubstr(c.want)) << n.status();
    EXPECT_EQ(reg_->size(), 0u) << "nothing is added when a row is bad";
  }
  absl::StatusOr<int> missing = reg_->SeedCsv(dir_.File("nope.csv"), "seed");
  ASSERT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(missing.status().message(), HasSubstr("nope.csv"));
}

TEST_F(FactorsTest, AddValidation) {
  struct Case {
    std::function<void(v1::EmissionFactor&)> edit;
    std::string want;
  };
  const Case cases[] = {
      {[](v1::EmissionFactor& f) { f.set_unit("kgCO2/Wh"); }, "'kgCO2/Wh'"},
      {[](v1::EmissionFactor& f) { f.set_unit("kg/kWh"); }, "'kg/kWh'"},
      {[](v1::EmissionFactor& f) { f.set_value(0); }, "value 0 is not positive"},
      {[](v1::EmissionFactor& f) { f.set_value(-0.5); }, "value -0.5 is not positive"},
      {[](v1::EmissionFactor& f) { f.set_value(std::nan("")); }, "not positive"},
      {[](v1::EmissionFactor& f) { f.set_source(""); }, "source"},
      {[](v1::EmissionFactor& f) { f.set_source("   "); }, "source"},
      {[](v1::EmissionFactor& f) { f.set_kind(v1::FACTOR_KIND_UNSPECIFIED); }, "kind"},
      {[](v1::EmissionFactor& f) { f.set_key(""); }, "key"},
      {[](v1::EmissionFactor& f) { f.set_region(""); }, "region"},
      {[](v1::EmissionFactor& f) { f.set_vintage(""); }, "vintage"},
      {[](v1::EmissionFactor& f) { f.set_key("clinker"); }, "'clinker'"},
      {[](v1::EmissionFactor& f) { f.set_energy_kind(v1::ENERGY_KIND_HEAT); }, "ENERGY_KIND_HEAT"},
      {[](v1::EmissionFactor& f) { f.set_tariff_id("t1"); }, "tariff_id 't1'"},
      {[](v1::EmissionFactor& f) { f.set_kind(v1::FACTOR_KIND_SUPPLIER); }, "no tariff_id"},
      {[](v1::EmissionFactor& f) {
         TimestampToProto(absl::FromUnixSeconds(2000), f.mutable_valid()->mutable_start());
         TimestampToProto(absl::FromUnixSeconds(1000), f.mutable_valid()->mutable_end());
       },
       "not after its start"},
  };
  for (const Case& c : cases) {
    v1::EmissionFactor f = Factor(v1::FACTOR_KIND_GRID, "electricity", "CN-ZJ", "2024", 0.5, "kgCO2/kWh");
    c.edit(f);
    absl::StatusOr<v1::EmissionFactor> r = reg_->Add(f, "admin");
    ASSERT_FALSE(r.ok()) << c.want;
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << r.status();
    EXPECT_THAT(r.status().message(), HasSubstr(c.want));
  }
  EXPECT_EQ(reg_->size(), 0u);
  EXPECT_EQ(reg_->generation(), 1u);  // only the initial load
}

TEST_F(FactorsTest, AlreadyExistsOnOverlappingValidity) {
  Seed();
  const uint64_t gen = reg_->generation();
  // CN 2023 again, open-ended: overlaps the seeded one.
  v1::EmissionFactor dup = Factor(v1::FACTOR_KIND_GRID, "electricity", "CN", "2023", 0.53, "kgCO2/kWh");
  SetValidity(dup, Local(2024, 1, 1), absl::InfiniteFuture());
  absl::StatusOr<v1::EmissionFactor> r = reg_->Add(dup, "admin");
  ASSERT_EQ(r.status().code(), absl::StatusCode::kAlreadyExists);
  EXPECT_THAT(r.status().message(), HasSubstr("grid/electricity/CN/2023"));
  EXPECT_THAT(r.status().message(), HasSubstr("overlapping"));
  // Same identity, validity entirely before the seeded one: fine, distinct id.
  v1::EmissionFactor early = dup;
  early.clear_valid();
  SetValidity(early, Local(2020, 1, 1), Local(2023, 1, 1));
  absl::StatusOr<v1::EmissionFactor> e = reg_->Add(early, "admin");
  ASSERT_TRUE(e.ok()) << e.status();
  EXPECT_EQ(e->factor_id(), "grid/electricity/CN/2023~2");
  EXPECT_EQ(reg_->generation(), gen + 1);
  // Touching intervals ([2020, 2023) and [2023, ...)) do not overlap; one that
  // reaches into 2023 does.
  v1::EmissionFactor reach = dup;
  reach.clear_valid();
  SetValidity(reach, Local(2019, 1, 1), Local(2020, 1, 2));
  EXPECT_EQ(reg_->Add(reach, "admin").status().code(), absl::StatusCode::kAlreadyExists);
  // Another tariff, region or vintage is another factor.
  v1::EmissionFactor other = dup;
  other.set_vintage("2023b");
  EXPECT_TRUE(reg_->Add(other, "admin").ok());
  v1::EmissionFactor s1 = Factor(v1::FACTOR_KIND_SUPPLIER, "electricity", "CN", "2024", 0.1, "kgCO2/kWh");
  s1.set_tariff_id("a");
  EXPECT_TRUE(reg_->Add(s1, "admin").ok());
  s1.set_tariff_id("b");
  EXPECT_TRUE(reg_->Add(s1, "admin").ok());
  EXPECT_EQ(reg_->Add(s1, "admin").status().code(), absl::StatusCode::kAlreadyExists);
}

TEST_F(FactorsTest, PersistsAcrossReopen) {
  Seed();
  v1::EmissionFactor pilot = Factor(v1::FACTOR_KIND_GRID, "electricity", "CN-ZJ-QZ", "2025-pilot", 0.5, "kgCO2/kWh");
  SetValidity(pilot, Local(2025, 1, 1), Local(2025, 7, 1));
  clock_.Advance(absl::Hours(1));
  absl::StatusOr<v1::EmissionFactor> added = reg_->Add(pilot, "spiffe://test/admin");
  ASSERT_TRUE(added.ok()) << added.status();
  const std::vector<v1::EmissionFactor> before = reg_->List({});
  const std::vector<std::string> kc = tree_.FactorRegions("CN-ZJ-QZ-KC");
  const SelectedFactor sel_before = *reg_->Select(Grid(Local(2025, 3, 1), kc));

  Reopen();
  const std::vector<v1::EmissionFactor> after = reg_->List({});
  ASSERT_EQ(after.size(), before.size());
  for (size_t i = 0; i < after.size(); ++i) {
    EXPECT_EQ(after[i].SerializeAsString(), before[i].SerializeAsString()) << after[i].factor_id();
  }
  absl::StatusOr<v1::EmissionFactor> got = reg_->Get(added->factor_id());
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(got->added_by(), "spiffe://test/admin");
  EXPECT_EQ(*TimestampFromProto(got->add_time(), "add_time"), clock_.Now());
  const SelectedFactor sel_after = *reg_->Select(Grid(Local(2025, 3, 1), kc));
  EXPECT_EQ(sel_after.ref.factor_id(), sel_before.ref.factor_id());
  EXPECT_EQ(sel_after.valid_end, Local(2025, 7, 1));
  // Add order survives: a same-start factor added after the reopen still wins
  // over earlier ones, and ids stay unique.
  EXPECT_EQ(reg_->Add(pilot, "admin").status().code(), absl::StatusCode::kAlreadyExists);
  absl::StatusOr<v1::EmissionFactor> missing = reg_->Get("grid/electricity/XX/1999");
  ASSERT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(missing.status().message(), HasSubstr("grid/electricity/XX/1999"));
}

TEST_F(FactorsTest, ListFilters) {
  Seed();
  v1::ListEmissionFactorsRequest diesel;
  diesel.set_kind(v1::FACTOR_KIND_FUEL);
  diesel.set_key("diesel");
  std::vector<v1::EmissionFactor> d = reg_->List(diesel);
  ASSERT_EQ(d.size(), 2u);
  EXPECT_EQ(d[0].region(), "CN");
  EXPECT_EQ(d[1].region(), "IPCC");

  v1::ListEmissionFactorsRequest cn2022;
  cn2022.set_key("electricity");
  cn2022.set_region("CN");
  TimestampToProto(Local(2022, 6, 1), cn2022.mutable_valid_at());
  std::vector<v1::EmissionFactor> c = reg_->List(cn2022);
  ASSERT_EQ(c.size(), 1u);
  EXPECT_EQ(c[0].vintage(), "2022");
  TimestampToProto(Local(2024, 6, 1), cn2022.mutable_valid_at());
  EXPECT_EQ(reg_->List(cn2022).size(), 2u);

  v1::ListEmissionFactorsRequest grid;
  grid.set_kind(v1::FACTOR_KIND_GRID);
  std::vector<v1::EmissionFactor> g = reg_->List(grid);
  EXPECT_EQ(g.size(), 9u);
  for (size_t i = 1; i < g.size(); ++i) {
    EXPECT_LE(std::make_tuple(g[i - 1].key(), g[i - 1].region(), g[i - 1].vintage()),
              std::make_tuple(g[i].key(), g[i].region(), g[i].vintage()));
  }
}

TEST_F(FactorsTest, SelectAmongAllowedFactors) {
  Seed();
  FactorQuery q = Grid(Local(2024, 6, 1), {"CN", "IPCC"});
  absl::StatusOr<SelectedFactor> old = reg_->SelectAmong(q, {"grid/electricity/CN/2022"});
  ASSERT_TRUE(old.ok()) << old.status();
  EXPECT_EQ(old->ref.vintage(), "2022");
  // None of the allowed factors matches: plain selection.
  absl::StatusOr<SelectedFactor> fallback = reg_->SelectAmong(q, {"grid/electricity/JP/FY2023", "nope"});
  ASSERT_TRUE(fallback.ok());
  EXPECT_EQ(fallback->ref.vintage(), "2023");
  EXPECT_EQ(reg_->SelectAmong(q, {})->ref.vintage(), "2023");
  // An allowed factor not yet valid is not applied.
  absl::StatusOr<SelectedFactor> early = reg_->SelectAmong(Grid(Local(2022, 6, 1), {"CN"}), {"grid/electricity/CN/2023"});
  ASSERT_TRUE(early.ok());
  EXPECT_EQ(early->ref.vintage(), "2022");
}

TEST_F(FactorsTest, SelectIntoReusesTheResult) {
  Seed();
  SelectedFactor out;
  ASSERT_TRUE(reg_->SelectInto(Grid(Local(2024, 6, 1), tree_.FactorRegions("CN-ZJ-QZ-KC")), &out).ok());
  EXPECT_EQ(out.ref.region(), "CN-EAST");
  ASSERT_TRUE(reg_->SelectInto(Grid(Local(2022, 6, 1), {"CN"}), &out).ok());
  EXPECT_EQ(out.ref.region(), "CN");
  EXPECT_EQ(out.ref.vintage(), "2022");
  EXPECT_EQ(out.kg_per_unit, 0.5366);
  // On error the previous result is kept.
  EXPECT_FALSE(reg_->SelectInto(Grid(Local(2021, 6, 1), {"CN"}), &out).ok());
  EXPECT_EQ(out.ref.vintage(), "2022");
}

TEST_F(FactorsTest, SelectIntoDoesNotAllocate) {
  Seed();
  const FactorQuery q = Grid(Local(2024, 6, 1), tree_.FactorRegions("CN-ZJ-QZ-KC"));
  SelectedFactor out;
  ASSERT_TRUE(reg_->SelectInto(q, &out).ok());  // warms the result's strings
  g_allocations = 0;
  g_count_allocations = true;
  bool ok = true;
  for (int i = 0; i < 1000; ++i) ok = reg_->SelectInto(q, &out).ok() && ok;
  g_count_allocations = false;
  EXPECT_TRUE(ok);
  EXPECT_EQ(g_allocations, 0);
  EXPECT_EQ(out.ref.region(), "CN-EAST");
  // The control: Select returns a fresh result, which does allocate.
  g_allocations = 0;
  g_count_allocations = true;
  absl::StatusOr<SelectedFactor> fresh = reg_->Select(q);
  g_count_allocations = false;
  ASSERT_TRUE(fresh.ok());
  EXPECT_GT(g_allocations, 0);
}

TEST_F(FactorsTest, ConcurrentSelectAndAdd) {
  Seed();
  const std::vector<std::string> kc = tree_.FactorRegions("CN-ZJ-QZ-KC");
  std::atomic<int> failures{0};
  std::vector<std::thread> readers;
  for (int t = 0; t < 3; ++t) {
    readers.emplace_back([&] {
      FactorQuery q = Grid(Local(2024, 6, 1), kc);
      SelectedFactor out;
      for (int i = 0; i < 20000; ++i) {
        if (!reg_->SelectInto(q, &out).ok() || (out.ref.region() != "CN-EAST" && out.ref.region() != "CN-ZJ")) {
          ++failures;
        }
      }
    });
  }
  for (int i = 0; i < 50; ++i) {
    v1::EmissionFactor f = Factor(v1::FACTOR_KIND_GRID, "electricity", "CN-ZJ", absl::StrCat("v", i), 0.5, "kgCO2/kWh");
    SetValidity(f, Local(2030 + i, 1, 1), Local(2031 + i, 1, 1));
    ASSERT_TRUE(reg_->Add(f, "admin").ok());
  }
  for (std::thread& t : readers) t.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_EQ(reg_->Select(Grid(Local(2035, 6, 1), kc))->ref.vintage(), "v5");
}

}  // namespace
}  // namespace cityos::carbon
