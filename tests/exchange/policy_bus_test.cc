// The bus authorizer over the PDP: publish per event, subscribe per pattern
// (no obligations), administration by role, audit of denials and aggregated
// allows.
#include <string>
#include <vector>

#include "cityos/bus.h"
#include "cityos/clock.h"
#include "cityos/policy.h"
#include "gtest/gtest.h"
#include "policy_test_util.h"

namespace cityos::policy_test {
namespace {

constexpr char kBusRules[] = R"(
rules:
  - id: meters-publish
    effect: allow
    actions: [publish]
    principal: {orgs: [grid]}
    resource: {domains: [carbon], owners: [$principal.org]}
  - id: carbon-subscribe
    effect: allow
    actions: [subscribe]
    principal: {orgs: [carbon-office]}
    resource: {subjects: ["carbon.>"]}
    legal_basis: public_task
  - id: health-subscribe-redacted
    effect: allow
    actions: [subscribe]
    principal: {orgs: [carbon-office]}
    resource: {subjects: ["health.>"]}
    legal_basis: public_task
    obligations:
      - redact: [diagnosis]
)";

event::v1::Event Reading(const std::string& owner) {
  event::v1::Event e;
  e.set_subject("carbon.meter.reading.qz");
  e.set_domain("carbon");
  e.set_type("cityos.carbon.v1.MeterReading");
  e.set_classification(event::v1::CLASSIFICATION_INTERNAL);
  e.set_owner(owner);
  return e;
}

TEST(PolicyBus, PublishSubscribeAdminister) {
  SimulatedClock clock(Monday10());
  auto pdp = MakePdp(&clock, kBusRules, {.node = Principal::Node("demo.city", "n1")});
  RecordingAudit audit;
  const Principal grid = Svc("grid", "meters");
  const Principal office = Svc("carbon-office", "ledger");
  const Principal admin = Svc("city", "ops", {"admin"});
  {
    auto authz = MakePolicyBusAuthorizer(pdp.get(), &audit);
    for (int i = 0; i < 100; ++i)
      EXPECT_TRUE(authz->CanPublish(grid, Reading("grid")).ok());
    absl::Status st = authz->CanPublish(grid, Reading("someone-else"));
    EXPECT_EQ(st.code(), absl::StatusCode::kPermissionDenied);
    EXPECT_NE(st.message().find("no rule allows"), std::string::npos) << st;

    SubscribeOptions sub;
    sub.subject_pattern = "carbon.meter.>";
    EXPECT_TRUE(authz->CanSubscribe(office, sub).ok());
    sub.subject_pattern = ">";
    EXPECT_EQ(authz->CanSubscribe(office, sub).code(),
              absl::StatusCode::kPermissionDenied);
    sub.subject_pattern = "health.vitals.*";
    st = authz->CanSubscribe(office, sub);
    EXPECT_EQ(st.code(), absl::StatusCode::kPermissionDenied);
    EXPECT_NE(
        st.message().find("obligations apply: subscribe through the exchange"),
        std::string::npos)
        << st;
    sub.subject_pattern = "carbon.>";
    EXPECT_EQ(authz->CanSubscribe(grid, sub).code(),
              absl::StatusCode::kPermissionDenied);

    EXPECT_TRUE(authz->CanAdminister(admin, "create_stream", "carbon").ok());
    EXPECT_EQ(authz->CanAdminister(grid, "delete_stream", "carbon").code(),
              absl::StatusCode::kPermissionDenied);
    const Principal node = Principal::Node("demo.city", "n1");
    EXPECT_TRUE(authz->CanAdminister(node, "create_stream", "carbon").ok());
    EXPECT_TRUE(authz->CanPublish(node, Reading("x")).ok());

    // Denials are audited at once, individually.
    int denials = 0;
    for (const auto& e : audit.entries()) {
      if (e.decision() == exchange::v1::EFFECT_DENY) {
        ++denials;
        EXPECT_EQ(e.severity(), exchange::v1::SEVERITY_NOTICE);
        EXPECT_FALSE(e.reason().empty());
        EXPECT_FALSE(e.principal().empty());
      }
    }
    EXPECT_EQ(denials, 5);
  }
  // Allows are aggregated: the 100 publishes are one entry (the authorizer
  // flushes its windows when destroyed).
  uint64_t publishes = 0;
  int publish_entries = 0;
  bool obligation_denial_audited = false;
  for (const auto& e : audit.entries()) {
    if (e.action() == "publish" && e.decision() == exchange::v1::EFFECT_ALLOW &&
        e.principal() == grid.SpiffeId()) {
      ++publish_entries;
      publishes += e.count();
      EXPECT_EQ(e.resource(), "carbon.meter.reading.qz");
      EXPECT_EQ(e.rule_ids_size(), 1);
      EXPECT_EQ(e.rule_ids(0), "meters-publish");
    }
    if (e.action() == "subscribe" && e.resource() == "health.vitals.*") {
      obligation_denial_audited = e.decision() == exchange::v1::EFFECT_DENY;
    }
  }
  EXPECT_EQ(publishes, 100u);
  EXPECT_EQ(publish_entries, 1);
  EXPECT_TRUE(obligation_denial_audited);
}

TEST(PolicyBus, NoAuditIsFine) {
  SimulatedClock clock(Monday10());
  auto pdp = MakePdp(&clock, kBusRules);
  auto authz = MakePolicyBusAuthorizer(pdp.get(), nullptr);
  EXPECT_TRUE(authz->CanPublish(Svc("grid", "m"), Reading("grid")).ok());
  EXPECT_FALSE(authz->CanPublish(Svc("grid", "m"), Reading("x")).ok());
}

}  // namespace
}  // namespace cityos::policy_test
