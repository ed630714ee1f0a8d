// cityos/prehashed.h: a PrehashedMap finds by PrehashedKey exactly what it
// finds by the key itself (present and absent keys, keys with embedded NULs,
// prefixes of each other), and shards stay in range and evenly used.
#include "cityos/prehashed.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace cityos {
namespace {

TEST(Prehashed, FindsWhatTheKeyFinds) {
  PrehashedMap<int> map;
  std::vector<std::string> keys;
  for (int i = 0; i < 2000; ++i) {
    keys.push_back("spiffe://city/org/reader/read/cityos.health.v1.Bed/" + std::to_string(i));
    keys.push_back(std::string("a\0b", 3) + std::to_string(i));
  }
  for (size_t i = 0; i < keys.size(); i += 2) map.emplace(keys[i], static_cast<int>(i));
  for (size_t i = 0; i < keys.size(); ++i) {
    auto by_key = map.find(keys[i]);
    auto by_hash = map.find(PrehashedKey::Of(keys[i]));
    EXPECT_EQ(by_key == map.end(), by_hash == map.end()) << i;
    if (i % 2 == 0) {
      ASSERT_NE(by_hash, map.end()) << i;
      EXPECT_EQ(by_hash->second, static_cast<int>(i));
    } else {
      EXPECT_EQ(by_hash, map.end()) << i;
    }
  }
  // A prefix of a present key is another key.
  EXPECT_EQ(map.find(PrehashedKey::Of("spiffe://city/org/reader")), map.end());
}

// 4,000 keys over 16 shards: 250 each expected (binomial, sd ~15.5); the
// bounds are 8 sd away, so a fair spread never fails them, while shards taken
// from high bits that barely vary (all keys in a few shards) do.
TEST(Prehashed, ShardsAreInRangeAndEvenlyUsed) {
  std::vector<int> count(16, 0);
  for (int i = 0; i < 4000; ++i) {
    const size_t shard = PrehashedKey::Of("key-" + std::to_string(i)).Shard(16);
    ASSERT_LT(shard, 16u);
    ++count[shard];
  }
  for (size_t s = 0; s < count.size(); ++s) {
    EXPECT_GT(count[s], 125) << "shard " << s;
    EXPECT_LT(count[s], 375) << "shard " << s;
  }
}

}  // namespace
}  // namespace cityos
