// File: cityos/principal.h
//
// Who is calling: an authenticated service or person of an organisation,
// named by a SPIFFE-style id:
//
//   spiffe://<trust-domain>/org/<org>/svc/<name>    a service
//   spiffe://<trust-domain>/org/<org>/user/<id>     a person or an app
//
//   CITYOS_ASSIGN_OR_RETURN(Principal p,
//       Principal::FromSpiffeId("spiffe://quzhou.city/org/grid/svc/meters"));
//   p.org == "grid"; p.kind == PrincipalKind::kService; p.name == "meters"
//
// In the mesh the principal comes from the peer's verified client certificate;
// in-process callers construct one for themselves.
#ifndef CITYOS_PRINCIPAL_H_
#define CITYOS_PRINCIPAL_H_

#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace cityos {

enum class PrincipalKind { kService, kUser };

struct Principal {
  std::string trust_domain;
  std::string org;
  PrincipalKind kind = PrincipalKind::kService;
  std::string name;
  // Roles granted by the registry config or the certificate, e.g. "admin",
  // "disaster-authority", "data-ethics-board".
  std::vector<std::string> roles;

  // "spiffe://<trust_domain>/org/<org>/svc|user/<name>".
  std::string SpiffeId() const;
  bool HasRole(std::string_view role) const;

  // Parses a SPIFFE id of the form above. INVALID_ARGUMENT naming the part
  // that is wrong. Segments are 1-128 characters of [A-Za-z0-9._-].
  static absl::StatusOr<Principal> FromSpiffeId(std::string_view uri);
  // The node itself, for in-process work done on its own behalf.
  static Principal Node(std::string_view trust_domain, std::string_view node_name);

  bool operator==(const Principal&) const = default;
};

}  // namespace cityos

#endif  // CITYOS_PRINCIPAL_H_
