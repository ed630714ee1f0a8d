#include "store/latest_index.h"

#include <algorithm>
#include <utility>

#include "absl/container/inlined_vector.h"
#include "cityos/logging.h"
#include "core/strings.h"

namespace cityos::store_internal {
namespace {

// One series of a counter family with one label.
Counter LabelledCounter(std::string_view name, std::string_view help, std::string_view label,
                        std::string_view value) {
  return MetricsRegistry::Global()
      .AddCounterFamily(name, help, {std::string(label)})
      .WithLabels({value});
}

Counter LoadsCounter(std::string_view result) {
  return LabelledCounter("cityos_store_memory_index_loads_total",
                         "Types the entity store's memory index tried to load, by result: "
                         "loaded, refused (too large for the budget), empty, failed.",
                         "result", result);
}

Counter DroppedCounter(std::string_view reason) {
  return LabelledCounter("cityos_store_memory_index_dropped_total",
                         "Resident types the memory index dropped, by reason: budget (writes "
                         "grew past it), other_writer (another connection wrote the file).",
                         "reason", reason);
}

}  // namespace

struct LatestIndex::TypeEntities {
  struct Version {
    uint64_t commit;
    std::shared_ptr<const std::string> state;
  };
  struct Entry {
    // Newest first; all but the first only while an open snapshot reads
    // them.
    absl::InlinedVector<Version, 1> versions;
  };
  absl::btree_map<std::string, Entry> by_id;  // changed only under mu_ (exclusive)
};

struct LatestIndex::TypeState {
  std::shared_ptr<TypeEntities> entities;  // null: not resident
  size_t bytes = 0;                        // resident: what its entities cost
  // Not resident: the size it was refused or dropped at (0 = never).
  size_t refused_bytes = 0;
  std::atomic<uint64_t> last_open{0};
};

LatestIndex::LatestIndex(size_t budget_bytes)
    : budget_(budget_bytes),
      bytes_gauge_(MetricsRegistry::Global().AddGauge(
          "cityos_store_memory_index_bytes",
          "Bytes the entity stores' memory indexes hold (states plus fixed per-entity and "
          "per-state overheads), summed over the stores of the process.")),
      loaded_(LoadsCounter("loaded")),
      refused_(LoadsCounter("refused")),
      empty_loads_(LoadsCounter("empty")),
      failed_loads_(LoadsCounter("failed")),
      dropped_budget_(DroppedCounter("budget")),
      dropped_cleared_(DroppedCounter("other_writer")) {}

LatestIndex::~LatestIndex() {
  absl::MutexLock lock(&mu_);
  SetBytes(0);
}

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
  it->second->last_open.store(ticks_.fetch_add(1, std::memory_order_relaxed) + 1,
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

LatestIndex::OpenCommits LatestIndex::OpenSnapshotCommits() {
  OpenCommits open;
  absl::MutexLock snapshots(&snapshots_mu_);
  open.reserve(snapshots_.size());
  for (const auto& [at, count] : snapshots_) open.push_back(at);
  return open;
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
  if (empty_.contains(AV(type))) return false;
  auto it = types_.find(AV(type));
  if (it == types_.end()) return true;
  const TypeState& t = *it->second;
  return t.entities == nullptr && t.refused_bytes <= budget_ - std::min(budget_, bytes_);
}

bool LatestIndex::Fits(std::string_view type, size_t estimated_bytes) {
  absl::MutexLock lock(&mu_);
  const size_t room = budget_ - std::min(budget_, bytes_);
  if (estimated_bytes <= room) return true;
  RefuseLocked(type, estimated_bytes, room);
  return false;
}

void LatestIndex::RefuseLocked(std::string_view type, size_t bytes, size_t room) {
  std::unique_ptr<TypeState>& t = types_[AV(type)];
  if (t == nullptr) t = std::make_unique<TypeState>();
  if (t->entities != nullptr) return;  // resident after all: nothing to refuse
  t->refused_bytes = std::max<size_t>(bytes, 1);
  refused_.Add();
  LogInfo("store", "memory index: a type does not fit; its listings read SQLite",
          {{"type", std::string(type)},
           {"bytes_at_least", std::to_string(bytes)},
           {"room", std::to_string(room)}});
}

LatestIndex::LoadResult LatestIndex::Load(std::string_view type,
                                          absl::FunctionRef<bool(RowSink row)> read) {
  size_t room;
  {
    absl::ReaderMutexLock lock(&mu_);
    auto it = types_.find(AV(type));
    if (it != types_.end() && it->second->entities != nullptr) {
      return LoadResult::kAlreadyResident;
    }
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
  if (!read_ok) {
    failed_loads_.Add();
    return LoadResult::kFailed;
  }
  if (!fits) {
    RefuseLocked(type, bytes, room);
    return LoadResult::kRefused;
  }
  if (entities->by_id.empty()) {
    // Not kept (unknown type names must not fill the index), but remembered
    // until its first write, so its listings do not try again each time.
    if (empty_.size() >= kMaxEmptyTypes) empty_.clear();
    empty_.emplace(AV(type));
    UpdateWantsCommits();
    empty_loads_.Add();
    return LoadResult::kEmpty;
  }
  std::unique_ptr<TypeState>& t = types_[AV(type)];
  if (t == nullptr) t = std::make_unique<TypeState>();
  // The states are those of the last commit: every snapshot opened from now
  // on is at or after it.
  for (auto& [id, entry] : entities->by_id) entry.versions.front().commit = commit_;
  t->entities = std::move(entities);
  t->bytes = bytes;
  t->refused_bytes = 0;
  // Listed now (the load is for a listing): not the first to be dropped.
  t->last_open.store(ticks_.fetch_add(1, std::memory_order_relaxed) + 1,
                     std::memory_order_relaxed);
  ++resident_;
  UpdateWantsCommits();
  SetBytes(bytes_ + bytes);
  loaded_.Add();
  return LoadResult::kLoaded;
}

size_t LatestIndex::Prune(TypeState& t, std::string_view type, std::string_view id,
                          const OpenCommits& open) {
  auto e = t.entities->by_id.find(AV(id));
  if (e == t.entities->by_id.end()) return 0;
  auto& versions = e->second.versions;
  // An older state is kept while an open snapshot reads it: one at or after
  // the state's commit and before the commit of the state that replaced it.
  // (Dropping a state no snapshot reads changes what no snapshot reads, so
  // each is judged against its original neighbour.)
  size_t kept = 1, freed = 0;
  uint64_t newer = versions[0].commit;
  for (size_t i = 1; i < versions.size(); ++i) {
    const uint64_t at = versions[i].commit;
    auto reader = std::lower_bound(open.begin(), open.end(), at);
    if (reader != open.end() && *reader < newer) {
      if (kept != i) versions[kept] = std::move(versions[i]);
      ++kept;
    } else {
      freed += kVersionOverhead + versions[i].state->size();
    }
    newer = at;
  }
  versions.erase(versions.begin() + static_cast<ptrdiff_t>(kept), versions.end());
  if (versions.size() > 1) {
    // Looked at again once the snapshots reading the older states closed.
    kept_.push_back(Kept{std::string(type), std::string(id), versions[0].commit});
  }
  t.bytes -= freed;
  return freed;
}

void LatestIndex::Apply(std::vector<Written> batch) {
  absl::MutexLock lock(&mu_);
  const uint64_t commit = ++commit_;
  // The commits of the open snapshots. A snapshot opened from now on is at
  // `commit`, and reads the newest states only.
  const OpenCommits open = OpenSnapshotCommits();
  size_t bytes = bytes_;
  TypeState* t = nullptr;
  std::string_view t_name;
  for (Written& w : batch) {
    if (t == nullptr || w.type != t_name) {
      auto it = types_.find(AV(w.type));
      t = it == types_.end() || it->second->entities == nullptr ? nullptr : it->second.get();
      t_name = w.type;
      if (t == nullptr && !empty_.empty()) empty_.erase(AV(w.type));  // it has entities now
    }
    if (t == nullptr) continue;
    auto [e, inserted] = t->entities->by_id.try_emplace(AV(w.id));
    auto& versions = e->second.versions;
    size_t added = kVersionOverhead + w.state.size();
    if (inserted) added += kEntryOverhead + w.id.size();
    auto state = std::make_shared<const std::string>(std::move(w.state));
    if (!versions.empty() && versions.front().commit == commit) {
      // The same entity twice in one batch: only the last state is visible.
      const size_t replaced = kVersionOverhead + versions.front().state->size();
      t->bytes -= replaced;
      bytes -= replaced;
      versions.front().state = std::move(state);
    } else {
      versions.insert(versions.begin(), TypeEntities::Version{commit, std::move(state)});
    }
    t->bytes += added;
    bytes += added;
    if (versions.size() > 1) bytes -= Prune(*t, w.type, w.id, open);
  }
  // Entities that kept older states for snapshots now closed.
  const uint64_t oldest_open = open.empty() ? commit + 1 : open.front();
  while (!kept_.empty() && kept_.front().newest <= oldest_open) {
    Kept k = std::move(kept_.front());
    kept_.pop_front();
    auto it = types_.find(AV(k.type));
    if (it == types_.end() || it->second->entities == nullptr) continue;
    bytes -= Prune(*it->second, k.type, k.id, open);
  }
  UpdateWantsCommits();
  SetBytes(bytes);
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
    SetBytes(bytes_ - lru->bytes);
    lru->refused_bytes = lru->bytes;
    lru->bytes = 0;
    lru->entities.reset();  // open snapshots keep their copy
    --resident_;
    dropped_budget_.Add();
  }
  UpdateWantsCommits();
}

void LatestIndex::Clear() {
  absl::MutexLock lock(&mu_);
  if (resident_ > 0) dropped_cleared_.Add(resident_);
  types_.clear();
  empty_.clear();
  kept_.clear();
  resident_ = 0;
  UpdateWantsCommits();
  SetBytes(0);
}

void LatestIndex::UpdateWantsCommits() {
  wants_commits_.store(resident_ > 0 || !empty_.empty(), std::memory_order_release);
  wants_states_.store(resident_ > 0, std::memory_order_release);
}

void LatestIndex::SetBytes(size_t bytes) {
  bytes_gauge_.Add(static_cast<double>(bytes) - static_cast<double>(bytes_));
  bytes_ = bytes;
}

size_t LatestIndex::bytes() {
  absl::ReaderMutexLock lock(&mu_);
  return bytes_;
}

size_t LatestIndex::resident_types() {
  absl::ReaderMutexLock lock(&mu_);
  size_t n = 0;
  for (const auto& [name, type] : types_) n += type->entities != nullptr ? 1 : 0;
  return n;  // counted, not resident_ (which wants_states() reflects)
}

size_t LatestIndex::versions(std::string_view type, std::string_view id) {
  absl::ReaderMutexLock lock(&mu_);
  auto t = types_.find(AV(type));
  if (t == types_.end() || t->second->entities == nullptr) return 0;
  auto e = t->second->entities->by_id.find(AV(id));
  return e == t->second->entities->by_id.end() ? 0 : e->second.versions.size();
}

}  // namespace cityos::store_internal
