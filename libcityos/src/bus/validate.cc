#include "bus/validate.h"

#include "absl/strings/str_format.h"
#include "cityos/subject.h"

namespace cityos::bus_internal {

absl::Status ValidateName(std::string_view what, std::string_view name) {
  bool ok = !name.empty() && name.size() <= 64;
  for (char c : name) {
    ok = ok && ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                c == '_' || c == '-');
  }
  if (!ok) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "%s \"%s\": must be 1-64 characters of A-Z a-z 0-9 _ -", what, name));
  }
  return absl::OkStatus();
}

absl::Status ValidateStreamConfig(const StreamConfig& c) {
  if (absl::Status s = ValidateName("stream name", c.name); !s.ok()) return s;
  if (c.subjects.empty()) {
    return absl::InvalidArgumentError(
        absl::StrFormat("stream %s: subjects: at least one pattern is required", c.name));
  }
  for (size_t i = 0; i < c.subjects.size(); ++i) {
    if (absl::Status s = ValidatePattern(c.subjects[i]); !s.ok()) {
      return absl::InvalidArgumentError(
          absl::StrFormat("stream %s: subjects[%d]: %s", c.name, i, s.message()));
    }
  }
  if (c.durability == Durability::kInterval && c.sync_interval <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "stream %s: sync_interval must be positive with durability interval", c.name));
  }
  if (c.max_age < absl::ZeroDuration()) {
    return absl::InvalidArgumentError(
        absl::StrFormat("stream %s: max_age must not be negative", c.name));
  }
  if (c.segment_bytes < (64u << 10) || c.segment_bytes > (1ull << 40)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "stream %s: segment_bytes %d is out of range (64 KiB to 1 TiB)", c.name,
        c.segment_bytes));
  }
  return absl::OkStatus();
}

absl::Status ValidateConsumerConfig(const ConsumerConfig& c) {
  if (absl::Status s = ValidateName("stream name", c.stream); !s.ok()) return s;
  if (absl::Status s = ValidateName("consumer name", c.name); !s.ok()) return s;
  if (!c.filter_subject.empty()) {
    if (absl::Status s = ValidatePattern(c.filter_subject); !s.ok()) {
      return absl::InvalidArgumentError(
          absl::StrFormat("consumer %s: filter_subject: %s", c.name, s.message()));
    }
  }
  if (c.ack_wait <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError(
        absl::StrFormat("consumer %s: ack_wait must be positive", c.name));
  }
  if (c.max_in_flight == 0) {
    return absl::InvalidArgumentError(
        absl::StrFormat("consumer %s: max_in_flight must be at least 1", c.name));
  }
  if (c.start.kind == StartPosition::Kind::kSequence && c.start.sequence == 0) {
    return absl::InvalidArgumentError(
        absl::StrFormat("consumer %s: start sequence must be at least 1", c.name));
  }
  return absl::OkStatus();
}

}  // namespace cityos::bus_internal
