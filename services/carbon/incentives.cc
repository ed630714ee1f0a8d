// The incentive ledger: immutable SQLite entries for points, coupons and
// green-loan tiers, with the per-account running state that carries point
// remainders and counts coupons per month.
#include "incentives.h"

#include <fcntl.h>
#include <sqlite3.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstring>
#include <optional>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "cityos/id.h"
#include "cityos/proto_time.h"
#include "cityos/status.h"
#include "periods.h"
#include "sqlite_util.h"

namespace cityos::carbon {
namespace {

using infobank::SqliteStmt;

absl::string_view AVs(std::string_view s) { return {s.data(), s.size()}; }

constexpr int kDefaultPageSize = 100;
constexpr int kMaxPageSize = 1000;
constexpr std::string_view kTokenPrefix = "ie1:";

constexpr const char* kEntryColumns =
    "entry_id, account_id, kind, points, coupon_id, coupon_currency, coupon_minor, loan_tier,"
    " time_ns, source_id, rule_id, reverses_entry_id, restatement_id, description, seq";

v1::IncentiveEntry ReadEntry(SqliteStmt& s) {
  v1::IncentiveEntry e;
  e.set_entry_id(s.ColText(0));
  e.set_account_id(s.ColText(1));
  e.set_kind(static_cast<v1::IncentiveKind>(s.ColInt(2)));
  e.set_points(s.ColInt(3));
  e.set_coupon_id(s.ColText(4));
  if (!s.ColText(5).empty()) {
    e.mutable_coupon_value()->set_currency_code(s.ColText(5));
    e.mutable_coupon_value()->set_amount_minor(s.ColInt(6));
  }
  e.set_loan_tier(s.ColText(7));
  TimestampToProto(absl::FromUnixNanos(s.ColInt(8)), e.mutable_time());
  e.set_source_id(s.ColText(9));
  e.set_rule_id(s.ColText(10));
  e.set_reverses_entry_id(s.ColText(11));
  e.set_restatement_id(s.ColText(12));
  e.set_description(s.ColText(13));
  return e;
}

std::string DayText(absl::Time t, const absl::TimeZone& tz) {
  return absl::FormatTime("%Y-%m-%d", t, tz);
}

}  // namespace

class IncentiveLedger::Impl {
 public:
  Impl(sqlite3* db, IncentiveRules rules, Clock* clock, std::string path)
      : db_(db), rules_(std::move(rules)), clock_(clock), path_(std::move(path)) {}
  ~Impl() { sqlite3_close(db_); }

  absl::StatusOr<std::vector<v1::IncentiveEntry>> OnCredit(const v1::GreenCredit& c) {
    if (c.credit_id().empty()) return absl::InvalidArgumentError("credit_id is empty");
    if (c.account_id().empty()) {
      return absl::InvalidArgumentError(absl::StrCat("credit ", c.credit_id(), ": account_id is empty"));
    }
    if (!std::isfinite(c.credited_g()) || c.credited_g() < 0) {
      return absl::InvalidArgumentError(absl::StrCat("credit ", c.credit_id(), ": credited_g ",
                                                     c.credited_g(), " is not >= 0"));
    }
    CITYOS_ASSIGN_OR_RETURN(absl::Time time, TimestampFromProto(c.time(), "credit.time"));
    absl::MutexLock lock(&mu_);
    return InTransaction([&]() -> absl::StatusOr<std::vector<v1::IncentiveEntry>> {
      std::vector<v1::IncentiveEntry> out;
      CITYOS_ASSIGN_OR_RETURN(bool fresh, MarkProcessed(absl::StrCat("credit:", c.credit_id())));
      if (!fresh) return out;
      const int64_t mg = std::llround(c.credited_g() * 1000.0);
      if (mg <= 0) return out;
      const absl::Time now = clock_->Now();
      // Points: book what the running total is worth minus what was booked.
      if (rules_.points_per_kg > 0) {
        int64_t total_mg = 0, booked = 0;
        {
          SqliteStmt s(db_, "SELECT credited_mg, points_booked FROM point_state WHERE account_id = ?");
          if (!s.ok()) return SqlError("prepare point state");
          s.Bind(1, c.account_id());
          int rc = s.Step();
          if (rc == SQLITE_ROW) {
            total_mg = s.ColInt(0);
            booked = s.ColInt(1);
          } else if (rc != SQLITE_DONE) {
            return SqlError("point state");
          }
        }
        total_mg += mg;
        const int64_t due = static_cast<int64_t>(
            std::floor(static_cast<long double>(total_mg) * rules_.points_per_kg / 1e6L + 1e-9L));
        const int64_t points = due - booked;
        {
          SqliteStmt s(db_,
                       "INSERT INTO point_state(account_id, credited_mg, points_booked) VALUES (?,?,?)"
                       " ON CONFLICT(account_id) DO UPDATE SET credited_mg = excluded.credited_mg,"
                       " points_booked = excluded.points_booked");
          if (!s.ok()) return SqlError("prepare point state update");
          s.Bind(1, c.account_id()).Bind(2, total_mg).Bind(3, std::max(due, booked));
          if (s.Step() != SQLITE_DONE) return SqlError("point state update");
        }
        if (points > 0) {
          v1::IncentiveEntry e = NewEntry(now, c.account_id(), v1::INCENTIVE_KIND_POINTS);
          e.set_points(points);
          e.set_source_id(c.credit_id());
          e.set_rule_id(rules_.points_rule_id);
          e.set_description(absl::StrFormat(
              "%d points for %.3f kg CO2 credited (%s); %g points per kg", points,
              c.credited_g() / 1000.0, c.behaviour(), rules_.points_per_kg));
          CITYOS_RETURN_IF_ERROR(Insert(e, std::nullopt));
          out.push_back(std::move(e));
        }
      }
      // Coupons: every full coupon_every_kg in the behaviour's month.
      if (rules_.coupon_every_kg > 0) {
        const Period month = PeriodOf(time, v1::GRANULARITY_MONTH, rules_.tz);
        int64_t month_mg = 0, coupons = 0;
        {
          SqliteStmt s(db_,
                       "SELECT credited_mg, coupons FROM coupon_state"
                       " WHERE account_id = ? AND month_start_ns = ?");
          if (!s.ok()) return SqlError("prepare coupon state");
          s.Bind(1, c.account_id()).Bind(2, absl::ToUnixNanos(month.start));
          int rc = s.Step();
          if (rc == SQLITE_ROW) {
            month_mg = s.ColInt(0);
            coupons = s.ColInt(1);
          } else if (rc != SQLITE_DONE) {
            return SqlError("coupon state");
          }
        }
        month_mg += mg;
        const int64_t due = static_cast<int64_t>(std::floor(
            static_cast<long double>(month_mg) / (rules_.coupon_every_kg * 1e6L) + 1e-9L));
        {
          SqliteStmt s(db_,
                       "INSERT INTO coupon_state(account_id, month_start_ns, credited_mg, coupons)"
                       " VALUES (?,?,?,?) ON CONFLICT(account_id, month_start_ns) DO UPDATE SET"
                       " credited_mg = excluded.credited_mg, coupons = excluded.coupons");
          if (!s.ok()) return SqlError("prepare coupon state update");
          s.Bind(1, c.account_id()).Bind(2, absl::ToUnixNanos(month.start));
          s.Bind(3, month_mg).Bind(4, std::max(due, coupons));
          if (s.Step() != SQLITE_DONE) return SqlError("coupon state update");
        }
        for (int64_t n = coupons + 1; n <= due; ++n) {
          v1::IncentiveEntry e = NewEntry(now, c.account_id(), v1::INCENTIVE_KIND_COUPON);
          e.set_coupon_id(absl::StrCat("cpn-", UuidToString(NewUuidV7At(now))));
          *e.mutable_coupon_value() = rules_.coupon_value;
          e.set_source_id(c.credit_id());
          e.set_rule_id(rules_.coupon_rule_id);
          e.set_description(absl::StrFormat("coupon %d of %s: %g kg CO2 credited this month",
                                            n, absl::FormatTime("%Y-%m", month.start, rules_.tz),
                                            static_cast<double>(n) * rules_.coupon_every_kg));
          CITYOS_RETURN_IF_ERROR(Insert(e, std::nullopt));
          out.push_back(std::move(e));
        }
      }
      return out;
    });
  }

  absl::StatusOr<std::vector<v1::IncentiveEntry>> OnGrade(const v1::Grade& g) {
    if (g.grade_id().empty()) return absl::InvalidArgumentError("grade_id is empty");
    if (g.account_id().empty()) {
      return absl::InvalidArgumentError(absl::StrCat("grade ", g.grade_id(), ": account_id is empty"));
    }
    if (g.level() < 1 || g.level() > 5) {
      return absl::InvalidArgumentError(
          absl::StrCat("grade ", g.grade_id(), ": level ", g.level(), " is not in 1..5"));
    }
    if (!g.period().has_start()) {
      return absl::InvalidArgumentError(absl::StrCat("grade ", g.grade_id(), ": period.start is unset"));
    }
    CITYOS_ASSIGN_OR_RETURN(absl::Time period_start,
                            TimestampFromProto(g.period().start(), "grade.period.start"));
    absl::MutexLock lock(&mu_);
    return InTransaction([&]() -> absl::StatusOr<std::vector<v1::IncentiveEntry>> {
      std::vector<v1::IncentiveEntry> out;
      CITYOS_ASSIGN_OR_RETURN(bool fresh, MarkProcessed(absl::StrCat("grade:", g.grade_id())));
      if (!fresh) return out;
      auto it = rules_.loan_tier_by_level.find(g.level());
      if (it == rules_.loan_tier_by_level.end()) return out;
      const std::string& tier = it->second;
      const int64_t pstart = absl::ToUnixNanos(period_start);
      std::string old_id, old_tier;
      {
        SqliteStmt s(db_,
                     "SELECT entry_id, loan_tier FROM entries e WHERE account_id = ? AND kind = ?"
                     " AND period_start_ns = ? AND reverses_entry_id = ''"
                     " AND NOT EXISTS (SELECT 1 FROM entries r WHERE r.reverses_entry_id = e.entry_id)"
                     " ORDER BY seq DESC LIMIT 1");
        if (!s.ok()) return SqlError("prepare period tier");
        s.Bind(1, g.account_id()).Bind(2, int64_t{v1::INCENTIVE_KIND_LOAN_TIER}).Bind(3, pstart);
        int rc = s.Step();
        if (rc == SQLITE_ROW) {
          old_id = s.ColText(0);
          old_tier = s.ColText(1);
        } else if (rc != SQLITE_DONE) {
          return SqlError("period tier");
        }
      }
      if (!old_id.empty() && old_tier == tier) return out;
      const absl::Time now = clock_->Now();
      const std::string period = DayText(period_start, rules_.tz);
      if (!old_id.empty()) {
        v1::IncentiveEntry r = NewEntry(now, g.account_id(), v1::INCENTIVE_KIND_LOAN_TIER);
        r.set_loan_tier(old_tier);
        r.set_source_id(g.grade_id());
        r.set_rule_id(rules_.loan_tier_rule_id);
        r.set_reverses_entry_id(old_id);
        r.set_restatement_id(g.restatement_id());
        r.set_description(absl::StrCat(
            "reverses green-loan tier ", old_tier, " of the period from ", period,
            g.restatement_id().empty() ? std::string(": regraded")
                                       : absl::StrCat(": restatement ", g.restatement_id()),
            " gives level ", g.level(), " (", tier, ")"));
        CITYOS_RETURN_IF_ERROR(Insert(r, pstart));
        out.push_back(std::move(r));
      }
      v1::IncentiveEntry e = NewEntry(now, g.account_id(), v1::INCENTIVE_KIND_LOAN_TIER);
      e.set_loan_tier(tier);
      e.set_source_id(g.grade_id());
      e.set_rule_id(rules_.loan_tier_rule_id);
      e.set_restatement_id(g.restatement_id());
      e.set_description(absl::StrCat("green-loan tier ", tier, " for carbon-efficiency level ",
                                     g.level(), " of the period from ", period));
      CITYOS_RETURN_IF_ERROR(Insert(e, pstart));
      out.push_back(std::move(e));
      return out;
    });
  }

  absl::StatusOr<v1::GetIncentiveStatementResponse> Statement(
      const v1::GetIncentiveStatementRequest& r) {
    if (r.account_id().empty()) return absl::InvalidArgumentError("account_id is required");
    if (r.page_size() < 0 || r.page_size() > kMaxPageSize) {
      return absl::InvalidArgumentError(
          absl::StrCat("page_size ", r.page_size(), " is not in [0, ", kMaxPageSize, "]"));
    }
    const int page_size = r.page_size() == 0 ? kDefaultPageSize : r.page_size();
    int64_t before_seq = INT64_MAX;
    if (!r.page_token().empty()) {
      const std::string& t = r.page_token();
      if (t.rfind(kTokenPrefix, 0) != 0 ||
          !absl::SimpleAtoi(absl::string_view(t).substr(kTokenPrefix.size()), &before_seq) ||
          before_seq <= 0) {
        return absl::InvalidArgumentError(absl::StrCat("bad page_token \"", t, "\""));
      }
    }
    int64_t from_ns = INT64_MIN, to_ns = INT64_MAX;
    if (r.range().has_start()) {
      CITYOS_ASSIGN_OR_RETURN(absl::Time t, TimestampFromProto(r.range().start(), "range.start"));
      from_ns = absl::ToUnixNanos(t);
    }
    if (r.range().has_end()) {
      CITYOS_ASSIGN_OR_RETURN(absl::Time t, TimestampFromProto(r.range().end(), "range.end"));
      to_ns = absl::ToUnixNanos(t);
    }
    v1::GetIncentiveStatementResponse out;
    absl::MutexLock lock(&mu_);
    CITYOS_RETURN_IF_ERROR(Exec("BEGIN"));  // one snapshot
    absl::Status st = [&]() -> absl::Status {
      CITYOS_ASSIGN_OR_RETURN(int64_t balance, BalanceLocked(r.account_id()));
      out.set_points_balance(balance);
      CITYOS_ASSIGN_OR_RETURN(std::string tier, TierLocked(r.account_id()));
      out.set_loan_tier(tier);
      const std::string sql = absl::StrCat(
          "SELECT ", kEntryColumns,
          " FROM entries WHERE account_id = ? AND time_ns >= ? AND time_ns < ? AND seq < ?"
          " ORDER BY seq DESC LIMIT ?");
      SqliteStmt s(db_, sql.c_str());
      if (!s.ok()) return SqlError("prepare statement");
      s.Bind(1, r.account_id()).Bind(2, from_ns).Bind(3, to_ns).Bind(4, before_seq);
      s.Bind(5, int64_t{page_size} + 1);
      const int rc = infobank::ReadSeqPage(s, page_size, /*seq_col=*/14, kTokenPrefix, out,
                                           [](SqliteStmt& row) { return ReadEntry(row); });
      if (rc != SQLITE_ROW && rc != SQLITE_DONE) return SqlError("statement");
      return absl::OkStatus();
    }();
    (void)Exec("COMMIT");
    CITYOS_RETURN_IF_ERROR(st);
    return out;
  }

  absl::StatusOr<int64_t> PointsBalance(const std::string& account_id) {
    absl::MutexLock lock(&mu_);
    return BalanceLocked(account_id);
  }
  absl::StatusOr<std::string> CurrentLoanTier(const std::string& account_id) {
    absl::MutexLock lock(&mu_);
    return TierLocked(account_id);
  }

 private:
  absl::Status SqlError(std::string_view what) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return absl::InternalError(absl::StrCat(path_, ": ", AVs(what), ": ", sqlite3_errmsg(db_)));
  }
  absl::Status Exec(const char* sql) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return infobank::ExecSql(db_, sql, [&] { return absl::StrCat(path_, ": ", sql); });
  }

  template <typename F>
  absl::StatusOr<std::vector<v1::IncentiveEntry>> InTransaction(F f)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    CITYOS_RETURN_IF_ERROR(Exec("BEGIN IMMEDIATE"));
    absl::StatusOr<std::vector<v1::IncentiveEntry>> r = f();
    if (!r.ok()) {
      (void)Exec("ROLLBACK");
      return r;
    }
    CITYOS_RETURN_IF_ERROR(Exec("COMMIT"));
    return r;
  }

  // true if `key` was not processed before (and now is).
  absl::StatusOr<bool> MarkProcessed(const std::string& key) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    SqliteStmt s(db_, "INSERT OR IGNORE INTO processed(source_key) VALUES (?)");
    if (!s.ok()) return SqlError("prepare processed");
    s.Bind(1, key);
    if (s.Step() != SQLITE_DONE) return SqlError("processed");
    return sqlite3_changes(db_) == 1;
  }

  v1::IncentiveEntry NewEntry(absl::Time now, const std::string& account_id,
                              v1::IncentiveKind kind) {
    v1::IncentiveEntry e;
    e.set_entry_id(UuidToString(NewUuidV7At(now)));
    e.set_account_id(account_id);
    e.set_kind(kind);
    TimestampToProto(now, e.mutable_time());
    return e;
  }

  absl::Status Insert(const v1::IncentiveEntry& e, std::optional<int64_t> period_start_ns)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    SqliteStmt s(db_,
                 "INSERT INTO entries(entry_id, account_id, kind, points, coupon_id,"
                 " coupon_currency, coupon_minor, loan_tier, time_ns, source_id, rule_id,"
                 " reverses_entry_id, restatement_id, description, period_start_ns)"
                 " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)");
    if (!s.ok()) return SqlError("prepare insert entry");
    s.Bind(1, e.entry_id()).Bind(2, e.account_id()).Bind(3, int64_t{e.kind()}).Bind(4, e.points());
    s.Bind(5, e.coupon_id()).Bind(6, e.coupon_value().currency_code());
    s.Bind(7, e.coupon_value().amount_minor()).Bind(8, e.loan_tier());
    s.Bind(9, absl::ToUnixNanos(absl::FromUnixSeconds(e.time().seconds()) +
                                absl::Nanoseconds(e.time().nanos())));
    s.Bind(10, e.source_id()).Bind(11, e.rule_id()).Bind(12, e.reverses_entry_id());
    s.Bind(13, e.restatement_id()).Bind(14, e.description());
    if (period_start_ns.has_value()) {
      s.Bind(15, *period_start_ns);
    } else {
      sqlite3_bind_null(s.get(), 15);
    }
    if (s.Step() != SQLITE_DONE) return SqlError("insert entry");
    return absl::OkStatus();
  }

  absl::StatusOr<int64_t> BalanceLocked(const std::string& account_id)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    SqliteStmt s(db_, "SELECT COALESCE(SUM(points), 0) FROM entries WHERE account_id = ?");
    if (!s.ok()) return SqlError("prepare balance");
    s.Bind(1, account_id);
    if (s.Step() != SQLITE_ROW) return SqlError("balance");
    return s.ColInt(0);
  }

  // Tier of the latest graded period's active entry.
  absl::StatusOr<std::string> TierLocked(const std::string& account_id)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    SqliteStmt s(db_,
                 "SELECT loan_tier FROM entries e WHERE account_id = ? AND kind = ?"
                 " AND reverses_entry_id = ''"
                 " AND NOT EXISTS (SELECT 1 FROM entries r WHERE r.reverses_entry_id = e.entry_id)"
                 " ORDER BY period_start_ns DESC, seq DESC LIMIT 1");
    if (!s.ok()) return SqlError("prepare tier");
    s.Bind(1, account_id).Bind(2, int64_t{v1::INCENTIVE_KIND_LOAN_TIER});
    int rc = s.Step();
    if (rc == SQLITE_ROW) return s.ColText(0);
    if (rc != SQLITE_DONE) return SqlError("tier");
    return std::string();
  }

  absl::Mutex mu_;
  sqlite3* const db_ ABSL_PT_GUARDED_BY(mu_);
  const IncentiveRules rules_;
  Clock* const clock_;
  const std::string path_;
};

IncentiveLedger::IncentiveLedger(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
IncentiveLedger::~IncentiveLedger() = default;

absl::StatusOr<std::unique_ptr<IncentiveLedger>> IncentiveLedger::Open(const std::string& db_path,
                                                                       IncentiveRules rules,
                                                                       Clock* clock) {
  if (db_path.empty()) return absl::InvalidArgumentError("incentive ledger needs a database path");
  if (clock == nullptr) clock = Clock::Real();
  if (!std::isfinite(rules.points_per_kg) || rules.points_per_kg < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("incentives: points_per_kg ", rules.points_per_kg, " must be >= 0"));
  }
  if (!std::isfinite(rules.coupon_every_kg) || rules.coupon_every_kg < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("incentives: coupon_every_kg ", rules.coupon_every_kg, " must be >= 0"));
  }
  if (rules.coupon_every_kg > 0 &&
      (rules.coupon_value.currency_code().empty() || rules.coupon_value.amount_minor() <= 0)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "incentives: coupon_value needs a currency_code and amount_minor > 0 (got \"",
        rules.coupon_value.currency_code(), "\" ", rules.coupon_value.amount_minor(), ")"));
  }
  for (const auto& [level, tier] : rules.loan_tier_by_level) {
    if (level < 1 || level > 5) {
      return absl::InvalidArgumentError(
          absl::StrCat("incentives: loan_tier_by_level level ", level, " is not in 1..5"));
    }
    if (tier.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("incentives: loan_tier_by_level level ", level, " has an empty tier"));
    }
  }
  CITYOS_ASSIGN_OR_RETURN(sqlite3* raw, infobank::OpenPrivateSqlite(db_path));
  auto impl = std::make_unique<Impl>(raw, std::move(rules), clock, db_path);
  sqlite3_busy_timeout(raw, 10000);
  const char* schema =
      "PRAGMA journal_mode = WAL;"
      "CREATE TABLE IF NOT EXISTS entries("
      "  seq INTEGER PRIMARY KEY AUTOINCREMENT,"
      "  entry_id TEXT NOT NULL UNIQUE, account_id TEXT NOT NULL, kind INTEGER NOT NULL,"
      "  points INTEGER NOT NULL, coupon_id TEXT NOT NULL, coupon_currency TEXT NOT NULL,"
      "  coupon_minor INTEGER NOT NULL, loan_tier TEXT NOT NULL, time_ns INTEGER NOT NULL,"
      "  source_id TEXT NOT NULL, rule_id TEXT NOT NULL, reverses_entry_id TEXT NOT NULL,"
      "  restatement_id TEXT NOT NULL, description TEXT NOT NULL, period_start_ns INTEGER);"
      "CREATE INDEX IF NOT EXISTS entries_by_account ON entries(account_id, seq);"
      "CREATE INDEX IF NOT EXISTS entries_by_reversal ON entries(reverses_entry_id);"
      "CREATE TABLE IF NOT EXISTS processed(source_key TEXT PRIMARY KEY);"
      "CREATE TABLE IF NOT EXISTS point_state(account_id TEXT PRIMARY KEY,"
      "  credited_mg INTEGER NOT NULL, points_booked INTEGER NOT NULL);"
      "CREATE TABLE IF NOT EXISTS coupon_state(account_id TEXT NOT NULL,"
      "  month_start_ns INTEGER NOT NULL, credited_mg INTEGER NOT NULL, coupons INTEGER NOT NULL,"
      "  PRIMARY KEY(account_id, month_start_ns));";
  CITYOS_RETURN_IF_ERROR(infobank::ExecSql(
      raw, schema, [&] { return absl::StrCat("cannot initialise ", db_path); }));
  return std::unique_ptr<IncentiveLedger>(new IncentiveLedger(std::move(impl)));
}

absl::StatusOr<std::vector<v1::IncentiveEntry>> IncentiveLedger::OnCredit(
    const v1::GreenCredit& credit) {
  return impl_->OnCredit(credit);
}
absl::StatusOr<std::vector<v1::IncentiveEntry>> IncentiveLedger::OnGrade(const v1::Grade& grade) {
  return impl_->OnGrade(grade);
}
absl::StatusOr<v1::GetIncentiveStatementResponse> IncentiveLedger::Statement(
    const v1::GetIncentiveStatementRequest& r) const {
  return impl_->Statement(r);
}
absl::StatusOr<int64_t> IncentiveLedger::PointsBalance(const std::string& account_id) const {
  return impl_->PointsBalance(account_id);
}
absl::StatusOr<std::string> IncentiveLedger::CurrentLoanTier(const std::string& account_id) const {
  return impl_->CurrentLoanTier(account_id);
}

}  // namespace cityos::carbon
