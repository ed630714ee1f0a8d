// LiveFeeds (services/exchange/live_feed.h): live exchange subscriptions of
// one pattern share one bus subscription; its dispatcher hands each event only
// to the members whose filter can match it (by entity id, by type, or all),
// each member has its own bounded queue with a missed count, ends alone on
// Terminate, and all end when the bus subscription ends.
#include "live_feed.h"

#include <gtest/gtest.h>

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "cityos/bus.h"
#include "cityos/entity.h"
#include "cityos/event.h"
#include "testutil.h"

namespace cityos {
namespace {

const Principal& Node() {
  static const Principal* p = new Principal(Principal::Node("test.city", "n1"));
  return *p;
}

event::v1::Event Ev(const std::string& subject, const std::string& type,
                    const std::string& entity) {
  EventBuilder b;
  b.Source("//test.city/src").Subject(subject).Type(type).Owner("o").Region("r").Classification(
      event::v1::CLASSIFICATION_INTERNAL);
  if (!entity.empty()) b.Extension(kEntityIdExtension, entity);
  absl::StatusOr<event::v1::Event> e = std::move(b).Build();
  EXPECT_TRUE(e.ok()) << e.status();
  return *std::move(e);
}

// Everything `sub` has queued now, as "<type>/<entity id>".
std::vector<std::string> Drain(Subscription& sub, uint64_t* missed_total = nullptr) {
  std::vector<std::string> out;
  while (true) {
    std::vector<Delivery> got;
    uint64_t missed = 0;
    absl::Status s = sub.Next(1000, absl::Milliseconds(300), &got, &missed);
    EXPECT_TRUE(s.ok()) << s;
    if (missed_total != nullptr) *missed_total += missed;
    if (got.empty() && missed == 0) return out;
    for (const Delivery& d : got) {
      out.push_back(d.message->event().type() + "/" + EntityIdOf(d.message->event()));
    }
  }
}

exchange::v1::EntityFilter Ids(std::vector<std::string> ids, std::string type = "") {
  exchange::v1::EntityFilter f;
  for (auto& id : ids) f.add_ids(id);
  f.set_type(type);
  return f;
}

class LiveFeedTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto bus = Bus::Open({.data_dir = dir_.path()});
    ASSERT_TRUE(bus.ok()) << bus.status();
    bus_ = *std::move(bus);
  }
  void Publish(std::vector<event::v1::Event> events) {
    auto r = bus_->Publish(Node(), std::move(events));
    ASSERT_TRUE(r.ok()) << r.status();
  }

  testing::TempDir dir_;
  std::unique_ptr<Bus> bus_;
};

TEST_F(LiveFeedTest, OneBusSubscriptionPerPatternDispatchedByIdTypeOrAll) {
  LiveFeeds feeds(bus_.get(), Node(), 0);
  auto a = feeds.Join("t.>", Ids({"e1", "e1", "e3"}));  // repeated id: delivered once
  auto b = feeds.Join("t.>", Ids({"e2"}, "T2"));        // indexed by id; type left to the caller
  auto c = feeds.Join("t.>", Ids({}, "T2"));            // by type
  auto all = feeds.Join("t.>", exchange::v1::EntityFilter());
  auto other = feeds.Join("u.*", exchange::v1::EntityFilter());
  ASSERT_TRUE(a.ok() && b.ok() && c.ok() && all.ok() && other.ok());
  EXPECT_EQ(feeds.feeds(), 2u);
  ASSERT_NO_FATAL_FAILURE(Publish({Ev("t.x", "T1", "e1"), Ev("t.x", "T1", "e2"),
                                   Ev("t.y", "T2", "e2"), Ev("t.y", "T2", "e4"),
                                   Ev("t.z", "T1", "e3"), Ev("u.v", "T1", "e1"),
                                   Ev("t.x", "T1", "")}));
  EXPECT_EQ(Drain(**a), (std::vector<std::string>{"T1/e1", "T1/e3"}));
  EXPECT_EQ(Drain(**b), (std::vector<std::string>{"T1/e2", "T2/e2"}));
  EXPECT_EQ(Drain(**c), (std::vector<std::string>{"T2/e2", "T2/e4"}));
  // No entity id extension: the id is the source.
  EXPECT_EQ(Drain(**all), (std::vector<std::string>{"T1/e1", "T1/e2", "T2/e2", "T2/e4",
                                                    "T1/e3", "T1///test.city/src"}));
  EXPECT_EQ(Drain(**other), (std::vector<std::string>{"T1/e1"}));

  // The last member of a pattern to leave unsubscribes it; joining again
  // takes a new bus subscription.
  other->reset();
  EXPECT_EQ(feeds.feeds(), 1u);
  a->reset();
  b->reset();
  c->reset();
  EXPECT_EQ(feeds.feeds(), 1u);
  all->reset();
  EXPECT_EQ(feeds.feeds(), 0u);
  auto again = feeds.Join("t.>", Ids({"e9"}));
  ASSERT_TRUE(again.ok());
  ASSERT_NO_FATAL_FAILURE(Publish({Ev("t.x", "T1", "e9"), Ev("t.x", "T1", "e1")}));
  EXPECT_EQ(Drain(**again), (std::vector<std::string>{"T1/e9"}));
}

TEST_F(LiveFeedTest, AFullMemberQueueCountsMissedForThatMemberOnly) {
  LiveFeeds feeds(bus_.get(), Node(), 4);
  auto slow = feeds.Join("t.>", exchange::v1::EntityFilter());
  auto narrow = feeds.Join("t.>", Ids({"e5"}));
  ASSERT_TRUE(slow.ok() && narrow.ok());
  std::vector<event::v1::Event> events;
  for (int i = 0; i < 10; ++i) events.push_back(Ev("t.x", "T1", "e" + std::to_string(i)));
  ASSERT_NO_FATAL_FAILURE(Publish(std::move(events)));
  uint64_t missed = 0;
  EXPECT_EQ(Drain(**slow, &missed),
            (std::vector<std::string>{"T1/e0", "T1/e1", "T1/e2", "T1/e3"}));
  EXPECT_EQ(missed, 6u);
  uint64_t narrow_missed = 0;
  EXPECT_EQ(Drain(**narrow, &narrow_missed), (std::vector<std::string>{"T1/e5"}));
  EXPECT_EQ(narrow_missed, 0u);
}

TEST_F(LiveFeedTest, TerminateEndsOneMemberAndTheBusEndingEndsAll) {
  LiveFeeds feeds(bus_.get(), Node(), 0);
  auto cut = feeds.Join("t.>", exchange::v1::EntityFilter());
  auto stays = feeds.Join("t.>", exchange::v1::EntityFilter());
  ASSERT_TRUE(cut.ok() && stays.ok());
  (*cut)->Terminate(absl::PermissionDeniedError("access withdrawn"));
  std::vector<Delivery> got;
  // A blocked Next is woken by Terminate from another thread.
  std::thread later([&] {
    absl::SleepFor(absl::Milliseconds(50));
    (*stays)->Terminate(absl::PermissionDeniedError("second"));
  });
  auto stays2 = feeds.Join("t.>", Ids({"e1"}));
  ASSERT_TRUE(stays2.ok());
  EXPECT_EQ((*cut)->Next(10, absl::Seconds(5), &got).code(), absl::StatusCode::kPermissionDenied);
  // Had Terminate not woken it, Next would return OK (nothing) at its timeout.
  EXPECT_EQ((*stays)->Next(10, absl::Seconds(30), &got).code(),
            absl::StatusCode::kPermissionDenied);
  later.join();
  ASSERT_NO_FATAL_FAILURE(Publish({Ev("t.x", "T1", "e1")}));
  EXPECT_EQ(Drain(**stays2), (std::vector<std::string>{"T1/e1"}));
  // Closing the bus ends its live subscriptions (UNAVAILABLE): every member
  // of the shared one ends with that status.
  ASSERT_TRUE(bus_->Close().ok());
  absl::Status s;
  for (int i = 0; i < 100 && s.ok(); ++i) s = (*stays2)->Next(10, absl::Milliseconds(100), &got);
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable) << s;
  EXPECT_TRUE(got.empty());
}

}  // namespace
}  // namespace cityos
