// Tests of individual green-behaviour credits (services/carbon/credits.h):
// the reference CSV and cap texts, the event -> behaviour mapping, and the
// credit ledger (consent, caps in Asia/Shanghai, dedup, listing, region
// totals, persistence).
#include "credits.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/civil_time.h"
#include "cityos/clock.h"
#include "cityos/mobility/v1/mobility.pb.h"
#include "cityos/payments/v1/payments.pb.h"
#include "cityos/proto_time.h"
#include "periods.h"
#include "testutil.h"

#ifndef CITYOS_GREEN_CREDITS_CSV
#error "CITYOS_GREEN_CREDITS_CSV must name config/carbon/green-behaviour-credits.csv"
#endif

namespace cityos::carbon {
namespace {

using ::testing::HasSubstr;
using ::testing::SizeIs;

absl::TimeZone Shanghai() {
  absl::TimeZone tz;
  EXPECT_TRUE(absl::LoadTimeZone("Asia/Shanghai", &tz));
  return tz;
}

// A local (Asia/Shanghai) wall-clock time.
absl::Time Local(int y, int mo, int d, int h, int mi = 0, int s = 0) {
  return absl::FromCivil(absl::CivilSecond(y, mo, d, h, mi, s), Shanghai());
}

const CreditRule* Find(const std::vector<CreditRule>& rules, std::string_view behaviour) {
  for (const CreditRule& r : rules) {
    if (r.behaviour == behaviour) return &r;
  }
  return nullptr;
}

std::vector<CreditRule> AntForest() {
  absl::StatusOr<std::vector<CreditRule>> r = ParseCreditRulesCsv(CITYOS_GREEN_CREDITS_CSV, "ant_forest");
  EXPECT_TRUE(r.ok()) << r.status();
  return r.ok() ? *r : std::vector<CreditRule>{};
}

Behaviour Action(std::string behaviour, std::string txn, absl::Time t) {
  Behaviour b;
  b.behaviour = std::move(behaviour);
  b.quantity = 1;
  b.unit = DefaultUnitForBehaviour(b.behaviour);
  b.txn_id = std::move(txn);
  b.time = t;
  b.region = "CN-ZJ-QZ-KC";
  return b;
}

Behaviour Walk(std::string txn, double km, absl::Time t) {
  Behaviour b = Action("walking_day", std::move(txn), t);
  b.quantity = km;
  b.unit = "km";
  return b;
}

Behaviour Payment(std::string txn, int64_t minor, absl::Time t, std::string currency = "CNY") {
  Behaviour b = Action("offline_payment", std::move(txn), t);
  b.amount_minor = minor;
  b.currency = std::move(currency);
  return b;
}

Behaviour Bill(std::string txn, std::string account_ref, absl::Time t) {
  Behaviour b = Action("utility_bill_payment", std::move(txn), t);
  b.account_ref = std::move(account_ref);
  b.amount_minor = 12000;
  b.currency = "CNY";
  return b;
}

class CreditLedgerTest : public ::testing::Test {
 protected:
  void SetUp() override { Reopen(); }
  void Reopen() {
    ledger_.reset();
    auto l = CreditLedger::Open(dir_.File("credits.db"), AntForest(), Shanghai(), &clock_);
    ASSERT_TRUE(l.ok()) << l.status();
    ledger_ = *std::move(l);
  }
  // Credits and expects a recorded credit.
  v1::GreenCredit Must(const Behaviour& b, const std::string& account = "person/p1") {
    auto c = ledger_->Credit(account, b, "consent-1", "ev-" + b.txn_id);
    EXPECT_TRUE(c.ok()) << c.status();
    if (!c.ok() || !c->has_value()) {
      ADD_FAILURE() << "no credit recorded for " << b.txn_id;
      return {};
    }
    return **c;
  }
  v1::ListGreenCreditsResponse ListAll(const std::string& account = "person/p1") {
    v1::ListGreenCreditsRequest r;
    r.set_account_id(account);
    r.set_page_size(1000);
    auto out = ledger_->List(r);
    EXPECT_TRUE(out.ok()) << out.status();
    return out.ok() ? *out : v1::ListGreenCreditsResponse{};
  }

  testing::TempDir dir_;
  SimulatedClock clock_{absl::FromCivil(absl::CivilSecond(2026, 12, 1, 0, 0, 0), absl::UTCTimeZone())};
  std::unique_ptr<CreditLedger> ledger_;
};

// ---------------------------------------------------------------------------
// Rules.

TEST(CreditRulesCsv, ParsesTheReferenceFile) {
  auto all = ParseCreditRulesCsv(CITYOS_GREEN_CREDITS_CSV, "");
  ASSERT_TRUE(all.ok()) << all.status();  // a missing file fails here
  EXPECT_THAT(*all, SizeIs(9));

  std::vector<CreditRule> ant = AntForest();
  ASSERT_THAT(ant, SizeIs(7));
  const CreditRule* walk = Find(ant, "walking_day");
  ASSERT_NE(walk, nullptr);
  EXPECT_EQ(walk->id, "ant_forest:walking_day");
  EXPECT_EQ(walk->grams_per_unit, 296);
  EXPECT_EQ(walk->unit, "day");
  EXPECT_EQ(walk->max_grams_per_day, 296);
  EXPECT_EQ(walk->max_per_day, 0);

  const CreditRule* pay = Find(ant, "offline_payment");
  ASSERT_NE(pay, nullptr);
  EXPECT_EQ(pay->grams_per_unit, 5);
  EXPECT_EQ(pay->unit, "payment");
  EXPECT_EQ(pay->max_per_day, 10);
  EXPECT_EQ(pay->min_amount_minor, 100);
  EXPECT_EQ(pay->min_amount_currency, "CNY");

  const CreditRule* bill = Find(ant, "utility_bill_payment");
  ASSERT_NE(bill, nullptr);
  EXPECT_EQ(bill->grams_per_unit, 262);
  EXPECT_EQ(bill->max_per_month, 10);
  EXPECT_TRUE(bill->per_account_ref_per_month);
  EXPECT_EQ(bill->max_per_day, 0);

  const CreditRule* metro = Find(ant, "metro_ride");
  ASSERT_NE(metro, nullptr);
  EXPECT_EQ(metro->grams_per_unit, 52);
  EXPECT_EQ(metro->unit, "ride");
  EXPECT_EQ(metro->max_per_day, 5);

  const CreditRule* bus = Find(ant, "bus_ride");
  ASSERT_NE(bus, nullptr);
  EXPECT_EQ(bus->grams_per_unit, 80);
  EXPECT_EQ(bus->max_per_day, 0);
  EXPECT_EQ(bus->max_per_month, 0);
  EXPECT_EQ(bus->max_grams_per_day, 0);

  const CreditRule* inv = Find(ant, "e_invoice");
  ASSERT_NE(inv, nullptr);
  EXPECT_EQ(inv->max_per_day, 5);
  EXPECT_EQ(inv->unit, "invoice");

  const CreditRule* reg = Find(ant, "hospital_registration_online");
  ASSERT_NE(reg, nullptr);
  EXPECT_EQ(reg->grams_per_unit, 277);
  EXPECT_EQ(reg->max_per_month, 5);
  EXPECT_EQ(reg->unit, "registration");

  auto wuhan = ParseCreditRulesCsv(CITYOS_GREEN_CREDITS_CSV, "wuhan_wutan");
  ASSERT_TRUE(wuhan.ok()) << wuhan.status();
  ASSERT_THAT(*wuhan, SizeIs(2));
  const CreditRule* cycling = Find(*wuhan, "cycling_km");
  ASSERT_NE(cycling, nullptr);
  EXPECT_EQ(cycling->unit, "km");
  EXPECT_EQ(cycling->grams_per_unit, 40);
  EXPECT_THAT(cycling->source, HasSubstr("People's Daily"));
  EXPECT_EQ(Find(*wuhan, "metro_ride")->grams_per_unit, 170);
}

TEST(CreditRulesCsv, MissingFileAndUnknownScheme) {
  testing::TempDir dir;
  auto missing = ParseCreditRulesCsv(dir.File("nope.csv"), "ant_forest");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(missing.status().message(), HasSubstr("nope.csv"));

  auto unknown = ParseCreditRulesCsv(CITYOS_GREEN_CREDITS_CSV, "no_such_scheme");
  EXPECT_EQ(unknown.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(unknown.status().message(), HasSubstr("no_such_scheme"));
}

TEST(CreditRulesCsv, UnparseableCapNamesFileLineAndText) {
  testing::TempDir dir;
  const std::string path = dir.File("rules.csv");
  testing::WriteFile(path,
                     "# scheme,behaviour,grams_co2_per_action,cap,source\n"
                     "s,metro_ride,52,5 per day,x\n"
                     "s,bus_ride,80,3 per fortnight,x\n");
  auto r = ParseCreditRulesCsv(path, "s");
  ASSERT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(r.status().message(), HasSubstr(path + ":3"));
  EXPECT_THAT(r.status().message(), HasSubstr("3 per fortnight"));

  // Every other malformed cap is refused too, naming the line and the text.
  for (const std::string cap : {"ten per day", "5 per day; 6 per day", "5 per day (payment > 1 yuan)",
                                "296 g per week", "0 per day", "5 per day (payment >= 1.234 yuan)",
                                "one per account per month"}) {
    testing::WriteFile(path, absl::StrCat("s,x_ride,10,\"", cap, "\",src\n"));
    auto bad = ParseCreditRulesCsv(path, "s");
    EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument) << cap;
    EXPECT_THAT(bad.status().message(), HasSubstr(path + ":1")) << cap;
    EXPECT_THAT(bad.status().message(), HasSubstr(cap)) << cap;
  }

  testing::WriteFile(path, "s,metro_ride,fifty,,x\n");
  auto grams = ParseCreditRulesCsv(path, "s");
  EXPECT_EQ(grams.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(grams.status().message(), HasSubstr("fifty"));

  testing::WriteFile(path, "s,metro_ride,52,5 per day\n");
  auto columns = ParseCreditRulesCsv(path, "s");
  EXPECT_EQ(columns.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(columns.status().message(), HasSubstr(path + ":1"));
}

TEST(CreditCap, ParsesEveryForm) {
  CreditRule r;
  ASSERT_TRUE(ParseCreditCap("  ", &r).ok());
  EXPECT_EQ(r.max_per_day + r.max_per_month + r.min_amount_minor, 0);

  CreditRule a;
  ASSERT_TRUE(ParseCreditCap("296 g per day", &a).ok());
  EXPECT_EQ(a.max_grams_per_day, 296);

  CreditRule b;
  ASSERT_TRUE(ParseCreditCap("10 per day (payment >= 1.5 yuan)", &b).ok());
  EXPECT_EQ(b.max_per_day, 10);
  EXPECT_EQ(b.min_amount_minor, 150);

  CreditRule c;
  ASSERT_TRUE(ParseCreditCap("10 per month; one per account number per month", &c).ok());
  EXPECT_EQ(c.max_per_month, 10);
  EXPECT_TRUE(c.per_account_ref_per_month);

  CreditRule d;
  ASSERT_TRUE(ParseCreditCap("5 Per Month; 1000 g per month", &d).ok());
  EXPECT_EQ(d.max_per_month, 5);
  EXPECT_EQ(d.max_grams_per_month, 1000);
}

// ---------------------------------------------------------------------------
// Events -> behaviours.

event::v1::Event EventOf(const google::protobuf::Message& payload, std::string region = "") {
  event::v1::Event e;
  e.set_id("ev-1");
  e.set_type(std::string(payload.GetDescriptor()->full_name()));
  e.set_data_subject("p1");
  e.set_region(std::move(region));
  TimestampToProto(absl::FromUnixSeconds(1767225600), e.mutable_time());
  e.mutable_proto_data()->PackFrom(payload);
  return e;
}

TEST(BehaviourFromEvent, TripsWalkingAndCyclingOnly) {
  mobility::v1::Trip trip;
  trip.set_trip_id("t-1");
  trip.set_provider("qz-app");
  trip.set_mode(mobility::v1::TRAVEL_MODE_WALK);
  trip.set_distance_m(2500);
  TimestampToProto(absl::FromUnixSeconds(1767230000), trip.mutable_end_time());
  trip.mutable_origin()->set_region("CN-ZJ-QZ-KC");
  auto b = BehaviourFromEvent(EventOf(trip, "CN-ZJ-QZ"));
  ASSERT_TRUE(b.ok()) << b.status();
  ASSERT_TRUE(b->has_value());
  EXPECT_EQ((*b)->behaviour, "walking_day");
  EXPECT_DOUBLE_EQ((*b)->quantity, 2.5);
  EXPECT_EQ((*b)->unit, "km");
  EXPECT_EQ((*b)->txn_id, "t-1");
  EXPECT_EQ((*b)->dedup_key, "qz-app/t-1");
  EXPECT_EQ((*b)->time, absl::FromUnixSeconds(1767230000));
  EXPECT_EQ((*b)->region, "CN-ZJ-QZ-KC");  // the origin's region wins over the event's

  trip.set_mode(mobility::v1::TRAVEL_MODE_BICYCLE);
  trip.clear_origin();
  b = BehaviourFromEvent(EventOf(trip, "CN-ZJ-QZ"));
  ASSERT_TRUE(b.ok() && b->has_value());
  EXPECT_EQ((*b)->behaviour, "cycling_km");
  EXPECT_EQ((*b)->region, "CN-ZJ-QZ");  // no place: the event's region

  for (auto mode : {mobility::v1::TRAVEL_MODE_METRO, mobility::v1::TRAVEL_MODE_BUS,
                    mobility::v1::TRAVEL_MODE_CAR, mobility::v1::TRAVEL_MODE_E_BIKE}) {
    trip.set_mode(mode);
    b = BehaviourFromEvent(EventOf(trip));
    ASSERT_TRUE(b.ok()) << b.status();
    EXPECT_FALSE(b->has_value()) << mobility::v1::TravelMode_Name(mode);
  }

  trip.set_mode(mobility::v1::TRAVEL_MODE_WALK);
  trip.set_distance_m(-3);
  b = BehaviourFromEvent(EventOf(trip));
  EXPECT_EQ(b.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(b.status().message(), HasSubstr("distance_m"));

  trip.set_distance_m(100);
  trip.clear_trip_id();
  b = BehaviourFromEvent(EventOf(trip));
  EXPECT_EQ(b.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(b.status().message(), HasSubstr("trip_id"));
}

TEST(BehaviourFromEvent, TransitRides) {
  mobility::v1::TransitRide ride;
  ride.set_ride_id("r-9");
  ride.set_operator_org("qz-metro");
  ride.set_mode(mobility::v1::TRAVEL_MODE_METRO);
  ride.mutable_boarding_stop()->set_region("CN-ZJ-QZ-QJ");
  TimestampToProto(absl::FromUnixSeconds(1767240000), ride.mutable_boarding_time());
  auto b = BehaviourFromEvent(EventOf(ride, "CN-ZJ-QZ"));
  ASSERT_TRUE(b.ok() && b->has_value()) << b.status();
  EXPECT_EQ((*b)->behaviour, "metro_ride");
  EXPECT_EQ((*b)->quantity, 1);
  EXPECT_EQ((*b)->unit, "ride");
  EXPECT_EQ((*b)->region, "CN-ZJ-QZ-QJ");
  EXPECT_EQ((*b)->time, absl::FromUnixSeconds(1767240000));

  ride.set_mode(mobility::v1::TRAVEL_MODE_BUS);
  b = BehaviourFromEvent(EventOf(ride));
  ASSERT_TRUE(b.ok() && b->has_value());
  EXPECT_EQ((*b)->behaviour, "bus_ride");

  ride.set_mode(mobility::v1::TRAVEL_MODE_TAXI);
  b = BehaviourFromEvent(EventOf(ride));
  ASSERT_TRUE(b.ok());
  EXPECT_FALSE(b->has_value());
}

TEST(BehaviourFromEvent, PaymentsAndInvoices) {
  payments::v1::GreenPayment p;
  p.set_payment_id("pay-1");
  p.set_provider("alipay");
  p.set_green_kind(payments::v1::GREEN_KIND_OFFLINE_PAYMENT);
  p.mutable_amount()->set_currency_code("CNY");
  p.mutable_amount()->set_amount_minor(250);
  auto b = BehaviourFromEvent(EventOf(p, "CN-ZJ-QZ-KC"));
  ASSERT_TRUE(b.ok() && b->has_value()) << b.status();
  EXPECT_EQ((*b)->behaviour, "offline_payment");
  EXPECT_EQ((*b)->amount_minor, 250);
  EXPECT_EQ((*b)->currency, "CNY");
  EXPECT_EQ((*b)->region, "CN-ZJ-QZ-KC");
  EXPECT_EQ((*b)->time, absl::FromUnixSeconds(1767225600));  // no payment time: the event's

  p.set_green_kind(payments::v1::GREEN_KIND_UTILITY_BILL);
  b = BehaviourFromEvent(EventOf(p));
  EXPECT_EQ(b.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(b.status().message(), HasSubstr("utility_account_ref"));
  p.set_utility_account_ref("acct-77");
  b = BehaviourFromEvent(EventOf(p));
  ASSERT_TRUE(b.ok() && b->has_value());
  EXPECT_EQ((*b)->behaviour, "utility_bill_payment");
  EXPECT_EQ((*b)->account_ref, "acct-77");

  p.set_green_kind(payments::v1::GREEN_KIND_ONLINE_REGISTRATION);
  b = BehaviourFromEvent(EventOf(p));
  ASSERT_TRUE(b.ok() && b->has_value());
  EXPECT_EQ((*b)->behaviour, "hospital_registration_online");

  p.set_green_kind(payments::v1::GREEN_KIND_E_TICKET);
  b = BehaviourFromEvent(EventOf(p));
  ASSERT_TRUE(b.ok() && b->has_value());
  EXPECT_EQ((*b)->behaviour, "e_ticket");

  // An e-invoice as a GreenPayment and as an EInvoice for the same payment
  // have the same dedup key.
  p.set_green_kind(payments::v1::GREEN_KIND_E_INVOICE);
  b = BehaviourFromEvent(EventOf(p));
  ASSERT_TRUE(b.ok() && b->has_value());
  EXPECT_EQ((*b)->behaviour, "e_invoice");
  payments::v1::EInvoice inv;
  inv.set_invoice_id("inv-3");
  inv.set_seller_tax_id("91330800");
  inv.set_payment_id("pay-1");
  auto bi = BehaviourFromEvent(EventOf(inv));
  ASSERT_TRUE(bi.ok() && bi->has_value()) << bi.status();
  EXPECT_EQ((*bi)->behaviour, "e_invoice");
  EXPECT_EQ((*bi)->txn_id, "inv-3");
  EXPECT_EQ((*bi)->dedup_key, (*b)->dedup_key);
  inv.clear_payment_id();
  bi = BehaviourFromEvent(EventOf(inv));
  ASSERT_TRUE(bi.ok() && bi->has_value());
  EXPECT_NE((*bi)->dedup_key, (*b)->dedup_key);

  p.set_green_kind(payments::v1::GREEN_KIND_UNSPECIFIED);
  b = BehaviourFromEvent(EventOf(p));
  ASSERT_TRUE(b.ok());
  EXPECT_FALSE(b->has_value());
}

TEST(BehaviourFromEvent, OtherPayloadsAreNotBehaviours) {
  mobility::v1::TrafficCount count;
  count.set_sensor_id("loop-1");
  auto b = BehaviourFromEvent(EventOf(count));
  ASSERT_TRUE(b.ok());
  EXPECT_FALSE(b->has_value());

  event::v1::Event text;
  text.set_id("ev-2");
  text.set_type("cityos.mobility.v1.Trip");
  text.set_text_data("{}");
  b = BehaviourFromEvent(text);
  EXPECT_EQ(b.status().code(), absl::StatusCode::kInvalidArgument);

  event::v1::Event garbage = EventOf(count);
  garbage.mutable_proto_data()->set_type_url("type.googleapis.com/cityos.mobility.v1.Trip");
  garbage.mutable_proto_data()->set_value("\xff\xff\xff");
  b = BehaviourFromEvent(garbage);
  EXPECT_EQ(b.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(b.status().message(), HasSubstr("cityos.mobility.v1.Trip"));
}

// ---------------------------------------------------------------------------
// The ledger.

TEST_F(CreditLedgerTest, ConsentIsRequired) {
  auto none = ledger_->Credit("person/p1", Action("metro_ride", "r1", Local(2026, 1, 5, 8)), "", "ev-1");
  EXPECT_EQ(none.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(none.status().message(), HasSubstr("consent_id"));
  EXPECT_EQ(ListAll().credits_size(), 0);

  // The same transaction with consent is credited (nothing was recorded before).
  v1::GreenCredit c = Must(Action("metro_ride", "r1", Local(2026, 1, 5, 8)));
  EXPECT_EQ(c.credited_g(), 52);
  EXPECT_FALSE(c.capped());
  EXPECT_EQ(c.consent_id(), "consent-1");
  EXPECT_EQ(c.scheme(), "ant_forest");
  EXPECT_EQ(c.rule_id(), "ant_forest:metro_ride");
  EXPECT_EQ(c.source_transaction_id(), "r1");
  EXPECT_EQ(c.source_event_id(), "ev-r1");
  EXPECT_EQ(c.quantity_unit(), "ride");
  EXPECT_FALSE(c.credit_id().empty());
  EXPECT_EQ(ListAll().credits_size(), 1);
}

TEST_F(CreditLedgerTest, MetroFivePerDay) {
  for (int i = 1; i <= 6; ++i) {
    v1::GreenCredit c = Must(Action("metro_ride", absl::StrCat("m", i), Local(2026, 1, 5, 7 + i)));
    if (i <= 5) {
      EXPECT_EQ(c.credited_g(), 52) << i;
      EXPECT_FALSE(c.capped()) << i;
    } else {
      EXPECT_EQ(c.credited_g(), 0);
      EXPECT_TRUE(c.capped());
    }
  }
  // The next day (Shanghai) starts afresh: 2026-01-06 00:10 local.
  v1::GreenCredit next = Must(Action("metro_ride", "m7", Local(2026, 1, 6, 0, 10)));
  EXPECT_EQ(next.credited_g(), 52);
  EXPECT_FALSE(next.capped());
  // Bus rides have no cap.
  for (int i = 1; i <= 8; ++i) {
    EXPECT_EQ(Must(Action("bus_ride", absl::StrCat("b", i), Local(2026, 1, 5, 9))).credited_g(), 80);
  }
  EXPECT_DOUBLE_EQ(ListAll().total_g(), 6 * 52 + 8 * 80);
}

TEST_F(CreditLedgerTest, WalkingEarns296GramsOncePerDay) {
  // Default threshold 3 km: 1.2 km (not yet), 2.0 km (reaches 3.2 km: 296 g), 1 km (capped).
  v1::GreenCredit a = Must(Walk("w1", 1.2, Local(2026, 1, 5, 8)));
  EXPECT_EQ(a.credited_g(), 0);
  EXPECT_FALSE(a.capped());
  EXPECT_EQ(a.quantity_unit(), "km");
  EXPECT_DOUBLE_EQ(a.quantity(), 1.2);
  v1::GreenCredit b = Must(Walk("w2", 2.0, Local(2026, 1, 5, 12)));
  EXPECT_EQ(b.credited_g(), 296);
  EXPECT_FALSE(b.capped());
  v1::GreenCredit c = Must(Walk("w3", 1.0, Local(2026, 1, 5, 18)));
  EXPECT_EQ(c.credited_g(), 0);
  EXPECT_TRUE(c.capped());
  // A long walk the next day earns once.
  EXPECT_EQ(Must(Walk("w4", 8.0, Local(2026, 1, 6, 7))).credited_g(), 296);
  EXPECT_TRUE(Must(Walk("w5", 8.0, Local(2026, 1, 6, 9))).capped());

  v1::ListGreenCreditsRequest r;
  r.set_account_id("person/p1");
  TimestampToProto(Local(2026, 1, 5, 0), r.mutable_range()->mutable_start());
  TimestampToProto(Local(2026, 1, 6, 0), r.mutable_range()->mutable_end());
  auto day = ledger_->List(r);
  ASSERT_TRUE(day.ok()) << day.status();
  EXPECT_EQ(day->credits_size(), 3);
  EXPECT_DOUBLE_EQ(day->total_g(), 296);

  // A km unit on a per-action rule (or an action unit on the walking rule) is refused.
  Behaviour wrong = Walk("w6", 1, Local(2026, 1, 7, 7));
  wrong.unit = "step";
  auto bad = ledger_->Credit("person/p1", wrong, "consent-1", "ev");
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(bad.status().message(), HasSubstr("step"));
}

TEST_F(CreditLedgerTest, OfflinePaymentBelowOneYuanIsNotCredited) {
  v1::GreenCredit low = Must(Payment("p1", 99, Local(2026, 1, 5, 9)));
  EXPECT_EQ(low.credited_g(), 0);
  EXPECT_TRUE(low.capped());
  v1::GreenCredit foreign = Must(Payment("p2", 500, Local(2026, 1, 5, 9), "USD"));
  EXPECT_EQ(foreign.credited_g(), 0);
  v1::GreenCredit ok = Must(Payment("p3", 100, Local(2026, 1, 5, 9)));
  EXPECT_EQ(ok.credited_g(), 5);
  EXPECT_FALSE(ok.capped());
  // Non-qualifying payments do not use up the 10 per day: 9 more are credited, the 11th capped.
  for (int i = 4; i <= 12; ++i) {
    EXPECT_EQ(Must(Payment(absl::StrCat("p", i), 1000, Local(2026, 1, 5, 10))).credited_g(), 5) << i;
  }
  v1::GreenCredit over = Must(Payment("p13", 1000, Local(2026, 1, 5, 11)));
  EXPECT_EQ(over.credited_g(), 0);
  EXPECT_TRUE(over.capped());
  EXPECT_DOUBLE_EQ(ListAll().total_g(), 50);
}

TEST_F(CreditLedgerTest, UtilityBillOncePerAccountNumberPerMonth) {
  EXPECT_EQ(Must(Bill("u1", "acct-A", Local(2026, 1, 3, 9))).credited_g(), 262);
  v1::GreenCredit again = Must(Bill("u2", "acct-A", Local(2026, 1, 20, 9)));
  EXPECT_EQ(again.credited_g(), 0);
  EXPECT_TRUE(again.capped());
  EXPECT_EQ(Must(Bill("u3", "acct-B", Local(2026, 1, 20, 9))).credited_g(), 262);
  EXPECT_EQ(Must(Bill("u4", "acct-A", Local(2026, 2, 1, 9))).credited_g(), 262);

  Behaviour no_ref = Bill("u5", "", Local(2026, 2, 2, 9));
  auto bad = ledger_->Credit("person/p1", no_ref, "consent-1", "ev");
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(bad.status().message(), HasSubstr("account_ref"));
}

TEST_F(CreditLedgerTest, MonthlyCapUsesShanghaiMonths) {
  // 5 online registrations per month. 2026-01-31 23:30 Shanghai is 15:30 UTC;
  // 2026-02-01 00:30 Shanghai is still 2026-01-31 16:30 UTC.
  for (int i = 1; i <= 4; ++i) {
    EXPECT_EQ(Must(Action("hospital_registration_online", absl::StrCat("h", i), Local(2026, 1, 10 + i, 9)))
                  .credited_g(), 277);
  }
  const absl::Time jan_end = Local(2026, 1, 31, 23, 30);
  const absl::Time feb_start = Local(2026, 2, 1, 0, 30);
  ASSERT_EQ(absl::ToCivilMonth(feb_start, absl::UTCTimeZone()), absl::CivilMonth(2026, 1));
  EXPECT_EQ(Must(Action("hospital_registration_online", "h5", jan_end)).credited_g(), 277);
  // Same UTC month, but February in Shanghai: credited.
  v1::GreenCredit feb = Must(Action("hospital_registration_online", "h6", feb_start));
  EXPECT_EQ(feb.credited_g(), 277);
  EXPECT_FALSE(feb.capped());
  // Late delivery of a January registration: over the cap.
  v1::GreenCredit late = Must(Action("hospital_registration_online", "h7", Local(2026, 1, 2, 9)));
  EXPECT_EQ(late.credited_g(), 0);
  EXPECT_TRUE(late.capped());
  // Other people have their own caps.
  EXPECT_EQ(Must(Action("hospital_registration_online", "h8", jan_end), "person/p2").credited_g(), 277);
}

TEST_F(CreditLedgerTest, DedupByTransactionId) {
  ASSERT_EQ(Must(Action("metro_ride", "same", Local(2026, 1, 5, 8))).credited_g(), 52);
  auto again = ledger_->Credit("person/p1", Action("metro_ride", "same", Local(2026, 1, 5, 8)),
                               "consent-1", "ev-redelivered");
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_FALSE(again->has_value());
  EXPECT_EQ(ListAll().credits_size(), 1);
  EXPECT_DOUBLE_EQ(ListAll().total_g(), 52);

  // The same id of another behaviour is another transaction.
  EXPECT_EQ(Must(Action("bus_ride", "same", Local(2026, 1, 5, 9))).credited_g(), 80);

  // The same transaction for another person is refused.
  auto other = ledger_->Credit("person/p2", Action("metro_ride", "same", Local(2026, 1, 5, 8)),
                               "consent-2", "ev-x");
  EXPECT_EQ(other.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(ListAll("person/p2").credits_size(), 0);

  // One e-invoice, delivered as GreenPayment(E_INVOICE) and as EInvoice: one credit.
  Behaviour as_payment = Action("e_invoice", "pay-9", Local(2026, 1, 5, 10));
  as_payment.dedup_key = "payment/pay-9";
  Behaviour as_invoice = Action("e_invoice", "inv-9", Local(2026, 1, 5, 10));
  as_invoice.dedup_key = "payment/pay-9";
  EXPECT_EQ(Must(as_payment).credited_g(), 5);
  auto dup = ledger_->Credit("person/p1", as_invoice, "consent-1", "ev-inv");
  ASSERT_TRUE(dup.ok());
  EXPECT_FALSE(dup->has_value());
}

TEST_F(CreditLedgerTest, BehaviourWithoutRuleRecordsNothing) {
  EXPECT_FALSE(ledger_->HasRule("e_ticket"));
  EXPECT_TRUE(ledger_->HasRule("metro_ride"));
  auto r = ledger_->Credit("person/p1", Action("e_ticket", "t1", Local(2026, 1, 5, 8)), "consent-1", "ev");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_FALSE(r->has_value());
  EXPECT_EQ(ListAll().credits_size(), 0);
}

TEST_F(CreditLedgerTest, ListNewestFirstWithPagesAndTotal) {
  for (int i = 0; i < 7; ++i) Must(Action("bus_ride", absl::StrCat("b", i), Local(2026, 1, 1 + i, 9)));
  // Without a range end the list ends now: a credit for later behaviour is not listed.
  Must(Action("bus_ride", "future", Local(2026, 12, 31, 9)));
  v1::ListGreenCreditsRequest r;
  r.set_account_id("person/p1");
  r.set_page_size(3);
  std::vector<std::string> seen;
  for (int page = 0; page < 5; ++page) {
    auto out = ledger_->List(r);
    ASSERT_TRUE(out.ok()) << out.status();
    EXPECT_DOUBLE_EQ(out->total_g(), 7 * 80);
    for (const auto& c : out->credits()) seen.push_back(c.source_transaction_id());
    if (out->next_page_token().empty()) break;
    r.set_page_token(out->next_page_token());
  }
  EXPECT_EQ(seen, (std::vector<std::string>{"b6", "b5", "b4", "b3", "b2", "b1", "b0"}));

  // Range [Jan 3, Jan 5) local: b2, b3.
  v1::ListGreenCreditsRequest ranged;
  ranged.set_account_id("person/p1");
  TimestampToProto(Local(2026, 1, 3, 0), ranged.mutable_range()->mutable_start());
  TimestampToProto(Local(2026, 1, 5, 0), ranged.mutable_range()->mutable_end());
  auto out = ledger_->List(ranged);
  ASSERT_TRUE(out.ok());
  ASSERT_EQ(out->credits_size(), 2);
  EXPECT_EQ(out->credits(0).source_transaction_id(), "b3");
  EXPECT_DOUBLE_EQ(out->total_g(), 160);

  v1::ListGreenCreditsRequest bad;
  bad.set_account_id("person/p1");
  bad.set_page_token("nonsense");
  EXPECT_EQ(ledger_->List(bad).status().code(), absl::StatusCode::kInvalidArgument);
  bad.clear_page_token();
  bad.set_page_size(1001);
  EXPECT_EQ(ledger_->List(bad).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ledger_->List(v1::ListGreenCreditsRequest()).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(CreditLedgerTest, RegionTotalsIncludeSubRegions) {
  auto tree = RegionTree::Create({{"CN", "China", "", "", "cn"},
                                  {"CN-ZJ", "Zhejiang", "CN", "CN-EAST", "zhejiang"},
                                  {"CN-ZJ-QZ", "Quzhou", "CN-ZJ", "", "quzhou"},
                                  {"CN-ZJ-QZ-KC", "Kecheng", "CN-ZJ-QZ", "", "kecheng"},
                                  {"CN-ZJ-QZ-QJ", "Qujiang", "CN-ZJ-QZ", "", "qujiang"}});
  ASSERT_TRUE(tree.ok()) << tree.status();
  Behaviour kc = Action("bus_ride", "b1", Local(2026, 1, 5, 9));
  Behaviour qj = Action("metro_ride", "m1", Local(2026, 1, 5, 9));
  qj.region = "CN-ZJ-QZ-QJ";
  Behaviour none = Action("bus_ride", "b2", Local(2026, 1, 5, 9));
  none.region = "";
  Behaviour later = Action("bus_ride", "b3", Local(2026, 3, 5, 9));
  Must(kc);
  Must(qj, "person/p2");
  Must(none);
  Must(later);
  const absl::Time from = Local(2026, 1, 1, 0), to = Local(2026, 2, 1, 0);
  EXPECT_DOUBLE_EQ(ledger_->RegionTotalG(*tree, "CN-ZJ-QZ", from, to), 80 + 52);
  EXPECT_DOUBLE_EQ(ledger_->RegionTotalG(*tree, "CN", from, to), 80 + 52);
  EXPECT_DOUBLE_EQ(ledger_->RegionTotalG(*tree, "CN-ZJ-QZ-KC", from, to), 80);
  EXPECT_DOUBLE_EQ(ledger_->RegionTotalG(*tree, "CN-ZJ-QZ-QJ", from, to), 52);
  EXPECT_DOUBLE_EQ(ledger_->RegionTotalG(*tree, "CN-ZJ-QZ", from, absl::InfiniteFuture()),
                   80 + 52 + 80);
  EXPECT_DOUBLE_EQ(ledger_->AccountTotalG("person/p1", from, to), 80 + 80);
}

TEST_F(CreditLedgerTest, PersistsAcrossReopen) {
  for (int i = 1; i <= 5; ++i) Must(Action("metro_ride", absl::StrCat("m", i), Local(2026, 1, 5, 8)));
  Reopen();
  ASSERT_EQ(ListAll().credits_size(), 5);
  EXPECT_DOUBLE_EQ(ListAll().total_g(), 260);
  // Dedup and caps still see what was recorded before.
  auto dup = ledger_->Credit("person/p1", Action("metro_ride", "m3", Local(2026, 1, 5, 8)),
                             "consent-1", "ev");
  ASSERT_TRUE(dup.ok());
  EXPECT_FALSE(dup->has_value());
  EXPECT_TRUE(Must(Action("metro_ride", "m6", Local(2026, 1, 5, 20))).capped());
}

TEST(CreditLedgerOpen, RejectsBadRules) {
  testing::TempDir dir;
  SimulatedClock clock;
  std::vector<CreditRule> two(2);
  two[0].behaviour = two[1].behaviour = "metro_ride";
  two[0].grams_per_unit = two[1].grams_per_unit = 52;
  auto dup = CreditLedger::Open(dir.File("c.db"), two, absl::UTCTimeZone(), &clock);
  EXPECT_EQ(dup.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(dup.status().message(), HasSubstr("metro_ride"));

  std::vector<CreditRule> zero(1);
  zero[0].behaviour = "bus_ride";
  auto z = CreditLedger::Open(dir.File("c.db"), zero, absl::UTCTimeZone(), &clock);
  EXPECT_EQ(z.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(z.status().message(), HasSubstr("grams_per_unit"));

  // A structured (config) rule: 40 g per km, 400 g per day.
  std::vector<CreditRule> cfg(1);
  cfg[0].scheme = "city";
  cfg[0].behaviour = "cycling_km";
  cfg[0].grams_per_unit = 40;
  cfg[0].max_grams_per_day = 400;
  auto l = CreditLedger::Open(dir.File("c.db"), cfg, absl::UTCTimeZone(), &clock);
  ASSERT_TRUE(l.ok()) << l.status();
  EXPECT_EQ((*l)->rules()[0].unit, "km");
  EXPECT_EQ((*l)->rules()[0].id, "city:cycling_km");
  Behaviour ride;
  ride.behaviour = "cycling_km";
  ride.quantity = 7.5;
  ride.unit = "km";
  ride.txn_id = "c1";
  ride.time = absl::FromUnixSeconds(1767225600);
  auto a = (*l)->Credit("person/p1", ride, "consent", "ev");
  ASSERT_TRUE(a.ok() && a->has_value()) << a.status();
  EXPECT_DOUBLE_EQ((*a)->credited_g(), 300);
  ride.txn_id = "c2";
  auto b = (*l)->Credit("person/p1", ride, "consent", "ev");
  ASSERT_TRUE(b.ok() && b->has_value());
  EXPECT_DOUBLE_EQ((*b)->credited_g(), 100);  // reduced to the 400 g day cap
  EXPECT_TRUE((*b)->capped());
}

}  // namespace
}  // namespace cityos::carbon
