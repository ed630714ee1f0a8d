// event_wire (services/exchange/event_wire.h): the envelope read off a
// serialized event equals what the parsed event gives (ResourceView::Of,
// EntityIdOf), malformed bytes are refused, and a delivery framed around event
// bytes is byte for byte what protobuf serializes for the same
// SubscribeResponse.
#include "event_wire.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "cityos/entity.h"
#include "cityos/exchange/v1/exchange.pb.h"
#include "cityos/proto_time.h"
#include "google/protobuf/util/message_differencer.h"
#include "exchange_test_util.h"

namespace cityos {
namespace {

std::vector<event::v1::Event> Samples() {
  std::vector<event::v1::Event> out;
  event::v1::Event e;
  e.set_id("id-1");
  e.set_source("//src/a");
  e.set_spec_version("1.0");
  e.set_type("cityos.health.v1.BedAvailability");
  e.set_subject("health.beds.h1");
  e.mutable_time()->set_seconds(1780003725);
  e.set_domain("health");
  e.set_classification(event::v1::CLASSIFICATION_SENSITIVE);
  e.set_data_subject("person-9");
  e.set_owner("hospitals");
  e.set_region("CN-ZJ-QZ");
  e.set_jurisdiction("CN");
  e.set_publisher("spiffe://x/org/o/svc/s");
  (*e.mutable_extensions())["a"] = "1";
  (*e.mutable_extensions())[kEntityIdExtension] = "bed-7";
  (*e.mutable_extensions())["z"] = "2";
  e.mutable_proto_data()->set_type_url("type.googleapis.com/cityos.health.v1.BedAvailability");
  e.mutable_proto_data()->set_value(std::string(300, 'x'));
  out.push_back(e);
  event::v1::Event no_id = e;
  no_id.mutable_extensions()->erase(kEntityIdExtension);
  no_id.set_text_data("hello");
  out.push_back(no_id);
  event::v1::Event empty_id = e;
  (*empty_id.mutable_extensions())[kEntityIdExtension] = "";
  empty_id.set_binary_data(std::string(5, '\0'));
  out.push_back(empty_id);
  event::v1::Event no_extensions = e;
  no_extensions.clear_extensions();
  out.push_back(no_extensions);
  out.push_back(event::v1::Event());  // nothing set
  return out;
}

TEST(EnvelopeView, EqualsTheParsedEvent) {
  for (const event::v1::Event& e : Samples()) {
    SCOPED_TRACE(e.ShortDebugString());
    const std::string wire = e.SerializeAsString();
    EnvelopeView v;
    ASSERT_TRUE(v.Parse(wire));
    exchange_test::ExpectSameResource(v.Resource(), ResourceView::Of(e));
    EXPECT_EQ(v.entity_id(), EntityIdOf(e));
    EXPECT_EQ(v.payload_bytes, (e.has_proto_data() ? e.proto_data().ByteSizeLong() : 0) +
                                   e.text_data().size() + e.binary_data().size());
  }
  // A later value of a singular field wins, as in a parse.
  event::v1::Event first, second;
  first.set_owner("first");
  second.set_owner("second");
  EnvelopeView v;
  ASSERT_TRUE(v.Parse(first.SerializeAsString() + second.SerializeAsString()));
  EXPECT_EQ(v.owner, "second");
  // Truncated or malformed bytes are refused.
  const std::string wire = Samples()[0].SerializeAsString();
  for (size_t cut : {size_t{1}, size_t{5}, wire.size() - 1}) {
    EXPECT_FALSE(v.Parse(std::string_view(wire).substr(0, cut))) << cut;
  }
  // More than one payload field: a parse keeps the last, the bytes all of
  // them, so the view refuses and the caller parses.
  event::v1::Event stale, fresh;
  stale.set_text_data("SECRET-STALE");
  fresh.mutable_proto_data()->set_type_url("type.googleapis.com/x.Y");
  ASSERT_TRUE(v.Parse(fresh.SerializeAsString()));
  EXPECT_FALSE(v.Parse(stale.SerializeAsString() + fresh.SerializeAsString()));
  EXPECT_FALSE(v.Parse(fresh.SerializeAsString() + fresh.SerializeAsString()));
  EXPECT_FALSE(v.Parse(std::string("\x0b\x01", 2)));  // a group
  EXPECT_FALSE(v.Parse(std::string("\x00\x01", 2)));  // field 0
}

TEST(AppendDelivery, IsWhatProtobufSerializes) {
  exchange::v1::Decision decision;
  decision.set_effect(exchange::v1::EFFECT_ALLOW);
  decision.add_rule_ids("rule-1");
  decision.mutable_obligations()->Add()->add_field_paths("hospital_name");
  const std::string decision_bytes = decision.SerializeAsString();
  for (const absl::Time t :
       {absl::FromUnixNanos(1780003725123456789), absl::FromUnixSeconds(1780003725),
        absl::FromUnixNanos(-1500000000), absl::FromUnixNanos(5), absl::InfinitePast()}) {
    for (const event::v1::Event& e : Samples()) {
      for (const std::string& stream : {std::string("beds"), std::string()}) {
        exchange::v1::SubscribeResponse want;
        for (uint64_t seq : {uint64_t{1}, uint64_t{1234567890123}}) {
          exchange::v1::ExchangeDelivery* d = want.add_deliveries();
          *d->mutable_event() = e;
          TimestampToProto(t, d->mutable_publish_time());
          *d->mutable_decision() = decision;
          if (!stream.empty()) d->set_resume_token(stream + ":" + std::to_string(seq));
        }
        want.set_missed(3);
        std::string got;
        const std::string event_bytes = e.SerializeAsString();
        AppendDelivery(event_bytes, t, decision_bytes, stream, 1, &got);
        AppendDelivery(event_bytes, t, decision_bytes, stream, 1234567890123, &got);
        wire::AppendVarintField(2, 3, &got);  // missed
        exchange::v1::SubscribeResponse parsed;
        ASSERT_TRUE(parsed.ParseFromString(got));
        EXPECT_TRUE(google::protobuf::util::MessageDifferencer::Equals(parsed, want)) << stream;
        // Byte for byte (maps aside, whose order a serialization does not fix).
        if (e.extensions().empty()) {
          EXPECT_EQ(got, want.SerializeAsString()) << stream;
        }
      }
    }
  }
  // The epoch: an empty Timestamp, still present.
  exchange::v1::SubscribeResponse want;
  exchange::v1::ExchangeDelivery* d = want.add_deliveries();
  d->mutable_event();
  TimestampToProto(absl::UnixEpoch(), d->mutable_publish_time());
  d->mutable_decision();
  std::string got;
  AppendDelivery("", absl::UnixEpoch(), "", "", 0, &got);
  EXPECT_EQ(got, want.SerializeAsString());
}

}  // namespace
}  // namespace cityos
