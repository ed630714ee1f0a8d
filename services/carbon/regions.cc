// The region tree of the carbon account (regions.h).
#include "regions.h"

#include <algorithm>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"

namespace cityos::carbon {
namespace {

// Debian's abseil has its own string_view (docs/style.md).
inline absl::string_view AV(std::string_view s) { return {s.data(), s.size()}; }


// Upper-case segments of [A-Z0-9] joined by '-', starting with two letters.
bool ValidCode(std::string_view code) {
  if (code.size() < 2 || code.size() > 64) return false;
  if (!absl::ascii_isupper(static_cast<unsigned char>(code[0])) ||
      !absl::ascii_isupper(static_cast<unsigned char>(code[1]))) {
    return false;
  }
  char prev = 'A';
  for (char c : code) {
    const bool ok = absl::ascii_isupper(static_cast<unsigned char>(c)) ||
                    absl::ascii_isdigit(static_cast<unsigned char>(c)) || c == '-';
    if (!ok || (c == '-' && prev == '-')) return false;
    prev = c;
  }
  return code.back() != '-';
}

bool ValidToken(std::string_view token) {
  if (token.empty() || token.size() > 64) return false;
  for (char c : token) {
    const bool ok = absl::ascii_islower(static_cast<unsigned char>(c)) ||
                    absl::ascii_isdigit(static_cast<unsigned char>(c)) || c == '_' || c == '-';
    if (!ok) return false;
  }
  return true;
}

}  // namespace

absl::StatusOr<RegionTree> RegionTree::Create(std::vector<RegionInfo> regions) {
  RegionTree tree;
  for (size_t i = 0; i < regions.size(); ++i) {
    RegionInfo& r = regions[i];
    if (!ValidCode(r.code)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "region #", i, ": bad code '", r.code,
          "' (want upper-case [A-Z0-9] segments joined by '-', starting with two letters)"));
    }
    if (!r.grid.empty() && !ValidCode(r.grid)) {
      return absl::InvalidArgumentError(absl::StrCat("region ", r.code, ": bad grid '", r.grid, "'"));
    }
    if (r.subject_token.empty()) {
      const size_t dash = r.code.rfind('-');
      r.subject_token = absl::AsciiStrToLower(dash == std::string::npos ? r.code : r.code.substr(dash + 1));
    }
    if (!ValidToken(r.subject_token)) {
      return absl::InvalidArgumentError(absl::StrCat("region ", r.code, ": bad subject token '",
                                                     r.subject_token, "' (want [a-z0-9_-]+)"));
    }
    if (!tree.index_.emplace(r.code, i).second) {
      return absl::InvalidArgumentError(absl::StrCat("region ", r.code, ": duplicate code"));
    }
  }
  tree.nodes_.resize(regions.size());
  for (size_t i = 0; i < regions.size(); ++i) {
    const RegionInfo& r = regions[i];
    if (r.parent.empty()) continue;
    auto it = tree.index_.find(r.parent);
    if (it == tree.index_.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat("region ", r.code, ": unknown parent '", r.parent, "'"));
    }
    tree.nodes_[i].parent = it->second;
    tree.nodes_[it->second].children.push_back(r.code);
  }
  // Cycles: walking up from any node must reach a root within size() steps.
  for (size_t i = 0; i < regions.size(); ++i) {
    size_t at = i;
    int depth = 0;
    while (tree.nodes_[at].parent != SIZE_MAX) {
      at = tree.nodes_[at].parent;
      if (at == i || static_cast<size_t>(++depth) > regions.size()) {
        return absl::InvalidArgumentError(
            absl::StrCat("region ", regions[i].code, ": parent chain forms a cycle"));
      }
    }
    tree.nodes_[i].depth = depth;
  }
  tree.regions_ = std::move(regions);
  for (size_t i = 0; i < tree.regions_.size(); ++i) {
    Node& n = tree.nodes_[i];
    std::sort(n.children.begin(), n.children.end());
    // Chain code .. root, then the grid before the root, then IPCC.
    std::vector<size_t> chain;
    for (size_t at = i; at != SIZE_MAX; at = tree.nodes_[at].parent) chain.push_back(at);
    std::string grid;
    for (size_t at : chain) {
      if (!tree.regions_[at].grid.empty()) {
        grid = tree.regions_[at].grid;
        break;
      }
    }
    auto add = [&n](const std::string& code) {
      if (std::find(n.factor_regions.begin(), n.factor_regions.end(), code) == n.factor_regions.end()) {
        n.factor_regions.push_back(code);
      }
    };
    for (size_t k = 0; k + 1 < chain.size(); ++k) add(tree.regions_[chain[k]].code);
    if (!grid.empty()) add(grid);
    add(tree.regions_[chain.back()].code);
    add(std::string(kDefaultFactorRegion));
  }
  return tree;
}

const RegionInfo* RegionTree::Find(std::string_view code) const {
  auto it = index_.find(AV(code));
  return it == index_.end() ? nullptr : &regions_[it->second];
}

bool RegionTree::Covers(std::string_view ancestor, std::string_view code) const {
  if (ancestor == code) return true;
  auto a = index_.find(AV(ancestor));
  auto c = index_.find(AV(code));
  if (a == index_.end() || c == index_.end()) return false;
  for (size_t at = nodes_[c->second].parent; at != SIZE_MAX; at = nodes_[at].parent) {
    if (at == a->second) return true;
  }
  return false;
}

std::vector<std::string> RegionTree::Ancestry(std::string_view code) const {
  auto it = index_.find(AV(code));
  if (it == index_.end()) return {std::string(code)};
  std::vector<std::string> out;
  for (size_t at = it->second; at != SIZE_MAX; at = nodes_[at].parent) out.push_back(regions_[at].code);
  return out;
}

std::vector<std::string> RegionTree::FactorRegions(std::string_view code) const {
  const std::vector<std::string>* regions = FactorRegionsOf(code);
  if (regions != nullptr) return *regions;
  std::vector<std::string> out{std::string(code)};
  if (code != kDefaultFactorRegion) out.emplace_back(kDefaultFactorRegion);
  return out;
}

const std::vector<std::string>* RegionTree::FactorRegionsOf(std::string_view code) const {
  auto it = index_.find(AV(code));
  return it == index_.end() ? nullptr : &nodes_[it->second].factor_regions;
}

std::vector<std::string> RegionTree::Children(std::string_view code) const {
  auto it = index_.find(AV(code));
  return it == index_.end() ? std::vector<std::string>() : nodes_[it->second].children;
}

int RegionTree::Depth(std::string_view code) const {
  auto it = index_.find(AV(code));
  return it == index_.end() ? -1 : nodes_[it->second].depth;
}

std::string RegionTree::SubjectSuffix(std::string_view code) const {
  auto it = index_.find(AV(code));
  if (it == index_.end()) return "";
  size_t at = it->second;
  if (nodes_[at].depth < 2) return absl::StrCat(regions_[at].subject_token, ".all");
  // Up to the district (depth 3) or stay at the city (depth 2).
  while (nodes_[at].depth > 3) at = nodes_[at].parent;
  if (nodes_[at].depth == 2) return absl::StrCat(regions_[at].subject_token, ".all");
  const size_t city = nodes_[at].parent;
  return absl::StrCat(regions_[city].subject_token, ".", regions_[at].subject_token);
}

}  // namespace cityos::carbon
