// Google Benchmark for the carbon ledger's ingest path
// (services/carbon/ledger.h): one thread calling AccountReadings with batches
// of 1000 15-minute interval readings over 10,000 electricity meters
// (100 enterprises x 5 sites x 20 meters in four Quzhou districts), with the
// SQLite writer on. Target (issue 7): >= 1M readings/s accounted in-process.
//
//   BM_AccountReadings/1   records returned as protos (what the service uses)
//   BM_AccountReadings/0   records not returned (return_records = false)
//   BM_AccountReadingsSustained/{1,0}  100 batches + Flush per iteration,
//                                real time: the rate sustained with
//                                persistence (bounded by the SQLite writer)
//
//   BM_OpenReplay                Open() of a ledger.db with 1M records
//
//   ninja -C build carbon_bench && build/tests/bench/carbon_bench
#include <benchmark/benchmark.h>

#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "cityos/clock.h"
#include "cityos/proto_time.h"
#include "factors.h"
#include "ledger.h"
#include "periods.h"
#include "regions.h"

#ifndef CITYOS_CARBON_FACTORS_CSV
#error "CITYOS_CARBON_FACTORS_CSV must name the reference emission factor CSV"
#endif

namespace cityos::carbon {
namespace {

constexpr int kEnterprises = 100;
constexpr int kSites = 5;
constexpr int kMetersPerSite = 20;
constexpr int kMeters = kEnterprises * kSites * kMetersPerSite;  // 10,000
constexpr int kBatch = 1000;

const char* const kDistricts[] = {"CN-ZJ-QZ-KC", "CN-ZJ-QZ-QJ", "CN-ZJ-QZ-JS",
                                  "CN-ZJ-QZ-LY"};

// A ledger in a fresh temporary directory with the city's accounts.
class City {
 public:
  explicit City(bool return_records) {
    char tmpl[] = "/tmp/carbon_bench.XXXXXX";
    dir_ = mkdtemp(tmpl);
    absl::LoadTimeZone("Asia/Shanghai", &tz_);
    tree_ = *RegionTree::Create(
        {{"CN", "China", "", "", "cn"},
         {"CN-ZJ", "Zhejiang", "CN", "CN-EAST", "zhejiang"},
         {"CN-ZJ-QZ", "Quzhou", "CN-ZJ", "", "quzhou"},
         {"CN-ZJ-QZ-KC", "Kecheng", "CN-ZJ-QZ", "", "kecheng"},
         {"CN-ZJ-QZ-QJ", "Qujiang", "CN-ZJ-QZ", "", "qujiang"},
         {"CN-ZJ-QZ-JS", "Jiangshan", "CN-ZJ-QZ", "", "jiangshan"},
         {"CN-ZJ-QZ-LY", "Longyou", "CN-ZJ-QZ", "", "longyou"}});
    factors_ = *FactorRegistry::Open(dir_ + "/factors.db", &clock_, tz_);
    if (!factors_->SeedCsv(CITYOS_CARBON_FACTORS_CSV, "bench").ok())
      std::abort();
    options_.tz = tz_;
    options_.return_records = return_records;
    ledger_ =
        *CarbonLedger::Open(dir_, &tree_, factors_.get(), &clock_, options_);
    for (int e = 0; e < kEnterprises; ++e) {
      v1::Account ent;
      ent.set_account_id(absl::StrCat("ent-", e));
      ent.set_kind(v1::ACCOUNT_KIND_ENTERPRISE);
      ent.set_region(kDistricts[e % 4]);
      ent.set_industry_code(e % 2 ? "C3110" : "C3011");
      if (!ledger_->CreateAccount(ent).ok()) std::abort();
      for (int s = 0; s < kSites; ++s) {
        v1::Account site;
        site.set_account_id(absl::StrCat("ent-", e, "/site-", s));
        site.set_kind(v1::ACCOUNT_KIND_SITE);
        site.set_parent_id(ent.account_id());
        if (!ledger_->CreateAccount(site).ok()) std::abort();
        for (int m = 0; m < kMetersPerSite; ++m) {
          v1::Account meter;
          meter.set_account_id(absl::StrCat(site.account_id(), "/m-", m));
          meter.set_kind(v1::ACCOUNT_KIND_METER);
          meter.set_parent_id(site.account_id());
          meter.mutable_meter()->set_energy_kind(v1::ENERGY_KIND_ELECTRICITY);
          meter.mutable_meter()->set_unit("kWh");
          meter.mutable_meter()->set_max_per_hour(5000);
          if (!ledger_->CreateAccount(meter).ok()) std::abort();
          meter_ids_.push_back(meter.account_id());
        }
      }
    }
    batch_.resize(kBatch);
    for (int i = 0; i < kBatch; ++i) {
      v1::MeterReading& r = batch_[i].reading;
      r.set_energy_kind(v1::ENERGY_KIND_ELECTRICITY);
      r.set_reading_kind(v1::READING_KIND_INTERVAL);
      r.set_unit("kWh");
    }
  }
  ~City() {
    ledger_.reset();
    factors_.reset();
    std::string cmd = "rm -rf '" + dir_ + "'";
    if (std::system(cmd.c_str()) != 0)
      std::fprintf(stderr, "could not remove %s\n", dir_.c_str());
  }

  // Fills the next batch: meters in turn, each slot of 15 minutes once.
  void NextBatch() {
    for (int i = 0; i < kBatch; ++i) {
      const int64_t n = next_++;
      const int meter = static_cast<int>(n % kMeters);
      const int64_t slot = n / kMeters;
      ReadingInput& in = batch_[i];
      v1::MeterReading& r = in.reading;
      r.set_meter_id(meter_ids_[meter]);
      r.set_value(10 + static_cast<double>(n % 97));
      const absl::Time start = start_ + absl::Minutes(15 * slot);
      TimestampToProto(start, r.mutable_interval_start());
      TimestampToProto(start + absl::Minutes(15), r.mutable_interval_end());
      in.event_id = absl::StrCat("ev-", n);
    }
  }

  CarbonLedger& ledger() { return *ledger_; }
  // Closes and reopens the ledger (rebuilding its state from ledger.db).
  void Reopen() {
    ledger_.reset();
    ledger_ =
        *CarbonLedger::Open(dir_, &tree_, factors_.get(), &clock_, options_);
  }
  const std::vector<ReadingInput>& batch() const { return batch_; }

 private:
  std::string dir_;
  absl::TimeZone tz_;
  SimulatedClock clock_{absl::FromUnixSeconds(2000000000)};  // 2033
  RegionTree tree_;
  std::unique_ptr<FactorRegistry> factors_;
  LedgerOptions options_;
  std::unique_ptr<CarbonLedger> ledger_;
  std::vector<std::string> meter_ids_;
  std::vector<ReadingInput> batch_;
  absl::Time start_ = absl::FromUnixSeconds(1704038400);  // 2024-01-01 Shanghai
  int64_t next_ = 0;
};

void BM_AccountReadings(benchmark::State& state) {
  City city(state.range(0) != 0);
  uint64_t accounted = 0;
  for (auto _ : state) {
    state.PauseTiming();
    city.NextBatch();
    state.ResumeTiming();
    BatchResult r = city.ledger().AccountReadings(city.batch());
    accounted += r.accounted;
    benchmark::DoNotOptimize(r);
  }
  state.SetItemsProcessed(static_cast<int64_t>(accounted));
  if (accounted != static_cast<uint64_t>(state.iterations()) * kBatch)
    state.SkipWithError("readings not accounted");
  // After the loop (not timed): everything accounted reaches the database.
  if (!city.ledger().Flush().ok()) state.SkipWithError("flush failed");
}
BENCHMARK(BM_AccountReadings)
    ->Arg(1)
    ->Arg(0)
    ->Unit(benchmark::kMicrosecond)
    ->MinTime(3);

void BM_AccountReadingsSustained(benchmark::State& state) {
  City city(state.range(0) != 0);
  uint64_t accounted = 0;
  for (auto _ : state) {
    for (int b = 0; b < 100; ++b) {
      state.PauseTiming();
      city.NextBatch();
      state.ResumeTiming();
      accounted += city.ledger().AccountReadings(city.batch()).accounted;
    }
    if (!city.ledger().Flush().ok()) state.SkipWithError("flush failed");
  }
  state.SetItemsProcessed(static_cast<int64_t>(accounted));
}
BENCHMARK(BM_AccountReadingsSustained)
    ->Arg(1)
    ->Arg(0)
    ->Unit(benchmark::kMillisecond)
    ->MinTime(3)
    ->UseRealTime();

// Open() on a ledger.db holding 1M records (10k meters x 100 slots = 25 h):
// the replay that rebuilds aggregates, dedup and register state.
void BM_OpenReplay(benchmark::State& state) {
  City city(false);
  for (int b = 0; b < 1000; ++b) {
    city.NextBatch();
    city.ledger().AccountReadings(city.batch());
  }
  if (!city.ledger().Flush().ok()) state.SkipWithError("flush failed");
  for (auto _ : state) city.Reopen();
  state.SetItemsProcessed(state.iterations() * int64_t{1000} * kBatch);
}
BENCHMARK(BM_OpenReplay)
    ->Unit(benchmark::kMillisecond)
    ->Iterations(2)
    ->UseRealTime();

}  // namespace
}  // namespace cityos::carbon

BENCHMARK_MAIN();
