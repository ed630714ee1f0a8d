// Internal: checks of stream and consumer configs, shared by the Bus and the
// backends (errors are INVALID_ARGUMENT naming the field), and of stored events.
#ifndef CITYOS_SRC_BUS_VALIDATE_H_
#define CITYOS_SRC_BUS_VALIDATE_H_

#include <string_view>

#include "absl/status/status.h"
#include "cityos/bus.h"

namespace cityos::bus_internal {

// 1-64 characters of [A-Za-z0-9_-]; `what` names the field in the message.
absl::Status ValidateName(std::string_view what, std::string_view name);
absl::Status ValidateStreamConfig(const StreamConfig& config);
absl::Status ValidateConsumerConfig(const ConsumerConfig& config);

// Whether `wire` is a well-formed serialized cityos.event.v1.Event, i.e. whether
// Event::ParseFromString would accept it: a walk over the wire format (tags, varints,
// lengths, groups, UTF-8 of the string fields, nested Timestamp/Any/map entries) that
// builds nothing. Stored records are checked with it before a Message hands out their
// bytes and parses them only when asked.
bool IsWellFormedEventWire(std::string_view wire);

}  // namespace cityos::bus_internal

#endif  // CITYOS_SRC_BUS_VALIDATE_H_
