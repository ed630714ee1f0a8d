// File: cityos/tls.h
//
// Mutual TLS for every gRPC hop of the mesh, the one helper that tells a
// handler who is calling, and the client context file (cityosctl's
// "kubeconfig").
//
//   TlsConfig tls{.ca_file = "ca.pem", .cert_file = "meters.pem",
//                 .key_file = "meters.key", .crl_file = "crl.pem",
//                 .trust_domain = "quzhou.city"};
//   CITYOS_ASSIGN_OR_RETURN(auto creds, MakeServerCredentials(tls));
//   builder.AddListeningPort("127.0.0.1:7443", creds);
//   ...
//   grpc::Status Publish(grpc::ServerContext* ctx, ...) override {
//     absl::StatusOr<Principal> caller = PeerPrincipal(*ctx);
//     if (!caller.ok()) return ToGrpcStatus(caller.status());  //
//     UNAUTHENTICATED
//     ...
//   }
//
//   CITYOS_ASSIGN_OR_RETURN(auto channel_creds, MakeChannelCredentials(
//       tls, "spiffe://quzhou.city/org/city/svc/cityosd"));
//
// What a handshake checks, on both sides (docs/security.md):
//   - the peer presents a certificate (servers require client certificates);
//   - it chains to a CA in `ca_file`, is within its validity period and is
//     meant for its role (extended key usage clientAuth / serverAuth);
//   - its serial is not on the CRL in `crl_file` (if configured);
//   - it has exactly one URI SAN, a valid SPIFFE id in `trust_domain`;
//   - (clients) it is `expected_server`, if given.
// Every refusal is logged as a warning: component "mesh", message
// "peer refused", fields reason, peer (SPIFFE id or subject), side. No key
// material and no certificate bodies are logged.
//
// Files are re-read while running: the certificate, key and CA every
// `reload_interval` (new handshakes use the new ones; established
// connections keep theirs), and the CA and CRL whenever their files change
// (checked on each handshake and, at most once a second, by PeerPrincipal —
// so a revocation also cuts callers on established connections).
#ifndef CITYOS_TLS_H_
#define CITYOS_TLS_H_

#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "cityos/principal.h"

namespace grpc {
class ChannelCredentials;
class ServerContextBase;
class ServerCredentials;
}  // namespace grpc

namespace cityos {

// Where a process finds its identity and what it trusts.
struct TlsConfig {
  // PEM bundle of trusted CA certificates (usually the city CA's ca.pem).
  // Required.
  std::string ca_file;
  // This process's certificate (PEM) and its private key (PEM, unencrypted,
  // mode 0600). Required.
  std::string cert_file;
  std::string key_file;
  // PEM CRL(s) signed by a CA in `ca_file`. Default: none (no revocation
  // checking).
  std::string crl_file;
  // Peers must have SPIFFE ids in this trust domain. Required.
  std::string trust_domain;
  // How often cert_file, key_file and ca_file are re-read for rotation
  // (whole seconds, at least 1). Default: 10 s.
  absl::Duration reload_interval = absl::Seconds(10);
};

// Reads and checks everything `config` names: files readable, certificate
// and key parse and match, the certificate chains to `ca_file`, its SPIFFE
// id is in `trust_domain`, the CRL (if any) is signed by the CA.
// INVALID_ARGUMENT / NOT_FOUND naming the file.
absl::Status CheckTlsConfig(const TlsConfig& config);

// Server credentials requiring and verifying client certificates as above.
// Runs CheckTlsConfig first.
absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> MakeServerCredentials(
    const TlsConfig& config);

// Channel credentials presenting this process's certificate and verifying
// the server as above; with `expected_server`, the server's SPIFFE id must
// equal it. Host names are not checked (the SPIFFE id is the identity).
// Runs CheckTlsConfig first.
absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>>
MakeChannelCredentials(
    const TlsConfig& config,
    std::optional<std::string> expected_server = std::nullopt);

// The caller of an RPC served with MakeServerCredentials: the principal of
// its verified client certificate (trust domain, org, kind, name) with the
// roles of the certificate's roles extension. UNAUTHENTICATED if the call
// has no verified certificate (plaintext, or a server built with other
// credentials), or if the certificate has since been revoked or expired.
// Parsed certificates are cached by the SHA-256 of their PEM (bounded).
// Thread-safe. Takes the context of either server API (sync or callback).
absl::StatusOr<Principal> PeerPrincipal(const grpc::ServerContextBase& call);

// ---- Client contexts --------------------------------------------------
//
// A YAML file naming the nodes a client can talk to (docs/security.md):
//
//   current-context: demo-city
//   contexts:
//     - name: demo-city
//       endpoint: 127.0.0.1:7443
//       trust_domain: demo.city
//       ca: /abs/path/pki/ca/ca.pem
//       cert: /abs/path/pki/admin.pem
//       key: /abs/path/pki/admin.key
//       server_id: spiffe://demo.city/org/city/svc/cityosd   # optional

struct ClientContext {
  std::string name;
  // host:port of the node's gRPC server.
  std::string endpoint;
  std::string trust_domain;
  // Absolute paths.
  std::string ca;
  std::string cert;
  std::string key;
  // The server's expected SPIFFE id. Default: empty (any server of
  // trust_domain).
  std::string server_id;
};

struct ClientConfig {
  std::string current_context;
  std::vector<ClientContext> contexts;
};

// $CITYOS_CONFIG if set and non-empty, else $HOME/.config/cityos/config.yaml.
// FAILED_PRECONDITION if neither variable is set.
absl::StatusOr<std::string> ClientConfigPath();

// Reads a context file. NOT_FOUND if it does not exist; INVALID_ARGUMENT
// naming file, line and key for bad content.
absl::StatusOr<ClientConfig> LoadClientConfig(const std::string& path);

// Adds `context` to the file at `path`, replacing a context of the same name
// and keeping the others (and unknown keys); with `make_current` it becomes
// current-context. Creates the parent directory (0700); the file is written
// atomically with mode 0600.
absl::Status SaveClientContext(const std::string& path,
                               const ClientContext& context,
                               bool make_current = true);

// The TlsConfig a client uses for `context` (no CRL).
TlsConfig TlsConfigFor(const ClientContext& context);

}  // namespace cityos

#endif  // CITYOS_TLS_H_
