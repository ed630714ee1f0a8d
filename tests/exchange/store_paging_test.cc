// Paging under concurrent writes: writer threads keep inserting entities (at
// random ids, before and after the reader's cursor) and updating existing
// ones while a reader pages through with page_size 7. Every entity that
// existed and matched during the whole paging must appear exactly once, no
// id twice, and only the last page may be short. Run twice: narrowed by
// owner in SQL (SQLite pages), and by an attribute only (the memory index
// pages; the SQLite listing of that shape is covered with the index off).
#include <atomic>
#include <condition_variable>
#include <mutex>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "cityos/state_store.h"
#include "gtest/gtest.h"
#include "store_test_util.h"
#include "testutil.h"

namespace cityos {
namespace {

using exchange::v1::Entity;
using exchange::v1::EntityFilter;

constexpr char kType[] = "cityos.test.v1.Vehicle";

Entity MakeEntity(const std::string& id, bool keep, const std::string& owner, int64_t n) {
  Entity e;
  e.set_type(kType);
  e.set_id(id);
  e.set_owner(owner);
  (*e.mutable_attributes())["keep"].set_bool_value(keep);
  (*e.mutable_attributes())["n"].set_int_value(n);
  return e;
}

bool Matches(const Entity& e, bool by_owner) {
  auto it = e.attributes().find("keep");
  return (!by_owner || e.owner() == "city") && it != e.attributes().end() &&
         it->second.bool_value();
}

// Ids that always match from their insertion on (`stable`) and ids whose
// match flips (`flipping`).
struct World {
  absl::Mutex mu;
  std::vector<std::string> stable ABSL_GUARDED_BY(mu);
  std::vector<std::string> flipping ABSL_GUARDED_BY(mu);
  std::set<std::string> used ABSL_GUARDED_BY(mu);
};

std::string NewId(World& w, std::mt19937& rng) {
  absl::MutexLock lock(&w.mu);
  while (true) {
    std::string id = absl::StrFormat("k%06d", static_cast<int>(rng() % 1000000));
    if (w.used.insert(id).second) return id;
  }
}

// One write: insert a new entity (stable or flipping), update a stable one
// (it keeps matching), or flip a flipping one.
void RandomWrite(StateStore& store, World& w, std::mt19937& rng) {
  int what = static_cast<int>(rng() % 4);
  int64_t n = static_cast<int64_t>(rng() % 1000);
  if (what == 0) {
    std::string id = NewId(w, rng);
    bool stable = rng() % 2 == 0;
    ASSERT_TRUE(store.Upsert(MakeEntity(id, stable || rng() % 2 == 0, "city", n)).ok());
    absl::MutexLock lock(&w.mu);
    (stable ? w.stable : w.flipping).push_back(id);
    return;
  }
  std::string id;
  {
    absl::MutexLock lock(&w.mu);
    auto& from = what == 3 ? w.flipping : w.stable;
    if (from.empty()) return;
    id = from[rng() % from.size()];
  }
  if (what == 3) {
    bool keep = rng() % 2 == 0;
    std::string owner = rng() % 3 == 0 ? "grid" : "city";
    ASSERT_TRUE(store.Upsert(MakeEntity(id, keep, owner, n)).ok());
  } else {
    // A batch updating the stable entity (plus a new flipping one).
    std::string fresh = NewId(w, rng);
    ASSERT_TRUE(store.UpsertBatch({MakeEntity(id, true, "city", n),
                                   MakeEntity(fresh, rng() % 2 == 0, "city", n)})
                    .ok());
    absl::MutexLock lock(&w.mu);
    w.flipping.push_back(fresh);
  }
}

struct PagingCase {
  const char* name;
  bool by_owner;           // the filter names the owner (SQL narrows on it)
  size_t memory_index;     // SqliteStateStoreOptions::memory_index_bytes
};

void PrintTo(const PagingCase& c, std::ostream* os) { *os << c.name; }

class SqliteStateStorePaging : public ::testing::TestWithParam<PagingCase> {};

TEST_P(SqliteStateStorePaging, ExactlyOnceUnderConcurrentWrites) {
  const bool by_owner = GetParam().by_owner;
  testing::TempDir dir;
  auto opened = OpenSqliteStateStore(
      {.path = dir.File("entities.db"), .memory_index_bytes = GetParam().memory_index});
  ASSERT_TRUE(opened.ok()) << opened.status();
  StateStore& store = **opened;
  World world;
  std::mt19937 rng(777);
  for (int i = 0; i < 300; ++i) RandomWrite(store, world, rng);

  // The writer threads run concurrently with the reader's queries, but on a
  // budget the reader grants per page (for the first 40 pages of a round):
  // flat out, they would grow the data faster than a paging can finish.
  std::mutex budget_mu;
  std::condition_variable budget_cv;
  int64_t budget = 0;  // guarded by budget_mu
  bool stop = false;   // guarded by budget_mu
  std::atomic<int64_t> writes{0};
  std::vector<std::thread> writers;
  for (int t = 0; t < 2; ++t) {
    writers.emplace_back([&, t] {
      std::mt19937 wrng(1000 + t);
      while (true) {
        {
          std::unique_lock lock(budget_mu);
          budget_cv.wait(lock, [&] { return budget > 0 || stop; });
          if (stop) return;
          --budget;
        }
        RandomWrite(store, world, wrng);
        writes.fetch_add(1);
      }
    });
  }

  EntityFilter filter;
  filter.set_type(kType);
  if (by_owner) filter.set_owner("city");
  auto* keep = filter.add_attributes();
  keep->set_path("keep");
  keep->set_comparison(exchange::v1::COMPARISON_EQUAL);
  keep->mutable_value()->set_bool_value(true);

  constexpr int kRounds = 25;
  int64_t total_pages = 0;
  const uint64_t memory_before = testing::StoreReads("listing", "memory");
  for (int round = 0; round < kRounds; ++round) {
    std::vector<std::string> required;
    {
      absl::MutexLock lock(&world.mu);
      required = world.stable;
    }
    std::set<std::string> seen;
    std::set<std::string> ahead;   // inserted ahead of the cursor: must appear
    std::set<std::string> behind;  // inserted just before the cursor: must not
    PageRequest page{.page_size = 7};
    std::vector<int> sizes;
    while (true) {
      auto result = store.Query(filter, page);
      ASSERT_TRUE(result.ok()) << result.status();
      ++total_pages;
      sizes.push_back(static_cast<int>(result->entities.size()));
      for (const Entity& e : result->entities) {
        EXPECT_TRUE(Matches(e, by_owner)) << e.DebugString();
        EXPECT_TRUE(seen.insert(e.id()).second) << "round " << round << ": " << e.id() << " twice";
        EXPECT_EQ(behind.count(e.id()), 0u) << e.id() << " was inserted behind the cursor";
      }
      if (sizes.size() <= 40) {  // bounded per round, so the data grows linearly
        std::lock_guard lock(budget_mu);
        budget += 6;
      }
      budget_cv.notify_all();
      if (result->next_page_token.empty()) break;
      page.page_token = result->next_page_token;
      // Deterministic writes between pages, around the cursor, on top of the
      // writer threads.
      // `before` sorts just below the last id returned, so behind the cursor
      // (which is at or past that id); `after` sorts past every other id.
      std::string last = result->entities.back().id();
      std::string before = last;
      before.back() = static_cast<char>(before.back() - 1);
      before += absl::StrFormat("~%d-%d", round, sizes.size());
      std::string after = absl::StrFormat("z%02d-%04d", round, sizes.size());
      std::vector<Entity> around = {MakeEntity(before, true, "city", 0)};
      behind.insert(before);
      if (last < "z") {  // once among them, adding more would never end
        around.push_back(MakeEntity(after, true, "city", 0));
        ahead.insert(after);
      }
      ASSERT_TRUE(store.UpsertBatch(around).ok());
      RandomWrite(store, world, rng);
    }
    for (size_t i = 0; i + 1 < sizes.size(); ++i) {
      EXPECT_EQ(sizes[i], 7) << "round " << round << ": short page " << i << " in the middle";
    }
    for (const std::string& id : required) {
      EXPECT_EQ(seen.count(id), 1u) << "round " << round << ": " << id << " missing";
    }
    for (const std::string& id : ahead) {
      EXPECT_EQ(seen.count(id), 1u) << "round " << round << ": " << id << " (ahead) missing";
    }
    // The helper entities are not part of the next rounds' world.
    std::vector<Entity> cleanup;
    for (const std::string& id : ahead) cleanup.push_back(MakeEntity(id, false, "gone", 0));
    for (const std::string& id : behind) cleanup.push_back(MakeEntity(id, false, "gone", 0));
    ASSERT_TRUE(store.UpsertBatch(cleanup).ok());
    if (::testing::Test::HasFailure()) break;
  }
  {
    std::lock_guard lock(budget_mu);
    stop = true;
  }
  budget_cv.notify_all();
  for (auto& t : writers) t.join();
  // The writer threads did run (they cannot have been starved for the whole
  // test; this only guards against a broken test setup).
  EXPECT_GT(writes.load(), 0);
  EXPECT_GT(total_pages, kRounds * 10);
  // Every page came from the memory index in its case, none in the others.
  const uint64_t from_memory = testing::StoreReads("listing", "memory") - memory_before;
  if (GetParam().memory_index > 0 && !by_owner) {
    EXPECT_EQ(from_memory, static_cast<uint64_t>(total_pages));
  } else {
    EXPECT_EQ(from_memory, 0u);
  }
}

// Every page is one snapshot: a writer thread rewrites all entities in one
// batch per generation while pages are read (a page spans several of the
// store's fetch rounds: three of four entities are hidden), and every page
// must hold a single generation.
TEST_P(SqliteStateStorePaging, PagesAreSnapshotsUnderConcurrentBatches) {
  testing::TempDir dir;
  auto opened = OpenSqliteStateStore(
      {.path = dir.File("entities.db"), .memory_index_bytes = GetParam().memory_index});
  ASSERT_TRUE(opened.ok()) << opened.status();
  StateStore& store = **opened;
  constexpr int kEntities = 200;
  auto generation = [](int64_t g) {
    std::vector<Entity> batch;
    for (int i = 0; i < kEntities; ++i) {
      batch.push_back(MakeEntity(absl::StrFormat("v%03d", i), true, "city", g));
    }
    return batch;
  };
  ASSERT_TRUE(store.UpsertBatch(generation(0)).ok());
  EntityFilter filter;
  filter.set_type(kType);
  if (GetParam().by_owner) filter.set_owner("city");
  // A first listing, before the writer starts: with the memory index, the
  // type is resident from here on, so every page below reads it.
  ASSERT_TRUE(store.Query(filter, {.page_size = 1}).ok());
  auto memory_listings = [] { return testing::StoreReads("listing", "memory"); };
  const uint64_t memory_before = memory_listings();
  std::atomic<bool> done{false};
  std::thread writer([&] {
    for (int64_t g = 1; g <= 150; ++g) {
      if (!store.UpsertBatch(generation(g)).ok()) break;
    }
    done.store(true);
  });
  int pages = 0, passes = 0;
  PageRequest page{.page_size = 20};
  int examined = 0;
  // Every pass over the listing (all its pages) examines each entity once.
  std::set<std::string> pass;
  bool duplicate = false;
  page.visible = [&](const Entity& e) {
    duplicate |= !pass.insert(e.id()).second;
    return ++examined % 4 == 0;
  };
  // EXPECT and break, not ASSERT: the writer thread is joined either way.
  while (!done.load() || pages < 50) {
    auto result = store.Query(filter, page);
    EXPECT_TRUE(result.ok()) << result.status();
    if (!result.ok()) break;
    ++pages;
    std::set<int64_t> generations;
    for (const Entity& e : result->entities) {
      generations.insert(e.attributes().at("n").int_value());
    }
    EXPECT_LE(generations.size(), 1u) << "page " << pages << " mixes generations";
    if (generations.size() > 1) break;
    page.page_token = result->next_page_token;
    if (page.page_token.empty()) {
      ++passes;
      EXPECT_EQ(pass.size(), static_cast<size_t>(kEntities)) << "pass " << passes;
      EXPECT_FALSE(duplicate) << "pass " << passes;
      if (pass.size() != kEntities || duplicate) break;
      pass.clear();
    }
  }
  writer.join();
  EXPECT_GT(passes, 0);
  const uint64_t from_memory = memory_listings() - memory_before;
  if (GetParam().memory_index > 0 && !GetParam().by_owner) {
    EXPECT_EQ(from_memory, static_cast<uint64_t>(pages));
  } else {
    EXPECT_EQ(from_memory, 0u);
  }
}

INSTANTIATE_TEST_SUITE_P(
    Paths, SqliteStateStorePaging,
    ::testing::Values(PagingCase{"sql_narrowed", true, size_t{256} << 20},
                    PagingCase{"memory_index", false, size_t{256} << 20},
                    PagingCase{"sqlite_listing", false, 0}),
    [](const ::testing::TestParamInfo<PagingCase>& info) { return info.param.name; });

}  // namespace
}  // namespace cityos
