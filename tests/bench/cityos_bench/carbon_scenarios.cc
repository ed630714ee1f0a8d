// Carbon account scenarios (issue 7 targets):
//
//   carbon.account.inprocess  readings/s accounted by CarbonLedger::
//                             AccountReadings on one thread (batches of
//                             4,096 readings over 10,000 meters; building
//                             the batches is not timed). Target >= 1M/s.
//   carbon.e2e                readings/s from gRPC BusService.Publish (mTLS,
//                             as the meter operator) through the exchange's
//                             Subscribe (mTLS, as org carbon-office, purpose
//                             carbon_accounting, decided per event) into the
//                             carbon ledger: the clock runs from the first
//                             publish until the service has accounted every
//                             reading. Peer: the plain bus gRPC Subscribe
//                             (replay) of the same stream in the same run.
//                             Also reported: CPU per reading of the whole
//                             process and of the carbon service's own threads
//                             (carbon-feed, carbon-ingest, carbon-ledger).
//                             Target >= 200k/s.
//   carbon.alarm.latency      p50/p99 ms from publishing (gRPC) the reading
//                             that breaks a plan to the Alarm event seen on
//                             an in-process bus subscription to
//                             carbon.alarm.>. Target p99 <= 50 ms.
//
// The stack: a Bus (no authorizer), a PDP with the carbon policy, an audit
// log, the entity store, ExchangeServiceImpl and BusServiceImpl served over
// mTLS from a fresh city CA, and CarbonAccountServiceImpl whose ExchangeFeed
// connects to that server with its own certificate.
#include <grpcpp/grpcpp.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "bus_common.h"
#include "bus_service.h"
#include "carbon_plugin.h"
#include "carbon_service.h"
#include "cityos/audit.h"
#include "cityos/bus.h"
#include "cityos/bus/v1/bus.grpc.pb.h"
#include "cityos/ca.h"
#include "cityos/carbon/v1/carbon.pb.h"
#include "cityos/event.h"
#include "cityos/policy.h"
#include "cityos/state_store.h"
#include "cityos/tls.h"
#include "decision_audit.h"
#include "exchange_service.h"
#include "factors.h"
#include "ledger.h"
#include "measure.h"
#include "plans.h"
#include "regions.h"
#include "scenario.h"

namespace cityos::bench {
namespace {

namespace cv1 = ::cityos::carbon::v1;
using carbon::CarbonAccountServiceImpl;

constexpr char kTrustDomain[] = "bench.city";
constexpr char kPolicy[] = R"(rules:
  - id: carbon-office-reads-readings
    effect: allow
    actions: [subscribe, read, history]
    principal: {orgs: [carbon-office]}
    resource: {subjects: ["carbon.meter.reading.>"]}
    purposes: [carbon_accounting]
    legal_basis: legal_obligation
)";

std::vector<carbon::RegionInfo> Regions() {
  return {{"CN", "China", "", "", "cn"},
          {"CN-ZJ", "Zhejiang", "CN", "CN-EAST", "zhejiang"},
          {"CN-ZJ-QZ", "Quzhou", "CN-ZJ", "", "quzhou"},
          {"CN-ZJ-QZ-KC", "Kecheng", "CN-ZJ-QZ", "", "kecheng"}};
}

cv1::EmissionFactor GridFactor() {
  cv1::EmissionFactor f;
  f.set_kind(cv1::FACTOR_KIND_GRID);
  f.set_key("electricity");
  f.set_energy_kind(cv1::ENERGY_KIND_ELECTRICITY);
  f.set_region("CN-EAST");
  f.set_vintage("2023");
  f.set_value(0.55);
  f.set_unit("kgCO2/kWh");
  f.set_source("MEE+NBS 2023 East China grid");
  SetTimestamp(absl::FromUnixSeconds(1672502400),
               f.mutable_valid()->mutable_start());
  return f;
}

cv1::Account Enterprise(const std::string& id) {
  cv1::Account a;
  a.set_account_id(id);
  a.set_kind(cv1::ACCOUNT_KIND_ENTERPRISE);
  a.set_org(id);
  a.set_industry_code("C3110");
  a.set_region("CN-ZJ-QZ-KC");
  return a;
}

cv1::Account Meter(const std::string& id, const std::string& parent) {
  cv1::Account m;
  m.set_account_id(id);
  m.set_kind(cv1::ACCOUNT_KIND_METER);
  m.set_parent_id(parent);
  m.mutable_meter()->set_energy_kind(cv1::ENERGY_KIND_ELECTRICITY);
  m.mutable_meter()->set_unit("kWh");
  return m;
}

cv1::MeterReading Reading(const std::string& meter, double kwh,
                          absl::Time start, absl::Time end) {
  cv1::MeterReading r;
  r.set_meter_id(meter);
  r.set_energy_kind(cv1::ENERGY_KIND_ELECTRICITY);
  r.set_reading_kind(cv1::READING_KIND_INTERVAL);
  r.set_value(kwh);
  r.set_unit("kWh");
  SetTimestamp(start, r.mutable_interval_start());
  SetTimestamp(end, r.mutable_interval_end());
  return r;
}

absl::StatusOr<event::v1::Event> ReadingEvent(const cv1::MeterReading& r) {
  return EventBuilder()
      .Source("//bench.city/meters")
      .Subject("carbon.meter.reading.quzhou.kecheng")
      .Classification(event::v1::CLASSIFICATION_INTERNAL)
      .Owner("quzhou-grid")
      .Region("CN-ZJ-QZ-KC")
      .ProtoData(r)
      .Build();
}

// ---- carbon.account.inprocess
// ------------------------------------------------

// CPU seconds (user + system) used so far by this process's threads, summed
// by thread name for the names starting with `prefix` (the carbon service
// names its threads carbon-feed, carbon-ingest, carbon-ledger); 10 ms
// resolution (/proc/self/task/*/stat).
std::map<std::string, double> ThreadCpuSeconds(std::string_view prefix) {
  std::map<std::string, double> out;
  const double tick = static_cast<double>(sysconf(_SC_CLK_TCK));
  std::error_code ec;
  for (const auto& e :
       std::filesystem::directory_iterator("/proc/self/task", ec)) {
    std::ifstream comm(e.path() / "comm");
    std::string name;
    if (!std::getline(comm, name) || name.rfind(prefix, 0) != 0) continue;
    std::ifstream stat(e.path() / "stat");
    std::string line;
    if (!std::getline(stat, line)) continue;
    const size_t paren = line.rfind(')');
    if (paren == std::string::npos) continue;
    // After "pid (comm) ": state is field 3, utime 14, stime 15.
    std::istringstream in(line.substr(paren + 2));
    std::string skip;
    for (int f = 3; f <= 13; ++f) in >> skip;
    long utime = 0, stime = 0;
    in >> utime >> stime;
    out[name] += static_cast<double>(utime + stime) / tick;
  }
  return out;
}

absl::StatusOr<Result> RunInProcess(BenchContext& ctx) {
  const BenchOptions& o = ctx.options();
  absl::StatusOr<std::string> dir = ctx.NewDir("carbon-inprocess");
  if (!dir.ok()) return dir.status();
  absl::TimeZone tz;
  absl::LoadTimeZone("Asia/Shanghai", &tz);
  absl::StatusOr<carbon::RegionTree> tree =
      carbon::RegionTree::Create(Regions());
  if (!tree.ok()) return tree.status();
  Clock* clock = Clock::Real();
  auto factors = carbon::FactorRegistry::Open(*dir + "/factors.db", clock, tz);
  if (!factors.ok()) return factors.status();
  if (auto f = (*factors)->Add(GridFactor(), "bench"); !f.ok())
    return f.status();
  carbon::LedgerOptions lo;
  lo.tz = tz;
  lo.return_records = false;
  auto ledger =
      carbon::CarbonLedger::Open(*dir, &*tree, factors->get(), clock, lo);
  if (!ledger.ok()) return ledger.status();
  constexpr int kMeters = 10000;
  constexpr size_t kBatch = 4096;
  if (auto e = (*ledger)->CreateAccount(Enterprise("bench-steel")); !e.ok())
    return e.status();
  std::vector<std::string> meters;
  for (int i = 0; i < kMeters; ++i) {
    meters.push_back(absl::StrFormat("bench-steel/m-%05d", i));
    if (auto m = (*ledger)->CreateAccount(Meter(meters.back(), "bench-steel"));
        !m.ok()) {
      return m.status();
    }
  }
  // Readings per meter: consecutive 15-minute intervals ending an hour ago,
  // going back (at most 48 h: within the ledger's in-memory dedup window).
  const uint64_t total = std::min<uint64_t>(o.events, 1'920'000);
  const absl::Time base = absl::Now() - absl::Hours(1);
  std::vector<carbon::ReadingInput> batch(kBatch);
  uint64_t done = 0, accounted = 0, quarantined = 0;
  int64_t nanos = 0;
  const int64_t wall_start = NowNanos();
  while (done < total &&
         absl::Nanoseconds(NowNanos() - wall_start) < o.max_time * 4) {
    const size_t n =
        static_cast<size_t>(std::min<uint64_t>(kBatch, total - done));
    for (size_t k = 0; k < n; ++k) {
      const uint64_t i = done + k;
      const int meter = static_cast<int>(i % kMeters);
      const int64_t slot = static_cast<int64_t>(i / kMeters);
      const absl::Time end = base - absl::Minutes(15) * slot;
      carbon::ReadingInput& in = batch[k];
      in.reading = Reading(meters[meter], 10.0 + static_cast<double>(k % 7),
                           end - absl::Minutes(15), end);
      in.event_id = absl::StrCat("e-", i);
    }
    const int64_t t0 = NowNanos();
    carbon::BatchResult r =
        (*ledger)->AccountReadings(absl::MakeConstSpan(batch.data(), n));
    nanos += NowNanos() - t0;
    accounted += r.accounted;
    quarantined += r.quarantined;
    done += n;
    if (nanos > absl::ToInt64Nanoseconds(o.max_time)) break;
  }
  if (accounted == 0) return absl::InternalError("nothing was accounted");
  Result res;
  res.value = Round(Rate(accounted, nanos), 0);
  res.extra["readings"] = done;
  res.extra["accounted"] = accounted;
  res.extra["quarantined"] = quarantined;
  res.extra["meters"] = kMeters;
  res.extra["batch"] = kBatch;
  res.extra["threads"] = 1;
  res.extra["seconds_accounting"] = Round(static_cast<double>(nanos) / 1e9, 3);
  res.extra["target"] = ">= 1000000 readings/s";
  ledger->reset();
  ctx.RemoveDir(*dir);
  return res;
}

// ---- the stack of carbon.e2e and carbon.alarm.latency
// --------------------------

class CarbonStack {
 public:
  static absl::StatusOr<std::unique_ptr<CarbonStack>> Start(
      BenchContext& ctx, std::string_view name, bool publish_records) {
    auto s = std::unique_ptr<CarbonStack>(new CarbonStack());
    s->ctx_ = &ctx;
    absl::StatusOr<std::unique_ptr<ScopedBus>> bus = ScopedBus::Open(ctx, name);
    if (!bus.ok()) return bus.status();
    s->bus_ = *std::move(bus);
    auto stream = s->bus()->CreateStream(
        BenchPrincipal(), {.name = "carbon-in",
                           .subjects = {"carbon.meter.reading.>"},
                           .durability = Durability::kNone});
    if (!stream.ok()) return stream.status();
    absl::StatusOr<std::string> dir =
        ctx.NewDir(absl::StrCat(std::string(name), "-stack"));
    if (!dir.ok()) return dir.status();
    s->dir_ = *dir;
    // PKI: the exchange's server certificate, the carbon service's and the
    // meter operator's client certificates.
    auto ca = CityCa::Create(*dir + "/ca", kTrustDomain);
    if (!ca.ok()) return ca.status();
    auto server = (*ca)->Issue({.org = "city",
                                .name = "cityosd",
                                .dns_names = {"localhost"},
                                .ip_addresses = {"127.0.0.1"},
                                .out = *dir + "/certs/server"});
    if (!server.ok()) return server.status();
    auto carbon_cert = (*ca)->Issue({.org = "carbon-office",
                                     .name = "carbon",
                                     .out = *dir + "/certs/carbon"});
    if (!carbon_cert.ok()) return carbon_cert.status();
    auto grid = (*ca)->Issue(
        {.org = "quzhou-grid", .name = "meters", .out = *dir + "/certs/grid"});
    if (!grid.ok()) return grid.status();
    const std::string ca_file = (*ca)->ca_file();
    // Access control.
    auto audit = AuditLog::Open({.dir = *dir + "/audit", .node = "bench"});
    if (!audit.ok()) return audit.status();
    s->audit_ = *std::move(audit);
    s->node_ = Principal::Node(kTrustDomain, "bench");
    auto pdp = PolicyDecisionPoint::Create(
        {.audit = s->audit_.get(), .node = s->node_, .node_name = "bench"});
    if (!pdp.ok()) return pdp.status();
    s->pdp_ = *std::move(pdp);
    auto loaded =
        s->pdp_->Load(s->node_, {{.name = "carbon.yaml", .content = kPolicy}},
                      {.replace_all = true});
    if (!loaded.ok()) return loaded.status();
    auto store = OpenSqliteStateStore({.path = *dir + "/entities.db"});
    if (!store.ok()) return store.status();
    s->store_ = *std::move(store);
    s->auditor_ =
        std::make_unique<DecisionAuditor>(s->audit_.get(), Clock::Real());
    s->appliers_ = std::make_unique<RecipientAppliers>(std::string(32, 'k'));
    auto peer = [](auto* c) { return PeerPrincipal(*c); };
    s->deps_ = ExchangeDeps{.bus = s->bus(),
                            .pdp = s->pdp_.get(),
                            .audit = s->audit_.get(),
                            .store = s->store_.get(),
                            .clock = Clock::Real(),
                            .node = s->node_,
                            .resolver = peer,
                            .auditor = s->auditor_.get(),
                            .appliers = s->appliers_.get()};
    s->exchange_ = std::make_unique<ExchangeServiceImpl>(&s->deps_);
    s->exchange_->Start();
    s->bus_service_ = std::make_unique<BusServiceImpl>(s->bus(), peer);
    auto creds = MakeServerCredentials({.ca_file = ca_file,
                                        .cert_file = *dir + "/certs/server.pem",
                                        .key_file = *dir + "/certs/server.key",
                                        .trust_domain = kTrustDomain});
    if (!creds.ok()) return creds.status();
    grpc::ServerBuilder builder;
    int port = 0;
    builder.AddListeningPort("127.0.0.1:0", *creds, &port);
    builder.RegisterService(s->exchange_.get());
    builder.RegisterService(s->bus_service_.get());
    s->server_ = builder.BuildAndStart();
    if (s->server_ == nullptr || port == 0) {
      return absl::UnavailableError(
          "could not start the gRPC server on 127.0.0.1:0");
    }
    s->address_ = absl::StrCat("127.0.0.1:", port);
    // The meter operator's channel.
    auto grid_creds =
        MakeChannelCredentials({.ca_file = ca_file,
                                .cert_file = *dir + "/certs/grid.pem",
                                .key_file = *dir + "/certs/grid.key",
                                .trust_domain = kTrustDomain});
    if (!grid_creds.ok()) return grid_creds.status();
    grpc::ChannelArguments args;
    args.SetInt("grpc.use_local_subchannel_pool", 1);
    args.SetInt(GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH, 64 << 20);
    s->grid_ = grpc::CreateCustomChannel(s->address_, *grid_creds, args);
    // The carbon service, its feed on the exchange with its own certificate.
    carbon::IdentityRequest ir;
    ir.cert = *dir + "/certs/carbon.pem";
    ir.key = *dir + "/certs/carbon.key";
    ir.ca = ca_file;
    ir.trust_domain = kTrustDomain;
    auto identity = carbon::ResolveServiceIdentity(ir);
    if (!identity.ok()) return identity.status();
    carbon::CarbonServiceDeps deps;
    deps.clock = Clock::Real();
    deps.bus = s->bus();
    deps.self = carbon::CarbonServicePrincipal(kTrustDomain);
    deps.resolver = peer;
    deps.exchange_address = [a = s->address_] { return a; };
    deps.identity = *identity;
    carbon::CarbonServiceConfig config;
    config.data_dir = *dir + "/carbon";
    config.regions = Regions();
    config.factors = {GridFactor()};
    config.inputs = {"carbon.meter.reading.>"};
    config.reporters = {"quzhou-grid"};
    config.publish_records = publish_records;
    config.tick_interval = absl::Seconds(1);
    config.feed_max_batch = 4096;
    config.feed_min_backoff = absl::Milliseconds(20);
    config.feed_max_backoff = absl::Milliseconds(200);
    s->carbon_ = std::make_unique<CarbonAccountServiceImpl>(std::move(deps),
                                                            std::move(config));
    if (absl::Status st = s->carbon_->Start(); !st.ok()) return st;
    // Wait until the feed's stream is open.
    const absl::Time deadline = absl::Now() + absl::Seconds(30);
    while (s->carbon_->feed()->stats().connected == 0) {
      if (absl::Now() > deadline) {
        return absl::UnavailableError(
            "the carbon feed did not connect to the exchange: " +
            s->carbon_->feed()->last_error());
      }
      absl::SleepFor(absl::Milliseconds(10));
    }
    return s;
  }

  ~CarbonStack() {
    if (carbon_ != nullptr) carbon_->Stop();
    if (exchange_ != nullptr) exchange_->BeginShutdown();
    if (bus_service_ != nullptr) bus_service_->BeginShutdown();
    if (server_ != nullptr) {
      server_->Shutdown(std::chrono::system_clock::now() +
                        std::chrono::seconds(5));
    }
    if (exchange_ != nullptr) exchange_->Stop();
    carbon_.reset();
    server_.reset();
    exchange_.reset();
    bus_service_.reset();
    auditor_.reset();
    if (audit_ != nullptr) (void)audit_->Close();
    store_.reset();
    pdp_.reset();
    bus_.reset();
    if (ctx_ != nullptr && !dir_.empty()) ctx_->RemoveDir(dir_);
  }

  Bus* bus() const { return bus_->bus(); }
  CarbonAccountServiceImpl* carbon() const { return carbon_.get(); }
  std::shared_ptr<grpc::Channel> grid() const { return grid_; }

 private:
  CarbonStack() = default;
  BenchContext* ctx_ = nullptr;
  std::string dir_, address_;
  Principal node_;
  std::unique_ptr<ScopedBus> bus_;
  std::unique_ptr<AuditLog> audit_;
  std::unique_ptr<PolicyDecisionPoint> pdp_;
  std::unique_ptr<StateStore> store_;
  std::unique_ptr<DecisionAuditor> auditor_;
  std::unique_ptr<RecipientAppliers> appliers_;
  ExchangeDeps deps_;
  std::unique_ptr<ExchangeServiceImpl> exchange_;
  std::unique_ptr<BusServiceImpl> bus_service_;
  std::unique_ptr<grpc::Server> server_;
  std::shared_ptr<grpc::Channel> grid_;
  std::unique_ptr<CarbonAccountServiceImpl> carbon_;
};

// ---- carbon.e2e
// -------------------------------------------------------------------

absl::StatusOr<Result> RunE2e(BenchContext& ctx) {
  const BenchOptions& o = ctx.options();
  auto stack = CarbonStack::Start(ctx, "carbon-e2e", /*publish_records=*/false);
  if (!stack.ok()) return stack.status();
  CarbonAccountServiceImpl* svc = (*stack)->carbon();
  constexpr int kMeters = 5000;
  if (auto e = svc->ledger()->CreateAccount(Enterprise("bench-steel")); !e.ok())
    return e.status();
  std::vector<std::string> meters;
  for (int i = 0; i < kMeters; ++i) {
    meters.push_back(absl::StrFormat("bench-steel/m-%04d", i));
    if (auto m =
            svc->ledger()->CreateAccount(Meter(meters.back(), "bench-steel"));
        !m.ok()) {
      return m.status();
    }
  }
  // The publish requests, built before the clock starts (what a meter
  // gateway hands the bus): batches of 1,024 readings.
  constexpr size_t kPerRequest = 1024;
  const uint64_t total = std::min<uint64_t>(o.events, 400'000);
  const absl::Time base = absl::Now() - absl::Hours(1);
  std::vector<bus::v1::PublishRequest> requests;
  for (uint64_t i = 0; i < total; ++i) {
    if (i % kPerRequest == 0) requests.emplace_back();
    const int meter = static_cast<int>(i % kMeters);
    const absl::Time end =
        base - absl::Minutes(15) * static_cast<int64_t>(i / kMeters);
    auto e = ReadingEvent(
        Reading(meters[meter], 12.5, end - absl::Minutes(15), end));
    if (!e.ok()) return e.status();
    *requests.back().add_events() = *std::move(e);
  }
  const CarbonAccountServiceImpl::Stats before = svc->stats();
  // kPublishers publishers, each with its own stub, requests interleaved.
  constexpr int kPublishers = 4;
  std::atomic<uint64_t> failed{0};
  std::string first_error;
  absl::Mutex mu;
  const double cpu0 = ProcessCpuSeconds();
  const std::map<std::string, double> carbon_cpu0 = ThreadCpuSeconds("carbon-");
  const int64_t start = NowNanos();
  std::vector<std::thread> threads;
  for (int p = 0; p < kPublishers; ++p) {
    threads.emplace_back([&, p] {
      auto stub = bus::v1::BusService::NewStub((*stack)->grid());
      for (size_t r = static_cast<size_t>(p); r < requests.size();
           r += kPublishers) {
        grpc::ClientContext c;
        c.set_deadline(std::chrono::system_clock::now() +
                       std::chrono::seconds(60));
        bus::v1::PublishResponse resp;
        grpc::Status s = stub->Publish(&c, requests[r], &resp);
        if (!s.ok()) {
          failed.fetch_add(1);
          absl::MutexLock lock(&mu);
          if (first_error.empty()) first_error = s.error_message();
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  const int64_t published = NowNanos();
  if (failed.load() > 0)
    return absl::InternalError("Publish failed: " + first_error);
  // Until every reading is accounted (or a generous deadline).
  const absl::Time deadline = absl::Now() + o.max_time * 6 + absl::Seconds(30);
  uint64_t accounted = 0;
  while (absl::Now() < deadline) {
    const CarbonAccountServiceImpl::Stats s = svc->stats();
    accounted = s.readings - before.readings;
    if (s.readings + s.duplicates + s.quarantined - before.readings -
            before.duplicates - before.quarantined >=
        total) {
      break;
    }
    absl::SleepFor(absl::Microseconds(200));
  }
  const int64_t nanos = NowNanos() - start;
  const double cpu = ProcessCpuSeconds() - cpu0;
  std::map<std::string, double> carbon_cpu = ThreadCpuSeconds("carbon-");
  const CarbonAccountServiceImpl::Stats after = svc->stats();
  if (accounted < total) {
    return absl::InternalError(absl::StrCat(
        "accounted ", accounted, " of ", total, " readings (quarantined ",
        after.quarantined - before.quarantined, ")"));
  }
  Result res;
  res.value = Round(Rate(accounted, nanos), 0);
  res.extra["readings"] = total;
  res.extra["meters"] = kMeters;
  res.extra["per_publish"] = kPerRequest;
  res.extra["publishers"] = kPublishers;
  res.extra["publish_rate"] = Round(Rate(total, published - start), 0);
  res.extra["publish_records"] = false;
  res.extra["feed_connects"] = svc->feed()->stats().connects;
  // Share of the run the ingest thread was busy accounting (1.0 = it is the
  // bottleneck).
  res.extra["ingest_busy"] =
      Round(static_cast<double>(after.ingest_busy_ns - before.ingest_busy_ns) /
                static_cast<double>(nanos),
            3);
  res.extra["seconds"] = Round(static_cast<double>(nanos) / 1e9, 3);
  // Publisher, bus, exchange, feed and ledger share this process: the cores
  // it used and its CPU per reading (independent of what else runs).
  res.extra["cores_used"] = Round(cpu * 1e9 / static_cast<double>(nanos), 2);
  res.extra["cpu_us_per_reading"] =
      Round(cpu * 1e6 / static_cast<double>(total), 2);
  // Of that, the carbon service's own threads (feed: reading the exchange's
  // responses; ingest: accounting; ledger: the SQLite writer), by name.
  double carbon_total = 0;
  nlohmann::ordered_json by_thread = nlohmann::ordered_json::object();
  for (auto& [name, secs] : carbon_cpu) {
    auto it = carbon_cpu0.find(name);
    const double d = secs - (it == carbon_cpu0.end() ? 0 : it->second);
    carbon_total += d;
    by_thread[name] = Round(d * 1e6 / static_cast<double>(total), 2);
  }
  res.extra["carbon_cpu_us_per_reading"] =
      Round(carbon_total * 1e6 / static_cast<double>(total), 2);
  res.extra["carbon_threads_cpu_us_per_reading"] = by_thread;
  // How the feed reads the exchange's responses (see exchange_feed.h).
  res.extra["feed_reads"] =
      "response bytes: envelope fields and MeterReading parsed from the wire, "
      "no Event built";
  // How the bus's gRPC Publish takes the requests (see bus_service.h).
  res.extra["bus_publish"] =
      "every event parsed (protobuf) onto arenas shared by up to 32 KB of events, "
      "publisher stamped, validated by the bus, published shared without a copy";
  res.extra["hardware_threads"] = std::thread::hardware_concurrency();
  res.extra["target"] = ">= 200000 readings/s";
  // Peer: the plain bus gRPC Subscribe (replay) of the same stream.
  auto bus_rate = [&]() -> absl::StatusOr<double> {
    auto stub = bus::v1::BusService::NewStub((*stack)->grid());
    bus::v1::SubscribeRequest req;
    req.set_stream("carbon-in");
    req.mutable_start()->set_kind(bus::v1::StartPosition::KIND_EARLIEST);
    req.set_max_batch(1024);
    grpc::ClientContext c;
    c.set_deadline(std::chrono::system_clock::now() +
                   std::chrono::seconds(120));
    const int64_t t0 = NowNanos();
    auto reader = stub->Subscribe(&c, req);
    bus::v1::SubscribeResponse resp;
    uint64_t n = 0;
    while (n < total && reader->Read(&resp)) n += resp.deliveries_size();
    const int64_t dt = NowNanos() - t0;
    c.TryCancel();
    grpc::Status s = reader->Finish();
    if (n < total) {
      return absl::UnavailableError(absl::StrCat(
          "bus Subscribe read ", n, " of ", total, ": ", s.error_message()));
    }
    return Rate(n, dt);
  };
  if (o.peers) {
    absl::StatusOr<double> peer = bus_rate();
    res.SetPeer("bus.grpc.subscribe",
                peer.ok() ? absl::StatusOr<double>(Round(*peer, 0)) : peer);
  }
  return res;
}

// ---- carbon.alarm.latency
// ------------------------------------------------------------

absl::StatusOr<Result> RunAlarmLatency(BenchContext& ctx) {
  const BenchOptions& o = ctx.options();
  auto stack =
      CarbonStack::Start(ctx, "carbon-alarm", /*publish_records=*/true);
  if (!stack.ok()) return stack.status();
  CarbonAccountServiceImpl* svc = (*stack)->carbon();
  auto sub = (*stack)->bus()->Subscribe(BenchPrincipal(),
                                        {.subject_pattern = "carbon.alarm.>"});
  if (!sub.ok()) return sub.status();
  auto stub = bus::v1::BusService::NewStub((*stack)->grid());
  absl::TimeZone tz;
  absl::LoadTimeZone("Asia/Shanghai", &tz);
  const absl::Time now = absl::Now();
  const absl::Time day = absl::FromCivil(absl::ToCivilDay(now, tz), tz);
  const int iterations =
      static_cast<int>(std::clamp<uint64_t>(o.events / 10000, 50, 300));
  LatencySamples latency(static_cast<size_t>(iterations));
  int raised = 0;
  const int64_t wall = NowNanos();
  for (int i = 0; i < iterations; ++i) {
    if (absl::Nanoseconds(NowNanos() - wall) > o.max_time * 4) break;
    // A fresh enterprise with one meter and a daily budget of 100 kg.
    const std::string ent = absl::StrFormat("bench-ent-%04d", i);
    if (auto e = svc->ledger()->CreateAccount(Enterprise(ent)); !e.ok())
      return e.status();
    if (auto m = svc->ledger()->CreateAccount(Meter(ent + "/m", ent)); !m.ok())
      return m.status();
    cv1::Plan plan;
    plan.set_account_id(ent);
    plan.set_granularity(cv1::GRANULARITY_DAY);
    SetTimestamp(day, plan.mutable_valid()->mutable_start());
    plan.set_max_kg(100);
    if (auto p = svc->alarms()->SetPlan(plan, "bench"); !p.ok())
      return p.status();
    // The reading that breaks it: 1,000 kWh = 550 kg, today.
    const absl::Time end =
        std::max(day + absl::Minutes(1), now - absl::Minutes(2));
    auto e =
        ReadingEvent(Reading(ent + "/m", 1000, end - absl::Minutes(1), end));
    if (!e.ok()) return e.status();
    bus::v1::PublishRequest req;
    *req.add_events() = *std::move(e);
    grpc::ClientContext c;
    c.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
    bus::v1::PublishResponse resp;
    const int64_t t0 = NowNanos();
    grpc::Status s = stub->Publish(&c, req, &resp);
    if (!s.ok())
      return absl::InternalError("Publish failed: " + s.error_message());
    bool seen = false;
    const absl::Time deadline = absl::Now() + absl::Seconds(10);
    while (!seen && absl::Now() < deadline) {
      std::vector<Delivery> got;
      if (absl::Status n = (*sub)->Next(16, absl::Milliseconds(100), &got);
          !n.ok())
        return n;
      for (const Delivery& d : got) {
        cv1::Alarm a;
        if (d.message->event().proto_data().UnpackTo(&a) &&
            a.account_id() == ent && a.state() == cv1::ALARM_STATE_ACTIVE) {
          latency.Add(NowNanos() - t0);
          seen = true;
        }
      }
    }
    if (!seen)
      return absl::InternalError(
          absl::StrCat("no alarm for ", ent, " within 10 s"));
    ++raised;
  }
  latency.Finish();
  Result res;
  res.value = Round(latency.PercentileMicros(99) / 1000.0, 3);
  res.extra["p50_ms"] = Round(latency.PercentileMicros(50) / 1000.0, 3);
  res.extra["p99_ms"] = Round(latency.PercentileMicros(99) / 1000.0, 3);
  res.extra["max_ms"] = Round(latency.PercentileMicros(100) / 1000.0, 3);
  res.extra["alarms"] = raised;
  res.extra["publish_records"] = true;
  res.extra["target"] = "p99 <= 50 ms";
  return res;
}

}  // namespace

absl::Status RegisterCarbonScenarios(ScenarioRegistry& registry) {
  if (absl::Status s = registry.Add(
          {.name = "carbon.account.inprocess",
           .unit = "readings/s",
           .description = "CarbonLedger::AccountReadings on one thread",
           .run = RunInProcess});
      !s.ok()) {
    return s;
  }
  if (absl::Status s = registry.Add(
          {.name = "carbon.e2e",
           .unit = "readings/s",
           .description =
               "gRPC publish -> exchange Subscribe (mTLS) -> carbon ledger",
           .run = RunE2e});
      !s.ok()) {
    return s;
  }
  return registry.Add(
      {.name = "carbon.alarm.latency",
       .unit = "ms (p99)",
       .description =
           "publish of the breaking reading -> Alarm event on the bus",
       .run = RunAlarmLatency});
}

}  // namespace cityos::bench
