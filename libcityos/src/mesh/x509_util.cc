#include "mesh/x509_util.h"

#include <arpa/inet.h>
#include <openssl/asn1.h>
#include <openssl/bn.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/objects.h>
#include <openssl/pem.h>
#include <openssl/sha.h>

#include <cstring>
#include <ctime>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "cityos/ca.h"
#include "core/strings.h"

namespace cityos::mesh_internal {
namespace {

BioPtr MemBio(std::string_view data) {
  return BioPtr(BIO_new_mem_buf(data.data(), static_cast<int>(data.size())));
}

std::string BioToString(BIO* bio) {
  char* data = nullptr;
  long n = BIO_get_mem_data(bio, &data);
  return n > 0 ? std::string(data, static_cast<size_t>(n)) : std::string();
}

struct ObjFree {
  void operator()(ASN1_OBJECT* p) const { ASN1_OBJECT_free(p); }
};

std::unique_ptr<ASN1_OBJECT, ObjFree> RolesObject() {
  return std::unique_ptr<ASN1_OBJECT, ObjFree>(
      OBJ_txt2obj(kRolesExtensionOid, 1));
}

}  // namespace

std::string OpensslError() {
  unsigned long e = ERR_get_error();
  ERR_clear_error();
  if (e == 0) return "unknown error";
  char buf[256];
  ERR_error_string_n(e, buf, sizeof(buf));
  return buf;
}

absl::StatusOr<std::vector<X509Ptr>> ParseCertsPem(std::string_view pem) {
  BioPtr bio = MemBio(pem);
  std::vector<X509Ptr> out;
  while (X509* x = PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr)) {
    out.emplace_back(x);
  }
  ERR_clear_error();  // the loop ends with "no start line"
  if (out.empty())
    return absl::InvalidArgumentError("no PEM certificate found");
  return out;
}

absl::StatusOr<X509Ptr> ParseCertPem(std::string_view pem) {
  BioPtr bio = MemBio(pem);
  X509Ptr x(PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr));
  if (x == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("not a PEM certificate: ", OpensslError()));
  }
  return x;
}

absl::StatusOr<PkeyPtr> ParseKeyPem(std::string_view pem) {
  BioPtr bio = MemBio(pem);
  // A null passphrase callback with an empty passphrase: encrypted keys fail
  // instead of prompting on the terminal.
  PkeyPtr k(PEM_read_bio_PrivateKey(bio.get(), nullptr, nullptr,
                                    const_cast<char*>("")));
  if (k == nullptr) {
    ERR_clear_error();  // the message could describe key material: not passed
                        // on
    return absl::InvalidArgumentError("not an unencrypted PEM private key");
  }
  return k;
}

absl::StatusOr<std::vector<X509CrlPtr>> ParseCrlsPem(std::string_view pem) {
  BioPtr bio = MemBio(pem);
  std::vector<X509CrlPtr> out;
  while (X509_CRL* c =
             PEM_read_bio_X509_CRL(bio.get(), nullptr, nullptr, nullptr)) {
    out.emplace_back(c);
  }
  ERR_clear_error();
  if (out.empty()) return absl::InvalidArgumentError("no PEM CRL found");
  return out;
}

std::string CertToPem(X509* cert) {
  BioPtr bio(BIO_new(BIO_s_mem()));
  PEM_write_bio_X509(bio.get(), cert);
  return BioToString(bio.get());
}

std::string KeyToPem(EVP_PKEY* key) {
  BioPtr bio(BIO_new(BIO_s_mem()));
  PEM_write_bio_PrivateKey(bio.get(), key, nullptr, nullptr, 0, nullptr,
                           nullptr);
  return BioToString(bio.get());
}

std::string CrlToPem(X509_CRL* crl) {
  BioPtr bio(BIO_new(BIO_s_mem()));
  PEM_write_bio_X509_CRL(bio.get(), crl);
  return BioToString(bio.get());
}

absl::StatusOr<PkeyPtr> NewP256Key() {
  PkeyPtr key(EVP_EC_gen("P-256"));
  if (key == nullptr) {
    return absl::InternalError(
        absl::StrCat("cannot generate a P-256 key: ", OpensslError()));
  }
  return key;
}

std::string SerialHex(const ASN1_INTEGER* serial) {
  BIGNUM* bn = ASN1_INTEGER_to_BN(serial, nullptr);
  if (bn == nullptr) return "";
  char* hex = BN_bn2hex(bn);
  std::string out = hex != nullptr ? hex : "";
  OPENSSL_free(hex);
  BN_free(bn);
  return out;
}

absl::StatusOr<std::string> CanonicalSerial(std::string_view hex) {
  std::string s = absl::AsciiStrToUpper(AV(hex));
  if (s.empty() || s.size() > 64 ||
      s.find_first_not_of("0123456789ABCDEF") != std::string::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("serial \"", AV(hex), "\" is not a hexadecimal number"));
  }
  size_t first = s.find_first_not_of('0');
  return first == std::string::npos ? std::string("0") : s.substr(first);
}

absl::Time FromAsn1Time(const ASN1_TIME* t) {
  struct tm tm;
  std::memset(&tm, 0, sizeof(tm));
  if (t == nullptr || ASN1_TIME_to_tm(t, &tm) != 1) return absl::InfinitePast();
  return absl::FromTimeT(timegm(&tm));
}

std::string NameToString(const X509_NAME* name) {
  BioPtr bio(BIO_new(BIO_s_mem()));
  X509_NAME_print_ex(bio.get(), name, 0, XN_FLAG_RFC2253);
  return BioToString(bio.get());
}

std::vector<std::string> UriSans(X509* cert) {
  std::vector<std::string> out;
  auto* names = static_cast<GENERAL_NAMES*>(
      X509_get_ext_d2i(cert, NID_subject_alt_name, nullptr, nullptr));
  if (names == nullptr) return out;
  for (int i = 0; i < sk_GENERAL_NAME_num(names); ++i) {
    const GENERAL_NAME* g = sk_GENERAL_NAME_value(names, i);
    if (g->type != GEN_URI) continue;
    const ASN1_IA5STRING* s = g->d.uniformResourceIdentifier;
    out.emplace_back(reinterpret_cast<const char*>(ASN1_STRING_get0_data(s)),
                     static_cast<size_t>(ASN1_STRING_length(s)));
  }
  GENERAL_NAMES_free(names);
  return out;
}

absl::StatusOr<std::vector<std::string>> RolesOf(X509* cert) {
  auto obj = RolesObject();
  int idx = X509_get_ext_by_OBJ(cert, obj.get(), -1);
  if (idx < 0) return std::vector<std::string>{};
  if (X509_get_ext_by_OBJ(cert, obj.get(), idx) >= 0) {
    return absl::InvalidArgumentError("roles extension appears twice");
  }
  X509_EXTENSION* ext = X509_get_ext(cert, idx);
  const ASN1_OCTET_STRING* value = X509_EXTENSION_get_data(ext);
  const unsigned char* p = ASN1_STRING_get0_data(value);
  long len = ASN1_STRING_length(value);
  ASN1_UTF8STRING* s = d2i_ASN1_UTF8STRING(nullptr, &p, len);
  if (s == nullptr || p != ASN1_STRING_get0_data(value) + len) {
    ASN1_UTF8STRING_free(s);
    ERR_clear_error();
    return absl::InvalidArgumentError(
        "roles extension is not a DER UTF8String");
  }
  std::string csv(reinterpret_cast<const char*>(ASN1_STRING_get0_data(s)),
                  static_cast<size_t>(ASN1_STRING_length(s)));
  ASN1_UTF8STRING_free(s);
  std::vector<std::string> roles;
  for (absl::string_view r : absl::StrSplit(csv, ',', absl::SkipEmpty())) {
    roles.emplace_back(r);
  }
  return roles;
}

absl::Status AddRolesExtension(X509* cert,
                               const std::vector<std::string>& roles) {
  std::string csv = absl::StrJoin(roles, ",");
  ASN1_UTF8STRING* s = ASN1_UTF8STRING_new();
  ASN1_STRING_set(s, csv.data(), static_cast<int>(csv.size()));
  unsigned char* der = nullptr;
  int n = i2d_ASN1_UTF8STRING(s, &der);
  ASN1_UTF8STRING_free(s);
  if (n <= 0) return absl::InternalError("cannot encode the roles extension");
  ASN1_OCTET_STRING* oct = ASN1_OCTET_STRING_new();
  ASN1_OCTET_STRING_set(oct, der, n);
  OPENSSL_free(der);
  auto obj = RolesObject();
  X509_EXTENSION* ext =
      X509_EXTENSION_create_by_OBJ(nullptr, obj.get(), 0, oct);
  ASN1_OCTET_STRING_free(oct);
  if (ext == nullptr || X509_add_ext(cert, ext, -1) != 1) {
    X509_EXTENSION_free(ext);
    return absl::InternalError(
        absl::StrCat("cannot add the roles extension: ", OpensslError()));
  }
  X509_EXTENSION_free(ext);
  return absl::OkStatus();
}

std::string Sha256Hex(std::string_view data) {
  unsigned char md[SHA256_DIGEST_LENGTH];
  SHA256(reinterpret_cast<const unsigned char*>(data.data()), data.size(), md);
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  out.reserve(2 * sizeof(md));
  for (unsigned char c : md) {
    out.push_back(kHex[c >> 4]);
    out.push_back(kHex[c & 15]);
  }
  return out;
}

}  // namespace cityos::mesh_internal
