#include "exchange_service.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "cityos/disaster/v1/disaster.pb.h"
#include "cityos/event.h"
#include "cityos/grpc_util.h"
#include "cityos/logging.h"
#include "cityos/observability.h"
#include "cityos/proto_time.h"
#include "cityos/subject.h"
#include "cityos/trace.h"
#include "cityos/wire.h"
#include "event_wire.h"
#include "google/protobuf/descriptor.h"

namespace cityos {
namespace {

using exchange::v1::QueryRequest;
using exchange::v1::QueryResponse;
using exchange::v1::GetEntityRequest;
using exchange::v1::GetEntityResponse;
using exchange::v1::QueryHistoryRequest;
using exchange::v1::QueryHistoryResponse;
using exchange::v1::AggregateRequest;
using exchange::v1::AggregateResponse;
using exchange::v1::AggregateGroup;
using exchange::v1::SubscribeRequest;
using exchange::v1::SubscribeResponse;
using exchange::v1::ExplainRequest;
using exchange::v1::ExplainResponse;
using exchange::v1::LoadPoliciesRequest;
using exchange::v1::LoadPoliciesResponse;
using exchange::v1::ListPoliciesRequest;
using exchange::v1::ListPoliciesResponse;
using exchange::v1::ValidatePoliciesRequest;
using exchange::v1::ValidatePoliciesResponse;
using exchange::v1::DeclareEmergencyRequest;
using exchange::v1::DeclareEmergencyResponse;
using exchange::v1::EndEmergencyRequest;
using exchange::v1::EndEmergencyResponse;
using exchange::v1::ListEmergenciesRequest;
using exchange::v1::ListEmergenciesResponse;
using exchange::v1::QueryAuditRequest;
using exchange::v1::QueryAuditResponse;
using exchange::v1::VerifyAuditRequest;
using exchange::v1::VerifyAuditResponse;
using exchange::v1::Entity;
using exchange::v1::EntityFilter;
using exchange::v1::Value;
using exchange::v1::Obligation;
using exchange::v1::PolicyDocument;
using exchange::v1::PolicyError;
using exchange::v1::Emergency;
using exchange::v1::Metric;
using exchange::v1::Resource;
using exchange::v1::AGGREGATE_FUNCTION_UNSPECIFIED;
using exchange::v1::AGGREGATE_FUNCTION_SUM;
using exchange::v1::AGGREGATE_FUNCTION_MEAN;
using exchange::v1::AGGREGATE_FUNCTION_MIN;
using exchange::v1::AGGREGATE_FUNCTION_MAX;
using exchange::v1::AggregateFunction_IsValid;
using exchange::v1::OBLIGATION_KIND_AGGREGATE_ONLY;
using exchange::v1::OBLIGATION_KIND_COARSEN_LOCATION;
using exchange::v1::SEVERITY_NOTICE;

constexpr char kPolicyAdmin[] = "policy-admin";
constexpr char kAuditor[] = "auditor";
constexpr char kDisasterAuthority[] = "disaster-authority";

grpc::Status Invalid(std::string message) {
  return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, std::move(message));
}
grpc::Status Denied(std::string message) {
  return grpc::Status(grpc::StatusCode::PERMISSION_DENIED, std::move(message));
}

// `*out` = "type/id" (reusing its capacity, for a loop over entities).
void SetEntityKey(std::string_view type, std::string_view id, std::string* out) {
  out->assign(type).push_back('/');
  out->append(id);
}

std::string EntityKey(std::string_view type, std::string_view id) {
  std::string k;
  SetEntityKey(type, id, &k);
  return k;
}

// The NOT_FOUND of GetEntity / QueryHistory: the same text whether the
// entity is missing or the caller may not read it.
grpc::Status EntityNotFound(std::string_view type, std::string_view id) {
  return grpc::Status(grpc::StatusCode::NOT_FOUND,
                      absl::StrFormat("no entity %s/%s", type, id));
}

// An attribute path: dot-separated, non-empty names.
absl::Status CheckPath(std::string_view field, std::string_view path) {
  if (path.empty()) return absl::InvalidArgumentError(absl::StrFormat("%s: empty path", field));
  size_t start = 0;
  while (true) {
    size_t dot = path.find('.', start);
    size_t end = dot == std::string_view::npos ? path.size() : dot;
    if (end == start) {
      return absl::InvalidArgumentError(
          absl::StrFormat("%s: \"%s\" has an empty segment", field, path));
    }
    if (dot == std::string_view::npos) return absl::OkStatus();
    start = dot + 1;
  }
}

absl::StatusOr<std::pair<absl::Time, absl::Time>> RangeFromProto(
    const common::v1::TimeRange& range, std::string_view field) {
  absl::Time from = absl::InfinitePast(), to = absl::InfiniteFuture();
  if (range.has_start()) {
    auto t = TimestampFromProto(range.start(), absl::StrFormat("%s.start", field));
    if (!t.ok()) return t.status();
    from = *t;
  }
  if (range.has_end()) {
    auto t = TimestampFromProto(range.end(), absl::StrFormat("%s.end", field));
    if (!t.ok()) return t.status();
    to = *t;
  }
  if (to < from) {
    return absl::InvalidArgumentError(absl::StrFormat("%s: end is before start", field));
  }
  return std::make_pair(from, to);
}

// Page tokens bind the purpose and projection of the query that made them.
std::string TokenContext(std::string_view purpose,
                         const google::protobuf::RepeatedPtrField<std::string>& projection) {
  return absl::StrFormat("%s\x1f%s", purpose, absl::StrJoin(projection, ","));
}

// Numeric value of an attribute, if it is a number.
std::optional<double> Number(const Value* v) {
  if (v == nullptr) return std::nullopt;
  if (v->kind_case() == Value::kIntValue) return static_cast<double>(v->int_value());
  if (v->kind_case() == Value::kDoubleValue) return v->double_value();
  return std::nullopt;
}

// The grid cell an obligation imposes on the entity location, 0 for none.
double CoarsenCell(const Decision& d) {
  double cell = 0;
  for (const Obligation& o : d.obligations) {
    if (o.kind() != OBLIGATION_KIND_COARSEN_LOCATION) continue;
    bool location = o.field_paths().empty();
    for (const std::string& p : o.field_paths()) location = location || p == "location";
    if (location) cell = std::max(cell, o.grid_cell_m());
  }
  return cell;
}

uint32_t MinGroupSize(const Decision& d) {
  uint32_t n = 1;
  for (const Obligation& o : d.obligations) {
    if (o.kind() == OBLIGATION_KIND_AGGREGATE_ONLY) n = std::max(n, o.min_group_size());
  }
  return n;
}

bool Overlaps(const common::v1::TimeRange& window, absl::Time from, absl::Time to) {
  absl::Time start = window.has_start() ? ToAbslTime(window.start()) : absl::InfinitePast();
  absl::Time end = window.has_end() ? ToAbslTime(window.end()) : absl::InfiniteFuture();
  return start < to && end > from;
}

}  // namespace

namespace {

// Subscribe's responses come serialized from the hub: sent as they are.
class StreamerSink final : public SubscribeSink {
 public:
  explicit StreamerSink(grpc::ServerSplitStreamer<SubscribeRequest, grpc::ByteBuffer>* stream)
      : stream_(stream) {}
  void SendInitialMetadata() override { stream_->SendInitialMetadata(); }
  bool Write(std::string_view response) override {
    grpc::Slice slice(response.data(), response.size());
    grpc::ByteBuffer buffer(&slice, 1);
    return stream_->Write(buffer);
  }

 private:
  grpc::ServerSplitStreamer<SubscribeRequest, grpc::ByteBuffer>* const stream_;
};

// The same through the generated (typed) writer: each response parsed back.
// Only used if the service descriptor has no server-streaming Subscribe.
class ProtoWriterSink final : public SubscribeSink {
 public:
  explicit ProtoWriterSink(grpc::ServerWriter<SubscribeResponse>* writer) : writer_(writer) {}
  void SendInitialMetadata() override { writer_->SendInitialMetadata(); }
  bool Write(std::string_view response) override {
    if (!parsed_.ParseFromArray(response.data(), static_cast<int>(response.size()))) return false;
    return writer_->Write(parsed_);
  }

 private:
  grpc::ServerWriter<SubscribeResponse>* const writer_;
  SubscribeResponse parsed_;
};

// `name`'s index in the service's method table (the generated code numbers
// methods in their declaration order in exchange.proto, as the descriptor
// does), or -1 unless it is there with that shape (unary or server
// streaming, never client streaming).
int ExchangeMethodIndex(const std::string& name, bool server_streaming) {
  const google::protobuf::ServiceDescriptor* service =
      google::protobuf::DescriptorPool::generated_pool()->FindServiceByName(
          "cityos.exchange.v1.ExchangeService");
  const google::protobuf::MethodDescriptor* method =
      service == nullptr ? nullptr : service->FindMethodByName(name);
  if (method == nullptr || method->client_streaming() ||
      method->server_streaming() != server_streaming) {
    return -1;
  }
  return method->index();
}

}  // namespace

ExchangeServiceImpl::ExchangeServiceImpl(const ExchangeDeps* deps, ExchangeServiceOptions options)
    : deps_(deps), options_(options), hub_(deps, options) {
  // Query answers with bytes (grpc::ByteBuffer) built around the entities'
  // stored bytes (QueryToWire), served through gRPC's callback API: the
  // generated callback registration (WithCallbackMethod_Query's) with a byte
  // buffer as the response type, the same wire protocol as the typed method.
  // The sync methods of the service are served alongside (gRPC serves sync
  // and callback methods of one service side by side). The handler runs on
  // gRPC's shared callback executor (its thread pool, sized by gRPC from the
  // core count: 2 threads on 2 cores; not the sync server's worker pool, and
  // not bounded by its thread limits), answers before it returns (the
  // default reactor) and holds that executor thread for the whole call: one
  // page from the store, i.e. the store's fetch rounds until `page_size`
  // visible entities are found. Queries beyond the pool's threads wait for
  // one, and so does other callback work of the process queued on that pool.
  // Its steps are the sync handler's: the caller is
  // resolved from the callback context, the checks, decisions, audit and
  // status codes are QueryToWire's; gRPC enforces deadlines and cancellation
  // for either API (a cancelled call's answer is dropped, as a sync
  // handler's is).
  if (const int query = ExchangeMethodIndex("Query", false); query >= 0) {
    MarkMethodCallback(
        query,
        new grpc::internal::CallbackUnaryHandler<QueryRequest, grpc::ByteBuffer>(
            [this](grpc::CallbackServerContext* context, const QueryRequest* request,
                   grpc::ByteBuffer* response) {
              grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
              auto bytes = std::make_unique<std::string>();
              grpc::Status status;
              {
                // The server interceptor sets the caller's trace context for
                // sync handlers only: this thread is gRPC's, so the handler
                // sets it (a child of the caller's `traceparent`, or a new
                // trace) for its logs and restores the thread's previous one.
                TraceScope trace(IncomingTraceContext(*context));
                status = QueryToWire(context, request, bytes.get());
              }
              if (status.ok()) {
                // Handed to gRPC without a copy; freed with the slice.
                std::string* owned = bytes.release();
                grpc::Slice slice(
                    owned->data(), owned->size(),
                    [](void* p) { delete static_cast<std::string*>(p); }, owned);
                grpc::ByteBuffer buffer(&slice, 1);
                response->Swap(&buffer);
              }
              reactor->Finish(status);
              return reactor;
            }));
  } else {
    LogError("exchange", "Query is not a unary method of cityos.exchange.v1.ExchangeService; "
                         "serving it through the typed handler (slower)", {});
  }
  // Subscribe writes its responses as bytes (grpc::ByteBuffer), so stored
  // events go out without being parsed and serialized again. The generated
  // split-streaming registration (the same wire protocol as the typed one)
  // with a byte buffer as the response type.
  if (const int subscribe = ExchangeMethodIndex("Subscribe", true); subscribe >= 0) {
    MarkMethodStreamed(
        subscribe,
        new grpc::internal::SplitServerStreamingHandler<SubscribeRequest, grpc::ByteBuffer>(
            [this](grpc::ServerContext* context,
                   grpc::ServerSplitStreamer<SubscribeRequest, grpc::ByteBuffer>* stream) {
              return StreamedSubscribe(context, stream);
            }));
  } else {
    LogError("exchange",
             "Subscribe is not a server-streaming method of cityos.exchange.v1.ExchangeService; "
             "serving it through the typed writer (slower)",
             {});
  }
}

ExchangeServiceImpl::~ExchangeServiceImpl() { Stop(); }

void ExchangeServiceImpl::Start() { hub_.Start(); }
void ExchangeServiceImpl::BeginShutdown() { hub_.BeginShutdown(); }
void ExchangeServiceImpl::Stop() { hub_.Stop(); }

absl::StatusOr<Principal> ExchangeServiceImpl::Caller(grpc::ServerContextBase* context) const {
  absl::StatusOr<Principal> who = deps_->resolver(context);
  if (!who.ok() && who.status().code() != absl::StatusCode::kUnauthenticated) {
    return absl::UnauthenticatedError(who.status().message());
  }
  return who;
}

bool ExchangeServiceImpl::HasRole(const Principal& who, std::string_view role) const {
  return who.HasRole(role) || who == deps_->node ||
         (who.org == deps_->node.org && who.name == deps_->node.name &&
          who.trust_domain == deps_->node.trust_domain);
}

absl::Status ExchangeServiceImpl::CheckPurpose(std::string_view purpose) const {
  if (purpose.empty()) return absl::InvalidArgumentError("purpose: required");
  if (!deps_->pdp->IsKnownPurpose(purpose)) {
    return absl::InvalidArgumentError(absl::StrFormat("purpose: unknown purpose \"%s\"", purpose));
  }
  return absl::OkStatus();
}

std::optional<Entity> ExchangeServiceImpl::Obligated(
    const Principal& who, const std::string& who_id, Action action, std::string_view purpose,
    const Entity& entity, std::shared_ptr<const Decision>* decision_out) {
  AccessRequest req{.principal = &who, .action = action, .resource = ResourceView::Of(entity),
                    .purpose = purpose};
  std::shared_ptr<const Decision> d = deps_->pdp->Decide(req);
  deps_->auditor->Record(who_id, ActionName(action), EntityKey(entity.type(), entity.id()),
                         purpose, entity.data_subject(), *d);
  if (decision_out != nullptr) *decision_out = d;
  if (!d->allowed()) return std::nullopt;
  Entity copy = entity;
  if (!d->obligations.empty()) {
    absl::Status s = deps_->appliers->For(who.org).Apply(d->obligations, &copy);
    if (!s.ok()) {
      // Fail closed: data whose obligations cannot be met is not delivered.
      LogWarn("exchange", "obligation cannot be applied; entity withheld",
              {{"entity", EntityKey(entity.type(), entity.id())},
               {"error", std::string(s.message())}});
      return std::nullopt;
    }
    if (copy.obligations_size() == 0) {
      for (const Obligation& o : d->obligations) *copy.add_obligations() = o;
    }
  }
  return copy;
}

// ---- reads -----------------------------------------------------------------

// PERMISSION_DENIED, audited, when no rule could allow `may` (decided before
// any data is read, so the answer says nothing about what exists).
grpc::Status ExchangeServiceImpl::DenyUnlessMayAllow(const AccessRequest& may,
                                                     const std::string& who_id,
                                                     const std::string& resource,
                                                     std::string_view data_subject) {
  if (deps_->pdp->MayAllow(may)) return grpc::Status::OK;
  const bool history = may.action == Action::kHistory;
  Decision denied;
  denied.reason = history ? "no rule can allow reading the history of this type for this purpose"
                          : "no rule can allow reading this type for this purpose";
  denied.severity = SEVERITY_NOTICE;
  deps_->auditor->Record(who_id, ActionName(may.action), resource, may.purpose, data_subject,
                         denied);
  return Denied(absl::StrFormat(history ? "no rule allows %s the history of %s for purpose %s"
                                        : "no rule allows %s to read %s for purpose %s",
                                who_id, may.resource.type, may.purpose));
}

grpc::Status ExchangeServiceImpl::QueryPrelude(grpc::ServerContextBase* context,
                                               const QueryRequest& request, Principal* who_out,
                                               std::string* who_id) {
  absl::StatusOr<Principal> who = Caller(context);
  if (!who.ok()) return ToGrpcStatus(who.status());
  const EntityFilter& filter = request.filter();
  if (filter.type().empty()) return Invalid("filter.type: required");
  if (absl::Status s = ValidateFilter(filter); !s.ok()) {
    return Invalid(absl::StrFormat("filter: %s", s.message()));
  }
  if (absl::Status s = CheckPurpose(request.purpose()); !s.ok()) return ToGrpcStatus(s);
  if (request.page_size() < 0) return Invalid("page_size: must not be negative");
  for (int i = 0; i < request.projection_size(); ++i) {
    if (absl::Status s = CheckPath(absl::StrFormat("projection[%d]", i), request.projection(i));
        !s.ok()) {
      return ToGrpcStatus(s);
    }
  }
  *who_id = who->SpiffeId();
  AccessRequest may{.principal = &*who, .action = Action::kRead, .purpose = request.purpose()};
  may.resource.type = filter.type();
  may.resource.owner = filter.owner();
  may.resource.data_subject = filter.data_subject();
  if (grpc::Status denied = DenyUnlessMayAllow(may, *who_id, filter.type(), filter.data_subject());
      !denied.ok()) {
    return denied;
  }
  *who_out = *std::move(who);
  return grpc::Status::OK;
}

grpc::Status ExchangeServiceImpl::Query(grpc::ServerContext* context, const QueryRequest* request,
                                        QueryResponse* response) {
  return QueryMessages(context, request, response);
}

grpc::Status ExchangeServiceImpl::QueryMessages(grpc::ServerContextBase* context,
                                                const QueryRequest* request,
                                                QueryResponse* response) {
  Principal who_principal;
  std::string who_id;
  if (grpc::Status s = QueryPrelude(context, *request, &who_principal, &who_id); !s.ok()) {
    return s;
  }
  const Principal* who = &who_principal;
  const EntityFilter& filter = request->filter();
  std::vector<std::string> projection(request->projection().begin(), request->projection().end());
  const bool filter_has_attributes = filter.attributes_size() > 0;
  // Decisions of the entities the store found visible, and (only when an
  // attribute filter had to be checked on the obligated view) their
  // obligated copies. Other entities are obligated in place below, without a
  // copy.
  absl::flat_hash_map<std::string, std::shared_ptr<const Decision>> decided;
  absl::flat_hash_map<std::string, Entity> obligated;
  ObligationApplier& applier = deps_->appliers->For(who->org);
  PageRequest page{.page_size = request->page_size(),
                   .page_token = request->page_token(),
                   .token_context = TokenContext(request->purpose(), request->projection())};
  page.visible = [&](const Entity& e) {
    AccessRequest req{.principal = &*who, .action = Action::kRead,
                      .resource = ResourceView::Of(e), .purpose = request->purpose()};
    std::shared_ptr<const Decision> d = deps_->pdp->Decide(req);
    deps_->auditor->Record(who_id, "read", EntityKey(e.type(), e.id()), request->purpose(),
                           e.data_subject(), *d);
    // Individual records of aggregate-only data are never returned.
    if (!d->allowed() || d->has_obligation(OBLIGATION_KIND_AGGREGATE_ONLY)) return false;
    if (filter_has_attributes && !d->obligations.empty()) {
      // Attribute conditions hold on what the caller may see too: a filter
      // on a redacted attribute must not reveal its value.
      Entity copy = e;
      if (!applier.Apply(d->obligations, &copy).ok() || !MatchesFilter(filter, copy)) {
        return false;
      }
      obligated[e.id()] = std::move(copy);
    }
    decided[e.id()] = std::move(d);
    return true;
  };
  absl::StatusOr<EntityPage> result = deps_->store->Query(filter, page);
  if (!result.ok()) return ToGrpcStatus(result.status());
  response->mutable_entities()->Reserve(static_cast<int>(result->entities.size()));
  for (Entity& raw : result->entities) {
    auto it = decided.find(raw.id());
    if (it == decided.end()) continue;  // not decided visible: never returned
    const Decision& d = *it->second;
    Entity* out = response->add_entities();
    if (auto ob = obligated.find(raw.id()); ob != obligated.end()) {
      *out = std::move(ob->second);
    } else {
      *out = std::move(raw);
      if (!d.obligations.empty()) {
        if (absl::Status s = applier.Apply(d.obligations, out); !s.ok()) {
          // Fail closed: data whose obligations cannot be met is left out.
          LogWarn("exchange", "obligation cannot be applied; entity withheld",
                  {{"entity", EntityKey(out->type(), out->id())},
                   {"error", std::string(s.message())}});
          response->mutable_entities()->RemoveLast();
          continue;
        }
      }
    }
    if (!d.obligations.empty() && out->obligations_size() == 0) {
      for (const Obligation& o : d.obligations) *out->add_obligations() = o;
    }
    if (!projection.empty()) {
      if (absl::Status s = Project(projection, out); !s.ok()) return ToGrpcStatus(s);
    }
  }
  response->set_next_page_token(result->next_page_token);
  return grpc::Status::OK;
}

grpc::Status ExchangeServiceImpl::QueryToWire(grpc::ServerContextBase* context,
                                              const QueryRequest* request,
                                              std::string* response) {
  const EntityFilter& filter = request->filter();
  if (request->projection_size() > 0 || filter.attributes_size() > 0) {
    // A projection rebuilds each entity, and an attribute condition must hold
    // on the obligated copy: both need the parsed entities.
    QueryResponse typed;
    grpc::Status status = QueryMessages(context, request, &typed);
    if (status.ok()) typed.AppendToString(response);
    return status;
  }
  Principal who;
  std::string who_id;
  if (grpc::Status s = QueryPrelude(context, *request, &who, &who_id); !s.ok()) return s;
  ObligationApplier& applier = deps_->appliers->For(who.org);
  // Per entity the store hands out (in order): its decision and whether it
  // carries obligations of its own.
  std::vector<std::shared_ptr<const Decision>> decisions;
  std::vector<bool> has_obligations;
  SerializedPageRequest page{
      .page_size = request->page_size(),
      .page_token = request->page_token(),
      .token_context = TokenContext(request->purpose(), request->projection())};
  std::string entity_key;  // per entity, its capacity kept across the page
  page.visible = [&](std::string_view stored) -> SerializedVisibility {
    // The decision needs the envelope attributes only: read off the bytes
    // (the attributes map, the bulk of an entity, is not parsed).
    EntityHeaderView view;
    std::optional<Entity> parsed;  // only built when the header view fails
    ResourceView resource;
    bool own_obligations;
    if (view.Parse(stored)) {
      resource = view.Resource();
      own_obligations = view.has_obligations;
    } else {
      parsed.emplace();
      if (!parsed->ParseFromArray(stored.data(), static_cast<int>(stored.size()))) {
        // The store stops here with Query's DATA_LOSS for the row: nothing
        // after it is decided or audited.
        return SerializedVisibility::kUnreadable;
      }
      resource = ResourceView::Of(*parsed);
      own_obligations = parsed->obligations_size() > 0;
    }
    AccessRequest req{.principal = &who, .action = Action::kRead, .resource = resource,
                      .purpose = request->purpose()};
    std::shared_ptr<const Decision> d = deps_->pdp->Decide(req);
    SetEntityKey(resource.type, resource.entity_id, &entity_key);
    deps_->auditor->Record(who_id, "read", entity_key, request->purpose(), resource.data_subject,
                           *d);
    // Individual records of aggregate-only data are never returned.
    if (!d->allowed() || d->has_obligation(OBLIGATION_KIND_AGGREGATE_ONLY)) {
      return SerializedVisibility::kHidden;
    }
    decisions.push_back(std::move(d));
    has_obligations.push_back(own_obligations);
    return SerializedVisibility::kVisible;
  };
  absl::StatusOr<SerializedEntityPage> result = deps_->store->QuerySerialized(filter, page);
  if (!result.ok()) return ToGrpcStatus(result.status());
  if (decisions.size() != result->entities.size()) {
    return ToGrpcStatus(absl::InternalError("entity store: page and decisions disagree"));
  }
  // How a decision's obligations are applied to entities of the filter's
  // type, worked out once per distinct obligations and type on each thread
  // (the PDP's cache holds one decision per distinct set of the attributes
  // rules read, and their obligations are those of the few rules that
  // allowed them). Looked up by the decision (the PDP's cache hands out the
  // same one until it changes), then by the obligations' bytes, which the
  // response needs anyway.
  struct Applying {
    // The last decision with these obligations; held, so that its address
    // is not reused by another decision while it identifies this entry.
    std::shared_ptr<const Decision> decision;
    std::string type;
    std::string obligations;  // the obligations as Entity field 15
    std::optional<EntityWireRedaction> wire;  // nullopt: parse, apply, serialize
  };
  static thread_local std::array<std::unique_ptr<Applying>, 4> applying_cache;
  static thread_local size_t applying_next = 0;
  std::string obligations_bytes;
  auto applying_for = [&](const std::shared_ptr<const Decision>& decision) -> const Applying& {
    for (const auto& a : applying_cache) {
      if (a != nullptr && a->decision == decision && a->type == filter.type()) return *a;
    }
    const Decision& d = *decision;
    obligations_bytes.clear();
    for (const Obligation& o : d.obligations) {
      wire::AppendLengthDelimitedHeader(15, o.ByteSizeLong(), &obligations_bytes);
      o.AppendToString(&obligations_bytes);
    }
    for (const auto& a : applying_cache) {
      if (a != nullptr && a->obligations == obligations_bytes && a->type == filter.type()) {
        a->decision = decision;
        return *a;
      }
    }
    auto a = std::make_unique<Applying>();
    a->decision = decision;
    a->type = filter.type();
    a->obligations = obligations_bytes;
    // Obligations the applier refuses withhold the entity (below, on the
    // parsed path, which logs why); the wire only takes what it accepts.
    // Whether it refuses depends on the obligations and the type only.
    Entity probe;
    probe.set_type(filter.type());
    if (applier.Apply(d.obligations, &probe).ok()) {
      a->wire = EntityWireRedaction::Compile(d.obligations, filter.type());
    }
    std::unique_ptr<Applying>& slot = applying_cache[applying_next++ % applying_cache.size()];
    slot = std::move(a);
    return *slot;
  };
  // One allocation for the response in the common case: the stored bytes,
  // their field headers and the token (obligations listed may add a little).
  size_t expected = result->next_page_token.size() + 16;
  for (const std::string& stored : result->entities) expected += stored.size() + 16;
  response->reserve(response->size() + expected);
  std::string entity;
  for (size_t i = 0; i < result->entities.size(); ++i) {
    const std::string& stored = result->entities[i];
    const Decision& d = *decisions[i];
    if (d.obligations.empty()) {
      wire::AppendLengthDelimitedHeader(1, stored.size(), response);
      response->append(stored);
      continue;
    }
    const Applying& a = applying_for(decisions[i]);
    entity.clear();
    if (a.wire.has_value() && a.wire->Apply(stored, &entity)) {
      // Obligations (field 15, the last) are listed after the attributes,
      // as Query adds them when the entity has none of its own.
      if (!has_obligations[i]) entity.append(a.obligations);
    } else {
      Entity parsed;
      if (!parsed.ParseFromString(stored)) {
        return ToGrpcStatus(absl::DataLossError("entity store: a stored entity does not parse"));
      }
      if (absl::Status s = applier.Apply(d.obligations, &parsed); !s.ok()) {
        // Fail closed: data whose obligations cannot be met is left out.
        LogWarn("exchange", "obligation cannot be applied; entity withheld",
                {{"entity", EntityKey(parsed.type(), parsed.id())},
                 {"error", std::string(s.message())}});
        continue;
      }
      if (parsed.obligations_size() == 0) {
        for (const Obligation& o : d.obligations) *parsed.add_obligations() = o;
      }
      parsed.AppendToString(&entity);
    }
    wire::AppendLengthDelimitedHeader(1, entity.size(), response);
    response->append(entity);
  }
  if (!result->next_page_token.empty()) {
    wire::AppendLengthDelimitedHeader(2, result->next_page_token.size(), response);
    response->append(result->next_page_token);
  }
  return grpc::Status::OK;
}

grpc::Status ExchangeServiceImpl::GetEntity(grpc::ServerContext* context,
                                            const GetEntityRequest* request,
                                            GetEntityResponse* response) {
  absl::StatusOr<Principal> who = Caller(context);
  if (!who.ok()) return ToGrpcStatus(who.status());
  if (request->type().empty()) return Invalid("type: required");
  if (request->id().empty()) return Invalid("id: required");
  if (absl::Status s = CheckPurpose(request->purpose()); !s.ok()) return ToGrpcStatus(s);
  const std::string who_id = who->SpiffeId();
  AccessRequest may{.principal = &*who, .action = Action::kRead, .purpose = request->purpose()};
  may.resource.type = request->type();
  may.resource.entity_id = request->id();
  if (grpc::Status denied =
          DenyUnlessMayAllow(may, who_id, EntityKey(request->type(), request->id()), "");
      !denied.ok()) {
    return denied;
  }
  absl::StatusOr<Entity> stored = deps_->store->Get(request->type(), request->id());
  if (!stored.ok()) {
    if (absl::IsNotFound(stored.status())) return EntityNotFound(request->type(), request->id());
    return ToGrpcStatus(stored.status());
  }
  std::shared_ptr<const Decision> d;
  std::optional<Entity> copy =
      Obligated(*who, who_id, Action::kRead, request->purpose(), *stored, &d);
  if (!copy.has_value() || d->has_obligation(OBLIGATION_KIND_AGGREGATE_ONLY)) {
    return EntityNotFound(request->type(), request->id());
  }
  *response->mutable_entity() = *std::move(copy);
  return grpc::Status::OK;
}

grpc::Status ExchangeServiceImpl::QueryHistory(grpc::ServerContext* context,
                                               const QueryHistoryRequest* request,
                                               QueryHistoryResponse* response) {
  absl::StatusOr<Principal> who = Caller(context);
  if (!who.ok()) return ToGrpcStatus(who.status());
  if (request->type().empty()) return Invalid("type: required");
  if (request->id().empty()) return Invalid("id: required");
  if (absl::Status s = CheckPurpose(request->purpose()); !s.ok()) return ToGrpcStatus(s);
  if (request->page_size() < 0) return Invalid("page_size: must not be negative");
  auto range = RangeFromProto(request->range(), "range");
  if (!range.ok()) return ToGrpcStatus(range.status());
  std::vector<std::string> projection(request->projection().begin(), request->projection().end());
  for (size_t i = 0; i < projection.size(); ++i) {
    if (absl::Status s = CheckPath(absl::StrFormat("projection[%d]", i), projection[i]); !s.ok()) {
      return ToGrpcStatus(s);
    }
  }
  const std::string who_id = who->SpiffeId();
  AccessRequest may{.principal = &*who, .action = Action::kHistory, .purpose = request->purpose()};
  may.resource.type = request->type();
  may.resource.entity_id = request->id();
  if (grpc::Status denied =
          DenyUnlessMayAllow(may, who_id, EntityKey(request->type(), request->id()), "");
      !denied.ok()) {
    return denied;
  }
  // Whether the entity exists for this caller: its latest state decides, so
  // that a denied entity looks exactly like a missing one.
  absl::StatusOr<Entity> latest = deps_->store->Get(request->type(), request->id());
  if (!latest.ok()) {
    if (absl::IsNotFound(latest.status())) return EntityNotFound(request->type(), request->id());
    return ToGrpcStatus(latest.status());
  }
  {
    AccessRequest req{.principal = &*who, .action = Action::kHistory,
                      .resource = ResourceView::Of(*latest), .purpose = request->purpose()};
    std::shared_ptr<const Decision> d = deps_->pdp->Decide(req);
    if (!d->allowed() || d->has_obligation(OBLIGATION_KIND_AGGREGATE_ONLY)) {
      deps_->auditor->Record(who_id, "history", EntityKey(request->type(), request->id()),
                             request->purpose(), latest->data_subject(), *d);
      return EntityNotFound(request->type(), request->id());
    }
  }
  absl::flat_hash_map<uint64_t, Entity> visible;
  PageRequest page{.page_size = request->page_size(),
                   .page_token = request->page_token(),
                   .token_context = TokenContext(request->purpose(), request->projection())};
  page.visible = [&](const Entity& e) {
    std::shared_ptr<const Decision> d;
    std::optional<Entity> copy =
        Obligated(*who, who_id, Action::kHistory, request->purpose(), e, &d);
    if (!copy.has_value() || d->has_obligation(OBLIGATION_KIND_AGGREGATE_ONLY)) return false;
    visible[e.version()] = *std::move(copy);
    return true;
  };
  absl::StatusOr<EntityPage> result =
      deps_->store->History(request->type(), request->id(), range->first, range->second, page);
  if (!result.ok()) {
    if (absl::IsNotFound(result.status())) return EntityNotFound(request->type(), request->id());
    return ToGrpcStatus(result.status());
  }
  for (Entity& raw : result->entities) {
    auto it = visible.find(raw.version());
    if (it == visible.end()) continue;
    Entity& e = it->second;
    if (!projection.empty()) {
      if (absl::Status s = Project(projection, &e); !s.ok()) return ToGrpcStatus(s);
    }
    *response->add_states() = std::move(e);
  }
  response->set_next_page_token(result->next_page_token);
  return grpc::Status::OK;
}

grpc::Status ExchangeServiceImpl::Aggregate(grpc::ServerContext* context,
                                            const AggregateRequest* request,
                                            AggregateResponse* response) {
  absl::StatusOr<Principal> who = Caller(context);
  if (!who.ok()) return ToGrpcStatus(who.status());
  const EntityFilter& filter = request->filter();
  if (filter.type().empty()) return Invalid("filter.type: required");
  if (absl::Status s = ValidateFilter(filter); !s.ok()) {
    return Invalid(absl::StrFormat("filter: %s", s.message()));
  }
  if (absl::Status s = CheckPurpose(request->purpose()); !s.ok()) return ToGrpcStatus(s);
  for (int i = 0; i < request->group_by_size(); ++i) {
    if (absl::Status s = CheckPath(absl::StrFormat("group_by[%d]", i), request->group_by(i));
        !s.ok()) {
      return ToGrpcStatus(s);
    }
  }
  for (int i = 0; i < request->metrics_size(); ++i) {
    const Metric& m = request->metrics(i);
    if (m.function() == AGGREGATE_FUNCTION_UNSPECIFIED || !AggregateFunction_IsValid(m.function())) {
      return Invalid(absl::StrFormat("metrics[%d].function: required", i));
    }
    if (absl::Status s = CheckPath(absl::StrFormat("metrics[%d].path", i), m.path()); !s.ok()) {
      return ToGrpcStatus(s);
    }
  }
  if (!(request->grid_cell_m() >= 0) || std::isinf(request->grid_cell_m())) {
    return Invalid("grid_cell_m: must be a finite number, 0 or more");
  }
  absl::Duration bucket = absl::ZeroDuration();
  if (request->has_time_bucket()) {
    auto b = DurationFromProto(request->time_bucket(), "time_bucket");
    if (!b.ok()) return ToGrpcStatus(b.status());
    if (*b <= absl::ZeroDuration()) return Invalid("time_bucket: must be positive");
    bucket = *b;
  }
  const std::string who_id = who->SpiffeId();
  AccessRequest may{.principal = &*who, .action = Action::kRead, .purpose = request->purpose()};
  may.resource.type = filter.type();
  may.resource.owner = filter.owner();
  may.resource.data_subject = filter.data_subject();
  if (grpc::Status denied = DenyUnlessMayAllow(may, who_id, filter.type(), filter.data_subject());
      !denied.ok()) {
    return denied;
  }

  // Every entity the caller may read, obligations applied (aggregate-only
  // ones included: this is how they are read).
  std::vector<Entity> entities;
  uint32_t min_group = 1;
  double cell = request->grid_cell_m();
  const bool filter_has_attributes = filter.attributes_size() > 0;
  std::string token;
  do {
    PageRequest page{.page_size = 1000, .page_token = token,
                     .token_context = "aggregate\x1f" + request->purpose()};
    page.visible = [&](const Entity& e) {
      std::shared_ptr<const Decision> d;
      std::optional<Entity> copy =
          Obligated(*who, who_id, Action::kRead, request->purpose(), e, &d);
      if (!copy.has_value()) return false;
      if (filter_has_attributes && !MatchesFilter(filter, *copy)) return false;
      min_group = std::max(min_group, MinGroupSize(*d));
      if (request->grid_cell_m() > 0) cell = std::max(cell, CoarsenCell(*d));
      entities.push_back(*std::move(copy));
      return true;
    };
    absl::StatusOr<EntityPage> result = deps_->store->Query(filter, page);
    if (!result.ok()) return ToGrpcStatus(result.status());
    token = result->next_page_token;
  } while (!token.empty());

  struct Stat {
    double sum = 0, min = std::numeric_limits<double>::infinity(),
           max = -std::numeric_limits<double>::infinity();
    uint64_t n = 0;
  };
  struct Group {
    AggregateGroup proto;  // key, cell_center, bucket_start
    uint64_t count = 0;
    std::vector<Stat> stats;
  };
  std::map<std::string, Group> groups;
  const int64_t bucket_ns = absl::ToInt64Nanoseconds(bucket);
  for (const Entity& e : entities) {
    std::string key;
    AggregateGroup head;
    for (const std::string& path : request->group_by()) {
      const Value* v = FindAttribute(e, path);
      Value value = v != nullptr ? *v : Value();
      std::string bytes;
      value.SerializeToString(&bytes);
      absl::StrAppend(&key, bytes.size(), ":", bytes, ";");
      *head.add_key() = std::move(value);
    }
    if (cell > 0) {
      if (e.has_location()) {
        common::v1::GeoPoint c = CoarsenLocation(e.location(), cell);
        absl::StrAppend(&key, absl::StrFormat("@%.9f,%.9f;", c.latitude(), c.longitude()));
        *head.mutable_cell_center() = c;
      } else {
        absl::StrAppend(&key, "@none;");
      }
    }
    if (bucket_ns > 0) {
      if (e.has_observed_time()) {
        int64_t t = absl::ToUnixNanos(ToAbslTime(e.observed_time()));
        int64_t start = t - (((t % bucket_ns) + bucket_ns) % bucket_ns);
        absl::StrAppend(&key, "#", start, ";");
        TimestampToProto(absl::FromUnixNanos(start), head.mutable_bucket_start());
      } else {
        absl::StrAppend(&key, "#none;");
      }
    }
    auto [it, inserted] = groups.try_emplace(key);
    Group& g = it->second;
    if (inserted) {
      g.proto = std::move(head);
      g.stats.resize(request->metrics_size());
    }
    ++g.count;
    for (int i = 0; i < request->metrics_size(); ++i) {
      std::optional<double> x = Number(FindAttribute(e, request->metrics(i).path()));
      if (!x.has_value()) continue;
      Stat& s = g.stats[i];
      s.sum += *x;
      s.min = std::min(s.min, *x);
      s.max = std::max(s.max, *x);
      ++s.n;
    }
  }
  uint64_t suppressed = 0;
  for (auto& [key, g] : groups) {
    if (g.count < min_group) {
      ++suppressed;
      continue;
    }
    AggregateGroup* out = response->add_groups();
    *out = std::move(g.proto);
    out->set_count(g.count);
    for (int i = 0; i < request->metrics_size(); ++i) {
      const Stat& s = g.stats[i];
      double v = std::numeric_limits<double>::quiet_NaN();
      if (s.n > 0) {
        switch (request->metrics(i).function()) {
          case AGGREGATE_FUNCTION_SUM: v = s.sum; break;
          case AGGREGATE_FUNCTION_MEAN: v = s.sum / static_cast<double>(s.n); break;
          case AGGREGATE_FUNCTION_MIN: v = s.min; break;
          case AGGREGATE_FUNCTION_MAX: v = s.max; break;
          default: break;
        }
      }
      out->add_values(v);
    }
  }
  response->set_suppressed_groups(suppressed);
  response->set_min_group_size(min_group);
  return grpc::Status::OK;
}

grpc::Status ExchangeServiceImpl::Subscribe(grpc::ServerContext* context,
                                            const SubscribeRequest* request,
                                            grpc::ServerWriter<SubscribeResponse>* writer) {
  absl::StatusOr<Principal> who = Caller(context);
  if (!who.ok()) return ToGrpcStatus(who.status());
  ProtoWriterSink sink(writer);
  return hub_.Serve(context, *who, *request, &sink);
}

grpc::Status ExchangeServiceImpl::StreamedSubscribe(
    grpc::ServerContext* context,
    grpc::ServerSplitStreamer<SubscribeRequest, grpc::ByteBuffer>* stream) {
  SubscribeRequest request;
  if (!stream->Read(&request)) {
    return grpc::Status(grpc::StatusCode::CANCELLED, "no request was received");
  }
  absl::StatusOr<Principal> who = Caller(context);
  if (!who.ok()) return ToGrpcStatus(who.status());
  StreamerSink sink(stream);
  return hub_.Serve(context, *who, request, &sink);
}

// ---- explain and policy administration ------------------------------------

grpc::Status ExchangeServiceImpl::Explain(grpc::ServerContext* context,
                                          const ExplainRequest* request,
                                          ExplainResponse* response) {
  absl::StatusOr<Principal> who = Caller(context);
  if (!who.ok()) return ToGrpcStatus(who.status());
  Principal subject = *who;
  const bool other = !request->principal().empty() && request->principal() != who->SpiffeId();
  if (other) {
    absl::StatusOr<Principal> p = Principal::FromSpiffeId(request->principal());
    if (!p.ok()) return Invalid(absl::StrFormat("principal: %s", p.status().message()));
    subject = *std::move(p);  // the node knows no roles of others: none
  }
  if ((other || request->roles_size() > 0) && !HasRole(*who, kPolicyAdmin)) {
    return Denied(absl::StrFormat(
        "explaining for another principal or with assumed roles needs the %s role",
        kPolicyAdmin));
  }
  if (request->roles_size() > 0) subject.roles.assign(request->roles().begin(), request->roles().end());
  cityos::Action action;
  switch (request->action()) {
    case exchange::v1::ACTION_PUBLISH:
      action = cityos::Action::kPublish;
      break;
    case exchange::v1::ACTION_SUBSCRIBE:
      action = cityos::Action::kSubscribe;
      break;
    case exchange::v1::ACTION_READ:
      action = cityos::Action::kRead;
      break;
    case exchange::v1::ACTION_HISTORY:
      action = cityos::Action::kHistory;
      break;
    default:
      return Invalid("action: required (publish, subscribe, read or history)");
  }
  if (action != cityos::Action::kPublish || !request->purpose().empty()) {
    if (absl::Status s = CheckPurpose(request->purpose()); !s.ok()) return ToGrpcStatus(s);
  }
  AccessRequest req{.principal = &subject, .action = action,
                    .resource = ResourceView::Of(request->resource()),
                    .purpose = request->purpose()};
  if (request->has_time()) {
    auto t = TimestampFromProto(request->time(), "time");
    if (!t.ok()) return ToGrpcStatus(t.status());
    req.time = *t;
  }
  std::shared_ptr<const Decision> d = deps_->pdp->DecideUncached(req);
  *response->mutable_decision() = d->ToProto();
  for (const std::string& r : d->overridden_rule_ids) response->add_overridden_rule_ids(r);
  // The call itself is audited (as `explain`, by the caller).
  const Resource& r = request->resource();
  std::string resource = !r.subject().empty() ? r.subject() : r.type();
  if (!r.entity_id().empty()) resource = EntityKey(r.type(), r.entity_id());
  Decision audited = *d;
  audited.reason = absl::StrFormat("explained %s %s for %s: %s", ActionName(action), resource,
                                   subject.SpiffeId(), d->reason);
  deps_->auditor->Record(who->SpiffeId(), "explain", resource, request->purpose(),
                         r.data_subject(), audited);
  return grpc::Status::OK;
}

grpc::Status ExchangeServiceImpl::LoadPolicies(grpc::ServerContext* context,
                                               const LoadPoliciesRequest* request,
                                               LoadPoliciesResponse* response) {
  absl::StatusOr<Principal> who = Caller(context);
  if (!who.ok()) return ToGrpcStatus(who.status());
  if (!HasRole(*who, kPolicyAdmin)) {
    return Denied(absl::StrFormat("loading policies needs the %s role", kPolicyAdmin));
  }
  std::vector<PolicyDocumentText> docs;
  for (int i = 0; i < request->documents_size(); ++i) {
    const PolicyDocument& d = request->documents(i);
    if (d.name().empty()) return Invalid(absl::StrFormat("documents[%d].name: required", i));
    docs.push_back({d.name(), d.content()});
  }
  if (docs.empty() && request->remove().empty() && !request->replace_all()) {
    return Invalid("documents: nothing to load or remove");
  }
  LoadOptions options{.replace_all = request->replace_all(),
                      .remove = {request->remove().begin(), request->remove().end()},
                      .expected_revision = request->expected_revision()};
  absl::StatusOr<PolicySetInfo> info = deps_->pdp->Load(*who, std::move(docs), options);
  if (!info.ok()) return ToGrpcStatus(info.status());
  response->set_revision(info->revision);
  for (const PolicyDocument& d : info->documents) {
    PolicyDocument* out = response->add_documents();
    *out = d;
    out->clear_content();
  }
  return grpc::Status::OK;
}

grpc::Status ExchangeServiceImpl::ListPolicies(grpc::ServerContext* context,
                                               const ListPoliciesRequest* request,
                                               ListPoliciesResponse* response) {
  absl::StatusOr<Principal> who = Caller(context);
  if (!who.ok()) return ToGrpcStatus(who.status());
  if (!HasRole(*who, kPolicyAdmin) && !HasRole(*who, kAuditor)) {
    return Denied(absl::StrFormat("listing policies needs the %s or %s role", kPolicyAdmin,
                                  kAuditor));
  }
  PolicySetInfo info = deps_->pdp->Current();
  response->set_revision(info.revision);
  for (const PolicyDocument& d : info.documents) {
    PolicyDocument* out = response->add_documents();
    *out = d;
    if (!request->include_content()) out->clear_content();
  }
  return grpc::Status::OK;
}

grpc::Status ExchangeServiceImpl::ValidatePolicies(grpc::ServerContext* context,
                                                   const ValidatePoliciesRequest* request,
                                                   ValidatePoliciesResponse* response) {
  absl::StatusOr<Principal> who = Caller(context);
  if (!who.ok()) return ToGrpcStatus(who.status());
  if (!HasRole(*who, kPolicyAdmin)) {
    return Denied(absl::StrFormat("validating policies needs the %s role", kPolicyAdmin));
  }
  std::vector<PolicyDocumentText> docs;
  for (int i = 0; i < request->documents_size(); ++i) {
    const PolicyDocument& d = request->documents(i);
    if (d.name().empty()) return Invalid(absl::StrFormat("documents[%d].name: required", i));
    docs.push_back({d.name(), d.content()});
  }
  ValidationResult result = deps_->pdp->Validate(docs, request->merge_with_current());
  response->set_valid(result.errors.empty());
  for (const PolicyError& e : result.errors) *response->add_errors() = e;
  response->set_rules(static_cast<uint32_t>(result.rules));
  return grpc::Status::OK;
}

// ---- emergencies ------------------------------------------------------------

grpc::Status ExchangeServiceImpl::DeclareEmergency(grpc::ServerContext* context,
                                                   const DeclareEmergencyRequest* request,
                                                   DeclareEmergencyResponse* response) {
  absl::StatusOr<Principal> who = Caller(context);
  if (!who.ok()) return ToGrpcStatus(who.status());
  if (!HasRole(*who, kDisasterAuthority)) {
    return Denied(absl::StrFormat("declaring an emergency needs the %s role",
                                  kDisasterAuthority));
  }
  if (!request->has_area() ||
      request->area().shape_case() == common::v1::GeoArea::SHAPE_NOT_SET) {
    return Invalid("area: required (bounding box, circle, polygon or region)");
  }
  if (request->reason().empty()) return Invalid("reason: required");
  if (request->reason().size() > 1024) return Invalid("reason: at most 1024 characters");
  if (!request->window().has_end()) return Invalid("window.end: required");
  EmergencyDeclaration declaration;
  declaration.area = request->area();
  declaration.reason = request->reason();
  if (request->window().has_start()) {
    auto t = TimestampFromProto(request->window().start(), "window.start");
    if (!t.ok()) return ToGrpcStatus(t.status());
    declaration.start = *t;
  }
  auto end = TimestampFromProto(request->window().end(), "window.end");
  if (!end.ok()) return ToGrpcStatus(end.status());
  declaration.end = *end;
  absl::StatusOr<Emergency> emergency = deps_->pdp->DeclareEmergency(*who, declaration);
  if (!emergency.ok()) return ToGrpcStatus(emergency.status());

  // Tell the city: an event on disaster.emergency.declared.<region|area>.
  disaster::v1::EmergencyDeclaration payload;
  payload.set_emergency_id(emergency->id());
  *payload.mutable_area() = emergency->area();
  *payload.mutable_window() = emergency->window();
  payload.set_authority(emergency->authority().empty() ? who->org : emergency->authority());
  payload.set_declared_by(emergency->declared_by().empty() ? who->SpiffeId()
                                                           : emergency->declared_by());
  payload.set_reason(emergency->reason());
  *payload.mutable_declare_time() = emergency->declare_time();
  std::string subject = "disaster.emergency.declared.area";
  const std::string& region = request->area().region();
  if (!region.empty() && ValidateSubject("disaster.emergency.declared." + region).ok()) {
    subject = "disaster.emergency.declared." + region;
  }
  EventBuilder builder(deps_->clock);
  builder.Source(absl::StrFormat("//%s/exchange", deps_->node.name))
      .Subject(subject)
      .Type(disaster::v1::EmergencyDeclaration::descriptor()->full_name())
      .Domain("disaster")
      .Classification(event::v1::CLASSIFICATION_PUBLIC)
      .Owner(payload.authority())
      .ProtoData(payload);
  if (!region.empty()) builder.Region(region);
  absl::StatusOr<event::v1::Event> event = builder.Build();
  absl::Status published =
      event.ok() ? deps_->bus->Publish(deps_->node, {*std::move(event)}).status() : event.status();
  if (!published.ok()) {
    // The emergency is in force either way; the announcement is best effort.
    LogWarn("exchange", "emergency declared but its event could not be published",
            {{"emergency", emergency->id()}, {"subject", subject},
             {"error", std::string(published.message())}});
  }
  *response->mutable_emergency() = *std::move(emergency);
  return grpc::Status::OK;
}

grpc::Status ExchangeServiceImpl::EndEmergency(grpc::ServerContext* context,
                                               const EndEmergencyRequest* request,
                                               EndEmergencyResponse* response) {
  absl::StatusOr<Principal> who = Caller(context);
  if (!who.ok()) return ToGrpcStatus(who.status());
  if (!HasRole(*who, kDisasterAuthority)) {
    return Denied(absl::StrFormat("ending an emergency needs the %s role", kDisasterAuthority));
  }
  if (request->id().empty()) return Invalid("id: required");
  if (request->reason().empty()) return Invalid("reason: required");
  absl::StatusOr<Emergency> e = deps_->pdp->EndEmergency(*who, request->id(), request->reason());
  if (!e.ok()) return ToGrpcStatus(e.status());
  *response->mutable_emergency() = *std::move(e);
  return grpc::Status::OK;
}

grpc::Status ExchangeServiceImpl::ListEmergencies(grpc::ServerContext* context,
                                                  const ListEmergenciesRequest* request,
                                                  ListEmergenciesResponse* response) {
  absl::StatusOr<Principal> who = Caller(context);
  if (!who.ok()) return ToGrpcStatus(who.status());
  auto range = RangeFromProto(request->range(), "range");
  if (!range.ok()) return ToGrpcStatus(range.status());
  std::vector<Emergency> all = deps_->pdp->ListEmergencies(request->include_ended());
  std::stable_sort(all.begin(), all.end(), [](const Emergency& a, const Emergency& b) {
    return ToAbslTime(a.declare_time()) > ToAbslTime(b.declare_time());
  });
  for (Emergency& e : all) {
    if (!Overlaps(e.window(), range->first, range->second)) continue;
    *response->add_emergencies() = std::move(e);
  }
  return grpc::Status::OK;
}

// ---- audit -------------------------------------------------------------------

grpc::Status ExchangeServiceImpl::QueryAudit(grpc::ServerContext* context,
                                             const QueryAuditRequest* request,
                                             QueryAuditResponse* response) {
  absl::StatusOr<Principal> who = Caller(context);
  if (!who.ok()) return ToGrpcStatus(who.status());
  if (request->page_size() < 0) return Invalid("page_size: must not be negative");
  auto range = RangeFromProto(request->range(), "range");
  if (!range.ok()) return ToGrpcStatus(range.status());
  AuditQuery q;
  q.principal = request->principal();
  q.data_subject = request->data_subject();
  q.from = range->first;
  q.to = range->second;
  q.action = request->action();
  q.min_severity = request->min_severity();
  q.limit = request->page_size() == 0 ? 100 : std::min(request->page_size(), 1000);
  if (!request->page_token().empty() &&
      !absl::SimpleAtoi(request->page_token(), &q.after_sequence)) {
    return Invalid("page_token: not a token from an earlier page");
  }
  if (!HasRole(*who, kAuditor)) {
    if (who->kind == PrincipalKind::kUser) {
      // "Who read my data": a person sees the entries about itself.
      if (!q.data_subject.empty() && q.data_subject != who->name) {
        return Denied(absl::StrFormat(
            "a user may only query audit entries about itself (data_subject %s); "
            "other entries need the %s role",
            who->name, kAuditor));
      }
      q.data_subject = who->name;
    } else {
      // A service sees what principals of its own org did.
      if (!q.principal.empty()) {
        absl::StatusOr<Principal> p = Principal::FromSpiffeId(q.principal);
        if (!p.ok()) return Invalid(absl::StrFormat("principal: %s", p.status().message()));
        if (p->org != who->org) {
          return Denied(absl::StrFormat(
              "a service may only query audit entries of its own org (%s); others need the "
              "%s role",
              who->org, kAuditor));
        }
      }
      q.principal_org = who->org;
    }
  }
  // What was decided up to now is visible now.
  deps_->auditor->Flush();
  if (auto s = deps_->audit->Flush(); !s.ok()) return ToGrpcStatus(s.status());
  absl::StatusOr<AuditPage> page = deps_->audit->Query(q);
  if (!page.ok()) return ToGrpcStatus(page.status());
  for (auto& e : page->entries) *response->add_entries() = std::move(e);
  for (auto& c : page->checkpoints) *response->add_checkpoints() = std::move(c);
  if (page->next_after_sequence != 0) {
    response->set_next_page_token(std::to_string(page->next_after_sequence));
  }
  return grpc::Status::OK;
}

grpc::Status ExchangeServiceImpl::VerifyAudit(grpc::ServerContext* context,
                                              const VerifyAuditRequest* request,
                                              VerifyAuditResponse* response) {
  absl::StatusOr<Principal> who = Caller(context);
  if (!who.ok()) return ToGrpcStatus(who.status());
  if (!HasRole(*who, kAuditor)) {
    return Denied(absl::StrFormat("verifying the audit log needs the %s role", kAuditor));
  }
  if (request->from_sequence() != 0 && request->to_sequence() != 0 &&
      request->from_sequence() > request->to_sequence()) {
    return Invalid(absl::StrFormat("empty range: from_sequence %d is after to_sequence %d",
                                   request->from_sequence(), request->to_sequence()));
  }
  deps_->auditor->Flush();
  if (auto s = deps_->audit->Flush(); !s.ok()) return ToGrpcStatus(s.status());
  absl::StatusOr<VerifyAuditResponse> r =
      deps_->audit->Verify(request->from_sequence(), request->to_sequence());
  if (!r.ok()) return ToGrpcStatus(r.status());
  *response = *std::move(r);
  return grpc::Status::OK;
}

}  // namespace cityos
