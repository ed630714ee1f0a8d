// Crash test for the durable log: a forked child appends in kFsync mode from
// several threads and reports every acknowledged batch through a pipe; the
// parent SIGKILLs it after a random short delay, reopens the log and checks
// that every acknowledged record is present exactly once, at its sequence,
// with its exact payload, and that sequences are gap-free from 1. Repeated
// many times on the same directory. The child is a fork of this process (no
// helper binary), so the test needs no compile definitions.
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <random>
#include <semaphore>
#include <string>
#include <thread>
#include <unordered_set>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "log/log_format.h"
#include "log/segmented_log.h"

namespace cityos::log_internal {
namespace {

constexpr int kRuns = 36;
constexpr int kChildThreads = 4;
constexpr int kInFlightPerThread = 4;

// One acknowledged batch as reported by the child.
struct Ack {
  uint64_t first_sequence;
  uint64_t count;
  uint64_t hash;  // BatchHash of the payloads
};

uint64_t Fnv1a(uint64_t h, const void* data, size_t n) {
  const auto* p = static_cast<const unsigned char*>(data);
  for (size_t i = 0; i < n; ++i) {
    h ^= p[i];
    h *= 0x100000001b3ULL;
  }
  return h;
}

constexpr uint64_t kFnvBasis = 0xcbf29ce484222325ULL;

// Hash of a batch: each payload's length and bytes, in order.
uint64_t ExtendBatchHash(uint64_t h, std::string_view payload) {
  const uint64_t len = payload.size();
  h = Fnv1a(h, &len, sizeof(len));
  return Fnv1a(h, payload.data(), payload.size());
}

LogOptions CrashOptions(const std::string& dir) {
  LogOptions o;
  o.dir = dir;
  o.durability = Durability::kFsync;
  o.segment_bytes = 256 << 10;  // roll often, so kills land near rolls too
  o.index_interval_bytes = 1024;
  return o;
}

[[noreturn]] void ChildMain(const std::string& dir, int run, int ack_fd) {
  auto opened = SegmentedLog::Open(CrashOptions(dir));
  if (!opened.ok()) {
    std::fprintf(stderr, "child open failed: %s\n",
                 opened.status().ToString().c_str());
    ::_exit(2);
  }
  SegmentedLog* log = opened->release();  // never destroyed: we get killed
  for (int t = 0; t < kChildThreads; ++t) {
    std::thread([log, run, t, ack_fd] {
      std::mt19937_64 rng(static_cast<uint64_t>(run) * 1000 + t);
      auto window =
          std::make_shared<std::counting_semaphore<>>(kInFlightPerThread);
      for (uint64_t n = 0;; ++n) {
        // Mostly small batches; now and then a large one, so that groups
        // of tens of KB are in write(2) when the kill lands.
        const size_t count = rng() % 32 == 0 ? 50 + rng() % 150 : 1 + rng() % 8;
        std::vector<std::string> payloads;
        uint64_t hash = kFnvBasis;
        for (size_t i = 0; i < count; ++i) {
          // A unique id, then random bytes (any byte value).
          std::string p =
              absl::StrCat("id:r", run, "t", t, "n", n, "i", i, ":");
          const size_t extra = rng() % 300;
          for (size_t k = 0; k < extra; ++k)
            p.push_back(static_cast<char>(rng()));
          hash = ExtendBatchHash(hash, p);
          payloads.push_back(std::move(p));
        }
        std::vector<std::string_view> views(payloads.begin(), payloads.end());
        window->acquire();
        log->AppendAsync(views, [=](absl::StatusOr<uint64_t> first) {
          if (!first.ok()) {
            std::fprintf(stderr, "child append failed: %s\n",
                         first.status().ToString().c_str());
            ::_exit(3);
          }
          const Ack ack{*first, count, hash};
          // Under PIPE_BUF: atomic. Sent only after fdatasync.
          if (::write(ack_fd, &ack, sizeof(ack)) != sizeof(ack)) ::_exit(4);
          window->release();
        });
      }
    }).detach();
  }
  for (;;) ::pause();
}

void ParseAcks(std::string& buf, std::vector<Ack>* acks) {
  size_t i = 0;
  for (; i + sizeof(Ack) <= buf.size(); i += sizeof(Ack)) {
    Ack a;
    std::memcpy(&a, buf.data() + i, sizeof(a));
    acks->push_back(a);
  }
  buf.erase(0, i);
}

// Runs one child, kills it after `delay`, returns the acks it sent.
std::vector<Ack> RunAndKill(const std::string& dir, int run,
                            absl::Duration delay) {
  int fds[2];
  EXPECT_EQ(::pipe(fds), 0);
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::close(fds[0]);
    ChildMain(dir, run, fds[1]);
  }
  EXPECT_GT(pid, 0);
  ::close(fds[1]);
  std::vector<Ack> acks;
  std::string buf;
  char chunk[4096];
  const absl::Time deadline = absl::Now() + delay;
  bool eof = false;
  while (!eof) {
    const absl::Duration left = deadline - absl::Now();
    if (left <= absl::ZeroDuration()) break;
    struct pollfd p = {fds[0], POLLIN, 0};
    const int r =
        ::poll(&p, 1, static_cast<int>(absl::ToInt64Milliseconds(left)) + 1);
    if (r > 0) {
      const ssize_t n = ::read(fds[0], chunk, sizeof(chunk));
      if (n <= 0) eof = true;
      if (n > 0) buf.append(chunk, static_cast<size_t>(n));
    }
  }
  ::kill(pid, SIGKILL);
  for (;;) {  // drain what was sent before the kill
    const ssize_t n = ::read(fds[0], chunk, sizeof(chunk));
    if (n <= 0) break;
    buf.append(chunk, static_cast<size_t>(n));
  }
  ::close(fds[0]);
  int status = 0;
  EXPECT_EQ(::waitpid(pid, &status, 0), pid);
  EXPECT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL)
      << "child exited on its own with status " << status
      << " (see its stderr above)";
  ParseAcks(buf, &acks);
  EXPECT_TRUE(buf.empty()) << "partial ack message";
  return acks;
}

TEST(LogCrash, AcknowledgedRecordsSurviveSigkill) {
  std::string tmpl = testing::TempDir() + "/cityos_crash_XXXXXX";
  ASSERT_NE(::mkdtemp(tmpl.data()), nullptr);
  const std::string dir = tmpl;
  std::mt19937 rng(20261129);
  std::vector<Ack> all_acks;
  uint32_t truncations = 0;
  uint64_t last_sequence = 0;
  for (int run = 0; run < kRuns; ++run) {
    SCOPED_TRACE(absl::StrCat("run ", run));
    const absl::Duration delay = absl::Milliseconds(5 + rng() % 120);
    std::vector<Ack> acks = RunAndKill(dir, run, delay);
    all_acks.insert(all_acks.end(), acks.begin(), acks.end());

    auto opened = SegmentedLog::Open(CrashOptions(dir));
    ASSERT_TRUE(opened.ok()) << opened.status();
    SegmentedLog& log = **opened;
    if (log.recovery_info().truncated) ++truncations;

    // Read everything: gap-free from 1, each id exactly once.
    std::vector<std::string> payloads;  // index: sequence - 1
    std::unordered_set<std::string> ids;
    auto reader = *log.NewReader(1);
    LogRecord rec;
    for (;;) {
      absl::StatusOr<bool> more = reader->Next(&rec);
      ASSERT_TRUE(more.ok()) << more.status();
      if (!*more) break;
      ASSERT_EQ(rec.sequence, payloads.size() + 1);
      const size_t colon = rec.payload.find(':', 3);
      ASSERT_NE(colon, std::string::npos);
      ASSERT_TRUE(ids.insert(rec.payload.substr(0, colon)).second)
          << "duplicate record " << rec.payload.substr(0, colon);
      payloads.push_back(rec.payload);
    }
    ASSERT_EQ(log.State().last_sequence, payloads.size());
    last_sequence = payloads.size();
    // Every acknowledged batch, from this run and every earlier one.
    for (const Ack& a : all_acks) {
      ASSERT_GE(a.first_sequence, 1u);
      ASSERT_LE(a.first_sequence + a.count - 1, payloads.size())
          << "acknowledged batch at " << a.first_sequence << " lost";
      uint64_t h = kFnvBasis;
      for (uint64_t s = a.first_sequence; s < a.first_sequence + a.count; ++s) {
        h = ExtendBatchHash(h, payloads[s - 1]);
      }
      ASSERT_EQ(h, a.hash) << "batch at " << a.first_sequence << " differs";
    }
    ASSERT_TRUE(log.Close().ok());
  }
  std::printf(
      "crash test: %d kills, %zu acknowledged batches, %lu records, "
      "%u torn tails truncated\n",
      kRuns, all_acks.size(), static_cast<unsigned long>(last_sequence),
      truncations);
  EXPECT_GT(all_acks.size(), 0u);
  std::error_code ec;
  std::filesystem::remove_all(dir, ec);
}

}  // namespace
}  // namespace cityos::log_internal
