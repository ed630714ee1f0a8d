// Green-behaviour credits: the rule CSV and cap-text parser, the event ->
// behaviour mapping and the SQLite credit ledger with its caps and dedup.
#include "credits.h"

#include <fcntl.h>
#include <sqlite3.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstring>
#include <fstream>
#include <map>
#include <set>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/synchronization/mutex.h"
#include "cityos/id.h"
#include "cityos/logging.h"
#include "cityos/mobility/v1/mobility.pb.h"
#include "cityos/payments/v1/payments.pb.h"
#include "cityos/proto_time.h"
#include "cityos/status.h"
#include "periods.h"
#include "sqlite_util.h"

namespace cityos::carbon {
namespace {

using infobank::SqliteStmt;

absl::string_view AVs(std::string_view s) { return {s.data(), s.size()}; }
std::string_view SVs(absl::string_view s) { return {s.data(), s.size()}; }

constexpr int kDefaultPageSize = 100;
constexpr int kMaxPageSize = 1000;
constexpr std::string_view kTokenPrefix = "gc1:";
constexpr double kEpsilonG = 1e-9;

// ---------------------------------------------------------------------------
// Cap text.

bool IsAllDigits(std::string_view s) {
  if (s.empty()) return false;
  for (char c : s) {
    if (c < '0' || c > '9') return false;
  }
  return true;
}

// A positive integer of at most 12 digits.
bool ParseCount(std::string_view s, int64_t* out) {
  if (!IsAllDigits(s) || s.size() > 12) return false;
  int64_t v = 0;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || p != s.data() + s.size() || v <= 0) return false;
  *out = v;
  return true;
}

// "12", "12.5", "0.05" -> minor units (hundredths); at most 2 decimals.
bool ParseYuanToMinor(std::string_view s, int64_t* out) {
  std::string_view whole = s, frac;
  if (size_t dot = s.find('.'); dot != std::string_view::npos) {
    whole = s.substr(0, dot);
    frac = s.substr(dot + 1);
    if (frac.empty() || frac.size() > 2 || !IsAllDigits(frac)) return false;
  }
  if (!IsAllDigits(whole) || whole.size() > 12) return false;
  int64_t w = 0;
  std::from_chars(whole.data(), whole.data() + whole.size(), w);
  int64_t f = 0;
  if (!frac.empty()) {
    std::from_chars(frac.data(), frac.data() + frac.size(), f);
    if (frac.size() == 1) f *= 10;
  }
  *out = w * 100 + f;
  return *out > 0;
}

absl::Status CapError(std::string_view text, std::string_view clause, std::string_view why) {
  return absl::InvalidArgumentError(absl::StrCat("cap \"", AVs(text), "\": clause \"", AVs(clause),
                                                 "\" not understood: ", AVs(why)));
}

}  // namespace

std::string DefaultUnitForBehaviour(std::string_view b) {
  auto ends = [&](std::string_view suffix) {
    return b.size() >= suffix.size() && b.substr(b.size() - suffix.size()) == suffix;
  };
  if (ends("_km")) return "km";
  if (ends("_day")) return "day";
  if (ends("_ride")) return "ride";
  if (b == "offline_payment") return "payment";
  if (b == "utility_bill_payment") return "bill";
  if (b == "e_invoice") return "invoice";
  if (b == "e_ticket") return "ticket";
  if (b.find("registration") != std::string_view::npos) return "registration";
  return "action";
}

absl::Status ParseCreditCap(std::string_view text, CreditRule* rule) {
  if (rule->max_per_day != 0 || rule->max_per_month != 0 || rule->max_grams_per_day != 0 ||
      rule->max_grams_per_month != 0 || rule->per_account_ref_per_month ||
      rule->min_amount_minor != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("cap \"", AVs(text), "\": rule ", rule->id, " already has caps"));
  }
  if (absl::StripAsciiWhitespace(AVs(text)).empty()) return absl::OkStatus();
  for (absl::string_view raw : absl::StrSplit(AVs(text), ';')) {
    std::string clause = absl::AsciiStrToLower(absl::StripAsciiWhitespace(raw));
    if (clause.empty()) return CapError(text, clause, "empty clause");
    std::string main = clause;
    // Condition suffix "(payment >= X yuan)".
    if (size_t open = clause.find('('); open != std::string::npos) {
      if (clause.back() != ')') return CapError(text, clause, "text after ')'");
      std::string cond = clause.substr(open + 1, clause.size() - open - 2);
      main = std::string(absl::StripAsciiWhitespace(clause.substr(0, open)));
      std::vector<absl::string_view> t =
          absl::StrSplit(cond, absl::ByAnyChar(" \t"), absl::SkipEmpty());
      int64_t minor = 0;
      if (t.size() != 4 || t[0] != "payment" || t[1] != ">=" ||
          (t[3] != "yuan" && t[3] != "cny") || !ParseYuanToMinor(SVs(t[2]), &minor)) {
        return CapError(text, clause, "expected \"(payment >= <amount> yuan)\"");
      }
      if (rule->min_amount_minor != 0) return CapError(text, clause, "minimum amount given twice");
      rule->min_amount_minor = minor;
      rule->min_amount_currency = "CNY";
      if (main.empty()) continue;
    }
    std::vector<absl::string_view> t =
        absl::StrSplit(main, absl::ByAnyChar(" \t"), absl::SkipEmpty());
    if (t == std::vector<absl::string_view>{"one", "per", "account", "number", "per", "month"}) {
      if (rule->per_account_ref_per_month) return CapError(text, clause, "given twice");
      rule->per_account_ref_per_month = true;
      continue;
    }
    const bool grams = t.size() == 4 && t[1] == "g" && t[2] == "per";
    const bool actions = t.size() == 3 && t[1] == "per";
    if (!grams && !actions) {
      return CapError(text, clause,
                      "expected \"<N> per day|month\", \"<N> g per day|month\" or \"one per "
                      "account number per month\"");
    }
    absl::string_view period = t.back();
    if (period != "day" && period != "month") {
      return CapError(text, clause, absl::StrCat("period \"", period, "\" is not day or month"));
    }
    const bool day = period == "day";
    if (grams) {
      double g = 0;
      if (!absl::SimpleAtod(t[0], &g) || !std::isfinite(g) || g <= 0) {
        return CapError(text, clause, absl::StrCat("\"", t[0], "\" is not a positive number of grams"));
      }
      double& slot = day ? rule->max_grams_per_day : rule->max_grams_per_month;
      if (slot != 0) return CapError(text, clause, "grams cap for that period given twice");
      slot = g;
    } else {
      int64_t n = 0;
      if (!ParseCount(SVs(t[0]), &n)) {
        return CapError(text, clause, absl::StrCat("\"", t[0], "\" is not a positive whole number"));
      }
      int64_t& slot = day ? rule->max_per_day : rule->max_per_month;
      if (slot != 0) return CapError(text, clause, "action cap for that period given twice");
      slot = n;
    }
  }
  return absl::OkStatus();
}

namespace {

// Splits one CSV line: quoted fields per RFC 4180 ("" inside quotes); a quote
// inside an unquoted field is literal. Error text on an unterminated quote.
absl::StatusOr<std::vector<std::string>> SplitCsvLine(std::string_view line) {
  std::vector<std::string> out;
  size_t i = 0;
  while (true) {
    std::string field;
    if (i < line.size() && line[i] == '"') {
      ++i;
      bool closed = false;
      while (i < line.size()) {
        if (line[i] == '"') {
          if (i + 1 < line.size() && line[i + 1] == '"') {
            field.push_back('"');
            i += 2;
            continue;
          }
          closed = true;
          ++i;
          break;
        }
        field.push_back(line[i++]);
      }
      if (!closed) return absl::InvalidArgumentError("unterminated quoted field");
      if (i < line.size() && line[i] != ',') {
        return absl::InvalidArgumentError("text after a closing quote");
      }
    } else {
      while (i < line.size() && line[i] != ',') field.push_back(line[i++]);
    }
    out.push_back(std::move(field));
    if (i >= line.size()) break;
    ++i;  // the comma
  }
  return out;
}

}  // namespace

absl::StatusOr<std::vector<CreditRule>> ParseCreditRulesCsv(const std::string& path,
                                                            const std::string& scheme) {
  std::ifstream in(path);
  if (!in) {
    return absl::NotFoundError(
        absl::StrCat("credit rules CSV ", path, ": cannot read: ", std::strerror(errno)));
  }
  std::vector<CreditRule> rules;
  std::set<std::pair<std::string, std::string>> seen;
  std::string line;
  int line_no = 0;
  while (std::getline(in, line)) {
    ++line_no;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    absl::string_view trimmed = absl::StripAsciiWhitespace(line);
    if (trimmed.empty() || trimmed.front() == '#') continue;
    const std::string where = absl::StrCat(path, ":", line_no);
    auto fields = SplitCsvLine(SVs(trimmed));
    if (!fields.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": ", fields.status().message(), " in \"", trimmed, "\""));
    }
    if (fields->size() != 5) {
      return absl::InvalidArgumentError(absl::StrCat(
          where, ": ", fields->size(),
          " columns, want 5 (scheme,behaviour,grams_co2_per_action,cap,source) in \"", trimmed, "\""));
    }
    std::vector<std::string>& f = *fields;
    for (std::string& s : f) s = std::string(absl::StripAsciiWhitespace(s));
    if (f[0] == "scheme" && f[1] == "behaviour") continue;  // header line
    if (!scheme.empty() && f[0] != scheme) continue;
    CreditRule r;
    r.scheme = f[0];
    r.behaviour = f[1];
    if (r.scheme.empty() || r.behaviour.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": empty scheme or behaviour in \"", trimmed, "\""));
    }
    r.id = absl::StrCat(r.scheme, ":", r.behaviour);
    if (!absl::SimpleAtod(f[2], &r.grams_per_unit) || !std::isfinite(r.grams_per_unit) ||
        r.grams_per_unit <= 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          where, ": grams_co2_per_action \"", f[2], "\" is not a positive number"));
    }
    r.unit = DefaultUnitForBehaviour(r.behaviour);
    if (absl::Status st = ParseCreditCap(f[3], &r); !st.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": ", st.message()));
    }
    r.source = f[4];
    if (!seen.insert({r.scheme, r.behaviour}).second) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": behaviour ", r.behaviour,
                                                     " of scheme ", r.scheme, " given twice"));
    }
    rules.push_back(std::move(r));
  }
  if (in.bad()) return absl::InternalError(absl::StrCat("credit rules CSV ", path, ": read error"));
  if (rules.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "credit rules CSV ", path, ": no rule",
        scheme.empty() ? std::string() : absl::StrCat(" of scheme \"", scheme, "\"")));
  }
  return rules;
}

// ---------------------------------------------------------------------------
// Events -> behaviours.

namespace {

std::string_view TypeFromUrl(std::string_view url) {
  size_t slash = url.rfind('/');
  return slash == std::string_view::npos ? url : url.substr(slash + 1);
}

absl::Status EventError(const event::v1::Event& e, std::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat("event ", e.id(), ": ", AVs(what)));
}

absl::StatusOr<absl::Time> EventTime(const event::v1::Event& e) {
  if (!e.has_time()) return EventError(e, "no time");
  return TimestampFromProto(e.time(), "event.time");
}

// First set timestamp of `candidates`, else the event's time.
absl::StatusOr<absl::Time> FirstTime(const event::v1::Event& e,
                                     std::initializer_list<std::pair<const google::protobuf::Timestamp*, const char*>> candidates) {
  for (const auto& [ts, field] : candidates) {
    if (ts != nullptr) {
      auto t = TimestampFromProto(*ts, field);
      if (!t.ok()) return EventError(e, SVs(t.status().message()));
      return *t;
    }
  }
  return EventTime(e);
}

std::string FirstNonEmpty(std::initializer_list<std::string_view> v) {
  for (std::string_view s : v) {
    if (!s.empty()) return std::string(s);
  }
  return "";
}

absl::StatusOr<std::optional<Behaviour>> FromTrip(const event::v1::Event& e,
                                                  const mobility::v1::Trip& trip) {
  std::string name;
  switch (trip.mode()) {
    case mobility::v1::TRAVEL_MODE_WALK: name = "walking_day"; break;
    case mobility::v1::TRAVEL_MODE_BICYCLE: name = "cycling_km"; break;
    default: return std::optional<Behaviour>();
  }
  if (trip.trip_id().empty()) return EventError(e, "Trip.trip_id is empty");
  if (!std::isfinite(trip.distance_m()) || trip.distance_m() < 0) {
    return EventError(e, absl::StrCat("Trip.distance_m ", trip.distance_m(),
                                      " is not a finite distance >= 0"));
  }
  if (trip.distance_m() == 0) return std::optional<Behaviour>();
  Behaviour b;
  b.behaviour = std::move(name);
  b.quantity = trip.distance_m() / 1000.0;
  b.unit = "km";
  b.txn_id = trip.trip_id();
  b.dedup_key = absl::StrCat(trip.provider(), "/", trip.trip_id());
  CITYOS_ASSIGN_OR_RETURN(
      b.time, FirstTime(e, {{trip.has_end_time() ? &trip.end_time() : nullptr, "Trip.end_time"},
                            {trip.has_start_time() ? &trip.start_time() : nullptr, "Trip.start_time"}}));
  b.region = FirstNonEmpty({trip.origin().region(), trip.destination().region(), e.region()});
  return std::optional<Behaviour>(std::move(b));
}

absl::StatusOr<std::optional<Behaviour>> FromRide(const event::v1::Event& e,
                                                  const mobility::v1::TransitRide& ride) {
  std::string name;
  switch (ride.mode()) {
    case mobility::v1::TRAVEL_MODE_METRO: name = "metro_ride"; break;
    case mobility::v1::TRAVEL_MODE_BUS: name = "bus_ride"; break;
    case mobility::v1::TRAVEL_MODE_TRAM: name = "tram_ride"; break;
    default: return std::optional<Behaviour>();
  }
  if (ride.ride_id().empty()) return EventError(e, "TransitRide.ride_id is empty");
  Behaviour b;
  b.behaviour = std::move(name);
  b.quantity = 1;
  b.unit = "ride";
  b.txn_id = ride.ride_id();
  b.dedup_key = absl::StrCat(ride.operator_org(), "/", ride.ride_id());
  CITYOS_ASSIGN_OR_RETURN(
      b.time, FirstTime(e, {{ride.has_boarding_time() ? &ride.boarding_time() : nullptr,
                             "TransitRide.boarding_time"}}));
  b.region = FirstNonEmpty({ride.boarding_stop().region(), ride.alighting_stop().region(), e.region()});
  b.amount_minor = ride.fare().amount_minor();
  b.currency = ride.fare().currency_code();
  return std::optional<Behaviour>(std::move(b));
}

absl::StatusOr<std::optional<Behaviour>> FromPayment(const event::v1::Event& e,
                                                     const payments::v1::GreenPayment& p) {
  Behaviour b;
  switch (p.green_kind()) {
    case payments::v1::GREEN_KIND_OFFLINE_PAYMENT: b.behaviour = "offline_payment"; break;
    case payments::v1::GREEN_KIND_UTILITY_BILL: b.behaviour = "utility_bill_payment"; break;
    case payments::v1::GREEN_KIND_E_TICKET: b.behaviour = "e_ticket"; break;
    case payments::v1::GREEN_KIND_E_INVOICE: b.behaviour = "e_invoice"; break;
    case payments::v1::GREEN_KIND_ONLINE_REGISTRATION:
      b.behaviour = "hospital_registration_online";
      break;
    default: return std::optional<Behaviour>();
  }
  if (p.payment_id().empty()) return EventError(e, "GreenPayment.payment_id is empty");
  if (p.green_kind() == payments::v1::GREEN_KIND_UTILITY_BILL) {
    if (p.utility_account_ref().empty()) {
      return EventError(e, "GreenPayment.utility_account_ref is empty for a UTILITY_BILL");
    }
    b.account_ref = p.utility_account_ref();
  }
  b.quantity = 1;
  b.unit = DefaultUnitForBehaviour(b.behaviour);
  b.txn_id = p.payment_id();
  b.dedup_key = p.green_kind() == payments::v1::GREEN_KIND_E_INVOICE
                    ? absl::StrCat("payment/", p.payment_id())
                    : absl::StrCat(p.provider(), "/", p.payment_id());
  CITYOS_ASSIGN_OR_RETURN(
      b.time, FirstTime(e, {{p.has_time() ? &p.time() : nullptr, "GreenPayment.time"}}));
  b.region = e.region();
  b.amount_minor = p.amount().amount_minor();
  b.currency = p.amount().currency_code();
  return std::optional<Behaviour>(std::move(b));
}

absl::StatusOr<std::optional<Behaviour>> FromInvoice(const event::v1::Event& e,
                                                     const payments::v1::EInvoice& inv) {
  if (inv.invoice_id().empty()) return EventError(e, "EInvoice.invoice_id is empty");
  Behaviour b;
  b.behaviour = "e_invoice";
  b.quantity = 1;
  b.unit = "invoice";
  b.txn_id = inv.invoice_id();
  b.dedup_key = inv.payment_id().empty()
                    ? absl::StrCat("invoice/", inv.seller_tax_id(), "/", inv.invoice_id())
                    : absl::StrCat("payment/", inv.payment_id());
  CITYOS_ASSIGN_OR_RETURN(
      b.time, FirstTime(e, {{inv.has_issue_time() ? &inv.issue_time() : nullptr, "EInvoice.issue_time"}}));
  b.region = e.region();
  b.amount_minor = inv.total_amount().amount_minor();
  b.currency = inv.total_amount().currency_code();
  return std::optional<Behaviour>(std::move(b));
}

template <typename M>
absl::StatusOr<M> Unpack(const event::v1::Event& e) {
  M m;
  if (!e.proto_data().UnpackTo(&m)) {
    return EventError(e, absl::StrCat("payload is not a valid ", M::descriptor()->full_name()));
  }
  return m;
}

}  // namespace

absl::StatusOr<std::optional<Behaviour>> BehaviourFromEvent(const event::v1::Event& e) {
  static constexpr std::string_view kTypes[] = {
      "cityos.mobility.v1.Trip", "cityos.mobility.v1.TransitRide",
      "cityos.payments.v1.GreenPayment", "cityos.payments.v1.EInvoice"};
  if (!e.has_proto_data()) {
    for (std::string_view t : kTypes) {
      if (e.type() == t) return EventError(e, absl::StrCat("type ", e.type(), " without proto_data"));
    }
    return std::optional<Behaviour>();
  }
  const std::string_view type = TypeFromUrl(e.proto_data().type_url());
  if (type == kTypes[0]) {
    CITYOS_ASSIGN_OR_RETURN(auto m, Unpack<mobility::v1::Trip>(e));
    return FromTrip(e, m);
  }
  if (type == kTypes[1]) {
    CITYOS_ASSIGN_OR_RETURN(auto m, Unpack<mobility::v1::TransitRide>(e));
    return FromRide(e, m);
  }
  if (type == kTypes[2]) {
    CITYOS_ASSIGN_OR_RETURN(auto m, Unpack<payments::v1::GreenPayment>(e));
    return FromPayment(e, m);
  }
  if (type == kTypes[3]) {
    CITYOS_ASSIGN_OR_RETURN(auto m, Unpack<payments::v1::EInvoice>(e));
    return FromInvoice(e, m);
  }
  return std::optional<Behaviour>();
}

// ---------------------------------------------------------------------------
// The ledger.

namespace {

constexpr const char* kCreditColumns =
    "credit_id, account_id, scheme, behaviour, quantity, quantity_unit, credited_g, capped,"
    " rule_id, source_txn_id, source_event_id, time_ns, consent_id, seq";

v1::GreenCredit ReadCredit(SqliteStmt& s) {
  v1::GreenCredit c;
  c.set_credit_id(s.ColText(0));
  c.set_account_id(s.ColText(1));
  c.set_scheme(s.ColText(2));
  c.set_behaviour(s.ColText(3));
  c.set_quantity(sqlite3_column_double(s.get(), 4));
  c.set_quantity_unit(s.ColText(5));
  c.set_credited_g(sqlite3_column_double(s.get(), 6));
  c.set_capped(s.ColInt(7) != 0);
  c.set_rule_id(s.ColText(8));
  c.set_source_transaction_id(s.ColText(9));
  c.set_source_event_id(s.ColText(10));
  TimestampToProto(absl::FromUnixNanos(s.ColInt(11)), c.mutable_time());
  c.set_consent_id(s.ColText(12));
  return c;
}

// Sums over one account's credits of one behaviour in a period.
struct PeriodStats {
  int64_t earning = 0;    // credits with grams > 0
  double grams = 0;       // grams credited
  double quantity = 0;    // quantity of every credit (DAY rules)
};

}  // namespace

class CreditLedger::Impl {
 public:
  Impl(sqlite3* db, absl::TimeZone tz, Clock* clock, std::string path)
      : db_(db), tz_(tz), clock_(clock), path_(std::move(path)) {}
  ~Impl() { sqlite3_close(db_); }

  absl::StatusOr<std::optional<v1::GreenCredit>> Credit(const CreditRule& rule,
                                                        const std::string& account_id,
                                                        const Behaviour& b,
                                                        const std::string& consent_id,
                                                        const std::string& event_id) {
    absl::MutexLock lock(&mu_);
    CITYOS_RETURN_IF_ERROR(Exec("BEGIN IMMEDIATE"));
    auto r = CreditLocked(rule, account_id, b, consent_id, event_id);
    if (!r.ok() || !r->has_value()) {
      (void)Exec("ROLLBACK");
      return r;
    }
    CITYOS_RETURN_IF_ERROR(Exec("COMMIT"));
    return r;
  }

  absl::StatusOr<v1::ListGreenCreditsResponse> List(const v1::ListGreenCreditsRequest& r) {
    if (r.account_id().empty()) return absl::InvalidArgumentError("account_id is required");
    if (r.page_size() < 0 || r.page_size() > kMaxPageSize) {
      return absl::InvalidArgumentError(
          absl::StrCat("page_size ", r.page_size(), " is not in [0, ", kMaxPageSize, "]"));
    }
    const int page_size = r.page_size() == 0 ? kDefaultPageSize : r.page_size();
    int64_t before_time = INT64_MAX, before_seq = INT64_MAX;
    if (!r.page_token().empty()) {
      const std::string& t = r.page_token();
      std::vector<std::string> parts = absl::StrSplit(t, ':');
      if (parts.size() != 3 || parts[0] + ":" != kTokenPrefix ||
          !absl::SimpleAtoi(parts[1], &before_time) || !absl::SimpleAtoi(parts[2], &before_seq) ||
          before_seq <= 0) {
        return absl::InvalidArgumentError(absl::StrCat("bad page_token \"", t, "\""));
      }
    }
    int64_t from_ns = INT64_MIN, to_ns = 0;
    if (r.range().has_start()) {
      CITYOS_ASSIGN_OR_RETURN(absl::Time t, TimestampFromProto(r.range().start(), "range.start"));
      from_ns = absl::ToUnixNanos(t);
    }
    if (r.range().has_end()) {
      CITYOS_ASSIGN_OR_RETURN(absl::Time t, TimestampFromProto(r.range().end(), "range.end"));
      to_ns = absl::ToUnixNanos(t);
    } else {
      to_ns = absl::ToUnixNanos(clock_->Now());
    }
    v1::ListGreenCreditsResponse out;
    absl::MutexLock lock(&mu_);
    CITYOS_RETURN_IF_ERROR(Exec("BEGIN"));  // page and total from one snapshot
    absl::Status st = [&]() -> absl::Status {
      {
        SqliteStmt s(db_,
                     "SELECT COALESCE(SUM(credited_g), 0) FROM credits"
                     " WHERE account_id = ? AND time_ns >= ? AND time_ns < ?");
        if (!s.ok()) return SqlError("prepare total");
        s.Bind(1, r.account_id()).Bind(2, from_ns).Bind(3, to_ns);
        if (s.Step() != SQLITE_ROW) return SqlError("total");
        out.set_total_g(sqlite3_column_double(s.get(), 0));
      }
      const std::string sql = absl::StrCat(
          "SELECT ", kCreditColumns,
          " FROM credits WHERE account_id = ? AND time_ns >= ? AND time_ns < ?"
          " AND (time_ns < ? OR (time_ns = ? AND seq < ?))"
          " ORDER BY time_ns DESC, seq DESC LIMIT ?");
      SqliteStmt s(db_, sql.c_str());
      if (!s.ok()) return SqlError("prepare list");
      s.Bind(1, r.account_id()).Bind(2, from_ns).Bind(3, to_ns);
      s.Bind(4, before_time).Bind(5, before_time).Bind(6, before_seq);
      s.Bind(7, int64_t{page_size} + 1);
      int rc;
      int64_t last_time = 0, last_seq = 0;
      while ((rc = s.Step()) == SQLITE_ROW) {
        if (out.credits_size() == page_size) {
          out.set_next_page_token(absl::StrCat(AVs(kTokenPrefix), last_time, ":", last_seq));
          break;
        }
        *out.add_credits() = ReadCredit(s);
        last_time = s.ColInt(11);
        last_seq = s.ColInt(13);
      }
      if (rc != SQLITE_ROW && rc != SQLITE_DONE) return SqlError("list");
      return absl::OkStatus();
    }();
    (void)Exec("COMMIT");
    CITYOS_RETURN_IF_ERROR(st);
    return out;
  }

  // Grams per region in [from, to).
  std::map<std::string, double> GramsByRegion(absl::Time from, absl::Time to) {
    std::map<std::string, double> out;
    absl::MutexLock lock(&mu_);
    SqliteStmt s(db_,
                 "SELECT region, SUM(credited_g) FROM credits"
                 " WHERE time_ns >= ? AND time_ns < ? AND region != '' GROUP BY region");
    if (!s.ok()) {
      LogWarn("carbon", "credit ledger: region totals", {{"error", sqlite3_errmsg(db_)}});
      return out;
    }
    s.Bind(1, ClampNanos(from)).Bind(2, ClampNanos(to));
    int rc;
    while ((rc = s.Step()) == SQLITE_ROW) out[s.ColText(0)] = sqlite3_column_double(s.get(), 1);
    if (rc != SQLITE_DONE) {
      LogWarn("carbon", "credit ledger: region totals", {{"error", sqlite3_errmsg(db_)}});
    }
    return out;
  }

  double AccountTotalG(std::string_view account_id, absl::Time from, absl::Time to) {
    absl::MutexLock lock(&mu_);
    SqliteStmt s(db_,
                 "SELECT COALESCE(SUM(credited_g), 0) FROM credits"
                 " WHERE account_id = ? AND time_ns >= ? AND time_ns < ?");
    if (!s.ok()) return 0;
    s.Bind(1, account_id).Bind(2, ClampNanos(from)).Bind(3, ClampNanos(to));
    if (s.Step() != SQLITE_ROW) {
      LogWarn("carbon", "credit ledger: account total", {{"error", sqlite3_errmsg(db_)}});
      return 0;
    }
    return sqlite3_column_double(s.get(), 0);
  }

 private:
  static int64_t ClampNanos(absl::Time t) {
    if (t == absl::InfinitePast()) return INT64_MIN;
    if (t == absl::InfiniteFuture()) return INT64_MAX;
    return absl::ToUnixNanos(t);
  }

  absl::Status SqlError(std::string_view what) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return absl::InternalError(absl::StrCat(path_, ": ", AVs(what), ": ", sqlite3_errmsg(db_)));
  }
  absl::Status Exec(const char* sql) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return infobank::ExecSql(db_, sql, [&] { return absl::StrCat(path_, ": ", sql); });
  }

  absl::StatusOr<PeriodStats> Stats(const std::string& account_id, const std::string& behaviour,
                                    const Period& p) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    SqliteStmt s(db_,
                 "SELECT COALESCE(SUM(credited_g > 0), 0), COALESCE(SUM(credited_g), 0),"
                 " COALESCE(SUM(quantity), 0) FROM credits"
                 " WHERE account_id = ? AND behaviour = ? AND time_ns >= ? AND time_ns < ?");
    if (!s.ok()) return SqlError("prepare period stats");
    s.Bind(1, account_id).Bind(2, behaviour);
    s.Bind(3, absl::ToUnixNanos(p.start)).Bind(4, absl::ToUnixNanos(p.end));
    if (s.Step() != SQLITE_ROW) return SqlError("period stats");
    PeriodStats out;
    out.earning = s.ColInt(0);
    out.grams = sqlite3_column_double(s.get(), 1);
    out.quantity = sqlite3_column_double(s.get(), 2);
    return out;
  }

  absl::StatusOr<std::optional<v1::GreenCredit>> CreditLocked(const CreditRule& rule,
                                                              const std::string& account_id,
                                                              const Behaviour& b,
                                                              const std::string& consent_id,
                                                              const std::string& event_id)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    const std::string& dedup = b.dedup_key.empty() ? b.txn_id : b.dedup_key;
    {
      SqliteStmt s(db_, "SELECT account_id FROM credits WHERE behaviour = ? AND dedup_key = ?");
      if (!s.ok()) return SqlError("prepare dedup lookup");
      s.Bind(1, b.behaviour).Bind(2, dedup);
      int rc = s.Step();
      if (rc == SQLITE_ROW) {
        if (s.ColText(0) != account_id) {
          return absl::FailedPreconditionError(
              absl::StrCat(b.behaviour, " transaction ", b.txn_id, " (", dedup,
                           ") was already credited to another account"));
        }
        return std::optional<v1::GreenCredit>();
      }
      if (rc != SQLITE_DONE) return SqlError("dedup lookup");
    }
    const Period day = PeriodOf(b.time, v1::GRANULARITY_DAY, tz_);
    const Period month = PeriodOf(b.time, v1::GRANULARITY_MONTH, tz_);
    CITYOS_ASSIGN_OR_RETURN(PeriodStats d, Stats(account_id, b.behaviour, day));
    CITYOS_ASSIGN_OR_RETURN(PeriodStats m, Stats(account_id, b.behaviour, month));

    double grams = 0;
    bool capped = false;
    if (rule.unit == "day") {
      if (d.earning > 0) {
        capped = true;  // the day's credit is already earned
      } else if (d.quantity + b.quantity + kEpsilonG >= rule.day_threshold_km) {
        grams = rule.grams_per_unit;
      }
    } else {
      grams = rule.grams_per_unit * b.quantity;
    }
    auto cap_to_zero = [&] {
      grams = 0;
      capped = true;
    };
    if (rule.min_amount_minor > 0 &&
        (b.currency != rule.min_amount_currency || b.amount_minor < rule.min_amount_minor)) {
      cap_to_zero();
    }
    if (grams > 0 && rule.per_account_ref_per_month) {
      SqliteStmt s(db_,
                   "SELECT COUNT(*) FROM credits WHERE account_id = ? AND behaviour = ?"
                   " AND account_ref = ? AND time_ns >= ? AND time_ns < ? AND credited_g > 0");
      if (!s.ok()) return SqlError("prepare account ref count");
      s.Bind(1, account_id).Bind(2, b.behaviour).Bind(3, b.account_ref);
      s.Bind(4, absl::ToUnixNanos(month.start)).Bind(5, absl::ToUnixNanos(month.end));
      if (s.Step() != SQLITE_ROW) return SqlError("account ref count");
      if (s.ColInt(0) > 0) cap_to_zero();
    }
    if (grams > 0 && rule.max_per_day > 0 && d.earning >= rule.max_per_day) cap_to_zero();
    if (grams > 0 && rule.max_per_month > 0 && m.earning >= rule.max_per_month) cap_to_zero();
    auto cap_grams = [&](double cap, double used) {
      if (cap <= 0 || grams <= 0) return;
      const double room = cap - used;
      if (room <= kEpsilonG) {
        cap_to_zero();
      } else if (grams > room) {
        grams = room;
        capped = true;
      }
    };
    cap_grams(rule.max_grams_per_day, d.grams);
    cap_grams(rule.max_grams_per_month, m.grams);

    const absl::Time now = clock_->Now();
    v1::GreenCredit c;
    c.set_credit_id(UuidToString(NewUuidV7At(now)));
    c.set_account_id(account_id);
    c.set_scheme(rule.scheme);
    c.set_behaviour(b.behaviour);
    c.set_quantity(b.quantity);
    c.set_quantity_unit(b.unit);
    c.set_credited_g(grams);
    c.set_capped(capped);
    c.set_rule_id(rule.id);
    c.set_source_transaction_id(b.txn_id);
    c.set_source_event_id(event_id);
    TimestampToProto(b.time, c.mutable_time());
    c.set_consent_id(consent_id);

    SqliteStmt s(db_,
                 "INSERT INTO credits(credit_id, account_id, scheme, behaviour, quantity,"
                 " quantity_unit, credited_g, capped, rule_id, source_txn_id, dedup_key,"
                 " source_event_id, time_ns, consent_id, region, account_ref, amount_minor,"
                 " currency, recorded_ns) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)");
    if (!s.ok()) return SqlError("prepare insert");
    s.Bind(1, c.credit_id()).Bind(2, account_id).Bind(3, rule.scheme).Bind(4, b.behaviour);
    sqlite3_bind_double(s.get(), 5, b.quantity);
    s.Bind(6, b.unit);
    sqlite3_bind_double(s.get(), 7, grams);
    s.Bind(8, int64_t{capped ? 1 : 0}).Bind(9, rule.id).Bind(10, b.txn_id).Bind(11, dedup);
    s.Bind(12, event_id).Bind(13, absl::ToUnixNanos(b.time)).Bind(14, consent_id);
    s.Bind(15, b.region).Bind(16, b.account_ref).Bind(17, b.amount_minor).Bind(18, b.currency);
    s.Bind(19, absl::ToUnixNanos(now));
    if (s.Step() != SQLITE_DONE) return SqlError("insert credit");
    return std::optional<v1::GreenCredit>(std::move(c));
  }

  absl::Mutex mu_;
  sqlite3* const db_ ABSL_PT_GUARDED_BY(mu_);
  const absl::TimeZone tz_;
  Clock* const clock_;
  const std::string path_;
};

CreditLedger::CreditLedger(std::unique_ptr<Impl> impl, std::vector<CreditRule> rules)
    : impl_(std::move(impl)), rules_(std::move(rules)) {}
CreditLedger::~CreditLedger() = default;

absl::StatusOr<std::unique_ptr<CreditLedger>> CreditLedger::Open(const std::string& db_path,
                                                                 std::vector<CreditRule> rules,
                                                                 absl::TimeZone tz, Clock* clock) {
  if (db_path.empty()) return absl::InvalidArgumentError("credit ledger needs a database path");
  if (clock == nullptr) clock = Clock::Real();
  std::set<std::string> behaviours;
  for (size_t i = 0; i < rules.size(); ++i) {
    CreditRule& r = rules[i];
    const std::string name = absl::StrCat("credit rule ", i, " (", r.id.empty() ? r.behaviour : r.id, ")");
    if (r.behaviour.empty()) return absl::InvalidArgumentError(absl::StrCat(name, ": behaviour is empty"));
    if (r.id.empty()) r.id = absl::StrCat(r.scheme, ":", r.behaviour);
    if (r.unit.empty()) r.unit = DefaultUnitForBehaviour(r.behaviour);
    if (!std::isfinite(r.grams_per_unit) || r.grams_per_unit <= 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(name, ": grams_per_unit ", r.grams_per_unit, " must be > 0"));
    }
    if (r.unit == "day" && !(std::isfinite(r.day_threshold_km) && r.day_threshold_km > 0)) {
      return absl::InvalidArgumentError(
          absl::StrCat(name, ": day_threshold_km ", r.day_threshold_km, " must be > 0"));
    }
    if (r.max_per_day < 0 || r.max_per_month < 0 || r.min_amount_minor < 0 ||
        !(r.max_grams_per_day >= 0) || !(r.max_grams_per_month >= 0)) {
      return absl::InvalidArgumentError(absl::StrCat(name, ": a cap is negative"));
    }
    if (!behaviours.insert(r.behaviour).second) {
      return absl::InvalidArgumentError(
          absl::StrCat(name, ": a second rule for behaviour ", r.behaviour));
    }
  }
  // Who walked and paid where is personal data: create the file 0600 before
  // SQLite does (it would use the umask); WAL and shm files follow it.
  CITYOS_ASSIGN_OR_RETURN(sqlite3* raw, infobank::OpenPrivateSqlite(db_path));
  auto impl = std::make_unique<Impl>(raw, tz, clock, db_path);
  sqlite3_busy_timeout(raw, 10000);
  // UNIQUE(behaviour, dedup_key) is what makes a transaction credit at most once.
  const char* schema =
      "PRAGMA journal_mode = WAL;"
      "CREATE TABLE IF NOT EXISTS credits("
      "  seq INTEGER PRIMARY KEY AUTOINCREMENT,"
      "  credit_id TEXT NOT NULL UNIQUE,"
      "  account_id TEXT NOT NULL, scheme TEXT NOT NULL, behaviour TEXT NOT NULL,"
      "  quantity REAL NOT NULL, quantity_unit TEXT NOT NULL,"
      "  credited_g REAL NOT NULL, capped INTEGER NOT NULL, rule_id TEXT NOT NULL,"
      "  source_txn_id TEXT NOT NULL, dedup_key TEXT NOT NULL, source_event_id TEXT NOT NULL,"
      "  time_ns INTEGER NOT NULL, consent_id TEXT NOT NULL, region TEXT NOT NULL,"
      "  account_ref TEXT NOT NULL, amount_minor INTEGER NOT NULL, currency TEXT NOT NULL,"
      "  recorded_ns INTEGER NOT NULL,"
      "  UNIQUE(behaviour, dedup_key));"
      "CREATE INDEX IF NOT EXISTS credits_by_account ON credits(account_id, time_ns, seq);"
      "CREATE INDEX IF NOT EXISTS credits_by_behaviour ON credits(account_id, behaviour, time_ns);"
      "CREATE INDEX IF NOT EXISTS credits_by_time ON credits(time_ns);";
  CITYOS_RETURN_IF_ERROR(infobank::ExecSql(
      raw, schema, [&] { return absl::StrCat("cannot initialise ", db_path); }));
  return std::unique_ptr<CreditLedger>(new CreditLedger(std::move(impl), std::move(rules)));
}

bool CreditLedger::HasRule(std::string_view behaviour) const {
  for (const CreditRule& r : rules_) {
    if (r.behaviour == behaviour) return true;
  }
  return false;
}

absl::StatusOr<std::optional<v1::GreenCredit>> CreditLedger::Credit(const std::string& account_id,
                                                                    const Behaviour& b,
                                                                    const std::string& consent_id,
                                                                    const std::string& event_id) {
  if (consent_id.empty()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "consent_id is empty: ", b.behaviour, " transaction ", b.txn_id, " of ", account_id,
        " needs the person's consent for carbon_accounting"));
  }
  if (account_id.empty()) return absl::InvalidArgumentError("account_id is empty");
  if (b.behaviour.empty()) return absl::InvalidArgumentError("behaviour is empty");
  if (b.txn_id.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(b.behaviour, ": txn_id is empty"));
  }
  if (!std::isfinite(b.quantity) || b.quantity < 0) {
    return absl::InvalidArgumentError(absl::StrCat(b.behaviour, " transaction ", b.txn_id,
                                                   ": quantity ", b.quantity, " is not >= 0"));
  }
  if (b.time == absl::InfinitePast() || b.time == absl::InfiniteFuture()) {
    return absl::InvalidArgumentError(
        absl::StrCat(b.behaviour, " transaction ", b.txn_id, ": time is not set"));
  }
  const CreditRule* rule = nullptr;
  for (const CreditRule& r : rules_) {
    if (r.behaviour == b.behaviour) rule = &r;
  }
  if (rule == nullptr) return std::optional<v1::GreenCredit>();
  const bool distance_rule = rule->unit == "km" || rule->unit == "day";
  if (distance_rule != (b.unit == "km")) {
    return absl::InvalidArgumentError(absl::StrCat(
        b.behaviour, " transaction ", b.txn_id, ": unit \"", b.unit, "\" does not fit rule ",
        rule->id, " (unit ", rule->unit, distance_rule ? ", needs km)" : ", needs an action unit)"));
  }
  if (rule->per_account_ref_per_month && b.account_ref.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        b.behaviour, " transaction ", b.txn_id, ": account_ref is empty (rule ", rule->id,
        " caps per account number per month)"));
  }
  return impl_->Credit(*rule, account_id, b, consent_id, event_id);
}

absl::StatusOr<v1::ListGreenCreditsResponse> CreditLedger::List(
    const v1::ListGreenCreditsRequest& r) const {
  return impl_->List(r);
}

double CreditLedger::RegionTotalG(const RegionTree& tree, std::string_view region,
                                  absl::Time from, absl::Time to) const {
  double total = 0;
  for (const auto& [code, grams] : impl_->GramsByRegion(from, to)) {
    if (tree.Covers(region, code)) total += grams;
  }
  return total;
}

double CreditLedger::AccountTotalG(std::string_view account_id, absl::Time from,
                                   absl::Time to) const {
  return impl_->AccountTotalG(account_id, from, to);
}

}  // namespace cityos::carbon
