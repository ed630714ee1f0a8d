// gRPC interceptors: per-RPC metrics and W3C trace context on the server,
// traceparent injection on the client. See cityos/observability.h.
#include <grpcpp/server_context.h>

#include <chrono>
#include <thread>

#include "absl/strings/str_format.h"
#include "cityos/logging.h"
#include "cityos/observability.h"
#include "obs/trace_internal.h"

namespace cityos {
namespace {

using grpc::experimental::InterceptionHookPoints;

const char* CodeName(grpc::StatusCode code) {
  switch (code) {
    case grpc::StatusCode::OK:
      return "OK";
    case grpc::StatusCode::CANCELLED:
      return "CANCELLED";
    case grpc::StatusCode::UNKNOWN:
      return "UNKNOWN";
    case grpc::StatusCode::INVALID_ARGUMENT:
      return "INVALID_ARGUMENT";
    case grpc::StatusCode::DEADLINE_EXCEEDED:
      return "DEADLINE_EXCEEDED";
    case grpc::StatusCode::NOT_FOUND:
      return "NOT_FOUND";
    case grpc::StatusCode::ALREADY_EXISTS:
      return "ALREADY_EXISTS";
    case grpc::StatusCode::PERMISSION_DENIED:
      return "PERMISSION_DENIED";
    case grpc::StatusCode::RESOURCE_EXHAUSTED:
      return "RESOURCE_EXHAUSTED";
    case grpc::StatusCode::FAILED_PRECONDITION:
      return "FAILED_PRECONDITION";
    case grpc::StatusCode::ABORTED:
      return "ABORTED";
    case grpc::StatusCode::OUT_OF_RANGE:
      return "OUT_OF_RANGE";
    case grpc::StatusCode::UNIMPLEMENTED:
      return "UNIMPLEMENTED";
    case grpc::StatusCode::INTERNAL:
      return "INTERNAL";
    case grpc::StatusCode::UNAVAILABLE:
      return "UNAVAILABLE";
    case grpc::StatusCode::DATA_LOSS:
      return "DATA_LOSS";
    case grpc::StatusCode::UNAUTHENTICATED:
      return "UNAUTHENTICATED";
    default:
      return "UNKNOWN";  // not a canonical code; gRPC clients see UNKNOWN too
  }
}

// The child of the caller's context in `md`, or a new trace.
TraceContext FromMetadata(
    const std::multimap<grpc::string_ref, grpc::string_ref>& md) {
  auto it = md.find(grpc::string_ref(kTraceparentKey));
  if (it != md.end()) {
    absl::StatusOr<TraceContext> parent = TraceContext::Parse(
        std::string_view(it->second.data(), it->second.size()));
    if (parent.ok()) return parent->Child();
  }
  return TraceContext::NewRoot();
}

// "package.Service/Method" from "/package.Service/Method".
std::string_view MethodLabel(const char* method) {
  if (method == nullptr || *method == '\0') return "unknown";
  return *method == '/' ? method + 1 : method;
}

struct ServerFamilies {
  explicit ServerFamilies(MetricsRegistry& r)
      : handled(r.AddCounterFamily(
            "cityos_grpc_server_handled_total",
            "RPCs completed on the server, by method and status code.",
            {"method", "code"})),
        seconds(r.AddHistogramFamily("cityos_grpc_server_handling_seconds",
                                     "Time from the start of an RPC on the "
                                     "server to its status being sent.",
                                     {"method"})) {}
  CounterFamily handled;
  HistogramFamily seconds;
};

class ServerInterceptor final : public grpc::experimental::Interceptor {
 public:
  ServerInterceptor(grpc::experimental::ServerRpcInfo* info,
                    const ServerFamilies* families)
      : info_(info),
        families_(families),
        method_(MethodLabel(info->method())),
        start_(std::chrono::steady_clock::now()) {}

  ~ServerInterceptor() override {
    // No status was sent: the call ended before its handler finished.
    if (!recorded_) Record(grpc::StatusCode::CANCELLED);
    Leave();
  }

  void Intercept(
      grpc::experimental::InterceptorBatchMethods* methods) override {
    if (methods->QueryInterceptionHookPoint(
            InterceptionHookPoints::POST_RECV_INITIAL_METADATA)) {
      context_ = FromMetadata(*methods->GetRecvInitialMetadata());
      // Callback handlers never run on this thread; sync handlers do.
      if (dynamic_cast<grpc::CallbackServerContext*>(info_->server_context()) ==
          nullptr) {
        previous_ = obs_internal::ExchangeCurrentTraceContext(context_);
        thread_ = std::this_thread::get_id();
        installed_ = true;
      }
    }
    if (methods->QueryInterceptionHookPoint(
            InterceptionHookPoints::PRE_SEND_STATUS)) {
      grpc::Status status = methods->GetSendStatus();
      Record(status.error_code());
      Leave();
    }
    methods->Proceed();
  }

 private:
  void Record(grpc::StatusCode code) {
    recorded_ = true;
    double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start_)
            .count();
    families_->seconds.WithLabels({method_}).Observe(seconds);
    families_->handled.WithLabels({method_, CodeName(code)}).Add();
    if (LogEnabled(LogLevel::kDebug)) {
      LogDebug("grpc", "rpc handled",
               {{"method", std::string(method_)},
                {"code", CodeName(code)},
                {"seconds", absl::StrFormat("%.6f", seconds)}});
    }
  }

  // Restores the thread's previous context if we set it on this thread.
  void Leave() {
    if (!installed_ || std::this_thread::get_id() != thread_) return;
    installed_ = false;
    if (CurrentTraceContext() == context_)
      obs_internal::ExchangeCurrentTraceContext(previous_);
  }

  grpc::experimental::ServerRpcInfo* const info_;
  const ServerFamilies* const families_;
  const std::string_view method_;
  const std::chrono::steady_clock::time_point start_;
  TraceContext context_;
  TraceContext previous_;
  std::thread::id thread_;
  bool installed_ = false;
  bool recorded_ = false;
};

class ServerFactory final
    : public grpc::experimental::ServerInterceptorFactoryInterface {
 public:
  explicit ServerFactory(MetricsRegistry& registry) : families_(registry) {}
  grpc::experimental::Interceptor* CreateServerInterceptor(
      grpc::experimental::ServerRpcInfo* info) override {
    return new ServerInterceptor(info, &families_);
  }

 private:
  const ServerFamilies families_;
};

class ClientInterceptor final : public grpc::experimental::Interceptor {
 public:
  explicit ClientInterceptor(std::string traceparent)
      : traceparent_(std::move(traceparent)) {}

  void Intercept(
      grpc::experimental::InterceptorBatchMethods* methods) override {
    if (methods->QueryInterceptionHookPoint(
            InterceptionHookPoints::PRE_SEND_INITIAL_METADATA)) {
      std::multimap<std::string, std::string>* md =
          methods->GetSendInitialMetadata();
      if (md->find(kTraceparentKey) == md->end())
        md->emplace(kTraceparentKey, traceparent_);
    }
    methods->Proceed();
  }

 private:
  const std::string traceparent_;
};

class ClientFactory final
    : public grpc::experimental::ClientInterceptorFactoryInterface {
 public:
  // Runs on the thread that creates the call: the context is taken from it.
  grpc::experimental::Interceptor* CreateClientInterceptor(
      grpc::experimental::ClientRpcInfo*) override {
    const TraceContext& current = CurrentTraceContext();
    TraceContext call =
        current.valid() ? current.Child() : TraceContext::NewRoot();
    return new ClientInterceptor(call.ToTraceparent());
  }
};

}  // namespace

std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>
NewServerObservabilityFactory(MetricsRegistry& registry) {
  return std::make_unique<ServerFactory>(registry);
}

void AddServerObservability(grpc::ServerBuilder& builder,
                            MetricsRegistry& registry) {
  std::vector<
      std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>>
      creators;
  creators.push_back(NewServerObservabilityFactory(registry));
  builder.experimental().SetInterceptorCreators(std::move(creators));
}

std::unique_ptr<grpc::experimental::ClientInterceptorFactoryInterface>
NewClientTraceFactory() {
  return std::make_unique<ClientFactory>();
}

std::shared_ptr<grpc::Channel> CreateObservedChannel(
    const std::string& target,
    const std::shared_ptr<grpc::ChannelCredentials>& creds,
    const grpc::ChannelArguments& args) {
  std::vector<
      std::unique_ptr<grpc::experimental::ClientInterceptorFactoryInterface>>
      creators;
  creators.push_back(NewClientTraceFactory());
  return grpc::experimental::CreateCustomChannelWithInterceptors(
      target, creds, args, std::move(creators));
}

TraceContext IncomingTraceContext(const grpc::ServerContextBase& context) {
  return FromMetadata(context.client_metadata());
}

}  // namespace cityos
