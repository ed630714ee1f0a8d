// The carbon account's only input path: a gRPC client of
// cityos.exchange.v1.ExchangeService that holds one Subscribe stream per input
// subject pattern, as the carbon service's own principal (mTLS with its own
// certificate) and for one purpose (`carbon_accounting`), and hands the
// deliveries in batches to a handler.
//
// Responses are read as bytes, not parsed into protobuf messages: each
// delivery is a set of views into its response's bytes (feed_wire.h: the
// event's id, type, owner and proto_data, the consent id, the resume token),
// so the feed builds no Event and allocates nothing per event; the consumer
// parses the payload it needs (a MeterReading) straight from the bytes.
//
//   CITYOS_ASSIGN_OR_RETURN(auto feed, ExchangeFeed::Start(
//       {.address = [] { return std::string("127.0.0.1:7443"); },
//        .tls = identity.tls, .server_id = identity.server_id,
//        .patterns = {"carbon.meter.reading.>"}, .state_dir = dir},
//       [&](std::vector<FeedDelivery> batch) { queue.Push(std::move(batch));
//       }));
//   ...   // after the batch is accounted:
//   feed->Processed(batch);   // its resume tokens become the restart points
//
// Streams reconnect with exponential backoff (and jitter) after any error;
// a stream resumes after the last delivery the handler's owner reported as
// processed (Processed), whose token is persisted per pattern in
// `<state_dir>/resume.json`, so a restart neither loses events captured by a
// bus stream nor accounts them twice (the ledgers deduplicate anyway). A
// stream without a token yet replays from the feed's first start (recorded
// in resume.json as `since`), so events published while the service was not
// yet allowed to subscribe (policy not loaded) or not yet connected are not
// lost either. Events on subjects no bus stream captures carry no token and
// cannot be replayed: those streams run live. A token the bus no longer
// retains (NOT_FOUND) is dropped with a warning and the stream restarts live.
//
// resume.json: {"since": "<RFC 3339>", "tokens": {"<pattern>": "<token>"}}
//
// Also here: the service's identity (ResolveServiceIdentity), from configured
// files or, under a node running `tls: auto`, issued from the node's
// development CA.
#ifndef CITYOS_SERVICES_CARBON_EXCHANGE_FEED_H_
#define CITYOS_SERVICES_CARBON_EXCHANGE_FEED_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "cityos/tls.h"
#include "feed_wire.h"

namespace grpc {
class ClientContext;
}

namespace cityos::carbon {

// The purpose the carbon account reads under.
inline constexpr char kCarbonPurpose[] = "carbon_accounting";

struct ExchangeFeedOptions {
  // The exchange's host:port, asked at every (re)connect (a hosting node
  // knows its bound port only after the plug-ins started). An answer ending
  // in ":0" means "not yet": the stream waits and asks again. Required.
  std::function<std::string()> address;
  // The service's own identity (ca, cert, key, crl, trust domain). Required.
  TlsConfig tls;
  // The exchange server's expected SPIFFE id; empty: any server of the
  // trust domain.
  std::string server_id;
  // Subject patterns, one stream each. Required, at least one.
  std::vector<std::string> patterns;
  // Default: kCarbonPurpose.
  std::string purpose = kCarbonPurpose;
  // Where resume.json is kept. Required.
  std::string state_dir;
  // Most events per response message asked of the exchange. Default: 1024.
  uint32_t max_batch = 1024;
  // Replay each stream from the feed's first start while it has no token
  // (see the file comment). Default: true.
  bool replay_since_first_start = true;
  // Reconnect backoff: doubles from `min_backoff` to `max_backoff`, +-20%
  // jitter; reset after a stream delivered something.
  absl::Duration min_backoff = absl::Milliseconds(100);
  absl::Duration max_backoff = absl::Seconds(10);
};

// Thread-safe. The handler is called from the stream threads (one per
// pattern), concurrently; it may block (that back-pressures the stream).
class ExchangeFeed {
 public:
  using Handler = std::function<void(std::vector<FeedDelivery>)>;

  // Checks the options, reads resume.json and starts the streams (which
  // connect in the background). INVALID_ARGUMENT naming the bad option;
  // DATA_LOSS for a corrupt resume.json.
  static absl::StatusOr<std::unique_ptr<ExchangeFeed>> Start(
      ExchangeFeedOptions options, Handler handler);
  ~ExchangeFeed();

  // Records the resume tokens of processed deliveries (the last one per
  // pattern wins) and persists them.
  void Processed(const std::vector<FeedDelivery>& batch);

  // Cancels the streams and joins their threads; the handler is not called
  // after it returns. Idempotent.
  void Stop();

  struct Stats {
    uint64_t delivered = 0;  // events handed to the handler
    uint64_t connects = 0;   // streams opened (first and re-connects)
    uint64_t errors = 0;     // streams that ended with an error
    uint64_t missed = 0;  // events the exchange dropped (subscriber queue full)
    uint32_t connected = 0;  // streams open now
  };
  Stats stats() const;
  // The last error a stream ended with (empty if none yet).
  std::string last_error() const;

 private:
  ExchangeFeed(ExchangeFeedOptions options, Handler handler);
  void Run(size_t pattern);
  absl::Status PersistLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  bool SleepUnlessStopped(absl::Duration d);

  const ExchangeFeedOptions options_;
  const Handler handler_;
  std::vector<std::thread> threads_;
  std::atomic<bool> stop_{false};

  mutable absl::Mutex mu_;
  std::map<size_t, std::string> tokens_ ABSL_GUARDED_BY(mu_);
  // Patterns no bus stream captures (replay refused): live only.
  std::map<size_t, bool> live_only_ ABSL_GUARDED_BY(mu_);
  absl::Time since_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
  std::vector<grpc::ClientContext*> active_ ABSL_GUARDED_BY(mu_);
  std::string last_error_ ABSL_GUARDED_BY(mu_);
  bool stopped_ ABSL_GUARDED_BY(mu_) = false;

  std::atomic<uint64_t> delivered_{0}, connects_{0}, errors_{0}, missed_{0};
  std::atomic<uint32_t> connected_{0};
};

// The carbon service's identity on the mesh.
struct ServiceIdentity {
  TlsConfig tls;
  // Expected SPIFFE id of the exchange server; empty means any.
  std::string server_id;
  // The identity's SPIFFE id (read from the certificate).
  std::string spiffe_id;
  // True if the certificate was issued on this call.
  bool issued = false;
};

struct IdentityRequest {
  // Configured files (`identity: {cert, key, ca, crl, server_id}`); when
  // `cert` is set, all of cert, key and ca are used as given.
  std::string cert, key, ca, crl, server_id;
  // The node's data dir and trust domain: without configured files, a node
  // running `tls: auto` keeps its development CA in <node_data_dir>/pki/ca;
  // a certificate for `org`/`name` is issued from it into `out_dir`
  // (carbon.pem, carbon.key mode 0600) and reused while it is from that CA
  // and valid for more than 7 days.
  std::string node_data_dir;
  std::string trust_domain = "local";
  std::string org = "carbon-office";
  std::string name = "carbon";
  std::string out_dir;
};

// FAILED_PRECONDITION when no files are configured and the node has no
// development CA (name the config keys to set); errors of the files
// otherwise (CheckTlsConfig).
absl::StatusOr<ServiceIdentity> ResolveServiceIdentity(
    const IdentityRequest& request);

}  // namespace cityos::carbon

#endif  // CITYOS_SERVICES_CARBON_EXCHANGE_FEED_H_
