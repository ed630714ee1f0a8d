// The gRPC interceptors: per-method / per-code RPC metrics on the server, and
// W3C traceparent propagated from a client made with CreateObservedChannel
// to the handler's thread.
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <condition_variable>
#include <mutex>

#include "cityos/logging.h"
#include "cityos/metrics.h"
#include "cityos/observability.h"
#include "cityos/registry/v1/registry.grpc.pb.h"
#include "cityos/trace.h"

namespace cityos {
namespace {

namespace rv1 = registry::v1;

// Answers with the trace context its handler thread sees (traceparent, or ""
// for none) in fields of its responses.
class ProbeService final : public rv1::RegistryService::Service {
 public:
  grpc::Status Register(grpc::ServerContext*, const rv1::RegisterRequest*,
                        rv1::RegisterResponse* response) override {
    response->set_lease_id(Current());
    return grpc::Status::OK;
  }
  grpc::Status Heartbeat(grpc::ServerContext*, const rv1::HeartbeatRequest*,
                         rv1::HeartbeatResponse*) override {
    return grpc::Status(grpc::StatusCode::NOT_FOUND, "no such lease");
  }
  grpc::Status Watch(grpc::ServerContext*, const rv1::WatchRequest*,
                     grpc::ServerWriter<rv1::WatchResponse>* writer) override {
    for (int i = 0; i < 2; ++i) {
      rv1::WatchResponse r;
      r.add_changes()->mutable_instance()->set_principal(Current());
      writer->Write(r);
    }
    return grpc::Status::OK;
  }

 private:
  static std::string Current() {
    const TraceContext& c = CurrentTraceContext();
    return c.valid() ? c.ToTraceparent() : "";
  }
};

class ObservedServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    grpc::ServerBuilder builder;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(),
                             &port_);
    builder.RegisterService(&service_);
    AddServerObservability(builder, registry_);
    server_ = builder.BuildAndStart();
    ASSERT_NE(server_, nullptr);
    ASSERT_NE(port_, 0);
    target_ = "127.0.0.1:" + std::to_string(port_);
    stub_ = rv1::RegistryService::NewStub(
        CreateObservedChannel(target_, grpc::InsecureChannelCredentials()));
  }
  void TearDown() override {
    if (server_ != nullptr) {
      server_->Shutdown();
      server_->Wait();
    }
  }

  // Calls Register; returns the traceparent its handler saw.
  std::string CallRegister(rv1::RegistryService::StubInterface& stub,
                           const std::string& traceparent = "") {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() +
                     std::chrono::seconds(30));
    if (!traceparent.empty()) ctx.AddMetadata(kTraceparentKey, traceparent);
    rv1::RegisterRequest req;
    rv1::RegisterResponse resp;
    grpc::Status s = stub.Register(&ctx, req, &resp);
    EXPECT_TRUE(s.ok()) << s.error_message();
    return resp.lease_id();
  }

  MetricsRegistry registry_;
  ProbeService service_;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
  std::string target_;
  std::unique_ptr<rv1::RegistryService::Stub> stub_;
};

constexpr char kRegister[] = "cityos.registry.v1.RegistryService/Register";
constexpr char kHeartbeat[] = "cityos.registry.v1.RegistryService/Heartbeat";

TEST_F(ObservedServerTest, CountsRpcsByMethodAndCode) {
  CallRegister(*stub_);
  CallRegister(*stub_);
  for (int i = 0; i < 3; ++i) {
    grpc::ClientContext ctx;
    rv1::HeartbeatRequest req;
    rv1::HeartbeatResponse resp;
    EXPECT_EQ(stub_->Heartbeat(&ctx, req, &resp).error_code(),
              grpc::StatusCode::NOT_FOUND);
  }
  // The series are recorded before the status is sent, so they are complete
  // by the time the client has its answers.
  CounterFamily handled = registry_.AddCounterFamily(
      "cityos_grpc_server_handled_total", "", {"method", "code"});
  EXPECT_EQ(handled.WithLabels({kRegister, "OK"}).Value(), 2u);
  EXPECT_EQ(handled.WithLabels({kHeartbeat, "NOT_FOUND"}).Value(), 3u);
  EXPECT_EQ(handled.WithLabels({kHeartbeat, "OK"}).Value(), 0u);

  std::string text = registry_.RenderPrometheus();
  EXPECT_NE(text.find("# TYPE cityos_grpc_server_handled_total counter\n"),
            std::string::npos);
  EXPECT_NE(text.find("cityos_grpc_server_handled_total{method=\"" +
                      std::string(kRegister) + "\",code=\"OK\"} 2\n"),
            std::string::npos)
      << text;
  EXPECT_NE(text.find("cityos_grpc_server_handled_total{method=\"" +
                      std::string(kHeartbeat) + "\",code=\"NOT_FOUND\"} 3\n"),
            std::string::npos)
      << text;
  EXPECT_NE(text.find("# TYPE cityos_grpc_server_handling_seconds histogram\n"),
            std::string::npos);
  EXPECT_NE(text.find("cityos_grpc_server_handling_seconds_count{method=\"" +
                      std::string(kRegister) + "\"} 2\n"),
            std::string::npos)
      << text;
  EXPECT_NE(text.find("cityos_grpc_server_handling_seconds_bucket{method=\"" +
                      std::string(kHeartbeat) + "\",le=\"+Inf\"} 3\n"),
            std::string::npos)
      << text;
}

TEST_F(ObservedServerTest, HandlerSeesTheClientsTrace) {
  TraceContext mine = TraceContext::NewRoot();
  std::string seen;
  {
    TraceScope scope(mine);
    seen = CallRegister(*stub_);
  }
  absl::StatusOr<TraceContext> server = TraceContext::Parse(seen);
  ASSERT_TRUE(server.ok()) << "handler saw \"" << seen
                           << "\": " << server.status();
  EXPECT_EQ(server->TraceIdHex(), mine.TraceIdHex());
  EXPECT_NE(server->SpanIdHex(), mine.SpanIdHex());  // a span of its own
  EXPECT_TRUE(server->sampled());
}

TEST_F(ObservedServerTest, EveryCallGetsItsOwnSpan) {
  TraceScope scope(TraceContext::NewRoot());
  std::string a = CallRegister(*stub_);
  std::string b = CallRegister(*stub_);
  ASSERT_FALSE(a.empty());
  ASSERT_FALSE(b.empty());
  EXPECT_EQ(TraceContext::Parse(a)->trace_id(),
            TraceContext::Parse(b)->trace_id());
  EXPECT_NE(TraceContext::Parse(a)->span_id(),
            TraceContext::Parse(b)->span_id());
}

TEST_F(ObservedServerTest, ACallOutsideATraceStartsOne) {
  ASSERT_FALSE(CurrentTraceContext().valid());
  std::string a = CallRegister(*stub_);
  std::string b = CallRegister(*stub_);
  ASSERT_TRUE(TraceContext::Parse(a).ok()) << a;
  ASSERT_TRUE(TraceContext::Parse(b).ok()) << b;
  EXPECT_NE(TraceContext::Parse(a)->trace_id(),
            TraceContext::Parse(b)->trace_id());
}

TEST_F(ObservedServerTest, AnExplicitTraceparentIsKept) {
  constexpr char kTp[] =
      "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
  TraceScope scope(TraceContext::NewRoot());  // the explicit header wins
  absl::StatusOr<TraceContext> seen =
      TraceContext::Parse(CallRegister(*stub_, kTp));
  ASSERT_TRUE(seen.ok());
  EXPECT_EQ(seen->TraceIdHex(), "4bf92f3577b34da6a3ce929d0e0e4736");
  EXPECT_FALSE(seen->sampled());
}

TEST_F(ObservedServerTest, PlainClientsAndInvalidHeadersStartANewTrace) {
  auto plain = rv1::RegistryService::NewStub(
      grpc::CreateChannel(target_, grpc::InsecureChannelCredentials()));
  TraceContext mine = TraceContext::NewRoot();
  TraceScope scope(mine);
  absl::StatusOr<TraceContext> seen = TraceContext::Parse(CallRegister(*plain));
  ASSERT_TRUE(seen.ok());
  EXPECT_NE(seen->trace_id(), mine.trace_id());  // nothing was propagated

  seen = TraceContext::Parse(CallRegister(
      *plain, "00-00000000000000000000000000000000-00f067aa0ba902b7-01"));
  ASSERT_TRUE(seen.ok());
  EXPECT_TRUE(seen->valid());
  EXPECT_NE(seen->TraceIdHex(), "00000000000000000000000000000000");
}

TEST_F(ObservedServerTest, ServerStreamingHandlerSeesTheTrace) {
  TraceContext mine = TraceContext::NewRoot();
  TraceScope scope(mine);
  grpc::ClientContext ctx;
  rv1::WatchRequest req;
  auto reader = stub_->Watch(&ctx, req);
  rv1::WatchResponse resp;
  int n = 0;
  while (reader->Read(&resp)) {
    ++n;
    absl::StatusOr<TraceContext> seen =
        TraceContext::Parse(resp.changes(0).instance().principal());
    ASSERT_TRUE(seen.ok()) << resp.DebugString();
    EXPECT_EQ(seen->trace_id(), mine.trace_id());
  }
  EXPECT_TRUE(reader->Finish().ok());
  EXPECT_EQ(n, 2);
  EXPECT_EQ(registry_
                .AddCounterFamily("cityos_grpc_server_handled_total", "",
                                  {"method", "code"})
                .WithLabels({"cityos.registry.v1.RegistryService/Watch", "OK"})
                .Value(),
            1u);
}

TEST_F(ObservedServerTest, UnknownMethodsDoNotAddSeriesPerName) {
  grpc::GenericStub generic(
      grpc::CreateChannel(target_, grpc::InsecureChannelCredentials()));
  for (const char* name : {"/no.Such/Method", "/other.Made/Up"}) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() +
                     std::chrono::seconds(30));
    grpc::Slice empty("");
    grpc::ByteBuffer req(&empty, 1);
    grpc::ByteBuffer resp;
    std::mutex mu;
    std::condition_variable cv;
    bool done = false;
    grpc::Status status;
    generic.UnaryCall(&ctx, name, grpc::StubOptions(), &req, &resp,
                      [&](grpc::Status s) {
                        std::lock_guard<std::mutex> lock(mu);
                        status = s;
                        done = true;
                        cv.notify_one();
                      });
    std::unique_lock<std::mutex> lock(mu);
    cv.wait(lock, [&] { return done; });
    EXPECT_EQ(status.error_code(), grpc::StatusCode::UNIMPLEMENTED) << name;
  }
  std::string text = registry_.RenderPrometheus();
  // They are counted together under one label value.
  EXPECT_NE(text.find("cityos_grpc_server_handled_total{method=\"unknown\","
                      "code=\"UNIMPLEMENTED\"} 2\n"),
            std::string::npos)
      << text;
  EXPECT_EQ(text.find("no.Such"), std::string::npos) << text;
  EXPECT_EQ(text.find("other.Made"), std::string::npos) << text;
}

TEST(IncomingTraceContext, ReadsTheCallersTraceparent) {
  // Through a real call: ServerContext metadata cannot be built by hand.
  class Service final : public rv1::RegistryService::Service {
   public:
    grpc::Status Register(grpc::ServerContext* ctx, const rv1::RegisterRequest*,
                          rv1::RegisterResponse* response) override {
      response->set_lease_id(IncomingTraceContext(*ctx).ToTraceparent());
      return grpc::Status::OK;
    }
  } service;
  int port = 0;
  grpc::ServerBuilder builder;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(),
                           &port);
  builder.RegisterService(&service);
  auto server = builder.BuildAndStart();  // no interceptors
  ASSERT_NE(server, nullptr);
  auto stub = rv1::RegistryService::NewStub(CreateObservedChannel(
      "127.0.0.1:" + std::to_string(port), grpc::InsecureChannelCredentials()));
  TraceContext mine = TraceContext::NewRoot();
  TraceScope scope(mine);
  grpc::ClientContext ctx;
  rv1::RegisterRequest req;
  rv1::RegisterResponse resp;
  ASSERT_TRUE(stub->Register(&ctx, req, &resp).ok());
  absl::StatusOr<TraceContext> seen = TraceContext::Parse(resp.lease_id());
  ASSERT_TRUE(seen.ok()) << resp.lease_id();
  EXPECT_EQ(seen->trace_id(), mine.trace_id());
  server->Shutdown();
  server->Wait();
}

}  // namespace
}  // namespace cityos
