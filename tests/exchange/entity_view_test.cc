// The entity view of real cityos payloads (EntityFromEvent) and Project.
#include <string>

#include "cityos/carbon/v1/carbon_events.pb.h"
#include "cityos/disaster/v1/disaster.pb.h"
#include "cityos/entity.h"
#include "cityos/health/v1/health.pb.h"
#include "gtest/gtest.h"

namespace cityos {
namespace {

using exchange::v1::Entity;
using exchange::v1::Value;

event::v1::Event Envelope(const google::protobuf::Message& payload) {
  event::v1::Event e;
  e.set_id("0190c3e0-0000-7000-8000-000000000001");
  e.set_source("//quzhou.city/care/device-7");
  e.set_spec_version("1.0");
  e.set_type(payload.GetDescriptor()->full_name());
  e.set_subject("care.alert.quzhou");
  e.mutable_time()->set_seconds(1780000000);
  e.mutable_time()->set_nanos(5);
  e.set_domain("care");
  e.set_classification(event::v1::CLASSIFICATION_SENSITIVE);
  e.set_data_subject("p-123");
  e.set_owner("care-home-a");
  e.set_region("CN-ZJ-QZ-KC");
  e.set_jurisdiction("CN");
  e.mutable_proto_data()->PackFrom(payload);
  return e;
}

TEST(EntityFromEvent, NestedMessageDurationEnumsAndLocation) {
  health::v1::ElderlyCareAlert alert;
  alert.set_alert_id("a-1");
  alert.set_kind(health::v1::CARE_ALERT_KIND_FALL_DETECTED);
  alert.mutable_time()->set_seconds(1780000000);
  alert.mutable_location()->set_latitude(28.97);
  alert.mutable_location()->set_longitude(118.87);
  alert.mutable_inactive_for()->set_seconds(900);
  alert.mutable_vitals()->set_heart_rate_bpm(0);  // optional: present though 0
  alert.mutable_vitals()->set_device_id("watch-1");
  event::v1::Event ev = Envelope(alert);
  auto e = EntityFromEvent(ev);
  ASSERT_TRUE(e.ok()) << e.status();
  EXPECT_EQ(e->type(), "cityos.health.v1.ElderlyCareAlert");
  EXPECT_EQ(e->id(), "//quzhou.city/care/device-7");
  EXPECT_EQ(e->attributes().at("alert_id").string_value(), "a-1");
  EXPECT_EQ(e->attributes().at("kind").string_value(), "CARE_ALERT_KIND_FALL_DETECTED");
  // Enum 0 and empty strings are "not given".
  EXPECT_EQ(e->attributes().count("severity"), 0u);
  EXPECT_EQ(e->attributes().count("message"), 0u);
  EXPECT_EQ(e->attributes().at("time").time_value().seconds(), 1780000000);
  EXPECT_EQ(e->attributes().at("inactive_for").duration_value().seconds(), 900);
  EXPECT_EQ(e->attributes().at("location").geo_value().latitude(), 28.97);
  const auto& vitals = e->attributes().at("vitals").map_value().fields();
  EXPECT_EQ(vitals.at("device_id").string_value(), "watch-1");
  ASSERT_EQ(vitals.count("heart_rate_bpm"), 1u);
  EXPECT_EQ(vitals.at("heart_rate_bpm").double_value(), 0);
  EXPECT_EQ(vitals.count("spo2_percent"), 0u);  // optional, unset
  EXPECT_TRUE(e->has_location());
  EXPECT_EQ(e->location().longitude(), 118.87);
  EXPECT_EQ(e->observed_time().seconds(), 1780000000);
  EXPECT_EQ(e->observed_time().nanos(), 5);
  EXPECT_EQ(e->domain(), "care");
  EXPECT_EQ(e->classification(), event::v1::CLASSIFICATION_SENSITIVE);
  EXPECT_EQ(e->owner(), "care-home-a");
  EXPECT_EQ(e->region(), "CN-ZJ-QZ-KC");
  EXPECT_EQ(e->jurisdiction(), "CN");
  EXPECT_EQ(e->data_subject(), "p-123");
  EXPECT_EQ(e->event_id(), ev.id());
  EXPECT_EQ(e->version(), 0u);
  EXPECT_FALSE(e->has_update_time());
  const Value* hr = FindAttribute(*e, "vitals.heart_rate_bpm");
  ASSERT_NE(hr, nullptr);
  EXPECT_EQ(hr->kind_case(), Value::kDoubleValue);
  EXPECT_EQ(FindAttribute(*e, "vitals.nope"), nullptr);
  EXPECT_EQ(FindAttribute(*e, "alert_id.x"), nullptr);
}

TEST(EntityFromEvent, MapRepeatedAndNumbersAlwaysPresent) {
  carbon::v1::Account account;
  account.set_account_id("quzhou-steel/m-17");
  account.set_kind(carbon::v1::ACCOUNT_KIND_METER);
  (*account.mutable_labels())["line"] = "3";
  (*account.mutable_labels())["site"] = "north";
  account.mutable_meter()->set_unit("kWh");
  account.mutable_meter()->mutable_location()->set_latitude(29.0);
  event::v1::Event ev = Envelope(account);
  (*ev.mutable_extensions())[kEntityIdExtension] = "acct/m-17";
  auto e = EntityFromEvent(ev);
  ASSERT_TRUE(e.ok()) << e.status();
  EXPECT_EQ(e->id(), "acct/m-17");
  EXPECT_EQ(FindAttribute(*e, "labels.site")->string_value(), "north");
  EXPECT_EQ(FindAttribute(*e, "meter.unit")->string_value(), "kWh");
  // An implicit-presence double is an attribute even when 0.
  ASSERT_NE(FindAttribute(*e, "meter.max_per_hour"), nullptr);
  EXPECT_EQ(FindAttribute(*e, "meter.max_per_hour")->double_value(), 0);
  EXPECT_EQ(FindAttribute(*e, "meter.location")->geo_value().latitude(), 29.0);
  // The top-level `location` only is the entity location.
  EXPECT_FALSE(e->has_location());

  disaster::v1::EvacuationSupportEntry entry;
  entry.set_person_id("p-9");
  entry.add_needs(disaster::v1::SUPPORT_NEED_MEDICAL_EQUIPMENT);
  entry.add_needs(disaster::v1::SUPPORT_NEED_LANGUAGE);
  auto e2 = EntityFromEvent(Envelope(entry));
  ASSERT_TRUE(e2.ok());
  const Value* needs = FindAttribute(*e2, "needs");
  ASSERT_NE(needs, nullptr);
  ASSERT_EQ(needs->list_value().values_size(), 2);
  EXPECT_EQ(needs->list_value().values(1).string_value(), "SUPPORT_NEED_LANGUAGE");
  EXPECT_EQ(FindAttribute(*e2, "needs.1")->string_value(), "SUPPORT_NEED_LANGUAGE");
  EXPECT_EQ(FindAttribute(*e2, "needs.2"), nullptr);
  EXPECT_FALSE(e2->has_location());  // location unset in the payload
}

TEST(EntityFromEvent, UnitFromSibling) {
  carbon::v1::MeterReading r;
  r.set_meter_id("m-17");
  r.set_value(12.5);
  r.set_unit("kWh");
  auto e = EntityFromEvent(Envelope(r));
  ASSERT_TRUE(e.ok());
  EXPECT_EQ(e->attributes().at("value").unit(), "kWh");
  EXPECT_EQ(e->attributes().at("value").double_value(), 12.5);
}

TEST(EntityFromEvent, NonProtoPayloadsHaveNoAttributes) {
  event::v1::Event ev;
  ev.set_type("x.y.Z");
  ev.set_source("//s");
  ev.set_text_data("{\"a\":1}");
  auto e = EntityFromEvent(ev);
  ASSERT_TRUE(e.ok());
  EXPECT_TRUE(e->attributes().empty());
  EXPECT_EQ(e->id(), "//s");
}

TEST(EntityFromEvent, UnknownTypeAndGarbageAreInvalidArgument) {
  event::v1::Event ev;
  ev.set_type("cityos.nope.v1.Thing");
  ev.mutable_proto_data()->set_type_url("type.googleapis.com/cityos.nope.v1.Thing");
  auto e = EntityFromEvent(ev);
  EXPECT_EQ(e.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(e.status().message().find("cityos.nope.v1.Thing"), std::string::npos);

  ev.mutable_proto_data()->set_type_url("type.googleapis.com/cityos.health.v1.VitalSigns");
  ev.mutable_proto_data()->set_value(std::string("\xff\xff\xff", 3));
  e = EntityFromEvent(ev);
  EXPECT_EQ(e.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(e.status().message().find("cityos.health.v1.VitalSigns"), std::string::npos);
}

TEST(Project, KeepsPathsAndParents) {
  health::v1::ElderlyCareAlert alert;
  alert.set_alert_id("a-1");
  alert.set_message("fell");
  alert.mutable_vitals()->set_device_id("w");
  alert.mutable_vitals()->set_spo2_percent(97);
  auto e = EntityFromEvent(Envelope(alert));
  ASSERT_TRUE(e.ok());
  std::vector<std::string> paths = {"alert_id", "vitals.spo2_percent"};
  ASSERT_TRUE(Project(paths, &*e).ok());
  EXPECT_EQ(e->attributes().size(), 2u);
  EXPECT_NE(FindAttribute(*e, "vitals.spo2_percent"), nullptr);
  EXPECT_EQ(FindAttribute(*e, "vitals.device_id"), nullptr);
  EXPECT_EQ(FindAttribute(*e, "message"), nullptr);
  std::vector<std::string> bad = {"a..b"};
  EXPECT_EQ(Project(bad, &*e).code(), absl::StatusCode::kInvalidArgument);
  Entity copy = *e;
  ASSERT_TRUE(Project({}, &copy).ok());
  EXPECT_EQ(copy.attributes().size(), 2u);
}

}  // namespace
}  // namespace cityos
