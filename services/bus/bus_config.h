// The node config's top-level `bus:` section: limits of the node's Bus and
// the streams it creates at start (idempotently). The node owns the Bus; this
// only reads and checks the section, before any port is bound.
//
//   bus:
//     max_event_bytes: 1MiB        # largest serialized event (default 1 MiB)
//     live_queue_depth: 65536      # live subscriber queue bound, in events
//     reader_spin_us: 50           # live reader's spin before sleeping, 0-10000
//     streams:
//       - name: carbon             # 1-64 characters of [A-Za-z0-9_-]
//         subjects: ["carbon.>"]   # patterns; no overlap with other streams
//         durability: fsync        # fsync | interval | none (default fsync)
//         sync_interval: 100ms     # interval mode (default 100ms)
//         max_age: 720h            # retention by age; 0 keeps forever
//         max_bytes: 10GiB         # retention by size; 0 means no limit
//         segment_bytes: 64MiB     # segment file size (default 64 MiB)
//
//   CITYOS_ASSIGN_OR_RETURN(BusNodeConfig bus, ParseBusConfig(config.bus_section));
//   // error: "node.yaml:12:21: bus.streams[0].durability: expected fsync,
//   //         interval or none, got \"fsnc\""
#ifndef CITYOS_SERVICES_BUS_BUS_CONFIG_H_
#define CITYOS_SERVICES_BUS_BUS_CONFIG_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "cityos/bus.h"
#include "cityos/config.h"

namespace cityos {

// The `bus:` section, checked.
struct BusNodeConfig {
  // Largest serialized event accepted, in bytes. Default: 1 MiB.
  uint64_t max_event_bytes = 1 << 20;
  // Live subscribers' queue bound, in events. Default: 65536.
  size_t live_queue_depth = 65536;
  // BusOptions::reader_spin, in microseconds (0 never spins). Default: 50.
  int64_t reader_spin_us = 50;
  // Streams created when the node starts, in config order.
  std::vector<StreamConfig> streams;
};

// Reads and checks the section (an empty map gives the defaults): unknown
// keys, mistyped values, bad stream names or patterns, duplicate names and
// patterns overlapping another configured stream are INVALID_ARGUMENT naming
// file, line and key.
absl::StatusOr<BusNodeConfig> ParseBusConfig(const ConfigNode& section);

// The Bus options for `config`, keeping the logs in `data_dir`. `clock` may be
// null (the real clock).
BusOptions MakeBusOptions(const BusNodeConfig& config, std::string data_dir, Clock* clock);

}  // namespace cityos

#endif  // CITYOS_SERVICES_BUS_BUS_CONFIG_H_
