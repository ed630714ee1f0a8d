// The carbon account service on a real node (mTLS everywhere; the node runs
// `tls: auto`, so the carbon plug-in issues its own certificate as
// org carbon-office / svc carbon from the node's development CA) together
// with the exchange (the service's only input path) and the information
// bank (real consent through its ConsentService):
//  - readings published on the bus by a meter operator are accounted via the
//    exchange: 32,000 kWh x 0.5500 (CN-EAST 2023) = 17,600.0 kg; bad
//    readings are quarantined with their reason;
//  - green-behaviour credits only for the person who consented to
//    carbon_accounting, none for the person who did not;
//  - an alarm raised on a plan, seen on WatchAlarms and on the bus,
//    acknowledged by the enterprise; another enterprise gets NOT_FOUND;
//  - the carbon-viewer's region view and the enterprises' limits;
//  - the monthly report as JSON and as CSV;
//  - a restatement end to end (17,600.0 kg as reported, 16,979.2 kg restated
//    with 0.5306), the grade recomputed and the loan tier reversed.
// No timing assertions: every wait has a deadline.
#include <gmock/gmock.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include <sys/stat.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "builtin_plugins.h"
#include "carbon_plugin.h"
#include "cityos/carbon/v1/carbon.grpc.pb.h"
#include "cityos/config.h"
#include "cityos/consent/v1/consent.grpc.pb.h"
#include "cityos/event.h"
#include "cityos/mobility/v1/mobility.pb.h"
#include "cityos/proto_time.h"
#include "cityos/tls.h"
#include "cityosctl.h"
#include "infobank_plugin.h"
#include "nlohmann/json.hpp"
#include "service_fixture.h"

namespace cityos::exchange_test {
namespace {

namespace cv1 = ::cityos::carbon::v1;
namespace kv1 = ::cityos::consent::v1;
using ::testing::HasSubstr;

constexpr char kPolicy[] = R"(data_categories:
  - name: mobility
    subjects: ["mobility.>"]
rules:
  - id: meters-publish-readings
    effect: allow
    actions: [publish]
    principal: {orgs: [quzhou-grid, quzhou-steel, quzhou-cement]}
    resource: {subjects: ["carbon.meter.reading.>", "carbon.process.>", "carbon.output.>"]}
  - id: carbon-office-reads-inputs
    effect: allow
    actions: [subscribe, read, history]
    principal: {orgs: [carbon-office]}
    resource: {subjects: ["carbon.meter.reading.>", "carbon.process.>", "carbon.output.>"]}
    purposes: [carbon_accounting]
    legal_basis: legal_obligation
  - id: carbon-office-reads-green-behaviour-with-consent
    effect: allow
    actions: [subscribe, read, history]
    principal: {orgs: [carbon-office]}
    resource:
      subjects: ["mobility.trip.>", "mobility.transit.ride.>", "payments.green.>", "payments.einvoice.>"]
    purposes: [carbon_accounting]
    legal_basis: consent
  - id: carbon-office-publishes-outputs
    effect: allow
    actions: [publish]
    principal: {orgs: [carbon-office]}
    resource: {subjects: ["carbon.emission.>", "carbon.alarm.>", "carbon.grade.>"]}
  - id: operators-watch-alarms
    effect: allow
    actions: [subscribe]
    principal: {orgs: [city-ops]}
    resource: {subjects: ["carbon.alarm.>", "carbon.emission.>", "carbon.grade.>"]}
    legal_basis: legitimate_interest
)";

constexpr char kBankConfig[] = R"(controller:
  name: Test Information Bank
)";

constexpr char kCarbonConfig[] = R"(time_zone: Asia/Shanghai
reporters: [quzhou-grid]
exchange:
  min_backoff: 20ms
  max_backoff: 200ms
regions:
  - {code: CN, name: China, token: cn}
  - {code: CN-ZJ, name: Zhejiang, parent: CN, grid: CN-EAST, token: zhejiang}
  - {code: CN-ZJ-QZ, name: Quzhou, parent: CN-ZJ, token: quzhou}
  - {code: CN-ZJ-QZ-KC, name: Kecheng, parent: CN-ZJ-QZ, token: kecheng}
  - {code: CN-ZJ-QZ-QJ, name: Qujiang, parent: CN-ZJ-QZ, token: qujiang}
factors:
  - {kind: grid, key: electricity, region: CN, vintage: "2023", value: 0.5306,
     unit: kgCO2/kWh, source: "MEE+NBS 2023 national average", valid_from: "2023-01-01T00:00:00+08:00"}
  - {kind: grid, key: electricity, region: CN-EAST, vintage: "2023", value: 0.55,
     unit: kgCO2/kWh, source: "MEE+NBS 2023 East China grid", valid_from: "2023-01-01T00:00:00+08:00"}
benchmarks:
  - {id: zj-C31, industry: C31, version: "2023", intensity: 0.92, source: "test benchmark"}
credit_rules:
  rules:
    - {scheme: ant_forest, behaviour: metro_ride, grams: 52, cap: "5 per day"}
incentives:
  points_per_kg: 1
  loan_tiers: {1: green-A, 2: green-B, 3: standard}
tick_interval: 100ms
)";

// The fixture's `testhooks` plug-in with the information bank and the carbon
// account inside (the fixture's node config lists only bus, exchange and
// testhooks): fills the hooks, then starts the bank and the carbon plug-in.
class CarbonHooksPlugin final : public ServicePlugin {
 public:
  std::string_view name() const override { return "testhooks"; }
  absl::Status Configure(const ConfigNode&) override {
    auto bank = ConfigNode::LoadString(kBankConfig, "infobank.yaml");
    if (!bank.ok()) return bank.status();
    if (absl::Status s = bank_->Configure(*bank); !s.ok()) return s;
    auto carbon = ConfigNode::LoadString(kCarbonConfig, "carbon.yaml");
    if (!carbon.ok()) return carbon.status();
    return carbon_->Configure(*carbon);
  }
  absl::Status Start(PluginContext& context) override {
    FillHooks(context);
    if (absl::Status s = bank_->Start(context); !s.ok()) return s;
    return carbon_->Start(context);
  }
  std::vector<HostedService> Services() override {
    std::vector<HostedService> all = bank_->Services();
    for (const HostedService& s : carbon_->Services()) all.push_back(s);
    return all;
  }
  void Drain() override { carbon_->Drain(); }
  void Stop() override {
    carbon_->Stop();
    bank_->Stop();
  }

 private:
  std::unique_ptr<ServicePlugin> bank_ = infobank::MakeInfobankPlugin();
  std::unique_ptr<ServicePlugin> carbon_ = carbon::MakeCarbonPlugin();
};

constexpr absl::Duration kWait = absl::Seconds(30);

google::protobuf::Timestamp ToProtoTs(absl::Time t) {
  google::protobuf::Timestamp ts;
  SetTimestamp(t, &ts);
  return ts;
}

class CarbonServiceTest : public ExchangeNodeTest {
 protected:
  void SetUp() override {
    ASSERT_TRUE(RegisterBuiltinPlugins(registry_).ok());
    ASSERT_TRUE(
        registry_
            .Register("testhooks",
                      [] { return std::make_unique<CarbonHooksPlugin>(); })
            .ok());
    ::setenv("HOME", dir_.File("home").c_str(), 1);
    ::unsetenv("CITYOS_CONFIG");
    ASSERT_NO_FATAL_FAILURE(Boot());
    ASSERT_NO_FATAL_FAILURE(CreateSteel());
  }

  // Starts the node (streams capturing the carbon inputs, so the feed can
  // resume), loads the policy, makes the clients.
  void Boot() {
    ASSERT_NO_FATAL_FAILURE(
        StartNode("bus:\n  streams:\n"
                  "    - name: carbon-in\n"
                  "      subjects: [\"carbon.meter.reading.>\", "
                  "\"carbon.process.>\", \"carbon.output.>\"]\n"
                  "      durability: none\n"
                  "    - name: people\n"
                  "      subjects: [\"mobility.>\", \"payments.>\"]\n"
                  "      durability: none\n"
                  "policy:\n  jurisdiction: CN\n"));
    ASSERT_NO_FATAL_FAILURE(LoadPolicy("carbon.yaml", kPolicy));
    admin_c_ = &NewClient("city", "carbon-admin", {"carbon-admin"});
    viewer_ = &NewClient("city", "carbon-viewer", {"carbon-viewer"});
    steel_ = &NewClient("quzhou-steel", "energy-manager");
    cement_ = &NewClient("quzhou-cement", "energy-manager");
    grid_ = &NewClient("quzhou-grid", "meters");
  }

  static std::unique_ptr<cv1::CarbonAccountService::Stub> Carbon(Client& c) {
    return cv1::CarbonAccountService::NewStub(c.channel);
  }

  using Stub = cv1::CarbonAccountService::Stub;
  // One unary call of the carbon account service as `c`, with the default
  // deadline: Call(*steel_, &Stub::SetPlan, req, &resp).
  template <typename Req, typename Resp>
  static grpc::Status Call(Client& c,
                           grpc::Status (Stub::*method)(grpc::ClientContext*, const Req&, Resp*),
                           const Req& req, Resp* resp) {
    grpc::ClientContext ctx;
    Deadline(&ctx);
    return (Carbon(c).get()->*method)(&ctx, req, resp);
  }

  // quzhou-steel (C3110, Kecheng) with a site, a line and an electricity
  // meter; quzhou-cement (C3011, Qujiang).
  void CreateSteel() {
    cv1::Account e;
    e.set_account_id("quzhou-steel");
    e.set_kind(cv1::ACCOUNT_KIND_ENTERPRISE);
    e.set_name("Quzhou Steel");
    e.set_org("quzhou-steel");
    e.set_industry_code("C3110");
    e.set_region("CN-ZJ-QZ-KC");
    ASSERT_TRUE(Create(*admin_c_, e).ok());
    cv1::Account c = e;
    c.set_account_id("quzhou-cement");
    c.set_org("quzhou-cement");
    c.set_industry_code("C3011");
    c.set_region("CN-ZJ-QZ-QJ");
    ASSERT_TRUE(Create(*admin_c_, c).ok());
    // The enterprise's own principal builds its tree.
    cv1::Account site;
    site.set_account_id("quzhou-steel/site-1");
    site.set_kind(cv1::ACCOUNT_KIND_SITE);
    site.set_parent_id("quzhou-steel");
    site.set_name("Site 1");
    grpc::Status s = Create(*steel_, site);
    ASSERT_TRUE(s.ok()) << s.error_message();
    cv1::Account line;
    line.set_account_id("quzhou-steel/site-1/line-1");
    line.set_kind(cv1::ACCOUNT_KIND_LINE);
    line.set_parent_id("quzhou-steel/site-1");
    ASSERT_TRUE(Create(*steel_, line).ok());
    cv1::Account meter;
    meter.set_account_id("quzhou-steel/m-elec");
    meter.set_kind(cv1::ACCOUNT_KIND_METER);
    meter.set_parent_id("quzhou-steel/site-1/line-1");
    meter.mutable_meter()->set_energy_kind(cv1::ENERGY_KIND_ELECTRICITY);
    meter.mutable_meter()->set_unit("kWh");
    meter.mutable_meter()->set_max_per_hour(1'000'000);
    s = Create(*steel_, meter);
    ASSERT_TRUE(s.ok()) << s.error_message();
  }

  grpc::Status Create(Client& c, const cv1::Account& a) {
    cv1::CreateAccountRequest req;
    *req.mutable_account() = a;
    cv1::CreateAccountResponse resp;
    return Call(c, &Stub::CreateAccount, req, &resp);
  }

  // A MeterReading event as the grid operator publishes it.
  event::v1::Event Reading(const std::string& meter, double value,
                           const std::string& unit, absl::Time start,
                           absl::Time end,
                           const std::string& district = "kecheng",
                           const std::string& region = "CN-ZJ-QZ-KC") {
    cv1::MeterReading r;
    r.set_meter_id(meter);
    r.set_energy_kind(cv1::ENERGY_KIND_ELECTRICITY);
    r.set_reading_kind(cv1::READING_KIND_INTERVAL);
    r.set_value(value);
    r.set_unit(unit);
    SetTimestamp(start, r.mutable_interval_start());
    SetTimestamp(end, r.mutable_interval_end());
    auto e = EventBuilder()
                 .Source("//quzhou.city/meters/" + meter)
                 .Subject("carbon.meter.reading.quzhou." + district)
                 .Classification(event::v1::CLASSIFICATION_INTERNAL)
                 .Owner("quzhou-grid")
                 .Region(region)
                 .ProtoData(r)
                 .Build();
    EXPECT_TRUE(e.ok()) << e.status();
    return *e;
  }

  // Publishes over gRPC (BusService.Publish) as `c`.
  void PublishAs(Client& c, std::vector<event::v1::Event> events) {
    bus::v1::PublishRequest req;
    for (auto& e : events) *req.add_events() = std::move(e);
    bus::v1::PublishResponse resp;
    grpc::ClientContext ctx;
    Deadline(&ctx);
    grpc::Status s = c.bus->Publish(&ctx, req, &resp);
    ASSERT_TRUE(s.ok()) << s.error_code() << ": " << s.error_message();
  }

  grpc::Status Emissions(Client& c, const std::string& account, absl::Time from,
                         absl::Time to, bool as_reported,
                         cv1::GetEmissionsResponse* resp,
                         cv1::Granularity g = cv1::GRANULARITY_DAY) {
    cv1::GetEmissionsRequest req;
    req.set_account_id(account);
    req.set_granularity(g);
    SetTimestamp(from, req.mutable_range()->mutable_start());
    SetTimestamp(to, req.mutable_range()->mutable_end());
    req.set_as_reported(as_reported);
    return Call(c, &Stub::GetEmissions, req, resp);
  }

  static double TotalKg(const cv1::GetEmissionsResponse& r) {
    double kg = 0;
    for (const auto& t : r.totals()) kg += t.total_kg();
    return kg;
  }

  // Waits until the account's total over [from, to) reaches `kg` (+-0.01).
  void WaitForTotal(const std::string& account, absl::Time from, absl::Time to,
                    double kg, bool as_reported = false) {
    const absl::Time deadline = absl::Now() + kWait;
    double last = -1;
    while (absl::Now() < deadline) {
      cv1::GetEmissionsResponse resp;
      grpc::Status s =
          Emissions(*admin_c_, account, from, to, as_reported, &resp);
      if (s.ok()) {
        last = TotalKg(resp);
        if (std::fabs(last - kg) < 0.01) return;
      }
      absl::SleepFor(absl::Milliseconds(20));
    }
    FAIL() << account << ": total never reached " << kg << " kg (last " << last
           << ")";
  }

  // The city day around now, in Asia/Shanghai.
  static absl::TimeZone Tz() {
    absl::TimeZone tz;
    EXPECT_TRUE(absl::LoadTimeZone("Asia/Shanghai", &tz));
    return tz;
  }
  static absl::Time DayStart(absl::Time t) {
    return absl::FromCivil(absl::ToCivilDay(t, Tz()), Tz());
  }
  // The last whole city month before now.
  static std::pair<absl::Time, absl::Time> LastMonth() {
    absl::CivilMonth m = absl::ToCivilMonth(absl::Now(), Tz());
    return {absl::FromCivil(m - 1, Tz()), absl::FromCivil(m, Tz())};
  }

  Client* admin_c_ = nullptr;
  Client* viewer_ = nullptr;
  Client* steel_ = nullptr;
  Client* cement_ = nullptr;
  Client* grid_ = nullptr;
};

// Reads the next WatchAlarms response with a change of `kind`.
bool NextChange(grpc::ClientReader<cv1::WatchAlarmsResponse>* reader,
                cv1::AlarmChangeKind kind, cv1::Alarm* out) {
  cv1::WatchAlarmsResponse resp;
  while (reader->Read(&resp)) {
    for (const auto& c : resp.changes()) {
      if (c.kind() == kind) {
        *out = c.alarm();
        return true;
      }
    }
  }
  return false;
}

// One enterprise cannot report for another: quzhou-cement's reading for
// quzhou-steel's meter is refused; the grid operator (a configured reporter)
// reports for everyone.
TEST_F(CarbonServiceTest, ReadingsForAnotherOrgsEnterpriseAreRefused) {
  const absl::Time end = absl::Now() - absl::Minutes(1);
  const absl::Time start = end - absl::Minutes(15);
  event::v1::Event forged =
      Reading("quzhou-steel/m-elec", 1000, "kWh", start - absl::Minutes(15), start);
  forged.set_owner("quzhou-cement");
  ASSERT_NO_FATAL_FAILURE(PublishAs(*cement_, {forged}));
  // Published after it on the same stream: once this one is accounted, the
  // forged one was seen first.
  ASSERT_NO_FATAL_FAILURE(PublishAs(
      *grid_, {Reading("quzhou-steel/m-elec", 32000, "kWh", start, end)}));
  ASSERT_NO_FATAL_FAILURE(WaitForTotal("quzhou-steel", DayStart(start - absl::Minutes(15)),
                                       DayStart(start - absl::Minutes(15)) + absl::Hours(48),
                                       17600.0));
  cv1::GetEmissionsResponse days;
  ASSERT_TRUE(Emissions(*steel_, "quzhou-steel", DayStart(start - absl::Minutes(15)),
                        DayStart(start - absl::Minutes(15)) + absl::Hours(48), false, &days)
                  .ok());
  double total = 0;
  uint64_t readings = 0;
  for (const cv1::EmissionTotal& t : days.totals()) {
    total += t.total_kg();
    readings += t.readings();
  }
  EXPECT_NEAR(total, 17600.0, 1e-6);
  EXPECT_EQ(readings, 1u);
}

TEST_F(CarbonServiceTest,
       ReadingsPublishedOnTheBusAreAccountedThroughTheExchange) {
  const absl::Time now = absl::Now();
  const absl::Time end = now - absl::Minutes(1);
  const absl::Time start = end - absl::Minutes(15);
  ASSERT_NO_FATAL_FAILURE(PublishAs(
      *grid_, {Reading("quzhou-steel/m-elec", 32000, "kWh", start, end)}));
  // 32,000 kWh x 0.5500 kg/kWh (CN-EAST 2023, the most specific region with a
  // factor for Kecheng) = 17,600.0 kg.
  ASSERT_NO_FATAL_FAILURE(WaitForTotal("quzhou-steel", DayStart(start),
                                       DayStart(start) + absl::Hours(24),
                                       17600.0));
  cv1::GetEmissionsResponse day;
  ASSERT_TRUE(Emissions(*steel_, "quzhou-steel", DayStart(start),
                        DayStart(start) + absl::Hours(24), false, &day)
                  .ok());
  ASSERT_EQ(day.totals_size(), 1);
  EXPECT_NEAR(day.totals(0).scope2_location_kg(), 17600.0, 1e-6);
  EXPECT_NEAR(day.totals(0).scope1_kg(), 0, 1e-9);
  EXPECT_EQ(day.totals(0).readings(), 1u);

  // The record names its factor and source event.
  cv1::ListEmissionRecordsRequest lr;
  lr.set_account_id("quzhou-steel/site-1");
  SetTimestamp(start - absl::Hours(1), lr.mutable_range()->mutable_start());
  SetTimestamp(end, lr.mutable_range()->mutable_end());
  cv1::ListEmissionRecordsResponse records;
  {
    grpc::Status s = Call(*steel_, &Stub::ListEmissionRecords, lr, &records);
    ASSERT_TRUE(s.ok()) << s.error_message();
  }
  ASSERT_EQ(records.records_size(), 1);
  EXPECT_EQ(records.records(0).factor().region(), "CN-EAST");
  EXPECT_EQ(records.records(0).factor().vintage(), "2023");
  EXPECT_NEAR(records.records(0).emissions_kg(), 17600.0, 1e-6);
  EXPECT_EQ(records.records(0).line_id(), "quzhou-steel/site-1/line-1");

  // Impossible readings are quarantined with their reason: a unit the meter
  // was not registered with, and a meter nobody registered.
  ASSERT_NO_FATAL_FAILURE(PublishAs(
      *grid_,
      {Reading("quzhou-steel/m-elec", 32, "MWh", end, end + absl::Seconds(30)),
       Reading("quzhou-steel/m-ghost", 5, "kWh", start, end)}));
  const absl::Time deadline = absl::Now() + kWait;
  cv1::ListQuarantinedReadingsResponse q;
  while (absl::Now() < deadline) {
    cv1::ListQuarantinedReadingsRequest qr;
    qr.set_account_id("quzhou-steel");
    q.Clear();
    grpc::Status s = Call(*steel_, &Stub::ListQuarantinedReadings, qr, &q);
    ASSERT_TRUE(s.ok()) << s.error_message();
    if (q.readings_size() >= 1) break;
    absl::SleepFor(absl::Milliseconds(20));
  }
  ASSERT_EQ(q.readings_size(), 1);
  EXPECT_EQ(q.readings(0).reason(), cv1::QUARANTINE_REASON_UNIT_MISMATCH);
  EXPECT_EQ(q.readings(0).reading().meter_id(), "quzhou-steel/m-elec");
  // The unknown meter belongs to no account: only the city-wide view shows it.
  {
    cv1::ListQuarantinedReadingsRequest all;
    cv1::ListQuarantinedReadingsResponse resp;
    EXPECT_EQ(
        Call(*steel_, &Stub::ListQuarantinedReadings, all, &resp).error_code(),
        grpc::StatusCode::PERMISSION_DENIED);
  }
  bool ghost = false;
  const absl::Time deadline2 = absl::Now() + kWait;
  while (!ghost && absl::Now() < deadline2) {
    cv1::ListQuarantinedReadingsRequest all;
    cv1::ListQuarantinedReadingsResponse resp;
    ASSERT_TRUE(
        Call(*viewer_, &Stub::ListQuarantinedReadings, all, &resp).ok());
    for (const auto& r : resp.readings()) {
      if (r.reason() == cv1::QUARANTINE_REASON_UNKNOWN_METER &&
          r.reading().meter_id() == "quzhou-steel/m-ghost") {
        ghost = true;
      }
    }
    if (!ghost) absl::SleepFor(absl::Milliseconds(20));
  }
  EXPECT_TRUE(ghost)
      << "the unknown meter's reading was not quarantined as UNKNOWN_METER";
  // The figures did not move.
  cv1::GetEmissionsResponse again;
  ASSERT_TRUE(Emissions(*steel_, "quzhou-steel", DayStart(start),
                        DayStart(start) + absl::Hours(24), false, &again)
                  .ok());
  EXPECT_NEAR(TotalKg(again), 17600.0, 1e-6);
}

TEST_F(CarbonServiceTest, IndividualCreditsOnlyWithConsent) {
  // The ethics board approves the carbon office as a recipient; alice
  // consents to carbon_accounting of her mobility data, bob does not.
  Client& officer = NewClient("carbon-office", "officer");
  Client& board = NewClient("city-ethics", "board", {"data-ethics-board"});
  auto bank = [](Client& c) { return kv1::ConsentService::NewStub(c.channel); };
  {
    kv1::ProposeRecipientRequest req;
    req.mutable_recipient()->set_org("carbon-office");
    req.mutable_recipient()->set_display_name("Quzhou carbon office");
    kv1::ProposeRecipientResponse resp;
    grpc::ClientContext ctx;
    Deadline(&ctx);
    grpc::Status s = bank(officer)->ProposeRecipient(&ctx, req, &resp);
    ASSERT_TRUE(s.ok()) << s.error_message();
    kv1::ReviewProposalRequest rev;
    rev.set_proposal_id(resp.proposal().proposal_id());
    rev.set_approve(true);
    rev.set_reason("carbon accounting of the city");
    kv1::ReviewProposalResponse rr;
    grpc::ClientContext ctx2;
    Deadline(&ctx2);
    s = bank(board)->ReviewProposal(&ctx2, rev, &rr);
    ASSERT_TRUE(s.ok()) << s.error_message();
  }
  Client& alice = NewClient("residents", "alice", {}, true);
  Client& bob = NewClient("residents", "bob", {}, true);
  {
    kv1::GrantConsentRequest req;
    req.set_recipient_org("carbon-office");
    req.add_purposes("carbon_accounting");
    req.add_data_categories("mobility");
    kv1::GrantConsentResponse resp;
    grpc::ClientContext ctx;
    Deadline(&ctx);
    grpc::Status s = bank(alice)->GrantConsent(&ctx, req, &resp);
    ASSERT_TRUE(s.ok()) << s.error_message();
  }
  auto ride = [](const std::string& person, const std::string& ride_id) {
    mobility::v1::TransitRide r;
    r.set_ride_id(ride_id);
    r.set_mode(mobility::v1::TRAVEL_MODE_METRO);
    r.set_operator_org("quzhou-metro");
    r.mutable_boarding_stop()->set_region("CN-ZJ-QZ-KC");
    SetTimestamp(absl::Now() - absl::Minutes(5), r.mutable_boarding_time());
    auto e = EventBuilder()
                 .Source("//quzhou.city/metro")
                 .Subject("mobility.transit.ride.quzhou")
                 .Classification(event::v1::CLASSIFICATION_PERSONAL)
                 .DataSubject(person)
                 .Jurisdiction("CN")
                 .Owner("quzhou-metro")
                 .ProtoData(r)
                 .Build();
    EXPECT_TRUE(e.ok()) << e.status();
    return *e;
  };
  // Bob's ride first, then alice's (twice: the same ticket is credited once).
  ASSERT_NO_FATAL_FAILURE(Publish({ride("bob", "r-b1")}));
  ASSERT_NO_FATAL_FAILURE(
      Publish({ride("alice", "r-a1"), ride("alice", "r-a1")}));

  cv1::ListGreenCreditsResponse credits;
  const absl::Time deadline = absl::Now() + kWait;
  grpc::Status last;
  while (absl::Now() < deadline) {
    cv1::ListGreenCreditsRequest req;
    req.set_account_id("person/alice");
    credits.Clear();
    last = Call(alice, &Stub::ListGreenCredits, req, &credits);
    if (last.ok() && credits.credits_size() >= 1) break;
    absl::SleepFor(absl::Milliseconds(20));
  }
  ASSERT_TRUE(last.ok()) << last.error_message();
  ASSERT_EQ(credits.credits_size(), 1);
  EXPECT_EQ(credits.credits(0).behaviour(), "metro_ride");
  EXPECT_NEAR(credits.credits(0).credited_g(), 52, 1e-9);
  EXPECT_FALSE(credits.credits(0).consent_id().empty());
  EXPECT_NEAR(credits.total_g(), 52, 1e-9);

  // Bob's ride (published before alice's) was never credited: no account
  // was created for him.
  {
    cv1::GetAccountRequest req;
    req.set_account_id("person/bob");
    cv1::GetAccountResponse resp;
    EXPECT_EQ(Call(*admin_c_, &Stub::GetAccount, req, &resp).error_code(),
              grpc::StatusCode::NOT_FOUND);
  }
  // A person reads only their own account.
  {
    cv1::ListGreenCreditsRequest req;
    req.set_account_id("person/alice");
    cv1::ListGreenCreditsResponse resp;
    EXPECT_EQ(Call(bob, &Stub::ListGreenCredits, req, &resp).error_code(),
              grpc::StatusCode::NOT_FOUND);
  }
  // The individual account is alice's.
  cv1::GetAccountRequest ga;
  ga.set_account_id("person/alice");
  cv1::GetAccountResponse acc;
  grpc::ClientContext ctx;
  Deadline(&ctx);
  ASSERT_TRUE(Carbon(alice)->GetAccount(&ctx, ga, &acc).ok());
  EXPECT_EQ(acc.account().kind(), cv1::ACCOUNT_KIND_INDIVIDUAL);
  EXPECT_EQ(acc.account().data_subject(), "alice");
}

// `person/<data subject>` is where the ingest books that person's credits and
// incentives: nobody else may take such an id (a person for someone else, an
// enterprise for a site, the admin for an enterprise), or that account would
// receive, and its owner read, the person's green-behaviour credits.
TEST_F(CarbonServiceTest, PersonIdsAreReservedForThatPersonsIndividualAccount) {
  Client& mallory = NewClient("residents", "mallory", {}, true);
  cv1::Account squat;
  squat.set_account_id("person/alice");
  squat.set_kind(cv1::ACCOUNT_KIND_INDIVIDUAL);
  EXPECT_EQ(Create(mallory, squat).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  cv1::Account site;
  site.set_account_id("person/alice");
  site.set_kind(cv1::ACCOUNT_KIND_SITE);
  site.set_parent_id("quzhou-steel");
  EXPECT_EQ(Create(*steel_, site).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  cv1::Account ent;
  ent.set_account_id("person/alice");
  ent.set_kind(cv1::ACCOUNT_KIND_ENTERPRISE);
  ent.set_org("quzhou-steel");
  ent.set_region("CN-ZJ-QZ-KC");
  EXPECT_EQ(Create(*admin_c_, ent).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  cv1::Account other;
  other.set_account_id("person/alice");
  other.set_kind(cv1::ACCOUNT_KIND_INDIVIDUAL);
  other.set_data_subject("bob");
  EXPECT_EQ(Create(*admin_c_, other).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  {
    cv1::GetAccountRequest req;
    req.set_account_id("person/alice");
    cv1::GetAccountResponse resp;
    EXPECT_EQ(Call(*admin_c_, &Stub::GetAccount, req, &resp).error_code(),
              grpc::StatusCode::NOT_FOUND);
  }
  // Her own id, explicit or by default, a person may take; so may the admin
  // for the matching data subject.
  cv1::Account own;
  own.set_account_id("person/mallory");
  own.set_kind(cv1::ACCOUNT_KIND_INDIVIDUAL);
  grpc::Status s = Create(mallory, own);
  EXPECT_TRUE(s.ok()) << s.error_message();
  cv1::Account alice;
  alice.set_kind(cv1::ACCOUNT_KIND_INDIVIDUAL);
  alice.set_data_subject("alice");
  cv1::CreateAccountRequest req;
  *req.mutable_account() = alice;
  cv1::CreateAccountResponse resp;
  s = Call(*admin_c_, &Stub::CreateAccount, req, &resp);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(resp.account().account_id(), "person/alice");
}

TEST_F(CarbonServiceTest, AlarmIsWatchedAndAcknowledgedByItsEnterpriseOnly) {
  const absl::Time now = absl::Now();
  const absl::Time day = DayStart(now);
  // A daily budget of 10 t for the enterprise.
  cv1::SetPlanRequest sp;
  sp.mutable_plan()->set_account_id("quzhou-steel");
  sp.mutable_plan()->set_granularity(cv1::GRANULARITY_DAY);
  SetTimestamp(day - absl::Hours(24),
               sp.mutable_plan()->mutable_valid()->mutable_start());
  SetTimestamp(day + absl::Hours(48),
               sp.mutable_plan()->mutable_valid()->mutable_end());
  sp.mutable_plan()->set_max_kg(10000);
  cv1::SetPlanResponse plan;
  {
    // Another enterprise may not budget steel's account.
    cv1::SetPlanResponse r;
    EXPECT_EQ(Call(*cement_, &Stub::SetPlan, sp, &r).error_code(),
              grpc::StatusCode::NOT_FOUND);
  }
  {
    grpc::Status s = Call(*steel_, &Stub::SetPlan, sp, &plan);
    ASSERT_TRUE(s.ok()) << s.error_message();
  }
  // The enterprise watches its alarms; the city's operators watch the bus.
  grpc::ClientContext wctx;
  Deadline(&wctx, absl::Seconds(60));
  cv1::WatchAlarmsRequest wr;
  wr.set_account_id("quzhou-steel");
  wr.set_include_open(true);
  auto watch = Carbon(*steel_)->WatchAlarms(&wctx, wr);
  watch->WaitForInitialMetadata();  // the watch is registered
  Client& ops = NewClient("city-ops", "dashboard");
  grpc::ClientContext bctx;
  Deadline(&bctx, absl::Seconds(60));
  bus::v1::SubscribeRequest br;
  br.set_subject_pattern("carbon.alarm.>");
  auto bus_sub = ops.bus->Subscribe(&bctx, br);
  bus_sub->WaitForInitialMetadata();  // the subscription is open

  // 32,000 kWh today: 17,600 kg > 10,000 kg.
  const absl::Time end = now - absl::Minutes(1);
  const absl::Time start = std::max(day, end - absl::Minutes(15));
  ASSERT_NO_FATAL_FAILURE(PublishAs(
      *grid_, {Reading("quzhou-steel/m-elec", 32000, "kWh", start, end)}));
  cv1::Alarm raised;
  ASSERT_TRUE(NextChange(watch.get(), cv1::ALARM_CHANGE_KIND_RAISED, &raised));
  EXPECT_EQ(raised.condition(), cv1::ALARM_CONDITION_ABOVE);
  EXPECT_EQ(raised.account_id(), "quzhou-steel");
  EXPECT_EQ(raised.plan_id(), plan.plan().plan_id());
  EXPECT_NEAR(raised.actual_kg(), 17600.0, 1e-6);
  EXPECT_FALSE(raised.trigger_event_id().empty());
  ASSERT_GE(raised.attributions_size(), 1);
  EXPECT_EQ(raised.attributions(0).account_id(), "quzhou-steel/site-1");

  // The alarm event on the bus, published by the carbon service.
  bus::v1::SubscribeResponse bresp;
  bool seen = false;
  while (!seen && bus_sub->Read(&bresp)) {
    for (const auto& d : bresp.deliveries()) {
      cv1::Alarm a;
      if (d.event().proto_data().UnpackTo(&a) &&
          a.alarm_id() == raised.alarm_id()) {
        seen = true;
        EXPECT_EQ(d.event().subject(), "carbon.alarm.quzhou.kecheng");
        EXPECT_THAT(d.event().publisher(),
                    HasSubstr("/org/carbon-office/svc/carbon"));
      }
    }
  }
  EXPECT_TRUE(seen);

  // Another enterprise: as if the alarm did not exist.
  cv1::AcknowledgeAlarmRequest ack;
  ack.set_alarm_id(raised.alarm_id());
  ack.set_note("furnace 2 load shed");
  {
    cv1::AcknowledgeAlarmResponse r;
    EXPECT_EQ(Call(*cement_, &Stub::AcknowledgeAlarm, ack, &r).error_code(),
              grpc::StatusCode::NOT_FOUND);
  }
  {
    cv1::ListAlarmsRequest lr;
    cv1::ListAlarmsResponse r;
    ASSERT_TRUE(Call(*cement_, &Stub::ListAlarms, lr, &r).ok());
    EXPECT_EQ(r.alarms_size(), 0);
  }
  // A viewer sees it but may not acknowledge it.
  {
    cv1::AcknowledgeAlarmResponse r;
    EXPECT_EQ(Call(*viewer_, &Stub::AcknowledgeAlarm, ack, &r).error_code(),
              grpc::StatusCode::PERMISSION_DENIED);
  }
  cv1::AcknowledgeAlarmResponse acked;
  {
    grpc::Status s = Call(*steel_, &Stub::AcknowledgeAlarm, ack, &acked);
    ASSERT_TRUE(s.ok()) << s.error_message();
  }
  EXPECT_EQ(acked.alarm().state(), cv1::ALARM_STATE_ACKNOWLEDGED);
  EXPECT_EQ(acked.alarm().acknowledge_note(), "furnace 2 load shed");
  EXPECT_EQ(acked.alarm().acknowledged_by(), steel_->spiffe_id);
  cv1::Alarm changed;
  ASSERT_TRUE(
      NextChange(watch.get(), cv1::ALARM_CHANGE_KIND_ACKNOWLEDGED, &changed));
  EXPECT_EQ(changed.alarm_id(), raised.alarm_id());
  wctx.TryCancel();
  watch->Finish();
  bctx.TryCancel();
  bus_sub->Finish();
}

TEST_F(CarbonServiceTest, WatchAlarmsEndsUnavailableWhenTheNodeDrains) {
  grpc::ClientContext wctx;
  Deadline(&wctx, absl::Seconds(60));
  cv1::WatchAlarmsRequest wr;
  wr.set_account_id("quzhou-steel");
  auto watch = Carbon(*steel_)->WatchAlarms(&wctx, wr);
  watch->WaitForInitialMetadata();  // the watch is registered
  std::thread stopper([this] { node_->Shutdown(); });
  cv1::WatchAlarmsResponse resp;
  while (watch->Read(&resp)) {
  }
  grpc::Status s = watch->Finish();
  stopper.join();
  EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAVAILABLE) << s.error_message();
}

TEST_F(CarbonServiceTest, ViewerSeesRegionsEnterprisesOnlyTheirOwnAccounts) {
  const absl::Time end = absl::Now() - absl::Minutes(1);
  const absl::Time start = end - absl::Minutes(15);
  ASSERT_NO_FATAL_FAILURE(PublishAs(
      *grid_, {Reading("quzhou-steel/m-elec", 32000, "kWh", start, end)}));
  ASSERT_NO_FATAL_FAILURE(WaitForTotal("quzhou-steel", DayStart(start),
                                       DayStart(start) + absl::Hours(24),
                                       17600.0));
  cv1::GetRegionEmissionsRequest rr;
  rr.set_region("CN-ZJ-QZ");
  rr.set_granularity(cv1::GRANULARITY_DAY);
  SetTimestamp(DayStart(start), rr.mutable_range()->mutable_start());
  SetTimestamp(DayStart(start) + absl::Hours(24),
               rr.mutable_range()->mutable_end());
  rr.set_include_subregions(true);
  cv1::GetRegionEmissionsResponse regions;
  {
    grpc::Status s = Call(*viewer_, &Stub::GetRegionEmissions, rr, &regions);
    ASSERT_TRUE(s.ok()) << s.error_message();
  }
  ASSERT_EQ(regions.regions_size(), 3);  // the city, then Kecheng and Qujiang
  EXPECT_EQ(regions.regions(0).region(), "CN-ZJ-QZ");
  EXPECT_EQ(regions.regions(0).name(), "Quzhou");
  EXPECT_NEAR(regions.regions(0).totals(0).total_kg(), 17600.0, 1e-6);
  EXPECT_EQ(regions.regions(1).region(), "CN-ZJ-QZ-KC");
  EXPECT_NEAR(regions.regions(1).totals(0).total_kg(), 17600.0, 1e-6);
  EXPECT_EQ(regions.regions(2).region(), "CN-ZJ-QZ-QJ");
  EXPECT_NEAR(regions.regions(2).totals(0).total_kg(), 0, 1e-9);
  {
    cv1::GetRegionEmissionsResponse r;
    EXPECT_EQ(Call(*steel_, &Stub::GetRegionEmissions, rr, &r).error_code(),
              grpc::StatusCode::PERMISSION_DENIED);
  }
  {
    rr.set_region("XX-NOWHERE");
    cv1::GetRegionEmissionsResponse r;
    EXPECT_EQ(Call(*viewer_, &Stub::GetRegionEmissions, rr, &r).error_code(),
              grpc::StatusCode::INVALID_ARGUMENT);
  }
  // Ranking of the city's districts by total.
  {
    cv1::GetRankingRequest req;
    req.set_subject(cv1::RANKING_SUBJECT_REGIONS);
    req.set_metric(cv1::RANKING_METRIC_TOTAL);
    req.set_region("CN-ZJ-QZ");
    SetTimestamp(DayStart(start), req.mutable_period()->mutable_start());
    SetTimestamp(DayStart(start) + absl::Hours(24),
                 req.mutable_period()->mutable_end());
    cv1::GetRankingResponse resp;
    grpc::Status s = Call(*viewer_, &Stub::GetRanking, req, &resp);
    ASSERT_TRUE(s.ok()) << s.error_message();
    ASSERT_GE(resp.entries_size(), 1);
    EXPECT_EQ(resp.entries(0).id(), "CN-ZJ-QZ-KC");
  }
  // Enterprises: their own accounts only; others' are NOT_FOUND.
  {
    cv1::ListAccountsRequest req;
    cv1::ListAccountsResponse resp;
    ASSERT_TRUE(Call(*cement_, &Stub::ListAccounts, req, &resp).ok());
    ASSERT_EQ(resp.accounts_size(), 1);
    EXPECT_EQ(resp.accounts(0).account_id(), "quzhou-cement");
  }
  {
    cv1::GetAccountRequest req;
    req.set_account_id("quzhou-steel/m-elec");
    cv1::GetAccountResponse resp;
    grpc::ClientContext ctx;
    Deadline(&ctx);
    EXPECT_EQ(Carbon(*cement_)->GetAccount(&ctx, req, &resp).error_code(),
              grpc::StatusCode::NOT_FOUND);
    grpc::ClientContext ctx2;
    Deadline(&ctx2);
    EXPECT_TRUE(Carbon(*viewer_)->GetAccount(&ctx2, req, &resp).ok());
    EXPECT_EQ(resp.account().org(), "quzhou-steel");
  }
  // Only carbon-admin creates enterprises.
  {
    cv1::Account e;
    e.set_account_id("sneaky");
    e.set_kind(cv1::ACCOUNT_KIND_ENTERPRISE);
    e.set_org("quzhou-cement");
    e.set_region("CN-ZJ-QZ-QJ");
    EXPECT_EQ(Create(*cement_, e).error_code(),
              grpc::StatusCode::PERMISSION_DENIED);
    EXPECT_EQ(Create(*viewer_, e).error_code(),
              grpc::StatusCode::PERMISSION_DENIED);
  }
}

// One reading last month and the enterprise's value added for it: the
// monthly report (JSON and CSV), then a restatement with a district factor.
class CarbonMonthTest : public CarbonServiceTest {
 protected:
  void PublishLastMonth() {
    auto [from, to] = LastMonth();
    from_ = from;
    to_ = to;
    const absl::Time start = from + absl::Hours(24 * 3);
    ASSERT_NO_FATAL_FAILURE(
        PublishAs(*grid_, {Reading("quzhou-steel/m-elec", 32000, "kWh", start,
                                   start + absl::Hours(1))}));
    ASSERT_NO_FATAL_FAILURE(WaitForTotal("quzhou-steel", from, to, 17600.0));
    // Value added 23.9 (10k CNY): K = 17.6 / 23.9 / 0.92 = 0.8004 -> level 3.
    cv1::ValueAdded va;
    va.set_account_id("quzhou-steel");
    SetTimestamp(from, va.mutable_period()->mutable_start());
    SetTimestamp(to, va.mutable_period()->mutable_end());
    va.set_value_added_10k_yuan(23.9);
    auto e = EventBuilder()
                 .Source("//quzhou.city/steel")
                 .Subject("carbon.output.quzhou.kecheng")
                 .Classification(event::v1::CLASSIFICATION_INTERNAL)
                 .Owner("quzhou-steel")
                 .Region("CN-ZJ-QZ-KC")
                 .ProtoData(va)
                 .Build();
    ASSERT_TRUE(e.ok()) << e.status();
    ASSERT_NO_FATAL_FAILURE(PublishAs(*steel_, {*e}));
    grade_ = WaitForGrade("");
  }

  // Waits for a grade of last month with this restatement id.
  cv1::Grade WaitForGrade(const std::string& restatement_id) {
    const absl::Time deadline = absl::Now() + kWait;
    cv1::GetGradeResponse resp;
    while (absl::Now() < deadline) {
      cv1::GetGradeRequest req;
      req.set_account_id("quzhou-steel");
      SetTimestamp(from_ + absl::Hours(24), req.mutable_period_time());
      resp.Clear();
      grpc::Status s = Call(*steel_, &Stub::GetGrade, req, &resp);
      if (s.ok() && resp.grade().restatement_id() == restatement_id)
        return resp.grade();
      absl::SleepFor(absl::Milliseconds(20));
    }
    ADD_FAILURE() << "no grade with restatement id \"" << restatement_id
                  << "\"";
    return resp.grade();
  }

  cv1::GetMonthlyReportResponse Report(cv1::ReportFormat f,
                                       bool as_reported = false) {
    cv1::GetMonthlyReportRequest req;
    req.set_account_id("quzhou-steel");
    absl::CivilMonth m = absl::ToCivilMonth(from_, Tz());
    req.set_year(static_cast<int>(m.year()));
    req.set_month(m.month());
    req.set_format(f);
    req.set_as_reported(as_reported);
    cv1::GetMonthlyReportResponse resp;
    grpc::Status s = Call(*steel_, &Stub::GetMonthlyReport, req, &resp);
    EXPECT_TRUE(s.ok()) << s.error_message();
    return resp;
  }

  absl::Time from_, to_;
  cv1::Grade grade_;
};

TEST_F(CarbonMonthTest, MonthlyReportParsesAsJsonAndCsv) {
  ASSERT_NO_FATAL_FAILURE(PublishLastMonth());
  EXPECT_EQ(grade_.level(), 3);
  cv1::GetMonthlyReportResponse json_report = Report(cv1::REPORT_FORMAT_JSON);
  EXPECT_EQ(json_report.content_type(), "application/json");
  EXPECT_THAT(json_report.file_name(), ::testing::EndsWith(".json"));
  nlohmann::json j =
      nlohmann::json::parse(json_report.content(), nullptr, false);
  ASSERT_FALSE(j.is_discarded()) << json_report.content();
  EXPECT_EQ(j["account_id"], "quzhou-steel");
  EXPECT_NEAR(j["totals"]["total_kg"].get<double>(), 17600.0, 1e-6);
  EXPECT_NEAR(j["totals"]["scope2_location_kg"].get<double>(), 17600.0, 1e-6);
  ASSERT_EQ(j["sites"].size(), 1u);
  EXPECT_EQ(j["sites"][0]["site_id"], "quzhou-steel/site-1");
  ASSERT_EQ(j["factors"].size(), 1u);
  EXPECT_EQ(j["factors"][0]["region"], "CN-EAST");
  EXPECT_EQ(j["grade"]["level"], 3);

  cv1::GetMonthlyReportResponse csv = Report(cv1::REPORT_FORMAT_CSV);
  EXPECT_EQ(csv.content_type(), "text/csv");
  std::vector<std::string> lines =
      absl::StrSplit(csv.content(), "\r\n", absl::SkipEmpty());
  ASSERT_EQ(lines.size(), 2u) << csv.content();
  std::vector<std::string> header = absl::StrSplit(lines[0], ',');
  std::vector<std::string> row = absl::StrSplit(lines[1], ',');
  ASSERT_EQ(header.size(), 14u);
  ASSERT_EQ(row.size(), header.size());
  std::map<std::string, std::string> cell;
  for (size_t i = 0; i < header.size(); ++i) cell[header[i]] = row[i];
  EXPECT_EQ(cell["line_id"], "quzhou-steel/site-1/line-1");
  EXPECT_EQ(cell["energy_kind"], "electricity");
  EXPECT_EQ(cell["scope"], "scope2");
  EXPECT_NEAR(std::stod(cell["activity"]), 32000, 1e-6);
  EXPECT_NEAR(std::stod(cell["emissions_kg"]), 17600.0, 1e-6);

  // The running month has not ended.
  cv1::GetMonthlyReportRequest req;
  req.set_account_id("quzhou-steel");
  absl::CivilMonth now = absl::ToCivilMonth(absl::Now(), Tz());
  req.set_year(static_cast<int>(now.year()));
  req.set_month(now.month());
  req.set_format(cv1::REPORT_FORMAT_CSV);
  cv1::GetMonthlyReportResponse r;
  grpc::ClientContext ctx;
  Deadline(&ctx);
  EXPECT_EQ(Carbon(*steel_)->GetMonthlyReport(&ctx, req, &r).error_code(),
            grpc::StatusCode::FAILED_PRECONDITION);
}

TEST_F(CarbonMonthTest, RestatementRecomputesFiguresGradeAndLoanTier) {
  ASSERT_NO_FATAL_FAILURE(PublishLastMonth());
  ASSERT_EQ(grade_.level(), 3);
  // A district factor published later for last month: 0.5306 kg/kWh.
  cv1::AddEmissionFactorRequest af;
  cv1::EmissionFactor* f = af.mutable_factor();
  f->set_kind(cv1::FACTOR_KIND_GRID);
  f->set_key("electricity");
  f->set_energy_kind(cv1::ENERGY_KIND_ELECTRICITY);
  f->set_region("CN-ZJ-QZ-KC");
  f->set_vintage("restated");
  f->set_value(0.5306);
  f->set_unit("kgCO2/kWh");
  f->set_source("test: district factor notice");
  SetTimestamp(from_, f->mutable_valid()->mutable_start());
  cv1::AddEmissionFactorResponse added;
  {
    cv1::AddEmissionFactorResponse r;
    EXPECT_EQ(Call(*steel_, &Stub::AddEmissionFactor, af, &r).error_code(),
              grpc::StatusCode::PERMISSION_DENIED);
  }
  {
    grpc::Status s = Call(*admin_c_, &Stub::AddEmissionFactor, af, &added);
    ASSERT_TRUE(s.ok()) << s.error_message();
  }
  // Existing figures keep their factor until restated.
  cv1::GetEmissionsResponse before;
  ASSERT_TRUE(Emissions(*steel_, "quzhou-steel", from_, to_, false, &before,
                        cv1::GRANULARITY_MONTH)
                  .ok());
  EXPECT_NEAR(TotalKg(before), 17600.0, 1e-6);

  cv1::RequestRestatementRequest rr;
  rr.add_account_ids("quzhou-steel");
  SetTimestamp(from_, rr.mutable_period()->mutable_start());
  SetTimestamp(to_, rr.mutable_period()->mutable_end());
  rr.set_reason("district factor notice");
  {
    cv1::RequestRestatementResponse r;
    EXPECT_EQ(Call(*steel_, &Stub::RequestRestatement, rr, &r).error_code(),
              grpc::StatusCode::PERMISSION_DENIED);
  }
  cv1::RequestRestatementResponse requested;
  {
    grpc::Status s =
        Call(*admin_c_, &Stub::RequestRestatement, rr, &requested);
    ASSERT_TRUE(s.ok()) << s.error_message();
  }
  cv1::Restatement r;
  const absl::Time deadline = absl::Now() + kWait;
  while (absl::Now() < deadline) {
    cv1::GetRestatementRequest req;
    req.set_restatement_id(requested.restatement().restatement_id());
    cv1::GetRestatementResponse resp;
    ASSERT_TRUE(Call(*admin_c_, &Stub::GetRestatement, req, &resp).ok());
    r = resp.restatement();
    if (r.state() == cv1::RESTATEMENT_STATE_DONE ||
        r.state() == cv1::RESTATEMENT_STATE_FAILED) {
      break;
    }
    absl::SleepFor(absl::Milliseconds(20));
  }
  ASSERT_EQ(r.state(), cv1::RESTATEMENT_STATE_DONE) << r.error();
  EXPECT_EQ(r.records(), 1u);
  EXPECT_NEAR(r.delta_kg(), 32000 * (0.5306 - 0.55), 1e-6);
  EXPECT_GE(r.reversals(), 1u);

  // 32,000 kWh x 0.5306 = 16,979.2 kg now; 17,600.0 kg as reported.
  cv1::GetEmissionsResponse now, reported;
  ASSERT_TRUE(Emissions(*steel_, "quzhou-steel", from_, to_, false, &now,
                        cv1::GRANULARITY_MONTH)
                  .ok());
  ASSERT_TRUE(Emissions(*steel_, "quzhou-steel", from_, to_, true, &reported,
                        cv1::GRANULARITY_MONTH)
                  .ok());
  EXPECT_NEAR(TotalKg(now), 16979.2, 1e-6);
  EXPECT_NEAR(TotalKg(reported), 17600.0, 1e-6);

  // The grade is recomputed: K = 16.9792 / 23.9 / 0.92 = 0.7722 -> level 2.
  cv1::Grade regraded = WaitForGrade(r.restatement_id());
  EXPECT_EQ(regraded.level(), 2);
  {
    cv1::GetGradeRequest req;
    req.set_account_id("quzhou-steel");
    SetTimestamp(from_ + absl::Hours(24), req.mutable_period_time());
    req.set_as_reported(true);
    cv1::GetGradeResponse resp;
    ASSERT_TRUE(Call(*steel_, &Stub::GetGrade, req, &resp).ok());
    EXPECT_EQ(resp.grade().level(), 3);
    EXPECT_TRUE(resp.grade().restatement_id().empty());
  }
  // The loan tier: standard (level 3) reversed, green-B (level 2) booked.
  cv1::GetIncentiveStatementRequest ir;
  ir.set_account_id("quzhou-steel");
  cv1::GetIncentiveStatementResponse st;
  grpc::ClientContext ctx;
  Deadline(&ctx);
  ASSERT_TRUE(Carbon(*steel_)->GetIncentiveStatement(&ctx, ir, &st).ok());
  EXPECT_EQ(st.loan_tier(), "green-B");
  bool reversal = false;
  for (const auto& e : st.entries()) {
    if (!e.reverses_entry_id().empty()) reversal = true;
  }
  EXPECT_TRUE(reversal);
  // The report as reported keeps the old figure.
  cv1::GetMonthlyReportResponse old = Report(cv1::REPORT_FORMAT_JSON, true);
  nlohmann::json j = nlohmann::json::parse(old.content(), nullptr, false);
  ASSERT_FALSE(j.is_discarded());
  EXPECT_NEAR(j["totals"]["total_kg"].get<double>(), 17600.0, 1e-6);
}

// A restart keeps the accounts and figures, and the feed resumes after the
// last reading it processed (resume.json), so nothing is counted twice and
// nothing published meanwhile is lost.
TEST_F(CarbonServiceTest, RestartResumesTheFeedFromItsLastPosition) {
  const absl::Time end = absl::Now() - absl::Minutes(20);
  const absl::Time start = end - absl::Minutes(15);
  const absl::Time from = DayStart(start) - absl::Hours(24);
  const absl::Time to = DayStart(start) + absl::Hours(48);
  ASSERT_NO_FATAL_FAILURE(PublishAs(
      *grid_, {Reading("quzhou-steel/m-elec", 1000, "kWh", start, end)}));
  ASSERT_NO_FATAL_FAILURE(WaitForTotal("quzhou-steel", from, to, 550.0));
  // The feed keeps its position per input pattern.
  const std::string path = dir_.File("data/carbon/resume.json");
  nlohmann::json resume;
  const absl::Time deadline = absl::Now() + kWait;
  while (absl::Now() < deadline) {
    std::ifstream in(path);
    std::stringstream text;
    text << in.rdbuf();
    resume = nlohmann::json::parse(text.str(), nullptr, false);
    if (!resume.is_discarded() && resume.contains("tokens") &&
        resume["tokens"].contains("carbon.meter.reading.>")) {
      break;
    }
    absl::SleepFor(absl::Milliseconds(20));
  }
  ASSERT_TRUE(resume.contains("tokens")) << resume.dump();
  EXPECT_THAT(resume["tokens"]["carbon.meter.reading.>"].get<std::string>(),
              ::testing::StartsWith("carbon-in:"));

  StopNode();
  ASSERT_NO_FATAL_FAILURE(Boot());
  // The same reading again (a meter gateway retrying) and a new one.
  ASSERT_NO_FATAL_FAILURE(PublishAs(
      *grid_, {Reading("quzhou-steel/m-elec", 1000, "kWh", start, end),
               Reading("quzhou-steel/m-elec", 2000, "kWh", end,
                       end + absl::Minutes(15))}));
  ASSERT_NO_FATAL_FAILURE(
      WaitForTotal("quzhou-steel", from, to, 550.0 + 1100.0));
  cv1::ListEmissionRecordsRequest lr;
  lr.set_account_id("quzhou-steel");
  *lr.mutable_range()->mutable_start() = ToProtoTs(from);
  *lr.mutable_range()->mutable_end() = ToProtoTs(to);
  cv1::ListEmissionRecordsResponse records;
  grpc::ClientContext ctx;
  Deadline(&ctx);
  ASSERT_TRUE(Carbon(*steel_)->ListEmissionRecords(&ctx, lr, &records).ok());
  EXPECT_EQ(records.records_size(), 2);
}

// The service's own key (issued from the node's development CA) stays 0600,
// also when an existing one is reused on restart.
TEST_F(CarbonServiceTest, ServiceKeyIsOwnerOnlyAlsoWhenReused) {
  const std::string key = dir_.File("data/carbon/identity/carbon.key");
  struct stat st;
  ASSERT_EQ(::stat(key.c_str(), &st), 0) << key;
  EXPECT_EQ(st.st_mode & 0777, 0600);
  ASSERT_EQ(::chmod(key.c_str(), 0644), 0);
  StopNode();
  ASSERT_NO_FATAL_FAILURE(Boot());
  ASSERT_EQ(::stat(key.c_str(), &st), 0) << key;
  EXPECT_EQ(st.st_mode & 0777, 0600);
  // Reused, not reissued: the service still reads its accounts.
  cv1::GetAccountRequest req;
  req.set_account_id("quzhou-steel");
  cv1::GetAccountResponse resp;
  grpc::Status s = Call(*steel_, &Stub::GetAccount, req, &resp);
  EXPECT_TRUE(s.ok()) << s.error_message();
}

// `cityosctl carbon ...` in-process, as the carbon viewer.
TEST_F(CarbonServiceTest, CityosctlCarbonCommandsPrintTablesAndJson) {
  const absl::Time end = absl::Now() - absl::Minutes(1);
  const absl::Time start = end - absl::Minutes(15);
  ASSERT_NO_FATAL_FAILURE(PublishAs(
      *grid_, {Reading("quzhou-steel/m-elec", 32000, "kWh", start, end)}));
  ASSERT_NO_FATAL_FAILURE(WaitForTotal("quzhou-steel", DayStart(start),
                                       DayStart(start) + absl::Hours(24),
                                       17600.0));
  const std::string config = dir_.File("viewer-context.yaml");
  ASSERT_TRUE(SaveClientContext(config, {.name = "viewer",
                                         .endpoint = address_,
                                         .trust_domain = "local",
                                         .ca = ca_dir_ + "/ca.pem",
                                         .cert = viewer_->cert,
                                         .key = viewer_->key,
                                         .server_id = server_id_})
                  .ok());
  auto run = [&](std::vector<std::string> args, std::string* out) {
    args.insert(args.begin(), {"cityosctl", "--config", config});
    std::vector<char*> argv;
    for (std::string& a : args) argv.push_back(a.data());
    std::ostringstream o, e;
    int rc = ctl::Run(static_cast<int>(argv.size()), argv.data(), o, e);
    *out = o.str() + e.str();
    return rc;
  };
  std::string out;
  ASSERT_EQ(run({"--json", "carbon", "accounts", "--kind", "enterprise"}, &out),
            0)
      << out;
  nlohmann::json j = nlohmann::json::parse(out, nullptr, false);
  ASSERT_FALSE(j.is_discarded()) << out;
  ASSERT_EQ(j["accounts"].size(), 2u);
  EXPECT_EQ(j["accounts"][0]["account_id"], "quzhou-cement");
  const std::string from = absl::FormatTime(absl::RFC3339_full, DayStart(start),
                                            absl::UTCTimeZone());
  const std::string to =
      absl::FormatTime(absl::RFC3339_full, DayStart(start) + absl::Hours(24),
                       absl::UTCTimeZone());
  ASSERT_EQ(run({"carbon", "emissions", "quzhou-steel", "--granularity", "day",
                 "--from", from, "--to", to},
                &out),
            0)
      << out;
  EXPECT_THAT(out, HasSubstr("TOTAL_KG"));
  EXPECT_THAT(out, HasSubstr("17600.0"));
  ASSERT_EQ(run({"carbon", "regions", "CN-ZJ-QZ", "--sub", "--from", from,
                 "--to", to},
                &out),
            0)
      << out;
  EXPECT_THAT(out, HasSubstr("CN-ZJ-QZ-KC"));
  // The record behind the figure: its factor and the event that carried it.
  ASSERT_EQ(run({"carbon", "records", "quzhou-steel", "--from", from, "--to", to}, &out), 0)
      << out;
  EXPECT_THAT(out, HasSubstr("grid/electricity/CN-EAST/2023"));
  EXPECT_THAT(out, HasSubstr("17600.000"));
  // Errors: one line, exit 1; the viewer may not add factors.
  EXPECT_EQ(run({"carbon", "factor-add", "--kind", "grid", "--key",
                 "electricity", "--region", "CN", "--vintage", "x", "--value",
                 "0.5", "--unit", "kgCO2/kWh", "--source", "t"},
                &out),
            1);
  EXPECT_THAT(out, HasSubstr("permission denied"));
  EXPECT_EQ(run({"carbon", "emissions", "quzhou-steel", "--from", "yesterday",
                 "--to", to},
                &out),
            1);
  EXPECT_THAT(out, HasSubstr("--from"));
}

// Config errors name the file, line and key.
TEST(CarbonPluginConfig, ErrorsNameFileLineAndKey) {
  struct Case {
    const char* yaml;
    const char* key;
  };
  const Case cases[] = {
      {"tick_intervall: 1s\n", "tick_intervall"},
      {"time_zone: Mars/Olympus\n", "time_zone"},
      {"regions:\n  - {code: CN-ZJ, parent: CN}\n", "regions"},
      {"factors:\n  - {kind: grid, key: electricity, region: CN, vintage: "
       "\"1\", value: 0.5,\n"
       "     unit: kgCO2/Wh, source: x}\n",
       "unit"},
      {"benchmarks:\n  - {id: b, industry: C31, version: \"1\", intensity: "
       "0}\n",
       "intensity"},
      {"exchange:\n  address: nowhere\n", "address"},
      {"incentives:\n  loan_tiers: {7: gold}\n", "7"},
      {"identity:\n  cert: /x.pem\n", "key"},
  };
  for (const Case& c : cases) {
    auto node = ConfigNode::LoadString(c.yaml, "carbon.yaml");
    ASSERT_TRUE(node.ok()) << node.status();
    auto plugin = carbon::MakeCarbonPlugin();
    absl::Status s = plugin->Configure(*node);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << c.yaml;
    EXPECT_THAT(std::string(s.message()), HasSubstr("carbon.yaml:")) << s;
    EXPECT_THAT(std::string(s.message()), HasSubstr(c.key)) << s;
  }
  auto ok = ConfigNode::LoadString(kCarbonConfig, "carbon.yaml");
  ASSERT_TRUE(ok.ok());
  EXPECT_TRUE(carbon::MakeCarbonPlugin()->Configure(*ok).ok());
}

}  // namespace
}  // namespace cityos::exchange_test

namespace cityos::carbon {

using ::testing::HasSubstr;
namespace {

// A configured private key that others may read is refused, naming the
// file and its mode; owner-only is accepted.
TEST(ServiceIdentity, ConfiguredKeyReadableByOthersIsRefused) {
  testing::TempDir dir;
  IdentityRequest r;
  r.cert = dir.path() + "/carbon.pem";
  r.key = dir.path() + "/carbon.key";
  r.ca = dir.path() + "/ca.pem";
  for (const std::string& f : {r.cert, r.key, r.ca}) std::ofstream(f) << "x";
  std::filesystem::permissions(r.key, std::filesystem::perms::owner_read |
                                          std::filesystem::perms::owner_write |
                                          std::filesystem::perms::group_read |
                                          std::filesystem::perms::others_read);
  absl::StatusOr<ServiceIdentity> id = ResolveServiceIdentity(r);
  ASSERT_FALSE(id.ok());
  EXPECT_EQ(id.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(id.status().message()), HasSubstr("carbon.key"));
  EXPECT_THAT(std::string(id.status().message()), HasSubstr("644"));
  std::filesystem::permissions(r.key, std::filesystem::perms::owner_read |
                                          std::filesystem::perms::owner_write);
  // Owner-only passes the mode check (the dummy files then fail as
  // certificates, which is another error).
  absl::StatusOr<ServiceIdentity> again = ResolveServiceIdentity(r);
  if (!again.ok()) {
    EXPECT_THAT(std::string(again.status().message()),
                ::testing::Not(HasSubstr("lets others read")));
  }
}

}  // namespace
}  // namespace cityos::carbon
