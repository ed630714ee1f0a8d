// Test helper for e2e_mesh_test: a "transit vendor" process that joins the
// mesh over mTLS with its own certificate. It serves grpc.health.v1 (service
// cityos.test.v1.TripFeed SERVING) on a loopback port, registers that
// endpoint with the node's registry through RegistrationKeeper, then
// publishes events `mobility.trip.<n>` (text data "<n>") for n in
// [first, first+count) one by one, retrying each until the bus stores it.
// Stdout lines the test waits for:
//   vendor: serving on <addr>
//   vendor: registered lease=<id>
//   published <n> seq <sequence>
//   vendor: done <last n>
// Then it keeps heartbeating until SIGTERM / SIGINT (deregisters) or SIGKILL.
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <signal.h>

#include <CLI/CLI.hpp>

#include "mesh_client_flags.h"
#include <cstdio>
#include <optional>
#include <string>
#include <thread>

#include "absl/time/clock.h"
#include "cityos/bus/v1/bus.grpc.pb.h"
#include "cityos/event.h"
#include "cityos/grpc_util.h"
#include "cityos/observability.h"
#include "cityos/tls.h"
#include "registration_client.h"

int main(int argc, char** argv) {
  sigset_t stop;
  sigemptyset(&stop);
  sigaddset(&stop, SIGINT);
  sigaddset(&stop, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop, nullptr);

  CLI::App app{"mesh_vendor: test vendor for the mesh e2e test"};
  cityos::testing::MeshClientFlags flags;
  std::string org = "transit", name = "trips", ttl_text = "2s";
  int64_t first = 1, count = 10;
  flags.AddTo(app);
  app.add_option("--org", org);
  app.add_option("--name", name);
  app.add_option("--first", first);
  app.add_option("--count", count);
  app.add_option("--ttl", ttl_text);
  CLI11_PARSE(app, argc, argv);
  absl::Duration ttl;
  if (!absl::ParseDuration(ttl_text, &ttl)) return 2;

  // Its own (tiny) server: health only.
  auto server_creds = cityos::MakeServerCredentials(flags.tls);
  if (!server_creds.ok()) {
    std::fprintf(stderr, "vendor: %s\n",
                 std::string(server_creds.status().message()).c_str());
    return 2;
  }
  grpc::EnableDefaultHealthCheckService(true);
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort("127.0.0.1:0", *server_creds, &port);
  // gRPC refuses to build a server without a sync service (the default health
  // service is added at Start); an unimplemented stub serves that purpose.
  cityos::bus::v1::BusService::Service placeholder;
  builder.RegisterService(&placeholder);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || port == 0) {
    std::fprintf(stderr, "vendor: cannot serve\n");
    return 1;
  }
  const std::string feed = "cityos.test.v1.TripFeed";
  server->GetHealthCheckService()->SetServingStatus(feed, true);
  std::string own = "127.0.0.1:" + std::to_string(port);
  std::printf("vendor: serving on %s\n", own.c_str());
  std::fflush(stdout);

  auto creds = cityos::MakeChannelCredentials(flags.tls, flags.pin());
  if (!creds.ok()) {
    std::fprintf(stderr, "vendor: %s\n",
                 std::string(creds.status().message()).c_str());
    return 2;
  }
  auto channel = cityos::CreateObservedChannel(flags.endpoint, *creds);

  cityos::RegistrationKeeperOptions options;
  options.registration.set_name(name);
  options.registration.set_org(org);
  options.registration.set_domain("mobility");
  options.registration.set_endpoint(own);
  options.registration.add_proto_services(feed);
  options.registration.add_published_subjects("mobility.trip.>");
  options.registration.set_version("1.0.0");
  options.ttl = ttl;
  auto keeper = cityos::RegistrationKeeper::Start(channel, options);
  if (!keeper.ok()) {
    std::fprintf(stderr, "vendor: %s\n",
                 std::string(keeper.status().message()).c_str());
    return 2;
  }
  if (absl::Status s = (*keeper)->WaitUntilRegistered(absl::Seconds(60));
      !s.ok()) {
    std::printf("vendor: register failed: %s\n",
                std::string(s.message()).c_str());
    std::fflush(stdout);
    return 3;
  }
  std::printf("vendor: registered lease=%s\n",
              (*keeper)->status().lease_id.c_str());
  std::fflush(stdout);

  auto bus = cityos::bus::v1::BusService::NewStub(channel);
  for (int64_t n = first; n < first + count; ++n) {
    auto event = cityos::EventBuilder()
                     .Source("//transit.e2e/vendor/" + name)
                     .Subject("mobility.trip." + std::to_string(n))
                     .Type("cityos.test.v1.Trip")
                     .Classification(cityos::event::v1::CLASSIFICATION_INTERNAL)
                     .Owner(org)
                     .TextData("text/plain", std::to_string(n))
                     .Build();
    if (!event.ok()) {
      std::fprintf(stderr, "vendor: %s\n",
                   std::string(event.status().message()).c_str());
      return 1;
    }
    while (true) {
      grpc::ClientContext ctx;
      ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
      cityos::bus::v1::PublishRequest req;
      *req.add_events() = *event;
      cityos::bus::v1::PublishResponse resp;
      grpc::Status s = bus->Publish(&ctx, req, &resp);
      if (s.ok() && resp.results_size() == 1) {
        std::printf(
            "published %lld seq %llu\n", static_cast<long long>(n),
            static_cast<unsigned long long>(resp.results(0).sequence()));
        std::fflush(stdout);
        break;
      }
      std::fprintf(stderr, "vendor: publish %lld failed: %s\n",
                   static_cast<long long>(n), s.error_message().c_str());
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
    }
  }
  std::printf("vendor: done %lld\n", static_cast<long long>(first + count - 1));
  std::fflush(stdout);

  int sig = 0;
  sigwait(&stop, &sig);
  (void)(*keeper)->Stop();
  server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1));
  return 0;
}
