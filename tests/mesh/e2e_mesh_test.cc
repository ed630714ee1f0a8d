// The mesh on loopback, as separate processes, all over mTLS:
//   cityosd (bus + registry, `tls: auto` in a temp data dir, context file in
//   the temp dir via $CITYOS_CONFIG), certificates issued with
//   `cityosctl cert issue` from the node's dev CA, a vendor process
//   (mesh_vendor, org transit) that registers and publishes, and a consumer
//   process (mesh_consumer, org city) on a durable consumer.
// Kill the vendor -> its lease expires and Watch reports REMOVED; restart it ->
// ADDED again; the consumer, also killed and restarted, resumes without loss.
// A vendor registering under another org is refused. cityosctl against the
// live node, with --json output parsed here. No timing assertions: every wait
// is a condition with a generous deadline.
#include <gmock/gmock.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <stdlib.h>

#include <functional>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/synchronization/mutex.h"
#include "cityos/bus/v1/bus.grpc.pb.h"
#include "cityos/ca.h"
#include "cityos/event.h"
#include "cityos/registry/v1/registry.grpc.pb.h"
#include "cityos/tls.h"
#include "cityosctl.h"
#include "testutil.h"

namespace cityos {
namespace {

using ::testing::HasSubstr;
using json = nlohmann::json;
namespace reg = registry::v1;

constexpr absl::Duration kWait =
    absl::Seconds(60);  // generous; never asserted on

using Cli = testing::CommandResult;

// Runs cityosctl with `args` (env: $CITYOS_CONFIG of this process).
Cli Ctl(const std::vector<std::string>& args) {
  std::vector<std::string> argv{CITYOSCTL_PATH};
  argv.insert(argv.end(), args.begin(), args.end());
  return testing::RunCommand(argv, kWait);
}

json ParseJson(const Cli& r) {
  json j = json::parse(r.out, nullptr, /*allow_exceptions=*/false);
  EXPECT_FALSE(j.is_discarded())
      << "not JSON: " << r.out << "\nstderr: " << r.err;
  return j;
}

uint64_t JsonU64(const json& j) {  // proto3 JSON prints 64-bit ints as strings
  if (j.is_number()) return j.get<uint64_t>();
  uint64_t v = 0;
  if (j.is_string()) (void)absl::SimpleAtoi(j.get<std::string>(), &v);
  return v;
}

// Numbers the consumer printed as "acked <n> seq <s>".
std::set<int> Acked(const std::string& text) {
  std::set<int> out;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream ls(line);
    std::string word, n;
    ls >> word >> n;
    int v;
    if (word == "acked" && absl::SimpleAtoi(n, &v)) out.insert(v);
  }
  return out;
}

bool WaitUntil(const std::function<bool()>& cond,
               absl::Duration timeout = kWait) {
  absl::Time deadline = absl::Now() + timeout;
  while (absl::Now() < deadline) {
    if (cond()) return true;
    absl::SleepFor(absl::Milliseconds(50));
  }
  return cond();
}

// A Watch stream on the registry, collected on a thread.
class Watcher {
 public:
  Watcher(std::shared_ptr<grpc::Channel> channel, const std::string& org)
      : stub_(reg::RegistryService::NewStub(channel)) {
    reg::WatchRequest req;
    req.mutable_filter()->set_org(org);
    req.set_initial_snapshot(true);
    reader_ = stub_->Watch(&ctx_, req);
    thread_ = std::thread([this] {
      reg::WatchResponse resp;
      while (reader_->Read(&resp)) {
        absl::MutexLock lock(&mu_);
        for (const auto& c : resp.changes()) changes_.push_back(c);
      }
      absl::MutexLock lock(&mu_);
      ended_ = true;
    });
  }
  ~Watcher() {
    ctx_.TryCancel();
    thread_.join();
    (void)reader_->Finish();
  }
  // Waits for a change of `type` (and `reason`, if given) for service `name`
  // after the first `from` changes; returns its index or -1.
  int WaitFor(reg::ChangeType type, reg::ChangeReason reason,
              const std::string& name, size_t from) {
    absl::MutexLock lock(&mu_);
    int found = -1;
    auto cond = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      for (size_t i = from; i < changes_.size(); ++i) {
        const auto& c = changes_[i];
        if (c.type() == type && c.reason() == reason &&
            c.instance().registration().name() == name) {
          found = static_cast<int>(i);
          return true;
        }
      }
      return ended_;
    };
    mu_.AwaitWithTimeout(absl::Condition(&cond), kWait);
    return found;
  }
  size_t size() {
    absl::MutexLock lock(&mu_);
    return changes_.size();
  }
  std::string Dump() {
    absl::MutexLock lock(&mu_);
    std::string s;
    for (const auto& c : changes_) {
      s += reg::ChangeType_Name(c.type()) + "/" +
           reg::ChangeReason_Name(c.reason()) + " " +
           c.instance().registration().org() + "/" +
           c.instance().registration().name() + "\n";
    }
    return s;
  }

 private:
  std::unique_ptr<reg::RegistryService::Stub> stub_;
  grpc::ClientContext ctx_;
  std::unique_ptr<grpc::ClientReader<reg::WatchResponse>> reader_;
  std::thread thread_;
  absl::Mutex mu_;
  std::vector<reg::ServiceChange> changes_ ABSL_GUARDED_BY(mu_);
  bool ended_ ABSL_GUARDED_BY(mu_) = false;
};

class MeshE2eTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ::setenv("HOME", dir_.File("home").c_str(), 1);
    context_file_ = dir_.File("ctl/config.yaml");
    ::setenv("CITYOS_CONFIG", context_file_.c_str(), 1);
    data_ = dir_.File("data");
    config_ = dir_.File("node.yaml");
    // Every publish and subscribe is decided by the node's PDP (default
    // deny): transit publishes trips, admins publish test pings; the city
    // reads them raw (as the operator of the dashboards, a public task).
    testing::WriteFile(dir_.File("mesh-policy.yaml"),
                       "rules:\n"
                       "  - id: transit-publishes-mobility\n"
                       "    effect: allow\n"
                       "    actions: [publish]\n"
                       "    principal: {orgs: [transit]}\n"
                       "    resource: {subjects: [\"mobility.>\"]}\n"
                       "  - id: admins-publish-test-pings\n"
                       "    effect: allow\n"
                       "    actions: [publish]\n"
                       "    principal: {roles: [admin]}\n"
                       "    resource: {subjects: [\"mobility.tail.>\"]}\n"
                       "  - id: city-reads-mobility\n"
                       "    effect: allow\n"
                       "    actions: [subscribe]\n"
                       "    principal: {orgs: [city]}\n"
                       "    resource: {subjects: [\"mobility.>\"]}\n"
                       "    legal_basis: public_task\n");
    testing::WriteFile(config_,
                       "node:\n"
                       "  name: e2e\n"
                       "  listen: 127.0.0.1:0\n"
                       "  data_dir: " +
                           data_ +
                           "\n"
                           "  trust_domain: e2e.city\n"
                           "  org: city\n"
                           "  tls: auto\n"
                           "  shutdown_grace: 1s\n"
                           "policy:\n"
                           "  files: [" +
                           dir_.File("mesh-policy.yaml") +
                           "]\n"
                           "bus:\n"
                           "  streams:\n"
                           "    - name: mobility\n"
                           "      subjects: [\"mobility.>\"]\n"
                           "      durability: fsync\n"
                           "plugins:\n"
                           "  - name: bus\n"
                           "  - name: registry\n"
                           "    config:\n"
                           "      min_ttl: 1s\n"
                           "      default_ttl: 2s\n"
                           "      expiry_interval: 200ms\n");
  }

  void StartNode() {
    auto node = testing::Subprocess::Start({CITYOSD_PATH, "--config", config_});
    ASSERT_TRUE(node.ok()) << node.status();
    node_ = *std::move(node);
    auto line = node_->WaitForLine("listening on ", kWait);
    ASSERT_TRUE(line.ok()) << line.status();
    endpoint_ = line->substr(line->find("listening on ") + 13);
    auto config = LoadClientConfig(context_file_);
    ASSERT_TRUE(config.ok()) << config.status();
    ASSERT_EQ(config->current_context, "e2e");
    for (const auto& c : config->contexts) {
      if (c.name == "e2e") admin_ = c;
    }
    ASSERT_EQ(admin_.endpoint, endpoint_);
  }

  // Issues a service certificate with `cityosctl cert issue` from the node's
  // dev CA; returns the file prefix.
  std::string Issue(const std::string& org, const std::string& svc) {
    std::string out = dir_.File("certs/" + svc);
    Cli r = Ctl({"--json", "cert", "issue", "--ca-dir", data_ + "/pki/ca",
                 "--org", org, "--svc", svc, "--dns", "localhost", "--ip",
                 "127.0.0.1", "--days", "2", "--out", out});
    EXPECT_EQ(r.code, 0) << r.err;
    json j = ParseJson(r);
    EXPECT_EQ(j.value("spiffe_id", ""),
              "spiffe://e2e.city/org/" + org + "/svc/" + svc);
    return out;
  }

  std::vector<std::string> TlsArgs(const std::string& prefix) {
    return {"--endpoint",     endpoint_,       "--ca",        admin_.ca,
            "--cert",         prefix + ".pem", "--key",       prefix + ".key",
            "--trust-domain", "e2e.city",      "--server-id", admin_.server_id};
  }

  std::unique_ptr<testing::Subprocess> StartVendor(const std::string& prefix,
                                                   int first, int count) {
    std::vector<std::string> argv{MESH_VENDOR_PATH};
    for (auto& a : TlsArgs(prefix)) argv.push_back(a);
    for (auto& a :
         std::vector<std::string>{"--org", "transit", "--name", "trips",
                                  "--first", std::to_string(first), "--count",
                                  std::to_string(count), "--ttl", "2s"}) {
      argv.push_back(a);
    }
    auto p = testing::Subprocess::Start(argv);
    EXPECT_TRUE(p.ok()) << p.status();
    return p.ok() ? *std::move(p) : nullptr;
  }

  std::unique_ptr<testing::Subprocess> StartConsumer(
      const std::string& prefix) {
    std::vector<std::string> argv{MESH_CONSUMER_PATH};
    for (auto& a : TlsArgs(prefix)) argv.push_back(a);
    auto p = testing::Subprocess::Start(argv);
    EXPECT_TRUE(p.ok()) << p.status();
    return p.ok() ? *std::move(p) : nullptr;
  }

  std::shared_ptr<grpc::Channel> ChannelAs(const std::string& cert,
                                           const std::string& key) {
    TlsConfig tls{.ca_file = admin_.ca,
                  .cert_file = cert,
                  .key_file = key,
                  .trust_domain = "e2e.city"};
    auto creds = MakeChannelCredentials(tls, admin_.server_id);
    EXPECT_TRUE(creds.ok()) << creds.status();
    return grpc::CreateChannel(endpoint_, *creds);
  }

  void TearDown() override {
    if (node_ != nullptr) {
      node_->Signal(SIGTERM);
      auto code = node_->Wait(kWait);
      EXPECT_TRUE(code.ok() && *code == 0)
          << (code.ok() ? std::to_string(*code)
                        : std::string(code.status().message()))
          << "\nnode stderr:\n"
          << node_->stderr_text();
    }
  }

  testing::TempDir dir_;
  std::string context_file_, data_, config_, endpoint_;
  ClientContext admin_;
  std::unique_ptr<testing::Subprocess> node_;
};

TEST_F(MeshE2eTest, VendorAndConsumerSurviveKillsWithoutLoss) {
  ASSERT_NO_FATAL_FAILURE(StartNode());
  std::string vendor_cert = Issue("transit", "trips");
  std::string consumer_cert = Issue("city", "dashboard");
  auto admin = ChannelAs(admin_.cert, admin_.key);
  Watcher watch(admin, "transit");

  // Phase 1: events 1..20 while both run.
  auto consumer = StartConsumer(consumer_cert);
  ASSERT_NE(consumer, nullptr);
  ASSERT_TRUE(consumer->WaitForLine("consumer: subscribed", kWait).ok())
      << consumer->stderr_text();
  auto vendor = StartVendor(vendor_cert, 1, 20);
  ASSERT_NE(vendor, nullptr);
  ASSERT_TRUE(vendor->WaitForLine("vendor: done 20", kWait).ok())
      << vendor->stdout_text() << vendor->stderr_text();
  int added = watch.WaitFor(reg::CHANGE_TYPE_ADDED,
                            reg::CHANGE_REASON_REGISTERED, "trips", 0);
  ASSERT_GE(added, 0) << watch.Dump();
  ASSERT_TRUE(WaitUntil([&] {
    return Acked(consumer->stdout_text()).size() >= 20;
  })) << consumer->stdout_text()
      << consumer->stderr_text();

  // Kill the vendor: no deregistration, so its lease must expire.
  vendor->Signal(SIGKILL);
  ASSERT_TRUE(vendor->Wait(kWait).ok());
  int removed =
      watch.WaitFor(reg::CHANGE_TYPE_REMOVED, reg::CHANGE_REASON_LEASE_EXPIRED,
                    "trips", added + 1);
  ASSERT_GE(removed, 0) << watch.Dump();

  // Kill the consumer too (it has acknowledged 1..20 and has nothing in hand).
  std::set<int> acked = Acked(consumer->stdout_text());
  consumer->Signal(SIGKILL);
  ASSERT_TRUE(consumer->Wait(kWait).ok());

  // Phase 2: the vendor comes back and publishes 21..40 while no consumer runs.
  auto vendor2 = StartVendor(vendor_cert, 21, 20);
  ASSERT_NE(vendor2, nullptr);
  int readded =
      watch.WaitFor(reg::CHANGE_TYPE_ADDED, reg::CHANGE_REASON_REGISTERED,
                    "trips", removed + 1);
  ASSERT_GE(readded, 0) << watch.Dump();
  ASSERT_TRUE(vendor2->WaitForLine("vendor: done 40", kWait).ok())
      << vendor2->stdout_text() << vendor2->stderr_text();

  // The consumer resumes from its durable position: nothing missing.
  auto consumer2 = StartConsumer(consumer_cert);
  ASSERT_NE(consumer2, nullptr);
  ASSERT_TRUE(WaitUntil([&] {
    std::set<int> now = Acked(consumer2->stdout_text());
    now.insert(acked.begin(), acked.end());
    return now.size() >= 40;
  })) << consumer2->stdout_text()
      << consumer2->stderr_text();
  std::set<int> all = Acked(consumer2->stdout_text());
  all.insert(acked.begin(), acked.end());
  for (int n = 1; n <= 40; ++n)
    EXPECT_TRUE(all.count(n)) << "event " << n << " was lost";

  // Security: the vendor's certificate (org transit) cannot register for org
  // city.
  {
    auto stub = reg::RegistryService::NewStub(
        ChannelAs(vendor_cert + ".pem", vendor_cert + ".key"));
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(30)));
    reg::RegisterRequest req;
    req.mutable_registration()->set_name("trips");
    req.mutable_registration()->set_org("city");
    req.mutable_registration()->set_endpoint("127.0.0.1:1");
    reg::RegisterResponse resp;
    grpc::Status s = stub->Register(&ctx, req, &resp);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::PERMISSION_DENIED)
        << s.error_message();
  }

  // cityosctl against the live node (context from $CITYOS_CONFIG).
  {
    Cli r = Ctl({"services", "list", "--json"});
    ASSERT_EQ(r.code, 0) << r.err;
    json j = ParseJson(r);
    bool found = false;
    for (const auto& inst : j["instances"]) {
      const auto& reg = inst["registration"];
      if (reg["name"] == "trips" && reg["org"] == "transit") {
        found = true;
        EXPECT_EQ(inst["principal"], "spiffe://e2e.city/org/transit/svc/trips");
        EXPECT_EQ(reg["domain"], "mobility");
      }
    }
    EXPECT_TRUE(found) << r.out;
  }
  {
    Cli r = Ctl({"--json", "streams", "list"});
    ASSERT_EQ(r.code, 0) << r.err;
    json j = ParseJson(r);
    ASSERT_TRUE(j.contains("streams")) << r.out;
    bool found = false;
    for (const auto& s : j["streams"]) {
      if (s["config"]["name"] == "mobility") {
        found = true;
        EXPECT_GE(JsonU64(s["state"]["last_sequence"]), 40u);
      }
    }
    EXPECT_TRUE(found) << r.out;
  }
  {
    Cli r = Ctl({"streams", "info", "mobility", "--json"});
    ASSERT_EQ(r.code, 0) << r.err;
    json j = ParseJson(r);
    EXPECT_EQ(j["config"]["name"], "mobility");
    EXPECT_GE(JsonU64(j["state"]["events"]), 40u);
    ASSERT_TRUE(j["consumer_list"].is_array()) << r.out;
    ASSERT_EQ(j["consumer_list"].size(), 1u) << r.out;
    EXPECT_EQ(j["consumer_list"][0]["config"]["name"], "dash");
    EXPECT_GE(JsonU64(j["consumer_list"][0]["state"]["ack_floor"]), 40u);
  }
  {
    Cli r = Ctl({"services", "health"});
    EXPECT_EQ(r.code, 0) << r.out << r.err;
    EXPECT_THAT(r.out, HasSubstr("(node e2e)"));
    EXPECT_THAT(r.out, HasSubstr("cityos.test.v1.TripFeed"));
    Cli j = Ctl({"services", "health", "--json"});
    EXPECT_EQ(j.code, 0) << j.err;
    json h = ParseJson(j);
    EXPECT_EQ(h["healthy"], true) << j.out;
    ASSERT_EQ(h["checks"].size(), 2u)
        << j.out;  // the node, the vendor's TripFeed
    for (const auto& c : h["checks"])
      EXPECT_EQ(c["status"], "SERVING") << j.out;
  }
  {
    Cli r = Ctl({"services", "list"});  // the human table
    EXPECT_EQ(r.code, 0) << r.err;
    EXPECT_THAT(r.out, HasSubstr("ORG"));
    EXPECT_THAT(r.out, HasSubstr("transit"));
  }
  // topics tail: live; keep publishing until it has printed one event.
  {
    auto tail =
        testing::Subprocess::Start({CITYOSCTL_PATH, "--json", "topics", "tail",
                                    "mobility.tail.>", "--count", "1"});
    ASSERT_TRUE(tail.ok()) << tail.status();
    auto bus_stub = bus::v1::BusService::NewStub(admin);
    absl::StatusOr<int> code = absl::DeadlineExceededError("not yet");
    absl::Time deadline = absl::Now() + kWait;
    while (!code.ok() && absl::Now() < deadline) {
      auto e = EventBuilder()
                   .Source("//e2e/test")
                   .Subject("mobility.tail.x")
                   .Type("cityos.test.v1.Ping")
                   .Classification(event::v1::CLASSIFICATION_INTERNAL)
                   .Owner("city")
                   .TextData("text/plain", "ping")
                   .Build();
      ASSERT_TRUE(e.ok());
      grpc::ClientContext ctx;
      ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
      bus::v1::PublishRequest req;
      *req.add_events() = *e;
      bus::v1::PublishResponse resp;
      (void)bus_stub->Publish(&ctx, req, &resp);
      code = (*tail)->Wait(absl::Milliseconds(300));
    }
    ASSERT_TRUE(code.ok()) << (*tail)->stdout_text() << (*tail)->stderr_text();
    EXPECT_EQ(*code, 0) << (*tail)->stderr_text();
    std::string first_line =
        (*tail)->stdout_text().substr(0, (*tail)->stdout_text().find('\n'));
    json ev = json::parse(first_line, nullptr, false);
    ASSERT_FALSE(ev.is_discarded()) << (*tail)->stdout_text();
    EXPECT_EQ(ev["subject"], "mobility.tail.x");
    EXPECT_EQ(ev["text_data"], "ping");
  }

  // A client certificate from another CA is refused, with a clear message.
  {
    auto other = CityCa::Create(dir_.File("other-ca"), "e2e.city");
    ASSERT_TRUE(other.ok()) << other.status();
    auto rec = (*other)->Issue({.org = "city",
                                .kind = PrincipalKind::kUser,
                                .name = "mallory",
                                .out = dir_.File("other-ca/mallory")});
    ASSERT_TRUE(rec.ok()) << rec.status();
    // The client trusts both CAs (so its own certificate passes the local
    // check); the node trusts only its own and refuses the certificate.
    std::string bundle = dir_.File("ctl/bundle.pem");
    testing::WriteFile(bundle,
                       testing::ReadFile(admin_.ca) +
                           testing::ReadFile(dir_.File("other-ca/ca.pem")));
    ClientContext bad = admin_;
    bad.name = "mallory";
    bad.ca = bundle;
    bad.cert = dir_.File("other-ca/mallory.pem");
    bad.key = dir_.File("other-ca/mallory.key");
    std::string file = dir_.File("ctl/mallory.yaml");
    ASSERT_TRUE(SaveClientContext(file, bad).ok());
    Cli r = Ctl({"--config", file, "services", "list"});
    EXPECT_EQ(r.code, 1);
    EXPECT_THAT(r.err,
                ::testing::AnyOf(HasSubstr("certificate rejected"),
                                 HasSubstr("our certificate was refused")))
        << r.err;
    // The node logs the refusal; its stderr is drained by another thread.
    EXPECT_TRUE(WaitUntil([&] {
      return node_->stderr_text().find("peer refused") != std::string::npos;
    })) << node_->stderr_text();
    // The client refuses a server that is not the one it pins.
    ClientContext pinned = admin_;
    pinned.name = "pinned";
    pinned.server_id = "spiffe://e2e.city/org/city/svc/not-the-node";
    std::string pinned_file = dir_.File("ctl/pinned.yaml");
    ASSERT_TRUE(SaveClientContext(pinned_file, pinned).ok());
    Cli p = Ctl({"--config", pinned_file, "streams", "list"});
    EXPECT_EQ(p.code, 1);
    EXPECT_THAT(p.err,
                HasSubstr("certificate rejected: the server at " + endpoint_))
        << p.err;
  }
}

// Errors of cityosctl that need no node.
TEST(CityosctlErrorsTest, CannotConnectAndUsage) {
  testing::TempDir dir;
  auto ca = CityCa::Create(dir.File("ca"), "e2e.city");
  ASSERT_TRUE(ca.ok()) << ca.status();
  auto rec = (*ca)->Issue({.org = "city",
                           .kind = PrincipalKind::kUser,
                           .name = "admin",
                           .roles = {"admin"},
                           .out = dir.File("admin")});
  ASSERT_TRUE(rec.ok()) << rec.status();
  testing::HeldPort port;  // bound, not listening: connections are refused
  std::string file = dir.File("config.yaml");
  ASSERT_TRUE(SaveClientContext(
                  file, {.name = "dead",
                         .endpoint = "127.0.0.1:" + std::to_string(port.port()),
                         .trust_domain = "e2e.city",
                         .ca = (*ca)->ca_file(),
                         .cert = dir.File("admin.pem"),
                         .key = dir.File("admin.key")})
                  .ok());
  Cli r = Ctl({"--config", file, "--timeout", "2s", "streams", "list"});
  EXPECT_EQ(r.code, 1);
  EXPECT_THAT(r.err, HasSubstr("cannot connect to 127.0.0.1:" +
                               std::to_string(port.port())));

  Cli ctx = Ctl({"--config", file, "--json", "context", "list"});
  EXPECT_EQ(ctx.code, 0) << ctx.err;
  json j = ParseJson(ctx);
  EXPECT_EQ(j["current_context"], "dead");

  Cli missing =
      Ctl({"--config", file, "--context", "nope", "services", "list"});
  EXPECT_EQ(missing.code, 1);
  EXPECT_THAT(missing.err, HasSubstr("no context named \"nope\""));

  Cli help = Ctl({"cert", "issue", "--help"});
  EXPECT_EQ(help.code, 0);
  EXPECT_THAT(help.out, HasSubstr("--ca-dir"));

  Cli usage = Ctl({"streams"});
  EXPECT_EQ(usage.code, 2);
  Cli bad_timeout = Ctl({"--timeout", "soon", "context", "list"});
  EXPECT_EQ(bad_timeout.code, 2);
  EXPECT_THAT(bad_timeout.err, HasSubstr("--timeout"));

  // revoke through the CLI shows up in the CA's index.
  Cli rv = Ctl({"cert", "revoke", "--ca-dir", dir.File("ca"), "--serial",
                rec->serial, "--reason", "key-compromise"});
  EXPECT_EQ(rv.code, 0) << rv.err;
  auto reopened = CityCa::Open(dir.File("ca"));
  ASSERT_TRUE(reopened.ok()) << reopened.status();
  auto list = (*reopened)->List();
  ASSERT_TRUE(list.ok());
  ASSERT_EQ(list->size(), 1u);
  EXPECT_TRUE((*list)[0].revoked);
}

TEST(CityosctlErrorsTest, DescribeRpcErrorNamesTheProblem) {
  using grpc::Status;
  using grpc::StatusCode;
  EXPECT_EQ(ctl::DescribeRpcError(
                "h:1", Status(StatusCode::PERMISSION_DENIED, "org city")),
            "permission denied: org city");
  EXPECT_EQ(ctl::DescribeRpcError(
                "h:1", Status(StatusCode::UNAUTHENTICATED, "revoked")),
            "unauthenticated: revoked");
  EXPECT_THAT(
      ctl::DescribeRpcError("h:1", Status(StatusCode::UNAVAILABLE,
                                          "failed to connect to all addresses; "
                                          "last error: connection refused")),
      ::testing::StartsWith("cannot connect to h:1: "));
  EXPECT_THAT(ctl::DescribeRpcError(
                  "h:1", Status(StatusCode::DEADLINE_EXCEEDED, "Deadline")),
              ::testing::StartsWith("cannot connect to h:1: "));
  EXPECT_THAT(ctl::DescribeRpcError(
                  "h:1", Status(StatusCode::UNAVAILABLE,
                                "Ssl handshake failed: SSL_ERROR_SSL")),
              ::testing::StartsWith("certificate rejected: h:1: "));
  EXPECT_THAT(
      ctl::DescribeRpcError(
          "h:1",
          Status(StatusCode::UNAVAILABLE,
                 "failed to connect to all addresses; last error: UNKNOWN: "
                 "Custom verification check failed with error: peer refused")),
      ::testing::StartsWith("certificate rejected: the server at h:1 failed"));
  EXPECT_THAT(ctl::DescribeRpcError(
                  "h:1", Status(StatusCode::UNAVAILABLE,
                                "last error: UNAVAILABLE: Socket closed")),
              HasSubstr("our certificate was refused"));
  EXPECT_THAT(ctl::DescribeRpcError(
                  "h:1", Status(StatusCode::NOT_FOUND, "no stream x")),
              "NOT_FOUND: no stream x");
}

}  // namespace
}  // namespace cityos
