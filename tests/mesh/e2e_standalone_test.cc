// The standalone plug-in binaries (label mesh): `cityos-bus` runs the bus
// plug-in as its own process with its own certificate (org transit, issued
// from the node's dev CA) and registers with the registry of a `cityosd`
// over mTLS; it serves the bus and health, shows up in `cityosctl services
// list/health`, and deregisters on SIGTERM. `cityos-registry` runs the
// registry alone (`tls: auto`) and answers cityosctl. Deadlines are generous;
// no timing assertions.
#include <gmock/gmock.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <stdlib.h>

#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "cityos/bus/v1/bus.grpc.pb.h"
#include "cityos/ca.h"
#include "cityos/event.h"
#include "cityos/grpc_util.h"
#include "cityos/registry/v1/registry.grpc.pb.h"
#include "cityos/tls.h"
#include "testutil.h"

namespace cityos {
namespace {

using ::testing::HasSubstr;
using json = nlohmann::json;
namespace reg = registry::v1;

constexpr absl::Duration kWait = absl::Seconds(60);

using Cli = testing::CommandResult;

Cli Ctl(const std::vector<std::string>& args) {
  std::vector<std::string> argv{CITYOSCTL_PATH};
  argv.insert(argv.end(), args.begin(), args.end());
  return testing::RunCommand(argv, kWait);
}

std::string Endpoint(testing::Subprocess& p) {
  auto line = p.WaitForLine("listening on ", kWait);
  EXPECT_TRUE(line.ok()) << line.status();
  if (!line.ok()) return "";
  return line->substr(line->find("listening on ") + 13);
}

void Stop(testing::Subprocess& p) {
  p.Signal(SIGTERM);
  auto code = p.Wait(kWait);
  EXPECT_TRUE(code.ok() && *code == 0) << p.stderr_text();
}

// Instances the registry lists, as "org/name@endpoint [proto services]".
std::vector<std::string> Listed() {
  Cli r = Ctl({"--json", "services", "list"});
  std::vector<std::string> out;
  if (r.code != 0) return {"error: " + r.err};
  json j = json::parse(r.out, nullptr, false);
  if (j.is_discarded()) return {"bad json: " + r.out};
  for (const auto& i : j["instances"]) {
    std::string s = i["registration"]["org"].get<std::string>() + "/" +
                    i["registration"]["name"].get<std::string>() + "@" +
                    i["registration"]["endpoint"].get<std::string>();
    for (const auto& p : i["registration"]["proto_services"])
      s += " " + p.get<std::string>();
    out.push_back(s);
  }
  return out;
}

bool WaitUntil(const std::function<bool()>& cond) {
  absl::Time deadline = absl::Now() + kWait;
  while (absl::Now() < deadline) {
    if (cond()) return true;
    absl::SleepFor(absl::Milliseconds(100));
  }
  return cond();
}

class StandaloneTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ::setenv("HOME", dir_.File("home").c_str(), 1);
    ::setenv("CITYOS_CONFIG", dir_.File("ctl/config.yaml").c_str(), 1);
  }
  testing::TempDir dir_;
};

TEST_F(StandaloneTest, BusJoinsTheMeshWithItsOwnCertificate) {
  std::string data = dir_.File("node");
  testing::WriteFile(dir_.File("node.yaml"),
                     "node:\n"
                     "  name: hub\n"
                     "  listen: 127.0.0.1:0\n"
                     "  data_dir: " +
                         data +
                         "\n"
                         "  trust_domain: e2e.city\n"
                         "  tls: auto\n"
                         "plugins:\n"
                         "  - name: registry\n"
                         "    config: {min_ttl: 1s, default_ttl: 2s}\n");
  auto node = testing::Subprocess::Start(
      {CITYOSD_PATH, "--config", dir_.File("node.yaml")});
  ASSERT_TRUE(node.ok()) << node.status();
  std::string hub = Endpoint(**node);
  ASSERT_FALSE(hub.empty());

  // The transit operator's bus: certificate from the city CA, org transit.
  Cli issued = Ctl({"cert", "issue", "--ca-dir", data + "/pki/ca", "--org",
                    "transit", "--svc", "bus", "--ip", "127.0.0.1", "--out",
                    dir_.File("certs/bus")});
  ASSERT_EQ(issued.code, 0) << issued.err;
  // The transit bus decides every publish: the city's admins may publish
  // trips (default deny otherwise).
  testing::WriteFile(dir_.File("bus-policy.yaml"),
                     "rules:\n"
                     "  - id: city-admins-publish-trips\n"
                     "    effect: allow\n"
                     "    actions: [publish]\n"
                     "    principal: {orgs: [city], roles: [admin]}\n"
                     "    resource: {subjects: [\"trips.>\"]}\n");
  testing::WriteFile(dir_.File("bus.yaml"),
                     "node:\n"
                     "  name: transit-bus\n"
                     "  listen: 127.0.0.1:0\n"
                     "  data_dir: " +
                         dir_.File("bus") +
                         "\n"
                         "  trust_domain: e2e.city\n"
                         "  org: transit\n"
                         "  tls:\n"
                         "    ca: " +
                         data +
                         "/pki/ca/ca.pem\n"
                         "    cert: " +
                         dir_.File("certs/bus.pem") +
                         "\n"
                         "    key: " +
                         dir_.File("certs/bus.key") +
                         "\n"
                         "    crl: " +
                         data +
                         "/pki/ca/crl.pem\n"
                         "policy:\n"
                         "  files: [" +
                         dir_.File("bus-policy.yaml") +
                         "]\n"
                         "bus:\n"
                         "  streams:\n"
                         "    - name: trips\n"
                         "      subjects: [\"trips.>\"]\n"
                         "plugins:\n"
                         "  - name: bus\n");
  auto bus = testing::Subprocess::Start(
      {CITYOS_BUS_PATH, "--config", dir_.File("bus.yaml"), "--registry", hub,
       "--registry-id", "spiffe://e2e.city/org/city/svc/cityosd", "--domain",
       "mobility", "--ttl", "2s"});
  ASSERT_TRUE(bus.ok()) << bus.status();
  std::string bus_endpoint = Endpoint(**bus);
  ASSERT_FALSE(bus_endpoint.empty()) << (*bus)->stderr_text();

  std::string expected =
      "transit/bus@" + bus_endpoint + " cityos.bus.v1.BusService";
  ASSERT_TRUE(WaitUntil([&] {
    auto l = Listed();
    return l.size() == 1 && l[0] == expected;
  })) << ::testing::PrintToString(Listed());

  Cli health = Ctl({"--json", "services", "health"});
  EXPECT_EQ(health.code, 0) << health.out << health.err;
  json h = json::parse(health.out, nullptr, false);
  ASSERT_FALSE(h.is_discarded()) << health.out;
  EXPECT_EQ(h["healthy"], true) << health.out;
  ASSERT_EQ(h["checks"].size(), 2u) << health.out;
  EXPECT_EQ(h["checks"][1]["service"], "cityos.bus.v1.BusService");
  EXPECT_EQ(h["checks"][1]["status"], "SERVING");

  // It is a real bus: the city's admin publishes on it over mTLS, pinning
  // the transit bus's identity.
  {
    auto config = LoadClientConfig(dir_.File("ctl/config.yaml"));
    ASSERT_TRUE(config.ok()) << config.status();
    const ClientContext& admin = config->contexts.at(0);
    auto creds = MakeChannelCredentials(
        TlsConfigFor(admin), "spiffe://e2e.city/org/transit/svc/bus");
    ASSERT_TRUE(creds.ok()) << creds.status();
    auto stub =
        bus::v1::BusService::NewStub(grpc::CreateChannel(bus_endpoint, *creds));
    auto e = EventBuilder()
                 .Source("//e2e/test")
                 .Subject("trips.started")
                 .Type("cityos.test.v1.Trip")
                 .Classification(event::v1::CLASSIFICATION_INTERNAL)
                 .Owner("transit")
                 .TextData("text/plain", "1")
                 .Build();
    ASSERT_TRUE(e.ok()) << e.status();
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(30)));
    bus::v1::PublishRequest req;
    *req.add_events() = *e;
    bus::v1::PublishResponse resp;
    grpc::Status s = stub->Publish(&ctx, req, &resp);
    ASSERT_TRUE(s.ok()) << s.error_message();
    ASSERT_EQ(resp.results_size(), 1);
    EXPECT_EQ(resp.results(0).stream(), "trips");
    EXPECT_EQ(resp.results(0).sequence(), 1u);
  }

  // SIGTERM: deregisters, then stops.
  Stop(**bus);
  EXPECT_TRUE(WaitUntil([&] { return Listed().empty(); }))
      << ::testing::PrintToString(Listed());
  Stop(**node);
}

TEST_F(StandaloneTest, RegistryRunsAloneAndRefusesOtherPlugins) {
  testing::WriteFile(dir_.File("reg.yaml"),
                     "node:\n"
                     "  name: reg\n"
                     "  listen: 127.0.0.1:0\n"
                     "  data_dir: " +
                         dir_.File("reg") +
                         "\n"
                         "  trust_domain: e2e.city\n"
                         "  tls: auto\n"
                         "plugins:\n"
                         "  - name: registry\n");
  auto reg_proc = testing::Subprocess::Start(
      {CITYOS_REGISTRY_PATH, "--config", dir_.File("reg.yaml")});
  ASSERT_TRUE(reg_proc.ok()) << reg_proc.status();
  ASSERT_FALSE(Endpoint(**reg_proc).empty()) << (*reg_proc)->stderr_text();
  Cli list = Ctl({"--context", "reg", "--json", "services", "list"});
  EXPECT_EQ(list.code, 0) << list.err;
  EXPECT_THAT(list.out, HasSubstr("\"instances\": []"));
  Cli streams = Ctl({"--context", "reg", "streams", "list"});  // no bus here
  EXPECT_EQ(streams.code, 1);
  EXPECT_THAT(streams.err, HasSubstr("UNIMPLEMENTED"));
  Stop(**reg_proc);

  // A config naming a plug-in this binary does not have: exit 2.
  testing::WriteFile(dir_.File("bad.yaml"),
                     "node:\n"
                     "  name: bad\n"
                     "  listen: 127.0.0.1:0\n"
                     "  data_dir: " +
                         dir_.File("bad") +
                         "\n"
                         "  tls: auto\n"
                         "plugins:\n"
                         "  - name: bus\n");
  auto bad = testing::Subprocess::Start(
      {CITYOS_REGISTRY_PATH, "--config", dir_.File("bad.yaml")});
  ASSERT_TRUE(bad.ok());
  auto code = (*bad)->Wait(kWait);
  ASSERT_TRUE(code.ok());
  EXPECT_EQ(*code, 2);
  EXPECT_THAT((*bad)->stderr_text(), HasSubstr("unknown plug-in \"bus\""));
}

}  // namespace
}  // namespace cityos
