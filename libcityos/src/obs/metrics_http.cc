// The /metrics HTTP endpoint: Boost.Beast on one thread of its own, plain
// HTTP/1.1. See cityos/observability.h.
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>

#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"
#include "cityos/logging.h"
#include "cityos/observability.h"
#include "core/strings.h"

namespace cityos {
namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;

constexpr char kContentType[] = "text/plain; version=0.0.4; charset=utf-8";
constexpr auto kIdleTimeout = std::chrono::seconds(30);

// One connection: read a request, answer, repeat while keep-alive.
class Session : public std::enable_shared_from_this<Session> {
 public:
  Session(tcp::socket socket, MetricsRegistry& registry)
      : stream_(std::move(socket)), registry_(registry) {}

  void Read() {
    parser_.emplace();
    parser_->header_limit(16 * 1024);
    parser_->body_limit(4 * 1024);
    stream_.expires_after(kIdleTimeout);
    http::async_read(stream_, buffer_, *parser_,
                     [self = shared_from_this()](beast::error_code ec, size_t) {
                       self->OnRead(ec);
                     });
  }

 private:
  void OnRead(beast::error_code ec) {
    if (ec) {  // end of stream, timeout, malformed request: just close
      beast::error_code ignored;
      stream_.socket().shutdown(tcp::socket::shutdown_both, ignored);
      return;
    }
    http::request<http::string_body> req = parser_->release();
    Answer(req);
    stream_.expires_after(kIdleTimeout);
    http::async_write(
        stream_, response_,
        [self = shared_from_this()](beast::error_code ec, size_t) {
          if (!ec && self->response_.keep_alive()) {
            self->Read();
          } else {
            beast::error_code ignored;
            self->stream_.socket().shutdown(tcp::socket::shutdown_both,
                                            ignored);
          }
        });
  }

  void Answer(const http::request<http::string_body>& req) {
    std::string_view target(req.target().data(), req.target().size());
    target = target.substr(0, target.find('?'));
    response_ = {};
    response_.version(req.version());
    response_.keep_alive(req.keep_alive());
    response_.set(http::field::server, "cityos");
    if (target != "/metrics") {
      response_.result(http::status::not_found);
      response_.set(http::field::content_type, "text/plain; charset=utf-8");
      response_.body() = "not found: metrics are served at /metrics\n";
    } else if (req.method() != http::verb::get &&
               req.method() != http::verb::head) {
      response_.result(http::status::method_not_allowed);
      response_.set(http::field::allow, "GET, HEAD");
      response_.set(http::field::content_type, "text/plain; charset=utf-8");
      response_.body() = "method not allowed: use GET\n";
    } else {
      response_.result(http::status::ok);
      response_.set(http::field::content_type, kContentType);
      response_.body() = registry_.RenderPrometheus();
    }
    response_.prepare_payload();
    if (req.method() == http::verb::head)
      response_.body().clear();  // length stays
  }

  beast::tcp_stream stream_;
  MetricsRegistry& registry_;
  beast::flat_buffer buffer_;
  std::optional<http::request_parser<http::string_body>> parser_;
  http::response<http::string_body> response_;
};

class MetricsHttpServerImpl final : public MetricsHttpServer {
 public:
  explicit MetricsHttpServerImpl(MetricsRegistry& registry)
      : registry_(registry),
        ioc_(std::make_unique<asio::io_context>(1)),
        acceptor_(std::make_unique<tcp::acceptor>(*ioc_)),
        retry_(std::make_unique<asio::steady_timer>(*ioc_)) {}

  ~MetricsHttpServerImpl() override { Stop(); }

  absl::Status Listen(const asio::ip::address& address, uint16_t port,
                      std::string_view listen) {
    beast::error_code ec;
    tcp::endpoint endpoint(address, port);
    acceptor_->open(endpoint.protocol(), ec);
    if (!ec) acceptor_->set_option(asio::socket_base::reuse_address(true), ec);
    if (!ec) acceptor_->bind(endpoint, ec);
    if (!ec) acceptor_->listen(asio::socket_base::max_listen_connections, ec);
    if (ec) {
      return absl::UnavailableError(absl::StrFormat(
          "metrics: cannot listen on %s: %s", listen, ec.message()));
    }
    tcp::endpoint bound = acceptor_->local_endpoint(ec);
    port_ = bound.port();
    address_ = address.is_v6()
                   ? absl::StrFormat("[%s]:%d", address.to_string(), port_)
                   : absl::StrFormat("%s:%d", address.to_string(), port_);
    Accept();
    thread_ = std::thread([this] { ioc_->run(); });
    return absl::OkStatus();
  }

  int port() const override { return port_; }
  std::string address() const override { return address_; }

  void Stop() override {
    std::lock_guard<std::mutex> lock(stop_mu_);
    if (stopped_) return;
    stopped_ = true;
    ioc_->stop();
    if (thread_.joinable()) thread_.join();
    // Destroying the io_context destroys the pending handlers, and with them
    // the sessions, which closes their sockets.
    retry_.reset();
    acceptor_.reset();
    ioc_.reset();
  }

 private:
  void Accept() {
    acceptor_->async_accept([this](beast::error_code ec, tcp::socket socket) {
      if (ec == asio::error::operation_aborted) return;
      if (ec) {
        // E.g. out of file descriptors: say so, and try again a little later.
        LogWarn("metrics", "accept failed", {{"error", ec.message()}});
        retry_->expires_after(std::chrono::milliseconds(200));
        retry_->async_wait([this](beast::error_code wec) {
          if (!wec) Accept();
        });
        return;
      }
      std::make_shared<Session>(std::move(socket), registry_)->Read();
      Accept();
    });
  }

  MetricsRegistry& registry_;
  std::unique_ptr<asio::io_context> ioc_;
  std::unique_ptr<tcp::acceptor> acceptor_;
  std::unique_ptr<asio::steady_timer> retry_;
  std::thread thread_;
  int port_ = 0;
  std::string address_;
  std::mutex stop_mu_;
  bool stopped_ = false;
};

}  // namespace

absl::StatusOr<std::unique_ptr<MetricsHttpServer>> MetricsHttpServer::Start(
    std::string_view listen, MetricsRegistry& registry) {
  size_t colon = listen.rfind(':');
  uint32_t port = 0;
  if (colon == std::string_view::npos || colon == 0 ||
      !absl::SimpleAtoi(AV(listen.substr(colon + 1)), &port) || port > 65535) {
    return absl::InvalidArgumentError(
        absl::StrFormat("metrics listen address \"%s\" is not host:port (e.g. "
                        "127.0.0.1:9464; port 0 picks "
                        "a free port)",
                        listen));
  }
  std::string host(listen.substr(0, colon));
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  if (host == "localhost") host = "127.0.0.1";
  beast::error_code ec;
  asio::ip::address address = asio::ip::make_address(host, ec);
  if (ec) {
    return absl::InvalidArgumentError(
        absl::StrFormat("metrics listen address \"%s\": host \"%s\" is not an "
                        "IP address or localhost",
                        listen, host));
  }
  auto server = std::make_unique<MetricsHttpServerImpl>(registry);
  if (absl::Status s =
          server->Listen(address, static_cast<uint16_t>(port), listen);
      !s.ok()) {
    return s;
  }
  return std::unique_ptr<MetricsHttpServer>(std::move(server));
}

}  // namespace cityos
