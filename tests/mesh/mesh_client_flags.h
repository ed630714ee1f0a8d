// The connection flags shared by the mesh test helper binaries
// (mesh_vendor, mesh_consumer): where the node is and which certificate to
// present.
#ifndef CITYOS_TESTS_MESH_MESH_CLIENT_FLAGS_H_
#define CITYOS_TESTS_MESH_MESH_CLIENT_FLAGS_H_

#include <CLI/CLI.hpp>
#include <optional>
#include <string>

#include "cityos/tls.h"

namespace cityos::testing {

struct MeshClientFlags {
  std::string endpoint;
  TlsConfig tls;
  std::string server_id;  // optional: pin the node's SPIFFE id

  // Registers --endpoint, --ca, --cert, --key, --trust-domain, --server-id.
  void AddTo(CLI::App& app) {
    app.add_option("--endpoint", endpoint)->required();
    app.add_option("--ca", tls.ca_file)->required();
    app.add_option("--cert", tls.cert_file)->required();
    app.add_option("--key", tls.key_file)->required();
    app.add_option("--trust-domain", tls.trust_domain)->required();
    app.add_option("--server-id", server_id);
  }
  std::optional<std::string> pin() const {
    if (server_id.empty()) return std::nullopt;
    return server_id;
  }
};

}  // namespace cityos::testing

#endif  // CITYOS_TESTS_MESH_MESH_CLIENT_FLAGS_H_
