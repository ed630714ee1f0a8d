// File: log/crc32c.h
//
// CRC-32C (Castagnoli, polynomial 0x1EDC6F41, reflected, init and final XOR
// 0xFFFFFFFF), as used by iSCSI (RFC 3720), leveldb and our durable log.
// Uses the SSE4.2 CRC32 instruction when the CPU has it (checked once at run
// time) and Boost.CRC otherwise; both give identical results.
//
//   uint32_t crc = crc32c::Value(data, n);
//   crc = crc32c::Extend(crc, more, m);          // == Value(data ++ more)
//   EncodeFixed32(dst, crc32c::Mask(crc));       // what goes on disk
//
// Internal to libcityos (not a public header).
#ifndef CITYOS_LOG_CRC32C_H_
#define CITYOS_LOG_CRC32C_H_

#include <cstddef>
#include <cstdint>

namespace cityos::log_internal::crc32c {

// Returns the CRC-32C of concat(A, data[0, n)) where `init_crc` is the
// CRC-32C of some string A. Extend(0, data, n) is the CRC of data alone.
// Thread-safe. REQUIRES: data != nullptr or n == 0.
uint32_t Extend(uint32_t init_crc, const char* data, size_t n);

// Returns the CRC-32C of data[0, n).
inline uint32_t Value(const char* data, size_t n) { return Extend(0, data, n); }

// True if Extend() uses the SSE4.2 instruction on this CPU.
bool HardwareAccelerated();

// The two implementations behind Extend(), exposed so that tests can check
// them against each other. ExtendSse42 REQUIRES: HardwareAccelerated().
uint32_t ExtendPortable(uint32_t init_crc, const char* data, size_t n);
uint32_t ExtendSse42(uint32_t init_crc, const char* data, size_t n);

inline constexpr uint32_t kMaskDelta = 0xa282ead8u;

// Returns a masked representation of `crc`. Computing the CRC of a string
// that contains embedded CRCs is problematic, so stored CRCs are masked
// (rotate right by 15 bits, then add a constant), exactly as leveldb does.
inline uint32_t Mask(uint32_t crc) {
  return ((crc >> 15) | (crc << 17)) + kMaskDelta;
}

// Inverse of Mask().
inline uint32_t Unmask(uint32_t masked_crc) {
  const uint32_t rot = masked_crc - kMaskDelta;
  return (rot >> 17) | (rot << 15);
}

}  // namespace cityos::log_internal::crc32c

#endif  // CITYOS_LOG_CRC32C_H_
