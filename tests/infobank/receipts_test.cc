// Consent receipts: the Kantara v1.1 fields filled from a consent, the compact
// JWS (EdDSA) verified with the right key and refused with another key or
// after any alteration, malformed inputs named, the ISO/IEC TS 27560 export,
// and `cityosctl consent verify-receipt` as a subprocess.
#include "receipts.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <string>

#include "absl/time/time.h"
#include "cityos/signing.h"
#include "testutil.h"

namespace cityos::infobank {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::Not;
using json = nlohmann::json;
namespace cv1 = consent::v1;

const absl::Time kGrant = absl::FromUnixSeconds(1785000000);

ControllerInfo Controller() {
  ControllerInfo c;
  c.name = "Quzhou Information Bank";
  c.contact = "Data Protection Officer";
  c.address = "1 Civic Square, Quzhou";
  c.email = "dpo@bank.example";
  c.phone = "+86-570-000000";
  c.url = "https://bank.example";
  c.jurisdiction = "CN";
  c.policy_url = "https://bank.example/privacy";
  return c;
}

cv1::Consent SampleConsent() {
  cv1::Consent c;
  c.set_consent_id("0190a1b2-0000-7000-8000-000000000001");
  c.set_data_subject("person-7f3a");
  c.set_recipient_org("quzhou-people-hospital");
  c.add_purposes("medical_care");
  c.add_purposes("research");
  c.add_data_categories("health.vitals");
  c.add_data_categories("mobility.trips");
  c.set_sensitive(true);
  c.set_state(cv1::CONSENT_STATE_ACTIVE);
  c.mutable_grant_time()->set_seconds(absl::ToUnixSeconds(kGrant));
  c.mutable_expire_time()->set_seconds(absl::ToUnixSeconds(kGrant + absl::Hours(24 * 30)));
  c.set_collection_method("app");
  c.set_language("ja");
  c.add_cross_border_jurisdictions("JP");
  return c;
}

class ReceiptsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto key = SigningKey::Generate();
    ASSERT_TRUE(key.ok()) << key.status();
    auto signer = ReceiptSigner::CreateWithKey(std::move(*key), Controller());
    ASSERT_TRUE(signer.ok()) << signer.status();
    signer_ = std::move(*signer);
    auto other = SigningKey::Generate();
    ASSERT_TRUE(other.ok());
    other_pem_ = (*other)->public_key_pem();
  }
  cv1::Receipt Grant() {
    auto r = signer_->Issue(SampleConsent(), cv1::RECEIPT_EVENT_GRANT, kGrant);
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? *r : cv1::Receipt();
  }
  std::unique_ptr<ReceiptSigner> signer_;
  std::string other_pem_;
};

std::vector<std::string> Parts(const std::string& jws) {
  std::vector<std::string> parts;
  size_t start = 0;
  for (size_t dot; (dot = jws.find('.', start)) != std::string::npos; start = dot + 1) {
    parts.push_back(jws.substr(start, dot - start));
  }
  parts.push_back(jws.substr(start));
  return parts;
}

json DecodedJson(const std::string& part) {
  auto text = Base64UrlDecode(part);
  EXPECT_TRUE(text.ok()) << text.status();
  return json::parse(text.ok() ? *text : "{}");
}

TEST_F(ReceiptsTest, GrantReceiptCarriesKantaraFieldsFromTheConsent) {
  cv1::Receipt r = Grant();
  EXPECT_FALSE(r.receipt_id().empty());
  EXPECT_EQ(r.consent_id(), SampleConsent().consent_id());
  EXPECT_EQ(r.event(), cv1::RECEIPT_EVENT_GRANT);
  EXPECT_EQ(r.key_id(), signer_->key_id());
  EXPECT_EQ(r.issue_time().seconds(), absl::ToUnixSeconds(kGrant));
  const cv1::KantaraReceipt& k = r.kantara();
  EXPECT_EQ(k.version(), "KI-CR-v1.1.0");
  EXPECT_EQ(k.consent_receipt_id(), r.receipt_id());
  EXPECT_EQ(k.jurisdiction(), "CN");
  EXPECT_EQ(k.consent_timestamp().seconds(), absl::ToUnixSeconds(kGrant));
  EXPECT_EQ(k.collection_method(), "app");
  EXPECT_EQ(k.language(), "ja");
  EXPECT_EQ(k.pii_principal_id(), "person-7f3a");
  EXPECT_EQ(k.policy_url(), "https://bank.example/privacy");
  EXPECT_EQ(k.public_key(), signer_->public_key_jwk());
  ASSERT_EQ(k.pii_controllers_size(), 1);
  EXPECT_EQ(k.pii_controllers(0).name(), "Quzhou Information Bank");
  EXPECT_EQ(k.pii_controllers(0).email(), "dpo@bank.example");
  EXPECT_EQ(k.pii_controllers(0).phone(), "+86-570-000000");
  EXPECT_EQ(k.pii_controllers(0).url(), "https://bank.example");
  EXPECT_EQ(k.pii_controllers(0).address(), "1 Civic Square, Quzhou");
  EXPECT_EQ(k.pii_controllers(0).contact(), "Data Protection Officer");
  ASSERT_EQ(k.services_size(), 1);
  ASSERT_EQ(k.services(0).purposes_size(), 2);
  const cv1::ReceiptPurpose& p = k.services(0).purposes(0);
  EXPECT_EQ(p.purpose(), "medical_care");
  EXPECT_THAT(p.purpose_categories(), ElementsAre("Core Function"));
  EXPECT_EQ(p.consent_type(), "EXPLICIT");
  EXPECT_THAT(p.pii_categories(), ElementsAre("health.vitals", "mobility.trips"));
  EXPECT_TRUE(p.third_party_disclosure());
  EXPECT_EQ(p.third_party_name(), "quzhou-people-hospital");
  EXPECT_EQ(p.termination(), "2026-08-24T17:20:00Z");
  EXPECT_EQ(k.services(0).purposes(1).purpose(), "research");
  EXPECT_TRUE(k.sensitive());
  EXPECT_THAT(k.spi_categories(), ElementsAre("health.vitals"));

  // The JWS: header as RFC 8037 asks, canonical payload (sorted members).
  std::vector<std::string> parts = Parts(r.jws());
  ASSERT_EQ(parts.size(), 3u);
  json header = DecodedJson(parts[0]);
  EXPECT_EQ(header["alg"], "EdDSA");
  EXPECT_EQ(header["typ"], "JWT");
  EXPECT_EQ(header["kid"], signer_->key_id());
  for (const std::string& part : parts) EXPECT_EQ(part.find('='), std::string::npos);
  auto payload_text = Base64UrlDecode(parts[1]);
  ASSERT_TRUE(payload_text.ok());
  json payload = json::parse(*payload_text);
  EXPECT_EQ(payload.dump(), *payload_text) << "payload is not the canonical dump";
  EXPECT_EQ(payload["cityosEvent"], "grant");
  EXPECT_EQ(payload["cityosConsentId"], SampleConsent().consent_id());
  EXPECT_EQ(payload["consentTimestamp"], absl::ToUnixSeconds(kGrant));
  EXPECT_EQ(payload["piiControllers"][0]["piiControllerUrl"], "https://bank.example");
  EXPECT_EQ(payload["services"][0]["purposes"][0]["purposeCategory"][0], "Core Function");
}

TEST_F(ReceiptsTest, RevocationReceiptSaysWithdrawn) {
  cv1::Consent c = SampleConsent();
  c.set_state(cv1::CONSENT_STATE_REVOKED);
  c.add_receipt_ids("grant-receipt");
  c.mutable_revoke_time()->set_seconds(absl::ToUnixSeconds(kGrant + absl::Hours(1)));
  auto r = signer_->Issue(c, cv1::RECEIPT_EVENT_REVOKE, kGrant + absl::Hours(1));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->event(), cv1::RECEIPT_EVENT_REVOKE);
  EXPECT_EQ(r->kantara().services(0).purposes(0).consent_type(), "WITHDRAWN");
  EXPECT_THAT(r->kantara().services(0).purposes(0).termination(), HasSubstr("revoked"));
  auto extras = DecodeReceiptExtrasUnverified(r->jws());
  ASSERT_TRUE(extras.ok());
  EXPECT_EQ(extras->event, "revoke");
  json iso = json::parse(r->iso27560_json());
  EXPECT_EQ(iso["state"], "withdrawn");
  EXPECT_EQ(iso["receipts"], json::array({"grant-receipt", r->receipt_id()}));
}

TEST_F(ReceiptsTest, IssueRefusesAnIncompleteConsent) {
  cv1::Consent c = SampleConsent();
  c.clear_recipient_org();
  auto r = signer_->Issue(c, cv1::RECEIPT_EVENT_GRANT, kGrant);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(r.status().message(), HasSubstr("recipient"));
  EXPECT_EQ(signer_->Issue(SampleConsent(), cv1::RECEIPT_EVENT_UNSPECIFIED, kGrant).status().code(),
            absl::StatusCode::kInvalidArgument);
  auto no_name = SigningKey::Generate();
  ASSERT_TRUE(no_name.ok());
  EXPECT_EQ(ReceiptSigner::CreateWithKey(std::move(*no_name), ControllerInfo{}).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(ReceiptsTest, VerifiesWithTheRightKeyInEveryForm) {
  cv1::Receipt r = Grant();
  auto pem = VerifyReceiptJws(r.jws(), signer_->public_key_pem());
  ASSERT_TRUE(pem.ok()) << pem.status();
  EXPECT_EQ(pem->consent_receipt_id(), r.receipt_id());
  EXPECT_EQ(pem->SerializeAsString(), r.kantara().SerializeAsString());
  auto jwk = VerifyReceiptJws(r.jws(), signer_->public_key_jwk());
  EXPECT_TRUE(jwk.ok()) << jwk.status();
  // A trailing newline (as in a file) is tolerated.
  EXPECT_TRUE(VerifyReceiptJws(r.jws() + "\n", signer_->public_key_pem()).ok());
}

TEST_F(ReceiptsTest, FailsWithAnotherKey) {
  auto v = VerifyReceiptJws(Grant().jws(), other_pem_);
  EXPECT_EQ(v.status().code(), absl::StatusCode::kUnauthenticated) << v.status();
  EXPECT_THAT(v.status().message(), HasSubstr("signature does not verify"));
  EXPECT_THAT(v.status().message(), HasSubstr(signer_->key_id()));
}

TEST_F(ReceiptsTest, FailsAfterTamperingWithThePayload) {
  std::vector<std::string> parts = Parts(Grant().jws());
  json payload = DecodedJson(parts[1]);
  payload["piiPrincipalId"] = "someone-else";
  const std::string jws =
      parts[0] + "." + Base64UrlEncode(payload.dump()) + "." + parts[2];
  auto v = VerifyReceiptJws(jws, signer_->public_key_pem());
  EXPECT_EQ(v.status().code(), absl::StatusCode::kUnauthenticated) << v.status();
  // A single flipped character of the payload text, too.
  std::string flipped = Grant().jws();
  size_t at = parts[0].size() + 10;
  flipped[at] = flipped[at] == 'A' ? 'B' : 'A';
  EXPECT_EQ(VerifyReceiptJws(flipped, signer_->public_key_pem()).status().code(),
            absl::StatusCode::kUnauthenticated);
}

TEST_F(ReceiptsTest, FailsAfterTamperingWithTheHeader) {
  std::vector<std::string> parts = Parts(Grant().jws());
  json header = DecodedJson(parts[0]);
  header["kid"] = std::string(64, '0');
  const std::string jws = Base64UrlEncode(header.dump()) + "." + parts[1] + "." + parts[2];
  auto v = VerifyReceiptJws(jws, signer_->public_key_pem());
  EXPECT_EQ(v.status().code(), absl::StatusCode::kUnauthenticated) << v.status();
  // alg none is refused outright, not "verified".
  header["alg"] = "none";
  auto none = VerifyReceiptJws(Base64UrlEncode(header.dump()) + "." + parts[1] + "." + parts[2],
                               signer_->public_key_pem());
  EXPECT_EQ(none.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(none.status().message(), HasSubstr("alg \"none\""));
}

TEST_F(ReceiptsTest, FailsAfterTamperingWithTheSignature) {
  std::vector<std::string> parts = Parts(Grant().jws());
  auto sig = Base64UrlDecode(parts[2]);
  ASSERT_TRUE(sig.ok());
  (*sig)[5] ^= 0x01;
  const std::string jws = parts[0] + "." + parts[1] + "." + Base64UrlEncode(*sig);
  auto v = VerifyReceiptJws(jws, signer_->public_key_pem());
  EXPECT_EQ(v.status().code(), absl::StatusCode::kUnauthenticated) << v.status();
  // The last character's unused bits altered: the text differs but would
  // decode to the same bytes under a lax decoder. It must not verify.
  std::string lax = Grant().jws();
  char& last = lax.back();
  last = last == 'A' ? 'B' : (last == 'Q' ? 'R' : static_cast<char>(last ^ 1));
  EXPECT_FALSE(VerifyReceiptJws(lax, signer_->public_key_pem()).ok());
}

TEST_F(ReceiptsTest, MalformedInputsAreNamed) {
  const std::string pem = signer_->public_key_pem();
  std::vector<std::string> parts = Parts(Grant().jws());
  struct Case {
    std::string jws, key, message;
  } cases[] = {
      {"", pem, "empty JWS"},
      {"abc", pem, "three base64url parts"},
      {"a.b.c.d", pem, "three base64url parts"},
      {parts[0] + "." + parts[1], pem, "three base64url parts"},
      {"e30=." + parts[1] + "." + parts[2], pem, "padding"},
      {"!!." + parts[1] + "." + parts[2], pem, "bad character"},
      {Base64UrlEncode("not json") + "." + parts[1] + "." + parts[2], pem,
       "header is not a JSON object"},
      {Base64UrlEncode("{}") + "." + parts[1] + "." + parts[2], pem, "no \"alg\""},
      {parts[0] + "." + parts[1] + "." + Base64UrlEncode("short"), pem, "64"},
      {Grant().jws(), "not a key", "public key"},
      {Grant().jws(), R"({"kty":"RSA"})", "public key"},
  };
  for (const Case& c : cases) {
    auto v = VerifyReceiptJws(c.jws, c.key);
    EXPECT_EQ(v.status().code(), absl::StatusCode::kInvalidArgument) << c.jws << ": " << v.status();
    EXPECT_THAT(v.status().message(), HasSubstr(c.message)) << c.jws;
  }
}

TEST_F(ReceiptsTest, AValidSignatureOverANonKantaraPayloadIsInvalidArgument) {
  // Signed correctly, but not a receipt: verification must not accept it.
  auto key = SigningKey::Generate();
  ASSERT_TRUE(key.ok());
  auto sign = [&](const json& payload) {
    const std::string input = Base64UrlEncode(R"({"alg":"EdDSA"})") + "." +
                              Base64UrlEncode(payload.dump());
    return input + "." + Base64UrlEncode((*key)->Sign(input));
  };
  const std::string pem = (*key)->public_key_pem();
  auto wrong_version = VerifyReceiptJws(sign({{"version", "1.0"}}), pem);
  EXPECT_EQ(wrong_version.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(wrong_version.status().message(), HasSubstr("KI-CR-v1.1.0"));
  json k = json::parse(Base64UrlDecode(Parts(Grant().jws())[1]).value());
  k.erase("piiPrincipalId");
  auto missing = VerifyReceiptJws(sign(k), pem);
  EXPECT_THAT(missing.status().message(), HasSubstr("missing member \"piiPrincipalId\""));
  k = json::parse(Base64UrlDecode(Parts(Grant().jws())[1]).value());
  k["services"][0]["purposes"][0]["thirdPartyDisclosure"] = "yes";
  auto bad_type = VerifyReceiptJws(sign(k), pem);
  EXPECT_THAT(bad_type.status().message(),
              HasSubstr("services[0].purposes[0]: member \"thirdPartyDisclosure\""));
  EXPECT_TRUE(VerifyReceiptJws(sign(json::parse(Base64UrlDecode(Parts(Grant().jws())[1]).value())),
                               pem)
                  .ok());
}

TEST(Base64UrlTest, RoundTripsEveryLength) {
  std::string data;
  for (int i = 0; i < 70; ++i) {
    auto back = Base64UrlDecode(Base64UrlEncode(data));
    ASSERT_TRUE(back.ok()) << back.status();
    EXPECT_EQ(*back, data);
    data += static_cast<char>(i * 37 + 200);
  }
  EXPECT_EQ(Base64UrlEncode("\xfb\xff"), "-_8");
  EXPECT_FALSE(Base64UrlDecode("A").ok());
}

TEST_F(ReceiptsTest, Iso27560ExportOfAConsent) {
  cv1::Consent c = SampleConsent();
  c.add_receipt_ids("r1");
  json iso = json::parse(ToIso27560Json(c, Controller()));
  EXPECT_EQ(iso["record_id"], c.consent_id());
  EXPECT_EQ(iso["pii_principal_id"], "person-7f3a");
  EXPECT_EQ(iso["legal_basis"], "consent");
  EXPECT_EQ(iso["consent_type"], "explicit");
  EXPECT_EQ(iso["state"], "active");
  EXPECT_EQ(iso["controllers"][0]["name"], "Quzhou Information Bank");
  EXPECT_EQ(iso["timestamps"]["given"], "2026-07-25T17:20:00Z");
  EXPECT_EQ(iso["timestamps"]["expiry"], "2026-08-24T17:20:00Z");
  EXPECT_FALSE(iso["timestamps"].contains("withdrawn"));
  EXPECT_EQ(iso["receipts"], json::array({"r1"}));
  const json& p = iso["processing"][0];
  EXPECT_EQ(p["legal_basis"], "consent");
  EXPECT_EQ(p["purposes"][0]["purpose"], "medical_care");
  EXPECT_EQ(p["purposes"][1]["purpose_category"], "Research");
  EXPECT_EQ(p["pii_categories"], json::array({"health.vitals", "mobility.trips"}));
  EXPECT_EQ(p["special_categories"], json::array({"health.vitals"}));
  EXPECT_EQ(p["recipients"][0]["org"], "quzhou-people-hospital");
  EXPECT_EQ(p["cross_border_jurisdictions"], json::array({"JP"}));
  EXPECT_EQ(p["sensitive"], true);
  EXPECT_EQ(p["profiling"], false);
  EXPECT_EQ(iso["events"][0]["type"], "given");
  // Without the controller (the brief's one-argument form) and by category.
  c.set_recipient_category("hospital");
  json bare = json::parse(ToIso27560Json(c));
  EXPECT_EQ(bare["controllers"], json::array());
  EXPECT_EQ(bare["processing"][0]["recipients"][0]["category"], "hospital");
  // The receipt embeds the record with its own id appended.
  cv1::Receipt r = Grant();
  json embedded = json::parse(r.iso27560_json());
  EXPECT_EQ(embedded["receipts"], json::array({r.receipt_id()}));
}

TEST(ReceiptSignerFileTest, KeyFileIsCreated0600AndReused) {
  testing::TempDir dir;
  const std::string path = dir.File("receipt.key");
  auto a = ReceiptSigner::Create(path, Controller());
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(testing::FileMode(path), 0600);
  auto b = ReceiptSigner::Create(path, Controller());
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ((*a)->key_id(), (*b)->key_id());
  auto r = (*a)->Issue(SampleConsent(), cv1::RECEIPT_EVENT_GRANT, kGrant);
  ASSERT_TRUE(r.ok());
  EXPECT_TRUE(VerifyReceiptJws(r->jws(), testing::ReadFile(path + ".pub")).ok());
}

// --- cityosctl consent verify-receipt, as a subprocess ---

class VerifyReceiptCliTest : public ReceiptsTest {
 protected:
  testing::CommandResult Ctl(std::vector<std::string> args) {
    args.insert(args.begin(), CITYOSCTL_PATH);
    return testing::RunCommand(args, absl::Seconds(60));
  }
  testing::TempDir dir_;
};

TEST_F(VerifyReceiptCliTest, VerifiesAndRejectsTamperedFiles) {
  cv1::Receipt r = Grant();
  const std::string file = dir_.File("receipt.jws");
  const std::string key = dir_.File("bank.pub");
  testing::WriteFile(file, r.jws() + "\n");
  testing::WriteFile(key, signer_->public_key_pem());

  auto ok = Ctl({"consent", "verify-receipt", file, "--public-key", key});
  EXPECT_EQ(ok.code, 0) << ok.out << ok.err;
  EXPECT_THAT(ok.out, HasSubstr("signature OK"));
  EXPECT_THAT(ok.out, HasSubstr(r.receipt_id()));
  EXPECT_THAT(ok.out, HasSubstr("person-7f3a"));
  EXPECT_THAT(ok.out, HasSubstr("Quzhou Information Bank"));
  EXPECT_THAT(ok.out, HasSubstr("medical_care"));
  EXPECT_THAT(ok.out, Not(HasSubstr("embedded")));

  // Trust on first use: the receipt's own publicKey, with a warning.
  auto tofu = Ctl({"consent", "verify-receipt", file});
  EXPECT_EQ(tofu.code, 0) << tofu.out << tofu.err;
  EXPECT_THAT(tofu.out + tofu.err, HasSubstr("embedded"));
  EXPECT_THAT(tofu.out, HasSubstr("signature OK"));

  // A JSON object with a `jws` member (e.g. GetReceipt's response) works too.
  const std::string wrapped = dir_.File("receipt.json");
  testing::WriteFile(wrapped, json{{"receiptId", r.receipt_id()}, {"jws", r.jws()}}.dump(2));
  auto as_json = Ctl({"--json", "consent", "verify-receipt", wrapped, "--public-key", key});
  EXPECT_EQ(as_json.code, 0) << as_json.out << as_json.err;
  json out = json::parse(as_json.out, nullptr, false);
  ASSERT_TRUE(out.is_object()) << as_json.out;
  EXPECT_EQ(out["signature"], "OK");
  EXPECT_EQ(out["receipt"]["consent_receipt_id"], r.receipt_id());

  // Tampered payload: exit 1.
  std::vector<std::string> parts = Parts(r.jws());
  json payload = DecodedJson(parts[1]);
  payload["services"][0]["purposes"][0]["purpose"] = "commercial";
  testing::WriteFile(file, parts[0] + "." + Base64UrlEncode(payload.dump()) + "." + parts[2]);
  auto bad = Ctl({"consent", "verify-receipt", file, "--public-key", key});
  EXPECT_EQ(bad.code, 1) << bad.out << bad.err;
  EXPECT_THAT(bad.err, HasSubstr("signature does not verify"));
  EXPECT_THAT(bad.out, Not(HasSubstr("signature OK")));
  // Even trusting the embedded key, an altered receipt fails.
  auto bad_tofu = Ctl({"consent", "verify-receipt", file});
  EXPECT_EQ(bad_tofu.code, 1);
  EXPECT_THAT(bad_tofu.err, HasSubstr("signature does not verify"));

  // Another bank's key: exit 1. Garbage: exit 1 naming the problem.
  testing::WriteFile(file, r.jws());
  testing::WriteFile(key, other_pem_);
  auto other = Ctl({"consent", "verify-receipt", file, "--public-key", key});
  EXPECT_EQ(other.code, 1);
  EXPECT_THAT(other.err, HasSubstr("signature does not verify"));
  testing::WriteFile(file, "hello");
  auto garbage = Ctl({"consent", "verify-receipt", file});
  EXPECT_EQ(garbage.code, 1);
  EXPECT_THAT(garbage.err, HasSubstr("three base64url parts"));
  auto missing = Ctl({"consent", "verify-receipt", dir_.File("nope")});
  EXPECT_EQ(missing.code, 1);
}


// docs/infobank.md's OpenSSL recipe verifies a real receipt (and refuses a
// tampered one): the format is plain RFC 7515/8037, not ours alone.
TEST_F(VerifyReceiptCliTest, OpensslVerifiesAReceiptAsDocumented) {
  // RunCommand takes a path; the script finds openssl on PATH.
  if (testing::RunCommand({"/bin/sh", "-c", "openssl version"}, absl::Seconds(10)).code != 0) {
    GTEST_SKIP() << "no openssl command";
  }
  cv1::Receipt r = Grant();
  const std::string key = dir_.File("bank.pub");
  testing::WriteFile(key, signer_->public_key_pem());
  const std::string script =
      "set -e; cd '" + dir_.path() + "'; JWS=$(cat receipt.jws)\n"
      "printf '%s' \"${JWS%.*}\" > signing-input\n"
      "s=${JWS##*.}; s=$(printf '%s' \"$s\" | tr -- '-_' '+/')\n"
      "while [ $(( ${#s} % 4 )) -ne 0 ]; do s=\"$s=\"; done\n"
      "printf '%s' \"$s\" | openssl base64 -d -A > signature.bin\n"
      "openssl pkeyutl -verify -pubin -inkey bank.pub -rawin -in signing-input "
      "-sigfile signature.bin\n";
  testing::WriteFile(dir_.File("receipt.jws"), r.jws());
  auto good = testing::RunCommand({"/bin/sh", "-c", script}, absl::Seconds(30));
  EXPECT_EQ(good.code, 0) << good.out << good.err;
  EXPECT_THAT(good.out, HasSubstr("Signature Verified Successfully"));
  std::vector<std::string> parts = Parts(r.jws());
  json payload = DecodedJson(parts[1]);
  payload["piiPrincipalId"] = "someone-else";
  testing::WriteFile(dir_.File("receipt.jws"),
                     parts[0] + "." + Base64UrlEncode(payload.dump()) + "." + parts[2]);
  auto bad = testing::RunCommand({"/bin/sh", "-c", script}, absl::Seconds(30));
  EXPECT_NE(bad.code, 0) << bad.out;
}

}  // namespace
}  // namespace cityos::infobank
