// File: services/carbon/regions.h
//
// The region tree of the carbon account, from configuration: country,
// province, city, district (e.g. CN > CN-ZJ > CN-ZJ-QZ > CN-ZJ-QZ-KC), each
// optionally naming the grid region its electricity comes from (CN-ZJ ->
// CN-EAST). It answers which regions cover which, where factors are looked up
// (most specific first) and which bus subject suffix a region publishes on.
//
//   ASSIGN_OR_RETURN(RegionTree tree, RegionTree::Create({
//       {"CN", "China", "", "", "cn"}, {"CN-ZJ", "Zhejiang", "CN", "CN-EAST", "zhejiang"},
//       {"CN-ZJ-QZ", "Quzhou", "CN-ZJ", "", "quzhou"},
//       {"CN-ZJ-QZ-KC", "Kecheng", "CN-ZJ-QZ", "", "kecheng"}}));
//   tree.FactorRegions("CN-ZJ-QZ-KC");
//       // {"CN-ZJ-QZ-KC", "CN-ZJ-QZ", "CN-ZJ", "CN-EAST", "CN", "IPCC"}
//   tree.SubjectSuffix("CN-ZJ-QZ-KC");  // "quzhou.kecheng"
//
// Depths: a root (no parent) is a country (depth 0), then province (1),
// city (2), district (3); deeper regions (towns) belong to their district.
#ifndef CITYOS_SERVICES_CARBON_REGIONS_H_
#define CITYOS_SERVICES_CARBON_REGIONS_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace cityos::carbon {

// The region every factor lookup ends with (IPCC defaults).
inline constexpr std::string_view kDefaultFactorRegion = "IPCC";

// One region of the tree.
struct RegionInfo {
  // Code: upper-case segments of [A-Z0-9] joined by '-', the first two
  // letters (e.g. `CN`, `CN-ZJ-QZ-KC`); at most 64 characters.
  std::string code;
  // Display name.
  std::string name;
  // Parent code; empty for a root (country).
  std::string parent;
  // Grid region of electricity factors for this region and its descendants
  // (the nearest ancestor-or-self naming one wins), e.g. `CN-EAST`; empty for
  // none. Need not be a region of the tree; same syntax as `code`.
  std::string grid;
  // Bus subject token, lower-case [a-z0-9_-], e.g. `kecheng`. Empty: the
  // code's last segment in lower case (`kc`).
  std::string subject_token;
};

// Immutable after Create; thread-safe (const methods only). Copyable and
// movable.
class RegionTree {
 public:
  // INVALID_ARGUMENT naming the code for a bad code, grid or subject token, a
  // duplicate code, an unknown parent, or a cycle. An empty list is allowed
  // (every lookup then treats codes as unknown).
  static absl::StatusOr<RegionTree> Create(std::vector<RegionInfo> regions);

  RegionTree() = default;

  // The region, or null if unknown. Valid as long as the tree.
  const RegionInfo* Find(std::string_view code) const;
  // Whether `code` equals `ancestor` or lies below it. False when either is
  // unknown, except that equal codes always cover each other.
  bool Covers(std::string_view ancestor, std::string_view code) const;
  // `code`, its parent, ..., the root; {code} for an unknown code.
  std::vector<std::string> Ancestry(std::string_view code) const;
  // Regions whose factors apply to `code`, most specific first: the code and
  // its ancestors up to (excluding) the root, then the grid of the nearest
  // ancestor-or-self that names one, then the root, then `IPCC`. E.g.
  // CN-ZJ-QZ-KC -> [CN-ZJ-QZ-KC, CN-ZJ-QZ, CN-ZJ, CN-EAST, CN, IPCC].
  // For an unknown code: [code, IPCC]. No duplicates.
  std::vector<std::string> FactorRegions(std::string_view code) const;
  // As FactorRegions, precomputed: null for an unknown code. Valid as long as
  // the tree. Allocation-free (for the ledger's hot path).
  const std::vector<std::string>* FactorRegionsOf(std::string_view code) const;
  // Direct children, sorted by code; empty for an unknown code.
  std::vector<std::string> Children(std::string_view code) const;
  // Depth: 0 for a root, 1 for its children, ...; -1 for an unknown code.
  int Depth(std::string_view code) const;
  // Bus subject suffix "<city>.<district>" from the subject tokens of the
  // ancestor-or-self at depth 2 (city) and 3 (district); "<city>.all" for a
  // city; "<token>.all" for a country or province; "" for an unknown code.
  std::string SubjectSuffix(std::string_view code) const;
  // Every region in the order given to Create.
  const std::vector<RegionInfo>& all() const { return regions_; }

 private:
  struct Node {
    size_t parent = SIZE_MAX;  // index into regions_, SIZE_MAX for a root
    int depth = 0;
    std::vector<std::string> factor_regions;
    std::vector<std::string> children;  // sorted
  };
  std::vector<RegionInfo> regions_;
  std::vector<Node> nodes_;  // parallel to regions_
  absl::flat_hash_map<std::string, size_t> index_;
};

}  // namespace cityos::carbon

#endif  // CITYOS_SERVICES_CARBON_REGIONS_H_
