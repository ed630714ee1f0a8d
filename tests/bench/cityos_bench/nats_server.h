// cityos-bench: a nats-server child process on a free loopback port, for the
// side-by-side peer figures.
#ifndef CITYOS_TESTS_BENCH_CITYOS_BENCH_NATS_SERVER_H_
#define CITYOS_TESTS_BENCH_CITYOS_BENCH_NATS_SERVER_H_

#include <sys/types.h>

#include <memory>
#include <string>

#include "absl/status/statusor.h"

namespace cityos::bench {

class NatsServer {
 public:
  // Finds the binary: `explicit_path` if set, else nats-server on $PATH, in
  // /usr/sbin or /usr/bin. NOT_FOUND when there is none.
  static absl::StatusOr<std::string> FindBinary(
      const std::string& explicit_path);

  // Starts `binary -a 127.0.0.1 -p <free port> -js -sd <dir>/store`, logging to
  // <dir>/nats-server.log, and waits (up to 10 s) until it accepts
  // connections. The child dies with the calling thread (PR_SET_PDEATHSIG), so
  // call it from the main thread. UNAVAILABLE when it does not come up (the
  // message carries the end of its log).
  static absl::StatusOr<std::unique_ptr<NatsServer>> Start(
      const std::string& binary, const std::string& dir);
  // Stops the server (SIGTERM, then SIGKILL after 5 s).
  ~NatsServer();

  // "nats://127.0.0.1:<port>".
  const std::string& url() const { return url_; }
  const std::string& version() const { return version_; }
  pid_t pid() const { return pid_; }

 private:
  NatsServer() = default;
  void Stop();

  pid_t pid_ = -1;
  std::string url_;
  std::string version_;
};

// The pid of the running nats-server (or -1), readable from a signal-handling
// thread that must kill it on an interrupted run.
pid_t RunningNatsServerPid();

}  // namespace cityos::bench

#endif  // CITYOS_TESTS_BENCH_CITYOS_BENCH_NATS_SERVER_H_
