#include "cityos/plugin.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/strings.h"

namespace cityos {

absl::Status PluginRegistry::Register(std::string name, PluginFactory factory) {
  bool ok = !name.empty() && name.size() <= 64;
  for (char c : name) {
    ok = ok && ((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '-');
  }
  if (!ok) {
    return absl::InvalidArgumentError(absl::StrCat(
        "plug-in name \"", name, "\": must be 1-64 characters of a-z 0-9 _ -"));
  }
  if (!factory) {
    return absl::InvalidArgumentError(absl::StrCat("plug-in \"", name, "\": empty factory"));
  }
  if (factories_.contains(name)) {
    return absl::AlreadyExistsError(
        absl::StrCat("plug-in \"", name, "\" is already registered"));
  }
  factories_.emplace(std::move(name), std::move(factory));
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<ServicePlugin>> PluginRegistry::Create(
    std::string_view name) const {
  auto it = factories_.find(name);
  if (it == factories_.end()) {
    return absl::NotFoundError(absl::StrCat("unknown plug-in \"", AV(name), "\" (known: ",
                                            absl::StrJoin(Names(), ", "), ")"));
  }
  std::unique_ptr<ServicePlugin> plugin = it->second();
  if (plugin == nullptr) {
    return absl::InternalError(absl::StrCat("plug-in \"", AV(name), "\": factory returned null"));
  }
  return plugin;
}

bool PluginRegistry::Contains(std::string_view name) const {
  return factories_.find(name) != factories_.end();
}

std::vector<std::string> PluginRegistry::Names() const {
  std::vector<std::string> names;
  for (const auto& [name, f] : factories_) names.push_back(name);
  return names;
}

}  // namespace cityos
