// Policy administration: compile errors with lines, atomic loads,
// expected_revision, Validate, document metadata, the shipped policies.
#include <filesystem>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "cityos/clock.h"
#include "cityos/policy.h"
#include "gtest/gtest.h"
#include "policy_test_util.h"
#include "testutil.h"

namespace cityos::policy_test {
namespace {

constexpr char kGood[] = R"(rules:
  - id: public-read
    effect: allow
    actions: [read]
    resource: {classifications: [public]}
)";

// The first error of compiling `yaml` alone.
exchange::v1::PolicyError FirstError(PolicyDecisionPoint& pdp,
                                     const std::string& yaml) {
  ValidationResult r =
      pdp.Validate({{.name = "doc.yaml", .content = yaml}}, false);
  EXPECT_FALSE(r.errors.empty()) << yaml;
  return r.errors.empty() ? exchange::v1::PolicyError() : r.errors[0];
}

TEST(PolicyAdmin, ErrorsNameDocumentLineAndKey) {
  SimulatedClock clock(Monday10());
  auto pdp = MakePdp(&clock, "");
  struct ErrCase {
    std::string yaml;
    uint32_t line;
    std::string message_part;
  };
  const std::vector<ErrCase> cases = {
      {"rules:\n  - id: a\n    effect: allow\n    actions: [read\n", 5,
       "YAML syntax error"},
      {"rules:\n  - id: a\n    effect: allow\n    actions: [read]\n    "
       "principl: {}\n",
       5, "rules[0]: unknown key \"principl\""},
      {"rules:\n  - id: a\n    effect: allow\n    actions: [reed]\n", 4,
       "rules[0].actions: unknown action \"reed\""},
      {"rules:\n  - id: a\n    effect: allow\n    actions: [read]\n    "
       "purposes: [reserch]\n",
       5, "unknown purpose \"reserch\""},
      {"rules:\n  - id: a\n    effect: deny\n    actions: [read]\n    "
       "obligations:\n"
       "      - retention: 30d\n",
       5, "a deny rule may not carry obligations"},
      {"rules:\n  - id: a\n    effect: deny\n    actions: [read]\n    "
       "legal_basis: consent\n",
       5, "a deny rule may not carry legal_basis"},
      {"rules:\n  - id: a\n    effect: maybe\n    actions: [read]\n", 3,
       "unknown effect"},
      {"rules:\n  - id: a\n    effect: allow\n    actions: []\n", 4,
       "must not be empty"},
      {"rules:\n  - effect: allow\n    actions: [read]\n", 2, "id: required"},
      {"rules:\n  - id: \"bad id!\"\n    effect: allow\n    actions: [read]\n",
       2, "rules[0].id"},
      {"rules:\n  - id: a\n    effect: allow\n    actions: [read]\n    "
       "resource:\n"
       "      classifications: [secret]\n",
       6, "unknown classification \"secret\""},
      {"rules:\n  - id: a\n    effect: allow\n    actions: [read]\n    "
       "resource:\n"
       "      subjects: [\"a.>.b\"]\n",
       6, "rules[0].resource.subjects"},
      {"rules:\n  - id: a\n    effect: allow\n    actions: [read]\n    when: "
       "{hours: \"8-20\"}\n",
       5, "rules[0].when.hours"},
      {"rules:\n  - id: a\n    effect: allow\n    actions: [read]\n    when: "
       "{weekdays: [mo]}\n",
       5, "unknown weekday"},
      {"rules:\n  - id: a\n    effect: allow\n    actions: [read]\n    when: "
       "{from: yesterday}\n",
       5, "rules[0].when.from"},
      {"rules:\n  - id: a\n    effect: allow\n    actions: [read]\n    "
       "obligations:\n"
       "      - blur: [x]\n",
       6, "unknown obligation \"blur\""},
      {"rules:\n  - id: a\n    effect: allow\n    actions: [read]\n    "
       "obligations:\n"
       "      - coarsen_location: {cell_m: -1}\n",
       6, "cell_m"},
      {"rules:\n  - id: a\n    effect: allow\n    actions: [read]\n    "
       "resource:\n"
       "      owners: [$principal.team]\n",
       6, "unknown variable"},
      {"rules:\n  - id: a\n    effect: allow\n    actions: [read]\n    "
       "cross_border: [Japan]\n",
       5, "ISO 3166-1"},
      {"rules:\n  - id: a\n    effect: allow\n    actions: [read]\n    "
       "legal_basis: whim\n",
       5, "unknown legal basis"},
      {"rulez: []\n", 1, "unknown key \"rulez\""},
      {"- just a list\n", 1, "top level"},
  };
  for (const ErrCase& c : cases) {
    exchange::v1::PolicyError e = FirstError(*pdp, c.yaml);
    EXPECT_EQ(e.name(), "doc.yaml") << c.yaml;
    EXPECT_EQ(e.line(), c.line) << c.yaml << "\n" << e.message();
    EXPECT_NE(e.message().find(c.message_part), std::string::npos)
        << c.yaml << "\ngot: " << e.message();
    EXPECT_GT(e.column(), 0u) << c.yaml;
  }
}

TEST(PolicyAdmin, ValidateReturnsEveryError) {
  SimulatedClock clock(Monday10());
  auto pdp = MakePdp(&clock, "");
  ValidationResult r = pdp->Validate(
      {{.name = "a.yaml",
        .content = "rules:\n  - id: x\n    effect: allow\n    actions: [reed]\n"
                   "  - id: y\n    effect: allow\n    actions: [read]\n    "
                   "purposes: [reserch]\n"}},
      false);
  ASSERT_EQ(r.errors.size(), 2u);
  EXPECT_EQ(r.errors[0].line(), 4u);
  EXPECT_EQ(r.errors[1].line(), 8u);
  r = pdp->Validate({{.name = "a.yaml", .content = kGood}}, false);
  EXPECT_TRUE(r.errors.empty());
  EXPECT_EQ(r.rules, 1u);
}

TEST(PolicyAdmin, DuplicateRuleIdNamesBothDocuments) {
  SimulatedClock clock(Monday10());
  auto pdp = MakePdp(&clock, "");
  ASSERT_TRUE(
      pdp->Load(Admin(), {{.name = "first.yaml", .content = kGood}}, {}).ok());
  auto st = pdp->Load(Admin(), {{.name = "second.yaml", .content = kGood}}, {});
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.status().code(), absl::StatusCode::kInvalidArgument);
  const std::string msg(st.status().message());
  EXPECT_NE(msg.find("second.yaml:2"), std::string::npos) << msg;
  EXPECT_NE(msg.find("first.yaml"), std::string::npos) << msg;
  EXPECT_NE(msg.find("duplicate rule id \"public-read\""), std::string::npos)
      << msg;
  // Validate with merge_with_current sees the same conflict; alone it is fine.
  EXPECT_FALSE(pdp->Validate({{.name = "second.yaml", .content = kGood}}, true)
                   .errors.empty());
  EXPECT_TRUE(pdp->Validate({{.name = "second.yaml", .content = kGood}}, false)
                  .errors.empty());
}

TEST(PolicyAdmin, LoadIsAtomicAndRevisioned) {
  SimulatedClock clock(Monday10());
  RecordingAudit audit;
  auto pdp = MakePdp(&clock, "", {.audit = &audit});
  const Principal reader = Svc("anyone", "reader");
  AccessRequest req{.principal = &reader, .action = Action::kRead};
  req.resource.classification = event::v1::CLASSIFICATION_PUBLIC;
  EXPECT_FALSE(pdp->Decide(req)->allowed());

  auto info = pdp->Load(Admin(), {{.name = "a.yaml", .content = kGood}}, {});
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->revision, 1u);
  EXPECT_EQ(info->rules, 1u);
  ASSERT_EQ(info->documents.size(), 1u);
  const auto& doc = info->documents[0];
  EXPECT_EQ(doc.name(), "a.yaml");
  EXPECT_EQ(doc.rules(), 1u);
  EXPECT_EQ(doc.sha256().size(), 64u);
  EXPECT_EQ(doc.loaded_by(), Admin().SpiffeId());
  EXPECT_EQ(doc.load_time().seconds(), absl::ToUnixSeconds(Monday10()));
  EXPECT_EQ(doc.content(), kGood);
  EXPECT_TRUE(pdp->Decide(req)->allowed());

  // A bad document in the new set: nothing changes.
  auto bad = pdp->Load(Admin(),
                       {{.name = "b.yaml", .content = kGood},
                        {.name = "c.yaml",
                         .content = "rules:\n  - id: z\n    effect: allow\n"
                                    "    actions: [reed]\n"}},
                       {.replace_all = true});
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find(
                "c.yaml:4: rules[0].actions: unknown action \"reed\""),
            std::string::npos)
      << bad.status();
  PolicySetInfo cur = pdp->Current();
  EXPECT_EQ(cur.revision, 1u);
  ASSERT_EQ(cur.documents.size(), 1u);
  EXPECT_EQ(cur.documents[0].name(), "a.yaml");
  EXPECT_TRUE(pdp->Decide(req)->allowed());

  // expected_revision.
  auto stale =
      pdp->Load(Admin(), {{.name = "b.yaml", .content = "rules: []\n"}},
                {.expected_revision = 7});
  EXPECT_EQ(stale.status().code(), absl::StatusCode::kFailedPrecondition);
  auto fresh =
      pdp->Load(Admin(), {{.name = "b.yaml", .content = "rules: []\n"}},
                {.expected_revision = 1});
  ASSERT_TRUE(fresh.ok()) << fresh.status();
  EXPECT_EQ(fresh->revision, 2u);
  EXPECT_EQ(fresh->documents.size(), 2u);
  // Remove.
  auto removed = pdp->Load(Admin(), {}, {.remove = {"a.yaml"}});
  ASSERT_TRUE(removed.ok()) << removed.status();
  EXPECT_EQ(removed->revision, 3u);
  EXPECT_EQ(removed->rules, 0u);
  EXPECT_FALSE(pdp->Decide(req)->allowed());
  EXPECT_EQ(pdp->Load(Admin(), {}, {.remove = {"nope.yaml"}}).status().code(),
            absl::StatusCode::kInvalidArgument);
  // Bad document names.
  EXPECT_FALSE(
      pdp->Load(Admin(), {{.name = "../x", .content = kGood}}, {}).ok());

  int loads = 0;
  for (const auto& e : audit.entries()) {
    if (e.action() == "policy.load") {
      ++loads;
      EXPECT_EQ(e.principal(), Admin().SpiffeId());
    }
  }
  EXPECT_EQ(loads, 3);
}

TEST(PolicyAdmin, ManyErrorsAreSummarised) {
  SimulatedClock clock(Monday10());
  auto pdp = MakePdp(&clock, "");
  std::string yaml = "rules:\n";
  for (int i = 0; i < 12; ++i) {
    absl::StrAppend(&yaml, "  - id: r", i,
                    "\n    effect: allow\n    actions: [reed]\n");
  }
  auto st = pdp->Load(Admin(), {{.name = "many.yaml", .content = yaml}}, {});
  ASSERT_FALSE(st.ok());
  const std::string msg(st.status().message());
  EXPECT_NE(msg.find("12 errors"), std::string::npos) << msg;
  EXPECT_NE(msg.find("and 7 more"), std::string::npos) << msg;
  EXPECT_EQ(pdp->Validate({{.name = "many.yaml", .content = yaml}}, false)
                .errors.size(),
            12u);
}

// Every example policy shipped in config/policies/ compiles, together.
TEST(PolicyAdmin, ShippedPoliciesCompile) {
  const std::string dir = std::string(CITYOS_SOURCE_DIR) + "/config/policies";
  std::vector<PolicyDocumentText> docs;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    if (entry.path().extension() != ".yaml") continue;
    docs.push_back({entry.path().filename().string(),
                    cityos::testing::ReadFile(entry.path().string())});
  }
  ASSERT_GE(docs.size(), 5u) << dir;
  SimulatedClock clock(Monday10());
  auto pdp = MakePdp(&clock, "");
  ValidationResult r = pdp->Validate(docs, false);
  for (const auto& e : r.errors) {
    ADD_FAILURE() << e.name() << ":" << e.line() << ":" << e.column() << ": "
                  << e.message();
  }
  auto info = pdp->Load(Admin(), docs, {.replace_all = true});
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_GE(info->rules, 15u);
}

}  // namespace
}  // namespace cityos::policy_test
