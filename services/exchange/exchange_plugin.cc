#include "exchange_plugin.h"

#include <fcntl.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_format.h"
#include "cityos/audit.h"
#include "cityos/config.h"
#include "cityos/logging.h"
#include "cityos/policy.h"
#include "cityos/state_store.h"
#include "cityos/status.h"
#include "cityos/subject.h"
#include "decision_audit.h"
#include "exchange_service.h"
#include "ingest.h"

namespace cityos {
namespace {

constexpr char kName[] = "exchange";
constexpr size_t kSecretBytes = 32;

absl::StatusOr<size_t> PositiveInt(const ConfigNode& section, std::string_view key,
                                   size_t fallback, int64_t max) {
  CITYOS_ASSIGN_OR_RETURN(int64_t v, section.GetInt(key, static_cast<int64_t>(fallback)));
  if (v < 1 || v > max) {
    return section.Error(key, absl::StrFormat("must be between 1 and %d", max));
  }
  return static_cast<size_t>(v);
}

class ExchangePlugin final : public ServicePlugin {
 public:
  explicit ExchangePlugin(CallerResolver resolver) : resolver_(std::move(resolver)) {}
  ~ExchangePlugin() override { Stop(); }

  std::string_view name() const override { return kName; }

  absl::Status Configure(const ConfigNode& section) override {
    CITYOS_RETURN_IF_ERROR(
        section.CheckKeys({"subjects", "max_batch", "subscribe_max_batch", "store"}));
    if (section.Has("subjects")) {
      CITYOS_ASSIGN_OR_RETURN(ingest_.subjects, section.GetStringList("subjects"));
      for (const std::string& p : ingest_.subjects) {
        if (absl::Status s = ValidatePattern(p); !s.ok()) {
          return section.Error("subjects", std::string(s.message()));
        }
      }
    }
    CITYOS_ASSIGN_OR_RETURN(ingest_.max_batch,
                            PositiveInt(section, "max_batch", ingest_.max_batch, 100000));
    CITYOS_ASSIGN_OR_RETURN(
        service_options_.default_max_batch,
        PositiveInt(section, "subscribe_max_batch", service_options_.default_max_batch,
                    static_cast<int64_t>(service_options_.max_batch_limit)));
    CITYOS_ASSIGN_OR_RETURN(ConfigNode store, section.ChildOrEmpty("store"));
    CITYOS_RETURN_IF_ERROR(
        store.CheckKeys({"max_history_per_entity", "full_sync", "memory_index_mib"}));
    CITYOS_ASSIGN_OR_RETURN(int64_t history, store.GetInt("max_history_per_entity", 0));
    if (history < 0) return store.Error("max_history_per_entity", "must be 0 (all) or more");
    store_options_.max_history_per_entity = static_cast<uint64_t>(history);
    CITYOS_ASSIGN_OR_RETURN(store_options_.full_sync, store.GetBool("full_sync", false));
    constexpr int64_t kMaxIndexMib = int64_t{1} << 20;  // 1 TiB
    CITYOS_ASSIGN_OR_RETURN(
        int64_t index_mib,
        store.GetInt("memory_index_mib",
                     static_cast<int64_t>(store_options_.memory_index_bytes >> 20)));
    if (index_mib < 0 || index_mib > kMaxIndexMib) {
      return store.Error("memory_index_mib",
                         absl::StrFormat("must be between 0 (off) and %d", kMaxIndexMib));
    }
    store_options_.memory_index_bytes = static_cast<size_t>(index_mib) << 20;
    return absl::OkStatus();
  }

  absl::Status Start(PluginContext& context) override {
    if (context.policy() == nullptr || context.audit() == nullptr) {
      return absl::FailedPreconditionError(
          "the exchange needs the node's policy decision point and audit log");
    }
    CITYOS_ASSIGN_OR_RETURN(std::string dir, context.PluginDataDir(kName));
    CITYOS_ASSIGN_OR_RETURN(std::string secret,
                            LoadOrCreatePseudonymSecret(dir + "/pseudonym.key"));
    store_options_.path = dir + "/entities.db";
    store_options_.clock = context.clock();
    CITYOS_ASSIGN_OR_RETURN(store_, OpenSqliteStateStore(store_options_));

    const NodeInfo& info = context.node();
    auditor_ = std::make_unique<DecisionAuditor>(context.audit(), context.clock());
    appliers_ = std::make_unique<RecipientAppliers>(std::move(secret));
    deps_.bus = context.bus();
    deps_.pdp = context.policy();
    deps_.audit = context.audit();
    deps_.store = store_.get();
    deps_.clock = context.clock();
    deps_.node = NodePrincipal(context);
    deps_.auditor = auditor_.get();
    deps_.appliers = appliers_.get();
    deps_.resolver = resolver_;
    if (!deps_.resolver) {
      deps_.resolver = [&context](grpc::ServerContextBase* call) {
        return context.Authenticate(*call);
      };
    }
    ingester_ = std::make_unique<Ingester>(context.bus(), store_.get(), deps_.node, ingest_);
    CITYOS_RETURN_IF_ERROR(ingester_->Start());
    service_ = std::make_unique<ExchangeServiceImpl>(&deps_, service_options_);
    service_->Start();
    LogInfo("exchange", "exchange started",
            {{"store", store_options_.path},
             {"ingest", std::to_string(ingest_.subjects.size()) + " pattern(s)"},
             {"node", info.name}});
    return absl::OkStatus();
  }

  std::vector<HostedService> Services() override {
    if (service_ == nullptr) return {};
    return {{exchange::v1::ExchangeService::service_full_name(), service_.get()}};
  }

  void Drain() override {
    if (service_ != nullptr) service_->BeginShutdown();
  }

  // The server has stopped taking calls; the service object stays alive
  // until the plug-in is destroyed (the node's server still refers to it).
  void Stop() override {
    if (ingester_ != nullptr) ingester_->Stop();
    if (service_ != nullptr) service_->Stop();
    // The node closes its audit log after the plug-ins stopped: write what
    // is aggregated now and stop the auditor's timer with it. The service
    // object (still referred to by the node's server) takes no calls any
    // more.
    if (auditor_ != nullptr) {
      auditor_->Flush();
      auditor_.reset();
    }
  }

 private:
  // The node's own principal, which the PDP always allows (the exchange
  // reads the bus and publishes announcements as the node).
  static Principal NodePrincipal(PluginContext& context) {
    const NodeInfo& info = context.node();
    return Principal::Node(info.trust_domain, info.name);
  }

  const CallerResolver resolver_;
  IngestOptions ingest_;
  ExchangeServiceOptions service_options_;
  SqliteStateStoreOptions store_options_;
  std::unique_ptr<StateStore> store_;
  std::unique_ptr<DecisionAuditor> auditor_;
  std::unique_ptr<RecipientAppliers> appliers_;
  ExchangeDeps deps_;
  std::unique_ptr<Ingester> ingester_;
  std::unique_ptr<ExchangeServiceImpl> service_;
};

}  // namespace

absl::StatusOr<std::string> LoadOrCreatePseudonymSecret(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd >= 0) {
    struct stat st;
    if (::fstat(fd, &st) != 0) {
      ::close(fd);
      return absl::InternalError(absl::StrFormat("%s: cannot stat: %s", path, strerror(errno)));
    }
    if ((st.st_mode & 077) != 0) {
      ::close(fd);
      return absl::FailedPreconditionError(absl::StrFormat(
          "%s: readable by group or others (mode %o); chmod 600 it", path, st.st_mode & 0777));
    }
    std::string secret(kSecretBytes + 1, '\0');
    ssize_t n = ::read(fd, secret.data(), secret.size());
    ::close(fd);
    if (n != static_cast<ssize_t>(kSecretBytes)) {
      return absl::FailedPreconditionError(absl::StrFormat(
          "%s: expected %d bytes, found %d; restore the file from a backup (a new key "
          "changes every pseudonym)",
          path, kSecretBytes, n));
    }
    secret.resize(kSecretBytes);
    return secret;
  }
  if (errno != ENOENT) {
    return absl::FailedPreconditionError(
        absl::StrFormat("%s: cannot read: %s", path, strerror(errno)));
  }
  std::string secret(kSecretBytes, '\0');
  size_t got = 0;
  while (got < kSecretBytes) {
    ssize_t n = ::getrandom(secret.data() + got, kSecretBytes - got, 0);
    if (n < 0) {
      if (errno == EINTR) continue;
      return absl::InternalError(absl::StrFormat("getrandom: %s", strerror(errno)));
    }
    got += static_cast<size_t>(n);
  }
  // Written to a temporary file and renamed, so a crash never leaves a short
  // key behind.
  std::string tmp = path + ".tmp";
  fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) {
    return absl::FailedPreconditionError(
        absl::StrFormat("%s: cannot create: %s", tmp, strerror(errno)));
  }
  bool ok = ::write(fd, secret.data(), secret.size()) == static_cast<ssize_t>(secret.size()) &&
            ::fsync(fd) == 0;
  ::close(fd);
  if (!ok || ::rename(tmp.c_str(), path.c_str()) != 0) {
    ::unlink(tmp.c_str());
    return absl::InternalError(absl::StrFormat("%s: cannot write: %s", path, strerror(errno)));
  }
  return secret;
}

std::unique_ptr<ServicePlugin> MakeExchangePlugin(CallerResolver resolver) {
  return std::make_unique<ExchangePlugin>(std::move(resolver));
}

absl::Status RegisterExchangePlugin(PluginRegistry& registry) {
  return registry.Register(kName, [] { return MakeExchangePlugin(); });
}

}  // namespace cityos
