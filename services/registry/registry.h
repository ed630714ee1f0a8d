// The service registry of the mesh, independent of gRPC: a table of service
// instances, each held under a lease that its owner renews with heartbeats.
// registry_service.h serves it as cityos.registry.v1.RegistryService;
// registry_plugin.h hosts it in `cityosd` and runs its expiry timer.
//
//   SimulatedClock clock;
//   std::unique_ptr<Registry> registry = Registry::Create({.clock = &clock});
//   CITYOS_ASSIGN_OR_RETURN(Lease lease, registry->Register(caller, {
//       .name = "carbon", .org = "quzhou-grid", .domain = "carbon",
//       .endpoint = "carbon.quzhou.city:7443",
//       .proto_services = {"cityos.carbon.v1.CarbonAccountService"}}));
//   CITYOS_RETURN_IF_ERROR(registry->Heartbeat(caller, lease.lease_id).status());
//   clock.Advance(absl::Minutes(1));
//   registry->ExpireNow();  // the lease is gone; watchers see REMOVED
//
// Semantics (the contract is proto/cityos/registry/v1/registry.proto):
//  - An instance is identified by (org, name, endpoint). Registering a triple
//    that the same principal (same SPIFFE id) already holds replaces the
//    record and grants a new lease (the old lease id stops working); watchers
//    see UPDATED when the record changed and nothing when it is identical (a
//    restarted process registering again). A triple held under a live lease
//    by another principal is ALREADY_EXISTS, also for admins (who may
//    Deregister it first).
//  - A caller registers only under its own org (`record.org ==
//    caller.org`), unless it has the role `admin`: PERMISSION_DENIED
//    otherwise. Heartbeat is for the lease's own principal only; Deregister
//    for its principal or an admin.
//  - A lease is live while `now < expire_time`. Lookups never return an
//    instance whose lease has run out, even before ExpireNow() removed it; a
//    Heartbeat on such a lease removes it (REMOVED, LEASE_EXPIRED) and is
//    NOT_FOUND.
//  - Every change (ADDED, UPDATED, REMOVED) gets the next revision (from 1)
//    and goes, in order, to every watcher whose filter matches the instance
//    (an UPDATED one: before or after the change). Each watcher has a bounded
//    queue; a watcher that lets it overflow is cut with RESOURCE_EXHAUSTED
//    and should watch again with a snapshot.
//  - Soft state: nothing is persisted. After a restart the registry is empty
//    and instances come back as their heartbeats fail with NOT_FOUND and they
//    register again (RegistrationKeeper does this).
//
// Thread-safety: Registry and Watcher are thread-safe.
#ifndef CITYOS_SERVICES_REGISTRY_REGISTRY_H_
#define CITYOS_SERVICES_REGISTRY_REGISTRY_H_

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "cityos/principal.h"

namespace cityos {

class Clock;

// What a service instance declares about itself (the proto's
// ServiceRegistration). Register() checks every field; see ValidateRecord().
struct ServiceRecord {
  // 1-64 characters of [a-z0-9-], starting with a letter, e.g. "carbon".
  std::string name;
  // Organisation running the instance: 1-128 characters of [A-Za-z0-9._-]
  // (a SPIFFE id segment), e.g. "quzhou-grid".
  std::string org;
  // Optional: empty, or 1-64 characters of [a-z0-9-] starting with a letter,
  // e.g. "carbon", "mobility", "platform".
  std::string domain;
  // Required: `host:port` (host name, IPv4, or `[IPv6]`) or a gRPC target URI
  // with scheme dns, ipv4, ipv6, unix, unix-abstract, vsock or xds, e.g.
  // "dns:///carbon.quzhou.city:7443". At most 255 bytes, no spaces.
  std::string endpoint;
  // Full names of the proto services implemented, e.g.
  // "cityos.carbon.v1.CarbonAccountService": at least two dot-separated
  // identifiers, at most 256 bytes; at most 64, no duplicates.
  std::vector<std::string> proto_services;
  // Bus subject patterns published on (cityos/subject.h syntax); at most 64,
  // no duplicates.
  std::vector<std::string> published_subjects;
  // Free text, at most 64 printable ASCII characters.
  std::string version;
  // At most 32; keys 1-63 characters of [a-z0-9._-]; values at most 256
  // printable characters (UTF-8 allowed, no control characters).
  std::map<std::string, std::string> labels;

  bool operator==(const ServiceRecord&) const = default;
};

// OK, or INVALID_ARGUMENT whose message starts with the field's path in a
// RegisterRequest, e.g. `registration.proto_services[1]: "cityos" is not a
// full proto service name (package.Service)`.
absl::Status ValidateRecord(const ServiceRecord& record);

// One registered instance as the registry holds it.
struct InstanceInfo {
  ServiceRecord record;
  // SPIFFE id of the principal that registered it.
  std::string principal;
  // When it was (last) registered.
  absl::Time register_time;
  // When the last heartbeat (or the registration) arrived.
  absl::Time heartbeat_time;
  // When the lease runs out unless renewed.
  absl::Time expire_time;

  bool operator==(const InstanceInfo&) const = default;
};

// A granted lease.
struct Lease {
  // Opaque id for Heartbeat and Deregister.
  std::string lease_id;
  // TTL granted (after clamping).
  absl::Duration ttl;
  // The instance as stored.
  InstanceInfo instance;
};

enum class ChangeType { kAdded, kUpdated, kRemoved };
enum class ChangeReason { kSnapshot, kRegistered, kLeaseExpired, kDeregistered };

// "ADDED" / "UPDATED" / "REMOVED"; "snapshot" / "registered" /
// "lease expired" / "deregistered" (for logs and test messages).
const char* ChangeTypeName(ChangeType t);
const char* ChangeReasonName(ChangeReason r);

// One change to one instance.
struct Change {
  ChangeType type = ChangeType::kAdded;
  ChangeReason reason = ChangeReason::kRegistered;
  // The instance after the change; for kRemoved its last record.
  InstanceInfo instance;
  // When the registry applied it.
  absl::Time time;
  // Registry revision after the change (for snapshot entries: the revision
  // the snapshot was taken at).
  uint64_t revision = 0;
};

// Which instances List, Resolve and Watch report. Empty fields match
// everything; set fields must all match.
struct InstanceFilter {
  std::string org;
  std::string name;
  std::string domain;
  // A full proto service name the instance implements.
  std::string proto_service;

  bool Matches(const ServiceRecord& record) const;
};

// OK, or INVALID_ARGUMENT naming the field with `prefix` (e.g. "filter")
// when a set field is malformed (the syntax of ServiceRecord's fields).
absl::Status ValidateFilter(const InstanceFilter& filter, std::string_view prefix);

struct RegistryOptions {
  // Time source for leases and change times; not owned, must outlive the
  // registry. Default: nullptr, the real clock.
  Clock* clock = nullptr;
  // TTL granted when a registration asks for none. Default: 15 s.
  absl::Duration default_ttl = absl::Seconds(15);
  // Requested TTLs are clamped to [min_ttl, max_ttl]. Default: 5 s to 5 min.
  absl::Duration min_ttl = absl::Seconds(5);
  absl::Duration max_ttl = absl::Minutes(5);
  // Most live instances; a new one past it is RESOURCE_EXHAUSTED.
  // Default: 4096.
  size_t max_instances = 4096;
  // Changes a watcher may have queued before it is cut. Default: 1024.
  size_t watch_queue_depth = 1024;
};

// OK, or INVALID_ARGUMENT naming the option that is out of range
// (0 < min_ttl <= default_ttl <= max_ttl, max_instances and
// watch_queue_depth >= 1).
absl::Status ValidateRegistryOptions(const RegistryOptions& options);

// One Watch subscription. Destroy it to stop watching; it must be destroyed
// before the Registry that made it. Thread-safe.
class Watcher {
 public:
  virtual ~Watcher() = default;
  // Returns up to `max` queued changes in the order applied, waiting up to
  // `timeout` for the first; an empty vector on timeout. RESOURCE_EXHAUSTED
  // once the watcher was cut for falling behind (its queue is dropped);
  // UNAVAILABLE once the registry shut down (after the queued changes).
  virtual absl::StatusOr<std::vector<Change>> Next(size_t max, absl::Duration timeout) = 0;
};

class Registry {
 public:
  // REQUIRES: ValidateRegistryOptions(options) is OK.
  static std::unique_ptr<Registry> Create(RegistryOptions options);
  virtual ~Registry() = default;

  // Registers `record` for `caller` with the requested TTL (zero: the
  // default; clamped to the bounds). Errors: INVALID_ARGUMENT (a malformed
  // field, named; a negative ttl, named "ttl"), PERMISSION_DENIED (another
  // org, not admin), ALREADY_EXISTS (held by another principal),
  // RESOURCE_EXHAUSTED (max_instances reached).
  virtual absl::StatusOr<Lease> Register(const Principal& caller, ServiceRecord record,
                                         absl::Duration ttl) = 0;

  // Renews the lease for its TTL from now. NOT_FOUND (unknown, ended or
  // expired), PERMISSION_DENIED (another principal's lease).
  virtual absl::StatusOr<Lease> Heartbeat(const Principal& caller, std::string_view lease_id) = 0;

  // Removes the instance now (REMOVED, DEREGISTERED). NOT_FOUND (unknown,
  // ended or expired), PERMISSION_DENIED (another principal's, caller not
  // admin).
  virtual absl::Status Deregister(const Principal& caller, std::string_view lease_id) = 0;

  // Live instances of the service `name` (exactly one of `name` and
  // `proto_service` set), or implementing `proto_service`, optionally only
  // of `org`; ordered by (org, name, endpoint). INVALID_ARGUMENT (none or
  // both targets, malformed values), NOT_FOUND (no live instance).
  virtual absl::StatusOr<std::vector<InstanceInfo>> Resolve(std::string_view name,
                                                            std::string_view proto_service,
                                                            std::string_view org) const = 0;

  // Live instances matching `filter`, ordered by (org, name, endpoint).
  // INVALID_ARGUMENT for a malformed filter field (named "filter.<field>").
  virtual absl::StatusOr<std::vector<InstanceInfo>> List(const InstanceFilter& filter) const = 0;

  // Starts watching the instances that match `filter`. When `snapshot` is
  // not null it receives the matching live instances as of the start, as
  // ADDED / SNAPSHOT changes; the watcher then gets every later change (none
  // is lost or duplicated between the two). INVALID_ARGUMENT for a malformed
  // filter; UNAVAILABLE after Shutdown().
  virtual absl::StatusOr<std::unique_ptr<Watcher>> Watch(const InstanceFilter& filter,
                                                         std::vector<Change>* snapshot) = 0;

  // Removes every instance whose lease ran out by the clock's now (REMOVED,
  // LEASE_EXPIRED); returns how many. The plug-in calls it on a timer; tests
  // call it after advancing a SimulatedClock.
  virtual size_t ExpireNow() = 0;

  // Ends every watcher (UNAVAILABLE once drained of what it had queued) and
  // refuses new ones. Register, Heartbeat and lookups keep working.
  // Idempotent.
  virtual void Shutdown() = 0;

  // Revision of the last change (0 before any).
  virtual uint64_t revision() const = 0;
  // Live instances (leases not yet run out).
  virtual size_t size() const = 0;
};

}  // namespace cityos

#endif  // CITYOS_SERVICES_REGISTRY_REGISTRY_H_
