// The bus's authorization hook over the PDP, with audit of its decisions:
// denials individually, allows aggregated per (principal, action, subject)
// over windows of at most one second (the bus publishes millions of events a
// second; one audit entry each would drown the log).
#include <map>
#include <thread>
#include <tuple>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "cityos/audit.h"
#include "cityos/bus.h"
#include "cityos/policy.h"
#include "cityos/proto_time.h"
#include "core/strings.h"

namespace cityos {
namespace {

constexpr absl::Duration kAllowWindow = absl::Seconds(1);

class PolicyBusAuthorizer final : public BusAuthorizer {
 public:
  PolicyBusAuthorizer(PolicyDecisionPoint* pdp, AuditLog* audit)
      : pdp_(pdp), audit_(audit) {
    if (audit_ != nullptr) flusher_ = std::thread([this] { FlushLoop(); });
  }

  ~PolicyBusAuthorizer() override {
    if (audit_ == nullptr) return;
    {
      absl::MutexLock lock(&mu_);
      stop_ = true;
    }
    flusher_.join();
    FlushWindows(absl::InfiniteFuture());
  }

  absl::Status CanPublish(const Principal& who,
                          const event::v1::Event& event) override {
    AccessRequest req{.principal = &who,
                      .action = Action::kPublish,
                      .resource = ResourceView::Of(event)};
    std::shared_ptr<const Decision> d = pdp_->Decide(req);
    Record(who, "publish", event.subject(), *d, d->allowed(), d->reason);
    if (!d->allowed()) {
      return absl::PermissionDeniedError(
          absl::StrCat("publish on ", event.subject(), " denied: ", d->reason));
    }
    return absl::OkStatus();
  }

  absl::Status CanSubscribe(const Principal& who,
                            const SubscribeOptions& what) override {
    // Replay and durable subscriptions without a filter read the whole
    // stream: decided as the pattern that matches every subject.
    const std::string pattern =
        what.subject_pattern.empty() ? ">" : what.subject_pattern;
    std::string_view first = pattern;
    if (size_t dot = first.find('.'); dot != std::string_view::npos)
      first = first.substr(0, dot);
    AccessRequest req{.principal = &who, .action = Action::kSubscribe};
    req.resource.subject = pattern;
    if (first != "*" && first != ">") req.resource.domain = first;
    std::shared_ptr<const Decision> d = pdp_->Decide(req);
    bool ok = d->allowed() && d->obligations.empty();
    std::string reason = d->reason;
    if (d->allowed() && !ok)
      reason = "obligations apply: subscribe through the exchange";
    Record(who, "subscribe", pattern, *d, ok, reason);
    if (!ok) {
      return absl::PermissionDeniedError(
          absl::StrCat("subscribe to ", pattern, " denied: ", reason));
    }
    return absl::OkStatus();
  }

  absl::Status CanAdminister(const Principal& who, std::string_view action,
                             std::string_view stream) override {
    if (who.HasRole("admin")) return absl::OkStatus();
    // The node's own principal is allowed whatever its roles: only the PDP
    // knows it, and answers any request of it with "node principal".
    AccessRequest req{.principal = &who, .action = Action::kPublish};
    std::shared_ptr<const Decision> d = pdp_->DecideUncached(req);
    if (d->allowed() && d->reason == "node principal") return absl::OkStatus();
    const std::string reason = absl::StrCat(
        AV(action), " on stream ", AV(stream), " needs the admin role");
    if (audit_ != nullptr) {
      exchange::v1::AuditEntry e;
      TimestampToProto(absl::Now(), e.mutable_time());
      e.set_principal(who.SpiffeId());
      e.set_action(absl::StrCat("bus.", AV(action)));
      e.set_resource(std::string(stream));
      e.set_decision(exchange::v1::EFFECT_DENY);
      e.set_severity(exchange::v1::SEVERITY_NOTICE);
      e.set_reason(reason);
      audit_->Append(std::move(e));
    }
    return absl::PermissionDeniedError(reason);
  }

 private:
  using Key = std::tuple<std::string, std::string,
                         std::string>;  // principal, action, subject
  struct Window {
    absl::Time start;
    exchange::v1::AuditEntry entry;  // count accumulates
  };

  void Record(const Principal& who, const char* action,
              std::string_view subject, const Decision& d, bool allowed,
              const std::string& reason) {
    if (audit_ == nullptr) return;
    const absl::Time now = absl::Now();
    if (!allowed) {
      exchange::v1::AuditEntry e = Entry(who, action, subject, d, now);
      e.set_decision(exchange::v1::EFFECT_DENY);
      e.set_severity(d.severity == exchange::v1::SEVERITY_HIGH
                         ? exchange::v1::SEVERITY_HIGH
                         : exchange::v1::SEVERITY_NOTICE);
      e.set_reason(reason);
      audit_->Append(std::move(e));
      return;
    }
    std::optional<exchange::v1::AuditEntry> done;
    {
      absl::MutexLock lock(&mu_);
      Key key{who.SpiffeId(), action, std::string(subject)};
      auto it = windows_.find(key);
      if (it != windows_.end() && now - it->second.start >= kAllowWindow) {
        done = std::move(it->second.entry);
        windows_.erase(it);
        it = windows_.end();
      }
      if (it == windows_.end()) {
        Window w{now, Entry(who, action, subject, d, now)};
        w.entry.set_decision(exchange::v1::EFFECT_ALLOW);
        w.entry.set_severity(d.severity);
        w.entry.set_reason(d.reason);
        w.entry.set_count(0);
        it = windows_.emplace(std::move(key), std::move(w)).first;
      }
      it->second.entry.set_count(it->second.entry.count() + 1);
    }
    if (done) audit_->Append(std::move(*done));
  }

  static exchange::v1::AuditEntry Entry(const Principal& who,
                                        const char* action,
                                        std::string_view subject,
                                        const Decision& d, absl::Time now) {
    exchange::v1::AuditEntry e;
    TimestampToProto(now, e.mutable_time());
    e.set_principal(who.SpiffeId());
    e.set_action(action);
    e.set_resource(std::string(subject));
    for (const auto& id : d.rule_ids) e.add_rule_ids(id);
    for (const auto& o : d.obligations) e.add_obligations(o.kind());
    e.set_emergency_id(d.emergency_id);
    e.set_consent_id(d.consent_id);
    e.set_contract_id(d.contract_id);
    return e;
  }

  // Appends the allow windows older than one second at `now` (all of them
  // with InfiniteFuture()).
  void FlushWindows(absl::Time now) {
    std::vector<exchange::v1::AuditEntry> out;
    {
      absl::MutexLock lock(&mu_);
      for (auto it = windows_.begin(); it != windows_.end();) {
        if (now - it->second.start >= kAllowWindow) {
          out.push_back(std::move(it->second.entry));
          it = windows_.erase(it);
        } else {
          ++it;
        }
      }
    }
    for (auto& e : out) audit_->Append(std::move(e));
  }

  void FlushLoop() {
    while (true) {
      {
        absl::MutexLock lock(&mu_);
        if (mu_.AwaitWithTimeout(absl::Condition(&stop_),
                                 absl::Milliseconds(200)))
          return;
      }
      FlushWindows(absl::Now());
    }
  }

  PolicyDecisionPoint* const pdp_;
  AuditLog* const audit_;
  absl::Mutex mu_;
  std::map<Key, Window> windows_ ABSL_GUARDED_BY(mu_);
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::thread flusher_;
};

}  // namespace

std::unique_ptr<BusAuthorizer> MakePolicyBusAuthorizer(PolicyDecisionPoint* pdp,
                                                       AuditLog* audit) {
  return std::make_unique<PolicyBusAuthorizer>(pdp, audit);
}

}  // namespace cityos
