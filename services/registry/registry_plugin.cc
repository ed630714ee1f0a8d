#include "registry_plugin.h"

#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "cityos/logging.h"
#include "cityos/status.h"

namespace cityos {
namespace {

constexpr char kName[] = "registry";
constexpr int64_t kMaxInstancesLimit = 1 << 20;
constexpr int64_t kMaxWatchQueueDepth = 1 << 20;

absl::StatusOr<absl::Duration> PositiveDuration(const ConfigNode& section, std::string_view key,
                                                absl::Duration fallback) {
  CITYOS_ASSIGN_OR_RETURN(absl::Duration d, section.GetDuration(key, fallback));
  if (d <= absl::ZeroDuration() || d == absl::InfiniteDuration()) {
    return section.Error(key, "must be a positive, finite duration");
  }
  return d;
}

absl::StatusOr<size_t> BoundedInt(const ConfigNode& section, std::string_view key,
                                  size_t fallback, int64_t max) {
  CITYOS_ASSIGN_OR_RETURN(int64_t v, section.GetInt(key, static_cast<int64_t>(fallback)));
  if (v < 1 || v > max) {
    return section.Error(key, absl::StrFormat("must be between 1 and %d", max));
  }
  return static_cast<size_t>(v);
}

// Calls Registry::ExpireNow() every `interval` of real time until destroyed.
class ExpiryTimer {
 public:
  ExpiryTimer(Registry* registry, absl::Duration interval)
      : registry_(registry), interval_(interval), thread_([this] { Run(); }) {}
  ~ExpiryTimer() {
    {
      absl::MutexLock lock(&mu_);
      stop_ = true;
    }
    thread_.join();
  }

 private:
  void Run() {
    absl::MutexLock lock(&mu_);
    auto stopping = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stop_; };
    while (!mu_.AwaitWithTimeout(absl::Condition(&stopping), interval_)) {
      mu_.Unlock();
      registry_->ExpireNow();
      mu_.Lock();
    }
  }

  Registry* const registry_;
  const absl::Duration interval_;
  absl::Mutex mu_;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;  // last: starts after the fields above exist
};

class RegistryPlugin final : public ServicePlugin {
 public:
  explicit RegistryPlugin(PrincipalResolver resolver) : resolver_(std::move(resolver)) {}

  std::string_view name() const override { return kName; }

  absl::Status Configure(const ConfigNode& section) override {
    CITYOS_ASSIGN_OR_RETURN(config_, ParseRegistryPluginConfig(section));
    return absl::OkStatus();
  }

  absl::Status Start(PluginContext& context) override {
    RegistryOptions options = config_.registry;
    options.clock = context.clock();
    registry_ = Registry::Create(options);
    PrincipalResolver resolver = resolver_;
    if (!resolver) {
      // The node authenticates callers (mTLS client certificates).
      resolver = [&context](grpc::ServerContext* call) { return context.Authenticate(*call); };
    }
    service_ = std::make_unique<RegistryServiceImpl>(registry_.get(), std::move(resolver));
    timer_ = std::make_unique<ExpiryTimer>(registry_.get(), config_.expiry_interval);
    LogInfo(kName, "registry started",
            {{"default_ttl", absl::FormatDuration(options.default_ttl)},
             {"max_ttl", absl::FormatDuration(options.max_ttl)},
             {"expiry_interval", absl::FormatDuration(config_.expiry_interval)}});
    return absl::OkStatus();
  }

  std::vector<HostedService> Services() override {
    if (service_ == nullptr) return {};
    return {{registry::v1::RegistryService::service_full_name(), service_.get()}};
  }

  void Drain() override {
    if (service_ != nullptr) service_->BeginShutdown();
    if (registry_ != nullptr) registry_->Shutdown();
  }

  // The server has stopped taking calls. The service and the registry stay
  // alive until the plug-in is destroyed (the node's server still refers to
  // the service).
  void Stop() override { timer_.reset(); }

 private:
  const PrincipalResolver resolver_;
  RegistryPluginConfig config_;
  std::unique_ptr<Registry> registry_;
  std::unique_ptr<RegistryServiceImpl> service_;
  std::unique_ptr<ExpiryTimer> timer_;
};

}  // namespace

absl::StatusOr<RegistryPluginConfig> ParseRegistryPluginConfig(const ConfigNode& section) {
  CITYOS_RETURN_IF_ERROR(section.CheckKeys({"default_ttl", "min_ttl", "max_ttl",
                                            "expiry_interval", "max_instances",
                                            "watch_queue_depth"}));
  RegistryPluginConfig c;
  RegistryOptions& r = c.registry;
  CITYOS_ASSIGN_OR_RETURN(r.default_ttl, PositiveDuration(section, "default_ttl", r.default_ttl));
  CITYOS_ASSIGN_OR_RETURN(r.min_ttl, PositiveDuration(section, "min_ttl", r.min_ttl));
  CITYOS_ASSIGN_OR_RETURN(r.max_ttl, PositiveDuration(section, "max_ttl", r.max_ttl));
  if (r.min_ttl > r.max_ttl) {
    return section.Error("min_ttl", absl::StrFormat("%s is more than max_ttl %s",
                                                    absl::FormatDuration(r.min_ttl),
                                                    absl::FormatDuration(r.max_ttl)));
  }
  if (r.default_ttl < r.min_ttl || r.default_ttl > r.max_ttl) {
    return section.Error("default_ttl",
                         absl::StrFormat("%s is outside [min_ttl %s, max_ttl %s]",
                                         absl::FormatDuration(r.default_ttl),
                                         absl::FormatDuration(r.min_ttl),
                                         absl::FormatDuration(r.max_ttl)));
  }
  CITYOS_ASSIGN_OR_RETURN(c.expiry_interval,
                          PositiveDuration(section, "expiry_interval", c.expiry_interval));
  CITYOS_ASSIGN_OR_RETURN(r.max_instances, BoundedInt(section, "max_instances", r.max_instances,
                                                      kMaxInstancesLimit));
  CITYOS_ASSIGN_OR_RETURN(r.watch_queue_depth,
                          BoundedInt(section, "watch_queue_depth", r.watch_queue_depth,
                                     kMaxWatchQueueDepth));
  return c;
}

std::unique_ptr<ServicePlugin> MakeRegistryPlugin(PrincipalResolver resolver) {
  return std::make_unique<RegistryPlugin>(std::move(resolver));
}

absl::Status RegisterRegistryPlugin(PluginRegistry& registry) {
  return registry.Register(kName, [] { return MakeRegistryPlugin(); });
}

}  // namespace cityos
