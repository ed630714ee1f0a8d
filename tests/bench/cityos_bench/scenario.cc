#include "scenario.h"

#include <filesystem>
#include <utility>

#include "absl/strings/str_cat.h"
#include "nats_peer.h"
#include "nats_server.h"

namespace cityos::bench {

void Result::SetPeer(std::string_view name,
                     const absl::StatusOr<double>& figure) {
  peer = std::string(name);
  if (figure.ok()) {
    peer_value = *figure;
    peer_error.clear();
  } else {
    peer_value.reset();
    peer_error = figure.status().ToString();
  }
}

absl::Status ScenarioRegistry::Add(Scenario scenario) {
  if (scenario.name.empty() || !scenario.run) {
    return absl::InvalidArgumentError(
        "a scenario needs a name and a run function");
  }
  for (const Scenario& s : scenarios_) {
    if (s.name == scenario.name) {
      return absl::AlreadyExistsError(
          absl::StrCat("scenario ", scenario.name, " registered twice"));
    }
  }
  scenarios_.push_back(std::move(scenario));
  return absl::OkStatus();
}

BenchContext::BenchContext(BenchOptions options, std::string root)
    : options_(std::move(options)), root_(std::move(root)) {}

BenchContext::~BenchContext() {
  StopNats();
  std::error_code ec;
  std::filesystem::remove_all(root_, ec);
}

absl::StatusOr<std::string> BenchContext::NewDir(std::string_view name) {
  std::string dir =
      absl::StrCat(root_, "/", std::string(name), "-", next_dir_++);
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec)
    return absl::InternalError(absl::StrCat("mkdir ", dir, ": ", ec.message()));
  return dir;
}

void BenchContext::RemoveDir(const std::string& dir) {
  std::error_code ec;
  std::filesystem::remove_all(dir, ec);
}

absl::StatusOr<NatsServer*> BenchContext::Nats() {
  if (!options_.peers)
    return absl::FailedPreconditionError("peers disabled (--no-peers)");
  if (nats_ != nullptr) return nats_.get();
  if (nats_error_.has_value()) return *nats_error_;
  absl::StatusOr<std::string> binary =
      NatsServer::FindBinary(options_.nats_server);
  if (!binary.ok()) {
    nats_error_ = binary.status();
    return *nats_error_;
  }
  absl::StatusOr<std::string> dir = NewDir("nats-server");
  if (!dir.ok()) return dir.status();
  absl::StatusOr<std::unique_ptr<NatsServer>> server =
      NatsServer::Start(*binary, *dir);
  if (!server.ok()) {
    nats_error_ = server.status();
    return *nats_error_;
  }
  nats_ = std::move(*server);
  return nats_.get();
}

void BenchContext::StopNats() {
  if (nats_ != nullptr) {
    nats_.reset();
    CloseNatsLibrary();
  }
}

absl::StatusOr<event::v1::Event> BenchContext::SampleEvent(
    const std::string& subject) {
  auto it = samples_.find(subject);
  if (it != samples_.end()) return it->second;
  const size_t target = options_.event_bytes;
  // Grow the opaque payload until the serialized envelope has the target size
  // (the length prefix of the payload field may grow by a byte on the way).
  std::string payload;
  for (int attempt = 0; attempt < 8; ++attempt) {
    absl::StatusOr<event::v1::Event> ev =
        EventBuilder()
            .Source("//bench.city/s-1")
            .Type("bench.v1.Reading")
            .Subject(subject)
            .Classification(event::v1::CLASSIFICATION_INTERNAL)
            .Owner("bench-org")
            .Region("CN-ZJ-QZ-KC")
            .Time(absl::FromUnixSeconds(1700000000))
            .BinaryData("application/octet-stream", payload)
            // Stored and delivered events carry their publisher; count it in
            // the size (and it lets scenarios publish the event shared).
            .Publisher(kBenchPublisher)
            .Build();
    if (!ev.ok()) return ev.status();
    size_t size = ev->ByteSizeLong();
    if (size == target) {
      samples_.emplace(subject, *ev);
      return *ev;
    }
    if (size > target && payload.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("the smallest sample event on ", subject, " is ", size,
                       " bytes, over --event-bytes ", target));
    }
    size_t want = payload.size() + target - std::min(size, target);
    if (size > target) want = payload.size() - (size - target);
    payload.assign(want, 'x');
  }
  return absl::InternalError("could not size the sample event");
}

absl::Status RegisterAllScenarios(ScenarioRegistry& registry) {
  if (absl::Status s = RegisterBusScenarios(registry); !s.ok()) return s;
  if (absl::Status s = RegisterBusGrpcScenarios(registry); !s.ok()) return s;
  if (absl::Status s = RegisterPolicyScenarios(registry); !s.ok()) return s;
  if (absl::Status s = RegisterExchangeScenarios(registry); !s.ok()) return s;
#if defined(CITYOS_BENCH_CARBON)
  if (absl::Status s = RegisterCarbonScenarios(registry); !s.ok()) return s;
#endif
  return absl::OkStatus();
}

}  // namespace cityos::bench
