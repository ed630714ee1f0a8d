// Obligations on events (wire rewriting) and entities (attribute tree):
// nested, repeated and map fields, envelope paths, pseudonyms, coarsening,
// Check errors, and wire == reflection == entity view on random payloads.
#include <atomic>
#include <cmath>
#include <random>
#include <thread>
#include <string>
#include <vector>

#include "cityos/carbon/v1/carbon_events.pb.h"
#include "cityos/entity.h"
#include "cityos/health/v1/health.pb.h"
#include "cityos/mobility/v1/mobility.pb.h"
#include "cityos/payments/v1/payments.pb.h"
#include "entity/obligation_plan.h"
#include "entity/pseudonym_internal.h"
#include "exchange_test_util.h"
#include "google/protobuf/util/message_differencer.h"
#include "gtest/gtest.h"

namespace cityos {
namespace {

using exchange::v1::Entity;
using exchange::v1::Obligation;
using exchange::v1::Value;
using google::protobuf::util::MessageDifferencer;

using exchange_test::Redact;
Obligation Pseudo(std::vector<std::string> paths) {
  Obligation o = Redact(paths);
  o.set_kind(exchange::v1::OBLIGATION_KIND_PSEUDONYMIZE);
  return o;
}
Obligation CoarsenLoc(std::vector<std::string> paths, double cell) {
  Obligation o = Redact(paths);
  o.set_kind(exchange::v1::OBLIGATION_KIND_COARSEN_LOCATION);
  o.set_grid_cell_m(cell);
  return o;
}
Obligation CoarsenTimeOb(std::vector<std::string> paths, int64_t seconds) {
  Obligation o = Redact(paths);
  o.set_kind(exchange::v1::OBLIGATION_KIND_COARSEN_TIME);
  o.mutable_time_granularity()->set_seconds(seconds);
  return o;
}

event::v1::Event Wrap(const google::protobuf::Message& payload) {
  event::v1::Event e;
  e.set_id("e-1");
  e.set_source("//src");
  e.set_type(payload.GetDescriptor()->full_name());
  e.set_subject("health.alert");
  e.set_domain("health");
  e.set_data_subject("person-1");
  e.set_owner("org");
  e.mutable_time()->set_seconds(1780003725);
  e.mutable_time()->set_nanos(123);
  e.mutable_proto_data()->PackFrom(payload);
  return e;
}

template <typename T>
T Payload(const event::v1::Event& e) {
  T t;
  EXPECT_TRUE(e.proto_data().UnpackTo(&t));
  return t;
}

const std::string kSecret = "node-secret-0123456789";

TEST(PseudonymKey, PerRecipientAndStable) {
  PseudonymKey a = PseudonymKey::ForRecipient(kSecret, "hospital-a");
  PseudonymKey a2 = PseudonymKey::ForRecipient(kSecret, "hospital-a");
  PseudonymKey b = PseudonymKey::ForRecipient(kSecret, "hospital-b");
  EXPECT_EQ(a.key().size(), 32u);
  EXPECT_EQ(a.Pseudonymize("p-1"), a2.Pseudonymize("p-1"));
  EXPECT_NE(a.Pseudonymize("p-1"), b.Pseudonymize("p-1"));
  EXPECT_NE(a.Pseudonymize("p-1"), a.Pseudonymize("p-2"));
  std::string p = a.Pseudonymize("p-1");
  EXPECT_EQ(p.size(), 43u);  // 32 bytes, base64url unpadded
  EXPECT_EQ(p.find_first_not_of(
                "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"),
            std::string::npos);
  // RFC 4231 test case 2 pins the HMAC: key "Jefe".
  entity_internal::FastHmacSha256 jefe("Jefe");
  EXPECT_EQ(jefe.Pseudonymize("what do ya want for nothing?"),
            "W9zBRr9gdU5qBCQmCJV1x1oAPwidJzmDnexYuWTsOEM");
  // The fast path agrees with PseudonymKey.
  entity_internal::FastHmacSha256 fast(a.key());
  EXPECT_EQ(fast.Pseudonymize("p-1"), p);
  // Keys longer than a block are hashed first, as HMAC requires.
  std::string long_key(100, 'k');
  std::string mac = entity_internal::HmacSha256(long_key, "v");
  EXPECT_EQ(entity_internal::FastHmacSha256(long_key).Pseudonymize("v"),
            entity_internal::Base64UrlUnpadded(
                reinterpret_cast<const unsigned char*>(mac.data()), mac.size()));
}

TEST(ObligationApplier, RedactAndPseudonymizeNestedAndEnvelope) {
  health::v1::ElderlyCareAlert alert;
  alert.set_alert_id("a-1");
  alert.set_message("fell in bathroom");
  alert.set_device_id("watch-7");
  alert.mutable_vitals()->set_device_id("watch-7");
  alert.mutable_vitals()->set_heart_rate_bpm(120);
  event::v1::Event ev = Wrap(alert);
  ObligationApplier applier(PseudonymKey::ForRecipient(kSecret, "hospital-a"));
  std::vector<Obligation> obs = {Redact({"message", "vitals.heart_rate_bpm", "event.subject"}),
                                 Pseudo({"vitals.device_id", "event.data_subject"})};
  ASSERT_TRUE(applier.Apply(obs, &ev).ok());
  auto out = Payload<health::v1::ElderlyCareAlert>(ev);
  PseudonymKey key = PseudonymKey::ForRecipient(kSecret, "hospital-a");
  EXPECT_EQ(out.message(), "");
  EXPECT_FALSE(out.vitals().has_heart_rate_bpm());
  EXPECT_EQ(out.vitals().device_id(), key.Pseudonymize("watch-7"));
  EXPECT_EQ(out.device_id(), "watch-7");  // not on a path
  EXPECT_EQ(out.alert_id(), "a-1");
  EXPECT_EQ(ev.subject(), "");
  EXPECT_EQ(ev.data_subject(), key.Pseudonymize("person-1"));
  EXPECT_EQ(ev.id(), "e-1");

  // Another recipient gets other pseudonyms; the same one the same again.
  event::v1::Event ev_b = Wrap(alert);
  ObligationApplier applier_b(PseudonymKey::ForRecipient(kSecret, "hospital-b"));
  ASSERT_TRUE(applier_b.Apply(obs, &ev_b).ok());
  EXPECT_NE(ev_b.data_subject(), ev.data_subject());
  EXPECT_NE(Payload<health::v1::ElderlyCareAlert>(ev_b).vitals().device_id(),
            out.vitals().device_id());
  event::v1::Event ev_a2 = Wrap(alert);
  ASSERT_TRUE(applier.Apply(obs, &ev_a2).ok());
  EXPECT_EQ(ev_a2.data_subject(), ev.data_subject());
}

TEST(ObligationApplier, RepeatedMessagesAndMaps) {
  payments::v1::EInvoice inv;
  inv.set_invoice_id("inv-1");
  for (int i = 0; i < 3; ++i) {
    auto* item = inv.add_items();
    item->set_description("item " + std::to_string(i));
    item->set_quantity(i + 1);
    item->mutable_unit_price()->set_amount_minor(100 * i);
    item->mutable_unit_price()->set_currency_code("CNY");
  }
  event::v1::Event ev = Wrap(inv);
  ObligationApplier applier(PseudonymKey::ForRecipient(kSecret, "r"));
  std::vector<Obligation> obs = {Redact({"items.unit_price.amount_minor"}),
                                 Pseudo({"items.description"})};
  ASSERT_TRUE(applier.Apply(obs, &ev).ok());
  auto out = Payload<payments::v1::EInvoice>(ev);
  ASSERT_EQ(out.items_size(), 3);
  PseudonymKey key = PseudonymKey::ForRecipient(kSecret, "r");
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(out.items(i).description(), key.Pseudonymize("item " + std::to_string(i)));
    EXPECT_EQ(out.items(i).unit_price().amount_minor(), 0);
    EXPECT_EQ(out.items(i).unit_price().currency_code(), "CNY");
    EXPECT_EQ(out.items(i).quantity(), i + 1);
  }

  carbon::v1::Account acct;
  acct.set_account_id("a");
  (*acct.mutable_labels())["site"] = "north";
  (*acct.mutable_labels())["owner"] = "li";
  event::v1::Event ev2 = Wrap(acct);
  ASSERT_TRUE(applier.Apply({Pseudo({"labels"})}, &ev2).ok());
  auto acct_out = Payload<carbon::v1::Account>(ev2);
  EXPECT_EQ(acct_out.labels().at("site"), key.Pseudonymize("north"));  // keys kept
  EXPECT_EQ(acct_out.labels().at("owner"), key.Pseudonymize("li"));
  ASSERT_TRUE(applier.Apply({Redact({"labels"})}, &ev2).ok());
  EXPECT_TRUE(Payload<carbon::v1::Account>(ev2).labels().empty());
}

TEST(CoarsenLocation, ExactCells) {
  // 111320 m = 1 degree of latitude: cells are whole degrees from -90.
  common::v1::GeoPoint p;
  p.set_latitude(28.97);
  p.set_longitude(118.87);
  common::v1::GeoPoint c = CoarsenLocation(p, 111320);
  EXPECT_DOUBLE_EQ(c.latitude(), 28.5);
  // Longitude step at 28.5 N: 1 / cos(28.5 deg) degrees, cells from -180.
  double step = 1 / std::cos(28.5 * M_PI / 180);
  double start = -180 + std::floor((118.87 + 180) / step) * step;
  EXPECT_DOUBLE_EQ(c.longitude(), start + step / 2);
  // Every point of a cell maps to its centre; the centre maps to itself.
  common::v1::GeoPoint q = c;
  EXPECT_DOUBLE_EQ(CoarsenLocation(q, 111320).latitude(), c.latitude());
  EXPECT_DOUBLE_EQ(CoarsenLocation(q, 111320).longitude(), c.longitude());
  // 500 m cells: the result is within half a diagonal of the input.
  c = CoarsenLocation(p, 500);
  EXPECT_LT(std::abs(c.latitude() - p.latitude()) * 111320, 250.0001);
  EXPECT_LT(std::abs(c.longitude() - p.longitude()) * 111320 * std::cos(c.latitude() * M_PI / 180),
            250.5);
  // Near the pole a band is one cell round the earth; the last lat cell is cut at 90.
  p.set_latitude(89.9999);
  c = CoarsenLocation(p, 200000);
  EXPECT_LE(c.latitude(), 90);
  EXPECT_GE(c.longitude(), -180);
  EXPECT_LE(c.longitude(), 180);
}

TEST(ObligationApplier, CoarsenLocationAndTime) {
  mobility::v1::Trip trip;
  trip.set_trip_id("t");
  trip.mutable_origin()->mutable_location()->set_latitude(28.97);
  trip.mutable_origin()->mutable_location()->set_longitude(118.87);
  trip.mutable_start_time()->set_seconds(1780003725);
  trip.mutable_start_time()->set_nanos(999);
  event::v1::Event ev = Wrap(trip);
  ObligationApplier applier(PseudonymKey::ForRecipient(kSecret, "r"));
  std::vector<Obligation> obs = {CoarsenLoc({"origin.location"}, 111320),
                                 CoarsenTimeOb({"start_time"}, 3600), CoarsenTimeOb({}, 60)};
  ASSERT_TRUE(applier.Apply(obs, &ev).ok());
  auto out = Payload<mobility::v1::Trip>(ev);
  common::v1::GeoPoint want = CoarsenLocation(trip.origin().location(), 111320);
  EXPECT_EQ(out.origin().location().latitude(), want.latitude());
  EXPECT_EQ(out.origin().location().longitude(), want.longitude());
  EXPECT_EQ(out.start_time().seconds(), 1780003725 / 3600 * 3600);
  EXPECT_EQ(out.start_time().nanos(), 0);
  EXPECT_EQ(ev.time().seconds(), 1780003725 / 60 * 60);  // default path: event.time
  EXPECT_EQ(ev.time().nanos(), 0);

  // Negative times floor too.
  int64_t s = -1;
  int32_t n = 5;
  entity_internal::CoarsenTime(3600LL * 1000000000, &s, &n);
  EXPECT_EQ(s, -3600);
  EXPECT_EQ(n, 0);

  // Default COARSEN_LOCATION path is the top-level location; entity too.
  health::v1::BedAvailability beds;
  beds.set_hospital_id("h");
  beds.mutable_location()->set_latitude(10.2);
  beds.mutable_location()->set_longitude(20.7);
  event::v1::Event ev2 = Wrap(beds);
  auto entity = EntityFromEvent(ev2);
  ASSERT_TRUE(entity.ok());
  ASSERT_TRUE(applier.Apply({CoarsenLoc({}, 111320)}, &ev2).ok());
  ASSERT_TRUE(applier.Apply({CoarsenLoc({}, 111320)}, &*entity).ok());
  EXPECT_EQ(Payload<health::v1::BedAvailability>(ev2).location().latitude(), 10.5);
  EXPECT_EQ(entity->location().latitude(), 10.5);
  EXPECT_EQ(entity->attributes().at("location").geo_value().latitude(), 10.5);
}

TEST(ObligationApplier, EntityPathsAndEnvelope) {
  payments::v1::EInvoice inv;
  inv.set_buyer_id("p-1");
  inv.add_items()->set_description("x");
  inv.add_items()->set_description("y");
  inv.mutable_issue_time()->set_seconds(7205);
  event::v1::Event ev = Wrap(inv);
  auto e = EntityFromEvent(ev);
  ASSERT_TRUE(e.ok());
  ObligationApplier applier(PseudonymKey::ForRecipient(kSecret, "r"));
  PseudonymKey key = PseudonymKey::ForRecipient(kSecret, "r");
  std::vector<Obligation> obs = {Redact({"buyer_id", "event.owner"}),
                                 Pseudo({"items.description", "event.data_subject"}),
                                 CoarsenTimeOb({"issue_time", "event.time"}, 3600)};
  ASSERT_TRUE(applier.Apply(obs, &*e).ok());
  EXPECT_EQ(FindAttribute(*e, "buyer_id"), nullptr);
  EXPECT_EQ(FindAttribute(*e, "items.1.description")->string_value(), key.Pseudonymize("y"));
  EXPECT_EQ(FindAttribute(*e, "issue_time")->time_value().seconds(), 7200);
  EXPECT_EQ(e->owner(), "");
  EXPECT_EQ(e->data_subject(), key.Pseudonymize("person-1"));
  EXPECT_EQ(e->observed_time().seconds(), 1780003725 / 3600 * 3600);
}

TEST(ObligationApplier, CheckErrorsNameThePathAndType) {
  auto check = [](const Obligation& o, const char* type) {
    return ObligationApplier::Check(o, type);
  };
  const char* alert = "cityos.health.v1.ElderlyCareAlert";
  EXPECT_TRUE(check(Redact({"vitals.heart_rate_bpm", "event.data_subject"}), alert).ok());
  absl::Status s = check(Redact({"vitals.pulse"}), alert);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("vitals.pulse"), std::string::npos) << s;
  EXPECT_NE(s.message().find("cityos.health.v1.VitalSigns"), std::string::npos) << s;
  for (const char* p : {"event.id", "event.type", "event.source", "event.spec_version"}) {
    s = check(Redact({p}), alert);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << p;
    EXPECT_NE(s.message().find(p), std::string::npos) << s;
  }
  EXPECT_FALSE(check(Redact({"event.nope"}), alert).ok());
  s = check(Pseudo({"inactive_for"}), alert);
  EXPECT_NE(s.message().find("string or bytes"), std::string::npos) << s;
  EXPECT_FALSE(check(Pseudo({"event.time"}), alert).ok());
  EXPECT_TRUE(check(Pseudo({"event.data_subject", "device_id"}), alert).ok());
  s = check(CoarsenLoc({"alert_id"}, 100), alert);
  EXPECT_NE(s.message().find("coarsen_location"), std::string::npos) << s;
  EXPECT_TRUE(check(CoarsenLoc({"location"}, 100), alert).ok());
  EXPECT_FALSE(check(CoarsenLoc({"location"}, 0), alert).ok());
  s = check(CoarsenTimeOb({"inactive_for"}, 60), alert);
  EXPECT_NE(s.message().find("Timestamp"), std::string::npos) << s;
  EXPECT_TRUE(check(CoarsenTimeOb({"time", "vitals.time"}, 60), alert).ok());
  EXPECT_FALSE(check(CoarsenTimeOb({"time"}, 0), alert).ok());
  EXPECT_FALSE(check(Redact({"alert_id.x"}), alert).ok());  // not a message
  EXPECT_FALSE(check(Redact({"a..b"}), alert).ok());
  s = check(Redact({"x"}), "cityos.nope.v1.X");
  EXPECT_NE(s.message().find("cityos.nope.v1.X"), std::string::npos);
  EXPECT_TRUE(check(Redact({"event.owner"}), "cityos.nope.v1.X").ok());
  Obligation retention;
  retention.set_kind(exchange::v1::OBLIGATION_KIND_RETENTION_LIMIT);
  EXPECT_TRUE(check(retention, alert).ok());
  // Apply rejects the same and leaves the event untouched.
  health::v1::ElderlyCareAlert a;
  a.set_message("m");
  event::v1::Event ev = Wrap(a);
  event::v1::Event before = ev;
  ObligationApplier applier(PseudonymKey::ForRecipient(kSecret, "r"));
  EXPECT_FALSE(applier.Apply({Redact({"message", "nope"})}, &ev).ok());
  EXPECT_TRUE(MessageDifferencer::Equals(ev, before));
  ev.mutable_proto_data()->set_value(std::string("\x0a\xff", 2));  // truncated string
  before = ev;
  EXPECT_EQ(applier.Apply({Redact({"message"})}, &ev).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(MessageDifferencer::Equals(ev, before));
  // A payload this node cannot read is never delivered unredacted.
  ev.mutable_proto_data()->set_type_url("type.googleapis.com/cityos.nope.v1.X");
  EXPECT_FALSE(applier.Apply({Redact({"message"})}, &ev).ok());
}

TEST(ObligationApplier, UnitFollowsItsField) {
  carbon::v1::MeterReading r;
  r.set_value(12.5);
  r.set_unit("kWh");
  auto e = EntityFromEvent(Wrap(r));
  ASSERT_TRUE(e.ok());
  ASSERT_EQ(e->attributes().at("value").unit(), "kWh");
  ObligationApplier applier(PseudonymKey::ForRecipient(kSecret, "r"));
  Entity pseudo = *e;
  ASSERT_TRUE(applier.Apply({Pseudo({"unit"})}, &pseudo).ok());
  EXPECT_EQ(pseudo.attributes().at("value").unit(),
            PseudonymKey::ForRecipient(kSecret, "r").Pseudonymize("kWh"));
  ASSERT_TRUE(applier.Apply({Redact({"unit"})}, &*e).ok());
  EXPECT_EQ(e->attributes().at("value").unit(), "");
  EXPECT_EQ(e->attributes().count("unit"), 0u);
}

// Many threads, several obligation sets and two appliers share plan caches.
TEST(ObligationApplier, ConcurrentUseIsConsistent) {
  ObligationApplier a(PseudonymKey::ForRecipient(kSecret, "a"));
  ObligationApplier b(PseudonymKey::ForRecipient(kSecret, "b"));
  health::v1::ElderlyCareAlert alert;
  alert.set_message("m");
  alert.set_device_id("d");
  alert.mutable_time()->set_seconds(7201);
  const std::vector<std::vector<Obligation>> sets = {
      {Redact({"message"})}, {Pseudo({"device_id"})}, {CoarsenTimeOb({"time"}, 3600)},
      {Redact({"message"}), Pseudo({"device_id"})}};
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 2000; ++i) {
        const auto& obs = sets[(i + t) % sets.size()];
        ObligationApplier& applier = (i % 2) ? a : b;
        event::v1::Event ev = Wrap(alert);
        if (!applier.Apply(obs, &ev).ok()) ++failures;
        health::v1::ElderlyCareAlert out;
        ev.proto_data().UnpackTo(&out);
        bool redact = obs[0].kind() == exchange::v1::OBLIGATION_KIND_REDACT;
        bool pseudo = obs.back().kind() == exchange::v1::OBLIGATION_KIND_PSEUDONYMIZE;
        bool coarse = obs[0].kind() == exchange::v1::OBLIGATION_KIND_COARSEN_TIME;
        std::string want_device =
            pseudo ? PseudonymKey::ForRecipient(kSecret, (i % 2) ? "a" : "b").Pseudonymize("d")
                   : "d";
        if (out.message() != (redact ? "" : "m") || out.device_id() != want_device ||
            out.time().seconds() != (coarse ? 7200 : 7201)) {
          ++failures;
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(failures.load(), 0);
}

// --- property: wire == reflection, and the entity view commutes ---

std::string RandomString(std::mt19937_64& rng) {
  static const char* const kPieces[] = {"a", "b", "x", "-", "/", " ", "\xc3\xa9", "\xe8\xa1\xa2"};
  std::string s;
  int n = static_cast<int>(rng() % 6);
  for (int i = 0; i < n; ++i) s += kPieces[rng() % 8];
  return s;
}

void RandomValue(std::mt19937_64& rng, Value* v, int depth) {
  switch (rng() % (depth > 2 ? 6 : 8)) {
    case 0: v->set_string_value(RandomString(rng)); break;
    case 1: v->set_int_value(static_cast<int64_t>(rng() % 1000) - 500); break;
    case 2:
      v->mutable_time_value()->set_seconds(static_cast<int64_t>(rng() % 4000000000) - 1000000000);
      v->mutable_time_value()->set_nanos(static_cast<int32_t>(rng() % 1000000000));
      break;
    case 3:
      v->mutable_geo_value()->set_latitude(std::uniform_real_distribution<>(-90, 90)(rng));
      v->mutable_geo_value()->set_longitude(std::uniform_real_distribution<>(-180, 180)(rng));
      break;
    case 4: v->set_bytes_value(RandomString(rng)); break;
    case 5: break;  // null
    case 6:
      for (int i = static_cast<int>(rng() % 3); i > 0; --i) {
        RandomValue(rng, v->mutable_list_value()->add_values(), depth + 1);
      }
      break;
    case 7:
      for (int i = static_cast<int>(rng() % 3); i > 0; --i) {
        RandomValue(rng, &(*v->mutable_map_value()->mutable_fields())[RandomString(rng)],
                    depth + 1);
      }
      break;
  }
  if (rng() % 4 == 0) v->set_unit(RandomString(rng));
}

// exchange.v1.Entity is a payload type with every shape: a map of messages,
// repeated messages, a GeoPoint, Timestamps, enums, nested recursion.
Entity RandomPayload(std::mt19937_64& rng) {
  Entity e;
  if (rng() % 2) e.set_type(RandomString(rng));
  e.set_id(RandomString(rng));
  for (int i = static_cast<int>(rng() % 4); i > 0; --i) {
    RandomValue(rng, &(*e.mutable_attributes())[RandomString(rng)], 0);
  }
  if (rng() % 2) {
    e.mutable_location()->set_latitude(std::uniform_real_distribution<>(-90, 90)(rng));
    e.mutable_location()->set_longitude(std::uniform_real_distribution<>(-180, 180)(rng));
  }
  if (rng() % 2) e.mutable_observed_time()->set_seconds(static_cast<int64_t>(rng() % 2000000000));
  if (rng() % 2) e.mutable_observed_time()->set_nanos(static_cast<int32_t>(rng() % 1000));
  e.set_version(rng() % 5);
  if (rng() % 2) e.set_data_subject(RandomString(rng));
  for (int i = static_cast<int>(rng() % 3); i > 0; --i) {
    auto* o = e.add_obligations();
    o->set_rule_id(RandomString(rng));
    if (rng() % 2) o->add_field_paths(RandomString(rng));
    if (rng() % 2) o->mutable_retention()->set_seconds(static_cast<int64_t>(rng() % 100));
  }
  return e;
}

std::vector<Obligation> RandomObligations(std::mt19937_64& rng) {
  static const std::vector<std::vector<Obligation>> kChoices = {
      {Redact({"id"}), Redact({"attributes"}), Redact({"attributes.unit"}),
       Redact({"location.latitude"}), Redact({"obligations.rule_id"}), Redact({"observed_time"}),
       Redact({"attributes.map_value"}), Redact({"attributes.list_value.values.string_value"}),
       Redact({"event.data_subject"})},
      {Pseudo({"id"}), Pseudo({"attributes.string_value"}), Pseudo({"attributes.bytes_value"}),
       Pseudo({"obligations.field_paths"}), Pseudo({"obligations.rule_id", "data_subject"}),
       Pseudo({"attributes.map_value.fields.string_value"}), Pseudo({"event.data_subject"})},
      {CoarsenLoc({"location"}, 500), CoarsenLoc({"attributes.geo_value"}, 1000),
       CoarsenLoc({"attributes.list_value.values.geo_value"}, 250), CoarsenLoc({}, 10000)},
      {CoarsenTimeOb({"observed_time"}, 3600), CoarsenTimeOb({"attributes.time_value"}, 60),
       CoarsenTimeOb({"attributes.map_value.fields.time_value"}, 86400),
       CoarsenTimeOb({}, 900)},
  };
  std::vector<Obligation> out;
  for (int i = static_cast<int>(rng() % 4) + 1; i > 0; --i) {
    const auto& kind = kChoices[rng() % kChoices.size()];
    out.push_back(kind[rng() % kind.size()]);
  }
  return out;
}

TEST(ObligationApplier, WireEqualsReflectionAndEntityViewCommutes) {
  std::mt19937_64 rng(20261129);
  PseudonymKey key = PseudonymKey::ForRecipient(kSecret, "r");
  ObligationApplier applier(key);
  entity_internal::FastHmacSha256 hmac(key.key());
  int rewritten = 0;
  for (int iter = 0; iter < 3000; ++iter) {
    Entity payload = RandomPayload(rng);
    std::vector<Obligation> obs = RandomObligations(rng);
    for (const Obligation& o : obs) {
      ASSERT_TRUE(ObligationApplier::Check(o, "cityos.exchange.v1.Entity").ok())
          << ObligationApplier::Check(o, "cityos.exchange.v1.Entity");
    }
    event::v1::Event ev = Wrap(payload);
    event::v1::Event original = ev;
    ASSERT_TRUE(applier.Apply(obs, &ev).ok());
    Entity wire;
    ASSERT_TRUE(ev.proto_data().UnpackTo(&wire));

    auto plan = entity_internal::CompilePlan(obs, "cityos.exchange.v1.Entity",
                                             Entity::descriptor());
    ASSERT_TRUE(plan.ok());
    Entity reflected = payload;
    if ((*plan)->root != nullptr) entity_internal::RewriteReflection(*(*plan)->root, hmac, &reflected);
    ASSERT_TRUE(MessageDifferencer::Equals(wire, reflected))
        << "iteration " << iter << "\npayload: " << payload.ShortDebugString()
        << "\nwire: " << wire.ShortDebugString() << "\nreflection: "
        << reflected.ShortDebugString();
    if (!MessageDifferencer::Equals(wire, payload)) ++rewritten;

    // Obligations on the entity view == the entity view of the obligated event.
    auto before = EntityFromEvent(original);
    auto after = EntityFromEvent(ev);
    ASSERT_TRUE(before.ok() && after.ok());
    ASSERT_TRUE(applier.Apply(obs, &*before).ok());
    ASSERT_TRUE(MessageDifferencer::Equals(*before, *after))
        << "iteration " << iter << "\nentity-side: " << before->ShortDebugString()
        << "\nevent-side: " << after->ShortDebugString();
  }
  EXPECT_GT(rewritten, 1000);  // the property was exercised, not vacuous
}

// ApplyToWire on the serialized event gives what Apply gives on the parsed
// one: payload-only obligations rewrite the payload bytes in place (the rest of
// the event copied byte for byte), envelope ones take the parse path; errors
// leave `out` untouched.
TEST(ObligationApplier, ApplyToWireEqualsApply) {
  health::v1::ElderlyCareAlert alert;
  alert.set_alert_id("a-1");
  alert.set_message("fell in bathroom");
  alert.mutable_vitals()->set_device_id("watch-7");
  alert.mutable_vitals()->set_heart_rate_bpm(120);
  event::v1::Event ev = Wrap(alert);
  (*ev.mutable_extensions())[kEntityIdExtension] = "a-1";
  ev.set_publisher("spiffe://x/org/o/svc/s");
  mobility::v1::Trip trip;
  trip.set_trip_id("t");
  trip.mutable_origin()->mutable_location()->set_latitude(28.97);
  trip.mutable_origin()->mutable_location()->set_longitude(118.87);
  event::v1::Event text = ev;
  text.set_text_data("plain text");
  event::v1::Event everything_redacted = Wrap(alert);
  ObligationApplier applier(PseudonymKey::ForRecipient(kSecret, "hospital-a"));
  struct Case {
    const char* name;
    event::v1::Event event;
    std::vector<Obligation> obligations;
  };
  std::vector<Case> cases = {
      {"redact nested", ev, {Redact({"message", "vitals.heart_rate_bpm"})}},
      {"pseudonymize", ev, {Pseudo({"vitals.device_id"})}},
      {"envelope too", ev, {Redact({"message"}), Pseudo({"event.data_subject"})}},
      {"coarsen", Wrap(trip), {CoarsenLoc({"origin.location"}, 111320)}},
      {"time of the event", ev, {CoarsenTimeOb({}, 60)}},
      {"text payload: fails closed", text, {Redact({"message"})}},
      {"text payload, envelope obligation", text, {Redact({"event.subject"})}},
      {"no payload path present", Wrap(trip), {Redact({"trip_id", "origin"})}},
      {"nothing changes data", ev, {}},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    event::v1::Event want = c.event;
    absl::Status want_status = applier.Apply(c.obligations, &want);
    const std::string wire = c.event.SerializeAsString();
    std::string out = "prefix";
    absl::Status status = applier.ApplyToWire(c.obligations, wire, &out);
    ASSERT_EQ(status, want_status);
    if (!status.ok()) {
      EXPECT_EQ(out, "prefix");
      continue;
    }
    ASSERT_EQ(out.substr(0, 6), "prefix");
    event::v1::Event got;
    ASSERT_TRUE(got.ParseFromString(out.substr(6)));
    EXPECT_TRUE(MessageDifferencer::Equals(got, want))
        << "got " << got.ShortDebugString() << "\nwant " << want.ShortDebugString();
  }
  // Payload-only: everything outside the payload is the stored bytes.
  std::string out;
  ASSERT_TRUE(applier.ApplyToWire({Redact({"message"})}, ev.SerializeAsString(), &out).ok());
  event::v1::Event no_payload = ev;
  no_payload.clear_proto_data();
  event::v1::Event got;
  ASSERT_TRUE(got.ParseFromString(out));
  got.clear_proto_data();
  EXPECT_EQ(got.SerializeAsString(), no_payload.SerializeAsString());
  // A stale member of the payload oneof before the payload (a parse keeps
  // only the last): the output must not carry it.
  event::v1::Event stale;
  stale.set_text_data("SECRET-STALE");
  out.clear();
  ASSERT_TRUE(applier
                  .ApplyToWire({Redact({"message"})},
                               stale.SerializeAsString() + ev.SerializeAsString(), &out)
                  .ok());
  EXPECT_EQ(out.find("SECRET-STALE"), std::string::npos);
  event::v1::Event redacted = ev;
  ASSERT_TRUE(applier.Apply({Redact({"message"})}, &redacted).ok());
  ASSERT_TRUE(got.ParseFromString(out));
  EXPECT_TRUE(MessageDifferencer::Equals(got, redacted)) << got.ShortDebugString();
  // Errors: not an event; a payload path on a type this node does not know.
  out = "kept";
  EXPECT_EQ(applier.ApplyToWire({Redact({"message"})}, std::string("\x0a\x05" "ab", 4), &out).code(),
            absl::StatusCode::kInvalidArgument);
  event::v1::Event unknown = ev;
  unknown.mutable_proto_data()->set_type_url("type.googleapis.com/no.such.Type");
  absl::Status s = applier.ApplyToWire({Redact({"message"})}, unknown.SerializeAsString(), &out);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("no.such.Type"), std::string_view::npos) << s;
  EXPECT_EQ(out, "kept");
}

}  // namespace
}  // namespace cityos
