// Bus -> entity state store: the exchange keeps the latest state of every
// entity (and its history) by subscribing to the bus, live, as the node, on
// the configured subject patterns. Each event's entity view
// (EntityFromEvent) is upserted; events are written in batches (one SQLite
// transaction per batch). Events whose payload gives no entity (unknown
// payload type, bad bytes) are skipped and counted
// (cityos_exchange_ingest_skipped_total; logged at debug, rate-limited).
// Events the bus dropped because the store fell behind are counted in
// cityos_exchange_ingest_missed_total; entities the store refused (I/O
// errors) in cityos_exchange_ingest_failed_total.
//
// Two stages run in parallel: one reader thread per pattern decodes events
// into entities, one writer thread stores the batches (a few batches may wait
// between them; beyond that the readers wait and the bus queues). When the
// writer falls behind, it stores every waiting batch in one transaction
// (fewer commits, each cheaper per entity), and the readers free what it
// stored, so that the writer does little besides writing.
//
// Replaying the streams at start is not done: entities are as fresh as the
// live traffic since the store was last running.
#ifndef CITYOS_SERVICES_EXCHANGE_INGEST_H_
#define CITYOS_SERVICES_EXCHANGE_INGEST_H_

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <mutex>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "cityos/bus.h"
#include "cityos/principal.h"
#include "cityos/state_store.h"

namespace cityos {

struct IngestOptions {
  // Subject patterns to ingest. Default: everything.
  std::vector<std::string> subjects = {">"};
  // Most events per store transaction. Default: 512.
  size_t max_batch = 512;
  // Live queue of each ingest subscription, events; 0 = the bus default.
  size_t queue_depth = 0;
};

class Ingester {
 public:
  // `bus` and `store` are not owned and must outlive the ingester.
  Ingester(Bus* bus, StateStore* store, Principal node, IngestOptions options);
  ~Ingester();  // Stop()s

  // Subscribes and starts one thread per pattern.
  absl::Status Start();
  // Closes the subscriptions and joins the threads; what was read is stored.
  // Idempotent.
  void Stop();

  // Totals since Start, for tests and benchmarks.
  uint64_t stored() const { return stored_.load(std::memory_order_relaxed); }
  uint64_t skipped() const { return skipped_.load(std::memory_order_relaxed); }
  uint64_t missed() const { return missed_.load(std::memory_order_relaxed); }
  // Entities the store refused (I/O errors; logged at most once a second).
  uint64_t failed() const { return failed_.load(std::memory_order_relaxed); }

 private:
  void Run(Subscription* sub);
  void WriteLoop();
  // Hands a decoded batch to the writer, waiting while too many are queued.
  void Enqueue(std::vector<exchange::v1::Entity> batch);

  Bus* const bus_;
  StateStore* const store_;
  const Principal node_;
  const IngestOptions options_;
  std::vector<std::unique_ptr<Subscription>> subs_;
  std::vector<std::thread> threads_;
  std::thread writer_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::vector<exchange::v1::Entity>> queue_;  // guarded by mu_
  // Batches the writer stored, for a reader to free: freeing thousands of
  // entities is a good part of a batch's cost, and the writer is the stage
  // that bounds the ingest rate. Guarded by mu_.
  std::vector<std::vector<exchange::v1::Entity>> stored_batches_;
  bool readers_done_ = false;                             // guarded by mu_
  std::atomic<bool> stopping_{false};
  std::atomic<uint64_t> stored_{0};
  std::atomic<uint64_t> skipped_{0};
  std::atomic<uint64_t> missed_{0};
  std::atomic<uint64_t> failed_{0};
  std::atomic<int64_t> last_skip_log_ns_{0};
  std::atomic<int64_t> last_fail_log_ns_{0};
};

}  // namespace cityos

#endif  // CITYOS_SERVICES_EXCHANGE_INGEST_H_
