#include "policy/evaluator.h"

#include <algorithm>
#include <optional>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/strings.h"
#include "policy/geo.h"

namespace cityos::policy_internal {
namespace {

template <typename C>
bool Contains(const C& list, std::string_view v) {
  for (const auto& s : list) {
    if (s == v) return true;
  }
  return false;
}

// Whether every subject matched by `request` (a subject or a pattern) is
// matched by `rule` (a pattern). For a plain subject this is SubjectMatches.
bool Covers(std::string_view rule, std::string_view request) {
  size_t ri = 0, qi = 0;
  while (true) {
    const bool r_end = ri >= rule.size(), q_end = qi >= request.size();
    if (r_end || q_end) return r_end && q_end;
    size_t rdot = rule.find('.', ri), qdot = request.find('.', qi);
    if (rdot == std::string_view::npos) rdot = rule.size();
    if (qdot == std::string_view::npos) qdot = request.size();
    std::string_view rt = rule.substr(ri, rdot - ri),
                     qt = request.substr(qi, qdot - qi);
    if (rt == ">")
      return true;  // the request has a token here: at least one remains
    if (qt == ">")
      return false;  // the request reaches lengths the rule does not
    if (rt != "*" && (qt == "*" || rt != qt)) return false;
    ri = rdot + 1;
    qi = qdot + 1;
    // A trailing dot never occurs in valid input; `x.` vs `x` stays unequal.
    if (rdot == rule.size()) ri = rule.size();
    if (qdot == request.size()) qi = request.size();
  }
}

event::v1::Classification EffectiveClass(event::v1::Classification c) {
  return c == event::v1::CLASSIFICATION_UNSPECIFIED
             ? event::v1::CLASSIFICATION_SENSITIVE
             : c;
}

bool IsPersonal(event::v1::Classification c) {
  c = EffectiveClass(c);
  return c == event::v1::CLASSIFICATION_PERSONAL ||
         c == event::v1::CLASSIFICATION_SENSITIVE;
}

bool IsRead(Action a) { return a != Action::kPublish; }

// Conditions other than time and emergency. `unknown_is_wildcard` is the
// MayAllow mode.
bool MatchStatic(const CompiledRule& r, const AccessRequest& q, bool wild,
                 std::string* spiffe_cache) {
  if (!(r.actions & (1u << static_cast<int>(q.action)))) return false;
  const Principal& p = *q.principal;
  if (!r.orgs.empty() && !Contains(r.orgs, p.org)) return false;
  if (!r.roles.empty() && std::none_of(r.roles.begin(), r.roles.end(),
                                       [&](const std::string& role) {
                                         return Contains(p.roles, role);
                                       })) {
    return false;
  }
  if (r.kind && *r.kind != p.kind) return false;
  if (!r.names.empty() && !Contains(r.names, p.name)) return false;
  if (!r.ids.empty()) {
    if (spiffe_cache->empty()) *spiffe_cache = p.SpiffeId();
    if (!Contains(r.ids, *spiffe_cache)) return false;
  }
  const ResourceView& res = q.resource;
  // A condition on one resource attribute `v`: holds when the rule does not
  // state it; else an empty `v` holds only in the wildcard mode, and a
  // present one when `matches(v)`.
  auto condition = [wild](bool stated, std::string_view v, auto matches) {
    if (!stated) return true;
    if (v.empty()) return wild;
    return static_cast<bool>(matches(v));
  };
  auto in = [](const std::vector<std::string>& list) {
    return [&list](std::string_view v) { return Contains(list, v); };
  };
  auto any_covers = [](const std::vector<std::string>& list, auto covers) {
    return [&list, covers](std::string_view v) {
      return std::any_of(list.begin(), list.end(),
                         [&](const std::string& rule) { return covers(rule, v); });
    };
  };
  if (!condition(!r.domains.empty(), res.domain, in(r.domains))) return false;
  if (!condition(!r.types.empty(), res.type, in(r.types))) return false;
  if (!condition(!r.subjects.empty(), res.subject, any_covers(r.subjects, Covers))) {
    return false;
  }
  if (r.classifications != 0) {
    if (!(wild &&
          res.classification == event::v1::CLASSIFICATION_UNSPECIFIED) &&
        !(r.classifications & (1u << EffectiveClass(res.classification)))) {
      return false;
    }
  }
  if (!condition(r.has_owners, res.owner, [&](std::string_view owner) {
        return Contains(r.owners, owner) || (r.owner_is_principal_org && owner == p.org);
      })) {
    return false;
  }
  if (!condition(!r.regions.empty(), res.region, any_covers(r.regions, RegionCovers))) {
    return false;
  }
  if (!condition(!r.jurisdictions.empty(), res.jurisdiction, in(r.jurisdictions))) {
    return false;
  }
  if (!condition(r.has_data_subjects, res.data_subject, [&](std::string_view ds) {
        return Contains(r.data_subjects, ds) ||
               (r.data_subject_is_principal && p.kind == PrincipalKind::kUser &&
                ds == p.name);
      })) {
    return false;
  }
  if (!r.purposes.empty()) {
    if (q.purpose.empty())
      return false;  // the caller always states its purpose
    if (!Contains(r.purposes, q.purpose)) return false;
  }
  return true;
}

absl::Time DayStart(absl::Time t) {
  const int64_t s = absl::ToUnixSeconds(t);
  const int64_t day = (s >= 0 ? s : s - 86399) / 86400;
  return absl::FromUnixSeconds(day * 86400);
}

// Whether the time conditions hold at `now`; `next` gets the earliest later
// time at which that may change.
bool MatchTime(const CompiledRule& r, absl::Time now, absl::Time* next) {
  bool ok = true;
  if (r.from != absl::InfinitePast()) {
    if (now < r.from) {
      ok = false;
      *next = std::min(*next, r.from);
    }
  }
  if (r.until != absl::InfiniteFuture()) {
    if (now >= r.until)
      ok = false;
    else
      *next = std::min(*next, r.until);
  }
  const absl::Time day = DayStart(now);
  if (r.weekdays != 0) {
    // 1970-01-01 was a Thursday (index 3 with Monday = 0).
    const int64_t days = absl::ToUnixSeconds(day) / 86400;
    const int wd = static_cast<int>(((days % 7) + 7 + 3) % 7);
    if (!(r.weekdays & (1u << wd))) ok = false;
    *next = std::min(*next, day + absl::Hours(24));
  }
  if (r.has_hours) {
    const int64_t minute = absl::ToInt64Minutes(now - day);
    const int s = r.hours_start_min, e = r.hours_end_min;
    const bool in =
        s < e ? (minute >= s && minute < e) : (minute >= s || minute < e);
    if (!in) ok = false;
    for (int m : {s, e, s + 1440, e + 1440}) {
      absl::Time t = day + absl::Minutes(m);
      if (t > now) *next = std::min(*next, t);
    }
  }
  return ok;
}

// The first emergency active at `now` whose area contains the resource.
const EmergencyWindow* CoveringEmergency(const EvalEnv& env,
                                         const ResourceView& res,
                                         absl::Time now, absl::Time* next) {
  if (!env.emergencies) return nullptr;
  const EmergencyWindow* found = nullptr;
  for (const EmergencyWindow& e : *env.emergencies) {
    if (e.start > now) *next = std::min(*next, e.start);
    if (e.end > now) *next = std::min(*next, e.end);
    if (found == nullptr && e.start <= now && now < e.end &&
        InArea(e.area, res.location, res.region)) {
      found = &e;
    }
  }
  return found;
}

std::string JoinIds(const std::vector<std::string>& ids) {
  return absl::StrJoin(ids, ", ");
}

}  // namespace

bool IsNodePrincipal(const Principal& p, const Principal* node) {
  return node != nullptr && p.trust_domain == node->trust_domain &&
         p.org == node->org && p.kind == node->kind && p.name == node->name;
}

std::shared_ptr<Decision> Evaluate(const PolicySet& set,
                                   const std::vector<uint32_t>& candidates,
                                   const AccessRequest& request, absl::Time now,
                                   const EvalEnv& env) {
  auto d = std::make_shared<Decision>();
  d->policy_revision = env.revision;
  d->effect = exchange::v1::EFFECT_DENY;
  d->severity = exchange::v1::SEVERITY_NOTICE;
  if (request.principal == nullptr) {
    d->reason = "no principal";
    return d;
  }
  if (IsNodePrincipal(*request.principal, env.node)) {
    d->effect = exchange::v1::EFFECT_ALLOW;
    d->severity = exchange::v1::SEVERITY_INFO;
    d->reason = "node principal";
    return d;
  }
  bool profiling = false;
  if (!request.purpose.empty()) {
    const auto* known = env.purposes;
    auto it = known != nullptr
                  ? known->find(AV(request.purpose))
                  : absl::flat_hash_map<std::string, bool>::const_iterator();
    if (known == nullptr || it == known->end()) {
      d->reason = absl::StrCat("unknown purpose \"", AV(request.purpose), "\"");
      return d;
    }
    profiling = it->second;
  }

  absl::Time valid_until = absl::InfiniteFuture();
  std::string spiffe;
  struct Match {
    const CompiledRule* rule;
    const EmergencyWindow* emergency;
  };
  std::vector<Match> allows;
  std::vector<const CompiledRule*> denies;
  bool deny_under_emergency = false;
  for (uint32_t i : candidates) {
    const CompiledRule& r = set.rules()[i];
    if (!MatchStatic(r, request, /*wild=*/false, &spiffe)) continue;
    if (r.has_time_condition() && !MatchTime(r, now, &valid_until)) continue;
    const EmergencyWindow* em = nullptr;
    if (r.emergency) {
      em = CoveringEmergency(env, request.resource, now, &valid_until);
      if (em == nullptr) continue;
    }
    if (r.allow) {
      allows.push_back({&r, em});
    } else {
      denies.push_back(&r);
      deny_under_emergency |= em != nullptr;
    }
  }
  if (!denies.empty()) {
    for (const CompiledRule* r : denies) d->rule_ids.push_back(r->id);
    for (const Match& m : allows) d->overridden_rule_ids.push_back(m.rule->id);
    d->reason = absl::StrCat("denied by rule ", JoinIds(d->rule_ids));
    if (deny_under_emergency) d->severity = exchange::v1::SEVERITY_HIGH;
    d->valid_until = valid_until;
    return d;
  }

  const ResourceView& res = request.resource;
  const bool personal_read =
      IsRead(request.action) && IsPersonal(res.classification);
  // Hook answers, asked at most once per decision.
  std::optional<ConsentAnswer> consent;
  std::optional<std::string> recipient_jurisdiction;
  std::string first_reason;
  const EmergencyWindow* emergency_used = nullptr;
  for (const Match& m : allows) {
    const CompiledRule& r = *m.rule;
    std::string why;
    // Jurisdiction: personal data leaving its jurisdiction.
    if (personal_read && !res.jurisdiction.empty()) {
      if (!recipient_jurisdiction) {
        recipient_jurisdiction =
            env.jurisdiction
                ? env.jurisdiction->RecipientJurisdiction(*request.principal)
                : "";
      }
      if (*recipient_jurisdiction != res.jurisdiction &&
          (recipient_jurisdiction->empty() ||
           !Contains(r.cross_border, *recipient_jurisdiction))) {
        why = absl::StrCat("cross-border transfer of personal data from ",
                           AV(res.jurisdiction), " to ",
                           recipient_jurisdiction->empty()
                               ? "an unknown jurisdiction"
                               : *recipient_jurisdiction,
                           " needs an explicit cross_border rule");
      }
    }
    // Consent, unless the rule states another legal basis.
    if (why.empty() && personal_read &&
        (r.legal_basis == LegalBasis::kNone ||
         r.legal_basis == LegalBasis::kConsent)) {
      if (res.data_subject.empty()) {
        why = "consent needed but the data has no data subject";
      } else if (env.consent == nullptr) {
        why = "consent needed but no consent checker is set";
      } else {
        if (!consent) {
          ConsentQuery cq;
          cq.recipient = request.principal;
          cq.purpose = request.purpose;
          cq.data_subject = res.data_subject;
          cq.data_category = set.CategoryOf(res);
          cq.sensitive = EffectiveClass(res.classification) ==
                         event::v1::CLASSIFICATION_SENSITIVE;
          cq.profiling = profiling;
          cq.time = now;
          consent = env.consent->Check(cq);
        }
        if (!consent->granted) {
          why =
              consent->reason.empty()
                  ? absl::StrCat("no active consent for purpose ",
                                 request.purpose.empty() ? "(none)"
                                                         : AV(request.purpose))
                  : consent->reason;
        } else {
          valid_until = std::min(valid_until, consent->valid_until);
          if (d->consent_id.empty()) d->consent_id = consent->consent_id;
        }
      }
    }
    // Contract for a traded data product.
    if (why.empty() && !r.product.empty()) {
      if (env.contract == nullptr) {
        why = absl::StrCat("product ", r.product,
                           " needs a contract but no contract checker is set");
      } else {
        ContractAnswer ca = env.contract->Check(*request.principal, r.product,
                                                request.purpose, now);
        if (!ca.active) {
          why = ca.reason.empty()
                    ? absl::StrCat("no active contract for product ", r.product)
                    : ca.reason;
        } else {
          valid_until = std::min(valid_until, ca.valid_until);
          if (d->contract_id.empty()) d->contract_id = ca.contract_id;
        }
      }
    }
    if (!why.empty()) {
      if (first_reason.empty())
        first_reason = absl::StrCat(why, " (rule ", r.id, ")");
      continue;
    }
    d->rule_ids.push_back(r.id);
    d->obligations.insert(d->obligations.end(), r.obligations.begin(),
                          r.obligations.end());
    if (m.emergency != nullptr && emergency_used == nullptr)
      emergency_used = m.emergency;
  }
  d->valid_until = valid_until;
  if (d->rule_ids.empty()) {
    d->consent_id.clear();
    d->contract_id.clear();
    d->reason = first_reason.empty() ? "no rule allows" : first_reason;
    return d;
  }
  d->effect = exchange::v1::EFFECT_ALLOW;
  d->reason = absl::StrCat("allowed by rule ", JoinIds(d->rule_ids));
  if (emergency_used != nullptr) {
    d->emergency_id = emergency_used->id;
    d->severity = exchange::v1::SEVERITY_HIGH;
  } else {
    d->severity = exchange::v1::SEVERITY_INFO;
  }
  return d;
}

bool MayMatch(const CompiledRule& r, const AccessRequest& request,
              absl::Time now, const EvalEnv& env) {
  std::string spiffe;
  if (!MatchStatic(r, request, /*wild=*/true, &spiffe)) return false;
  absl::Time ignored = absl::InfiniteFuture();
  if (r.has_time_condition() && !MatchTime(r, now, &ignored)) return false;
  if (r.emergency) {
    // With an unknown location and region, any active emergency may cover it.
    if (!env.emergencies) return false;
    bool any = false;
    for (const EmergencyWindow& e : *env.emergencies) {
      if (e.start <= now && now < e.end &&
          ((!request.resource.location && request.resource.region.empty()) ||
           InArea(e.area, request.resource.location,
                  request.resource.region))) {
        any = true;
      }
    }
    if (!any) return false;
  }
  return true;
}

}  // namespace cityos::policy_internal
