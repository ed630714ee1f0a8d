// Tests of the carbon account's energy units (services/carbon/units.h):
// accepted units per energy kind, canonical conversion, factor keys, scopes
// and factor unit multipliers.
#include "units.h"

#include <algorithm>
#include <string_view>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"

namespace cityos::carbon {
namespace {

using ::testing::HasSubstr;

TEST(Units, EveryKindAcceptsItsUnits) {
  struct Case {
    v1::EnergyKind kind;
    std::vector<std::string_view> units;
  };
  const Case cases[] = {
      {v1::ENERGY_KIND_ELECTRICITY, {"kWh", "MWh"}}, {v1::ENERGY_KIND_NATURAL_GAS, {"m3"}},
      {v1::ENERGY_KIND_STEAM, {"GJ", "t"}},          {v1::ENERGY_KIND_DIESEL, {"kg", "t"}},
      {v1::ENERGY_KIND_GASOLINE, {"kg", "t"}},       {v1::ENERGY_KIND_COAL, {"kg", "t"}},
      {v1::ENERGY_KIND_LPG, {"kg", "t"}},            {v1::ENERGY_KIND_FUEL_OIL, {"kg", "t"}},
      {v1::ENERGY_KIND_HEAT, {"GJ"}},
  };
  const std::vector<std::string_view> all = {"kWh", "MWh", "Wh", "GWh", "m3", "GJ", "TJ", "kg", "t", "kwh", ""};
  for (const Case& c : cases) {
    EXPECT_EQ(AcceptedUnits(c.kind), c.units) << v1::EnergyKind_Name(c.kind);
    for (std::string_view u : all) {
      const bool want = std::find(c.units.begin(), c.units.end(), u) != c.units.end();
      EXPECT_EQ(UnitAccepted(c.kind, u), want) << v1::EnergyKind_Name(c.kind) << " " << u;
    }
  }
  EXPECT_FALSE(UnitAccepted(v1::ENERGY_KIND_UNSPECIFIED, "kWh"));
  EXPECT_TRUE(AcceptedUnits(v1::ENERGY_KIND_UNSPECIFIED).empty());
}

TEST(Units, WhIsNotAcceptedForElectricity) {
  EXPECT_FALSE(UnitAccepted(v1::ENERGY_KIND_ELECTRICITY, "Wh"));
  absl::StatusOr<double> v = ToCanonical(v1::ENERGY_KIND_ELECTRICITY, "Wh", 32000000);
  ASSERT_FALSE(v.ok());
  EXPECT_EQ(v.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(v.status().message(), HasSubstr("'Wh'"));
  EXPECT_THAT(v.status().message(), HasSubstr("electricity"));
  EXPECT_THAT(v.status().message(), HasSubstr("kWh, MWh"));

  absl::StatusOr<double> u = ToCanonical(v1::ENERGY_KIND_UNSPECIFIED, "kWh", 1);
  ASSERT_FALSE(u.ok());
  EXPECT_THAT(u.status().message(), HasSubstr("ENERGY_KIND_UNSPECIFIED"));
}

TEST(Units, CanonicalConversion) {
  EXPECT_EQ(*ToCanonical(v1::ENERGY_KIND_ELECTRICITY, "MWh", 32), 32000.0);
  EXPECT_EQ(*ToCanonical(v1::ENERGY_KIND_ELECTRICITY, "kWh", 32000), 32000.0);
  EXPECT_EQ(CanonicalUnit(v1::ENERGY_KIND_ELECTRICITY, "MWh"), "kWh");
  EXPECT_EQ(CanonicalUnit(v1::ENERGY_KIND_ELECTRICITY, "kWh"), "kWh");
  EXPECT_EQ(*ToCanonical(v1::ENERGY_KIND_DIESEL, "t", 2.5), 2500.0);
  EXPECT_EQ(CanonicalUnit(v1::ENERGY_KIND_DIESEL, "t"), "kg");
  EXPECT_EQ(CanonicalUnit(v1::ENERGY_KIND_COAL, "kg"), "kg");
  // Steam is kept as given: GJ and t are different quantities.
  EXPECT_EQ(*ToCanonical(v1::ENERGY_KIND_STEAM, "t", 3), 3.0);
  EXPECT_EQ(CanonicalUnit(v1::ENERGY_KIND_STEAM, "t"), "t");
  EXPECT_EQ(CanonicalUnit(v1::ENERGY_KIND_STEAM, "GJ"), "GJ");
  EXPECT_EQ(*ToCanonical(v1::ENERGY_KIND_NATURAL_GAS, "m3", 7), 7.0);
  EXPECT_EQ(*ToCanonical(v1::ENERGY_KIND_HEAT, "GJ", 7), 7.0);
  EXPECT_FALSE(ToCanonical(v1::ENERGY_KIND_HEAT, "t", 7).ok());
  EXPECT_FALSE(ToCanonical(v1::ENERGY_KIND_NATURAL_GAS, "kg", 7).ok());
}

TEST(Units, FactorKeysNamesAndScopes) {
  EXPECT_EQ(FactorKey(v1::ENERGY_KIND_ELECTRICITY), "electricity");
  EXPECT_EQ(FactorKey(v1::ENERGY_KIND_NATURAL_GAS), "natural_gas");
  EXPECT_EQ(FactorKey(v1::ENERGY_KIND_STEAM), "steam");
  EXPECT_EQ(FactorKey(v1::ENERGY_KIND_DIESEL), "diesel");
  EXPECT_EQ(FactorKey(v1::ENERGY_KIND_GASOLINE), "gasoline");
  EXPECT_EQ(FactorKey(v1::ENERGY_KIND_COAL), "raw_coal");
  EXPECT_EQ(FactorKey(v1::ENERGY_KIND_LPG), "lpg");
  EXPECT_EQ(FactorKey(v1::ENERGY_KIND_FUEL_OIL), "fuel_oil");
  EXPECT_EQ(FactorKey(v1::ENERGY_KIND_HEAT), "heat");
  EXPECT_EQ(FactorKey(v1::ENERGY_KIND_UNSPECIFIED), "");
  EXPECT_EQ(EnergyKindForKey("raw_coal"), v1::ENERGY_KIND_COAL);
  EXPECT_EQ(EnergyKindForKey("clinker"), std::nullopt);
  EXPECT_EQ(EnergyKindName(v1::ENERGY_KIND_COAL), "coal");
  EXPECT_EQ(EnergyKindName(v1::ENERGY_KIND_ELECTRICITY), "electricity");
  EXPECT_EQ(EnergyKindFromName("coal"), v1::ENERGY_KIND_COAL);
  EXPECT_EQ(EnergyKindFromName("raw_coal"), v1::ENERGY_KIND_COAL);
  EXPECT_EQ(EnergyKindFromName("ENERGY_KIND_HEAT"), v1::ENERGY_KIND_HEAT);
  EXPECT_EQ(EnergyKindFromName("plutonium"), std::nullopt);

  EXPECT_EQ(ScopeOf(v1::ENERGY_KIND_ELECTRICITY), v1::SCOPE_2);
  EXPECT_EQ(ScopeOf(v1::ENERGY_KIND_STEAM), v1::SCOPE_2);
  EXPECT_EQ(ScopeOf(v1::ENERGY_KIND_HEAT), v1::SCOPE_2);
  for (v1::EnergyKind k : {v1::ENERGY_KIND_NATURAL_GAS, v1::ENERGY_KIND_DIESEL, v1::ENERGY_KIND_GASOLINE,
                           v1::ENERGY_KIND_COAL, v1::ENERGY_KIND_LPG, v1::ENERGY_KIND_FUEL_OIL}) {
    EXPECT_EQ(ScopeOf(k), v1::SCOPE_1) << v1::EnergyKind_Name(k);
  }
  EXPECT_EQ(ScopeOf(v1::ENERGY_KIND_UNSPECIFIED), v1::SCOPE_UNSPECIFIED);
}

TEST(Units, FactorMultiplier) {
  EXPECT_EQ(FactorMultiplier("kgCO2/kWh", "kWh"), 1.0);
  EXPECT_EQ(FactorMultiplier("kgCO2/kWh", "MWh"), 1000.0);
  EXPECT_EQ(FactorMultiplier("kgCO2/MWh", "kWh"), 0.001);
  EXPECT_EQ(FactorMultiplier("kgCO2/TJ", "GJ"), 0.001);
  EXPECT_EQ(FactorMultiplier("kgCO2/GJ", "GJ"), 1.0);
  EXPECT_EQ(FactorMultiplier("kgCO2/kg", "t"), 1000.0);
  EXPECT_EQ(FactorMultiplier("kgCO2/t", "kg"), 0.001);
  EXPECT_EQ(FactorMultiplier("kgCO2/m3", "m3"), 1.0);
  EXPECT_EQ(FactorMultiplier("kgCO2/kWh", "GJ"), std::nullopt);
  EXPECT_EQ(FactorMultiplier("kgCO2/TJ", "kg"), std::nullopt);
  EXPECT_EQ(FactorMultiplier("kgCO2/kWh", "Wh"), std::nullopt);
  EXPECT_EQ(FactorMultiplier("tCO2/kWh", "kWh"), std::nullopt);
  EXPECT_EQ(FactorMultiplier("kgCO2/", "kWh"), std::nullopt);
  // The reference vector: 32 MWh at 0.5306 kg/kWh.
  EXPECT_NEAR(32 * *FactorMultiplier("kgCO2/kWh", "MWh") * 0.5306, 16979.2, 1e-9);
}

TEST(Units, ValidateFactorUnit) {
  for (std::string_view u : {"kgCO2/kWh", "kgCO2/MWh", "kgCO2/m3", "kgCO2/GJ", "kgCO2/TJ", "kgCO2/kg", "kgCO2/t"}) {
    EXPECT_TRUE(ValidateFactorUnit(u).ok()) << u;
  }
  for (std::string_view u : {"", "kgCO2", "kgCO2/", "kgCO2/Wh", "tCO2/t", "kgco2/kWh", "kgCO2/kWh "}) {
    absl::Status s = ValidateFactorUnit(u);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << u;
    EXPECT_THAT(s.message(), HasSubstr("'" + std::string(u) + "'"));
  }
}

}  // namespace
}  // namespace cityos::carbon
