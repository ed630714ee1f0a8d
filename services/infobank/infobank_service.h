// cityos.consent.v1.ConsentService (proto/cityos/consent/v1/consent.proto:
// its comments are the RPC semantics). Consents live in the ConsentStore,
// are mirrored in the ConsentIndex (the PDP's consent hook) and every change
// is told to the PDP (Invalidate), which re-decides live exchange
// subscriptions at once. Ethics review (proposals of recipients and
// purposes, reviewed by the `data-ethics-board` role) is kept here too: an
// approved purpose is registered in the PDP, an approved recipient becomes
// selectable in GrantConsent. A person may delegate to an app (a service
// principal) the right to act for them within scopes (GrantDelegation).
#ifndef CITYOS_SERVICES_INFOBANK_INFOBANK_SERVICE_H_
#define CITYOS_SERVICES_INFOBANK_INFOBANK_SERVICE_H_

#include <functional>
#include <map>
#include <set>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "cityos/audit.h"
#include "cityos/clock.h"
#include "cityos/consent/v1/consent.grpc.pb.h"
#include "cityos/policy.h"
#include "cityos/principal.h"
#include "consent_checker.h"
#include "consent_store.h"

namespace cityos::infobank {

class ReceiptSigner;
class PersonalStore;
class BenefitLedger;

using InfobankCallerResolver = std::function<absl::StatusOr<Principal>(grpc::ServerContext*)>;

struct InfobankDeps {
  ConsentStore* store = nullptr;
  ConsentIndex* index = nullptr;
  PolicyDecisionPoint* pdp = nullptr;
  AuditLog* audit = nullptr;
  Clock* clock = nullptr;
  // All required (Start() refuses a null one).
  const ReceiptSigner* signer = nullptr;
  PersonalStore* personal = nullptr;
  BenefitLedger* benefits = nullptr;
  InfobankCallerResolver resolver;
  // The bank itself (the actor of expiries).
  Principal bank;
};

struct InfobankOptions {
  // Known data categories: a category is known when it equals one of these
  // or extends one by dots (`health` makes `health.vitals` known).
  std::vector<std::string> data_categories = {"health", "care",     "mobility", "payments",
                                              "disaster", "energy", "carbon",   "location",
                                              "environment", "identity"};
  // Sensitive data categories (and everything under them).
  std::vector<std::string> sensitive_categories = {"health", "care",
                                                   "disaster.evacuation_support"};
  // Recipient categories: category -> member orgs.
  std::map<std::string, std::vector<std::string>> recipient_categories;
  // Longest wait of the expiry sweep between looks at the clock (a
  // simulated clock does not wake it).
  absl::Duration sweep_max_wait = absl::Milliseconds(200);
};

// Delegation scopes (consent.proto, Delegation).
inline constexpr std::string_view kScopeConsents = "consents";
inline constexpr std::string_view kScopeData = "data";
// Person(): no app may act, whatever it was delegated.
inline constexpr std::string_view kPersonOnly = "";

class InfobankService final : public consent::v1::ConsentService::Service {
 public:
  InfobankService(InfobankDeps deps, InfobankOptions options);
  ~InfobankService() override;

  // Loads approved recipients and purposes (registering approved purposes in
  // the PDP) and the ACTIVE consents into the index; starts the expiry sweep.
  absl::Status Start();
  void Stop();

  // Expires every ACTIVE consent whose expiry passed (history entry, index,
  // PDP invalidation). The sweep thread calls it; tests may too.
  void ExpireDue();

  grpc::Status GrantConsent(grpc::ServerContext*, const consent::v1::GrantConsentRequest*,
                            consent::v1::GrantConsentResponse*) override;
  grpc::Status ListConsents(grpc::ServerContext*, const consent::v1::ListConsentsRequest*,
                            consent::v1::ListConsentsResponse*) override;
  grpc::Status RevokeConsent(grpc::ServerContext*, const consent::v1::RevokeConsentRequest*,
                             consent::v1::RevokeConsentResponse*) override;
  grpc::Status GetConsentHistory(grpc::ServerContext*,
                                 const consent::v1::GetConsentHistoryRequest*,
                                 consent::v1::GetConsentHistoryResponse*) override;
  grpc::Status GetReceipt(grpc::ServerContext*, const consent::v1::GetReceiptRequest*,
                          consent::v1::GetReceiptResponse*) override;
  grpc::Status ExportPersonalData(
      grpc::ServerContext*, const consent::v1::ExportPersonalDataRequest*,
      grpc::ServerWriter<consent::v1::ExportPersonalDataResponse>*) override;
  grpc::Status DeletePersonalData(grpc::ServerContext*,
                                  const consent::v1::DeletePersonalDataRequest*,
                                  consent::v1::DeletePersonalDataResponse*) override;
  grpc::Status GetProvisionHistory(grpc::ServerContext*,
                                   const consent::v1::GetProvisionHistoryRequest*,
                                   consent::v1::GetProvisionHistoryResponse*) override;
  grpc::Status ProposeRecipient(grpc::ServerContext*, const consent::v1::ProposeRecipientRequest*,
                                consent::v1::ProposeRecipientResponse*) override;
  grpc::Status ProposePurpose(grpc::ServerContext*, const consent::v1::ProposePurposeRequest*,
                              consent::v1::ProposePurposeResponse*) override;
  grpc::Status ReviewProposal(grpc::ServerContext*, const consent::v1::ReviewProposalRequest*,
                              consent::v1::ReviewProposalResponse*) override;
  grpc::Status ListProposals(grpc::ServerContext*, const consent::v1::ListProposalsRequest*,
                             consent::v1::ListProposalsResponse*) override;
  grpc::Status GetBenefitBalance(grpc::ServerContext*,
                                 const consent::v1::GetBenefitBalanceRequest*,
                                 consent::v1::GetBenefitBalanceResponse*) override;
  grpc::Status GetBenefitStatement(grpc::ServerContext*,
                                   const consent::v1::GetBenefitStatementRequest*,
                                   consent::v1::GetBenefitStatementResponse*) override;
  grpc::Status GrantDelegation(grpc::ServerContext*, const consent::v1::GrantDelegationRequest*,
                               consent::v1::GrantDelegationResponse*) override;
  grpc::Status RevokeDelegation(grpc::ServerContext*, const consent::v1::RevokeDelegationRequest*,
                                consent::v1::RevokeDelegationResponse*) override;
  grpc::Status ListDelegations(grpc::ServerContext*, const consent::v1::ListDelegationsRequest*,
                               consent::v1::ListDelegationsResponse*) override;

  // The core of the RPCs, for in-process callers and tests: `caller` acts.
  absl::StatusOr<consent::v1::GrantConsentResponse> Grant(
      const Principal& caller, const consent::v1::GrantConsentRequest& request);
  absl::StatusOr<consent::v1::RevokeConsentResponse> Revoke(
      const Principal& caller, const consent::v1::RevokeConsentRequest& request);

 private:
  // The person a request is about: `requested`, or the caller when empty.
  // A user principal may act only for themself. A service principal (an
  // app) must name the person and holds an ACTIVE, unexpired delegation
  // from them whose scopes include `scope` (kScopeConsents, kScopeData);
  // `scope` empty (kPersonOnly) means only the person may act. Otherwise
  // PERMISSION_DENIED naming why.
  absl::StatusOr<std::string> Person(const Principal& caller, const std::string& requested,
                                     std::string_view scope) const;
  absl::Status ValidateGrant(const consent::v1::GrantConsentRequest& request, absl::Time now);
  // Marks `consent` (ACTIVE) revoked or expired, with receipt for revoke.
  absl::StatusOr<consent::v1::RevokeConsentResponse> EndConsent(
      const Principal& actor, consent::v1::Consent consent, consent::v1::ConsentState state,
      const std::string& reason, absl::Time now);
  void Changed(const consent::v1::Consent& consent);
  void Audit(const Principal& who, const std::string& action, const std::string& resource,
             const std::string& data_subject, const std::string& consent_id,
             const std::string& reason);
  // Files `p` (kind and subject set) as a pending proposal by `caller`, unless
  // `clash` fails for a stored proposal with the same key. Takes ethics_mu_.
  absl::StatusOr<consent::v1::Proposal> FileProposal(
      const Principal& caller, consent::v1::Proposal p,
      const std::function<absl::Status(const consent::v1::Proposal&)>& clash);
  std::vector<consent::v1::ConsentEvent> RangeFilter(std::vector<consent::v1::ConsentEvent> events,
                                                     const common::v1::TimeRange& range) const;
  void SweepLoop();

  const InfobankDeps deps_;
  const InfobankOptions options_;

  // Serialises consent writes (grant idempotency, revoke-vs-expire races).
  absl::Mutex write_mu_;
  absl::Mutex ethics_mu_;
  std::set<std::string> approved_orgs_ ABSL_GUARDED_BY(ethics_mu_);
  std::set<std::string> approved_categories_ ABSL_GUARDED_BY(ethics_mu_);

  absl::Mutex sweep_mu_;
  bool stopping_ ABSL_GUARDED_BY(sweep_mu_) = false;
  bool kick_ ABSL_GUARDED_BY(sweep_mu_) = false;
  std::thread sweeper_;
};

}  // namespace cityos::infobank

#endif  // CITYOS_SERVICES_INFOBANK_INFOBANK_SERVICE_H_
