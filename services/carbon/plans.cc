// Plans and the alarm engine (see plans.h for the semantics): validation,
// evaluation with hysteresis and projection, period-end ticks, acknowledgement,
// the alarms.db schema, ListAlarms paging, and the AlarmWatchers hub.
#include "plans.h"

#include <sqlite3.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <set>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "cityos/id.h"
#include "cityos/logging.h"
#include "cityos/proto_time.h"
#include "cityos/status.h"
#include "sqlite_util.h"

namespace cityos::carbon {
namespace {

using infobank::SqliteStmt;

constexpr char kSchema[] = R"sql(
PRAGMA journal_mode=WAL;
PRAGMA synchronous=NORMAL;
CREATE TABLE IF NOT EXISTS plans(
  plan_id TEXT PRIMARY KEY,
  create_us INTEGER NOT NULL,
  below_checked_us INTEGER NOT NULL,
  proto BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS alarms(
  alarm_id TEXT PRIMARY KEY,
  plan_id TEXT NOT NULL,
  state INTEGER NOT NULL,
  raise_us INTEGER NOT NULL,
  proto BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS alarms_raise ON alarms(raise_us DESC, alarm_id DESC);
CREATE INDEX IF NOT EXISTS alarms_open ON alarms(state);
)sql";

constexpr double kDefaultHysteresis = 0.05;
constexpr size_t kMaxAttributions = 10;
constexpr double kFigureEpsilonKg = 1e-6;
constexpr size_t kMaxNoteChars = 1024;
constexpr int kDefaultPageSize = 100;
constexpr int kMaxPageSize = 1000;
// Most ended periods one Tick checks per plan (a long outage catches up over
// several ticks).
constexpr int kMaxPeriodsPerTick = 1000;

class Stmt : public SqliteStmt {
 public:
  Stmt(sqlite3* db, const char* sql) : SqliteStmt(db, sql, "alarms.db") {}

  // Steps to the next row and parses its column 0, a serialized alarm, into
  // *a: false when no row remains, DATA_LOSS when the record does not parse.
  absl::StatusOr<bool> NextAlarm(v1::Alarm* a) {
    CITYOS_ASSIGN_OR_RETURN(bool row, Next());
    if (row && !a->ParseFromString(ColBlob(0))) {
      return absl::DataLossError("alarms.db: corrupt alarm record");
    }
    return row;
  }
};

int64_t ToMicros(absl::Time t) { return absl::ToUnixMicros(t); }
absl::Time FromMicros(int64_t us) { return absl::FromUnixMicros(us); }

absl::Time TimeOf(const google::protobuf::Timestamp& ts) {
  return absl::FromUnixSeconds(ts.seconds()) + absl::Nanoseconds(ts.nanos());
}

bool IsOpen(const v1::Alarm& a) {
  return a.state() == v1::ALARM_STATE_ACTIVE || a.state() == v1::ALARM_STATE_ACKNOWLEDGED;
}

std::string PlanTarget(const v1::Plan& p) {
  return p.target_case() == v1::Plan::kRegion ? p.region() : p.account_id();
}
bool PlanIsRegion(const v1::Plan& p) { return p.target_case() == v1::Plan::kRegion; }

// Number of UTF-8 code points (continuation bytes are not counted).
size_t CodePoints(std::string_view s) {
  size_t n = 0;
  for (unsigned char c : s) {
    if ((c & 0xC0) != 0x80) ++n;
  }
  return n;
}

absl::Status InvalidPlan(std::string_view msg) {
  return absl::InvalidArgumentError(absl::StrCat("plan.", std::string(msg)));
}

// Validates and normalizes the fields of `plan` a caller sets.
absl::Status ValidatePlan(v1::Plan& plan) {
  switch (plan.target_case()) {
    case v1::Plan::kAccountId:
      if (plan.account_id().empty()) return InvalidPlan("account_id: empty");
      break;
    case v1::Plan::kRegion:
      if (plan.region().empty()) return InvalidPlan("region: empty");
      break;
    default:
      return InvalidPlan("target: exactly one of account_id or region is required");
  }
  switch (plan.granularity()) {
    case v1::GRANULARITY_DAY:
    case v1::GRANULARITY_MONTH:
    case v1::GRANULARITY_YEAR:
      break;
    case v1::GRANULARITY_HOUR:
      return InvalidPlan("granularity: HOUR is not allowed (DAY, MONTH or YEAR)");
    default:
      return InvalidPlan(absl::StrCat("granularity: ", v1::Granularity_Name(plan.granularity()),
                                      " (", static_cast<int>(plan.granularity()),
                                      ") is not DAY, MONTH or YEAR"));
  }
  if (!std::isfinite(plan.min_kg()) || plan.min_kg() < 0) {
    return InvalidPlan(absl::StrCat("min_kg: ", plan.min_kg(), " must be finite and >= 0"));
  }
  if (!std::isfinite(plan.max_kg()) || plan.max_kg() <= plan.min_kg()) {
    return InvalidPlan(absl::StrCat("max_kg: ", plan.max_kg(),
                                    " must be finite and greater than min_kg ", plan.min_kg()));
  }
  if (!std::isfinite(plan.hysteresis()) || plan.hysteresis() < 0 || plan.hysteresis() > 1) {
    return InvalidPlan(absl::StrCat("hysteresis: ", plan.hysteresis(), " is outside [0, 1]"));
  }
  if (plan.hysteresis() == 0) plan.set_hysteresis(kDefaultHysteresis);
  std::optional<absl::Time> start, end;
  if (plan.valid().has_start()) {
    CITYOS_ASSIGN_OR_RETURN(start, TimestampFromProto(plan.valid().start(), "plan.valid.start"));
  }
  if (plan.valid().has_end()) {
    CITYOS_ASSIGN_OR_RETURN(end, TimestampFromProto(plan.valid().end(), "plan.valid.end"));
  }
  if (start && end && *end <= *start) {
    return InvalidPlan(absl::StrCat("valid: end ", absl::FormatTime(*end), " is not after start ",
                                    absl::FormatTime(*start)));
  }
  return absl::OkStatus();
}

absl::Time ValidStart(const v1::Plan& p) {
  return p.valid().has_start() ? TimeOf(p.valid().start()) : absl::InfinitePast();
}
absl::Time ValidEnd(const v1::Plan& p) {
  return p.valid().has_end() ? TimeOf(p.valid().end()) : absl::InfiniteFuture();
}
bool PlanGoverns(const v1::Plan& plan, const Period& p) {
  return p.end > ValidStart(plan) && p.start < ValidEnd(plan);
}

double Margin(const v1::Plan& plan) { return plan.hysteresis() * (plan.max_kg() - plan.min_kg()); }

std::string EncodeToken(int64_t raise_us, std::string_view alarm_id) {
  return absl::WebSafeBase64Escape(absl::StrCat(raise_us, "/", std::string(alarm_id)));
}

absl::Status DecodeToken(std::string_view token, int64_t* raise_us, std::string* alarm_id) {
  std::string raw;
  if (!absl::WebSafeBase64Unescape(std::string(token), &raw)) {
    return absl::InvalidArgumentError("page_token: malformed");
  }
  std::pair<std::string, std::string> parts = absl::StrSplit(raw, absl::MaxSplits('/', 1));
  if (!absl::SimpleAtoi(parts.first, raise_us) || parts.second.empty()) {
    return absl::InvalidArgumentError("page_token: malformed");
  }
  *alarm_id = parts.second;
  return absl::OkStatus();
}

}  // namespace

// ---------------------------------------------------------------- source

bool EmissionsSource::RegionCovers(std::string_view ancestor_region,
                                   std::string_view region) const {
  if (ancestor_region.empty()) return false;
  return region == ancestor_region ||
         (region.starts_with(ancestor_region) && region.size() > ancestor_region.size() &&
          region[ancestor_region.size()] == '-');
}

absl::Time AlarmPeriodStart(const v1::Alarm& alarm) { return TimeOf(alarm.period().start()); }

// ---------------------------------------------------------------- engine

AlarmEngine::AlarmEngine(sqlite3* db, const EmissionsSource* source, absl::TimeZone tz,
                         Clock* clock, Publish publish)
    : source_(source), tz_(tz), clock_(clock), publish_(std::move(publish)), db_(db) {}

AlarmEngine::~AlarmEngine() {
  absl::MutexLock lock(&mu_);
  sqlite3_close(db_);
}

absl::StatusOr<std::unique_ptr<AlarmEngine>> AlarmEngine::Open(const std::string& db_path,
                                                               const EmissionsSource* source,
                                                               absl::TimeZone tz, Clock* clock,
                                                               Publish publish) {
  sqlite3* db = nullptr;
  int rc =
      sqlite3_open_v2(db_path.c_str(), &db,
                      SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_FULLMUTEX, nullptr);
  if (rc != SQLITE_OK) {
    std::string msg = db != nullptr ? sqlite3_errmsg(db) : "out of memory";
    sqlite3_close(db);
    return absl::FailedPreconditionError(absl::StrFormat("%s: cannot open: %s", db_path, msg));
  }
  sqlite3_busy_timeout(db, 5000);
  std::unique_ptr<AlarmEngine> engine(new AlarmEngine(db, source, tz, clock, std::move(publish)));
  absl::MutexLock lock(&engine->mu_);
  if (absl::Status s = engine->Exec(kSchema); !s.ok()) {
    return absl::FailedPreconditionError(absl::StrCat(db_path, ": ", s.message()));
  }
  if (absl::Status s = engine->Load(); !s.ok()) {
    return absl::FailedPreconditionError(absl::StrCat(db_path, ": ", s.message()));
  }
  return engine;
}

absl::Status AlarmEngine::Exec(const char* sql) {
  char* err = nullptr;
  if (sqlite3_exec(db_, sql, nullptr, nullptr, &err) != SQLITE_OK) {
    std::string msg = err != nullptr ? err : "unknown error";
    sqlite3_free(err);
    return absl::InternalError(absl::StrCat("alarms.db: ", msg));
  }
  return absl::OkStatus();
}

absl::Status AlarmEngine::EndTransaction() {
  absl::Status s = Exec("COMMIT");
  if (!s.ok()) (void)Exec("ROLLBACK");
  return s;
}

absl::Status AlarmEngine::Load() {
  {
    Stmt s(db_, "SELECT create_us, below_checked_us, proto FROM plans");
    CITYOS_RETURN_IF_ERROR(s.ForEachRow([&]() -> absl::Status {
      PlanEntry e;
      if (!e.plan.ParseFromString(s.ColBlob(2))) {
        return absl::DataLossError("alarms.db: corrupt plan record");
      }
      e.create_time = FromMicros(s.ColInt(0));
      e.below_checked = FromMicros(s.ColInt(1));
      std::string id = e.plan.plan_id();
      plans_.emplace(std::move(id), std::move(e));
      return absl::OkStatus();
    }));
  }
  Stmt s(db_, "SELECT proto FROM alarms WHERE state IN (?1, ?2)");
  CITYOS_RETURN_IF_ERROR(s.status());
  s.Bind(1, int64_t{v1::ALARM_STATE_ACTIVE}).Bind(2, int64_t{v1::ALARM_STATE_ACKNOWLEDGED});
  while (true) {
    v1::Alarm a;
    CITYOS_ASSIGN_OR_RETURN(bool row, s.NextAlarm(&a));
    if (!row) break;
    open_[OpenKey(a.plan_id(), ToMicros(AlarmPeriodStart(a)), a.condition())] = std::move(a);
  }
  return absl::OkStatus();
}

absl::Status AlarmEngine::WritePlan(const PlanEntry& e) {
  Stmt s(db_,
         "INSERT OR REPLACE INTO plans(plan_id, create_us, below_checked_us, proto) "
         "VALUES(?1, ?2, ?3, ?4)");
  CITYOS_RETURN_IF_ERROR(s.status());
  s.Bind(1, e.plan.plan_id())
      .Bind(2, ToMicros(e.create_time))
      .Bind(3, ToMicros(e.below_checked))
      .BindBlob(4, e.plan.SerializeAsString());
  return s.Run();
}

absl::Status AlarmEngine::WriteAlarm(const v1::Alarm& a) {
  Stmt s(db_,
         "INSERT OR REPLACE INTO alarms(alarm_id, plan_id, state, raise_us, proto) "
         "VALUES(?1, ?2, ?3, ?4, ?5)");
  CITYOS_RETURN_IF_ERROR(s.status());
  s.Bind(1, a.alarm_id())
      .Bind(2, a.plan_id())
      .Bind(3, int64_t{a.state()})
      .Bind(4, ToMicros(TimeOf(a.raise_time())))
      .BindBlob(5, a.SerializeAsString());
  return s.Run();
}

absl::StatusOr<std::optional<v1::Alarm>> AlarmEngine::ReadAlarm(std::string_view id) const {
  Stmt s(db_, "SELECT proto FROM alarms WHERE alarm_id = ?1");
  CITYOS_RETURN_IF_ERROR(s.status());
  s.Bind(1, id);
  v1::Alarm a;
  CITYOS_ASSIGN_OR_RETURN(bool row, s.NextAlarm(&a));
  if (!row) return std::nullopt;
  return a;
}

bool AlarmEngine::Commit(v1::AlarmChangeKind kind, const v1::Alarm& a) {
  if (absl::Status s = WriteAlarm(a); !s.ok()) {
    LogWarn("carbon.alarms", "cannot persist alarm change",
            {{"alarm_id", a.alarm_id()}, {"error", std::string(s.message())}});
    return false;
  }
  OpenKey key(a.plan_id(), ToMicros(AlarmPeriodStart(a)), a.condition());
  if (IsOpen(a)) {
    open_[key] = a;
  } else {
    open_.erase(key);
  }
  queue_.push_back(Change{kind, a});
  return true;
}

void AlarmEngine::Drain() {
  {
    absl::MutexLock lock(&mu_);
    if (draining_) return;  // the thread draining now publishes ours too, in order
    draining_ = true;
  }
  while (true) {
    std::deque<Change> batch;
    {
      absl::MutexLock lock(&mu_);
      if (queue_.empty()) {
        draining_ = false;
        return;
      }
      batch.swap(queue_);
    }
    if (!publish_) continue;
    for (const Change& c : batch) publish_(c.kind, c.alarm);
  }
}

// ---------------------------------------------------------------- plans

absl::StatusOr<v1::Plan> AlarmEngine::SetPlan(v1::Plan plan, const std::string& updated_by) {
  CITYOS_RETURN_IF_ERROR(ValidatePlan(plan));
  absl::Time now = clock_->Now();
  v1::Plan stored;
  {
    absl::MutexLock lock(&mu_);
    PlanEntry e;
    bool clear_open = false;
    if (plan.plan_id().empty()) {
      plan.set_plan_id(UuidToString(NewUuidV7At(now)));
      plan.set_version(1);
      e.create_time = now;
      e.below_checked = absl::InfinitePast();
    } else {
      auto it = plans_.find(plan.plan_id());
      if (it == plans_.end()) {
        return absl::NotFoundError(absl::StrCat("plan ", plan.plan_id(), " not found"));
      }
      const PlanEntry& old = it->second;
      if (plan.version() != 0 && plan.version() != old.plan.version()) {
        return absl::FailedPreconditionError(
            absl::StrCat("plan ", plan.plan_id(), ": version ", plan.version(),
                         " is not the current version ", old.plan.version()));
      }
      clear_open = old.plan.granularity() != plan.granularity() ||
                   old.plan.target_case() != plan.target_case() ||
                   PlanTarget(old.plan) != PlanTarget(plan);
      plan.set_version(old.plan.version() + 1);
      e.create_time = old.create_time;
      e.below_checked = clear_open ? absl::InfinitePast() : old.below_checked;
      if (clear_open) e.create_time = now;  // a new budget: BELOW checks start afresh
    }
    plan.set_updated_by(updated_by);
    TimestampToProto(now, plan.mutable_update_time());
    e.plan = plan;
    CITYOS_RETURN_IF_ERROR(Exec("BEGIN"));
    absl::Status s = WritePlan(e);
    if (!s.ok()) {
      (void)Exec("ROLLBACK");
      return s;
    }
    if (clear_open) ClearAllOf(plan.plan_id(), now);
    CITYOS_RETURN_IF_ERROR(EndTransaction());
    plans_[plan.plan_id()] = std::move(e);
    stored = plan;
  }
  Drain();
  return stored;
}

absl::StatusOr<v1::Plan> AlarmEngine::GetPlan(std::string_view id) const {
  absl::MutexLock lock(&mu_);
  auto it = plans_.find(std::string(id));
  if (it == plans_.end())
    return absl::NotFoundError(absl::StrCat("plan ", std::string(id), " not found"));
  return it->second.plan;
}

std::vector<v1::Plan> AlarmEngine::ListPlans(const v1::ListPlansRequest& r) const {
  std::optional<absl::Time> at;
  if (r.has_valid_at()) at = TimeOf(r.valid_at());
  std::vector<v1::Plan> out;
  absl::MutexLock lock(&mu_);
  for (const auto& [id, e] : plans_) {
    const v1::Plan& p = e.plan;
    if (!r.account_id().empty() &&
        !(p.target_case() == v1::Plan::kAccountId && p.account_id() == r.account_id())) {
      continue;
    }
    if (!r.region().empty() && !(PlanIsRegion(p) && p.region() == r.region())) continue;
    if (at && !(ValidStart(p) <= *at && *at < ValidEnd(p))) continue;
    out.push_back(p);
  }
  return out;
}

absl::Status AlarmEngine::DeletePlan(std::string_view id) {
  {
    absl::MutexLock lock(&mu_);
    auto it = plans_.find(std::string(id));
    if (it == plans_.end())
      return absl::NotFoundError(absl::StrCat("plan ", std::string(id), " not found"));
    CITYOS_RETURN_IF_ERROR(Exec("BEGIN"));
    Stmt s(db_, "DELETE FROM plans WHERE plan_id = ?1");
    absl::Status st = s.status();
    if (st.ok()) st = s.Bind(1, id).Run();
    if (!st.ok()) {
      (void)Exec("ROLLBACK");
      return st;
    }
    ClearAllOf(id, clock_->Now());
    CITYOS_RETURN_IF_ERROR(EndTransaction());
    plans_.erase(it);
  }
  Drain();
  return absl::OkStatus();
}

// ---------------------------------------------------------------- evaluation

AlarmEngine::Figures AlarmEngine::Measure(const v1::Plan& plan, const Period& p, absl::Time latest,
                                          absl::Time now) const {
  Figures f;
  f.actual = source_->TotalKg(PlanTarget(plan), PlanIsRegion(plan), p.start, p.end);
  absl::Duration length = p.end - p.start;
  absl::Time to = std::clamp(std::max(latest, now), p.start, p.end);
  absl::Duration elapsed = std::max(to - p.start, std::max(absl::Hours(1), length / 24));
  f.fraction = std::min(1.0, absl::FDivDuration(elapsed, length));
  f.projected = f.actual / f.fraction;
  return f;
}

std::vector<v1::Attribution> AlarmEngine::Attribute(const v1::Plan& plan, const Period& p,
                                                    double actual) const {
  std::vector<v1::Attribution> c =
      source_->Contributors(PlanTarget(plan), PlanIsRegion(plan), p.start, p.end);
  std::stable_sort(c.begin(), c.end(), [](const v1::Attribution& a, const v1::Attribution& b) {
    return a.emissions_kg() > b.emissions_kg();
  });
  if (c.size() > kMaxAttributions) c.resize(kMaxAttributions);
  double sum = 0;
  for (v1::Attribution& a : c) {
    double share = actual > 0 ? std::clamp(a.emissions_kg() / actual, 0.0, 1.0) : 0.0;
    // Never let rounding (or a source inconsistent with TotalKg) push the sum over 1.
    share = std::min(share, std::max(0.0, 1.0 - sum));
    a.set_share(share);
    sum += share;
  }
  return c;
}

void AlarmEngine::Raise(const v1::Plan& plan, const Period& p, v1::AlarmCondition c,
                        const Figures& f, std::string_view trigger_event_id, absl::Time now) {
  v1::Alarm a;
  a.set_alarm_id(UuidToString(NewUuidV7At(now)));
  a.set_plan_id(plan.plan_id());
  if (PlanIsRegion(plan)) {
    a.set_region(plan.region());
  } else {
    a.set_account_id(plan.account_id());
    a.set_region(source_->RegionOf(plan.account_id()));
  }
  a.set_condition(c);
  a.set_state(v1::ALARM_STATE_ACTIVE);
  *a.mutable_period() = ToTimeRange(p);
  a.set_actual_kg(f.actual);
  a.set_projected_kg(f.projected);
  a.set_planned_min_kg(plan.min_kg());
  a.set_planned_max_kg(plan.max_kg());
  for (v1::Attribution& at : Attribute(plan, p, f.actual)) *a.add_attributions() = std::move(at);
  a.set_trigger_event_id(std::string(trigger_event_id));
  TimestampToProto(now, a.mutable_raise_time());
  Commit(v1::ALARM_CHANGE_KIND_RAISED, a);
}

void AlarmEngine::UpdateOpen(const OpenKey& key, const v1::Plan& plan, const Period& p,
                             const Figures& f) {
  auto it = open_.find(key);
  if (it == open_.end()) return;
  const v1::Alarm& cur = it->second;
  bool changed = std::abs(cur.actual_kg() - f.actual) > kFigureEpsilonKg ||
                 cur.planned_min_kg() != plan.min_kg() || cur.planned_max_kg() != plan.max_kg();
  if (!changed) return;
  v1::Alarm a = cur;
  a.set_actual_kg(f.actual);
  a.set_projected_kg(f.projected);
  a.set_planned_min_kg(plan.min_kg());
  a.set_planned_max_kg(plan.max_kg());
  a.clear_attributions();
  for (v1::Attribution& at : Attribute(plan, p, f.actual)) *a.add_attributions() = std::move(at);
  Commit(v1::ALARM_CHANGE_KIND_UPDATED, a);
}

void AlarmEngine::ClearOpen(const OpenKey& key, absl::Time now, const v1::Plan* plan,
                            const Figures* f) {
  auto it = open_.find(key);
  if (it == open_.end()) return;
  v1::Alarm a = it->second;
  if (plan != nullptr && f != nullptr) {  // cleared by figures: record the ones it cleared at
    a.set_actual_kg(f->actual);
    a.set_projected_kg(f->projected);
    a.set_planned_min_kg(plan->min_kg());
    a.set_planned_max_kg(plan->max_kg());
  }
  a.set_state(v1::ALARM_STATE_CLEARED);
  TimestampToProto(now, a.mutable_clear_time());
  Commit(v1::ALARM_CHANGE_KIND_CLEARED, a);
}

void AlarmEngine::ClearAllOf(std::string_view plan_id, absl::Time now) {
  std::vector<OpenKey> keys;
  for (const auto& [k, a] : open_) {
    if (std::get<0>(k) == plan_id) keys.push_back(k);
  }
  for (const OpenKey& k : keys) ClearOpen(k, now);
}

void AlarmEngine::EvaluatePeriod(const PlanEntry& e, const Period& p, absl::Time latest,
                                 absl::Time now, std::string_view trigger_event_id) {
  const v1::Plan& plan = e.plan;
  const Figures f = Measure(plan, p, latest, now);
  const double margin = Margin(plan);
  const bool ended = now >= p.end;
  const int64_t start_us = ToMicros(p.start);
  auto key = [&](v1::AlarmCondition c) { return OpenKey(plan.plan_id(), start_us, c); };
  auto is_open = [&](v1::AlarmCondition c) { return open_.contains(key(c)); };

  // ABOVE.
  bool projected_superseded = false;
  if (is_open(v1::ALARM_CONDITION_ABOVE)) {
    if (f.actual <= plan.max_kg() - margin) {
      ClearOpen(key(v1::ALARM_CONDITION_ABOVE), now, &plan, &f);
    } else {
      UpdateOpen(key(v1::ALARM_CONDITION_ABOVE), plan, p, f);
      projected_superseded = true;
    }
  } else if (f.actual > plan.max_kg() && !ended) {
    Raise(plan, p, v1::ALARM_CONDITION_ABOVE, f, trigger_event_id, now);
    projected_superseded = true;
  }

  // PROJECTED_ABOVE.
  if (is_open(v1::ALARM_CONDITION_PROJECTED_ABOVE)) {
    if (projected_superseded || !plan.alarm_on_projection() ||
        f.projected <= plan.max_kg() - margin) {
      ClearOpen(key(v1::ALARM_CONDITION_PROJECTED_ABOVE), now, &plan, &f);
    } else {
      UpdateOpen(key(v1::ALARM_CONDITION_PROJECTED_ABOVE), plan, p, f);
    }
  } else if (plan.alarm_on_projection() && !projected_superseded && !ended &&
             f.projected > plan.max_kg() && f.actual <= plan.max_kg()) {
    Raise(plan, p, v1::ALARM_CONDITION_PROJECTED_ABOVE, f, trigger_event_id, now);
  }

  // PROJECTED_BELOW.
  const bool below_enabled = plan.alarm_on_projection() && plan.min_kg() > 0;
  if (is_open(v1::ALARM_CONDITION_PROJECTED_BELOW)) {
    if (!below_enabled || f.projected >= plan.min_kg() + margin) {
      ClearOpen(key(v1::ALARM_CONDITION_PROJECTED_BELOW), now, &plan, &f);
    } else {
      UpdateOpen(key(v1::ALARM_CONDITION_PROJECTED_BELOW), plan, p, f);
    }
  } else if (below_enabled && !ended && f.fraction >= 0.5 && f.projected < plan.min_kg()) {
    Raise(plan, p, v1::ALARM_CONDITION_PROJECTED_BELOW, f, trigger_event_id, now);
  }

  // BELOW (raised by Tick; late data or a restatement may lift it).
  if (is_open(v1::ALARM_CONDITION_BELOW)) {
    if (f.actual >= plan.min_kg() + margin) {
      ClearOpen(key(v1::ALARM_CONDITION_BELOW), now, &plan, &f);
    } else {
      UpdateOpen(key(v1::ALARM_CONDITION_BELOW), plan, p, f);
    }
  }
}

void AlarmEngine::Evaluate(const std::vector<TouchedTotal>& touched,
                           std::string_view trigger_event_id) {
  absl::Time now = clock_->Now();
  {
    absl::MutexLock lock(&mu_);
    // Latest touched time per target. The touched list is closed under
    // ancestors (touched.h), so a plan is evaluated when its own target was
    // touched: O(touched + plans), no Covers calls on the ingest path.
    absl::flat_hash_map<std::string, absl::Time> accounts, regions;
    for (const TouchedTotal& t : touched) {
      if (t.time == absl::InfinitePast() || t.time == absl::InfiniteFuture()) continue;
      auto& index = t.account_id.empty() ? regions : accounts;
      const std::string& target = t.account_id.empty() ? t.region : t.account_id;
      if (target.empty()) continue;
      auto [it, inserted] = index.try_emplace(target, t.time);
      if (!inserted) it->second = std::max(it->second, t.time);
    }
    // (plan, period, latest touched time).
    std::vector<std::tuple<const PlanEntry*, Period, absl::Time>> work;
    for (const auto& [id, e] : plans_) {
      const auto& index = PlanIsRegion(e.plan) ? regions : accounts;
      auto it = index.find(PlanTarget(e.plan));
      if (it == index.end()) continue;
      Period p = PeriodOf(it->second - absl::Nanoseconds(1), e.plan.granularity(), tz_);
      if (p.end <= p.start || !PlanGoverns(e.plan, p)) continue;
      work.emplace_back(&e, p, it->second);
    }
    if (!work.empty()) {
      (void)Exec("BEGIN");
      for (const auto& [e, p, latest] : work) {
        EvaluatePeriod(*e, p, latest, now, trigger_event_id);
      }
      if (absl::Status s = EndTransaction(); !s.ok()) {
        LogWarn("carbon.alarms", "cannot commit alarm changes",
                {{"error", std::string(s.message())}});
      }
    }
  }
  Drain();
}

void AlarmEngine::Tick(absl::Time now) {
  {
    absl::MutexLock lock(&mu_);
    bool began = Exec("BEGIN").ok();
    // Open ABOVE / PROJECTED_* alarms of ended periods clear.
    std::vector<OpenKey> ended;
    for (const auto& [k, a] : open_) {
      if (a.condition() == v1::ALARM_CONDITION_BELOW) continue;
      if (TimeOf(a.period().end()) <= now) ended.push_back(k);
    }
    // BELOW for ended periods under min_kg, each period once.
    for (auto& [id, e] : plans_) {
      const v1::Plan& plan = e.plan;
      absl::Time from =
          std::max(e.below_checked, PeriodOf(e.create_time, plan.granularity(), tz_).start);
      from = std::max(from, ValidStart(plan));
      if (from == absl::InfinitePast()) continue;
      Period p = PeriodOf(from, plan.granularity(), tz_);
      absl::Time checked = e.below_checked;
      for (int n = 0; n < kMaxPeriodsPerTick && p.end <= now && p.start < ValidEnd(plan); ++n) {
        if (plan.min_kg() > 0 && PlanGoverns(plan, p) &&
            !open_.contains(OpenKey(id, ToMicros(p.start), v1::ALARM_CONDITION_BELOW))) {
          Figures f;
          f.actual = source_->TotalKg(PlanTarget(plan), PlanIsRegion(plan), p.start, p.end);
          f.projected = f.actual;
          f.fraction = 1;
          if (f.actual < plan.min_kg()) {
            Raise(plan, p, v1::ALARM_CONDITION_BELOW, f, "", now);
          }
        }
        checked = p.end;
        p = NextPeriod(p, plan.granularity(), tz_);
      }
      if (checked != e.below_checked) {
        PlanEntry updated = e;
        updated.below_checked = checked;
        if (absl::Status s = WritePlan(updated); !s.ok()) {
          LogWarn("carbon.alarms", "cannot persist plan check",
                  {{"plan_id", id}, {"error", std::string(s.message())}});
        } else {
          e.below_checked = checked;
        }
      }
    }
    for (const OpenKey& k : ended) ClearOpen(k, now);
    if (began) {
      if (absl::Status s = EndTransaction(); !s.ok()) {
        LogWarn("carbon.alarms", "cannot commit tick", {{"error", std::string(s.message())}});
      }
    }
  }
  Drain();
}

// ---------------------------------------------------------------- alarms

absl::StatusOr<v1::Alarm> AlarmEngine::Acknowledge(std::string_view alarm_id, const std::string& by,
                                                   const std::string& note) {
  size_t chars = CodePoints(note);
  if (chars > kMaxNoteChars) {
    return absl::InvalidArgumentError(
        absl::StrCat("note: ", chars, " characters, at most ", kMaxNoteChars));
  }
  v1::Alarm result;
  {
    absl::MutexLock lock(&mu_);
    const v1::Alarm* open = nullptr;
    for (const auto& [k, a] : open_) {
      if (a.alarm_id() == alarm_id) {
        open = &a;
        break;
      }
    }
    if (open == nullptr) {
      CITYOS_ASSIGN_OR_RETURN(std::optional<v1::Alarm> stored, ReadAlarm(alarm_id));
      if (!stored)
        return absl::NotFoundError(absl::StrCat("alarm ", std::string(alarm_id), " not found"));
      return absl::FailedPreconditionError(
          absl::StrCat("alarm ", std::string(alarm_id), " is already cleared (at ",
                       absl::FormatTime(TimeOf(stored->clear_time())), ")"));
    }
    if (open->state() == v1::ALARM_STATE_ACKNOWLEDGED) return *open;
    v1::Alarm a = *open;
    a.set_state(v1::ALARM_STATE_ACKNOWLEDGED);
    a.set_acknowledged_by(by);
    a.set_acknowledge_note(note);
    TimestampToProto(clock_->Now(), a.mutable_acknowledge_time());
    if (!Commit(v1::ALARM_CHANGE_KIND_ACKNOWLEDGED, a)) {
      return absl::InternalError(absl::StrCat("alarm ", std::string(alarm_id), ": cannot persist"));
    }
    result = std::move(a);
  }
  Drain();
  return result;
}

absl::StatusOr<v1::Alarm> AlarmEngine::GetAlarm(std::string_view id) const {
  absl::MutexLock lock(&mu_);
  CITYOS_ASSIGN_OR_RETURN(std::optional<v1::Alarm> a, ReadAlarm(id));
  if (!a) return absl::NotFoundError(absl::StrCat("alarm ", std::string(id), " not found"));
  return *std::move(a);
}

absl::StatusOr<v1::ListAlarmsResponse> AlarmEngine::ListAlarms(
    const v1::ListAlarmsRequest& r, const std::function<bool(const v1::Alarm&)>& visible) const {
  if (r.page_size() < 0 || r.page_size() > kMaxPageSize) {
    return absl::InvalidArgumentError(
        absl::StrCat("page_size: ", r.page_size(), " is outside 0..", kMaxPageSize));
  }
  const int page_size = r.page_size() == 0 ? kDefaultPageSize : r.page_size();
  int64_t from_us = std::numeric_limits<int64_t>::min();
  int64_t to_us = std::numeric_limits<int64_t>::max();
  if (r.range().has_start()) {
    CITYOS_ASSIGN_OR_RETURN(absl::Time t, TimestampFromProto(r.range().start(), "range.start"));
    from_us = ToMicros(t);
  }
  if (r.range().has_end()) {
    CITYOS_ASSIGN_OR_RETURN(absl::Time t, TimestampFromProto(r.range().end(), "range.end"));
    to_us = ToMicros(t);
  }
  if (to_us <= from_us) return absl::InvalidArgumentError("range: end is not after start");
  bool has_cursor = !r.page_token().empty();
  int64_t cursor_us = 0;
  std::string cursor_id;
  if (has_cursor) CITYOS_RETURN_IF_ERROR(DecodeToken(r.page_token(), &cursor_us, &cursor_id));

  v1::ListAlarmsResponse out;
  absl::MutexLock lock(&mu_);
  Stmt s(db_,
         "SELECT proto, raise_us, alarm_id FROM alarms "
         "WHERE (?1 = 0 OR state = ?1) AND raise_us >= ?2 AND raise_us < ?3 "
         "AND (?4 = 0 OR raise_us < ?5 OR (raise_us = ?5 AND alarm_id < ?6)) "
         "ORDER BY raise_us DESC, alarm_id DESC");
  CITYOS_RETURN_IF_ERROR(s.status());
  s.Bind(1, int64_t{r.state()})
      .Bind(2, from_us)
      .Bind(3, to_us)
      .Bind(4, int64_t{has_cursor ? 1 : 0})
      .Bind(5, cursor_us)
      .Bind(6, cursor_id);
  while (true) {
    v1::Alarm a;
    CITYOS_ASSIGN_OR_RETURN(bool row, s.NextAlarm(&a));
    if (!row) break;
    if (!r.account_id().empty() &&
        (a.account_id().empty() || !source_->Covers(r.account_id(), false, a.account_id()))) {
      continue;
    }
    if (!r.region().empty() && !source_->RegionCovers(r.region(), a.region())) continue;
    if (visible && !visible(a)) continue;
    if (out.alarms_size() == page_size) {
      const v1::Alarm& last = out.alarms(page_size - 1);
      out.set_next_page_token(EncodeToken(ToMicros(TimeOf(last.raise_time())), last.alarm_id()));
      break;
    }
    *out.add_alarms() = std::move(a);
  }
  return out;
}

std::vector<v1::Alarm> AlarmEngine::OpenAlarms() const {
  std::vector<v1::Alarm> out;
  {
    absl::MutexLock lock(&mu_);
    for (const auto& [k, a] : open_) out.push_back(a);
  }
  std::sort(out.begin(), out.end(), [](const v1::Alarm& a, const v1::Alarm& b) {
    absl::Time ta = TimeOf(a.raise_time()), tb = TimeOf(b.raise_time());
    if (ta != tb) return ta > tb;
    return a.alarm_id() > b.alarm_id();
  });
  return out;
}

// ---------------------------------------------------------------- watchers

std::vector<v1::AlarmChange> AlarmWatcher::Wait(absl::Time deadline, size_t max) {
  absl::MutexLock lock(&mu_);
  auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return !queue_.empty() || closed_; };
  mu_.AwaitWithDeadline(absl::Condition(&ready), deadline);
  std::vector<v1::AlarmChange> out;
  while (!queue_.empty() && out.size() < max) {
    out.push_back(std::move(queue_.front()));
    queue_.pop_front();
  }
  return out;
}

bool AlarmWatcher::closed() const {
  absl::MutexLock lock(&mu_);
  return closed_;
}

bool AlarmWatcher::overflowed() const {
  absl::MutexLock lock(&mu_);
  return overflowed_;
}

void AlarmWatcher::Push(v1::AlarmChange change) {
  absl::MutexLock lock(&mu_);
  if (closed_) return;
  if (queue_.size() >= capacity_) {
    overflowed_ = true;
    closed_ = true;
    return;
  }
  queue_.push_back(std::move(change));
}

void AlarmWatcher::Close() {
  absl::MutexLock lock(&mu_);
  closed_ = true;
}

std::shared_ptr<AlarmWatcher> AlarmWatchers::Register(AlarmWatchFilter filter) {
  auto w = std::make_shared<AlarmWatcher>(std::move(filter), capacity_);
  absl::MutexLock lock(&mu_);
  if (closed_) {
    w->Close();
  } else {
    watchers_.push_back(w);
  }
  return w;
}

void AlarmWatchers::Unregister(const std::shared_ptr<AlarmWatcher>& watcher) {
  absl::MutexLock lock(&mu_);
  watchers_.erase(std::remove(watchers_.begin(), watchers_.end(), watcher), watchers_.end());
}

bool AlarmWatchers::Matches(const AlarmWatchFilter& filter, const v1::Alarm& alarm) const {
  if (!filter.account_id.empty() &&
      (alarm.account_id().empty() ||
       !source_->Covers(filter.account_id, false, alarm.account_id()))) {
    return false;
  }
  if (!filter.region.empty() && !source_->RegionCovers(filter.region, alarm.region())) {
    return false;
  }
  return true;
}

void AlarmWatchers::Publish(v1::AlarmChangeKind kind, const v1::Alarm& alarm) {
  std::vector<std::shared_ptr<AlarmWatcher>> targets;
  {
    absl::MutexLock lock(&mu_);
    targets = watchers_;
  }
  for (const auto& w : targets) {
    if (!Matches(w->filter(), alarm)) continue;
    if (w->filter().visible && !w->filter().visible(alarm)) continue;
    v1::AlarmChange c;
    c.set_kind(kind);
    *c.mutable_alarm() = alarm;
    w->Push(std::move(c));
  }
}

void AlarmWatchers::CloseAll() {
  std::vector<std::shared_ptr<AlarmWatcher>> all;
  {
    absl::MutexLock lock(&mu_);
    closed_ = true;
    all.swap(watchers_);
  }
  for (const auto& w : all) w->Close();
}

size_t AlarmWatchers::size() const {
  absl::MutexLock lock(&mu_);
  return watchers_.size();
}

}  // namespace cityos::carbon
