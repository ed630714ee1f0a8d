// The in-process Bus: validation, authorization, routing to live subscribers
// through an immutable subject trie, and storage/consumers through a
// BusBackend. See cityos/bus.h for the contract.
#include <atomic>
#include <condition_variable>
#include <map>
#include <mutex>
#include <thread>

#include "absl/container/node_hash_map.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "bus/live_queue.h"
#include "bus/subject_trie.h"
#include "bus/validate.h"
#include "cityos/bus.h"
#include "cityos/bus_backend.h"
#include "cityos/clock.h"
#include "cityos/logging.h"
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

namespace {

using bus_internal::LiveQueue;
using bus_internal::SubjectTrie;
using event::v1::Event;

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
};

struct RouteResult {
  std::vector<LiveQueue*> live;
  const std::string* stream = nullptr;
};

// Per-thread cache of subject -> targets for one snapshot generation.
struct RouteCache {
  uint64_t generation = 0;
  absl::node_hash_map<std::string, RouteResult> map;
};
thread_local RouteCache t_route_cache;
constexpr size_t kRouteCacheMax = 16384;

const RouteResult& Route(const Routes& routes, const std::string& subject) {
  RouteCache& cache = t_route_cache;
  if (cache.generation != routes.generation) {
    cache.map.clear();
    cache.generation = routes.generation;
  }
  auto it = cache.map.find(subject);
  if (it != cache.map.end()) return it->second;
  if (cache.map.size() >= kRouteCacheMax) cache.map.clear();
  RouteResult r;
  routes.live.Match(subject, &r.live);
  std::vector<const std::string*> streams;
  routes.streams.Match(subject, &streams);
  if (!streams.empty()) r.stream = streams.front();  // patterns never overlap
  return cache.map.emplace(subject, std::move(r)).first->second;
}

// Groups messages per target queue and pushes each group once.
class Fanout {
 public:
  void Add(const std::vector<LiveQueue*>& targets, const MessagePtr& m) {
    for (LiveQueue* q : targets) {
      auto it = std::find_if(groups_.begin(), groups_.end(),
                             [q](const auto& g) { return g.first == q; });
      if (it == groups_.end()) {
        groups_.emplace_back(q, std::vector<MessagePtr>{});
        it = groups_.end() - 1;
      }
      it->second.push_back(m);
    }
  }
  void Flush() {
    for (auto& [q, msgs] : groups_) q->Push(msgs);
    groups_.clear();
  }

 private:
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
    return queue_->Pop(max, timeout, out, missed);
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

absl::StatusOr<MessagePtr> ToMessage(const std::string& stream, StoredRecord&& rec) {
  auto m = std::make_shared<Message>();
  m->stream = stream;
  m->sequence = rec.sequence;
  m->publish_time = rec.publish_time;
  if (!m->event.ParseFromString(rec.payload)) {
    return absl::DataLossError(absl::StrCat("stream ", stream, ": record ", rec.sequence,
                                            " is not a valid event"));
  }
  return m;
}

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
    while (true) {
      CITYOS_RETURN_IF_ERROR(end_.status());
      size_t got = 0;
      while (got < max) {
        StoredRecord rec;
        CITYOS_ASSIGN_OR_RETURN(bool more, reader_->Next(&rec));
        if (!more) break;
        if (!filter_.empty() && !SubjectMatches(filter_, rec.subject)) continue;
        CITYOS_ASSIGN_OR_RETURN(MessagePtr m, ToMessage(stream_, std::move(rec)));
        out->push_back(Delivery{std::move(m), 1});
        ++got;
      }
      if (got > 0) return absl::OkStatus();
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
        for (FetchedRecord& f : recs) {
          CITYOS_ASSIGN_OR_RETURN(MessagePtr m, ToMessage(stream_, std::move(f.record)));
          out->push_back(Delivery{std::move(m), f.delivery_count});
        }
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
struct PublishState {
  std::vector<Event> events;
  std::vector<const RouteResult*> routes;
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

  absl::StatusOr<std::vector<PublishResult>> Publish(const Principal& who,
                                                     std::vector<Event> events) override {
    absl::Notification done;
    absl::StatusOr<std::vector<PublishResult>> result;
    PublishAsync(who, std::move(events),
                 [&](absl::StatusOr<std::vector<PublishResult>> r) {
                   result = std::move(r);
                   done.Notify();
                 });
    done.WaitForNotification();
    return result;
  }

  void PublishAsync(const Principal& who, std::vector<Event> events,
                    PublishCallback done) override {
    if (closed_.load(std::memory_order_acquire)) {
      done(absl::UnavailableError("the bus is closed"));
      return;
    }
    if (events.empty()) {
      done(absl::InvalidArgumentError("no events to publish"));
      return;
    }
    for (size_t i = 0; i < events.size(); ++i) {
      if (absl::Status s = ValidateEvent(events[i], options_.limits); !s.ok()) {
        done(absl::Status(s.code(), absl::StrCat("events[", i, "]: ", s.message())));
        return;
      }
      if (options_.authorizer != nullptr) {
        if (absl::Status s = options_.authorizer->CanPublish(who, events[i]); !s.ok()) {
          done(absl::Status(s.code(), absl::StrCat("events[", i, "]: ", s.message())));
          return;
        }
      }
    }
    const std::string publisher = who.SpiffeId();
    std::shared_ptr<const Routes> snapshot = Snapshot();
    absl::Time now = clock_->Now();

    std::vector<const RouteResult*> routes(events.size());
    bool any_captured = false;
    for (size_t i = 0; i < events.size(); ++i) {
      routes[i] = &Route(*snapshot, events[i].subject());
      any_captured = any_captured || routes[i]->stream != nullptr;
    }

    if (!any_captured) {
      // Nothing to store: route to live subscribers and answer at once.
      Fanout fanout;
      for (size_t i = 0; i < events.size(); ++i) {
        if (routes[i]->live.empty()) continue;
        auto m = std::make_shared<Message>();
        m->publish_time = now;
        m->event = std::move(events[i]);
        m->event.set_publisher(publisher);
        fanout.Add(routes[i]->live, m);
      }
      fanout.Flush();
      done(std::vector<PublishResult>(events.size()));
      return;
    }

    auto state = std::make_shared<PublishState>();
    state->snapshot = std::move(snapshot);
    state->routes = std::move(routes);
    state->results.resize(events.size());
    state->done = std::move(done);
    for (Event& e : events) e.set_publisher(publisher);
    state->events = std::move(events);

    // Group captured events per stream, keeping their order.
    std::map<const std::string*, std::vector<size_t>> per_stream;
    std::vector<size_t> uncaptured;
    for (size_t i = 0; i < state->events.size(); ++i) {
      if (state->routes[i]->stream != nullptr) {
        per_stream[state->routes[i]->stream].push_back(i);
      } else {
        uncaptured.push_back(i);
      }
    }
    // Uncaptured events of a mixed batch are routed right away.
    if (!uncaptured.empty()) {
      Fanout fanout;
      for (size_t i : uncaptured) {
        if (state->routes[i]->live.empty()) continue;
        auto m = std::make_shared<Message>();
        m->publish_time = now;
        m->event = state->events[i];
        fanout.Add(state->routes[i]->live, m);
      }
      fanout.Flush();
    }
    state->pending = static_cast<int>(per_stream.size());
    for (auto& [stream, indexes] : per_stream) {
      std::vector<std::string> payloads(indexes.size());
      std::vector<AppendRecord> records(indexes.size());
      for (size_t k = 0; k < indexes.size(); ++k) {
        const Event& e = state->events[indexes[k]];
        e.SerializeToString(&payloads[k]);
        records[k] = AppendRecord{e.subject(), payloads[k]};
      }
      const std::string& name = *stream;
      backend_->Append(name, records,
                       [this, state, name, idx = indexes](absl::StatusOr<uint64_t> first,
                                                          absl::Time stored_at) {
                         OnAppended(*state, name, idx, first, stored_at);
                         FinishOne(state);
                       });
    }
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
    if (options_.authorizer != nullptr) {
      CITYOS_RETURN_IF_ERROR(options_.authorizer->CanSubscribe(who, o));
    }
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
    auto queue = std::make_shared<LiveQueue>(o.queue_depth ? o.queue_depth
                                                           : options_.live_queue_depth);
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
    CITYOS_RETURN_IF_ERROR(Authorize(who, "create_consumer", config.stream));
    CITYOS_RETURN_IF_ERROR(bus_internal::ValidateConsumerConfig(config));
    return backend_->CreateConsumer(config);
  }

  absl::Status DeleteConsumer(const Principal& who, std::string_view stream,
                              std::string_view name) override {
    CITYOS_RETURN_IF_ERROR(Authorize(who, "delete_consumer", stream));
    return backend_->DeleteConsumer(stream, name);
  }

  absl::StatusOr<ConsumerInfo> GetConsumer(const Principal& who, std::string_view stream,
                                           std::string_view name) override {
    CITYOS_RETURN_IF_ERROR(Authorize(who, "read_info", stream));
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
      CITYOS_RETURN_IF_ERROR(options_.authorizer->CanSubscribe(who, o));
    }
    return backend_->Ack(stream, consumer, acks, naks);
  }

  absl::Status Close() override {
    if (closed_.exchange(true)) return absl::OkStatus();
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
    Fanout fanout;
    for (size_t k = 0; k < indexes.size(); ++k) {
      size_t i = indexes[k];
      state.results[i] = PublishResult{stream, *first + k};
      const RouteResult& route = *state.routes[i];
      if (route.live.empty()) continue;
      auto m = std::make_shared<Message>();
      m->stream = stream;
      m->sequence = *first + k;
      m->publish_time = stored_at;  // exactly what the log stored
      m->event = std::move(state.events[i]);
      fanout.Add(route.live, m);
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
  return std::unique_ptr<Bus>(std::move(bus));
}

}  // namespace cityos
