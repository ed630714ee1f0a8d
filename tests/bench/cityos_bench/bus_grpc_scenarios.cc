// gRPC bus scenarios: cityos.bus.v1.BusService served in this process
// (BusServiceImpl over a Bus, on 127.0.0.1:<free port>) and called through a
// client stub over loopback TCP, so every event crosses the real gRPC stack
// (HTTP/2 framing, protobuf (de)serialization, the kernel's loopback) in both
// directions.
#include <grpcpp/grpcpp.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "bus_common.h"
#include "bus_service.h"
#include "cityos/bus.h"
#include "cityos/bus/v1/bus.grpc.pb.h"
#include "cityos/bus/v1/bus_wire.pb.h"
#include "measure.h"
#include "nats_peer.h"
#include "nats_server.h"
#include "scenario.h"

namespace cityos::bench {
namespace {

using event::v1::Event;

// PublishStream: batches the client keeps unanswered.
constexpr size_t kStreamWindow = 16;
// Subscribe: deliveries per response asked for.
constexpr uint32_t kSubscribeMaxBatch = 1024;

// The service on a loopback port, and a stub to it.
class LoopbackService {
 public:
  static absl::StatusOr<std::unique_ptr<LoopbackService>> Start(Bus* bus) {
    auto s = std::unique_ptr<LoopbackService>(new LoopbackService());
    s->service_ = std::make_unique<BusServiceImpl>(
        bus, [](grpc::ServerContext*) -> absl::StatusOr<Principal> {
          return BenchPrincipal();
        });
    grpc::ServerBuilder builder;
    int port = 0;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(),
                             &port);
    builder.RegisterService(s->service_.get());
    s->server_ = builder.BuildAndStart();
    if (s->server_ == nullptr || port == 0) {
      return absl::UnavailableError(
          "could not start the gRPC server on 127.0.0.1:0");
    }
    s->channel_ = grpc::CreateChannel(absl::StrCat("127.0.0.1:", port),
                                      grpc::InsecureChannelCredentials());
    s->stub_ = bus::v1::BusService::NewStub(s->channel_);
    return s;
  }
  ~LoopbackService() {
    stub_.reset();
    channel_.reset();
    if (server_ != nullptr)
      server_->Shutdown(std::chrono::system_clock::now() +
                        std::chrono::seconds(5));
  }
  bus::v1::BusService::Stub& stub() { return *stub_; }
  grpc::ChannelInterface* channel() { return channel_.get(); }

 private:
  LoopbackService() = default;
  std::unique_ptr<BusServiceImpl> service_;
  std::unique_ptr<grpc::Server> server_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<bus::v1::BusService::Stub> stub_;
};

absl::StatusOr<Result> RunPublishStream(BenchContext& ctx) {
  const BenchOptions& o = ctx.options();
  const std::string subject = "bench.grpc.reading.zone1";
  absl::StatusOr<Event> event = ctx.SampleEvent(subject);
  if (!event.ok()) return event.status();
  absl::StatusOr<std::unique_ptr<ScopedBus>> scoped =
      ScopedBus::Open(ctx, "grpc-publish");
  if (!scoped.ok()) return scoped.status();
  Bus* bus = (*scoped)->bus();
  absl::StatusOr<StreamInfo> stream =
      bus->CreateStream(BenchPrincipal(), {.name = "bench",
                                           .subjects = {"bench.grpc.>"},
                                           .durability = Durability::kFsync});
  if (!stream.ok()) return stream.status();
  absl::StatusOr<std::unique_ptr<LoopbackService>> service =
      LoopbackService::Start(bus);
  if (!service.ok()) return service.status();

  const uint64_t max_batches = (o.events + o.batch - 1) / o.batch;
  std::vector<int64_t> sent_at(max_batches, 0);
  LatencySamples latency(max_batches);
  Window window(kStreamWindow);
  std::atomic<uint64_t> acked{0};
  std::atomic<int64_t> last_ack{0};
  std::string batch_error;
  std::atomic<bool> reader_done{false};

  grpc::ClientContext call;
  call.set_deadline(std::chrono::system_clock::now() +
                    absl::ToChronoSeconds(o.max_time + absl::Seconds(120)));
  auto rw = (*service)->stub().PublishStream(&call);

  std::thread reader([&] {
    bus::v1::PublishStreamResponse resp;
    while (rw->Read(&resp)) {
      const int64_t now = NowNanos();
      if (resp.error_code() != 0) {
        if (batch_error.empty()) {
          batch_error =
              absl::StrCat("batch ", resp.batch_id(), ": code ",
                           resp.error_code(), " ", resp.error_message());
        }
      } else {
        acked += static_cast<uint64_t>(resp.results_size());
        if (resp.batch_id() < sent_at.size())
          latency.Add(now - sent_at[resp.batch_id()]);
      }
      last_ack = now;
      window.Release();
    }
    // The stream ended: unblock the writer for good.
    reader_done = true;
    for (size_t i = 0; i < kStreamWindow; ++i) window.Release();
  });

  bus::v1::PublishStreamRequest req;
  const int64_t start = NowNanos();
  const int64_t stop_at = start + absl::ToInt64Nanoseconds(o.max_time);
  uint64_t sent = 0;
  bool write_failed = false;
  for (uint64_t b = 0; b < max_batches && NowNanos() < stop_at; ++b) {
    const size_t n =
        static_cast<size_t>(std::min<uint64_t>(o.batch, o.events - sent));
    if (static_cast<size_t>(req.events_size()) != n) {
      req.clear_events();
      for (size_t i = 0; i < n; ++i) *req.add_events() = *event;
    }
    req.set_batch_id(b);
    window.Acquire();
    if (reader_done.load()) break;
    sent_at[b] = NowNanos();
    if (!rw->Write(req)) {
      write_failed = true;
      window.Release();
      break;
    }
    sent += n;
  }
  rw->WritesDone();
  reader.join();
  grpc::Status status = rw->Finish();
  if (!status.ok()) {
    return absl::UnavailableError(absl::StrCat("PublishStream ended with ",
                                               status.error_code(), ": ",
                                               status.error_message()));
  }
  if (write_failed)
    return absl::UnavailableError("PublishStream: a write failed");
  if (!batch_error.empty()) return absl::InternalError(batch_error);
  if (acked.load() != sent) {
    return absl::InternalError(absl::StrCat("PublishStream: ", sent,
                                            " events sent, ", acked.load(),
                                            " acknowledged"));
  }
  latency.Finish();
  const int64_t nanos = last_ack.load() - start;

  Result r;
  r.value = Round(Rate(acked.load(), nanos), 0);
  nlohmann::ordered_json peer_fields = nlohmann::ordered_json::object();
  const int64_t in_flight = static_cast<int64_t>(kStreamWindow * o.batch);
  absl::StatusOr<double> peer_value = [&]() -> absl::StatusOr<double> {
    absl::StatusOr<NatsServer*> nats = ctx.Nats();
    if (!nats.ok()) return nats.status();
    const std::string url = (*nats)->url();
    const std::string payload = event->SerializeAsString();
    absl::StatusOr<JsPublishFigures> js =
        JetStreamPublish(url, "BENCH_PUBLISH", "bench.nats.publish", payload,
                         in_flight, o.events, o.max_time);
    JetStreamDeleteStream(url, "BENCH_PUBLISH");
    if (!js.ok()) return js.status();
    if (js->errors > 0) {
      return absl::InternalError(
          absl::StrCat("JetStream: ", js->errors, " publish errors"));
    }
    peer_fields["peer_events"] = js->acked;
    js->latency->AddTo(peer_fields, "peer_");
    peer_fields["peer_max_pending"] = in_flight;
    peer_fields["peer_payload_bytes"] = payload.size();
    return Round(Rate(js->acked, js->nanos), 0);
  }();
  r.SetPeer("nats-jetstream-file-async-publish", peer_value);
  latency.AddTo(r.extra);  // per batch = per event of the batch
  r.extra["events"] = acked.load();
  r.extra["batch"] = o.batch;
  r.extra["window_batches"] = kStreamWindow;
  r.extra["durability"] = "fsync";
  r.extra["event_bytes"] = o.event_bytes;
  r.extra["seconds"] = Round(static_cast<double>(nanos) / 1e9, 3);
  for (auto& [k, v] : peer_fields.items()) r.extra[k] = v;
  return r;
}

// Subscribe in replay mode from the earliest. The client reads the public
// cityos.bus.v1.SubscribeResponse (every event parsed, as any client of the
// public API), or, with `bytes_client`, the wire-compatible
// SubscribeResponseBytes (bus_wire.proto: each event left serialized, as a
// client that forwards or stores events would).
absl::StatusOr<Result> RunSubscribe(BenchContext& ctx, bool bytes_client) {
  const BenchOptions& o = ctx.options();
  const std::string subject = "bench.grpcsub.reading.zone1";
  absl::StatusOr<Event> event = ctx.SampleEvent(subject);
  if (!event.ok()) return event.status();
  absl::StatusOr<std::unique_ptr<ScopedBus>> scoped =
      ScopedBus::Open(ctx, "grpc-subscribe");
  if (!scoped.ok()) return scoped.status();
  Bus* bus = (*scoped)->bus();
  absl::StatusOr<StreamInfo> stream =
      bus->CreateStream(BenchPrincipal(), {.name = "bench",
                                           .subjects = {"bench.grpcsub.>"},
                                           .durability = Durability::kNone});
  if (!stream.ok()) return stream.status();
  absl::StatusOr<uint64_t> stored = Prefill(ctx, *bus, *event, o.events);
  if (!stored.ok()) return stored.status();
  absl::StatusOr<std::unique_ptr<LoopbackService>> service =
      LoopbackService::Start(bus);
  if (!service.ok()) return service.status();

  bus::v1::SubscribeRequest req;
  req.set_stream("bench");
  req.mutable_start()->set_kind(bus::v1::StartPosition::KIND_EARLIEST);
  req.set_max_batch(kSubscribeMaxBatch);
  grpc::ClientContext call;
  call.set_deadline(std::chrono::system_clock::now() +
                    absl::ToChronoSeconds(o.max_time + absl::Seconds(120)));
  uint64_t delivered = 0;
  uint64_t responses = 0;
  uint64_t last_sequence = 0;
  uint64_t event_bytes = 0;
  bool in_order = true;
  grpc::Status status;
  const double cpu0 = ProcessCpuSeconds();
  const double thread_cpu0 = ThreadCpuSeconds();
  const int64_t start = NowNanos();
  if (!bytes_client) {
    auto reader = (*service)->stub().Subscribe(&call, req);
    bus::v1::SubscribeResponse resp;
    while (delivered < *stored && reader->Read(&resp)) {
      ++responses;
      for (const bus::v1::Delivery& d : resp.deliveries()) {
        in_order = in_order && d.sequence() == last_sequence + 1;
        last_sequence = d.sequence();
        event_bytes += d.event().binary_data().size();
      }
      delivered += static_cast<uint64_t>(resp.deliveries_size());
    }
    call.TryCancel();
    status = reader->Finish();
  } else {
    // The generated stub's call, with the wire-compatible response type.
    const grpc::internal::RpcMethod method(
        "/cityos.bus.v1.BusService/Subscribe",
        grpc::internal::RpcMethod::SERVER_STREAMING);
    std::unique_ptr<grpc::ClientReader<bus::v1::SubscribeResponseBytes>> reader(
        grpc::internal::ClientReaderFactory<bus::v1::SubscribeResponseBytes>::Create(
            (*service)->channel(), method, &call, req));
    bus::v1::SubscribeResponseBytes resp;
    while (delivered < *stored && reader->Read(&resp)) {
      ++responses;
      for (const bus::v1::DeliveryBytes& d : resp.deliveries()) {
        in_order = in_order && d.sequence() == last_sequence + 1;
        last_sequence = d.sequence();
        event_bytes += d.event().size();
      }
      delivered += static_cast<uint64_t>(resp.deliveries_size());
    }
    call.TryCancel();
    status = reader->Finish();
  }
  const int64_t nanos = NowNanos() - start;
  const double cpu = ProcessCpuSeconds() - cpu0;
  const double client_cpu = ThreadCpuSeconds() - thread_cpu0;
  if (delivered < *stored) {
    return absl::UnavailableError(absl::StrCat(
        "Subscribe delivered ", delivered, " of ", *stored, " and ended with ",
        status.error_code(), ": ", status.error_message()));
  }
  if (!in_order)
    return absl::InternalError("Subscribe delivered out of sequence order");

  Result r;
  r.value = Round(Rate(delivered, nanos), 0);
  r.extra["mode"] = "replay from earliest";
  r.extra["client"] =
      bytes_client
          ? "reads bus.v1.SubscribeResponseBytes (wire-compatible; events left "
            "serialized, their sizes summed)"
          : "reads bus.v1.SubscribeResponse (every event parsed; binary_data "
            "sizes summed)";
  r.extra["events"] = delivered;
  r.extra["responses"] = responses;
  r.extra["max_batch"] = kSubscribeMaxBatch;
  r.extra["event_bytes"] = o.event_bytes;
  r.extra["client_bytes"] = event_bytes;
  r.extra["seconds"] = Round(static_cast<double>(nanos) / 1e9, 3);
  // Server and client share this process: the process's CPU per event, the
  // client thread's share, and the cores the whole call kept busy.
  r.extra["cpu_us_per_event"] =
      Round(cpu * 1e6 / static_cast<double>(delivered), 3);
  r.extra["client_cpu_us_per_event"] =
      Round(client_cpu * 1e6 / static_cast<double>(delivered), 3);
  r.extra["cores_used"] = Round(cpu * 1e9 / static_cast<double>(nanos), 2);
  return r;
}

}  // namespace

absl::Status RegisterBusGrpcScenarios(ScenarioRegistry& registry) {
  absl::Status s =
      registry.Add({.name = "bus.grpc.publish_stream.fsync",
                    .unit = "events/s",
                    .description = "gRPC PublishStream over loopback into an "
                                   "fsync stream (peer: JetStream "
                                   "file-storage js_PublishAsync)",
                    .run = RunPublishStream});
  if (!s.ok()) return s;
  s = registry.Add(
      {.name = "bus.grpc.subscribe",
       .unit = "events/s",
       .description = "gRPC Subscribe over loopback, replay of stored events; "
                      "the client parses every event",
       .run = [](BenchContext& ctx) { return RunSubscribe(ctx, false); }});
  if (!s.ok()) return s;
  return registry.Add(
      {.name = "bus.grpc.subscribe.bytes",
       .unit = "events/s",
       .description = "as bus.grpc.subscribe, the client reading the "
                      "wire-compatible SubscribeResponseBytes (events left "
                      "serialized)",
       .run = [](BenchContext& ctx) { return RunSubscribe(ctx, true); }});
}

}  // namespace cityos::bench
