// Internal: OpenSSL 3 helpers shared by the CA and the mTLS verifier: owning
// pointers, PEM in and out, times, serials, the roles extension.
#ifndef CITYOS_SRC_MESH_X509_UTIL_H_
#define CITYOS_SRC_MESH_X509_UTIL_H_

#include <openssl/bio.h>
#include <openssl/evp.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace cityos::mesh_internal {

struct BioFree {
  void operator()(BIO* p) const { BIO_free_all(p); }
};
struct X509Free {
  void operator()(X509* p) const { X509_free(p); }
};
struct X509CrlFree {
  void operator()(X509_CRL* p) const { X509_CRL_free(p); }
};
struct PkeyFree {
  void operator()(EVP_PKEY* p) const { EVP_PKEY_free(p); }
};
struct StoreFree {
  void operator()(X509_STORE* p) const { X509_STORE_free(p); }
};

using BioPtr = std::unique_ptr<BIO, BioFree>;
using X509Ptr = std::unique_ptr<X509, X509Free>;
using X509CrlPtr = std::unique_ptr<X509_CRL, X509CrlFree>;
using PkeyPtr = std::unique_ptr<EVP_PKEY, PkeyFree>;
using StorePtr = std::unique_ptr<X509_STORE, StoreFree>;

// The oldest queued OpenSSL error as text (and clears the queue); "unknown
// error" if none.
std::string OpensslError();

// Every certificate of a PEM text, in order. INVALID_ARGUMENT if none.
absl::StatusOr<std::vector<X509Ptr>> ParseCertsPem(std::string_view pem);
absl::StatusOr<X509Ptr> ParseCertPem(std::string_view pem);
absl::StatusOr<PkeyPtr> ParseKeyPem(std::string_view pem);
// Every CRL of a PEM text, in order. INVALID_ARGUMENT if none.
absl::StatusOr<std::vector<X509CrlPtr>> ParseCrlsPem(std::string_view pem);

std::string CertToPem(X509* cert);
// PKCS#8, unencrypted.
std::string KeyToPem(EVP_PKEY* key);
std::string CrlToPem(X509_CRL* crl);

// A new ECDSA P-256 key.
absl::StatusOr<PkeyPtr> NewP256Key();

// Uppercase hex, as BN_bn2hex prints ("0" for zero).
std::string SerialHex(const ASN1_INTEGER* serial);
// Canonical form of a user-given serial: uppercase, leading zeros dropped.
// INVALID_ARGUMENT if it is not hex.
absl::StatusOr<std::string> CanonicalSerial(std::string_view hex);

absl::Time FromAsn1Time(const ASN1_TIME* t);
std::string NameToString(const X509_NAME* name);

// URI SANs of `cert`.
std::vector<std::string> UriSans(X509* cert);
// Roles from the roles extension; empty if absent. INVALID_ARGUMENT if the
// extension is malformed.
absl::StatusOr<std::vector<std::string>> RolesOf(X509* cert);
// Adds the roles extension (non-critical). REQUIRES: !roles.empty().
absl::Status AddRolesExtension(X509* cert,
                               const std::vector<std::string>& roles);

// Hex SHA-256 of `data`.
std::string Sha256Hex(std::string_view data);

}  // namespace cityos::mesh_internal

#endif  // CITYOS_SRC_MESH_X509_UTIL_H_
