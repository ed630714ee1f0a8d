// File: cityos/trace.h
//
// W3C Trace Context (https://www.w3.org/TR/trace-context/) for cityos: the
// `traceparent` value carried in gRPC metadata, and the trace context of the
// current thread, which the logger writes into every record as `trace_id` and
// `span_id`.
//
//   absl::StatusOr<cityos::TraceContext> parent = cityos::TraceContext::Parse(
//       "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
//   cityos::TraceScope scope(parent.ok() ? parent->Child() :
//   cityos::TraceContext::NewRoot()); cityos::LogInfo("carbon", "settled");  //
//   ... "trace_id":"4bf9...","span_id":"..."
//
// Outgoing gRPC calls made through a channel from cityos::CreateObservedChannel
// (cityos/observability.h) carry the current context; servers with
// cityos::AddServerObservability make the caller's context current for sync
// handlers.
#ifndef CITYOS_TRACE_H_
#define CITYOS_TRACE_H_

#include <array>
#include <cstdint>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace cityos {

// One position in a distributed trace: the trace it belongs to, the current
// span (unit of work) and the trace flags. A value type; the default value is
// invalid (all-zero ids) and means "no trace".
class TraceContext {
 public:
  using TraceId = std::array<uint8_t, 16>;
  using SpanId = std::array<uint8_t, 8>;

  // Trace flag bit 0: the caller may have recorded this trace.
  static constexpr uint8_t kSampled = 0x01;

  TraceContext() = default;
  TraceContext(const TraceId& trace_id, const SpanId& span_id, uint8_t flags)
      : trace_id_(trace_id), span_id_(span_id), flags_(flags) {}

  // Parses a `traceparent` header value:
  //   version "-" trace-id "-" parent-id "-" trace-flags
  //   00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01
  // Lower-case hex only. Version 00 must be exactly 55 characters; version ff
  // is invalid; a higher version is read as 00 when its first 55 characters
  // are and it ends there or continues with '-' (the spec's forward
  // compatibility rule). All-zero trace or parent ids are invalid. Errors are
  // INVALID_ARGUMENT naming the part that is wrong. The span id of the result
  // is the caller's span (the header's parent-id); call Child() for one's own.
  static absl::StatusOr<TraceContext> Parse(std::string_view traceparent);

  // A new trace: random trace and span ids, flags = kSampled.
  static TraceContext NewRoot();

  // The same trace and flags (unknown flag bits cleared) with a new random
  // span id. REQUIRES: valid().
  TraceContext Child() const;

  // "00-<trace id>-<span id>-<flags>", 55 characters. REQUIRES: valid().
  std::string ToTraceparent() const;

  // Lower-case hex: 32 and 16 characters.
  std::string TraceIdHex() const;
  std::string SpanIdHex() const;

  // False for the default value (no trace).
  bool valid() const;
  const TraceId& trace_id() const { return trace_id_; }
  const SpanId& span_id() const { return span_id_; }
  uint8_t flags() const { return flags_; }
  bool sampled() const { return (flags_ & kSampled) != 0; }

  friend bool operator==(const TraceContext&, const TraceContext&) = default;

 private:
  TraceId trace_id_{};
  SpanId span_id_{};
  uint8_t flags_ = 0;
};

// The trace context of the calling thread; invalid when none is set.
const TraceContext& CurrentTraceContext();

// Makes `context` the current one of this thread for the scope's lifetime and
// restores the previous one on destruction. Scopes nest; create and destroy a
// scope on the same thread. Not copyable or movable.
class TraceScope {
 public:
  explicit TraceScope(const TraceContext& context);
  ~TraceScope();
  TraceScope(const TraceScope&) = delete;
  TraceScope& operator=(const TraceScope&) = delete;

 private:
  TraceContext previous_;
};

}  // namespace cityos

#endif  // CITYOS_TRACE_H_
