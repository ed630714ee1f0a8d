#include "node.h"

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <sys/stat.h>

#include <filesystem>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/numbers.h"
#include "absl/synchronization/mutex.h"
#include "bus_config.h"
#include "cityos/audit.h"
#include "cityos/bus.h"
#include "cityos/ca.h"
#include "cityos/clock.h"
#include "cityos/metrics.h"
#include "cityos/observability.h"
#include "cityos/policy.h"
#include "cityos/principal.h"
#include "cityos/status.h"
#include "cityos/tls.h"

namespace cityos {
namespace {

constexpr char kTlsHelp[] =
    "required: certificate files ({ca, cert, key, crl, reload_interval}), `auto` for a "
    "development PKI in <data_dir>/pki, or `insecure: true` for plaintext without caller "
    "authentication (see docs/security.md)";

// Host part of "host:port" ("[::1]:7443" -> "[::1]").
std::string HostOf(const std::string& address) { return address.substr(0, address.rfind(':')); }

// Checks a SPIFFE path segment (trust domain, org) as principals do.
absl::Status CheckSegment(const ConfigNode& node, const char* key, const std::string& value) {
  std::string id = std::string(key) == "trust_domain"
                       ? absl::StrCat("spiffe://", value, "/org/x/svc/x")
                       : absl::StrCat("spiffe://x/org/", value, "/svc/x");
  if (!Principal::FromSpiffeId(id).ok()) {
    return node.Error(key, absl::StrCat("\"", value,
                                        "\" must be 1-128 characters of [A-Za-z0-9._-]"));
  }
  return absl::OkStatus();
}

// Parses node.trust_domain, node.org, node.tls and node.insecure.
absl::Status ParseTransport(const ConfigNode& node, NodeConfig& config) {
  CITYOS_ASSIGN_OR_RETURN(config.trust_domain, node.GetString("trust_domain", "local"));
  CITYOS_RETURN_IF_ERROR(CheckSegment(node, "trust_domain", config.trust_domain));
  CITYOS_ASSIGN_OR_RETURN(config.org, node.GetString("org", "city"));
  CITYOS_RETURN_IF_ERROR(CheckSegment(node, "org", config.org));
  CITYOS_ASSIGN_OR_RETURN(bool insecure, node.GetBool("insecure", false));
  if (!node.Has("tls")) {
    if (!insecure) return node.Error("tls", kTlsHelp);
    config.security = TransportSecurity::kInsecure;
    return absl::OkStatus();
  }
  if (insecure) {
    return node.Error("insecure", "cannot be combined with node.tls: choose one");
  }
  if (auto mode = node.GetString("tls"); mode.ok()) {
    if (*mode != "auto") {
      return node.Error("tls", absl::StrCat("\"", *mode, "\" is not `auto`; ", kTlsHelp));
    }
    config.security = TransportSecurity::kAutoTls;
    return absl::OkStatus();
  }
  CITYOS_ASSIGN_OR_RETURN(ConfigNode tls, node.Child("tls"));
  CITYOS_RETURN_IF_ERROR(tls.CheckKeys({"ca", "cert", "key", "crl", "reload_interval"}));
  auto path = [&](const char* key, bool required) -> absl::StatusOr<std::string> {
    absl::StatusOr<std::string> v = required ? tls.GetString(key) : tls.GetString(key, "");
    if (!v.ok() || v->empty()) {
      if (required && v.ok()) return tls.Error(key, "must not be empty");
      return v;
    }
    return std::filesystem::absolute(*v).lexically_normal().string();
  };
  config.security = TransportSecurity::kTls;
  CITYOS_ASSIGN_OR_RETURN(config.tls.ca_file, path("ca", true));
  CITYOS_ASSIGN_OR_RETURN(config.tls.cert_file, path("cert", true));
  CITYOS_ASSIGN_OR_RETURN(config.tls.key_file, path("key", true));
  CITYOS_ASSIGN_OR_RETURN(config.tls.crl_file, path("crl", false));
  CITYOS_ASSIGN_OR_RETURN(config.tls.reload_interval,
                          tls.GetDuration("reload_interval", absl::Seconds(10)));
  if (config.tls.reload_interval < absl::Seconds(1)) {
    return tls.Error("reload_interval", "must be at least 1s");
  }
  config.tls.trust_domain = config.trust_domain;
  return absl::OkStatus();
}

absl::Status CheckListenAddress(const ConfigNode& node, const std::string& addr) {
  size_t colon = addr.rfind(':');
  uint32_t port;
  if (colon == std::string::npos || colon == 0 ||
      !absl::SimpleAtoi(addr.substr(colon + 1), &port) || port > 65535) {
    return node.Error("listen", absl::StrCat("\"", addr,
                                             "\" is not host:port (e.g. 127.0.0.1:7443; "
                                             "port 0 picks a free port)"));
  }
  return absl::OkStatus();
}

class NodeImpl final : public Node, private PluginContext {
 public:
  NodeImpl(NodeConfig config, BusNodeConfig bus_config,
           std::vector<std::unique_ptr<ServicePlugin>> plugins, Clock* clock)
      : config_(std::move(config)),
        bus_config_(std::move(bus_config)),
        plugins_(std::move(plugins)),
        clock_(clock) {
    info_ = config_.info;
    info_.trust_domain = config_.trust_domain;
  }

  ~NodeImpl() override { Shutdown(); }

  absl::Status Start() override {
    std::error_code ec;
    std::filesystem::create_directories(info_.data_dir, ec);
    if (ec) {
      return absl::FailedPreconditionError(absl::StrCat(
          "data dir ", info_.data_dir, ": cannot be created: ", ec.message()));
    }
    ::chmod(info_.data_dir.c_str(), 0700);
    absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> credentials = MakeCredentials();
    if (!credentials.ok()) return Annotate(credentials.status(), "node.tls");
    CITYOS_RETURN_IF_ERROR(OpenAccessControl());
    if (absl::Status s = OpenBus(); !s.ok()) {
      CloseAccessControl();
      return s;
    }
    if (!config_.metrics_listen.empty()) {
      auto http = MetricsHttpServer::Start(config_.metrics_listen, MetricsRegistry::Global());
      if (!http.ok()) {
        CloseBus();
        return Annotate(http.status(), "node.metrics_listen");
      }
      metrics_http_ = *std::move(http);
      LogInfo("node", "metrics endpoint", {{"address", metrics_http_->address()}});
    }

    for (size_t i = 0; i < plugins_.size(); ++i) {
      ServicePlugin& p = *plugins_[i];
      if (absl::Status s = p.Start(*this); !s.ok()) {
        StopPlugins(i);
        CloseBus();
        return Annotate(s, "plug-in " + std::string(p.name()));
      }
      started_ = i + 1;
      LogInfo("node", "plug-in started", {{"plugin", std::string(p.name())}});
    }

    grpc::EnableDefaultHealthCheckService(true);
    grpc::reflection::InitProtoReflectionServerBuilderPlugin();
    grpc::ServerBuilder builder;
    // RPC counts and latencies per method and code; traceparent into logs.
    AddServerObservability(builder, MetricsRegistry::Global());
    int port = 0;
    builder.AddListeningPort(config_.info.listen_address, *credentials, &port);
    for (auto& p : plugins_) {
      for (const HostedService& hs : p->Services()) {
        builder.RegisterService(hs.service);
        hosted_.push_back(hs.full_name);
      }
    }
    server_ = builder.BuildAndStart();
    if (server_ == nullptr || port == 0) {
      server_.reset();
      StopPlugins(started_);
      started_ = 0;
      CloseBus();
      return absl::UnavailableError(
          absl::StrCat("cannot listen on ", config_.info.listen_address,
                       " (address in use, or not an address of this host)"));
    }
    std::string host = config_.info.listen_address.substr(
        0, config_.info.listen_address.rfind(':'));
    info_.listen_address = absl::StrCat(host, ":", port);
    {
      absl::MutexLock lock(&serving_mu_);
      serving_address_ = info_.listen_address;
    }
    grpc::HealthCheckServiceInterface* health = server_->GetHealthCheckService();
    health->SetServingStatus("", true);
    for (const std::string& name : hosted_) health->SetServingStatus(name, true);
    if (config_.security == TransportSecurity::kAutoTls) WriteClientContext();
    return absl::OkStatus();
  }

  std::string listen_address() const override { return info_.listen_address; }

  std::vector<std::string> service_names() const override {
    std::vector<std::string> names = hosted_;
    names.push_back("grpc.health.v1.Health");
    names.push_back("grpc.reflection.v1alpha.ServerReflection");
    return names;
  }

  void Shutdown() override {
    absl::MutexLock lock(&shutdown_mu_);
    if (shut_down_) return;
    shut_down_ = true;
    if (server_ != nullptr) {
      server_->GetHealthCheckService()->Shutdown();
      for (size_t i = started_; i > 0; --i) plugins_[i - 1]->Drain();
      server_->Shutdown(absl::ToChronoTime(clock_->Now() + config_.shutdown_grace));
      server_->Wait();
    }
    StopPlugins(started_);
    started_ = 0;
    CloseBus();
    // Last, so the node can be scraped while it drains.
    if (metrics_http_ != nullptr) metrics_http_->Stop();
  }

  std::string metrics_address() const override {
    return metrics_http_ != nullptr ? metrics_http_->address() : std::string();
  }

 private:
  // PluginContext:
  const NodeInfo& node() const override { return info_; }
  std::string ServingAddress() const override {
    absl::MutexLock lock(&serving_mu_);
    return serving_address_;
  }
  Clock* clock() override { return clock_; }
  Bus* bus() override { return bus_.get(); }
  absl::StatusOr<Principal> Authenticate(const grpc::ServerContextBase& call) override {
    if (config_.security == TransportSecurity::kInsecure) {
      // Plaintext: no caller identity exists; every call acts as the node.
      return Principal::Node(config_.trust_domain, info_.name);
    }
    absl::StatusOr<Principal> peer = PeerPrincipal(call);
    if (peer.ok() && peer->org == Principal::Node(config_.trust_domain, info_.name).org) {
      // The node's own identity is in-process only: the PDP trusts it with
      // everything, so no certificate may claim it.
      return absl::UnauthenticatedError(absl::StrCat(
          "peer ", peer->SpiffeId(), ": org \"", peer->org,
          "\" is reserved for the node's in-process identity"));
    }
    return peer;
  }

  // The server credentials of the configured transport; for `tls: auto`,
  // creates or reuses the development PKI first.
  absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> MakeCredentials() {
    switch (config_.security) {
      case TransportSecurity::kInsecure:
        LogWarn("node",
                "insecure: plaintext transport and no caller authentication; every call "
                "acts as the node (node.insecure: true)",
                {{"listen", config_.info.listen_address},
                 {"acts_as", Principal::Node(config_.trust_domain, info_.name).SpiffeId()}});
        return grpc::InsecureServerCredentials();
      case TransportSecurity::kAutoTls: {
        std::string dir = (std::filesystem::path(info_.data_dir) / "pki").string();
        CITYOS_ASSIGN_OR_RETURN(dev_pki_, EnsureDevPki({.dir = dir,
                                                        .trust_domain = config_.trust_domain,
                                                        .org = config_.org,
                                                        .listen_host = HostOf(
                                                            config_.info.listen_address)}));
        LogInfo("node", dev_pki_.created ? "development PKI created" : "development PKI reused",
                {{"dir", dir}, {"spiffe_id", dev_pki_.node_spiffe_id}});
        tls_ = TlsConfig{.ca_file = dev_pki_.ca_file,
                         .cert_file = dev_pki_.node_cert_file,
                         .key_file = dev_pki_.node_key_file,
                         .crl_file = dev_pki_.crl_file,
                         .trust_domain = config_.trust_domain};
        return MakeServerCredentials(tls_);
      }
      case TransportSecurity::kTls:
        tls_ = config_.tls;
        return MakeServerCredentials(tls_);
    }
    return absl::InternalError("unknown transport security");
  }

  // `tls: auto`: adds (or replaces) the context named after the node in the
  // cityosctl context file and makes it current. A failure is logged, not
  // fatal: the node serves either way.
  void WriteClientContext() {
    absl::StatusOr<std::string> path = ClientConfigPath();
    std::string host = HostOf(info_.listen_address);
    if (host.empty() || host == "0.0.0.0") host = "127.0.0.1";
    if (host == "[::]") host = "[::1]";
    ClientContext context{.name = info_.name,
                          .endpoint = absl::StrCat(host, info_.listen_address.substr(
                                                             info_.listen_address.rfind(':'))),
                          .trust_domain = config_.trust_domain,
                          .ca = dev_pki_.ca_file,
                          .cert = dev_pki_.admin_cert_file,
                          .key = dev_pki_.admin_key_file,
                          .server_id = dev_pki_.node_spiffe_id};
    absl::Status s = path.ok() ? SaveClientContext(*path, context) : path.status();
    if (!s.ok()) {
      LogWarn("node", "cannot write the cityosctl context file",
              {{"error", std::string(s.message())}});
      return;
    }
    LogInfo("node", "cityosctl context written",
            {{"file", *path}, {"context", context.name}, {"endpoint", context.endpoint}});
  }
  PolicyDecisionPoint* policy() override { return pdp_.get(); }
  AuditLog* audit() override { return audit_.get(); }
  absl::StatusOr<std::string> PluginDataDir(std::string_view plugin) override {
    std::filesystem::path dir = std::filesystem::path(info_.data_dir) / plugin;
    std::error_code ec;
    std::filesystem::create_directories(dir, ec);
    if (ec) {
      return absl::FailedPreconditionError(
          absl::StrCat("data dir ", dir.string(), ": cannot be created: ", ec.message()));
    }
    ::chmod(dir.c_str(), 0700);
    return dir.string();
  }

  // Opens the audit log (<data_dir>/audit) and the policy decision point
  // (<data_dir>/policy), loads `policy.files`, and makes the bus authorizer.
  absl::Status OpenAccessControl() {
    std::filesystem::path data(info_.data_dir);
    const Principal self = Principal::Node(config_.trust_domain, info_.name);
    absl::StatusOr<std::unique_ptr<AuditLog>> audit =
        AuditLog::Open({.dir = (data / "audit").string(),
                        .signing_key_file = config_.audit.signing_key,
                        .node = info_.name,
                        .clock = clock_,
                        .checkpoint_every = config_.audit.checkpoint_every,
                        .checkpoint_interval = config_.audit.checkpoint_interval});
    if (!audit.ok()) return Annotate(audit.status(), "audit");
    audit_ = *std::move(audit);
    std::vector<std::pair<std::string, std::string>> orgs = config_.policy.org_jurisdictions;
    jurisdictions_ = MakeTableJurisdictionResolver(std::move(orgs), config_.policy.jurisdiction);
    PdpOptions options{.clock = clock_,
                       .audit = audit_.get(),
                       .state_dir = (data / "policy").string(),
                       .node = self,
                       .node_name = info_.name,
                       .max_emergency = config_.policy.max_emergency,
                       .cache_capacity = config_.policy.cache_capacity};
    absl::StatusOr<std::unique_ptr<PolicyDecisionPoint>> pdp = PolicyDecisionPoint::Create(options);
    if (!pdp.ok()) {
      CloseAccessControl();
      return Annotate(pdp.status(), "policy");
    }
    pdp_ = *std::move(pdp);
    pdp_->SetJurisdictionResolver(jurisdictions_.get());
    for (const PurposeInfo& purpose : config_.policy.purposes) {
      if (absl::Status s = pdp_->RegisterPurpose(self, purpose); !s.ok()) {
        CloseAccessControl();
        return Annotate(s, "policy.purposes");
      }
    }
    absl::StatusOr<std::vector<PolicyDocumentText>> docs = ReadPolicyFiles(config_.policy.files);
    absl::StatusOr<PolicySetInfo> loaded =
        docs.ok() ? pdp_->Load(self, *std::move(docs), {.replace_all = true})
                  : absl::StatusOr<PolicySetInfo>(docs.status());
    if (!loaded.ok()) {
      CloseAccessControl();
      return Annotate(loaded.status(), "policy.files");
    }
    bus_authorizer_ = MakePolicyBusAuthorizer(pdp_.get(), audit_.get());
    LogInfo("node", "policy decision point ready",
            {{"revision", std::to_string(loaded->revision)},
             {"documents", std::to_string(loaded->documents.size())},
             {"rules", std::to_string(loaded->rules)},
             {"audit_key_id", audit_->key_id()}});
    return absl::OkStatus();
  }

  // Closes the PDP and then the audit log (after the bus and plug-ins, which
  // decide and audit until they stop). Idempotent.
  void CloseAccessControl() {
    bus_authorizer_.reset();
    pdp_.reset();
    jurisdictions_.reset();
    if (audit_ != nullptr) {
      if (absl::Status s = audit_->Close(); !s.ok()) {
        LogError("node", "closing the audit log failed", {{"error", std::string(s.message())}});
      }
      audit_.reset();
    }
  }

  // Opens the bus in <data_dir>/bus and creates the configured streams
  // (idempotent; a stream that exists with another configuration is an
  // error naming it).
  absl::Status OpenBus() {
    std::string dir = (std::filesystem::path(info_.data_dir) / "bus").string();
    BusOptions options = MakeBusOptions(bus_config_, dir, clock_);
    options.authorizer = bus_authorizer_.get();
    absl::StatusOr<std::unique_ptr<Bus>> bus = Bus::Open(std::move(options));
    if (!bus.ok()) return Annotate(bus.status(), "bus");
    bus_ = *std::move(bus);
    const Principal self = Principal::Node(config_.trust_domain, info_.name);
    for (const StreamConfig& stream : bus_config_.streams) {
      if (auto info = bus_->CreateStream(self, stream); !info.ok()) {
        CloseBus();
        return Annotate(info.status(), "bus.streams: stream \"" + stream.name + "\"");
      }
    }
    LogInfo("node", "bus opened",
            {{"data_dir", dir}, {"streams", std::to_string(bus_config_.streams.size())}});
    return absl::OkStatus();
  }

  // Closes the bus (after the plug-ins stopped). Idempotent.
  void CloseBus() {
    CloseBusOnly();
    CloseAccessControl();
  }
  void CloseBusOnly() {
    if (bus_ == nullptr || bus_closed_) return;
    bus_closed_ = true;
    if (absl::Status s = bus_->Close(); !s.ok()) {
      LogError("node", "closing the bus failed", {{"error", std::string(s.message())}});
    } else {
      LogInfo("node", "bus closed");
    }
  }

  // Stops the first `n` plug-ins, last started first.
  void StopPlugins(size_t n) {
    for (size_t i = n; i > 0; --i) {
      plugins_[i - 1]->Stop();
      LogInfo("node", "plug-in stopped", {{"plugin", std::string(plugins_[i - 1]->name())}});
    }
  }

  NodeConfig config_;
  NodeInfo info_;
  // The TLS files in use (kTls, kAutoTls) and the dev PKI (kAutoTls).
  TlsConfig tls_;
  DevPki dev_pki_;
  mutable absl::Mutex serving_mu_;
  std::string serving_address_ ABSL_GUARDED_BY(serving_mu_);
  BusNodeConfig bus_config_;
  // The audit log, the PDP and the bus authorizer over it: outlive the bus
  // and the plug-ins (declared before them), which hold pointers to them.
  std::unique_ptr<AuditLog> audit_;
  std::unique_ptr<JurisdictionResolver> jurisdictions_;
  std::unique_ptr<PolicyDecisionPoint> pdp_;
  std::unique_ptr<BusAuthorizer> bus_authorizer_;
  // Outlives the plug-ins (declared before them), which may hold Bus*.
  std::unique_ptr<Bus> bus_;
  std::unique_ptr<MetricsHttpServer> metrics_http_;
  bool bus_closed_ = false;
  std::vector<std::unique_ptr<ServicePlugin>> plugins_;
  Clock* clock_;
  size_t started_ = 0;
  std::vector<std::string> hosted_;
  std::unique_ptr<grpc::Server> server_;
  absl::Mutex shutdown_mu_;
  bool shut_down_ ABSL_GUARDED_BY(shutdown_mu_) = false;
};

}  // namespace

absl::StatusOr<NodeConfig> ParseNodeConfig(const ConfigNode& root,
                                           const PluginRegistry& registry) {
  CITYOS_RETURN_IF_ERROR(root.CheckKeys({"node", "bus", "policy", "audit", "plugins"}));
  NodeConfig config;
  CITYOS_ASSIGN_OR_RETURN(ConfigNode node, root.Child("node"));
  CITYOS_RETURN_IF_ERROR(node.CheckKeys(
      {"name", "listen", "data_dir", "log_format", "log_level", "shutdown_grace",
       "trust_domain", "org", "tls", "insecure", "metrics_listen"}));
  CITYOS_ASSIGN_OR_RETURN(config.info.name, node.GetString("name"));
  CITYOS_ASSIGN_OR_RETURN(config.info.listen_address, node.GetString("listen"));
  CITYOS_RETURN_IF_ERROR(CheckListenAddress(node, config.info.listen_address));
  CITYOS_ASSIGN_OR_RETURN(config.metrics_listen, node.GetString("metrics_listen", ""));
  if (!config.metrics_listen.empty()) {
    absl::Status bad = CheckListenAddress(node, config.metrics_listen);
    if (!bad.ok()) return node.Error("metrics_listen", std::string(bad.message()));
  }
  CITYOS_ASSIGN_OR_RETURN(std::string data_dir, node.GetString("data_dir"));
  if (data_dir.empty()) return node.Error("data_dir", "must not be empty");
  config.info.data_dir = std::filesystem::absolute(data_dir).lexically_normal().string();
  CITYOS_ASSIGN_OR_RETURN(std::string format, node.GetString("log_format", "text"));
  if (auto f = ParseLogFormat(format); f.ok()) {
    config.log_format = *f;
  } else {
    return node.Error("log_format", std::string(f.status().message()));
  }
  CITYOS_ASSIGN_OR_RETURN(std::string level, node.GetString("log_level", "info"));
  if (auto l = ParseLogLevel(level); l.ok()) {
    config.log_level = *l;
  } else {
    return node.Error("log_level", std::string(l.status().message()));
  }
  CITYOS_ASSIGN_OR_RETURN(config.shutdown_grace,
                          node.GetDuration("shutdown_grace", absl::Seconds(5)));
  CITYOS_RETURN_IF_ERROR(ParseTransport(node, config));
  CITYOS_ASSIGN_OR_RETURN(ConfigNode policy, root.ChildOrEmpty("policy"));
  CITYOS_ASSIGN_OR_RETURN(config.policy, ParsePolicyConfig(policy));
  CITYOS_ASSIGN_OR_RETURN(ConfigNode audit, root.ChildOrEmpty("audit"));
  CITYOS_ASSIGN_OR_RETURN(config.audit, ParseAuditConfig(audit));
  CITYOS_ASSIGN_OR_RETURN(config.bus_section, root.ChildOrEmpty("bus"));
  CITYOS_RETURN_IF_ERROR(ParseBusConfig(config.bus_section).status());

  CITYOS_ASSIGN_OR_RETURN(std::vector<ConfigNode> plugins, root.ElementsOrEmpty("plugins"));
  std::set<std::string> seen;
  for (const ConfigNode& p : plugins) {
    if (!p.IsMap()) return p.Error("", "expected a map with keys name and config");
    CITYOS_RETURN_IF_ERROR(p.CheckKeys({"name", "config"}));
    CITYOS_ASSIGN_OR_RETURN(std::string name, p.GetString("name"));
    if (!registry.Contains(name)) {
      std::string known;
      for (const std::string& n : registry.Names()) absl::StrAppend(&known, known.empty() ? "" : ", ", n);
      return p.Error("name", absl::StrCat("unknown plug-in \"", name, "\" (this binary has: ",
                                          known.empty() ? "none" : known, ")"));
    }
    if (!seen.insert(name).second) {
      return p.Error("name", absl::StrCat("plug-in \"", name, "\" is listed twice"));
    }
    CITYOS_ASSIGN_OR_RETURN(ConfigNode section, p.ChildOrEmpty("config"));
    config.plugins.push_back(PluginSpec{name, section});
  }
  return config;
}

absl::StatusOr<std::unique_ptr<Node>> Node::Create(NodeConfig config,
                                                   const PluginRegistry& registry,
                                                   Clock* clock) {
  CITYOS_ASSIGN_OR_RETURN(BusNodeConfig bus_config, ParseBusConfig(config.bus_section));
  if (config.security == TransportSecurity::kTls) {
    // Bad certificate files are config errors, found before anything binds.
    CITYOS_RETURN_IF_ERROR(Annotate(CheckTlsConfig(config.tls), "node.tls"));
  }
  std::vector<std::unique_ptr<ServicePlugin>> plugins;
  for (const PluginSpec& spec : config.plugins) {
    CITYOS_ASSIGN_OR_RETURN(std::unique_ptr<ServicePlugin> p, registry.Create(spec.name));
    CITYOS_RETURN_IF_ERROR(p->Configure(spec.section));
    plugins.push_back(std::move(p));
  }
  return std::unique_ptr<Node>(
      new NodeImpl(std::move(config), std::move(bus_config), std::move(plugins),
                   clock ? clock : Clock::Real()));
}

}  // namespace cityos
