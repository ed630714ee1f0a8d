// The exchange plug-in's config section: the store's keys are accepted, bad
// values are refused naming the key (and the file and line). (That accepted
// values reach the store is not observable here, before Start.)
#include <string>

#include "cityos/config.h"
#include "cityos/plugin.h"
#include "exchange_plugin.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace cityos {
namespace {

using ::testing::HasSubstr;

absl::Status Configure(const std::string& yaml) {
  std::unique_ptr<ServicePlugin> plugin = MakeExchangePlugin();
  auto section = ConfigNode::LoadString(yaml, "node.yaml");
  if (!section.ok()) return section.status();
  return plugin->Configure(*section);
}

TEST(ExchangePluginConfig, AcceptsTheStoreKeys) {
  EXPECT_TRUE(Configure("{}\n").ok());
  EXPECT_TRUE(Configure("store: {max_history_per_entity: 16, full_sync: true, "
                        "memory_index_mib: 0}\n")
                  .ok());
  EXPECT_TRUE(Configure("store: {memory_index_mib: 4096}\n").ok());
}

TEST(ExchangePluginConfig, RefusesBadStoreValuesNamingTheKey) {
  for (const char* yaml : {"store: {memory_index_mib: -1}\n",
                           "store: {memory_index_mib: 2000000}\n",
                           "store: {memory_index_mib: lots}\n",
                           "store: {memory_index: 64}\n",
                           "store: {max_history_per_entity: -2}\n"}) {
    SCOPED_TRACE(yaml);
    absl::Status s = Configure(yaml);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
    EXPECT_THAT(std::string(s.message()), HasSubstr("node.yaml:1"));
    EXPECT_THAT(std::string(s.message()),
                HasSubstr(std::string(yaml).find("history") != std::string::npos
                              ? "max_history_per_entity"
                              : "memory_index"));
  }
}

}  // namespace
}  // namespace cityos
