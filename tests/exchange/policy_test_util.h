// Shared helpers of the policy tests: principals, a PDP over a YAML text,
// fake hooks and a recording AuditLog.
#ifndef CITYOS_TESTS_EXCHANGE_POLICY_TEST_UTIL_H_
#define CITYOS_TESTS_EXCHANGE_POLICY_TEST_UTIL_H_

#include <atomic>
#include <memory>
#include <string>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "cityos/audit.h"
#include "cityos/clock.h"
#include "cityos/policy.h"
#include "gtest/gtest.h"

namespace cityos::policy_test {

inline Principal P(const std::string& spiffe,
                   std::vector<std::string> roles = {}) {
  auto p = Principal::FromSpiffeId(spiffe);
  EXPECT_TRUE(p.ok()) << p.status();
  Principal out = p.ok() ? *p : Principal{};
  out.roles = std::move(roles);
  return out;
}
inline Principal Svc(const std::string& org, const std::string& name,
                     std::vector<std::string> roles = {}) {
  return P("spiffe://demo.city/org/" + org + "/svc/" + name, std::move(roles));
}
inline Principal User(const std::string& org, const std::string& name,
                      std::vector<std::string> roles = {}) {
  return P("spiffe://demo.city/org/" + org + "/user/" + name, std::move(roles));
}
inline Principal Admin() {
  return Svc("city", "ops", {"policy-admin", "disaster-authority"});
}

// 2026-03-02 (a Monday) 10:00 UTC.
inline absl::Time Monday10() { return absl::FromUnixSeconds(1772445600); }

inline std::unique_ptr<PolicyDecisionPoint> MakePdp(Clock* clock,
                                                    const std::string& yaml,
                                                    PdpOptions opts = {}) {
  opts.clock = clock;
  auto pdp = PolicyDecisionPoint::Create(std::move(opts));
  EXPECT_TRUE(pdp.ok()) << pdp.status();
  if (!pdp.ok()) return nullptr;
  if (!yaml.empty()) {
    auto info = (*pdp)->Load(Admin(), {{.name = "test.yaml", .content = yaml}},
                             {.replace_all = true});
    EXPECT_TRUE(info.ok()) << info.status();
  }
  return std::move(*pdp);
}

// A consent checker whose answer the test sets.
class FakeConsent : public ConsentChecker {
 public:
  ConsentAnswer Check(const ConsentQuery& q) override {
    calls.fetch_add(1);
    absl::MutexLock lock(&mu_);
    last_category = std::string(q.data_category);
    last_sensitive = q.sensitive;
    ConsentAnswer a;
    a.granted = granted.load();
    if (a.granted)
      a.consent_id = "consent-1";
    else
      a.reason = "no active consent for purpose " + std::string(q.purpose);
    return a;
  }
  std::atomic<bool> granted{true};
  std::atomic<int> calls{0};
  absl::Mutex mu_;
  std::string last_category;
  bool last_sensitive = false;
};

class FakeContract : public ContractChecker {
 public:
  ContractAnswer Check(const Principal& who, std::string_view product,
                       std::string_view, absl::Time) override {
    ContractAnswer a;
    a.active = active.load() && who.org == org;
    if (a.active) a.contract_id = "contract-7";
    return a;
  }
  std::atomic<bool> active{true};
  std::string org = "buyer";
};

// Records appended entries (the hook under test); the rest is unused here.
class RecordingAudit : public AuditLog {
 public:
  void Append(exchange::v1::AuditEntry entry) override {
    absl::MutexLock lock(&mu_);
    entries_.push_back(std::move(entry));
  }
  absl::StatusOr<uint64_t> Flush() override {
    absl::MutexLock lock(&mu_);
    return entries_.size();
  }
  absl::StatusOr<AuditPage> Query(const AuditQuery&) override {
    return absl::UnimplementedError("not used by the policy tests");
  }
  absl::StatusOr<exchange::v1::VerifyAuditResponse> Verify(uint64_t,
                                                           uint64_t) override {
    return absl::UnimplementedError("not used by the policy tests");
  }
  uint64_t last_sequence() const override {
    absl::MutexLock lock(&mu_);
    return entries_.size();
  }
  std::string key_id() const override { return ""; }
  std::string public_key_pem() const override { return ""; }
  absl::Status Close() override { return absl::OkStatus(); }

  std::vector<exchange::v1::AuditEntry> entries() const {
    absl::MutexLock lock(&mu_);
    return entries_;
  }

 private:
  mutable absl::Mutex mu_;
  std::vector<exchange::v1::AuditEntry> entries_;
};

}  // namespace cityos::policy_test

#endif  // CITYOS_TESTS_EXCHANGE_POLICY_TEST_UTIL_H_
