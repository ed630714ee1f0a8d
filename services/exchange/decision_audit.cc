#include "decision_audit.h"

#include <algorithm>
#include <functional>
#include <optional>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "cityos/proto_time.h"

namespace cityos {

DecisionAuditor::DecisionAuditor(AuditLog* audit, Clock* clock, absl::Duration window)
    : audit_(audit), clock_(clock), window_(window) {
  timer_ = std::thread([this] { TimerLoop(); });
}

DecisionAuditor::~DecisionAuditor() {
  {
    std::lock_guard<std::mutex> lock(timer_mu_);
    stop_ = true;
  }
  timer_cv_.notify_all();
  timer_.join();
  Flush();
}

exchange::v1::AuditEntry DecisionAuditor::MakeEntry(std::string_view principal,
                                                    std::string_view action,
                                                    std::string_view resource,
                                                    std::string_view purpose,
                                                    std::string_view data_subject,
                                                    const Decision& decision, absl::Time now) {
  exchange::v1::AuditEntry e;
  TimestampToProto(now, e.mutable_time());
  e.set_principal(std::string(principal));
  e.set_action(std::string(action));
  e.set_resource(std::string(resource));
  e.set_purpose(std::string(purpose));
  e.set_decision(decision.effect);
  for (const std::string& r : decision.rule_ids) e.add_rule_ids(r);
  e.set_severity(decision.severity);
  e.set_data_subject(std::string(data_subject));
  for (const exchange::v1::Obligation& o : decision.obligations) e.add_obligations(o.kind());
  e.set_consent_id(decision.consent_id);
  e.set_contract_id(decision.contract_id);
  e.set_emergency_id(decision.emergency_id);
  e.set_reason(decision.reason);
  e.set_count(1);
  return e;
}

void DecisionAuditor::Append(exchange::v1::AuditEntry entry) {
  if (audit_ == nullptr) return;
  audit_->Append(std::move(entry));
  appended_.fetch_add(1, std::memory_order_relaxed);
}

void DecisionAuditor::Record(std::string_view principal, std::string_view action,
                             std::string_view resource, std::string_view purpose,
                             std::string_view data_subject, const Decision& decision,
                             uint64_t count) {
  const absl::Time now = clock_->Now();
  if (!decision.allowed()) {
    for (uint64_t i = 0; i < count; ++i) {
      Append(MakeEntry(principal, action, resource, purpose, data_subject, decision, now));
    }
    return;
  }
  // The aggregation key. Purpose and rules are part of it too: two allows
  // that differ in why they were allowed are not "identical decisions".
  // Built in a per-thread buffer: a key is only allocated for a new entry.
  static thread_local std::string key;
  key.clear();
  key.append(principal).push_back('\0');
  key.append(action).push_back('\0');
  key.append(resource).push_back('\0');
  key.append(data_subject).push_back('\0');
  key.append(purpose).push_back('\0');
  absl::StrAppend(&key, decision.policy_revision);
  key.push_back('\0');
  key.append(decision.emergency_id).push_back('\0');
  key.append(decision.consent_id);
  const PrehashedKey hashed = PrehashedKey::Of(key);
  Shard& shard = shards_[hashed.Shard(kShards)];
  std::optional<exchange::v1::AuditEntry> due;  // built only when a window closes
  {
    std::lock_guard<std::mutex> lock(shard.mu);
    auto it = shard.pending.find(hashed);
    if (it == shard.pending.end()) {
      Pending p{MakeEntry(principal, action, resource, purpose, data_subject, decision, now),
                now};
      p.entry.set_count(count);
      shard.pending.emplace(key, std::move(p));
      return;
    }
    if (now - it->second.first < window_) {
      it->second.entry.set_count(it->second.entry.count() + count);
      return;
    }
    // The window is over: write it and start a new one with this decision.
    due.emplace(std::move(it->second.entry));
    it->second = Pending{MakeEntry(principal, action, resource, purpose, data_subject, decision, now),
                         now};
    it->second.entry.set_count(count);
  }
  if (due.has_value()) Append(*std::move(due));
}

void DecisionAuditor::FlushOlderThan(absl::Time cutoff) {
  std::vector<exchange::v1::AuditEntry> out;
  for (Shard& shard : shards_) {
    std::lock_guard<std::mutex> lock(shard.mu);
    for (auto it = shard.pending.begin(); it != shard.pending.end();) {
      if (cutoff == absl::InfiniteFuture() || it->second.first + window_ <= cutoff) {
        out.push_back(std::move(it->second.entry));
        shard.pending.erase(it++);
      } else {
        ++it;
      }
    }
  }
  // Oldest first, so that the log's order follows time within a flush.
  std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) {
    return std::make_pair(a.time().seconds(), a.time().nanos()) <
           std::make_pair(b.time().seconds(), b.time().nanos());
  });
  for (auto& e : out) Append(std::move(e));
}

void DecisionAuditor::Flush() { FlushOlderThan(absl::InfiniteFuture()); }

uint64_t DecisionAuditor::entries_appended() const {
  return appended_.load(std::memory_order_relaxed);
}

void DecisionAuditor::TimerLoop() {
  // Wakes a few times per window so an aggregate is written at most about a
  // quarter window late.
  const auto tick = absl::ToChronoMilliseconds(std::max(window_ / 4, absl::Milliseconds(10)));
  std::unique_lock<std::mutex> lock(timer_mu_);
  while (!stop_) {
    timer_cv_.wait_for(lock, tick);
    if (stop_) break;
    lock.unlock();
    FlushOlderThan(clock_->Now());
    lock.lock();
  }
}

}  // namespace cityos
