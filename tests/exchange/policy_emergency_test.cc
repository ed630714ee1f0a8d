// Emergencies: validation, states from the clock, area-bound rules,
// expiry told to watchers, EndEmergency, persistence, audit.
#include <atomic>
#include <string>
#include <vector>

#include "absl/synchronization/notification.h"
#include "cityos/clock.h"
#include "cityos/id.h"
#include "cityos/policy.h"
#include "gtest/gtest.h"
#include "policy/geo.h"
#include "policy_test_util.h"
#include "testutil.h"

namespace cityos::policy_test {
namespace {

// Rescuers read the list of people needing evacuation help, diagnoses
// redacted, only inside an emergency covering them (docs/policies.md).
constexpr char kDisaster[] = R"(
rules:
  - id: rescuers-read-evacuation-list
    effect: allow
    actions: [read, subscribe]
    principal: {roles: [rescuer]}
    resource:
      types: [cityos.care.v1.EvacuationNeed]
    purposes: [disaster_response]
    when: {emergency: true}
    legal_basis: vital_interest
    obligations:
      - redact: [diagnosis]
)";

common::v1::GeoArea Circle(double lat, double lon, double r) {
  common::v1::GeoArea a;
  a.mutable_circle()->mutable_center()->set_latitude(lat);
  a.mutable_circle()->mutable_center()->set_longitude(lon);
  a.mutable_circle()->set_radius_m(r);
  return a;
}

common::v1::GeoArea Region(const std::string& code) {
  common::v1::GeoArea a;
  a.set_region(code);
  return a;
}

struct Fixture {
  Fixture() : clock(Monday10()) {}
  SimulatedClock clock;
  RecordingAudit audit;
};

AccessRequest EvacRead(const Principal* p, double lat, double lon) {
  AccessRequest req{
      .principal = p, .action = Action::kRead, .purpose = "disaster_response"};
  req.resource.type = "cityos.care.v1.EvacuationNeed";
  req.resource.classification = event::v1::CLASSIFICATION_SENSITIVE;
  req.resource.data_subject = "resident-4";
  req.resource.location = std::make_pair(lat, lon);
  return req;
}

TEST(PolicyEmergency, DeclarationIsValidated) {
  Fixture f;
  auto pdp = MakePdp(&f.clock, "");
  const Principal who = Admin();
  auto code = [&](EmergencyDeclaration d) {
    return pdp->DeclareEmergency(who, d).status();
  };
  EmergencyDeclaration ok{.area = Circle(28.97, 118.87, 2000),
                          .end = Monday10() + absl::Hours(6),
                          .reason = "flood"};
  EmergencyDeclaration d = ok;
  d.area.Clear();
  EXPECT_NE(code(d).message().find("area"), std::string::npos);
  d = ok;
  d.area.mutable_circle()->set_radius_m(0);
  EXPECT_NE(code(d).message().find("radius_m"), std::string::npos);
  d = ok;
  d.reason = "";
  EXPECT_NE(code(d).message().find("reason"), std::string::npos);
  d.reason = std::string(1025, 'x');
  EXPECT_NE(code(d).message().find("reason"), std::string::npos);
  d = ok;
  d.end = absl::InfinitePast();
  EXPECT_NE(code(d).message().find("end"), std::string::npos);
  d.end = Monday10() - absl::Minutes(1);
  EXPECT_NE(code(d).message().find("end"), std::string::npos);
  d = ok;
  d.end = Monday10() + absl::Hours(73);
  EXPECT_NE(code(d).message().find("window"), std::string::npos);
  d = ok;
  d.start = Monday10() + absl::Hours(10);  // after end
  EXPECT_EQ(code(d).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(code(ok).ok());
}

TEST(PolicyEmergency, RulesHoldOnlyInsideAnActiveEmergency) {
  Fixture f;
  auto pdp = MakePdp(&f.clock, kDisaster, {.audit = &f.audit});
  const Principal rescuer = Svc("fire-dept", "team-3", {"rescuer"});
  const AccessRequest inside = EvacRead(&rescuer, 28.970, 118.870);
  const AccessRequest outside = EvacRead(&rescuer, 29.500, 118.870);
  EXPECT_FALSE(pdp->Decide(inside)->allowed());

  std::atomic<int> emergency_changes{0};
  pdp->Watch([&](const PolicyChange& c) {
    if (c.kind == PolicyChange::Kind::kEmergency)
      emergency_changes.fetch_add(1);
  });
  // Scheduled to start in an hour, for two hours.
  auto e = pdp->DeclareEmergency(Admin(), {.area = Circle(28.97, 118.87, 3000),
                                           .start = Monday10() + absl::Hours(1),
                                           .end = Monday10() + absl::Hours(3),
                                           .reason = "levee breach"});
  ASSERT_TRUE(e.ok()) << e.status();
  EXPECT_TRUE(ParseUuid(e->id()).ok());
  EXPECT_EQ(e->state(), exchange::v1::EMERGENCY_STATE_SCHEDULED);
  EXPECT_EQ(e->declared_by(), Admin().SpiffeId());
  EXPECT_EQ(emergency_changes.load(), 1);
  EXPECT_FALSE(pdp->Decide(inside)->allowed());

  // It starts by itself: decisions follow at once, watchers within the poll.
  f.clock.Advance(absl::Hours(1));
  auto d = pdp->Decide(inside);
  ASSERT_TRUE(d->allowed()) << d->reason;
  EXPECT_EQ(d->emergency_id, e->id());
  EXPECT_EQ(d->severity, exchange::v1::SEVERITY_HIGH);
  EXPECT_EQ(d->valid_until, Monday10() + absl::Hours(3));
  ASSERT_EQ(d->obligations.size(), 1u);
  EXPECT_EQ(d->obligations[0].kind(), exchange::v1::OBLIGATION_KIND_REDACT);
  EXPECT_EQ(d->obligations[0].field_paths(0), "diagnosis");
  EXPECT_FALSE(pdp->Decide(outside)->allowed());
  for (int i = 0; i < 500 && emergency_changes.load() < 2; ++i)
    absl::SleepFor(absl::Milliseconds(2));
  EXPECT_EQ(emergency_changes.load(), 2);
  auto list = pdp->ListEmergencies(false);
  ASSERT_EQ(list.size(), 1u);
  EXPECT_EQ(list[0].state(), exchange::v1::EMERGENCY_STATE_ACTIVE);

  // It expires by itself.
  f.clock.Advance(absl::Hours(2));
  EXPECT_FALSE(pdp->Decide(inside)->allowed());
  for (int i = 0; i < 500 && emergency_changes.load() < 3; ++i)
    absl::SleepFor(absl::Milliseconds(2));
  EXPECT_EQ(emergency_changes.load(), 3);
  EXPECT_TRUE(pdp->ListEmergencies(false).empty());
  list = pdp->ListEmergencies(true);
  ASSERT_EQ(list.size(), 1u);
  EXPECT_EQ(list[0].state(), exchange::v1::EMERGENCY_STATE_EXPIRED);
  EXPECT_EQ(pdp->EndEmergency(Admin(), e->id(), "over").status().code(),
            absl::StatusCode::kFailedPrecondition);

  bool audited = false;
  for (const auto& a : f.audit.entries()) {
    if (a.action() == "emergency.declare") {
      audited = true;
      EXPECT_EQ(a.severity(), exchange::v1::SEVERITY_HIGH);
      EXPECT_EQ(a.emergency_id(), e->id());
    }
  }
  EXPECT_TRUE(audited);
}

TEST(PolicyEmergency, EndAndRegionAreas) {
  Fixture f;
  auto pdp = MakePdp(&f.clock, kDisaster, {.audit = &f.audit});
  const Principal rescuer = Svc("fire-dept", "team-3", {"rescuer"});
  AccessRequest req = EvacRead(&rescuer, 0, 0);
  req.resource.location.reset();
  req.resource.region = "CN-ZJ-QZ-KC";
  auto e = pdp->DeclareEmergency(Admin(), {.area = Region("CN-ZJ-QZ"),
                                           .end = Monday10() + absl::Hours(1),
                                           .reason = "quake"});
  ASSERT_TRUE(e.ok()) << e.status();
  EXPECT_EQ(e->state(), exchange::v1::EMERGENCY_STATE_ACTIVE);
  EXPECT_TRUE(pdp->Decide(req)->allowed());
  req.resource.region = "CN-ZJ-HZ";
  EXPECT_FALSE(pdp->Decide(req)->allowed());
  req.resource.region = "CN-ZJ-QZ";
  EXPECT_EQ(pdp->EndEmergency(Admin(), "nope", "x").status().code(),
            absl::StatusCode::kNotFound);
  auto ended = pdp->EndEmergency(Admin(), e->id(), "all clear");
  ASSERT_TRUE(ended.ok()) << ended.status();
  EXPECT_EQ(ended->state(), exchange::v1::EMERGENCY_STATE_ENDED);
  EXPECT_EQ(ended->end_reason(), "all clear");
  EXPECT_FALSE(pdp->Decide(req)->allowed());  // cache dropped on end
  EXPECT_EQ(pdp->EndEmergency(Admin(), e->id(), "again").status().code(),
            absl::StatusCode::kFailedPrecondition);
  bool audited = false;
  for (const auto& a : f.audit.entries()) {
    if (a.action() == "emergency.end")
      audited = a.severity() == exchange::v1::SEVERITY_HIGH;
  }
  EXPECT_TRUE(audited);
}

TEST(PolicyEmergency, PersistedAcrossRestarts) {
  cityos::testing::TempDir dir;
  SimulatedClock clock(Monday10());
  std::string id_active, id_ended;
  {
    auto pdp = MakePdp(&clock, kDisaster, {.state_dir = dir.path()});
    auto a =
        pdp->DeclareEmergency(Admin(), {.area = Circle(28.97, 118.87, 3000),
                                        .end = Monday10() + absl::Hours(5),
                                        .reason = "fire"});
    auto b = pdp->DeclareEmergency(Admin(), {.area = Region("CN-ZJ"),
                                             .end = Monday10() + absl::Hours(5),
                                             .reason = "storm"});
    ASSERT_TRUE(a.ok() && b.ok());
    ASSERT_TRUE(pdp->EndEmergency(Admin(), b->id(), "passed").ok());
    id_active = a->id();
    id_ended = b->id();
  }
  auto pdp = MakePdp(&clock, kDisaster, {.state_dir = dir.path()});
  auto list = pdp->ListEmergencies(true);
  ASSERT_EQ(list.size(), 2u);
  EXPECT_EQ(list[0].id(), id_ended);  // newest first
  EXPECT_EQ(list[0].state(), exchange::v1::EMERGENCY_STATE_ENDED);
  EXPECT_EQ(list[1].id(), id_active);
  EXPECT_EQ(list[1].state(), exchange::v1::EMERGENCY_STATE_ACTIVE);
  const Principal rescuer = Svc("fire-dept", "team-3", {"rescuer"});
  EXPECT_TRUE(pdp->Decide(EvacRead(&rescuer, 28.97, 118.87))->allowed());
  // A corrupt file is an error naming it.
  cityos::testing::WriteFile(dir.File("emergencies.json"), "{not json");
  PdpOptions bad;
  bad.state_dir = dir.path();
  auto st = PolicyDecisionPoint::Create(bad);
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.status().message().find("emergencies.json"), std::string::npos);
}

TEST(PolicyEmergency, Geometry) {
  using policy_internal::InArea;
  common::v1::GeoArea box;
  box.mutable_bounding_box()->mutable_south_west()->set_latitude(28.0);
  box.mutable_bounding_box()->mutable_south_west()->set_longitude(118.0);
  box.mutable_bounding_box()->mutable_north_east()->set_latitude(29.0);
  box.mutable_bounding_box()->mutable_north_east()->set_longitude(119.0);
  EXPECT_TRUE(InArea(box, std::make_pair(28.5, 118.5), ""));
  EXPECT_FALSE(InArea(box, std::make_pair(29.5, 118.5), ""));
  EXPECT_FALSE(InArea(box, std::nullopt, "CN"));
  // Across the antimeridian.
  common::v1::GeoArea wrap = box;
  wrap.mutable_bounding_box()->mutable_south_west()->set_longitude(179.0);
  wrap.mutable_bounding_box()->mutable_north_east()->set_longitude(-179.0);
  EXPECT_TRUE(InArea(wrap, std::make_pair(28.5, 179.5), ""));
  EXPECT_TRUE(InArea(wrap, std::make_pair(28.5, -179.5), ""));
  EXPECT_FALSE(InArea(wrap, std::make_pair(28.5, 0.0), ""));
  // Circle: 1 km radius; 0.01 deg latitude is about 1.11 km.
  common::v1::GeoArea c = Circle(28.0, 118.0, 1000);
  EXPECT_TRUE(InArea(c, std::make_pair(28.008, 118.0), ""));
  EXPECT_FALSE(InArea(c, std::make_pair(28.01, 118.0), ""));
  common::v1::GeoArea tri;
  for (auto [lat, lon] : {std::pair{0.0, 0.0}, {0.0, 10.0}, {10.0, 0.0}}) {
    auto* v = tri.mutable_polygon()->add_vertices();
    v->set_latitude(lat);
    v->set_longitude(lon);
  }
  EXPECT_TRUE(InArea(tri, std::make_pair(2.0, 2.0), ""));
  EXPECT_FALSE(InArea(tri, std::make_pair(6.0, 6.0), ""));
  EXPECT_TRUE(InArea(Region("CN-ZJ"), std::nullopt, "CN-ZJ-QZ"));
  EXPECT_FALSE(InArea(Region("CN-ZJ"), std::nullopt, "CN-ZJX"));
  EXPECT_FALSE(InArea(Region("CN-ZJ"), std::make_pair(1.0, 1.0), ""));
}

}  // namespace
}  // namespace cityos::policy_test
