#include "cityos/logging.h"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

namespace cityos {
namespace {

TEST(Logging, JsonRecordHasFieldsInOrderAndEscapes) {
  std::string line = FormatLogRecord(LogFormat::kJson, absl::FromUnixMillis(1764000000123),
                                     LogLevel::kWarn, "bus", "queue \"full\"",
                                     {{"stream", "carbon"}, {"dropped", "12"}});
  auto j = nlohmann::json::parse(line);
  EXPECT_EQ(j["ts"], "2025-11-24T16:00:00.123Z");
  EXPECT_EQ(j["level"], "warn");
  EXPECT_EQ(j["component"], "bus");
  EXPECT_EQ(j["msg"], "queue \"full\"");
  EXPECT_EQ(j["stream"], "carbon");
  EXPECT_EQ(line.find('\n'), std::string::npos);
}

TEST(Logging, TextRecordQuotesValuesWithSpaces) {
  std::string line = FormatLogRecord(LogFormat::kText, absl::FromUnixMillis(0), LogLevel::kInfo,
                                     "node", "serving", {{"listen", "127.0.0.1:1"}, {"why", "a b"}});
  EXPECT_EQ(line, "1970-01-01T00:00:00.000Z INFO [node] serving listen=127.0.0.1:1 why=\"a b\"");
}

TEST(Logging, ParsesLevelsAndFormats) {
  EXPECT_EQ(*ParseLogLevel("DEBUG"), LogLevel::kDebug);
  EXPECT_EQ(*ParseLogLevel("warning"), LogLevel::kWarn);
  EXPECT_FALSE(ParseLogLevel("loud").ok());
  EXPECT_EQ(*ParseLogFormat("json"), LogFormat::kJson);
  EXPECT_FALSE(ParseLogFormat("xml").ok());
}

}  // namespace
}  // namespace cityos
