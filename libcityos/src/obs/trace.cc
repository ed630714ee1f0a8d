// W3C Trace Context: traceparent parsing and formatting, random ids, and the
// thread-local current context. See cityos/trace.h.
#include "cityos/trace.h"

#include <random>
#include <thread>

#include "absl/strings/str_format.h"
#include "obs/trace_internal.h"

namespace cityos {
namespace {

thread_local TraceContext t_current;

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  return -1;  // upper case is not allowed by the spec
}

// Decodes `hex` (2 * out.size() characters) into `out`; false on a bad digit.
template <size_t N>
bool DecodeHex(std::string_view hex, std::array<uint8_t, N>* out) {
  for (size_t i = 0; i < N; ++i) {
    int hi = HexValue(hex[2 * i]);
    int lo = HexValue(hex[2 * i + 1]);
    if (hi < 0 || lo < 0) return false;
    (*out)[i] = static_cast<uint8_t>(hi << 4 | lo);
  }
  return true;
}

template <size_t N>
std::string EncodeHex(const std::array<uint8_t, N>& bytes) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string s(2 * N, '0');
  for (size_t i = 0; i < N; ++i) {
    s[2 * i] = kDigits[bytes[i] >> 4];
    s[2 * i + 1] = kDigits[bytes[i] & 0xf];
  }
  return s;
}

template <size_t N>
bool AllZero(const std::array<uint8_t, N>& bytes) {
  for (uint8_t b : bytes) {
    if (b != 0) return false;
  }
  return true;
}

// Per-thread generator: ids need to be unique, not secret.
std::mt19937_64& Rng() {
  thread_local std::mt19937_64 rng([] {
    std::random_device rd;
    std::seed_seq seq{rd(), rd(), rd(), rd(),
                      static_cast<unsigned>(std::hash<std::thread::id>()(
                          std::this_thread::get_id()))};
    return std::mt19937_64(seq);
  }());
  return rng;
}

template <size_t N>
void FillRandomNonZero(std::array<uint8_t, N>* out) {
  do {
    for (size_t i = 0; i < N; i += 8) {
      uint64_t r = Rng()();
      for (size_t k = 0; k < 8 && i + k < N; ++k)
        (*out)[i + k] = static_cast<uint8_t>(r >> (8 * k));
    }
  } while (AllZero(*out));
}

absl::Status Invalid(std::string_view traceparent, std::string_view why) {
  return absl::InvalidArgumentError(absl::StrFormat(
      "traceparent \"%s\": %s", traceparent.substr(0, 80), why));
}

}  // namespace

// Layout of version 00: vv-<32 hex>-<16 hex>-ff, dashes at 2, 35 and 52.
absl::StatusOr<TraceContext> TraceContext::Parse(std::string_view tp) {
  constexpr size_t kLength = 55;
  if (tp.size() < 2) return Invalid(tp, "too short for a version");
  std::array<uint8_t, 1> version;
  if (!DecodeHex(tp.substr(0, 2), &version)) {
    return Invalid(tp, "version is not two lower-case hex digits");
  }
  if (version[0] == 0xff) return Invalid(tp, "version ff is invalid");
  if (version[0] == 0x00) {
    if (tp.size() != kLength) {
      return Invalid(tp, absl::StrFormat("version 00 is %d characters, got %d",
                                         kLength, tp.size()));
    }
  } else if (tp.size() < kLength ||
             (tp.size() > kLength && tp[kLength] != '-')) {
    return Invalid(
        tp, absl::StrFormat("version %s: expected 55 characters, optionally "
                            "followed by '-'",
                            tp.substr(0, 2)));
  }
  if (tp[2] != '-' || tp[35] != '-' || tp[52] != '-') {
    return Invalid(tp,
                   "expected '-' after the version, trace-id and parent-id "
                   "(2, 32 and 16 hex digits)");
  }
  TraceContext c;
  if (!DecodeHex(tp.substr(3, 32), &c.trace_id_)) {
    return Invalid(tp, "trace-id is not 32 lower-case hex digits");
  }
  if (!DecodeHex(tp.substr(36, 16), &c.span_id_)) {
    return Invalid(tp, "parent-id is not 16 lower-case hex digits");
  }
  std::array<uint8_t, 1> flags;
  if (!DecodeHex(tp.substr(53, 2), &flags)) {
    return Invalid(tp, "trace-flags is not two lower-case hex digits");
  }
  c.flags_ = flags[0];
  if (AllZero(c.trace_id_)) return Invalid(tp, "trace-id is all zeros");
  if (AllZero(c.span_id_)) return Invalid(tp, "parent-id is all zeros");
  return c;
}

TraceContext TraceContext::NewRoot() {
  TraceContext c;
  FillRandomNonZero(&c.trace_id_);
  FillRandomNonZero(&c.span_id_);
  c.flags_ = kSampled;
  return c;
}

TraceContext TraceContext::Child() const {
  TraceContext c;
  c.trace_id_ = trace_id_;
  FillRandomNonZero(&c.span_id_);
  c.flags_ = flags_ & kSampled;
  return c;
}

std::string TraceContext::ToTraceparent() const {
  return absl::StrFormat("00-%s-%s-%02x", TraceIdHex(), SpanIdHex(), flags_);
}

std::string TraceContext::TraceIdHex() const { return EncodeHex(trace_id_); }
std::string TraceContext::SpanIdHex() const { return EncodeHex(span_id_); }

bool TraceContext::valid() const {
  return !AllZero(trace_id_) && !AllZero(span_id_);
}

const TraceContext& CurrentTraceContext() { return t_current; }

TraceScope::TraceScope(const TraceContext& context)
    : previous_(obs_internal::ExchangeCurrentTraceContext(context)) {}

TraceScope::~TraceScope() { t_current = previous_; }

namespace obs_internal {

TraceContext ExchangeCurrentTraceContext(const TraceContext& context) {
  TraceContext previous = t_current;
  t_current = context;
  return previous;
}

}  // namespace obs_internal
}  // namespace cityos
