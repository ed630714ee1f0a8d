// cityos.carbon.v1.CarbonAccountService (proto/cityos/carbon/v1/carbon.proto:
// its comments are the RPC semantics and access rules) and the carbon
// account's runtime around it:
//
//  - an ingest thread that takes the ExchangeFeed's batches (the service's
//    only input path: events read through the exchange as
//    org `carbon-office` / svc `carbon`, purpose `carbon_accounting`) and
//    accounts them: MeterReading -> CarbonLedger::AccountReadings (batched),
//    ProcessActivity -> AccountProcess, ValueAdded -> SetValueAdded and a
//    grade (published, and IncentiveLedger::OnGrade), personal green
//    behaviour -> CreditLedger::Credit (only with the delivery's consent id)
//    and IncentiveLedger::OnCredit; then AlarmEngine::Evaluate on what the
//    batch touched (an alarm's trigger_event_id is the id of the batch's last
//    reading or process event: under load a batch holds many readings);
//  - a ticker thread (AlarmEngine::Tick: period ends);
//  - a restatement worker thread (PENDING -> RUNNING -> DONE | FAILED, then
//    grades recomputed with the restatement id and incentive reversals);
//  - publishing EmissionRecord, Alarm and Grade events on the node's bus as
//    the service principal (`carbon.emission|alarm|grade.<city>.<district>`).
//
// Grades and restatements are kept by this service in <data_dir>/service.db
// (tables `grades`, `restatements`: serialized protos).
//
// Thread-safety: every public method may be called from any thread after
// Start() returned OK and until Stop().
#ifndef CITYOS_SERVICES_CARBON_CARBON_SERVICE_H_
#define CITYOS_SERVICES_CARBON_CARBON_SERVICE_H_

#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "cityos/bus.h"
#include "cityos/carbon/v1/carbon.grpc.pb.h"
#include "cityos/clock.h"
#include "cityos/principal.h"
#include "credits.h"
#include "exchange_feed.h"
#include "grades.h"
#include "ledger.h"
#include "periods.h"
#include "plans.h"
#include "regions.h"

struct sqlite3;

namespace cityos::carbon {

class CarbonLedger;
class FactorRegistry;
class IncentiveLedger;

// Names the caller of an RPC (PluginContext::Authenticate in a node).
using CarbonCallerResolver =
    std::function<absl::StatusOr<Principal>(grpc::ServerContext*)>;

// Roles (carbon.proto).
inline constexpr char kViewerRole[] = "carbon-viewer";
inline constexpr char kAdminRole[] = "carbon-admin";

// The default input subject patterns.
std::vector<std::string> DefaultCarbonInputs();

// Id of the individual account created for a person: `person/<data_subject>`.
inline std::string IndividualAccountId(std::string_view data_subject) {
  return "person/" + std::string(data_subject);
}

// Incentive rules (incentives.h IncentiveRules).
struct IncentivesConfig {
  double points_per_kg = 1.0;
  double coupon_every_kg = 0;
  std::string coupon_currency = "CNY";
  int64_t coupon_amount_minor = 0;
  // Grade level -> green-loan tier.
  std::map<int, std::string> loan_tiers = {
      {1, "green-A"}, {2, "green-B"}, {3, "standard"}};
};

struct CarbonServiceConfig {
  // State directory (ledger.db, factors.db, credits.db, incentives.db,
  // alarms.db, service.db, the feed's resume.json). Required.
  std::string data_dir;
  // City time zone of periods. Default: Asia/Shanghai.
  std::string time_zone = "Asia/Shanghai";
  std::vector<RegionInfo> regions;
  // Organisations that may report readings, process activity and value added
  // for any enterprise (e.g. the grid operator, the statistics bureau).
  // Anyone else reports only for the enterprises of its own org: an input
  // event whose owner is neither is refused (logged, counted in
  // Stats::refused), never accounted.
  std::vector<std::string> reporters;
  // Reference factors CSV seeded at start (rows present are skipped); empty
  // for none. Plus factors given in the config (added unless present).
  std::string factors_csv;
  std::vector<v1::EmissionFactor> factors;
  std::vector<Benchmark> benchmarks;
  std::vector<double> thresholds = {0.6, 0.8, 1.2, 2.0};
  // Credit rules: from a CSV (reference format) under `credit_scheme`, and/or
  // listed.
  std::string credit_rules_csv;
  std::string credit_scheme = "ant_forest";
  std::vector<CreditRule> credit_rules;
  IncentivesConfig incentives;
  // Input subject patterns (one exchange stream each).
  std::vector<std::string> inputs = DefaultCarbonInputs();
  // How often AlarmEngine::Tick runs. Default: 1 s.
  absl::Duration tick_interval = absl::Seconds(1);
  // Publish an EmissionRecord event per accounted reading. Default: true.
  bool publish_records = true;
  // Most deliveries accounted in one ledger batch. Default: 8192.
  size_t ingest_batch = 8192;
  // Deliveries queued before the feed's streams are back-pressured.
  // Default: 65536.
  size_t queue_limit = 65536;
  // Readings whose interval ends more than this after now are quarantined.
  absl::Duration future_tolerance = absl::Minutes(5);
  // The exchange feed: its max_batch and backoff (address, identity and
  // patterns come from the deps and `inputs`).
  uint32_t feed_max_batch = 1024;
  absl::Duration feed_min_backoff = absl::Milliseconds(100);
  absl::Duration feed_max_backoff = absl::Seconds(5);
};

struct CarbonServiceDeps {
  Clock* clock = nullptr;  // required
  Bus* bus = nullptr;      // required: outputs are published here
  // The service's own principal (org carbon-office, svc carbon): publisher of
  // its outputs.
  Principal self;
  // Names the caller of each RPC. Required.
  CarbonCallerResolver resolver;
  // The feed's exchange address and identity; without `exchange_address`
  // no feed is started (deliveries come only through Deliver(), e.g. in
  // benchmarks of the ledger path).
  std::function<std::string()> exchange_address;
  ServiceIdentity identity;
};

class CarbonAccountServiceImpl final
    : public v1::CarbonAccountService::Service {
 public:
  CarbonAccountServiceImpl(CarbonServiceDeps deps, CarbonServiceConfig config);
  ~CarbonAccountServiceImpl() override;

  // Opens the stores under data_dir, seeds factors, starts the threads and
  // the feed. Errors name the store or config entry at fault.
  absl::Status Start();
  // Ends WatchAlarms streams (UNAVAILABLE). Idempotent.
  void Drain();
  // Drains, stops the feed and the threads, flushes the ledger. Idempotent.
  void Stop();

  // Hands deliveries to the ingest thread (what the feed's handler does).
  // Blocks while the queue is over `queue_limit`; false after Stop().
  bool Deliver(std::vector<FeedDelivery> batch);
  // Waits until every delivery handed over so far has been accounted (or
  // `timeout` passes; then false).
  bool WaitIdle(absl::Duration timeout);

  struct Stats {
    uint64_t events = 0;    // deliveries processed
    uint64_t readings = 0;  // readings accounted (new records)
    uint64_t duplicates = 0;
    uint64_t quarantined = 0;
    uint64_t credits = 0;     // credits booked (incl. capped)
    uint64_t uncredited = 0;  // personal events without consent
    uint64_t ignored = 0;     // events of an unknown type or bad payload
    uint64_t refused = 0;     // inputs reported for another org's enterprise
    uint64_t grades = 0;
    uint64_t ingest_busy_ns = 0;  // time the ingest thread spent accounting
  };
  Stats stats() const;
  // Null before Start().
  ExchangeFeed* feed() { return feed_.get(); }
  CarbonLedger* ledger() { return ledger_.get(); }
  AlarmEngine* alarms() { return alarms_.get(); }

  // ---- RPCs ------------------------------------------------------------
  grpc::Status CreateAccount(grpc::ServerContext*,
                             const v1::CreateAccountRequest*,
                             v1::CreateAccountResponse*) override;
  grpc::Status GetAccount(grpc::ServerContext*, const v1::GetAccountRequest*,
                          v1::GetAccountResponse*) override;
  grpc::Status ListAccounts(grpc::ServerContext*,
                            const v1::ListAccountsRequest*,
                            v1::ListAccountsResponse*) override;
  grpc::Status GetEmissions(grpc::ServerContext*,
                            const v1::GetEmissionsRequest*,
                            v1::GetEmissionsResponse*) override;
  grpc::Status ListEmissionRecords(grpc::ServerContext*,
                                   const v1::ListEmissionRecordsRequest*,
                                   v1::ListEmissionRecordsResponse*) override;
  grpc::Status ListQuarantinedReadings(
      grpc::ServerContext*, const v1::ListQuarantinedReadingsRequest*,
      v1::ListQuarantinedReadingsResponse*) override;
  grpc::Status ListGreenCredits(grpc::ServerContext*,
                                const v1::ListGreenCreditsRequest*,
                                v1::ListGreenCreditsResponse*) override;
  grpc::Status GetRegionEmissions(grpc::ServerContext*,
                                  const v1::GetRegionEmissionsRequest*,
                                  v1::GetRegionEmissionsResponse*) override;
  grpc::Status GetIndustryEmissions(grpc::ServerContext*,
                                    const v1::GetIndustryEmissionsRequest*,
                                    v1::GetIndustryEmissionsResponse*) override;
  grpc::Status GetRanking(grpc::ServerContext*, const v1::GetRankingRequest*,
                          v1::GetRankingResponse*) override;
  grpc::Status SetPlan(grpc::ServerContext*, const v1::SetPlanRequest*,
                       v1::SetPlanResponse*) override;
  grpc::Status ListPlans(grpc::ServerContext*, const v1::ListPlansRequest*,
                         v1::ListPlansResponse*) override;
  grpc::Status DeletePlan(grpc::ServerContext*, const v1::DeletePlanRequest*,
                          v1::DeletePlanResponse*) override;
  grpc::Status ListAlarms(grpc::ServerContext*, const v1::ListAlarmsRequest*,
                          v1::ListAlarmsResponse*) override;
  grpc::Status AcknowledgeAlarm(grpc::ServerContext*,
                                const v1::AcknowledgeAlarmRequest*,
                                v1::AcknowledgeAlarmResponse*) override;
  grpc::Status WatchAlarms(
      grpc::ServerContext*, const v1::WatchAlarmsRequest*,
      grpc::ServerWriter<v1::WatchAlarmsResponse>*) override;
  grpc::Status GetGrade(grpc::ServerContext*, const v1::GetGradeRequest*,
                        v1::GetGradeResponse*) override;
  grpc::Status ListGrades(grpc::ServerContext*, const v1::ListGradesRequest*,
                          v1::ListGradesResponse*) override;
  grpc::Status GetIncentiveStatement(
      grpc::ServerContext*, const v1::GetIncentiveStatementRequest*,
      v1::GetIncentiveStatementResponse*) override;
  grpc::Status GetMonthlyReport(grpc::ServerContext*,
                                const v1::GetMonthlyReportRequest*,
                                v1::GetMonthlyReportResponse*) override;
  grpc::Status ListEmissionFactors(grpc::ServerContext*,
                                   const v1::ListEmissionFactorsRequest*,
                                   v1::ListEmissionFactorsResponse*) override;
  grpc::Status AddEmissionFactor(grpc::ServerContext*,
                                 const v1::AddEmissionFactorRequest*,
                                 v1::AddEmissionFactorResponse*) override;
  grpc::Status RequestRestatement(grpc::ServerContext*,
                                  const v1::RequestRestatementRequest*,
                                  v1::RequestRestatementResponse*) override;
  grpc::Status GetRestatement(grpc::ServerContext*,
                              const v1::GetRestatementRequest*,
                              v1::GetRestatementResponse*) override;

  // The monthly report body (JSON or CSV), for in-process callers and tests.
  // REQUIRES: the caller was checked.
  absl::StatusOr<v1::GetMonthlyReportResponse> MonthlyReport(
      const v1::GetMonthlyReportRequest& r);

 private:
  class Source;  // EmissionsSource over the ledger

  // ---- access -----------------------------------------------------------
  absl::StatusOr<Principal> Caller(grpc::ServerContext* ctx) const;
  static bool IsViewer(const Principal& p);
  static bool IsAdmin(const Principal& p);
  bool CanRead(const Principal& p, const v1::Account& a) const;
  bool CanManage(const Principal& p, const v1::Account& a) const;
  // The account if `p` may read it; NOT_FOUND otherwise (as if absent).
  absl::StatusOr<v1::Account> ReadableAccount(const Principal& p,
                                              const std::string& id) const;
  bool AlarmVisible(const Principal& p, const v1::Alarm& a) const;
  bool PlanVisible(const Principal& p, const v1::Plan& plan) const;

  // ---- ingest -----------------------------------------------------------
  void IngestLoop();
  void IngestBatch(std::vector<FeedDelivery>& batch);
  void HandleValueAdded(const v1::ValueAdded& va, const std::string& event_id);
  void HandlePersonal(const FeedDelivery& d);
  void TickLoop();
  void RestateLoop();
  void RunRestatement(v1::Restatement r);

  // ---- grades -------------------------------------------------------------
  // Computes (and stores, publishes, books incentives for) the grade of
  // `enterprise_id` for `period`; nullopt when there is nothing to grade (no
  // value added, or no emissions accounted in the period).
  // Counts incentive reversals it caused into `*reversals` (may be null).
  absl::StatusOr<std::optional<v1::Grade>> Grade(
      const std::string& enterprise_id, const Period& p,
      const std::string& restatement_id, uint64_t* reversals = nullptr);
  absl::Status OpenStore(const std::string& path);
  absl::Status StoreGrade(const v1::Grade& g);
  absl::Status StoreRestatementLocked(const v1::Restatement& r)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(state_mu_);
  // The current grade of `account_id` for the period containing `t` (latest
  // period when `t` is infinite); as_reported: the first grade of it.
  std::optional<v1::Grade> FindGrade(const std::string& account_id,
                                     absl::Time t, bool as_reported) const;

  // ---- publishing ---------------------------------------------------------
  void PublishAlarm(v1::AlarmChangeKind kind, const v1::Alarm& alarm);
  std::string SubjectFor(std::string_view prefix,
                         std::string_view region) const;
  absl::StatusOr<event::v1::Event> OutputEvent(
      std::string_view prefix, const std::string& region,
      const google::protobuf::Message& payload) const;
  void PublishPayload(std::string_view prefix, const std::string& region,
                      const google::protobuf::Message& payload);
  void PublishRecords(const std::vector<v1::EmissionRecord>& records);

  const CarbonServiceDeps deps_;
  const CarbonServiceConfig config_;
  absl::TimeZone tz_;
  RegionTree regions_;
  std::unique_ptr<BenchmarkTable> benchmarks_;
  std::unique_ptr<FactorRegistry> factors_;
  std::unique_ptr<CarbonLedger> ledger_;
  std::unique_ptr<CreditLedger> credits_;
  std::unique_ptr<IncentiveLedger> incentives_;
  std::unique_ptr<Source> source_;
  std::unique_ptr<AlarmEngine> alarms_;
  std::unique_ptr<ExchangeFeed> feed_;
  sqlite3* db_ = nullptr;

  // Ingest queue.
  mutable absl::Mutex queue_mu_;
  std::deque<std::vector<FeedDelivery>> queue_ ABSL_GUARDED_BY(queue_mu_);
  size_t queued_ ABSL_GUARDED_BY(queue_mu_) = 0;
  uint64_t handed_ ABSL_GUARDED_BY(queue_mu_) = 0;     // deliveries handed over
  uint64_t processed_ ABSL_GUARDED_BY(queue_mu_) = 0;  // deliveries accounted
  bool stopping_ ABSL_GUARDED_BY(queue_mu_) = false;

  // Grades and restatements (mirrors of service.db).
  mutable absl::Mutex state_mu_;
  // All grades by id, including superseded ones.
  std::map<std::string, v1::Grade> grades_ ABSL_GUARDED_BY(state_mu_);
  std::map<std::string, v1::Restatement> restatements_
      ABSL_GUARDED_BY(state_mu_);
  std::deque<std::string> restate_queue_ ABSL_GUARDED_BY(state_mu_);
  // Stops the ticker and the restatement worker.
  bool restate_stop_ ABSL_GUARDED_BY(state_mu_) = false;

  // WatchAlarms streams.
  std::unique_ptr<AlarmWatchers> watchers_;

  // Ingest thread only: reading inputs reused from batch to batch (parsing
  // into them reuses their strings' capacity: no allocation per reading).
  std::vector<ReadingInput> reading_buf_;
  // Ingest thread only: whether an event's owner may report for `account_id`
  // (CarbonServiceConfig::reporters); the org of each account's enterprise,
  // cached (an account's org never changes).
  bool MayReport(std::string_view owner, std::string_view event_id,
                 const std::string& account_id);
  const absl::flat_hash_set<std::string> reporters_{config_.reporters.begin(),
                                                    config_.reporters.end()};
  absl::flat_hash_map<std::string, std::string> reporter_org_;

  std::atomic<uint64_t> n_events_{0}, n_readings_{0}, n_duplicates_{0},
      n_quarantined_{0}, n_credits_{0}, n_uncredited_{0}, n_ignored_{0},
      n_grades_{0}, ingest_busy_ns_{0}, n_refused_{0};
  std::atomic<bool> started_{false}, stopped_{false};
  std::vector<std::thread> threads_;
};

}  // namespace cityos::carbon

#endif  // CITYOS_SERVICES_CARBON_CARBON_SERVICE_H_
