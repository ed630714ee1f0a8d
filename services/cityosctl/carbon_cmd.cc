// `cityosctl carbon ...`: the carbon account (cityos.carbon.v1.
// CarbonAccountService) from the command line, as tables or, with --json, as
// the RPC responses in JSON.
//
//   cityosctl carbon accounts [--kind enterprise] [--region CN-ZJ-QZ] [--industry C31]
//   cityosctl carbon account quzhou-steel
//   cityosctl carbon emissions quzhou-steel --granularity day --from 2026-11-01 --to 2026-11-30
//   cityosctl carbon regions CN-ZJ-QZ --granularity month --from 2026-01-01 --to 2027-01-01 --sub
//   cityosctl carbon industries --prefix C3 --digits 3 --granularity month --from ... --to ...
//   cityosctl carbon ranking --subject enterprises --metric total --from ... --to ...
//   cityosctl carbon plans [--account ID | --region CODE]
//   cityosctl carbon plan-set --account ID --granularity day --max 10000 [--min 0] ...
//   cityosctl carbon alarms [--account ID] [--region CODE] [--state active]
//   cityosctl carbon ack ALARM_ID [--note TEXT]
//   cityosctl carbon watch [--account ID] [--region CODE] [--open] [--count N]
//   cityosctl carbon grade ID [--at TIME] [--as-reported]
//   cityosctl carbon grades --at TIME [--region CODE] [--industry C31] [--level 2]
//   cityosctl carbon incentives ID
//   cityosctl carbon report ID --month 2026-10 [--format json|csv] [--output FILE]
//   cityosctl carbon factors [--kind grid] [--key electricity] [--region CN] [--at TIME]
//   cityosctl carbon factor-add --kind grid --key electricity --region CN-EAST --vintage 2024
//                               --value 0.5 --unit kgCO2/kWh --source "..." [--from T] [--to T]
//   cityosctl carbon restate (--account ID ... | --region CODE) --from T --to T --reason TEXT
//                            [--factor ID ...]
//   cityosctl carbon restatement ID
//   cityosctl carbon records ID [--from T] [--to T] [--as-reported] [--limit N]
//   cityosctl carbon quarantine [ID] [--reason unit_mismatch] [--from T] [--to T]
//   cityosctl carbon credits ID [--from T] [--to T]
//
// Times are RFC 3339 (2026-11-01T00:00:00+08:00) or a date (2026-11-01,
// midnight UTC). Lists are read page by page to the end.
#include <google/protobuf/util/json_util.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "cityos/carbon/v1/carbon.grpc.pb.h"
#include "cityos/observability.h"
#include "cityos/tls.h"
#include "cityosctl.h"

namespace cityos::ctl {
namespace {

namespace v1 = ::cityos::carbon::v1;
using json = nlohmann::json;

// Registers a streaming call for Ctrl-C (CancelActiveCall) while in scope.
class CarbonActiveCall {
 public:
  explicit CarbonActiveCall(grpc::ClientContext* ctx) { SetActiveCall(ctx); }
  ~CarbonActiveCall() { SetActiveCall(nullptr); }
};

struct Failure {
  std::string message;
};
[[noreturn]] void Die(std::string m) { throw Failure{std::move(m)}; }

std::string Fmt(double v, int digits = 1) {
  return absl::StrFormat("%.*f", digits, v);
}

std::string Ts(const google::protobuf::Timestamp& t) {
  if (t.seconds() == 0 && t.nanos() == 0) return "-";
  return absl::FormatTime("%Y-%m-%dT%H:%M:%SZ",
                          absl::FromUnixSeconds(t.seconds()),
                          absl::UTCTimeZone());
}

std::string Dash(const std::string& s) { return s.empty() ? "-" : s; }

// The enum value's name without its prefix, lower case ("ALARM_STATE_ACTIVE"
// -> "active").
std::string Short(std::string name, const std::string& prefix) {
  if (name.rfind(prefix, 0) == 0) name.erase(0, prefix.size());
  return absl::AsciiStrToLower(name);
}

absl::Time ParseTime(const std::string& flag, const std::string& text) {
  absl::Time t;
  std::string err;
  if (absl::ParseTime(absl::RFC3339_full, text, &t, &err)) return t;
  if (absl::ParseTime("%Y-%m-%d", text, &t, &err)) return t;
  Die(absl::StrFormat(
      "%s: \"%s\" is not an RFC 3339 time or a date (YYYY-MM-DD)", flag, text));
}

// The time of a flag; nullopt when the flag was not given.
std::optional<google::protobuf::Timestamp> TimeArg(const std::string& flag,
                                                   const std::string& text) {
  if (text.empty()) return std::nullopt;
  const absl::Time t = ParseTime(flag, text);
  google::protobuf::Timestamp ts;
  ts.set_seconds(absl::ToUnixSeconds(t));
  ts.set_nanos(
      static_cast<int32_t>((t - absl::FromUnixSeconds(absl::ToUnixSeconds(t))) /
                           absl::Nanoseconds(1)));
  return ts;
}

// Parses "day"/"DAY"/"GRANULARITY_DAY" style enum values.
template <typename E>
E ParseEnum(const std::string& flag, const std::string& text,
            const std::string& prefix, bool (*parse)(const std::string&, E*)) {
  if (text.empty()) return static_cast<E>(0);
  E v;
  std::string name = absl::AsciiStrToUpper(text);
  if (name.rfind(prefix, 0) != 0) name = prefix + name;
  if (!parse(name, &v))
    Die(absl::StrFormat("%s: unknown value \"%s\"", flag, text));
  return v;
}

json ToJson(const google::protobuf::Message& m) {
  google::protobuf::util::JsonPrintOptions opts;
  opts.preserve_proto_field_names = true;
  opts.always_print_primitive_fields = true;
  std::string text;
  if (!google::protobuf::util::MessageToJsonString(m, &text, opts).ok()) {
    Die("cannot convert the response to JSON");
  }
  return json::parse(text);
}

// Every option of every carbon subcommand.
struct Args {
  std::string id, kind, parent, region, industry,
      granularity = "day", from, to, subject, metric = "total", state, note, at,
      month, format = "csv", output, key, vintage, unit, source, tariff, reason,
      plan_id;
  std::vector<std::string> accounts, factors;
  bool sub = false, as_reported = false, asc = false, open = false,
       projection = false;
  double max_kg = 0, min_kg = 0, hysteresis = 0, value = 0;
  int64_t count = 0, limit = 0, digits = 0, level = 0, version = 0;
};

class CarbonCli final : public CarbonCommands {
 public:
  CarbonCli(CLI::App& app, CarbonGlobals g) : g_(g) {
    root_ = app.add_subcommand(
        "carbon", "The carbon account (accounts, emissions, alarms, ...)");
    root_->require_subcommand(1);
    Add(
        "accounts", "List accounts",
        [&](CLI::App* c) {
          c->add_option("--kind", a_.kind,
                        "enterprise|site|line|meter|individual");
          c->add_option("--parent", a_.parent, "Only children of this account");
          c->add_option("--region", a_.region, "Only this region and below");
          c->add_option("--industry", a_.industry, "Industry code prefix");
        },
        [this](std::ostream& o) { Accounts(o); });
    Add(
        "account", "Show one account",
        [&](CLI::App* c) {
          c->add_option("id", a_.id, "Account id")->required();
        },
        [this](std::ostream& o) { Account(o); });
    Add(
        "emissions", "Emissions of an account per period",
        [&](CLI::App* c) {
          c->add_option("id", a_.id, "Account id")->required();
          Period(c);
        },
        [this](std::ostream& o) { Emissions(o); });
    Add(
        "regions", "Emissions of a region (and its sub-regions)",
        [&](CLI::App* c) {
          c->add_option("region", a_.region, "Region code, e.g. CN-ZJ-QZ")
              ->required();
          Period(c);
          c->add_flag("--sub", a_.sub, "Also each direct sub-region");
        },
        [this](std::ostream& o) { Regions(o); });
    Add(
        "industries", "Emissions per industry",
        [&](CLI::App* c) {
          c->add_option("--prefix", a_.industry,
                        "Industry code prefix, e.g. C3");
          c->add_option("--digits", a_.digits,
                        "Group by codes of this many characters");
          c->add_option("--region", a_.region, "Only this region");
          Period(c);
        },
        [this](std::ostream& o) { Industries(o); });
    Add(
        "ranking", "Rank enterprises, regions or industries",
        [&](CLI::App* c) {
          c->add_option("--subject", a_.subject,
                        "enterprises|regions|industries")
              ->required();
          c->add_option("--metric", a_.metric, "total|intensity|change|k")
              ->capture_default_str();
          c->add_option("--from", a_.from, "Period start")->required();
          c->add_option("--to", a_.to, "Period end")->required();
          c->add_option("--region", a_.region, "Within this region");
          c->add_option("--industry", a_.industry,
                        "Within this industry prefix");
          c->add_option("--digits", a_.digits, "Industries: group digits");
          c->add_option("--limit", a_.limit, "Most entries");
          c->add_flag("--asc", a_.asc, "Lowest first");
        },
        [this](std::ostream& o) { Ranking(o); });
    Add(
        "plans", "List plans",
        [&](CLI::App* c) {
          c->add_option("--account", a_.id, "Plans of this account");
          c->add_option("--region", a_.region, "Plans of this region");
          c->add_option("--at", a_.at, "Only plans valid at this time");
        },
        [this](std::ostream& o) { Plans(o); });
    Add(
        "plan-set", "Create or replace a plan",
        [&](CLI::App* c) {
          c->add_option("--id", a_.plan_id, "Plan id (replace); empty creates");
          c->add_option("--version", a_.version,
                        "Current version (0 skips the check)");
          c->add_option("--account", a_.id, "Budget of this account");
          c->add_option("--region", a_.region, "Budget of this region");
          c->add_option("--granularity", a_.granularity, "day|month|year")
              ->capture_default_str();
          c->add_option("--min", a_.min_kg, "Planned minimum per period, kg");
          c->add_option("--max", a_.max_kg, "Planned maximum per period, kg")
              ->required();
          c->add_option("--hysteresis", a_.hysteresis,
                        "Fraction of the range (default 0.05)");
          c->add_flag("--projection", a_.projection,
                      "Also alarm on the projected total");
          c->add_option("--from", a_.from, "Valid from");
          c->add_option("--to", a_.to, "Valid until");
        },
        [this](std::ostream& o) { PlanSet(o); });
    Add(
        "alarms", "List alarms",
        [&](CLI::App* c) {
          c->add_option("--account", a_.id, "Alarms of this account and below");
          c->add_option("--region", a_.region,
                        "Alarms of this region and below");
          c->add_option("--state", a_.state, "active|acknowledged|cleared");
          c->add_option("--from", a_.from, "Raised at or after");
          c->add_option("--to", a_.to, "Raised before");
        },
        [this](std::ostream& o) { Alarms(o); });
    Add(
        "ack", "Acknowledge an alarm",
        [&](CLI::App* c) {
          c->add_option("id", a_.id, "Alarm id")->required();
          c->add_option("--note", a_.note, "Note, e.g. the corrective action");
        },
        [this](std::ostream& o) { Ack(o); });
    Add(
        "watch", "Follow alarm changes live (Ctrl-C ends)",
        [&](CLI::App* c) {
          c->add_option("--account", a_.id, "Alarms of this account and below");
          c->add_option("--region", a_.region,
                        "Alarms of this region and below");
          c->add_flag("--open", a_.open, "First print the open alarms");
          c->add_option("--count", a_.count, "Stop after this many changes");
        },
        [this](std::ostream& o) { Watch(o); });
    Add(
        "grade", "An enterprise's grade with its explanation",
        [&](CLI::App* c) {
          c->add_option("id", a_.id, "Enterprise account")->required();
          c->add_option("--at", a_.at,
                        "A time inside the graded period (default: latest)");
          c->add_flag("--as-reported", a_.as_reported,
                      "The grade as first reported");
        },
        [this](std::ostream& o) { Grade(o); });
    Add(
        "grades", "Grades of a period, best first",
        [&](CLI::App* c) {
          c->add_option("--at", a_.at, "A time inside the graded period")
              ->required();
          c->add_option("--region", a_.region, "Only this region");
          c->add_option("--industry", a_.industry, "Only this industry prefix");
          c->add_option("--level", a_.level, "Only this level (1-5)");
        },
        [this](std::ostream& o) { Grades(o); });
    Add(
        "incentives", "Incentive statement of an account",
        [&](CLI::App* c) {
          c->add_option("id", a_.id, "Account id")->required();
        },
        [this](std::ostream& o) { Incentives(o); });
    Add(
        "report", "An enterprise's monthly report",
        [&](CLI::App* c) {
          c->add_option("id", a_.id, "Enterprise account")->required();
          c->add_option("--month", a_.month, "YYYY-MM")->required();
          c->add_option("--format", a_.format, "json|csv")
              ->capture_default_str();
          c->add_option("--output", a_.output,
                        "Write to this file (default: stdout)");
          c->add_flag("--as-reported", a_.as_reported,
                      "Figures as first reported");
        },
        [this](std::ostream& o) { Report(o); });
    Add(
        "factors", "List emission factors",
        [&](CLI::App* c) {
          c->add_option("--kind", a_.kind, "grid|fuel|supplier|process");
          c->add_option("--key", a_.key, "Factor key, e.g. electricity");
          c->add_option("--region", a_.region, "Region, e.g. CN-EAST");
          c->add_option("--at", a_.at, "Only factors valid at this time");
        },
        [this](std::ostream& o) { Factors(o); });
    Add(
        "factor-add", "Add an emission factor (carbon-admin)",
        [&](CLI::App* c) {
          c->add_option("--kind", a_.kind, "grid|fuel|supplier|process")
              ->required();
          c->add_option("--key", a_.key, "Key, e.g. electricity")->required();
          c->add_option("--region", a_.region, "Region, e.g. CN-EAST")
              ->required();
          c->add_option("--vintage", a_.vintage, "Vintage, e.g. 2024")
              ->required();
          c->add_option("--value", a_.value, "Value")->required();
          c->add_option("--unit", a_.unit, "Unit, e.g. kgCO2/kWh")->required();
          c->add_option("--source", a_.source, "Citation of the source")
              ->required();
          c->add_option("--tariff", a_.tariff, "Supplier tariff id");
          c->add_option("--from", a_.from, "Valid from (default 1970)");
          c->add_option("--to", a_.to, "Valid until (default: open)");
        },
        [this](std::ostream& o) { FactorAdd(o); });
    Add(
        "restate", "Request a restatement (carbon-admin)",
        [&](CLI::App* c) {
          c->add_option("--account", a_.accounts,
                        "Account to restate (repeatable)");
          c->add_option("--region", a_.region, "Region to restate");
          c->add_option("--from", a_.from, "Period start")->required();
          c->add_option("--to", a_.to, "Period end")->required();
          c->add_option("--factor", a_.factors,
                        "Factor id to apply (repeatable)");
          c->add_option("--reason", a_.reason, "Why")->required();
        },
        [this](std::ostream& o) { Restate(o); });
    Add(
        "restatement", "Show a restatement",
        [&](CLI::App* c) {
          c->add_option("id", a_.id, "Restatement id")->required();
        },
        [this](std::ostream& o) { Restatement(o); });
    Add(
        "records", "Emission records behind an account's figures, oldest first",
        [&](CLI::App* c) {
          c->add_option("id", a_.id, "Account (with its descendants)")->required();
          c->add_option("--from", a_.from, "Intervals starting at or after");
          c->add_option("--to", a_.to, "Intervals starting before");
          c->add_flag("--as-reported", a_.as_reported, "Records as first reported");
          c->add_option("--limit", a_.limit, "Most records (default 1000)");
        },
        [this](std::ostream& o) { Records(o); });
    Add(
        "quarantine", "Quarantined readings, newest first",
        [&](CLI::App* c) {
          c->add_option("id", a_.id, "Account (empty: all, carbon-viewer)");
          c->add_option("--reason", a_.reason,
                        "Only this reason, e.g. unit_mismatch");
          c->add_option("--from", a_.from, "Received at or after");
          c->add_option("--to", a_.to, "Received before");
        },
        [this](std::ostream& o) { Quarantine(o); });
    Add(
        "credits", "Green credits of an individual account",
        [&](CLI::App* c) {
          c->add_option("id", a_.id, "Individual account, e.g. person/alice")
              ->required();
          c->add_option("--from", a_.from, "Behaviour at or after");
          c->add_option("--to", a_.to, "Behaviour before");
        },
        [this](std::ostream& o) { Credits(o); });
  }

  bool parsed() const override { return root_->parsed(); }

  int Run(std::ostream& out, std::ostream& err) override {
    try {
      for (auto& [cmd, run] : commands_) {
        if (cmd->parsed()) {
          run(out);
          return 0;
        }
      }
      err << "cityosctl: carbon: no command\n";
      return 2;
    } catch (const Failure& f) {
      out.flush();
      err << "cityosctl: " << f.message << "\n";
      return 1;
    }
  }

 private:
  using Runner = std::function<void(std::ostream&)>;

  void Add(const char* name, const char* help,
           const std::function<void(CLI::App*)>& options, Runner run) {
    CLI::App* c = root_->add_subcommand(name, help);
    options(c);
    commands_.emplace_back(c, std::move(run));
  }
  void Period(CLI::App* c) {
    c->add_option("--granularity", a_.granularity, "hour|day|month|year")
        ->capture_default_str();
    c->add_option("--from", a_.from, "Range start")->required();
    c->add_option("--to", a_.to, "Range end")->required();
    c->add_flag("--as-reported", a_.as_reported, "Figures as first reported");
  }

  // ---- connection -------------------------------------------------------
  void Connect() {
    if (stub_ != nullptr) return;
    std::string path = *g_.config;
    if (path.empty()) {
      absl::StatusOr<std::string> p = ClientConfigPath();
      if (!p.ok()) Die("no context file: " + std::string(p.status().message()));
      path = *p;
    }
    absl::StatusOr<ClientConfig> config = LoadClientConfig(path);
    if (!config.ok()) Die(std::string(config.status().message()));
    const std::string name =
        g_.context->empty() ? config->current_context : *g_.context;
    const ClientContext* ctx = nullptr;
    for (const ClientContext& c : config->contexts) {
      if (c.name == name) ctx = &c;
    }
    if (ctx == nullptr)
      Die(absl::StrFormat("%s: no context named \"%s\"", path, name));
    endpoint_ = ctx->endpoint;
    std::optional<std::string> pin;
    if (!ctx->server_id.empty()) pin = ctx->server_id;
    auto creds = MakeChannelCredentials(TlsConfigFor(*ctx), pin);
    if (!creds.ok()) {
      Die(absl::StrFormat("context \"%s\": bad client certificate setup: %s",
                          ctx->name, std::string(creds.status().message())));
    }
    stub_ = v1::CarbonAccountService::NewStub(
        CreateObservedChannel(ctx->endpoint, *creds));
  }
  template <typename Req, typename Resp, typename Method>
  Resp Call(Method m, const Req& req) {
    Connect();
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + *g_.timeout));
    Resp resp;
    grpc::Status s = ((*stub_).*m)(&ctx, req, &resp);
    if (!s.ok()) Die(DescribeRpcError(endpoint_, s));
    return resp;
  }
  bool AsJson(std::ostream& out, const google::protobuf::Message& m) {
    if (!*g_.json) return false;
    out << ToJson(m).dump(2) << "\n";
    return true;
  }
  v1::Granularity Granularity() {
    return ParseEnum<v1::Granularity>("--granularity", a_.granularity,
                                      "GRANULARITY_", v1::Granularity_Parse);
  }
  void Range(common::v1::TimeRange* r) {
    if (auto t = TimeArg("--from", a_.from)) *r->mutable_start() = *t;
    if (auto t = TimeArg("--to", a_.to)) *r->mutable_end() = *t;
  }
  static std::vector<std::string> TotalRow(const v1::EmissionTotal& t) {
    return {Ts(t.period().start()),       Fmt(t.total_kg()),
            Fmt(t.scope1_kg()),           Fmt(t.process_kg()),
            Fmt(t.scope2_location_kg()),  Fmt(t.scope2_market_kg()),
            std::to_string(t.readings()), std::to_string(t.quarantined())};
  }
  static const std::vector<std::string>& TotalHeader() {
    static const std::vector<std::string> h = {
        "PERIOD",        "TOTAL_KG",      "SCOPE1_KG", "PROCESS_KG",
        "SCOPE2_LOC_KG", "SCOPE2_MKT_KG", "READINGS",  "QUARANTINED"};
    return h;
  }

  // ---- commands ---------------------------------------------------------
  void Accounts(std::ostream& out) {
    v1::ListAccountsRequest req;
    req.set_kind(ParseEnum<v1::AccountKind>("--kind", a_.kind, "ACCOUNT_KIND_",
                                            v1::AccountKind_Parse));
    req.set_parent_id(a_.parent);
    req.set_region(a_.region);
    req.set_industry_code(a_.industry);
    req.set_page_size(1000);
    v1::ListAccountsResponse all;
    while (true) {
      auto page = Call<v1::ListAccountsRequest, v1::ListAccountsResponse>(
          &v1::CarbonAccountService::Stub::ListAccounts, req);
      for (auto& a : *page.mutable_accounts())
        *all.add_accounts() = std::move(a);
      if (page.next_page_token().empty()) break;
      req.set_page_token(page.next_page_token());
    }
    if (AsJson(out, all)) return;
    std::vector<std::vector<std::string>> rows;
    for (const auto& a : all.accounts()) {
      rows.push_back({a.account_id(),
                      Short(v1::AccountKind_Name(a.kind()), "ACCOUNT_KIND_"),
                      Dash(a.org()), Dash(a.industry_code()), Dash(a.region()),
                      Dash(a.name())});
    }
    PrintTable(out, {"ID", "KIND", "ORG", "INDUSTRY", "REGION", "NAME"}, rows);
  }
  void Account(std::ostream& out) {
    v1::GetAccountRequest req;
    req.set_account_id(a_.id);
    auto r = Call<v1::GetAccountRequest, v1::GetAccountResponse>(
        &v1::CarbonAccountService::Stub::GetAccount, req);
    if (AsJson(out, r)) return;
    const v1::Account& a = r.account();
    out << "id          " << a.account_id() << "\n"
        << "kind        "
        << Short(v1::AccountKind_Name(a.kind()), "ACCOUNT_KIND_") << "\n"
        << "name        " << Dash(a.name()) << "\n"
        << "parent      " << Dash(a.parent_id()) << "\n"
        << "org         " << Dash(a.org()) << "\n"
        << "industry    " << Dash(a.industry_code()) << "\n"
        << "region      " << Dash(a.region()) << "\n"
        << "children    " << r.children() << "\n"
        << "created     " << Ts(a.create_time()) << "\n";
    if (a.has_meter()) {
      out << "meter       "
          << Short(v1::EnergyKind_Name(a.meter().energy_kind()), "ENERGY_KIND_")
          << " in " << a.meter().unit() << ", max " << a.meter().max_per_hour()
          << "/h"
          << (a.meter().tariff_id().empty()
                  ? ""
                  : ", tariff " + a.meter().tariff_id())
          << "\n";
    }
    if (!a.data_subject().empty())
      out << "person      " << a.data_subject() << "\n";
  }
  void Emissions(std::ostream& out) {
    v1::GetEmissionsRequest req;
    req.set_account_id(a_.id);
    req.set_granularity(Granularity());
    Range(req.mutable_range());
    req.set_as_reported(a_.as_reported);
    auto r = Call<v1::GetEmissionsRequest, v1::GetEmissionsResponse>(
        &v1::CarbonAccountService::Stub::GetEmissions, req);
    if (AsJson(out, r)) return;
    std::vector<std::vector<std::string>> rows;
    for (const auto& t : r.totals()) rows.push_back(TotalRow(t));
    PrintTable(out, TotalHeader(), rows);
  }
  void Regions(std::ostream& out) {
    v1::GetRegionEmissionsRequest req;
    req.set_region(a_.region);
    req.set_granularity(Granularity());
    Range(req.mutable_range());
    req.set_include_subregions(a_.sub);
    req.set_as_reported(a_.as_reported);
    auto r =
        Call<v1::GetRegionEmissionsRequest, v1::GetRegionEmissionsResponse>(
            &v1::CarbonAccountService::Stub::GetRegionEmissions, req);
    if (AsJson(out, r)) return;
    std::vector<std::vector<std::string>> rows;
    for (const auto& reg : r.regions()) {
      for (const auto& t : reg.totals()) {
        std::vector<std::string> row = {reg.region(), reg.name()};
        for (std::string& c : TotalRow(t)) row.push_back(std::move(c));
        row.push_back(Fmt(reg.credited_g(), 0));
        rows.push_back(std::move(row));
      }
    }
    std::vector<std::string> header = {"REGION", "NAME"};
    for (const std::string& h : TotalHeader()) header.push_back(h);
    header.push_back("CREDITED_G");
    PrintTable(out, header, rows);
  }
  void Industries(std::ostream& out) {
    v1::GetIndustryEmissionsRequest req;
    req.set_industry_code(a_.industry);
    req.set_group_digits(static_cast<uint32_t>(a_.digits));
    req.set_region(a_.region);
    req.set_granularity(Granularity());
    Range(req.mutable_range());
    req.set_as_reported(a_.as_reported);
    auto r =
        Call<v1::GetIndustryEmissionsRequest, v1::GetIndustryEmissionsResponse>(
            &v1::CarbonAccountService::Stub::GetIndustryEmissions, req);
    if (AsJson(out, r)) return;
    std::vector<std::vector<std::string>> rows;
    for (const auto& ind : r.industries()) {
      for (const auto& t : ind.totals()) {
        std::vector<std::string> row = {ind.industry_code(),
                                        std::to_string(ind.enterprises())};
        for (std::string& c : TotalRow(t)) row.push_back(std::move(c));
        rows.push_back(std::move(row));
      }
    }
    std::vector<std::string> header = {"INDUSTRY", "ENTERPRISES"};
    for (const std::string& h : TotalHeader()) header.push_back(h);
    PrintTable(out, header, rows);
  }
  void Ranking(std::ostream& out) {
    v1::GetRankingRequest req;
    req.set_subject(ParseEnum<v1::RankingSubject>(
        "--subject", a_.subject, "RANKING_SUBJECT_", v1::RankingSubject_Parse));
    req.set_metric(ParseEnum<v1::RankingMetric>(
        "--metric", a_.metric, "RANKING_METRIC_", v1::RankingMetric_Parse));
    Range(req.mutable_period());
    req.set_region(a_.region);
    req.set_industry_code(a_.industry);
    req.set_group_digits(static_cast<uint32_t>(a_.digits));
    req.set_limit(static_cast<uint32_t>(a_.limit));
    req.set_ascending(a_.asc);
    auto r = Call<v1::GetRankingRequest, v1::GetRankingResponse>(
        &v1::CarbonAccountService::Stub::GetRanking, req);
    if (AsJson(out, r)) return;
    std::vector<std::vector<std::string>> rows;
    for (const auto& e : r.entries()) {
      rows.push_back({std::to_string(e.rank()), e.id(), Dash(e.name()),
                      Fmt(e.value(), 4), Dash(e.unit())});
    }
    PrintTable(out, {"RANK", "ID", "NAME", "VALUE", "UNIT"}, rows);
    out << r.ranked() << " ranked\n";
  }
  static std::vector<std::string> PlanRow(const v1::Plan& p) {
    return {p.plan_id(),
            p.target_case() == v1::Plan::kAccountId ? p.account_id()
                                                    : "region " + p.region(),
            Short(v1::Granularity_Name(p.granularity()), "GRANULARITY_"),
            Fmt(p.min_kg()),
            Fmt(p.max_kg()),
            Fmt(p.hysteresis(), 2),
            p.alarm_on_projection() ? "yes" : "no",
            std::to_string(p.version()),
            Ts(p.valid().start()),
            Ts(p.valid().end())};
  }
  void Plans(std::ostream& out) {
    v1::ListPlansRequest req;
    req.set_account_id(a_.id);
    req.set_region(a_.region);
    if (auto t = TimeArg("--at", a_.at)) *req.mutable_valid_at() = *t;
    auto r = Call<v1::ListPlansRequest, v1::ListPlansResponse>(
        &v1::CarbonAccountService::Stub::ListPlans, req);
    if (AsJson(out, r)) return;
    std::vector<std::vector<std::string>> rows;
    for (const auto& p : r.plans()) rows.push_back(PlanRow(p));
    PrintTable(out,
          {"ID", "TARGET", "PERIOD", "MIN_KG", "MAX_KG", "HYST", "PROJ", "VER",
           "FROM", "TO"},
          rows);
  }
  void PlanSet(std::ostream& out) {
    if (a_.id.empty() == a_.region.empty())
      Die("plan-set: give --account or --region (one)");
    v1::SetPlanRequest req;
    v1::Plan* p = req.mutable_plan();
    p->set_plan_id(a_.plan_id);
    p->set_version(static_cast<uint64_t>(a_.version));
    if (!a_.id.empty()) p->set_account_id(a_.id);
    if (!a_.region.empty()) p->set_region(a_.region);
    p->set_granularity(Granularity());
    p->set_min_kg(a_.min_kg);
    p->set_max_kg(a_.max_kg);
    p->set_hysteresis(a_.hysteresis);
    p->set_alarm_on_projection(a_.projection);
    Range(p->mutable_valid());
    auto r = Call<v1::SetPlanRequest, v1::SetPlanResponse>(
        &v1::CarbonAccountService::Stub::SetPlan, req);
    if (AsJson(out, r)) return;
    out << "plan " << r.plan().plan_id() << " version " << r.plan().version()
        << "\n";
  }
  static std::vector<std::string> AlarmRow(const v1::Alarm& a) {
    return {a.alarm_id(),
            Short(v1::AlarmState_Name(a.state()), "ALARM_STATE_"),
            Short(v1::AlarmCondition_Name(a.condition()), "ALARM_CONDITION_"),
            a.account_id().empty() ? "region " + a.region() : a.account_id(),
            Ts(a.period().start()),
            Fmt(a.actual_kg()),
            Fmt(a.projected_kg()),
            Fmt(a.planned_min_kg()) + "-" + Fmt(a.planned_max_kg()),
            a.attributions().empty() ? "-" : a.attributions(0).account_id(),
            Ts(a.raise_time())};
  }
  static const std::vector<std::string>& AlarmHeader() {
    static const std::vector<std::string> h = {
        "ID",        "STATE",        "CONDITION", "TARGET",          "PERIOD",
        "ACTUAL_KG", "PROJECTED_KG", "RANGE_KG",  "TOP_CONTRIBUTOR", "RAISED"};
    return h;
  }
  void Alarms(std::ostream& out) {
    v1::ListAlarmsRequest req;
    req.set_account_id(a_.id);
    req.set_region(a_.region);
    req.set_state(ParseEnum<v1::AlarmState>("--state", a_.state, "ALARM_STATE_",
                                            v1::AlarmState_Parse));
    Range(req.mutable_range());
    req.set_page_size(1000);
    v1::ListAlarmsResponse all;
    while (true) {
      auto page = Call<v1::ListAlarmsRequest, v1::ListAlarmsResponse>(
          &v1::CarbonAccountService::Stub::ListAlarms, req);
      for (auto& a : *page.mutable_alarms()) *all.add_alarms() = std::move(a);
      if (page.next_page_token().empty()) break;
      req.set_page_token(page.next_page_token());
    }
    if (AsJson(out, all)) return;
    std::vector<std::vector<std::string>> rows;
    for (const auto& a : all.alarms()) rows.push_back(AlarmRow(a));
    PrintTable(out, AlarmHeader(), rows);
  }
  void Ack(std::ostream& out) {
    v1::AcknowledgeAlarmRequest req;
    req.set_alarm_id(a_.id);
    req.set_note(a_.note);
    auto r = Call<v1::AcknowledgeAlarmRequest, v1::AcknowledgeAlarmResponse>(
        &v1::CarbonAccountService::Stub::AcknowledgeAlarm, req);
    if (AsJson(out, r)) return;
    out << "alarm " << r.alarm().alarm_id() << " "
        << Short(v1::AlarmState_Name(r.alarm().state()), "ALARM_STATE_")
        << " by " << r.alarm().acknowledged_by() << "\n";
  }
  void Watch(std::ostream& out) {
    Connect();
    v1::WatchAlarmsRequest req;
    req.set_account_id(a_.id);
    req.set_region(a_.region);
    req.set_include_open(a_.open);
    grpc::ClientContext ctx;
    CarbonActiveCall active(&ctx);
    auto reader = stub_->WatchAlarms(&ctx, req);
    v1::WatchAlarmsResponse resp;
    int64_t seen = 0;
    bool done = false;
    while (!done && reader->Read(&resp)) {
      for (const auto& c : resp.changes()) {
        if (*g_.json) {
          out << ToJson(c).dump() << "\n";
        } else {
          std::vector<std::string> row = AlarmRow(c.alarm());
          out << Short(v1::AlarmChangeKind_Name(c.kind()), "ALARM_CHANGE_KIND_")
              << " " << row[0] << " " << row[2] << " " << row[3] << " actual "
              << row[5] << " kg, range " << row[7] << " kg, top " << row[8]
              << "\n";
        }
        out.flush();
        if (a_.count > 0 && ++seen >= a_.count) {
          done = true;
          break;
        }
      }
    }
    if (done) ctx.TryCancel();
    grpc::Status s = reader->Finish();
    if (!done && !s.ok() && s.error_code() != grpc::StatusCode::CANCELLED) {
      Die(DescribeRpcError(endpoint_, s));
    }
  }
  void PrintGrade(std::ostream& out, const v1::Grade& g) {
    out << "account     " << g.account_id() << "\n"
        << "period      " << Ts(g.period().start()) << " - "
        << Ts(g.period().end()) << "\n"
        << "level       " << g.level() << "\n"
        << "colour      "
        << Short(v1::GradeColour_Name(g.colour()), "GRADE_COLOUR_") << "\n"
        << "K           " << Fmt(g.k(), 4) << "\n"
        << "intensity   " << Fmt(g.intensity(), 4) << " t CO2 / 10k CNY\n"
        << "benchmark   " << Fmt(g.benchmark(), 4) << " (" << g.benchmark_id()
        << ", version " << g.benchmark_version() << ")\n"
        << "emissions   " << Fmt(g.emissions_kg()) << " kg\n"
        << "value added " << Fmt(g.value_added_10k_yuan(), 2) << " x 10k CNY\n"
        << "method      " << g.method() << "\n"
        << "explanation " << g.explanation() << "\n";
    for (const auto& d : g.dimensions()) {
      out << "dimension   "
          << Short(v1::GradeDimension_Name(d.dimension()), "GRADE_DIMENSION_")
          << ": ratio " << Fmt(d.ratio(), 4) << " to " << Fmt(d.reference(), 4)
          << " (" << d.reference_version()
          << "): " << Short(v1::GradeColour_Name(d.colour()), "GRADE_COLOUR_")
          << "\n";
    }
    if (!g.restatement_id().empty())
      out << "restatement " << g.restatement_id() << "\n";
  }
  void Grade(std::ostream& out) {
    v1::GetGradeRequest req;
    req.set_account_id(a_.id);
    if (auto t = TimeArg("--at", a_.at)) *req.mutable_period_time() = *t;
    req.set_as_reported(a_.as_reported);
    auto r = Call<v1::GetGradeRequest, v1::GetGradeResponse>(
        &v1::CarbonAccountService::Stub::GetGrade, req);
    if (AsJson(out, r)) return;
    PrintGrade(out, r.grade());
  }
  void Grades(std::ostream& out) {
    v1::ListGradesRequest req;
    if (auto t = TimeArg("--at", a_.at)) *req.mutable_period_time() = *t;
    req.set_region(a_.region);
    req.set_industry_code(a_.industry);
    req.set_level(static_cast<int32_t>(a_.level));
    req.set_page_size(1000);
    v1::ListGradesResponse all;
    while (true) {
      auto page = Call<v1::ListGradesRequest, v1::ListGradesResponse>(
          &v1::CarbonAccountService::Stub::ListGrades, req);
      for (auto& g : *page.mutable_grades()) *all.add_grades() = std::move(g);
      if (page.next_page_token().empty()) break;
      req.set_page_token(page.next_page_token());
    }
    if (AsJson(out, all)) return;
    std::vector<std::vector<std::string>> rows;
    for (const auto& g : all.grades()) {
      rows.push_back({g.account_id(), std::to_string(g.level()),
                      Short(v1::GradeColour_Name(g.colour()), "GRADE_COLOUR_"),
                      Fmt(g.k(), 4), Fmt(g.intensity(), 4),
                      Fmt(g.benchmark(), 4), Ts(g.period().start())});
    }
    PrintTable(
        out,
        {"ACCOUNT", "LEVEL", "COLOUR", "K", "INTENSITY", "BENCHMARK", "PERIOD"},
        rows);
  }
  void Incentives(std::ostream& out) {
    v1::GetIncentiveStatementRequest req;
    req.set_account_id(a_.id);
    req.set_page_size(1000);
    auto r = Call<v1::GetIncentiveStatementRequest,
                  v1::GetIncentiveStatementResponse>(
        &v1::CarbonAccountService::Stub::GetIncentiveStatement, req);
    if (AsJson(out, r)) return;
    out << "points " << r.points_balance() << ", loan tier "
        << Dash(r.loan_tier()) << "\n";
    std::vector<std::vector<std::string>> rows;
    for (const auto& e : r.entries()) {
      std::string what =
          e.kind() == v1::INCENTIVE_KIND_POINTS   ? std::to_string(e.points())
          : e.kind() == v1::INCENTIVE_KIND_COUPON ? e.coupon_id()
                                                  : e.loan_tier();
      rows.push_back(
          {Ts(e.time()),
           Short(v1::IncentiveKind_Name(e.kind()), "INCENTIVE_KIND_"), what,
           Dash(e.reverses_entry_id()), Dash(e.description())});
    }
    PrintTable(out, {"TIME", "KIND", "VALUE", "REVERSES", "DESCRIPTION"}, rows);
  }
  void Report(std::ostream& out) {
    v1::GetMonthlyReportRequest req;
    req.set_account_id(a_.id);
    int year = 0, month = 0;
    if (std::sscanf(a_.month.c_str(), "%d-%d", &year, &month) != 2) {
      Die(absl::StrFormat("--month: \"%s\" is not YYYY-MM", a_.month));
    }
    req.set_year(year);
    req.set_month(month);
    req.set_format(ParseEnum<v1::ReportFormat>(
        "--format", a_.format, "REPORT_FORMAT_", v1::ReportFormat_Parse));
    req.set_as_reported(a_.as_reported);
    auto r = Call<v1::GetMonthlyReportRequest, v1::GetMonthlyReportResponse>(
        &v1::CarbonAccountService::Stub::GetMonthlyReport, req);
    if (a_.output.empty()) {
      out << r.content();
      return;
    }
    std::ofstream f(a_.output, std::ios::binary | std::ios::trunc);
    f << r.content();
    if (!f) Die(absl::StrFormat("--output: cannot write %s", a_.output));
    out << "wrote " << a_.output << " (" << r.content().size() << " bytes, "
        << r.content_type() << ")\n";
  }
  void Factors(std::ostream& out) {
    v1::ListEmissionFactorsRequest req;
    req.set_kind(ParseEnum<v1::FactorKind>("--kind", a_.kind, "FACTOR_KIND_",
                                           v1::FactorKind_Parse));
    req.set_key(a_.key);
    req.set_region(a_.region);
    if (auto t = TimeArg("--at", a_.at)) *req.mutable_valid_at() = *t;
    auto r =
        Call<v1::ListEmissionFactorsRequest, v1::ListEmissionFactorsResponse>(
            &v1::CarbonAccountService::Stub::ListEmissionFactors, req);
    if (AsJson(out, r)) return;
    std::vector<std::vector<std::string>> rows;
    for (const auto& f : r.factors()) {
      rows.push_back({f.factor_id(),
                      Short(v1::FactorKind_Name(f.kind()), "FACTOR_KIND_"),
                      f.key(), f.region(), f.vintage(), Fmt(f.value(), 4),
                      f.unit(), Dash(f.tariff_id()), Ts(f.valid().start()),
                      Ts(f.valid().end()), f.source()});
    }
    PrintTable(out,
          {"ID", "KIND", "KEY", "REGION", "VINTAGE", "VALUE", "UNIT", "TARIFF",
           "FROM", "TO", "SOURCE"},
          rows);
  }
  void FactorAdd(std::ostream& out) {
    v1::AddEmissionFactorRequest req;
    v1::EmissionFactor* f = req.mutable_factor();
    f->set_kind(ParseEnum<v1::FactorKind>("--kind", a_.kind, "FACTOR_KIND_",
                                          v1::FactorKind_Parse));
    f->set_key(a_.key);
    f->set_region(a_.region);
    f->set_vintage(a_.vintage);
    f->set_value(a_.value);
    f->set_unit(a_.unit);
    f->set_source(a_.source);
    f->set_tariff_id(a_.tariff);
    const std::string from = a_.from.empty() ? "1970-01-01" : a_.from;
    if (auto t = TimeArg("--from", from))
      *f->mutable_valid()->mutable_start() = *t;
    if (auto t = TimeArg("--to", a_.to))
      *f->mutable_valid()->mutable_end() = *t;
    auto r = Call<v1::AddEmissionFactorRequest, v1::AddEmissionFactorResponse>(
        &v1::CarbonAccountService::Stub::AddEmissionFactor, req);
    if (AsJson(out, r)) return;
    out << "factor " << r.factor().factor_id() << " added\n";
  }
  static void PrintRestatement(std::ostream& out, const v1::Restatement& r) {
    out << "id          " << r.restatement_id() << "\n"
        << "state       "
        << Short(v1::RestatementState_Name(r.state()), "RESTATEMENT_STATE_")
        << "\n"
        << "scope       "
        << (r.region().empty() ? std::string("accounts ") +
                                     [&] {
                                       std::string s;
                                       for (const auto& a : r.account_ids())
                                         s += (s.empty() ? "" : ",") + a;
                                       return s;
                                     }()
                               : "region " + r.region())
        << "\n"
        << "period      " << Ts(r.period().start()) << " - "
        << Ts(r.period().end()) << "\n"
        << "reason      " << r.reason() << "\n"
        << "requested   " << Ts(r.request_time()) << " by " << r.requested_by()
        << "\n"
        << "finished    " << Ts(r.finish_time()) << "\n"
        << "records     " << r.records() << "\n"
        << "delta       " << Fmt(r.delta_kg(), 3) << " kg\n"
        << "reversals   " << r.reversals() << "\n";
    if (!r.error().empty()) out << "error       " << r.error() << "\n";
  }
  void Restate(std::ostream& out) {
    v1::RequestRestatementRequest req;
    for (const std::string& a : a_.accounts) req.add_account_ids(a);
    req.set_region(a_.region);
    Range(req.mutable_period());
    for (const std::string& f : a_.factors) req.add_factor_ids(f);
    req.set_reason(a_.reason);
    auto r =
        Call<v1::RequestRestatementRequest, v1::RequestRestatementResponse>(
            &v1::CarbonAccountService::Stub::RequestRestatement, req);
    if (AsJson(out, r)) return;
    PrintRestatement(out, r.restatement());
  }
  void Restatement(std::ostream& out) {
    v1::GetRestatementRequest req;
    req.set_restatement_id(a_.id);
    auto r = Call<v1::GetRestatementRequest, v1::GetRestatementResponse>(
        &v1::CarbonAccountService::Stub::GetRestatement, req);
    if (AsJson(out, r)) return;
    PrintRestatement(out, r.restatement());
  }
  // Every record traces a figure to its reading (source event) and factor.
  void Records(std::ostream& out) {
    v1::ListEmissionRecordsRequest req;
    req.set_account_id(a_.id);
    req.set_as_reported(a_.as_reported);
    Range(req.mutable_range());
    const int64_t limit = a_.limit > 0 ? a_.limit : 1000;
    v1::ListEmissionRecordsResponse all;
    while (all.records_size() < limit) {
      req.set_page_size(static_cast<int32_t>(std::min<int64_t>(1000, limit - all.records_size())));
      auto page = Call<v1::ListEmissionRecordsRequest, v1::ListEmissionRecordsResponse>(
          &v1::CarbonAccountService::Stub::ListEmissionRecords, req);
      for (auto& r : *page.mutable_records()) *all.add_records() = std::move(r);
      all.set_next_page_token(page.next_page_token());
      if (page.next_page_token().empty()) break;
      req.set_page_token(page.next_page_token());
    }
    if (AsJson(out, all)) return;
    std::vector<std::vector<std::string>> rows;
    for (const auto& r : all.records()) {
      rows.push_back({Ts(r.interval_start()), r.meter_id().empty() ? r.method() : r.meter_id(),
                      Short(v1::Scope_Name(r.scope()), "SCOPE_"),
                      absl::StrCat(r.activity(), " ", r.activity_unit()),
                      absl::StrFormat("%.3f", r.emissions_kg()), r.factor().factor_id(),
                      r.restatement_id().empty() ? "-" : r.restatement_id(),
                      r.source_event_id()});
    }
    PrintTable(out, {"START", "METER", "SCOPE", "ACTIVITY", "KG", "FACTOR", "RESTATEMENT", "EVENT"},
               rows);
    if (!all.next_page_token().empty()) out << "(more records: raise --limit)\n";
  }
  void Quarantine(std::ostream& out) {
    v1::ListQuarantinedReadingsRequest req;
    req.set_account_id(a_.id);
    req.set_reason(ParseEnum<v1::QuarantineReason>("--reason", a_.reason,
                                                   "QUARANTINE_REASON_",
                                                   v1::QuarantineReason_Parse));
    Range(req.mutable_range());
    req.set_page_size(1000);
    v1::ListQuarantinedReadingsResponse all;
    while (true) {
      auto page = Call<v1::ListQuarantinedReadingsRequest,
                       v1::ListQuarantinedReadingsResponse>(
          &v1::CarbonAccountService::Stub::ListQuarantinedReadings, req);
      for (auto& q : *page.mutable_readings())
        *all.add_readings() = std::move(q);
      if (page.next_page_token().empty()) break;
      req.set_page_token(page.next_page_token());
    }
    if (AsJson(out, all)) return;
    std::vector<std::vector<std::string>> rows;
    for (const auto& q : all.readings()) {
      rows.push_back(
          {Ts(q.receive_time()), q.reading().meter_id(),
           Short(v1::QuarantineReason_Name(q.reason()), "QUARANTINE_REASON_"),
           absl::StrCat(q.reading().value(), " ", q.reading().unit()),
           q.detail()});
    }
    PrintTable(out, {"RECEIVED", "METER", "REASON", "VALUE", "DETAIL"}, rows);
  }
  void Credits(std::ostream& out) {
    v1::ListGreenCreditsRequest req;
    req.set_account_id(a_.id);
    Range(req.mutable_range());
    req.set_page_size(1000);
    v1::ListGreenCreditsResponse all;
    while (true) {
      auto page =
          Call<v1::ListGreenCreditsRequest, v1::ListGreenCreditsResponse>(
              &v1::CarbonAccountService::Stub::ListGreenCredits, req);
      for (auto& c : *page.mutable_credits()) *all.add_credits() = std::move(c);
      all.set_total_g(page.total_g());
      if (page.next_page_token().empty()) break;
      req.set_page_token(page.next_page_token());
    }
    if (AsJson(out, all)) return;
    std::vector<std::vector<std::string>> rows;
    for (const auto& c : all.credits()) {
      rows.push_back({Ts(c.time()), c.behaviour(),
                      absl::StrCat(c.quantity(), " ", c.quantity_unit()),
                      Fmt(c.credited_g()), c.capped() ? "yes" : "no",
                      c.source_transaction_id()});
    }
    PrintTable(out, {"TIME", "BEHAVIOUR", "QUANTITY", "CREDITED_G", "CAPPED", "TXN"},
          rows);
    out << "total " << Fmt(all.total_g()) << " g CO2\n";
  }

  CarbonGlobals g_;
  CLI::App* root_ = nullptr;
  Args a_;
  std::vector<std::pair<CLI::App*, Runner>> commands_;
  std::unique_ptr<v1::CarbonAccountService::Stub> stub_;
  std::string endpoint_;
};

}  // namespace

std::unique_ptr<CarbonCommands> AddCarbonCommands(CLI::App& app,
                                                  CarbonGlobals g) {
  return std::make_unique<CarbonCli>(app, g);
}

}  // namespace cityos::ctl
