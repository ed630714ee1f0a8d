// Internal: page tokens of the state store. A token is base64url (unpadded)
// of a format byte, a 16-byte fingerprint of the query it belongs to and the
// keyset cursor (the last id, or version, examined). The fingerprint binds the
// token to its query, so a token presented with another filter or context is
// refused rather than silently continuing a different listing. Tokens carry
// no secret: a forged cursor only moves the start of a listing the caller
// may read anyway.
#ifndef CITYOS_SRC_STORE_PAGE_TOKEN_H_
#define CITYOS_SRC_STORE_PAGE_TOKEN_H_

#include <initializer_list>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace cityos::store_internal {

// 16 bytes of SHA-256 over the length-prefixed `parts` (so that ("ab", "c")
// and ("a", "bc") differ). Stable across processes and restarts.
std::string Fingerprint(std::initializer_list<std::string_view> parts);

std::string EncodePageToken(std::string_view fingerprint, std::string_view cursor);

// The cursor of `token`. INVALID_ARGUMENT "malformed page token" when it does
// not decode, "page token belongs to another query" when its fingerprint is
// not `fingerprint`.
absl::StatusOr<std::string> DecodePageToken(std::string_view token, std::string_view fingerprint);

}  // namespace cityos::store_internal

#endif  // CITYOS_SRC_STORE_PAGE_TOKEN_H_
