#include "cityos/logging.h"

#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>

#include <atomic>
#include <nlohmann/json.hpp>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "cityos/trace.h"
#include "core/strings.h"

namespace cityos {
namespace {

std::atomic<LogFormat> g_format{LogFormat::kText};
std::atomic<LogLevel> g_min_level{LogLevel::kInfo};

// spdlog does the thread-safe writing; records are formatted here.
spdlog::logger& Sink() {
  static spdlog::logger* const logger = [] {
    auto* l = new spdlog::logger("cityos",
                                 std::make_shared<spdlog::sinks::stderr_sink_mt>());
    l->set_pattern("%v");
    l->set_level(spdlog::level::trace);
    l->flush_on(spdlog::level::trace);
    return l;
  }();
  return *logger;
}

const char* LevelName(LogLevel level) {
  switch (level) {
    case LogLevel::kDebug:
      return "debug";
    case LogLevel::kInfo:
      return "info";
    case LogLevel::kWarn:
      return "warn";
    case LogLevel::kError:
      return "error";
  }
  return "info";
}

// Quotes a text-format value when it has spaces, quotes or '=' in it.
std::string TextValue(const std::string& v) {
  bool plain = !v.empty();
  for (char c : v) plain = plain && c > ' ' && c != '"' && c != '=';
  return plain ? v : nlohmann::json(v).dump();
}

}  // namespace

void SetLogOptions(LogFormat format, LogLevel min_level) {
  g_format.store(format);
  g_min_level.store(min_level);
}

bool LogEnabled(LogLevel level) {
  return level >= g_min_level.load(std::memory_order_relaxed);
}

absl::StatusOr<LogLevel> ParseLogLevel(std::string_view s) {
  std::string l = absl::AsciiStrToLower(AV(s));
  if (l == "debug") return LogLevel::kDebug;
  if (l == "info") return LogLevel::kInfo;
  if (l == "warn" || l == "warning") return LogLevel::kWarn;
  if (l == "error") return LogLevel::kError;
  return absl::InvalidArgumentError(
      absl::StrCat("log level \"", AV(s), "\": expected debug, info, warn or error"));
}

absl::StatusOr<LogFormat> ParseLogFormat(std::string_view s) {
  std::string l = absl::AsciiStrToLower(AV(s));
  if (l == "text") return LogFormat::kText;
  if (l == "json") return LogFormat::kJson;
  return absl::InvalidArgumentError(
      absl::StrCat("log format \"", AV(s), "\": expected text or json"));
}

std::string FormatLogRecord(LogFormat format, absl::Time time, LogLevel level,
                            std::string_view component, std::string_view msg,
                            std::initializer_list<LogField> fields) {
  std::string ts = absl::FormatTime("%Y-%m-%dT%H:%M:%E3SZ", time, absl::UTCTimeZone());
  const TraceContext& trace = CurrentTraceContext();
  if (format == LogFormat::kJson) {
    nlohmann::ordered_json j;
    j["ts"] = ts;
    j["level"] = LevelName(level);
    j["component"] = std::string(component);
    j["msg"] = std::string(msg);
    for (const LogField& f : fields) j[std::string(f.key)] = f.value;
    if (trace.valid()) {
      j["trace_id"] = trace.TraceIdHex();
      j["span_id"] = trace.SpanIdHex();
    }
    return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  }
  std::string line = absl::StrCat(ts, " ", absl::AsciiStrToUpper(LevelName(level)), " [",
                                  AV(component), "] ", AV(msg));
  for (const LogField& f : fields) absl::StrAppend(&line, " ", AV(f.key), "=", TextValue(f.value));
  if (trace.valid()) {
    absl::StrAppend(&line, " trace_id=", trace.TraceIdHex(), " span_id=", trace.SpanIdHex());
  }
  return line;
}

void Log(LogLevel level, std::string_view component, std::string_view msg,
         std::initializer_list<LogField> fields) {
  if (level < g_min_level.load(std::memory_order_relaxed)) return;
  std::string line =
      FormatLogRecord(g_format.load(std::memory_order_relaxed), absl::Now(), level,
                      component, msg, fields);
  Sink().log(spdlog::level::info, "{}", line);
}

}  // namespace cityos
