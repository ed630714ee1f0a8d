// cityos.bus.v1.BusService end to end: a real gRPC server on loopback serving
// BusServiceImpl over a real Bus in a temp dir, called through a real stub.
// Nothing here asserts on timing: waits have generous deadlines and the
// assertions are on what arrived.
#include "bus_service.h"

#include <gmock/gmock.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "google/protobuf/util/message_differencer.h"
#include "absl/time/clock.h"
#include "cityos/bus.h"
#include "cityos/bus/v1/bus.grpc.pb.h"
#include "cityos/event.h"
#include "cityos/principal.h"
#include "cityos/wire.h"
#include "testutil.h"

namespace cityos {
namespace {

using bus::v1::BusService;
using bus::v1::SubscribeRequest;
using bus::v1::SubscribeResponse;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

constexpr absl::Duration kWait = absl::Seconds(30);  // generous; never a timing assertion
constexpr size_t kMaxEventBytes = 16 << 10;
constexpr size_t kLiveQueueDepth = 64;

event::v1::Event MakeEvent(const std::string& subject, const std::string& text = "x") {
  auto e = EventBuilder()
               .Source("//test.city/sensors/s-1")
               .Subject(subject)
               .Type("cityos.test.v1.Reading")
               .Classification(event::v1::CLASSIFICATION_INTERNAL)
               .Owner("test-org")
               .TextData("text/plain", text)
               .Build();
  EXPECT_TRUE(e.ok()) << e.status();
  return *e;
}

std::vector<uint64_t> Sequences(const std::vector<bus::v1::Delivery>& ds) {
  std::vector<uint64_t> out;
  for (const auto& d : ds) out.push_back(d.sequence());
  return out;
}

std::vector<uint64_t> Range(uint64_t first, uint64_t last) {
  std::vector<uint64_t> out;
  for (uint64_t s = first; s <= last; ++s) out.push_back(s);
  return out;
}

// One Subscribe call, read on its own thread (unless created stalled).
class Subscriber {
 public:
  Subscriber(BusService::Stub* stub, const SubscribeRequest& request, bool read = true) {
    context_.set_deadline(absl::ToChronoTime(absl::Now() + absl::Minutes(2)));
    reader_ = stub->Subscribe(&context_, request);
    // The service sends initial metadata once the subscription is in place.
    reader_->WaitForInitialMetadata();
    if (read) StartReading();
  }
  ~Subscriber() {
    Cancel();
    if (thread_.joinable()) thread_.join();
  }

  void StartReading() {
    thread_ = std::thread([this] {
      SubscribeResponse response;
      while (reader_->Read(&response)) {
        absl::MutexLock lock(&mu_);
        for (const auto& d : response.deliveries()) deliveries_.push_back(d);
        missed_ += response.missed();
        ++responses_;
        largest_response_ = std::max<size_t>(largest_response_, response.deliveries_size());
      }
      grpc::Status status = reader_->Finish();
      absl::MutexLock lock(&mu_);
      status_ = status;
      finished_ = true;
    });
  }

  // True once at least `n` deliveries (plus missed events, if `count_missed`)
  // arrived; false after kWait.
  bool WaitFor(size_t n, bool count_missed = false) {
    absl::MutexLock lock(&mu_);
    auto enough = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return deliveries_.size() + (count_missed ? missed_ : 0) >= n || finished_;
    };
    mu_.AwaitWithTimeout(absl::Condition(&enough), kWait);
    return deliveries_.size() + (count_missed ? missed_ : 0) >= n;
  }
  // Waits for a delivery matching `pred`.
  template <typename Pred>
  bool WaitForDelivery(Pred pred) {
    absl::MutexLock lock(&mu_);
    auto found = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      for (const auto& d : deliveries_) {
        if (pred(d)) return true;
      }
      return finished_;
    };
    mu_.AwaitWithTimeout(absl::Condition(&found), kWait);
    for (const auto& d : deliveries_) {
      if (pred(d)) return true;
    }
    return false;
  }
  // The call's final status, once it ended (waits up to kWait).
  grpc::Status WaitForEnd() {
    absl::MutexLock lock(&mu_);
    auto done = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return finished_; };
    if (!mu_.AwaitWithTimeout(absl::Condition(&done), kWait)) {
      return grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED, "test: call did not end");
    }
    return status_;
  }
  void Cancel() { context_.TryCancel(); }

  std::vector<bus::v1::Delivery> deliveries() {
    absl::MutexLock lock(&mu_);
    return deliveries_;
  }
  uint64_t missed() {
    absl::MutexLock lock(&mu_);
    return missed_;
  }
  // Response messages received, and the most deliveries one carried.
  size_t responses() {
    absl::MutexLock lock(&mu_);
    return responses_;
  }
  size_t largest_response() {
    absl::MutexLock lock(&mu_);
    return largest_response_;
  }

 private:
  grpc::ClientContext context_;
  std::unique_ptr<grpc::ClientReader<SubscribeResponse>> reader_;
  std::thread thread_;
  absl::Mutex mu_;
  std::vector<bus::v1::Delivery> deliveries_ ABSL_GUARDED_BY(mu_);
  uint64_t missed_ ABSL_GUARDED_BY(mu_) = 0;
  size_t responses_ ABSL_GUARDED_BY(mu_) = 0;
  size_t largest_response_ ABSL_GUARDED_BY(mu_) = 0;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  grpc::Status status_ ABSL_GUARDED_BY(mu_);
};

class BusServiceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    OpenBus();
    StartServer();
  }
  void TearDown() override {
    StopServer();
    CloseBus();
  }

  void OpenBus() {
    BusOptions options;
    options.data_dir = dir_.File("bus");
    options.limits.max_event_bytes = kMaxEventBytes;
    options.live_queue_depth = kLiveQueueDepth;
    auto bus = Bus::Open(std::move(options));
    ASSERT_TRUE(bus.ok()) << bus.status();
    bus_ = *std::move(bus);
  }
  void CloseBus() {
    if (bus_ != nullptr) {
      EXPECT_TRUE(bus_->Close().ok());
    }
    bus_.reset();
  }
  void StartServer() {
    service_ = std::make_unique<BusServiceImpl>(
        bus_.get(), [this](grpc::ServerContext* ctx) { return resolver_(ctx); },
        service_options_);
    grpc::ServerBuilder builder;
    int port = 0;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
    builder.RegisterService(service_.get());
    server_ = builder.BuildAndStart();
    ASSERT_NE(server_, nullptr);
    ASSERT_NE(port, 0);
    channel_ = grpc::CreateChannel("127.0.0.1:" + std::to_string(port),
                                   grpc::InsecureChannelCredentials());
    stub_ = BusService::NewStub(channel_);
  }
  void StopServer() {
    stub_.reset();
    channel_.reset();
    if (server_ != nullptr) {
      server_->Shutdown(absl::ToChronoTime(absl::Now() + absl::Seconds(2)));
      server_->Wait();
    }
    server_.reset();
    service_.reset();
  }
  void Restart() {
    StopServer();
    CloseBus();
    OpenBus();
    StartServer();
  }

  grpc::Status CreateStream(const std::string& name, std::vector<std::string> subjects,
                            bus::v1::Durability durability = bus::v1::DURABILITY_FSYNC) {
    bus::v1::CreateStreamRequest req;
    req.mutable_config()->set_name(name);
    for (const auto& s : subjects) req.mutable_config()->add_subjects(s);
    req.mutable_config()->set_durability(durability);
    bus::v1::CreateStreamResponse resp;
    grpc::ClientContext ctx;
    return stub_->CreateStream(&ctx, req, &resp);
  }
  grpc::Status CreateConsumer(const std::string& stream, const std::string& name,
                              absl::Duration ack_wait = absl::Seconds(30),
                              uint32_t max_in_flight = 0) {
    bus::v1::CreateConsumerRequest req;
    bus::v1::ConsumerConfig* c = req.mutable_config();
    c->set_stream(stream);
    c->set_name(name);
    c->mutable_start()->set_kind(bus::v1::StartPosition::KIND_EARLIEST);
    c->mutable_ack_wait()->set_seconds(absl::ToInt64Seconds(ack_wait));
    c->mutable_ack_wait()->set_nanos(
        static_cast<int32_t>(absl::ToInt64Nanoseconds(ack_wait % absl::Seconds(1))));
    c->set_max_in_flight(max_in_flight);
    bus::v1::CreateConsumerResponse resp;
    grpc::ClientContext ctx;
    return stub_->CreateConsumer(&ctx, req, &resp);
  }
  absl::StatusOr<bus::v1::PublishResponse> Publish(std::vector<event::v1::Event> events) {
    bus::v1::PublishRequest req;
    for (auto& e : events) *req.add_events() = std::move(e);
    bus::v1::PublishResponse resp;
    grpc::ClientContext ctx;
    grpc::Status s = stub_->Publish(&ctx, req, &resp);
    if (!s.ok()) return absl::Status(static_cast<absl::StatusCode>(s.error_code()), s.error_message());
    return resp;
  }
  // Publishes `n` events on `subject`, one RPC.
  void PublishN(const std::string& subject, int n) {
    std::vector<event::v1::Event> events;
    for (int i = 0; i < n; ++i) events.push_back(MakeEvent(subject, "e" + std::to_string(i)));
    auto r = Publish(std::move(events));
    ASSERT_TRUE(r.ok()) << r.status();
  }
  absl::StatusOr<uint64_t> Ack(const std::string& stream, const std::string& consumer,
                               std::vector<uint64_t> acks, std::vector<uint64_t> naks = {}) {
    bus::v1::AckRequest req;
    req.set_stream(stream);
    req.set_consumer(consumer);
    for (uint64_t s : acks) req.add_sequences(s);
    for (uint64_t s : naks) req.add_nak_sequences(s);
    bus::v1::AckResponse resp;
    grpc::ClientContext ctx;
    grpc::Status s = stub_->Ack(&ctx, req, &resp);
    if (!s.ok()) return absl::Status(static_cast<absl::StatusCode>(s.error_code()), s.error_message());
    return resp.ack_floor();
  }
  SubscribeRequest Live(const std::string& pattern) {
    SubscribeRequest r;
    r.set_subject_pattern(pattern);
    return r;
  }
  SubscribeRequest Durable(const std::string& stream, const std::string& consumer) {
    SubscribeRequest r;
    r.set_stream(stream);
    r.set_consumer(consumer);
    return r;
  }

  testing::TempDir dir_;
  Principal caller_ = *Principal::FromSpiffeId("spiffe://test.city/org/grid/svc/meters");
  std::function<absl::StatusOr<Principal>(grpc::ServerContext*)> resolver_ =
      [this](grpc::ServerContext*) -> absl::StatusOr<Principal> { return caller_; };
  BusServiceOptions service_options_;
  std::unique_ptr<Bus> bus_;
  std::unique_ptr<BusServiceImpl> service_;
  std::unique_ptr<grpc::Server> server_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<BusService::Stub> stub_;
};

// --- publish and live subscribe ---

TEST_F(BusServiceTest, PublishReturnsSequencesForCapturedSubjectsAndZeroOtherwise) {
  ASSERT_TRUE(CreateStream("carbon", {"carbon.>"}).ok());
  auto r = Publish({MakeEvent("carbon.meter.reading"), MakeEvent("mobility.bus.position"),
                    MakeEvent("carbon.meter.status")});
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->results_size(), 3);
  EXPECT_EQ(r->results(0).stream(), "carbon");
  EXPECT_EQ(r->results(0).sequence(), 1u);
  EXPECT_EQ(r->results(1).stream(), "");
  EXPECT_EQ(r->results(1).sequence(), 0u);
  EXPECT_EQ(r->results(2).stream(), "carbon");
  EXPECT_EQ(r->results(2).sequence(), 2u);
  auto again = Publish({MakeEvent("carbon.meter.reading")});
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->results(0).sequence(), 3u);
}

TEST_F(BusServiceTest, LiveSubscribersGetWhatTheirWildcardPatternsMatch) {
  ASSERT_TRUE(CreateStream("carbon", {"carbon.>"}).ok());
  Subscriber readings(stub_.get(), Live("carbon.*.reading"));
  Subscriber all_carbon(stub_.get(), Live("carbon.>"));
  Subscriber mobility(stub_.get(), Live("mobility.>"));
  ASSERT_TRUE(Publish({MakeEvent("carbon.meter.reading"), MakeEvent("carbon.meter.status"),
                       MakeEvent("mobility.bus.position"), MakeEvent("carbon.grid.reading"),
                       MakeEvent("carbon.meter.reading.extra")})
                  .ok());
  ASSERT_TRUE(readings.WaitFor(2));
  ASSERT_TRUE(all_carbon.WaitFor(4));
  ASSERT_TRUE(mobility.WaitFor(1));
  // One more event on each, so that anything wrongly routed would have
  // arrived before it.
  ASSERT_TRUE(Publish({MakeEvent("carbon.end.reading"), MakeEvent("mobility.end")}).ok());
  ASSERT_TRUE(readings.WaitFor(3));
  ASSERT_TRUE(all_carbon.WaitFor(5));
  ASSERT_TRUE(mobility.WaitFor(2));

  auto subjects = [](const std::vector<bus::v1::Delivery>& ds) {
    std::vector<std::string> out;
    for (const auto& d : ds) out.push_back(d.event().subject());
    return out;
  };
  EXPECT_THAT(subjects(readings.deliveries()),
              ElementsAre("carbon.meter.reading", "carbon.grid.reading", "carbon.end.reading"));
  EXPECT_THAT(subjects(all_carbon.deliveries()),
              ElementsAre("carbon.meter.reading", "carbon.meter.status", "carbon.grid.reading",
                          "carbon.meter.reading.extra", "carbon.end.reading"));
  EXPECT_THAT(subjects(mobility.deliveries()), ElementsAre("mobility.bus.position", "mobility.end"));

  auto d = readings.deliveries();
  EXPECT_EQ(d[0].stream(), "carbon");
  EXPECT_EQ(d[0].sequence(), 1u);
  EXPECT_GT(d[0].publish_time().seconds(), 0);
  EXPECT_EQ(d[0].event().publisher(), caller_.SpiffeId());
  EXPECT_EQ(d[0].event().text_data(), "x");
  auto m = mobility.deliveries();
  EXPECT_EQ(m[0].stream(), "");
  EXPECT_EQ(m[0].sequence(), 0u);
}

TEST_F(BusServiceTest, ThePublisherIsTheCallerWhateverTheClientSends) {
  Subscriber sub(stub_.get(), Live("carbon.>"));
  event::v1::Event e = MakeEvent("carbon.meter.reading");
  e.set_publisher("spiffe://evil/org/x/svc/y");
  ASSERT_TRUE(Publish({e}).ok());
  ASSERT_TRUE(sub.WaitFor(1));
  EXPECT_EQ(sub.deliveries()[0].event().publisher(), caller_.SpiffeId());
}

// --- Publish parses its request on an arena and publishes the events shared ---

// An in-process live subscriber holds the published events (shared, aliasing the
// request's arena) after the RPC, its handler and its request are gone: they
// still read back exactly as sent, publisher stamped. Many events and large
// data make the arena take several blocks.
TEST_F(BusServiceTest, PublishedEventsOutliveTheRequestAndReadBackExactly) {
  ASSERT_TRUE(CreateStream("carbon", {"carbon.>"}).ok());
  auto sub = bus_->Subscribe(caller_, {.subject_pattern = "carbon.>", .queue_depth = 4096});
  ASSERT_TRUE(sub.ok()) << sub.status();
  std::vector<event::v1::Event> sent;
  for (int i = 0; i < 600; ++i) {
    sent.push_back(MakeEvent("carbon.meter.reading",
                             std::string(static_cast<size_t>(1 + (i * 37) % 9000), 'a' + i % 26)));
    sent.back().set_publisher(i % 2 ? "spiffe://evil/org/x/svc/y" : "");
  }
  auto r = Publish(sent);
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->results_size(), 600);
  for (int i = 0; i < 600; ++i) {
    EXPECT_EQ(r->results(i).stream(), "carbon");
    EXPECT_EQ(r->results(i).sequence(), static_cast<uint64_t>(i + 1));
  }
  // A second request while the first one's events are still held.
  ASSERT_TRUE(Publish({MakeEvent("carbon.other")}).ok());
  std::vector<Delivery> got;
  const absl::Time deadline = absl::Now() + kWait;
  while (got.size() < 601 && absl::Now() < deadline) {
    std::vector<Delivery> more;
    uint64_t missed = 0;
    ASSERT_TRUE((*sub)->Next(601 - got.size(), absl::Milliseconds(100), &more, &missed).ok());
    EXPECT_EQ(missed, 0u);
    for (Delivery& d : more) got.push_back(std::move(d));
  }
  ASSERT_EQ(got.size(), 601u);
  for (int i = 0; i < 600; ++i) {
    event::v1::Event want = sent[static_cast<size_t>(i)];
    want.set_publisher(caller_.SpiffeId());
    EXPECT_TRUE(google::protobuf::util::MessageDifferencer::Equals(got[i].message->event(), want))
        << "event " << i << ": " << got[i].message->event().ShortDebugString();
    EXPECT_EQ(got[i].message->sequence, static_cast<uint64_t>(i + 1));
  }
  EXPECT_EQ(got[600].message->event().subject(), "carbon.other");
  // Also as stored: a replay from the log.
  Subscriber replay(stub_.get(), [] {
    SubscribeRequest q;
    q.set_stream("carbon");
    q.mutable_start()->set_kind(bus::v1::StartPosition::KIND_EARLIEST);
    q.set_max_batch(4096);
    return q;
  }());
  ASSERT_TRUE(replay.WaitFor(601));
  auto stored = replay.deliveries();
  for (int i = 0; i < 600; ++i) {
    event::v1::Event want = sent[static_cast<size_t>(i)];
    want.set_publisher(caller_.SpiffeId());
    EXPECT_TRUE(google::protobuf::util::MessageDifferencer::Equals(stored[i].event(), want))
        << "stored event " << i;
  }
}

// Bytes that are not a PublishRequest are refused with INVALID_ARGUMENT naming
// the request type; nothing is stored.
TEST_F(BusServiceTest, AMalformedPublishRequestIsInvalidArgument) {
  ASSERT_TRUE(CreateStream("carbon", {"carbon.>"}).ok());
  grpc::GenericStub generic(channel_);
  // Field 1 (events), length-delimited, claiming 100 bytes where there are 3.
  const std::string garbage("\x0a\x64\x01\x02\x03", 5);
  grpc::Slice slice(garbage.data(), garbage.size());
  grpc::ByteBuffer request(&slice, 1);
  grpc::ByteBuffer response;
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + kWait));
  absl::Notification done;
  grpc::Status status;
  generic.UnaryCall(&ctx, "/cityos.bus.v1.BusService/Publish", grpc::StubOptions(), &request,
                    &response, [&](grpc::Status s) {
                      status = std::move(s);
                      done.Notify();
                    });
  done.WaitForNotification();
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(status.error_message(), HasSubstr("cityos.bus.v1.PublishRequest"));
  bus::v1::GetStreamRequest get;
  get.set_name("carbon");
  bus::v1::GetStreamResponse resp;
  grpc::ClientContext ctx2;
  ASSERT_TRUE(stub_->GetStream(&ctx2, get, &resp).ok());
  EXPECT_EQ(resp.stream().state().last_sequence(), 0u);
}

// ArenaPublishRequest on its own agrees with protobuf's parse of a
// PublishRequest: the same events, unknown fields skipped (also a field 1
// that is not length-delimited), every prefix of a valid request accepted or
// refused alike; refusals say why.
std::vector<event::v1::Event> ParsedEvents(const ArenaPublishRequest& r) {
  std::vector<event::v1::Event> out;
  for (const auto& e : r.events) out.push_back(*e);
  return out;
}

bool SameEvents(const std::vector<event::v1::Event>& a,
                const google::protobuf::RepeatedPtrField<event::v1::Event>& b) {
  if (a.size() != static_cast<size_t>(b.size())) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (!google::protobuf::util::MessageDifferencer::Equals(a[i], b[static_cast<int>(i)]))
      return false;
  }
  return true;
}

TEST(ArenaPublishRequestTest, ParsesAsProtobufDoes) {
  bus::v1::PublishRequest heap;
  for (int i = 0; i < 3; ++i) *heap.add_events() = MakeEvent("carbon.a", std::string(100 + i, 'z'));
  std::string bytes = heap.SerializeAsString();
  // Unknown fields around the events: a varint 7, a fixed32 9, field 1 as a
  // varint (wrong wire type: unknown to protobuf too).
  std::string unknown;
  wire::AppendVarintField(7, 42, &unknown);
  unknown.push_back(static_cast<char>(wire::MakeTag(9, wire::kFixed32)));
  unknown.append("abcd");
  wire::AppendVarintField(1, 5, &unknown);
  const std::string with_unknown = unknown + bytes + unknown;
  for (const std::string& input : {bytes, with_unknown}) {
    ArenaPublishRequest parsed;
    ASSERT_TRUE(parsed.Parse(input)) << parsed.error;
    EXPECT_TRUE(parsed.error.empty());
    bus::v1::PublishRequest want;
    ASSERT_TRUE(want.ParseFromString(input));
    EXPECT_TRUE(SameEvents(ParsedEvents(parsed), want.events()));
  }
  // Through a gRPC ByteBuffer of several slices.
  std::vector<grpc::Slice> slices = {grpc::Slice(bytes.substr(0, 10)),
                                     grpc::Slice(bytes.substr(10, 200)),
                                     grpc::Slice(bytes.substr(210))};
  grpc::ByteBuffer buffer(slices.data(), slices.size());
  ArenaPublishRequest from_buffer;
  ASSERT_TRUE(from_buffer.Parse(&buffer)) << from_buffer.error;
  EXPECT_TRUE(SameEvents(ParsedEvents(from_buffer), heap.events()));
  // Serialize gives the events back as a PublishRequest.
  bus::v1::PublishRequest again;
  ASSERT_TRUE(again.ParseFromString(from_buffer.Serialize()));
  EXPECT_TRUE(SameEvents(ParsedEvents(from_buffer), again.events()));
  // Every prefix: accepted exactly when protobuf accepts it, with its events.
  for (size_t n = 0; n < with_unknown.size(); ++n) {
    const std::string prefix = with_unknown.substr(0, n);
    bus::v1::PublishRequest want;
    const bool want_ok = want.ParseFromString(prefix);
    ArenaPublishRequest got;
    const bool got_ok = got.Parse(prefix);
    ASSERT_EQ(got_ok, want_ok) << "prefix of " << n << " bytes: " << got.error;
    if (got_ok) {
      EXPECT_TRUE(SameEvents(ParsedEvents(got), want.events())) << n;
    } else {
      EXPECT_THAT(got.error, ::testing::AnyOf(HasSubstr("not a valid cityos.bus.v1.PublishRequest"),
                                              HasSubstr("not a valid cityos.event.v1.Event")))
          << n;
    }
  }
  // A bad event is named by its index.
  std::string bad = bytes;
  wire::AppendLengthDelimitedHeader(1, 2, &bad);
  bad.append("\x0a\x05", 2);  // event field 1 claiming 5 bytes, none there
  ArenaPublishRequest refused;
  EXPECT_FALSE(refused.Parse(bad));
  EXPECT_THAT(refused.error, HasSubstr("events[3]: not a valid cityos.event.v1.Event"));
}

// Events share arenas of at most kChunkBytes of serialized events (one
// larger event gets an arena alone): an event kept alive keeps at most that
// much of its request.
TEST(ArenaPublishRequestTest, EventsShareArenasOfBoundedSize) {
  bus::v1::PublishRequest heap;
  for (int i = 0; i < 400; ++i) *heap.add_events() = MakeEvent("carbon.a", std::string(300, 'y'));
  *heap.add_events() = MakeEvent("carbon.big", std::string(ArenaPublishRequest::kChunkBytes + 10, 'b'));
  *heap.add_events() = MakeEvent("carbon.a", "after");
  ArenaPublishRequest parsed;
  ASSERT_TRUE(parsed.Parse(heap.SerializeAsString())) << parsed.error;
  ASSERT_EQ(parsed.events.size(), 402u);
  std::map<const google::protobuf::Arena*, size_t> bytes_per_arena;
  for (const auto& e : parsed.events) {
    ASSERT_NE(e->GetArena(), nullptr);
    bytes_per_arena[e->GetArena()] += e->ByteSizeLong();
  }
  EXPECT_GT(bytes_per_arena.size(), 3u);
  for (const auto& [arena, bytes] : bytes_per_arena) {
    if (arena == parsed.events[400]->GetArena()) {
      EXPECT_EQ(bytes, parsed.events[400]->ByteSizeLong());  // the large one alone
    } else {
      EXPECT_LE(bytes, ArenaPublishRequest::kChunkBytes);
    }
  }
  // Consecutive events share: order kept, arenas change only forward.
  EXPECT_EQ(parsed.events[0]->GetArena(), parsed.events[1]->GetArena());
  EXPECT_NE(parsed.events[401]->GetArena(), parsed.events[400]->GetArena());
  EXPECT_TRUE(SameEvents(ParsedEvents(parsed), heap.events()));
  // An event outlives the request and its arena-mates.
  std::shared_ptr<const event::v1::Event> kept = parsed.events[5];
  parsed = ArenaPublishRequest();
  EXPECT_EQ(kept->subject(), "carbon.a");
  EXPECT_EQ(kept->text_data(), std::string(300, 'y'));
}

// The memory an event keeps alive is its arena: sized from the events on it,
// so a request of one small event pins about its size, not a 64 KiB block.
// (Measured as the arena's SpaceAllocated: deterministic, no RSS.)
TEST(ArenaPublishRequestTest, ArenasAreSizedFromTheirEvents) {
  for (size_t text : {10, 300, 2000, 20000}) {
    bus::v1::PublishRequest one;
    *one.add_events() = MakeEvent("carbon.sensor.t", std::string(text, 't'));
    ArenaPublishRequest parsed;
    ASSERT_TRUE(parsed.Parse(one.SerializeAsString())) << parsed.error;
    ASSERT_EQ(parsed.events.size(), 1u);
    const google::protobuf::Arena* arena = parsed.events[0]->GetArena();
    ASSERT_NE(arena, nullptr);
    const size_t event_bytes = parsed.events[0]->ByteSizeLong();
    // The first block holds it (no second block), and is small.
    EXPECT_EQ(arena->SpaceAllocated(), ArenaPublishRequest::FirstBlockBytes(event_bytes, 1))
        << "an event of " << event_bytes << " bytes";
    EXPECT_LE(arena->SpaceAllocated(), 4 * event_bytes + 1024)
        << "an event of " << event_bytes << " bytes";
  }
  // A full chunk of small events: one arena, its first block large enough
  // (no second block).
  bus::v1::PublishRequest many;
  for (int i = 0; i < 60; ++i) *many.add_events() = MakeEvent("carbon.a", std::string(300, 'y'));
  ArenaPublishRequest parsed;
  ASSERT_TRUE(parsed.Parse(many.SerializeAsString())) << parsed.error;
  const google::protobuf::Arena* arena = parsed.events[0]->GetArena();
  size_t event_bytes = 0;
  for (const auto& e : parsed.events) {
    ASSERT_EQ(e->GetArena(), arena);
    event_bytes += e->ByteSizeLong();
  }
  EXPECT_EQ(arena->SpaceAllocated(), ArenaPublishRequest::FirstBlockBytes(event_bytes, 60));
  EXPECT_LE(arena->SpaceAllocated(), 4 * event_bytes);
}

// The reviewer's scenario through the real service: sensors publish one small
// event per Publish while a live subscriber holds every event. What the held
// events keep alive (their arenas) stays a small multiple of their size.
TEST_F(BusServiceTest, HeldEventsOfSmallPublishesPinLittleMemory) {
  constexpr size_t kEvents = 200;
  SubscribeOptions live;
  live.subject_pattern = "carbon.sensor.>";
  live.queue_depth = kEvents;
  auto sub = bus_->Subscribe(caller_, live);
  ASSERT_TRUE(sub.ok()) << sub.status();
  for (size_t i = 0; i < kEvents; ++i) {
    auto r = Publish({MakeEvent("carbon.sensor.t", std::string(250, 'a' + i % 26))});
    ASSERT_TRUE(r.ok()) << r.status();
  }
  std::vector<Delivery> held;
  uint64_t missed = 0;
  while (held.size() < kEvents) {
    const size_t before = held.size();
    ASSERT_TRUE((*sub)->Next(kEvents, kWait, &held, &missed).ok());
    ASSERT_GT(held.size(), before) << "no delivery within " << kWait;
  }
  ASSERT_EQ(held.size(), kEvents);
  EXPECT_EQ(missed, 0u);
  std::set<const google::protobuf::Arena*> arenas;
  size_t event_bytes = 0;
  for (const Delivery& d : held) {
    const event::v1::Event& e = d.message->event();
    EXPECT_EQ(e.publisher(), caller_.SpiffeId());
    ASSERT_NE(e.GetArena(), nullptr);  // published shared, on its request's arena
    arenas.insert(e.GetArena());
    event_bytes += e.ByteSizeLong();
  }
  EXPECT_EQ(arenas.size(), kEvents);  // one request, one arena
  size_t pinned = 0;
  for (const google::protobuf::Arena* a : arenas) pinned += a->SpaceAllocated();
  EXPECT_LE(pinned, 4 * event_bytes)
      << pinned / kEvents << " arena bytes per held event of " << event_bytes / kEvents
      << " bytes";
}

// --- PublishStream ---

using PublishStreamCall = grpc::ClientReaderWriter<bus::v1::PublishStreamRequest,
                                                   bus::v1::PublishStreamResponse>;

// Writes `batches` on one PublishStream while reading the answers on another
// thread; returns the answers in arrival order.
std::vector<bus::v1::PublishStreamResponse> RunPublishStream(
    BusService::Stub* stub, const std::vector<bus::v1::PublishStreamRequest>& batches,
    grpc::Status* status) {
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Minutes(2)));
  std::unique_ptr<PublishStreamCall> call = stub->PublishStream(&ctx);
  std::vector<bus::v1::PublishStreamResponse> answers;
  std::thread reader([&] {
    bus::v1::PublishStreamResponse r;
    while (call->Read(&r)) answers.push_back(r);
  });
  for (const auto& b : batches) {
    if (!call->Write(b)) break;
  }
  call->WritesDone();
  reader.join();
  *status = call->Finish();
  return answers;
}

TEST_F(BusServiceTest, PublishStreamAnswersManyBatchesInOrder) {
  ASSERT_TRUE(CreateStream("carbon", {"carbon.>"}, bus::v1::DURABILITY_FSYNC).ok());
  constexpr int kBatches = 300;
  constexpr int kPerBatch = 5;
  std::vector<bus::v1::PublishStreamRequest> batches(kBatches);
  for (int i = 0; i < kBatches; ++i) {
    batches[i].set_batch_id(1000 + 3 * i);  // need not be contiguous
    for (int j = 0; j < kPerBatch; ++j) {
      *batches[i].add_events() = MakeEvent("carbon.meter.reading", std::to_string(i));
    }
  }
  grpc::Status status;
  auto answers = RunPublishStream(stub_.get(), batches, &status);
  ASSERT_TRUE(status.ok()) << status.error_message();
  ASSERT_EQ(answers.size(), static_cast<size_t>(kBatches));
  uint64_t next = 1;
  for (int i = 0; i < kBatches; ++i) {
    ASSERT_EQ(answers[i].batch_id(), static_cast<uint64_t>(1000 + 3 * i));
    ASSERT_EQ(answers[i].error_code(), 0) << answers[i].error_message();
    ASSERT_EQ(answers[i].results_size(), kPerBatch);
    for (const auto& r : answers[i].results()) {
      EXPECT_EQ(r.stream(), "carbon");
      EXPECT_EQ(r.sequence(), next++);
    }
  }
}

TEST_F(BusServiceTest, PublishStreamAnswersABadBatchWithAnErrorAndGoesOn) {
  ASSERT_TRUE(CreateStream("carbon", {"carbon.>"}).ok());
  std::vector<bus::v1::PublishStreamRequest> batches(20);
  for (int i = 0; i < 20; ++i) {
    batches[i].set_batch_id(i + 1);
    *batches[i].add_events() = MakeEvent("carbon.meter.reading");
    *batches[i].add_events() = MakeEvent("carbon.meter.status");
  }
  batches[7].mutable_events(1)->set_subject("carbon..status");  // bad: nothing of it stored
  batches[12].clear_events();                                    // bad: empty
  grpc::Status status;
  auto answers = RunPublishStream(stub_.get(), batches, &status);
  ASSERT_TRUE(status.ok()) << status.error_message();
  ASSERT_EQ(answers.size(), 20u);
  uint64_t next = 1;
  for (int i = 0; i < 20; ++i) {
    ASSERT_EQ(answers[i].batch_id(), static_cast<uint64_t>(i + 1));
    if (i == 7 || i == 12) {
      EXPECT_EQ(answers[i].error_code(), static_cast<int>(grpc::StatusCode::INVALID_ARGUMENT));
      EXPECT_EQ(answers[i].results_size(), 0);
      continue;
    }
    ASSERT_EQ(answers[i].error_code(), 0) << answers[i].error_message();
    for (const auto& r : answers[i].results()) EXPECT_EQ(r.sequence(), next++);
  }
  EXPECT_THAT(answers[7].error_message(), HasSubstr("events[1]: event.subject"));
  EXPECT_THAT(answers[12].error_message(), HasSubstr("events: at least one event"));
  EXPECT_EQ(next, 1u + 18 * 2);  // gap-free: the bad batch stored nothing
}

TEST_F(BusServiceTest, PublishStreamCopesWithAClientThatCancelsMidStream) {
  ASSERT_TRUE(CreateStream("carbon", {"carbon.>"}).ok());
  {
    grpc::ClientContext ctx;
    std::unique_ptr<PublishStreamCall> call = stub_->PublishStream(&ctx);
    for (int i = 0; i < 200; ++i) {
      bus::v1::PublishStreamRequest b;
      b.set_batch_id(i);
      *b.add_events() = MakeEvent("carbon.meter.reading");
      if (!call->Write(b)) break;
    }
    ctx.TryCancel();  // without reading a single answer
    EXPECT_EQ(call->Finish().error_code(), grpc::StatusCode::CANCELLED);
  }
  // The service goes on, and the stream stays gap-free. (Batches the server
  // had already taken may still be stored after the cancel.)
  auto r = Publish({MakeEvent("carbon.meter.reading")});
  ASSERT_TRUE(r.ok()) << r.status();
  bus::v1::GetStreamRequest get;
  get.set_name("carbon");
  bus::v1::GetStreamResponse resp;
  grpc::ClientContext ctx;
  ASSERT_TRUE(stub_->GetStream(&ctx, get, &resp).ok());
  EXPECT_GE(resp.stream().state().last_sequence(), r->results(0).sequence());
  EXPECT_EQ(resp.stream().state().events(), resp.stream().state().last_sequence());
}

TEST_F(BusServiceTest, SubscribeHonoursMaxBatchAndTheResponseSizeBound) {
  ASSERT_TRUE(CreateStream("carbon", {"carbon.>"}).ok());
  std::vector<event::v1::Event> events;
  for (int i = 0; i < 10; ++i) events.push_back(MakeEvent("carbon.big", std::string(4 << 10, 'b')));
  ASSERT_TRUE(Publish(std::move(events)).ok());
  PublishN("carbon.small", 10);

  SubscribeRequest two;
  two.set_stream("carbon");
  two.mutable_start()->set_kind(bus::v1::StartPosition::KIND_EARLIEST);
  two.set_max_batch(2);
  Subscriber by_two(stub_.get(), two);
  ASSERT_TRUE(by_two.WaitFor(20));
  EXPECT_EQ(Sequences(by_two.deliveries()), Range(1, 20));
  EXPECT_LE(by_two.largest_response(), 2u);
  by_two.Cancel();
  by_two.WaitForEnd();

  // A service whose responses close at 10 KiB splits a batch of 4 KiB events.
  StopServer();
  service_options_.max_response_bytes = 10 << 10;
  StartServer();
  SubscribeRequest all = two;
  all.set_max_batch(0);  // the default, 256
  Subscriber split(stub_.get(), all);
  ASSERT_TRUE(split.WaitFor(20));
  EXPECT_EQ(Sequences(split.deliveries()), Range(1, 20));
  EXPECT_GE(split.responses(), 5u);  // at most two 4 KiB events per response
}

// --- replay ---

TEST_F(BusServiceTest, ReplayFromEarliestFromASequenceAndFromATime) {
  ASSERT_TRUE(CreateStream("carbon", {"carbon.>"}).ok());
  PublishN("carbon.meter.reading", 5);
  PublishN("carbon.meter.status", 5);

  SubscribeRequest earliest;
  earliest.set_stream("carbon");
  earliest.mutable_start()->set_kind(bus::v1::StartPosition::KIND_EARLIEST);
  Subscriber from_start(stub_.get(), earliest);
  ASSERT_TRUE(from_start.WaitFor(10));
  EXPECT_EQ(Sequences(from_start.deliveries()), Range(1, 10));

  SubscribeRequest at_seq = earliest;
  at_seq.mutable_start()->set_kind(bus::v1::StartPosition::KIND_SEQUENCE);
  at_seq.mutable_start()->set_sequence(4);
  Subscriber from_four(stub_.get(), at_seq);
  ASSERT_TRUE(from_four.WaitFor(7));
  EXPECT_EQ(Sequences(from_four.deliveries()), Range(4, 10));

  // The second Publish call stored events 6..10 with one publish time, later
  // than the first call's.
  bus::v1::Delivery sixth = from_start.deliveries()[5];
  ASSERT_EQ(sixth.sequence(), 6u);
  SubscribeRequest at_time = earliest;
  at_time.mutable_start()->set_kind(bus::v1::StartPosition::KIND_TIME);
  *at_time.mutable_start()->mutable_time() = sixth.publish_time();
  Subscriber from_time(stub_.get(), at_time);
  ASSERT_TRUE(from_time.WaitFor(5));
  EXPECT_EQ(Sequences(from_time.deliveries()), Range(6, 10));

  // With a filter, then live: replay continues with new events.
  SubscribeRequest filtered = earliest;
  filtered.set_subject_pattern("carbon.*.status");
  Subscriber status_only(stub_.get(), filtered);
  ASSERT_TRUE(status_only.WaitFor(5));
  PublishN("carbon.meter.status", 1);
  ASSERT_TRUE(status_only.WaitFor(6));
  EXPECT_EQ(Sequences(status_only.deliveries()), Range(6, 11));
  ASSERT_TRUE(from_start.WaitFor(11));
  EXPECT_EQ(Sequences(from_start.deliveries()), Range(1, 11));
}

// --- durable consumers ---

TEST_F(BusServiceTest, DurableConsumerDeliversAcksAndRedeliversAfterAckWait) {
  ASSERT_TRUE(CreateStream("orders", {"orders.>"}).ok());
  ASSERT_TRUE(CreateConsumer("orders", "billing", absl::Milliseconds(200)).ok());
  PublishN("orders.created", 3);
  Subscriber sub(stub_.get(), Durable("orders", "billing"));
  ASSERT_TRUE(sub.WaitFor(3));
  auto first = sub.deliveries();
  EXPECT_EQ(Sequences({first.begin(), first.begin() + 3}), Range(1, 3));
  EXPECT_EQ(first[0].delivery_count(), 1u);

  auto floor = Ack("orders", "billing", {1, 2});
  ASSERT_TRUE(floor.ok()) << floor.status();
  EXPECT_EQ(*floor, 3u);
  // 3 is not acked: it comes again after ack_wait, counted.
  ASSERT_TRUE(sub.WaitForDelivery(
      [](const bus::v1::Delivery& d) { return d.sequence() == 3 && d.delivery_count() >= 2; }));
  floor = Ack("orders", "billing", {3});
  ASSERT_TRUE(floor.ok());
  EXPECT_EQ(*floor, 4u);

  bus::v1::GetConsumerRequest req;
  req.set_stream("orders");
  req.set_name("billing");
  bus::v1::GetConsumerResponse resp;
  grpc::ClientContext ctx;
  ASSERT_TRUE(stub_->GetConsumer(&ctx, req, &resp).ok());
  EXPECT_EQ(resp.consumer().state().ack_floor(), 4u);
  EXPECT_EQ(resp.consumer().state().members(), 1u);
  EXPECT_GE(resp.consumer().state().redelivered(), 1u);
  EXPECT_EQ(resp.consumer().config().ack_wait().nanos(), 200'000'000);
}

TEST_F(BusServiceTest, NakedSequencesComeBackAtOnce) {
  ASSERT_TRUE(CreateStream("orders", {"orders.>"}).ok());
  ASSERT_TRUE(CreateConsumer("orders", "billing").ok());  // ack_wait 30 s
  PublishN("orders.created", 2);
  Subscriber sub(stub_.get(), Durable("orders", "billing"));
  ASSERT_TRUE(sub.WaitFor(2));
  ASSERT_TRUE(Ack("orders", "billing", {1}, {2}).ok());
  ASSERT_TRUE(sub.WaitForDelivery(
      [](const bus::v1::Delivery& d) { return d.sequence() == 2 && d.delivery_count() == 2; }));
}

TEST_F(BusServiceTest, ConsumerGroupMembersShareEventsEachToExactlyOne) {
  ASSERT_TRUE(CreateStream("orders", {"orders.>"}).ok());
  ASSERT_TRUE(CreateConsumer("orders", "workers").ok());  // ack_wait 30 s: no redelivery here
  SubscribeRequest req = Durable("orders", "workers");
  req.set_max_batch(1);
  Subscriber a(stub_.get(), req);
  Subscriber b(stub_.get(), req);
  {
    bus::v1::GetConsumerRequest get;
    get.set_stream("orders");
    get.set_name("workers");
    bus::v1::GetConsumerResponse resp;
    grpc::ClientContext ctx;
    ASSERT_TRUE(stub_->GetConsumer(&ctx, get, &resp).ok());
    EXPECT_EQ(resp.consumer().state().members(), 2u);
  }
  constexpr int kEvents = 200;
  for (int i = 0; i < kEvents / 10; ++i) PublishN("orders.created", 10);

  // Wait until both together have everything.
  absl::Time deadline = absl::Now() + kWait;
  while (a.deliveries().size() + b.deliveries().size() < kEvents && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(20));
  }
  std::vector<uint64_t> all = Sequences(a.deliveries());
  for (uint64_t s : Sequences(b.deliveries())) all.push_back(s);
  std::multiset<uint64_t> seen(all.begin(), all.end());
  ASSERT_EQ(seen.size(), static_cast<size_t>(kEvents));
  for (uint64_t s = 1; s <= kEvents; ++s) EXPECT_EQ(seen.count(s), 1u) << "sequence " << s;
}

TEST_F(BusServiceTest, ALeavingMembersUnackedEventsGoToTheOther) {
  ASSERT_TRUE(CreateStream("orders", {"orders.>"}).ok());
  ASSERT_TRUE(CreateConsumer("orders", "workers").ok());  // ack_wait 30 s
  auto leaver = std::make_unique<Subscriber>(stub_.get(), Durable("orders", "workers"));
  PublishN("orders.created", 5);
  ASSERT_TRUE(leaver->WaitFor(5));
  EXPECT_EQ(Sequences(leaver->deliveries()), Range(1, 5));
  ASSERT_TRUE(Ack("orders", "workers", {1, 2}).ok());

  Subscriber stayer(stub_.get(), Durable("orders", "workers"));
  leaver->Cancel();
  EXPECT_EQ(leaver->WaitForEnd().error_code(), grpc::StatusCode::CANCELLED);
  leaver.reset();

  ASSERT_TRUE(stayer.WaitFor(3));
  auto got = stayer.deliveries();
  std::set<uint64_t> seqs;
  for (const auto& d : got) {
    seqs.insert(d.sequence());
    EXPECT_EQ(d.delivery_count(), 2u) << d.sequence();
  }
  EXPECT_EQ(seqs, (std::set<uint64_t>{3, 4, 5}));
}

TEST_F(BusServiceTest, ConsumerPositionSurvivesABusRestart) {
  ASSERT_TRUE(CreateStream("orders", {"orders.>"}).ok());
  ASSERT_TRUE(CreateConsumer("orders", "billing").ok());
  PublishN("orders.created", 5);
  {
    Subscriber sub(stub_.get(), Durable("orders", "billing"));
    ASSERT_TRUE(sub.WaitFor(5));
    auto floor = Ack("orders", "billing", {1, 2, 3});
    ASSERT_TRUE(floor.ok());
    EXPECT_EQ(*floor, 4u);
  }
  Restart();

  bus::v1::GetConsumerRequest get;
  get.set_stream("orders");
  get.set_name("billing");
  bus::v1::GetConsumerResponse resp;
  grpc::ClientContext ctx;
  ASSERT_TRUE(stub_->GetConsumer(&ctx, get, &resp).ok());
  EXPECT_EQ(resp.consumer().state().ack_floor(), 4u);

  Subscriber sub(stub_.get(), Durable("orders", "billing"));
  ASSERT_TRUE(sub.WaitFor(2));
  std::set<uint64_t> seqs;
  for (uint64_t s : Sequences(sub.deliveries())) seqs.insert(s);
  EXPECT_EQ(seqs, (std::set<uint64_t>{4, 5}));
}

TEST_F(BusServiceTest, DeletingAConsumerEndsItsSubscribersWithNotFound) {
  ASSERT_TRUE(CreateStream("orders", {"orders.>"}).ok());
  ASSERT_TRUE(CreateConsumer("orders", "billing").ok());
  Subscriber sub(stub_.get(), Durable("orders", "billing"));
  bus::v1::DeleteConsumerRequest req;
  req.set_stream("orders");
  req.set_name("billing");
  bus::v1::DeleteConsumerResponse resp;
  grpc::ClientContext ctx;
  ASSERT_TRUE(stub_->DeleteConsumer(&ctx, req, &resp).ok());
  EXPECT_EQ(sub.WaitForEnd().error_code(), grpc::StatusCode::NOT_FOUND);
}

TEST_F(BusServiceTest, ClosingTheBusEndsSubscribersWithUnavailable) {
  ASSERT_TRUE(CreateStream("orders", {"orders.>"}).ok());
  Subscriber live(stub_.get(), Live("orders.>"));
  SubscribeRequest replay;
  replay.set_stream("orders");
  Subscriber replaying(stub_.get(), replay);
  ASSERT_TRUE(bus_->Close().ok());
  EXPECT_EQ(live.WaitForEnd().error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_EQ(replaying.WaitForEnd().error_code(), grpc::StatusCode::UNAVAILABLE);
}

// --- administration ---

TEST_F(BusServiceTest, StreamAndConsumerAdministration) {
  ASSERT_TRUE(CreateStream("carbon", {"carbon.>"}).ok());
  EXPECT_TRUE(CreateStream("carbon", {"carbon.>"}).ok());  // identical: idempotent
  EXPECT_EQ(CreateStream("carbon", {"carbon.>"}, bus::v1::DURABILITY_NONE).error_code(),
            grpc::StatusCode::ALREADY_EXISTS);
  ASSERT_TRUE(CreateStream("mobility", {"mobility.>"}, bus::v1::DURABILITY_INTERVAL).ok());
  PublishN("carbon.meter.reading", 3);

  {
    bus::v1::ListStreamsResponse resp;
    grpc::ClientContext ctx;
    ASSERT_TRUE(stub_->ListStreams(&ctx, {}, &resp).ok());
    ASSERT_EQ(resp.streams_size(), 2);
    EXPECT_EQ(resp.streams(0).config().name(), "carbon");
    EXPECT_EQ(resp.streams(1).config().name(), "mobility");
    EXPECT_EQ(resp.streams(1).config().durability(), bus::v1::DURABILITY_INTERVAL);
    EXPECT_EQ(resp.streams(1).config().sync_interval().nanos(), 100'000'000);  // the default
    EXPECT_EQ(resp.streams(1).config().segment_bytes(), 64u << 20);             // the default
  }
  {
    bus::v1::GetStreamRequest req;
    req.set_name("carbon");
    bus::v1::GetStreamResponse resp;
    grpc::ClientContext ctx;
    ASSERT_TRUE(stub_->GetStream(&ctx, req, &resp).ok());
    EXPECT_EQ(resp.stream().state().first_sequence(), 1u);
    EXPECT_EQ(resp.stream().state().last_sequence(), 3u);
    EXPECT_EQ(resp.stream().state().events(), 3u);
    EXPECT_GT(resp.stream().state().bytes(), 0u);
    EXPECT_TRUE(resp.stream().state().has_last_time());
    EXPECT_THAT(resp.stream().config().subjects(), ElementsAre("carbon.>"));
  }

  ASSERT_TRUE(CreateConsumer("carbon", "audit").ok());
  EXPECT_TRUE(CreateConsumer("carbon", "audit").ok());  // identical
  EXPECT_EQ(CreateConsumer("carbon", "audit", absl::Seconds(5)).error_code(),
            grpc::StatusCode::ALREADY_EXISTS);
  ASSERT_TRUE(CreateConsumer("carbon", "billing").ok());
  {
    bus::v1::ListConsumersRequest req;
    req.set_stream("carbon");
    bus::v1::ListConsumersResponse resp;
    grpc::ClientContext ctx;
    ASSERT_TRUE(stub_->ListConsumers(&ctx, req, &resp).ok());
    ASSERT_EQ(resp.consumers_size(), 2);
    EXPECT_EQ(resp.consumers(0).config().name(), "audit");
    EXPECT_EQ(resp.consumers(0).config().start().kind(), bus::v1::StartPosition::KIND_EARLIEST);
    EXPECT_EQ(resp.consumers(0).config().max_in_flight(), 1024u);  // the default
    EXPECT_EQ(resp.consumers(0).state().pending(), 3u);
    EXPECT_EQ(resp.consumers(1).config().name(), "billing");
  }
  {
    bus::v1::DeleteConsumerRequest req;
    req.set_stream("carbon");
    req.set_name("billing");
    bus::v1::DeleteConsumerResponse resp;
    grpc::ClientContext ctx;
    ASSERT_TRUE(stub_->DeleteConsumer(&ctx, req, &resp).ok());
    grpc::ClientContext ctx2;
    EXPECT_EQ(stub_->DeleteConsumer(&ctx2, req, &resp).error_code(), grpc::StatusCode::NOT_FOUND);
  }
  {
    bus::v1::DeleteStreamRequest req;
    req.set_name("mobility");
    bus::v1::DeleteStreamResponse resp;
    grpc::ClientContext ctx;
    ASSERT_TRUE(stub_->DeleteStream(&ctx, req, &resp).ok());
    grpc::ClientContext ctx2;
    EXPECT_EQ(stub_->DeleteStream(&ctx2, req, &resp).error_code(), grpc::StatusCode::NOT_FOUND);
  }
  {
    bus::v1::ListStreamsResponse resp;
    grpc::ClientContext ctx;
    ASSERT_TRUE(stub_->ListStreams(&ctx, {}, &resp).ok());
    ASSERT_EQ(resp.streams_size(), 1);
    EXPECT_EQ(resp.streams(0).consumers(), 1u);
  }
}

TEST_F(BusServiceTest, UnknownStreamsAndConsumersAreNotFound) {
  ASSERT_TRUE(CreateStream("carbon", {"carbon.>"}).ok());
  {
    bus::v1::GetStreamRequest req;
    req.set_name("nope");
    bus::v1::GetStreamResponse resp;
    grpc::ClientContext ctx;
    EXPECT_EQ(stub_->GetStream(&ctx, req, &resp).error_code(), grpc::StatusCode::NOT_FOUND);
  }
  {
    bus::v1::GetConsumerRequest req;
    req.set_stream("carbon");
    req.set_name("nope");
    bus::v1::GetConsumerResponse resp;
    grpc::ClientContext ctx;
    EXPECT_EQ(stub_->GetConsumer(&ctx, req, &resp).error_code(), grpc::StatusCode::NOT_FOUND);
  }
  {
    bus::v1::ListConsumersRequest req;
    req.set_stream("nope");
    bus::v1::ListConsumersResponse resp;
    grpc::ClientContext ctx;
    EXPECT_EQ(stub_->ListConsumers(&ctx, req, &resp).error_code(), grpc::StatusCode::NOT_FOUND);
  }
  EXPECT_EQ(CreateConsumer("nope", "c").error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(Ack("carbon", "nope", {1}).status().code(), absl::StatusCode::kNotFound);
  {
    Subscriber replay_unknown(stub_.get(), [] {
      SubscribeRequest r;
      r.set_stream("nope");
      return r;
    }());
    EXPECT_EQ(replay_unknown.WaitForEnd().error_code(), grpc::StatusCode::NOT_FOUND);
    Subscriber durable_unknown(stub_.get(), Durable("carbon", "nope"));
    EXPECT_EQ(durable_unknown.WaitForEnd().error_code(), grpc::StatusCode::NOT_FOUND);
  }
}

// --- bad input ---

TEST_F(BusServiceTest, BadStreamConfigsAreInvalidArgumentNamingTheField) {
  ASSERT_TRUE(CreateStream("carbon", {"carbon.>"}).ok());
  struct Case {
    std::function<void(bus::v1::StreamConfig*)> edit;
    std::string message;
  };
  std::vector<Case> cases = {
      {[](auto* c) { c->set_name("bad name!"); }, "stream name \"bad name!\""},
      {[](auto* c) { c->set_name(""); }, "stream name"},
      {[](auto* c) { c->clear_subjects(); }, "subjects: at least one"},
      {[](auto* c) { c->set_subjects(0, "health..x"); }, "subjects[0]"},
      {[](auto* c) { c->set_subjects(0, "carbon.meter.*"); }, "overlaps \"carbon.>\""},
      {[](auto* c) { c->set_durability(static_cast<bus::v1::Durability>(42)); },
       "config.durability: unknown value 42"},
      {[](auto* c) { c->mutable_sync_interval()->set_seconds(-1); },
       "config.sync_interval: must not be negative"},
      {[](auto* c) { c->mutable_max_age()->set_nanos(2'000'000'000); },
       "config.max_age: nanos 2000000000 is out of range"},
  };
  for (const Case& c : cases) {
    bus::v1::CreateStreamRequest req;
    req.mutable_config()->set_name("other");
    req.mutable_config()->add_subjects("health.>");
    c.edit(req.mutable_config());
    bus::v1::CreateStreamResponse resp;
    grpc::ClientContext ctx;
    grpc::Status s = stub_->CreateStream(&ctx, req, &resp);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << c.message;
    EXPECT_THAT(s.error_message(), HasSubstr(c.message));
  }
  bus::v1::CreateStreamResponse resp;
  grpc::ClientContext ctx;
  grpc::Status missing = stub_->CreateStream(&ctx, {}, &resp);
  EXPECT_EQ(missing.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(missing.error_message(), HasSubstr("config: required"));
}

TEST_F(BusServiceTest, BadEventsAreInvalidArgumentAndNothingIsStored) {
  ASSERT_TRUE(CreateStream("carbon", {"carbon.>"}).ok());
  auto good = Publish({MakeEvent("carbon.a"), MakeEvent("carbon.b"), MakeEvent("carbon.c"),
                       MakeEvent("carbon.d")});
  ASSERT_TRUE(good.ok());
  std::vector<event::v1::Event> events = {MakeEvent("carbon.a"), MakeEvent("carbon.b"),
                                          MakeEvent("carbon.c"), MakeEvent("carbon.d")};
  events[3].set_subject("carbon..d");
  auto r = Publish(events);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("events[3]: event.subject: "));
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("token 2 is empty"));

  auto after = Publish({MakeEvent("carbon.a")});
  ASSERT_TRUE(after.ok());
  EXPECT_EQ(after->results(0).sequence(), 5u);  // the bad batch stored nothing

  event::v1::Event big = MakeEvent("carbon.big", std::string(kMaxEventBytes + 1, 'b'));
  auto oversize = Publish({MakeEvent("carbon.a"), big});
  EXPECT_EQ(oversize.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(oversize.status().message()), HasSubstr("events[1]"));

  event::v1::Event no_owner = MakeEvent("carbon.a");
  no_owner.clear_owner();
  auto missing = Publish({no_owner});
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(missing.status().message()), HasSubstr("events[0]: event.owner"));

  auto empty = Publish({});
  EXPECT_EQ(empty.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(empty.status().message()), HasSubstr("events: at least one event is required"));

  bus::v1::GetStreamRequest get;
  get.set_name("carbon");
  bus::v1::GetStreamResponse resp;
  grpc::ClientContext ctx;
  ASSERT_TRUE(stub_->GetStream(&ctx, get, &resp).ok());
  EXPECT_EQ(resp.stream().state().last_sequence(), 5u);
}

TEST_F(BusServiceTest, BadSubscribeAndConsumerRequestsAreInvalidArgument) {
  ASSERT_TRUE(CreateStream("carbon", {"carbon.>"}).ok());
  {
    Subscriber bad_pattern(stub_.get(), Live("carbon.>.x"));
    grpc::Status s = bad_pattern.WaitForEnd();
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_THAT(s.error_message(), HasSubstr("carbon.>.x"));
  }
  {
    SubscribeRequest r;
    r.set_stream("carbon");
    r.mutable_start()->set_kind(bus::v1::StartPosition::KIND_SEQUENCE);
    Subscriber no_seq(stub_.get(), r);
    grpc::Status s = no_seq.WaitForEnd();
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_THAT(s.error_message(), HasSubstr("start.sequence: must be at least 1"));
  }
  {
    SubscribeRequest r;
    r.set_stream("carbon");
    r.mutable_start()->set_kind(bus::v1::StartPosition::KIND_TIME);
    Subscriber no_time(stub_.get(), r);
    grpc::Status s = no_time.WaitForEnd();
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_THAT(s.error_message(), HasSubstr("start.time: required"));
  }
  {
    Subscriber nothing(stub_.get(), SubscribeRequest());
    EXPECT_EQ(nothing.WaitForEnd().error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  }
  {
    bus::v1::CreateConsumerRequest req;
    req.mutable_config()->set_stream("carbon");
    req.mutable_config()->set_name("bad/name");
    bus::v1::CreateConsumerResponse resp;
    grpc::ClientContext ctx;
    grpc::Status s = stub_->CreateConsumer(&ctx, req, &resp);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_THAT(s.error_message(), HasSubstr("consumer name \"bad/name\""));
  }
  {
    bus::v1::CreateConsumerRequest req;
    req.mutable_config()->set_stream("carbon");
    req.mutable_config()->set_name("c");
    req.mutable_config()->mutable_ack_wait()->set_seconds(-5);
    bus::v1::CreateConsumerResponse resp;
    grpc::ClientContext ctx;
    grpc::Status s = stub_->CreateConsumer(&ctx, req, &resp);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_THAT(s.error_message(), HasSubstr("config.ack_wait: must not be negative"));
  }
  {
    bus::v1::CreateConsumerRequest req;
    req.mutable_config()->set_stream("carbon");
    req.mutable_config()->set_name("c");
    req.mutable_config()->set_filter_subject("carbon..x");
    bus::v1::CreateConsumerResponse resp;
    grpc::ClientContext ctx;
    grpc::Status s = stub_->CreateConsumer(&ctx, req, &resp);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_THAT(s.error_message(), HasSubstr("filter_subject"));
  }
  EXPECT_THAT(std::string(Ack("", "c", {1}).status().message()), HasSubstr("stream: required"));
}

TEST_F(BusServiceTest, ACallerTheResolverRejectsGetsItsError) {
  resolver_ = [](grpc::ServerContext*) -> absl::StatusOr<Principal> {
    return absl::UnauthenticatedError("no client certificate");
  };
  auto r = Publish({MakeEvent("carbon.a")});
  EXPECT_EQ(r.status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("no client certificate"));
  EXPECT_EQ(CreateStream("carbon", {"carbon.>"}).error_code(), grpc::StatusCode::UNAUTHENTICATED);
  Subscriber sub(stub_.get(), Live("carbon.>"));
  EXPECT_EQ(sub.WaitForEnd().error_code(), grpc::StatusCode::UNAUTHENTICATED);
}

// --- slow consumers ---

TEST_F(BusServiceTest, AStalledSubscriberBlocksNeitherThePublisherNorOthers) {
  // Events big enough that the stalled call's gRPC buffers fill up, so that
  // its bounded queue (kLiveQueueDepth events) overflows.
  constexpr int kEvents = 3000;
  const std::string payload(8 << 10, 'p');
  Subscriber stalled(stub_.get(), Live("mobility.>"), /*read=*/false);
  Subscriber healthy(stub_.get(), Live("mobility.>"));

  // The publisher gets through every call while one subscriber reads nothing.
  for (int i = 0; i < kEvents / 10; ++i) {
    std::vector<event::v1::Event> batch;
    for (int j = 0; j < 10; ++j) batch.push_back(MakeEvent("mobility.bus.position", payload));
    ASSERT_TRUE(Publish(std::move(batch)).ok());
  }
  // The other subscriber accounts for every event (received, or reported
  // missed if it fell behind itself) while the stalled one still stalls.
  ASSERT_TRUE(healthy.WaitFor(kEvents, /*count_missed=*/true));
  EXPECT_EQ(healthy.deliveries().size() + healthy.missed(), static_cast<size_t>(kEvents));
  EXPECT_GT(healthy.deliveries().size(), 0u);

  // Once it reads again, the stalled one learns how many it missed.
  stalled.StartReading();
  ASSERT_TRUE(stalled.WaitFor(kEvents, /*count_missed=*/true));
  EXPECT_EQ(stalled.deliveries().size() + stalled.missed(), static_cast<size_t>(kEvents));
  EXPECT_GT(stalled.missed(), 0u);
}

}  // namespace
}  // namespace cityos
