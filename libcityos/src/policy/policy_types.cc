// The small value types of cityos/policy.h: actions, resource views,
// decisions, the table jurisdiction resolver.
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "cityos/policy.h"
#include "cityos/proto_time.h"
#include "core/strings.h"

namespace cityos {

const char* ActionName(Action a) {
  switch (a) {
    case Action::kPublish:
      return "publish";
    case Action::kSubscribe:
      return "subscribe";
    case Action::kRead:
      return "read";
    case Action::kHistory:
      return "history";
  }
  return "unknown";
}

absl::StatusOr<Action> ParseAction(std::string_view s) {
  if (s == "publish") return Action::kPublish;
  if (s == "subscribe") return Action::kSubscribe;
  if (s == "read") return Action::kRead;
  if (s == "history") return Action::kHistory;
  return absl::InvalidArgumentError(absl::StrCat(
      "unknown action \"", AV(s), "\" (publish, subscribe, read, history)"));
}

exchange::v1::Action ToProto(Action a) {
  switch (a) {
    case Action::kPublish:
      return exchange::v1::ACTION_PUBLISH;
    case Action::kSubscribe:
      return exchange::v1::ACTION_SUBSCRIBE;
    case Action::kRead:
      return exchange::v1::ACTION_READ;
    case Action::kHistory:
      return exchange::v1::ACTION_HISTORY;
  }
  return exchange::v1::ACTION_UNSPECIFIED;
}

ResourceView ResourceView::Of(const event::v1::Event& event) {
  ResourceView v;
  v.domain = event.domain();
  v.type = event.type();
  v.subject = event.subject();
  v.classification = event.classification();
  v.owner = event.owner();
  v.region = event.region();
  v.jurisdiction = event.jurisdiction();
  v.data_subject = event.data_subject();
  return v;
}

ResourceView ResourceView::Of(const exchange::v1::Resource& resource) {
  ResourceView v;
  v.domain = resource.domain();
  v.type = resource.type();
  v.subject = resource.subject();
  v.classification = resource.classification();
  v.owner = resource.owner();
  v.region = resource.region();
  v.jurisdiction = resource.jurisdiction();
  v.data_subject = resource.data_subject();
  v.entity_id = resource.entity_id();
  if (resource.has_location()) {
    v.location = std::make_pair(resource.location().latitude(),
                                resource.location().longitude());
  }
  return v;
}

ResourceView ResourceView::Of(const exchange::v1::Entity& entity) {
  ResourceView v;
  v.domain = entity.domain();
  v.type = entity.type();
  v.classification = entity.classification();
  v.owner = entity.owner();
  v.region = entity.region();
  v.jurisdiction = entity.jurisdiction();
  v.data_subject = entity.data_subject();
  v.entity_id = entity.id();
  if (entity.has_location()) {
    v.location = std::make_pair(entity.location().latitude(),
                                entity.location().longitude());
  }
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
