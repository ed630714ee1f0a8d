// cityos.registry.v1.RegistryService through real gRPC on loopback: the
// service over a Registry on a SimulatedClock, the `registry` plug-in with its
// expiry timer, and RegistrationKeeper against the in-process server.
//
// Caller identity is injected the way the node does it (a PrincipalResolver /
// PluginContext::Authenticate): the test resolver reads the caller's SPIFFE id
// and roles from request metadata, so every org check runs against a real
// Principal. Calls without that metadata act as `default_caller_` (like a
// client certificate fixed per channel), or are UNAUTHENTICATED when it is
// unset. Nothing here asserts on timing: waits have generous deadlines.
#include <gmock/gmock.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "cityos/clock.h"
#include "cityos/config.h"
#include "cityos/logging.h"
#include "cityos/plugin.h"
#include "cityos/principal.h"
#include "cityos/registry/v1/registry.grpc.pb.h"
#include "registration_client.h"
#include "registry.h"
#include "registry_convert.h"
#include "registry_plugin.h"
#include "registry_service.h"
#include "testutil.h"

namespace cityos {
namespace {

namespace rv1 = registry::v1;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::StartsWith;

constexpr absl::Duration kWait = absl::Seconds(30);  // generous; never a timing assertion
constexpr char kPrincipalHeader[] = "x-test-principal";
constexpr char kRolesHeader[] = "x-test-roles";

constexpr char kGridCarbon[] = "spiffe://test.city/org/grid/svc/carbon";
constexpr char kHospital[] = "spiffe://test.city/org/hospital/svc/records";
constexpr char kAdmin[] = "spiffe://test.city/org/city/user/ops";

std::string Metadata(const grpc::ServerContextBase& call, const char* key) {
  auto it = call.client_metadata().find(key);
  if (it == call.client_metadata().end()) return "";
  return std::string(it->second.data(), it->second.size());
}

// The test's stand-in for mTLS: the principal named in the metadata, else the
// channel's default one.
absl::StatusOr<Principal> ResolveCaller(const grpc::ServerContextBase& call,
                                        const std::optional<Principal>& fallback) {
  const std::string id = Metadata(call, kPrincipalHeader);
  if (id.empty()) {
    if (fallback.has_value()) return *fallback;
    return absl::UnauthenticatedError("no client certificate");
  }
  absl::StatusOr<Principal> p = Principal::FromSpiffeId(id);
  if (!p.ok()) return absl::UnauthenticatedError(p.status().message());
  const std::string roles = Metadata(call, kRolesHeader);
  if (!roles.empty()) p->roles = absl::StrSplit(roles, ',');
  return p;
}

void As(grpc::ClientContext& ctx, const std::string& spiffe_id, const std::string& roles = "") {
  ctx.AddMetadata(kPrincipalHeader, spiffe_id);
  if (!roles.empty()) ctx.AddMetadata(kRolesHeader, roles);
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + kWait));
}

rv1::ServiceRegistration Carbon(const std::string& endpoint = "carbon-1.grid.city:7443") {
  rv1::ServiceRegistration r;
  r.set_name("carbon");
  r.set_org("grid");
  r.set_domain("carbon");
  r.set_endpoint(endpoint);
  r.add_proto_services("cityos.carbon.v1.CarbonAccountService");
  r.add_published_subjects("carbon.alarm.>");
  r.set_version("1.4.2");
  (*r.mutable_labels())["zone"] = "kecheng";
  return r;
}

std::string Describe(const rv1::ServiceChange& c) {
  return std::string(rv1::ChangeType_Name(c.type())) + " " + c.instance().registration().name() +
         "@" + c.instance().registration().endpoint() + " " +
         rv1::ChangeReason_Name(c.reason());
}

// One Watch call, read on its own thread (unless created stalled).
class WatchCall {
 public:
  WatchCall(rv1::RegistryService::Stub* stub, const rv1::WatchRequest& request,
            const std::string& principal = kGridCarbon, bool read = true) {
    As(context_, principal);
    context_.set_deadline(absl::ToChronoTime(absl::Now() + absl::Minutes(3)));
    reader_ = stub->Watch(&context_, request);
    // The service sends initial metadata once the watch is in place.
    reader_->WaitForInitialMetadata();
    if (read) StartReading();
  }
  ~WatchCall() {
    context_.TryCancel();
    if (thread_.joinable()) thread_.join();
  }

  void StartReading() {
    thread_ = std::thread([this] {
      rv1::WatchResponse response;
      while (reader_->Read(&response)) {
        absl::MutexLock lock(&mu_);
        responses_.push_back(response);
        for (const auto& c : response.changes()) changes_.push_back(c);
      }
      grpc::Status status = reader_->Finish();
      absl::MutexLock lock(&mu_);
      status_ = status;
      finished_ = true;
    });
  }

  // True once at least `n` changes arrived; false after kWait or if the call
  // ended first.
  bool WaitFor(size_t n) {
    absl::MutexLock lock(&mu_);
    auto enough = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return changes_.size() >= n || finished_;
    };
    mu_.AwaitWithTimeout(absl::Condition(&enough), kWait);
    return changes_.size() >= n;
  }
  grpc::Status WaitForEnd() {
    absl::MutexLock lock(&mu_);
    auto done = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return finished_; };
    if (!mu_.AwaitWithTimeout(absl::Condition(&done), kWait)) {
      return grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED, "test: call did not end");
    }
    return status_;
  }
  std::vector<rv1::ServiceChange> changes() {
    absl::MutexLock lock(&mu_);
    return changes_;
  }
  std::vector<std::string> described() {
    std::vector<std::string> out;
    for (const auto& c : changes()) out.push_back(Describe(c));
    return out;
  }
  std::vector<rv1::WatchResponse> responses() {
    absl::MutexLock lock(&mu_);
    return responses_;
  }

 private:
  grpc::ClientContext context_;
  std::unique_ptr<grpc::ClientReader<rv1::WatchResponse>> reader_;
  std::thread thread_;
  absl::Mutex mu_;
  std::vector<rv1::WatchResponse> responses_ ABSL_GUARDED_BY(mu_);
  std::vector<rv1::ServiceChange> changes_ ABSL_GUARDED_BY(mu_);
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  grpc::Status status_ ABSL_GUARDED_BY(mu_);
};

// A server hosting one grpc::Service on 127.0.0.1:`port` (0: any).
struct TestServer {
  TestServer(grpc::Service* service, int port) {
    grpc::ServerBuilder builder;
    builder.AddListeningPort("127.0.0.1:" + std::to_string(port),
                             grpc::InsecureServerCredentials(), &bound_port);
    builder.RegisterService(service);
    server = builder.BuildAndStart();
  }
  ~TestServer() {
    if (server != nullptr) {
      server->Shutdown(absl::ToChronoTime(absl::Now() + absl::Seconds(2)));
      server->Wait();
    }
  }
  std::unique_ptr<grpc::Server> server;
  int bound_port = 0;
};

std::shared_ptr<grpc::Channel> Channel(int port) {
  grpc::ChannelArguments args;
  // Reconnect soon after a server restart (the default backoff grows to 2 min).
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 500);
  return grpc::CreateCustomChannel("127.0.0.1:" + std::to_string(port),
                                   grpc::InsecureChannelCredentials(), args);
}

class RegistryServiceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    NewRegistry();
    StartServer(0);
    channel_ = Channel(port_);
    stub_ = rv1::RegistryService::NewStub(channel_);
  }
  void TearDown() override {
    StopServer();
    stub_.reset();
    channel_.reset();
  }

  void NewRegistry() {
    registry_options_.clock = &clock_;
    registry_ = Registry::Create(registry_options_);
  }
  void StartServer(int port) {
    service_ = std::make_unique<RegistryServiceImpl>(
        registry_.get(),
        [this](grpc::ServerContext* call) {
          absl::MutexLock lock(&caller_mu_);
          return ResolveCaller(*call, default_caller_);
        },
        RegistryServiceOptions{.poll_interval = absl::Milliseconds(20)});
    server_ = std::make_unique<TestServer>(service_.get(), port);
    ASSERT_NE(server_->server, nullptr);
    ASSERT_NE(server_->bound_port, 0);
    port_ = server_->bound_port;
  }
  void StopServer() {
    server_.reset();
    service_.reset();
  }
  void SetDefaultCaller(std::optional<Principal> p) {
    absl::MutexLock lock(&caller_mu_);
    default_caller_ = std::move(p);
  }

  grpc::Status Register(const std::string& who, const rv1::ServiceRegistration& reg,
                        rv1::RegisterResponse* response, const std::string& roles = "",
                        absl::Duration ttl = absl::ZeroDuration()) {
    rv1::RegisterRequest request;
    *request.mutable_registration() = reg;
    if (ttl != absl::ZeroDuration()) DurationToProto(ttl, request.mutable_ttl());
    grpc::ClientContext ctx;
    As(ctx, who, roles);
    return stub_->Register(&ctx, request, response);
  }
  grpc::Status Heartbeat(const std::string& who, const std::string& lease_id,
                         rv1::HeartbeatResponse* response) {
    rv1::HeartbeatRequest request;
    request.set_lease_id(lease_id);
    grpc::ClientContext ctx;
    As(ctx, who);
    return stub_->Heartbeat(&ctx, request, response);
  }
  grpc::Status Deregister(const std::string& who, const std::string& lease_id,
                          const std::string& roles = "") {
    rv1::DeregisterRequest request;
    request.set_lease_id(lease_id);
    rv1::DeregisterResponse response;
    grpc::ClientContext ctx;
    As(ctx, who, roles);
    return stub_->Deregister(&ctx, request, &response);
  }
  grpc::Status Resolve(const rv1::ResolveRequest& request, rv1::ResolveResponse* response) {
    grpc::ClientContext ctx;
    As(ctx, kHospital);
    return stub_->Resolve(&ctx, request, response);
  }
  std::vector<std::string> ListEndpoints(const rv1::InstanceFilter& filter = {}) {
    rv1::ListRequest request;
    *request.mutable_filter() = filter;
    rv1::ListResponse response;
    grpc::ClientContext ctx;
    As(ctx, kHospital);
    grpc::Status s = stub_->List(&ctx, request, &response);
    EXPECT_TRUE(s.ok()) << s.error_message();
    std::vector<std::string> out;
    for (const auto& i : response.instances()) out.push_back(i.registration().endpoint());
    return out;
  }

  SimulatedClock clock_{absl::FromUnixSeconds(1'700'000'000)};
  RegistryOptions registry_options_;
  std::unique_ptr<Registry> registry_;
  std::unique_ptr<RegistryServiceImpl> service_;
  std::unique_ptr<TestServer> server_;
  int port_ = 0;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<rv1::RegistryService::Stub> stub_;
  absl::Mutex caller_mu_;
  std::optional<Principal> default_caller_ ABSL_GUARDED_BY(caller_mu_);
};

// --- unary RPCs ---

TEST_F(RegistryServiceTest, RegisterHeartbeatResolveAndListCarryTheCallersPrincipal) {
  rv1::RegisterResponse reg;
  grpc::Status s = Register(kGridCarbon, Carbon(), &reg, "", absl::Seconds(20));
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_FALSE(reg.lease_id().empty());
  EXPECT_EQ(reg.ttl().seconds(), 20);
  EXPECT_EQ(reg.instance().principal(), kGridCarbon);
  EXPECT_EQ(reg.instance().registration().SerializeAsString(), Carbon().SerializeAsString());
  EXPECT_EQ(reg.instance().expire_time().seconds(), 1'700'000'020);

  clock_.Advance(absl::Seconds(5));
  rv1::HeartbeatResponse hb;
  s = Heartbeat(kGridCarbon, reg.lease_id(), &hb);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(hb.ttl().seconds(), 20);
  EXPECT_EQ(hb.expire_time().seconds(), 1'700'000'025);

  rv1::ResolveRequest by_name;
  by_name.set_name("carbon");
  rv1::ResolveResponse found;
  ASSERT_TRUE(Resolve(by_name, &found).ok());
  ASSERT_EQ(found.instances_size(), 1);
  EXPECT_EQ(found.instances(0).registration().endpoint(), "carbon-1.grid.city:7443");
  EXPECT_EQ(found.instances(0).heartbeat_time().seconds(), 1'700'000'005);

  rv1::ResolveRequest by_proto;
  by_proto.set_proto_service("cityos.carbon.v1.CarbonAccountService");
  by_proto.set_org("grid");
  found.Clear();
  ASSERT_TRUE(Resolve(by_proto, &found).ok());
  ASSERT_EQ(found.instances_size(), 1);

  rv1::ResolveRequest missing;
  missing.set_proto_service("cityos.consent.v1.ConsentService");
  EXPECT_EQ(Resolve(missing, &found).error_code(), grpc::StatusCode::NOT_FOUND);

  rv1::InstanceFilter hospital_only;
  hospital_only.set_org("hospital");
  EXPECT_THAT(ListEndpoints(), ElementsAre("carbon-1.grid.city:7443"));
  EXPECT_THAT(ListEndpoints(hospital_only), ::testing::IsEmpty());

  ASSERT_TRUE(Deregister(kGridCarbon, reg.lease_id()).ok());
  EXPECT_EQ(Heartbeat(kGridCarbon, reg.lease_id(), &hb).error_code(),
            grpc::StatusCode::NOT_FOUND);
  EXPECT_THAT(ListEndpoints(), ::testing::IsEmpty());
}

TEST_F(RegistryServiceTest, AnOrgRegistersOnlyUnderItsOwnOrgAndAdminsMay) {
  rv1::RegisterResponse reg;
  grpc::Status denied = Register(kHospital, Carbon(), &reg);  // hospital registering as grid
  EXPECT_EQ(denied.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_THAT(denied.error_message(), HasSubstr("own org \"hospital\""));
  // A principal with the role `admin` may register under any org.
  grpc::Status admin = Register(kAdmin, Carbon(), &reg, "admin");
  ASSERT_TRUE(admin.ok()) << admin.error_message();
  EXPECT_EQ(reg.instance().principal(), kAdmin);

  // Another principal of the owning org cannot renew or end it; an admin can end it.
  rv1::HeartbeatResponse hb;
  EXPECT_EQ(Heartbeat(kGridCarbon, reg.lease_id(), &hb).error_code(),
            grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_EQ(Deregister(kGridCarbon, reg.lease_id()).error_code(),
            grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_TRUE(Deregister(kAdmin, reg.lease_id(), "admin").ok());
}

TEST_F(RegistryServiceTest, EveryRpcWithoutACallerIsUnauthenticated) {
  auto bare = [] {
    auto ctx = std::make_unique<grpc::ClientContext>();
    ctx->set_deadline(absl::ToChronoTime(absl::Now() + kWait));
    return ctx;
  };
  rv1::RegisterRequest reg;
  *reg.mutable_registration() = Carbon();
  rv1::RegisterResponse reg_resp;
  EXPECT_EQ(stub_->Register(bare().get(), reg, &reg_resp).error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
  rv1::HeartbeatResponse hb;
  EXPECT_EQ(stub_->Heartbeat(bare().get(), {}, &hb).error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
  rv1::DeregisterResponse dr;
  EXPECT_EQ(stub_->Deregister(bare().get(), {}, &dr).error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
  rv1::ResolveRequest rr;
  rr.set_name("carbon");
  rv1::ResolveResponse rresp;
  EXPECT_EQ(stub_->Resolve(bare().get(), rr, &rresp).error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
  rv1::ListResponse lr;
  EXPECT_EQ(stub_->List(bare().get(), {}, &lr).error_code(), grpc::StatusCode::UNAUTHENTICATED);
  auto ctx = bare();
  auto watch = stub_->Watch(ctx.get(), {});
  rv1::WatchResponse wr;
  EXPECT_FALSE(watch->Read(&wr));
  EXPECT_EQ(watch->Finish().error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(registry_->size(), 0u);
}

TEST_F(RegistryServiceTest, BadInputIsInvalidArgumentNamingTheField) {
  rv1::RegisterResponse resp;
  auto code_and_message = [](const grpc::Status& s) {
    return std::to_string(s.error_code()) + " " + s.error_message();
  };
  const std::string invalid = std::to_string(grpc::StatusCode::INVALID_ARGUMENT) + " ";

  rv1::RegisterRequest empty;
  grpc::ClientContext ctx;
  As(ctx, kGridCarbon);
  EXPECT_THAT(code_and_message(stub_->Register(&ctx, empty, &resp)),
              StartsWith(invalid + "registration: required"));

  rv1::ServiceRegistration bad_endpoint = Carbon("carbon.grid.city");
  EXPECT_THAT(code_and_message(Register(kGridCarbon, bad_endpoint, &resp)),
              StartsWith(invalid + "registration.endpoint:"));
  rv1::ServiceRegistration bad_proto = Carbon();
  bad_proto.add_proto_services("not a service");
  EXPECT_THAT(code_and_message(Register(kGridCarbon, bad_proto, &resp)),
              StartsWith(invalid + "registration.proto_services[1]:"));
  rv1::ServiceRegistration bad_subject = Carbon();
  bad_subject.set_published_subjects(0, "carbon..x");
  EXPECT_THAT(code_and_message(Register(kGridCarbon, bad_subject, &resp)),
              StartsWith(invalid + "registration.published_subjects[0]:"));

  rv1::RegisterRequest bad_ttl;
  *bad_ttl.mutable_registration() = Carbon();
  bad_ttl.mutable_ttl()->set_seconds(5);
  bad_ttl.mutable_ttl()->set_nanos(-1);
  grpc::ClientContext ctx2;
  As(ctx2, kGridCarbon);
  EXPECT_THAT(code_and_message(stub_->Register(&ctx2, bad_ttl, &resp)),
              StartsWith(invalid + "ttl:"));

  rv1::ResolveResponse rr;
  EXPECT_THAT(code_and_message(Resolve({}, &rr)), StartsWith(invalid + "target:"));
  rv1::ResolveRequest bad_name;
  bad_name.set_name("Carbon");
  EXPECT_THAT(code_and_message(Resolve(bad_name, &rr)), StartsWith(invalid + "name:"));

  rv1::ListRequest bad_filter;
  bad_filter.mutable_filter()->set_name("-x");
  rv1::ListResponse lr;
  grpc::ClientContext ctx3;
  As(ctx3, kGridCarbon);
  EXPECT_THAT(code_and_message(stub_->List(&ctx3, bad_filter, &lr)),
              StartsWith(invalid + "filter.name:"));
  EXPECT_EQ(registry_->size(), 0u);
}

// --- Watch ---

TEST_F(RegistryServiceTest, WatchSendsTheSnapshotThenAddedUpdatedAndRemovedWithReasons) {
  rv1::RegisterResponse first;
  ASSERT_TRUE(Register(kGridCarbon, Carbon("a.grid.city:1"), &first).ok());

  rv1::WatchRequest request;
  request.set_initial_snapshot(true);
  request.mutable_filter()->set_org("grid");
  WatchCall watch(stub_.get(), request, kHospital);
  ASSERT_TRUE(watch.WaitFor(1));

  rv1::RegisterResponse second;
  ASSERT_TRUE(Register(kGridCarbon, Carbon("b.grid.city:1"), &second, "", absl::Seconds(15)).ok());
  rv1::ServiceRegistration changed = Carbon("b.grid.city:1");
  changed.set_version("2.0.0");
  ASSERT_TRUE(Register(kGridCarbon, changed, &second, "", absl::Seconds(15)).ok());
  ASSERT_TRUE(Deregister(kGridCarbon, first.lease_id()).ok());
  // Not in the filter: never reported.
  rv1::ServiceRegistration records;
  records.set_name("records");
  records.set_org("hospital");
  records.set_endpoint("records.hospital.city:7443");
  rv1::RegisterResponse hospital;
  ASSERT_TRUE(Register(kHospital, records, &hospital).ok());
  clock_.Advance(absl::Seconds(16));
  EXPECT_EQ(registry_->ExpireNow(), 2u);  // b (grid) and records (hospital)

  ASSERT_TRUE(watch.WaitFor(5));
  EXPECT_THAT(watch.described(),
              ElementsAre("CHANGE_TYPE_ADDED carbon@a.grid.city:1 CHANGE_REASON_SNAPSHOT",
                          "CHANGE_TYPE_ADDED carbon@b.grid.city:1 CHANGE_REASON_REGISTERED",
                          "CHANGE_TYPE_UPDATED carbon@b.grid.city:1 CHANGE_REASON_REGISTERED",
                          "CHANGE_TYPE_REMOVED carbon@a.grid.city:1 CHANGE_REASON_DEREGISTERED",
                          "CHANGE_TYPE_REMOVED carbon@b.grid.city:1 "
                          "CHANGE_REASON_LEASE_EXPIRED"));
  auto responses = watch.responses();
  ASSERT_FALSE(responses.empty());
  EXPECT_TRUE(responses[0].snapshot());
  EXPECT_EQ(responses[0].changes_size(), 1);
  for (size_t i = 1; i < responses.size(); ++i) EXPECT_FALSE(responses[i].snapshot());
  auto changes = watch.changes();
  EXPECT_EQ(changes[2].instance().registration().version(), "2.0.0");
  EXPECT_EQ(changes[4].time().seconds(), 1'700'000'016);
  for (size_t i = 2; i < changes.size(); ++i) {
    EXPECT_GT(changes[i].revision(), changes[i - 1].revision());
  }
}

TEST_F(RegistryServiceTest, AnEmptySnapshotIsStillSent) {
  rv1::WatchRequest request;
  request.set_initial_snapshot(true);
  WatchCall watch(stub_.get(), request);
  rv1::RegisterResponse reg;
  ASSERT_TRUE(Register(kGridCarbon, Carbon(), &reg).ok());
  ASSERT_TRUE(watch.WaitFor(1));
  auto responses = watch.responses();
  ASSERT_GE(responses.size(), 2u);
  EXPECT_TRUE(responses[0].snapshot());
  EXPECT_EQ(responses[0].changes_size(), 0);
  EXPECT_EQ(responses[1].changes(0).type(), rv1::CHANGE_TYPE_ADDED);
}

TEST_F(RegistryServiceTest, ASlowWatcherIsCutWithResourceExhausted) {
  StopServer();
  registry_options_.watch_queue_depth = 16;
  NewRegistry();
  StartServer(port_);
  SetLogOptions(LogFormat::kText, LogLevel::kWarn);  // many re-registrations follow

  // A watcher that reads nothing: once gRPC's flow-control window is full the
  // handler cannot write, its queue overflows, and the registry cuts it.
  WatchCall slow(stub_.get(), {}, kHospital, /*read=*/false);
  Principal grid = *Principal::FromSpiffeId(kGridCarbon);
  ServiceRecord record = ServiceRecordFromProto(Carbon());
  record.labels["padding"] = std::string(200, 'x');
  constexpr int kChanges = 50'000;  // far more than any transport buffer holds
  for (int i = 0; i < kChanges; ++i) {
    record.version = std::to_string(i);  // every re-registration is an UPDATED
    ASSERT_TRUE(registry_->Register(grid, record, absl::ZeroDuration()).ok());
  }
  slow.StartReading();
  grpc::Status end = slow.WaitForEnd();
  SetLogOptions(LogFormat::kText, LogLevel::kInfo);
  EXPECT_EQ(end.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << end.error_message();
  EXPECT_THAT(end.error_message(), HasSubstr("watch again"));
  EXPECT_LT(slow.changes().size(), static_cast<size_t>(kChanges));

  // A fresh watch with a snapshot catches up.
  rv1::WatchRequest again;
  again.set_initial_snapshot(true);
  WatchCall fresh(stub_.get(), again);
  ASSERT_TRUE(fresh.WaitFor(1));
  EXPECT_EQ(fresh.changes()[0].instance().registration().version(),
            std::to_string(kChanges - 1));
}

TEST_F(RegistryServiceTest, DrainingEndsWatchesWithUnavailableButUnaryCallsWork) {
  WatchCall watch(stub_.get(), {});
  service_->BeginShutdown();
  grpc::Status end = watch.WaitForEnd();
  EXPECT_EQ(end.error_code(), grpc::StatusCode::UNAVAILABLE) << end.error_message();
  WatchCall late(stub_.get(), {});
  EXPECT_EQ(late.WaitForEnd().error_code(), grpc::StatusCode::UNAVAILABLE);
  rv1::RegisterResponse reg;
  EXPECT_TRUE(Register(kGridCarbon, Carbon(), &reg).ok());
}

// --- RegistrationKeeper against the in-process server ---

class RegistrationKeeperTest : public RegistryServiceTest {
 protected:
  void SetUp() override {
    RegistryServiceTest::SetUp();
    // The keeper's channel acts as the grid's carbon service.
    SetDefaultCaller(*Principal::FromSpiffeId(kGridCarbon));
  }
  RegistrationKeeperOptions KeeperOptions() {
    return {.registration = Carbon(),
            .ttl = absl::Seconds(15),  // simulated time on the registry side
            .heartbeat_interval = absl::Milliseconds(10),  // real time
            .rpc_timeout = absl::Seconds(10),
            .retry_initial = absl::Milliseconds(20),
            .retry_max = absl::Milliseconds(200)};
  }
  std::unique_ptr<RegistrationKeeper> StartKeeper() {
    auto keeper = RegistrationKeeper::Start(channel_, KeeperOptions());
    EXPECT_TRUE(keeper.ok()) << keeper.status();
    return keeper.ok() ? *std::move(keeper) : nullptr;
  }
  // Waits until the registry has renewed the lease at the current simulated
  // time or later: the keeper makes one call at a time, so the second
  // heartbeat completed after this call started was also sent after it.
  bool WaitForNextHeartbeat(RegistrationKeeper& keeper) {
    const uint64_t seen = keeper.status().heartbeats;
    return keeper.WaitFor([seen](const KeeperStatus& s) { return s.heartbeats >= seen + 2; },
                          kWait);
  }
};

TEST_F(RegistrationKeeperTest, KeepsTheLeaseAliveAcrossExpiryIntervals) {
  auto keeper = StartKeeper();
  ASSERT_NE(keeper, nullptr);
  ASSERT_TRUE(keeper->WaitUntilRegistered(kWait).ok());
  EXPECT_EQ(keeper->status().ttl, absl::Seconds(15));
  for (int i = 0; i < 8; ++i) {  // 80 s of simulated time: more than five TTLs
    ASSERT_TRUE(WaitForNextHeartbeat(*keeper));
    clock_.Advance(absl::Seconds(10));
    EXPECT_EQ(registry_->ExpireNow(), 0u) << "round " << i;
  }
  EXPECT_EQ(registry_->size(), 1u);
  KeeperStatus status = keeper->status();
  EXPECT_EQ(status.state, KeeperState::kRegistered);
  EXPECT_EQ(status.registrations, 1u);
  EXPECT_GE(status.heartbeats, 8u);
  EXPECT_TRUE(status.last_error.ok());
}

TEST_F(RegistrationKeeperTest, RegistersAgainWhenTheRegistryForgetsTheLease) {
  rv1::WatchRequest request;
  WatchCall watch(stub_.get(), request, kHospital);
  auto keeper = StartKeeper();
  ASSERT_NE(keeper, nullptr);
  ASSERT_TRUE(keeper->WaitUntilRegistered(kWait).ok());
  const std::string first_lease = keeper->status().lease_id;

  // 1. An admin removes it: the next heartbeat is NOT_FOUND; it registers again.
  ASSERT_TRUE(Deregister(kAdmin, first_lease, "admin").ok());
  ASSERT_TRUE(keeper->WaitFor([](const KeeperStatus& s) { return s.registrations >= 2; }, kWait));
  EXPECT_NE(keeper->status().lease_id, first_lease);
  ASSERT_TRUE(watch.WaitFor(3));

  // 2. The lease expires while the registry cannot be reached; when it comes
  //    back the keeper's heartbeat is NOT_FOUND and it registers again.
  StopServer();
  ASSERT_TRUE(keeper->WaitFor(
      [](const KeeperStatus& s) { return s.state == KeeperState::kRetrying; }, kWait));
  EXPECT_EQ(keeper->status().last_error.code(), absl::StatusCode::kUnavailable);
  clock_.Advance(absl::Minutes(1));
  EXPECT_EQ(registry_->ExpireNow(), 1u);
  StartServer(port_);
  ASSERT_TRUE(keeper->WaitFor([](const KeeperStatus& s) { return s.registrations >= 3; }, kWait));
  EXPECT_EQ(registry_->size(), 1u);

  // 3. The registry restarts empty (soft state): the keeper registers again.
  StopServer();
  NewRegistry();
  StartServer(port_);
  ASSERT_TRUE(keeper->WaitFor([](const KeeperStatus& s) { return s.registrations >= 4; }, kWait));
  ASSERT_TRUE(keeper->WaitUntilRegistered(kWait).ok());
  auto resolved = registry_->Resolve("carbon", "", "grid");
  ASSERT_TRUE(resolved.ok()) << resolved.status();
  EXPECT_EQ(resolved->at(0).principal, kGridCarbon);

  // The first watch (on the first server) saw the admin removal and the return.
  std::vector<std::string> seen = watch.described();
  seen.resize(3);
  EXPECT_THAT(seen,
              ElementsAre("CHANGE_TYPE_ADDED carbon@carbon-1.grid.city:7443 "
                          "CHANGE_REASON_REGISTERED",
                          "CHANGE_TYPE_REMOVED carbon@carbon-1.grid.city:7443 "
                          "CHANGE_REASON_DEREGISTERED",
                          "CHANGE_TYPE_ADDED carbon@carbon-1.grid.city:7443 "
                          "CHANGE_REASON_REGISTERED"));
}

TEST_F(RegistrationKeeperTest, DeregistersOnStop) {
  auto keeper = StartKeeper();
  ASSERT_NE(keeper, nullptr);
  ASSERT_TRUE(keeper->WaitUntilRegistered(kWait).ok());
  WatchCall watch(stub_.get(), {}, kHospital);
  ASSERT_EQ(registry_->size(), 1u);
  EXPECT_TRUE(keeper->Stop().ok());
  EXPECT_EQ(registry_->size(), 0u);
  ASSERT_TRUE(watch.WaitFor(1));
  EXPECT_THAT(watch.described(), ElementsAre("CHANGE_TYPE_REMOVED carbon@carbon-1.grid.city:7443 "
                                             "CHANGE_REASON_DEREGISTERED"));
  EXPECT_EQ(keeper->status().state, KeeperState::kStopped);
  EXPECT_TRUE(keeper->status().lease_id.empty());
  EXPECT_TRUE(keeper->Stop().ok());  // idempotent
  EXPECT_EQ(keeper->WaitUntilRegistered(absl::ZeroDuration()).code(),
            absl::StatusCode::kCancelled);
}

TEST_F(RegistrationKeeperTest, RetriesUntilTheRegistryIsReachable) {
  StopServer();
  auto keeper = StartKeeper();
  ASSERT_NE(keeper, nullptr);
  ASSERT_TRUE(keeper->WaitFor(
      [](const KeeperStatus& s) { return s.state == KeeperState::kRetrying; }, kWait));
  EXPECT_FALSE(keeper->status().last_error.ok());
  StartServer(port_);
  ASSERT_TRUE(keeper->WaitUntilRegistered(kWait).ok());
  EXPECT_EQ(registry_->size(), 1u);
}

TEST_F(RegistrationKeeperTest, ARefusedRegistrationIsReportedAndRetried) {
  SetDefaultCaller(*Principal::FromSpiffeId(kHospital));  // not of org grid
  auto keeper = StartKeeper();
  ASSERT_NE(keeper, nullptr);
  EXPECT_EQ(keeper->WaitUntilRegistered(absl::Milliseconds(200)).code(),
            absl::StatusCode::kDeadlineExceeded);
  ASSERT_TRUE(keeper->WaitFor(
      [](const KeeperStatus& s) {
        return s.last_error.code() == absl::StatusCode::kPermissionDenied;
      },
      kWait));
  EXPECT_EQ(registry_->size(), 0u);
  // The operator fixes the identity: it registers.
  SetDefaultCaller(*Principal::FromSpiffeId(kGridCarbon));
  ASSERT_TRUE(keeper->WaitUntilRegistered(kWait).ok());
}

TEST(RegistrationKeeper, StartChecksTheRegistrationLikeTheRegistry) {
  auto channel = grpc::CreateChannel("127.0.0.1:1", grpc::InsecureChannelCredentials());
  RegistrationKeeperOptions options{.registration = Carbon("no-port")};
  auto keeper = RegistrationKeeper::Start(channel, options);
  EXPECT_EQ(keeper.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(keeper.status().message()), StartsWith("registration.endpoint:"));
  EXPECT_EQ(RegistrationKeeper::Start(nullptr, {.registration = Carbon()}).status().code(),
            absl::StatusCode::kInvalidArgument);
}

// --- the plug-in ---

// A PluginContext whose Authenticate reads the test metadata (no default).
class TestPluginContext final : public PluginContext {
 public:
  explicit TestPluginContext(Clock* clock) : clock_(clock) {}
  const NodeInfo& node() const override { return info_; }
  std::string ServingAddress() const override { return info_.listen_address; }
  Clock* clock() override { return clock_; }
  Bus* bus() override { return nullptr; }  // the registry does not use the bus
  PolicyDecisionPoint* policy() override { return nullptr; }
  AuditLog* audit() override { return nullptr; }
  absl::StatusOr<std::string> PluginDataDir(std::string_view plugin) override {
    return absl::FailedPreconditionError("the registry keeps no files");
  }
  absl::StatusOr<Principal> Authenticate(const grpc::ServerContextBase& call) override {
    return ResolveCaller(call, std::nullopt);
  }

 private:
  NodeInfo info_{.name = "test-node", .data_dir = "/nonexistent", .listen_address = ""};
  Clock* const clock_;
};

TEST(RegistryPlugin, ServesTheRegistryExpiresLeasesOnItsTimerAndDrainsWatches) {
  PluginRegistry plugins;
  ASSERT_TRUE(RegisterRegistryPlugin(plugins).ok());
  auto plugin = plugins.Create("registry");
  ASSERT_TRUE(plugin.ok()) << plugin.status();
  auto section = ConfigNode::LoadString("default_ttl: 15s\nexpiry_interval: 10ms\n", "node.yaml");
  ASSERT_TRUE(section.ok());
  ASSERT_TRUE((*plugin)->Configure(*section).ok());
  SimulatedClock clock(absl::FromUnixSeconds(1'700'000'000));
  TestPluginContext context(&clock);
  ASSERT_TRUE((*plugin)->Start(context).ok());
  std::vector<HostedService> services = (*plugin)->Services();
  ASSERT_EQ(services.size(), 1u);
  EXPECT_EQ(services[0].full_name, "cityos.registry.v1.RegistryService");

  {
    auto server = std::make_unique<TestServer>(services[0].service, 0);
    ASSERT_NE(server->server, nullptr);
    auto stub = rv1::RegistryService::NewStub(Channel(server->bound_port));

    // Callers are authenticated through PluginContext::Authenticate.
    rv1::RegisterRequest request;
    *request.mutable_registration() = Carbon();
    rv1::RegisterResponse response;
    grpc::ClientContext anonymous;
    EXPECT_EQ(stub->Register(&anonymous, request, &response).error_code(),
              grpc::StatusCode::UNAUTHENTICATED);
    grpc::ClientContext as_hospital;
    As(as_hospital, kHospital);
    EXPECT_EQ(stub->Register(&as_hospital, request, &response).error_code(),
              grpc::StatusCode::PERMISSION_DENIED);

    WatchCall watch(stub.get(), {}, kHospital);
    grpc::ClientContext as_grid;
    As(as_grid, kGridCarbon);
    ASSERT_TRUE(stub->Register(&as_grid, request, &response).ok());
    EXPECT_EQ(response.ttl().seconds(), 15);

    // No heartbeat: once the simulated TTL has passed, the timer removes it.
    clock.Advance(absl::Seconds(16));
    ASSERT_TRUE(watch.WaitFor(2));
    EXPECT_THAT(watch.described(),
                ElementsAre("CHANGE_TYPE_ADDED carbon@carbon-1.grid.city:7443 "
                            "CHANGE_REASON_REGISTERED",
                            "CHANGE_TYPE_REMOVED carbon@carbon-1.grid.city:7443 "
                            "CHANGE_REASON_LEASE_EXPIRED"));

    (*plugin)->Drain();
    EXPECT_EQ(watch.WaitForEnd().error_code(), grpc::StatusCode::UNAVAILABLE);
  }
  (*plugin)->Stop();
}

TEST(RegistryPlugin, RejectsABadConfigNamingTheKey) {
  PluginRegistry plugins;
  ASSERT_TRUE(RegisterRegistryPlugin(plugins).ok());
  auto plugin = plugins.Create("registry");
  ASSERT_TRUE(plugin.ok());
  auto section = ConfigNode::LoadString("expiry_intervall: 1s\n", "node.yaml");
  ASSERT_TRUE(section.ok());
  absl::Status s = (*plugin)->Configure(*section);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), HasSubstr("expiry_intervall"));
}

}  // namespace
}  // namespace cityos
