// Helpers shared by cityos tests: temp dirs, free ports, child processes.
#ifndef CITYOS_TESTS_TESTUTIL_TESTUTIL_H_
#define CITYOS_TESTS_TESTUTIL_TESTUTIL_H_

#include <sys/types.h>

#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace cityos::testing {

// A fresh directory under $TEST_TMPDIR or /tmp, removed by the destructor.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }
  // path() + "/" + name.
  std::string File(const std::string& name) const;

 private:
  std::string path_;
};

// Writes `content` to `path`, replacing it.
void WriteFile(const std::string& path, const std::string& content);
std::string ReadFile(const std::string& path);

// A loopback TCP socket bound to a free port and kept open (so nothing else
// takes the port) until Release() or destruction.
class HeldPort {
 public:
  HeldPort();
  ~HeldPort();
  int port() const { return port_; }
  void Release();

 private:
  int fd_ = -1;
  int port_ = 0;
};

// Permission bits of `path` (e.g. 0600), or -1 if it cannot be stat'ed.
int FileMode(const std::string& path);

// What a finished command printed and its exit code (128+signal if killed;
// -1 if it could not start or did not exit within the timeout).
struct CommandResult {
  int code = -1;
  std::string out, err;
};
// Runs argv[0] (a path) to completion, at most `timeout`.
CommandResult RunCommand(const std::vector<std::string>& argv, absl::Duration timeout);

// Sends this process's stderr (where cityos logs) to `path` while alive; on
// destruction restores it and copies what was captured back to it (so it
// stays visible in test output).
class StderrCapture {
 public:
  explicit StderrCapture(std::string path);
  ~StderrCapture();
  StderrCapture(const StderrCapture&) = delete;
  StderrCapture& operator=(const StderrCapture&) = delete;
  // Everything captured so far.
  std::string Text() const;
  // Polls until the captured text contains every needle; false at the
  // (generous) deadline. For asynchronous log lines; never a timing check.
  bool WaitFor(const std::vector<std::string>& needles,
               absl::Duration timeout = absl::Seconds(20)) const;

 private:
  std::string path_;
  int saved_ = -1;
};

// A child process with its stdout and stderr captured.
class Subprocess {
 public:
  // Starts argv[0] (a path) with the arguments; the child gets its own process
  // group.
  static absl::StatusOr<std::unique_ptr<Subprocess>> Start(std::vector<std::string> argv);
  ~Subprocess();  // SIGKILLs the child if still running

  pid_t pid() const { return pid_; }
  // Reads stdout until a line containing `needle` arrives; returns that line.
  // DEADLINE_EXCEEDED after `timeout`, or FAILED_PRECONDITION if the child
  // closes stdout first (the error carries what was printed).
  absl::StatusOr<std::string> WaitForLine(const std::string& needle,
                                          absl::Duration timeout);
  void Signal(int sig);
  // Waits for exit; returns the exit code, or 128+signal if killed.
  absl::StatusOr<int> Wait(absl::Duration timeout);
  // Everything the child printed so far on stdout / stderr.
  std::string stdout_text();
  std::string stderr_text();

 private:
  void Drain();  // reader thread: both pipes until EOF

  pid_t pid_ = -1;
  int out_fd_ = -1;
  int err_fd_ = -1;
  std::thread reader_;
  absl::Mutex mu_;
  std::string out_ ABSL_GUARDED_BY(mu_);
  std::string err_ ABSL_GUARDED_BY(mu_);
  bool out_closed_ ABSL_GUARDED_BY(mu_) = false;
  bool exited_ = false;
  int exit_code_ = 0;
};

}  // namespace cityos::testing

#endif  // CITYOS_TESTS_TESTUTIL_TESTUTIL_H_
