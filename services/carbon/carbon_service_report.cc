// The monthly report of an enterprise (GetMonthlyReport): totals by scope,
// site, line and energy kind, a quarantine summary, the factors used and the
// grade, as one JSON document or as RFC 4180 CSV (one row per site x line x
// source / energy kind x scope, from the emission records of the month).
//
// JSON layout:
//   {"account_id", "name", "org", "industry_code", "region", "year", "month",
//    "time_zone", "period": {"start", "end"}, "as_reported",
//    "totals": {"scope1_kg", "process_kg", "scope2_location_kg",
//               "scope2_market_kg", "total_kg", "readings", "quarantined"},
//    "energy": [{"energy_kind", "quantity", "unit"}],
//    "sites": [{"site_id", "total_kg", "lines": [{"line_id", "total_kg"}]}],
//    "rows": [ same fields as the CSV columns ],
//    "quarantine": {"total", "by_reason": {"UNIT_MISMATCH": n, ...}},
//    "factors": [{"factor_id", "value", "unit", "region", "vintage"}],
//    "grade": {...} | null, "generate_time"}
// CSV columns: account_id,year,month,site_id,line_id,source,energy_kind,scope,
// activity,activity_unit,emissions_kg,market_based_kg,records,factor_ids
#include <algorithm>
#include <map>
#include <set>
#include <tuple>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "carbon_service.h"
#include "cityos/event.h"
#include "cityos/proto_time.h"
#include "cityos/status.h"
#include "google/protobuf/util/json_util.h"
#include "ledger.h"
#include "nlohmann/json.hpp"
#include "units.h"

namespace cityos::carbon {
namespace {

// RFC 4180: quote a field containing a comma, quote, CR or LF; double quotes.
std::string CsvField(const std::string& s) {
  if (s.find_first_of(",\"\r\n") == std::string::npos) return s;
  return absl::StrCat("\"", absl::StrReplaceAll(s, {{"\"", "\"\""}}), "\"");
}

std::string Num(double v) { return absl::StrFormat("%.6f", v); }

std::string Rfc3339(absl::Time t) {
  return absl::FormatTime(absl::RFC3339_full, t, absl::UTCTimeZone());
}

std::string ScopeName(v1::Scope s) {
  switch (s) {
    case v1::SCOPE_1:
      return "scope1";
    case v1::SCOPE_2:
      return "scope2";
    case v1::SCOPE_3:
      return "scope3";
    default:
      return "unspecified";
  }
}

struct Row {
  std::string site_id, line_id, source, energy_kind, scope, activity_unit;
  double activity = 0, emissions_kg = 0, market_based_kg = 0;
  uint64_t records = 0;
  std::set<std::string> factor_ids;
};

}  // namespace

absl::StatusOr<v1::GetMonthlyReportResponse>
CarbonAccountServiceImpl::MonthlyReport(const v1::GetMonthlyReportRequest& r) {
  CITYOS_ASSIGN_OR_RETURN(v1::Account a, ledger_->GetAccount(r.account_id()));
  if (a.kind() != v1::ACCOUNT_KIND_ENTERPRISE) {
    return absl::InvalidArgumentError(
        absl::StrCat("account \"", a.account_id(), "\" is not an enterprise"));
  }
  if (r.month() < 1 || r.month() > 12) {
    return absl::InvalidArgumentError(
        absl::StrCat("month ", r.month(), ": must be 1-12"));
  }
  if (r.year() < 1970 || r.year() > 9999) {
    return absl::InvalidArgumentError(
        absl::StrCat("year ", r.year(), ": must be 1970-9999"));
  }
  if (r.format() != v1::REPORT_FORMAT_JSON &&
      r.format() != v1::REPORT_FORMAT_CSV) {
    return absl::InvalidArgumentError("format is required (JSON or CSV)");
  }
  const absl::Time start =
      absl::FromCivil(absl::CivilMonth(r.year(), r.month()), tz_);
  const Period month = PeriodOf(start, v1::GRANULARITY_MONTH, tz_);
  const absl::Time now = deps_.clock->Now();
  if (now < month.end) {
    return absl::FailedPreconditionError(
        absl::StrFormat("%04d-%02d has not ended yet (ends %s)", r.year(),
                        r.month(), Rfc3339(month.end)));
  }
  CITYOS_ASSIGN_OR_RETURN(
      std::vector<v1::EmissionTotal> totals,
      ledger_->Emissions(a.account_id(), v1::GRANULARITY_MONTH, month.start,
                         month.end, r.as_reported()));
  // The month is exactly one period of MONTH granularity.
  v1::EmissionTotal total;
  if (!totals.empty()) total = totals[0];

  // Rows from the records of the month.
  std::map<std::tuple<std::string, std::string, std::string, std::string,
                      std::string>,
           Row>
      rows;
  std::map<std::string, v1::FactorRef> factors;
  v1::ListEmissionRecordsRequest lr;
  lr.set_account_id(a.account_id());
  TimestampToProto(month.start, lr.mutable_range()->mutable_start());
  TimestampToProto(month.end, lr.mutable_range()->mutable_end());
  lr.set_as_reported(r.as_reported());
  lr.set_page_size(1000);
  while (true) {
    CITYOS_ASSIGN_OR_RETURN(v1::ListEmissionRecordsResponse page,
                            ledger_->ListRecords(lr));
    for (const v1::EmissionRecord& rec : page.records()) {
      const std::string source =
          rec.source() == v1::EMISSION_SOURCE_PROCESS ? "process" : "energy";
      const std::string kind =
          rec.source() == v1::EMISSION_SOURCE_PROCESS
              ? rec.method()
              : std::string(EnergyKindName(rec.energy_kind()));
      Row& row = rows[{rec.site_id(), rec.line_id(), source, kind,
                       ScopeName(rec.scope())}];
      row.site_id = rec.site_id();
      row.line_id = rec.line_id();
      row.source = source;
      row.energy_kind = kind;
      row.scope = ScopeName(rec.scope());
      row.activity_unit = rec.activity_unit();
      row.activity += rec.activity();
      row.emissions_kg += rec.emissions_kg();
      row.market_based_kg += rec.scope() == v1::SCOPE_2 ? rec.market_based_kg()
                                                        : rec.emissions_kg();
      row.records += 1;
      if (!rec.factor().factor_id().empty()) {
        row.factor_ids.insert(rec.factor().factor_id());
        factors[rec.factor().factor_id()] = rec.factor();
      }
      if (!rec.market_factor().factor_id().empty()) {
        row.factor_ids.insert(rec.market_factor().factor_id());
        factors[rec.market_factor().factor_id()] = rec.market_factor();
      }
    }
    if (page.next_page_token().empty()) break;
    lr.set_page_token(page.next_page_token());
  }
  // Quarantine of the month (readings received in it).
  std::map<std::string, uint64_t> by_reason;
  uint64_t quarantined = 0;
  {
    v1::ListQuarantinedReadingsRequest qr;
    qr.set_account_id(a.account_id());
    TimestampToProto(month.start, qr.mutable_range()->mutable_start());
    TimestampToProto(month.end, qr.mutable_range()->mutable_end());
    qr.set_page_size(1000);
    while (true) {
      CITYOS_ASSIGN_OR_RETURN(v1::ListQuarantinedReadingsResponse page,
                              ledger_->ListQuarantine(qr));
      for (const v1::QuarantinedReading& q : page.readings()) {
        std::string reason = v1::QuarantineReason_Name(q.reason());
        absl::StrReplaceAll({{"QUARANTINE_REASON_", ""}}, &reason);
        ++by_reason[reason];
        ++quarantined;
      }
      if (page.next_page_token().empty()) break;
      qr.set_page_token(page.next_page_token());
    }
  }
  std::optional<v1::Grade> grade =
      FindGrade(a.account_id(), month.start, r.as_reported());

  v1::GetMonthlyReportResponse resp;
  TimestampToProto(now, resp.mutable_generate_time());
  std::string base = absl::StrReplaceAll(a.account_id(), {{"/", "-"}});
  if (r.format() == v1::REPORT_FORMAT_CSV) {
    std::string out =
        "account_id,year,month,site_id,line_id,source,energy_kind,scope,"
        "activity,activity_unit,"
        "emissions_kg,market_based_kg,records,factor_ids\r\n";
    for (const auto& [key, row] : rows) {
      absl::StrAppend(&out, CsvField(a.account_id()), ",", r.year(), ",",
                      r.month(), ",", CsvField(row.site_id), ",",
                      CsvField(row.line_id), ",", row.source, ",",
                      CsvField(row.energy_kind), ",", row.scope, ",",
                      Num(row.activity), ",", CsvField(row.activity_unit), ",",
                      Num(row.emissions_kg), ",", Num(row.market_based_kg), ",",
                      row.records, ",",
                      CsvField(absl::StrJoin(row.factor_ids, ";")), "\r\n");
    }
    resp.set_content(std::move(out));
    resp.set_content_type("text/csv");
    resp.set_file_name(
        absl::StrFormat("%s-%04d-%02d.csv", base, r.year(), r.month()));
    return resp;
  }
  nlohmann::ordered_json j;
  j["account_id"] = a.account_id();
  j["name"] = a.name();
  j["org"] = a.org();
  j["industry_code"] = a.industry_code();
  j["region"] = a.region();
  j["year"] = r.year();
  j["month"] = r.month();
  j["time_zone"] = config_.time_zone;
  j["period"] = {{"start", Rfc3339(month.start)}, {"end", Rfc3339(month.end)}};
  j["as_reported"] = r.as_reported();
  j["totals"] = {{"scope1_kg", total.scope1_kg()},
                 {"process_kg", total.process_kg()},
                 {"scope2_location_kg", total.scope2_location_kg()},
                 {"scope2_market_kg", total.scope2_market_kg()},
                 {"total_kg", total.total_kg()},
                 {"readings", total.readings()},
                 {"quarantined", total.quarantined()}};
  j["energy"] = nlohmann::ordered_json::array();
  for (const v1::EnergyUse& e : total.energy()) {
    j["energy"].push_back(
        {{"energy_kind", std::string(EnergyKindName(e.energy_kind()))},
         {"quantity", e.quantity()},
         {"unit", e.unit()}});
  }
  // Sites and lines.
  std::map<std::string, std::map<std::string, double>> sites;
  std::map<std::string, double> site_totals;
  for (const auto& [key, row] : rows) {
    site_totals[row.site_id] += row.emissions_kg;
    sites[row.site_id][row.line_id] += row.emissions_kg;
  }
  j["sites"] = nlohmann::ordered_json::array();
  for (const auto& [site, lines] : sites) {
    nlohmann::ordered_json s = {{"site_id", site},
                                {"total_kg", site_totals[site]}};
    s["lines"] = nlohmann::ordered_json::array();
    for (const auto& [line, kg] : lines)
      s["lines"].push_back({{"line_id", line}, {"total_kg", kg}});
    j["sites"].push_back(std::move(s));
  }
  j["rows"] = nlohmann::ordered_json::array();
  for (const auto& [key, row] : rows) {
    j["rows"].push_back({{"site_id", row.site_id},
                         {"line_id", row.line_id},
                         {"source", row.source},
                         {"energy_kind", row.energy_kind},
                         {"scope", row.scope},
                         {"activity", row.activity},
                         {"activity_unit", row.activity_unit},
                         {"emissions_kg", row.emissions_kg},
                         {"market_based_kg", row.market_based_kg},
                         {"records", row.records},
                         {"factor_ids", row.factor_ids}});
  }
  nlohmann::ordered_json q = {{"total", quarantined}};
  q["by_reason"] = nlohmann::ordered_json::object();
  for (const auto& [reason, n] : by_reason) q["by_reason"][reason] = n;
  j["quarantine"] = std::move(q);
  j["factors"] = nlohmann::ordered_json::array();
  for (const auto& [id, f] : factors) {
    j["factors"].push_back({{"factor_id", id},
                            {"value", f.value()},
                            {"unit", f.unit()},
                            {"region", f.region()},
                            {"vintage", f.vintage()}});
  }
  if (grade.has_value()) {
    std::string text;
    google::protobuf::util::JsonPrintOptions opts;
    opts.preserve_proto_field_names = true;
    if (google::protobuf::util::MessageToJsonString(*grade, &text, opts).ok()) {
      j["grade"] = nlohmann::ordered_json::parse(text);
    } else {
      j["grade"] = nullptr;
    }
  } else {
    j["grade"] = nullptr;
  }
  j["generate_time"] = Rfc3339(now);
  resp.set_content(j.dump(2) + "\n");
  resp.set_content_type("application/json");
  resp.set_file_name(
      absl::StrFormat("%s-%04d-%02d.json", base, r.year(), r.month()));
  return resp;
}

}  // namespace cityos::carbon
