// The /metrics HTTP endpoint, spoken to through a plain socket.
#include <arpa/inet.h>
#include <errno.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include "cityos/metrics.h"
#include "cityos/observability.h"
#include "testutil.h"

namespace cityos {
namespace {

// Connects to 127.0.0.1:port; -1 if refused.
int Connect(int port) {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(static_cast<uint16_t>(port));
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    ::close(fd);
    return -1;
  }
  timeval tv{.tv_sec = 30,
             .tv_usec = 0};  // a hung server fails the test, not the run
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  return fd;
}

// Sends `request` bytes and reads until the server closes the connection.
std::string Exchange(int port, const std::string& request) {
  int fd = Connect(port);
  EXPECT_GE(fd, 0);
  if (fd < 0) return "";
  EXPECT_EQ(::send(fd, request.data(), request.size(), 0),
            static_cast<ssize_t>(request.size()));
  std::string out;
  char buf[4096];
  while (true) {
    ssize_t n = ::recv(fd, buf, sizeof(buf), 0);
    if (n <= 0) break;
    out.append(buf, n);
  }
  ::close(fd);
  return out;
}

std::string Get(int port, const std::string& target,
                const std::string& method = "GET") {
  return Exchange(
      port, method + " " + target +
                " HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
}

size_t Count(const std::string& haystack, const std::string& needle) {
  size_t n = 0;
  for (size_t p = haystack.find(needle); p != std::string::npos;
       p = haystack.find(needle, p + 1)) {
    ++n;
  }
  return n;
}

class MetricsHttpTest : public ::testing::Test {
 protected:
  void SetUp() override {
    registry_.AddCounterFamily("test_scrapes_total", "Scrapes.", {"job"})
        .WithLabels({"city"})
        .Add(7);
    auto server = MetricsHttpServer::Start("127.0.0.1:0", registry_);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    ASSERT_GT(server_->port(), 0);
  }

  MetricsRegistry registry_;
  std::unique_ptr<MetricsHttpServer> server_;
};

TEST_F(MetricsHttpTest, ServesTheExposition) {
  EXPECT_EQ(server_->address(), "127.0.0.1:" + std::to_string(server_->port()));
  std::string r = Get(server_->port(), "/metrics");
  EXPECT_EQ(r.rfind("HTTP/1.1 200 OK\r\n", 0), 0u) << r;
  EXPECT_NE(
      r.find("Content-Type: text/plain; version=0.0.4; charset=utf-8\r\n"),
      std::string::npos)
      << r;
  std::string body = r.substr(r.find("\r\n\r\n") + 4);
  EXPECT_EQ(body, registry_.RenderPrometheus());
  EXPECT_NE(body.find("test_scrapes_total{job=\"city\"} 7\n"),
            std::string::npos)
      << body;
}

TEST_F(MetricsHttpTest, EachScrapeSeesCurrentValues) {
  Gauge g = registry_.AddGauge("test_level", "Level.");
  g.Set(1);
  EXPECT_NE(Get(server_->port(), "/metrics").find("test_level 1\n"),
            std::string::npos);
  g.Set(42);
  EXPECT_NE(Get(server_->port(), "/metrics?name=x").find("test_level 42\n"),
            std::string::npos);
}

TEST_F(MetricsHttpTest, OtherPathsAndMethods) {
  EXPECT_EQ(Get(server_->port(), "/").rfind("HTTP/1.1 404 Not Found\r\n", 0),
            0u);
  EXPECT_EQ(
      Get(server_->port(), "/metricsx").rfind("HTTP/1.1 404 Not Found\r\n", 0),
      0u);
  std::string post = Get(server_->port(), "/metrics", "POST");
  EXPECT_EQ(post.rfind("HTTP/1.1 405 Method Not Allowed\r\n", 0), 0u) << post;
  EXPECT_NE(post.find("Allow: GET, HEAD\r\n"), std::string::npos) << post;
  std::string head = Get(server_->port(), "/metrics", "HEAD");
  EXPECT_EQ(head.rfind("HTTP/1.1 200 OK\r\n", 0), 0u) << head;
  EXPECT_EQ(head.find("test_scrapes_total"), std::string::npos) << head;
}

TEST_F(MetricsHttpTest, KeepAliveAnswersPipelinedRequests) {
  std::string r =
      Exchange(server_->port(),
               "GET /metrics HTTP/1.1\r\nHost: a\r\n\r\n"
               "GET /metrics HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
  EXPECT_EQ(Count(r, "HTTP/1.1 200 OK\r\n"), 2u) << r;
  EXPECT_EQ(Count(r, "test_scrapes_total{job=\"city\"} 7\n"), 2u) << r;
}

TEST_F(MetricsHttpTest, GarbageClosesTheConnection) {
  std::string r = Exchange(server_->port(), "NOT HTTP AT ALL\r\n\r\n");
  EXPECT_EQ(r.find("200 OK"), std::string::npos) << r;
  // And the server still serves.
  EXPECT_EQ(Get(server_->port(), "/metrics").rfind("HTTP/1.1 200 OK\r\n", 0),
            0u);
}

TEST_F(MetricsHttpTest, StopClosesTheListenerAndOpenConnections) {
  int idle = Connect(server_->port());
  ASSERT_GE(idle, 0);
  int port = server_->port();
  server_->Stop();
  server_->Stop();  // idempotent
  char c;
  ssize_t n =
      ::recv(idle, &c, 1, 0);  // closed by the server (reset if never accepted)
  EXPECT_TRUE(n == 0 || (n < 0 && errno == ECONNRESET)) << n << " " << errno;
  ::close(idle);
  EXPECT_EQ(Connect(port), -1);
}

TEST(MetricsHttpServer, RejectsBadAddresses) {
  MetricsRegistry r;
  for (const char* bad : {"", "9464", "127.0.0.1", "127.0.0.1:99999",
                          "example.org:9464", "127.0.0.1:x"}) {
    auto s = MetricsHttpServer::Start(bad, r);
    ASSERT_FALSE(s.ok()) << bad;
    EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument)
        << bad << s.status();
  }
}

TEST(MetricsHttpServer, PortInUseIsUnavailable) {
  MetricsRegistry r;
  testing::HeldPort held;
  auto s =
      MetricsHttpServer::Start("127.0.0.1:" + std::to_string(held.port()), r);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.status().code(), absl::StatusCode::kUnavailable) << s.status();
  EXPECT_NE(s.status().message().find("cannot listen"),
            absl::string_view::npos);
}

TEST(MetricsHttpServer, ListensOnIpv6LoopbackAndLocalhost) {
  MetricsRegistry r;
  auto local = MetricsHttpServer::Start("localhost:0", r);
  ASSERT_TRUE(local.ok()) << local.status();
  EXPECT_EQ(Get((*local)->port(), "/metrics").rfind("HTTP/1.1 200 OK\r\n", 0),
            0u);
  auto v6 = MetricsHttpServer::Start("[::1]:0", r);
  if (!v6.ok()) GTEST_SKIP() << "no IPv6 loopback here: " << v6.status();
  EXPECT_EQ((*v6)->address(), "[::1]:" + std::to_string((*v6)->port()));
}

}  // namespace
}  // namespace cityos
