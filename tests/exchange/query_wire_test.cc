// Query built on the wire (services/exchange/event_wire.h, QueryToWire):
//  - EntityHeaderView reads off a stored entity what ResourceView::Of gives
//    the parsed one;
//  - EntityWireRedaction on a serialized entity gives what
//    ObligationApplier::Apply gives on the parsed one, for paths through
//    nested and repeated fields, and declines (for the parsed path) what it
//    does not handle;
//  - the service's wire-built Query response parses to the protobuf-built
//    one (ExchangeServiceImpl::Query), page by page, for redactions on nested
//    and repeated fields, with the same page tokens, and a denied caller gets
//    the same denial from both and nothing else.
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <sqlite3.h>

#include <algorithm>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "cityos/audit.h"
#include "cityos/bus.h"
#include "cityos/carbon/v1/carbon.pb.h"
#include "cityos/clock.h"
#include "cityos/entity.h"
#include "cityos/exchange/v1/exchange.grpc.pb.h"
#include "cityos/health/v1/health.pb.h"
#include "cityos/observability.h"
#include "cityos/policy.h"
#include "cityos/state_store.h"
#include "cityos/trace.h"
#include "decision_audit.h"
#include "event_wire.h"
#include "exchange_service.h"
#include "google/protobuf/io/coded_stream.h"
#include "google/protobuf/io/zero_copy_stream_impl_lite.h"
#include "google/protobuf/util/message_differencer.h"
#include "exchange_test_util.h"
#include "testutil.h"

namespace cityos {
namespace {

using exchange::v1::Entity;
using exchange::v1::Obligation;
using exchange::v1::QueryRequest;
using exchange::v1::QueryResponse;
using exchange::v1::Value;
using google::protobuf::util::MessageDifferencer;

using exchange_test::Redact;

// `personal`: about a person (data subject, sensitive), which a read needs
// consent for; the service tests use public data.
event::v1::Event Wrap(const google::protobuf::Message& payload, const std::string& id,
                      bool personal) {
  event::v1::Event e;
  e.set_id("e-" + id);
  e.set_source("//src");
  e.set_type(payload.GetDescriptor()->full_name());
  e.set_subject("test.subject");
  e.set_domain("health");
  if (personal) e.set_data_subject("person-1");
  e.set_owner("org");
  e.set_region("CN-ZJ-QZ");
  e.set_jurisdiction("CN");
  e.set_classification(personal ? event::v1::CLASSIFICATION_SENSITIVE
                                 : event::v1::CLASSIFICATION_PUBLIC);
  e.mutable_time()->set_seconds(1780003725);
  (*e.mutable_extensions())[kEntityIdExtension] = id;
  e.mutable_proto_data()->PackFrom(payload);
  return e;
}

Entity AlertEntity(const std::string& id, bool personal = true) {
  health::v1::ElderlyCareAlert alert;
  alert.set_alert_id(id);
  alert.set_message("fell in bathroom");
  alert.mutable_vitals()->set_device_id("watch-7");
  alert.mutable_vitals()->set_heart_rate_bpm(120);
  auto e = EntityFromEvent(Wrap(alert, id, personal));
  EXPECT_TRUE(e.ok()) << e.status();
  return e.ok() ? *e : Entity();
}

Entity EmissionsEntity(const std::string& id, bool personal = true) {
  carbon::v1::EmissionTotal t;
  t.set_total_kg(12.5);
  for (int i = 0; i < 3; ++i) {
    carbon::v1::EnergyUse* u = t.add_energy();
    u->set_quantity(10.0 * (i + 1));
    u->set_unit("kWh");
  }
  auto e = EntityFromEvent(Wrap(t, id, personal));
  EXPECT_TRUE(e.ok()) << e.status();
  return e.ok() ? *e : Entity();
}

// An entity of a type this node does not know: attributes built by hand, a
// list of nested messages inside a nested message, and a time.
Entity HandMadeEntity() {
  Entity e;
  e.set_type("test.v1.Unknown");
  e.set_id("u-1");
  auto& attrs = *e.mutable_attributes();
  attrs["name"].set_string_value("n");
  attrs["when"].mutable_time_value()->set_seconds(100);
  auto& outer = *attrs["outer"].mutable_map_value()->mutable_fields();
  outer["keep"].set_int_value(1);
  auto* list = outer["items"].mutable_list_value();
  for (int i = 0; i < 3; ++i) {
    Value* v = list->add_values();
    auto& f = *v->mutable_map_value()->mutable_fields();
    f["secret"].set_string_value("s" + std::to_string(i));
    f["open"].set_int_value(i);
    auto& deeper = *f["deeper"].mutable_map_value()->mutable_fields();
    deeper["secret"].set_bool_value(true);
    deeper["open"].set_double_value(1.5);
  }
  list->add_values()->set_int_value(7);  // a scalar among the messages
  e.mutable_location()->set_latitude(28.97);
  e.mutable_location()->set_longitude(118.87);
  return e;
}

TEST(EntityHeaderView, EqualsTheParsedEntity) {
  std::vector<Entity> samples = {AlertEntity("a-1"), EmissionsEntity("c-1"), HandMadeEntity(),
                                 Entity()};
  samples.back().set_type("t");
  samples.back().set_id("only-ids");
  *samples[0].add_obligations() = Redact({"message"});
  for (const Entity& e : samples) {
    SCOPED_TRACE(e.ShortDebugString());
    const std::string bytes = e.SerializeAsString();
    EntityHeaderView view;
    ASSERT_TRUE(view.Parse(bytes));
    exchange_test::ExpectSameResource(view.Resource(), ResourceView::Of(e));
    EXPECT_EQ(view.has_obligations, e.obligations_size() > 0);
  }
  EntityHeaderView view;
  EXPECT_FALSE(view.Parse(std::string("\x0a\x05" "ab", 4)));  // length past the end
  // Two locations: a parse merges them; the view leaves that to the parse.
  Entity e = HandMadeEntity();
  std::string twice = e.SerializeAsString() + e.SerializeAsString();
  EXPECT_FALSE(view.Parse(twice));
}

// Bytes SerializeAsString would not write for the fields the decision reads
// are refused (the caller parses the entity instead): a singular field
// twice, out of order, a default value written, another wire type, invalid
// UTF-8, a location with a coordinate twice. What it writes, unknown fields
// after the known ones included, is accepted.
TEST(EntityHeaderView, RefusesNonCanonicalBytes) {
  Entity e = AlertEntity("a-1");
  const std::string canonical = e.SerializeAsString();
  auto field = [](uint32_t number, std::string_view content) {
    std::string out;
    wire::AppendLengthDelimitedHeader(number, content.size(), &out);
    out.append(content);
    return out;
  };
  auto varint = [](uint32_t number, uint64_t v) {
    std::string out;
    wire::AppendVarintField(number, v, &out);
    return out;
  };
  EntityHeaderView view;
  ASSERT_TRUE(view.Parse(canonical));
  struct Case {
    const char* what;
    std::string bytes;
  };
  std::vector<Case> cases = {
      {"data_subject twice", canonical + field(13, "person-2")},
      {"owner twice", canonical + field(10, "org-2")},
      {"type twice", canonical + field(1, "other.Type")},
      {"id twice", canonical + field(2, "a-2")},
      {"region twice", canonical + field(11, "XX")},
      {"classification twice",
       canonical + varint(9, event::v1::CLASSIFICATION_PUBLIC)},
      {"out of order", field(10, "org") + field(1, e.type()) + field(2, e.id())},
      {"empty owner written", field(1, e.type()) + field(2, e.id()) + field(10, "")},
      {"zero classification written", field(1, e.type()) + field(2, e.id()) + varint(9, 0)},
      {"classification as bytes", field(1, e.type()) + field(2, e.id()) + field(9, "\x03")},
      {"owner as varint", field(1, e.type()) + field(2, e.id()) + varint(10, 5)},
      {"data_subject not UTF-8", field(1, e.type()) + field(2, e.id()) + field(13, "\xff\xfe")},
      {"unknown field before a known one", field(20, "x") + field(1, e.type())},
      {"latitude twice",
       field(1, e.type()) + field(2, e.id()) +
           field(4, std::string("\x09\0\0\0\0\0\0\xf0\x3f\x09\0\0\0\0\0\0\0\x40", 18))},
  };
  for (const Case& c : cases) {
    EXPECT_FALSE(view.Parse(c.bytes)) << c.what;
  }
  // Unknown fields after the known ones are what SerializeAsString writes
  // for an entity parsed with them.
  Entity with_unknown;
  ASSERT_TRUE(with_unknown.ParseFromString(canonical + field(20, "future")));
  const std::string reserialized = with_unknown.SerializeAsString();
  ASSERT_NE(reserialized, canonical);
  ASSERT_TRUE(view.Parse(reserialized));
  EXPECT_EQ(view.data_subject, e.data_subject());
}

// The wire redaction of `entity` per `obligations`, parsed, against Apply on
// the parsed entity.
void ExpectWireEqualsApply(const Entity& entity, const std::vector<Obligation>& obligations) {
  ObligationApplier applier(PseudonymKey::ForRecipient("node-secret-0123456789", "r"));
  Entity want = entity;
  ASSERT_TRUE(applier.Apply(obligations, &want).ok());
  std::optional<EntityWireRedaction> plan = EntityWireRedaction::Compile(obligations, entity.type());
  ASSERT_TRUE(plan.has_value());
  std::string out = "prefix";
  ASSERT_TRUE(plan->Apply(entity.SerializeAsString(), &out));
  ASSERT_EQ(out.substr(0, 6), "prefix");
  Entity got;
  ASSERT_TRUE(got.ParseFromString(out.substr(6)));
  EXPECT_TRUE(MessageDifferencer::Equals(got, want))
      << "wire: " << got.ShortDebugString() << "\nparsed: " << want.ShortDebugString();
  // Something was removed, unless the paths named nothing present.
  if (!MessageDifferencer::Equals(want, entity)) {
    EXPECT_LT(out.size() - 6, entity.SerializeAsString().size());
  }
}

TEST(EntityWireRedaction, EqualsApplyOnNestedAndRepeatedFields) {
  struct Case {
    const char* name;
    Entity entity;
    std::vector<Obligation> obligations;
  };
  std::vector<Case> cases = {
      {"top level and nested", AlertEntity("a-1"), {Redact({"message", "vitals.heart_rate_bpm"})}},
      {"nested message whole", AlertEntity("a-1"), {Redact({"vitals"})}},
      {"two obligations", AlertEntity("a-1"), {Redact({"message"}), Redact({"vitals.device_id"})}},
      {"repeated messages", EmissionsEntity("c-1"), {Redact({"energy.quantity"})}},
      {"repeated field whole", EmissionsEntity("c-1"), {Redact({"energy", "total_kg"})}},
      {"list in a nested message", HandMadeEntity(), {Redact({"outer.items.secret"})}},
      {"two levels into list elements", HandMadeEntity(), {Redact({"outer.items.deeper.secret"})}},
      {"a path and its prefix", HandMadeEntity(), {Redact({"outer.items.open", "outer"})}},
      {"absent attribute", HandMadeEntity(), {Redact({"missing", "outer.missing.x"})}},
      {"not data-changing kinds only", AlertEntity("a-1"), {}},
  };
  Obligation retention;
  retention.set_kind(exchange::v1::OBLIGATION_KIND_RETENTION_LIMIT);
  cases.back().obligations.push_back(retention);
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    ExpectWireEqualsApply(c.entity, c.obligations);
  }
}

// Byte for byte: everything but the redacted attribute entries is kept, in
// the order stored (the entries are laid out one message per attribute and
// concatenated, which protobuf reads as one entity; so the order is known).
TEST(EntityWireRedaction, KeepsEveryOtherByteInOrder) {
  const std::string type = "cityos.health.v1.ElderlyCareAlert";
  Entity header;
  header.set_type(type);
  header.set_id("p-1");
  header.set_owner("care-home");
  auto entry = [](const std::string& key, const std::string& value) {
    Entity e;
    (*e.mutable_attributes())[key].set_string_value(value);
    return e.SerializeAsString();
  };
  const std::vector<std::string> keys = {"a", "secret", "b", "c", "secret2", "d"};
  for (const std::vector<std::string>& redacted :
       std::vector<std::vector<std::string>>{{"secret"},
                                             {"secret", "secret2"},
                                             {"a"},
                                             {"d"},
                                             {"a", "secret", "b", "c", "secret2", "d"},
                                             {"absent"}}) {
    SCOPED_TRACE(redacted.front());
    std::string stored = header.SerializeAsString(), want = stored;
    for (const std::string& k : keys) {
      const std::string bytes = entry(k, "value of " + k);
      stored += bytes;
      if (std::find(redacted.begin(), redacted.end(), k) == redacted.end()) want += bytes;
    }
    std::optional<EntityWireRedaction> plan =
        EntityWireRedaction::Compile({Redact(redacted)}, type);
    ASSERT_TRUE(plan.has_value());
    std::string out;
    ASSERT_TRUE(plan->Apply(stored, &out));
    EXPECT_EQ(out, want);
  }
}

TEST(EntityWireRedaction, LeavesWhatItDoesNotHandleToTheParsedPath) {
  const std::string type = "cityos.health.v1.ElderlyCareAlert";
  Obligation pseudo = Redact({"message"});
  pseudo.set_kind(exchange::v1::OBLIGATION_KIND_PSEUDONYMIZE);
  EXPECT_FALSE(EntityWireRedaction::Compile({pseudo}, type).has_value());
  EXPECT_FALSE(EntityWireRedaction::Compile({Redact({"event.subject"})}, type).has_value());
  EXPECT_FALSE(EntityWireRedaction::Compile({Redact({"location"})}, type).has_value());
  EXPECT_FALSE(EntityWireRedaction::Compile({Redact({"a.value_unit"})}, type).has_value());
  EXPECT_FALSE(EntityWireRedaction::Compile({Redact({"unit"})}, type).has_value());
  EXPECT_FALSE(EntityWireRedaction::Compile({Redact({"a..b"})}, type).has_value());

  // A time's component: Apply clears it in the value; the wire declines at
  // run time, leaving `out` as it was.
  Entity e = HandMadeEntity();
  std::optional<EntityWireRedaction> plan =
      EntityWireRedaction::Compile({Redact({"when.seconds"})}, e.type());
  ASSERT_TRUE(plan.has_value());
  std::string out = "prefix";
  EXPECT_FALSE(plan->Apply(e.SerializeAsString(), &out));
  EXPECT_EQ(out, "prefix");
  // Malformed bytes.
  plan = EntityWireRedaction::Compile({Redact({"name"})}, e.type());
  ASSERT_TRUE(plan.has_value());
  EXPECT_FALSE(plan->Apply(std::string("\x1a\x09" "abc", 5), &out));
  EXPECT_EQ(out, "prefix");
  // A map entry with its value twice (a parse merges them): declined.
  const std::string entry = std::string("\x0a\x04name") + std::string("\x12\x02\x08\x01", 4) +
                            std::string("\x12\x02\x08\x00", 4);
  const std::string twice = "\x1a" + std::string(1, static_cast<char>(entry.size())) + entry;
  Entity parsed;
  ASSERT_TRUE(parsed.ParseFromString(twice));  // well formed for protobuf
  EXPECT_FALSE(plan->Apply(twice, &out));
  EXPECT_EQ(out, "prefix");
}

// ---- the service ----------------------------------------------------------

constexpr char kPolicy[] = R"(rules:
  - id: alerts
    effect: allow
    actions: [read]
    principal: {orgs: [reader]}
    resource:
      types: [cityos.health.v1.ElderlyCareAlert]
    purposes: [medical_care]
    obligations:
      - redact: [message, vitals.heart_rate_bpm]
  - id: emissions
    effect: allow
    actions: [read]
    principal: {orgs: [reader]}
    resource:
      types: [cityos.carbon.v1.EmissionTotal]
    purposes: [carbon_accounting]
    obligations:
      - redact: [energy.quantity]
  - id: emissions-plain
    effect: allow
    actions: [read]
    principal: {orgs: [auditor-org]}
    resource:
      types: [cityos.carbon.v1.EmissionTotal]
    purposes: [carbon_accounting]
)";

class QueryWireTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto bus = Bus::Open({.data_dir = dir_.File("bus")});
    ASSERT_TRUE(bus.ok()) << bus.status();
    bus_ = *std::move(bus);
    auto audit = AuditLog::Open({.dir = dir_.File("audit"), .node = "test"});
    ASSERT_TRUE(audit.ok()) << audit.status();
    audit_ = *std::move(audit);
    node_ = Principal::Node("test.city", "test");
    auto pdp = PolicyDecisionPoint::Create(
        {.audit = audit_.get(), .node = node_, .node_name = "test"});
    ASSERT_TRUE(pdp.ok()) << pdp.status();
    pdp_ = *std::move(pdp);
    auto loaded =
        pdp_->Load(node_, {{.name = "test.yaml", .content = kPolicy}}, {.replace_all = true});
    ASSERT_TRUE(loaded.ok()) << loaded.status();
    auto store = OpenSqliteStateStore({.path = dir_.File("entities.db")});
    ASSERT_TRUE(store.ok()) << store.status();
    store_ = *std::move(store);
    auditor_ = std::make_unique<DecisionAuditor>(audit_.get(), Clock::Real());
    appliers_ = std::make_unique<RecipientAppliers>(std::string(32, 'k'));
    deps_ = ExchangeDeps{.bus = bus_.get(),
                         .pdp = pdp_.get(),
                         .audit = audit_.get(),
                         .store = store_.get(),
                         .clock = Clock::Real(),
                         .node = node_,
                         .resolver = [this](grpc::ServerContextBase*)
                             -> absl::StatusOr<Principal> { return caller_; },
                         .auditor = auditor_.get(),
                         .appliers = appliers_.get()};
    service_ = std::make_unique<ExchangeServiceImpl>(&deps_);
    std::vector<Entity> entities;
    for (int i = 0; i < 11; ++i) {
      entities.push_back(AlertEntity("a-" + std::to_string(100 + i), false));
      entities.push_back(EmissionsEntity("c-" + std::to_string(100 + i), false));
    }
    ASSERT_TRUE(store_->UpsertBatch(std::move(entities)).ok());
    caller_ = *Principal::FromSpiffeId("spiffe://test.city/org/reader/svc/app");
  }

  void TearDown() override {
    service_.reset();
    auditor_.reset();
    if (audit_ != nullptr) (void)audit_->Close();
  }

  // Both ways, the wire response parsed; expects the same status.
  void Both(const QueryRequest& req, QueryResponse* typed, QueryResponse* wire,
            grpc::Status* status) {
    grpc::ServerContext ctx1, ctx2;
    *status = service_->Query(&ctx1, &req, typed);
    std::string bytes;
    grpc::Status wire_status = service_->QueryToWire(&ctx2, &req, &bytes);
    EXPECT_EQ(wire_status.error_code(), status->error_code());
    EXPECT_EQ(wire_status.error_message(), status->error_message());
    if (!wire_status.ok()) {
      EXPECT_TRUE(bytes.empty());
      return;
    }
    ASSERT_TRUE(wire->ParseFromString(bytes));
  }

  // Deterministic bytes (maps sorted): equal for equal messages.
  static std::string Canonical(const google::protobuf::Message& m) {
    std::string out;
    google::protobuf::io::StringOutputStream stream(&out);
    google::protobuf::io::CodedOutputStream coded(&stream);
    coded.SetSerializationDeterministic(true);
    m.SerializeToCodedStream(&coded);
    coded.Trim();
    return out;
  }

  // One page of `type` through the byte path, parsed.
  QueryResponse WireQuery(const std::string& type, const std::string& purpose) {
    QueryRequest req;
    req.mutable_filter()->set_type(type);
    req.set_purpose(purpose);
    grpc::ServerContext ctx;
    std::string bytes;
    QueryResponse r;
    grpc::Status st = service_->QueryToWire(&ctx, &req, &bytes);
    EXPECT_TRUE(st.ok()) << st.error_message();
    EXPECT_TRUE(r.ParseFromString(bytes));
    return r;
  }

  // Pages through `type` both ways and compares every page.
  void ComparePages(const std::string& type, const std::string& purpose, int expected_entities) {
    QueryRequest req;
    req.mutable_filter()->set_type(type);
    req.set_purpose(purpose);
    req.set_page_size(4);
    int seen = 0;
    for (int page = 0; page < 10; ++page) {
      SCOPED_TRACE(page);
      QueryResponse typed, wire;
      grpc::Status status;
      Both(req, &typed, &wire, &status);
      ASSERT_TRUE(status.ok()) << status.error_message();
      EXPECT_TRUE(MessageDifferencer::Equals(typed, wire))
          << "typed: " << typed.ShortDebugString() << "\nwire: " << wire.ShortDebugString();
      EXPECT_EQ(Canonical(typed), Canonical(wire));
      seen += wire.entities_size();
      if (wire.next_page_token().empty()) break;
      req.set_page_token(wire.next_page_token());
    }
    EXPECT_EQ(seen, expected_entities);
  }

  // Replaces the stored bytes of one entity, straight in the store's table.
  void OverwriteStoredBlob(const std::string& type, const std::string& id,
                           const std::string& blob) {
    sqlite3* db = nullptr;
    ASSERT_EQ(sqlite3_open(dir_.File("entities.db").c_str(), &db), SQLITE_OK);
    sqlite3_busy_timeout(db, 5000);
    sqlite3_stmt* stmt = nullptr;
    ASSERT_EQ(sqlite3_prepare_v2(db, "UPDATE entities SET blob=?1 WHERE type=?2 AND id=?3", -1,
                                 &stmt, nullptr),
              SQLITE_OK);
    sqlite3_bind_blob(stmt, 1, blob.data(), static_cast<int>(blob.size()), SQLITE_TRANSIENT);
    sqlite3_bind_text(stmt, 2, type.data(), static_cast<int>(type.size()), SQLITE_TRANSIENT);
    sqlite3_bind_text(stmt, 3, id.data(), static_cast<int>(id.size()), SQLITE_TRANSIENT);
    EXPECT_EQ(sqlite3_step(stmt), SQLITE_DONE);
    EXPECT_EQ(sqlite3_changes(db), 1);
    sqlite3_finalize(stmt);
    sqlite3_close(db);
  }

  // Resources of the "read" entries the audit log holds.
  std::vector<std::string> AuditedReads() {
    auditor_->Flush();
    EXPECT_TRUE(audit_->Flush().ok());
    auto page = audit_->Query({.action = "read", .limit = 1000});
    EXPECT_TRUE(page.ok()) << page.status();
    std::vector<std::string> out;
    if (page.ok()) {
      for (const auto& entry : page->entries) out.push_back(entry.resource());
    }
    return out;
  }

  testing::TempDir dir_;
  std::unique_ptr<Bus> bus_;
  std::unique_ptr<AuditLog> audit_;
  Principal node_;
  std::unique_ptr<PolicyDecisionPoint> pdp_;
  std::unique_ptr<StateStore> store_;
  std::unique_ptr<DecisionAuditor> auditor_;
  std::unique_ptr<RecipientAppliers> appliers_;
  ExchangeDeps deps_;
  std::unique_ptr<ExchangeServiceImpl> service_;
  Principal caller_;
};

TEST_F(QueryWireTest, NestedRedactionSameAsProtobufBuilt) {
  ComparePages("cityos.health.v1.ElderlyCareAlert", "medical_care", 11);
  // And the redaction did happen.
  const QueryResponse r = WireQuery("cityos.health.v1.ElderlyCareAlert", "medical_care");
  ASSERT_EQ(r.entities_size(), 11);
  for (const Entity& e : r.entities()) {
    EXPECT_FALSE(e.attributes().contains("message"));
    EXPECT_FALSE(e.attributes().at("vitals").map_value().fields().contains("heart_rate_bpm"));
    EXPECT_TRUE(e.attributes().at("vitals").map_value().fields().contains("device_id"));
    ASSERT_EQ(e.obligations_size(), 1);
    EXPECT_EQ(e.obligations(0).kind(), exchange::v1::OBLIGATION_KIND_REDACT);
  }
}

// Whether every entry of every entity's `energy` list has `quantity`; the
// lists are checked to be there, three entries each.
void ExpectEnergyQuantities(const QueryResponse& r, bool present) {
  ASSERT_EQ(r.entities_size(), 11);
  for (const Entity& e : r.entities()) {
    ASSERT_TRUE(e.attributes().contains("energy"));
    const auto& entries = e.attributes().at("energy").list_value().values();
    ASSERT_EQ(entries.size(), 3);
    for (const auto& v : entries) {
      EXPECT_EQ(v.map_value().fields().contains("quantity"), present);
      EXPECT_TRUE(v.map_value().fields().contains("unit"));
    }
  }
}

TEST_F(QueryWireTest, RepeatedRedactionSameAsProtobufBuilt) {
  ComparePages("cityos.carbon.v1.EmissionTotal", "carbon_accounting", 11);
  // And the redaction did happen, in every entry of the list.
  const QueryResponse r = WireQuery("cityos.carbon.v1.EmissionTotal", "carbon_accounting");
  ExpectEnergyQuantities(r, /*present=*/false);
  for (const Entity& e : r.entities()) EXPECT_EQ(e.obligations_size(), 1);
}

TEST_F(QueryWireTest, NoObligationsSameAsProtobufBuilt) {
  caller_ = *Principal::FromSpiffeId("spiffe://test.city/org/auditor-org/svc/app");
  ComparePages("cityos.carbon.v1.EmissionTotal", "carbon_accounting", 11);
  // And nothing was taken out.
  const QueryResponse r = WireQuery("cityos.carbon.v1.EmissionTotal", "carbon_accounting");
  ExpectEnergyQuantities(r, /*present=*/true);
  for (const Entity& e : r.entities()) EXPECT_EQ(e.obligations_size(), 0);
}

TEST_F(QueryWireTest, TokensInterchangeAndDenialsAgree) {
  // A token from the wire path continues on the protobuf path.
  QueryRequest req;
  req.mutable_filter()->set_type("cityos.health.v1.ElderlyCareAlert");
  req.set_purpose("medical_care");
  req.set_page_size(5);
  grpc::ServerContext ctx;
  std::string bytes;
  ASSERT_TRUE(service_->QueryToWire(&ctx, &req, &bytes).ok());
  QueryResponse first;
  ASSERT_TRUE(first.ParseFromString(bytes));
  ASSERT_FALSE(first.next_page_token().empty());
  req.set_page_token(first.next_page_token());
  QueryResponse typed, wire;
  grpc::Status status;
  Both(req, &typed, &wire, &status);
  ASSERT_TRUE(status.ok());
  ASSERT_EQ(typed.entities_size(), 5);
  EXPECT_GT(typed.entities(0).id(), first.entities(4).id());
  EXPECT_TRUE(MessageDifferencer::Equals(typed, wire));

  // A principal no rule allows: the same denial, nothing about the data.
  caller_ = *Principal::FromSpiffeId("spiffe://test.city/org/stranger/svc/app");
  req.clear_page_token();
  Both(req, &typed, &wire, &status);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  // Allowed for another purpose only: the same.
  caller_ = *Principal::FromSpiffeId("spiffe://test.city/org/reader/svc/app");
  req.set_purpose("research");
  Both(req, &typed, &wire, &status);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  // A bad token: INVALID_ARGUMENT from both.
  req.set_purpose("medical_care");
  req.set_page_token("not-a-token");
  Both(req, &typed, &wire, &status);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
}

// Requests the wire path hands to the protobuf-built one (projection,
// attribute filter) answer the same too.
TEST_F(QueryWireTest, ProjectionAndAttributeFilterSameAsProtobufBuilt) {
  QueryRequest req;
  req.mutable_filter()->set_type("cityos.health.v1.ElderlyCareAlert");
  req.set_purpose("medical_care");
  req.add_projection("vitals");
  QueryResponse typed, wire;
  grpc::Status status;
  Both(req, &typed, &wire, &status);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(wire.entities_size(), 11);
  EXPECT_TRUE(MessageDifferencer::Equals(typed, wire));
}

// A stored entity whose bytes do not parse (here: invalid UTF-8 in a string
// the decision reads, which EntityHeaderView alone would not notice): the
// wire path fails as the protobuf-built one does, with the same DATA_LOSS.
TEST_F(QueryWireTest, InvalidUtf8EntityFailsAsProtobufBuilt) {
  const std::string type = "cityos.carbon.v1.EmissionTotal";
  caller_ = *Principal::FromSpiffeId("spiffe://test.city/org/auditor-org/svc/app");
  Entity e = EmissionsEntity("c-103", false);
  std::string blob = e.SerializeAsString();
  blob += std::string("\x6a\x02\xff\xfe");  // data_subject (13): not UTF-8
  Entity probe;
  ASSERT_FALSE(probe.ParseFromString(blob));
  OverwriteStoredBlob(type, "c-103", blob);
  QueryRequest req;
  req.mutable_filter()->set_type(type);
  req.set_purpose("carbon_accounting");
  QueryResponse typed, wire;
  grpc::Status status;
  Both(req, &typed, &wire, &status);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::DATA_LOSS) << status.error_message();
}

// The first stored entity that does not parse ends the query on the wire
// path as on the protobuf-built one: the same DATA_LOSS, and nothing after
// it is decided (no "read" audit entries for later entities).
TEST_F(QueryWireTest, StopsAtTheFirstUnreadableEntity) {
  const std::string type = "cityos.health.v1.ElderlyCareAlert";
  OverwriteStoredBlob(type, "a-105", std::string("\x0a\x7f" "truncated", 11));
  QueryRequest req;
  req.mutable_filter()->set_type(type);
  req.set_purpose("medical_care");
  req.set_page_size(20);
  grpc::ServerContext ctx;
  std::string bytes;
  grpc::Status wire_status = service_->QueryToWire(&ctx, &req, &bytes);
  EXPECT_EQ(wire_status.error_code(), grpc::StatusCode::DATA_LOSS);
  EXPECT_TRUE(bytes.empty());
  std::vector<std::string> reads = AuditedReads();
  std::vector<std::string> want;
  for (int i = 100; i < 105; ++i) want.push_back(type + "/a-" + std::to_string(i));
  std::sort(reads.begin(), reads.end());
  EXPECT_EQ(reads, want);
  // The protobuf-built Query: the same status and message.
  QueryResponse typed;
  grpc::ServerContext ctx2;
  grpc::Status typed_status = service_->Query(&ctx2, &req, &typed);
  EXPECT_EQ(typed_status.error_code(), wire_status.error_code());
  EXPECT_EQ(typed_status.error_message(), wire_status.error_message());
}

// Query served through gRPC (the callback handler): code running inside it
// (here the caller resolver, as QueryToWire's logs would) sees the caller's
// trace as the thread's current trace context, and the gRPC thread's own
// context is restored afterwards.
TEST_F(QueryWireTest, CallbackQueryRunsInTheCallersTrace) {
  std::mutex mu;
  std::vector<TraceContext> seen;
  deps_.resolver = [&](grpc::ServerContextBase*) -> absl::StatusOr<Principal> {
    std::lock_guard<std::mutex> lock(mu);
    seen.push_back(CurrentTraceContext());
    return caller_;
  };
  service_ = std::make_unique<ExchangeServiceImpl>(&deps_);
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
  AddServerObservability(builder);
  builder.RegisterService(service_.get());
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  ASSERT_NE(server, nullptr);
  auto channel = grpc::CreateChannel("127.0.0.1:" + std::to_string(port),
                                     grpc::InsecureChannelCredentials());
  auto stub = exchange::v1::ExchangeService::NewStub(channel);
  const TraceContext mine = TraceContext::NewRoot();
  for (int i = 0; i < 3; ++i) {
    grpc::ClientContext ctx;
    ctx.AddMetadata(kTraceparentKey, mine.ToTraceparent());
    QueryRequest req;
    req.mutable_filter()->set_type("cityos.health.v1.ElderlyCareAlert");
    req.set_purpose("medical_care");
    QueryResponse resp;
    grpc::Status status = stub->Query(&ctx, req, &resp);
    ASSERT_TRUE(status.ok()) << status.error_message();
    EXPECT_EQ(resp.entities_size(), 11);
  }
  server->Shutdown();
  std::lock_guard<std::mutex> lock(mu);
  ASSERT_EQ(seen.size(), 3u);
  for (const TraceContext& t : seen) {
    ASSERT_TRUE(t.valid());
    EXPECT_EQ(t.trace_id(), mine.trace_id());
    EXPECT_NE(t.span_id(), mine.span_id());  // the server's own span
  }
}

}  // namespace
}  // namespace cityos
