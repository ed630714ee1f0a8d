// The audit trail of the exchange: decisions are in the log (denials one by
// one, allows aggregated with a count), QueryAudit's visibility rules (an
// auditor sees all, a person what concerns itself, a service its own org),
// VerifyAudit, and cityosctl as a subprocess: `audit verify` passes on the
// node, `audit verify --dir` on a copy passes, and fails at the very entry a
// tamperer edited.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "cityos/entity.h"
#include "cityos/event.h"
#include "cityos/health/v1/health.pb.h"
#include "cityos/tls.h"
#include "log/crc32c.h"
#include "service_fixture.h"

namespace cityos::exchange_test {
namespace {

using ::testing::HasSubstr;

constexpr char kPolicy[] = R"(rules:
  - id: care-read
    effect: allow
    actions: [read]
    principal: {orgs: [care-center]}
    resource:
      types: [cityos.health.v1.ElderlyCareAlert]
    purposes: [elderly_care]
    legal_basis: contract
)";

event::v1::Event Alert(const std::string& person) {
  health::v1::ElderlyCareAlert a;
  a.set_alert_id("al-" + person);
  return CareAlertEvent(person, person, a);
}

class ExchangeAuditTest : public ExchangeNodeTest {
 protected:
  void SetUp() override {
    ExchangeNodeTest::SetUp();
    ASSERT_NO_FATAL_FAILURE(StartNode("policy:\n  jurisdiction: JP\n"));
    ASSERT_NO_FATAL_FAILURE(LoadPolicy("care.yaml", kPolicy));
    ASSERT_NO_FATAL_FAILURE(Publish({Alert("p-1"), Alert("p-2")}));
    WaitForEntity(kCareAlert, "p-1");
    WaitForEntity(kCareAlert, "p-2");
  }

  grpc::Status Get(Client& c, const std::string& id) {
    exchange::v1::GetEntityResponse resp;
    return GetEntity(c, kCareAlert, id, "elderly_care", &resp);
  }

  grpc::Status QueryAudit(Client& c, exchange::v1::QueryAuditRequest req,
                          std::vector<exchange::v1::AuditEntry>* out) {
    out->clear();
    while (true) {
      grpc::ClientContext ctx;
      Deadline(&ctx);
      exchange::v1::QueryAuditResponse resp;
      grpc::Status s = c.exchange->QueryAudit(&ctx, req, &resp);
      if (!s.ok()) return s;
      for (const auto& e : resp.entries()) out->push_back(e);
      if (resp.next_page_token().empty()) return s;
      req.set_page_token(resp.next_page_token());
    }
  }

  // A cityosctl context file for `c`.
  std::string ContextFor(const Client& c, const std::string& name) {
    std::string path = dir_.File("ctl/" + name + ".yaml");
    ClientContext ctx{.name = name,
                      .endpoint = address_,
                      .trust_domain = "local",
                      .ca = dir_.File("data/pki/ca/ca.pem"),
                      .cert = c.cert,
                      .key = c.key,
                      .server_id = server_id_};
    EXPECT_TRUE(SaveClientContext(path, ctx).ok());
    return path;
  }
};

TEST_F(ExchangeAuditTest, DecisionsAreAuditedAndVisibleToWhomTheyConcern) {
  Client& center = NewClient("care-center", "monitor");
  Client& stranger = NewClient("stranger", "x");
  Client& person = NewClient("city", "p-1", {}, /*user=*/true);
  for (int i = 0; i < 5; ++i) ASSERT_TRUE(Get(center, "p-1").ok());
  ASSERT_TRUE(Get(center, "p-2").ok());
  EXPECT_EQ(Get(stranger, "p-1").error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_EQ(Get(stranger, "p-2").error_code(), grpc::StatusCode::PERMISSION_DENIED);

  // The auditor sees everything: five reads of p-1 aggregated (count), the
  // denials one by one.
  std::vector<exchange::v1::AuditEntry> all;
  ASSERT_TRUE(QueryAudit(Admin(), {}, &all).ok());
  uint64_t reads_p1 = 0;
  int denials = 0;
  for (const auto& e : all) {
    if (e.principal() == center.spiffe_id && e.action() == "read" &&
        e.resource() == std::string(kCareAlert) + "/p-1") {
      EXPECT_EQ(e.decision(), exchange::v1::EFFECT_ALLOW);
      EXPECT_EQ(e.data_subject(), "p-1");
      EXPECT_THAT(e.rule_ids(), ::testing::ElementsAre("care-read"));
      reads_p1 += e.count() == 0 ? 1 : e.count();
    }
    if (e.principal() == stranger.spiffe_id) {
      EXPECT_EQ(e.decision(), exchange::v1::EFFECT_DENY);
      EXPECT_EQ(e.severity(), exchange::v1::SEVERITY_NOTICE);
      ++denials;
    }
  }
  EXPECT_EQ(reads_p1, 5u);
  EXPECT_EQ(denials, 2);

  // A person: only what concerns itself ("who read my data").
  std::vector<exchange::v1::AuditEntry> mine;
  ASSERT_TRUE(QueryAudit(person, {}, &mine).ok());
  ASSERT_FALSE(mine.empty());
  for (const auto& e : mine) EXPECT_EQ(e.data_subject(), "p-1");
  exchange::v1::QueryAuditRequest others;
  others.set_data_subject("p-2");
  EXPECT_EQ(QueryAudit(person, others, &mine).error_code(), grpc::StatusCode::PERMISSION_DENIED);

  // A service: what principals of its org did.
  std::vector<exchange::v1::AuditEntry> own;
  ASSERT_TRUE(QueryAudit(center, {}, &own).ok());
  ASSERT_FALSE(own.empty());
  for (const auto& e : own) EXPECT_THAT(e.principal(), HasSubstr("/org/care-center/"));
  exchange::v1::QueryAuditRequest foreign;
  foreign.set_principal(stranger.spiffe_id);
  EXPECT_EQ(QueryAudit(center, foreign, &own).error_code(), grpc::StatusCode::PERMISSION_DENIED);

  // VerifyAudit: auditors only.
  {
    grpc::ClientContext ctx;
    Deadline(&ctx);
    exchange::v1::VerifyAuditResponse resp;
    EXPECT_EQ(center.exchange->VerifyAudit(&ctx, {}, &resp).error_code(),
              grpc::StatusCode::PERMISSION_DENIED);
  }
  {
    grpc::ClientContext ctx;
    Deadline(&ctx);
    exchange::v1::VerifyAuditResponse resp;
    ASSERT_TRUE(Admin().exchange->VerifyAudit(&ctx, {}, &resp).ok());
    EXPECT_TRUE(resp.ok()) << resp.message();
    EXPECT_GT(resp.entries_checked(), 3u);
  }
}

// Rewrites the entry with `sequence` in the segments of `dir`, keeping its
// record well-formed (fresh CRC), as a tamperer who edits a line would.
void EditEntry(const std::string& dir, uint64_t sequence) {
  std::vector<std::string> segments;
  for (const auto& f : std::filesystem::directory_iterator(dir)) {
    std::string name = f.path().filename().string();
    if (name.rfind("audit-", 0) == 0 && name.size() > 4 &&
        name.substr(name.size() - 4) == ".log") {
      segments.push_back(f.path().string());
    }
  }
  std::sort(segments.begin(), segments.end());
  for (const std::string& path : segments) {
    std::string data = testing::ReadFile(path);
    std::string out;
    size_t pos = 0;
    bool edited = false;
    while (pos + 9 <= data.size()) {
      uint32_t len;
      std::memcpy(&len, data.data() + pos, 4);
      char type = data[pos + 8];
      std::string payload = data.substr(pos + 9, len);
      if (type == 1) {
        exchange::v1::AuditEntry e;
        ASSERT_TRUE(e.ParseFromString(payload));
        if (e.sequence() == sequence) {
          e.set_reason(e.reason() + " (edited)");
          payload = e.SerializeAsString();
          edited = true;
        }
      }
      uint32_t crc = log_internal::crc32c::Extend(log_internal::crc32c::Value(&type, 1),
                                                  payload.data(), payload.size());
      uint32_t masked = log_internal::crc32c::Mask(crc);
      uint32_t new_len = static_cast<uint32_t>(payload.size());
      out.append(reinterpret_cast<const char*>(&new_len), 4);
      out.append(reinterpret_cast<const char*>(&masked), 4);
      out.push_back(type);
      out.append(payload);
      pos += 9 + len;
    }
    out.append(data.substr(pos));
    if (edited) {
      testing::WriteFile(path, out);
      return;
    }
  }
  FAIL() << "no entry " << sequence << " in " << dir;
}

TEST_F(ExchangeAuditTest, CityosctlVerifiesTheLogAndFindsTheEditedEntry) {
  Client& center = NewClient("care-center", "monitor");
  Client& auditor = NewClient("city", "auditor", {"auditor"});
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(Get(center, "p-1").ok());
    ASSERT_TRUE(Get(center, "p-2").ok());
  }
  std::string config = ContextFor(auditor, "auditor");
  auto verify = testing::RunCommand({CITYOSCTL_PATH, "--config", config, "audit", "verify"},
                                    absl::Seconds(60));
  EXPECT_EQ(verify.code, 0) << verify.out << verify.err;
  EXPECT_THAT(verify.out, HasSubstr("audit log OK"));
  // Someone without the auditor role is refused.
  std::string center_config = ContextFor(center, "center");
  auto refused = testing::RunCommand(
      {CITYOSCTL_PATH, "--config", center_config, "audit", "verify"}, absl::Seconds(60));
  EXPECT_EQ(refused.code, 1);
  EXPECT_THAT(refused.err, HasSubstr("permission denied"));
  // audit query through the CLI, as JSON.
  auto query = testing::RunCommand({CITYOSCTL_PATH, "--config", config, "--json", "audit",
                                    "query", "--principal", center.spiffe_id},
                                   absl::Seconds(60));
  EXPECT_EQ(query.code, 0) << query.err;
  EXPECT_THAT(query.out, HasSubstr(center.spiffe_id));

  // Offline: a copy of the stopped node's audit directory.
  const std::string audit_dir = dir_.File("data/audit");
  const std::string public_key = audit_dir + "/signing.key.pub";
  StopNode();
  const std::string copy = dir_.File("audit-copy");
  std::filesystem::copy(audit_dir, copy, std::filesystem::copy_options::recursive);
  auto clean = testing::RunCommand(
      {CITYOSCTL_PATH, "audit", "verify", "--dir", copy, "--public-key", public_key},
      absl::Seconds(60));
  EXPECT_EQ(clean.code, 0) << clean.out << clean.err;
  ASSERT_NO_FATAL_FAILURE(EditEntry(copy, 4));
  auto tampered = testing::RunCommand(
      {CITYOSCTL_PATH, "audit", "verify", "--dir", copy, "--public-key", public_key},
      absl::Seconds(60));
  EXPECT_EQ(tampered.code, 1) << tampered.out << tampered.err;
  EXPECT_THAT(tampered.out, HasSubstr("BROKEN at sequence 4"));
  EXPECT_THAT(tampered.out, HasSubstr("HASH_MISMATCH"));
}

}  // namespace
}  // namespace cityos::exchange_test

namespace cityos::exchange_test {
namespace {

TEST_F(ExchangeAuditTest, CityosctlDrivesPoliciesExplainAndReads) {
  Client& center = NewClient("care-center", "monitor");
  const std::string admin = ContextFor(Admin(), "admin");
  const std::string reader = ContextFor(center, "center");
  auto ctl = [](std::vector<std::string> args) {
    args.insert(args.begin(), CITYOSCTL_PATH);
    return testing::RunCommand(args, absl::Seconds(60));
  };
  const std::string bad = dir_.File("bad.yaml");
  testing::WriteFile(bad,
                     "rules:\n  - id: typo\n    effect: allow\n    actions: [read]\n"
                     "    purposes: [reserch]\n");
  auto validate = ctl({"--config", admin, "policy", "validate", bad});
  EXPECT_EQ(validate.code, 1) << validate.err;
  EXPECT_THAT(validate.out, HasSubstr("bad.yaml:5"));
  auto load_bad = ctl({"--config", admin, "policy", "load", bad});
  EXPECT_EQ(load_bad.code, 1);
  EXPECT_THAT(load_bad.err, HasSubstr("unknown purpose"));

  const std::string extra = dir_.File("extra.yaml");
  testing::WriteFile(extra,
                     "rules:\n  - id: extra-read\n    effect: allow\n    actions: [read]\n"
                     "    principal: {orgs: [care-center]}\n    purposes: [research]\n"
                     "    resource: {classifications: [public]}\n");
  auto load = ctl({"--config", admin, "policy", "load", extra});
  EXPECT_EQ(load.code, 0) << load.err;
  auto list = ctl({"--config", admin, "policy", "list"});
  EXPECT_EQ(list.code, 0) << list.err;
  EXPECT_THAT(list.out, HasSubstr("care.yaml"));
  EXPECT_THAT(list.out, HasSubstr("extra.yaml"));
  auto denied_list = ctl({"--config", reader, "policy", "list"});
  EXPECT_EQ(denied_list.code, 1);
  EXPECT_THAT(denied_list.err, HasSubstr("permission denied"));

  auto explain = ctl({"--config", admin, "explain", "--action", "read", "--type", kCareAlert,
                      "--classification", "sensitive", "--purpose", "elderly_care",
                      "--data-subject", "p-1", "--principal", center.spiffe_id});
  EXPECT_EQ(explain.code, 0) << explain.err;
  EXPECT_THAT(explain.out, HasSubstr("ALLOW"));
  EXPECT_THAT(explain.out, HasSubstr("care-read"));

  auto query = ctl({"--config", reader, "exchange", "query", "--type", kCareAlert, "--purpose",
                    "elderly_care", "--all"});
  EXPECT_EQ(query.code, 0) << query.err;
  EXPECT_THAT(query.out, HasSubstr(std::string(kCareAlert) + "/p-1"));
  EXPECT_THAT(query.out, HasSubstr(std::string(kCareAlert) + "/p-2"));
  auto get = ctl({"--config", reader, "--json", "exchange", "get", kCareAlert, "p-2", "--purpose",
                  "elderly_care"});
  EXPECT_EQ(get.code, 0) << get.err;
  EXPECT_THAT(get.out, HasSubstr("\"id\": \"p-2\""));
  auto missing = ctl({"--config", reader, "exchange", "get", kCareAlert, "p-9", "--purpose",
                      "elderly_care"});
  EXPECT_EQ(missing.code, 1);
  EXPECT_THAT(missing.err, HasSubstr("NOT_FOUND"));
  auto emergencies = ctl({"--config", reader, "emergency", "list", "--all"});
  EXPECT_EQ(emergencies.code, 0) << emergencies.err;
  EXPECT_THAT(emergencies.out, HasSubstr("(no emergencies)"));
  auto declare = ctl({"--config", reader, "emergency", "declare", "--region", "CN-ZJ-QZ",
                      "--for", "2h", "--reason", "drill"});
  EXPECT_EQ(declare.code, 1);
  EXPECT_THAT(declare.err, HasSubstr("permission denied"));
}

}  // namespace
}  // namespace cityos::exchange_test
