#include "registry.h"

#include <algorithm>
#include <deque>
#include <memory>
#include <optional>
#include <set>
#include <tuple>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "cityos/clock.h"
#include "cityos/id.h"
#include "cityos/logging.h"
#include "cityos/status.h"
#include "cityos/subject.h"

namespace cityos {
namespace {

constexpr char kComponent[] = "registry";
constexpr size_t kMaxNameLength = 64;
constexpr size_t kMaxOrgLength = 128;
constexpr size_t kMaxEndpointLength = 255;
constexpr size_t kMaxProtoServiceLength = 256;
constexpr size_t kMaxListEntries = 64;
constexpr size_t kMaxVersionLength = 64;
constexpr size_t kMaxLabels = 32;
constexpr size_t kMaxLabelKeyLength = 63;
constexpr size_t kMaxLabelValueLength = 256;

bool IsLower(char c) { return c >= 'a' && c <= 'z'; }
bool IsDigit(char c) { return c >= '0' && c <= '9'; }
bool IsAlpha(char c) { return IsLower(c) || (c >= 'A' && c <= 'Z'); }

absl::Status Invalid(std::string_view field, std::string_view message) {
  return absl::InvalidArgumentError(absl::StrFormat("%s: %s", field, message));
}

// [a-z][a-z0-9-]{0,63}: service names and domains.
absl::Status CheckName(std::string_view value, std::string_view field, std::string_view what) {
  if (value.empty()) return Invalid(field, absl::StrFormat("%s is required", what));
  if (value.size() > kMaxNameLength || !IsLower(value[0]) ||
      !std::all_of(value.begin(), value.end(),
                   [](char c) { return IsLower(c) || IsDigit(c) || c == '-'; })) {
    return Invalid(field, absl::StrFormat("%s \"%s\" must be 1-64 characters of [a-z0-9-] "
                                          "starting with a letter",
                                          what, value));
  }
  return absl::OkStatus();
}

// A SPIFFE id segment: 1-128 characters of [A-Za-z0-9._-].
absl::Status CheckOrg(std::string_view value, std::string_view field) {
  if (value.empty()) return Invalid(field, "org is required");
  if (value.size() > kMaxOrgLength ||
      !std::all_of(value.begin(), value.end(), [](char c) {
        return IsAlpha(c) || IsDigit(c) || c == '.' || c == '_' || c == '-';
      })) {
    return Invalid(field,
                   absl::StrFormat("org \"%s\" must be 1-128 characters of [A-Za-z0-9._-]", value));
  }
  return absl::OkStatus();
}

// package.Service: identifiers [A-Za-z_][A-Za-z0-9_]* joined by dots, two or
// more of them.
absl::Status CheckProtoService(std::string_view value, std::string_view field) {
  if (value.empty()) return Invalid(field, "a full proto service name is required");
  auto bad = [&] {
    return Invalid(field, absl::StrFormat("\"%s\" is not a full proto service name "
                                          "(package.Service, e.g. "
                                          "cityos.carbon.v1.CarbonAccountService)",
                                          value.substr(0, kMaxProtoServiceLength)));
  };
  if (value.size() > kMaxProtoServiceLength) return bad();
  size_t parts = 0;
  size_t start = 0;
  while (true) {
    size_t dot = value.find('.', start);
    std::string_view part = value.substr(start, dot == std::string_view::npos ? dot : dot - start);
    if (part.empty() || IsDigit(part[0]) ||
        !std::all_of(part.begin(), part.end(),
                     [](char c) { return IsAlpha(c) || IsDigit(c) || c == '_'; })) {
      return bad();
    }
    ++parts;
    if (dot == std::string_view::npos) break;
    start = dot + 1;
  }
  if (parts < 2) return bad();
  return absl::OkStatus();
}

bool ValidPort(std::string_view port) {
  if (port.empty() || port.size() > 5 || !std::all_of(port.begin(), port.end(), IsDigit)) {
    return false;
  }
  int v = 0;
  for (char c : port) v = v * 10 + (c - '0');
  return v >= 1 && v <= 65535;
}

bool ValidHost(std::string_view host) {
  if (host.empty() || host.size() > 253) return false;
  if (host.front() == '[') {  // [IPv6]
    if (host.size() < 3 || host.back() != ']') return false;
    std::string_view inner = host.substr(1, host.size() - 2);
    return std::all_of(inner.begin(), inner.end(), [](char c) {
      return IsDigit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F') || c == ':' ||
             c == '.' || c == '%';
    });
  }
  // Host name or IPv4: labels of [A-Za-z0-9-_] separated by dots.
  size_t start = 0;
  while (true) {
    size_t dot = host.find('.', start);
    std::string_view label = host.substr(start, dot == std::string_view::npos ? dot : dot - start);
    if (label.empty() || label.size() > 63 ||
        !std::all_of(label.begin(), label.end(),
                     [](char c) { return IsAlpha(c) || IsDigit(c) || c == '-' || c == '_'; })) {
      return false;
    }
    if (dot == std::string_view::npos) return true;
    start = dot + 1;
  }
}

absl::Status CheckEndpoint(std::string_view value, std::string_view field) {
  if (value.empty()) return Invalid(field, "endpoint is required");
  auto bad = [&](std::string_view why) {
    return Invalid(field, absl::StrFormat("endpoint \"%s\" %s (expected host:port or a gRPC "
                                          "target URI such as dns:///host:port)",
                                          value.substr(0, kMaxEndpointLength), why));
  };
  if (value.size() > kMaxEndpointLength) return bad("is longer than 255 bytes");
  if (!std::all_of(value.begin(), value.end(),
                   [](char c) { return c > ' ' && c < 0x7f; })) {
    return bad("has spaces, control or non-ASCII characters");
  }
  // host:port first: "localhost:7443" must not be read as scheme "localhost".
  size_t colon = value.rfind(':');
  if (colon != std::string_view::npos && ValidPort(value.substr(colon + 1)) &&
      ValidHost(value.substr(0, colon))) {
    return absl::OkStatus();
  }
  static constexpr std::string_view kSchemes[] = {"dns:",  "ipv4:",          "ipv6:", "unix:",
                                                  "unix-abstract:", "vsock:", "xds:"};
  for (std::string_view scheme : kSchemes) {
    if (value.substr(0, scheme.size()) == scheme) {
      std::string_view rest = value.substr(scheme.size());
      while (!rest.empty() && rest.front() == '/') rest.remove_prefix(1);
      if (rest.empty()) return bad("has a scheme but no address");
      return absl::OkStatus();
    }
  }
  return bad("is neither host:port nor a known gRPC target URI");
}

absl::Status CheckPrintable(std::string_view value, std::string_view field, size_t max,
                            bool allow_utf8) {
  if (value.size() > max) {
    return Invalid(field, absl::StrFormat("must be at most %d bytes, got %d", max, value.size()));
  }
  for (char c : value) {
    const unsigned char u = static_cast<unsigned char>(c);
    if (u < 0x20 || u == 0x7f || (!allow_utf8 && u >= 0x80)) {
      return Invalid(field, allow_utf8 ? "must not contain control characters"
                                       : "must be printable ASCII");
    }
  }
  return absl::OkStatus();
}

absl::Status CheckLabelKey(std::string_view key, std::string_view field) {
  if (key.empty() || key.size() > kMaxLabelKeyLength ||
      !std::all_of(key.begin(), key.end(), [](char c) {
        return IsLower(c) || IsDigit(c) || c == '.' || c == '_' || c == '-';
      })) {
    return Invalid(field, absl::StrFormat("label key \"%s\" must be 1-63 characters of "
                                          "[a-z0-9._-]",
                                          key.substr(0, kMaxLabelKeyLength + 1)));
  }
  return absl::OkStatus();
}

template <typename Check>
absl::Status CheckList(const std::vector<std::string>& list, std::string_view field,
                       Check check) {
  if (list.size() > kMaxListEntries) {
    return Invalid(field, absl::StrFormat("at most %d entries, got %d", kMaxListEntries,
                                          list.size()));
  }
  std::set<std::string_view> seen;
  for (size_t i = 0; i < list.size(); ++i) {
    const std::string item_field = absl::StrFormat("%s[%d]", field, i);
    CITYOS_RETURN_IF_ERROR(check(list[i], item_field));
    if (!seen.insert(list[i]).second) {
      return Invalid(item_field, absl::StrFormat("\"%s\" is listed twice", list[i]));
    }
  }
  return absl::OkStatus();
}

using Key = std::tuple<std::string, std::string, std::string>;  // org, name, endpoint

Key KeyOf(const ServiceRecord& r) { return {r.org, r.name, r.endpoint}; }

}  // namespace

const char* ChangeTypeName(ChangeType t) {
  switch (t) {
    case ChangeType::kAdded:
      return "ADDED";
    case ChangeType::kUpdated:
      return "UPDATED";
    case ChangeType::kRemoved:
      return "REMOVED";
  }
  return "?";
}

const char* ChangeReasonName(ChangeReason r) {
  switch (r) {
    case ChangeReason::kSnapshot:
      return "snapshot";
    case ChangeReason::kRegistered:
      return "registered";
    case ChangeReason::kLeaseExpired:
      return "lease expired";
    case ChangeReason::kDeregistered:
      return "deregistered";
  }
  return "?";
}

absl::Status ValidateRecord(const ServiceRecord& r) {
  CITYOS_RETURN_IF_ERROR(CheckName(r.name, "registration.name", "service name"));
  CITYOS_RETURN_IF_ERROR(CheckOrg(r.org, "registration.org"));
  if (!r.domain.empty()) {
    CITYOS_RETURN_IF_ERROR(CheckName(r.domain, "registration.domain", "domain"));
  }
  CITYOS_RETURN_IF_ERROR(CheckEndpoint(r.endpoint, "registration.endpoint"));
  CITYOS_RETURN_IF_ERROR(
      CheckList(r.proto_services, "registration.proto_services", CheckProtoService));
  CITYOS_RETURN_IF_ERROR(CheckList(r.published_subjects, "registration.published_subjects",
                                   [](const std::string& p, std::string_view field) {
                                     absl::Status s = ValidatePattern(p);
                                     if (s.ok()) return s;
                                     return Invalid(field, std::string(s.message()));
                                   }));
  CITYOS_RETURN_IF_ERROR(
      CheckPrintable(r.version, "registration.version", kMaxVersionLength, false));
  if (r.labels.size() > kMaxLabels) {
    return Invalid("registration.labels",
                   absl::StrFormat("at most %d labels, got %d", kMaxLabels, r.labels.size()));
  }
  for (const auto& [key, value] : r.labels) {
    CITYOS_RETURN_IF_ERROR(CheckLabelKey(key, "registration.labels"));
    CITYOS_RETURN_IF_ERROR(CheckPrintable(
        value, absl::StrFormat("registration.labels[\"%s\"]", key), kMaxLabelValueLength, true));
  }
  return absl::OkStatus();
}

bool InstanceFilter::Matches(const ServiceRecord& r) const {
  if (!org.empty() && org != r.org) return false;
  if (!name.empty() && name != r.name) return false;
  if (!domain.empty() && domain != r.domain) return false;
  if (!proto_service.empty() &&
      std::find(r.proto_services.begin(), r.proto_services.end(), proto_service) ==
          r.proto_services.end()) {
    return false;
  }
  return true;
}

absl::Status ValidateFilter(const InstanceFilter& f, std::string_view prefix) {
  auto field = [&](std::string_view name) { return absl::StrFormat("%s.%s", prefix, name); };
  if (!f.org.empty()) CITYOS_RETURN_IF_ERROR(CheckOrg(f.org, field("org")));
  if (!f.name.empty()) CITYOS_RETURN_IF_ERROR(CheckName(f.name, field("name"), "service name"));
  if (!f.domain.empty()) CITYOS_RETURN_IF_ERROR(CheckName(f.domain, field("domain"), "domain"));
  if (!f.proto_service.empty()) {
    CITYOS_RETURN_IF_ERROR(CheckProtoService(f.proto_service, field("proto_service")));
  }
  return absl::OkStatus();
}

absl::Status ValidateRegistryOptions(const RegistryOptions& o) {
  if (o.min_ttl <= absl::ZeroDuration()) return Invalid("min_ttl", "must be positive");
  if (o.default_ttl < o.min_ttl || o.default_ttl > o.max_ttl) {
    return Invalid("default_ttl",
                   absl::StrFormat("%s is outside [min_ttl %s, max_ttl %s]",
                                   absl::FormatDuration(o.default_ttl),
                                   absl::FormatDuration(o.min_ttl),
                                   absl::FormatDuration(o.max_ttl)));
  }
  if (o.max_ttl == absl::InfiniteDuration()) return Invalid("max_ttl", "must be finite");
  if (o.max_instances < 1) return Invalid("max_instances", "must be at least 1");
  if (o.watch_queue_depth < 1) return Invalid("watch_queue_depth", "must be at least 1");
  return absl::OkStatus();
}

namespace registry_internal {

// The queue of one watcher, shared by the registry (which fills it under its
// own lock, then this one) and the Watcher (which drains it).
class WatchQueue {
 public:
  WatchQueue(InstanceFilter filter, size_t depth) : filter_(std::move(filter)), depth_(depth) {}

  const InstanceFilter& filter() const { return filter_; }

  void Push(const Change& change) {
    absl::MutexLock lock(&mu_);
    if (!end_.ok()) return;
    if (queue_.size() >= depth_) {
      queue_.clear();
      end_ = absl::ResourceExhaustedError(absl::StrFormat(
          "watcher fell behind by more than %d changes; watch again with a snapshot", depth_));
      return;
    }
    queue_.push_back(change);
  }

  void End(absl::Status reason) {
    absl::MutexLock lock(&mu_);
    if (end_.ok()) end_ = std::move(reason);
  }

  absl::StatusOr<std::vector<Change>> Next(size_t max, absl::Duration timeout) {
    absl::MutexLock lock(&mu_);
    auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return !queue_.empty() || !end_.ok();
    };
    mu_.AwaitWithTimeout(absl::Condition(&ready), timeout);
    if (queue_.empty() && !end_.ok()) return end_;
    if (absl::IsResourceExhausted(end_)) return end_;
    std::vector<Change> out;
    const size_t n = std::min(std::max<size_t>(max, 1), queue_.size());
    out.reserve(n);
    for (size_t i = 0; i < n; ++i) {
      out.push_back(std::move(queue_.front()));
      queue_.pop_front();
    }
    return out;
  }

 private:
  const InstanceFilter filter_;
  const size_t depth_;
  absl::Mutex mu_;
  std::deque<Change> queue_ ABSL_GUARDED_BY(mu_);
  // OK while running; the reason it ended otherwise.
  absl::Status end_ ABSL_GUARDED_BY(mu_);
};

}  // namespace registry_internal

namespace {

using registry_internal::WatchQueue;

class RegistryImpl;

class WatcherImpl final : public Watcher {
 public:
  WatcherImpl(RegistryImpl* registry, std::shared_ptr<WatchQueue> queue)
      : registry_(registry), queue_(std::move(queue)) {}
  ~WatcherImpl() override;

  absl::StatusOr<std::vector<Change>> Next(size_t max, absl::Duration timeout) override {
    return queue_->Next(max, timeout);
  }

 private:
  RegistryImpl* const registry_;
  const std::shared_ptr<WatchQueue> queue_;
};

class RegistryImpl final : public Registry {
 public:
  explicit RegistryImpl(RegistryOptions options)
      : options_(options), clock_(options.clock != nullptr ? options.clock : Clock::Real()) {}

  absl::StatusOr<Lease> Register(const Principal& caller, ServiceRecord record,
                                 absl::Duration ttl) override {
    CITYOS_RETURN_IF_ERROR(ValidateRecord(record));
    if (ttl < absl::ZeroDuration()) return Invalid("ttl", "must not be negative");
    if (record.org != caller.org && !caller.HasRole("admin")) {
      return absl::PermissionDeniedError(absl::StrFormat(
          "%s may register services only under its own org \"%s\", not \"%s\"",
          caller.SpiffeId(), caller.org, record.org));
    }
    const absl::Duration granted =
        ttl == absl::ZeroDuration() ? options_.default_ttl
                                    : std::clamp(ttl, options_.min_ttl, options_.max_ttl);
    const std::string who = caller.SpiffeId();
    const Key key = KeyOf(record);

    Lease lease;
    ChangeType type = ChangeType::kAdded;
    bool notify = true;
    std::optional<ServiceRecord> before;  // kUpdated: the record replaced
    {
      absl::MutexLock lock(&mu_);
      const absl::Time now = clock_->Now();
      auto it = entries_.find(key);
      if (it != entries_.end() && it->second.info.expire_time <= now) {
        // Ran out before the timer noticed: report it, then register anew.
        LogInfo(kComponent, "lease expired",
                {{"service", record.name}, {"org", record.org}, {"endpoint", record.endpoint}});
        RemoveLocked(it, ChangeReason::kLeaseExpired, now);
        it = entries_.end();
      }
      if (it != entries_.end()) {
        Entry& e = it->second;
        if (e.info.principal != who) {
          return absl::AlreadyExistsError(absl::StrFormat(
              "service \"%s\" of org \"%s\" at \"%s\" is held under a live lease by %s",
              record.name, record.org, record.endpoint, e.info.principal));
        }
        type = ChangeType::kUpdated;
        notify = !(e.info.record == record);
        leases_.erase(e.lease_id);
        before = std::move(e.info.record);
        e.info.record = std::move(record);
      } else {
        if (entries_.size() >= options_.max_instances) {
          return absl::ResourceExhaustedError(absl::StrFormat(
              "the registry holds its limit of %d instances", options_.max_instances));
        }
        Entry e;
        e.info.record = std::move(record);
        e.info.principal = who;
        it = entries_.emplace(key, std::move(e)).first;
      }
      Entry& e = it->second;
      e.lease_id = NewLeaseIdLocked();
      e.ttl = granted;
      e.info.register_time = now;
      e.info.heartbeat_time = now;
      e.info.expire_time = now + granted;
      leases_[e.lease_id] = key;
      if (notify) {
        PublishLocked(type, ChangeReason::kRegistered, e.info, now,
                      before.has_value() ? &*before : nullptr);
      }
      lease = {.lease_id = e.lease_id, .ttl = granted, .instance = e.info};
    }
    if (notify) {
      LogInfo(kComponent,
              type == ChangeType::kAdded ? "service registered" : "service re-registered",
              {{"service", lease.instance.record.name},
               {"org", lease.instance.record.org},
               {"endpoint", lease.instance.record.endpoint},
               {"principal", who},
               {"ttl", absl::FormatDuration(granted)}});
    }
    return lease;
  }

  absl::StatusOr<Lease> Heartbeat(const Principal& caller, std::string_view lease_id) override {
    const std::string who = caller.SpiffeId();
    absl::MutexLock lock(&mu_);
    const absl::Time now = clock_->Now();
    CITYOS_ASSIGN_OR_RETURN(auto it, FindLeaseLocked(lease_id, now));
    Entry& e = it->second;
    if (e.info.principal != who) {
      return absl::PermissionDeniedError(
          absl::StrFormat("lease %s belongs to %s, not to %s", lease_id, e.info.principal, who));
    }
    e.info.heartbeat_time = now;
    e.info.expire_time = now + e.ttl;
    return Lease{.lease_id = e.lease_id, .ttl = e.ttl, .instance = e.info};
  }

  absl::Status Deregister(const Principal& caller, std::string_view lease_id) override {
    const std::string who = caller.SpiffeId();
    InstanceInfo removed;
    {
      absl::MutexLock lock(&mu_);
      const absl::Time now = clock_->Now();
      CITYOS_ASSIGN_OR_RETURN(auto it, FindLeaseLocked(lease_id, now));
      if (it->second.info.principal != who && !caller.HasRole("admin")) {
        return absl::PermissionDeniedError(absl::StrFormat(
            "lease %s belongs to %s; only it or an admin may deregister it", lease_id,
            it->second.info.principal));
      }
      removed = it->second.info;
      RemoveLocked(it, ChangeReason::kDeregistered, now);
    }
    LogInfo(kComponent, "service deregistered",
            {{"service", removed.record.name},
             {"org", removed.record.org},
             {"endpoint", removed.record.endpoint},
             {"by", who}});
    return absl::OkStatus();
  }

  absl::StatusOr<std::vector<InstanceInfo>> Resolve(std::string_view name,
                                                    std::string_view proto_service,
                                                    std::string_view org) const override {
    if (name.empty() == proto_service.empty()) {
      return Invalid("target", "exactly one of name and proto_service is required");
    }
    InstanceFilter filter;
    if (!name.empty()) {
      CITYOS_RETURN_IF_ERROR(CheckName(name, "name", "service name"));
      filter.name = std::string(name);
    } else {
      CITYOS_RETURN_IF_ERROR(CheckProtoService(proto_service, "proto_service"));
      filter.proto_service = std::string(proto_service);
    }
    if (!org.empty()) {
      CITYOS_RETURN_IF_ERROR(CheckOrg(org, "org"));
      filter.org = std::string(org);
    }
    std::vector<InstanceInfo> out = Live(filter);
    if (out.empty()) {
      return absl::NotFoundError(absl::StrFormat(
          "no live instance of %s \"%s\"%s", name.empty() ? "proto service" : "service",
          name.empty() ? proto_service : name,
          org.empty() ? "" : absl::StrFormat(" in org \"%s\"", org)));
    }
    return out;
  }

  absl::StatusOr<std::vector<InstanceInfo>> List(const InstanceFilter& filter) const override {
    CITYOS_RETURN_IF_ERROR(ValidateFilter(filter, "filter"));
    return Live(filter);
  }

  absl::StatusOr<std::unique_ptr<Watcher>> Watch(const InstanceFilter& filter,
                                                 std::vector<Change>* snapshot) override {
    CITYOS_RETURN_IF_ERROR(ValidateFilter(filter, "filter"));
    auto queue = std::make_shared<WatchQueue>(filter, options_.watch_queue_depth);
    absl::MutexLock lock(&mu_);
    if (shut_down_) return absl::UnavailableError("the registry is shutting down");
    if (snapshot != nullptr) {
      const absl::Time now = clock_->Now();
      snapshot->clear();
      for (const auto& [key, e] : entries_) {
        if (e.info.expire_time <= now || !filter.Matches(e.info.record)) continue;
        snapshot->push_back({.type = ChangeType::kAdded,
                             .reason = ChangeReason::kSnapshot,
                             .instance = e.info,
                             .time = now,
                             .revision = revision_});
      }
    }
    watchers_.insert(queue);
    return std::unique_ptr<Watcher>(std::make_unique<WatcherImpl>(this, std::move(queue)));
  }

  size_t ExpireNow() override {
    std::vector<InstanceInfo> expired;
    {
      absl::MutexLock lock(&mu_);
      const absl::Time now = clock_->Now();
      for (auto it = entries_.begin(); it != entries_.end();) {
        auto next = std::next(it);
        if (it->second.info.expire_time <= now) {
          expired.push_back(it->second.info);
          RemoveLocked(it, ChangeReason::kLeaseExpired, now);
        }
        it = next;
      }
    }
    for (const InstanceInfo& info : expired) {
      LogInfo(kComponent, "lease expired",
              {{"service", info.record.name},
               {"org", info.record.org},
               {"endpoint", info.record.endpoint},
               {"last_heartbeat", absl::FormatTime(info.heartbeat_time)}});
    }
    return expired.size();
  }

  void Shutdown() override {
    std::set<std::shared_ptr<WatchQueue>> watchers;
    {
      absl::MutexLock lock(&mu_);
      shut_down_ = true;
      watchers = watchers_;
    }
    for (const auto& w : watchers) {
      w->End(absl::UnavailableError("the registry is shutting down"));
    }
  }

  uint64_t revision() const override {
    absl::MutexLock lock(&mu_);
    return revision_;
  }

  size_t size() const override {
    absl::MutexLock lock(&mu_);
    const absl::Time now = clock_->Now();
    return static_cast<size_t>(std::count_if(entries_.begin(), entries_.end(), [&](const auto& kv) {
      return kv.second.info.expire_time > now;
    }));
  }

  void Unwatch(const std::shared_ptr<WatchQueue>& queue) {
    absl::MutexLock lock(&mu_);
    watchers_.erase(queue);
  }

 private:
  struct Entry {
    InstanceInfo info;
    std::string lease_id;
    absl::Duration ttl;
  };
  using Entries = std::map<Key, Entry>;

  std::vector<InstanceInfo> Live(const InstanceFilter& filter) const {
    absl::MutexLock lock(&mu_);
    const absl::Time now = clock_->Now();
    std::vector<InstanceInfo> out;
    for (const auto& [key, e] : entries_) {  // ordered by (org, name, endpoint)
      if (e.info.expire_time > now && filter.Matches(e.info.record)) out.push_back(e.info);
    }
    return out;
  }

  // The live entry of `lease_id`. An entry whose lease ran out is removed
  // (LEASE_EXPIRED) and reported NOT_FOUND.
  absl::StatusOr<Entries::iterator> FindLeaseLocked(std::string_view lease_id, absl::Time now)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (lease_id.empty()) return Invalid("lease_id", "required");
    auto l = leases_.find(std::string(lease_id));
    auto not_found = [&] {
      return absl::NotFoundError(absl::StrFormat(
          "lease %s is unknown or has ended; register again", lease_id));
    };
    if (l == leases_.end()) return not_found();
    auto it = entries_.find(l->second);
    if (it == entries_.end()) return not_found();  // cannot happen: kept in step
    if (it->second.info.expire_time <= now) {
      LogInfo(kComponent, "lease expired",
              {{"service", it->second.info.record.name},
               {"org", it->second.info.record.org},
               {"endpoint", it->second.info.record.endpoint}});
      RemoveLocked(it, ChangeReason::kLeaseExpired, now);
      return not_found();
    }
    return it;
  }

  void RemoveLocked(Entries::iterator it, ChangeReason reason, absl::Time now)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    leases_.erase(it->second.lease_id);
    InstanceInfo last = std::move(it->second.info);
    entries_.erase(it);
    PublishLocked(ChangeType::kRemoved, reason, last, now, nullptr);
  }

  // Gives the change the next revision and queues it for matching watchers.
  void PublishLocked(ChangeType type, ChangeReason reason, const InstanceInfo& info,
                     absl::Time now, const ServiceRecord* before)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    ++revision_;
    if (watchers_.empty()) return;
    Change change{.type = type, .reason = reason, .instance = info, .time = now,
                  .revision = revision_};
    for (const auto& w : watchers_) {
      if (w->filter().Matches(info.record) ||
          (before != nullptr && w->filter().Matches(*before))) {
        w->Push(change);
      }
    }
  }

  std::string NewLeaseIdLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    // UUIDv7: unique in this process; ownership is checked on every use, so
    // the id need not be secret.
    std::string id;
    do {
      id = NewEventId();
    } while (leases_.contains(id));
    return id;
  }

  const RegistryOptions options_;
  Clock* const clock_;

  mutable absl::Mutex mu_;
  Entries entries_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, Key> leases_ ABSL_GUARDED_BY(mu_);
  std::set<std::shared_ptr<WatchQueue>> watchers_ ABSL_GUARDED_BY(mu_);
  uint64_t revision_ ABSL_GUARDED_BY(mu_) = 0;
  bool shut_down_ ABSL_GUARDED_BY(mu_) = false;
};

WatcherImpl::~WatcherImpl() { registry_->Unwatch(queue_); }

}  // namespace

std::unique_ptr<Registry> Registry::Create(RegistryOptions options) {
  return std::make_unique<RegistryImpl>(options);
}

}  // namespace cityos
