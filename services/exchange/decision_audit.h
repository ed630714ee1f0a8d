// Decisions -> the audit log, the way the exchange writes them: every denial
// as its own entry at once; allows aggregated per (principal, action,
// resource, data subject, effect) over a window of at most one second, with
// AuditEntry.count saying how many identical decisions the entry stands for.
// Query and Subscribe decide per entity / per event, so without aggregation a
// busy subscription would write one audit entry per delivered event.
//
//   DecisionAuditor auditor(audit, clock);
//   auditor.Record(caller, "read", "cityos.health.v1.Bed/icu-3", "medical_care",
//                  "", *decision);
//   ...
//   auditor.Flush();   // e.g. before VerifyAudit or at Stop
//
// Severity comes from the decision (HIGH under an emergency, NOTICE for
// denials, INFO otherwise). Thread-safe.
#ifndef CITYOS_SERVICES_EXCHANGE_DECISION_AUDIT_H_
#define CITYOS_SERVICES_EXCHANGE_DECISION_AUDIT_H_

#include <array>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/time/time.h"
#include "cityos/audit.h"
#include "cityos/clock.h"
#include "cityos/policy.h"
#include "cityos/prehashed.h"

namespace cityos {

class DecisionAuditor {
 public:
  // `audit` and `clock` are not owned and must outlive the auditor.
  // `window`: how long allows are aggregated before their entry is written.
  DecisionAuditor(AuditLog* audit, Clock* clock, absl::Duration window = absl::Seconds(1));
  ~DecisionAuditor();  // Flush()es and stops the timer thread
  DecisionAuditor(const DecisionAuditor&) = delete;
  DecisionAuditor& operator=(const DecisionAuditor&) = delete;

  // Records `count` identical decisions taken for `principal` (a SPIFFE
  // id). Callers on hot paths may count identical allows themselves and
  // record them at once; denials are always written one entry per call.
  void Record(std::string_view principal, std::string_view action, std::string_view resource,
              std::string_view purpose, std::string_view data_subject, const Decision& decision,
              uint64_t count = 1);

  // Appends every aggregated entry now (the audit log then writes them in
  // its next batch; AuditLog::Flush makes them durable).
  void Flush();

  // Entries appended so far (denials plus aggregated allows), for tests.
  uint64_t entries_appended() const;

 private:
  struct Pending {
    exchange::v1::AuditEntry entry;  // count and time filled
    absl::Time first;
  };
  struct Shard {
    std::mutex mu;
    // Looked up by PrehashedKey (no key allocated unless a new entry, and the
    // key hashed once).
    PrehashedMap<Pending> pending ABSL_GUARDED_BY(mu);
  };
  static constexpr size_t kShards = 16;

  static exchange::v1::AuditEntry MakeEntry(std::string_view principal, std::string_view action,
                                            std::string_view resource, std::string_view purpose,
                                            std::string_view data_subject,
                                            const Decision& decision, absl::Time now);
  void Append(exchange::v1::AuditEntry entry);
  // Appends the entries of every shard older than `cutoff` (all with
  // InfiniteFuture()).
  void FlushOlderThan(absl::Time cutoff);
  void TimerLoop();

  AuditLog* const audit_;
  Clock* const clock_;
  const absl::Duration window_;
  std::array<Shard, kShards> shards_;
  std::atomic<uint64_t> appended_{0};

  std::mutex timer_mu_;
  std::condition_variable timer_cv_;
  bool stop_ ABSL_GUARDED_BY(timer_mu_) = false;
  std::thread timer_;
};

}  // namespace cityos

#endif  // CITYOS_SERVICES_EXCHANGE_DECISION_AUDIT_H_
