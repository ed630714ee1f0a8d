#include "builtin_plugins.h"

#include "bus_plugin.h"
#include "carbon_plugin.h"
#include "cityos/status.h"
#include "exchange_plugin.h"
#include "infobank_plugin.h"
#include "registry_plugin.h"
#include "sim_plugin.h"

namespace cityos {

absl::Status RegisterBuiltinPlugins(PluginRegistry& registry) {
  // Each plug-in's RegisterXxxPlugin() is called here, one line each, as the
  // plug-ins land (bus, registry, exchange, infobank, carbon, trading).
  CITYOS_RETURN_IF_ERROR(RegisterBusPlugin(registry));
  CITYOS_RETURN_IF_ERROR(RegisterRegistryPlugin(registry));
  CITYOS_RETURN_IF_ERROR(RegisterExchangePlugin(registry));
  CITYOS_RETURN_IF_ERROR(RegisterInfobankPlugin(registry));
  CITYOS_RETURN_IF_ERROR(RegisterCarbonPlugin(registry));
  CITYOS_RETURN_IF_ERROR(RegisterCitySimPlugin(registry));
  return absl::OkStatus();
}

}  // namespace cityos
