#include "mesh/trust_store.h"

#include <openssl/err.h>
#include <openssl/x509_vfy.h>
#include <sys/stat.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "cityos/logging.h"
#include "cityos/status.h"
#include "core/file_util.h"
#include "core/strings.h"

namespace cityos::mesh_internal {

FileStamp StampOf(const std::string& path) {
  FileStamp s;
  struct stat st;
  if (path.empty() || ::stat(path.c_str(), &st) != 0) return s;
  s.exists = true;
  s.mtime_ns =
      static_cast<int64_t>(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec;
  s.size = st.st_size;
  s.inode = st.st_ino;
  return s;
}

std::string IssuerKey(const X509_NAME* name) {
  int ok = 0;
  unsigned long h = X509_NAME_hash_ex(name, nullptr, nullptr, &ok);
  return absl::StrFormat("%08lx", h);
}

absl::StatusOr<std::shared_ptr<TrustStore>> TrustStore::Open(
    std::string ca_file, std::string crl_file, std::string trust_domain) {
  std::shared_ptr<TrustStore> store(new TrustStore(
      std::move(ca_file), std::move(crl_file), std::move(trust_domain)));
  absl::MutexLock lock(&store->mu_);
  store->ca_stamp_ = StampOf(store->ca_file_);
  store->crl_stamp_ = StampOf(store->crl_file_);
  CITYOS_ASSIGN_OR_RETURN(store->snapshot_, store->Load());
  store->last_check_ = absl::Now();
  return store;
}

absl::StatusOr<std::shared_ptr<const TrustStore::Snapshot>> TrustStore::Load()
    const {
  auto snap = std::make_shared<Snapshot>();
  CITYOS_ASSIGN_OR_RETURN(std::string ca_pem, ReadFileToString(ca_file_));
  auto cas = ParseCertsPem(ca_pem);
  if (!cas.ok()) return Annotate(cas.status(), "ca file " + ca_file_);
  snap->cas = *std::move(cas);
  snap->store.reset(X509_STORE_new());
  for (const X509Ptr& ca : snap->cas) {
    if (X509_check_ca(ca.get()) == 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("ca file ", ca_file_, ": ",
                       NameToString(X509_get_subject_name(ca.get())),
                       " is not a CA certificate"));
    }
    X509_STORE_add_cert(snap->store.get(), ca.get());
  }
  X509_STORE_set_flags(snap->store.get(), X509_V_FLAG_X509_STRICT);
  if (!crl_file_.empty()) {
    CITYOS_ASSIGN_OR_RETURN(std::string crl_pem, ReadFileToString(crl_file_));
    auto crls = ParseCrlsPem(crl_pem);
    if (!crls.ok()) return Annotate(crls.status(), "crl file " + crl_file_);
    for (const X509CrlPtr& crl : *crls) {
      const X509* signer = nullptr;
      for (const X509Ptr& ca : snap->cas) {
        if (X509_NAME_cmp(X509_get_subject_name(ca.get()),
                          X509_CRL_get_issuer(crl.get())) == 0 &&
            X509_CRL_verify(crl.get(), X509_get0_pubkey(ca.get())) == 1) {
          signer = ca.get();
          break;
        }
      }
      ERR_clear_error();
      if (signer == nullptr) {
        return absl::InvalidArgumentError(
            absl::StrCat("crl file ", crl_file_, ": CRL of ",
                         NameToString(X509_CRL_get_issuer(crl.get())),
                         " is not signed by a CA in ", ca_file_));
      }
      const ASN1_TIME* next = X509_CRL_get0_nextUpdate(crl.get());
      if (next != nullptr && FromAsn1Time(next) < absl::Now()) {
        // Still applied: a stale list is better than none. The CA re-signs
        // it on every revocation (or `WriteCrl`).
        LogWarn("mesh", "CRL is past its next update; re-sign it",
                {{"file", crl_file_}});
      }
      std::string issuer = IssuerKey(X509_CRL_get_issuer(crl.get()));
      STACK_OF(X509_REVOKED)* revoked = X509_CRL_get_REVOKED(crl.get());
      for (int i = 0; i < sk_X509_REVOKED_num(revoked); ++i) {
        X509_REVOKED* r = sk_X509_REVOKED_value(revoked, i);
        snap->revoked.insert(absl::StrCat(
            issuer, ":", SerialHex(X509_REVOKED_get0_serialNumber(r))));
      }
    }
  }
  return std::shared_ptr<const Snapshot>(std::move(snap));
}

std::shared_ptr<const TrustStore::Snapshot> TrustStore::Current(
    bool rate_limited) {
  absl::MutexLock lock(&mu_);
  absl::Time now = absl::Now();
  if (rate_limited && now - last_check_ < absl::Seconds(1)) return snapshot_;
  last_check_ = now;
  FileStamp ca = StampOf(ca_file_);
  FileStamp crl = StampOf(crl_file_);
  if (ca == ca_stamp_ && crl == crl_stamp_) return snapshot_;
  auto fresh = Load();
  if (!fresh.ok()) {
    // Most likely a file being replaced; the next check tries again.
    LogError("mesh", "cannot reload trust files; keeping the previous ones",
             {{"error", std::string(fresh.status().message())}});
    return snapshot_;
  }
  ca_stamp_ = ca;
  crl_stamp_ = crl;
  snapshot_ = *std::move(fresh);
  LogInfo("mesh", "trust files reloaded",
          {{"ca_file", ca_file_},
           {"crl_file", crl_file_},
           {"revoked", std::to_string(snapshot_->revoked.size())}});
  return snapshot_;
}

bool TrustStore::IsRevoked(const std::string& issuer_key,
                           const std::string& serial) {
  std::shared_ptr<const Snapshot> snap = Current(/*rate_limited=*/true);
  return snap->revoked.contains(absl::StrCat(issuer_key, ":", serial));
}

PeerVerdict TrustStore::Verify(std::string_view leaf_pem, PeerRole role,
                               const std::optional<std::string>& expected_id) {
  PeerVerdict v;
  v.peer = "(none)";
  if (leaf_pem.empty()) {
    v.reason = "no certificate presented";
    return v;
  }
  auto leaf = ParseCertPem(leaf_pem);
  if (!leaf.ok()) {
    v.reason = "malformed certificate";
    return v;
  }
  X509* x = leaf->get();
  std::vector<std::string> uris = UriSans(x);
  v.peer = uris.size() == 1 ? uris[0] : NameToString(X509_get_subject_name(x));
  v.serial = SerialHex(X509_get0_serialNumber(x));

  std::shared_ptr<const Snapshot> snap = Current(/*rate_limited=*/false);
  X509_STORE_CTX* ctx = X509_STORE_CTX_new();
  X509_STORE_CTX_init(ctx, snap->store.get(), x, nullptr);
  X509_STORE_CTX_set_purpose(ctx, role == PeerRole::kClient
                                      ? X509_PURPOSE_SSL_CLIENT
                                      : X509_PURPOSE_SSL_SERVER);
  int verified = X509_verify_cert(ctx);
  int err = X509_STORE_CTX_get_error(ctx);
  X509_STORE_CTX_free(ctx);
  ERR_clear_error();
  if (verified != 1) {
    v.reason = X509_verify_cert_error_string(err);
    return v;
  }
  v.issuer_key = IssuerKey(X509_get_issuer_name(x));
  if (snap->revoked.contains(absl::StrCat(v.issuer_key, ":", v.serial))) {
    v.reason = absl::StrCat("certificate revoked (serial ", v.serial, ")");
    return v;
  }
  if (uris.size() != 1) {
    v.reason =
        absl::StrCat("expected exactly one URI SAN, found ", uris.size());
    return v;
  }
  auto principal = Principal::FromSpiffeId(uris[0]);
  if (!principal.ok()) {
    v.reason = std::string(principal.status().message());
    return v;
  }
  if (principal->trust_domain != trust_domain_) {
    v.reason = absl::StrCat("trust domain \"", principal->trust_domain,
                            "\" is not \"", trust_domain_, "\"");
    return v;
  }
  if (expected_id.has_value() && uris[0] != *expected_id) {
    v.reason = absl::StrCat("server is not the expected ", *expected_id);
    return v;
  }
  auto roles = RolesOf(x);
  if (!roles.ok()) {
    v.reason = std::string(roles.status().message());
    return v;
  }
  v.principal = *std::move(principal);
  v.principal.roles = *std::move(roles);
  v.not_after = FromAsn1Time(X509_get0_notAfter(x));
  v.ok = true;
  return v;
}

}  // namespace cityos::mesh_internal
