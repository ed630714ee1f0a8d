// The client context file (cityos/tls.h, docs/security.md).
#include <sys/stat.h>
#include <yaml-cpp/yaml.h>

#include <cstdlib>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "cityos/config.h"
#include "cityos/status.h"
#include "cityos/tls.h"
#include "core/file_util.h"

namespace cityos {

absl::StatusOr<std::string> ClientConfigPath() {
  const char* explicit_path = std::getenv("CITYOS_CONFIG");
  if (explicit_path != nullptr && *explicit_path != '\0')
    return std::string(explicit_path);
  const char* home = std::getenv("HOME");
  if (home == nullptr || *home == '\0') {
    return absl::FailedPreconditionError(
        "neither CITYOS_CONFIG nor HOME is set: no place for the client "
        "context file");
  }
  return (std::filesystem::path(home) / ".config" / "cityos" / "config.yaml")
      .string();
}

absl::StatusOr<ClientConfig> LoadClientConfig(const std::string& path) {
  CITYOS_ASSIGN_OR_RETURN(ConfigNode root, ConfigNode::LoadFile(path));
  ClientConfig config;
  if (root.IsNull()) return config;
  CITYOS_ASSIGN_OR_RETURN(config.current_context,
                          root.GetString("current-context", ""));
  CITYOS_ASSIGN_OR_RETURN(std::vector<ConfigNode> contexts,
                          root.ElementsOrEmpty("contexts"));
  for (const ConfigNode& c : contexts) {
    if (!c.IsMap()) return c.Error("", "expected a map");
    ClientContext ctx;
    CITYOS_ASSIGN_OR_RETURN(ctx.name, c.GetString("name"));
    CITYOS_ASSIGN_OR_RETURN(ctx.endpoint, c.GetString("endpoint"));
    CITYOS_ASSIGN_OR_RETURN(ctx.trust_domain, c.GetString("trust_domain"));
    CITYOS_ASSIGN_OR_RETURN(ctx.ca, c.GetString("ca"));
    CITYOS_ASSIGN_OR_RETURN(ctx.cert, c.GetString("cert"));
    CITYOS_ASSIGN_OR_RETURN(ctx.key, c.GetString("key"));
    CITYOS_ASSIGN_OR_RETURN(ctx.server_id, c.GetString("server_id", ""));
    config.contexts.push_back(std::move(ctx));
  }
  return config;
}

absl::Status SaveClientContext(const std::string& path,
                               const ClientContext& context,
                               bool make_current) {
  namespace fs = std::filesystem;
  YAML::Node root;
  std::error_code ec;
  if (fs::exists(path, ec)) {
    try {
      root = YAML::LoadFile(path);
    } catch (const YAML::Exception& e) {
      return absl::InvalidArgumentError(absl::StrCat(
          path, ": not YAML (", e.what(), "); not overwriting it"));
    }
    if (!root.IsNull() && !root.IsMap()) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": expected a map; not overwriting it"));
    }
  }
  if (root.IsNull()) root = YAML::Node(YAML::NodeType::Map);
  YAML::Node entry(YAML::NodeType::Map);
  entry["name"] = context.name;
  entry["endpoint"] = context.endpoint;
  entry["trust_domain"] = context.trust_domain;
  entry["ca"] = context.ca;
  entry["cert"] = context.cert;
  entry["key"] = context.key;
  if (!context.server_id.empty()) entry["server_id"] = context.server_id;
  YAML::Node contexts(YAML::NodeType::Sequence);
  bool replaced = false;
  if (root["contexts"] && root["contexts"].IsSequence()) {
    for (const YAML::Node& c : root["contexts"]) {
      if (c.IsMap() && c["name"] && c["name"].IsScalar() &&
          c["name"].Scalar() == context.name) {
        contexts.push_back(entry);
        replaced = true;
      } else {
        contexts.push_back(c);
      }
    }
  }
  if (!replaced) contexts.push_back(entry);
  root["contexts"] = contexts;
  if (make_current || !root["current-context"])
    root["current-context"] = context.name;

  // current-context first, then contexts, then anything else, as found.
  YAML::Emitter out;
  out << YAML::BeginMap;
  out << YAML::Key << "current-context" << YAML::Value
      << root["current-context"];
  out << YAML::Key << "contexts" << YAML::Value << root["contexts"];
  for (const auto& kv : root) {
    std::string key = kv.first.as<std::string>();
    if (key == "current-context" || key == "contexts") continue;
    out << YAML::Key << kv.first << YAML::Value << kv.second;
  }
  out << YAML::EndMap;

  fs::path parent = fs::path(path).parent_path();
  if (!parent.empty() && !fs::exists(parent, ec)) {
    fs::create_directories(parent, ec);
    if (ec) {
      return absl::FailedPreconditionError(
          absl::StrCat("cannot create ", parent.string(), ": ", ec.message()));
    }
    ::chmod(parent.c_str(), 0700);
  }
  return WriteFileAtomically(
      path,
      absl::StrCat(
          "# cityos client contexts (see docs/security.md). Written by cityosd "
          "`tls: auto` and cityosctl.\n",
          out.c_str(), "\n"),
      0600);
}

TlsConfig TlsConfigFor(const ClientContext& context) {
  TlsConfig tls;
  tls.ca_file = context.ca;
  tls.cert_file = context.cert;
  tls.key_file = context.key;
  tls.trust_domain = context.trust_domain;
  return tls;
}

}  // namespace cityos
