// The `bus` plug-in: serves cityos.bus.v1.BusService over the node's Bus
// (PluginContext::bus(); the node opens and closes the Bus itself, in
// <data_dir>/bus, from the config's top-level `bus:` section, see
// bus_config.h). The plug-in keeps no state of its own and never calls
// PluginDataDir("bus"), which is the Bus's directory.
//
// Node shutdown: the node stops taking calls before it stops plug-ins, and
// gRPC lets in-flight calls run for `shutdown_grace`; open Subscribe and
// PublishStream calls therefore run until the grace expires and are then
// cancelled (the plug-in interface has no earlier "draining" signal).
//
//   plugins:
//     - name: bus
//       config:                  # optional
//         default_max_batch: 256 # Subscribe deliveries per response when the
//                                # request says 0
//         publish_window: 64     # PublishStream batches outstanding per call
//
// Caller identity: by default each call's principal comes from
// PluginContext::Authenticate (the node's caller authentication); tests may
// pass their own PrincipalResolver.
#ifndef CITYOS_SERVICES_BUS_BUS_PLUGIN_H_
#define CITYOS_SERVICES_BUS_BUS_PLUGIN_H_

#include <memory>

#include "absl/status/status.h"
#include "bus_service.h"
#include "cityos/plugin.h"

namespace cityos {

// A new, unconfigured bus plug-in. `resolver` names the caller of each RPC;
// null means the node's own principal (no authentication, see above).
std::unique_ptr<ServicePlugin> MakeBusPlugin(PrincipalResolver resolver = nullptr);

// Registers MakeBusPlugin() as "bus".
absl::Status RegisterBusPlugin(PluginRegistry& registry);

}  // namespace cityos

#endif  // CITYOS_SERVICES_BUS_BUS_PLUGIN_H_
