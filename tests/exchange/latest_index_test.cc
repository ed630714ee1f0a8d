// store_internal::LatestIndex, the entity store's memory index: snapshots
// across commits, which old states are kept and for how long, the memory
// budget (refused loads, dropping the least recently listed type), batches
// naming an entity twice, and point reads.
#include "store/latest_index.h"

#include <atomic>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/str_format.h"
#include "gtest/gtest.h"

namespace cityos::store_internal {
namespace {

using Rows = std::vector<std::pair<std::string, std::string>>;

constexpr size_t kBig = size_t{1} << 30;

using LoadResult = LatestIndex::LoadResult;

LoadResult LoadRows(LatestIndex& index, const std::string& type, const Rows& rows) {
  return index.Load(type, [&](LatestIndex::RowSink sink) {
    for (const auto& [id, state] : rows) {
      if (!sink(id, state)) break;
    }
    return true;
  });
}

// Every row of a snapshot after `after`, read `round` rows at a time.
Rows ReadAll(const LatestIndex::Snapshot& s, int round = 2, std::string after = "") {
  Rows rows;
  while (true) {
    int n = s.Next(after, round, [&](std::string_view id, std::string_view state) {
      rows.emplace_back(std::string(id), std::string(state));
    });
    if (n < round) return rows;
    after = rows.back().first;
  }
}

void Write(LatestIndex& index, const std::string& type,
           const std::vector<std::pair<std::string, std::string>>& batch) {
  std::vector<LatestIndex::Written> written;
  for (const auto& [id, state] : batch) written.push_back({type, id, state});
  index.Apply(std::move(written));
}

TEST(LatestIndex, SnapshotKeepsItsStatesAcrossCommits) {
  LatestIndex index(kBig);
  EXPECT_FALSE(index.Open("t").has_value());
  EXPECT_FALSE(index.wants_states());
  ASSERT_EQ(LoadResult::kLoaded, LoadRows(index, "t", {{"a", "a1"}, {"b", "b1"}, {"d", "d1"}}));
  EXPECT_TRUE(index.wants_states());
  std::optional<LatestIndex::Snapshot> before = index.Open("t");
  ASSERT_TRUE(before.has_value());
  Write(index, "t", {{"a", "a2"}});
  Write(index, "t", {{"a", "a3"}, {"c", "c1"}});  // c is created after `before`
  std::optional<LatestIndex::Snapshot> middle = index.Open("t");
  Write(index, "t", {{"b", "b2"}, {"a", "a4"}});
  std::optional<LatestIndex::Snapshot> after = index.Open("t");

  EXPECT_EQ(ReadAll(*before), (Rows{{"a", "a1"}, {"b", "b1"}, {"d", "d1"}}));
  EXPECT_EQ(ReadAll(*middle), (Rows{{"a", "a3"}, {"b", "b1"}, {"c", "c1"}, {"d", "d1"}}));
  EXPECT_EQ(ReadAll(*after), (Rows{{"a", "a4"}, {"b", "b2"}, {"c", "c1"}, {"d", "d1"}}));
  // Rounds of every size, from every cursor.
  for (int round = 1; round <= 5; ++round) {
    EXPECT_EQ(ReadAll(*middle, round, "a"), (Rows{{"b", "b1"}, {"c", "c1"}, {"d", "d1"}}));
    EXPECT_EQ(ReadAll(*before, round, "b"), (Rows{{"d", "d1"}}));
    EXPECT_EQ(ReadAll(*after, round, "d"), Rows{});
  }
  // a2 is read by no snapshot (none was opened between a2 and a3): dropped
  // at a's next write. a1 (before), a3 (middle) and a4 stay.
  EXPECT_EQ(index.versions("t", "a"), 3u);
  EXPECT_EQ(index.versions("t", "b"), 2u);
  EXPECT_EQ(index.versions("t", "c"), 1u);
}

TEST(LatestIndex, OldStatesGoOnceNoSnapshotReadsThem) {
  LatestIndex index(kBig);
  ASSERT_EQ(LoadResult::kLoaded, LoadRows(index, "t", {{"a", "a1"}, {"b", "b1"}}));
  const size_t loaded = index.bytes();
  {
    std::optional<LatestIndex::Snapshot> s = index.Open("t");
    Write(index, "t", {{"a", "a2"}});
    Write(index, "t", {{"a", "a3"}});
    EXPECT_EQ(index.versions("t", "a"), 2u);  // a1 for `s`, a3; a2 is read by none
    EXPECT_GT(index.bytes(), loaded);
  }
  // The snapshot is closed: the next write of a drops everything but its
  // newest state. (b, never rewritten, had one state all along.)
  Write(index, "t", {{"a", "a4"}});
  EXPECT_EQ(index.versions("t", "a"), 1u);
  EXPECT_EQ(index.versions("t", "b"), 1u);
  EXPECT_EQ(index.bytes(), loaded);
  // A state kept for a snapshot goes at a later commit once the snapshot
  // has closed, even when its entity is not written again.
  {
    std::optional<LatestIndex::Snapshot> s = index.Open("t");
    Write(index, "t", {{"a", "a5"}});
    EXPECT_EQ(index.versions("t", "a"), 2u);
  }
  Write(index, "t", {{"b", "b1"}});
  EXPECT_EQ(index.versions("t", "a"), 1u);
  EXPECT_EQ(index.bytes(), loaded);
  // Without open snapshots nothing is ever kept.
  for (int i = 0; i < 100; ++i) Write(index, "t", {{"b", "b" + std::to_string(i % 10)}});
  EXPECT_EQ(index.versions("t", "b"), 1u);
  EXPECT_EQ(index.bytes(), loaded);
}

TEST(LatestIndex, MovedSnapshotReleasesOnce) {
  LatestIndex index(kBig);
  ASSERT_EQ(LoadResult::kLoaded, LoadRows(index, "t", {{"a", "a1"}}));
  {
    std::optional<LatestIndex::Snapshot> s = index.Open("t");
    LatestIndex::Snapshot moved = std::move(*s);
    s.reset();  // the moved-from one releases nothing
    Write(index, "t", {{"a", "a2"}});
    EXPECT_EQ(index.versions("t", "a"), 2u);
    EXPECT_EQ(ReadAll(moved), (Rows{{"a", "a1"}}));
  }
  Write(index, "t", {{"a", "a3"}});
  EXPECT_EQ(index.versions("t", "a"), 1u);
}

TEST(LatestIndex, SameEntityTwiceInOneBatch) {
  LatestIndex index(kBig);
  ASSERT_EQ(LoadResult::kLoaded, LoadRows(index, "t", {{"a", "a1"}}));
  std::optional<LatestIndex::Snapshot> before = index.Open("t");
  Write(index, "t", {{"a", "a2"}, {"n", "n1"}, {"a", "a3"}, {"n", "n2"}});
  std::optional<LatestIndex::Snapshot> after = index.Open("t");
  EXPECT_EQ(ReadAll(*before), (Rows{{"a", "a1"}}));
  EXPECT_EQ(ReadAll(*after), (Rows{{"a", "a3"}, {"n", "n2"}}));
  EXPECT_EQ(index.versions("t", "a"), 2u);  // a1 and a3: a2 was never visible
  EXPECT_EQ(index.versions("t", "n"), 1u);
}

TEST(LatestIndex, WritesToTypesNotResidentAreIgnored) {
  LatestIndex index(kBig);
  Write(index, "t", {{"a", "a1"}});
  EXPECT_FALSE(index.Open("t").has_value());
  EXPECT_FALSE(index.Latest("t", "a").has_value());
  EXPECT_EQ(index.bytes(), 0u);
  EXPECT_TRUE(index.ShouldLoad("t"));
}

TEST(LatestIndex, EmptyTypeIsRememberedUntilItsFirstWrite) {
  LatestIndex index(kBig);
  EXPECT_FALSE(index.wants_commits());
  EXPECT_EQ(LoadRows(index, "nothing", {}), LoadResult::kEmpty);
  EXPECT_EQ(index.resident_types(), 0u);
  EXPECT_EQ(index.bytes(), 0u);
  // Not tried again on every listing...
  EXPECT_FALSE(index.ShouldLoad("nothing"));
  EXPECT_TRUE(index.ShouldLoad("other"));
  // ...until a commit writes an entity of it (so commits must be applied,
  // but their states are not needed: nothing is resident).
  EXPECT_TRUE(index.wants_commits());
  EXPECT_FALSE(index.wants_states());
  Write(index, "other", {{"x", "x1"}});
  EXPECT_FALSE(index.ShouldLoad("nothing"));
  Write(index, "nothing", {{"a", "a1"}});
  EXPECT_TRUE(index.ShouldLoad("nothing"));
  EXPECT_FALSE(index.wants_commits());
  EXPECT_FALSE(index.Open("nothing").has_value());  // the write itself loads nothing
}

TEST(LatestIndex, RememberedEmptyTypesAreBounded) {
  LatestIndex index(kBig);
  for (size_t i = 0; i < LatestIndex::kMaxEmptyTypes + 10; ++i) {
    EXPECT_EQ(LoadRows(index, "t" + std::to_string(i), {}), LoadResult::kEmpty);
  }
  // The set was forgotten once full: the first names may be tried again.
  EXPECT_TRUE(index.ShouldLoad("t0"));
  EXPECT_FALSE(index.ShouldLoad("t" + std::to_string(LatestIndex::kMaxEmptyTypes + 5)));
}

TEST(LatestIndex, FailedReadLoadsNothing) {
  LatestIndex index(kBig);
  EXPECT_EQ(index.Load("t",
                       [](LatestIndex::RowSink sink) {
                         sink("a", "a1");
                         return false;  // the read failed after one row
                       }),
            LoadResult::kFailed);
  EXPECT_FALSE(index.Open("t").has_value());
  EXPECT_EQ(index.bytes(), 0u);
  EXPECT_TRUE(index.ShouldLoad("t"));
}

TEST(LatestIndex, LatestReadsTheNewestState) {
  LatestIndex index(kBig);
  ASSERT_EQ(LoadResult::kLoaded, LoadRows(index, "t", {{"a", "a1"}}));
  std::optional<LatestIndex::Snapshot> s = index.Open("t");  // keeps a1 too
  Write(index, "t", {{"a", "a2"}});
  std::optional<LatestIndex::Found> a = index.Latest("t", "a");
  ASSERT_TRUE(a.has_value());
  ASSERT_NE(a->state, nullptr);
  EXPECT_EQ(*a->state, "a2");
  std::optional<LatestIndex::Found> missing = index.Latest("t", "b");
  ASSERT_TRUE(missing.has_value());  // resident: the answer is "no such entity"
  EXPECT_EQ(missing->state, nullptr);
  EXPECT_FALSE(index.Latest("u", "a").has_value());  // not resident: ask SQLite
}

TEST(LatestIndex, LoadThatDoesNotFitIsRefusedUntilThereIsRoom) {
  const std::string state(1000, 'x');
  Rows big;
  for (int i = 0; i < 10; ++i) big.emplace_back("big" + std::to_string(i), state);
  Rows small = {{"s", "s1"}};
  // Room for the small type and about half the big one.
  LatestIndex index(6 * 1000 + 2 * 1024);
  ASSERT_EQ(LoadResult::kLoaded, LoadRows(index, "small", small));
  EXPECT_TRUE(index.ShouldLoad("big"));
  EXPECT_EQ(LoadRows(index, "big", big), LoadResult::kRefused);
  EXPECT_FALSE(index.Open("big").has_value());
  EXPECT_EQ(index.resident_types(), 1u);
  EXPECT_TRUE(index.wants_commits());
  // Refused for a size that still does not fit: not tried again.
  EXPECT_FALSE(index.ShouldLoad("big"));
  EXPECT_TRUE(index.Open("small").has_value());
}

TEST(LatestIndex, GrowthOverBudgetDropsTheLeastRecentlyListedType) {
  const std::string state(1000, 'x');
  LatestIndex index(8 * 1000);
  ASSERT_EQ(LoadResult::kLoaded, LoadRows(index, "old", {{"o1", state}, {"o2", state}}));
  ASSERT_EQ(LoadResult::kLoaded, LoadRows(index, "new", {{"n1", state}, {"n2", state}}));
  std::optional<LatestIndex::Snapshot> old_snapshot = index.Open("old");
  old_snapshot.reset();
  std::optional<LatestIndex::Snapshot> held = index.Open("new");
  std::optional<LatestIndex::Snapshot> kept = index.Open("old");  // "old" is now the more recent
  ASSERT_TRUE(kept.has_value());
  held.reset();
  // "new" grows past the budget: "new" was listed less recently than
  // "old", so "new" goes, even though it is the one that grew.
  Write(index, "new", {{"n3", state}, {"n4", state}, {"n5", state}, {"n6", state}});
  EXPECT_FALSE(index.Open("new").has_value());
  EXPECT_TRUE(index.Open("old").has_value());
  EXPECT_LE(index.bytes(), 8u * 1000);
  // Dropped at more than the budget has room for: not loaded again.
  EXPECT_FALSE(index.ShouldLoad("new"));
  // A snapshot of a dropped type still reads its states.
  std::optional<LatestIndex::Snapshot> reopened = index.Open("old");
  Write(index, "old", {{"o3", state}, {"o4", state}, {"o5", state}, {"o6", state},
                       {"o7", state}, {"o8", state}});
  EXPECT_EQ(index.resident_types(), 0u);
  EXPECT_FALSE(index.wants_commits());
  EXPECT_EQ(index.bytes(), 0u);
  EXPECT_EQ(ReadAll(*reopened), (Rows{{"o1", state}, {"o2", state}}));
  EXPECT_EQ(ReadAll(*kept), (Rows{{"o1", state}, {"o2", state}}));
}

TEST(LatestIndex, FitsRefusesAndRemembers) {
  LatestIndex index(10000);
  EXPECT_TRUE(index.Fits("t", 10000));
  EXPECT_TRUE(index.ShouldLoad("t"));
  EXPECT_FALSE(index.Fits("t", 10001));
  EXPECT_FALSE(index.ShouldLoad("t"));
  // A load does not ask Fits: the store does, before taking the writer lock.
  ASSERT_EQ(LoadResult::kLoaded, LoadRows(index, "u", {{"a", std::string(5000, 'x')}}));
  EXPECT_FALSE(index.Fits("v", 6000));
}

// Readers on several threads open snapshots and read them in small rounds
// while a writer applies generations (every entity rewritten in one batch,
// some entities created later): each snapshot must hold one generation, and
// every entity that existed at it. Old states must all be gone at the end.
TEST(LatestIndex, SnapshotsHoldUnderConcurrentCommits) {
  LatestIndex index(kBig);
  constexpr int kEntities = 100;
  constexpr int kGenerations = 300;
  auto id = [](int i) { return absl::StrFormat("e%03d", i); };
  Rows initial;
  for (int i = 0; i < kEntities; i += 2) initial.emplace_back(id(i), "0");
  ASSERT_EQ(LoadResult::kLoaded, LoadRows(index, "t", initial));
  std::atomic<bool> done{false};
  std::atomic<int> failures{0};
  std::vector<std::thread> readers;
  for (int r = 0; r < 3; ++r) {
    readers.emplace_back([&] {
      int reads = 0;
      while (!done.load() || reads < 50) {
        std::optional<LatestIndex::Snapshot> s = index.Open("t");
        if (!s.has_value()) {
          failures.fetch_add(1);
          return;
        }
        Rows rows = ReadAll(*s, 7);
        ++reads;
        std::set<std::string> generations;
        for (const auto& [id, state] : rows) generations.insert(state);
        if (generations.size() != 1) {
          failures.fetch_add(1);
          continue;
        }
        // Generation 0 has the even ids; from generation 1 on, all of them.
        const size_t expected = *generations.begin() == "0" ? kEntities / 2 : kEntities;
        if (rows.size() != expected) failures.fetch_add(1);
      }
    });
  }
  for (int g = 1; g <= kGenerations; ++g) {
    std::vector<std::pair<std::string, std::string>> batch;
    for (int i = 0; i < kEntities; ++i) batch.emplace_back(id(i), std::to_string(g));
    Write(index, "t", batch);
  }
  done.store(true);
  for (auto& t : readers) t.join();
  EXPECT_EQ(failures.load(), 0);
  Write(index, "t", {{id(0), "last"}});  // no snapshot open: everything old goes
  for (int i = 0; i < kEntities; ++i) EXPECT_EQ(index.versions("t", id(i)), 1u) << i;
}

TEST(LatestIndex, ClearDropsEverythingButOpenSnapshotsStillRead) {
  LatestIndex index(kBig);
  ASSERT_EQ(LoadResult::kLoaded, LoadRows(index, "t", {{"a", "a1"}}));
  std::optional<LatestIndex::Snapshot> s = index.Open("t");
  EXPECT_TRUE(index.wants_commits());
  index.Clear();
  EXPECT_FALSE(index.wants_commits());
  EXPECT_FALSE(index.Open("t").has_value());
  EXPECT_EQ(index.bytes(), 0u);
  EXPECT_TRUE(index.ShouldLoad("t"));
  EXPECT_EQ(ReadAll(*s), (Rows{{"a", "a1"}}));
  ASSERT_EQ(LoadResult::kLoaded, LoadRows(index, "t", {{"a", "a2"}}));
  EXPECT_EQ(ReadAll(*index.Open("t")), (Rows{{"a", "a2"}}));
}

}  // namespace
}  // namespace cityos::store_internal
