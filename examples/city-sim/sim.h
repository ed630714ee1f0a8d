// File: sim.h
//
// The demo-city simulator: a city (Quzhou by default) with districts,
// enterprises of several industries (sites, production lines, meters of
// several energy kinds) and citizens, generating the events the carbon
// account reads:
//   - MeterReading (15-min INTERVAL readings with an industry daily profile
//     and noise; occasionally a duplicate or a late, out-of-order reading;
//     rarely an impossible one — a negative value or a Wh figure sent as kWh
//     — so the ledger's quarantine shows up),
//   - ProcessActivity (clinker of the cement kilns, hourly),
//   - ValueAdded (per enterprise, per calendar month and year),
//   - personal events: TransitRide (metro, bus), Trip (walk, bicycle),
//     GreenPayment, EInvoice, each about a pseudonymous data subject.
//
//   CITYOS_ASSIGN_OR_RETURN(auto sim, CitySim::Create(DefaultQuzhouConfig()));
//   for (const carbon::v1::Account& a : sim->Accounts()) ...   // create these first
//   std::vector<SimEvent> day = sim->Generate(t0, t0 + absl::Hours(24));
//
// Generation is a pure function of (config, time window): every value comes
// from a hash of (seed, entity, time slot), so generating [a, b) and then
// [b, c) yields exactly the events of [a, c), and the same seed gives the same
// events (ids included: they are UUIDv7s derived from the seed).
#ifndef CITYOS_EXAMPLES_CITY_SIM_SIM_H_
#define CITYOS_EXAMPLES_CITY_SIM_SIM_H_

#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "cityos/carbon/v1/carbon_events.pb.h"
#include "cityos/event/v1/event.pb.h"

namespace cityos {
class Clock;
class ConfigNode;
}  // namespace cityos

namespace cityos::citysim {

struct SimDistrict {
  std::string token;   // subject token, e.g. "kecheng"
  std::string region;  // region code, e.g. "CN-ZJ-QZ-KC"
  std::string name;    // e.g. "Kecheng"
  double latitude = 0, longitude = 0;
};

struct SimMeter {
  std::string id;  // local id under its line, e.g. "elec"
  carbon::v1::EnergyKind energy = carbon::v1::ENERGY_KIND_ELECTRICITY;
  std::string unit;       // e.g. "kWh"
  double per_hour = 0;    // mean consumption at full load, `unit` per hour
  std::string tariff_id;  // supplier tariff (market-based scope 2), optional
};

struct SimProcess {
  std::string method = "cement-clinker";
  std::string key = "clinker";
  std::string unit = "t";
  double per_hour = 0;  // at full load
};

struct SimLine {
  std::string id, name;
  std::vector<SimMeter> meters;
  std::vector<SimProcess> processes;  // hourly ProcessActivity of this line
};

struct SimSite {
  std::string id, name;
  std::string district;  // district token
  std::vector<SimLine> lines;
};

// Daily load shape of an enterprise.
enum class LoadProfile { kContinuous, kTwoShift, kDataCentre };

struct SimEnterprise {
  std::string id;  // account id, e.g. "qz-steel"
  std::string name;
  std::string org;            // its organisation (publishes its readings)
  std::string industry_code;  // GB/T 4754-2017, e.g. "C3120"
  std::string district;       // head office district token
  LoadProfile profile = LoadProfile::kContinuous;
  double value_added_per_year = 0;  // 10,000 yuan
  std::vector<SimSite> sites;
};

// Who publishes the personal and statistical events.
struct SimOrgs {
  std::string metro = "quzhou-metro";         // TransitRide (METRO)
  std::string bus = "quzhou-bus";             // TransitRide (BUS)
  std::string trips = "quzhou-green-travel";  // Trip (WALK, BICYCLE)
  std::string payments = "alipay-sim";        // GreenPayment
  std::string einvoices = "quzhou-tax";       // EInvoice
  std::string statistics = "quzhou-stats";    // ValueAdded
};

struct SimRates {
  // Meter interval; each is split into `readings_per_interval` readings
  // (the rate: readings per meter per interval). Default 15 min, 1.
  absl::Duration interval = absl::Minutes(15);
  int readings_per_interval = 1;
  // Simulated seconds per real second (SimRunner only). Default 60.
  double speed = 60;
  // Relative noise of meter values (standard deviation). Default 0.06.
  double noise = 0.06;
  // Share of readings sent twice / late (1-4 slots, out of order) /
  // impossible (half negative, half a Wh figure sent as kWh).
  double duplicate_share = 0.01;
  double out_of_order_share = 0.01;
  double impossible_share = 0.001;
  // Per citizen per day (Poisson means).
  double metro_rides_per_day = 0.8;
  double bus_rides_per_day = 0.6;
  double walks_per_day = 0.5;
  double bike_trips_per_day = 0.4;
  double green_payments_per_day = 1.5;
  double einvoices_per_day = 0.4;
};

struct SimConfig {
  uint64_t seed = 1;
  std::string city_token = "quzhou";
  std::string city_region = "CN-ZJ-QZ";
  std::string city_name = "Quzhou";
  std::string jurisdiction = "CN";
  std::string time_zone = "Asia/Shanghai";
  std::vector<SimDistrict> districts;
  std::vector<SimEnterprise> enterprises;
  int citizens = 200;
  // Share of citizens granting consent for carbon_accounting (exactly
  // round(share x citizens) of them, chosen by the seed).
  double consent_share = 0.6;
  std::string subject_prefix = "qz-p-";
  SimRates rates;
  SimOrgs orgs;
};

// Quzhou: Kecheng, Qujiang, Longyou, Jiangshan; steel (C3120), cement
// (C3011, with clinker process emissions), fluorochemicals (C2614), textiles
// (C1711, two shifts) and a data centre (I6550).
SimConfig DefaultQuzhouConfig();

// Reads a `city-sim` config section over DefaultQuzhouConfig(): keys seed,
// consent_share, citizens{count, *_per_day}, rates{interval,
// readings_per_interval, speed, noise, duplicate_share, out_of_order_share,
// impossible_share}, city{token, region, name, jurisdiction, time_zone,
// districts[]}, enterprises[] (replace the default ones), orgs{...}. Other
// keys in `allowed_extra` are left to the caller. Errors name file, line, key.
absl::StatusOr<SimConfig> ParseSimConfig(
    const ConfigNode& section, std::initializer_list<std::string_view> allowed_extra = {});

// The units the carbon account accepts for `kind` (the brief's table:
// electricity kWh|MWh, natural gas m3, steam GJ|t, fuels kg|t, heat GJ).
bool SimUnitAccepted(carbon::v1::EnergyKind kind, std::string_view unit);

// INVALID_ARGUMENT naming the bad entry (unknown district, duplicate id,
// a unit no energy kind accepts, non-positive rates, ...).
absl::Status ValidateSimConfig(const SimConfig& config);

// One generated event and who publishes it.
struct SimEvent {
  std::string org;       // publishing organisation
  std::string service;   // publishing service name within the org
  std::string district;  // district token (for meter readings: the MQTT topic)
  event::v1::Event event;
};

// Internal to CitySim: an event and when it is emitted.
struct TimedSimEvent {
  absl::Time emit;
  SimEvent e;
};

struct SimCitizen {
  std::string data_subject;  // pseudonymous id
  std::string district;      // home district token
  bool consents = false;     // grants carbon_accounting consent
};

// The simulated city. Immutable after Create; thread-safe.
class CitySim {
 public:
  static absl::StatusOr<std::unique_ptr<CitySim>> Create(SimConfig config);

  // Every event emitted in [from, to), ordered by emission time (a reading is
  // emitted at its interval end, a late one up to 4 slots after).
  std::vector<SimEvent> Generate(absl::Time from, absl::Time to) const;

  // ValueAdded of every enterprise for the calendar month and the calendar
  // year before the ones containing `at` (so grades can be computed at once).
  std::vector<SimEvent> ValueAddedBackfill(absl::Time at) const;

  // The accounts the carbon account needs, parents before children:
  // enterprise `<e>`, site `<e>/<site>`, line `<e>/<site>/<line>`, meter
  // `<e>/<site>/<line>/<meter>` (MeterSpec with unit and max_per_hour).
  std::vector<carbon::v1::Account> Accounts() const;

  const std::vector<SimCitizen>& citizens() const { return citizens_; }
  // Data subjects of the consenting citizens, sorted.
  std::vector<std::string> ConsentingSubjects() const;

  // (org, subject pattern) pairs the simulator publishes as: the policy rules
  // a node needs to let it.
  std::vector<std::pair<std::string, std::string>> Publishers() const;

  const SimConfig& config() const { return config_; }
  // Length of one reading (interval / readings_per_interval).
  absl::Duration reading_length() const { return slot_; }

 private:
  explicit CitySim(SimConfig config);
  struct MeterRef {
    std::string id;  // full account id
    std::string org;
    std::string district;  // token
    std::string region;
    LoadProfile profile;
    SimMeter meter;
  };
  struct ProcessRef {
    std::string line_id;  // account id of the line
    std::string enterprise;
    std::string org;
    std::string district;
    std::string region;
    LoadProfile profile;
    SimProcess process;
  };
  void Readings(const MeterRef& m, absl::Time from, absl::Time to,
                std::vector<TimedSimEvent>* out) const;
  void Process(const ProcessRef& p, absl::Time from, absl::Time to,
               std::vector<TimedSimEvent>* out) const;
  void ValueAdded(absl::Time from, absl::Time to, std::vector<TimedSimEvent>* out) const;
  void Personal(size_t citizen, absl::Time from, absl::Time to,
                std::vector<TimedSimEvent>* out) const;
  double Profile(LoadProfile p, absl::Time t) const;
  const SimDistrict& District(const std::string& token) const;

  SimConfig config_;
  absl::TimeZone tz_;
  absl::Duration slot_;
  std::vector<MeterRef> meters_;
  std::vector<ProcessRef> processes_;
  std::vector<SimCitizen> citizens_;
};

// Paces a CitySim against a clock: simulated time runs from `sim_start` at
// `speed` x real time, but never past the clock's now (readings must not be
// in the future), so a fast-forward from the past catches up and then
// continues in real time. Not thread-safe (one driver).
class SimRunner {
 public:
  SimRunner(const CitySim* sim, Clock* clock, absl::Time sim_start, double speed);
  // The events emitted since the previous call (or since sim_start).
  std::vector<SimEvent> Step();
  absl::Time sim_now() const { return done_; }

 private:
  const CitySim* sim_;
  Clock* clock_;
  absl::Time real_start_, sim_start_, done_;
  double speed_;
};

}  // namespace cityos::citysim

#endif  // CITYOS_EXAMPLES_CITY_SIM_SIM_H_
