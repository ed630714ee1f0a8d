#include "log/crc32c.h"

#include <cstdint>
#include <random>
#include <string>

#include "gtest/gtest.h"

namespace cityos::log_internal::crc32c {
namespace {

using ExtendFn = uint32_t (*)(uint32_t, const char*, size_t);

void ExpectRfc3720Vectors(ExtendFn extend) {
  // RFC 3720, section B.4.
  std::string zeros(32, '\0');
  EXPECT_EQ(extend(0, zeros.data(), zeros.size()), 0x8A9136AAu);
  std::string ones(32, '\xff');
  EXPECT_EQ(extend(0, ones.data(), ones.size()), 0x62A8AB43u);
  std::string ascending(32, '\0');
  for (int i = 0; i < 32; ++i) ascending[i] = static_cast<char>(i);
  EXPECT_EQ(extend(0, ascending.data(), ascending.size()), 0x46DD794Eu);
  std::string descending(32, '\0');
  for (int i = 0; i < 32; ++i) descending[i] = static_cast<char>(31 - i);
  EXPECT_EQ(extend(0, descending.data(), descending.size()), 0x113FDB5Cu);
  const std::string check = "123456789";
  EXPECT_EQ(extend(0, check.data(), check.size()), 0xE3069283u);
}

TEST(Crc32c, PortableMatchesRfc3720Vectors) {
  ExpectRfc3720Vectors(&ExtendPortable);
}

TEST(Crc32c, Sse42MatchesRfc3720Vectors) {
  if (!HardwareAccelerated()) GTEST_SKIP() << "CPU has no SSE4.2";
  ExpectRfc3720Vectors(&ExtendSse42);
}

TEST(Crc32c, DispatchMatchesRfc3720Vectors) { ExpectRfc3720Vectors(&Extend); }

TEST(Crc32c, ImplementationsAgreeOnRandomData) {
  if (!HardwareAccelerated()) GTEST_SKIP() << "CPU has no SSE4.2";
  std::mt19937_64 rng(42);
  std::string buf(70000, '\0');
  for (char& c : buf) c = static_cast<char>(rng());
  for (int i = 0; i < 2000; ++i) {
    // Random offsets exercise every alignment of the SSE4.2 loop.
    const size_t off = rng() % 64;
    const size_t len =
        (i < 200) ? static_cast<size_t>(i) : rng() % (buf.size() - off);
    const uint32_t init = static_cast<uint32_t>(rng());
    ASSERT_EQ(ExtendPortable(init, buf.data() + off, len),
              ExtendSse42(init, buf.data() + off, len))
        << "off=" << off << " len=" << len;
  }
}

// Every length up to 1024 (three-way blocks of 16 .. 336 bytes, then the
// serial tail) at every alignment 0..15; lengths around and past one round
// of the largest block (512 bytes) at every alignment; every length up to
// 4096 at one alignment each; all against the portable code.
TEST(Crc32c, ImplementationsAgreeOnEveryLengthAndAlignment) {
  if (!HardwareAccelerated()) GTEST_SKIP() << "CPU has no SSE4.2";
  std::mt19937_64 rng(7);
  std::string buf(4200, '\0');
  for (char& c : buf) c = static_cast<char>(rng());
  const auto check = [&](size_t off, size_t len) {
    const uint32_t init = static_cast<uint32_t>(rng());
    ASSERT_EQ(ExtendPortable(init, buf.data() + off, len),
              ExtendSse42(init, buf.data() + off, len))
        << "off=" << off << " len=" << len;
  };
  for (size_t len = 0; len <= 1024; ++len) {
    for (size_t off = 0; off < 16; ++off) check(off, len);
  }
  for (size_t len : {1535, 1536, 1537, 2047, 3072, 3073, 4095, 4096, 4180}) {
    for (size_t off = 0; off < 16; ++off) check(off, len);
  }
  for (size_t len = 1025; len <= 4096; ++len) check(len % 8, len);
  // Long input: many full rounds of the largest block.
  std::string big(1 << 20, '\0');
  for (char& c : big) c = static_cast<char>(rng());
  EXPECT_EQ(ExtendPortable(0, big.data(), big.size()),
            ExtendSse42(0, big.data(), big.size()));
}

TEST(Crc32c, ExtendEqualsValueOfConcatenation) {
  const std::string a = "hello ";
  const std::string b = "world";
  const std::string ab = a + b;
  for (ExtendFn fn : {&ExtendPortable, &Extend}) {
    EXPECT_EQ(fn(fn(0, a.data(), a.size()), b.data(), b.size()),
              fn(0, ab.data(), ab.size()));
  }
  EXPECT_EQ(Value(ab.data(), ab.size()),
            Extend(Value(a.data(), a.size()), b.data(), b.size()));
}

TEST(Crc32c, DiffersOnDifferentInput) {
  EXPECT_NE(Value("a", 1), Value("foo", 3));
  EXPECT_NE(Value("a", 1), Value("b", 1));
}

TEST(Crc32c, MaskRoundTripsAndChangesValue) {
  const uint32_t crc = Value("foo", 3);
  EXPECT_NE(crc, Mask(crc));
  EXPECT_NE(crc, Mask(Mask(crc)));
  EXPECT_EQ(crc, Unmask(Mask(crc)));
  EXPECT_EQ(crc, Unmask(Unmask(Mask(Mask(crc)))));
}

}  // namespace
}  // namespace cityos::log_internal::crc32c
