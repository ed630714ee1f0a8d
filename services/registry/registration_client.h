// RegistrationKeeper: how a standalone service binary joins the mesh. Given a
// channel to the node hosting the registry (mTLS in production) and what the
// service declares about itself, it registers, renews the lease with
// heartbeats on a background thread, registers again whenever the registry
// has forgotten it (the registry restarted, or the lease expired while the
// network was down), and deregisters on Stop().
//
//   CITYOS_ASSIGN_OR_RETURN(
//       std::unique_ptr<RegistrationKeeper> keeper,
//       RegistrationKeeper::Start(channel, {.registration = my_registration}));
//   // ... serve ...
//   keeper->Stop();  // deregisters; watchers see REMOVED / DEREGISTERED
//
// The keeper never gives up while running: failed calls are retried with
// exponential backoff (also PERMISSION_DENIED and ALREADY_EXISTS, which an
// operator may fix while the service runs), and each state change is logged
// (component "registration").
#ifndef CITYOS_SERVICES_REGISTRY_REGISTRATION_CLIENT_H_
#define CITYOS_SERVICES_REGISTRY_REGISTRATION_CLIENT_H_

#include <grpcpp/grpcpp.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "cityos/registry/v1/registry.grpc.pb.h"

namespace cityos {

struct RegistrationKeeperOptions {
  // What the service declares (name, org, endpoint, ...). Checked by Start()
  // with the registry's own rules. Required.
  registry::v1::ServiceRegistration registration;
  // Lease TTL to ask for. Default: 0, the registry's default (15 s).
  absl::Duration ttl = absl::ZeroDuration();
  // Time between heartbeats. Default: 0, a third of the TTL the registry
  // granted.
  absl::Duration heartbeat_interval = absl::ZeroDuration();
  // Deadline of each call. Default: 5 s.
  absl::Duration rpc_timeout = absl::Seconds(5);
  // First wait after a failed call; doubled after each further failure up to
  // `retry_max`. Heartbeats are retried no later than the next heartbeat
  // would be due. Default: 250 ms, 10 s.
  absl::Duration retry_initial = absl::Milliseconds(250);
  absl::Duration retry_max = absl::Seconds(10);
};

enum class KeeperState {
  kRegistering,  // no lease yet, first attempt under way
  kRegistered,   // the last call succeeded; the lease is alive
  kRetrying,     // the last call failed; retrying (see last_error)
  kStopped,      // Stop() was called
};

// "registering", "registered", "retrying", "stopped".
const char* KeeperStateName(KeeperState s);

// A snapshot of the keeper's state.
struct KeeperStatus {
  KeeperState state = KeeperState::kRegistering;
  // The current lease; empty while not registered.
  std::string lease_id;
  // TTL granted with the lease.
  absl::Duration ttl = absl::ZeroDuration();
  // When the registry said the lease expires (as of the last success).
  absl::Time expire_time = absl::InfinitePast();
  // Error of the last failed call; OK after a success.
  absl::Status last_error;
  // Successful Register calls (1 + re-registrations) and Heartbeats.
  uint64_t registrations = 0;
  uint64_t heartbeats = 0;
};

// Thread-safe.
class RegistrationKeeper {
 public:
  // Validates the registration (INVALID_ARGUMENT naming the field, as the
  // registry would) and starts the background thread, which registers at
  // once. Does not wait for the registry; see WaitUntilRegistered().
  // REQUIRES: channel != nullptr.
  static absl::StatusOr<std::unique_ptr<RegistrationKeeper>> Start(
      std::shared_ptr<grpc::ChannelInterface> channel, RegistrationKeeperOptions options);

  // Stop()s.
  ~RegistrationKeeper();
  RegistrationKeeper(const RegistrationKeeper&) = delete;
  RegistrationKeeper& operator=(const RegistrationKeeper&) = delete;

  KeeperStatus status() const;

  // OK once registered; DEADLINE_EXCEEDED (carrying the last error) if that
  // does not happen within `timeout`; CANCELLED once stopped.
  absl::Status WaitUntilRegistered(absl::Duration timeout) const;

  // Waits until `condition` holds for the status (true) or `timeout` passes
  // (false). For callers that need more than WaitUntilRegistered(), e.g.
  // "at least n heartbeats". `condition` runs with the keeper's lock held: it
  // must be quick and must not call the keeper.
  bool WaitFor(const std::function<bool(const KeeperStatus&)>& condition,
               absl::Duration timeout) const;

  // Stops the background thread (cancelling a call in flight) and, if a
  // lease is held, deregisters it within rpc_timeout. Returns the outcome of
  // Deregister (OK when there was nothing to deregister, or when it had
  // already ended: NOT_FOUND counts as done). Idempotent: later calls return
  // OK.
  absl::Status Stop();

 private:
  RegistrationKeeper(std::shared_ptr<grpc::ChannelInterface> channel,
                     RegistrationKeeperOptions options);

  void Run();
  // One Register / Heartbeat; the wait before the next step.
  absl::Duration RegisterOnce();
  absl::Duration HeartbeatOnce(const std::string& lease_id);
  absl::Duration Failed(absl::Status error, bool keep_lease, absl::Duration cap);
  // Prepares a call context with the deadline, registered for cancellation
  // by Stop(). False if stopping.
  bool BeginCall(grpc::ClientContext* context);
  void EndCall();
  void SetStateLocked(KeeperState state) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Duration HeartbeatIntervalLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const RegistrationKeeperOptions options_;
  const std::unique_ptr<registry::v1::RegistryService::Stub> stub_;

  mutable absl::Mutex mu_;
  KeeperStatus status_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  bool stopped_ ABSL_GUARDED_BY(mu_) = false;
  grpc::ClientContext* call_ ABSL_GUARDED_BY(mu_) = nullptr;
  absl::Duration backoff_ ABSL_GUARDED_BY(mu_);
  std::thread thread_;
};

}  // namespace cityos

#endif  // CITYOS_SERVICES_REGISTRY_REGISTRATION_CLIENT_H_
