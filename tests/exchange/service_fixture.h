// A real node for the exchange service tests: cityosd's Node with the
// built-in plug-ins (bus, exchange) and a test-only plug-in `testhooks` that
// hands the test the node's bus and policy decision point and answers the
// consent hook (TestConsent). Transport is `tls: auto`; every client is a
// real mTLS client whose certificate, issued by the node's development CA,
// carries its roles.
#ifndef CITYOS_TESTS_EXCHANGE_SERVICE_FIXTURE_H_
#define CITYOS_TESTS_EXCHANGE_SERVICE_FIXTURE_H_

#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <memory>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "cityos/bus.h"
#include "cityos/bus/v1/bus.grpc.pb.h"
#include "cityos/clock.h"
#include "cityos/exchange/v1/exchange.grpc.pb.h"
#include "cityos/health/v1/health.pb.h"
#include "cityos/plugin.h"
#include "cityos/policy.h"
#include "node.h"
#include "testutil.h"

namespace cityos::exchange_test {

// Consent granted per (recipient org, data subject); thread-safe. Revoke
// tells the PDP (Invalidate), as the information bank does.
class TestConsent final : public ConsentChecker {
 public:
  ConsentAnswer Check(const ConsentQuery& query) override;
  void Grant(const std::string& org, const std::string& data_subject);
  // Revokes and calls pdp->Invalidate for the person.
  void Revoke(PolicyDecisionPoint* pdp, const std::string& org, const std::string& data_subject);

 private:
  absl::Mutex mu_;
  std::set<std::pair<std::string, std::string>> granted_ ABSL_GUARDED_BY(mu_);
};

// What the test plug-in saw at Start. Valid while the node runs.
struct Hooks {
  Bus* bus = nullptr;
  PolicyDecisionPoint* pdp = nullptr;
  AuditLog* audit = nullptr;
  std::string trust_domain = "local";
  std::string node_name;
  TestConsent consent;
  // The node's own principal (publishes test events).
  Principal Node() const { return Principal::Node(trust_domain, node_name); }
};

// A client of the node with its own certificate.
struct Client {
  std::string spiffe_id;
  std::string serial;  // of its certificate (hex), for CityCa::Revoke
  std::string cert, key;
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<exchange::v1::ExchangeService::Stub> exchange;
  std::unique_ptr<bus::v1::BusService::Stub> bus;
};

// Prints "<what>: p50 …, p99 …, max … (N iterations)" for the revocation ->
// stream-cut latencies `ms` and records cut_p50_ms / cut_p99_ms: a measured
// figure for docs/benchmarks.md (target p99 <= 100 ms), not an assertion.
void ReportCutLatency(std::vector<double> ms, const char* what);

// A deadline for unary calls.
void Deadline(grpc::ClientContext* ctx, absl::Duration d = absl::Seconds(20));

// GetEntity as `c` for `purpose`, with the unary deadline.
grpc::Status GetEntity(Client& c, const std::string& type, const std::string& id,
                       const std::string& purpose, exchange::v1::GetEntityResponse* resp);

inline constexpr char kCareAlert[] = "cityos.health.v1.ElderlyCareAlert";

// `alert` about `person` as the care center publishes it: subject
// health.alert.<person>, SENSITIVE, owner care-center, jurisdiction JP,
// stored as the entity kCareAlert/`entity_id`.
event::v1::Event CareAlertEvent(const std::string& person, const std::string& entity_id,
                                const health::v1::ElderlyCareAlert& alert);

class ExchangeNodeTest : public ::testing::Test {
 protected:
  void SetUp() override;
  void TearDown() override;

  // Starts the node. `extra` is appended to the config (e.g. `policy:` or
  // `bus:` sections); `clock` may be a SimulatedClock.
  void StartNode(const std::string& extra = "", Clock* clock = nullptr);
  void StopNode();

  // A client for principal org/kind/name with `roles`.
  Client& NewClient(const std::string& org, const std::string& name,
                    std::vector<std::string> roles = {}, bool user = false);
  // The policy administrator (roles policy-admin, auditor).
  Client& Admin();

  // Loads `yaml` as the document `name` (replacing every other), as the
  // admin. Fails the test on error.
  void LoadPolicy(const std::string& name, const std::string& yaml);

  // Publishes events as the node; fails the test on error.
  void Publish(std::vector<event::v1::Event> events);
  // Waits until the exchange stored the entity at `version` or newer
  // (asked as the node's own principal, which the PDP always allows).
  void WaitForEntity(const std::string& type, const std::string& id, uint64_t version = 1);
  // A client holding the node's own principal (org `node`), issued by the
  // development CA: sees everything, for checks of what the store holds.
  Client& NodeClient();

  testing::TempDir dir_;
  PluginRegistry registry_;
  std::unique_ptr<Node> node_;
  std::string address_;
  std::vector<std::unique_ptr<Client>> clients_;
  Client* admin_ = nullptr;
  Client* node_client_ = nullptr;
  std::string ca_dir_;
  std::string server_id_;
};

// The global hooks of the running node (the test plug-in fills it).
Hooks& TheHooks();
// Fills TheHooks() with the node's handles from a `testhooks` plug-in's start.
Hooks& FillHooks(PluginContext& context);

}  // namespace cityos::exchange_test

#endif  // CITYOS_TESTS_EXCHANGE_SERVICE_FIXTURE_H_
