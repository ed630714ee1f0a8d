// The node config's `policy:` and `audit:` sections: how the node's policy
// decision point and audit log are set up (docs/operations.md).
#ifndef CITYOS_SERVICES_CITYOSD_ACCESS_CONFIG_H_
#define CITYOS_SERVICES_CITYOSD_ACCESS_CONFIG_H_

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "cityos/config.h"
#include "cityos/policy.h"

namespace cityos {

struct PolicyNodeConfig {
  // Policy documents loaded at start (absolute paths; a directory stands for
  // every *.yaml file in it, by name). An error in any of them stops the
  // start, naming the file and line.
  std::vector<std::string> files;
  // Purposes beyond the built-in vocabulary.
  std::vector<PurposeInfo> purposes;
  // The jurisdiction of recipients not in `org_jurisdictions`; empty =
  // unknown (cross-border personal data is then always denied).
  std::string jurisdiction;
  std::vector<std::pair<std::string, std::string>> org_jurisdictions;
  absl::Duration max_emergency = absl::Hours(72);
  size_t cache_capacity = 1 << 16;
};

struct AuditNodeConfig {
  // Empty = <data_dir>/audit/signing.key.
  std::string signing_key;
  uint64_t checkpoint_every = 1024;
  absl::Duration checkpoint_interval = absl::Seconds(1);
};

// Parses `policy:` (an empty map when absent). Unknown keys, bad
// jurisdictions (not two upper-case letters), missing files are
// INVALID_ARGUMENT naming file, line and key.
absl::StatusOr<PolicyNodeConfig> ParsePolicyConfig(const ConfigNode& section);
absl::StatusOr<AuditNodeConfig> ParseAuditConfig(const ConfigNode& section);

// The documents of `files`, read from disk, named by file name. A name used
// twice (two directories with the same file name) is INVALID_ARGUMENT.
absl::StatusOr<std::vector<PolicyDocumentText>> ReadPolicyFiles(
    const std::vector<std::string>& files);

}  // namespace cityos

#endif  // CITYOS_SERVICES_CITYOSD_ACCESS_CONFIG_H_
