// mTLS credentials, the SPIFFE verifier and PeerPrincipal (cityos/tls.h).
#include "cityos/tls.h"

#include <grpcpp/grpcpp.h>
#include <grpcpp/security/credentials.h>
#include <grpcpp/security/server_credentials.h>
#include <grpcpp/security/tls_certificate_provider.h>
#include <grpcpp/security/tls_certificate_verifier.h>
#include <grpcpp/security/tls_credentials_options.h>
#include <openssl/err.h>
#include <openssl/x509.h>

#include <algorithm>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "cityos/logging.h"
#include "cityos/status.h"
#include "core/file_util.h"
#include "core/strings.h"
#include "mesh/trust_store.h"
#include "mesh/x509_util.h"

namespace cityos {

using mesh_internal::PeerRole;
using mesh_internal::PeerVerdict;
using mesh_internal::TrustStore;

namespace {

constexpr size_t kMaxCachedPeers = 4096;

// What PeerPrincipal knows: the server-side trust stores alive in this
// process, and the certificates they accepted, by SHA-256 of the PEM.
class PeerRegistry {
 public:
  struct Peer {
    Principal principal;
    std::string serial;
    std::string issuer_key;
    absl::Time not_after;
  };

  static PeerRegistry& Get() {
    static PeerRegistry* registry = new PeerRegistry();
    return *registry;
  }

  void AddStore(const std::shared_ptr<TrustStore>& store) {
    absl::MutexLock lock(&mu_);
    stores_.erase(std::remove_if(stores_.begin(), stores_.end(),
                                 [](const std::weak_ptr<TrustStore>& w) {
                                   return w.expired();
                                 }),
                  stores_.end());
    stores_.push_back(store);
  }

  std::vector<std::shared_ptr<TrustStore>> Stores() {
    absl::MutexLock lock(&mu_);
    std::vector<std::shared_ptr<TrustStore>> out;
    for (const auto& w : stores_) {
      if (auto s = w.lock()) out.push_back(std::move(s));
    }
    return out;
  }

  void Remember(const std::string& pem_hash, const PeerVerdict& v) {
    auto peer = std::make_shared<const Peer>(
        Peer{v.principal, v.serial, v.issuer_key, v.not_after});
    absl::MutexLock lock(&mu_);
    if (peers_.size() >= kMaxCachedPeers) peers_.clear();
    peers_[pem_hash] = std::move(peer);
  }

  std::shared_ptr<const Peer> Find(const std::string& pem_hash) {
    absl::MutexLock lock(&mu_);
    auto it = peers_.find(pem_hash);
    return it == peers_.end() ? nullptr : it->second;
  }

 private:
  absl::Mutex mu_;
  std::vector<std::weak_ptr<TrustStore>> stores_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, std::shared_ptr<const Peer>> peers_
      ABSL_GUARDED_BY(mu_);
};

void LogRefusal(const PeerVerdict& v, PeerRole role) {
  LogWarn("mesh", "peer refused",
          {{"reason", v.reason},
           {"peer", v.peer},
           {"serial", v.serial},
           {"side", role == PeerRole::kClient ? "server" : "client"}});
}

// Runs the checks of cityos/tls.h after each TLS handshake.
class SpiffeVerifier final
    : public grpc::experimental::ExternalCertificateVerifier {
 public:
  SpiffeVerifier(std::shared_ptr<TrustStore> store, PeerRole role,
                 std::optional<std::string> expected)
      : store_(std::move(store)), role_(role), expected_(std::move(expected)) {}

  bool Verify(grpc::experimental::TlsCustomVerificationCheckRequest* request,
              std::function<void(grpc::Status)> /*callback*/,
              grpc::Status* sync_status) override {
    grpc::string_ref pem_ref = request->peer_cert();
    std::string_view pem(pem_ref.data(), pem_ref.size());
    PeerVerdict v = store_->Verify(pem, role_, expected_);
    if (!v.ok) {
      LogRefusal(v, role_);
      *sync_status = grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                                  absl::StrCat("peer refused: ", v.reason));
      return true;
    }
    if (role_ == PeerRole::kClient) {
      PeerRegistry::Get().Remember(mesh_internal::Sha256Hex(pem), v);
    }
    *sync_status = grpc::Status::OK;
    return true;
  }

  void Cancel(grpc::experimental::TlsCustomVerificationCheckRequest*) override {
  }

 private:
  const std::shared_ptr<TrustStore> store_;
  const PeerRole role_;
  const std::optional<std::string> expected_;
};

unsigned int RefreshSeconds(const TlsConfig& config) {
  int64_t s = absl::ToInt64Seconds(config.reload_interval);
  return static_cast<unsigned int>(std::clamp<int64_t>(s, 1, 86400));
}

}  // namespace

absl::Status CheckTlsConfig(const TlsConfig& config) {
  if (config.ca_file.empty())
    return absl::InvalidArgumentError("tls: ca file is not set");
  if (config.cert_file.empty())
    return absl::InvalidArgumentError("tls: cert file is not set");
  if (config.key_file.empty())
    return absl::InvalidArgumentError("tls: key file is not set");
  if (!Principal::FromSpiffeId(
           absl::StrCat("spiffe://", config.trust_domain, "/org/x/svc/x"))
           .ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("tls: trust domain \"", config.trust_domain,
                     "\" is empty or has illegal characters"));
  }
  CITYOS_ASSIGN_OR_RETURN(std::string cert_pem,
                          ReadFileToString(config.cert_file));
  CITYOS_ASSIGN_OR_RETURN(std::string key_pem,
                          ReadFileToString(config.key_file));
  auto certs = mesh_internal::ParseCertsPem(cert_pem);
  if (!certs.ok())
    return Annotate(certs.status(), "cert file " + config.cert_file);
  auto key = mesh_internal::ParseKeyPem(key_pem);
  if (!key.ok()) return Annotate(key.status(), "key file " + config.key_file);
  if (X509_check_private_key((*certs)[0].get(), key->get()) != 1) {
    ERR_clear_error();
    return absl::InvalidArgumentError(absl::StrCat("key file ", config.key_file,
                                                   " does not match cert file ",
                                                   config.cert_file));
  }
  CITYOS_ASSIGN_OR_RETURN(
      auto store,
      TrustStore::Open(config.ca_file, config.crl_file, config.trust_domain));
  // Our own certificate must pass the checks peers will apply to it.
  PeerVerdict v = store->Verify(cert_pem, PeerRole::kClient, std::nullopt);
  if (!v.ok) {
    return absl::InvalidArgumentError(absl::StrCat(
        "cert file ", config.cert_file, ": ", v.reason, " (", v.peer, ")"));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> MakeServerCredentials(
    const TlsConfig& config) {
  CITYOS_RETURN_IF_ERROR(CheckTlsConfig(config));
  CITYOS_ASSIGN_OR_RETURN(
      auto store,
      TrustStore::Open(config.ca_file, config.crl_file, config.trust_domain));
  PeerRegistry::Get().AddStore(store);
  auto provider =
      std::make_shared<grpc::experimental::FileWatcherCertificateProvider>(
          config.key_file, config.cert_file, config.ca_file,
          RefreshSeconds(config));
  grpc::experimental::TlsServerCredentialsOptions options(provider);
  options.watch_root_certs();
  options.watch_identity_key_cert_pairs();
  // The handshake asks for a client certificate but leaves every decision to
  // SpiffeVerifier, so that each refusal (also "no certificate", "unknown
  // CA", "expired") is ours to log. It refuses a missing certificate.
  options.set_cert_request_type(
      GRPC_SSL_REQUEST_CLIENT_CERTIFICATE_BUT_DONT_VERIFY);
  options.set_certificate_verifier(
      grpc::experimental::ExternalCertificateVerifier::Create<SpiffeVerifier>(
          store, PeerRole::kClient, std::nullopt));
  return grpc::experimental::TlsServerCredentials(options);
}

absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>>
MakeChannelCredentials(const TlsConfig& config,
                       std::optional<std::string> expected_server) {
  CITYOS_RETURN_IF_ERROR(CheckTlsConfig(config));
  if (expected_server.has_value()) {
    auto p = Principal::FromSpiffeId(*expected_server);
    if (!p.ok()) return Annotate(p.status(), "expected server");
  }
  CITYOS_ASSIGN_OR_RETURN(
      auto store,
      TrustStore::Open(config.ca_file, config.crl_file, config.trust_domain));
  auto provider =
      std::make_shared<grpc::experimental::FileWatcherCertificateProvider>(
          config.key_file, config.cert_file, config.ca_file,
          RefreshSeconds(config));
  grpc::experimental::TlsChannelCredentialsOptions options;
  options.set_certificate_provider(provider);
  options.watch_root_certs();
  options.watch_identity_key_cert_pairs();
  // SpiffeVerifier does the chain, CRL and identity checks (see above); the
  // SPIFFE id, not the host name, is the server's identity.
  options.set_verify_server_certs(false);
  options.set_check_call_host(false);
  options.set_certificate_verifier(
      grpc::experimental::ExternalCertificateVerifier::Create<SpiffeVerifier>(
          store, PeerRole::kServer, std::move(expected_server)));
  std::shared_ptr<grpc::ChannelCredentials> creds =
      grpc::experimental::TlsCredentials(options);
  if (creds == nullptr)
    return absl::InternalError("gRPC refused the TLS channel options");
  return creds;
}

absl::StatusOr<Principal> PeerPrincipal(const grpc::ServerContextBase& call) {
  std::shared_ptr<const grpc::AuthContext> auth = call.auth_context();
  std::vector<grpc::string_ref> pems =
      auth == nullptr
          ? std::vector<grpc::string_ref>{}
          : auth->FindPropertyValues(GRPC_X509_PEM_CERT_PROPERTY_NAME);
  if (pems.empty()) {
    return absl::UnauthenticatedError(
        "no verified client certificate (the connection is not mutual TLS)");
  }
  std::string_view pem(pems[0].data(), pems[0].size());
  std::string hash = mesh_internal::Sha256Hex(pem);
  PeerRegistry& registry = PeerRegistry::Get();
  std::vector<std::shared_ptr<TrustStore>> stores = registry.Stores();
  auto peer = registry.Find(hash);
  if (peer == nullptr) {
    // Not seen yet (or evicted from the cache): verify it again.
    PeerVerdict last;
    last.reason = "no mTLS server credentials in this process";
    for (const auto& store : stores) {
      last = store->Verify(pem, PeerRole::kClient, std::nullopt);
      if (last.ok) break;
    }
    if (!last.ok) {
      LogRefusal(last, PeerRole::kClient);
      return absl::UnauthenticatedError(
          absl::StrCat("peer refused: ", last.reason));
    }
    registry.Remember(hash, last);
    peer = registry.Find(hash);
    if (peer == nullptr) return last.principal;
  }
  for (const auto& store : stores) {
    if (store->IsRevoked(peer->issuer_key, peer->serial)) {
      PeerVerdict v;
      v.reason =
          absl::StrCat("certificate revoked (serial ", peer->serial, ")");
      v.peer = peer->principal.SpiffeId();
      v.serial = peer->serial;
      LogRefusal(v, PeerRole::kClient);
      return absl::UnauthenticatedError(
          absl::StrCat("peer refused: ", v.reason));
    }
  }
  if (peer->not_after < absl::Now()) {
    return absl::UnauthenticatedError("peer refused: certificate has expired");
  }
  return peer->principal;
}

}  // namespace cityos
