// cityos-registry: the registry plug-in as its own process. Thin; see
// services/cityosd/standalone.h for flags and behaviour.
//
//   cityos-registry --config registry-node.yaml
#include "registry_plugin.h"
#include "standalone.h"

int main(int argc, char** argv) {
  return cityos::RunStandaloneService(argc, argv, "registry",
                                      cityos::RegisterRegistryPlugin);
}
