#include "cityos/event.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "cityos/clock.h"
#include "cityos/id.h"

namespace cityos {
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
