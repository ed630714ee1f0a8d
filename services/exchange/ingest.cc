#include "ingest.h"

#include <iterator>
#include <utility>

#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "cityos/entity.h"
#include "cityos/logging.h"
#include "cityos/metrics.h"

namespace cityos {
namespace {

struct IngestMetrics {
  Counter stored, skipped, missed, failed;
};

IngestMetrics& Metrics() {
  static IngestMetrics* m = [] {
    MetricsRegistry& r = MetricsRegistry::Global();
    return new IngestMetrics{
        r.AddCounter("cityos_exchange_ingest_stored_total",
                     "Entity states the exchange stored from bus events."),
        r.AddCounter("cityos_exchange_ingest_skipped_total",
                     "Bus events skipped by the exchange because their payload gives no entity."),
        r.AddCounter("cityos_exchange_ingest_missed_total",
                     "Bus events dropped for the exchange's ingest subscription (store too slow)."),
        r.AddCounter("cityos_exchange_ingest_failed_total",
                     "Entity states the exchange could not store (store errors)."),
    };
  }();
  return *m;
}

}  // namespace

Ingester::Ingester(Bus* bus, StateStore* store, Principal node, IngestOptions options)
    : bus_(bus), store_(store), node_(std::move(node)), options_(std::move(options)) {}

Ingester::~Ingester() { Stop(); }

absl::Status Ingester::Start() {
  Metrics();
  for (const std::string& pattern : options_.subjects) {
    absl::StatusOr<std::unique_ptr<Subscription>> sub = bus_->Subscribe(
        node_, {.subject_pattern = pattern, .queue_depth = options_.queue_depth});
    if (!sub.ok()) {
      Stop();
      return absl::Status(sub.status().code(),
                          absl::StrFormat("exchange ingest of \"%s\": %s", pattern,
                                          sub.status().message()));
    }
    subs_.push_back(*std::move(sub));
  }
  writer_ = std::thread([this] { WriteLoop(); });
  for (auto& sub : subs_) {
    Subscription* s = sub.get();
    threads_.emplace_back([this, s] { Run(s); });
  }
  return absl::OkStatus();
}

void Ingester::Stop() {
  if (stopping_.exchange(true)) return;
  for (auto& sub : subs_) sub->Close();
  for (auto& t : threads_) t.join();
  threads_.clear();
  {
    std::lock_guard<std::mutex> lock(mu_);
    readers_done_ = true;
  }
  cv_.notify_all();
  if (writer_.joinable()) writer_.join();
  subs_.clear();
}

void Ingester::Run(Subscription* sub) {
  std::vector<Delivery> got;
  std::vector<exchange::v1::Entity> batch;
  got.reserve(options_.max_batch);
  while (!stopping_.load(std::memory_order_relaxed)) {
    got.clear();
    uint64_t missed = 0;
    absl::Status s = sub->Next(options_.max_batch, absl::Milliseconds(200), &got, &missed);
    if (missed > 0) {
      missed_.fetch_add(missed, std::memory_order_relaxed);
      Metrics().missed.Add(missed);
    }
    if (!s.ok()) {
      if (!absl::IsCancelled(s) && !absl::IsUnavailable(s)) {
        LogError("exchange", "ingest subscription ended", {{"error", std::string(s.message())}});
      }
      return;
    }
    if (got.empty()) continue;
    batch.clear();
    batch.reserve(got.size());
    for (const Delivery& d : got) {
      absl::StatusOr<exchange::v1::Entity> e = EntityFromEvent(d.message->event());
      if (!e.ok()) {
        skipped_.fetch_add(1, std::memory_order_relaxed);
        Metrics().skipped.Add();
        // At most one line a second: a misbehaving producer must not flood
        // the log.
        const int64_t now = absl::GetCurrentTimeNanos();
        int64_t last = last_skip_log_ns_.load(std::memory_order_relaxed);
        if (now - last > 1'000'000'000 &&
            last_skip_log_ns_.compare_exchange_strong(last, now)) {
          LogDebug("exchange", "event gives no entity; skipped",
                   {{"subject", d.message->event().subject()},
                    {"type", d.message->event().type()},
                    {"error", std::string(e.status().message())}});
        }
        continue;
      }
      batch.push_back(*std::move(e));
    }
    if (batch.empty()) continue;
    Enqueue(std::move(batch));
    batch = {};
  }
}

void Ingester::Enqueue(std::vector<exchange::v1::Entity> batch) {
  std::unique_lock<std::mutex> lock(mu_);
  // A few batches in flight keep both stages busy; more would only hold
  // memory the bus's queue already holds.
  cv_.wait(lock, [this] { return queue_.size() < 4; });
  queue_.push_back(std::move(batch));
  std::vector<std::vector<exchange::v1::Entity>> stored;
  stored.swap(stored_batches_);
  lock.unlock();
  cv_.notify_all();
  stored.clear();  // frees the entities the writer stored, off its thread
}

void Ingester::WriteLoop() {
  while (true) {
    std::vector<exchange::v1::Entity> batch;
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [this] { return !queue_.empty() || readers_done_; });
      if (queue_.empty()) return;  // readers done and everything written
      batch = std::move(queue_.front());
      queue_.pop_front();
      // Whatever else waits goes into the same transaction, in order.
      while (!queue_.empty()) {
        std::vector<exchange::v1::Entity>& next = queue_.front();
        batch.insert(batch.end(), std::make_move_iterator(next.begin()),
                     std::make_move_iterator(next.end()));
        queue_.pop_front();
      }
    }
    cv_.notify_all();
    const size_t n = batch.size();
    // Entities from EntityFromEvent always carry a type and an id, so a
    // failing batch means the store itself fails (disk full, I/O error): the
    // batch is counted and logged, and ingestion goes on.
    absl::StatusOr<std::vector<exchange::v1::Entity>> stored =
        store_->UpsertBatch(std::move(batch));
    if (stored.ok()) {
      stored_.fetch_add(n, std::memory_order_relaxed);
      Metrics().stored.Add(n);
      std::lock_guard<std::mutex> lock(mu_);
      // Bounded: with the readers idle, the writer frees them itself.
      if (!readers_done_ && stored_batches_.size() < 4) {
        stored_batches_.push_back(*std::move(stored));
      }
      continue;
    }
    failed_.fetch_add(n, std::memory_order_relaxed);
    Metrics().failed.Add(n);
    const int64_t now = absl::GetCurrentTimeNanos();
    int64_t last = last_fail_log_ns_.load(std::memory_order_relaxed);
    if (now - last > 1'000'000'000 && last_fail_log_ns_.compare_exchange_strong(last, now)) {
      LogError("exchange", "storing entities failed; batch dropped",
               {{"error", std::string(stored.status().message())},
                {"entities", std::to_string(n)}});
    }
  }
}

}  // namespace cityos
