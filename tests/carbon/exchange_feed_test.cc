// ExchangeFeed against a fake exchange server (mTLS, raw Subscribe): the feed
// sends a real SubscribeRequest, reads the responses as bytes, hands out the
// deliveries; a malformed response is refused (nothing handed out), the
// stream reconnects and resumes after the last processed delivery.
#include "exchange_feed.h"

#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <atomic>
#include <string>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "cityos/ca.h"
#include "cityos/carbon/v1/carbon.pb.h"
#include "cityos/event.h"
#include "cityos/exchange/v1/exchange.grpc.pb.h"
#include "cityos/tls.h"
#include "testutil.h"

namespace cityos::carbon {
namespace {

namespace xv1 = ::cityos::exchange::v1;
constexpr char kTrustDomain[] = "test.city";

// Writes the given responses (raw bytes) and then keeps the stream open
// until the client cancels.
class Writer : public grpc::ServerWriteReactor<grpc::ByteBuffer> {
 public:
  explicit Writer(std::vector<std::string> responses)
      : responses_(std::move(responses)) {
    Next();
  }
  void OnWriteDone(bool ok) override {
    if (!ok) {
      FinishOnce(grpc::Status::CANCELLED);
      return;
    }
    Next();
  }
  void OnCancel() override { FinishOnce(grpc::Status::CANCELLED); }
  void OnDone() override { delete this; }

 private:
  void Next() {
    if (next_ >= responses_.size()) return;  // open until cancelled
    grpc::Slice s(responses_[next_++]);
    buffer_ = grpc::ByteBuffer(&s, 1);
    StartWrite(&buffer_);
  }
  void FinishOnce(const grpc::Status& s) {
    if (!finished_.exchange(true)) Finish(s);
  }
  std::vector<std::string> responses_;
  size_t next_ = 0;
  grpc::ByteBuffer buffer_;
  std::atomic<bool> finished_{false};
};

// Each Subscribe call gets the next script of responses.
class FakeExchange
    : public xv1::ExchangeService::WithRawCallbackMethod_Subscribe<
          xv1::ExchangeService::Service> {
 public:
  explicit FakeExchange(std::vector<std::vector<std::string>> scripts)
      : scripts_(std::move(scripts)) {}

  grpc::ServerWriteReactor<grpc::ByteBuffer>* Subscribe(
      grpc::CallbackServerContext* /*ctx*/,
      const grpc::ByteBuffer* request) override {
    std::vector<grpc::Slice> slices;
    (void)request->Dump(&slices);
    std::string bytes;
    for (const grpc::Slice& s : slices)
      bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
    xv1::SubscribeRequest req;
    absl::MutexLock l(&mu_);
    requests_.push_back(req.ParseFromString(bytes) ? req
                                                   : xv1::SubscribeRequest());
    const size_t n = requests_.size() - 1;
    return new Writer(n < scripts_.size() ? scripts_[n]
                                          : std::vector<std::string>{});
  }
  std::vector<xv1::SubscribeRequest> requests() const {
    absl::MutexLock l(&mu_);
    return requests_;
  }

 private:
  const std::vector<std::vector<std::string>> scripts_;
  mutable absl::Mutex mu_;
  std::vector<xv1::SubscribeRequest> requests_ ABSL_GUARDED_BY(mu_);
};

event::v1::Event ReadingEvent(const std::string& meter) {
  v1::MeterReading r;
  r.set_meter_id(meter);
  r.set_energy_kind(v1::ENERGY_KIND_ELECTRICITY);
  r.set_reading_kind(v1::READING_KIND_INTERVAL);
  r.set_value(12.5);
  r.set_unit("kWh");
  absl::StatusOr<event::v1::Event> e =
      EventBuilder()
          .Source("//test.city/meters")
          .Subject("carbon.meter.reading.quzhou.kecheng")
          .Classification(event::v1::CLASSIFICATION_INTERNAL)
          .Owner("quzhou-grid")
          .ProtoData(r)
          .Build();
  EXPECT_TRUE(e.ok()) << e.status();
  return *e;
}

class ExchangeFeedTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto ca = CityCa::Create(dir_.File("ca"), kTrustDomain);
    ASSERT_TRUE(ca.ok()) << ca.status();
    ASSERT_TRUE((*ca)->Issue({.org = "city",
                              .name = "cityosd",
                              .dns_names = {"localhost"},
                              .ip_addresses = {"127.0.0.1"},
                              .out = dir_.File("server")})
                    .ok());
    ASSERT_TRUE((*ca)->Issue({.org = "carbon-office",
                              .name = "carbon",
                              .out = dir_.File("carbon")})
                    .ok());
    ca_file_ = (*ca)->ca_file();
  }

  void StartServer(std::vector<std::vector<std::string>> scripts) {
    fake_ = std::make_unique<FakeExchange>(std::move(scripts));
    auto creds = MakeServerCredentials({.ca_file = ca_file_,
                                        .cert_file = dir_.File("server.pem"),
                                        .key_file = dir_.File("server.key"),
                                        .trust_domain = kTrustDomain});
    ASSERT_TRUE(creds.ok()) << creds.status();
    grpc::ServerBuilder b;
    b.AddListeningPort("127.0.0.1:0", *creds, &port_);
    b.RegisterService(fake_.get());
    server_ = b.BuildAndStart();
    ASSERT_NE(server_, nullptr);
  }

  ExchangeFeedOptions Options() {
    ExchangeFeedOptions o;
    o.address = [p = port_] { return "127.0.0.1:" + std::to_string(p); };
    o.tls = {.ca_file = ca_file_,
             .cert_file = dir_.File("carbon.pem"),
             .key_file = dir_.File("carbon.key"),
             .trust_domain = kTrustDomain};
    o.patterns = {"carbon.meter.reading.>"};
    o.state_dir = dir_.path();
    o.max_batch = 512;
    o.min_backoff = absl::Milliseconds(10);
    o.max_backoff = absl::Milliseconds(50);
    return o;
  }

  void TearDown() override {
    if (server_ != nullptr) {
      server_->Shutdown(std::chrono::system_clock::now() +
                        std::chrono::seconds(2));
    }
  }

  cityos::testing::TempDir dir_;
  std::string ca_file_;
  int port_ = 0;
  std::unique_ptr<FakeExchange> fake_;
  std::unique_ptr<grpc::Server> server_;
};

TEST_F(ExchangeFeedTest, MalformedResponseIsRefusedThenTheStreamResumes) {
  xv1::SubscribeResponse good;
  for (int i = 0; i < 2; ++i) {
    xv1::ExchangeDelivery* d = good.add_deliveries();
    *d->mutable_event() = ReadingEvent("ent/m-" + std::to_string(i));
    d->mutable_decision()->set_effect(xv1::EFFECT_ALLOW);
    d->set_resume_token("carbon-in:" + std::to_string(i + 1));
  }
  good.set_missed(3);
  const std::string good_bytes = good.SerializeAsString();
  // Connect 1: a response whose first delivery is fine but whose tail is not
  // protobuf (field number 0), then the good one (never reached).
  const std::string bad_bytes = good_bytes + std::string("\x00\x01", 2);
  // Connect 2: the good response.
  StartServer({{bad_bytes, good_bytes}, {good_bytes}});

  absl::Mutex mu;
  std::vector<FeedDelivery> got;
  ExchangeFeed* feed_ptr = nullptr;
  auto feed = ExchangeFeed::Start(Options(), [&](std::vector<FeedDelivery> b) {
    absl::MutexLock l(&mu);
    for (FeedDelivery& d : b) got.push_back(std::move(d));
  });
  ASSERT_TRUE(feed.ok()) << feed.status();
  feed_ptr = feed->get();
  {
    absl::MutexLock l(&mu);
    auto two = [&]() ABSL_SHARED_LOCKS_REQUIRED(mu) { return got.size() >= 2; };
    ASSERT_TRUE(mu.AwaitWithTimeout(absl::Condition(&two), absl::Seconds(20)))
        << feed_ptr->last_error();
    ASSERT_EQ(got.size(), 2u);  // nothing of the malformed response
    for (int i = 0; i < 2; ++i) {
      const FeedDelivery& d = got[static_cast<size_t>(i)];
      EXPECT_EQ(d.id, good.deliveries(i).event().id());
      EXPECT_EQ(d.type, "cityos.carbon.v1.MeterReading");
      EXPECT_EQ(d.owner, "quzhou-grid");
      EXPECT_EQ(d.resume_token, good.deliveries(i).resume_token());
      EXPECT_EQ(d.pattern, 0u);
      v1::MeterReading r;
      ASSERT_TRUE(d.UnpackTo(&r));
      EXPECT_EQ(r.meter_id(), "ent/m-" + std::to_string(i));
      event::v1::Event e;
      ASSERT_TRUE(d.ParseEvent(&e));
      EXPECT_EQ(e.SerializeAsString(),
                good.deliveries(i).event().SerializeAsString());
    }
    feed_ptr->Processed(got);
  }
  const ExchangeFeed::Stats s = feed_ptr->stats();
  EXPECT_EQ(s.delivered, 2u);
  EXPECT_EQ(s.missed, 3u);
  EXPECT_GE(s.connects, 2u);
  EXPECT_GE(s.errors, 1u);
  EXPECT_NE(feed_ptr->last_error().find("DATA_LOSS"), std::string::npos)
      << feed_ptr->last_error();
  EXPECT_NE(feed_ptr->last_error().find("malformed"), std::string::npos)
      << feed_ptr->last_error();
  // The requests were real SubscribeRequests: pattern, purpose, batch; the
  // first replays from the feed's start, later ones resume (none processed
  // before the reconnect, so again from the start).
  std::vector<xv1::SubscribeRequest> reqs = fake_->requests();
  ASSERT_GE(reqs.size(), 2u);
  EXPECT_EQ(reqs[0].subject_pattern(), "carbon.meter.reading.>");
  EXPECT_EQ(reqs[0].purpose(), kCarbonPurpose);
  EXPECT_EQ(reqs[0].max_batch(), 512u);
  EXPECT_TRUE(reqs[0].has_start_time());
  EXPECT_TRUE(reqs[1].has_start_time());
  EXPECT_EQ(reqs[1].resume_token(), "");
  (*feed)->Stop();
  got.clear();
  // The processed position was persisted: a new feed resumes after it.
  const std::string resume = cityos::testing::ReadFile(dir_.File("resume.json"));
  EXPECT_NE(resume.find("carbon-in:2"), std::string::npos) << resume;
}

}  // namespace
}  // namespace cityos::carbon
