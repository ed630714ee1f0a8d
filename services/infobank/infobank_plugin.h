// The `infobank` plug-in: serves cityos.consent.v1.ConsentService and answers
// the node PDP's consent hook (PluginContext::policy()->SetConsentChecker at
// Start, reset to null at Stop). It also keeps the personal data store fed
// from the bus (events that carry a data_subject) and credits benefits for
// every provision under consent it finds in the node's audit log.
//
//   plugins:
//     - name: infobank
//       config:                              # all optional
//         data_dir: /var/lib/cityos/bank     # default: <node data_dir>/infobank
//         controller:                        # the bank as PII controller (receipts)
//           name: Quzhou Information Bank    # default: "cityos information bank"
//           contact: Data Protection Officer
//           address: "1 Civic Square, Quzhou"
//           email: dpo@bank.example
//           phone: "+86-570-0000000"
//           url: https://bank.example
//           policy_url: https://bank.example/privacy
//           jurisdiction: CN                 # default JP
//         data_categories: [health, care, mobility, payments, disaster, ...]
//         sensitive_categories: [health, care, disaster.evacuation_support]
//         recipient_categories:              # category -> member orgs
//           hospital: [quzhou-people-hospital]
//         benefit_rules:                     # first match pays
//           - {id: care, purpose: elderly_care, data_category: care, points: 5}
//         personal_data_subjects: [">"]      # bus subjects kept in the PDS
//         benefits_poll: 1s                  # how often the audit is read
//
// State in the data dir: consents.db (ConsentStore), receipt.key (+ .pub,
// the Ed25519 receipt signing key), personal.db + master.key (PersonalStore),
// benefits.db (BenefitLedger).
#ifndef CITYOS_SERVICES_INFOBANK_INFOBANK_PLUGIN_H_
#define CITYOS_SERVICES_INFOBANK_INFOBANK_PLUGIN_H_

#include <memory>

#include "absl/status/status.h"
#include "cityos/plugin.h"
#include "infobank_service.h"

namespace cityos::infobank {

// A new, unconfigured plug-in. `resolver` names the caller of each RPC; null
// means PluginContext::Authenticate.
std::unique_ptr<ServicePlugin> MakeInfobankPlugin(InfobankCallerResolver resolver = nullptr);

}  // namespace cityos::infobank

namespace cityos {
// Registers infobank::MakeInfobankPlugin() as "infobank".
absl::Status RegisterInfobankPlugin(PluginRegistry& registry);
}  // namespace cityos

#endif  // CITYOS_SERVICES_INFOBANK_INFOBANK_PLUGIN_H_
