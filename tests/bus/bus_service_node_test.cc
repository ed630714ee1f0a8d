// The bus inside a node: the node config's `bus:` section (parsing and errors
// with file:line), the node opening and closing its Bus, and the `bus`
// plug-in serving it.
#include <gmock/gmock.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <string>
#include <thread>

#include "builtin_plugins.h"
#include "bus_config.h"
#include "bus_plugin.h"
#include "cityos/bus/v1/bus.grpc.pb.h"
#include "cityos/config.h"
#include "cityos/event.h"
#include "cityos/grpc_util.h"
#include "node.h"
#include "testutil.h"

namespace cityos {
namespace {

using ::testing::HasSubstr;

event::v1::Event MakeEvent(const std::string& subject) {
  auto e = EventBuilder()
               .Source("//test.city/sensors/s-1")
               .Subject(subject)
               .Type("cityos.test.v1.Reading")
               .Classification(event::v1::CLASSIFICATION_INTERNAL)
               .Owner("test-org")
               .TextData("text/plain", "x")
               .Build();
  EXPECT_TRUE(e.ok()) << e.status();
  return *e;
}

absl::StatusOr<BusNodeConfig> ParseBus(const std::string& yaml) {
  auto root = ConfigNode::LoadString(yaml, "node.yaml");
  if (!root.ok()) return root.status();
  auto section = root->ChildOrEmpty("bus");
  if (!section.ok()) return section.status();
  return ParseBusConfig(*section);
}

TEST(BusNodeConfig, DefaultsWhenTheSectionIsAbsent) {
  auto config = ParseBusConfig(ConfigNode::EmptyMap("node.yaml", "bus"));
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->max_event_bytes, 1u << 20);
  EXPECT_EQ(config->live_queue_depth, 65536u);
  EXPECT_TRUE(config->streams.empty());
  BusOptions options = MakeBusOptions(*config, "/data/bus", nullptr);
  EXPECT_EQ(options.data_dir, "/data/bus");
  EXPECT_EQ(options.limits.max_event_bytes, 1u << 20);
  EXPECT_EQ(options.live_queue_depth, 65536u);
  EXPECT_EQ(config->reader_spin_us, 50);
  EXPECT_EQ(options.reader_spin, BusOptions().reader_spin);
}

TEST(BusNodeConfig, ReaderSpinIsSetInMicroseconds) {
  auto config = ParseBus("bus:\n  reader_spin_us: 0\n");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(MakeBusOptions(*config, "/d", nullptr).reader_spin, absl::ZeroDuration());
  config = ParseBus("bus:\n  reader_spin_us: 200\n");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(MakeBusOptions(*config, "/d", nullptr).reader_spin, absl::Microseconds(200));
}

TEST(BusNodeConfig, ReadsLimitsAndStreams) {
  auto config = ParseBus(R"(bus:
  max_event_bytes: 64KiB
  live_queue_depth: 128
  streams:
    - name: carbon
      subjects: ["carbon.>"]
    - name: mobility
      subjects: ["mobility.bus.>", "mobility.tram.>"]
      durability: interval
      sync_interval: 250ms
      max_age: 24h
      max_bytes: 1GiB
      segment_bytes: 8MiB
)");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->max_event_bytes, 64u << 10);
  EXPECT_EQ(config->live_queue_depth, 128u);
  ASSERT_EQ(config->streams.size(), 2u);
  StreamConfig carbon;
  carbon.name = "carbon";
  carbon.subjects = {"carbon.>"};
  EXPECT_EQ(config->streams[0], carbon);  // every default as the library's
  const StreamConfig& m = config->streams[1];
  EXPECT_EQ(m.name, "mobility");
  EXPECT_EQ(m.subjects, (std::vector<std::string>{"mobility.bus.>", "mobility.tram.>"}));
  EXPECT_EQ(m.durability, Durability::kInterval);
  EXPECT_EQ(m.sync_interval, absl::Milliseconds(250));
  EXPECT_EQ(m.max_age, absl::Hours(24));
  EXPECT_EQ(m.max_bytes, 1ull << 30);
  EXPECT_EQ(m.segment_bytes, 8ull << 20);
}

TEST(BusNodeConfig, ErrorsNameFileLineAndKey) {
  struct Case {
    std::string yaml;
    std::string message;
  };
  const std::vector<Case> cases = {
      {"bus:\n  streams:\n    - name: carbon\n      subjects: [\"carbon.>\"]\n"
       "      durability: fsnc\n",
       "node.yaml:5:19: bus.streams[0].durability: expected fsync, interval or none, got "
       "\"fsnc\""},
      {"bus:\n  streams:\n    - subjects: [\"carbon.>\"]\n",
       "node.yaml:3:7: bus.streams[0].name: required key is missing"},
      {"bus:\n  streams:\n    - name: carbon\n      subjects: [\"carbon.>\"]\n"
       "      retention: 1h\n",
       "node.yaml:5:7: bus.streams[0].retention: unknown key"},
      {"bus:\n  max_events: 10\n", "node.yaml:2:3: bus.max_events: unknown key"},
      {"bus:\n  streams:\n    - name: \"car bon\"\n      subjects: [\"carbon.>\"]\n",
       "node.yaml:3:13: bus.streams[0].name: stream name \"car bon\" must be 1-64 characters"},
      {"bus:\n  streams:\n    - name: carbon\n      subjects: [\"carbon..x\"]\n",
       "node.yaml:4:17: bus.streams[0].subjects: "},
      {"bus:\n  streams:\n    - name: carbon\n      subjects: []\n",
       "bus.streams[0].subjects: at least one subject pattern is required"},
      {"bus:\n  streams:\n    - name: carbon\n      subjects: [\"carbon.>\"]\n"
       "    - name: carbon2\n      subjects: [\"carbon.meter.*\"]\n",
       "node.yaml:6:17: bus.streams[1].subjects: pattern \"carbon.meter.*\" overlaps "
       "\"carbon.>\" of stream \"carbon\""},
      {"bus:\n  streams:\n    - name: carbon\n      subjects: [\"carbon.>\"]\n"
       "    - name: carbon\n      subjects: [\"health.>\"]\n",
       "node.yaml:5:13: bus.streams[1].name: stream \"carbon\" is listed twice"},
      {"bus:\n  max_event_bytes: 0\n", "bus.max_event_bytes: must be between 1 and 64MiB"},
      {"bus:\n  live_queue_depth: lots\n", "bus.live_queue_depth: expected an integer"},
      {"bus:\n  reader_spin_us: -1\n",
       "bus.reader_spin_us: must be between 0 and 10000 (microseconds; 0 never "
       "spins), got -1"},
      {"bus:\n  reader_spin_us: 10001\n", "bus.reader_spin_us: must be between 0 and 10000"},
      {"bus:\n  streams:\n    - name: carbon\n      subjects: [\"carbon.>\"]\n"
       "      sync_interval: 0s\n",
       "bus.streams[0].sync_interval: must be positive"},
      {"bus:\n  streams: {name: carbon}\n", "bus.streams: expected a list, got a map"},
  };
  PluginRegistry registry;
  ASSERT_TRUE(RegisterBusPlugin(registry).ok());
  for (const Case& c : cases) {
    SCOPED_TRACE(c.yaml);
    auto direct = ParseBus(c.yaml);
    ASSERT_FALSE(direct.ok());
    EXPECT_EQ(direct.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(direct.status().message()), HasSubstr(c.message));
    // The node config checks it too (before anything is bound), with the
    // lines shifted by the node section in front.
    auto root = ConfigNode::LoadString(
        "node:\n  name: t\n  listen: 127.0.0.1:0\n  insecure: true\n  data_dir: /tmp/t\n" + c.yaml, "node.yaml");
    ASSERT_TRUE(root.ok());
    auto parsed = ParseNodeConfig(*root, registry);
    ASSERT_FALSE(parsed.ok());
    EXPECT_EQ(parsed.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(parsed.status().message()), HasSubstr("node.yaml:"));
  }
}

TEST(BusPlugin, RejectsUnknownPluginConfigKeys) {
  PluginRegistry registry;
  ASSERT_TRUE(RegisterBusPlugin(registry).ok());
  testing::TempDir dir;
  auto root = ConfigNode::LoadString("node:\n  name: t\n  listen: 127.0.0.1:0\n  insecure: true\n  data_dir: " +
                                         dir.path() +
                                         "\nplugins:\n  - name: bus\n    config: {windw: 3}\n",
                                     "node.yaml");
  ASSERT_TRUE(root.ok());
  auto config = ParseNodeConfig(*root, registry);
  ASSERT_TRUE(config.ok()) << config.status();
  auto node = Node::Create(*std::move(config), registry);
  ASSERT_FALSE(node.ok());
  EXPECT_THAT(std::string(node.status().message()), HasSubstr("plugins[0].config.windw: unknown key"));
}

TEST(BusPlugin, TheDemoCityConfigIsValid) {
  PluginRegistry registry;
  ASSERT_TRUE(RegisterBuiltinPlugins(registry).ok());
  EXPECT_TRUE(registry.Contains("bus"));
  auto root = ConfigNode::LoadFile(CITYOS_SOURCE_DIR "/config/demo-city.yaml");
  ASSERT_TRUE(root.ok()) << root.status();
  auto config = ParseNodeConfig(*root, registry);
  ASSERT_TRUE(config.ok()) << config.status();
  auto bus = ParseBusConfig(config->bus_section);
  ASSERT_TRUE(bus.ok());
  ASSERT_EQ(bus->streams.size(), 3u);
  EXPECT_EQ(bus->streams[0].name, "carbon");
  EXPECT_EQ(bus->streams[0].durability, Durability::kInterval);
  EXPECT_EQ(bus->streams[1].name, "mobility");
  EXPECT_EQ(bus->streams[1].durability, Durability::kInterval);
  EXPECT_EQ(bus->streams[2].name, "payments");
  EXPECT_TRUE(Node::Create(*std::move(config), registry).ok());
}

class BusNodeTest : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_TRUE(RegisterBuiltinPlugins(registry_).ok()); }

  std::string Yaml(const std::string& carbon_durability = "fsync") {
    return "node:\n  name: test-node\n  listen: 127.0.0.1:0\n  insecure: true\n  data_dir: " + dir_.path() +
           "\n  shutdown_grace: 1s\n"
           "bus:\n  streams:\n"
           "    - name: carbon\n      subjects: [\"carbon.>\"]\n      durability: " +
           carbon_durability +
           "\n    - name: mobility\n      subjects: [\"mobility.>\"]\n"
           "      durability: interval\n      sync_interval: 100ms\n"
           "plugins:\n  - name: bus\n";
  }
  absl::StatusOr<std::unique_ptr<Node>> StartNode(const std::string& yaml) {
    auto root = ConfigNode::LoadString(yaml, "node.yaml");
    if (!root.ok()) return root.status();
    auto config = ParseNodeConfig(*root, registry_);
    if (!config.ok()) return config.status();
    auto node = Node::Create(*std::move(config), registry_);
    if (!node.ok()) return node.status();
    if (absl::Status s = (*node)->Start(); !s.ok()) return s;
    return node;
  }
  std::unique_ptr<bus::v1::BusService::Stub> Stub(Node& node) {
    return bus::v1::BusService::NewStub(
        grpc::CreateChannel(node.listen_address(), grpc::InsecureChannelCredentials()));
  }
  uint64_t PublishOne(bus::v1::BusService::Stub& stub, const std::string& subject) {
    bus::v1::PublishRequest req;
    *req.add_events() = MakeEvent(subject);
    bus::v1::PublishResponse resp;
    grpc::ClientContext ctx;
    grpc::Status s = stub.Publish(&ctx, req, &resp);
    EXPECT_TRUE(s.ok()) << s.error_message();
    return s.ok() ? resp.results(0).sequence() : 0;
  }

  testing::TempDir dir_;
  PluginRegistry registry_;
};

TEST_F(BusNodeTest, TheNodeOpensItsBusCreatesTheStreamsAndServesThem) {
  auto node = StartNode(Yaml());
  ASSERT_TRUE(node.ok()) << node.status();
  EXPECT_TRUE(std::filesystem::is_directory(dir_.path() + "/bus"));
  auto channel = grpc::CreateChannel((*node)->listen_address(), grpc::InsecureChannelCredentials());
  EXPECT_EQ(*CheckHealth(*channel, "cityos.bus.v1.BusService", absl::Seconds(5)),
            HealthStatus::kServing);
  auto stub = Stub(**node);
  {
    bus::v1::ListStreamsResponse resp;
    grpc::ClientContext ctx;
    ASSERT_TRUE(stub->ListStreams(&ctx, {}, &resp).ok());
    ASSERT_EQ(resp.streams_size(), 2);
    EXPECT_EQ(resp.streams(0).config().name(), "carbon");
    EXPECT_EQ(resp.streams(0).config().durability(), bus::v1::DURABILITY_FSYNC);
    EXPECT_EQ(resp.streams(1).config().name(), "mobility");
    EXPECT_EQ(resp.streams(1).config().durability(), bus::v1::DURABILITY_INTERVAL);
  }
  EXPECT_EQ(PublishOne(*stub, "carbon.meter.reading"), 1u);
  EXPECT_EQ(PublishOne(*stub, "mobility.bus.position"), 1u);
  EXPECT_EQ(PublishOne(*stub, "health.beds"), 0u);  // no stream captures it
  (*node)->Shutdown();
  node->reset();

  // Same data dir, same streams (idempotent): the log carries on.
  auto again = StartNode(Yaml());
  ASSERT_TRUE(again.ok()) << again.status();
  auto stub2 = Stub(**again);
  EXPECT_EQ(PublishOne(*stub2, "carbon.meter.reading"), 2u);
  // Without authentication, the publisher is the node itself.
  bus::v1::SubscribeRequest replay;
  replay.set_stream("carbon");
  replay.mutable_start()->set_kind(bus::v1::StartPosition::KIND_EARLIEST);
  grpc::ClientContext ctx;
  auto reader = stub2->Subscribe(&ctx, replay);
  bus::v1::SubscribeResponse resp;
  ASSERT_TRUE(reader->Read(&resp));
  ASSERT_GT(resp.deliveries_size(), 0);
  EXPECT_EQ(resp.deliveries(0).event().publisher(), "spiffe://local/org/node/svc/test-node");
  ctx.TryCancel();
  reader->Finish();
}

TEST_F(BusNodeTest, AStreamWhoseConfigChangedStopsTheStart) {
  {
    auto node = StartNode(Yaml("fsync"));
    ASSERT_TRUE(node.ok()) << node.status();
  }
  auto changed = StartNode(Yaml("none"));
  ASSERT_FALSE(changed.ok());
  EXPECT_EQ(changed.status().code(), absl::StatusCode::kAlreadyExists);
  EXPECT_THAT(std::string(changed.status().message()), HasSubstr("bus.streams: stream \"carbon\""));
  // A corrected config starts again: nothing was left half-open.
  auto fixed = StartNode(Yaml("fsync"));
  EXPECT_TRUE(fixed.ok()) << fixed.status();
}

TEST_F(BusNodeTest, ShutdownEndsOpenSubscriptions) {
  auto node = StartNode(Yaml());
  ASSERT_TRUE(node.ok()) << node.status();
  auto stub = Stub(**node);
  bus::v1::SubscribeRequest live;
  live.set_subject_pattern("carbon.>");
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Minutes(1)));
  auto reader = stub->Subscribe(&ctx, live);
  reader->WaitForInitialMetadata();
  std::thread reading([&] {
    bus::v1::SubscribeResponse resp;
    while (reader->Read(&resp)) {
    }
  });
  (*node)->Shutdown();  // must not hang on the open stream
  reading.join();
  // bus.proto: the stream ends with UNAVAILABLE when the node shuts down, so
  // clients reconnect elsewhere.
  grpc::Status end = reader->Finish();
  EXPECT_EQ(end.error_code(), grpc::StatusCode::UNAVAILABLE) << end.error_message();
}

}  // namespace
}  // namespace cityos
