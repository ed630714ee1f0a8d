// File: services/carbon/plans.h
//
// Plans (budgets: a planned range of emissions per day / month / year for an
// account or a region) and the alarm engine that watches them, persisted in
// one SQLite file (<data dir>/alarms.db), plus AlarmWatchers, the hub that
// WatchAlarms streams read from.
//
//   auto engine = AlarmEngine::Open(dir + "/alarms.db", &source, tz, clock,
//       [&](v1::AlarmChangeKind k, const v1::Alarm& a) {
//         PublishOnBus(k, a);
//         watchers.Publish(k, a);
//       });
//   (*engine)->SetPlan(plan, caller_spiffe_id);
//   (*engine)->Evaluate(ledger_batch.touched, event_id);   // after each ingest batch
//   (*engine)->Tick(clock->Now());                          // periodically
//
// Semantics (carbon.proto / carbon_events.proto are the contract):
//  - Figures are scope 1 + scope 2 location-based kg CO2 of the plan's target
//    over the plan period, as EmissionsSource::TotalKg reports them.
//  - Evaluate(touched) evaluates each plan whose target (account id or region
//    code) appears in the touched list, which is closed under ancestors.
//  - Periods: PeriodOf(touched.time - 1ns, plan.granularity, tz) (an interval
//    ending on a period boundary belongs to the period before it). A plan
//    governs the periods that overlap its `valid` range.
//  - Projection: projected = actual / fraction, fraction = elapsed / period
//    length, elapsed = min(max(latest touched time, clock now), period end) -
//    period start, but at least max(1 hour, period length / 24) so that the
//    first readings of a period do not project wildly.
//  - Conditions, per (plan, period):
//      ABOVE            raised when actual > max_kg; clears when actual <=
//                       max_kg - hysteresis * (max_kg - min_kg) (for a total
//                       that only grows: after a restatement or a plan change).
//      PROJECTED_ABOVE  (alarm_on_projection) raised when projected > max_kg
//                       while actual <= max_kg and no ABOVE is open; clears when
//                       projected <= max_kg - margin. When ABOVE is raised, an
//                       open PROJECTED_ABOVE of the same period is superseded:
//                       RAISED(ABOVE) is published, then CLEARED(PROJECTED_ABOVE).
//      PROJECTED_BELOW  (alarm_on_projection, min_kg > 0) raised when at least
//                       half the period has elapsed and projected < min_kg;
//                       clears when projected >= min_kg + margin.
//      BELOW            raised by Tick for an ended period whose final actual <
//                       min_kg (min_kg > 0). Checked are the periods ending after
//                       the plan was created (the creation period included, data
//                       or not: no data is 0 kg), each once (the plan remembers
//                       how far it checked, across restarts). A BELOW alarm is
//                       not cleared by time (its period has ended and stays
//                       below): it clears when late data or a restatement brings
//                       the actual to >= min_kg + margin, or the plan is deleted.
//    margin = hysteresis * (max_kg - min_kg). At most one open alarm per
//    (plan, period, condition): a figure wobbling around a bound raises once
//    and only raises again after the alarm cleared.
//  - An open alarm is UPDATED (published) when its actual figure changed (by
//    more than 1e-6 kg) or the plan's range changed; its trigger_event_id stays
//    the one of the raising event.
//  - Evaluate never raises for a period that has already ended (clock now >=
//    period end: late data for a closed period); it updates and clears that
//    period's open alarms. Tick(now) clears open ABOVE / PROJECTED_* alarms of
//    ended periods (clear_time = now) and raises BELOW.
//  - Plan replacement: the new range applies from the next evaluation; when the
//    target or the granularity changes, the plan's open alarms clear at once.
//    Turning alarm_on_projection off clears projected alarms at the next
//    evaluation. DeletePlan clears the plan's open alarms.
//  - Attribution: EmissionsSource::Contributors of the target in the period, at
//    most 10, largest first, share = contributor kg / actual (clamped to
//    [0, 1]; 0 when actual is 0), so the shares sum to at most 1.
//  - Publish is called for every change (RAISED, UPDATED, ACKNOWLEDGED,
//    CLEARED) after it is persisted, outside the engine's lock, in the order
//    the changes were made (one thread at a time drains a FIFO queue; a publish
//    callback may call back into the engine).
//
// Persistence: alarms.db (WAL) holds plans (proto, creation time, how far BELOW
// was checked) and every alarm ever raised (proto, state, raise time). Open
// alarms and plans are also kept in memory; reopening restores them, so an
// alarm open before a restart is updated, not raised again.
#ifndef CITYOS_SERVICES_CARBON_PLANS_H_
#define CITYOS_SERVICES_CARBON_PLANS_H_

#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "cityos/carbon/v1/carbon.pb.h"
#include "cityos/carbon/v1/carbon_events.pb.h"
#include "cityos/clock.h"
#include "periods.h"
#include "touched.h"

struct sqlite3;

namespace cityos::carbon {

// What the engine asks about emissions (implemented by the service over
// CarbonLedger; tests use an in-memory fake). Must be thread-safe; called
// while the engine holds its lock, so it must never call back into the engine.
// Covers / RegionCovers serve the ListAlarms and watcher filters only
// (evaluation matches plan targets against the touched list exactly).
class EmissionsSource {
 public:
  virtual ~EmissionsSource() = default;
  // Scope 1 + scope 2 location-based kg CO2 of an account (with descendants)
  // or a region (with sub-regions) in [from, to).
  virtual double TotalKg(std::string_view account_or_region, bool is_region, absl::Time from,
                         absl::Time to) const = 0;
  // Largest contributing direct children of the target in [from, to), largest
  // first (the engine keeps at most 10 and recomputes the shares).
  virtual std::vector<v1::Attribution> Contributors(std::string_view target, bool is_region,
                                                    absl::Time from, absl::Time to) const = 0;
  // Region code of an account; empty if unknown.
  virtual std::string RegionOf(std::string_view account_id) const = 0;
  // Whether `account_id` is (is_region false) the account `ancestor` or one of
  // its descendants, or (is_region true) an account in region `ancestor` or one
  // of its sub-regions.
  virtual bool Covers(std::string_view ancestor_account_or_region, bool is_region,
                      std::string_view account_id) const = 0;
  // Whether region `region` is `ancestor_region` or one of its sub-regions.
  // Default: by code (equal, or `ancestor_region` + "-" is a prefix, per the
  // CN-ZJ-QZ-KC convention); the service may answer from its RegionTree.
  virtual bool RegionCovers(std::string_view ancestor_region, std::string_view region) const;
};

// Plans and alarms. Thread-safe: one mutex guards the state and the database
// connection; Publish runs outside it (see the file comment).
class AlarmEngine {
 public:
  // Called for every change, in order. Not called under the engine's lock.
  using Publish = std::function<void(v1::AlarmChangeKind, const v1::Alarm&)>;

  // Opens (creating if needed) alarms.db at `db_path` and restores plans and
  // open alarms. `source` and `clock` must outlive the engine. `publish` may be
  // empty. FAILED_PRECONDITION naming the path when the file cannot be opened.
  static absl::StatusOr<std::unique_ptr<AlarmEngine>> Open(const std::string& db_path,
                                                           const EmissionsSource* source,
                                                           absl::TimeZone tz, Clock* clock,
                                                           Publish publish);
  ~AlarmEngine();
  AlarmEngine(const AlarmEngine&) = delete;
  AlarmEngine& operator=(const AlarmEngine&) = delete;

  // Creates (empty plan_id) or replaces a plan. Validation: exactly one
  // non-empty target; granularity DAY, MONTH or YEAR; finite 0 <= min_kg <
  // max_kg; hysteresis in [0, 1] (0 means the default 0.05); `valid` with
  // end > start when both ends are set (an unset end is open). INVALID_ARGUMENT
  // names the field and value. Replacement: NOT_FOUND for an unknown plan_id,
  // FAILED_PRECONDITION naming the current version when `version` is neither
  // 0 nor the current one. Sets version (+1), updated_by, update_time. Whether
  // the account or region exists is the caller's check.
  absl::StatusOr<v1::Plan> SetPlan(v1::Plan plan, const std::string& updated_by);
  // NOT_FOUND naming the id.
  absl::StatusOr<v1::Plan> GetPlan(std::string_view id) const;
  // Plans whose target equals `account_id` / `region` of the request (both
  // empty: all), valid at `valid_at` when set; by plan_id (creation order).
  std::vector<v1::Plan> ListPlans(const v1::ListPlansRequest& r) const;
  // Deletes a plan; its open alarms clear (published CLEARED). NOT_FOUND.
  absl::Status DeletePlan(std::string_view id);

  // Re-evaluates the plans whose target is a touched account / region (the
  // list is closed under ancestors, see touched.h) for the plan periods
  // containing the touched times (see the file comment).
  // `trigger_event_id` is recorded on alarms it raises.
  void Evaluate(const std::vector<TouchedTotal>& touched, std::string_view trigger_event_id);
  // Period ends: clears open ABOVE / PROJECTED_* alarms of periods ended by
  // `now`; raises BELOW for ended periods under min_kg.
  void Tick(absl::Time now);

  // ACTIVE -> ACKNOWLEDGED with `by`, `note` and the time; publishes
  // ACKNOWLEDGED. Idempotent: an ACKNOWLEDGED alarm is returned unchanged (no
  // publish). INVALID_ARGUMENT for a note over 1024 characters (code points),
  // NOT_FOUND, FAILED_PRECONDITION for a CLEARED alarm.
  absl::StatusOr<v1::Alarm> Acknowledge(std::string_view alarm_id, const std::string& by,
                                        const std::string& note);
  // Any alarm, open or cleared. NOT_FOUND.
  absl::StatusOr<v1::Alarm> GetAlarm(std::string_view id) const;
  // Alarms matching the filter (account with descendants and region with
  // sub-regions via the source; state; raise time in `range`) for which
  // `visible` (may be empty = all) is true, newest first (raise time, then id).
  // page_size 0 means 100, at most 1000. INVALID_ARGUMENT for a bad page_size,
  // page_token or range.
  absl::StatusOr<v1::ListAlarmsResponse> ListAlarms(
      const v1::ListAlarmsRequest& r, const std::function<bool(const v1::Alarm&)>& visible) const;
  // The open (ACTIVE or ACKNOWLEDGED) alarms, newest first.
  std::vector<v1::Alarm> OpenAlarms() const;

 private:
  struct PlanEntry {
    v1::Plan plan;
    absl::Time create_time;
    absl::Time below_checked;  // periods ending at or before this were checked for BELOW
  };
  // (plan_id, period start in unix micros, condition).
  using OpenKey = std::tuple<std::string, int64_t, int>;
  struct Change {
    v1::AlarmChangeKind kind;
    v1::Alarm alarm;
  };
  // What one evaluation of a (plan, period) is about.
  struct Figures {
    double actual = 0;
    double projected = 0;
    double fraction = 0;
  };

  AlarmEngine(sqlite3* db, const EmissionsSource* source, absl::TimeZone tz, Clock* clock,
              Publish publish);
  absl::Status Exec(const char* sql) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // COMMIT; on failure ROLLBACK and the COMMIT error.
  absl::Status EndTransaction() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status Load() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status WritePlan(const PlanEntry& e) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status WriteAlarm(const v1::Alarm& a) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::StatusOr<std::optional<v1::Alarm>> ReadAlarm(std::string_view id) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  Figures Measure(const v1::Plan& plan, const Period& p, absl::Time latest, absl::Time now) const;
  std::vector<v1::Attribution> Attribute(const v1::Plan& plan, const Period& p,
                                         double actual) const;
  // Evaluates one (plan, period); appends changes to the queue.
  void EvaluatePeriod(const PlanEntry& e, const Period& p, absl::Time latest, absl::Time now,
                      std::string_view trigger_event_id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Raise(const v1::Plan& plan, const Period& p, v1::AlarmCondition c, const Figures& f,
             std::string_view trigger_event_id, absl::Time now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void UpdateOpen(const OpenKey& key, const v1::Plan& plan, const Period& p, const Figures& f)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Clears an open alarm; with `plan` and `f`, records the figures it cleared at.
  void ClearOpen(const OpenKey& key, absl::Time now, const v1::Plan* plan = nullptr,
                 const Figures* f = nullptr) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void ClearAllOf(std::string_view plan_id, absl::Time now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Persists `a`, records it in the open index and queues the change.
  bool Commit(v1::AlarmChangeKind kind, const v1::Alarm& a) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Calls publish_ for queued changes, outside mu_, one drainer at a time.
  void Drain() ABSL_LOCKS_EXCLUDED(mu_);

  const EmissionsSource* const source_;
  const absl::TimeZone tz_;
  Clock* const clock_;
  const Publish publish_;

  mutable absl::Mutex mu_;
  sqlite3* db_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, PlanEntry> plans_ ABSL_GUARDED_BY(mu_);
  std::map<OpenKey, v1::Alarm> open_ ABSL_GUARDED_BY(mu_);
  std::deque<Change> queue_ ABSL_GUARDED_BY(mu_);
  bool draining_ ABSL_GUARDED_BY(mu_) = false;
};

// Which alarms a watcher wants: account (with descendants) and/or region (with
// sub-regions); both empty means all.
struct AlarmWatchFilter {
  std::string account_id;
  std::string region;
  // The caller may read the alarm (empty = all).
  std::function<bool(const v1::Alarm&)> visible;
};

// One watcher's bounded queue of changes. Thread-safe.
class AlarmWatcher {
 public:
  explicit AlarmWatcher(AlarmWatchFilter filter, size_t capacity)
      : filter_(std::move(filter)), capacity_(capacity) {}
  // Waits until changes are queued, the watcher is closed, or `deadline`;
  // returns up to `max` queued changes, oldest first (empty on timeout or
  // once closed and drained).
  std::vector<v1::AlarmChange> Wait(absl::Time deadline, size_t max = 256);
  // Closed by AlarmWatchers::CloseAll (node shutdown) or by an overflow.
  bool closed() const;
  // The queue overflowed (the consumer was too slow); the watcher is closed
  // and changes after the overflow were dropped: the stream should end
  // (e.g. RESOURCE_EXHAUSTED) so the client re-watches with include_open.
  bool overflowed() const;
  const AlarmWatchFilter& filter() const { return filter_; }

 private:
  friend class AlarmWatchers;
  void Push(v1::AlarmChange change);
  void Close();

  const AlarmWatchFilter filter_;
  const size_t capacity_;
  mutable absl::Mutex mu_;
  std::deque<v1::AlarmChange> queue_ ABSL_GUARDED_BY(mu_);
  bool closed_ ABSL_GUARDED_BY(mu_) = false;
  bool overflowed_ ABSL_GUARDED_BY(mu_) = false;
};

// The hub the service's WatchAlarms streams register with; the engine's
// Publish callback feeds it. Thread-safe.
class AlarmWatchers {
 public:
  // `source` (for the account / region filters) must outlive the hub.
  explicit AlarmWatchers(const EmissionsSource* source, size_t queue_capacity = 4096)
      : source_(source), capacity_(queue_capacity) {}
  // A new watcher receiving the changes published from now on that match
  // `filter`. After CloseAll, the watcher is returned closed.
  std::shared_ptr<AlarmWatcher> Register(AlarmWatchFilter filter);
  void Unregister(const std::shared_ptr<AlarmWatcher>& watcher);
  // Whether `alarm` matches `filter` (without `visible`).
  bool Matches(const AlarmWatchFilter& filter, const v1::Alarm& alarm) const;
  // Queues the change on every matching watcher.
  void Publish(v1::AlarmChangeKind kind, const v1::Alarm& alarm);
  // Closes every watcher (and later registrations): node shutdown.
  void CloseAll();
  size_t size() const;

 private:
  const EmissionsSource* const source_;
  const size_t capacity_;
  mutable absl::Mutex mu_;
  std::vector<std::shared_ptr<AlarmWatcher>> watchers_ ABSL_GUARDED_BY(mu_);
  bool closed_ ABSL_GUARDED_BY(mu_) = false;
};

// The alarm's period start (for tests and callers).
absl::Time AlarmPeriodStart(const v1::Alarm& alarm);

}  // namespace cityos::carbon

#endif  // CITYOS_SERVICES_CARBON_PLANS_H_
