// mTLS on a real gRPC server on loopback: who gets in, who is refused (and
// that the refusal is logged with its reason), revocation and rotation while
// the server runs.
#include "cityos/tls.h"

#include <fcntl.h>
#include <gmock/gmock.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/security/tls_certificate_provider.h>
#include <grpcpp/security/tls_certificate_verifier.h>
#include <grpcpp/security/tls_credentials_options.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>

#include "absl/strings/str_join.h"
#include "cityos/bus/v1/bus.grpc.pb.h"
#include "cityos/ca.h"
#include "cityos/grpc_util.h"
#include "testutil.h"

namespace cityos {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

constexpr char kTd[] = "quzhou.city";
constexpr char kServerId[] = "spiffe://quzhou.city/org/grid/svc/server";

// Reports the caller's principal: config.name = SPIFFE id, subjects = roles.
class WhoAmIService final : public bus::v1::BusService::Service {
 public:
  grpc::Status GetStream(grpc::ServerContext* ctx,
                         const bus::v1::GetStreamRequest*,
                         bus::v1::GetStreamResponse* response) override {
    absl::StatusOr<Principal> caller = PeerPrincipal(*ctx);
    if (!caller.ok()) return ToGrpcStatus(caller.status());
    auto* config = response->mutable_stream()->mutable_config();
    config->set_name(caller->SpiffeId());
    for (const std::string& r : caller->roles) config->add_subjects(r);
    return grpc::Status::OK;
  }
};

struct CallResult {
  grpc::Status status;
  std::string spiffe_id;
  std::vector<std::string> roles;
  std::string server_serial;  // of the certificate the server presented
};

CallResult WhoAmI(const std::shared_ptr<grpc::Channel>& channel) {
  auto stub = bus::v1::BusService::NewStub(channel);
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
  bus::v1::GetStreamRequest req;
  bus::v1::GetStreamResponse resp;
  CallResult r;
  r.status = stub->GetStream(&ctx, req, &resp);
  r.spiffe_id = resp.stream().config().name();
  r.roles.assign(resp.stream().config().subjects().begin(),
                 resp.stream().config().subjects().end());
  if (auto auth = ctx.auth_context(); auth != nullptr) {
    auto pems = auth->FindPropertyValues("x509_pem_cert");
    if (!pems.empty()) {
      auto info =
          ParseCertificatePem(std::string(pems[0].data(), pems[0].size()));
      if (info.ok()) r.server_serial = info->serial;
    }
  }
  return r;
}

grpc::ChannelArguments FreshConnectionArgs() {
  grpc::ChannelArguments args;
  // A channel of its own connection (no sharing of subchannels across
  // channels), so "a new connection" means one.
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  return args;
}

// A TLS client that trusts `ca_pem` and presents `cert_pem`/`key_pem` (or no
// certificate), built straight from gRPC without our checks, so the server
// alone must refuse what it should.
std::shared_ptr<grpc::Channel> RawChannel(const std::string& target,
                                          const std::string& ca_pem,
                                          const std::string& cert_pem = "",
                                          const std::string& key_pem = "") {
  std::vector<grpc::experimental::IdentityKeyCertPair> pairs;
  if (!cert_pem.empty()) pairs.push_back({key_pem, cert_pem});
  auto provider =
      std::make_shared<grpc::experimental::StaticDataCertificateProvider>(
          ca_pem, pairs);
  grpc::experimental::TlsChannelCredentialsOptions options;
  options.set_certificate_provider(provider);
  options.watch_root_certs();
  if (!pairs.empty()) options.watch_identity_key_cert_pairs();
  options.set_verify_server_certs(false);
  options.set_check_call_host(false);
  options.set_certificate_verifier(
      std::make_shared<grpc::experimental::NoOpCertificateVerifier>());
  return grpc::CreateCustomChannel(target,
                                   grpc::experimental::TlsCredentials(options),
                                   FreshConnectionArgs());
}

class TlsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    capture_ = std::make_unique<testing::StderrCapture>(dir_.File("stderr.log"));
    auto ca = CityCa::Create(dir_.File("ca"), kTd);
    ASSERT_TRUE(ca.ok()) << ca.status();
    ca_ = *std::move(ca);
    // A partner CA the server also trusts (federation), whose certificates
    // are in another trust domain.
    auto partner = CityCa::Create(dir_.File("partner"), "partner.city");
    ASSERT_TRUE(partner.ok());
    partner_ = *std::move(partner);
    testing::WriteFile(dir_.File("bundle.pem"),
                       testing::ReadFile(ca_->ca_file()) +
                           testing::ReadFile(partner_->ca_file()));
    auto server = ca_->Issue({.org = "grid",
                              .name = "server",
                              .ip_addresses = {"127.0.0.1"},
                              .out = dir_.File("server")});
    ASSERT_TRUE(server.ok()) << server.status();
    server_serial_ = server->serial;
    auto meters = ca_->Issue({.org = "grid",
                              .name = "meters",
                              .roles = {"metering", "reader"},
                              .out = dir_.File("meters")});
    ASSERT_TRUE(meters.ok());
    meters_serial_ = meters->serial;

    server_tls_ = {.ca_file = dir_.File("bundle.pem"),
                   .cert_file = dir_.File("server.pem"),
                   .key_file = dir_.File("server.key"),
                   .crl_file = ca_->crl_file(),
                   .trust_domain = kTd,
                   .reload_interval = absl::Seconds(1)};
    auto creds = MakeServerCredentials(server_tls_);
    ASSERT_TRUE(creds.ok()) << creds.status();
    grpc::ServerBuilder builder;
    int port = 0;
    builder.AddListeningPort("127.0.0.1:0", *creds, &port);
    builder.RegisterService(&service_);
    server_ = builder.BuildAndStart();
    ASSERT_NE(server_, nullptr);
    target_ = "127.0.0.1:" + std::to_string(port);
  }

  void TearDown() override {
    if (server_ != nullptr) server_->Shutdown();
    capture_.reset();
  }

  TlsConfig ClientTls(const std::string& name) {
    return {.ca_file = ca_->ca_file(),
            .cert_file = dir_.File(name + ".pem"),
            .key_file = dir_.File(name + ".key"),
            .trust_domain = kTd,
            .reload_interval = absl::Seconds(1)};
  }

  std::shared_ptr<grpc::Channel> Channel(
      const std::string& name,
      std::optional<std::string> expected = kServerId) {
    auto creds = MakeChannelCredentials(ClientTls(name), std::move(expected));
    EXPECT_TRUE(creds.ok()) << creds.status();
    if (!creds.ok()) return nullptr;
    return grpc::CreateCustomChannel(target_, *creds, FreshConnectionArgs());
  }

  std::shared_ptr<grpc::Channel> Raw(const std::string& name) {
    return RawChannel(target_, testing::ReadFile(ca_->ca_file()),
                      testing::ReadFile(dir_.File(name + ".pem")),
                      testing::ReadFile(dir_.File(name + ".key")));
  }

  testing::TempDir dir_;
  std::unique_ptr<testing::StderrCapture> capture_;
  std::unique_ptr<CityCa> ca_;
  std::unique_ptr<CityCa> partner_;
  std::string server_serial_, meters_serial_;
  TlsConfig server_tls_;
  WhoAmIService service_;
  std::unique_ptr<grpc::Server> server_;
  std::string target_;
};

TEST_F(TlsTest, ValidCertificateGivesTheHandlerItsPrincipal) {
  CallResult r = WhoAmI(Channel("meters"));
  ASSERT_TRUE(r.status.ok()) << r.status.error_message();
  EXPECT_EQ(r.spiffe_id, "spiffe://quzhou.city/org/grid/svc/meters");
  EXPECT_THAT(r.roles, ElementsAre("metering", "reader"));
  EXPECT_EQ(r.server_serial, server_serial_);

  // A person, through the client context path.
  ASSERT_TRUE(ca_->Issue({.org = "hospital",
                          .kind = PrincipalKind::kUser,
                          .name = "dr.chen",
                          .roles = {"admin"},
                          .out = dir_.File("chen")})
                  .ok());
  ClientContext ctx{.name = "t",
                    .endpoint = target_,
                    .trust_domain = kTd,
                    .ca = ca_->ca_file(),
                    .cert = dir_.File("chen.pem"),
                    .key = dir_.File("chen.key"),
                    .server_id = kServerId};
  auto creds = MakeChannelCredentials(TlsConfigFor(ctx), ctx.server_id);
  ASSERT_TRUE(creds.ok()) << creds.status();
  CallResult person =
      WhoAmI(grpc::CreateCustomChannel(target_, *creds, FreshConnectionArgs()));
  ASSERT_TRUE(person.status.ok()) << person.status.error_message();
  auto p = Principal::FromSpiffeId(person.spiffe_id);
  ASSERT_TRUE(p.ok());
  EXPECT_EQ(p->org, "hospital");
  EXPECT_EQ(p->kind, PrincipalKind::kUser);
  EXPECT_EQ(p->name, "dr.chen");
  EXPECT_THAT(person.roles, ElementsAre("admin"));
}

TEST_F(TlsTest, NoClientCertificateIsRefusedAndLogged) {
  CallResult r = WhoAmI(RawChannel(target_, testing::ReadFile(ca_->ca_file())));
  EXPECT_FALSE(r.status.ok());
  EXPECT_TRUE(capture_->WaitFor({"peer refused", "no certificate presented"}))
      << capture_->Text();
}

TEST_F(TlsTest, CertificateFromAnotherCaIsRefusedAndLogged) {
  auto rogue = CityCa::Create(dir_.File("rogue"),
                              kTd);  // same trust domain, not trusted
  ASSERT_TRUE(rogue.ok());
  ASSERT_TRUE((*rogue)
                  ->Issue({.org = "grid",
                           .name = "meters",
                           .out = dir_.File("rogue-meters")})
                  .ok());
  CallResult r = WhoAmI(Raw("rogue-meters"));
  EXPECT_FALSE(r.status.ok());
  EXPECT_TRUE(capture_->WaitFor({"peer refused",
                                 "unable to get local issuer certificate",
                                 "spiffe://quzhou.city/org/grid/svc/meters"}))
      << capture_->Text();
}

TEST_F(TlsTest, ExpiredCertificateIsRefusedAndLogged) {
  ASSERT_TRUE(ca_->Issue({.org = "grid",
                          .name = "old",
                          .not_before = absl::Now() - absl::Hours(48),
                          .not_after = absl::Now() - absl::Hours(1),
                          .out = dir_.File("old")})
                  .ok());
  // Our own client refuses to even use it.
  auto creds = MakeChannelCredentials(ClientTls("old"), kServerId);
  EXPECT_THAT(creds.status().message(), HasSubstr("certificate has expired"));
  // A client that presents it anyway is refused by the server.
  CallResult r = WhoAmI(Raw("old"));
  EXPECT_FALSE(r.status.ok());
  EXPECT_TRUE(capture_->WaitFor({"peer refused", "certificate has expired",
                                 "spiffe://quzhou.city/org/grid/svc/old"}))
      << capture_->Text();
}

TEST_F(TlsTest, CertificateFromAnotherTrustDomainIsRefusedAndLogged) {
  ASSERT_TRUE(partner_
                  ->Issue({.org = "grid",
                           .name = "meters",
                           .out = dir_.File("partner-meters")})
                  .ok());
  CallResult r = WhoAmI(Raw("partner-meters"));
  EXPECT_FALSE(r.status.ok());
  EXPECT_TRUE(
      capture_->WaitFor(
          {"peer refused",
           "trust domain \\\"partner.city\\\" is not \\\"quzhou.city\\\"",
           "spiffe://partner.city/org/grid/svc/meters"}) ||
      capture_->WaitFor({"peer refused", "trust domain \"partner.city\" is not",
                         "spiffe://partner.city/org/grid/svc/meters"}))
      << capture_->Text();
}

TEST_F(TlsTest, RevocationTakesEffectWithoutRestart) {
  auto before = Channel("meters");
  CallResult ok = WhoAmI(before);
  ASSERT_TRUE(ok.status.ok()) << ok.status.error_message();

  ASSERT_TRUE(
      ca_->Revoke(meters_serial_, RevocationReason::kKeyCompromise).ok());

  // New connections are refused at the handshake...
  CallResult fresh = WhoAmI(Channel("meters"));
  EXPECT_FALSE(fresh.status.ok());
  EXPECT_TRUE(capture_->WaitFor(
      {"peer refused", "certificate revoked (serial " + meters_serial_}))
      << capture_->Text();
  // ...and calls on the established connection are no longer authenticated
  // (PeerPrincipal re-reads a changed CRL at most once a second).
  absl::Time deadline = absl::Now() + absl::Seconds(20);
  CallResult existing;
  do {
    existing = WhoAmI(before);
    if (existing.status.error_code() == grpc::StatusCode::UNAUTHENTICATED)
      break;
    absl::SleepFor(absl::Milliseconds(100));
  } while (absl::Now() < deadline);
  EXPECT_EQ(existing.status.error_code(), grpc::StatusCode::UNAUTHENTICATED)
      << existing.status.error_message();
  EXPECT_THAT(existing.status.error_message(), HasSubstr("revoked"));

  // Other certificates are unaffected.
  ASSERT_TRUE(
      ca_->Issue(
             {.org = "grid", .name = "meters2", .out = dir_.File("meters2")})
          .ok());
  EXPECT_TRUE(WhoAmI(Channel("meters2")).status.ok());
}

TEST_F(TlsTest, ServerRotatesItsCertificateWhileConnected) {
  auto before = Channel("meters");
  CallResult first = WhoAmI(before);
  ASSERT_TRUE(first.status.ok()) << first.status.error_message();
  ASSERT_EQ(first.server_serial, server_serial_);

  // Replace the server's certificate and key on disk.
  auto rotated = ca_->Issue({.org = "grid",
                             .name = "server",
                             .ip_addresses = {"127.0.0.1"},
                             .out = dir_.File("server")});
  ASSERT_TRUE(rotated.ok());
  ASSERT_NE(rotated->serial, server_serial_);

  // New connections see the new certificate once the watcher re-read it.
  absl::Time deadline = absl::Now() + absl::Seconds(30);
  CallResult fresh;
  do {
    fresh = WhoAmI(Channel("meters"));
    if (fresh.status.ok() && fresh.server_serial == rotated->serial) break;
    absl::SleepFor(absl::Milliseconds(200));
  } while (absl::Now() < deadline);
  EXPECT_TRUE(fresh.status.ok()) << fresh.status.error_message();
  EXPECT_EQ(fresh.server_serial, rotated->serial);

  // The established connection keeps working.
  CallResult again = WhoAmI(before);
  EXPECT_TRUE(again.status.ok()) << again.status.error_message();
  EXPECT_EQ(again.spiffe_id, "spiffe://quzhou.city/org/grid/svc/meters");
}

TEST_F(TlsTest, ClientRefusesAServerThatIsNotTheExpectedOne) {
  CallResult r =
      WhoAmI(Channel("meters", "spiffe://quzhou.city/org/grid/svc/elsewhere"));
  EXPECT_FALSE(r.status.ok());
  EXPECT_TRUE(
      capture_->WaitFor({"peer refused", "side=client",
                         "server is not the expected "
                         "spiffe://quzhou.city/org/grid/svc/elsewhere"}))
      << capture_->Text();
  // Without an expectation, any server of the trust domain will do.
  EXPECT_TRUE(WhoAmI(Channel("meters", std::nullopt)).status.ok());
}

TEST_F(TlsTest, ClientRefusesAServerFromAnotherCa) {
  // An impostor with the right SPIFFE id, from a CA the client does not trust.
  auto rogue = CityCa::Create(dir_.File("rogue"), kTd);
  ASSERT_TRUE(rogue.ok());
  ASSERT_TRUE((*rogue)
                  ->Issue({.org = "grid",
                           .name = "server",
                           .ip_addresses = {"127.0.0.1"},
                           .out = dir_.File("impostor")})
                  .ok());
  auto creds = MakeServerCredentials({.ca_file = (*rogue)->ca_file(),
                                      .cert_file = dir_.File("impostor.pem"),
                                      .key_file = dir_.File("impostor.key"),
                                      .trust_domain = kTd});
  ASSERT_TRUE(creds.ok()) << creds.status();
  WhoAmIService service;
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort("127.0.0.1:0", *creds, &port);
  builder.RegisterService(&service);
  auto impostor = builder.BuildAndStart();
  ASSERT_NE(impostor, nullptr);
  auto channel_creds = MakeChannelCredentials(ClientTls("meters"), kServerId);
  ASSERT_TRUE(channel_creds.ok());
  CallResult r =
      WhoAmI(grpc::CreateCustomChannel("127.0.0.1:" + std::to_string(port),
                                       *channel_creds, FreshConnectionArgs()));
  EXPECT_FALSE(r.status.ok());
  EXPECT_TRUE(capture_->WaitFor({"peer refused", "side=client",
                                 "unable to get local issuer certificate"}))
      << capture_->Text();
  impostor->Shutdown();
}

TEST(TlsConfigCheck, NamesTheBadFile) {
  testing::TempDir dir;
  auto ca = CityCa::Create(dir.File("ca"), kTd);
  ASSERT_TRUE(ca.ok());
  ASSERT_TRUE(
      (*ca)->Issue({.org = "grid", .name = "a", .out = dir.File("a")}).ok());
  ASSERT_TRUE(
      (*ca)->Issue({.org = "grid", .name = "b", .out = dir.File("b")}).ok());
  TlsConfig good{.ca_file = (*ca)->ca_file(),
                 .cert_file = dir.File("a.pem"),
                 .key_file = dir.File("a.key"),
                 .crl_file = (*ca)->crl_file(),
                 .trust_domain = kTd};
  EXPECT_TRUE(CheckTlsConfig(good).ok());

  TlsConfig missing = good;
  missing.cert_file = dir.File("nope.pem");
  EXPECT_EQ(CheckTlsConfig(missing).code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(CheckTlsConfig(missing).message(), HasSubstr("nope.pem"));

  TlsConfig mismatched = good;
  mismatched.key_file = dir.File("b.key");
  EXPECT_THAT(CheckTlsConfig(mismatched).message(),
              HasSubstr("does not match"));

  TlsConfig other_domain = good;
  other_domain.trust_domain = "other.city";
  EXPECT_THAT(CheckTlsConfig(other_domain).message(),
              HasSubstr("trust domain"));

  TlsConfig bad_crl = good;
  testing::WriteFile(dir.File("bad-crl.pem"), "not a crl");
  bad_crl.crl_file = dir.File("bad-crl.pem");
  EXPECT_THAT(CheckTlsConfig(bad_crl).message(), HasSubstr("bad-crl.pem"));
}

TEST(PeerPrincipal, PlaintextCallIsUnauthenticated) {
  WhoAmIService service;
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(),
                           &port);
  builder.RegisterService(&service);
  auto server = builder.BuildAndStart();
  ASSERT_NE(server, nullptr);
  CallResult r = WhoAmI(grpc::CreateChannel(
      "127.0.0.1:" + std::to_string(port), grpc::InsecureChannelCredentials()));
  EXPECT_EQ(r.status.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  server->Shutdown();
}

}  // namespace
}  // namespace cityos
