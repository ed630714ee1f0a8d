#include "cityos/event.h"

#include <cstdint>
#include <iterator>

#include <google/protobuf/descriptor.h>
#include <google/protobuf/message.h>
#include <google/protobuf/unknown_field_set.h>
#include <google/protobuf/util/time_util.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "cityos/clock.h"
#include "cityos/id.h"
#include "cityos/subject.h"
#include "core/strings.h"

namespace cityos {
namespace {

using event::v1::Classification;
using event::v1::Event;

absl::Status Missing(std::string_view attr) {
  return absl::InvalidArgumentError(absl::StrCat("event.", AV(attr), ": required attribute is missing"));
}

absl::Status TooLong(std::string_view attr, size_t size, size_t max) {
  return absl::InvalidArgumentError(absl::StrFormat(
      "event.%s: too long: %d bytes, at most %d", attr, size, max));
}

absl::Status CheckRequired(std::string_view attr, const std::string& v, size_t max) {
  if (v.empty()) return Missing(attr);
  if (v.size() > max) return TooLong(attr, v.size(), max);
  return absl::OkStatus();
}

bool IsPersonal(Classification c) {
  return c == event::v1::CLASSIFICATION_PERSONAL ||
         c == event::v1::CLASSIFICATION_SENSITIVE;
}

// Most bytes one length-delimited field adds besides its payload: a tag of at
// most 2 bytes (field numbers below 2048) and a length varint of at most 10.
constexpr size_t kMaxFieldOverhead = 2 + 10;

// The field numbers SerializedSizeBound accounts for: all of Event's. If the
// proto gains a field, the bound is not used (exact ByteSizeLong instead).
bool BoundCoversAllFields() {
  static const bool covers = [] {
    const int known[] = {1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 12, 13, 14, 15, 16, 17, 20, 21, 22};
    const google::protobuf::Descriptor* d = Event::descriptor();
    if (d->field_count() != static_cast<int>(std::size(known))) return false;
    for (int number : known) {
      if (d->FindFieldByNumber(number) == nullptr) return false;
    }
    return d->extension_range_count() == 0;
  }();
  return covers;
}

// An upper bound of e.ByteSizeLong() that does not encode anything: every
// length-delimited field counted as its payload plus kMaxFieldOverhead, the
// enum as 11 bytes, the nested Timestamp and Any (small) exactly. Returns
// SIZE_MAX when `e` carries unknown fields (their size is not bounded here).
// Exact wire sizes, for reference: a string field is tag + varint(len) + len
// (omitted when empty in proto3), a map entry is tag(2) + varint(n) + n with
// n = 1 + varint(klen) + klen + 1 + varint(vlen) + vlen, a set oneof member
// is tag(2) + varint(len) + len even when empty.
size_t SerializedSizeBound(const Event& e) {
  if (!BoundCoversAllFields()) return SIZE_MAX;
  // Event's reflection, looked up once: e.GetReflection() goes through the
  // descriptor table's call_once on every call (≈ 110 instructions).
  static const google::protobuf::Reflection* const reflection = Event::GetReflection();
  if (!reflection->GetUnknownFields(e).empty()) return SIZE_MAX;
  size_t n = e.id().size() + e.source().size() + e.spec_version().size() + e.type().size() +
             e.subject().size() + e.data_content_type().size() + e.data_schema().size() +
             e.domain().size() + e.data_subject().size() + e.owner().size() +
             e.region().size() + e.jurisdiction().size() + e.publisher().size() +
             13 * kMaxFieldOverhead;  // the 13 string fields
  n += 1 + 10;                     // classification: tag + varint (10 if negative)
  if (e.has_time()) n += kMaxFieldOverhead + e.time().ByteSizeLong();
  for (const auto& [key, value] : e.extensions()) {
    n += key.size() + value.size() + kMaxFieldOverhead + 2 * (1 + 10);
  }
  switch (e.data_case()) {
    case Event::kBinaryData:
      n += kMaxFieldOverhead + e.binary_data().size();
      break;
    case Event::kTextData:
      n += kMaxFieldOverhead + e.text_data().size();
      break;
    case Event::kProtoData:
      n += kMaxFieldOverhead + e.proto_data().ByteSizeLong();
      break;
    case Event::DATA_NOT_SET:
      break;
  }
  return n;
}

}  // namespace

namespace event_internal {
size_t SerializedSizeBoundForTest(const Event& e) { return SerializedSizeBound(e); }
}  // namespace event_internal

absl::Time ToAbslTime(const google::protobuf::Timestamp& ts) {
  return absl::FromUnixSeconds(ts.seconds()) + absl::Nanoseconds(ts.nanos());
}

void SetTimestamp(absl::Time t, google::protobuf::Timestamp* ts) {
  int64_t ns = absl::ToUnixNanos(t);
  int64_t secs = ns / 1000000000;
  int64_t nanos = ns % 1000000000;
  if (nanos < 0) {
    nanos += 1000000000;
    --secs;
  }
  ts->set_seconds(secs);
  ts->set_nanos(static_cast<int32_t>(nanos));
}

absl::Status ValidateEvent(const Event& e, const EventLimits& limits) {
  if (absl::Status s = CheckRequired("id", e.id(), 128); !s.ok()) return s;
  if (absl::Status s = CheckRequired("source", e.source(), 512); !s.ok()) return s;
  if (!e.spec_version().empty() && e.spec_version() != "1.0") {
    return absl::InvalidArgumentError(absl::StrCat(
        "event.spec_version: \"", e.spec_version(), "\" is not supported (expected \"1.0\")"));
  }
  if (absl::Status s = CheckRequired("type", e.type(), 256); !s.ok()) return s;
  if (e.subject().empty()) return Missing("subject");
  if (absl::Status s = ValidateSubject(e.subject()); !s.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("event.subject: ", s.message()));
  }
  if (!e.has_time()) return Missing("time");
  if (e.time().nanos() < 0 || e.time().nanos() > 999999999) {
    return absl::InvalidArgumentError("event.time: nanos out of range");
  }
  if (e.domain().empty()) return Missing("domain");
  std::string_view first = std::string_view(e.subject()).substr(0, e.subject().find('.'));
  if (e.domain() != first) {
    return absl::InvalidArgumentError(absl::StrCat(
        "event.domain: \"", e.domain(), "\" does not match the subject's first token \"",
        AV(first), "\""));
  }
  if (e.classification() == event::v1::CLASSIFICATION_UNSPECIFIED) {
    return absl::InvalidArgumentError(
        "event.classification: required attribute is missing (PUBLIC, INTERNAL, PERSONAL "
        "or SENSITIVE)");
  }
  if (!event::v1::Classification_IsValid(e.classification())) {
    return absl::InvalidArgumentError(
        absl::StrCat("event.classification: unknown value ", e.classification()));
  }
  if (absl::Status s = CheckRequired("owner", e.owner(), 128); !s.ok()) return s;
  if (e.region().size() > 64) return TooLong("region", e.region().size(), 64);
  if (IsPersonal(e.classification())) {
    const char* cls = e.classification() == event::v1::CLASSIFICATION_PERSONAL
                          ? "PERSONAL"
                          : "SENSITIVE";
    if (e.data_subject().empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("event.data_subject: required when classification is ", cls));
    }
    if (e.jurisdiction().empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("event.jurisdiction: required when classification is ", cls));
    }
  } else if (!e.data_subject().empty()) {
    return absl::InvalidArgumentError(
        "event.data_subject: set, but classification is not PERSONAL or SENSITIVE; "
        "data about a person must be classified as such");
  }
  if (e.data_subject().size() > 128) return TooLong("data_subject", e.data_subject().size(), 128);
  if (!e.jurisdiction().empty()) {
    const std::string& j = e.jurisdiction();
    if (j.size() != 2 || j[0] < 'A' || j[0] > 'Z' || j[1] < 'A' || j[1] > 'Z') {
      return absl::InvalidArgumentError(absl::StrCat(
          "event.jurisdiction: \"", j, "\" is not an ISO 3166-1 alpha-2 code such as CN or JP"));
    }
  }
  for (const auto& [name, value] : e.extensions()) {
    bool ok = !name.empty() && name.size() <= 20;
    for (char c : name) ok = ok && ((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'));
    if (!ok) {
      return absl::InvalidArgumentError(absl::StrCat(
          "event.extensions: name \"", name,
          "\" is not a CloudEvents attribute name (1-20 characters of a-z 0-9)"));
    }
  }
  // The size check walks the encoding (ByteSizeLong) only when a cheap upper
  // bound of the size is over the limit: the outcome is the same.
  if (SerializedSizeBound(e) <= limits.max_event_bytes) return absl::OkStatus();
  size_t size = e.ByteSizeLong();
  if (size > limits.max_event_bytes) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "event: %d bytes serialized, over the limit of %d bytes", size,
        limits.max_event_bytes));
  }
  return absl::OkStatus();
}

EventBuilder::EventBuilder(Clock* clock) : clock_(clock ? clock : Clock::Real()) {
  event_.set_spec_version("1.0");
}

EventBuilder& EventBuilder::Id(std::string_view id) {
  event_.set_id(std::string(id));
  return *this;
}
EventBuilder& EventBuilder::Source(std::string_view source) {
  event_.set_source(std::string(source));
  return *this;
}
EventBuilder& EventBuilder::Type(std::string_view type) {
  event_.set_type(std::string(type));
  type_set_ = true;
  return *this;
}
EventBuilder& EventBuilder::Subject(std::string_view subject) {
  event_.set_subject(std::string(subject));
  if (!domain_set_) event_.set_domain(std::string(subject.substr(0, subject.find('.'))));
  return *this;
}
EventBuilder& EventBuilder::Time(absl::Time time) {
  SetTimestamp(time, event_.mutable_time());
  return *this;
}
EventBuilder& EventBuilder::Domain(std::string_view domain) {
  event_.set_domain(std::string(domain));
  domain_set_ = true;
  return *this;
}
EventBuilder& EventBuilder::Classification(event::v1::Classification c) {
  event_.set_classification(c);
  return *this;
}
EventBuilder& EventBuilder::DataSubject(std::string_view person) {
  event_.set_data_subject(std::string(person));
  return *this;
}
EventBuilder& EventBuilder::Owner(std::string_view org) {
  event_.set_owner(std::string(org));
  return *this;
}
EventBuilder& EventBuilder::Region(std::string_view region) {
  event_.set_region(std::string(region));
  return *this;
}
EventBuilder& EventBuilder::Jurisdiction(std::string_view code) {
  event_.set_jurisdiction(std::string(code));
  return *this;
}
EventBuilder& EventBuilder::Extension(std::string_view name, std::string_view value) {
  (*event_.mutable_extensions())[std::string(name)] = std::string(value);
  return *this;
}
EventBuilder& EventBuilder::Publisher(std::string_view spiffe_id) {
  event_.set_publisher(std::string(spiffe_id));
  return *this;
}
EventBuilder& EventBuilder::ProtoData(const google::protobuf::Message& payload) {
  event_.mutable_proto_data()->PackFrom(payload);
  if (!type_set_) event_.set_type(payload.GetDescriptor()->full_name());
  event_.set_data_schema(event_.proto_data().type_url());
  event_.set_data_content_type("application/protobuf");
  return *this;
}
EventBuilder& EventBuilder::TextData(std::string_view content_type, std::string_view text) {
  event_.set_text_data(std::string(text));
  event_.set_data_content_type(std::string(content_type));
  return *this;
}
EventBuilder& EventBuilder::BinaryData(std::string_view content_type,
                                       std::string_view bytes) {
  event_.set_binary_data(std::string(bytes));
  event_.set_data_content_type(std::string(content_type));
  return *this;
}

absl::StatusOr<Event> EventBuilder::Build(const EventLimits& limits) & {
  Event e = event_;
  if (e.id().empty()) e.set_id(UuidToString(NewUuidV7At(clock_->Now())));
  if (!e.has_time()) SetTimestamp(clock_->Now(), e.mutable_time());
  if (absl::Status s = ValidateEvent(e, limits); !s.ok()) return s;
  return e;
}

absl::StatusOr<Event> EventBuilder::Build(const EventLimits& limits) && {
  if (event_.id().empty()) event_.set_id(UuidToString(NewUuidV7At(clock_->Now())));
  if (!event_.has_time()) SetTimestamp(clock_->Now(), event_.mutable_time());
  if (absl::Status s = ValidateEvent(event_, limits); !s.ok()) return s;
  return std::move(event_);
}

}  // namespace cityos
