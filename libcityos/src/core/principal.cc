#include "cityos/principal.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "core/strings.h"

namespace cityos {
namespace {

bool ValidSegment(std::string_view s) {
  if (s.empty() || s.size() > 128) return false;
  return std::all_of(s.begin(), s.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           c == '.' || c == '_' || c == '-';
  });
}

}  // namespace

std::string Principal::SpiffeId() const {
  return absl::StrCat("spiffe://", trust_domain, "/org/", org,
                      kind == PrincipalKind::kService ? "/svc/" : "/user/", name);
}

bool Principal::HasRole(std::string_view role) const {
  return std::find(roles.begin(), roles.end(), role) != roles.end();
}

absl::StatusOr<Principal> Principal::FromSpiffeId(std::string_view uri) {
  auto bad = [&](std::string_view what) {
    return absl::InvalidArgumentError(absl::StrCat(
        "SPIFFE id \"", AV(uri), "\": ", AV(what),
        " (expected spiffe://<trust-domain>/org/<org>/svc|user/<name>)"));
  };
  constexpr std::string_view kScheme = "spiffe://";
  if (uri.substr(0, kScheme.size()) != kScheme) return bad("scheme is not spiffe://");
  std::string_view rest = uri.substr(kScheme.size());
  std::vector<std::string_view> parts;
  size_t start = 0;
  while (true) {
    size_t slash = rest.find('/', start);
    parts.push_back(rest.substr(start, slash == std::string_view::npos ? slash : slash - start));
    if (slash == std::string_view::npos) break;
    start = slash + 1;
  }
  if (parts.size() != 5) return bad("wrong number of path segments");
  if (!ValidSegment(parts[0])) return bad("trust domain is empty or has illegal characters");
  if (parts[1] != "org") return bad("second segment must be \"org\"");
  if (!ValidSegment(parts[2])) return bad("org is empty or has illegal characters");
  Principal p;
  if (parts[3] == "svc") {
    p.kind = PrincipalKind::kService;
  } else if (parts[3] == "user") {
    p.kind = PrincipalKind::kUser;
  } else {
    return bad("fourth segment must be \"svc\" or \"user\"");
  }
  if (!ValidSegment(parts[4])) return bad("name is empty or has illegal characters");
  p.trust_domain = std::string(parts[0]);
  p.org = std::string(parts[2]);
  p.name = std::string(parts[4]);
  return p;
}

Principal Principal::Node(std::string_view trust_domain, std::string_view node_name) {
  Principal p;
  p.trust_domain = std::string(trust_domain);
  p.org = "node";
  p.kind = PrincipalKind::kService;
  p.name = std::string(node_name);
  p.roles = {"node"};
  return p;
}

}  // namespace cityos
