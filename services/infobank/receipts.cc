#include "receipts.h"

#include <openssl/evp.h>
#include <openssl/pem.h>

#include <cctype>
#include <map>
#include <nlohmann/json.hpp>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "cityos/id.h"
#include "cityos/proto_time.h"
#include "cityos/status.h"

namespace cityos::infobank {
namespace {

using json = nlohmann::json;
namespace cv1 = consent::v1;

constexpr char kVersion[] = "KI-CR-v1.1.0";
constexpr char kB64Url[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

absl::string_view AV(std::string_view s) { return {s.data(), s.size()}; }

// Sensitive (special-category) data categories, as consent.proto defines
// them: everything under `health.` and `care.`, and
// `disaster.evacuation_support` (and its sub-categories).
bool IsSensitiveCategory(const std::string& c) {
  auto under = [&](std::string_view root) {
    return c == root || (c.size() > root.size() && c.compare(0, root.size(), root) == 0 &&
                         c[root.size()] == '.');
  };
  return under("health") || under("care") || under("disaster.evacuation_support");
}

// Kantara purpose category of a purpose of the default vocabulary (the
// categories PurposeProposal.category names); purposes registered later are
// "Other" unless ControllerInfo::purpose_category says better.
std::string DefaultPurposeCategory(const std::string& purpose) {
  static const std::map<std::string, std::string>& table = *new std::map<std::string, std::string>{
      {"disaster_response", "Core Function"},   {"carbon_accounting", "Core Function"},
      {"medical_care", "Core Function"},        {"elderly_care", "Core Function"},
      {"mobility_operations", "Core Function"}, {"research", "Research"},
      {"commercial", "Marketing"},              {"personal_use", "Personalized Experience"},
  };
  auto it = table.find(purpose);
  return it == table.end() ? "Other" : it->second;
}

std::string Rfc3339(const google::protobuf::Timestamp& t) {
  absl::Time at = absl::FromUnixSeconds(t.seconds()) + absl::Nanoseconds(t.nanos());
  return absl::FormatTime("%Y-%m-%d%ET%H:%M:%E*SZ", at, absl::UTCTimeZone());
}

std::string RecipientName(const cv1::Consent& c) {
  if (c.has_recipient_category()) return "category:" + c.recipient_category();
  return c.recipient_org();
}

json StringArray(const google::protobuf::RepeatedPtrField<std::string>& v) {
  json a = json::array();
  for (const std::string& s : v) a.push_back(s);
  return a;
}

absl::Status Invalid(std::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat("receipt: ", AV(what)));
}

// --- JSON -> KantaraReceipt, naming the first bad member -----------------

absl::StatusOr<std::string> GetString(const json& o, const char* key, std::string_view where,
                                      bool required) {
  auto it = o.find(key);
  if (it == o.end()) {
    if (required) return Invalid(absl::StrCat(AV(where), "missing member \"", key, "\""));
    return std::string();
  }
  if (!it->is_string()) {
    return Invalid(absl::StrCat(AV(where), "member \"", key, "\" is not a string"));
  }
  return it->get<std::string>();
}

absl::StatusOr<bool> GetBool(const json& o, const char* key, std::string_view where) {
  auto it = o.find(key);
  if (it == o.end()) return false;
  if (!it->is_boolean()) {
    return Invalid(absl::StrCat(AV(where), "member \"", key, "\" is not a boolean"));
  }
  return it->get<bool>();
}

absl::Status GetStrings(const json& o, const char* key, std::string_view where,
                        google::protobuf::RepeatedPtrField<std::string>* out) {
  auto it = o.find(key);
  if (it == o.end()) return absl::OkStatus();
  if (!it->is_array()) {
    return Invalid(absl::StrCat(AV(where), "member \"", key, "\" is not an array"));
  }
  for (const json& e : *it) {
    if (!e.is_string()) {
      return Invalid(absl::StrCat(AV(where), "member \"", key, "\" has a non-string element"));
    }
    out->Add(e.get<std::string>());
  }
  return absl::OkStatus();
}

absl::StatusOr<const json*> GetArray(const json& o, const char* key, std::string_view where) {
  auto it = o.find(key);
  if (it == o.end()) return Invalid(absl::StrCat(AV(where), "missing member \"", key, "\""));
  if (!it->is_array() || it->empty()) {
    return Invalid(absl::StrCat(AV(where), "member \"", key, "\" is not a non-empty array"));
  }
  return &*it;
}

absl::StatusOr<cv1::KantaraReceipt> KantaraFromJson(const json& j) {
  if (!j.is_object()) return Invalid("payload is not a JSON object");
  cv1::KantaraReceipt k;
  CITYOS_ASSIGN_OR_RETURN(std::string version, GetString(j, "version", "", true));
  if (version != kVersion) {
    return Invalid(absl::StrCat("payload is not a Kantara Consent Receipt v1.1: version \"",
                                version, "\", want \"", kVersion, "\""));
  }
  k.set_version(version);
  CITYOS_ASSIGN_OR_RETURN(*k.mutable_jurisdiction(), GetString(j, "jurisdiction", "", false));
  auto ts = j.find("consentTimestamp");
  if (ts == j.end()) return Invalid("missing member \"consentTimestamp\"");
  if (!ts->is_number_integer()) {
    return Invalid("member \"consentTimestamp\" is not an integer (Unix seconds)");
  }
  k.mutable_consent_timestamp()->set_seconds(ts->get<int64_t>());
  CITYOS_ASSIGN_OR_RETURN(*k.mutable_collection_method(),
                          GetString(j, "collectionMethod", "", false));
  CITYOS_ASSIGN_OR_RETURN(*k.mutable_consent_receipt_id(),
                          GetString(j, "consentReceiptID", "", true));
  if (k.consent_receipt_id().empty()) return Invalid("member \"consentReceiptID\" is empty");
  CITYOS_ASSIGN_OR_RETURN(*k.mutable_public_key(), GetString(j, "publicKey", "", false));
  CITYOS_ASSIGN_OR_RETURN(*k.mutable_language(), GetString(j, "language", "", false));
  CITYOS_ASSIGN_OR_RETURN(*k.mutable_pii_principal_id(),
                          GetString(j, "piiPrincipalId", "", true));
  if (k.pii_principal_id().empty()) return Invalid("member \"piiPrincipalId\" is empty");
  CITYOS_ASSIGN_OR_RETURN(const json* controllers, GetArray(j, "piiControllers", ""));
  for (size_t i = 0; i < controllers->size(); ++i) {
    const json& c = (*controllers)[i];
    const std::string where = absl::StrCat("piiControllers[", i, "]: ");
    if (!c.is_object()) return Invalid(absl::StrCat(where, "not an object"));
    cv1::PiiController* pc = k.add_pii_controllers();
    CITYOS_ASSIGN_OR_RETURN(*pc->mutable_name(), GetString(c, "piiController", where, true));
    CITYOS_ASSIGN_OR_RETURN(bool on_behalf, GetBool(c, "onBehalf", where));
    pc->set_on_behalf(on_behalf);
    CITYOS_ASSIGN_OR_RETURN(*pc->mutable_contact(), GetString(c, "contact", where, false));
    CITYOS_ASSIGN_OR_RETURN(*pc->mutable_address(), GetString(c, "address", where, false));
    CITYOS_ASSIGN_OR_RETURN(*pc->mutable_email(), GetString(c, "email", where, false));
    CITYOS_ASSIGN_OR_RETURN(*pc->mutable_phone(), GetString(c, "phone", where, false));
    CITYOS_ASSIGN_OR_RETURN(*pc->mutable_url(), GetString(c, "piiControllerUrl", where, false));
  }
  CITYOS_ASSIGN_OR_RETURN(*k.mutable_policy_url(), GetString(j, "policyUrl", "", false));
  CITYOS_ASSIGN_OR_RETURN(const json* services, GetArray(j, "services", ""));
  for (size_t i = 0; i < services->size(); ++i) {
    const json& s = (*services)[i];
    const std::string where = absl::StrCat("services[", i, "]: ");
    if (!s.is_object()) return Invalid(absl::StrCat(where, "not an object"));
    cv1::ReceiptService* rs = k.add_services();
    CITYOS_ASSIGN_OR_RETURN(*rs->mutable_service(), GetString(s, "service", where, true));
    CITYOS_ASSIGN_OR_RETURN(const json* purposes, GetArray(s, "purposes", where));
    for (size_t p = 0; p < purposes->size(); ++p) {
      const json& pj = (*purposes)[p];
      const std::string pw = absl::StrCat("services[", i, "].purposes[", p, "]: ");
      if (!pj.is_object()) return Invalid(absl::StrCat(pw, "not an object"));
      cv1::ReceiptPurpose* rp = rs->add_purposes();
      CITYOS_ASSIGN_OR_RETURN(*rp->mutable_purpose(), GetString(pj, "purpose", pw, true));
      CITYOS_RETURN_IF_ERROR(
          GetStrings(pj, "purposeCategory", pw, rp->mutable_purpose_categories()));
      CITYOS_ASSIGN_OR_RETURN(*rp->mutable_consent_type(),
                              GetString(pj, "consentType", pw, true));
      CITYOS_RETURN_IF_ERROR(GetStrings(pj, "piiCategory", pw, rp->mutable_pii_categories()));
      CITYOS_ASSIGN_OR_RETURN(bool primary, GetBool(pj, "primaryPurpose", pw));
      rp->set_primary_purpose(primary);
      CITYOS_ASSIGN_OR_RETURN(*rp->mutable_termination(), GetString(pj, "termination", pw, false));
      CITYOS_ASSIGN_OR_RETURN(bool third, GetBool(pj, "thirdPartyDisclosure", pw));
      rp->set_third_party_disclosure(third);
      CITYOS_ASSIGN_OR_RETURN(*rp->mutable_third_party_name(),
                              GetString(pj, "thirdPartyName", pw, false));
    }
  }
  CITYOS_ASSIGN_OR_RETURN(bool sensitive, GetBool(j, "sensitive", ""));
  k.set_sensitive(sensitive);
  CITYOS_RETURN_IF_ERROR(GetStrings(j, "spiCat", "", k.mutable_spi_categories()));
  return k;
}

// --- compact JWS ------------------------------------------------------------

struct JwsParts {
  std::string signing_input;  // ASCII(BASE64URL(header) || '.' || BASE64URL(payload))
  json header;
  std::string payload;        // decoded bytes
  std::string signature;      // decoded bytes
};

absl::StatusOr<JwsParts> SplitJws(std::string_view jws) {
  // Tolerate surrounding whitespace (a file ending in a newline).
  while (!jws.empty() && std::isspace(static_cast<unsigned char>(jws.front()))) jws.remove_prefix(1);
  while (!jws.empty() && std::isspace(static_cast<unsigned char>(jws.back()))) jws.remove_suffix(1);
  if (jws.empty()) return Invalid("empty JWS");
  const size_t d1 = jws.find('.');
  const size_t d2 = d1 == std::string_view::npos ? d1 : jws.find('.', d1 + 1);
  if (d2 == std::string_view::npos || jws.find('.', d2 + 1) != std::string_view::npos) {
    return Invalid("not a compact JWS: want three base64url parts separated by '.'");
  }
  JwsParts parts;
  parts.signing_input = std::string(jws.substr(0, d2));
  auto header = Base64UrlDecode(jws.substr(0, d1));
  if (!header.ok()) return Invalid(absl::StrCat("JWS header: ", header.status().message()));
  auto payload = Base64UrlDecode(jws.substr(d1 + 1, d2 - d1 - 1));
  if (!payload.ok()) return Invalid(absl::StrCat("JWS payload: ", payload.status().message()));
  auto sig = Base64UrlDecode(jws.substr(d2 + 1));
  if (!sig.ok()) return Invalid(absl::StrCat("JWS signature: ", sig.status().message()));
  parts.header = json::parse(*header, nullptr, /*allow_exceptions=*/false);
  if (!parts.header.is_object()) return Invalid("JWS header is not a JSON object");
  auto alg = parts.header.find("alg");
  if (alg == parts.header.end() || !alg->is_string()) {
    return Invalid("JWS header has no \"alg\"");
  }
  if (alg->get<std::string>() != "EdDSA") {
    return Invalid(absl::StrCat("JWS header alg \"", alg->get<std::string>(),
                                "\" is not supported: want \"EdDSA\""));
  }
  if (parts.header.contains("crit")) {
    return Invalid("JWS header has \"crit\" extensions, which are not supported");
  }
  if (sig->size() != 64) {
    return Invalid(absl::StrFormat("JWS signature is %d bytes, an Ed25519 signature is 64",
                                   sig->size()));
  }
  parts.payload = std::move(*payload);
  parts.signature = std::move(*sig);
  return parts;
}

absl::StatusOr<json> ParsePayload(const std::string& payload) {
  json j = json::parse(payload, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return Invalid("JWS payload is not JSON");
  if (!j.is_object()) return Invalid("JWS payload is not a JSON object");
  return j;
}

// Raw 32-byte Ed25519 public key from PEM, raw bytes, or an OKP JWK.
absl::StatusOr<std::string> PublicKeyRaw(std::string_view key) {
  std::string_view t = key;
  while (!t.empty() && std::isspace(static_cast<unsigned char>(t.front()))) t.remove_prefix(1);
  if (key.size() == 32) return std::string(key);
  if (!t.empty() && t.front() == '{') {
    json jwk = json::parse(t, nullptr, false);
    if (!jwk.is_object()) return Invalid("public key: not a JSON object (JWK)");
    if (jwk.value("kty", "") != "OKP" || jwk.value("crv", "") != "Ed25519") {
      return Invalid("public key: JWK is not kty OKP, crv Ed25519");
    }
    auto x = Base64UrlDecode(jwk.value("x", ""));
    if (!x.ok() || x->size() != 32) return Invalid("public key: JWK \"x\" is not 32 bytes");
    return *x;
  }
  BIO* bio = BIO_new_mem_buf(key.data(), static_cast<int>(key.size()));
  if (bio == nullptr) return absl::InternalError("BIO_new_mem_buf failed");
  EVP_PKEY* pkey = PEM_read_bio_PUBKEY(bio, nullptr, nullptr, nullptr);
  BIO_free(bio);
  if (pkey == nullptr) {
    return Invalid("public key: not a PEM public key, a JWK, or 32 raw bytes");
  }
  std::string raw(32, '\0');
  size_t len = raw.size();
  const bool ok = EVP_PKEY_get_base_id(pkey) == EVP_PKEY_ED25519 &&
                  EVP_PKEY_get_raw_public_key(pkey, reinterpret_cast<unsigned char*>(raw.data()),
                                              &len) == 1 &&
                  len == 32;
  EVP_PKEY_free(pkey);
  if (!ok) return Invalid("public key: not an Ed25519 key");
  return raw;
}

std::string JwkFor(const std::string& raw, const std::string& kid) {
  json jwk = {{"kty", "OKP"}, {"crv", "Ed25519"}, {"x", Base64UrlEncode(raw)}, {"kid", kid}};
  return jwk.dump();
}

json Iso27560(const cv1::Consent& c, const ControllerInfo* controller) {
  json j;
  j["schema"] = "ISO/IEC TS 27560:2023";
  j["schema_version"] = "cityos-iso27560-1";
  j["record_id"] = c.consent_id();
  j["pii_principal_id"] = c.data_subject();
  if (controller != nullptr) {
    j["controllers"] = json::array({json{{"name", controller->name},
                                         {"contact", controller->contact},
                                         {"address", controller->address},
                                         {"email", controller->email},
                                         {"phone", controller->phone},
                                         {"url", controller->url},
                                         {"jurisdiction", controller->jurisdiction}}});
  } else {
    j["controllers"] = json::array();
  }
  j["consent_type"] = "explicit";
  j["legal_basis"] = "consent";
  j["collection_method"] = c.collection_method();
  j["language"] = c.language();
  std::string state = "unspecified";
  switch (c.state()) {
    case cv1::CONSENT_STATE_ACTIVE: state = "active"; break;
    case cv1::CONSENT_STATE_REVOKED: state = "withdrawn"; break;
    case cv1::CONSENT_STATE_EXPIRED: state = "expired"; break;
    default: break;
  }
  j["state"] = state;
  json recipient = c.has_recipient_category() ? json{{"category", c.recipient_category()}}
                                              : json{{"org", c.recipient_org()}};
  json purposes = json::array();
  for (const std::string& p : c.purposes()) {
    purposes.push_back({{"purpose", p}, {"purpose_category", DefaultPurposeCategory(p)}});
  }
  json special = json::array();
  for (const std::string& cat : c.data_categories()) {
    if (IsSensitiveCategory(cat)) special.push_back(cat);
  }
  json processing = {
      {"purposes", purposes},
      {"pii_categories", StringArray(c.data_categories())},
      {"special_categories", special},
      {"sensitive", c.sensitive()},
      {"profiling", c.profiling()},
      {"legal_basis", "consent"},
      {"operations", json::array({"disclosure", "transfer"})},
      {"recipients", json::array({recipient})},
      {"cross_border_jurisdictions", StringArray(c.cross_border_jurisdictions())},
  };
  if (c.has_expire_time()) processing["storage_duration_until"] = Rfc3339(c.expire_time());
  j["processing"] = json::array({processing});
  json timestamps = json::object();
  json events = json::array();
  if (c.has_grant_time()) {
    timestamps["given"] = Rfc3339(c.grant_time());
    events.push_back({{"type", "given"}, {"time", Rfc3339(c.grant_time())}});
  }
  if (c.has_expire_time()) timestamps["expiry"] = Rfc3339(c.expire_time());
  if (c.has_revoke_time()) {
    timestamps["withdrawn"] = Rfc3339(c.revoke_time());
    events.push_back({{"type", "withdrawn"},
                      {"time", Rfc3339(c.revoke_time())},
                      {"reason", c.revoke_reason()}});
  }
  if (c.state() == cv1::CONSENT_STATE_EXPIRED && c.has_expire_time()) {
    events.push_back({{"type", "expired"}, {"time", Rfc3339(c.expire_time())}});
  }
  j["timestamps"] = timestamps;
  j["events"] = events;
  j["receipts"] = StringArray(c.receipt_ids());
  return j;
}

}  // namespace

// --- base64url ----------------------------------------------------------------

std::string Base64UrlEncode(std::string_view data) {
  std::string out;
  out.reserve((data.size() * 4 + 2) / 3);
  size_t i = 0;
  auto byte = [&](size_t k) { return static_cast<uint32_t>(static_cast<unsigned char>(data[k])); };
  for (; i + 3 <= data.size(); i += 3) {
    const uint32_t v = byte(i) << 16 | byte(i + 1) << 8 | byte(i + 2);
    out += kB64Url[v >> 18 & 63];
    out += kB64Url[v >> 12 & 63];
    out += kB64Url[v >> 6 & 63];
    out += kB64Url[v & 63];
  }
  if (data.size() - i == 1) {
    const uint32_t v = byte(i) << 16;
    out += kB64Url[v >> 18 & 63];
    out += kB64Url[v >> 12 & 63];
  } else if (data.size() - i == 2) {
    const uint32_t v = byte(i) << 16 | byte(i + 1) << 8;
    out += kB64Url[v >> 18 & 63];
    out += kB64Url[v >> 12 & 63];
    out += kB64Url[v >> 6 & 63];
  }
  return out;
}

absl::StatusOr<std::string> Base64UrlDecode(std::string_view text) {
  if (text.size() % 4 == 1) return Invalid("not base64url: impossible length");
  std::string out;
  uint32_t acc = 0;
  int bits = 0;
  for (char ch : text) {
    int v;
    if (ch >= 'A' && ch <= 'Z') v = ch - 'A';
    else if (ch >= 'a' && ch <= 'z') v = ch - 'a' + 26;
    else if (ch >= '0' && ch <= '9') v = ch - '0' + 52;
    else if (ch == '-') v = 62;
    else if (ch == '_') v = 63;
    else if (ch == '=') return Invalid("not base64url: padding '=' is not allowed (RFC 7515)");
    else return Invalid(absl::StrFormat("not base64url: bad character '%c'", ch));
    acc = acc << 6 | static_cast<uint32_t>(v);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out += static_cast<char>(acc >> bits & 0xff);
    }
  }
  // Unused trailing bits must be zero: otherwise several texts decode to the
  // same bytes and an altered signature text could still verify.
  if (bits > 0 && (acc & ((1u << bits) - 1)) != 0) {
    return Invalid("not base64url: non-zero trailing bits");
  }
  return out;
}

// --- ReceiptSigner --------------------------------------------------------------

ReceiptSigner::ReceiptSigner(std::unique_ptr<SigningKey> key, ControllerInfo controller)
    : key_(std::move(key)), controller_(std::move(controller)) {}

absl::StatusOr<std::unique_ptr<ReceiptSigner>> ReceiptSigner::Create(const std::string& key_file,
                                                                     ControllerInfo controller) {
  CITYOS_ASSIGN_OR_RETURN(std::unique_ptr<SigningKey> key, SigningKey::LoadOrCreate(key_file));
  return CreateWithKey(std::move(key), std::move(controller));
}

absl::StatusOr<std::unique_ptr<ReceiptSigner>> ReceiptSigner::CreateWithKey(
    std::unique_ptr<SigningKey> key, ControllerInfo controller) {
  if (key == nullptr) return absl::InvalidArgumentError("receipt signer: no key");
  if (controller.name.empty()) {
    return absl::InvalidArgumentError("receipt signer: the PII controller needs a name");
  }
  return std::unique_ptr<ReceiptSigner>(new ReceiptSigner(std::move(key), std::move(controller)));
}

std::string ReceiptSigner::public_key_pem() const { return key_->public_key_pem(); }
std::string ReceiptSigner::key_id() const { return key_->key_id(); }
std::string ReceiptSigner::public_key_jwk() const {
  return JwkFor(key_->public_key_raw(), key_->key_id());
}

absl::StatusOr<cv1::Receipt> ReceiptSigner::Issue(const cv1::Consent& consent,
                                                  cv1::ReceiptEvent event,
                                                  absl::Time time) const {
  if (event != cv1::RECEIPT_EVENT_GRANT && event != cv1::RECEIPT_EVENT_REVOKE) {
    return absl::InvalidArgumentError("receipt: event must be GRANT or REVOKE");
  }
  if (consent.consent_id().empty()) return Invalid("consent has no consent_id");
  if (consent.data_subject().empty()) return Invalid("consent has no data_subject");
  if (consent.recipient_case() == cv1::Consent::RECIPIENT_NOT_SET ||
      RecipientName(consent).empty()) {
    return Invalid("consent has no recipient");
  }
  if (consent.purposes().empty()) return Invalid("consent has no purpose");
  if (consent.data_categories().empty()) return Invalid("consent has no data category");
  const bool revoke = event == cv1::RECEIPT_EVENT_REVOKE;
  const std::string receipt_id = UuidToString(NewUuidV7At(time));

  std::string termination = "until revoked";
  if (revoke) {
    termination = absl::StrCat(
        "revoked ", absl::FormatTime("%Y-%m-%d%ET%H:%M:%E*SZ", time, absl::UTCTimeZone()));
  } else if (consent.has_expire_time()) {
    termination = Rfc3339(consent.expire_time());
  }
  json purposes = json::array();
  for (const std::string& p : consent.purposes()) {
    std::string category = DefaultPurposeCategory(p);
    purposes.push_back({
        {"purpose", p},
        {"purposeCategory", json::array({category})},
        {"consentType", revoke ? "WITHDRAWN" : "EXPLICIT"},
        {"piiCategory", StringArray(consent.data_categories())},
        // Every purpose is one the person chose for this recipient: none is
        // secondary to another.
        {"primaryPurpose", true},
        {"termination", termination},
        // The data goes to the recipient, never only to the bank.
        {"thirdPartyDisclosure", true},
        {"thirdPartyName", RecipientName(consent)},
    });
  }
  json spi = json::array();
  for (const std::string& c : consent.data_categories()) {
    if (IsSensitiveCategory(c)) spi.push_back(c);
  }
  json payload = {
      {"version", kVersion},
      {"jurisdiction", controller_.jurisdiction},
      {"consentTimestamp", absl::ToUnixSeconds(time)},
      {"collectionMethod", consent.collection_method()},
      {"consentReceiptID", receipt_id},
      {"publicKey", public_key_jwk()},
      {"language", consent.language()},
      {"piiPrincipalId", consent.data_subject()},
      {"piiControllers", json::array({json{
                             {"piiController", controller_.name},
                             {"onBehalf", false},
                             {"contact", controller_.contact},
                             {"address", controller_.address},
                             {"email", controller_.email},
                             {"phone", controller_.phone},
                             {"piiControllerUrl", controller_.url},
                         }})},
      {"policyUrl", controller_.policy_url.empty() ? controller_.url : controller_.policy_url},
      {"services", json::array({json{{"service", controller_.service}, {"purposes", purposes}}})},
      {"sensitive", consent.sensitive() || !spi.empty()},
      {"spiCat", spi},
      {"cityosEvent", revoke ? "revoke" : "grant"},
      {"cityosConsentId", consent.consent_id()},
  };
  std::string payload_text;
  try {
    // std::map-backed objects: dump() is the canonical form (sorted members,
    // no whitespace).
    payload_text = payload.dump();
  } catch (const json::exception& e) {
    return Invalid(absl::StrCat("cannot serialise: ", e.what()));
  }
  const json header = {{"alg", "EdDSA"}, {"typ", "JWT"}, {"kid", key_->key_id()}};
  const std::string signing_input =
      absl::StrCat(Base64UrlEncode(header.dump()), ".", Base64UrlEncode(payload_text));
  const std::string jws =
      absl::StrCat(signing_input, ".", Base64UrlEncode(key_->Sign(signing_input)));

  cv1::Receipt r;
  r.set_receipt_id(receipt_id);
  r.set_consent_id(consent.consent_id());
  r.set_event(event);
  r.set_jws(jws);
  // Decoded from the very payload signed, so the convenience fields cannot
  // drift from the JWS.
  CITYOS_ASSIGN_OR_RETURN(*r.mutable_kantara(), KantaraFromJson(payload));
  cv1::Consent with_receipt = consent;
  with_receipt.add_receipt_ids(receipt_id);
  r.set_iso27560_json(ToIso27560Json(with_receipt, controller_));
  r.set_key_id(key_->key_id());
  TimestampToProto(time, r.mutable_issue_time());
  return r;
}

// --- verification ----------------------------------------------------------------

absl::StatusOr<cv1::KantaraReceipt> VerifyReceiptJws(std::string_view jws,
                                                     std::string_view public_key) {
  CITYOS_ASSIGN_OR_RETURN(JwsParts parts, SplitJws(jws));
  CITYOS_ASSIGN_OR_RETURN(std::string raw, PublicKeyRaw(public_key));
  absl::Status s = VerifyEd25519(raw, parts.signing_input, parts.signature);
  if (absl::IsUnauthenticated(s)) {
    const std::string kid = parts.header.value("kid", "");
    const std::string key_id = Sha256Hex(raw);
    return absl::UnauthenticatedError(absl::StrCat(
        "receipt: signature does not verify",
        kid.empty() || kid == key_id
            ? std::string(" (the receipt was altered)")
            : absl::StrCat(" (signed with key ", kid, ", checked with key ", key_id, ")")));
  }
  CITYOS_RETURN_IF_ERROR(s);
  CITYOS_ASSIGN_OR_RETURN(json payload, ParsePayload(parts.payload));
  return KantaraFromJson(payload);
}

absl::StatusOr<cv1::KantaraReceipt> DecodeReceiptJwsUnverified(std::string_view jws) {
  CITYOS_ASSIGN_OR_RETURN(JwsParts parts, SplitJws(jws));
  CITYOS_ASSIGN_OR_RETURN(json payload, ParsePayload(parts.payload));
  return KantaraFromJson(payload);
}

absl::StatusOr<ReceiptExtras> DecodeReceiptExtrasUnverified(std::string_view jws) {
  CITYOS_ASSIGN_OR_RETURN(JwsParts parts, SplitJws(jws));
  CITYOS_ASSIGN_OR_RETURN(json payload, ParsePayload(parts.payload));
  ReceiptExtras x;
  CITYOS_ASSIGN_OR_RETURN(x.event, GetString(payload, "cityosEvent", "", false));
  CITYOS_ASSIGN_OR_RETURN(x.consent_id, GetString(payload, "cityosConsentId", "", false));
  return x;
}

absl::StatusOr<std::string> PublicKeyId(std::string_view public_key) {
  CITYOS_ASSIGN_OR_RETURN(std::string raw, PublicKeyRaw(public_key));
  return Sha256Hex(raw);
}

std::string ToIso27560Json(const cv1::Consent& consent) {
  return Iso27560(consent, nullptr).dump();
}

std::string ToIso27560Json(const cv1::Consent& consent, const ControllerInfo& controller) {
  return Iso27560(consent, &controller).dump();
}

}  // namespace cityos::infobank
