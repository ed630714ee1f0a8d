// The policy decision point: policy administration (compile, swap whole),
// indexed and cached decisions, purposes, emergencies (persisted, watched by
// a timer thread), hooks and watchers.
#include <openssl/evp.h>

#include <algorithm>
#include <atomic>
#include <filesystem>
#include <map>
#include <thread>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/mutex.h"
#include "cityos/audit.h"
#include "cityos/clock.h"
#include "cityos/id.h"
#include "cityos/logging.h"
#include "cityos/policy.h"
#include "cityos/proto_time.h"
#include "cityos/status.h"
#include "core/file_util.h"
#include "core/strings.h"
#include "google/protobuf/util/json_util.h"
#include "policy/compiled_policy.h"
#include "policy/decision_cache.h"
#include "policy/evaluator.h"
#include "policy/geo.h"

namespace cityos {
namespace {

using exchange::v1::Emergency;
using policy_internal::DecisionCache;
using policy_internal::EmergencyWindow;
using policy_internal::EvalEnv;
using policy_internal::PolicySet;

constexpr size_t kErrorsInMessage = 5;
constexpr absl::Duration kEmergencyPoll = absl::Milliseconds(10);
constexpr size_t kMaxEmergencyReason = 1024;

std::string Sha256Hex(std::string_view data) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_Digest(data.data(), data.size(), md, &len, EVP_sha256(), nullptr);
  static const char kHex[] = "0123456789abcdef";
  std::string out;
  for (unsigned int i = 0; i < len; ++i) {
    out.push_back(kHex[md[i] >> 4]);
    out.push_back(kHex[md[i] & 15]);
  }
  return out;
}

bool ValidPurposeName(std::string_view s) {
  if (s.empty() || s.size() > 64) return false;
  return std::all_of(s.begin(), s.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_';
  });
}

std::vector<PurposeInfo> DefaultPurposes() {
  return {
      {"disaster_response", "Saving lives and property in a declared emergency",
       false},
      {"carbon_accounting", "Measuring and reporting greenhouse-gas emissions",
       false},
      {"medical_care", "Diagnosis and treatment of the person concerned",
       false},
      {"elderly_care", "Care and monitoring of elderly residents", false},
      {"mobility_operations", "Operating transport networks and services",
       false},
      {"research", "Scientific and statistical research", false},
      {"commercial", "Commercial services and products", false},
      {"personal_use", "The person's own use of their data", false},
  };
}

absl::Time EmergencyStart(const Emergency& e) {
  auto t = TimestampFromProto(e.window().start(), "start");
  return t.ok() ? *t : absl::InfinitePast();
}
absl::Time EmergencyEnd(const Emergency& e) {
  auto t = TimestampFromProto(e.window().end(), "end");
  return t.ok() ? *t : absl::InfiniteFuture();
}
bool EmergencyEnded(const Emergency& e) { return e.has_end_time(); }

exchange::v1::EmergencyState StateAt(const Emergency& e, absl::Time now) {
  if (EmergencyEnded(e)) return exchange::v1::EMERGENCY_STATE_ENDED;
  if (now < EmergencyStart(e)) return exchange::v1::EMERGENCY_STATE_SCHEDULED;
  if (now < EmergencyEnd(e)) return exchange::v1::EMERGENCY_STATE_ACTIVE;
  return exchange::v1::EMERGENCY_STATE_EXPIRED;
}

class PdpImpl final : public PolicyDecisionPoint {
 public:
  explicit PdpImpl(PdpOptions options)
      : options_(std::move(options)),
        clock_(options_.clock != nullptr ? options_.clock : Clock::Real()),
        cache_(options_.cache_capacity) {
    if (options_.node) node_ = &*options_.node;
    auto snap = std::make_shared<Snapshot>();
    snap->set = std::make_shared<const PolicySet>();
    snap->emergencies = std::make_shared<const std::vector<EmergencyWindow>>();
    for (const PurposeInfo& p :
         options_.purposes.empty() ? DefaultPurposes() : options_.purposes) {
      purposes_[p.name] = p;
      snap->purposes[p.name] = p.profiling;
    }
    snapshot_ = std::move(snap);
  }

  ~PdpImpl() override {
    {
      absl::MutexLock lock(&timer_mu_);
      stop_ = true;
    }
    if (timer_.joinable()) timer_.join();
  }

  absl::Status Init() {
    if (!options_.state_dir.empty()) {
      std::error_code ec;
      std::filesystem::create_directories(options_.state_dir, ec);
      if (ec) {
        return absl::InternalError(
            absl::StrCat("creating ", options_.state_dir, ": ", ec.message()));
      }
      const std::string path = EmergencyFile();
      absl::StatusOr<std::string> text = ReadFileToString(path);
      if (text.ok()) {
        exchange::v1::ListEmergenciesResponse list;
        google::protobuf::util::JsonParseOptions opts;
        opts.ignore_unknown_fields = true;
        auto st =
            google::protobuf::util::JsonStringToMessage(*text, &list, opts);
        if (!st.ok()) {
          return absl::DataLossError(absl::StrCat(
              path,
              ": not a valid emergency list: ", st.message().as_string()));
        }
        absl::MutexLock lock(&mu_);
        for (auto& e : *list.mutable_emergencies())
          emergencies_.push_back(std::move(e));
        PublishEmergenciesLocked();
      } else if (!absl::IsNotFound(text.status())) {
        return text.status();
      }
    }
    {
      absl::MutexLock lock(&mu_);
      last_active_ = ActiveIdsLocked(clock_->Now());
    }
    timer_ = std::thread([this] { TimerLoop(); });
    return absl::OkStatus();
  }

  // --- decisions ---

  std::shared_ptr<const Decision> Decide(
      const AccessRequest& request) override {
    if (request.principal == nullptr || !cache_.enabled() ||
        request.time != absl::InfinitePast()) {
      return DecideUncached(request);
    }
    const absl::Time now = clock_->Now();
    // The hit path reads no snapshot (its mutex and reference count would be
    // shared by every deciding thread). The epoch is read first: a load swaps
    // the set and its flag before bumping the epoch, so a key built with a
    // stale flag is only ever stored under a stale epoch, never served.
    const uint64_t epoch = cache_.epoch();
    const bool with_location = has_emergency_rules_.load(std::memory_order_acquire);
    // A per-thread key buffer saves an allocation per decision; a hook that
    // decides again from inside Compute gets its own.
    thread_local std::string tl_key;
    thread_local int depth = 0;
    std::string local_key;
    std::string& key = depth == 0 ? tl_key : local_key;
    ++depth;
    struct Exit {
      int& d;
      ~Exit() { --d; }
    } exit{depth};
    DecisionCache::MakeKey(request, with_location, &key);
    if (auto hit = cache_.Find(key, now)) return hit;
    std::shared_ptr<const Decision> d = Compute(*GetSnapshot(), request, now);
    cache_.Insert(key, epoch, now, d, request.principal->org,
                  request.resource.data_subject);
    return d;
  }

  std::shared_ptr<const Decision> DecideUncached(
      const AccessRequest& request) override {
    const absl::Time now =
        request.time == absl::InfinitePast() ? clock_->Now() : request.time;
    return Compute(*GetSnapshot(), request, now);
  }

  bool MayAllow(const AccessRequest& request) override {
    if (request.principal == nullptr) return false;
    if (policy_internal::IsNodePrincipal(*request.principal, node_))
      return true;
    std::shared_ptr<const Snapshot> snap = GetSnapshot();
    if (!request.purpose.empty() &&
        !snap->purposes.contains(AV(request.purpose)))
      return false;
    const absl::Time now =
        request.time == absl::InfinitePast() ? clock_->Now() : request.time;
    EvalEnv env = MakeEnv(*snap);
    // Unknown attributes are wildcards, so the resource indexes cannot narrow
    // the search; the per-action list still skips other actions' rules.
    for (uint32_t i : snap->set->RulesFor(request.action)) {
      const auto& r = snap->set->rules()[i];
      if (r.allow && policy_internal::MayMatch(r, request, now, env))
        return true;
    }
    return false;
  }

  // --- policies ---

  absl::StatusOr<PolicySetInfo> Load(const Principal& who,
                                     std::vector<PolicyDocumentText> documents,
                                     const LoadOptions& options) override {
    absl::MutexLock load_lock(&load_mu_);
    std::map<std::string, exchange::v1::PolicyDocument> docs;
    uint64_t revision;
    {
      absl::ReaderMutexLock lock(&mu_);
      docs = documents_;
      revision = revision_;
    }
    if (options.expected_revision != 0 &&
        options.expected_revision != revision) {
      return absl::FailedPreconditionError(
          absl::StrCat("policy revision is ", revision, ", not the expected ",
                       options.expected_revision, " (reload and retry)"));
    }
    if (options.replace_all) docs.clear();
    for (const std::string& name : options.remove) {
      if (docs.erase(name) == 0 && !options.replace_all) {
        return absl::InvalidArgumentError(
            absl::StrCat("remove: no policy document named \"", name, "\""));
      }
    }
    const absl::Time now = clock_->Now();
    absl::flat_hash_set<std::string> given;
    for (PolicyDocumentText& d : documents) {
      if (!given.insert(d.name).second) {
        return absl::InvalidArgumentError(
            absl::StrCat("document \"", d.name, "\" given twice"));
      }
      exchange::v1::PolicyDocument pd;
      pd.set_name(d.name);
      pd.set_content(std::move(d.content));
      pd.set_sha256(Sha256Hex(pd.content()));
      TimestampToProto(now, pd.mutable_load_time());
      pd.set_loaded_by(who.SpiffeId());
      docs[pd.name()] = std::move(pd);
    }
    std::vector<PolicyDocumentText> texts;
    for (const auto& [name, pd] : docs) texts.push_back({name, pd.content()});
    std::vector<exchange::v1::PolicyError> errors;
    std::shared_ptr<const PolicySet> set = CompileWith(texts, &errors);
    if (set == nullptr) {
      std::vector<std::string> lines;
      for (size_t i = 0; i < errors.size() && i < kErrorsInMessage; ++i) {
        lines.push_back(absl::StrCat(errors[i].name(), ":", errors[i].line(),
                                     ": ", errors[i].message()));
      }
      std::string msg = absl::StrCat("policy set not loaded (", errors.size(),
                                     " error", errors.size() == 1 ? "" : "s",
                                     "): ", absl::StrJoin(lines, "; "));
      if (errors.size() > kErrorsInMessage) {
        absl::StrAppend(&msg, "; and ", errors.size() - kErrorsInMessage,
                        " more (ValidatePolicies lists them all)");
      }
      return absl::InvalidArgumentError(msg);
    }
    absl::flat_hash_map<std::string, uint32_t> per_doc;
    for (const auto& r : set->rules()) ++per_doc[r.document];
    for (auto& [name, pd] : docs) pd.set_rules(per_doc[name]);
    PolicySetInfo info;
    {
      absl::MutexLock lock(&mu_);
      documents_ = docs;
      info.revision = ++revision_;
      auto snap = std::make_shared<Snapshot>(*snapshot_);
      snap->set = set;
      snap->revision = revision_;
      snapshot_ = std::move(snap);
      has_emergency_rules_.store(set->has_emergency_rules(), std::memory_order_release);
      cache_.BumpEpoch();
    }
    info.rules = set->rules().size();
    for (auto& [name, pd] : docs) info.documents.push_back(pd);
    if (options_.audit != nullptr) {
      exchange::v1::AuditEntry e;
      TimestampToProto(now, e.mutable_time());
      e.set_principal(who.SpiffeId());
      e.set_action("policy.load");
      std::vector<std::string> names;
      for (const auto& d : info.documents) names.push_back(d.name());
      e.set_resource(absl::StrJoin(names, ","));
      e.set_severity(exchange::v1::SEVERITY_NOTICE);
      e.set_reason(
          absl::StrCat("revision ", info.revision, ": ", info.documents.size(),
                       " documents, ", info.rules, " rules",
                       options.replace_all ? " (replace all)" : "",
                       options.remove.empty()
                           ? ""
                           : absl::StrCat(", removed ",
                                          absl::StrJoin(options.remove, ","))));
      options_.audit->Append(std::move(e));
    }
    Notify({.kind = PolicyChange::Kind::kPolicies});
    return info;
  }

  ValidationResult Validate(const std::vector<PolicyDocumentText>& documents,
                            bool merge_with_current) override {
    std::map<std::string, std::string> docs;
    if (merge_with_current) {
      absl::ReaderMutexLock lock(&mu_);
      for (const auto& [name, pd] : documents_) docs[name] = pd.content();
    }
    ValidationResult result;
    std::vector<PolicyDocumentText> texts;
    absl::flat_hash_set<std::string> given;
    for (const auto& d : documents) {
      if (!given.insert(d.name).second) {
        exchange::v1::PolicyError e;
        e.set_name(d.name);
        e.set_message(absl::StrCat("document \"", d.name, "\" given twice"));
        result.errors.push_back(std::move(e));
      }
      docs[d.name] = d.content;
    }
    for (auto& [name, content] : docs) texts.push_back({name, content});
    auto set = CompileWith(texts, &result.errors);
    if (set != nullptr && result.errors.empty())
      result.rules = set->rules().size();
    return result;
  }

  PolicySetInfo Current() const override {
    absl::ReaderMutexLock lock(&mu_);
    PolicySetInfo info;
    info.revision = revision_;
    for (const auto& [name, pd] : documents_) info.documents.push_back(pd);
    info.rules = snapshot_->set->rules().size();
    return info;
  }

  // --- purposes ---

  absl::Status RegisterPurpose(const Principal& who,
                               PurposeInfo purpose) override {
    if (!ValidPurposeName(purpose.name)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "purpose name \"", purpose.name, "\" is not 1-64 of [a-z0-9_]"));
    }
    {
      absl::MutexLock lock(&mu_);
      auto it = purposes_.find(purpose.name);
      if (it != purposes_.end()) {
        if (it->second.profiling == purpose.profiling &&
            it->second.description == purpose.description) {
          return absl::OkStatus();  // registering the same purpose again is a
                                    // no-op
        }
        return absl::AlreadyExistsError(
            absl::StrCat("purpose \"", purpose.name,
                         "\" is already registered differently"));
      }
      purposes_[purpose.name] = purpose;
      auto snap = std::make_shared<Snapshot>(*snapshot_);
      snap->purposes[purpose.name] = purpose.profiling;
      snapshot_ = std::move(snap);
      cache_.BumpEpoch();  // cached "unknown purpose" denials
    }
    if (options_.audit != nullptr) {
      exchange::v1::AuditEntry e;
      TimestampToProto(clock_->Now(), e.mutable_time());
      e.set_principal(who.SpiffeId());
      e.set_action("purpose.register");
      e.set_resource(purpose.name);
      e.set_severity(exchange::v1::SEVERITY_NOTICE);
      e.set_reason(absl::StrCat(purpose.description,
                                purpose.profiling ? " (profiling)" : ""));
      options_.audit->Append(std::move(e));
    }
    Notify({.kind = PolicyChange::Kind::kPurposes});
    return absl::OkStatus();
  }

  bool IsKnownPurpose(std::string_view purpose) const override {
    absl::ReaderMutexLock lock(&mu_);
    return purposes_.contains(AV(purpose));
  }

  std::vector<PurposeInfo> Purposes() const override {
    absl::ReaderMutexLock lock(&mu_);
    std::vector<PurposeInfo> out;
    for (const auto& [name, p] : purposes_) out.push_back(p);
    std::sort(out.begin(), out.end(),
              [](const PurposeInfo& a, const PurposeInfo& b) {
                return a.name < b.name;
              });
    return out;
  }

  // --- emergencies ---

  absl::StatusOr<Emergency> DeclareEmergency(
      const Principal& who, const EmergencyDeclaration& decl) override {
    CITYOS_RETURN_IF_ERROR(policy_internal::ValidateArea(decl.area, "area"));
    if (decl.reason.empty())
      return absl::InvalidArgumentError("reason: required");
    if (decl.reason.size() > kMaxEmergencyReason) {
      return absl::InvalidArgumentError(
          absl::StrCat("reason: ", decl.reason.size(), " bytes, at most ",
                       kMaxEmergencyReason));
    }
    const absl::Time now = clock_->Now();
    const absl::Time start =
        decl.start == absl::InfinitePast() ? now : decl.start;
    if (decl.end == absl::InfinitePast() ||
        decl.end == absl::InfiniteFuture()) {
      return absl::InvalidArgumentError("window.end: required");
    }
    if (decl.end <= now) {
      return absl::InvalidArgumentError(
          absl::StrCat("window.end: ", absl::FormatTime(decl.end),
                       " is not after now (", absl::FormatTime(now), ")"));
    }
    if (decl.end <= start) {
      return absl::InvalidArgumentError(
          "window.end: must be after window.start");
    }
    if (start == absl::InfiniteFuture()) {
      return absl::InvalidArgumentError("window.start: must be a finite time");
    }
    if (decl.end - start > options_.max_emergency) {
      return absl::InvalidArgumentError(
          absl::StrCat("window: ", absl::FormatDuration(decl.end - start),
                       " is longer than the maximum ",
                       absl::FormatDuration(options_.max_emergency)));
    }
    Emergency e;
    e.set_id(UuidToString(NewUuidV7At(now)));
    *e.mutable_area() = decl.area;
    TimestampToProto(start, e.mutable_window()->mutable_start());
    TimestampToProto(decl.end, e.mutable_window()->mutable_end());
    e.set_reason(decl.reason);
    e.set_declared_by(who.SpiffeId());
    e.set_authority(who.org);
    TimestampToProto(now, e.mutable_declare_time());
    {
      absl::MutexLock lock(&mu_);
      emergencies_.push_back(e);
      CITYOS_RETURN_IF_ERROR(PersistLocked());
      PublishEmergenciesLocked();
      last_active_ = ActiveIdsLocked(now);
      cache_.BumpEpoch();
    }
    e.set_state(StateAt(e, now));
    AuditEmergency(who, "emergency.declare", e, now,
                   absl::StrCat(decl.reason, " [", absl::FormatTime(start),
                                " - ", absl::FormatTime(decl.end), "]"));
    Notify({.kind = PolicyChange::Kind::kEmergency});
    return e;
  }

  absl::StatusOr<Emergency> EndEmergency(const Principal& who,
                                         std::string_view id,
                                         std::string_view reason) override {
    const absl::Time now = clock_->Now();
    Emergency out;
    {
      absl::MutexLock lock(&mu_);
      auto it = std::find_if(emergencies_.begin(), emergencies_.end(),
                             [&](const Emergency& e) { return e.id() == id; });
      if (it == emergencies_.end()) {
        return absl::NotFoundError(
            absl::StrCat("no emergency \"", AV(id), "\""));
      }
      const auto state = StateAt(*it, now);
      if (state == exchange::v1::EMERGENCY_STATE_ENDED ||
          state == exchange::v1::EMERGENCY_STATE_EXPIRED) {
        return absl::FailedPreconditionError(absl::StrCat(
            "emergency ", AV(id), " is already ",
            state == exchange::v1::EMERGENCY_STATE_ENDED ? "ended"
                                                         : "expired"));
      }
      Emergency saved = *it;
      it->set_ended_by(who.SpiffeId());
      TimestampToProto(now, it->mutable_end_time());
      it->set_end_reason(std::string(reason));
      if (absl::Status st = PersistLocked(); !st.ok()) {
        *it = std::move(saved);
        return st;
      }
      out = *it;
      PublishEmergenciesLocked();
      last_active_ = ActiveIdsLocked(now);
      cache_.BumpEpoch();
    }
    out.set_state(exchange::v1::EMERGENCY_STATE_ENDED);
    AuditEmergency(who, "emergency.end", out, now, std::string(reason));
    Notify({.kind = PolicyChange::Kind::kEmergency});
    return out;
  }

  std::vector<Emergency> ListEmergencies(bool include_ended) const override {
    const absl::Time now = clock_->Now();
    absl::ReaderMutexLock lock(&mu_);
    std::vector<Emergency> out;
    for (auto it = emergencies_.rbegin(); it != emergencies_.rend(); ++it) {
      Emergency e = *it;
      e.set_state(StateAt(e, now));
      if (!include_ended &&
          (e.state() == exchange::v1::EMERGENCY_STATE_ENDED ||
           e.state() == exchange::v1::EMERGENCY_STATE_EXPIRED)) {
        continue;
      }
      out.push_back(std::move(e));
    }
    return out;
  }

  // --- hooks ---

  void SetConsentChecker(ConsentChecker* c) override {
    consent_.store(c, std::memory_order_release);
    cache_.BumpEpoch();
  }
  void SetContractChecker(ContractChecker* c) override {
    contract_.store(c, std::memory_order_release);
    cache_.BumpEpoch();
  }
  void SetJurisdictionResolver(JurisdictionResolver* r) override {
    jurisdiction_.store(r, std::memory_order_release);
    cache_.BumpEpoch();
  }

  void Invalidate(const PolicyChange& change) override {
    using Kind = PolicyChange::Kind;
    if ((change.kind == Kind::kConsent || change.kind == Kind::kContract) &&
        (!change.data_subject.empty() || !change.org.empty())) {
      // Only the entries about that person and/or recipient org.
      const std::string ds = change.data_subject, org = change.org;
      cache_.EraseIf([&](std::string_view e_org, std::string_view e_ds) {
        return (ds.empty() || e_ds == ds) && (org.empty() || e_org == org);
      });
    } else {
      cache_.BumpEpoch();
    }
    Notify(change);
  }

  uint64_t Watch(std::function<void(const PolicyChange&)> fn) override {
    absl::MutexLock lock(&watch_mu_);
    const uint64_t id = next_watch_++;
    watchers_.emplace(id, std::move(fn));
    return id;
  }
  void Unwatch(uint64_t id) override {
    absl::MutexLock lock(&watch_mu_);
    watchers_.erase(id);
  }

 private:
  // What a decision reads, swapped whole on every change.
  struct Snapshot {
    std::shared_ptr<const PolicySet> set;
    std::shared_ptr<const std::vector<EmergencyWindow>> emergencies;
    absl::flat_hash_map<std::string, bool> purposes;  // name -> profiling
    uint64_t revision = 0;
  };

  std::shared_ptr<const Snapshot> GetSnapshot() const {
    absl::ReaderMutexLock lock(&mu_);
    return snapshot_;
  }

  EvalEnv MakeEnv(const Snapshot& snap) const {
    EvalEnv env;
    env.consent = consent_.load(std::memory_order_acquire);
    env.contract = contract_.load(std::memory_order_acquire);
    env.jurisdiction = jurisdiction_.load(std::memory_order_acquire);
    env.emergencies = snap.emergencies;
    env.purposes = &snap.purposes;
    env.node = node_;
    env.revision = snap.revision;
    return env;
  }

  std::shared_ptr<const Decision> Compute(const Snapshot& snap,
                                          const AccessRequest& request,
                                          absl::Time now) {
    // As in Decide: a per-thread buffer unless a hook re-enters.
    thread_local std::vector<uint32_t> tl_candidates;
    thread_local int depth = 0;
    std::vector<uint32_t> local;
    std::vector<uint32_t>& candidates = depth == 0 ? tl_candidates : local;
    ++depth;
    struct Exit {
      int& d;
      ~Exit() { --d; }
    } exit{depth};
    snap.set->Candidates(request, &candidates);
    return policy_internal::Evaluate(*snap.set, candidates, request, now,
                                     MakeEnv(snap));
  }

  std::shared_ptr<const PolicySet> CompileWith(
      const std::vector<PolicyDocumentText>& texts,
      std::vector<exchange::v1::PolicyError>* errors) {
    absl::flat_hash_set<std::string> known;
    {
      absl::ReaderMutexLock lock(&mu_);
      for (const auto& [name, p] : purposes_) known.insert(name);
    }
    return policy_internal::CompileSet(
        texts, [&](std::string_view p) { return known.contains(AV(p)); },
        errors);
  }

  std::string EmergencyFile() const {
    return options_.state_dir + "/emergencies.json";
  }

  absl::Status PersistLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (options_.state_dir.empty()) return absl::OkStatus();
    exchange::v1::ListEmergenciesResponse list;
    for (const auto& e : emergencies_) *list.add_emergencies() = e;
    std::string json;
    google::protobuf::util::JsonPrintOptions opts;
    opts.add_whitespace = true;
    auto st = google::protobuf::util::MessageToJsonString(list, &json, opts);
    if (!st.ok()) return absl::InternalError(st.message().as_string());
    return WriteFileAtomically(EmergencyFile(), json, 0600);
  }

  void PublishEmergenciesLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    auto windows = std::make_shared<std::vector<EmergencyWindow>>();
    for (const auto& e : emergencies_) {
      absl::Time end = EmergencyEnd(e);
      if (EmergencyEnded(e)) {
        auto t = TimestampFromProto(e.end_time(), "end_time");
        if (t.ok()) end = std::min(end, *t);
      }
      windows->push_back({e.id(), e.area(), EmergencyStart(e), end});
    }
    auto snap = std::make_shared<Snapshot>(*snapshot_);
    snap->emergencies = std::move(windows);
    snapshot_ = std::move(snap);
  }

  std::vector<std::string> ActiveIdsLocked(absl::Time now) const
      ABSL_SHARED_LOCKS_REQUIRED(mu_) {
    std::vector<std::string> ids;
    for (const auto& e : emergencies_) {
      if (StateAt(e, now) == exchange::v1::EMERGENCY_STATE_ACTIVE)
        ids.push_back(e.id());
    }
    return ids;
  }

  // Emergencies start and expire by themselves: poll the clock (so simulated
  // clocks work too) and tell the watchers when the active set changes.
  void TimerLoop() {
    while (true) {
      {
        absl::MutexLock lock(&timer_mu_);
        if (timer_mu_.AwaitWithTimeout(absl::Condition(&stop_), kEmergencyPoll))
          return;
      }
      bool changed = false;
      {
        absl::MutexLock lock(&mu_);
        if (emergencies_.empty()) continue;
        std::vector<std::string> now_active = ActiveIdsLocked(clock_->Now());
        if (now_active != last_active_) {
          last_active_ = std::move(now_active);
          cache_.BumpEpoch();
          changed = true;
        }
      }
      if (changed) Notify({.kind = PolicyChange::Kind::kEmergency});
    }
  }

  void AuditEmergency(const Principal& who, const char* action,
                      const Emergency& e, absl::Time now, std::string reason) {
    if (options_.audit == nullptr) return;
    exchange::v1::AuditEntry a;
    TimestampToProto(now, a.mutable_time());
    a.set_principal(who.SpiffeId());
    a.set_action(action);
    a.set_resource(e.id());
    a.set_emergency_id(e.id());
    a.set_severity(exchange::v1::SEVERITY_HIGH);
    a.set_reason(std::move(reason));
    options_.audit->Append(std::move(a));
  }

  void Notify(const PolicyChange& change) {
    absl::MutexLock lock(&watch_mu_);
    for (auto& [id, fn] : watchers_) fn(change);
  }

  const PdpOptions options_;
  Clock* const clock_;
  const Principal* node_ = nullptr;
  DecisionCache cache_;
  std::atomic<bool> has_emergency_rules_{false};  // of the set in force
  std::atomic<ConsentChecker*> consent_{nullptr};
  std::atomic<ContractChecker*> contract_{nullptr};
  std::atomic<JurisdictionResolver*> jurisdiction_{nullptr};

  absl::Mutex load_mu_;  // serializes Load (compile outside mu_)
  mutable absl::Mutex mu_;
  std::shared_ptr<const Snapshot> snapshot_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, exchange::v1::PolicyDocument> documents_
      ABSL_GUARDED_BY(mu_);
  uint64_t revision_ ABSL_GUARDED_BY(mu_) = 0;
  absl::flat_hash_map<std::string, PurposeInfo> purposes_ ABSL_GUARDED_BY(mu_);
  std::vector<Emergency> emergencies_
      ABSL_GUARDED_BY(mu_);  // declaration order
  std::vector<std::string> last_active_ ABSL_GUARDED_BY(mu_);

  absl::Mutex watch_mu_;
  std::map<uint64_t, std::function<void(const PolicyChange&)>> watchers_
      ABSL_GUARDED_BY(watch_mu_);
  uint64_t next_watch_ ABSL_GUARDED_BY(watch_mu_) = 1;

  absl::Mutex timer_mu_;
  bool stop_ ABSL_GUARDED_BY(timer_mu_) = false;
  std::thread timer_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<PolicyDecisionPoint>>
PolicyDecisionPoint::Create(PdpOptions options) {
  for (const PurposeInfo& p : options.purposes) {
    if (!ValidPurposeName(p.name)) {
      return absl::InvalidArgumentError(
          absl::StrCat("purposes: \"", p.name, "\" is not 1-64 of [a-z0-9_]"));
    }
  }
  if (options.max_emergency <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("max_emergency: must be positive");
  }
  auto pdp = std::make_unique<PdpImpl>(std::move(options));
  CITYOS_RETURN_IF_ERROR(pdp->Init());
  return std::unique_ptr<PolicyDecisionPoint>(std::move(pdp));
}

}  // namespace cityos
