// File: cityos/signing.h
//
// Ed25519 signing keys (OpenSSL), for audit checkpoints and consent receipts.
//
//   CITYOS_ASSIGN_OR_RETURN(auto key, SigningKey::LoadOrCreate("/var/lib/cityos/audit/signing.key"));
//   std::string sig = key->Sign(message);
//   CITYOS_RETURN_IF_ERROR(VerifyEd25519(key->public_key_pem(), message, sig));
#ifndef CITYOS_SIGNING_H_
#define CITYOS_SIGNING_H_

#include <memory>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace cityos {

class SigningKey {
 public:
  // Reads a PEM (PKCS#8) Ed25519 private key; creates one (mode 0600, and
  // `<path>.pub` with the public key PEM, mode 0644) when `path` is missing.
  // INVALID_ARGUMENT when the file is not an Ed25519 key;
  // FAILED_PRECONDITION when it is readable by group or others.
  static absl::StatusOr<std::unique_ptr<SigningKey>> LoadOrCreate(const std::string& path);
  // A fresh key, in memory only (tests).
  static absl::StatusOr<std::unique_ptr<SigningKey>> Generate();
  virtual ~SigningKey() = default;

  // 64-byte signature. Thread-safe.
  virtual std::string Sign(std::string_view message) const = 0;
  // Raw 32-byte public key, its PEM (SubjectPublicKeyInfo), and its id:
  // lower-case hex SHA-256 of the raw key.
  virtual std::string public_key_raw() const = 0;
  virtual std::string public_key_pem() const = 0;
  virtual std::string key_id() const = 0;
};

// OK, or UNAUTHENTICATED when the signature does not verify;
// INVALID_ARGUMENT when the key is not an Ed25519 public key (PEM or raw 32
// bytes).
absl::Status VerifyEd25519(std::string_view public_key, std::string_view message,
                           std::string_view signature);
// Lower-case hex SHA-256 of `data`.
std::string Sha256Hex(std::string_view data);

}  // namespace cityos

#endif  // CITYOS_SIGNING_H_
