// cityos/wire.h: the reader accepts exactly what protobuf's parser accepts at
// the wire level (random messages, corruptions and truncations, compared with
// a parse into google.protobuf.Empty, which keeps every field as unknown), and
// the writers give what protobuf serializes.
#include "cityos/wire.h"

#include <gtest/gtest.h>

#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "cityos/event/v1/event.pb.h"
#include "cityos/proto_time.h"
#include "google/protobuf/empty.pb.h"
#include "google/protobuf/io/zero_copy_stream_impl_lite.h"
#include "google/protobuf/stubs/common.h"
#include "google/protobuf/timestamp.pb.h"
#include "google/protobuf/wrappers.pb.h"

namespace cityos {
namespace {

using google::protobuf::io::CodedOutputStream;

std::string Varint(uint64_t v) {
  std::string s;
  wire::AppendVarint(v, &s);
  return s;
}

bool ProtobufAccepts(const std::string& s) {
  google::protobuf::Empty m;
  return m.ParseFromString(s);
}

const uint64_t kValues[] = {0,           1,          127,        128,        300,
                            16383,       16384,      0x7fffffff, 0x80000000, 0xffffffff,
                            1ull << 35,  1ull << 56, 1ull << 63, ~0ull};

TEST(WireReader, VarintsRoundTripAndMatchProtobuf) {
  for (uint64_t v : kValues) {
    const std::string s = Varint(v);
    std::string want;
    {
      google::protobuf::io::StringOutputStream zs(&want);
      CodedOutputStream cos(&zs);
      cos.WriteVarint64(v);
    }
    EXPECT_EQ(s, want) << v;
    EXPECT_EQ(wire::VarintSize(v), s.size()) << v;
    wire::Reader r(s);
    uint64_t got = 0;
    ASSERT_TRUE(r.ReadVarint(&got)) << v;
    EXPECT_EQ(got, v);
    EXPECT_TRUE(r.done());
    // Every truncation is refused, and the reader stays where it was.
    for (size_t cut = 0; cut < s.size(); ++cut) {
      wire::Reader t(std::string_view(s).substr(0, cut));
      EXPECT_FALSE(t.ReadVarint(&got)) << v << " cut " << cut;
      EXPECT_EQ(t.remaining(), cut);
    }
  }
  // Ten bytes at most (protobuf drops bits past 64); an eleventh is refused.
  const std::string ten_bytes = std::string(9, '\x80') + std::string(1, '\x01');
  wire::Reader ten(ten_bytes);
  uint64_t v;
  EXPECT_TRUE(ten.ReadVarint(&v));
  EXPECT_EQ(v, 1ull << 63);
  const std::string eleven_bytes = std::string(10, '\x80') + std::string(1, '\x01');
  wire::Reader eleven(eleven_bytes);
  EXPECT_FALSE(eleven.ReadVarint(&v));
}

TEST(WireReader, TagsAndFixedValues) {
  const std::string tag = Varint(wire::MakeTag(536870911, wire::kFixed32));
  wire::Reader r(tag);
  uint32_t field, type;
  ASSERT_TRUE(r.ReadTag(&field, &type));
  EXPECT_EQ(field, 536870911u);
  EXPECT_EQ(type, wire::kFixed32);
  EXPECT_FALSE(wire::Reader(Varint(7)).ReadTag(&field, &type));          // field 0
  // Bits past 32 are dropped (protobuf's ReadTag computes in 32 bits).
  ASSERT_TRUE(wire::Reader(Varint((1ull << 32) | wire::MakeTag(3, wire::kVarint)))
                  .ReadTag(&field, &type));
  EXPECT_EQ(field, 3u);
  EXPECT_EQ(type, wire::kVarint);
  EXPECT_TRUE(ProtobufAccepts(Varint((1ull << 32) | wire::MakeTag(3, wire::kVarint)) + "\x01"));
  // A 6-byte tag (a padded encoding of field 1) is refused, as protobuf does.
  EXPECT_FALSE(wire::Reader(std::string("\x88\x80\x80\x80\x80\x00", 6)).ReadTag(&field, &type));
  EXPECT_TRUE(wire::Reader(std::string("\x88\x80\x80\x80\x00", 5)).ReadTag(&field, &type));
  EXPECT_EQ(field, 1u);

  const std::string fixed("\x01\x02\x03\x04\x05\x06\x07\x08\x09\x0a\x0b\x0c", 12);
  wire::Reader f(fixed);
  uint32_t v32;
  uint64_t v64;
  ASSERT_TRUE(f.ReadFixed32(&v32));
  EXPECT_EQ(v32, 0x04030201u);
  ASSERT_TRUE(f.ReadFixed64(&v64));
  EXPECT_EQ(v64, 0x0c0b0a0908070605ull);
  EXPECT_FALSE(f.ReadFixed32(&v32));
  EXPECT_FALSE(wire::Reader(std::string(7, '\0')).ReadFixed64(&v64));
}

TEST(WireReader, LengthDelimitedIsAViewWithinBounds) {
  const std::string s = std::string("\x05hello", 6) + "!";
  wire::Reader r(s);
  std::string_view v;
  ASSERT_TRUE(r.ReadLengthDelimited(&v));
  EXPECT_EQ(v, "hello");
  EXPECT_EQ(v.data(), s.data() + 1);  // no copy
  EXPECT_EQ(r.remaining(), 1u);
  EXPECT_FALSE(wire::Reader(std::string("\x06hello", 6)).ReadLengthDelimited(&v));
  // Lengths of more than 5 bytes are refused even when small.
  EXPECT_FALSE(wire::Reader(std::string("\x81\x80\x80\x80\x80\x00x", 7)).ReadLengthDelimited(&v));
}

// Random messages at the wire level: fields of every wire type, groups.
void AppendRandomFields(std::mt19937_64& rng, int depth, std::string* out) {
  const int n = static_cast<int>(rng() % 6);
  for (int i = 0; i < n; ++i) {
    const uint32_t field = 1 + static_cast<uint32_t>(rng() % (rng() % 2 ? 30 : 536870911));
    switch (rng() % 5) {
      case 0:
        wire::AppendVarintField(field, rng() >> (rng() % 64), out);
        break;
      case 1:
        wire::AppendVarint(wire::MakeTag(field, wire::kFixed64), out);
        out->append(8, static_cast<char>(rng()));
        break;
      case 2: {
        std::string body;
        if (rng() % 2) {
          AppendRandomFields(rng, depth + 1, &body);
        } else {
          body.assign(rng() % 20, static_cast<char>(rng()));
        }
        wire::AppendLengthDelimitedHeader(field, body.size(), out);
        out->append(body);
        break;
      }
      case 3:
        if (depth < 4) {
          wire::AppendVarint(wire::MakeTag(field, wire::kStartGroup), out);
          AppendRandomFields(rng, depth + 1, out);
          wire::AppendVarint(wire::MakeTag(field, wire::kEndGroup), out);
        }
        break;
      default:
        wire::AppendVarint(wire::MakeTag(field, wire::kFixed32), out);
        out->append(4, static_cast<char>(rng()));
        break;
    }
  }
}

TEST(WireReader, AcceptsWhatProtobufAcceptsOnCorruptions) {
  std::mt19937_64 rng(20261129);
  int accepted = 0, refused = 0;
  for (int round = 0; round < 20000; ++round) {
    std::string s;
    AppendRandomFields(rng, 0, &s);
    ASSERT_TRUE(wire::IsWellFormedMessage(s));
    ASSERT_TRUE(ProtobufAccepts(s));
    if (s.empty()) continue;
    std::string bad = s;
    switch (rng() % 3) {
      case 0:
        bad[rng() % bad.size()] = static_cast<char>(rng());
        break;
      case 1:
        bad[rng() % bad.size()] ^= static_cast<char>(1 << (rng() % 8));
        break;
      default:
        bad.resize(rng() % bad.size());
        break;
    }
    const bool want = ProtobufAccepts(bad);
    EXPECT_EQ(wire::IsWellFormedMessage(bad), want) << testing::PrintToString(bad);
    (want ? accepted : refused)++;
  }
  // Both outcomes were exercised.
  EXPECT_GT(accepted, 100);
  EXPECT_GT(refused, 100);
  // Wire types 6 and 7, and an end-group tag out of place.
  for (const char* s : {"\x0e", "\x0f", "\x0c", "\x0b\x14"}) {
    EXPECT_FALSE(wire::IsWellFormedMessage(s)) << testing::PrintToString(std::string(s));
    EXPECT_FALSE(ProtobufAccepts(s));
  }
}

TEST(WireReader, GroupDepthLimitIsProtobufs) {
  for (int depth : {99, 100, 101}) {
    std::string s;
    for (int i = 0; i < depth; ++i) wire::AppendVarint(wire::MakeTag(1, wire::kStartGroup), &s);
    for (int i = 0; i < depth; ++i) wire::AppendVarint(wire::MakeTag(1, wire::kEndGroup), &s);
    EXPECT_EQ(wire::IsWellFormedMessage(s), ProtobufAccepts(s)) << depth;
    EXPECT_EQ(wire::IsWellFormedMessage(s), depth <= wire::kMaxDepth) << depth;
    // Inside a message nested once, one group fewer fits.
    EXPECT_EQ(wire::IsWellFormedMessage(s, 1), depth < wire::kMaxDepth) << depth;
    wire::Reader r(s);
    uint32_t f, t;
    ASSERT_TRUE(r.ReadTag(&f, &t));
    EXPECT_EQ(r.SkipField(f, t, 0), depth <= wire::kMaxDepth);
  }
}

TEST(WireUtf8, MatchesProtobufsCheck) {
  std::mt19937_64 rng(7);
  for (int i = 0; i < 20000; ++i) {
    std::string s(rng() % 24, '\0');
    for (char& c : s) {
      // Mostly ASCII, sometimes anything.
      c = static_cast<char>(rng() % 4 ? rng() % 128 : rng() % 256);
    }
    EXPECT_EQ(wire::IsValidUtf8(s),
              google::protobuf::internal::IsStructurallyValidUTF8(s.data(),
                                                                  static_cast<int>(s.size())))
        << testing::PrintToString(s);
  }
  EXPECT_TRUE(wire::IsValidUtf8("h\xc3\xa9llo w\xc3\xb6rld, long enough"));
  EXPECT_FALSE(wire::IsValidUtf8("hello world, long enough \xc3"));
  EXPECT_FALSE(wire::IsValidUtf8("\xff"));
}

TEST(WireWriter, FieldsAreWhatProtobufSerializes) {
  for (const std::string& text : {std::string(), std::string("x"), std::string(200, 'y'),
                                  std::string(20000, 'z')}) {
    google::protobuf::StringValue m;
    m.set_value(text);
    std::string got;
    if (!text.empty()) {
      wire::AppendLengthDelimitedHeader(1, text.size(), &got);
      got.append(text);
      EXPECT_EQ(wire::LengthDelimitedFieldSize(1, text.size()), got.size());
    }
    EXPECT_EQ(got, m.SerializeAsString());
  }
  for (uint64_t v : kValues) {
    google::protobuf::UInt64Value m;
    m.set_value(v);
    std::string got;
    if (v != 0) {
      wire::AppendVarintField(1, v, &got);
      EXPECT_EQ(wire::VarintFieldSize(1, v), got.size());
    }
    EXPECT_EQ(got, m.SerializeAsString());
  }
  // Large field numbers: multi-byte tags.
  for (uint32_t field : {1u, 15u, 16u, 2047u, 2048u, 536870911u}) {
    EXPECT_EQ(wire::TagSize(field), CodedOutputStream::VarintSize32(field << 3));
    uint8_t buf[16];
    const uint8_t* end = wire::WriteLengthDelimitedHeader(field, 3, buf);
    wire::Reader r(std::string_view(reinterpret_cast<const char*>(buf),
                                    static_cast<size_t>(end - buf)));
    uint32_t f, t;
    uint64_t n;
    ASSERT_TRUE(r.ReadTag(&f, &t));
    EXPECT_EQ(f, field);
    EXPECT_EQ(t, wire::kLengthDelimited);
    ASSERT_TRUE(r.ReadVarint(&n));
    EXPECT_EQ(n, 3u);
    EXPECT_TRUE(r.done());
  }
}

TEST(WireWriter, Fixed64FieldIsWhatProtobufSerializes) {
  for (double d : {0.5, -1.0, 1e300, -0.0, 48.8566}) {
    google::protobuf::DoubleValue m;
    m.set_value(d);
    uint64_t bits;
    std::memcpy(&bits, &d, sizeof(bits));
    std::string got;
    wire::AppendFixed64Field(1, bits, &got);
    EXPECT_EQ(got, m.SerializeAsString()) << d;
  }
  for (uint64_t v : kValues) {
    std::string got;
    wire::AppendFixed64Field(2048, v, &got);
    google::protobuf::io::CodedInputStream in(reinterpret_cast<const uint8_t*>(got.data()),
                                              static_cast<int>(got.size()));
    uint64_t back = 0;
    EXPECT_EQ(in.ReadTag(), wire::MakeTag(2048, wire::kFixed64));
    ASSERT_TRUE(in.ReadLittleEndian64(&back));
    EXPECT_EQ(back, v);
    EXPECT_EQ(in.CurrentPosition(), static_cast<int>(got.size()));
  }
}

TEST(WireWriter, TimestampIsTimestampToProto) {
  for (const absl::Time t :
       {absl::UnixEpoch(), absl::FromUnixNanos(1780003725123456789), absl::FromUnixSeconds(5),
        absl::FromUnixNanos(7), absl::FromUnixNanos(-1500000000), absl::FromUnixSeconds(-1),
        absl::InfinitePast(), absl::InfiniteFuture()}) {
    google::protobuf::Timestamp want;
    TimestampToProto(t, &want);
    const wire::Timestamp ts(t);
    uint8_t buf[wire::Timestamp::kMaxBodySize];
    const uint8_t* end = ts.WriteBody(buf);
    ASSERT_EQ(static_cast<size_t>(end - buf), ts.body_size) << t;
    EXPECT_EQ(std::string(reinterpret_cast<const char*>(buf), ts.body_size),
              want.SerializeAsString())
        << t;
  }
}

}  // namespace
}  // namespace cityos
