// File: mqtt_bridge.h
//
// Smart-meter ingest over MQTT: a bridge that subscribes to a Mosquitto
// broker (libmosquitto), validates every meter message and hands each valid
// one on as a cityos.carbon.v1.MeterReading event (the carbon plug-in
// publishes it on the bus). Also the client side of the same format
// (MqttMeterPublisher), used by the demo-city simulator.
//
//   MqttBridgeOptions o;
//   o.client_id = "carbon-bridge-1";
//   o.org = "quzhou-grid";
//   o.districts = {{"quzhou", "kecheng", "CN-ZJ-QZ-KC"}};
//   CITYOS_ASSIGN_OR_RETURN(auto bridge, MqttBridge::Start(o,
//       [&](std::vector<event::v1::Event> events) {
//         return bus->Publish(meters, std::move(events)).status(); }));
//   ...
//   bridge->Stop();
//
// Wire format (the contract with meter gateways; also in docs/carbon.md)
// ---------------------------------------------------------------------
// Topic:   <topic_root>/<city>/<district>/<meter_id>
//   topic_root defaults to `cityos/meters` and may itself contain '/'.
//   <city> and <district> are the lower-case subject tokens of a configured
//   district (e.g. `quzhou/kecheng`); everything after the district, '/'
//   included, is the meter id as registered in the carbon account
//   (1-128 characters of [A-Za-z0-9._/-], e.g. `qz-steel/site-1/line-1/m-elec`).
// Payload: one JSON object, UTF-8, exactly these keys:
//   {"kind":     "interval" | "cumulative" | "delta",          required
//    "energy":   "electricity" | "natural_gas" | "steam" | "diesel" |
//                "gasoline" | "coal" | "lpg" | "fuel_oil" | "heat", required
//    "value":    12.5,        a finite JSON number                required
//    "unit":     "kWh",       kWh | MWh | m3 | GJ | t | kg        required
//    "start":    "2026-11-29T08:00:00+08:00",  RFC 3339; required for
//                interval and delta, not allowed for cumulative
//    "end":      "2026-11-29T08:15:00+08:00",  RFC 3339; required (the
//                register time for cumulative)
//    "estimated": false}      optional boolean, default false
// Network: each client runs its own network thread (mosquitto_loop) that
// connects, and after a failure or a lost connection reconnects with
// exponential backoff (libmosquitto's loop_start thread gives up when the very
// first connect fails, e.g. when the broker starts after the bridge).
// QoS: the bridge subscribes to `<topic_root>/#` with QoS 1 (configurable)
// on a persistent session (clean session off, fixed client id), so the broker
// keeps messages for it while it is briefly away; it subscribes again on
// every connect, since a restarted broker without persistence forgot the
// session. Delivery is at least once: the ledger deduplicates readings.
//
// What is checked where (two layers):
//  1. Here (syntax, the first line of defence): topic layout, configured
//     city/district, meter id characters, JSON syntax, unknown or missing
//     keys, types, finite value, RFC 3339 times, and that the unit is one some
//     energy kind accepts — `Wh` (a unit-scale mix-up) is rejected here. Every
//     error is INVALID_ARGUMENT naming the field (`payload.unit: ...`). A
//     rejected message is counted, logged (topic and error; never payload
//     secrets or credentials) and never published.
//  2. In the carbon ledger (semantics): the unit and energy kind equal the
//     meter's registration (UNIT_MISMATCH), negative values, intervals,
//     future timestamps, duplicates, and plausibility against the meter's
//     max_per_hour (a Wh figure sent as kWh -> IMPLAUSIBLE). Those readings
//     pass the bridge and are quarantined there with a reason, so a negative
//     value is NOT rejected here.
//
// The event: subject `carbon.meter.reading.<city>.<district>`, type
// `cityos.carbon.v1.MeterReading` (proto_data), classification INTERNAL,
// owner = the configured org, region = the district's region code, source
// `//<city>.city/meters/<meter_id>` (or `<source_prefix>/<meter_id>`), time
// = the reading's end, id a fresh UUIDv7.
#ifndef CITYOS_SERVICES_CARBON_MQTT_BRIDGE_H_
#define CITYOS_SERVICES_CARBON_MQTT_BRIDGE_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "cityos/carbon/v1/carbon_events.pb.h"
#include "cityos/event/v1/event.pb.h"

struct mosquitto;
struct mosquitto_message;

namespace cityos {
class Clock;
}

namespace cityos::carbon {

namespace internal {
class MqttNetworkThread;
}

// A district meters may report from: its city and district subject tokens
// (lower-case, [a-z0-9_-]) and its region code.
struct MqttDistrict {
  std::string city;      // e.g. "quzhou"
  std::string district;  // e.g. "kecheng"
  std::string region;    // e.g. "CN-ZJ-QZ-KC"
};

// A topic split into its parts.
struct MeterTopic {
  std::string city, district, meter_id;
};

// Splits `<topic_root>/<city>/<district>/<meter_id>`. INVALID_ARGUMENT
// naming `topic` when the root differs, a part is missing or empty, or the
// meter id has a character outside [A-Za-z0-9._/-] or is over 128 long.
absl::StatusOr<MeterTopic> ParseMeterTopic(std::string_view topic_root, std::string_view topic);

// Parses and validates a payload (format above) into a reading for
// `meter_id`. INVALID_ARGUMENT naming the field, e.g.
// `payload.unit: "Wh" is not a unit of any energy kind (kWh, MWh, m3, GJ, t, kg)`.
absl::StatusOr<v1::MeterReading> ParseMeterPayload(std::string_view json,
                                                   std::string_view meter_id);

// The payload for `reading` (the inverse of ParseMeterPayload; meter id and
// region travel in the topic). Times in RFC 3339 UTC.
std::string FormatMeterPayload(const v1::MeterReading& reading);

// The units some energy kind accepts: kWh, MWh, m3, GJ, t, kg.
bool IsKnownEnergyUnit(std::string_view unit);

// Topic + payload -> event. Immutable after Create; thread-safe.
class MeterMessageConverter {
 public:
  // INVALID_ARGUMENT for an empty org or topic_root, a root with MQTT
  // wildcards, no districts, a duplicate or malformed district entry.
  static absl::StatusOr<MeterMessageConverter> Create(std::string topic_root, std::string org,
                                                      std::vector<MqttDistrict> districts,
                                                      std::string source_prefix = "");

  // The event for one message (see the file comment), or INVALID_ARGUMENT
  // naming `topic` or `payload.<field>`. `clock` (null: real) makes the id.
  absl::StatusOr<event::v1::Event> Convert(std::string_view topic, std::string_view payload,
                                           Clock* clock = nullptr) const;

  const std::string& topic_root() const { return topic_root_; }

 private:
  MeterMessageConverter() = default;
  std::string topic_root_, org_, source_prefix_;
  std::map<std::pair<std::string, std::string>, std::string> regions_;  // (city, district)
};

// Where the bridge connects and as whom.
struct MqttBridgeOptions {
  // Broker address. Default: 127.0.0.1:1883.
  std::string host = "127.0.0.1";
  int port = 1883;
  // MQTT client id; required (the broker keeps the persistent session under
  // it). 1-128 characters.
  std::string client_id;
  // Topic root; the bridge subscribes to `<topic_root>/#`. Default:
  // `cityos/meters`.
  std::string topic_root = "cityos/meters";
  // Subscription QoS, 0-2. Default 1 (at least once; the ledger dedups).
  int qos = 1;
  // Optional broker credentials: the username, and a file whose first line
  // is the password. The file must be readable by its owner only (mode 0600
  // or 0400), else Start refuses (FAILED_PRECONDITION naming the file).
  std::string username, password_file;
  // Optional TLS: the CA bundle that signs the broker's certificate, and a
  // client certificate + key (both or neither). TLS is on when ca_file is set.
  std::string ca_file, cert_file, key_file;
  // MQTT keepalive. Default: 30 s.
  absl::Duration keepalive = absl::Seconds(30);
  // Reconnect backoff: starts at `reconnect_delay`, doubles up to
  // `reconnect_delay_max` (whole seconds, at least 1). Defaults: 1 s, 10 s.
  absl::Duration reconnect_delay = absl::Seconds(1);
  absl::Duration reconnect_delay_max = absl::Seconds(10);
  // Owner of the published events (the meter operator's org). Required.
  std::string org;
  // Districts meters may report from. At least one.
  std::vector<MqttDistrict> districts;
  // Source prefix of events; default `//<city>.city/meters`.
  std::string source_prefix;
  // Most events per Sink call. Default: 1000.
  size_t max_batch = 1000;
  // Null: the real clock.
  Clock* clock = nullptr;
};

// Subscribes to the broker and converts messages to events. Thread-safe.
// The sink and the reject hook run on the bridge's network thread (never
// concurrently), in arrival order.
class MqttBridge {
 public:
  // Receives the events of valid messages, in arrival order: every message
  // read in one pass of the network loop (at most `max_batch`) in one call.
  // An error is counted (`sink_failures`, per event) and logged; the
  // messages are not retried (QoS 1 was already acknowledged to the broker).
  using Sink = std::function<absl::Status(std::vector<event::v1::Event>)>;
  // Told about every rejected message: its topic and the error.
  using RejectHook = std::function<void(std::string_view topic, const absl::Status& error)>;

  struct Stats {
    uint64_t received = 0;          // messages delivered by the broker
    uint64_t published = 0;         // handed to the sink successfully
    uint64_t rejected = 0;          // invalid (never published)
    uint64_t sink_failures = 0;     // valid, but the sink returned an error
    uint64_t connects = 0;          // successful CONNACKs (1 + reconnects)
    uint64_t subscriptions = 0;     // SUBACKs received (one per connect)
    uint64_t refused = 0;           // CONNACKs refusing the connection (e.g. credentials)
    uint64_t connect_failures = 0;  // connects that failed or connections lost (TCP, TLS, refused)
    bool connected = false;
  };

  // Validates `options` (INVALID_ARGUMENT naming the option; NOT_FOUND /
  // FAILED_PRECONDITION naming a credential or TLS file), then connects in
  // the background: an unreachable broker is not an error, the bridge keeps
  // retrying with backoff and resubscribes on every (re)connect.
  static absl::StatusOr<std::unique_ptr<MqttBridge>> Start(MqttBridgeOptions options, Sink sink,
                                                           RejectHook on_reject = nullptr);
  ~MqttBridge();  // Stop()s
  MqttBridge(const MqttBridge&) = delete;
  MqttBridge& operator=(const MqttBridge&) = delete;

  // Disconnects and joins the network thread; after it returns the sink is
  // not called again. Idempotent.
  void Stop();

  Stats stats() const;

 private:
  MqttBridge(MqttBridgeOptions options, MeterMessageConverter converter, Sink sink,
             RejectHook on_reject);
  static void OnConnect(mosquitto* m, void* self, int rc);
  static void OnDisconnect(mosquitto* m, void* self, int rc);
  static void OnSubscribe(mosquitto* m, void* self, int mid, int qos_count, const int* granted);
  static void OnMessage(mosquitto* m, void* self, const mosquitto_message* msg);
  void HandleMessage(std::string_view topic, std::string_view payload);
  // Hands `pending_` to the sink. Network thread only.
  void Flush();

  const MqttBridgeOptions options_;
  const MeterMessageConverter converter_;
  const Sink sink_;
  const RejectHook on_reject_;
  mosquitto* mosq_ = nullptr;
  std::unique_ptr<internal::MqttNetworkThread> net_;
  absl::Mutex stop_mu_;
  bool stopped_ ABSL_GUARDED_BY(stop_mu_) = false;
  std::vector<event::v1::Event> pending_;  // network thread only
  std::string pending_first_topic_;        // for the log line of a failed batch
  std::atomic<uint64_t> received_{0}, published_{0}, rejected_{0}, sink_failures_{0}, connects_{0},
      subscriptions_{0}, refused_{0}, connect_failures_{0};
  std::atomic<bool> connected_{false};
};

// Publishes meter readings to a broker in the format above (the meter
// gateway side; the simulator uses it). Thread-safe.
class MqttMeterPublisher {
 public:
  struct Options {
    std::string host = "127.0.0.1";
    int port = 1883;
    std::string client_id;  // required
    std::string topic_root = "cityos/meters";
    int qos = 1;
    std::string username, password_file;  // as MqttBridgeOptions
    std::string ca_file, cert_file, key_file;
    absl::Duration keepalive = absl::Seconds(30);
  };
  // Validates, then connects in the background (reconnecting with backoff).
  static absl::StatusOr<std::unique_ptr<MqttMeterPublisher>> Start(Options options);
  ~MqttMeterPublisher();
  // Queues one reading on `<topic_root>/<city>/<district>/<meter_id>`.
  // UNAVAILABLE while not connected (nothing queued), INVALID_ARGUMENT for a
  // bad topic part.
  absl::Status Publish(std::string_view city, std::string_view district,
                       const v1::MeterReading& reading);
  bool connected() const { return connected_.load(); }
  // Waits (up to 5 s) for queued messages to be acknowledged, disconnects
  // and joins. Idempotent.
  void Stop();

 private:
  explicit MqttMeterPublisher(Options options);
  const Options options_;
  mosquitto* mosq_ = nullptr;
  std::unique_ptr<internal::MqttNetworkThread> net_;
  absl::Mutex stop_mu_;
  bool stopped_ ABSL_GUARDED_BY(stop_mu_) = false;
  std::atomic<bool> connected_{false};
  std::atomic<int64_t> outstanding_{0};  // published, not yet acknowledged
};

}  // namespace cityos::carbon

#endif  // CITYOS_SERVICES_CARBON_MQTT_BRIDGE_H_
