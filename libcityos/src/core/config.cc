#include "cityos/config.h"

#include <yaml-cpp/yaml.h>

#include <fstream>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/match.h"
#include "cityos/status.h"
#include "core/strings.h"

namespace cityos {

struct ConfigNode::Impl {
  YAML::Node node;
  std::string file;
  std::string path;
  // Where the node sits; for absent children, the parent's mark.
  YAML::Mark mark;
};

namespace {

std::string KindName(const YAML::Node& n) {
  switch (n.Type()) {
    case YAML::NodeType::Null:
      return "null";
    case YAML::NodeType::Scalar:
      return absl::StrCat("\"", n.Scalar(), "\"");
    case YAML::NodeType::Sequence:
      return "a list";
    case YAML::NodeType::Map:
      return "a map";
    default:
      return "nothing";
  }
}

std::string JoinPath(const std::string& base, std::string_view key) {
  if (base.empty()) return std::string(key);
  return absl::StrCat(base, ".", AV(key));
}

std::string FormatMark(const std::string& file, const YAML::Mark& m) {
  if (m.is_null()) return file;
  return absl::StrCat(file, ":", m.line + 1, ":", m.column + 1);
}

}  // namespace

ConfigNode::ConfigNode(std::shared_ptr<const Impl> impl) : impl_(std::move(impl)) {}
ConfigNode::ConfigNode(const ConfigNode&) = default;
ConfigNode& ConfigNode::operator=(const ConfigNode&) = default;
ConfigNode::~ConfigNode() = default;

absl::StatusOr<ConfigNode> ConfigNode::LoadString(std::string_view yaml,
                                                  std::string_view name) {
  auto impl = std::make_shared<Impl>();
  impl->file = std::string(name);
  try {
    impl->node = YAML::Load(std::string(yaml));
  } catch (const YAML::ParserException& e) {
    return absl::InvalidArgumentError(
        absl::StrCat(FormatMark(impl->file, e.mark), ": YAML syntax error: ", e.msg));
  }
  if (impl->node.IsNull()) impl->node = YAML::Node(YAML::NodeType::Map);
  impl->mark = impl->node.Mark();
  if (!impl->node.IsMap()) {
    return absl::InvalidArgumentError(absl::StrCat(
        FormatMark(impl->file, impl->mark), ": expected a map at the top level, got ",
        KindName(impl->node)));
  }
  return ConfigNode(std::move(impl));
}

absl::StatusOr<ConfigNode> ConfigNode::LoadFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) {
    return absl::NotFoundError(absl::StrCat("config file ", path, ": cannot be read"));
  }
  std::stringstream ss;
  ss << in.rdbuf();
  return LoadString(ss.str(), path);
}

ConfigNode ConfigNode::EmptyMap(std::string_view name, std::string_view path) {
  auto impl = std::make_shared<Impl>();
  impl->node = YAML::Node(YAML::NodeType::Map);
  impl->file = std::string(name);
  impl->path = std::string(path);
  return ConfigNode(std::move(impl));
}

bool ConfigNode::IsMap() const { return impl_->node.IsMap(); }
bool ConfigNode::IsSequence() const { return impl_->node.IsSequence(); }
bool ConfigNode::IsNull() const { return impl_->node.IsNull(); }

bool ConfigNode::Has(std::string_view key) const {
  if (!impl_->node.IsMap()) return false;
  const YAML::Node& n = impl_->node;
  YAML::Node child = n[std::string(key)];
  return child.IsDefined() && !child.IsNull();
}

std::vector<std::string> ConfigNode::Keys() const {
  std::vector<std::string> keys;
  if (!impl_->node.IsMap()) return keys;
  for (const auto& kv : impl_->node) keys.push_back(kv.first.as<std::string>());
  return keys;
}

absl::Status ConfigNode::CheckKeys(
    std::initializer_list<std::string_view> allowed) const {
  if (!impl_->node.IsMap()) {
    return absl::InvalidArgumentError(absl::StrCat(
        Where(), ": ", impl_->path.empty() ? "(top level)" : impl_->path,
        ": expected a map, got ", KindName(impl_->node)));
  }
  for (const auto& kv : impl_->node) {
    std::string key = kv.first.as<std::string>();
    bool ok = false;
    for (std::string_view a : allowed) ok = ok || a == key;
    if (!ok) {
      return absl::InvalidArgumentError(absl::StrCat(
          FormatMark(impl_->file, kv.first.Mark()), ": ", JoinPath(impl_->path, key),
          ": unknown key (expected one of: ",
          absl::StrJoin(std::vector<std::string>(allowed.begin(), allowed.end()), ", "), ")"));
    }
  }
  return absl::OkStatus();
}

absl::Status ConfigNode::Error(std::string_view key, std::string_view message) const {
  YAML::Mark mark = impl_->mark;
  std::string path = impl_->path;
  if (!key.empty()) {
    path = JoinPath(path, key);
    if (impl_->node.IsMap()) {
      for (const auto& kv : impl_->node) {
        if (kv.first.as<std::string>() == key) {
          mark = kv.second.IsNull() ? kv.first.Mark() : kv.second.Mark();
          break;
        }
      }
    }
  }
  return absl::InvalidArgumentError(absl::StrCat(
      FormatMark(impl_->file, mark), ": ", path.empty() ? "(top level)" : path, ": ",
      AV(message)));
}

std::string ConfigNode::Where() const { return FormatMark(impl_->file, impl_->mark); }
const std::string& ConfigNode::Path() const { return impl_->path; }
const std::string& ConfigNode::File() const { return impl_->file; }

namespace {

// Looks up `key` in a map node; returns null node when absent.
YAML::Node Lookup(const YAML::Node& map, std::string_view key) {
  if (!map.IsMap()) return YAML::Node();
  const YAML::Node& m = map;
  YAML::Node n = m[std::string(key)];
  return n.IsDefined() ? n : YAML::Node();
}

}  // namespace

absl::StatusOr<ConfigNode> ConfigNode::Child(std::string_view key) const {
  YAML::Node n = Lookup(impl_->node, key);
  if (!n.IsDefined() || n.IsNull()) return Error(key, "required key is missing");
  if (!n.IsMap()) return Error(key, absl::StrCat("expected a map, got ", KindName(n)));
  auto impl = std::make_shared<Impl>();
  impl->node = n;
  impl->file = impl_->file;
  impl->path = JoinPath(impl_->path, key);
  impl->mark = n.Mark();
  return ConfigNode(std::move(impl));
}

absl::StatusOr<ConfigNode> ConfigNode::ChildOrEmpty(std::string_view key) const {
  if (!Has(key)) {
    auto impl = std::make_shared<Impl>();
    impl->node = YAML::Node(YAML::NodeType::Map);
    impl->file = impl_->file;
    impl->path = JoinPath(impl_->path, key);
    impl->mark = impl_->mark;
    return ConfigNode(std::move(impl));
  }
  return Child(key);
}

absl::StatusOr<std::vector<ConfigNode>> ConfigNode::Elements(std::string_view key) const {
  YAML::Node n = Lookup(impl_->node, key);
  if (!n.IsDefined() || n.IsNull()) return Error(key, "required key is missing");
  if (!n.IsSequence()) return Error(key, absl::StrCat("expected a list, got ", KindName(n)));
  std::vector<ConfigNode> out;
  std::string base = JoinPath(impl_->path, key);
  for (size_t i = 0; i < n.size(); ++i) {
    auto impl = std::make_shared<Impl>();
    impl->node = n[i];
    impl->file = impl_->file;
    impl->path = absl::StrCat(base, "[", i, "]");
    impl->mark = impl->node.Mark();
    out.push_back(ConfigNode(std::move(impl)));
  }
  return out;
}

absl::StatusOr<std::vector<ConfigNode>> ConfigNode::ElementsOrEmpty(
    std::string_view key) const {
  if (!Has(key)) return std::vector<ConfigNode>{};
  return Elements(key);
}

absl::StatusOr<std::string> ConfigNode::AsString() const {
  if (!impl_->node.IsScalar()) {
    return absl::InvalidArgumentError(absl::StrCat(
        Where(), ": ", impl_->path, ": expected a string, got ", KindName(impl_->node)));
  }
  return impl_->node.Scalar();
}

absl::StatusOr<std::string> ConfigNode::GetString(std::string_view key) const {
  YAML::Node n = Lookup(impl_->node, key);
  if (!n.IsDefined() || n.IsNull()) return Error(key, "required key is missing");
  if (!n.IsScalar()) return Error(key, absl::StrCat("expected a string, got ", KindName(n)));
  return n.Scalar();
}

absl::StatusOr<std::string> ConfigNode::GetString(std::string_view key,
                                                  std::string_view fallback) const {
  if (!Has(key)) return std::string(fallback);
  return GetString(key);
}

absl::StatusOr<int64_t> ConfigNode::GetInt(std::string_view key) const {
  CITYOS_ASSIGN_OR_RETURN(std::string s, GetString(key));
  int64_t v;
  if (!absl::SimpleAtoi(s, &v)) {
    return Error(key, absl::StrCat("expected an integer, got \"", s, "\""));
  }
  return v;
}

absl::StatusOr<int64_t> ConfigNode::GetInt(std::string_view key, int64_t fallback) const {
  if (!Has(key)) return fallback;
  return GetInt(key);
}

absl::StatusOr<double> ConfigNode::GetDouble(std::string_view key) const {
  CITYOS_ASSIGN_OR_RETURN(std::string s, GetString(key));
  double v;
  if (!absl::SimpleAtod(s, &v)) {
    return Error(key, absl::StrCat("expected a number, got \"", s, "\""));
  }
  return v;
}

absl::StatusOr<double> ConfigNode::GetDouble(std::string_view key, double fallback) const {
  if (!Has(key)) return fallback;
  return GetDouble(key);
}

absl::StatusOr<bool> ConfigNode::GetBool(std::string_view key) const {
  CITYOS_ASSIGN_OR_RETURN(std::string s, GetString(key));
  std::string l = absl::AsciiStrToLower(s);
  if (l == "true" || l == "yes" || l == "on") return true;
  if (l == "false" || l == "no" || l == "off") return false;
  return Error(key, absl::StrCat("expected true or false, got \"", s, "\""));
}

absl::StatusOr<bool> ConfigNode::GetBool(std::string_view key, bool fallback) const {
  if (!Has(key)) return fallback;
  return GetBool(key);
}

absl::StatusOr<absl::Duration> ConfigNode::GetDuration(std::string_view key) const {
  CITYOS_ASSIGN_OR_RETURN(std::string s, GetString(key));
  absl::Duration d;
  if (!absl::ParseDuration(s, &d) || d < absl::ZeroDuration()) {
    return Error(key, absl::StrCat("expected a duration like \"250ms\", \"30s\" or "
                                   "\"1h30m\", got \"", s, "\""));
  }
  return d;
}

absl::StatusOr<absl::Duration> ConfigNode::GetDuration(std::string_view key,
                                                       absl::Duration fallback) const {
  if (!Has(key)) return fallback;
  return GetDuration(key);
}

absl::StatusOr<uint64_t> ConfigNode::GetBytes(std::string_view key) const {
  CITYOS_ASSIGN_OR_RETURN(std::string s, GetString(key));
  absl::string_view num = absl::StripAsciiWhitespace(s);
  uint64_t mult = 1;
  struct Suffix {
    absl::string_view text;
    uint64_t mult;
  };
  for (const Suffix& suf : {Suffix{"KiB", 1ull << 10}, Suffix{"MiB", 1ull << 20},
                            Suffix{"GiB", 1ull << 30}, Suffix{"TiB", 1ull << 40}}) {
    if (absl::EndsWith(num, suf.text)) {
      mult = suf.mult;
      num.remove_suffix(suf.text.size());
      num = absl::StripAsciiWhitespace(num);
      break;
    }
  }
  uint64_t v;
  if (!absl::SimpleAtoi(num, &v) || (v != 0 && mult > UINT64_MAX / v)) {
    return Error(key, absl::StrCat("expected a byte size like 1048576 or \"64MiB\", got \"",
                                   s, "\""));
  }
  return v * mult;
}

absl::StatusOr<uint64_t> ConfigNode::GetBytes(std::string_view key,
                                              uint64_t fallback) const {
  if (!Has(key)) return fallback;
  return GetBytes(key);
}

absl::StatusOr<std::vector<std::string>> ConfigNode::GetStringList(
    std::string_view key) const {
  YAML::Node n = Lookup(impl_->node, key);
  if (!n.IsDefined() || n.IsNull()) return Error(key, "required key is missing");
  if (!n.IsSequence()) {
    return Error(key, absl::StrCat("expected a list of strings, got ", KindName(n)));
  }
  std::vector<std::string> out;
  for (size_t i = 0; i < n.size(); ++i) {
    if (!n[i].IsScalar()) {
      return Error(key, absl::StrCat("element ", i, ": expected a string, got ",
                                     KindName(n[i])));
    }
    out.push_back(n[i].Scalar());
  }
  return out;
}

absl::StatusOr<std::vector<std::string>> ConfigNode::GetStringList(
    std::string_view key, std::vector<std::string> fallback) const {
  if (!Has(key)) return fallback;
  return GetStringList(key);
}

}  // namespace cityos
