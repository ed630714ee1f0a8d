// The indexes never change a decision: random rule sets and requests decided
// through the indexes (and through the PDP) and by the linear evaluator,
// which looks at every rule, must agree exactly.
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "cityos/clock.h"
#include "cityos/policy.h"
#include "gtest/gtest.h"
#include "policy/compiled_policy.h"
#include "policy/evaluator.h"
#include "policy_test_util.h"

namespace cityos::policy_test {
namespace {

using policy_internal::EvalEnv;
using policy_internal::LinearEvaluator;
using policy_internal::PolicySet;

class Gen {
 public:
  explicit Gen(uint32_t seed) : rng_(seed) {}
  bool Chance(double p) {
    return std::uniform_real_distribution<double>(0, 1)(rng_) < p;
  }
  template <typename T>
  const T& Pick(const std::vector<T>& v) {
    return v[std::uniform_int_distribution<size_t>(0, v.size() - 1)(rng_)];
  }
  // 1-2 distinct items as a YAML flow list.
  std::string List(const std::vector<std::string>& pool) {
    std::string a = Pick(pool), b = Pick(pool);
    std::vector<std::string> items = {"\"" + a + "\""};
    if (b != a && Chance(0.4)) items.push_back("\"" + b + "\"");
    return "[" + absl::StrJoin(items, ", ") + "]";
  }
  std::mt19937& rng() { return rng_; }

 private:
  std::mt19937 rng_;
};

const std::vector<std::string> kOrgs = {"fire", "ems", "grid", "transit",
                                        "uni"};
const std::vector<std::string> kRoles = {"rescuer", "analyst", "operator"};
const std::vector<std::string> kNames = {"dispatch", "lab", "ops"};
const std::vector<std::string> kTypes = {"T.vitals", "T.bus", "T.meter",
                                         "T.evac"};
const std::vector<std::string> kDomains = {"mobility", "health", "carbon",
                                           "care"};
const std::vector<std::string> kPatterns = {
    "mobility.>", "mobility.bus.*",       "health.vitals.>",
    "*.x.>",      "carbon.meter.reading", ">",
    "care.*"};
const std::vector<std::string> kClasses = {"public", "internal", "personal",
                                           "sensitive"};
const std::vector<std::string> kOwners = {"fire", "grid", "$principal.org"};
const std::vector<std::string> kRegions = {"CN-ZJ", "CN-ZJ-QZ", "JP-13"};
const std::vector<std::string> kJur = {"CN", "JP"};
const std::vector<std::string> kSubjects = {"p1", "p2", "$principal.name"};
const std::vector<std::string> kPurposes = {"research", "medical_care",
                                            "disaster_response"};
const std::vector<std::string> kActions = {"publish", "subscribe", "read",
                                           "history"};

std::string RandomRules(Gen& g, int n) {
  std::string y = "rules:\n";
  for (int i = 0; i < n; ++i) {
    const bool deny = g.Chance(0.2);
    absl::StrAppend(&y, "  - id: r", i,
                    "\n    effect: ", deny ? "deny" : "allow",
                    "\n    actions: ", g.List(kActions), "\n");
    std::string p;
    if (g.Chance(0.5)) absl::StrAppend(&p, "      orgs: ", g.List(kOrgs), "\n");
    if (g.Chance(0.3))
      absl::StrAppend(&p, "      roles: ", g.List(kRoles), "\n");
    if (g.Chance(0.15))
      absl::StrAppend(&p, "      kind: ", g.Chance(0.5) ? "user" : "service",
                      "\n");
    if (g.Chance(0.15))
      absl::StrAppend(&p, "      names: ", g.List(kNames), "\n");
    if (g.Chance(0.1)) {
      absl::StrAppend(&p, "      ids: [\"spiffe://demo.city/org/",
                      g.Pick(kOrgs), "/svc/", g.Pick(kNames), "\"]\n");
    }
    if (!p.empty()) absl::StrAppend(&y, "    principal:\n", p);
    std::string r;
    if (g.Chance(0.35))
      absl::StrAppend(&r, "      types: ", g.List(kTypes), "\n");
    if (g.Chance(0.35))
      absl::StrAppend(&r, "      domains: ", g.List(kDomains), "\n");
    if (g.Chance(0.35))
      absl::StrAppend(&r, "      subjects: ", g.List(kPatterns), "\n");
    if (g.Chance(0.3))
      absl::StrAppend(&r, "      classifications: ", g.List(kClasses), "\n");
    if (g.Chance(0.2))
      absl::StrAppend(&r, "      owners: ", g.List(kOwners), "\n");
    if (g.Chance(0.2))
      absl::StrAppend(&r, "      regions: ", g.List(kRegions), "\n");
    if (g.Chance(0.15))
      absl::StrAppend(&r, "      jurisdictions: ", g.List(kJur), "\n");
    if (g.Chance(0.15))
      absl::StrAppend(&r, "      data_subjects: ", g.List(kSubjects), "\n");
    if (!r.empty()) absl::StrAppend(&y, "    resource:\n", r);
    if (g.Chance(0.3))
      absl::StrAppend(&y, "    purposes: ", g.List(kPurposes), "\n");
    std::string w;
    if (g.Chance(0.1)) absl::StrAppend(&w, "      emergency: true\n");
    if (g.Chance(0.1)) absl::StrAppend(&w, "      hours: \"08:00-20:00\"\n");
    if (g.Chance(0.1)) absl::StrAppend(&w, "      weekdays: [mon, wed, sat]\n");
    if (g.Chance(0.05))
      absl::StrAppend(&w, "      until: 2026-03-04T00:00:00Z\n");
    if (!w.empty()) absl::StrAppend(&y, "    when:\n", w);
    if (!deny) {
      if (g.Chance(0.3)) {
        absl::StrAppend(&y, "    legal_basis: ",
                        g.Pick(std::vector<std::string>{
                            "consent", "vital_interest", "public_task"}),
                        "\n");
      }
      if (g.Chance(0.2))
        absl::StrAppend(&y, "    cross_border: ", g.List(kJur), "\n");
      if (g.Chance(0.1)) absl::StrAppend(&y, "    product: od-matrix\n");
      if (g.Chance(0.3))
        absl::StrAppend(&y, "    obligations:\n      - redact: [diagnosis]\n");
    }
  }
  return y;
}

// Consent granted for p1 only; contracts for uni only.
class DetConsent : public ConsentChecker {
 public:
  ConsentAnswer Check(const ConsentQuery& q) override {
    ConsentAnswer a;
    a.granted = q.data_subject == "p1";
    if (a.granted) a.consent_id = "c-p1";
    return a;
  }
};
class DetContract : public ContractChecker {
 public:
  ContractAnswer Check(const Principal& who, std::string_view, std::string_view,
                       absl::Time) override {
    ContractAnswer a;
    a.active = who.org == "uni";
    if (a.active) a.contract_id = "k-uni";
    return a;
  }
};

void ExpectSame(const Decision& a, const Decision& b, const std::string& ctx) {
  ASSERT_EQ(a.effect, b.effect)
      << ctx << "\nindexed: " << a.reason << "\nlinear: " << b.reason;
  EXPECT_EQ(a.rule_ids, b.rule_ids) << ctx;
  EXPECT_EQ(a.overridden_rule_ids, b.overridden_rule_ids) << ctx;
  EXPECT_EQ(a.reason, b.reason) << ctx;
  EXPECT_EQ(a.obligations.size(), b.obligations.size()) << ctx;
  EXPECT_EQ(a.consent_id, b.consent_id) << ctx;
  EXPECT_EQ(a.contract_id, b.contract_id) << ctx;
  EXPECT_EQ(a.emergency_id, b.emergency_id) << ctx;
  EXPECT_EQ(a.severity, b.severity) << ctx;
  EXPECT_EQ(a.valid_until, b.valid_until) << ctx;
}

TEST(PolicyRandom, IndexedEqualsLinear) {
  int allowed = 0, denied_by_rule = 0, total = 0;
  for (uint32_t seed = 1; seed <= 20; ++seed) {
    Gen g(seed);
    const std::string yaml = RandomRules(g, 20 + static_cast<int>(seed) * 10);
    SimulatedClock clock(Monday10());
    auto pdp = MakePdp(&clock, yaml);
    ASSERT_NE(pdp, nullptr);
    ASSERT_EQ(pdp->Current().revision, 1u) << yaml;
    DetConsent consent;
    DetContract contract;
    auto jr = MakeTableJurisdictionResolver(
        {{"fire", "CN"}, {"ems", "CN"}, {"uni", "JP"}}, "");
    pdp->SetConsentChecker(&consent);
    pdp->SetContractChecker(&contract);
    pdp->SetJurisdictionResolver(jr.get());
    common::v1::GeoArea area;
    area.set_region("CN-ZJ-QZ");
    auto em = pdp->DeclareEmergency(
        Admin(),
        {.area = area, .end = Monday10() + absl::Hours(30), .reason = "test"});
    ASSERT_TRUE(em.ok()) << em.status();

    std::vector<exchange::v1::PolicyError> errors;
    auto set = policy_internal::CompileSet(
        {{"test.yaml", yaml}},
        [&](std::string_view p) { return pdp->IsKnownPurpose(p); }, &errors);
    ASSERT_NE(set, nullptr);
    absl::flat_hash_map<std::string, bool> purposes;
    for (const auto& p : pdp->Purposes()) purposes[p.name] = p.profiling;
    EvalEnv env;
    env.consent = &consent;
    env.contract = &contract;
    env.jurisdiction = jr.get();
    env.purposes = &purposes;
    env.revision = 1;
    env.emergencies =
        std::make_shared<const std::vector<policy_internal::EmergencyWindow>>(
            std::vector<policy_internal::EmergencyWindow>{
                {em->id(), area, Monday10(), Monday10() + absl::Hours(30)}});
    LinearEvaluator linear(set, env);

    std::vector<uint32_t> candidates;
    for (int i = 0; i < 500; ++i) {
      Principal p;
      p.trust_domain = g.Chance(0.9) ? "demo.city" : "other.city";
      p.org = g.Chance(0.9) ? g.Pick(kOrgs) : "stranger";
      p.kind = g.Chance(0.3) ? PrincipalKind::kUser : PrincipalKind::kService;
      p.name = g.Chance(0.3) ? "p1" : g.Pick(kNames);
      for (const auto& r : kRoles) {
        if (g.Chance(0.25)) p.roles.push_back(r);
      }
      AccessRequest req{.principal = &p};
      req.action = static_cast<Action>(
          std::uniform_int_distribution<int>(0, 3)(g.rng()));
      std::string purpose = g.Chance(0.7) ? g.Pick(kPurposes) : "";
      req.purpose = purpose;
      ResourceView& r = req.resource;
      if (g.Chance(0.8)) r.type = g.Pick(kTypes);
      if (g.Chance(0.8)) r.domain = g.Pick(kDomains);
      static const std::vector<std::string> kReqSubjects = {
          "mobility.bus.1",
          "mobility.bus.*",
          "health.vitals.hr",
          "carbon.meter.reading",
          "a.x.y",
          "mobility.>",
          "care.home",
          "care.*",
          ">",
          "*.x.>"};
      if (g.Chance(0.8)) r.subject = g.Pick(kReqSubjects);
      r.classification = static_cast<event::v1::Classification>(
          std::uniform_int_distribution<int>(0, 4)(g.rng()));
      // Views: the values live in static pools.
      static const std::vector<std::string> kReqOwners = {"fire", "grid",
                                                          "uni"};
      static const std::vector<std::string> kReqRegions = {
          "CN-ZJ", "CN-ZJ-QZ-KC", "JP-13", "CN-ZJX"};
      static const std::vector<std::string> kReqSubjectsOfData = {"p1", "p2"};
      if (g.Chance(0.6)) r.owner = g.Pick(kReqOwners);
      if (g.Chance(0.6)) r.region = g.Pick(kReqRegions);
      if (g.Chance(0.6)) r.jurisdiction = g.Pick(kJur);
      if (g.Chance(0.6)) r.data_subject = g.Pick(kReqSubjectsOfData);
      const absl::Time t =
          Monday10() + absl::Minutes(std::uniform_int_distribution<int>(
                           -3 * 1440, 4 * 1440)(g.rng()));
      set->Candidates(req, &candidates);
      auto indexed = policy_internal::Evaluate(*set, candidates, req, t, env);
      auto lin = linear.Decide(req, t);
      const std::string ctx = absl::StrCat("seed ", seed, " request ", i);
      ExpectSame(*indexed, *lin, ctx);
      // The PDP (indexes + its own environment) agrees too.
      req.time = t;
      ExpectSame(*pdp->DecideUncached(req), *lin, ctx + " (pdp)");
      if (HasFatalFailure()) return;
      ++total;
      if (lin->allowed()) ++allowed;
      if (!lin->allowed() && !lin->rule_ids.empty()) ++denied_by_rule;
      // The index looked at fewer rules than the set has (on average).
      EXPECT_LE(candidates.size(), set->rules().size());
    }
    pdp->SetConsentChecker(nullptr);
    pdp->SetContractChecker(nullptr);
    pdp->SetJurisdictionResolver(nullptr);
  }
  // The generator exercises both outcomes.
  EXPECT_GT(allowed, total / 50) << allowed << " of " << total;
  EXPECT_GT(denied_by_rule, total / 50) << denied_by_rule << " of " << total;
}

}  // namespace
}  // namespace cityos::policy_test
