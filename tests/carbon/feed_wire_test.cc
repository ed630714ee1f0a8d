// ParseFeedResponse (services/carbon/feed_wire.h): the carbon feed reads
// Subscribe responses from their bytes; every field it hands out must be what
// a full protobuf parse of the response says, and malformed bytes must be
// refused with nothing handed out.
#include "feed_wire.h"

#include <gtest/gtest.h>

#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "cityos/carbon/v1/carbon.pb.h"
#include "cityos/event.h"
#include "cityos/exchange/v1/exchange.pb.h"
#include "google/protobuf/stubs/logging.h"
#include "google/protobuf/util/message_differencer.h"

namespace cityos::carbon {
namespace {

using ::google::protobuf::util::MessageDifferencer;
namespace xv1 = ::cityos::exchange::v1;

v1::MeterReading Reading(const std::string& meter, double kwh) {
  v1::MeterReading r;
  r.set_meter_id(meter);
  r.set_energy_kind(v1::ENERGY_KIND_ELECTRICITY);
  r.set_reading_kind(v1::READING_KIND_INTERVAL);
  r.set_value(kwh);
  r.set_unit("kWh");
  r.mutable_interval_start()->set_seconds(1700000000);
  r.mutable_interval_end()->set_seconds(1700000900);
  return r;
}

event::v1::Event ReadingEvent(const std::string& meter, double kwh) {
  absl::StatusOr<event::v1::Event> e =
      EventBuilder()
          .Source("//test.city/meters")
          .Subject("carbon.meter.reading.quzhou.kecheng")
          .Classification(event::v1::CLASSIFICATION_INTERNAL)
          .Owner("quzhou-grid")
          .Region("CN-ZJ-QZ-KC")
          .ProtoData(Reading(meter, kwh))
          .Build();
  EXPECT_TRUE(e.ok()) << e.status();
  return *e;
}

event::v1::Event TextEvent() {
  absl::StatusOr<event::v1::Event> e =
      EventBuilder()
          .Source("//test.city/metro")
          .Subject("mobility.trip.metro")
          .Type("cityos.mobility.v1.Trip")
          .Classification(event::v1::CLASSIFICATION_PERSONAL)
          .Owner("metro")
          .DataSubject("person-1")
          .Jurisdiction("CN")
          .TextData("text/plain", "a ride")
          .Build();
  EXPECT_TRUE(e.ok()) << e.status();
  return *e;
}

xv1::SubscribeResponse Response() {
  xv1::SubscribeResponse resp;
  for (int i = 0; i < 3; ++i) {
    xv1::ExchangeDelivery* d = resp.add_deliveries();
    *d->mutable_event() = ReadingEvent("ent/m-" + std::to_string(i), 10 + i);
    d->mutable_publish_time()->set_seconds(1700000000 + i);
    d->mutable_decision()->set_effect(xv1::EFFECT_ALLOW);
    d->mutable_decision()->add_rule_ids("carbon-office-reads-readings");
    d->set_resume_token("tok-" + std::to_string(i));
  }
  xv1::ExchangeDelivery* p = resp.add_deliveries();
  *p->mutable_event() = TextEvent();
  p->mutable_decision()->set_consent_id("consent-7");
  // An event whose data is bytes; no token (not stored).
  xv1::ExchangeDelivery* b = resp.add_deliveries();
  *b->mutable_event() = ReadingEvent("ent/m-9", 1);
  b->mutable_event()->set_binary_data(std::string("\xff\x00\x01", 3));
  resp.set_missed(7);
  return resp;
}

// What ParseFeedResponse handed out agrees with the full parse `want`.
void ExpectAgrees(const xv1::SubscribeResponse& want,
                  const std::vector<FeedDelivery>& got, uint64_t missed) {
  ASSERT_EQ(got.size(), static_cast<size_t>(want.deliveries_size()));
  EXPECT_EQ(missed, want.missed());
  for (int i = 0; i < want.deliveries_size(); ++i) {
    SCOPED_TRACE(i);
    const xv1::ExchangeDelivery& w = want.deliveries(i);
    const FeedDelivery& d = got[static_cast<size_t>(i)];
    EXPECT_EQ(d.id, w.event().id());
    EXPECT_EQ(d.type, w.event().type());
    EXPECT_EQ(d.owner, w.event().owner());
    EXPECT_EQ(d.consent_id, w.decision().consent_id());
    EXPECT_EQ(d.resume_token, w.resume_token());
    EXPECT_EQ(d.has_proto_data, w.event().has_proto_data());
    if (w.event().has_proto_data()) {
      EXPECT_EQ(d.proto_type_url, w.event().proto_data().type_url());
      EXPECT_EQ(d.proto_value, w.event().proto_data().value());
    }
    event::v1::Event e;
    ASSERT_TRUE(d.ParseEvent(&e));
    EXPECT_TRUE(MessageDifferencer::Equals(e, w.event()))
        << e.DebugString() << "\nvs\n"
        << w.event().DebugString();
    v1::MeterReading want_reading, got_reading;
    const bool want_ok = w.event().proto_data().UnpackTo(&want_reading);
    EXPECT_EQ(d.UnpackTo(&got_reading), want_ok);
    if (want_ok) {
      EXPECT_TRUE(MessageDifferencer::Equals(got_reading, want_reading));
    }
  }
}

TEST(FeedWireTest, DeliveriesAreWhatAFullParseSays) {
  const xv1::SubscribeResponse resp = Response();
  auto holder = FeedResponse::Copy(resp.SerializeAsString());
  std::vector<FeedDelivery> got;
  uint64_t missed = 0;
  ASSERT_TRUE(ParseFeedResponse(holder, 3, &got, &missed).ok());
  ExpectAgrees(resp, got, missed);
  for (const FeedDelivery& d : got) {
    EXPECT_EQ(d.pattern, 3u);
    EXPECT_EQ(d.keep.get(), holder.get());
  }
  // The reading events carry a MeterReading; the others do not.
  EXPECT_TRUE(got[0].ProtoDataIs("cityos.carbon.v1.MeterReading"));
  v1::MeterReading r;
  ASSERT_TRUE(got[1].UnpackTo(&r));
  EXPECT_EQ(r.meter_id(), "ent/m-1");
  EXPECT_EQ(r.value(), 11);
  EXPECT_FALSE(got[3].has_proto_data);
  EXPECT_FALSE(got[3].UnpackTo(&r));
  EXPECT_FALSE(got[4].has_proto_data);  // binary_data replaced proto_data
  EXPECT_EQ(got[3].consent_id, "consent-7");
  EXPECT_EQ(got[4].resume_token, "");
  // Appends: a second response goes after the first.
  ASSERT_TRUE(ParseFeedResponse(holder, 0, &got, &missed).ok());
  EXPECT_EQ(got.size(), 10u);
}

TEST(FeedWireTest, EmptyResponse) {
  std::vector<FeedDelivery> got;
  uint64_t missed = 5;
  ASSERT_TRUE(ParseFeedResponse(FeedResponse::Copy(""), 0, &got, &missed).ok());
  EXPECT_TRUE(got.empty());
  EXPECT_EQ(missed, 0u);
}

TEST(FeedWireTest, TypeUrlMatchesAsAnyDoes) {
  FeedDelivery d;
  d.has_proto_data = true;
  d.proto_type_url = "type.googleapis.com/cityos.carbon.v1.MeterReading";
  EXPECT_TRUE(d.ProtoDataIs("cityos.carbon.v1.MeterReading"));
  d.proto_type_url = "example.com/x/cityos.carbon.v1.MeterReading";
  EXPECT_TRUE(d.ProtoDataIs("cityos.carbon.v1.MeterReading"));
  d.proto_type_url = "cityos.carbon.v1.MeterReading";
  EXPECT_FALSE(d.ProtoDataIs("cityos.carbon.v1.MeterReading"));
  d.proto_type_url = "type.googleapis.com/cityos.carbon.v1.MeterReadingX";
  EXPECT_FALSE(d.ProtoDataIs("cityos.carbon.v1.MeterReading"));
  d.proto_type_url = "type.googleapis.com/xcityos.carbon.v1.MeterReading";
  EXPECT_FALSE(d.ProtoDataIs("cityos.carbon.v1.MeterReading"));
  d.has_proto_data = false;
  d.proto_type_url = "type.googleapis.com/cityos.carbon.v1.MeterReading";
  EXPECT_FALSE(d.ProtoDataIs("cityos.carbon.v1.MeterReading"));
}

std::string Tag(uint32_t field, uint32_t wire_type) {
  std::string s;
  uint64_t v = (static_cast<uint64_t>(field) << 3) | wire_type;
  while (v >= 0x80) {
    s.push_back(static_cast<char>(v | 0x80));
    v >>= 7;
  }
  s.push_back(static_cast<char>(v));
  return s;
}

std::string Len(uint32_t field, const std::string& bytes) {
  std::string s = Tag(field, 2);
  uint64_t v = bytes.size();
  while (v >= 0x80) {
    s.push_back(static_cast<char>(v | 0x80));
    v >>= 7;
  }
  s.push_back(static_cast<char>(v));
  return s + bytes;
}

// Wire a serializer never writes but a parser accepts: an event in two
// pieces (merged), repeated scalars (last wins), proto_data after text_data
// (the oneof switches), unknown fields including a group, a field of a known
// number with another wire type.
TEST(FeedWireTest, ParseRulesOfUnusualWire) {
  event::v1::Event a = ReadingEvent("ent/m-1", 10);
  event::v1::Event piece2;
  piece2.set_owner("other-org");
  piece2.set_text_data("now text");
  event::v1::Event piece3;
  piece3.mutable_proto_data()->set_type_url(
      "type.googleapis.com/cityos.carbon.v1.MeterReading");
  piece3.mutable_proto_data()->set_value(
      Reading("ent/m-2", 20).SerializeAsString());
  std::string unknown =
      Tag(99, 0) + std::string("\x05", 1) + Tag(98, 3) + Tag(1, 0) +
      std::string("\x01", 1) + Tag(98, 4) + Tag(97, 5) + std::string(4, 'x') +
      Tag(96, 1) + std::string(8, 'y');
  xv1::Decision d1, d2;
  d1.set_consent_id("c-1");
  d2.set_reason("merged");
  d2.set_consent_id("c-2");
  std::string delivery = Len(1, a.SerializeAsString()) + unknown +
                         Len(4, "tok-a") + Len(3, d1.SerializeAsString()) +
                         Len(1, piece2.SerializeAsString() + unknown) +
                         Len(3, d2.SerializeAsString()) + Len(4, "tok-b") +
                         Len(1, piece3.SerializeAsString()) +
                         Tag(4, 0) + std::string("\x01", 1);
  std::string wire = Len(1, delivery) + Tag(2, 0) + std::string("\x03", 1) +
                     unknown + Len(1, Len(1, TextEvent().SerializeAsString())) +
                     Tag(2, 0) + std::string("\x04", 1) + Tag(1, 0) +
                     std::string("\x02", 1);
  xv1::SubscribeResponse want;
  ASSERT_TRUE(want.ParseFromString(wire));
  std::vector<FeedDelivery> got;
  uint64_t missed = 0;
  ASSERT_TRUE(ParseFeedResponse(FeedResponse::Copy(wire), 0, &got, &missed).ok());
  ExpectAgrees(want, got, missed);
  ASSERT_EQ(got.size(), 2u);
  EXPECT_EQ(got[0].owner, "other-org");
  EXPECT_EQ(got[0].consent_id, "c-2");
  EXPECT_EQ(got[0].resume_token, "tok-b");
  EXPECT_TRUE(got[0].has_proto_data);
  EXPECT_EQ(missed, 4u);
}

TEST(FeedWireTest, MalformedIsDataLossAndHandsOutNothing) {
  const std::string good = Response().SerializeAsString();
  std::vector<FeedDelivery> got(1);  // what was there stays
  uint64_t missed = 9;
  auto check_fails = [&](const std::string& wire, const std::string& what) {
    SCOPED_TRACE(what);
    absl::Status s =
        ParseFeedResponse(FeedResponse::Copy(wire), 0, &got, &missed);
    EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << s;
    EXPECT_NE(s.message().find("malformed"), std::string_view::npos) << s;
    EXPECT_EQ(got.size(), 1u);
    EXPECT_EQ(missed, 9u);
  };
  check_fails(good.substr(0, good.size() - 1), "truncated");
  check_fails(good + Tag(0, 0) + "\x01", "field number 0");
  check_fails(good + Tag(5, 4), "end group without start");
  check_fails(good + Tag(5, 3) + Tag(1, 0) + "\x01", "unterminated group");
  check_fails(good + Tag(5, 7), "wire type 7");
  check_fails(good + Tag(2, 0) + std::string(11, '\xff'), "11-byte varint");
  check_fails(good + Tag(1, 2) + "\xff\xff\xff\xff\x0f", "length overruns");
  // Invalid UTF-8 in the event id (a string field the feed reads).
  event::v1::Event e = ReadingEvent("ent/m-1", 1);
  e.set_id("bad\xc3");
  check_fails(Len(1, Len(1, e.SerializePartialAsString())), "bad UTF-8 in id");
  xv1::Decision dec;
  dec.set_consent_id("x\xff");
  check_fails(Len(1, Len(3, dec.SerializePartialAsString())),
              "bad UTF-8 in consent_id");
  // A delivery that is not a message.
  check_fails(Len(1, std::string("\xff", 1)), "delivery not a message");
}

// Every prefix of a valid response: the reading succeeds exactly when a full
// parse does, and then agrees with it.
TEST(FeedWireTest, PrefixesAgreeWithFullParse) {
  const std::string good = Response().SerializeAsString();
  for (size_t n = 0; n <= good.size(); ++n) {
    const std::string wire = good.substr(0, n);
    xv1::SubscribeResponse want;
    const bool want_ok = want.ParseFromString(wire);
    std::vector<FeedDelivery> got;
    uint64_t missed = 0;
    const bool got_ok =
        ParseFeedResponse(FeedResponse::Copy(wire), 0, &got, &missed).ok();
    ASSERT_EQ(got_ok, want_ok) << "prefix of " << n << " bytes";
    if (want_ok) ExpectAgrees(want, got, missed);
  }
}

// Random corruptions: whenever a full parse accepts the bytes, the reading
// accepts them too and agrees with it (it may refuse less: it does not look
// at fields it does not read).
TEST(FeedWireTest, CorruptionsAgreeWithFullParseWhenItAccepts) {
  const std::string good = Response().SerializeAsString();
  google::protobuf::LogSilencer quiet;  // the full parse's UTF-8 complaints
  std::mt19937 rng(42);
  int accepted = 0;
  for (int iter = 0; iter < 3000; ++iter) {
    std::string wire = good;
    const int flips = 1 + static_cast<int>(rng() % 3);
    for (int k = 0; k < flips; ++k) {
      wire[rng() % wire.size()] = static_cast<char>(rng() & 0xff);
    }
    xv1::SubscribeResponse want;
    if (!want.ParseFromString(wire)) continue;
    ++accepted;
    std::vector<FeedDelivery> got;
    uint64_t missed = 0;
    absl::Status s =
        ParseFeedResponse(FeedResponse::Copy(wire), 0, &got, &missed);
    ASSERT_TRUE(s.ok()) << "iteration " << iter << ": " << s;
    ExpectAgrees(want, got, missed);
    if (HasFailure()) FAIL() << "iteration " << iter;
  }
  EXPECT_GT(accepted, 100);  // the property was exercised
}

TEST(FeedWireTest, BufferPoolReusesBuffers) {
  auto pool = std::make_shared<FeedBufferPool>(2);
  const char* first = nullptr;
  {
    std::shared_ptr<FeedResponse> r = pool->Make(1000);
    EXPECT_EQ(r->size, 1000u);
    EXPECT_GE(r->capacity, 1000u);
    first = r->data.get();
    EXPECT_EQ(pool->idle(), 0u);
  }
  EXPECT_EQ(pool->idle(), 1u);  // back when the response was dropped
  {
    std::shared_ptr<FeedResponse> r = pool->Make(900);
    EXPECT_EQ(r->data.get(), first);  // reused
    EXPECT_EQ(r->size, 900u);
    EXPECT_EQ(pool->idle(), 0u);
    std::shared_ptr<FeedResponse> big = pool->Make(1 << 20);
    EXPECT_NE(big->data.get(), first);
    EXPECT_GE(big->capacity, size_t{1} << 20);
    std::shared_ptr<FeedResponse> third = pool->Make(10);
  }
  EXPECT_EQ(pool->idle(), 2u);  // at most two kept: the larger ones
  std::shared_ptr<FeedResponse> r = pool->Make(1 << 20);
  EXPECT_GE(r->capacity, size_t{1} << 20);
  EXPECT_EQ(pool->idle(), 1u);
  // A response parsed from a pooled buffer keeps it while a delivery lives.
  const std::string wire = Response().SerializeAsString();
  std::shared_ptr<FeedResponse> resp = pool->Make(wire.size());
  std::memcpy(resp->data.get(), wire.data(), wire.size());
  std::vector<FeedDelivery> got;
  uint64_t missed = 0;
  ASSERT_TRUE(ParseFeedResponse(resp, 0, &got, &missed).ok());
  resp.reset();
  const size_t idle = pool->idle();
  got.resize(1);
  EXPECT_EQ(pool->idle(), idle);
  EXPECT_EQ(got[0].type, "cityos.carbon.v1.MeterReading");
  got.clear();
  EXPECT_EQ(pool->idle(), idle + 1);
}

}  // namespace
}  // namespace cityos::carbon
