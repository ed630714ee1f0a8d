// The `city-sim` plug-in (see sim_plugin.h): paces the simulator against the
// node's clock and publishes its events on the node's bus as the simulated
// organisations (or its meter readings to an MQTT broker), and has the
// consenting citizens grant their consents through the information bank.
#include "sim_plugin.h"

#include <google/protobuf/util/json_util.h>
#include <grpcpp/grpcpp.h>
#include <sys/stat.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <set>
#include <sstream>
#include <thread>
#include <utility>
#include <vector>

#include "absl/random/random.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/mutex.h"
#include "cityos/bus.h"
#include "cityos/ca.h"
#include "cityos/clock.h"
#include "cityos/config.h"
#include "cityos/consent/v1/consent.grpc.pb.h"
#include "cityos/logging.h"
#include "cityos/principal.h"
#include "cityos/status.h"
#include "cityos/tls.h"
#include "mqtt_bridge.h"
#include "sim.h"

namespace cityos::citysim {
namespace {

constexpr char kName[] = "city-sim";

namespace cv1 = ::cityos::consent::v1;

// The demo's development principals for `approve_recipient` (sim_plugin.h).
constexpr char kProposerOrg[] = "demo-infobank-admin";
constexpr char kProposerName[] = "admin";
constexpr char kReviewerOrg[] = "demo-ethics-board";
constexpr char kReviewerName[] = "chair";

// What `grant_consents` / `consents` configure (sim_plugin.h).
struct ConsentOptions {
  std::optional<bool> enabled;  // unset: on iff the node runs tls: auto
  std::string recipient_org = "carbon-office";
  std::string purpose = "carbon_accounting";
  std::vector<std::string> data_categories = {"mobility", "payments.green",
                                              "payments.einvoice"};
  std::string residents_org = "residents";
  std::string address;  // empty: the node's listen address
  bool approve_recipient = false;
  absl::Duration min_backoff = absl::Milliseconds(200);
  absl::Duration max_backoff = absl::Seconds(30);
};

absl::StatusOr<std::string> ReadWholeFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat(path, ": cannot be read"));
  std::ostringstream out;
  out << in.rdbuf();
  return out.str();
}

// "host:port" with a wildcard host replaced by loopback (as the node's
// cityosctl context does).
std::string DialAddress(const std::string& listen) {
  const size_t colon = listen.rfind(':');
  if (colon == std::string::npos) return listen;
  std::string host = listen.substr(0, colon);
  if (host.empty() || host == "0.0.0.0") host = "127.0.0.1";
  if (host == "[::]") host = "[::1]";
  return absl::StrCat(host, listen.substr(colon));
}

absl::Status FromGrpc(const grpc::Status& s, std::string_view what) {
  if (s.ok()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(s.error_code()),
                      absl::StrCat(std::string(what), ": ", s.error_message()));
}

class CitySimPluginImpl final : public CitySimPlugin {
 public:
  ~CitySimPluginImpl() override { Stop(); }

  std::string_view name() const override { return kName; }

  absl::Status Configure(const ConfigNode& section) override {
    CITYOS_ASSIGN_OR_RETURN(
        config_, ParseSimConfig(section, {"backfill", "tick", "backfill_value_added",
                                          "meters_via_mqtt", "mqtt", "batch", "grant_consents",
                                          "consents"}));
    CITYOS_RETURN_IF_ERROR(ConfigureConsents(section));
    CITYOS_ASSIGN_OR_RETURN(backfill_, section.GetDuration("backfill", absl::Hours(24)));
    if (backfill_ < absl::ZeroDuration()) return section.Error("backfill", "must not be negative");
    CITYOS_ASSIGN_OR_RETURN(tick_, section.GetDuration("tick", absl::Seconds(1)));
    if (tick_ <= absl::ZeroDuration()) return section.Error("tick", "must be positive");
    CITYOS_ASSIGN_OR_RETURN(backfill_value_added_, section.GetBool("backfill_value_added", true));
    CITYOS_ASSIGN_OR_RETURN(int64_t batch, section.GetInt("batch", 512));
    if (batch < 1 || batch > 100000) return section.Error("batch", "must be 1-100000");
    batch_ = static_cast<size_t>(batch);
    CITYOS_ASSIGN_OR_RETURN(via_mqtt_, section.GetBool("meters_via_mqtt", false));
    CITYOS_ASSIGN_OR_RETURN(ConfigNode m, section.ChildOrEmpty("mqtt"));
    CITYOS_RETURN_IF_ERROR(
        m.CheckKeys({"host", "port", "client_id", "topic_root", "qos", "username", "password_file",
                     "ca_file", "cert_file", "key_file"}));
    CITYOS_ASSIGN_OR_RETURN(mqtt_.host, m.GetString("host", mqtt_.host));
    CITYOS_ASSIGN_OR_RETURN(int64_t port, m.GetInt("port", 1883));
    mqtt_.port = static_cast<int>(port);
    CITYOS_ASSIGN_OR_RETURN(mqtt_.client_id, m.GetString("client_id", "city-sim"));
    CITYOS_ASSIGN_OR_RETURN(mqtt_.topic_root, m.GetString("topic_root", mqtt_.topic_root));
    CITYOS_ASSIGN_OR_RETURN(int64_t qos, m.GetInt("qos", 1));
    mqtt_.qos = static_cast<int>(qos);
    CITYOS_ASSIGN_OR_RETURN(mqtt_.username, m.GetString("username", ""));
    CITYOS_ASSIGN_OR_RETURN(mqtt_.password_file, m.GetString("password_file", ""));
    CITYOS_ASSIGN_OR_RETURN(mqtt_.ca_file, m.GetString("ca_file", ""));
    CITYOS_ASSIGN_OR_RETURN(mqtt_.cert_file, m.GetString("cert_file", ""));
    CITYOS_ASSIGN_OR_RETURN(mqtt_.key_file, m.GetString("key_file", ""));
    return absl::OkStatus();
  }

  absl::Status Start(PluginContext& context) override {
    CITYOS_ASSIGN_OR_RETURN(sim_, CitySim::Create(config_));
    CITYOS_ASSIGN_OR_RETURN(std::string dir, context.PluginDataDir(kName));
    setup_dir_ = dir;
    CITYOS_RETURN_IF_ERROR(WriteSetup(dir));
    if (via_mqtt_) {
      CITYOS_ASSIGN_OR_RETURN(mqtt_publisher_, carbon::MqttMeterPublisher::Start(mqtt_));
    }
    bus_ = context.bus();
    clock_ = context.clock();
    trust_domain_ = context.node().trust_domain.empty() ? "local" : context.node().trust_domain;
    const absl::Time now = clock_->Now();
    // Start on a reading boundary, `backfill` ago.
    const absl::Duration slot = sim_->reading_length();
    absl::Time start = now - backfill_;
    start = absl::UnixEpoch() + absl::Floor(start - absl::UnixEpoch(), slot);
    runner_ = std::make_unique<SimRunner>(sim_.get(), clock_, start, config_.rates.speed);
    {
      absl::MutexLock lock(&mu_);
      stop_ = false;
      stats_.sim_start = start;
      stats_.sim_now = start;
    }
    if (backfill_value_added_) Publish(sim_->ValueAddedBackfill(now));
    thread_ = std::thread([this] { Loop(); });
    StartConsents(context);
    LogInfo(kName, "city simulator started",
            {{"city", config_.city_token},
             {"enterprises", std::to_string(config_.enterprises.size())},
             {"citizens", std::to_string(config_.citizens)},
             {"consenting", std::to_string(sim_->ConsentingSubjects().size())},
             {"sim_start", absl::FormatTime(start)},
             {"speed", std::to_string(config_.rates.speed)},
             {"meters_via_mqtt", via_mqtt_ ? "true" : "false"},
             {"setup", dir}});
    return absl::OkStatus();
  }

  std::vector<HostedService> Services() override { return {}; }

  void Stop() override {
    {
      absl::MutexLock lock(&mu_);
      stop_ = true;
      if (active_call_ != nullptr) active_call_->TryCancel();
    }
    if (thread_.joinable()) thread_.join();
    if (consent_thread_.joinable()) consent_thread_.join();
    if (mqtt_publisher_ != nullptr) mqtt_publisher_->Stop();
  }

  const CitySim* sim() const override { return sim_.get(); }

  CitySimStats stats() const override {
    absl::MutexLock lock(&mu_);
    CitySimStats s = stats_;
    s.mqtt_connected = mqtt_publisher_ != nullptr && mqtt_publisher_->connected();
    return s;
  }

 private:
  absl::Status ConfigureConsents(const ConfigNode& section) {
    if (section.Has("grant_consents")) {
      CITYOS_ASSIGN_OR_RETURN(bool on, section.GetBool("grant_consents"));
      consent_.enabled = on;
    }
    CITYOS_ASSIGN_OR_RETURN(ConfigNode c, section.ChildOrEmpty("consents"));
    CITYOS_RETURN_IF_ERROR(c.CheckKeys({"recipient_org", "purpose", "data_categories",
                                        "residents_org", "address", "approve_recipient",
                                        "min_backoff", "max_backoff"}));
    CITYOS_ASSIGN_OR_RETURN(consent_.recipient_org,
                            c.GetString("recipient_org", consent_.recipient_org));
    if (consent_.recipient_org.empty()) return c.Error("recipient_org", "must not be empty");
    CITYOS_ASSIGN_OR_RETURN(consent_.purpose, c.GetString("purpose", consent_.purpose));
    if (consent_.purpose.empty()) return c.Error("purpose", "must not be empty");
    if (c.Has("data_categories")) {
      CITYOS_ASSIGN_OR_RETURN(consent_.data_categories, c.GetStringList("data_categories"));
      if (consent_.data_categories.empty()) {
        return c.Error("data_categories", "at least one data category is needed");
      }
    }
    CITYOS_ASSIGN_OR_RETURN(consent_.residents_org,
                            c.GetString("residents_org", consent_.residents_org));
    if (consent_.residents_org.empty()) return c.Error("residents_org", "must not be empty");
    CITYOS_ASSIGN_OR_RETURN(consent_.address, c.GetString("address", ""));
    CITYOS_ASSIGN_OR_RETURN(consent_.approve_recipient, c.GetBool("approve_recipient", false));
    CITYOS_ASSIGN_OR_RETURN(consent_.min_backoff,
                            c.GetDuration("min_backoff", consent_.min_backoff));
    CITYOS_ASSIGN_OR_RETURN(consent_.max_backoff,
                            c.GetDuration("max_backoff", consent_.max_backoff));
    if (consent_.min_backoff <= absl::ZeroDuration()) {
      return c.Error("min_backoff", "must be positive");
    }
    if (consent_.max_backoff < consent_.min_backoff) {
      return c.Error("max_backoff", "must be at least min_backoff");
    }
    return absl::OkStatus();
  }

  // Decides whether consents are granted (sim_plugin.h) and starts the thread.
  void StartConsents(PluginContext& context) {
    const NodeInfo& node = context.node();
    const std::filesystem::path pki = std::filesystem::path(node.data_dir) / "pki";
    const bool dev_pki = !node.data_dir.empty() && std::filesystem::exists(pki / "ca" / "ca.pem") &&
                         std::filesystem::exists(pki / "node.pem");
    const bool wanted = consent_.enabled.value_or(dev_pki);
    if (!wanted) {
      LogInfo(kName, "not granting the citizens' consents",
              {{"why", consent_.enabled.has_value()
                           ? "grant_consents: false"
                           : "the node has no development PKI (it does not run tls: auto); "
                             "grant them through the information bank's ConsentService"},
               {"consenting_subjects", setup_dir_ + "/consenting_subjects.txt"}});
      return;
    }
    if (!dev_pki) {
      LogWarn(kName, "grant_consents: true ignored: not granting the citizens' consents",
              {{"why", absl::StrCat("the node has no development CA in ", (pki / "ca").string(),
                                    " (it does not run tls: auto), so the citizens have no "
                                    "certificates")},
               {"consenting_subjects", setup_dir_ + "/consenting_subjects.txt"}});
      return;
    }
    if (sim_->ConsentingSubjects().empty()) {
      absl::MutexLock lock(&mu_);
      stats_.consents_done = true;
      return;
    }
    ca_dir_ = (pki / "ca").string();
    node_cert_ = (pki / "node.pem").string();
    // The node publishes its bound address only after its plug-ins started;
    // with a configured port it is known now.
    if (!consent_.address.empty()) {
      address_ = consent_.address;
    } else if (!absl::EndsWith(node.listen_address, ":0")) {
      address_ = DialAddress(node.listen_address);
    } else {
      context_ = &context;
    }
    consent_thread_ = std::thread([this] { ConsentLoop(); });
  }

  // Sleeps `d` unless Stop() comes first; false once stopping.
  bool SleepUnlessStopped(absl::Duration d) {
    absl::MutexLock lock(&mu_);
    auto stopped = [this]() ABSL_SHARED_LOCKS_REQUIRED(mu_) { return stop_; };
    mu_.AwaitWithTimeout(absl::Condition(&stopped), d);
    return !stop_;
  }

  bool Stopping() {
    absl::MutexLock lock(&mu_);
    return stop_;
  }

  // Runs one RPC with a deadline; Stop() cancels it.
  template <typename Fn>
  grpc::Status Call(Fn fn) {
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
    {
      absl::MutexLock lock(&mu_);
      if (stop_) return grpc::Status(grpc::StatusCode::CANCELLED, "plug-in stopping");
      active_call_ = &ctx;
    }
    grpc::Status s = fn(&ctx);
    absl::MutexLock lock(&mu_);
    active_call_ = nullptr;
    return s;
  }

  // The consent thread: retries with backoff until every consenting citizen
  // is done or Stop().
  void ConsentLoop() {
    std::set<std::string> done;  // consent thread only
    absl::Duration backoff = consent_.min_backoff;
    absl::BitGen gen;
    std::string last_logged;
    // Give the node a moment to bind and serve.
    if (!SleepUnlessStopped(consent_.min_backoff)) return;
    while (true) {
      absl::Status s = GrantRound(&done);
      if (s.ok()) {
        uint64_t granted = 0, present = 0;
        {
          absl::MutexLock lock(&mu_);
          stats_.consents_done = true;
          stats_.consent_error.clear();
          granted = stats_.consents_granted;
          present = stats_.consents_present;
        }
        LogInfo(kName, "citizens' consents in place",
                {{"recipient_org", consent_.recipient_org},
                 {"purpose", consent_.purpose},
                 {"data_categories", absl::StrJoin(consent_.data_categories, ",")},
                 {"granted", std::to_string(granted)},
                 {"already_present", std::to_string(present)}});
        return;
      }
      if (Stopping()) return;
      {
        absl::MutexLock lock(&mu_);
        ++stats_.consent_failures;
        stats_.consent_error = s.ToString();
      }
      if (s.ToString() != last_logged) {  // once per distinct error
        last_logged = s.ToString();
        const std::string progress =
            absl::StrCat(done.size(), "/", sim_->ConsentingSubjects().size());
        const std::string retry = absl::FormatDuration(backoff);
        if (s.code() == absl::StatusCode::kFailedPrecondition) {
          LogWarn(kName, "granting the citizens' consents failed; retrying",
                  {{"error", last_logged},
                   {"done", progress},
                   {"retry_in", retry},
                   {"hint", absl::StrCat("the data ethics board must approve recipient org ",
                                         consent_.recipient_org,
                                         " (ProposeRecipient, ReviewProposal), or set "
                                         "consents.approve_recipient: true in a demo")}});
        } else {
          LogWarn(kName, "granting the citizens' consents failed; retrying",
                  {{"error", last_logged}, {"done", progress}, {"retry_in", retry}});
        }
      }
      const double jitter = absl::Uniform(gen, 0.8, 1.2);
      if (!SleepUnlessStopped(backoff * jitter)) return;
      backoff = std::min(backoff * 2, consent_.max_backoff);
    }
  }

  // One pass over the consenting citizens not yet in `done`.
  absl::Status GrantRound(std::set<std::string>* done) {
    std::string address = address_;
    if (address.empty()) {
      // Port 0 configured: the node knows its bound address once its server
      // is up, after the plug-ins started; retried until it serves.
      address = context_ != nullptr ? context_->ServingAddress() : "";
      if (address.empty() || absl::EndsWith(address, ":0")) {
        return absl::UnavailableError("the node is not serving yet (no bound address)");
      }
      address = DialAddress(address);
    }
    CITYOS_ASSIGN_OR_RETURN(std::unique_ptr<CityCa> ca, CityCa::Open(ca_dir_));
    if (server_id_.empty()) {
      CITYOS_ASSIGN_OR_RETURN(std::string pem, ReadWholeFile(node_cert_));
      CITYOS_ASSIGN_OR_RETURN(CertificateInfo info, ParseCertificatePem(pem));
      if (info.uris.size() != 1) {
        return absl::FailedPreconditionError(
            absl::StrCat(node_cert_, ": the node certificate has no single SPIFFE id"));
      }
      server_id_ = info.uris[0];
    }
    if (consent_.approve_recipient && !recipient_approved_) {
      CITYOS_RETURN_IF_ERROR(ApproveRecipient(*ca, address));
      recipient_approved_ = true;
    }
    for (const std::string& subject : sim_->ConsentingSubjects()) {
      if (done->contains(subject)) continue;
      if (Stopping()) return absl::CancelledError("plug-in stopping");
      CITYOS_RETURN_IF_ERROR(GrantFor(*ca, address, subject));
      done->insert(subject);
    }
    return absl::OkStatus();
  }

  // A channel to the node as `org`/`name` (user), with a certificate from the
  // development CA kept in <data dir>/<org>/<name>.{pem,key} and reused while
  // it is from this CA, names that principal and is valid for 7 more days.
  absl::StatusOr<std::shared_ptr<grpc::Channel>> ChannelAs(CityCa& ca, const std::string& address,
                                                           const std::string& org,
                                                           const std::string& name,
                                                           const std::vector<std::string>& roles) {
    const std::filesystem::path dir = std::filesystem::path(setup_dir_) / org;
    const std::string out = (dir / name).string();
    const std::string want =
        Principal{.trust_domain = ca.trust_domain(), .org = org, .kind = PrincipalKind::kUser,
                  .name = name}
            .SpiffeId();
    TlsConfig tls{.ca_file = ca.ca_file(),
                  .cert_file = out + ".pem",
                  .key_file = out + ".key",
                  .crl_file = std::filesystem::exists(ca.crl_file()) ? ca.crl_file() : "",
                  .trust_domain = ca.trust_domain()};
    bool reuse = false;
    if (std::filesystem::exists(tls.cert_file) && std::filesystem::exists(tls.key_file)) {
      absl::StatusOr<std::string> pem = ReadWholeFile(tls.cert_file);
      absl::StatusOr<std::string> ca_pem = ReadWholeFile(ca.ca_file());
      if (pem.ok() && ca_pem.ok()) {
        absl::StatusOr<CertificateInfo> info = ParseCertificatePem(*pem);
        absl::StatusOr<CertificateInfo> ca_info = ParseCertificatePem(*ca_pem);
        reuse = info.ok() && ca_info.ok() && info->issuer == ca_info->subject &&
                info->uris == std::vector<std::string>{want} && info->roles == roles &&
                info->not_after > absl::Now() + absl::Hours(24 * 7) && CheckTlsConfig(tls).ok();
      }
    }
    if (!reuse) {
      std::error_code ec;
      std::filesystem::create_directories(dir, ec);
      if (ec) {
        return absl::FailedPreconditionError(
            absl::StrCat(dir.string(), ": cannot be created: ", ec.message()));
      }
      ::chmod(dir.c_str(), 0700);
      CITYOS_ASSIGN_OR_RETURN(CertRecord rec, ca.Issue({.org = org,
                                                        .kind = PrincipalKind::kUser,
                                                        .name = name,
                                                        .roles = roles,
                                                        .out = out}));
      ::chmod(tls.key_file.c_str(), 0600);
      (void)rec;
    }
    CITYOS_ASSIGN_OR_RETURN(std::shared_ptr<grpc::ChannelCredentials> creds,
                            MakeChannelCredentials(tls, server_id_));
    grpc::ChannelArguments args;
    args.SetInt("grpc.use_local_subchannel_pool", 1);
    return grpc::CreateCustomChannel(address, creds, args);
  }

  // The person's consents (all states, every page).
  absl::StatusOr<std::vector<cv1::Consent>> ListAll(cv1::ConsentService::Stub& bank) {
    std::vector<cv1::Consent> all;
    std::string token;
    do {
      cv1::ListConsentsRequest req;
      req.set_include_inactive(true);
      req.set_page_size(1000);
      req.set_page_token(token);
      cv1::ListConsentsResponse resp;
      grpc::Status s =
          Call([&](grpc::ClientContext* ctx) { return bank.ListConsents(ctx, req, &resp); });
      CITYOS_RETURN_IF_ERROR(FromGrpc(s, "ListConsents"));
      for (cv1::Consent& c : *resp.mutable_consents()) all.push_back(std::move(c));
      token = resp.next_page_token();
    } while (!token.empty());
    return all;
  }

  // `subject` grants the consent unless they already gave (or revoked) one
  // to the recipient for the purpose.
  absl::Status GrantFor(CityCa& ca, const std::string& address, const std::string& subject) {
    absl::StatusOr<std::shared_ptr<grpc::Channel>> channel =
        ChannelAs(ca, address, consent_.residents_org, subject, {});
    if (!channel.ok()) {
      return Annotate(channel.status(), absl::StrCat("certificate of data subject ", subject));
    }
    std::unique_ptr<cv1::ConsentService::Stub> bank = cv1::ConsentService::NewStub(*channel);
    absl::StatusOr<std::vector<cv1::Consent>> mine = ListAll(*bank);
    if (!mine.ok()) return Annotate(mine.status(), absl::StrCat("data subject ", subject));
    for (const cv1::Consent& c : *mine) {
      if (c.recipient_org() == consent_.recipient_org &&
          std::find(c.purposes().begin(), c.purposes().end(), consent_.purpose) !=
              c.purposes().end()) {
        absl::MutexLock lock(&mu_);
        ++stats_.consents_present;
        return absl::OkStatus();
      }
    }
    cv1::GrantConsentRequest req;
    req.set_recipient_org(consent_.recipient_org);
    req.add_purposes(consent_.purpose);
    for (const std::string& c : consent_.data_categories) req.add_data_categories(c);
    req.set_collection_method("app");
    req.set_language("zh-CN");
    // A retry of a grant whose answer was lost returns the first result.
    req.set_request_id(absl::StrCat(kName, ":", subject, ":", consent_.recipient_org, ":",
                                    consent_.purpose));
    cv1::GrantConsentResponse resp;
    grpc::Status s =
        Call([&](grpc::ClientContext* ctx) { return bank->GrantConsent(ctx, req, &resp); });
    CITYOS_RETURN_IF_ERROR(FromGrpc(s, absl::StrCat("GrantConsent of data subject ", subject)));
    absl::MutexLock lock(&mu_);
    ++stats_.consents_granted;
    return absl::OkStatus();
  }

  // approve_recipient (demo only): files the recipient's proposal as the
  // demo's infobank admin and approves it as the demo's ethics board, unless
  // it is approved already.
  absl::Status ApproveRecipient(CityCa& ca, const std::string& address) {
    CITYOS_ASSIGN_OR_RETURN(std::shared_ptr<grpc::Channel> board,
                            ChannelAs(ca, address, kReviewerOrg, kReviewerName,
                                      {"data-ethics-board"}));
    std::unique_ptr<cv1::ConsentService::Stub> as_board = cv1::ConsentService::NewStub(board);
    // The recipient's proposals: approved (done), pending (review it).
    std::string pending;
    std::string token;
    do {
      cv1::ListProposalsRequest req;
      req.set_kind(cv1::PROPOSAL_KIND_RECIPIENT);
      req.set_page_size(1000);
      req.set_page_token(token);
      cv1::ListProposalsResponse resp;
      grpc::Status s =
          Call([&](grpc::ClientContext* ctx) { return as_board->ListProposals(ctx, req, &resp); });
      CITYOS_RETURN_IF_ERROR(FromGrpc(s, "ListProposals"));
      for (const cv1::Proposal& p : resp.proposals()) {
        if (p.recipient().org() != consent_.recipient_org) continue;
        if (p.state() == cv1::PROPOSAL_STATE_APPROVED) return absl::OkStatus();
        if (p.state() == cv1::PROPOSAL_STATE_PENDING && pending.empty()) {
          pending = p.proposal_id();
        }
      }
      token = resp.next_page_token();
    } while (!token.empty());
    if (pending.empty()) {
      CITYOS_ASSIGN_OR_RETURN(std::shared_ptr<grpc::Channel> admin,
                              ChannelAs(ca, address, kProposerOrg, kProposerName,
                                        {"infobank-admin"}));
      std::unique_ptr<cv1::ConsentService::Stub> as_admin = cv1::ConsentService::NewStub(admin);
      cv1::ProposeRecipientRequest req;
      req.mutable_recipient()->set_org(consent_.recipient_org);
      req.mutable_recipient()->set_display_name("Quzhou carbon office (demo)");
      req.mutable_recipient()->set_description(
          "Accounts citizens' green behaviour (trips, rides, green payments, e-invoices) as "
          "carbon credits");
      req.mutable_recipient()->set_jurisdiction(sim_->config().jurisdiction);
      cv1::ProposeRecipientResponse resp;
      grpc::Status s = Call(
          [&](grpc::ClientContext* ctx) { return as_admin->ProposeRecipient(ctx, req, &resp); });
      CITYOS_RETURN_IF_ERROR(FromGrpc(s, "ProposeRecipient"));
      pending = resp.proposal().proposal_id();
    }
    cv1::ReviewProposalRequest rev;
    rev.set_proposal_id(pending);
    rev.set_approve(true);
    rev.set_reason(absl::StrCat("demo city (", kName,
                                " approve_recipient: true): carbon accounting of green behaviour"));
    cv1::ReviewProposalResponse rr;
    grpc::Status s =
        Call([&](grpc::ClientContext* ctx) { return as_board->ReviewProposal(ctx, rev, &rr); });
    CITYOS_RETURN_IF_ERROR(FromGrpc(s, "ReviewProposal"));
    LogWarn(kName, "demo: recipient approved by the demo ethics board (approve_recipient: true)",
            {{"recipient_org", consent_.recipient_org}, {"proposal", pending}});
    return absl::OkStatus();
  }

  // accounts.jsonl and consenting_subjects.txt, for the demo's set-up.
  absl::Status WriteSetup(const std::string& dir) {
    {
      std::ofstream out(dir + "/accounts.jsonl", std::ios::trunc);
      google::protobuf::util::JsonPrintOptions opts;
      opts.preserve_proto_field_names = true;
      for (const carbon::v1::Account& a : sim_->Accounts()) {
        std::string line;
        if (!google::protobuf::util::MessageToJsonString(a, &line, opts).ok()) continue;
        out << line << "\n";
      }
      if (!out) return absl::InternalError(absl::StrCat("cannot write ", dir, "/accounts.jsonl"));
    }
    std::ofstream out(dir + "/consenting_subjects.txt", std::ios::trunc);
    for (const std::string& s : sim_->ConsentingSubjects()) out << s << "\n";
    if (!out)
      return absl::InternalError(absl::StrCat("cannot write ", dir, "/consenting_subjects.txt"));
    return absl::OkStatus();
  }

  void Loop() {
    while (true) {
      {
        absl::MutexLock lock(&mu_);
        auto stopped = [this]() ABSL_SHARED_LOCKS_REQUIRED(mu_) { return stop_; };
        mu_.AwaitWithTimeout(absl::Condition(&stopped), tick_);
        if (stop_) return;
      }
      Publish(runner_->Step());
      absl::MutexLock lock(&mu_);
      stats_.sim_now = runner_->sim_now();
    }
  }

  // Publishes in batches per (org, service), keeping each one's order.
  void Publish(std::vector<SimEvent> events) {
    std::map<std::pair<std::string, std::string>, std::vector<event::v1::Event>> by_publisher;
    uint64_t mqtt_ok = 0, mqtt_dropped = 0;
    for (SimEvent& e : events) {
      if (mqtt_publisher_ != nullptr && e.event.type() == "cityos.carbon.v1.MeterReading") {
        carbon::v1::MeterReading r;
        if (e.event.proto_data().UnpackTo(&r) &&
            mqtt_publisher_->Publish(config_.city_token, e.district, r).ok()) {
          ++mqtt_ok;
        } else {
          ++mqtt_dropped;
        }
        continue;
      }
      by_publisher[{e.org, e.service}].push_back(std::move(e.event));
    }
    uint64_t ok = 0, failed = 0;
    for (auto& [who, list] : by_publisher) {
      Principal p{.trust_domain = trust_domain_,
                  .org = who.first,
                  .kind = PrincipalKind::kService,
                  .name = who.second};
      for (size_t i = 0; i < list.size(); i += batch_) {
        std::vector<event::v1::Event> batch(
            std::make_move_iterator(list.begin() + i),
            std::make_move_iterator(list.begin() + std::min(list.size(), i + batch_)));
        const size_t n = batch.size();
        auto r = bus_->Publish(p, std::move(batch));
        if (r.ok()) {
          ok += n;
        } else {
          failed += n;
          if (warned_.insert(who.first).second) {  // once per org
            LogWarn(kName, "bus refused simulated events",
                    {{"publisher", p.SpiffeId()}, {"error", r.status().ToString()}});
          }
        }
      }
    }
    if (mqtt_dropped > 0 && !mqtt_warned_) {
      LogWarn(kName, "MQTT broker not connected; dropping meter readings",
              {{"broker", absl::StrCat(mqtt_.host, ":", mqtt_.port)}});
      mqtt_warned_ = true;
    }
    absl::MutexLock lock(&mu_);
    stats_.published += ok;
    stats_.publish_failures += failed;
    stats_.mqtt_published += mqtt_ok;
    stats_.mqtt_dropped += mqtt_dropped;
  }

  SimConfig config_;
  absl::Duration backfill_ = absl::Hours(24);
  absl::Duration tick_ = absl::Seconds(1);
  bool backfill_value_added_ = true;
  size_t batch_ = 512;
  bool via_mqtt_ = false;
  carbon::MqttMeterPublisher::Options mqtt_;

  std::unique_ptr<CitySim> sim_;
  std::unique_ptr<SimRunner> runner_;
  std::unique_ptr<carbon::MqttMeterPublisher> mqtt_publisher_;
  Bus* bus_ = nullptr;
  Clock* clock_ = nullptr;
  std::string trust_domain_;
  std::set<std::string> warned_;  // publishing thread only
  bool mqtt_warned_ = false;      // publishing thread only
  std::thread thread_;

  // Consents. Set at Start, then read by the consent thread only (and
  // recipient_approved_ / server_id_ written by it only).
  ConsentOptions consent_;
  std::string setup_dir_;
  std::string ca_dir_, node_cert_;
  std::string address_;              // empty: ask context_ when serving
  PluginContext* context_ = nullptr;  // the node's, while it runs
  std::string server_id_;
  bool recipient_approved_ = false;
  std::thread consent_thread_;

  mutable absl::Mutex mu_;
  bool stop_ ABSL_GUARDED_BY(mu_) = true;
  grpc::ClientContext* active_call_ ABSL_GUARDED_BY(mu_) = nullptr;
  CitySimStats stats_ ABSL_GUARDED_BY(mu_);
};

}  // namespace

std::unique_ptr<CitySimPlugin> MakeCitySimPlugin() { return std::make_unique<CitySimPluginImpl>(); }

}  // namespace cityos::citysim

namespace cityos {
absl::Status RegisterCitySimPlugin(PluginRegistry& registry) {
  return registry.Register("city-sim", [] { return citysim::MakeCitySimPlugin(); });
}
}  // namespace cityos
