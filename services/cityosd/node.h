// The all-in-one node: reads the node config, hosts the configured plug-ins,
// serves their gRPC services with health checking and reflection, and shuts
// down cleanly. services/cityosd/main.cc is a thin wrapper around this.
#ifndef CITYOS_SERVICES_CITYOSD_NODE_H_
#define CITYOS_SERVICES_CITYOSD_NODE_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "access_config.h"
#include "cityos/config.h"
#include "cityos/logging.h"
#include "cityos/plugin.h"
#include "cityos/tls.h"

namespace cityos {

// One plug-in listed in the node config.
struct PluginSpec {
  std::string name;
  ConfigNode section;
};

// How the node's gRPC server protects its transport (`node.tls` /
// `node.insecure`; see docs/security.md).
enum class TransportSecurity {
  // mTLS with the certificate files of `node.tls: {ca, cert, key, crl}`.
  kTls,
  // mTLS with a development PKI kept in <data_dir>/pki (`node.tls: auto`),
  // created on first start, plus a cityosctl context for its admin.
  kAutoTls,
  // Plaintext (`node.insecure: true`): no caller authentication; every call
  // acts as the node. Logged as a warning at every start.
  kInsecure,
};

// The node config, checked. See docs/operations.md for the file format.
struct NodeConfig {
  NodeInfo info;  // name, data_dir (absolute), listen_address (as configured)
  // `node.trust_domain`: the SPIFFE trust domain of the node and its peers.
  // Default: "local".
  std::string trust_domain = "local";
  // `node.org`: the organisation operating the node; its certificate names
  // spiffe://<trust_domain>/org/<org>/svc/cityosd. Default: "city".
  std::string org = "city";
  TransportSecurity security = TransportSecurity::kTls;
  // For kTls: the files (absolute) and `reload_interval`; trust_domain is
  // filled from `node.trust_domain`. Unused otherwise.
  TlsConfig tls;
  LogFormat log_format = LogFormat::kText;
  LogLevel log_level = LogLevel::kInfo;
  // How long Shutdown() lets in-flight calls finish before cancelling them.
  absl::Duration shutdown_grace = absl::Seconds(5);
  // `node.metrics_listen`: host:port of the HTTP /metrics endpoint
  // (Prometheus text format, plain HTTP: keep it on loopback or a management
  // network). Empty: no endpoint. Default: empty.
  std::string metrics_listen;
  // The `bus` section (streams and limits), an empty map when absent.
  ConfigNode bus_section = ConfigNode::EmptyMap("", "bus");
  // The `policy` section (policy files, purposes, jurisdictions) and the
  // `audit` section (checkpoint signing), checked; see access_config.h.
  PolicyNodeConfig policy;
  AuditNodeConfig audit;
  std::vector<PluginSpec> plugins;
};

// Parses and checks a node config: unknown keys, missing or mistyped values,
// unknown or duplicate plug-ins are INVALID_ARGUMENT naming file, line and key.
absl::StatusOr<NodeConfig> ParseNodeConfig(const ConfigNode& root,
                                           const PluginRegistry& registry);

// A running node. Create() does everything that can fail on bad config, before
// any port is bound; Start() opens the data dir, the audit log in
// <data_dir>/audit, the policy decision point (loading `policy.files`; state
// in <data_dir>/policy), the bus in <data_dir>/bus (creating the streams of
// the `bus:` section, every publish and subscribe decided by the PDP), starts
// plug-ins and binds.
class Node {
 public:
  static absl::StatusOr<std::unique_ptr<Node>> Create(NodeConfig config,
                                                      const PluginRegistry& registry,
                                                      Clock* clock = nullptr);
  virtual ~Node() = default;

  virtual absl::Status Start() = 0;
  // The bound address, e.g. "127.0.0.1:40123". REQUIRES: Start() succeeded.
  virtual std::string listen_address() const = 0;
  // The bound /metrics address, or "" without `node.metrics_listen`.
  virtual std::string metrics_address() const = 0;
  // Full names of the gRPC services served (plug-ins' and the standard ones).
  virtual std::vector<std::string> service_names() const = 0;
  // Marks every service NOT_SERVING, stops taking calls, gives in-flight calls
  // `shutdown_grace`, stops plug-ins in reverse order, then closes the bus.
  // Idempotent.
  virtual void Shutdown() = 0;
};

}  // namespace cityos

#endif  // CITYOS_SERVICES_CITYOSD_NODE_H_
