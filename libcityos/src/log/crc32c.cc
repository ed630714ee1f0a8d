#include "log/crc32c.h"

#include <boost/crc.hpp>
#include <cstring>

#if defined(__x86_64__)
#include <nmmintrin.h>
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
