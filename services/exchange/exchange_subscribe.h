// The exchange's Subscribe: a bus subscription taken as the node, with every
// event decided for the caller and purpose, obligations applied, filtered on
// the caller's (obligated) view of the event's entity, and batched into
// SubscribeResponses. Also the parts the whole service shares: the handles of
// the node (ExchangeDeps) and the obligation appliers per recipient org.
//
// Cutting subscriptions when access ends (SubscriptionHub): the hub watches
// the PDP (one Watch for every subscription). On any change (policy load,
// emergency declared / ended / expired, consent or contract invalidation) a
// re-check thread re-decides every live subscription:
//   - MayAllow(subscribe, pattern, filter type / owner / data subject): no
//     rule can allow it any more -> the stream ends with PERMISSION_DENIED;
//   - when the filter names one data subject, or the last allowed event was
//     allowed under an emergency or by a decision with an end
//     (valid_until), that event's decision is taken again; denied -> the
//     stream ends with PERMISSION_DENIED.
// The re-check also runs by itself when the earliest valid_until of the
// subscriptions' last decisions passes (an emergency's window ends). The
// stream's bus subscription is Terminate()d with the denial, which wakes its
// waiting handler at once, so a cut reaches the client within milliseconds.
// Withdrawal for some events only (another data subject's consent) just stops
// those events: each is decided on its own.
//
// Live subscriptions (no start_time / resume_token) of one subject pattern
// share one bus subscription (LiveFeeds, live_feed.h): its dispatcher hands
// each event to the subscriptions whose filter can match it (indexed by entity
// id and type), so the cost per event does not grow with the number of
// narrow subscriptions. Everything after that is per subscription as before.
//
// Replay (start_time / resume_token) reads the bus stream that captures the
// whole subject pattern; replayed events are decided as `history`, live ones
// as `subscribe`. resume_token = "<stream>:<sequence>".
#ifndef CITYOS_SERVICES_EXCHANGE_EXCHANGE_SUBSCRIBE_H_
#define CITYOS_SERVICES_EXCHANGE_EXCHANGE_SUBSCRIBE_H_

#include <grpcpp/grpcpp.h>

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "cityos/audit.h"
#include "cityos/bus.h"
#include "cityos/clock.h"
#include "cityos/entity.h"
#include "cityos/exchange/v1/exchange.grpc.pb.h"
#include "cityos/policy.h"
#include "cityos/principal.h"
#include "cityos/state_store.h"
#include "decision_audit.h"
#include "live_feed.h"

namespace cityos {

// Who is calling an RPC: OK with the caller's principal, or UNAUTHENTICATED.
// Gets the context of either server API (Query is served through the
// callback API, the other methods through the sync one). Thread-safe.
using CallerResolver = std::function<absl::StatusOr<Principal>(grpc::ServerContextBase*)>;

// One ObligationApplier per recipient org, keyed with the org's pseudonym key
// (derived from the node's secret), so two orgs never get joinable
// pseudonyms. Thread-safe; appliers live as long as this object.
class RecipientAppliers {
 public:
  explicit RecipientAppliers(std::string node_secret) : secret_(std::move(node_secret)) {}
  ObligationApplier& For(const std::string& org);

 private:
  const std::string secret_;
  absl::Mutex mu_;
  absl::flat_hash_map<std::string, std::unique_ptr<ObligationApplier>> appliers_
      ABSL_GUARDED_BY(mu_);
};

// The node's handles the service works with. Not owned; all outlive the
// service.
struct ExchangeDeps {
  Bus* bus = nullptr;
  PolicyDecisionPoint* pdp = nullptr;
  AuditLog* audit = nullptr;
  StateStore* store = nullptr;
  Clock* clock = nullptr;
  // The node's own principal: the exchange reads the bus as the node.
  Principal node;
  CallerResolver resolver;
  DecisionAuditor* auditor = nullptr;
  RecipientAppliers* appliers = nullptr;
};

struct ExchangeServiceOptions {
  // Subscribe: deliveries per response when the request says 0. Default: 256.
  size_t default_max_batch = 256;
  // Subscribe: the largest max_batch honoured. Default: 4096.
  size_t max_batch_limit = 4096;
  // Subscribe: a response is closed once its events reach this many bytes,
  // so one response never nears gRPC's 4 MiB limit. Default: 1 MiB.
  size_t max_response_bytes = 1 << 20;
  // Subscribe: how long one wait for events lasts before the call checks
  // whether it was cancelled. Default: 100 ms.
  absl::Duration poll_interval = absl::Milliseconds(100);
  // Subscribe: live queue bound of each live subscription, in events (the
  // pattern's shared bus subscription takes the bus default or this,
  // whichever is larger); 0 = 65,536, the bus default.
  size_t queue_depth = 0;
  // Subscribe: after a wake-up that found less than a full batch, the call
  // lets events gather this long before it waits for more. An idle stream
  // still delivers its next event at once (the pause follows a delivery, it
  // does not precede one); a busy one wakes at most once per linger instead
  // of once per publish, which is what lets many narrow subscriptions (each
  // wanting a few of the pattern's events) share few cores. The pause ends
  // early when the stream is cut (access withdrawn, shutdown). Adds at most
  // this much latency under load; 0 = no pause. Default: 10 ms.
  absl::Duration linger = absl::Milliseconds(10);
};

// Where Serve writes a Subscribe call's responses: serialized
// cityos.exchange.v1.SubscribeResponse messages.
class SubscribeSink {
 public:
  virtual ~SubscribeSink() = default;
  virtual void SendInitialMetadata() = 0;
  // Sends one serialized SubscribeResponse; false when the stream is broken.
  virtual bool Write(std::string_view response) = 0;
};

class SubscriptionHub {
 public:
  SubscriptionHub(const ExchangeDeps* deps, ExchangeServiceOptions options);
  // Stop()s. Every Serve() call must have returned first (the gRPC server
  // is drained before its services go; BeginShutdown() ends open streams):
  // a running call uses the hub and its live feeds.
  ~SubscriptionHub();
  SubscriptionHub(const SubscriptionHub&) = delete;
  SubscriptionHub& operator=(const SubscriptionHub&) = delete;

  // Registers the PDP watcher and starts the re-check thread.
  void Start();
  // Ends every open stream with UNAVAILABLE and refuses new ones.
  void BeginShutdown();
  // Unwatches and joins the re-check thread. Idempotent.
  void Stop();

  // The whole Subscribe call for an authenticated caller.
  // Responses are built as bytes: a delivery of a stored event (replay)
  // carries the stored bytes after obligations applied on the wire, decided
  // from the envelope read off the bytes (no parse of the event), unless the
  // filter needs the entity view or an emergency needs the event's location;
  // live events and those cases go through the parsed event.
  grpc::Status Serve(grpc::ServerContext* context, const Principal& who,
                     const exchange::v1::SubscribeRequest& request, SubscribeSink* sink);

  // Open subscriptions (tests).
  size_t open() const;
  // Deliveries of ended calls so far, by path (tests, benchmarks): built
  // from the stored bytes / from the parsed event.
  uint64_t wire_deliveries() const { return stats_.wire_events.load(); }
  uint64_t parsed_deliveries() const { return stats_.parsed_events.load(); }

 private:
  struct Live;

  void OnChange(const PolicyChange& change);
  void RecheckLoop();
  // Re-decides one subscription; terminates it when access ended.
  void Recheck(Live& live);
  // A subscription's decision now ends at `t`: wake the re-check thread if
  // that is earlier than what it waits for.
  void NoteDeadline(absl::Time t);

  const ExchangeDeps* const deps_;
  const ExchangeServiceOptions options_;
  std::atomic<bool> draining_{false};
  // Bumped by every emergency change: subscriptions then look again whether
  // emergencies exist (and so whether events need their location decoded).
  std::atomic<uint64_t> emergency_epoch_{1};

  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::map<uint64_t, std::shared_ptr<Live>> live_ ABSL_GUARDED_BY(mu_);
  uint64_t next_id_ ABSL_GUARDED_BY(mu_) = 1;
  bool change_pending_ ABSL_GUARDED_BY(mu_) = false;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  absl::Time wake_at_ ABSL_GUARDED_BY(mu_) = absl::InfiniteFuture();
  uint64_t watch_id_ = 0;
  bool watching_ = false;
  std::thread rechecker_;
  struct Stats {
    std::atomic<uint64_t> wire_events{0};
    std::atomic<uint64_t> parsed_events{0};
  } stats_;
  // Live (non-replay) subscriptions: one shared bus subscription per pattern.
  LiveFeeds feeds_;
};

// "<stream>:<sequence>", and its inverse (INVALID_ARGUMENT when malformed).
std::string MakeResumeToken(std::string_view stream, uint64_t sequence);
absl::StatusOr<std::pair<std::string, uint64_t>> ParseResumeToken(std::string_view token);
// Whether every subject `inner` matches is matched by `outer` (both valid
// patterns).
bool PatternCovers(std::string_view outer, std::string_view inner);

}  // namespace cityos

#endif  // CITYOS_SERVICES_EXCHANGE_EXCHANGE_SUBSCRIBE_H_
