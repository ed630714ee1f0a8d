// File: cityos/config.h
//
// YAML configuration with errors that name the file, line, column and key
// path. Used for the node config and for every plug-in's section:
//
//   CITYOS_ASSIGN_OR_RETURN(ConfigNode root, ConfigNode::LoadFile(path));
//   CITYOS_RETURN_IF_ERROR(root.CheckKeys({"node", "bus", "plugins"}));
//   CITYOS_ASSIGN_OR_RETURN(ConfigNode node, root.Child("node"));
//   CITYOS_ASSIGN_OR_RETURN(std::string listen, node.GetString("listen"));
//   // error: "cityosd.yaml:3:11: node.listen: expected a string, got a map"
#ifndef CITYOS_CONFIG_H_
#define CITYOS_CONFIG_H_

#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace cityos {

// An immutable view of one node of a YAML document, remembering where it came
// from. Cheap to copy (shares the document). Thread-compatible.
class ConfigNode {
 public:
  // Parses a YAML file. NOT_FOUND if it cannot be read; INVALID_ARGUMENT with
  // "file:line:col: ..." for syntax errors.
  static absl::StatusOr<ConfigNode> LoadFile(const std::string& path);
  // Parses YAML text; `name` stands for the file name in messages.
  static absl::StatusOr<ConfigNode> LoadString(std::string_view yaml,
                                               std::string_view name);
  // An empty map (for absent optional sections).
  static ConfigNode EmptyMap(std::string_view name, std::string_view path);

  ConfigNode(const ConfigNode&);
  ConfigNode& operator=(const ConfigNode&);
  ~ConfigNode();

  bool IsMap() const;
  bool IsSequence() const;
  bool IsNull() const;
  // True if this is a map with `key` present and not null.
  bool Has(std::string_view key) const;
  // Keys of a map, in document order.
  std::vector<std::string> Keys() const;

  // INVALID_ARGUMENT naming the first key that is not in `allowed` (catches
  // typos), or if this is not a map.
  absl::Status CheckKeys(std::initializer_list<std::string_view> allowed) const;

  // A required child that must be a map.
  absl::StatusOr<ConfigNode> Child(std::string_view key) const;
  // An optional child map: an empty map if absent.
  absl::StatusOr<ConfigNode> ChildOrEmpty(std::string_view key) const;
  // A required (or, with the second form, optional) sequence; its elements.
  absl::StatusOr<std::vector<ConfigNode>> Elements(std::string_view key) const;
  absl::StatusOr<std::vector<ConfigNode>> ElementsOrEmpty(
      std::string_view key) const;

  // Scalars. The one-argument forms require the key; the two-argument forms
  // return `fallback` when it is absent. A present key of the wrong type is
  // always an error.
  absl::StatusOr<std::string> GetString(std::string_view key) const;
  absl::StatusOr<std::string> GetString(std::string_view key,
                                        std::string_view fallback) const;
  absl::StatusOr<int64_t> GetInt(std::string_view key) const;
  absl::StatusOr<int64_t> GetInt(std::string_view key, int64_t fallback) const;
  absl::StatusOr<double> GetDouble(std::string_view key) const;
  absl::StatusOr<double> GetDouble(std::string_view key, double fallback) const;
  absl::StatusOr<bool> GetBool(std::string_view key) const;
  absl::StatusOr<bool> GetBool(std::string_view key, bool fallback) const;
  // Durations like "250ms", "30s", "1h30m" (absl::ParseDuration syntax).
  absl::StatusOr<absl::Duration> GetDuration(std::string_view key) const;
  absl::StatusOr<absl::Duration> GetDuration(std::string_view key,
                                             absl::Duration fallback) const;
  // Byte sizes: an integer, or with a suffix KiB, MiB, GiB ("64MiB").
  absl::StatusOr<uint64_t> GetBytes(std::string_view key) const;
  absl::StatusOr<uint64_t> GetBytes(std::string_view key,
                                    uint64_t fallback) const;
  // A sequence of strings (a single string is not accepted).
  absl::StatusOr<std::vector<std::string>> GetStringList(
      std::string_view key) const;
  absl::StatusOr<std::vector<std::string>> GetStringList(
      std::string_view key, std::vector<std::string> fallback) const;

  // This node as a scalar string (for sequences of scalars).
  absl::StatusOr<std::string> AsString() const;

  // "file:line:col" of this node (1-based).
  std::string Where() const;
  // Dotted key path of this node from the root, e.g. "plugins[1].config".
  const std::string& Path() const;
  // File name (or the name given to LoadString).
  const std::string& File() const;
  // INVALID_ARGUMENT "<file:line:col>: <path>.<key>: <message>" pointing at
  // `key` if present, else at this node.
  absl::Status Error(std::string_view key, std::string_view message) const;

 private:
  struct Impl;
  explicit ConfigNode(std::shared_ptr<const Impl> impl);
  std::shared_ptr<const Impl> impl_;
};

}  // namespace cityos

#endif  // CITYOS_CONFIG_H_
