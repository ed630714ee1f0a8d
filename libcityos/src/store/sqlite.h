// Internal: a thin RAII layer over the SQLite C API for the state store.
// One SqliteConnection is used by one thread at a time (the store hands them
// out from a pool or behind its writer mutex), so connections are opened in
// SQLite's multi-thread mode (no per-connection mutex) and keep their prepared
// statements cached by SQL text.
#ifndef CITYOS_SRC_STORE_SQLITE_H_
#define CITYOS_SRC_STORE_SQLITE_H_

#include <sqlite3.h>

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace cityos::store_internal {

// The absl::Status for SQLite result code `rc`, its message naming the
// database `path`, what was being done and SQLite's own message. Codes:
// SQLITE_FULL -> RESOURCE_EXHAUSTED, CORRUPT/NOTADB -> DATA_LOSS,
// BUSY/LOCKED -> UNAVAILABLE, CANTOPEN/PERM/READONLY -> FAILED_PRECONDITION,
// CONSTRAINT/TOOBIG -> INVALID_ARGUMENT, anything else INTERNAL.
absl::Status SqliteError(int rc, std::string_view path, std::string_view what,
                         std::string_view detail);

class SqliteConnection;

// A prepared statement borrowed from a connection's cache. Resets the
// statement and clears its bindings when destroyed, so the next user starts
// clean. Bind indexes are 1-based (as in `?1`).
class Statement {
 public:
  Statement(SqliteConnection* conn, sqlite3_stmt* stmt) : conn_(conn), stmt_(stmt) {}
  ~Statement();
  Statement(Statement&& other) noexcept : conn_(other.conn_), stmt_(other.stmt_) {
    other.stmt_ = nullptr;
  }
  Statement& operator=(Statement&&) = delete;

  void BindText(int i, std::string_view s);
  void BindBlob(int i, std::string_view s);
  void BindInt64(int i, int64_t v);
  void BindDouble(int i, double v);
  void BindNull(int i);

  // true: a row is available; false: done. Errors name `what`.
  absl::StatusOr<bool> Step(std::string_view what);
  // Steps a statement that returns no rows.
  absl::Status Run(std::string_view what);

  int64_t ColumnInt64(int i) const { return sqlite3_column_int64(stmt_, i); }
  double ColumnDouble(int i) const { return sqlite3_column_double(stmt_, i); }
  bool ColumnIsNull(int i) const { return sqlite3_column_type(stmt_, i) == SQLITE_NULL; }
  // Valid until the next Step or the statement's destruction.
  std::string_view ColumnText(int i) const;
  std::string_view ColumnBlob(int i) const;

 private:
  SqliteConnection* conn_;
  sqlite3_stmt* stmt_;
};

struct ConnectionOptions {
  bool full_sync = false;
  // Readers refuse writes (PRAGMA query_only), a guard against mistakes.
  bool query_only = false;
  // Page cache of this connection, KiB.
  int cache_kib = 8192;
};

class SqliteConnection {
 public:
  // Opens (creating when missing) the database at `path`.
  static absl::StatusOr<std::unique_ptr<SqliteConnection>> Open(const std::string& path,
                                                                ConnectionOptions options);
  ~SqliteConnection();
  SqliteConnection(const SqliteConnection&) = delete;
  SqliteConnection& operator=(const SqliteConnection&) = delete;

  // Runs one or more statements without results (schema, pragmas, BEGIN).
  absl::Status Exec(const char* sql, std::string_view what);
  // Runs one statement without results through the statement cache (BEGIN,
  // COMMIT, ROLLBACK: no SQL parsing per transaction).
  absl::Status ExecPrepared(const char* sql, std::string_view what);
  // The cached prepared statement for `sql` (prepared on first use). The
  // cache is looked up by string_view (no allocation when cached).
  absl::StatusOr<Statement> Prepare(std::string_view sql);
  // Runs ROLLBACK without allocating and without reporting errors (for
  // destructors: a failed ROLLBACK, e.g. nothing left to roll back after an
  // automatic rollback, is harmless). Uses the cached statement when
  // Transaction::Begin prepared it, else sqlite3_exec (C allocations only).
  void RollbackNoThrow() noexcept;

  absl::Status Error(int rc, std::string_view what) const;
  const std::string& path() const { return path_; }
  sqlite3* db() const { return db_; }

 private:
  SqliteConnection(std::string path, sqlite3* db) : path_(std::move(path)), db_(db) {}

  const std::string path_;
  sqlite3* const db_;
  absl::flat_hash_map<std::string, sqlite3_stmt*> statements_;
};

// BEGIN on construction-time success, ROLLBACK on destruction unless
// Commit() succeeded: a failed batch leaves nothing behind.
class Transaction {
 public:
  // `begin` is "BEGIN" (readers: one snapshot for several statements) or
  // "BEGIN IMMEDIATE" (the writer: take the write lock up front).
  static absl::StatusOr<Transaction> Begin(SqliteConnection* conn, const char* begin);
  Transaction(Transaction&& other) noexcept : conn_(other.conn_) { other.conn_ = nullptr; }
  Transaction& operator=(Transaction&&) = delete;
  ~Transaction();
  absl::Status Commit();

 private:
  explicit Transaction(SqliteConnection* conn) : conn_(conn) {}
  SqliteConnection* conn_;
};

}  // namespace cityos::store_internal

#endif  // CITYOS_SRC_STORE_SQLITE_H_
