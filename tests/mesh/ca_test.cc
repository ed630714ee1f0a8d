// The city CA: create/open, issuing (SANs, roles extension, validity),
// revocation and the CRL, file modes, the dev PKI, the client context file.
#include "cityos/ca.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <sys/stat.h>

#include <cstdio>
#include <filesystem>

#include "cityos/tls.h"
#include "testutil.h"

namespace cityos {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::UnorderedElementsAre;

// Serials on a CRL file, read with OpenSSL directly (not our reader).
std::vector<std::string> CrlSerials(const std::string& path, X509* ca) {
  std::string pem = testing::ReadFile(path);
  BIO* bio = BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size()));
  X509_CRL* crl = PEM_read_bio_X509_CRL(bio, nullptr, nullptr, nullptr);
  BIO_free(bio);
  std::vector<std::string> out;
  if (crl == nullptr) return {"<unreadable>"};
  EXPECT_EQ(X509_CRL_verify(crl, X509_get0_pubkey(ca)), 1) << "CRL signature";
  EXPECT_NE(X509_CRL_get0_nextUpdate(crl), nullptr);
  STACK_OF(X509_REVOKED)* revoked = X509_CRL_get_REVOKED(crl);
  for (int i = 0; i < sk_X509_REVOKED_num(revoked); ++i) {
    BIGNUM* bn = ASN1_INTEGER_to_BN(
        X509_REVOKED_get0_serialNumber(sk_X509_REVOKED_value(revoked, i)),
        nullptr);
    char* hex = BN_bn2hex(bn);
    out.emplace_back(hex);
    OPENSSL_free(hex);
    BN_free(bn);
  }
  X509_CRL_free(crl);
  return out;
}

X509* ReadX509(const std::string& path) {
  std::string pem = testing::ReadFile(path);
  BIO* bio = BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size()));
  X509* x = PEM_read_bio_X509(bio, nullptr, nullptr, nullptr);
  BIO_free(bio);
  return x;
}

TEST(CityCa, CreateWritesRootKeyIndexAndEmptyCrl) {
  testing::TempDir dir;
  std::string ca_dir = dir.File("ca");
  auto ca = CityCa::Create(ca_dir, "quzhou.city");
  ASSERT_TRUE(ca.ok()) << ca.status();
  EXPECT_EQ((*ca)->trust_domain(), "quzhou.city");
  EXPECT_EQ((*ca)->ca_file(), ca_dir + "/ca.pem");
  EXPECT_EQ(testing::FileMode(ca_dir), 0700);
  EXPECT_EQ(testing::FileMode(ca_dir + "/ca.key"), 0600);
  EXPECT_EQ(testing::FileMode(ca_dir + "/index.json"), 0600);
  auto info = ParseCertificatePem(testing::ReadFile((*ca)->ca_file()));
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_TRUE(info->is_ca);
  EXPECT_THAT(info->uris, ElementsAre("spiffe://quzhou.city"));
  X509* root = ReadX509((*ca)->ca_file());
  ASSERT_NE(root, nullptr);
  EXPECT_THAT(CrlSerials((*ca)->crl_file(), root), IsEmpty());
  X509_free(root);

  auto again = CityCa::Create(ca_dir, "quzhou.city");
  EXPECT_EQ(again.status().code(), absl::StatusCode::kAlreadyExists);
  auto bad = CityCa::Create(dir.File("bad"), "no/slashes");
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  auto missing = CityCa::Open(dir.File("nothing"));
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
}

TEST(CityCa, IssuesServiceCertWithSansRolesAndKeyMode) {
  testing::TempDir dir;
  auto ca = CityCa::Create(dir.File("ca"), "quzhou.city");
  ASSERT_TRUE(ca.ok()) << ca.status();
  auto rec = (*ca)->Issue({.org = "grid",
                           .kind = PrincipalKind::kService,
                           .name = "meters",
                           .roles = {"metering", "disaster-authority"},
                           .dns_names = {"localhost"},
                           .ip_addresses = {"127.0.0.1", "::1"},
                           .out = dir.File("certs/meters")});
  ASSERT_TRUE(rec.ok()) << rec.status();
  EXPECT_EQ(rec->spiffe_id, "spiffe://quzhou.city/org/grid/svc/meters");
  EXPECT_EQ(rec->cert_file, dir.File("certs/meters.pem"));
  EXPECT_EQ(testing::FileMode(dir.File("certs/meters.key")), 0600);
  EXPECT_EQ(testing::FileMode(dir.File("certs")), 0700);
  EXPECT_FALSE(rec->revoked);

  auto info =
      ParseCertificatePem(testing::ReadFile(dir.File("certs/meters.pem")));
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->serial, rec->serial);
  EXPECT_THAT(info->uris,
              ElementsAre("spiffe://quzhou.city/org/grid/svc/meters"));
  EXPECT_THAT(info->dns_names, ElementsAre("localhost"));
  EXPECT_THAT(info->ip_addresses, ElementsAre("127.0.0.1", "::1"));
  // The roles extension round-trips.
  EXPECT_THAT(info->roles, ElementsAre("metering", "disaster-authority"));
  EXPECT_FALSE(info->is_ca);
  EXPECT_THAT(info->issuer, HasSubstr("O=quzhou.city"));

  // The extension sits under the documented OID, non-critical, as a
  // UTF8String (checked with OpenSSL directly).
  X509* x = ReadX509(dir.File("certs/meters.pem"));
  ASSERT_NE(x, nullptr);
  ASN1_OBJECT* oid = OBJ_txt2obj(kRolesExtensionOid, 1);
  int idx = X509_get_ext_by_OBJ(x, oid, -1);
  ASSERT_GE(idx, 0);
  X509_EXTENSION* ext = X509_get_ext(x, idx);
  EXPECT_EQ(X509_EXTENSION_get_critical(ext), 0);
  const ASN1_OCTET_STRING* data = X509_EXTENSION_get_data(ext);
  const unsigned char* p = ASN1_STRING_get0_data(data);
  ASN1_UTF8STRING* s =
      d2i_ASN1_UTF8STRING(nullptr, &p, ASN1_STRING_length(data));
  ASSERT_NE(s, nullptr);
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(ASN1_STRING_get0_data(s)),
                        ASN1_STRING_length(s)),
            "metering,disaster-authority");
  ASN1_UTF8STRING_free(s);
  ASN1_OBJECT_free(oid);
  X509_free(x);

  // The key is a P-256 key matching the certificate.
  std::string key_pem = testing::ReadFile(dir.File("certs/meters.key"));
  EXPECT_THAT(key_pem, HasSubstr("BEGIN PRIVATE KEY"));
}

TEST(CityCa, UserCertWithoutRolesAndExplicitValidity) {
  testing::TempDir dir;
  auto ca = CityCa::Create(dir.File("ca"), "quzhou.city");
  ASSERT_TRUE(ca.ok());
  absl::Time nb = absl::Now() - absl::Hours(48);
  absl::Time na = absl::Now() - absl::Hours(24);
  auto rec = (*ca)->Issue({.org = "hospital",
                           .kind = PrincipalKind::kUser,
                           .name = "dr.chen",
                           .not_before = nb,
                           .not_after = na,
                           .out = dir.File("chen")});
  ASSERT_TRUE(rec.ok()) << rec.status();
  EXPECT_EQ(rec->spiffe_id, "spiffe://quzhou.city/org/hospital/user/dr.chen");
  auto info = ParseCertificatePem(testing::ReadFile(dir.File("chen.pem")));
  ASSERT_TRUE(info.ok());
  EXPECT_THAT(info->roles, IsEmpty());
  EXPECT_EQ(info->not_before, absl::FromUnixSeconds(absl::ToUnixSeconds(nb)));
  EXPECT_EQ(info->not_after, absl::FromUnixSeconds(absl::ToUnixSeconds(na)));
}

TEST(CityCa, IssueRejectsBadSpecsNamingTheField) {
  testing::TempDir dir;
  auto ca = CityCa::Create(dir.File("ca"), "quzhou.city");
  ASSERT_TRUE(ca.ok());
  struct Case {
    CertSpec spec;
    std::string message;
  };
  std::string out = dir.File("x");
  for (const Case& c : std::vector<Case>{
           {{.org = "", .name = "a", .out = out}, "org and name"},
           {{.org = "a/b", .name = "a", .out = out}, "org and name"},
           {{.org = "a", .name = "a", .roles = {"Admin"}, .out = out},
            "roles: \"Admin\""},
           {{.org = "a", .name = "a", .roles = {"a,b"}, .out = out},
            "roles: \"a,b\""},
           {{.org = "a", .name = "a", .dns_names = {"bad host"}, .out = out},
            "dns_names"},
           {{.org = "a",
           .name = "a",
           .ip_addresses = {"300.1.1.1"},
           .out = out},
            "ip_addresses"},
           {{.org = "a", .name = "a"}, "out:"},
           {{.org = "a",
           .name = "a",
           .not_before = absl::Now(),
           .not_after = absl::Now() - absl::Hours(1),
           .out = out},
            "not_after"},
       }) {
    auto rec = (*ca)->Issue(c.spec);
    ASSERT_FALSE(rec.ok()) << c.message;
    EXPECT_EQ(rec.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(rec.status().message(), HasSubstr(c.message));
  }
  EXPECT_FALSE(std::filesystem::exists(out + ".key"));
}

TEST(CityCa, RevokeRewritesSignedCrlAndListShowsState) {
  testing::TempDir dir;
  std::string ca_dir = dir.File("ca");
  std::string a_serial, b_serial;
  {
    auto ca = CityCa::Create(ca_dir, "quzhou.city");
    ASSERT_TRUE(ca.ok());
    auto a = (*ca)->Issue({.org = "grid", .name = "a", .out = dir.File("a")});
    auto b = (*ca)->Issue({.org = "grid", .name = "b", .out = dir.File("b")});
    ASSERT_TRUE(a.ok() && b.ok());
    a_serial = a->serial;
    b_serial = b->serial;
  }
  // A second process (here: a second handle) opens the same CA.
  auto ca = CityCa::Open(ca_dir);
  ASSERT_TRUE(ca.ok()) << ca.status();
  EXPECT_EQ((*ca)->trust_domain(), "quzhou.city");
  std::string lower = a_serial;
  for (char& c : lower) c = static_cast<char>(std::tolower(c));
  ASSERT_TRUE((*ca)->Revoke(lower, RevocationReason::kKeyCompromise).ok());
  ASSERT_TRUE((*ca)
                  ->Revoke(a_serial, RevocationReason::kSuperseded)
                  .ok());  // idempotent
  EXPECT_EQ((*ca)->Revoke("ABCDEF", RevocationReason::kUnspecified).code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ((*ca)->Revoke("xyz", RevocationReason::kUnspecified).code(),
            absl::StatusCode::kInvalidArgument);

  X509* root = ReadX509((*ca)->ca_file());
  ASSERT_NE(root, nullptr);
  EXPECT_THAT(CrlSerials((*ca)->crl_file(), root), ElementsAre(a_serial));
  X509_free(root);

  auto list = (*ca)->List();
  ASSERT_TRUE(list.ok());
  ASSERT_EQ(list->size(), 2u);
  EXPECT_EQ((*list)[0].serial, a_serial);
  EXPECT_TRUE((*list)[0].revoked);
  EXPECT_EQ((*list)[0].reason,
            RevocationReason::kKeyCompromise);  // the first one stands
  EXPECT_EQ((*list)[1].serial, b_serial);
  EXPECT_FALSE((*list)[1].revoked);
}

TEST(CityCa, OpenRefusesAKeyThatDoesNotMatch) {
  testing::TempDir dir;
  ASSERT_TRUE(CityCa::Create(dir.File("one"), "a.city").ok());
  ASSERT_TRUE(CityCa::Create(dir.File("two"), "a.city").ok());
  testing::WriteFile(dir.File("one/ca.key"),
                     testing::ReadFile(dir.File("two/ca.key")));
  auto ca = CityCa::Open(dir.File("one"));
  EXPECT_EQ(ca.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(ca.status().message(), HasSubstr("does not match"));
}

TEST(RevocationReason, NamesRoundTrip) {
  for (RevocationReason r :
       {RevocationReason::kUnspecified, RevocationReason::kKeyCompromise,
        RevocationReason::kAffiliationChanged, RevocationReason::kSuperseded,
        RevocationReason::kCessationOfOperation}) {
    EXPECT_EQ(*ParseRevocationReason(RevocationReasonName(r)), r);
  }
  EXPECT_THAT(ParseRevocationReason("oops").status().message(),
              HasSubstr("key-compromise"));
}

TEST(DevPki, CreatesOnceThenReusesAndCoversTheListenHost) {
  testing::TempDir dir;
  DevPkiOptions options{.dir = dir.File("pki"),
                        .trust_domain = "demo.city",
                        .listen_host = "10.1.2.3"};
  auto first = EnsureDevPki(options);
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_TRUE(first->created);
  EXPECT_EQ(first->node_spiffe_id, "spiffe://demo.city/org/city/svc/cityosd");
  for (const std::string& key : {first->node_key_file, first->admin_key_file,
                                 dir.File("pki/ca/ca.key")}) {
    EXPECT_EQ(testing::FileMode(key), 0600) << key;
  }
  auto node = ParseCertificatePem(testing::ReadFile(first->node_cert_file));
  ASSERT_TRUE(node.ok());
  EXPECT_THAT(node->ip_addresses,
              UnorderedElementsAre("127.0.0.1", "10.1.2.3"));
  EXPECT_THAT(node->dns_names, ElementsAre("localhost"));
  auto admin = ParseCertificatePem(testing::ReadFile(first->admin_cert_file));
  ASSERT_TRUE(admin.ok());
  EXPECT_THAT(admin->uris,
              ElementsAre("spiffe://demo.city/org/city/user/admin"));
  EXPECT_THAT(admin->roles,
              ElementsAre("admin", "policy-admin", "auditor", "disaster-authority",
                          "carbon-viewer", "carbon-admin"));

  auto second = EnsureDevPki(options);
  ASSERT_TRUE(second.ok());
  EXPECT_FALSE(second->created);
  EXPECT_EQ(
      ParseCertificatePem(testing::ReadFile(second->node_cert_file))->serial,
      node->serial);

  // Another listen host: a new node certificate from the same CA.
  options.listen_host = "node.example";
  auto third = EnsureDevPki(options);
  ASSERT_TRUE(third.ok());
  EXPECT_TRUE(third->created);
  auto renewed = ParseCertificatePem(testing::ReadFile(third->node_cert_file));
  EXPECT_NE(renewed->serial, node->serial);
  EXPECT_THAT(renewed->dns_names, ElementsAre("localhost", "node.example"));

  options.trust_domain = "other.city";
  EXPECT_EQ(EnsureDevPki(options).status().code(),
            absl::StatusCode::kFailedPrecondition);
}

TEST(ClientConfig, SaveMergesContextsAndLoadReadsThem) {
  testing::TempDir dir;
  std::string path = dir.File("home/.config/cityos/config.yaml");
  ClientContext a{.name = "a",
                  .endpoint = "127.0.0.1:1",
                  .trust_domain = "a.city",
                  .ca = "/ca",
                  .cert = "/c",
                  .key = "/k"};
  ClientContext b{.name = "b",
                  .endpoint = "127.0.0.1:2",
                  .trust_domain = "b.city",
                  .ca = "/ca2",
                  .cert = "/c2",
                  .key = "/k2",
                  .server_id = "spiffe://b.city/org/x/svc/y"};
  ASSERT_TRUE(SaveClientContext(path, a).ok());
  EXPECT_EQ(testing::FileMode(path), 0600);
  EXPECT_EQ(testing::FileMode(dir.File("home/.config/cityos")), 0700);
  ASSERT_TRUE(SaveClientContext(path, b).ok());
  a.endpoint = "127.0.0.1:3";
  ASSERT_TRUE(SaveClientContext(path, a, /*make_current=*/false).ok());
  auto config = LoadClientConfig(path);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->current_context, "b");
  ASSERT_EQ(config->contexts.size(), 2u);
  EXPECT_EQ(config->contexts[0].name, "a");
  EXPECT_EQ(config->contexts[0].endpoint, "127.0.0.1:3");
  EXPECT_EQ(config->contexts[1].server_id, "spiffe://b.city/org/x/svc/y");
  EXPECT_EQ(config->contexts[1].key, "/k2");

  testing::WriteFile(path, "contexts:\n  - name: x\n");
  EXPECT_THAT(LoadClientConfig(path).status().message(),
              HasSubstr("contexts[0].endpoint"));
}

}  // namespace
}  // namespace cityos
