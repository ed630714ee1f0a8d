// The latest stored state of the entities of some types, in memory, in front
// of the SQLite entity store (docs/state-store.md, "Memory index").
//
// A type is either resident (every one of its entities is here, as last
// committed) or not (its listings go to SQLite). The store makes a type
// resident on its first listing (Load, under the store's writer lock, so no
// commit falls between the read and the load) and keeps it current after
// every commit (Apply, under the same lock, in commit order). Memory is
// bounded: a load that does not fit in the budget is refused, and when
// writes grow the resident types past it, the least recently listed type is
// dropped.
//
// Readers see snapshots: Open() takes the number of the last applied commit,
// and a snapshot's rows are the entities' states as of that commit, however
// many commits are applied while it pages on. Besides its newest state, an
// entity keeps only the older states some open snapshot reads; the others
// are dropped at its next write, or at a later commit once the snapshots
// that read them have closed.
//
// Thread-safe.
#ifndef CITYOS_STORE_LATEST_INDEX_H_
#define CITYOS_STORE_LATEST_INDEX_H_

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/btree_map.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/functional/function_ref.h"
#include "absl/synchronization/mutex.h"
#include "cityos/metrics.h"

namespace cityos::store_internal {

class LatestIndex {
 public:
  // What one entity costs beyond its id and its states' bytes (the map's
  // node share), and what each state costs beyond its bytes (its string,
  // the shared_ptr's control block, the version record).
  static constexpr size_t kEntryOverhead = 128;
  static constexpr size_t kVersionOverhead = 64;
  // Types remembered as having no entities, at most (then all forgotten):
  // listings of unknown or empty types do not try a load every time.
  static constexpr size_t kMaxEmptyTypes = 1024;

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
  // SQLite); a null `state`: no such entity.
  struct Found {
    std::shared_ptr<const std::string> state;
  };
  std::optional<Found> Latest(std::string_view type, std::string_view id);

  // Whether loading `type` is worth trying: it is not resident, not known to
  // have no entities, and not refused for a size that still does not fit.
  bool ShouldLoad(std::string_view type);

  // Whether a type of `estimated_bytes` (as kEntryOverhead etc. count them)
  // fits in the room the budget has now. When it does not, the refusal is
  // remembered as Load's is, so the type is not tried again until it fits.
  bool Fits(std::string_view type, size_t estimated_bytes);

  // Loads `type`: `read` must call `row` for each of its entities, in id
  // order, as of the last commit (the caller holds the store's writer lock),
  // and return false only when it could not read (it stops early, returning
  // true, when `row` returns false).
  enum class LoadResult {
    kLoaded,
    kAlreadyResident,  // another caller loaded it first
    kEmpty,            // no entities: remembered, not kept
    kRefused,          // larger than the room in the budget
    kFailed,           // `read` failed
  };
  using RowSink = absl::FunctionRef<bool(std::string_view id, std::string_view state)>;
  LoadResult Load(std::string_view type, absl::FunctionRef<bool(RowSink row)> read);

  // After a commit (under the store's writer lock, in commit order): the new
  // states of the batch's entities, in the batch's order. Entities of types
  // that are not resident are ignored (but a type known to have no entities
  // is forgotten as such).
  struct Written {
    std::string_view type;
    std::string_view id;
    std::string state;
  };
  void Apply(std::vector<Written> batch);

  // What Apply needs of a commit. Exact under the store's writer lock (both
  // change only under it):
  //  - wants_commits(): a type is resident or known to have no entities, so
  //    commits must be applied (at least the types and ids written);
  //  - wants_states(): a type is resident, so Written::state must be filled
  //    (when false, Apply reads only types and ids: no state is copied).
  bool wants_commits() const { return wants_commits_.load(std::memory_order_acquire); }
  bool wants_states() const { return wants_states_.load(std::memory_order_acquire); }

  // Drops every type (e.g. when another process wrote the database).
  void Clear();

  // For tests.
  size_t bytes();
  size_t resident_types();
  size_t versions(std::string_view type, std::string_view id);

 private:
  struct TypeState;
  struct Kept {          // an entity that kept older states for snapshots
    std::string type;
    std::string id;
    uint64_t newest;     // the commit of its newest state then
  };
  using OpenCommits = std::vector<uint64_t>;  // ascending

  void Release(uint64_t commit);
  OpenCommits OpenSnapshotCommits();
  // Drops the older states of `entities[id]` that no open snapshot reads;
  // queues it in kept_ if it still has some. Returns the bytes freed.
  size_t Prune(TypeState& t, std::string_view type, std::string_view id,
               const OpenCommits& open) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void EvictOverBudget() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void UpdateWantsCommits() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void SetBytes(size_t bytes) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Remembers `type` as refused at `bytes` (not resident), counts and logs it.
  void RefuseLocked(std::string_view type, size_t bytes, size_t room)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const size_t budget_;
  std::atomic<uint64_t> ticks_{0};  // for LRU: every Open and Load takes one
  std::atomic<bool> wants_commits_{false};
  std::atomic<bool> wants_states_{false};
  absl::Mutex mu_;
  uint64_t commit_ ABSL_GUARDED_BY(mu_) = 0;  // the last applied commit
  size_t bytes_ ABSL_GUARDED_BY(mu_) = 0;
  size_t resident_ ABSL_GUARDED_BY(mu_) = 0;
  absl::flat_hash_map<std::string, std::unique_ptr<TypeState>> types_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_set<std::string> empty_ ABSL_GUARDED_BY(mu_);
  // Entities with older states, oldest first (by `newest`).
  std::deque<Kept> kept_ ABSL_GUARDED_BY(mu_);
  // Open snapshots: commit -> how many. Taken while mu_ is held (at least
  // shared), so a writer holding mu_ exclusively sees every snapshot that
  // can read what it prunes.
  absl::Mutex snapshots_mu_ ABSL_ACQUIRED_AFTER(mu_);
  absl::btree_map<uint64_t, int> snapshots_ ABSL_GUARDED_BY(snapshots_mu_);
  // Process-wide metrics (docs/observability.md).
  Gauge bytes_gauge_;
  Counter loaded_, refused_, empty_loads_, failed_loads_, dropped_budget_, dropped_cleared_;
};

}  // namespace cityos::store_internal

#endif  // CITYOS_STORE_LATEST_INDEX_H_
