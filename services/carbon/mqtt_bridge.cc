// The smart-meter MQTT bridge and publisher (see mqtt_bridge.h): payload
// parsing and validation, topic layout, and the libmosquitto clients.
#include "mqtt_bridge.h"

#include <mosquitto.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmath>
#include <fstream>
#include <functional>
#include <mutex>
#include <nlohmann/json.hpp>
#include <set>
#include <thread>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "cityos/clock.h"
#include "cityos/event.h"
#include "cityos/logging.h"
#include "cityos/proto_time.h"
#include "cityos/status.h"

namespace cityos::carbon {
namespace {

constexpr char kLog[] = "carbon.mqtt";
constexpr size_t kMaxMeterId = 128;

struct EnergyName {
  const char* name;
  v1::EnergyKind kind;
};
constexpr EnergyName kEnergies[] = {
    {"electricity", v1::ENERGY_KIND_ELECTRICITY},
    {"natural_gas", v1::ENERGY_KIND_NATURAL_GAS},
    {"steam", v1::ENERGY_KIND_STEAM},
    {"diesel", v1::ENERGY_KIND_DIESEL},
    {"gasoline", v1::ENERGY_KIND_GASOLINE},
    {"coal", v1::ENERGY_KIND_COAL},
    {"lpg", v1::ENERGY_KIND_LPG},
    {"fuel_oil", v1::ENERGY_KIND_FUEL_OIL},
    {"heat", v1::ENERGY_KIND_HEAT},
};
constexpr const char* kUnits[] = {"kWh", "MWh", "m3", "GJ", "t", "kg"};

// Process-wide libmosquitto initialisation, once, thread-safe. Never cleaned
// up: other clients in the process may still use the library.
void InitMosquittoOnce() {
  static std::once_flag once;
  std::call_once(once, [] { mosquitto_lib_init(); });
}

absl::Status InvalidField(const std::string& field, const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat("payload.", field, ": ", what));
}

std::string JsonTypeName(const nlohmann::json& j) { return j.type_name(); }

bool IsToken(std::string_view s) {
  if (s.empty() || s.size() > 64) return false;
  for (char c : s) {
    if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '-')) return false;
  }
  return true;
}

bool IsMeterIdChar(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
         c == '_' || c == '/' || c == '-';
}

absl::StatusOr<absl::Time> ParseRfc3339(const nlohmann::json& j, const std::string& field) {
  if (!j.is_string()) {
    return InvalidField(field,
                        absl::StrCat("expected an RFC 3339 time string, got ", JsonTypeName(j)));
  }
  const std::string& s = j.get_ref<const std::string&>();
  absl::Time t;
  std::string err;
  if (!absl::ParseTime(absl::RFC3339_full, s, &t, &err)) {
    return InvalidField(field, absl::StrCat("\"", s, "\" is not an RFC 3339 time (", err, ")"));
  }
  // Within google.protobuf.Timestamp's range.
  google::protobuf::Timestamp ts;
  TimestampToProto(t, &ts);
  CITYOS_RETURN_IF_ERROR(TimestampFromProto(ts, absl::StrCat("payload.", field)).status());
  return t;
}

// Reads the first line of a credential file that only its owner may read.
absl::StatusOr<std::string> ReadPasswordFile(const std::string& path) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) {
    return absl::NotFoundError(absl::StrCat("password_file ", path, ": cannot stat"));
  }
  if ((st.st_mode & 077) != 0) {
    return absl::FailedPreconditionError(
        absl::StrFormat("password_file %s: mode %04o lets group or others read it; must be 0600",
                        path, st.st_mode & 07777));
  }
  std::ifstream in(path);
  std::string line;
  if (!in || !std::getline(in, line)) {
    return absl::FailedPreconditionError(absl::StrCat("password_file ", path, ": cannot read"));
  }
  if (!line.empty() && line.back() == '\r') line.pop_back();
  if (line.empty()) {
    return absl::FailedPreconditionError(absl::StrCat("password_file ", path, ": empty password"));
  }
  return line;
}

absl::Status CheckReadable(const std::string& path, const std::string& option) {
  if (::access(path.c_str(), R_OK) != 0) {
    return absl::NotFoundError(absl::StrCat(option, " ", path, ": not readable"));
  }
  return absl::OkStatus();
}

int WholeSeconds(absl::Duration d) {
  return static_cast<int>(std::max<int64_t>(1, absl::ToInt64Seconds(d)));
}

// Shared option checks and client set-up of the bridge and the publisher.
struct ClientSetup {
  std::string host;
  int port;
  std::string client_id, topic_root;
  int qos;
  std::string username, password_file, ca_file, cert_file, key_file;
};

absl::Status CheckClientOptions(const ClientSetup& o) {
  if (o.host.empty()) return absl::InvalidArgumentError("mqtt.host: required");
  if (o.port < 1 || o.port > 65535) {
    return absl::InvalidArgumentError(absl::StrCat("mqtt.port: ", o.port, " is not 1-65535"));
  }
  if (o.client_id.empty() || o.client_id.size() > 128) {
    return absl::InvalidArgumentError("mqtt.client_id: required, 1-128 characters");
  }
  if (o.topic_root.empty() || o.topic_root.back() == '/' ||
      o.topic_root.find_first_of("+#") != std::string::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("mqtt.topic_root: \"", o.topic_root,
                     "\" must be non-empty, without wildcards or a trailing /"));
  }
  if (o.qos < 0 || o.qos > 2) {
    return absl::InvalidArgumentError(absl::StrCat("mqtt.qos: ", o.qos, " is not 0, 1 or 2"));
  }
  if (!o.password_file.empty() && o.username.empty()) {
    return absl::InvalidArgumentError("mqtt.username: required with password_file");
  }
  if (o.cert_file.empty() != o.key_file.empty()) {
    return absl::InvalidArgumentError("mqtt.cert_file, mqtt.key_file: give both or neither");
  }
  if (!o.cert_file.empty() && o.ca_file.empty()) {
    return absl::InvalidArgumentError("mqtt.ca_file: required with a client certificate");
  }
  return absl::OkStatus();
}

// Applies credentials and TLS to `m`.
absl::Status ConfigureClient(mosquitto* m, const ClientSetup& o) {
  if (!o.username.empty()) {
    std::string password;
    if (!o.password_file.empty()) {
      CITYOS_ASSIGN_OR_RETURN(password, ReadPasswordFile(o.password_file));
    }
    int rc = mosquitto_username_pw_set(m, o.username.c_str(),
                                       o.password_file.empty() ? nullptr : password.c_str());
    if (rc != MOSQ_ERR_SUCCESS) {
      return absl::InvalidArgumentError(
          absl::StrCat("mqtt.username: rejected by libmosquitto: ", mosquitto_strerror(rc)));
    }
  }
  if (!o.ca_file.empty()) {
    CITYOS_RETURN_IF_ERROR(CheckReadable(o.ca_file, "mqtt.ca_file"));
    if (!o.cert_file.empty()) {
      CITYOS_RETURN_IF_ERROR(CheckReadable(o.cert_file, "mqtt.cert_file"));
      CITYOS_RETURN_IF_ERROR(CheckReadable(o.key_file, "mqtt.key_file"));
    }
    int rc = mosquitto_tls_set(m, o.ca_file.c_str(), nullptr,
                               o.cert_file.empty() ? nullptr : o.cert_file.c_str(),
                               o.key_file.empty() ? nullptr : o.key_file.c_str(), nullptr);
    if (rc != MOSQ_ERR_SUCCESS) {
      return absl::InvalidArgumentError(
          absl::StrCat("mqtt TLS (ca_file ", o.ca_file, "): ", mosquitto_strerror(rc)));
    }
  }
  return absl::OkStatus();
}

}  // namespace

namespace internal {

// Drives one libmosquitto client: connects, runs mosquitto_loop, reconnects
// with exponential backoff, and on Stop disconnects cleanly and joins.
// The client must be in threaded mode (mosquitto_threaded_set) so that other
// threads may publish while this one runs the loop.
class MqttNetworkThread {
 public:
  MqttNetworkThread(mosquitto* m, std::string host, int port, int keepalive_s,
                    absl::Duration min_delay, absl::Duration max_delay,
                    const std::atomic<bool>* connected, std::atomic<uint64_t>* failures,
                    std::function<void()> after_loop = nullptr)
      : m_(m),
        host_(std::move(host)),
        port_(port),
        keepalive_s_(keepalive_s),
        min_delay_(min_delay),
        max_delay_(max_delay),
        connected_(connected),
        failures_(failures),
        after_loop_(std::move(after_loop)) {}
  ~MqttNetworkThread() { Stop(); }

  void Start() {
    thread_ = std::thread([this] { Run(); });
  }

  // Idempotent.
  void Stop() {
    {
      absl::MutexLock lock(&mu_);
      stop_ = true;
    }
    if (thread_.joinable()) thread_.join();
  }

 private:
  // Waits `d` unless stopped first; true when stopped.
  bool WaitStop(absl::Duration d) {
    absl::MutexLock lock(&mu_);
    auto stopped = [this]() ABSL_SHARED_LOCKS_REQUIRED(mu_) { return stop_; };
    mu_.AwaitWithTimeout(absl::Condition(&stopped), d);
    return stop_;
  }
  bool Stopping() {
    absl::MutexLock lock(&mu_);
    return stop_;
  }

  void Run() {
    bool first = true, socket_ok = false, warned = false;
    absl::Duration delay = min_delay_;
    // After a failed connect or loop: counts it, warns once per outage, waits
    // `delay` and doubles it (up to max_delay_). True when asked to stop.
    auto back_off = [&](const char* what, int rc) {
      if (failures_ != nullptr) failures_->fetch_add(1);
      if (!warned) {
        LogWarn(kLog, what,
                {{"host", host_}, {"port", std::to_string(port_)}, {"error", mosquitto_strerror(rc)}});
        warned = true;
      }
      if (WaitStop(delay)) return true;
      delay = std::min(delay * 2, max_delay_);
      return false;
    };
    while (!Stopping()) {
      if (!socket_ok) {
        int rc = first ? mosquitto_connect_async(m_, host_.c_str(), port_, keepalive_s_)
                       : mosquitto_reconnect_async(m_);
        first = false;
        if (rc != MOSQ_ERR_SUCCESS) {
          if (back_off("broker not reachable; retrying with backoff", rc)) break;
          continue;
        }
        socket_ok = true;
      }
      int rc = mosquitto_loop(m_, 100, 1);
      if (after_loop_) after_loop_();
      if (connected_->load()) {
        delay = min_delay_;
        warned = false;
      }
      if (rc != MOSQ_ERR_SUCCESS) {
        socket_ok = false;
        if (back_off("connection to the broker failed; retrying with backoff", rc)) break;
      }
    }
    // Clean shutdown: send DISCONNECT and let the loop write it.
    if (socket_ok && mosquitto_disconnect(m_) == MOSQ_ERR_SUCCESS) {
      for (int i = 0; i < 20 && mosquitto_loop(m_, 50, 1) == MOSQ_ERR_SUCCESS; ++i) {
      }
    }
    if (after_loop_) after_loop_();
  }

  mosquitto* const m_;
  const std::string host_;
  const int port_, keepalive_s_;
  const absl::Duration min_delay_, max_delay_;
  const std::atomic<bool>* connected_;
  std::atomic<uint64_t>* failures_;         // may be null
  const std::function<void()> after_loop_;  // may be empty
  absl::Mutex mu_;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;
};

}  // namespace internal

namespace {}  // namespace

bool IsKnownEnergyUnit(std::string_view unit) {
  for (const char* u : kUnits) {
    if (unit == u) return true;
  }
  return false;
}

absl::StatusOr<MeterTopic> ParseMeterTopic(std::string_view topic_root_view,
                                           std::string_view topic_view) {
  const std::string topic_root(topic_root_view), topic(topic_view);
  auto bad = [&](const std::string& why) {
    return absl::InvalidArgumentError(absl::StrCat("topic \"", topic, "\": ", why));
  };
  if (!absl::StartsWith(topic, topic_root) || topic.size() <= topic_root.size() ||
      topic[topic_root.size()] != '/') {
    return bad(absl::StrCat("not under the topic root \"", topic_root, "/\""));
  }
  std::string_view rest = std::string_view(topic).substr(topic_root.size() + 1);
  size_t a = rest.find('/');
  if (a == std::string_view::npos)
    return bad("expected <city>/<district>/<meter_id> after the root");
  size_t b = rest.find('/', a + 1);
  if (b == std::string_view::npos)
    return bad("expected <city>/<district>/<meter_id> after the root");
  MeterTopic t{std::string(rest.substr(0, a)), std::string(rest.substr(a + 1, b - a - 1)),
               std::string(rest.substr(b + 1))};
  if (t.city.empty()) return bad("empty city");
  if (t.district.empty()) return bad("empty district");
  if (t.meter_id.empty()) return bad("empty meter id");
  if (t.meter_id.size() > kMaxMeterId) {
    return bad(
        absl::StrCat("meter id is ", t.meter_id.size(), " characters, more than ", kMaxMeterId));
  }
  for (char c : t.meter_id) {
    if (!IsMeterIdChar(c)) {
      return bad(
          absl::StrCat("meter id has character '", std::string(1, c), "' outside [A-Za-z0-9._/-]"));
    }
  }
  return t;
}

absl::StatusOr<v1::MeterReading> ParseMeterPayload(std::string_view json,
                                                   std::string_view meter_id) {
  nlohmann::json j = nlohmann::json::parse(json.begin(), json.end(), nullptr,
                                           /*allow_exceptions=*/false);
  if (j.is_discarded()) return absl::InvalidArgumentError("payload: not valid JSON");
  if (!j.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat("payload: expected a JSON object, got ", JsonTypeName(j)));
  }
  static const std::set<std::string, std::less<>> kKeys = {"kind",  "energy", "value",    "unit",
                                                           "start", "end",    "estimated"};
  for (const auto& [key, unused] : j.items()) {
    if (!kKeys.contains(key)) {
      return InvalidField(
          key, "unknown field (allowed: kind, energy, value, unit, start, end, estimated)");
    }
  }
  v1::MeterReading r;
  r.set_meter_id(std::string(meter_id));

  auto required_string = [&](const char* key) -> absl::StatusOr<std::string> {
    auto it = j.find(key);
    if (it == j.end()) return InvalidField(key, "required");
    if (!it->is_string())
      return InvalidField(key, absl::StrCat("expected a string, got ", JsonTypeName(*it)));
    return it->get<std::string>();
  };

  CITYOS_ASSIGN_OR_RETURN(std::string kind, required_string("kind"));
  if (kind == "interval") {
    r.set_reading_kind(v1::READING_KIND_INTERVAL);
  } else if (kind == "cumulative") {
    r.set_reading_kind(v1::READING_KIND_CUMULATIVE);
  } else if (kind == "delta") {
    r.set_reading_kind(v1::READING_KIND_DELTA);
  } else {
    return InvalidField("kind",
                        absl::StrCat("\"", kind, "\" is not interval, cumulative or delta"));
  }

  CITYOS_ASSIGN_OR_RETURN(std::string energy, required_string("energy"));
  for (const EnergyName& e : kEnergies) {
    if (energy == e.name) r.set_energy_kind(e.kind);
  }
  if (r.energy_kind() == v1::ENERGY_KIND_UNSPECIFIED) {
    return InvalidField("energy", absl::StrCat("\"", energy,
                                               "\" is not one of electricity, natural_gas, steam, "
                                               "diesel, gasoline, coal, lpg, fuel_oil, heat"));
  }

  auto value = j.find("value");
  if (value == j.end()) return InvalidField("value", "required");
  if (!value->is_number()) {
    return InvalidField("value", absl::StrCat("expected a number, got ", JsonTypeName(*value)));
  }
  double v = value->get<double>();
  if (!std::isfinite(v)) return InvalidField("value", "not a finite number");
  r.set_value(v);

  CITYOS_ASSIGN_OR_RETURN(std::string unit, required_string("unit"));
  if (!IsKnownEnergyUnit(unit)) {
    return InvalidField("unit", absl::StrCat("\"", unit, "\" is not a unit of any energy kind (",
                                             absl::StrJoin(kUnits, ", "), ")"));
  }
  r.set_unit(unit);

  auto start = j.find("start");
  if (r.reading_kind() == v1::READING_KIND_CUMULATIVE) {
    if (start != j.end()) {
      return InvalidField("start", "not allowed for kind cumulative (end is the register time)");
    }
  } else {
    if (start == j.end()) return InvalidField("start", absl::StrCat("required for kind ", kind));
    CITYOS_ASSIGN_OR_RETURN(absl::Time t, ParseRfc3339(*start, "start"));
    TimestampToProto(t, r.mutable_interval_start());
  }
  auto end = j.find("end");
  if (end == j.end()) return InvalidField("end", "required");
  CITYOS_ASSIGN_OR_RETURN(absl::Time end_time, ParseRfc3339(*end, "end"));
  TimestampToProto(end_time, r.mutable_interval_end());

  if (auto est = j.find("estimated"); est != j.end()) {
    if (!est->is_boolean()) {
      return InvalidField("estimated",
                          absl::StrCat("expected true or false, got ", JsonTypeName(*est)));
    }
    r.set_estimated(est->get<bool>());
  }
  return r;
}

std::string FormatMeterPayload(const v1::MeterReading& r) {
  nlohmann::json j;
  switch (r.reading_kind()) {
    case v1::READING_KIND_CUMULATIVE:
      j["kind"] = "cumulative";
      break;
    case v1::READING_KIND_DELTA:
      j["kind"] = "delta";
      break;
    default:
      j["kind"] = "interval";
      break;
  }
  j["energy"] = "";
  for (const EnergyName& e : kEnergies) {
    if (e.kind == r.energy_kind()) j["energy"] = e.name;
  }
  j["value"] = r.value();
  j["unit"] = r.unit();
  auto rfc = [](const google::protobuf::Timestamp& ts) {
    return absl::FormatTime(absl::RFC3339_full, ToAbslTime(ts), absl::UTCTimeZone());
  };
  if (r.reading_kind() != v1::READING_KIND_CUMULATIVE) j["start"] = rfc(r.interval_start());
  j["end"] = rfc(r.interval_end());
  j["estimated"] = r.estimated();
  return j.dump();
}

absl::StatusOr<MeterMessageConverter> MeterMessageConverter::Create(
    std::string topic_root, std::string org, std::vector<MqttDistrict> districts,
    std::string source_prefix) {
  if (org.empty()) return absl::InvalidArgumentError("mqtt.org: required (owner of the readings)");
  if (topic_root.empty() || topic_root.back() == '/' ||
      topic_root.find_first_of("+#") != std::string::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("mqtt.topic_root: \"", topic_root,
                     "\" must be non-empty, without wildcards or a trailing /"));
  }
  if (districts.empty()) return absl::InvalidArgumentError("mqtt.districts: at least one required");
  MeterMessageConverter c;
  c.topic_root_ = std::move(topic_root);
  c.org_ = std::move(org);
  c.source_prefix_ = std::move(source_prefix);
  for (size_t i = 0; i < districts.size(); ++i) {
    const MqttDistrict& d = districts[i];
    if (!IsToken(d.city) || !IsToken(d.district)) {
      return absl::InvalidArgumentError(
          absl::StrCat("mqtt.districts[", i, "]: city \"", d.city, "\" and district \"", d.district,
                       "\" must be lower-case subject tokens [a-z0-9_-]"));
    }
    if (d.region.empty()) {
      return absl::InvalidArgumentError(absl::StrCat("mqtt.districts[", i, "].region: required"));
    }
    if (!c.regions_.emplace(std::make_pair(d.city, d.district), d.region).second) {
      return absl::InvalidArgumentError(
          absl::StrCat("mqtt.districts[", i, "]: duplicate ", d.city, "/", d.district));
    }
  }
  return c;
}

absl::StatusOr<event::v1::Event> MeterMessageConverter::Convert(std::string_view topic,
                                                                std::string_view payload,
                                                                Clock* clock) const {
  CITYOS_ASSIGN_OR_RETURN(MeterTopic t, ParseMeterTopic(topic_root_, topic));
  auto region = regions_.find(std::make_pair(t.city, t.district));
  if (region == regions_.end()) {
    return absl::InvalidArgumentError(absl::StrCat("topic \"", std::string(topic), "\": district ",
                                                   t.city, "/", t.district, " is not configured"));
  }
  CITYOS_ASSIGN_OR_RETURN(v1::MeterReading reading, ParseMeterPayload(payload, t.meter_id));
  std::string source = source_prefix_.empty()
                           ? absl::StrCat("//", t.city, ".city/meters/", t.meter_id)
                           : absl::StrCat(source_prefix_, "/", t.meter_id);
  return EventBuilder(clock)
      .Source(source)
      .Subject(absl::StrCat("carbon.meter.reading.", t.city, ".", t.district))
      .Time(ToAbslTime(reading.interval_end()))
      .Classification(event::v1::CLASSIFICATION_INTERNAL)
      .Owner(org_)
      .Region(region->second)
      .ProtoData(reading)
      .Build();
}

// ---- MqttBridge -------------------------------------------------------------

MqttBridge::MqttBridge(MqttBridgeOptions options, MeterMessageConverter converter, Sink sink,
                       RejectHook on_reject)
    : options_(std::move(options)),
      converter_(std::move(converter)),
      sink_(std::move(sink)),
      on_reject_(std::move(on_reject)) {}

absl::StatusOr<std::unique_ptr<MqttBridge>> MqttBridge::Start(MqttBridgeOptions options, Sink sink,
                                                              RejectHook on_reject) {
  if (!sink) return absl::InvalidArgumentError("mqtt bridge: a sink is required");
  ClientSetup setup{options.host,      options.port,     options.client_id,     options.topic_root,
                    options.qos,       options.username, options.password_file, options.ca_file,
                    options.cert_file, options.key_file};
  CITYOS_RETURN_IF_ERROR(CheckClientOptions(setup));
  if (options.max_batch < 1) return absl::InvalidArgumentError("mqtt.max_batch: at least 1");
  if (options.reconnect_delay < absl::Seconds(1) ||
      options.reconnect_delay_max < options.reconnect_delay) {
    return absl::InvalidArgumentError(
        "mqtt.reconnect_delay: at least 1s, and reconnect_delay_max at least reconnect_delay");
  }
  CITYOS_ASSIGN_OR_RETURN(MeterMessageConverter converter,
                          MeterMessageConverter::Create(options.topic_root, options.org,
                                                        options.districts, options.source_prefix));
  InitMosquittoOnce();
  std::unique_ptr<MqttBridge> bridge(new MqttBridge(std::move(options), std::move(converter),
                                                    std::move(sink), std::move(on_reject)));
  const MqttBridgeOptions& o = bridge->options_;
  // Persistent session: clean_session = false, so the broker queues QoS 1
  // messages for this client id while it is away.
  bridge->mosq_ = mosquitto_new(o.client_id.c_str(), /*clean_session=*/false, bridge.get());
  if (bridge->mosq_ == nullptr) {
    return absl::ResourceExhaustedError("mqtt bridge: mosquitto_new failed");
  }
  mosquitto_threaded_set(bridge->mosq_, true);
  mosquitto_connect_callback_set(bridge->mosq_, &MqttBridge::OnConnect);
  mosquitto_disconnect_callback_set(bridge->mosq_, &MqttBridge::OnDisconnect);
  mosquitto_subscribe_callback_set(bridge->mosq_, &MqttBridge::OnSubscribe);
  mosquitto_message_callback_set(bridge->mosq_, &MqttBridge::OnMessage);
  CITYOS_RETURN_IF_ERROR(ConfigureClient(bridge->mosq_, setup));
  bridge->net_ = std::make_unique<internal::MqttNetworkThread>(
      bridge->mosq_, o.host, o.port, WholeSeconds(o.keepalive),
      absl::Seconds(WholeSeconds(o.reconnect_delay)),
      absl::Seconds(WholeSeconds(o.reconnect_delay_max)), &bridge->connected_,
      &bridge->connect_failures_, [b = bridge.get()] { b->Flush(); });
  bridge->net_->Start();
  LogInfo(kLog, "mqtt bridge started",
          {{"host", o.host},
           {"port", std::to_string(o.port)},
           {"client_id", o.client_id},
           {"topics", o.topic_root + "/#"},
           {"tls", o.ca_file.empty() ? "off" : "on"}});
  return bridge;
}

MqttBridge::~MqttBridge() {
  Stop();
  net_.reset();
  if (mosq_ != nullptr) mosquitto_destroy(mosq_);
}

void MqttBridge::Stop() {
  if (net_ == nullptr) return;
  absl::MutexLock lock(&stop_mu_);
  if (stopped_) return;
  stopped_ = true;
  net_->Stop();
  connected_.store(false);
  LogInfo(kLog, "mqtt bridge stopped",
          {{"received", std::to_string(received_.load())},
           {"published", std::to_string(published_.load())},
           {"rejected", std::to_string(rejected_.load())}});
}

MqttBridge::Stats MqttBridge::stats() const {
  Stats s;
  s.received = received_.load();
  s.published = published_.load();
  s.rejected = rejected_.load();
  s.sink_failures = sink_failures_.load();
  s.connects = connects_.load();
  s.subscriptions = subscriptions_.load();
  s.refused = refused_.load();
  s.connect_failures = connect_failures_.load();
  s.connected = connected_.load();
  return s;
}

void MqttBridge::OnConnect(mosquitto* m, void* obj, int rc) {
  auto* self = static_cast<MqttBridge*>(obj);
  if (rc != 0) {
    self->refused_.fetch_add(1);
    LogWarn(kLog, "broker refused the connection",
            {{"host", self->options_.host}, {"reason", mosquitto_connack_string(rc)}});
    return;
  }
  self->connected_.store(true);
  self->connects_.fetch_add(1);
  // Subscribe on every connect: a restarted broker may have lost the session.
  std::string pattern = self->options_.topic_root + "/#";
  int s = mosquitto_subscribe(m, nullptr, pattern.c_str(), self->options_.qos);
  LogInfo(kLog, "connected to the broker",
          {{"host", self->options_.host},
           {"port", std::to_string(self->options_.port)},
           {"subscribe", s == MOSQ_ERR_SUCCESS ? pattern : mosquitto_strerror(s)}});
}

void MqttBridge::OnDisconnect(mosquitto*, void* obj, int rc) {
  auto* self = static_cast<MqttBridge*>(obj);
  const bool was_connected = self->connected_.exchange(false);
  if (rc != 0 && was_connected) {
    LogWarn(kLog, "connection to the broker lost; reconnecting",
            {{"host", self->options_.host}, {"error", mosquitto_strerror(rc)}});
  }
}

void MqttBridge::OnSubscribe(mosquitto*, void* obj, int, int, const int*) {
  static_cast<MqttBridge*>(obj)->subscriptions_.fetch_add(1);
}

void MqttBridge::OnMessage(mosquitto*, void* obj, const mosquitto_message* msg) {
  auto* self = static_cast<MqttBridge*>(obj);
  std::string_view payload(static_cast<const char*>(msg->payload),
                           msg->payload == nullptr ? 0 : static_cast<size_t>(msg->payloadlen));
  self->HandleMessage(msg->topic == nullptr ? "" : msg->topic, payload);
}

void MqttBridge::HandleMessage(std::string_view topic, std::string_view payload) {
  received_.fetch_add(1);
  absl::StatusOr<event::v1::Event> event = converter_.Convert(topic, payload, options_.clock);
  if (!event.ok()) {
    rejected_.fetch_add(1);
    LogWarn(kLog, "meter message rejected",
            {{"topic", std::string(topic)}, {"error", std::string(event.status().message())}});
    if (on_reject_) on_reject_(topic, event.status());
    return;
  }
  if (pending_.empty()) pending_first_topic_ = std::string(topic);
  pending_.push_back(*std::move(event));
  if (pending_.size() >= options_.max_batch) Flush();
}

void MqttBridge::Flush() {
  if (pending_.empty()) return;
  const size_t n = pending_.size();
  absl::Status s = sink_(std::exchange(pending_, {}));
  if (s.ok()) {
    published_.fetch_add(n);
  } else {
    sink_failures_.fetch_add(n);
    LogWarn(kLog, "meter readings not published",
            {{"readings", std::to_string(n)},
             {"first_topic", pending_first_topic_},
             {"error", s.ToString()}});
  }
}

// ---- MqttMeterPublisher -------------------------------------------------------

absl::StatusOr<std::unique_ptr<MqttMeterPublisher>> MqttMeterPublisher::Start(Options options) {
  ClientSetup setup{options.host,      options.port,     options.client_id,     options.topic_root,
                    options.qos,       options.username, options.password_file, options.ca_file,
                    options.cert_file, options.key_file};
  CITYOS_RETURN_IF_ERROR(CheckClientOptions(setup));
  InitMosquittoOnce();
  std::unique_ptr<MqttMeterPublisher> p(new MqttMeterPublisher(std::move(options)));
  p->mosq_ = mosquitto_new(p->options_.client_id.c_str(), /*clean_session=*/true, p.get());
  if (p->mosq_ == nullptr)
    return absl::ResourceExhaustedError("mqtt publisher: mosquitto_new failed");
  mosquitto_threaded_set(p->mosq_, true);
  mosquitto_connect_callback_set(p->mosq_, [](mosquitto*, void* obj, int rc) {
    static_cast<MqttMeterPublisher*>(obj)->connected_.store(rc == 0);
  });
  mosquitto_disconnect_callback_set(p->mosq_, [](mosquitto*, void* obj, int) {
    static_cast<MqttMeterPublisher*>(obj)->connected_.store(false);
  });
  mosquitto_publish_callback_set(p->mosq_, [](mosquitto*, void* obj, int) {
    static_cast<MqttMeterPublisher*>(obj)->outstanding_.fetch_sub(1);
  });
  CITYOS_RETURN_IF_ERROR(ConfigureClient(p->mosq_, setup));
  p->net_ = std::make_unique<internal::MqttNetworkThread>(
      p->mosq_, p->options_.host, p->options_.port, WholeSeconds(p->options_.keepalive),
      absl::Seconds(1), absl::Seconds(10), &p->connected_, nullptr);
  p->net_->Start();
  return p;
}

MqttMeterPublisher::MqttMeterPublisher(Options options) : options_(std::move(options)) {}

MqttMeterPublisher::~MqttMeterPublisher() {
  Stop();
  net_.reset();
  if (mosq_ != nullptr) mosquitto_destroy(mosq_);
}

absl::Status MqttMeterPublisher::Publish(std::string_view city, std::string_view district,
                                         const v1::MeterReading& reading) {
  std::string topic = absl::StrCat(options_.topic_root, "/", std::string(city), "/",
                                   std::string(district), "/", reading.meter_id());
  CITYOS_RETURN_IF_ERROR(ParseMeterTopic(options_.topic_root, topic).status());
  std::string payload = FormatMeterPayload(reading);
  if (!connected_.load())
    return absl::UnavailableError("mqtt publisher: not connected to the broker");
  outstanding_.fetch_add(1);
  int rc = mosquitto_publish(mosq_, nullptr, topic.c_str(), static_cast<int>(payload.size()),
                             payload.data(), options_.qos, /*retain=*/false);
  if (rc != MOSQ_ERR_SUCCESS) outstanding_.fetch_sub(1);
  if (rc == MOSQ_ERR_NO_CONN || rc == MOSQ_ERR_CONN_LOST) {
    return absl::UnavailableError(absl::StrCat("mqtt publisher: ", mosquitto_strerror(rc)));
  }
  if (rc != MOSQ_ERR_SUCCESS) {
    return absl::InternalError(
        absl::StrCat("mqtt publisher: ", topic, ": ", mosquitto_strerror(rc)));
  }
  return absl::OkStatus();
}

void MqttMeterPublisher::Stop() {
  if (net_ == nullptr) return;
  absl::MutexLock lock(&stop_mu_);
  if (stopped_) return;
  stopped_ = true;
  // Give queued messages up to 5 s to be acknowledged (QoS 1/2) or written.
  absl::Time deadline = absl::Now() + absl::Seconds(5);
  while (outstanding_.load() > 0 && connected_.load() && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(10));
  }
  net_->Stop();
  connected_.store(false);
}

}  // namespace cityos::carbon
