#include "log/crc32c.h"

#include <algorithm>
#include <boost/crc.hpp>
#include <cstring>

#if defined(__x86_64__)
#include <nmmintrin.h>
#include <wmmintrin.h>
#endif

namespace cityos::log_internal::crc32c {
namespace {

using BoostCrc32c =
    boost::crc_optimal<32, 0x1EDC6F41, 0xFFFFFFFF, 0xFFFFFFFF, true, true>;

uint32_t ReflectBits(uint32_t v) {
  uint32_t r = 0;
  for (int i = 0; i < 32; ++i) {
    r = (r << 1) | (v & 1u);
    v >>= 1;
  }
  return r;
}

bool DetectSse42() {
#if defined(__x86_64__)
  __builtin_cpu_init();  // May run before libgcc's own constructor.
  return __builtin_cpu_supports("sse4.2");
#else
  return false;
#endif
}

const bool kHaveSse42 = DetectSse42();

#if defined(__x86_64__)
// Everything of the three-way code (PCLMUL) is x86-64 only.
bool DetectPclmul() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("pclmul");
}

const bool kHavePclmul = DetectPclmul();

// Three-way interleaving (SSE4.2 + PCLMUL). The crc32 instruction has a
// latency of 3 cycles and a throughput of 1 per cycle, so one dependency
// chain runs at a third of the speed the unit allows. A stretch of 3 * B
// bytes is split into three blocks whose CRCs run side by side (the second
// and third from state 0), then combined by linearity:
//   state(b0 b1 b2) = shift(c0, 2B) ^ shift(c1, B) ^ c2,
// where shift(c, L) = c * x^(8L) mod P (L zero bytes) is one carry-less
// multiply by K(L) = x^(8L - 33) mod P (bit-reflected) and one crc32 of the
// 64-bit product (which multiplies by x^33 and reduces mod P).
constexpr size_t kMaxBlock = 512;         // bytes per block, multiple of 8
constexpr size_t kMinThreeWay = 3 * 16;   // shorter: one chain
constexpr uint64_t kPoly = 0x11EDC6F41u;  // CRC-32C, normal representation

// x^n mod P, bit-reflected to 32 bits.
uint32_t XPowModReflected(uint64_t n) {
  uint64_t v = 1;  // normal representation, degree < 32
  for (uint64_t i = 0; i < n; ++i) {
    v <<= 1;
    if (v & (uint64_t{1} << 32)) v ^= kPoly;
  }
  return ReflectBits(static_cast<uint32_t>(v));
}

// kShift[b] = K(8 * b) for blocks of 8 * b bytes, b = 1 .. 2 * kMaxBlock / 8
// (a shift by 2B for blocks up to kMaxBlock).
struct ShiftTable {
  uint32_t k[2 * kMaxBlock / 8 + 1] = {};
  ShiftTable() {
    for (size_t b = 1; b <= 2 * kMaxBlock / 8; ++b) {
      k[b] = XPowModReflected(64 * b - 33);
    }
  }
};

const ShiftTable& Shifts() {
  static const ShiftTable* t = new ShiftTable;
  return *t;
}
#endif  // defined(__x86_64__)

}  // namespace

bool HardwareAccelerated() { return kHaveSse42; }

uint32_t ExtendPortable(uint32_t init_crc, const char* data, size_t n) {
  BoostCrc32c crc;
  // checksum() == Reflect(remainder) ^ 0xFFFFFFFF, so this remainder makes
  // checksum() == init_crc before any byte is processed.
  crc.reset(ReflectBits(init_crc ^ 0xFFFFFFFFu));
  crc.process_bytes(data, n);
  return crc.checksum();
}

#if defined(__x86_64__)
namespace {

// c * x^(8 * 8 * words) mod P for the table's K.
__attribute__((target("sse4.2,pclmul"))) inline uint64_t Shift(uint64_t c,
                                                                uint32_t k) {
  const __m128i prod = _mm_clmulepi64_si128(
      _mm_cvtsi64_si128(static_cast<int64_t>(c)),
      _mm_cvtsi32_si128(static_cast<int>(k)), 0x00);
  return _mm_crc32_u64(0, static_cast<uint64_t>(_mm_cvtsi128_si64(prod)));
}

// Runs the three-way rounds over as much of [*p, *p + *n) as they cover,
// advancing *p and *n. `l` is the state before, returned after.
__attribute__((target("sse4.2,pclmul"))) uint64_t ThreeWay(
    uint64_t l, const unsigned char** pp, size_t* np) {
  const unsigned char* p = *pp;
  size_t n = *np;
  const ShiftTable& shifts = Shifts();
  while (n >= kMinThreeWay) {
    const size_t block = std::min(kMaxBlock, (n / 3) & ~size_t{7});
    const size_t words = block / 8;
    uint64_t c0 = l, c1 = 0, c2 = 0;
    const unsigned char* p1 = p + block;
    const unsigned char* p2 = p1 + block;
    for (size_t i = 0; i < words; ++i) {
      uint64_t w0, w1, w2;
      std::memcpy(&w0, p + 8 * i, 8);
      std::memcpy(&w1, p1 + 8 * i, 8);
      std::memcpy(&w2, p2 + 8 * i, 8);
      c0 = _mm_crc32_u64(c0, w0);
      c1 = _mm_crc32_u64(c1, w1);
      c2 = _mm_crc32_u64(c2, w2);
    }
    l = Shift(c0, shifts.k[2 * words]) ^ Shift(c1, shifts.k[words]) ^ c2;
    p += 3 * block;
    n -= 3 * block;
  }
  *pp = p;
  *np = n;
  return l;
}

}  // namespace

__attribute__((target("sse4.2"))) uint32_t ExtendSse42(uint32_t init_crc,
                                                       const char* data,
                                                       size_t n) {
  const auto* p = reinterpret_cast<const unsigned char*>(data);
  uint64_t l = init_crc ^ 0xFFFFFFFFu;
  // Align to 8 bytes, then eight bytes per instruction.
  while (n > 0 && (reinterpret_cast<uintptr_t>(p) & 7) != 0) {
    l = _mm_crc32_u8(static_cast<uint32_t>(l), *p++);
    --n;
  }
  if (kHavePclmul && n >= kMinThreeWay) l = ThreeWay(l, &p, &n);
  while (n >= 32) {
    uint64_t w0, w1, w2, w3;
    std::memcpy(&w0, p, 8);
    std::memcpy(&w1, p + 8, 8);
    std::memcpy(&w2, p + 16, 8);
    std::memcpy(&w3, p + 24, 8);
    l = _mm_crc32_u64(l, w0);
    l = _mm_crc32_u64(l, w1);
    l = _mm_crc32_u64(l, w2);
    l = _mm_crc32_u64(l, w3);
    p += 32;
    n -= 32;
  }
  while (n >= 8) {
    uint64_t w;
    std::memcpy(&w, p, 8);
    l = _mm_crc32_u64(l, w);
    p += 8;
    n -= 8;
  }
  while (n > 0) {
    l = _mm_crc32_u8(static_cast<uint32_t>(l), *p++);
    --n;
  }
  return static_cast<uint32_t>(l) ^ 0xFFFFFFFFu;
}
#else
uint32_t ExtendSse42(uint32_t init_crc, const char* data, size_t n) {
  return ExtendPortable(init_crc, data, n);
}
#endif

uint32_t Extend(uint32_t init_crc, const char* data, size_t n) {
  return kHaveSse42 ? ExtendSse42(init_crc, data, n)
                    : ExtendPortable(init_crc, data, n);
}

}  // namespace cityos::log_internal::crc32c
