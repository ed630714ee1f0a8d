// The in-process Bus: validation, authorization, routing to live subscribers
// through an immutable subject trie, and storage/consumers through a
// BusBackend. See cityos/bus.h for the contract.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <map>
#include <mutex>
#include <thread>

#include <google/protobuf/arena.h>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "bus/live_queue.h"
#include "bus/message_pool.h"
#include "bus/subject_trie.h"
#include "bus/validate.h"
#include "cityos/bus.h"
#include "cityos/bus_backend.h"
#include "cityos/clock.h"
#include "cityos/logging.h"
#include "cityos/metrics.h"
#include "cityos/status.h"
#include "cityos/subject.h"
#include "core/strings.h"

namespace cityos {

const char* DurabilityName(Durability d) {
  switch (d) {
    case Durability::kFsync:
      return "fsync";
    case Durability::kInterval:
      return "interval";
    case Durability::kNone:
      return "none";
  }
  return "fsync";
}

absl::StatusOr<Durability> ParseDurability(std::string_view s) {
  if (s == "fsync") return Durability::kFsync;
  if (s == "interval") return Durability::kInterval;
  if (s == "none") return Durability::kNone;
  return absl::InvalidArgumentError(absl::StrFormat(
      "durability \"%s\": expected fsync, interval or none", s));
}

Message::Message(std::string stream_name, uint64_t seq, absl::Time time,
                 event::v1::Event&& event)
    : stream(std::move(stream_name)), sequence(seq), publish_time(time),
      owned_(std::in_place, std::move(event)), event_(&*owned_) {}

Message::Message(std::string stream_name, uint64_t seq, absl::Time time,
                 std::shared_ptr<const event::v1::Event> event)
    : stream(std::move(stream_name)), sequence(seq), publish_time(time),
      shared_(std::move(event)), event_(shared_.get()) {}

Message::Message(std::string stream_name, uint64_t seq, absl::Time time,
                 const event::v1::Event* event)
    : stream(std::move(stream_name)), sequence(seq), publish_time(time), event_(event) {}

Message::Message(std::string stream_name, uint64_t seq, absl::Time time,
                 std::string_view wire, google::protobuf::Arena* arena)
    : stream(std::move(stream_name)), sequence(seq), publish_time(time), wire_(wire),
      arena_(arena) {}

const event::v1::Event& Message::ParseWire() const {
  absl::call_once(parse_once_, [this] {
    event::v1::Event* e;
    if (arena_ != nullptr) {
      e = google::protobuf::Arena::CreateMessage<event::v1::Event>(arena_);
    } else {
      owned_.emplace();
      e = &*owned_;
    }
    // The bus checked the bytes (bus_internal::IsWellFormedEventWire) before it made
    // this message, so this does not fail; if it did, the event stays as far as parsed.
    if (!e->ParseFromArray(wire_.data(), static_cast<int>(wire_.size()))) {
      LogError("bus", "stored record does not parse as an event after its check",
               {{"stream", stream}, {"sequence", absl::StrCat(sequence)}});
    }
    event_.store(e, std::memory_order_release);
  });
  return *event_.load(std::memory_order_acquire);
}

namespace {

using bus_internal::LiveQueue;
using bus_internal::SubjectTrie;
using event::v1::Event;

// Process metrics of every bus (MetricsRegistry::Global()). Updated once per
// batch, not per event.
struct BusMetrics {
  explicit BusMetrics(MetricsRegistry& r)
      : published(r.AddCounterFamily(
            "cityos_bus_published_total",
            "Events accepted by Publish, by stream (\"\" for events no stream captures; "
            "stored events count once durable).",
            {"stream"})),
        published_uncaptured(published.WithLabels({""})),
        delivered_family(r.AddCounterFamily(
            "cityos_bus_delivered_total",
            "Events handed to subscribers, by subscription mode.", {"mode"})),
        delivered_live(delivered_family.WithLabels({"live"})),
        delivered_replay(delivered_family.WithLabels({"replay"})),
        delivered_durable(delivered_family.WithLabels({"durable"})),
        live_dropped(r.AddCounter("cityos_bus_live_dropped_total",
                                  "Events dropped for a live subscriber whose queue was full.")),
        live_depth(r.AddGaugeFamily("cityos_bus_live_queue_depth",
                                    "Events waiting in live subscribers' queues.", {})),
        publish_seconds(r.AddHistogram(
            "cityos_bus_publish_seconds",
            "Time from Publish to a stored batch being durable, per stream and batch.")) {}
  CounterFamily published;
  Counter published_uncaptured;
  CounterFamily delivered_family;
  Counter delivered_live;
  Counter delivered_replay;
  Counter delivered_durable;
  Counter live_dropped;
  GaugeFamily live_depth;
  Histogram publish_seconds;
};

const BusMetrics& Metrics() {
  static const BusMetrics* const metrics = new BusMetrics(MetricsRegistry::Global());
  return *metrics;
}

// Unique across all buses in the process, so per-thread route caches can
// tell snapshots apart.
std::atomic<uint64_t> g_route_generation{0};

// An immutable routing snapshot.
struct Routes {
  uint64_t generation = 0;
  SubjectTrie<LiveQueue*> live;
  std::vector<std::shared_ptr<LiveQueue>> live_refs;  // keeps `live` valid
  SubjectTrie<const std::string*> streams;
  std::vector<std::unique_ptr<std::string>> stream_names;  // keeps `streams` valid
  absl::flat_hash_map<const std::string*, Counter> published;  // per stream name
};

struct RouteResult {
  std::vector<LiveQueue*> live;
  const std::string* stream = nullptr;
};

// Per-thread cache of subject -> targets for one snapshot generation. Each
// result is shared: a publish whose captured events are delivered later (from
// the log's callback, on another thread) keeps the results it uses alive even
// if this thread's cache is cleared meanwhile (new snapshot, or full).
struct RouteCache {
  uint64_t generation = 0;
  absl::flat_hash_map<std::string, std::shared_ptr<const RouteResult>> map;
};
thread_local RouteCache t_route_cache;
constexpr size_t kRouteCacheMax = 16384;

// This thread's cache, ready for a batch of `n` subjects of `routes`: cleared
// here when the snapshot changed or the batch may not fit.
RouteCache& RouteCacheFor(const Routes& routes, size_t n) {
  RouteCache& cache = t_route_cache;
  if (cache.generation != routes.generation || cache.map.size() + n > kRouteCacheMax) {
    cache.map.clear();
    cache.generation = routes.generation;
  }
  return cache;
}

// The route of `subject`, from the cache or added to it. The cache never holds
// more than kRouteCacheMax entries: when full (only a batch of more distinct
// subjects than that gets there, see RouteCacheFor) it is cleared first, in
// the middle of the batch; such a batch keeps its own reference to every
// result it uses (PublishImpl). The returned reference is valid until the
// next call.
const std::shared_ptr<const RouteResult>& Route(RouteCache& cache, const Routes& routes,
                                                const std::string& subject) {
  auto it = cache.map.find(subject);
  if (it != cache.map.end()) return it->second;
  auto r = std::make_shared<RouteResult>();
  routes.live.Match(subject, &r->live);
  std::vector<const std::string*> streams;
  routes.streams.Match(subject, &streams);
  if (!streams.empty()) r->stream = streams.front();  // patterns never overlap
  if (cache.map.size() >= kRouteCacheMax) cache.map.clear();
  return cache.map.emplace(subject, std::move(r)).first->second;
}

// Groups messages per target queue and pushes each group once.
class Fanout {
 public:
  // `expected`: the most messages one queue may get (the batch size); each
  // group's vector starts with room for that many, up to 64 (so that a wide
  // fan-out of a large batch does not reserve batch size per subscriber).
  explicit Fanout(size_t expected) : expected_(std::min<size_t>(expected, 64)) {}

  void Add(const std::vector<LiveQueue*>& targets, MessagePtr m) {
    for (size_t t = 0; t < targets.size(); ++t) {
      LiveQueue* q = targets[t];
      auto it = std::find_if(groups_.begin(), groups_.end(),
                             [q](const auto& g) { return g.first == q; });
      if (it == groups_.end()) {
        groups_.emplace_back(q, std::vector<MessagePtr>{});
        it = groups_.end() - 1;
        it->second.reserve(expected_);
      }
      // The last target takes the caller's reference: one atomic increment
      // fewer per event and subscriber.
      if (t + 1 == targets.size()) {
        it->second.push_back(std::move(m));
      } else {
        it->second.push_back(m);
      }
    }
  }
  void Flush() {
    for (auto& [q, msgs] : groups_) q->Push(absl::MakeSpan(msgs));
    groups_.clear();
  }

 private:
  const size_t expected_;
  std::vector<std::pair<LiveQueue*, std::vector<MessagePtr>>> groups_;
};

// A subscription the bus tracks so it can end it from outside (Terminate on
// Close or DeleteStream).
class Tracked : public Subscription {
 public:
  // The stream it reads; empty for live subscriptions.
  virtual const std::string& stream() const = 0;
};

class BusImpl;

class LiveSubscription final : public Tracked {
 public:
  LiveSubscription(BusImpl* bus, uint64_t id, std::shared_ptr<LiveQueue> queue)
      : bus_(bus), id_(id), queue_(std::move(queue)) {}
  ~LiveSubscription() override;

  absl::Status Next(size_t max, absl::Duration timeout, std::vector<Delivery>* out,
                    uint64_t* missed) override {
    if (max == 0) return absl::InvalidArgumentError("max must be at least 1");
    size_t before = out->size();
    absl::Status s = queue_->Pop(max, timeout, out, missed);
    if (out->size() > before) Metrics().delivered_live.Add(out->size() - before);
    return s;
  }
  absl::Status Ack(absl::Span<const uint64_t>) override { return absl::OkStatus(); }
  absl::Status Nak(absl::Span<const uint64_t>) override { return absl::OkStatus(); }
  void Close() override { queue_->Close(); }
  void Terminate(absl::Status reason) override { queue_->Terminate(std::move(reason)); }
  const std::string& stream() const override { return no_stream_; }

 private:
  BusImpl* bus_;
  uint64_t id_;
  std::shared_ptr<LiveQueue> queue_;
  const std::string no_stream_;
};

// Shared end state of replay and durable subscriptions.
class EndState {
 public:
  void Close() {
    std::lock_guard<std::mutex> lock(mu_);
    if (end_.ok()) end_ = absl::CancelledError("subscription closed");
  }
  void End(absl::Status reason) {
    std::lock_guard<std::mutex> lock(mu_);
    if (end_.ok()) end_ = std::move(reason);
  }
  absl::Status status() {
    std::lock_guard<std::mutex> lock(mu_);
    return end_;
  }

 private:
  std::mutex mu_;
  absl::Status end_;
};

// How long a blocked Next() sleeps before re-checking whether it was ended.
constexpr absl::Duration kWaitSlice = absl::Milliseconds(50);

// Turns stored records into messages that carry the record's bytes (Message::wire()):
// each payload is checked structurally (DATA_LOSS when it would not parse as an
// event), copied onto one protobuf arena per call (a few block allocations for a
// whole batch instead of one per event), and parsed only if a reader asks for
// event(), onto the same arena. Each MessagePtr keeps the arena alive.
class RecordParser {
 public:
  explicit RecordParser(const std::string& stream) : stream_(stream) {}

  absl::StatusOr<MessagePtr> Parse(const StoredRecord& rec) {
    if (!bus_internal::IsWellFormedEventWire(rec.payload)) {
      return absl::DataLossError(absl::StrCat("stream ", stream_, ": record ", rec.sequence,
                                              " is not a valid event"));
    }
    if (arena_ == nullptr) {
      google::protobuf::ArenaOptions o;
      o.start_block_size = 64 << 10;
      o.max_block_size = 1 << 20;
      arena_ = std::make_shared<google::protobuf::Arena>(o);
    }
    char* bytes = google::protobuf::Arena::CreateArray<char>(arena_.get(), rec.payload.size());
    if (!rec.payload.empty()) std::memcpy(bytes, rec.payload.data(), rec.payload.size());
    const Message* m = google::protobuf::Arena::Create<Message>(
        arena_.get(), stream_, rec.sequence, rec.publish_time,
        std::string_view(bytes, rec.payload.size()), arena_.get());
    return MessagePtr(arena_, m);
  }

 private:
  const std::string& stream_;
  std::shared_ptr<google::protobuf::Arena> arena_;
};

// Base of replay and durable subscriptions: a stream and an end state.
class StreamSubscription : public Tracked {
 public:
  StreamSubscription(BusImpl* bus, uint64_t id, std::shared_ptr<BusBackend> backend,
                     std::string stream)
      : bus_(bus), id_(id), backend_(std::move(backend)), stream_(std::move(stream)) {}
  ~StreamSubscription() override;  // stops tracking

  void Close() override { end_.Close(); }
  void Terminate(absl::Status reason) override { end_.End(std::move(reason)); }
  const std::string& stream() const override { return stream_; }

 protected:
  BusImpl* const bus_;
  const uint64_t id_;
  const std::shared_ptr<BusBackend> backend_;
  const std::string stream_;
  EndState end_;
};

class ReplaySubscription final : public StreamSubscription {
 public:
  ReplaySubscription(BusImpl* bus, uint64_t id, std::shared_ptr<BusBackend> backend,
                     std::string stream, std::string filter,
                     std::unique_ptr<StreamReader> reader)
      : StreamSubscription(bus, id, std::move(backend), std::move(stream)),
        filter_(std::move(filter)), reader_(std::move(reader)) {}

  absl::Status Next(size_t max, absl::Duration timeout, std::vector<Delivery>* out,
                    uint64_t* missed) override {
    if (max == 0) return absl::InvalidArgumentError("max must be at least 1");
    if (missed != nullptr) *missed = 0;
    std::lock_guard<std::mutex> lock(read_mu_);
    absl::Time deadline = absl::Now() + timeout;
    RecordParser parser(stream_);
    while (true) {
      CITYOS_RETURN_IF_ERROR(end_.status());
      size_t got = 0;
      while (got < max) {
        // One record buffer for the whole call: its strings keep their capacity.
        CITYOS_ASSIGN_OR_RETURN(bool more, reader_->Next(&rec_));
        if (!more) break;
        if (!filter_.empty() && !SubjectMatches(filter_, rec_.subject)) continue;
        CITYOS_ASSIGN_OR_RETURN(MessagePtr m, parser.Parse(rec_));
        out->push_back(Delivery{std::move(m), 1});
        ++got;
      }
      if (got > 0) {
        Metrics().delivered_replay.Add(got);
        return absl::OkStatus();
      }
      absl::Time now = absl::Now();
      if (now >= deadline) return absl::OkStatus();
      auto waited = backend_->WaitForSequence(stream_, reader_->next_sequence(),
                                              std::min(deadline, now + kWaitSlice));
      if (!waited.ok()) {
        end_.End(waited.status());
        return waited.status();
      }
    }
  }
  absl::Status Ack(absl::Span<const uint64_t>) override { return absl::OkStatus(); }
  absl::Status Nak(absl::Span<const uint64_t>) override { return absl::OkStatus(); }

 private:
  const std::string filter_;
  std::mutex read_mu_;
  std::unique_ptr<StreamReader> reader_;
  StoredRecord rec_;  // guarded by read_mu_
};

class DurableSubscription final : public StreamSubscription {
 public:
  DurableSubscription(BusImpl* bus, uint64_t id, std::shared_ptr<BusBackend> backend,
                      std::string stream, std::string consumer, uint64_t member)
      : StreamSubscription(bus, id, std::move(backend), std::move(stream)),
        consumer_(std::move(consumer)), member_(member) {}
  ~DurableSubscription() override { backend_->LeaveConsumer(stream_, consumer_, member_); }

  absl::Status Next(size_t max, absl::Duration timeout, std::vector<Delivery>* out,
                    uint64_t* missed) override {
    if (max == 0) return absl::InvalidArgumentError("max must be at least 1");
    if (missed != nullptr) *missed = 0;
    absl::Time deadline = absl::Now() + timeout;
    std::vector<FetchedRecord> recs;
    while (true) {
      CITYOS_RETURN_IF_ERROR(end_.status());
      absl::Time now = absl::Now();
      absl::Status s = backend_->Fetch(stream_, consumer_, member_, max,
                                       std::min(deadline, now + kWaitSlice), &recs);
      if (!s.ok()) {
        end_.End(s);
        return s;
      }
      if (!recs.empty()) {
        RecordParser parser(stream_);
        for (FetchedRecord& f : recs) {
          CITYOS_ASSIGN_OR_RETURN(MessagePtr m, parser.Parse(f.record));
          out->push_back(Delivery{std::move(m), f.delivery_count});
        }
        Metrics().delivered_durable.Add(recs.size());
        return absl::OkStatus();
      }
      if (absl::Now() >= deadline) return absl::OkStatus();
    }
  }
  absl::Status Ack(absl::Span<const uint64_t> seqs) override {
    return backend_->Ack(stream_, consumer_, seqs, {}).status();
  }
  absl::Status Nak(absl::Span<const uint64_t> seqs) override {
    return backend_->Ack(stream_, consumer_, {}, seqs).status();
  }

 private:
  const std::string consumer_;
  const uint64_t member_;
};

// State of one publish call whose events go to one or more streams.
// The events of one publish call: owned (moved in, stamped with the
// publisher) or shared (immutable, already carrying the publisher).
class EventBatch {
 public:
  explicit EventBatch(std::vector<Event> owned) : owned_(std::move(owned)) {}
  explicit EventBatch(std::vector<std::shared_ptr<const Event>> shared)
      : shared_(std::move(shared)), is_shared_(true) {}

  size_t size() const { return is_shared_ ? shared_.size() : owned_.size(); }
  bool is_shared() const { return is_shared_; }
  const Event& at(size_t i) const { return is_shared_ ? *shared_[i] : owned_[i]; }
  Event& mutable_owned(size_t i) { return owned_[i]; }

  // The i-th event as a message. Moves the event (or the reference to a shared
  // one) out: call once per i, after the last at(i).
  // The message comes from the bus's recycling allocator (bus/message_pool.h):
  // the subscriber thread frees what the publisher thread allocated.
  MessagePtr TakeMessage(size_t i, std::string stream, uint64_t sequence, absl::Time t) {
    if (is_shared_) {
      return std::allocate_shared<Message>(bus_internal::MessageAllocator<Message>(),
                                           std::move(stream), sequence, t,
                                           std::move(shared_[i]));
    }
    return std::allocate_shared<Message>(bus_internal::MessageAllocator<Message>(),
                                         std::move(stream), sequence, t, std::move(owned_[i]));
  }

 private:
  std::vector<Event> owned_;
  std::vector<std::shared_ptr<const Event>> shared_;
  bool is_shared_ = false;
};

struct PublishState {
  explicit PublishState(EventBatch b) : batch(std::move(b)) {}
  EventBatch batch;
  std::vector<const RouteResult*> routes;
  std::vector<std::shared_ptr<const RouteResult>> route_refs;  // keeps `routes` valid
  std::shared_ptr<const Routes> snapshot;  // keeps `routes` targets valid
  std::vector<PublishResult> results;
  std::mutex mu;
  int pending = 0;
  absl::Status error;
  Bus::PublishCallback done;
};

class BusImpl final : public Bus {
 public:
  BusImpl(BusOptions options, std::shared_ptr<BusBackend> backend)
      : options_(std::move(options)),
        backend_(std::move(backend)),
        clock_(options_.clock ? options_.clock : Clock::Real()) {}

  ~BusImpl() override { Close().IgnoreError(); }

  absl::Status Init() {
    absl::MutexLock lock(&admin_mu_);
    for (const StreamInfo& info : backend_->ListStreams()) {
      stream_configs_[info.config.name] = info.config;
    }
    RebuildRoutesLocked();
    housekeeper_ = std::thread([this] { HousekeepingLoop(); });
    return absl::OkStatus();
  }

  // Registers this bus's share of cityos_bus_live_queue_depth. Called without
  // admin_mu_, which the callback takes.
  void RegisterMetrics() ABSL_LOCKS_EXCLUDED(admin_mu_) {
    live_depth_ = Metrics().live_depth.AddCallback({}, [this] {
      absl::MutexLock lock(&admin_mu_);
      size_t depth = 0;
      for (const auto& [id, entry] : live_) depth += entry.queue->depth();
      return static_cast<double>(depth);
    });
  }

  absl::StatusOr<std::vector<PublishResult>> Publish(const Principal& who,
                                                     std::vector<Event> events) override {
    return Wait([&](PublishCallback done) {
      PublishBatch(who, EventBatch(std::move(events)), std::move(done));
    });
  }

  absl::StatusOr<std::vector<PublishResult>> PublishShared(
      const Principal& who, std::vector<std::shared_ptr<const Event>> events) override {
    return Wait([&](PublishCallback done) {
      PublishBatch(who, EventBatch(std::move(events)), std::move(done));
    });
  }

  void PublishAsync(const Principal& who, std::vector<Event> events,
                    PublishCallback done) override {
    PublishBatch(who, EventBatch(std::move(events)), std::move(done));
  }

  void PublishSharedAsync(const Principal& who,
                          std::vector<std::shared_ptr<const Event>> events,
                          PublishCallback done) override {
    PublishBatch(who, EventBatch(std::move(events)), std::move(done));
  }

  absl::StatusOr<std::unique_ptr<Subscription>> Subscribe(
      const Principal& who, const SubscribeOptions& o) override {
    if (closed_.load()) return absl::UnavailableError("the bus is closed");
    if (!o.consumer.empty()) {
      if (o.stream.empty()) {
        return absl::InvalidArgumentError("subscribe: consumer given without its stream");
      }
      if (!o.subject_pattern.empty()) {
        return absl::InvalidArgumentError(
            "subscribe: subject_pattern must be empty for a durable consumer (its "
            "filter_subject applies)");
      }
    } else if (o.stream.empty()) {
      if (o.subject_pattern.empty()) {
        return absl::InvalidArgumentError(
            "subscribe: give a subject_pattern (live), a stream (replay) or a stream and "
            "a consumer (durable)");
      }
    }
    if (!o.subject_pattern.empty()) {
      if (absl::Status s = ValidatePattern(o.subject_pattern); !s.ok()) {
        return absl::InvalidArgumentError(absl::StrCat("subscribe: ", s.message()));
      }
    }
    CITYOS_RETURN_IF_ERROR(AuthorizeSubscribe(who, o));
    uint64_t id = next_sub_id_.fetch_add(1);
    if (!o.consumer.empty()) {
      CITYOS_ASSIGN_OR_RETURN(uint64_t member, backend_->JoinConsumer(o.stream, o.consumer));
      auto sub = std::make_unique<DurableSubscription>(this, id, backend_, o.stream,
                                                       o.consumer, member);
      Track(id, sub.get());
      return sub;
    }
    if (!o.stream.empty()) {
      CITYOS_ASSIGN_OR_RETURN(uint64_t start, backend_->ResolveStart(o.stream, o.start));
      CITYOS_ASSIGN_OR_RETURN(std::unique_ptr<StreamReader> reader,
                              backend_->Read(o.stream, start));
      auto sub = std::make_unique<ReplaySubscription>(this, id, backend_, o.stream,
                                                      o.subject_pattern, std::move(reader));
      Track(id, sub.get());
      return sub;
    }
    auto queue = std::make_shared<LiveQueue>(
        o.queue_depth ? o.queue_depth : options_.live_queue_depth, Metrics().live_dropped,
        options_.reader_spin);
    auto sub = std::make_unique<LiveSubscription>(this, id, queue);
    {
      absl::MutexLock lock(&admin_mu_);
      live_[id] = LiveEntry{o.subject_pattern, queue};
      subs_[id] = sub.get();
      RebuildRoutesLocked();
    }
    return sub;
  }

  absl::StatusOr<StreamInfo> CreateStream(const Principal& who,
                                          const StreamConfig& config) override {
    CITYOS_RETURN_IF_ERROR(Authorize(who, "create_stream", config.name));
    CITYOS_RETURN_IF_ERROR(bus_internal::ValidateStreamConfig(config));
    absl::MutexLock lock(&admin_mu_);
    if (closed_.load()) return absl::UnavailableError("the bus is closed");
    for (const auto& [name, other] : stream_configs_) {
      if (name == config.name) continue;
      for (const std::string& a : config.subjects) {
        for (const std::string& b : other.subjects) {
          if (PatternsOverlap(a, b)) {
            return absl::InvalidArgumentError(absl::StrFormat(
                "stream %s: subject pattern \"%s\" overlaps \"%s\" of stream %s; an "
                "event may be stored in one stream only",
                config.name, a, b, name));
          }
        }
      }
    }
    CITYOS_ASSIGN_OR_RETURN(StreamInfo info, backend_->CreateStream(config));
    stream_configs_[config.name] = config;
    RebuildRoutesLocked();
    LogInfo("bus", "stream ready",
            {{"stream", config.name}, {"durability", DurabilityName(config.durability)}});
    return info;
  }

  absl::Status DeleteStream(const Principal& who, std::string_view name) override {
    CITYOS_RETURN_IF_ERROR(Authorize(who, "delete_stream", name));
    absl::MutexLock lock(&admin_mu_);
    CITYOS_RETURN_IF_ERROR(backend_->DeleteStream(name));
    stream_configs_.erase(std::string(name));
    RebuildRoutesLocked();
    EndSubscriptionsLocked(name, absl::NotFoundError(absl::StrFormat(
                                     "stream %s was deleted", name)));
    LogInfo("bus", "stream deleted", {{"stream", std::string(name)}});
    return absl::OkStatus();
  }

  absl::StatusOr<StreamInfo> GetStream(const Principal& who, std::string_view name) override {
    CITYOS_RETURN_IF_ERROR(Authorize(who, "read_info", name));
    return backend_->GetStream(name);
  }

  absl::StatusOr<std::vector<StreamInfo>> ListStreams(const Principal& who) override {
    CITYOS_RETURN_IF_ERROR(Authorize(who, "read_info", ""));
    return backend_->ListStreams();
  }

  absl::StatusOr<ConsumerInfo> CreateConsumer(const Principal& who,
                                              const ConsumerConfig& config) override {
    CITYOS_RETURN_IF_ERROR(AuthorizeConsumer(who, "create_consumer", config.stream));
    CITYOS_RETURN_IF_ERROR(bus_internal::ValidateConsumerConfig(config));
    return backend_->CreateConsumer(config);
  }

  absl::Status DeleteConsumer(const Principal& who, std::string_view stream,
                              std::string_view name) override {
    CITYOS_RETURN_IF_ERROR(AuthorizeConsumer(who, "delete_consumer", stream));
    return backend_->DeleteConsumer(stream, name);
  }

  absl::StatusOr<ConsumerInfo> GetConsumer(const Principal& who, std::string_view stream,
                                           std::string_view name) override {
    CITYOS_RETURN_IF_ERROR(AuthorizeConsumer(who, "read_info", stream));
    return backend_->GetConsumer(stream, name);
  }

  absl::StatusOr<std::vector<ConsumerInfo>> ListConsumers(const Principal& who,
                                                          std::string_view stream) override {
    CITYOS_RETURN_IF_ERROR(Authorize(who, "read_info", stream));
    return backend_->ListConsumers(stream);
  }

  absl::StatusOr<uint64_t> Ack(const Principal& who, std::string_view stream,
                               std::string_view consumer, absl::Span<const uint64_t> acks,
                               absl::Span<const uint64_t> naks) override {
    if (options_.authorizer != nullptr) {
      SubscribeOptions o;
      o.stream = std::string(stream);
      o.consumer = std::string(consumer);
      CITYOS_RETURN_IF_ERROR(AuthorizeSubscribe(who, o));
    }
    return backend_->Ack(stream, consumer, acks, naks);
  }

  absl::Status Close() override {
    if (closed_.exchange(true)) return absl::OkStatus();
    live_depth_.Reset();  // waits for a scrape evaluating it
    {
      std::lock_guard<std::mutex> lock(hk_mu_);
      hk_stop_ = true;
    }
    hk_cv_.notify_all();
    if (housekeeper_.joinable()) housekeeper_.join();
    {
      absl::MutexLock lock(&admin_mu_);
      for (auto& [id, sub] : subs_) {
        sub->Terminate(absl::UnavailableError("the bus is shutting down"));
      }
    }
    return backend_->Close();
  }

  // Runs `start` with a callback and waits for it.
  template <typename Start>
  static absl::StatusOr<std::vector<PublishResult>> Wait(Start start) {
    absl::Notification done;
    absl::StatusOr<std::vector<PublishResult>> result;
    start([&](absl::StatusOr<std::vector<PublishResult>> r) {
      result = std::move(r);
      done.Notify();
    });
    done.WaitForNotification();
    return result;
  }

  void PublishBatch(const Principal& who, EventBatch batch, PublishCallback done) {
    if (closed_.load(std::memory_order_acquire)) {
      done(absl::UnavailableError("the bus is closed"));
      return;
    }
    const size_t n = batch.size();
    if (n == 0) {
      done(absl::InvalidArgumentError("no events to publish"));
      return;
    }
    const std::string publisher = who.SpiffeId();
    for (size_t i = 0; i < n; ++i) {
      const Event& e = batch.at(i);
      if (absl::Status s = ValidateEvent(e, options_.limits); !s.ok()) {
        done(absl::Status(s.code(), absl::StrCat("events[", i, "]: ", s.message())));
        return;
      }
      if (batch.is_shared() && e.publisher() != publisher) {
        done(absl::InvalidArgumentError(absl::StrCat(
            "events[", i, "]: event.publisher: \"", e.publisher(),
            "\" is not the publishing principal ", publisher,
            "; shared events must carry their publisher (EventBuilder::Publisher)")));
        return;
      }
      if (options_.authorizer != nullptr) {
        if (absl::Status s = options_.authorizer->CanPublish(who, e); !s.ok()) {
          done(absl::Status(s.code(), absl::StrCat("events[", i, "]: ", s.message())));
          return;
        }
      }
    }
    if (!batch.is_shared()) {
      for (size_t i = 0; i < n; ++i) batch.mutable_owned(i).set_publisher(publisher);
    }
    std::shared_ptr<const Routes> snapshot = Snapshot();
    absl::Time now = clock_->Now();

    // Routes per event; an event with the subject of the one before it (a
    // batch from one source) takes its route without a hash look-up.
    std::vector<const RouteResult*> routes(n);
    RouteCache& cache = RouteCacheFor(*snapshot, n);
    // A route is kept (referenced) whenever the cache may drop it while the
    // batch still needs it: only a batch that may not fit in the cache (more
    // subjects than kRouteCacheMax) can see it cleared midway (Route), so
    // such a batch keeps every result it uses; and the routes of captured
    // events are used again when their appends are durable, possibly after
    // this thread cleared its cache.
    const bool may_clear = cache.map.size() + n > kRouteCacheMax;
    std::vector<std::shared_ptr<const RouteResult>> route_refs;
    bool any_captured = false;
    for (size_t i = 0; i < n; ++i) {
      const std::string& subject = batch.at(i).subject();
      if (i > 0 && subject == batch.at(i - 1).subject()) {
        routes[i] = routes[i - 1];
      } else {
        const std::shared_ptr<const RouteResult>& route = Route(cache, *snapshot, subject);
        routes[i] = route.get();
        if (may_clear || route->stream != nullptr) route_refs.push_back(route);
      }
      any_captured = any_captured || routes[i]->stream != nullptr;
    }

    // Uncaptured events go to live subscribers at once.
    Fanout fanout(n);
    size_t uncaptured = 0;
    for (size_t i = 0; i < n; ++i) {
      if (routes[i]->stream != nullptr) continue;
      ++uncaptured;
      if (!routes[i]->live.empty()) {
        fanout.Add(routes[i]->live, batch.TakeMessage(i, std::string(), 0, now));
      }
    }
    fanout.Flush();
    if (uncaptured > 0) Metrics().published_uncaptured.Add(uncaptured);
    if (!any_captured) {
      done(std::vector<PublishResult>(n));
      return;
    }

    // Captured events: append per stream (keeping order), deliver when durable.
    auto state = std::make_shared<PublishState>(std::move(batch));
    state->snapshot = std::move(snapshot);
    state->route_refs = std::move(route_refs);
    state->routes = std::move(routes);
    state->results.resize(n);
    state->done = std::move(done);
    std::map<const std::string*, std::vector<size_t>> per_stream;
    for (size_t i = 0; i < n; ++i) {
      if (state->routes[i]->stream != nullptr) {
        per_stream[state->routes[i]->stream].push_back(i);
      }
    }
    state->pending = static_cast<int>(per_stream.size());
    const auto start = std::chrono::steady_clock::now();
    for (auto& [stream, indexes] : per_stream) {
      std::vector<AppendRecord> records(indexes.size());
      for (size_t k = 0; k < indexes.size(); ++k) {
        const Event& e = state->batch.at(indexes[k]);
        records[k] = AppendRecord{e.subject(), &e};
      }
      const std::string& name = *stream;
      auto counter = state->snapshot->published.find(stream);
      Counter published =
          counter != state->snapshot->published.end() ? counter->second : Counter();
      backend_->Append(name, records,
                       [this, state, name, idx = indexes, published, start](
                           absl::StatusOr<uint64_t> first, absl::Time stored_at) {
                         if (first.ok()) {
                           published.Add(idx.size());
                           Metrics().publish_seconds.Observe(
                               std::chrono::duration<double>(
                                   std::chrono::steady_clock::now() - start)
                                   .count());
                         }
                         OnAppended(*state, name, idx, first, stored_at);
                         FinishOne(state);
                       });
    }
  }

  // Called by subscriptions when destroyed.
  void Untrack(uint64_t id, bool live) {
    absl::MutexLock lock(&admin_mu_);
    subs_.erase(id);
    if (live) {
      live_.erase(id);
      RebuildRoutesLocked();
    }
  }
  BusBackend& backend() { return *backend_; }

 private:
  struct LiveEntry {
    std::string pattern;
    std::shared_ptr<LiveQueue> queue;
  };

  absl::Status Authorize(const Principal& who, std::string_view action,
                         std::string_view stream) {
    if (options_.authorizer == nullptr) return absl::OkStatus();
    return options_.authorizer->CanAdminister(who, action, stream);
  }

  // Live subscriptions are decided on their pattern. Replay and durable ones
  // read only what their stream captures: without a filter pattern they are
  // decided on each of the stream's patterns; with one, on the filter, or
  // else on the stream's patterns (a filter such as `>` is no wider than the
  // stream it reads).
  absl::Status AuthorizeSubscribe(const Principal& who, const SubscribeOptions& o) {
    if (options_.authorizer == nullptr) return absl::OkStatus();
    absl::Status direct = absl::PermissionDeniedError(
        absl::StrCat("subscribe to stream ", o.stream, " denied"));
    if (!o.subject_pattern.empty() || o.stream.empty()) {
      direct = options_.authorizer->CanSubscribe(who, o);
      if (direct.ok() || o.stream.empty()) return direct;
    }
    absl::StatusOr<StreamInfo> info = backend_->GetStream(o.stream);
    if (!info.ok() || info->config.subjects.empty()) return direct;
    for (const std::string& pattern : info->config.subjects) {
      SubscribeOptions each = o;
      each.subject_pattern = pattern;
      CITYOS_RETURN_IF_ERROR(options_.authorizer->CanSubscribe(who, each));
    }
    return absl::OkStatus();
  }

  // Consumers of one stream: administrators, and whoever may subscribe to
  // every subject the stream captures (a durable consumer is a standing
  // subscription to the whole stream, so it grants nothing more).
  absl::Status AuthorizeConsumer(const Principal& who, std::string_view action,
                                 std::string_view stream) {
    absl::Status admin = Authorize(who, action, stream);
    if (admin.ok()) return admin;
    absl::StatusOr<StreamInfo> info = backend_->GetStream(stream);
    if (!info.ok() || info->config.subjects.empty()) return admin;
    for (const std::string& pattern : info->config.subjects) {
      SubscribeOptions o;
      o.subject_pattern = pattern;
      if (!options_.authorizer->CanSubscribe(who, o).ok()) return admin;
    }
    return absl::OkStatus();
  }

  void Track(uint64_t id, Tracked* sub) {
    absl::MutexLock lock(&admin_mu_);
    subs_[id] = sub;
  }

  void EndSubscriptionsLocked(std::string_view stream, const absl::Status& reason)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(admin_mu_) {
    for (auto& [id, sub] : subs_) {
      if (sub->stream() == stream) sub->Terminate(reason);
    }
  }

  std::shared_ptr<const Routes> Snapshot() {
    absl::MutexLock lock(&routes_mu_);
    return routes_;
  }

  void RebuildRoutesLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(admin_mu_) {
    auto r = std::make_shared<Routes>();
    r->generation = g_route_generation.fetch_add(1) + 1;
    for (const auto& [id, entry] : live_) {
      r->live.Insert(entry.pattern, entry.queue.get());
      r->live_refs.push_back(entry.queue);
    }
    for (const auto& [name, config] : stream_configs_) {
      r->stream_names.push_back(std::make_unique<std::string>(name));
      r->published.emplace(r->stream_names.back().get(),
                           Metrics().published.WithLabels({name}));
      for (const std::string& p : config.subjects) {
        r->streams.Insert(p, r->stream_names.back().get());
      }
    }
    absl::MutexLock lock(&routes_mu_);
    routes_ = std::move(r);
  }

  void OnAppended(PublishState& state, const std::string& stream,
                  const std::vector<size_t>& indexes, const absl::StatusOr<uint64_t>& first,
                  absl::Time stored_at) {
    if (!first.ok()) {
      std::lock_guard<std::mutex> lock(state.mu);
      if (state.error.ok()) state.error = first.status();
      return;
    }
    Fanout fanout(indexes.size());
    for (size_t k = 0; k < indexes.size(); ++k) {
      size_t i = indexes[k];
      state.results[i] = PublishResult{stream, *first + k};
      const RouteResult& route = *state.routes[i];
      if (route.live.empty()) continue;
      // Exactly the publish time the log stored.
      fanout.Add(route.live, state.batch.TakeMessage(i, stream, *first + k, stored_at));
    }
    fanout.Flush();
  }

  static void FinishOne(const std::shared_ptr<PublishState>& state) {
    absl::Status error;
    {
      std::lock_guard<std::mutex> lock(state->mu);
      if (--state->pending > 0) return;
      error = state->error;
    }
    if (error.ok()) {
      state->done(std::move(state->results));
    } else {
      state->done(error);
    }
  }

  void HousekeepingLoop() {
    std::unique_lock<std::mutex> lock(hk_mu_);
    while (!hk_stop_) {
      hk_cv_.wait_for(lock, absl::ToChronoNanoseconds(options_.housekeeping_interval));
      if (hk_stop_) break;
      lock.unlock();
      if (absl::Status s = backend_->Housekeeping(); !s.ok()) {
        LogWarn("bus", "housekeeping failed", {{"error", std::string(s.message())}});
      }
      lock.lock();
    }
  }

  BusOptions options_;
  std::shared_ptr<BusBackend> backend_;
  Clock* clock_;
  std::atomic<bool> closed_{false};
  std::atomic<uint64_t> next_sub_id_{1};

  absl::Mutex admin_mu_;
  std::map<std::string, StreamConfig> stream_configs_ ABSL_GUARDED_BY(admin_mu_);
  std::map<uint64_t, LiveEntry> live_ ABSL_GUARDED_BY(admin_mu_);
  std::map<uint64_t, Tracked*> subs_ ABSL_GUARDED_BY(admin_mu_);

  absl::Mutex routes_mu_;
  std::shared_ptr<const Routes> routes_ ABSL_GUARDED_BY(routes_mu_);

  std::mutex hk_mu_;
  std::condition_variable hk_cv_;
  bool hk_stop_ = false;
  std::thread housekeeper_;
  GaugeCallback live_depth_;  // cityos_bus_live_queue_depth share of this bus
};

LiveSubscription::~LiveSubscription() {
  queue_->Close();
  bus_->Untrack(id_, /*live=*/true);
}

StreamSubscription::~StreamSubscription() { bus_->Untrack(id_, /*live=*/false); }

}  // namespace

absl::StatusOr<std::unique_ptr<Bus>> Bus::Open(BusOptions options) {
  std::shared_ptr<BusBackend> backend = options.backend;
  if (backend == nullptr) {
    if (options.data_dir.empty()) {
      return absl::InvalidArgumentError("bus: data_dir is required without a backend");
    }
    CITYOS_ASSIGN_OR_RETURN(backend,
                            OpenLogBackend({.dir = options.data_dir, .clock = options.clock}));
  }
  if (options.live_queue_depth == 0) {
    return absl::InvalidArgumentError("bus: live_queue_depth must be at least 1");
  }
  auto bus = std::make_unique<BusImpl>(std::move(options), std::move(backend));
  CITYOS_RETURN_IF_ERROR(bus->Init());
  bus->RegisterMetrics();
  return std::unique_ptr<Bus>(std::move(bus));
}

}  // namespace cityos
