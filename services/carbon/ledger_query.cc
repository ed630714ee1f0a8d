// The carbon ledger's read side and restatements: period totals from the
// aggregate tiers, region and industry views, rankings, contributors, record
// and quarantine listings (from ledger.db), value added, grades, and
// Restate (recompute as-reported records with re-selected factors).
#include <algorithm>
#include <cmath>
#include <map>
#include <set>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "cityos/proto_time.h"
#include "cityos/status.h"
#include "ledger_impl.h"
#include "sqlite_util.h"
#include "units.h"

namespace cityos::carbon {

using infobank::SqliteStmt;

namespace {

constexpr int64_t kMaxNs = std::numeric_limits<int64_t>::max();
constexpr int64_t kMinNs = std::numeric_limits<int64_t>::min();

int64_t ClampNs(absl::Time t) {
  if (t == absl::InfiniteFuture()) return kMaxNs;
  if (t == absl::InfinitePast()) return kMinNs;
  return absl::ToUnixNanos(t);
}

int64_t CeilDiv(int64_t a, int64_t b) { return -FloorDiv(-a, b); }

absl::Time TimeOr(const google::protobuf::Timestamp& ts, bool has,
                  absl::Time dflt) {
  if (!has) return dflt;
  return absl::FromUnixSeconds(ts.seconds()) + absl::Nanoseconds(ts.nanos());
}

absl::StatusOr<size_t> PageSize(int32_t n) {
  if (n < 0 || n > 1000)
    return absl::InvalidArgumentError(
        absl::StrCat("page_size ", n, " must be 0-1000"));
  return n == 0 ? size_t{100} : static_cast<size_t>(n);
}

constexpr const char* kRecordCols =
    "id, account, enterprise, start_ns, end_ns, energy_kind, scope, "
    "reading_kind, value, activity, kg, "
    "market_kg, factor, market_factor, compute_ns, event_id, activity_key, "
    "method, unit, restatement_id, orig, "
    "current";

RecordRow ReadRecord(SqliteStmt& q) {
  RecordRow r;
  ReadRecordFigures(q.get(), &r);
  r.factor = q.ColInt(12);
  r.market_factor = q.ColInt(13);
  r.compute_ns = q.ColInt(14);
  r.event_id = q.ColText(15);
  std::string key = q.ColText(16), method = q.ColText(17), unit = q.ColText(18),
              rid = q.ColText(19);
  if (!key.empty() || !method.empty() || !unit.empty() || !rid.empty()) {
    RecordExtra& x = r.mutable_extra();
    x.activity_key = std::move(key);
    x.method = std::move(method);
    x.unit = std::move(unit);
    x.restatement_id = std::move(rid);
  }
  r.orig = q.ColInt(20);
  r.current = static_cast<int32_t>(q.ColInt(21));
  return r;
}

}  // namespace

void ReadRecordFigures(sqlite3_stmt* q, RecordRow* r) {
  r->id = sqlite3_column_int64(q, 0);
  r->account = static_cast<uint32_t>(sqlite3_column_int64(q, 1));
  r->enterprise = static_cast<uint32_t>(sqlite3_column_int64(q, 2));
  r->start_ns = sqlite3_column_int64(q, 3);
  r->end_ns = sqlite3_column_int64(q, 4);
  r->energy_kind = static_cast<int32_t>(sqlite3_column_int64(q, 5));
  r->scope = static_cast<int32_t>(sqlite3_column_int64(q, 6));
  r->reading_kind = static_cast<int32_t>(sqlite3_column_int64(q, 7));
  r->value = sqlite3_column_double(q, 8);
  r->activity = sqlite3_column_double(q, 9);
  r->kg = sqlite3_column_double(q, 10);
  r->market_kg = sqlite3_column_double(q, 11);
}

// ---------------------------------------------------------------------------
// Period sums.

absl::Status CarbonLedger::Impl::SumTiers(const Tiers& t, const Period& p,
                                          v1::Granularity g,
                                          Bucket* out) const {
  const int64_t s_ns = ClampNs(p.start), e_ns = ClampNs(p.end);
  // Hours whose start lies in [start, end).
  if (!t.hour.empty()) {
    const int64_t h0 = CeilDiv(s_ns, kNanosPerHour),
                  h1 = CeilDiv(e_ns, kNanosPerHour);
    if (h1 > h0 && static_cast<uint64_t>(h1 - h0) <= t.hour.size()) {
      for (int64_t h = h0; h < h1; ++h) {
        if (auto it = t.hour.find(h); it != t.hour.end()) out->Add(it->second);
      }
    } else {
      for (const auto& [h, b] : t.hour) {
        if (h >= h0 && h < h1) out->Add(b);
      }
    }
  }
  const absl::CivilDay epoch(1970, 1, 1);
  auto day_of = [&](absl::Time x) {
    return absl::ToCivilDay(x, opt_.tz) - epoch;
  };
  auto day_start = [&](int64_t d) {
    return absl::FromCivil(epoch + d, opt_.tz);
  };
  if (!t.day.empty()) {
    if (g == v1::GRANULARITY_HOUR && t.day.contains(day_of(p.start))) {
      return absl::FailedPreconditionError(
          absl::StrCat("hourly figures of ", absl::FormatTime(p.start, opt_.tz),
                       " are kept as daily totals only (",
                       t.cls ? "meter_hourly_days " : "hourly_days ",
                       hourly_days_[t.cls], ")"));
    }
    int64_t d0 = p.start == absl::InfinitePast() ? kMinNs : day_of(p.start);
    if (p.start != absl::InfinitePast() && day_start(d0) < p.start) ++d0;
    int64_t d1 = p.end == absl::InfiniteFuture()
                     ? kMaxNs
                     : day_of(p.end - absl::Nanoseconds(1));
    if (d1 >= d0 && d1 != kMaxNs && d0 != kMinNs &&
        static_cast<uint64_t>(d1 - d0 + 1) <= t.day.size()) {
      for (int64_t d = d0; d <= d1; ++d) {
        if (auto it = t.day.find(d); it != t.day.end()) out->Add(it->second);
      }
    } else {
      for (const auto& [d, b] : t.day) {
        if (d >= d0 && d <= d1) out->Add(b);
      }
    }
  }
  if (!t.month.empty()) {
    auto month_of = [&](absl::Time x) {
      absl::CivilDay d = absl::ToCivilDay(x, opt_.tz);
      return d.year() * 12 + (d.month() - 1);
    };
    if ((g == v1::GRANULARITY_HOUR || g == v1::GRANULARITY_DAY) &&
        t.month.contains(month_of(p.start))) {
      return absl::FailedPreconditionError(absl::StrCat(
          "figures of ", absl::FormatTime("%Y-%m", p.start, opt_.tz),
          " are kept as monthly totals only (",
          t.cls ? "meter_daily_days " : "daily_days ", daily_days_[t.cls],
          ")"));
    }
    int64_t m0 = kMinNs, m1 = kMaxNs;
    if (p.start != absl::InfinitePast()) {
      m0 = month_of(p.start);
      absl::CivilDay d = absl::ToCivilDay(p.start, opt_.tz);
      if (absl::FromCivil(absl::CivilMonth(d.year(), d.month()), opt_.tz) <
          p.start)
        ++m0;
    }
    if (p.end != absl::InfiniteFuture())
      m1 = month_of(p.end - absl::Nanoseconds(1));
    for (const auto& [m, b] : t.month) {
      if (m >= m0 && m <= m1) out->Add(b);
    }
  }
  return absl::OkStatus();
}

absl::Status CarbonLedger::Impl::SumTarget(const Target& t, const Period& p,
                                           v1::Granularity g, bool as_reported,
                                           Bucket* out) const {
  CITYOS_RETURN_IF_ERROR(SumTiers(t.reported, p, g, out));
  if (!as_reported && t.delta)
    CITYOS_RETURN_IF_ERROR(SumTiers(*t.delta, p, g, out));
  return absl::OkStatus();
}

double CarbonLedger::Impl::RangeTotal(const Target& t, absl::Time from,
                                      absl::Time to) const {
  Bucket b;
  SumTarget(t, Period{from, to}, v1::GRANULARITY_UNSPECIFIED, false, &b)
      .IgnoreError();
  return b.total();
}

v1::EmissionTotal CarbonLedger::Impl::ToTotal(const Period& p,
                                              const Bucket& b) const {
  v1::EmissionTotal t;
  *t.mutable_period() = ToTimeRange(p);
  t.set_scope1_kg(b.scope1);
  t.set_process_kg(b.process);
  t.set_scope2_location_kg(b.s2loc);
  t.set_scope2_market_kg(b.s2mkt);
  t.set_total_kg(b.total());
  for (int i = 0; i < kEnergySlots; ++i) {
    if (b.energy[i] == 0) continue;
    v1::EnergyUse* e = t.add_energy();
    v1::EnergyKind kind = i == kSteamTonnesSlot
                              ? v1::ENERGY_KIND_STEAM
                              : static_cast<v1::EnergyKind>(i + 1);
    e->set_energy_kind(kind);
    e->set_quantity(b.energy[i]);
    if (i == kSteamTonnesSlot) {
      e->set_unit("t");
    } else {
      std::vector<std::string_view> units = AcceptedUnits(kind);
      e->set_unit(
          units.empty() ? "" : std::string(CanonicalUnit(kind, units.front())));
    }
  }
  t.set_readings(b.readings);
  t.set_quarantined(b.quarantined);
  return t;
}

absl::StatusOr<std::vector<v1::EmissionTotal>> CarbonLedger::Impl::TotalsOf(
    const std::vector<const Target*>& targets, v1::Granularity g,
    absl::Time from, absl::Time to, bool as_reported) const {
  CITYOS_ASSIGN_OR_RETURN(std::vector<Period> periods,
                          PeriodsOverlapping(from, to, g, opt_.tz));
  std::vector<v1::EmissionTotal> out;
  out.reserve(periods.size());
  for (const Period& p : periods) {
    Bucket b;
    for (const Target* t : targets)
      CITYOS_RETURN_IF_ERROR(SumTarget(*t, p, g, as_reported, &b));
    out.push_back(ToTotal(p, b));
  }
  return out;
}

absl::StatusOr<std::vector<v1::EmissionTotal>> CarbonLedger::Impl::Emissions(
    std::string_view account_id, v1::Granularity g, absl::Time from,
    absl::Time to, bool as_reported) const {
  absl::ReaderMutexLock l(&mu_);
  const AccountNode* n = Find(account_id);
  if (n == nullptr)
    return absl::NotFoundError(
        absl::StrCat("account '", AV(account_id), "' not found"));
  return TotalsOf({&n->agg}, g, from, to, as_reported);
}

absl::StatusOr<std::vector<v1::EmissionTotal>>
CarbonLedger::Impl::RegionEmissions(std::string_view region, v1::Granularity g,
                                    absl::Time from, absl::Time to,
                                    bool as_reported) const {
  int32_t r = RegionIdx(region);
  if (r < 0)
    return absl::InvalidArgumentError(
        absl::StrCat("region '", AV(region), "' is not a known region"));
  absl::ReaderMutexLock l(&mu_);
  return TotalsOf({region_targets_[r].get()}, g, from, to, as_reported);
}

std::vector<const Target*> CarbonLedger::Impl::EnterpriseParts(
    const AccountNode& e, std::string_view region) const {
  if (region.empty()) return {&e.agg};
  std::vector<const Target*> parts;
  // Largest subtrees below the enterprise whose region is covered.
  std::vector<uint32_t> stack(e.children.begin(), e.children.end());
  while (!stack.empty()) {
    const AccountNode& n = *accounts_[stack.back()];
    stack.pop_back();
    if (regions_->Covers(region, n.a.region())) {
      parts.push_back(&n.agg);
    } else {
      stack.insert(stack.end(), n.children.begin(), n.children.end());
    }
  }
  return parts;
}

absl::StatusOr<v1::GetIndustryEmissionsResponse>
CarbonLedger::Impl::IndustryEmissions(const v1::GetIndustryEmissionsRequest& r,
                                      absl::Time from, absl::Time to) const {
  if (!r.region().empty() && RegionIdx(r.region()) < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("region '", r.region(), "' is not a known region"));
  }
  CITYOS_ASSIGN_OR_RETURN(
      std::vector<Period> periods,
      PeriodsOverlapping(from, to, r.granularity(), opt_.tz));
  const size_t digits =
      r.group_digits() == 0 ? r.industry_code().size() : r.group_digits();
  absl::ReaderMutexLock l(&mu_);
  std::map<std::string, std::pair<uint32_t, std::vector<const Target*>>> groups;
  for (const auto& n : accounts_) {
    if (n->a.kind() != v1::ACCOUNT_KIND_ENTERPRISE) continue;
    const std::string& code = n->a.industry_code();
    if (!absl::StartsWith(code, r.industry_code())) continue;
    std::vector<const Target*> parts = EnterpriseParts(*n, r.region());
    if (parts.empty()) continue;
    auto& g =
        groups[digits == 0 ? code
                           : code.substr(0, std::min(digits, code.size()))];
    ++g.first;
    g.second.insert(g.second.end(), parts.begin(), parts.end());
  }
  v1::GetIndustryEmissionsResponse resp;
  for (const auto& [code, g] : groups) {
    v1::IndustryEmissions* ie = resp.add_industries();
    ie->set_industry_code(code);
    ie->set_name(code);
    ie->set_enterprises(g.first);
    for (const Period& p : periods) {
      Bucket b;
      for (const Target* t : g.second)
        CITYOS_RETURN_IF_ERROR(
            SumTarget(*t, p, r.granularity(), r.as_reported(), &b));
      *ie->add_totals() = ToTotal(p, b);
    }
  }
  return resp;
}

// ---------------------------------------------------------------------------
// Rankings.

absl::StatusOr<v1::GetRankingResponse> CarbonLedger::Impl::Ranking(
    const v1::GetRankingRequest& r) const {
  if (r.subject() == v1::RANKING_SUBJECT_UNSPECIFIED ||
      !v1::RankingSubject_IsValid(r.subject())) {
    return absl::InvalidArgumentError("subject is not set");
  }
  if (r.metric() == v1::RANKING_METRIC_UNSPECIFIED ||
      !v1::RankingMetric_IsValid(r.metric())) {
    return absl::InvalidArgumentError("metric is not set");
  }
  if (r.metric() == v1::RANKING_METRIC_K &&
      r.subject() != v1::RANKING_SUBJECT_ENTERPRISES) {
    return absl::InvalidArgumentError("metric K ranks enterprises only");
  }
  if (!r.period().has_start() || !r.period().has_end()) {
    return absl::InvalidArgumentError("period needs both start and end");
  }
  CITYOS_ASSIGN_OR_RETURN(
      absl::Time from, TimestampFromProto(r.period().start(), "period.start"));
  CITYOS_ASSIGN_OR_RETURN(absl::Time to,
                          TimestampFromProto(r.period().end(), "period.end"));
  if (to <= from)
    return absl::InvalidArgumentError("period.end must be after period.start");
  if (r.limit() > 1000)
    return absl::InvalidArgumentError(
        absl::StrCat("limit ", r.limit(), " must be at most 1000"));
  if (!r.region().empty() && RegionIdx(r.region()) < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("region '", r.region(), "' is not a known region"));
  }
  const size_t limit = r.limit() == 0 ? 20 : r.limit();
  const absl::Time prev_from = from - (to - from);
  const PeriodKey pk{absl::ToUnixNanos(from), absl::ToUnixNanos(to)};

  struct Entity {
    std::string id, name;
    std::vector<const Target*> parts;
    std::vector<std::string> enterprises;  // for value added
  };
  std::vector<Entity> entities;
  absl::ReaderMutexLock l(&mu_);
  auto in_scope = [&](const AccountNode& e) {
    return absl::StartsWith(e.a.industry_code(), r.industry_code());
  };
  switch (r.subject()) {
    case v1::RANKING_SUBJECT_ENTERPRISES:
      for (const auto& n : accounts_) {
        if (n->a.kind() != v1::ACCOUNT_KIND_ENTERPRISE || !in_scope(*n))
          continue;
        if (!r.region().empty() && !regions_->Covers(r.region(), n->a.region()))
          continue;
        entities.push_back(
            {n->a.account_id(), n->a.name(), {&n->agg}, {n->a.account_id()}});
      }
      break;
    case v1::RANKING_SUBJECT_REGIONS: {
      std::vector<std::string> codes;
      if (r.region().empty()) {
        for (const RegionInfo& ri : regions_->all()) {
          if (ri.parent.empty()) codes.push_back(ri.code);
        }
      } else {
        codes = regions_->Children(r.region());
      }
      for (const std::string& c : codes) {
        Entity e{c, regions_->Find(c)->name, {}, {}};
        if (r.industry_code().empty()) {
          e.parts.push_back(region_targets_[RegionIdx(c)].get());
        }
        for (const auto& n : accounts_) {
          if (n->a.kind() != v1::ACCOUNT_KIND_ENTERPRISE || !in_scope(*n))
            continue;
          if (regions_->Covers(c, n->a.region()))
            e.enterprises.push_back(n->a.account_id());
          if (!r.industry_code().empty()) {
            for (const Target* t : EnterpriseParts(*n, c)) e.parts.push_back(t);
          }
        }
        entities.push_back(std::move(e));
      }
      break;
    }
    case v1::RANKING_SUBJECT_INDUSTRIES: {
      const size_t digits = r.group_digits() == 0 ? 3 : r.group_digits();
      std::map<std::string, Entity> groups;
      for (const auto& n : accounts_) {
        if (n->a.kind() != v1::ACCOUNT_KIND_ENTERPRISE || !in_scope(*n) ||
            n->a.industry_code().empty())
          continue;
        std::vector<const Target*> parts = EnterpriseParts(*n, r.region());
        if (parts.empty()) continue;
        std::string code = n->a.industry_code().substr(
            0, std::min(digits, n->a.industry_code().size()));
        Entity& e = groups[code];
        e.id = code;
        e.name = code;
        e.parts.insert(e.parts.end(), parts.begin(), parts.end());
        e.enterprises.push_back(n->a.account_id());
      }
      for (auto& [code, e] : groups) entities.push_back(std::move(e));
      break;
    }
    default:
      break;
  }
  struct Ranked {
    std::string id, name;
    double value;
  };
  std::vector<Ranked> ranked;
  for (const Entity& e : entities) {
    double total = 0;
    for (const Target* t : e.parts) total += RangeTotal(*t, from, to);
    double value = 0;
    switch (r.metric()) {
      case v1::RANKING_METRIC_TOTAL:
        value = total;
        break;
      case v1::RANKING_METRIC_INTENSITY: {
        double va = 0;
        for (const std::string& ent : e.enterprises) {
          auto it = value_added_.find({ent, pk});
          if (it != value_added_.end()) va += it->second;
        }
        if (va <= 0) continue;
        value = total / 1000.0 / va;
        break;
      }
      case v1::RANKING_METRIC_CHANGE: {
        double prev = 0;
        for (const Target* t : e.parts) prev += RangeTotal(*t, prev_from, from);
        if (prev == 0) continue;
        value = (total - prev) / prev * 100.0;
        break;
      }
      case v1::RANKING_METRIC_K: {
        auto it = grades_.find({e.id, pk});
        if (it == grades_.end()) continue;
        value = it->second.k();
        break;
      }
      default:
        break;
    }
    ranked.push_back({e.id, e.name, value});
  }
  const bool asc = r.ascending();
  std::sort(ranked.begin(), ranked.end(),
            [asc](const Ranked& a, const Ranked& b) {
              if (a.value != b.value)
                return asc ? a.value < b.value : a.value > b.value;
              return a.id < b.id;
            });
  const char* unit = r.metric() == v1::RANKING_METRIC_TOTAL       ? "kg"
                     : r.metric() == v1::RANKING_METRIC_INTENSITY ? "t/10k CNY"
                     : r.metric() == v1::RANKING_METRIC_CHANGE    ? "%"
                                                                  : "";
  v1::GetRankingResponse resp;
  resp.set_ranked(static_cast<uint32_t>(ranked.size()));
  uint32_t rank = 0;
  for (size_t i = 0; i < ranked.size() && i < limit; ++i) {
    if (i == 0 || ranked[i].value != ranked[i - 1].value)
      rank = static_cast<uint32_t>(i + 1);
    v1::RankingEntry* e = resp.add_entries();
    e->set_rank(rank);
    e->set_id(ranked[i].id);
    e->set_name(ranked[i].name);
    e->set_value(ranked[i].value);
    e->set_unit(unit);
  }
  return resp;
}

// ---------------------------------------------------------------------------
// Contributors and totals.

double CarbonLedger::Impl::TotalKg(std::string_view target, bool is_region,
                                   absl::Time from, absl::Time to) const {
  absl::ReaderMutexLock l(&mu_);
  if (is_region) {
    int32_t r = RegionIdx(target);
    return r < 0 ? 0 : RangeTotal(*region_targets_[r], from, to);
  }
  const AccountNode* n = Find(target);
  return n == nullptr ? 0 : RangeTotal(n->agg, from, to);
}

std::vector<v1::Attribution> CarbonLedger::Impl::Contributors(
    std::string_view target, bool is_region, absl::Time from, absl::Time to,
    size_t limit) const {
  absl::ReaderMutexLock l(&mu_);
  std::vector<std::pair<std::string, double>> parts;
  double total = 0;
  if (is_region) {
    int32_t r = RegionIdx(target);
    if (r < 0) return {};
    total = RangeTotal(*region_targets_[r], from, to);
    std::vector<std::string> children = regions_->Children(target);
    if (!children.empty()) {
      for (const std::string& c : children)
        parts.emplace_back(
            c, RangeTotal(*region_targets_[RegionIdx(c)], from, to));
    } else {
      for (const auto& n : accounts_) {
        if (n->a.kind() != v1::ACCOUNT_KIND_ENTERPRISE) continue;
        double sum = 0;
        for (const Target* t : EnterpriseParts(*n, target))
          sum += RangeTotal(*t, from, to);
        if (regions_->Covers(target, n->a.region()) && n->children.empty())
          sum = RangeTotal(n->agg, from, to);
        parts.emplace_back(n->a.account_id(), sum);
      }
    }
  } else {
    const AccountNode* n = Find(target);
    if (n == nullptr) return {};
    total = RangeTotal(n->agg, from, to);
    for (uint32_t c : n->children)
      parts.emplace_back(accounts_[c]->a.account_id(),
                         RangeTotal(accounts_[c]->agg, from, to));
  }
  std::sort(parts.begin(), parts.end(), [](const auto& a, const auto& b) {
    return a.second != b.second ? a.second > b.second : a.first < b.first;
  });
  std::vector<v1::Attribution> out;
  for (const auto& [id, kg] : parts) {
    if (out.size() >= limit || kg <= 0) break;
    v1::Attribution a;
    a.set_account_id(id);
    a.set_emissions_kg(kg);
    a.set_share(total > 0 ? kg / total : 0);
    out.push_back(std::move(a));
  }
  return out;
}

// ---------------------------------------------------------------------------
// Value added and grades.

namespace {
// The period of a value added or a grade (`what`), both ends required.
absl::StatusOr<std::pair<absl::Time, absl::Time>> BoundedPeriod(
    const common::v1::TimeRange& r, const char* what) {
  if (!r.has_start() || !r.has_end()) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": period needs both start and end"));
  }
  CITYOS_ASSIGN_OR_RETURN(absl::Time from, TimestampFromProto(r.start(), "period.start"));
  CITYOS_ASSIGN_OR_RETURN(absl::Time to, TimestampFromProto(r.end(), "period.end"));
  return std::make_pair(from, to);
}
}  // namespace

absl::StatusOr<const AccountNode*> CarbonLedger::Impl::FindEnterprise(
    const std::string& id) const {
  const AccountNode* n = Find(id);
  if (n == nullptr) return absl::NotFoundError(absl::StrCat("account '", id, "' not found"));
  if (n->a.kind() != v1::ACCOUNT_KIND_ENTERPRISE) {
    return absl::InvalidArgumentError(absl::StrCat("account '", id, "' is not an enterprise"));
  }
  return n;
}

absl::Status CarbonLedger::Impl::SetValueAdded(const v1::ValueAdded& v) {
  CITYOS_ASSIGN_OR_RETURN(auto period, BoundedPeriod(v.period(), "value added"));
  const auto [from, to] = period;
  if (to <= from)
    return absl::InvalidArgumentError(
        "value added: period.end must be after period.start");
  if (!(v.value_added_10k_yuan() > 0) ||
      !std::isfinite(v.value_added_10k_yuan())) {
    return absl::InvalidArgumentError(absl::StrCat("value_added_10k_yuan ",
                                                   v.value_added_10k_yuan(),
                                                   " must be positive"));
  }
  absl::MutexLock l(&mu_);
  CITYOS_RETURN_IF_ERROR(FindEnterprise(v.account_id()).status());
  const PeriodKey pk{absl::ToUnixNanos(from), absl::ToUnixNanos(to)};
  CITYOS_RETURN_IF_ERROR(store_->WithDb([&](sqlite3* db) -> absl::Status {
    SqliteStmt st(db,
                  "INSERT OR REPLACE INTO value_added(enterprise, start_ns, "
                  "end_ns, value) VALUES(?,?,?,?)",
                  "value_added");
    CITYOS_RETURN_IF_ERROR(st.status());
    st.Bind(1, v.account_id()).Bind(2, pk.first).Bind(3, pk.second);
    sqlite3_bind_double(st.get(), 4, v.value_added_10k_yuan());
    return st.Run();
  }));
  value_added_[{v.account_id(), pk}] = v.value_added_10k_yuan();
  return absl::OkStatus();
}

std::optional<double> CarbonLedger::Impl::ValueAdded(
    std::string_view enterprise_id, Period p) const {
  absl::ReaderMutexLock l(&mu_);
  auto it = value_added_.find(
      {std::string(enterprise_id), {ClampNs(p.start), ClampNs(p.end)}});
  if (it == value_added_.end()) return std::nullopt;
  return it->second;
}

absl::Status CarbonLedger::Impl::SetGrade(const v1::Grade& g) {
  CITYOS_ASSIGN_OR_RETURN(auto period, BoundedPeriod(g.period(), "grade"));
  const auto [from, to] = period;
  absl::MutexLock l(&mu_);
  CITYOS_RETURN_IF_ERROR(FindEnterprise(g.account_id()).status());
  const PeriodKey pk{absl::ToUnixNanos(from), absl::ToUnixNanos(to)};
  std::string blob = g.SerializeAsString();
  CITYOS_RETURN_IF_ERROR(store_->WithDb([&](sqlite3* db) -> absl::Status {
    SqliteStmt st(db,
                  "INSERT OR REPLACE INTO grades(enterprise, start_ns, end_ns, "
                  "grade) VALUES(?,?,?,?)",
                  "grades");
    CITYOS_RETURN_IF_ERROR(st.status());
    st.Bind(1, g.account_id())
        .Bind(2, pk.first)
        .Bind(3, pk.second)
        .BindBlob(4, blob);
    return st.Run();
  }));
  grades_[{g.account_id(), pk}] = g;
  return absl::OkStatus();
}

std::optional<v1::Grade> CarbonLedger::Impl::GradeFor(
    std::string_view enterprise_id, Period p) const {
  absl::ReaderMutexLock l(&mu_);
  auto it = grades_.find(
      {std::string(enterprise_id), {ClampNs(p.start), ClampNs(p.end)}});
  if (it == grades_.end()) return std::nullopt;
  return it->second;
}

// ---------------------------------------------------------------------------
// Listings (from the database).

absl::StatusOr<v1::ListEmissionRecordsResponse> CarbonLedger::Impl::ListRecords(
    const v1::ListEmissionRecordsRequest& r) const {
  CITYOS_ASSIGN_OR_RETURN(size_t page, PageSize(r.page_size()));
  int64_t tok_start = kMinNs, tok_id = -1;
  if (!r.page_token().empty()) {
    std::vector<absl::string_view> parts = absl::StrSplit(r.page_token(), ':');
    if (parts.size() != 2 || !absl::SimpleAtoi(parts[0], &tok_start) ||
        !absl::SimpleAtoi(parts[1], &tok_id)) {
      return absl::InvalidArgumentError(
          absl::StrCat("page_token '", r.page_token(), "' is not valid"));
    }
  }
  const int64_t from = ClampNs(
      TimeOr(r.range().start(), r.range().has_start(), absl::InfinitePast()));
  const int64_t to = ClampNs(
      TimeOr(r.range().end(), r.range().has_end(), absl::InfiniteFuture()));
  uint32_t target = 0;
  int32_t enterprise = -1;
  bool whole = false;
  {
    absl::ReaderMutexLock l(&mu_);
    auto it = ids_.find(r.account_id());
    if (it == ids_.end())
      return absl::NotFoundError(
          absl::StrCat("account '", r.account_id(), "' not found"));
    target = it->second;
    enterprise = accounts_[target]->enterprise;
    whole = accounts_[target]->a.kind() == v1::ACCOUNT_KIND_ENTERPRISE;
  }
  v1::ListEmissionRecordsResponse resp;
  if (enterprise < 0) return resp;
  CITYOS_RETURN_IF_ERROR(store_->Flush());
  std::vector<RecordRow> out;
  bool more = false;
  while (!more) {
    std::vector<RecordRow> chunk;
    CITYOS_RETURN_IF_ERROR(store_->WithDb([&](sqlite3* db) -> absl::Status {
      std::string sql = absl::StrCat(
          "SELECT ", kRecordCols,
          " FROM records WHERE enterprise=? AND start_ns>=? AND start_ns<? AND "
          "(start_ns>? OR (start_ns=? AND id>?)) AND ",
          r.as_reported() ? "restatement_id=''" : "current=1",
          " ORDER BY start_ns, id LIMIT 1000");
      SqliteStmt q(db, sql.c_str(), "list records");
      CITYOS_RETURN_IF_ERROR(q.status());
      q.Bind(1, static_cast<int64_t>(enterprise))
          .Bind(2, from)
          .Bind(3, to)
          .Bind(4, tok_start)
          .Bind(5, tok_start)
          .Bind(6, tok_id);
      CITYOS_RETURN_IF_ERROR(q.ForEachRow([&]() -> absl::Status {
        chunk.push_back(ReadRecord(q));
        return absl::OkStatus();
      }));
      return absl::OkStatus();
    }));
    if (chunk.empty()) break;
    tok_start = chunk.back().start_ns;
    tok_id = chunk.back().id;
    absl::ReaderMutexLock l(&mu_);
    for (RecordRow& row : chunk) {
      if (!whole && !IsUnder(row.account, target)) continue;
      if (out.size() == page) {
        more = true;
        break;
      }
      out.push_back(std::move(row));
    }
    if (chunk.size() < 1000) break;
  }
  absl::ReaderMutexLock l(&mu_);
  for (const RecordRow& row : out) {
    v1::EmissionRecord rec = ToProto(row);
    if (!row.restatement_id().empty())
      rec.set_record_id(absl::StrCat("r", row.id));
    *resp.add_records() = std::move(rec);
  }
  if (more && !out.empty())
    resp.set_next_page_token(
        absl::StrCat(out.back().start_ns, ":", out.back().id));
  return resp;
}

absl::StatusOr<v1::ListQuarantinedReadingsResponse>
CarbonLedger::Impl::ListQuarantine(
    const v1::ListQuarantinedReadingsRequest& r) const {
  CITYOS_ASSIGN_OR_RETURN(size_t page, PageSize(r.page_size()));
  int64_t tok_id = kMaxNs;
  if (!r.page_token().empty() && !absl::SimpleAtoi(r.page_token(), &tok_id)) {
    return absl::InvalidArgumentError(
        absl::StrCat("page_token '", r.page_token(), "' is not valid"));
  }
  const int64_t from = ClampNs(
      TimeOr(r.range().start(), r.range().has_start(), absl::InfinitePast()));
  const int64_t to = ClampNs(
      TimeOr(r.range().end(), r.range().has_end(), absl::InfiniteFuture()));
  int64_t target = -1;
  int64_t enterprise = -1;
  if (!r.account_id().empty()) {
    absl::ReaderMutexLock l(&mu_);
    auto it = ids_.find(r.account_id());
    if (it == ids_.end())
      return absl::NotFoundError(
          absl::StrCat("account '", r.account_id(), "' not found"));
    target = it->second;
    enterprise = accounts_[target]->enterprise;
  }
  v1::ListQuarantinedReadingsResponse resp;
  if (!r.account_id().empty() && enterprise < 0) return resp;
  CITYOS_RETURN_IF_ERROR(store_->Flush());
  struct Row {
    int64_t id, account, receive_ns;
    int32_t reason;
    std::string detail, reading, event_id;
  };
  std::vector<Row> out;
  bool more = false;
  while (!more) {
    std::vector<Row> chunk;
    CITYOS_RETURN_IF_ERROR(store_->WithDb([&](sqlite3* db) -> absl::Status {
      std::string sql = absl::StrCat(
          "SELECT id, account, receive_ns, reason, detail, reading, event_id "
          "FROM quarantine WHERE id<? AND "
          "receive_ns>=? AND receive_ns<?",
          enterprise >= 0 ? " AND enterprise=?5" : "",
          r.reason() != 0 ? " AND reason=?4" : "",
          " ORDER BY id DESC LIMIT 1000");
      SqliteStmt q(db, sql.c_str(), "list quarantine");
      CITYOS_RETURN_IF_ERROR(q.status());
      q.Bind(1, tok_id).Bind(2, from).Bind(3, to);
      if (r.reason() != 0) q.Bind(4, static_cast<int64_t>(r.reason()));
      if (enterprise >= 0) q.Bind(5, enterprise);
      CITYOS_RETURN_IF_ERROR(q.ForEachRow([&]() -> absl::Status {
        chunk.push_back({q.ColInt(0), q.ColInt(1), q.ColInt(2),
                         static_cast<int32_t>(q.ColInt(3)), q.ColText(4),
                         q.ColBlob(5), q.ColText(6)});
        return absl::OkStatus();
      }));
      return absl::OkStatus();
    }));
    if (chunk.empty()) break;
    tok_id = chunk.back().id;
    absl::ReaderMutexLock l(&mu_);
    for (Row& row : chunk) {
      if (target >= 0 &&
          (row.account < 0 || !IsUnder(static_cast<uint32_t>(row.account),
                                       static_cast<uint32_t>(target)))) {
        continue;
      }
      if (out.size() == page) {
        more = true;
        break;
      }
      out.push_back(std::move(row));
    }
    if (chunk.size() < 1000) break;
  }
  for (const Row& row : out) {
    v1::QuarantinedReading* q = resp.add_readings();
    q->mutable_reading()->ParseFromString(row.reading);
    q->set_reason(static_cast<v1::QuarantineReason>(row.reason));
    q->set_detail(row.detail);
    q->set_source_event_id(row.event_id);
    SetTimestampNs(row.receive_ns, q->mutable_receive_time());
  }
  if (more && !out.empty())
    resp.set_next_page_token(absl::StrCat(out.back().id));
  return resp;
}

// ---------------------------------------------------------------------------
// Restatement.

absl::StatusOr<CarbonLedger::RestateResult> CarbonLedger::Impl::Restate(
    const std::string& restatement_id,
    const std::vector<std::string>& account_ids, const std::string& region,
    absl::Time from, absl::Time to,
    const std::vector<std::string>& factor_ids) {
  if (restatement_id.empty())
    return absl::InvalidArgumentError("restatement_id is required");
  if (!(from < to))
    return absl::InvalidArgumentError(
        "restatement period: end must be after start");
  if (account_ids.empty() == region.empty()) {
    return absl::InvalidArgumentError(
        "restatement needs either account_ids or region (exactly one)");
  }
  if (!region.empty() && RegionIdx(region) < 0) {
    return absl::NotFoundError(
        absl::StrCat("region '", AV(region), "' is not a known region"));
  }
  for (const std::string& id : factor_ids)
    CITYOS_RETURN_IF_ERROR(factors_->Get(id).status());
  const absl::Time now = clock_->Now();
  absl::MutexLock l(&mu_);
  std::vector<uint32_t> scope;
  std::set<int64_t> enterprises;
  for (const std::string& id : account_ids) {
    auto it = ids_.find(id);
    if (it == ids_.end())
      return absl::NotFoundError(absl::StrCat("account '", id, "' not found"));
    scope.push_back(it->second);
    if (accounts_[it->second]->enterprise >= 0)
      enterprises.insert(accounts_[it->second]->enterprise);
  }
  CITYOS_RETURN_IF_ERROR(store_->Flush());
  // As-reported records in the period (and the current restated versions).
  std::vector<RecordRow> rows;
  CITYOS_RETURN_IF_ERROR(store_->WithDb([&](sqlite3* db) -> absl::Status {
    std::string ents;
    for (int64_t e : enterprises)
      absl::StrAppend(&ents, ents.empty() ? "" : ",", e);
    std::string sql = absl::StrCat(
        "SELECT ", kRecordCols,
        " FROM records WHERE start_ns>=? AND start_ns<? AND (restatement_id='' "
        "OR "
        "current=1)",
        region.empty() ? absl::StrCat(" AND enterprise IN (", ents, ")") : "",
        " ORDER BY id");
    SqliteStmt q(db, sql.c_str(), "restatement scan");
    q.Bind(1, ClampNs(from)).Bind(2, ClampNs(to));
    CITYOS_RETURN_IF_ERROR(q.ForEachRow([&]() -> absl::Status {
      rows.push_back(ReadRecord(q));
      return absl::OkStatus();
    }));
    return absl::OkStatus();
  }));
  absl::flat_hash_map<int64_t, const RecordRow*>
      current_of;  // orig -> current restated row
  for (const RecordRow& row : rows) {
    if (!row.restatement_id().empty()) current_of[row.orig] = &row;
  }
  const uint64_t gen = factors_->generation();
  (void)gen;
  const size_t refs_before = refs_.size();
  WriteBatch wb;
  std::vector<std::array<int64_t, 3>> not_current;
  std::vector<RecordRow> deltas;
  RestateResult result;
  std::set<std::string> touched_enterprises;
  int64_t next_id = next_record_id_;
  auto select = [&](const FactorQuery& q) {
    return factor_ids.empty() ? factors_->Select(q)
                              : factors_->SelectAmong(q, factor_ids);
  };
  for (const RecordRow& row : rows) {
    if (!row.restatement_id().empty()) continue;
    if (row.account >= accounts_.size()) continue;
    const AccountNode& node = *accounts_[row.account];
    bool in = false;
    if (!region.empty()) {
      in = regions_->Covers(region, node.a.region());
    } else {
      for (uint32_t s : scope) in = in || IsUnder(row.account, s);
    }
    if (!in) continue;
    const bool process = row.energy_kind == 0;
    FactorQuery q;
    q.at = absl::FromUnixNanos(row.start_ns);
    q.regions = regions_->FactorRegions(node.a.region());
    std::optional<SelectedFactor> mkt;
    if (process) {
      q.kind = v1::FACTOR_KIND_PROCESS;
      q.key = row.activity_key();
      q.activity_unit = row.unit();
    } else {
      const auto kind = static_cast<v1::EnergyKind>(row.energy_kind);
      q.kind = kind == v1::ENERGY_KIND_ELECTRICITY ? v1::FACTOR_KIND_GRID
                                                   : v1::FACTOR_KIND_FUEL;
      q.key = std::string(FactorKey(kind));
      q.activity_unit = node.meter ? node.meter->canonical_unit : std::string();
    }
    absl::StatusOr<SelectedFactor> f = select(q);
    if (!f.ok()) {
      refs_.resize(refs_before);
      absl::erase_if(ref_idx_, [refs_before](const auto& kv) {
        return kv.second >= refs_before;
      });
      return absl::FailedPreconditionError(
          absl::StrCat("restatement ", restatement_id, ": record r", row.id,
                       ": ", f.status().message()));
    }
    if (!process && row.scope == v1::SCOPE_2 &&
        !node.a.meter().tariff_id().empty()) {
      FactorQuery mq = q;
      mq.kind = v1::FACTOR_KIND_SUPPLIER;
      mq.tariff_id = node.a.meter().tariff_id();
      absl::StatusOr<SelectedFactor> m = select(mq);
      if (m.ok()) mkt = *std::move(m);
    }
    RecordRow nr = row;
    nr.id = next_id++;
    nr.kg = row.activity * f->kg_per_unit;
    nr.factor = InternRef(f->ref, &wb);
    if (row.scope == v1::SCOPE_2) {
      nr.market_kg = mkt ? row.activity * mkt->kg_per_unit : nr.kg;
      nr.market_factor = mkt ? InternRef(mkt->ref, &wb) : nr.factor;
    }
    nr.compute_ns = absl::ToUnixNanos(now);
    nr.mutable_extra().restatement_id = restatement_id;
    nr.orig = row.id;
    nr.current = 1;
    const RecordRow* prev = &row;
    if (auto it = current_of.find(row.id); it != current_of.end())
      prev = it->second;
    not_current.push_back(
        {static_cast<int64_t>(prev->enterprise), prev->start_ns, prev->id});
    RecordRow d;
    d.account = row.account;
    d.enterprise = row.enterprise;
    d.start_ns = row.start_ns;
    d.energy_kind = row.energy_kind;
    d.scope = row.scope;
    d.kg = nr.kg - prev->kg;
    d.market_kg = nr.market_kg - prev->market_kg;
    deltas.push_back(d);
    result.delta_kg += nr.kg - row.kg;
    ++result.records;
    if (node.enterprise >= 0)
      touched_enterprises.insert(accounts_[node.enterprise]->a.account_id());
    wb.records.push_back(std::move(nr));
  }
  absl::Status ws = store_->WriteNow(wb, not_current);
  if (!ws.ok()) {
    refs_.resize(refs_before);
    absl::erase_if(ref_idx_, [refs_before](const auto& kv) {
      return kv.second >= refs_before;
    });
    return ws;
  }
  next_record_id_ = next_id;
  for (const RecordRow& d : deltas) AddRecordToAggregates(d, false);
  result.enterprises.assign(touched_enterprises.begin(),
                            touched_enterprises.end());
  return result;
}

}  // namespace cityos::carbon
