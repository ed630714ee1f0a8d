// Internal: what a process trusts — the CA bundle and the CRL — re-read when
// their files change, and the one function that decides whether a peer
// certificate is acceptable (used by the gRPC verifiers and PeerPrincipal).
#ifndef CITYOS_SRC_MESH_TRUST_STORE_H_
#define CITYOS_SRC_MESH_TRUST_STORE_H_

#include <sys/types.h>

#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "cityos/principal.h"
#include "mesh/x509_util.h"

namespace cityos::mesh_internal {

// The role the peer plays in the connection being verified.
enum class PeerRole { kClient, kServer };

// The verdict on one peer certificate.
struct PeerVerdict {
  bool ok = false;
  // Why it was refused (when !ok), e.g. "certificate has expired".
  std::string reason;
  // For logs: the SPIFFE id if the certificate has exactly one URI SAN, else
  // its subject; "(none)" without a certificate.
  std::string peer;
  // When ok:
  Principal principal;
  std::string serial;
  // Key of the issuer for revocation look-ups (hash of its name).
  std::string issuer_key;
  absl::Time not_after = absl::InfinitePast();
};

// Identity of a file's current content, for change detection.
struct FileStamp {
  bool exists = false;
  int64_t mtime_ns = 0;
  int64_t size = 0;
  ino_t inode = 0;
  bool operator==(const FileStamp&) const = default;
};

class TrustStore {
 public:
  // Loads `ca_file` and (if not empty) `crl_file`. INVALID_ARGUMENT /
  // NOT_FOUND naming the file.
  static absl::StatusOr<std::shared_ptr<TrustStore>> Open(
      std::string ca_file, std::string crl_file, std::string trust_domain);

  // Decides on `leaf_pem` (empty: the peer sent no certificate). Re-reads
  // the CA and CRL first if their files changed. Thread-safe.
  PeerVerdict Verify(std::string_view leaf_pem, PeerRole role,
                     const std::optional<std::string>& expected_id);

  // True if (issuer_key, serial) is on the current CRL. Re-reads changed
  // files at most once per second. Thread-safe.
  bool IsRevoked(const std::string& issuer_key, const std::string& serial);

  const std::string& trust_domain() const { return trust_domain_; }

 private:
  struct Snapshot {
    StorePtr store;
    std::vector<X509Ptr> cas;
    // "<issuer_key>:<serial>" of every revoked certificate.
    absl::flat_hash_set<std::string> revoked;
  };

  TrustStore(std::string ca_file, std::string crl_file,
             std::string trust_domain)
      : ca_file_(std::move(ca_file)),
        crl_file_(std::move(crl_file)),
        trust_domain_(std::move(trust_domain)) {}

  absl::StatusOr<std::shared_ptr<const Snapshot>> Load() const;
  // Re-reads the files if their stamps changed (and, with `rate_limited`, at
  // most once per second); keeps the previous snapshot when they are bad.
  std::shared_ptr<const Snapshot> Current(bool rate_limited);

  const std::string ca_file_;
  const std::string crl_file_;
  const std::string trust_domain_;
  absl::Mutex mu_;
  std::shared_ptr<const Snapshot> snapshot_ ABSL_GUARDED_BY(mu_);
  FileStamp ca_stamp_ ABSL_GUARDED_BY(mu_);
  FileStamp crl_stamp_ ABSL_GUARDED_BY(mu_);
  absl::Time last_check_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
};

FileStamp StampOf(const std::string& path);
// Hex hash of an X.509 name, as the revocation key of its certificates.
std::string IssuerKey(const X509_NAME* name);

}  // namespace cityos::mesh_internal

#endif  // CITYOS_SRC_MESH_TRUST_STORE_H_
