// File: cityos/id.h
//
// Time-ordered unique ids (RFC 9562 UUIDv7) for events, receipts and audit
// entries. Ids made by one process sort in creation order, even within one
// millisecond (a 12-bit counter fills `rand_a`, per RFC 9562 §6.2 method 1).
//
//   std::string id = cityos::NewEventId();  // "0190b5a4-3c1e-7a02-8f3d-..."
#ifndef CITYOS_ID_H_
#define CITYOS_ID_H_

#include <array>
#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace cityos {

// A 128-bit UUID.
using Uuid = std::array<uint8_t, 16>;

// Returns a new UUIDv7 using the real clock. Thread-safe.
Uuid NewUuidV7();

// Returns a new UUIDv7 whose timestamp is `now`; ids from successive calls are
// strictly increasing, even if `now` goes backwards. Thread-safe.
Uuid NewUuidV7At(absl::Time now);

// Canonical 8-4-4-4-12 lower-case hex form.
std::string UuidToString(const Uuid& id);

// Parses the canonical form; INVALID_ARGUMENT names what is wrong.
absl::StatusOr<Uuid> ParseUuid(std::string_view text);

// The millisecond timestamp of a UUIDv7.
absl::Time UuidV7Time(const Uuid& id);

// NewUuidV7() in canonical form: the id cityos gives new events.
std::string NewEventId();

}  // namespace cityos

#endif  // CITYOS_ID_H_
