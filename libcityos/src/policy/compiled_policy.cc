#include "policy/compiled_policy.h"

#include <algorithm>
#include <cctype>
#include <tuple>
#include <utility>

#include "absl/container/flat_hash_set.h"
#include "absl/hash/hash.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "cityos/proto_time.h"
#include "cityos/subject.h"
#include "core/strings.h"
#include "policy/geo.h"
#include "yaml-cpp/yaml.h"

namespace cityos::policy_internal {
namespace {

using exchange::v1::Obligation;
using exchange::v1::PolicyError;

bool IsIdChar(char c) {
  return std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' ||
         c == '-';
}

bool ValidRuleId(std::string_view s) {
  if (s.empty() || s.size() > 128) return false;
  return std::all_of(s.begin(), s.end(), IsIdChar);
}

bool ValidCategoryName(std::string_view s) {
  if (s.empty() || s.size() > 64) return false;
  return std::all_of(s.begin(), s.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' ||
           c == '_' || c == '-';
  });
}

bool ValidCountryCode(std::string_view s) {
  return s.size() == 2 && std::isupper(static_cast<unsigned char>(s[0])) &&
         std::isupper(static_cast<unsigned char>(s[1]));
}

// "30d", "1h", "15m", "10s", "500ms".
bool ParseDurationText(std::string_view s, absl::Duration* out) {
  size_t i = 0;
  while (i < s.size() && std::isdigit(static_cast<unsigned char>(s[i]))) ++i;
  if (i == 0 || i > 12) return false;
  int64_t n = 0;
  if (!absl::SimpleAtoi(AV(s.substr(0, i)), &n)) return false;
  std::string_view unit = s.substr(i);
  if (unit == "ms")
    *out = absl::Milliseconds(n);
  else if (unit == "s")
    *out = absl::Seconds(n);
  else if (unit == "m")
    *out = absl::Minutes(n);
  else if (unit == "h")
    *out = absl::Hours(n);
  else if (unit == "d")
    *out = absl::Hours(24 * n);
  else
    return false;
  return *out > absl::ZeroDuration();
}

// "HH:MM" -> minutes of the day.
bool ParseClock(std::string_view s, int* minutes) {
  if (s.size() != 5 || s[2] != ':') return false;
  int h = 0, m = 0;
  if (!absl::SimpleAtoi(AV(s.substr(0, 2)), &h) ||
      !absl::SimpleAtoi(AV(s.substr(3, 2)), &m)) {
    return false;
  }
  if (h < 0 || m < 0 || m > 59 || h > 24 || (h == 24 && m != 0)) return false;
  *minutes = h * 60 + m;
  return true;
}

std::string Quote(std::string_view s) {
  return absl::StrCat("\"", AV(s), "\"");
}

// Compiles one document; errors accumulate, compilation goes on after an
// error so that Validate can report them all.
class DocCompiler {
 public:
  DocCompiler(const PolicyDocumentText& doc,
              const std::function<bool(std::string_view)>& known,
              std::vector<PolicyError>* errors)
      : doc_(doc), known_purpose_(known), errors_(errors) {}

  CompiledDocument Run() {
    YAML::Node root;
    try {
      root = YAML::Load(doc_.content);
    } catch (const YAML::ParserException& e) {
      AddError(e.mark, absl::StrCat("YAML syntax error: ", e.msg));
      return {};
    } catch (const YAML::Exception& e) {
      AddError(e.mark, absl::StrCat("YAML error: ", e.msg));
      return {};
    }
    if (!root.IsDefined() || root.IsNull()) {
      AddError(YAML::Mark(), "empty document: expected a map with `rules`");
      return {};
    }
    if (!root.IsMap()) {
      AddError(root.Mark(), "expected a map with `rules` at the top level");
      return {};
    }
    CheckKeys(root, "", {"data_categories", "rules"});
    if (YAML::Node cats = root["data_categories"]; cats && !cats.IsNull()) {
      if (!cats.IsSequence()) {
        AddError(cats.Mark(), "data_categories: expected a list");
      } else {
        for (size_t i = 0; i < cats.size(); ++i) {
          CompileCategory(cats[i], absl::StrCat("data_categories[", i, "]"));
        }
      }
    }
    YAML::Node rules = root["rules"];
    if (!rules || rules.IsNull()) {
      AddError(root.Mark(), "rules: required (a list of rules)");
    } else if (!rules.IsSequence()) {
      AddError(rules.Mark(), "rules: expected a list");
    } else {
      for (size_t i = 0; i < rules.size(); ++i) {
        CompileRule(rules[i], absl::StrCat("rules[", i, "]"));
      }
    }
    return std::move(out_);
  }

 private:
  void AddError(const YAML::Mark& mark, std::string message) {
    PolicyError e;
    e.set_name(doc_.name);
    e.set_line(mark.line >= 0 ? static_cast<uint32_t>(mark.line + 1) : 0);
    e.set_column(mark.column >= 0 ? static_cast<uint32_t>(mark.column + 1) : 0);
    e.set_message(std::move(message));
    errors_->push_back(std::move(e));
  }
  void Err(const YAML::Node& at, const std::string& path,
           std::string_view message) {
    AddError(at.Mark(), absl::StrCat(path, ": ", AV(message)));
  }

  // Rejects keys outside `allowed` (typos must not silently widen a rule).
  void CheckKeys(const YAML::Node& map, const std::string& path,
                 std::initializer_list<std::string_view> allowed) {
    for (const auto& kv : map) {
      std::string key =
          kv.first.IsScalar() ? kv.first.Scalar() : std::string("?");
      if (std::find(allowed.begin(), allowed.end(), key) == allowed.end()) {
        std::vector<std::string> names(allowed.begin(), allowed.end());
        AddError(kv.first.Mark(),
                 absl::StrCat(path.empty() ? "" : absl::StrCat(path, ": "),
                              "unknown key ", Quote(key), " (expected one of ",
                              absl::StrJoin(names, ", "), ")"));
      }
    }
  }

  bool Scalar(const YAML::Node& n, const std::string& path, std::string* out) {
    if (!n.IsScalar()) {
      Err(n, path, "expected a string");
      return false;
    }
    *out = n.Scalar();
    return true;
  }

  // A non-empty list of strings, each checked by `check` (returns an error
  // message or "").
  bool StringList(
      const YAML::Node& n, const std::string& path,
      std::vector<std::string>* out,
      const std::function<std::string(const std::string&)>& check = nullptr) {
    if (!n.IsSequence()) {
      Err(n, path, "expected a list");
      return false;
    }
    if (n.size() == 0) {
      Err(n, path, "must not be empty (leave the key out for `any`)");
      return false;
    }
    bool ok = true;
    for (size_t i = 0; i < n.size(); ++i) {
      std::string v;
      std::string p = absl::StrCat(path, "[", i, "]");
      if (!Scalar(n[i], p, &v)) {
        ok = false;
        continue;
      }
      if (check) {
        std::string msg = check(v);
        if (!msg.empty()) {
          Err(n[i], path, msg);
          ok = false;
          continue;
        }
      }
      out->push_back(std::move(v));
    }
    return ok;
  }

  // A list of names in which the one variable `variable` (e.g.
  // $principal.org) may stand: the names go to `names`, the variable sets
  // `*has_variable`; any other $-name is an error. True when the list is
  // not empty.
  bool NamesOrVariable(const YAML::Node& n, const std::string& path,
                       const std::string& variable, std::vector<std::string>* names,
                       bool* has_variable) {
    std::vector<std::string> all;
    StringList(n, path, &all, [&variable](const std::string& s) {
      return (s[0] != '$' || s == variable)
                 ? std::string()
                 : absl::StrCat("unknown variable ", Quote(s), " (only ", variable, ")");
    });
    for (std::string& s : all) {
      if (s == variable)
        *has_variable = true;
      else
        names->push_back(std::move(s));
    }
    return !all.empty();
  }

  void CompileCategory(const YAML::Node& n, const std::string& path) {
    if (!n.IsMap()) {
      Err(n, path, "expected a map with name, subjects, types");
      return;
    }
    CheckKeys(n, path, {"name", "subjects", "types"});
    DataCategory c;
    if (YAML::Node name = n["name"]; !name) {
      Err(n, path, "name: required");
    } else if (Scalar(name, path + ".name", &c.name) &&
               !ValidCategoryName(c.name)) {
      Err(name, path + ".name",
          absl::StrCat(Quote(c.name), " is not 1-64 of [a-z0-9._-]"));
    }
    if (YAML::Node s = n["subjects"]) {
      StringList(s, path + ".subjects", &c.subjects, [](const std::string& v) {
        absl::Status st = ValidatePattern(v);
        return st.ok() ? std::string() : std::string(st.message());
      });
    }
    if (YAML::Node t = n["types"]) StringList(t, path + ".types", &c.types);
    if (c.subjects.empty() && c.types.empty()) {
      Err(n, path, "needs subjects or types");
    }
    out_.categories.push_back(std::move(c));
  }

  void CompileRule(const YAML::Node& n, const std::string& path) {
    if (!n.IsMap()) {
      Err(n, path, "expected a map (a rule)");
      return;
    }
    CheckKeys(n, path,
              {"id", "description", "effect", "actions", "principal",
               "resource", "purposes", "when", "legal_basis", "cross_border",
               "product", "obligations"});
    CompiledRule r;
    r.document = doc_.name;
    r.line = static_cast<uint32_t>(n.Mark().line + 1);
    bool ok = true;
    std::string rpath = path;
    if (YAML::Node id = n["id"]; !id) {
      Err(n, path, "id: required");
      ok = false;
    } else if (Scalar(id, path + ".id", &r.id)) {
      if (!ValidRuleId(r.id)) {
        Err(id, path + ".id",
            absl::StrCat(Quote(r.id), " is not 1-128 of [A-Za-z0-9._-]"));
        ok = false;
      }
    } else {
      ok = false;
    }
    if (YAML::Node d = n["description"]; d && !d.IsScalar()) {
      Err(d, path + ".description", "expected a string");
    }
    if (YAML::Node e = n["effect"]; !e) {
      Err(n, path, "effect: required (allow or deny)");
      ok = false;
    } else {
      std::string v;
      if (Scalar(e, path + ".effect", &v)) {
        if (v == "allow")
          r.allow = true;
        else if (v == "deny")
          r.allow = false;
        else {
          Err(e, path + ".effect",
              absl::StrCat("unknown effect ", Quote(v), " (allow or deny)"));
          ok = false;
        }
      }
    }
    if (YAML::Node a = n["actions"]; !a) {
      Err(n, path, "actions: required (publish, subscribe, read, history)");
      ok = false;
    } else {
      std::vector<std::string> acts;
      ok &= StringList(a, path + ".actions", &acts, [](const std::string& v) {
        return ParseAction(v).ok()
                   ? std::string()
                   : absl::StrCat("unknown action ", Quote(v),
                                  " (publish, subscribe, read, history)");
      });
      for (const std::string& s : acts)
        r.actions |= 1u << static_cast<int>(*ParseAction(s));
    }
    if (YAML::Node p = n["principal"]; p && !p.IsNull())
      CompilePrincipal(p, path + ".principal", &r);
    if (YAML::Node res = n["resource"]; res && !res.IsNull()) {
      CompileResource(res, path + ".resource", &r);
    }
    if (YAML::Node pu = n["purposes"]) {
      StringList(pu, path + ".purposes", &r.purposes,
                 [this](const std::string& v) {
                   return known_purpose_(v)
                              ? std::string()
                              : absl::StrCat("unknown purpose ", Quote(v));
                 });
    }
    if (YAML::Node w = n["when"]; w && !w.IsNull())
      CompileWhen(w, path + ".when", &r);
    if (YAML::Node lb = n["legal_basis"]) {
      std::string v;
      if (Scalar(lb, path + ".legal_basis", &v)) {
        static const std::pair<const char*, LegalBasis> kBases[] = {
            {"consent", LegalBasis::kConsent},
            {"contract", LegalBasis::kContract},
            {"legal_obligation", LegalBasis::kLegalObligation},
            {"vital_interest", LegalBasis::kVitalInterest},
            {"public_task", LegalBasis::kPublicTask},
            {"legitimate_interest", LegalBasis::kLegitimateInterest}};
        bool found = false;
        for (const auto& [name, b] : kBases) {
          if (v == name) {
            r.legal_basis = b;
            found = true;
          }
        }
        if (!found) {
          Err(lb, path + ".legal_basis",
              absl::StrCat(
                  "unknown legal basis ", Quote(v),
                  " (consent, contract, legal_obligation, vital_interest, "
                  "public_task, legitimate_interest)"));
        }
      }
    }
    if (YAML::Node cb = n["cross_border"]) {
      StringList(cb, path + ".cross_border", &r.cross_border,
                 [](const std::string& v) {
                   return ValidCountryCode(v)
                              ? std::string()
                              : absl::StrCat(
                                    Quote(v),
                                    " is not an ISO 3166-1 alpha-2 code");
                 });
    }
    if (YAML::Node pr = n["product"]) {
      if (Scalar(pr, path + ".product", &r.product) &&
          !ValidRuleId(r.product)) {
        Err(pr, path + ".product",
            absl::StrCat(Quote(r.product), " is not 1-128 of [A-Za-z0-9._-]"));
      }
    }
    if (YAML::Node ob = n["obligations"])
      CompileObligations(ob, path + ".obligations", &r);
    if (!r.allow) {
      for (const auto& kv : n) {
        const std::string key = kv.first.IsScalar() ? kv.first.Scalar() : "";
        if (key == "obligations" || key == "legal_basis" ||
            key == "cross_border" || key == "product") {
          AddError(kv.first.Mark(),
                   absl::StrCat(path, ": a deny rule may not carry ", key));
        }
      }
    }
    if (ok) {
      for (auto& o : r.obligations) o.set_rule_id(r.id);
      out_.rules.push_back(std::move(r));
    }
  }

  void CompilePrincipal(const YAML::Node& n, const std::string& path,
                        CompiledRule* r) {
    if (!n.IsMap()) {
      Err(n, path, "expected a map");
      return;
    }
    CheckKeys(n, path, {"orgs", "roles", "kind", "names", "ids"});
    if (YAML::Node v = n["orgs"]) StringList(v, path + ".orgs", &r->orgs);
    if (YAML::Node v = n["roles"]) StringList(v, path + ".roles", &r->roles);
    if (YAML::Node v = n["names"]) StringList(v, path + ".names", &r->names);
    if (YAML::Node v = n["ids"]) {
      StringList(v, path + ".ids", &r->ids, [](const std::string& s) {
        auto p = Principal::FromSpiffeId(s);
        return p.ok() ? std::string() : std::string(p.status().message());
      });
    }
    if (YAML::Node v = n["kind"]) {
      std::string k;
      if (Scalar(v, path + ".kind", &k)) {
        if (k == "service")
          r->kind = PrincipalKind::kService;
        else if (k == "user")
          r->kind = PrincipalKind::kUser;
        else
          Err(v, path + ".kind",
              absl::StrCat("unknown kind ", Quote(k), " (service or user)"));
      }
    }
  }

  void CompileResource(const YAML::Node& n, const std::string& path,
                       CompiledRule* r) {
    if (!n.IsMap()) {
      Err(n, path, "expected a map");
      return;
    }
    CheckKeys(n, path,
              {"domains", "types", "subjects", "classifications", "owners",
               "regions", "jurisdictions", "data_subjects"});
    if (YAML::Node v = n["domains"])
      StringList(v, path + ".domains", &r->domains);
    if (YAML::Node v = n["types"]) StringList(v, path + ".types", &r->types);
    if (YAML::Node v = n["subjects"]) {
      StringList(v, path + ".subjects", &r->subjects, [](const std::string& s) {
        absl::Status st = ValidatePattern(s);
        return st.ok() ? std::string() : std::string(st.message());
      });
    }
    if (YAML::Node v = n["classifications"]) {
      std::vector<std::string> cls;
      StringList(v, path + ".classifications", &cls, [](const std::string& s) {
        return (s == "public" || s == "internal" || s == "personal" ||
                s == "sensitive")
                   ? std::string()
                   : absl::StrCat("unknown classification ", Quote(s),
                                  " (public, internal, personal, sensitive)");
      });
      for (const std::string& s : cls) {
        int c = s == "public"     ? event::v1::CLASSIFICATION_PUBLIC
                : s == "internal" ? event::v1::CLASSIFICATION_INTERNAL
                : s == "personal" ? event::v1::CLASSIFICATION_PERSONAL
                                  : event::v1::CLASSIFICATION_SENSITIVE;
        r->classifications |= 1u << c;
      }
    }
    if (YAML::Node v = n["owners"]) {
      r->has_owners = NamesOrVariable(v, path + ".owners", "$principal.org", &r->owners,
                                      &r->owner_is_principal_org);
    }
    if (YAML::Node v = n["regions"]) {
      StringList(v, path + ".regions", &r->regions, [](const std::string& s) {
        common::v1::GeoArea a;
        a.set_region(s);
        return ValidateArea(a, "region").ok()
                   ? std::string()
                   : absl::StrCat(Quote(s), " is not a region code");
      });
    }
    if (YAML::Node v = n["jurisdictions"]) {
      StringList(v, path + ".jurisdictions", &r->jurisdictions,
                 [](const std::string& s) {
                   return ValidCountryCode(s)
                              ? std::string()
                              : absl::StrCat(
                                    Quote(s),
                                    " is not an ISO 3166-1 alpha-2 code");
                 });
    }
    if (YAML::Node v = n["data_subjects"]) {
      r->has_data_subjects =
          NamesOrVariable(v, path + ".data_subjects", "$principal.name", &r->data_subjects,
                          &r->data_subject_is_principal);
    }
  }

  void CompileWhen(const YAML::Node& n, const std::string& path,
                   CompiledRule* r) {
    if (!n.IsMap()) {
      Err(n, path, "expected a map");
      return;
    }
    CheckKeys(n, path, {"emergency", "hours", "weekdays", "from", "until"});
    if (YAML::Node v = n["emergency"]) {
      std::string s;
      if (Scalar(v, path + ".emergency", &s)) {
        if (s == "true")
          r->emergency = true;
        else if (s != "false")
          Err(v, path + ".emergency", "expected true or false");
      }
    }
    if (YAML::Node v = n["hours"]) {
      std::string s;
      if (Scalar(v, path + ".hours", &s)) {
        std::vector<std::string> parts = absl::StrSplit(s, '-');
        if (parts.size() != 2 || !ParseClock(parts[0], &r->hours_start_min) ||
            !ParseClock(parts[1], &r->hours_end_min) ||
            r->hours_start_min == r->hours_end_min) {
          Err(v, path + ".hours",
              absl::StrCat(Quote(s), " is not \"HH:MM-HH:MM\" (UTC)"));
        } else {
          r->has_hours = true;
        }
      }
    }
    if (YAML::Node v = n["weekdays"]) {
      static const char* kDays[] = {"mon", "tue", "wed", "thu",
                                    "fri", "sat", "sun"};
      std::vector<std::string> days;
      StringList(v, path + ".weekdays", &days, [](const std::string& s) {
        for (const char* d : kDays) {
          if (s == d) return std::string();
        }
        return absl::StrCat("unknown weekday ", Quote(s), " (mon..sun)");
      });
      for (const std::string& s : days) {
        for (int i = 0; i < 7; ++i) {
          if (s == kDays[i]) r->weekdays |= 1u << i;
        }
      }
    }
    for (const char* key : {"from", "until"}) {
      YAML::Node v = n[key];
      if (!v) continue;
      std::string s, err;
      if (!Scalar(v, absl::StrCat(path, ".", key), &s)) continue;
      absl::Time t;
      if (!absl::ParseTime(absl::RFC3339_full, s, &t, &err)) {
        Err(v, absl::StrCat(path, ".", key),
            absl::StrCat(
                Quote(s),
                " is not an RFC 3339 time (e.g. 2026-01-01T00:00:00Z)"));
        continue;
      }
      (std::string_view(key) == "from" ? r->from : r->until) = t;
    }
    if (r->from != absl::InfinitePast() && r->until != absl::InfiniteFuture() &&
        r->until <= r->from) {
      Err(n, path, "until must be after from");
    }
  }

  void Fields(const YAML::Node& m, const std::string& path,
              std::string_view dflt, Obligation* o) {
    std::vector<std::string> fields;
    if (YAML::Node f = m["fields"]) StringList(f, path + ".fields", &fields);
    if (fields.empty()) fields.emplace_back(dflt);
    for (auto& f : fields) o->add_field_paths(f);
  }

  void CompileObligations(const YAML::Node& n, const std::string& path,
                          CompiledRule* r) {
    if (!n.IsSequence()) {
      Err(n, path, "expected a list");
      return;
    }
    for (size_t i = 0; i < n.size(); ++i) {
      const YAML::Node& item = n[i];
      std::string p = absl::StrCat(path, "[", i, "]");
      if (!item.IsMap() || item.size() != 1) {
        Err(item, p, "expected a map with exactly one obligation");
        continue;
      }
      const auto kv = *item.begin();
      const std::string kind = kv.first.Scalar();
      const YAML::Node v = kv.second;
      const std::string vp = absl::StrCat(p, ".", kind);
      Obligation o;
      if (kind == "redact" || kind == "pseudonymize") {
        o.set_kind(kind == "redact"
                       ? exchange::v1::OBLIGATION_KIND_REDACT
                       : exchange::v1::OBLIGATION_KIND_PSEUDONYMIZE);
        std::vector<std::string> fields;
        if (!StringList(v, vp, &fields)) continue;
        for (auto& f : fields) o.add_field_paths(f);
      } else if (kind == "coarsen_location") {
        o.set_kind(exchange::v1::OBLIGATION_KIND_COARSEN_LOCATION);
        if (!v.IsMap()) {
          Err(v, vp, "expected a map {cell_m, fields}");
          continue;
        }
        CheckKeys(v, vp, {"cell_m", "fields"});
        double cell = 0;
        YAML::Node c = v["cell_m"];
        if (!c || !c.IsScalar() || !absl::SimpleAtod(c.Scalar(), &cell) ||
            !(cell > 0)) {
          Err(c ? c : v, vp + ".cell_m",
              "required, a number of metres greater than 0");
          continue;
        }
        o.set_grid_cell_m(cell);
        Fields(v, vp, "location", &o);
      } else if (kind == "coarsen_time") {
        o.set_kind(exchange::v1::OBLIGATION_KIND_COARSEN_TIME);
        if (!v.IsMap()) {
          Err(v, vp, "expected a map {granularity, fields}");
          continue;
        }
        CheckKeys(v, vp, {"granularity", "fields"});
        absl::Duration g;
        YAML::Node gn = v["granularity"];
        if (!gn || !gn.IsScalar() || !ParseDurationText(gn.Scalar(), &g)) {
          Err(gn ? gn : v, vp + ".granularity",
              "required, a duration such as 15m, 1h, 1d");
          continue;
        }
        DurationToProto(g, o.mutable_time_granularity());
        Fields(v, vp, "event.time", &o);
      } else if (kind == "aggregate_only") {
        o.set_kind(exchange::v1::OBLIGATION_KIND_AGGREGATE_ONLY);
        if (!v.IsMap()) {
          Err(v, vp, "expected a map {min_group_size}");
          continue;
        }
        CheckKeys(v, vp, {"min_group_size"});
        uint32_t g = 0;
        YAML::Node gn = v["min_group_size"];
        if (!gn || !gn.IsScalar() || !absl::SimpleAtoi(gn.Scalar(), &g) ||
            g < 1) {
          Err(gn ? gn : v, vp + ".min_group_size",
              "required, an integer of at least 1");
          continue;
        }
        o.set_min_group_size(g);
      } else if (kind == "retention") {
        o.set_kind(exchange::v1::OBLIGATION_KIND_RETENTION_LIMIT);
        absl::Duration d;
        if (!v.IsScalar() || !ParseDurationText(v.Scalar(), &d)) {
          Err(v, vp, "expected a duration such as 30d");
          continue;
        }
        DurationToProto(d, o.mutable_retention());
      } else if (kind == "no_onward_transfer") {
        o.set_kind(exchange::v1::OBLIGATION_KIND_NO_ONWARD_TRANSFER);
        if (!v.IsScalar() || v.Scalar() != "true") {
          Err(v, vp, "expected true");
          continue;
        }
      } else {
        AddError(kv.first.Mark(),
                 absl::StrCat(
                     p, ": unknown obligation ", Quote(kind),
                     " (redact, pseudonymize, coarsen_location, coarsen_time, "
                     "aggregate_only, retention, no_onward_transfer)"));
        continue;
      }
      r->obligations.push_back(std::move(o));
    }
  }

  const PolicyDocumentText& doc_;
  const std::function<bool(std::string_view)>& known_purpose_;
  std::vector<PolicyError>* errors_;
  CompiledDocument out_;
};

uint64_t Key(char kind, std::string_view value) {
  return absl::Hash<std::pair<char, absl::string_view>>{}(
      std::make_pair(kind, AV(value)));
}
uint64_t Key2(char kind, std::string_view a, std::string_view b) {
  return absl::Hash<std::tuple<char, absl::string_view, absl::string_view>>{}(
      std::make_tuple(kind, AV(a), AV(b)));
}
uint64_t Combine(uint64_t principal_key, uint64_t resource_key) {
  return absl::Hash<std::pair<uint64_t, uint64_t>>{}(
      std::make_pair(principal_key, resource_key));
}
const uint64_t kAnyKey = 0x9e3779b97f4a7c15ull;  // "any" on either side

std::string_view FirstToken(std::string_view subject) {
  size_t dot = subject.find('.');
  return dot == std::string_view::npos ? subject : subject.substr(0, dot);
}

bool IsWildcard(std::string_view token) { return token == "*" || token == ">"; }

// "a.b" of "a.b[.more]" when both tokens are literal; "" otherwise.
std::string_view FirstTwoTokens(std::string_view subject) {
  const size_t dot = subject.find('.');
  if (dot == std::string_view::npos) return {};
  size_t end = subject.find('.', dot + 1);
  if (end == std::string_view::npos) end = subject.size();
  std::string_view first = subject.substr(0, dot);
  std::string_view second = subject.substr(dot + 1, end - dot - 1);
  if (IsWildcard(first) || IsWildcard(second)) return {};
  return subject.substr(0, end);
}

}  // namespace

const char* LegalBasisName(LegalBasis b) {
  switch (b) {
    case LegalBasis::kNone:
      return "";
    case LegalBasis::kConsent:
      return "consent";
    case LegalBasis::kContract:
      return "contract";
    case LegalBasis::kLegalObligation:
      return "legal_obligation";
    case LegalBasis::kVitalInterest:
      return "vital_interest";
    case LegalBasis::kPublicTask:
      return "public_task";
    case LegalBasis::kLegitimateInterest:
      return "legitimate_interest";
  }
  return "";
}

bool ValidDocumentName(std::string_view name) {
  return !name.empty() && name.size() <= 128 &&
         std::all_of(name.begin(), name.end(), IsIdChar);
}

PolicySet::PolicySet(std::vector<CompiledRule> rules,
                     std::vector<DataCategory> categories)
    : rules_(std::move(rules)), categories_(std::move(categories)) {
  for (size_t i = 0; i < rules_.size(); ++i) {
    CompiledRule& r = rules_[i];
    r.index = i;
    has_emergency_rules_ |= r.emergency;
    // Principal keys: the most selective stated condition. Every principal
    // that can match the rule has that key among its lookup keys.
    std::vector<uint64_t> pkeys;
    if (!r.ids.empty()) {
      for (const auto& id : r.ids) pkeys.push_back(Key('i', id));
    } else if (!r.orgs.empty()) {
      for (const auto& o : r.orgs) pkeys.push_back(Key('o', o));
    } else if (!r.roles.empty()) {
      for (const auto& ro : r.roles) pkeys.push_back(Key('r', ro));
    } else {
      pkeys.push_back(kAnyKey);
    }
    // Resource keys likewise: type, else domain, else the first subject
    // token when every subject pattern starts with a literal.
    std::vector<uint64_t> rkeys;
    if (!r.types.empty()) {
      for (const auto& t : r.types) rkeys.push_back(Key('t', t));
    } else if (!r.domains.empty()) {
      // Domain and owner together when the owners are all literal: the
      // usual shape of "org X reads org Y's data of domain Z".
      if (r.has_owners && !r.owner_is_principal_org) {
        for (const auto& d : r.domains) {
          for (const auto& o : r.owners) rkeys.push_back(Key2('D', d, o));
        }
      } else {
        for (const auto& d : r.domains) rkeys.push_back(Key('d', d));
      }
    } else if (!r.subjects.empty() &&
               std::none_of(r.subjects.begin(), r.subjects.end(),
                            [](const std::string& s) {
                              return IsWildcard(FirstToken(s));
                            })) {
      // The first two tokens when both are literal (a subject the rule
      // covers has them too), else the first.
      for (const auto& s : r.subjects) {
        std::string_view two = FirstTwoTokens(s);
        rkeys.push_back(two.empty() ? Key('s', FirstToken(s)) : Key('S', two));
      }
    }
    std::sort(rkeys.begin(), rkeys.end());
    rkeys.erase(std::unique(rkeys.begin(), rkeys.end()), rkeys.end());
    std::sort(pkeys.begin(), pkeys.end());
    pkeys.erase(std::unique(pkeys.begin(), pkeys.end()), pkeys.end());
    if (rkeys.empty()) rkeys.push_back(kAnyKey);
    for (int a = 0; a < kActionCount; ++a) {
      if (!(r.actions & (1u << a))) continue;
      RuleIndex& idx = index_[a];
      idx.all.push_back(static_cast<uint32_t>(i));
      idx.has_id_keys |= !r.ids.empty();
      for (uint64_t pk : pkeys) {
        idx.principal_keys.insert(pk);
        for (uint64_t rk : rkeys)
          idx.buckets[Combine(pk, rk)].push_back(static_cast<uint32_t>(i));
      }
    }
  }
}

void PolicySet::Candidates(const AccessRequest& request,
                           std::vector<uint32_t>* out) const {
  out->clear();
  const RuleIndex& idx = index_[ActionIndex(request.action)];
  if (idx.all.empty()) return;
  const ResourceView& res = request.resource;
  // The request's resource keys (at most 6) and principal keys.
  uint64_t rkeys[6];
  int nr = 0;
  rkeys[nr++] = kAnyKey;
  if (!res.type.empty()) rkeys[nr++] = Key('t', res.type);
  if (!res.domain.empty()) {
    rkeys[nr++] = Key('d', res.domain);
    if (!res.owner.empty()) rkeys[nr++] = Key2('D', res.domain, res.owner);
  }
  if (std::string_view first = FirstToken(res.subject);
      !first.empty() && !IsWildcard(first)) {
    rkeys[nr++] = Key('s', first);
    if (std::string_view two = FirstTwoTokens(res.subject); !two.empty()) {
      rkeys[nr++] = Key('S', two);
    }
  }
  auto probe = [&](uint64_t pk) {
    if (!idx.principal_keys.contains(pk)) return;
    for (int i = 0; i < nr; ++i) {
      auto it = idx.buckets.find(Combine(pk, rkeys[i]));
      if (it != idx.buckets.end())
        out->insert(out->end(), it->second.begin(), it->second.end());
    }
  };
  probe(kAnyKey);
  if (request.principal != nullptr) {
    const Principal& p = *request.principal;
    if (!p.org.empty()) probe(Key('o', p.org));
    for (const auto& role : p.roles) probe(Key('r', role));
    if (idx.has_id_keys && !p.name.empty()) probe(Key('i', p.SpiffeId()));
  }
  std::sort(out->begin(), out->end());
  out->erase(std::unique(out->begin(), out->end()), out->end());
}

std::string_view PolicySet::CategoryOf(const ResourceView& resource) const {
  for (const DataCategory& c : categories_) {
    for (const auto& t : c.types) {
      if (!resource.type.empty() && t == resource.type) return c.name;
    }
    for (const auto& s : c.subjects) {
      if (!resource.subject.empty() && ValidateSubject(resource.subject).ok() &&
          SubjectMatches(s, resource.subject)) {
        return c.name;
      }
    }
  }
  return resource.domain;
}

CompiledDocument CompileDocument(
    const PolicyDocumentText& doc,
    const std::function<bool(std::string_view)>& known_purpose,
    std::vector<PolicyError>* errors) {
  if (!ValidDocumentName(doc.name)) {
    PolicyError e;
    e.set_name(doc.name);
    e.set_message(absl::StrCat("document name ", Quote(doc.name),
                               " is not 1-128 of [A-Za-z0-9._-]"));
    errors->push_back(std::move(e));
    return {};
  }
  return DocCompiler(doc, known_purpose, errors).Run();
}

std::shared_ptr<const PolicySet> CompileSet(
    const std::vector<PolicyDocumentText>& documents,
    const std::function<bool(std::string_view)>& known_purpose,
    std::vector<PolicyError>* errors) {
  const size_t errors_before = errors->size();
  std::vector<CompiledRule> rules;
  std::vector<DataCategory> categories;
  absl::flat_hash_map<std::string, const CompiledRule*>
      first_rule;  // id -> rule
  absl::flat_hash_map<std::string, std::string>
      first_category;  // name -> document
  absl::flat_hash_set<std::string> doc_names;
  std::vector<CompiledDocument> compiled;
  compiled.reserve(documents.size());
  for (const PolicyDocumentText& doc : documents) {
    if (!doc_names.insert(doc.name).second) {
      PolicyError e;
      e.set_name(doc.name);
      e.set_message(absl::StrCat("document ", Quote(doc.name), " given twice"));
      errors->push_back(std::move(e));
    }
    compiled.push_back(CompileDocument(doc, known_purpose, errors));
  }
  for (CompiledDocument& cd : compiled) {
    for (CompiledRule& r : cd.rules) {
      auto [it, inserted] = first_rule.emplace(r.id, &r);
      if (!inserted) {
        PolicyError e;
        e.set_name(r.document);
        e.set_line(r.line);
        e.set_message(absl::StrCat("duplicate rule id ", Quote(r.id),
                                   " (also in ", it->second->document, ":",
                                   it->second->line, ")"));
        errors->push_back(std::move(e));
      }
    }
    for (DataCategory& c : cd.categories) {
      if (!first_category.emplace(c.name, "").second) {
        PolicyError e;
        e.set_message(absl::StrCat("duplicate data category ", Quote(c.name)));
        errors->push_back(std::move(e));
      }
    }
  }
  if (errors->size() != errors_before) return nullptr;
  for (CompiledDocument& cd : compiled) {
    for (CompiledRule& r : cd.rules) rules.push_back(std::move(r));
    for (DataCategory& c : cd.categories) categories.push_back(std::move(c));
  }
  return std::make_shared<const PolicySet>(std::move(rules),
                                           std::move(categories));
}

}  // namespace cityos::policy_internal
