// One plug-in as its own process: the thin main() of a standalone service
// binary (services/<name>/main.cc), e.g.
//
//   int main(int argc, char** argv) {
//     return cityos::RunStandaloneService(argc, argv, "bus",
//     cityos::RegisterBusPlugin);
//   }
//
//   cityos-bus --config bus-node.yaml [--listen HOST:PORT] [--data-dir DIR]
//              [--registry ENDPOINT [--registry-id SPIFFE_ID]] [--name NAME]
//              [--domain DOMAIN] [--ttl 15s] [--check]
//
// The config is a node config (same keys as cityosd: node.listen, data_dir,
// trust_domain, org, tls | insecure, bus, plugins); it runs in a cityos::Node
// whose PluginRegistry holds only this plug-in (the config's `plugins:` may
// list only it). With --registry, the process registers itself (name
// NAME, default the plug-in name; org = node.org; endpoint = the bound
// address; proto services = those it serves) with the registry at ENDPOINT
// over mTLS with its own certificate (node.tls files, or <data_dir>/pki for
// `tls: auto`), keeps the lease alive with RegistrationKeeper and deregisters
// on SIGINT / SIGTERM.
//
// Prints "<program>: listening on <address>" on stdout once serving. Exit
// status: 0 after a clean stop, 1 runtime error, 2 config / usage error.
#ifndef CITYOS_SERVICES_CITYOSCTL_STANDALONE_H_
#define CITYOS_SERVICES_CITYOSCTL_STANDALONE_H_

#include <string>

#include "absl/status/status.h"
#include "cityos/plugin.h"

namespace cityos {

using RegisterPluginFn = absl::Status (*)(PluginRegistry&);

int RunStandaloneService(int argc, char** argv, const std::string& plugin_name,
                         RegisterPluginFn register_plugin);

}  // namespace cityos

#endif  // CITYOS_SERVICES_CITYOSCTL_STANDALONE_H_
