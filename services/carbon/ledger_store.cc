// The carbon ledger's SQLite store (`ledger.db`): schema, the background
// writer that commits queued rows in batched transactions, and Flush.
#include <pthread.h>
#include <sqlite3.h>

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "cityos/logging.h"
#include "cityos/status.h"
#include "ledger_impl.h"

namespace cityos::carbon {
namespace {

constexpr const char* kSchema = R"sql(
CREATE TABLE IF NOT EXISTS accounts(
  idx INTEGER PRIMARY KEY, account_id TEXT UNIQUE NOT NULL, account BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS factor_refs(idx INTEGER PRIMARY KEY, ref BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS records(
  id INTEGER NOT NULL, account INTEGER NOT NULL, enterprise INTEGER NOT NULL,
  start_ns INTEGER NOT NULL, end_ns INTEGER NOT NULL, energy_kind INTEGER NOT NULL,
  scope INTEGER NOT NULL, reading_kind INTEGER NOT NULL, value REAL NOT NULL,
  activity REAL NOT NULL, kg REAL NOT NULL, market_kg REAL NOT NULL,
  factor INTEGER NOT NULL, market_factor INTEGER NOT NULL, compute_ns INTEGER NOT NULL,
  event_id TEXT NOT NULL, activity_key TEXT NOT NULL, method TEXT NOT NULL, unit TEXT NOT NULL,
  restatement_id TEXT NOT NULL, orig INTEGER NOT NULL, current INTEGER NOT NULL,
  PRIMARY KEY(enterprise, start_ns, id)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS quarantine(
  id INTEGER NOT NULL, account INTEGER NOT NULL, enterprise INTEGER NOT NULL,
  receive_ns INTEGER NOT NULL, hour INTEGER NOT NULL, reason INTEGER NOT NULL,
  detail TEXT NOT NULL, reading BLOB NOT NULL, event_id TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS meter_state(
  account INTEGER PRIMARY KEY, reg_ns INTEGER NOT NULL, reg_value REAL NOT NULL);
CREATE TABLE IF NOT EXISTS value_added(
  enterprise TEXT NOT NULL, start_ns INTEGER NOT NULL, end_ns INTEGER NOT NULL, value REAL NOT NULL,
  PRIMARY KEY(enterprise, start_ns, end_ns));
CREATE TABLE IF NOT EXISTS grades(
  enterprise TEXT NOT NULL, start_ns INTEGER NOT NULL, end_ns INTEGER NOT NULL, grade BLOB NOT NULL,
  PRIMARY KEY(enterprise, start_ns, end_ns));
)sql";

absl::Status Exec(sqlite3* db, const char* sql, const std::string& path) {
  char* err = nullptr;
  if (sqlite3_exec(db, sql, nullptr, nullptr, &err) != SQLITE_OK) {
    std::string msg = err ? err : sqlite3_errmsg(db);
    sqlite3_free(err);
    return absl::InternalError(absl::StrCat(path, ": ", msg));
  }
  return absl::OkStatus();
}

// A statement prepared once per transaction; binds without copying.
class Stmt {
 public:
  Stmt(sqlite3* db, const char* sql) : db_(db) {
    rc_ = sqlite3_prepare_v2(db, sql, -1, &s_, nullptr);
  }
  ~Stmt() { sqlite3_finalize(s_); }
  Stmt(const Stmt&) = delete;
  Stmt& operator=(const Stmt&) = delete;
  bool ok() const { return rc_ == SQLITE_OK; }
  void Int(int i, int64_t v) { sqlite3_bind_int64(s_, i, v); }
  void Real(int i, double v) { sqlite3_bind_double(s_, i, v); }
  void Text(int i, const std::string& v) {
    sqlite3_bind_text(s_, i, v.data(), static_cast<int>(v.size()),
                      SQLITE_STATIC);
  }
  void Blob(int i, const std::string& v) {
    sqlite3_bind_blob(s_, i, v.data(), static_cast<int>(v.size()),
                      SQLITE_STATIC);
  }
  bool Done() {
    int rc = sqlite3_step(s_);
    sqlite3_reset(s_);
    return rc == SQLITE_DONE;
  }
  std::string Error() const { return sqlite3_errmsg(db_); }

 private:
  sqlite3* db_;
  sqlite3_stmt* s_ = nullptr;
  int rc_;
};

// Binds the columns every record has, id .. event_id, at base+1 .. base+16.
void BindRecordHead(sqlite3_stmt* s, int base, const RecordRow& r) {
  sqlite3_bind_int64(s, base + 1, r.id);
  sqlite3_bind_int64(s, base + 2, r.account);
  sqlite3_bind_int64(s, base + 3, r.enterprise);
  sqlite3_bind_int64(s, base + 4, r.start_ns);
  sqlite3_bind_int64(s, base + 5, r.end_ns);
  sqlite3_bind_int64(s, base + 6, r.energy_kind);
  sqlite3_bind_int64(s, base + 7, r.scope);
  sqlite3_bind_int64(s, base + 8, r.reading_kind);
  sqlite3_bind_double(s, base + 9, r.value);
  sqlite3_bind_double(s, base + 10, r.activity);
  sqlite3_bind_double(s, base + 11, r.kg);
  sqlite3_bind_double(s, base + 12, r.market_kg);
  sqlite3_bind_int64(s, base + 13, r.factor);
  sqlite3_bind_int64(s, base + 14, r.market_factor);
  sqlite3_bind_int64(s, base + 15, r.compute_ns);
  sqlite3_bind_text(s, base + 16, r.event_id.data(), static_cast<int>(r.event_id.size()),
                    SQLITE_STATIC);
}

// Binds one record's 22 columns at parameters base+1 .. base+22.
void BindRecord(sqlite3_stmt* s, int base, const RecordRow& r) {
  auto text = [&](int i, const std::string& v) {
    sqlite3_bind_text(s, base + i, v.data(), static_cast<int>(v.size()),
                      SQLITE_STATIC);
  };
  BindRecordHead(s, base, r);
  text(17, r.activity_key());
  text(18, r.method());
  text(19, r.unit());
  text(20, r.restatement_id());
  sqlite3_bind_int64(s, base + 21, r.orig);
  sqlite3_bind_int64(s, base + 22, r.current);
}

// A record as the ingest path writes most of them: as reported (orig = id,
// current), no process or restatement fields. Its activity_key, method,
// unit, restatement_id ('') and current (1) are literals of the plain INSERT,
// and orig is bound as the id.
bool IsPlainRecord(const RecordRow& r) {
  return r.extra == nullptr && r.orig == r.id && r.current == 1;
}

// Binds a plain record's 17 parameters at base+1 .. base+17.
void BindPlainRecord(sqlite3_stmt* s, int base, const RecordRow& r) {
  BindRecordHead(s, base, r);
  sqlite3_bind_int64(s, base + 17, r.orig);
}

constexpr int kPlainParams = 17;

}  // namespace

sqlite3_stmt* LedgerStore::RecordInsert(int rows, bool plain,
                                        std::string* error) {
  sqlite3_stmt** slot = rows == 1 ? &insert_one_
                        : plain   ? &insert_many_plain_
                                  : &insert_many_;
  if (*slot != nullptr) return *slot;
  std::string sql =
      "INSERT INTO records(id, account, enterprise, start_ns, end_ns, "
      "energy_kind, scope, reading_kind, value, activity, kg, market_kg, "
      "factor, market_factor, compute_ns, event_id, activity_key, method, "
      "unit, restatement_id, orig, current) VALUES";
  for (int k = 0; k < rows; ++k) {
    absl::StrAppend(
        &sql, k == 0 ? "" : ",",
        plain && rows > 1 ? "(?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,'','','','',?,1)"
                          : "(?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)");
  }
  if (sqlite3_prepare_v3(db_, sql.c_str(), static_cast<int>(sql.size() + 1),
                         SQLITE_PREPARE_PERSISTENT, slot,
                         nullptr) != SQLITE_OK) {
    *error = sqlite3_errmsg(db_);
    sqlite3_finalize(*slot);
    *slot = nullptr;
  }
  return *slot;
}

absl::StatusOr<std::unique_ptr<LedgerStore>> LedgerStore::Open(
    const std::string& path, bool full_sync, size_t writer_batch,
    size_t max_queued_rows) {
  sqlite3* db = nullptr;
  // NOMUTEX: every use of the connection is under LedgerStore::db_mu_.
  if (sqlite3_open_v2(
          path.c_str(), &db,
          SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX,
          nullptr) != SQLITE_OK) {
    std::string msg = db ? sqlite3_errmsg(db) : "out of memory";
    sqlite3_close(db);
    return absl::InternalError(absl::StrCat("cannot open ", path, ": ", msg));
  }
  sqlite3_busy_timeout(db, 5000);
  absl::Status s = Exec(db, "PRAGMA journal_mode=WAL;", path);
  if (s.ok())
    s = Exec(
        db,
        full_sync ? "PRAGMA synchronous=FULL;" : "PRAGMA synchronous=NORMAL;",
        path);
  if (s.ok()) s = Exec(db, "PRAGMA cache_size=-65536;", path);
  // Checkpoint the WAL every ~40 MB (10,000 pages) instead of SQLite's
  // default 1,000 pages: the writer's transactions rewrite the same leaf
  // pages (each enterprise's newest records) over and over, and a checkpoint
  // copies each page once however often the WAL holds it, so rarer
  // checkpoints cut the writer's I/O and CPU per row (carbon_bench
  // BM_AccountReadingsSustained/0: ~220k -> ~300k rows/s together with
  // writer_batch 16384).
  if (s.ok()) s = Exec(db, "PRAGMA wal_autocheckpoint=10000;", path);
  if (s.ok()) s = Exec(db, kSchema, path);
  if (!s.ok()) {
    sqlite3_close(db);
    return s;
  }
  return std::unique_ptr<LedgerStore>(new LedgerStore(
      db, path, writer_batch == 0 ? 16384 : writer_batch,
      max_queued_rows == 0 ? size_t{1} << 20 : max_queued_rows));
}

LedgerStore::LedgerStore(sqlite3* db, std::string path, size_t writer_batch,
                         size_t max_queued_rows)
    : path_(std::move(path)),
      writer_batch_(writer_batch),
      max_queued_rows_(max_queued_rows),
      db_(db) {
  thread_ = std::thread([this] { Run(); });
}

LedgerStore::~LedgerStore() {
  absl::Status s = Flush();
  if (!s.ok())
    LogError("carbon", "ledger writer failed",
             {{"db", path_}, {"error", s.ToString()}});
  {
    absl::MutexLock l(&q_mu_);
    stop_ = true;
  }
  thread_.join();
  absl::MutexLock l(&db_mu_);
  sqlite3_finalize(insert_one_);
  sqlite3_finalize(insert_many_);
  sqlite3_finalize(insert_many_plain_);
  sqlite3_close(db_);
}

void LedgerStore::Enqueue(WriteBatch batch) {
  if (batch.empty()) return;
  absl::MutexLock l(&q_mu_);
  auto room = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(q_mu_) {
    return queued_rows_ < max_queued_rows_ || stop_;
  };
  q_mu_.Await(absl::Condition(&room));
  queued_rows_ += batch.rows();
  queue_.push_back(std::move(batch));
  ++enqueued_;
}

WriteBatch LedgerStore::TakeBatch() {
  absl::MutexLock l(&q_mu_);
  if (pool_.empty()) return WriteBatch();
  WriteBatch b = std::move(pool_.back());
  pool_.pop_back();
  return b;
}

absl::Status LedgerStore::Flush() {
  absl::MutexLock l(&q_mu_);
  uint64_t target = enqueued_;
  auto done = [this, target]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(q_mu_) {
    return written_ >= target;
  };
  q_mu_.Await(absl::Condition(&done));
  return error_;
}

void LedgerStore::Run() {
  // Named so that profiles and the benchmark's per-thread CPU can tell it.
  pthread_setname_np(pthread_self(), "carbon-ledger");
  for (;;) {
    std::vector<WriteBatch> work;
    {
      absl::MutexLock l(&q_mu_);
      auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(q_mu_) {
        return !queue_.empty() || stop_;
      };
      q_mu_.Await(absl::Condition(&ready));
      if (queue_.empty() && stop_) return;
      // Take batches up to about writer_batch rows (at least one).
      size_t rows = 0;
      while (!queue_.empty() &&
             (work.empty() || rows + queue_.front().rows() <= writer_batch_)) {
        rows += queue_.front().rows();
        work.push_back(std::move(queue_.front()));
        queue_.pop_front();
      }
    }
    absl::Status s;
    size_t rows = 0;
    {
      absl::MutexLock l(&db_mu_);
      s = Exec(db_, "BEGIN", path_);
      std::vector<const WriteBatch*> batches;
      batches.reserve(work.size());
      for (const WriteBatch& b : work) {
        batches.push_back(&b);
        rows += b.rows();
      }
      if (s.ok()) s = WriteLocked(batches);
      if (s.ok()) {
        s = Exec(db_, "COMMIT", path_);
      } else {
        Exec(db_, "ROLLBACK", path_).IgnoreError();
      }
    }
    absl::MutexLock l(&q_mu_);
    if (!s.ok() && error_.ok()) {
      error_ = s;
      LogError("carbon", "ledger write failed",
               {{"db", path_}, {"error", s.ToString()}});
    }
    queued_rows_ -= rows;
    written_ += work.size();
    for (WriteBatch& b : work) {
      if (pool_.size() >= 16) break;
      b.clear();
      pool_.push_back(std::move(b));
    }
  }
}

absl::Status LedgerStore::WriteNow(
    const WriteBatch& b,
    const std::vector<std::array<int64_t, 3>>& not_current) {
  absl::MutexLock l(&db_mu_);
  CITYOS_RETURN_IF_ERROR(Exec(db_, "BEGIN", path_));
  absl::Status s = WriteLocked({&b});
  if (s.ok() && !not_current.empty()) {
    Stmt up(db_,
            "UPDATE records SET current=0 WHERE enterprise=? AND start_ns=? "
            "AND id=?");
    if (!up.ok())
      s = absl::InternalError(absl::StrCat(path_, ": ", up.Error()));
    for (const auto& [enterprise, start_ns, id] : not_current) {
      if (!s.ok()) break;
      up.Int(1, enterprise);
      up.Int(2, start_ns);
      up.Int(3, id);
      if (!up.Done())
        s = absl::InternalError(
            absl::StrCat(path_, ": update record ", id, ": ", up.Error()));
    }
  }
  if (s.ok()) {
    s = Exec(db_, "COMMIT", path_);
  } else {
    Exec(db_, "ROLLBACK", path_).IgnoreError();
  }
  return s;
}

void LedgerStore::SortRecordKeys(std::vector<SortKey>* keys) {
  auto less = [](const SortKey& x, const SortKey& y) {
    if (x.enterprise != y.enterprise) return x.enterprise < y.enterprise;
    if (x.start_ns != y.start_ns) return x.start_ns < y.start_ns;
    return x.id < y.id;
  };
  // A transaction's records mostly come as a few ascending runs (each batch
  // in reading order; a new interval or a new batch starts a run). Merge the
  // runs pairwise (O(n log runs), sequential); many runs: a plain sort
  // (std::sort fell back to heapsort on such input, pointer-chasing).
  std::vector<size_t>& runs = sort_runs_;
  runs.clear();
  runs.push_back(0);
  const size_t n = keys->size();
  for (size_t i = 1; i < n; ++i) {
    if (less((*keys)[i], (*keys)[i - 1])) runs.push_back(i);
  }
  runs.push_back(n);
  constexpr size_t kMaxRuns = 64;
  if (runs.size() - 1 > kMaxRuns) {
    std::sort(keys->begin(), keys->end(), less);
    return;
  }
  auto at = [keys](size_t i) { return keys->begin() + static_cast<std::ptrdiff_t>(i); };
  std::vector<size_t> next;
  while (runs.size() > 2) {  // more than one run
    next.clear();
    next.push_back(0);
    size_t j = 0;
    for (; j + 2 < runs.size(); j += 2) {
      std::inplace_merge(at(runs[j]), at(runs[j + 1]), at(runs[j + 2]), less);
      next.push_back(runs[j + 2]);
    }
    if (j + 1 < runs.size() && next.back() != runs.back()) next.push_back(runs.back());
    runs.swap(next);
  }
}

absl::Status LedgerStore::WriteLocked(
    const std::vector<const WriteBatch*>& batches) {
  auto fail = [this](std::string_view what, const Stmt& st) {
    return absl::InternalError(
        absl::StrCat(path_, ": ", AV(what), ": ", st.Error()));
  };
  sorted_.clear();
  sort_keys_.clear();
  for (const WriteBatch* b : batches) {
    if (!b->refs.empty()) {
      Stmt st(db_, "INSERT OR REPLACE INTO factor_refs(idx, ref) VALUES(?,?)");
      if (!st.ok()) return fail("prepare factor_refs", st);
      for (const auto& [idx, blob] : b->refs) {
        st.Int(1, idx);
        st.Blob(2, blob);
        if (!st.Done()) return fail("insert factor_ref", st);
      }
    }
    for (const RecordRow& r : b->records) {
      sort_keys_.push_back(SortKey{r.enterprise, r.start_ns, r.id, &r});
    }
  }
  // Primary-key order (enterprise, start_ns, id): consecutive inserts land
  // on the same B-tree pages.
  SortRecordKeys(&sort_keys_);
  sorted_.reserve(sort_keys_.size());
  for (const SortKey& k : sort_keys_) sorted_.push_back(k.row);
  sort_keys_.clear();
  if (!sorted_.empty()) {
    std::string error;
    size_t i = 0;
    const size_t n = sorted_.size();
    while (i < n) {
      const int rows = n - i >= static_cast<size_t>(kRecordsPerInsert)
                           ? kRecordsPerInsert
                           : 1;
      bool plain = rows > 1;
      for (int k = 0; plain && k < rows; ++k)
        plain = IsPlainRecord(*sorted_[i + k]);
      sqlite3_stmt* st = RecordInsert(rows, plain, &error);
      if (st == nullptr)
        return absl::InternalError(
            absl::StrCat(path_, ": prepare records: ", error));
      for (int k = 0; k < rows; ++k) {
        if (plain) {
          BindPlainRecord(st, k * kPlainParams, *sorted_[i + k]);
        } else {
          BindRecord(st, k * 22, *sorted_[i + k]);
        }
      }
      const int rc = sqlite3_step(st);
      sqlite3_reset(st);
      // Text binds are SQLITE_STATIC: drop them before the rows go away.
      sqlite3_clear_bindings(st);
      if (rc != SQLITE_DONE) {
        return absl::InternalError(
            absl::StrCat(path_, ": insert record ", sorted_[i]->id,
                         rows > 1 ? absl::StrCat(" (", rows, " rows)") : "",
                         ": ", sqlite3_errmsg(db_)));
      }
      i += static_cast<size_t>(rows);
    }
  }
  for (const WriteBatch* bp : batches) {
  const WriteBatch& b = *bp;
  if (!b.quarantine.empty()) {
    Stmt st(db_,
            "INSERT INTO quarantine(id, account, enterprise, receive_ns, hour, "
            "reason, detail, reading, "
            "event_id) VALUES(?,?,?,?,?,?,?,?,?)");
    if (!st.ok()) return fail("prepare quarantine", st);
    for (const QuarantineRow& q : b.quarantine) {
      st.Int(1, q.id);
      st.Int(2, q.account);
      st.Int(3, q.enterprise);
      st.Int(4, q.receive_ns);
      st.Int(5, q.hour);
      st.Int(6, q.reason);
      st.Text(7, q.detail);
      st.Blob(8, q.reading);
      st.Text(9, q.event_id);
      if (!st.Done()) return fail("insert quarantine", st);
    }
  }
  if (!b.states.empty()) {
    Stmt st(db_,
            "INSERT OR REPLACE INTO meter_state(account, reg_ns, reg_value) "
            "VALUES(?,?,?)");
    if (!st.ok()) return fail("prepare meter_state", st);
    for (const MeterStateRow& m : b.states) {
      st.Int(1, m.account);
      st.Int(2, m.reg_ns);
      st.Real(3, m.reg_value);
      if (!st.Done()) return fail("upsert meter_state", st);
    }
  }
  }
  return absl::OkStatus();
}

}  // namespace cityos::carbon
