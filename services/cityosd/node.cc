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
#include "cityos/bus.h"
#include "cityos/clock.h"
#include "cityos/principal.h"
#include "cityos/status.h"

namespace cityos {
namespace {

// Trust domain of the node's own principal until the mesh assigns one.
constexpr char kLocalTrustDomain[] = "local";

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
    CITYOS_RETURN_IF_ERROR(OpenBus());

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
    int port = 0;
    // Plaintext until the service mesh (mTLS) lands; see docs/security.md.
    builder.AddListeningPort(config_.info.listen_address, grpc::InsecureServerCredentials(),
                             &port);
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
    grpc::HealthCheckServiceInterface* health = server_->GetHealthCheckService();
    health->SetServingStatus("", true);
    for (const std::string& name : hosted_) health->SetServingStatus(name, true);
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
  }

 private:
  // PluginContext:
  const NodeInfo& node() const override { return info_; }
  Clock* clock() override { return clock_; }
  Bus* bus() override { return bus_.get(); }
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

  // Opens the bus in <data_dir>/bus and creates the configured streams
  // (idempotent; a stream that exists with another configuration is an
  // error naming it).
  absl::Status OpenBus() {
    std::string dir = (std::filesystem::path(info_.data_dir) / "bus").string();
    absl::StatusOr<std::unique_ptr<Bus>> bus =
        Bus::Open(MakeBusOptions(bus_config_, dir, clock_));
    if (!bus.ok()) return Annotate(bus.status(), "bus");
    bus_ = *std::move(bus);
    const Principal self = Principal::Node(kLocalTrustDomain, info_.name);
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
  BusNodeConfig bus_config_;
  // Outlives the plug-ins (declared before them), which may hold Bus*.
  std::unique_ptr<Bus> bus_;
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
  CITYOS_RETURN_IF_ERROR(root.CheckKeys({"node", "bus", "plugins"}));
  NodeConfig config;
  CITYOS_ASSIGN_OR_RETURN(ConfigNode node, root.Child("node"));
  CITYOS_RETURN_IF_ERROR(node.CheckKeys(
      {"name", "listen", "data_dir", "log_format", "log_level", "shutdown_grace"}));
  CITYOS_ASSIGN_OR_RETURN(config.info.name, node.GetString("name"));
  CITYOS_ASSIGN_OR_RETURN(config.info.listen_address, node.GetString("listen"));
  CITYOS_RETURN_IF_ERROR(CheckListenAddress(node, config.info.listen_address));
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
