// String-keyed hash maps whose keys are hashed once per lookup: a sharded
// map picks its shard from the hash (high bits, PrehashedKey::Shard) and
// looks the key up in that shard's PrehashedMap with the same hash, instead
// of hashing a long key twice (the decision cache and the decision auditor
// do this per entity read).
//
//   const PrehashedKey k = PrehashedKey::Of(key);
//   Shard& s = shards[k.Shard(shards.size())];
//   auto it = s.map.find(k);            // no second hash
//   s.map.emplace(std::string(key), v);  // a new key is hashed as usual
#ifndef CITYOS_PREHASHED_H_
#define CITYOS_PREHASHED_H_

#include <cstddef>
#include <string>
#include <string_view>

#include "absl/container/flat_hash_map.h"
#include "absl/hash/hash.h"
#include "absl/strings/string_view.h"

namespace cityos {

static_assert(sizeof(size_t) == 8, "PrehashedKey::Shard takes high bits of a 64-bit hash");

// abseil's string hash (absl::string_view is its own class in some builds,
// where hashing a std::string_view would take another path).
inline size_t PrehashedHashOf(std::string_view key) {
  return absl::Hash<absl::string_view>()(absl::string_view(key.data(), key.size()));
}

struct PrehashedKey {
  std::string_view key;
  size_t hash;

  static PrehashedKey Of(std::string_view key) {
    return {key, PrehashedHashOf(key)};
  }
  // One of `n` shards, from high bits: the map takes its slot and control
  // bits from the low ones, which stay spread within a shard.
  size_t Shard(size_t n) const { return (hash >> 48) % n; }
};

struct PrehashedHash {
  using is_transparent = void;
  size_t operator()(std::string_view k) const { return PrehashedHashOf(k); }
  size_t operator()(const PrehashedKey& k) const { return k.hash; }
};

struct PrehashedEq {
  using is_transparent = void;
  bool operator()(std::string_view a, std::string_view b) const { return a == b; }
  bool operator()(std::string_view a, const PrehashedKey& b) const { return a == b.key; }
  bool operator()(const PrehashedKey& a, std::string_view b) const { return a.key == b; }
};

template <typename Value>
using PrehashedMap = absl::flat_hash_map<std::string, Value, PrehashedHash, PrehashedEq>;

}  // namespace cityos

#endif  // CITYOS_PREHASHED_H_
