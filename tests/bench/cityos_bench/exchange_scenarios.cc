// Exchange scenarios: cityos.exchange.v1.ExchangeService served in this
// process (ExchangeServiceImpl over a real PDP with a policy loaded, a real
// audit log, the SQLite entity store and a Bus), called through a client stub
// over loopback TCP. Every read is decided per entity / per event with one
// redaction obligation applied, and audited.
//
//   exchange.query          Query requests/s, pages of 10 entities; peer:
//                           the same client against a gRPC server answering
//                           every call with one real response's bytes, no
//                           work (`ratio` = exchange / that ceiling).
//   exchange.query.deep     the same with 32 calls in flight instead of 8.
//   exchange.subscribe      Subscribe events/s (replay of a stored stream,
//                           per-event decision + one redaction); peer: plain
//                           bus gRPC Subscribe of the same stream in the same
//                           run (`ratio` = exchange / bus).
//   exchange.entity_updates entity updates/s ingested from the bus into the
//                           store while 100 live filtered exchange
//                           subscriptions (one entity each) run; the
//                           publisher stays at most 65,536 updates ahead of
//                           the store (a sustained rate, not a backlog drain).
#include <grpcpp/grpcpp.h>
#include <sys/resource.h>
#include <time.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "bus_common.h"
#include "bus_service.h"
#include "cityos/audit.h"
#include "cityos/bus.h"
#include "cityos/bus/v1/bus.grpc.pb.h"
#include "cityos/entity.h"
#include "cityos/exchange/v1/exchange.grpc.pb.h"
#include "cityos/health/v1/health.pb.h"
#include "cityos/policy.h"
#include "cityos/state_store.h"
#include "decision_audit.h"
#include "google/protobuf/arena.h"
#include "exchange_service.h"
#include "ingest.h"
#include "measure.h"
#include "scenario.h"

namespace cityos::bench {
namespace {

using event::v1::Event;

constexpr char kType[] = "cityos.health.v1.BedAvailability";
constexpr char kPurpose[] = "medical_care";
constexpr char kPolicy[] = R"(rules:
  - id: bench-beds
    effect: allow
    actions: [read, subscribe, history]
    principal: {orgs: [reader]}
    resource:
      types: [cityos.health.v1.BedAvailability]
    purposes: [medical_care]
    obligations:
      - redact: [hospital_name]
)";

const Principal& Reader() {
  static const Principal* p =
      new Principal(*Principal::FromSpiffeId("spiffe://bench.city/org/reader/svc/app"));
  return *p;
}

// A BedAvailability event for entity `id`, published as the bench principal.
absl::StatusOr<Event> BedEvent(const std::string& subject, const std::string& id, int free) {
  health::v1::BedAvailability b;
  b.set_hospital_id("hospital-" + id);
  b.set_hospital_name("Quzhou People's Hospital, ward " + id);
  b.set_ward_kind(health::v1::WARD_KIND_ICU);
  b.set_total_beds(40);
  b.set_free_beds(free);
  b.mutable_location()->set_latitude(28.97);
  b.mutable_location()->set_longitude(118.87);
  return EventBuilder()
      .Source("//bench.city/hospitals")
      .Subject(subject)
      .Type(kType)
      .Domain("health")
      .Classification(event::v1::CLASSIFICATION_PUBLIC)
      .Owner("hospitals")
      .Region("CN-ZJ-QZ")
      .Jurisdiction("CN")
      .Extension(kEntityIdExtension, id)
      .ProtoData(b)
      .Publisher(kBenchPublisher)
      .Build();
}


// A response parsed in full, on an arena reset before each Read (how a
// client that reads a busy stream keeps allocation down, as the carbon feed
// does): Next() gives a fresh message for the next Read.
// The arena's first block is owned here, so Reset() keeps it: a response that
// fits in it costs no block malloc/free per call (larger ones add blocks,
// freed at the next Reset).
template <typename Response>
class ResponseArena {
 public:
  ResponseArena()
      : initial_block_(std::make_unique<char[]>(kInitialBlock)),
        arena_(Options(initial_block_.get())) {}
  Response* Next() {
    arena_.Reset();
    message_ = google::protobuf::Arena::CreateMessage<Response>(&arena_);
    return message_;
  }
  const Response* operator->() const { return message_; }

 private:
  static constexpr size_t kInitialBlock = 64 << 10;
  static google::protobuf::ArenaOptions Options(char* initial_block) {
    google::protobuf::ArenaOptions o;
    o.initial_block = initial_block;
    o.initial_block_size = kInitialBlock;
    o.start_block_size = 64 << 10;
    o.max_block_size = 1 << 20;
    return o;
  }
  std::unique_ptr<char[]> initial_block_;  // before arena_: outlives it
  google::protobuf::Arena arena_;
  Response* message_ = nullptr;
};

// The exchange over a fresh bus, PDP, audit log and store, served on a
// loopback port (plaintext; callers are the reader principal).
class ExchangeStack {
 public:
  static absl::StatusOr<std::unique_ptr<ExchangeStack>> Start(BenchContext& ctx,
                                                              std::string_view name,
                                                              const IngestOptions* ingest) {
    auto s = std::unique_ptr<ExchangeStack>(new ExchangeStack());
    absl::StatusOr<std::unique_ptr<ScopedBus>> bus = ScopedBus::Open(ctx, name);
    if (!bus.ok()) return bus.status();
    s->bus_ = *std::move(bus);
    absl::StatusOr<std::string> dir = ctx.NewDir(absl::StrCat(std::string(name), "-exchange"));
    if (!dir.ok()) return dir.status();
    s->dir_ = *dir;
    s->ctx_ = &ctx;
    auto audit = AuditLog::Open({.dir = *dir + "/audit", .node = "bench"});
    if (!audit.ok()) return audit.status();
    s->audit_ = *std::move(audit);
    s->node_ = Principal::Node("bench.city", "bench");
    auto pdp = PolicyDecisionPoint::Create(
        {.audit = s->audit_.get(), .node = s->node_, .node_name = "bench"});
    if (!pdp.ok()) return pdp.status();
    s->pdp_ = *std::move(pdp);
    auto loaded = s->pdp_->Load(s->node_, {{.name = "bench.yaml", .content = kPolicy}},
                                {.replace_all = true});
    if (!loaded.ok()) return loaded.status();
    auto store = OpenSqliteStateStore({.path = *dir + "/entities.db"});
    if (!store.ok()) return store.status();
    s->store_ = *std::move(store);
    s->auditor_ = std::make_unique<DecisionAuditor>(s->audit_.get(), Clock::Real());
    s->appliers_ = std::make_unique<RecipientAppliers>(std::string(32, 'k'));
    s->deps_ = ExchangeDeps{.bus = s->bus_->bus(),
                            .pdp = s->pdp_.get(),
                            .audit = s->audit_.get(),
                            .store = s->store_.get(),
                            .clock = Clock::Real(),
                            .node = s->node_,
                            .resolver = [](grpc::ServerContextBase*)
                                -> absl::StatusOr<Principal> { return Reader(); },
                            .auditor = s->auditor_.get(),
                            .appliers = s->appliers_.get()};
    if (ingest != nullptr) {
      s->ingester_ =
          std::make_unique<Ingester>(s->bus_->bus(), s->store_.get(), s->node_, *ingest);
      if (absl::Status st = s->ingester_->Start(); !st.ok()) return st;
    }
    s->service_ = std::make_unique<ExchangeServiceImpl>(&s->deps_);
    s->service_->Start();
    s->bus_service_ = std::make_unique<BusServiceImpl>(
        s->bus_->bus(),
        [](grpc::ServerContext*) -> absl::StatusOr<Principal> { return BenchPrincipal(); });
    grpc::ServerBuilder builder;
    int port = 0;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
    builder.RegisterService(s->service_.get());
    builder.RegisterService(s->bus_service_.get());
    builder.SetSyncServerOption(grpc::ServerBuilder::SyncServerOption::MAX_POLLERS, 4);
    s->server_ = builder.BuildAndStart();
    if (s->server_ == nullptr || port == 0) {
      return absl::UnavailableError("could not start the gRPC server on 127.0.0.1:0");
    }
    s->address_ = absl::StrCat("127.0.0.1:", port);
    return s;
  }

  ~ExchangeStack() {
    if (service_ != nullptr) service_->BeginShutdown();
    if (server_ != nullptr) {
      server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(5));
    }
    if (ingester_ != nullptr) ingester_->Stop();
    if (service_ != nullptr) service_->Stop();
    server_.reset();
    service_.reset();
    auditor_.reset();
    if (audit_ != nullptr) (void)audit_->Close();
    store_.reset();
    pdp_.reset();
    bus_.reset();
    if (ctx_ != nullptr && !dir_.empty()) ctx_->RemoveDir(dir_);
  }

  // A new channel (own connection) to the server.
  std::shared_ptr<grpc::Channel> NewChannel() const { return NewChannelTo(address_); }
  // A new channel to `address`, as the benchmark clients make them.
  static std::shared_ptr<grpc::Channel> NewChannelTo(const std::string& address) {
    grpc::ChannelArguments args;
    args.SetInt("grpc.use_local_subchannel_pool", 1);
    args.SetInt(GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH, 64 << 20);
    // gRPC's transparent retries are on by default and keep a copy of every
    // call's sent messages, in case a retry needs them; a client that does
    // not retry turns them off (docs/operations.md), which saves about 2 us
    // of client CPU per Query here.
    args.SetInt(GRPC_ARG_ENABLE_RETRIES, 0);
    return grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(), args);
  }

  Bus* bus() const { return bus_->bus(); }
  StateStore* store() const { return store_.get(); }
  Ingester* ingester() const { return ingester_.get(); }
  PolicyDecisionPoint* pdp() const { return pdp_.get(); }
  ExchangeServiceImpl* service() const { return service_.get(); }

 private:
  ExchangeStack() = default;
  BenchContext* ctx_ = nullptr;
  std::string dir_;
  std::string address_;
  Principal node_;
  std::unique_ptr<ScopedBus> bus_;
  std::unique_ptr<AuditLog> audit_;
  std::unique_ptr<PolicyDecisionPoint> pdp_;
  std::unique_ptr<StateStore> store_;
  std::unique_ptr<DecisionAuditor> auditor_;
  std::unique_ptr<RecipientAppliers> appliers_;
  ExchangeDeps deps_;
  std::unique_ptr<Ingester> ingester_;
  std::unique_ptr<ExchangeServiceImpl> service_;
  std::unique_ptr<BusServiceImpl> bus_service_;
  std::unique_ptr<grpc::Server> server_;
};

// What DriveQueries measured over its window.
struct QueryLoad {
  LatencySamples* latency = nullptr;  // filled with each call's latency
  uint64_t done = 0;                  // calls answered inside the window
  int64_t nanos = 0;                  // the window
  double cpu_s = 0;                   // the process's CPU in the window
  double client_cpu_s = 0;            // the client threads' CPU in the window
  double entities_per_response = 0;
};

constexpr int kClientThreads = 2;

// Keeps `in_flight` Query calls outstanding from each of kClientThreads
// client threads, on channels from `new_channel`, for half a second of
// warm-up and then `run`; every response is checked (see below).
absl::StatusOr<QueryLoad> DriveQueries(
    const std::function<std::shared_ptr<grpc::Channel>()>& new_channel, int in_flight,
    absl::Duration run, LatencySamples* latency_samples) {
  QueryLoad load{.latency = latency_samples};
  // The client side shares the machine with the server, so it is kept as
  // cheap as a real client can be: kClientThreads threads, each with its own
  // channel (connection) and completion queue, keeping `in_flight` async calls
  // outstanding. Sync stubs would cost a thread wake-up, a per-call
  // completion queue and a context switch per request, which on a small
  // machine is CPU the server does not get. Every response is still parsed
  // in full and checked (entities present, redaction applied).
  std::atomic<bool> stop{false};
  std::atomic<uint64_t> ok{0}, failed{0}, entities_seen{0};
  std::atomic<bool> redacted{true};
  LatencySamples& latency = *load.latency;
  std::string first_error;
  absl::Mutex mu;
  // Client threads' CPU inside the measured window, in nanoseconds.
  std::atomic<bool> measuring{false};
  std::atomic<int64_t> client_cpu_ns{0};
  std::vector<std::thread> threads;
  for (int c = 0; c < kClientThreads; ++c) {
    threads.emplace_back([&] {
      double cpu_at_start = -1;
      auto channel = new_channel();
      channel->WaitForConnected(std::chrono::system_clock::now() + std::chrono::seconds(30));
      auto stub = exchange::v1::ExchangeService::NewStub(channel);
      grpc::CompletionQueue cq;
      struct Call {
        exchange::v1::QueryRequest req;
        std::string token;  // each slot walks the pages, wrapping around
        std::unique_ptr<grpc::ClientContext> context;
        std::unique_ptr<grpc::ClientAsyncResponseReader<exchange::v1::QueryResponse>> reader;
        // The response, parsed in full on an arena reset before each call
        // (as a client reading many responses keeps allocation down).
        ResponseArena<exchange::v1::QueryResponse> arena;
        exchange::v1::QueryResponse* resp = nullptr;
        grpc::Status status;
        int64_t start = 0;
      };
      std::vector<Call> calls(in_flight);
      auto issue = [&](Call& call) {
        call.req.mutable_filter()->set_type(kType);
        call.req.set_purpose(kPurpose);
        call.req.set_page_size(10);
        call.req.set_page_token(call.token);
        call.context = std::make_unique<grpc::ClientContext>();
        call.context->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
        call.reader.reset();  // before the arena its response lives on is reset
        call.resp = call.arena.Next();
        call.start = NowNanos();
        call.reader = stub->AsyncQuery(call.context.get(), call.req, &cq);
        call.reader->Finish(call.resp, &call.status, &call);
      };
      for (Call& call : calls) issue(call);
      int outstanding = in_flight;
      void* tag = nullptr;
      bool event_ok = false;
      while (outstanding > 0 && cq.Next(&tag, &event_ok)) {
        Call& call = *static_cast<Call*>(tag);
        latency.Add(NowNanos() - call.start);
        if (cpu_at_start < 0 && measuring.load(std::memory_order_relaxed)) {
          cpu_at_start = ThreadCpuSeconds();
        } else if (cpu_at_start >= 0 && !measuring.load(std::memory_order_relaxed)) {
          client_cpu_ns.fetch_add(
              static_cast<int64_t>((ThreadCpuSeconds() - cpu_at_start) * 1e9));
          cpu_at_start = -2;  // counted
        }
        if (!event_ok || !call.status.ok()) {
          failed.fetch_add(1);
          absl::MutexLock lock(&mu);
          if (first_error.empty()) {
            first_error = event_ok ? call.status.error_message() : "completion queue failure";
          }
        } else {
          ok.fetch_add(1, std::memory_order_relaxed);
          const exchange::v1::QueryResponse& resp = *call.resp;
          entities_seen.fetch_add(resp.entities_size(), std::memory_order_relaxed);
          // Every entity checked: of the type asked, its attributes there
          // but hospital_name, and the redaction listed.
          for (const auto& e : resp.entities()) {
            if (e.type() != kType || e.id().empty() || e.attributes().contains("hospital_name") ||
                !e.attributes().contains("hospital_id") || !e.attributes().contains("total_beds") ||
                e.obligations_size() != 1) {
              redacted.store(false);
            }
          }
          if (resp.entities_size() == 0) redacted.store(false);
          call.token = resp.next_page_token();
        }
        if (stop.load(std::memory_order_relaxed)) {
          --outstanding;
        } else {
          issue(call);
        }
      }
      cq.Shutdown();
      while (cq.Next(&tag, &event_ok)) {
      }
    });
  }
  // Warm-up excluded: count from half a second in.
  absl::SleepFor(absl::Milliseconds(500));
  measuring.store(true);
  const uint64_t ok0 = ok.load();
  const double cpu0 = ProcessCpuSeconds();
  const int64_t start = NowNanos();
  absl::SleepFor(run);
  const uint64_t done = ok.load() - ok0;
  const double cpu = ProcessCpuSeconds() - cpu0;
  const int64_t nanos = NowNanos() - start;
  measuring.store(false);
  absl::SleepFor(absl::Milliseconds(50));  // client threads take their CPU reading
  stop.store(true);
  for (auto& t : threads) t.join();
  load.done = done;
  load.nanos = nanos;
  load.cpu_s = cpu;
  load.client_cpu_s = static_cast<double>(client_cpu_ns.load()) / 1e9;
  load.entities_per_response =
      ok.load() == 0 ? 0 : static_cast<double>(entities_seen.load()) / static_cast<double>(ok.load());
  if (ok.load() == 0) return absl::InternalError("no Query succeeded: " + first_error);
  if (failed.load() > 0) return absl::InternalError("Query failed: " + first_error);
  if (!redacted.load()) {
    return absl::InternalError(
        "a response failed the check (empty page, wrong type, hospital_name not redacted, "
        "attributes or obligation missing)");
  }
  return load;
}

// CPU per request of a load: all, the client threads', the rest (the
// server's), under `prefix`.
void AddQueryCpu(const QueryLoad& load, const std::string& prefix, Result* r) {
  if (load.done == 0) return;
  const double n = static_cast<double>(load.done);
  r->extra[prefix + "cpu_us_per_request"] = Round(load.cpu_s * 1e6 / n, 1);
  r->extra[prefix + "client_cpu_us_per_request"] = Round(load.client_cpu_s * 1e6 / n, 1);
  r->extra[prefix + "server_cpu_us_per_request"] =
      Round((load.cpu_s - load.client_cpu_s) * 1e6 / n, 1);
  r->extra[prefix + "cores_used"] = Round(load.cpu_s * 1e9 / static_cast<double>(load.nanos), 2);
}

// Query answered with the same bytes every time: one real response of the
// exchange, handed to gRPC without a copy. The request is not read.
class CannedQueryService final
    : public exchange::v1::ExchangeService::WithRawCallbackMethod_Query<
          exchange::v1::ExchangeService::Service> {
 public:
  explicit CannedQueryService(std::string bytes) : bytes_(std::move(bytes)) {}
  grpc::ServerUnaryReactor* Query(grpc::CallbackServerContext* context,
                                  const grpc::ByteBuffer* /*request*/,
                                  grpc::ByteBuffer* response) override {
    grpc::Slice slice(bytes_.data(), bytes_.size(), grpc::Slice::STATIC_SLICE);
    grpc::ByteBuffer buffer(&slice, 1);
    response->Swap(&buffer);
    grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
    reactor->Finish(grpc::Status::OK);
    return reactor;
  }

 private:
  const std::string bytes_;
};

// The bytes of one real response of `stack`'s Query (the first page).
absl::StatusOr<std::string> RealQueryResponse(const ExchangeStack& stack) {
  exchange::v1::QueryRequest req;
  req.mutable_filter()->set_type(kType);
  req.set_purpose(kPurpose);
  req.set_page_size(10);
  exchange::v1::QueryResponse real;
  auto stub = exchange::v1::ExchangeService::NewStub(stack.NewChannel());
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
  grpc::Status status = stub->Query(&context, req, &real);
  if (!status.ok()) {
    return absl::InternalError("peer: the exchange's response to copy: " + status.error_message());
  }
  return real.SerializeAsString();
}

// The peer of exchange.query*: `bytes` served canned on a loopback port,
// driven like the exchange.
absl::StatusOr<QueryLoad> DriveCannedPeer(std::string bytes, int in_flight, absl::Duration run) {
  CannedQueryService canned(std::move(bytes));
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
  builder.RegisterService(&canned);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || port == 0) {
    return absl::UnavailableError("peer: could not start a gRPC server on 127.0.0.1:0");
  }
  const std::string address = absl::StrCat("127.0.0.1:", port);
  LatencySamples latency(1 << 20);
  absl::StatusOr<QueryLoad> load = DriveQueries(
      [&] { return ExchangeStack::NewChannelTo(address); }, in_flight, run, &latency);
  server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(5));
  return load;
}

// `in_flight` async calls outstanding per client thread. The peer (when
// peers run): the same client against a gRPC server whose Query answers every
// call with the bytes of one real exchange response, without reading the
// request or doing any work: what gRPC and the client cost on this machine,
// in the same run, i.e. the ceiling for any server answering these pages.
absl::StatusOr<Result> RunQueryWith(BenchContext& ctx, const int in_flight) {
  const BenchOptions& o = ctx.options();
  auto stack = ExchangeStack::Start(ctx, "exchange-query", nullptr);
  if (!stack.ok()) return stack.status();
  // 1,000 entities in the store.
  constexpr int kEntities = 1000;
  std::vector<exchange::v1::Entity> entities;
  for (int i = 0; i < kEntities; ++i) {
    auto e = BedEvent("health.ex.beds", absl::StrFormat("bed-%04d", i), i % 40);
    if (!e.ok()) return e.status();
    auto entity = EntityFromEvent(*e);
    if (!entity.ok()) return entity.status();
    entities.push_back(*std::move(entity));
  }
  if (auto s = (*stack)->store()->UpsertBatch(std::move(entities)); !s.ok()) return s.status();

  const absl::Duration run = std::min(o.max_time, absl::Seconds(5));
  LatencySamples latency(1 << 20);
  absl::StatusOr<QueryLoad> load =
      DriveQueries([&] { return (*stack)->NewChannel(); }, in_flight, run, &latency);
  if (!load.ok()) return load.status();
  const uint64_t done = load->done;
  Result r;
  r.value = Round(Rate(done, load->nanos), 0);
  latency.Finish();
  r.extra["page_size"] = 10;
  r.extra["entities_per_response"] = Round(load->entities_per_response, 2);
  r.extra["client_threads"] = kClientThreads;
  r.extra["in_flight"] = kClientThreads * in_flight;
  r.extra["store_entities"] = kEntities;
  r.extra["obligations"] = "redact hospital_name";
  r.extra["client"] =
      "async stubs, gRPC retries off; every response parsed in full (arena per call) and "
      "every entity checked: type, id, hospital_name absent, hospital_id and total_beds "
      "present, obligation listed";
  latency.AddTo(r.extra);
  // CPU per request: unlike requests/s, it does not depend on what else the
  // machine runs. The server's share is the process's CPU minus the client
  // threads' (it includes the store's and gRPC's background threads).
  AddQueryCpu(*load, "", &r);
  r.extra["seconds"] = Round(static_cast<double>(load->nanos) / 1e9, 3);
  if (o.peers) {
    // The exchange's stack (its server, store, auditor and their threads)
    // is gone before the peer runs.
    absl::StatusOr<std::string> bytes = RealQueryResponse(**stack);
    stack->reset();
    absl::StatusOr<QueryLoad> peer =
        bytes.ok() ? DriveCannedPeer(*std::move(bytes), in_flight, run)
                   : absl::StatusOr<QueryLoad>(bytes.status());
    r.SetPeer("gRPC unary answering canned bytes (no work)",
              peer.ok() ? absl::StatusOr<double>(Round(Rate(peer->done, peer->nanos), 0))
                        : absl::StatusOr<double>(peer.status()));
    if (peer.ok()) {
      r.extra["ratio"] = Round(Rate(done, load->nanos) / Rate(peer->done, peer->nanos), 3);
      AddQueryCpu(*peer, "peer_", &r);
    }
  }
  return r;
}

absl::StatusOr<Result> RunSubscribe(BenchContext& ctx) {
  const BenchOptions& o = ctx.options();
  auto stack = ExchangeStack::Start(ctx, "exchange-subscribe", nullptr);
  if (!stack.ok()) return stack.status();
  Bus* bus = (*stack)->bus();
  auto stream = bus->CreateStream(BenchPrincipal(), {.name = "beds",
                                                     .subjects = {"health.ex.>"},
                                                     .durability = Durability::kNone});
  if (!stream.ok()) return stream.status();
  auto event = BedEvent("health.ex.beds.h1", "bed-0001", 7);
  if (!event.ok()) return event.status();
  auto stored = Prefill(ctx, *bus, *event, std::min<uint64_t>(o.events, 1'000'000));
  if (!stored.ok()) return stored.status();
  auto channel = (*stack)->NewChannel();

  // The exchange: replay from the start, decided and redacted per event.
  // CPU per event of one run: the whole process's, and the reading client
  // thread's (the rest is the server: handler, bus, gRPC).
  struct Cpu {
    double process_s = 0;
    double client_s = 0;
    uint64_t events = 0;
  };
  Cpu exchange_cpu, bus_cpu;  // of the faster run of each
  double exchange_best = 0, bus_best = 0;
  auto exchange_rate = [&]() -> absl::StatusOr<double> {
    auto stub = exchange::v1::ExchangeService::NewStub(channel);
    exchange::v1::SubscribeRequest req;
    req.set_subject_pattern("health.ex.>");
    req.set_purpose(kPurpose);
    req.mutable_start_time()->set_seconds(1);
    req.set_max_batch(1024);
    grpc::ClientContext call;
    call.set_deadline(std::chrono::system_clock::now() +
                      absl::ToChronoSeconds(o.max_time + absl::Seconds(120)));
    const int64_t start = NowNanos();
    const double cpu0 = ProcessCpuSeconds(), client0 = ThreadCpuSeconds();
    auto reader = stub->Subscribe(&call, req);
    ResponseArena<exchange::v1::SubscribeResponse> resp;
    uint64_t delivered = 0;
    bool redacted = true;
    while (delivered < *stored && reader->Read(resp.Next())) {
      delivered += resp->deliveries_size();
      if (resp->deliveries_size() > 0) {
        health::v1::BedAvailability b;
        resp->deliveries(0).event().proto_data().UnpackTo(&b);
        redacted = redacted && b.hospital_name().empty();
      }
    }
    const int64_t nanos = NowNanos() - start;
    const Cpu cpu{ProcessCpuSeconds() - cpu0, ThreadCpuSeconds() - client0, delivered};
    call.TryCancel();
    grpc::Status s = reader->Finish();
    if (exchange_cpu.events == 0 || Rate(delivered, nanos) > exchange_best) {
      exchange_cpu = cpu;
      exchange_best = Rate(delivered, nanos);
    }
    if (delivered < *stored) {
      return absl::UnavailableError(absl::StrCat("exchange Subscribe delivered ", delivered,
                                                 " of ", *stored, ": ", s.error_message()));
    }
    if (!redacted) return absl::InternalError("hospital_name was not redacted");
    return Rate(delivered, nanos);
  };
  // The peer: plain bus gRPC Subscribe of the same stream.
  auto bus_rate = [&]() -> absl::StatusOr<double> {
    auto stub = bus::v1::BusService::NewStub(channel);
    bus::v1::SubscribeRequest req;
    req.set_stream("beds");
    req.mutable_start()->set_kind(bus::v1::StartPosition::KIND_EARLIEST);
    req.set_max_batch(1024);
    grpc::ClientContext call;
    call.set_deadline(std::chrono::system_clock::now() +
                      absl::ToChronoSeconds(o.max_time + absl::Seconds(120)));
    const int64_t start = NowNanos();
    const double cpu0 = ProcessCpuSeconds(), client0 = ThreadCpuSeconds();
    auto reader = stub->Subscribe(&call, req);
    ResponseArena<bus::v1::SubscribeResponse> resp;
    uint64_t delivered = 0;
    while (delivered < *stored && reader->Read(resp.Next())) delivered += resp->deliveries_size();
    const int64_t nanos = NowNanos() - start;
    const Cpu cpu{ProcessCpuSeconds() - cpu0, ThreadCpuSeconds() - client0, delivered};
    if (bus_cpu.events == 0 || Rate(delivered, nanos) > bus_best) {
      bus_cpu = cpu;
      bus_best = Rate(delivered, nanos);
    }
    call.TryCancel();
    grpc::Status s = reader->Finish();
    if (delivered < *stored) {
      return absl::UnavailableError(absl::StrCat("bus Subscribe delivered ", delivered, " of ",
                                                 *stored, ": ", s.error_message()));
    }
    return Rate(delivered, nanos);
  };
  // Alternated, best of two each: the machine's load moves during a run, and
  // the ratio should compare like with like.
  absl::StatusOr<double> peer = bus_rate();
  absl::StatusOr<double> mine = exchange_rate();
  if (!mine.ok()) return mine.status();
  absl::StatusOr<double> peer2 = bus_rate();
  absl::StatusOr<double> mine2 = exchange_rate();
  if (!mine2.ok()) return mine2.status();
  mine = std::max(*mine, *mine2);
  if (peer.ok() && peer2.ok()) peer = std::max(*peer, *peer2);
  Result r;
  r.value = Round(*mine, 0);
  r.SetPeer("cityos bus gRPC Subscribe",
            peer.ok() ? absl::StatusOr<double>(Round(*peer, 0)) : peer);
  r.extra["mode"] = "replay from earliest; per-event decision (history) + redaction";
  r.extra["runs"] = "best of 2 each, alternated";
  r.extra["events"] = *stored;
  r.extra["max_batch"] = 1024;
  r.extra["event_bytes"] = event->ByteSizeLong();
  // Both clients parse every response in full with the public types
  // (bus.v1.SubscribeResponse / exchange.v1.SubscribeResponse: event,
  // publish time, decision, resume token), each on an arena reset per
  // response, in this process.
  r.extra["client"] = "public stubs, every response parsed in full on a per-response arena";
  auto per_event = [](double seconds, uint64_t events) {
    return events > 0 ? Round(seconds * 1e6 / static_cast<double>(events), 2) : 0.0;
  };
  r.extra["cpu_us_per_event"] = per_event(exchange_cpu.process_s, exchange_cpu.events);
  r.extra["client_cpu_us_per_event"] = per_event(exchange_cpu.client_s, exchange_cpu.events);
  r.extra["server_cpu_us_per_event"] =
      per_event(exchange_cpu.process_s - exchange_cpu.client_s, exchange_cpu.events);
  r.extra["peer_cpu_us_per_event"] = per_event(bus_cpu.process_s, bus_cpu.events);
  r.extra["peer_client_cpu_us_per_event"] = per_event(bus_cpu.client_s, bus_cpu.events);
  r.extra["peer_server_cpu_us_per_event"] =
      per_event(bus_cpu.process_s - bus_cpu.client_s, bus_cpu.events);
  // How the exchange built its deliveries: from the stored bytes (envelope
  // read off the wire, redaction applied on the wire, event bytes forwarded)
  // or from the parsed event.
  ExchangeServiceImpl* service = (*stack)->service();
  // The counts are added when a call ends: wait for the cancelled calls.
  const absl::Time calls_end = absl::Now() + absl::Seconds(5);
  while (service->hub().open() > 0 && absl::Now() < calls_end) {
    absl::SleepFor(absl::Milliseconds(5));
  }
  r.extra["wire_deliveries"] = service->hub().wire_deliveries();
  r.extra["parsed_deliveries"] = service->hub().parsed_deliveries();
  return r;
}

absl::StatusOr<Result> RunEntityUpdates(BenchContext& ctx) {
  const BenchOptions& o = ctx.options();
  IngestOptions ingest{.subjects = {"health.ent.>"}, .max_batch = 2048, .queue_depth = 1 << 21};
  auto stack = ExchangeStack::Start(ctx, "exchange-entities", &ingest);
  if (!stack.ok()) return stack.status();
  constexpr int kEntities = 10000;
  constexpr int kSubscriptions = 100;
  std::vector<std::shared_ptr<const Event>> events;
  events.reserve(kEntities);
  for (int i = 0; i < kEntities; ++i) {
    auto e = BedEvent(absl::StrFormat("health.ent.beds.z%d", i % 16), absl::StrFormat("ent-%05d", i),
                      i % 40);
    if (!e.ok()) return e.status();
    events.push_back(std::make_shared<const Event>(*std::move(e)));
  }

  // 100 live subscriptions, each filtered to one entity.
  std::atomic<uint64_t> delivered{0};
  std::atomic<int> ready{0};
  std::vector<std::unique_ptr<grpc::ClientContext>> calls;
  std::vector<std::thread> readers;
  auto channel = (*stack)->NewChannel();
  auto stub = exchange::v1::ExchangeService::NewStub(channel);
  for (int i = 0; i < kSubscriptions; ++i) calls.push_back(std::make_unique<grpc::ClientContext>());
  for (int i = 0; i < kSubscriptions; ++i) {
    readers.emplace_back([&, i] {
      exchange::v1::SubscribeRequest req;
      req.set_subject_pattern("health.ent.>");
      req.set_purpose(kPurpose);
      req.mutable_filter()->set_type(kType);
      req.mutable_filter()->add_ids(absl::StrFormat("ent-%05d", i * (kEntities / kSubscriptions)));
      auto reader = stub->Subscribe(calls[i].get(), req);
      reader->WaitForInitialMetadata();
      ready.fetch_add(1);
      exchange::v1::SubscribeResponse resp;
      while (reader->Read(&resp)) delivered.fetch_add(resp.deliveries_size());
      reader->Finish();
    });
  }
  const absl::Time ready_deadline = absl::Now() + absl::Seconds(60);
  while (ready.load() < kSubscriptions && absl::Now() < ready_deadline) {
    absl::SleepFor(absl::Milliseconds(5));
  }
  if (ready.load() < kSubscriptions) return absl::UnavailableError("subscriptions did not start");

  Bus* bus = (*stack)->bus();
  Ingester* ingester = (*stack)->ingester();
  const uint64_t target = std::min<uint64_t>(o.events, 2'000'000);
  Window window(8);
  std::atomic<uint64_t> acked{0};
  const int64_t start = NowNanos();
  const double cpu_at_start = ProcessCpuSeconds();
  const absl::Time deadline = absl::Now() + o.max_time;
  uint64_t sent = 0;
  size_t next = 0;
  const size_t batch = std::max<size_t>(o.batch, 64);
  // Back-pressure: the publisher keeps at most kMaxBacklog updates ahead of
  // the store. Without it a publisher that outruns the store piles up a
  // backlog (up to --events) whose drain then dominates the figure, with a
  // history table many times larger than a sustained run would write.
  constexpr uint64_t kMaxBacklog = 65536;
  auto ingested = [ingester] {
    return ingester->stored() + ingester->skipped() + ingester->missed() + ingester->failed();
  };
  uint64_t backlog_waits = 0;
  while (sent < target && absl::Now() < deadline) {
    while (sent > ingested() + kMaxBacklog && absl::Now() < deadline) {
      ++backlog_waits;
      absl::SleepFor(absl::Microseconds(500));
    }
    std::vector<std::shared_ptr<const Event>> b;
    b.reserve(batch);
    for (size_t k = 0; k < batch; ++k) b.push_back(events[next++ % events.size()]);
    window.Acquire();
    bus->PublishSharedAsync(BenchPrincipal(), std::move(b),
                            [&, n = batch](absl::StatusOr<std::vector<PublishResult>> r) {
                              if (r.ok()) acked.fetch_add(n);
                              window.Release();
                            });
    sent += batch;
  }
  WaitIdleOrDie(window, "entity updates");
  // Every update published is stored (or counted as missed).
  const absl::Time drain = absl::Now() + absl::Seconds(120);
  while (ingested() < acked.load() && absl::Now() < drain) {
    absl::SleepFor(absl::Milliseconds(2));
  }
  const int64_t nanos = NowNanos() - start;
  const double cpu = ProcessCpuSeconds() - cpu_at_start;
  const uint64_t stored = ingester->stored();
  absl::SleepFor(absl::Milliseconds(200));  // let the last deliveries arrive
  for (auto& c : calls) c->TryCancel();
  for (auto& t : readers) t.join();
  auto count = (*stack)->store()->CountEntities();
  Result r;
  r.value = Round(Rate(stored, nanos), 0);
  r.extra["published"] = acked.load();
  r.extra["stored"] = stored;
  r.extra["missed"] = ingester->missed();
  r.extra["entities"] = count.ok() ? *count : 0;
  r.extra["subscriptions"] = kSubscriptions;
  r.extra["delivered_to_subscriptions"] = delivered.load();
  r.extra["expected_deliveries"] = stored / (kEntities / kSubscriptions);
  r.extra["store_batch"] = ingest.max_batch;
  r.extra["max_backlog"] = kMaxBacklog;
  r.extra["backlog_waits"] = backlog_waits;
  // The whole process's CPU (publisher, bus fan-out, ingest, store, the 100
  // subscriptions and their clients) per stored update: unlike updates/s it
  // does not depend on what else runs on the machine.
  r.extra["cpu_us_per_update"] =
      stored > 0 ? Round(cpu * 1e6 / static_cast<double>(stored), 1) : 0.0;
  r.extra["cores_used"] = Round(cpu * 1e9 / static_cast<double>(nanos), 2);
  r.extra["reference"] = "Orion-LD ~1,800 updates/s per broker CPU";
  r.extra["seconds"] = Round(static_cast<double>(nanos) / 1e9, 3);
  return r;
}

absl::StatusOr<Result> RunQuery(BenchContext& ctx) { return RunQueryWith(ctx, 4); }
absl::StatusOr<Result> RunQueryDeep(BenchContext& ctx) { return RunQueryWith(ctx, 16); }

}  // namespace

absl::Status RegisterExchangeScenarios(ScenarioRegistry& registry) {
  absl::Status s = registry.Add(
      {.name = "exchange.query",
       .unit = "requests/s",
       .description = "exchange Query over loopback gRPC, pages of 10, per-entity policy + "
                      "one redaction, 8 calls in flight from 2 async client threads (peer: "
                      "the same client against a server answering canned bytes)",
       .run = RunQuery});
  if (!s.ok()) return s;
  s = registry.Add({.name = "exchange.query.deep",
                    .unit = "requests/s",
                    .description = "exchange.query with 32 calls in flight (16 per client thread): "
                                   "what the server answers when the client keeps it busy "
                                   "(same peer)",
                    .run = RunQueryDeep});
  if (!s.ok()) return s;
  s = registry.Add({.name = "exchange.subscribe",
                    .unit = "events/s",
                    .description = "exchange Subscribe over loopback gRPC, per-event policy + "
                                   "one redaction (peer: plain bus gRPC Subscribe)",
                    .run = RunSubscribe});
  if (!s.ok()) return s;
  return registry.Add({.name = "exchange.entity_updates",
                       .unit = "updates/s",
                       .description = "bus events ingested into the entity store with 100 live "
                                      "filtered exchange subscriptions",
                       .run = RunEntityUpdates});
}

}  // namespace cityos::bench
