#include "measure.h"

#include <malloc.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <thread>

namespace cityos::bench {

void LatencySamples::Finish() {
  samples_.resize(count());
  std::sort(samples_.begin(), samples_.end());
}

size_t LatencySamples::count() const {
  return std::min(next_.load(std::memory_order_relaxed), samples_.size());
}

double LatencySamples::PercentileMicros(double p) const {
  if (samples_.empty()) return 0;
  size_t rank = static_cast<size_t>(
      std::ceil(p / 100.0 * static_cast<double>(samples_.size())));
  rank = std::clamp<size_t>(rank, 1, samples_.size());
  return static_cast<double>(samples_[rank - 1]) / 1e3;
}

void LatencySamples::AddTo(nlohmann::ordered_json& out,
                           const std::string& prefix) const {
  out[prefix + "p50_us"] = Round(PercentileMicros(50), 1);
  out[prefix + "p99_us"] = Round(PercentileMicros(99), 1);
  out[prefix + "p999_us"] = Round(PercentileMicros(99.9), 1);
  out[prefix + "max_us"] = Round(PercentileMicros(100), 1);
}

void Window::Acquire() {
  absl::MutexLock lock(&mu_);
  mu_.Await(absl::Condition(
      +[](size_t* free) { return *free > 0; }, &free_));
  --free_;
}

void Window::Release() {
  absl::MutexLock lock(&mu_);
  ++free_;
}

bool Window::WaitIdle(absl::Duration timeout) {
  absl::MutexLock lock(&mu_);
  struct Arg {
    size_t* free;
    size_t slots;
  } arg{&free_, slots_};
  return mu_.AwaitWithTimeout(
      absl::Condition(
          +[](Arg* a) { return *a->free == a->slots; }, &arg),
      timeout);
}

uint64_t ResidentBytes() {
  std::ifstream statm("/proc/self/statm");
  uint64_t size = 0, resident = 0;
  if (!(statm >> size >> resident)) return 0;
  return resident * static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
}

uint64_t HeapInUseBytes() {
  struct mallinfo2 mi = mallinfo2();
  return static_cast<uint64_t>(mi.uordblks) + static_cast<uint64_t>(mi.hblkhd);
}

void TrimHeap() { malloc_trim(0); }

double LoadAverage1m() {
  std::ifstream in("/proc/loadavg");
  double load = -1;
  if (!(in >> load)) return -1;
  return load;
}

struct RssSampler::State {
  std::atomic<bool> stop{false};
  std::atomic<uint64_t> peak{0};
  std::thread thread;
};

RssSampler::RssSampler(absl::Duration period)
    : state_(std::make_shared<State>()) {
  state_->peak = ResidentBytes();
  state_->thread = std::thread([s = state_, period] {
    while (!s->stop.load()) {
      uint64_t now = ResidentBytes();
      if (now > s->peak.load()) s->peak = now;
      absl::SleepFor(period);
    }
  });
}

RssSampler::~RssSampler() { Stop(); }

uint64_t RssSampler::Stop() {
  if (state_->thread.joinable()) {
    state_->stop = true;
    state_->thread.join();
    uint64_t now = ResidentBytes();
    if (now > state_->peak.load()) state_->peak = now;
  }
  return state_->peak.load();
}

double Round(double v, int digits) {
  double scale = std::pow(10.0, digits);
  return std::round(v * scale) / scale;
}

}  // namespace cityos::bench
