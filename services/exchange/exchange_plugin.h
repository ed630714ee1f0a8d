// The `exchange` plug-in: serves cityos.exchange.v1.ExchangeService over the
// node's policy decision point and audit log (PluginContext::policy(),
// audit()), and keeps the entity state store fed from the bus.
//
//   plugins:
//     - name: exchange
//       config:                       # optional
//         subjects: [">"]             # subject patterns ingested into the
//                                     # entity store (default: everything)
//         max_batch: 512              # events per store transaction
//         subscribe_max_batch: 256    # Subscribe deliveries per response
//                                     # when the request says 0
//         store:
//           max_history_per_entity: 0 # states kept per entity (0 = all)
//           full_sync: false          # fsync every store commit
//
// State in PluginDataDir("exchange"):
//   entities.db    the SQLite entity store (OpenSqliteStateStore)
//   pseudonym.key  32 random bytes (0600), created once: the secret the
//                  per-recipient pseudonymization keys are derived from
//                  (PseudonymKey::ForRecipient). Losing it changes every
//                  pseudonym the exchange hands out.
#ifndef CITYOS_SERVICES_EXCHANGE_EXCHANGE_PLUGIN_H_
#define CITYOS_SERVICES_EXCHANGE_EXCHANGE_PLUGIN_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "cityos/plugin.h"
#include "exchange_subscribe.h"

namespace cityos {

// A new, unconfigured exchange plug-in. `resolver` names the caller of each
// RPC; null means PluginContext::Authenticate (tests may pass their own).
std::unique_ptr<ServicePlugin> MakeExchangePlugin(CallerResolver resolver = nullptr);

// Registers MakeExchangePlugin() as "exchange".
absl::Status RegisterExchangePlugin(PluginRegistry& registry);

// Reads `path` (exactly 32 bytes, not readable by group or others), or
// creates it with 32 random bytes (mode 0600). FAILED_PRECONDITION for a file
// of another size or with loose permissions.
absl::StatusOr<std::string> LoadOrCreatePseudonymSecret(const std::string& path);

}  // namespace cityos

#endif  // CITYOS_SERVICES_EXCHANGE_EXCHANGE_PLUGIN_H_
