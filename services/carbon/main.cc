// cityos-carbon: the carbon account plug-in as its own process. Thin; see
// services/cityosd/standalone.h for flags and behaviour. Standalone, the
// plug-in needs `exchange.address` (the node serving the exchange) and an
// `identity` (or a `tls: auto` data dir whose development CA the exchange's
// node trusts).
//
//   cityos-carbon --config carbon-node.yaml --registry registry.city:7443
#include "carbon_plugin.h"
#include "standalone.h"

int main(int argc, char** argv) {
  return cityos::RunStandaloneService(argc, argv, "carbon",
                                      cityos::RegisterCarbonPlugin);
}
