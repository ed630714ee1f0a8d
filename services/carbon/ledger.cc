// The carbon ledger: accounts, the ingest hot path (readings and process
// activities -> emission records, quarantine, aggregates), factor caches,
// aggregate tiers and reopening from ledger.db. Queries, rankings and
// restatements are in ledger_query.cc, the SQLite writer in ledger_store.cc.
#include "ledger.h"

#include <algorithm>
#include <cmath>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "cityos/logging.h"
#include "cityos/proto_time.h"
#include "cityos/status.h"
#include "ledger_impl.h"
#include "sqlite_util.h"
#include "units.h"

namespace cityos::carbon {

using infobank::SqliteStmt;

std::string FormatTime(int64_t ns) {
  return absl::FormatTime("%Y-%m-%dT%H:%M:%E*SZ", absl::FromUnixNanos(ns),
                          absl::UTCTimeZone());
}

void SetTimestampNs(int64_t ns, google::protobuf::Timestamp* ts) {
  ts->set_seconds(FloorDiv(ns, 1'000'000'000));
  ts->set_nanos(
      static_cast<int32_t>(ns - FloorDiv(ns, 1'000'000'000) * 1'000'000'000));
}

namespace {

constexpr int64_t kMinSeconds = -62135596800;  // 0001-01-01
constexpr int64_t kMaxSeconds = 253402300799;  // 9999-12-31
// Beyond int64 nanoseconds: 1677..2262.
constexpr int64_t kMinNsSeconds = -9223372036LL + 1;
constexpr int64_t kMaxNsSeconds = 9223372036LL - 1;

// Nanoseconds of a proto timestamp, or false when out of range.
bool TsNanos(const google::protobuf::Timestamp& ts, int64_t* out) {
  if (ts.seconds() < kMinSeconds || ts.seconds() > kMaxSeconds ||
      ts.nanos() < 0 || ts.nanos() > 999999999) {
    return false;
  }
  if (ts.seconds() < kMinNsSeconds || ts.seconds() > kMaxNsSeconds)
    return false;
  *out = ts.seconds() * 1'000'000'000 + ts.nanos();
  return true;
}

bool ValidId(std::string_view id) {
  if (id.empty() || id.size() > 128) return false;
  for (char c : id) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
              (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '/' ||
              c == '-';
    if (!ok) return false;
  }
  return true;
}

std::string DurationText(int64_t ns) {
  return absl::FormatDuration(absl::Nanoseconds(ns));
}

std::string NumText(double v) { return absl::StrFormat("%.10g", v); }

}  // namespace

// ---------------------------------------------------------------------------
// CarbonLedger: forwarding.

CarbonLedger::CarbonLedger(std::unique_ptr<Impl> impl)
    : impl_(std::move(impl)) {}
CarbonLedger::~CarbonLedger() = default;

absl::StatusOr<std::unique_ptr<CarbonLedger>> CarbonLedger::Open(
    const std::string& dir, const RegionTree* regions, FactorRegistry* factors,
    Clock* clock, LedgerOptions options) {
  if (regions == nullptr || factors == nullptr || clock == nullptr) {
    return absl::InvalidArgumentError(
        "CarbonLedger::Open: regions, factors and clock are required");
  }
  CITYOS_ASSIGN_OR_RETURN(
      std::unique_ptr<LedgerStore> store,
      LedgerStore::Open(dir + "/ledger.db", options.full_sync,
                        options.writer_batch, options.max_queued_rows));
  auto impl =
      std::make_unique<Impl>(regions, factors, clock, std::move(options));
  CITYOS_RETURN_IF_ERROR(impl->Load(std::move(store)));
  return std::unique_ptr<CarbonLedger>(new CarbonLedger(std::move(impl)));
}

absl::StatusOr<v1::Account> CarbonLedger::CreateAccount(v1::Account account) {
  return impl_->CreateAccount(std::move(account));
}
absl::StatusOr<v1::Account> CarbonLedger::GetAccount(
    std::string_view id) const {
  return impl_->GetAccount(id);
}
uint32_t CarbonLedger::ChildCount(std::string_view id) const {
  return impl_->ChildCount(id);
}
absl::StatusOr<v1::ListAccountsResponse> CarbonLedger::ListAccounts(
    const v1::ListAccountsRequest& req,
    const std::function<bool(const v1::Account&)>& visible) const {
  return impl_->ListAccounts(req, visible);
}
std::optional<v1::Account> CarbonLedger::FindIndividual(
    std::string_view data_subject) const {
  return impl_->FindIndividual(data_subject);
}
std::string CarbonLedger::EnterpriseOf(std::string_view account_id) const {
  return impl_->EnterpriseOf(account_id);
}
std::string CarbonLedger::RegionOf(std::string_view account_id) const {
  return impl_->RegionOf(account_id);
}
bool CarbonLedger::AccountCovers(std::string_view ancestor,
                                 std::string_view account_id) const {
  return impl_->AccountCovers(ancestor, account_id);
}
BatchResult CarbonLedger::AccountReadings(
    absl::Span<const ReadingInput> readings) {
  return impl_->AccountReadings(readings);
}
BatchResult CarbonLedger::AccountProcess(
    absl::Span<const ProcessInput> entries) {
  return impl_->AccountProcess(entries);
}
absl::StatusOr<std::vector<v1::EmissionTotal>> CarbonLedger::Emissions(
    std::string_view account_id, v1::Granularity g, absl::Time from,
    absl::Time to, bool as_reported) const {
  return impl_->Emissions(account_id, g, from, to, as_reported);
}
absl::StatusOr<std::vector<v1::EmissionTotal>> CarbonLedger::RegionEmissions(
    std::string_view region, v1::Granularity g, absl::Time from, absl::Time to,
    bool as_reported) const {
  return impl_->RegionEmissions(region, g, from, to, as_reported);
}
absl::StatusOr<v1::GetIndustryEmissionsResponse>
CarbonLedger::IndustryEmissions(const v1::GetIndustryEmissionsRequest& r,
                                absl::Time from, absl::Time to) const {
  return impl_->IndustryEmissions(r, from, to);
}
absl::StatusOr<v1::GetRankingResponse> CarbonLedger::Ranking(
    const v1::GetRankingRequest& r) const {
  return impl_->Ranking(r);
}
absl::StatusOr<v1::ListEmissionRecordsResponse> CarbonLedger::ListRecords(
    const v1::ListEmissionRecordsRequest& r) const {
  return impl_->ListRecords(r);
}
absl::StatusOr<v1::ListQuarantinedReadingsResponse>
CarbonLedger::ListQuarantine(
    const v1::ListQuarantinedReadingsRequest& r) const {
  return impl_->ListQuarantine(r);
}
std::vector<v1::Attribution> CarbonLedger::Contributors(std::string_view target,
                                                        bool is_region,
                                                        absl::Time from,
                                                        absl::Time to,
                                                        size_t limit) const {
  return impl_->Contributors(target, is_region, from, to, limit);
}
double CarbonLedger::TotalKg(std::string_view target, bool is_region,
                             absl::Time from, absl::Time to) const {
  return impl_->TotalKg(target, is_region, from, to);
}
absl::Status CarbonLedger::SetValueAdded(const v1::ValueAdded& v) {
  return impl_->SetValueAdded(v);
}
std::optional<double> CarbonLedger::ValueAdded(std::string_view enterprise_id,
                                               Period p) const {
  return impl_->ValueAdded(enterprise_id, p);
}
absl::Status CarbonLedger::SetGrade(const v1::Grade& g) {
  return impl_->SetGrade(g);
}
std::optional<v1::Grade> CarbonLedger::GradeFor(std::string_view enterprise_id,
                                                Period p) const {
  return impl_->GradeFor(enterprise_id, p);
}
absl::StatusOr<CarbonLedger::RestateResult> CarbonLedger::Restate(
    const std::string& restatement_id,
    const std::vector<std::string>& account_ids, const std::string& region,
    absl::Time from, absl::Time to,
    const std::vector<std::string>& factor_ids) {
  return impl_->Restate(restatement_id, account_ids, region, from, to,
                        factor_ids);
}
absl::Status CarbonLedger::Flush() { return impl_->Flush(); }

// ---------------------------------------------------------------------------
// Impl: construction and reopening.

CarbonLedger::Impl::Impl(const RegionTree* regions, FactorRegistry* factors,
                         Clock* clock, LedgerOptions options)
    : regions_(regions),
      factors_(factors),
      clock_(clock),
      opt_(std::move(options)) {
  const auto& all = regions_->all();
  for (size_t i = 0; i < all.size(); ++i) {
    region_idx_[all[i].code] = static_cast<int32_t>(i);
    region_targets_.push_back(std::make_unique<Target>());
  }
  hourly_days_[0] = std::max(1, opt_.hourly_days);
  daily_days_[0] = std::max(hourly_days_[0], opt_.daily_days);
  hourly_days_[1] = std::max(1, opt_.meter_hourly_days);
  daily_days_[1] = std::max(hourly_days_[1], opt_.meter_daily_days);
}

int32_t CarbonLedger::Impl::RegionIdx(std::string_view code) const {
  auto it = region_idx_.find(AV(code));
  return it == region_idx_.end() ? -1 : it->second;
}

absl::Status CarbonLedger::Impl::Load(std::unique_ptr<LedgerStore> store) {
  store_ = std::move(store);
  absl::MutexLock l(&mu_);
  loading_ = true;
  const std::string& path = store_->path();
  auto err = [&path](std::string_view what, const absl::Status& s) {
    return absl::InternalError(
        absl::StrCat(path, ": loading ", AV(what), ": ", s.message()));
  };
  // Accounts, in creation order (parents before children).
  absl::Status st = store_->WithDb([&](sqlite3* db) -> absl::Status {
    SqliteStmt q(db, "SELECT idx, account FROM accounts ORDER BY idx",
                 "accounts");
    CITYOS_RETURN_IF_ERROR(q.ForEachRow([&]() -> absl::Status {
      v1::Account a;
      if (!a.ParseFromString(q.ColBlob(1)))
        return absl::DataLossError("unparsable account");
      if (q.ColInt(0) != static_cast<int64_t>(accounts_.size())) {
        return absl::DataLossError(
            absl::StrCat("account index gap at ", q.ColInt(0)));
      }
      AddNode(std::move(a));
      return absl::OkStatus();
    }));
    SqliteStmt f(db, "SELECT idx, ref FROM factor_refs ORDER BY idx",
                 "factor_refs");
    CITYOS_RETURN_IF_ERROR(f.ForEachRow([&]() -> absl::Status {
      v1::FactorRef ref;
      if (!ref.ParseFromString(f.ColBlob(1)))
        return absl::DataLossError("unparsable factor ref");
      size_t idx = static_cast<size_t>(f.ColInt(0));
      if (refs_.size() <= idx) refs_.resize(idx + 1);
      ref_idx_[ref.factor_id()] = static_cast<uint32_t>(idx);
      refs_[idx] = std::move(ref);
      return absl::OkStatus();
    }));
    // Records: as-reported figures, dedup keys, process keys.
    SqliteStmt r(db,
                 "SELECT id, account, enterprise, start_ns, end_ns, "
                 "energy_kind, scope, reading_kind, value, "
                 "activity, kg, market_kg, activity_key FROM records WHERE "
                 "restatement_id = ''",
                 "records");
    size_t n = 0;
    CITYOS_RETURN_IF_ERROR(r.ForEachRow([&]() -> absl::Status {
      RecordRow rr;
      ReadRecordFigures(r.get(), &rr);
      if (rr.account >= accounts_.size())
        return absl::DataLossError(
            absl::StrCat("record ", rr.id, ": bad account"));
      next_record_id_ = std::max(next_record_id_, rr.id + 1);
      AddRecordToAggregates(rr, true);
      AccountNode& node = *accounts_[rr.account];
      if (rr.energy_kind != 0 && node.meter) {
        MeterCtx& m = *node.meter;
        DedupKey key = rr.reading_kind == v1::READING_KIND_CUMULATIVE
                           ? DedupKey{rr.end_ns, rr.end_ns}
                           : DedupKey{rr.start_ns, rr.end_ns};
        m.seen[key] = rr.value;
        m.newest_end_ns = std::max(m.newest_end_ns, rr.end_ns);
        if (m.seen.size() >= m.sweep_at) SweepDedup(m);
      } else if (rr.energy_kind == 0) {
        std::string key = absl::StrCat(node.a.account_id(), "|", r.ColText(12),
                                       "|", rr.start_ns, "|", rr.end_ns);
        process_seen_[key] = rr.activity;
      }
      if (++n % (1 << 20) == 0) Fold();
      return absl::OkStatus();
    }));
    // Restated figures: current minus as reported.
    SqliteStmt d(db,
                 "SELECT n.id, n.account, n.enterprise, n.start_ns, n.end_ns, "
                 "n.energy_kind, n.scope, "
                 "n.kg - o.kg, n.market_kg - o.market_kg FROM records n JOIN "
                 "records o ON o.enterprise = n.enterprise "
                 "AND o.start_ns = n.start_ns AND o.id = n.orig "
                 "WHERE n.current = 1 AND n.restatement_id != ''",
                 "restated records");
    CITYOS_RETURN_IF_ERROR(d.ForEachRow([&]() -> absl::Status {
      next_record_id_ = std::max(next_record_id_, d.ColInt(0) + 1);
      RecordRow rr;
      rr.account = static_cast<uint32_t>(d.ColInt(1));
      rr.enterprise = static_cast<uint32_t>(d.ColInt(2));
      rr.start_ns = d.ColInt(3);
      rr.end_ns = d.ColInt(4);
      rr.energy_kind = static_cast<int32_t>(d.ColInt(5));
      rr.scope = static_cast<int32_t>(d.ColInt(6));
      rr.kg = sqlite3_column_double(d.get(), 7);
      rr.market_kg = sqlite3_column_double(d.get(), 8);
      if (rr.account >= accounts_.size())
        return absl::DataLossError("restated record: bad account");
      AddRecordToAggregates(rr, false);
      return absl::OkStatus();
    }));
    SqliteStmt mx(db, "SELECT COALESCE(MAX(id), 0) FROM records", "records");
    CITYOS_ASSIGN_OR_RETURN(bool has, mx.Next());
    if (has) next_record_id_ = std::max(next_record_id_, mx.ColInt(0) + 1);
    // Quarantine counts.
    SqliteStmt qq(db, "SELECT id, account, hour FROM quarantine", "quarantine");
    CITYOS_RETURN_IF_ERROR(qq.ForEachRow([&]() -> absl::Status {
      next_quarantine_id_ = std::max(next_quarantine_id_, qq.ColInt(0) + 1);
      int64_t acc = qq.ColInt(1);
      if (acc >= 0 && static_cast<size_t>(acc) < accounts_.size())
        CountQuarantine(static_cast<uint32_t>(acc), qq.ColInt(2));
      return absl::OkStatus();
    }));
    // Cumulative registers.
    SqliteStmt ms(db, "SELECT account, reg_ns, reg_value FROM meter_state",
                  "meter_state");
    CITYOS_RETURN_IF_ERROR(ms.ForEachRow([&]() -> absl::Status {
      int64_t acc = ms.ColInt(0);
      if (acc < 0 || static_cast<size_t>(acc) >= accounts_.size() ||
          !accounts_[acc]->meter)
        return absl::OkStatus();
      MeterCtx& m = *accounts_[acc]->meter;
      m.has_register = true;
      m.reg_ns = ms.ColInt(1);
      m.reg_value = sqlite3_column_double(ms.get(), 2);
      return absl::OkStatus();
    }));
    // Value added and grades.
    SqliteStmt va(db,
                  "SELECT enterprise, start_ns, end_ns, value FROM value_added",
                  "value_added");
    CITYOS_RETURN_IF_ERROR(va.ForEachRow([&]() -> absl::Status {
      value_added_[{va.ColText(0), {va.ColInt(1), va.ColInt(2)}}] =
          sqlite3_column_double(va.get(), 3);
      return absl::OkStatus();
    }));
    SqliteStmt gr(db, "SELECT enterprise, start_ns, end_ns, grade FROM grades",
                  "grades");
    CITYOS_RETURN_IF_ERROR(gr.ForEachRow([&]() -> absl::Status {
      v1::Grade g;
      if (!g.ParseFromString(gr.ColBlob(3)))
        return absl::DataLossError("unparsable grade");
      grades_[{gr.ColText(0), {gr.ColInt(1), gr.ColInt(2)}}] = std::move(g);
      return absl::OkStatus();
    }));
    return absl::OkStatus();
  });
  if (!st.ok()) return err("state", st);
  for (auto& node : accounts_) {
    if (node->meter) SweepDedup(*node->meter);
  }
  Fold();
  loading_ = false;
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------
// Accounts.

const AccountNode* CarbonLedger::Impl::Find(std::string_view id) const {
  auto it = ids_.find(AV(id));
  return it == ids_.end() ? nullptr : accounts_[it->second].get();
}

absl::Status CarbonLedger::Impl::ValidateAccount(const v1::Account& a) const {
  if (!ValidId(a.account_id())) {
    return absl::InvalidArgumentError(
        absl::StrCat("account_id '", a.account_id(),
                     "': must be 1-128 characters of [A-Za-z0-9._/-]"));
  }
  if (Find(a.account_id()) != nullptr) {
    return absl::AlreadyExistsError(
        absl::StrCat("account '", a.account_id(), "' already exists"));
  }
  const v1::AccountKind kind = a.kind();
  if (kind == v1::ACCOUNT_KIND_UNSPECIFIED || !v1::AccountKind_IsValid(kind)) {
    return absl::InvalidArgumentError(
        absl::StrCat("account '", a.account_id(), "': kind is not set"));
  }
  const bool root = kind == v1::ACCOUNT_KIND_ENTERPRISE ||
                    kind == v1::ACCOUNT_KIND_INDIVIDUAL;
  if (root && !a.parent_id().empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "account '", a.account_id(), "': ", v1::AccountKind_Name(kind),
        " must not have a parent_id"));
  }
  if (!root) {
    if (a.parent_id().empty()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "account '", a.account_id(), "': ", v1::AccountKind_Name(kind),
          " needs a parent_id"));
    }
    const AccountNode* p = Find(a.parent_id());
    if (p == nullptr)
      return absl::NotFoundError(
          absl::StrCat("parent account '", a.parent_id(), "' not found"));
    const v1::AccountKind pk = p->a.kind();
    bool ok =
        (kind == v1::ACCOUNT_KIND_SITE && pk == v1::ACCOUNT_KIND_ENTERPRISE) ||
        (kind == v1::ACCOUNT_KIND_LINE && pk == v1::ACCOUNT_KIND_SITE) ||
        (kind == v1::ACCOUNT_KIND_METER &&
         (pk == v1::ACCOUNT_KIND_LINE || pk == v1::ACCOUNT_KIND_SITE ||
          pk == v1::ACCOUNT_KIND_ENTERPRISE));
    if (!ok) {
      return absl::InvalidArgumentError(
          absl::StrCat("account '", a.account_id(), "': a ",
                       v1::AccountKind_Name(kind), " cannot hang under the ",
                       v1::AccountKind_Name(pk), " '", a.parent_id(), "'"));
    }
  }
  if (!a.region().empty() && regions_->Find(a.region()) == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat("account '", a.account_id(),
                                                   "': region '", a.region(),
                                                   "' is not a known region"));
  }
  if (kind == v1::ACCOUNT_KIND_ENTERPRISE && a.region().empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("enterprise '", a.account_id(), "': region is required"));
  }
  if (kind == v1::ACCOUNT_KIND_INDIVIDUAL) {
    if (a.data_subject().empty()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "individual '", a.account_id(), "': data_subject is required"));
    }
    if (individuals_.contains(a.data_subject())) {
      return absl::AlreadyExistsError(
          absl::StrCat("an individual account for data subject '",
                       a.data_subject(), "' already exists"));
    }
  }
  if (kind == v1::ACCOUNT_KIND_METER) {
    if (!a.has_meter()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "meter '", a.account_id(), "': meter (MeterSpec) is required"));
    }
    const v1::MeterSpec& m = a.meter();
    if (m.energy_kind() == v1::ENERGY_KIND_UNSPECIFIED ||
        !v1::EnergyKind_IsValid(m.energy_kind())) {
      return absl::InvalidArgumentError(absl::StrCat(
          "meter '", a.account_id(), "': meter.energy_kind is not set"));
    }
    if (!UnitAccepted(m.energy_kind(), m.unit())) {
      std::string accepted;
      for (std::string_view u : AcceptedUnits(m.energy_kind()))
        absl::StrAppend(&accepted, accepted.empty() ? "" : ", ", AV(u));
      return absl::InvalidArgumentError(absl::StrCat(
          "meter '", a.account_id(), "': unit '", m.unit(),
          "' is not accepted for ", AV(EnergyKindName(m.energy_kind())), " (",
          accepted, ")"));
    }
    if (!(m.max_per_hour() >= 0) || !std::isfinite(m.max_per_hour())) {
      return absl::InvalidArgumentError(
          absl::StrCat("meter '", a.account_id(), "': meter.max_per_hour ",
                       NumText(m.max_per_hour()), " must be >= 0"));
    }
  } else if (a.has_meter()) {
    return absl::InvalidArgumentError(
        absl::StrCat("account '", a.account_id(),
                     "': meter is only allowed on METER accounts"));
  }
  // `person/<data subject>` is where a person's credits and incentives are
  // booked (CarbonAccountServiceImpl's ingest): such an id belongs only to
  // that person's individual account, or another account would receive them
  // (and its owner read them).
  constexpr absl::string_view kPerson = "person/";
  if (absl::StartsWith(a.account_id(), kPerson) &&
      (kind != v1::ACCOUNT_KIND_INDIVIDUAL ||
       a.account_id() != absl::StrCat(kPerson, a.data_subject()))) {
    return absl::InvalidArgumentError(absl::StrCat(
        "account '", a.account_id(), "': ids under '", kPerson,
        "' are reserved for the individual account of that data subject"));
  }
  return absl::OkStatus();
}

uint32_t CarbonLedger::Impl::AddNode(v1::Account a) {
  auto node = std::make_unique<AccountNode>();
  uint32_t idx = static_cast<uint32_t>(accounts_.size());
  auto pit = a.parent_id().empty() ? ids_.end() : ids_.find(a.parent_id());
  if (pit != ids_.end()) {
    node->parent = static_cast<int32_t>(pit->second);
    AccountNode& p = *accounts_[pit->second];
    p.children.push_back(idx);
    node->enterprise = p.enterprise;
    node->site = p.site;
    node->line = p.line;
  }
  switch (a.kind()) {
    case v1::ACCOUNT_KIND_ENTERPRISE:
      node->enterprise = static_cast<int32_t>(idx);
      break;
    case v1::ACCOUNT_KIND_SITE:
      node->site = static_cast<int32_t>(idx);
      break;
    case v1::ACCOUNT_KIND_LINE:
      node->line = static_cast<int32_t>(idx);
      break;
    default:
      break;
  }
  for (const std::string& code : regions_->Ancestry(a.region())) {
    int32_t r = RegionIdx(code);
    if (r >= 0) node->region_chain.push_back(static_cast<uint32_t>(r));
  }
  if (a.kind() == v1::ACCOUNT_KIND_INDIVIDUAL)
    individuals_[a.data_subject()] = idx;
  ids_[a.account_id()] = idx;
  node->a = std::move(a);
  accounts_.push_back(std::move(node));
  if (accounts_[idx]->a.kind() == v1::ACCOUNT_KIND_METER) {
    accounts_[idx]->agg.reported.cls = 1;
    BuildMeterCtx(*accounts_[idx]);
  }
  return idx;
}

void CarbonLedger::Impl::BuildMeterCtx(AccountNode& node) {
  auto m = std::make_unique<MeterCtx>();
  const v1::MeterSpec& spec = node.a.meter();
  m->kind = spec.energy_kind();
  m->unit = spec.unit();
  {
    std::string_view cu = CanonicalUnit(m->kind, m->unit);
    m->canonical_unit.assign(cu.data(), cu.size());
  }
  absl::StatusOr<double> one = ToCanonical(m->kind, m->unit, 1.0);
  m->to_canonical = one.ok() ? *one : 1.0;
  m->max_per_hour = spec.max_per_hour();
  m->slot = (m->kind == v1::ENERGY_KIND_STEAM && m->canonical_unit == "t")
                ? kSteamTonnesSlot
                : static_cast<int>(m->kind) - 1;
  m->scope = ScopeOf(m->kind);
  uint32_t idx = static_cast<uint32_t>(ids_.find(node.a.account_id())->second);
  for (int32_t a = static_cast<int32_t>(idx); a >= 0; a = accounts_[a]->parent)
    m->chain.push_back(static_cast<uint32_t>(a));
  m->region_chain = node.region_chain;
  const v1::FactorKind loc_kind = m->kind == v1::ENERGY_KIND_ELECTRICITY
                                      ? v1::FACTOR_KIND_GRID
                                      : v1::FACTOR_KIND_FUEL;
  m->loc = CacheFor(loc_kind, FactorKey(m->kind), "", node.a.region(),
                    m->canonical_unit);
  if (!spec.tariff_id().empty()) {
    m->mkt = CacheFor(v1::FACTOR_KIND_SUPPLIER, FactorKey(m->kind),
                      spec.tariff_id(), node.a.region(), m->canonical_unit);
  }
  node.meter = std::move(m);
}

absl::StatusOr<v1::Account> CarbonLedger::Impl::CreateAccount(
    v1::Account account) {
  absl::MutexLock l(&mu_);
  // Inherit from the parent before validating the region.
  if (!account.parent_id().empty()) {
    if (const AccountNode* p = Find(account.parent_id())) {
      if (account.region().empty()) account.set_region(p->a.region());
      if (account.industry_code().empty())
        account.set_industry_code(p->a.industry_code());
      if (account.org().empty()) account.set_org(p->a.org());
    }
  }
  CITYOS_RETURN_IF_ERROR(ValidateAccount(account));
  account.clear_close_time();
  TimestampToProto(clock_->Now(), account.mutable_create_time());
  const int64_t idx = static_cast<int64_t>(accounts_.size());
  std::string blob = account.SerializeAsString();
  CITYOS_RETURN_IF_ERROR(store_->WithDb([&](sqlite3* db) -> absl::Status {
    SqliteStmt st(
        db, "INSERT INTO accounts(idx, account_id, account) VALUES(?,?,?)",
        "insert account");
    CITYOS_RETURN_IF_ERROR(st.status());
    st.Bind(1, idx).Bind(2, account.account_id()).BindBlob(3, blob);
    return st.Run();
  }));
  AddNode(account);
  return account;
}

absl::StatusOr<v1::Account> CarbonLedger::Impl::GetAccount(
    std::string_view id) const {
  absl::ReaderMutexLock l(&mu_);
  const AccountNode* n = Find(id);
  if (n == nullptr)
    return absl::NotFoundError(
        absl::StrCat("account '", AV(id), "' not found"));
  return n->a;
}

uint32_t CarbonLedger::Impl::ChildCount(std::string_view id) const {
  absl::ReaderMutexLock l(&mu_);
  const AccountNode* n = Find(id);
  return n == nullptr ? 0 : static_cast<uint32_t>(n->children.size());
}

absl::StatusOr<v1::ListAccountsResponse> CarbonLedger::Impl::ListAccounts(
    const v1::ListAccountsRequest& req,
    const std::function<bool(const v1::Account&)>& visible) const {
  if (req.page_size() < 0 || req.page_size() > 1000) {
    return absl::InvalidArgumentError(
        absl::StrCat("page_size ", req.page_size(), " must be 0-1000"));
  }
  const size_t page =
      req.page_size() == 0 ? 100 : static_cast<size_t>(req.page_size());
  absl::ReaderMutexLock l(&mu_);
  std::vector<const AccountNode*> match;
  for (const auto& n : accounts_) {
    const v1::Account& a = n->a;
    if (req.kind() != v1::ACCOUNT_KIND_UNSPECIFIED && a.kind() != req.kind())
      continue;
    if (!req.parent_id().empty() && a.parent_id() != req.parent_id()) continue;
    if (!req.region().empty() && !regions_->Covers(req.region(), a.region()))
      continue;
    if (!req.industry_code().empty() &&
        !absl::StartsWith(a.industry_code(), req.industry_code()))
      continue;
    if (!req.page_token().empty() && a.account_id() <= req.page_token())
      continue;
    if (visible && !visible(a)) continue;
    match.push_back(n.get());
  }
  std::sort(match.begin(), match.end(),
            [](const AccountNode* x, const AccountNode* y) {
              return x->a.account_id() < y->a.account_id();
            });
  v1::ListAccountsResponse resp;
  for (size_t i = 0; i < match.size() && i < page; ++i)
    *resp.add_accounts() = match[i]->a;
  if (match.size() > page)
    resp.set_next_page_token(match[page - 1]->a.account_id());
  return resp;
}

std::optional<v1::Account> CarbonLedger::Impl::FindIndividual(
    std::string_view data_subject) const {
  absl::ReaderMutexLock l(&mu_);
  auto it = individuals_.find(AV(data_subject));
  if (it == individuals_.end()) return std::nullopt;
  return accounts_[it->second]->a;
}

std::string CarbonLedger::Impl::EnterpriseOf(
    std::string_view account_id) const {
  absl::ReaderMutexLock l(&mu_);
  const AccountNode* n = Find(account_id);
  if (n == nullptr || n->enterprise < 0) return "";
  return accounts_[n->enterprise]->a.account_id();
}

std::string CarbonLedger::Impl::RegionOf(std::string_view account_id) const {
  absl::ReaderMutexLock l(&mu_);
  const AccountNode* n = Find(account_id);
  return n == nullptr ? "" : n->a.region();
}

bool CarbonLedger::Impl::IsUnder(uint32_t account, uint32_t ancestor) const {
  for (int32_t a = static_cast<int32_t>(account); a >= 0;
       a = accounts_[a]->parent) {
    if (static_cast<uint32_t>(a) == ancestor) return true;
  }
  return false;
}

bool CarbonLedger::Impl::AccountCovers(std::string_view ancestor,
                                       std::string_view account_id) const {
  absl::ReaderMutexLock l(&mu_);
  auto a = ids_.find(AV(ancestor));
  auto b = ids_.find(AV(account_id));
  if (a == ids_.end() || b == ids_.end()) return false;
  return IsUnder(b->second, a->second);
}

// ---------------------------------------------------------------------------
// Factor caches.

FactorCache* CarbonLedger::Impl::CacheFor(v1::FactorKind kind,
                                          std::string_view key,
                                          std::string_view tariff,
                                          std::string_view region,
                                          std::string_view unit) {
  std::string k = absl::StrCat(static_cast<int>(kind), "|", AV(key), "|",
                               AV(tariff), "|", AV(region), "|", AV(unit));
  auto& slot = caches_[k];
  if (!slot) {
    slot = std::make_unique<FactorCache>();
    slot->kind = kind;
    slot->key = std::string(key);
    slot->tariff = std::string(tariff);
    slot->unit = std::string(unit);
    slot->regions = regions_->FactorRegions(region);
  }
  return slot.get();
}

uint32_t CarbonLedger::Impl::InternRef(const v1::FactorRef& ref,
                                       WriteBatch* wb) {
  auto it = ref_idx_.find(ref.factor_id());
  if (it != ref_idx_.end()) return it->second;
  uint32_t idx = static_cast<uint32_t>(refs_.size());
  refs_.push_back(ref);
  ref_idx_[ref.factor_id()] = idx;
  wb->refs.emplace_back(idx, ref.SerializeAsString());
  return idx;
}

const FactorSegment* CarbonLedger::Impl::Lookup(FactorCache* c, absl::Time at,
                                                uint64_t gen, WriteBatch* wb) {
  if (c->generation == gen && c->last != nullptr && c->last->start <= at &&
      at < c->last->end)
    return c->last;
  if (c->generation != gen) {
    // Boundaries of every candidate factor (kind, key, tariff, one of the
    // regions).
    c->generation = gen;
    c->segs.clear();
    c->last = nullptr;
    c->bounds.clear();
    v1::ListEmissionFactorsRequest filter;
    filter.set_kind(c->kind);
    filter.set_key(c->key);
    for (const v1::EmissionFactor& f : factors_->List(filter)) {
      if (c->kind == v1::FACTOR_KIND_SUPPLIER && f.tariff_id() != c->tariff)
        continue;
      if (std::find(c->regions.begin(), c->regions.end(), f.region()) ==
          c->regions.end())
        continue;
      if (f.valid().has_start())
        c->bounds.push_back(absl::FromUnixSeconds(f.valid().start().seconds()) +
                            absl::Nanoseconds(f.valid().start().nanos()));
      if (f.valid().has_end())
        c->bounds.push_back(absl::FromUnixSeconds(f.valid().end().seconds()) +
                            absl::Nanoseconds(f.valid().end().nanos()));
    }
    std::sort(c->bounds.begin(), c->bounds.end());
    c->bounds.erase(std::unique(c->bounds.begin(), c->bounds.end()),
                    c->bounds.end());
  }
  size_t i = static_cast<size_t>(
      std::upper_bound(c->bounds.begin(), c->bounds.end(), at) -
      c->bounds.begin());
  auto& seg = c->segs[i];
  if (!seg) {
    seg = std::make_unique<FactorSegment>();
    seg->start = i == 0 ? absl::InfinitePast() : c->bounds[i - 1];
    seg->end = i == c->bounds.size() ? absl::InfiniteFuture() : c->bounds[i];
    FactorQuery q;
    q.kind = c->kind;
    q.key = c->key;
    q.tariff_id = c->tariff;
    q.at = at;
    q.regions = c->regions;
    q.activity_unit = c->unit;
    absl::StatusOr<SelectedFactor> f = factors_->Select(q);
    if (f.ok()) {
      seg->found = true;
      seg->f = *std::move(f);
      seg->ref_idx = InternRef(seg->f.ref, wb);
    } else {
      seg->error = std::string(f.status().message());
    }
  }
  c->last = seg.get();
  return seg.get();
}

// ---------------------------------------------------------------------------
// Aggregates.

int64_t CarbonLedger::Impl::DayOfHour(int64_t hour) const {
  absl::CivilDay d =
      absl::ToCivilDay(absl::FromUnixSeconds(hour * 3600), opt_.tz);
  return d - absl::CivilDay(1970, 1, 1);
}

int64_t CarbonLedger::Impl::MonthOfDay(int64_t day) const {
  absl::CivilDay d = absl::CivilDay(1970, 1, 1) + day;
  return d.year() * 12 + (d.month() - 1);
}

Bucket& CarbonLedger::Impl::HourBucket(Tiers& t, int64_t hour) {
  if (t.cached_hour == hour && t.cached != nullptr &&
      t.cached_capacity == t.hour.capacity())
    return *t.cached;
  Bucket& b = t.hour[hour];
  t.cached_hour = hour;
  t.cached = &b;
  t.cached_capacity = t.hour.capacity();
  return b;
}

Bucket& CarbonLedger::Impl::BucketFor(Tiers& t, int64_t hour) {
  if (hour >= hour_cutoff_[t.cls]) return HourBucket(t, hour);
  int64_t day = DayOfHour(hour);
  if (day >= day_cutoff_[t.cls]) return t.day[day];
  return t.month[MonthOfDay(day)];
}

void CarbonLedger::Impl::NoteHour(int64_t hour) {
  if (hour <= newest_hour_) return;
  newest_hour_ = hour;
  for (int c = 0; c < 2; ++c) {
    if (hour - int64_t{24} * hourly_days_[c] >= hour_cutoff_[c] + 24) {
      Fold();
      return;
    }
  }
}

void CarbonLedger::Impl::Fold() {
  if (newest_hour_ == std::numeric_limits<int64_t>::min()) return;
  bool changed = false;
  for (int c = 0; c < 2; ++c) {
    int64_t new_hour_cutoff = newest_hour_ - int64_t{24} * hourly_days_[c];
    // Align to a local day start so a day is never split between tiers.
    int64_t day = DayOfHour(new_hour_cutoff);
    absl::Time day_start =
        absl::FromCivil(absl::CivilDay(1970, 1, 1) + day, opt_.tz);
    new_hour_cutoff = FloorDiv(absl::ToUnixSeconds(day_start), 3600);
    int64_t new_day_cutoff = DayOfHour(newest_hour_) - daily_days_[c];
    absl::CivilDay nd = absl::CivilDay(1970, 1, 1) + new_day_cutoff;
    new_day_cutoff =
        absl::CivilDay(nd.year(), nd.month(), 1) - absl::CivilDay(1970, 1, 1);
    if (new_hour_cutoff > hour_cutoff_[c] || new_day_cutoff > day_cutoff_[c])
      changed = true;
    hour_cutoff_[c] = std::max(hour_cutoff_[c], new_hour_cutoff);
    day_cutoff_[c] = std::max(day_cutoff_[c], new_day_cutoff);
  }
  if (!changed) return;
  for (auto& n : accounts_) {
    FoldTiers(n->agg.reported);
    if (n->agg.delta) FoldTiers(*n->agg.delta);
  }
  for (auto& r : region_targets_) {
    FoldTiers(r->reported);
    if (r->delta) FoldTiers(*r->delta);
  }
}

void CarbonLedger::Impl::FoldTiers(Tiers& t) {
  t.cached = nullptr;
  t.cached_hour = std::numeric_limits<int64_t>::min();
  std::vector<int64_t> old;
  for (const auto& [h, b] : t.hour) {
    if (h < hour_cutoff_[t.cls]) old.push_back(h);
  }
  for (int64_t h : old) {
    auto it = t.hour.find(h);
    int64_t day = DayOfHour(h);
    if (day >= day_cutoff_[t.cls]) {
      t.day[day].Add(it->second);
    } else {
      t.month[MonthOfDay(day)].Add(it->second);
    }
    t.hour.erase(it);
  }
  // Rebuild without tombstones: otherwise a later insert may rehash in place
  // (same capacity), which would move buckets behind HourBucket's cache.
  if (!old.empty()) t.hour.rehash(0);
  old.clear();
  for (const auto& [d, b] : t.day) {
    if (d < day_cutoff_[t.cls]) old.push_back(d);
  }
  for (int64_t d : old) {
    auto it = t.day.find(d);
    t.month[MonthOfDay(d)].Add(it->second);
    t.day.erase(it);
  }
}

void CarbonLedger::Impl::AddToTiers(Tiers& t, int64_t hour, const Bucket& b) {
  BucketFor(t, hour).Add(b);
}

void CarbonLedger::Impl::AddRecordToAggregates(const RecordRow& row,
                                               bool reported) {
  Bucket b;
  const bool process = row.energy_kind == 0;
  if (row.scope == v1::SCOPE_2) {
    b.s2loc = row.kg;
    b.s2mkt = row.market_kg;
  } else {
    b.scope1 = row.kg;
    if (process) b.process = row.kg;
  }
  const AccountNode& node = *accounts_[row.account];
  if (reported) {
    b.readings = 1;
    if (!process && node.meter) b.energy[node.meter->slot] = row.activity;
  }
  const int64_t hour = FloorDiv(row.start_ns, kNanosPerHour);
  NoteHour(hour);
  for (int32_t a = static_cast<int32_t>(row.account); a >= 0;
       a = accounts_[a]->parent) {
    Target& t = accounts_[a]->agg;
    if (reported) {
      AddToTiers(t.reported, hour, b);
    } else {
      if (!t.delta) {
        t.delta = std::make_unique<Tiers>();
        t.delta->cls = t.reported.cls;
      }
      AddToTiers(*t.delta, hour, b);
    }
  }
  for (uint32_t r : node.region_chain) {
    Target& t = *region_targets_[r];
    if (reported) {
      AddToTiers(t.reported, hour, b);
    } else {
      if (!t.delta) t.delta = std::make_unique<Tiers>();
      AddToTiers(*t.delta, hour, b);
    }
  }
}

void CarbonLedger::Impl::CountQuarantine(uint32_t account, int64_t hour) {
  Bucket b;
  b.quarantined = 1;
  for (int32_t a = static_cast<int32_t>(account); a >= 0;
       a = accounts_[a]->parent) {
    AddToTiers(accounts_[a]->agg.reported, hour, b);
  }
  for (uint32_t r : accounts_[account]->region_chain)
    AddToTiers(region_targets_[r]->reported, hour, b);
}

void CarbonLedger::Impl::Touch(Target& t, int64_t end_ns, bool is_region,
                               uint32_t idx) {
  if (t.touched_epoch != epoch_) {
    t.touched_epoch = epoch_;
    t.touched_end_ns = end_ns;
    touched_.emplace_back(is_region, idx);
  } else if (end_ns > t.touched_end_ns) {
    t.touched_end_ns = end_ns;
  }
}

void CarbonLedger::Impl::SweepDedup(MeterCtx& m) const {
  const int64_t window = absl::ToInt64Nanoseconds(opt_.dedup_window);
  const int64_t horizon = m.newest_end_ns == std::numeric_limits<int64_t>::min()
                              ? m.newest_end_ns
                              : m.newest_end_ns - window;
  absl::erase_if(
      m.seen, [horizon](const auto& kv) { return kv.first.end_ns < horizon; });
  m.sweep_at = std::max<size_t>(256, 2 * m.seen.size());
}

// ---------------------------------------------------------------------------
// Ingest.

void CarbonLedger::Impl::Quarantine(const ReadingInput& in, int32_t account,
                                    v1::QuarantineReason reason,
                                    std::string detail, int64_t hour,
                                    absl::Time now, BatchResult* res,
                                    WriteBatch* wb) {
  ++res->quarantined;
  QuarantineRow row;
  row.id = next_quarantine_id_++;
  row.account = account;
  row.enterprise = account >= 0 ? accounts_[account]->enterprise : -1;
  row.receive_ns = absl::ToUnixNanos(now);
  row.hour = hour;
  row.reason = reason;
  row.detail = detail;
  row.reading = in.reading.SerializeAsString();
  row.event_id = in.event_id;
  if (account >= 0) CountQuarantine(static_cast<uint32_t>(account), hour);
  v1::QuarantinedReading q;
  *q.mutable_reading() = in.reading;
  q.set_reason(reason);
  q.set_detail(std::move(detail));
  q.set_source_event_id(in.event_id);
  TimestampToProto(now, q.mutable_receive_time());
  res->quarantine.push_back(std::move(q));
  wb->quarantine.push_back(std::move(row));
}

std::optional<double> CarbonLedger::Impl::StoredValue(uint32_t account,
                                                      uint32_t enterprise,
                                                      int64_t start_ns,
                                                      int64_t end_ns) {
  absl::Status fs = store_->Flush();
  if (!fs.ok())
    LogWarn("carbon", "ledger flush before dedup lookup failed",
            {{"error", fs.ToString()}});
  return store_->WithDb([&](sqlite3* db) -> std::optional<double> {
    SqliteStmt q(db,
                 "SELECT value FROM records WHERE enterprise=? AND start_ns=? "
                 "AND account=? AND end_ns=? "
                 "AND restatement_id='' LIMIT 1",
                 "dedup lookup");
    q.Bind(1, static_cast<int64_t>(enterprise))
        .Bind(2, start_ns)
        .Bind(3, static_cast<int64_t>(account))
        .Bind(4, end_ns);
    absl::StatusOr<bool> row = q.Next();
    if (!row.ok() || !*row) return std::nullopt;
    return sqlite3_column_double(q.get(), 0);
  });
}

BatchResult CarbonLedger::Impl::AccountReadings(
    absl::Span<const ReadingInput> readings) {
  BatchResult res;
  const absl::Time now = clock_->Now();
  const int64_t now_ns = absl::ToUnixNanos(now);
  const int64_t latest_end_ns = absl::ToUnixNanos(now + opt_.future_tolerance);
  const int64_t now_hour = FloorDiv(now_ns, kNanosPerHour);
  const uint64_t gen = factors_->generation();
  const int64_t window = absl::ToInt64Nanoseconds(opt_.dedup_window);
  WriteBatch wb = store_->TakeBatch();
  wb.records.reserve(readings.size());
  if (opt_.return_records) res.records.reserve(readings.size());

  absl::MutexLock l(&mu_);
  ++epoch_;
  touched_.clear();
  // Pre-passes: resolve the meters of the whole batch (independent lookups
  // overlap their cache misses) and prefetch the per-meter state the main
  // loop touches (account node, meter context, current hour bucket).
  const size_t n = readings.size();
  std::vector<int32_t> accs(n);
  for (size_t i = 0; i < n; ++i) {
    auto it = ids_.find(readings[i].reading.meter_id());
    accs[i] = it == ids_.end() ? -1 : static_cast<int32_t>(it->second);
    if (accs[i] >= 0) __builtin_prefetch(accounts_[accs[i]].get());
  }
  for (size_t i = 0; i < n; ++i) {
    if (accs[i] < 0) continue;
    const AccountNode* node = accounts_[accs[i]].get();
    if (node->meter) __builtin_prefetch(node->meter.get());
    if (node->agg.reported.cached)
      __builtin_prefetch(node->agg.reported.cached);
  }
  for (size_t i = 0; i < n; ++i) {
    const ReadingInput& in = readings[i];
    const v1::MeterReading& r = in.reading;
    if (i + 4 < n && accs[i + 4] >= 0) {
      if (const MeterCtx* pm = accounts_[accs[i + 4]]->meter.get()) {
        const char* p = reinterpret_cast<const char*>(pm);
        for (size_t off = 64; off < sizeof(MeterCtx); off += 64)
          __builtin_prefetch(p + off);
      }
    }
    if (i + 2 < n && accs[i + 2] >= 0) {
      AccountNode& pn = *accounts_[accs[i + 2]];
      const v1::MeterReading& pr = readings[i + 2].reading;
      if (pn.meter && pr.reading_kind() != v1::READING_KIND_CUMULATIVE) {
        const int64_t ps = pr.interval_start().seconds() * 1'000'000'000 +
                           pr.interval_start().nanos();
        const int64_t pe = pr.interval_end().seconds() * 1'000'000'000 +
                           pr.interval_end().nanos();
        pn.meter->seen.prefetch(DedupKey{ps, pe});
        pn.agg.reported.hour.prefetch(FloorDiv(ps, kNanosPerHour));
      }
    }
    if (accs[i] < 0 || !accounts_[accs[i]]->meter) {
      Quarantine(in, -1, v1::QUARANTINE_REASON_UNKNOWN_METER,
                 absl::StrCat("meter '", r.meter_id(), "' is not registered"),
                 now_hour, now, &res, &wb);
      continue;
    }
    const uint32_t acc = static_cast<uint32_t>(accs[i]);
    AccountNode& node = *accounts_[acc];
    MeterCtx& m = *node.meter;
    int64_t end_ns = 0, start_ns = 0;
    const bool end_ok =
        r.has_interval_end() && TsNanos(r.interval_end(), &end_ns);
    // Quarantine counts in the hour of interval_end, never later than now.
    const int64_t q_hour =
        end_ok ? std::min(FloorDiv(end_ns - 1, kNanosPerHour), now_hour)
               : now_hour;
    auto quarantine = [&](v1::QuarantineReason reason, std::string detail) {
      Quarantine(in, static_cast<int32_t>(acc), reason, std::move(detail),
                 q_hour, now, &res, &wb);
    };
    if (r.energy_kind() != m.kind) {
      quarantine(
          v1::QUARANTINE_REASON_UNIT_MISMATCH,
          absl::StrCat("energy_kind ", v1::EnergyKind_Name(r.energy_kind()),
                       " differs from meter '", r.meter_id(),
                       "' registered as ", v1::EnergyKind_Name(m.kind)));
      continue;
    }
    if (r.unit() != m.unit) {
      if (!UnitAccepted(m.kind, r.unit())) {
        std::string accepted;
        for (std::string_view u : AcceptedUnits(m.kind))
          absl::StrAppend(&accepted, accepted.empty() ? "" : ", ", AV(u));
        quarantine(v1::QUARANTINE_REASON_UNIT_MISMATCH,
                   absl::StrCat("unit '", r.unit(), "' is not accepted for ",
                                AV(EnergyKindName(m.kind)), " (", accepted,
                                "); meter '", r.meter_id(),
                                "' is registered in ", m.unit));
      } else {
        quarantine(
            v1::QUARANTINE_REASON_UNIT_MISMATCH,
            absl::StrCat("unit '", r.unit(), "' differs from meter '",
                         r.meter_id(), "' registered unit '", m.unit, "'"));
      }
      continue;
    }
    if (!end_ok) {
      quarantine(v1::QUARANTINE_REASON_BAD_INTERVAL,
                 r.has_interval_end() ? "interval_end is out of range"
                                      : "interval_end is not set");
      continue;
    }
    if (end_ns > latest_end_ns) {
      quarantine(v1::QUARANTINE_REASON_FUTURE_TIMESTAMP,
                 absl::StrCat("interval_end ", FormatTime(end_ns), " is ",
                              DurationText(end_ns - now_ns), " after now (",
                              FormatTime(now_ns), "); tolerance ",
                              absl::FormatDuration(opt_.future_tolerance)));
      continue;
    }
    if (!std::isfinite(r.value())) {
      quarantine(v1::QUARANTINE_REASON_IMPLAUSIBLE,
                 absl::StrCat("value ", NumText(r.value()), " is not finite"));
      continue;
    }
    if (r.value() < 0) {
      quarantine(v1::QUARANTINE_REASON_NEGATIVE_VALUE,
                 absl::StrCat("value ", NumText(r.value()), " ", r.unit(),
                              " is negative"));
      continue;
    }
    double consumption = 0;
    DedupKey key{0, 0};
    const v1::ReadingKind rk = r.reading_kind();
    if (rk == v1::READING_KIND_INTERVAL || rk == v1::READING_KIND_DELTA) {
      if (!r.has_interval_start() || !TsNanos(r.interval_start(), &start_ns)) {
        quarantine(v1::QUARANTINE_REASON_BAD_INTERVAL,
                   r.has_interval_start() ? "interval_start is out of range"
                                          : "interval_start is not set");
        continue;
      }
      if (start_ns >= end_ns) {
        quarantine(v1::QUARANTINE_REASON_BAD_INTERVAL,
                   absl::StrCat("interval [", FormatTime(start_ns), ", ",
                                FormatTime(end_ns), ") is ",
                                start_ns == end_ns ? "empty" : "reversed"));
        continue;
      }
      key = DedupKey{start_ns, end_ns};
      consumption = r.value();
    } else if (rk == v1::READING_KIND_CUMULATIVE) {
      start_ns = end_ns;
      key = DedupKey{end_ns, end_ns};
    } else {
      quarantine(v1::QUARANTINE_REASON_BAD_INTERVAL, "reading_kind is not set");
      continue;
    }
    // Dedup.
    std::optional<double> prior;
    if (auto s = m.seen.find(key); s != m.seen.end()) {
      prior = s->second;
    } else if (rk != v1::READING_KIND_CUMULATIVE &&
               m.newest_end_ns != std::numeric_limits<int64_t>::min() &&
               end_ns < m.newest_end_ns - window) {
      store_->Enqueue(std::move(wb));
      wb = store_->TakeBatch();
      prior = StoredValue(acc, static_cast<uint32_t>(node.enterprise), start_ns,
                          end_ns);
    } else if (rk == v1::READING_KIND_CUMULATIVE && m.has_register &&
               end_ns == m.reg_ns) {
      prior = m.reg_value;
    }
    if (prior.has_value()) {
      if (*prior == r.value()) {
        ++res.duplicates;
      } else {
        quarantine(
            v1::QUARANTINE_REASON_DUPLICATE_CONFLICT,
            absl::StrCat("meter '", r.meter_id(), "' ",
                         rk == v1::READING_KIND_CUMULATIVE
                             ? absl::StrCat("register at ", FormatTime(end_ns))
                             : absl::StrCat("interval [", FormatTime(start_ns),
                                            ", ", FormatTime(end_ns), ")"),
                         " was accounted with value ", NumText(*prior), " ",
                         m.unit, "; got ", NumText(r.value())));
      }
      continue;
    }
    if (rk == v1::READING_KIND_CUMULATIVE) {
      if (!m.has_register) {
        m.has_register = true;
        m.reg_ns = end_ns;
        m.reg_value = r.value();
        m.seen[key] = r.value();
        m.newest_end_ns = std::max(m.newest_end_ns, end_ns);
        wb.states.push_back({acc, end_ns, r.value()});
        ++res.baselines;
        continue;
      }
      if (end_ns < m.reg_ns) {
        quarantine(v1::QUARANTINE_REASON_BAD_INTERVAL,
                   absl::StrCat("cumulative reading at ", FormatTime(end_ns),
                                " is before meter '", r.meter_id(),
                                "' latest register at ", FormatTime(m.reg_ns)));
        continue;
      }
      if (r.value() < m.reg_value) {
        quarantine(
            v1::QUARANTINE_REASON_METER_RESET,
            absl::StrCat("register ", NumText(r.value()), " ", m.unit, " at ",
                         FormatTime(end_ns), " is below the previous ",
                         NumText(m.reg_value), " ", m.unit, " at ",
                         FormatTime(m.reg_ns), "; taken as the new baseline"));
        m.reg_ns = end_ns;
        m.reg_value = r.value();
        wb.states.push_back({acc, end_ns, r.value()});
        continue;
      }
      start_ns = m.reg_ns;
      consumption = r.value() - m.reg_value;
    }
    // Plausibility: consumption per hour.
    if (m.max_per_hour > 0) {
      const double hours = static_cast<double>(end_ns - start_ns) /
                           static_cast<double>(kNanosPerHour);
      const double rate = consumption / hours;
      if (rate > m.max_per_hour * (1 + 1e-12)) {
        quarantine(v1::QUARANTINE_REASON_IMPLAUSIBLE,
                   absl::StrCat("value ", NumText(consumption), " ", m.unit,
                                " in ", DurationText(end_ns - start_ns), " (",
                                NumText(rate), " ", m.unit, "/h) exceeds max ",
                                NumText(m.max_per_hour), " ", m.unit, "/h"));
        continue;
      }
    }
    // Factors.
    const absl::Time at = absl::FromUnixNanos(start_ns);
    const FactorSegment* loc = Lookup(m.loc, at, gen, &wb);
    if (!loc->found) {
      quarantine(v1::QUARANTINE_REASON_NO_FACTOR, loc->error);
      continue;
    }
    const FactorSegment* mkt = loc;
    if (m.mkt != nullptr) {
      const FactorSegment* s = Lookup(m.mkt, at, gen, &wb);
      if (s->found) mkt = s;
    }
    // Accepted: update the meter state.
    if (rk == v1::READING_KIND_CUMULATIVE) {
      m.reg_ns = end_ns;
      m.reg_value = r.value();
      wb.states.push_back({acc, end_ns, r.value()});
    }
    m.seen.emplace(key, r.value());
    if (end_ns > m.newest_end_ns) m.newest_end_ns = end_ns;
    if (m.seen.size() >= m.sweep_at) SweepDedup(m);

    const double activity = consumption * m.to_canonical;
    const double kg = activity * loc->f.kg_per_unit;
    const bool s2 = m.scope == v1::SCOPE_2;
    const double mkt_kg = s2 ? activity * mkt->f.kg_per_unit : 0;
    // Aggregates and touched targets.
    Bucket b;
    if (s2) {
      b.s2loc = kg;
      b.s2mkt = mkt_kg;
    } else {
      b.scope1 = kg;
    }
    b.energy[m.slot] = activity;
    b.readings = 1;
    const int64_t hour = FloorDiv(start_ns, kNanosPerHour);
    if (hour > newest_hour_) NoteHour(hour);
    if (hour >= hour_cutoff_[0] && hour >= hour_cutoff_[1]) {
      for (uint32_t a : m.chain) {
        Target& t = accounts_[a]->agg;
        Bucket& dst = HourBucket(t.reported, hour);
        dst.scope1 += b.scope1;
        dst.s2loc += b.s2loc;
        dst.s2mkt += b.s2mkt;
        dst.energy[m.slot] += activity;
        dst.readings += 1;
        if (a != acc) Touch(t, end_ns, false, a);  // meters carry no plans
      }
      for (uint32_t ri : m.region_chain) {
        Target& t = *region_targets_[ri];
        Bucket& dst = HourBucket(t.reported, hour);
        dst.scope1 += b.scope1;
        dst.s2loc += b.s2loc;
        dst.s2mkt += b.s2mkt;
        dst.energy[m.slot] += activity;
        dst.readings += 1;
        Touch(t, end_ns, true, ri);
      }
    } else {
      for (uint32_t a : m.chain) {
        AddToTiers(accounts_[a]->agg.reported, hour, b);
        if (a != acc) Touch(accounts_[a]->agg, end_ns, false, a);
      }
      for (uint32_t ri : m.region_chain) {
        AddToTiers(region_targets_[ri]->reported, hour, b);
        Touch(*region_targets_[ri], end_ns, true, ri);
      }
    }
    // Record.
    RecordRow& row = wb.records.emplace_back();
    row.id = next_record_id_++;
    row.account = acc;
    row.enterprise = static_cast<uint32_t>(node.enterprise);
    row.start_ns = start_ns;
    row.end_ns = end_ns;
    row.energy_kind = m.kind;
    row.scope = m.scope;
    row.reading_kind = rk;
    row.value = r.value();
    row.activity = activity;
    row.kg = kg;
    row.market_kg = mkt_kg;
    row.factor = loc->ref_idx;
    row.market_factor = s2 ? static_cast<int64_t>(mkt->ref_idx) : -1;
    row.compute_ns = now_ns;
    row.event_id = in.event_id;
    row.orig = row.id;
    if (opt_.return_records) res.records.push_back(ToProto(row));
    ++res.accounted;
  }
  FinishBatch(res, std::move(wb));
  return res;
}

BatchResult CarbonLedger::Impl::AccountProcess(
    absl::Span<const ProcessInput> entries) {
  BatchResult res;
  const absl::Time now = clock_->Now();
  const int64_t now_ns = absl::ToUnixNanos(now);
  const int64_t latest_end_ns = absl::ToUnixNanos(now + opt_.future_tolerance);
  const uint64_t gen = factors_->generation();
  WriteBatch wb = store_->TakeBatch();
  absl::MutexLock l(&mu_);
  ++epoch_;
  touched_.clear();
  for (const ProcessInput& in : entries) {
    const v1::ProcessActivity& p = in.activity;
    auto reject = [&](v1::QuarantineReason reason, std::string detail) {
      ++res.quarantined;
      LogWarn("carbon", "process activity rejected",
              {{"account", p.account_id()},
               {"event", in.event_id},
               {"detail", detail}});
      res.process_rejected.push_back(
          {p, in.event_id, reason, std::move(detail)});
    };
    auto it = ids_.find(p.account_id());
    if (it == ids_.end()) {
      reject(v1::QUARANTINE_REASON_UNKNOWN_METER,
             absl::StrCat("account '", p.account_id(), "' is not registered"));
      continue;
    }
    const uint32_t acc = it->second;
    AccountNode& node = *accounts_[acc];
    const v1::AccountKind kind = node.a.kind();
    if (kind != v1::ACCOUNT_KIND_ENTERPRISE && kind != v1::ACCOUNT_KIND_SITE &&
        kind != v1::ACCOUNT_KIND_LINE) {
      reject(v1::QUARANTINE_REASON_UNKNOWN_METER,
             absl::StrCat(
                 "account '", p.account_id(), "' is a ",
                 v1::AccountKind_Name(kind),
                 "; process activities belong to an enterprise, site or line"));
      continue;
    }
    int64_t start_ns = 0, end_ns = 0;
    if (!p.has_interval_start() || !p.has_interval_end() ||
        !TsNanos(p.interval_start(), &start_ns) ||
        !TsNanos(p.interval_end(), &end_ns) || start_ns >= end_ns) {
      reject(v1::QUARANTINE_REASON_BAD_INTERVAL,
             "interval_start and interval_end must be set, start < end");
      continue;
    }
    if (end_ns > latest_end_ns) {
      reject(v1::QUARANTINE_REASON_FUTURE_TIMESTAMP,
             absl::StrCat("interval_end ", FormatTime(end_ns),
                          " is after now (", FormatTime(now_ns), ")"));
      continue;
    }
    if (!std::isfinite(p.quantity()) || p.quantity() < 0) {
      reject(v1::QUARANTINE_REASON_NEGATIVE_VALUE,
             absl::StrCat("quantity ", NumText(p.quantity()),
                          " must be finite and >= 0"));
      continue;
    }
    if (p.activity_key().empty() || p.unit().empty()) {
      reject(v1::QUARANTINE_REASON_UNIT_MISMATCH,
             "activity_key and unit are required");
      continue;
    }
    std::string key = absl::StrCat(p.account_id(), "|", p.activity_key(), "|",
                                   start_ns, "|", end_ns);
    if (auto s = process_seen_.find(key); s != process_seen_.end()) {
      if (s->second == p.quantity()) {
        ++res.duplicates;
      } else {
        reject(v1::QUARANTINE_REASON_DUPLICATE_CONFLICT,
               absl::StrCat("process '", p.activity_key(), "' of '",
                            p.account_id(), "' for [", FormatTime(start_ns),
                            ", ", FormatTime(end_ns), ") was accounted with ",
                            NumText(s->second), " ", p.unit(), "; got ",
                            NumText(p.quantity())));
      }
      continue;
    }
    FactorCache* c = CacheFor(v1::FACTOR_KIND_PROCESS, p.activity_key(), "",
                              node.a.region(), p.unit());
    const FactorSegment* seg =
        Lookup(c, absl::FromUnixNanos(start_ns), gen, &wb);
    if (!seg->found) {
      reject(v1::QUARANTINE_REASON_NO_FACTOR, seg->error);
      continue;
    }
    process_seen_[key] = p.quantity();
    RecordRow& row = wb.records.emplace_back();
    row.id = next_record_id_++;
    row.account = acc;
    row.enterprise = static_cast<uint32_t>(node.enterprise);
    row.start_ns = start_ns;
    row.end_ns = end_ns;
    row.energy_kind = 0;
    row.scope = v1::SCOPE_1;
    row.value = p.quantity();
    row.activity = p.quantity();
    row.kg = p.quantity() * seg->f.kg_per_unit;
    row.factor = seg->ref_idx;
    row.compute_ns = now_ns;
    row.event_id = in.event_id;
    RecordExtra& x = row.mutable_extra();
    x.activity_key = p.activity_key();
    x.method = p.method();
    x.unit = p.unit();
    row.orig = row.id;
    AddRecordToAggregates(row, true);
    for (int32_t a = static_cast<int32_t>(acc); a >= 0;
         a = accounts_[a]->parent) {
      Touch(accounts_[a]->agg, end_ns, false, static_cast<uint32_t>(a));
    }
    for (uint32_t ri : node.region_chain)
      Touch(*region_targets_[ri], end_ns, true, ri);
    if (opt_.return_records) res.records.push_back(ToProto(row));
    ++res.accounted;
  }
  FinishBatch(res, std::move(wb));
  return res;
}

void CarbonLedger::Impl::FinishBatch(BatchResult& res, WriteBatch wb) {
  res.touched.reserve(touched_.size());
  for (const auto& [is_region, idx] : touched_) {
    TouchedTotal t;
    if (is_region) {
      t.region = regions_->all()[idx].code;
      t.time = absl::FromUnixNanos(region_targets_[idx]->touched_end_ns);
    } else {
      t.account_id = accounts_[idx]->a.account_id();
      t.time = absl::FromUnixNanos(accounts_[idx]->agg.touched_end_ns);
    }
    res.touched.push_back(std::move(t));
  }
  store_->Enqueue(std::move(wb));
}

v1::EmissionRecord CarbonLedger::Impl::ToProto(const RecordRow& row) const {
  v1::EmissionRecord rec;
  const AccountNode& node = *accounts_[row.account];
  rec.set_record_id(absl::StrCat("r", row.id));
  if (node.enterprise >= 0)
    rec.set_enterprise_id(accounts_[node.enterprise]->a.account_id());
  if (node.site >= 0) rec.set_site_id(accounts_[node.site]->a.account_id());
  if (node.line >= 0) rec.set_line_id(accounts_[node.line]->a.account_id());
  const bool process = row.energy_kind == 0;
  if (!process) rec.set_meter_id(node.a.account_id());
  rec.set_region(node.a.region());
  rec.set_industry_code(node.a.industry_code());
  rec.set_source(process ? v1::EMISSION_SOURCE_PROCESS
                         : v1::EMISSION_SOURCE_ENERGY);
  rec.set_scope(static_cast<v1::Scope>(row.scope));
  if (!process)
    rec.set_energy_kind(static_cast<v1::EnergyKind>(row.energy_kind));
  rec.set_activity(row.activity);
  rec.set_activity_unit(
      process ? row.unit()
              : (node.meter ? node.meter->canonical_unit : std::string()));
  SetTimestampNs(row.start_ns, rec.mutable_interval_start());
  SetTimestampNs(row.end_ns, rec.mutable_interval_end());
  rec.set_emissions_kg(row.kg);
  if (row.scope == v1::SCOPE_2) rec.set_market_based_kg(row.market_kg);
  if (row.factor >= 0 && static_cast<size_t>(row.factor) < refs_.size())
    *rec.mutable_factor() = refs_[row.factor];
  if (row.market_factor >= 0 &&
      static_cast<size_t>(row.market_factor) < refs_.size()) {
    *rec.mutable_market_factor() = refs_[row.market_factor];
  }
  rec.set_method(process ? row.method() : "energy-x-factor");
  SetTimestampNs(row.compute_ns, rec.mutable_compute_time());
  rec.set_restatement_id(row.restatement_id());
  rec.set_source_event_id(row.event_id);
  return rec;
}

}  // namespace cityos::carbon
