// The usable-CPU count for LiveQueueSpin (kept out of live_queue.h so that
// <sched.h> does not leak into its includers).
#include "bus/live_queue.h"

#include <sched.h>

#include <thread>

namespace cityos::bus_internal {

int LiveQueueSpin::UsableCpus() {
  static const int cpus = [] {
    cpu_set_t set;
    CPU_ZERO(&set);
    if (::sched_getaffinity(0, sizeof(set), &set) == 0) {
      const int n = CPU_COUNT(&set);
      if (n > 0) return n;
    }
    // More CPUs than a cpu_set_t holds, or no affinity support.
    const unsigned hw = std::thread::hardware_concurrency();
    return hw > 0 ? static_cast<int>(hw) : 1;
  }();
  return cpus;
}

}  // namespace cityos::bus_internal
