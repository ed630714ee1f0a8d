// SQLite helpers shared by the infobank stores (consent store, personal data
// store, benefits ledger) and, header-only, by the carbon account's personal
// ledgers (services/carbon/credits.cc, incentives.cc): a prepared statement
// wrapper, opening a private (0600) database and reading one page of a
// statement ordered by seq. libcityos/src/store/sqlite.h is internal to
// libcityos.
#ifndef CITYOS_SERVICES_INFOBANK_SQLITE_UTIL_H_
#define CITYOS_SERVICES_INFOBANK_SQLITE_UTIL_H_

#include <fcntl.h>
#include <sqlite3.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>
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
  // Runs `on_row` (which returns absl::Status and reads the current row)
  // for every row; stops at the first error, the statement's (not prepared,
  // or a step) or `on_row`'s.
  template <typename OnRow>
  absl::Status ForEachRow(OnRow&& on_row) {
    if (!ok()) return Error();
    for (;;) {
      absl::StatusOr<bool> row = Next();
      if (!row.ok()) return row.status();
      if (!*row) return absl::OkStatus();
      if (absl::Status s = on_row(); !s.ok()) return s;
    }
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

// Opens (creating it if need be) the SQLite database at `path` for reading
// and writing, serialized (SQLITE_OPEN_FULLMUTEX). A database holding personal
// data is created 0600 here before SQLite would create it with the umask; its
// WAL and shm files follow its mode. The caller owns the handle
// (sqlite3_close).
inline absl::StatusOr<sqlite3*> OpenPrivateSqlite(const std::string& path) {
  if (int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0600); fd >= 0) {
    ::close(fd);
  } else {
    return absl::InternalError(absl::StrCat("cannot create ", path, ": ", std::strerror(errno)));
  }
  sqlite3* raw = nullptr;
  if (sqlite3_open_v2(path.c_str(), &raw,
                      SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_FULLMUTEX,
                      nullptr) != SQLITE_OK) {
    std::string msg = raw ? sqlite3_errmsg(raw) : "out of memory";
    sqlite3_close(raw);
    return absl::InternalError(absl::StrCat("cannot open ", path, ": ", msg));
  }
  return raw;
}

// Runs `sql` (statements that return no rows). On failure an INTERNAL status
// "<context()>: <SQLite's message>"; `context` is called only then.
template <typename Context>
absl::Status ExecSql(sqlite3* db, const char* sql, Context context) {
  char* err = nullptr;
  if (sqlite3_exec(db, sql, nullptr, nullptr, &err) != SQLITE_OK) {
    std::string msg = err ? err : "unknown error";
    sqlite3_free(err);
    return absl::InternalError(absl::StrCat(context(), ": ", msg));
  }
  return absl::OkStatus();
}

// Reads one page of a statement: `s` selects rows in descending
// `seq` order with LIMIT page_size + 1, and column `seq_col` is the seq. Adds
// up to `page_size` rows to `out` (read_row(s) converts one; `out` is a
// response with repeated `entries` and `next_page_token`); when a further row
// exists, sets next_page_token to `token_prefix` followed by the seq of the
// last row added. Returns the last sqlite3_step result: SQLITE_ROW or
// SQLITE_DONE, anything else is an error.
template <typename Page, typename ReadRow>
int ReadSeqPage(SqliteStmt& s, int page_size, int seq_col, std::string_view token_prefix,
                Page& out, ReadRow read_row) {
  int rc;
  int64_t last_seq = 0;
  while ((rc = s.Step()) == SQLITE_ROW) {
    if (out.entries_size() == page_size) {
      out.set_next_page_token(
          absl::StrCat(absl::string_view(token_prefix.data(), token_prefix.size()), last_seq));
      break;
    }
    *out.add_entries() = read_row(s);
    last_seq = s.ColInt(seq_col);
  }
  return rc;
}

}  // namespace cityos::infobank

#endif  // CITYOS_SERVICES_INFOBANK_SQLITE_UTIL_H_
