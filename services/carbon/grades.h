// File: services/carbon/grades.h
//
// Carbon-efficiency grades per DB33/T 1347-2023: an enterprise's intensity
// (t CO2 per 10,000 yuan of value added) divided by its industry benchmark
// gives K, rounded to 4 decimals (half away from zero); level 1 if
// K <= 0.6, 2 if <= 0.8, 3 if <= 1.2, 4 if <= 2.0, else 5. Each dimension
// (industry benchmark, region average, own history) gives a colour from its
// ratio with the same thresholds; the overall colour is their median.
//
//   ASSIGN_OR_RETURN(BenchmarkTable table, BenchmarkTable::Create(benchmarks));
//   const Benchmark* b = table.Find("C3110");        // longest prefix, e.g. "C31"
//   ASSIGN_OR_RETURN(v1::Grade g, ComputeGrade(input, *b));
//   // g.explanation(): "K = 0.7400 / 0.9200 = 0.8043 > 0.8, <= 1.2: level 3 ..."
//
// Pure functions and immutable types; thread-safe.
#ifndef CITYOS_SERVICES_CARBON_GRADES_H_
#define CITYOS_SERVICES_CARBON_GRADES_H_

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "cityos/carbon/v1/carbon_events.pb.h"
#include "periods.h"

namespace cityos::carbon {

// The grading method recorded in every grade.
inline constexpr std::string_view kGradeMethod = "DB33/T 1347-2023";

// An industry benchmark intensity.
struct Benchmark {
  // Id, e.g. `zj-2023-C31` (unique in a table).
  std::string id;
  // Industry code prefix it applies to (GB/T 4754-2017), e.g. `C31`; empty
  // for the default of every industry.
  std::string industry_prefix;
  // Version of the figure, e.g. `2023`.
  std::string version;
  // Citation of the source.
  std::string source;
  // Benchmark intensity, t CO2 per 10,000 yuan of value added; > 0.
  double intensity = 0;
};

// Longest industry-code prefix wins. Immutable after Create; thread-safe.
class BenchmarkTable {
 public:
  // INVALID_ARGUMENT naming the entry (id or index) for an empty id or
  // version, intensity <= 0 or not finite, a duplicate id or a duplicate
  // prefix.
  static absl::StatusOr<BenchmarkTable> Create(std::vector<Benchmark> b);
  BenchmarkTable() = default;
  // The benchmark with the longest prefix of `industry_code`; null if none.
  // Valid as long as the table.
  const Benchmark* Find(std::string_view industry_code) const;
  const std::vector<Benchmark>& all() const { return benchmarks_; }

 private:
  std::vector<Benchmark> benchmarks_;
  absl::flat_hash_map<std::string, size_t> by_prefix_;
};

// Upper K boundaries of levels 1-4.
inline constexpr double kDefaultThresholds[4] = {0.6, 0.8, 1.2, 2.0};

// `k` rounded to 4 decimal places, half away from zero (values within 1e-9
// relative of a half are treated as the half, so 0.80435 -> 0.8044).
double RoundK(double k);

// Level 1..thresholds.size()+1 of RoundK(k): the first i with
// RoundK(k) <= thresholds[i-1], else the last level. Compared in units of
// 1e-4, so K = 0.6 exactly (after rounding) is level 1.
int LevelForK(double k, absl::Span<const double> thresholds = kDefaultThresholds);

// Colour of a dimension ratio: level 1 -> DEEP_GREEN, 2 -> LIGHT_GREEN,
// 3 -> YELLOW, 4 and 5 -> RED.
v1::GradeColour ColourForRatio(double ratio, absl::Span<const double> thresholds = kDefaultThresholds);

// The colour of a level (as ColourForRatio).
v1::GradeColour ColourForLevel(int level);

// "deep green", "light green", "yellow", "red", "unspecified".
std::string_view GradeColourName(v1::GradeColour c);

// Median of the colours (UNSPECIFIED ignored); for an even count the worse of
// the middle two; UNSPECIFIED when empty.
v1::GradeColour MedianColour(absl::Span<const v1::GradeColour> colours);

// What a grade is computed from.
struct GradeInput {
  std::string account_id;
  Period period;
  // Scope 1 + scope 2 location-based, kg CO2.
  double emissions_kg = 0;
  // Value added in `period`, 10,000 yuan; > 0.
  double value_added_10k_yuan = 0;
  // Optional further dimensions: `reference` (> 0) and `reference_version`
  // filled in; `dimension` is set here (REGION, HISTORY).
  std::optional<v1::DimensionScore> region_reference, history_reference;
};

// The grade of `in` against `benchmark`. INVALID_ARGUMENT for value added
// <= 0 (or not finite), emissions < 0, benchmark intensity <= 0, a dimension
// reference <= 0, or thresholds that are not 4 ascending positive values.
// Fills account_id, period, level, colour, k, emissions_kg,
// value_added_10k_yuan, intensity, benchmark, benchmark_id,
// benchmark_version, thresholds, dimensions (industry first), method and
// explanation; not grade_id, compute_time or restatement_id.
absl::StatusOr<v1::Grade> ComputeGrade(const GradeInput& in, const Benchmark& benchmark,
                                       absl::Span<const double> thresholds = kDefaultThresholds);

}  // namespace cityos::carbon

#endif  // CITYOS_SERVICES_CARBON_GRADES_H_
