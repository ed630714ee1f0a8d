// W3C traceparent parsing and formatting, the current trace context, and the
// trace fields the logger writes.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <nlohmann/json.hpp>
#include <thread>

#include "cityos/logging.h"
#include "cityos/trace.h"
#include "testutil.h"

namespace cityos {
namespace {

constexpr char kValid[] =
    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

TEST(TraceContext, ParsesAndFormatsAValidTraceparent) {
  absl::StatusOr<TraceContext> c = TraceContext::Parse(kValid);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->TraceIdHex(), "4bf92f3577b34da6a3ce929d0e0e4736");
  EXPECT_EQ(c->SpanIdHex(), "00f067aa0ba902b7");
  EXPECT_EQ(c->flags(), 0x01);
  EXPECT_TRUE(c->sampled());
  EXPECT_EQ(c->ToTraceparent(), kValid);

  absl::StatusOr<TraceContext> unsampled = TraceContext::Parse(
      "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00");
  ASSERT_TRUE(unsampled.ok());
  EXPECT_FALSE(unsampled->sampled());
}

TEST(TraceContext, AcceptsAHigherVersionAsVersion00) {
  // The spec's forward-compatibility rule: read the version-00 fields.
  for (const char* tp :
       {"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-more"}) {
    absl::StatusOr<TraceContext> c = TraceContext::Parse(tp);
    ASSERT_TRUE(c.ok()) << tp << ": " << c.status();
    EXPECT_EQ(c->ToTraceparent(), kValid);
  }
}

TEST(TraceContext, RejectsMalformedTraceparents) {
  struct Case {
    std::string input;
    std::string error;  // part of the message
  };
  const std::vector<Case> cases = {
      {"", "too short"},
      {"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "version ff"},
      {"0g-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
       "version is not"},
      {"00-00000000000000000000000000000000-00f067aa0ba902b7-01",
       "trace-id is all zeros"},
      {"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
       "parent-id is all zeros"},
      {"00-4bf92f3577b34da6a3ce929d0e0e473x-00f067aa0ba902b7-01",
       "trace-id is not"},
      {"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
       "trace-id is not"},
      {"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902bz-01",
       "parent-id is not"},
      {"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0x",
       "trace-flags is not"},
      {"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-",
       "55 characters, got 56"},
      {"00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
       "55 characters, got 54"},
      {"00-4bf92f3577b34da6a3ce929d0e0e4736a00f067aa0ba902b7-01",
       "expected '-'"},
      {"00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
       "expected '-'"},
      {"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
       "optionally followed"},
      {"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7", "version 01"},
  };
  for (const Case& c : cases) {
    absl::StatusOr<TraceContext> r = TraceContext::Parse(c.input);
    ASSERT_FALSE(r.ok()) << c.input;
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << c.input;
    EXPECT_NE(r.status().message().find(c.error), absl::string_view::npos)
        << c.input << " -> " << r.status();
  }
}

TEST(TraceContext, NewRootAndChild) {
  TraceContext root = TraceContext::NewRoot();
  EXPECT_TRUE(root.valid());
  EXPECT_TRUE(root.sampled());
  TraceContext child = root.Child();
  EXPECT_EQ(child.trace_id(), root.trace_id());
  EXPECT_NE(child.span_id(), root.span_id());
  EXPECT_NE(TraceContext::NewRoot().trace_id(), root.trace_id());
  absl::StatusOr<TraceContext> back =
      TraceContext::Parse(child.ToTraceparent());
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(*back, child);
  EXPECT_FALSE(TraceContext().valid());
}

TEST(TraceContext, ChildClearsUnknownFlags) {
  absl::StatusOr<TraceContext> c = TraceContext::Parse(
      "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-ff");
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(c->Child().flags(), TraceContext::kSampled);
}

TEST(TraceScope, NestsAndIsPerThread) {
  EXPECT_FALSE(CurrentTraceContext().valid());
  TraceContext outer = TraceContext::NewRoot();
  {
    TraceScope a(outer);
    EXPECT_EQ(CurrentTraceContext(), outer);
    TraceContext inner = outer.Child();
    {
      TraceScope b(inner);
      EXPECT_EQ(CurrentTraceContext(), inner);
      bool other_thread_has_one = true;
      std::thread([&] {
        other_thread_has_one = CurrentTraceContext().valid();
      }).join();
      EXPECT_FALSE(other_thread_has_one);
    }
    EXPECT_EQ(CurrentTraceContext(), outer);
  }
  EXPECT_FALSE(CurrentTraceContext().valid());
}

TEST(TraceLogging, FormattedRecordsCarryTheCurrentTrace) {
  TraceContext t = *TraceContext::Parse(kValid);
  std::string outside =
      FormatLogRecord(LogFormat::kJson, absl::FromUnixMillis(0),
                      LogLevel::kInfo, "test", "m", {{"k", "v"}});
  EXPECT_FALSE(nlohmann::json::parse(outside).contains("trace_id")) << outside;
  TraceScope scope(t);
  auto j = nlohmann::json::parse(
      FormatLogRecord(LogFormat::kJson, absl::FromUnixMillis(0),
                      LogLevel::kInfo, "test", "m", {{"k", "v"}}));
  EXPECT_EQ(j["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
  EXPECT_EQ(j["span_id"], "00f067aa0ba902b7");
  EXPECT_EQ(j["k"], "v");
  EXPECT_EQ(
      FormatLogRecord(LogFormat::kText, absl::FromUnixMillis(0),
                      LogLevel::kInfo, "test", "m", {{"k", "v"}}),
      "1970-01-01T00:00:00.000Z INFO [test] m k=v "
      "trace_id=4bf92f3577b34da6a3ce929d0e0e4736 span_id=00f067aa0ba902b7");
}

// Captures what the process logger writes to stderr while `fn` runs.
template <typename Fn>
std::string CaptureStderr(Fn fn) {
  testing::TempDir dir;
  testing::StderrCapture capture(dir.File("stderr"));
  fn();
  return capture.Text();
}

TEST(TraceLogging, LoggerWritesTraceIdInsideAScopeOnly) {
  SetLogOptions(LogFormat::kJson, LogLevel::kInfo);
  TraceContext t = TraceContext::NewRoot();
  std::string out = CaptureStderr([&] {
    LogInfo("test", "before");
    {
      TraceScope scope(t);
      LogInfo("test", "inside", {{"n", "1"}});
    }
    LogInfo("test", "after");
  });
  SetLogOptions(LogFormat::kText, LogLevel::kInfo);
  std::vector<nlohmann::json> lines;
  size_t start = 0;
  while (start < out.size()) {
    size_t end = out.find('\n', start);
    if (end == std::string::npos) end = out.size();
    lines.push_back(nlohmann::json::parse(out.substr(start, end - start)));
    start = end + 1;
  }
  ASSERT_EQ(lines.size(), 3u) << out;
  EXPECT_EQ(lines[0]["msg"], "before");
  EXPECT_FALSE(lines[0].contains("trace_id"));
  EXPECT_EQ(lines[1]["msg"], "inside");
  EXPECT_EQ(lines[1]["trace_id"], t.TraceIdHex());
  EXPECT_EQ(lines[1]["span_id"], t.SpanIdHex());
  EXPECT_EQ(lines[1]["n"], "1");
  EXPECT_EQ(lines[2]["msg"], "after");
  EXPECT_FALSE(lines[2].contains("trace_id"));
}

}  // namespace
}  // namespace cityos
