// The latest stored state of the entities of some types, in memory, in front
// of the SQLite entity store (docs/state-store.md, "Memory index").
//
// A type is either resident (every one of its entities is here, as last
// committed) or not (its listings go to SQLite). The store makes a type
// resident on its first listing (Load, under the store's writer lock, so no
// commit falls between the read and the load) and keeps it current after
// every commit (Apply, under the same lock, in commit order). Memory is
// bounded: a load that does not fit in the budget is refused, and a type
// whose growth takes the total over it is dropped, least recently listed
// first.
//
// Readers see snapshots: Open() takes the number of the last applied commit,
// and a snapshot's rows are the entities' states as of that commit, however
// many commits are applied while it pages on. Each entity keeps its states
// newer than the oldest open snapshot's commit (and one more), so a write
// never waits for a reader and a reader never sees half a batch; older states
// are dropped at the entity's next write.
//
// Thread-safe.
#ifndef CITYOS_STORE_LATEST_INDEX_H_
#define CITYOS_STORE_LATEST_INDEX_H_

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/btree_map.h"
#include "absl/container/flat_hash_map.h"
#include "absl/functional/function_ref.h"
#include "absl/synchronization/mutex.h"

namespace cityos::store_internal {

class LatestIndex {
 public:
  // What one entity costs beyond its id and its state's bytes (the map's
  // node share, the version record, the state's string and control block).
  static constexpr size_t kEntryOverhead = 128;

  explicit LatestIndex(size_t budget_bytes);
  ~LatestIndex();
  LatestIndex(const LatestIndex&) = delete;
  LatestIndex& operator=(const LatestIndex&) = delete;

  struct TypeEntities;

  // A reader's view of one resident type at one commit. Holds its type's
  // entities even if the type is dropped meanwhile.
  class Snapshot {
   public:
    Snapshot(Snapshot&& other) noexcept;
    Snapshot& operator=(Snapshot&&) = delete;
    ~Snapshot();

    // Calls `row` for up to `limit` entities with an id after `after`, in id
    // order, each with its state at the snapshot's commit (entities created
    // after it are skipped). Returns how many it called `row` for: fewer than
    // `limit` only at the end. `row` runs under the index's reader lock: it
    // must only copy what it is given.
    int Next(std::string_view after, int limit,
             absl::FunctionRef<void(std::string_view id, std::string_view state)> row) const;

   private:
    friend class LatestIndex;
    Snapshot(LatestIndex* index, std::shared_ptr<const TypeEntities> entities, uint64_t commit)
        : index_(index), entities_(std::move(entities)), commit_(commit) {}
    LatestIndex* index_;  // null once moved from
    std::shared_ptr<const TypeEntities> entities_;
    uint64_t commit_;
  };

  // A snapshot of `type` at the last applied commit; nullopt when `type` is
  // not resident.
  std::optional<Snapshot> Open(std::string_view type);

  // The newest state of one entity. nullopt: `type` is not resident (ask
  // SQLite); an empty optional state inside: no such entity.
  struct Found {
    std::shared_ptr<const std::string> state;  // null: no such entity
  };
  std::optional<Found> Latest(std::string_view type, std::string_view id);

  // Whether loading `type` is worth trying: it is not resident, and was not
  // refused for a size that still does not fit.
  bool ShouldLoad(std::string_view type);

  // Loads `type`: `read` must call `row` for each of its entities, in id
  // order, as of the last commit (the caller holds the store's writer lock).
  // Returns false (and loads nothing) when the type does not fit in the
  // budget, or when `read` returns false (it could not read); a refused type
  // is tried again only when the budget has room for the size it had.
  using RowSink = absl::FunctionRef<bool(std::string_view id, std::string_view state)>;
  bool Load(std::string_view type, absl::FunctionRef<bool(RowSink row)> read);

  // After a commit (under the store's writer lock, in commit order): the new
  // states of the batch's entities, in the batch's order. Entities of types
  // that are not resident are ignored.
  struct Written {
    std::string_view type;
    std::string_view id;
    std::string state;
  };
  void Apply(std::vector<Written> batch);

  // Drops every type (e.g. when another process wrote the database).
  void Clear();

  // Whether no type is resident, so that a commit has nothing to apply.
  // Exact under the store's writer lock (residency changes only under it).
  bool none_resident() const { return resident_.load(std::memory_order_acquire) == 0; }

  // For tests and metrics.
  size_t bytes();
  size_t resident_types();
  size_t versions(std::string_view type, std::string_view id);

 private:
  struct TypeState;
  void Release(uint64_t commit);
  void EvictOverBudget() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const size_t budget_;
  absl::Mutex mu_;
  uint64_t commit_ ABSL_GUARDED_BY(mu_) = 0;  // the last applied commit
  size_t bytes_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t clock_ ABSL_GUARDED_BY(mu_) = 0;  // ticks on every Open, for LRU
  absl::flat_hash_map<std::string, std::unique_ptr<TypeState>> types_ ABSL_GUARDED_BY(mu_);
  std::atomic<size_t> resident_{0};  // resident types; changed under mu_
  // Open snapshots: commit -> how many. Taken while mu_ is held (at least
  // shared), so a writer holding mu_ exclusively sees every snapshot that
  // can read what it prunes.
  absl::Mutex snapshots_mu_ ABSL_ACQUIRED_AFTER(mu_);
  absl::btree_map<uint64_t, int> snapshots_ ABSL_GUARDED_BY(snapshots_mu_);
};

}  // namespace cityos::store_internal

#endif  // CITYOS_STORE_LATEST_INDEX_H_
