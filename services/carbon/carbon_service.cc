// CarbonAccountServiceImpl: start-up and shutdown, the ingest, ticker and
// restatement threads, grading, the service store (service.db) and
// publishing on the bus. The RPC handlers are in carbon_service_rpc.cc, the
// monthly report in carbon_service_report.cc.
#include "carbon_service.h"

#include <pthread.h>
#include <sqlite3.h>

#include <algorithm>
#include <filesystem>
#include <string_view>
#include <utility>

#include "absl/strings/str_cat.h"
#include "cityos/event.h"
#include "cityos/id.h"
#include "cityos/logging.h"
#include "cityos/proto_time.h"
#include "cityos/status.h"
#include "factors.h"
#include "incentives.h"
#include "ledger.h"
#include "periods.h"
#include "sqlite_util.h"

namespace cityos::carbon {

using infobank::SqliteStmt;

namespace {
constexpr char kComponent[] = "carbon";
constexpr std::string_view kMeterReadingType = "cityos.carbon.v1.MeterReading";
constexpr std::string_view kProcessType = "cityos.carbon.v1.ProcessActivity";
constexpr std::string_view kValueAddedType = "cityos.carbon.v1.ValueAdded";

absl::Status Exec(sqlite3* db, const char* sql) {
  char* err = nullptr;
  if (sqlite3_exec(db, sql, nullptr, nullptr, &err) != SQLITE_OK) {
    absl::Status s =
        absl::InternalError(absl::StrCat("service.db: ", err ? err : "error"));
    sqlite3_free(err);
    return s;
  }
  return absl::OkStatus();
}
}  // namespace

std::vector<std::string> DefaultCarbonInputs() {
  return {"carbon.meter.reading.>",  "carbon.process.>",
          "carbon.output.>",         "mobility.trip.>",
          "mobility.transit.ride.>", "payments.green.>",
          "payments.einvoice.>"};
}

// ---- EmissionsSource over the ledger
// ------------------------------------------

class CarbonAccountServiceImpl::Source final : public EmissionsSource {
 public:
  Source(const CarbonLedger* ledger, const RegionTree* regions)
      : ledger_(ledger), regions_(regions) {}
  double TotalKg(std::string_view target, bool is_region, absl::Time from,
                 absl::Time to) const override {
    return ledger_->TotalKg(target, is_region, from, to);
  }
  std::vector<v1::Attribution> Contributors(std::string_view target,
                                            bool is_region, absl::Time from,
                                            absl::Time to) const override {
    return ledger_->Contributors(target, is_region, from, to, 10);
  }
  std::string RegionOf(std::string_view account_id) const override {
    return ledger_->RegionOf(account_id);
  }
  bool Covers(std::string_view ancestor, bool is_region,
              std::string_view account_id) const override {
    if (is_region)
      return regions_->Covers(ancestor, ledger_->RegionOf(account_id));
    return ledger_->AccountCovers(ancestor, account_id);
  }
  bool RegionCovers(std::string_view ancestor,
                    std::string_view region) const override {
    return regions_->Covers(ancestor, region);
  }

 private:
  const CarbonLedger* ledger_;
  const RegionTree* regions_;
};

CarbonAccountServiceImpl::CarbonAccountServiceImpl(CarbonServiceDeps deps,
                                                   CarbonServiceConfig config)
    : deps_(std::move(deps)), config_(std::move(config)) {}

CarbonAccountServiceImpl::~CarbonAccountServiceImpl() { Stop(); }

absl::Status CarbonAccountServiceImpl::Start() {
  if (deps_.clock == nullptr || deps_.bus == nullptr || !deps_.resolver) {
    return absl::InvalidArgumentError(
        "carbon service: clock, bus and resolver are required");
  }
  if (config_.data_dir.empty())
    return absl::InvalidArgumentError("carbon service: data_dir is required");
  std::error_code ec;
  std::filesystem::create_directories(config_.data_dir, ec);
  if (ec) {
    return absl::FailedPreconditionError(absl::StrCat(
        "data_dir ", config_.data_dir, ": cannot be created: ", ec.message()));
  }
  CITYOS_ASSIGN_OR_RETURN(tz_, LoadCityTimeZone(config_.time_zone));
  {
    absl::StatusOr<RegionTree> tree = RegionTree::Create(config_.regions);
    if (!tree.ok()) return Annotate(tree.status(), "regions");
    regions_ = *std::move(tree);
  }
  {
    absl::StatusOr<BenchmarkTable> table =
        BenchmarkTable::Create(config_.benchmarks);
    if (!table.ok()) return Annotate(table.status(), "benchmarks");
    benchmarks_ = std::make_unique<BenchmarkTable>(*std::move(table));
  }
  const std::string dir = config_.data_dir;
  const std::string self = deps_.self.SpiffeId();
  CITYOS_ASSIGN_OR_RETURN(
      factors_, FactorRegistry::Open(dir + "/factors.db", deps_.clock, tz_));
  if (!config_.factors_csv.empty()) {
    // The registry logs what it added.
    CITYOS_RETURN_IF_ERROR(Annotate(factors_->SeedCsv(config_.factors_csv, self).status(),
                                    "factors_csv"));
  }
  for (const v1::EmissionFactor& f : config_.factors) {
    absl::StatusOr<v1::EmissionFactor> added = factors_->Add(f, self);
    if (!added.ok() && !absl::IsAlreadyExists(added.status())) {
      return Annotate(added.status(),
                      absl::StrCat("factors: ", f.key(), " ", f.region(), " ",
                                   f.vintage()));
    }
  }
  LedgerOptions lo;
  lo.tz = tz_;
  lo.future_tolerance = config_.future_tolerance;
  lo.return_records = config_.publish_records;
  CITYOS_ASSIGN_OR_RETURN(
      ledger_,
      CarbonLedger::Open(dir, &regions_, factors_.get(), deps_.clock, lo));

  // Credit rules: the CSV's, then the listed ones (replacing a CSV rule of the
  // same behaviour).
  std::vector<CreditRule> rules;
  if (!config_.credit_rules_csv.empty()) {
    absl::StatusOr<std::vector<CreditRule>> parsed =
        ParseCreditRulesCsv(config_.credit_rules_csv, config_.credit_scheme);
    if (!parsed.ok()) return Annotate(parsed.status(), "credit_rules.csv");
    rules = *std::move(parsed);
  }
  for (const CreditRule& r : config_.credit_rules) {
    rules.erase(std::remove_if(rules.begin(), rules.end(),
                               [&](const CreditRule& x) {
                                 return x.behaviour == r.behaviour;
                               }),
                rules.end());
    rules.push_back(r);
  }
  CITYOS_ASSIGN_OR_RETURN(
      credits_, CreditLedger::Open(dir + "/credits.db", std::move(rules), tz_,
                                   deps_.clock));
  IncentiveRules ir;
  ir.points_per_kg = config_.incentives.points_per_kg;
  ir.coupon_every_kg = config_.incentives.coupon_every_kg;
  if (ir.coupon_every_kg > 0) {
    ir.coupon_value.set_currency_code(config_.incentives.coupon_currency);
    ir.coupon_value.set_amount_minor(config_.incentives.coupon_amount_minor);
  }
  ir.loan_tier_by_level = config_.incentives.loan_tiers;
  ir.tz = tz_;
  CITYOS_ASSIGN_OR_RETURN(
      incentives_, IncentiveLedger::Open(dir + "/incentives.db", std::move(ir),
                                         deps_.clock));
  source_ = std::make_unique<Source>(ledger_.get(), &regions_);
  watchers_ = std::make_unique<AlarmWatchers>(source_.get());
  CITYOS_ASSIGN_OR_RETURN(
      alarms_,
      AlarmEngine::Open(dir + "/alarms.db", source_.get(), tz_, deps_.clock,
                        [this](v1::AlarmChangeKind k, const v1::Alarm& a) {
                          PublishAlarm(k, a);
                        }));
  CITYOS_RETURN_IF_ERROR(OpenStore(dir + "/service.db"));

  started_.store(true);
  threads_.emplace_back([this] { IngestLoop(); });
  threads_.emplace_back([this] { TickLoop(); });
  threads_.emplace_back([this] { RestateLoop(); });

  if (deps_.exchange_address) {
    ExchangeFeedOptions fo;
    fo.address = deps_.exchange_address;
    fo.tls = deps_.identity.tls;
    fo.server_id = deps_.identity.server_id;
    fo.patterns = config_.inputs;
    fo.purpose = kCarbonPurpose;
    fo.state_dir = dir;
    fo.max_batch = config_.feed_max_batch;
    fo.min_backoff = config_.feed_min_backoff;
    fo.max_backoff = config_.feed_max_backoff;
    absl::StatusOr<std::unique_ptr<ExchangeFeed>> feed = ExchangeFeed::Start(
        std::move(fo),
        [this](std::vector<FeedDelivery> batch) { Deliver(std::move(batch)); });
    if (!feed.ok()) {
      Stop();
      return Annotate(feed.status(), "exchange feed");
    }
    feed_ = *std::move(feed);
  }
  return absl::OkStatus();
}

void CarbonAccountServiceImpl::Drain() {
  if (watchers_ != nullptr) watchers_->CloseAll();
}

void CarbonAccountServiceImpl::Stop() {
  if (stopped_.exchange(true)) return;
  Drain();
  {
    absl::MutexLock lock(&queue_mu_);
    stopping_ = true;  // unblocks Deliver()
  }
  if (feed_ != nullptr) feed_->Stop();
  {
    absl::MutexLock lock(&state_mu_);
    restate_stop_ = true;
  }
  for (std::thread& t : threads_) t.join();
  threads_.clear();
  if (ledger_ != nullptr) {
    if (absl::Status s = ledger_->Flush(); !s.ok()) {
      LogWarn(kComponent, "ledger flush failed", {{"error", s.ToString()}});
    }
  }
  feed_.reset();
  alarms_.reset();
  watchers_.reset();
  source_.reset();
  incentives_.reset();
  credits_.reset();
  ledger_.reset();
  factors_.reset();
  if (db_ != nullptr) {
    sqlite3_close(db_);
    db_ = nullptr;
  }
}

// ---- ingest
// ------------------------------------------------------------------

bool CarbonAccountServiceImpl::Deliver(std::vector<FeedDelivery> batch) {
  if (batch.empty()) return true;
  absl::MutexLock lock(&queue_mu_);
  auto room = [this]() ABSL_SHARED_LOCKS_REQUIRED(queue_mu_) {
    return stopping_ || queued_ < config_.queue_limit;
  };
  queue_mu_.Await(absl::Condition(&room));
  if (stopping_) return false;
  queued_ += batch.size();
  handed_ += batch.size();
  queue_.push_back(std::move(batch));
  return true;
}

bool CarbonAccountServiceImpl::WaitIdle(absl::Duration timeout) {
  absl::MutexLock lock(&queue_mu_);
  const uint64_t target = handed_;
  auto done = [this, target]() ABSL_SHARED_LOCKS_REQUIRED(queue_mu_) {
    return processed_ >= target;
  };
  return queue_mu_.AwaitWithTimeout(absl::Condition(&done), timeout);
}

CarbonAccountServiceImpl::Stats CarbonAccountServiceImpl::stats() const {
  return {.events = n_events_.load(),
          .readings = n_readings_.load(),
          .duplicates = n_duplicates_.load(),
          .quarantined = n_quarantined_.load(),
          .credits = n_credits_.load(),
          .uncredited = n_uncredited_.load(),
          .ignored = n_ignored_.load(),
          .refused = n_refused_.load(),
          .grades = n_grades_.load(),
          .ingest_busy_ns = ingest_busy_ns_.load()};
}

void CarbonAccountServiceImpl::IngestLoop() {
  // Named so that profiles and the benchmark's per-thread CPU can tell it.
  pthread_setname_np(pthread_self(), "carbon-ingest");
  while (true) {
    std::vector<FeedDelivery> batch;
    {
      absl::MutexLock lock(&queue_mu_);
      auto ready = [this]() ABSL_SHARED_LOCKS_REQUIRED(queue_mu_) {
        return stopping_ || !queue_.empty();
      };
      queue_mu_.Await(absl::Condition(&ready));
      if (queue_.empty()) return;  // stopping and drained
      // Merge queued batches up to ingest_batch deliveries (room reserved
      // once: no regrowth of a vector of thousands of deliveries).
      size_t merged = 1, total = queue_.front().size();
      while (merged < queue_.size() &&
             total + queue_[merged].size() <= config_.ingest_batch) {
        total += queue_[merged++].size();
      }
      batch = std::move(queue_.front());
      queue_.pop_front();
      if (merged > 1) {
        batch.reserve(total);
        for (size_t k = 1; k < merged; ++k) {
          for (FeedDelivery& d : queue_.front()) batch.push_back(std::move(d));
          queue_.pop_front();
        }
      }
    }
    const size_t n = batch.size();
    const absl::Time t0 = absl::Now();
    IngestBatch(batch);
    if (feed_ != nullptr) feed_->Processed(batch);
    batch = {};  // freed here, inside the measured time
    ingest_busy_ns_.fetch_add(absl::ToInt64Nanoseconds(absl::Now() - t0),
                              std::memory_order_relaxed);
    absl::MutexLock lock(&queue_mu_);
    queued_ -= n;
    processed_ += n;
  }
}

bool CarbonAccountServiceImpl::MayReport(std::string_view owner,
                                         std::string_view event_id,
                                         const std::string& account_id) {
  // absl::string_view is not std::string_view in this abseil.
  if (reporters_.contains(absl::string_view(owner.data(), owner.size())))
    return true;
  auto it = reporter_org_.find(account_id);
  if (it == reporter_org_.end()) {
    const std::string enterprise = ledger_->EnterpriseOf(account_id);
    absl::StatusOr<v1::Account> a = ledger_->GetAccount(enterprise);
    // An unknown account is let through: the ledger quarantines it
    // (UNKNOWN_METER) or rejects it, with the reason.
    if (enterprise.empty() || !a.ok()) return true;
    it = reporter_org_.emplace(account_id, a->org()).first;
  }
  if (it->second == owner) return true;
  n_refused_.fetch_add(1, std::memory_order_relaxed);
  LogWarn(kComponent, "input refused: reported for another org's enterprise",
          {{"event", std::string(event_id)},
           {"owner", std::string(owner)},
           {"account", account_id}});
  return false;
}

void CarbonAccountServiceImpl::IngestBatch(std::vector<FeedDelivery>& batch) {
  // Readings are parsed straight from the deliveries' payload bytes (no
  // Event is built) into reading_buf_[0, n_readings): its elements are kept
  // from batch to batch, so parsing reuses their strings.
  size_t n_readings = 0;
  std::vector<ProcessInput> process;
  std::vector<std::pair<v1::ValueAdded, std::string>> values;
  std::vector<const FeedDelivery*> personal;
  // Id of the last reading or process event (the alarms' trigger).
  std::string_view last_event;
  for (const FeedDelivery& d : batch) {
    n_events_.fetch_add(1, std::memory_order_relaxed);
    if (d.type == kMeterReadingType) {
      if (n_readings == reading_buf_.size()) reading_buf_.emplace_back();
      ReadingInput& in = reading_buf_[n_readings];
      if (!d.UnpackTo(&in.reading)) {
        n_ignored_.fetch_add(1, std::memory_order_relaxed);
        LogWarn(kComponent,
                "meter reading event without a MeterReading payload",
                {{"id", std::string(d.id)}});
        continue;
      }
      if (!MayReport(d.owner, d.id, in.reading.meter_id())) continue;
      in.event_id.assign(d.id);
      last_event = d.id;
      ++n_readings;
    } else if (d.type == kProcessType) {
      ProcessInput in;
      if (!d.UnpackTo(&in.activity)) {
        n_ignored_.fetch_add(1, std::memory_order_relaxed);
        continue;
      }
      if (!MayReport(d.owner, d.id, in.activity.account_id())) continue;
      in.event_id = std::string(d.id);
      last_event = d.id;
      process.push_back(std::move(in));
    } else if (d.type == kValueAddedType) {
      v1::ValueAdded va;
      if (!d.UnpackTo(&va)) {
        n_ignored_.fetch_add(1, std::memory_order_relaxed);
        continue;
      }
      if (!MayReport(d.owner, d.id, va.account_id())) continue;
      values.emplace_back(std::move(va), std::string(d.id));
    } else {
      personal.push_back(&d);
    }
  }
  std::vector<TouchedTotal> touched;
  auto take = [&](BatchResult& r) {
    n_readings_.fetch_add(r.accounted, std::memory_order_relaxed);
    n_duplicates_.fetch_add(r.duplicates, std::memory_order_relaxed);
    n_quarantined_.fetch_add(r.quarantined, std::memory_order_relaxed);
    if (config_.publish_records && !r.records.empty())
      PublishRecords(r.records);
    for (const v1::QuarantinedReading& q : r.quarantine) {
      LogInfo(kComponent, "reading quarantined",
              {{"meter", q.reading().meter_id()},
               {"reason", v1::QuarantineReason_Name(q.reason())},
               {"detail", q.detail()}});
    }
    for (const ProcessRejection& p : r.process_rejected) {
      LogWarn(kComponent, "process activity rejected",
              {{"account", p.activity.account_id()}, {"detail", p.detail}});
    }
    for (TouchedTotal& t : r.touched) touched.push_back(std::move(t));
  };
  if (n_readings > 0) {
    BatchResult r = ledger_->AccountReadings(
        absl::MakeConstSpan(reading_buf_.data(), n_readings));
    take(r);
  }
  if (!process.empty()) {
    BatchResult r = ledger_->AccountProcess(process);
    take(r);
  }
  if (!touched.empty())
    alarms_->Evaluate(touched, std::string(last_event));
  for (const auto& [va, id] : values) HandleValueAdded(va, id);
  for (const FeedDelivery* d : personal) HandlePersonal(*d);
}

void CarbonAccountServiceImpl::HandleValueAdded(const v1::ValueAdded& va,
                                                const std::string& event_id) {
  if (absl::Status s = ledger_->SetValueAdded(va); !s.ok()) {
    n_ignored_.fetch_add(1, std::memory_order_relaxed);
    LogWarn(kComponent, "value added not recorded",
            {{"event", event_id},
             {"account", va.account_id()},
             {"error", s.ToString()}});
    return;
  }
  absl::StatusOr<absl::Time> from =
      TimestampFromProto(va.period().start(), "period.start");
  absl::StatusOr<absl::Time> to =
      TimestampFromProto(va.period().end(), "period.end");
  if (!from.ok() || !to.ok()) return;
  absl::StatusOr<std::optional<v1::Grade>> g =
      Grade(va.account_id(), Period{*from, *to}, "");
  if (!g.ok()) {
    LogWarn(kComponent, "grade not computed",
            {{"event", event_id},
             {"account", va.account_id()},
             {"error", g.status().ToString()}});
  }
}

void CarbonAccountServiceImpl::HandlePersonal(const FeedDelivery& d) {
  // Personal events are read whole (behaviour, data subject, region).
  event::v1::Event e;
  if (!d.ParseEvent(&e)) {
    n_ignored_.fetch_add(1, std::memory_order_relaxed);
    LogWarn(kComponent, "personal event does not parse",
            {{"id", std::string(d.id)}});
    return;
  }
  absl::StatusOr<std::optional<Behaviour>> b = BehaviourFromEvent(e);
  if (!b.ok()) {
    n_ignored_.fetch_add(1, std::memory_order_relaxed);
    LogWarn(kComponent, "personal event not understood",
            {{"id", e.id()}, {"error", b.status().ToString()}});
    return;
  }
  if (!b->has_value() || !credits_->HasRule((*b)->behaviour)) {
    n_ignored_.fetch_add(1, std::memory_order_relaxed);
    return;
  }
  if (d.consent_id.empty() || e.data_subject().empty()) {
    // No consent for carbon_accounting behind this delivery: never credited.
    n_uncredited_.fetch_add(1, std::memory_order_relaxed);
    return;
  }
  std::string account_id;
  if (std::optional<v1::Account> a = ledger_->FindIndividual(e.data_subject());
      a.has_value()) {
    account_id = a->account_id();
  } else {
    v1::Account acc;
    acc.set_account_id(IndividualAccountId(e.data_subject()));
    acc.set_kind(v1::ACCOUNT_KIND_INDIVIDUAL);
    acc.set_data_subject(e.data_subject());
    acc.set_name(e.data_subject());
    if (regions_.Find((*b)->region) != nullptr) acc.set_region((*b)->region);
    absl::StatusOr<v1::Account> created = ledger_->CreateAccount(acc);
    if (created.ok()) {
      account_id = created->account_id();
    } else if (std::optional<v1::Account> raced =
                   ledger_->FindIndividual(e.data_subject());
               absl::IsAlreadyExists(created.status()) && raced.has_value()) {
      // Created meanwhile (e.g. by the person's CreateAccount).
      account_id = raced->account_id();
    } else {
      // Never book into an account that is not this person's: the id may be
      // held by another account.
      LogWarn(kComponent, "individual account not created",
              {{"account", acc.account_id()},
               {"error", created.status().ToString()}});
      return;
    }
  }
  absl::StatusOr<std::optional<v1::GreenCredit>> c =
      credits_->Credit(account_id, **b, std::string(d.consent_id), e.id());
  if (!c.ok()) {
    LogWarn(kComponent, "credit not booked",
            {{"id", e.id()}, {"error", c.status().ToString()}});
    return;
  }
  if (!c->has_value()) return;  // duplicate transaction
  n_credits_.fetch_add(1, std::memory_order_relaxed);
  absl::StatusOr<std::vector<v1::IncentiveEntry>> inc =
      incentives_->OnCredit(**c);
  if (!inc.ok()) {
    LogWarn(
        kComponent, "incentive not booked",
        {{"credit", (*c)->credit_id()}, {"error", inc.status().ToString()}});
  }
}

void CarbonAccountServiceImpl::TickLoop() {
  while (true) {
    {
      absl::MutexLock lock(&state_mu_);
      auto stop = [this]() ABSL_SHARED_LOCKS_REQUIRED(state_mu_) {
        return restate_stop_;
      };
      state_mu_.AwaitWithTimeout(absl::Condition(&stop), config_.tick_interval);
      if (restate_stop_) return;
    }
    alarms_->Tick(deps_.clock->Now());
  }
}

// ---- grades
// ------------------------------------------------------------------

namespace {
// The period before `p`: the previous calendar year / month / day when `p` is
// one, else the same length just before it.
Period PreviousPeriod(const Period& p, const absl::TimeZone& tz) {
  for (v1::Granularity g :
       {v1::GRANULARITY_YEAR, v1::GRANULARITY_MONTH, v1::GRANULARITY_DAY}) {
    if (PeriodOf(p.start, g, tz) == p)
      return PeriodOf(p.start - absl::Nanoseconds(1), g, tz);
  }
  return Period{p.start - (p.end - p.start), p.start};
}
}  // namespace

absl::StatusOr<std::optional<v1::Grade>> CarbonAccountServiceImpl::Grade(
    const std::string& enterprise_id, const Period& p,
    const std::string& restatement_id, uint64_t* reversals) {
  CITYOS_ASSIGN_OR_RETURN(v1::Account account,
                          ledger_->GetAccount(enterprise_id));
  if (account.kind() != v1::ACCOUNT_KIND_ENTERPRISE) {
    return absl::InvalidArgumentError(
        absl::StrCat(enterprise_id, " is not an enterprise"));
  }
  const Benchmark* bm = benchmarks_->Find(account.industry_code());
  if (bm == nullptr) {
    return absl::FailedPreconditionError(
        absl::StrCat("no benchmark for industry \"", account.industry_code(),
                     "\" of ", enterprise_id));
  }
  std::optional<double> va = ledger_->ValueAdded(enterprise_id, p);
  if (!va.has_value()) return std::optional<v1::Grade>();
  GradeInput in;
  in.account_id = enterprise_id;
  in.period = p;
  in.emissions_kg = ledger_->TotalKg(enterprise_id, false, p.start, p.end);
  in.value_added_10k_yuan = *va;
  // A period without a single accounted kilogram is not graded: K = 0 would
  // read as the best grade when the truth is that nothing was measured.
  if (in.emissions_kg <= 0) {
    LogWarn(kComponent, "not graded: no emissions accounted for the period",
            {{"account", enterprise_id},
             {"period", absl::FormatTime("%Y-%m-%d", p.start, tz_)}});
    return std::optional<v1::Grade>();
  }
  // Region dimension: intensity of the enterprises of the same region with a
  // value added for the period (when there are others).
  {
    v1::ListAccountsRequest lr;
    lr.set_kind(v1::ACCOUNT_KIND_ENTERPRISE);
    lr.set_region(account.region());
    lr.set_page_size(1000);
    double kg = 0, value = 0;
    int n = 0;
    while (true) {
      absl::StatusOr<v1::ListAccountsResponse> page =
          ledger_->ListAccounts(lr, nullptr);
      if (!page.ok()) break;
      for (const v1::Account& e : page->accounts()) {
        std::optional<double> v = ledger_->ValueAdded(e.account_id(), p);
        if (!v.has_value() || *v <= 0) continue;
        kg += ledger_->TotalKg(e.account_id(), false, p.start, p.end);
        value += *v;
        ++n;
      }
      if (page->next_page_token().empty()) break;
      lr.set_page_token(page->next_page_token());
    }
    if (n >= 2 && value > 0 && kg > 0) {
      v1::DimensionScore d;
      d.set_reference(kg / 1000.0 / value);
      d.set_reference_version(
          absl::StrCat("region ", account.region(), " ",
                       absl::FormatTime("%Y-%m-%d", p.start, tz_), " (", n,
                       " enterprises)"));
      in.region_reference = d;
    }
  }
  // History dimension: the enterprise's own previous period.
  {
    const Period prev = PreviousPeriod(p, tz_);
    std::optional<double> pva = ledger_->ValueAdded(enterprise_id, prev);
    const double pkg =
        ledger_->TotalKg(enterprise_id, false, prev.start, prev.end);
    if (pva.has_value() && *pva > 0 && pkg > 0) {
      v1::DimensionScore d;
      d.set_reference(pkg / 1000.0 / *pva);
      d.set_reference_version(absl::StrCat(
          "history ", absl::FormatTime("%Y-%m-%d", prev.start, tz_)));
      in.history_reference = d;
    }
  }
  CITYOS_ASSIGN_OR_RETURN(v1::Grade g,
                          ComputeGrade(in, *bm, config_.thresholds));
  const absl::Time now = deps_.clock->Now();
  g.set_grade_id(UuidToString(NewUuidV7At(now)));
  TimestampToProto(now, g.mutable_compute_time());
  g.set_restatement_id(restatement_id);
  CITYOS_RETURN_IF_ERROR(StoreGrade(g));
  if (absl::Status s = ledger_->SetGrade(g); !s.ok()) {
    LogWarn(kComponent, "grade not given to the ledger",
            {{"error", s.ToString()}});
  }
  n_grades_.fetch_add(1);
  PublishPayload("carbon.grade", account.region(), g);
  absl::StatusOr<std::vector<v1::IncentiveEntry>> entries =
      incentives_->OnGrade(g);
  if (!entries.ok()) {
    LogWarn(kComponent, "loan tier not booked",
            {{"grade", g.grade_id()}, {"error", entries.status().ToString()}});
  } else {
    for (const v1::IncentiveEntry& e : *entries) {
      if (!e.reverses_entry_id().empty() && reversals != nullptr) ++*reversals;
    }
  }
  return std::optional<v1::Grade>(std::move(g));
}

// ---- service store
// -------------------------------------------------------------

absl::Status CarbonAccountServiceImpl::OpenStore(const std::string& path) {
  if (sqlite3_open_v2(path.c_str(), &db_,
                      SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE,
                      nullptr) != SQLITE_OK) {
    absl::Status s = absl::FailedPreconditionError(absl::StrCat(
        path,
        ": cannot be opened: ", db_ ? sqlite3_errmsg(db_) : "out of memory"));
    sqlite3_close(db_);
    db_ = nullptr;
    return s;
  }
  CITYOS_RETURN_IF_ERROR(
      Exec(db_, "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;"));
  CITYOS_RETURN_IF_ERROR(
      Exec(db_,
           "CREATE TABLE IF NOT EXISTS grades (grade_id TEXT PRIMARY KEY, "
           "account_id TEXT NOT NULL, grade BLOB NOT NULL);"
           "CREATE TABLE IF NOT EXISTS restatements (restatement_id TEXT "
           "PRIMARY KEY, restatement BLOB NOT NULL);"));
  absl::MutexLock lock(&state_mu_);
  {
    SqliteStmt q(db_, "SELECT grade FROM grades", "service.db");
    CITYOS_RETURN_IF_ERROR(q.ForEachRow([&]() -> absl::Status {
      v1::Grade g;
      if (!g.ParseFromString(q.ColBlob(0)))
        return absl::DataLossError("service.db: bad grade row");
      grades_[g.grade_id()] = std::move(g);
      return absl::OkStatus();
    }));
  }
  {
    SqliteStmt q(db_, "SELECT restatement FROM restatements", "service.db");
    CITYOS_RETURN_IF_ERROR(q.ForEachRow([&]() -> absl::Status {
      v1::Restatement r;
      if (!r.ParseFromString(q.ColBlob(0))) {
        return absl::DataLossError("service.db: bad restatement row");
      }
      // Interrupted by a restart: run again (the ledger's Restate is atomic).
      if (r.state() == v1::RESTATEMENT_STATE_PENDING ||
          r.state() == v1::RESTATEMENT_STATE_RUNNING) {
        r.set_state(v1::RESTATEMENT_STATE_PENDING);
        restate_queue_.push_back(r.restatement_id());
      }
      restatements_[r.restatement_id()] = std::move(r);
      return absl::OkStatus();
    }));
  }
  return absl::OkStatus();
}

absl::Status CarbonAccountServiceImpl::StoreGrade(const v1::Grade& g) {
  absl::MutexLock lock(&state_mu_);
  SqliteStmt q(db_,
               "INSERT OR REPLACE INTO grades (grade_id, account_id, grade) "
               "VALUES (?, ?, ?)",
               "service.db");
  CITYOS_RETURN_IF_ERROR(q.status());
  CITYOS_RETURN_IF_ERROR(q.Bind(1, g.grade_id())
                             .Bind(2, g.account_id())
                             .BindBlob(3, g.SerializeAsString())
                             .Run());
  grades_[g.grade_id()] = g;
  return absl::OkStatus();
}

absl::Status CarbonAccountServiceImpl::StoreRestatementLocked(
    const v1::Restatement& r) {
  SqliteStmt q(db_,
               "INSERT OR REPLACE INTO restatements (restatement_id, "
               "restatement) VALUES (?, ?)",
               "service.db");
  CITYOS_RETURN_IF_ERROR(q.status());
  CITYOS_RETURN_IF_ERROR(
      q.Bind(1, r.restatement_id()).BindBlob(2, r.SerializeAsString()).Run());
  restatements_[r.restatement_id()] = r;
  return absl::OkStatus();
}

// ---- restatements
// ----------------------------------------------------------------

void CarbonAccountServiceImpl::RestateLoop() {
  while (true) {
    v1::Restatement r;
    {
      absl::MutexLock lock(&state_mu_);
      auto ready = [this]() ABSL_SHARED_LOCKS_REQUIRED(state_mu_) {
        return restate_stop_ || !restate_queue_.empty();
      };
      state_mu_.Await(absl::Condition(&ready));
      if (restate_stop_) return;
      const std::string id = restate_queue_.front();
      restate_queue_.pop_front();
      auto it = restatements_.find(id);
      if (it == restatements_.end()) continue;
      it->second.set_state(v1::RESTATEMENT_STATE_RUNNING);
      if (absl::Status s = StoreRestatementLocked(it->second); !s.ok()) {
        LogWarn(kComponent, "restatement state not stored",
                {{"error", s.ToString()}});
      }
      r = it->second;
    }
    RunRestatement(std::move(r));
  }
}

void CarbonAccountServiceImpl::RunRestatement(v1::Restatement r) {
  LogInfo(kComponent, "restatement running",
          {{"id", r.restatement_id()}, {"reason", r.reason()}});
  absl::StatusOr<absl::Time> from =
      TimestampFromProto(r.period().start(), "period.start");
  absl::StatusOr<absl::Time> to =
      TimestampFromProto(r.period().end(), "period.end");
  absl::Status status = from.ok() ? to.status() : from.status();
  std::vector<std::string> accounts(r.account_ids().begin(),
                                    r.account_ids().end());
  std::vector<std::string> factor_ids(r.factor_ids().begin(),
                                      r.factor_ids().end());
  if (status.ok()) {
    absl::StatusOr<CarbonLedger::RestateResult> res = ledger_->Restate(
        r.restatement_id(), accounts, r.region(), *from, *to, factor_ids);
    if (!res.ok()) {
      status = res.status();
    } else {
      r.set_records(res->records);
      r.set_delta_kg(res->delta_kg);
      // Grades of the affected enterprises whose period overlaps the restated
      // one are recomputed (restatement_id set); incentives follow.
      std::vector<std::pair<std::string, Period>> regrade;
      {
        absl::MutexLock lock(&state_mu_);
        for (const auto& [id, g] : grades_) {
          if (!std::binary_search(res->enterprises.begin(),
                                  res->enterprises.end(), g.account_id())) {
            continue;
          }
          const absl::Time gs = ToAbslTime(g.period().start());
          const absl::Time ge = ToAbslTime(g.period().end());
          if (gs < *to && *from < ge) {
            std::pair<std::string, Period> key{g.account_id(), Period{gs, ge}};
            if (std::find(regrade.begin(), regrade.end(), key) ==
                regrade.end()) {
              regrade.push_back(std::move(key));
            }
          }
        }
      }
      uint64_t reversals = 0;
      for (const auto& [account, period] : regrade) {
        absl::StatusOr<std::optional<v1::Grade>> g =
            Grade(account, period, r.restatement_id(), &reversals);
        if (!g.ok()) {
          LogWarn(kComponent, "grade not recomputed after restatement",
                  {{"account", account}, {"error", g.status().ToString()}});
        }
      }
      r.set_reversals(reversals);
    }
  }
  r.set_state(status.ok() ? v1::RESTATEMENT_STATE_DONE
                          : v1::RESTATEMENT_STATE_FAILED);
  if (!status.ok()) r.set_error(status.ToString());
  TimestampToProto(deps_.clock->Now(), r.mutable_finish_time());
  absl::MutexLock lock(&state_mu_);
  if (absl::Status s = StoreRestatementLocked(r); !s.ok()) {
    LogWarn(kComponent, "restatement state not stored",
            {{"error", s.ToString()}});
  }
  LogInfo(kComponent, "restatement finished",
          {{"id", r.restatement_id()},
           {"state", v1::RestatementState_Name(r.state())},
           {"records", std::to_string(r.records())},
           {"error", r.error()}});
}

// ---- publishing
// -------------------------------------------------------------------

std::string CarbonAccountServiceImpl::SubjectFor(
    std::string_view prefix, std::string_view region) const {
  std::string suffix = regions_.SubjectSuffix(region);
  if (suffix.empty()) suffix = "unknown.all";
  return absl::StrCat(std::string(prefix), ".", suffix);
}

absl::StatusOr<event::v1::Event> CarbonAccountServiceImpl::OutputEvent(
    std::string_view prefix, const std::string& region,
    const google::protobuf::Message& payload) const {
  EventBuilder b(deps_.clock);
  b.Source("//carbon-office/carbon")
      .Subject(SubjectFor(prefix, region))
      .Classification(event::v1::CLASSIFICATION_INTERNAL)
      .Owner(deps_.self.org)
      .ProtoData(payload);
  if (regions_.Find(region) != nullptr) b.Region(region);
  return std::move(b).Build();
}

void CarbonAccountServiceImpl::PublishPayload(
    std::string_view prefix, const std::string& region,
    const google::protobuf::Message& payload) {
  absl::StatusOr<event::v1::Event> e = OutputEvent(prefix, region, payload);
  if (!e.ok()) {
    LogWarn(kComponent, "output event not built",
            {{"error", e.status().ToString()}});
    return;
  }
  std::vector<event::v1::Event> events;
  events.push_back(*std::move(e));
  absl::StatusOr<std::vector<PublishResult>> r =
      deps_.bus->Publish(deps_.self, std::move(events));
  if (!r.ok()) {
    LogWarn(
        kComponent, "output not published",
        {{"subject", std::string(prefix)}, {"error", r.status().ToString()}});
  }
}

void CarbonAccountServiceImpl::PublishRecords(
    const std::vector<v1::EmissionRecord>& records) {
  std::vector<event::v1::Event> events;
  events.reserve(records.size());
  for (const v1::EmissionRecord& rec : records) {
    absl::StatusOr<event::v1::Event> e =
        OutputEvent("carbon.emission", rec.region(), rec);
    if (e.ok()) events.push_back(*std::move(e));
  }
  if (events.empty()) return;
  absl::StatusOr<std::vector<PublishResult>> r =
      deps_.bus->Publish(deps_.self, std::move(events));
  if (!r.ok()) {
    // Logged once per failing batch (e.g. the policy does not let the
    // service publish): the figures are kept either way.
    LogWarn(kComponent, "emission records not published",
            {{"error", r.status().ToString()}});
  }
}

void CarbonAccountServiceImpl::PublishAlarm(v1::AlarmChangeKind kind,
                                            const v1::Alarm& alarm) {
  if (watchers_ != nullptr) watchers_->Publish(kind, alarm);
  PublishPayload("carbon.alarm", alarm.region(), alarm);
}

}  // namespace cityos::carbon
