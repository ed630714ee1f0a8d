// city-sim: the demo-city simulator as its own program. Modes:
//   json        (default) print the events of [--from, --from + --duration)
//               as JSON lines {"org","service","district","event"}
//   grpc        publish them to a node's cityos.bus.v1.BusService over mTLS
//               (--address --ca --cert --key [--server-id] [--trust-domain]);
//               every event is published as the certificate's principal, so
//               --org keeps only the events of one organisation (run one
//               process per org with that org's certificate)
//   accounts    print the carbon accounts to create (JSON lines, Account)
//   consenting  print the consenting citizens' data subjects, one per line
// --realtime paces json/grpc with SimRunner (--speed x real time, never past
// now) until SIGINT/SIGTERM instead of generating one window at once.
#include <google/protobuf/util/json_util.h>
#include <grpcpp/grpcpp.h>
#include <signal.h>

#include <CLI/CLI.hpp>
#include <atomic>
#include <cstdio>
#include <iostream>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "absl/time/clock.h"
#include "cityos/bus/v1/bus.grpc.pb.h"
#include "cityos/clock.h"
#include "cityos/config.h"
#include "cityos/tls.h"
#include "sim.h"

namespace {

std::atomic<bool> g_stop{false};
void OnSignal(int) { g_stop.store(true); }

std::string Json(const google::protobuf::Message& m) {
  google::protobuf::util::JsonPrintOptions opts;
  opts.preserve_proto_field_names = true;
  std::string out;
  if (!google::protobuf::util::MessageToJsonString(m, &out, opts).ok()) return "{}";
  return out;
}

int Fail(const std::string& what) {
  std::fprintf(stderr, "city-sim: %s\n", what.c_str());
  return 2;
}

// Writes or publishes one batch; false on a publish error.
class Output {
 public:
  virtual ~Output() = default;
  virtual bool Emit(std::vector<cityos::citysim::SimEvent> events) = 0;
};

class JsonOutput final : public Output {
 public:
  explicit JsonOutput(std::string org) : org_(std::move(org)) {}
  bool Emit(std::vector<cityos::citysim::SimEvent> events) override {
    for (const auto& e : events) {
      if (!org_.empty() && e.org != org_) continue;
      nlohmann::json line = {{"org", e.org}, {"service", e.service}, {"district", e.district}};
      line["event"] = nlohmann::json::parse(Json(e.event));
      std::cout << line.dump() << "\n";
    }
    std::cout.flush();
    return true;
  }

 private:
  std::string org_;
};

class GrpcOutput final : public Output {
 public:
  GrpcOutput(std::unique_ptr<cityos::bus::v1::BusService::Stub> stub, std::string org)
      : stub_(std::move(stub)), org_(std::move(org)) {}
  bool Emit(std::vector<cityos::citysim::SimEvent> events) override {
    cityos::bus::v1::PublishRequest req;
    auto flush = [&]() {
      if (req.events_size() == 0) return true;
      grpc::ClientContext ctx;
      ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(30)));
      cityos::bus::v1::PublishResponse resp;
      grpc::Status s = stub_->Publish(&ctx, req, &resp);
      if (!s.ok()) {
        std::fprintf(stderr, "city-sim: publish of %d events failed: %s\n", req.events_size(),
                     s.error_message().c_str());
        return false;
      }
      published_ += req.events_size();
      req.clear_events();
      return true;
    };
    for (auto& e : events) {
      if (!org_.empty() && e.org != org_) continue;
      *req.add_events() = std::move(e.event);
      if (req.events_size() >= 500 && !flush()) return false;
    }
    return flush();
  }
  int64_t published() const { return published_; }

 private:
  std::unique_ptr<cityos::bus::v1::BusService::Stub> stub_;
  std::string org_;
  int64_t published_ = 0;
};

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"city-sim: the demo-city simulator (events for the carbon account)"};
  std::string config_path, mode = "json", from_text, duration_text = "1h", org;
  std::string address, ca, cert, key, server_id, trust_domain = "local";
  int64_t seed = -1;
  double speed = 0;
  bool realtime = false;
  app.add_option("--config", config_path, "YAML file with the simulator's settings (plug-in keys)");
  app.add_option("--mode", mode, "json | grpc | accounts | consenting")
      ->check(CLI::IsMember({"json", "grpc", "accounts", "consenting"}));
  app.add_option("--seed", seed, "Overrides the config's seed");
  app.add_option("--from", from_text,
                 "Start of simulated time, RFC 3339 (default: now - duration)");
  app.add_option("--duration", duration_text, "Simulated time to generate (default 1h)");
  app.add_flag("--realtime", realtime, "Pace the simulation against the real clock until stopped");
  app.add_option("--speed", speed, "Simulated seconds per real second with --realtime");
  app.add_option("--org", org, "Only the events of this publishing org");
  app.add_option("--address", address, "grpc: host:port of the node");
  app.add_option("--ca", ca, "grpc: CA bundle (PEM)");
  app.add_option("--cert", cert, "grpc: client certificate (PEM)");
  app.add_option("--key", key, "grpc: client key (PEM)");
  app.add_option("--server-id", server_id, "grpc: expected SPIFFE id of the node");
  app.add_option("--trust-domain", trust_domain, "grpc: SPIFFE trust domain (default local)");
  CLI11_PARSE(app, argc, argv);

  absl::StatusOr<cityos::citysim::SimConfig> config = cityos::citysim::DefaultQuzhouConfig();
  if (!config_path.empty()) {
    auto node = cityos::ConfigNode::LoadFile(config_path);
    if (!node.ok()) return Fail(std::string(node.status().message()));
    config = cityos::citysim::ParseSimConfig(
        *node, {"backfill", "tick", "backfill_value_added", "meters_via_mqtt", "mqtt", "batch"});
    if (!config.ok()) return Fail(std::string(config.status().message()));
  }
  if (seed >= 0) config->seed = static_cast<uint64_t>(seed);
  if (speed > 0) config->rates.speed = speed;
  auto sim = cityos::citysim::CitySim::Create(*config);
  if (!sim.ok()) return Fail(std::string(sim.status().message()));

  if (mode == "accounts") {
    for (const auto& a : (*sim)->Accounts()) std::cout << Json(a) << "\n";
    return 0;
  }
  if (mode == "consenting") {
    for (const auto& s : (*sim)->ConsentingSubjects()) std::cout << s << "\n";
    return 0;
  }

  absl::Duration duration;
  if (!absl::ParseDuration(duration_text, &duration) || duration <= absl::ZeroDuration()) {
    return Fail("--duration: expected a positive duration such as 1h or 90m");
  }
  absl::Time from = absl::Now() - duration;
  if (!from_text.empty()) {
    std::string err;
    if (!absl::ParseTime(absl::RFC3339_full, from_text, &from, &err)) {
      return Fail("--from: not an RFC 3339 time: " + err);
    }
  }

  std::unique_ptr<Output> out;
  GrpcOutput* grpc_out = nullptr;
  if (mode == "grpc") {
    if (address.empty() || ca.empty() || cert.empty() || key.empty()) {
      return Fail("grpc mode needs --address, --ca, --cert and --key");
    }
    cityos::TlsConfig tls{
        .ca_file = ca, .cert_file = cert, .key_file = key, .trust_domain = trust_domain};
    auto creds = cityos::MakeChannelCredentials(
        tls, server_id.empty() ? std::nullopt : std::optional<std::string>(server_id));
    if (!creds.ok()) return Fail(std::string(creds.status().message()));
    auto stub = cityos::bus::v1::BusService::NewStub(grpc::CreateChannel(address, *creds));
    auto g = std::make_unique<GrpcOutput>(std::move(stub), org);
    grpc_out = g.get();
    out = std::move(g);
  } else {
    out = std::make_unique<JsonOutput>(org);
  }

  if (!realtime) {
    if (!out->Emit((*sim)->Generate(from, from + duration))) return 1;
  } else {
    signal(SIGINT, OnSignal);
    signal(SIGTERM, OnSignal);
    cityos::citysim::SimRunner runner(sim->get(), cityos::Clock::Real(), from, config->rates.speed);
    while (!g_stop.load()) {
      if (!out->Emit(runner.Step())) return 1;
      std::this_thread::sleep_for(std::chrono::milliseconds(500));
    }
  }
  if (grpc_out != nullptr) {
    std::fprintf(stderr, "city-sim: published %lld events\n",
                 static_cast<long long>(grpc_out->published()));
  }
  return 0;
}
