// In-process bus scenarios: live fan-out, durable append per durability mode,
// replay from disk, and memory with a stalled subscriber. The NATS peers run
// in the same scenario, right after ours, against the run's nats-server.
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "bus_common.h"
#include "cityos/bus.h"
#include "measure.h"
#include "nats_peer.h"
#include "nats_server.h"
#include "scenario.h"

namespace cityos::bench {
namespace {

using event::v1::Event;

constexpr size_t kReadMax = 4096;  // deliveries per Subscription::Next

// ---------------------------------------------------------------- live fan-out

struct FanOutFigures {
  uint64_t published = 0;
  uint64_t delivered = 0;  // summed over subscribers
  uint64_t missed = 0;     // summed over subscribers
  int64_t publish_nanos = 0;
  int64_t nanos = 0;  // first publish to the last delivery
};

// One publisher (this thread, Bus::Publish of batches on an uncaptured
// subject) and `subscribers` live subscribers, each on its own thread.
absl::StatusOr<FanOutFigures> BusFanOut(BenchContext& ctx, int subscribers) {
  const std::string subject = "bench.inproc.reading.zone1";
  absl::StatusOr<Event> event = ctx.SampleEvent(subject);
  if (!event.ok()) return event.status();
  const auto shared = std::make_shared<const Event>(*event);
  absl::StatusOr<std::unique_ptr<ScopedBus>> scoped =
      ScopedBus::Open(ctx, "inproc");
  if (!scoped.ok()) return scoped.status();
  Bus& bus = *(*scoped)->bus();

  std::vector<std::unique_ptr<Subscription>> subs;
  for (int i = 0; i < subscribers; ++i) {
    absl::StatusOr<std::unique_ptr<Subscription>> sub =
        bus.Subscribe(BenchPrincipal(), {.subject_pattern = "bench.inproc.>"});
    if (!sub.ok()) return sub.status();
    subs.push_back(std::move(*sub));
  }

  struct Reader {
    uint64_t delivered = 0;
    uint64_t missed = 0;
    int64_t last_nanos = 0;
    absl::Status error;
  };
  std::vector<Reader> readers(subscribers);
  std::atomic<uint64_t> target{UINT64_MAX};  // set once publishing ends
  std::vector<std::thread> threads;
  for (int i = 0; i < subscribers; ++i) {
    threads.emplace_back([&, i] {
      Reader& r = readers[i];
      std::vector<Delivery> got;
      got.reserve(kReadMax);
      absl::Time idle_since = absl::Now();
      while (r.delivered + r.missed < target.load()) {
        got.clear();
        uint64_t missed = 0;
        absl::Status s =
            subs[i]->Next(kReadMax, absl::Milliseconds(50), &got, &missed);
        if (!s.ok()) {
          r.error = s;
          return;
        }
        if (!got.empty() || missed > 0) {
          r.delivered += got.size();
          r.missed += missed;
          if (!got.empty()) r.last_nanos = NowNanos();
          idle_since = absl::Now();
        } else if (target.load() != UINT64_MAX &&
                   absl::Now() - idle_since > absl::Seconds(5)) {
          r.error = absl::DeadlineExceededError(absl::StrCat(
              "subscriber ", i, " saw ", r.delivered, " delivered + ", r.missed,
              " missed of ", target.load(), " events, then nothing for 5 s"));
          return;
        }
      }
    });
  }

  FanOutFigures f;
  const size_t batch = ctx.options().batch;
  const int64_t start = NowNanos();
  const int64_t stop_at =
      start + absl::ToInt64Nanoseconds(ctx.options().max_time);
  absl::Status publish_error;
  while (f.published < ctx.options().events && NowNanos() < stop_at) {
    size_t n = static_cast<size_t>(
        std::min<uint64_t>(batch, ctx.options().events - f.published));
    absl::StatusOr<std::vector<PublishResult>> r =
        bus.PublishShared(BenchPrincipal(), SharedBatch(shared, n));
    if (!r.ok()) {
      publish_error = r.status();
      break;
    }
    f.published += n;
  }
  f.publish_nanos = NowNanos() - start;
  target = f.published;
  for (std::thread& t : threads) t.join();
  if (!publish_error.ok()) return publish_error;
  int64_t last = start;
  for (const Reader& r : readers) {
    if (!r.error.ok()) return r.error;
    f.delivered += r.delivered;
    f.missed += r.missed;
    last = std::max(last, r.last_nanos);
  }
  f.nanos = last - start;
  return f;
}

void AddFanOutFields(nlohmann::ordered_json& out, const FanOutFigures& f,
                     int subscribers, size_t batch, size_t event_bytes) {
  out["published_per_s"] = Round(Rate(f.published, f.publish_nanos), 0);
  out["events"] = f.published;
  out["delivered"] = f.delivered;
  out["missed"] = f.missed;
  out["subscribers"] = subscribers;
  out["batch"] = batch;
  out["event_bytes"] = event_bytes;
  out["seconds"] = Round(static_cast<double>(f.nanos) / 1e9, 3);
}

absl::StatusOr<Result> RunFanOut(BenchContext& ctx, int subscribers) {
  absl::StatusOr<FanOutFigures> f = BusFanOut(ctx, subscribers);
  if (!f.ok()) return f.status();
  Result r;
  r.value = Round(Rate(f->delivered, f->nanos), 0);
  // The peer: NATS core with the same payload (the serialized sample event).
  const std::string peer =
      subscribers == 1 ? "nats-core-1to1" : "nats-core-1to4";
  nlohmann::ordered_json peer_fields = nlohmann::ordered_json::object();
  absl::StatusOr<double> peer_value = [&]() -> absl::StatusOr<double> {
    absl::StatusOr<NatsServer*> nats = ctx.Nats();
    if (!nats.ok()) return nats.status();
    absl::StatusOr<Event> event = ctx.SampleEvent("bench.inproc.reading.zone1");
    if (!event.ok()) return event.status();
    const std::string payload = event->SerializeAsString();
    absl::StatusOr<PubSubFigures> p =
        NatsCorePubSub((*nats)->url(), "bench.nats.core", payload, subscribers,
                       ctx.options().events, ctx.options().max_time);
    if (!p.ok()) return p.status();
    peer_fields["peer_published_per_s"] =
        Round(Rate(p->published, p->publish_nanos), 0);
    peer_fields["peer_events"] = p->published;
    peer_fields["peer_delivered"] = p->delivered;
    peer_fields["peer_dropped"] = p->dropped;
    peer_fields["peer_payload_bytes"] = payload.size();
    peer_fields["peer_version"] = (*nats)->version();
    return Round(Rate(p->delivered, p->nanos), 0);
  }();
  r.SetPeer(peer, peer_value);
  AddFanOutFields(r.extra, *f, subscribers, ctx.options().batch,
                  ctx.options().event_bytes);
  for (auto& [k, v] : peer_fields.items()) r.extra[k] = v;
  return r;
}

// ------------------------------------------------------------ durable append

// A bus with one stream capturing bench.durable.> at `mode`, and the shared
// sample event its publishers send.
struct DurableBench {
  std::shared_ptr<const Event> event;
  std::unique_ptr<ScopedBus> scoped;
  Bus& bus() { return *scoped->bus(); }
};

absl::StatusOr<DurableBench> OpenDurableBench(BenchContext& ctx, Durability mode,
                                              const char* dir_prefix) {
  absl::StatusOr<Event> event = ctx.SampleEvent("bench.durable.reading.zone1");
  if (!event.ok()) return event.status();
  absl::StatusOr<std::unique_ptr<ScopedBus>> scoped =
      ScopedBus::Open(ctx, absl::StrCat(dir_prefix, DurabilityName(mode)));
  if (!scoped.ok()) return scoped.status();
  absl::StatusOr<StreamInfo> stream = (*scoped)->bus()->CreateStream(
      BenchPrincipal(),
      {.name = "bench", .subjects = {"bench.durable.>"}, .durability = mode});
  if (!stream.ok()) return stream.status();
  return DurableBench{std::make_shared<const Event>(*std::move(event)),
                      *std::move(scoped)};
}

// What the acknowledgements of durable publishes add up to: each batch's
// latency from `since`, the events acknowledged, the last acknowledgement's
// time and the first error. Thread-safe.
class AckTally {
 public:
  explicit AckTally(size_t batches) : latency_(batches) {}

  void Done(const absl::StatusOr<std::vector<PublishResult>>& r, size_t events,
            int64_t since) {
    const int64_t now = NowNanos();
    if (!r.ok()) {
      absl::MutexLock lock(&mu_);
      if (first_error_.ok()) first_error_ = r.status();
      return;
    }
    latency_.Add(now - since);  // every event of the batch waited this long
    acked_ += events;
    int64_t prev = last_ack_.load();
    while (prev < now && !last_ack_.compare_exchange_weak(prev, now)) {
    }
  }

  // Once every publisher is done: the first error, else sorts the latencies.
  absl::Status Finish() {
    {
      absl::MutexLock lock(&mu_);
      if (!first_error_.ok()) return first_error_;
    }
    latency_.Finish();
    return absl::OkStatus();
  }

  uint64_t acked() const { return acked_.load(); }
  int64_t last_ack() const { return last_ack_.load(); }
  const LatencySamples& latency() const { return latency_; }

 private:
  LatencySamples latency_;
  std::atomic<uint64_t> acked_{0};
  std::atomic<int64_t> last_ack_{0};
  absl::Mutex mu_;
  absl::Status first_error_ ABSL_GUARDED_BY(mu_);
};

// The fields every durable scenario reports after its own: run time and the
// whole process's CPU (publishers, the log's threads, the bus) per event.
void AddDurableRunFields(nlohmann::ordered_json& out, Durability mode,
                         size_t event_bytes, uint64_t acked, int64_t nanos,
                         double cpu_seconds) {
  out["durability"] = DurabilityName(mode);
  out["event_bytes"] = event_bytes;
  out["seconds"] = Round(static_cast<double>(nanos) / 1e9, 3);
  out["cpu_us_per_event"] = Round(
      cpu_seconds * 1e6 / static_cast<double>(std::max<uint64_t>(acked, 1)), 3);
  out["cores_used"] = Round(
      cpu_seconds * 1e9 / static_cast<double>(std::max<int64_t>(nanos, 1)), 2);
}

absl::StatusOr<Result> RunDurable(BenchContext& ctx, Durability mode,
                                  int publishers) {
  absl::StatusOr<DurableBench> bench = OpenDurableBench(ctx, mode, "durable-");
  if (!bench.ok()) return bench.status();
  Bus& bus = bench->bus();
  const std::shared_ptr<const Event>& shared = bench->event;

  const BenchOptions& o = ctx.options();
  const uint64_t per_publisher = std::max<uint64_t>(1, o.events / publishers);
  const size_t batches_per_publisher =
      static_cast<size_t>((per_publisher + o.batch - 1) / o.batch);
  AckTally tally(batches_per_publisher * publishers);

  const double cpu0 = ProcessCpuSeconds();
  const int64_t start = NowNanos();
  const int64_t stop_at = start + absl::ToInt64Nanoseconds(o.max_time);
  std::vector<std::thread> threads;
  for (int p = 0; p < publishers; ++p) {
    threads.emplace_back([&] {
      Window window(o.window);
      uint64_t sent = 0;
      while (sent < per_publisher && NowNanos() < stop_at) {
        size_t n = static_cast<size_t>(
            std::min<uint64_t>(o.batch, per_publisher - sent));
        window.Acquire();
        const int64_t t0 = NowNanos();
        bus.PublishSharedAsync(
            BenchPrincipal(), SharedBatch(shared, n),
            [&, n, t0](absl::StatusOr<std::vector<PublishResult>> r) {
              tally.Done(r, n, t0);
              window.Release();
            });
        sent += n;
      }
      WaitIdleOrDie(window, "durable publisher");
    });
  }
  for (std::thread& t : threads) t.join();
  const double cpu = ProcessCpuSeconds() - cpu0;
  if (absl::Status s = tally.Finish(); !s.ok()) return s;
  Result r;
  const int64_t nanos = tally.last_ack() - start;
  r.value = Round(Rate(tally.acked(), nanos), 0);
  tally.latency().AddTo(r.extra);
  r.extra["events"] = tally.acked();
  r.extra["publishers"] = publishers;
  r.extra["batch"] = o.batch;
  r.extra["window"] = o.window;
  AddDurableRunFields(r.extra, mode, o.event_bytes, tally.acked(), nanos, cpu);
  return r;
}

// ------------------------------------------------- durable append, open loop

// Offered rate of bus.durable.fsync.p16.paced, events/s, unless the
// environment variable CITYOS_BENCH_PACED_RATE names another (> 0).
constexpr double kPacedRate = 1'000'000;
// Batches one paced publisher may have in flight before it waits (a memory
// bound only: the latency of a batch sent late still counts from its
// scheduled time).
constexpr size_t kPacedMaxInFlight = 256;

double PacedRate(double default_rate) {
  if (const char* env = std::getenv("CITYOS_BENCH_PACED_RATE")) {
    char* end = nullptr;
    const double v = std::strtod(env, &end);
    if (end != env && *end == '\0' && v > 0) return v;
    std::fprintf(stderr,
                 "cityos-bench: ignoring CITYOS_BENCH_PACED_RATE=%s (wants a "
                 "positive number of events/s)\n",
                 env);
  }
  return default_rate;
}

// Sleeps until the steady clock reads `nanos` (NowNanos() time).
void SleepUntilNanos(int64_t nanos) {
  const int64_t now = NowNanos();
  if (nanos <= now) return;
  std::this_thread::sleep_for(std::chrono::nanoseconds(nanos - now));
}

// Open loop: `publishers` threads together offer `rate` events/s in batches
// of ctx.options().batch, each publisher on its own fixed schedule (staggered
// so the batches of all publishers are evenly spread). A batch's latency runs
// from its SCHEDULED send time to its acknowledgement, so a publisher that
// falls behind (CPU, back-pressure, its in-flight bound) counts the full delay
// of every late batch (no coordinated omission).
absl::StatusOr<Result> RunDurablePaced(BenchContext& ctx, Durability mode,
                                       int publishers, double rate) {
  absl::StatusOr<DurableBench> bench = OpenDurableBench(ctx, mode, "paced-");
  if (!bench.ok()) return bench.status();
  Bus& bus = bench->bus();
  const std::shared_ptr<const Event>& shared = bench->event;

  const BenchOptions& o = ctx.options();
  const size_t batch = o.batch;
  // Each publisher sends one batch every `interval` ns.
  const double interval_ns =
      1e9 * static_cast<double>(batch) * publishers / rate;
  const double run_ns = static_cast<double>(absl::ToInt64Nanoseconds(o.max_time));
  // Batches per publisher: the run's time, or its share of --events.
  const uint64_t by_time = static_cast<uint64_t>(run_ns / interval_ns);
  const uint64_t by_events = std::max<uint64_t>(
      1, o.events / (static_cast<uint64_t>(publishers) * batch));
  const uint64_t batches = std::max<uint64_t>(1, std::min(by_time, by_events));
  AckTally tally(batches * publishers);
  LatencySamples send_lag(batches * publishers);

  const double cpu0 = ProcessCpuSeconds();
  const int64_t start = NowNanos() + 2'000'000;  // every thread started
  std::vector<std::thread> threads;
  for (int p = 0; p < publishers; ++p) {
    threads.emplace_back([&, p] {
      Window window(kPacedMaxInFlight);
      const double phase = interval_ns * p / publishers;
      for (uint64_t k = 0; k < batches; ++k) {
        const int64_t scheduled =
            start + static_cast<int64_t>(phase + interval_ns * k);
        SleepUntilNanos(scheduled);
        window.Acquire();
        send_lag.Add(NowNanos() - scheduled);
        bus.PublishSharedAsync(
            BenchPrincipal(), SharedBatch(shared, batch),
            [&, scheduled](absl::StatusOr<std::vector<PublishResult>> r) {
              tally.Done(r, batch, scheduled);
              window.Release();
            });
      }
      WaitIdleOrDie(window, "paced publisher");
    });
  }
  for (std::thread& t : threads) t.join();
  const double cpu = ProcessCpuSeconds() - cpu0;
  if (absl::Status s = tally.Finish(); !s.ok()) return s;
  send_lag.Finish();
  const uint64_t offered_events = batches * batch * publishers;
  // The schedule spans (batches - 1) intervals plus the last publisher's
  // phase; the achieved rate runs to the last acknowledgement.
  const int64_t nanos = tally.last_ack() - start;
  const double achieved = Rate(tally.acked(), nanos);
  Result r;
  r.value = Round(achieved, 0);
  r.extra["load"] =
      "open loop: each publisher sends on a fixed schedule whatever the "
      "acknowledgements do; latency from each batch's scheduled send time to "
      "its acknowledgement";
  r.extra["offered_per_s"] = Round(rate, 0);
  r.extra["achieved_per_s"] = Round(achieved, 0);
  // Short of the offered rate (beyond 1 %), or events not all acknowledged:
  // the bus did not keep up and the latencies are those of a growing queue.
  r.extra["kept_up"] =
      tally.acked() == offered_events && achieved >= 0.99 * rate;
  tally.latency().AddTo(r.extra);
  send_lag.AddTo(r.extra, "send_lag_");
  r.extra["events"] = tally.acked();
  r.extra["offered_events"] = offered_events;
  r.extra["publishers"] = publishers;
  r.extra["batch"] = batch;
  r.extra["publisher_interval_us"] = Round(interval_ns / 1e3, 1);
  r.extra["max_in_flight_per_publisher"] = kPacedMaxInFlight;
  AddDurableRunFields(r.extra, mode, o.event_bytes, tally.acked(), nanos, cpu);
  return r;
}

// ------------------------------------------------------------ replay from disk

// The replay reader either reads every event's payload (event(): the stored
// bytes are parsed on first use) or only the stored bytes (wire(): what a
// forwarder such as gRPC Subscribe or the exchange's replay uses).
absl::StatusOr<Result> RunReplay(BenchContext& ctx, bool wire_consumer) {
  const std::string subject = "bench.replay.reading.zone1";
  absl::StatusOr<Event> event = ctx.SampleEvent(subject);
  if (!event.ok()) return event.status();
  absl::StatusOr<std::unique_ptr<ScopedBus>> scoped =
      ScopedBus::Open(ctx, "replay");
  if (!scoped.ok()) return scoped.status();
  absl::StatusOr<StreamInfo> stream = (*scoped)->bus()->CreateStream(
      BenchPrincipal(), {.name = "bench",
                         .subjects = {"bench.replay.>"},
                         .durability = Durability::kNone});
  if (!stream.ok()) return stream.status();
  absl::StatusOr<uint64_t> stored =
      Prefill(ctx, *(*scoped)->bus(), *event, ctx.options().events);
  if (!stored.ok()) return stored.status();
  // Reopen: the bus recovers the log and holds nothing of it in memory; the
  // files are most likely still in the page cache (dropping it needs root).
  absl::StatusOr<absl::Duration> open_time = (*scoped)->Reopen();
  if (!open_time.ok()) return open_time.status();
  Bus& bus = *(*scoped)->bus();

  const double cpu0 = ProcessCpuSeconds();
  const int64_t start = NowNanos();
  absl::StatusOr<std::unique_ptr<Subscription>> sub =
      bus.Subscribe(BenchPrincipal(),
                    {.stream = "bench", .start = StartPosition::Earliest()});
  if (!sub.ok()) return sub.status();
  uint64_t delivered = 0;
  uint64_t bytes = 0;
  std::vector<Delivery> got;
  got.reserve(kReadMax);
  while (delivered < *stored) {
    got.clear();
    absl::Status s = (*sub)->Next(kReadMax, absl::Seconds(5), &got);
    if (!s.ok()) return s;
    if (got.empty()) {
      return absl::DeadlineExceededError(
          absl::StrCat("replay delivered ", delivered, " of ", *stored,
                       ", then nothing for 5 s"));
    }
    delivered += got.size();
    if (wire_consumer) {
      for (const Delivery& d : got) {
        if (d.message->wire().empty()) {
          return absl::InternalError("a replayed message without its stored bytes");
        }
        bytes += d.message->wire().size();
      }
    } else {
      for (const Delivery& d : got)
        bytes += d.message->event().binary_data().size();
    }
  }
  const int64_t nanos = NowNanos() - start;
  const double cpu = ProcessCpuSeconds() - cpu0;
  (*sub)->Close();

  Result r;
  r.value = Round(Rate(delivered, nanos), 0);
  nlohmann::ordered_json peer_fields = nlohmann::ordered_json::object();
  absl::StatusOr<double> peer_value = [&]() -> absl::StatusOr<double> {
    absl::StatusOr<NatsServer*> nats = ctx.Nats();
    if (!nats.ok()) return nats.status();
    const std::string url = (*nats)->url();
    const std::string payload = event->SerializeAsString();
    absl::StatusOr<JsPublishFigures> fill =
        JetStreamPublish(url, "BENCH_REPLAY", "bench.nats.replay", payload,
                         4096, *stored, ctx.options().max_time);
    if (!fill.ok()) return fill.status();
    absl::StatusOr<ReplayFigures> rep =
        JetStreamReplay(url, "BENCH_REPLAY", "bench.nats.replay", fill->acked);
    JetStreamDeleteStream(url, "BENCH_REPLAY");
    if (!rep.ok()) return rep.status();
    peer_fields["peer_events"] = rep->delivered;
    peer_fields["peer_payload_bytes"] = payload.size();
    return Round(Rate(rep->delivered, rep->nanos), 0);
  }();
  r.SetPeer("nats-jetstream-ordered-consumer", peer_value);
  r.extra["consumer"] = wire_consumer
                            ? "reads wire(): the stored bytes of every event, unparsed"
                            : "reads event().binary_data() of every event (parsed on first "
                              "use, from the stored bytes)";
  r.extra["consumer_bytes"] = bytes;
  r.extra["cpu_us_per_event"] =
      Round(cpu * 1e6 / static_cast<double>(std::max<uint64_t>(delivered, 1)), 3);
  r.extra["cores_used"] = Round(cpu * 1e9 / static_cast<double>(nanos), 2);
  r.extra["events"] = delivered;
  r.extra["event_bytes"] = ctx.options().event_bytes;
  r.extra["mb_per_s"] =
      Round(Rate(delivered * ctx.options().event_bytes, nanos) / 1e6, 1);
  r.extra["reopen_ms"] = Round(absl::ToDoubleMilliseconds(*open_time), 1);
  r.extra["seconds"] = Round(static_cast<double>(nanos) / 1e9, 3);
  for (auto& [k, v] : peer_fields.items()) r.extra[k] = v;
  return r;
}

// ---------------------------------------------- memory with a stalled reader

absl::StatusOr<Result> RunStalledSubscriber(BenchContext& ctx) {
  const std::string subject = "bench.memory.reading.zone1";
  absl::StatusOr<Event> event = ctx.SampleEvent(subject);
  if (!event.ok()) return event.status();
  const auto shared = std::make_shared<const Event>(*event);
  absl::StatusOr<std::unique_ptr<ScopedBus>> scoped =
      ScopedBus::Open(ctx, "memory");
  if (!scoped.ok()) return scoped.status();
  Bus& bus = *(*scoped)->bus();
  const size_t depth = BusOptions().live_queue_depth;
  absl::StatusOr<std::unique_ptr<Subscription>> stalled =
      bus.Subscribe(BenchPrincipal(), {.subject_pattern = "bench.memory.>"});
  if (!stalled.ok()) return stalled.status();
  absl::StatusOr<std::unique_ptr<Subscription>> reader =
      bus.Subscribe(BenchPrincipal(), {.subject_pattern = "bench.memory.>"});
  if (!reader.ok()) return reader.status();

  // Publish at least 8 queues' worth, so the stalled queue fills many times.
  const uint64_t events = std::max<uint64_t>(ctx.options().events, 8 * depth);
  TrimHeap();
  const uint64_t rss_before = ResidentBytes();
  const uint64_t heap_before = HeapInUseBytes();
  RssSampler sampler(absl::Milliseconds(5));

  std::atomic<uint64_t> target{UINT64_MAX};
  uint64_t read = 0, read_missed = 0;
  absl::Status read_error;
  std::thread reader_thread([&] {
    std::vector<Delivery> got;
    absl::Time idle_since = absl::Now();
    while (read + read_missed < target.load()) {
      got.clear();
      uint64_t missed = 0;
      absl::Status s =
          (*reader)->Next(kReadMax, absl::Milliseconds(50), &got, &missed);
      if (!s.ok()) {
        read_error = s;
        return;
      }
      if (!got.empty() || missed > 0) {
        idle_since = absl::Now();
      } else if (target.load() != UINT64_MAX &&
                 absl::Now() - idle_since > absl::Seconds(5)) {
        read_error =
            absl::DeadlineExceededError("reading subscriber stalled for 5 s");
        return;
      }
      read += got.size();
      read_missed += missed;
    }
  });

  uint64_t published = 0;
  uint64_t rss_half = 0;
  const size_t batch = ctx.options().batch;
  const int64_t start = NowNanos();
  const int64_t stop_at =
      start + absl::ToInt64Nanoseconds(ctx.options().max_time);
  absl::Status publish_error;
  while (published < events && NowNanos() < stop_at) {
    size_t n =
        static_cast<size_t>(std::min<uint64_t>(batch, events - published));
    absl::StatusOr<std::vector<PublishResult>> r =
        bus.PublishShared(BenchPrincipal(), SharedBatch(shared, n));
    if (!r.ok()) {
      publish_error = r.status();
      break;
    }
    published += n;
    if (rss_half == 0 && published >= events / 2) rss_half = ResidentBytes();
  }
  const int64_t publish_nanos = NowNanos() - start;
  target = published;
  reader_thread.join();
  const uint64_t rss_end = ResidentBytes();
  const uint64_t rss_peak = sampler.Stop();
  const uint64_t heap_end = HeapInUseBytes();
  if (!publish_error.ok()) return publish_error;
  if (!read_error.ok()) return read_error;

  // The stalled subscriber reads once: one event, and how many it missed.
  std::vector<Delivery> one;
  uint64_t stalled_missed = 0;
  absl::Status s =
      (*stalled)->Next(1, absl::ZeroDuration(), &one, &stalled_missed);
  if (!s.ok()) return s;
  if (rss_half == 0) rss_half = rss_end;

  Result r;
  r.value =
      static_cast<double>(rss_peak > rss_before ? rss_peak - rss_before : 0);
  r.extra["rss_before_bytes"] = rss_before;
  r.extra["rss_peak_bytes"] = rss_peak;
  r.extra["rss_half_bytes"] = rss_half;
  r.extra["rss_end_bytes"] = rss_end;
  r.extra["second_half_growth_bytes"] =
      static_cast<int64_t>(rss_end) - static_cast<int64_t>(rss_half);
  // What the allocator still holds for the bus at the end: mostly the stalled
  // subscriber's full queue of shared messages.
  r.extra["heap_growth_bytes"] =
      static_cast<int64_t>(heap_end) - static_cast<int64_t>(heap_before);
  r.extra["events"] = published;
  r.extra["published_per_s"] = Round(Rate(published, publish_nanos), 0);
  r.extra["stalled_missed"] = stalled_missed;
  r.extra["stalled_queued"] = published - stalled_missed;
  r.extra["reader_delivered"] = read;
  r.extra["reader_missed"] = read_missed;
  r.extra["queue_depth"] = depth;
  r.extra["event_bytes"] = ctx.options().event_bytes;
  return r;
}

const char* kModes[] = {"fsync", "interval", "none"};

}  // namespace

absl::Status RegisterBusScenarios(ScenarioRegistry& registry) {
  absl::Status s = registry.Add(
      {.name = "bus.inproc.1to1",
       .unit = "events/s",
       .description =
           "live pub/sub, 1 publisher -> 1 subscriber (peer: NATS core 1->1)",
       .run = [](BenchContext& ctx) { return RunFanOut(ctx, 1); }});
  if (!s.ok()) return s;
  s = registry.Add(
      {.name = "bus.inproc.1to4",
       .unit = "events/s",
       .description = "live fan-out to 4 subscribers, events delivered/s "
                      "(peer: NATS core 1->4)",
       .run = [](BenchContext& ctx) { return RunFanOut(ctx, 4); }});
  if (!s.ok()) return s;
  for (const char* mode_name : kModes) {
    for (int publishers : {1, 4, 16}) {
      Durability mode = *ParseDurability(mode_name);
      s = registry.Add(
          {.name = absl::StrCat("bus.durable.", mode_name, ".p", publishers),
           .unit = "events/s",
           .description = absl::StrCat(
               "PublishAsync, durability ", mode_name, ", ", publishers,
               publishers == 1 ? " publisher" : " publishers",
               "; ack latency per event"),
           .run = [mode, publishers](BenchContext& ctx) {
             return RunDurable(ctx, mode, publishers);
           }});
      if (!s.ok()) return s;
    }
  }
  {
    const double rate = PacedRate(kPacedRate);
    s = registry.Add(
        {.name = "bus.durable.fsync.p16.paced",
         .unit = "events/s",
         .description = absl::StrCat(
             "open loop: 16 publishers offering ", rate,
             " events/s in total (env CITYOS_BENCH_PACED_RATE), durability "
             "fsync; ack latency from each batch's scheduled send time"),
         .run = [rate](BenchContext& ctx) {
           return RunDurablePaced(ctx, Durability::kFsync, 16, rate);
         }});
    if (!s.ok()) return s;
    s = registry.Add(
        {.name = "bus.durable.fsync.p16.paced.500k",
         .unit = "events/s",
         .description =
             "as bus.durable.fsync.p16.paced at 500,000 events/s (issue 3's "
             "throughput target)",
         .run = [](BenchContext& ctx) {
           return RunDurablePaced(ctx, Durability::kFsync, 16, 500'000);
         }});
    if (!s.ok()) return s;
  }
  s = registry.Add({.name = "bus.replay.disk",
                    .unit = "events/s",
                    .description = "replay subscription from earliest over "
                                   "stored events (peer: JetStream "
                                   "ordered consumer); the reader reads "
                                   "every event's payload",
                    .run = [](BenchContext& ctx) { return RunReplay(ctx, false); }});
  if (!s.ok()) return s;
  s = registry.Add({.name = "bus.replay.disk.wire",
                    .unit = "events/s",
                    .description = "as bus.replay.disk, but the reader takes "
                                   "each event's stored bytes (wire()), as a "
                                   "forwarder does, without parsing them",
                    .run = [](BenchContext& ctx) { return RunReplay(ctx, true); }});
  if (!s.ok()) return s;
  return registry.Add(
      {.name = "bus.memory.stalled_subscriber",
       .unit = "bytes",
       .description =
           "RSS growth while one live subscriber never reads and another does",
       .run = RunStalledSubscriber});
}

}  // namespace cityos::bench
