// File: cityos/subject.h
//
// Bus subjects and subscription patterns.
//
// A subject is 1..16 dot-separated tokens, each 1..64 characters of
// [A-Za-z0-9_-], at most 256 bytes in all: `carbon.meter.reading.quzhou.kecheng`.
// A pattern may also use `*` as a whole token (exactly one token) and `>` as
// the whole last token (one or more trailing tokens): `carbon.meter.*.quzhou.>`.
//
//   CITYOS_RETURN_IF_ERROR(cityos::ValidateSubject(s));
//   bool hit = cityos::SubjectMatches("carbon.>", "carbon.meter.reading");
#ifndef CITYOS_SUBJECT_H_
#define CITYOS_SUBJECT_H_

#include <cstddef>
#include <string_view>

#include "absl/status/status.h"

namespace cityos {

inline constexpr size_t kMaxSubjectTokens = 16;
inline constexpr size_t kMaxSubjectLength = 256;
inline constexpr size_t kMaxSubjectTokenLength = 64;

// OK if `subject` is a valid publish subject (no wildcards). Otherwise
// INVALID_ARGUMENT whose message quotes the subject and names the bad token by
// position (1-based) and, for an illegal character, the character.
absl::Status ValidateSubject(std::string_view subject);

// As ValidateSubject, but `*` and a final `>` are allowed.
absl::Status ValidatePattern(std::string_view pattern);

// True if `subject` (valid) matches `pattern` (valid). Linear in the length;
// the bus router uses a trie instead of calling this per subscription.
bool SubjectMatches(std::string_view pattern, std::string_view subject);

// True if some subject matches both patterns (used to refuse overlapping
// stream captures).
bool PatternsOverlap(std::string_view a, std::string_view b);

}  // namespace cityos

#endif  // CITYOS_SUBJECT_H_
