// Internal: bridging std::string_view (our APIs) and absl::string_view.
// Debian 12's abseil is built with its own absl::string_view class (not an
// alias of std::string_view), so absl::StrCat & co. do not take
// std::string_view directly.
#ifndef CITYOS_SRC_CORE_STRINGS_H_
#define CITYOS_SRC_CORE_STRINGS_H_

#include <string_view>

#include "absl/strings/string_view.h"

namespace cityos {

inline absl::string_view AV(std::string_view s) { return {s.data(), s.size()}; }
inline std::string_view SV(absl::string_view s) { return {s.data(), s.size()}; }

}  // namespace cityos

#endif  // CITYOS_SRC_CORE_STRINGS_H_
