#include "nats_server.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"

namespace cityos::bench {
namespace {

std::atomic<pid_t> g_running_pid{-1};

bool IsExecutable(const std::string& path) {
  return access(path.c_str(), X_OK) == 0;
}

// A port nothing listens on right now (bind to :0, read it, close).
absl::StatusOr<int> FreeLoopbackPort() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0)
    return absl::InternalError(absl::StrCat("socket: ", strerror(errno)));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  socklen_t len = sizeof(addr);
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
      getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    int e = errno;
    close(fd);
    return absl::InternalError(absl::StrCat("bind 127.0.0.1:0: ", strerror(e)));
  }
  close(fd);
  return ntohs(addr.sin_port);
}

// True when a TCP connection to 127.0.0.1:port succeeds and the server greets
// with its INFO line.
bool Accepts(int port) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return false;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(static_cast<uint16_t>(port));
  bool ok = connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
  if (ok) {
    timeval tv{1, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    char buf[8] = {};
    ok = recv(fd, buf, 4, MSG_WAITALL) == 4 && std::memcmp(buf, "INFO", 4) == 0;
  }
  close(fd);
  return ok;
}

std::string Tail(const std::string& path, size_t max_bytes) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  std::string s = ss.str();
  if (s.size() > max_bytes) s = s.substr(s.size() - max_bytes);
  return s;
}

// Output of `binary --version`, e.g. "nats-server: v2.9.10".
std::string VersionOf(const std::string& binary) {
  std::string cmd = absl::StrCat("'", binary, "' --version 2>&1");
  FILE* p = popen(cmd.c_str(), "r");
  if (p == nullptr) return "";
  std::array<char, 256> buf{};
  std::string out;
  while (fgets(buf.data(), buf.size(), p) != nullptr) out += buf.data();
  pclose(p);
  while (!out.empty() && (out.back() == '\n' || out.back() == '\r'))
    out.pop_back();
  return out;
}

}  // namespace

pid_t RunningNatsServerPid() { return g_running_pid.load(); }

absl::StatusOr<std::string> NatsServer::FindBinary(
    const std::string& explicit_path) {
  if (!explicit_path.empty()) {
    if (IsExecutable(explicit_path)) return explicit_path;
    return absl::NotFoundError(
        absl::StrCat("nats-server not executable: ", explicit_path));
  }
  std::vector<std::string> dirs;
  if (const char* path = std::getenv("PATH")) {
    for (absl::string_view d : absl::StrSplit(path, ':', absl::SkipEmpty())) {
      dirs.emplace_back(d);
    }
  }
  dirs.push_back("/usr/sbin");
  dirs.push_back("/usr/bin");
  for (const std::string& d : dirs) {
    std::string candidate = d + "/nats-server";
    if (IsExecutable(candidate)) return candidate;
  }
  return absl::NotFoundError(
      "nats-server not found on $PATH, in /usr/sbin or /usr/bin (Debian "
      "package "
      "nats-server)");
}

absl::StatusOr<std::unique_ptr<NatsServer>> NatsServer::Start(
    const std::string& binary, const std::string& dir) {
  std::string store = dir + "/store";
  std::string log = dir + "/nats-server.log";
  std::error_code ec;
  std::filesystem::create_directories(store, ec);
  if (ec)
    return absl::InternalError(
        absl::StrCat("mkdir ", store, ": ", ec.message()));
  absl::StatusOr<int> port = FreeLoopbackPort();
  if (!port.ok()) return port.status();

  std::string port_str = std::to_string(*port);
  std::vector<std::string> args = {binary,   "-a",  "127.0.0.1", "-p",
                                   port_str, "-js", "-sd",       store};
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);

  int log_fd =
      open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (log_fd < 0)
    return absl::InternalError(
        absl::StrCat("open ", log, ": ", strerror(errno)));
  pid_t parent = getpid();
  pid_t pid = fork();
  if (pid < 0) {
    close(log_fd);
    return absl::InternalError(absl::StrCat("fork: ", strerror(errno)));
  }
  if (pid == 0) {
    // Child: only async-signal-safe calls until exec.
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(127);
    int devnull = open("/dev/null", O_RDONLY);
    if (devnull >= 0) dup2(devnull, 0);
    dup2(log_fd, 1);
    dup2(log_fd, 2);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, nullptr);
    execv(argv[0], argv.data());
    _exit(127);
  }
  close(log_fd);

  auto server = std::unique_ptr<NatsServer>(new NatsServer());
  server->pid_ = pid;
  g_running_pid = pid;
  server->url_ = absl::StrCat("nats://127.0.0.1:", *port);
  server->version_ = VersionOf(binary);

  absl::Time deadline = absl::Now() + absl::Seconds(10);
  while (true) {
    int wstatus = 0;
    if (waitpid(pid, &wstatus, WNOHANG) == pid) {
      server->pid_ = -1;
      g_running_pid = -1;
      return absl::UnavailableError(
          absl::StrCat("nats-server exited at start (status ", wstatus,
                       "): ", Tail(log, 600)));
    }
    if (Accepts(*port)) return server;
    if (absl::Now() > deadline) {
      return absl::UnavailableError(
          absl::StrCat("nats-server did not accept connections on ",
                       server->url_, " within 10 s: ", Tail(log, 600)));
    }
    absl::SleepFor(absl::Milliseconds(20));
  }
}

NatsServer::~NatsServer() { Stop(); }

void NatsServer::Stop() {
  if (pid_ <= 0) return;
  kill(pid_, SIGTERM);
  absl::Time deadline = absl::Now() + absl::Seconds(5);
  int wstatus = 0;
  while (waitpid(pid_, &wstatus, WNOHANG) == 0) {
    if (absl::Now() > deadline) {
      kill(pid_, SIGKILL);
      waitpid(pid_, &wstatus, 0);
      break;
    }
    absl::SleepFor(absl::Milliseconds(10));
  }
  pid_ = -1;
  g_running_pid = -1;
}

}  // namespace cityos::bench
