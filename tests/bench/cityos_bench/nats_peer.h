// cityos-bench: the NATS side of the side-by-side figures, measured with
// libnats against the run's nats-server.
#ifndef CITYOS_TESTS_BENCH_CITYOS_BENCH_NATS_PEER_H_
#define CITYOS_TESTS_BENCH_CITYOS_BENCH_NATS_PEER_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "measure.h"

namespace cityos::bench {

// NATS core pub/sub: one publisher connection, `subscribers` subscriber
// connections (each its own), all on `subject`.
struct PubSubFigures {
  uint64_t published = 0;
  uint64_t delivered = 0;     // summed over subscribers
  uint64_t dropped = 0;       // slow-consumer drops seen by the client library
  int64_t publish_nanos = 0;  // first publish to the publisher's last flush
  int64_t nanos = 0;          // first publish to the last delivery
};
absl::StatusOr<PubSubFigures> NatsCorePubSub(const std::string& url,
                                             const std::string& subject,
                                             const std::string& payload,
                                             int subscribers, uint64_t events,
                                             absl::Duration max_time);

// JetStream: creates a file-storage stream `stream` on `subject`, publishes
// with js_PublishAsync keeping at most `max_pending` unacknowledged, and waits
// for every ack. The stream is left in place (JetStreamReplay reads it).
struct JsPublishFigures {
  uint64_t acked = 0;
  uint64_t errors = 0;
  int64_t nanos = 0;                        // first publish to the last ack
  std::unique_ptr<LatencySamples> latency;  // per message: publish call to ack
};
absl::StatusOr<JsPublishFigures> JetStreamPublish(
    const std::string& url, const std::string& stream,
    const std::string& subject, const std::string& payload, int64_t max_pending,
    uint64_t events, absl::Duration max_time);

// Reads `expected` messages of `stream` from the start through an ordered
// (ephemeral, push, flow-controlled) consumer.
struct ReplayFigures {
  uint64_t delivered = 0;
  int64_t nanos = 0;  // subscribe call to the last delivery
};
absl::StatusOr<ReplayFigures> JetStreamReplay(const std::string& url,
                                              const std::string& stream,
                                              const std::string& subject,
                                              uint64_t expected);

// Deletes a JetStream stream (frees its files); errors are ignored.
void JetStreamDeleteStream(const std::string& url, const std::string& stream);

// Releases libnats' global resources (call once at the end of the run).
void CloseNatsLibrary();

}  // namespace cityos::bench

#endif  // CITYOS_TESTS_BENCH_CITYOS_BENCH_NATS_PEER_H_
