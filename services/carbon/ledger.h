// File: services/carbon/ledger.h
//
// The carbon ledger: enterprise accounts (enterprise > site > line > meter)
// and individual accounts, meter readings and process activities turned into
// emission records, quarantine, live aggregates (per account, region and
// industry), rankings and restatements. Accounting happens in memory; a
// background writer persists everything to SQLite (`<dir>/ledger.db`, WAL) in
// batched transactions, and Open() rebuilds the in-memory state from it.
//
//   CITYOS_ASSIGN_OR_RETURN(auto ledger,
//       CarbonLedger::Open(dir, &regions, factors.get(), clock, {tz}));
//   CITYOS_ASSIGN_OR_RETURN(v1::Account e, ledger->CreateAccount(enterprise));
//   BatchResult r = ledger->AccountReadings(readings);  // records, quarantine
//   CITYOS_ASSIGN_OR_RETURN(auto days,
//       ledger->Emissions("quzhou-steel", v1::GRANULARITY_DAY, from, to,
//                         /*as_reported=*/false));
//
// Semantics (carbon_events.proto is the contract):
//  - Factors: the one valid at the reading's interval start for the meter's
//    region (FactorRegistry::Select with RegionTree::FactorRegions). Scope 2
//    location-based uses GRID (electricity) / FUEL `steam` / `heat`;
//    market-based the meter's tariff SUPPLIER factor if one is valid, else the
//    location-based figure. Fuels are scope 1, process entries scope 1.
//  - Dedup: (meter, interval_start, interval_end); CUMULATIVE readings by
//    (meter, register time). An identical repeat is counted in `duplicates`;
//    a different value for an accounted key is DUPLICATE_CONFLICT.
//  - CUMULATIVE: consumption = value - the meter's latest register value,
//    over [latest register time, register time). The first cumulative reading
//    of a meter is its baseline (no record; counted in `baselines`). A
//    cumulative reading before the meter's latest register (out of order) is
//    quarantined as BAD_INTERVAL (documented choice: no retroactive split of
//    the successor's delta). A decrease is METER_RESET; the reset reading
//    becomes the meter's new baseline so later readings count from it.
//  - DELTA is accounted like INTERVAL: value over
//    [interval_start, interval_end).
//  - A record counts in the hour bucket containing its interval_start
//    (readings spanning an hour boundary are not split). Quarantined readings
//    count in the hour of their interval_end (receive time if unusable).
//    Hour buckets are UTC hours, so day/month sums are exact for city time
//    zones with whole-hour offsets (Asia/Shanghai).
//
// Memory (what bounds the in-memory state):
//  - Aggregates: per target (each account with a record below it, each region
//    of a record's region chain) one Bucket of 120 bytes (+ ~8 bytes hash
//    overhead) per UTC hour with data. Hour buckets older than `hourly_days`
//    (default 14) behind the newest hour accounted are folded into local-day
//    buckets, days older than `daily_days` (default 400) into local-month
//    buckets. Meter accounts, the bulk of the targets, keep hours for
//    `meter_hourly_days` (2) and days for `meter_daily_days` (62). E.g. 10k
//    meters + 2k sites/lines/enterprises + 20 regions: meters ~6 KB hourly +
//    ~8 KB daily + 1.5 KB per year of months each (~160 MB), the other 2k
//    targets ~43 KB hourly + ~51 KB daily each (~190 MB). Queries finer than
//    the tier that holds a period (HOUR in the day tier, HOUR/DAY in the month
//    tier) are FAILED_PRECONDITION. Restatements keep a second, sparse set of
//    buckets (current minus as reported).
//  - Dedup: per meter a hash map of the accounted (start, end) keys with
//    their values, ~28 bytes per entry with the hash table's slack, for
//    readings whose interval ends within `dedup_window` (default 48 h) of the
//    meter's newest one; a meter's map is swept when it doubles, so it holds
//    1-2x the window: 10k meters with 15-min readings -> 1.9-3.8M entries,
//    55-110 MB. An older reading is checked against the database (cold path).
//    Per meter its cumulative register (time, value).
//  - Industry figures are summed from enterprise (or site) aggregates on
//    query; no per-industry state.
//  - Process dedup keys, value added and grades: all in memory (small).
//
// Persistence (`ledger.db`, WAL, `synchronous=NORMAL` unless full_sync):
// tables accounts (idx, account_id, blob), records (one row per emission
// record, compact columns, WITHOUT ROWID clustered by (enterprise,
// interval_start, id)), factor_refs (interned FactorRefs), quarantine,
// meter_state (cumulative registers), value_added, grades. A record's hour
// bucket and its targets are derived on reopen from the account tree, so Open()
// replays the records table (~1 s per million records here, carbon_bench
// BM_OpenReplay). Memory is also bounded on replay (periodic folds). The ingest
// path only appends rows to an in-memory queue; the writer thread commits them
// in transactions of about `writer_batch` rows, records sorted by primary key
// and inserted 64 rows per statement (prepared once per connection); the WAL
// is checkpointed every 10,000 pages (~40 MB) rather than SQLite's 1,000. When more than
// `max_queued_rows` rows wait, ingest blocks (backpressure, holding the ledger
// lock): the sustained rate is then the writer's. A reading older than the
// dedup window that is not in memory costs a Flush and one indexed query
// (out-of-order data more than 48 h late).
//
// Hot path per reading: one hash lookup of the meter id (done for the whole
// batch first, with prefetches of the per-meter state), the precomputed
// MeterCtx (unit, limits, account chain and region chain inline, factor
// caches), a dedup probe, the cached factor segment (re-selected only when the
// registry generation changes or the time leaves the segment), one hour bucket
// update per target, and one compact row appended for the writer. No SQLite
// and no string allocation beyond copying the event id (none when it is <= 15
// chars), unless `return_records` asks for the record protos.
//
// Thread-safety: thread-safe. One reader/writer lock guards the in-memory
// state (queries share it, ingest and account changes hold it exclusively);
// the database connection has its own lock, shared with the writer thread.
// AccountReadings / AccountProcess are meant to be called from one ingest
// thread (calls from several threads are serialised).
//
// K for rankings (RANKING_METRIC_K) comes from grades given to SetGrade():
// the grade of the enterprise whose period equals the ranking period.
#ifndef CITYOS_SERVICES_CARBON_LEDGER_H_
#define CITYOS_SERVICES_CARBON_LEDGER_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "cityos/carbon/v1/carbon.pb.h"
#include "cityos/carbon/v1/carbon_events.pb.h"
#include "cityos/clock.h"
#include "factors.h"
#include "periods.h"
#include "regions.h"
#include "touched.h"

namespace cityos::carbon {

struct LedgerOptions {
  // City time zone of periods (days, months, years). Default: UTC (callers
  // pass the configured one, e.g. Asia/Shanghai).
  absl::TimeZone tz;
  // Readings whose interval ends later than now + this are FUTURE_TIMESTAMP.
  absl::Duration future_tolerance = absl::Minutes(5);
  // SQLite `synchronous=FULL` instead of NORMAL (WAL).
  bool full_sync = false;
  // Most rows per writer transaction (larger transactions write each
  // enterprise's newest B-tree pages fewer times per row).
  size_t writer_batch = 16384;
  // In-memory dedup window behind a meter's newest interval end.
  absl::Duration dedup_window = absl::Hours(48);
  // Hour buckets kept behind the newest hour accounted (then folded to days).
  int hourly_days = 14;
  // Day buckets kept behind the newest hour accounted (then folded to months).
  int daily_days = 400;
  // The same for meter accounts (most targets, so the largest share of
  // memory): hour buckets for 2 days, day buckets for 62 days.
  int meter_hourly_days = 2;
  int meter_daily_days = 62;
  // Most rows waiting for the writer before AccountReadings blocks
  // (backpressure; ~140 bytes per row).
  size_t max_queued_rows = size_t{1} << 20;
  // Whether BatchResult::records carries the new records (the service
  // publishes them). false skips building the protos (benchmarks, replays).
  bool return_records = true;
};

struct ReadingInput {
  v1::MeterReading reading;
  // Id of the event that carried it (recorded as source_event_id).
  std::string event_id;
};

struct ProcessInput {
  v1::ProcessActivity activity;
  std::string event_id;
};

// A process activity that could not be accounted (unknown account, bad
// interval, negative quantity, no factor, conflicting duplicate).
struct ProcessRejection {
  v1::ProcessActivity activity;
  std::string event_id;
  v1::QuarantineReason reason = v1::QUARANTINE_REASON_UNSPECIFIED;
  std::string detail;
};

struct BatchResult {
  // Readings (or process entries) turned into emission records.
  uint64_t accounted = 0;
  // Identical repeats, ignored.
  uint64_t duplicates = 0;
  // Quarantined (readings) or rejected (process entries).
  uint64_t quarantined = 0;
  // First cumulative reading of a meter: recorded as its register, no record.
  uint64_t baselines = 0;
  // New records, as reported (empty when LedgerOptions::return_records is
  // false).
  std::vector<v1::EmissionRecord> records;
  std::vector<v1::QuarantinedReading> quarantine;
  std::vector<ProcessRejection> process_rejected;
  // Every enterprise, site and line account (the record's account's
  // ancestors; meters are left out: plans do not target them) and region (the
  // record's region and its ancestors) whose total changed, once each, with
  // the latest interval end accounted for it.
  std::vector<TouchedTotal> touched;
};

class CarbonLedger {
 public:
  // Opens (creating if needed) `<dir>/ledger.db` and rebuilds the in-memory
  // state. `regions`, `factors` and `clock` are not owned and must outlive the
  // ledger. INTERNAL naming the file for database errors.
  static absl::StatusOr<std::unique_ptr<CarbonLedger>> Open(
      const std::string& dir, const RegionTree* regions,
      FactorRegistry* factors, Clock* clock, LedgerOptions options);
  ~CarbonLedger();  // flushes and stops the writer
  CarbonLedger(const CarbonLedger&) = delete;
  CarbonLedger& operator=(const CarbonLedger&) = delete;

  // ---- Accounts (validation per carbon.proto CreateAccount; the caller's
  // rights are NOT checked here). Persisted before returning.
  // INVALID_ARGUMENT: id not 1-128 chars of [A-Za-z0-9._/-]; kind unset;
  // parent missing / present for the kind; parent of the wrong kind
  // (site<-enterprise, line<-site, meter<-line|site|enterprise); a meter
  // without MeterSpec, with an unset energy kind or a unit the kind does not
  // accept, or negative max_per_hour; an enterprise without region; an
  // unknown region; an individual without data_subject.
  // ALREADY_EXISTS (id, or an individual for the same data subject);
  // NOT_FOUND (parent). industry_code, region and org are inherited from the
  // parent unless set; create_time is set here.
  absl::StatusOr<v1::Account> CreateAccount(v1::Account account);
  absl::StatusOr<v1::Account> GetAccount(std::string_view id) const;
  // Direct children; 0 for an unknown id.
  uint32_t ChildCount(std::string_view id) const;
  // Accounts matching the request's filters and `visible` (null = all), by
  // id. INVALID_ARGUMENT for a bad page size or token.
  absl::StatusOr<v1::ListAccountsResponse> ListAccounts(
      const v1::ListAccountsRequest& req,
      const std::function<bool(const v1::Account&)>& visible) const;
  std::optional<v1::Account> FindIndividual(
      std::string_view data_subject) const;
  // The enterprise above an account: itself for enterprises; "" for
  // individuals and unknown ids.
  std::string EnterpriseOf(std::string_view account_id) const;
  // Effective region of an account ("" if unknown / none).
  std::string RegionOf(std::string_view account_id) const;
  // Whether `account_id` is `ancestor` or lies below it.
  bool AccountCovers(std::string_view ancestor,
                     std::string_view account_id) const;

  // ---- Ingest.
  BatchResult AccountReadings(absl::Span<const ReadingInput> readings);
  BatchResult AccountProcess(absl::Span<const ProcessInput> entries);

  // ---- Figures: one EmissionTotal per period of `g` overlapping [from, to),
  // oldest first. INVALID_ARGUMENT (no granularity, to <= from, > 10,000
  // periods, unknown region), NOT_FOUND (account), FAILED_PRECONDITION (a
  // period finer than the aggregate tier holding it).
  absl::StatusOr<std::vector<v1::EmissionTotal>> Emissions(
      std::string_view account_id, v1::Granularity g, absl::Time from,
      absl::Time to, bool as_reported) const;
  absl::StatusOr<std::vector<v1::EmissionTotal>> RegionEmissions(
      std::string_view region, v1::Granularity g, absl::Time from,
      absl::Time to, bool as_reported) const;
  // Per industry group (enterprise industry codes starting with the prefix,
  // grouped by `group_digits` characters, 0 = the prefix length); with a
  // region, only the sites (and meters directly under enterprises) in it.
  absl::StatusOr<v1::GetIndustryEmissionsResponse> IndustryEmissions(
      const v1::GetIndustryEmissionsRequest& r, absl::Time from,
      absl::Time to) const;
  // Ranking per carbon.proto GetRanking. The period is required (both ends).
  // INTENSITY needs SetValueAdded for the same period (entities without it
  // are not ranked), K a grade from SetGrade with the same period.
  absl::StatusOr<v1::GetRankingResponse> Ranking(
      const v1::GetRankingRequest& r) const;
  // Records of the account and its descendants whose interval starts in the
  // range, oldest interval first. Waits for the writer (reads the database).
  absl::StatusOr<v1::ListEmissionRecordsResponse> ListRecords(
      const v1::ListEmissionRecordsRequest& r) const;
  // Quarantined readings of the account's meters (empty account: all,
  // including unknown meters), newest first.
  absl::StatusOr<v1::ListQuarantinedReadingsResponse> ListQuarantine(
      const v1::ListQuarantinedReadingsRequest& r) const;
  // Largest direct contributors in [from, to) (current figures, total =
  // scope 1 + scope 2 location): the children accounts of an account; the
  // sub-regions of a region, or for a region without sub-regions the
  // enterprises with sites in it. Largest first, at most `limit`, zero
  // contributors left out.
  std::vector<v1::Attribution> Contributors(
      std::string_view account_id_or_region, bool is_region, absl::Time from,
      absl::Time to, size_t limit = 10) const;
  // Total (scope 1 + scope 2 location, current) of an account or region over
  // [from, to), summed from whole buckets (hours; day/month buckets count
  // when their start lies in the range). 0 for unknown targets.
  double TotalKg(std::string_view account_or_region, bool is_region,
                 absl::Time from, absl::Time to) const;

  // ---- Value added and grades (for INTENSITY and K rankings).
  // INVALID_ARGUMENT (not an enterprise, bad period, value <= 0), NOT_FOUND.
  // A later one for the same period replaces it. Persisted.
  absl::Status SetValueAdded(const v1::ValueAdded& v);
  std::optional<double> ValueAdded(std::string_view enterprise_id,
                                   Period p) const;
  // Stores a grade (latest per enterprise and period wins). Persisted.
  absl::Status SetGrade(const v1::Grade& g);
  std::optional<v1::Grade> GradeFor(std::string_view enterprise_id,
                                    Period p) const;

  // ---- Restatement: recompute every as-reported record of the scope
  // (accounts with descendants, or every record whose region is covered by
  // `region`) whose interval starts in [from, to) with factors re-selected
  // from the registry (or among `factor_ids`, falling back to Select). The
  // new records carry `restatement_id` and become the current figures; as
  // reported stay readable. Atomic: on any error nothing changes.
  // INVALID_ARGUMENT (no id, to <= from, both or neither of accounts and
  // region), NOT_FOUND (account, region, factor id), FAILED_PRECONDITION (no
  // factor for a record: names record, key, region, time).
  struct RestateResult {
    uint64_t records = 0;
    // Sum over the records of (restated - as reported) emissions_kg.
    double delta_kg = 0;
    // Enterprises with restated records, sorted.
    std::vector<std::string> enterprises;
  };
  absl::StatusOr<RestateResult> Restate(
      const std::string& restatement_id,
      const std::vector<std::string>& account_ids, const std::string& region,
      absl::Time from, absl::Time to,
      const std::vector<std::string>& factor_ids);

  // Blocks until everything accounted so far is persisted; the writer's
  // first error otherwise.
  absl::Status Flush();

  class Impl;

 private:
  explicit CarbonLedger(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace cityos::carbon

#endif  // CITYOS_SERVICES_CARBON_LEDGER_H_
