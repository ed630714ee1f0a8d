// The city CA: issuing, revoking, CRLs, the on-disk index (cityos/ca.h).
#include "cityos/ca.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/mutex.h"
#include "cityos/logging.h"
#include "cityos/status.h"
#include "core/file_util.h"
#include "core/strings.h"
#include "mesh/x509_util.h"

namespace cityos {

using mesh_internal::AddRolesExtension;
using mesh_internal::CanonicalSerial;
using mesh_internal::CertToPem;
using mesh_internal::CrlToPem;
using mesh_internal::FromAsn1Time;
using mesh_internal::KeyToPem;
using mesh_internal::NewP256Key;
using mesh_internal::OpensslError;
using mesh_internal::ParseCertPem;
using mesh_internal::ParseKeyPem;
using mesh_internal::PkeyPtr;
using mesh_internal::SerialHex;
using mesh_internal::X509Ptr;

namespace {

namespace fs = std::filesystem;

constexpr char kCaCert[] = "ca.pem";
constexpr char kCaKey[] = "ca.key";
constexpr char kIndex[] = "index.json";
constexpr char kCrl[] = "crl.pem";
constexpr char kLock[] = "ca.lock";
constexpr absl::Duration kClockSkew = absl::Minutes(5);
constexpr absl::Duration kCrlValidity = absl::Hours(24 * 30);

struct ReasonName {
  RevocationReason reason;
  const char* name;
};
constexpr ReasonName kReasons[] = {
    {RevocationReason::kUnspecified, "unspecified"},
    {RevocationReason::kKeyCompromise, "key-compromise"},
    {RevocationReason::kAffiliationChanged, "affiliation-changed"},
    {RevocationReason::kSuperseded, "superseded"},
    {RevocationReason::kCessationOfOperation, "cessation-of-operation"},
};

std::string Rfc3339(absl::Time t) {
  return absl::FormatTime("%Y-%m-%dT%H:%M:%SZ", t, absl::UTCTimeZone());
}

absl::Time ParseTimeOr(const std::string& s, absl::Time fallback) {
  absl::Time t;
  std::string err;
  if (!absl::ParseTime(absl::RFC3339_full, s, &t, &err)) return fallback;
  return t;
}

bool ValidRole(std::string_view r) {
  if (r.empty() || r.size() > 64) return false;
  return std::all_of(r.begin(), r.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' ||
           c == '_' || c == '-';
  });
}

bool ValidDnsName(std::string_view d) {
  if (d.empty() || d.size() > 253) return false;
  return std::all_of(d.begin(), d.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
           (c >= '0' && c <= '9') || c == '.' || c == '-' || c == '*';
  });
}

// Checks `trust_domain` the same way principals are checked.
absl::Status CheckTrustDomain(std::string_view trust_domain) {
  auto p = Principal::FromSpiffeId(
      absl::StrCat("spiffe://", AV(trust_domain), "/org/x/svc/x"));
  if (!p.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("trust domain \"", AV(trust_domain),
                     "\" is empty or has characters outside [A-Za-z0-9._-]"));
  }
  return absl::OkStatus();
}

absl::Status EnsureDir(const std::string& dir) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot create directory ", dir, ": ", ec.message()));
  }
  ::chmod(dir.c_str(), 0700);
  return absl::OkStatus();
}

// An exclusive flock(2) on <dir>/ca.lock for the scope.
class FileLock {
 public:
  static absl::StatusOr<std::unique_ptr<FileLock>> Acquire(
      const std::string& path) {
    int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0)
      return absl::FailedPreconditionError(absl::StrCat("cannot open ", path));
    while (::flock(fd, LOCK_EX) != 0) {
      if (errno != EINTR) {
        ::close(fd);
        return absl::FailedPreconditionError(
            absl::StrCat("cannot lock ", path));
      }
    }
    return std::unique_ptr<FileLock>(new FileLock(fd));
  }
  ~FileLock() {
    ::flock(fd_, LOCK_UN);
    ::close(fd_);
  }

 private:
  explicit FileLock(int fd) : fd_(fd) {}
  int fd_;
};

// Sets a random positive 127-bit serial (always 16 DER bytes, 32 hex digits).
absl::Status SetRandomSerial(X509* x) {
  BIGNUM* bn = BN_new();
  bool ok = bn != nullptr &&
            BN_rand(bn, 127, BN_RAND_TOP_ONE, BN_RAND_BOTTOM_ANY) == 1 &&
            BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(x)) != nullptr;
  BN_free(bn);
  if (!ok)
    return absl::InternalError(
        absl::StrCat("cannot make a serial: ", OpensslError()));
  return absl::OkStatus();
}

absl::Status AddConfExtension(X509* subject, X509* issuer, int nid,
                              const char* value) {
  X509V3_CTX ctx;
  X509V3_set_ctx(&ctx, issuer, subject, nullptr, nullptr, 0);
  X509_EXTENSION* ext = X509V3_EXT_nconf_nid(nullptr, &ctx, nid, value);
  if (ext == nullptr || X509_add_ext(subject, ext, -1) != 1) {
    X509_EXTENSION_free(ext);
    return absl::InternalError(absl::StrCat(
        "cannot add extension ", OBJ_nid2sn(nid), ": ", OpensslError()));
  }
  X509_EXTENSION_free(ext);
  return absl::OkStatus();
}

absl::Status AddSans(X509* x, const std::vector<std::string>& uris,
                     const std::vector<std::string>& dns,
                     const std::vector<std::string>& ips) {
  GENERAL_NAMES* names = sk_GENERAL_NAME_new_null();
  auto add_string = [&](int type, const std::string& v) {
    GENERAL_NAME* g = GENERAL_NAME_new();
    ASN1_IA5STRING* s = ASN1_IA5STRING_new();
    ASN1_STRING_set(s, v.data(), static_cast<int>(v.size()));
    GENERAL_NAME_set0_value(g, type, s);
    sk_GENERAL_NAME_push(names, g);
  };
  for (const std::string& u : uris) add_string(GEN_URI, u);
  for (const std::string& d : dns) add_string(GEN_DNS, d);
  for (const std::string& ip : ips) {
    unsigned char buf[16];
    int len = 0;
    if (inet_pton(AF_INET, ip.c_str(), buf) == 1) {
      len = 4;
    } else if (inet_pton(AF_INET6, ip.c_str(), buf) == 1) {
      len = 16;
    }
    GENERAL_NAME* g = GENERAL_NAME_new();
    ASN1_OCTET_STRING* s = ASN1_OCTET_STRING_new();
    ASN1_OCTET_STRING_set(s, buf, len);
    GENERAL_NAME_set0_value(g, GEN_IPADD, s);
    sk_GENERAL_NAME_push(names, g);
  }
  int rc =
      X509_add1_ext_i2d(x, NID_subject_alt_name, names, 0, X509V3_ADD_DEFAULT);
  GENERAL_NAMES_free(names);
  if (rc != 1) {
    return absl::InternalError(
        absl::StrCat("cannot add SANs: ", OpensslError()));
  }
  return absl::OkStatus();
}

absl::Status SetValidity(X509* x, absl::Time not_before, absl::Time not_after) {
  ASN1_TIME* nb = ASN1_TIME_set(nullptr, absl::ToTimeT(not_before));
  ASN1_TIME* na = ASN1_TIME_set(nullptr, absl::ToTimeT(not_after));
  bool ok = nb != nullptr && na != nullptr && X509_set1_notBefore(x, nb) == 1 &&
            X509_set1_notAfter(x, na) == 1;
  ASN1_TIME_free(nb);
  ASN1_TIME_free(na);
  if (!ok) return absl::InternalError("cannot set the validity period");
  return absl::OkStatus();
}

nlohmann::json RecordToJson(const CertRecord& r) {
  nlohmann::json j = {{"serial", r.serial},
                      {"spiffe_id", r.spiffe_id},
                      {"roles", r.roles},
                      {"not_before", Rfc3339(r.not_before)},
                      {"not_after", Rfc3339(r.not_after)},
                      {"issued_at", Rfc3339(r.issued_at)},
                      {"cert_file", r.cert_file}};
  if (r.revoked) {
    j["revoked_at"] = Rfc3339(r.revoked_at);
    j["revocation_reason"] = RevocationReasonName(r.reason);
  }
  return j;
}

absl::StatusOr<CertRecord> RecordFromJson(const nlohmann::json& j) {
  CertRecord r;
  r.serial = j.at("serial").get<std::string>();
  r.spiffe_id = j.at("spiffe_id").get<std::string>();
  r.roles = j.value("roles", std::vector<std::string>{});
  r.not_before =
      ParseTimeOr(j.at("not_before").get<std::string>(), absl::InfinitePast());
  r.not_after =
      ParseTimeOr(j.at("not_after").get<std::string>(), absl::InfinitePast());
  r.issued_at = ParseTimeOr(j.value("issued_at", ""), absl::InfinitePast());
  r.cert_file = j.value("cert_file", "");
  if (j.contains("revoked_at")) {
    r.revoked = true;
    r.revoked_at = ParseTimeOr(j.at("revoked_at").get<std::string>(),
                               absl::InfinitePast());
    auto reason =
        ParseRevocationReason(j.value("revocation_reason", "unspecified"));
    if (!reason.ok()) return reason.status();
    r.reason = *reason;
  }
  return r;
}

struct Index {
  std::string trust_domain;
  int64_t crl_number = 0;
  std::vector<CertRecord> certs;
};

class CityCaImpl final : public CityCa {
 public:
  CityCaImpl(std::string dir, std::string trust_domain, X509Ptr cert,
             PkeyPtr key)
      : dir_(std::move(dir)),
        trust_domain_(std::move(trust_domain)),
        cert_(std::move(cert)),
        key_(std::move(key)) {}

  const std::string& trust_domain() const override { return trust_domain_; }
  std::string ca_file() const override { return Path(kCaCert); }
  std::string crl_file() const override { return Path(kCrl); }

  absl::StatusOr<CertRecord> Issue(const CertSpec& spec) override {
    Principal who;
    who.trust_domain = trust_domain_;
    who.org = spec.org;
    who.kind = spec.kind;
    who.name = spec.name;
    std::string spiffe_id = who.SpiffeId();
    if (auto p = Principal::FromSpiffeId(spiffe_id); !p.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "org and name must be 1-128 characters of [A-Za-z0-9._-]: ",
          p.status().message()));
    }
    if (spec.org == Principal::Node("x", "x").org) {
      // The node's in-process identity, which the PDP trusts with everything.
      return absl::InvalidArgumentError(absl::StrCat(
          "org \"", spec.org, "\" is reserved for the node's in-process identity"));
    }
    for (const std::string& r : spec.roles) {
      if (!ValidRole(r)) {
        return absl::InvalidArgumentError(absl::StrCat(
            "roles: \"", r, "\" is not 1-64 characters of [a-z0-9._-]"));
      }
    }
    for (const std::string& d : spec.dns_names) {
      if (!ValidDnsName(d)) {
        return absl::InvalidArgumentError(
            absl::StrCat("dns_names: \"", d, "\" is not a DNS name"));
      }
    }
    for (const std::string& ip : spec.ip_addresses) {
      unsigned char buf[16];
      if (inet_pton(AF_INET, ip.c_str(), buf) != 1 &&
          inet_pton(AF_INET6, ip.c_str(), buf) != 1) {
        return absl::InvalidArgumentError(absl::StrCat(
            "ip_addresses: \"", ip, "\" is not an IPv4 or IPv6 address"));
      }
    }
    if (spec.out.empty())
      return absl::InvalidArgumentError("out: the output path is empty");
    absl::Time not_before = spec.not_before.value_or(absl::Now() - kClockSkew);
    absl::Time not_after = spec.not_after.value_or(not_before + spec.validity);
    if (not_after <= not_before) {
      return absl::InvalidArgumentError(
          "not_after must be later than not_before");
    }

    CITYOS_ASSIGN_OR_RETURN(PkeyPtr key, NewP256Key());
    X509Ptr x(X509_new());
    X509_set_version(x.get(), X509_VERSION_3);
    CITYOS_RETURN_IF_ERROR(SetRandomSerial(x.get()));
    X509_NAME* name = X509_get_subject_name(x.get());
    X509_NAME_add_entry_by_txt(
        name, "O", MBSTRING_UTF8,
        reinterpret_cast<const unsigned char*>(spec.org.c_str()), -1, -1, 0);
    X509_NAME_add_entry_by_txt(
        name, "OU", MBSTRING_UTF8,
        reinterpret_cast<const unsigned char*>(
            spec.kind == PrincipalKind::kService ? "svc" : "user"),
        -1, -1, 0);
    std::string cn = spec.name.substr(0, 64);
    X509_NAME_add_entry_by_txt(
        name, "CN", MBSTRING_UTF8,
        reinterpret_cast<const unsigned char*>(cn.c_str()), -1, -1, 0);
    X509_set_issuer_name(x.get(), X509_get_subject_name(cert_.get()));
    CITYOS_RETURN_IF_ERROR(SetValidity(x.get(), not_before, not_after));
    X509_set_pubkey(x.get(), key.get());
    CITYOS_RETURN_IF_ERROR(AddConfExtension(
        x.get(), cert_.get(), NID_basic_constraints, "critical,CA:FALSE"));
    CITYOS_RETURN_IF_ERROR(AddConfExtension(x.get(), cert_.get(), NID_key_usage,
                                            "critical,digitalSignature"));
    // Services both serve and call; people and apps only call.
    CITYOS_RETURN_IF_ERROR(AddConfExtension(
        x.get(), cert_.get(), NID_ext_key_usage,
        spec.kind == PrincipalKind::kService ? "serverAuth,clientAuth"
                                             : "clientAuth"));
    CITYOS_RETURN_IF_ERROR(AddConfExtension(
        x.get(), cert_.get(), NID_subject_key_identifier, "hash"));
    CITYOS_RETURN_IF_ERROR(AddConfExtension(
        x.get(), cert_.get(), NID_authority_key_identifier, "keyid:always"));
    CITYOS_RETURN_IF_ERROR(
        AddSans(x.get(), {spiffe_id}, spec.dns_names, spec.ip_addresses));
    if (!spec.roles.empty())
      CITYOS_RETURN_IF_ERROR(AddRolesExtension(x.get(), spec.roles));
    if (X509_sign(x.get(), key_.get(), EVP_sha256()) <= 0) {
      return absl::InternalError(absl::StrCat("cannot sign: ", OpensslError()));
    }

    std::string cert_file =
        fs::absolute(spec.out + ".pem").lexically_normal().string();
    std::string key_file =
        fs::absolute(spec.out + ".key").lexically_normal().string();
    CITYOS_RETURN_IF_ERROR(
        EnsureDir(fs::path(cert_file).parent_path().string()));

    CertRecord record;
    record.serial = SerialHex(X509_get0_serialNumber(x.get()));
    record.spiffe_id = spiffe_id;
    record.roles = spec.roles;
    record.not_before = FromAsn1Time(X509_get0_notBefore(x.get()));
    record.not_after = FromAsn1Time(X509_get0_notAfter(x.get()));
    record.issued_at = absl::Now();
    record.cert_file = cert_file;

    absl::MutexLock lock(&mu_);
    CITYOS_ASSIGN_OR_RETURN(auto flock, FileLock::Acquire(Path(kLock)));
    CITYOS_ASSIGN_OR_RETURN(Index index, LoadIndex());
    CITYOS_RETURN_IF_ERROR(
        WriteFileAtomically(key_file, KeyToPem(key.get()), 0600));
    CITYOS_RETURN_IF_ERROR(
        WriteFileAtomically(cert_file, CertToPem(x.get()), 0644));
    index.certs.push_back(record);
    CITYOS_RETURN_IF_ERROR(SaveIndex(index));
    LogInfo("ca", "certificate issued",
            {{"serial", record.serial},
             {"spiffe_id", spiffe_id},
             {"roles", absl::StrJoin(spec.roles, ",")},
             {"not_after", Rfc3339(record.not_after)},
             {"cert_file", cert_file}});
    return record;
  }

  absl::Status Revoke(std::string_view serial,
                      RevocationReason reason) override {
    CITYOS_ASSIGN_OR_RETURN(std::string canonical, CanonicalSerial(serial));
    absl::MutexLock lock(&mu_);
    CITYOS_ASSIGN_OR_RETURN(auto flock, FileLock::Acquire(Path(kLock)));
    CITYOS_ASSIGN_OR_RETURN(Index index, LoadIndex());
    auto it = std::find_if(
        index.certs.begin(), index.certs.end(),
        [&](const CertRecord& r) { return r.serial == canonical; });
    if (it == index.certs.end()) {
      return absl::NotFoundError(absl::StrCat(
          "serial ", canonical, ": not issued by the CA in ", dir_));
    }
    if (!it->revoked) {
      it->revoked = true;
      it->revoked_at = absl::Now();
      it->reason = reason;
    }
    CITYOS_RETURN_IF_ERROR(WriteCrlLocked(index));
    LogInfo("ca", "certificate revoked",
            {{"serial", canonical},
             {"spiffe_id", it->spiffe_id},
             {"reason", RevocationReasonName(it->reason)}});
    return absl::OkStatus();
  }

  absl::Status WriteCrl() override {
    absl::MutexLock lock(&mu_);
    CITYOS_ASSIGN_OR_RETURN(auto flock, FileLock::Acquire(Path(kLock)));
    CITYOS_ASSIGN_OR_RETURN(Index index, LoadIndex());
    return WriteCrlLocked(index);
  }

  absl::StatusOr<std::vector<CertRecord>> List() const override {
    absl::MutexLock lock(&mu_);
    CITYOS_ASSIGN_OR_RETURN(Index index, LoadIndex());
    return index.certs;
  }

  // Writes a fresh index and CRL for a new CA.
  absl::Status Initialize() {
    absl::MutexLock lock(&mu_);
    Index index;
    index.trust_domain = trust_domain_;
    return WriteCrlLocked(index);
  }

 private:
  std::string Path(const char* name) const {
    return (fs::path(dir_) / name).string();
  }

  absl::StatusOr<Index> LoadIndex() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    std::string path = Path(kIndex);
    CITYOS_ASSIGN_OR_RETURN(std::string text, ReadFileToString(path));
    Index index;
    try {
      nlohmann::json j = nlohmann::json::parse(text);
      index.trust_domain = j.at("trust_domain").get<std::string>();
      index.crl_number = j.value("crl_number", int64_t{0});
      for (const nlohmann::json& c : j.at("certificates")) {
        CITYOS_ASSIGN_OR_RETURN(CertRecord r, RecordFromJson(c));
        index.certs.push_back(std::move(r));
      }
    } catch (const nlohmann::json::exception& e) {
      return absl::DataLossError(
          absl::StrCat(path, ": corrupt index: ", e.what()));
    }
    return index;
  }

  absl::Status SaveIndex(const Index& index) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    nlohmann::json certs = nlohmann::json::array();
    for (const CertRecord& r : index.certs) certs.push_back(RecordToJson(r));
    nlohmann::json j = {{"format", 1},
                        {"trust_domain", index.trust_domain},
                        {"crl_number", index.crl_number},
                        {"certificates", certs}};
    return WriteFileAtomically(Path(kIndex), j.dump(2) + "\n", 0600);
  }

  // Bumps the CRL number, saves the index, then writes a signed CRL of every
  // revoked certificate.
  absl::Status WriteCrlLocked(Index& index) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    index.crl_number += 1;
    CITYOS_RETURN_IF_ERROR(SaveIndex(index));
    X509_CRL* crl = X509_CRL_new();
    mesh_internal::X509CrlPtr owner(crl);
    X509_CRL_set_version(crl, X509_CRL_VERSION_2);
    X509_CRL_set_issuer_name(crl, X509_get_subject_name(cert_.get()));
    absl::Time now = absl::Now();
    ASN1_TIME* last = ASN1_TIME_set(nullptr, absl::ToTimeT(now));
    ASN1_TIME* next = ASN1_TIME_set(nullptr, absl::ToTimeT(now + kCrlValidity));
    X509_CRL_set1_lastUpdate(crl, last);
    X509_CRL_set1_nextUpdate(crl, next);
    ASN1_TIME_free(last);
    ASN1_TIME_free(next);
    for (const CertRecord& r : index.certs) {
      if (!r.revoked) continue;
      X509_REVOKED* rev = X509_REVOKED_new();
      BIGNUM* bn = nullptr;
      BN_hex2bn(&bn, r.serial.c_str());
      ASN1_INTEGER* serial = BN_to_ASN1_INTEGER(bn, nullptr);
      BN_free(bn);
      X509_REVOKED_set_serialNumber(rev, serial);
      ASN1_INTEGER_free(serial);
      ASN1_TIME* when = ASN1_TIME_set(nullptr, absl::ToTimeT(r.revoked_at));
      X509_REVOKED_set_revocationDate(rev, when);
      ASN1_TIME_free(when);
      ASN1_ENUMERATED* code = ASN1_ENUMERATED_new();
      ASN1_ENUMERATED_set(code, static_cast<long>(r.reason));
      X509_REVOKED_add1_ext_i2d(rev, NID_crl_reason, code, 0, 0);
      ASN1_ENUMERATED_free(code);
      X509_CRL_add0_revoked(crl, rev);
    }
    ASN1_INTEGER* number = ASN1_INTEGER_new();
    ASN1_INTEGER_set_int64(number, index.crl_number);
    X509_CRL_add1_ext_i2d(crl, NID_crl_number, number, 0, 0);
    ASN1_INTEGER_free(number);
    X509_CRL_sort(crl);
    if (X509_CRL_sign(crl, key_.get(), EVP_sha256()) <= 0) {
      return absl::InternalError(
          absl::StrCat("cannot sign the CRL: ", OpensslError()));
    }
    return WriteFileAtomically(Path(kCrl), CrlToPem(crl), 0644);
  }

  const std::string dir_;
  const std::string trust_domain_;
  const X509Ptr cert_;
  const PkeyPtr key_;
  mutable absl::Mutex mu_;
};

}  // namespace

const char* RevocationReasonName(RevocationReason reason) {
  for (const ReasonName& r : kReasons) {
    if (r.reason == reason) return r.name;
  }
  return "unspecified";
}

absl::StatusOr<RevocationReason> ParseRevocationReason(std::string_view name) {
  std::vector<std::string> names;
  for (const ReasonName& r : kReasons) {
    if (name == r.name) return r.reason;
    names.push_back(r.name);
  }
  return absl::InvalidArgumentError(absl::StrCat("revocation reason \"",
                                                 AV(name), "\" is not one of ",
                                                 absl::StrJoin(names, ", ")));
}

absl::StatusOr<CertificateInfo> ParseCertificatePem(std::string_view pem) {
  CITYOS_ASSIGN_OR_RETURN(X509Ptr x, ParseCertPem(pem));
  CertificateInfo info;
  info.serial = SerialHex(X509_get0_serialNumber(x.get()));
  info.subject = mesh_internal::NameToString(X509_get_subject_name(x.get()));
  info.issuer = mesh_internal::NameToString(X509_get_issuer_name(x.get()));
  info.not_before = FromAsn1Time(X509_get0_notBefore(x.get()));
  info.not_after = FromAsn1Time(X509_get0_notAfter(x.get()));
  info.is_ca = X509_check_ca(x.get()) != 0;
  auto* names = static_cast<GENERAL_NAMES*>(
      X509_get_ext_d2i(x.get(), NID_subject_alt_name, nullptr, nullptr));
  for (int i = 0; names != nullptr && i < sk_GENERAL_NAME_num(names); ++i) {
    const GENERAL_NAME* g = sk_GENERAL_NAME_value(names, i);
    if (g->type == GEN_URI || g->type == GEN_DNS) {
      const ASN1_IA5STRING* s =
          g->type == GEN_URI ? g->d.uniformResourceIdentifier : g->d.dNSName;
      std::string v(reinterpret_cast<const char*>(ASN1_STRING_get0_data(s)),
                    static_cast<size_t>(ASN1_STRING_length(s)));
      (g->type == GEN_URI ? info.uris : info.dns_names).push_back(std::move(v));
    } else if (g->type == GEN_IPADD) {
      const ASN1_OCTET_STRING* s = g->d.iPAddress;
      char buf[INET6_ADDRSTRLEN] = {0};
      int len = ASN1_STRING_length(s);
      if (len == 4 || len == 16) {
        inet_ntop(len == 4 ? AF_INET : AF_INET6, ASN1_STRING_get0_data(s), buf,
                  sizeof(buf));
        info.ip_addresses.emplace_back(buf);
      }
    }
  }
  GENERAL_NAMES_free(names);
  CITYOS_ASSIGN_OR_RETURN(info.roles, mesh_internal::RolesOf(x.get()));
  return info;
}

absl::StatusOr<std::unique_ptr<CityCa>> CityCa::Create(
    const std::string& dir_in, std::string_view trust_domain,
    absl::Duration validity) {
  CITYOS_RETURN_IF_ERROR(CheckTrustDomain(trust_domain));
  if (validity <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("CA validity must be positive");
  }
  std::string dir = fs::absolute(dir_in).lexically_normal().string();
  CITYOS_RETURN_IF_ERROR(EnsureDir(dir));
  CITYOS_ASSIGN_OR_RETURN(auto flock,
                          FileLock::Acquire((fs::path(dir) / kLock).string()));
  for (const char* f : {kCaCert, kCaKey}) {
    if (fs::exists(fs::path(dir) / f)) {
      return absl::AlreadyExistsError(
          absl::StrCat(dir, " already holds a CA (", f, ")"));
    }
  }
  CITYOS_ASSIGN_OR_RETURN(PkeyPtr key, NewP256Key());
  X509Ptr x(X509_new());
  X509_set_version(x.get(), X509_VERSION_3);
  CITYOS_RETURN_IF_ERROR(SetRandomSerial(x.get()));
  X509_NAME* name = X509_get_subject_name(x.get());
  std::string td(trust_domain);
  X509_NAME_add_entry_by_txt(name, "O", MBSTRING_UTF8,
                             reinterpret_cast<const unsigned char*>(td.c_str()),
                             -1, -1, 0);
  X509_NAME_add_entry_by_txt(
      name, "CN", MBSTRING_UTF8,
      reinterpret_cast<const unsigned char*>("cityos city CA"), -1, -1, 0);
  X509_set_issuer_name(x.get(), name);
  absl::Time now = absl::Now();
  CITYOS_RETURN_IF_ERROR(
      SetValidity(x.get(), now - kClockSkew, now + validity));
  X509_set_pubkey(x.get(), key.get());
  CITYOS_RETURN_IF_ERROR(AddConfExtension(
      x.get(), x.get(), NID_basic_constraints, "critical,CA:TRUE,pathlen:0"));
  CITYOS_RETURN_IF_ERROR(AddConfExtension(x.get(), x.get(), NID_key_usage,
                                          "critical,keyCertSign,cRLSign"));
  CITYOS_RETURN_IF_ERROR(
      AddConfExtension(x.get(), x.get(), NID_subject_key_identifier, "hash"));
  CITYOS_RETURN_IF_ERROR(
      AddSans(x.get(), {absl::StrCat("spiffe://", td)}, {}, {}));
  if (X509_sign(x.get(), key.get(), EVP_sha256()) <= 0) {
    return absl::InternalError(
        absl::StrCat("cannot sign the CA certificate: ", OpensslError()));
  }
  CITYOS_RETURN_IF_ERROR(WriteFileAtomically((fs::path(dir) / kCaKey).string(),
                                             KeyToPem(key.get()), 0600));
  CITYOS_RETURN_IF_ERROR(WriteFileAtomically((fs::path(dir) / kCaCert).string(),
                                             CertToPem(x.get()), 0644));
  auto ca = std::make_unique<CityCaImpl>(dir, td, std::move(x), std::move(key));
  CITYOS_RETURN_IF_ERROR(ca->Initialize());
  LogInfo("ca", "city CA created", {{"dir", dir}, {"trust_domain", td}});
  return std::unique_ptr<CityCa>(std::move(ca));
}

absl::StatusOr<std::unique_ptr<CityCa>> CityCa::Open(
    const std::string& dir_in) {
  std::string dir = fs::absolute(dir_in).lexically_normal().string();
  std::string cert_path = (fs::path(dir) / kCaCert).string();
  std::string key_path = (fs::path(dir) / kCaKey).string();
  CITYOS_ASSIGN_OR_RETURN(std::string cert_pem, ReadFileToString(cert_path));
  CITYOS_ASSIGN_OR_RETURN(std::string key_pem, ReadFileToString(key_path));
  auto cert = ParseCertPem(cert_pem);
  if (!cert.ok()) {
    return absl::DataLossError(
        absl::StrCat(cert_path, ": ", cert.status().message()));
  }
  auto key = ParseKeyPem(key_pem);
  if (!key.ok()) {
    return absl::DataLossError(
        absl::StrCat(key_path, ": ", key.status().message()));
  }
  if (X509_check_private_key(cert->get(), key->get()) != 1) {
    ERR_clear_error();
    return absl::DataLossError(absl::StrCat(
        key_path, ": the key does not match the certificate ", cert_path));
  }
  std::string td;
  for (const std::string& uri : mesh_internal::UriSans(cert->get())) {
    if (uri.rfind("spiffe://", 0) == 0) td = uri.substr(9);
  }
  if (td.empty()) {
    return absl::DataLossError(
        absl::StrCat(cert_path, ": has no spiffe://<trust-domain> URI SAN"));
  }
  struct stat st;
  if (::stat(key_path.c_str(), &st) == 0 && (st.st_mode & 0077) != 0) {
    LogWarn("ca", "CA key is readable by group or others; fixing to 0600",
            {{"file", key_path}});
    ::chmod(key_path.c_str(), 0600);
  }
  auto ca =
      std::make_unique<CityCaImpl>(dir, td, *std::move(cert), *std::move(key));
  if (!fs::exists(fs::path(dir) / kIndex)) {
    return absl::DataLossError(absl::StrCat(dir, ": ", kIndex, " is missing"));
  }
  return std::unique_ptr<CityCa>(std::move(ca));
}

}  // namespace cityos
