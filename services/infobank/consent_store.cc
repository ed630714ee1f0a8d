#include "consent_store.h"

#include <sqlite3.h>

#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/time.h"
#include "sqlite_util.h"

namespace cityos::infobank {
namespace {

using consent::v1::Consent;
using consent::v1::ConsentEvent;
using consent::v1::Delegation;
using consent::v1::Proposal;
using consent::v1::Receipt;

constexpr char kSchema[] = R"sql(
PRAGMA journal_mode=WAL;
PRAGMA synchronous=NORMAL;
CREATE TABLE IF NOT EXISTS consents(
  consent_id TEXT PRIMARY KEY,
  data_subject TEXT NOT NULL,
  state INTEGER NOT NULL,
  grant_us INTEGER NOT NULL,
  proto BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS consents_subject ON consents(data_subject, grant_us);
CREATE TABLE IF NOT EXISTS consent_events(
  seq INTEGER PRIMARY KEY AUTOINCREMENT,
  consent_id TEXT NOT NULL,
  data_subject TEXT NOT NULL,
  proto BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS events_subject ON consent_events(data_subject, seq);
CREATE TABLE IF NOT EXISTS receipts(
  receipt_id TEXT PRIMARY KEY,
  consent_id TEXT NOT NULL,
  data_subject TEXT NOT NULL,
  proto BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS receipts_subject ON receipts(data_subject);
CREATE TABLE IF NOT EXISTS grant_requests(
  data_subject TEXT NOT NULL,
  request_id TEXT NOT NULL,
  consent_id TEXT NOT NULL,
  PRIMARY KEY(data_subject, request_id));
CREATE TABLE IF NOT EXISTS proposals(
  proposal_id TEXT PRIMARY KEY,
  key TEXT NOT NULL,
  propose_us INTEGER NOT NULL,
  proto BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS delegations(
  delegation_id TEXT PRIMARY KEY,
  data_subject TEXT NOT NULL,
  app TEXT NOT NULL,
  state INTEGER NOT NULL,
  grant_us INTEGER NOT NULL,
  proto BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS delegations_subject ON delegations(data_subject, app, grant_us);
)sql";

// Statements whose errors read "consent store: ...".
class Stmt : public SqliteStmt {
 public:
  Stmt(sqlite3* db, const char* sql) : SqliteStmt(db, sql, "consent store") {}
};

int64_t Micros(const google::protobuf::Timestamp& t) {
  return t.seconds() * 1000000 + t.nanos() / 1000;
}

template <typename M>
absl::StatusOr<M> Parse(const std::string& bytes, const char* what) {
  M m;
  if (!m.ParseFromString(bytes)) {
    return absl::DataLossError(absl::StrCat("consent store: corrupt ", what, " record"));
  }
  return m;
}

// Runs `sql` (with `bind`) and parses column 0 of every row as M.
template <typename M, typename BindFn>
absl::StatusOr<std::vector<M>> All(sqlite3* db, const char* sql, BindFn bind, const char* what) {
  Stmt s(db, sql);
  if (absl::Status st = s.status(); !st.ok()) return st;
  bind(s);
  std::vector<M> out;
  while (true) {
    absl::StatusOr<bool> row = s.Next();
    if (!row.ok()) return row.status();
    if (!*row) break;
    absl::StatusOr<M> m = Parse<M>(s.ColBlob(0), what);
    if (!m.ok()) return m.status();
    out.push_back(*std::move(m));
  }
  return out;
}

template <typename M, typename BindFn>
absl::StatusOr<std::optional<M>> One(sqlite3* db, const char* sql, BindFn bind, const char* what) {
  absl::StatusOr<std::vector<M>> all = All<M>(db, sql, bind, what);
  if (!all.ok()) return all.status();
  if (all->empty()) return std::nullopt;
  return std::move(all->front());
}

}  // namespace

std::string ProposalKey(const Proposal& p) {
  if (p.has_purpose()) return "purpose:" + p.purpose().name();
  if (p.recipient().has_category()) return "recipient:category:" + p.recipient().category();
  return "recipient:org:" + p.recipient().org();
}

absl::StatusOr<std::unique_ptr<ConsentStore>> ConsentStore::Open(const std::string& path) {
  sqlite3* db = nullptr;
  int rc = sqlite3_open_v2(path.c_str(), &db,
                           SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_FULLMUTEX,
                           nullptr);
  if (rc != SQLITE_OK) {
    std::string msg = db != nullptr ? sqlite3_errmsg(db) : "out of memory";
    sqlite3_close(db);
    return absl::FailedPreconditionError(absl::StrFormat("%s: cannot open: %s", path, msg));
  }
  sqlite3_busy_timeout(db, 5000);
  std::unique_ptr<ConsentStore> store(new ConsentStore(db));
  absl::MutexLock lock(&store->mu_);
  if (absl::Status s = store->Exec(kSchema); !s.ok()) {
    return absl::FailedPreconditionError(absl::StrCat(path, ": ", s.message()));
  }
  return store;
}

ConsentStore::~ConsentStore() {
  absl::MutexLock lock(&mu_);
  sqlite3_close(db_);
}

absl::Status ConsentStore::Exec(const char* sql) {
  char* err = nullptr;
  if (sqlite3_exec(db_, sql, nullptr, nullptr, &err) != SQLITE_OK) {
    std::string msg = err != nullptr ? err : "unknown error";
    sqlite3_free(err);
    return absl::InternalError(absl::StrCat("consent store: ", msg));
  }
  return absl::OkStatus();
}

absl::Status ConsentStore::Write(const Consent& consent, const ConsentEvent& event,
                                 const Receipt* receipt, std::string_view request_id) {
  absl::MutexLock lock(&mu_);
  if (absl::Status s = Exec("BEGIN IMMEDIATE"); !s.ok()) return s;
  auto body = [&]() -> absl::Status {
    {
      Stmt s(db_,
             "INSERT OR REPLACE INTO consents(consent_id, data_subject, state, grant_us, proto) "
             "VALUES(?,?,?,?,?)");
      if (!s.status().ok()) return s.status();
      s.Bind(1, consent.consent_id())
          .Bind(2, consent.data_subject())
          .Bind(3, static_cast<int64_t>(consent.state()))
          .Bind(4, Micros(consent.grant_time()))
          .BindBlob(5, consent.SerializeAsString());
      if (absl::Status st = s.Run(); !st.ok()) return st;
    }
    {
      Stmt s(db_, "INSERT INTO consent_events(consent_id, data_subject, proto) VALUES(?,?,?)");
      if (!s.status().ok()) return s.status();
      s.Bind(1, consent.consent_id())
          .Bind(2, consent.data_subject())
          .BindBlob(3, event.SerializeAsString());
      if (absl::Status st = s.Run(); !st.ok()) return st;
    }
    if (receipt != nullptr && !receipt->receipt_id().empty()) {
      Stmt s(db_,
             "INSERT OR REPLACE INTO receipts(receipt_id, consent_id, data_subject, proto) "
             "VALUES(?,?,?,?)");
      if (!s.status().ok()) return s.status();
      s.Bind(1, receipt->receipt_id())
          .Bind(2, consent.consent_id())
          .Bind(3, consent.data_subject())
          .BindBlob(4, receipt->SerializeAsString());
      if (absl::Status st = s.Run(); !st.ok()) return st;
    }
    if (!request_id.empty()) {
      Stmt s(db_,
             "INSERT INTO grant_requests(data_subject, request_id, consent_id) VALUES(?,?,?)");
      if (!s.status().ok()) return s.status();
      s.Bind(1, consent.data_subject()).Bind(2, request_id).Bind(3, consent.consent_id());
      if (absl::Status st = s.Run(); !st.ok()) return st;
    }
    return absl::OkStatus();
  };
  absl::Status s = body();
  if (!s.ok()) {
    Exec("ROLLBACK").IgnoreError();
    return s;
  }
  return Exec("COMMIT");
}

absl::StatusOr<std::optional<std::string>> ConsentStore::ConsentForRequest(
    std::string_view data_subject, std::string_view request_id) {
  absl::MutexLock lock(&mu_);
  Stmt s(db_, "SELECT consent_id FROM grant_requests WHERE data_subject=? AND request_id=?");
  if (!s.status().ok()) return s.status();
  s.Bind(1, data_subject).Bind(2, request_id);
  absl::StatusOr<bool> row = s.Next();
  if (!row.ok()) return row.status();
  if (!*row) return std::nullopt;
  return s.ColBlob(0);
}

absl::StatusOr<std::optional<Consent>> ConsentStore::GetConsent(std::string_view consent_id) {
  absl::MutexLock lock(&mu_);
  return One<Consent>(
      db_, "SELECT proto FROM consents WHERE consent_id=?",
      [&](Stmt& s) { s.Bind(1, consent_id); }, "consent");
}

absl::StatusOr<std::vector<Consent>> ConsentStore::ListConsents(std::string_view data_subject) {
  absl::MutexLock lock(&mu_);
  return All<Consent>(
      db_, "SELECT proto FROM consents WHERE data_subject=? ORDER BY grant_us DESC, consent_id DESC",
      [&](Stmt& s) { s.Bind(1, data_subject); }, "consent");
}

absl::StatusOr<std::vector<Consent>> ConsentStore::ActiveConsents() {
  absl::MutexLock lock(&mu_);
  return All<Consent>(
      db_, "SELECT proto FROM consents WHERE state=?",
      [&](Stmt& s) { s.Bind(1, static_cast<int64_t>(consent::v1::CONSENT_STATE_ACTIVE)); },
      "consent");
}

absl::StatusOr<std::vector<ConsentEvent>> ConsentStore::History(std::string_view data_subject,
                                                                std::string_view consent_id) {
  absl::MutexLock lock(&mu_);
  if (consent_id.empty()) {
    return All<ConsentEvent>(
        db_, "SELECT proto FROM consent_events WHERE data_subject=? ORDER BY seq",
        [&](Stmt& s) { s.Bind(1, data_subject); }, "consent event");
  }
  return All<ConsentEvent>(
      db_, "SELECT proto FROM consent_events WHERE data_subject=? AND consent_id=? ORDER BY seq",
      [&](Stmt& s) { s.Bind(1, data_subject).Bind(2, consent_id); }, "consent event");
}

absl::StatusOr<std::optional<Receipt>> ConsentStore::GetReceipt(std::string_view receipt_id) {
  absl::MutexLock lock(&mu_);
  return One<Receipt>(
      db_, "SELECT proto FROM receipts WHERE receipt_id=?",
      [&](Stmt& s) { s.Bind(1, receipt_id); }, "receipt");
}

absl::StatusOr<std::vector<Receipt>> ConsentStore::ReceiptsOf(std::string_view data_subject) {
  absl::MutexLock lock(&mu_);
  return All<Receipt>(
      db_, "SELECT proto FROM receipts WHERE data_subject=? ORDER BY rowid",
      [&](Stmt& s) { s.Bind(1, data_subject); }, "receipt");
}

absl::Status ConsentStore::PutProposal(const Proposal& proposal, std::string_view key) {
  absl::MutexLock lock(&mu_);
  Stmt s(db_, "INSERT OR REPLACE INTO proposals(proposal_id, key, propose_us, proto) VALUES(?,?,?,?)");
  if (!s.status().ok()) return s.status();
  s.Bind(1, proposal.proposal_id())
      .Bind(2, key)
      .Bind(3, Micros(proposal.propose_time()))
      .BindBlob(4, proposal.SerializeAsString());
  return s.Run();
}

absl::StatusOr<std::optional<Proposal>> ConsentStore::GetProposal(std::string_view proposal_id) {
  absl::MutexLock lock(&mu_);
  return One<Proposal>(
      db_, "SELECT proto FROM proposals WHERE proposal_id=?",
      [&](Stmt& s) { s.Bind(1, proposal_id); }, "proposal");
}

absl::StatusOr<std::vector<Proposal>> ConsentStore::Proposals() {
  absl::MutexLock lock(&mu_);
  return All<Proposal>(
      db_, "SELECT proto FROM proposals ORDER BY propose_us DESC, proposal_id DESC",
      [](Stmt&) {}, "proposal");
}

absl::Status ConsentStore::PutDelegation(const Delegation& d) {
  absl::MutexLock lock(&mu_);
  Stmt s(db_,
         "INSERT OR REPLACE INTO delegations(delegation_id, data_subject, app, state, grant_us, "
         "proto) VALUES(?,?,?,?,?,?)");
  if (!s.status().ok()) return s.status();
  s.Bind(1, d.delegation_id())
      .Bind(2, d.data_subject())
      .Bind(3, d.app())
      .Bind(4, static_cast<int64_t>(d.state()))
      .Bind(5, Micros(d.grant_time()))
      .BindBlob(6, d.SerializeAsString());
  return s.Run();
}

absl::StatusOr<std::optional<Delegation>> ConsentStore::GetDelegation(
    std::string_view delegation_id) {
  absl::MutexLock lock(&mu_);
  return One<Delegation>(
      db_, "SELECT proto FROM delegations WHERE delegation_id=?",
      [&](Stmt& s) { s.Bind(1, delegation_id); }, "delegation");
}

absl::StatusOr<std::vector<Delegation>> ConsentStore::Delegations(std::string_view data_subject,
                                                                  std::string_view app) {
  absl::MutexLock lock(&mu_);
  if (app.empty()) {
    return All<Delegation>(
        db_,
        "SELECT proto FROM delegations WHERE data_subject=? "
        "ORDER BY grant_us DESC, delegation_id DESC",
        [&](Stmt& s) { s.Bind(1, data_subject); }, "delegation");
  }
  return All<Delegation>(
      db_,
      "SELECT proto FROM delegations WHERE data_subject=? AND app=? "
      "ORDER BY grant_us DESC, delegation_id DESC",
      [&](Stmt& s) { s.Bind(1, data_subject).Bind(2, app); }, "delegation");
}

}  // namespace cityos::infobank
