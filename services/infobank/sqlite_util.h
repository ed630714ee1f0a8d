// A prepared SQLite statement, finalized on scope exit: the one statement
// wrapper shared by the infobank stores (consent store, personal data store,
// benefits ledger). libcityos/src/store/sqlite.h is internal to libcityos.
#ifndef CITYOS_SERVICES_INFOBANK_SQLITE_UTIL_H_
#define CITYOS_SERVICES_INFOBANK_SQLITE_UTIL_H_

#include <sqlite3.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"

namespace cityos::infobank {

class SqliteStmt {
 public:
  // `what` prefixes the error statuses (status(), Next(), Run()).
  SqliteStmt(sqlite3* db, const char* sql, const char* what = "sqlite") : db_(db), what_(what) {
    rc_ = sqlite3_prepare_v2(db, sql, -1, &stmt_, nullptr);
  }
  ~SqliteStmt() { sqlite3_finalize(stmt_); }
  SqliteStmt(const SqliteStmt&) = delete;
  SqliteStmt& operator=(const SqliteStmt&) = delete;

  // Whether the statement was prepared.
  bool ok() const { return rc_ == SQLITE_OK; }
  absl::Status status() const { return ok() ? absl::OkStatus() : Error(); }
  sqlite3_stmt* get() { return stmt_; }

  SqliteStmt& Bind(int i, std::string_view text) {
    sqlite3_bind_text(stmt_, i, text.data(), static_cast<int>(text.size()), SQLITE_TRANSIENT);
    return *this;
  }
  SqliteStmt& BindBlob(int i, std::string_view blob) {
    sqlite3_bind_blob(stmt_, i, blob.data(), static_cast<int>(blob.size()), SQLITE_TRANSIENT);
    return *this;
  }
  SqliteStmt& Bind(int i, int64_t v) {
    sqlite3_bind_int64(stmt_, i, v);
    return *this;
  }

  // The raw sqlite3_step result code.
  int Step() { return sqlite3_step(stmt_); }
  // true on SQLITE_ROW, false on SQLITE_DONE, else an error status.
  absl::StatusOr<bool> Next() {
    int rc = Step();
    if (rc == SQLITE_ROW) return true;
    if (rc == SQLITE_DONE) return false;
    return Error();
  }
  // Steps once, for statements that return no rows.
  absl::Status Run() {
    absl::StatusOr<bool> r = Next();
    return r.ok() ? absl::OkStatus() : r.status();
  }

  std::string ColText(int i) {
    const unsigned char* p = sqlite3_column_text(stmt_, i);
    return p ? std::string(reinterpret_cast<const char*>(p),
                           static_cast<size_t>(sqlite3_column_bytes(stmt_, i)))
             : std::string();
  }
  std::string ColBlob(int i) {
    const void* p = sqlite3_column_blob(stmt_, i);
    return p ? std::string(static_cast<const char*>(p),
                           static_cast<size_t>(sqlite3_column_bytes(stmt_, i)))
             : std::string();
  }
  int64_t ColInt(int i) { return sqlite3_column_int64(stmt_, i); }

 private:
  absl::Status Error() const {
    return absl::InternalError(absl::StrCat(what_, ": ", sqlite3_errmsg(db_)));
  }

  sqlite3* db_;
  const char* what_;
  sqlite3_stmt* stmt_ = nullptr;
  int rc_;
};

}  // namespace cityos::infobank

#endif  // CITYOS_SERVICES_INFOBANK_SQLITE_UTIL_H_
