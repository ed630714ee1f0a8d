// Subscribe's hand-written responses (WireSubscribeResponse): stored events are
// forwarded as the bytes stored, live ones serialized; either way the client gets
// exactly cityos.bus.v1.SubscribeResponse. Checked byte for byte against
// protobuf's own serialization, and end to end through a real gRPC server read
// with the public stub (replay, durable and live modes) and with a raw reader.
#include "subscribe_wire.h"

#include <google/protobuf/util/message_differencer.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/impl/codegen/client_unary_call.h>
#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <vector>

#include "bus_service.h"
#include "cityos/bus.h"
#include "cityos/bus/v1/bus.grpc.pb.h"
#include "cityos/event.h"
#include "cityos/proto_time.h"
#include "testutil.h"

namespace cityos {

// A Subscribe response as it came over the wire, unparsed.
struct RawSubscribeResponse {
  std::string bytes;
};

}  // namespace cityos

namespace grpc {
template <>
class SerializationTraits<cityos::RawSubscribeResponse> {
 public:
  static Status Deserialize(ByteBuffer* buffer, cityos::RawSubscribeResponse* msg) {
    std::vector<Slice> slices;
    Status s = buffer->Dump(&slices);
    if (!s.ok()) return s;
    msg->bytes.clear();
    for (const Slice& slice : slices) {
      msg->bytes.append(reinterpret_cast<const char*>(slice.begin()), slice.size());
    }
    buffer->Clear();
    return Status::OK;
  }
  static Status Serialize(const cityos::RawSubscribeResponse& msg, ByteBuffer* bb,
                          bool* own_buffer) {
    *own_buffer = true;
    Slice slice(msg.bytes);
    ByteBuffer tmp(&slice, 1);
    bb->Swap(&tmp);
    return Status::OK;
  }
};
}  // namespace grpc

namespace cityos {
namespace {

using bus::v1::SubscribeRequest;
using bus::v1::SubscribeResponse;
using event::v1::Event;
using google::protobuf::util::MessageDifferencer;

Principal Me() { return *Principal::FromSpiffeId("spiffe://test.city/org/grid/svc/meters"); }

Event MakeEvent(const std::string& subject, const std::string& text) {
  auto e = EventBuilder()
               .Source("//test.city/sensors/s-1")
               .Subject(subject)
               .Type("cityos.test.v1.Reading")
               .Time(absl::FromUnixSeconds(1764000000) + absl::Nanoseconds(5))
               .Classification(event::v1::CLASSIFICATION_INTERNAL)
               .Owner("test-org")
               .TextData("text/plain", text)
               .Build();
  EXPECT_TRUE(e.ok()) << e.status();
  return *e;
}

// The public response for `deliveries` (what the service used to build).
SubscribeResponse PublicResponse(const std::vector<Delivery>& deliveries, uint64_t missed) {
  SubscribeResponse r;
  for (const Delivery& d : deliveries) {
    bus::v1::Delivery* out = r.add_deliveries();
    out->set_stream(d.message->stream);
    out->set_sequence(d.message->sequence);
    TimestampToProto(d.message->publish_time, out->mutable_publish_time());
    out->set_delivery_count(d.delivery_count);
    *out->mutable_event() = d.message->event();
  }
  r.set_missed(missed);
  return r;
}

TEST(WireSubscribeResponse, IsByteForByteTheSerializationOfThePublicResponse) {
  const std::string big_text(300, 'z');  // a length that takes two varint bytes
  std::vector<std::string> wires = {MakeEvent("a.b", "one").SerializeAsString(),
                                    MakeEvent("a.c", big_text).SerializeAsString()};
  std::vector<Delivery> ds;
  // Stored messages: forwarded bytes; times with and without nanos, before 1970, at 0.
  ds.push_back({std::make_shared<const Message>("carbon", 1, absl::FromUnixSeconds(1764000000),
                                                wires[0], nullptr),
                1});
  ds.push_back({std::make_shared<const Message>(
                    "carbon", 300, absl::FromUnixSeconds(-5) + absl::Nanoseconds(7), wires[1],
                    nullptr),
                3});
  ds.push_back({std::make_shared<const Message>("carbon", 2, absl::UnixEpoch(), wires[0],
                                                nullptr),
                0});
  ds.push_back({std::make_shared<const Message>("x", 1ull << 40,
                                                absl::UnixEpoch() + absl::Milliseconds(1),
                                                wires[1], nullptr),
                1});
  // Live messages: no stream, sequence 0, serialized events; an infinite time.
  ds.push_back({std::make_shared<const Message>("", 0, absl::FromUnixSeconds(1764000001),
                                                MakeEvent("m.n", "live")),
                1});
  ds.push_back({std::make_shared<const Message>("", 0, absl::InfinitePast(),
                                                MakeEvent("m.n", big_text)),
                1});
  for (uint64_t missed : {uint64_t{0}, uint64_t{1}, uint64_t{1} << 35}) {
    for (size_t n = 0; n <= ds.size(); ++n) {
      std::vector<Delivery> some(ds.begin(), ds.begin() + static_cast<ptrdiff_t>(n));
      WireSubscribeResponse w;
      w.set_missed(missed);
      size_t added = 0;
      for (const Delivery& d : some) added += w.Add(d);
      const std::string want = PublicResponse(some, missed).SerializeAsString();
      const std::string got = w.SerializeAsString();
      EXPECT_EQ(got, want) << n << " deliveries, missed " << missed;
      EXPECT_EQ(w.ByteSize(), want.size());
      EXPECT_EQ(added + (missed != 0 ? want.size() - added : 0), want.size());
      EXPECT_EQ(w.forwarded(), std::min<size_t>(n, 4));
      // And it parses back into the same deliveries.
      SubscribeResponse parsed;
      ASSERT_TRUE(parsed.ParseFromString(got));
      EXPECT_TRUE(MessageDifferencer::Equals(parsed, PublicResponse(some, missed)));
    }
  }
  WireSubscribeResponse cleared;
  cleared.set_missed(4);
  cleared.Add(ds[0]);
  cleared.Clear();
  EXPECT_EQ(cleared.SerializeAsString(), "");
  EXPECT_EQ(cleared.forwarded(), 0u);
}

class SubscribeWireTest : public ::testing::Test {
 protected:
  void SetUp() override {
    BusOptions options;
    options.data_dir = dir_.File("bus");
    auto bus = Bus::Open(std::move(options));
    ASSERT_TRUE(bus.ok()) << bus.status();
    bus_ = *std::move(bus);
    ASSERT_TRUE(bus_->CreateStream(Me(), {.name = "carbon", .subjects = {"carbon.>"}}).ok());
    service_ = std::make_unique<BusServiceImpl>(
        bus_.get(), [](grpc::ServerContext*) -> absl::StatusOr<Principal> { return Me(); });
    grpc::ServerBuilder builder;
    int port = 0;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
    builder.RegisterService(service_.get());
    server_ = builder.BuildAndStart();
    ASSERT_NE(server_, nullptr);
    channel_ = grpc::CreateChannel("127.0.0.1:" + std::to_string(port),
                                   grpc::InsecureChannelCredentials());
    stub_ = bus::v1::BusService::NewStub(channel_);
  }
  void TearDown() override {
    stub_.reset();
    channel_.reset();
    server_->Shutdown(absl::ToChronoTime(absl::Now() + absl::Seconds(2)));
    server_->Wait();
    service_.reset();
    EXPECT_TRUE(bus_->Close().ok());
  }

  // Publishes `n` events on `subject` in-process; returns them as stored (with the
  // publisher stamped).
  std::vector<Event> PublishN(const std::string& subject, int n, const std::string& prefix) {
    std::vector<Event> events;
    for (int i = 0; i < n; ++i) events.push_back(MakeEvent(subject, prefix + std::to_string(i)));
    auto r = bus_->Publish(Me(), events);
    EXPECT_TRUE(r.ok()) << r.status();
    for (Event& e : events) e.set_publisher(Me().SpiffeId());
    return events;
  }

  // The deliveries of an in-process replay of the stream (what the server sends).
  std::vector<Delivery> InProcessReplay(size_t n) {
    auto sub = bus_->Subscribe(Me(), {.stream = "carbon", .start = StartPosition::Earliest()});
    EXPECT_TRUE(sub.ok());
    std::vector<Delivery> got;
    absl::Time deadline = absl::Now() + absl::Seconds(20);
    while (got.size() < n && absl::Now() < deadline) {
      EXPECT_TRUE((*sub)->Next(n - got.size(), absl::Milliseconds(100), &got).ok());
    }
    return got;
  }

  // Reads deliveries with the public stub until `n` arrived.
  std::vector<bus::v1::Delivery> ReadPublic(grpc::ClientReader<SubscribeResponse>& reader,
                                            size_t n) {
    std::vector<bus::v1::Delivery> out;
    SubscribeResponse r;
    while (out.size() < n && reader.Read(&r)) {
      for (const auto& d : r.deliveries()) out.push_back(d);
    }
    return out;
  }

  testing::TempDir dir_;
  std::unique_ptr<Bus> bus_;
  std::unique_ptr<BusServiceImpl> service_;
  std::unique_ptr<grpc::Server> server_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<bus::v1::BusService::Stub> stub_;
};

TEST_F(SubscribeWireTest, ThePublicStubGetsTheSameEventsInReplayDurableAndLiveModes) {
  std::vector<Event> stored = PublishN("carbon.meter.reading", 300, "s");
  ASSERT_TRUE(bus_->CreateConsumer(Me(), {.stream = "carbon", .name = "c"}).ok());
  std::vector<Delivery> expected = InProcessReplay(stored.size());
  ASSERT_EQ(expected.size(), stored.size());

  SubscribeRequest replay;
  replay.set_stream("carbon");
  replay.mutable_start()->set_kind(bus::v1::StartPosition::KIND_EARLIEST);
  replay.set_max_batch(128);
  SubscribeRequest durable;
  durable.set_stream("carbon");
  durable.set_consumer("c");
  for (const SubscribeRequest& req : {replay, durable}) {
    grpc::ClientContext ctx;
    auto reader = stub_->Subscribe(&ctx, req);
    std::vector<bus::v1::Delivery> got = ReadPublic(*reader, stored.size());
    ctx.TryCancel();
    reader->Finish();
    ASSERT_EQ(got.size(), stored.size()) << req.ShortDebugString();
    for (size_t i = 0; i < got.size(); ++i) {
      const Message& m = *expected[i].message;
      EXPECT_EQ(got[i].stream(), "carbon");
      EXPECT_EQ(got[i].sequence(), i + 1);
      EXPECT_EQ(got[i].delivery_count(), 1u);
      google::protobuf::Timestamp want_time;
      TimestampToProto(m.publish_time, &want_time);
      EXPECT_TRUE(MessageDifferencer::Equals(got[i].publish_time(), want_time));
      EXPECT_TRUE(MessageDifferencer::Equals(got[i].event(), stored[i])) << i;
    }
  }

  // Live: events serialized from the publisher's copies.
  grpc::ClientContext live_ctx;
  auto live = stub_->Subscribe(&live_ctx, [] {
    SubscribeRequest r;
    r.set_subject_pattern("mobility.>");
    return r;
  }());
  // The subscription exists once the initial metadata arrived.
  live->WaitForInitialMetadata();
  std::vector<Event> live_events = PublishN("mobility.bus.position", 5, "l");
  std::vector<bus::v1::Delivery> live_got = ReadPublic(*live, live_events.size());
  live_ctx.TryCancel();
  live->Finish();
  ASSERT_EQ(live_got.size(), live_events.size());
  for (size_t i = 0; i < live_got.size(); ++i) {
    EXPECT_EQ(live_got[i].stream(), "");
    EXPECT_EQ(live_got[i].sequence(), 0u);
    EXPECT_TRUE(MessageDifferencer::Equals(live_got[i].event(), live_events[i])) << i;
  }
}

TEST_F(SubscribeWireTest, TheBytesOnTheWireAreTheCanonicalSerializationOfTheResponse) {
  std::vector<Event> stored = PublishN("carbon.meter.reading", 50, "s");
  std::vector<Delivery> expected = InProcessReplay(stored.size());
  ASSERT_EQ(expected.size(), stored.size());

  SubscribeRequest replay;
  replay.set_stream("carbon");
  replay.mutable_start()->set_kind(bus::v1::StartPosition::KIND_EARLIEST);
  replay.set_max_batch(1000);
  grpc::ClientContext ctx;
  const grpc::internal::RpcMethod method("/cityos.bus.v1.BusService/Subscribe",
                                         grpc::internal::RpcMethod::SERVER_STREAMING);
  std::unique_ptr<grpc::ClientReader<RawSubscribeResponse>> reader(
      grpc::internal::ClientReaderFactory<RawSubscribeResponse>::Create(channel_.get(), method,
                                                                        &ctx, replay));
  size_t delivered = 0;
  RawSubscribeResponse raw;
  while (delivered < stored.size() && reader->Read(&raw)) {
    SubscribeResponse parsed;
    ASSERT_TRUE(parsed.ParseFromString(raw.bytes));
    ASSERT_GT(parsed.deliveries_size(), 0);
    // What the public types would have sent for the same deliveries.
    std::vector<Delivery> part(expected.begin() + static_cast<ptrdiff_t>(delivered),
                               expected.begin() +
                                   static_cast<ptrdiff_t>(delivered + parsed.deliveries_size()));
    EXPECT_EQ(raw.bytes, PublicResponse(part, 0).SerializeAsString());
    for (int i = 0; i < parsed.deliveries_size(); ++i) {
      EXPECT_TRUE(MessageDifferencer::Equals(parsed.deliveries(i).event(),
                                             stored[delivered + static_cast<size_t>(i)]));
    }
    delivered += static_cast<size_t>(parsed.deliveries_size());
  }
  ctx.TryCancel();
  reader->Finish();
  EXPECT_EQ(delivered, stored.size());
}

TEST_F(SubscribeWireTest, ACallWithoutARequestIsRefused) {
  // A bidirectional-style call that half-closes before sending its request.
  grpc::ClientContext ctx;
  const grpc::internal::RpcMethod method("/cityos.bus.v1.BusService/Subscribe",
                                         grpc::internal::RpcMethod::BIDI_STREAMING);
  std::unique_ptr<grpc::ClientReaderWriter<SubscribeRequest, RawSubscribeResponse>> call(
      grpc::internal::ClientReaderWriterFactory<SubscribeRequest, RawSubscribeResponse>::Create(
          channel_.get(), method, &ctx));
  call->WritesDone();
  RawSubscribeResponse raw;
  EXPECT_FALSE(call->Read(&raw));
  grpc::Status s = call->Finish();
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(s.error_message().find("no SubscribeRequest"), std::string::npos) << s.error_message();
}

}  // namespace
}  // namespace cityos
