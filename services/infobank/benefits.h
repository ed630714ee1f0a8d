// Benefits of the information bank (issue 6): each provision of a person's
// data under consent may credit them with points per a configurable rule.
// The ledger (SQLite) is append-only; a PROVISION entry is idempotent by its
// provision id (UNIQUE constraint), so a retried provision never pays twice,
// even when retries race.
//
// Names follow consent.proto: consent::v1::BenefitEntry (kind
// BENEFIT_ENTRY_KIND_PROVISION), GetBenefitBalanceResponse,
// GetBenefitStatementRequest/Response.
#ifndef CITYOS_SERVICES_INFOBANK_BENEFITS_H_
#define CITYOS_SERVICES_INFOBANK_BENEFITS_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "cityos/clock.h"
#include "cityos/consent/v1/consent.pb.h"

namespace cityos::infobank {

// A rule: a provision for `purpose` (empty = any purpose) of a data category
// equal to or under `data_category` (dotted prefix: `health` covers
// `health.vitals`; empty = any category) earns `points` (> 0). `id` names the
// rule in BenefitEntry.rule_id; empty = "<purpose>:<data_category>".
struct BenefitRule {
  std::string purpose;
  std::string data_category;
  int64_t points;
  std::string id;
};

class BenefitLedger {  // SQLite; entries idempotent by `provision_id`
 public:
  // Opens (creating if missing) the ledger database at `path`. `clock` null =
  // real clock. INVALID_ARGUMENT when a rule has points <= 0 or two rules
  // share an id.
  static absl::StatusOr<std::unique_ptr<BenefitLedger>> Open(const std::string& path,
                                                             std::vector<BenefitRule> rules,
                                                             Clock* clock);
  // Credits the person per the first matching rule for a provision (audit sequence or other
  // unique id). A retried provision_id never pays twice: returns the existing entry.
  // Returns nullopt when no rule matches. INVALID_ARGUMENT when provision_id
  // or data_subject is empty. Thread-safe.
  virtual absl::StatusOr<std::optional<consent::v1::BenefitEntry>> CreditProvision(
      std::string_view provision_id, std::string_view data_subject, std::string_view recipient_org,
      std::string_view purpose, std::string_view data_category, std::string_view consent_id) = 0;
  // The person's balance (0 with no entries).
  virtual absl::StatusOr<consent::v1::GetBenefitBalanceResponse> Balance(
      std::string_view data_subject) = 0;
  // The person's entries, newest first, within request.range(), paged per
  // request.page_size (0 = 100, at most 1000) / page_token; credited and
  // debited sum the whole range (not only the page). INVALID_ARGUMENT for a
  // bad page token or page size. request.data_subject is ignored: the caller
  // resolves the person and passes `data_subject`.
  virtual absl::StatusOr<consent::v1::GetBenefitStatementResponse> Statement(
      const consent::v1::GetBenefitStatementRequest& request, std::string_view data_subject) = 0;
  virtual ~BenefitLedger() = default;
};

}  // namespace cityos::infobank

#endif  // CITYOS_SERVICES_INFOBANK_BENEFITS_H_
