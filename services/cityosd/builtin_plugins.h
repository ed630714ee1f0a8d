// The plug-ins compiled into cityosd, registered explicitly.
#ifndef CITYOS_SERVICES_CITYOSD_BUILTIN_PLUGINS_H_
#define CITYOS_SERVICES_CITYOSD_BUILTIN_PLUGINS_H_

#include "absl/status/status.h"
#include "cityos/plugin.h"

namespace cityos {

// Registers every plug-in this binary can host.
absl::Status RegisterBuiltinPlugins(PluginRegistry& registry);

}  // namespace cityos

#endif  // CITYOS_SERVICES_CITYOSD_BUILTIN_PLUGINS_H_
