// AlarmEngine (plans.h): plan validation and versions, ABOVE with hysteresis
// (raise once, no flapping, clear below the margin), projections, BELOW at
// period end via Tick, attribution, acknowledgement, delete, persistence across
// reopen, ListAlarms filters and pagination, publish order, and the
// AlarmWatchers hub. Emissions come from FakeEmissions, an in-memory test
// double of the ledger behind the EmissionsSource interface.
#include "plans.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <atomic>
#include <map>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/time/civil_time.h"
#include "cityos/proto_time.h"
#include "testutil.h"

namespace cityos::carbon {
namespace {

using ::testing::HasSubstr;

// Accounts form a tree (child -> parent); each account has a region. Entries
// are (leaf account, time, kg). Thread-safe.
class FakeEmissions : public EmissionsSource {
 public:
  void AddAccount(const std::string& id, const std::string& parent, const std::string& region) {
    absl::MutexLock lock(&mu_);
    parent_[id] = parent;
    region_[id] = region;
  }
  // Adds kg to (account, time); Set replaces (a restatement-like change).
  void Add(const std::string& account, absl::Time t, double kg) {
    absl::MutexLock lock(&mu_);
    entries_[{account, t}] += kg;
  }
  void Set(const std::string& account, absl::Time t, double kg) {
    absl::MutexLock lock(&mu_);
    entries_[{account, t}] = kg;
  }

  // What the ledger reports for a record of `account` ending at `t`: the
  // account and its ancestors, its region and the region's ancestors.
  std::vector<TouchedTotal> Touched(const std::string& account, absl::Time t) const {
    absl::MutexLock lock(&mu_);
    std::vector<TouchedTotal> out;
    for (std::string cur = account; !cur.empty(); cur = parent_.at(cur)) {
      out.push_back({cur, "", t});
    }
    std::string region = region_.at(account);
    while (true) {
      out.push_back({"", region, t});
      size_t dash = region.rfind('-');
      if (dash == std::string::npos) break;
      region.resize(dash);
    }
    return out;
  }

  double TotalKg(std::string_view target, bool is_region, absl::Time from,
                 absl::Time to) const override {
    absl::MutexLock lock(&mu_);
    double sum = 0;
    for (const auto& [k, kg] : entries_) {
      if (k.second >= from && k.second < to && CoversLocked(target, is_region, k.first)) sum += kg;
    }
    return sum;
  }
  // Per direct child of an account target (per account for a region), in
  // ascending order of kg: the engine must sort.
  std::vector<v1::Attribution> Contributors(std::string_view target, bool is_region,
                                            absl::Time from, absl::Time to) const override {
    absl::MutexLock lock(&mu_);
    std::map<std::string, double> by;
    for (const auto& [k, kg] : entries_) {
      if (k.second < from || k.second >= to || !CoversLocked(target, is_region, k.first)) continue;
      std::string who = k.first;
      if (!is_region) {
        while (who != target && parent_.at(who) != target) who = parent_.at(who);
      }
      by[who] += kg;
    }
    std::vector<v1::Attribution> out;
    for (const auto& [id, kg] : by) {
      v1::Attribution a;
      a.set_account_id(id);
      a.set_emissions_kg(kg);
      out.push_back(a);
    }
    std::sort(out.begin(), out.end(),
              [](const auto& a, const auto& b) { return a.emissions_kg() < b.emissions_kg(); });
    return out;
  }
  std::string RegionOf(std::string_view account_id) const override {
    absl::MutexLock lock(&mu_);
    auto it = region_.find(std::string(account_id));
    return it == region_.end() ? "" : it->second;
  }
  bool Covers(std::string_view ancestor, bool is_region,
              std::string_view account_id) const override {
    absl::MutexLock lock(&mu_);
    return CoversLocked(ancestor, is_region, account_id);
  }

 private:
  bool CoversLocked(std::string_view ancestor, bool is_region, std::string_view account) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (is_region) {
      auto it = region_.find(std::string(account));
      return it != region_.end() && RegionCovers(ancestor, it->second);
    }
    std::string cur(account);
    while (!cur.empty()) {
      if (cur == ancestor) return true;
      auto it = parent_.find(cur);
      if (it == parent_.end()) return false;
      cur = it->second;
    }
    return false;
  }

  mutable absl::Mutex mu_;
  std::map<std::string, std::string> parent_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, std::string> region_ ABSL_GUARDED_BY(mu_);
  std::map<std::pair<std::string, absl::Time>, double> entries_ ABSL_GUARDED_BY(mu_);
};

struct Published {
  v1::AlarmChangeKind kind;
  v1::Alarm alarm;
};

class PlansTest : public ::testing::Test {
 protected:
  PlansTest() {
    EXPECT_TRUE(absl::LoadTimeZone("Asia/Shanghai", &tz_));
    clock_.Set(Local(10, 6));
    // quzhou-steel (CN-ZJ-QZ-KC) -> line-1 -> m-1, m-2; line-2 -> m-3.
    // hz-paper (CN-ZJ-HZ) -> m-9.
    source_.AddAccount("quzhou-steel", "", "CN-ZJ-QZ-KC");
    source_.AddAccount("quzhou-steel/line-1", "quzhou-steel", "CN-ZJ-QZ-KC");
    source_.AddAccount("quzhou-steel/line-1/m-1", "quzhou-steel/line-1", "CN-ZJ-QZ-KC");
    source_.AddAccount("quzhou-steel/line-1/m-2", "quzhou-steel/line-1", "CN-ZJ-QZ-KC");
    source_.AddAccount("quzhou-steel/line-2", "quzhou-steel", "CN-ZJ-QZ-KC");
    source_.AddAccount("quzhou-steel/line-2/m-3", "quzhou-steel/line-2", "CN-ZJ-QZ-KC");
    source_.AddAccount("hz-paper", "", "CN-ZJ-HZ");
    source_.AddAccount("hz-paper/m-9", "hz-paper", "CN-ZJ-HZ");
    Reopen();
  }

  void Reopen() {
    engine_.reset();
    auto e = AlarmEngine::Open(dir_.File("alarms.db"), &source_, tz_, &clock_,
                               [this](v1::AlarmChangeKind k, const v1::Alarm& a) {
                                 published_.push_back({k, a});
                               });
    ASSERT_TRUE(e.ok()) << e.status();
    engine_ = *std::move(e);
  }

  // 2025-03-<day> <hour>:<minute> in Asia/Shanghai.
  absl::Time Local(int day, int hour, int minute = 0) const {
    return absl::FromCivil(absl::CivilSecond(2025, 3, day, hour, minute, 0), tz_);
  }

  v1::Plan DayPlan(const std::string& account, double min_kg, double max_kg,
                   double hysteresis = 0.1, bool projection = false) {
    v1::Plan p;
    p.set_account_id(account);
    p.set_granularity(v1::GRANULARITY_DAY);
    p.set_min_kg(min_kg);
    p.set_max_kg(max_kg);
    p.set_hysteresis(hysteresis);
    p.set_alarm_on_projection(projection);
    return p;
  }

  v1::Plan MustSet(v1::Plan p) {
    auto r = engine_->SetPlan(std::move(p), "spiffe://city/org/quzhou-steel/svc/ems");
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? *r : v1::Plan();
  }

  // Records kg on a meter at `t` and evaluates as the ledger batch would.
  void Reading(const std::string& meter, absl::Time t, double kg, const std::string& event = "ev") {
    source_.Add(meter, t, kg);
    engine_->Evaluate(source_.Touched(meter, t + absl::Hours(1)), event);
  }
  void Restate(const std::string& meter, absl::Time t, double kg) {
    source_.Set(meter, t, kg);
    engine_->Evaluate(source_.Touched(meter, t + absl::Hours(1)), "restatement");
  }

  std::vector<Published> Take() {
    std::vector<Published> out;
    out.swap(published_);
    return out;
  }
  static int Count(const std::vector<Published>& v, v1::AlarmChangeKind k) {
    int n = 0;
    for (const Published& p : v) n += p.kind == k ? 1 : 0;
    return n;
  }

  cityos::testing::TempDir dir_;
  absl::TimeZone tz_;
  SimulatedClock clock_;
  FakeEmissions source_;
  std::vector<Published> published_;
  std::unique_ptr<AlarmEngine> engine_;
};

const char kMeter1[] = "quzhou-steel/line-1/m-1";
const char kMeter2[] = "quzhou-steel/line-1/m-2";
const char kMeter3[] = "quzhou-steel/line-2/m-3";

// ------------------------------------------------------------------ plans

TEST_F(PlansTest, ValidationErrorsNameTheField) {
  struct Case {
    std::string name;
    v1::Plan plan;
    std::string field;
  };
  std::vector<Case> cases;
  {
    v1::Plan p = DayPlan("quzhou-steel", 0, 100);
    p.clear_account_id();
    cases.push_back({"no target", p, "target"});
  }
  {
    v1::Plan p = DayPlan("", 0, 100);
    cases.push_back({"empty account", p, "account_id"});
  }
  {
    v1::Plan p = DayPlan("quzhou-steel", 0, 100);
    p.set_region("");
    cases.push_back({"empty region", p, "region"});
  }
  {
    v1::Plan p = DayPlan("quzhou-steel", 0, 100);
    p.set_granularity(v1::GRANULARITY_HOUR);
    cases.push_back({"hour", p, "granularity: HOUR"});
  }
  {
    v1::Plan p = DayPlan("quzhou-steel", 0, 100);
    p.set_granularity(v1::GRANULARITY_UNSPECIFIED);
    cases.push_back({"unspecified", p, "granularity"});
  }
  cases.push_back({"negative min", DayPlan("quzhou-steel", -1, 100), "min_kg: -1"});
  cases.push_back({"max == min", DayPlan("quzhou-steel", 100, 100), "max_kg: 100"});
  cases.push_back({"max < min", DayPlan("quzhou-steel", 100, 50), "max_kg: 50"});
  cases.push_back({"hysteresis", DayPlan("quzhou-steel", 0, 100, 1.5), "hysteresis: 1.5"});
  cases.push_back({"negative hysteresis", DayPlan("quzhou-steel", 0, 100, -0.1), "hysteresis"});
  {
    v1::Plan p = DayPlan("quzhou-steel", 0, 100);
    TimestampToProto(Local(10, 0), p.mutable_valid()->mutable_start());
    TimestampToProto(Local(9, 0), p.mutable_valid()->mutable_end());
    cases.push_back({"valid", p, "valid"});
  }
  for (const Case& c : cases) {
    auto r = engine_->SetPlan(c.plan, "me");
    ASSERT_FALSE(r.ok()) << c.name;
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << c.name;
    EXPECT_THAT(r.status().message(), HasSubstr(c.field)) << c.name << ": " << r.status();
  }
  EXPECT_TRUE(engine_->ListPlans({}).empty());

  v1::Plan unknown = DayPlan("quzhou-steel", 0, 100);
  unknown.set_plan_id("no-such-plan");
  auto r = engine_->SetPlan(unknown, "me");
  EXPECT_EQ(r.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(r.status().message(), HasSubstr("no-such-plan"));
}

TEST_F(PlansTest, CreateSetsDefaultsAndVersionConflictNamesCurrentVersion) {
  v1::Plan p = DayPlan("quzhou-steel", 10, 100, 0);
  v1::Plan created = MustSet(p);
  EXPECT_FALSE(created.plan_id().empty());
  EXPECT_EQ(created.version(), 1u);
  EXPECT_DOUBLE_EQ(created.hysteresis(), 0.05);
  EXPECT_EQ(created.updated_by(), "spiffe://city/org/quzhou-steel/svc/ems");
  EXPECT_EQ(TimestampFromProto(created.update_time(), "t").value(), clock_.Now());

  v1::Plan change = created;
  change.set_max_kg(200);
  v1::Plan v2 = MustSet(change);
  EXPECT_EQ(v2.version(), 2u);
  EXPECT_EQ(v2.plan_id(), created.plan_id());

  change.set_max_kg(300);  // still carries version 1
  auto stale = engine_->SetPlan(change, "me");
  ASSERT_EQ(stale.status().code(), absl::StatusCode::kFailedPrecondition) << stale.status();
  EXPECT_THAT(stale.status().message(), HasSubstr("current version 2"));
  EXPECT_DOUBLE_EQ(engine_->GetPlan(created.plan_id())->max_kg(), 200);

  change.set_version(0);  // 0 skips the check
  EXPECT_EQ(MustSet(change).version(), 3u);

  v1::ListPlansRequest by_account;
  by_account.set_account_id("quzhou-steel");
  ASSERT_EQ(engine_->ListPlans(by_account).size(), 1u);
  by_account.set_account_id("hz-paper");
  EXPECT_TRUE(engine_->ListPlans(by_account).empty());
  EXPECT_EQ(engine_->GetPlan("nope").status().code(), absl::StatusCode::kNotFound);
}

TEST_F(PlansTest, ListPlansValidAt) {
  v1::Plan march = DayPlan("quzhou-steel", 0, 100);
  TimestampToProto(Local(1, 0), march.mutable_valid()->mutable_start());
  TimestampToProto(absl::FromCivil(absl::CivilDay(2025, 4, 1), tz_),
                   march.mutable_valid()->mutable_end());
  MustSet(march);
  v1::Plan open = DayPlan("quzhou-steel", 0, 100);
  TimestampToProto(Local(20, 0), open.mutable_valid()->mutable_start());
  MustSet(open);
  v1::ListPlansRequest r;
  TimestampToProto(Local(10, 0), r.mutable_valid_at());
  EXPECT_EQ(engine_->ListPlans(r).size(), 1u);
  TimestampToProto(Local(25, 0), r.mutable_valid_at());
  EXPECT_EQ(engine_->ListPlans(r).size(), 2u);
  TimestampToProto(absl::FromCivil(absl::CivilDay(2025, 5, 1), tz_), r.mutable_valid_at());
  EXPECT_EQ(engine_->ListPlans(r).size(), 1u);
}

// ------------------------------------------------------------------ hysteresis

TEST_F(PlansTest, AboveRaisesOnceDoesNotFlapAndClearsOnlyBelowMargin) {
  // max 1000, min 0, hysteresis 0.1: margin 100, clears at <= 900.
  v1::Plan plan = MustSet(DayPlan("quzhou-steel", 0, 1000, 0.1));
  Reading(kMeter1, Local(10, 1), 600, "ev-1");
  EXPECT_TRUE(Take().empty());
  Reading(kMeter1, Local(10, 2), 500, "ev-2");  // 1100 > 1000
  std::vector<Published> raised = Take();
  ASSERT_EQ(raised.size(), 1u);
  EXPECT_EQ(raised[0].kind, v1::ALARM_CHANGE_KIND_RAISED);
  const v1::Alarm& a = raised[0].alarm;
  EXPECT_EQ(a.condition(), v1::ALARM_CONDITION_ABOVE);
  EXPECT_EQ(a.state(), v1::ALARM_STATE_ACTIVE);
  EXPECT_EQ(a.plan_id(), plan.plan_id());
  EXPECT_EQ(a.account_id(), "quzhou-steel");
  EXPECT_EQ(a.region(), "CN-ZJ-QZ-KC");
  EXPECT_DOUBLE_EQ(a.actual_kg(), 1100);
  EXPECT_DOUBLE_EQ(a.planned_max_kg(), 1000);
  EXPECT_EQ(a.trigger_event_id(), "ev-2");
  EXPECT_EQ(AlarmPeriodStart(a), Local(10, 0));
  EXPECT_EQ(TimestampFromProto(a.period().end(), "end").value(), Local(11, 0));

  // Wobbling around max (restatement-like changes inside the margin): updates, no raise.
  for (double v : {450.0, 420.0, 480.0, 395.0, 350.0}) {  // totals 1050, 1020, 1080, 995, 950
    Restate(kMeter1, Local(10, 2), v);
  }
  std::vector<Published> wobble = Take();
  EXPECT_EQ(Count(wobble, v1::ALARM_CHANGE_KIND_RAISED), 0);
  EXPECT_EQ(Count(wobble, v1::ALARM_CHANGE_KIND_CLEARED), 0);
  EXPECT_EQ(Count(wobble, v1::ALARM_CHANGE_KIND_UPDATED), 5);
  for (const Published& p : wobble) EXPECT_EQ(p.alarm.alarm_id(), a.alarm_id());
  EXPECT_DOUBLE_EQ(wobble.back().alarm.actual_kg(), 950);
  EXPECT_EQ(wobble.back().alarm.trigger_event_id(), "ev-2");

  // The same figure again: nothing meaningful changed, nothing published.
  Restate(kMeter1, Local(10, 2), 350);
  EXPECT_TRUE(Take().empty());

  // 905 is still inside the margin; 900 clears.
  Restate(kMeter1, Local(10, 2), 305);
  EXPECT_EQ(Count(Take(), v1::ALARM_CHANGE_KIND_CLEARED), 0);
  clock_.Advance(absl::Minutes(5));
  Restate(kMeter1, Local(10, 2), 300);
  std::vector<Published> cleared = Take();
  ASSERT_EQ(cleared.size(), 1u);
  EXPECT_EQ(cleared[0].kind, v1::ALARM_CHANGE_KIND_CLEARED);
  EXPECT_EQ(cleared[0].alarm.state(), v1::ALARM_STATE_CLEARED);
  EXPECT_EQ(TimestampFromProto(cleared[0].alarm.clear_time(), "t").value(), clock_.Now());
  EXPECT_DOUBLE_EQ(cleared[0].alarm.actual_kg(), 900);  // the figure it cleared at
  EXPECT_TRUE(engine_->OpenAlarms().empty());

  // Above again after clearing: a new alarm.
  Reading(kMeter2, Local(10, 3), 200, "ev-3");
  std::vector<Published> again = Take();
  ASSERT_EQ(again.size(), 1u);
  EXPECT_EQ(again[0].kind, v1::ALARM_CHANGE_KIND_RAISED);
  EXPECT_NE(again[0].alarm.alarm_id(), a.alarm_id());
}

TEST_F(PlansTest, PlansOfAncestorsAndRegionsAreEvaluated) {
  v1::Plan line = MustSet(DayPlan("quzhou-steel/line-1", 0, 100));
  v1::Plan other_line = MustSet(DayPlan("quzhou-steel/line-2", 0, 100));
  v1::Plan region;
  region.set_region("CN-ZJ-QZ");
  region.set_granularity(v1::GRANULARITY_DAY);
  region.set_max_kg(150);
  region = MustSet(region);
  v1::Plan other_region = region;
  other_region.clear_plan_id();
  other_region.set_region("CN-ZJ-HZ");
  other_region.set_version(0);
  MustSet(other_region);

  Reading(kMeter1, Local(10, 1), 160);
  std::set<std::string> plans;
  for (const Published& p : Take()) plans.insert(p.alarm.plan_id());
  EXPECT_EQ(plans, (std::set<std::string>{line.plan_id(), region.plan_id()}));
  EXPECT_EQ(other_line.version(), 1u);

  // Only plans whose target is in the touched list are evaluated: a touched
  // region evaluates its region plans, not the accounts' plans in it.
  MustSet(DayPlan("hz-paper", 0, 10));
  source_.Add("hz-paper/m-9", Local(10, 1), 500);
  engine_->Evaluate({TouchedTotal{"", "CN-ZJ-HZ", Local(10, 2)}}, "ev-r");
  std::vector<Published> r = Take();
  ASSERT_EQ(r.size(), 1u);
  EXPECT_EQ(r[0].alarm.region(), "CN-ZJ-HZ");
  EXPECT_TRUE(r[0].alarm.account_id().empty());
}

// ------------------------------------------------------------------ projection

TEST_F(PlansTest, ProjectionAboveThenAboveSupersedesIt) {
  v1::Plan plan = MustSet(DayPlan("quzhou-steel", 0, 1000, 0.1, /*projection=*/true));
  clock_.Set(Local(10, 6));             // a quarter of the day has elapsed
  Reading(kMeter1, Local(10, 4), 200);  // projected 800: inside
  EXPECT_TRUE(Take().empty());
  Reading(kMeter1, Local(10, 5), 100);  // projected 1200
  std::vector<Published> p = Take();
  ASSERT_EQ(p.size(), 1u);
  EXPECT_EQ(p[0].kind, v1::ALARM_CHANGE_KIND_RAISED);
  EXPECT_EQ(p[0].alarm.condition(), v1::ALARM_CONDITION_PROJECTED_ABOVE);
  EXPECT_NEAR(p[0].alarm.projected_kg(), 1200, 1e-6);
  EXPECT_DOUBLE_EQ(p[0].alarm.actual_kg(), 300);

  clock_.Set(Local(10, 12));  // half the day: projected 601 <= 900 (max - margin): clears
  Reading(kMeter1, Local(10, 11), 0.5);
  std::vector<Published> c = Take();
  ASSERT_EQ(c.size(), 1u);
  EXPECT_EQ(c[0].kind, v1::ALARM_CHANGE_KIND_CLEARED);
  EXPECT_EQ(c[0].alarm.condition(), v1::ALARM_CONDITION_PROJECTED_ABOVE);

  Reading(kMeter1, Local(10, 11), 250);  // 550.5 -> projected 1101
  p = Take();
  ASSERT_EQ(p.size(), 1u);
  EXPECT_EQ(p[0].alarm.condition(), v1::ALARM_CONDITION_PROJECTED_ABOVE);
  std::string projected_id = p[0].alarm.alarm_id();

  Reading(kMeter2, Local(10, 11), 500);  // actual 1050.5 > 1000: ABOVE, projected superseded
  p = Take();
  ASSERT_EQ(p.size(), 2u);
  EXPECT_EQ(p[0].kind, v1::ALARM_CHANGE_KIND_RAISED);
  EXPECT_EQ(p[0].alarm.condition(), v1::ALARM_CONDITION_ABOVE);
  EXPECT_EQ(p[1].kind, v1::ALARM_CHANGE_KIND_CLEARED);
  EXPECT_EQ(p[1].alarm.alarm_id(), projected_id);
  ASSERT_EQ(engine_->OpenAlarms().size(), 1u);
  EXPECT_EQ(engine_->OpenAlarms()[0].condition(), v1::ALARM_CONDITION_ABOVE);
  EXPECT_EQ(plan.version(), 1u);
}

TEST_F(PlansTest, ProjectionIsDampedAtThePeriodStart) {
  MustSet(DayPlan("quzhou-steel", 0, 1000, 0.1, /*projection=*/true));
  clock_.Set(Local(10, 0, 10));            // 10 minutes in: elapsed counts as 1 hour
  source_.Add(kMeter1, Local(10, 0), 30);  // 30 * 24 = 720 (not 30 * 144 = 4320)
  engine_->Evaluate(source_.Touched(kMeter1, Local(10, 0, 10)), "ev-1");
  EXPECT_TRUE(Take().empty());
  source_.Add(kMeter1, Local(10, 0, 5), 15);  // 45 * 24 = 1080
  engine_->Evaluate(source_.Touched(kMeter1, Local(10, 0, 10)), "ev-2");
  std::vector<Published> p = Take();
  ASSERT_EQ(p.size(), 1u);
  EXPECT_NEAR(p[0].alarm.projected_kg(), 1080, 1e-6);
}

TEST_F(PlansTest, ProjectedBelowOnlyAfterHalfThePeriod) {
  MustSet(DayPlan("quzhou-steel", 500, 1000, 0.1, /*projection=*/true));
  clock_.Set(Local(10, 6));
  Reading(kMeter1, Local(10, 5), 50);  // projected 200 < 500, but only a quarter elapsed
  EXPECT_TRUE(Take().empty());
  clock_.Set(Local(10, 12));
  Reading(kMeter1, Local(10, 11), 50);  // projected 200
  std::vector<Published> p = Take();
  ASSERT_EQ(p.size(), 1u);
  EXPECT_EQ(p[0].alarm.condition(), v1::ALARM_CONDITION_PROJECTED_BELOW);
  EXPECT_NEAR(p[0].alarm.projected_kg(), 200, 1e-6);
  // Back inside by less than the margin (550 needed): stays open.
  Reading(kMeter1, Local(10, 11), 170);  // projected 540
  p = Take();
  ASSERT_EQ(p.size(), 1u);
  EXPECT_EQ(p[0].kind, v1::ALARM_CHANGE_KIND_UPDATED);
  Reading(kMeter1, Local(10, 11), 10);  // projected 560
  p = Take();
  ASSERT_EQ(p.size(), 1u);
  EXPECT_EQ(p[0].kind, v1::ALARM_CHANGE_KIND_CLEARED);
}

// ------------------------------------------------------------------ period end

TEST_F(PlansTest, TickRaisesBelowForEndedPeriodsAndClearsOpenAlarms) {
  clock_.Set(Local(10, 9));
  v1::Plan plan = MustSet(DayPlan("quzhou-steel", 500, 1000, 0.1));
  v1::Plan capped = MustSet(DayPlan("quzhou-steel/line-2", 0, 100, 0.1));
  Reading(kMeter1, Local(9, 10), 50);    // before the plan's creation day: never checked
  Reading(kMeter1, Local(10, 10), 200);  // the 10th ends at 200 < 500
  Reading(kMeter3, Local(10, 11), 150);  // line-2 above its 100
  std::vector<Published> p = Take();
  ASSERT_EQ(p.size(), 1u);
  std::string above_id = p[0].alarm.alarm_id();
  EXPECT_EQ(p[0].alarm.plan_id(), capped.plan_id());

  engine_->Tick(Local(10, 23));  // the 10th has not ended
  EXPECT_TRUE(Take().empty());

  clock_.Set(Local(11, 0, 5));
  engine_->Tick(clock_.Now());
  p = Take();
  ASSERT_EQ(p.size(), 2u);
  EXPECT_EQ(p[0].kind, v1::ALARM_CHANGE_KIND_RAISED);
  EXPECT_EQ(p[0].alarm.condition(), v1::ALARM_CONDITION_BELOW);
  EXPECT_EQ(p[0].alarm.plan_id(), plan.plan_id());
  EXPECT_EQ(AlarmPeriodStart(p[0].alarm), Local(10, 0));
  EXPECT_DOUBLE_EQ(p[0].alarm.actual_kg(), 350);  // 200 + line-2's 150
  EXPECT_EQ(p[1].kind, v1::ALARM_CHANGE_KIND_CLEARED);
  EXPECT_EQ(p[1].alarm.alarm_id(), above_id);
  EXPECT_EQ(TimestampFromProto(p[1].alarm.clear_time(), "t").value(), clock_.Now());

  // Each period once; the BELOW alarm stays open.
  engine_->Tick(clock_.Now() + absl::Minutes(1));
  EXPECT_TRUE(Take().empty());
  ASSERT_EQ(engine_->OpenAlarms().size(), 1u);

  // The 11th ends at 700: no BELOW. The 12th had no data at all: 0 < 500.
  Reading(kMeter1, Local(11, 5), 700);
  Take();
  clock_.Set(Local(13, 1));
  engine_->Tick(clock_.Now());
  p = Take();
  ASSERT_EQ(p.size(), 1u);
  EXPECT_EQ(p[0].alarm.condition(), v1::ALARM_CONDITION_BELOW);
  EXPECT_EQ(AlarmPeriodStart(p[0].alarm), Local(12, 0));
  EXPECT_DOUBLE_EQ(p[0].alarm.actual_kg(), 0);

  // Late data lifting the 10th to >= min + margin (550) clears its BELOW.
  Reading(kMeter1, Local(10, 20), 150);  // 500: not enough
  p = Take();
  ASSERT_EQ(p.size(), 1u);
  EXPECT_EQ(p[0].kind, v1::ALARM_CHANGE_KIND_UPDATED);
  Reading(kMeter1, Local(10, 21), 60);  // 560
  p = Take();
  ASSERT_EQ(p.size(), 1u);
  EXPECT_EQ(p[0].kind, v1::ALARM_CHANGE_KIND_CLEARED);
  EXPECT_EQ(AlarmPeriodStart(p[0].alarm), Local(10, 0));

  // Late data never raises for an ended period.
  Reading(kMeter3, Local(11, 3), 5000);
  EXPECT_TRUE(Take().empty());
}

// ------------------------------------------------------------------ attribution

TEST_F(PlansTest, AttributionLargestFirstSharesSumAtMostOne) {
  MustSet(DayPlan("quzhou-steel/line-1", 0, 90, 0.1));
  v1::Plan enterprise = MustSet(DayPlan("quzhou-steel", 0, 100, 0.1));
  source_.Add(kMeter1, Local(10, 1), 30);
  source_.Add(kMeter3, Local(10, 1), 50);
  Reading(kMeter2, Local(10, 2), 70);
  for (const Published& p : Take()) {
    const v1::Alarm& a = p.alarm;
    ASSERT_GE(a.attributions_size(), 1);
    double sum = 0;
    for (int i = 0; i < a.attributions_size(); ++i) {
      sum += a.attributions(i).share();
      if (i > 0) {
        EXPECT_GE(a.attributions(i - 1).emissions_kg(), a.attributions(i).emissions_kg());
      }
    }
    EXPECT_LE(sum, 1.0 + 1e-12);
    if (a.plan_id() == enterprise.plan_id()) {
      // Lines of the enterprise: line-1 100 kg, line-2 50 kg.
      ASSERT_EQ(a.attributions_size(), 2);
      EXPECT_EQ(a.attributions(0).account_id(), "quzhou-steel/line-1");
      EXPECT_NEAR(a.attributions(0).share(), 100.0 / 150.0, 1e-9);
      EXPECT_EQ(a.attributions(1).account_id(), "quzhou-steel/line-2");
      EXPECT_NEAR(sum, 1.0, 1e-9);
    } else {
      ASSERT_EQ(a.attributions_size(), 2);
      EXPECT_EQ(a.attributions(0).account_id(), kMeter2);
      EXPECT_NEAR(a.attributions(0).share(), 0.7, 1e-9);
      EXPECT_EQ(a.attributions(1).account_id(), kMeter1);
    }
  }
}

TEST_F(PlansTest, AttributionKeepsAtMostTen) {
  for (int i = 0; i < 14; ++i) {
    source_.AddAccount("hz-paper/m-" + std::to_string(100 + i), "hz-paper", "CN-ZJ-HZ");
    source_.Add("hz-paper/m-" + std::to_string(100 + i), Local(10, 1), 10 + i);
  }
  MustSet(DayPlan("hz-paper", 0, 50, 0.1));
  engine_->Evaluate(source_.Touched("hz-paper/m-100", Local(10, 2)), "ev");
  std::vector<Published> p = Take();
  ASSERT_EQ(p.size(), 1u);
  ASSERT_EQ(p[0].alarm.attributions_size(), 10);
  EXPECT_EQ(p[0].alarm.attributions(0).account_id(), "hz-paper/m-113");
  double sum = 0;
  for (const auto& a : p[0].alarm.attributions()) sum += a.share();
  EXPECT_LT(sum, 1.0);
  EXPECT_NEAR(p[0].alarm.attributions(0).share(), 23.0 / 231.0, 1e-9);
}

// ------------------------------------------------------------------ acknowledge

TEST_F(PlansTest, AcknowledgeIsIdempotentAndRefusesClearedAlarms) {
  MustSet(DayPlan("quzhou-steel", 0, 100, 0.1));
  Reading(kMeter1, Local(10, 1), 150);
  std::string id = Take().at(0).alarm.alarm_id();

  std::string too_long(1025, 'x');
  auto bad = engine_->Acknowledge(id, "spiffe://city/org/quzhou-steel/user/li", too_long);
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(bad.status().message(), HasSubstr("note"));

  std::string note;
  for (int i = 0; i < 1024; ++i) note += "\xE7\xA2\xB3";  // 1024 characters, 3072 bytes
  clock_.Advance(absl::Minutes(3));
  auto acked = engine_->Acknowledge(id, "spiffe://city/org/quzhou-steel/user/li", note);
  ASSERT_TRUE(acked.ok()) << acked.status();
  EXPECT_EQ(acked->state(), v1::ALARM_STATE_ACKNOWLEDGED);
  EXPECT_EQ(acked->acknowledged_by(), "spiffe://city/org/quzhou-steel/user/li");
  EXPECT_EQ(acked->acknowledge_note(), note);
  EXPECT_EQ(TimestampFromProto(acked->acknowledge_time(), "t").value(), clock_.Now());
  std::vector<Published> p = Take();
  ASSERT_EQ(p.size(), 1u);
  EXPECT_EQ(p[0].kind, v1::ALARM_CHANGE_KIND_ACKNOWLEDGED);

  clock_.Advance(absl::Minutes(3));
  auto again = engine_->Acknowledge(id, "someone-else", "other");
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->acknowledged_by(), "spiffe://city/org/quzhou-steel/user/li");
  EXPECT_EQ(again->acknowledge_time().seconds(), acked->acknowledge_time().seconds());
  EXPECT_TRUE(Take().empty());

  // Still out of range: updates keep it ACKNOWLEDGED.
  Reading(kMeter1, Local(10, 2), 10);
  p = Take();
  ASSERT_EQ(p.size(), 1u);
  EXPECT_EQ(p[0].alarm.state(), v1::ALARM_STATE_ACKNOWLEDGED);

  Restate(kMeter1, Local(10, 1), 0);  // 10 kg: clears
  EXPECT_EQ(Take().at(0).kind, v1::ALARM_CHANGE_KIND_CLEARED);
  auto cleared = engine_->Acknowledge(id, "x", "");
  EXPECT_EQ(cleared.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(cleared.status().message(), HasSubstr(id));
  EXPECT_EQ(engine_->Acknowledge("no-such-alarm", "x", "").status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(engine_->GetAlarm(id)->state(), v1::ALARM_STATE_CLEARED);
}

// ------------------------------------------------------------------ delete / replace

TEST_F(PlansTest, DeletePlanClearsItsOpenAlarms) {
  v1::Plan plan = MustSet(DayPlan("quzhou-steel", 0, 100, 0.1, true));
  v1::Plan other = MustSet(DayPlan("quzhou-steel/line-1", 0, 100, 0.1));
  Reading(kMeter1, Local(10, 1), 150);
  EXPECT_EQ(Count(Take(), v1::ALARM_CHANGE_KIND_RAISED), 2);
  ASSERT_TRUE(engine_->DeletePlan(plan.plan_id()).ok());
  std::vector<Published> p = Take();
  ASSERT_EQ(p.size(), 1u);
  EXPECT_EQ(p[0].kind, v1::ALARM_CHANGE_KIND_CLEARED);
  EXPECT_EQ(p[0].alarm.plan_id(), plan.plan_id());
  ASSERT_EQ(engine_->OpenAlarms().size(), 1u);
  EXPECT_EQ(engine_->OpenAlarms()[0].plan_id(), other.plan_id());
  EXPECT_EQ(engine_->GetPlan(plan.plan_id()).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(engine_->DeletePlan(plan.plan_id()).code(), absl::StatusCode::kNotFound);
  Reading(kMeter1, Local(10, 2), 10);  // the deleted plan is not evaluated any more
  for (const Published& q : Take()) EXPECT_EQ(q.alarm.plan_id(), other.plan_id());
}

TEST_F(PlansTest, ReplacedRangeAppliesAtNextEvaluationAndGranularityChangeClears) {
  v1::Plan plan = MustSet(DayPlan("quzhou-steel", 0, 100, 0.1));
  Reading(kMeter1, Local(10, 1), 150);
  Take();
  plan.set_max_kg(1000);
  plan = MustSet(plan);
  EXPECT_TRUE(Take().empty());  // from the next reading
  Reading(kMeter1, Local(10, 2), 1);
  std::vector<Published> p = Take();
  ASSERT_EQ(p.size(), 1u);
  EXPECT_EQ(p[0].kind, v1::ALARM_CHANGE_KIND_CLEARED);
  EXPECT_DOUBLE_EQ(p[0].alarm.planned_max_kg(), 1000);  // cleared against the new range
  EXPECT_DOUBLE_EQ(p[0].alarm.actual_kg(), 151);

  plan.set_max_kg(120);
  plan = MustSet(plan);
  Reading(kMeter1, Local(10, 3), 1);
  p = Take();
  ASSERT_EQ(p.size(), 1u);
  EXPECT_EQ(p[0].kind, v1::ALARM_CHANGE_KIND_RAISED);
  EXPECT_DOUBLE_EQ(p[0].alarm.planned_max_kg(), 120);

  plan.set_granularity(v1::GRANULARITY_MONTH);
  plan.set_max_kg(10000);
  plan = MustSet(plan);
  p = Take();
  ASSERT_EQ(p.size(), 1u);
  EXPECT_EQ(p[0].kind, v1::ALARM_CHANGE_KIND_CLEARED);
  EXPECT_EQ(plan.version(), 4u);
}

// ------------------------------------------------------------------ persistence

TEST_F(PlansTest, ReopenRestoresPlansAndOpenAlarmsWithoutDuplicateRaise) {
  v1::Plan plan = MustSet(DayPlan("quzhou-steel", 500, 1000, 0.1));
  Reading(kMeter1, Local(10, 1), 1100);
  std::string id = Take().at(0).alarm.alarm_id();
  clock_.Set(Local(12, 1));
  engine_->Tick(clock_.Now());  // 10th ABOVE cleared; 11th (0 kg) BELOW raised
  std::vector<Published> p = Take();
  ASSERT_EQ(p.size(), 2u) << "BELOW for the 11th, CLEARED for the 10th's ABOVE";
  std::string below_id;
  for (const Published& q : p) {
    if (q.kind == v1::ALARM_CHANGE_KIND_RAISED) below_id = q.alarm.alarm_id();
  }
  Reading(kMeter1, Local(12, 2), 1200);
  std::string open_id = Take().at(0).alarm.alarm_id();

  Reopen();
  EXPECT_EQ(engine_->GetPlan(plan.plan_id())->version(), 1u);
  std::vector<v1::Alarm> open = engine_->OpenAlarms();
  ASSERT_EQ(open.size(), 2u);
  std::set<std::string> ids{open[0].alarm_id(), open[1].alarm_id()};
  EXPECT_EQ(ids, (std::set<std::string>{open_id, below_id}));
  EXPECT_EQ(engine_->GetAlarm(id)->state(), v1::ALARM_STATE_CLEARED);

  Reading(kMeter1, Local(12, 3), 10);  // the open ABOVE is updated, not raised again
  p = Take();
  ASSERT_EQ(p.size(), 1u);
  EXPECT_EQ(p[0].kind, v1::ALARM_CHANGE_KIND_UPDATED);
  EXPECT_EQ(p[0].alarm.alarm_id(), open_id);
  engine_->Tick(clock_.Now());  // periods already checked are not checked again
  EXPECT_TRUE(Take().empty());
}

// ------------------------------------------------------------------ listing

TEST_F(PlansTest, ListAlarmsFiltersAndPaginatesNewestFirst) {
  MustSet(DayPlan("quzhou-steel/line-1", 0, 10, 0.1));
  MustSet(DayPlan("quzhou-steel/line-2", 0, 10, 0.1));
  MustSet(DayPlan("hz-paper", 0, 10, 0.1));
  std::vector<std::string> raised;  // oldest first
  for (int day = 1; day <= 4; ++day) {
    for (const char* meter : {kMeter1, kMeter3, "hz-paper/m-9"}) {
      clock_.Set(Local(day, 12) + absl::Minutes(raised.size()));
      Reading(meter, Local(day, 11), 20);
      std::vector<Published> p = Take();
      ASSERT_EQ(p.size(), 1u);
      raised.push_back(p[0].alarm.alarm_id());
    }
  }
  clock_.Set(Local(5, 1));
  engine_->Tick(clock_.Now());  // all cleared (their days ended)
  Take();
  Reading(kMeter1, Local(5, 0), 20);  // one open alarm, the newest
  raised.push_back(Take().at(0).alarm.alarm_id());

  auto all_pages = [&](v1::ListAlarmsRequest r,
                       const std::function<bool(const v1::Alarm&)>& visible) {
    std::vector<std::string> ids;
    for (int guard = 0; guard < 100; ++guard) {
      auto page = engine_->ListAlarms(r, visible);
      EXPECT_TRUE(page.ok()) << page.status();
      if (!page.ok()) break;
      EXPECT_LE(page->alarms_size(), r.page_size() == 0 ? 100 : r.page_size());
      for (const auto& a : page->alarms()) ids.push_back(a.alarm_id());
      if (page->next_page_token().empty()) break;
      r.set_page_token(page->next_page_token());
    }
    return ids;
  };

  std::vector<std::string> newest_first(raised.rbegin(), raised.rend());
  v1::ListAlarmsRequest r;
  r.set_page_size(4);
  EXPECT_EQ(all_pages(r, nullptr), newest_first);
  r.set_page_size(0);
  EXPECT_EQ(all_pages(r, nullptr), newest_first);

  // Account with descendants: the enterprise covers both lines' alarms.
  v1::ListAlarmsRequest acc;
  acc.set_account_id("quzhou-steel");
  acc.set_page_size(3);
  EXPECT_EQ(all_pages(acc, nullptr).size(), 9u);
  acc.set_account_id("quzhou-steel/line-2");
  EXPECT_EQ(all_pages(acc, nullptr).size(), 4u);

  // Region with sub-regions.
  v1::ListAlarmsRequest reg;
  reg.set_region("CN-ZJ");
  EXPECT_EQ(all_pages(reg, nullptr).size(), 13u);
  reg.set_region("CN-ZJ-QZ");
  EXPECT_EQ(all_pages(reg, nullptr).size(), 9u);
  reg.set_region("CN-ZJ-Q");
  EXPECT_TRUE(all_pages(reg, nullptr).empty());

  // State.
  v1::ListAlarmsRequest st;
  st.set_state(v1::ALARM_STATE_ACTIVE);
  EXPECT_EQ(all_pages(st, nullptr), std::vector<std::string>{raised.back()});
  st.set_state(v1::ALARM_STATE_CLEARED);
  EXPECT_EQ(all_pages(st, nullptr).size(), 12u);

  // Raise-time range: days 2 and 3.
  v1::ListAlarmsRequest rng;
  TimestampToProto(Local(2, 0), rng.mutable_range()->mutable_start());
  TimestampToProto(Local(4, 0), rng.mutable_range()->mutable_end());
  rng.set_page_size(2);
  EXPECT_EQ(all_pages(rng, nullptr),
            std::vector<std::string>(newest_first.begin() + 4, newest_first.begin() + 10));

  // Visibility: only hz-paper's; pages stay full.
  v1::ListAlarmsRequest vis;
  vis.set_page_size(3);
  auto only_hz = [](const v1::Alarm& a) { return a.account_id() == "hz-paper"; };
  auto first = engine_->ListAlarms(vis, only_hz);
  ASSERT_TRUE(first.ok());
  EXPECT_EQ(first->alarms_size(), 3);
  EXPECT_EQ(all_pages(vis, only_hz).size(), 4u);

  v1::ListAlarmsRequest bad;
  bad.set_page_size(1001);
  EXPECT_THAT(engine_->ListAlarms(bad, nullptr).status().message(), HasSubstr("page_size"));
  bad.set_page_size(-1);
  EXPECT_EQ(engine_->ListAlarms(bad, nullptr).status().code(), absl::StatusCode::kInvalidArgument);
  bad.set_page_size(0);
  bad.set_page_token("!!not a token!!");
  EXPECT_THAT(engine_->ListAlarms(bad, nullptr).status().message(), HasSubstr("page_token"));
  bad.clear_page_token();
  TimestampToProto(Local(4, 0), bad.mutable_range()->mutable_start());
  TimestampToProto(Local(2, 0), bad.mutable_range()->mutable_end());
  EXPECT_THAT(engine_->ListAlarms(bad, nullptr).status().message(), HasSubstr("range"));
}

// ------------------------------------------------------------------ publishing

TEST_F(PlansTest, PublishSeesPersistedStateInOrderAndMayCallBack) {
  std::vector<std::string> seen;
  AlarmEngine* engine = nullptr;
  auto e = AlarmEngine::Open(dir_.File("other.db"), &source_, tz_, &clock_,
                             [&](v1::AlarmChangeKind k, const v1::Alarm& a) {
                               // Re-entrant read: the change is already stored.
                               auto stored = engine->GetAlarm(a.alarm_id());
                               ASSERT_TRUE(stored.ok());
                               EXPECT_EQ(stored->state(), a.state());
                               seen.push_back(absl::StrCat(v1::AlarmChangeKind_Name(k), " ",
                                                           v1::AlarmCondition_Name(a.condition())));
                             });
  ASSERT_TRUE(e.ok());
  engine = e->get();
  v1::Plan p = DayPlan("quzhou-steel", 0, 1000, 0.1, true);
  ASSERT_TRUE(engine->SetPlan(p, "me").ok());
  clock_.Set(Local(10, 12));
  source_.Add(kMeter1, Local(10, 11), 600);  // projected 1200
  engine->Evaluate(source_.Touched(kMeter1, Local(10, 12)), "a");
  source_.Add(kMeter1, Local(10, 11), 500);  // 1100: ABOVE supersedes
  engine->Evaluate(source_.Touched(kMeter1, Local(10, 12)), "b");
  std::string id = engine->OpenAlarms().at(0).alarm_id();
  ASSERT_TRUE(engine->Acknowledge(id, "me", "").ok());
  clock_.Set(Local(11, 0, 1));
  engine->Tick(clock_.Now());
  EXPECT_EQ(seen, (std::vector<std::string>{
                      "ALARM_CHANGE_KIND_RAISED ALARM_CONDITION_PROJECTED_ABOVE",
                      "ALARM_CHANGE_KIND_RAISED ALARM_CONDITION_ABOVE",
                      "ALARM_CHANGE_KIND_CLEARED ALARM_CONDITION_PROJECTED_ABOVE",
                      "ALARM_CHANGE_KIND_ACKNOWLEDGED ALARM_CONDITION_ABOVE",
                      "ALARM_CHANGE_KIND_CLEARED ALARM_CONDITION_ABOVE",
                  }));
}

TEST_F(PlansTest, ConcurrentCallersSeeOneAlarmPerConditionAndOrderedChanges) {
  v1::Plan enterprise = MustSet(DayPlan("quzhou-steel", 0, 50, 0.1));
  MustSet(DayPlan("quzhou-steel/line-1", 0, 30, 0.1));
  MustSet(DayPlan("quzhou-steel/line-2", 0, 30, 0.1));
  auto feed = [this](const char* meter) {
    for (int i = 0; i < 200; ++i) {
      source_.Add(meter, Local(10, 1) + absl::Seconds(i), 1);
      engine_->Evaluate(source_.Touched(meter, Local(10, 2)), "ev");
    }
  };
  std::atomic<bool> done{false};
  std::thread t1(feed, kMeter1), t2(feed, kMeter3);
  std::thread acker([&] {
    while (!done.load()) {
      for (const v1::Alarm& a : engine_->OpenAlarms()) {
        EXPECT_TRUE(engine_->Acknowledge(a.alarm_id(), "me", "on it").ok());
      }
      EXPECT_TRUE(engine_->ListAlarms({}, nullptr).ok());
    }
  });
  t1.join();
  t2.join();
  done = true;
  acker.join();

  std::vector<Published> all = Take();
  EXPECT_EQ(Count(all, v1::ALARM_CHANGE_KIND_RAISED), 3);
  EXPECT_EQ(Count(all, v1::ALARM_CHANGE_KIND_CLEARED), 0);
  std::map<std::string, double> last_actual;
  for (const Published& p : all) {
    auto it = last_actual.find(p.alarm.alarm_id());
    if (it == last_actual.end()) {
      EXPECT_EQ(p.kind, v1::ALARM_CHANGE_KIND_RAISED);  // the first change of an alarm
      last_actual[p.alarm.alarm_id()] = p.alarm.actual_kg();
      continue;
    }
    EXPECT_GE(p.alarm.actual_kg(), it->second);  // published in the order evaluated
    it->second = p.alarm.actual_kg();
  }
  ASSERT_EQ(engine_->OpenAlarms().size(), 3u);
  for (const v1::Alarm& a : engine_->OpenAlarms()) {
    if (a.plan_id() == enterprise.plan_id()) {
      EXPECT_DOUBLE_EQ(a.actual_kg(), 400);
      EXPECT_DOUBLE_EQ(last_actual[a.alarm_id()], 400);
    }
  }
}

// ------------------------------------------------------------------ watchers

TEST_F(PlansTest, WatchersGetMatchingChangesAndCloseOnOverflowOrShutdown) {
  AlarmWatchers hub(&source_, /*queue_capacity=*/3);
  auto steel = hub.Register({.account_id = "quzhou-steel"});
  auto hz = hub.Register({.region = "CN-ZJ-HZ"});
  auto all = hub.Register({});
  auto invisible = hub.Register({.visible = [](const v1::Alarm&) { return false; }});
  EXPECT_EQ(hub.size(), 4u);

  v1::Alarm line;
  line.set_alarm_id("a1");
  line.set_account_id("quzhou-steel/line-1");
  line.set_region("CN-ZJ-QZ-KC");
  v1::Alarm paper;
  paper.set_alarm_id("a2");
  paper.set_account_id("hz-paper");
  paper.set_region("CN-ZJ-HZ");
  hub.Publish(v1::ALARM_CHANGE_KIND_RAISED, line);
  hub.Publish(v1::ALARM_CHANGE_KIND_RAISED, paper);
  hub.Publish(v1::ALARM_CHANGE_KIND_CLEARED, line);

  absl::Time soon = absl::Now() + absl::Seconds(5);
  auto s = steel->Wait(soon);
  ASSERT_EQ(s.size(), 2u);
  EXPECT_EQ(s[0].kind(), v1::ALARM_CHANGE_KIND_RAISED);
  EXPECT_EQ(s[1].kind(), v1::ALARM_CHANGE_KIND_CLEARED);
  auto h = hz->Wait(soon);
  ASSERT_EQ(h.size(), 1u);
  EXPECT_EQ(h[0].alarm().alarm_id(), "a2");
  EXPECT_EQ(all->Wait(soon).size(), 3u);
  EXPECT_TRUE(invisible->Wait(absl::Now()).empty());

  // `all` has an empty queue of capacity 3: the 4th undrained change overflows it.
  for (int i = 0; i < 4; ++i) hub.Publish(v1::ALARM_CHANGE_KIND_UPDATED, paper);
  EXPECT_TRUE(all->overflowed());
  EXPECT_TRUE(all->closed());
  EXPECT_EQ(all->Wait(soon).size(), 3u);
  EXPECT_FALSE(steel->closed());

  hub.Unregister(invisible);
  EXPECT_EQ(hub.size(), 3u);
  hub.CloseAll();
  EXPECT_TRUE(steel->closed());
  EXPECT_FALSE(steel->overflowed());
  EXPECT_TRUE(steel->Wait(absl::InfiniteFuture()).empty());  // returns at once: closed
  EXPECT_TRUE(hub.Register({})->closed());
}

}  // namespace
}  // namespace cityos::carbon
