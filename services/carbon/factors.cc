// The emission factor registry: SQLite persistence, CSV seeding, validation
// and selection (factors.h).
#include "factors.h"

#include <sqlite3.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <sstream>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/strip.h"
#include "cityos/logging.h"
#include "cityos/proto_time.h"
#include "cityos/status.h"
#include "sqlite_util.h"
#include "units.h"

namespace cityos::carbon {

using infobank::SqliteStmt;

struct FactorRegistry::Entry {
  v1::EmissionFactor factor;
  int64_t seq = 0;
  absl::Time valid_start = absl::InfinitePast();
  absl::Time valid_end = absl::InfiniteFuture();
};

namespace {

// Debian's abseil has its own string_view (docs/style.md).
inline absl::string_view AV(std::string_view s) { return {s.data(), s.size()}; }

std::string_view Strip(std::string_view s) {
  while (!s.empty() && absl::ascii_isspace(static_cast<unsigned char>(s.front()))) s.remove_prefix(1);
  while (!s.empty() && absl::ascii_isspace(static_cast<unsigned char>(s.back()))) s.remove_suffix(1);
  return s;
}

constexpr int kKindCount = 5;  // FactorKind values 0..4

std::string TimeText(absl::Time t) {
  if (t == absl::InfinitePast()) return "-inf";
  if (t == absl::InfiniteFuture()) return "+inf";
  return absl::FormatTime("%Y-%m-%dT%H:%M:%SZ", t, absl::UTCTimeZone());
}

bool ValidRegion(std::string_view r) {
  if (r.empty() || r.size() > 64) return false;
  for (char c : r) {
    if (!absl::ascii_isalnum(static_cast<unsigned char>(c)) && c != '-') return false;
  }
  return true;
}

// Checks `f` and fills its energy kind; `valid_start` / `valid_end` receive
// its validity. Errors name the field.
absl::Status Normalize(v1::EmissionFactor& f, absl::Time* valid_start, absl::Time* valid_end) {
  if (f.kind() <= v1::FACTOR_KIND_UNSPECIFIED || f.kind() >= kKindCount) {
    return absl::InvalidArgumentError(absl::StrCat("factor kind ", static_cast<int>(f.kind()),
                                                   " is not one of GRID, FUEL, SUPPLIER, PROCESS"));
  }
  if (f.key().empty()) return absl::InvalidArgumentError("factor key is empty");
  if (!ValidRegion(f.region())) {
    return absl::InvalidArgumentError(
        absl::StrCat("factor region '", f.region(), "' is not a region code ([A-Za-z0-9-], 1-64)"));
  }
  if (f.vintage().empty()) return absl::InvalidArgumentError("factor vintage is empty");
  if (!std::isfinite(f.value()) || f.value() <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("factor value ", f.value(), " is not positive"));
  }
  CITYOS_RETURN_IF_ERROR(ValidateFactorUnit(f.unit()));
  if (Strip(f.source()).empty()) {
    return absl::InvalidArgumentError("factor source is empty: every factor must cite its source");
  }
  if (f.kind() == v1::FACTOR_KIND_SUPPLIER && f.tariff_id().empty()) {
    return absl::InvalidArgumentError("SUPPLIER factor has no tariff_id");
  }
  if (f.kind() != v1::FACTOR_KIND_SUPPLIER && !f.tariff_id().empty()) {
    return absl::InvalidArgumentError(absl::StrCat("tariff_id '", f.tariff_id(), "' on a ",
                                                   v1::FactorKind_Name(f.kind()), " factor (SUPPLIER only)"));
  }
  if (f.kind() == v1::FACTOR_KIND_PROCESS) {
    if (f.energy_kind() != v1::ENERGY_KIND_UNSPECIFIED) {
      return absl::InvalidArgumentError("PROCESS factor must not name an energy kind");
    }
  } else {
    std::optional<v1::EnergyKind> kind = EnergyKindForKey(f.key());
    if (!kind.has_value()) {
      return absl::InvalidArgumentError(absl::StrCat("factor key '", f.key(), "' of a ",
                                                     v1::FactorKind_Name(f.kind()),
                                                     " factor is not an energy factor key (electricity, "
                                                     "natural_gas, steam, diesel, gasoline, raw_coal, lpg, "
                                                     "fuel_oil, heat)"));
    }
    if (f.energy_kind() == v1::ENERGY_KIND_UNSPECIFIED) {
      f.set_energy_kind(*kind);
    } else if (f.energy_kind() != *kind) {
      return absl::InvalidArgumentError(absl::StrCat("energy kind ", v1::EnergyKind_Name(f.energy_kind()),
                                                     " does not match factor key '", f.key(), "'"));
    }
  }
  *valid_start = absl::InfinitePast();
  *valid_end = absl::InfiniteFuture();
  if (f.valid().has_start()) {
    CITYOS_ASSIGN_OR_RETURN(*valid_start, TimestampFromProto(f.valid().start(), "valid.start"));
  }
  if (f.valid().has_end()) {
    CITYOS_ASSIGN_OR_RETURN(*valid_end, TimestampFromProto(f.valid().end(), "valid.end"));
  }
  if (*valid_end <= *valid_start) {
    return absl::InvalidArgumentError(absl::StrCat("factor validity end ", TimeText(*valid_end),
                                                   " is not after its start ", TimeText(*valid_start)));
  }
  return absl::OkStatus();
}

bool SameIdentity(const v1::EmissionFactor& a, const v1::EmissionFactor& b) {
  return a.kind() == b.kind() && a.key() == b.key() && a.region() == b.region() && a.vintage() == b.vintage() &&
         a.tariff_id() == b.tariff_id();
}

// Validity start of a seeded vintage: YYYY -> YYYY-01-01, FYYYYY ->
// YYYY-04-01 (city time zone), anything else 1970-01-01T00:00Z.
absl::Time VintageStart(std::string_view vintage, const absl::TimeZone& tz) {
  auto digits = [](std::string_view s) {
    return s.size() == 4 && std::all_of(s.begin(), s.end(), [](char c) { return absl::ascii_isdigit(c); });
  };
  int year = 0;
  if (digits(vintage) && absl::SimpleAtoi(AV(vintage), &year)) {
    return absl::FromCivil(absl::CivilDay(year, 1, 1), tz);
  }
  if (vintage.size() == 6 && vintage.substr(0, 2) == "FY" && digits(vintage.substr(2)) &&
      absl::SimpleAtoi(AV(vintage.substr(2)), &year)) {
    return absl::FromCivil(absl::CivilDay(year, 4, 1), tz);
  }
  return absl::UnixEpoch();
}

absl::Status Exec(sqlite3* db, const char* sql) {
  char* err = nullptr;
  if (sqlite3_exec(db, sql, nullptr, nullptr, &err) != SQLITE_OK) {
    std::string msg = err != nullptr ? err : "unknown error";
    sqlite3_free(err);
    return absl::InternalError(absl::StrCat("factors.db: ", sql, ": ", msg));
  }
  return absl::OkStatus();
}

}  // namespace

std::string_view FactorKindName(v1::FactorKind kind) {
  switch (kind) {
    case v1::FACTOR_KIND_GRID:
      return "grid";
    case v1::FACTOR_KIND_FUEL:
      return "fuel";
    case v1::FACTOR_KIND_SUPPLIER:
      return "supplier";
    case v1::FACTOR_KIND_PROCESS:
      return "process";
    default:
      return "unspecified";
  }
}

absl::StatusOr<v1::FactorKind> ParseFactorKind(std::string_view name) {
  const std::string lower = absl::AsciiStrToLower(AV(name));
  for (v1::FactorKind k : {v1::FACTOR_KIND_GRID, v1::FACTOR_KIND_FUEL, v1::FACTOR_KIND_SUPPLIER,
                           v1::FACTOR_KIND_PROCESS}) {
    if (lower == FactorKindName(k)) return k;
  }
  v1::FactorKind k;
  if (v1::FactorKind_Parse(std::string(name), &k) && k != v1::FACTOR_KIND_UNSPECIFIED) return k;
  return absl::InvalidArgumentError(
      absl::StrCat("factor kind '", AV(name), "' is not one of grid, fuel, supplier, process"));
}

FactorRegistry::FactorRegistry(sqlite3* db, Clock* clock, absl::TimeZone tz)
    : db_(db), clock_(clock), tz_(tz) {}

FactorRegistry::~FactorRegistry() { sqlite3_close(db_); }

absl::StatusOr<std::unique_ptr<FactorRegistry>> FactorRegistry::Open(const std::string& db_path, Clock* clock,
                                                                       absl::TimeZone tz) {
  sqlite3* db = nullptr;
  const int rc = sqlite3_open_v2(db_path.c_str(), &db,
                                 SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_FULLMUTEX, nullptr);
  if (rc != SQLITE_OK) {
    std::string msg = db != nullptr ? sqlite3_errmsg(db) : sqlite3_errstr(rc);
    sqlite3_close(db);
    return absl::UnavailableError(absl::StrCat("cannot open factor registry ", db_path, ": ", msg));
  }
  std::unique_ptr<FactorRegistry> reg(new FactorRegistry(db, clock, tz));
  sqlite3_busy_timeout(db, 5000);
  CITYOS_RETURN_IF_ERROR(Exec(db, "PRAGMA journal_mode=WAL"));
  CITYOS_RETURN_IF_ERROR(Exec(db, "PRAGMA synchronous=NORMAL"));
  CITYOS_RETURN_IF_ERROR(Exec(db,
                              "CREATE TABLE IF NOT EXISTS factors ("
                              " factor_id TEXT PRIMARY KEY,"
                              " seq INTEGER NOT NULL UNIQUE,"
                              " kind INTEGER NOT NULL,"
                              " key TEXT NOT NULL,"
                              " region TEXT NOT NULL,"
                              " vintage TEXT NOT NULL,"
                              " tariff_id TEXT NOT NULL,"
                              " factor BLOB NOT NULL)"));
  {
    absl::MutexLock lock(&reg->mu_);
    CITYOS_RETURN_IF_ERROR(reg->Load());
  }
  return reg;
}

absl::Status FactorRegistry::Load() {
  mu_.AssertHeld();
  entries_.clear();
  by_id_.clear();
  for (auto& m : by_key_) m.clear();
  next_seq_ = 1;
  SqliteStmt stmt(db_, "SELECT seq, factor FROM factors ORDER BY seq", "factors.db load");
  CITYOS_RETURN_IF_ERROR(stmt.ForEachRow([&]() -> absl::Status {
    const int64_t seq = stmt.ColInt(0);
    v1::EmissionFactor f;
    if (!f.ParseFromString(stmt.ColBlob(1))) {
      return absl::DataLossError(absl::StrCat("factors.db: factor seq ", seq, " does not parse"));
    }
    IndexLocked(std::move(f), seq);
    next_seq_ = std::max(next_seq_, seq + 1);
    return absl::OkStatus();
  }));
  generation_.fetch_add(1, std::memory_order_acq_rel);
  return absl::OkStatus();
}

void FactorRegistry::IndexLocked(v1::EmissionFactor f, int64_t seq) {
  auto e = std::make_unique<Entry>();
  e->seq = seq;
  if (f.valid().has_start()) {
    absl::StatusOr<absl::Time> t = TimestampFromProto(f.valid().start(), "valid.start");
    if (t.ok()) e->valid_start = *t;
  }
  if (f.valid().has_end()) {
    absl::StatusOr<absl::Time> t = TimestampFromProto(f.valid().end(), "valid.end");
    if (t.ok()) e->valid_end = *t;
  }
  e->factor = std::move(f);
  Entry* raw = e.get();
  by_id_[raw->factor.factor_id()] = raw;
  const int kind = static_cast<int>(raw->factor.kind());
  if (kind > 0 && kind < kKindCount) by_key_[kind][raw->factor.key()].push_back(raw);
  entries_.push_back(std::move(e));
}

absl::Status FactorRegistry::CheckNew(const v1::EmissionFactor& f) const {
  const int kind = static_cast<int>(f.kind());
  auto it = by_key_[kind].find(f.key());
  if (it == by_key_[kind].end()) return absl::OkStatus();
  absl::Time start = absl::InfinitePast(), end = absl::InfiniteFuture();
  if (f.valid().has_start()) start = *TimestampFromProto(f.valid().start(), "valid.start");
  if (f.valid().has_end()) end = *TimestampFromProto(f.valid().end(), "valid.end");
  for (const Entry* e : it->second) {
    if (!SameIdentity(e->factor, f)) continue;
    if (e->valid_start < end && start < e->valid_end) {
      return absl::AlreadyExistsError(absl::StrCat(
          "factor ", e->factor.factor_id(), " already has kind ", AV(FactorKindName(f.kind())), ", key ", f.key(),
          ", region ", f.region(), ", vintage ", f.vintage(),
          f.tariff_id().empty() ? "" : absl::StrCat(", tariff ", f.tariff_id()), " with an overlapping validity [",
          TimeText(e->valid_start), ", ", TimeText(e->valid_end), ")"));
    }
  }
  return absl::OkStatus();
}

std::string FactorRegistry::NewIdLocked(const v1::EmissionFactor& f) const {
  std::string base = absl::StrCat(AV(FactorKindName(f.kind())), "/", f.key(), "/", f.region(), "/", f.vintage());
  if (!f.tariff_id().empty()) absl::StrAppend(&base, "/", f.tariff_id());
  if (!by_id_.contains(base)) return base;
  for (int n = 2;; ++n) {
    std::string id = absl::StrCat(base, "~", n);
    if (!by_id_.contains(id)) return id;
  }
}

absl::Status FactorRegistry::InsertLocked(v1::EmissionFactor& f) {
  const int64_t seq = next_seq_;
  SqliteStmt stmt(db_,
                  "INSERT INTO factors (factor_id, seq, kind, key, region, vintage, tariff_id, factor) "
                  "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                  "factors.db insert");
  CITYOS_RETURN_IF_ERROR(stmt.status());
  stmt.Bind(1, f.factor_id())
      .Bind(2, seq)
      .Bind(3, static_cast<int64_t>(f.kind()))
      .Bind(4, f.key())
      .Bind(5, f.region())
      .Bind(6, f.vintage())
      .Bind(7, f.tariff_id())
      .BindBlob(8, f.SerializeAsString());
  CITYOS_RETURN_IF_ERROR(stmt.Run());
  next_seq_ = seq + 1;
  IndexLocked(f, seq);
  return absl::OkStatus();
}

absl::StatusOr<v1::EmissionFactor> FactorRegistry::Add(v1::EmissionFactor factor, const std::string& added_by) {
  absl::Time start, end;
  CITYOS_RETURN_IF_ERROR(Normalize(factor, &start, &end));
  absl::MutexLock lock(&mu_);
  CITYOS_RETURN_IF_ERROR(CheckNew(factor));
  factor.set_factor_id(NewIdLocked(factor));
  factor.set_added_by(added_by);
  TimestampToProto(clock_->Now(), factor.mutable_add_time());
  CITYOS_RETURN_IF_ERROR(InsertLocked(factor));
  generation_.fetch_add(1, std::memory_order_acq_rel);
  LogInfo("carbon", "emission factor added", {{"factor", factor.factor_id()}, {"by", added_by}});
  return factor;
}

absl::StatusOr<int> FactorRegistry::SeedCsv(const std::string& csv_path, const std::string& added_by) {
  std::ifstream in(csv_path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read factor CSV ", csv_path));
  std::vector<v1::EmissionFactor> rows;
  std::string line;
  int line_no = 0;
  const absl::Time now = clock_->Now();
  while (std::getline(in, line)) {
    ++line_no;
    std::string_view text = line;
    if (line_no == 1 && text.substr(0, 3) == "\xEF\xBB\xBF") text.remove_prefix(3);  // UTF-8 BOM
    text = Strip(text);
    if (text.empty() || text.front() == '#') continue;
    // kind,key,region,vintage,value,unit,source: split at the first six
    // commas; the source keeps any further commas.
    std::vector<std::string_view> fields;
    size_t from = 0;
    for (int i = 0; i < 6; ++i) {
      const size_t comma = text.find(',', from);
      if (comma == std::string_view::npos) break;
      fields.push_back(Strip(text.substr(from, comma - from)));
      from = comma + 1;
    }
    if (fields.size() < 6) {
      return absl::InvalidArgumentError(absl::StrCat(csv_path, ":", line_no, ": want 7 fields "
                                                     "kind,key,region,vintage,value,unit,source, got ",
                                                     fields.size() + 1));
    }
    fields.push_back(Strip(text.substr(from)));
    if (rows.empty() && absl::AsciiStrToLower(AV(fields[0])) == "kind") continue;  // header line
    auto bad = [&](const absl::Status& s) {
      return absl::Status(s.code(), absl::StrCat(csv_path, ":", line_no, ": ", s.message()));
    };
    absl::StatusOr<v1::FactorKind> kind = ParseFactorKind(fields[0]);
    if (!kind.ok()) return bad(kind.status());
    double value = 0;
    if (!absl::SimpleAtod(AV(fields[4]), &value)) {
      return bad(absl::InvalidArgumentError(absl::StrCat("value '", AV(fields[4]), "' is not a number")));
    }
    v1::EmissionFactor f;
    f.set_kind(*kind);
    f.set_key(std::string(fields[1]));
    f.set_region(std::string(fields[2]));
    f.set_vintage(std::string(fields[3]));
    f.set_value(value);
    f.set_unit(std::string(fields[5]));
    f.set_source(std::string(fields[6]));
    TimestampToProto(VintageStart(f.vintage(), tz_), f.mutable_valid()->mutable_start());
    absl::Time start, end;
    if (absl::Status s = Normalize(f, &start, &end); !s.ok()) return bad(s);
    f.set_added_by(added_by);
    TimestampToProto(now, f.mutable_add_time());
    rows.push_back(std::move(f));
  }
  if (in.bad()) return absl::DataLossError(absl::StrCat("error reading factor CSV ", csv_path));

  absl::MutexLock lock(&mu_);
  CITYOS_RETURN_IF_ERROR(Exec(db_, "BEGIN IMMEDIATE"));
  int added = 0;
  absl::Status status;
  for (v1::EmissionFactor& f : rows) {
    bool present = false;
    auto it = by_key_[f.kind()].find(f.key());
    if (it != by_key_[f.kind()].end()) {
      for (const Entry* e : it->second) present = present || SameIdentity(e->factor, f);
    }
    if (present) continue;
    f.set_factor_id(NewIdLocked(f));
    status = InsertLocked(f);
    if (!status.ok()) break;
    ++added;
  }
  if (status.ok()) status = Exec(db_, "COMMIT");
  if (!status.ok()) {
    (void)Exec(db_, "ROLLBACK");
    // The index may hold rows the rollback removed: rebuild it from the file.
    absl::Status reload = Load();
    if (!reload.ok()) LogWarn("carbon", "factor index reload failed", {{"error", reload.ToString()}});
    return status;
  }
  if (added > 0) {
    generation_.fetch_add(1, std::memory_order_acq_rel);
    LogInfo("carbon", "emission factors seeded", {{"added", absl::StrCat(added)}, {"file", csv_path}});
  }
  return added;
}

absl::StatusOr<v1::EmissionFactor> FactorRegistry::Get(const std::string& factor_id) const {
  absl::ReaderMutexLock lock(&mu_);
  auto it = by_id_.find(factor_id);
  if (it == by_id_.end()) return absl::NotFoundError(absl::StrCat("no emission factor '", factor_id, "'"));
  return it->second->factor;
}

size_t FactorRegistry::size() const {
  absl::ReaderMutexLock lock(&mu_);
  return entries_.size();
}

std::vector<v1::EmissionFactor> FactorRegistry::List(const v1::ListEmissionFactorsRequest& filter) const {
  absl::Time at = absl::InfinitePast();
  bool by_time = false;
  if (filter.has_valid_at()) {
    absl::StatusOr<absl::Time> t = TimestampFromProto(filter.valid_at(), "valid_at");
    if (t.ok()) {
      at = *t;
      by_time = true;
    }
  }
  std::vector<const Entry*> hits;
  {
    absl::ReaderMutexLock lock(&mu_);
    for (const auto& e : entries_) {
      const v1::EmissionFactor& f = e->factor;
      if (filter.kind() != v1::FACTOR_KIND_UNSPECIFIED && f.kind() != filter.kind()) continue;
      if (!filter.key().empty() && f.key() != filter.key()) continue;
      if (!filter.region().empty() && f.region() != filter.region()) continue;
      if (by_time && !(e->valid_start <= at && at < e->valid_end)) continue;
      hits.push_back(e.get());
    }
    std::sort(hits.begin(), hits.end(), [](const Entry* a, const Entry* b) {
      const v1::EmissionFactor& x = a->factor;
      const v1::EmissionFactor& y = b->factor;
      if (x.key() != y.key()) return x.key() < y.key();
      if (x.region() != y.region()) return x.region() < y.region();
      if (x.vintage() != y.vintage()) return x.vintage() < y.vintage();
      return a->seq < b->seq;
    });
    std::vector<v1::EmissionFactor> out;
    out.reserve(hits.size());
    for (const Entry* e : hits) out.push_back(e->factor);
    return out;
  }
}

const FactorRegistry::Entry* FactorRegistry::Best(const FactorQuery& q, const std::vector<std::string>* allowed,
                                                  double* multiplier) const {
  const int kind = static_cast<int>(q.kind);
  if (kind <= 0 || kind >= kKindCount) return nullptr;
  auto it = by_key_[kind].find(q.key);
  if (it == by_key_[kind].end()) return nullptr;
  const std::vector<const Entry*>& candidates = it->second;
  const bool supplier = q.kind == v1::FACTOR_KIND_SUPPLIER;
  for (const std::string& region : q.regions) {
    const Entry* best = nullptr;
    double best_m = 0;
    for (const Entry* e : candidates) {
      const v1::EmissionFactor& f = e->factor;
      if (f.region() != region) continue;
      if (supplier && f.tariff_id() != q.tariff_id) continue;
      if (!(e->valid_start <= q.at && q.at < e->valid_end)) continue;
      if (best != nullptr &&
          (e->valid_start < best->valid_start || (e->valid_start == best->valid_start && e->seq < best->seq))) {
        continue;
      }
      if (allowed != nullptr && std::find(allowed->begin(), allowed->end(), f.factor_id()) == allowed->end()) {
        continue;
      }
      std::optional<double> m = FactorMultiplier(f.unit(), q.activity_unit);
      if (!m.has_value()) continue;
      best = e;
      best_m = *m;
    }
    if (best != nullptr) {
      *multiplier = best_m;
      return best;
    }
  }
  return nullptr;
}

absl::Status FactorRegistry::SelectInto(const FactorQuery& q, SelectedFactor* out) const {
  if (q.kind <= v1::FACTOR_KIND_UNSPECIFIED || q.kind >= kKindCount) {
    return absl::InvalidArgumentError(absl::StrCat("factor query kind ", static_cast<int>(q.kind),
                                                   " is not one of GRID, FUEL, SUPPLIER, PROCESS"));
  }
  {
    absl::ReaderMutexLock lock(&mu_);
    double m = 0;
    const Entry* e = Best(q, nullptr, &m);
    if (e != nullptr) {
      const v1::EmissionFactor& f = e->factor;
      out->ref.set_factor_id(f.factor_id());
      out->ref.set_value(f.value());
      out->ref.set_unit(f.unit());
      out->ref.set_region(f.region());
      out->ref.set_vintage(f.vintage());
      out->kg_per_unit = f.value() * m;
      out->valid_start = e->valid_start;
      out->valid_end = e->valid_end;
      return absl::OkStatus();
    }
  }
  return absl::NotFoundError(absl::StrCat(
      "no ", AV(FactorKindName(q.kind)), " emission factor for key '", q.key, "'",
      q.kind == v1::FACTOR_KIND_SUPPLIER ? absl::StrCat(" tariff '", q.tariff_id, "'") : std::string(),
      " in regions [", absl::StrJoin(q.regions, ", "), "] valid at ", TimeText(q.at), " applying to unit '",
      q.activity_unit, "'"));
}

absl::StatusOr<SelectedFactor> FactorRegistry::Select(const FactorQuery& q) const {
  SelectedFactor out;
  CITYOS_RETURN_IF_ERROR(SelectInto(q, &out));
  return out;
}

absl::StatusOr<SelectedFactor> FactorRegistry::SelectAmong(const FactorQuery& q,
                                                           const std::vector<std::string>& allowed) const {
  if (!allowed.empty()) {
    absl::ReaderMutexLock lock(&mu_);
    double m = 0;
    const Entry* e = Best(q, &allowed, &m);
    if (e != nullptr) {
      SelectedFactor out;
      const v1::EmissionFactor& f = e->factor;
      out.ref.set_factor_id(f.factor_id());
      out.ref.set_value(f.value());
      out.ref.set_unit(f.unit());
      out.ref.set_region(f.region());
      out.ref.set_vintage(f.vintage());
      out.kg_per_unit = f.value() * m;
      out.valid_start = e->valid_start;
      out.valid_end = e->valid_end;
      return out;
    }
  }
  return Select(q);
}

}  // namespace cityos::carbon
