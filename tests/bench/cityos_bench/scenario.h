// cityos-bench: scenarios, their registry, and what a scenario may use.
//
// A group of scenarios lives in its own file and exposes one registration
// function, called explicitly from RegisterAllScenarios() (scenarios.cc); no
// static initialisers, so a static link cannot lose a group:
//
//   absl::Status RegisterPolicyScenarios(ScenarioRegistry& registry) {
//     return registry.Add({.name = "policy.decide",
//                   .unit = "decisions/s",
//                   .description = "PDP decisions on one thread",
//                   .run = [](BenchContext& ctx) -> absl::StatusOr<Result> {
//                     Result r;
//                     r.value = ...;
//                     return r;
//                   }});
//   }
//
// Each scenario prints one JSON object on one line: `name`, `value`, `unit`,
// then, for side-by-side figures, `peer`, `peer_value`, `ratio` (value /
// peer_value) or `peer_error`, then its own fields.
#ifndef CITYOS_TESTS_BENCH_CITYOS_BENCH_SCENARIO_H_
#define CITYOS_TESTS_BENCH_CITYOS_BENCH_SCENARIO_H_

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "cityos/event.h"

namespace cityos::bench {

class NatsServer;

// SPIFFE id of BenchPrincipal(); sample events carry it as their publisher so
// they can be published shared (Bus::PublishShared).
inline constexpr char kBenchPublisher[] =
    "spiffe://bench.city/org/bench/svc/pub";

// Command-line settings shared by every scenario.
struct BenchOptions {
  // Events each measurement publishes (or stores before a replay), at most.
  // Default: 2,000,000.
  uint64_t events = 2'000'000;
  // Longest a measurement (or a prefill) runs; it stops at whichever of
  // `events` and `max_time` comes first. Default: 5 s.
  absl::Duration max_time = absl::Seconds(5);
  // Serialized size of the sample event, in bytes. Default: 256.
  size_t event_bytes = 256;
  // Events per publish call (in-process and gRPC). Default: 64.
  size_t batch = 64;
  // Durable scenarios: batches each publisher keeps in flight. Default: 2.
  size_t window = 2;
  // Parent of the run's temporary directory. Default: $TMPDIR or /tmp.
  std::string work_parent;
  // Run the side-by-side peers (NATS; the canned-bytes server of
  // exchange.query*). Default: true.
  bool peers = true;
  // nats-server binary; empty = search $PATH, /usr/sbin, /usr/bin.
  std::string nats_server;
};

// One line of output.
struct Result {
  std::optional<double> value;  // null when the scenario failed
  // Side by side: the peer's name and figure (or why there is none).
  std::string peer;
  std::optional<double> peer_value;
  std::string peer_error;
  // Further fields, printed after the standard ones in insertion order.
  nlohmann::ordered_json extra = nlohmann::ordered_json::object();

  // Records the peer's figure, or its error as `peer_error`.
  void SetPeer(std::string_view name, const absl::StatusOr<double>& figure);
};

class BenchContext;

struct Scenario {
  // Dot-separated, unique, e.g. "bus.durable.fsync.p16".
  std::string name;
  // Unit of `value`, e.g. "events/s", "bytes".
  std::string unit;
  // One line for --list.
  std::string description;
  // Runs the measurement on the calling (main) thread.
  std::function<absl::StatusOr<Result>(BenchContext&)> run;
};

// Scenarios by name. Not thread-safe (filled before the run).
class ScenarioRegistry {
 public:
  // ALREADY_EXISTS for a duplicate name; INVALID_ARGUMENT for an empty name
  // or no `run`.
  absl::Status Add(Scenario scenario);
  // In registration order.
  const std::vector<Scenario>& scenarios() const { return scenarios_; }

 private:
  std::vector<Scenario> scenarios_;
};

// What a running scenario may use. Lives for the whole run; owns the run's
// temporary directory and the nats-server, which it stops when destroyed.
class BenchContext {
 public:
  // `root` is an existing empty directory that the context removes.
  BenchContext(BenchOptions options, std::string root);
  ~BenchContext();
  BenchContext(const BenchContext&) = delete;
  BenchContext& operator=(const BenchContext&) = delete;

  const BenchOptions& options() const { return options_; }
  const std::string& root() const { return root_; }

  // A fresh empty directory under the root, "<root>/<name>-<n>".
  absl::StatusOr<std::string> NewDir(std::string_view name);
  // Removes a directory made by NewDir (scenarios call it when done, so the
  // disk does not fill up over a run). Errors are ignored.
  void RemoveDir(const std::string& dir);

  // The nats-server, started on the first call (from the main thread) on a
  // free loopback port with JetStream; the error is remembered (nats-server
  // missing, or it did not start) and returned again. FAILED_PRECONDITION
  // when peers are disabled.
  absl::StatusOr<NatsServer*> Nats();
  // Stops the nats-server now (also done by the destructor).
  void StopNats();

  // A valid event on `subject` whose serialized size is options().event_bytes.
  // Cached per subject.
  absl::StatusOr<event::v1::Event> SampleEvent(const std::string& subject);

 private:
  BenchOptions options_;
  std::string root_;
  int next_dir_ = 0;
  std::unique_ptr<NatsServer> nats_;
  std::optional<absl::Status> nats_error_;
  std::map<std::string, event::v1::Event> samples_;
};

// Every group's registration, in the order --list prints them (scenarios.cc).
absl::Status RegisterAllScenarios(ScenarioRegistry& registry);

// The groups, one file each. A later group adds its function here and one
// line to RegisterAllScenarios().
absl::Status RegisterBusScenarios(
    ScenarioRegistry& registry);  // bus_scenarios.cc
absl::Status RegisterBusGrpcScenarios(
    ScenarioRegistry& registry);  // bus_grpc_scenarios.cc
absl::Status RegisterPolicyScenarios(ScenarioRegistry& registry);  // policy_scenarios.cc
absl::Status RegisterExchangeScenarios(ScenarioRegistry& registry);  // exchange_scenarios.cc
absl::Status RegisterCarbonScenarios(ScenarioRegistry& registry);  // carbon_scenarios.cc

}  // namespace cityos::bench

#endif  // CITYOS_TESTS_BENCH_CITYOS_BENCH_SCENARIO_H_
