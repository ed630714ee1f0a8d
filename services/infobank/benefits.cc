// The benefits ledger: append-only SQLite table of point entries; PROVISION
// entries are unique by their provision id so a retried provision never pays
// twice, not even when retries race on several connections.
#include "benefits.h"

#include <fcntl.h>
#include <sqlite3.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <cstring>
#include <set>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "cityos/id.h"
#include "cityos/proto_time.h"
#include "cityos/status.h"
#include "sqlite_util.h"

namespace cityos::infobank {
namespace {

using consent::v1::BenefitEntry;

absl::string_view AVs(std::string_view s) { return {s.data(), s.size()}; }

constexpr int kDefaultPageSize = 100;
constexpr int kMaxPageSize = 1000;
constexpr std::string_view kTokenPrefix = "bst1:";

// `rule` covers `category` when equal or a dotted ancestor (`health` covers
// `health.vitals`, not `healthcare`); empty covers everything.
bool CategoryCovers(std::string_view rule, std::string_view category) {
  if (rule.empty()) return true;
  if (category.size() < rule.size() || category.substr(0, rule.size()) != rule) return false;
  return category.size() == rule.size() || category[rule.size()] == '.';
}

constexpr const char* kEntryColumns =
    "entry_id, idempotency_key, kind, points, balance, time_ns, recipient_org, purpose, "
    "consent_id, rule_id, reverses_entry_id, description, data_subject, seq";

BenefitEntry ReadEntry(SqliteStmt& s) {
  BenefitEntry e;
  e.set_entry_id(s.ColText(0));
  e.set_idempotency_key(s.ColText(1));
  e.set_kind(static_cast<consent::v1::BenefitEntryKind>(s.ColInt(2)));
  e.set_points(s.ColInt(3));
  e.set_balance(s.ColInt(4));
  TimestampToProto(absl::FromUnixNanos(s.ColInt(5)), e.mutable_time());
  e.set_recipient_org(s.ColText(6));
  e.set_purpose(s.ColText(7));
  e.set_consent_id(s.ColText(8));
  e.set_rule_id(s.ColText(9));
  e.set_reverses_entry_id(s.ColText(10));
  e.set_description(s.ColText(11));
  return e;
}

class SqliteBenefitLedger final : public BenefitLedger {
 public:
  SqliteBenefitLedger(sqlite3* db, std::vector<BenefitRule> rules, Clock* clock, std::string path)
      : db_(db), rules_(std::move(rules)), clock_(clock), path_(std::move(path)) {}
  ~SqliteBenefitLedger() override { sqlite3_close(db_); }

  absl::StatusOr<std::optional<BenefitEntry>> CreditProvision(
      std::string_view provision_id, std::string_view data_subject,
      std::string_view recipient_org, std::string_view purpose, std::string_view data_category,
      std::string_view consent_id) override {
    if (provision_id.empty()) return absl::InvalidArgumentError("CreditProvision needs a provision_id");
    if (data_subject.empty()) return absl::InvalidArgumentError("CreditProvision needs a data_subject");
    const BenefitRule* rule = nullptr;
    for (const BenefitRule& r : rules_) {
      if ((r.purpose.empty() || r.purpose == purpose) &&
          CategoryCovers(r.data_category, data_category)) {
        rule = &r;
        break;
      }
    }
    if (rule == nullptr) return std::optional<BenefitEntry>();

    absl::MutexLock lock(&mu_);
    // IMMEDIATE takes the write lock first, so that the balance read below
    // and the insert are one step even against other connections.
    CITYOS_RETURN_IF_ERROR(Exec("BEGIN IMMEDIATE"));
    auto result = CreditLocked(*rule, provision_id, data_subject, recipient_org, purpose,
                               data_category, consent_id);
    if (!result.ok()) {
      (void)Exec("ROLLBACK");
      return result.status();
    }
    CITYOS_RETURN_IF_ERROR(Exec("COMMIT"));
    return std::optional<BenefitEntry>(*std::move(result));
  }

  absl::StatusOr<consent::v1::GetBenefitBalanceResponse> Balance(
      std::string_view data_subject) override {
    consent::v1::GetBenefitBalanceResponse out;
    absl::MutexLock lock(&mu_);
    SqliteStmt s(db_,
           "SELECT balance, entry_id FROM entries WHERE data_subject = ? ORDER BY seq DESC LIMIT 1");
    if (!s.ok()) return SqlError("prepare balance");
    s.Bind(1, data_subject);
    int rc = s.Step();
    if (rc == SQLITE_ROW) {
      out.set_balance(s.ColInt(0));
      out.set_last_entry_id(s.ColText(1));
    } else if (rc != SQLITE_DONE) {
      return SqlError("balance");
    }
    TimestampToProto(clock_->Now(), out.mutable_as_of());
    return out;
  }

  absl::StatusOr<consent::v1::GetBenefitStatementResponse> Statement(
      const consent::v1::GetBenefitStatementRequest& request,
      std::string_view data_subject) override {
    if (request.page_size() < 0 || request.page_size() > kMaxPageSize) {
      return absl::InvalidArgumentError(
          absl::StrCat("page_size ", request.page_size(), " is not in [0, ", kMaxPageSize, "]"));
    }
    const int page_size = request.page_size() == 0 ? kDefaultPageSize : request.page_size();
    int64_t before_seq = INT64_MAX;
    if (!request.page_token().empty()) {
      const std::string& t = request.page_token();
      int64_t v = 0;
      auto [p, ec] = std::from_chars(t.data() + std::min(t.size(), kTokenPrefix.size()),
                                     t.data() + t.size(), v);
      if (t.rfind(kTokenPrefix, 0) != 0 || ec != std::errc() || p != t.data() + t.size() ||
          v <= 0) {
        return absl::InvalidArgumentError(absl::StrCat("bad page_token \"", t, "\""));
      }
      before_seq = v;
    }
    int64_t from_ns = INT64_MIN, to_ns = INT64_MAX;
    if (request.range().has_start()) {
      CITYOS_ASSIGN_OR_RETURN(absl::Time t,
                              TimestampFromProto(request.range().start(), "range.start"));
      from_ns = absl::ToUnixNanos(t);
    }
    if (request.range().has_end()) {
      CITYOS_ASSIGN_OR_RETURN(absl::Time t, TimestampFromProto(request.range().end(), "range.end"));
      to_ns = absl::ToUnixNanos(t);
    }
    consent::v1::GetBenefitStatementResponse out;
    absl::MutexLock lock(&mu_);
    CITYOS_RETURN_IF_ERROR(Exec("BEGIN"));  // page and totals from one snapshot
    absl::Status st = [&]() -> absl::Status {
      {
        SqliteStmt s(db_,
               "SELECT COALESCE(SUM(CASE WHEN points > 0 THEN points END), 0),"
               "       COALESCE(SUM(CASE WHEN points < 0 THEN -points END), 0)"
               " FROM entries WHERE data_subject = ? AND time_ns >= ? AND time_ns < ?");
        if (!s.ok()) return SqlError("prepare totals");
        s.Bind(1, data_subject);
        s.Bind(2, from_ns);
        s.Bind(3, to_ns);
        if (s.Step() != SQLITE_ROW) return SqlError("totals");
        out.set_credited(s.ColInt(0));
        out.set_debited(s.ColInt(1));
      }
      const std::string sql = absl::StrCat(
          "SELECT ", kEntryColumns,
          " FROM entries WHERE data_subject = ? AND time_ns >= ? AND time_ns < ? AND seq < ?"
          " ORDER BY seq DESC LIMIT ?");
      SqliteStmt s(db_, sql.c_str());
      if (!s.ok()) return SqlError("prepare statement");
      s.Bind(1, data_subject);
      s.Bind(2, from_ns);
      s.Bind(3, to_ns);
      s.Bind(4, before_seq);
      s.Bind(5, page_size + 1);
      const int rc = infobank::ReadSeqPage(s, page_size, /*seq_col=*/13, kTokenPrefix, out,
                                           [](SqliteStmt& row) { return ReadEntry(row); });
      if (rc != SQLITE_ROW && rc != SQLITE_DONE) return SqlError("statement");
      return absl::OkStatus();
    }();
    (void)Exec("COMMIT");
    CITYOS_RETURN_IF_ERROR(st);
    return out;
  }

 private:
  absl::Status SqlError(std::string_view what) {
    return absl::InternalError(absl::StrCat(path_, ": ", AVs(what), ": ", sqlite3_errmsg(db_)));
  }
  absl::Status Exec(const char* sql) {
    return infobank::ExecSql(db_, sql, [&] { return absl::StrCat(path_, ": ", sql); });
  }

  absl::StatusOr<std::optional<std::pair<BenefitEntry, std::string>>> FindByKey(
      std::string_view key) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    const std::string sql =
        absl::StrCat("SELECT ", kEntryColumns, " FROM entries WHERE idempotency_key = ?");
    SqliteStmt s(db_, sql.c_str());
    if (!s.ok()) return SqlError("prepare idempotency lookup");
    s.Bind(1, key);
    int rc = s.Step();
    if (rc == SQLITE_DONE) return std::optional<std::pair<BenefitEntry, std::string>>();
    if (rc != SQLITE_ROW) return SqlError("idempotency lookup");
    return std::optional<std::pair<BenefitEntry, std::string>>(
        std::make_pair(ReadEntry(s), s.ColText(12)));
  }

  absl::StatusOr<BenefitEntry> CreditLocked(const BenefitRule& rule,
                                            std::string_view provision_id,
                                            std::string_view data_subject,
                                            std::string_view recipient_org,
                                            std::string_view purpose,
                                            std::string_view data_category,
                                            std::string_view consent_id)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    CITYOS_ASSIGN_OR_RETURN(auto existing, FindByKey(provision_id));
    if (existing.has_value()) {
      if (existing->second != data_subject) {
        return absl::FailedPreconditionError(
            absl::StrCat("provision ", AVs(provision_id), " was already credited to another person"));
      }
      return std::move(existing->first);
    }
    int64_t balance = 0;
    {
      SqliteStmt s(db_, "SELECT balance FROM entries WHERE data_subject = ? ORDER BY seq DESC LIMIT 1");
      if (!s.ok()) return SqlError("prepare balance");
      s.Bind(1, data_subject);
      int rc = s.Step();
      if (rc == SQLITE_ROW) {
        balance = s.ColInt(0);
      } else if (rc != SQLITE_DONE) {
        return SqlError("balance");
      }
    }
    const absl::Time now = clock_->Now();
    BenefitEntry e;
    e.set_entry_id(UuidToString(NewUuidV7At(now)));
    e.set_idempotency_key(std::string(provision_id));
    e.set_kind(consent::v1::BENEFIT_ENTRY_KIND_PROVISION);
    e.set_points(rule.points);
    e.set_balance(balance + rule.points);
    TimestampToProto(now, e.mutable_time());
    e.set_recipient_org(std::string(recipient_org));
    e.set_purpose(std::string(purpose));
    e.set_consent_id(std::string(consent_id));
    e.set_rule_id(rule.id);
    e.set_description(absl::StrFormat("%d points for providing %s to %s for %s", rule.points,
                                      AVs(data_category), AVs(recipient_org), AVs(purpose)));
    SqliteStmt s(db_,
           "INSERT INTO entries(entry_id, idempotency_key, kind, points, balance, time_ns,"
           " recipient_org, purpose, consent_id, rule_id, reverses_entry_id, description,"
           " data_subject, data_category) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)");
    if (!s.ok()) return SqlError("prepare credit");
    s.Bind(1, e.entry_id());
    s.Bind(2, e.idempotency_key());
    s.Bind(3, e.kind());
    s.Bind(4, e.points());
    s.Bind(5, e.balance());
    s.Bind(6, absl::ToUnixNanos(now));
    s.Bind(7, e.recipient_org());
    s.Bind(8, e.purpose());
    s.Bind(9, e.consent_id());
    s.Bind(10, e.rule_id());
    s.Bind(11, "");
    s.Bind(12, e.description());
    s.Bind(13, data_subject);
    s.Bind(14, data_category);
    if (s.Step() != SQLITE_DONE) return SqlError("credit");
    return e;
  }

  absl::Mutex mu_;
  sqlite3* const db_ ABSL_PT_GUARDED_BY(mu_);
  const std::vector<BenefitRule> rules_;
  Clock* const clock_;
  const std::string path_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<BenefitLedger>> BenefitLedger::Open(const std::string& path,
                                                                   std::vector<BenefitRule> rules,
                                                                   Clock* clock) {
  if (path.empty()) return absl::InvalidArgumentError("benefit ledger needs a database path");
  if (clock == nullptr) clock = Clock::Real();
  std::set<std::string> ids;
  for (size_t i = 0; i < rules.size(); ++i) {
    BenefitRule& r = rules[i];
    if (r.points <= 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("benefit rule ", i, " (", r.purpose, ":", r.data_category,
                       ") has points ", r.points, "; must be > 0"));
    }
    if (r.id.empty()) r.id = absl::StrCat(r.purpose, ":", r.data_category);
    if (!ids.insert(r.id).second) {
      return absl::InvalidArgumentError(absl::StrCat("benefit rule id \"", r.id, "\" is used twice"));
    }
  }
  // Who got points for what is personal data too: create the file 0600
  // before SQLite does (it would use the umask); WAL and shm files follow it.
  CITYOS_ASSIGN_OR_RETURN(sqlite3* raw, infobank::OpenPrivateSqlite(path));
  std::unique_ptr<sqlite3, int (*)(sqlite3*)> db(raw, sqlite3_close);
  sqlite3_busy_timeout(raw, 10000);
  // The UNIQUE constraint on idempotency_key is what makes a provision pay
  // at most once, whatever the callers and connections do.
  const char* schema =
      "PRAGMA journal_mode = WAL;"
      "CREATE TABLE IF NOT EXISTS entries("
      "  seq INTEGER PRIMARY KEY AUTOINCREMENT,"
      "  entry_id TEXT NOT NULL UNIQUE,"
      "  idempotency_key TEXT NOT NULL UNIQUE,"
      "  data_subject TEXT NOT NULL,"
      "  kind INTEGER NOT NULL, points INTEGER NOT NULL, balance INTEGER NOT NULL,"
      "  time_ns INTEGER NOT NULL,"
      "  recipient_org TEXT NOT NULL, purpose TEXT NOT NULL, data_category TEXT NOT NULL,"
      "  consent_id TEXT NOT NULL, rule_id TEXT NOT NULL, reverses_entry_id TEXT NOT NULL,"
      "  description TEXT NOT NULL);"
      "CREATE INDEX IF NOT EXISTS entries_by_subject ON entries(data_subject, seq);";
  CITYOS_RETURN_IF_ERROR(infobank::ExecSql(
      raw, schema, [&] { return absl::StrCat("cannot initialise ", path); }));
  return std::unique_ptr<BenefitLedger>(
      new SqliteBenefitLedger(db.release(), std::move(rules), clock, path));
}

}  // namespace cityos::infobank
