#include "bus_plugin.h"

#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_format.h"
#include "cityos/config.h"
#include "cityos/logging.h"
#include "cityos/principal.h"
#include "cityos/status.h"

namespace cityos {
namespace {

constexpr char kName[] = "bus";
// Trust domain of the node's own principal until the mesh assigns one.

absl::StatusOr<size_t> PositiveInt(const ConfigNode& section, std::string_view key,
                                   size_t fallback, int64_t max) {
  CITYOS_ASSIGN_OR_RETURN(int64_t v, section.GetInt(key, static_cast<int64_t>(fallback)));
  if (v < 1 || v > max) {
    return section.Error(key, absl::StrFormat("must be between 1 and %d", max));
  }
  return static_cast<size_t>(v);
}

class BusPlugin final : public ServicePlugin {
 public:
  explicit BusPlugin(PrincipalResolver resolver) : resolver_(std::move(resolver)) {}

  std::string_view name() const override { return kName; }

  absl::Status Configure(const ConfigNode& section) override {
    CITYOS_RETURN_IF_ERROR(section.CheckKeys({"default_max_batch", "publish_window"}));
    CITYOS_ASSIGN_OR_RETURN(
        options_.default_max_batch,
        PositiveInt(section, "default_max_batch", options_.default_max_batch,
                    static_cast<int64_t>(options_.max_batch_limit)));
    CITYOS_ASSIGN_OR_RETURN(options_.publish_window,
                            PositiveInt(section, "publish_window", options_.publish_window, 4096));
    return absl::OkStatus();
  }

  absl::Status Start(PluginContext& context) override {
    Bus* bus = context.bus();
    if (bus == nullptr) return absl::FailedPreconditionError("the node has no bus");
    PrincipalResolver resolver = resolver_;
    if (!resolver) {
      // The node authenticates callers (mTLS client certificates).
      resolver = [&context](grpc::ServerContext* call) { return context.Authenticate(*call); };
    }
    service_ = std::make_unique<BusServiceImpl>(bus, std::move(resolver), options_);
    return absl::OkStatus();
  }

  std::vector<HostedService> Services() override {
    if (service_ == nullptr) return {};
    return {{bus::v1::BusService::service_full_name(), service_.get()}};
  }

  // The server has stopped taking calls; the service object stays alive until
  // the plug-in is destroyed (the node's server still refers to it).
  void Drain() override {
    if (service_ != nullptr) service_->BeginShutdown();
  }
  void Stop() override {}

 private:
  const PrincipalResolver resolver_;
  BusServiceOptions options_;
  std::unique_ptr<BusServiceImpl> service_;
};

}  // namespace

std::unique_ptr<ServicePlugin> MakeBusPlugin(PrincipalResolver resolver) {
  return std::make_unique<BusPlugin>(std::move(resolver));
}

absl::Status RegisterBusPlugin(PluginRegistry& registry) {
  return registry.Register(kName, [] { return MakeBusPlugin(); });
}

}  // namespace cityos
