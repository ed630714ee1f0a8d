// Metric families, series and the Prometheus text encoder (format 0.0.4).
// See cityos/metrics.h and docs/observability.md.
#include "cityos/metrics.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstdlib>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "core/strings.h"

namespace cityos {
namespace metrics_internal {

enum Type { kCounter = 0, kGauge = 1, kHistogram = 2 };

const char* TypeName(int type) {
  switch (type) {
    case kCounter:
      return "counter";
    case kGauge:
      return "gauge";
    default:
      return "histogram";
  }
}

[[noreturn]] void Fatal(const std::string& what) {
  std::fprintf(stderr, "cityos metrics: %s\n", what.c_str());
  std::abort();
}

struct CallbackEntry {
  CallbackEntry(std::vector<std::string> labels, std::function<double()> f)
      : label_values(std::move(labels)), fn(std::move(f)) {}
  const std::vector<std::string> label_values;
  absl::Mutex mu;  // held while `fn` runs, so that unregistering waits for it
  std::function<double()> fn ABSL_GUARDED_BY(mu);
};

struct Series {
  std::vector<std::string> label_values;
  CounterCell counter;
  GaugeCell gauge;
  std::unique_ptr<HistogramCell> histogram;
};

HistogramCell::HistogramCell(const std::vector<double>* b)
    : bounds(b), counts(new std::atomic<uint64_t>[b->size() + 1]) {
  for (size_t i = 0; i <= b->size(); ++i)
    counts[i].store(0, std::memory_order_relaxed);
}

class Family {
 public:
  Family(std::string name, std::string help, int type,
         std::vector<std::string> label_names, std::vector<double> bounds)
      : name_(std::move(name)),
        help_(std::move(help)),
        type_(type),
        label_names_(std::move(label_names)),
        bounds_(std::move(bounds)) {}

  const std::string& name() const { return name_; }
  const std::string& help() const { return help_; }
  int type() const { return type_; }
  const std::vector<std::string>& label_names() const { return label_names_; }
  const std::vector<double>& bounds() const { return bounds_; }

  // The series of `values`, created at first use.
  Series* Get(absl::Span<const std::string_view> values) {
    if (values.size() != label_names_.size()) {
      Fatal(absl::StrFormat("%s: %d label values given for %d label names",
                            name_, values.size(), label_names_.size()));
    }
    std::string key = Key(values);
    {
      absl::ReaderMutexLock lock(&mu_);
      auto it = series_.find(key);
      if (it != series_.end()) return it->second.get();
    }
    absl::MutexLock lock(&mu_);
    std::unique_ptr<Series>& s = series_[key];
    if (s == nullptr) {
      s = std::make_unique<Series>();
      for (std::string_view v : values) s->label_values.emplace_back(v);
      if (type_ == kHistogram)
        s->histogram = std::make_unique<HistogramCell>(&bounds_);
    }
    return s.get();
  }

  std::shared_ptr<CallbackEntry> AddCallback(
      absl::Span<const std::string_view> values, std::function<double()> fn) {
    if (values.size() != label_names_.size()) {
      Fatal(absl::StrFormat("%s: %d label values given for %d label names",
                            name_, values.size(), label_names_.size()));
    }
    // Constructed with `fn` (no lock), so registering under a lock of the
    // caller's that `fn` also takes cannot look like a lock-order cycle.
    auto entry = std::make_shared<CallbackEntry>(
        std::vector<std::string>(values.begin(), values.end()), std::move(fn));
    absl::MutexLock lock(&mu_);
    callbacks_.push_back(entry);
    return entry;
  }

  void RemoveCallback(const std::shared_ptr<CallbackEntry>& entry) {
    {
      absl::MutexLock lock(&mu_);
      callbacks_.erase(std::remove(callbacks_.begin(), callbacks_.end(), entry),
                       callbacks_.end());
    }
    absl::MutexLock lock(&entry->mu);  // waits for a running evaluation
    entry->fn = nullptr;
  }

  // Appends this family in the exposition format.
  void Render(std::string* out);

 private:
  struct Sample {
    std::vector<std::string> label_values;
    double value = 0;               // counter, gauge
    std::vector<uint64_t> buckets;  // histogram, non-cumulative
    double sum = 0;
  };

  static std::string Key(absl::Span<const std::string_view> values) {
    std::string key;
    for (std::string_view v : values) {
      uint32_t n = static_cast<uint32_t>(v.size());
      key.append(reinterpret_cast<const char*>(&n), sizeof(n));
      key.append(v);
    }
    return key;
  }

  const std::string name_;
  const std::string help_;
  const int type_;
  const std::vector<std::string> label_names_;
  const std::vector<double> bounds_;
  absl::Mutex mu_;
  absl::flat_hash_map<std::string, std::unique_ptr<Series>> series_
      ABSL_GUARDED_BY(mu_);
  std::vector<std::shared_ptr<CallbackEntry>> callbacks_ ABSL_GUARDED_BY(mu_);
};

namespace {

// Go's strconv 'g'-like output without needless exponents: integers as
// integers, otherwise the shortest text that reads back as the same double.
std::string FormatValue(double v) {
  if (std::isnan(v)) return "NaN";
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  if (v == std::floor(v) && std::fabs(v) < 1e15)
    return absl::StrFormat("%.0f", v);
  char buf[64];
  auto r = std::to_chars(buf, buf + sizeof(buf), v, std::chars_format::general);
  return std::string(buf, r.ptr);
}

void AppendEscaped(std::string* out, std::string_view s, bool quote) {
  for (char c : s) {
    if (c == '\\') {
      out->append("\\\\");
    } else if (c == '\n') {
      out->append("\\n");
    } else if (c == '"' && quote) {
      out->append("\\\"");
    } else {
      out->push_back(c);
    }
  }
}

// `{a="x",b="y"}` with an optional extra label (le), or nothing.
void AppendLabels(std::string* out, const std::vector<std::string>& names,
                  const std::vector<std::string>& values,
                  std::string_view extra_name = {},
                  std::string_view extra_value = {}) {
  if (names.empty() && extra_name.empty()) return;
  out->push_back('{');
  for (size_t i = 0; i < names.size(); ++i) {
    if (i > 0) out->push_back(',');
    absl::StrAppend(out, names[i], "=\"");
    AppendEscaped(out, values[i], /*quote=*/true);
    out->push_back('"');
  }
  if (!extra_name.empty()) {
    if (!names.empty()) out->push_back(',');
    absl::StrAppend(out, AV(extra_name), "=\"", AV(extra_value), "\"");
  }
  out->push_back('}');
}

}  // namespace

void Family::Render(std::string* out) {
  std::vector<Sample> samples;
  std::vector<std::shared_ptr<CallbackEntry>> callbacks;
  {
    absl::ReaderMutexLock lock(&mu_);
    samples.reserve(series_.size());
    for (const auto& [key, s] : series_) {
      Sample sample;
      sample.label_values = s->label_values;
      if (type_ == kCounter) {
        sample.value = static_cast<double>(
            s->counter.value.load(std::memory_order_relaxed));
      } else if (type_ == kGauge) {
        sample.value = s->gauge.value.load(std::memory_order_relaxed);
      } else {
        sample.buckets.resize(bounds_.size() + 1);
        for (size_t i = 0; i <= bounds_.size(); ++i) {
          sample.buckets[i] =
              s->histogram->counts[i].load(std::memory_order_relaxed);
        }
        sample.sum = s->histogram->sum.load(std::memory_order_relaxed);
      }
      samples.push_back(std::move(sample));
    }
    callbacks = callbacks_;
  }
  // Callbacks run without the family's lock; same labels add up.
  for (const std::shared_ptr<CallbackEntry>& cb : callbacks) {
    double v;
    {
      absl::MutexLock lock(&cb->mu);
      if (!cb->fn) continue;
      v = cb->fn();
    }
    auto it = std::find_if(
        samples.begin(), samples.end(),
        [&](const Sample& s) { return s.label_values == cb->label_values; });
    if (it == samples.end()) {
      samples.push_back(Sample{.label_values = cb->label_values, .value = v});
    } else {
      it->value += v;
    }
  }
  std::sort(samples.begin(), samples.end(),
            [](const Sample& a, const Sample& b) {
              return a.label_values < b.label_values;
            });

  out->append("# HELP ");
  absl::StrAppend(out, name_, " ");
  AppendEscaped(out, help_, /*quote=*/false);
  absl::StrAppend(out, "\n# TYPE ", name_, " ", TypeName(type_), "\n");
  for (const Sample& s : samples) {
    if (type_ != kHistogram) {
      out->append(name_);
      AppendLabels(out, label_names_, s.label_values);
      absl::StrAppend(out, " ", FormatValue(s.value), "\n");
      continue;
    }
    uint64_t cumulative = 0;
    for (size_t i = 0; i <= bounds_.size(); ++i) {
      cumulative += s.buckets[i];
      absl::StrAppend(out, name_, "_bucket");
      AppendLabels(out, label_names_, s.label_values, "le",
                   i < bounds_.size() ? FormatValue(bounds_[i]) : "+Inf");
      absl::StrAppend(out, " ", cumulative, "\n");
    }
    absl::StrAppend(out, name_, "_sum");
    AppendLabels(out, label_names_, s.label_values);
    absl::StrAppend(out, " ", FormatValue(s.sum), "\n");
    absl::StrAppend(out, name_, "_count");
    AppendLabels(out, label_names_, s.label_values);
    absl::StrAppend(out, " ", cumulative, "\n");
  }
}

}  // namespace metrics_internal

using metrics_internal::Family;
using metrics_internal::Fatal;

namespace {

bool ValidName(std::string_view s, bool colon_ok) {
  if (s.empty()) return false;
  for (size_t i = 0; i < s.size(); ++i) {
    char c = s[i];
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' ||
              (colon_ok && c == ':') || (i > 0 && c >= '0' && c <= '9');
    if (!ok) return false;
  }
  return true;
}

}  // namespace

// ---- Handles ---------------------------------------------------------------

void Histogram::Observe(double v) const {
  if (cell_ == nullptr || std::isnan(v)) return;
  const std::vector<double>& b = *cell_->bounds;
  size_t i =
      std::lower_bound(b.begin(), b.end(), v) - b.begin();  // first bound >= v
  cell_->counts[i].fetch_add(1, std::memory_order_relaxed);
  cell_->sum.fetch_add(v, std::memory_order_relaxed);
}

uint64_t Histogram::Count() const {
  if (cell_ == nullptr) return 0;
  uint64_t n = 0;
  for (size_t i = 0; i <= cell_->bounds->size(); ++i) {
    n += cell_->counts[i].load(std::memory_order_relaxed);
  }
  return n;
}

double Histogram::Sum() const {
  return cell_ == nullptr ? 0 : cell_->sum.load(std::memory_order_relaxed);
}

uint64_t Histogram::BucketCount(size_t i) const {
  if (cell_ == nullptr || i > cell_->bounds->size()) return 0;
  return cell_->counts[i].load(std::memory_order_relaxed);
}

GaugeCallback::GaugeCallback(GaugeCallback&& other) noexcept
    : family_(other.family_), entry_(std::move(other.entry_)) {
  other.family_ = nullptr;
}

GaugeCallback& GaugeCallback::operator=(GaugeCallback&& other) noexcept {
  if (this != &other) {
    Reset();
    family_ = other.family_;
    entry_ = std::move(other.entry_);
    other.family_ = nullptr;
  }
  return *this;
}

GaugeCallback::~GaugeCallback() { Reset(); }

void GaugeCallback::Reset() {
  if (family_ != nullptr && entry_ != nullptr) family_->RemoveCallback(entry_);
  family_ = nullptr;
  entry_.reset();
}

Counter CounterFamily::WithLabels(
    absl::Span<const std::string_view> values) const {
  return Counter(&family_->Get(values)->counter);
}

Gauge GaugeFamily::WithLabels(absl::Span<const std::string_view> values) const {
  return Gauge(&family_->Get(values)->gauge);
}

GaugeCallback GaugeFamily::AddCallback(
    absl::Span<const std::string_view> values,
    std::function<double()> fn) const {
  return GaugeCallback(family_, family_->AddCallback(values, std::move(fn)));
}

Histogram HistogramFamily::WithLabels(
    absl::Span<const std::string_view> values) const {
  return Histogram(family_->Get(values)->histogram.get());
}

// ---- Registry --------------------------------------------------------------

std::vector<double> LatencyBuckets() {
  return {0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
          0.05,    0.1,    0.25,    0.5,    1,     2.5,    5,     10};
}

MetricsRegistry::MetricsRegistry() = default;
MetricsRegistry::~MetricsRegistry() = default;

MetricsRegistry& MetricsRegistry::Global() {
  static MetricsRegistry* const registry = new MetricsRegistry();
  return *registry;
}

Family* MetricsRegistry::AddFamily(std::string_view name, std::string_view help,
                                   int type,
                                   std::vector<std::string> label_names,
                                   std::vector<double> bounds) {
  if (!ValidName(name, /*colon_ok=*/true)) {
    Fatal(absl::StrFormat("metric name \"%s\" is not [a-zA-Z_:][a-zA-Z0-9_:]*",
                          name));
  }
  for (size_t i = 0; i < label_names.size(); ++i) {
    const std::string& l = label_names[i];
    if (!ValidName(l, /*colon_ok=*/false) || l.rfind("__", 0) == 0 ||
        (type == metrics_internal::kHistogram && l == "le")) {
      Fatal(absl::StrFormat("%s: label name \"%s\" is invalid", name, l));
    }
    for (size_t k = 0; k < i; ++k) {
      if (label_names[k] == l)
        Fatal(absl::StrFormat("%s: label \"%s\" twice", name, l));
    }
  }
  for (size_t i = 0; i < bounds.size(); ++i) {
    if (!std::isfinite(bounds[i]) || (i > 0 && bounds[i] <= bounds[i - 1])) {
      Fatal(absl::StrFormat(
          "%s: bucket bounds must be finite and strictly ascending", name));
    }
  }
  absl::MutexLock lock(&mu_);
  auto it = families_.find(name);
  if (it != families_.end()) {
    Family* f = it->second.get();
    if (f->type() != type || f->label_names() != label_names ||
        f->bounds() != bounds) {
      Fatal(absl::StrFormat(
          "metric %s registered again with another type, labels or "
          "buckets",
          name));
    }
    return f;
  }
  auto f = std::make_unique<Family>(std::string(name), std::string(help), type,
                                    std::move(label_names), std::move(bounds));
  Family* raw = f.get();
  families_.emplace(std::string(name), std::move(f));
  return raw;
}

CounterFamily MetricsRegistry::AddCounterFamily(
    std::string_view name, std::string_view help,
    std::vector<std::string> label_names) {
  return CounterFamily(AddFamily(name, help, metrics_internal::kCounter,
                                 std::move(label_names), {}));
}

GaugeFamily MetricsRegistry::AddGaugeFamily(
    std::string_view name, std::string_view help,
    std::vector<std::string> label_names) {
  return GaugeFamily(AddFamily(name, help, metrics_internal::kGauge,
                               std::move(label_names), {}));
}

HistogramFamily MetricsRegistry::AddHistogramFamily(
    std::string_view name, std::string_view help,
    std::vector<std::string> label_names, std::vector<double> bounds) {
  return HistogramFamily(AddFamily(name, help, metrics_internal::kHistogram,
                                   std::move(label_names), std::move(bounds)));
}

Counter MetricsRegistry::AddCounter(std::string_view name,
                                    std::string_view help) {
  return AddCounterFamily(name, help, {}).WithLabels({});
}

Gauge MetricsRegistry::AddGauge(std::string_view name, std::string_view help) {
  return AddGaugeFamily(name, help, {}).WithLabels({});
}

Histogram MetricsRegistry::AddHistogram(std::string_view name,
                                        std::string_view help,
                                        std::vector<double> bounds) {
  return AddHistogramFamily(name, help, {}, std::move(bounds)).WithLabels({});
}

GaugeCallback MetricsRegistry::AddCallbackGauge(std::string_view name,
                                                std::string_view help,
                                                std::function<double()> fn) {
  return AddGaugeFamily(name, help, {}).AddCallback({}, std::move(fn));
}

std::string MetricsRegistry::RenderPrometheus() const {
  std::vector<Family*> families;
  {
    absl::ReaderMutexLock lock(&mu_);
    families.reserve(families_.size());
    for (const auto& [name, f] : families_) families.push_back(f.get());
  }
  std::string out;
  for (Family* f : families) f->Render(&out);
  return out;
}

}  // namespace cityos
