// cityos.bus.v1.BusService over an in-process cityos::Bus. A thin adapter: it
// translates proto <-> library (bus_convert.h) and absl::Status <->
// grpc::Status (cityos::ToGrpcStatus) and owns no bus state of its own.
//
//   BusServiceImpl service(bus, [](grpc::ServerContext*) -> absl::StatusOr<Principal> {
//     return Principal::Node("local", "demo-city");
//   });
//   builder.RegisterService(&service);
//
// Streaming:
//  - PublishStream pipelines: each batch goes to Bus::PublishAsync as soon as
//    it is read; answers are written in batch order as batches become durable.
//    At most `publish_window` batches are outstanding (read, not yet
//    answered); past that the service stops reading, which pushes back on the
//    client through gRPC flow control.
//  - Subscribe polls the subscription with a short timeout so that it notices
//    a cancelled call within `poll_interval`. A slow reader blocks only its own
//    handler thread; in live mode the bus then drops events for that
//    subscriber and the next response reports them in `missed`.
//  - Subscribe writes its responses with WireSubscribeResponse
//    (subscribe_wire.h): events read from a stream's log (replay, durable) go
//    out as the bytes stored, without a parse or a re-serialization; live
//    events are serialized. On the wire it is cityos.bus.v1.SubscribeResponse,
//    byte for byte. (The method is registered with a split-streaming handler
//    whose response type is WireSubscribeResponse; the request is the public
//    SubscribeRequest.)
//  - With the synchronous gRPC API every open streaming call holds a server
//    thread; PublishStream holds a second one (its writer) while it runs.
#ifndef CITYOS_SERVICES_BUS_BUS_SERVICE_H_
#define CITYOS_SERVICES_BUS_BUS_SERVICE_H_

#include <grpcpp/grpcpp.h>

#include <atomic>
#include <cstddef>
#include <functional>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "cityos/bus.h"
#include "cityos/bus/v1/bus.grpc.pb.h"
#include "cityos/principal.h"
#include "subscribe_wire.h"

namespace cityos {

// Who is calling. OK with the caller's principal, or UNAUTHENTICATED (or any
// other error, returned to the caller as is). Must be thread-safe.
using PrincipalResolver = std::function<absl::StatusOr<Principal>(grpc::ServerContext*)>;

struct BusServiceOptions {
  // Subscribe: deliveries per response when the request says 0. Default: 256.
  size_t default_max_batch = 256;
  // Subscribe: the largest max_batch honoured. Default: 4096.
  size_t max_batch_limit = 4096;
  // Subscribe: a response is closed once its events reach this many bytes
  // (serialized), so that one response never nears gRPC's 4 MiB message
  // limit. Default: 1 MiB.
  size_t max_response_bytes = 1 << 20;
  // PublishStream: most batches read but not yet answered. Default: 64.
  size_t publish_window = 64;
  // Subscribe: how long one wait for events lasts before the call checks
  // whether it was cancelled. Default: 100 ms.
  absl::Duration poll_interval = absl::Milliseconds(100);
};

class BusServiceImpl final : public bus::v1::BusService::Service {
 public:
  // `bus` is not owned and must outlive the service and every call on it.
  // REQUIRES: bus != nullptr, resolver is set.
  BusServiceImpl(Bus* bus, PrincipalResolver resolver, BusServiceOptions options = {});

  // From now on open Subscribe calls end with UNAVAILABLE within one poll
  // interval and new ones are refused (the node is stopping). Thread-safe.
  void BeginShutdown() { draining_.store(true); }

  grpc::Status Publish(grpc::ServerContext* context, const bus::v1::PublishRequest* request,
                       bus::v1::PublishResponse* response) override;
  grpc::Status PublishStream(
      grpc::ServerContext* context,
      grpc::ServerReaderWriter<bus::v1::PublishStreamResponse, bus::v1::PublishStreamRequest>*
          stream) override;
  grpc::Status Ack(grpc::ServerContext* context, const bus::v1::AckRequest* request,
                   bus::v1::AckResponse* response) override;

  grpc::Status CreateStream(grpc::ServerContext* context,
                            const bus::v1::CreateStreamRequest* request,
                            bus::v1::CreateStreamResponse* response) override;
  grpc::Status ListStreams(grpc::ServerContext* context, const bus::v1::ListStreamsRequest* request,
                           bus::v1::ListStreamsResponse* response) override;
  grpc::Status GetStream(grpc::ServerContext* context, const bus::v1::GetStreamRequest* request,
                         bus::v1::GetStreamResponse* response) override;
  grpc::Status DeleteStream(grpc::ServerContext* context,
                            const bus::v1::DeleteStreamRequest* request,
                            bus::v1::DeleteStreamResponse* response) override;

  grpc::Status CreateConsumer(grpc::ServerContext* context,
                              const bus::v1::CreateConsumerRequest* request,
                              bus::v1::CreateConsumerResponse* response) override;
  grpc::Status ListConsumers(grpc::ServerContext* context,
                             const bus::v1::ListConsumersRequest* request,
                             bus::v1::ListConsumersResponse* response) override;
  grpc::Status GetConsumer(grpc::ServerContext* context, const bus::v1::GetConsumerRequest* request,
                           bus::v1::GetConsumerResponse* response) override;
  grpc::Status DeleteConsumer(grpc::ServerContext* context,
                              const bus::v1::DeleteConsumerRequest* request,
                              bus::v1::DeleteConsumerResponse* response) override;

 private:
  // Subscribe, registered in the constructor in place of the generated handler.
  grpc::Status Subscribe(
      grpc::ServerContext* context,
      grpc::ServerSplitStreamer<bus::v1::SubscribeRequest, WireSubscribeResponse>* stream);

  Bus* const bus_;
  const PrincipalResolver resolver_;
  const BusServiceOptions options_;
  std::atomic<bool> draining_{false};
};

}  // namespace cityos

#endif  // CITYOS_SERVICES_BUS_BUS_SERVICE_H_
