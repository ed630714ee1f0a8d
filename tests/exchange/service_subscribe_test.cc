// ExchangeService.Subscribe over real mTLS: obligations on nested fields of
// every delivered event, per-event consent (a subject without consent is
// skipped, the stream goes on), a consent revocation cutting a live
// subscription (latency measured over many iterations), request validation,
// and resuming from a token on a captured subject.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_format.h"
#include "cityos/entity.h"
#include "cityos/event.h"
#include "cityos/health/v1/health.pb.h"
#include "google/protobuf/util/message_differencer.h"
#include "service_fixture.h"

namespace cityos::exchange_test {
namespace {

using ::testing::HasSubstr;

constexpr char kPolicy[] = R"(data_categories:
  - name: care.alerts
    subjects: ["health.alert.>"]
rules:
  - id: care-alerts
    effect: allow
    actions: [subscribe, history, read]
    principal: {orgs: [care-center]}
    resource:
      types: [cityos.health.v1.ElderlyCareAlert]
    purposes: [elderly_care]
    obligations:
      - redact: [vitals.heart_rate_bpm, message]
)";

event::v1::Event Alert(const std::string& person, const std::string& id, double heart_rate) {
  health::v1::ElderlyCareAlert a;
  a.set_alert_id(id);
  a.set_kind(health::v1::CARE_ALERT_KIND_FALL_DETECTED);
  a.set_device_id("dev-" + person);
  a.set_message("fell in the kitchen, calling daughter");
  a.mutable_vitals()->set_heart_rate_bpm(heart_rate);
  a.mutable_vitals()->set_spo2_percent(97);
  return CareAlertEvent(person, id, a);
}

class ExchangeSubscribeTest : public ExchangeNodeTest {
 protected:
  void SetUp() override {
    ExchangeNodeTest::SetUp();
    ASSERT_NO_FATAL_FAILURE(StartNode(
        "bus:\n  streams:\n    - name: care\n      subjects: [\"health.alert.>\"]\n      durability: none\n"
        "policy:\n  jurisdiction: JP\n"));
    ASSERT_NO_FATAL_FAILURE(LoadPolicy("care.yaml", kPolicy));
  }

  struct Stream {
    std::unique_ptr<grpc::ClientContext> ctx = std::make_unique<grpc::ClientContext>();
    std::unique_ptr<grpc::ClientReader<exchange::v1::SubscribeResponse>> reader;
  };

  Stream Open(Client& c, exchange::v1::SubscribeRequest req) {
    Stream s;
    Deadline(s.ctx.get(), absl::Seconds(60));
    s.reader = c.exchange->Subscribe(s.ctx.get(), req);
    s.reader->WaitForInitialMetadata();
    return s;
  }

  static exchange::v1::SubscribeRequest Request(const std::string& pattern,
                                                const std::string& data_subject = "") {
    exchange::v1::SubscribeRequest req;
    req.set_subject_pattern(pattern);
    req.set_purpose("elderly_care");
    req.mutable_filter()->set_type(kCareAlert);
    req.mutable_filter()->set_data_subject(data_subject);
    return req;
  }

  // Reads one delivery (skipping empty responses).
  static bool ReadOne(Stream& s, exchange::v1::ExchangeDelivery* out) {
    exchange::v1::SubscribeResponse resp;
    while (s.reader->Read(&resp)) {
      if (resp.deliveries_size() > 0) {
        *out = resp.deliveries(0);
        return true;
      }
    }
    return false;
  }
};

TEST_F(ExchangeSubscribeTest, EveryEventIsDecidedAndRedactedOnNestedFields) {
  TheHooks().consent.Grant("care-center", "p-1");
  Client& center = NewClient("care-center", "monitor");
  Stream s = Open(center, Request("health.alert.>"));
  // p-2 gave no consent: its alert is left out, the stream goes on.
  ASSERT_NO_FATAL_FAILURE(Publish({Alert("p-2", "a-0", 80), Alert("p-1", "a-1", 120)}));
  exchange::v1::ExchangeDelivery d;
  ASSERT_TRUE(ReadOne(s, &d));
  EXPECT_EQ(d.event().data_subject(), "p-1");
  EXPECT_EQ(d.decision().effect(), exchange::v1::EFFECT_ALLOW);
  EXPECT_THAT(d.decision().rule_ids(), ::testing::ElementsAre("care-alerts"));
  EXPECT_THAT(d.resume_token(), ::testing::StartsWith("care:"));
  health::v1::ElderlyCareAlert got;
  ASSERT_TRUE(d.event().proto_data().UnpackTo(&got));
  EXPECT_EQ(got.alert_id(), "a-1");
  EXPECT_FALSE(got.vitals().has_heart_rate_bpm()) << "nested field must be redacted";
  EXPECT_DOUBLE_EQ(got.vitals().spo2_percent(), 97);
  EXPECT_TRUE(got.message().empty());
  // The raw event on the bus is untouched (obligations act on the copy).
  s.ctx->TryCancel();
  s.reader->Finish();
}

// The filter selects events by entity id and by attribute; conditions on a
// redacted field never match (filtering must not reveal a redacted value).
TEST_F(ExchangeSubscribeTest, FilterSelectsByIdAndAttributeOnTheRedactedCopy) {
  TheHooks().consent.Grant("care-center", "p-1");
  Client& center = NewClient("care-center", "monitor");
  exchange::v1::SubscribeRequest req = Request("health.alert.>");
  req.mutable_filter()->add_ids("a-2");
  req.mutable_filter()->add_ids("a-3");
  auto* low_oxygen = req.mutable_filter()->add_attributes();
  low_oxygen->set_path("vitals.spo2_percent");
  low_oxygen->set_comparison(exchange::v1::COMPARISON_LESS);
  low_oxygen->mutable_value()->set_double_value(95);
  Stream s = Open(center, req);
  exchange::v1::SubscribeRequest on_redacted = Request("health.alert.>");
  auto* heart = on_redacted.mutable_filter()->add_attributes();
  heart->set_path("vitals.heart_rate_bpm");
  heart->set_comparison(exchange::v1::COMPARISON_EXISTS);
  // This one runs until its deadline: reading to the end then sees every
  // delivery it got (a cancelled reader drops what is buffered).
  Stream r;
  Deadline(r.ctx.get(), absl::Seconds(3));
  r.reader = center.exchange->Subscribe(r.ctx.get(), on_redacted);
  r.reader->WaitForInitialMetadata();

  auto alert = [](const std::string& id, double spo2) {
    event::v1::Event e = Alert("p-1", id, 120);
    health::v1::ElderlyCareAlert a;
    EXPECT_TRUE(e.proto_data().UnpackTo(&a));
    a.mutable_vitals()->set_spo2_percent(spo2);
    return CareAlertEvent("p-1", id, a);
  };
  // a-1: wrong id; a-2: oxygen fine; a-3: the one that matches.
  ASSERT_NO_FATAL_FAILURE(Publish({alert("a-1", 90), alert("a-2", 97), alert("a-3", 91)}));
  exchange::v1::ExchangeDelivery d;
  ASSERT_TRUE(ReadOne(s, &d));
  EXPECT_EQ(d.event().extensions().at(kEntityIdExtension), "a-3");
  // Nothing reaches the subscription filtering on the redacted heart rate
  // before its deadline (a broken filter would have delivered four events).
  ASSERT_NO_FATAL_FAILURE(Publish({alert("a-2", 80)}));
  ASSERT_TRUE(ReadOne(s, &d));
  EXPECT_EQ(d.event().extensions().at(kEntityIdExtension), "a-2");
  exchange::v1::SubscribeResponse resp;
  int delivered = 0;
  while (r.reader->Read(&resp)) delivered += resp.deliveries_size();
  EXPECT_EQ(delivered, 0) << "a condition on a redacted field must never match";
  r.reader->Finish();
  s.ctx->TryCancel();
  s.reader->Finish();
}

TEST_F(ExchangeSubscribeTest, ValidationAndDenialBeforeAnythingIsRead) {
  Client& center = NewClient("care-center", "monitor");
  Client& stranger = NewClient("stranger", "x");
  auto code = [&](Client& c, exchange::v1::SubscribeRequest req) {
    grpc::ClientContext ctx;
    Deadline(&ctx, absl::Seconds(20));
    auto reader = c.exchange->Subscribe(&ctx, req);
    exchange::v1::SubscribeResponse resp;
    while (reader->Read(&resp)) {
    }
    return reader->Finish();
  };
  exchange::v1::SubscribeRequest bad = Request("health..alert");
  EXPECT_EQ(code(center, bad).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  exchange::v1::SubscribeRequest purpose = Request("health.alert.>");
  purpose.set_purpose("snooping");
  grpc::Status s = code(center, purpose);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(s.error_message(), HasSubstr("unknown purpose \"snooping\""));
  exchange::v1::SubscribeRequest both = Request("health.alert.>");
  both.mutable_start_time()->set_seconds(1);
  both.set_resume_token("care:1");
  EXPECT_EQ(code(center, both).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(code(stranger, Request("health.alert.>")).error_code(),
            grpc::StatusCode::PERMISSION_DENIED);
}

TEST_F(ExchangeSubscribeTest, ConsentRevocationCutsALiveSubscriptionAndMeasuresTheCut) {
  Client& center = NewClient("care-center", "monitor");
  PolicyDecisionPoint* pdp = TheHooks().pdp;
  std::vector<double> ms;
  constexpr int kIterations = 25;
  for (int i = 0; i < kIterations; ++i) {
    const std::string person = absl::StrFormat("p-cut-%d", i);
    TheHooks().consent.Grant("care-center", person);
    Stream s = Open(center, Request("health.alert." + person, person));
    ASSERT_NO_FATAL_FAILURE(Publish({Alert(person, "c-" + std::to_string(i), 90)}));
    exchange::v1::ExchangeDelivery d;
    ASSERT_TRUE(ReadOne(s, &d)) << "iteration " << i;
    const absl::Time t0 = absl::Now();
    TheHooks().consent.Revoke(pdp, "care-center", person);
    exchange::v1::SubscribeResponse resp;
    while (s.reader->Read(&resp)) {
    }
    grpc::Status status = s.reader->Finish();
    const absl::Duration took = absl::Now() - t0;
    ASSERT_EQ(status.error_code(), grpc::StatusCode::PERMISSION_DENIED)
        << "iteration " << i << ": " << status.error_message();
    ms.push_back(absl::ToDoubleMilliseconds(took));
  }
  ReportCutLatency(std::move(ms), "consent revocation -> stream ended");
}

TEST_F(ExchangeSubscribeTest, ResumesAfterATokenOnACapturedSubject) {
  TheHooks().consent.Grant("care-center", "p-1");
  Client& center = NewClient("care-center", "monitor");
  std::string token;
  {
    Stream s = Open(center, Request("health.alert.p-1"));
    ASSERT_NO_FATAL_FAILURE(Publish({Alert("p-1", "r-1", 70), Alert("p-1", "r-2", 71)}));
    exchange::v1::ExchangeDelivery d;
    ASSERT_TRUE(ReadOne(s, &d));
    token = d.resume_token();
    s.ctx->TryCancel();
    s.reader->Finish();
  }
  ASSERT_NO_FATAL_FAILURE(Publish({Alert("p-1", "r-3", 72)}));
  exchange::v1::SubscribeRequest req = Request("health.alert.p-1");
  req.set_resume_token(token);
  Stream s = Open(center, req);
  std::vector<std::string> ids;
  while (ids.size() < 2) {
    exchange::v1::SubscribeResponse resp;
    ASSERT_TRUE(s.reader->Read(&resp));
    for (const auto& d : resp.deliveries()) {
      health::v1::ElderlyCareAlert a;
      ASSERT_TRUE(d.event().proto_data().UnpackTo(&a));
      ids.push_back(a.alert_id());
      EXPECT_FALSE(a.vitals().has_heart_rate_bpm());  // replayed: obligated too
    }
  }
  EXPECT_EQ(ids, (std::vector<std::string>{"r-2", "r-3"}));
  s.ctx->TryCancel();
  s.reader->Finish();
  // A token of a stream that does not exist is NOT_FOUND.
  req.set_resume_token("nostream:5");
  grpc::ClientContext ctx;
  Deadline(&ctx);
  auto reader = center.exchange->Subscribe(&ctx, req);
  exchange::v1::SubscribeResponse resp;
  while (reader->Read(&resp)) {
  }
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::NOT_FOUND);
}


// Replayed events are delivered from the stored bytes (envelope read off the
// wire, redaction applied on the wire, the bytes framed as the response);
// live ones from the parsed event. Both must give the same deliveries: the
// same events after obligations, decisions, publish times and tokens, parsed
// with the public types. Also with an id filter and an attribute filter
// (they are matched on the entity view of the obligated event, so replay
// takes the parsed path for them).
TEST_F(ExchangeSubscribeTest, ReplayFromStoredBytesEqualsLiveDelivery) {
  TheHooks().consent.Grant("care-center", "p-1");
  TheHooks().consent.Grant("care-center", "p-3");
  Client& center = NewClient("care-center", "monitor");
  exchange::v1::SubscribeRequest plain = Request("health.alert.>");
  exchange::v1::SubscribeRequest by_id = Request("health.alert.>");
  by_id.mutable_filter()->add_ids("w-2");
  by_id.mutable_filter()->add_ids("w-4");
  exchange::v1::SubscribeRequest by_attribute = Request("health.alert.>");
  auto* c = by_attribute.mutable_filter()->add_attributes();
  c->set_path("vitals.spo2_percent");
  c->set_comparison(exchange::v1::COMPARISON_GREATER_OR_EQUAL);
  c->mutable_value()->set_double_value(97);
  const std::vector<exchange::v1::SubscribeRequest> requests = {plain, by_id, by_attribute};
  std::vector<Stream> live;
  for (const auto& r : requests) live.push_back(Open(center, r));

  std::vector<event::v1::Event> events;
  for (int i = 0; i < 6; ++i) {
    // p-2 gave no consent: denied in both paths.
    const std::string person = i % 3 == 0 ? "p-1" : i % 3 == 1 ? "p-2" : "p-3";
    event::v1::Event e = Alert(person, "w-" + std::to_string(i), 100 + i);
    (*e.mutable_extensions())["note"] = "extension " + std::to_string(i);
    events.push_back(std::move(e));
  }
  ASSERT_NO_FATAL_FAILURE(Publish(events));

  // Reads `n` deliveries from `s` (fails on a shorter stream).
  auto read = [](Stream& s, size_t n) {
    std::vector<exchange::v1::ExchangeDelivery> out;
    exchange::v1::SubscribeResponse resp;
    while (out.size() < n && s.reader->Read(&resp)) {
      for (const auto& d : resp.deliveries()) out.push_back(d);
    }
    EXPECT_EQ(out.size(), n);
    return out;
  };
  const std::vector<size_t> expected = {4, 1, 4};  // p-1 and p-3: w-0, w-2, w-3, w-5
  for (size_t k = 0; k < requests.size(); ++k) {
    SCOPED_TRACE(k);
    std::vector<exchange::v1::ExchangeDelivery> from_live = read(live[k], expected[k]);
    exchange::v1::SubscribeRequest replay = requests[k];
    replay.mutable_start_time()->set_seconds(1);
    Stream r = Open(center, replay);
    std::vector<exchange::v1::ExchangeDelivery> from_log = read(r, expected[k]);
    ASSERT_EQ(from_live.size(), from_log.size());
    for (size_t i = 0; i < from_live.size(); ++i) {
      SCOPED_TRACE(i);
      // The decision differs only in the action the rule allowed
      // (subscribe live, history replayed): both name the same rule.
      EXPECT_THAT(from_log[i].decision().rule_ids(),
                  ::testing::ElementsAreArray(from_live[i].decision().rule_ids()));
      EXPECT_EQ(from_log[i].decision().effect(), exchange::v1::EFFECT_ALLOW);
      EXPECT_EQ(from_log[i].decision().obligations_size(),
                from_live[i].decision().obligations_size());
      EXPECT_TRUE(google::protobuf::util::MessageDifferencer::Equals(from_log[i].event(),
                                                                     from_live[i].event()))
          << from_log[i].event().ShortDebugString() << "\n"
          << from_live[i].event().ShortDebugString();
      EXPECT_TRUE(google::protobuf::util::MessageDifferencer::Equals(
          from_log[i].publish_time(), from_live[i].publish_time()));
      EXPECT_EQ(from_log[i].resume_token(), from_live[i].resume_token());
      health::v1::ElderlyCareAlert a;
      ASSERT_TRUE(from_log[i].event().proto_data().UnpackTo(&a));
      EXPECT_FALSE(a.vitals().has_heart_rate_bpm());
      EXPECT_TRUE(a.message().empty());
      EXPECT_EQ(a.vitals().spo2_percent(), 97);
      EXPECT_NE(from_log[i].event().data_subject(), "p-2");
    }
    r.ctx->TryCancel();
    r.reader->Finish();
  }
  for (Stream& s : live) {
    s.ctx->TryCancel();
    s.reader->Finish();
  }
}

TEST_F(ExchangeSubscribeTest, NodeShutdownEndsStreamsWithUnavailable) {
  TheHooks().consent.Grant("care-center", "p-1");
  Client& center = NewClient("care-center", "monitor");
  Stream s = Open(center, Request("health.alert.>"));
  ASSERT_NO_FATAL_FAILURE(Publish({Alert("p-1", "u-1", 60)}));
  exchange::v1::ExchangeDelivery d;
  ASSERT_TRUE(ReadOne(s, &d));
  std::thread stopper([this] { node_->Shutdown(); });
  exchange::v1::SubscribeResponse resp;
  while (s.reader->Read(&resp)) {
  }
  grpc::Status status = s.reader->Finish();
  stopper.join();
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE) << status.error_message();
}

}  // namespace
}  // namespace cityos::exchange_test
