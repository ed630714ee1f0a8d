// File: cityos/logging.h
//
// Structured logging: one line per record, as text for people or as JSON for
// log pipelines (`node.log_format: json`). Fields are key/value pairs; secrets
// must never be passed as fields.
//
//   cityos::LogInfo("bus", "stream created", {{"stream", name}, {"subjects", "carbon.>"}});
//   // {"ts":"2026-11-29T09:00:00.123Z","level":"info","component":"bus",
//   //  "msg":"stream created","stream":"carbon","subjects":"carbon.>"}
//
// Inside a cityos::TraceScope (cityos/trace.h) every record also carries the
// current `trace_id` and `span_id` (after the other fields), so the lines of
// one request can be found across services.
#ifndef CITYOS_LOGGING_H_
#define CITYOS_LOGGING_H_

#include <initializer_list>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace cityos {

enum class LogLevel { kDebug, kInfo, kWarn, kError };
enum class LogFormat { kText, kJson };

// One key/value field of a record.
struct LogField {
  std::string_view key;
  std::string value;
};

// Configures the process-wide logger (stderr). Thread-safe; may be called
// again to change format or level. Default: text, info.
void SetLogOptions(LogFormat format, LogLevel min_level);

// Parses "debug" / "info" / "warn" / "error" and "text" / "json".
absl::StatusOr<LogLevel> ParseLogLevel(std::string_view s);
absl::StatusOr<LogFormat> ParseLogFormat(std::string_view s);

// Whether a record at `level` would be written; lets callers skip building
// expensive fields. Thread-safe.
bool LogEnabled(LogLevel level);

// Writes one record if `level` is at or above the minimum. Thread-safe.
void Log(LogLevel level, std::string_view component, std::string_view msg,
         std::initializer_list<LogField> fields = {});

inline void LogDebug(std::string_view c, std::string_view m,
                     std::initializer_list<LogField> f = {}) {
  Log(LogLevel::kDebug, c, m, f);
}
inline void LogInfo(std::string_view c, std::string_view m,
                    std::initializer_list<LogField> f = {}) {
  Log(LogLevel::kInfo, c, m, f);
}
inline void LogWarn(std::string_view c, std::string_view m,
                    std::initializer_list<LogField> f = {}) {
  Log(LogLevel::kWarn, c, m, f);
}
inline void LogError(std::string_view c, std::string_view m,
                     std::initializer_list<LogField> f = {}) {
  Log(LogLevel::kError, c, m, f);
}

// Formats one record as the logger would, without writing it (for tests and
// for sinks of one's own); like Log, it adds the calling thread's current
// trace context, if any.
std::string FormatLogRecord(LogFormat format, absl::Time time, LogLevel level,
                            std::string_view component, std::string_view msg,
                            std::initializer_list<LogField> fields);

}  // namespace cityos

#endif  // CITYOS_LOGGING_H_
