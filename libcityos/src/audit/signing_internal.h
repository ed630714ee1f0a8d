// Internal: OpenSSL handles shared by signing.cc and the audit verifier, so
// that a verifier parses the public key once rather than per checkpoint.
#ifndef CITYOS_SRC_AUDIT_SIGNING_INTERNAL_H_
#define CITYOS_SRC_AUDIT_SIGNING_INTERNAL_H_

#include <openssl/evp.h>

#include <memory>
#include <string_view>

#include "absl/status/statusor.h"

namespace cityos::audit_internal {

struct PkeyDeleter {
  void operator()(EVP_PKEY* p) const { EVP_PKEY_free(p); }
};
using UniquePkey = std::unique_ptr<EVP_PKEY, PkeyDeleter>;

// An Ed25519 public key from PEM (SubjectPublicKeyInfo) or the raw 32 bytes.
// INVALID_ARGUMENT otherwise.
absl::StatusOr<UniquePkey> ParseEd25519PublicKey(std::string_view public_key);

// OK or UNAUTHENTICATED. `key` must be an Ed25519 key. Thread-safe.
absl::Status VerifyWithKey(EVP_PKEY* key, std::string_view message,
                           std::string_view signature);

// Raw 32-byte public key of an Ed25519 key (public or private).
std::string RawPublicKey(EVP_PKEY* key);

}  // namespace cityos::audit_internal

#endif  // CITYOS_SRC_AUDIT_SIGNING_INTERNAL_H_
