// TouchedTotal: a carbon target (account or region) whose running emission total changed in an
// ingest batch. Produced by the ledger (H2, ledger.h includes this header) and consumed by the
// alarm engine (plans.h), which re-evaluates the plans covering the target for the periods that
// contain `time`.
#ifndef CITYOS_SERVICES_CARBON_TOUCHED_H_
#define CITYOS_SERVICES_CARBON_TOUCHED_H_

#include <string>

#include "absl/time/time.h"

namespace cityos::carbon {

// Exactly one of account_id / region is set (non-empty).
// A batch's touched list is closed under ancestors: it names every account whose total changed
// (the record's account and each of its ancestor accounts) and every region whose total changed
// (the record's region and each of its ancestor regions), each once. The alarm engine evaluates the
// plans whose target is exactly one of these (no hierarchy look-ups on the ingest path).
// `time` = the latest interval end accounted for this target in the batch; the alarm engine
// evaluates each plan's period (day/month/year) containing `time` (an interval ending exactly on a
// period boundary is attributed to the period before it: the engine uses `time - 1ns`).
struct TouchedTotal {
  std::string account_id;
  std::string region;
  absl::Time time;
};

}  // namespace cityos::carbon

#endif  // CITYOS_SERVICES_CARBON_TOUCHED_H_
