// The bus's process metrics move when events are published and delivered.
// They live in MetricsRegistry::Global(), shared by every bus of the process,
// so the test compares before and after.
#include <gtest/gtest.h>

#include "cityos/bus.h"
#include "cityos/event.h"
#include "cityos/metrics.h"
#include "testutil.h"

namespace cityos {
namespace {

using event::v1::Event;

Principal Me() {
  return *Principal::FromSpiffeId("spiffe://test.city/org/grid/svc/meters");
}

std::vector<Event> Events(const std::string& subject, int n) {
  std::vector<Event> out;
  for (int i = 0; i < n; ++i) {
    auto e = EventBuilder()
                 .Source("//test")
                 .Type("test.v1.Thing")
                 .Subject(subject)
                 .Time(absl::FromUnixSeconds(1764000000))
                 .Classification(event::v1::CLASSIFICATION_INTERNAL)
                 .Owner("grid")
                 .TextData("text/plain", "e" + std::to_string(i))
                 .Build();
    EXPECT_TRUE(e.ok()) << e.status();
    out.push_back(*e);
  }
  return out;
}

std::vector<Delivery> Collect(Subscription& sub, size_t n) {
  std::vector<Delivery> got;
  absl::Time deadline = absl::Now() + absl::Seconds(20);
  while (got.size() < n && absl::Now() < deadline) {
    if (!sub.Next(n - got.size(), absl::Milliseconds(100), &got).ok()) break;
  }
  return got;
}

// The value of one series in the global registry's exposition ("" labels:
// an unlabelled metric); 0 when absent.
double Scrape(const std::string& series) {
  std::string text = MetricsRegistry::Global().RenderPrometheus();
  size_t p = text.find("\n" + series + " ");
  if (p == std::string::npos) return 0;
  p += series.size() + 2;
  return std::stod(text.substr(p, text.find('\n', p) - p));
}

class BusMetricsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto b = Bus::Open({.data_dir = dir_.path() + "/bus"});
    ASSERT_TRUE(b.ok()) << b.status();
    bus_ = *std::move(b);
    StreamConfig c;
    c.name = "carbon";
    c.subjects = {"carbon.>"};
    ASSERT_TRUE(bus_->CreateStream(Me(), c).ok());
  }
  void TearDown() override {
    if (bus_ != nullptr) {
      EXPECT_TRUE(bus_->Close().ok());
    }
  }

  testing::TempDir dir_;
  std::unique_ptr<Bus> bus_;
};

TEST_F(BusMetricsTest, PublishAndLiveDeliveryAreCounted) {
  const double carbon0 =
      Scrape("cityos_bus_published_total{stream=\"carbon\"}");
  const double uncaptured0 = Scrape("cityos_bus_published_total{stream=\"\"}");
  const double live0 = Scrape("cityos_bus_delivered_total{mode=\"live\"}");
  const double batches0 = Scrape("cityos_bus_publish_seconds_count");

  auto carbon_sub = bus_->Subscribe(Me(), {.subject_pattern = "carbon.>"});
  auto traffic_sub = bus_->Subscribe(Me(), {.subject_pattern = "traffic.>"});
  ASSERT_TRUE(carbon_sub.ok() && traffic_sub.ok());

  ASSERT_TRUE(bus_->Publish(Me(), Events("carbon.meter", 3)).ok());  // stored
  ASSERT_TRUE(
      bus_->Publish(Me(), Events("traffic.flow", 2)).ok());  // live only
  std::vector<Event> mixed = Events("carbon.meter", 1);
  for (Event& e : Events("traffic.flow", 1)) mixed.push_back(e);
  ASSERT_TRUE(bus_->Publish(Me(), mixed).ok());

  EXPECT_EQ(Scrape("cityos_bus_published_total{stream=\"carbon\"}") - carbon0,
            4);
  EXPECT_EQ(Scrape("cityos_bus_published_total{stream=\"\"}") - uncaptured0, 3);
  EXPECT_EQ(Scrape("cityos_bus_publish_seconds_count") - batches0,
            2);  // stored batches
  // Nothing read yet: all 7 wait in the two live queues.
  EXPECT_EQ(Scrape("cityos_bus_live_queue_depth"), 7);

  EXPECT_EQ(Collect(**carbon_sub, 4).size(), 4u);
  EXPECT_EQ(Collect(**traffic_sub, 3).size(), 3u);
  EXPECT_EQ(Scrape("cityos_bus_delivered_total{mode=\"live\"}") - live0, 7);
  EXPECT_EQ(Scrape("cityos_bus_live_queue_depth"), 0);
}

TEST_F(BusMetricsTest, ReplayAndDurableDeliveriesAreCounted) {
  ASSERT_TRUE(bus_->Publish(Me(), Events("carbon.meter", 5)).ok());
  const double replay0 = Scrape("cityos_bus_delivered_total{mode=\"replay\"}");
  const double durable0 =
      Scrape("cityos_bus_delivered_total{mode=\"durable\"}");

  auto replay = bus_->Subscribe(
      Me(), {.stream = "carbon", .start = StartPosition::Earliest()});
  ASSERT_TRUE(replay.ok()) << replay.status();
  EXPECT_EQ(Collect(**replay, 5).size(), 5u);
  EXPECT_EQ(Scrape("cityos_bus_delivered_total{mode=\"replay\"}") - replay0, 5);

  ASSERT_TRUE(
      bus_->CreateConsumer(Me(), {.stream = "carbon", .name = "accounts"})
          .ok());
  auto durable =
      bus_->Subscribe(Me(), {.stream = "carbon", .consumer = "accounts"});
  ASSERT_TRUE(durable.ok()) << durable.status();
  EXPECT_EQ(Collect(**durable, 5).size(), 5u);
  EXPECT_EQ(Scrape("cityos_bus_delivered_total{mode=\"durable\"}") - durable0,
            5);
}

TEST_F(BusMetricsTest, DropsForAFullLiveQueueAreCounted) {
  const double dropped0 = Scrape("cityos_bus_live_dropped_total");
  auto slow =
      bus_->Subscribe(Me(), {.subject_pattern = "traffic.>", .queue_depth = 2});
  ASSERT_TRUE(slow.ok());
  ASSERT_TRUE(bus_->Publish(Me(), Events("traffic.flow", 5)).ok());
  EXPECT_EQ(Scrape("cityos_bus_live_dropped_total") - dropped0, 3);
  EXPECT_EQ(Scrape("cityos_bus_live_queue_depth"), 2);
}

TEST_F(BusMetricsTest, AClosedBusNoLongerReportsItsQueues) {
  auto sub = bus_->Subscribe(Me(), {.subject_pattern = "traffic.>"});
  ASSERT_TRUE(sub.ok());
  ASSERT_TRUE(bus_->Publish(Me(), Events("traffic.flow", 3)).ok());
  EXPECT_EQ(Scrape("cityos_bus_live_queue_depth"), 3);
  sub->reset();
  ASSERT_TRUE(bus_->Close().ok());
  bus_.reset();
  EXPECT_EQ(Scrape("cityos_bus_live_queue_depth"), 0);
}

}  // namespace
}  // namespace cityos
