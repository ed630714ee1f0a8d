// Crash test of the whole bus stack: a child process publishes through
// Bus::PublishAsync into an fsync stream from several threads and reports
// every acknowledged event to the parent over a pipe; the parent kills it with
// SIGKILL at a random moment, many times over the same data dir. After every
// restart, each acknowledged event must be stored exactly once, at the
// sequence it was acknowledged with, and sequences must be gap-free.
//
// The child is this binary re-executed with --crash-child (no fork of a
// threaded process).
#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <map>
#include <random>
#include <sstream>
#include <thread>

#include "cityos/bus.h"
#include "cityos/event.h"
#include "testutil.h"

namespace cityos {
namespace {

std::string g_self;

Principal Me() { return *Principal::FromSpiffeId("spiffe://test.city/org/grid/svc/crash"); }

StreamConfig CrashStream() {
  StreamConfig c;
  c.name = "crash";
  c.subjects = {"carbon.>"};
  c.durability = Durability::kFsync;
  c.segment_bytes = 256 << 10;  // small segments: crashes also hit roll-overs
  return c;
}

// Child: publish until killed; print "ACK <seq> <id>" per acknowledged event.
int ChildMain(const std::string& dir, int run) {
  auto bus = Bus::Open({.data_dir = dir});
  if (!bus.ok()) {
    std::fprintf(stderr, "child: open: %s\n", std::string(bus.status().message()).c_str());
    return 3;
  }
  if (!(*bus)->CreateStream(Me(), CrashStream()).ok()) return 4;
  std::mutex out_mu;
  std::atomic<int> next{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937 rng(run * 31 + t);
      while (true) {
        int n = 1 + static_cast<int>(rng() % 16);
        std::vector<event::v1::Event> batch;
        std::vector<std::string> ids;
        for (int i = 0; i < n; ++i) {
          std::string id = "r" + std::to_string(run) + "-" + std::to_string(next.fetch_add(1));
          auto e = EventBuilder()
                       .Id(id)
                       .Source("//crash")
                       .Type("test.v1.Crash")
                       .Subject("carbon.crash." + std::to_string(t))
                       .Classification(event::v1::CLASSIFICATION_INTERNAL)
                       .Owner("grid")
                       .TextData("text/plain", std::string(100 + rng() % 200, 'x'))
                       .Build();
          batch.push_back(*std::move(e));
          ids.push_back(id);
        }
        auto r = (*bus)->Publish(Me(), std::move(batch));
        if (!r.ok()) continue;
        std::lock_guard<std::mutex> lock(out_mu);
        for (size_t i = 0; i < ids.size(); ++i) {
          std::printf("ACK %llu %s\n", static_cast<unsigned long long>((*r)[i].sequence),
                      ids[i].c_str());
        }
        std::fflush(stdout);
      }
    });
  }
  for (auto& th : threads) th.join();
  return 0;
}

TEST(BusCrash, EveryAcknowledgedEventSurvivesSigkillExactlyOnce) {
  testing::TempDir dir;
  std::string bus_dir = dir.path() + "/bus";
  std::mt19937 rng(20261129);
  std::map<uint64_t, std::string> acked;  // sequence -> event id, over all runs
  constexpr int kRuns = 30;
  for (int run = 0; run < kRuns; ++run) {
    auto child = testing::Subprocess::Start(
        {g_self, "--crash-child", bus_dir, std::to_string(run)});
    ASSERT_TRUE(child.ok());
    // Let it get going (the first ack), then kill it at a random moment.
    auto first = (*child)->WaitForLine("ACK", absl::Seconds(30));
    ASSERT_TRUE(first.ok()) << first.status();
    absl::SleepFor(absl::Milliseconds(rng() % 150));
    (*child)->Signal(SIGKILL);
    auto code = (*child)->Wait(absl::Seconds(30));
    ASSERT_TRUE(code.ok());
    ASSERT_EQ(*code, 128 + SIGKILL) << (*child)->stderr_text();
    std::istringstream in((*child)->stdout_text());
    std::string tag, id;
    unsigned long long seq;
    while (in >> tag >> seq >> id) {
      if (tag != "ACK") continue;
      auto [it, inserted] = acked.emplace(seq, id);
      ASSERT_TRUE(inserted || it->second == id)
          << "sequence " << seq << " acknowledged twice: " << it->second << " and " << id;
    }

    // Restart: open, read everything, compare.
    auto bus = Bus::Open({.data_dir = bus_dir});
    ASSERT_TRUE(bus.ok()) << "run " << run << ": " << bus.status();
    auto sub = (*bus)->Subscribe(Me(), {.stream = "crash", .start = StartPosition::Earliest()});
    ASSERT_TRUE(sub.ok()) << sub.status();
    auto info = (*bus)->GetStream(Me(), "crash");
    ASSERT_TRUE(info.ok());
    std::map<std::string, uint64_t> seen_ids;
    uint64_t expect_seq = 1;
    while (expect_seq <= info->last_sequence) {
      std::vector<Delivery> got;
      ASSERT_TRUE((*sub)->Next(4096, absl::Seconds(10), &got).ok());
      ASSERT_FALSE(got.empty()) << "stuck at " << expect_seq;
      for (const Delivery& d : got) {
        ASSERT_EQ(d.message->sequence, expect_seq) << "gap in run " << run;
        ++expect_seq;
        auto [it, inserted] = seen_ids.emplace(d.message->event().id(), d.message->sequence);
        ASSERT_TRUE(inserted) << "event " << d.message->event().id() << " stored twice";
      }
    }
    for (const auto& [seq, id] : acked) {
      auto it = seen_ids.find(id);
      ASSERT_NE(it, seen_ids.end()) << "run " << run << ": acknowledged " << id << " is lost";
      ASSERT_EQ(it->second, seq) << "run " << run << ": " << id << " moved";
    }
    sub->reset();
    ASSERT_TRUE((*bus)->Close().ok());
  }
  EXPECT_GT(acked.size(), static_cast<size_t>(kRuns));
  std::printf("acknowledged events checked: %zu over %d kills\n", acked.size(), kRuns);
}

}  // namespace
}  // namespace cityos

int main(int argc, char** argv) {
  if (argc == 4 && std::string(argv[1]) == "--crash-child") {
    return cityos::ChildMain(argv[2], std::atoi(argv[3]));
  }
  cityos::g_self = "/proc/self/exe";
  char buf[4096];
  ssize_t n = readlink("/proc/self/exe", buf, sizeof(buf) - 1);
  if (n > 0) cityos::g_self.assign(buf, static_cast<size_t>(n));
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
