// cityos-infobank: the information bank plug-in as its own process. Thin;
// see services/cityosd/standalone.h for flags and behaviour.
//
//   cityos-infobank --config bank-node.yaml --registry registry.city:7443
#include "infobank_plugin.h"
#include "standalone.h"

int main(int argc, char** argv) {
  return cityos::RunStandaloneService(argc, argv, "infobank", cityos::RegisterInfobankPlugin);
}
