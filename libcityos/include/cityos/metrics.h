// File: cityos/metrics.h
//
// Process metrics in the Prometheus text exposition format 0.0.4: counters,
// gauges (set, or computed by a callback at scrape time) and histograms, with
// labels. cityos writes its own small encoder (Debian 12 packages no C++
// Prometheus client); the format is described in docs/observability.md.
//
// Register a family once, ask it for the series of some label values once,
// then keep the handle: updating a handle is one relaxed atomic operation,
// without locks or look-ups.
//
//   cityos::MetricsRegistry& m = cityos::MetricsRegistry::Global();
//   cityos::CounterFamily requests = m.AddCounterFamily(
//       "cityos_carbon_settlements_total", "Settlements by result.",
//       {"result"});
//   cityos::Counter ok = requests.WithLabels({"ok"});
//   ok.Add();
//   cityos::Histogram latency = m.AddHistogram("cityos_carbon_settle_seconds",
//                                              "Time to settle.",
//                                              LatencyBuckets());
//   latency.Observe(0.0042);
//   std::string text = m.RenderPrometheus();
//
// Naming follows Prometheus: `cityos_<area>_<what>_<unit>`, counters end in
// `_total`, times are in seconds. Label values must have a small, bounded set
// of values (method names, status codes, stream names), never ids.
//
// Registering a name again with the same type, label names (and buckets)
// returns the same family, so independent components can share one. Giving an
// invalid name or re-registering a name differently is a programming error and
// aborts the process with a message.
#ifndef CITYOS_METRICS_H_
#define CITYOS_METRICS_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/types/span.h"

namespace cityos {

namespace metrics_internal {
class Family;
struct CallbackEntry;

struct CounterCell {
  std::atomic<uint64_t> value{0};
};
struct GaugeCell {
  std::atomic<double> value{0};
};
struct HistogramCell {
  explicit HistogramCell(const std::vector<double>* b);
  const std::vector<double>*
      bounds;  // ascending upper bounds; owned by the family
  // Observations per bucket (not cumulative); the last one is +Inf.
  std::unique_ptr<std::atomic<uint64_t>[]> counts;
  std::atomic<double> sum{0};
};
}  // namespace metrics_internal

// A counter series: a non-decreasing count. Cheap to copy; valid while its
// registry lives. A default-constructed handle ignores updates. Thread-safe.
class Counter {
 public:
  Counter() = default;
  void Add(uint64_t n = 1) const {
    if (cell_ != nullptr) cell_->value.fetch_add(n, std::memory_order_relaxed);
  }
  uint64_t Value() const {
    return cell_ == nullptr ? 0 : cell_->value.load(std::memory_order_relaxed);
  }

 private:
  friend class CounterFamily;
  explicit Counter(metrics_internal::CounterCell* cell) : cell_(cell) {}
  metrics_internal::CounterCell* cell_ = nullptr;
};

// A gauge series: a value that goes up and down. As Counter otherwise.
class Gauge {
 public:
  Gauge() = default;
  void Set(double v) const {
    if (cell_ != nullptr) cell_->value.store(v, std::memory_order_relaxed);
  }
  void Add(double v) const {
    if (cell_ != nullptr) cell_->value.fetch_add(v, std::memory_order_relaxed);
  }
  double Value() const {
    return cell_ == nullptr ? 0 : cell_->value.load(std::memory_order_relaxed);
  }

 private:
  friend class GaugeFamily;
  explicit Gauge(metrics_internal::GaugeCell* cell) : cell_(cell) {}
  metrics_internal::GaugeCell* cell_ = nullptr;
};

// A histogram series: counts observations in fixed buckets and sums them.
// Observe() is two relaxed atomic adds and a search of the bucket bounds. A
// scrape concurrent with Observe() may see the bucket counts and the sum of
// slightly different moments. NaN observations are ignored.
class Histogram {
 public:
  Histogram() = default;
  void Observe(double v) const;
  // Observations so far, and their sum.
  uint64_t Count() const;
  double Sum() const;
  // Non-cumulative count of bucket `i` (i == bounds.size() is +Inf).
  uint64_t BucketCount(size_t i) const;

 private:
  friend class HistogramFamily;
  explicit Histogram(metrics_internal::HistogramCell* cell) : cell_(cell) {}
  metrics_internal::HistogramCell* cell_ = nullptr;
};

// Keeps a callback gauge registered; unregisters it on destruction, waiting
// for a scrape that is evaluating it right now. Move-only.
class GaugeCallback {
 public:
  GaugeCallback() = default;
  GaugeCallback(GaugeCallback&&) noexcept;
  GaugeCallback& operator=(GaugeCallback&&) noexcept;
  ~GaugeCallback();
  // Unregisters now (idempotent).
  void Reset();

 private:
  friend class GaugeFamily;
  GaugeCallback(metrics_internal::Family* family,
                std::shared_ptr<metrics_internal::CallbackEntry> entry)
      : family_(family), entry_(std::move(entry)) {}
  metrics_internal::Family* family_ = nullptr;
  std::shared_ptr<metrics_internal::CallbackEntry> entry_;
};

// Families: one metric name with its label names. Cheap handles, valid while
// the registry lives. WithLabels() takes one value per label name, in the
// order the names were registered; it takes a lock and may allocate the
// series, so call it once and keep the result. Thread-safe.
class CounterFamily {
 public:
  Counter WithLabels(absl::Span<const std::string_view> label_values) const;

 private:
  friend class MetricsRegistry;
  explicit CounterFamily(metrics_internal::Family* f) : family_(f) {}
  metrics_internal::Family* family_;
};

class GaugeFamily {
 public:
  Gauge WithLabels(absl::Span<const std::string_view> label_values) const;
  // Registers `fn`, evaluated at every scrape (on the scraping thread, with
  // no registry lock held). Callbacks with the same label values, and a set
  // gauge with them, are added up: several components can each report their
  // share. `fn` must be thread-safe, quick, and must not destroy its own
  // GaugeCallback.
  GaugeCallback AddCallback(absl::Span<const std::string_view> label_values,
                            std::function<double()> fn) const;

 private:
  friend class MetricsRegistry;
  explicit GaugeFamily(metrics_internal::Family* f) : family_(f) {}
  metrics_internal::Family* family_;
};

class HistogramFamily {
 public:
  Histogram WithLabels(absl::Span<const std::string_view> label_values) const;

 private:
  friend class MetricsRegistry;
  explicit HistogramFamily(metrics_internal::Family* f) : family_(f) {}
  metrics_internal::Family* family_;
};

// Bucket upper bounds for latencies in seconds, 50 µs to 10 s:
// 0.00005 0.0001 0.00025 0.0005 0.001 0.0025 0.005 0.01 0.025 0.05 0.1 0.25
// 0.5 1 2.5 5 10 (and +Inf).
std::vector<double> LatencyBuckets();

// A set of metric families. Thread-safe. Families and series live as long as
// the registry (series are never removed; callbacks are, with their
// GaugeCallback).
class MetricsRegistry {
 public:
  MetricsRegistry();
  ~MetricsRegistry();
  MetricsRegistry(const MetricsRegistry&) = delete;
  MetricsRegistry& operator=(const MetricsRegistry&) = delete;

  // The registry of the process, used by the bus and the gRPC integration
  // unless given another one. Never destroyed.
  static MetricsRegistry& Global();

  // `name` matches [a-zA-Z_:][a-zA-Z0-9_:]*; label names match
  // [a-zA-Z_][a-zA-Z0-9_]*, do not start with "__", and are distinct
  // (histograms: not "le"). `help` is one line of text.
  CounterFamily AddCounterFamily(std::string_view name, std::string_view help,
                                 std::vector<std::string> label_names);
  GaugeFamily AddGaugeFamily(std::string_view name, std::string_view help,
                             std::vector<std::string> label_names);
  // `bounds`: strictly ascending, finite; +Inf is implicit.
  HistogramFamily AddHistogramFamily(
      std::string_view name, std::string_view help,
      std::vector<std::string> label_names,
      std::vector<double> bounds = LatencyBuckets());

  // Metrics without labels.
  Counter AddCounter(std::string_view name, std::string_view help);
  Gauge AddGauge(std::string_view name, std::string_view help);
  Histogram AddHistogram(std::string_view name, std::string_view help,
                         std::vector<double> bounds = LatencyBuckets());
  GaugeCallback AddCallbackGauge(std::string_view name, std::string_view help,
                                 std::function<double()> fn);

  // Every family in the text exposition format 0.0.4, families sorted by
  // name and series by label values. A family without series yet prints its
  // HELP and TYPE lines only. Evaluates the callback gauges.
  std::string RenderPrometheus() const;

 private:
  metrics_internal::Family* AddFamily(std::string_view name,
                                      std::string_view help, int type,
                                      std::vector<std::string> label_names,
                                      std::vector<double> bounds);

  mutable absl::Mutex mu_;
  std::map<std::string, std::unique_ptr<metrics_internal::Family>, std::less<>>
      families_ ABSL_GUARDED_BY(mu_);
};

}  // namespace cityos

#endif  // CITYOS_METRICS_H_
