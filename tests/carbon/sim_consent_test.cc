// The demo city's consents on a real node (`tls: auto`, mTLS everywhere,
// the shipped config/policies loaded): the `city-sim` plug-in has each
// consenting citizen grant, as that person (a user certificate from the
// node's development CA), a consent for the carbon office (purpose
// carbon_accounting; mobility, green payments, e-invoices) through the
// information bank's ConsentService, after the demo's ethics approval:
//  - the bank then holds exactly one active consent for each consenting
//    citizen and none for the others (ListConsents as each person);
//  - the exchange's decisions follow: the carbon office may take the
//    consenting citizens' trips, rides, green payments and e-invoices, under
//    their consent, and none of the others'; its carbon inputs under its
//    legal obligation; it may publish its outputs; every simulated publisher
//    is allowed by config/policies/carbon.yaml;
//  - a restart grants nothing twice;
//  - without the demo approval the plug-in waits (FAILED_PRECONDITION from
//    the bank) and grants once the ethics board approved the recipient.
// No timing assertions: every wait has a deadline.
#include <gmock/gmock.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <sys/stat.h>

#include <atomic>
#include <filesystem>
#include <map>
#include <set>
#include <tuple>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "builtin_plugins.h"
#include "cityos/config.h"
#include "cityos/consent/v1/consent.grpc.pb.h"
#include "cityos/proto_time.h"
#include "infobank_plugin.h"
#include "service_fixture.h"
#include "sim.h"
#include "sim_plugin.h"

namespace cityos::exchange_test {
namespace {

namespace kv1 = ::cityos::consent::v1;
namespace xv1 = ::cityos::exchange::v1;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

constexpr absl::Duration kWait = absl::Seconds(60);

// Six citizens, three of whom consent; one small enterprise; 26 hours of
// backfill (citizens travel and pay between 06:00 and 22:00 city time, so
// every publisher publishes at once whatever the time of day the test runs).
constexpr char kSimBase[] = R"(seed: 11
consent_share: 0.5
citizens: {count: 6, metro_rides_per_day: 48, bus_rides_per_day: 48, walks_per_day: 48,
           bike_trips_per_day: 48, green_payments_per_day: 48, einvoices_per_day: 48}
enterprises:
  - id: qz-chem
    name: Quzhou Fluorochemicals
    industry: C2614
    district: kecheng
    profile: continuous
    value_added_per_year: 1000
    sites:
      - id: site-1
        lines:
          - id: synthesis
            meters: [{id: elec, energy: electricity, unit: kWh, per_hour: 2000}]
  - id: js-cement
    name: Jiangshan Cement
    industry: C3011
    district: jiangshan
    profile: continuous
    value_added_per_year: 1000
    sites:
      - id: site-1
        lines:
          - id: kiln-1
            meters: [{id: elec, energy: electricity, unit: kWh, per_hour: 900}]
            processes: [{method: cement-clinker, key: clinker, unit: t, per_hour: 21}]
rates: {interval: 15m, speed: 100000, duplicate_share: 0, out_of_order_share: 0, impossible_share: 0}
backfill: 26h
tick: 100ms
)";

constexpr char kBankConfig[] = R"(controller:
  name: Test Information Bank
  jurisdiction: CN
)";

// The plug-in of the running node (set at its Start).
std::atomic<citysim::CitySimPlugin*> g_sim{nullptr};
// The city-sim config of the next start.
std::string& SimYaml() {
  static std::string* yaml = new std::string();
  return *yaml;
}

// The fixture's `testhooks` plug-in with the information bank and the
// simulator inside (the fixture's node lists only bus, exchange, testhooks).
class SimHooksPlugin final : public ServicePlugin {
 public:
  std::string_view name() const override { return "testhooks"; }
  absl::Status Configure(const ConfigNode&) override {
    auto bank = ConfigNode::LoadString(kBankConfig, "infobank.yaml");
    if (!bank.ok()) return bank.status();
    if (absl::Status s = bank_->Configure(*bank); !s.ok()) return s;
    auto sim = ConfigNode::LoadString(SimYaml(), "city-sim.yaml");
    if (!sim.ok()) return sim.status();
    return sim_->Configure(*sim);
  }
  absl::Status Start(PluginContext& context) override {
    FillHooks(context);
    if (absl::Status s = bank_->Start(context); !s.ok()) return s;
    if (absl::Status s = sim_->Start(context); !s.ok()) return s;
    g_sim = sim_.get();
    return absl::OkStatus();
  }
  std::vector<HostedService> Services() override { return bank_->Services(); }
  void Drain() override { bank_->Drain(); }
  void Stop() override {
    g_sim = nullptr;
    sim_->Stop();
    bank_->Stop();
  }

 private:
  std::unique_ptr<ServicePlugin> bank_ = infobank::MakeInfobankPlugin();
  std::unique_ptr<citysim::CitySimPlugin> sim_ = citysim::MakeCitySimPlugin();
};

class SimConsentTest : public ExchangeNodeTest {
 protected:
  void SetUp() override {
    ASSERT_TRUE(RegisterBuiltinPlugins(registry_).ok());
    ASSERT_TRUE(
        registry_.Register("testhooks", [] { return std::make_unique<SimHooksPlugin>(); }).ok());
    ::setenv("HOME", dir_.File("home").c_str(), 1);
    ::unsetenv("CITYOS_CONFIG");
  }

  // Starts the node with the shipped policies and `sim_yaml`.
  void Start(const std::string& sim_yaml) {
    SimYaml() = sim_yaml;
    if (started_ == absl::InfinitePast()) started_ = absl::Now();
    ASSERT_NO_FATAL_FAILURE(StartNode(absl::StrCat(
        "bus:\n  streams:\n    - name: people\n      subjects: [\"mobility.>\", \"payments.>\"]\n"
        "      durability: none\n",
        "policy:\n  files: [", CITYOS_SOURCE_DIR, "/config/policies]\n  jurisdiction: CN\n")));
    ASSERT_NE(g_sim.load(), nullptr);
  }

  // When the first node of the test started.
  absl::Time started_ = absl::InfinitePast();

  // Waits until the plug-in reports every consenting citizen done.
  citysim::CitySimStats WaitConsentsDone() {
    citysim::CitySimStats st;
    const absl::Time deadline = absl::Now() + kWait;
    while (absl::Now() < deadline) {
      st = g_sim.load()->stats();
      if (st.consents_done) return st;
      absl::SleepFor(absl::Milliseconds(20));
    }
    ADD_FAILURE() << "the consents were not granted in time; last error: " << st.consent_error
                  << " (granted " << st.consents_granted << ", present " << st.consents_present
                  << ")";
    return st;
  }

  std::vector<citysim::SimCitizen> Citizens() const { return g_sim.load()->sim()->citizens(); }

  // ListConsents (every state) as the person `subject`.
  std::vector<kv1::Consent> ConsentsOf(const std::string& subject) {
    Client& me = NewClient("residents", subject, {}, true);
    kv1::ListConsentsRequest req;
    req.set_include_inactive(true);
    kv1::ListConsentsResponse resp;
    grpc::ClientContext ctx;
    Deadline(&ctx);
    grpc::Status s = kv1::ConsentService::NewStub(me.channel)->ListConsents(&ctx, req, &resp);
    EXPECT_TRUE(s.ok()) << subject << ": " << s.error_message();
    return {resp.consents().begin(), resp.consents().end()};
  }

  // Explain as `who` (its own decision).
  xv1::Decision Explain(Client& who, xv1::Action action, const xv1::Resource& resource,
                        const std::string& purpose) {
    xv1::ExplainRequest req;
    req.set_action(action);
    *req.mutable_resource() = resource;
    req.set_purpose(purpose);
    xv1::ExplainResponse resp;
    grpc::ClientContext ctx;
    Deadline(&ctx);
    grpc::Status s = who.exchange->Explain(&ctx, req, &resp);
    EXPECT_TRUE(s.ok()) << s.error_message();
    return resp.decision();
  }

  // Checks the bank's consents: exactly one active consent per consenting
  // citizen, none for the others. Returns the consent ids by subject.
  std::map<std::string, std::string> CheckConsents() {
    std::map<std::string, std::string> ids;
    for (const citysim::SimCitizen& c : Citizens()) {
      std::vector<kv1::Consent> all = ConsentsOf(c.data_subject);
      if (!c.consents) {
        EXPECT_TRUE(all.empty()) << c.data_subject << " does not consent but has "
                                 << all.size() << " consent(s)";
        continue;
      }
      EXPECT_EQ(all.size(), 1u) << c.data_subject;
      if (all.size() != 1) continue;
      const kv1::Consent& k = all[0];
      EXPECT_EQ(k.state(), kv1::CONSENT_STATE_ACTIVE) << c.data_subject;
      EXPECT_EQ(k.data_subject(), c.data_subject);
      EXPECT_EQ(k.recipient_org(), "carbon-office");
      EXPECT_THAT(k.purposes(), ElementsAre("carbon_accounting"));
      EXPECT_THAT(k.data_categories(),
                  ElementsAre("mobility", "payments.green", "payments.einvoice"));
      ids[c.data_subject] = k.consent_id();
    }
    return ids;
  }

  // Subscribes as `office` to `pattern` for carbon_accounting, replaying
  // from `from`, until every event id of `want` arrived (or the deadline).
  std::vector<xv1::ExchangeDelivery> Replay(Client& office, const std::string& pattern,
                                            absl::Time from, const std::set<std::string>& want) {
    grpc::ClientContext ctx;
    Deadline(&ctx, kWait);
    xv1::SubscribeRequest req;
    req.set_subject_pattern(pattern);
    req.set_purpose("carbon_accounting");
    TimestampToProto(from, req.mutable_start_time());
    auto reader = office.exchange->Subscribe(&ctx, req);
    std::vector<xv1::ExchangeDelivery> got;
    std::set<std::string> missing = want;
    xv1::SubscribeResponse resp;
    while (!missing.empty() && reader->Read(&resp)) {
      for (const xv1::ExchangeDelivery& d : resp.deliveries()) {
        got.push_back(d);
        missing.erase(d.event().id());
      }
    }
    ctx.TryCancel();
    reader->Finish();
    EXPECT_TRUE(missing.empty()) << missing.size() << " of " << want.size() << " events of "
                                 << pattern << " never arrived";
    return got;
  }

  // The demo's ethics approval, as the test's own principals.
  void ApproveCarbonOffice() {
    Client& office = NewClient("carbon-office", "carbon");
    Client& board = NewClient("city-ethics", "board", {"data-ethics-board"});
    kv1::ProposeRecipientRequest req;
    req.mutable_recipient()->set_org("carbon-office");
    req.mutable_recipient()->set_display_name("Quzhou carbon office");
    kv1::ProposeRecipientResponse resp;
    grpc::ClientContext ctx;
    Deadline(&ctx);
    grpc::Status s =
        kv1::ConsentService::NewStub(office.channel)->ProposeRecipient(&ctx, req, &resp);
    ASSERT_TRUE(s.ok()) << s.error_message();
    kv1::ReviewProposalRequest rev;
    rev.set_proposal_id(resp.proposal().proposal_id());
    rev.set_approve(true);
    rev.set_reason("carbon accounting of the city");
    kv1::ReviewProposalResponse rr;
    grpc::ClientContext ctx2;
    Deadline(&ctx2);
    s = kv1::ConsentService::NewStub(board.channel)->ReviewProposal(&ctx2, rev, &rr);
    ASSERT_TRUE(s.ok()) << s.error_message();
  }
};

xv1::Resource Personal(const std::string& subject, const std::string& type,
                       const std::string& owner, const std::string& person) {
  xv1::Resource r;
  r.set_subject(subject);
  r.set_domain(subject.substr(0, subject.find('.')));
  r.set_type(type);
  r.set_classification(event::v1::CLASSIFICATION_PERSONAL);
  r.set_owner(owner);
  r.set_region("CN-ZJ-QZ-KC");
  r.set_jurisdiction("CN");
  r.set_data_subject(person);
  return r;
}

TEST_F(SimConsentTest, CitizensGrantOnceAndTheExchangeFollows) {
  ASSERT_NO_FATAL_FAILURE(
      Start(absl::StrCat(kSimBase, "consents: {approve_recipient: true, min_backoff: 50ms, "
                                   "max_backoff: 500ms}\n")));
  const citysim::CitySimStats st = WaitConsentsDone();
  ASSERT_TRUE(st.consents_done);
  const std::vector<std::string> consenting = g_sim.load()->sim()->ConsentingSubjects();
  ASSERT_EQ(consenting.size(), 3u);
  EXPECT_EQ(st.consents_granted, 3u);
  EXPECT_EQ(st.consents_present, 0u);

  const std::map<std::string, std::string> ids = CheckConsents();
  EXPECT_EQ(ids.size(), 3u);

  // The residents' certificates are kept (keys 0600) for the next start.
  for (const std::string& s : consenting) {
    const std::string key = dir_.File("data/city-sim/residents/" + s + ".key");
    struct stat sb {};
    ASSERT_EQ(::stat(key.c_str(), &sb), 0) << key;
    EXPECT_EQ(sb.st_mode & 0777, 0600u) << key;
  }

  // The exchange's decisions for the carbon office follow the consents.
  Client& office = NewClient("carbon-office", "carbon");
  const std::vector<std::tuple<std::string, std::string, std::string>> inputs = {
      {"mobility.trip.quzhou", "cityos.mobility.v1.Trip", "quzhou-green-travel"},
      {"mobility.transit.ride.quzhou", "cityos.mobility.v1.TransitRide", "quzhou-metro"},
      {"payments.green.quzhou", "cityos.payments.v1.GreenPayment", "alipay-sim"},
      {"payments.einvoice.quzhou", "cityos.payments.v1.EInvoice", "quzhou-tax"}};
  for (const citysim::SimCitizen& c : Citizens()) {
    for (const auto& [subject, type, owner] : inputs) {
      for (xv1::Action action : {xv1::ACTION_SUBSCRIBE, xv1::ACTION_HISTORY}) {
        xv1::Decision d = Explain(office, action, Personal(subject, type, owner, c.data_subject),
                                  "carbon_accounting");
        if (c.consents) {
          EXPECT_EQ(d.effect(), xv1::EFFECT_ALLOW) << c.data_subject << " " << subject << ": "
                                                   << d.reason();
          EXPECT_EQ(d.consent_id(), ids.count(c.data_subject) ? ids.at(c.data_subject) : "?");
          EXPECT_THAT(d.rule_ids(),
                      ElementsAre("carbon-office-reads-green-behaviour-with-consent"));
        } else {
          EXPECT_EQ(d.effect(), xv1::EFFECT_DENY) << c.data_subject << " " << subject;
          EXPECT_THAT(d.reason(), HasSubstr("consent")) << c.data_subject << " " << subject;
        }
      }
    }
    // Another purpose is not covered by the consent.
    xv1::Decision other =
        Explain(office, xv1::ACTION_HISTORY,
                Personal("payments.green.quzhou", "cityos.payments.v1.GreenPayment",
                         "alipay-sim", c.data_subject),
                "commercial");
    EXPECT_EQ(other.effect(), xv1::EFFECT_DENY) << c.data_subject;
  }

  // Carbon inputs under the legal obligation; outputs published as owner.
  {
    xv1::Resource r;
    r.set_subject("carbon.meter.reading.quzhou.kecheng");
    r.set_domain("carbon");
    r.set_type("cityos.carbon.v1.MeterReading");
    r.set_classification(event::v1::CLASSIFICATION_INTERNAL);
    r.set_owner("qz-chem");
    r.set_region("CN-ZJ-QZ-KC");
    xv1::Decision d = Explain(office, xv1::ACTION_SUBSCRIBE, r, "carbon_accounting");
    EXPECT_EQ(d.effect(), xv1::EFFECT_ALLOW) << d.reason();
    EXPECT_TRUE(d.consent_id().empty());
    xv1::Resource out;
    out.set_subject("carbon.alarm.quzhou.kecheng");
    out.set_domain("carbon");
    out.set_classification(event::v1::CLASSIFICATION_INTERNAL);
    out.set_owner("carbon-office");
    d = Explain(office, xv1::ACTION_PUBLISH, out, "");
    EXPECT_EQ(d.effect(), xv1::EFFECT_ALLOW) << d.reason();
    out.set_owner("qz-chem");  // not as another org's data
    d = Explain(office, xv1::ACTION_PUBLISH, out, "");
    EXPECT_EQ(d.effect(), xv1::EFFECT_DENY);
  }

  // Every simulated publisher is allowed by config/policies/carbon.yaml:
  // once the backfill is replayed, every org of Publishers() has published
  // (the simulation is a pure function of its seed: Generate tells what was
  // published) and the bus refused nothing.
  citysim::CitySimStats pub;
  const absl::Time deadline = absl::Now() + kWait;
  while (absl::Now() < deadline) {
    pub = g_sim.load()->stats();
    if (pub.sim_now >= absl::Now() - absl::Minutes(5) || pub.publish_failures > 0) break;
    absl::SleepFor(absl::Milliseconds(20));
  }
  ASSERT_GE(pub.sim_now, absl::Now() - absl::Minutes(10)) << "the backfill was not replayed";
  EXPECT_EQ(pub.publish_failures, 0u);
  const citysim::CitySim& sim = *g_sim.load()->sim();
  std::set<std::string> published_orgs;
  const std::vector<citysim::SimEvent> window =
      sim.Generate(pub.sim_start, pub.sim_now);
  for (const citysim::SimEvent& e : window) published_orgs.insert(e.org);
  for (const citysim::SimEvent& e : sim.ValueAddedBackfill(pub.sim_now)) {
    published_orgs.insert(e.org);
  }
  std::set<std::string> publisher_orgs;
  for (const auto& [org, pattern] : sim.Publishers()) publisher_orgs.insert(org);
  EXPECT_EQ(published_orgs, publisher_orgs);
  EXPECT_GE(pub.published, window.size());
  // The carbon office's Subscribe (replaying the stored events) delivers
  // every personal event of the consenting citizens, each under that
  // person's consent, and none of the others': delivery is in publish
  // order, so once the last expected event arrived every earlier event of a
  // non-consenting citizen would have been delivered before it.
  std::set<std::string> consenting_set(consenting.begin(), consenting.end());
  const std::vector<citysim::SimEvent> all = sim.Generate(pub.sim_start, pub.sim_now);
  for (const auto& [pattern, prefix] : std::vector<std::pair<std::string, std::string>>{
           {"mobility.trip.>", "mobility.trip."},
           {"mobility.transit.ride.>", "mobility.transit.ride."},
           {"payments.green.>", "payments.green."},
           {"payments.einvoice.>", "payments.einvoice."}}) {
    std::set<std::string> want;
    size_t others = 0;
    for (const citysim::SimEvent& e : all) {
      if (!absl::StartsWith(e.event.subject(), prefix)) continue;
      if (consenting_set.contains(e.event.data_subject())) {
        want.insert(e.event.id());
      } else {
        ++others;
      }
    }
    ASSERT_FALSE(want.empty()) << pattern;
    EXPECT_GT(others, 0u) << pattern << ": the non-consenting citizens published nothing";
    for (const xv1::ExchangeDelivery& d : Replay(office, pattern, started_ - absl::Minutes(1), want)) {
      const std::string& person = d.event().data_subject();
      EXPECT_TRUE(consenting_set.contains(person))
          << pattern << ": delivered an event of " << person << ", who did not consent";
      EXPECT_EQ(d.decision().consent_id(), ids.count(person) ? ids.at(person) : "?") << pattern;
    }
  }

  // A simulated org may not publish another's subjects.
  {
    Client& metro = NewClient("quzhou-metro", "ticketing");
    xv1::Resource r = Personal("payments.green.quzhou", "cityos.payments.v1.GreenPayment",
                               "quzhou-metro", "someone");
    xv1::Decision d = Explain(metro, xv1::ACTION_PUBLISH, r, "");
    EXPECT_EQ(d.effect(), xv1::EFFECT_DENY);
  }

  // Restart: the same citizens, their certificates reused, nothing granted
  // twice.
  StopNode();
  ASSERT_NO_FATAL_FAILURE(
      Start(absl::StrCat(kSimBase, "consents: {approve_recipient: true, min_backoff: 50ms, "
                                   "max_backoff: 500ms}\n")));
  const citysim::CitySimStats again = WaitConsentsDone();
  ASSERT_TRUE(again.consents_done);
  EXPECT_EQ(again.consents_granted, 0u);
  EXPECT_EQ(again.consents_present, 3u);
  EXPECT_EQ(CheckConsents(), ids);
}

TEST_F(SimConsentTest, WaitsForTheEthicsBoardThenGrants) {
  ASSERT_NO_FATAL_FAILURE(
      Start(absl::StrCat(kSimBase, "consents: {min_backoff: 20ms, max_backoff: 200ms}\n")));
  // Not approved: the bank refuses, the plug-in keeps trying.
  citysim::CitySimStats st;
  const absl::Time deadline = absl::Now() + kWait;
  while (absl::Now() < deadline) {
    st = g_sim.load()->stats();
    if (st.consent_failures > 0 &&
        st.consent_error.find("not approved by the data ethics board") != std::string::npos) {
      break;
    }
    absl::SleepFor(absl::Milliseconds(20));
  }
  EXPECT_THAT(st.consent_error, HasSubstr("not approved by the data ethics board"));
  EXPECT_THAT(st.consent_error, HasSubstr("carbon-office"));
  EXPECT_FALSE(st.consents_done);
  EXPECT_EQ(st.consents_granted, 0u);

  ASSERT_NO_FATAL_FAILURE(ApproveCarbonOffice());
  const citysim::CitySimStats done = WaitConsentsDone();
  ASSERT_TRUE(done.consents_done);
  EXPECT_EQ(done.consents_granted, 3u);
  EXPECT_TRUE(done.consent_error.empty()) << done.consent_error;
  EXPECT_EQ(CheckConsents().size(), 3u);
}

TEST_F(SimConsentTest, OffWhenConfiguredOff) {
  ASSERT_NO_FATAL_FAILURE(Start(absl::StrCat(kSimBase, "grant_consents: false\n")));
  // Off: the plug-in never starts the consent thread (nothing to wait for),
  // and its stats say so.
  const citysim::CitySimStats st = g_sim.load()->stats();
  EXPECT_FALSE(st.consents_done);
  EXPECT_EQ(st.consent_failures, 0u);
  StopNode();  // Stop() returns with no consent thread to join.
  EXPECT_FALSE(std::filesystem::exists(dir_.File("data/city-sim/residents")))
      << "no resident certificates without grant_consents";
}

TEST(SimConsentConfig, ErrorsNameTheKey) {
  struct Case {
    const char* yaml;
    const char* key;
  };
  for (const Case& c : {Case{"consents: {recipient_org: \"\"}\n", "recipient_org"},
                        Case{"consents: {data_categories: []}\n", "data_categories"},
                        Case{"consents: {min_backoff: 0s}\n", "min_backoff"},
                        Case{"consents: {min_backoff: 2s, max_backoff: 1s}\n", "max_backoff"},
                        Case{"consents: {approve: true}\n", "approve"},
                        Case{"grant_consents: maybe\n", "grant_consents"}}) {
    auto node = ConfigNode::LoadString(c.yaml, "city-sim.yaml");
    ASSERT_TRUE(node.ok()) << node.status();
    absl::Status s = citysim::MakeCitySimPlugin()->Configure(*node);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << c.yaml;
    EXPECT_THAT(std::string(s.message()), HasSubstr(c.key)) << c.yaml;
  }
  auto ok = ConfigNode::LoadString(
      "grant_consents: true\nconsents: {recipient_org: carbon-office, purpose: carbon_accounting, "
      "data_categories: [mobility], residents_org: residents, address: \"127.0.0.1:1\", "
      "approve_recipient: false, min_backoff: 10ms, max_backoff: 1s}\n",
      "city-sim.yaml");
  ASSERT_TRUE(ok.ok());
  EXPECT_TRUE(citysim::MakeCitySimPlugin()->Configure(*ok).ok());
}

}  // namespace
}  // namespace cityos::exchange_test
