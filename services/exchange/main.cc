// cityos-exchange: the exchange plug-in as its own process. Thin; see
// services/cityosd/standalone.h for flags and behaviour.
//
//   cityos-exchange --config exchange-node.yaml --registry registry.city:7443
#include "exchange_plugin.h"
#include "standalone.h"

int main(int argc, char** argv) {
  return cityos::RunStandaloneService(argc, argv, "exchange",
                                      cityos::RegisterExchangePlugin);
}
