// The SQLite entity store: versions and history, batches, Get, filters
// (pushed to SQL and the rest), paging, tokens, visibility, persistence,
// file mode, schema versions.
#include <sqlite3.h>

#include <algorithm>
#include <map>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/str_format.h"
#include "absl/time/time.h"
#include "cityos/clock.h"
#include "cityos/entity.h"
#include "cityos/proto_time.h"
#include "cityos/state_store.h"
#include "gtest/gtest.h"
#include "store_test_util.h"
#include "testutil.h"

namespace cityos {
namespace {

using exchange::v1::Entity;
using exchange::v1::EntityFilter;

constexpr char kType[] = "cityos.test.v1.Thing";

google::protobuf::Timestamp Ts(int64_t seconds) {
  google::protobuf::Timestamp t;
  t.set_seconds(seconds);
  return t;
}

Entity MakeEntity(const std::string& id, int64_t n = 0, const std::string& type = kType) {
  Entity e;
  e.set_type(type);
  e.set_id(id);
  (*e.mutable_attributes())["n"].set_int_value(n);
  *e.mutable_observed_time() = Ts(1700000000 + n);
  return e;
}

std::unique_ptr<StateStore> Open(const std::string& path, Clock* clock = nullptr,
                                 uint64_t max_history = 0,
                                 size_t memory_index = size_t{256} << 20) {
  auto store = OpenSqliteStateStore({.path = path,
                                     .clock = clock,
                                     .max_history_per_entity = max_history,
                                     .memory_index_bytes = memory_index});
  EXPECT_TRUE(store.ok()) << store.status();
  return store.ok() ? std::move(*store) : nullptr;
}

// Every page of a query; fails the test on an error. `sizes` gets each
// page's size.
std::vector<Entity> QueryAll(StateStore& store, const EntityFilter& filter, int page_size,
                             std::vector<int>* sizes = nullptr,
                             std::function<bool(const Entity&)> visible = nullptr) {
  std::vector<Entity> all;
  PageRequest page{.page_size = page_size, .visible = std::move(visible)};
  for (int guard = 0; guard < 100000; ++guard) {
    auto result = store.Query(filter, page);
    EXPECT_TRUE(result.ok()) << result.status();
    if (!result.ok()) break;
    if (sizes != nullptr) sizes->push_back(static_cast<int>(result->entities.size()));
    for (auto& e : result->entities) all.push_back(std::move(e));
    if (result->next_page_token.empty()) break;
    page.page_token = result->next_page_token;
  }
  return all;
}

// Runs `sql` on the database file through a connection of its own (as
// another process would); the empty string, or SQLite's error.
std::string ExecElsewhere(const std::string& path, const char* sql) {
  sqlite3* db = nullptr;
  if (sqlite3_open(path.c_str(), &db) != SQLITE_OK) {
    std::string error = sqlite3_errmsg(db);
    sqlite3_close(db);
    return error;
  }
  std::string error;
  if (sqlite3_exec(db, sql, nullptr, nullptr, nullptr) != SQLITE_OK) error = sqlite3_errmsg(db);
  sqlite3_close(db);
  return error;
}

std::vector<std::string> Ids(const std::vector<Entity>& entities) {
  std::vector<std::string> ids;
  for (const auto& e : entities) ids.push_back(e.id());
  return ids;
}

TEST(SqliteStateStore, VersionsUpdateTimeAndHistory) {
  testing::TempDir dir;
  SimulatedClock clock(absl::FromUnixSeconds(1800000000));
  auto store = Open(dir.File("entities.db"), &clock);
  ASSERT_NE(store, nullptr);
  for (int i = 1; i <= 5; ++i) {
    auto stored = store->Upsert(MakeEntity("a", i));
    ASSERT_TRUE(stored.ok()) << stored.status();
    EXPECT_EQ(stored->version(), static_cast<uint64_t>(i));
    EXPECT_EQ(stored->update_time().seconds(), 1800000000 + (i - 1) * 10);
    clock.Advance(absl::Seconds(10));
  }
  auto got = store->Get(kType, "a");
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->version(), 5u);
  EXPECT_EQ(got->attributes().at("n").int_value(), 5);

  // observed_time of version i is 1700000000 + i: [v2, v5) by time.
  auto history = store->History(kType, "a", absl::FromUnixSeconds(1700000002),
                                absl::FromUnixSeconds(1700000005), {});
  ASSERT_TRUE(history.ok()) << history.status();
  ASSERT_EQ(history->entities.size(), 3u);
  EXPECT_EQ(history->entities[0].version(), 2u);
  EXPECT_EQ(history->entities[2].version(), 4u);
  EXPECT_EQ(history->entities[2].attributes().at("n").int_value(), 4);
  EXPECT_TRUE(history->next_page_token.empty());

  // All of it, newest included, two per page.
  std::vector<uint64_t> versions;
  PageRequest page{.page_size = 2};
  while (true) {
    auto p = store->History(kType, "a", absl::InfinitePast(), absl::InfiniteFuture(), page);
    ASSERT_TRUE(p.ok()) << p.status();
    EXPECT_LE(p->entities.size(), 2u);
    for (const auto& e : p->entities) versions.push_back(e.version());
    if (p->next_page_token.empty()) break;
    page.page_token = p->next_page_token;
  }
  EXPECT_EQ(versions, (std::vector<uint64_t>{1, 2, 3, 4, 5}));

  auto missing = store->History(kType, "nope", absl::InfinitePast(), absl::InfiniteFuture(), {});
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  auto count = store->CountEntities();
  ASSERT_TRUE(count.ok());
  EXPECT_EQ(*count, 1u);
}

TEST(SqliteStateStore, HistoryTokenBoundToItsRange) {
  testing::TempDir dir;
  auto store = Open(dir.File("entities.db"));
  for (int i = 1; i <= 4; ++i) ASSERT_TRUE(store->Upsert(MakeEntity("a", i)).ok());
  auto p = store->History(kType, "a", absl::InfinitePast(), absl::InfiniteFuture(),
                          {.page_size = 1});
  ASSERT_TRUE(p.ok());
  ASSERT_FALSE(p->next_page_token.empty());
  auto other = store->History(kType, "a", absl::FromUnixSeconds(1700000002),
                              absl::InfiniteFuture(),
                              {.page_size = 1, .page_token = p->next_page_token});
  EXPECT_EQ(other.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(other.status().message().find("another query"), std::string::npos)
      << other.status();
  auto other_entity = store->History(kType, "b", absl::InfinitePast(), absl::InfiniteFuture(),
                                     {.page_size = 1, .page_token = p->next_page_token});
  EXPECT_FALSE(other_entity.ok());
}

TEST(SqliteStateStore, MaxHistoryDropsOldest) {
  testing::TempDir dir;
  auto store = Open(dir.File("entities.db"), nullptr, /*max_history=*/3);
  for (int i = 1; i <= 7; ++i) ASSERT_TRUE(store->Upsert(MakeEntity("a", i)).ok());
  auto history = store->History(kType, "a", absl::InfinitePast(), absl::InfiniteFuture(), {});
  ASSERT_TRUE(history.ok());
  std::vector<uint64_t> versions;
  for (const auto& e : history->entities) versions.push_back(e.version());
  EXPECT_EQ(versions, (std::vector<uint64_t>{5, 6, 7}));
}

TEST(SqliteStateStore, GetNotFoundAndBadArguments) {
  testing::TempDir dir;
  auto store = Open(dir.File("entities.db"));
  ASSERT_TRUE(store->Upsert(MakeEntity("a")).ok());
  EXPECT_EQ(store->Get(kType, "b").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store->Get("other.Type", "a").status().code(), absl::StatusCode::kNotFound);
  Entity no_type = MakeEntity("x");
  no_type.clear_type();
  auto bad = store->Upsert(no_type);
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("type"), std::string::npos);
}

TEST(SqliteStateStore, BatchIsAtomicAndNamesTheBadIndex) {
  testing::TempDir dir;
  auto store = Open(dir.File("entities.db"));
  std::vector<Entity> batch = {MakeEntity("a"), MakeEntity("b"), MakeEntity("")};
  auto bad = store->UpsertBatch(batch);
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("entities[2]"), std::string::npos) << bad.status();
  EXPECT_EQ(*store->CountEntities(), 0u);
  EXPECT_EQ(store->Get(kType, "a").status().code(), absl::StatusCode::kNotFound);

  // The same entity twice in one batch: two versions.
  auto ok = store->UpsertBatch({MakeEntity("a", 1), MakeEntity("b"), MakeEntity("a", 2)});
  ASSERT_TRUE(ok.ok()) << ok.status();
  ASSERT_EQ(ok->size(), 3u);
  EXPECT_EQ((*ok)[0].version(), 1u);
  EXPECT_EQ((*ok)[2].version(), 2u);
  EXPECT_EQ(store->Get(kType, "a")->attributes().at("n").int_value(), 2);
  EXPECT_EQ(*store->CountEntities(), 2u);
  EXPECT_TRUE(store->UpsertBatch({})->empty());
}

TEST(SqliteStateStore, FailedBatchInsideSqliteLeavesNothing) {
  // A failure in the middle of the SQL work, after earlier elements were
  // written (not caught by validation): a trigger, added behind the store's
  // back, aborts the insert of a chosen id.
  testing::TempDir dir;
  std::string path = dir.File("entities.db");
  auto store = Open(path);
  ASSERT_TRUE(store->Upsert(MakeEntity("before")).ok());
  ASSERT_EQ(ExecElsewhere(path,
                          "CREATE TRIGGER fail_on_poison BEFORE INSERT ON history "
                          "WHEN NEW.id = 'poison' BEGIN SELECT RAISE(ABORT, 'poisoned'); END"),
            "");
  auto bad = store->UpsertBatch({MakeEntity("x"), MakeEntity("before"), MakeEntity("poison")});
  EXPECT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("entities[2]"), std::string::npos) << bad.status();
  EXPECT_EQ(*store->CountEntities(), 1u);
  EXPECT_EQ(store->Get(kType, "x").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store->Get(kType, "before")->version(), 1u);
  // The store still works afterwards.
  EXPECT_EQ(store->Upsert(MakeEntity("before"))->version(), 2u);
}

TEST(SqliteStateStore, ReopenKeepsStateAndFileIsPrivate) {
  testing::TempDir dir;
  std::string path = dir.File("entities.db");
  {
    auto store = Open(path);
    Entity e = MakeEntity("a", 7);
    e.mutable_location()->set_latitude(35.0);
    e.mutable_location()->set_longitude(139.0);
    e.set_owner("city");
    ASSERT_TRUE(store->Upsert(e).ok());
    ASSERT_TRUE(store->Upsert(e).ok());
    EXPECT_EQ(testing::FileMode(path), 0600);
    EXPECT_EQ(testing::FileMode(path + "-wal"), 0600);
  }
  auto store = Open(path);
  ASSERT_NE(store, nullptr);
  auto got = store->Get(kType, "a");
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->version(), 2u);
  EXPECT_EQ(got->owner(), "city");
  EXPECT_DOUBLE_EQ(got->location().latitude(), 35.0);
  EXPECT_EQ(store->Upsert(MakeEntity("a"))->version(), 3u);
  EXPECT_EQ(testing::FileMode(path), 0600);
}

TEST(SqliteStateStore, RefusesNewerSchemaAndForeignFiles) {
  testing::TempDir dir;
  std::string path = dir.File("entities.db");
  { ASSERT_NE(Open(path), nullptr); }
  ASSERT_EQ(ExecElsewhere(path, "UPDATE schema_version SET version=99"), "");
  auto newer = OpenSqliteStateStore({.path = path});
  EXPECT_EQ(newer.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(newer.status().message().find("schema version 99"), std::string::npos)
      << newer.status();

  std::string other_db = dir.File("other.db");
  ASSERT_EQ(ExecElsewhere(other_db, "CREATE TABLE t(x)"), "");
  auto foreign = OpenSqliteStateStore({.path = other_db});
  EXPECT_EQ(foreign.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(foreign.status().message().find("not an entity store"), std::string::npos)
      << foreign.status();

  std::string text = dir.File("text.db");
  testing::WriteFile(text, std::string(8192, 'x'));
  auto not_db = OpenSqliteStateStore({.path = text});
  EXPECT_EQ(not_db.status().code(), absl::StatusCode::kDataLoss) << not_db.status();

  auto no_dir = OpenSqliteStateStore({.path = dir.File("missing/entities.db")});
  EXPECT_FALSE(no_dir.ok());
  EXPECT_NE(no_dir.status().message().find("missing/entities.db"), std::string::npos);
  EXPECT_EQ(OpenSqliteStateStore({}).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(SqliteStateStore, PageSizesAndTokens) {
  testing::TempDir dir;
  auto store = Open(dir.File("entities.db"));
  std::vector<Entity> batch;
  for (int i = 0; i < 1205; ++i) batch.push_back(MakeEntity(absl::StrFormat("e%05d", i), i % 10));
  ASSERT_TRUE(store->UpsertBatch(batch).ok());
  EntityFilter filter;
  filter.set_type(kType);

  auto first = store->Query(filter, {});
  ASSERT_TRUE(first.ok());
  EXPECT_EQ(first->entities.size(), 100u);
  auto big = store->Query(filter, {.page_size = 5000});
  ASSERT_TRUE(big.ok());
  EXPECT_EQ(big->entities.size(), 1000u);
  EXPECT_EQ(store->Query(filter, {.page_size = -1}).status().code(),
            absl::StatusCode::kInvalidArgument);

  std::vector<int> sizes;
  auto all = QueryAll(*store, filter, 100, &sizes);
  ASSERT_EQ(all.size(), 1205u);
  EXPECT_TRUE(std::is_sorted(all.begin(), all.end(),
                             [](const Entity& a, const Entity& b) { return a.id() < b.id(); }));
  EXPECT_EQ(sizes.back(), 5);
  // An exact multiple: the last full page carries no token (no empty page).
  EntityFilter ten = filter;
  (*ten.add_attributes()).set_path("n");
  ten.mutable_attributes(0)->set_comparison(exchange::v1::COMPARISON_EQUAL);
  ten.mutable_attributes(0)->mutable_value()->set_int_value(3);  // 121 entities
  sizes.clear();
  EXPECT_EQ(QueryAll(*store, ten, 121, &sizes).size(), 121u);
  EXPECT_EQ(sizes, std::vector<int>{121});

  // A token from another filter, another context, or garbage.
  auto page = store->Query(filter, {.page_size = 10, .token_context = "purpose=research"});
  ASSERT_TRUE(page.ok());
  auto foreign = store->Query(ten, {.page_size = 10, .page_token = page->next_page_token,
                                    .token_context = "purpose=research"});
  EXPECT_EQ(foreign.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(foreign.status().message().find("page token belongs to another query"),
            std::string::npos)
      << foreign.status();
  auto other_context = store->Query(filter, {.page_size = 10, .page_token = page->next_page_token,
                                             .token_context = "purpose=commercial"});
  EXPECT_EQ(other_context.status().code(), absl::StatusCode::kInvalidArgument);
  auto same = store->Query(filter, {.page_size = 10, .page_token = page->next_page_token,
                                    .token_context = "purpose=research"});
  ASSERT_TRUE(same.ok()) << same.status();
  EXPECT_EQ(same->entities.front().id(), "e00010");
  EXPECT_EQ(store->Query(filter, {.page_token = "%%%not base64"}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(store->Query(filter, {.page_token = "AAAA"}).status().code(),
            absl::StatusCode::kInvalidArgument);

  EntityFilter no_type;
  EXPECT_EQ(store->Query(no_type, {}).status().code(), absl::StatusCode::kInvalidArgument);
  EntityFilter bad = filter;
  bad.add_attributes()->set_path("n");  // no comparison
  EXPECT_EQ(store->Query(bad, {}).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(SqliteStateStore, VisibleLeavesOutWithoutShortPages) {
  testing::TempDir dir;
  auto store = Open(dir.File("entities.db"));
  std::vector<Entity> batch;
  for (int i = 0; i < 200; ++i) batch.push_back(MakeEntity(absl::StrFormat("e%03d", i), i));
  ASSERT_TRUE(store->UpsertBatch(batch).ok());
  EntityFilter filter;
  filter.set_type(kType);
  // Long runs of invisible entities (most of them), so a page must read on.
  auto visible = [](const Entity& e) {
    int64_t n = e.attributes().at("n").int_value();
    return n % 23 == 0 || (n > 100 && n < 110);
  };
  std::vector<int> sizes;
  auto all = QueryAll(*store, filter, 3, &sizes, visible);
  std::vector<std::string> expected;
  for (int i = 0; i < 200; ++i) {
    if (i % 23 == 0 || (i > 100 && i < 110)) expected.push_back(absl::StrFormat("e%03d", i));
  }
  EXPECT_EQ(Ids(all), expected);
  for (size_t i = 0; i + 1 < sizes.size(); ++i) EXPECT_EQ(sizes[i], 3) << "page " << i;
  // The last page may be empty: a token is given when matching entities
  // remain, and `visible` is asked only about entities that are returned (it
  // is the caller's policy decision, audited), never to look ahead.
  EXPECT_LE(sizes.back(), 3);
  // Nothing visible at all: one empty last page.
  sizes.clear();
  EXPECT_TRUE(QueryAll(*store, filter, 7, &sizes, [](const Entity&) { return false; }).empty());
  EXPECT_EQ(sizes, std::vector<int>{0});
}

// A page is one snapshot, also when reading it takes several fetch rounds:
// entities written while the page is being read (here, from the first
// visibility decision) show up in their state from before that write, and
// an entity inserted meanwhile does not show up. Checked for the listing by
// type alone and by type with an attribute condition (one statement stepped
// across the rounds; the second with C++ matching) and a listing narrowed by
// owner (several statements in one read transaction), on both page paths.
TEST(SqliteStateStore, PageIsOneSnapshotAcrossFetchRounds) {
  testing::TempDir dir;
  int run = 0;
  // With the memory index, the listings by type and by attribute page a
  // snapshot of it (the type is loaded by the first listing, before the
  // write); without, SQLite's listing. The owner is narrowed in SQL either way.
  for (size_t memory_index : {size_t{256} << 20, size_t{0}})
  for (const char* narrowing : {"type", "attribute", "owner"}) {
    for (bool serialized : {false, true}) {
      SCOPED_TRACE(absl::StrFormat("narrowed by %s, serialized %d, memory index %d", narrowing,
                                   serialized, memory_index));
      auto store = Open(dir.File(absl::StrFormat("entities-%d.db", run++)), nullptr, 0,
                        memory_index);
      ASSERT_NE(store, nullptr);
      auto make = [](const std::string& id, int64_t n) {
        Entity e = MakeEntity(id, n);
        e.set_owner("owner-a");
        return e;
      };
      std::vector<Entity> batch;
      for (int i = 0; i < 200; ++i) batch.push_back(make(absl::StrFormat("e%03d", i), i));
      ASSERT_TRUE(store->UpsertBatch(batch).ok());
      EntityFilter filter;
      filter.set_type(kType);
      if (std::string_view(narrowing) == "owner") filter.set_owner("owner-a");
      if (std::string_view(narrowing) == "attribute") {
        exchange::v1::AttributeFilter* exists = filter.add_attributes();
        exists->set_path("n");
        exists->set_comparison(exchange::v1::COMPARISON_EXISTS);
      }
      // Only n % 40 == 0 is visible, so a page of 3 reads e000..e080 and
      // one more: several rounds of the store's read-ahead. While e000 is
      // decided, e040 becomes invisible (n = 41) and e020x appears visible
      // (n = 40): a page read across snapshots would be e000, e020x, e080.
      bool wrote = false;
      absl::Status write_status;
      std::vector<std::string> seen;
      auto note = [&](const Entity& e) {
        if (!wrote) {
          wrote = true;
          write_status = store->UpsertBatch({make("e040", 41), make("e020x", 40)}).status();
        }
        const bool visible = e.attributes().at("n").int_value() % 40 == 0;
        if (visible) seen.push_back(e.id());
        return visible;
      };
      const uint64_t memory_before = testing::StoreReads("listing", "memory");
      std::string next;
      if (serialized) {
        SerializedPageRequest req{.page_size = 3};
        req.visible = [&](std::string_view bytes) {
          Entity e;
          EXPECT_TRUE(e.ParseFromArray(bytes.data(), static_cast<int>(bytes.size())));
          return note(e) ? SerializedVisibility::kVisible : SerializedVisibility::kHidden;
        };
        auto got = store->QuerySerialized(filter, req);
        ASSERT_TRUE(got.ok()) << got.status();
        next = got->next_page_token;
      } else {
        auto got = store->Query(filter, PageRequest{.page_size = 3, .visible = note});
        ASSERT_TRUE(got.ok()) << got.status();
        EXPECT_EQ(Ids(got->entities), (std::vector<std::string>{"e000", "e040", "e080"}));
        next = got->next_page_token;
      }
      // Served by the memory index where it should be (the listing loaded
      // the type before reading it).
      const bool from_memory = memory_index > 0 && std::string_view(narrowing) != "owner";
      EXPECT_EQ(testing::StoreReads("listing", "memory") - memory_before, from_memory ? 1u : 0u);
      ASSERT_TRUE(wrote);
      ASSERT_TRUE(write_status.ok()) << write_status;
      EXPECT_EQ(seen, (std::vector<std::string>{"e000", "e040", "e080"}));
      EXPECT_FALSE(next.empty());
      // The next page is a new snapshot: the write is there.
      auto after = store->Get(kType, "e040");
      ASSERT_TRUE(after.ok()) << after.status();
      EXPECT_EQ(after->attributes().at("n").int_value(), 41);
    }
  }
}

// The memory index answers as SQLite does: two stores fed the same random
// writes (same clock), one with the index and one without, give the same
// pages, tokens and entities for listings by type and by attribute (paths
// the index serves), by owner and by ids (paths it does not), for Get, and
// for QuerySerialized.
TEST(SqliteStateStore, MemoryIndexAnswersAsSqliteDoes) {
  testing::TempDir dir;
  SimulatedClock clock(absl::FromUnixSeconds(1800000000));
  auto indexed = Open(dir.File("indexed.db"), &clock, 3);
  auto plain = Open(dir.File("plain.db"), &clock, 3, 0);
  ASSERT_NE(indexed, nullptr);
  ASSERT_NE(plain, nullptr);
  std::mt19937 rng(4242);
  const char* types[] = {kType, "cityos.test.v1.Other"};
  const char* owners[] = {"city", "grid"};
  auto random_entity = [&] {
    Entity e = MakeEntity(absl::StrFormat("e%03d", rng() % 120), rng() % 50, types[rng() % 2]);
    e.set_owner(owners[rng() % 2]);
    return e;
  };
  std::vector<EntityFilter> filters(5);
  for (auto& f : filters) f.set_type(types[0]);
  filters[1].set_type(types[1]);
  auto* cond = filters[2].add_attributes();
  cond->set_path("n");
  cond->set_comparison(exchange::v1::COMPARISON_LESS);
  cond->mutable_value()->set_int_value(20);
  filters[3].set_owner("grid");
  for (int i = 0; i < 120; i += 7) filters[4].add_ids(absl::StrFormat("e%03d", i));
  int pages = 0;
  const uint64_t memory_listings = testing::StoreReads("listing", "memory");
  const uint64_t memory_gets = testing::StoreReads("get", "memory");
  for (int step = 0; step < 60; ++step) {
    clock.Advance(absl::Seconds(1));
    std::vector<Entity> batch;
    const int n = 1 + static_cast<int>(rng() % 12);
    for (int i = 0; i < n; ++i) batch.push_back(random_entity());
    auto a = indexed->UpsertBatch(batch);
    auto b = plain->UpsertBatch(batch);
    ASSERT_TRUE(a.ok()) << a.status();
    ASSERT_TRUE(b.ok()) << b.status();
    for (size_t k = 0; k < filters.size(); ++k) {
      SCOPED_TRACE(absl::StrFormat("step %d, filter %d", step, k));
      // Every third examined entity hidden, on both sides alike.
      int calls_a = 0, calls_b = 0;
      const int size = 1 + static_cast<int>(rng() % 9);
      PageRequest page_a{.page_size = size}, page_b{.page_size = size};
      page_a.visible = [&](const Entity&) { return ++calls_a % 3 != 0; };
      page_b.visible = [&](const Entity&) { return ++calls_b % 3 != 0; };
      for (int guard = 0; guard < 200; ++guard) {
        auto got = indexed->Query(filters[k], page_a);
        auto want = plain->Query(filters[k], page_b);
        ASSERT_TRUE(got.ok()) << got.status();
        ASSERT_TRUE(want.ok()) << want.status();
        ++pages;
        ASSERT_EQ(got->entities.size(), want->entities.size());
        for (size_t i = 0; i < got->entities.size(); ++i) {
          EXPECT_EQ(got->entities[i].SerializeAsString(), want->entities[i].SerializeAsString());
        }
        EXPECT_EQ(got->next_page_token, want->next_page_token);
        EXPECT_EQ(calls_a, calls_b);
        if (want->next_page_token.empty()) break;
        page_a.page_token = got->next_page_token;
        page_b.page_token = want->next_page_token;
      }
      auto raw_a = indexed->QuerySerialized(filters[k], {.page_size = 50});
      auto raw_b = plain->QuerySerialized(filters[k], {.page_size = 50});
      ASSERT_TRUE(raw_a.ok()) << raw_a.status();
      ASSERT_TRUE(raw_b.ok()) << raw_b.status();
      EXPECT_EQ(raw_a->entities, raw_b->entities);
      EXPECT_EQ(raw_a->next_page_token, raw_b->next_page_token);
    }
    for (int i = 0; i < 10; ++i) {
      const std::string id = absl::StrFormat("e%03d", rng() % 130);
      for (const char* type : types) {
        auto got = indexed->Get(type, id);
        auto want = plain->Get(type, id);
        ASSERT_EQ(got.status(), want.status());
        if (got.ok()) EXPECT_EQ(got->SerializeAsString(), want->SerializeAsString());
      }
    }
  }
  EXPECT_GT(pages, 300);
  // The indexed store did serve from memory (the plain one never does).
  EXPECT_GT(testing::StoreReads("listing", "memory") - memory_listings, static_cast<uint64_t>(pages) / 4);
  EXPECT_GT(testing::StoreReads("get", "memory") - memory_gets, 0u);
}

// A budget too small for a type: its listings read SQLite (refused without
// a load); a type that grows past the budget is dropped and read from
// SQLite from then on; answers stay right throughout.
TEST(SqliteStateStore, MemoryIndexBudgetRefusesAndDrops) {
  testing::TempDir dir;
  // ~330 bytes per small entity as counted (128 + 64 + id + blob).
  auto store = Open(dir.File("e.db"), nullptr, 0, 8 * 1024);
  ASSERT_NE(store, nullptr);
  const char* kSmall = "cityos.test.v1.Small";
  const char* kLarge = "cityos.test.v1.Large";
  std::vector<Entity> batch;
  for (int i = 0; i < 10; ++i) batch.push_back(MakeEntity(absl::StrFormat("s%02d", i), i, kSmall));
  for (int i = 0; i < 100; ++i) batch.push_back(MakeEntity(absl::StrFormat("l%03d", i), i, kLarge));
  ASSERT_TRUE(store->UpsertBatch(batch).ok());
  EntityFilter small, large;
  small.set_type(kSmall);
  large.set_type(kLarge);

  const uint64_t refused = testing::MemoryIndexLoads("refused"), loaded = testing::MemoryIndexLoads("loaded");
  uint64_t memory = testing::StoreReads("listing", "memory"), sqlite = testing::StoreReads("listing", "sqlite");
  EXPECT_EQ(QueryAll(*store, small, 100).size(), 10u);
  EXPECT_EQ(testing::MemoryIndexLoads("loaded") - loaded, 1u);
  EXPECT_EQ(testing::StoreReads("listing", "memory") - memory, 1u);
  EXPECT_EQ(QueryAll(*store, large, 30).size(), 100u);  // 4 pages
  EXPECT_EQ(testing::MemoryIndexLoads("refused") - refused, 1u);            // sized once, not loaded
  EXPECT_EQ(testing::StoreReads("listing", "sqlite") - sqlite, 4u);
  EXPECT_EQ(QueryAll(*store, large, 100).size(), 100u);
  EXPECT_EQ(testing::MemoryIndexLoads("refused") - refused, 1u);  // remembered: not sized again

  // The small type grows past the budget: dropped, and read from SQLite.
  std::vector<Entity> more;
  for (int i = 10; i < 40; ++i) more.push_back(MakeEntity(absl::StrFormat("s%02d", i), i, kSmall));
  ASSERT_TRUE(store->UpsertBatch(more).ok());
  memory = testing::StoreReads("listing", "memory");
  sqlite = testing::StoreReads("listing", "sqlite");
  std::vector<Entity> all = QueryAll(*store, small, 100);
  ASSERT_EQ(all.size(), 40u);
  EXPECT_EQ(all.back().id(), "s39");
  EXPECT_EQ(testing::StoreReads("listing", "memory") - memory, 0u);
  EXPECT_EQ(testing::StoreReads("listing", "sqlite") - sqlite, 1u);
  auto got = store->Get(kSmall, "s05");
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->attributes().at("n").int_value(), 5);
}

// Listings of a type with no entities try one load, not one per listing;
// its first entity is listed (from memory) right after it is written.
TEST(SqliteStateStore, MemoryIndexRemembersEmptyTypes) {
  testing::TempDir dir;
  auto store = Open(dir.File("e.db"));
  ASSERT_NE(store, nullptr);
  EntityFilter filter;
  filter.set_type(kType);
  const uint64_t empty = testing::MemoryIndexLoads("empty");
  for (int i = 0; i < 5; ++i) EXPECT_TRUE(QueryAll(*store, filter, 10).empty());
  EXPECT_EQ(testing::MemoryIndexLoads("empty") - empty, 1u);
  ASSERT_TRUE(store->Upsert(MakeEntity("a", 1)).ok());
  const uint64_t memory = testing::StoreReads("listing", "memory");
  EXPECT_EQ(Ids(QueryAll(*store, filter, 10)), std::vector<std::string>{"a"});
  EXPECT_EQ(testing::StoreReads("listing", "memory") - memory, 1u);
}

// A stored state that does not parse fails the same way from memory as from
// SQLite: DATA_LOSS for Get and for a listing that reaches it.
TEST(SqliteStateStore, MemoryIndexUnreadableStateIsDataLoss) {
  testing::TempDir dir;
  for (size_t memory_index : {size_t{256} << 20, size_t{0}}) {
    SCOPED_TRACE(memory_index);
    const std::string path = dir.File(absl::StrFormat("e-%d.db", memory_index));
    auto store = Open(path, nullptr, 0, memory_index);
    ASSERT_NE(store, nullptr);
    ASSERT_TRUE(store->UpsertBatch({MakeEntity("a", 1), MakeEntity("b", 2)}).ok());
    EntityFilter filter;
    filter.set_type(kType);
    // Listed while b is readable: with the index, the type is resident now,
    // with b's good state; the write below must notice the other writer and
    // drop it (else the listing would read the good state from memory).
    ASSERT_EQ(QueryAll(*store, filter, 10).size(), 2u);
    ASSERT_EQ(ExecElsewhere(path, "UPDATE entities SET blob=x'ffffffff' WHERE id='b'"), "");
    ASSERT_TRUE(store->Upsert(MakeEntity("c", 3)).ok());
    const uint64_t memory = testing::StoreReads("listing", "memory");
    auto page = store->Query(filter, {.page_size = 10});
    EXPECT_EQ(page.status().code(), absl::StatusCode::kDataLoss) << page.status();
    EXPECT_EQ(testing::StoreReads("listing", "memory") - memory, memory_index > 0 ? 1u : 0u);
    auto b = store->Get(kType, "b");
    EXPECT_EQ(b.status().code(), absl::StatusCode::kDataLoss) << b.status();
    EXPECT_NE(b.status().message().find("does not parse"), std::string::npos) << b.status();
  }
}

// The memory index mirrors the store's own commits. A write to the file by
// another connection (another process) is noticed at the store's next write
// or load: the index is dropped and loaded again, so the external write is
// then read, and nothing the store wrote is lost.
TEST(SqliteStateStore, MemoryIndexNoticesAnotherWriter) {
  testing::TempDir dir;
  const std::string path = dir.File("e.db");
  auto store = Open(path);
  ASSERT_NE(store, nullptr);
  ASSERT_TRUE(store->UpsertBatch({MakeEntity("a", 1), MakeEntity("b", 2)}).ok());
  EntityFilter filter;
  filter.set_type(kType);
  ASSERT_EQ(QueryAll(*store, filter, 10).size(), 2u);  // the type is loaded

  // Another connection copies b's state to a new entity c (a valid blob).
  ASSERT_EQ(ExecElsewhere(path,
                          "INSERT INTO entities SELECT type, 'c', version, observed_ns, "
                          "update_ns, lat, lon, owner, data_subject, blob FROM entities "
                          "WHERE id='b'"),
            "");

  ASSERT_TRUE(store->Upsert(MakeEntity("d", 4)).ok());
  std::vector<Entity> all = QueryAll(*store, filter, 10);
  // c's blob says id "b": the listing returns the stored bytes as they are.
  ASSERT_EQ(all.size(), 4u);
  EXPECT_EQ(all[3].id(), "d");
  EXPECT_TRUE(store->Get(kType, "c").ok());
  EXPECT_TRUE(store->Get(kType, "d").ok());
  EXPECT_EQ(*store->CountEntities(), 4u);

  // Noticed at a load too: another connection changes a's state and adds
  // an entity of another type; the first listing of that type (a load, no
  // write) drops the index, so a's new state is read next.
  ASSERT_EQ(ExecElsewhere(path,
                          "UPDATE entities SET blob=(SELECT blob FROM entities WHERE id='d') "
                          "WHERE id='a'; "
                          "INSERT INTO entities SELECT 'cityos.test.v1.Other', id, version, "
                          "observed_ns, update_ns, lat, lon, owner, data_subject, blob "
                          "FROM entities WHERE id='d'"),
            "");
  EntityFilter other;
  other.set_type("cityos.test.v1.Other");
  EXPECT_EQ(QueryAll(*store, other, 10).size(), 1u);
  all = QueryAll(*store, filter, 10);
  ASSERT_EQ(all.size(), 4u);
  EXPECT_EQ(all[0].id(), "d");  // a's stored bytes are now d's
}

// Random entities and filters: the store's answer (SQL narrowing + C++) must
// equal MatchesFilter applied to every entity.
TEST(SqliteStateStore, FiltersAgreeWithMatchesFilter) {
  testing::TempDir dir;
  auto store = Open(dir.File("entities.db"));
  std::mt19937 rng(12345);
  auto uniform = [&](double lo, double hi) { return std::uniform_real_distribution<>(lo, hi)(rng); };
  auto pick = [&](int n) { return static_cast<int>(rng() % n); };
  // Clusters: Quzhou, the antimeridian, near the north pole, Tokyo.
  const double centers[][2] = {{28.97, 118.87}, {-17.0, 179.95}, {89.6, 10.0}, {35.68, 139.76}};
  const char* owners[] = {"city", "grid", "hospital-a"};
  const char* regions[] = {"CN-ZJ-QZ", "CN-ZJ-QZ-KC", "CN-ZJ", "JP-13", "CN-ZJ-QZX"};
  std::vector<Entity> all;
  for (int i = 0; i < 2000; ++i) {
    Entity e = MakeEntity(absl::StrFormat("id-%05d", static_cast<int>(rng() % 100000)), pick(100));
    (*e.mutable_attributes())["kind"].set_string_value(pick(2) ? "bus" : "tram");
    if (pick(10) == 0) e.clear_observed_time();
    if (pick(8) != 0) {
      const auto& c = centers[pick(4)];
      double lat = std::clamp(c[0] + uniform(-0.5, 0.5), -90.0, 90.0);
      double lon = c[1] + uniform(-0.5, 0.5);
      if (lon > 180) lon -= 360;
      e.mutable_location()->set_latitude(lat);
      e.mutable_location()->set_longitude(lon);
    }
    e.set_owner(owners[pick(3)]);
    e.set_region(regions[pick(5)]);
    if (pick(3) == 0) e.set_data_subject(absl::StrFormat("p%d", pick(5)));
    all.push_back(e);
  }
  ASSERT_TRUE(store->UpsertBatch(all).ok());
  std::map<std::string, Entity> latest;
  for (const auto& e : all) latest[e.id()] = e;

  for (int round = 0; round < 300; ++round) {
    EntityFilter f;
    f.set_type(kType);
    if (pick(4) == 0) f.set_owner(owners[pick(3)]);
    if (pick(6) == 0) f.set_data_subject(absl::StrFormat("p%d", pick(5)));
    if (pick(8) == 0) {
      for (int k = 0; k < 5; ++k) f.add_ids(all[pick(all.size())].id());
      f.add_ids("id-absent");
    }
    if (pick(3) == 0) {
      auto* a = f.add_attributes();
      a->set_path("n");
      a->set_comparison(pick(2) ? exchange::v1::COMPARISON_LESS : exchange::v1::COMPARISON_GREATER);
      a->mutable_value()->set_int_value(pick(100));
    }
    if (pick(4) == 0) {
      auto* a = f.add_attributes();
      a->set_path("kind");
      a->set_comparison(exchange::v1::COMPARISON_EQUAL);
      a->mutable_value()->set_string_value("bus");
    }
    if (pick(3) == 0) {
      auto* r = f.mutable_observed();
      if (pick(2)) *r->mutable_start() = Ts(1700000000 + pick(50));
      if (pick(2)) *r->mutable_end() = Ts(1700000050 + pick(50));
    }
    const auto& c = centers[pick(4)];
    switch (pick(5)) {
      case 0: {
        auto* b = f.mutable_area()->mutable_bounding_box();
        double lat = c[0] + uniform(-0.6, 0.3), lon = c[1] + uniform(-0.6, 0.3);
        b->mutable_south_west()->set_latitude(lat);
        b->mutable_south_west()->set_longitude(lon > 180 ? lon - 360 : lon);
        double nlat = std::min(90.0, lat + uniform(0.05, 0.8));
        double nlon = lon + uniform(0.05, 0.8);
        b->mutable_north_east()->set_latitude(nlat);
        b->mutable_north_east()->set_longitude(nlon > 180 ? nlon - 360 : nlon);
        break;
      }
      case 1: {
        auto* circle = f.mutable_area()->mutable_circle();
        circle->mutable_center()->set_latitude(std::min(90.0, c[0] + uniform(-0.4, 0.4)));
        double lon = c[1] + uniform(-0.4, 0.4);
        circle->mutable_center()->set_longitude(lon > 180 ? lon - 360 : lon);
        circle->set_radius_m(uniform(1000, 60000));
        break;
      }
      case 2: {
        auto* poly = f.mutable_area()->mutable_polygon();
        double lat = std::min(89.0, c[0]), lon = std::min(179.0, c[1]);
        const double shape[][2] = {{-0.4, -0.4}, {0.3, -0.2}, {0.0, 0.0}, {0.4, 0.4}, {-0.2, 0.3}};
        for (const auto& s : shape) {
          auto* v = poly->add_vertices();
          v->set_latitude(lat + s[0] * uniform(0.5, 1.0));
          v->set_longitude(lon + s[1] * uniform(0.5, 1.0));
        }
        break;
      }
      case 3:
        f.mutable_area()->set_region(regions[pick(5)]);
        break;
      default:
        break;
    }
    ASSERT_TRUE(ValidateFilter(f).ok()) << ValidateFilter(f) << f.DebugString();
    std::vector<std::string> expected;
    for (const auto& [id, e] : latest) {
      if (MatchesFilter(f, e)) expected.push_back(id);
    }
    auto got = QueryAll(*store, f, 1 + pick(60));
    ASSERT_EQ(Ids(got), expected) << "round " << round << "\n" << f.DebugString();
  }
}

}  // namespace
}  // namespace cityos

namespace cityos {
namespace {

// A store with only the required methods, forwarding to another: it gets
// StateStore's default QuerySerialized (serializing what Query returns).
class ForwardingStore final : public StateStore {
 public:
  explicit ForwardingStore(StateStore* to) : to_(to) {}
  absl::StatusOr<Entity> Upsert(Entity e) override { return to_->Upsert(std::move(e)); }
  absl::StatusOr<std::vector<Entity>> UpsertBatch(std::vector<Entity> e) override {
    return to_->UpsertBatch(std::move(e));
  }
  absl::StatusOr<Entity> Get(std::string_view type, std::string_view id) override {
    return to_->Get(type, id);
  }
  absl::StatusOr<EntityPage> Query(const EntityFilter& f, const PageRequest& p) override {
    return to_->Query(f, p);
  }
  absl::StatusOr<EntityPage> History(std::string_view type, std::string_view id, absl::Time from,
                                     absl::Time to, const PageRequest& p) override {
    return to_->History(type, id, from, to, p);
  }
  absl::StatusOr<uint64_t> CountEntities() override { return to_->CountEntities(); }

 private:
  StateStore* const to_;
};

// QuerySerialized hands out the stored entities as bytes: page by page the
// same entities (parsed) and the same tokens as Query, `visible` seeing
// every examined entity's bytes, for filters SQL expresses whole and for
// ones matched in C++ (attribute condition, ids); the default
// implementation gives the same.
TEST(SqliteStateStore, QuerySerializedEqualsQuery) {
  testing::TempDir dir;
  auto store = Open(dir.File("e.db"));
  ASSERT_NE(store, nullptr);
  std::vector<Entity> batch;
  for (int i = 0; i < 40; ++i) batch.push_back(MakeEntity(absl::StrFormat("e%03d", i), i));
  ASSERT_TRUE(store->UpsertBatch(std::move(batch)).ok());
  ForwardingStore forwarding(store.get());

  std::vector<EntityFilter> filters(3);
  for (auto& f : filters) f.set_type(kType);
  auto* cond = filters[1].add_attributes();
  cond->set_path("n");
  cond->set_comparison(exchange::v1::COMPARISON_GREATER_OR_EQUAL);
  cond->mutable_value()->set_int_value(7);
  for (int i = 0; i < 40; i += 3) filters[2].add_ids(absl::StrFormat("e%03d", i));
  filters[2].add_ids("missing");

  for (StateStore* s : {static_cast<StateStore*>(store.get()),
                        static_cast<StateStore*>(&forwarding)}) {
    for (size_t k = 0; k < filters.size(); ++k) {
      SCOPED_TRACE(k);
      // Every other examined entity visible, on both sides.
      int parsed_calls = 0, serialized_calls = 0;
      PageRequest page{.page_size = 4, .token_context = "ctx"};
      page.visible = [&](const Entity& e) { return ++parsed_calls % 2 == 0 || e.id() == ""; };
      SerializedPageRequest raw{.page_size = 4, .token_context = "ctx"};
      raw.visible = [&](std::string_view bytes) {
        Entity e;
        EXPECT_TRUE(e.ParseFromArray(bytes.data(), static_cast<int>(bytes.size())));
        return ++serialized_calls % 2 == 0 || e.id() == "" ? SerializedVisibility::kVisible
                                                           : SerializedVisibility::kHidden;
      };
      int pages = 0;
      for (; pages < 100; ++pages) {
        auto want = store->Query(filters[k], page);
        auto got = s->QuerySerialized(filters[k], raw);
        ASSERT_TRUE(want.ok()) << want.status();
        ASSERT_TRUE(got.ok()) << got.status();
        ASSERT_EQ(got->entities.size(), want->entities.size());
        for (size_t i = 0; i < want->entities.size(); ++i) {
          Entity e;
          ASSERT_TRUE(e.ParseFromString(got->entities[i]));
          EXPECT_EQ(e.SerializeAsString(), want->entities[i].SerializeAsString());
        }
        EXPECT_EQ(got->next_page_token, want->next_page_token);
        EXPECT_EQ(serialized_calls, parsed_calls);
        if (want->next_page_token.empty()) break;
        page.page_token = raw.page_token = want->next_page_token;
      }
      EXPECT_GT(pages, 0);
    }
  }
  // A foreign token is refused the same way.
  SerializedPageRequest bad{.page_token = "bm90LWEtdG9rZW4"};
  EXPECT_EQ(store->QuerySerialized(filters[0], bad).status().code(),
            absl::StatusCode::kInvalidArgument);
}

// `visible` saying an entity's bytes do not parse ends the query there, on
// the SQLite store and on the default implementation: DATA_LOSS, and no
// later entity is handed to `visible`.
TEST(SqliteStateStore, QuerySerializedStopsAtAnUnreadableEntity) {
  testing::TempDir dir;
  auto store = Open(dir.File("e.db"));
  ASSERT_NE(store, nullptr);
  std::vector<Entity> batch;
  for (int i = 0; i < 20; ++i) batch.push_back(MakeEntity(absl::StrFormat("e%03d", i), i));
  ASSERT_TRUE(store->UpsertBatch(std::move(batch)).ok());
  ForwardingStore forwarding(store.get());
  EntityFilter filter;
  filter.set_type(kType);
  for (StateStore* s : {static_cast<StateStore*>(store.get()),
                        static_cast<StateStore*>(&forwarding)}) {
    std::vector<std::string> seen;
    SerializedPageRequest raw{.page_size = 10};
    raw.visible = [&](std::string_view bytes) {
      Entity e;
      EXPECT_TRUE(e.ParseFromArray(bytes.data(), static_cast<int>(bytes.size())));
      seen.push_back(e.id());
      return e.id() == "e003" ? SerializedVisibility::kUnreadable : SerializedVisibility::kVisible;
    };
    auto got = s->QuerySerialized(filter, raw);
    EXPECT_EQ(got.status().code(), absl::StatusCode::kDataLoss) << got.status();
    EXPECT_EQ(seen, (std::vector<std::string>{"e000", "e001", "e002", "e003"}));
  }
}

}  // namespace
}  // namespace cityos
