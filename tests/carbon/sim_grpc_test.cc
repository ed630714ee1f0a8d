// The city-sim binary's grpc mode against a real node (cityosd's Node with
// the bus and exchange plug-ins, `tls: auto`): it publishes one
// organisation's events over mTLS with that organisation's certificate, the
// node's policy decides, and the events arrive on the bus unchanged with the
// certificate's principal as publisher.
#include <gtest/gtest.h>

#include <set>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "cityos/bus.h"
#include "service_fixture.h"
#include "sim.h"

namespace cityos::exchange_test {
namespace {

class CitySimGrpcTest : public ExchangeNodeTest {};

TEST_F(CitySimGrpcTest, PublishesOneOrgsEventsWithItsCertificate) {
  ASSERT_NO_FATAL_FAILURE(StartNode());
  ASSERT_NO_FATAL_FAILURE(LoadPolicy("sim.yaml", R"(rules:
  - id: steel-meters
    effect: allow
    actions: [publish]
    principal: {orgs: [qz-steel]}
    resource: {subjects: ["carbon.meter.reading.quzhou.>"]}
)"));
  Hooks& hooks = TheHooks();
  auto sub = hooks.bus->Subscribe(hooks.Node(), {.subject_pattern = "carbon.>"});
  ASSERT_TRUE(sub.ok()) << sub.status();
  Client& steel = NewClient("qz-steel", "meters");

  // An hour of the simulated city, an hour ago (whole minutes: RFC 3339 below).
  const absl::Time from =
      absl::FromUnixSeconds(absl::ToUnixSeconds(absl::Now() - absl::Hours(2)) / 60 * 60);
  const std::string from_text = absl::FormatTime(absl::RFC3339_full, from, absl::UTCTimeZone());
  const std::vector<std::string> common = {CITY_SIM_BIN,
                                           "--mode",
                                           "grpc",
                                           "--seed",
                                           "4",
                                           "--from",
                                           from_text,
                                           "--address",
                                           address_,
                                           "--ca",
                                           ca_dir_ + "/ca.pem",
                                           "--cert",
                                           steel.cert,
                                           "--key",
                                           steel.key,
                                           "--server-id",
                                           server_id_};
  std::vector<std::string> argv = common;
  argv.insert(argv.end(), {"--org", "qz-steel", "--duration", "1h"});
  testing::CommandResult r = testing::RunCommand(argv, absl::Seconds(60));
  ASSERT_EQ(r.code, 0) << r.err;

  citysim::SimConfig c = citysim::DefaultQuzhouConfig();
  c.seed = 4;
  auto sim = citysim::CitySim::Create(c);
  ASSERT_TRUE(sim.ok());
  std::vector<std::string> want;
  for (const citysim::SimEvent& e : (*sim)->Generate(from, from + absl::Hours(1))) {
    if (e.org == "qz-steel") want.push_back(e.event.id());
  }
  ASSERT_GT(want.size(), 10u);
  std::vector<std::string> got;
  absl::Time deadline = absl::Now() + absl::Seconds(20);
  while (got.size() < want.size() && absl::Now() < deadline) {
    std::vector<Delivery> batch;
    ASSERT_TRUE((*sub)->Next(1000, absl::Milliseconds(200), &batch).ok());
    for (const Delivery& d : batch) {
      const event::v1::Event& e = d.message->event();
      EXPECT_EQ(e.publisher(), steel.spiffe_id);
      EXPECT_EQ(e.owner(), "qz-steel");
      EXPECT_EQ(e.type(), "cityos.carbon.v1.MeterReading");
      got.push_back(e.id());
    }
  }
  EXPECT_EQ(got, want);  // one publisher, in order

  // Events of an org the policy does not let this certificate publish for
  // (value added, at the next month's end): the node refuses, the binary fails.
  argv = common;
  argv.insert(argv.end(), {"--org", "quzhou-stats", "--duration", "800h"});
  r = testing::RunCommand(argv, absl::Seconds(60));
  EXPECT_EQ(r.code, 1) << r.out << r.err;
  EXPECT_NE(r.err.find("publish"), std::string::npos) << r.err;
}

}  // namespace
}  // namespace cityos::exchange_test
