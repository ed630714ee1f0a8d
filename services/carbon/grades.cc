// Carbon-efficiency grades per DB33/T 1347-2023 (grades.h).
#include "grades.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "cityos/status.h"

namespace cityos::carbon {
namespace {

// Debian's abseil has its own string_view (docs/style.md).
inline absl::string_view AV(std::string_view s) { return {s.data(), s.size()}; }


// RoundK(x) in units of 1e-4, as an integer.
int64_t TenThousandths(double k) { return std::llround(RoundK(k) * 10000.0); }

// A 4-decimal figure without trailing zeros but with at least one decimal:
// 0.6, 2.0, 0.8043.
std::string Threshold(double t) {
  std::string s = absl::StrFormat("%.4f", t);
  while (s.size() > 1 && s.back() == '0' && s[s.size() - 2] != '.') s.pop_back();
  return s;
}

absl::Status CheckThresholds(absl::Span<const double> thresholds) {
  if (thresholds.size() != 4) {
    return absl::InvalidArgumentError(absl::StrCat("want 4 grade thresholds, got ", thresholds.size()));
  }
  for (size_t i = 0; i < thresholds.size(); ++i) {
    if (!std::isfinite(thresholds[i]) || thresholds[i] <= 0 || (i > 0 && thresholds[i] <= thresholds[i - 1])) {
      return absl::InvalidArgumentError(absl::StrCat("grade threshold #", i + 1, " (", thresholds[i],
                                                     ") is not positive and ascending"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<BenchmarkTable> BenchmarkTable::Create(std::vector<Benchmark> b) {
  BenchmarkTable table;
  absl::flat_hash_map<std::string, size_t> ids;
  for (size_t i = 0; i < b.size(); ++i) {
    const Benchmark& x = b[i];
    const std::string name = x.id.empty() ? absl::StrCat("benchmark #", i) : absl::StrCat("benchmark ", x.id);
    if (x.id.empty()) return absl::InvalidArgumentError(absl::StrCat(name, ": empty id"));
    if (x.version.empty()) return absl::InvalidArgumentError(absl::StrCat(name, ": empty version"));
    if (!std::isfinite(x.intensity) || x.intensity <= 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(name, ": intensity ", x.intensity, " t CO2 / 10k CNY is not positive"));
    }
    if (!ids.emplace(x.id, i).second) return absl::InvalidArgumentError(absl::StrCat(name, ": duplicate id"));
    if (!table.by_prefix_.emplace(x.industry_prefix, i).second) {
      return absl::InvalidArgumentError(
          absl::StrCat(name, ": industry prefix '", x.industry_prefix, "' already has a benchmark"));
    }
  }
  table.benchmarks_ = std::move(b);
  return table;
}

const Benchmark* BenchmarkTable::Find(std::string_view industry_code) const {
  for (size_t len = industry_code.size() + 1; len-- > 0;) {
    auto it = by_prefix_.find(AV(industry_code.substr(0, len)));
    if (it != by_prefix_.end()) return &benchmarks_[it->second];
  }
  return nullptr;
}

double RoundK(double k) {
  if (!std::isfinite(k)) return k;
  const double scaled = k * 10000.0;
  double r = std::round(scaled);  // half away from zero
  // A decimal half (e.g. 0.80435) may land just below .5 in binary: treat
  // anything within 1e-9 relative of the half as the half.
  const double fl = std::floor(scaled);
  const double half = fl + 0.5;
  if (std::fabs(scaled - half) <= 1e-9 * std::max(1.0, std::fabs(scaled))) {
    r = scaled >= 0 ? fl + 1.0 : fl;
  }
  return r / 10000.0;
}

int LevelForK(double k, absl::Span<const double> thresholds) {
  const int64_t kk = TenThousandths(k);
  for (size_t i = 0; i < thresholds.size(); ++i) {
    if (kk <= TenThousandths(thresholds[i])) return static_cast<int>(i) + 1;
  }
  return static_cast<int>(thresholds.size()) + 1;
}

v1::GradeColour ColourForLevel(int level) {
  switch (level) {
    case 1:
      return v1::GRADE_COLOUR_DEEP_GREEN;
    case 2:
      return v1::GRADE_COLOUR_LIGHT_GREEN;
    case 3:
      return v1::GRADE_COLOUR_YELLOW;
    default:
      return level >= 4 ? v1::GRADE_COLOUR_RED : v1::GRADE_COLOUR_UNSPECIFIED;
  }
}

v1::GradeColour ColourForRatio(double ratio, absl::Span<const double> thresholds) {
  return ColourForLevel(LevelForK(ratio, thresholds));
}

std::string_view GradeColourName(v1::GradeColour c) {
  switch (c) {
    case v1::GRADE_COLOUR_DEEP_GREEN:
      return "deep green";
    case v1::GRADE_COLOUR_LIGHT_GREEN:
      return "light green";
    case v1::GRADE_COLOUR_YELLOW:
      return "yellow";
    case v1::GRADE_COLOUR_RED:
      return "red";
    default:
      return "unspecified";
  }
}

v1::GradeColour MedianColour(absl::Span<const v1::GradeColour> colours) {
  std::vector<int> c;
  for (v1::GradeColour x : colours) {
    if (x != v1::GRADE_COLOUR_UNSPECIFIED) c.push_back(static_cast<int>(x));
  }
  if (c.empty()) return v1::GRADE_COLOUR_UNSPECIFIED;
  std::sort(c.begin(), c.end());
  // Odd: the middle; even: the worse (higher) of the middle two.
  return static_cast<v1::GradeColour>(c[c.size() / 2]);
}

absl::StatusOr<v1::Grade> ComputeGrade(const GradeInput& in, const Benchmark& benchmark,
                                       absl::Span<const double> thresholds) {
  CITYOS_RETURN_IF_ERROR(CheckThresholds(thresholds));
  if (!std::isfinite(in.value_added_10k_yuan) || in.value_added_10k_yuan <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("value added ", in.value_added_10k_yuan, " (10k CNY) of ",
                                                   in.account_id, " is not positive"));
  }
  if (!std::isfinite(in.emissions_kg) || in.emissions_kg < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("emissions ", in.emissions_kg, " kg of ", in.account_id, " are negative"));
  }
  if (!std::isfinite(benchmark.intensity) || benchmark.intensity <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("benchmark ", benchmark.id, " intensity ",
                                                   benchmark.intensity, " is not positive"));
  }
  v1::Grade g;
  g.set_account_id(in.account_id);
  *g.mutable_period() = ToTimeRange(in.period);
  const double intensity = in.emissions_kg / 1000.0 / in.value_added_10k_yuan;
  const double k = RoundK(intensity / benchmark.intensity);
  const int level = LevelForK(k, thresholds);
  g.set_level(level);
  g.set_k(k);
  g.set_emissions_kg(in.emissions_kg);
  g.set_value_added_10k_yuan(in.value_added_10k_yuan);
  g.set_intensity(intensity);
  g.set_benchmark(benchmark.intensity);
  g.set_benchmark_id(benchmark.id);
  g.set_benchmark_version(benchmark.version);
  for (double t : thresholds) g.add_thresholds(t);
  g.set_method(std::string(kGradeMethod));

  std::vector<v1::GradeColour> colours;
  v1::DimensionScore* industry = g.add_dimensions();
  industry->set_dimension(v1::GRADE_DIMENSION_INDUSTRY);
  industry->set_reference(benchmark.intensity);
  industry->set_reference_version(benchmark.version);
  industry->set_ratio(k);
  industry->set_colour(ColourForLevel(level));
  colours.push_back(industry->colour());
  std::string dims;
  const std::pair<const std::optional<v1::DimensionScore>*, v1::GradeDimension> others[] = {
      {&in.region_reference, v1::GRADE_DIMENSION_REGION},
      {&in.history_reference, v1::GRADE_DIMENSION_HISTORY}};
  for (const auto& [ref, dim] : others) {
    if (!ref->has_value()) continue;
    const double reference = (*ref)->reference();
    if (!std::isfinite(reference) || reference <= 0) {
      return absl::InvalidArgumentError(absl::StrCat(v1::GradeDimension_Name(dim), " reference ", reference,
                                                     " is not positive"));
    }
    v1::DimensionScore* d = g.add_dimensions();
    *d = **ref;
    d->set_dimension(dim);
    d->set_ratio(RoundK(intensity / reference));
    d->set_colour(ColourForRatio(d->ratio(), thresholds));
    colours.push_back(d->colour());
    absl::StrAppend(&dims, "; ", dim == v1::GRADE_DIMENSION_REGION ? "region" : "history",
                    absl::StrFormat(" %.4f", reference), " (version ", d->reference_version(),
                    ") ratio ", absl::StrFormat("%.4f", d->ratio()), ": ", AV(GradeColourName(d->colour())));
  }
  g.set_colour(MedianColour(colours));

  std::string bound;
  const size_t n = thresholds.size();
  if (level == 1) {
    bound = absl::StrCat("<= ", Threshold(thresholds[0]));
  } else if (static_cast<size_t>(level) == n + 1) {
    bound = absl::StrCat("> ", Threshold(thresholds[n - 1]));
  } else {
    bound = absl::StrCat("> ", Threshold(thresholds[level - 2]), ", <= ", Threshold(thresholds[level - 1]));
  }
  g.set_explanation(absl::StrCat(
      absl::StrFormat("K = %.4f / %.4f = %.4f ", intensity, benchmark.intensity, k), bound, ": level ", level,
      " (benchmark ", benchmark.id, " version ", benchmark.version, ", ", AV(kGradeMethod), "); colour ",
      AV(GradeColourName(g.colour())), " (industry ", AV(GradeColourName(industry->colour())), dims, ")"));
  return g;
}

}  // namespace cityos::carbon
