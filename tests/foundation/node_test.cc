// The node in-process: config parsing errors, plug-in lifecycle, health.
#include "node.h"

#include <gmock/gmock.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include "cityos/bus/v1/bus.grpc.pb.h"
#include "cityos/config.h"
#include "cityos/grpc_util.h"
#include "testutil.h"

namespace cityos {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

// A plug-in that records its lifecycle and serves an (unimplemented) service.
class RecordingPlugin final : public ServicePlugin {
 public:
  RecordingPlugin(std::string name, std::vector<std::string>* journal)
      : name_(std::move(name)), journal_(journal) {}
  std::string_view name() const override { return name_; }
  absl::Status Configure(const ConfigNode& section) override {
    auto greeting = section.GetString("greeting", "hello");
    if (!greeting.ok()) return greeting.status();
    journal_->push_back(name_ + ".configure:" + *greeting);
    return section.CheckKeys({"greeting", "fail_start"});
  }
  absl::Status Start(PluginContext& ctx) override {
    journal_->push_back(name_ + ".start");
    auto dir = ctx.PluginDataDir(name_);
    if (!dir.ok()) return dir.status();
    if (fail_start_) return absl::FailedPreconditionError("refused to start");
    return absl::OkStatus();
  }
  std::vector<HostedService> Services() override {
    return {{bus::v1::BusService::service_full_name(), &service_}};
  }
  void Stop() override { journal_->push_back(name_ + ".stop"); }
  bool fail_start_ = false;

 private:
  std::string name_;
  std::vector<std::string>* journal_;
  bus::v1::BusService::Service service_;
};

class NodeTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(registry_
                    .Register("recorder",
                              [this] { return std::make_unique<RecordingPlugin>("recorder", &journal_); })
                    .ok());
  }
  absl::StatusOr<NodeConfig> Parse(const std::string& yaml) {
    auto root = ConfigNode::LoadString(yaml, "node.yaml");
    if (!root.ok()) return root.status();
    return ParseNodeConfig(*root, registry_);
  }
  std::string Yaml(const std::string& plugins) {
    return "node:\n  name: test\n  listen: 127.0.0.1:0\n  insecure: true\n  data_dir: " +
           dir_.path() + "\n" + plugins;
  }

  testing::TempDir dir_;
  PluginRegistry registry_;
  std::vector<std::string> journal_;
};

TEST_F(NodeTest, StartsServesHealthAndStopsPluginsInReverse) {
  auto config = Parse(Yaml("plugins:\n  - name: recorder\n    config: {greeting: hi}\n"));
  ASSERT_TRUE(config.ok()) << config.status();
  auto node = Node::Create(*std::move(config), registry_);
  ASSERT_TRUE(node.ok()) << node.status();
  ASSERT_TRUE((*node)->Start().ok());
  auto channel = grpc::CreateChannel((*node)->listen_address(), grpc::InsecureChannelCredentials());
  EXPECT_EQ(*CheckHealth(*channel, "", absl::Seconds(5)), HealthStatus::kServing);
  EXPECT_EQ(*CheckHealth(*channel, "cityos.bus.v1.BusService", absl::Seconds(5)),
            HealthStatus::kServing);
  auto unknown = CheckHealth(*channel, "no.such.Service", absl::Seconds(5));
  EXPECT_EQ(unknown.status().code(), absl::StatusCode::kNotFound);
  (*node)->Shutdown();
  (*node)->Shutdown();  // idempotent
  EXPECT_THAT(journal_, ElementsAre("recorder.configure:hi", "recorder.start", "recorder.stop"));
}

TEST_F(NodeTest, UnknownPluginIsRejectedWithPosition) {
  auto config = Parse(Yaml("plugins:\n  - name: recorder\n  - name: carbonn\n"));
  ASSERT_FALSE(config.ok());
  EXPECT_EQ(config.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(config.status().message(),
              HasSubstr("node.yaml:8:11: plugins[1].name: unknown plug-in \"carbonn\" "
                        "(this binary has: recorder)"));
}

TEST_F(NodeTest, DuplicatePluginIsRejected) {
  auto config = Parse(Yaml("plugins:\n  - name: recorder\n  - name: recorder\n"));
  ASSERT_FALSE(config.ok());
  EXPECT_THAT(config.status().message(), HasSubstr("plugins[1].name: plug-in \"recorder\" is listed twice"));
}

TEST_F(NodeTest, MissingAndMistypedNodeKeys) {
  auto missing = Parse("node:\n  name: x\n  data_dir: /tmp/x\n");
  ASSERT_FALSE(missing.ok());
  EXPECT_THAT(missing.status().message(), HasSubstr("node.listen: required key is missing"));
  auto bad_listen = Parse("node:\n  name: x\n  listen: nowhere\n  data_dir: /tmp/x\n");
  EXPECT_THAT(bad_listen.status().message(), HasSubstr("node.yaml:3:11: node.listen: \"nowhere\" is not host:port"));
  auto bad_grace = Parse(Yaml("").replace(0, 5, "node:\n  shutdown_grace: soon"));
  EXPECT_THAT(bad_grace.status().message(), HasSubstr("node.shutdown_grace: expected a duration"));
  auto unknown_top = Parse(Yaml("plugin: []\n"));
  EXPECT_THAT(unknown_top.status().message(), HasSubstr("plugin: unknown key"));
  auto not_list = Parse(Yaml("plugins: {name: recorder}\n"));
  EXPECT_THAT(not_list.status().message(), HasSubstr("plugins: expected a list, got a map"));
}

TEST_F(NodeTest, PluginConfigErrorsSurfaceFromCreate) {
  auto config = Parse(Yaml("plugins:\n  - name: recorder\n    config: {greetin: hi}\n"));
  ASSERT_TRUE(config.ok());
  auto node = Node::Create(*std::move(config), registry_);
  ASSERT_FALSE(node.ok());
  EXPECT_THAT(node.status().message(), HasSubstr("plugins[0].config.greetin: unknown key"));
}

TEST_F(NodeTest, ListenFailureStopsStartedPlugins) {
  testing::HeldPort held;
  auto config = Parse("node:\n  name: t\n  listen: 127.0.0.1:" + std::to_string(held.port()) +
                      "\n  insecure: true\n  data_dir: " + dir_.path() + "\nplugins:\n  - name: recorder\n");
  ASSERT_TRUE(config.ok()) << config.status();
  auto node = Node::Create(*std::move(config), registry_);
  ASSERT_TRUE(node.ok());
  absl::Status s = (*node)->Start();
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(s.message(), HasSubstr("cannot listen on 127.0.0.1:"));
  EXPECT_THAT(journal_, ElementsAre("recorder.configure:hello", "recorder.start", "recorder.stop"));
}

}  // namespace
}  // namespace cityos
