// The ConsentService on a real node (mTLS clients whose certificates carry
// their roles) together with the exchange: a consent granted through the
// bank opens exactly the consented access, a revocation closes it at once
// and cuts live subscriptions (latency measured), expiry, ethics review
// gating recipients and purposes, explicit sensitive / profiling consent,
// request validation, and apps acting for a person under a delegation.
#include <grpcpp/grpcpp.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <thread>

#include "absl/strings/str_format.h"
#include "cityos/audit.h"
#include "cityos/config.h"
#include "cityos/consent/v1/consent.grpc.pb.h"
#include "cityos/proto_time.h"
#include "builtin_plugins.h"
#include "infobank_plugin.h"
#include "nlohmann/json.hpp"
#include "service_fixture.h"

namespace cityos::exchange_test {
namespace {

using ::testing::HasSubstr;
namespace cv1 = ::cityos::consent::v1;

constexpr char kPolicy[] = R"(data_categories:
  - name: care.alerts
    subjects: ["health.alert.>"]
    types: [cityos.health.v1.ElderlyCareAlert]
rules:
  - id: care-alerts
    effect: allow
    actions: [subscribe, history, read]
    principal: {orgs: [care-center, insurer]}
    resource:
      types: [cityos.health.v1.ElderlyCareAlert]
    purposes: [elderly_care, research]
)";

constexpr char kBankConfig[] = R"(controller:
  name: Test Information Bank
  email: dpo@bank.test
recipient_categories:
  care_provider: [care-center]
benefit_rules:
  - {id: care, purpose: elderly_care, data_category: care, points: 5}
)";

// The fixture's `testhooks` plug-in, with the information bank inside: it
// fills the hooks the fixture's helpers use and then starts the real
// `infobank` plug-in (which installs itself as the PDP's consent checker).
class BankHooksPlugin final : public ServicePlugin {
 public:
  std::string_view name() const override { return "testhooks"; }
  absl::Status Configure(const ConfigNode&) override {
    auto cfg = ConfigNode::LoadString(kBankConfig, "infobank.yaml");
    if (!cfg.ok()) return cfg.status();
    return bank_->Configure(*cfg);
  }
  absl::Status Start(PluginContext& context) override {
    FillHooks(context);
    return bank_->Start(context);
  }
  std::vector<HostedService> Services() override { return bank_->Services(); }
  void Stop() override { bank_->Stop(); }

 private:
  std::unique_ptr<ServicePlugin> bank_ = infobank::MakeInfobankPlugin();
};

event::v1::Event Alert(const std::string& person, const std::string& id) {
  health::v1::ElderlyCareAlert a;
  a.set_alert_id(id);
  a.set_kind(health::v1::CARE_ALERT_KIND_FALL_DETECTED);
  a.set_device_id("dev-" + person);
  return CareAlertEvent(person, id, a);
}

class InfobankNodeTest : public ExchangeNodeTest {
 protected:
  void SetUp() override {
    ASSERT_TRUE(RegisterBuiltinPlugins(registry_).ok());
    ASSERT_TRUE(
        registry_.Register("testhooks", [] { return std::make_unique<BankHooksPlugin>(); }).ok());
    ::setenv("HOME", dir_.File("home").c_str(), 1);
    ::unsetenv("CITYOS_CONFIG");
    ASSERT_NO_FATAL_FAILURE(StartNode(
        "bus:\n  streams:\n    - name: care\n      subjects: [\"health.alert.>\"]\n"
        "      durability: none\npolicy:\n  jurisdiction: JP\n"));
    ASSERT_NO_FATAL_FAILURE(LoadPolicy("care.yaml", kPolicy));
    board_ = &NewClient("city-ethics", "board", {"data-ethics-board"});
    center_ = &NewClient("care-center", "monitor");
  }

  static std::unique_ptr<cv1::ConsentService::Stub> Bank(Client& c) {
    return cv1::ConsentService::NewStub(c.channel);
  }
  Client& Person(const std::string& name) { return NewClient("residents", name, {}, true); }

  // `proposer` proposes its own org; the board approves it.
  void ApproveOrg(Client& proposer, const std::string& org) {
    cv1::ProposeRecipientRequest req;
    req.mutable_recipient()->set_org(org);
    req.mutable_recipient()->set_display_name(org);
    cv1::ProposeRecipientResponse resp;
    grpc::ClientContext ctx;
    Deadline(&ctx);
    grpc::Status s = Bank(proposer)->ProposeRecipient(&ctx, req, &resp);
    ASSERT_TRUE(s.ok()) << s.error_message();
    Review(resp.proposal().proposal_id(), true);
  }
  void Review(const std::string& id, bool approve) {
    cv1::ReviewProposalRequest req;
    req.set_proposal_id(id);
    req.set_approve(approve);
    req.set_reason("reviewed in test");
    cv1::ReviewProposalResponse resp;
    grpc::ClientContext ctx;
    Deadline(&ctx);
    grpc::Status s = Bank(*board_)->ReviewProposal(&ctx, req, &resp);
    ASSERT_TRUE(s.ok()) << s.error_message();
  }

  static cv1::GrantConsentRequest CareConsent(const std::string& org = "care-center") {
    cv1::GrantConsentRequest req;
    req.set_recipient_org(org);
    req.add_purposes("elderly_care");
    req.add_data_categories("care.alerts");
    req.set_sensitive(true);
    return req;
  }
  grpc::Status Grant(Client& person, const cv1::GrantConsentRequest& req,
                     cv1::GrantConsentResponse* resp) {
    grpc::ClientContext ctx;
    Deadline(&ctx);
    return Bank(person)->GrantConsent(&ctx, req, resp);
  }
  grpc::Status Revoke(Client& person, const std::string& id, cv1::RevokeConsentResponse* resp) {
    cv1::RevokeConsentRequest req;
    req.set_consent_id(id);
    req.set_reason("changed my mind");
    grpc::ClientContext ctx;
    Deadline(&ctx);
    return Bank(person)->RevokeConsent(&ctx, req, resp);
  }
  grpc::StatusCode Read(Client& c, const std::string& id, const std::string& purpose) {
    exchange::v1::GetEntityResponse resp;
    return GetEntity(c, kCareAlert, id, purpose, &resp).error_code();
  }

  Client* board_ = nullptr;
  Client* center_ = nullptr;
};

TEST_F(InfobankNodeTest, GrantAllowsExchangeAccessForTheConsentedPurposeOnly) {
  Client& alice = Person("alice");
  ASSERT_NO_FATAL_FAILURE(Publish({Alert("alice", "a-1")}));
  ASSERT_NO_FATAL_FAILURE(WaitForEntity(kCareAlert, "a-1"));
  // No consent yet: the rule alone does not open personal data.
  EXPECT_NE(Read(*center_, "a-1", "elderly_care"), grpc::StatusCode::OK);

  ASSERT_NO_FATAL_FAILURE(ApproveOrg(*center_, "care-center"));
  cv1::GrantConsentResponse g;
  grpc::Status s = Grant(alice, CareConsent(), &g);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(g.consent().state(), cv1::CONSENT_STATE_ACTIVE);
  EXPECT_EQ(g.consent().data_subject(), "alice");
  EXPECT_FALSE(g.consent().consent_id().empty());

  EXPECT_EQ(Read(*center_, "a-1", "elderly_care"), grpc::StatusCode::OK);
  // Same recipient, a purpose the person did not consent to.
  EXPECT_NE(Read(*center_, "a-1", "research"), grpc::StatusCode::OK);
  // Another org the policy allows, without the person's consent.
  Client& insurer = NewClient("insurer", "claims");
  EXPECT_NE(Read(insurer, "a-1", "elderly_care"), grpc::StatusCode::OK);

  // The PDP names the consent.
  Principal center = *Principal::FromSpiffeId(center_->spiffe_id);
  auto ev = Alert("alice", "a-1");
  auto d = TheHooks().pdp->DecideUncached({.principal = &center,
                                           .action = Action::kRead,
                                           .resource = ResourceView::Of(ev),
                                           .purpose = "elderly_care"});
  EXPECT_TRUE(d->allowed()) << d->reason;
  EXPECT_EQ(d->consent_id, g.consent().consent_id());

  // Revoked: denied at once.
  cv1::RevokeConsentResponse r;
  s = Revoke(alice, g.consent().consent_id(), &r);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(r.consent().state(), cv1::CONSENT_STATE_REVOKED);
  EXPECT_NE(Read(*center_, "a-1", "elderly_care"), grpc::StatusCode::OK);
  // Revoking again returns the same result.
  cv1::RevokeConsentResponse again;
  ASSERT_TRUE(Revoke(alice, g.consent().consent_id(), &again).ok());
  EXPECT_EQ(again.consent().revoke_time().seconds(), r.consent().revoke_time().seconds());
  // Another person cannot revoke (or even see) it.
  Client& bob = Person("bob");
  EXPECT_EQ(Revoke(bob, g.consent().consent_id(), &again).error_code(),
            grpc::StatusCode::NOT_FOUND);

  // History: grant then revoke; list shows it only with include_inactive.
  cv1::GetConsentHistoryRequest hreq;
  cv1::GetConsentHistoryResponse hist;
  grpc::ClientContext hctx;
  Deadline(&hctx);
  ASSERT_TRUE(Bank(alice)->GetConsentHistory(&hctx, hreq, &hist).ok());
  ASSERT_EQ(hist.events_size(), 2);
  EXPECT_EQ(hist.events(0).kind(), cv1::CONSENT_EVENT_KIND_GRANTED);
  EXPECT_EQ(hist.events(1).kind(), cv1::CONSENT_EVENT_KIND_REVOKED);
  EXPECT_EQ(hist.events(0).actor(), alice.spiffe_id);
  cv1::ListConsentsRequest lreq;
  cv1::ListConsentsResponse list;
  {
    grpc::ClientContext ctx;
    Deadline(&ctx);
    ASSERT_TRUE(Bank(alice)->ListConsents(&ctx, lreq, &list).ok());
    EXPECT_EQ(list.consents_size(), 0);
  }
  lreq.set_include_inactive(true);
  {
    grpc::ClientContext ctx;
    Deadline(&ctx);
    ASSERT_TRUE(Bank(alice)->ListConsents(&ctx, lreq, &list).ok());
    ASSERT_EQ(list.consents_size(), 1);
    EXPECT_EQ(list.consents(0).state(), cv1::CONSENT_STATE_REVOKED);
  }

  // Both are in the node's audit log, about alice.
  ASSERT_TRUE(TheHooks().audit->Flush().ok());
  for (const char* action : {"consent.grant", "consent.revoke", "ethics.review"}) {
    AuditQuery q;
    q.action = action;
    auto page = TheHooks().audit->Query(q);
    ASSERT_TRUE(page.ok());
    EXPECT_FALSE(page->entries.empty()) << action;
    if (std::string(action) != "ethics.review" && !page->entries.empty()) {
      EXPECT_EQ(page->entries[0].data_subject(), "alice");
    }
  }
}

TEST_F(InfobankNodeTest, GrantReceiptsAreReadableByThePersonAndTheRecipientOnly) {
  ASSERT_NO_FATAL_FAILURE(ApproveOrg(*center_, "care-center"));
  Client& alice = Person("alice");
  cv1::GrantConsentResponse g;
  ASSERT_TRUE(Grant(alice, CareConsent(), &g).ok());
  ASSERT_FALSE(g.receipt().receipt_id().empty());
  EXPECT_FALSE(g.receipt().jws().empty());
  EXPECT_EQ(g.consent().receipt_ids(0), g.receipt().receipt_id());
  cv1::GetReceiptRequest req;
  req.set_receipt_id(g.receipt().receipt_id());
  for (Client* c : {&alice, center_}) {
    cv1::GetReceiptResponse resp;
    grpc::ClientContext ctx;
    Deadline(&ctx);
    grpc::Status s = Bank(*c)->GetReceipt(&ctx, req, &resp);
    ASSERT_TRUE(s.ok()) << s.error_message();
    EXPECT_EQ(resp.receipt().jws(), g.receipt().jws());
  }
  Client& bob = Person("bob");
  cv1::GetReceiptResponse resp;
  grpc::ClientContext ctx;
  Deadline(&ctx);
  EXPECT_EQ(Bank(bob)->GetReceipt(&ctx, req, &resp).error_code(), grpc::StatusCode::NOT_FOUND);
}

TEST_F(InfobankNodeTest, RetriedGrantWithTheSameRequestIdReturnsTheFirstConsent) {
  ASSERT_NO_FATAL_FAILURE(ApproveOrg(*center_, "care-center"));
  Client& alice = Person("alice");
  cv1::GrantConsentRequest req = CareConsent();
  req.set_request_id("7d0b8c1e-0000-4000-8000-000000000001");
  cv1::GrantConsentResponse a, b;
  ASSERT_TRUE(Grant(alice, req, &a).ok());
  ASSERT_TRUE(Grant(alice, req, &b).ok());
  EXPECT_EQ(a.consent().consent_id(), b.consent().consent_id());
  EXPECT_EQ(a.receipt().receipt_id(), b.receipt().receipt_id());
  req.set_request_id("7d0b8c1e-0000-4000-8000-000000000002");
  ASSERT_TRUE(Grant(alice, req, &b).ok());
  EXPECT_NE(a.consent().consent_id(), b.consent().consent_id());
}

TEST_F(InfobankNodeTest, RevocationCutsALiveSubscriptionAndMeasuresTheCut) {
  ASSERT_NO_FATAL_FAILURE(ApproveOrg(*center_, "care-center"));
  std::vector<double> ms;
  constexpr int kIterations = 25;
  for (int i = 0; i < kIterations; ++i) {
    const std::string person = absl::StrFormat("p-cut-%d", i);
    Client& p = Person(person);
    cv1::GrantConsentResponse g;
    grpc::Status gs = Grant(p, CareConsent(), &g);
    ASSERT_TRUE(gs.ok()) << gs.error_message();

    grpc::ClientContext sctx;
    Deadline(&sctx, absl::Seconds(60));
    exchange::v1::SubscribeRequest sreq;
    sreq.set_subject_pattern("health.alert." + person);
    sreq.set_purpose("elderly_care");
    sreq.mutable_filter()->set_type(kCareAlert);
    sreq.mutable_filter()->set_data_subject(person);
    auto reader = center_->exchange->Subscribe(&sctx, sreq);
    reader->WaitForInitialMetadata();
    ASSERT_NO_FATAL_FAILURE(Publish({Alert(person, "cut-" + std::to_string(i))}));
    exchange::v1::SubscribeResponse resp;
    bool got = false;
    while (!got && reader->Read(&resp)) got = resp.deliveries_size() > 0;
    ASSERT_TRUE(got) << "iteration " << i << ": " << reader->Finish().error_message();

    const absl::Time t0 = absl::Now();
    cv1::RevokeConsentResponse r;
    grpc::Status rs = Revoke(p, g.consent().consent_id(), &r);
    ASSERT_TRUE(rs.ok()) << rs.error_message();
    while (reader->Read(&resp)) {
    }
    grpc::Status status = reader->Finish();
    const absl::Duration took = absl::Now() - t0;
    ASSERT_EQ(status.error_code(), grpc::StatusCode::PERMISSION_DENIED)
        << "iteration " << i << ": " << status.error_message();
    ms.push_back(absl::ToDoubleMilliseconds(took));
  }
  ReportCutLatency(std::move(ms), "RevokeConsent RPC -> live exchange subscription ended");
}

TEST_F(InfobankNodeTest, AnExpiredConsentNoLongerAllowsAndIsRecorded) {
  ASSERT_NO_FATAL_FAILURE(ApproveOrg(*center_, "care-center"));
  Client& alice = Person("alice");
  ASSERT_NO_FATAL_FAILURE(Publish({Alert("alice", "e-1")}));
  ASSERT_NO_FATAL_FAILURE(WaitForEntity(kCareAlert, "e-1"));
  cv1::GrantConsentRequest req = CareConsent();
  TimestampToProto(absl::Now() + absl::Seconds(3), req.mutable_expire_time());
  cv1::GrantConsentResponse g;
  ASSERT_TRUE(Grant(alice, req, &g).ok());
  EXPECT_EQ(Read(*center_, "e-1", "elderly_care"), grpc::StatusCode::OK);
  grpc::ClientContext sctx;
  Deadline(&sctx, absl::Seconds(30));
  exchange::v1::SubscribeRequest sreq;
  sreq.set_subject_pattern("health.alert.alice");
  sreq.set_purpose("elderly_care");
  sreq.mutable_filter()->set_type(kCareAlert);
  sreq.mutable_filter()->set_data_subject("alice");
  auto reader = center_->exchange->Subscribe(&sctx, sreq);
  reader->WaitForInitialMetadata();
  // The stream relies on the consent once it delivered under it.
  ASSERT_NO_FATAL_FAILURE(Publish({Alert("alice", "e-2")}));
  {
    exchange::v1::SubscribeResponse first;
    bool got = false;
    while (!got && reader->Read(&first)) got = first.deliveries_size() > 0;
    ASSERT_TRUE(got) << reader->Finish().error_message();
  }
  absl::SleepFor(*TimestampFromProto(req.expire_time(), "expire_time") - absl::Now());
  // The sweep records the expiry (history entry, index, PDP invalidation).
  cv1::GetConsentHistoryResponse hist;
  for (int i = 0; i < 100; ++i) {
    cv1::GetConsentHistoryRequest hreq;
    grpc::ClientContext ctx;
    Deadline(&ctx);
    ASSERT_TRUE(Bank(alice)->GetConsentHistory(&ctx, hreq, &hist).ok());
    if (hist.events_size() == 2) break;
    absl::SleepFor(absl::Milliseconds(50));
  }
  ASSERT_EQ(hist.events_size(), 2);
  EXPECT_EQ(hist.events(1).kind(), cv1::CONSENT_EVENT_KIND_EXPIRED);
  EXPECT_EQ(hist.events(1).consent().state(), cv1::CONSENT_STATE_EXPIRED);
  EXPECT_NE(Read(*center_, "e-1", "elderly_care"), grpc::StatusCode::OK);
  // The live subscription that relied on it ended.
  exchange::v1::SubscribeResponse resp;
  while (reader->Read(&resp)) {
  }
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::PERMISSION_DENIED);
  // An expired consent cannot be revoked.
  cv1::RevokeConsentResponse r;
  EXPECT_EQ(Revoke(alice, g.consent().consent_id(), &r).error_code(),
            grpc::StatusCode::FAILED_PRECONDITION);
}

TEST_F(InfobankNodeTest, OnlyRecipientsAndPurposesTheEthicsBoardApprovedCanBeChosen) {
  Client& alice = Person("alice");
  cv1::GrantConsentResponse g;
  // Never proposed.
  grpc::Status s = Grant(alice, CareConsent("care-center"), &g);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << s.error_message();
  EXPECT_THAT(s.error_message(), HasSubstr("not approved by the data ethics board"));

  // Proposed, still pending: not selectable; a second proposal is refused.
  cv1::ProposeRecipientRequest preq;
  preq.mutable_recipient()->set_org("care-center");
  cv1::ProposeRecipientResponse presp;
  {
    grpc::ClientContext ctx;
    Deadline(&ctx);
    ASSERT_TRUE(Bank(*center_)->ProposeRecipient(&ctx, preq, &presp).ok());
    EXPECT_EQ(presp.proposal().state(), cv1::PROPOSAL_STATE_PENDING);
  }
  {
    grpc::ClientContext ctx;
    Deadline(&ctx);
    cv1::ProposeRecipientResponse dup;
    EXPECT_EQ(Bank(*center_)->ProposeRecipient(&ctx, preq, &dup).error_code(),
              grpc::StatusCode::ALREADY_EXISTS);
  }
  // Proposing another org needs infobank-admin.
  {
    cv1::ProposeRecipientRequest other;
    other.mutable_recipient()->set_org("insurer");
    grpc::ClientContext ctx;
    Deadline(&ctx);
    cv1::ProposeRecipientResponse resp;
    EXPECT_EQ(Bank(*center_)->ProposeRecipient(&ctx, other, &resp).error_code(),
              grpc::StatusCode::PERMISSION_DENIED);
  }
  EXPECT_EQ(Grant(alice, CareConsent("care-center"), &g).error_code(),
            grpc::StatusCode::FAILED_PRECONDITION);
  // Only the board reviews, never its own proposal.
  cv1::ReviewProposalRequest rreq;
  rreq.set_proposal_id(presp.proposal().proposal_id());
  rreq.set_approve(true);
  rreq.set_reason("fine");
  {
    grpc::ClientContext ctx;
    Deadline(&ctx);
    cv1::ReviewProposalResponse resp;
    EXPECT_EQ(Bank(*center_)->ReviewProposal(&ctx, rreq, &resp).error_code(),
              grpc::StatusCode::PERMISSION_DENIED);
  }
  ASSERT_NO_FATAL_FAILURE(Review(presp.proposal().proposal_id(), true));
  s = Grant(alice, CareConsent("care-center"), &g);
  EXPECT_TRUE(s.ok()) << s.error_message();

  // A purpose: proposed by a service, pending -> FAILED_PRECONDITION;
  // approved -> registered in the PDP and selectable.
  cv1::ProposePurposeRequest pp;
  pp.mutable_purpose()->set_name("fall_prevention_study");
  pp.mutable_purpose()->set_description("research on falls");
  cv1::ProposePurposeResponse ppr;
  {
    grpc::ClientContext ctx;
    Deadline(&ctx);
    ASSERT_TRUE(Bank(*center_)->ProposePurpose(&ctx, pp, &ppr).ok());
  }
  cv1::GrantConsentRequest req = CareConsent();
  req.clear_purposes();
  req.add_purposes("fall_prevention_study");
  EXPECT_EQ(Grant(alice, req, &g).error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_FALSE(TheHooks().pdp->IsKnownPurpose("fall_prevention_study"));
  ASSERT_NO_FATAL_FAILURE(Review(ppr.proposal().proposal_id(), true));
  EXPECT_TRUE(TheHooks().pdp->IsKnownPurpose("fall_prevention_study"));
  s = Grant(alice, req, &g);
  EXPECT_TRUE(s.ok()) << s.error_message();

  // A rejected recipient stays unselectable; approved ones are listed.
  Client& insurer = NewClient("insurer", "claims");
  cv1::ProposeRecipientRequest ireq;
  ireq.mutable_recipient()->set_org("insurer");
  cv1::ProposeRecipientResponse iresp;
  {
    grpc::ClientContext ctx;
    Deadline(&ctx);
    ASSERT_TRUE(Bank(insurer)->ProposeRecipient(&ctx, ireq, &iresp).ok());
  }
  ASSERT_NO_FATAL_FAILURE(Review(iresp.proposal().proposal_id(), false));
  EXPECT_EQ(Grant(alice, CareConsent("insurer"), &g).error_code(),
            grpc::StatusCode::FAILED_PRECONDITION);
  cv1::ListProposalsRequest lreq;
  lreq.set_state(cv1::PROPOSAL_STATE_APPROVED);
  cv1::ListProposalsResponse lresp;
  grpc::ClientContext ctx;
  Deadline(&ctx);
  ASSERT_TRUE(Bank(alice)->ListProposals(&ctx, lreq, &lresp).ok());
  EXPECT_EQ(lresp.proposals_size(), 2);
}

TEST_F(InfobankNodeTest, SensitiveDataAndProfilingNeedTheirOwnExplicitConsent) {
  ASSERT_NO_FATAL_FAILURE(ApproveOrg(*center_, "care-center"));
  Client& alice = Person("alice");
  cv1::GrantConsentRequest req = CareConsent();
  req.set_sensitive(false);
  cv1::GrantConsentResponse g;
  grpc::Status s = Grant(alice, req, &g);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(s.error_message(), HasSubstr("sensitive"));

  // A non-sensitive category may be granted without the flag, but a
  // SENSITIVE resource still needs it at check time.
  cv1::GrantConsentRequest mob = CareConsent();
  mob.set_sensitive(false);
  mob.clear_data_categories();
  mob.add_data_categories("mobility.trips");
  ASSERT_TRUE(Grant(alice, mob, &g).ok());
  Principal center = *Principal::FromSpiffeId(center_->spiffe_id);
  auto ev = Alert("alice", "s-1");
  auto d = TheHooks().pdp->DecideUncached(
      {.principal = &center, .action = Action::kRead, .resource = ResourceView::Of(ev),
       .purpose = "elderly_care"});
  EXPECT_FALSE(d->allowed());

  // Profiling purpose: approved by the board, needs `profiling`.
  cv1::ProposePurposeRequest pp;
  pp.mutable_purpose()->set_name("care_risk_scoring");
  pp.mutable_purpose()->set_profiling(true);
  cv1::ProposePurposeResponse ppr;
  {
    grpc::ClientContext ctx;
    Deadline(&ctx);
    ASSERT_TRUE(Bank(*center_)->ProposePurpose(&ctx, pp, &ppr).ok());
  }
  ASSERT_NO_FATAL_FAILURE(Review(ppr.proposal().proposal_id(), true));
  cv1::GrantConsentRequest prof = CareConsent();
  prof.clear_purposes();
  prof.add_purposes("care_risk_scoring");
  s = Grant(alice, prof, &g);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(s.error_message(), HasSubstr("profiling"));
  prof.set_profiling(true);
  s = Grant(alice, prof, &g);
  EXPECT_TRUE(s.ok()) << s.error_message();
}

TEST_F(InfobankNodeTest, BadInputIsRefusedWithClearErrors) {
  ASSERT_NO_FATAL_FAILURE(ApproveOrg(*center_, "care-center"));
  Client& alice = Person("alice");
  cv1::GrantConsentResponse g;

  cv1::GrantConsentRequest req = CareConsent();
  req.clear_purposes();
  req.add_purposes("world_domination");
  grpc::Status s = Grant(alice, req, &g);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(s.error_message(), HasSubstr("unknown purpose \"world_domination\""));

  req = CareConsent();
  TimestampToProto(absl::Now() - absl::Hours(1), req.mutable_expire_time());
  s = Grant(alice, req, &g);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(s.error_message(), HasSubstr("in the past"));

  req = CareConsent();
  req.set_data_subject("bob");
  s = Grant(alice, req, &g);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_THAT(s.error_message(), HasSubstr("bob"));

  // A service may not grant for anyone.
  req = CareConsent();
  req.set_data_subject("alice");
  EXPECT_EQ(Grant(*center_, req, &g).error_code(), grpc::StatusCode::PERMISSION_DENIED);

  req = CareConsent();
  req.clear_recipient_org();
  EXPECT_EQ(Grant(alice, req, &g).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  req = CareConsent();
  req.clear_data_categories();
  req.add_data_categories("secrets.diary");
  s = Grant(alice, req, &g);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(s.error_message(), HasSubstr("unknown data category"));

  // Reading another person's consents.
  cv1::ListConsentsRequest lreq;
  lreq.set_data_subject("bob");
  cv1::ListConsentsResponse lresp;
  grpc::ClientContext ctx;
  Deadline(&ctx);
  EXPECT_EQ(Bank(alice)->ListConsents(&ctx, lreq, &lresp).error_code(),
            grpc::StatusCode::PERMISSION_DENIED);
  // Nothing was granted by any of it.
  lreq.set_data_subject("");
  lreq.set_include_inactive(true);
  grpc::ClientContext ctx2;
  Deadline(&ctx2);
  ASSERT_TRUE(Bank(alice)->ListConsents(&ctx2, lreq, &lresp).ok());
  EXPECT_EQ(lresp.consents_size(), 0);
}

TEST_F(InfobankNodeTest, ProvisionsUnderConsentCreditBenefitsOnceEach) {
  ASSERT_NO_FATAL_FAILURE(ApproveOrg(*center_, "care-center"));
  Client& alice = Person("alice");
  cv1::GrantConsentResponse g;
  ASSERT_TRUE(Grant(alice, CareConsent(), &g).ok());
  ASSERT_NO_FATAL_FAILURE(Publish({Alert("alice", "b-1")}));
  ASSERT_NO_FATAL_FAILURE(WaitForEntity(kCareAlert, "b-1"));
  ASSERT_EQ(Read(*center_, "b-1", "elderly_care"), grpc::StatusCode::OK);
  // The bank reads the audit (every second) and credits 5 points per
  // provision entry under alice's consent.
  int64_t balance = 0;
  for (int i = 0; i < 100 && balance == 0; ++i) {
    absl::SleepFor(absl::Milliseconds(100));
    cv1::GetBenefitBalanceRequest req;
    cv1::GetBenefitBalanceResponse resp;
    grpc::ClientContext ctx;
    Deadline(&ctx);
    grpc::Status s = Bank(alice)->GetBenefitBalance(&ctx, req, &resp);
    ASSERT_TRUE(s.ok()) << s.error_message();
    balance = resp.balance();
  }
  EXPECT_EQ(balance, 5);
  // Read again later (rescans never pay the same audit entry twice).
  absl::SleepFor(absl::Milliseconds(2500));
  cv1::GetBenefitStatementRequest sreq;
  cv1::GetBenefitStatementResponse st;
  grpc::ClientContext ctx;
  Deadline(&ctx);
  ASSERT_TRUE(Bank(alice)->GetBenefitStatement(&ctx, sreq, &st).ok());
  ASSERT_EQ(st.entries_size(), 1);
  EXPECT_EQ(st.entries(0).consent_id(), g.consent().consent_id());
  EXPECT_EQ(st.entries(0).recipient_org(), "care-center");
}

// Reads the whole export of `person` as `c`; checks the chunks' SHA-256.
grpc::Status Export(cv1::ConsentService::Stub& bank, nlohmann::json* doc) {
  grpc::ClientContext ctx;
  Deadline(&ctx);
  cv1::ExportPersonalDataRequest req;
  auto reader = bank.ExportPersonalData(&ctx, req);
  std::string text;
  cv1::ExportPersonalDataResponse chunk;
  bool last = false;
  while (reader->Read(&chunk)) {
    text += chunk.chunk();
    last = chunk.last();
    if (last) {
      EXPECT_EQ(chunk.sha256().size(), 64u);
    }
  }
  grpc::Status s = reader->Finish();
  if (s.ok()) {
    EXPECT_TRUE(last);
    *doc = nlohmann::json::parse(text, nullptr, false);
  }
  return s;
}

TEST_F(InfobankNodeTest, ExportShowsEverythingAndDeletionShredsTheRecordsButKeepsTheAudit) {
  ASSERT_NO_FATAL_FAILURE(ApproveOrg(*center_, "care-center"));
  Client& alice = Person("alice");
  auto bank = Bank(alice);
  cv1::GrantConsentResponse g;
  ASSERT_TRUE(Grant(alice, CareConsent(), &g).ok());
  ASSERT_NO_FATAL_FAILURE(Publish({Alert("alice", "x-1"), Alert("bob", "x-2")}));
  ASSERT_NO_FATAL_FAILURE(WaitForEntity(kCareAlert, "x-1"));
  ASSERT_EQ(Read(*center_, "x-1", "elderly_care"), grpc::StatusCode::OK);
  nlohmann::json doc;
  // The bank keeps the bus's events asynchronously, and the exchange writes
  // allowed reads to the audit aggregated per second.
  for (int i = 0; i < 100; ++i) {
    grpc::Status s = Export(*bank, &doc);
    ASSERT_TRUE(s.ok()) << s.error_message();
    if (doc["records"].size() == 1 && !doc["provision_history"].empty()) break;
    absl::SleepFor(absl::Milliseconds(50));
  }
  EXPECT_EQ(doc["data_subject"], "alice");
  ASSERT_EQ(doc["records"].size(), 1u);  // bob's event is not alice's
  EXPECT_EQ(doc["records"][0]["specversion"], "1.0");
  EXPECT_EQ(doc["records"][0]["datasubject"], "alice");
  EXPECT_EQ(doc["records"][0]["data"]["alert_id"], "x-1");
  ASSERT_EQ(doc["consents"].size(), 1u);
  EXPECT_EQ(doc["receipts"].size(), 1u);
  ASSERT_FALSE(doc["provision_history"].empty());

  // Deletion: confirm must name the person.
  cv1::DeletePersonalDataRequest dreq;
  dreq.set_confirm("bob");
  cv1::DeletePersonalDataResponse dresp;
  {
    grpc::ClientContext ctx;
    Deadline(&ctx);
    EXPECT_EQ(bank->DeletePersonalData(&ctx, dreq, &dresp).error_code(),
              grpc::StatusCode::INVALID_ARGUMENT);
  }
  dreq.set_confirm("alice");
  {
    grpc::ClientContext ctx;
    Deadline(&ctx);
    grpc::Status s = bank->DeletePersonalData(&ctx, dreq, &dresp);
    ASSERT_TRUE(s.ok()) << s.error_message();
  }
  EXPECT_EQ(dresp.records(), 1u);
  EXPECT_EQ(dresp.consents_revoked(), 1u);
  EXPECT_GT(dresp.audit_sequence(), 0u);
  // The consent is gone from the exchange, the records from the export.
  EXPECT_NE(Read(*center_, "x-1", "elderly_care"), grpc::StatusCode::OK);
  ASSERT_TRUE(Export(*bank, &doc).ok());
  EXPECT_TRUE(doc["records"].empty());
  EXPECT_EQ(doc["consents"][0]["state"], "CONSENT_STATE_REVOKED");
  // The audit trail stays: the earlier provision and the deletion itself.
  EXPECT_FALSE(doc["provision_history"].empty());
  AuditQuery q;
  q.data_subject = "alice";
  q.action = "personal_data.delete";
  auto page = TheHooks().audit->Query(q);
  ASSERT_TRUE(page.ok());
  ASSERT_EQ(page->entries.size(), 1u);
  EXPECT_EQ(page->entries[0].sequence(), dresp.audit_sequence());
}

TEST_F(InfobankNodeTest, ListsPageNewestFirstAndARecipientCategoryCoversItsMembers) {
  // care_provider = [care-center] in the bank's config.
  cv1::ProposeRecipientRequest preq;
  preq.mutable_recipient()->set_category("care_provider");
  Client& admin = NewClient("bank", "ops", {"infobank-admin"});
  cv1::ProposeRecipientResponse presp;
  {
    grpc::ClientContext ctx;
    Deadline(&ctx);
    grpc::Status s = Bank(admin)->ProposeRecipient(&ctx, preq, &presp);
    ASSERT_TRUE(s.ok()) << s.error_message();
  }
  ASSERT_NO_FATAL_FAILURE(Review(presp.proposal().proposal_id(), true));
  Client& alice = Person("alice");
  std::vector<std::string> ids;
  for (int i = 0; i < 5; ++i) {
    cv1::GrantConsentRequest req = CareConsent();
    req.set_recipient_category("care_provider");
    cv1::GrantConsentResponse g;
    grpc::Status s = Grant(alice, req, &g);
    ASSERT_TRUE(s.ok()) << s.error_message();
    ids.push_back(g.consent().consent_id());
  }
  ASSERT_NO_FATAL_FAILURE(Publish({Alert("alice", "k-1")}));
  ASSERT_NO_FATAL_FAILURE(WaitForEntity(kCareAlert, "k-1"));
  EXPECT_EQ(Read(*center_, "k-1", "elderly_care"), grpc::StatusCode::OK);
  Client& insurer = NewClient("insurer", "claims");
  EXPECT_NE(Read(insurer, "k-1", "elderly_care"), grpc::StatusCode::OK);

  std::vector<std::string> listed;
  cv1::ListConsentsRequest req;
  req.set_page_size(2);
  do {
    cv1::ListConsentsResponse resp;
    grpc::ClientContext ctx;
    Deadline(&ctx);
    ASSERT_TRUE(Bank(alice)->ListConsents(&ctx, req, &resp).ok());
    EXPECT_LE(resp.consents_size(), 2);
    for (const auto& c : resp.consents()) listed.push_back(c.consent_id());
    req.set_page_token(resp.next_page_token());
  } while (!req.page_token().empty());
  std::vector<std::string> newest_first(ids.rbegin(), ids.rend());
  EXPECT_EQ(listed, newest_first);
  req.set_page_size(1001);
  req.clear_page_token();
  cv1::ListConsentsResponse resp;
  grpc::ClientContext ctx;
  Deadline(&ctx);
  EXPECT_EQ(Bank(alice)->ListConsents(&ctx, req, &resp).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
}

TEST_F(InfobankNodeTest, ConsentsSurviveANodeRestart) {
  ASSERT_NO_FATAL_FAILURE(ApproveOrg(*center_, "care-center"));
  Client& alice = Person("alice");
  cv1::GrantConsentResponse g;
  ASSERT_TRUE(Grant(alice, CareConsent(), &g).ok());
  ASSERT_NO_FATAL_FAILURE(Publish({Alert("alice", "r-1")}));
  ASSERT_NO_FATAL_FAILURE(WaitForEntity(kCareAlert, "r-1"));
  StopNode();
  ASSERT_NO_FATAL_FAILURE(StartNode(
      "bus:\n  streams:\n    - name: care\n      subjects: [\"health.alert.>\"]\n"
      "      durability: none\npolicy:\n  jurisdiction: JP\n"));
  ASSERT_NO_FATAL_FAILURE(LoadPolicy("care.yaml", kPolicy));
  center_ = &NewClient("care-center", "monitor");
  ASSERT_NO_FATAL_FAILURE(WaitForEntity(kCareAlert, "r-1"));
  EXPECT_EQ(Read(*center_, "r-1", "elderly_care"), grpc::StatusCode::OK);
  EXPECT_NE(Read(*center_, "r-1", "research"), grpc::StatusCode::OK);
}

grpc::Status Delegate(cv1::ConsentService::Stub& bank, const std::string& app,
                      std::vector<std::string> scopes, cv1::GrantDelegationResponse* resp,
                      absl::Duration ttl = absl::ZeroDuration()) {
  cv1::GrantDelegationRequest req;
  req.set_app(app);
  for (const std::string& s : scopes) req.add_scopes(s);
  if (ttl != absl::ZeroDuration()) TimestampToProto(absl::Now() + ttl, req.mutable_expire_time());
  grpc::ClientContext ctx;
  Deadline(&ctx);
  return bank.GrantDelegation(&ctx, req, resp);
}

grpc::Status ExportFor(cv1::ConsentService::Stub& bank, const std::string& person) {
  grpc::ClientContext ctx;
  Deadline(&ctx);
  cv1::ExportPersonalDataRequest req;
  req.set_data_subject(person);
  auto reader = bank.ExportPersonalData(&ctx, req);
  cv1::ExportPersonalDataResponse chunk;
  while (reader->Read(&chunk)) {
  }
  return reader->Finish();
}

TEST_F(InfobankNodeTest, AnAppActsForAPersonOnlyUnderTheirDelegation) {
  ASSERT_NO_FATAL_FAILURE(ApproveOrg(*center_, "care-center"));
  Client& alice = Person("alice");
  Person("bob");
  Client& app = NewClient("carebook", "app");
  ASSERT_NO_FATAL_FAILURE(Publish({Alert("alice", "d-1")}));
  ASSERT_NO_FATAL_FAILURE(WaitForEntity(kCareAlert, "d-1"));
  cv1::GrantConsentRequest req = CareConsent();
  req.set_data_subject("alice");
  cv1::GrantConsentResponse g;

  // No delegation: the app may not act for alice.
  grpc::Status s = Grant(app, req, &g);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_THAT(s.error_message(), HasSubstr("no delegation"));
  // An app must name the person.
  cv1::GrantConsentRequest unnamed = CareConsent();
  EXPECT_EQ(Grant(app, unnamed, &g).error_code(), grpc::StatusCode::PERMISSION_DENIED);

  // Alice delegates consents to the app.
  auto bank = Bank(alice);
  cv1::GrantDelegationResponse d;
  s = Delegate(*bank, app.spiffe_id, {"consents"}, &d);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(d.delegation().state(), cv1::DELEGATION_STATE_ACTIVE);
  EXPECT_EQ(d.delegation().data_subject(), "alice");
  EXPECT_EQ(d.delegation().app(), app.spiffe_id);

  // The app grants a consent for alice; the exchange then allows the recipient.
  EXPECT_NE(Read(*center_, "d-1", "elderly_care"), grpc::StatusCode::OK);
  s = Grant(app, req, &g);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(g.consent().data_subject(), "alice");
  EXPECT_EQ(Read(*center_, "d-1", "elderly_care"), grpc::StatusCode::OK);
  {
    cv1::ListConsentsRequest lreq;
    lreq.set_data_subject("alice");
    cv1::ListConsentsResponse lresp;
    grpc::ClientContext ctx;
    Deadline(&ctx);
    ASSERT_TRUE(Bank(app)->ListConsents(&ctx, lreq, &lresp).ok());
    EXPECT_EQ(lresp.consents_size(), 1);
  }
  // Only "consents": no export, no deletion, no delegation of its own.
  s = ExportFor(*Bank(app), "alice");
  EXPECT_EQ(s.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_THAT(s.error_message(), HasSubstr("scope"));
  {
    cv1::DeletePersonalDataRequest dreq;
    dreq.set_data_subject("alice");
    dreq.set_confirm("alice");
    cv1::DeletePersonalDataResponse dresp;
    grpc::ClientContext ctx;
    Deadline(&ctx);
    EXPECT_EQ(Bank(app)->DeletePersonalData(&ctx, dreq, &dresp).error_code(),
              grpc::StatusCode::PERMISSION_DENIED);
  }
  cv1::GrantDelegationResponse ignored;
  EXPECT_EQ(Delegate(*Bank(app), app.spiffe_id, {"data"}, &ignored).error_code(),
            grpc::StatusCode::PERMISSION_DENIED);
  // Naming another person.
  req.set_data_subject("bob");
  s = Grant(app, req, &g);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_THAT(s.error_message(), HasSubstr("bob"));
  req.set_data_subject("alice");

  // With "data" too the app may export.
  cv1::GrantDelegationResponse data;
  ASSERT_TRUE(Delegate(*bank, app.spiffe_id, {"data"}, &data).ok());
  s = ExportFor(*Bank(app), "alice");
  EXPECT_TRUE(s.ok()) << s.error_message();

  // Revoked: denied at once.
  for (const auto* del : {&d, &data}) {
    cv1::RevokeDelegationRequest rreq;
    rreq.set_delegation_id(del->delegation().delegation_id());
    cv1::RevokeDelegationResponse rresp;
    grpc::ClientContext ctx;
    Deadline(&ctx);
    s = bank->RevokeDelegation(&ctx, rreq, &rresp);
    ASSERT_TRUE(s.ok()) << s.error_message();
    EXPECT_EQ(rresp.delegation().state(), cv1::DELEGATION_STATE_REVOKED);
  }
  s = Grant(app, req, &g);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_THAT(s.error_message(), HasSubstr("revoked"));
  // Bob cannot revoke alice's delegation: indistinguishable from unknown.
  {
    cv1::RevokeDelegationRequest rreq;
    rreq.set_delegation_id(d.delegation().delegation_id());
    cv1::RevokeDelegationResponse rresp;
    grpc::ClientContext ctx;
    Deadline(&ctx);
    EXPECT_EQ(Bank(Person("bob"))->RevokeDelegation(&ctx, rreq, &rresp).error_code(),
              grpc::StatusCode::NOT_FOUND);
  }

  // Expired: denied.
  cv1::GrantDelegationResponse brief;
  ASSERT_TRUE(Delegate(*bank, app.spiffe_id, {"consents"}, &brief, absl::Seconds(1)).ok());
  ASSERT_TRUE(Grant(app, req, &g).ok());
  absl::SleepFor(*TimestampFromProto(brief.delegation().expire_time(), "t") - absl::Now() +
                 absl::Milliseconds(50));
  s = Grant(app, req, &g);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_THAT(s.error_message(), HasSubstr("expired"));

  // Alice sees all three, newest first, with their states as of now.
  {
    cv1::ListDelegationsRequest lreq;
    cv1::ListDelegationsResponse lresp;
    grpc::ClientContext ctx;
    Deadline(&ctx);
    ASSERT_TRUE(bank->ListDelegations(&ctx, lreq, &lresp).ok());
    EXPECT_EQ(lresp.delegations_size(), 0);
    lreq.set_include_inactive(true);
    grpc::ClientContext ctx2;
    Deadline(&ctx2);
    ASSERT_TRUE(bank->ListDelegations(&ctx2, lreq, &lresp).ok());
    ASSERT_EQ(lresp.delegations_size(), 3);
    EXPECT_EQ(lresp.delegations(0).state(), cv1::DELEGATION_STATE_EXPIRED);
    EXPECT_EQ(lresp.delegations(1).state(), cv1::DELEGATION_STATE_REVOKED);
  }

  // Both kinds of delegation change are audited.
  ASSERT_TRUE(TheHooks().audit->Flush().ok());
  for (const char* action : {"delegation.grant", "delegation.revoke"}) {
    AuditQuery q;
    q.data_subject = "alice";
    q.action = action;
    auto page = TheHooks().audit->Query(q);
    ASSERT_TRUE(page.ok()) << page.status();
    EXPECT_FALSE(page->entries.empty()) << action;
  }
}

TEST_F(InfobankNodeTest, BadDelegationsAreRefused) {
  Client& alice = Person("alice");
  auto bank = Bank(alice);
  Client& app = NewClient("carebook", "app");
  cv1::GrantDelegationResponse d;
  auto code = [&](const std::string& who, std::vector<std::string> scopes,
                  absl::Duration ttl = absl::ZeroDuration()) {
    return Delegate(*bank, who, std::move(scopes), &d, ttl).error_code();
  };
  EXPECT_EQ(code("", {"consents"}), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(code("not-a-spiffe-id", {"consents"}), grpc::StatusCode::INVALID_ARGUMENT);
  // A user principal is not an app.
  EXPECT_EQ(code("spiffe://local/org/residents/user/bob", {"consents"}),
            grpc::StatusCode::INVALID_ARGUMENT);
  // Another trust domain.
  EXPECT_EQ(code("spiffe://elsewhere.example/org/carebook/svc/app", {"consents"}),
            grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(code(app.spiffe_id, {}), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(code(app.spiffe_id, {"consents", "delete"}), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(code(app.spiffe_id, {"consents"}, -absl::Seconds(10)),
            grpc::StatusCode::INVALID_ARGUMENT);
  // Only a person may delegate, list or revoke delegations.
  EXPECT_EQ(Delegate(*Bank(*center_), app.spiffe_id, {"consents"}, &d).error_code(),
            grpc::StatusCode::PERMISSION_DENIED);
  cv1::RevokeDelegationRequest rreq;
  rreq.set_delegation_id("nope");
  cv1::RevokeDelegationResponse rresp;
  grpc::ClientContext ctx;
  Deadline(&ctx);
  EXPECT_EQ(bank->RevokeDelegation(&ctx, rreq, &rresp).error_code(), grpc::StatusCode::NOT_FOUND);
  // Nothing was granted by any of it.
  cv1::ListDelegationsRequest lreq;
  lreq.set_include_inactive(true);
  cv1::ListDelegationsResponse lresp;
  grpc::ClientContext lctx;
  Deadline(&lctx);
  ASSERT_TRUE(bank->ListDelegations(&lctx, lreq, &lresp).ok());
  EXPECT_EQ(lresp.delegations_size(), 0);
}

}  // namespace
}  // namespace cityos::exchange_test
