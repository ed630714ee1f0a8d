// cityos-bench: runs the registered benchmark scenarios and prints one JSON
// object per line on stdout (progress goes to stderr).
//
//   cityos-bench                        every scenario
//   cityos-bench --filter 'bus\.durable' a subset (ECMAScript regex, searched)
//   cityos-bench --list                 scenario names
//   cityos-bench --events 100000 --seconds 2
//
// Exit status: 0 when every selected scenario produced a figure, 1 when one
// failed (its line has "value": null and "error"), 2 on bad usage.
#include <signal.h>
#include <stdlib.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <regex>
#include <string>
#include <thread>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "measure.h"
#include "nats_server.h"
#include "scenario.h"

namespace cityos::bench {
namespace {

constexpr char kUsage[] = R"(usage: cityos-bench [options]
  --list               print scenario names and exit
  --filter REGEX       run the scenarios whose name matches (search)
  --events N           events per measurement, at most (default 2000000)
  --seconds S          time per measurement or prefill, at most (default 5)
  --batch N            events per publish call (default 64)
  --window N           durable: batches in flight per publisher (default 2)
  --event-bytes N      serialized event size (default 256)
  --dir PATH           parent of the run's temp dir (default $TMPDIR or /tmp)
  --nats-server PATH   nats-server binary (default: $PATH, /usr/sbin, /usr/bin)
  --no-peers           skip the side-by-side peers (NATS; the canned-bytes
                       server of exchange.query*)
Output: one JSON object per line: name, value, unit, [peer, peer_value,
ratio | peer_error], then scenario fields.
)";

std::string g_root;  // the run's temp dir, for the signal thread

// Blocks SIGINT/SIGTERM/SIGHUP in every thread and handles them on one: stop
// the nats-server, remove the temp dir, exit 130.
void StartSignalThread() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  std::thread([set] {
    int sig = 0;
    sigwait(&set, &sig);
    pid_t nats = RunningNatsServerPid();
    if (nats > 0) kill(nats, SIGKILL);
    std::error_code ec;
    if (!g_root.empty()) std::filesystem::remove_all(g_root, ec);
    std::fprintf(stderr, "cityos-bench: interrupted by signal %d\n", sig);
    _exit(130);
  }).detach();
}

bool ParseU64(const char* s, uint64_t* out) { return absl::SimpleAtoi(s, out); }

int Main(int argc, char** argv) {
  BenchOptions options;
  bool list = false;
  std::string filter;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    auto value = [&]() -> const char* {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "cityos-bench: %s needs a value\n%s", arg.c_str(),
                     kUsage);
        std::exit(2);
      }
      return argv[++i];
    };
    auto number = [&]() -> uint64_t {
      const char* v = value();
      uint64_t n = 0;
      if (!ParseU64(v, &n) || n == 0) {
        std::fprintf(stderr,
                     "cityos-bench: %s wants a positive integer, got %s\n",
                     arg.c_str(), v);
        std::exit(2);
      }
      return n;
    };
    if (arg == "--list") {
      list = true;
    } else if (arg == "--filter") {
      filter = value();
    } else if (arg == "--events") {
      options.events = number();
    } else if (arg == "--seconds") {
      const char* v = value();
      double s = 0;
      if (!absl::SimpleAtod(v, &s) || s <= 0) {
        std::fprintf(
            stderr, "cityos-bench: --seconds wants a positive number, got %s\n",
            v);
        return 2;
      }
      options.max_time = absl::Seconds(s);
    } else if (arg == "--batch") {
      options.batch = number();
    } else if (arg == "--window") {
      options.window = number();
    } else if (arg == "--event-bytes") {
      options.event_bytes = number();
    } else if (arg == "--dir") {
      options.work_parent = value();
    } else if (arg == "--nats-server") {
      options.nats_server = value();
    } else if (arg == "--no-peers") {
      options.peers = false;
    } else if (arg == "--help" || arg == "-h") {
      std::fputs(kUsage, stdout);
      return 0;
    } else {
      std::fprintf(stderr, "cityos-bench: unknown argument %s\n%s", arg.c_str(),
                   kUsage);
      return 2;
    }
  }

  ScenarioRegistry registry;
  if (absl::Status s = RegisterAllScenarios(registry); !s.ok()) {
    std::fprintf(stderr, "cityos-bench: %s\n", s.ToString().c_str());
    return 1;
  }
  std::regex re;
  try {
    re = std::regex(filter.empty() ? std::string(".*") : filter,
                    std::regex::ECMAScript);
  } catch (const std::regex_error& e) {
    std::fprintf(stderr, "cityos-bench: bad --filter %s: %s\n", filter.c_str(),
                 e.what());
    return 2;
  }
  std::vector<const Scenario*> selected;
  for (const Scenario& s : registry.scenarios()) {
    if (std::regex_search(s.name, re)) selected.push_back(&s);
  }
  if (list) {
    for (const Scenario* s : selected) {
      std::printf("%-34s %-10s %s\n", s->name.c_str(), s->unit.c_str(),
                  s->description.c_str());
    }
    return 0;
  }
  if (selected.empty()) {
    std::fprintf(stderr, "cityos-bench: no scenario matches %s\n",
                 filter.c_str());
    return 2;
  }

  if (options.work_parent.empty()) {
    const char* tmp = std::getenv("TMPDIR");
    options.work_parent = (tmp != nullptr && *tmp != '\0') ? tmp : "/tmp";
  }
  std::string tmpl = options.work_parent + "/cityos-bench-XXXXXX";
  if (mkdtemp(tmpl.data()) == nullptr) {
    std::perror(("cityos-bench: mkdtemp " + tmpl).c_str());
    return 1;
  }
  g_root = tmpl;
  StartSignalThread();

  int failures = 0;
  {
    BenchContext ctx(options, tmpl);
    for (const Scenario* s : selected) {
      std::fprintf(stderr, "cityos-bench: running %s\n", s->name.c_str());
      absl::StatusOr<Result> r = s->run(ctx);
      nlohmann::ordered_json line;
      line["name"] = s->name;
      if (r.ok() && r->value.has_value()) {
        line["value"] = *r->value;
      } else {
        line["value"] = nullptr;
        ++failures;
      }
      line["unit"] = s->unit;
      if (!r.ok()) {
        line["error"] = r.status().ToString();
      } else {
        if (!r->peer.empty()) {
          line["peer"] = r->peer;
          if (r->peer_value.has_value()) {
            line["peer_value"] = *r->peer_value;
            line["ratio"] =
                (r->value.has_value() && *r->peer_value != 0)
                    ? nlohmann::ordered_json(
                          std::round(*r->value / *r->peer_value * 1000) / 1000)
                    : nlohmann::ordered_json(nullptr);
          } else {
            line["peer_value"] = nullptr;
            line["ratio"] = nullptr;
            line["peer_error"] = r->peer_error;
          }
        }
        for (auto& [k, v] : r->extra.items()) line[k] = v;
      }
      // Other work on the machine skews every figure: say how busy it was.
      line["loadavg_1m"] = LoadAverage1m();
      std::cout << line.dump() << std::endl;
    }
  }
  g_root.clear();
  return failures == 0 ? 0 : 1;
}

}  // namespace
}  // namespace cityos::bench

int main(int argc, char** argv) {
  // As the node runs (cityosd, the service mains): no absl::Mutex deadlock
  // detection (docs/operations.md). Tests keep it on.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  return cityos::bench::Main(argc, argv);
}
