#include "policy/decision_cache.h"

#include <cstring>


namespace cityos::policy_internal {
namespace {

// Length-prefixed so that no two attribute tuples share an encoding.
void Put(std::string* key, std::string_view v) {
  const uint32_t n = static_cast<uint32_t>(v.size());
  key->append(reinterpret_cast<const char*>(&n), sizeof(n));
  key->append(v.data(), v.size());
}

}  // namespace

DecisionCache::DecisionCache(size_t capacity)
    : per_shard_(capacity == 0 ? 0 : std::max<size_t>(1, capacity / kShards)) {}

void DecisionCache::MakeKey(const AccessRequest& q, bool with_location,
                            std::string* key) {
  key->clear();
  const Principal& p = *q.principal;
  key->push_back(static_cast<char>(q.action));
  key->push_back(static_cast<char>(p.kind));
  key->push_back(static_cast<char>(q.resource.classification));
  Put(key, p.trust_domain);
  Put(key, p.org);
  Put(key, p.name);
  const uint32_t roles = static_cast<uint32_t>(p.roles.size());
  key->append(reinterpret_cast<const char*>(&roles), sizeof(roles));
  for (const auto& r : p.roles) Put(key, r);
  Put(key, q.purpose);
  const ResourceView& r = q.resource;
  Put(key, r.domain);
  Put(key, r.type);
  Put(key, r.subject);
  Put(key, r.owner);
  Put(key, r.region);
  Put(key, r.jurisdiction);
  Put(key, r.data_subject);
  // Not the entity id: no rule condition and no hook reads it (a rule
  // matches the resource's domain, type, subject, classification, owner,
  // region, jurisdiction and data subject; consent goes by data subject,
  // contracts by product), so the entities of a type that agree on those
  // share one entry. A listing of a million entities needs as many entries
  // as distinct attribute sets, not a million. Add it here if a rule ever
  // matches on entity ids.
  if (with_location && r.location) {
    char buf[2 * sizeof(double)];
    std::memcpy(buf, &r.location->first, sizeof(double));
    std::memcpy(buf + sizeof(double), &r.location->second, sizeof(double));
    key->push_back('L');
    key->append(buf, sizeof(buf));
  }
}

std::shared_ptr<const Decision> DecisionCache::Find(std::string_view key,
                                                    absl::Time now) {
  if (per_shard_ == 0) return nullptr;
  const PrehashedKey hashed = PrehashedKey::Of(key);
  Shard& s = ShardFor(hashed);
  const uint64_t current = epoch();
  absl::MutexLock lock(&s.mu);
  auto it = s.map.find(hashed);
  if (it == s.map.end()) return nullptr;
  const Entry& e = it->second;
  // A clock stepped backwards, an expired window or a stale epoch: recompute.
  if (e.epoch != current || now < e.computed_at ||
      now >= e.decision->valid_until) {
    return nullptr;
  }
  return e.decision;
}

void DecisionCache::Insert(std::string_view key, uint64_t epoch, absl::Time now,
                           std::shared_ptr<const Decision> decision,
                           std::string_view org,
                           std::string_view data_subject) {
  if (per_shard_ == 0) return;
  const PrehashedKey hashed = PrehashedKey::Of(key);
  Shard& s = ShardFor(hashed);
  absl::MutexLock lock(&s.mu);
  auto it = s.map.find(hashed);
  if (it == s.map.end()) {
    if (s.map.size() >= per_shard_) {
      // Full: drop an arbitrary entry (hash order is effectively random),
      // cheaper than tracking recency on the hot path.
      s.map.erase(s.map.begin());
    }
    it = s.map.emplace(std::string(key), Entry{}).first;
  }
  Entry& e = it->second;
  e.decision = std::move(decision);
  e.epoch = epoch;
  e.computed_at = now;
  e.org.assign(org.data(), org.size());
  e.data_subject.assign(data_subject.data(), data_subject.size());
}

void DecisionCache::EraseIf(
    const std::function<bool(std::string_view org, std::string_view ds)>&
        pred) {
  for (Shard& s : shards_) {
    absl::MutexLock lock(&s.mu);
    absl::erase_if(s.map, [&](const auto& kv) {
      return pred(kv.second.org, kv.second.data_subject);
    });
  }
}

size_t DecisionCache::size() {
  size_t n = 0;
  for (Shard& s : shards_) {
    absl::MutexLock lock(&s.mu);
    n += s.map.size();
  }
  return n;
}

}  // namespace cityos::policy_internal
