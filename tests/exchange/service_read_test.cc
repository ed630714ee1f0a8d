// ExchangeService reads over real mTLS on a real node: policy loading with
// errors by line, Query (allowed, denied, left out per entity), denials that
// leak nothing, stable cursor pagination under concurrent writes,
// QueryHistory, Aggregate with minimum group size, cross-border denial, and
// the bus's publish and subscribe rights going through the same PDP.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/str_format.h"
#include "absl/strings/str_replace.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "cityos/ca.h"
#include "cityos/entity.h"
#include "cityos/event.h"
#include "cityos/health/v1/health.pb.h"
#include "service_fixture.h"

namespace cityos::exchange_test {
namespace {

using ::testing::HasSubstr;
using ::testing::UnorderedElementsAre;

constexpr char kBeds[] = "cityos.health.v1.BedAvailability";
constexpr char kCare[] = "cityos.health.v1.CareRecord";

constexpr char kPolicy[] = R"(rules:
  - id: beds-read
    effect: allow
    actions: [read, history, subscribe]
    principal: {orgs: [insurer, hospital-a]}
    resource:
      types: [cityos.health.v1.BedAvailability]
    purposes: [medical_care]
  - id: beds-no-insurer-hospital-b
    effect: deny
    actions: [read, history]
    principal: {orgs: [insurer]}
    resource:
      types: [cityos.health.v1.BedAvailability]
      owners: [hospital-b]
  - id: beds-research-aggregate
    effect: allow
    actions: [read]
    principal: {orgs: [research-lab]}
    resource: {types: [cityos.health.v1.BedAvailability]}
    purposes: [research]
    obligations:
      - aggregate_only: {min_group_size: 3}
  - id: care-records
    effect: allow
    actions: [read]
    principal: {orgs: [jp-clinic, us-partner]}
    resource: {types: [cityos.health.v1.CareRecord], classifications: [personal]}
    purposes: [medical_care]
    legal_basis: contract
  - id: sensors-publish
    effect: allow
    actions: [publish]
    principal: {orgs: [sensors]}
    resource: {subjects: ["health.beds.>"]}
)";

event::v1::Event Bed(const std::string& owner, const std::string& id, int free,
                     health::v1::WardKind ward = health::v1::WARD_KIND_ICU) {
  health::v1::BedAvailability b;
  b.set_hospital_id(owner);
  b.set_ward_kind(ward);
  b.set_total_beds(20);
  b.set_free_beds(free);
  b.mutable_location()->set_latitude(28.97);
  b.mutable_location()->set_longitude(118.87);
  auto e = EventBuilder()
               .Source("//test.city/" + owner)
               .Subject("health.beds." + owner + "." + id)
               .Type(kBeds)
               .Domain("health")
               .Classification(event::v1::CLASSIFICATION_PUBLIC)
               .Owner(owner)
               .Region("CN-ZJ-QZ")
               .Jurisdiction("JP")
               .Extension(kEntityIdExtension, id)
               .ProtoData(b)
               .Build();
  EXPECT_TRUE(e.ok()) << e.status();
  return *e;
}

class ExchangeReadTest : public ExchangeNodeTest {
 protected:
  void SetUp() override {
    ExchangeNodeTest::SetUp();
    ASSERT_NO_FATAL_FAILURE(StartNode(
        "policy:\n  jurisdiction: JP\n  org_jurisdictions:\n    us-partner: US\n"));
    ASSERT_NO_FATAL_FAILURE(LoadPolicy("read.yaml", kPolicy));
  }

  grpc::Status Query(Client& c, const std::string& purpose, exchange::v1::QueryResponse* resp,
                     int page_size = 0, const std::string& token = "",
                     std::vector<std::string> projection = {}) {
    exchange::v1::QueryRequest req;
    req.mutable_filter()->set_type(kBeds);
    req.set_purpose(purpose);
    req.set_page_size(page_size);
    req.set_page_token(token);
    for (const auto& p : projection) req.add_projection(p);
    grpc::ClientContext ctx;
    Deadline(&ctx);
    return c.exchange->Query(&ctx, req, resp);
  }

  static std::vector<std::string> Ids(const exchange::v1::QueryResponse& r) {
    std::vector<std::string> ids;
    for (const auto& e : r.entities()) ids.push_back(e.id());
    return ids;
  }

  void PublishBeds() {
    Publish({Bed("hospital-a", "a-icu-1", 3), Bed("hospital-a", "a-icu-2", 4),
             Bed("hospital-a", "a-gen-1", 9, health::v1::WARD_KIND_GENERAL),
             Bed("hospital-b", "b-icu-1", 1), Bed("hospital-b", "b-icu-2", 2),
             Bed("hospital-b", "b-gen-1", 7, health::v1::WARD_KIND_GENERAL)});
    for (const char* id : {"a-icu-1", "a-icu-2", "a-gen-1", "b-icu-1", "b-icu-2", "b-gen-1"}) {
      WaitForEntity(kBeds, id);
    }
  }
};

TEST_F(ExchangeReadTest, PolicyLoadErrorsNameTheLineAndKeepTheOldSet) {
  exchange::v1::ListPoliciesResponse before;
  {
    grpc::ClientContext ctx;
    Deadline(&ctx);
    ASSERT_TRUE(Admin().exchange->ListPolicies(&ctx, {}, &before).ok());
  }
  ASSERT_EQ(before.documents_size(), 2);  // + the fixture's zz-probe.yaml
  const std::string bad = R"(rules:
  - id: ok-rule
    effect: allow
    actions: [read]
    purposes: [research]
  - id: typo
    effect: allow
    actions: [read]
    purposes: [reserch]
)";
  exchange::v1::LoadPoliciesRequest load;
  auto* d = load.add_documents();
  d->set_name("bad.yaml");
  d->set_content(bad);
  {
    grpc::ClientContext ctx;
    Deadline(&ctx);
    exchange::v1::LoadPoliciesResponse resp;
    grpc::Status s = Admin().exchange->LoadPolicies(&ctx, load, &resp);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_THAT(s.error_message(), HasSubstr("bad.yaml:9"));
    EXPECT_THAT(s.error_message(), HasSubstr("unknown purpose \"reserch\""));
  }
  {
    exchange::v1::ValidatePoliciesRequest req;
    *req.add_documents() = *d;
    grpc::ClientContext ctx;
    Deadline(&ctx);
    exchange::v1::ValidatePoliciesResponse resp;
    ASSERT_TRUE(Admin().exchange->ValidatePolicies(&ctx, req, &resp).ok());
    EXPECT_FALSE(resp.valid());
    ASSERT_GE(resp.errors_size(), 1);
    EXPECT_EQ(resp.errors(0).name(), "bad.yaml");
    EXPECT_EQ(resp.errors(0).line(), 9u);
  }
  {
    grpc::ClientContext ctx;
    Deadline(&ctx);
    exchange::v1::ListPoliciesResponse after;
    ASSERT_TRUE(Admin().exchange->ListPolicies(&ctx, {}, &after).ok());
    EXPECT_EQ(after.revision(), before.revision());
    ASSERT_EQ(after.documents_size(), 2);
    EXPECT_EQ(after.documents(0).name(), "read.yaml");
    EXPECT_TRUE(after.documents(0).content().empty());
  }
  // Only policy administrators load; auditors may list; others neither.
  Client& auditor = NewClient("city", "audit", {"auditor"});
  Client& stranger = NewClient("stranger", "x");
  {
    grpc::ClientContext ctx;
    Deadline(&ctx);
    exchange::v1::LoadPoliciesResponse resp;
    EXPECT_EQ(auditor.exchange->LoadPolicies(&ctx, load, &resp).error_code(),
              grpc::StatusCode::PERMISSION_DENIED);
  }
  {
    grpc::ClientContext ctx;
    Deadline(&ctx);
    exchange::v1::ListPoliciesRequest req;
    req.set_include_content(true);
    exchange::v1::ListPoliciesResponse resp;
    ASSERT_TRUE(auditor.exchange->ListPolicies(&ctx, req, &resp).ok());
    ASSERT_EQ(resp.documents_size(), 2);
    EXPECT_EQ(resp.documents(0).content(), kPolicy);
  }
  {
    grpc::ClientContext ctx;
    Deadline(&ctx);
    exchange::v1::ListPoliciesResponse resp;
    EXPECT_EQ(stranger.exchange->ListPolicies(&ctx, {}, &resp).error_code(),
              grpc::StatusCode::PERMISSION_DENIED);
  }
}

TEST_F(ExchangeReadTest, QueryDecidesPerEntity) {
  ASSERT_NO_FATAL_FAILURE(PublishBeds());
  Client& hospital = NewClient("hospital-a", "ops");
  Client& insurer = NewClient("insurer", "claims");
  Client& research = NewClient("research-lab", "stats");
  Client& stranger = NewClient("stranger", "x");

  exchange::v1::QueryResponse r;
  ASSERT_TRUE(Query(hospital, "medical_care", &r).ok());
  EXPECT_EQ(Ids(r), (std::vector<std::string>{"a-gen-1", "a-icu-1", "a-icu-2", "b-gen-1",
                                              "b-icu-1", "b-icu-2"}));
  for (const auto& e : r.entities()) {
    EXPECT_EQ(e.type(), kBeds);
    EXPECT_TRUE(e.attributes().contains("free_beds")) << e.id();
    EXPECT_EQ(e.version(), 1u);
  }
  // The deny rule on hospital-b leaves its beds out for the insurer.
  r.Clear();
  ASSERT_TRUE(Query(insurer, "medical_care", &r).ok());
  EXPECT_EQ(Ids(r), (std::vector<std::string>{"a-gen-1", "a-icu-1", "a-icu-2"}));
  // Aggregate-only: no individual records.
  r.Clear();
  ASSERT_TRUE(Query(research, "research", &r).ok());
  EXPECT_EQ(r.entities_size(), 0);
  // No rule at all: PERMISSION_DENIED; unknown purpose: INVALID_ARGUMENT.
  grpc::Status s = Query(stranger, "medical_care", &r);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_EQ(Query(hospital, "reserch", &r).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(Query(hospital, "research", &r).error_code(), grpc::StatusCode::PERMISSION_DENIED);
  // Projection.
  r.Clear();
  ASSERT_TRUE(Query(hospital, "medical_care", &r, 0, "", {"free_beds"}).ok());
  ASSERT_EQ(r.entities_size(), 6);
  EXPECT_EQ(r.entities(0).attributes_size(), 1);
  EXPECT_TRUE(r.entities(0).attributes().contains("free_beds"));
}

TEST_F(ExchangeReadTest, ADenialRevealsNothingAboutExistence) {
  ASSERT_NO_FATAL_FAILURE(PublishBeds());
  Client& insurer = NewClient("insurer", "claims");
  Client& stranger = NewClient("stranger", "x");
  exchange::v1::GetEntityResponse resp;
  // No right to the type: the same PERMISSION_DENIED for an existing and a
  // missing entity (decided before the store is read).
  grpc::Status existing = GetEntity(stranger, kBeds, "a-icu-1", "medical_care", &resp);
  grpc::Status missing = GetEntity(stranger, kBeds, "zz-missing", "medical_care", &resp);
  EXPECT_EQ(existing.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_EQ(missing.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_EQ(existing.error_message(), missing.error_message());
  // Right to the type, not to this entity: NOT_FOUND exactly as if missing.
  grpc::Status denied = GetEntity(insurer, kBeds, "b-icu-1", "medical_care", &resp);
  grpc::Status absent = GetEntity(insurer, kBeds, "b-icu-9", "medical_care", &resp);
  EXPECT_EQ(denied.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(absent.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(absl::StrReplaceAll(denied.error_message(), {{"b-icu-1", "ID"}}),
            absl::StrReplaceAll(absent.error_message(), {{"b-icu-9", "ID"}}));
  ASSERT_TRUE(GetEntity(insurer, kBeds, "a-icu-1", "medical_care", &resp).ok());
  EXPECT_EQ(resp.entity().id(), "a-icu-1");
}

TEST_F(ExchangeReadTest, CursorPagingIsStableUnderConcurrentWrites) {
  std::vector<event::v1::Event> initial;
  std::set<std::string> initial_ids;
  for (int i = 0; i < 60; i += 2) {
    std::string id = absl::StrFormat("bed-%02d", i);
    initial.push_back(Bed("hospital-a", id, i));
    initial_ids.insert(id);
  }
  ASSERT_NO_FATAL_FAILURE(Publish(initial));
  for (const auto& id : initial_ids) WaitForEntity(kBeds, id);
  Client& hospital = NewClient("hospital-a", "ops");

  std::map<std::string, int> seen;
  std::string token;
  int page = 0;
  do {
    exchange::v1::QueryResponse r;
    grpc::Status s = Query(hospital, "medical_care", &r, 7, token);
    ASSERT_TRUE(s.ok()) << s.error_message();
    std::string last;
    for (const auto& e : r.entities()) {
      ++seen[e.id()];
      EXPECT_LT(last, e.id()) << "entities must come by ascending id";
      last = e.id();
    }
    token = r.next_page_token();
    // Meanwhile: every entity is updated and new ones appear between the
    // existing ids, before and after the cursor.
    std::vector<event::v1::Event> writes;
    for (const auto& id : initial_ids) writes.push_back(Bed("hospital-a", id, 100 + page));
    writes.push_back(Bed("hospital-a", absl::StrFormat("bed-%02d", 2 * page + 1), 1));
    writes.push_back(Bed("hospital-a", absl::StrFormat("bed-%02d", 59 - 2 * page), 1));
    ASSERT_NO_FATAL_FAILURE(Publish(writes));
    ++page;
  } while (!token.empty() && page < 100);
  for (const auto& id : initial_ids) EXPECT_EQ(seen[id], 1) << id;
  for (const auto& [id, n] : seen) EXPECT_EQ(n, 1) << id << " returned twice";
  EXPECT_GE(page, 5);

  // A token belongs to its query: another purpose or projection is refused.
  exchange::v1::QueryResponse first;
  ASSERT_TRUE(Query(hospital, "medical_care", &first, 5).ok());
  ASSERT_FALSE(first.next_page_token().empty());
  exchange::v1::QueryResponse other;
  EXPECT_EQ(Query(hospital, "medical_care", &other, 5, first.next_page_token(), {"free_beds"})
                .error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
}

TEST_F(ExchangeReadTest, HistoryOldestFirstPagedAndDeniedLooksMissing) {
  for (int v = 1; v <= 3; ++v) {
    ASSERT_NO_FATAL_FAILURE(Publish({Bed("hospital-b", "b-icu-1", 10 * v)}));
    WaitForEntity(kBeds, "b-icu-1", v);
  }
  Client& hospital = NewClient("hospital-a", "ops");
  Client& insurer = NewClient("insurer", "claims");
  std::vector<uint64_t> versions;
  std::vector<int64_t> free;
  std::string token;
  int pages = 0;
  do {
    exchange::v1::QueryHistoryRequest req;
    req.set_type(kBeds);
    req.set_id("b-icu-1");
    req.set_purpose("medical_care");
    req.set_page_size(2);
    req.set_page_token(token);
    grpc::ClientContext ctx;
    Deadline(&ctx);
    exchange::v1::QueryHistoryResponse resp;
    grpc::Status s = hospital.exchange->QueryHistory(&ctx, req, &resp);
    ASSERT_TRUE(s.ok()) << s.error_message();
    for (const auto& st : resp.states()) {
      versions.push_back(st.version());
      const auto& f = st.attributes().at("free_beds");
      free.push_back(f.kind_case() == exchange::v1::Value::kIntValue
                         ? f.int_value()
                         : static_cast<int64_t>(f.double_value()));
    }
    token = resp.next_page_token();
    ++pages;
  } while (!token.empty() && pages < 10);
  EXPECT_EQ(versions, (std::vector<uint64_t>{1, 2, 3}));
  EXPECT_EQ(free, (std::vector<int64_t>{10, 20, 30}));
  EXPECT_EQ(pages, 2);

  auto history = [&](Client& c, const std::string& id) {
    exchange::v1::QueryHistoryRequest req;
    req.set_type(kBeds);
    req.set_id(id);
    req.set_purpose("medical_care");
    grpc::ClientContext ctx;
    Deadline(&ctx);
    exchange::v1::QueryHistoryResponse resp;
    return c.exchange->QueryHistory(&ctx, req, &resp);
  };
  grpc::Status denied = history(insurer, "b-icu-1");
  grpc::Status missing = history(insurer, "b-icu-7");
  EXPECT_EQ(denied.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(missing.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(absl::StrReplaceAll(denied.error_message(), {{"b-icu-1", "ID"}}),
            absl::StrReplaceAll(missing.error_message(), {{"b-icu-7", "ID"}}));
}

TEST_F(ExchangeReadTest, AggregateOnlyReadsGroupsOfTheMinimumSize) {
  std::vector<event::v1::Event> beds;
  for (int i = 0; i < 4; ++i) {
    beds.push_back(Bed("hospital-a", absl::StrFormat("icu-%d", i), i + 1));
  }
  beds.push_back(Bed("hospital-a", "gen-0", 5, health::v1::WARD_KIND_GENERAL));
  beds.push_back(Bed("hospital-a", "gen-1", 6, health::v1::WARD_KIND_GENERAL));
  ASSERT_NO_FATAL_FAILURE(Publish(beds));
  for (const auto& e : beds) WaitForEntity(kBeds, e.extensions().at(kEntityIdExtension));
  Client& research = NewClient("research-lab", "stats");
  exchange::v1::AggregateRequest req;
  req.mutable_filter()->set_type(kBeds);
  req.set_purpose("research");
  req.add_group_by("ward_kind");
  auto* m = req.add_metrics();
  m->set_function(exchange::v1::AGGREGATE_FUNCTION_SUM);
  m->set_path("free_beds");
  auto* mx = req.add_metrics();
  mx->set_function(exchange::v1::AGGREGATE_FUNCTION_MAX);
  mx->set_path("free_beds");
  grpc::ClientContext ctx;
  Deadline(&ctx);
  exchange::v1::AggregateResponse resp;
  grpc::Status s = research.exchange->Aggregate(&ctx, req, &resp);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(resp.min_group_size(), 3u);
  EXPECT_EQ(resp.suppressed_groups(), 1u);  // the two general beds
  ASSERT_EQ(resp.groups_size(), 1);
  EXPECT_EQ(resp.groups(0).count(), 4u);
  ASSERT_EQ(resp.groups(0).values_size(), 2);
  EXPECT_DOUBLE_EQ(resp.groups(0).values(0), 1 + 2 + 3 + 4);
  EXPECT_DOUBLE_EQ(resp.groups(0).values(1), 4);

  // A bad metric is INVALID_ARGUMENT.
  req.mutable_metrics(0)->set_function(exchange::v1::AGGREGATE_FUNCTION_UNSPECIFIED);
  grpc::ClientContext ctx2;
  Deadline(&ctx2);
  EXPECT_EQ(research.exchange->Aggregate(&ctx2, req, &resp).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
}

TEST_F(ExchangeReadTest, PersonalDataDoesNotCrossTheBorderWithoutARule) {
  health::v1::CareRecord record;
  record.set_record_id("r-1");
  record.set_provider("jp-clinic");
  record.set_care_level("2");
  auto e = EventBuilder()
               .Source("//test.city/jp-clinic")
               .Subject("health.care.r-1")
               .Type(kCare)
               .Domain("health")
               .Classification(event::v1::CLASSIFICATION_PERSONAL)
               .DataSubject("p-7")
               .Owner("jp-clinic")
               .Jurisdiction("JP")
               .Extension(kEntityIdExtension, "r-1")
               .ProtoData(record)
               .Build();
  ASSERT_TRUE(e.ok()) << e.status();
  ASSERT_NO_FATAL_FAILURE(Publish({*e}));
  WaitForEntity(kCare, "r-1");
  Client& clinic = NewClient("jp-clinic", "records");
  Client& partner = NewClient("us-partner", "records");
  exchange::v1::GetEntityResponse resp;
  grpc::Status home = GetEntity(clinic, kCare, "r-1", "medical_care", &resp);
  ASSERT_TRUE(home.ok()) << home.error_message();
  EXPECT_EQ(resp.entity().data_subject(), "p-7");
  EXPECT_EQ(GetEntity(partner, kCare, "r-1", "medical_care", &resp).error_code(),
            grpc::StatusCode::NOT_FOUND);
  // Explain says why.
  exchange::v1::ExplainRequest req;
  req.set_action(exchange::v1::ACTION_READ);
  req.set_purpose("medical_care");
  auto* r = req.mutable_resource();
  r->set_type(kCare);
  r->set_classification(event::v1::CLASSIFICATION_PERSONAL);
  r->set_jurisdiction("JP");
  r->set_data_subject("p-7");
  r->set_owner("jp-clinic");
  grpc::ClientContext ctx;
  Deadline(&ctx);
  exchange::v1::ExplainResponse explained;
  ASSERT_TRUE(partner.exchange->Explain(&ctx, req, &explained).ok());
  EXPECT_EQ(explained.decision().effect(), exchange::v1::EFFECT_DENY);
  EXPECT_THAT(explained.decision().reason(), HasSubstr("cross-border"));
  // Explaining for someone else needs policy-admin.
  req.set_principal(clinic.spiffe_id);
  grpc::ClientContext ctx2;
  Deadline(&ctx2);
  EXPECT_EQ(partner.exchange->Explain(&ctx2, req, &explained).error_code(),
            grpc::StatusCode::PERMISSION_DENIED);
  grpc::ClientContext ctx3;
  Deadline(&ctx3);
  ASSERT_TRUE(Admin().exchange->Explain(&ctx3, req, &explained).ok());
  EXPECT_EQ(explained.decision().effect(), exchange::v1::EFFECT_ALLOW);
  EXPECT_THAT(explained.decision().rule_ids(), UnorderedElementsAre("care-records"));
}

TEST_F(ExchangeReadTest, BusPublishAndSubscribeGoThroughThePdp) {
  Client& stranger = NewClient("stranger", "x");
  Client& sensor = NewClient("sensors", "beds");
  bus::v1::PublishRequest pub;
  *pub.add_events() = Bed("hospital-a", "a-icu-1", 3);
  {
    grpc::ClientContext ctx;
    Deadline(&ctx);
    bus::v1::PublishResponse resp;
    grpc::Status s = stranger.bus->Publish(&ctx, pub, &resp);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::PERMISSION_DENIED) << s.error_message();
  }
  {
    grpc::ClientContext ctx;
    Deadline(&ctx);
    bus::v1::PublishResponse resp;
    grpc::Status s = sensor.bus->Publish(&ctx, pub, &resp);
    EXPECT_TRUE(s.ok()) << s.error_message();
  }
  {
    bus::v1::SubscribeRequest sub;
    sub.set_subject_pattern("health.beds.>");
    grpc::ClientContext ctx;
    Deadline(&ctx, absl::Seconds(10));
    auto reader = stranger.bus->Subscribe(&ctx, sub);
    bus::v1::SubscribeResponse resp;
    EXPECT_FALSE(reader->Read(&resp));
    EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::PERMISSION_DENIED);
  }
}

// Query is served through gRPC's callback API, GetEntity (as every other
// method) through the sync one. A caller whose certificate is revoked while
// its connection stays open is refused by both alike: UNAUTHENTICATED,
// naming the revocation, and no data.
TEST_F(ExchangeReadTest, RevokedCallerOnAnOpenConnectionIsUnauthenticatedForQueryAndGetEntity) {
  PublishBeds();
  Client& hospital = NewClient("hospital-a", "beds");
  exchange::v1::QueryResponse r;
  ASSERT_TRUE(Query(hospital, "medical_care", &r).ok());
  ASSERT_EQ(r.entities_size(), 6);
  exchange::v1::GetEntityResponse g;
  ASSERT_TRUE(GetEntity(hospital, kBeds, "a-icu-1", "medical_care", &g).ok());

  auto ca = CityCa::Open(ca_dir_);
  ASSERT_TRUE(ca.ok()) << ca.status();
  ASSERT_TRUE((*ca)->Revoke(hospital.serial, RevocationReason::kKeyCompromise).ok());
  // The node re-reads a changed CRL at most once a second; the connection
  // (established before the revocation) stays open.
  grpc::Status query;
  const absl::Time give_up = absl::Now() + absl::Seconds(20);
  do {
    r.Clear();
    query = Query(hospital, "medical_care", &r);
    if (query.error_code() == grpc::StatusCode::UNAUTHENTICATED) break;
    absl::SleepFor(absl::Milliseconds(100));
  } while (absl::Now() < give_up);
  EXPECT_EQ(query.error_code(), grpc::StatusCode::UNAUTHENTICATED) << query.error_message();
  EXPECT_THAT(query.error_message(), HasSubstr("revoked"));
  EXPECT_EQ(r.entities_size(), 0);
  g.Clear();
  grpc::Status get = GetEntity(hospital, kBeds, "a-icu-1", "medical_care", &g);
  EXPECT_EQ(get.error_code(), grpc::StatusCode::UNAUTHENTICATED) << get.error_message();
  EXPECT_THAT(get.error_message(), HasSubstr("revoked"));
  // Others are unaffected.
  r.Clear();
  ASSERT_TRUE(Query(NewClient("hospital-a", "beds2"), "medical_care", &r).ok());
  EXPECT_EQ(r.entities_size(), 6);
}

// Calls the client cancels right after starting them end CANCELLED (or
// complete, when the answer was first); the node goes on answering.
TEST_F(ExchangeReadTest, QueriesCancelledByTheClientEndAndTheNodeGoesOn) {
  PublishBeds();
  Client& hospital = NewClient("hospital-a", "beds");
  exchange::v1::QueryRequest req;
  req.mutable_filter()->set_type(kBeds);
  req.set_purpose("medical_care");
  struct Call {
    grpc::ClientContext ctx;
    exchange::v1::QueryResponse resp;
    grpc::Status status;
  };
  constexpr int kCalls = 32;
  std::vector<std::unique_ptr<Call>> calls;
  absl::Mutex mu;
  int finished = 0;
  for (int i = 0; i < kCalls; ++i) {
    auto call = std::make_unique<Call>();
    Deadline(&call->ctx);
    Call* c = call.get();
    hospital.exchange->async()->Query(&c->ctx, &req, &c->resp,
                                      [c, &mu, &finished](grpc::Status s) {
                                        absl::MutexLock lock(&mu);
                                        c->status = std::move(s);
                                        ++finished;
                                      });
    if (i % 2 == 0) c->ctx.TryCancel();
    calls.push_back(std::move(call));
  }
  {
    absl::MutexLock lock(&mu);
    mu.Await(absl::Condition(
        +[](int* n) { return *n == kCalls; }, &finished));
  }
  for (int i = 0; i < kCalls; ++i) {
    const Call& c = *calls[i];
    if (i % 2 == 0 && c.status.error_code() == grpc::StatusCode::CANCELLED) continue;
    ASSERT_TRUE(c.status.ok()) << i << ": " << c.status.error_message();
    EXPECT_EQ(c.resp.entities_size(), 6) << i;
  }
  exchange::v1::QueryResponse r;
  ASSERT_TRUE(Query(hospital, "medical_care", &r).ok());
  EXPECT_EQ(r.entities_size(), 6);
}

}  // namespace
}  // namespace cityos::exchange_test
