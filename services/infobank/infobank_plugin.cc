#include "infobank_plugin.h"

#include <atomic>
#include <map>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "benefits.h"
#include "cityos/audit.h"
#include "cityos/bus.h"
#include "cityos/config.h"
#include "cityos/logging.h"
#include "cityos/policy.h"
#include "cityos/status.h"
#include "cityos/subject.h"
#include "consent_checker.h"
#include "consent_store.h"
#include "personal_store.h"
#include "receipts.h"

namespace cityos::infobank {
namespace {

constexpr char kName[] = "infobank";

class InfobankPlugin final : public ServicePlugin {
 public:
  explicit InfobankPlugin(InfobankCallerResolver resolver) : resolver_(std::move(resolver)) {}
  ~InfobankPlugin() override { Stop(); }

  std::string_view name() const override { return kName; }

  absl::Status Configure(const ConfigNode& section) override {
    CITYOS_RETURN_IF_ERROR(section.CheckKeys(
        {"data_dir", "controller", "data_categories", "sensitive_categories",
         "recipient_categories", "benefit_rules", "personal_data_subjects", "benefits_poll"}));
    CITYOS_ASSIGN_OR_RETURN(data_dir_, section.GetString("data_dir", ""));
    CITYOS_ASSIGN_OR_RETURN(ConfigNode c, section.ChildOrEmpty("controller"));
    CITYOS_RETURN_IF_ERROR(c.CheckKeys({"name", "contact", "address", "email", "phone", "url",
                                        "policy_url", "jurisdiction"}));
    CITYOS_ASSIGN_OR_RETURN(controller_.name, c.GetString("name", "cityos information bank"));
    CITYOS_ASSIGN_OR_RETURN(controller_.contact, c.GetString("contact", ""));
    CITYOS_ASSIGN_OR_RETURN(controller_.address, c.GetString("address", ""));
    CITYOS_ASSIGN_OR_RETURN(controller_.email, c.GetString("email", ""));
    CITYOS_ASSIGN_OR_RETURN(controller_.phone, c.GetString("phone", ""));
    CITYOS_ASSIGN_OR_RETURN(controller_.url, c.GetString("url", ""));
    CITYOS_ASSIGN_OR_RETURN(controller_.policy_url, c.GetString("policy_url", ""));
    CITYOS_ASSIGN_OR_RETURN(controller_.jurisdiction, c.GetString("jurisdiction", "JP"));
    if (section.Has("data_categories")) {
      CITYOS_ASSIGN_OR_RETURN(options_.data_categories, section.GetStringList("data_categories"));
    }
    if (section.Has("sensitive_categories")) {
      CITYOS_ASSIGN_OR_RETURN(options_.sensitive_categories,
                              section.GetStringList("sensitive_categories"));
    }
    CITYOS_ASSIGN_OR_RETURN(ConfigNode cats, section.ChildOrEmpty("recipient_categories"));
    for (const std::string& k : cats.Keys()) {
      CITYOS_ASSIGN_OR_RETURN(options_.recipient_categories[k], cats.GetStringList(k));
    }
    CITYOS_ASSIGN_OR_RETURN(std::vector<ConfigNode> rules, section.ElementsOrEmpty("benefit_rules"));
    for (const ConfigNode& r : rules) {
      CITYOS_RETURN_IF_ERROR(r.CheckKeys({"id", "purpose", "data_category", "points"}));
      BenefitRule rule;
      CITYOS_ASSIGN_OR_RETURN(rule.id, r.GetString("id", ""));
      CITYOS_ASSIGN_OR_RETURN(rule.purpose, r.GetString("purpose", ""));
      CITYOS_ASSIGN_OR_RETURN(rule.data_category, r.GetString("data_category", ""));
      CITYOS_ASSIGN_OR_RETURN(rule.points, r.GetInt("points"));
      if (rule.points <= 0) return r.Error("points", "must be positive");
      if (rule.id.empty()) rule.id = absl::StrCat("rule-", rules_.size() + 1);
      rules_.push_back(std::move(rule));
    }
    if (section.Has("personal_data_subjects")) {
      CITYOS_ASSIGN_OR_RETURN(pds_subjects_, section.GetStringList("personal_data_subjects"));
      for (const std::string& p : pds_subjects_) {
        if (absl::Status s = ValidatePattern(p); !s.ok()) {
          return section.Error("personal_data_subjects", std::string(s.message()));
        }
      }
    }
    CITYOS_ASSIGN_OR_RETURN(benefits_poll_, section.GetDuration("benefits_poll", absl::Seconds(1)));
    if (benefits_poll_ <= absl::ZeroDuration()) {
      return section.Error("benefits_poll", "must be positive");
    }
    return absl::OkStatus();
  }

  absl::Status Start(PluginContext& context) override {
    std::string dir = data_dir_;
    if (dir.empty()) {
      CITYOS_ASSIGN_OR_RETURN(dir, context.PluginDataDir(kName));
    }
    CITYOS_ASSIGN_OR_RETURN(store_, ConsentStore::Open(dir + "/consents.db"));
    CITYOS_ASSIGN_OR_RETURN(signer_, ReceiptSigner::Create(dir + "/receipt.key", controller_));
    CITYOS_ASSIGN_OR_RETURN(personal_, PersonalStore::Open(dir, context.clock()));
    CITYOS_ASSIGN_OR_RETURN(benefits_,
                            BenefitLedger::Open(dir + "/benefits.db", rules_, context.clock()));
    const NodeInfo& info = context.node();
    node_ = Principal::Node(info.trust_domain, info.name);
    InfobankDeps deps{.store = store_.get(),
                      .index = &index_,
                      .pdp = context.policy(),
                      .audit = context.audit(),
                      .clock = context.clock(),
                      .signer = signer_.get(),
                      .personal = personal_.get(),
                      .benefits = benefits_.get(),
                      .resolver = resolver_,
                      .bank = node_};
    if (!deps.resolver) {
      deps.resolver = [&context](grpc::ServerContext* call) { return context.Authenticate(*call); };
    }
    service_ = std::make_unique<InfobankService>(std::move(deps), options_);
    CITYOS_RETURN_IF_ERROR(service_->Start());
    pdp_ = context.policy();
    pdp_->SetConsentChecker(&index_);
    // Decisions cached before the bank answered are stale now.
    pdp_->Invalidate({.kind = PolicyChange::Kind::kConsent});

    stop_.store(false);
    for (const std::string& pattern : pds_subjects_) {
      CITYOS_ASSIGN_OR_RETURN(std::unique_ptr<Subscription> sub,
                              context.bus()->Subscribe(node_, {.subject_pattern = pattern}));
      subs_.push_back(std::move(sub));
    }
    for (auto& sub : subs_) {
      threads_.emplace_back([this, s = sub.get()] { Ingest(s); });
    }
    audit_ = context.audit();
    threads_.emplace_back([this] { CreditLoop(); });
    LogInfo("infobank", "information bank started",
            {{"dir", dir}, {"consents", std::to_string(index_.size())},
             {"receipt_key", signer_->key_id()}});
    return absl::OkStatus();
  }

  std::vector<HostedService> Services() override {
    if (service_ == nullptr) return {};
    return {{consent::v1::ConsentService::service_full_name(), service_.get()}};
  }

  void Stop() override {
    if (pdp_ != nullptr) {
      pdp_->SetConsentChecker(nullptr);
      pdp_->Invalidate({.kind = PolicyChange::Kind::kConsent});
      pdp_ = nullptr;
    }
    stop_.store(true);
    for (auto& sub : subs_) sub->Close();
    {
      absl::MutexLock lock(&poll_mu_);
      poll_stop_ = true;
    }
    for (std::thread& t : threads_) t.join();
    threads_.clear();
    subs_.clear();
    if (service_ != nullptr) service_->Stop();
  }

 private:
  // Keeps every event about a person in the personal data store.
  void Ingest(Subscription* sub) {
    std::vector<Delivery> batch;
    while (!stop_.load()) {
      batch.clear();
      absl::Status s = sub->Next(256, absl::Milliseconds(200), &batch);
      if (!s.ok()) {
        if (!stop_.load()) LogWarn("infobank", "bus ingestion ended", {{"error", s.ToString()}});
        return;
      }
      for (const Delivery& d : batch) {
        const event::v1::Event& e = d.message->event();
        if (e.data_subject().empty()) continue;
        absl::Status put = personal_->Put(e);
        // FAILED_PRECONDITION: the person's data was deleted; keep nothing.
        if (!put.ok() && !absl::IsFailedPrecondition(put)) {
          LogWarn("infobank", "cannot keep personal event",
                     {{"id", e.id()}, {"error", put.ToString()}});
        }
      }
    }
  }

  // Credits benefits for provisions under consent, read from the audit log
  // (allowed read / subscribe / history entries that name a consent). The
  // ledger is idempotent by provision id (the audit sequence), so reading
  // the log again after a restart never pays twice.
  void CreditLoop() {
    uint64_t after = 0;
    while (true) {
      {
        absl::MutexLock lock(&poll_mu_);
        auto stopped = [this]() ABSL_SHARED_LOCKS_REQUIRED(poll_mu_) { return poll_stop_; };
        poll_mu_.AwaitWithTimeout(absl::Condition(&stopped), benefits_poll_);
        if (poll_stop_) return;
      }
      while (true) {
        AuditQuery q;
        q.after_sequence = after;
        q.limit = 1000;
        absl::StatusOr<AuditPage> page = audit_->Query(q);
        if (!page.ok()) break;
        for (const exchange::v1::AuditEntry& e : page->entries) {
          after = std::max(after, e.sequence());
          if (e.decision() != exchange::v1::EFFECT_ALLOW || e.consent_id().empty() ||
              e.data_subject().empty()) {
            continue;
          }
          if (e.action() != "read" && e.action() != "subscribe" && e.action() != "history") {
            continue;
          }
          absl::StatusOr<Principal> who = Principal::FromSpiffeId(e.principal());
          absl::StatusOr<std::optional<consent::v1::Consent>> c =
              store_->GetConsent(e.consent_id());
          std::string category;
          if (c.ok() && c->has_value() && !(*c)->data_categories().empty()) {
            category = (*c)->data_categories(0);
          }
          auto credited = benefits_->CreditProvision(
              absl::StrCat("audit:", e.sequence()), e.data_subject(), who.ok() ? who->org : "",
              e.purpose(), category, e.consent_id());
          if (!credited.ok()) {
            LogWarn("infobank", "cannot credit benefit", {{"error", credited.status().ToString()}});
          }
        }
        if (page->next_after_sequence == 0) break;
      }
    }
  }

  const InfobankCallerResolver resolver_;
  std::string data_dir_;
  ControllerInfo controller_;
  InfobankOptions options_;
  std::vector<BenefitRule> rules_;
  std::vector<std::string> pds_subjects_ = {">"};
  absl::Duration benefits_poll_ = absl::Seconds(1);

  Principal node_;
  ConsentIndex index_;
  std::unique_ptr<ConsentStore> store_;
  std::unique_ptr<ReceiptSigner> signer_;
  std::unique_ptr<PersonalStore> personal_;
  std::unique_ptr<BenefitLedger> benefits_;
  std::unique_ptr<InfobankService> service_;
  PolicyDecisionPoint* pdp_ = nullptr;
  AuditLog* audit_ = nullptr;
  std::vector<std::unique_ptr<Subscription>> subs_;
  std::vector<std::thread> threads_;
  std::atomic<bool> stop_{false};
  absl::Mutex poll_mu_;
  bool poll_stop_ ABSL_GUARDED_BY(poll_mu_) = false;
};

}  // namespace

std::unique_ptr<ServicePlugin> MakeInfobankPlugin(InfobankCallerResolver resolver) {
  return std::make_unique<InfobankPlugin>(std::move(resolver));
}

}  // namespace cityos::infobank

namespace cityos {
absl::Status RegisterInfobankPlugin(PluginRegistry& registry) {
  return registry.Register("infobank", [] { return infobank::MakeInfobankPlugin(); });
}
}  // namespace cityos
