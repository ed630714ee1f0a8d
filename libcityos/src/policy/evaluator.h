// Internal: the decision algorithm over a compiled policy set, shared by the
// indexed PDP and the LinearEvaluator (the benchmark baseline and test
// oracle), so the two differ only in which rules they look at.
#ifndef CITYOS_SRC_POLICY_EVALUATOR_H_
#define CITYOS_SRC_POLICY_EVALUATOR_H_

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/time/time.h"
#include "cityos/exchange/v1/exchange.pb.h"
#include "cityos/policy.h"
#include "policy/compiled_policy.h"

namespace cityos::policy_internal {

// An emergency as the evaluator sees it.
struct EmergencyWindow {
  std::string id;
  common::v1::GeoArea area;
  absl::Time start;
  absl::Time end;  // the window end, or when it was ended early
};

// Everything besides the rules that a decision depends on.
struct EvalEnv {
  ConsentChecker* consent = nullptr;
  ContractChecker* contract = nullptr;
  JurisdictionResolver* jurisdiction = nullptr;
  // Emergencies not ended early (any state); the evaluator picks those
  // active at the request time.
  std::shared_ptr<const std::vector<EmergencyWindow>> emergencies;
  // The registered purposes (name -> profiling); null = none known.
  const absl::flat_hash_map<std::string, bool>* purposes = nullptr;
  const Principal* node = nullptr;  // the node's own principal, if any
  uint64_t revision = 0;
};

// Decides `request` at time `now` considering only `candidates` (ascending
// rule indexes of `set`); `now` is the request time (already resolved).
std::shared_ptr<Decision> Evaluate(const PolicySet& set,
                                   const std::vector<uint32_t>& candidates,
                                   const AccessRequest& request, absl::Time now,
                                   const EvalEnv& env);

// Whether rule `r` could match `request` for some values of the attributes
// the request leaves empty (MayAllow); time and emergency conditions are
// evaluated at `now`.
bool MayMatch(const CompiledRule& r, const AccessRequest& request,
              absl::Time now, const EvalEnv& env);

// The baseline: the same decisions, looking at every rule of the set.
class LinearEvaluator {
 public:
  LinearEvaluator(std::shared_ptr<const PolicySet> set, EvalEnv env)
      : set_(std::move(set)), env_(std::move(env)) {
    all_.reserve(set_->rules().size());
    for (size_t i = 0; i < set_->rules().size(); ++i)
      all_.push_back(static_cast<uint32_t>(i));
  }
  std::shared_ptr<Decision> Decide(const AccessRequest& request,
                                   absl::Time now) const {
    return Evaluate(*set_, all_, request, now, env_);
  }

 private:
  std::shared_ptr<const PolicySet> set_;
  EvalEnv env_;
  std::vector<uint32_t> all_;
};

// The principal is the node itself (same SPIFFE id).
bool IsNodePrincipal(const Principal& p, const Principal* node);

}  // namespace cityos::policy_internal

#endif  // CITYOS_SRC_POLICY_EVALUATOR_H_
