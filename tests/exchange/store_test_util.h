// Helpers shared by the entity store's tests: which path served the store's
// reads, from its metrics (process-wide; the tests of a binary run one at a
// time, so deltas around a call are that call's).
#ifndef CITYOS_TESTS_EXCHANGE_STORE_TEST_UTIL_H_
#define CITYOS_TESTS_EXCHANGE_STORE_TEST_UTIL_H_

#include <cstdint>
#include <string_view>

#include "cityos/metrics.h"

namespace cityos::testing {

// cityos_store_reads_total{kind, path}.
inline uint64_t StoreReads(std::string_view kind, std::string_view path) {
  return MetricsRegistry::Global()
      .AddCounterFamily("cityos_store_reads_total", "", {"kind", "path"})
      .WithLabels({kind, path})
      .Value();
}

// cityos_store_memory_index_loads_total{result}.
inline uint64_t MemoryIndexLoads(std::string_view result) {
  return MetricsRegistry::Global()
      .AddCounterFamily("cityos_store_memory_index_loads_total", "", {"result"})
      .WithLabels({result})
      .Value();
}

}  // namespace cityos::testing

#endif  // CITYOS_TESTS_EXCHANGE_STORE_TEST_UTIL_H_
