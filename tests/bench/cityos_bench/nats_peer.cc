#include "nats_peer.h"

#include <nats/nats.h>

#include <atomic>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"

namespace cityos::bench {
namespace {

absl::Status NatsError(const char* what, natsStatus s) {
  return absl::UnavailableError(
      absl::StrCat("libnats ", what, ": ", natsStatus_GetText(s)));
}

// Owning handles.
struct ConnectionCloser {
  void operator()(natsConnection* nc) const {
    natsConnection_Close(nc);
    natsConnection_Destroy(nc);
  }
};
using Connection = std::unique_ptr<natsConnection, ConnectionCloser>;
struct SubscriptionDestroyer {
  void operator()(natsSubscription* s) const {
    natsSubscription_Unsubscribe(s);
    natsSubscription_Destroy(s);
  }
};
using Subscription = std::unique_ptr<natsSubscription, SubscriptionDestroyer>;
struct JsDestroyer {
  void operator()(jsCtx* js) const { jsCtx_Destroy(js); }
};
using JetStream = std::unique_ptr<jsCtx, JsDestroyer>;

absl::StatusOr<Connection> Connect(const std::string& url) {
  natsConnection* nc = nullptr;
  natsStatus s = natsConnection_ConnectTo(&nc, url.c_str());
  if (s != NATS_OK) return NatsError("connect", s);
  return Connection(nc);
}

absl::StatusOr<JetStream> OpenJetStream(natsConnection* nc, jsOptions* opts) {
  jsCtx* js = nullptr;
  natsStatus s = natsConnection_JetStream(&js, nc, opts);
  if (s != NATS_OK) return NatsError("JetStream context", s);
  return JetStream(js);
}

// Counts deliveries and remembers when the last one arrived.
struct Counter {
  std::atomic<uint64_t> count{0};
  std::atomic<int64_t> last_nanos{0};
};

void OnMessage(natsConnection*, natsSubscription*, natsMsg* msg,
               void* closure) {
  auto* c = static_cast<Counter*>(closure);
  c->last_nanos.store(NowNanos(), std::memory_order_relaxed);
  c->count.fetch_add(1, std::memory_order_relaxed);
  natsMsg_Destroy(msg);
}

struct JsAckState {
  std::vector<int64_t>
      sent_nanos;  // by sequence - 1 (fresh stream, one publisher)
  LatencySamples* latency = nullptr;
  std::atomic<uint64_t> acked{0};
  std::atomic<uint64_t> errors{0};
  std::atomic<int64_t> last_nanos{0};
};

void OnPubAck(jsCtx*, natsMsg* msg, jsPubAck* pa, jsPubAckErr* pae,
              void* closure) {
  auto* st = static_cast<JsAckState*>(closure);
  int64_t now = NowNanos();
  if (pa != nullptr) {
    if (pa->Sequence >= 1 && pa->Sequence <= st->sent_nanos.size()) {
      st->latency->Add(now - st->sent_nanos[pa->Sequence - 1]);
    }
    st->acked.fetch_add(1, std::memory_order_relaxed);
  } else {
    st->errors.fetch_add(1, std::memory_order_relaxed);
  }
  st->last_nanos.store(now, std::memory_order_relaxed);
  natsMsg_Destroy(msg);
}

// Waits until `done()` or until `progress()` stops changing for `idle`.
template <typename Done, typename Progress>
void WaitUntil(Done done, Progress progress, absl::Duration idle) {
  uint64_t last = progress();
  absl::Time last_change = absl::Now();
  while (!done()) {
    absl::SleepFor(absl::Milliseconds(1));
    uint64_t now = progress();
    if (now != last) {
      last = now;
      last_change = absl::Now();
    } else if (absl::Now() - last_change > idle) {
      return;
    }
  }
}

}  // namespace

absl::StatusOr<PubSubFigures> NatsCorePubSub(const std::string& url,
                                             const std::string& subject,
                                             const std::string& payload,
                                             int subscribers, uint64_t events,
                                             absl::Duration max_time) {
  std::vector<Connection> sub_conns;
  std::vector<Subscription> subs;
  std::vector<std::unique_ptr<Counter>> counters;
  for (int i = 0; i < subscribers; ++i) {
    absl::StatusOr<Connection> nc = Connect(url);
    if (!nc.ok()) return nc.status();
    counters.push_back(std::make_unique<Counter>());
    natsSubscription* sub = nullptr;
    natsStatus s = natsConnection_Subscribe(&sub, nc->get(), subject.c_str(),
                                            OnMessage, counters.back().get());
    if (s != NATS_OK) return NatsError("subscribe", s);
    subs.emplace_back(sub);
    // The subscription is registered at the server once this round trip ends.
    s = natsConnection_Flush(nc->get());
    if (s != NATS_OK) return NatsError("flush", s);
    sub_conns.push_back(std::move(*nc));
  }
  absl::StatusOr<Connection> pub = Connect(url);
  if (!pub.ok()) return pub.status();

  PubSubFigures f;
  const int64_t start = NowNanos();
  const int64_t stop_at = start + absl::ToInt64Nanoseconds(max_time);
  const int len = static_cast<int>(payload.size());
  for (uint64_t i = 0; i < events; ++i) {
    if ((i & 1023) == 0 && NowNanos() > stop_at) break;
    natsStatus s = natsConnection_Publish(pub->get(), subject.c_str(),
                                          payload.data(), len);
    if (s != NATS_OK) return NatsError("publish", s);
    ++f.published;
  }
  natsStatus s = natsConnection_Flush(pub->get());
  if (s != NATS_OK) return NatsError("flush", s);
  f.publish_nanos = NowNanos() - start;

  auto seen = [&] {
    uint64_t total = 0;
    for (size_t i = 0; i < subs.size(); ++i) {
      int64_t dropped = 0;
      natsSubscription_GetDropped(subs[i].get(), &dropped);
      total += counters[i]->count.load() + static_cast<uint64_t>(dropped);
    }
    return total;
  };
  const uint64_t expected = f.published * static_cast<uint64_t>(subscribers);
  WaitUntil([&] { return seen() >= expected; }, seen, absl::Seconds(2));

  int64_t last = start;
  for (size_t i = 0; i < subs.size(); ++i) {
    int64_t dropped = 0;
    natsSubscription_GetDropped(subs[i].get(), &dropped);
    f.dropped += static_cast<uint64_t>(dropped);
    f.delivered += counters[i]->count.load();
    last = std::max(last, counters[i]->last_nanos.load());
  }
  f.nanos = last - start;
  subs.clear();
  return f;
}

absl::StatusOr<JsPublishFigures> JetStreamPublish(
    const std::string& url, const std::string& stream,
    const std::string& subject, const std::string& payload, int64_t max_pending,
    uint64_t events, absl::Duration max_time) {
  absl::StatusOr<Connection> nc = Connect(url);
  if (!nc.ok()) return nc.status();

  JsPublishFigures f;
  f.latency = std::make_unique<LatencySamples>(events);
  JsAckState st;
  st.sent_nanos.resize(events);
  st.latency = f.latency.get();

  jsOptions opts;
  jsOptions_Init(&opts);
  opts.PublishAsync.MaxPending = max_pending;
  opts.PublishAsync.AckHandler = OnPubAck;
  opts.PublishAsync.AckHandlerClosure = &st;
  absl::StatusOr<JetStream> js = OpenJetStream(nc->get(), &opts);
  if (!js.ok()) return js.status();

  jsStreamConfig sc;
  jsStreamConfig_Init(&sc);
  const char* subjects[] = {subject.c_str()};
  sc.Name = stream.c_str();
  sc.Subjects = subjects;
  sc.SubjectsLen = 1;
  sc.Storage = js_FileStorage;
  jsErrCode jerr = static_cast<jsErrCode>(0);
  jsStreamInfo* si = nullptr;
  natsStatus s = js_AddStream(&si, js->get(), &sc, nullptr, &jerr);
  if (s != NATS_OK) {
    return absl::UnavailableError(
        absl::StrCat("js_AddStream: ", natsStatus_GetText(s),
                     " (JetStream error ", static_cast<int>(jerr), ")"));
  }
  jsStreamInfo_Destroy(si);

  const int64_t start = NowNanos();
  const int64_t stop_at = start + absl::ToInt64Nanoseconds(max_time);
  const int len = static_cast<int>(payload.size());
  uint64_t sent = 0;
  while (sent < events) {
    if ((sent & 255) == 0 && NowNanos() > stop_at) break;
    st.sent_nanos[sent] = NowNanos();
    s = js_PublishAsync(js->get(), subject.c_str(), payload.data(), len,
                        nullptr);
    if (s == NATS_TIMEOUT)
      continue;  // stalled at MaxPending for StallWait; retry
    if (s != NATS_OK) return NatsError("js_PublishAsync", s);
    ++sent;
  }
  jsPubOptions po;
  jsPubOptions_Init(&po);
  po.MaxWait = 60000;
  s = js_PublishAsyncComplete(js->get(), &po);
  if (s != NATS_OK) return NatsError("js_PublishAsyncComplete", s);

  f.acked = st.acked.load();
  f.errors = st.errors.load();
  f.nanos = st.last_nanos.load() - start;
  f.latency->Finish();
  return f;
}

absl::StatusOr<ReplayFigures> JetStreamReplay(const std::string& url,
                                              const std::string& stream,
                                              const std::string& subject,
                                              uint64_t expected) {
  absl::StatusOr<Connection> nc = Connect(url);
  if (!nc.ok()) return nc.status();
  absl::StatusOr<JetStream> js = OpenJetStream(nc->get(), nullptr);
  if (!js.ok()) return js.status();

  Counter counter;
  jsSubOptions so;
  jsSubOptions_Init(&so);
  so.Stream = stream.c_str();
  so.Ordered = true;
  so.Config.DeliverPolicy = js_DeliverAll;
  jsErrCode jerr = static_cast<jsErrCode>(0);
  natsSubscription* raw = nullptr;
  const int64_t start = NowNanos();
  natsStatus s = js_Subscribe(&raw, js->get(), subject.c_str(), OnMessage,
                              &counter, nullptr, &so, &jerr);
  if (s != NATS_OK) {
    return absl::UnavailableError(
        absl::StrCat("js_Subscribe (ordered): ", natsStatus_GetText(s),
                     " (JetStream error ", static_cast<int>(jerr), ")"));
  }
  Subscription sub(raw);
  // Unbounded client-side pending: the server's flow control paces delivery.
  natsSubscription_SetPendingLimits(raw, -1, -1);
  WaitUntil([&] { return counter.count.load() >= expected; },
            [&] { return counter.count.load(); }, absl::Seconds(5));
  ReplayFigures f;
  f.delivered = counter.count.load();
  f.nanos = counter.last_nanos.load() - start;
  if (f.delivered < expected) {
    return absl::DeadlineExceededError(
        absl::StrCat("JetStream ordered consumer delivered ", f.delivered,
                     " of ", expected, " events, then stalled for 5 s"));
  }
  return f;
}

void JetStreamDeleteStream(const std::string& url, const std::string& stream) {
  absl::StatusOr<Connection> nc = Connect(url);
  if (!nc.ok()) return;
  absl::StatusOr<JetStream> js = OpenJetStream(nc->get(), nullptr);
  if (!js.ok()) return;
  js_DeleteStream(js->get(), stream.c_str(), nullptr, nullptr);
}

void CloseNatsLibrary() { nats_Close(); }

}  // namespace cityos::bench
