// MetricsRegistry and the Prometheus text exposition format 0.0.4.
#include <gtest/gtest.h>

#include <cmath>
#include <thread>

#include "cityos/metrics.h"

namespace cityos {
namespace {

TEST(MetricsRegistry, RendersGoldenExposition) {
  MetricsRegistry r;
  CounterFamily requests = r.AddCounterFamily(
      "test_requests_total",
      "Requests by path.\nSecond line with a \\ backslash.", {"path", "code"});
  requests.WithLabels({"/a", "200"}).Add(3);
  requests.WithLabels({"quote\"back\\slash\nnewline", "500"}).Add();
  r.AddGauge("test_temperature_celsius", "Temperature.").Set(-1.5);
  Histogram latency =
      r.AddHistogram("test_latency_seconds", "Latency.", {0.5, 1, 2.5});
  for (double v : {0.25, 0.5, 2.0, 30.0}) latency.Observe(v);
  r.AddCounterFamily("test_unused_total", "Never incremented.", {"x"});

  EXPECT_EQ(r.RenderPrometheus(), R"(# HELP test_latency_seconds Latency.
# TYPE test_latency_seconds histogram
test_latency_seconds_bucket{le="0.5"} 2
test_latency_seconds_bucket{le="1"} 2
test_latency_seconds_bucket{le="2.5"} 3
test_latency_seconds_bucket{le="+Inf"} 4
test_latency_seconds_sum 32.75
test_latency_seconds_count 4
# HELP test_requests_total Requests by path.\nSecond line with a \\ backslash.
# TYPE test_requests_total counter
test_requests_total{path="/a",code="200"} 3
test_requests_total{path="quote\"back\\slash\nnewline",code="500"} 1
# HELP test_temperature_celsius Temperature.
# TYPE test_temperature_celsius gauge
test_temperature_celsius -1.5
# HELP test_unused_total Never incremented.
# TYPE test_unused_total counter
)");
}

TEST(MetricsRegistry, HistogramBucketsAreInclusiveUpperBounds) {
  MetricsRegistry r;
  Histogram h = r.AddHistogram("test_seconds", "h", {1, 2});
  h.Observe(1);             // le=1
  h.Observe(1.5);           // le=2
  h.Observe(2);             // le=2
  h.Observe(-3);            // le=1
  h.Observe(100);           // +Inf
  h.Observe(std::nan(""));  // ignored
  EXPECT_EQ(h.BucketCount(0), 2u);
  EXPECT_EQ(h.BucketCount(1), 2u);
  EXPECT_EQ(h.BucketCount(2), 1u);
  EXPECT_EQ(h.Count(), 5u);
  EXPECT_DOUBLE_EQ(h.Sum(), 101.5);
}

TEST(MetricsRegistry, LabelledHistogramPutsLeLast) {
  MetricsRegistry r;
  HistogramFamily f =
      r.AddHistogramFamily("test_rpc_seconds", "h", {"method"}, {0.1});
  f.WithLabels({"Get"}).Observe(0.05);
  std::string text = r.RenderPrometheus();
  EXPECT_NE(text.find("test_rpc_seconds_bucket{method=\"Get\",le=\"0.1\"} 1\n"),
            std::string::npos)
      << text;
  EXPECT_NE(
      text.find("test_rpc_seconds_bucket{method=\"Get\",le=\"+Inf\"} 1\n"),
      std::string::npos);
  EXPECT_NE(text.find("test_rpc_seconds_sum{method=\"Get\"} 0.05\n"),
            std::string::npos);
  EXPECT_NE(text.find("test_rpc_seconds_count{method=\"Get\"} 1\n"),
            std::string::npos);
}

TEST(MetricsRegistry, DefaultLatencyBucketsSpan50MicrosecondsTo10Seconds) {
  std::vector<double> b = LatencyBuckets();
  ASSERT_FALSE(b.empty());
  EXPECT_DOUBLE_EQ(b.front(), 0.00005);
  EXPECT_DOUBLE_EQ(b.back(), 10);
  MetricsRegistry r;
  r.AddHistogram("test_default_seconds", "h").Observe(0.00004);
  std::string text = r.RenderPrometheus();
  EXPECT_NE(text.find("test_default_seconds_bucket{le=\"5e-05\"} 1\n"),
            std::string::npos)
      << text;
  EXPECT_NE(text.find("test_default_seconds_bucket{le=\"0.0001\"} 1\n"),
            std::string::npos);
  EXPECT_NE(text.find("test_default_seconds_bucket{le=\"10\"} 1\n"),
            std::string::npos);
}

TEST(MetricsRegistry, SameRegistrationReturnsTheSameSeries) {
  MetricsRegistry r;
  Counter a = r.AddCounterFamily("test_total", "c", {"k"}).WithLabels({"v"});
  Counter b = r.AddCounterFamily("test_total", "c", {"k"}).WithLabels({"v"});
  a.Add(2);
  b.Add(3);
  EXPECT_EQ(a.Value(), 5u);
  EXPECT_EQ(b.Value(), 5u);
}

TEST(MetricsRegistry, DefaultHandlesIgnoreUpdates) {
  Counter c;
  Gauge g;
  Histogram h;
  c.Add();
  g.Set(3);
  h.Observe(1);
  EXPECT_EQ(c.Value(), 0u);
  EXPECT_EQ(g.Value(), 0);
  EXPECT_EQ(h.Count(), 0u);
}

TEST(MetricsRegistry, CallbackGaugesAreEvaluatedAtScrapeAndAddUp) {
  MetricsRegistry r;
  GaugeFamily depth = r.AddGaugeFamily("test_queue_depth", "d", {"queue"});
  int calls = 0;
  GaugeCallback one = depth.AddCallback({"a"}, [&] {
    ++calls;
    return 2.0;
  });
  GaugeCallback two = depth.AddCallback({"a"}, [] { return 3.0; });
  GaugeCallback other = depth.AddCallback({"b"}, [] { return 7.0; });
  EXPECT_EQ(calls, 0);
  std::string text = r.RenderPrometheus();
  EXPECT_EQ(calls, 1);
  EXPECT_NE(text.find("test_queue_depth{queue=\"a\"} 5\n"), std::string::npos)
      << text;
  EXPECT_NE(text.find("test_queue_depth{queue=\"b\"} 7\n"), std::string::npos)
      << text;

  two.Reset();
  { GaugeCallback gone = std::move(other); }
  text = r.RenderPrometheus();
  EXPECT_NE(text.find("test_queue_depth{queue=\"a\"} 2\n"), std::string::npos)
      << text;
  EXPECT_EQ(text.find("queue=\"b\""), std::string::npos) << text;
}

TEST(MetricsRegistry, ConcurrentUpdatesAreAllCounted) {
  MetricsRegistry r;
  CounterFamily f = r.AddCounterFamily("test_total", "c", {"t"});
  Histogram h = r.AddHistogram("test_seconds", "h");
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      Counter c = f.WithLabels({"x"});
      for (int i = 0; i < 10000; ++i) {
        c.Add();
        h.Observe(0.001);
      }
    });
  }
  std::thread scraper([&] {
    for (int i = 0; i < 20; ++i) r.RenderPrometheus();
  });
  for (auto& t : threads) t.join();
  scraper.join();
  EXPECT_EQ(f.WithLabels({"x"}).Value(), 40000u);
  EXPECT_EQ(h.Count(), 40000u);
}

TEST(MetricsRegistryDeathTest, ConflictingRegistrationAborts) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  MetricsRegistry r;
  r.AddCounterFamily("test_total", "c", {"k"});
  EXPECT_DEATH(r.AddGaugeFamily("test_total", "g", {"k"}), "registered again");
  EXPECT_DEATH(r.AddCounterFamily("test_total", "c", {"other"}),
               "registered again");
  EXPECT_DEATH(r.AddCounter("bad-name", "c"), "bad-name");
  EXPECT_DEATH(r.AddHistogramFamily("test_h", "h", {"le"}),
               "label name \"le\"");
  EXPECT_DEATH(r.AddHistogram("test_h2", "h", {2, 1}), "ascending");
}

}  // namespace
}  // namespace cityos
