// Internal: small file helpers with Status errors naming the path.
#ifndef CITYOS_SRC_CORE_FILE_UTIL_H_
#define CITYOS_SRC_CORE_FILE_UTIL_H_

#include <string>

#include "absl/status/statusor.h"

namespace cityos {

// Writes `content` to `path` so that a crash leaves either the old or the new
// file: temp file in the same directory, fsync, rename, fsync of the
// directory. `mode` applies to the new file (e.g. 0600 for secrets).
absl::Status WriteFileAtomically(const std::string& path, const std::string& content,
                                 int mode = 0644);

// WriteFileAtomically for secrets such as private keys: the content never
// exists with looser permissions or in a file someone else may hold open, not
// even for a moment (a fresh temp file <path>.tmp.<pid>, opened O_EXCL with
// `mode`, rather than a reused <path>.tmp).
absl::Status WriteSecretFileAtomically(const std::string& path, const std::string& content,
                                       int mode = 0600);

// The whole file. NOT_FOUND if missing; INTERNAL on other errors.
absl::StatusOr<std::string> ReadFileToString(const std::string& path);

}  // namespace cityos

#endif  // CITYOS_SRC_CORE_FILE_UTIL_H_
