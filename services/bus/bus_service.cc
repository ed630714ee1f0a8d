#include "bus_service.h"

#include <algorithm>
#include <deque>
#include <iterator>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "google/protobuf/arena.h"
#include "bus_convert.h"
#include "cityos/grpc_util.h"
#include "cityos/wire.h"

namespace cityos {
namespace {

using bus::v1::PublishStreamRequest;
using bus::v1::PublishStreamResponse;

// Every bad request is INVALID_ARGUMENT naming the field.
grpc::Status Invalid(std::string message) {
  return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, std::move(message));
}

// Takes the events out of a request we own (no copy).
std::vector<event::v1::Event> TakeEvents(
    google::protobuf::RepeatedPtrField<event::v1::Event>* events) {
  return std::vector<event::v1::Event>(std::make_move_iterator(events->begin()),
                                       std::make_move_iterator(events->end()));
}

// The batches of one PublishStream call: read on the handler thread, published
// with PublishAsync, answered in read order by a writer thread as they
// complete. Completion callbacks run on the bus's threads and never block on
// the network: they only fill in their slot and wake the writer.
class PublishPipeline {
 public:
  using Stream = grpc::ServerReaderWriter<PublishStreamResponse, PublishStreamRequest>;

  PublishPipeline(Bus* bus, Principal who, Stream* stream, size_t window)
      : bus_(bus), who_(std::move(who)), stream_(stream), window_(std::max<size_t>(window, 1)) {}

  // Reads and publishes until the client half-closes or the call breaks, then
  // waits until every batch read has been answered (or the call is gone).
  void Run() {
    std::thread writer([this] { WriteLoop(); });
    PublishStreamRequest request;
    while (stream_->Read(&request)) {
      Slot* slot = nullptr;
      {
        absl::MutexLock lock(&mu_);
        auto room = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
          return queue_.size() < window_ || write_failed_;
        };
        mu_.Await(absl::Condition(&room));
        if (write_failed_) break;
        queue_.push_back(std::make_unique<Slot>());
        slot = queue_.back().get();
      }
      slot->response.set_batch_id(request.batch_id());
      if (request.events().empty()) {
        Complete(slot, absl::InvalidArgumentError("events: at least one event is required"));
        continue;
      }
      bus_->PublishAsync(who_, TakeEvents(request.mutable_events()),
                         [this, slot](absl::StatusOr<std::vector<PublishResult>> results) {
                           Complete(slot, std::move(results));
                         });
    }
    {
      absl::MutexLock lock(&mu_);
      reading_done_ = true;
    }
    writer.join();
  }

 private:
  struct Slot {
    PublishStreamResponse response;
    bool done = false;  // guarded by PublishPipeline::mu_
  };

  void Complete(Slot* slot, absl::StatusOr<std::vector<PublishResult>> results) {
    // Only this thread touches the response until `done` is set.
    if (results.ok()) {
      for (const PublishResult& r : *results) {
        PublishResultToProto(r, slot->response.add_results());
      }
    } else {
      slot->response.set_error_code(static_cast<int32_t>(results.status().code()));
      slot->response.set_error_message(std::string(results.status().message()));
    }
    absl::MutexLock lock(&mu_);
    slot->done = true;
  }

  void WriteLoop() {
    while (true) {
      std::unique_ptr<Slot> slot;
      bool failed;
      {
        absl::MutexLock lock(&mu_);
        auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
          return (!queue_.empty() && queue_.front()->done) || (reading_done_ && queue_.empty());
        };
        mu_.Await(absl::Condition(&ready));
        if (queue_.empty()) return;  // reading done, everything answered
        slot = std::move(queue_.front());
        queue_.pop_front();
        failed = write_failed_;
      }
      if (!failed && !stream_->Write(slot->response)) {
        absl::MutexLock lock(&mu_);
        write_failed_ = true;  // the client is gone; keep draining completions
      }
    }
  }

  Bus* const bus_;
  const Principal who_;
  Stream* const stream_;
  const size_t window_;

  absl::Mutex mu_;
  // Batches read and not yet written, in read order.
  std::deque<std::unique_ptr<Slot>> queue_ ABSL_GUARDED_BY(mu_);
  bool reading_done_ ABSL_GUARDED_BY(mu_) = false;
  bool write_failed_ ABSL_GUARDED_BY(mu_) = false;
};

// Arena blocks. An arena's first block is sized from the events that go on
// it (FirstBlockBytes) and is at most kArenaBlock, below malloc's mmap
// threshold; further blocks (when the estimate falls short) are at most
// kArenaBlock too. So an arena holding one ~300-byte event is about 1 KiB,
// not kArenaBlock: the memory an event keeps alive is proportional to the
// events that share its arena.
constexpr size_t kArenaBlock = 2 * ArenaPublishRequest::kChunkBytes;

}  // namespace

size_t ArenaPublishRequest::FirstBlockBytes(size_t event_bytes, size_t event_count) {
  return std::min(kArenaBlock, event_bytes / 2 + kArenaBytesPerEvent * event_count +
                                   kArenaOverheadBytes);
}

bool ArenaPublishRequest::Parse(std::string_view bytes) {
  events.clear();
  error.clear();
  // First the events' bytes (unknown fields skipped), so that each arena's
  // first block can be sized from the events that go on it.
  std::vector<std::string_view> values;
  wire::Reader in(bytes);
  while (!in.done()) {
    const size_t offset = static_cast<size_t>(in.position() - bytes.data());
    uint32_t field = 0, wire_type = 0;
    if (!in.ReadTag(&field, &wire_type)) {
      error = absl::StrCat("the request is not a valid cityos.bus.v1.PublishRequest: bad tag at byte ",
                           offset);
      return false;
    }
    if (field != 1 || wire_type != wire::kLengthDelimited) {
      // Unknown to PublishRequest (as protobuf parses: skipped).
      if (!in.SkipField(field, wire_type)) {
        error = absl::StrCat(
            "the request is not a valid cityos.bus.v1.PublishRequest: malformed field ", field,
            " at byte ", offset);
        return false;
      }
      continue;
    }
    std::string_view value;
    if (!in.ReadLengthDelimited(&value)) {
      error = absl::StrCat("the request is not a valid cityos.bus.v1.PublishRequest: events[",
                           values.size(), "] at byte ", offset, " is cut short");
      return false;
    }
    values.push_back(value);
  }
  events.reserve(values.size());
  size_t next = 0;
  while (next < values.size()) {
    // Consecutive events up to kChunkBytes (an event larger than that alone).
    size_t end = next + 1;
    size_t chunk_bytes = values[next].size();
    while (end < values.size() && chunk_bytes + values[end].size() <= kChunkBytes) {
      chunk_bytes += values[end++].size();
    }
    google::protobuf::ArenaOptions options;
    options.start_block_size = FirstBlockBytes(chunk_bytes, end - next);
    options.max_block_size = kArenaBlock;
    auto arena = std::make_shared<google::protobuf::Arena>(options);
    for (; next < end; ++next) {
      const std::string_view value = values[next];
      auto* e = google::protobuf::Arena::CreateMessage<event::v1::Event>(arena.get());
      if (!e->ParseFromArray(value.data(), static_cast<int>(value.size()))) {
        events.clear();
        error = absl::StrCat("events[", next,
                             "]: not a valid cityos.event.v1.Event (malformed bytes or a string "
                             "that is not UTF-8)");
        return false;
      }
      events.emplace_back(arena, e);
    }
  }
  return true;
}

bool ArenaPublishRequest::Parse(grpc::ByteBuffer* bytes) {
  std::vector<grpc::Slice> slices;
  if (!bytes->Dump(&slices).ok()) {
    events.clear();
    error = "the request's bytes could not be read";
    return false;
  }
  bool ok;
  if (slices.size() == 1) {
    ok = Parse(std::string_view(reinterpret_cast<const char*>(slices[0].begin()),
                                slices[0].size()));
  } else {
    std::string joined;
    joined.reserve(bytes->Length());
    for (const grpc::Slice& s : slices) {
      joined.append(reinterpret_cast<const char*>(s.begin()), s.size());
    }
    ok = Parse(joined);
  }
  bytes->Clear();
  return ok;
}

std::string ArenaPublishRequest::Serialize() const {
  std::string out;
  for (const auto& e : events) {
    wire::AppendLengthDelimitedHeader(1, e->ByteSizeLong(), &out);
    e->AppendToString(&out);
  }
  return out;
}

// Publish's, PublishStream's and Subscribe's indexes among BusService's methods (the
// order of bus.proto; the generated WithStreamedUnaryMethod_Publish and
// WithSplitStreamingMethod_Subscribe use the same).
constexpr int kPublishMethodIndex = 0;
constexpr int kSubscribeMethodIndex = 2;

BusServiceImpl::BusServiceImpl(Bus* bus, PrincipalResolver resolver, BusServiceOptions options)
    : bus_(bus), resolver_(std::move(resolver)), options_(options) {
  // Publish reads its request as an ArenaPublishRequest and writes one
  // PublishResponse: a streamed-unary handler, on the wire the generated unary
  // method.
  MarkMethodStreamed(
      kPublishMethodIndex,
      new grpc::internal::StreamedUnaryHandler<ArenaPublishRequest, bus::v1::PublishResponse>(
          [this](grpc::ServerContext* context,
                 grpc::ServerUnaryStreamer<ArenaPublishRequest, bus::v1::PublishResponse>*
                     stream) { return PublishOnArena(context, stream); }));
  // Subscribe writes WireSubscribeResponse (stored events forwarded as stored). A
  // split-streaming handler reads the one request itself, then writes any number of
  // responses: on the wire the same as the generated server-streaming handler.
  MarkMethodStreamed(
      kSubscribeMethodIndex,
      new grpc::internal::SplitServerStreamingHandler<bus::v1::SubscribeRequest,
                                                      WireSubscribeResponse>(
          [this](grpc::ServerContext* context,
                 grpc::ServerSplitStreamer<bus::v1::SubscribeRequest, WireSubscribeResponse>*
                     stream) { return Subscribe(context, stream); }));
}

grpc::Status BusServiceImpl::Publish(grpc::ServerContext* context,
                                     const bus::v1::PublishRequest* request,
                                     bus::v1::PublishResponse* response) {
  absl::StatusOr<Principal> who = resolver_(context);
  if (!who.ok()) return ToGrpcStatus(who.status());
  if (request->events().empty()) return Invalid("events: at least one event is required");
  std::vector<event::v1::Event> events(request->events().begin(), request->events().end());
  absl::StatusOr<std::vector<PublishResult>> results = bus_->Publish(*who, std::move(events));
  if (!results.ok()) return ToGrpcStatus(results.status());
  response->mutable_results()->Reserve(static_cast<int>(results->size()));
  for (const PublishResult& r : *results) PublishResultToProto(r, response->add_results());
  return grpc::Status::OK;
}

grpc::Status BusServiceImpl::PublishOnArena(
    grpc::ServerContext* context,
    grpc::ServerUnaryStreamer<ArenaPublishRequest, bus::v1::PublishResponse>* stream) {
  ArenaPublishRequest request;
  if (!stream->Read(&request)) {
    return Invalid(request.error.empty() ? "Publish: the call carried no PublishRequest"
                                         : absl::StrCat("Publish: ", request.error));
  }
  absl::StatusOr<Principal> who = resolver_(context);
  if (!who.ok()) return ToGrpcStatus(who.status());
  if (request.events.empty()) return Invalid("events: at least one event is required");
  // The publisher is the caller, whatever the client sent (as Bus::Publish
  // stamps it); shared events must carry it before they are handed over.
  const std::string publisher = who->SpiffeId();
  std::vector<std::shared_ptr<const event::v1::Event>> shared;
  shared.reserve(request.events.size());
  for (std::shared_ptr<event::v1::Event>& e : request.events) {
    e->set_publisher(publisher);
    shared.push_back(std::move(e));
  }
  request.events.clear();
  absl::StatusOr<std::vector<PublishResult>> results =
      bus_->PublishShared(*who, std::move(shared));
  if (!results.ok()) return ToGrpcStatus(results.status());
  google::protobuf::ArenaOptions options;
  options.start_block_size = 16 << 10;
  options.max_block_size = 64 << 10;
  google::protobuf::Arena arena(options);
  auto* response = google::protobuf::Arena::CreateMessage<bus::v1::PublishResponse>(&arena);
  response->mutable_results()->Reserve(static_cast<int>(results->size()));
  for (const PublishResult& r : *results) PublishResultToProto(r, response->add_results());
  // Write serializes the response before it returns.
  if (!stream->Write(*response)) {
    return grpc::Status(grpc::StatusCode::CANCELLED, "the call was cancelled");
  }
  return grpc::Status::OK;
}

grpc::Status BusServiceImpl::PublishStream(
    grpc::ServerContext* context,
    grpc::ServerReaderWriter<PublishStreamResponse, PublishStreamRequest>* stream) {
  absl::StatusOr<Principal> who = resolver_(context);
  if (!who.ok()) return ToGrpcStatus(who.status());
  PublishPipeline pipeline(bus_, *std::move(who), stream, options_.publish_window);
  pipeline.Run();
  if (context->IsCancelled()) {
    return grpc::Status(grpc::StatusCode::CANCELLED, "the call was cancelled");
  }
  return grpc::Status::OK;
}

grpc::Status BusServiceImpl::Subscribe(
    grpc::ServerContext* context,
    grpc::ServerSplitStreamer<bus::v1::SubscribeRequest, WireSubscribeResponse>* stream) {
  bus::v1::SubscribeRequest request_message;
  if (!stream->Read(&request_message)) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                        "Subscribe: the call carried no SubscribeRequest");
  }
  const bus::v1::SubscribeRequest* request = &request_message;
  absl::StatusOr<Principal> who = resolver_(context);
  if (!who.ok()) return ToGrpcStatus(who.status());
  absl::StatusOr<SubscribeOptions> options = SubscribeOptionsFromProto(*request);
  if (!options.ok()) return ToGrpcStatus(options.status());
  const size_t max_batch =
      request->max_batch() == 0
          ? options_.default_max_batch
          : std::min<size_t>(request->max_batch(), options_.max_batch_limit);
  absl::StatusOr<std::unique_ptr<Subscription>> sub = bus_->Subscribe(*who, *options);
  if (!sub.ok()) return ToGrpcStatus(sub.status());
  // Tell the client the subscription is in place (live mode sees events from
  // now on) before the first event arrives.
  stream->SendInitialMetadata();

  std::vector<Delivery> got;
  got.reserve(max_batch);
  // The response borrows the deliveries' messages (kept alive by `got` until the
  // next Next()) and serializes them straight into the outgoing buffer.
  WireSubscribeResponse response;
  while (!context->IsCancelled()) {
    if (draining_.load()) {
      return grpc::Status(grpc::StatusCode::UNAVAILABLE, "the node is shutting down");
    }
    got.clear();
    uint64_t missed = 0;
    absl::Status s = (*sub)->Next(max_batch, options_.poll_interval, &got, &missed);
    if (!s.ok()) return ToGrpcStatus(s);
    if (got.empty() && missed == 0) continue;
    response.Clear();
    response.set_missed(missed);
    size_t bytes = 0;
    bool broken = false;
    for (const Delivery& d : got) {
      const size_t event_size = WireSubscribeResponse::EventSize(*d.message);
      // Event size plus room for the delivery's own fields.
      const size_t size = event_size + 64;
      if (response.deliveries_size() > 0 && bytes + size > options_.max_response_bytes) {
        if (!stream->Write(response)) {
          broken = true;
          break;
        }
        response.Clear();
        bytes = 0;
      }
      response.Add(d, event_size);
      bytes += size;
    }
    if (broken) break;
    if (!stream->Write(response)) break;
  }
  return grpc::Status(grpc::StatusCode::CANCELLED, "the call was cancelled");
}

grpc::Status BusServiceImpl::Ack(grpc::ServerContext* context, const bus::v1::AckRequest* request,
                                 bus::v1::AckResponse* response) {
  absl::StatusOr<Principal> who = resolver_(context);
  if (!who.ok()) return ToGrpcStatus(who.status());
  if (request->stream().empty()) return Invalid("stream: required");
  if (request->consumer().empty()) return Invalid("consumer: required");
  absl::StatusOr<uint64_t> floor =
      bus_->Ack(*who, request->stream(), request->consumer(),
                absl::MakeConstSpan(request->sequences().data(), request->sequences().size()),
                absl::MakeConstSpan(request->nak_sequences().data(),
                                    request->nak_sequences().size()));
  if (!floor.ok()) return ToGrpcStatus(floor.status());
  response->set_ack_floor(*floor);
  return grpc::Status::OK;
}

grpc::Status BusServiceImpl::CreateStream(grpc::ServerContext* context,
                                          const bus::v1::CreateStreamRequest* request,
                                          bus::v1::CreateStreamResponse* response) {
  absl::StatusOr<Principal> who = resolver_(context);
  if (!who.ok()) return ToGrpcStatus(who.status());
  if (!request->has_config()) return Invalid("config: required");
  absl::StatusOr<StreamConfig> config = StreamConfigFromProto(request->config(), "config");
  if (!config.ok()) return ToGrpcStatus(config.status());
  absl::StatusOr<StreamInfo> info = bus_->CreateStream(*who, *config);
  if (!info.ok()) return ToGrpcStatus(info.status());
  StreamInfoToProto(*info, response->mutable_stream());
  return grpc::Status::OK;
}

grpc::Status BusServiceImpl::ListStreams(grpc::ServerContext* context,
                                         const bus::v1::ListStreamsRequest* request,
                                         bus::v1::ListStreamsResponse* response) {
  absl::StatusOr<Principal> who = resolver_(context);
  if (!who.ok()) return ToGrpcStatus(who.status());
  absl::StatusOr<std::vector<StreamInfo>> streams = bus_->ListStreams(*who);
  if (!streams.ok()) return ToGrpcStatus(streams.status());
  for (const StreamInfo& info : *streams) StreamInfoToProto(info, response->add_streams());
  return grpc::Status::OK;
}

grpc::Status BusServiceImpl::GetStream(grpc::ServerContext* context,
                                       const bus::v1::GetStreamRequest* request,
                                       bus::v1::GetStreamResponse* response) {
  absl::StatusOr<Principal> who = resolver_(context);
  if (!who.ok()) return ToGrpcStatus(who.status());
  if (request->name().empty()) return Invalid("name: required");
  absl::StatusOr<StreamInfo> info = bus_->GetStream(*who, request->name());
  if (!info.ok()) return ToGrpcStatus(info.status());
  StreamInfoToProto(*info, response->mutable_stream());
  return grpc::Status::OK;
}

grpc::Status BusServiceImpl::DeleteStream(grpc::ServerContext* context,
                                          const bus::v1::DeleteStreamRequest* request,
                                          bus::v1::DeleteStreamResponse* response) {
  absl::StatusOr<Principal> who = resolver_(context);
  if (!who.ok()) return ToGrpcStatus(who.status());
  if (request->name().empty()) return Invalid("name: required");
  return ToGrpcStatus(bus_->DeleteStream(*who, request->name()));
}

grpc::Status BusServiceImpl::CreateConsumer(grpc::ServerContext* context,
                                            const bus::v1::CreateConsumerRequest* request,
                                            bus::v1::CreateConsumerResponse* response) {
  absl::StatusOr<Principal> who = resolver_(context);
  if (!who.ok()) return ToGrpcStatus(who.status());
  if (!request->has_config()) return Invalid("config: required");
  absl::StatusOr<ConsumerConfig> config = ConsumerConfigFromProto(request->config(), "config");
  if (!config.ok()) return ToGrpcStatus(config.status());
  if (config->stream.empty()) return Invalid("config.stream: required");
  absl::StatusOr<ConsumerInfo> info = bus_->CreateConsumer(*who, *config);
  if (!info.ok()) return ToGrpcStatus(info.status());
  ConsumerInfoToProto(*info, response->mutable_consumer());
  return grpc::Status::OK;
}

grpc::Status BusServiceImpl::ListConsumers(grpc::ServerContext* context,
                                           const bus::v1::ListConsumersRequest* request,
                                           bus::v1::ListConsumersResponse* response) {
  absl::StatusOr<Principal> who = resolver_(context);
  if (!who.ok()) return ToGrpcStatus(who.status());
  if (request->stream().empty()) return Invalid("stream: required");
  absl::StatusOr<std::vector<ConsumerInfo>> consumers =
      bus_->ListConsumers(*who, request->stream());
  if (!consumers.ok()) return ToGrpcStatus(consumers.status());
  for (const ConsumerInfo& info : *consumers) {
    ConsumerInfoToProto(info, response->add_consumers());
  }
  return grpc::Status::OK;
}

grpc::Status BusServiceImpl::GetConsumer(grpc::ServerContext* context,
                                         const bus::v1::GetConsumerRequest* request,
                                         bus::v1::GetConsumerResponse* response) {
  absl::StatusOr<Principal> who = resolver_(context);
  if (!who.ok()) return ToGrpcStatus(who.status());
  if (request->stream().empty()) return Invalid("stream: required");
  if (request->name().empty()) return Invalid("name: required");
  absl::StatusOr<ConsumerInfo> info = bus_->GetConsumer(*who, request->stream(), request->name());
  if (!info.ok()) return ToGrpcStatus(info.status());
  ConsumerInfoToProto(*info, response->mutable_consumer());
  return grpc::Status::OK;
}

grpc::Status BusServiceImpl::DeleteConsumer(grpc::ServerContext* context,
                                            const bus::v1::DeleteConsumerRequest* request,
                                            bus::v1::DeleteConsumerResponse* response) {
  absl::StatusOr<Principal> who = resolver_(context);
  if (!who.ok()) return ToGrpcStatus(who.status());
  if (request->stream().empty()) return Invalid("stream: required");
  if (request->name().empty()) return Invalid("name: required");
  return ToGrpcStatus(bus_->DeleteConsumer(*who, request->stream(), request->name()));
}

}  // namespace cityos

namespace grpc {

Status SerializationTraits<cityos::ArenaPublishRequest>::Serialize(
    const cityos::ArenaPublishRequest& msg, ByteBuffer* bb, bool* own_buffer) {
  const std::string bytes = msg.Serialize();
  Slice slice(bytes);
  ByteBuffer tmp(&slice, 1);
  bb->Swap(&tmp);
  *own_buffer = true;
  return Status::OK;
}

Status SerializationTraits<cityos::ArenaPublishRequest>::Deserialize(
    ByteBuffer* bb, cityos::ArenaPublishRequest* msg) {
  if (!msg->Parse(bb)) return Status(StatusCode::INVALID_ARGUMENT, msg->error);
  return Status::OK;
}

}  // namespace grpc
