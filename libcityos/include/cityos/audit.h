// File: cityos/audit.h
//
// The tamper-evident audit log: every access decision, policy change,
// emergency declaration and consent change is appended to a hash-chained log
// (cityos.exchange.v1.AuditEntry: each entry carries its predecessor's hash),
// and periodic checkpoints are signed with the node's Ed25519 key. Anyone
// holding the public key can verify a copy of the files (VerifyAuditDir) and
// learn the first entry that was edited, deleted, inserted or reordered.
//
//   CITYOS_ASSIGN_OR_RETURN(auto audit, AuditLog::Open({.dir = dir, .node = "n1"}));
//   audit->Append(entry);               // returns at once; written in batches
//   CITYOS_RETURN_IF_ERROR(audit->Flush().status());   // durable now
//
// The file format is in docs/audit-format.md.
#ifndef CITYOS_AUDIT_H_
#define CITYOS_AUDIT_H_

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "cityos/exchange/v1/exchange.pb.h"

namespace cityos {

class Clock;
class SigningKey;

struct AuditOptions {
  // Directory of the log files. Required; created 0700 if missing.
  std::string dir;
  // The Ed25519 key that signs checkpoints: a PEM file, created (mode 0600,
  // with `<file>.pub` beside it) when missing. Empty = `<dir>/signing.key`.
  std::string signing_key_file;
  // Written into every entry's `node`.
  std::string node;
  Clock* clock = nullptr;  // null = real clock
  // A checkpoint is signed after this many entries, or this long after the
  // first unsigned entry, whichever comes first, and at Close().
  uint64_t checkpoint_every = 1024;
  absl::Duration checkpoint_interval = absl::Seconds(1);
  // Appends wait at most this long before the writer batches them to disk.
  absl::Duration flush_interval = absl::Milliseconds(5);
  // Entries queued but not yet written, at most; Append blocks beyond this
  // (back-pressure: audit entries are never dropped).
  size_t max_queued = 1 << 18;
  // A new segment file is started when the current one reaches this size.
  uint64_t segment_bytes = 64ull << 20;
};

// Filter of Query: the fields of QueryAuditRequest, without access rules
// (the service applies who may see what).
struct AuditQuery {
  std::string principal;
  std::string data_subject;
  absl::Time from = absl::InfinitePast();  // inclusive
  absl::Time to = absl::InfiniteFuture();  // exclusive
  std::string action;
  exchange::v1::Severity min_severity = exchange::v1::SEVERITY_UNSPECIFIED;
  // Only entries whose principal belongs to this org (service callers).
  std::string principal_org;
  uint64_t after_sequence = 0;  // paging: entries with a greater sequence
  size_t limit = 100;           // 0 means 100
};
struct AuditPage {
  std::vector<exchange::v1::AuditEntry> entries;
  std::vector<exchange::v1::AuditCheckpoint> checkpoints;
  // Sequence of the last entry returned when more may follow; 0 when done.
  uint64_t next_after_sequence = 0;
};

class AuditLog {
 public:
  // Opens (or creates) the log in options.dir: validates the tail, cuts a
  // torn last record, rebuilds the query indexes, and starts the writer.
  // DATA_LOSS naming the file and offset when a record in the middle is bad,
  // when entry sequences are not contiguous, or when the entries after the
  // last signed checkpoint do not chain. FAILED_PRECONDITION when the key
  // file is readable by group or others.
  static absl::StatusOr<std::unique_ptr<AuditLog>> Open(AuditOptions options);
  virtual ~AuditLog() = default;

  // Queues an entry. Its `sequence`, `previous_hash`, `hash` and `node` are
  // set by the writer; `time` is set to now when unset. Thread-safe; does not
  // wait for the disk.
  virtual void Append(exchange::v1::AuditEntry entry) = 0;
  // Waits until every entry appended before the call is written and synced;
  // returns the newest sequence. An I/O error is returned here (and by every
  // later call).
  virtual absl::StatusOr<uint64_t> Flush() = 0;

  // Durable entries matching every filter of `query`, by ascending sequence.
  // Thread-safe; reads the entries from disk.
  virtual absl::StatusOr<AuditPage> Query(const AuditQuery& query) = 0;
  // Checks chain and checkpoint signatures over [from, to] (0 = first/last;
  // `to` beyond the newest entry means the newest) of what is durable.
  // A fault is a result (ok = false, first_bad_sequence, fault), not an error.
  // INVALID_ARGUMENT when `from` is beyond `to` or the newest entry; an
  // empty log verifies (ok, nothing checked).
  virtual absl::StatusOr<exchange::v1::VerifyAuditResponse> Verify(uint64_t from,
                                                                   uint64_t to) = 0;
  // Newest sequence written (0 when empty).
  virtual uint64_t last_sequence() const = 0;
  // The checkpoint key: id (lower-case hex SHA-256 of the raw public key) and
  // public key PEM.
  virtual std::string key_id() const = 0;
  virtual std::string public_key_pem() const = 0;

  // Writes what is queued, signs a final checkpoint, stops the writer.
  // Idempotent; Append after Close is ignored (and logged).
  virtual absl::Status Close() = 0;
};

// Verifies a copy of an audit directory offline with a public key (PEM);
// the same checks as AuditLog::Verify over every entry. INVALID_ARGUMENT when
// the key or directory cannot be read.
absl::StatusOr<exchange::v1::VerifyAuditResponse> VerifyAuditDir(std::string_view dir,
                                                                 std::string_view public_key_pem);

}  // namespace cityos

#endif  // CITYOS_AUDIT_H_
