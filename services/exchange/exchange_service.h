// cityos.exchange.v1.ExchangeService: reads of city data decided by the
// node's policy decision point, obligations applied, decisions audited. See
// proto/cityos/exchange/v1/exchange.proto for the semantics of every RPC;
// this adapter follows its comments, including the status codes.
//
// Rules this implementation keeps everywhere:
//  - Every RPC authenticates its caller first (UNAUTHENTICATED otherwise).
//  - An unknown purpose is INVALID_ARGUMENT, before anything is decided.
//  - Reads (Query, GetEntity, QueryHistory, Aggregate) ask MayAllow before the
//    store is touched: PERMISSION_DENIED then says nothing about the data.
//    Each entity is then decided on its own (PageRequest.visible); one the
//    caller may not read is left out, and GetEntity / QueryHistory answer a
//    denied entity with the same NOT_FOUND as a missing one.
//  - Obligations are applied to the caller's copy before filtering on
//    attributes (a filter on a redacted field matches nothing), before
//    projection, and AGGREGATE_ONLY data is only ever returned by Aggregate.
//  - Decisions are audited through DecisionAuditor (denials one by one,
//    allows aggregated per second). Policy loads and emergency changes are
//    audited by the PDP itself.
//  - Roles: `policy-admin` (LoadPolicies, ValidatePolicies, ListPolicies,
//    Explain for others), `auditor` (ListPolicies, QueryAudit of all,
//    VerifyAudit), `disaster-authority` (Declare/EndEmergency). The node's
//    own principal (an insecure node's every caller) holds every role.
#ifndef CITYOS_SERVICES_EXCHANGE_EXCHANGE_SERVICE_H_
#define CITYOS_SERVICES_EXCHANGE_EXCHANGE_SERVICE_H_

#include <grpcpp/grpcpp.h>

#include <memory>
#include <string>

#include "cityos/exchange/v1/exchange.grpc.pb.h"
#include "exchange_subscribe.h"

namespace cityos {

class ExchangeServiceImpl final : public exchange::v1::ExchangeService::Service {
 public:
  // `deps` (and what it points to) must outlive the service and its calls.
  // REQUIRES: every handle of `deps` is set.
  ExchangeServiceImpl(const ExchangeDeps* deps, ExchangeServiceOptions options = {});
  ~ExchangeServiceImpl() override;

  // Starts the subscription hub (PDP watcher and re-check thread).
  void Start();
  // Open Subscribe calls end with UNAVAILABLE; new ones are refused.
  void BeginShutdown();
  // Stops the hub. Idempotent.
  void Stop();

  SubscriptionHub& hub() { return hub_; }

  // Query built as protobuf messages (the reference; also what a request
  // with a projection or an attribute filter gets).
  grpc::Status Query(grpc::ServerContext* context, const exchange::v1::QueryRequest* request,
                     exchange::v1::QueryResponse* response) override;
  // Query as registered (through the callback API, see the constructor): the
  // same response, serialized into `response` (appended), built from the
  // entities' stored bytes where it can (no parse of the attributes;
  // redactions applied on the bytes) and from Query otherwise. Parsing
  // `response` gives what Query gives.
  grpc::Status QueryToWire(grpc::ServerContextBase* context,
                           const exchange::v1::QueryRequest* request, std::string* response);
  grpc::Status GetEntity(grpc::ServerContext* context,
                         const exchange::v1::GetEntityRequest* request,
                         exchange::v1::GetEntityResponse* response) override;
  grpc::Status QueryHistory(grpc::ServerContext* context,
                            const exchange::v1::QueryHistoryRequest* request,
                            exchange::v1::QueryHistoryResponse* response) override;
  grpc::Status Aggregate(grpc::ServerContext* context,
                         const exchange::v1::AggregateRequest* request,
                         exchange::v1::AggregateResponse* response) override;
  grpc::Status Subscribe(grpc::ServerContext* context,
                         const exchange::v1::SubscribeRequest* request,
                         grpc::ServerWriter<exchange::v1::SubscribeResponse>* writer) override;
  // Subscribe as registered: responses written as bytes (see the
  // constructor).
  grpc::Status StreamedSubscribe(
      grpc::ServerContext* context,
      grpc::ServerSplitStreamer<exchange::v1::SubscribeRequest, grpc::ByteBuffer>* stream);
  grpc::Status Explain(grpc::ServerContext* context, const exchange::v1::ExplainRequest* request,
                       exchange::v1::ExplainResponse* response) override;
  grpc::Status LoadPolicies(grpc::ServerContext* context,
                            const exchange::v1::LoadPoliciesRequest* request,
                            exchange::v1::LoadPoliciesResponse* response) override;
  grpc::Status ListPolicies(grpc::ServerContext* context,
                            const exchange::v1::ListPoliciesRequest* request,
                            exchange::v1::ListPoliciesResponse* response) override;
  grpc::Status ValidatePolicies(grpc::ServerContext* context,
                                const exchange::v1::ValidatePoliciesRequest* request,
                                exchange::v1::ValidatePoliciesResponse* response) override;
  grpc::Status DeclareEmergency(grpc::ServerContext* context,
                                const exchange::v1::DeclareEmergencyRequest* request,
                                exchange::v1::DeclareEmergencyResponse* response) override;
  grpc::Status EndEmergency(grpc::ServerContext* context,
                            const exchange::v1::EndEmergencyRequest* request,
                            exchange::v1::EndEmergencyResponse* response) override;
  grpc::Status ListEmergencies(grpc::ServerContext* context,
                               const exchange::v1::ListEmergenciesRequest* request,
                               exchange::v1::ListEmergenciesResponse* response) override;
  grpc::Status QueryAudit(grpc::ServerContext* context,
                          const exchange::v1::QueryAuditRequest* request,
                          exchange::v1::QueryAuditResponse* response) override;
  grpc::Status VerifyAudit(grpc::ServerContext* context,
                           const exchange::v1::VerifyAuditRequest* request,
                           exchange::v1::VerifyAuditResponse* response) override;

 private:
  // The caller, or the status to return.
  absl::StatusOr<Principal> Caller(grpc::ServerContextBase* context) const;
  bool HasRole(const Principal& who, std::string_view role) const;
  // INVALID_ARGUMENT unless `purpose` is given and registered.
  absl::Status CheckPurpose(std::string_view purpose) const;
  // Query's checks before any data is read: caller, filter, purpose, page
  // size, projection, MayAllow (audited when it denies).
  grpc::Status QueryPrelude(grpc::ServerContextBase* context,
                            const exchange::v1::QueryRequest& request, Principal* who,
                            std::string* who_id);
  // Query's body, for either API's context.
  grpc::Status QueryMessages(grpc::ServerContextBase* context,
                             const exchange::v1::QueryRequest* request,
                             exchange::v1::QueryResponse* response);
  // Decides `action` on one entity for the caller, audits it, and on allow
  // returns the caller's copy (obligations applied, listed in
  // `obligations`); nullopt when it is denied or aggregate-only.
  grpc::Status DenyUnlessMayAllow(const AccessRequest& may, const std::string& who_id,
                                  const std::string& resource, std::string_view data_subject);
  std::optional<exchange::v1::Entity> Obligated(const Principal& who, const std::string& who_id,
                                                Action action, std::string_view purpose,
                                                const exchange::v1::Entity& entity,
                                                std::shared_ptr<const Decision>* decision_out);

  const ExchangeDeps* const deps_;
  const ExchangeServiceOptions options_;
  SubscriptionHub hub_;
};

}  // namespace cityos

#endif  // CITYOS_SERVICES_EXCHANGE_EXCHANGE_SERVICE_H_
