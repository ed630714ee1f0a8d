// File: cityos/bus.h
//
// The common data bus, in-process. Integrators link it directly; the node
// serves it as cityos.bus.v1.BusService.
//
//   CITYOS_ASSIGN_OR_RETURN(std::unique_ptr<Bus> bus,
//                           Bus::Open({.data_dir = "/var/lib/cityos/bus"}));
//   CITYOS_RETURN_IF_ERROR(bus->CreateStream(
//       me, {.name = "carbon", .subjects = {"carbon.>"}}));
//   CITYOS_ASSIGN_OR_RETURN(auto sub, bus->Subscribe(me, {.subject_pattern = "carbon.meter.>"}));
//   CITYOS_ASSIGN_OR_RETURN(auto results, bus->Publish(me, {std::move(event)}));
//   std::vector<Delivery> got;
//   CITYOS_RETURN_IF_ERROR(sub->Next(256, absl::Seconds(1), &got));
//
// Semantics (see docs/architecture.md):
//  - A stream captures the subjects its patterns match into a durable log;
//    patterns of different streams never overlap, so an event is stored at
//    most once. Sequences are gap-free per stream, from 1.
//  - Live subscribers see an event once it is stored (for captured subjects)
//    or right away (uncaptured subjects). A live subscriber's queue is
//    bounded; when it is full, events are dropped for that subscriber only and
//    counted in `missed`. Publishers never wait for subscribers.
//  - Replay subscriptions read a stream's log from a start position, then
//    follow it live; they never miss events.
//  - Durable consumers persist their ack floor; every event is delivered at
//    least once, redelivered after `ack_wait` unless acked. Subscriptions that
//    attach to one consumer form a group: each event goes to one member; a
//    member's unacked events go back to the others when it leaves.
#ifndef CITYOS_BUS_H_
#define CITYOS_BUS_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/base/call_once.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "cityos/event.h"
#include "cityos/principal.h"

namespace cityos {

class BusBackend;
class Clock;

// How a stream makes appends durable before it acknowledges them.
enum class Durability {
  kFsync,     // after fdatasync; concurrent publishers share one (group commit)
  kInterval,  // after write(2); synced every `sync_interval`
  kNone,      // after write(2); synced when a segment is closed
};

// "fsync" / "interval" / "none".
const char* DurabilityName(Durability d);
absl::StatusOr<Durability> ParseDurability(std::string_view s);

struct StreamConfig {
  // 1-64 characters of [A-Za-z0-9_-].
  std::string name;
  // Subject patterns captured; at least one; must not overlap other streams'.
  std::vector<std::string> subjects;
  Durability durability = Durability::kFsync;
  // kInterval: time between syncs. Default: 100 ms.
  absl::Duration sync_interval = absl::Milliseconds(100);
  // Retention: whole segments whose newest event is older than this are
  // deleted. Default: 0, keep forever.
  absl::Duration max_age = absl::ZeroDuration();
  // Retention: oldest whole segments are deleted while the stream is larger.
  // Default: 0, no limit.
  uint64_t max_bytes = 0;
  // Segment file size at which a new one starts. Default: 64 MiB.
  uint64_t segment_bytes = 64ull << 20;

  bool operator==(const StreamConfig&) const = default;
};

struct StreamInfo {
  StreamConfig config;
  uint64_t first_sequence = 0;  // 0 when empty
  uint64_t last_sequence = 0;   // 0 when nothing was ever stored
  uint64_t events = 0;
  uint64_t bytes = 0;
  uint32_t segments = 0;
  absl::Time first_time = absl::InfinitePast();
  absl::Time last_time = absl::InfinitePast();
  uint32_t consumers = 0;
};

// Where a replay or a new consumer starts.
struct StartPosition {
  enum class Kind { kNew, kEarliest, kLast, kSequence, kTime };
  Kind kind = Kind::kNew;
  uint64_t sequence = 0;                  // kSequence
  absl::Time time = absl::InfinitePast();  // kTime

  static StartPosition New() { return {}; }
  static StartPosition Earliest() { return {Kind::kEarliest}; }
  static StartPosition Last() { return {Kind::kLast}; }
  static StartPosition AtSequence(uint64_t s) { return {Kind::kSequence, s}; }
  static StartPosition AtTime(absl::Time t) { return {Kind::kTime, 0, t}; }
  bool operator==(const StartPosition&) const = default;
};

struct ConsumerConfig {
  std::string stream;
  // 1-64 characters of [A-Za-z0-9_-], unique within the stream.
  std::string name;
  StartPosition start = StartPosition::Earliest();
  // Only events whose subject matches; empty means all.
  std::string filter_subject;
  // Unacked deliveries are redelivered after this. Default: 30 s.
  absl::Duration ack_wait = absl::Seconds(30);
  // Most unacked deliveries across all members. Default: 1024.
  uint32_t max_in_flight = 1024;
  // After this many deliveries an event is no longer redelivered (it stays in
  // the log). 0: unlimited.
  uint32_t max_deliveries = 0;

  bool operator==(const ConsumerConfig&) const = default;
};

struct ConsumerInfo {
  ConsumerConfig config;
  uint64_t ack_floor = 0;      // every sequence < ack_floor is acked
  uint64_t next_sequence = 0;  // next sequence not yet delivered
  uint32_t in_flight = 0;
  uint64_t pending = 0;        // stored events not yet delivered
  uint32_t members = 0;
  uint64_t redelivered = 0;    // since the node started
};

// A stored (or routed) event. Immutable, shared by every subscriber.
struct Message {
  // Holds `event` itself (in-process publishes of owned events).
  Message(std::string stream, uint64_t sequence, absl::Time publish_time,
          event::v1::Event&& event);
  // Shares an event owned elsewhere (shared publishes).
  Message(std::string stream, uint64_t sequence, absl::Time publish_time,
          std::shared_ptr<const event::v1::Event> event);
  // Borrows `event`, which the caller keeps alive at least as long as this
  // message (e.g. both live in one arena that the MessagePtr keeps alive).
  Message(std::string stream, uint64_t sequence, absl::Time publish_time,
          const event::v1::Event* event);
  // Holds the event as stored in a stream's log, serialized; event() parses it on first
  // use. `wire` must stay valid as long as the message (e.g. both on one arena kept alive
  // by the MessagePtr); `arena` (may be null) is where the parsed event goes. The bus
  // checks the bytes structurally before it builds such a message (DATA_LOSS otherwise),
  // so the parse does not fail.
  Message(std::string stream, uint64_t sequence, absl::Time publish_time,
          std::string_view wire, google::protobuf::Arena* arena);
  Message(const Message&) = delete;
  Message& operator=(const Message&) = delete;

  // The event serialized exactly as stored (messages read from a log: replay and
  // durable subscriptions), else empty. Forwarding these bytes skips a parse and a
  // serialization. Thread-safe.
  std::string_view wire() const { return wire_; }

  // The event, with `publisher` set to the publisher's SPIFFE id (parsed on first call
  // for wire messages; thread-safe).
  const event::v1::Event& event() const {
    const event::v1::Event* e = event_.load(std::memory_order_acquire);
    return e != nullptr ? *e : ParseWire();
  }

  std::string stream;  // empty when no stream captured the subject
  uint64_t sequence = 0;
  absl::Time publish_time;

 private:
  const event::v1::Event& ParseWire() const;

  mutable std::optional<event::v1::Event> owned_;  // owned events; parsed wire without arena
  std::shared_ptr<const event::v1::Event> shared_;  // set for shared events
  std::string_view wire_;                            // set for wire messages
  google::protobuf::Arena* arena_ = nullptr;         // wire messages: where event() parses
  mutable absl::once_flag parse_once_;               // wire messages: the parse
  mutable std::atomic<const event::v1::Event*> event_{nullptr};  // the event once known
};
using MessagePtr = std::shared_ptr<const Message>;

struct Delivery {
  MessagePtr message;
  uint32_t delivery_count = 1;  // durable consumers: 1 on first delivery
};

struct PublishResult {
  std::string stream;     // empty when no stream captured the subject
  uint64_t sequence = 0;  // 0 when not stored
  bool operator==(const PublishResult&) const = default;
};

struct SubscribeOptions {
  // Live mode: the pattern (with * and >). Replay mode: an optional filter.
  std::string subject_pattern;
  // Replay and durable modes: the stream.
  std::string stream;
  // Durable mode: the consumer to join.
  std::string consumer;
  // Replay mode: where to start.
  StartPosition start = StartPosition::New();
  // Live mode: queue bound in events; 0 = the bus default.
  size_t queue_depth = 0;
};

// A subscription in any of the three modes. Thread-safe; one reader at a
// time. Destroying it unsubscribes (durable: leaves the group, handing its
// unacked deliveries back).
class Subscription {
 public:
  virtual ~Subscription() = default;

  // Appends up to `max` deliveries to `out`, waiting up to `timeout`
  // (absl::InfiniteDuration(): no limit) for the first one; returns OK with
  // nothing appended on timeout. `missed` (may be null) receives the events
  // dropped for this live subscriber since the last call that passed
  // `missed`, and then the wait also ends when events are dropped. With a
  // null `missed`, drops do not end the wait and their count is kept, not
  // reset: the next call that passes `missed` receives it. One reader at a
  // time: a second thread calling Next while another waits in Next waits
  // until the first returns, then waits itself. Errors: CANCELLED after
  // Close(); NOT_FOUND when the stream or consumer was deleted;
  // PERMISSION_DENIED when access was withdrawn.
  virtual absl::Status Next(size_t max, absl::Duration timeout,
                            std::vector<Delivery>* out, uint64_t* missed = nullptr) = 0;

  // Durable mode: acknowledge / hand back for redelivery. No-ops in the other
  // modes. Acking a sequence not in flight is a no-op.
  virtual absl::Status Ack(absl::Span<const uint64_t> sequences) = 0;
  virtual absl::Status Nak(absl::Span<const uint64_t> sequences) = 0;

  // Ends the subscription; a blocked Next() returns CANCELLED. Idempotent.
  virtual void Close() = 0;
  // Ends it with `reason` (e.g. PERMISSION_DENIED when consent is revoked):
  // Next() returns it after draining nothing more. Idempotent.
  virtual void Terminate(absl::Status reason) = 0;
};

// The authorization hook: every publish, subscribe and admin call asks it.
// The data exchange fills it with its policy decision point; the default
// allows everything.
class BusAuthorizer {
 public:
  virtual ~BusAuthorizer() = default;
  // OK, or PERMISSION_DENIED saying why.
  virtual absl::Status CanPublish(const Principal& who, const event::v1::Event& event) = 0;
  virtual absl::Status CanSubscribe(const Principal& who, const SubscribeOptions& what) = 0;
  // `action` is one of "create_stream", "delete_stream", "create_consumer",
  // "delete_consumer", "read_info"; `stream` names the stream concerned.
  // The bus also lets a principal create, inspect and delete the consumers
  // of a stream when CanSubscribe allows it every pattern the stream
  // captures, whatever this answers.
  virtual absl::Status CanAdminister(const Principal& who, std::string_view action,
                                     std::string_view stream) = 0;
};

struct BusOptions {
  // Where the embedded backend keeps streams. Required unless `backend` is
  // given.
  std::string data_dir;
  // Storage and consumers; null = the embedded log backend on `data_dir`.
  std::shared_ptr<BusBackend> backend;
  EventLimits limits;
  // Null = the real clock.
  Clock* clock = nullptr;
  // Live subscribers' default queue bound, in events. Default: 65536.
  size_t live_queue_depth = 65536;
  // Null = allow everything. Not owned; must outlive the bus.
  BusAuthorizer* authorizer = nullptr;
  // How often retention runs and consumer positions are saved. Default: 1 s.
  absl::Duration housekeeping_interval = absl::Seconds(1);
  // The longest a live subscriber's Next() spins (checking its queue on a
  // CPU) before it sleeps, to take a publisher's next batch without a
  // futex wake-up. Zero (or less) never spins; more than kMaxReaderSpin
  // counts as kMaxReaderSpin. Adaptive: a spin that finds nothing halves the next one, down to
  // no spin (re-probed now and then); one that finds events restores this.
  // Spinning happens only while the process's live subscriptions that have
  // waited in Next() (and are not closed) number at most the usable CPUs - 1
  // (CPU_COUNT of the process's sched_getaffinity mask, read once), and at
  // most that many spin at once: with one usable CPU nothing spins.
  // Default: 50 us.
  absl::Duration reader_spin = absl::Microseconds(50);
  static constexpr absl::Duration kMaxReaderSpin = absl::Milliseconds(10);
};

class Bus {
 public:
  // Opens the bus: the backend recovers its streams and consumers.
  // DATA_LOSS when a stream's log is corrupt in the middle (the message names
  // the file and offset and the repair command).
  static absl::StatusOr<std::unique_ptr<Bus>> Open(BusOptions options);
  virtual ~Bus() = default;

  // Validates every event (nothing is published if one is bad: the error
  // names the event index), authorizes, sets `publisher`, stores captured
  // events (atomically per stream) and routes them. Returns when every stored
  // event is durable per its stream's mode. Errors: INVALID_ARGUMENT,
  // PERMISSION_DENIED, RESOURCE_EXHAUSTED (disk full; nothing acknowledged),
  // UNAVAILABLE (the bus is closed).
  virtual absl::StatusOr<std::vector<PublishResult>> Publish(
      const Principal& who, std::vector<event::v1::Event> events) = 0;

  // As Publish, for events that are shared and immutable (built once,
  // published many times, or fanned out without copies). Because they cannot
  // be stamped, each must already carry `publisher` equal to
  // who.SpiffeId() (EventBuilder::Publisher); otherwise INVALID_ARGUMENT.
  virtual absl::StatusOr<std::vector<PublishResult>> PublishShared(
      const Principal& who, std::vector<std::shared_ptr<const event::v1::Event>> events) = 0;

  // As Publish, but returns at once; `done` runs exactly once, possibly on
  // another thread, when the batch is durable (or failed).
  using PublishCallback =
      std::function<void(absl::StatusOr<std::vector<PublishResult>>)>;
  virtual void PublishAsync(const Principal& who, std::vector<event::v1::Event> events,
                            PublishCallback done) = 0;
  virtual void PublishSharedAsync(const Principal& who,
                                  std::vector<std::shared_ptr<const event::v1::Event>> events,
                                  PublishCallback done) = 0;

  // Subscribes in live, replay or durable mode (see SubscribeOptions).
  // Errors: INVALID_ARGUMENT (bad pattern; inconsistent mode), NOT_FOUND,
  // PERMISSION_DENIED.
  virtual absl::StatusOr<std::unique_ptr<Subscription>> Subscribe(
      const Principal& who, const SubscribeOptions& options) = 0;

  // Stream administration. CreateStream is idempotent for an identical
  // config (ALREADY_EXISTS otherwise); overlapping patterns are
  // INVALID_ARGUMENT naming the other stream.
  virtual absl::StatusOr<StreamInfo> CreateStream(const Principal& who,
                                                  const StreamConfig& config) = 0;
  virtual absl::Status DeleteStream(const Principal& who, std::string_view name) = 0;
  virtual absl::StatusOr<StreamInfo> GetStream(const Principal& who, std::string_view name) = 0;
  virtual absl::StatusOr<std::vector<StreamInfo>> ListStreams(const Principal& who) = 0;

  // Consumer administration, likewise.
  virtual absl::StatusOr<ConsumerInfo> CreateConsumer(const Principal& who,
                                                      const ConsumerConfig& config) = 0;
  virtual absl::Status DeleteConsumer(const Principal& who, std::string_view stream,
                                      std::string_view name) = 0;
  virtual absl::StatusOr<ConsumerInfo> GetConsumer(const Principal& who,
                                                   std::string_view stream,
                                                   std::string_view name) = 0;
  virtual absl::StatusOr<std::vector<ConsumerInfo>> ListConsumers(
      const Principal& who, std::string_view stream) = 0;

  // Acks and naks for a durable consumer from outside a Subscription (the
  // gRPC Ack RPC). Returns the ack floor. NOT_FOUND for an unknown consumer.
  virtual absl::StatusOr<uint64_t> Ack(const Principal& who, std::string_view stream,
                                       std::string_view consumer,
                                       absl::Span<const uint64_t> acks,
                                       absl::Span<const uint64_t> naks) = 0;

  // Stops accepting publishes, completes pending ones, ends subscriptions
  // (UNAVAILABLE), saves consumer positions and closes the logs. Idempotent.
  virtual absl::Status Close() = 0;
};

}  // namespace cityos

#endif  // CITYOS_BUS_H_
