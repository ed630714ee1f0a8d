// Energy units, factor keys and scopes of the carbon account (units.h).
#include "units.h"

#include <string>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace cityos::carbon {
namespace {

// Debian's abseil has its own string_view (docs/style.md).
inline absl::string_view AV(std::string_view s) { return {s.data(), s.size()}; }


struct KindInfo {
  v1::EnergyKind kind;
  std::string_view key;
  std::string_view name;
  v1::Scope scope;
  // Accepted units, canonical first; empty string_view ends the list.
  std::string_view units[3];
  // Whether t converts to kg (fuels); steam keeps t.
  bool t_to_kg;
};

constexpr KindInfo kKinds[] = {
    {v1::ENERGY_KIND_ELECTRICITY, "electricity", "electricity", v1::SCOPE_2, {"kWh", "MWh", {}}, false},
    {v1::ENERGY_KIND_NATURAL_GAS, "natural_gas", "natural_gas", v1::SCOPE_1, {"m3", {}, {}}, false},
    {v1::ENERGY_KIND_STEAM, "steam", "steam", v1::SCOPE_2, {"GJ", "t", {}}, false},
    {v1::ENERGY_KIND_DIESEL, "diesel", "diesel", v1::SCOPE_1, {"kg", "t", {}}, true},
    {v1::ENERGY_KIND_GASOLINE, "gasoline", "gasoline", v1::SCOPE_1, {"kg", "t", {}}, true},
    {v1::ENERGY_KIND_COAL, "raw_coal", "coal", v1::SCOPE_1, {"kg", "t", {}}, true},
    {v1::ENERGY_KIND_LPG, "lpg", "lpg", v1::SCOPE_1, {"kg", "t", {}}, true},
    {v1::ENERGY_KIND_FUEL_OIL, "fuel_oil", "fuel_oil", v1::SCOPE_1, {"kg", "t", {}}, true},
    {v1::ENERGY_KIND_HEAT, "heat", "heat", v1::SCOPE_2, {"GJ", {}, {}}, false},
};

const KindInfo* InfoOf(v1::EnergyKind kind) {
  for (const KindInfo& k : kKinds) {
    if (k.kind == kind) return &k;
  }
  return nullptr;
}

// A unit a factor denominator or activity may carry: its dimension and its
// size in the dimension's base unit.
struct UnitInfo {
  std::string_view name;
  int dimension;  // 0 electric energy (kWh), 1 heat energy (GJ), 2 mass (kg), 3 volume (m3)
  double scale;
};

constexpr UnitInfo kUnits[] = {
    {"kWh", 0, 1.0}, {"MWh", 0, 1000.0}, {"GJ", 1, 1.0}, {"TJ", 1, 1000.0},
    {"kg", 2, 1.0},  {"t", 2, 1000.0},   {"m3", 3, 1.0},
};

const UnitInfo* UnitOf(std::string_view name) {
  for (const UnitInfo& u : kUnits) {
    if (u.name == name) return &u;
  }
  return nullptr;
}

constexpr std::string_view kFactorPrefix = "kgCO2/";

}  // namespace

bool UnitAccepted(v1::EnergyKind kind, std::string_view unit) {
  const KindInfo* info = InfoOf(kind);
  if (info == nullptr || unit.empty()) return false;
  for (std::string_view u : info->units) {
    if (!u.empty() && u == unit) return true;
  }
  return false;
}

std::vector<std::string_view> AcceptedUnits(v1::EnergyKind kind) {
  std::vector<std::string_view> out;
  const KindInfo* info = InfoOf(kind);
  if (info == nullptr) return out;
  for (std::string_view u : info->units) {
    if (!u.empty()) out.push_back(u);
  }
  return out;
}

std::string_view CanonicalUnit(v1::EnergyKind kind, std::string_view unit) {
  const KindInfo* info = InfoOf(kind);
  if (info == nullptr) return unit;
  if (kind == v1::ENERGY_KIND_ELECTRICITY && unit == "MWh") return info->units[0];
  if (info->t_to_kg && unit == "t") return info->units[0];
  return unit;
}

absl::StatusOr<double> ToCanonical(v1::EnergyKind kind, std::string_view unit, double value) {
  if (!UnitAccepted(kind, unit)) {
    const KindInfo* info = InfoOf(kind);
    if (info == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat("energy kind ", v1::EnergyKind_Name(kind), " accepts no unit (unit '", AV(unit), "')"));
    }
    std::string accepted;
    for (std::string_view u : info->units) {
      if (u.empty()) continue;
      if (!accepted.empty()) absl::StrAppend(&accepted, ", ");
      absl::StrAppend(&accepted, AV(u));
    }
    return absl::InvalidArgumentError(absl::StrCat("unit '", AV(unit), "' is not accepted for energy kind ",
                                                   AV(info->name), " (accepted: ", accepted, ")"));
  }
  if (CanonicalUnit(kind, unit) != unit) return value * 1000.0;
  return value;
}

std::string_view FactorKey(v1::EnergyKind kind) {
  const KindInfo* info = InfoOf(kind);
  return info == nullptr ? std::string_view() : info->key;
}

std::optional<v1::EnergyKind> EnergyKindForKey(std::string_view key) {
  for (const KindInfo& k : kKinds) {
    if (k.key == key) return k.kind;
  }
  return std::nullopt;
}

v1::Scope ScopeOf(v1::EnergyKind kind) {
  const KindInfo* info = InfoOf(kind);
  return info == nullptr ? v1::SCOPE_UNSPECIFIED : info->scope;
}

std::string_view EnergyKindName(v1::EnergyKind kind) {
  const KindInfo* info = InfoOf(kind);
  return info == nullptr ? std::string_view("unspecified") : info->name;
}

std::optional<v1::EnergyKind> EnergyKindFromName(std::string_view name) {
  for (const KindInfo& k : kKinds) {
    if (k.name == name || k.key == name) return k.kind;
  }
  v1::EnergyKind kind;
  if (v1::EnergyKind_Parse(std::string(name), &kind) && kind != v1::ENERGY_KIND_UNSPECIFIED) return kind;
  return std::nullopt;
}

std::optional<double> FactorMultiplier(std::string_view factor_unit, std::string_view activity_unit) {
  if (!absl::StartsWith(AV(factor_unit), AV(kFactorPrefix))) return std::nullopt;
  const UnitInfo* denominator = UnitOf(factor_unit.substr(kFactorPrefix.size()));
  const UnitInfo* activity = UnitOf(activity_unit);
  if (denominator == nullptr || activity == nullptr) return std::nullopt;
  if (denominator->dimension != activity->dimension) return std::nullopt;
  if (denominator->scale == activity->scale) return 1.0;
  // Exact for the powers of 1000 used here.
  return activity->scale / denominator->scale;
}

absl::Status ValidateFactorUnit(std::string_view unit) {
  if (!absl::StartsWith(AV(unit), AV(kFactorPrefix)) || UnitOf(unit.substr(kFactorPrefix.size())) == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(
        "factor unit '", AV(unit), "' is not kgCO2/<unit> with a unit of kWh, MWh, m3, GJ, TJ, kg, t"));
  }
  return absl::OkStatus();
}

}  // namespace cityos::carbon
