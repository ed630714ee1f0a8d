// cityos-bus: the bus plug-in as its own process. Thin; see
// services/cityosd/standalone.h for flags and behaviour.
//
//   cityos-bus --config bus-node.yaml --registry registry.city:7443
#include "bus_plugin.h"
#include "standalone.h"

int main(int argc, char** argv) {
  return cityos::RunStandaloneService(argc, argv, "bus",
                                      cityos::RegisterBusPlugin);
}
