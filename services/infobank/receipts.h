// Consent receipts (issue 6): Kantara Consent Receipt v1.1 payloads, signed as
// compact JWS (RFC 7515) with the bank's Ed25519 key (alg EdDSA, RFC 8037),
// and the ISO/IEC TS 27560 export of a consent.
//
//   CITYOS_ASSIGN_OR_RETURN(auto signer,
//       ReceiptSigner::Create(PluginDataDir("infobank") + "/receipt.key", controller));
//   CITYOS_ASSIGN_OR_RETURN(consent::v1::Receipt r,
//       signer->Issue(consent, consent::v1::RECEIPT_EVENT_GRANT, clock->Now()));
//   // anyone with the bank's public key:
//   CITYOS_ASSIGN_OR_RETURN(consent::v1::KantaraReceipt k,
//       VerifyReceiptJws(r.jws(), signer->public_key_pem()));
//
// The JWS payload is the Kantara JSON serialised canonically (members sorted,
// no insignificant whitespace: nlohmann::json::dump()), plus the cityos
// members `cityosEvent` ("grant" / "revoke") and `cityosConsentId`.
// Names follow consent.proto: the interface of the brief maps 1:1 onto its
// messages Receipt, KantaraReceipt, PiiController, ReceiptService,
// ReceiptPurpose and the enum ReceiptEvent (RECEIPT_EVENT_GRANT/_REVOKE).
#ifndef CITYOS_SERVICES_INFOBANK_RECEIPTS_H_
#define CITYOS_SERVICES_INFOBANK_RECEIPTS_H_

#include <memory>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "cityos/consent/v1/consent.pb.h"
#include "cityos/signing.h"

namespace cityos::infobank {

// The bank as PII controller (Kantara `piiControllers[0]`), from the plug-in
// config. The fields after `url` are additions to the brief's struct (with
// defaults, so aggregate initialisation of the first six still works): they
// fill the receipt-level Kantara members.
struct ControllerInfo {
  std::string name, contact, address, email, phone, url;
  std::string jurisdiction = "JP";        // Kantara `jurisdiction` (ISO 3166-1)
  std::string policy_url;                 // Kantara `policyUrl`; empty: `url`
  std::string service = "cityos information bank";  // Kantara `services[].service`
};

class ReceiptSigner {
 public:
  // Signing key: cityos::SigningKey::LoadOrCreate(key_file) (Ed25519; created
  // 0600 with `<key_file>.pub` next to it when missing).
  // INVALID_ARGUMENT when the controller has no name.
  static absl::StatusOr<std::unique_ptr<ReceiptSigner>> Create(const std::string& key_file,
                                                               ControllerInfo controller);
  // Same with a key already loaded (tests: SigningKey::Generate()).
  static absl::StatusOr<std::unique_ptr<ReceiptSigner>> CreateWithKey(
      std::unique_ptr<SigningKey> key, ControllerInfo controller);

  // A receipt (consent.v1.Receipt with the Kantara v1.1 fields, the compact
  // JWS with alg EdDSA and kid = key id, and the ISO 27560 record) for `event`
  // (RECEIPT_EVENT_GRANT / RECEIPT_EVENT_REVOKE) of `consent` at `time`.
  // The receipt id is a fresh UUIDv7; the caller appends it to the consent's
  // `receipt_ids` (the ISO record in this receipt lists the ids the consent
  // had plus this one). INVALID_ARGUMENT for a consent without id, person,
  // recipient or purpose, or an unspecified event. Thread-safe.
  absl::StatusOr<consent::v1::Receipt> Issue(const consent::v1::Consent& consent,
                                             consent::v1::ReceiptEvent event,
                                             absl::Time time) const;
  // The public key as PEM (SubjectPublicKeyInfo) and as a JWK (RFC 8037 OKP
  // JSON: {"crv":"Ed25519","kid":...,"kty":"OKP","x":...}).
  std::string public_key_pem() const;
  std::string public_key_jwk() const;
  // Lower-case hex SHA-256 of the raw public key (the JWS `kid`).
  std::string key_id() const;

 private:
  ReceiptSigner(std::unique_ptr<SigningKey> key, ControllerInfo controller);
  std::unique_ptr<SigningKey> key_;
  ControllerInfo controller_;
};

// Verifies a compact JWS receipt with an Ed25519 public key (PEM, raw 32
// bytes, or a JWK JSON string as in the Kantara `publicKey` member); returns
// the receipt payload decoded. UNAUTHENTICATED when the signature does not
// verify (tampered, or another key); INVALID_ARGUMENT, naming what is wrong,
// when it is not a well-formed JWS (three base64url parts), the header is not
// JSON or not alg EdDSA, the key is not an Ed25519 public key, or the payload
// is not a Kantara v1.1 receipt.
absl::StatusOr<consent::v1::KantaraReceipt> VerifyReceiptJws(std::string_view jws,
                                                             std::string_view public_key);

// The key id (lower-case hex SHA-256 of the raw key, as SigningKey::key_id)
// of an Ed25519 public key given as PEM, raw 32 bytes or JWK.
// INVALID_ARGUMENT when it is none of these.
absl::StatusOr<std::string> PublicKeyId(std::string_view public_key);

// The payload of a compact JWS decoded WITHOUT verifying it (to show what a
// file claims, and to find its embedded publicKey). INVALID_ARGUMENT as above.
absl::StatusOr<consent::v1::KantaraReceipt> DecodeReceiptJwsUnverified(std::string_view jws);

// The JWS payload's `cityosEvent` / `cityosConsentId` members, UNVERIFIED
// (empty strings when absent).
struct ReceiptExtras {
  std::string event;       // "grant" | "revoke"
  std::string consent_id;
};
absl::StatusOr<ReceiptExtras> DecodeReceiptExtrasUnverified(std::string_view jws);

// ISO/IEC TS 27560-compatible JSON record of a consent (+ its receipts' ids).
// Mapping documented in docs/infobank.md "## Receipts".
std::string ToIso27560Json(const consent::v1::Consent& consent);
// The same with the controller filled in (what Issue embeds in a receipt).
std::string ToIso27560Json(const consent::v1::Consent& consent, const ControllerInfo& controller);

// base64url without padding (RFC 7515 §2), exposed for tests and tools.
std::string Base64UrlEncode(std::string_view data);
absl::StatusOr<std::string> Base64UrlDecode(std::string_view text);

}  // namespace cityos::infobank

#endif  // CITYOS_SERVICES_INFOBANK_RECEIPTS_H_
