// Internal: the PDP's decision cache. Sharded (a mutex per shard) so that
// concurrent deciders rarely contend; keyed by a byte string that encodes
// every request attribute a decision can depend on (built by MakeKey).
// Entries carry the cache epoch they were computed under: bumping the epoch
// (policy load, emergency change, Invalidate of everything) makes every older
// entry a miss without touching the shards, and an entry computed while an
// invalidation ran is never served.
#ifndef CITYOS_SRC_POLICY_DECISION_CACHE_H_
#define CITYOS_SRC_POLICY_DECISION_CACHE_H_

#include <array>
#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "cityos/policy.h"
#include "cityos/prehashed.h"

namespace cityos::policy_internal {

class DecisionCache {
 public:
  // `capacity` entries at most in all (0 disables the cache).
  explicit DecisionCache(size_t capacity);

  bool enabled() const { return per_shard_ > 0; }
  uint64_t epoch() const { return epoch_.load(std::memory_order_acquire); }
  // Makes every entry stale.
  void BumpEpoch() { epoch_.fetch_add(1, std::memory_order_acq_rel); }

  // Encodes `request` into `key` (cleared first). With `with_location` the
  // exact location is part of the key (only area-bound rules look at it).
  static void MakeKey(const AccessRequest& request, bool with_location,
                      std::string* key);

  // The cached decision for `key`, valid at `now` under the current epoch.
  std::shared_ptr<const Decision> Find(std::string_view key, absl::Time now);
  // Stores a decision computed under `epoch` at `now`.
  void Insert(std::string_view key, uint64_t epoch, absl::Time now,
              std::shared_ptr<const Decision> decision, std::string_view org,
              std::string_view data_subject);
  // Drops entries for which `pred(org, data_subject)` holds.
  void EraseIf(const std::function<bool(std::string_view org,
                                        std::string_view ds)>& pred);
  size_t size();

 private:
  struct Entry {
    std::shared_ptr<const Decision> decision;
    uint64_t epoch = 0;
    absl::Time computed_at;
    std::string org;
    std::string data_subject;
  };
  struct Shard {
    absl::Mutex mu;
    // Looked up with the key's hash computed once (it also picks the shard).
    PrehashedMap<Entry> map ABSL_GUARDED_BY(mu);
  };
  static constexpr size_t kShards = 16;
  Shard& ShardFor(const PrehashedKey& key) { return shards_[key.Shard(kShards)]; }

  size_t per_shard_;
  std::atomic<uint64_t> epoch_{1};
  std::array<Shard, kShards> shards_;
};

}  // namespace cityos::policy_internal

#endif  // CITYOS_SRC_POLICY_DECISION_CACHE_H_
