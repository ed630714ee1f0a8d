// Policy decision point scenarios: uncached decisions through the indexes
// side by side with the linear evaluator (which looks at every rule) at 10,
// 1,000 and 10,000 rules, and cached decisions on one and two threads.
//
// The rule sets model a city: many organisations (one per 10 rules), each
// with its roles, data types and domains; a fifth of the rules deny, a third
// carry obligations, some are time-bound or emergency-bound. Requests are
// drawn from the rules themselves (so most hit a rule) plus strangers.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "cityos/clock.h"
#include "cityos/policy.h"
#include "cityos/status.h"
#include "measure.h"
#include "policy/compiled_policy.h"
#include "policy/evaluator.h"
#include "scenario.h"

namespace cityos::bench {
namespace {

const char* const kDomains[] = {"mobility", "health", "care",  "disaster",
                                "carbon",   "energy", "water", "waste",
                                "parking",  "transit"};
const char* const kClasses[] = {"public", "internal", "personal", "sensitive"};
const char* const kPurposes[] = {"disaster_response",   "carbon_accounting",
                                 "medical_care",        "elderly_care",
                                 "mobility_operations", "research"};
const char* const kActions[] = {"publish", "subscribe", "read", "history"};

std::string OrgName(int i) { return absl::StrCat("org", i); }
std::string TypeName(int org, int t) {
  return absl::StrCat("cityos.d", org % 10, ".v1.T", org, "_", t);
}

// `n` rules as one YAML document.
std::string CityRules(int n, uint32_t seed) {
  std::mt19937 rng(seed);
  auto pick = [&](int k) {
    return static_cast<int>(rng() % static_cast<uint32_t>(k));
  };
  const int orgs = std::max(1, n / 10);
  std::string y = "rules:\n";
  for (int i = 0; i < n; ++i) {
    const int org = pick(orgs);
    const bool deny = pick(5) == 0;
    absl::StrAppend(
        &y, "  - id: rule-", i, "\n    effect: ", deny ? "deny" : "allow",
        "\n    actions: [", kActions[pick(4)], ", ", kActions[pick(4)], "]\n");
    // Principal: mostly by org, some by role, a few open to anyone.
    const int p = pick(10);
    if (p < 7) {
      absl::StrAppend(
          &y, "    principal: {orgs: [", OrgName(org), "]",
          pick(2) ? absl::StrCat(", roles: [role", pick(5), "]") : "", "}\n");
    } else if (p < 9) {
      absl::StrAppend(&y, "    principal: {roles: [role", org % 50, "]}\n");
    }
    // Resource: by type, domain or subject.
    const int r = pick(10);
    const char* domain = kDomains[org % 10];
    if (r < 5) {
      absl::StrAppend(&y, "    resource: {types: [", TypeName(org, pick(5)),
                      "], classifications: [", kClasses[pick(4)], "]}\n");
    } else if (r < 8) {
      absl::StrAppend(&y, "    resource: {domains: [", domain, "], owners: [",
                      OrgName(pick(orgs)), "]}\n");
    } else {
      absl::StrAppend(&y, "    resource: {subjects: [\"", domain, ".",
                      OrgName(org), ".>\"]}\n");
    }
    if (pick(3) == 0)
      absl::StrAppend(&y, "    purposes: [", kPurposes[pick(6)], "]\n");
    if (pick(20) == 0)
      absl::StrAppend(&y, "    when: {hours: \"06:00-22:00\"}\n");
    if (pick(50) == 0) absl::StrAppend(&y, "    when: {emergency: true}\n");
    if (!deny) {
      if (pick(2) == 0) absl::StrAppend(&y, "    legal_basis: public_task\n");
      if (pick(3) == 0) {
        absl::StrAppend(&y,
                        "    obligations:\n      - redact: [contacts.phone]\n"
                        "      - retention: 30d\n");
      }
    }
  }
  return y;
}

// Requests and the storage their views point into.
struct Workload {
  std::vector<Principal> principals;
  std::vector<std::string> strings;  // reserved up front: views stay valid
  std::vector<AccessRequest> requests;
};

std::unique_ptr<Workload> MakeWorkload(int rules, size_t count, uint32_t seed) {
  auto w = std::make_unique<Workload>();
  std::mt19937 rng(seed);
  auto pick = [&](int k) {
    return static_cast<int>(rng() % static_cast<uint32_t>(k));
  };
  const int orgs = std::max(1, rules / 10);
  w->principals.reserve(count);
  w->strings.reserve(count * 4);
  for (size_t i = 0; i < count; ++i) {
    const int org = pick(10) == 0 ? orgs + 1 : pick(orgs);  // some strangers
    Principal p;
    p.trust_domain = "bench.city";
    p.org = OrgName(org);
    p.kind = PrincipalKind::kService;
    p.name = absl::StrCat("svc", pick(3));
    p.roles = {absl::StrCat("role", pick(5)), absl::StrCat("role", org % 50)};
    w->principals.push_back(std::move(p));
  }
  for (size_t i = 0; i < count; ++i) {
    const Principal& p = w->principals[i];
    const int org = std::atoi(p.org.c_str() + 3);
    AccessRequest q;
    q.principal = &p;
    q.action = static_cast<Action>(pick(4));
    q.purpose = q.action == Action::kPublish ? "" : kPurposes[pick(6)];
    ResourceView& r = q.resource;
    r.domain = kDomains[org % 10];
    w->strings.push_back(TypeName(org, pick(5)));
    r.type = w->strings.back();
    w->strings.push_back(
        absl::StrCat(kDomains[org % 10], ".", p.org, ".item", pick(100)));
    r.subject = w->strings.back();
    r.classification =
        static_cast<event::v1::Classification>(1 + pick(2));  // public/internal
    w->strings.push_back(OrgName(pick(orgs)));
    r.owner = w->strings.back();
    r.region = "CN-ZJ-QZ-KC";
    w->requests.push_back(q);
  }
  return w;
}

struct Latency {
  double per_second = 0;
  double p50_ns = 0, p99_ns = 0;
  uint64_t decisions = 0;
};

// Times each call of `decide` over the workload, cycling, for at most
// `budget` or `max` calls.
template <typename F>
Latency Measure(const Workload& w, absl::Duration budget, uint64_t max,
                F decide) {
  std::vector<int64_t> samples;
  samples.reserve(std::min<uint64_t>(max, 1 << 20));
  const int64_t deadline = NowNanos() + absl::ToInt64Nanoseconds(budget);
  int64_t busy = 0;
  uint64_t n = 0;
  size_t allowed = 0;
  while (n < max && (n % 64 != 0 || NowNanos() < deadline)) {
    const AccessRequest& q = w.requests[n % w.requests.size()];
    const int64_t t0 = NowNanos();
    allowed += decide(q) ? 1 : 0;
    const int64_t dt = NowNanos() - t0;
    busy += dt;
    if (samples.size() < samples.capacity()) samples.push_back(dt);
    ++n;
  }
  std::sort(samples.begin(), samples.end());
  Latency l;
  l.decisions = n;
  l.per_second = Rate(n, busy);
  if (!samples.empty()) {
    l.p50_ns = static_cast<double>(samples[samples.size() / 2]);
    l.p99_ns = static_cast<double>(
        samples[std::min(samples.size() - 1, samples.size() * 99 / 100)]);
  }
  (void)allowed;
  return l;
}

struct Built {
  std::unique_ptr<PolicyDecisionPoint> pdp;
  std::shared_ptr<const policy_internal::PolicySet> set;
  absl::flat_hash_map<std::string, bool> purposes;
};

absl::StatusOr<Built> Build(int rules, size_t cache_capacity) {
  Built b;
  CITYOS_ASSIGN_OR_RETURN(
      b.pdp, PolicyDecisionPoint::Create({.cache_capacity = cache_capacity}));
  const std::string yaml = CityRules(rules, 42);
  auto info = b.pdp->Load(Principal::Node("bench.city", "bench"),
                          {{.name = "city.yaml", .content = yaml}},
                          {.replace_all = true});
  if (!info.ok()) return info.status();
  std::vector<exchange::v1::PolicyError> errors;
  b.set = policy_internal::CompileSet(
      {{"city.yaml", yaml}},
      [&](std::string_view p) { return b.pdp->IsKnownPurpose(p); }, &errors);
  if (b.set == nullptr)
    return absl::InternalError("bench rules do not compile");
  for (const auto& p : b.pdp->Purposes()) b.purposes[p.name] = p.profiling;
  return b;
}

absl::StatusOr<Result> Uncached(BenchContext& ctx, int rules) {
  CITYOS_ASSIGN_OR_RETURN(Built b, Build(rules, 0));
  auto w = MakeWorkload(rules, 4096, 7);
  const absl::Duration budget =
      std::min(ctx.options().max_time, absl::Seconds(2));
  const uint64_t max = ctx.options().events;
  size_t allowed = 0;
  for (const auto& q : w->requests)
    allowed += b.pdp->DecideUncached(q)->allowed();
  size_t candidates = 0;
  std::vector<uint32_t> c;
  for (const auto& q : w->requests) {
    b.set->Candidates(q, &c);
    candidates += c.size();
  }
  Latency ours = Measure(*w, budget, max, [&](const AccessRequest& q) {
    return b.pdp->DecideUncached(q)->allowed();
  });
  policy_internal::EvalEnv env;
  env.purposes = &b.purposes;
  env.revision = 1;
  policy_internal::LinearEvaluator linear(b.set, env);
  const absl::Time now = absl::Now();
  Latency peer = Measure(*w, budget, max, [&](const AccessRequest& q) {
    return linear.Decide(q, now)->allowed();
  });
  Result r;
  r.value = Round(ours.per_second, 1);
  r.SetPeer("linear-evaluator", Round(peer.per_second, 1));
  r.extra["rules"] = rules;
  r.extra["p50_ns"] = ours.p50_ns;
  r.extra["p99_ns"] = ours.p99_ns;
  r.extra["peer_p50_ns"] = peer.p50_ns;
  r.extra["peer_p99_ns"] = peer.p99_ns;
  r.extra["decisions"] = ours.decisions;
  r.extra["peer_decisions"] = peer.decisions;
  r.extra["mean_candidates"] = Round(
      static_cast<double>(candidates) / static_cast<double>(w->requests.size()),
      1);
  r.extra["allowed_fraction"] =
      Round(static_cast<double>(allowed) / static_cast<double>(w->requests.size()), 3);
  return r;
}

absl::StatusOr<Result> Cached(BenchContext& ctx, int threads) {
  const int rules = 1000;
  CITYOS_ASSIGN_OR_RETURN(Built b, Build(rules, 1 << 16));
  auto w = MakeWorkload(rules, 1024,
                        11);  // fits the cache: steady state is all hits
  for (const auto& q : w->requests) b.pdp->Decide(q);
  const absl::Duration budget =
      std::min(ctx.options().max_time, absl::Seconds(2));
  std::atomic<uint64_t> total{0};
  const int64_t start = NowNanos();
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) {
    pool.emplace_back([&, t] {
      const int64_t deadline = NowNanos() + absl::ToInt64Nanoseconds(budget);
      uint64_t n = 0;
      size_t i = static_cast<size_t>(t) * 97;
      while ((n & 1023) != 0 || NowNanos() < deadline) {
        b.pdp->Decide(w->requests[i++ % w->requests.size()]);
        ++n;
      }
      total.fetch_add(n);
    });
  }
  for (auto& th : pool) th.join();
  const int64_t nanos = NowNanos() - start;
  Result r;
  r.value = Round(Rate(total.load(), nanos), 1);
  r.extra["threads"] = threads;
  r.extra["rules"] = rules;
  r.extra["distinct_requests"] = w->requests.size();
  r.extra["decisions"] = total.load();
  r.extra["ns_per_decision_per_thread"] = Round(
      static_cast<double>(nanos) * threads / static_cast<double>(total.load()),
      1);
  return r;
}

}  // namespace

absl::Status RegisterPolicyScenarios(ScenarioRegistry& registry) {
  for (int rules : {10, 1000, 10000}) {
    CITYOS_RETURN_IF_ERROR(registry.Add(
        {.name = absl::StrCat("policy.decide.uncached.r", rules),
         .unit = "decisions/s",
         .description =
             absl::StrCat("PDP decisions without the cache at ", rules,
                          " rules, one thread; peer: linear evaluator"),
         .run = [rules](BenchContext& ctx) { return Uncached(ctx, rules); }}));
  }
  for (int threads : {1, 2}) {
    CITYOS_RETURN_IF_ERROR(registry.Add(
        {.name = threads == 1 ? std::string("policy.decide.cached")
                              : absl::StrCat("policy.decide.cached.t", threads),
         .unit = "decisions/s",
         .description = absl::StrCat("PDP decisions from the cache, ", threads,
                                     " thread(s)"),
         .run = [threads](BenchContext& ctx) {
           return Cached(ctx, threads);
         }}));
  }
  return absl::OkStatus();
}

}  // namespace cityos::bench
