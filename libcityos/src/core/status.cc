#include "cityos/status.h"

#include "absl/strings/str_cat.h"
#include "core/strings.h"

namespace cityos {

absl::Status Annotate(const absl::Status& status, std::string_view context) {
  if (status.ok()) return status;
  return absl::Status(status.code(), absl::StrCat(AV(context), ": ", status.message()));
}

}  // namespace cityos
