// The registry's logic (services/registry/registry.h) without gRPC: leases on
// a SimulatedClock, lookups, Watch, authorization and input checks.
#include "registry.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <vector>

#include "cityos/clock.h"
#include "cityos/config.h"
#include "cityos/principal.h"
#include "registry_plugin.h"

namespace cityos {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;

constexpr absl::Duration kNoWait = absl::ZeroDuration();

Principal Svc(const std::string& spiffe_id, std::vector<std::string> roles = {}) {
  absl::StatusOr<Principal> p = Principal::FromSpiffeId(spiffe_id);
  EXPECT_TRUE(p.ok()) << p.status();
  p->roles = std::move(roles);
  return *p;
}

ServiceRecord Carbon(const std::string& endpoint = "carbon-1.grid.city:7443") {
  return {.name = "carbon",
          .org = "grid",
          .domain = "carbon",
          .endpoint = endpoint,
          .proto_services = {"cityos.carbon.v1.CarbonAccountService"},
          .published_subjects = {"carbon.alarm.>"},
          .version = "1.4.2",
          .labels = {{"zone", "kecheng"}}};
}

std::string Message(const absl::Status& s) { return std::string(s.message()); }

std::vector<std::string> Endpoints(const std::vector<InstanceInfo>& instances) {
  std::vector<std::string> out;
  for (const InstanceInfo& i : instances) out.push_back(i.record.endpoint);
  return out;
}

// "ADDED carbon@ep (registered)" per change, for readable expectations.
std::vector<std::string> Describe(const std::vector<Change>& changes) {
  std::vector<std::string> out;
  for (const Change& c : changes) {
    out.push_back(std::string(ChangeTypeName(c.type)) + " " + c.instance.record.name + "@" +
                  c.instance.record.endpoint + " (" + ChangeReasonName(c.reason) + ")");
  }
  return out;
}

class RegistryTest : public ::testing::Test {
 protected:
  void SetUp() override { MakeRegistry(); }
  void MakeRegistry() {
    options_.clock = &clock_;
    ASSERT_TRUE(ValidateRegistryOptions(options_).ok());
    registry_ = Registry::Create(options_);
  }
  // Everything queued for `w` now.
  std::vector<Change> Drain(Watcher& w) {
    absl::StatusOr<std::vector<Change>> got = w.Next(1000, kNoWait);
    EXPECT_TRUE(got.ok()) << got.status();
    return got.ok() ? *got : std::vector<Change>{};
  }

  SimulatedClock clock_{absl::FromUnixSeconds(1'700'000'000)};
  RegistryOptions options_;
  std::unique_ptr<Registry> registry_;
  Principal grid_ = Svc("spiffe://test.city/org/grid/svc/carbon");
  Principal grid_other_ = Svc("spiffe://test.city/org/grid/svc/meters");
  Principal hospital_ = Svc("spiffe://test.city/org/hospital/svc/records");
  Principal admin_ = Svc("spiffe://test.city/org/city/user/ops", {"admin"});
};

// --- leases ---

TEST_F(RegistryTest, RegisterGrantsALeaseWithTheDefaultTtl) {
  absl::StatusOr<Lease> lease = registry_->Register(grid_, Carbon(), absl::ZeroDuration());
  ASSERT_TRUE(lease.ok()) << lease.status();
  EXPECT_FALSE(lease->lease_id.empty());
  EXPECT_EQ(lease->ttl, absl::Seconds(15));
  EXPECT_EQ(lease->instance.record, Carbon());
  EXPECT_EQ(lease->instance.principal, "spiffe://test.city/org/grid/svc/carbon");
  EXPECT_EQ(lease->instance.register_time, clock_.Now());
  EXPECT_EQ(lease->instance.heartbeat_time, clock_.Now());
  EXPECT_EQ(lease->instance.expire_time, clock_.Now() + absl::Seconds(15));
  EXPECT_EQ(registry_->size(), 1u);
  EXPECT_EQ(registry_->revision(), 1u);
}

TEST_F(RegistryTest, RequestedTtlsAreClampedToTheBounds) {
  auto short_lease = registry_->Register(grid_, Carbon("a:1"), absl::Milliseconds(10));
  auto long_lease = registry_->Register(grid_, Carbon("b:1"), absl::Hours(3));
  auto exact = registry_->Register(grid_, Carbon("c:1"), absl::Seconds(42));
  ASSERT_TRUE(short_lease.ok() && long_lease.ok() && exact.ok());
  EXPECT_EQ(short_lease->ttl, absl::Seconds(5));
  EXPECT_EQ(long_lease->ttl, absl::Minutes(5));
  EXPECT_EQ(exact->ttl, absl::Seconds(42));
  auto negative = registry_->Register(grid_, Carbon("d:1"), absl::Seconds(-1));
  EXPECT_EQ(negative.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Message(negative.status()), HasSubstr("ttl"));
}

TEST_F(RegistryTest, HeartbeatsKeepALeaseAliveAndExpiryRemovesItWithoutThem) {
  auto lease = registry_->Register(grid_, Carbon(), absl::Seconds(15));
  ASSERT_TRUE(lease.ok());
  for (int i = 0; i < 10; ++i) {  // 100 s in all, far beyond one TTL
    clock_.Advance(absl::Seconds(10));
    EXPECT_EQ(registry_->ExpireNow(), 0u);
    auto renewed = registry_->Heartbeat(grid_, lease->lease_id);
    ASSERT_TRUE(renewed.ok()) << renewed.status();
    EXPECT_EQ(renewed->instance.expire_time, clock_.Now() + absl::Seconds(15));
    EXPECT_EQ(renewed->instance.heartbeat_time, clock_.Now());
  }
  clock_.Advance(absl::Seconds(14));
  EXPECT_EQ(registry_->ExpireNow(), 0u);
  EXPECT_EQ(registry_->size(), 1u);
  clock_.Advance(absl::Seconds(1));
  EXPECT_EQ(registry_->ExpireNow(), 1u);
  EXPECT_EQ(registry_->size(), 0u);
  auto late = registry_->Heartbeat(grid_, lease->lease_id);
  EXPECT_EQ(late.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(Message(late.status()), HasSubstr("register again"));
}

TEST_F(RegistryTest, AnExpiredLeaseIsInvisibleAndNotFoundEvenBeforeTheSweep) {
  auto lease = registry_->Register(grid_, Carbon(), absl::Seconds(15));
  ASSERT_TRUE(lease.ok());
  auto watcher = registry_->Watch({}, nullptr);
  ASSERT_TRUE(watcher.ok());
  clock_.Advance(absl::Seconds(16));
  EXPECT_EQ(registry_->size(), 0u);
  EXPECT_THAT(*registry_->List({}), IsEmpty());
  EXPECT_EQ(registry_->Resolve("carbon", "", "").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(registry_->Heartbeat(grid_, lease->lease_id).status().code(),
            absl::StatusCode::kNotFound);
  // The heartbeat found it expired and reported it; the sweep has nothing left.
  EXPECT_THAT(Describe(Drain(**watcher)),
              ElementsAre("REMOVED carbon@carbon-1.grid.city:7443 (lease expired)"));
  EXPECT_EQ(registry_->ExpireNow(), 0u);
}

TEST_F(RegistryTest, UnknownLeasesAreNotFound) {
  EXPECT_EQ(registry_->Heartbeat(grid_, "no-such-lease").status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(registry_->Deregister(grid_, "no-such-lease").code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(registry_->Heartbeat(grid_, "").status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(RegistryTest, DeregisterEndsTheLease) {
  auto lease = registry_->Register(grid_, Carbon(), absl::ZeroDuration());
  ASSERT_TRUE(lease.ok());
  ASSERT_TRUE(registry_->Deregister(grid_, lease->lease_id).ok());
  EXPECT_EQ(registry_->size(), 0u);
  EXPECT_EQ(registry_->Heartbeat(grid_, lease->lease_id).status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(registry_->Deregister(grid_, lease->lease_id).code(), absl::StatusCode::kNotFound);
}

TEST_F(RegistryTest, ReRegisteringTheSameInstanceReplacesItsLease) {
  auto first = registry_->Register(grid_, Carbon(), absl::ZeroDuration());
  ASSERT_TRUE(first.ok());
  clock_.Advance(absl::Seconds(10));
  auto second = registry_->Register(grid_, Carbon(), absl::ZeroDuration());
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_NE(second->lease_id, first->lease_id);
  EXPECT_EQ(second->instance.expire_time, clock_.Now() + absl::Seconds(15));
  EXPECT_EQ(registry_->size(), 1u);
  // The old lease is revoked; the new one works.
  EXPECT_EQ(registry_->Heartbeat(grid_, first->lease_id).status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_TRUE(registry_->Heartbeat(grid_, second->lease_id).ok());
  // An identical record is not a change.
  EXPECT_EQ(registry_->revision(), 1u);
}

TEST_F(RegistryTest, AnInstanceHeldByAnotherPrincipalIsAlreadyExistsUntilItsLeaseEnds) {
  auto lease = registry_->Register(grid_, Carbon(), absl::Seconds(15));
  ASSERT_TRUE(lease.ok());
  auto taken = registry_->Register(grid_other_, Carbon(), absl::ZeroDuration());
  EXPECT_EQ(taken.status().code(), absl::StatusCode::kAlreadyExists);
  EXPECT_THAT(Message(taken.status()), HasSubstr("spiffe://test.city/org/grid/svc/carbon"));
  // Same service at another endpoint is another instance.
  EXPECT_TRUE(registry_->Register(grid_other_, Carbon("carbon-2.grid.city:7443"),
                                  absl::ZeroDuration())
                  .ok());
  // Once the lease ran out, the triple is free.
  clock_.Advance(absl::Seconds(15));
  EXPECT_TRUE(registry_->Register(grid_other_, Carbon(), absl::ZeroDuration()).ok());
}

TEST_F(RegistryTest, TheInstanceLimitIsResourceExhausted) {
  options_.max_instances = 2;
  MakeRegistry();
  ASSERT_TRUE(registry_->Register(grid_, Carbon("a:1"), absl::ZeroDuration()).ok());
  ASSERT_TRUE(registry_->Register(grid_, Carbon("b:1"), absl::ZeroDuration()).ok());
  auto third = registry_->Register(grid_, Carbon("c:1"), absl::ZeroDuration());
  EXPECT_EQ(third.status().code(), absl::StatusCode::kResourceExhausted);
  // Re-registering a held instance is not a new one.
  EXPECT_TRUE(registry_->Register(grid_, Carbon("a:1"), absl::ZeroDuration()).ok());
}

// --- authorization ---

TEST_F(RegistryTest, AnOrgRegistersOnlyUnderItsOwnOrgUnlessAdmin) {
  ServiceRecord as_grid = Carbon();
  auto denied = registry_->Register(hospital_, as_grid, absl::ZeroDuration());
  EXPECT_EQ(denied.status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(Message(denied.status()), HasSubstr("own org \"hospital\", not \"grid\""));
  EXPECT_EQ(registry_->size(), 0u);

  auto by_admin = registry_->Register(admin_, as_grid, absl::ZeroDuration());
  ASSERT_TRUE(by_admin.ok()) << by_admin.status();
  EXPECT_EQ(by_admin->instance.principal, "spiffe://test.city/org/city/user/ops");
}

TEST_F(RegistryTest, OnlyTheOwnerHeartbeatsAndOnlyTheOwnerOrAnAdminDeregisters) {
  auto lease = registry_->Register(grid_, Carbon(), absl::ZeroDuration());
  ASSERT_TRUE(lease.ok());
  EXPECT_EQ(registry_->Heartbeat(grid_other_, lease->lease_id).status().code(),
            absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(registry_->Deregister(hospital_, lease->lease_id).code(),
            absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(registry_->Deregister(grid_other_, lease->lease_id).code(),
            absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(registry_->size(), 1u);
  EXPECT_TRUE(registry_->Deregister(admin_, lease->lease_id).ok());
  EXPECT_EQ(registry_->size(), 0u);
}

// --- input checks ---

struct BadField {
  std::string field;
  void (*mutate)(ServiceRecord&);
};

TEST_F(RegistryTest, BadInputIsInvalidArgumentNamingTheField) {
  const std::vector<BadField> cases = {
      {"registration.name", [](ServiceRecord& r) { r.name = ""; }},
      {"registration.name", [](ServiceRecord& r) { r.name = "Carbon"; }},
      {"registration.name", [](ServiceRecord& r) { r.name = "9lives"; }},
      {"registration.name", [](ServiceRecord& r) { r.name = std::string(65, 'a'); }},
      {"registration.org", [](ServiceRecord& r) { r.org = ""; }},
      {"registration.org", [](ServiceRecord& r) { r.org = "gr id"; }},
      {"registration.domain", [](ServiceRecord& r) { r.domain = "Health Care"; }},
      {"registration.endpoint", [](ServiceRecord& r) { r.endpoint = ""; }},
      {"registration.endpoint", [](ServiceRecord& r) { r.endpoint = "carbon.grid.city"; }},
      {"registration.endpoint", [](ServiceRecord& r) { r.endpoint = "carbon:99999"; }},
      {"registration.endpoint", [](ServiceRecord& r) { r.endpoint = "host name:80"; }},
      {"registration.endpoint", [](ServiceRecord& r) { r.endpoint = "dns:///"; }},
      {"registration.endpoint", [](ServiceRecord& r) { r.endpoint = "http://x:80"; }},
      {"registration.proto_services[1]",
       [](ServiceRecord& r) { r.proto_services.push_back("CarbonAccountService"); }},
      {"registration.proto_services[1]",
       [](ServiceRecord& r) { r.proto_services.push_back("cityos..v1.X"); }},
      {"registration.proto_services[1]",
       [](ServiceRecord& r) { r.proto_services.push_back(r.proto_services[0]); }},
      {"registration.published_subjects[0]",
       [](ServiceRecord& r) { r.published_subjects = {"carbon..alarm"}; }},
      {"registration.published_subjects[1]",
       [](ServiceRecord& r) { r.published_subjects.push_back("carbon.>.x"); }},
      {"registration.version", [](ServiceRecord& r) { r.version = "1.0\n"; }},
      {"registration.labels", [](ServiceRecord& r) { r.labels["Zone"] = "x"; }},
      {"registration.labels[\"zone\"]", [](ServiceRecord& r) { r.labels["zone"] = "a\tb"; }},
      {"registration.labels", [](ServiceRecord& r) {
         for (int i = 0; i < 33; ++i) r.labels["k" + std::to_string(i)] = "v";
       }},
  };
  for (const BadField& c : cases) {
    ServiceRecord r = Carbon();
    c.mutate(r);
    auto lease = registry_->Register(grid_, r, absl::ZeroDuration());
    EXPECT_EQ(lease.status().code(), absl::StatusCode::kInvalidArgument)
        << c.field << " " << lease.status();
    EXPECT_THAT(Message(lease.status()), ::testing::StartsWith(c.field + ":"));
  }
  EXPECT_EQ(registry_->size(), 0u);
}

TEST_F(RegistryTest, GoodEndpointsAndOptionalFieldsAreAccepted) {
  for (const std::string endpoint :
       {"localhost:7443", "10.0.0.7:443", "[::1]:7443", "dns:///carbon.quzhou.city:7443",
        "ipv4:10.0.0.1:80,10.0.0.2:80", "unix:/run/cityos/carbon.sock", "carbon_1.svc:1"}) {
    ServiceRecord r = Carbon(endpoint);
    r.domain.clear();
    r.version.clear();
    r.labels.clear();
    r.proto_services.clear();
    r.published_subjects.clear();
    EXPECT_TRUE(registry_->Register(grid_, r, absl::ZeroDuration()).ok()) << endpoint;
  }
}

TEST_F(RegistryTest, LookupsCheckTheirArguments) {
  EXPECT_EQ(registry_->Resolve("", "", "").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(registry_->Resolve("carbon", "cityos.carbon.v1.X", "").status().code(),
            absl::StatusCode::kInvalidArgument);
  auto bad_name = registry_->Resolve("Carbon!", "", "");
  EXPECT_THAT(Message(bad_name.status()), ::testing::StartsWith("name:"));
  auto bad_proto = registry_->Resolve("", "Carbon", "");
  EXPECT_THAT(Message(bad_proto.status()), ::testing::StartsWith("proto_service:"));
  auto bad_filter = registry_->List({.domain = "Not A Domain"});
  EXPECT_EQ(bad_filter.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Message(bad_filter.status()), ::testing::StartsWith("filter.domain:"));
  auto bad_watch = registry_->Watch({.proto_service = "x"}, nullptr);
  EXPECT_THAT(Message(bad_watch.status()), ::testing::StartsWith("filter.proto_service:"));
}

// --- lookups ---

TEST_F(RegistryTest, ResolveFindsLiveInstancesByNameOrProtoServiceInStableOrder) {
  Principal hospital_carbon = Svc("spiffe://test.city/org/hospital/svc/carbon");
  ServiceRecord h = Carbon("carbon.hospital.city:7443");
  h.org = "hospital";
  ASSERT_TRUE(registry_->Register(hospital_carbon, h, absl::ZeroDuration()).ok());
  ASSERT_TRUE(registry_->Register(grid_, Carbon("z.grid.city:1"), absl::ZeroDuration()).ok());
  ASSERT_TRUE(registry_->Register(grid_, Carbon("a.grid.city:1"), absl::ZeroDuration()).ok());
  ServiceRecord consent{.name = "consent",
                        .org = "grid",
                        .endpoint = "consent.grid.city:7443",
                        .proto_services = {"cityos.consent.v1.ConsentService",
                                           "cityos.carbon.v1.CarbonAccountService"}};
  ASSERT_TRUE(registry_->Register(grid_, consent, absl::ZeroDuration()).ok());

  auto by_name = registry_->Resolve("carbon", "", "");
  ASSERT_TRUE(by_name.ok());
  EXPECT_THAT(Endpoints(*by_name),
              ElementsAre("a.grid.city:1", "z.grid.city:1", "carbon.hospital.city:7443"));
  auto by_name_in_org = registry_->Resolve("carbon", "", "hospital");
  ASSERT_TRUE(by_name_in_org.ok());
  EXPECT_THAT(Endpoints(*by_name_in_org), ElementsAre("carbon.hospital.city:7443"));

  auto by_proto = registry_->Resolve("", "cityos.consent.v1.ConsentService", "");
  ASSERT_TRUE(by_proto.ok());
  EXPECT_THAT(Endpoints(*by_proto), ElementsAre("consent.grid.city:7443"));
  auto by_shared_proto = registry_->Resolve("", "cityos.carbon.v1.CarbonAccountService", "grid");
  ASSERT_TRUE(by_shared_proto.ok());
  EXPECT_THAT(Endpoints(*by_shared_proto),
              ElementsAre("a.grid.city:1", "z.grid.city:1", "consent.grid.city:7443"));

  auto none = registry_->Resolve("transit", "", "");
  EXPECT_EQ(none.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(Message(none.status()), HasSubstr("transit"));
  EXPECT_EQ(registry_->Resolve("carbon", "", "bank").status().code(),
            absl::StatusCode::kNotFound);
}

TEST_F(RegistryTest, ListFiltersOnEveryFieldAndAnEmptyResultIsNotAnError) {
  ASSERT_TRUE(registry_->Register(grid_, Carbon("a:1"), absl::ZeroDuration()).ok());
  ServiceRecord records{.name = "records", .org = "hospital", .domain = "health",
                        .endpoint = "records:1"};
  ASSERT_TRUE(registry_->Register(hospital_, records, absl::ZeroDuration()).ok());
  EXPECT_THAT(Endpoints(*registry_->List({})), ElementsAre("a:1", "records:1"));
  EXPECT_THAT(Endpoints(*registry_->List({.org = "hospital"})), ElementsAre("records:1"));
  EXPECT_THAT(Endpoints(*registry_->List({.name = "carbon"})), ElementsAre("a:1"));
  EXPECT_THAT(Endpoints(*registry_->List({.domain = "health"})), ElementsAre("records:1"));
  EXPECT_THAT(
      Endpoints(*registry_->List({.proto_service = "cityos.carbon.v1.CarbonAccountService"})),
      ElementsAre("a:1"));
  EXPECT_THAT(Endpoints(*registry_->List({.org = "hospital", .name = "carbon"})), IsEmpty());
}

// --- watch ---

TEST_F(RegistryTest, WatchSeesAddedUpdatedAndBothKindsOfRemoved) {
  std::vector<Change> snapshot;
  auto watcher = registry_->Watch({}, &snapshot);
  ASSERT_TRUE(watcher.ok());
  EXPECT_THAT(snapshot, IsEmpty());

  auto a = registry_->Register(grid_, Carbon("a:1"), absl::Seconds(15));
  ASSERT_TRUE(a.ok());
  ServiceRecord changed = Carbon("a:1");
  changed.version = "1.5.0";
  ASSERT_TRUE(registry_->Register(grid_, changed, absl::Seconds(15)).ok());
  auto b = registry_->Register(grid_, Carbon("b:1"), absl::Seconds(30));
  ASSERT_TRUE(b.ok());
  ASSERT_TRUE(registry_->Deregister(grid_, b->lease_id).ok());
  clock_.Advance(absl::Seconds(15));
  EXPECT_EQ(registry_->ExpireNow(), 1u);

  std::vector<Change> got = Drain(**watcher);
  EXPECT_THAT(Describe(got), ElementsAre("ADDED carbon@a:1 (registered)",
                                         "UPDATED carbon@a:1 (registered)",
                                         "ADDED carbon@b:1 (registered)",
                                         "REMOVED carbon@b:1 (deregistered)",
                                         "REMOVED carbon@a:1 (lease expired)"));
  ASSERT_EQ(got.size(), 5u);
  for (size_t i = 0; i < got.size(); ++i) EXPECT_EQ(got[i].revision, i + 1);
  EXPECT_EQ(got[1].instance.record.version, "1.5.0");
  EXPECT_EQ(got[4].instance.record.version, "1.5.0");  // its last record
  EXPECT_EQ(got[4].time, clock_.Now());
  EXPECT_EQ(registry_->revision(), 5u);
}

TEST_F(RegistryTest, TheSnapshotAndTheChangesAfterItNeitherOverlapNorMiss) {
  ASSERT_TRUE(registry_->Register(grid_, Carbon("a:1"), absl::ZeroDuration()).ok());
  ASSERT_TRUE(registry_->Register(hospital_, {.name = "records", .org = "hospital",
                                              .endpoint = "records:1"},
                                  absl::ZeroDuration())
                  .ok());
  std::vector<Change> snapshot;
  auto watcher = registry_->Watch({.org = "grid"}, &snapshot);
  ASSERT_TRUE(watcher.ok());
  EXPECT_THAT(Describe(snapshot), ElementsAre("ADDED carbon@a:1 (snapshot)"));
  EXPECT_EQ(snapshot[0].revision, 2u);
  ASSERT_TRUE(registry_->Register(grid_, Carbon("b:1"), absl::ZeroDuration()).ok());
  ASSERT_TRUE(registry_->Register(hospital_, {.name = "records", .org = "hospital",
                                              .endpoint = "records:2"},
                                  absl::ZeroDuration())
                  .ok());
  EXPECT_THAT(Describe(Drain(**watcher)), ElementsAre("ADDED carbon@b:1 (registered)"));
}

TEST_F(RegistryTest, AnUpdateLeavingTheFilterIsStillReported) {
  auto watcher = registry_->Watch({.domain = "carbon"}, nullptr);
  ASSERT_TRUE(watcher.ok());
  ASSERT_TRUE(registry_->Register(grid_, Carbon("a:1"), absl::ZeroDuration()).ok());
  ServiceRecord moved = Carbon("a:1");
  moved.domain = "platform";
  ASSERT_TRUE(registry_->Register(grid_, moved, absl::ZeroDuration()).ok());
  std::vector<Change> got = Drain(**watcher);
  EXPECT_THAT(Describe(got), ElementsAre("ADDED carbon@a:1 (registered)",
                                         "UPDATED carbon@a:1 (registered)"));
}

TEST_F(RegistryTest, ASlowWatcherIsCutWithResourceExhaustedOthersAreNot) {
  options_.watch_queue_depth = 4;
  MakeRegistry();
  auto slow = registry_->Watch({}, nullptr);
  auto fast = registry_->Watch({}, nullptr);
  ASSERT_TRUE(slow.ok() && fast.ok());
  for (int i = 0; i < 10; ++i) {
    ASSERT_TRUE(registry_->Register(grid_, Carbon("e" + std::to_string(i) + ":1"),
                                    absl::ZeroDuration())
                    .ok());
    EXPECT_EQ(Drain(**fast).size(), 1u);
  }
  auto cut = (*slow)->Next(100, kNoWait);
  EXPECT_EQ(cut.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(Message(cut.status()), HasSubstr("watch again"));
  // It stays cut; a new watch with a snapshot catches up.
  EXPECT_EQ((*slow)->Next(100, kNoWait).status().code(), absl::StatusCode::kResourceExhausted);
  std::vector<Change> snapshot;
  auto again = registry_->Watch({}, &snapshot);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(snapshot.size(), 10u);
}

TEST_F(RegistryTest, ShutdownEndsWatchersAfterWhatTheyHadQueued) {
  auto watcher = registry_->Watch({}, nullptr);
  ASSERT_TRUE(watcher.ok());
  ASSERT_TRUE(registry_->Register(grid_, Carbon(), absl::ZeroDuration()).ok());
  registry_->Shutdown();
  EXPECT_EQ(Drain(**watcher).size(), 1u);
  EXPECT_EQ((*watcher)->Next(10, absl::Seconds(30)).status().code(),
            absl::StatusCode::kUnavailable);
  EXPECT_EQ(registry_->Watch({}, nullptr).status().code(), absl::StatusCode::kUnavailable);
  // Leases keep working while the node drains.
  EXPECT_TRUE(registry_->Register(grid_, Carbon("b:1"), absl::ZeroDuration()).ok());
}

TEST_F(RegistryTest, NextWaitsForAChangeFromAnotherThread) {
  auto watcher = registry_->Watch({}, nullptr);
  ASSERT_TRUE(watcher.ok());
  std::thread registrar([&] {
    ASSERT_TRUE(registry_->Register(grid_, Carbon(), absl::ZeroDuration()).ok());
  });
  std::vector<Change> got;
  for (int i = 0; i < 300 && got.empty(); ++i) {  // up to 30 s; returns as soon as it arrives
    auto next = (*watcher)->Next(10, absl::Milliseconds(100));
    ASSERT_TRUE(next.ok());
    got = *next;
  }
  registrar.join();
  EXPECT_THAT(Describe(got), ElementsAre("ADDED carbon@carbon-1.grid.city:7443 (registered)"));
}

// --- plug-in config ---

TEST(RegistryPluginConfig, DefaultsAndOverrides) {
  auto empty = ParseRegistryPluginConfig(ConfigNode::EmptyMap("node.yaml", "plugins[1].config"));
  ASSERT_TRUE(empty.ok()) << empty.status();
  EXPECT_EQ(empty->registry.default_ttl, absl::Seconds(15));
  EXPECT_EQ(empty->registry.max_ttl, absl::Minutes(5));
  EXPECT_EQ(empty->expiry_interval, absl::Seconds(1));

  auto root = ConfigNode::LoadString(
      "default_ttl: 30s\nmax_ttl: 2m\nmin_ttl: 1s\nexpiry_interval: 250ms\nmax_instances: 10\n"
      "watch_queue_depth: 8\n",
      "node.yaml");
  ASSERT_TRUE(root.ok());
  auto c = ParseRegistryPluginConfig(*root);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->registry.default_ttl, absl::Seconds(30));
  EXPECT_EQ(c->registry.max_ttl, absl::Minutes(2));
  EXPECT_EQ(c->registry.min_ttl, absl::Seconds(1));
  EXPECT_EQ(c->expiry_interval, absl::Milliseconds(250));
  EXPECT_EQ(c->registry.max_instances, 10u);
  EXPECT_EQ(c->registry.watch_queue_depth, 8u);
  EXPECT_TRUE(ValidateRegistryOptions(c->registry).ok());
}

TEST(RegistryPluginConfig, BadValuesNameTheKey) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"default_tll: 3s\n", "default_tll"},
      {"default_ttl: 10m\n", "default_ttl"},
      {"max_ttl: 1s\n", "min_ttl"},
      {"expiry_interval: 0s\n", "expiry_interval"},
      {"expiry_interval: soon\n", "expiry_interval"},
      {"max_instances: 0\n", "max_instances"},
      {"watch_queue_depth: -3\n", "watch_queue_depth"},
  };
  for (const auto& [yaml, key] : cases) {
    auto root = ConfigNode::LoadString(yaml, "node.yaml");
    ASSERT_TRUE(root.ok()) << yaml;
    auto c = ParseRegistryPluginConfig(*root);
    EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument) << yaml;
    EXPECT_THAT(Message(c.status()), HasSubstr(key)) << yaml;
  }
}

}  // namespace
}  // namespace cityos
