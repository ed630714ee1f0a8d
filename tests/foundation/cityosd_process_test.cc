// cityosd as a process: start, health, reflection, SIGTERM, bad config.
#include <gmock/gmock.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <signal.h>

#include <set>

#include "cityos/grpc_util.h"
#include "grpc/reflection/v1alpha/reflection.grpc.pb.h"
#include "testutil.h"

namespace cityos {
namespace {

using ::testing::HasSubstr;
using ::testing::IsSupersetOf;

std::string WriteConfig(const testing::TempDir& dir, const std::string& listen,
                        const std::string& extra = "") {
  std::string path = dir.File("cityosd.yaml");
  testing::WriteFile(path, "node:\n  name: proc-test\n  listen: " + listen + "\n  insecure: true\n  data_dir: " +
                               dir.File("data") + "\n  log_format: json\n" + extra);
  return path;
}

std::set<std::string> ReflectedServices(const std::string& address) {
  auto channel = grpc::CreateChannel(address, grpc::InsecureChannelCredentials());
  auto stub = grpc::reflection::v1alpha::ServerReflection::NewStub(channel);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  auto stream = stub->ServerReflectionInfo(&ctx);
  grpc::reflection::v1alpha::ServerReflectionRequest req;
  req.set_list_services("*");
  EXPECT_TRUE(stream->Write(req));
  stream->WritesDone();
  grpc::reflection::v1alpha::ServerReflectionResponse resp;
  std::set<std::string> names;
  while (stream->Read(&resp)) {
    for (const auto& s : resp.list_services_response().service()) names.insert(s.name());
  }
  EXPECT_TRUE(stream->Finish().ok());
  return names;
}

TEST(CityosdProcess, ServesHealthAndReflectionThenStopsOnSigterm) {
  testing::TempDir dir;
  auto proc = testing::Subprocess::Start({CITYOSD_PATH, "--config", WriteConfig(dir, "127.0.0.1:0")});
  ASSERT_TRUE(proc.ok()) << proc.status();
  auto line = (*proc)->WaitForLine("listening on", absl::Seconds(30));
  ASSERT_TRUE(line.ok()) << line.status();
  std::string address = line->substr(line->rfind(' ') + 1);

  auto channel = grpc::CreateChannel(address, grpc::InsecureChannelCredentials());
  auto health = CheckHealth(*channel, "", absl::Seconds(10));
  ASSERT_TRUE(health.ok()) << health.status();
  EXPECT_EQ(*health, HealthStatus::kServing);
  EXPECT_THAT(ReflectedServices(address),
              IsSupersetOf({"grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"}));

  (*proc)->Signal(SIGTERM);
  auto code = (*proc)->Wait(absl::Seconds(30));
  ASSERT_TRUE(code.ok()) << code.status();
  EXPECT_EQ(*code, 0) << (*proc)->stderr_text();
  EXPECT_THAT((*proc)->stderr_text(), HasSubstr("\"msg\":\"stopped\""));
}

TEST(CityosdProcess, SigintAlsoStopsCleanly) {
  testing::TempDir dir;
  auto proc = testing::Subprocess::Start({CITYOSD_PATH, "--config", WriteConfig(dir, "127.0.0.1:0")});
  ASSERT_TRUE(proc.ok());
  ASSERT_TRUE((*proc)->WaitForLine("listening on", absl::Seconds(30)).ok());
  (*proc)->Signal(SIGINT);
  EXPECT_EQ(*(*proc)->Wait(absl::Seconds(30)), 0);
}

// The port is held by the test: if cityosd tried to bind before checking its
// config, it would fail with "cannot listen"; it must fail on the config.
TEST(CityosdProcess, BadConfigExitsNonZeroBeforeBinding) {
  testing::TempDir dir;
  testing::HeldPort held;
  std::string listen = "127.0.0.1:" + std::to_string(held.port());
  struct Bad {
    std::string extra;
    std::string expected;
  };
  for (const Bad& bad : std::vector<Bad>{
           {"plugins:\n  - name: no-such-plugin\n", "unknown plug-in \"no-such-plugin\""},
           {"bogus: 1\n", "bogus: unknown key"},
           {"  log_level: loud\n", "node.log_level: log level \"loud\""}}) {
    std::string path = WriteConfig(dir, listen, bad.extra);
    auto proc = testing::Subprocess::Start({CITYOSD_PATH, "--config", path});
    ASSERT_TRUE(proc.ok());
    auto code = (*proc)->Wait(absl::Seconds(30));
    ASSERT_TRUE(code.ok());
    EXPECT_EQ(*code, 2) << bad.extra;
    EXPECT_THAT((*proc)->stderr_text(), HasSubstr(bad.expected));
    EXPECT_THAT((*proc)->stderr_text(), ::testing::Not(HasSubstr("cannot listen")));
  }
}

TEST(CityosdProcess, MissingConfigFileAndCheckMode) {
  testing::TempDir dir;
  auto missing = testing::Subprocess::Start({CITYOSD_PATH, "--config", dir.File("none.yaml")});
  ASSERT_TRUE(missing.ok());
  EXPECT_EQ(*(*missing)->Wait(absl::Seconds(30)), 2);
  EXPECT_THAT((*missing)->stderr_text(), HasSubstr("cannot be read"));

  auto check = testing::Subprocess::Start(
      {CITYOSD_PATH, "--config", WriteConfig(dir, "127.0.0.1:0"), "--check"});
  ASSERT_TRUE(check.ok());
  EXPECT_EQ(*(*check)->Wait(absl::Seconds(30)), 0);
  EXPECT_THAT((*check)->stdout_text(), HasSubstr("is valid"));
}

TEST(CityosdProcess, AddressInUseIsARuntimeError) {
  testing::TempDir dir;
  testing::HeldPort held;
  auto proc = testing::Subprocess::Start(
      {CITYOSD_PATH, "--config", WriteConfig(dir, "127.0.0.1:" + std::to_string(held.port()))});
  ASSERT_TRUE(proc.ok());
  EXPECT_EQ(*(*proc)->Wait(absl::Seconds(30)), 1);
  EXPECT_THAT((*proc)->stderr_text(), HasSubstr("cannot listen on"));
}

}  // namespace
}  // namespace cityos
