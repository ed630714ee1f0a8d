// Messages read from a stream's log carry the stored bytes (Message::wire()) and
// parse them on first use; the structural check that guards them agrees with
// protobuf's parser; a record that would not parse is DATA_LOSS, as before.
#include <gtest/gtest.h>

#include <google/protobuf/util/message_differencer.h>

#include <atomic>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "bus/validate.h"
#include "cityos/bus.h"
#include "cityos/bus_backend.h"
#include "cityos/event.h"
#include "testutil.h"

namespace cityos {
namespace {

using bus_internal::IsWellFormedEventWire;
using event::v1::Event;
using google::protobuf::util::MessageDifferencer;

Principal Me() { return *Principal::FromSpiffeId("spiffe://test.city/org/grid/svc/meters"); }

Event MakeEvent(const std::string& subject, const std::string& body = "x") {
  auto e = EventBuilder()
               .Source("//test")
               .Type("test.v1.Thing")
               .Subject(subject)
               .Time(absl::FromUnixSeconds(1764000000) + absl::Nanoseconds(123456789))
               .Classification(event::v1::CLASSIFICATION_INTERNAL)
               .Owner("grid")
               .TextData("text/plain", body)
               .Build();
  EXPECT_TRUE(e.ok()) << e.status();
  return *e;
}

// An event using every kind of field the check looks into.
Event RichEvent() {
  Event e = MakeEvent("carbon.meter.reading", "unused");
  (*e.mutable_extensions())["traceparent"] = "00-abc-def-01";
  (*e.mutable_extensions())["zone"] = "kecheng";
  e.set_region("CN-ZJ-QZ-KC");
  e.set_publisher("spiffe://test.city/x");
  e.mutable_proto_data()->set_type_url("type.googleapis.com/cityos.carbon.v1.MeterReading");
  e.mutable_proto_data()->set_value(std::string("\x08\x96\x01\x12\x03kWh\xff\x00", 10));
  return e;
}

bool Parses(const std::string& bytes) {
  Event e;
  return e.ParseFromString(bytes);
}

// Appends a varint.
void Varint(uint64_t v, std::string* out) {
  while (v >= 0x80) {
    out->push_back(static_cast<char>((v & 0x7f) | 0x80));
    v >>= 7;
  }
  out->push_back(static_cast<char>(v));
}
void Tag(uint32_t field, uint32_t type, std::string* out) { Varint(field << 3 | type, out); }
void LenField(uint32_t field, const std::string& body, std::string* out) {
  Tag(field, 2, out);
  Varint(body.size(), out);
  out->append(body);
}

TEST(EventWireCheck, AcceptsWhatProtobufAcceptsForValidEvents) {
  for (const Event& e : {MakeEvent("a.b"), RichEvent(), Event()}) {
    const std::string bytes = e.SerializeAsString();
    EXPECT_TRUE(Parses(bytes));
    EXPECT_TRUE(IsWellFormedEventWire(bytes));
  }
  Event binary = MakeEvent("a.b");
  binary.set_binary_data(std::string("\xff\xfe\x00\x80", 4));  // bytes: no UTF-8 rule
  EXPECT_TRUE(IsWellFormedEventWire(binary.SerializeAsString()));
}

TEST(EventWireCheck, RejectsEveryTruncation) {
  const std::string bytes = RichEvent().SerializeAsString();
  for (size_t n = 0; n < bytes.size(); ++n) {
    const std::string cut = bytes.substr(0, n);
    EXPECT_EQ(IsWellFormedEventWire(cut), Parses(cut)) << "prefix of " << n << " bytes";
  }
}

TEST(EventWireCheck, RejectsInvalidUtf8InStringFieldsMapEntriesAndAnyTypeUrl) {
  const std::string bad = "ab\xc3(";  // a broken two-byte sequence
  auto check = [&](const std::string& bytes, bool want) {
    EXPECT_EQ(Parses(bytes), want);
    EXPECT_EQ(IsWellFormedEventWire(bytes), want);
  };
  std::string subject;
  LenField(5, bad, &subject);
  check(subject, false);
  std::string text;
  LenField(21, bad, &text);
  check(text, false);
  std::string binary;
  LenField(20, bad, &binary);
  check(binary, true);
  std::string entry, map;
  LenField(1, "k", &entry);
  LenField(2, bad, &entry);
  LenField(16, entry, &map);
  check(map, false);
  std::string any_body, any;
  LenField(1, bad, &any_body);
  LenField(22, any_body, &any);
  check(any, false);
  std::string any_value_body, any_value;
  LenField(2, bad, &any_value_body);  // Any.value is bytes
  LenField(22, any_value_body, &any_value);
  check(any_value, true);
  std::string unknown;
  LenField(99, bad, &unknown);  // unknown fields keep their bytes as they are
  check(unknown, true);
}

// Every string field of Event, found through its descriptor (so a field added to
// event.proto later without a matching entry in the check's table fails here).
TEST(EventWireCheck, KnowsEveryStringFieldOfEvent) {
  const google::protobuf::Descriptor* d = Event::descriptor();
  int strings = 0;
  for (int i = 0; i < d->field_count(); ++i) {
    const google::protobuf::FieldDescriptor* f = d->field(i);
    if (f->type() != google::protobuf::FieldDescriptor::TYPE_STRING) continue;
    ++strings;
    std::string bytes;
    LenField(static_cast<uint32_t>(f->number()), "ok\xff", &bytes);
    EXPECT_FALSE(Parses(bytes)) << f->name();
    EXPECT_FALSE(IsWellFormedEventWire(bytes)) << f->name();
    std::string good;
    LenField(static_cast<uint32_t>(f->number()), "ok \xc3\xa9", &good);
    EXPECT_TRUE(Parses(good)) << f->name();
    EXPECT_TRUE(IsWellFormedEventWire(good)) << f->name();
  }
  EXPECT_GE(strings, 14);
}

// The UTF-8 check reads strings a word at a time: a bad byte anywhere, in strings
// of every length around the word size, is found.
TEST(EventWireCheck, FindsABadByteAtEveryPositionOfShortAndLongStrings) {
  for (size_t n = 1; n <= 40; ++n) {
    for (size_t at = 0; at < n; ++at) {
      std::string value(n, 'a');
      value[at] = '\xff';
      std::string bytes;
      LenField(5, value, &bytes);
      ASSERT_FALSE(IsWellFormedEventWire(bytes)) << n << " " << at;
      if (at + 1 < n) {
        value[at] = '\xc3';
        value[at + 1] = '\xa9';
        bytes.clear();
        LenField(5, value, &bytes);
        ASSERT_TRUE(IsWellFormedEventWire(bytes)) << n << " " << at;
        ASSERT_TRUE(Parses(bytes));
      }
    }
  }
}

TEST(EventWireCheck, HandlesTagsGroupsAndVarintsAsProtobufDoes) {
  auto check = [&](const std::string& bytes) {
    EXPECT_EQ(IsWellFormedEventWire(bytes), Parses(bytes));
  };
  std::string group;  // an unknown group with a varint inside
  Tag(50, 3, &group);
  Tag(1, 0, &group);
  Varint(7, &group);
  Tag(50, 4, &group);
  check(group);
  EXPECT_TRUE(IsWellFormedEventWire(group));
  std::string wrong_end = group;
  wrong_end[wrong_end.size() - 2] = static_cast<char>(((51 << 3 | 4) & 0x7f) | 0x80);
  check(wrong_end);
  std::string lone_end;
  Tag(50, 4, &lone_end);
  check(lone_end);
  EXPECT_FALSE(IsWellFormedEventWire(lone_end));
  check(std::string("\x00", 1));          // tag 0
  check(std::string("\x02\x00", 2));      // field number 0
  check(std::string("\x0e\x00", 2));      // wire type 6
  check(std::string("\x0f\x00", 2));      // wire type 7
  std::string overlong;
  Tag(11, 0, &overlong);
  overlong.append(10, '\x80');
  overlong.push_back('\x00');
  check(overlong);
  EXPECT_FALSE(IsWellFormedEventWire(overlong));
  std::string wrong_type;  // field 5 (a string) sent as a varint: an unknown field
  Tag(5, 0, &wrong_type);
  Varint(3, &wrong_type);
  check(wrong_type);
  EXPECT_TRUE(IsWellFormedEventWire(wrong_type));
  std::string fixed;
  Tag(60, 1, &fixed);
  fixed.append(8, 'x');
  Tag(61, 5, &fixed);
  fixed.append(4, 'y');
  check(fixed);
  check(fixed.substr(0, fixed.size() - 1));
}

// Random corruptions of real events: the check and protobuf agree on every one.
TEST(EventWireCheck, AgreesWithProtobufOnMutatedEvents) {
  std::mt19937 rng(20261129);
  const std::vector<std::string> seeds = {RichEvent().SerializeAsString(),
                                          MakeEvent("carbon.x", "héllo").SerializeAsString()};
  int rejected = 0;
  for (int i = 0; i < 20000; ++i) {
    std::string b = seeds[i % seeds.size()];
    const int edits = 1 + static_cast<int>(rng() % 3);
    for (int k = 0; k < edits; ++k) {
      const size_t at = rng() % b.size();
      switch (rng() % 4) {
        case 0:
          b[at] = static_cast<char>(rng());
          break;
        case 1:
          b[at] = static_cast<char>(b[at] ^ (1 << (rng() % 8)));
          break;
        case 2:
          b.erase(at, 1 + rng() % 3);
          break;
        case 3:
          b.insert(at, 1, static_cast<char>(rng()));
          break;
      }
      if (b.empty()) b = "x";
    }
    const bool want = Parses(b);
    rejected += want ? 0 : 1;
    ASSERT_EQ(IsWellFormedEventWire(b), want) << "mutation " << i;
  }
  EXPECT_GT(rejected, 1000);  // the corpus does exercise rejections
}

class WireMessageTest : public ::testing::Test {
 protected:
  void SetUp() override {
    BusOptions o;
    o.data_dir = dir_.path() + "/bus";
    auto b = Bus::Open(std::move(o));
    ASSERT_TRUE(b.ok()) << b.status();
    bus_ = *std::move(b);
    auto s = bus_->CreateStream(Me(), {.name = "carbon", .subjects = {"carbon.>"}});
    ASSERT_TRUE(s.ok()) << s.status();
  }
  void TearDown() override { EXPECT_TRUE(bus_->Close().ok()); }

  std::vector<Delivery> Read(Subscription& sub, size_t n) {
    std::vector<Delivery> got;
    absl::Time deadline = absl::Now() + absl::Seconds(20);
    while (got.size() < n && absl::Now() < deadline) {
      absl::Status s = sub.Next(n - got.size(), absl::Milliseconds(100), &got);
      EXPECT_TRUE(s.ok()) << s;
      if (!s.ok()) break;
    }
    return got;
  }

  testing::TempDir dir_;
  std::unique_ptr<Bus> bus_;
};

TEST_F(WireMessageTest, ReplayAndDurableMessagesCarryTheStoredBytesLiveOnesDoNot) {
  auto live = bus_->Subscribe(Me(), {.subject_pattern = "carbon.>"});
  ASSERT_TRUE(live.ok());
  std::vector<Event> published = {MakeEvent("carbon.a", "one"), RichEvent(),
                                  MakeEvent("carbon.b", "three")};
  published[1].set_subject("carbon.meter.reading");
  auto r = bus_->Publish(Me(), published);
  ASSERT_TRUE(r.ok()) << r.status();
  for (Event& e : published) e.set_publisher(Me().SpiffeId());

  std::vector<Delivery> live_got = Read(**live, 3);
  ASSERT_EQ(live_got.size(), 3u);
  for (const Delivery& d : live_got) EXPECT_TRUE(d.message->wire().empty());

  auto replay = bus_->Subscribe(Me(), {.stream = "carbon", .start = StartPosition::Earliest()});
  ASSERT_TRUE(replay.ok());
  ASSERT_TRUE(bus_->CreateConsumer(Me(), {.stream = "carbon", .name = "c"}).ok());
  auto durable = bus_->Subscribe(Me(), {.stream = "carbon", .consumer = "c"});
  ASSERT_TRUE(durable.ok());
  for (Subscription* sub : {replay->get(), durable->get()}) {
    std::vector<Delivery> got = Read(*sub, 3);
    ASSERT_EQ(got.size(), 3u);
    for (size_t i = 0; i < got.size(); ++i) {
      const Message& m = *got[i].message;
      EXPECT_EQ(m.stream, "carbon");
      EXPECT_EQ(m.sequence, i + 1);
      ASSERT_FALSE(m.wire().empty());
      Event from_wire;
      ASSERT_TRUE(from_wire.ParseFromArray(m.wire().data(), static_cast<int>(m.wire().size())));
      EXPECT_TRUE(MessageDifferencer::Equals(from_wire, published[i])) << i;
      EXPECT_TRUE(MessageDifferencer::Equals(m.event(), published[i])) << i;
      EXPECT_EQ(&m.event(), &m.event());  // parsed once
    }
  }
}

TEST_F(WireMessageTest, ConcurrentFirstUsesOfEventSeeOneParsedEvent) {
  std::vector<Event> events;
  for (int i = 0; i < 64; ++i) events.push_back(MakeEvent("carbon.x", "e" + std::to_string(i)));
  ASSERT_TRUE(bus_->Publish(Me(), events).ok());
  auto replay = bus_->Subscribe(Me(), {.stream = "carbon", .start = StartPosition::Earliest()});
  ASSERT_TRUE(replay.ok());
  std::vector<Delivery> got = Read(**replay, 64);
  ASSERT_EQ(got.size(), 64u);
  std::vector<std::vector<const Event*>> seen(4);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (const Delivery& d : got) seen[t].push_back(&d.message->event());
    });
  }
  for (auto& t : threads) t.join();
  for (size_t i = 0; i < got.size(); ++i) {
    for (int t = 1; t < 4; ++t) EXPECT_EQ(seen[t][i], seen[0][i]);
    EXPECT_EQ(seen[0][i]->text_data(), "e" + std::to_string(i));
  }
}

TEST(WireMessage, WithoutAnArenaTheMessageOwnsTheParsedEvent) {
  const Event rich = RichEvent();  // ids differ per call
  const std::string bytes = rich.SerializeAsString();
  Message m("s", 7, absl::FromUnixSeconds(5), bytes, nullptr);
  EXPECT_EQ(m.wire(), bytes);
  EXPECT_TRUE(MessageDifferencer::Equals(m.event(), rich));
  EXPECT_EQ(m.event().GetArena(), nullptr);
}

// A backend that hands out one stored record's payload corrupted, as a damaged
// disk could when the record's checksum happened to match; everything else is
// the real log backend.
class CorruptingBackend : public BusBackend {
 public:
  CorruptingBackend(std::shared_ptr<BusBackend> real, uint64_t bad_sequence, std::string payload)
      : real_(std::move(real)), bad_(bad_sequence), payload_(std::move(payload)) {}

  absl::StatusOr<StreamInfo> CreateStream(const StreamConfig& c) override {
    return real_->CreateStream(c);
  }
  absl::Status DeleteStream(std::string_view n) override { return real_->DeleteStream(n); }
  absl::StatusOr<StreamInfo> GetStream(std::string_view n) override { return real_->GetStream(n); }
  std::vector<StreamInfo> ListStreams() override { return real_->ListStreams(); }
  void Append(std::string_view s, absl::Span<const AppendRecord> r, AppendCallback d) override {
    real_->Append(s, r, std::move(d));
  }
  absl::StatusOr<std::unique_ptr<StreamReader>> Read(std::string_view s, uint64_t seq) override {
    auto r = real_->Read(s, seq);
    if (!r.ok()) return r.status();
    return std::unique_ptr<StreamReader>(std::make_unique<Reader>(this, *std::move(r)));
  }
  absl::StatusOr<uint64_t> ResolveStart(std::string_view s, const StartPosition& p) override {
    return real_->ResolveStart(s, p);
  }
  absl::StatusOr<uint64_t> WaitForSequence(std::string_view s, uint64_t q,
                                           absl::Time d) override {
    return real_->WaitForSequence(s, q, d);
  }
  absl::StatusOr<ConsumerInfo> CreateConsumer(const ConsumerConfig& c) override {
    return real_->CreateConsumer(c);
  }
  absl::Status DeleteConsumer(std::string_view s, std::string_view n) override {
    return real_->DeleteConsumer(s, n);
  }
  absl::StatusOr<ConsumerInfo> GetConsumer(std::string_view s, std::string_view n) override {
    return real_->GetConsumer(s, n);
  }
  absl::StatusOr<std::vector<ConsumerInfo>> ListConsumers(std::string_view s) override {
    return real_->ListConsumers(s);
  }
  absl::StatusOr<uint64_t> JoinConsumer(std::string_view s, std::string_view c) override {
    return real_->JoinConsumer(s, c);
  }
  void LeaveConsumer(std::string_view s, std::string_view c, uint64_t m) override {
    real_->LeaveConsumer(s, c, m);
  }
  absl::Status Fetch(std::string_view s, std::string_view c, uint64_t m, size_t max,
                     absl::Time d, std::vector<FetchedRecord>* out) override {
    absl::Status st = real_->Fetch(s, c, m, max, d, out);
    for (FetchedRecord& f : *out) Corrupt(&f.record);
    return st;
  }
  absl::StatusOr<uint64_t> Ack(std::string_view s, std::string_view c,
                               absl::Span<const uint64_t> a,
                               absl::Span<const uint64_t> n) override {
    return real_->Ack(s, c, a, n);
  }
  absl::Status Housekeeping() override { return real_->Housekeeping(); }
  absl::Status Close() override { return real_->Close(); }

 private:
  class Reader : public StreamReader {
   public:
    Reader(CorruptingBackend* b, std::unique_ptr<StreamReader> r) : b_(b), r_(std::move(r)) {}
    absl::StatusOr<bool> Next(StoredRecord* out) override {
      auto more = r_->Next(out);
      if (more.ok() && *more) b_->Corrupt(out);
      return more;
    }
    uint64_t next_sequence() const override { return r_->next_sequence(); }

   private:
    CorruptingBackend* b_;
    std::unique_ptr<StreamReader> r_;
  };
  void Corrupt(StoredRecord* r) {
    if (r->sequence == bad_) r->payload = payload_;
  }

  std::shared_ptr<BusBackend> real_;
  uint64_t bad_;
  std::string payload_;
};

TEST(WireMessage, AStoredRecordThatWouldNotParseIsDataLossInReplayAndDurableModes) {
  std::string truncated = MakeEvent("carbon.x", "two").SerializeAsString();
  truncated.pop_back();
  std::string bad_utf8;
  LenField(5, "carbon.\xff", &bad_utf8);
  for (const std::string& payload : {truncated, bad_utf8}) {
    testing::TempDir dir;
    auto real = OpenLogBackend({.dir = dir.path() + "/bus"});
    ASSERT_TRUE(real.ok()) << real.status();
    BusOptions o;
    o.backend = std::make_shared<CorruptingBackend>(*real, 2, payload);
    auto bus = Bus::Open(std::move(o));
    ASSERT_TRUE(bus.ok()) << bus.status();
    ASSERT_TRUE((*bus)->CreateStream(Me(), {.name = "carbon", .subjects = {"carbon.>"}}).ok());
    ASSERT_TRUE((*bus)
                    ->Publish(Me(), {MakeEvent("carbon.x", "one"), MakeEvent("carbon.x", "two"),
                                     MakeEvent("carbon.x", "three")})
                    .ok());
    ASSERT_TRUE((*bus)->CreateConsumer(Me(), {.stream = "carbon", .name = "c"}).ok());
    auto replay = (*bus)->Subscribe(Me(), {.stream = "carbon", .start = StartPosition::Earliest()});
    auto durable = (*bus)->Subscribe(Me(), {.stream = "carbon", .consumer = "c"});
    ASSERT_TRUE(replay.ok() && durable.ok());
    for (Subscription* sub : {replay->get(), durable->get()}) {
      std::vector<Delivery> got;
      absl::Status s;
      absl::Time deadline = absl::Now() + absl::Seconds(20);
      while (s.ok() && absl::Now() < deadline) s = sub->Next(10, absl::Milliseconds(100), &got);
      EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << s;
      EXPECT_NE(s.message().find("stream carbon: record 2 is not a valid event"),
                std::string_view::npos)
          << s;
    }
    replay->reset();
    durable->reset();
    EXPECT_TRUE((*bus)->Close().ok());
  }
}

}  // namespace
}  // namespace cityos
