// Internal: policy documents compiled into rules and indexes.
//
// The compiler turns YAML documents (docs/policies.md) into CompiledRule
// values, reporting every error with document, line and column. A PolicySet
// holds the rules of one revision, immutable once built, plus per-action
// indexes keyed by a principal key (id / org / role / any) and a resource key
// (type / domain / subject first token / any), so a decision looks only at
// the rules that could match.
#ifndef CITYOS_SRC_POLICY_COMPILED_POLICY_H_
#define CITYOS_SRC_POLICY_COMPILED_POLICY_H_

#include <array>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/time/time.h"
#include "cityos/exchange/v1/exchange.pb.h"
#include "cityos/policy.h"

namespace cityos::policy_internal {

inline constexpr int kActionCount = 4;
inline int ActionIndex(Action a) { return static_cast<int>(a); }

enum class LegalBasis {
  kNone,  // not stated
  kConsent,
  kContract,
  kLegalObligation,
  kVitalInterest,
  kPublicTask,
  kLegitimateInterest,
};
const char* LegalBasisName(LegalBasis b);

struct CompiledRule {
  std::string id;
  std::string document;  // name of the document it came from
  uint32_t line = 0;
  size_t index =
      0;  // position in the set: candidates are visited in this order
  bool allow = true;
  uint8_t actions = 0;  // bit per Action

  // Principal conditions; an empty list is "not stated".
  std::vector<std::string> orgs, roles, names, ids;
  std::optional<PrincipalKind> kind;

  // Resource conditions.
  std::vector<std::string> domains, types, subjects, regions, jurisdictions;
  uint8_t classifications =
      0;  // bit per event::v1::Classification; 0 = not stated
  std::vector<std::string> owners;  // without $principal.org
  bool owner_is_principal_org = false;
  bool has_owners = false;
  std::vector<std::string> data_subjects;  // without $principal.name
  bool data_subject_is_principal = false;
  bool has_data_subjects = false;

  std::vector<std::string> purposes;

  // when:
  bool emergency = false;
  bool has_hours = false;
  int hours_start_min = 0,
      hours_end_min = 0;  // minutes of the UTC day, [start, end)
  uint8_t weekdays = 0;   // bit 0 = Monday; 0 = not stated
  absl::Time from = absl::InfinitePast();
  absl::Time until = absl::InfiniteFuture();
  bool has_time_condition() const {
    return has_hours || weekdays != 0 || from != absl::InfinitePast() ||
           until != absl::InfiniteFuture();
  }

  LegalBasis legal_basis = LegalBasis::kNone;
  std::vector<std::string> cross_border;
  std::string product;
  std::vector<exchange::v1::Obligation> obligations;  // rule_id filled
};

struct DataCategory {
  std::string name;
  std::vector<std::string> subjects;
  std::vector<std::string> types;
};

// Per action: (principal key, resource key) -> rule indexes.
//
// Principal keys: the rule's SPIFFE ids, else its orgs, else its roles, else
// "any". Resource keys: its types, else domain+owner pairs (literal owners),
// else domains, else the first two (or first) literal tokens of its subject
// patterns, else "any". A rule is filed under every combination of its keys,
// and a request probes the combinations of its own attributes; every rule
// that can match is found. Keys are stored as 64-bit hashes: a collision only
// adds candidates, which the evaluator checks in full anyway.
struct RuleIndex {
  absl::flat_hash_map<uint64_t, std::vector<uint32_t>> buckets;
  // Principal keys present, so absent ones skip the resource probes.
  absl::flat_hash_set<uint64_t> principal_keys;
  std::vector<uint32_t> all;  // every rule with this action (MayAllow, linear)
  bool has_id_keys = false;   // some rule is keyed by SPIFFE id
};

// One compiled revision of the policy set. Immutable.
class PolicySet {
 public:
  PolicySet() = default;
  // Builds the indexes over `rules` (their `index` set to their position).
  PolicySet(std::vector<CompiledRule> rules,
            std::vector<DataCategory> categories);

  const std::vector<CompiledRule>& rules() const { return rules_; }
  const std::vector<DataCategory>& categories() const { return categories_; }
  bool has_emergency_rules() const { return has_emergency_rules_; }

  // Candidate rules for `request` (ascending indexes, no duplicates): a
  // superset of the rules that can match it. `out` is cleared first.
  void Candidates(const AccessRequest& request,
                  std::vector<uint32_t>* out) const;
  // Every rule for `action`, ascending.
  const std::vector<uint32_t>& RulesFor(Action action) const {
    return index_[ActionIndex(action)].all;
  }
  // The data category of a resource: the first declared category whose
  // subjects or types match it; else the resource's domain.
  std::string_view CategoryOf(const ResourceView& resource) const;

 private:
  std::vector<CompiledRule> rules_;
  std::vector<DataCategory> categories_;
  std::array<RuleIndex, kActionCount> index_;
  bool has_emergency_rules_ = false;
};

// A document whose YAML compiled (maybe with errors).
struct CompiledDocument {
  std::vector<CompiledRule> rules;
  std::vector<DataCategory> categories;
};

// Compiles one document, appending errors (name, line, column, message) to
// `errors`. `known_purpose` says whether a purpose name is registered.
CompiledDocument CompileDocument(
    const PolicyDocumentText& doc,
    const std::function<bool(std::string_view)>& known_purpose,
    std::vector<exchange::v1::PolicyError>* errors);

// Compiles a whole set: every document, then the cross-document checks
// (duplicate rule ids and category names naming both documents). Returns the
// set when there are no errors.
std::shared_ptr<const PolicySet> CompileSet(
    const std::vector<PolicyDocumentText>& documents,
    const std::function<bool(std::string_view)>& known_purpose,
    std::vector<exchange::v1::PolicyError>* errors);

// 1-128 of [A-Za-z0-9._-].
bool ValidDocumentName(std::string_view name);

}  // namespace cityos::policy_internal

#endif  // CITYOS_SRC_POLICY_COMPILED_POLICY_H_
