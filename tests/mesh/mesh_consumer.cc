// Test helper for e2e_mesh_test: a consumer process (org `city`) reading a
// durable consumer of a stream over mTLS. Creates the consumer if missing
// (start: earliest), subscribes, and for every delivery acknowledges it and
// then prints
//   acked <text data> seq <sequence>
// Re-subscribes after errors (e.g. while the node restarts). Runs until
// killed. First line: "consumer: subscribed".
#include <CLI/CLI.hpp>

#include "mesh_client_flags.h"
#include <cstdio>
#include <string>
#include <thread>

#include "absl/time/clock.h"
#include "cityos/bus/v1/bus.grpc.pb.h"
#include "cityos/observability.h"
#include "cityos/tls.h"

namespace bus = cityos::bus::v1;

int main(int argc, char** argv) {
  CLI::App app{"mesh_consumer: test consumer for the mesh e2e test"};
  cityos::testing::MeshClientFlags flags;
  std::string stream = "mobility", consumer = "dash";
  flags.AddTo(app);
  app.add_option("--stream", stream);
  app.add_option("--consumer", consumer);
  CLI11_PARSE(app, argc, argv);

  auto creds = cityos::MakeChannelCredentials(flags.tls, flags.pin());
  if (!creds.ok()) {
    std::fprintf(stderr, "consumer: %s\n",
                 std::string(creds.status().message()).c_str());
    return 2;
  }
  auto stub =
      bus::BusService::NewStub(cityos::CreateObservedChannel(flags.endpoint, *creds));
  auto pause = [] {
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  };

  while (true) {
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
    bus::CreateConsumerRequest req;
    req.mutable_config()->set_stream(stream);
    req.mutable_config()->set_name(consumer);
    req.mutable_config()->mutable_start()->set_kind(
        bus::StartPosition::KIND_EARLIEST);
    req.mutable_config()->mutable_ack_wait()->set_seconds(2);
    bus::CreateConsumerResponse resp;
    grpc::Status s = stub->CreateConsumer(&ctx, req, &resp);
    if (s.ok() || s.error_code() == grpc::StatusCode::ALREADY_EXISTS) break;
    std::fprintf(stderr, "consumer: create: %s\n", s.error_message().c_str());
    pause();
  }

  bool announced = false;
  while (true) {
    grpc::ClientContext ctx;
    bus::SubscribeRequest req;
    req.set_stream(stream);
    req.set_consumer(consumer);
    auto reader = stub->Subscribe(&ctx, req);
    if (!announced) {
      std::printf("consumer: subscribed\n");
      std::fflush(stdout);
      announced = true;
    }
    bus::SubscribeResponse resp;
    while (reader->Read(&resp)) {
      for (const bus::Delivery& d : resp.deliveries()) {
        grpc::ClientContext actx;
        actx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
        bus::AckRequest ack;
        ack.set_stream(stream);
        ack.set_consumer(consumer);
        ack.add_sequences(d.sequence());
        bus::AckResponse aresp;
        grpc::Status s = stub->Ack(&actx, ack, &aresp);
        if (!s.ok()) {  // not acknowledged: it will be redelivered
          std::fprintf(stderr, "consumer: ack %llu: %s\n",
                       static_cast<unsigned long long>(d.sequence()),
                       s.error_message().c_str());
          continue;
        }
        std::printf("acked %s seq %llu\n", d.event().text_data().c_str(),
                    static_cast<unsigned long long>(d.sequence()));
        std::fflush(stdout);
      }
    }
    grpc::Status s = reader->Finish();
    std::fprintf(stderr, "consumer: subscribe ended: %d %s\n", s.error_code(),
                 s.error_message().c_str());
    pause();
  }
}
