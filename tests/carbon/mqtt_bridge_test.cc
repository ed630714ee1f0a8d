// Tests of the smart-meter MQTT bridge (services/carbon/mqtt_bridge.h): the
// payload and topic validation as tables, and end to end against a real
// mosquitto broker started by the test, with mosquitto_pub as the client
// (valid readings, rejected ones, a broker restart, the publisher side).
#include "mqtt_bridge.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "cityos/clock.h"
#include "cityos/event.h"
#include "cityos/proto_time.h"
#include "testutil.h"

namespace cityos::carbon {
namespace {

using ::cityos::testing::TempDir;

std::vector<MqttDistrict> Districts() {
  return {{"quzhou", "kecheng", "CN-ZJ-QZ-KC"}, {"quzhou", "qujiang", "CN-ZJ-QZ-QJ"}};
}

absl::Time T(const char* rfc3339) {
  absl::Time t;
  std::string err;
  EXPECT_TRUE(absl::ParseTime(absl::RFC3339_full, rfc3339, &t, &err)) << err;
  return t;
}

constexpr char kGood[] =
    R"({"kind":"interval","energy":"electricity","value":12.5,"unit":"kWh",)"
    R"("start":"2026-11-29T08:00:00+08:00","end":"2026-11-29T08:15:00+08:00","estimated":false})";

TEST(MeterMessageConverter, ValidIntervalReadingBecomesAnEvent) {
  auto c = MeterMessageConverter::Create("cityos/meters", "quzhou-grid", Districts());
  ASSERT_TRUE(c.ok()) << c.status();
  SimulatedClock clock(T("2026-11-29T08:16:00+08:00"));
  auto e = c->Convert("cityos/meters/quzhou/kecheng/qz-steel/site-1/m-17", kGood, &clock);
  ASSERT_TRUE(e.ok()) << e.status();
  EXPECT_EQ(e->subject(), "carbon.meter.reading.quzhou.kecheng");
  EXPECT_EQ(e->type(), "cityos.carbon.v1.MeterReading");
  EXPECT_EQ(e->domain(), "carbon");
  EXPECT_EQ(e->owner(), "quzhou-grid");
  EXPECT_EQ(e->region(), "CN-ZJ-QZ-KC");
  EXPECT_EQ(e->classification(), event::v1::CLASSIFICATION_INTERNAL);
  EXPECT_EQ(e->source(), "//quzhou.city/meters/qz-steel/site-1/m-17");
  EXPECT_EQ(ToAbslTime(e->time()), T("2026-11-29T08:15:00+08:00"));
  EXPECT_TRUE(e->data_subject().empty());
  EXPECT_FALSE(e->id().empty());
  EXPECT_TRUE(ValidateEvent(*e).ok());
  v1::MeterReading r;
  ASSERT_TRUE(e->proto_data().UnpackTo(&r));
  EXPECT_EQ(r.meter_id(), "qz-steel/site-1/m-17");
  EXPECT_EQ(r.energy_kind(), v1::ENERGY_KIND_ELECTRICITY);
  EXPECT_EQ(r.reading_kind(), v1::READING_KIND_INTERVAL);
  EXPECT_EQ(r.value(), 12.5);
  EXPECT_EQ(r.unit(), "kWh");
  EXPECT_EQ(ToAbslTime(r.interval_start()), T("2026-11-29T00:00:00Z"));
  EXPECT_EQ(ToAbslTime(r.interval_end()), T("2026-11-29T00:15:00Z"));
  EXPECT_FALSE(r.estimated());
}

TEST(MeterMessageConverter, CumulativeDeltaAndSourcePrefix) {
  auto c = MeterMessageConverter::Create("city/a/meters", "qz-chem", Districts(), "//qz-chem/gw-1");
  ASSERT_TRUE(c.ok()) << c.status();
  auto e = c->Convert("city/a/meters/quzhou/qujiang/gas-1",
                      R"({"kind":"cumulative","energy":"natural_gas","value":1000,"unit":"m3",)"
                      R"("end":"2026-11-29T00:00:00Z","estimated":true})");
  ASSERT_TRUE(e.ok()) << e.status();
  EXPECT_EQ(e->subject(), "carbon.meter.reading.quzhou.qujiang");
  EXPECT_EQ(e->region(), "CN-ZJ-QZ-QJ");
  EXPECT_EQ(e->source(), "//qz-chem/gw-1/gas-1");
  v1::MeterReading r;
  ASSERT_TRUE(e->proto_data().UnpackTo(&r));
  EXPECT_EQ(r.reading_kind(), v1::READING_KIND_CUMULATIVE);
  EXPECT_EQ(r.energy_kind(), v1::ENERGY_KIND_NATURAL_GAS);
  EXPECT_EQ(r.value(), 1000);
  EXPECT_FALSE(r.has_interval_start());
  EXPECT_TRUE(r.estimated());

  // A negative delta passes the bridge: it is the ledger's NEGATIVE_VALUE.
  auto d = c->Convert("city/a/meters/quzhou/qujiang/steam-1",
                      R"({"kind":"delta","energy":"steam","value":-3,"unit":"t",)"
                      R"("start":"2026-11-29T00:00:00Z","end":"2026-11-29T01:00:00Z"})");
  ASSERT_TRUE(d.ok()) << d.status();
  ASSERT_TRUE(d->proto_data().UnpackTo(&r));
  EXPECT_EQ(r.reading_kind(), v1::READING_KIND_DELTA);
  EXPECT_EQ(r.value(), -3);
}

struct BadRow {
  const char* payload;
  const char* expected;  // substring of the error
};

TEST(MeterMessageConverter, RejectsBadPayloadsNamingTheField) {
  auto c = MeterMessageConverter::Create("cityos/meters", "quzhou-grid", Districts());
  ASSERT_TRUE(c.ok());
  const std::string s = R"("start":"2026-11-29T00:00:00Z",)";
  const std::string e = R"("end":"2026-11-29T00:15:00Z")";
  const std::string base = R"("kind":"interval","energy":"electricity","value":1,"unit":"kWh",)";
  const std::vector<std::pair<std::string, std::string>> rows = {
      {"not json", "payload: not valid JSON"},
      {"[1,2]", "payload: expected a JSON object, got array"},
      {"{" + base + s + e + R"(,"kwh":3})", "payload.kwh: unknown field"},
      {"{" + base + s + e + R"(,"password":"x"})", "payload.password: unknown field"},
      {R"({"energy":"electricity","value":1,"unit":"kWh",)" + s + e + "}",
       "payload.kind: required"},
      {R"({"kind":"hourly","energy":"electricity","value":1,"unit":"kWh",)" + s + e + "}",
       "payload.kind: \"hourly\" is not interval"},
      {R"({"kind":"interval","value":1,"unit":"kWh",)" + s + e + "}", "payload.energy: required"},
      {R"({"kind":"interval","energy":"nuclear","value":1,"unit":"kWh",)" + s + e + "}",
       "payload.energy: \"nuclear\""},
      {R"({"kind":"interval","energy":7,"value":1,"unit":"kWh",)" + s + e + "}",
       "payload.energy: expected a string, got number"},
      {R"({"kind":"interval","energy":"electricity","unit":"kWh",)" + s + e + "}",
       "payload.value: required"},
      {R"({"kind":"interval","energy":"electricity","value":"12.5","unit":"kWh",)" + s + e + "}",
       "payload.value: expected a number, got string"},
      {R"({"kind":"interval","energy":"electricity","value":null,"unit":"kWh",)" + s + e + "}",
       "payload.value: expected a number, got null"},
      {R"({"kind":"interval","energy":"electricity","value":1,)" + s + e + "}",
       "payload.unit: required"},
      {R"({"kind":"interval","energy":"electricity","value":12500,"unit":"Wh",)" + s + e + "}",
       "payload.unit: \"Wh\" is not a unit of any energy kind"},
      {R"({"kind":"interval","energy":"electricity","value":1,"unit":"kwh",)" + s + e + "}",
       "payload.unit: \"kwh\""},
      {"{" + base + e + "}", "payload.start: required for kind interval"},
      {"{" + base + R"("start":"yesterday",)" + e + "}",
       "payload.start: \"yesterday\" is not an RFC 3339"},
      {"{" + base + R"("start":"2026-11-29 00:00:00",)" + e + "}", "payload.start:"},
      {"{" + base + s + R"("end":1764374400})",
       "payload.end: expected an RFC 3339 time string, got number"},
      {"{" + base + R"("start":"2026-11-29T00:00:00Z"})", "payload.end: required"},
      {R"({"kind":"cumulative","energy":"electricity","value":1,"unit":"kWh",)" + s + e + "}",
       "payload.start: not allowed for kind cumulative"},
      {"{" + base + s + e + R"(,"estimated":"no"})", "payload.estimated: expected true or false"},
  };
  for (const auto& [payload, expected] : rows) {
    auto ev = c->Convert("cityos/meters/quzhou/kecheng/m-1", payload);
    ASSERT_FALSE(ev.ok()) << payload;
    EXPECT_EQ(ev.status().code(), absl::StatusCode::kInvalidArgument) << payload;
    EXPECT_NE(ev.status().message().find(expected), std::string_view::npos)
        << payload << " -> " << ev.status().message() << " (expected " << expected << ")";
  }
}

TEST(MeterMessageConverter, ValueMustBeFinite) {
  // JSON has no NaN or Infinity; an overflowing literal is the one way in.
  auto r =
      ParseMeterPayload(R"({"kind":"interval","energy":"electricity","value":1e999,"unit":"kWh",)"
                        R"("start":"2026-11-29T00:00:00Z","end":"2026-11-29T00:15:00Z"})",
                        "m-1");
  ASSERT_FALSE(r.ok());
  // nlohmann's parser either refuses the literal or yields infinity.
  EXPECT_TRUE(r.status().message().find("payload.value: not a finite number") !=
                  std::string_view::npos ||
              r.status().message().find("payload: not valid JSON") != std::string_view::npos)
      << r.status();
}

TEST(MeterMessageConverter, RejectsBadTopicsAndUnknownDistricts) {
  auto c = MeterMessageConverter::Create("cityos/meters", "quzhou-grid", Districts());
  ASSERT_TRUE(c.ok());
  const std::vector<std::pair<std::string, std::string>> rows = {
      {"other/quzhou/kecheng/m-1", "not under the topic root"},
      {"cityos/metersX/quzhou/kecheng/m-1", "not under the topic root"},
      {"cityos/meters/quzhou/kecheng", "expected <city>/<district>/<meter_id>"},
      {"cityos/meters/quzhou//m-1", "empty district"},
      {"cityos/meters/quzhou/kecheng/", "empty meter id"},
      {"cityos/meters/quzhou/kecheng/m 1", "character ' '"},
      {"cityos/meters/quzhou/longyou/m-1", "district quzhou/longyou is not configured"},
      {"cityos/meters/hangzhou/kecheng/m-1", "district hangzhou/kecheng is not configured"},
      {"cityos/meters/quzhou/kecheng/" + std::string(129, 'm'), "more than 128"},
  };
  for (const auto& [topic, expected] : rows) {
    auto ev = c->Convert(topic, kGood);
    ASSERT_FALSE(ev.ok()) << topic;
    EXPECT_NE(ev.status().message().find(expected), std::string_view::npos)
        << topic << " -> " << ev.status().message();
    EXPECT_NE(ev.status().message().find("topic"), std::string_view::npos);
  }
}

TEST(MeterMessageConverter, CreateValidatesItsTable) {
  EXPECT_FALSE(MeterMessageConverter::Create("cityos/meters", "", Districts()).ok());
  EXPECT_FALSE(MeterMessageConverter::Create("cityos/#", "o", Districts()).ok());
  EXPECT_FALSE(MeterMessageConverter::Create("cityos/meters", "o", {}).ok());
  auto dup = MeterMessageConverter::Create(
      "cityos/meters", "o", {{"quzhou", "kecheng", "A"}, {"quzhou", "kecheng", "B"}});
  ASSERT_FALSE(dup.ok());
  EXPECT_NE(dup.status().message().find("duplicate quzhou/kecheng"), std::string_view::npos);
  auto upper = MeterMessageConverter::Create("cityos/meters", "o", {{"Quzhou", "kecheng", "A"}});
  ASSERT_FALSE(upper.ok());
  EXPECT_NE(upper.status().message().find("mqtt.districts[0]"), std::string_view::npos);
}

TEST(MeterPayload, FormatParsesBackToTheSameReading) {
  v1::MeterReading r;
  r.set_meter_id("qz-cement/kiln-1/coal");
  r.set_energy_kind(v1::ENERGY_KIND_COAL);
  r.set_reading_kind(v1::READING_KIND_INTERVAL);
  r.set_value(4321.125);
  r.set_unit("kg");
  TimestampToProto(T("2026-11-29T00:00:00Z"), r.mutable_interval_start());
  TimestampToProto(T("2026-11-29T00:15:00Z"), r.mutable_interval_end());
  auto back = ParseMeterPayload(FormatMeterPayload(r), r.meter_id());
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->SerializeAsString(), r.SerializeAsString());
  r.set_reading_kind(v1::READING_KIND_CUMULATIVE);
  r.clear_interval_start();
  r.set_estimated(true);
  back = ParseMeterPayload(FormatMeterPayload(r), r.meter_id());
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->SerializeAsString(), r.SerializeAsString());
}

TEST(MqttBridgeOptions, RefusesBadOptionsAndLaxPasswordFiles) {
  TempDir dir;
  auto sink = [](std::vector<event::v1::Event>) { return absl::OkStatus(); };
  MqttBridgeOptions o;
  o.client_id = "bridge-opts";
  o.org = "quzhou-grid";
  o.districts = Districts();
  o.port = 1;  // nothing listens; the bridge keeps retrying in the background

  MqttBridgeOptions no_id = o;
  no_id.client_id.clear();
  auto s = MqttBridge::Start(no_id, sink);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.status().message().find("mqtt.client_id"), std::string_view::npos);

  MqttBridgeOptions bad_qos = o;
  bad_qos.qos = 3;
  s = MqttBridge::Start(bad_qos, sink);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.status().message().find("mqtt.qos"), std::string_view::npos);

  MqttBridgeOptions half_tls = o;
  half_tls.ca_file = dir.File("ca.pem");
  half_tls.cert_file = dir.File("c.pem");
  s = MqttBridge::Start(half_tls, sink);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.status().message().find("key_file"), std::string_view::npos);

  MqttBridgeOptions missing_ca = o;
  missing_ca.ca_file = dir.File("nope.pem");
  s = MqttBridge::Start(missing_ca, sink);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(s.status().message().find("nope.pem"), std::string_view::npos);

  const std::string pw = dir.File("password");
  testing::WriteFile(pw, "s3cret-pw\n");
  ASSERT_EQ(::chmod(pw.c_str(), 0644), 0);
  MqttBridgeOptions lax = o;
  lax.username = "bridge";
  lax.password_file = pw;
  s = MqttBridge::Start(lax, sink);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(s.status().message().find("0644"), std::string_view::npos) << s.status();
  EXPECT_NE(s.status().message().find(pw), std::string_view::npos);
  EXPECT_EQ(s.status().message().find("s3cret"), std::string_view::npos);

  MqttBridgeOptions no_user = lax;
  no_user.username.clear();
  EXPECT_FALSE(MqttBridge::Start(no_user, sink).ok());

  ASSERT_EQ(::chmod(pw.c_str(), 0600), 0);
  s = MqttBridge::Start(lax, sink);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_FALSE((*s)->stats().connected);
  (*s)->Stop();
  (*s)->Stop();  // idempotent
}

// ---- against a real broker ---------------------------------------------------

std::string FindBinary(const std::string& name) {
  std::vector<std::string> dirs;
  if (const char* path = std::getenv("PATH")) dirs = absl::StrSplit(path, ':', absl::SkipEmpty());
  for (const char* d : {"/usr/sbin", "/usr/local/sbin", "/usr/bin", "/sbin"}) dirs.push_back(d);
  for (const std::string& d : dirs) {
    std::string p = d + "/" + name;
    if (::access(p.c_str(), X_OK) == 0) return p;
  }
  return "";
}

bool PortAccepts(int port) {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return false;
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bool ok = ::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0;
  ::close(fd);
  return ok;
}

bool WaitUntil(const std::function<bool()>& done, absl::Duration timeout = absl::Seconds(20)) {
  absl::Time deadline = absl::Now() + timeout;
  while (absl::Now() < deadline) {
    if (done()) return true;
    absl::SleepFor(absl::Milliseconds(20));
  }
  return done();
}

// A mosquitto broker on a loopback port, child of the test.
class Broker {
 public:
  Broker(const TempDir& dir, int port, std::string extra_config = "allow_anonymous true\n")
      : dir_(dir), port_(port), extra_(std::move(extra_config)) {}
  ~Broker() { Stop(); }

  ::testing::AssertionResult Start() {
    const std::string bin = FindBinary("mosquitto");
    if (bin.empty()) return ::testing::AssertionFailure() << "mosquitto not found on PATH";
    const std::string conf = dir_.File(absl::StrCat("mosquitto-", port_, ".conf"));
    // As root, mosquitto would switch to user `mosquitto`, which cannot read
    // the test's private temp dir; `user root` keeps it as it was started.
    testing::WriteFile(conf, absl::StrCat("listener ", port_, " 127.0.0.1\n", extra_,
                                          ::geteuid() == 0 ? "user root\n" : "",
                                          "persistence false\n"
                                          "log_dest stderr\n"));
    auto p = testing::Subprocess::Start({bin, "-c", conf});
    if (!p.ok()) return ::testing::AssertionFailure() << p.status();
    proc_ = *std::move(p);
    if (!WaitUntil([&] { return PortAccepts(port_); })) {
      return ::testing::AssertionFailure()
             << "mosquitto did not listen on " << port_ << ": " << proc_->stderr_text();
    }
    return ::testing::AssertionSuccess();
  }

  void Stop() {
    if (proc_ == nullptr) return;
    proc_->Signal(SIGTERM);
    (void)proc_->Wait(absl::Seconds(20));
    proc_.reset();  // SIGKILLs if still running
  }

  int port() const { return port_; }

 private:
  const TempDir& dir_;
  int port_;
  std::string extra_;
  std::unique_ptr<testing::Subprocess> proc_;
};

int FreePort() {
  testing::HeldPort held;
  int port = held.port();
  held.Release();
  return port;
}

::testing::AssertionResult Pub(int port, const std::string& topic, const std::string& payload) {
  const std::string bin = FindBinary("mosquitto_pub");
  if (bin.empty()) return ::testing::AssertionFailure() << "mosquitto_pub not found on PATH";
  testing::CommandResult r = testing::RunCommand(
      {bin, "-h", "127.0.0.1", "-p", std::to_string(port), "-q", "1", "-t", topic, "-m", payload},
      absl::Seconds(20));
  if (r.code != 0) {
    return ::testing::AssertionFailure() << "mosquitto_pub exited " << r.code << ": " << r.err;
  }
  return ::testing::AssertionSuccess();
}

// Collects what the bridge hands on and rejects.
struct Collector {
  absl::Mutex mu;
  std::vector<event::v1::Event> events ABSL_GUARDED_BY(mu);
  std::vector<std::pair<std::string, std::string>> rejected ABSL_GUARDED_BY(mu);

  MqttBridge::Sink Sink() {
    return [this](std::vector<event::v1::Event> batch) {
      absl::MutexLock lock(&mu);
      for (auto& e : batch) events.push_back(std::move(e));
      return absl::OkStatus();
    };
  }
  MqttBridge::RejectHook Hook() {
    return [this](std::string_view topic, const absl::Status& error) {
      absl::MutexLock lock(&mu);
      rejected.emplace_back(std::string(topic), std::string(error.message()));
    };
  }
  size_t event_count() {
    absl::MutexLock lock(&mu);
    return events.size();
  }
  size_t rejected_count() {
    absl::MutexLock lock(&mu);
    return rejected.size();
  }
};

MqttBridgeOptions BridgeOptions(int port, const std::string& client_id) {
  MqttBridgeOptions o;
  o.port = port;
  o.client_id = client_id;
  o.org = "quzhou-grid";
  o.districts = Districts();
  return o;
}

// Starts a bridge and waits until it has subscribed, so that what is
// published from then on reaches it.
absl::StatusOr<std::unique_ptr<MqttBridge>> StartSubscribed(MqttBridgeOptions o,
                                                            MqttBridge::Sink sink,
                                                            MqttBridge::RejectHook hook = nullptr) {
  auto bridge = MqttBridge::Start(std::move(o), std::move(sink), std::move(hook));
  if (!bridge.ok()) return bridge.status();
  if (!WaitUntil([&] { return (*bridge)->stats().subscriptions >= 1; })) {
    return absl::DeadlineExceededError("the bridge did not subscribe");
  }
  return bridge;
}

TEST(MqttBridgeBroker, ValidReadingsFlowAndBadOnesAreRejected) {
  TempDir dir;
  Broker broker(dir, FreePort());
  ASSERT_TRUE(broker.Start());
  Collector got;
  auto bridge =
      StartSubscribed(BridgeOptions(broker.port(), "bridge-e2e"), got.Sink(), got.Hook());
  ASSERT_TRUE(bridge.ok()) << bridge.status();

  ASSERT_TRUE(
      Pub(broker.port(), "cityos/meters/quzhou/kecheng/qz-steel/site-1/line-1/m-elec", kGood));
  const std::string s = R"("start":"2026-11-29T00:00:00Z","end":"2026-11-29T00:15:00Z")";
  // Bad rows: each names its field.
  const std::vector<std::pair<std::string, std::string>> bad = {
      {R"({"kind":"interval","energy":"electricity","value":12500,"unit":"Wh",)" + s + "}",
       "payload.unit: \"Wh\""},
      {R"({"kind":"interval","energy":"electricity","value":"1","unit":"kWh",)" + s + "}",
       "payload.value"},
      {R"({"kind":"interval","energy":"electricity","value":1,"unit":"kWh","meter":"x",)" + s + "}",
       "payload.meter: unknown field"},
      {R"({"kind":"interval","energy":"electricity","value":1,"unit":"kWh","end":"2026-11-29T00:15:00Z"})",
       "payload.start: required"},
      {R"({"kind":"interval","energy":"uranium","value":1,"unit":"kWh",)" + s + "}",
       "payload.energy"},
  };
  for (const auto& [payload, unused] : bad) {
    ASSERT_TRUE(Pub(broker.port(), "cityos/meters/quzhou/qujiang/qz-chem/m-1", payload));
  }
  ASSERT_TRUE(
      Pub(broker.port(), "cityos/meters/quzhou/longyou/m-9", kGood));  // district not configured
  ASSERT_TRUE(Pub(broker.port(), "cityos/meters/quzhou/qujiang/qz-chem/m-2",
                  R"({"kind":"delta","energy":"steam","value":7.25,"unit":"GJ",)" + s + "}"));

  ASSERT_TRUE(WaitUntil([&] { return (*bridge)->stats().received >= 8; }))
      << (*bridge)->stats().received;
  MqttBridge::Stats st = (*bridge)->stats();
  EXPECT_EQ(st.received, 8u);
  EXPECT_EQ(st.published, 2u);
  EXPECT_EQ(st.rejected, 6u);
  EXPECT_EQ(st.sink_failures, 0u);
  EXPECT_TRUE(st.connected);

  absl::MutexLock lock(&got.mu);
  ASSERT_EQ(got.events.size(), 2u);
  // QoS 1 from one publisher on one topic each; order across topics is the
  // broker's, so find them by meter.
  v1::MeterReading elec, steam;
  for (const auto& e : got.events) {
    v1::MeterReading r;
    ASSERT_TRUE(e.proto_data().UnpackTo(&r));
    (r.meter_id() == "qz-steel/site-1/line-1/m-elec" ? elec : steam) = r;
    EXPECT_TRUE(ValidateEvent(e).ok());
    EXPECT_EQ(e.owner(), "quzhou-grid");
  }
  EXPECT_EQ(elec.meter_id(), "qz-steel/site-1/line-1/m-elec");
  EXPECT_EQ(elec.value(), 12.5);
  EXPECT_EQ(elec.unit(), "kWh");
  EXPECT_EQ(elec.energy_kind(), v1::ENERGY_KIND_ELECTRICITY);
  EXPECT_EQ(ToAbslTime(elec.interval_start()), T("2026-11-29T00:00:00Z"));
  EXPECT_EQ(ToAbslTime(elec.interval_end()), T("2026-11-29T00:15:00Z"));
  EXPECT_EQ(steam.meter_id(), "qz-chem/m-2");
  EXPECT_EQ(steam.reading_kind(), v1::READING_KIND_DELTA);
  EXPECT_EQ(steam.value(), 7.25);
  EXPECT_EQ(steam.unit(), "GJ");
  for (const auto& e : got.events) {
    if (e.source() == "//quzhou.city/meters/qz-chem/m-2") {
      EXPECT_EQ(e.subject(), "carbon.meter.reading.quzhou.qujiang");
      EXPECT_EQ(e.region(), "CN-ZJ-QZ-QJ");
    } else {
      EXPECT_EQ(e.subject(), "carbon.meter.reading.quzhou.kecheng");
      EXPECT_EQ(e.region(), "CN-ZJ-QZ-KC");
    }
  }
  ASSERT_EQ(got.rejected.size(), 6u);
  for (const auto& [payload, expected] : bad) {
    bool found = false;
    for (const auto& [topic, error] : got.rejected) {
      if (error.find(expected) != std::string::npos) found = true;
    }
    EXPECT_TRUE(found) << "no rejection naming " << expected;
  }
  bool district = false;
  for (const auto& [topic, error] : got.rejected) {
    if (topic == "cityos/meters/quzhou/longyou/m-9" &&
        error.find("district quzhou/longyou is not configured") != std::string::npos) {
      district = true;
    }
  }
  EXPECT_TRUE(district);
}

TEST(MqttBridgeBroker, StartsBeforeTheBrokerAndSurvivesItsRestart) {
  TempDir dir;
  const int port = FreePort();
  Collector got;
  MqttBridgeOptions o = BridgeOptions(port, "bridge-restart");
  auto bridge = MqttBridge::Start(o, got.Sink(), got.Hook());
  ASSERT_TRUE(bridge.ok()) << bridge.status();  // no broker yet: not an error
  EXPECT_FALSE((*bridge)->stats().connected);

  {
    Broker first(dir, port);
    ASSERT_TRUE(first.Start());
    ASSERT_TRUE(WaitUntil([&] { return (*bridge)->stats().subscriptions >= 1; }))
        << "bridge never subscribed";
    ASSERT_TRUE(Pub(port, "cityos/meters/quzhou/kecheng/m-1", kGood));
    ASSERT_TRUE(WaitUntil([&] { return got.event_count() >= 1; }));
    first.Stop();
  }
  ASSERT_TRUE(WaitUntil([&] { return !(*bridge)->stats().connected; }));

  Broker second(dir, port);
  ASSERT_TRUE(second.Start());
  // The new broker has no session: the bridge resubscribes on reconnect.
  ASSERT_TRUE(WaitUntil([&] { return (*bridge)->stats().subscriptions >= 2; }, absl::Seconds(30)))
      << "bridge did not resubscribe; connects=" << (*bridge)->stats().connects;
  EXPECT_GE((*bridge)->stats().connects, 2u);
  ASSERT_TRUE(Pub(port, "cityos/meters/quzhou/kecheng/m-2", kGood));
  ASSERT_TRUE(WaitUntil([&] { return got.event_count() >= 2; }));
  (*bridge)->Stop();
  EXPECT_EQ((*bridge)->stats().published, 2u);
  EXPECT_EQ((*bridge)->stats().rejected, 0u);
}

TEST(MqttBridgeBroker, PublisherReadingsArriveUnchanged) {
  TempDir dir;
  Broker broker(dir, FreePort());
  ASSERT_TRUE(broker.Start());
  Collector got;
  auto bridge =
      StartSubscribed(BridgeOptions(broker.port(), "bridge-pub"), got.Sink(), got.Hook());
  ASSERT_TRUE(bridge.ok()) << bridge.status();

  MqttMeterPublisher::Options po;
  po.port = broker.port();
  po.client_id = "gateway-1";
  auto pub = MqttMeterPublisher::Start(po);
  ASSERT_TRUE(pub.ok()) << pub.status();
  ASSERT_TRUE(WaitUntil([&] { return (*pub)->connected(); }));
  std::vector<v1::MeterReading> sent;
  for (int i = 0; i < 20; ++i) {
    v1::MeterReading r;
    r.set_meter_id(absl::StrCat("qz-dc/hall-", i % 2, "/m-", i));
    r.set_energy_kind(v1::ENERGY_KIND_ELECTRICITY);
    r.set_reading_kind(v1::READING_KIND_INTERVAL);
    r.set_value(100.0 + i * 0.25);
    r.set_unit("kWh");
    TimestampToProto(T("2026-11-29T00:00:00Z") + absl::Minutes(15 * i), r.mutable_interval_start());
    TimestampToProto(T("2026-11-29T00:15:00Z") + absl::Minutes(15 * i), r.mutable_interval_end());
    ASSERT_TRUE((*pub)->Publish("quzhou", i % 2 ? "kecheng" : "qujiang", r).ok());
    sent.push_back(r);
  }
  (*pub)->Stop();
  ASSERT_TRUE(WaitUntil([&] { return got.event_count() >= sent.size(); })) << got.event_count();
  absl::MutexLock lock(&got.mu);
  ASSERT_EQ(got.events.size(), sent.size());
  std::map<std::string, std::string> by_meter;  // ordering is only per topic in MQTT
  for (const auto& e : got.events) {
    v1::MeterReading r;
    ASSERT_TRUE(e.proto_data().UnpackTo(&r));
    by_meter[r.meter_id()] = r.SerializeAsString();
  }
  for (const v1::MeterReading& r : sent) {
    EXPECT_EQ(by_meter[r.meter_id()], r.SerializeAsString()) << r.meter_id();
  }
  EXPECT_TRUE(got.rejected.empty());
}

TEST(MqttBridgeBroker, SinkFailuresAreCountedNotPublished) {
  TempDir dir;
  Broker broker(dir, FreePort());
  ASSERT_TRUE(broker.Start());
  std::atomic<int> calls{0};
  auto bridge = StartSubscribed(BridgeOptions(broker.port(), "bridge-sinkfail"),
                                [&](std::vector<event::v1::Event> events) {
                                  calls.fetch_add(1);
                                  return absl::PermissionDeniedError("bus says no");
                                });
  ASSERT_TRUE(bridge.ok()) << bridge.status();
  ASSERT_TRUE(Pub(broker.port(), "cityos/meters/quzhou/kecheng/m-1", kGood));
  ASSERT_TRUE(Pub(broker.port(), "cityos/meters/quzhou/kecheng/m-2", kGood));
  ASSERT_TRUE(WaitUntil([&] { return (*bridge)->stats().sink_failures >= 2; }));
  (*bridge)->Stop();
  MqttBridge::Stats st = (*bridge)->stats();
  EXPECT_EQ(st.received, 2u);
  EXPECT_EQ(st.sink_failures, 2u);
  EXPECT_EQ(st.published, 0u);
  EXPECT_EQ(st.rejected, 0u);
  EXPECT_GE(calls.load(), 1);
}

TEST(MqttBridgeBroker, AuthenticatesWithUsernameAndPasswordFile) {
  TempDir dir;
  const std::string passwd = FindBinary("mosquitto_passwd");
  ASSERT_FALSE(passwd.empty()) << "mosquitto_passwd not on PATH";
  const std::string users = dir.File("users");
  testing::CommandResult made =
      testing::RunCommand({passwd, "-b", "-c", users, "bridge", "m3ter-secret"}, absl::Seconds(20));
  ASSERT_EQ(made.code, 0) << made.err;
  Broker broker(dir, FreePort(),
                absl::StrCat("allow_anonymous false\npassword_file ", users, "\n"));
  ASSERT_TRUE(broker.Start());

  const std::string pw = dir.File("bridge.password");
  testing::WriteFile(pw, "m3ter-secret\n");
  ASSERT_EQ(::chmod(pw.c_str(), 0600), 0);
  Collector got;
  MqttBridgeOptions o = BridgeOptions(broker.port(), "bridge-auth");
  o.username = "bridge";
  o.password_file = pw;
  auto bridge = StartSubscribed(o, got.Sink(), got.Hook());
  ASSERT_TRUE(bridge.ok()) << bridge.status();

  // A wrong password is refused by the broker: never connected.
  const std::string bad = dir.File("bad.password");
  testing::WriteFile(bad, "wrong\n");
  ASSERT_EQ(::chmod(bad.c_str(), 0600), 0);
  MqttBridgeOptions wrong = o;
  wrong.client_id = "bridge-auth-wrong";
  wrong.password_file = bad;
  auto refused = MqttBridge::Start(wrong, got.Sink(), got.Hook());
  ASSERT_TRUE(refused.ok()) << refused.status();
  ASSERT_TRUE(WaitUntil([&] { return (*refused)->stats().refused >= 1; }));

  // mosquitto_pub as the same user (the broker refuses anonymous clients).
  const std::string pub = FindBinary("mosquitto_pub");
  testing::CommandResult r = testing::RunCommand(
      {pub, "-h", "127.0.0.1", "-p", std::to_string(broker.port()), "-q", "1", "-u", "bridge", "-P",
       "m3ter-secret", "-t", "cityos/meters/quzhou/kecheng/m-1", "-m", kGood},
      absl::Seconds(20));
  ASSERT_EQ(r.code, 0) << r.err;
  ASSERT_TRUE(WaitUntil([&] { return got.event_count() >= 1; }));
  EXPECT_EQ((*refused)->stats().connects, 0u);
  EXPECT_EQ((*refused)->stats().received, 0u);
  (*refused)->Stop();
  (*bridge)->Stop();
}

// Makes a CA, a broker certificate for 127.0.0.1 and a client certificate
// with the openssl CLI.
::testing::AssertionResult MakePki(const TempDir& dir) {
  const std::string openssl = FindBinary("openssl");
  if (openssl.empty()) return ::testing::AssertionFailure() << "openssl not on PATH";
  testing::WriteFile(dir.File("server.ext"), "subjectAltName=IP:127.0.0.1\n");
  testing::WriteFile(dir.File("client.ext"), "extendedKeyUsage=clientAuth\n");
  const std::vector<std::vector<std::string>> steps = {
      {openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", dir.File("ca.key"),
       "-out", dir.File("ca.pem"), "-days", "2", "-subj", "/CN=test-mqtt-ca"},
      {openssl, "req", "-newkey", "rsa:2048", "-nodes", "-keyout", dir.File("server.key"), "-out",
       dir.File("server.csr"), "-subj", "/CN=127.0.0.1"},
      {openssl, "x509", "-req", "-in", dir.File("server.csr"), "-CA", dir.File("ca.pem"), "-CAkey",
       dir.File("ca.key"), "-CAcreateserial", "-out", dir.File("server.pem"), "-days", "2",
       "-extfile", dir.File("server.ext")},
      {openssl, "req", "-newkey", "rsa:2048", "-nodes", "-keyout", dir.File("client.key"), "-out",
       dir.File("client.csr"), "-subj", "/CN=carbon-bridge"},
      {openssl, "x509", "-req", "-in", dir.File("client.csr"), "-CA", dir.File("ca.pem"), "-CAkey",
       dir.File("ca.key"), "-CAcreateserial", "-out", dir.File("client.pem"), "-days", "2",
       "-extfile", dir.File("client.ext")},
  };
  for (const auto& argv : steps) {
    testing::CommandResult r = testing::RunCommand(argv, absl::Seconds(60));
    if (r.code != 0) return ::testing::AssertionFailure() << argv[1] << ": " << r.err;
  }
  return ::testing::AssertionSuccess();
}

TEST(MqttBridgeBroker, ConnectsOverTlsWithAClientCertificate) {
  TempDir dir;
  ASSERT_TRUE(MakePki(dir));
  Broker broker(dir, FreePort(),
                absl::StrCat("allow_anonymous true\n", "cafile ", dir.File("ca.pem"), "\n",
                             "certfile ", dir.File("server.pem"), "\n", "keyfile ",
                             dir.File("server.key"), "\n", "require_certificate true\n"));
  ASSERT_TRUE(broker.Start());
  Collector got;
  MqttBridgeOptions o = BridgeOptions(broker.port(), "bridge-tls");
  o.ca_file = dir.File("ca.pem");
  o.cert_file = dir.File("client.pem");
  o.key_file = dir.File("client.key");
  auto bridge = StartSubscribed(o, got.Sink(), got.Hook());
  ASSERT_TRUE(bridge.ok()) << bridge.status();

  MqttMeterPublisher::Options po;
  po.port = broker.port();
  po.client_id = "gateway-tls";
  po.ca_file = o.ca_file;
  po.cert_file = o.cert_file;
  po.key_file = o.key_file;
  auto pub = MqttMeterPublisher::Start(po);
  ASSERT_TRUE(pub.ok()) << pub.status();
  ASSERT_TRUE(WaitUntil([&] { return (*pub)->connected(); }));
  auto reading = ParseMeterPayload(kGood, "qz-steel/site-1/m-1");
  ASSERT_TRUE(reading.ok());
  ASSERT_TRUE((*pub)->Publish("quzhou", "kecheng", *reading).ok());
  (*pub)->Stop();
  ASSERT_TRUE(WaitUntil([&] { return got.event_count() >= 1; }));

  // Without a client certificate the broker refuses the TLS handshake.
  MqttBridgeOptions no_cert = o;
  no_cert.client_id = "bridge-tls-nocert";
  no_cert.cert_file.clear();
  no_cert.key_file.clear();
  auto refused = MqttBridge::Start(no_cert, got.Sink(), got.Hook());
  ASSERT_TRUE(refused.ok()) << refused.status();
  ASSERT_TRUE(WaitUntil([&] { return (*refused)->stats().connect_failures >= 1; }));
  (*refused)->Stop();
  EXPECT_EQ((*refused)->stats().connects, 0u);
  (*bridge)->Stop();
  absl::MutexLock lock(&got.mu);
  ASSERT_EQ(got.events.size(), 1u);
  v1::MeterReading r;
  ASSERT_TRUE(got.events[0].proto_data().UnpackTo(&r));
  EXPECT_EQ(r.SerializeAsString(), reading->SerializeAsString());
}

}  // namespace
}  // namespace cityos::carbon
