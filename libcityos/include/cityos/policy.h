// File: cityos/policy.h
//
// The policy decision point (PDP): every read and write of city data is
// decided here, against who asks (Principal), what they want to do (Action),
// the data (ResourceView), the purpose, and the environment (time, emergency
// mode), with the consent, contract and jurisdiction hooks that other modules
// fill. Integrators use it in-process; the node owns one and shares it with
// the bus (MakePolicyBusAuthorizer) and the exchange.
//
//   CITYOS_ASSIGN_OR_RETURN(auto pdp, PolicyDecisionPoint::Create({}));
//   CITYOS_RETURN_IF_ERROR(pdp->Load(admin, {{.name = "health.yaml", .content = yaml}},
//                                    {.replace_all = true}).status());
//   AccessRequest req{.principal = &caller, .action = Action::kRead,
//                     .resource = ResourceView::Of(event), .purpose = "medical_care"};
//   std::shared_ptr<const Decision> d = pdp->Decide(req);
//   if (!d->allowed()) return absl::PermissionDeniedError(d->reason);
//
// Semantics (docs/policies.md is the reference):
//  - Default deny; a matching deny rule overrides every allow; a decision names
//    the rules that decided it.
//  - A rule matches when every condition it states holds; a condition on an
//    attribute the request leaves unknown (empty) does not hold, except in
//    MayAllow(), which treats unknown attributes as wildcards.
//  - Personal and sensitive data (classification PERSONAL/SENSITIVE) read by
//    anyone (subscribe, read, history) needs an active consent from the
//    ConsentChecker for recipient org + purpose + data category, unless the
//    allowing rule states a legal basis. A request with an unknown
//    classification is treated as SENSITIVE.
//  - Personal data whose jurisdiction differs from the recipient's
//    (JurisdictionResolver) needs an allowing rule that lists the recipient's
//    jurisdiction under `cross_border`.
//  - A rule naming a data `product` needs an active agreement from the
//    ContractChecker for the caller's org.
//  - Rules with `when: {emergency: true}` hold only inside an active emergency
//    whose area contains the resource (location, or region).
//  - Policies compile into indexes: a decision looks at the rules indexed
//    under the request's action, principal (org, roles) and resource (type,
//    domain, subject), never at every rule.
//  - Decisions are cached (keyed by every attribute that can change them);
//    a policy load, emergency change, or Invalidate() from a hook drops the
//    affected entries, and watchers are told so live subscriptions re-decide.
#ifndef CITYOS_POLICY_H_
#define CITYOS_POLICY_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "cityos/principal.h"
#include "cityos/exchange/v1/exchange.pb.h"

namespace cityos {

class AuditLog;
class BusAuthorizer;
class Clock;

// The operation being decided (mirrors cityos.exchange.v1.Action).
enum class Action { kPublish, kSubscribe, kRead, kHistory };
// "publish" / "subscribe" / "read" / "history".
const char* ActionName(Action a);
absl::StatusOr<Action> ParseAction(std::string_view s);
exchange::v1::Action ToProto(Action a);

// Attributes of the data a decision is about. Views into storage owned by the
// caller (an event, an entity, a request); valid for the call. Empty strings
// mean unknown / not applicable.
struct ResourceView {
  std::string_view domain;
  std::string_view type;
  // A subject, or for subscriptions a subject pattern (with * and >).
  std::string_view subject;
  event::v1::Classification classification = event::v1::CLASSIFICATION_UNSPECIFIED;
  std::string_view owner;
  std::string_view region;        // e.g. "CN-ZJ-QZ-KC"
  std::string_view jurisdiction;  // ISO 3166-1 alpha-2, e.g. "JP"
  std::string_view data_subject;  // pseudonymous person id
  std::string_view entity_id;
  // Degrees WGS84, for area-bound rules (emergencies).
  std::optional<std::pair<double, double>> location;  // (latitude, longitude)

  // The envelope attributes of `event` (location from a top-level `location`
  // GeoPoint of a proto payload is not parsed here; set it if needed).
  static ResourceView Of(const event::v1::Event& event);
  static ResourceView Of(const exchange::v1::Resource& resource);
  static ResourceView Of(const exchange::v1::Entity& entity);
};

struct AccessRequest {
  const Principal* principal = nullptr;  // required
  Action action = Action::kRead;
  ResourceView resource;
  // From the registered vocabulary; empty only for publish.
  std::string_view purpose;
  // Time of the request; InfinitePast() means the PDP's clock now.
  absl::Time time = absl::InfinitePast();
};

// A decision. Immutable and shared (cached decisions are handed out as is).
struct Decision {
  exchange::v1::Effect effect = exchange::v1::EFFECT_DENY;
  // The deny rules that matched, or the allow rules that matched when none
  // denied; empty for a default deny.
  std::vector<std::string> rule_ids;
  // Allow rules that matched but a deny overrode (for Explain).
  std::vector<std::string> overridden_rule_ids;
  // ALLOW only: merged from every matching allow rule, each with its rule_id.
  std::vector<exchange::v1::Obligation> obligations;
  std::string reason;
  uint64_t policy_revision = 0;
  std::string consent_id;
  std::string contract_id;
  std::string emergency_id;
  // SEVERITY_INFO, NOTICE for denials, HIGH under an emergency.
  exchange::v1::Severity severity = exchange::v1::SEVERITY_INFO;
  // The decision may change by itself at this time (a time window or an
  // emergency ends, a consent expires); InfiniteFuture() when not.
  absl::Time valid_until = absl::InfiniteFuture();

  bool allowed() const { return effect == exchange::v1::EFFECT_ALLOW; }
  bool has_obligation(exchange::v1::ObligationKind kind) const;
  exchange::v1::Decision ToProto() const;
};

// --- hooks the other modules fill ---

struct ConsentQuery {
  const Principal* recipient = nullptr;
  std::string_view purpose;
  std::string_view data_subject;
  // Data category of the resource, e.g. "health.vitals" (docs/policies.md:
  // `data_categories`), or the resource's domain when none is declared.
  std::string_view data_category;
  bool sensitive = false;   // classification SENSITIVE (needs its own consent)
  bool profiling = false;   // the purpose is registered as profiling
  absl::Time time;
};
struct ConsentAnswer {
  bool granted = false;
  std::string consent_id;
  // Why not, when not granted (e.g. "no active consent for purpose research").
  std::string reason;
  // When the consent ends by itself (expiry); InfiniteFuture() when never.
  absl::Time valid_until = absl::InfiniteFuture();
};
// Answers whether a person consented. Implemented by the information bank;
// must be fast (called on cache misses only) and thread-safe.
class ConsentChecker {
 public:
  virtual ~ConsentChecker() = default;
  virtual ConsentAnswer Check(const ConsentQuery& query) = 0;
};

struct ContractAnswer {
  bool active = false;
  std::string contract_id;
  std::string reason;
  absl::Time valid_until = absl::InfiniteFuture();
};
// Answers whether an org holds an active agreement for a data product.
// Implemented by data trading; thread-safe.
class ContractChecker {
 public:
  virtual ~ContractChecker() = default;
  virtual ContractAnswer Check(const Principal& recipient, std::string_view product,
                               std::string_view purpose, absl::Time time) = 0;
};

// The jurisdiction (ISO 3166-1 alpha-2) a recipient receives data in.
class JurisdictionResolver {
 public:
  virtual ~JurisdictionResolver() = default;
  // Empty when unknown (then cross-border personal data is denied).
  virtual std::string RecipientJurisdiction(const Principal& recipient) = 0;
};
// From a table org -> jurisdiction, `fallback` for orgs not in it.
std::unique_ptr<JurisdictionResolver> MakeTableJurisdictionResolver(
    std::vector<std::pair<std::string, std::string>> org_to_jurisdiction, std::string fallback);

// What changed, for cache invalidation and live subscriptions.
struct PolicyChange {
  enum class Kind { kPolicies, kEmergency, kConsent, kContract, kPurposes };
  Kind kind = Kind::kPolicies;
  // kConsent: the person concerned; empty = anyone.
  std::string data_subject;
  // kConsent / kContract: the recipient org concerned; empty = any.
  std::string org;
};

// --- purposes ---

struct PurposeInfo {
  std::string name;  // 1-64 of [a-z0-9_]
  std::string description;
  // Profiling purposes need their own explicit consent.
  bool profiling = false;
};

// --- emergencies ---

struct EmergencyDeclaration {
  common::v1::GeoArea area;
  absl::Time start = absl::InfinitePast();  // InfinitePast() = now
  absl::Time end = absl::InfinitePast();    // required, after now
  std::string reason;
};

// --- policy documents ---

struct PolicyDocumentText {
  std::string name;     // 1-128 of [A-Za-z0-9._-]
  std::string content;  // YAML
};
struct LoadOptions {
  bool replace_all = false;
  std::vector<std::string> remove;
  uint64_t expected_revision = 0;  // 0 = any
};
struct PolicySetInfo {
  uint64_t revision = 0;
  std::vector<exchange::v1::PolicyDocument> documents;  // by name, with content
  size_t rules = 0;
};
struct ValidationResult {
  std::vector<exchange::v1::PolicyError> errors;  // empty = valid
  size_t rules = 0;
};

struct PdpOptions {
  Clock* clock = nullptr;  // null = real clock
  // Receives policy loads, purpose registrations and emergency changes
  // (decisions are audited by whoever acts on them). May be null.
  AuditLog* audit = nullptr;
  // Where emergencies are kept across restarts (a file is written atomically
  // there); empty = in memory only.
  std::string state_dir;
  // The node's own principal: always allowed (the trusted computing base).
  std::optional<Principal> node;
  std::string node_name;
  // Purposes known from the start; default: disaster_response,
  // carbon_accounting, medical_care, elderly_care, mobility_operations,
  // research, commercial, personal_use (docs/policies.md).
  std::vector<PurposeInfo> purposes;
  // Longest emergency window. Default: 72 h.
  absl::Duration max_emergency = absl::Hours(72);
  // Decision cache entries, at most. 0 = no cache.
  size_t cache_capacity = 1 << 16;
};

class PolicyDecisionPoint {
 public:
  static absl::StatusOr<std::unique_ptr<PolicyDecisionPoint>> Create(PdpOptions options);
  virtual ~PolicyDecisionPoint() = default;

  // Decides. Never fails: bad requests (no principal, unknown purpose) are
  // denials whose reason says what is wrong. Thread-safe; cached.
  virtual std::shared_ptr<const Decision> Decide(const AccessRequest& request) = 0;
  // As Decide, bypassing the cache (benchmarks, Explain).
  virtual std::shared_ptr<const Decision> DecideUncached(const AccessRequest& request) = 0;
  // Whether some rule could allow the request for some values of the
  // attributes it leaves unknown (hooks not consulted; deny rules not
  // considered, since with unknown attributes they may not apply). Query and
  // Subscribe use it to answer PERMISSION_DENIED before reading any data.
  virtual bool MayAllow(const AccessRequest& request) = 0;

  // --- policy administration (the caller's rights are checked by the
  // service, not here; `who` is recorded in the audit) ---
  // Compiles the resulting set whole; on any error nothing changes and the
  // error (INVALID_ARGUMENT) lists `name:line: message` for the first errors.
  // FAILED_PRECONDITION when expected_revision is stale.
  virtual absl::StatusOr<PolicySetInfo> Load(const Principal& who,
                                             std::vector<PolicyDocumentText> documents,
                                             const LoadOptions& options) = 0;
  virtual ValidationResult Validate(const std::vector<PolicyDocumentText>& documents,
                                    bool merge_with_current) = 0;
  virtual PolicySetInfo Current() const = 0;

  // --- purposes ---
  virtual absl::Status RegisterPurpose(const Principal& who, PurposeInfo purpose) = 0;
  virtual bool IsKnownPurpose(std::string_view purpose) const = 0;
  virtual std::vector<PurposeInfo> Purposes() const = 0;

  // --- emergencies (rights checked by the service) ---
  virtual absl::StatusOr<exchange::v1::Emergency> DeclareEmergency(
      const Principal& who, const EmergencyDeclaration& declaration) = 0;
  virtual absl::StatusOr<exchange::v1::Emergency> EndEmergency(const Principal& who,
                                                               std::string_view id,
                                                               std::string_view reason) = 0;
  virtual std::vector<exchange::v1::Emergency> ListEmergencies(bool include_ended) const = 0;

  // --- hooks (not owned; must outlive the PDP or be reset to null) ---
  virtual void SetConsentChecker(ConsentChecker* checker) = 0;
  virtual void SetContractChecker(ContractChecker* checker) = 0;
  virtual void SetJurisdictionResolver(JurisdictionResolver* resolver) = 0;

  // A hook's answers changed: drops the affected cache entries and tells the
  // watchers (synchronously, on the calling thread).
  virtual void Invalidate(const PolicyChange& change) = 0;

  // Calls `fn` after every change (policy load, emergency declared / ended /
  // expired, Invalidate). `fn` must be quick and must not call back into
  // Watch/Unwatch. Returns an id for Unwatch.
  virtual uint64_t Watch(std::function<void(const PolicyChange&)> fn) = 0;
  virtual void Unwatch(uint64_t id) = 0;
};

// A BusAuthorizer over the PDP: publish is decided per event (action
// publish); subscribe on the subject pattern with every other attribute
// unknown, and allowed only when the decision carries no obligations (the raw
// bus cannot apply them: read through the exchange instead); administration
// needs the `admin` role. Denials are written to `audit` (may be null)
// individually, allows aggregated per (principal, action, subject) per second.
std::unique_ptr<BusAuthorizer> MakePolicyBusAuthorizer(PolicyDecisionPoint* pdp,
                                                       AuditLog* audit);

}  // namespace cityos

#endif  // CITYOS_POLICY_H_
