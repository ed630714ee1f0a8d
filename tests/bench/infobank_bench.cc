// Google Benchmark for the information bank's consent hook
// (services/infobank/consent_checker.h): ConsentIndex::Check straight, as the
// PDP calls it on a decision-cache miss, and through the PDP (cached and
// uncached Decide of a read of SENSITIVE personal data under consent).
// Target (issue 6): >= 1M consent checks/s in-process.
//
//   ninja -C build infobank_bench && build/tests/bench/infobank_bench
#include <benchmark/benchmark.h>

#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "cityos/policy.h"
#include "cityos/principal.h"
#include "consent_checker.h"

namespace cityos::infobank {
namespace {

constexpr int kPersons = 10000;
const absl::Time kNow = absl::FromUnixSeconds(1'800'000'000);

// kPersons people, each with three consents (only the third matches the
// queries below, so a check scans the person's whole list).
ConsentIndex& Index() {
  static ConsentIndex* index = [] {
    auto* ix = new ConsentIndex();
    for (int p = 0; p < kPersons; ++p) {
      for (int k = 0; k < 3; ++k) {
        consent::v1::Consent c;
        c.set_consent_id(absl::StrCat("c-", p, "-", k));
        c.set_data_subject(absl::StrCat("person-", p));
        c.set_recipient_org(k == 2 ? "care-center" : absl::StrCat("org-", k));
        c.add_purposes("research");
        c.add_purposes("elderly_care");
        c.add_data_categories("mobility");
        c.add_data_categories("care");
        c.set_sensitive(true);
        c.set_state(consent::v1::CONSENT_STATE_ACTIVE);
        c.mutable_expire_time()->set_seconds(absl::ToUnixSeconds(kNow) + 3600);
        ix->Put(c);
      }
    }
    return ix;
  }();
  return *index;
}

std::vector<std::string> People() {
  std::vector<std::string> v;
  for (int p = 0; p < kPersons; ++p) v.push_back(absl::StrCat("person-", p));
  return v;
}

void BM_ConsentCheckGranted(benchmark::State& state) {
  ConsentIndex& index = Index();
  const std::vector<std::string> people = People();
  Principal center{.trust_domain = "local", .org = "care-center", .name = "monitor"};
  size_t i = static_cast<size_t>(state.thread_index()) * 7919;
  int64_t granted = 0;
  for (auto _ : state) {
    ConsentAnswer a = index.Check({.recipient = &center,
                                   .purpose = "elderly_care",
                                   .data_subject = people[i++ % people.size()],
                                   .data_category = "care.alerts",
                                   .sensitive = true,
                                   .time = kNow});
    granted += a.granted;
    benchmark::DoNotOptimize(a);
  }
  if (granted != state.iterations()) state.SkipWithError("a check was not granted");
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_ConsentCheckGranted)->Threads(1)->Threads(2)->UseRealTime();

void BM_ConsentCheckDenied(benchmark::State& state) {
  ConsentIndex& index = Index();
  const std::vector<std::string> people = People();
  Principal insurer{.trust_domain = "local", .org = "insurer", .name = "claims"};
  size_t i = 0;
  for (auto _ : state) {
    ConsentAnswer a = index.Check({.recipient = &insurer,
                                   .purpose = "elderly_care",
                                   .data_subject = people[i++ % people.size()],
                                   .data_category = "care.alerts",
                                   .sensitive = true,
                                   .time = kNow});
    if (a.granted) state.SkipWithError("granted without consent");
    benchmark::DoNotOptimize(a);
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_ConsentCheckDenied);

constexpr char kPolicy[] = R"(data_categories:
  - name: care.alerts
    types: [cityos.health.v1.ElderlyCareAlert]
rules:
  - id: care-alerts
    effect: allow
    actions: [read]
    principal: {orgs: [care-center]}
    resource: {types: [cityos.health.v1.ElderlyCareAlert]}
    purposes: [elderly_care]
)";

// Through the PDP: `cached` reads the decision cache (keyed per person), the
// other evaluates the rules and calls the consent hook every time.
void PdpDecide(benchmark::State& state, bool cached) {
  ConsentIndex& index = Index();
  auto pdp = PolicyDecisionPoint::Create({});
  if (!pdp.ok()) {
    state.SkipWithError(std::string(pdp.status().message()).c_str());
    return;
  }
  Principal admin = Principal::Node("local", "bench");
  if (auto r = (*pdp)->Load(admin, {{.name = "care.yaml", .content = kPolicy}}, {}); !r.ok()) {
    state.SkipWithError(std::string(r.status().message()).c_str());
    return;
  }
  (*pdp)->SetConsentChecker(&index);
  const std::vector<std::string> people = People();
  Principal center{.trust_domain = "local", .org = "care-center", .name = "monitor"};
  const size_t n = cached ? 1000 : people.size();
  size_t i = 0;
  for (auto _ : state) {
    AccessRequest req{.principal = &center,
                      .action = Action::kRead,
                      .resource = {.domain = "health",
                                   .type = "cityos.health.v1.ElderlyCareAlert",
                                   .classification = event::v1::CLASSIFICATION_SENSITIVE,
                                   .owner = "care-center",
                                   .data_subject = people[i++ % n]},
                      .purpose = "elderly_care",
                      .time = kNow};
    auto d = cached ? (*pdp)->Decide(req) : (*pdp)->DecideUncached(req);
    if (!d->allowed()) {
      state.SkipWithError(d->reason.c_str());
      break;
    }
    benchmark::DoNotOptimize(d);
  }
  (*pdp)->SetConsentChecker(nullptr);
  state.SetItemsProcessed(state.iterations());
}
void BM_PdpDecideWithConsentCached(benchmark::State& state) { PdpDecide(state, true); }
void BM_PdpDecideWithConsentUncached(benchmark::State& state) { PdpDecide(state, false); }
BENCHMARK(BM_PdpDecideWithConsentCached);
BENCHMARK(BM_PdpDecideWithConsentUncached);

}  // namespace
}  // namespace cityos::infobank

BENCHMARK_MAIN();
