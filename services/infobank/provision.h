// Provision history of the information bank (issue 6): every access decision
// about a person's data, read from the exchange's tamper-evident audit log.
#ifndef CITYOS_SERVICES_INFOBANK_PROVISION_H_
#define CITYOS_SERVICES_INFOBANK_PROVISION_H_

#include <string_view>

#include "absl/status/statusor.h"
#include "cityos/audit.h"
#include "cityos/consent/v1/consent.pb.h"

namespace cityos::infobank {

// The person's provision history from the exchange's audit (AuditLog::Query by data_subject):
// who, when, what, purpose, decision, as consent.v1.ProvisionRecord; paging per the proto
// (newest first; page_size 0 = 100, at most 1000; opaque page_token; range and decision
// filters). Only access decisions are listed (entries with an exchange Action:
// publish/subscribe/read/history); the bank's own entries (consent.grant, ...) are not.
// `request.data_subject` is ignored: the caller resolves the person and passes
// `data_subject` (required: INVALID_ARGUMENT when empty). INVALID_ARGUMENT for a bad page
// token or page size.
absl::StatusOr<consent::v1::GetProvisionHistoryResponse> ProvisionHistory(
    AuditLog& audit, std::string_view data_subject,
    const consent::v1::GetProvisionHistoryRequest& request);

// Maps one audit entry to a provision record (exposed for tests and for the
// export).
consent::v1::ProvisionRecord ToProvisionRecord(const exchange::v1::AuditEntry& entry);

}  // namespace cityos::infobank

#endif  // CITYOS_SERVICES_INFOBANK_PROVISION_H_
