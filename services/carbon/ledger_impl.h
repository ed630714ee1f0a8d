// Internal to the carbon ledger (not installed, not included by other parts):
// the in-memory structures behind CarbonLedger (account tree, per-meter
// context, factor caches, aggregate tiers, dedup state) and the SQLite store
// with its background writer. See ledger.h for the semantics and the memory
// bounds.
#ifndef CITYOS_SERVICES_CARBON_LEDGER_IMPL_H_
#define CITYOS_SERVICES_CARBON_LEDGER_IMPL_H_

#include <sqlite3.h>

#include <array>
#include <cstdint>
#include <deque>
#include <limits>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/container/inlined_vector.h"
#include "absl/hash/hash.h"
#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "ledger.h"

namespace cityos::carbon {

// Energy slots of a bucket: EnergyKind - 1 (canonical units), plus steam in t.
inline constexpr int kEnergySlots = 10;
inline constexpr int kSteamTonnesSlot = 9;
inline constexpr int64_t kNanosPerHour = int64_t{3600} * 1'000'000'000;

// Figures of one target in one hour (day, month). 120 bytes.
struct Bucket {
  double scope1 = 0;  // fuel + process
  double process = 0;
  double s2loc = 0;
  double s2mkt = 0;
  double energy[kEnergySlots] = {};
  uint32_t readings = 0;
  uint32_t quarantined = 0;

  void Add(const Bucket& o) {
    scope1 += o.scope1;
    process += o.process;
    s2loc += o.s2loc;
    s2mkt += o.s2mkt;
    for (int i = 0; i < kEnergySlots; ++i) energy[i] += o.energy[i];
    readings += o.readings;
    quarantined += o.quarantined;
  }
  double total() const { return scope1 + s2loc; }
};

// Hour buckets (key: UTC hour since the epoch), day buckets (key: local
// days since 1970-01-01), month buckets (key: year * 12 + month - 1).
struct Tiers {
  absl::flat_hash_map<int64_t, Bucket> hour, day, month;
  // Retention class: 1 for meter accounts (LedgerOptions::meter_*_days), else
  // 0.
  int cls = 0;
  // Hot-path cache of the last hour bucket (valid while `hour` did not rehash).
  int64_t cached_hour = std::numeric_limits<int64_t>::min();
  Bucket* cached = nullptr;
  size_t cached_capacity = 0;
};

// Aggregates of one account or region.
struct Target {
  Tiers reported;
  std::unique_ptr<Tiers>
      delta;  // current - as reported; only after restatements
  // Touched-in-batch bookkeeping.
  uint64_t touched_epoch = 0;
  int64_t touched_end_ns = 0;
};

// One constant-selection segment of a factor cache.
struct FactorSegment {
  absl::Time start, end;  // selection is constant in [start, end)
  bool found = false;
  SelectedFactor f;
  uint32_t ref_idx = 0;
  std::string error;  // NOT_FOUND message when !found
};

// Selections of one (kind, key, tariff, region, activity unit): the factor
// boundaries (validity starts and ends of every candidate) split time into
// segments in which Select's answer cannot change; each segment is selected
// once per registry generation.
struct FactorCache {
  v1::FactorKind kind = v1::FACTOR_KIND_UNSPECIFIED;
  std::string key, tariff, unit;
  std::vector<std::string> regions;
  uint64_t generation = std::numeric_limits<uint64_t>::max();
  std::vector<absl::Time> bounds;  // sorted, unique
  std::map<size_t, std::unique_ptr<FactorSegment>> segs;
  const FactorSegment* last = nullptr;
};

struct DedupKey {
  int64_t start_ns;
  int64_t end_ns;
  friend bool operator==(const DedupKey& a, const DedupKey& b) {
    return a.start_ns == b.start_ns && a.end_ns == b.end_ns;
  }
  template <typename H>
  friend H AbslHashValue(H h, const DedupKey& k) {
    return H::combine(std::move(h), k.start_ns, k.end_ns);
  }
};

// Everything the hot path needs about a meter, precomputed at creation.
struct MeterCtx {
  v1::EnergyKind kind = v1::ENERGY_KIND_UNSPECIFIED;
  std::string unit;            // registered unit
  std::string canonical_unit;  // activity unit of records
  double to_canonical = 1;
  double max_per_hour = 0;
  int slot = 0;
  v1::Scope scope = v1::SCOPE_UNSPECIFIED;
  // Inline (no extra cache miss on the hot path).
  absl::InlinedVector<uint32_t, 4>
      chain;  // account idxs: meter, parent, ..., enterprise
  absl::InlinedVector<uint32_t, 6>
      region_chain;  // region idxs: region, parent, ..., root
  FactorCache* loc = nullptr;
  FactorCache* mkt = nullptr;  // null without tariff
  // Dedup: accounted keys -> value (CUMULATIVE: {t, t} -> register value).
  absl::flat_hash_map<DedupKey, double> seen;
  int64_t newest_end_ns = std::numeric_limits<int64_t>::min();
  size_t sweep_at = 256;
  // Cumulative register.
  bool has_register = false;
  int64_t reg_ns = 0;
  double reg_value = 0;
};

struct AccountNode {
  v1::Account a;  // as stored (inherited fields filled in)
  int32_t parent = -1;
  std::vector<uint32_t> children;
  int32_t enterprise =
      -1;             // idx of the enterprise above (self for enterprises)
  int32_t site = -1;  // idx of the site above-or-self
  int32_t line = -1;  // idx of the line above-or-self
  absl::InlinedVector<uint32_t, 6> region_chain;  // region idxs of a.region()
  std::unique_ptr<MeterCtx> meter;
  Target agg;
};

// Rows for the writer.
struct RecordExtra {
  std::string activity_key, method, unit;  // process records
  std::string restatement_id;              // restated records
};

struct RecordRow {
  int64_t id = 0;
  uint32_t account = 0;
  uint32_t enterprise = 0;
  int64_t start_ns = 0, end_ns = 0;
  int32_t energy_kind = 0;  // 0: process
  int32_t scope = 0;
  int32_t reading_kind = 0;
  double value = 0;  // as received (CUMULATIVE: the register value)
  double activity = 0;
  double kg = 0, market_kg = 0;
  int64_t factor = -1, market_factor = -1;
  int64_t compute_ns = 0;
  std::string event_id;
  // Process and restatement fields, out of line (empty for most records:
  // keeps a row at ~136 bytes). Copy-on-write through mutable_extra().
  std::shared_ptr<const RecordExtra> extra;
  const std::string& activity_key() const {
    return extra ? extra->activity_key : Empty();
  }
  const std::string& method() const { return extra ? extra->method : Empty(); }
  const std::string& unit() const { return extra ? extra->unit : Empty(); }
  const std::string& restatement_id() const {
    return extra ? extra->restatement_id : Empty();
  }
  RecordExtra& mutable_extra() {
    auto copy = extra ? std::make_shared<RecordExtra>(*extra)
                      : std::make_shared<RecordExtra>();
    RecordExtra& x = *copy;
    extra = std::move(copy);
    return x;
  }
  static const std::string& Empty() {
    static const std::string* empty = new std::string();
    return *empty;
  }
  int64_t orig = 0;  // as-reported record this restates (= id when as reported)
  int32_t current = 1;
};

struct QuarantineRow {
  int64_t id = 0;
  int64_t account = -1;
  int64_t enterprise = -1;
  int64_t receive_ns = 0;
  int64_t hour = 0;
  int32_t reason = 0;
  std::string detail;
  std::string reading;  // serialized v1::MeterReading
  std::string event_id;
};

// Reads a `records` row's figures from the first twelve columns of `q`,
// selected in this order: id, account, enterprise, start_ns, end_ns,
// energy_kind, scope, reading_kind, value, activity, kg, market_kg. The
// ledger's load and its record queries both select them so.
void ReadRecordFigures(sqlite3_stmt* q, RecordRow* r);

struct MeterStateRow {
  uint32_t account;
  int64_t reg_ns;
  double reg_value;
};

struct WriteBatch {
  std::vector<std::pair<uint32_t, std::string>>
      refs;  // (idx, serialized FactorRef)
  std::vector<RecordRow> records;
  std::vector<QuarantineRow> quarantine;
  std::vector<MeterStateRow> states;
  size_t rows() const {
    return refs.size() + records.size() + quarantine.size() + states.size();
  }
  void clear() {
    refs.clear();
    records.clear();
    quarantine.clear();
    states.clear();
  }
  bool empty() const { return rows() == 0; }
};

// Rows per multi-row records INSERT of the writer (22 parameters each).
inline constexpr int kRecordsPerInsert = 64;

// SQLite connection + background writer. Thread-safe.
class LedgerStore {
 public:
  static absl::StatusOr<std::unique_ptr<LedgerStore>> Open(
      const std::string& path, bool full_sync, size_t writer_batch,
      size_t max_queued_rows);
  ~LedgerStore();
  // Queues a batch; blocks while more than `max_queued_rows` rows wait.
  void Enqueue(WriteBatch batch);
  // An empty batch, from the pool of written ones when possible (their
  // vectors keep their capacity: no large allocations on the ingest path).
  WriteBatch TakeBatch();
  // Waits until every queued batch is committed; the writer's error if any.
  absl::Status Flush();
  // Runs `fn` with the connection, under the connection lock (cold paths).
  template <typename Fn>
  auto WithDb(Fn fn) {
    absl::MutexLock l(&db_mu_);
    return fn(db_);
  }
  // Writes one batch now, in one transaction (cold paths; caller flushed).
  // `not_current`: (enterprise, start_ns, id) of records that stop being
  // current.
  absl::Status WriteNow(
      const WriteBatch& b,
      const std::vector<std::array<int64_t, 3>>& not_current = {});
  const std::string& path() const { return path_; }

 private:
  LedgerStore(sqlite3* db, std::string path, size_t writer_batch,
              size_t max_queued_rows);
  void Run();
  // Writes the rows of `batches` (records in primary-key order, so the
  // B-tree inserts of a transaction walk each enterprise's pages in order).
  absl::Status WriteLocked(const std::vector<const WriteBatch*>& batches)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(db_mu_);
  // The records INSERT for `rows` rows (1 or kRecordsPerInsert), prepared
  // once per connection; null (and `*error` set) if preparing failed.
  // `plain`: for rows that are IsPlainRecord (their constant columns are
  // literals in the statement: 16 parameters per row instead of 22).
  sqlite3_stmt* RecordInsert(int rows, bool plain, std::string* error)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(db_mu_);

  std::string path_;
  size_t writer_batch_;
  size_t max_queued_rows_ = size_t{1} << 22;

  absl::Mutex db_mu_;
  sqlite3* db_ ABSL_GUARDED_BY(db_mu_);
  // Cached record INSERTs: one row, and kRecordsPerInsert rows per statement
  // (fewer statement executions per row; finalized before closing db_).
  sqlite3_stmt* insert_one_ ABSL_GUARDED_BY(db_mu_) = nullptr;
  sqlite3_stmt* insert_many_ ABSL_GUARDED_BY(db_mu_) = nullptr;
  sqlite3_stmt* insert_many_plain_ ABSL_GUARDED_BY(db_mu_) = nullptr;
  // Writer scratch: the records of a transaction in key order, sorted as
  // contiguous keys (no pointer chasing per comparison).
  struct SortKey {
    uint32_t enterprise;
    int64_t start_ns;
    int64_t id;
    const RecordRow* row;
  };
  std::vector<SortKey> sort_keys_ ABSL_GUARDED_BY(db_mu_);
  std::vector<size_t> sort_runs_ ABSL_GUARDED_BY(db_mu_);
  // Sorts `keys` into primary-key order.
  void SortRecordKeys(std::vector<SortKey>* keys) ABSL_EXCLUSIVE_LOCKS_REQUIRED(db_mu_);
  std::vector<const RecordRow*> sorted_ ABSL_GUARDED_BY(db_mu_);

  absl::Mutex q_mu_;
  std::deque<WriteBatch> queue_ ABSL_GUARDED_BY(q_mu_);
  std::vector<WriteBatch> pool_ ABSL_GUARDED_BY(q_mu_);
  size_t queued_rows_ ABSL_GUARDED_BY(q_mu_) = 0;
  uint64_t enqueued_ ABSL_GUARDED_BY(q_mu_) = 0;
  uint64_t written_ ABSL_GUARDED_BY(q_mu_) = 0;
  bool stop_ ABSL_GUARDED_BY(q_mu_) = false;
  absl::Status error_ ABSL_GUARDED_BY(q_mu_);
  std::thread thread_;
};

class CarbonLedger::Impl {
 public:
  Impl(const RegionTree* regions, FactorRegistry* factors, Clock* clock,
       LedgerOptions options);

  absl::Status Load(std::unique_ptr<LedgerStore> store);

  // Accounts.
  absl::StatusOr<v1::Account> CreateAccount(v1::Account account);
  absl::StatusOr<v1::Account> GetAccount(std::string_view id) const;
  uint32_t ChildCount(std::string_view id) const;
  absl::StatusOr<v1::ListAccountsResponse> ListAccounts(
      const v1::ListAccountsRequest& req,
      const std::function<bool(const v1::Account&)>& visible) const;
  std::optional<v1::Account> FindIndividual(
      std::string_view data_subject) const;
  std::string EnterpriseOf(std::string_view account_id) const;
  std::string RegionOf(std::string_view account_id) const;
  bool AccountCovers(std::string_view ancestor,
                     std::string_view account_id) const;

  // Ingest.
  BatchResult AccountReadings(absl::Span<const ReadingInput> readings);
  BatchResult AccountProcess(absl::Span<const ProcessInput> entries);
  // The end of both: the batch's touched targets into `res`, its rows to the
  // writer.
  void FinishBatch(BatchResult& res, WriteBatch wb) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // Queries.
  absl::StatusOr<std::vector<v1::EmissionTotal>> Emissions(
      std::string_view account_id, v1::Granularity g, absl::Time from,
      absl::Time to, bool as_reported) const;
  absl::StatusOr<std::vector<v1::EmissionTotal>> RegionEmissions(
      std::string_view region, v1::Granularity g, absl::Time from,
      absl::Time to, bool as_reported) const;
  absl::StatusOr<v1::GetIndustryEmissionsResponse> IndustryEmissions(
      const v1::GetIndustryEmissionsRequest& r, absl::Time from,
      absl::Time to) const;
  absl::StatusOr<v1::GetRankingResponse> Ranking(
      const v1::GetRankingRequest& r) const;
  absl::StatusOr<v1::ListEmissionRecordsResponse> ListRecords(
      const v1::ListEmissionRecordsRequest& r) const;
  absl::StatusOr<v1::ListQuarantinedReadingsResponse> ListQuarantine(
      const v1::ListQuarantinedReadingsRequest& r) const;
  std::vector<v1::Attribution> Contributors(std::string_view target,
                                            bool is_region, absl::Time from,
                                            absl::Time to, size_t limit) const;
  double TotalKg(std::string_view target, bool is_region, absl::Time from,
                 absl::Time to) const;
  absl::Status SetValueAdded(const v1::ValueAdded& v);
  std::optional<double> ValueAdded(std::string_view enterprise_id,
                                   Period p) const;
  absl::Status SetGrade(const v1::Grade& g);
  std::optional<v1::Grade> GradeFor(std::string_view enterprise_id,
                                    Period p) const;
  absl::StatusOr<CarbonLedger::RestateResult> Restate(
      const std::string& restatement_id,
      const std::vector<std::string>& account_ids, const std::string& region,
      absl::Time from, absl::Time to,
      const std::vector<std::string>& factor_ids);
  absl::Status Flush() { return store_->Flush(); }

 private:
  using PeriodKey = std::pair<int64_t, int64_t>;  // (start ns, end ns)

  // --- ledger.cc
  void BuildMeterCtx(AccountNode& node) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  FactorCache* CacheFor(v1::FactorKind kind, std::string_view key,
                        std::string_view tariff, std::string_view region,
                        std::string_view unit)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  const FactorSegment* Lookup(FactorCache* c, absl::Time at, uint64_t gen,
                              WriteBatch* wb)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  uint32_t InternRef(const v1::FactorRef& ref, WriteBatch* wb)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void AddToTiers(Tiers& t, int64_t hour, const Bucket& b)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  Bucket& HourBucket(Tiers& t, int64_t hour) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  Bucket& BucketFor(Tiers& t, int64_t hour) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void AddRecordToAggregates(const RecordRow& row, bool reported)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void AddDelta(uint32_t account, int64_t hour, const Bucket& b)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void CountQuarantine(uint32_t account, int64_t hour)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Touch(Target& t, int64_t end_ns, bool is_region, uint32_t idx)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void NoteHour(int64_t hour) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Fold() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void FoldTiers(Tiers& t) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  int64_t DayOfHour(int64_t hour) const;
  int64_t MonthOfDay(int64_t day) const;
  void SweepDedup(MeterCtx& m) const;
  v1::EmissionRecord ToProto(const RecordRow& row) const
      ABSL_SHARED_LOCKS_REQUIRED(mu_);
  // The enterprise account `id`: NOT_FOUND, or INVALID_ARGUMENT for
  // another kind, naming it.
  absl::StatusOr<const AccountNode*> FindEnterprise(const std::string& id) const
      ABSL_SHARED_LOCKS_REQUIRED(mu_);
  const AccountNode* Find(std::string_view id) const
      ABSL_SHARED_LOCKS_REQUIRED(mu_);
  absl::Status ValidateAccount(const v1::Account& a) const
      ABSL_SHARED_LOCKS_REQUIRED(mu_);
  uint32_t AddNode(v1::Account a) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Quarantine(const ReadingInput& in, int32_t account,
                  v1::QuarantineReason reason, std::string detail, int64_t hour,
                  absl::Time now, BatchResult* res, WriteBatch* wb)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Value of an as-reported record (meter, start, end) in the database, if any.
  std::optional<double> StoredValue(uint32_t account, uint32_t enterprise,
                                    int64_t start_ns, int64_t end_ns)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // --- ledger_query.cc
  absl::Status SumTiers(const Tiers& t, const Period& p, v1::Granularity g,
                        Bucket* out) const;
  absl::Status SumTarget(const Target& t, const Period& p, v1::Granularity g,
                         bool as_reported, Bucket* out) const;
  v1::EmissionTotal ToTotal(const Period& p, const Bucket& b) const;
  absl::StatusOr<std::vector<v1::EmissionTotal>> TotalsOf(
      const std::vector<const Target*>& targets, v1::Granularity g,
      absl::Time from, absl::Time to, bool as_reported) const
      ABSL_SHARED_LOCKS_REQUIRED(mu_);
  double RangeTotal(const Target& t, absl::Time from, absl::Time to) const;
  // Targets for an enterprise restricted to a region ("" = whole enterprise).
  std::vector<const Target*> EnterpriseParts(const AccountNode& e,
                                             std::string_view region) const
      ABSL_SHARED_LOCKS_REQUIRED(mu_);
  bool IsUnder(uint32_t account, uint32_t ancestor) const
      ABSL_SHARED_LOCKS_REQUIRED(mu_);
  int32_t RegionIdx(std::string_view code) const;

  const RegionTree* regions_;
  FactorRegistry* factors_;
  Clock* clock_;
  LedgerOptions opt_;
  std::unique_ptr<LedgerStore> store_;
  absl::flat_hash_map<std::string, int32_t>
      region_idx_;  // immutable after construction

  mutable absl::Mutex mu_;
  std::vector<std::unique_ptr<AccountNode>> accounts_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, uint32_t> ids_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, uint32_t> individuals_
      ABSL_GUARDED_BY(mu_);  // data subject -> idx
  std::vector<std::unique_ptr<Target>> region_targets_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, std::unique_ptr<FactorCache>> caches_
      ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, uint32_t> ref_idx_ ABSL_GUARDED_BY(mu_);
  std::vector<v1::FactorRef> refs_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, double> process_seen_ ABSL_GUARDED_BY(mu_);
  std::map<std::pair<std::string, PeriodKey>, double> value_added_
      ABSL_GUARDED_BY(mu_);
  std::map<std::pair<std::string, PeriodKey>, v1::Grade> grades_
      ABSL_GUARDED_BY(mu_);
  int64_t next_record_id_ ABSL_GUARDED_BY(mu_) = 1;
  int64_t next_quarantine_id_ ABSL_GUARDED_BY(mu_) = 1;
  uint64_t epoch_ ABSL_GUARDED_BY(mu_) = 0;
  std::vector<std::pair<bool, uint32_t>> touched_ ABSL_GUARDED_BY(mu_);
  int64_t newest_hour_ ABSL_GUARDED_BY(mu_) =
      std::numeric_limits<int64_t>::min();
  // Per retention class (Tiers::cls): hours below go to the day tier, days
  // below to the month tier.
  int64_t hour_cutoff_[2] ABSL_GUARDED_BY(mu_) = {
      std::numeric_limits<int64_t>::min(), std::numeric_limits<int64_t>::min()};
  int64_t day_cutoff_[2] ABSL_GUARDED_BY(mu_) = {
      std::numeric_limits<int64_t>::min(), std::numeric_limits<int64_t>::min()};
  int hourly_days_[2] = {14, 2};
  int daily_days_[2] = {400, 62};
  bool loading_ ABSL_GUARDED_BY(mu_) = false;
};

// Helpers shared by the ledger's files.
// Debian's abseil has its own string_view: bridge std::string_view to it.
inline absl::string_view AV(std::string_view s) { return {s.data(), s.size()}; }
inline int64_t FloorDiv(int64_t a, int64_t b) {
  int64_t q = a / b;
  return (a % b != 0 && ((a < 0) != (b < 0))) ? q - 1 : q;
}
std::string FormatTime(int64_t ns);
void SetTimestampNs(int64_t ns, google::protobuf::Timestamp* ts);

}  // namespace cityos::carbon

#endif  // CITYOS_SERVICES_CARBON_LEDGER_IMPL_H_
