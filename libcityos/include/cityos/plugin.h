// File: cityos/plugin.h
//
// The plug-in model of a cityos node. A plug-in is a named factory of a
// ServicePlugin; the node (cityosd) creates the plug-ins its config lists,
// hands each its config section, starts them with a PluginContext that gives
// the node's shared handles, serves the gRPC services they expose, and stops
// them in reverse order.
//
// Registration is explicit (no static initialisers, which static linking
// silently drops):
//
//   cityos::PluginRegistry registry;
//   CITYOS_RETURN_IF_ERROR(registry.Register("bus", [] { return MakeBusPlugin(); }));
//   CITYOS_ASSIGN_OR_RETURN(auto plugin, registry.Create("bus"));
#ifndef CITYOS_PLUGIN_H_
#define CITYOS_PLUGIN_H_

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "cityos/principal.h"

namespace grpc {
class ServerContextBase;
class Service;
}

namespace cityos {

class AuditLog;
class Bus;
class Clock;
class ConfigNode;
class PolicyDecisionPoint;

// Facts about the hosting node.
struct NodeInfo {
  // The node's name (`node.name`), used in logs and as its identity.
  std::string name;
  // The node's data directory (`node.data_dir`), absolute.
  std::string data_dir;
  // The address the node's gRPC server listens on, after binding
  // (e.g. "127.0.0.1:7443"; the real port when the config asked for port 0).
  std::string listen_address;
  // The node's SPIFFE trust domain (`node.trust_domain`): with `name`, it
  // makes the node's own principal, Principal::Node(trust_domain, name).
  // Empty means the default, "local".
  std::string trust_domain;
};

// What a node hands a plug-in at start. Owned by the node; valid until the
// plug-in's Stop() returns. Thread-safe.
class PluginContext {
 public:
  virtual ~PluginContext() = default;
  virtual const NodeInfo& node() const = 0;
  // The node's clock (real, or simulated in tests).
  virtual Clock* clock() = 0;
  // The node's data bus. Never null.
  virtual Bus* bus() = 0;
  // The node's policy decision point (cityos/policy.h): the one place access
  // is decided. Plug-ins that answer a hook (consent, contract) set it at
  // Start and reset it to null at Stop. Never null.
  virtual PolicyDecisionPoint* policy() = 0;
  // The node's audit log (cityos/audit.h). Never null.
  virtual AuditLog* audit() = 0;
  // The address the node's gRPC server listens on once it serves (e.g.
  // "127.0.0.1:7443", the real port when the config asked for port 0);
  // empty until then. The node binds after every plug-in started, so a
  // plug-in that calls the node itself (as a client with its own identity)
  // asks here at connect time. Thread-safe, unlike reading
  // node().listen_address while the node starts.
  virtual std::string ServingAddress() const = 0;
  // Creates (if needed) and returns `<data_dir>/<plugin name>`, the plug-in's
  // own directory for state.
  virtual absl::StatusOr<std::string> PluginDataDir(std::string_view plugin) = 0;
  // Who is calling an RPC served by this node: the principal of the caller's
  // verified client certificate, or UNAUTHENTICATED. The one place every
  // handler learns its caller. Takes the context of either API (a sync
  // handler's grpc::ServerContext, a callback handler's
  // grpc::CallbackServerContext). Thread-safe.
  virtual absl::StatusOr<Principal> Authenticate(const grpc::ServerContextBase& call) = 0;
};

// One gRPC service a plug-in exposes.
struct HostedService {
  // Fully qualified proto name, e.g. "cityos.bus.v1.BusService" (the generated
  // `Service::service_full_name()`).
  std::string full_name;
  // Not owned.
  grpc::Service* service = nullptr;
};

// A service hosted by a node. Calls come from one thread, in this order:
// Configure, Start, Services, (serving), Drain, Stop.
class ServicePlugin {
 public:
  virtual ~ServicePlugin() = default;

  // The registered name; also the key of its config section.
  virtual std::string_view name() const = 0;

  // Reads and checks the plug-in's config section (an empty map when the node
  // config has none). Called before the node binds any port; must not start
  // threads or touch the network. Errors are INVALID_ARGUMENT naming the file,
  // line and key (use ConfigNode::Error).
  virtual absl::Status Configure(const ConfigNode& section) = 0;

  // Starts the plug-in's work. An error stops the node's start-up.
  virtual absl::Status Start(PluginContext& context) = 0;

  // The gRPC services to serve, owned by the plug-in and valid until Stop()
  // returns. Called once, after Start(). The node reports each as SERVING on
  // grpc.health.v1 under its full name.
  virtual std::vector<HostedService> Services() = 0;

  // The node is about to stop: long-lived calls (server streams) should end
  // soon with UNAVAILABLE so clients reconnect elsewhere; unary calls still
  // complete. Called before the server stops taking calls. Default: nothing.
  virtual void Drain() {}

  // Drains and flushes. Called after the node's server stopped taking calls.
  virtual void Stop() = 0;
};

// Makes a new, unconfigured instance of a plug-in.
using PluginFactory = std::function<std::unique_ptr<ServicePlugin>()>;

// The plug-ins a binary knows, by name. Thread-compatible: register at start,
// then only read.
class PluginRegistry {
 public:
  // Adds a plug-in. INVALID_ARGUMENT if `name` is not 1-64 characters of
  // [a-z0-9_-] or `factory` is empty; ALREADY_EXISTS if the name is taken.
  absl::Status Register(std::string name, PluginFactory factory);

  // A new instance of the named plug-in; NOT_FOUND listing the known names.
  absl::StatusOr<std::unique_ptr<ServicePlugin>> Create(std::string_view name) const;

  bool Contains(std::string_view name) const;
  // Registered names, sorted.
  std::vector<std::string> Names() const;

 private:
  std::map<std::string, PluginFactory, std::less<>> factories_;
};

}  // namespace cityos

#endif  // CITYOS_PLUGIN_H_
