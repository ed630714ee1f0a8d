// The node's transport: `tls: auto` (dev PKI + cityosctl context file),
// `tls: {files}`, `insecure: true`, and the config errors when neither is
// given. In-process nodes, plus the cityosd binary for the exit codes.
#include <fcntl.h>
#include <gmock/gmock.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>

#include "cityos/bus/v1/bus.grpc.pb.h"
#include "cityos/ca.h"
#include "cityos/config.h"
#include "cityos/grpc_util.h"
#include "cityos/tls.h"
#include "node.h"
#include "testutil.h"

namespace cityos {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

// Serves GetStream answering with the caller as the node authenticated it.
class WhoAmIService final : public bus::v1::BusService::Service {
 public:
  explicit WhoAmIService(PluginContext** context) : context_(context) {}
  grpc::Status GetStream(grpc::ServerContext* ctx,
                         const bus::v1::GetStreamRequest*,
                         bus::v1::GetStreamResponse* response) override {
    absl::StatusOr<Principal> caller = (*context_)->Authenticate(*ctx);
    if (!caller.ok()) return ToGrpcStatus(caller.status());
    response->mutable_stream()->mutable_config()->set_name(caller->SpiffeId());
    for (const std::string& r : caller->roles) {
      response->mutable_stream()->mutable_config()->add_subjects(r);
    }
    return grpc::Status::OK;
  }

 private:
  PluginContext** context_;
};

class WhoAmIPlugin final : public ServicePlugin {
 public:
  std::string_view name() const override { return "whoami"; }
  absl::Status Configure(const ConfigNode&) override {
    return absl::OkStatus();
  }
  absl::Status Start(PluginContext& context) override {
    context_ = &context;
    return absl::OkStatus();
  }
  std::vector<HostedService> Services() override {
    return {{bus::v1::BusService::service_full_name(), &service_}};
  }
  void Stop() override {}

 private:
  PluginContext* context_ = nullptr;
  WhoAmIService service_{&context_};
};

absl::StatusOr<std::string> WhoAmI(
    const std::shared_ptr<grpc::Channel>& channel) {
  auto stub = bus::v1::BusService::NewStub(channel);
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
  bus::v1::GetStreamResponse resp;
  grpc::Status s = stub->GetStream(&ctx, bus::v1::GetStreamRequest(), &resp);
  if (!s.ok()) return FromGrpcStatus(s);
  std::string out = resp.stream().config().name();
  for (const std::string& r : resp.stream().config().subjects()) out += "|" + r;
  return out;
}

class NodeTlsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(
        registry_
            .Register("whoami", [] { return std::make_unique<WhoAmIPlugin>(); })
            .ok());
    // Hermetic: the context file goes into the temp dir.
    context_file_ = dir_.File("home/.config/cityos/config.yaml");
    ::setenv("HOME", dir_.File("home").c_str(), 1);
    ::unsetenv("CITYOS_CONFIG");
  }

  absl::StatusOr<NodeConfig> Parse(const std::string& node_keys) {
    auto root = ConfigNode::LoadString(
        "node:\n  name: tls-node\n  listen: 127.0.0.1:0\n  data_dir: " +
            dir_.File("data") + "\n" + node_keys +
            "plugins:\n  - name: whoami\n",
        "node.yaml");
    if (!root.ok()) return root.status();
    return ParseNodeConfig(*root, registry_);
  }

  absl::StatusOr<std::unique_ptr<Node>> Start(const std::string& node_keys) {
    auto config = Parse(node_keys);
    if (!config.ok()) return config.status();
    auto node = Node::Create(*std::move(config), registry_);
    if (!node.ok()) return node.status();
    if (absl::Status s = (*node)->Start(); !s.ok()) return s;
    return node;
  }

  testing::TempDir dir_;
  PluginRegistry registry_;
  std::string context_file_;
};

TEST_F(NodeTlsTest, AutoCreatesDevPkiAndContextThenAdminGetsIn) {
  std::string pki = dir_.File("data/pki");
  ClientContext other{.name = "elsewhere",
                      .endpoint = "10.0.0.1:7443",
                      .trust_domain = "x.city",
                      .ca = "/x/ca.pem",
                      .cert = "/x/c.pem",
                      .key = "/x/c.key"};
  ASSERT_TRUE(SaveClientContext(context_file_, other).ok());

  std::string node_serial;
  {
    auto node = Start("  trust_domain: demo.city\n  tls: auto\n");
    ASSERT_TRUE(node.ok()) << node.status();
    for (const std::string& key :
         {pki + "/node.key", pki + "/admin.key", pki + "/ca/ca.key"}) {
      EXPECT_EQ(testing::FileMode(key), 0600) << key;
    }
    EXPECT_EQ(testing::FileMode(context_file_), 0600);
    EXPECT_EQ(testing::FileMode(dir_.File("home/.config/cityos")), 0700);

    auto config = LoadClientConfig(context_file_);
    ASSERT_TRUE(config.ok()) << config.status();
    EXPECT_EQ(config->current_context, "tls-node");
    ASSERT_EQ(config->contexts.size(), 2u);  // the other context is kept
    EXPECT_EQ(config->contexts[0].name, "elsewhere");
    const ClientContext& ctx = config->contexts[1];
    EXPECT_EQ(ctx.name, "tls-node");
    EXPECT_EQ(ctx.endpoint, (*node)->listen_address());
    EXPECT_EQ(ctx.trust_domain, "demo.city");
    EXPECT_EQ(ctx.ca, pki + "/ca/ca.pem");
    EXPECT_EQ(ctx.cert, pki + "/admin.pem");
    EXPECT_EQ(ctx.key, pki + "/admin.key");
    EXPECT_EQ(ctx.server_id, "spiffe://demo.city/org/city/svc/cityosd");
    std::string text = testing::ReadFile(context_file_);
    EXPECT_THAT(text, HasSubstr("endpoint: " + (*node)->listen_address()));
    EXPECT_THAT(text, Not(HasSubstr("PRIVATE KEY")));

    // What cityosctl will do: the admin, through the context, reaches the
    // node, which authenticates it.
    auto creds = MakeChannelCredentials(TlsConfigFor(ctx), ctx.server_id);
    ASSERT_TRUE(creds.ok()) << creds.status();
    auto channel = grpc::CreateChannel(ctx.endpoint, *creds);
    EXPECT_EQ(*CheckHealth(*channel, "", absl::Seconds(10)),
              HealthStatus::kServing);
    auto who = WhoAmI(channel);
    ASSERT_TRUE(who.ok()) << who.status();
    EXPECT_EQ(*who,
              "spiffe://demo.city/org/city/user/admin|admin|policy-admin|auditor|"
              "disaster-authority|carbon-viewer|carbon-admin");

    // Plaintext gets nowhere.
    auto plain =
        grpc::CreateChannel(ctx.endpoint, grpc::InsecureChannelCredentials());
    EXPECT_FALSE(CheckHealth(*plain, "", absl::Seconds(5)).ok());
    node_serial =
        ParseCertificatePem(testing::ReadFile(pki + "/node.pem"))->serial;
    (*node)->Shutdown();
  }
  // A restart reuses the PKI and refreshes the context's endpoint.
  auto node = Start("  trust_domain: demo.city\n  tls: auto\n");
  ASSERT_TRUE(node.ok()) << node.status();
  EXPECT_EQ(ParseCertificatePem(testing::ReadFile(pki + "/node.pem"))->serial,
            node_serial);
  auto config = LoadClientConfig(context_file_);
  ASSERT_TRUE(config.ok());
  ASSERT_EQ(config->contexts.size(), 2u);
  EXPECT_EQ(config->contexts[1].endpoint, (*node)->listen_address());
}

TEST_F(NodeTlsTest, CityosConfigVariableChoosesTheContextFile) {
  std::string path = dir_.File("elsewhere/ctx.yaml");
  ::setenv("CITYOS_CONFIG", path.c_str(), 1);
  auto node = Start("  tls: auto\n");
  ::unsetenv("CITYOS_CONFIG");
  ASSERT_TRUE(node.ok()) << node.status();
  auto config = LoadClientConfig(path);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->contexts[0].trust_domain,
            "local");  // the default trust domain
  EXPECT_EQ(testing::FileMode(path), 0600);
}

TEST_F(NodeTlsTest, TlsFilesFromTheConfig) {
  auto ca = CityCa::Create(dir_.File("ca"), "quzhou.city");
  ASSERT_TRUE(ca.ok());
  ASSERT_TRUE((*ca)
                  ->Issue({.org = "city",
                           .name = "cityosd",
                           .ip_addresses = {"127.0.0.1"},
                           .out = dir_.File("node")})
                  .ok());
  ASSERT_TRUE((*ca)
                  ->Issue({.org = "transit",
                           .name = "planner",
                           .roles = {"planner"},
                           .out = dir_.File("planner")})
                  .ok());
  auto node =
      Start("  trust_domain: quzhou.city\n  tls:\n    ca: " + (*ca)->ca_file() +
            "\n    cert: " + dir_.File("node.pem") +
            "\n    key: " + dir_.File("node.key") +
            "\n    crl: " + (*ca)->crl_file() + "\n    reload_interval: 2s\n");
  ASSERT_TRUE(node.ok()) << node.status();
  EXPECT_FALSE(std::filesystem::exists(dir_.File("data/pki")));
  EXPECT_FALSE(std::filesystem::exists(context_file_));
  auto creds =
      MakeChannelCredentials({.ca_file = (*ca)->ca_file(),
                              .cert_file = dir_.File("planner.pem"),
                              .key_file = dir_.File("planner.key"),
                              .trust_domain = "quzhou.city"},
                             "spiffe://quzhou.city/org/city/svc/cityosd");
  ASSERT_TRUE(creds.ok()) << creds.status();
  auto who = WhoAmI(grpc::CreateChannel((*node)->listen_address(), *creds));
  ASSERT_TRUE(who.ok()) << who.status();
  EXPECT_EQ(*who, "spiffe://quzhou.city/org/transit/svc/planner|planner");
}

TEST_F(NodeTlsTest, InsecureLogsAWarningAtEveryStartAndActsAsTheNode) {
  for (int start = 0; start < 2; ++start) {
    std::string log;
    std::string who;
    {
      testing::StderrCapture capture(dir_.File("stderr-" + std::to_string(start)));
      auto node = Start("  trust_domain: quzhou.city\n  insecure: true\n");
      ASSERT_TRUE(node.ok()) << node.status();
      auto channel = grpc::CreateChannel((*node)->listen_address(),
                                         grpc::InsecureChannelCredentials());
      auto w = WhoAmI(channel);
      ASSERT_TRUE(w.ok()) << w.status();
      who = *w;
      (*node)->Shutdown();
      log = capture.Text();
    }
    EXPECT_THAT(log, HasSubstr("WARN"));
    EXPECT_THAT(log, HasSubstr("no caller authentication"));
    EXPECT_EQ(who, "spiffe://quzhou.city/org/node/svc/tls-node|node");
  }
}

TEST_F(NodeTlsTest, MissingOrConflictingTransportIsAConfigError) {
  auto none = Parse("");
  ASSERT_FALSE(none.ok());
  EXPECT_EQ(none.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(none.status().message(), HasSubstr("node.tls: required"));
  EXPECT_THAT(none.status().message(), HasSubstr("insecure: true"));

  auto off = Parse("  insecure: false\n");
  EXPECT_THAT(off.status().message(), HasSubstr("node.tls: required"));
  auto both = Parse("  insecure: true\n  tls: auto\n");
  EXPECT_THAT(both.status().message(),
              HasSubstr("node.insecure: cannot be combined"));
  auto typo = Parse("  tls: automatic\n");
  EXPECT_THAT(typo.status().message(),
              HasSubstr("node.yaml:5:8: node.tls: \"automatic\""));
  auto partial = Parse("  tls: {ca: /x/ca.pem, cert: /x/c.pem}\n");
  EXPECT_THAT(partial.status().message(),
              HasSubstr("node.tls.key: required key is missing"));
  auto unknown = Parse("  tls: {ca: a, cert: b, key: c, crt: d}\n");
  EXPECT_THAT(unknown.status().message(),
              HasSubstr("node.tls.crt: unknown key"));
  auto domain = Parse("  trust_domain: \"bad/domain\"\n  tls: auto\n");
  EXPECT_THAT(domain.status().message(), HasSubstr("node.trust_domain"));

  // Certificate files that cannot be used fail Create, before any bind.
  auto missing = Parse("  tls: {ca: " + dir_.File("ca.pem") +
                       ", cert: " + dir_.File("c.pem") +
                       ", key: " + dir_.File("c.key") + "}\n");
  ASSERT_TRUE(missing.ok()) << missing.status();
  auto node = Node::Create(*std::move(missing), registry_);
  ASSERT_FALSE(node.ok());
  EXPECT_THAT(node.status().message(), HasSubstr("node.tls"));
  EXPECT_THAT(node.status().message(), HasSubstr("c.pem"));
}

TEST(CityosdTls, MissingTlsConfigFailsBeforeBinding) {
  testing::TempDir dir;
  testing::HeldPort held;
  std::string config = dir.File("node.yaml");
  testing::WriteFile(config, "node:\n  name: p\n  listen: 127.0.0.1:" +
                                 std::to_string(held.port()) +
                                 "\n  data_dir: " + dir.File("data") + "\n");
  auto proc = testing::Subprocess::Start({CITYOSD_PATH, "--config", config});
  ASSERT_TRUE(proc.ok());
  EXPECT_EQ(*(*proc)->Wait(absl::Seconds(30)), 2);
  EXPECT_THAT((*proc)->stderr_text(), HasSubstr("node.tls: required"));
  EXPECT_THAT((*proc)->stderr_text(), Not(HasSubstr("cannot listen")));

  // --check accepts `tls: auto` without creating anything.
  testing::WriteFile(config,
                     "node:\n  name: p\n  listen: 127.0.0.1:0\n  data_dir: " +
                         dir.File("data") + "\n  tls: auto\n");
  auto check =
      testing::Subprocess::Start({CITYOSD_PATH, "--config", config, "--check"});
  ASSERT_TRUE(check.ok());
  EXPECT_EQ(*(*check)->Wait(absl::Seconds(30)), 0);
  EXPECT_FALSE(std::filesystem::exists(dir.File("data/pki")));
}

TEST(CityosdTls, InsecureWarnsOnStart) {
  testing::TempDir dir;
  std::string config = dir.File("node.yaml");
  testing::WriteFile(
      config,
      "node:\n  name: p\n  listen: 127.0.0.1:0\n  insecure: true\n"
      "  log_format: json\n  data_dir: " +
          dir.File("data") + "\n");
  auto proc = testing::Subprocess::Start({CITYOSD_PATH, "--config", config});
  ASSERT_TRUE(proc.ok());
  ASSERT_TRUE((*proc)->WaitForLine("listening on", absl::Seconds(30)).ok())
      << (*proc)->stderr_text();
  (*proc)->Signal(SIGTERM);
  EXPECT_EQ(*(*proc)->Wait(absl::Seconds(30)), 0);
  EXPECT_THAT((*proc)->stderr_text(), HasSubstr("\"level\":\"warn\""));
  EXPECT_THAT((*proc)->stderr_text(), HasSubstr("no caller authentication"));
}

}  // namespace
}  // namespace cityos
