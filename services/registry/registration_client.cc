#include "registration_client.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_format.h"
#include "cityos/event.h"
#include "cityos/grpc_util.h"
#include "cityos/logging.h"
#include "cityos/status.h"
#include "registry.h"
#include "registry_convert.h"

namespace cityos {
namespace {

constexpr char kComponent[] = "registration";

}  // namespace

const char* KeeperStateName(KeeperState s) {
  switch (s) {
    case KeeperState::kRegistering:
      return "registering";
    case KeeperState::kRegistered:
      return "registered";
    case KeeperState::kRetrying:
      return "retrying";
    case KeeperState::kStopped:
      return "stopped";
  }
  return "?";
}

absl::StatusOr<std::unique_ptr<RegistrationKeeper>> RegistrationKeeper::Start(
    std::shared_ptr<grpc::ChannelInterface> channel, RegistrationKeeperOptions options) {
  if (channel == nullptr) return absl::InvalidArgumentError("channel: required");
  CITYOS_RETURN_IF_ERROR(ValidateRecord(ServiceRecordFromProto(options.registration)));
  if (options.ttl < absl::ZeroDuration()) {
    return absl::InvalidArgumentError("ttl: must not be negative");
  }
  if (options.heartbeat_interval < absl::ZeroDuration()) {
    return absl::InvalidArgumentError("heartbeat_interval: must not be negative");
  }
  if (options.rpc_timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("rpc_timeout: must be positive");
  }
  if (options.retry_initial <= absl::ZeroDuration() || options.retry_max < options.retry_initial) {
    return absl::InvalidArgumentError("retry_initial: must be positive and at most retry_max");
  }
  std::unique_ptr<RegistrationKeeper> keeper(
      new RegistrationKeeper(std::move(channel), std::move(options)));
  keeper->thread_ = std::thread([k = keeper.get()] { k->Run(); });
  return keeper;
}

RegistrationKeeper::RegistrationKeeper(std::shared_ptr<grpc::ChannelInterface> channel,
                                       RegistrationKeeperOptions options)
    : options_(std::move(options)),
      stub_(registry::v1::RegistryService::NewStub(std::move(channel))),
      backoff_(options_.retry_initial) {}

RegistrationKeeper::~RegistrationKeeper() { Stop().IgnoreError(); }

KeeperStatus RegistrationKeeper::status() const {
  absl::MutexLock lock(&mu_);
  return status_;
}

bool RegistrationKeeper::WaitFor(const std::function<bool(const KeeperStatus&)>& condition,
                                 absl::Duration timeout) const {
  absl::MutexLock lock(&mu_);
  auto holds = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return condition(status_); };
  return mu_.AwaitWithTimeout(absl::Condition(&holds), timeout);
}

absl::Status RegistrationKeeper::WaitUntilRegistered(absl::Duration timeout) const {
  WaitFor(
      [](const KeeperStatus& s) {
        return s.state == KeeperState::kRegistered || s.state == KeeperState::kStopped;
      },
      timeout);
  absl::MutexLock lock(&mu_);
  if (status_.state == KeeperState::kRegistered) return absl::OkStatus();
  if (status_.state == KeeperState::kStopped) {
    return absl::CancelledError("the registration keeper was stopped");
  }
  return absl::DeadlineExceededError(absl::StrFormat(
      "not registered after %s; last error: %s", absl::FormatDuration(timeout),
      status_.last_error.ToString()));
}

absl::Status RegistrationKeeper::Stop() {
  {
    absl::MutexLock lock(&mu_);
    if (stopping_) {
      // Another Stop() is (or was) under way; wait for it to finish.
      auto done = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stopped_; };
      mu_.Await(absl::Condition(&done));
      return absl::OkStatus();
    }
    stopping_ = true;
    if (call_ != nullptr) call_->TryCancel();
  }
  if (thread_.joinable()) thread_.join();

  std::string lease_id;
  {
    absl::MutexLock lock(&mu_);
    lease_id = status_.lease_id;
  }
  absl::Status result;
  if (!lease_id.empty()) {
    registry::v1::DeregisterRequest request;
    request.set_lease_id(lease_id);
    registry::v1::DeregisterResponse response;
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + options_.rpc_timeout));
    result = FromGrpcStatus(stub_->Deregister(&context, request, &response));
    if (absl::IsNotFound(result)) result = absl::OkStatus();  // already gone
    if (result.ok()) {
      LogInfo(kComponent, "deregistered",
              {{"service", options_.registration.name()}, {"lease", lease_id}});
    } else {
      LogWarn(kComponent, "could not deregister; the lease will expire",
              {{"service", options_.registration.name()},
               {"lease", lease_id},
               {"error", result.ToString()}});
    }
  }
  absl::MutexLock lock(&mu_);
  status_.lease_id.clear();
  SetStateLocked(KeeperState::kStopped);
  stopped_ = true;
  return result;
}

void RegistrationKeeper::Run() {
  while (true) {
    std::string lease_id;
    {
      absl::MutexLock lock(&mu_);
      if (stopping_) return;
      lease_id = status_.lease_id;
    }
    const absl::Duration wait = lease_id.empty() ? RegisterOnce() : HeartbeatOnce(lease_id);
    absl::MutexLock lock(&mu_);
    auto stop = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stopping_; };
    if (mu_.AwaitWithTimeout(absl::Condition(&stop), wait)) return;
  }
}

bool RegistrationKeeper::BeginCall(grpc::ClientContext* context) {
  context->set_deadline(absl::ToChronoTime(absl::Now() + options_.rpc_timeout));
  absl::MutexLock lock(&mu_);
  if (stopping_) return false;
  call_ = context;
  return true;
}

void RegistrationKeeper::EndCall() {
  absl::MutexLock lock(&mu_);
  call_ = nullptr;
}

absl::Duration RegistrationKeeper::RegisterOnce() {
  registry::v1::RegisterRequest request;
  *request.mutable_registration() = options_.registration;
  if (options_.ttl > absl::ZeroDuration()) {
    DurationToProto(options_.ttl, request.mutable_ttl());
  }
  registry::v1::RegisterResponse response;
  grpc::ClientContext context;
  if (!BeginCall(&context)) return absl::ZeroDuration();
  const grpc::Status s = stub_->Register(&context, request, &response);
  EndCall();
  if (!s.ok()) return Failed(FromGrpcStatus(s), /*keep_lease=*/false, options_.retry_max);

  absl::StatusOr<absl::Duration> ttl = DurationFromProto(response.ttl(), "ttl");
  absl::MutexLock lock(&mu_);
  status_.lease_id = response.lease_id();
  status_.ttl = ttl.ok() ? *ttl : absl::ZeroDuration();
  status_.expire_time = ToAbslTime(response.instance().expire_time());
  status_.last_error = absl::OkStatus();
  ++status_.registrations;
  backoff_ = options_.retry_initial;
  LogInfo(kComponent, status_.registrations == 1 ? "registered" : "registered again",
          {{"service", options_.registration.name()},
           {"org", options_.registration.org()},
           {"endpoint", options_.registration.endpoint()},
           {"lease", status_.lease_id},
           {"ttl", absl::FormatDuration(status_.ttl)}});
  SetStateLocked(KeeperState::kRegistered);
  return HeartbeatIntervalLocked();
}

absl::Duration RegistrationKeeper::HeartbeatOnce(const std::string& lease_id) {
  registry::v1::HeartbeatRequest request;
  request.set_lease_id(lease_id);
  registry::v1::HeartbeatResponse response;
  grpc::ClientContext context;
  if (!BeginCall(&context)) return absl::ZeroDuration();
  const grpc::Status s = stub_->Heartbeat(&context, request, &response);
  EndCall();
  if (s.ok()) {
    absl::StatusOr<absl::Duration> ttl = DurationFromProto(response.ttl(), "ttl");
    absl::MutexLock lock(&mu_);
    if (ttl.ok()) status_.ttl = *ttl;
    status_.expire_time = ToAbslTime(response.expire_time());
    status_.last_error = absl::OkStatus();
    ++status_.heartbeats;
    backoff_ = options_.retry_initial;
    SetStateLocked(KeeperState::kRegistered);
    return HeartbeatIntervalLocked();
  }
  absl::Status error = FromGrpcStatus(s);
  if (absl::IsNotFound(error) || absl::IsPermissionDenied(error)) {
    // The registry forgot the lease (it restarted, or the lease expired while
    // we could not reach it), or it is not ours any more: register again now.
    {
      absl::MutexLock lock(&mu_);
      if (!stopping_) {
        LogWarn(kComponent, "the registry no longer holds the lease; registering again",
                {{"service", options_.registration.name()},
                 {"lease", lease_id},
                 {"error", error.ToString()}});
      }
    }
    Failed(std::move(error), /*keep_lease=*/false, absl::ZeroDuration());
    return absl::ZeroDuration();
  }
  absl::Duration cap;
  {
    absl::MutexLock lock(&mu_);
    cap = HeartbeatIntervalLocked();
  }
  return Failed(std::move(error), /*keep_lease=*/true, cap);
}

absl::Duration RegistrationKeeper::Failed(absl::Status error, bool keep_lease,
                                          absl::Duration cap) {
  absl::MutexLock lock(&mu_);
  if (!keep_lease) status_.lease_id.clear();
  const absl::Duration wait = std::min(backoff_, cap);
  backoff_ = std::min(backoff_ * 2, options_.retry_max);
  if (stopping_) return wait;  // a call cancelled by Stop(): nothing to report
  status_.last_error = std::move(error);
  SetStateLocked(KeeperState::kRetrying);
  return wait;
}

void RegistrationKeeper::SetStateLocked(KeeperState state) {
  if (status_.state == state) return;
  const KeeperState old = status_.state;
  status_.state = state;
  const std::string service = options_.registration.name();
  switch (state) {
    case KeeperState::kRetrying:
      LogWarn(kComponent, "registration failing; retrying",
              {{"service", service},
               {"from", KeeperStateName(old)},
               {"error", status_.last_error.ToString()}});
      break;
    case KeeperState::kRegistered:
    case KeeperState::kRegistering:
    case KeeperState::kStopped:
      LogInfo(kComponent, "registration state",
              {{"service", service},
               {"from", KeeperStateName(old)},
               {"to", KeeperStateName(state)}});
      break;
  }
}

absl::Duration RegistrationKeeper::HeartbeatIntervalLocked() const {
  if (options_.heartbeat_interval > absl::ZeroDuration()) return options_.heartbeat_interval;
  if (status_.ttl > absl::ZeroDuration()) return status_.ttl / 3;
  return absl::Seconds(1);
}

}  // namespace cityos
