#include "service_fixture.h"

#include <stdlib.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>

#include "builtin_plugins.h"
#include "absl/strings/str_format.h"
#include "cityos/ca.h"
#include "cityos/config.h"
#include "cityos/entity.h"
#include "cityos/event.h"
#include "cityos/tls.h"

namespace cityos::exchange_test {

ConsentAnswer TestConsent::Check(const ConsentQuery& query) {
  absl::MutexLock lock(&mu_);
  ConsentAnswer a;
  if (query.recipient != nullptr &&
      granted_.count({query.recipient->org, std::string(query.data_subject)}) > 0) {
    a.granted = true;
    a.consent_id = "consent-" + query.recipient->org + "-" + std::string(query.data_subject);
  } else {
    a.reason = "no active consent for purpose " + std::string(query.purpose);
  }
  return a;
}

void TestConsent::Grant(const std::string& org, const std::string& data_subject) {
  absl::MutexLock lock(&mu_);
  granted_.insert({org, data_subject});
}

void TestConsent::Revoke(PolicyDecisionPoint* pdp, const std::string& org,
                         const std::string& data_subject) {
  {
    absl::MutexLock lock(&mu_);
    granted_.erase({org, data_subject});
  }
  pdp->Invalidate({.kind = PolicyChange::Kind::kConsent, .data_subject = data_subject, .org = org});
}

Hooks& TheHooks() {
  static Hooks* hooks = new Hooks();
  return *hooks;
}

Hooks& FillHooks(PluginContext& context) {
  Hooks& h = TheHooks();
  h.bus = context.bus();
  h.pdp = context.policy();
  h.audit = context.audit();
  h.node_name = context.node().name;
  h.trust_domain = context.node().trust_domain.empty() ? "local" : context.node().trust_domain;
  return h;
}

namespace {

// The test-only plug-in: exposes the node's handles and answers consent.
class TestHooksPlugin final : public ServicePlugin {
 public:
  std::string_view name() const override { return "testhooks"; }
  absl::Status Configure(const ConfigNode&) override { return absl::OkStatus(); }
  absl::Status Start(PluginContext& context) override {
    Hooks& h = FillHooks(context);
    pdp_ = context.policy();
    pdp_->SetConsentChecker(&h.consent);
    return absl::OkStatus();
  }
  std::vector<HostedService> Services() override { return {}; }
  void Stop() override {
    if (pdp_ != nullptr) pdp_->SetConsentChecker(nullptr);
    pdp_ = nullptr;
  }

 private:
  PolicyDecisionPoint* pdp_ = nullptr;
};

}  // namespace

void Deadline(grpc::ClientContext* ctx, absl::Duration d) {
  ctx->set_deadline(absl::ToChronoTime(absl::Now() + d));
}

grpc::Status GetEntity(Client& c, const std::string& type, const std::string& id,
                       const std::string& purpose, exchange::v1::GetEntityResponse* resp) {
  exchange::v1::GetEntityRequest req;
  req.set_type(type);
  req.set_id(id);
  req.set_purpose(purpose);
  grpc::ClientContext ctx;
  Deadline(&ctx);
  return c.exchange->GetEntity(&ctx, req, resp);
}

event::v1::Event CareAlertEvent(const std::string& person, const std::string& entity_id,
                                const health::v1::ElderlyCareAlert& alert) {
  auto e = EventBuilder()
               .Source("//test.city/care/" + person)
               .Subject("health.alert." + person)
               .Type(kCareAlert)
               .Domain("health")
               .Classification(event::v1::CLASSIFICATION_SENSITIVE)
               .DataSubject(person)
               .Owner("care-center")
               .Jurisdiction("JP")
               .Extension(kEntityIdExtension, entity_id)
               .ProtoData(alert)
               .Build();
  EXPECT_TRUE(e.ok()) << e.status();
  return *e;
}

void ExchangeNodeTest::SetUp() {
  ASSERT_TRUE(RegisterBuiltinPlugins(registry_).ok());
  ASSERT_TRUE(
      registry_.Register("testhooks", [] { return std::make_unique<TestHooksPlugin>(); }).ok());
  ::setenv("HOME", dir_.File("home").c_str(), 1);
  ::unsetenv("CITYOS_CONFIG");
}

void ExchangeNodeTest::TearDown() { StopNode(); }

void ExchangeNodeTest::StartNode(const std::string& extra, Clock* clock) {
  std::string yaml = "node:\n  name: xnode\n  listen: 127.0.0.1:0\n  data_dir: " +
                     dir_.File("data") + "\n  tls: auto\n  shutdown_grace: 2s\n" + extra +
                     "plugins:\n  - name: bus\n  - name: exchange\n  - name: testhooks\n";
  auto root = ConfigNode::LoadString(yaml, "node.yaml");
  ASSERT_TRUE(root.ok()) << root.status();
  auto config = ParseNodeConfig(*root, registry_);
  ASSERT_TRUE(config.ok()) << config.status();
  auto node = Node::Create(*std::move(config), registry_, clock);
  ASSERT_TRUE(node.ok()) << node.status();
  absl::Status started = (*node)->Start();
  ASSERT_TRUE(started.ok()) << started;
  node_ = *std::move(node);
  address_ = node_->listen_address();
  ca_dir_ = dir_.File("data/pki/ca");
  server_id_ = "spiffe://local/org/city/svc/cityosd";
}

void ExchangeNodeTest::StopNode() {
  clients_.clear();
  admin_ = nullptr;
  node_client_ = nullptr;
  if (node_ != nullptr) {
    node_->Shutdown();
    node_.reset();
  }
}

Client& ExchangeNodeTest::NewClient(const std::string& org, const std::string& name,
                                    std::vector<std::string> roles, bool user) {
  auto ca = CityCa::Open(ca_dir_);
  EXPECT_TRUE(ca.ok()) << ca.status();
  std::string out = dir_.File("certs/" + org + "-" + name);
  auto rec = (*ca)->Issue({.org = org,
                           .kind = user ? PrincipalKind::kUser : PrincipalKind::kService,
                           .name = name,
                           .roles = roles,
                           .out = out});
  EXPECT_TRUE(rec.ok()) << rec.status();
  auto c = std::make_unique<Client>();
  c->spiffe_id = rec.ok() ? rec->spiffe_id : "";
  c->serial = rec.ok() ? rec->serial : "";
  c->cert = out + ".pem";
  c->key = out + ".key";
  auto creds = MakeChannelCredentials({.ca_file = (*ca)->ca_file(),
                                       .cert_file = c->cert,
                                       .key_file = c->key,
                                       .trust_domain = "local"},
                                      server_id_);
  EXPECT_TRUE(creds.ok()) << creds.status();
  grpc::ChannelArguments args;
  // Every client its own connection, as separate processes would have.
  args.SetInt("grpc.use_local_subchannel_pool", 1);
  c->channel = grpc::CreateCustomChannel(address_, *creds, args);
  c->exchange = exchange::v1::ExchangeService::NewStub(c->channel);
  c->bus = bus::v1::BusService::NewStub(c->channel);
  clients_.push_back(std::move(c));
  return *clients_.back();
}

Client& ExchangeNodeTest::Admin() {
  if (admin_ == nullptr) admin_ = &NewClient("city", "ops", {"policy-admin", "auditor"});
  return *admin_;
}

Client& ExchangeNodeTest::NodeClient() {
  // Org "node" is reserved for the node's in-process identity (the CA and
  // the node refuse it on the wire), so the probe is an ordinary principal
  // that the fixture's probe rule (kProbePolicy) lets read everything.
  if (node_client_ == nullptr) node_client_ = &NewClient("probe", "xnode");
  return *node_client_;
}

void ExchangeNodeTest::LoadPolicy(const std::string& name, const std::string& yaml) {
  exchange::v1::LoadPoliciesRequest req;
  auto* d = req.add_documents();
  d->set_name(name);
  d->set_content(yaml);
  auto* probe = req.add_documents();
  probe->set_name("zz-probe.yaml");
  probe->set_content(
      "rules:\n"
      "  - id: test-probe-reads-everything\n"
      "    effect: allow\n"
      "    actions: [read, history]\n"
      "    principal: {orgs: [probe]}\n"
      "    legal_basis: legitimate_interest\n"
      "    cross_border: [US, JP, CN, DE]\n");
  req.set_replace_all(true);
  grpc::ClientContext ctx;
  Deadline(&ctx);
  exchange::v1::LoadPoliciesResponse resp;
  grpc::Status s = Admin().exchange->LoadPolicies(&ctx, req, &resp);
  ASSERT_TRUE(s.ok()) << s.error_code() << ": " << s.error_message();
}

void ExchangeNodeTest::Publish(std::vector<event::v1::Event> events) {
  Hooks& h = TheHooks();
  auto r = h.bus->Publish(h.Node(), std::move(events));
  ASSERT_TRUE(r.ok()) << r.status();
}

void ExchangeNodeTest::WaitForEntity(const std::string& type, const std::string& id,
                                     uint64_t version) {
  Client& c = NodeClient();
  absl::Time deadline = absl::Now() + absl::Seconds(30);
  grpc::Status last;
  while (absl::Now() < deadline) {
    exchange::v1::GetEntityResponse resp;
    last = GetEntity(c, type, id, "research", &resp);
    if (last.ok() && resp.entity().version() >= version) return;
    absl::SleepFor(absl::Milliseconds(10));
  }
  FAIL() << "entity " << type << "/" << id << " v" << version
         << " never arrived: " << last.error_message();
}

void ReportCutLatency(std::vector<double> ms, const char* what) {
  ASSERT_FALSE(ms.empty());
  std::sort(ms.begin(), ms.end());
  const double p50 = ms[ms.size() / 2];
  const double p99 = ms[std::min(ms.size() - 1, static_cast<size_t>(ms.size() * 0.99))];
  std::printf("%s: p50 %.2f ms, p99 %.2f ms, max %.2f ms (%d iterations)\n", what, p50, p99,
              ms.back(), static_cast<int>(ms.size()));
  ::testing::Test::RecordProperty("cut_p50_ms", absl::StrFormat("%.2f", p50));
  ::testing::Test::RecordProperty("cut_p99_ms", absl::StrFormat("%.2f", p99));
  // A figure, not a verdict: the 100 ms target is read from this output
  // (docs/benchmarks.md), never asserted, so a loaded machine cannot fail
  // the test. The test asserts that every stream is cut.
}

}  // namespace cityos::exchange_test
