// The `carbon` plug-in: config parsing (carbon_plugin.h documents the keys),
// the service identity, the optional MQTT meter bridge, and the wiring of
// CarbonAccountServiceImpl into a node.
#include "carbon_plugin.h"

#include <filesystem>
#include <fstream>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "google/protobuf/util/json_util.h"
#include "absl/time/time.h"
#include "cityos/bus.h"
#include "cityos/config.h"
#include "cityos/event.h"
#include "cityos/logging.h"
#include "cityos/status.h"
#include "cityos/subject.h"
#include "factors.h"
#include "ledger.h"
#include "periods.h"
#include "units.h"
#include "mqtt_bridge.h"

namespace cityos::carbon {
namespace {

constexpr char kName[] = "carbon";

absl::StatusOr<absl::Time> ParseTimeKey(const ConfigNode& n,
                                        std::string_view key) {
  CITYOS_ASSIGN_OR_RETURN(std::string text, n.GetString(key, ""));
  if (text.empty()) return absl::InfinitePast();
  absl::Time t;
  std::string err;
  if (!absl::ParseTime(absl::RFC3339_full, text, &t, &err)) {
    return n.Error(
        key, absl::StrCat("\"", text, "\" is not an RFC 3339 time: ", err));
  }
  return t;
}

struct MqttSection {
  bool enabled = false;
  std::string host = "127.0.0.1";
  int port = 1883;
  std::string client_id = "cityos-carbon-bridge";
  std::string topic_root = "cityos/meters";
  int qos = 1;
  std::string username, password_file, ca_file, cert_file, key_file;
  absl::Duration keepalive = absl::Seconds(30);
  std::string org;
  // (city, district, region); empty: every district (depth 3) of `regions`.
  std::vector<std::vector<std::string>> districts;
};

// A relative file name in the config is relative to the config file's
// directory (as the node's policy files are); empty stays empty.
std::string RelativeToConfig(const ConfigNode& section, const std::string& name) {
  if (name.empty() || std::filesystem::path(name).is_absolute()) return name;
  if (section.File().empty()) return name;
  return (std::filesystem::absolute(section.File()).parent_path() / name)
      .lexically_normal()
      .string();
}

class CarbonPlugin final : public ServicePlugin {
 public:
  explicit CarbonPlugin(CarbonCallerResolver resolver)
      : resolver_(std::move(resolver)) {}
  ~CarbonPlugin() override { Stop(); }

  std::string_view name() const override { return kName; }

  absl::Status Configure(const ConfigNode& s) override {
    CITYOS_RETURN_IF_ERROR(s.CheckKeys(
        {"data_dir", "time_zone", "identity", "exchange", "inputs", "regions",
         "factors_csv", "factors", "benchmarks", "thresholds", "credit_rules",
         "incentives", "tick_interval", "publish_records", "ingest_batch",
         "queue_limit", "future_tolerance", "mqtt", "provision_accounts", "provision_plans", "reporters"}));
    if (s.Has("reporters")) {
      CITYOS_ASSIGN_OR_RETURN(config_.reporters, s.GetStringList("reporters"));
    }
    if (s.Has("provision_accounts")) {
      CITYOS_ASSIGN_OR_RETURN(provision_accounts_, s.GetStringList("provision_accounts"));
    }
    if (s.Has("provision_plans")) {
      CITYOS_ASSIGN_OR_RETURN(std::vector<std::string> plans, s.GetStringList("provision_plans"));
      for (const std::string& p : plans) provision_plans_.push_back(RelativeToConfig(s, p));
    }
    CITYOS_ASSIGN_OR_RETURN(config_.data_dir, s.GetString("data_dir", ""));
    CITYOS_ASSIGN_OR_RETURN(config_.time_zone,
                            s.GetString("time_zone", "Asia/Shanghai"));
    if (absl::StatusOr<absl::TimeZone> tz = LoadCityTimeZone(config_.time_zone);
        !tz.ok()) {
      return s.Error("time_zone", std::string(tz.status().message()));
    }
    // identity
    CITYOS_ASSIGN_OR_RETURN(ConfigNode id, s.ChildOrEmpty("identity"));
    CITYOS_RETURN_IF_ERROR(
        id.CheckKeys({"cert", "key", "ca", "crl", "server_id"}));
    CITYOS_ASSIGN_OR_RETURN(identity_.cert, id.GetString("cert", ""));
    CITYOS_ASSIGN_OR_RETURN(identity_.key, id.GetString("key", ""));
    CITYOS_ASSIGN_OR_RETURN(identity_.ca, id.GetString("ca", ""));
    CITYOS_ASSIGN_OR_RETURN(identity_.crl, id.GetString("crl", ""));
    CITYOS_ASSIGN_OR_RETURN(identity_.server_id, id.GetString("server_id", ""));
    const bool any = !identity_.cert.empty() || !identity_.key.empty() ||
                     !identity_.ca.empty();
    if (any) {
      for (const char* k : {"cert", "key", "ca"}) {
        if (!id.Has(k))
          return id.Error(k, "cert, key and ca must be given together");
      }
    }
    // exchange
    CITYOS_ASSIGN_OR_RETURN(ConfigNode ex, s.ChildOrEmpty("exchange"));
    CITYOS_RETURN_IF_ERROR(
        ex.CheckKeys({"address", "max_batch", "min_backoff", "max_backoff"}));
    CITYOS_ASSIGN_OR_RETURN(exchange_address_, ex.GetString("address", ""));
    if (!exchange_address_.empty() &&
        exchange_address_.rfind(':') == std::string::npos) {
      return ex.Error("address", absl::StrCat("\"", exchange_address_,
                                              "\" is not host:port"));
    }
    CITYOS_ASSIGN_OR_RETURN(int64_t mb, ex.GetInt("max_batch", 1024));
    if (mb < 1 || mb > 65536) return ex.Error("max_batch", "must be 1-65536");
    config_.feed_max_batch = static_cast<uint32_t>(mb);
    CITYOS_ASSIGN_OR_RETURN(
        config_.feed_min_backoff,
        ex.GetDuration("min_backoff", absl::Milliseconds(100)));
    CITYOS_ASSIGN_OR_RETURN(config_.feed_max_backoff,
                            ex.GetDuration("max_backoff", absl::Seconds(5)));
    if (config_.feed_min_backoff <= absl::ZeroDuration()) {
      return ex.Error("min_backoff", "must be positive");
    }
    if (config_.feed_max_backoff < config_.feed_min_backoff) {
      return ex.Error("max_backoff", "must be at least min_backoff");
    }
    // inputs
    if (s.Has("inputs")) {
      CITYOS_ASSIGN_OR_RETURN(config_.inputs, s.GetStringList("inputs"));
      if (config_.inputs.empty())
        return s.Error("inputs", "must list at least one pattern");
      for (const std::string& p : config_.inputs) {
        if (absl::Status v = ValidatePattern(p); !v.ok())
          return s.Error("inputs", std::string(v.message()));
      }
    }
    // regions
    CITYOS_ASSIGN_OR_RETURN(std::vector<ConfigNode> regions,
                            s.ElementsOrEmpty("regions"));
    for (const ConfigNode& r : regions) {
      CITYOS_RETURN_IF_ERROR(
          r.CheckKeys({"code", "name", "parent", "grid", "token"}));
      RegionInfo info;
      CITYOS_ASSIGN_OR_RETURN(info.code, r.GetString("code"));
      CITYOS_ASSIGN_OR_RETURN(info.name, r.GetString("name", info.code));
      CITYOS_ASSIGN_OR_RETURN(info.parent, r.GetString("parent", ""));
      CITYOS_ASSIGN_OR_RETURN(info.grid, r.GetString("grid", ""));
      CITYOS_ASSIGN_OR_RETURN(info.subject_token, r.GetString("token", ""));
      config_.regions.push_back(std::move(info));
    }
    if (absl::StatusOr<RegionTree> tree = RegionTree::Create(config_.regions);
        !tree.ok()) {
      return s.Error("regions", std::string(tree.status().message()));
    }
    // factors
    CITYOS_ASSIGN_OR_RETURN(config_.factors_csv,
                            s.GetString("factors_csv", ""));
    config_.factors_csv = RelativeToConfig(s, config_.factors_csv);
    if (!config_.factors_csv.empty() &&
        !std::filesystem::exists(config_.factors_csv)) {
      return s.Error("factors_csv",
                     absl::StrCat(config_.factors_csv, ": no such file"));
    }
    CITYOS_ASSIGN_OR_RETURN(std::vector<ConfigNode> factors,
                            s.ElementsOrEmpty("factors"));
    for (const ConfigNode& f : factors) {
      CITYOS_RETURN_IF_ERROR(
          f.CheckKeys({"kind", "key", "region", "vintage", "value", "unit",
                       "tariff_id", "source", "valid_from", "valid_to"}));
      v1::EmissionFactor e;
      CITYOS_ASSIGN_OR_RETURN(std::string kind, f.GetString("kind"));
      absl::StatusOr<v1::FactorKind> k = ParseFactorKind(kind);
      if (!k.ok()) return f.Error("kind", std::string(k.status().message()));
      e.set_kind(*k);
      CITYOS_ASSIGN_OR_RETURN(*e.mutable_key(), f.GetString("key"));
      CITYOS_ASSIGN_OR_RETURN(*e.mutable_region(), f.GetString("region"));
      CITYOS_ASSIGN_OR_RETURN(*e.mutable_vintage(), f.GetString("vintage"));
      CITYOS_ASSIGN_OR_RETURN(double value, f.GetDouble("value"));
      if (!(value > 0)) return f.Error("value", "must be positive");
      e.set_value(value);
      CITYOS_ASSIGN_OR_RETURN(*e.mutable_unit(), f.GetString("unit"));
      if (absl::Status u = ValidateFactorUnit(e.unit()); !u.ok()) {
        return f.Error("unit", std::string(u.message()));
      }
      CITYOS_ASSIGN_OR_RETURN(*e.mutable_tariff_id(),
                              f.GetString("tariff_id", ""));
      CITYOS_ASSIGN_OR_RETURN(*e.mutable_source(), f.GetString("source"));
      if (e.source().empty())
        return f.Error("source", "is required (cite the figure's source)");
      CITYOS_ASSIGN_OR_RETURN(absl::Time from, ParseTimeKey(f, "valid_from"));
      CITYOS_ASSIGN_OR_RETURN(absl::Time to, ParseTimeKey(f, "valid_to"));
      if (from == absl::InfinitePast()) from = absl::UnixEpoch();
      SetTimestamp(from, e.mutable_valid()->mutable_start());
      if (to != absl::InfinitePast()) {
        if (to <= from) return f.Error("valid_to", "must be after valid_from");
        SetTimestamp(to, e.mutable_valid()->mutable_end());
      }
      if (std::optional<v1::EnergyKind> ek = EnergyKindForKey(e.key());
          ek.has_value()) {
        e.set_energy_kind(*ek);
      }
      config_.factors.push_back(std::move(e));
    }
    // benchmarks
    CITYOS_ASSIGN_OR_RETURN(std::vector<ConfigNode> benchmarks,
                            s.ElementsOrEmpty("benchmarks"));
    for (const ConfigNode& b : benchmarks) {
      CITYOS_RETURN_IF_ERROR(
          b.CheckKeys({"id", "industry", "version", "source", "intensity"}));
      Benchmark bm;
      CITYOS_ASSIGN_OR_RETURN(bm.id, b.GetString("id"));
      CITYOS_ASSIGN_OR_RETURN(bm.industry_prefix, b.GetString("industry", ""));
      CITYOS_ASSIGN_OR_RETURN(bm.version, b.GetString("version"));
      CITYOS_ASSIGN_OR_RETURN(bm.source, b.GetString("source", ""));
      CITYOS_ASSIGN_OR_RETURN(bm.intensity, b.GetDouble("intensity"));
      if (!(bm.intensity > 0))
        return b.Error("intensity", "must be positive (t CO2 / 10k CNY)");
      config_.benchmarks.push_back(std::move(bm));
    }
    if (absl::StatusOr<BenchmarkTable> t =
            BenchmarkTable::Create(config_.benchmarks);
        !t.ok()) {
      return s.Error("benchmarks", std::string(t.status().message()));
    }
    if (s.Has("thresholds")) {
      CITYOS_ASSIGN_OR_RETURN(std::vector<ConfigNode> th,
                              s.Elements("thresholds"));
      config_.thresholds.clear();
      for (const ConfigNode& t : th) {
        CITYOS_ASSIGN_OR_RETURN(std::string text, t.AsString());
        double v = 0;
        if (!absl::SimpleAtod(text, &v) || !(v > 0)) {
          return s.Error(
              "thresholds",
              absl::StrCat("\"", text, "\" is not a positive number"));
        }
        if (!config_.thresholds.empty() && v <= config_.thresholds.back()) {
          return s.Error("thresholds", "must be ascending");
        }
        config_.thresholds.push_back(v);
      }
      if (config_.thresholds.size() != 4) {
        return s.Error("thresholds",
                       "must be 4 values (upper K of levels 1-4)");
      }
    }
    // credit rules
    CITYOS_ASSIGN_OR_RETURN(ConfigNode cr, s.ChildOrEmpty("credit_rules"));
    CITYOS_RETURN_IF_ERROR(cr.CheckKeys({"csv", "scheme", "rules"}));
    CITYOS_ASSIGN_OR_RETURN(config_.credit_rules_csv, cr.GetString("csv", ""));
    config_.credit_rules_csv = RelativeToConfig(s, config_.credit_rules_csv);
    CITYOS_ASSIGN_OR_RETURN(config_.credit_scheme,
                            cr.GetString("scheme", "ant_forest"));
    if (!config_.credit_rules_csv.empty()) {
      absl::StatusOr<std::vector<CreditRule>> parsed =
          ParseCreditRulesCsv(config_.credit_rules_csv, config_.credit_scheme);
      if (!parsed.ok())
        return cr.Error("csv", std::string(parsed.status().message()));
    }
    CITYOS_ASSIGN_OR_RETURN(std::vector<ConfigNode> rules,
                            cr.ElementsOrEmpty("rules"));
    for (const ConfigNode& r : rules) {
      CITYOS_RETURN_IF_ERROR(
          r.CheckKeys({"id", "scheme", "behaviour", "grams", "unit", "cap",
                       "max_per_day", "max_per_month", "max_grams_per_day",
                       "max_grams_per_month", "per_account_ref_per_month",
                       "min_amount_minor", "day_threshold_km", "source"}));
      CreditRule rule;
      CITYOS_ASSIGN_OR_RETURN(rule.id, r.GetString("id", ""));
      CITYOS_ASSIGN_OR_RETURN(rule.scheme,
                              r.GetString("scheme", config_.credit_scheme));
      CITYOS_ASSIGN_OR_RETURN(rule.behaviour, r.GetString("behaviour"));
      CITYOS_ASSIGN_OR_RETURN(rule.grams_per_unit, r.GetDouble("grams"));
      if (!(rule.grams_per_unit > 0))
        return r.Error("grams", "must be positive");
      CITYOS_ASSIGN_OR_RETURN(
          rule.unit,
          r.GetString("unit", DefaultUnitForBehaviour(rule.behaviour)));
      CITYOS_ASSIGN_OR_RETURN(std::string cap, r.GetString("cap", ""));
      if (absl::Status c = ParseCreditCap(cap, &rule); !c.ok())
        return r.Error("cap", std::string(c.message()));
      CITYOS_ASSIGN_OR_RETURN(int64_t v,
                              r.GetInt("max_per_day", rule.max_per_day));
      rule.max_per_day = v;
      CITYOS_ASSIGN_OR_RETURN(v, r.GetInt("max_per_month", rule.max_per_month));
      rule.max_per_month = v;
      CITYOS_ASSIGN_OR_RETURN(
          rule.max_grams_per_day,
          r.GetDouble("max_grams_per_day", rule.max_grams_per_day));
      CITYOS_ASSIGN_OR_RETURN(
          rule.max_grams_per_month,
          r.GetDouble("max_grams_per_month", rule.max_grams_per_month));
      CITYOS_ASSIGN_OR_RETURN(rule.per_account_ref_per_month,
                              r.GetBool("per_account_ref_per_month",
                                        rule.per_account_ref_per_month));
      CITYOS_ASSIGN_OR_RETURN(
          rule.min_amount_minor,
          r.GetInt("min_amount_minor", rule.min_amount_minor));
      CITYOS_ASSIGN_OR_RETURN(
          rule.day_threshold_km,
          r.GetDouble("day_threshold_km", rule.day_threshold_km));
      CITYOS_ASSIGN_OR_RETURN(rule.source, r.GetString("source", "config"));
      if (rule.max_per_day < 0 || rule.max_per_month < 0 ||
          rule.max_grams_per_day < 0 || rule.max_grams_per_month < 0 ||
          rule.min_amount_minor < 0) {
        return r.Error("behaviour", "caps must not be negative");
      }
      config_.credit_rules.push_back(std::move(rule));
    }
    // incentives
    CITYOS_ASSIGN_OR_RETURN(ConfigNode inc, s.ChildOrEmpty("incentives"));
    CITYOS_RETURN_IF_ERROR(inc.CheckKeys(
        {"points_per_kg", "coupon_every_kg", "coupon_value", "loan_tiers"}));
    CITYOS_ASSIGN_OR_RETURN(config_.incentives.points_per_kg,
                            inc.GetDouble("points_per_kg", 1.0));
    if (config_.incentives.points_per_kg < 0)
      return inc.Error("points_per_kg", "must not be negative");
    CITYOS_ASSIGN_OR_RETURN(config_.incentives.coupon_every_kg,
                            inc.GetDouble("coupon_every_kg", 0));
    if (config_.incentives.coupon_every_kg < 0) {
      return inc.Error("coupon_every_kg", "must not be negative");
    }
    CITYOS_ASSIGN_OR_RETURN(ConfigNode cv, inc.ChildOrEmpty("coupon_value"));
    CITYOS_RETURN_IF_ERROR(cv.CheckKeys({"currency", "amount_minor"}));
    CITYOS_ASSIGN_OR_RETURN(config_.incentives.coupon_currency,
                            cv.GetString("currency", "CNY"));
    CITYOS_ASSIGN_OR_RETURN(config_.incentives.coupon_amount_minor,
                            cv.GetInt("amount_minor", 0));
    if (config_.incentives.coupon_every_kg > 0 &&
        config_.incentives.coupon_amount_minor <= 0) {
      return inc.Error(
          "coupon_value",
          "amount_minor must be positive when coupon_every_kg is set");
    }
    if (inc.Has("loan_tiers")) {
      CITYOS_ASSIGN_OR_RETURN(ConfigNode lt, inc.Child("loan_tiers"));
      config_.incentives.loan_tiers.clear();
      for (const std::string& k : lt.Keys()) {
        int level = 0;
        if (!absl::SimpleAtoi(k, &level) || level < 1 || level > 5) {
          return lt.Error(k, "keys are grade levels 1-5");
        }
        CITYOS_ASSIGN_OR_RETURN(config_.incentives.loan_tiers[level],
                                lt.GetString(k));
      }
    }
    CITYOS_ASSIGN_OR_RETURN(config_.tick_interval,
                            s.GetDuration("tick_interval", absl::Seconds(1)));
    if (config_.tick_interval <= absl::ZeroDuration()) {
      return s.Error("tick_interval", "must be positive");
    }
    CITYOS_ASSIGN_OR_RETURN(config_.publish_records,
                            s.GetBool("publish_records", true));
    CITYOS_ASSIGN_OR_RETURN(int64_t ib, s.GetInt("ingest_batch", 8192));
    if (ib < 1 || ib > 1'000'000)
      return s.Error("ingest_batch", "must be 1-1000000");
    config_.ingest_batch = static_cast<size_t>(ib);
    CITYOS_ASSIGN_OR_RETURN(int64_t ql, s.GetInt("queue_limit", 65536));
    if (ql < 1) return s.Error("queue_limit", "must be positive");
    config_.queue_limit = static_cast<size_t>(ql);
    CITYOS_ASSIGN_OR_RETURN(
        config_.future_tolerance,
        s.GetDuration("future_tolerance", absl::Minutes(5)));
    if (config_.future_tolerance < absl::ZeroDuration()) {
      return s.Error("future_tolerance", "must not be negative");
    }
    return ConfigureMqtt(s);
  }

  absl::Status Start(PluginContext& context) override {
    const NodeInfo& info = context.node();
    const std::string td =
        info.trust_domain.empty() ? "local" : info.trust_domain;
    if (config_.data_dir.empty()) {
      CITYOS_ASSIGN_OR_RETURN(config_.data_dir, context.PluginDataDir(kName));
    } else {
      std::error_code ec;
      std::filesystem::create_directories(config_.data_dir, ec);
      if (ec) {
        return absl::FailedPreconditionError(
            absl::StrCat("data_dir ", config_.data_dir,
                         ": cannot be created: ", ec.message()));
      }
    }
    // The MQTT bridge reports readings for every meter it carries.
    if (mqtt_.enabled) config_.reporters.push_back(mqtt_.org);
    IdentityRequest req = identity_;
    req.node_data_dir = info.data_dir;
    req.trust_domain = td;
    req.out_dir = config_.data_dir + "/identity";
    CITYOS_ASSIGN_OR_RETURN(ServiceIdentity identity,
                            ResolveServiceIdentity(req));

    CarbonServiceDeps deps;
    deps.clock = context.clock();
    deps.bus = context.bus();
    deps.self = CarbonServicePrincipal(td);
    deps.resolver = resolver_;
    if (!deps.resolver) {
      deps.resolver = [&context](grpc::ServerContext* call) {
        return context.Authenticate(*call);
      };
    }
    if (exchange_address_.empty()) {
      // The node binds after its plug-ins started: ask at every connect.
      deps.exchange_address = [&context] { return context.ServingAddress(); };
    } else {
      deps.exchange_address = [a = exchange_address_] { return a; };
    }
    deps.identity = identity;
    service_ =
        std::make_unique<CarbonAccountServiceImpl>(std::move(deps), config_);
    if (absl::Status s = service_->Start(); !s.ok()) {
      service_.reset();
      return s;
    }
    absl::Status provisioned = ProvisionAccounts(info.data_dir);
    if (provisioned.ok()) provisioned = ProvisionPlans(td);
    if (absl::Status s = provisioned; !s.ok()) {
      service_->Stop();
      service_.reset();
      return s;
    }
    CITYOS_RETURN_IF_ERROR(StartMqtt(context, td));
    LogInfo("carbon", "carbon account started",
            {{"dir", config_.data_dir},
             {"identity", identity.spiffe_id},
             {"inputs", std::to_string(config_.inputs.size())}});
    return absl::OkStatus();
  }

  std::vector<HostedService> Services() override {
    if (service_ == nullptr) return {};
    return {{v1::CarbonAccountService::service_full_name(), service_.get()}};
  }

  void Drain() override {
    if (service_ != nullptr) service_->Drain();
  }

  void Stop() override {
    if (bridge_ != nullptr) {
      bridge_->Stop();
      bridge_.reset();
    }
    if (service_ != nullptr) {
      service_->Stop();
      service_.reset();
    }
  }

 private:
  // Creates the accounts listed in `provision_accounts` (JSON lines of
  // cityos.carbon.v1.Account, parents first; relative paths are relative to
  // the node's data dir) that do not exist yet. An account that exists is
  // left as it is; any other error stops the start, naming file and line.
  absl::Status ProvisionAccounts(const std::string& node_data_dir) {
    for (const std::string& name : provision_accounts_) {
      std::filesystem::path path(name);
      if (path.is_relative()) path = std::filesystem::path(node_data_dir) / path;
      std::ifstream in(path);
      if (!in) {
        return absl::NotFoundError(
            absl::StrCat("provision_accounts: cannot read ", path.string()));
      }
      std::string line;
      int line_no = 0, created = 0;
      while (std::getline(in, line)) {
        ++line_no;
        if (absl::StripAsciiWhitespace(line).empty()) continue;
        v1::Account account;
        google::protobuf::util::JsonParseOptions options;
        if (auto st = google::protobuf::util::JsonStringToMessage(line, &account, options);
            !st.ok()) {
          return absl::InvalidArgumentError(absl::StrCat(
              path.string(), ":", line_no, ": not a cityos.carbon.v1.Account: ",
              st.message().as_string()));
        }
        absl::StatusOr<v1::Account> made = service_->ledger()->CreateAccount(account);
        if (made.ok()) {
          ++created;
        } else if (!absl::IsAlreadyExists(made.status())) {
          return absl::Status(made.status().code(),
                              absl::StrCat(path.string(), ":", line_no, ": ",
                                           made.status().message()));
        }
      }
      LogInfo("carbon", "accounts provisioned",
              {{"file", path.string()}, {"created", std::to_string(created)}});
    }
    return absl::OkStatus();
  }

  // Creates the plans listed in `provision_plans` (JSON lines of
  // cityos.carbon.v1.Plan without plan_id) whose target has no plan of the
  // same granularity yet, so a restart adds nothing. Errors name file and
  // line and stop the start.
  absl::Status ProvisionPlans(const std::string& trust_domain) {
    for (const std::string& path : provision_plans_) {
      std::ifstream in(path);
      if (!in) return absl::NotFoundError(absl::StrCat("provision_plans: cannot read ", path));
      std::string line;
      int line_no = 0, created = 0;
      while (std::getline(in, line)) {
        ++line_no;
        if (absl::StripAsciiWhitespace(line).empty()) continue;
        v1::Plan plan;
        google::protobuf::util::JsonParseOptions options;
        if (auto st = google::protobuf::util::JsonStringToMessage(line, &plan, options);
            !st.ok()) {
          return absl::InvalidArgumentError(absl::StrCat(
              path, ":", line_no, ": not a cityos.carbon.v1.Plan: ", st.message().as_string()));
        }
        v1::ListPlansRequest existing;
        if (plan.has_account_id()) existing.set_account_id(plan.account_id());
        if (plan.has_region()) existing.set_region(plan.region());
        bool present = false;
        for (const v1::Plan& p : service_->alarms()->ListPlans(existing)) {
          present = present || p.granularity() == plan.granularity();
        }
        if (present) continue;
        if (plan.has_account_id()) {
          if (absl::Status st = service_->ledger()->GetAccount(plan.account_id()).status();
              !st.ok()) {
            return absl::Status(st.code(), absl::StrCat(path, ":", line_no, ": ", st.message()));
          }
        }
        absl::StatusOr<v1::Plan> made = service_->alarms()->SetPlan(
            plan, CarbonServicePrincipal(trust_domain).SpiffeId());
        if (!made.ok()) {
          return absl::Status(made.status().code(), absl::StrCat(path, ":", line_no, ": ",
                                                                 made.status().message()));
        }
        ++created;
      }
      LogInfo("carbon", "plans provisioned",
              {{"file", path}, {"created", std::to_string(created)}});
    }
    return absl::OkStatus();
  }

  absl::Status ConfigureMqtt(const ConfigNode& s) {
    if (!s.Has("mqtt")) return absl::OkStatus();
    CITYOS_ASSIGN_OR_RETURN(ConfigNode m, s.Child("mqtt"));
    CITYOS_RETURN_IF_ERROR(
        m.CheckKeys({"host", "port", "client_id", "topic_root", "qos",
                     "username", "password_file", "ca_file", "cert_file",
                     "key_file", "keepalive", "org", "districts"}));
    mqtt_.enabled = true;
    CITYOS_ASSIGN_OR_RETURN(mqtt_.host, m.GetString("host", "127.0.0.1"));
    CITYOS_ASSIGN_OR_RETURN(int64_t port, m.GetInt("port", 1883));
    if (port < 1 || port > 65535) return m.Error("port", "must be 1-65535");
    mqtt_.port = static_cast<int>(port);
    CITYOS_ASSIGN_OR_RETURN(mqtt_.client_id,
                            m.GetString("client_id", "cityos-carbon-bridge"));
    CITYOS_ASSIGN_OR_RETURN(mqtt_.topic_root,
                            m.GetString("topic_root", "cityos/meters"));
    CITYOS_ASSIGN_OR_RETURN(int64_t qos, m.GetInt("qos", 1));
    if (qos < 0 || qos > 2) return m.Error("qos", "must be 0, 1 or 2");
    mqtt_.qos = static_cast<int>(qos);
    CITYOS_ASSIGN_OR_RETURN(mqtt_.username, m.GetString("username", ""));
    CITYOS_ASSIGN_OR_RETURN(mqtt_.password_file,
                            m.GetString("password_file", ""));
    CITYOS_ASSIGN_OR_RETURN(mqtt_.ca_file, m.GetString("ca_file", ""));
    CITYOS_ASSIGN_OR_RETURN(mqtt_.cert_file, m.GetString("cert_file", ""));
    CITYOS_ASSIGN_OR_RETURN(mqtt_.key_file, m.GetString("key_file", ""));
    CITYOS_ASSIGN_OR_RETURN(mqtt_.keepalive,
                            m.GetDuration("keepalive", absl::Seconds(30)));
    CITYOS_ASSIGN_OR_RETURN(mqtt_.org, m.GetString("org"));
    if (mqtt_.org.empty())
      return m.Error("org", "is required (the meter operator's org)");
    CITYOS_ASSIGN_OR_RETURN(std::vector<ConfigNode> ds,
                            m.ElementsOrEmpty("districts"));
    for (const ConfigNode& d : ds) {
      CITYOS_RETURN_IF_ERROR(d.CheckKeys({"city", "district", "region"}));
      std::vector<std::string> row(3);
      CITYOS_ASSIGN_OR_RETURN(row[0], d.GetString("city"));
      CITYOS_ASSIGN_OR_RETURN(row[1], d.GetString("district"));
      CITYOS_ASSIGN_OR_RETURN(row[2], d.GetString("region"));
      mqtt_.districts.push_back(std::move(row));
    }
    return absl::OkStatus();
  }

  absl::Status StartMqtt(PluginContext& context, const std::string& td) {
    if (!mqtt_.enabled) return absl::OkStatus();
    MqttBridgeOptions o;
    o.host = mqtt_.host;
    o.port = mqtt_.port;
    o.client_id = mqtt_.client_id;
    o.topic_root = mqtt_.topic_root;
    o.qos = mqtt_.qos;
    o.username = mqtt_.username;
    o.password_file = mqtt_.password_file;
    o.ca_file = mqtt_.ca_file;
    o.cert_file = mqtt_.cert_file;
    o.key_file = mqtt_.key_file;
    o.keepalive = mqtt_.keepalive;
    o.org = mqtt_.org;
    o.clock = context.clock();
    if (mqtt_.districts.empty()) {
      // Every district of the region tree (depth 3) under its city (depth 2).
      absl::StatusOr<RegionTree> tree = RegionTree::Create(config_.regions);
      if (tree.ok()) {
        for (const RegionInfo& r : tree->all()) {
          if (tree->Depth(r.code) != 3) continue;
          const std::string suffix = tree->SubjectSuffix(r.code);
          const size_t dot = suffix.find('.');
          if (dot == std::string::npos) continue;
          o.districts.push_back(
              {suffix.substr(0, dot), suffix.substr(dot + 1), r.code});
        }
      }
    } else {
      for (const auto& row : mqtt_.districts)
        o.districts.push_back({row[0], row[1], row[2]});
    }
    Bus* bus = context.bus();
    Principal meters{.trust_domain = td,
                     .org = mqtt_.org,
                     .kind = PrincipalKind::kService,
                     .name = "mqtt-bridge"};
    CITYOS_ASSIGN_OR_RETURN(
        bridge_, MqttBridge::Start(
                     o, [bus, meters](std::vector<event::v1::Event> events) {
                       return bus->Publish(meters, std::move(events)).status();
                     }));
    LogInfo("carbon", "MQTT meter bridge started",
            {{"broker", absl::StrCat(o.host, ":", o.port)},
             { "topic_root",
               o.topic_root }});
    return absl::OkStatus();
  }

  const CarbonCallerResolver resolver_;
  CarbonServiceConfig config_;
  IdentityRequest identity_;
  std::string exchange_address_;
  MqttSection mqtt_;
  std::vector<std::string> provision_accounts_;
  std::vector<std::string> provision_plans_;
  std::unique_ptr<CarbonAccountServiceImpl> service_;
  std::unique_ptr<MqttBridge> bridge_;
};

}  // namespace

Principal CarbonServicePrincipal(const std::string& trust_domain) {
  return Principal{
      .trust_domain = trust_domain.empty() ? "local" : trust_domain,
      .org = "carbon-office",
      .kind = PrincipalKind::kService,
      .name = "carbon"};
}

std::unique_ptr<ServicePlugin> MakeCarbonPlugin(CarbonCallerResolver resolver) {
  return std::make_unique<CarbonPlugin>(std::move(resolver));
}

}  // namespace cityos::carbon

namespace cityos {
absl::Status RegisterCarbonPlugin(PluginRegistry& registry) {
  return registry.Register("carbon", [] { return carbon::MakeCarbonPlugin(); });
}
}  // namespace cityos
