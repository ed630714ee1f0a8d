// File: cityos/ca.h
//
// The city certificate authority: a root CA on disk that issues the X.509
// certificates every mesh participant proves itself with, and revokes them.
//
//   CITYOS_ASSIGN_OR_RETURN(auto ca, CityCa::Create("/etc/cityos/ca",
//   "quzhou.city")); CITYOS_ASSIGN_OR_RETURN(CertRecord meters, ca->Issue({
//       .org = "grid", .kind = PrincipalKind::kService, .name = "meters",
//       .dns_names = {"localhost"}, .ip_addresses = {"127.0.0.1"},
//       .out = "/etc/cityos/certs/meters"}));   // meters.pem, meters.key
//       (0600)
//   CITYOS_RETURN_IF_ERROR(ca->Revoke(meters.serial,
//   RevocationReason::kKeyCompromise));
//
// Each certificate names exactly one principal, as its only URI SAN:
//   spiffe://<trust-domain>/org/<org>/svc/<name>    a service
//   spiffe://<trust-domain>/org/<org>/user/<id>     a person or an app
// Roles travel in a non-critical extension (kRolesExtensionOid) holding a
// UTF8String "role1,role2". Keys are ECDSA P-256; signatures ECDSA-SHA256.
//
// On-disk layout of a CA directory (see docs/security.md):
//   ca.pem      the root certificate (public, 0644)
//   ca.key      its private key, PKCS#8 PEM, unencrypted (0600)
//   index.json  issued and revoked certificates (0600)
//   crl.pem     the signed revocation list, rewritten on every revocation
//   ca.lock     flock(2) target that serialises writers across processes
#ifndef CITYOS_CA_H_
#define CITYOS_CA_H_

#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "cityos/principal.h"

namespace cityos {

// OID of the roles extension: 2.25.<UUID d3b71fd3-0b43-41f3-9b8e-220748e42129
// as an integer> (ITU-T X.667 arc; needs no registration). Its extnValue is a
// DER UTF8String: roles separated by commas, no spaces. Never critical.
inline constexpr char kRolesExtensionOid[] =
    "2.25.281417942911054770935820851436255977769";

// Why a certificate was revoked (the RFC 5280 CRLReason codes we use).
enum class RevocationReason {
  kUnspecified = 0,
  kKeyCompromise = 1,
  kAffiliationChanged = 3,
  kSuperseded = 4,
  kCessationOfOperation = 5,
};

// "unspecified", "key-compromise", "affiliation-changed", "superseded",
// "cessation-of-operation".
const char* RevocationReasonName(RevocationReason reason);
// The inverse of RevocationReasonName; INVALID_ARGUMENT listing the names.
absl::StatusOr<RevocationReason> ParseRevocationReason(std::string_view name);

// What to issue. Designated initialisers; unset fields take their defaults.
struct CertSpec {
  // The organisation the principal belongs to. Required; 1-128 characters of
  // [A-Za-z0-9._-].
  std::string org;
  // Service or person/app. Default: service.
  PrincipalKind kind = PrincipalKind::kService;
  // Service name or user id. Required; same characters as `org`.
  std::string name;
  // Roles, each 1-64 characters of [a-z0-9._-]. Default: none (then the
  // certificate has no roles extension).
  std::vector<std::string> roles;
  // Extra SANs for servers, e.g. {"localhost"} and {"127.0.0.1", "::1"}.
  // Default: none.
  std::vector<std::string> dns_names;
  std::vector<std::string> ip_addresses;
  // Validity. Default: not_before = now - 5 minutes (clock skew),
  // not_after = not_before + validity. Set both to make, say, an expired
  // certificate in a test.
  std::optional<absl::Time> not_before;
  std::optional<absl::Time> not_after;
  // Default: 90 days.
  absl::Duration validity = absl::Hours(24 * 90);
  // Output path prefix: writes `<out>.pem` (0644) and `<out>.key` (0600),
  // creating the parent directory (0700) if needed. Required.
  std::string out;
};

// One certificate the CA issued, as recorded in its index.
struct CertRecord {
  // Serial number, uppercase hex without leading zeros (as OpenSSL prints).
  std::string serial;
  std::string spiffe_id;
  std::vector<std::string> roles;
  absl::Time not_before = absl::InfinitePast();
  absl::Time not_after = absl::InfinitePast();
  absl::Time issued_at = absl::InfinitePast();
  // Absolute path of the certificate file written at issue time.
  std::string cert_file;
  bool revoked = false;
  absl::Time revoked_at = absl::InfinitePast();
  RevocationReason reason = RevocationReason::kUnspecified;
};

// Facts read from a certificate (no verification: see cityos/tls.h for that).
struct CertificateInfo {
  std::string serial;   // uppercase hex
  std::string subject;  // RFC 2253 form, e.g. "CN=meters,O=grid"
  std::string issuer;
  std::vector<std::string> uris;  // URI SANs
  std::vector<std::string> dns_names;
  std::vector<std::string> ip_addresses;
  std::vector<std::string> roles;  // from the roles extension
  absl::Time not_before = absl::InfinitePast();
  absl::Time not_after = absl::InfinitePast();
  bool is_ca = false;
};

// Parses the first certificate of a PEM text. INVALID_ARGUMENT if there is
// none or it is malformed (including a malformed roles extension).
absl::StatusOr<CertificateInfo> ParseCertificatePem(std::string_view pem);

// A city CA rooted in a directory. Thread-safe; writers (Issue, Revoke,
// WriteCrl) are also serialised across processes by flock(2) on ca.lock and
// re-read the index under the lock, so cityosctl and a node may share a CA.
class CityCa {
 public:
  // Creates a new CA in `dir` (created 0700 if missing): a self-signed root
  // for `trust_domain` valid for `validity`, an empty index and an empty
  // CRL. ALREADY_EXISTS if `dir` already holds ca.pem or ca.key;
  // INVALID_ARGUMENT for a bad trust domain.
  static absl::StatusOr<std::unique_ptr<CityCa>> Create(
      const std::string& dir, std::string_view trust_domain,
      absl::Duration validity = absl::Hours(24 * 3650));
  // Opens an existing CA. NOT_FOUND if `dir` has no ca.pem; DATA_LOSS if a
  // file is corrupt or the key does not match the certificate.
  static absl::StatusOr<std::unique_ptr<CityCa>> Open(const std::string& dir);

  virtual ~CityCa() = default;

  virtual const std::string& trust_domain() const = 0;
  // Absolute paths of the root certificate and of the CRL.
  virtual std::string ca_file() const = 0;
  virtual std::string crl_file() const = 0;

  // Issues a certificate and key for `spec` and records it. INVALID_ARGUMENT
  // naming the field that is wrong. The key is written before the
  // certificate, each atomically, so a reader never pairs a new certificate
  // with an old key for long; gRPC's file watcher rejects mismatched pairs.
  virtual absl::StatusOr<CertRecord> Issue(const CertSpec& spec) = 0;

  // Revokes the certificate with `serial` (hex, any case) and rewrites
  // crl.pem. NOT_FOUND if this CA did not issue it; revoking twice is OK
  // (the first revocation stands).
  virtual absl::Status Revoke(std::string_view serial,
                              RevocationReason reason) = 0;

  // Re-signs crl.pem with a fresh next-update (now + 30 days). Revoke does
  // this too; run it periodically if nothing is revoked for weeks.
  virtual absl::Status WriteCrl() = 0;

  // Every certificate issued, oldest first, with revocation state.
  virtual absl::StatusOr<std::vector<CertRecord>> List() const = 0;
};

// A development PKI for `node.tls: auto`, kept in `dir` (e.g.
// <data_dir>/pki):
//   ca/                  a CityCa for `trust_domain`
//   node.pem, node.key   spiffe://<td>/org/<org>/svc/cityosd, with DNS
//                        localhost, IP 127.0.0.1 and `listen_host` as SANs
//   admin.pem, admin.key spiffe://<td>/org/<org>/user/admin, role "admin"
struct DevPkiOptions {
  std::string dir;
  std::string trust_domain;
  // Default: "city".
  std::string org = "city";
  // Host part of the node's listen address; added as a SAN unless it is a
  // wildcard (0.0.0.0, ::) or already there. Default: none.
  std::string listen_host;
};

struct DevPki {
  std::string ca_file, crl_file;
  std::string node_cert_file, node_key_file;
  std::string admin_cert_file, admin_key_file;
  std::string node_spiffe_id;
  // True if anything was created on this call.
  bool created = false;
};

// Creates what is missing and reuses what is there: the CA on first use; the
// node certificate if absent, unreadable, not from this CA, expiring within
// 7 days or lacking `listen_host`; the admin certificate if absent or
// expiring within 7 days. FAILED_PRECONDITION if `dir` holds a CA for another
// trust domain.
absl::StatusOr<DevPki> EnsureDevPki(const DevPkiOptions& options);

}  // namespace cityos

#endif  // CITYOS_CA_H_
