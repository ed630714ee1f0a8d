// File: sim_plugin.h
//
// The `city-sim` plug-in: runs the demo-city simulator (sim.h) inside a
// cityosd node and publishes what it generates on the node's bus, each event
// as the principal of the organisation that would publish it in a real city
// (`spiffe://<td>/org/<org>/svc/<service>`):
//
//   org (default)           service       subjects
//   <enterprise org>        meters        carbon.meter.reading.quzhou.<district>
//   js-cement               mes           carbon.process.quzhou.jiangshan
//   quzhou-stats            value-added   carbon.output.quzhou.<district>
//   quzhou-metro, quzhou-bus ticketing    mobility.transit.ride.quzhou
//   quzhou-green-travel     trips         mobility.trip.quzhou
//   alipay-sim              payments      payments.green.quzhou
//   quzhou-tax              einvoice      payments.einvoice.quzhou
// (enterprise orgs by default: qz-steel, js-cement, qz-chem, ly-textile,
// qj-datacentre). The node's policy must allow these publishes.
//
//   plugins:
//     - name: city-sim
//       config:                     # all optional; see sim.h ParseSimConfig
//         seed: 7
//         consent_share: 0.6
//         citizens: {count: 200}
//         rates: {interval: 15m, readings_per_interval: 1, speed: 60}
//         backfill: 24h             # simulated time starts this long ago
//         tick: 1s                  # real time between steps
//         backfill_value_added: true  # last month's and year's ValueAdded at start
//         meters_via_mqtt: false    # true: readings go to an MQTT broker instead
//         mqtt: {host: 127.0.0.1, port: 1883, client_id: city-sim,
//                topic_root: cityos/meters}
//
// Set-up files: at start it writes, into its data dir (<node data_dir>/city-sim/):
//   consenting_subjects.txt   one data subject per line: the citizens who
//                             consent to carbon_accounting
//   accounts.jsonl            one cityos.carbon.v1.Account per line (JSON),
//                             parents first: create these with CreateAccount
// and ConsentingSubjects()/Accounts() of CitySim give the same in process.
//
// Consents (the demo's citizens acting for themselves): when the node runs
// `tls: auto` (its development CA is in <node data_dir>/pki/ca), a background
// thread makes every consenting citizen grant, AS THAT PERSON, a consent
// through the information bank's ConsentService on the node's own address:
// recipient org `carbon-office`, purpose `carbon_accounting`, data categories
// `mobility`, `payments.green`, `payments.einvoice`. Each person has a user
// certificate `spiffe://<td>/org/residents/user/<data subject>` issued from
// the node's development CA into <data dir>/residents/ (keys 0600), reused
// across restarts. The person's consents are listed first: one already given
// to the recipient for the purpose (active, or revoked by the person) is
// never granted again, so restarts grant nothing twice. The thread retries
// with backoff until the bank answers (also while the recipient awaits the
// ethics board's approval) and ends when every consenting citizen is done,
// or at Stop(). The bank grants only to a recipient the data ethics board
// approved (ProposeRecipient, ReviewProposal); `approve_recipient: true`
// (demo only, default false) has the plug-in file and approve that proposal
// itself with two development principals:
//   proposer  spiffe://<td>/org/demo-infobank-admin/user/admin   (infobank-admin)
//   reviewer  spiffe://<td>/org/demo-ethics-board/user/chair     (data-ethics-board)
//
//       grant_consents: true        # default: true when the node runs tls: auto;
//                                   # ignored (logged) otherwise
//       consents:                   # all optional
//         recipient_org: carbon-office
//         purpose: carbon_accounting
//         data_categories: [mobility, payments.green, payments.einvoice]
//         residents_org: residents  # org of the citizens' user certificates
//         address: ""               # default: the node's listen address
//         approve_recipient: false  # demo only: see above
//         min_backoff: 200ms
//         max_backoff: 30s
#ifndef CITYOS_EXAMPLES_CITY_SIM_SIM_PLUGIN_H_
#define CITYOS_EXAMPLES_CITY_SIM_SIM_PLUGIN_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "cityos/plugin.h"

namespace cityos::citysim {

class CitySim;

// What the plug-in has done so far.
struct CitySimStats {
  uint64_t published = 0;         // events accepted by the bus
  uint64_t publish_failures = 0;  // events the bus refused (e.g. PERMISSION_DENIED)
  uint64_t mqtt_published = 0;    // readings handed to the MQTT broker
  uint64_t mqtt_dropped = 0;      // readings dropped while the broker was unreachable
  bool mqtt_connected = false;    // meters_via_mqtt: the MQTT client is connected
  absl::Time sim_start = absl::InfinitePast();  // where the simulated time began
  absl::Time sim_now = absl::InfinitePast();
  // Consents (grant_consents): citizens whose consent this run granted,
  // citizens who already had one (granted earlier, or revoked by them: not
  // granted again), whether every consenting citizen is done, how many
  // attempts failed and the last error (empty when none).
  uint64_t consents_granted = 0;
  uint64_t consents_present = 0;
  bool consents_done = false;
  uint64_t consent_failures = 0;
  std::string consent_error;
};

// The plug-in, with its stats (for tests and the demo). The ServicePlugin
// calls come from one thread (as for every plug-in); sim() and stats() are
// thread-safe. Events are generated and published on the plug-in's own
// thread, every `tick`; consents are granted on a second thread.
class CitySimPlugin : public ServicePlugin {
 public:
  // Null before Start.
  virtual const CitySim* sim() const = 0;
  virtual CitySimStats stats() const = 0;
};

// A new, unconfigured plug-in.
std::unique_ptr<CitySimPlugin> MakeCitySimPlugin();

}  // namespace cityos::citysim

namespace cityos {
// Registers citysim::MakeCitySimPlugin() as "city-sim".
absl::Status RegisterCitySimPlugin(PluginRegistry& registry);
}  // namespace cityos

#endif  // CITYOS_EXAMPLES_CITY_SIM_SIM_PLUGIN_H_
