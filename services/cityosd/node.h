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
#include "cityos/config.h"
#include "cityos/logging.h"
#include "cityos/plugin.h"

namespace cityos {

// One plug-in listed in the node config.
struct PluginSpec {
  std::string name;
  ConfigNode section;
};

// The node config, checked. See docs/operations.md for the file format.
struct NodeConfig {
  NodeInfo info;  // name, data_dir (absolute), listen_address (as configured)
  LogFormat log_format = LogFormat::kText;
  LogLevel log_level = LogLevel::kInfo;
  // How long Shutdown() lets in-flight calls finish before cancelling them.
  absl::Duration shutdown_grace = absl::Seconds(5);
  // The `bus` section (streams and limits), an empty map when absent.
  ConfigNode bus_section = ConfigNode::EmptyMap("", "bus");
  std::vector<PluginSpec> plugins;
};

// Parses and checks a node config: unknown keys, missing or mistyped values,
// unknown or duplicate plug-ins are INVALID_ARGUMENT naming file, line and key.
absl::StatusOr<NodeConfig> ParseNodeConfig(const ConfigNode& root,
                                           const PluginRegistry& registry);

// A running node. Create() does everything that can fail on bad config, before
// any port is bound; Start() opens the data dir, opens the bus in
// <data_dir>/bus (creating the streams of the `bus:` section), starts plug-ins
// and binds.
class Node {
 public:
  static absl::StatusOr<std::unique_ptr<Node>> Create(NodeConfig config,
                                                      const PluginRegistry& registry,
                                                      Clock* clock = nullptr);
  virtual ~Node() = default;

  virtual absl::Status Start() = 0;
  // The bound address, e.g. "127.0.0.1:40123". REQUIRES: Start() succeeded.
  virtual std::string listen_address() const = 0;
  // Full names of the gRPC services served (plug-ins' and the standard ones).
  virtual std::vector<std::string> service_names() const = 0;
  // Marks every service NOT_SERVING, stops taking calls, gives in-flight calls
  // `shutdown_grace`, stops plug-ins in reverse order, then closes the bus.
  // Idempotent.
  virtual void Shutdown() = 0;
};

}  // namespace cityos

#endif  // CITYOS_SERVICES_CITYOSD_NODE_H_
