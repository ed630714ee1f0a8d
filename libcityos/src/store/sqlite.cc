#include "store/sqlite.h"

#include <utility>

#include "absl/strings/str_format.h"
#include "absl/strings/string_view.h"

namespace cityos::store_internal {

absl::Status SqliteError(int rc, std::string_view path, std::string_view what,
                         std::string_view detail) {
  std::string message = absl::StrFormat("entity store %s: %s: %s", path, what, detail);
  switch (rc & 0xff) {
    case SQLITE_FULL:
      return absl::ResourceExhaustedError(message);
    case SQLITE_CORRUPT:
    case SQLITE_NOTADB:
      return absl::DataLossError(message);
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
      return absl::UnavailableError(message);
    case SQLITE_CANTOPEN:
    case SQLITE_PERM:
    case SQLITE_READONLY:
      return absl::FailedPreconditionError(message);
    case SQLITE_CONSTRAINT:
    case SQLITE_TOOBIG:
      return absl::InvalidArgumentError(message);
    default:
      return absl::InternalError(message);
  }
}

Statement::~Statement() {
  if (stmt_ == nullptr) return;
  sqlite3_reset(stmt_);
  sqlite3_clear_bindings(stmt_);
}

void Statement::BindText(int i, std::string_view s) {
  // SQLITE_TRANSIENT: SQLite copies, so the caller's buffer may go away
  // before the statement runs.
  sqlite3_bind_text(stmt_, i, s.data(), static_cast<int>(s.size()), SQLITE_TRANSIENT);
}

void Statement::BindBlob(int i, std::string_view s) {
  sqlite3_bind_blob(stmt_, i, s.data(), static_cast<int>(s.size()), SQLITE_TRANSIENT);
}

void Statement::BindInt64(int i, int64_t v) { sqlite3_bind_int64(stmt_, i, v); }
void Statement::BindDouble(int i, double v) { sqlite3_bind_double(stmt_, i, v); }
void Statement::BindNull(int i) { sqlite3_bind_null(stmt_, i); }

absl::StatusOr<bool> Statement::Step(std::string_view what) {
  int rc = sqlite3_step(stmt_);
  if (rc == SQLITE_ROW) return true;
  if (rc == SQLITE_DONE) return false;
  return conn_->Error(rc, what);
}

absl::Status Statement::Run(std::string_view what) {
  int rc = sqlite3_step(stmt_);
  if (rc == SQLITE_DONE || rc == SQLITE_ROW) return absl::OkStatus();
  return conn_->Error(rc, what);
}

std::string_view Statement::ColumnText(int i) const {
  const unsigned char* p = sqlite3_column_text(stmt_, i);
  int n = sqlite3_column_bytes(stmt_, i);
  return p == nullptr ? std::string_view() : std::string_view(reinterpret_cast<const char*>(p), n);
}

std::string_view Statement::ColumnBlob(int i) const {
  const void* p = sqlite3_column_blob(stmt_, i);
  int n = sqlite3_column_bytes(stmt_, i);
  return p == nullptr ? std::string_view() : std::string_view(static_cast<const char*>(p), n);
}

absl::StatusOr<std::unique_ptr<SqliteConnection>> SqliteConnection::Open(
    const std::string& path, ConnectionOptions options) {
  sqlite3* db = nullptr;
  // NOMUTEX: each connection is used by one thread at a time (pool or writer
  // mutex), so SQLite's own per-connection mutex would be pure cost.
  int rc = sqlite3_open_v2(path.c_str(), &db,
                           SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX,
                           nullptr);
  if (rc != SQLITE_OK) {
    absl::Status status = SqliteError(rc, path, "open", db ? sqlite3_errmsg(db) : "out of memory");
    sqlite3_close(db);
    return status;
  }
  sqlite3_extended_result_codes(db, 1);
  auto conn = std::unique_ptr<SqliteConnection>(new SqliteConnection(path, db));
  // A writer holds the lock only for one batch; waiting beats failing.
  sqlite3_busy_timeout(db, 5000);
  absl::Status status = conn->Exec(options.full_sync ? "PRAGMA synchronous=FULL"
                                                     : "PRAGMA synchronous=NORMAL",
                                   "set synchronous");
  if (status.ok()) status = conn->Exec("PRAGMA temp_store=MEMORY", "set temp_store");
  if (status.ok()) {
    status = conn->Exec(absl::StrFormat("PRAGMA cache_size=-%d", options.cache_kib).c_str(),
                        "set cache_size");
  }
  // Reads of the database file through a shared mapping rather than a copy
  // per connection (pages still in the WAL are read from it as usual).
  if (status.ok()) status = conn->Exec("PRAGMA mmap_size=268435456", "set mmap_size");
  if (status.ok() && options.query_only) {
    status = conn->Exec("PRAGMA query_only=1", "set query_only");
  }
  if (!status.ok()) return status;
  return conn;
}

SqliteConnection::~SqliteConnection() {
  for (auto& [sql, stmt] : statements_) sqlite3_finalize(stmt);
  sqlite3_close(db_);
}

absl::Status SqliteConnection::Exec(const char* sql, std::string_view what) {
  char* err = nullptr;
  int rc = sqlite3_exec(db_, sql, nullptr, nullptr, &err);
  if (rc == SQLITE_OK) return absl::OkStatus();
  absl::Status status = SqliteError(rc, path_, what, err ? err : sqlite3_errstr(rc));
  sqlite3_free(err);
  return status;
}

absl::StatusOr<Statement> SqliteConnection::Prepare(std::string_view sql) {
  // absl's string-keyed maps take a string_view key without building a
  // std::string (heterogeneous lookup; absl::string_view, which is not
  // std::string_view in this abseil build).
  auto it = statements_.find(absl::string_view(sql.data(), sql.size()));
  if (it == statements_.end()) {
    sqlite3_stmt* stmt = nullptr;
    int rc = sqlite3_prepare_v3(db_, sql.data(), static_cast<int>(sql.size()),
                                SQLITE_PREPARE_PERSISTENT, &stmt, nullptr);
    if (rc != SQLITE_OK) return Error(rc, absl::StrFormat("prepare \"%s\"", sql));
    it = statements_.emplace(std::string(sql), stmt).first;
  }
  return Statement(this, it->second);
}

absl::Status SqliteConnection::Error(int rc, std::string_view what) const {
  return SqliteError(rc, path_, what, sqlite3_errmsg(db_));
}

absl::Status SqliteConnection::ExecPrepared(const char* sql, std::string_view what) {
  absl::StatusOr<Statement> stmt = Prepare(sql);
  if (!stmt.ok()) return stmt.status();
  return stmt->Run(what);
}

void SqliteConnection::RollbackNoThrow() noexcept {
  auto it = statements_.find(absl::string_view("ROLLBACK"));
  if (it != statements_.end()) {
    (void)sqlite3_step(it->second);
    sqlite3_reset(it->second);
    return;
  }
  (void)sqlite3_exec(db_, "ROLLBACK", nullptr, nullptr, nullptr);
}

absl::StatusOr<Transaction> Transaction::Begin(SqliteConnection* conn, const char* begin) {
  // ROLLBACK prepared (cached) before the transaction starts, so that the
  // destructor's rollback finds it without allocating.
  if (absl::StatusOr<Statement> rollback = conn->Prepare("ROLLBACK"); !rollback.ok()) {
    return rollback.status();
  }
  absl::Status status = conn->ExecPrepared(begin, "begin transaction");
  if (!status.ok()) return status;
  return Transaction(conn);
}

Transaction::~Transaction() {
  // Also ends a read transaction; a failed ROLLBACK (nothing left to roll
  // back after an automatic rollback) is harmless. Allocation-free: a
  // bad_alloc here would terminate.
  if (conn_ != nullptr) conn_->RollbackNoThrow();
}

absl::Status Transaction::Commit() {
  SqliteConnection* conn = conn_;
  absl::Status status = conn->ExecPrepared("COMMIT", "commit");
  // After a failed COMMIT the transaction may still be open: the destructor
  // rolls it back.
  if (status.ok()) conn_ = nullptr;
  return status;
}

}  // namespace cityos::store_internal
