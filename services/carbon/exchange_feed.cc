// ExchangeFeed (Subscribe streams to the exchange with reconnect and resume)
// and ResolveServiceIdentity (the carbon service's certificate).
#include "exchange_feed.h"

#include <grpcpp/grpcpp.h>
#include <pthread.h>
#include <sys/stat.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <utility>

#include "absl/random/random.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "cityos/ca.h"
#include "cityos/event.h"
#include "cityos/exchange/v1/exchange.grpc.pb.h"
#include "cityos/grpc_util.h"
#include "cityos/logging.h"
#include "cityos/status.h"
#include "nlohmann/json.hpp"

namespace cityos::carbon {
namespace {

constexpr char kComponent[] = "carbon.feed";

// The Subscribe method: called with the generated request type and read as
// bytes (grpc::ByteBuffer), which ParseFeedResponse reads instead of parsing
// them into SubscribeResponse messages.
constexpr char kSubscribeMethod[] =
    "/cityos.exchange.v1.ExchangeService/Subscribe";

// Copies a response's slices into one buffer from `pool` (the deliveries'
// views point into it).
std::shared_ptr<FeedResponse> Flatten(const grpc::ByteBuffer& bb,
                                      FeedBufferPool& pool) {
  std::vector<grpc::Slice> slices;
  (void)bb.Dump(&slices);
  size_t n = 0;
  for (const grpc::Slice& s : slices) n += s.size();
  std::shared_ptr<FeedResponse> r = pool.Make(n);
  char* p = r->data.get();
  for (const grpc::Slice& s : slices) {
    if (s.size() > 0) std::memcpy(p, s.begin(), s.size());
    p += s.size();
  }
  return r;
}

absl::StatusOr<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat(path, ": cannot be read"));
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

absl::Status WriteFileAtomically(const std::string& path,
                                 const std::string& content) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out)
      return absl::InternalError(absl::StrCat(tmp, ": cannot be written"));
    out << content;
    if (!out) return absl::InternalError(absl::StrCat(tmp, ": write failed"));
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec)
    return absl::InternalError(
        absl::StrCat(path, ": rename failed: ", ec.message()));
  return absl::OkStatus();
}

}  // namespace

ExchangeFeed::ExchangeFeed(ExchangeFeedOptions options, Handler handler)
    : options_(std::move(options)), handler_(std::move(handler)) {}

ExchangeFeed::~ExchangeFeed() { Stop(); }

absl::StatusOr<std::unique_ptr<ExchangeFeed>> ExchangeFeed::Start(
    ExchangeFeedOptions options, Handler handler) {
  if (!options.address)
    return absl::InvalidArgumentError("exchange feed: address is required");
  if (options.patterns.empty()) {
    return absl::InvalidArgumentError(
        "exchange feed: at least one input pattern is required");
  }
  if (options.state_dir.empty()) {
    return absl::InvalidArgumentError("exchange feed: state_dir is required");
  }
  if (options.purpose.empty()) {
    return absl::InvalidArgumentError("exchange feed: purpose is required");
  }
  if (!handler)
    return absl::InvalidArgumentError("exchange feed: handler is required");
  if (options.min_backoff <= absl::ZeroDuration() ||
      options.max_backoff < options.min_backoff) {
    return absl::InvalidArgumentError(
        "exchange feed: backoff must satisfy 0 < min_backoff <= max_backoff");
  }
  std::unique_ptr<ExchangeFeed> feed(
      new ExchangeFeed(std::move(options), std::move(handler)));
  const std::string path = feed->options_.state_dir + "/resume.json";
  if (std::filesystem::exists(path)) {
    CITYOS_ASSIGN_OR_RETURN(std::string text, ReadFile(path));
    nlohmann::json j =
        nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded() || !j.is_object() || !j.contains("tokens") ||
        !j["tokens"].is_object()) {
      return absl::DataLossError(absl::StrCat(
          path, ": not {\"since\": time, \"tokens\": {pattern: token}}"));
    }
    absl::MutexLock lock(&feed->mu_);
    const nlohmann::json& tokens = j["tokens"];
    for (size_t i = 0; i < feed->options_.patterns.size(); ++i) {
      auto it = tokens.find(feed->options_.patterns[i]);
      if (it != tokens.end() && it->is_string())
        feed->tokens_[i] = it->get<std::string>();
    }
    if (j.contains("since") && j["since"].is_string()) {
      std::string err;
      absl::Time t;
      if (absl::ParseTime(absl::RFC3339_full, j["since"].get<std::string>(), &t,
                          &err)) {
        feed->since_ = t;
      }
    }
  }
  {
    absl::MutexLock lock(&feed->mu_);
    if (feed->since_ == absl::InfinitePast()) {
      // A minute of slack for clocks of bus and service that disagree a little.
      feed->since_ = absl::Now() - absl::Minutes(1);
      CITYOS_RETURN_IF_ERROR(feed->PersistLocked());
    }
  }
  for (size_t i = 0; i < feed->options_.patterns.size(); ++i) {
    feed->threads_.emplace_back([f = feed.get(), i] { f->Run(i); });
  }
  return feed;
}

void ExchangeFeed::Processed(const std::vector<FeedDelivery>& batch) {
  absl::MutexLock lock(&mu_);
  bool changed = false;
  // The last delivery with a token per pattern wins: walk from the end and
  // stop once every pattern has been seen.
  std::vector<bool> seen(options_.patterns.size(), false);
  size_t left = seen.size();
  for (auto it = batch.rbegin(); it != batch.rend() && left > 0; ++it) {
    const FeedDelivery& d = *it;
    if (d.resume_token.empty()) continue;
    if (d.pattern < seen.size()) {
      if (seen[d.pattern]) continue;
      seen[d.pattern] = true;
      --left;
    }
    std::string& t = tokens_[d.pattern];
    if (t != d.resume_token) {
      t.assign(d.resume_token);
      changed = true;
    }
  }
  if (!changed) return;
  if (absl::Status s = PersistLocked(); !s.ok()) {
    LogWarn(kComponent, "cannot persist resume tokens",
            {{"error", s.ToString()}});
  }
}

absl::Status ExchangeFeed::PersistLocked() {
  nlohmann::json j = nlohmann::json::object();
  j["since"] =
      absl::FormatTime(absl::RFC3339_full, since_, absl::UTCTimeZone());
  j["tokens"] = nlohmann::json::object();
  for (const auto& [i, token] : tokens_) {
    if (i < options_.patterns.size() && !token.empty())
      j["tokens"][options_.patterns[i]] = token;
  }
  return WriteFileAtomically(options_.state_dir + "/resume.json",
                             j.dump(2) + "\n");
}

void ExchangeFeed::Stop() {
  {
    absl::MutexLock lock(&mu_);
    if (stopped_) return;
    stopped_ = true;
    stop_.store(true);
    for (grpc::ClientContext* c : active_) c->TryCancel();
  }
  for (std::thread& t : threads_) t.join();
  threads_.clear();
}

bool ExchangeFeed::SleepUnlessStopped(absl::Duration d) {
  absl::MutexLock lock(&mu_);
  auto stopped = [this]() ABSL_SHARED_LOCKS_REQUIRED(mu_) { return stopped_; };
  mu_.AwaitWithTimeout(absl::Condition(&stopped), d);
  return !stopped_;
}

ExchangeFeed::Stats ExchangeFeed::stats() const {
  return {.delivered = delivered_.load(),
          .connects = connects_.load(),
          .errors = errors_.load(),
          .missed = missed_.load(),
          .connected = connected_.load()};
}

std::string ExchangeFeed::last_error() const {
  absl::MutexLock lock(&mu_);
  return last_error_;
}

void ExchangeFeed::Run(size_t index) {
  // Named so that profiles and the benchmark's per-thread CPU can tell it.
  pthread_setname_np(pthread_self(), "carbon-feed");
  const std::string& pattern = options_.patterns[index];
  absl::BitGen gen;
  absl::Duration backoff = options_.min_backoff;
  // Failures in a row: warned about on the first and every 20th, so an
  // exchange that is down does not flood the log.
  uint64_t failures = 0;
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<grpc::internal::RpcMethod> subscribe;
  // Response buffers, reused (at most 8 idle: ~9 MB with responses of 4,096
  // readings).
  auto pool = std::make_shared<FeedBufferPool>(8);
  std::string channel_address;
  auto creds = MakeChannelCredentials(
      options_.tls, options_.server_id.empty()
                        ? std::nullopt
                        : std::optional<std::string>(options_.server_id));
  while (!stop_.load()) {
    if (!creds.ok()) {
      // The identity files may be rotated into shape; keep trying.
      {
        absl::MutexLock lock(&mu_);
        last_error_ = creds.status().ToString();
      }
      LogWarn(kComponent, "no channel credentials",
              {{"error", creds.status().ToString()}});
      if (!SleepUnlessStopped(options_.max_backoff)) return;
      creds = MakeChannelCredentials(
          options_.tls, options_.server_id.empty()
                            ? std::nullopt
                            : std::optional<std::string>(options_.server_id));
      continue;
    }
    const std::string address = options_.address();
    if (address.empty() || absl::EndsWith(address, ":0")) {
      if (!SleepUnlessStopped(absl::Milliseconds(20))) return;
      continue;
    }
    if (channel == nullptr || address != channel_address) {
      grpc::ChannelArguments args;
      args.SetInt(GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH, 64 << 20);
      channel = grpc::CreateCustomChannel(address, *creds, args);
      channel_address = address;
      subscribe = std::make_unique<grpc::internal::RpcMethod>(
          kSubscribeMethod, grpc::internal::RpcMethod::SERVER_STREAMING,
          channel);
    }
    exchange::v1::SubscribeRequest req;
    req.set_subject_pattern(pattern);
    req.set_purpose(options_.purpose);
    req.set_max_batch(options_.max_batch);
    {
      absl::MutexLock lock(&mu_);
      auto it = tokens_.find(index);
      if (it != tokens_.end()) {
        req.set_resume_token(it->second);
      } else if (options_.replay_since_first_start && !live_only_[index]) {
        SetTimestamp(since_, req.mutable_start_time());
      }
    }
    grpc::ClientContext ctx;
    {
      absl::MutexLock lock(&mu_);
      if (stopped_) return;
      active_.push_back(&ctx);
    }
    connects_.fetch_add(1);
    connected_.fetch_add(1);
    std::unique_ptr<grpc::ClientReader<grpc::ByteBuffer>> reader(
        grpc::internal::ClientReaderFactory<grpc::ByteBuffer>::Create(
            channel.get(), *subscribe, &ctx, req));
    bool got_any = false;
    // A malformed response: the stream is cancelled and this is its error.
    absl::Status malformed;
    grpc::ByteBuffer bb;
    while (reader->Read(&bb)) {
      // The response's bytes in one buffer: the deliveries point into it, and
      // it goes back in one piece when the last of them is dropped.
      std::shared_ptr<FeedResponse> holder = Flatten(bb, *pool);
      bb.Clear();
      std::vector<FeedDelivery> batch;
      // About one delivery per 200 bytes (a meter reading's is ~250): no
      // regrowth for full responses, no large block for a live trickle.
      batch.reserve(std::min<size_t>(options_.max_batch, holder->size / 200 + 1));
      uint64_t missed = 0;
      if (absl::Status s = ParseFeedResponse(holder, index, &batch, &missed);
          !s.ok()) {
        malformed = std::move(s);
        ctx.TryCancel();
        break;
      }
      holder.reset();
      got_any = true;
      if (missed > 0) {
        missed_.fetch_add(missed);
        LogWarn(kComponent, "exchange dropped events for this subscription",
                {{"pattern", pattern}, {"missed", std::to_string(missed)}});
      }
      if (!batch.empty()) {
        delivered_.fetch_add(batch.size());
        handler_(std::move(batch));
      }
      if (stop_.load()) break;
    }
    grpc::Status status = reader->Finish();
    connected_.fetch_sub(1);
    {
      absl::MutexLock lock(&mu_);
      active_.erase(std::remove(active_.begin(), active_.end(), &ctx),
                    active_.end());
    }
    if (stop_.load()) return;
    errors_.fetch_add(1);
    const std::string err =
        malformed.ok() ? absl::StrCat(pattern, ": ", status.error_code(), " ",
                                      status.error_message())
                       : absl::StrCat(pattern, ": ", malformed.ToString());
    {
      absl::MutexLock lock(&mu_);
      last_error_ = err;
    }
    if (malformed.ok() &&
        status.error_code() == grpc::StatusCode::INVALID_ARGUMENT &&
        req.has_start_time()) {
      // No bus stream captures the pattern: nothing to replay; run live.
      LogInfo(kComponent, "no bus stream captures this input; subscribing live",
              {{"pattern", pattern}});
      absl::MutexLock lock(&mu_);
      live_only_[index] = true;
      continue;
    }
    if (malformed.ok() &&
        status.error_code() == grpc::StatusCode::NOT_FOUND &&
        !req.resume_token().empty()) {
      LogWarn(kComponent, "resume position no longer retained; continuing live",
              {{"pattern", pattern}, {"error", status.error_message()}});
      absl::MutexLock lock(&mu_);
      tokens_.erase(index);
      live_only_[index] = true;
      (void)PersistLocked();
    } else {
      failures = got_any ? 1 : failures + 1;
      if (failures % 20 == 1) {
        LogWarn(kComponent, "exchange subscription ended; reconnecting",
                {{"pattern", pattern},
                 {"code", malformed.ok()
                              ? std::to_string(status.error_code())
                              : std::string(absl::StatusCodeToString(
                                    malformed.code()))},
                 {"error", malformed.ok() ? status.error_message()
                                          : malformed.ToString()},
                 {"failures_in_a_row", std::to_string(failures)}});
      }
    }
    if (got_any) backoff = options_.min_backoff;
    const double jitter = absl::Uniform(gen, 0.8, 1.2);
    if (!SleepUnlessStopped(backoff * jitter)) return;
    backoff = std::min(backoff * 2, options_.max_backoff);
  }
}

absl::StatusOr<ServiceIdentity> ResolveServiceIdentity(
    const IdentityRequest& r) {
  ServiceIdentity id;
  if (!r.cert.empty() || !r.key.empty() || !r.ca.empty()) {
    if (r.cert.empty() || r.key.empty() || r.ca.empty()) {
      return absl::InvalidArgumentError(
          "identity: cert, key and ca must be given together");
    }
    // A private key others can read is refused, as the node does for its
    // secrets (docs/security.md): say which file and its mode, never more.
    std::error_code ec;
    const std::filesystem::perms perms = std::filesystem::status(r.key, ec).permissions();
    if (ec) {
      return absl::NotFoundError(
          absl::StrCat("identity.key ", r.key, ": cannot be read: ", ec.message()));
    }
    if ((perms & (std::filesystem::perms::group_all | std::filesystem::perms::others_all)) !=
        std::filesystem::perms::none) {
      return absl::FailedPreconditionError(absl::StrFormat(
          "identity.key %s: mode %03o lets others read it; chmod 600", r.key,
          static_cast<unsigned>(perms) & 0777));
    }
    id.tls = TlsConfig{.ca_file = r.ca,
                       .cert_file = r.cert,
                       .key_file = r.key,
                       .crl_file = r.crl,
                       .trust_domain = r.trust_domain};
    id.server_id = r.server_id;
  } else {
    const std::filesystem::path pki =
        std::filesystem::path(r.node_data_dir) / "pki";
    if (r.node_data_dir.empty() ||
        !std::filesystem::exists(pki / "ca" / "ca.pem")) {
      return absl::FailedPreconditionError(
          absl::StrCat("identity: no certificate configured and the node has "
                       "no development CA (",
                       (pki / "ca").string(),
                       "); set identity.cert, identity.key and identity.ca, or "
                       "run the node with tls: auto"));
    }
    CITYOS_ASSIGN_OR_RETURN(std::unique_ptr<CityCa> ca,
                            CityCa::Open((pki / "ca").string()));
    std::error_code ec;
    std::filesystem::create_directories(r.out_dir, ec);
    if (ec) {
      return absl::FailedPreconditionError(absl::StrCat(
          "identity: ", r.out_dir, ": cannot be created: ", ec.message()));
    }
    ::chmod(r.out_dir.c_str(), 0700);
    const std::string out =
        (std::filesystem::path(r.out_dir) / r.name).string();
    const std::string want = absl::StrCat("spiffe://", ca->trust_domain(),
                                          "/org/", r.org, "/svc/", r.name);
    bool reuse = false;
    if (std::filesystem::exists(out + ".pem") &&
        std::filesystem::exists(out + ".key")) {
      absl::StatusOr<std::string> pem = ReadFile(out + ".pem");
      absl::StatusOr<std::string> ca_pem = ReadFile(ca->ca_file());
      if (pem.ok() && ca_pem.ok()) {
        absl::StatusOr<CertificateInfo> info = ParseCertificatePem(*pem);
        absl::StatusOr<CertificateInfo> ca_info = ParseCertificatePem(*ca_pem);
        reuse = info.ok() && ca_info.ok() && info->issuer == ca_info->subject &&
                info->uris.size() == 1 && info->uris[0] == want &&
                info->not_after > absl::Now() + absl::Hours(24 * 7);
        if (reuse) {
          TlsConfig t{.ca_file = ca->ca_file(),
                      .cert_file = out + ".pem",
                      .key_file = out + ".key",
                      .crl_file = ca->crl_file(),
                      .trust_domain = ca->trust_domain()};
          reuse = CheckTlsConfig(t).ok();
        }
        if (reuse) {
          // The key stays the service's own, whatever mode a copy or a
          // restore left it with.
          struct stat st;
          if (::stat((out + ".key").c_str(), &st) == 0 &&
              (st.st_mode & 0077) != 0) {
            LogWarn(kComponent,
                    "service key is readable by group or others; fixing to "
                    "0600",
                    {{"key", out + ".key"}});
            if (::chmod((out + ".key").c_str(), 0600) != 0) {
              return absl::FailedPreconditionError(absl::StrCat(
                  "identity: ", out, ".key: cannot be made 0600"));
            }
          }
        }
      }
    }
    if (!reuse) {
      CITYOS_ASSIGN_OR_RETURN(CertRecord rec,
                              ca->Issue({.org = r.org,
                                         .kind = PrincipalKind::kService,
                                         .name = r.name,
                                         .dns_names = {"localhost"},
                                         .ip_addresses = {"127.0.0.1"},
                                         .out = out}));
      ::chmod((out + ".key").c_str(), 0600);
      id.issued = true;
      LogInfo(kComponent,
              "service certificate issued from the node's development CA",
              {{"spiffe_id", rec.spiffe_id}, {"cert", out + ".pem"}});
    }
    id.tls = TlsConfig{.ca_file = ca->ca_file(),
                       .cert_file = out + ".pem",
                       .key_file = out + ".key",
                       .crl_file = std::filesystem::exists(ca->crl_file())
                                       ? ca->crl_file()
                                       : "",
                       .trust_domain = ca->trust_domain()};
    id.server_id = r.server_id;
    if (id.server_id.empty()) {
      absl::StatusOr<std::string> node_pem =
          ReadFile((pki / "node.pem").string());
      if (node_pem.ok()) {
        absl::StatusOr<CertificateInfo> info = ParseCertificatePem(*node_pem);
        if (info.ok() && info->uris.size() == 1) id.server_id = info->uris[0];
      }
    }
  }
  CITYOS_RETURN_IF_ERROR(CheckTlsConfig(id.tls));
  CITYOS_ASSIGN_OR_RETURN(std::string pem, ReadFile(id.tls.cert_file));
  CITYOS_ASSIGN_OR_RETURN(CertificateInfo info, ParseCertificatePem(pem));
  if (info.uris.size() == 1) id.spiffe_id = info.uris[0];
  return id;
}

}  // namespace cityos::carbon
