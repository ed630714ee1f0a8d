// Internal: checks of stream and consumer configs, shared by the Bus and the
// backends. Errors are INVALID_ARGUMENT naming the field.
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

}  // namespace cityos::bus_internal

#endif  // CITYOS_SRC_BUS_VALIDATE_H_
