// Emergency mode end to end, on a node with a simulated clock: a disaster
// authority declares an emergency (announced on the bus); rescuers read the
// evacuation list with diagnoses redacted and follow it live; when the
// window passes the reads are denied and the live subscription ends with
// PERMISSION_DENIED; decisions under the emergency are audited HIGH.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "cityos/clock.h"
#include "cityos/disaster/v1/disaster.pb.h"
#include "cityos/entity.h"
#include "cityos/event.h"
#include "service_fixture.h"

namespace cityos::exchange_test {
namespace {

constexpr char kEvac[] = "cityos.disaster.v1.EvacuationSupportEntry";

constexpr char kPolicy[] = R"(rules:
  - id: rescuers-evacuation-list
    effect: allow
    actions: [read, subscribe]
    principal: {roles: [rescuer]}
    resource:
      types: [cityos.disaster.v1.EvacuationSupportEntry]
    purposes: [disaster_response]
    when: {emergency: true}
    legal_basis: vital_interest
    obligations:
      - redact: [diagnosis]
)";

event::v1::Event Entry(const std::string& person, double lat, double lon) {
  disaster::v1::EvacuationSupportEntry e;
  e.set_person_id(person);
  e.set_address_area("CN-ZJ-QZ-KC-fuqian");
  e.mutable_location()->set_latitude(lat);
  e.mutable_location()->set_longitude(lon);
  e.add_needs(disaster::v1::SUPPORT_NEED_WHEELCHAIR);
  e.set_helpers_needed(2);
  e.set_diagnosis("Parkinson's disease");
  auto ev = EventBuilder()
                .Source("//test.city/welfare")
                .Subject("disaster.evac.kc." + person)
                .Type(kEvac)
                .Domain("disaster")
                .Classification(event::v1::CLASSIFICATION_SENSITIVE)
                .DataSubject(person)
                .Owner("welfare-office")
                .Region("CN-ZJ-QZ-KC")
                .Jurisdiction("CN")
                .Extension(kEntityIdExtension, person)
                .ProtoData(e)
                .Build();
  EXPECT_TRUE(ev.ok()) << ev.status();
  return *ev;
}

class ExchangeEmergencyTest : public ExchangeNodeTest {
 protected:
  void SetUp() override {
    ExchangeNodeTest::SetUp();
    ASSERT_NO_FATAL_FAILURE(StartNode("policy:\n  jurisdiction: CN\n", &clock_));
    ASSERT_NO_FATAL_FAILURE(LoadPolicy("disaster.yaml", kPolicy));
  }
  // The node's clock; destroyed after TearDown stopped the node.
  SimulatedClock clock_{absl::Now()};
};

TEST_F(ExchangeEmergencyTest, DeclareReadRedactedExpireDenied) {
  SimulatedClock& clock = clock_;
  ASSERT_NO_FATAL_FAILURE(
      Publish({Entry("p-1", 28.95, 118.86), Entry("p-2", 28.96, 118.87)}));
  WaitForEntity(kEvac, "p-1");
  WaitForEntity(kEvac, "p-2");

  Client& rescuer = NewClient("fire-dept", "team-1", {"rescuer"});
  Client& authority = NewClient("city", "dmo", {"disaster-authority"});
  auto query = [&](exchange::v1::QueryResponse* resp) {
    exchange::v1::QueryRequest req;
    req.mutable_filter()->set_type(kEvac);
    req.set_purpose("disaster_response");
    grpc::ClientContext ctx;
    Deadline(&ctx);
    return rescuer.exchange->Query(&ctx, req, resp);
  };
  // Before the emergency: nothing (denied as a whole, or every entity).
  {
    exchange::v1::QueryResponse resp;
    grpc::Status s = query(&resp);
    EXPECT_TRUE(s.ok() || s.error_code() == grpc::StatusCode::PERMISSION_DENIED)
        << s.error_message();
    EXPECT_EQ(resp.entities_size(), 0);
  }

  // The announcement goes out on the bus.
  auto announced = TheHooks().bus->Subscribe(TheHooks().Node(),
                                             {.subject_pattern = "disaster.emergency.>"});
  ASSERT_TRUE(announced.ok());
  exchange::v1::DeclareEmergencyRequest declare;
  auto* box = declare.mutable_area()->mutable_bounding_box();
  box->mutable_south_west()->set_latitude(28.9);
  box->mutable_south_west()->set_longitude(118.8);
  box->mutable_north_east()->set_latitude(29.0);
  box->mutable_north_east()->set_longitude(118.9);
  const absl::Time end = clock.Now() + absl::Hours(1);
  declare.mutable_window()->mutable_end()->set_seconds(absl::ToUnixSeconds(end));
  declare.set_reason("Typhoon No. 14: evacuation order level 4 for Kecheng");
  {
    grpc::ClientContext ctx;
    Deadline(&ctx);
    exchange::v1::DeclareEmergencyResponse resp;
    EXPECT_EQ(rescuer.exchange->DeclareEmergency(&ctx, declare, &resp).error_code(),
              grpc::StatusCode::PERMISSION_DENIED);
  }
  std::string emergency_id;
  {
    grpc::ClientContext ctx;
    Deadline(&ctx);
    exchange::v1::DeclareEmergencyResponse resp;
    grpc::Status s = authority.exchange->DeclareEmergency(&ctx, declare, &resp);
    ASSERT_TRUE(s.ok()) << s.error_message();
    emergency_id = resp.emergency().id();
    EXPECT_FALSE(emergency_id.empty());
  }
  {
    std::vector<Delivery> got;
    ASSERT_TRUE((*announced)->Next(1, absl::Seconds(10), &got).ok());
    ASSERT_EQ(got.size(), 1u);
    EXPECT_EQ(got[0].message->event().subject(), "disaster.emergency.declared.area");
    disaster::v1::EmergencyDeclaration payload;
    ASSERT_TRUE(got[0].message->event().proto_data().UnpackTo(&payload));
    EXPECT_EQ(payload.emergency_id(), emergency_id);
  }

  // Inside it: the list, diagnoses redacted.
  {
    exchange::v1::QueryResponse resp;
    grpc::Status s = query(&resp);
    ASSERT_TRUE(s.ok()) << s.error_message();
    ASSERT_EQ(resp.entities_size(), 2);
    for (const auto& e : resp.entities()) {
      EXPECT_FALSE(e.attributes().contains("diagnosis")) << e.id();
      EXPECT_TRUE(e.attributes().contains("needs")) << e.id();
      EXPECT_TRUE(e.attributes().contains("person_id")) << e.id();
    }
  }
  // And live.
  grpc::ClientContext sub_ctx;
  Deadline(&sub_ctx, absl::Seconds(60));
  exchange::v1::SubscribeRequest sub;
  sub.set_subject_pattern("disaster.evac.>");
  sub.set_purpose("disaster_response");
  sub.mutable_filter()->set_type(kEvac);
  auto reader = rescuer.exchange->Subscribe(&sub_ctx, sub);
  reader->WaitForInitialMetadata();
  ASSERT_NO_FATAL_FAILURE(Publish({Entry("p-3", 28.97, 118.85)}));
  exchange::v1::SubscribeResponse live;
  ASSERT_TRUE(reader->Read(&live));
  ASSERT_EQ(live.deliveries_size(), 1);
  disaster::v1::EvacuationSupportEntry entry;
  ASSERT_TRUE(live.deliveries(0).event().proto_data().UnpackTo(&entry));
  EXPECT_EQ(entry.person_id(), "p-3");
  EXPECT_TRUE(entry.diagnosis().empty());
  EXPECT_EQ(live.deliveries(0).decision().emergency_id(), emergency_id);

  // The window passes: the stream ends, reads are denied.
  clock.Advance(absl::Hours(2));
  while (reader->Read(&live)) {
  }
  grpc::Status ended = reader->Finish();
  EXPECT_EQ(ended.error_code(), grpc::StatusCode::PERMISSION_DENIED) << ended.error_message();
  {
    exchange::v1::QueryResponse resp;
    grpc::Status s = query(&resp);
    EXPECT_TRUE(s.ok() || s.error_code() == grpc::StatusCode::PERMISSION_DENIED);
    EXPECT_EQ(resp.entities_size(), 0);
  }
  {
    exchange::v1::ListEmergenciesRequest req;
    req.set_include_ended(true);
    grpc::ClientContext ctx;
    Deadline(&ctx);
    exchange::v1::ListEmergenciesResponse resp;
    ASSERT_TRUE(rescuer.exchange->ListEmergencies(&ctx, req, &resp).ok());
    ASSERT_EQ(resp.emergencies_size(), 1);
    EXPECT_EQ(resp.emergencies(0).state(), exchange::v1::EMERGENCY_STATE_EXPIRED);
  }
  // Decisions under the emergency are audited HIGH, naming it.
  {
    exchange::v1::QueryAuditRequest req;
    req.set_principal(rescuer.spiffe_id);
    req.set_min_severity(exchange::v1::SEVERITY_HIGH);
    grpc::ClientContext ctx;
    Deadline(&ctx);
    exchange::v1::QueryAuditResponse resp;
    grpc::Status s = Admin().exchange->QueryAudit(&ctx, req, &resp);
    ASSERT_TRUE(s.ok()) << s.error_message();
    bool read = false, subscribe = false;
    for (const auto& e : resp.entries()) {
      EXPECT_EQ(e.severity(), exchange::v1::SEVERITY_HIGH);
      if (e.emergency_id() != emergency_id) continue;
      read = read || e.action() == "read";
      subscribe = subscribe || e.action() == "subscribe";
    }
    EXPECT_TRUE(read);
    EXPECT_TRUE(subscribe);
  }
}

}  // namespace
}  // namespace cityos::exchange_test
