// Crash test for the audit log: a forked child appends from two threads and
// reports, through a pipe, the sequence each Flush returned (durable by
// then); the parent SIGKILLs it after a random short delay, reopens the log
// and checks that every flushed entry is there with its content, that the
// chain verifies (offline, with the .pub key, too), and that appending goes
// on from there. Repeated on the same directory.
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <random>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "audit_test_util.h"

namespace cityos {
namespace {

constexpr int kRuns = 12;

AuditOptions CrashOptions(const std::string& dir) {
  AuditOptions o;
  o.dir = dir;
  o.node = "crash";
  o.checkpoint_every = 64;
  o.checkpoint_interval = absl::Milliseconds(3);
  o.flush_interval = absl::Milliseconds(1);
  o.segment_bytes = 64 << 10;  // roll often, so kills land near rolls too
  return o;
}

// Reason of the n-th entry of thread t of run r: unique.
std::string Reason(int run, int t, uint64_t n) { return absl::StrCat("r", run, "t", t, "n", n); }

struct Ack {
  int32_t thread;
  uint32_t pad;
  uint64_t count;          // this thread's entries 0..count-1 were appended before
  uint64_t flushed_up_to;  // ... a Flush that returned this sequence
};

[[noreturn]] void ChildMain(const std::string& dir, int run, int ack_fd) {
  auto opened = AuditLog::Open(CrashOptions(dir));
  if (!opened.ok()) {
    std::fprintf(stderr, "child open failed: %s\n", opened.status().ToString().c_str());
    ::_exit(2);
  }
  AuditLog* log = opened->release();  // never destroyed: we get killed
  for (int t = 0; t < 2; ++t) {
    std::thread([log, run, t, ack_fd] {
      std::mt19937_64 rng(static_cast<uint64_t>(run) * 10 + t);
      for (uint64_t n = 0;;) {
        const uint64_t burst = 1 + rng() % 40;
        for (uint64_t i = 0; i < burst; ++i, ++n) {
          auto e = audit_test::MakeEntry("spiffe://demo.city/org/a/svc/crash",
                                         absl::StrCat("crash.t", t), Reason(run, t, n));
          e.set_data_subject(std::string(rng() % 200, 's'));
          log->Append(std::move(e));
        }
        auto flushed = log->Flush();
        if (!flushed.ok()) ::_exit(3);
        const Ack ack{t, 0, n, *flushed};
        if (::write(ack_fd, &ack, sizeof(ack)) != sizeof(ack)) ::_exit(4);
      }
    }).detach();
  }
  for (;;) ::pause();
}

std::vector<Ack> RunAndKill(const std::string& dir, int run, absl::Duration delay) {
  int fds[2];
  EXPECT_EQ(::pipe(fds), 0);
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::close(fds[0]);
    ChildMain(dir, run, fds[1]);
  }
  ::close(fds[1]);
  std::string buf;
  char chunk[4096];
  const absl::Time deadline = absl::Now() + delay;
  for (;;) {
    const absl::Duration left = deadline - absl::Now();
    if (left <= absl::ZeroDuration()) break;
    struct pollfd p = {fds[0], POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(absl::ToInt64Milliseconds(left)) + 1) > 0) {
      const ssize_t n = ::read(fds[0], chunk, sizeof(chunk));
      if (n <= 0) break;
      buf.append(chunk, static_cast<size_t>(n));
    }
  }
  ::kill(pid, SIGKILL);
  for (;;) {
    const ssize_t n = ::read(fds[0], chunk, sizeof(chunk));
    if (n <= 0) break;
    buf.append(chunk, static_cast<size_t>(n));
  }
  ::close(fds[0]);
  int status = 0;
  EXPECT_EQ(::waitpid(pid, &status, 0), pid);
  EXPECT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL)
      << "child exited on its own with status " << status;
  std::vector<Ack> acks(buf.size() / sizeof(Ack));
  EXPECT_EQ(buf.size() % sizeof(Ack), 0u);
  std::memcpy(acks.data(), buf.data(), acks.size() * sizeof(Ack));
  return acks;
}

TEST(AuditCrash, FlushedEntriesSurviveSigkill) {
  testing::TempDir tmp;
  const std::string dir = tmp.File("audit");
  std::mt19937 rng(20261129);
  uint64_t total_acks = 0, last = 0;
  for (int run = 0; run < kRuns; ++run) {
    SCOPED_TRACE(absl::StrCat("run ", run));
    std::vector<Ack> acks = RunAndKill(dir, run, absl::Milliseconds(20 + rng() % 150));
    total_acks += acks.size();
    auto log = AuditLog::Open(CrashOptions(dir));
    ASSERT_TRUE(log.ok()) << log.status();
    ASSERT_GE((*log)->last_sequence(), last);
    last = (*log)->last_sequence();
    // Every entry a thread appended before an acknowledged Flush is there.
    uint64_t max_flushed = 0;
    uint64_t need[2] = {0, 0};
    for (const Ack& a : acks) {
      max_flushed = std::max(max_flushed, a.flushed_up_to);
      need[a.thread] = std::max(need[a.thread], a.count);
    }
    ASSERT_GE(last, max_flushed);
    for (int t = 0; t < 2; ++t) {
      AuditQuery q;
      q.action = absl::StrCat("crash.t", t);
      q.limit = 1000000;
      auto page = (*log)->Query(q);
      ASSERT_TRUE(page.ok()) << page.status();
      std::vector<std::string> reasons;
      for (const auto& e : page->entries) {
        if (absl::StartsWith(e.reason(), absl::StrCat("r", run, "t"))) {
          reasons.push_back(e.reason());
        }
      }
      ASSERT_GE(reasons.size(), need[t]);
      for (uint64_t n = 0; n < reasons.size(); ++n) {
        ASSERT_EQ(reasons[n], Reason(run, t, n));  // in order, none lost
      }
    }
    auto v = (*log)->Verify(0, 0);
    ASSERT_TRUE(v.ok());
    ASSERT_TRUE(v->ok()) << v->message();
    ASSERT_EQ(v->entries_checked(), last);
    auto offline = VerifyAuditDir(dir, testing::ReadFile(dir + "/signing.key.pub"));
    ASSERT_TRUE(offline.ok());
    ASSERT_TRUE(offline->ok()) << offline->message();
    ASSERT_TRUE((*log)->Close().ok());
  }
  std::printf("audit crash test: %d kills, %lu acknowledged flushes, %lu entries\n", kRuns,
              static_cast<unsigned long>(total_acks), static_cast<unsigned long>(last));
  EXPECT_GT(total_acks, 0u);
}

}  // namespace
}  // namespace cityos
