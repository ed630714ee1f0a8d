// The small value types of cityos/policy.h: actions, resource views,
// decisions, the table jurisdiction resolver.
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "cityos/policy.h"
#include "cityos/proto_time.h"
#include "core/strings.h"

namespace cityos {

namespace {

// One row per action: its policy-language name and its proto value.
struct ActionInfo {
  Action action;
  const char* name;
  exchange::v1::Action proto;
};
constexpr ActionInfo kActions[] = {
    {Action::kPublish, "publish", exchange::v1::ACTION_PUBLISH},
    {Action::kSubscribe, "subscribe", exchange::v1::ACTION_SUBSCRIBE},
    {Action::kRead, "read", exchange::v1::ACTION_READ},
    {Action::kHistory, "history", exchange::v1::ACTION_HISTORY},
};

const ActionInfo* FindAction(Action a) {
  for (const ActionInfo& info : kActions) {
    if (info.action == a) return &info;
  }
  return nullptr;
}

// The resource attributes that Event, Resource and Entity all carry under the
// same names; the callers add the ones only some of them have.
template <typename Message>
ResourceView CommonResourceView(const Message& m) {
  ResourceView v;
  v.domain = m.domain();
  v.type = m.type();
  v.classification = m.classification();
  v.owner = m.owner();
  v.region = m.region();
  v.jurisdiction = m.jurisdiction();
  v.data_subject = m.data_subject();
  return v;
}

template <typename Message>
void SetLocation(const Message& m, ResourceView* v) {
  if (m.has_location()) {
    v->location = std::make_pair(m.location().latitude(), m.location().longitude());
  }
}

}  // namespace

const char* ActionName(Action a) {
  const ActionInfo* info = FindAction(a);
  return info != nullptr ? info->name : "unknown";
}

absl::StatusOr<Action> ParseAction(std::string_view s) {
  for (const ActionInfo& info : kActions) {
    if (s == info.name) return info.action;
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "unknown action \"", AV(s), "\" (publish, subscribe, read, history)"));
}

exchange::v1::Action ToProto(Action a) {
  const ActionInfo* info = FindAction(a);
  return info != nullptr ? info->proto : exchange::v1::ACTION_UNSPECIFIED;
}

ResourceView ResourceView::Of(const event::v1::Event& event) {
  ResourceView v = CommonResourceView(event);
  v.subject = event.subject();
  return v;
}

ResourceView ResourceView::Of(const exchange::v1::Resource& resource) {
  ResourceView v = CommonResourceView(resource);
  v.subject = resource.subject();
  v.entity_id = resource.entity_id();
  SetLocation(resource, &v);
  return v;
}

ResourceView ResourceView::Of(const exchange::v1::Entity& entity) {
  ResourceView v = CommonResourceView(entity);
  v.entity_id = entity.id();
  SetLocation(entity, &v);
  return v;
}

bool Decision::has_obligation(exchange::v1::ObligationKind kind) const {
  for (const auto& o : obligations) {
    if (o.kind() == kind) return true;
  }
  return false;
}

exchange::v1::Decision Decision::ToProto() const {
  exchange::v1::Decision p;
  p.set_effect(effect);
  for (const auto& id : rule_ids) p.add_rule_ids(id);
  for (const auto& o : obligations) *p.add_obligations() = o;
  p.set_reason(reason);
  p.set_policy_revision(policy_revision);
  p.set_consent_id(consent_id);
  p.set_contract_id(contract_id);
  p.set_emergency_id(emergency_id);
  return p;
}

namespace {

class TableJurisdictionResolver final : public JurisdictionResolver {
 public:
  TableJurisdictionResolver(
      std::vector<std::pair<std::string, std::string>> table,
      std::string fallback)
      : fallback_(std::move(fallback)) {
    for (auto& [org, j] : table) table_[org] = std::move(j);
  }
  std::string RecipientJurisdiction(const Principal& recipient) override {
    auto it = table_.find(recipient.org);
    return it != table_.end() ? it->second : fallback_;
  }

 private:
  absl::flat_hash_map<std::string, std::string> table_;
  std::string fallback_;
};

}  // namespace

std::unique_ptr<JurisdictionResolver> MakeTableJurisdictionResolver(
    std::vector<std::pair<std::string, std::string>> org_to_jurisdiction,
    std::string fallback) {
  return std::make_unique<TableJurisdictionResolver>(
      std::move(org_to_jurisdiction), std::move(fallback));
}

}  // namespace cityos
