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
//  - Publish parses each request's events onto protobuf arenas
//    (ArenaPublishRequest, registered as a streamed-unary handler: on the wire
//    the generated unary method, byte for byte) and hands them to
//    Bus::PublishShared without copying them: each event's shared_ptr aliases
//    its arena, which lives until the bus and every subscriber have released
//    the last event on it. One arena holds the events of at most
//    ArenaPublishRequest::kChunkBytes (32 KiB) of the request's serialized
//    events (one larger event gets an arena alone), and its blocks are sized
//    from those events (ArenaPublishRequest::FirstBlockBytes, at most 64 KiB
//    a block). An event a slow live subscriber keeps therefore keeps alive
//    its whole arena: every event that shares it (and their strings, which
//    protobuf 3.21 mallocs outside the arena) until the last is released;
//    for a request of one ~300-byte event that is about 1 KiB of arena, not
//    a 64 KiB block.
//    The publisher is set on the events (the caller's SPIFFE id, whatever
//    the client sent) before they are shared; the bus validates, authorizes
//    and stores them as for Publish, with one difference: the bus checks
//    max_event_bytes on the event as stamped (the caller's SPIFFE id
//    counted), whereas Bus::Publish and PublishStream check it on the event
//    as sent and stamp afterwards (Bus::PublishShared requires shared events
//    to carry their publisher already).
//  - With the synchronous gRPC API every open streaming call holds a server
//    thread; PublishStream holds a second one (its writer) while it runs.
#ifndef CITYOS_SERVICES_BUS_BUS_SERVICE_H_
#define CITYOS_SERVICES_BUS_BUS_SERVICE_H_

#include <grpcpp/grpcpp.h>

#include <atomic>
#include <cstddef>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "cityos/bus.h"
#include "cityos/bus/v1/bus.grpc.pb.h"
#include "cityos/event/v1/event.pb.h"
#include "cityos/principal.h"
#include "subscribe_wire.h"

namespace cityos {

// A cityos.bus.v1.PublishRequest parsed onto arenas that its events share:
// the request type of BusServiceImpl's Publish handler. Consecutive events go
// on one arena until it holds kChunkBytes of serialized events, and the
// arena's first block is sized from them (FirstBlockBytes); each event is a
// std::shared_ptr aliasing its arena (the arena lives until the last event on
// it is released).
struct ArenaPublishRequest {
  // Serialized events per arena (an event larger than this gets one alone).
  static constexpr size_t kChunkBytes = 32 << 10;
  // The first block of an arena whose events are `event_bytes` serialized,
  // `event_count` of them: event_bytes / 2 + kArenaBytesPerEvent *
  // event_count + kArenaOverheadBytes, at most 64 KiB (2 * kChunkBytes, also
  // the largest further block). A parsed Event takes about 600 arena bytes
  // whatever its size (protobuf 3.21 mallocs the buffers of strings longer
  // than 15 bytes outside the arena); the half byte per serialized byte
  // covers extensions and other nested fields. When the estimate falls short
  // the arena adds a block (twice the last, at most 64 KiB).
  static constexpr size_t kArenaBytesPerEvent = 640;
  static constexpr size_t kArenaOverheadBytes = 256;
  static size_t FirstBlockBytes(size_t event_bytes, size_t event_count);

  // In request order.
  std::vector<std::shared_ptr<event::v1::Event>> events;
  // Why the bytes could not be parsed (empty when they could).
  std::string error;

  // Parses `bytes`, a serialized PublishRequest, as protobuf would (unknown
  // fields skipped; a field 1 of another wire type is an unknown field). False,
  // with `error` naming the bad event index or byte offset, if they are not a
  // valid PublishRequest.
  bool Parse(std::string_view bytes);
  bool Parse(grpc::ByteBuffer* bytes);
  // The request's wire form again (field 1 per event).
  std::string Serialize() const;
};

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
  // Publish, registered in the constructor in place of the generated handler:
  // the request parsed on its arena, the events published shared.
  grpc::Status PublishOnArena(
      grpc::ServerContext* context,
      grpc::ServerUnaryStreamer<ArenaPublishRequest, bus::v1::PublishResponse>* stream);

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

namespace grpc {

// Lets the Publish handler read its request as an ArenaPublishRequest (only
// the server side reads this type; clients write cityos.bus.v1.PublishRequest).
template <>
class SerializationTraits<cityos::ArenaPublishRequest> {
 public:
  static Status Serialize(const cityos::ArenaPublishRequest& msg, ByteBuffer* bb,
                          bool* own_buffer);
  static Status Deserialize(ByteBuffer* bb, cityos::ArenaPublishRequest* msg);
};

}  // namespace grpc

#endif  // CITYOS_SERVICES_BUS_BUS_SERVICE_H_
