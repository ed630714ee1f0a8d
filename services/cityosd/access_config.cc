#include "access_config.h"

#include <algorithm>
#include <cctype>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <set>

#include "absl/strings/str_cat.h"
#include "cityos/status.h"

namespace cityos {
namespace {

bool IsJurisdiction(const std::string& s) {
  return s.size() == 2 && std::isupper(static_cast<unsigned char>(s[0])) &&
         std::isupper(static_cast<unsigned char>(s[1]));
}

}  // namespace

absl::StatusOr<PolicyNodeConfig> ParsePolicyConfig(const ConfigNode& section) {
  CITYOS_RETURN_IF_ERROR(section.CheckKeys(
      {"files", "purposes", "jurisdiction", "org_jurisdictions", "max_emergency",
       "cache_capacity"}));
  PolicyNodeConfig config;
  CITYOS_ASSIGN_OR_RETURN(std::vector<std::string> files, section.GetStringList("files", {}));
  // Relative paths are relative to the config file's directory, so a node
  // finds its policies wherever it is started from.
  std::filesystem::path base = std::filesystem::absolute(section.File()).parent_path();
  for (const std::string& f : files) {
    std::filesystem::path p = std::filesystem::path(f).is_absolute()
                                  ? std::filesystem::path(f).lexically_normal()
                                  : (base / f).lexically_normal();
    std::error_code ec;
    if (!std::filesystem::exists(p, ec)) {
      return section.Error("files", absl::StrCat("\"", f, "\" does not exist (resolved to ",
                                                 p.string(), ")"));
    }
    config.files.push_back(p.string());
  }
  CITYOS_ASSIGN_OR_RETURN(std::vector<ConfigNode> purposes, section.ElementsOrEmpty("purposes"));
  for (const ConfigNode& p : purposes) {
    if (!p.IsMap()) return p.Error("", "expected a map with keys name, description, profiling");
    CITYOS_RETURN_IF_ERROR(p.CheckKeys({"name", "description", "profiling"}));
    PurposeInfo info;
    CITYOS_ASSIGN_OR_RETURN(info.name, p.GetString("name"));
    CITYOS_ASSIGN_OR_RETURN(info.description, p.GetString("description", ""));
    CITYOS_ASSIGN_OR_RETURN(info.profiling, p.GetBool("profiling", false));
    config.purposes.push_back(std::move(info));
  }
  CITYOS_ASSIGN_OR_RETURN(config.jurisdiction, section.GetString("jurisdiction", ""));
  if (!config.jurisdiction.empty() && !IsJurisdiction(config.jurisdiction)) {
    return section.Error("jurisdiction",
                         absl::StrCat("\"", config.jurisdiction,
                                      "\" is not an ISO 3166-1 alpha-2 code such as JP or CN"));
  }
  CITYOS_ASSIGN_OR_RETURN(ConfigNode orgs, section.ChildOrEmpty("org_jurisdictions"));
  if (!orgs.IsMap()) return section.Error("org_jurisdictions", "expected a map org: code");
  for (const std::string& org : orgs.Keys()) {
    CITYOS_ASSIGN_OR_RETURN(std::string code, orgs.GetString(org));
    if (!IsJurisdiction(code)) {
      return orgs.Error(org, absl::StrCat("\"", code,
                                          "\" is not an ISO 3166-1 alpha-2 code such as JP"));
    }
    config.org_jurisdictions.emplace_back(org, code);
  }
  CITYOS_ASSIGN_OR_RETURN(config.max_emergency,
                          section.GetDuration("max_emergency", absl::Hours(72)));
  if (config.max_emergency <= absl::ZeroDuration()) {
    return section.Error("max_emergency", "must be positive");
  }
  CITYOS_ASSIGN_OR_RETURN(int64_t cache, section.GetInt("cache_capacity", 1 << 16));
  if (cache < 0) return section.Error("cache_capacity", "must not be negative");
  config.cache_capacity = static_cast<size_t>(cache);
  return config;
}

absl::StatusOr<AuditNodeConfig> ParseAuditConfig(const ConfigNode& section) {
  CITYOS_RETURN_IF_ERROR(
      section.CheckKeys({"signing_key", "checkpoint_every", "checkpoint_interval"}));
  AuditNodeConfig config;
  CITYOS_ASSIGN_OR_RETURN(config.signing_key, section.GetString("signing_key", ""));
  if (!config.signing_key.empty()) {
    config.signing_key =
        std::filesystem::absolute(config.signing_key).lexically_normal().string();
  }
  CITYOS_ASSIGN_OR_RETURN(int64_t every, section.GetInt("checkpoint_every", 1024));
  if (every < 1) return section.Error("checkpoint_every", "must be at least 1");
  config.checkpoint_every = static_cast<uint64_t>(every);
  CITYOS_ASSIGN_OR_RETURN(config.checkpoint_interval,
                          section.GetDuration("checkpoint_interval", absl::Seconds(1)));
  if (config.checkpoint_interval < absl::Milliseconds(10)) {
    return section.Error("checkpoint_interval", "must be at least 10ms");
  }
  return config;
}

absl::StatusOr<std::vector<PolicyDocumentText>> ReadPolicyFiles(
    const std::vector<std::string>& files) {
  std::vector<std::string> paths;
  for (const std::string& f : files) {
    std::error_code ec;
    if (std::filesystem::is_directory(f, ec)) {
      std::vector<std::string> inside;
      for (const auto& entry : std::filesystem::directory_iterator(f, ec)) {
        std::string ext = entry.path().extension().string();
        if (entry.is_regular_file() && (ext == ".yaml" || ext == ".yml")) {
          inside.push_back(entry.path().string());
        }
      }
      if (ec) {
        return absl::InvalidArgumentError(
            absl::StrCat("policy.files: ", f, ": cannot be listed: ", ec.message()));
      }
      std::sort(inside.begin(), inside.end());
      paths.insert(paths.end(), inside.begin(), inside.end());
    } else {
      paths.push_back(f);
    }
  }
  std::vector<PolicyDocumentText> docs;
  std::set<std::string> names;
  for (const std::string& p : paths) {
    std::string name = std::filesystem::path(p).filename().string();
    if (!names.insert(name).second) {
      return absl::InvalidArgumentError(absl::StrCat(
          "policy.files: two documents are named \"", name, "\" (", p,
          "): policy documents are identified by file name"));
    }
    std::ifstream in(p, std::ios::binary);
    std::stringstream content;
    if (in.is_open()) content << in.rdbuf();
    if (!in.is_open() || in.bad()) {
      return absl::InvalidArgumentError(
          absl::StrCat("policy.files: ", p, ": cannot be read"));
    }
    docs.push_back(PolicyDocumentText{.name = name, .content = content.str()});
  }
  return docs;
}

}  // namespace cityos
