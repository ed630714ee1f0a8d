// File: cityos/observability.h
//
// Wiring metrics and traces into gRPC servers and channels, and serving the
// metrics over HTTP for Prometheus.
//
//   grpc::ServerBuilder builder;
//   cityos::AddServerObservability(builder, cityos::MetricsRegistry::Global());
//   ... builder.BuildAndStart();
//
//   auto channel = cityos::CreateObservedChannel(target, creds,
//   grpc::ChannelArguments());
//
//   auto http = cityos::MetricsHttpServer::Start("127.0.0.1:9464",
//                                                cityos::MetricsRegistry::Global());
//   // curl http://127.0.0.1:9464/metrics
//
// Server metrics, per RPC (method is "package.Service/Method", code the gRPC
// status name such as "OK" or "NOT_FOUND"):
//   cityos_grpc_server_handled_total{method,code}   counter
//   cityos_grpc_server_handling_seconds{method}     histogram (LatencyBuckets)
//
// Trace context: the server reads `traceparent` from the client metadata (or
// starts a new trace when it is absent or invalid), and makes a child of it
// the current TraceContext of the handler's thread, for synchronous
// (grpc::Service) handlers of every streaming kind. Async and callback
// handlers run on other threads: they get no current context and should open
// their own scope with IncomingTraceContext(). Channels from
// CreateObservedChannel send the current context of the thread that starts
// the call (a new span per call, or a new trace when there is none).
// `tracestate` is not propagated.
#ifndef CITYOS_OBSERVABILITY_H_
#define CITYOS_OBSERVABILITY_H_

#include <grpcpp/grpcpp.h>
#include <grpcpp/support/client_interceptor.h>
#include <grpcpp/support/server_interceptor.h>

#include <memory>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "cityos/metrics.h"
#include "cityos/trace.h"

namespace cityos {

// The metadata key of the W3C trace context.
inline constexpr char kTraceparentKey[] = "traceparent";

// A server interceptor factory that records the metrics above in `registry`
// and sets up the trace context. `registry` must outlive every server built
// with it. Use this to combine with other interceptors (put it first, so that
// it measures them too); otherwise call AddServerObservability.
std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>
NewServerObservabilityFactory(MetricsRegistry& registry);

// Installs NewServerObservabilityFactory(registry) as the builder's
// interceptors. Call before BuildAndStart(). Replaces interceptors set
// earlier with SetInterceptorCreators (gRPC keeps one list): a server with
// more interceptors should build the list itself.
void AddServerObservability(
    grpc::ServerBuilder& builder,
    MetricsRegistry& registry = MetricsRegistry::Global());

// A client interceptor factory that adds `traceparent` to every call made
// through the channel, unless the caller already set one in its ClientContext.
std::unique_ptr<grpc::experimental::ClientInterceptorFactoryInterface>
NewClientTraceFactory();

// grpc::CreateCustomChannel with NewClientTraceFactory() installed.
std::shared_ptr<grpc::Channel> CreateObservedChannel(
    const std::string& target,
    const std::shared_ptr<grpc::ChannelCredentials>& creds,
    const grpc::ChannelArguments& args = grpc::ChannelArguments());

// The trace context the caller sent (its `traceparent`), as a child span of
// it; or a new trace when it sent none or an invalid one. For async and
// callback handlers, which get no current context from the interceptor.
TraceContext IncomingTraceContext(const grpc::ServerContextBase& context);

// Serves `GET /metrics` (also with a query string) over plain HTTP/1.1 with
// the registry's exposition text, `Content-Type: text/plain; version=0.0.4;
// charset=utf-8`; HEAD likewise without a body; other methods on /metrics get
// 405, other paths 404. Keep-alive is honoured; an idle connection is closed
// after 30 s. There is no TLS and no authentication: listen on loopback (the
// default of `node.metrics_listen`) or on a network only the scraper reaches.
class MetricsHttpServer {
 public:
  // Binds `listen` ("host:port", host an IPv4 or bracketed IPv6 literal or
  // "localhost"; port 0 picks a free port) and serves from a thread of its
  // own. `registry` must outlive the server. Errors: INVALID_ARGUMENT (not
  // host:port), UNAVAILABLE (cannot bind).
  static absl::StatusOr<std::unique_ptr<MetricsHttpServer>> Start(
      std::string_view listen, MetricsRegistry& registry);
  // Stops serving (as Stop()).
  virtual ~MetricsHttpServer() = default;

  // The bound port, and "host:port" with it.
  virtual int port() const = 0;
  virtual std::string address() const = 0;

  // Closes the listener and every open connection and joins the thread.
  // Idempotent; do not call from a metrics callback.
  virtual void Stop() = 0;
};

}  // namespace cityos

#endif  // CITYOS_OBSERVABILITY_H_
