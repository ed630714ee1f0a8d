// cityosd: the all-in-one cityos node. Thin: flags, config, Node, signals.
//
//   cityosd --config config/demo-city.yaml
//   cityosd --config node.yaml --check      # validate the config (and TLS files) and exit
//   cityosd repair-log <data_dir>/bus/<stream>   # after a DATA_LOSS refusal
#include <signal.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <filesystem>
#include <iostream>

#include "absl/strings/str_join.h"
#include "absl/synchronization/mutex.h"
#include "builtin_plugins.h"
#include "cityos/bus_backend.h"
#include "cityos/config.h"
#include "cityos/logging.h"
#include "node.h"

namespace {

constexpr int kExitRuntime = 1;
constexpr int kExitConfig = 2;

int Fail(int code, const absl::Status& s) {
  std::cerr << "cityosd: " << s.message() << "\n";
  return code;
}

}  // namespace

int main(int argc, char** argv) {
  // No absl::Mutex deadlock detection in production (docs/operations.md).
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  // Block the stop signals in every thread (gRPC's and the plug-ins' inherit
  // the mask); the main thread takes them with sigwait.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);

  CLI::App app{"cityosd: the cityos all-in-one node"};
  std::string config_path, data_dir, listen;
  bool check_only = false;
  app.add_option("-c,--config", config_path, "Node config file (YAML)");
  app.add_option("--data-dir", data_dir, "Override node.data_dir");
  app.add_option("--listen", listen, "Override node.listen (host:port; port 0 = any free)");
  app.add_flag("--check", check_only, "Validate the config and exit");
  std::string repair_dir;
  CLI::App* repair = app.add_subcommand(
      "repair-log",
      "Repair a stream's log after the node refused to start with DATA_LOSS: keeps the "
      "good prefix, drops the rest and reports what it dropped. The node must be stopped.");
  repair->add_option("dir", repair_dir, "The stream's directory (<data_dir>/bus/<stream>)")
      ->required();
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : kExitConfig;
  }
  if (repair->parsed()) {
    auto report = cityos::RepairStreamLog(repair_dir);
    if (!report.ok()) return Fail(kExitRuntime, report.status());
    std::cout << "cityosd repair-log: " << *report << "\n";
    return 0;
  }
  if (config_path.empty()) {
    std::cerr << "cityosd: --config is required (see --help)\n";
    return kExitConfig;
  }

  cityos::PluginRegistry registry;
  if (absl::Status s = cityos::RegisterBuiltinPlugins(registry); !s.ok()) {
    return Fail(kExitRuntime, s);
  }
  auto root = cityos::ConfigNode::LoadFile(config_path);
  if (!root.ok()) return Fail(kExitConfig, root.status());
  auto config = cityos::ParseNodeConfig(*root, registry);
  if (!config.ok()) return Fail(kExitConfig, config.status());
  if (!data_dir.empty()) {
    // Absolute, like node.data_dir: `tls: auto` writes these paths into the
    // cityosctl context file.
    config->info.data_dir = std::filesystem::absolute(data_dir).lexically_normal().string();
  }
  if (!listen.empty()) config->info.listen_address = listen;
  cityos::SetLogOptions(config->log_format, config->log_level);

  auto node = cityos::Node::Create(*std::move(config), registry);
  if (!node.ok()) return Fail(kExitConfig, node.status());
  if (check_only) {
    std::cout << "cityosd: config " << config_path << " is valid\n";
    return 0;
  }
  if (absl::Status s = (*node)->Start(); !s.ok()) return Fail(kExitRuntime, s);

  cityos::LogInfo("node", "serving",
                  {{"listen", (*node)->listen_address()},
                   {"services", absl::StrJoin((*node)->service_names(), ",")}});
  // One plain line on stdout that scripts and tests wait for.
  std::printf("cityosd: listening on %s\n", (*node)->listen_address().c_str());
  std::fflush(stdout);

  int sig = 0;
  sigwait(&stop_signals, &sig);
  cityos::LogInfo("node", "stopping", {{"signal", sig == SIGINT ? "SIGINT" : "SIGTERM"}});
  (*node)->Shutdown();
  cityos::LogInfo("node", "stopped");
  return 0;
}
