#include "store/latest_index.h"

#include <algorithm>
#include <atomic>
#include <utility>

#include "absl/container/inlined_vector.h"
#include "absl/strings/string_view.h"
#include "cityos/logging.h"

namespace cityos::store_internal {
namespace {

// What one state costs beyond its bytes (its string, the shared_ptr's
// control block, the version record).
constexpr size_t kVersionOverhead = 64;

absl::string_view AV(std::string_view s) { return absl::string_view(s.data(), s.size()); }

}  // namespace

struct LatestIndex::TypeEntities {
  struct Version {
    uint64_t commit;
    std::shared_ptr<const std::string> state;
  };
  struct Entry {
    // Newest first; all but the first only while an open snapshot may need
    // them.
    absl::InlinedVector<Version, 1> versions;
  };
  absl::btree_map<std::string, Entry> by_id;  // changed only under mu_ (exclusive)
};

struct LatestIndex::TypeState {
  std::shared_ptr<TypeEntities> entities;  // null: not resident
  size_t bytes = 0;                        // resident: what its entities cost
  // Not resident: the size it was refused or dropped at (0 = never tried).
  size_t refused_bytes = 0;
  std::atomic<uint64_t> last_open{0};
};

LatestIndex::LatestIndex(size_t budget_bytes) : budget_(budget_bytes) {}
LatestIndex::~LatestIndex() = default;

LatestIndex::Snapshot::Snapshot(Snapshot&& other) noexcept
    : index_(std::exchange(other.index_, nullptr)),
      entities_(std::move(other.entities_)),
      commit_(other.commit_) {}

LatestIndex::Snapshot::~Snapshot() {
  if (index_ != nullptr) index_->Release(commit_);
}

int LatestIndex::Snapshot::Next(
    std::string_view after, int limit,
    absl::FunctionRef<void(std::string_view id, std::string_view state)> row) const {
  int n = 0;
  absl::ReaderMutexLock lock(&index_->mu_);
  const auto& by_id = entities_->by_id;
  for (auto it = by_id.upper_bound(AV(after)); it != by_id.end() && n < limit; ++it) {
    for (const TypeEntities::Version& v : it->second.versions) {
      if (v.commit <= commit_) {
        row(it->first, *v.state);
        ++n;
        break;
      }
    }  // no state at or before the snapshot: created after it, not listed
  }
  return n;
}

std::optional<LatestIndex::Snapshot> LatestIndex::Open(std::string_view type) {
  absl::ReaderMutexLock lock(&mu_);
  auto it = types_.find(AV(type));
  if (it == types_.end() || it->second->entities == nullptr) return std::nullopt;
  static std::atomic<uint64_t> ticks{0};
  it->second->last_open.store(ticks.fetch_add(1, std::memory_order_relaxed) + 1,
                              std::memory_order_relaxed);
  {
    absl::MutexLock snapshots(&snapshots_mu_);
    ++snapshots_[commit_];
  }
  return Snapshot(this, it->second->entities, commit_);
}

void LatestIndex::Release(uint64_t commit) {
  absl::MutexLock lock(&snapshots_mu_);
  auto it = snapshots_.find(commit);
  if (it != snapshots_.end() && --it->second == 0) snapshots_.erase(it);
}

std::optional<LatestIndex::Found> LatestIndex::Latest(std::string_view type,
                                                      std::string_view id) {
  absl::ReaderMutexLock lock(&mu_);
  auto t = types_.find(AV(type));
  if (t == types_.end() || t->second->entities == nullptr) return std::nullopt;
  const auto& by_id = t->second->entities->by_id;
  auto e = by_id.find(AV(id));
  if (e == by_id.end()) return Found{};
  return Found{e->second.versions.front().state};
}

bool LatestIndex::ShouldLoad(std::string_view type) {
  absl::ReaderMutexLock lock(&mu_);
  auto it = types_.find(AV(type));
  if (it == types_.end()) return true;
  const TypeState& t = *it->second;
  return t.entities == nullptr && t.refused_bytes <= budget_ - std::min(budget_, bytes_);
}

bool LatestIndex::Load(std::string_view type, absl::FunctionRef<bool(RowSink row)> read) {
  size_t room;
  {
    absl::ReaderMutexLock lock(&mu_);
    auto it = types_.find(AV(type));
    if (it != types_.end() && it->second->entities != nullptr) return true;
    room = budget_ - std::min(budget_, bytes_);
  }
  // Only the store's writer-lock holders (Load, Apply, Clear) change the
  // index, so `room` holds until the type is installed below.
  auto entities = std::make_shared<TypeEntities>();
  size_t bytes = 0;
  bool fits = true;
  auto hint = entities->by_id.end();
  const bool read_ok = read([&](std::string_view id, std::string_view state) {
    bytes += kEntryOverhead + id.size() + kVersionOverhead + state.size();
    if (bytes > room) {
      fits = false;
      return false;
    }
    TypeEntities::Entry entry;
    entry.versions.push_back({0, std::make_shared<const std::string>(state)});
    hint = entities->by_id.emplace_hint(hint, std::string(id), std::move(entry));
    ++hint;
    return true;
  });
  absl::MutexLock lock(&mu_);
  std::unique_ptr<TypeState>& t = types_[AV(type)];
  if (t == nullptr) t = std::make_unique<TypeState>();
  if (!fits) {
    t->refused_bytes = bytes;
    LogInfo("store", "memory index: a type does not fit; its listings read SQLite",
            {{"type", std::string(type)},
             {"bytes_at_least", std::to_string(bytes)},
             {"room", std::to_string(room)}});
    return false;
  }
  if (!read_ok || entities->by_id.empty()) {
    // Nothing learned; an empty type is not kept (a listing of a type with
    // no entities costs SQLite nothing, and unknown names must not fill the
    // index).
    if (t->refused_bytes == 0) types_.erase(AV(type));
    return false;
  }
  // The states are those of the last commit: every snapshot opened from now
  // on is at or after it.
  for (auto& [id, entry] : entities->by_id) entry.versions.front().commit = commit_;
  t->entities = std::move(entities);
  resident_.fetch_add(1, std::memory_order_release);
  t->bytes = bytes;
  t->refused_bytes = 0;
  bytes_ += bytes;
  return true;
}

void LatestIndex::Apply(std::vector<Written> batch) {
  absl::MutexLock lock(&mu_);
  const uint64_t commit = ++commit_;
  // The commits of the open snapshots, ascending. A snapshot opened from
  // now on is at `commit`, and reads the newest states only.
  absl::InlinedVector<uint64_t, 8> open;
  {
    absl::MutexLock snapshots(&snapshots_mu_);
    for (const auto& [at, count] : snapshots_) open.push_back(at);
  }
  TypeState* t = nullptr;
  std::string_view t_name;
  for (Written& w : batch) {
    if (t == nullptr || w.type != t_name) {
      auto it = types_.find(AV(w.type));
      t = it == types_.end() || it->second->entities == nullptr ? nullptr : it->second.get();
      t_name = w.type;
    }
    if (t == nullptr) continue;
    auto& by_id = t->entities->by_id;
    auto [e, inserted] = by_id.try_emplace(AV(w.id));
    auto& versions = e->second.versions;
    if (inserted) t->bytes += kEntryOverhead + w.id.size();
    const size_t state_bytes = kVersionOverhead + w.state.size();
    auto state = std::make_shared<const std::string>(std::move(w.state));
    if (!versions.empty() && versions.front().commit == commit) {
      // The same entity twice in one batch: only the last state is visible.
      t->bytes -= kVersionOverhead + versions.front().state->size();
      versions.front().state = std::move(state);
    } else {
      versions.insert(versions.begin(), TypeEntities::Version{commit, std::move(state)});
    }
    t->bytes += state_bytes;
    // An older state is kept while an open snapshot reads it: one at or
    // after the state's commit and before the commit of the state that
    // replaced it. (Dropping a state no snapshot reads changes what no
    // snapshot reads, so each is judged against its original neighbour.)
    size_t kept = 1;
    uint64_t newer = versions[0].commit;
    for (size_t i = 1; i < versions.size(); ++i) {
      const uint64_t at = versions[i].commit;
      auto reader = std::lower_bound(open.begin(), open.end(), at);
      if (reader != open.end() && *reader < newer) {
        if (kept != i) versions[kept] = std::move(versions[i]);
        ++kept;
      } else {
        t->bytes -= kVersionOverhead + versions[i].state->size();
      }
      newer = at;
    }
    versions.erase(versions.begin() + static_cast<ptrdiff_t>(kept), versions.end());
  }
  // Totals from the types' own counts (cheaper than tracking each change).
  size_t total = 0;
  for (const auto& [name, type] : types_) {
    if (type->entities != nullptr) total += type->bytes;
  }
  bytes_ = total;
  if (bytes_ > budget_) EvictOverBudget();
}

void LatestIndex::EvictOverBudget() {
  while (bytes_ > budget_) {
    TypeState* lru = nullptr;
    const std::string* lru_name = nullptr;
    for (auto& [name, type] : types_) {
      if (type->entities == nullptr) continue;
      if (lru == nullptr || type->last_open.load(std::memory_order_relaxed) <
                                lru->last_open.load(std::memory_order_relaxed)) {
        lru = type.get();
        lru_name = &name;
      }
    }
    if (lru == nullptr) return;
    LogInfo("store", "memory index over budget: a type is dropped; its listings read SQLite",
            {{"type", *lru_name},
             {"bytes", std::to_string(lru->bytes)},
             {"budget", std::to_string(budget_)}});
    bytes_ -= lru->bytes;
    lru->refused_bytes = lru->bytes;
    lru->bytes = 0;
    lru->entities.reset();  // open snapshots keep their copy
    resident_.fetch_sub(1, std::memory_order_release);
  }
}

void LatestIndex::Clear() {
  absl::MutexLock lock(&mu_);
  types_.clear();
  resident_.store(0, std::memory_order_release);
  bytes_ = 0;
}

size_t LatestIndex::bytes() {
  absl::ReaderMutexLock lock(&mu_);
  return bytes_;
}

size_t LatestIndex::resident_types() {
  absl::ReaderMutexLock lock(&mu_);
  size_t n = 0;
  for (const auto& [name, type] : types_) n += type->entities != nullptr ? 1 : 0;
  return n;  // counted, not resident_: tests check the two agree
}

size_t LatestIndex::versions(std::string_view type, std::string_view id) {
  absl::ReaderMutexLock lock(&mu_);
  auto t = types_.find(AV(type));
  if (t == types_.end() || t->second->entities == nullptr) return 0;
  auto e = t->second->entities->by_id.find(AV(id));
  return e == t->second->entities->by_id.end() ? 0 : e->second.versions.size();
}

}  // namespace cityos::store_internal
