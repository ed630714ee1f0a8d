// File: cityos/status.h
//
// Error propagation helpers. cityos reports every recoverable error as an
// absl::Status or absl::StatusOr<T>; codes are the gRPC codes, used as
// documented in absl/status/status.h. Debian 12's abseil (20220623) has no
// status macros of its own, so these are the one visible way to pass errors up:
//
//   absl::StatusOr<Config> LoadAndCheck(const std::string& path) {
//     CITYOS_ASSIGN_OR_RETURN(Config c, LoadConfigFile(path));
//     CITYOS_RETURN_IF_ERROR(c.Validate());
//     return c;
//   }
#ifndef CITYOS_STATUS_H_
#define CITYOS_STATUS_H_

#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

// Evaluates `expr` (an absl::Status) and returns it from the enclosing
// function if it is not OK.
#define CITYOS_RETURN_IF_ERROR(expr)                       \
  do {                                                     \
    ::absl::Status cityos_status_ = (expr);                \
    if (!cityos_status_.ok()) return cityos_status_;       \
  } while (false)

#define CITYOS_STATUS_CONCAT_INNER_(a, b) a##b
#define CITYOS_STATUS_CONCAT_(a, b) CITYOS_STATUS_CONCAT_INNER_(a, b)

// Evaluates `rexpr` (an absl::StatusOr<T>); on error returns its status from
// the enclosing function, otherwise moves the value into `lhs`, which may be a
// declaration (`CITYOS_ASSIGN_OR_RETURN(auto x, F());`).
#define CITYOS_ASSIGN_OR_RETURN(lhs, rexpr)                                   \
  CITYOS_ASSIGN_OR_RETURN_IMPL_(                                              \
      CITYOS_STATUS_CONCAT_(cityos_statusor_, __LINE__), lhs, rexpr)

#define CITYOS_ASSIGN_OR_RETURN_IMPL_(statusor, lhs, rexpr) \
  auto statusor = (rexpr);                                  \
  if (!statusor.ok()) return std::move(statusor).status();  \
  lhs = *std::move(statusor)

namespace cityos {

// Returns `status` with `context` prepended to its message ("context: msg"),
// keeping its code. OK stays OK.
absl::Status Annotate(const absl::Status& status, std::string_view context);

}  // namespace cityos

#endif  // CITYOS_STATUS_H_
