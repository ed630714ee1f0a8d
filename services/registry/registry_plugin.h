// The `registry` plug-in: serves cityos.registry.v1.RegistryService from an
// in-memory Registry (registry.h; soft state, nothing is written to the data
// dir) and removes expired leases on a timer thread.
//
//   plugins:
//     - name: registry
//       config:                 # optional; defaults shown
//         default_ttl: 15s      # lease TTL when a registration asks for none
//         min_ttl: 5s           # requested TTLs are clamped to
//         max_ttl: 5m           #   [min_ttl, max_ttl]
//         expiry_interval: 1s   # how often expired leases are removed
//         max_instances: 4096   # live instances; more are RESOURCE_EXHAUSTED
//         watch_queue_depth: 1024  # changes queued per watcher before it is cut
//
// Caller identity: each call's principal comes from
// PluginContext::Authenticate (the node's mTLS client authentication); tests
// may pass their own PrincipalResolver. Lease times use the node's clock
// (PluginContext::clock()); the timer runs on real time.
//
// Drain() ends open Watch streams with UNAVAILABLE; Stop() stops the timer.
#ifndef CITYOS_SERVICES_REGISTRY_REGISTRY_PLUGIN_H_
#define CITYOS_SERVICES_REGISTRY_REGISTRY_PLUGIN_H_

#include <memory>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "cityos/config.h"
#include "cityos/plugin.h"
#include "registry.h"
#include "registry_service.h"

namespace cityos {

// The plug-in's config section, checked.
struct RegistryPluginConfig {
  // Registry limits (the clock is set at Start()).
  RegistryOptions registry;
  // Time between expiry sweeps. Default: 1 s.
  absl::Duration expiry_interval = absl::Seconds(1);
};

// Reads and checks the section (an empty map gives the defaults). Unknown
// keys, mistyped values and inconsistent bounds are INVALID_ARGUMENT naming
// the file, line and key.
absl::StatusOr<RegistryPluginConfig> ParseRegistryPluginConfig(const ConfigNode& section);

// A new, unconfigured registry plug-in. `resolver` names the caller of each
// RPC; null means PluginContext::Authenticate.
std::unique_ptr<ServicePlugin> MakeRegistryPlugin(PrincipalResolver resolver = nullptr);

// Registers MakeRegistryPlugin() as "registry".
absl::Status RegisterRegistryPlugin(PluginRegistry& registry);

}  // namespace cityos

#endif  // CITYOS_SERVICES_REGISTRY_REGISTRY_PLUGIN_H_
