// Micro-benchmarks of the SQLite entity store (cityos/state_store.h):
//   build/tests/bench/store_bench
// UpsertBatch throughput by batch size (items/s = entity updates/s; the
// exchange ingests from the bus in batches), with synchronous=NORMAL and
// FULL; a page of 100 by type and with an attribute filter; Get.
// Figures are recorded in docs/state-store.md.
#include <benchmark/benchmark.h>
#include <unistd.h>

#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_format.h"
#include "cityos/state_store.h"

namespace cityos {
namespace {

using exchange::v1::Entity;
using exchange::v1::EntityFilter;

constexpr char kType[] = "cityos.mobility.v1.VehiclePosition";

// A realistic entity: a bus position with a handful of attributes.
Entity Sample(int i, int64_t seq) {
  Entity e;
  e.set_type(kType);
  e.set_id(absl::StrFormat("bus-%06d", i));
  auto& a = *e.mutable_attributes();
  a["line"].set_string_value(absl::StrFormat("L%d", i % 40));
  a["speed_kmh"].set_double_value(static_cast<double>(seq % 60));
  a["heading_deg"].set_double_value(static_cast<double>((seq * 7) % 360));
  a["occupancy"].set_int_value(i % 100);
  a["door_open"].set_bool_value(seq % 5 == 0);
  a["next_stop"].set_string_value(absl::StrFormat("stop-%d", (i + seq) % 900));
  e.mutable_location()->set_latitude(28.9 + (i % 1000) * 1e-4);
  e.mutable_location()->set_longitude(118.8 + (i / 1000) * 1e-3);
  e.mutable_observed_time()->set_seconds(1800000000 + seq);
  e.set_domain("mobility");
  e.set_classification(event::v1::CLASSIFICATION_INTERNAL);
  e.set_owner("quzhou-transit");
  e.set_region("CN-ZJ-QZ-KC");
  e.set_jurisdiction("CN");
  e.set_event_id(absl::StrFormat("evt-%d", seq));
  return e;
}

struct TempStore {
  // `memory_index`: SqliteStateStoreOptions::memory_index_bytes (default on).
  explicit TempStore(bool full_sync = false, uint64_t max_history = 16,
                     bool memory_index = true) {
    dir = std::filesystem::temp_directory_path() /
          absl::StrFormat("cityos-store-bench-%d-%d", ::getpid(), counter++);
    std::filesystem::create_directories(dir);
    store = *OpenSqliteStateStore({.path = (dir / "entities.db").string(),
                                   .max_history_per_entity = max_history,
                                   .full_sync = full_sync,
                                   .memory_index_bytes = memory_index ? size_t{256} << 20 : 0});
  }
  ~TempStore() {
    store.reset();
    std::filesystem::remove_all(dir);
  }
  static inline int counter = 0;
  std::filesystem::path dir;
  std::unique_ptr<StateStore> store;
};

constexpr int kFleet = 20000;

// Args: batch size, full_sync, memory index (the type resident: every
// commit also updates it). Updates cycle over a fleet of 20k entities, so
// after the first pass each write is an update with history trimming (16
// states kept).
void BM_UpsertBatch(benchmark::State& state) {
  const int batch_size = static_cast<int>(state.range(0));
  TempStore t(state.range(1) != 0, 16, state.range(2) != 0);
  int64_t seq = 0;
  std::vector<Entity> batch;
  if (state.range(2) != 0) {
    // One entity, then a listing: the type becomes resident.
    (void)t.store->Upsert(Sample(0, seq++));
    EntityFilter filter;
    filter.set_type(kType);
    (void)t.store->Query(filter, {.page_size = 1});
  }
  for (auto _ : state) {
    state.PauseTiming();
    batch.clear();
    for (int i = 0; i < batch_size; ++i, ++seq) batch.push_back(Sample(seq % kFleet, seq));
    state.ResumeTiming();
    auto result = t.store->UpsertBatch(std::move(batch));
    if (!result.ok()) {
      state.SkipWithError(std::string(result.status().message()).c_str());
      return;
    }
    batch = std::vector<Entity>();
  }
  state.SetItemsProcessed(state.iterations() * batch_size);
}
BENCHMARK(BM_UpsertBatch)
    ->ArgNames({"batch", "full_sync", "index"})
    ->Args({1, 0, 0})
    ->Args({64, 0, 0})
    ->Args({256, 0, 0})
    ->Args({256, 0, 1})
    ->Args({256, 1, 0})
    ->UseRealTime();

// A store with the whole fleet, each entity written 3 times; removed at exit.
// `index`: with the memory index (the type is loaded by the first listing),
// else SQLite only. The read benchmarks take it as their last argument.
TempStore& Loaded(bool index) {
  static TempStore with_index(false, 16, true);
  static TempStore without_index(false, 16, false);
  TempStore& t = index ? with_index : without_index;
  static bool loaded = [] {
    for (TempStore* store : {&with_index, &without_index}) {
      TempStore& t = *store;
      int64_t seq = 0;
      for (int round = 0; round < 3; ++round) {
        for (int start = 0; start < kFleet; start += 256) {
          std::vector<Entity> batch;
          for (int i = start; i < std::min(start + 256, kFleet); ++i) {
            batch.push_back(Sample(i, seq++));
          }
          (void)*t.store->UpsertBatch(std::move(batch));
        }
      }
    }
    return true;
  }();
  (void)loaded;
  return t;
}

// Walks the pages of `filter` with page_size 100, wrapping at the end.
void RunPages(benchmark::State& state, const EntityFilter& filter) {
  StateStore& store = *Loaded(state.range(0) != 0).store;
  PageRequest page{.page_size = 100};
  int64_t entities = 0;
  for (auto _ : state) {
    auto result = store.Query(filter, page);
    if (!result.ok()) {
      state.SkipWithError(std::string(result.status().message()).c_str());
      return;
    }
    entities += static_cast<int64_t>(result->entities.size());
    page.page_token = result->next_page_token;
  }
  state.SetItemsProcessed(entities);
}

void BM_QueryPageByType(benchmark::State& state) {
  EntityFilter filter;
  filter.set_type(kType);
  RunPages(state, filter);
}
BENCHMARK(BM_QueryPageByType)->ArgName("index")->Arg(0)->Arg(1);

// The same pages as the stored bytes (QuerySerialized: what the exchange's
// Query forwards); each entity's bytes are read (summed) as a consumer would
// copy them out, none is parsed. Argument: the page size (10 is the
// exchange.query benchmark's, where the per-page cost dominates).
void BM_QuerySerializedPageByType(benchmark::State& state) {
  StateStore& store = *Loaded(state.range(1) != 0).store;
  EntityFilter filter;
  filter.set_type(kType);
  SerializedPageRequest page{.page_size = static_cast<int>(state.range(0))};
  int64_t entities = 0, bytes = 0;
  for (auto _ : state) {
    auto result = store.QuerySerialized(filter, page);
    if (!result.ok()) {
      state.SkipWithError(std::string(result.status().message()).c_str());
      return;
    }
    entities += static_cast<int64_t>(result->entities.size());
    for (const std::string& e : result->entities) bytes += static_cast<int64_t>(e.size());
    page.page_token = result->next_page_token;
  }
  state.SetItemsProcessed(entities);
  state.SetBytesProcessed(bytes);
}
BENCHMARK(BM_QuerySerializedPageByType)
    ->ArgNames({"page", "index"})
    ->ArgsProduct({{10, 100}, {0, 1}});

// Half the fleet matches (occupancy < 50), decided in C++ after SQL.
void BM_QueryPageAttributeFilter(benchmark::State& state) {
  EntityFilter filter;
  filter.set_type(kType);
  auto* a = filter.add_attributes();
  a->set_path("occupancy");
  a->set_comparison(exchange::v1::COMPARISON_LESS);
  a->mutable_value()->set_int_value(50);
  RunPages(state, filter);
}
BENCHMARK(BM_QueryPageAttributeFilter)->ArgName("index")->Arg(0)->Arg(1);

// Argument: the memory index (resident after one listing).
void BM_Get(benchmark::State& state) {
  StateStore& store = *Loaded(state.range(0) != 0).store;
  {
    EntityFilter filter;
    filter.set_type(kType);
    (void)store.Query(filter, {.page_size = 1});
  }
  std::mt19937 rng(1);
  std::vector<std::string> ids;
  for (int i = 0; i < 1024; ++i) ids.push_back(absl::StrFormat("bus-%06d", rng() % kFleet));
  size_t n = 0;
  for (auto _ : state) {
    auto e = store.Get(kType, ids[n++ % ids.size()]);
    if (!e.ok()) {
      state.SkipWithError(std::string(e.status().message()).c_str());
      return;
    }
    benchmark::DoNotOptimize(e);
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_Get)->ArgName("index")->Arg(0)->Arg(1);

}  // namespace
}  // namespace cityos

BENCHMARK_MAIN();
