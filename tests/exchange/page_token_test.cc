// store_internal page tokens (libcityos/src/store/page_token.h): the
// fingerprint is SHA-256 of the length-prefixed parts, truncated to 16 bytes,
// the same in every process and release (a token handed out before a restart
// still continues its listing after it); tokens round-trip and are refused
// for another query or when mangled.
#include "store/page_token.h"

#include <gtest/gtest.h>

#include <atomic>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/escaping.h"

namespace cityos::store_internal {
namespace {

std::string Hex(const std::string& bytes) { return absl::BytesToHexString(bytes); }

// Expected values: Python's hashlib over the documented input (each part
// preceded by its size as 8 little-endian bytes), first 16 bytes.
TEST(PageToken, FingerprintIsSha256OfLengthPrefixedParts) {
  EXPECT_EQ(Hex(Fingerprint({"query", std::string("\x0a\x03" "abc", 5), "medical_care\x1f"})),
            "161d5d87b542483a240288e65dbb7f5e");
  EXPECT_EQ(Hex(Fingerprint({"ab", "c"})), "43ee655579de01ca739b3f95c1c2d3f4");
  EXPECT_EQ(Hex(Fingerprint({"a", "bc"})), "9a8acca1b6c6c0befd3fbc756aed625d");
  EXPECT_EQ(Hex(Fingerprint({})), "e3b0c44298fc1c149afbf4c8996fb924");
}

// The digest context is kept per thread: many fingerprints on several
// threads at once all come out right.
TEST(PageToken, FingerprintOnManyThreads) {
  const std::string expected = Fingerprint({"ab", "c"});
  std::vector<std::thread> threads;
  std::atomic<int> wrong{0};
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 2000; ++i) {
        if (Fingerprint({"ab", "c"}) != expected) wrong.fetch_add(1);
        if (Fingerprint({"a", "bc"}) == expected) wrong.fetch_add(1);
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(wrong.load(), 0);
}

TEST(PageToken, RoundTripsAndIsBoundToItsQuery) {
  const std::string fp = Fingerprint({"query", "filter"});
  const std::string token = EncodePageToken(fp, "e042");
  auto cursor = DecodePageToken(token, fp);
  ASSERT_TRUE(cursor.ok()) << cursor.status();
  EXPECT_EQ(*cursor, "e042");
  auto other = DecodePageToken(token, Fingerprint({"query", "other filter"}));
  EXPECT_EQ(other.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(other.status().message(), "page token belongs to another query");
  auto mangled = DecodePageToken("!" + token, fp);
  EXPECT_EQ(mangled.status().message(), "malformed page token");
  EXPECT_EQ(DecodePageToken("", fp).status().message(), "malformed page token");
}

}  // namespace
}  // namespace cityos::store_internal
