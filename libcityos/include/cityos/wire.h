// Reading and writing the protobuf wire format by hand, without allocation.
//
// For the few hot paths that handle serialized messages without building them
// (checking a stored event, reading an event's envelope, framing responses
// around stored event bytes). Everything else should parse and serialize with
// the generated classes.
//
// Reader: a bounds-checked, zero-copy cursor over serialized bytes. It accepts
// exactly what protobuf 3.21's parser accepts at the wire level:
//   - tags of at most 5 bytes (bits past 32 dropped), with a field number >= 1;
//   - varints of at most 10 bytes (bits past 64 dropped, as protobuf does);
//   - lengths of at most 5 bytes, below 2 GiB, within the bytes;
//   - groups closed by their own end-group tag, nested at most kMaxDepth deep
//     counting the enclosing messages (protobuf's default recursion limit);
//   - no wire types 6 and 7, and no end-group tag out of place.
// What it does not know is the schema: checking the UTF-8 of string fields
// (IsValidUtf8) and reading nested messages is the caller's.
//
//   cityos::wire::Reader r(bytes);
//   while (!r.done()) {
//     uint32_t field, type;
//     if (!r.ReadTag(&field, &type)) return false;
//     std::string_view v;
//     if (field == 4 && type == wire::kLengthDelimited) {
//       if (!r.ReadLengthDelimited(&v)) return false;   // v: a view into bytes
//     } else if (!r.SkipField(field, type, depth)) {
//       return false;
//     }
//   }
//
// Writers: sizes and array writers on protobuf's own CodedOutputStream
// primitives, and std::string appenders. Writing fields in field-number order
// with proto3's "omit the default" rule gives what SerializeAsString gives.
#ifndef CITYOS_WIRE_H_
#define CITYOS_WIRE_H_

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

#include "absl/base/optimization.h"
#include "absl/time/time.h"
#include "google/protobuf/io/coded_stream.h"

namespace cityos::wire {

// Wire types (the low 3 bits of a tag).
inline constexpr uint32_t kVarint = 0;
inline constexpr uint32_t kFixed64 = 1;
inline constexpr uint32_t kLengthDelimited = 2;
inline constexpr uint32_t kStartGroup = 3;
inline constexpr uint32_t kEndGroup = 4;
inline constexpr uint32_t kFixed32 = 5;

// Protobuf's default recursion limit: messages and groups nested deeper than
// this do not parse.
inline constexpr int kMaxDepth = 100;

// A tag's value: field number and wire type.
constexpr uint32_t MakeTag(uint32_t field, uint32_t wire_type) {
  return (field << 3) | wire_type;
}

// ---------------------------------------------------------------------------
// Reading.

// Whether `s` is valid UTF-8, as protobuf checks proto3 `string` fields. ASCII
// (the usual case) is tested a word at a time; anything else goes to
// protobuf's own check.
bool IsValidUtf8NonAscii(const char* s, size_t n);
inline bool IsValidUtf8(const char* s, size_t n) {
  uint64_t bits = 0;
  if (n >= 8) {
    uint64_t w;
    for (size_t i = 0; i + 8 <= n; i += 8) {
      std::memcpy(&w, s + i, 8);
      bits |= w;
    }
    std::memcpy(&w, s + n - 8, 8);  // the tail, overlapping the last word
    bits |= w;
  } else if (n >= 4) {
    uint32_t a, b;
    std::memcpy(&a, s, 4);
    std::memcpy(&b, s + n - 4, 4);
    bits = a | b;
  } else {
    for (size_t i = 0; i < n; ++i) bits |= static_cast<uint8_t>(s[i]);
  }
  if ((bits & 0x8080808080808080ull) == 0) return true;
  return IsValidUtf8NonAscii(s, n);
}
inline bool IsValidUtf8(std::string_view s) { return IsValidUtf8(s.data(), s.size()); }

// Every read checks the bounds and returns false for malformed bytes; after a
// false the position is unspecified (stop reading). Views point into the
// bytes given to the constructor, which must outlive them.
class Reader {
 public:
  Reader() = default;
  explicit Reader(std::string_view bytes) : p_(bytes.data()), end_(bytes.data() + bytes.size()) {}
  Reader(const char* begin, const char* end) : p_(begin), end_(end) {}

  bool done() const { return p_ == end_; }
  size_t remaining() const { return static_cast<size_t>(end_ - p_); }
  // Where the next read starts.
  const char* position() const { return p_; }

  // A field's tag. The wire type is returned as is (0-7): a caller that does
  // not read the field itself hands it to SkipField, which refuses 4, 6 and 7.
  bool ReadTag(uint32_t* field, uint32_t* wire_type) {
    uint64_t v;
    if (!ReadVarintOfAtMost(5, &v)) return false;
    const uint32_t tag = static_cast<uint32_t>(v);  // bits past 32 dropped, as protobuf does
    *field = tag >> 3;
    *wire_type = tag & 7;
    return *field != 0;
  }
  // A varint value (wire type 0).
  bool ReadVarint(uint64_t* v) { return ReadVarintOfAtMost(10, v); }
  // Little-endian fixed-size values (wire types 5 and 1).
  bool ReadFixed32(uint32_t* v) {
    if (remaining() < 4) return false;
    uint8_t b[4];
    std::memcpy(b, p_, 4);
    *v = uint32_t{b[0]} | uint32_t{b[1]} << 8 | uint32_t{b[2]} << 16 | uint32_t{b[3]} << 24;
    p_ += 4;
    return true;
  }
  bool ReadFixed64(uint64_t* v) {
    uint32_t lo = 0, hi = 0;
    if (remaining() < 8) return false;
    ReadFixed32(&lo);
    ReadFixed32(&hi);
    *v = uint64_t{lo} | uint64_t{hi} << 32;
    return true;
  }
  // A length-delimited value (wire type 2): a view of its bytes.
  bool ReadLengthDelimited(std::string_view* v) {
    uint64_t n;
    if (!ReadVarintOfAtMost(5, &n) || n > remaining() || n > kMaxLength) return false;
    *v = std::string_view(p_, static_cast<size_t>(n));
    p_ += n;
    return true;
  }
  // Moves past `n` bytes; false (and nothing moved) when fewer are left.
  bool Skip(size_t n) {
    if (n > remaining()) return false;
    p_ += n;
    return true;
  }
  // Moves past the value of a field whose tag (`field`, `wire_type`) was just
  // read, as a parse keeps an unknown field: a group with everything up to its
  // own end-group tag. `depth` is the nesting depth of the message being read
  // (0 for the outermost), for the limit on groups. False for wire types 4
  // (an end-group tag out of place), 6 and 7, and for malformed values.
  bool SkipField(uint32_t field, uint32_t wire_type, int depth = 0) {
    switch (wire_type) {
      case kVarint: {
        uint64_t v;
        return ReadVarint(&v);
      }
      case kFixed64:
        return Skip(8);
      case kLengthDelimited: {
        std::string_view v;
        return ReadLengthDelimited(&v);
      }
      case kFixed32:
        return Skip(4);
      case kStartGroup:
        return SkipGroup(field, depth + 1);
      default:
        return false;
    }
  }
  // Moves past the rest of a group of `field` (its start tag read already),
  // `depth` being the group's own nesting depth; false when it has no end
  // tag, is malformed, or is nested deeper than kMaxDepth.
  bool SkipGroup(uint32_t field, int depth);

 private:
  // Protobuf refuses lengths this close to 2 GiB (parse_context.cc).
  static constexpr uint64_t kMaxLength = 0x7fffffffu - 16;

  bool ReadVarintOfAtMost(int max_bytes, uint64_t* v) {
    if (ABSL_PREDICT_TRUE(p_ != end_ && static_cast<uint8_t>(*p_) < 0x80)) {
      *v = static_cast<uint8_t>(*p_++);  // one byte: most of them
      return true;
    }
    uint64_t r = 0;
    const char* p = p_;
    for (int i = 0; i < max_bytes; ++i) {
      if (p == end_) return false;
      const uint8_t b = static_cast<uint8_t>(*p++);
      r |= static_cast<uint64_t>(b & 0x7f) << (7 * i);
      if ((b & 0x80) == 0) {
        *v = r;
        p_ = p;
        return true;
      }
    }
    return false;
  }

  const char* p_ = nullptr;
  const char* end_ = nullptr;
};

// Whether `bytes` are a well-formed message at the wire level (Reader's rules,
// nothing of a schema): what a parse accepts when none of the fields is a
// string or a message it knows. `depth` is the message's nesting depth.
bool IsWellFormedMessage(std::string_view bytes, int depth = 0);

// ---------------------------------------------------------------------------
// Writing.

// Bytes of a varint, of a tag, of a whole field.
inline size_t VarintSize(uint64_t v) {
  return google::protobuf::io::CodedOutputStream::VarintSize64(v);
}
inline size_t TagSize(uint32_t field) {
  return google::protobuf::io::CodedOutputStream::VarintSize32(MakeTag(field, 0));
}
inline size_t VarintFieldSize(uint32_t field, uint64_t v) { return TagSize(field) + VarintSize(v); }
inline size_t LengthDelimitedFieldSize(uint32_t field, size_t length) {
  return TagSize(field) + VarintSize(length) + length;
}

// Array writers: each writes at `p` (room is the caller's) and returns the end.
inline uint8_t* WriteVarint(uint64_t v, uint8_t* p) {
  return google::protobuf::io::CodedOutputStream::WriteVarint64ToArray(v, p);
}
inline uint8_t* WriteTag(uint32_t field, uint32_t wire_type, uint8_t* p) {
  return google::protobuf::io::CodedOutputStream::WriteVarint32ToArray(MakeTag(field, wire_type),
                                                                      p);
}
inline uint8_t* WriteVarintField(uint32_t field, uint64_t v, uint8_t* p) {
  return WriteVarint(v, WriteTag(field, kVarint, p));
}
// A length-delimited field's tag and length; its `length` bytes follow.
inline uint8_t* WriteLengthDelimitedHeader(uint32_t field, size_t length, uint8_t* p) {
  return WriteVarint(length, WriteTag(field, kLengthDelimited, p));
}
// A fixed64 field (wire type 1): its tag and `v` little-endian (a double's
// bits for a `double` field).
inline uint8_t* WriteFixed64Field(uint32_t field, uint64_t v, uint8_t* p) {
  return google::protobuf::io::CodedOutputStream::WriteLittleEndian64ToArray(
      v, WriteTag(field, kFixed64, p));
}
inline uint8_t* WriteBytes(std::string_view bytes, uint8_t* p) {
  if (!bytes.empty()) std::memcpy(p, bytes.data(), bytes.size());
  return p + bytes.size();
}

// std::string appenders.
inline void AppendVarint(uint64_t v, std::string* out) {
  uint8_t buf[10];
  out->append(reinterpret_cast<const char*>(buf),
              static_cast<size_t>(WriteVarint(v, buf) - buf));
}
inline void AppendVarintField(uint32_t field, uint64_t v, std::string* out) {
  uint8_t buf[15];
  out->append(reinterpret_cast<const char*>(buf),
              static_cast<size_t>(WriteVarintField(field, v, buf) - buf));
}
inline void AppendLengthDelimitedHeader(uint32_t field, size_t length, std::string* out) {
  uint8_t buf[15];
  out->append(reinterpret_cast<const char*>(buf),
              static_cast<size_t>(WriteLengthDelimitedHeader(field, length, buf) - buf));
}

inline void AppendFixed64Field(uint32_t field, uint64_t v, std::string* out) {
  uint8_t buf[13];
  out->append(reinterpret_cast<const char*>(buf),
              static_cast<size_t>(WriteFixed64Field(field, v, buf) - buf));
}

// A google.protobuf.Timestamp for `t` as cityos::TimestampToProto fills it and
// protobuf serializes it: seconds (1) and nanos (2), each left out when 0; no
// fields at all for an infinite time.
struct Timestamp {
  static constexpr size_t kMaxBodySize = 1 + 10 + 1 + 10;

  Timestamp() = default;  // no fields
  explicit Timestamp(absl::Time t) {
    if (t == absl::InfinitePast() || t == absl::InfiniteFuture()) return;
    seconds = absl::ToUnixSeconds(t);
    nanos = static_cast<int32_t>(absl::ToInt64Nanoseconds(t - absl::FromUnixSeconds(seconds)));
    // int32 fields are sign-extended to 64 bits on the wire.
    if (seconds != 0) body_size += VarintFieldSize(1, static_cast<uint64_t>(seconds));
    if (nanos != 0) body_size += VarintFieldSize(2, static_cast<uint64_t>(int64_t{nanos}));
  }
  // Writes the message's body (body_size bytes).
  uint8_t* WriteBody(uint8_t* p) const {
    if (seconds != 0) p = WriteVarintField(1, static_cast<uint64_t>(seconds), p);
    if (nanos != 0) p = WriteVarintField(2, static_cast<uint64_t>(int64_t{nanos}), p);
    return p;
  }

  int64_t seconds = 0;
  int32_t nanos = 0;
  uint32_t body_size = 0;
};

}  // namespace cityos::wire

#endif  // CITYOS_WIRE_H_
