#include "standalone.h"

#include <signal.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <memory>
#include <optional>

#include "absl/strings/str_join.h"
#include "absl/synchronization/mutex.h"
#include "cityos/config.h"
#include "cityos/logging.h"
#include "cityos/observability.h"
#include "cityos/tls.h"
#include "node.h"
#include "registration_client.h"

namespace cityos {
namespace {

constexpr int kExitRuntime = 1;
constexpr int kExitConfig = 2;

}  // namespace

int RunStandaloneService(int argc, char** argv, const std::string& plugin_name,
                         RegisterPluginFn register_plugin) {
  // No absl::Mutex deadlock detection in production (docs/operations.md).
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  const std::string program = "cityos-" + plugin_name;
  auto fail = [&](int code, const absl::Status& s) {
    std::cerr << program << ": " << s.message() << "\n";
    return code;
  };
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);

  CLI::App app{
      program + ": the cityos `" + plugin_name +
      "` service as its own process (a node hosting only this plug-in)"};
  std::string config_path, data_dir, listen, registry_endpoint, registry_id,
      name;
  std::string domain = "platform";
  std::string ttl_text = "15s";
  bool check_only = false;
  app.add_option("-c,--config", config_path, "Node config file (YAML)")
      ->required();
  app.add_option("--data-dir", data_dir, "Override node.data_dir");
  app.add_option("--listen", listen,
                 "Override node.listen (host:port; port 0 = any free)");
  app.add_option(
      "--registry", registry_endpoint,
      "Register with the registry at this endpoint (mTLS, own certificate)");
  app.add_option("--registry-id", registry_id,
                 "Expected SPIFFE id of the registry's node (pins the server)");
  app.add_option("--name", name,
                 "Service name to register (default: the plug-in name)");
  app.add_option("--domain", domain, "Domain to register under")
      ->capture_default_str();
  app.add_option("--ttl", ttl_text, "Lease TTL to ask for")
      ->capture_default_str();
  app.add_flag("--check", check_only, "Validate the config and exit");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : kExitConfig;
  }
  absl::Duration ttl;
  if (!absl::ParseDuration(ttl_text, &ttl)) {
    return fail(kExitConfig,
                absl::InvalidArgumentError("--ttl: bad duration " + ttl_text));
  }

  PluginRegistry registry;
  if (absl::Status s = register_plugin(registry); !s.ok())
    return fail(kExitRuntime, s);
  auto root = ConfigNode::LoadFile(config_path);
  if (!root.ok()) return fail(kExitConfig, root.status());
  auto config = ParseNodeConfig(*root, registry);
  if (!config.ok()) return fail(kExitConfig, config.status());
  if (!data_dir.empty()) {
    config->info.data_dir =
        std::filesystem::absolute(data_dir).lexically_normal().string();
  }
  if (!listen.empty()) config->info.listen_address = listen;
  SetLogOptions(config->log_format, config->log_level);

  // The process's own identity, for calls to the registry.
  std::shared_ptr<grpc::ChannelCredentials> registry_creds;
  std::string org = config->org;
  TransportSecurity security = config->security;
  TlsConfig own_tls = config->tls;
  if (security == TransportSecurity::kAutoTls) {
    std::filesystem::path pki =
        std::filesystem::path(config->info.data_dir) / "pki";
    own_tls = TlsConfig{.ca_file = (pki / "ca" / "ca.pem").string(),
                        .cert_file = (pki / "node.pem").string(),
                        .key_file = (pki / "node.key").string(),
                        .crl_file = (pki / "ca" / "crl.pem").string(),
                        .trust_domain = config->trust_domain};
  }

  auto node = Node::Create(*std::move(config), registry);
  if (!node.ok()) return fail(kExitConfig, node.status());
  if (check_only) {
    std::cout << program << ": config " << config_path << " is valid\n";
    return 0;
  }
  if (absl::Status s = (*node)->Start(); !s.ok()) return fail(kExitRuntime, s);

  std::unique_ptr<RegistrationKeeper> keeper;
  if (!registry_endpoint.empty()) {
    if (security == TransportSecurity::kInsecure) {
      LogWarn("registration",
              "registering over plaintext (node.insecure: true)",
              {{"registry", registry_endpoint}});
      registry_creds = grpc::InsecureChannelCredentials();
    } else {
      std::optional<std::string> pin;
      if (!registry_id.empty()) pin = registry_id;
      auto creds = MakeChannelCredentials(own_tls, pin);
      if (!creds.ok()) {
        (*node)->Shutdown();
        return fail(kExitRuntime, creds.status());
      }
      registry_creds = *creds;
    }
    RegistrationKeeperOptions options;
    auto& reg = options.registration;
    reg.set_name(name.empty() ? plugin_name : name);
    reg.set_org(org);
    reg.set_domain(domain);
    reg.set_endpoint((*node)->listen_address());
    for (const std::string& svc : (*node)->service_names()) {
      if (svc.rfind("grpc.", 0) == 0) continue;  // health, reflection
      reg.add_proto_services(svc);
    }
    options.ttl = ttl;
    auto started = RegistrationKeeper::Start(
        CreateObservedChannel(registry_endpoint, registry_creds),
        std::move(options));
    if (!started.ok()) {
      (*node)->Shutdown();
      return fail(kExitConfig, started.status());
    }
    keeper = *std::move(started);
  }

  LogInfo("node", "serving",
          {{"listen", (*node)->listen_address()},
           {"services", absl::StrJoin((*node)->service_names(), ",")}});
  std::printf("%s: listening on %s\n", program.c_str(),
              (*node)->listen_address().c_str());
  std::fflush(stdout);

  int sig = 0;
  sigwait(&stop_signals, &sig);
  LogInfo("node", "stopping",
          {{"signal", sig == SIGINT ? "SIGINT" : "SIGTERM"}});
  if (keeper != nullptr) {
    if (absl::Status s = keeper->Stop(); !s.ok()) {
      LogWarn("registration", "deregistration failed",
              {{"error", std::string(s.message())}});
    }
  }
  (*node)->Shutdown();
  LogInfo("node", "stopped");
  return 0;
}

}  // namespace cityos
