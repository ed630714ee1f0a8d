#include "cityos/event.h"

#include <gmock/gmock.h>
#include <google/protobuf/descriptor.h>
#include <google/protobuf/reflection.h>
#include <google/protobuf/unknown_field_set.h>
#include <gtest/gtest.h>

#include <climits>
#include <random>
#include <string>

#include "absl/strings/str_format.h"
#include "cityos/clock.h"
#include "cityos/id.h"

namespace cityos {
namespace event_internal {
// Defined in libcityos/src/core/event.cc (not in the public header).
size_t SerializedSizeBoundForTest(const event::v1::Event& e);
}  // namespace event_internal
namespace {

using event::v1::Event;
using ::testing::HasSubstr;

Event ValidEvent() {
  SimulatedClock clock(absl::FromUnixSeconds(1764000000));
  auto e = EventBuilder(&clock)
               .Source("//quzhou.city/meters/m-17")
               .Type("cityos.carbon.v1.MeterReading")
               .Subject("carbon.meter.reading.quzhou.kecheng")
               .Classification(event::v1::CLASSIFICATION_INTERNAL)
               .Owner("quzhou-grid")
               .Region("CN-ZJ-QZ-KC")
               .TextData("application/json", R"({"kwh": 12.5})")
               .Build();
  EXPECT_TRUE(e.ok()) << e.status();
  return *e;
}

TEST(EventBuilder, FillsIdTimeDomainAndValidates) {
  Event e = ValidEvent();
  EXPECT_TRUE(ParseUuid(e.id()).ok());
  EXPECT_EQ(e.domain(), "carbon");
  EXPECT_EQ(e.spec_version(), "1.0");
  EXPECT_EQ(ToAbslTime(e.time()), absl::FromUnixSeconds(1764000000));
  EXPECT_TRUE(ValidateEvent(e).ok());
}

TEST(EventBuilder, ProtoDataSetsTypeSchemaAndContentType) {
  google::protobuf::Timestamp payload;
  payload.set_seconds(5);
  auto e = EventBuilder()
               .Source("//x")
               .Subject("disaster.sensor.water")
               .Classification(event::v1::CLASSIFICATION_PUBLIC)
               .Owner("city")
               .ProtoData(payload)
               .Build();
  ASSERT_TRUE(e.ok()) << e.status();
  EXPECT_EQ(e->type(), "google.protobuf.Timestamp");
  EXPECT_EQ(e->data_schema(), "type.googleapis.com/google.protobuf.Timestamp");
  EXPECT_EQ(e->data_content_type(), "application/protobuf");
}

TEST(EventBuilder, ErrorNamesTheAttribute) {
  auto e = EventBuilder().Subject("mobility.trip").Owner("o").Build();
  ASSERT_FALSE(e.ok());
  EXPECT_EQ(e.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(e.status().message(), HasSubstr("event.source"));
}

struct Case {
  const char* name;
  void (*mutate)(Event&);
  const char* expected;  // substring of the error; nullptr = valid
};

class EventValidation : public ::testing::TestWithParam<Case> {};

TEST_P(EventValidation, Table) {
  Event e = ValidEvent();
  GetParam().mutate(e);
  absl::Status s = ValidateEvent(e, EventLimits{.max_event_bytes = 4096});
  if (GetParam().expected == nullptr) {
    EXPECT_TRUE(s.ok()) << s;
  } else {
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
    EXPECT_THAT(s.message(), HasSubstr(GetParam().expected));
  }
}

INSTANTIATE_TEST_SUITE_P(
    Envelope, EventValidation,
    ::testing::Values(
        Case{"valid", [](Event&) {}, nullptr},
        Case{"no_id", [](Event& e) { e.clear_id(); }, "event.id: required"},
        Case{"long_id", [](Event& e) { e.set_id(std::string(129, 'a')); }, "event.id: too long"},
        Case{"no_source", [](Event& e) { e.clear_source(); }, "event.source: required"},
        Case{"bad_spec", [](Event& e) { e.set_spec_version("0.3"); }, "event.spec_version"},
        Case{"empty_spec_ok", [](Event& e) { e.clear_spec_version(); }, nullptr},
        Case{"no_type", [](Event& e) { e.clear_type(); }, "event.type: required"},
        Case{"no_subject", [](Event& e) { e.clear_subject(); }, "event.subject: required"},
        Case{"empty_token", [](Event& e) { e.set_subject("carbon..reading"); },
             "token 2 is empty"},
        Case{"illegal_char", [](Event& e) { e.set_subject("carbon.me$ter"); },
             "token 2 \"me$ter\" has the illegal character '$'"},
        Case{"wildcard", [](Event& e) { e.set_subject("carbon.*"); }, "wildcard"},
        Case{"gt_wildcard", [](Event& e) { e.set_subject("carbon.>"); }, "wildcard"},
        Case{"too_many_tokens",
             [](Event& e) { e.set_subject("carbon.a.b.c.d.e.f.g.h.i.j.k.l.m.n.o.p"); },
             "too many tokens"},
        Case{"subject_too_long",
             [](Event& e) { e.set_subject("carbon." + std::string(300, 'a')); }, "too long"},
        Case{"no_time", [](Event& e) { e.clear_time(); }, "event.time: required"},
        Case{"no_domain", [](Event& e) { e.clear_domain(); }, "event.domain: required"},
        Case{"domain_mismatch", [](Event& e) { e.set_domain("mobility"); },
             "does not match the subject's first token \"carbon\""},
        Case{"no_class",
             [](Event& e) { e.set_classification(event::v1::CLASSIFICATION_UNSPECIFIED); },
             "event.classification: required"},
        Case{"bad_class",
             [](Event& e) { e.set_classification(static_cast<event::v1::Classification>(42)); },
             "event.classification: unknown value 42"},
        Case{"no_owner", [](Event& e) { e.clear_owner(); }, "event.owner: required"},
        Case{"personal_needs_subject",
             [](Event& e) {
               e.set_classification(event::v1::CLASSIFICATION_PERSONAL);
               e.set_jurisdiction("CN");
             },
             "event.data_subject: required when classification is PERSONAL"},
        Case{"sensitive_needs_jurisdiction",
             [](Event& e) {
               e.set_classification(event::v1::CLASSIFICATION_SENSITIVE);
               e.set_data_subject("p-1");
             },
             "event.jurisdiction: required when classification is SENSITIVE"},
        Case{"personal_ok",
             [](Event& e) {
               e.set_classification(event::v1::CLASSIFICATION_PERSONAL);
               e.set_data_subject("p-1");
               e.set_jurisdiction("JP");
             },
             nullptr},
        Case{"subject_on_public", [](Event& e) { e.set_data_subject("p-1"); },
             "event.data_subject: set, but classification is not PERSONAL"},
        Case{"bad_jurisdiction", [](Event& e) { e.set_jurisdiction("China"); },
             "ISO 3166-1 alpha-2"},
        Case{"bad_extension", [](Event& e) { (*e.mutable_extensions())["Bad-Name"] = "x"; },
             "event.extensions: name \"Bad-Name\""},
        Case{"oversize", [](Event& e) { e.set_text_data(std::string(5000, 'x')); },
             "over the limit of 4096 bytes"}),
    [](const ::testing::TestParamInfo<Case>& info) { return std::string(info.param.name); });

TEST(EventValidation, DefaultLimitIsOneMebibyte) {
  Event e = ValidEvent();
  e.set_binary_data(std::string((1 << 20) - 1024, 'x'));
  EXPECT_TRUE(ValidateEvent(e).ok());
  e.set_binary_data(std::string(1 << 20, 'x'));
  EXPECT_EQ(ValidateEvent(e).code(), absl::StatusCode::kInvalidArgument);
}

// Random contents for every field of Event, found through reflection so that
// a field added to the proto is covered too (or fails here until it is).
class RandomEvents {
 public:
  explicit RandomEvents(uint64_t seed) : rng_(seed) {}

  size_t Pick(size_t n) { return static_cast<size_t>(rng_() % n); }

  std::string Bytes() {
    static const size_t kLengths[] = {0, 1, 5, 30, 126, 127, 128, 129, 300, 16383, 16384};
    size_t n = Pick(4) == 0 ? kLengths[Pick(std::size(kLengths))] : Pick(40);
    std::string s(n, static_cast<char>(Pick(256)));
    for (size_t i = 0; i < std::min<size_t>(n, 40); ++i) s[Pick(n)] = static_cast<char>(Pick(256));
    return s;
  }

  void AddUnknown(google::protobuf::UnknownFieldSet* u) {
    for (size_t k = Pick(4); k > 0; --k) {
      int number = 100 + static_cast<int>(Pick(3000));
      switch (Pick(4)) {
        case 0: u->AddVarint(number, rng_()); break;
        case 1: u->AddFixed32(number, static_cast<uint32_t>(rng_())); break;
        case 2: u->AddFixed64(number, rng_()); break;
        default: u->AddLengthDelimited(number, Bytes()); break;
      }
    }
  }

  // Sets a random subset of `m`'s fields (recursively) to random values and
  // sometimes adds unknown fields.
  void Fill(google::protobuf::Message* m) {
    const google::protobuf::Descriptor* d = m->GetDescriptor();
    const google::protobuf::Reflection* r = m->GetReflection();
    for (int i = 0; i < d->field_count(); ++i) {
      const google::protobuf::FieldDescriptor* f = d->field(i);
      if (Pick(10) < 3) continue;
      using FD = google::protobuf::FieldDescriptor;
      if (f->is_map()) {
        // Sometimes many entries, so that their per-entry overhead counts.
        for (size_t k = Pick(4) == 0 ? 20 + Pick(40) : Pick(5); k > 0; --k) {
          google::protobuf::Message* entry = r->AddMessage(m, f);
          const FD* key = entry->GetDescriptor()->map_key();
          const FD* value = entry->GetDescriptor()->map_value();
          ASSERT_EQ(key->cpp_type(), FD::CPPTYPE_STRING);
          ASSERT_EQ(value->cpp_type(), FD::CPPTYPE_STRING);
          entry->GetReflection()->SetString(entry, key, Bytes());
          entry->GetReflection()->SetString(entry, value, Bytes());
        }
        continue;
      }
      ASSERT_FALSE(f->is_repeated()) << "unhandled repeated field " << f->full_name();
      switch (f->cpp_type()) {
        case FD::CPPTYPE_STRING: r->SetString(m, f, Bytes()); break;
        case FD::CPPTYPE_ENUM: {
          const int values[] = {0, 1, 2, 3, 4, 5, 42, -1, -42, INT_MAX, INT_MIN};
          r->SetEnumValue(m, f, values[Pick(std::size(values))]);
          break;
        }
        case FD::CPPTYPE_INT32: r->SetInt32(m, f, static_cast<int32_t>(rng_())); break;
        case FD::CPPTYPE_INT64: r->SetInt64(m, f, static_cast<int64_t>(rng_() >> Pick(64))); break;
        case FD::CPPTYPE_MESSAGE: Fill(r->MutableMessage(m, f)); break;
        default: FAIL() << "unhandled field type of " << f->full_name();
      }
    }
    if (Pick(4) == 0) AddUnknown(r->MutableUnknownFields(m));
  }

 private:
  std::mt19937_64 rng_;
};

// The size check compares a cheap upper bound with the limit and computes the
// exact size only when the bound is over it; the bound must never be below
// the exact size, whatever the event holds.
TEST(EventValidation, SizeBoundIsNeverBelowTheSerializedSize) {
  RandomEvents random(7);
  size_t with_unknown = 0, bounded = 0;
  for (int i = 0; i < 30000; ++i) {
    Event e;
    random.Fill(&e);
    if (HasFatalFailure()) return;
    size_t exact = e.ByteSizeLong();
    size_t bound = event_internal::SerializedSizeBoundForTest(e);
    ASSERT_GE(bound, exact) << e.DebugString();
    if (bound == SIZE_MAX) {
      ++with_unknown;
    } else {
      ++bounded;
      ASSERT_LE(bound - exact, 200u + 30u * e.extensions_size())
          << "bound needlessly loose: " << e.DebugString();
    }
  }
  EXPECT_GT(with_unknown, 1000u);
  EXPECT_GT(bounded, 10000u);
}

// Valid events of random sizes (data, extensions, proto_data with unknown
// fields, unknown fields): ValidateEvent accepts exactly up to the exact
// serialized size, and its error names that size, as it did when it always
// called ByteSizeLong.
TEST(EventValidation, SizeLimitIsExact) {
  RandomEvents random(11);
  for (int i = 0; i < 20000; ++i) {
    Event e = ValidEvent();
    switch (random.Pick(4)) {
      case 0: e.set_binary_data(random.Bytes()); break;
      case 1: e.set_text_data(random.Bytes()); break;
      case 2:
        e.mutable_proto_data()->set_type_url("type.googleapis.com/x." + std::to_string(i));
        e.mutable_proto_data()->set_value(random.Bytes());
        if (random.Pick(2) == 0) {
          random.AddUnknown(e.mutable_proto_data()->GetReflection()->MutableUnknownFields(
              e.mutable_proto_data()));
        }
        break;
      default: e.clear_data(); break;
    }
    for (size_t k = random.Pick(4); k > 0; --k) {
      (*e.mutable_extensions())["ext" + std::to_string(random.Pick(1000))] = random.Bytes();
    }
    if (random.Pick(3) == 0) random.AddUnknown(e.GetReflection()->MutableUnknownFields(&e));
    if (random.Pick(3) == 0) {
      random.AddUnknown(e.mutable_time()->GetReflection()->MutableUnknownFields(e.mutable_time()));
    }
    const size_t size = e.ByteSizeLong();
    ASSERT_TRUE(ValidateEvent(e, EventLimits{.max_event_bytes = size}).ok()) << size;
    absl::Status over = ValidateEvent(e, EventLimits{.max_event_bytes = size - 1});
    ASSERT_EQ(over.code(), absl::StatusCode::kInvalidArgument);
    ASSERT_EQ(over.message(), absl::StrFormat("event: %d bytes serialized, over the limit of "
                                              "%d bytes",
                                              size, size - 1));
    size_t limit = size - 50 + random.Pick(400);
    ASSERT_EQ(ValidateEvent(e, EventLimits{.max_event_bytes = limit}).ok(), size <= limit)
        << size << " " << limit;
  }
}

TEST(Timestamp, RoundTripsNegativeAndFractional) {
  for (absl::Time t : {absl::FromUnixNanos(-1500000001), absl::FromUnixNanos(1764000000123456789),
                       absl::UnixEpoch()}) {
    google::protobuf::Timestamp ts;
    SetTimestamp(t, &ts);
    EXPECT_GE(ts.nanos(), 0);
    EXPECT_EQ(ToAbslTime(ts), t);
  }
}

}  // namespace
}  // namespace cityos
