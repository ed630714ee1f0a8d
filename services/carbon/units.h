// File: services/carbon/units.h
//
// Energy units of the carbon account: which units each energy kind accepts,
// its canonical unit, exact conversions, the factor key and GHG scope of each
// kind, and how an emission factor's unit (`kgCO2/<unit>`) applies to an
// activity unit.
//
//   absl::StatusOr<double> kwh = ToCanonical(v1::ENERGY_KIND_ELECTRICITY, "MWh", 32);  // 32000
//   std::optional<double> m = FactorMultiplier("kgCO2/TJ", "GJ");        // 0.001
//   double kg = activity_gj * *m * factor_value;
//
// Units (canonical in brackets): electricity kWh|MWh [kWh]; natural gas m3
// [m3]; steam GJ|t [as given]; diesel, gasoline, coal, LPG, fuel oil kg|t
// [kg]; heat GJ [GJ]. Unit names are case-sensitive (`Wh` and `kwh` are not
// accepted). All functions are pure and thread-safe.
#ifndef CITYOS_SERVICES_CARBON_UNITS_H_
#define CITYOS_SERVICES_CARBON_UNITS_H_

#include <optional>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "cityos/carbon/v1/carbon_events.pb.h"

namespace cityos::carbon {

// Whether `unit` is one of the units `kind` accepts. False for UNSPECIFIED.
bool UnitAccepted(v1::EnergyKind kind, std::string_view unit);

// The units `kind` accepts, canonical first (empty for UNSPECIFIED).
std::vector<std::string_view> AcceptedUnits(v1::EnergyKind kind);

// The canonical unit for a value of `kind` in `unit`: "kWh" for MWh
// electricity, "kg" for t of a fuel, otherwise `unit` itself (steam keeps GJ
// or t). The result points to static storage or into `unit`.
std::string_view CanonicalUnit(v1::EnergyKind kind, std::string_view unit);

// `value` converted to CanonicalUnit(kind, unit) (MWh -> kWh x1000, fuel
// t -> kg x1000). INVALID_ARGUMENT naming the kind and unit when `unit` is
// not accepted for `kind`.
absl::StatusOr<double> ToCanonical(v1::EnergyKind kind, std::string_view unit, double value);

// Emission factor key of an energy kind: "electricity", "natural_gas",
// "steam", "diesel", "gasoline", "raw_coal", "lpg", "fuel_oil", "heat";
// "" for UNSPECIFIED.
std::string_view FactorKey(v1::EnergyKind kind);

// The energy kind whose FactorKey is `key`, if any.
std::optional<v1::EnergyKind> EnergyKindForKey(std::string_view key);

// GHG scope: electricity, steam, heat -> SCOPE_2; fuels -> SCOPE_1;
// UNSPECIFIED -> SCOPE_UNSPECIFIED.
v1::Scope ScopeOf(v1::EnergyKind kind);

// Name for reports and the CLI: "electricity", "natural_gas", "steam",
// "diesel", "gasoline", "coal", "lpg", "fuel_oil", "heat"; "unspecified".
std::string_view EnergyKindName(v1::EnergyKind kind);

// The kind named `name` (an EnergyKindName or a FactorKey, or the enum name
// such as "ENERGY_KIND_COAL"); nullopt if none.
std::optional<v1::EnergyKind> EnergyKindFromName(std::string_view name);

// Multiplier m so that activity (in `activity_unit`) * m * factor value =
// kg CO2, for a factor in `factor_unit` (e.g. "kgCO2/kWh"); nullopt when the
// factor unit is malformed or its denominator is not `activity_unit` after an
// exact conversion (MWh/kWh, t/kg, TJ/GJ). E.g. ("kgCO2/kWh", "MWh") -> 1000,
// ("kgCO2/TJ", "GJ") -> 0.001, ("kgCO2/kWh", "GJ") -> nullopt.
// Allocation-free.
std::optional<double> FactorMultiplier(std::string_view factor_unit, std::string_view activity_unit);

// OK if `unit` is "kgCO2/<u>" with <u> one of kWh, MWh, m3, GJ, TJ, kg, t;
// INVALID_ARGUMENT naming the unit otherwise.
absl::Status ValidateFactorUnit(std::string_view unit);

}  // namespace cityos::carbon

#endif  // CITYOS_SERVICES_CARBON_UNITS_H_
