// The `carbon` plug-in: serves cityos.carbon.v1.CarbonAccountService
// (carbon_service.h), reading every input through the exchange as its own
// principal (org `carbon-office`, svc `carbon`) for the purpose
// `carbon_accounting`, and publishing its outputs on the node's bus.
//
//   plugins:
//     - name: carbon
//       config:                                 # all optional
//         data_dir: /var/lib/cityos/carbon      # default: <node data_dir>/carbon
//         time_zone: Asia/Shanghai              # calendar periods (default)
//         identity:                             # default: issued from the node's
//           cert: /etc/cityos/carbon.pem        # development CA under `tls: auto`
//           key: /etc/cityos/carbon.key         # into <data_dir>/identity
//           ca: /etc/cityos/ca.pem
//           crl: /etc/cityos/crl.pem
//           server_id: spiffe://quzhou.city/org/city/svc/cityosd
//         exchange:
//           address: 127.0.0.1:7443             # default: the hosting node
//           max_batch: 1024
//           min_backoff: 100ms
//           max_backoff: 5s
//         inputs: ["carbon.meter.reading.>", "carbon.process.>", "carbon.output.>",
//                  "mobility.trip.>", "mobility.transit.ride.>",
//                  "payments.green.>", "payments.einvoice.>"]     # the default
//         regions:
//           - {code: CN, name: China}
//           - {code: CN-ZJ, name: Zhejiang, parent: CN, grid: CN-EAST, token: zhejiang}
//           - {code: CN-ZJ-QZ, name: Quzhou, parent: CN-ZJ, token: quzhou}
//           - {code: CN-ZJ-QZ-KC, name: Kecheng, parent: CN-ZJ-QZ, token: kecheng}
//         factors_csv: carbon/emission-factors.csv   # relative to the config file
//         factors:                              # added unless present
//           - {kind: supplier, key: electricity, region: CN, vintage: "2024",
//              value: 0.1, unit: kgCO2/kWh, tariff_id: green-1, source: "PPA",
//              valid_from: "2024-01-01T00:00:00+08:00", valid_to: ""}
//         benchmarks:
//           - {id: zj-C31, industry: C31, version: "2023", intensity: 0.92, source: "..."}
//         thresholds: [0.6, 0.8, 1.2, 2.0]
//         credit_rules:
//           csv: carbon/green-behaviour-credits.csv  # relative to the config file
//           scheme: ant_forest
//           rules:                              # further rules
//             - {id: r1, scheme: city, behaviour: cycling_km, grams: 40, unit: km,
//                max_per_day: 0, max_per_month: 0, max_grams_per_day: 0}
//         incentives:
//           points_per_kg: 1
//           coupon_every_kg: 10
//           coupon_value: {currency: CNY, amount_minor: 500}
//           loan_tiers: {1: green-A, 2: green-B, 3: standard}
//         tick_interval: 1s
//         publish_records: true
//         ingest_batch: 8192                    # deliveries per ledger batch
//         queue_limit: 65536                    # queued deliveries before back-pressure
//         future_tolerance: 5m                  # readings ending later are quarantined
//         mqtt:                                 # optional meter bridge
//           host: 127.0.0.1
//           port: 1883
//           topic_root: cityos/meters
//           org: quzhou-grid                    # publishes readings as this org
//           districts: [{city: quzhou, district: kecheng, region: CN-ZJ-QZ-KC}]
//         reporters: [quzhou-grid, quzhou-stats]  # orgs that may report
//             # readings, process activity and value added for any
//             # enterprise (the MQTT bridge's org is added); anyone else only
//             # for its own org's enterprises
//         provision_accounts: [city-sim/accounts.jsonl]  # JSON lines of
//             # cityos.carbon.v1.Account, parents first, created at start
//             # unless they exist; relative to the node's data dir
//         provision_plans: [carbon/demo-plans.jsonl]  # JSON lines of
//             # cityos.carbon.v1.Plan (no plan_id), created at start unless
//             # the target has a plan of that granularity; relative to the
//             # config file
//
// Errors are INVALID_ARGUMENT naming the file, line and key.
#ifndef CITYOS_SERVICES_CARBON_CARBON_PLUGIN_H_
#define CITYOS_SERVICES_CARBON_CARBON_PLUGIN_H_

#include <memory>

#include "absl/status/status.h"
#include "carbon_service.h"
#include "cityos/plugin.h"

namespace cityos::carbon {

// A new, unconfigured plug-in. `resolver` names the caller of each RPC; null
// means PluginContext::Authenticate.
std::unique_ptr<ServicePlugin> MakeCarbonPlugin(
    CarbonCallerResolver resolver = nullptr);

// The service principal: spiffe://<trust_domain>/org/carbon-office/svc/carbon.
Principal CarbonServicePrincipal(const std::string& trust_domain);

}  // namespace cityos::carbon

namespace cityos {
// Registers carbon::MakeCarbonPlugin() as "carbon".
absl::Status RegisterCarbonPlugin(PluginRegistry& registry);
}  // namespace cityos

#endif  // CITYOS_SERVICES_CARBON_CARBON_PLUGIN_H_
