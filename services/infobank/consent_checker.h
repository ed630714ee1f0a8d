// The exchange's consent hook (cityos::ConsentChecker), answered from an
// in-memory index of the ACTIVE consents (data subject -> consents), so a
// check is a hash lookup and a scan of one person's few consents under a
// shared lock: well over 1M checks/s in-process (tests/bench infobank_bench),
// before the PDP's own decision cache.
//
// A query is granted when an ACTIVE consent of query.data_subject, not
// expired at query.time:
//   - names query.recipient->org, or a recipient category the org belongs to
//     (SetCategories: category -> member orgs);
//   - lists query.purpose;
//   - lists a data category covering query.data_category (a consent for
//     `health` covers `health.vitals`: equal, or a prefix followed by a dot);
//   - has `sensitive` when query.sensitive and `profiling` when
//     query.profiling.
// The answer carries the consent id and valid_until = the consent's expiry
// (the latest-expiring matching consent wins), so the PDP's cached decisions
// end by themselves when the consent expires.
//
// The index is only a copy: the service updates the ConsentStore first and
// then Put/Remove here, and then tells the PDP (Invalidate) so the decision
// cache and live subscriptions follow at once.
#ifndef CITYOS_SERVICES_INFOBANK_CONSENT_CHECKER_H_
#define CITYOS_SERVICES_INFOBANK_CONSENT_CHECKER_H_

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "cityos/consent/v1/consent.pb.h"
#include "cityos/policy.h"

namespace cityos::infobank {

// True when consent category `granted` covers the resource's `category`
// (equal, or `granted` followed by '.' is a prefix of it).
bool CategoryCovers(std::string_view granted, std::string_view category);

class ConsentIndex final : public ConsentChecker {
 public:
  ConsentAnswer Check(const ConsentQuery& query) override;

  // Adds or replaces `consent` (by id). A consent that is not ACTIVE is
  // removed instead.
  void Put(const consent::v1::Consent& consent);
  void Remove(std::string_view data_subject, std::string_view consent_id);
  // Recipient categories: category -> orgs in it.
  void SetCategories(std::map<std::string, std::vector<std::string>> members);
  // ACTIVE consents whose expiry is at or before `now` (data subject,
  // consent id); the earliest future expiry, if any, in `next`.
  std::vector<std::pair<std::string, std::string>> Expired(absl::Time now,
                                                           std::optional<absl::Time>* next);
  size_t size() const;

 private:
  struct Entry {
    std::string consent_id;
    std::string org;       // recipient org, or empty
    std::string category;  // recipient category, or empty
    std::vector<std::string> purposes;
    std::vector<std::string> data_categories;
    absl::Time expire = absl::InfiniteFuture();
    bool sensitive = false;
    bool profiling = false;
  };
  using Entries = std::vector<std::shared_ptr<const Entry>>;

  mutable absl::Mutex mu_;
  absl::flat_hash_map<std::string, Entries> by_subject_ ABSL_GUARDED_BY(mu_);
  // org -> categories it belongs to.
  absl::flat_hash_map<std::string, std::vector<std::string>> org_categories_ ABSL_GUARDED_BY(mu_);
};

}  // namespace cityos::infobank

#endif  // CITYOS_SERVICES_INFOBANK_CONSENT_CHECKER_H_
