// The information bank's durable state: consents, their history, receipts,
// ethics-review proposals, grant idempotency keys and delegations to apps, in one SQLite file
// (<plug-in data dir>/consents.db). Records are kept as serialized protos
// with the columns needed to find them; every write is one transaction, so a
// crash never leaves a consent without its history entry.
//
// The store is the truth; ConsentIndex (consent_checker.h) is the in-memory
// copy the hot path reads. Thread-safe (one connection behind a mutex: writes
// are rare, reads of the hot path never come here).
#ifndef CITYOS_SERVICES_INFOBANK_CONSENT_STORE_H_
#define CITYOS_SERVICES_INFOBANK_CONSENT_STORE_H_

#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "cityos/consent/v1/consent.pb.h"

struct sqlite3;

namespace cityos::infobank {

class ConsentStore {
 public:
  // Opens (creating if needed) the database at `path`.
  static absl::StatusOr<std::unique_ptr<ConsentStore>> Open(const std::string& path);
  ~ConsentStore();
  ConsentStore(const ConsentStore&) = delete;
  ConsentStore& operator=(const ConsentStore&) = delete;

  // Writes `consent` (insert or replace by id) with `event` appended to its
  // history, `receipt` (may be null) and, when `request_id` is not empty, the
  // idempotency key -> consent id. One transaction.
  absl::Status Write(const consent::v1::Consent& consent, const consent::v1::ConsentEvent& event,
                     const consent::v1::Receipt* receipt, std::string_view request_id);

  // The consent id recorded for (data_subject, request_id), if any.
  absl::StatusOr<std::optional<std::string>> ConsentForRequest(std::string_view data_subject,
                                                               std::string_view request_id);
  absl::StatusOr<std::optional<consent::v1::Consent>> GetConsent(std::string_view consent_id);
  // A person's consents, newest grant first.
  absl::StatusOr<std::vector<consent::v1::Consent>> ListConsents(std::string_view data_subject);
  // Every consent in state ACTIVE (to build the index at start).
  absl::StatusOr<std::vector<consent::v1::Consent>> ActiveConsents();
  // A person's consent events, oldest first; `consent_id` empty = all.
  absl::StatusOr<std::vector<consent::v1::ConsentEvent>> History(std::string_view data_subject,
                                                                 std::string_view consent_id);

  absl::StatusOr<std::optional<consent::v1::Receipt>> GetReceipt(std::string_view receipt_id);
  // Receipt ids of a person's receipts (export).
  absl::StatusOr<std::vector<consent::v1::Receipt>> ReceiptsOf(std::string_view data_subject);

  // Inserts or replaces a proposal (by id). `key` names what it proposes
  // ("recipient:org:<org>", "recipient:category:<c>", "purpose:<name>").
  absl::Status PutProposal(const consent::v1::Proposal& proposal, std::string_view key);
  absl::StatusOr<std::optional<consent::v1::Proposal>> GetProposal(std::string_view proposal_id);
  // Every proposal, newest first.
  absl::StatusOr<std::vector<consent::v1::Proposal>> Proposals();

  // Inserts or replaces a delegation (by id).
  absl::Status PutDelegation(const consent::v1::Delegation& delegation);
  absl::StatusOr<std::optional<consent::v1::Delegation>> GetDelegation(
      std::string_view delegation_id);
  // A person's delegations, newest grant first; `app` empty = to any app.
  absl::StatusOr<std::vector<consent::v1::Delegation>> Delegations(std::string_view data_subject,
                                                                   std::string_view app);

 private:
  explicit ConsentStore(sqlite3* db) : db_(db) {}
  absl::Status Exec(const char* sql) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  absl::Mutex mu_;
  sqlite3* db_ ABSL_GUARDED_BY(mu_);
};

// The proposal key of a recipient / purpose (see PutProposal).
std::string ProposalKey(const consent::v1::Proposal& proposal);

}  // namespace cityos::infobank

#endif  // CITYOS_SERVICES_INFOBANK_CONSENT_STORE_H_
