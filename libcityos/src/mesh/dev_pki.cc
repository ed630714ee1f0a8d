// The development PKI of `node.tls: auto` (cityos/ca.h).
#include <arpa/inet.h>

#include <algorithm>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "cityos/ca.h"
#include "cityos/logging.h"
#include "cityos/status.h"
#include "core/file_util.h"

namespace cityos {
namespace {

namespace fs = std::filesystem;

constexpr absl::Duration kRenewBefore = absl::Hours(24 * 7);
constexpr absl::Duration kLeafValidity = absl::Hours(24 * 365);

bool IsIp(const std::string& host) {
  unsigned char buf[16];
  return inet_pton(AF_INET, host.c_str(), buf) == 1 ||
         inet_pton(AF_INET6, host.c_str(), buf) == 1;
}

bool IsWildcard(const std::string& host) {
  return host.empty() || host == "0.0.0.0" || host == "::" || host == "[::]";
}

// The certificate at `path` if it is readable, issued by `ca` and valid for
// at least kRenewBefore more.
std::optional<CertificateInfo> Reusable(const std::string& path,
                                        const CertificateInfo& ca) {
  auto pem = ReadFileToString(path);
  if (!pem.ok()) return std::nullopt;
  auto info = ParseCertificatePem(*pem);
  if (!info.ok() || info->issuer != ca.subject) return std::nullopt;
  if (info->not_after - kRenewBefore < absl::Now()) return std::nullopt;
  return *info;
}

}  // namespace

absl::StatusOr<DevPki> EnsureDevPki(const DevPkiOptions& options) {
  std::string dir = fs::absolute(options.dir).lexically_normal().string();
  std::string ca_dir = (fs::path(dir) / "ca").string();
  DevPki pki;
  std::unique_ptr<CityCa> ca;
  if (fs::exists(fs::path(ca_dir) / "ca.pem")) {
    CITYOS_ASSIGN_OR_RETURN(ca, CityCa::Open(ca_dir));
    if (ca->trust_domain() != options.trust_domain) {
      return absl::FailedPreconditionError(
          absl::StrCat(ca_dir, " holds a dev CA for trust domain \"",
                       ca->trust_domain(), "\", not \"", options.trust_domain,
                       "\"; remove ", dir, " to start over"));
    }
  } else {
    CITYOS_ASSIGN_OR_RETURN(ca, CityCa::Create(ca_dir, options.trust_domain));
    pki.created = true;
  }
  CITYOS_ASSIGN_OR_RETURN(std::string ca_pem, ReadFileToString(ca->ca_file()));
  CITYOS_ASSIGN_OR_RETURN(CertificateInfo ca_info, ParseCertificatePem(ca_pem));

  pki.ca_file = ca->ca_file();
  pki.crl_file = ca->crl_file();
  std::string node_out = (fs::path(dir) / "node").string();
  std::string admin_out = (fs::path(dir) / "admin").string();
  pki.node_cert_file = node_out + ".pem";
  pki.node_key_file = node_out + ".key";
  pki.admin_cert_file = admin_out + ".pem";
  pki.admin_key_file = admin_out + ".key";

  CertSpec node{.org = options.org,
                .kind = PrincipalKind::kService,
                .name = "cityosd",
                .roles = {"node"},
                .dns_names = {"localhost"},
                .ip_addresses = {"127.0.0.1"},
                .validity = kLeafValidity,
                .out = node_out};
  std::string host = options.listen_host;
  if (host.size() > 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  if (!IsWildcard(host)) {
    auto& list = IsIp(host) ? node.ip_addresses : node.dns_names;
    if (std::find(list.begin(), list.end(), host) == list.end())
      list.push_back(host);
  }
  Principal node_principal{.trust_domain = options.trust_domain,
                           .org = options.org,
                           .kind = PrincipalKind::kService,
                           .name = "cityosd"};
  pki.node_spiffe_id = node_principal.SpiffeId();

  std::optional<CertificateInfo> have_node =
      Reusable(pki.node_cert_file, ca_info);
  bool node_ok =
      have_node.has_value() && fs::exists(pki.node_key_file) &&
      have_node->uris == std::vector<std::string>{pki.node_spiffe_id};
  if (node_ok) {
    for (const std::string& d : node.dns_names) {
      node_ok &= std::count(have_node->dns_names.begin(),
                            have_node->dns_names.end(), d) > 0;
    }
    for (const std::string& ip : node.ip_addresses) {
      node_ok &= std::count(have_node->ip_addresses.begin(),
                            have_node->ip_addresses.end(), ip) > 0;
    }
  }
  if (!node_ok) {
    CITYOS_RETURN_IF_ERROR(ca->Issue(node).status());
    pki.created = true;
  }

  // The development city's operator: runs the bus, loads policies, reads the
  // audit, may declare emergencies and administers the carbon account. An
  // admin certificate from an older version with other roles is re-issued.
  const std::vector<std::string> admin_roles = {"admin",         "policy-admin",  "auditor",
                                                "disaster-authority", "carbon-viewer",
                                                "carbon-admin"};
  std::optional<CertificateInfo> have_admin =
      Reusable(pki.admin_cert_file, ca_info);
  if (!have_admin.has_value() || !fs::exists(pki.admin_key_file) ||
      have_admin->roles != admin_roles) {
    CITYOS_RETURN_IF_ERROR(ca->Issue({.org = options.org,
                                      .kind = PrincipalKind::kUser,
                                      .name = "admin",
                                      .roles = admin_roles,
                                      .validity = kLeafValidity,
                                      .out = admin_out})
                               .status());
    pki.created = true;
  }
  return pki;
}

}  // namespace cityos
