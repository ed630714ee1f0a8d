#include "cityos/id.h"

#include <openssl/rand.h>

#include <cstring>
#include <mutex>

#include "absl/strings/str_format.h"

namespace cityos {
namespace {

// State of the monotonic generator: the last (milliseconds, counter) issued.
std::mutex g_mu;
uint64_t g_last_ms = 0;
uint16_t g_counter = 0;  // 12 bits used

void FillRandom(uint8_t* p, size_t n) {
  if (RAND_bytes(p, static_cast<int>(n)) != 1) {
    // OpenSSL's CSPRNG failing is not recoverable for id generation; fall
    // back to a weaker source rather than returning duplicate ids.
    for (size_t i = 0; i < n; ++i) p[i] = static_cast<uint8_t>(std::rand());
  }
}

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

}  // namespace

Uuid NewUuidV7At(absl::Time now) {
  uint8_t rnd[10];
  FillRandom(rnd, sizeof(rnd));
  int64_t now_ms = absl::ToUnixMillis(now);
  uint64_t ms = now_ms < 0 ? 0 : static_cast<uint64_t>(now_ms);
  uint16_t counter;
  {
    std::lock_guard<std::mutex> lock(g_mu);
    if (ms > g_last_ms) {
      g_last_ms = ms;
      // Start each millisecond at a random point in the lower half so the
      // counter rarely overflows.
      g_counter = static_cast<uint16_t>((rnd[0] << 8 | rnd[1]) & 0x7FF);
    } else {
      // Same millisecond, or the clock went back: keep ordering by counting.
      ms = g_last_ms;
      if (++g_counter > 0xFFF) {
        g_counter = 0;
        g_last_ms = ++ms;
      }
    }
    counter = g_counter;
  }
  Uuid u;
  for (int i = 0; i < 6; ++i) u[i] = static_cast<uint8_t>(ms >> (40 - 8 * i));
  u[6] = static_cast<uint8_t>(0x70 | ((counter >> 8) & 0x0F));
  u[7] = static_cast<uint8_t>(counter & 0xFF);
  u[8] = static_cast<uint8_t>(0x80 | (rnd[2] & 0x3F));
  std::memcpy(&u[9], &rnd[3], 7);
  return u;
}

Uuid NewUuidV7() { return NewUuidV7At(absl::Now()); }

std::string UuidToString(const Uuid& id) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string s;
  s.reserve(36);
  for (int i = 0; i < 16; ++i) {
    if (i == 4 || i == 6 || i == 8 || i == 10) s.push_back('-');
    s.push_back(kHex[id[i] >> 4]);
    s.push_back(kHex[id[i] & 0xF]);
  }
  return s;
}

absl::StatusOr<Uuid> ParseUuid(std::string_view text) {
  if (text.size() != 36) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "uuid \"%s\": expected 36 characters, got %d", text, text.size()));
  }
  Uuid u;
  size_t pos = 0;
  for (int i = 0; i < 16; ++i) {
    if (pos == 8 || pos == 13 || pos == 18 || pos == 23) {
      if (text[pos] != '-') {
        return absl::InvalidArgumentError(absl::StrFormat(
            "uuid \"%s\": expected '-' at offset %d", text, pos));
      }
      ++pos;
    }
    int hi = HexValue(text[pos]), lo = HexValue(text[pos + 1]);
    if (hi < 0 || lo < 0) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "uuid \"%s\": non-hex character at offset %d", text,
          hi < 0 ? pos : pos + 1));
    }
    u[i] = static_cast<uint8_t>(hi << 4 | lo);
    pos += 2;
  }
  return u;
}

absl::Time UuidV7Time(const Uuid& id) {
  uint64_t ms = 0;
  for (int i = 0; i < 6; ++i) ms = ms << 8 | id[i];
  return absl::FromUnixMillis(static_cast<int64_t>(ms));
}

std::string NewEventId() { return UuidToString(NewUuidV7()); }

}  // namespace cityos
