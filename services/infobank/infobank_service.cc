#include "infobank_service.h"

#include <openssl/sha.h>

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <utility>

#include <google/protobuf/util/json_util.h>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "benefits.h"
#include "cityos/grpc_util.h"
#include "cityos/id.h"
#include "cityos/logging.h"
#include "cityos/proto_time.h"
#include "cityos/status.h"
#include "nlohmann/json.hpp"
#include "personal_store.h"
#include "provision.h"
#include "receipts.h"

namespace cityos::infobank {
namespace {

using consent::v1::Consent;
using consent::v1::ConsentEvent;
using consent::v1::Proposal;
using consent::v1::Receipt;

// The unary handlers' frame: resolves the caller, runs `body(caller)`, which
// fills the response, and maps its status to gRPC.
template <typename Body>
grpc::Status Serve(const InfobankCallerResolver& resolver, grpc::ServerContext* ctx, Body&& body) {
  absl::StatusOr<Principal> caller = resolver(ctx);
  if (!caller.ok()) return ToGrpcStatus(caller.status());
  return ToGrpcStatus(body(*caller));
}

constexpr char kEthicsBoard[] = "data-ethics-board";
constexpr char kInfobankAdmin[] = "infobank-admin";

absl::string_view A(std::string_view s) { return {s.data(), s.size()}; }

google::protobuf::Timestamp Ts(absl::Time t) {
  google::protobuf::Timestamp ts;
  TimestampToProto(t, &ts);
  return ts;
}

absl::Time FromTs(const google::protobuf::Timestamp& t) {
  absl::StatusOr<absl::Time> r = TimestampFromProto(t, "time");
  return r.ok() ? *r : absl::InfinitePast();
}

// [a-z0-9_]+ segments joined by dots, 1-64 characters.
bool ValidCategoryName(std::string_view s) {
  if (s.empty() || s.size() > 64 || s.front() == '.' || s.back() == '.') return false;
  char prev = 0;
  for (char c : s) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '.';
    if (!ok || (c == '.' && prev == '.')) return false;
    prev = c;
  }
  return true;
}

// 1-64 of [a-z0-9_], starting with a letter (purposes; categories allow a
// leading digit too).
bool ValidName(std::string_view s, bool letter_first) {
  if (s.empty() || s.size() > 64) return false;
  if (letter_first && !(s[0] >= 'a' && s[0] <= 'z')) return false;
  for (char c : s) {
    if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_')) return false;
  }
  return true;
}

bool ValidOrg(std::string_view s) {
  if (s.empty() || s.size() > 128) return false;
  for (char c : s) {
    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
          c == '.' || c == '_' || c == '-')) {
      return false;
    }
  }
  return true;
}

bool ValidCountry(std::string_view s) {
  return s.size() == 2 && s[0] >= 'A' && s[0] <= 'Z' && s[1] >= 'A' && s[1] <= 'Z';
}

// Page size per the protos: 0 means 100; at most 1000.
absl::StatusOr<size_t> PageSize(int32_t n) {
  if (n < 0 || n > 1000) {
    return absl::InvalidArgumentError(absl::StrFormat("page_size %d: must be 0-1000", n));
  }
  return n == 0 ? 100 : static_cast<size_t>(n);
}

// Page tokens are offsets into the (stable, append-only ordered) result.
absl::StatusOr<size_t> PageOffset(const std::string& token) {
  if (token.empty()) return 0;
  size_t off = 0;
  if (!absl::SimpleAtoi(A(token), &off)) {
    return absl::InvalidArgumentError("page_token: not a token of this service");
  }
  return off;
}

template <typename T, typename Out>
void Page(const std::vector<T>& all, size_t offset, size_t size, Out* out, std::string* next) {
  for (size_t i = offset; i < all.size() && i < offset + size; ++i) *out->Add() = all[i];
  if (offset + size < all.size()) *next = std::to_string(offset + size);
}

bool Listed(const std::vector<std::string>& v, std::string_view s) {
  return std::find(v.begin(), v.end(), s) != v.end();
}

std::string RecipientOf(const Consent& c) {
  return c.has_recipient_org() ? c.recipient_org() : "category:" + c.recipient_category();
}

std::string ToJson(const google::protobuf::Message& m) {
  std::string out;
  google::protobuf::util::JsonPrintOptions opts;
  opts.preserve_proto_field_names = true;
  if (!google::protobuf::util::MessageToJsonString(m, &out, opts).ok()) return "{}";
  return out;
}

// One event as a CloudEvents 1.0 JSON (structured mode) object: the core
// attributes, cityos's attributes as extensions, the payload as `data`
// (JSON when it is JSON or a known protobuf message) or `data_base64`.
nlohmann::json CloudEventJson(const event::v1::Event& e) {
  nlohmann::json j;
  j["specversion"] = e.spec_version().empty() ? "1.0" : e.spec_version();
  j["id"] = e.id();
  j["source"] = e.source();
  j["type"] = e.type();
  if (!e.subject().empty()) j["subject"] = e.subject();
  if (e.has_time()) {
    j["time"] = absl::FormatTime(absl::RFC3339_full, FromTs(e.time()), absl::UTCTimeZone());
  }
  if (!e.data_content_type().empty()) j["datacontenttype"] = e.data_content_type();
  if (!e.data_schema().empty()) j["dataschema"] = e.data_schema();
  j["domain"] = e.domain();
  std::string cls = event::v1::Classification_Name(e.classification());
  if (absl::StartsWith(cls, "CLASSIFICATION_")) cls = cls.substr(15);
  for (char& c : cls) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  j["classification"] = cls;
  j["datasubject"] = e.data_subject();
  if (!e.owner().empty()) j["owner"] = e.owner();
  if (!e.region().empty()) j["region"] = e.region();
  if (!e.jurisdiction().empty()) j["jurisdiction"] = e.jurisdiction();
  if (!e.publisher().empty()) j["publisher"] = e.publisher();
  for (const auto& [k, v] : e.extensions()) j[k] = v;
  switch (e.data_case()) {
    case event::v1::Event::kTextData: {
      nlohmann::json parsed = nlohmann::json::parse(e.text_data(), nullptr, false);
      j["data"] = parsed.is_discarded() ? nlohmann::json(e.text_data()) : parsed;
      break;
    }
    case event::v1::Event::kBinaryData:
      j["data_base64"] = absl::Base64Escape(e.binary_data());
      break;
    case event::v1::Event::kProtoData: {
      std::string json;
      google::protobuf::util::JsonPrintOptions opts;
      opts.preserve_proto_field_names = true;
      if (google::protobuf::util::MessageToJsonString(e.proto_data(), &json, opts).ok()) {
        j["data"] = nlohmann::json::parse(json, nullptr, false);
        if (!j.contains("datacontenttype")) j["datacontenttype"] = "application/json";
      } else {  // a message type this binary does not know
        j["data_base64"] = absl::Base64Escape(e.proto_data().value());
        j["dataschema"] = e.proto_data().type_url();
      }
      break;
    }
    case event::v1::Event::DATA_NOT_SET:
      break;
  }
  return j;
}

#define RETURN_GRPC_IF_ERROR(expr)                                \
  do {                                                            \
    ::absl::Status s_ = (expr);                                   \
    if (!s_.ok()) return ::cityos::ToGrpcStatus(s_);              \
  } while (0)

}  // namespace

InfobankService::InfobankService(InfobankDeps deps, InfobankOptions options)
    : deps_(std::move(deps)), options_(std::move(options)) {}

InfobankService::~InfobankService() { Stop(); }

absl::Status InfobankService::Start() {
  if (deps_.store == nullptr || deps_.index == nullptr || deps_.pdp == nullptr ||
      deps_.audit == nullptr || deps_.clock == nullptr || deps_.signer == nullptr ||
      deps_.personal == nullptr || deps_.benefits == nullptr || !deps_.resolver) {
    return absl::FailedPreconditionError(
        "information bank: store, index, pdp, audit, clock, signer, personal data store, "
        "benefit ledger and resolver are all required");
  }
  absl::StatusOr<std::vector<Proposal>> proposals = deps_.store->Proposals();
  if (!proposals.ok()) return proposals.status();
  {
    absl::MutexLock lock(&ethics_mu_);
    // Oldest first, so the PDP registrations happen in approval order.
    for (auto it = proposals->rbegin(); it != proposals->rend(); ++it) {
      const Proposal& p = *it;
      if (p.state() != consent::v1::PROPOSAL_STATE_APPROVED) continue;
      if (p.has_purpose()) {
        if (!deps_.pdp->IsKnownPurpose(p.purpose().name())) {
          absl::Status s = deps_.pdp->RegisterPurpose(
              deps_.bank, {.name = p.purpose().name(),
                           .description = p.purpose().description(),
                           .profiling = p.purpose().profiling()});
          if (!s.ok()) return Annotate(s, "registering approved purpose " + p.purpose().name());
        }
      } else if (p.recipient().has_category()) {
        approved_categories_.insert(p.recipient().category());
      } else {
        approved_orgs_.insert(p.recipient().org());
      }
    }
  }
  deps_.index->SetCategories(options_.recipient_categories);
  absl::StatusOr<std::vector<Consent>> active = deps_.store->ActiveConsents();
  if (!active.ok()) return active.status();
  for (const Consent& c : *active) deps_.index->Put(c);
  {
    absl::MutexLock lock(&sweep_mu_);
    stopping_ = false;
  }
  sweeper_ = std::thread([this] { SweepLoop(); });
  return absl::OkStatus();
}

void InfobankService::Stop() {
  {
    absl::MutexLock lock(&sweep_mu_);
    stopping_ = true;
  }
  if (sweeper_.joinable()) sweeper_.join();
}

void InfobankService::SweepLoop() {
  while (true) {
    ExpireDue();
    std::optional<absl::Time> next;
    deps_.index->Expired(absl::InfinitePast(), &next);
    absl::Duration wait = options_.sweep_max_wait;
    if (next.has_value()) {
      // At least a few milliseconds: a consent whose expiry cannot be
      // recorded (store error, logged) must not spin this loop.
      wait = std::min(wait, std::max(absl::Milliseconds(5), *next - deps_.clock->Now()));
    }
    absl::MutexLock lock(&sweep_mu_);
    auto woken = [this]() ABSL_SHARED_LOCKS_REQUIRED(sweep_mu_) { return stopping_ || kick_; };
    sweep_mu_.AwaitWithTimeout(absl::Condition(&woken), wait);
    if (stopping_) return;
    kick_ = false;
  }
}

void InfobankService::ExpireDue() {
  const absl::Time now = deps_.clock->Now();
  std::optional<absl::Time> next;
  for (const auto& [subject, id] : deps_.index->Expired(now, &next)) {
    absl::MutexLock lock(&write_mu_);
    absl::StatusOr<std::optional<Consent>> c = deps_.store->GetConsent(id);
    if (!c.ok() || !c->has_value() || (*c)->state() != consent::v1::CONSENT_STATE_ACTIVE) {
      deps_.index->Remove(subject, id);
      continue;
    }
    absl::StatusOr<consent::v1::RevokeConsentResponse> r =
        EndConsent(deps_.bank, **c, consent::v1::CONSENT_STATE_EXPIRED, "", now);
    if (!r.ok()) LogError("infobank", "cannot expire consent", {{"consent", id},
                                                               {"error", r.status().ToString()}});
  }
}

absl::StatusOr<std::string> InfobankService::Person(const Principal& caller,
                                                    const std::string& requested,
                                                    std::string_view scope) const {
  if (caller.kind == PrincipalKind::kUser) {
    if (requested.empty() || requested == caller.name) return caller.name;
    return absl::PermissionDeniedError(absl::StrFormat(
        "%s may not act for data subject %s: a person acts only for themself", caller.SpiffeId(),
        requested));
  }
  const std::string app = caller.SpiffeId();
  if (scope.empty()) {
    return absl::PermissionDeniedError(absl::StrCat(
        app, " is not a person: only the person (a user principal) may do this, "
             "a delegation does not cover it"));
  }
  if (requested.empty()) {
    return absl::PermissionDeniedError(absl::StrCat(
        app, " is not a person: an app must name the person in data_subject and hold a "
             "delegation from them"));
  }
  absl::StatusOr<std::vector<consent::v1::Delegation>> all =
      deps_.store->Delegations(requested, app);
  if (!all.ok()) return all.status();
  const absl::Time now = deps_.clock->Now();
  // Why not, from the newest delegation to this app.
  std::string why;
  for (const consent::v1::Delegation& d : *all) {
    if (d.state() == consent::v1::DELEGATION_STATE_REVOKED) {
      if (why.empty()) why = absl::StrFormat("delegation %s was revoked", d.delegation_id());
      continue;
    }
    if (d.state() != consent::v1::DELEGATION_STATE_ACTIVE ||
        (d.has_expire_time() && FromTs(d.expire_time()) <= now)) {
      if (why.empty()) why = absl::StrFormat("delegation %s expired", d.delegation_id());
      continue;
    }
    if (std::find(d.scopes().begin(), d.scopes().end(), scope) == d.scopes().end()) {
      if (why.empty()) {
        why = absl::StrFormat("delegation %s does not cover scope \"%s\" (it covers: %s)",
                              d.delegation_id(), A(scope), absl::StrJoin(d.scopes(), ", "));
      }
      continue;
    }
    return requested;
  }
  if (why.empty()) why = "no delegation from that person";
  return absl::PermissionDeniedError(
      absl::StrFormat("%s may not act for data subject %s: %s", app, requested, why));
}

absl::Status InfobankService::ValidateGrant(const consent::v1::GrantConsentRequest& r,
                                            absl::Time now) {
  if (r.recipient_case() == consent::v1::GrantConsentRequest::RECIPIENT_NOT_SET) {
    return absl::InvalidArgumentError("no recipient: set recipient_org or recipient_category");
  }
  if (r.purposes().empty()) return absl::InvalidArgumentError("no purpose: at least one needed");
  if (r.data_categories().empty()) {
    return absl::InvalidArgumentError("no data category: at least one needed");
  }
  if (r.has_expire_time()) {
    absl::StatusOr<absl::Time> t = TimestampFromProto(r.expire_time(), "expire_time");
    if (!t.ok()) return absl::InvalidArgumentError(t.status().message());
    if (*t <= now) {
      return absl::InvalidArgumentError(absl::StrCat(
          "expire_time ", absl::FormatTime(*t, absl::UTCTimeZone()), " is in the past"));
    }
  }
  // Categories: known, and sensitive ones need the explicit flag.
  for (const std::string& c : r.data_categories()) {
    if (!ValidCategoryName(c)) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "data category \"%s\": 1-64 characters of [a-z0-9_] in dot-separated parts", c));
    }
    bool known = std::any_of(options_.data_categories.begin(), options_.data_categories.end(),
                             [&](const std::string& k) { return CategoryCovers(k, c); });
    if (!known) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "unknown data category \"%s\" (known: %s)", c,
          absl::StrJoin(options_.data_categories, ", ")));
    }
    bool sensitive = std::any_of(
        options_.sensitive_categories.begin(), options_.sensitive_categories.end(),
        [&](const std::string& s) { return CategoryCovers(s, c) || CategoryCovers(c, s); });
    if (sensitive && !r.sensitive()) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "data category \"%s\" is sensitive: it needs the explicit consent `sensitive`", c));
    }
  }
  for (const std::string& j : r.cross_border_jurisdictions()) {
    if (!ValidCountry(j)) {
      return absl::InvalidArgumentError(
          absl::StrFormat("cross_border_jurisdictions: \"%s\" is not an ISO 3166-1 alpha-2 code", j));
    }
  }
  if (r.collection_method().size() > 64 || r.language().size() > 35 ||
      r.request_id().size() > 128) {
    return absl::InvalidArgumentError(
        "collection_method (64), language (35) or request_id (128) too long");
  }
  // Purposes: approved ones are the PDP's vocabulary (built-in, or approved
  // by the ethics board and registered there).
  const std::vector<PurposeInfo> registered = deps_.pdp->Purposes();
  absl::StatusOr<std::vector<Proposal>> proposals = deps_.store->Proposals();
  if (!proposals.ok()) return proposals.status();
  auto proposed = [&](const std::string& key) {
    return std::any_of(proposals->begin(), proposals->end(),
                       [&](const Proposal& p) { return ProposalKey(p) == key; });
  };
  for (const std::string& p : r.purposes()) {
    auto it = std::find_if(registered.begin(), registered.end(),
                           [&](const PurposeInfo& i) { return i.name == p; });
    if (it == registered.end()) {
      if (proposed("purpose:" + p)) {
        return absl::FailedPreconditionError(absl::StrFormat(
            "purpose \"%s\" is not approved by the data ethics board", p));
      }
      return absl::InvalidArgumentError(absl::StrFormat("unknown purpose \"%s\"", p));
    }
    if (it->profiling && !r.profiling()) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "purpose \"%s\" involves profiling: it needs the explicit consent `profiling`", p));
    }
  }
  absl::MutexLock lock(&ethics_mu_);
  if (r.has_recipient_org()) {
    if (!ValidOrg(r.recipient_org())) {
      return absl::InvalidArgumentError(
          absl::StrFormat("recipient_org \"%s\": 1-128 of [A-Za-z0-9._-]", r.recipient_org()));
    }
    if (!approved_orgs_.contains(r.recipient_org())) {
      return absl::FailedPreconditionError(absl::StrFormat(
          "recipient org \"%s\" is not approved by the data ethics board%s", r.recipient_org(),
          proposed("recipient:org:" + r.recipient_org()) ? " (its proposal is not approved)"
                                                         : " (never proposed)"));
    }
  } else {
    if (!ValidName(r.recipient_category(), false)) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "recipient_category \"%s\": 1-64 of [a-z0-9_]", r.recipient_category()));
    }
    if (!approved_categories_.contains(r.recipient_category())) {
      return absl::FailedPreconditionError(absl::StrFormat(
          "recipient category \"%s\" is not approved by the data ethics board",
          r.recipient_category()));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<consent::v1::GrantConsentResponse> InfobankService::Grant(
    const Principal& caller, const consent::v1::GrantConsentRequest& request) {
  absl::StatusOr<std::string> person = Person(caller, request.data_subject(), kScopeConsents);
  if (!person.ok()) return person.status();
  absl::MutexLock lock(&write_mu_);
  consent::v1::GrantConsentResponse response;
  if (!request.request_id().empty()) {
    absl::StatusOr<std::optional<std::string>> seen =
        deps_.store->ConsentForRequest(*person, request.request_id());
    if (!seen.ok()) return seen.status();
    if (seen->has_value()) {
      absl::StatusOr<std::optional<Consent>> c = deps_.store->GetConsent(**seen);
      if (!c.ok()) return c.status();
      if (!c->has_value()) return absl::InternalError("consent of a request_id is missing");
      *response.mutable_consent() = **c;
      if (!(*c)->receipt_ids().empty()) {
        absl::StatusOr<std::optional<Receipt>> r =
            deps_.store->GetReceipt((*c)->receipt_ids(0));
        if (r.ok() && r->has_value()) *response.mutable_receipt() = **r;
      }
      return response;
    }
  }
  const absl::Time now = deps_.clock->Now();
  if (absl::Status s = ValidateGrant(request, now); !s.ok()) return s;

  Consent c;
  c.set_consent_id(UuidToString(NewUuidV7At(now)));
  c.set_data_subject(*person);
  if (request.has_recipient_org()) {
    c.set_recipient_org(request.recipient_org());
  } else {
    c.set_recipient_category(request.recipient_category());
  }
  *c.mutable_purposes() = request.purposes();
  *c.mutable_data_categories() = request.data_categories();
  if (request.has_expire_time()) *c.mutable_expire_time() = request.expire_time();
  c.set_sensitive(request.sensitive());
  c.set_profiling(request.profiling());
  *c.mutable_cross_border_jurisdictions() = request.cross_border_jurisdictions();
  c.set_state(consent::v1::CONSENT_STATE_ACTIVE);
  *c.mutable_grant_time() = Ts(now);
  c.set_collection_method(request.collection_method().empty() ? "app"
                                                              : request.collection_method());
  c.set_language(request.language());

  absl::StatusOr<Receipt> issued = deps_.signer->Issue(c, consent::v1::RECEIPT_EVENT_GRANT, now);
  if (!issued.ok()) return Annotate(issued.status(), "issuing the grant receipt");
  Receipt receipt = *std::move(issued);
  c.add_receipt_ids(receipt.receipt_id());
  ConsentEvent event;
  event.set_kind(consent::v1::CONSENT_EVENT_KIND_GRANTED);
  *event.mutable_time() = Ts(now);
  event.set_actor(caller.SpiffeId());
  *event.mutable_consent() = c;
  event.set_receipt_id(receipt.receipt_id());
  if (absl::Status s = deps_.store->Write(c, event, &receipt, request.request_id());
      !s.ok()) {
    return s;
  }
  Changed(c);
  Audit(caller, "consent.grant", "consent/" + c.consent_id(), c.data_subject(), c.consent_id(),
        absl::StrFormat("granted to %s for %s on %s", RecipientOf(c),
                        absl::StrJoin(c.purposes(), ","), absl::StrJoin(c.data_categories(), ",")));
  *response.mutable_consent() = std::move(c);
  *response.mutable_receipt() = std::move(receipt);
  return response;
}

void InfobankService::Changed(const Consent& c) {
  deps_.index->Put(c);  // removes it unless ACTIVE
  deps_.pdp->Invalidate({.kind = PolicyChange::Kind::kConsent,
                         .data_subject = c.data_subject(),
                         .org = c.has_recipient_org() ? c.recipient_org() : std::string()});
  {
    absl::MutexLock lock(&sweep_mu_);
    kick_ = true;  // a new earliest expiry may have appeared
  }
}

void InfobankService::Audit(const Principal& who, const std::string& action,
                            const std::string& resource, const std::string& data_subject,
                            const std::string& consent_id, const std::string& reason) {
  exchange::v1::AuditEntry e;
  *e.mutable_time() = Ts(deps_.clock->Now());
  e.set_principal(who.SpiffeId());
  e.set_action(action);
  e.set_resource(resource);
  e.set_decision(exchange::v1::EFFECT_ALLOW);
  e.set_severity(exchange::v1::SEVERITY_INFO);
  e.set_data_subject(data_subject);
  e.set_consent_id(consent_id);
  e.set_reason(reason);
  deps_.audit->Append(std::move(e));
}

absl::StatusOr<consent::v1::RevokeConsentResponse> InfobankService::EndConsent(
    const Principal& actor, Consent c, consent::v1::ConsentState state, const std::string& reason,
    absl::Time now) {
  const bool revoke = state == consent::v1::CONSENT_STATE_REVOKED;
  c.set_state(state);
  Receipt receipt;
  if (revoke) {
    *c.mutable_revoke_time() = Ts(now);
    c.set_revoke_reason(reason);
    absl::StatusOr<Receipt> r = deps_.signer->Issue(c, consent::v1::RECEIPT_EVENT_REVOKE, now);
    if (!r.ok()) return Annotate(r.status(), "issuing the revocation receipt");
    receipt = *std::move(r);
    c.add_receipt_ids(receipt.receipt_id());
  }
  ConsentEvent event;
  event.set_kind(revoke ? consent::v1::CONSENT_EVENT_KIND_REVOKED
                        : consent::v1::CONSENT_EVENT_KIND_EXPIRED);
  *event.mutable_time() = Ts(now);
  event.set_actor(actor.SpiffeId());
  *event.mutable_consent() = c;
  event.set_receipt_id(receipt.receipt_id());
  if (absl::Status s =
          deps_.store->Write(c, event, receipt.receipt_id().empty() ? nullptr : &receipt, "");
      !s.ok()) {
    return s;
  }
  Changed(c);
  Audit(actor, revoke ? "consent.revoke" : "consent.expire", "consent/" + c.consent_id(),
        c.data_subject(), c.consent_id(),
        revoke ? (reason.empty() ? std::string("revoked") : "revoked: " + reason)
               : std::string("expired"));
  consent::v1::RevokeConsentResponse response;
  *response.mutable_consent() = std::move(c);
  if (!receipt.receipt_id().empty()) *response.mutable_receipt() = std::move(receipt);
  return response;
}

absl::StatusOr<consent::v1::RevokeConsentResponse> InfobankService::Revoke(
    const Principal& caller, const consent::v1::RevokeConsentRequest& request) {
  if (request.reason().size() > 1024) {
    return absl::InvalidArgumentError("reason: at most 1024 characters");
  }
  absl::MutexLock lock(&write_mu_);
  absl::StatusOr<std::optional<Consent>> found = deps_.store->GetConsent(request.consent_id());
  if (!found.ok()) return found.status();
  // The person, or an app with a delegation from them covering consents.
  absl::StatusOr<std::string> person =
      found->has_value() ? Person(caller, (*found)->data_subject(), kScopeConsents)
                         : absl::StatusOr<std::string>(absl::NotFoundError("unknown"));
  // Another person's consent is indistinguishable from an unknown one.
  if (!person.ok() || !found->has_value() || (*found)->data_subject() != *person) {
    return absl::NotFoundError(absl::StrFormat("consent \"%s\" not found", request.consent_id()));
  }
  Consent c = **found;
  const absl::Time now = deps_.clock->Now();
  if (c.state() == consent::v1::CONSENT_STATE_REVOKED) {
    consent::v1::RevokeConsentResponse response;
    if (c.receipt_ids_size() > 1) {
      absl::StatusOr<std::optional<Receipt>> r =
          deps_.store->GetReceipt(c.receipt_ids(c.receipt_ids_size() - 1));
      if (r.ok() && r->has_value()) *response.mutable_receipt() = **r;
    }
    *response.mutable_consent() = std::move(c);
    return response;
  }
  if (c.state() == consent::v1::CONSENT_STATE_EXPIRED ||
      (c.has_expire_time() && FromTs(c.expire_time()) <= now)) {
    return absl::FailedPreconditionError(
        absl::StrFormat("consent \"%s\" already expired", c.consent_id()));
  }
  return EndConsent(caller, std::move(c), consent::v1::CONSENT_STATE_REVOKED, request.reason(),
                    now);
}

grpc::Status InfobankService::GrantConsent(grpc::ServerContext* ctx,
                                           const consent::v1::GrantConsentRequest* request,
                                           consent::v1::GrantConsentResponse* response) {
  return Serve(deps_.resolver, ctx, [&](const Principal& caller) -> absl::Status {
    CITYOS_ASSIGN_OR_RETURN(*response, Grant(caller, *request));
    return absl::OkStatus();
  });
}

grpc::Status InfobankService::RevokeConsent(grpc::ServerContext* ctx,
                                            const consent::v1::RevokeConsentRequest* request,
                                            consent::v1::RevokeConsentResponse* response) {
  return Serve(deps_.resolver, ctx, [&](const Principal& caller) -> absl::Status {
    CITYOS_ASSIGN_OR_RETURN(*response, Revoke(caller, *request));
    return absl::OkStatus();
  });
}

grpc::Status InfobankService::ListConsents(grpc::ServerContext* ctx,
                                           const consent::v1::ListConsentsRequest* request,
                                           consent::v1::ListConsentsResponse* response) {
  return Serve(deps_.resolver, ctx, [&](const Principal& caller) -> absl::Status {
    absl::StatusOr<std::string> person = Person(caller, request->data_subject(), kScopeConsents);
    CITYOS_RETURN_IF_ERROR(person.status());
    absl::StatusOr<size_t> size = PageSize(request->page_size());
    CITYOS_RETURN_IF_ERROR(size.status());
    absl::StatusOr<size_t> offset = PageOffset(request->page_token());
    CITYOS_RETURN_IF_ERROR(offset.status());
    absl::StatusOr<std::vector<Consent>> all = deps_.store->ListConsents(*person);
    CITYOS_RETURN_IF_ERROR(all.status());
    const absl::Time now = deps_.clock->Now();
    std::vector<Consent> shown;
    for (Consent& c : *all) {
      // The sweep may lag the clock by a moment: show what is true now.
      if (c.state() == consent::v1::CONSENT_STATE_ACTIVE && c.has_expire_time() &&
          FromTs(c.expire_time()) <= now) {
        c.set_state(consent::v1::CONSENT_STATE_EXPIRED);
      }
      if (c.state() == consent::v1::CONSENT_STATE_ACTIVE || request->include_inactive()) {
        shown.push_back(std::move(c));
      }
    }
    Page(shown, *offset, *size, response->mutable_consents(), response->mutable_next_page_token());
    return absl::OkStatus();
  });
}

std::vector<ConsentEvent> InfobankService::RangeFilter(std::vector<ConsentEvent> events,
                                                       const common::v1::TimeRange& range) const {
  const absl::Time from = range.has_start() ? FromTs(range.start()) : absl::InfinitePast();
  const absl::Time to = range.has_end() ? FromTs(range.end()) : absl::InfiniteFuture();
  std::vector<ConsentEvent> out;
  for (ConsentEvent& e : events) {
    absl::Time t = FromTs(e.time());
    if (t >= from && t < to) out.push_back(std::move(e));
  }
  return out;
}

grpc::Status InfobankService::GetConsentHistory(
    grpc::ServerContext* ctx, const consent::v1::GetConsentHistoryRequest* request,
    consent::v1::GetConsentHistoryResponse* response) {
  return Serve(deps_.resolver, ctx, [&](const Principal& caller) -> absl::Status {
    absl::StatusOr<std::string> person = Person(caller, request->data_subject(), kScopeConsents);
    CITYOS_RETURN_IF_ERROR(person.status());
    absl::StatusOr<size_t> size = PageSize(request->page_size());
    CITYOS_RETURN_IF_ERROR(size.status());
    absl::StatusOr<size_t> offset = PageOffset(request->page_token());
    CITYOS_RETURN_IF_ERROR(offset.status());
    absl::StatusOr<std::vector<ConsentEvent>> events =
        deps_.store->History(*person, request->consent_id());
    CITYOS_RETURN_IF_ERROR(events.status());
    std::vector<ConsentEvent> shown = RangeFilter(*std::move(events), request->range());
    Page(shown, *offset, *size, response->mutable_events(), response->mutable_next_page_token());
    return absl::OkStatus();
  });
}

grpc::Status InfobankService::GetReceipt(grpc::ServerContext* ctx,
                                         const consent::v1::GetReceiptRequest* request,
                                         consent::v1::GetReceiptResponse* response) {
  return Serve(deps_.resolver, ctx, [&](const Principal& caller) -> absl::Status {
    const absl::Status not_found(absl::StatusCode::kNotFound,
                                 absl::StrFormat("receipt \"%s\" not found", request->receipt_id()));
    absl::StatusOr<std::optional<Receipt>> r = deps_.store->GetReceipt(request->receipt_id());
    CITYOS_RETURN_IF_ERROR(r.status());
    if (!r->has_value()) return not_found;
    absl::StatusOr<std::optional<Consent>> c = deps_.store->GetConsent((*r)->consent_id());
    CITYOS_RETURN_IF_ERROR(c.status());
    if (!c->has_value()) return not_found;
    const Consent& consent = **c;
    bool allowed = caller.kind == PrincipalKind::kUser && caller.name == consent.data_subject();
    if (!allowed && caller.kind == PrincipalKind::kService) {
      if (consent.has_recipient_org()) {
        allowed = caller.org == consent.recipient_org();
      } else {
        auto it = options_.recipient_categories.find(consent.recipient_category());
        allowed = it != options_.recipient_categories.end() && Listed(it->second, caller.org);
      }
    }
    // An app acting for the person under a delegation covering consents.
    if (!allowed && caller.kind == PrincipalKind::kService) {
      allowed = Person(caller, consent.data_subject(), kScopeConsents).ok();
    }
    if (!allowed) return not_found;
    *response->mutable_receipt() = **std::move(r);
    return absl::OkStatus();
  });
}

grpc::Status InfobankService::ExportPersonalData(
    grpc::ServerContext* ctx, const consent::v1::ExportPersonalDataRequest* request,
    grpc::ServerWriter<consent::v1::ExportPersonalDataResponse>* writer) {
  absl::StatusOr<Principal> caller = deps_.resolver(ctx);
  if (!caller.ok()) return ToGrpcStatus(caller.status());
  absl::StatusOr<std::string> person = Person(*caller, request->data_subject(), kScopeData);
  RETURN_GRPC_IF_ERROR(person.status());
  nlohmann::json doc;
  doc["data_subject"] = *person;
  doc["generated"] = absl::FormatTime(absl::RFC3339_full, deps_.clock->Now(), absl::UTCTimeZone());
  auto parse = [](const std::string& s) { return nlohmann::json::parse(s, nullptr, false); };
  doc["consents"] = nlohmann::json::array();
  absl::StatusOr<std::vector<Consent>> consents = deps_.store->ListConsents(*person);
  RETURN_GRPC_IF_ERROR(consents.status());
  for (const Consent& c : *consents) doc["consents"].push_back(parse(ToJson(c)));
  doc["receipts"] = nlohmann::json::array();
  absl::StatusOr<std::vector<Receipt>> receipts = deps_.store->ReceiptsOf(*person);
  RETURN_GRPC_IF_ERROR(receipts.status());
  for (const Receipt& r : *receipts) doc["receipts"].push_back(parse(ToJson(r)));
  doc["records"] = nlohmann::json::array();
  absl::StatusOr<std::vector<event::v1::Event>> records = deps_.personal->Export(*person);
  if (records.ok()) {
    for (const event::v1::Event& e : *records) doc["records"].push_back(CloudEventJson(e));
  } else if (!absl::IsNotFound(records.status())) {  // NOT_FOUND: deleted, records empty
    return ToGrpcStatus(records.status());
  }
  doc["provision_history"] = nlohmann::json::array();
  consent::v1::GetProvisionHistoryRequest hreq;
  hreq.set_page_size(1000);
  while (true) {
    absl::StatusOr<consent::v1::GetProvisionHistoryResponse> h =
        ProvisionHistory(*deps_.audit, *person, hreq);
    RETURN_GRPC_IF_ERROR(h.status());
    for (const auto& rec : h->records()) doc["provision_history"].push_back(parse(ToJson(rec)));
    if (h->next_page_token().empty()) break;
    hreq.set_page_token(h->next_page_token());
  }
  doc["benefits"] = nlohmann::json::object();
  if (deps_.benefits != nullptr) {
    absl::StatusOr<consent::v1::GetBenefitBalanceResponse> b = deps_.benefits->Balance(*person);
    RETURN_GRPC_IF_ERROR(b.status());
    doc["benefits"]["balance"] = parse(ToJson(*b));
    consent::v1::GetBenefitStatementRequest sreq;
    sreq.set_page_size(1000);
    absl::StatusOr<consent::v1::GetBenefitStatementResponse> st =
        deps_.benefits->Statement(sreq, *person);
    RETURN_GRPC_IF_ERROR(st.status());
    doc["benefits"]["statement"] = parse(ToJson(*st));
  }
  const std::string text = doc.dump();
  unsigned char digest[SHA256_DIGEST_LENGTH];
  SHA256(reinterpret_cast<const unsigned char*>(text.data()), text.size(), digest);
  std::string hex;
  for (unsigned char b : digest) absl::StrAppendFormat(&hex, "%02x", b);
  constexpr size_t kChunk = 1 << 20;
  size_t off = 0;
  do {
    consent::v1::ExportPersonalDataResponse chunk;
    chunk.set_chunk(text.substr(off, kChunk));
    off += kChunk;
    if (off >= text.size()) {
      chunk.set_last(true);
      chunk.set_sha256(hex);
    }
    if (!writer->Write(chunk)) return grpc::Status(grpc::StatusCode::CANCELLED, "client gone");
  } while (off < text.size());
  return grpc::Status::OK;
}

grpc::Status InfobankService::DeletePersonalData(
    grpc::ServerContext* ctx, const consent::v1::DeletePersonalDataRequest* request,
    consent::v1::DeletePersonalDataResponse* response) {
  return Serve(deps_.resolver, ctx, [&](const Principal& caller) -> absl::Status {
    absl::StatusOr<std::string> person = Person(caller, request->data_subject(), kPersonOnly);
    CITYOS_RETURN_IF_ERROR(person.status());
    if (request->confirm() != *person) {
      return absl::Status(absl::StatusCode::kInvalidArgument,
                          absl::StrFormat("confirm must equal the person's id \"%s\"", *person));
    }
    absl::StatusOr<uint64_t> records = deps_.personal->Delete(*person);
    CITYOS_RETURN_IF_ERROR(records.status());
    const absl::Time now = deps_.clock->Now();
    uint32_t revoked = 0;
    {
      absl::MutexLock lock(&write_mu_);
      absl::StatusOr<std::vector<Consent>> all = deps_.store->ListConsents(*person);
      CITYOS_RETURN_IF_ERROR(all.status());
      for (Consent& c : *all) {
        if (c.state() != consent::v1::CONSENT_STATE_ACTIVE) continue;
        if (c.has_expire_time() && FromTs(c.expire_time()) <= now) continue;
        absl::StatusOr<consent::v1::RevokeConsentResponse> r =
            EndConsent(caller, std::move(c), consent::v1::CONSENT_STATE_REVOKED,
                       "personal data deleted", now);
        CITYOS_RETURN_IF_ERROR(r.status());
        ++revoked;
      }
    }
    const uint64_t before = deps_.audit->last_sequence();
    Audit(caller, "personal_data.delete", "personal_data/" + *person, *person, "",
          absl::StrFormat("data key destroyed; %d records unreadable; %d consents revoked",
                          *records, revoked));
    absl::StatusOr<uint64_t> flushed = deps_.audit->Flush();
    CITYOS_RETURN_IF_ERROR(flushed.status());
    AuditQuery q;
    q.data_subject = *person;
    q.action = "personal_data.delete";
    q.after_sequence = before;
    q.limit = 1;
    absl::StatusOr<AuditPage> page = deps_.audit->Query(q);
    CITYOS_RETURN_IF_ERROR(page.status());
    if (!page->entries.empty()) response->set_audit_sequence(page->entries.front().sequence());
    *response->mutable_delete_time() = Ts(now);
    response->set_records(*records);
    response->set_consents_revoked(revoked);
    return absl::OkStatus();
  });
}

grpc::Status InfobankService::GetProvisionHistory(
    grpc::ServerContext* ctx, const consent::v1::GetProvisionHistoryRequest* request,
    consent::v1::GetProvisionHistoryResponse* response) {
  return Serve(deps_.resolver, ctx, [&](const Principal& caller) -> absl::Status {
    absl::StatusOr<std::string> person = Person(caller, request->data_subject(), kScopeData);
    CITYOS_RETURN_IF_ERROR(person.status());
    absl::StatusOr<consent::v1::GetProvisionHistoryResponse> r =
        ProvisionHistory(*deps_.audit, *person, *request);
    CITYOS_RETURN_IF_ERROR(r.status());
    *response = *std::move(r);
    return absl::OkStatus();
  });
}

grpc::Status InfobankService::GetBenefitBalance(grpc::ServerContext* ctx,
                                                const consent::v1::GetBenefitBalanceRequest* request,
                                                consent::v1::GetBenefitBalanceResponse* response) {
  return Serve(deps_.resolver, ctx, [&](const Principal& caller) -> absl::Status {
    absl::StatusOr<std::string> person = Person(caller, request->data_subject(), kScopeData);
    CITYOS_RETURN_IF_ERROR(person.status());
    absl::StatusOr<consent::v1::GetBenefitBalanceResponse> r = deps_.benefits->Balance(*person);
    CITYOS_RETURN_IF_ERROR(r.status());
    *response = *std::move(r);
    return absl::OkStatus();
  });
}

grpc::Status InfobankService::GetBenefitStatement(
    grpc::ServerContext* ctx, const consent::v1::GetBenefitStatementRequest* request,
    consent::v1::GetBenefitStatementResponse* response) {
  return Serve(deps_.resolver, ctx, [&](const Principal& caller) -> absl::Status {
    absl::StatusOr<std::string> person = Person(caller, request->data_subject(), kScopeData);
    CITYOS_RETURN_IF_ERROR(person.status());
    absl::StatusOr<consent::v1::GetBenefitStatementResponse> r =
        deps_.benefits->Statement(*request, *person);
    CITYOS_RETURN_IF_ERROR(r.status());
    *response = *std::move(r);
    return absl::OkStatus();
  });
}

// --- ethics review ---

absl::StatusOr<Proposal> InfobankService::FileProposal(
    const Principal& caller, Proposal p,
    const std::function<absl::Status(const Proposal&)>& clash) {
  const std::string key = ProposalKey(p);
  absl::MutexLock lock(&ethics_mu_);
  absl::StatusOr<std::vector<Proposal>> all = deps_.store->Proposals();
  CITYOS_RETURN_IF_ERROR(all.status());
  for (const Proposal& o : *all) {
    if (ProposalKey(o) == key) CITYOS_RETURN_IF_ERROR(clash(o));
  }
  const absl::Time now = deps_.clock->Now();
  p.set_proposal_id(UuidToString(NewUuidV7At(now)));
  p.set_state(consent::v1::PROPOSAL_STATE_PENDING);
  p.set_proposed_by(caller.SpiffeId());
  *p.mutable_propose_time() = Ts(now);
  CITYOS_RETURN_IF_ERROR(deps_.store->PutProposal(p, key));
  Audit(caller, "ethics.propose", "proposal/" + p.proposal_id(), "", "", key);
  return p;
}

grpc::Status InfobankService::ProposeRecipient(grpc::ServerContext* ctx,
                                               const consent::v1::ProposeRecipientRequest* request,
                                               consent::v1::ProposeRecipientResponse* response) {
  return Serve(deps_.resolver, ctx, [&](const Principal& caller) -> absl::Status {
    const consent::v1::RecipientProposal& rp = request->recipient();
    auto bad = [](std::string m) { return absl::Status(absl::StatusCode::kInvalidArgument, m); };
    if (rp.has_org()) {
      if (!ValidOrg(rp.org())) return bad(absl::StrFormat("org \"%s\": 1-128 of [A-Za-z0-9._-]", rp.org()));
    } else if (rp.has_category()) {
      if (!ValidName(rp.category(), false)) {
        return bad(absl::StrFormat("category \"%s\": 1-64 of [a-z0-9_]", rp.category()));
      }
    } else {
      return bad("recipient: set org or category");
    }
    if (!rp.jurisdiction().empty() && !ValidCountry(rp.jurisdiction())) {
      return bad(absl::StrFormat("jurisdiction \"%s\": not an ISO 3166-1 alpha-2 code",
                                 rp.jurisdiction()));
    }
    if (rp.display_name().size() > 256 || rp.description().size() > 4096 ||
        rp.policy_url().size() > 2048 || rp.contact().size() > 256) {
      return bad("display_name (256), description (4096), policy_url (2048) or contact (256) too long");
    }
    const bool own_org = caller.kind == PrincipalKind::kService && rp.has_org() &&
                         rp.org() == caller.org;
    if (!own_org && !caller.HasRole(kInfobankAdmin)) {
      return absl::Status(absl::StatusCode::kPermissionDenied,
                          absl::StrFormat("%s may propose only its own org; proposing another org "
                                          "or a category needs the %s role",
                                          caller.SpiffeId(), kInfobankAdmin));
    }
    Proposal p;
    p.set_kind(consent::v1::PROPOSAL_KIND_RECIPIENT);
    *p.mutable_recipient() = rp;
    CITYOS_ASSIGN_OR_RETURN(*response->mutable_proposal(),
                            FileProposal(caller, std::move(p), [](const Proposal& o) {
                              if (o.state() == consent::v1::PROPOSAL_STATE_REJECTED) {
                                return absl::OkStatus();
                              }
                              return absl::AlreadyExistsError(absl::StrFormat(
                                  "%s is already %s (proposal %s)", ProposalKey(o),
                                  o.state() == consent::v1::PROPOSAL_STATE_APPROVED ? "approved"
                                                                                    : "pending",
                                  o.proposal_id()));
                            }));
    return absl::OkStatus();
  });
}

grpc::Status InfobankService::ProposePurpose(grpc::ServerContext* ctx,
                                             const consent::v1::ProposePurposeRequest* request,
                                             consent::v1::ProposePurposeResponse* response) {
  return Serve(deps_.resolver, ctx, [&](const Principal& caller) -> absl::Status {
    const consent::v1::PurposeProposal& pp = request->purpose();
    if (!ValidName(pp.name(), true)) {
      return absl::Status(absl::StatusCode::kInvalidArgument,
                          absl::StrFormat("purpose name \"%s\": 1-64 of [a-z0-9_], starting with a "
                                          "letter", pp.name()));
    }
    if (pp.description().size() > 4096 || pp.category().size() > 128) {
      return absl::Status(absl::StatusCode::kInvalidArgument,
                          "description (4096) or category (128) too long");
    }
    if (caller.kind != PrincipalKind::kService && !caller.HasRole(kInfobankAdmin)) {
      return absl::Status(absl::StatusCode::kPermissionDenied,
                          absl::StrFormat("%s: only service principals and the %s role may propose "
                                          "purposes", caller.SpiffeId(), kInfobankAdmin));
    }
    if (deps_.pdp->IsKnownPurpose(pp.name())) {
      return absl::Status(absl::StatusCode::kAlreadyExists,
                          absl::StrFormat("purpose \"%s\" is already approved", pp.name()));
    }
    Proposal p;
    p.set_kind(consent::v1::PROPOSAL_KIND_PURPOSE);
    *p.mutable_purpose() = pp;
    CITYOS_ASSIGN_OR_RETURN(*response->mutable_proposal(),
                            FileProposal(caller, std::move(p), [&](const Proposal& o) {
                              if (o.state() != consent::v1::PROPOSAL_STATE_PENDING) {
                                return absl::OkStatus();
                              }
                              return absl::AlreadyExistsError(
                                  absl::StrFormat("purpose \"%s\" is already pending (proposal %s)",
                                                  pp.name(), o.proposal_id()));
                            }));
    return absl::OkStatus();
  });
}

grpc::Status InfobankService::ReviewProposal(grpc::ServerContext* ctx,
                                             const consent::v1::ReviewProposalRequest* request,
                                             consent::v1::ReviewProposalResponse* response) {
  return Serve(deps_.resolver, ctx, [&](const Principal& caller) -> absl::Status {
    if (!caller.HasRole(kEthicsBoard)) {
      return absl::Status(absl::StatusCode::kPermissionDenied,
                          absl::StrFormat("%s: reviewing proposals needs the %s role",
                                          caller.SpiffeId(), kEthicsBoard));
    }
    if (request->reason().empty() || request->reason().size() > 4096) {
      return absl::Status(absl::StatusCode::kInvalidArgument,
                          "reason: required, at most 4096 characters");
    }
    absl::MutexLock lock(&ethics_mu_);
    absl::StatusOr<std::optional<Proposal>> found = deps_.store->GetProposal(request->proposal_id());
    CITYOS_RETURN_IF_ERROR(found.status());
    if (!found->has_value()) {
      return absl::Status(absl::StatusCode::kNotFound,
                          absl::StrFormat("proposal \"%s\" not found", request->proposal_id()));
    }
    Proposal p = **found;
    if (p.proposed_by() == caller.SpiffeId()) {
      return absl::Status(absl::StatusCode::kPermissionDenied,
                          "a reviewer may not review their own proposal");
    }
    if (p.state() != consent::v1::PROPOSAL_STATE_PENDING) {
      return absl::Status(absl::StatusCode::kFailedPrecondition,
                          absl::StrFormat("proposal \"%s\" is not pending", p.proposal_id()));
    }
    if (request->approve() && p.has_purpose() && !deps_.pdp->IsKnownPurpose(p.purpose().name())) {
      CITYOS_RETURN_IF_ERROR(deps_.pdp->RegisterPurpose(
          caller, {.name = p.purpose().name(),
                    .description = p.purpose().description(),
                    .profiling = p.purpose().profiling()}));
    }
    const absl::Time now = deps_.clock->Now();
    p.set_state(request->approve() ? consent::v1::PROPOSAL_STATE_APPROVED
                                   : consent::v1::PROPOSAL_STATE_REJECTED);
    p.set_reviewed_by(caller.SpiffeId());
    *p.mutable_review_time() = Ts(now);
    p.set_review_reason(request->reason());
    CITYOS_RETURN_IF_ERROR(deps_.store->PutProposal(p, ProposalKey(p)));
    if (request->approve() && p.has_recipient()) {
      if (p.recipient().has_category()) {
        approved_categories_.insert(p.recipient().category());
      } else {
        approved_orgs_.insert(p.recipient().org());
      }
    }
    Audit(caller, "ethics.review", "proposal/" + p.proposal_id(), "", "",
          absl::StrFormat("%s %s: %s", request->approve() ? "approved" : "rejected",
                          ProposalKey(p), request->reason()));
    *response->mutable_proposal() = std::move(p);
    return absl::OkStatus();
  });
}

grpc::Status InfobankService::ListProposals(grpc::ServerContext* ctx,
                                            const consent::v1::ListProposalsRequest* request,
                                            consent::v1::ListProposalsResponse* response) {
  return Serve(deps_.resolver, ctx, [&](const Principal& caller) -> absl::Status {
    absl::StatusOr<size_t> size = PageSize(request->page_size());
    CITYOS_RETURN_IF_ERROR(size.status());
    absl::StatusOr<size_t> offset = PageOffset(request->page_token());
    CITYOS_RETURN_IF_ERROR(offset.status());
    absl::StatusOr<std::vector<Proposal>> all = deps_.store->Proposals();
    CITYOS_RETURN_IF_ERROR(all.status());
    std::vector<Proposal> shown;
    for (Proposal& p : *all) {
      if (request->kind() != consent::v1::PROPOSAL_KIND_UNSPECIFIED && p.kind() != request->kind()) {
        continue;
      }
      if (request->state() != consent::v1::PROPOSAL_STATE_UNSPECIFIED &&
          p.state() != request->state()) {
        continue;
      }
      shown.push_back(std::move(p));
    }
    Page(shown, *offset, *size, response->mutable_proposals(), response->mutable_next_page_token());
    return absl::OkStatus();
  });
}

}  // namespace cityos::infobank

namespace cityos::infobank {

namespace {

// The delegation as it is now: ACTIVE past its expiry reads EXPIRED.
consent::v1::Delegation AsOf(consent::v1::Delegation d, absl::Time now) {
  if (d.state() == consent::v1::DELEGATION_STATE_ACTIVE && d.has_expire_time() &&
      FromTs(d.expire_time()) <= now) {
    d.set_state(consent::v1::DELEGATION_STATE_EXPIRED);
  }
  return d;
}

}  // namespace

grpc::Status InfobankService::GrantDelegation(grpc::ServerContext* ctx,
                                              const consent::v1::GrantDelegationRequest* request,
                                              consent::v1::GrantDelegationResponse* response) {
  return Serve(deps_.resolver, ctx, [&](const Principal& caller) -> absl::Status {
    absl::StatusOr<std::string> person = Person(caller, "", kPersonOnly);
    CITYOS_RETURN_IF_ERROR(person.status());
    absl::StatusOr<Principal> app = Principal::FromSpiffeId(request->app());
    if (!app.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("app \"", request->app(), "\": ", app.status().message()));
    }
    if (app->kind != PrincipalKind::kService) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "app \"%s\": not a service principal (spiffe://<trust-domain>/org/<org>/svc/<name>)",
          request->app()));
    }
    if (app->trust_domain != deps_.bank.trust_domain) {
      return absl::InvalidArgumentError(
          absl::StrFormat("app \"%s\": trust domain %s is not the bank's (%s)", request->app(),
                          app->trust_domain, deps_.bank.trust_domain));
    }
    if (request->scopes().empty()) {
      return absl::InvalidArgumentError("no scope: at least one of consents, data needed");
    }
    std::vector<std::string> scopes;
    for (const std::string& sc : request->scopes()) {
      if (sc != kScopeConsents && sc != kScopeData) {
        return absl::InvalidArgumentError(
            absl::StrFormat("unknown scope \"%s\": known are consents, data", sc));
      }
      if (!Listed(scopes, sc)) scopes.push_back(sc);
    }
    const absl::Time now = deps_.clock->Now();
    if (request->has_expire_time()) {
      absl::StatusOr<absl::Time> t = TimestampFromProto(request->expire_time(), "expire_time");
      if (!t.ok()) return absl::InvalidArgumentError(t.status().message());
      if (*t <= now) {
        return absl::InvalidArgumentError(absl::StrCat(
            "expire_time ", absl::FormatTime(*t, absl::UTCTimeZone()), " is in the past"));
      }
    }
    consent::v1::Delegation d;
    d.set_delegation_id(UuidToString(NewUuidV7At(now)));
    d.set_data_subject(*person);
    d.set_app(app->SpiffeId());
    for (std::string& sc : scopes) d.add_scopes(std::move(sc));
    if (request->has_expire_time()) *d.mutable_expire_time() = request->expire_time();
    d.set_state(consent::v1::DELEGATION_STATE_ACTIVE);
    *d.mutable_grant_time() = Ts(now);
    {
      absl::MutexLock lock(&write_mu_);
      CITYOS_RETURN_IF_ERROR(deps_.store->PutDelegation(d));
    }
    Audit(caller, "delegation.grant", "delegation/" + d.delegation_id(), d.data_subject(), "",
          absl::StrFormat("delegated to %s for %s%s", d.app(), absl::StrJoin(d.scopes(), ","),
                          d.has_expire_time()
                              ? " until " + absl::FormatTime(absl::RFC3339_full,
                                                             FromTs(d.expire_time()),
                                                             absl::UTCTimeZone())
                              : std::string()));
    *response->mutable_delegation() = std::move(d);
    return absl::OkStatus();
  });
}

grpc::Status InfobankService::RevokeDelegation(grpc::ServerContext* ctx,
                                               const consent::v1::RevokeDelegationRequest* request,
                                               consent::v1::RevokeDelegationResponse* response) {
  return Serve(deps_.resolver, ctx, [&](const Principal& caller) -> absl::Status {
    absl::StatusOr<std::string> person = Person(caller, "", kPersonOnly);
    CITYOS_RETURN_IF_ERROR(person.status());
    absl::MutexLock lock(&write_mu_);
    absl::StatusOr<std::optional<consent::v1::Delegation>> found =
        deps_.store->GetDelegation(request->delegation_id());
    CITYOS_RETURN_IF_ERROR(found.status());
    // Another person's delegation is indistinguishable from an unknown one.
    if (!found->has_value() || (*found)->data_subject() != *person) {
      return absl::NotFoundError(
          absl::StrFormat("delegation \"%s\" not found", request->delegation_id()));
    }
    const absl::Time now = deps_.clock->Now();
    consent::v1::Delegation d = AsOf(**std::move(found), now);
    if (d.state() == consent::v1::DELEGATION_STATE_EXPIRED) {
      return absl::FailedPreconditionError(
          absl::StrFormat("delegation \"%s\" already expired", d.delegation_id()));
    }
    if (d.state() == consent::v1::DELEGATION_STATE_ACTIVE) {
      d.set_state(consent::v1::DELEGATION_STATE_REVOKED);
      *d.mutable_revoke_time() = Ts(now);
      CITYOS_RETURN_IF_ERROR(deps_.store->PutDelegation(d));
      Audit(caller, "delegation.revoke", "delegation/" + d.delegation_id(), d.data_subject(), "",
            "revoked delegation to " + d.app());
    }
    *response->mutable_delegation() = std::move(d);
    return absl::OkStatus();
  });
}

grpc::Status InfobankService::ListDelegations(grpc::ServerContext* ctx,
                                              const consent::v1::ListDelegationsRequest* request,
                                              consent::v1::ListDelegationsResponse* response) {
  return Serve(deps_.resolver, ctx, [&](const Principal& caller) -> absl::Status {
    absl::StatusOr<std::string> person = Person(caller, "", kPersonOnly);
    CITYOS_RETURN_IF_ERROR(person.status());
    absl::StatusOr<std::vector<consent::v1::Delegation>> all =
        deps_.store->Delegations(*person, "");
    CITYOS_RETURN_IF_ERROR(all.status());
    const absl::Time now = deps_.clock->Now();
    for (consent::v1::Delegation& d : *all) {
      d = AsOf(std::move(d), now);
      if (d.state() == consent::v1::DELEGATION_STATE_ACTIVE || request->include_inactive()) {
        *response->add_delegations() = std::move(d);
      }
    }
    return absl::OkStatus();
  });
}

}  // namespace cityos::infobank
