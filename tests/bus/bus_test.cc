// The in-process Bus: routing, streams, replay, durable consumers, groups,
// slow-subscriber isolation, authorization hook, errors.
#include "cityos/bus.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <set>
#include <thread>

#include "cityos/clock.h"
#include "cityos/event.h"
#include "testutil.h"

namespace cityos {
namespace {

using event::v1::Event;
using ::testing::HasSubstr;

Principal Me() {
  return *Principal::FromSpiffeId("spiffe://test.city/org/grid/svc/meters");
}

Event MakeEvent(const std::string& subject, const std::string& body = "x",
                absl::Time when = absl::FromUnixSeconds(1764000000)) {
  auto e = EventBuilder()
               .Source("//test")
               .Type("test.v1.Thing")
               .Subject(subject)
               .Time(when)
               .Classification(event::v1::CLASSIFICATION_INTERNAL)
               .Owner("grid")
               .TextData("text/plain", body)
               .Build();
  EXPECT_TRUE(e.ok()) << e.status();
  return *e;
}

std::vector<Event> Events(const std::string& subject, int n, const std::string& prefix = "e") {
  std::vector<Event> out;
  for (int i = 0; i < n; ++i) out.push_back(MakeEvent(subject, prefix + std::to_string(i)));
  return out;
}

// Reads until `n` deliveries arrived or `limit` passed (generous; never a
// timing assertion: a test fails on content, not speed).
std::vector<Delivery> Collect(Subscription& sub, size_t n,
                              absl::Duration limit = absl::Seconds(20)) {
  std::vector<Delivery> got;
  absl::Time deadline = absl::Now() + limit;
  while (got.size() < n && absl::Now() < deadline) {
    absl::Status s = sub.Next(n - got.size(), absl::Milliseconds(100), &got);
    if (!s.ok()) break;
  }
  return got;
}

class BusTest : public ::testing::Test {
 protected:
  void SetUp() override { Open(); }
  void Open(BusAuthorizer* auth = nullptr) {
    BusOptions o;
    o.data_dir = dir_.path() + "/bus";
    o.clock = &clock_;
    o.authorizer = auth;
    o.limits.max_event_bytes = 4096;
    auto b = Bus::Open(std::move(o));
    ASSERT_TRUE(b.ok()) << b.status();
    bus_ = *std::move(b);
  }
  void Reopen() {
    ASSERT_TRUE(bus_->Close().ok());
    bus_.reset();
    Open();
  }
  StreamConfig Stream(const std::string& name, std::vector<std::string> subjects,
                      Durability d = Durability::kFsync) {
    StreamConfig c;
    c.name = name;
    c.subjects = std::move(subjects);
    c.durability = d;
    return c;
  }

  testing::TempDir dir_;
  SimulatedClock clock_{absl::FromUnixSeconds(1764000000)};
  std::unique_ptr<Bus> bus_;
};

TEST_F(BusTest, LiveSubscribersGetMatchingEventsWithPublisherSet) {
  auto all = bus_->Subscribe(Me(), {.subject_pattern = "carbon.>"});
  auto one = bus_->Subscribe(Me(), {.subject_pattern = "carbon.meter.*"});
  auto none = bus_->Subscribe(Me(), {.subject_pattern = "mobility.>"});
  ASSERT_TRUE(all.ok() && one.ok() && none.ok());
  auto r = bus_->Publish(Me(), {MakeEvent("carbon.meter.reading"), MakeEvent("carbon.alarm.x.y")});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(*r, (std::vector<PublishResult>{{}, {}}));  // not captured: no sequence
  auto got = Collect(**all, 2);
  ASSERT_EQ(got.size(), 2u);
  EXPECT_EQ(got[0].message->event().subject(), "carbon.meter.reading");
  EXPECT_EQ(got[0].message->event().publisher(), "spiffe://test.city/org/grid/svc/meters");
  EXPECT_EQ(Collect(**one, 1).size(), 1u);
  std::vector<Delivery> nothing;
  ASSERT_TRUE((*none)->Next(10, absl::Milliseconds(10), &nothing).ok());
  EXPECT_TRUE(nothing.empty());
}

TEST_F(BusTest, CapturedEventsGetGapFreeSequencesAndReachLiveSubscribers) {
  ASSERT_TRUE(bus_->CreateStream(Me(), Stream("carbon", {"carbon.>"})).ok());
  auto sub = bus_->Subscribe(Me(), {.subject_pattern = "carbon.>"});
  ASSERT_TRUE(sub.ok());
  for (int batch = 0; batch < 3; ++batch) {
    auto r = bus_->Publish(Me(), Events("carbon.meter.reading", 4));
    ASSERT_TRUE(r.ok()) << r.status();
    for (int i = 0; i < 4; ++i) {
      EXPECT_EQ((*r)[i], (PublishResult{"carbon", static_cast<uint64_t>(batch * 4 + i + 1)}));
    }
  }
  auto got = Collect(**sub, 12);
  ASSERT_EQ(got.size(), 12u);
  for (size_t i = 0; i < got.size(); ++i) {
    EXPECT_EQ(got[i].message->stream, "carbon");
    EXPECT_EQ(got[i].message->sequence, i + 1);
  }
  // Live deliveries carry exactly the publish time that was stored.
  auto replay = bus_->Subscribe(Me(), {.stream = "carbon", .start = StartPosition::Earliest()});
  auto stored = Collect(**replay, 12);
  ASSERT_EQ(stored.size(), 12u);
  for (size_t i = 0; i < 12; ++i) {
    EXPECT_EQ(stored[i].message->publish_time, got[i].message->publish_time);
  }
  auto info = bus_->GetStream(Me(), "carbon");
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->first_sequence, 1u);
  EXPECT_EQ(info->last_sequence, 12u);
  EXPECT_EQ(info->events, 12u);
}

TEST_F(BusTest, ABadEventRejectsTheWholeBatch) {
  ASSERT_TRUE(bus_->CreateStream(Me(), Stream("carbon", {"carbon.>"})).ok());
  std::vector<Event> batch = Events("carbon.meter.reading", 3);
  batch[1].set_subject("carbon..reading");
  auto r = bus_->Publish(Me(), batch);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(r.status().message(), HasSubstr("events[1]: event.subject"));
  EXPECT_THAT(r.status().message(), HasSubstr("token 2 is empty"));
  batch = Events("carbon.meter.reading", 2);
  batch[1].set_text_data(std::string(5000, 'x'));
  r = bus_->Publish(Me(), batch);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(r.status().message(), HasSubstr("events[1]: event:"));
  EXPECT_THAT(r.status().message(), HasSubstr("over the limit of 4096 bytes"));
  EXPECT_EQ(bus_->GetStream(Me(), "carbon")->events, 0u);
  EXPECT_EQ(bus_->Publish(Me(), {}).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(BusTest, ReplayFromEarliestSequenceTimeLastAndNewThenFollowsLive) {
  ASSERT_TRUE(bus_->CreateStream(Me(), Stream("mob", {"mobility.>"}, Durability::kNone)).ok());
  for (int i = 0; i < 5; ++i) {
    ASSERT_TRUE(bus_->Publish(Me(), {MakeEvent("mobility.trip", "t" + std::to_string(i))}).ok());
    clock_.Advance(absl::Minutes(1));
  }
  auto first_seq = [&](StartPosition start) -> uint64_t {
    auto sub = bus_->Subscribe(Me(), {.stream = "mob", .start = start});
    EXPECT_TRUE(sub.ok()) << sub.status();
    auto got = Collect(**sub, 1, absl::Seconds(2));
    return got.empty() ? 0 : got[0].message->sequence;
  };
  EXPECT_EQ(first_seq(StartPosition::Earliest()), 1u);
  EXPECT_EQ(first_seq(StartPosition::AtSequence(3)), 3u);
  EXPECT_EQ(first_seq(StartPosition::AtTime(absl::FromUnixSeconds(1764000000) + absl::Seconds(90))), 3u);
  EXPECT_EQ(first_seq(StartPosition::Last()), 5u);

  auto fresh = bus_->Subscribe(Me(), {.stream = "mob", .start = StartPosition::New()});
  auto replay = bus_->Subscribe(Me(), {.subject_pattern = "mobility.trip", .stream = "mob",
                                       .start = StartPosition::Earliest()});
  ASSERT_TRUE(fresh.ok() && replay.ok());
  EXPECT_EQ(Collect(**replay, 5).size(), 5u);
  ASSERT_TRUE(bus_->Publish(Me(), {MakeEvent("mobility.trip", "late"), MakeEvent("mobility.count")}).ok());
  auto live = Collect(**fresh, 2);
  ASSERT_EQ(live.size(), 2u);
  EXPECT_EQ(live[0].message->sequence, 6u);
  EXPECT_EQ(live[0].message->event().text_data(), "late");
  auto filtered = Collect(**replay, 1);  // the filter drops mobility.count
  ASSERT_EQ(filtered.size(), 1u);
  EXPECT_EQ(filtered[0].message->sequence, 6u);
}

TEST_F(BusTest, DurableConsumerAcksAndRedeliversAfterAckWait) {
  ASSERT_TRUE(bus_->CreateStream(Me(), Stream("carbon", {"carbon.>"})).ok());
  ConsumerConfig cc{.stream = "carbon", .name = "accounts", .ack_wait = absl::Seconds(30)};
  ASSERT_TRUE(bus_->CreateConsumer(Me(), cc).ok());
  ASSERT_TRUE(bus_->Publish(Me(), Events("carbon.meter.reading", 3)).ok());
  auto sub = bus_->Subscribe(Me(), {.stream = "carbon", .consumer = "accounts"});
  ASSERT_TRUE(sub.ok()) << sub.status();
  auto got = Collect(**sub, 3);
  ASSERT_EQ(got.size(), 3u);
  EXPECT_EQ(got[0].delivery_count, 1u);
  uint64_t acks[] = {1, 3};
  ASSERT_TRUE((*sub)->Ack(acks).ok());
  auto info = bus_->GetConsumer(Me(), "carbon", "accounts");
  EXPECT_EQ(info->ack_floor, 2u);
  EXPECT_EQ(info->in_flight, 1u);
  // Nothing is due yet; after ack_wait, sequence 2 comes again.
  std::vector<Delivery> none;
  ASSERT_TRUE((*sub)->Next(10, absl::Milliseconds(20), &none).ok());
  EXPECT_TRUE(none.empty());
  clock_.Advance(absl::Seconds(31));
  auto again = Collect(**sub, 1);
  ASSERT_EQ(again.size(), 1u);
  EXPECT_EQ(again[0].message->sequence, 2u);
  EXPECT_EQ(again[0].delivery_count, 2u);
  // Nak: at once.
  uint64_t nak[] = {2};
  ASSERT_TRUE((*sub)->Nak(nak).ok());
  auto naked = Collect(**sub, 1);
  ASSERT_EQ(naked.size(), 1u);
  EXPECT_EQ(naked[0].delivery_count, 3u);
  auto floor = bus_->Ack(Me(), "carbon", "accounts", nak, {});
  ASSERT_TRUE(floor.ok());
  EXPECT_EQ(*floor, 4u);
  EXPECT_EQ(bus_->GetConsumer(Me(), "carbon", "accounts")->redelivered, 2u);
}

TEST_F(BusTest, MaxInFlightLimitsUnackedDeliveries) {
  ASSERT_TRUE(bus_->CreateStream(Me(), Stream("carbon", {"carbon.>"})).ok());
  ASSERT_TRUE(bus_->CreateConsumer(Me(), {.stream = "carbon", .name = "c", .max_in_flight = 3}).ok());
  ASSERT_TRUE(bus_->Publish(Me(), Events("carbon.x", 10)).ok());
  auto sub = bus_->Subscribe(Me(), {.stream = "carbon", .consumer = "c"});
  ASSERT_TRUE(sub.ok());
  auto got = Collect(**sub, 10, absl::Milliseconds(300));
  EXPECT_EQ(got.size(), 3u);
  uint64_t acks[] = {1, 2, 3};
  ASSERT_TRUE((*sub)->Ack(acks).ok());
  EXPECT_EQ(Collect(**sub, 3).size(), 3u);
}

TEST_F(BusTest, ConsumerGroupSharesEventsAndRebalancesWhenAMemberLeaves) {
  ASSERT_TRUE(bus_->CreateStream(Me(), Stream("carbon", {"carbon.>"})).ok());
  ASSERT_TRUE(bus_->CreateConsumer(Me(), {.stream = "carbon", .name = "g"}).ok());
  auto a = bus_->Subscribe(Me(), {.stream = "carbon", .consumer = "g"});
  auto b = bus_->Subscribe(Me(), {.stream = "carbon", .consumer = "g"});
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(bus_->GetConsumer(Me(), "carbon", "g")->members, 2u);
  ASSERT_TRUE(bus_->Publish(Me(), Events("carbon.x", 20)).ok());
  std::vector<Delivery> got_a, got_b;
  ASSERT_TRUE((*a)->Next(7, absl::Seconds(5), &got_a).ok());
  ASSERT_TRUE((*b)->Next(100, absl::Seconds(5), &got_b).ok());
  std::multiset<uint64_t> seen;
  for (auto& d : got_a) seen.insert(d.message->sequence);
  for (auto& d : got_b) seen.insert(d.message->sequence);
  EXPECT_EQ(seen.size(), 20u);
  EXPECT_EQ(std::set<uint64_t>(seen.begin(), seen.end()).size(), 20u);  // each once
  // b acks its share and a leaves without acking: its 7 go to b.
  std::vector<uint64_t> b_seqs;
  for (auto& d : got_b) b_seqs.push_back(d.message->sequence);
  ASSERT_TRUE((*b)->Ack(b_seqs).ok());
  a->reset();
  EXPECT_EQ(bus_->GetConsumer(Me(), "carbon", "g")->members, 1u);
  auto redelivered = Collect(**b, 7);
  ASSERT_EQ(redelivered.size(), 7u);
  for (size_t i = 0; i < 7; ++i) {
    EXPECT_EQ(redelivered[i].message->sequence, got_a[i].message->sequence);
    EXPECT_EQ(redelivered[i].delivery_count, 2u);
  }
}

TEST_F(BusTest, ConsumerPositionSurvivesRestart) {
  ASSERT_TRUE(bus_->CreateStream(Me(), Stream("carbon", {"carbon.>"})).ok());
  ASSERT_TRUE(bus_->CreateConsumer(Me(), {.stream = "carbon", .name = "c",
                                          .filter_subject = "carbon.meter.>"}).ok());
  std::vector<Event> evs = Events("carbon.meter.reading", 6);
  evs.push_back(MakeEvent("carbon.alarm.x"));
  ASSERT_TRUE(bus_->Publish(Me(), evs).ok());
  {
    auto sub = bus_->Subscribe(Me(), {.stream = "carbon", .consumer = "c"});
    auto got = Collect(**sub, 4);
    ASSERT_EQ(got.size(), 4u);
    uint64_t acks[] = {1, 2, 4};
    ASSERT_TRUE((*sub)->Ack(acks).ok());
  }
  Reopen();
  auto info = bus_->GetConsumer(Me(), "carbon", "c");
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->ack_floor, 3u);
  EXPECT_EQ(info->config.filter_subject, "carbon.meter.>");
  auto sub = bus_->Subscribe(Me(), {.stream = "carbon", .consumer = "c"});
  ASSERT_TRUE(sub.ok());
  auto got = Collect(**sub, 4, absl::Seconds(5));
  // At least once: 3 again (unacked), 4 again (acked above the floor), 5, 6;
  // the alarm (7) does not match the filter.
  std::vector<uint64_t> seqs;
  for (auto& d : got) seqs.push_back(d.message->sequence);
  EXPECT_EQ(seqs, (std::vector<uint64_t>{3, 4, 5, 6}));
  EXPECT_EQ(bus_->GetStream(Me(), "carbon")->last_sequence, 7u);
}

TEST_F(BusTest, StalledSubscriberDropsOnlyItsOwnEventsAndIsToldHowMany) {
  auto stalled = bus_->Subscribe(Me(), {.subject_pattern = "carbon.>", .queue_depth = 10});
  auto healthy = bus_->Subscribe(Me(), {.subject_pattern = "carbon.>"});
  ASSERT_TRUE(stalled.ok() && healthy.ok());
  for (int i = 0; i < 10; ++i) ASSERT_TRUE(bus_->Publish(Me(), Events("carbon.x", 100)).ok());
  EXPECT_EQ(Collect(**healthy, 1000).size(), 1000u);
  std::vector<Delivery> got;
  uint64_t missed = 0;
  ASSERT_TRUE((*stalled)->Next(1000, absl::Milliseconds(10), &got, &missed).ok());
  EXPECT_EQ(got.size(), 10u);
  EXPECT_EQ(missed, 990u);
  EXPECT_EQ(got[0].message->event().text_data(), "e0");
}

TEST_F(BusTest, StreamAdministrationErrors) {
  StreamConfig c = Stream("carbon", {"carbon.>"});
  ASSERT_TRUE(bus_->CreateStream(Me(), c).ok());
  EXPECT_TRUE(bus_->CreateStream(Me(), c).ok());  // idempotent
  c.durability = Durability::kNone;
  EXPECT_EQ(bus_->CreateStream(Me(), c).status().code(), absl::StatusCode::kAlreadyExists);
  auto overlap = bus_->CreateStream(Me(), Stream("meters", {"carbon.meter.*"}));
  EXPECT_EQ(overlap.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(overlap.status().message(), HasSubstr("overlaps \"carbon.>\" of stream carbon"));
  EXPECT_THAT(bus_->CreateStream(Me(), Stream("bad name", {"x"})).status().message(),
              HasSubstr("stream name \"bad name\""));
  EXPECT_THAT(bus_->CreateStream(Me(), Stream("s", {"x.>.y"})).status().message(),
              HasSubstr("subjects[0]"));
  EXPECT_THAT(bus_->CreateStream(Me(), Stream("s", {})).status().message(),
              HasSubstr("at least one pattern"));
  EXPECT_EQ(bus_->GetStream(Me(), "nope").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(bus_->DeleteStream(Me(), "nope").code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(bus_->GetConsumer(Me(), "carbon", "nope").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(bus_->CreateConsumer(Me(), {.stream = "nope", .name = "c"}).status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(bus_->Subscribe(Me(), {.stream = "carbon", .consumer = "nope"}).status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(bus_->Subscribe(Me(), {.subject_pattern = "carbon..x"}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(bus_->Subscribe(Me(), {}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(bus_->ListStreams(Me())->size(), 1u);
}

TEST_F(BusTest, DeletingAStreamEndsItsSubscriptionsWithNotFound) {
  ASSERT_TRUE(bus_->CreateStream(Me(), Stream("carbon", {"carbon.>"})).ok());
  ASSERT_TRUE(bus_->CreateConsumer(Me(), {.stream = "carbon", .name = "c"}).ok());
  auto replay = bus_->Subscribe(Me(), {.stream = "carbon", .start = StartPosition::Earliest()});
  auto durable = bus_->Subscribe(Me(), {.stream = "carbon", .consumer = "c"});
  ASSERT_TRUE(replay.ok() && durable.ok());
  ASSERT_TRUE(bus_->DeleteStream(Me(), "carbon").ok());
  std::vector<Delivery> got;
  EXPECT_EQ((*replay)->Next(1, absl::Seconds(5), &got).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ((*durable)->Next(1, absl::Seconds(5), &got).code(), absl::StatusCode::kNotFound);
  // The subject is no longer captured.
  auto r = bus_->Publish(Me(), {MakeEvent("carbon.x")});
  ASSERT_TRUE(r.ok());
  EXPECT_EQ((*r)[0].sequence, 0u);
  EXPECT_FALSE(std::filesystem::exists(dir_.path() + "/bus/carbon"));
}

TEST_F(BusTest, StreamsSurviveRestartAndKeepNumbering) {
  ASSERT_TRUE(bus_->CreateStream(Me(), Stream("carbon", {"carbon.>"})).ok());
  ASSERT_TRUE(bus_->Publish(Me(), Events("carbon.x", 5)).ok());
  Reopen();
  auto r = bus_->Publish(Me(), {MakeEvent("carbon.x")});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ((*r)[0], (PublishResult{"carbon", 6}));
  auto sub = bus_->Subscribe(Me(), {.stream = "carbon", .start = StartPosition::Earliest()});
  auto got = Collect(**sub, 6);
  ASSERT_EQ(got.size(), 6u);
  EXPECT_EQ(got[4].message->event().text_data(), "e4");
  EXPECT_EQ(got[4].message->event().publisher(), "spiffe://test.city/org/grid/svc/meters");
}

TEST_F(BusTest, ConcurrentPublishersAllGetDistinctSequences) {
  ASSERT_TRUE(bus_->CreateStream(Me(), Stream("carbon", {"carbon.>"})).ok());
  std::vector<std::thread> threads;
  std::mutex mu;
  std::set<uint64_t> seqs;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 25; ++i) {
        auto r = bus_->Publish(Me(), Events("carbon.x", 4));
        ASSERT_TRUE(r.ok());
        std::lock_guard<std::mutex> lock(mu);
        for (auto& p : *r) seqs.insert(p.sequence);
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(seqs.size(), 400u);
  EXPECT_EQ(*seqs.begin(), 1u);
  EXPECT_EQ(*seqs.rbegin(), 400u);
}

TEST_F(BusTest, CloseEndsSubscriptionsAndRefusesPublishes) {
  auto sub = bus_->Subscribe(Me(), {.subject_pattern = ">"});
  ASSERT_TRUE(sub.ok());
  ASSERT_TRUE(bus_->Close().ok());
  std::vector<Delivery> got;
  EXPECT_EQ((*sub)->Next(1, absl::Seconds(1), &got).code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(bus_->Publish(Me(), {MakeEvent("a.b")}).status().code(),
            absl::StatusCode::kUnavailable);
  (*sub)->Close();
}

// The authorization hook is asked for every publish, subscribe and admin call.
class DenyHealth final : public BusAuthorizer {
 public:
  absl::Status CanPublish(const Principal& who, const Event& e) override {
    ++publishes;
    if (e.domain() == "health") return absl::PermissionDeniedError("no health data for " + who.org);
    return absl::OkStatus();
  }
  absl::Status CanSubscribe(const Principal&, const SubscribeOptions& o) override {
    if (o.subject_pattern.rfind("health", 0) == 0) return absl::PermissionDeniedError("no");
    return absl::OkStatus();
  }
  absl::Status CanAdminister(const Principal& who, std::string_view action,
                             std::string_view) override {
    if (action == "delete_stream" && !who.HasRole("admin")) {
      return absl::PermissionDeniedError("admin only");
    }
    return absl::OkStatus();
  }
  std::atomic<int> publishes{0};
};

TEST_F(BusTest, AuthorizationHookDecidesPublishSubscribeAndAdmin) {
  DenyHealth auth;
  ASSERT_TRUE(bus_->Close().ok());
  bus_.reset();
  Open(&auth);
  EXPECT_EQ(bus_->Publish(Me(), {MakeEvent("carbon.x"), MakeEvent("health.vitals")}).status().code(),
            absl::StatusCode::kPermissionDenied);
  EXPECT_GE(auth.publishes.load(), 2);
  EXPECT_EQ(bus_->Subscribe(Me(), {.subject_pattern = "health.>"}).status().code(),
            absl::StatusCode::kPermissionDenied);
  EXPECT_TRUE(bus_->Subscribe(Me(), {.subject_pattern = "carbon.>"}).ok());
  ASSERT_TRUE(bus_->CreateStream(Me(), Stream("carbon", {"carbon.>"})).ok());
  EXPECT_EQ(bus_->DeleteStream(Me(), "carbon").code(), absl::StatusCode::kPermissionDenied);
  Principal admin = Me();
  admin.roles = {"admin"};
  EXPECT_TRUE(bus_->DeleteStream(admin, "carbon").ok());
}

}  // namespace
}  // namespace cityos
