// cityos/wire.h: the out-of-line parts (groups, whole messages, non-ASCII UTF-8).
#include "cityos/wire.h"

#include "google/protobuf/stubs/common.h"

namespace cityos::wire {

bool IsValidUtf8NonAscii(const char* s, size_t n) {
  return google::protobuf::internal::IsStructurallyValidUTF8(s, static_cast<int>(n));
}

bool Reader::SkipGroup(uint32_t field, int depth) {
  if (depth > kMaxDepth) return false;
  while (!done()) {
    uint32_t f, type;
    if (!ReadTag(&f, &type)) return false;
    if (type == kEndGroup) return f == field;  // ours, or out of place
    if (!SkipField(f, type, depth)) return false;
  }
  return false;  // no end-group tag
}

bool IsWellFormedMessage(std::string_view bytes, int depth) {
  if (depth > kMaxDepth) return false;
  Reader r(bytes);
  while (!r.done()) {
    uint32_t field, type;
    if (!r.ReadTag(&field, &type) || !r.SkipField(field, type, depth)) return false;
  }
  return true;
}

}  // namespace cityos::wire
