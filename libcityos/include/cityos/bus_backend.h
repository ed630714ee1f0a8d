// File: cityos/bus_backend.h
//
// Storage and durable consumers below the Bus API. The embedded backend keeps
// segmented logs in the node's data dir (docs/bus-log-format.md); a NATS
// JetStream backend can implement the same interface (streams ↔ JetStream
// streams, consumers ↔ durable pull consumers, Ack ↔ AckAck / Nak) without
// any change to Bus callers.
//
// Records are cityos.event.v1.Event messages, serialized by the backend;
// consumer subject filters apply to the subject the Bus passes alongside
// each record.
//
// Thread-safety: every method may be called from any thread.
#ifndef CITYOS_BUS_BACKEND_H_
#define CITYOS_BUS_BACKEND_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "cityos/bus.h"

namespace cityos {

// One record as stored.
struct StoredRecord {
  uint64_t sequence = 0;
  absl::Time publish_time;
  std::string subject;
  std::string payload;  // serialized cityos.event.v1.Event
};

// A record handed to a consumer member.
struct FetchedRecord {
  StoredRecord record;
  uint32_t delivery_count = 1;
};

// Sequential reader of a stream from a position; sees only acknowledged
// appends. Not thread-safe.
class StreamReader {
 public:
  virtual ~StreamReader() = default;
  // Reads the next record into `out`: true if one was read, false at the
  // current end (not an error; more may come). NOT_FOUND once the stream is
  // deleted; DATA_LOSS on corruption.
  virtual absl::StatusOr<bool> Next(StoredRecord* out) = 0;
  // The sequence Next() reads next.
  virtual uint64_t next_sequence() const = 0;
};

// One record to append: the event (serialized by the backend in its own
// format, once) and its subject (for consumer filters). Not owned.
struct AppendRecord {
  std::string_view subject;
  const event::v1::Event* event = nullptr;
};

class BusBackend {
 public:
  virtual ~BusBackend() = default;

  // ---- streams
  // Validates and creates (idempotent for an identical config). Overlap with
  // other streams is checked by the Bus, not here.
  virtual absl::StatusOr<StreamInfo> CreateStream(const StreamConfig& config) = 0;
  virtual absl::Status DeleteStream(std::string_view name) = 0;
  virtual absl::StatusOr<StreamInfo> GetStream(std::string_view name) = 0;
  virtual std::vector<StreamInfo> ListStreams() = 0;

  // Appends `records` atomically with consecutive sequences and one publish
  // time (the backend's clock, non-decreasing per stream); `done` runs once,
  // on any thread, when they are durable per the stream's mode, with the first
  // sequence and that publish time, or the error (RESOURCE_EXHAUSTED when the
  // disk is full: nothing was stored). Copies what it needs before returning.
  using AppendCallback =
      std::function<void(absl::StatusOr<uint64_t> first_sequence, absl::Time publish_time)>;
  virtual void Append(std::string_view stream, absl::Span<const AppendRecord> records,
                      AppendCallback done) = 0;

  // A reader from `sequence` (below the first retained: from the first).
  virtual absl::StatusOr<std::unique_ptr<StreamReader>> Read(std::string_view stream,
                                                             uint64_t sequence) = 0;
  // The first sequence a subscription starting at `start` reads.
  virtual absl::StatusOr<uint64_t> ResolveStart(std::string_view stream,
                                                const StartPosition& start) = 0;
  // Waits until the stream's last acknowledged sequence is >= `sequence` or
  // `deadline` passes; returns the last acknowledged sequence.
  // NOT_FOUND if the stream does not exist (or is deleted while waiting).
  virtual absl::StatusOr<uint64_t> WaitForSequence(std::string_view stream, uint64_t sequence,
                                                   absl::Time deadline) = 0;

  // ---- durable consumers
  virtual absl::StatusOr<ConsumerInfo> CreateConsumer(const ConsumerConfig& config) = 0;
  virtual absl::Status DeleteConsumer(std::string_view stream, std::string_view name) = 0;
  virtual absl::StatusOr<ConsumerInfo> GetConsumer(std::string_view stream,
                                                   std::string_view name) = 0;
  virtual absl::StatusOr<std::vector<ConsumerInfo>> ListConsumers(std::string_view stream) = 0;

  // Adds a group member; returns its id.
  virtual absl::StatusOr<uint64_t> JoinConsumer(std::string_view stream,
                                                std::string_view consumer) = 0;
  // Removes a member; its unacked deliveries become due for redelivery to the
  // others at once. Unknown members are ignored.
  virtual void LeaveConsumer(std::string_view stream, std::string_view consumer,
                             uint64_t member) = 0;
  // Hands `member` up to `max` records: redeliveries that are due first, then
  // new ones, within max_in_flight. Waits until `deadline` for the first.
  // NOT_FOUND when the consumer (or stream) is deleted.
  virtual absl::Status Fetch(std::string_view stream, std::string_view consumer,
                             uint64_t member, size_t max, absl::Time deadline,
                             std::vector<FetchedRecord>* out) = 0;
  // Acks and naks; returns the ack floor. NOT_FOUND for an unknown consumer.
  virtual absl::StatusOr<uint64_t> Ack(std::string_view stream, std::string_view consumer,
                                       absl::Span<const uint64_t> acks,
                                       absl::Span<const uint64_t> naks) = 0;

  // Retention and saving consumer positions; the Bus calls it periodically.
  virtual absl::Status Housekeeping() = 0;
  // Wakes every waiter (they return UNAVAILABLE), saves, closes. Idempotent.
  virtual absl::Status Close() = 0;
};

struct LogBackendOptions {
  // Root directory: <dir>/<stream>/{stream.json, log/, consumers/}.
  std::string dir;
  // Null = the real clock.
  Clock* clock = nullptr;
};

// The embedded backend on segmented logs. Recovers every stream found in
// `dir`; DATA_LOSS when a log is corrupt in the middle.
absl::StatusOr<std::shared_ptr<BusBackend>> OpenLogBackend(const LogBackendOptions& options);

// Repairs the log of one stream of the embedded backend after DATA_LOSS:
// keeps the longest good prefix, drops everything after the first bad record,
// and returns a report of what was dropped. `dir` is the stream's directory
// (<bus dir>/<stream>) or its log directory. The node must not be running.
// This is what `cityosd repair-log <dir>` runs.
absl::StatusOr<std::string> RepairStreamLog(const std::string& dir);

}  // namespace cityos

#endif  // CITYOS_BUS_BACKEND_H_
