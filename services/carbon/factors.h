// File: services/carbon/factors.h
//
// The emission factor registry: every factor the carbon account may apply
// (grid averages, fuel combustion, supplier tariffs, process methods), with
// its region, vintage, validity period and source; durable in one SQLite
// file, selected from an in-memory index.
//
//   ASSIGN_OR_RETURN(auto reg, FactorRegistry::Open(dir + "/factors.db", clock, tz));
//   ASSIGN_OR_RETURN(int added, reg->SeedCsv("emission-factors.csv", "seed"));
//   FactorQuery q{v1::FACTOR_KIND_GRID, "electricity", "", reading_start,
//                 tree.FactorRegions("CN-ZJ-QZ-KC"), "kWh"};
//   ASSIGN_OR_RETURN(SelectedFactor f, reg->Select(q));   // CN-EAST 2023, 0.55
//   double kg = kwh * f.kg_per_unit;
//
// Selection: kind and key (and tariff for SUPPLIER) equal; validity
// [valid.start, valid.end) containing the query time; unit applying to the
// activity unit (units.h FactorMultiplier); then the first region of
// `regions` that has such a candidate; among its candidates the latest
// valid.start, then the latest added.
//
// Seeding the reference CSV (lines `kind,key,region,vintage,value,unit,source`,
// `#` comments, an optional header line starting with `kind,`; the source is
// the rest of the line after the sixth comma and may contain commas):
// vintage `YYYY` is valid from YYYY-01-01 in the city time zone, `FYYYYY`
// from YYYY-04-01, anything else (`guideline`) from 1970-01-01; no end.
//
// On disk (`factors` table): factor_id TEXT PRIMARY KEY, seq INTEGER (add
// order), kind INTEGER, key, region, vintage, tariff_id TEXT, factor BLOB (the
// serialized v1::EmissionFactor). Opened in WAL mode.
//
// Thread-safe: one mutex; Select takes it shared and never touches SQLite.
#ifndef CITYOS_SERVICES_CARBON_FACTORS_H_
#define CITYOS_SERVICES_CARBON_FACTORS_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "cityos/carbon/v1/carbon.pb.h"
#include "cityos/carbon/v1/carbon_events.pb.h"
#include "cityos/clock.h"

struct sqlite3;

namespace cityos::carbon {

// "grid", "fuel", "supplier", "process"; "unspecified".
std::string_view FactorKindName(v1::FactorKind kind);
// Parses a FactorKindName (case-insensitive) or the enum name
// ("FACTOR_KIND_GRID"); INVALID_ARGUMENT naming the text otherwise.
absl::StatusOr<v1::FactorKind> ParseFactorKind(std::string_view name);

// What to select a factor for.
struct FactorQuery {
  v1::FactorKind kind = v1::FACTOR_KIND_UNSPECIFIED;
  // Factor key, e.g. "electricity" (units.h FactorKey) or "clinker".
  std::string key;
  // SUPPLIER only: the tariff or contract id; ignored for other kinds.
  std::string tariff_id;
  // The reading's interval start: the factor's validity must contain it.
  absl::Time at;
  // Factor regions, most specific first (RegionTree::FactorRegions).
  std::vector<std::string> regions;
  // Activity unit, e.g. "kWh"; the factor's unit must apply to it.
  std::string activity_unit;
};

// A selected factor.
struct SelectedFactor {
  // What an emission record stores (id, value, unit, region, vintage).
  v1::FactorRef ref;
  // kg CO2 per activity unit: factor value x FactorMultiplier(unit, activity unit).
  double kg_per_unit = 0;
  // Its validity; InfiniteFuture() for no end.
  absl::Time valid_start;
  absl::Time valid_end;
};

class FactorRegistry {
 public:
  // Opens (creating if needed) the registry at `db_path` and loads every
  // factor. `clock` (not owned, outlives the registry) stamps add times; `tz`
  // is the city time zone for vintage validity when seeding.
  static absl::StatusOr<std::unique_ptr<FactorRegistry>> Open(const std::string& db_path, Clock* clock,
                                                                absl::TimeZone tz);
  ~FactorRegistry();
  FactorRegistry(const FactorRegistry&) = delete;
  FactorRegistry& operator=(const FactorRegistry&) = delete;

  // Seeds the rows of a reference CSV (format above). Rows already present
  // (same kind, key, region, vintage and tariff) are skipped. Every row is
  // checked before anything is added (INVALID_ARGUMENT "<file>:<line>: ..."
  // for a bad row; NOT_FOUND naming the file if it cannot be read); the rows
  // are added in one transaction. Returns the number of rows added.
  absl::StatusOr<int> SeedCsv(const std::string& csv_path, const std::string& added_by);

  // Adds a factor; `factor_id`, `added_by` and `add_time` are set here.
  // `energy_kind` is filled from the key for GRID, FUEL and SUPPLIER (whose
  // keys must be energy factor keys). INVALID_ARGUMENT (no kind, key or
  // region, bad unit, value <= 0 or not finite, no source, SUPPLIER without
  // tariff, tariff on another kind, energy kind not matching the key, empty
  // or reversed validity); ALREADY_EXISTS (same kind, key, region, vintage and
  // tariff with an overlapping validity). Returns the factor as stored.
  absl::StatusOr<v1::EmissionFactor> Add(v1::EmissionFactor factor, const std::string& added_by);

  // NOT_FOUND naming the id.
  absl::StatusOr<v1::EmissionFactor> Get(const std::string& factor_id) const;

  // Factors matching the filter (kind, key, region, valid_at; unset = any),
  // by key, region, vintage, then add order.
  std::vector<v1::EmissionFactor> List(const v1::ListEmissionFactorsRequest& filter) const;

  // The factor to apply (see the file comment). NOT_FOUND naming the kind,
  // key, tariff (SUPPLIER), regions, time and activity unit when none
  // applies; INVALID_ARGUMENT for an UNSPECIFIED kind.
  absl::StatusOr<SelectedFactor> Select(const FactorQuery& q) const;

  // As Select, writing into `*out` (reusing its strings' storage: no heap
  // allocation once `out` has held a factor). On error `*out` is unchanged.
  absl::Status SelectInto(const FactorQuery& q, SelectedFactor* out) const;

  // As Select, but only among the factors in `allowed` (ids); when none of
  // them matches the query, Select.
  absl::StatusOr<SelectedFactor> SelectAmong(const FactorQuery& q, const std::vector<std::string>& allowed) const;

  // Changes (+1) whenever a factor is added (by Add or SeedCsv); caches keyed
  // by it stay valid while it is unchanged.
  uint64_t generation() const { return generation_.load(std::memory_order_acquire); }

  // Number of factors.
  size_t size() const;

 private:
  struct Entry;
  FactorRegistry(sqlite3* db, Clock* clock, absl::TimeZone tz);
  absl::Status Load();
  absl::Status CheckNew(const v1::EmissionFactor& f) const ABSL_SHARED_LOCKS_REQUIRED(mu_);
  std::string NewIdLocked(const v1::EmissionFactor& f) const ABSL_SHARED_LOCKS_REQUIRED(mu_);
  absl::Status InsertLocked(v1::EmissionFactor& f) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void IndexLocked(v1::EmissionFactor f, int64_t seq) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  const Entry* Best(const FactorQuery& q, const std::vector<std::string>* allowed, double* multiplier) const
      ABSL_SHARED_LOCKS_REQUIRED(mu_);

  sqlite3* db_;
  Clock* clock_;
  absl::TimeZone tz_;
  mutable absl::Mutex mu_;
  int64_t next_seq_ ABSL_GUARDED_BY(mu_) = 1;
  // Every factor, in add order; never removed, so pointers stay valid.
  std::vector<std::unique_ptr<Entry>> entries_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, Entry*> by_id_ ABSL_GUARDED_BY(mu_);
  // Per FactorKind (index = enum value), key -> entries of that kind and key.
  absl::flat_hash_map<std::string, std::vector<const Entry*>> by_key_[5] ABSL_GUARDED_BY(mu_);
  std::atomic<uint64_t> generation_{0};
};

}  // namespace cityos::carbon

#endif  // CITYOS_SERVICES_CARBON_FACTORS_H_
