// The live subscriber queue (bus/live_queue.h): bounded, order-keeping, exact
// missed counts, and a hand-off between threads that never loses a wake-up.
// No test here asserts on timing: the timeouts are far longer than anything
// needs, so a lost wake-up shows as a missing event, not as a slow run.
#include "bus/live_queue.h"

#include <gtest/gtest.h>

#include "bus/message_pool.h"

#include <atomic>
#include <chrono>
#include <memory>
#include <set>
#include <thread>
#include <vector>

#include "cityos/bus.h"

namespace cityos::bus_internal {
namespace {

MessagePtr Msg(uint64_t seq) {
  return std::make_shared<const Message>(std::string(), seq, absl::UnixEpoch(),
                                         static_cast<const event::v1::Event*>(nullptr));
}

std::vector<MessagePtr> Msgs(uint64_t first, size_t n) {
  std::vector<MessagePtr> v;
  for (size_t i = 0; i < n; ++i) v.push_back(Msg(first + i));
  return v;
}

TEST(LiveQueueTest, KeepsOrderAcrossTheRingsWrapAndCountsWhatDidNotFit) {
  LiveQueue q(5);
  std::vector<Delivery> out;
  uint64_t missed = 99;
  uint64_t next_push = 1, next_pop = 1;
  // Many rounds of 3 in, 3 out move the ring's start all the way round.
  for (int round = 0; round < 20; ++round) {
    auto in = Msgs(next_push, 3);
    next_push += 3;
    q.Push(absl::MakeSpan(in));
    out.clear();
    ASSERT_TRUE(q.Pop(10, absl::ZeroDuration(), &out, &missed).ok());
    EXPECT_EQ(missed, 0u);
    ASSERT_EQ(out.size(), 3u);
    for (const Delivery& d : out) EXPECT_EQ(d.message->sequence, next_pop++);
  }
  // 8 into 5 slots: the first 5 stay, the last 3 are missed.
  auto in = Msgs(next_push, 8);
  q.Push(absl::MakeSpan(in));
  EXPECT_EQ(q.depth(), 5u);
  // What did not fit stays with the caller (the fan-out frees it).
  EXPECT_EQ(in[4], nullptr);
  EXPECT_NE(in[5], nullptr);
  out.clear();
  ASSERT_TRUE(q.Pop(2, absl::ZeroDuration(), &out, &missed).ok());
  EXPECT_EQ(missed, 3u);
  ASSERT_EQ(out.size(), 2u);
  EXPECT_EQ(out[0].message->sequence, next_push);
  // Room for 2 again: 2 of 4 fit.
  auto more = Msgs(next_push + 8, 4);
  q.Push(absl::MakeSpan(more));
  out.clear();
  ASSERT_TRUE(q.Pop(100, absl::ZeroDuration(), &out, &missed).ok());
  EXPECT_EQ(missed, 2u);
  ASSERT_EQ(out.size(), 5u);
  std::vector<uint64_t> seqs;
  for (const Delivery& d : out) seqs.push_back(d.message->sequence);
  EXPECT_EQ(seqs, (std::vector<uint64_t>{next_push + 2, next_push + 3, next_push + 4,
                                         next_push + 8, next_push + 9}));
  EXPECT_EQ(q.depth(), 0u);
}

TEST(LiveQueueTest, WithoutAMissedOutputTheCountWaitsForTheNextCallerThatAsks) {
  LiveQueue q(1);
  auto in = Msgs(1, 3);
  q.Push(absl::MakeSpan(in));
  std::vector<Delivery> out;
  ASSERT_TRUE(q.Pop(10, absl::ZeroDuration(), &out, nullptr).ok());
  ASSERT_EQ(out.size(), 1u);
  uint64_t missed = 0;
  out.clear();
  ASSERT_TRUE(q.Pop(10, absl::Seconds(30), &out, &missed).ok());
  EXPECT_EQ(missed, 2u);
  EXPECT_TRUE(out.empty());
}

// A reader that does not ask for the missed count is not woken by it: after
// a drop, with the queue drained, Pop(nullptr) really waits (before the fix
// the pending count made the queue look ready, so such a reader returned at
// once, empty, in a loop that never slept).
TEST(LiveQueueTest, WithoutAMissedOutputAPendingCountDoesNotEndTheWait) {
  LiveQueue q(1);
  auto in = Msgs(1, 3);
  q.Push(absl::MakeSpan(in));  // 1 queued, 2 dropped
  std::vector<Delivery> out;
  ASSERT_TRUE(q.Pop(10, absl::ZeroDuration(), &out, nullptr).ok());
  ASSERT_EQ(out.size(), 1u);
  // Deterministic: the call found nothing ready and waited (to its timeout).
  out.clear();
  ASSERT_TRUE(q.Pop(10, absl::Milliseconds(1), &out, nullptr).ok());
  EXPECT_TRUE(out.empty());
  EXPECT_EQ(q.waits(), 1u);
  // And a waiting reader returns with the next event, not before it.
  std::atomic<bool> waiting{false};
  std::thread publisher([&] {
    while (!waiting.load()) std::this_thread::yield();
    std::this_thread::sleep_for(std::chrono::milliseconds(20));  // not asserted on
    auto more = Msgs(4, 1);
    q.Push(absl::MakeSpan(more));
  });
  out.clear();
  waiting.store(true);
  ASSERT_TRUE(q.Pop(10, absl::Seconds(60), &out, nullptr).ok());
  publisher.join();
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(out[0].message->sequence, 4u);
  EXPECT_EQ(q.waits(), 2u);
  // The count was kept for a caller that asks.
  uint64_t missed = 0;
  out.clear();
  ASSERT_TRUE(q.Pop(10, absl::Seconds(30), &out, &missed).ok());
  EXPECT_EQ(missed, 2u);
  EXPECT_TRUE(out.empty());
}

TEST(LiveQueueTest, CloseDiscardsQueuedEventsAndWakesABlockedReader) {
  LiveQueue q(16);
  auto in = Msgs(1, 4);
  std::weak_ptr<const Message> first = in[0];
  q.Push(absl::MakeSpan(in));
  q.Close();
  EXPECT_TRUE(first.expired());  // the queue let go of it
  std::vector<Delivery> out;
  EXPECT_EQ(q.Pop(10, absl::Seconds(30), &out, nullptr).code(), absl::StatusCode::kCancelled);
  EXPECT_TRUE(out.empty());
  auto late = Msgs(5, 1);
  q.Push(absl::MakeSpan(late));
  EXPECT_EQ(q.depth(), 0u);

  // A reader blocked with a long timeout returns when another thread closes.
  LiveQueue blocked(16);
  absl::Status got;
  std::thread reader([&] {
    std::vector<Delivery> o;
    got = blocked.Pop(10, absl::Hours(1), &o, nullptr);
  });
  absl::SleepFor(absl::Milliseconds(20));  // most likely asleep by now; either way works
  blocked.Close();
  reader.join();
  EXPECT_EQ(got.code(), absl::StatusCode::kCancelled);
}

TEST(LiveQueueTest, TerminateWakesABlockedReaderWithTheReason) {
  LiveQueue q(16);
  absl::Status got;
  std::thread reader([&] {
    std::vector<Delivery> o;
    got = q.Pop(10, absl::Hours(1), &o, nullptr);
  });
  absl::SleepFor(absl::Milliseconds(20));
  q.Terminate(absl::PermissionDeniedError("consent withdrawn"));
  reader.join();
  EXPECT_EQ(got.code(), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(got.message(), "consent withdrawn");
}

// Publish one, wait for it, many times: the reader finds the queue empty
// almost every time and goes to spin or sleep just as the publisher pushes.
// A lost wake-up leaves the reader asleep with an event queued; the reader's
// timeout (far longer than the whole test needs) then returns nothing and the
// test fails on the missing event rather than on a time.
void PingPong(int readers_in_process, absl::Duration reader_spin = absl::Microseconds(50)) {
  // Other queues with blocked readers change the spin policy (more readers
  // than spare CPUs: no spinning, straight to sleep).
  std::vector<std::unique_ptr<LiveQueue>> others;
  std::vector<std::thread> idle;
  for (int i = 1; i < readers_in_process; ++i) {
    others.push_back(std::make_unique<LiveQueue>(4));
    idle.emplace_back([q = others.back().get()] {
      std::vector<Delivery> o;
      while (q->Pop(1, absl::Hours(1), &o, nullptr).ok()) {
      }
    });
  }
  LiveQueue ping(4, Counter(), reader_spin), pong(4, Counter(), reader_spin);
  constexpr int kRounds = 20000;
  std::atomic<int> lost{0};
  std::thread echo([&] {
    std::vector<Delivery> o;
    for (int i = 0; i < kRounds; ++i) {
      o.clear();
      if (!ping.Pop(1, absl::Seconds(60), &o, nullptr).ok() || o.size() != 1) {
        ++lost;
        return;
      }
      std::vector<MessagePtr> back{std::move(o[0].message)};
      pong.Push(absl::MakeSpan(back));
    }
  });
  std::vector<Delivery> o;
  for (int i = 0; i < kRounds; ++i) {
    std::vector<MessagePtr> m{Msg(static_cast<uint64_t>(i))};
    ping.Push(absl::MakeSpan(m));
    o.clear();
    uint64_t missed = 0;
    absl::Status s = pong.Pop(1, absl::Seconds(60), &o, &missed);
    if (!s.ok() || missed != 0 || o.size() != 1 ||
        o[0].message->sequence != static_cast<uint64_t>(i)) {
      ADD_FAILURE() << "round " << i << ": " << s << ", " << o.size()
                    << " events, missed " << missed << " (no event after 60 s: lost wake-up)";
      ping.Close();  // ends the echo thread
      break;
    }
  }
  echo.join();
  EXPECT_EQ(lost.load(), 0);
  for (auto& q : others) q->Close();
  for (std::thread& t : idle) t.join();
}

TEST(LiveQueueTest, PublishOneWaitOneNeverLosesAWakeUpWhenReadersMaySpin) { PingPong(1); }

TEST(LiveQueueTest, PublishOneWaitOneNeverLosesAWakeUpWhenReadersSleep) { PingPong(8); }

TEST(LiveQueueTest, PublishOneWaitOneNeverLosesAWakeUpWhenSpinningIsOff) {
  PingPong(1, absl::ZeroDuration());
}

// reader_spin = 0 never spins: every wait goes straight to sleep.
TEST(LiveQueueTest, AZeroReaderSpinNeverSpins) {
  LiveQueue q(4, Counter(), absl::ZeroDuration());
  std::vector<Delivery> out;
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(q.Pop(1, absl::Milliseconds(1), &out, nullptr).ok());
  }
  EXPECT_TRUE(out.empty());
  EXPECT_EQ(q.waits(), 3u);
  EXPECT_EQ(q.spins(), 0u);
}

TEST(LiveQueueTest, UsableCpusIsTheAffinityMasksCount) {
  const int cpus = LiveQueueSpin::UsableCpus();
  EXPECT_GE(cpus, 1);
  EXPECT_EQ(LiveQueueSpin::MaxSpinners(), cpus - 1);
  const unsigned hw = std::thread::hardware_concurrency();
  if (hw > 0) {
    EXPECT_LE(cpus, static_cast<int>(hw));
  }
}

// An infinite timeout waits without a deadline (now + InfiniteDuration would
// overflow to a time in the past and return at once) until an event comes.
TEST(LiveQueueTest, AnInfiniteTimeoutWaitsForTheEvent) {
  LiveQueue q(4);
  std::vector<Delivery> out;
  std::thread publisher([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));  // not asserted on
    auto in = Msgs(1, 1);
    q.Push(absl::MakeSpan(in));
  });
  ASSERT_TRUE(q.Pop(1, absl::InfiniteDuration(), &out, nullptr).ok());
  publisher.join();
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(out[0].message->sequence, 1u);
}


// Several publishers, one reader draining in batches with a small queue:
// every event is either delivered, in each publisher's order, or counted as
// missed, exactly.
TEST(LiveQueueTest, ConcurrentPublishersDeliveredPlusMissedIsExactAndOrdered) {
  constexpr int kPublishers = 3;
  static constexpr uint64_t kPerPublisher = 60000;
  static constexpr size_t kBatch = 7;
  LiveQueue q(64);
  std::vector<std::thread> pubs;
  for (int p = 0; p < kPublishers; ++p) {
    pubs.emplace_back([&q, p] {
      for (uint64_t i = 0; i < kPerPublisher; i += kBatch) {
        std::vector<MessagePtr> batch;
        for (uint64_t k = i; k < std::min(i + kBatch, kPerPublisher); ++k) {
          // The publisher in the top bits, its own sequence below.
          batch.push_back(Msg((static_cast<uint64_t>(p) << 32) | k));
        }
        q.Push(absl::MakeSpan(batch));
      }
    });
  }
  std::thread closer([&] {
    for (std::thread& t : pubs) t.join();
  });
  uint64_t delivered = 0, missed_total = 0;
  std::vector<int64_t> last(kPublishers, -1);
  std::vector<Delivery> o;
  while (delivered + missed_total < kPublishers * kPerPublisher) {
    o.clear();
    uint64_t missed = 0;
    if (!q.Pop(16, absl::Seconds(60), &o, &missed).ok() || (o.empty() && missed == 0)) {
      ADD_FAILURE() << "nothing for 60 s after " << delivered << " delivered, "
                    << missed_total << " missed";
      break;
    }
    missed_total += missed;
    for (const Delivery& d : o) {
      const int p = static_cast<int>(d.message->sequence >> 32);
      const int64_t s = static_cast<int64_t>(d.message->sequence & 0xffffffffu);
      EXPECT_GT(s, last[p]) << "publisher " << p << " out of order";
      last[p] = s;
      ++delivered;
    }
  }
  closer.join();
  EXPECT_EQ(delivered + missed_total, kPublishers * kPerPublisher);
  EXPECT_EQ(q.depth(), 0u);
}


// Each test has its own pools (a tag of its own) and drains its depot first:
// nothing another test (or an earlier repetition) did matters here.
struct ChunkPoolTestTag {};
struct AllocateSharedTestTag {};

// Chunks freed by another thread (the subscriber) travel back through the
// depot in chains and are reused; the depot stays bounded however many are
// freed.
TEST(MessagePoolTest, ChunksFreedOnAnotherThreadAreReusedAndTheDepotIsBounded) {
  using Pool = ChunkPool<96, ChunkPoolTestTag>;
  Pool::DrainDepot();  // a known start, also when the test repeats
  ASSERT_EQ(Pool::DepotChunks(), 0u);
  constexpr size_t kMany = 10000;
  std::vector<void*> made;
  std::thread publisher([&] {
    for (size_t i = 0; i < kMany; ++i) made.push_back(Pool::Allocate());
  });
  publisher.join();
  std::thread subscriber([&] {
    for (void* p : made) Pool::Deallocate(p);
  });
  subscriber.join();
  // The subscriber kept kChain, then handed chains to the depot until it was
  // full, then freed the rest; its cache went when it ended.
  EXPECT_EQ(Pool::DepotChunks(), Pool::kMaxChains * Pool::kChain);
  const std::set<void*> freed(made.begin(), made.end());
  std::thread again([&] {
    void* p = Pool::Allocate();
    EXPECT_EQ(freed.count(p), 1u) << "a chunk from the depot";
    EXPECT_EQ(Pool::DepotChunks(), (Pool::kMaxChains - 1) * Pool::kChain);
    Pool::Deallocate(p);
  });
  again.join();
}

// std::allocate_shared with MessageAllocator takes its chunks from the pool
// of the control block's size: libstdc++'s _Sp_counted_ptr_inplace, named
// here, so only there.
TEST(MessagePoolTest, AllocateSharedTakesItsChunksFromThePool) {
#if defined(__GLIBCXX__)
  using Alloc = MessageAllocator<Message, AllocateSharedTestTag>;
  using Pool = ChunkPool<sizeof(std::_Sp_counted_ptr_inplace<Message, Alloc,
                                                              __gnu_cxx::_S_atomic>),
                         AllocateSharedTestTag>;
  auto make = [](uint64_t seq) -> MessagePtr {
    return std::allocate_shared<Message>(Alloc(), std::string("s"), seq, absl::UnixEpoch(),
                                         static_cast<const event::v1::Event*>(nullptr));
  };
  Pool::DrainDepot();  // a known start, also when the test repeats
  ASSERT_EQ(Pool::DepotChunks(), 0u);
  std::vector<MessagePtr> made;
  std::thread publisher([&] {
    for (size_t i = 0; i < 3 * Pool::kChain; ++i) made.push_back(make(i));
  });
  publisher.join();
  for (size_t i = 0; i < made.size(); ++i) ASSERT_EQ(made[i]->sequence, i);
  std::thread subscriber([&] { made.clear(); });
  subscriber.join();
  // 3 chains freed: the first stays in the subscriber's cache (freed when it
  // ended), the other two reach the depot.
  EXPECT_EQ(Pool::DepotChunks(), 2 * Pool::kChain);
  std::thread again([&] {
    MessagePtr m = make(7);
    EXPECT_EQ(m->sequence, 7u);
    EXPECT_EQ(m->stream, "s");
    EXPECT_EQ(Pool::DepotChunks(), Pool::kChain);
  });
  again.join();
#else
  GTEST_SKIP() << "names libstdc++'s control block type";
#endif
}

}  // namespace
}  // namespace cityos::bus_internal
