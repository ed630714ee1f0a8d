// Reading a cityos.exchange.v1.SubscribeResponse straight from its wire bytes
// (the carbon feed's fast path): each ExchangeDelivery becomes a FeedDelivery
// of views into the response's bytes -- the event's id, type and owner, its
// proto_data (type URL and value bytes), the decision's consent id, the resume
// token -- without building a cityos.event.v1.Event (no allocation per event).
// The consumer parses the payload it needs (a MeterReading) straight from the
// value bytes, and the whole Event from `event_wire` only when it needs more
// (personal events: FeedDelivery::ParseEvent).
//
// The reading follows protobuf's parse rules for the fields it reads (the
// last occurrence of a scalar wins, repeated occurrences of a message merge,
// a field of the `data` oneof clears the others, fields of an unexpected wire
// type and unknown fields are skipped), so a delivery says what a full parse
// of the response would. It checks the wire structure of the response, its
// deliveries, their events, decisions and proto_data (tags, varints,
// lengths, groups: cityos/wire.h's Reader, protobuf's rules) and the UTF-8
// of the string fields it reads; it does not look inside fields it does not
// read (timestamps, extensions, other strings): ParseEvent() checks those
// when a consumer needs them. Malformed bytes are DATA_LOSS naming the
// delivery, and nothing of such a response is handed on.
#ifndef CITYOS_SERVICES_CARBON_FEED_WIRE_H_
#define CITYOS_SERVICES_CARBON_FEED_WIRE_H_

#include <cstddef>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "cityos/event/v1/event.pb.h"
#include "google/protobuf/message.h"

namespace cityos::carbon {

class FeedBufferPool;

// The bytes of one Subscribe response, and whatever its deliveries point into.
struct FeedResponse {
  std::unique_ptr<char[]> data;
  size_t size = 0;
  size_t capacity = 0;
  // Events sent in several pieces (a repeated `event` field, merged by a
  // protobuf parse): their pieces joined. Deque: elements never move.
  std::deque<std::string> joined;
  // Where `data` goes back when the response is dropped; may be null.
  std::shared_ptr<FeedBufferPool> pool;

  FeedResponse() = default;
  FeedResponse(const FeedResponse&) = delete;
  FeedResponse& operator=(const FeedResponse&) = delete;
  ~FeedResponse();
  std::string_view wire() const { return {data.get(), size}; }
  // A response holding a copy of `bytes` (no pool).
  static std::shared_ptr<FeedResponse> Copy(std::string_view bytes);
};

// Response buffers kept for reuse: a response of the feed is about a
// megabyte, which malloc hands out as fresh pages (mmap, page faults, zeroed
// by the kernel) and unmaps when it is freed on the ingest thread; reusing
// them skips that. Thread-safe. Must be owned by a std::shared_ptr (its
// responses hold one).
class FeedBufferPool : public std::enable_shared_from_this<FeedBufferPool> {
 public:
  // Keeps at most `max_buffers` idle buffers.
  explicit FeedBufferPool(size_t max_buffers) : max_(max_buffers) {}
  // An empty response with room for `n` bytes (size == n), its buffer from
  // the pool when one is large enough; it returns there when dropped.
  std::shared_ptr<FeedResponse> Make(size_t n);
  size_t idle() const;

 private:
  friend struct FeedResponse;
  void Give(std::unique_ptr<char[]> data, size_t capacity);
  mutable std::mutex mu_;
  std::vector<std::pair<std::unique_ptr<char[]>, size_t>> free_;
  const size_t max_;
};

// One event the exchange delivered. Its views point into the response it came
// in, which `keep` holds alive: copying or moving a delivery copies
// references, never the event, and a response's memory goes back in one
// piece when its last delivery is dropped.
struct FeedDelivery {
  // The event exactly as the exchange sent it (a serialized
  // cityos.event.v1.Event, the exchange's obligations applied).
  std::string_view event_wire;
  // Read from event_wire.
  std::string_view id, type, owner;
  // True when the event's data is `proto_data` (a google.protobuf.Any):
  // then its type URL and value bytes.
  bool has_proto_data = false;
  std::string_view proto_type_url, proto_value;
  // The consent the exchange's decision relied on (personal data); empty when
  // none was needed.
  std::string_view consent_id;
  // Resume after this delivery; empty when the event was not stored.
  std::string_view resume_token;
  // Index of the pattern (ExchangeFeedOptions::patterns) it came on.
  size_t pattern = 0;
  // Owns what the views above point into.
  std::shared_ptr<const void> keep;

  // Whether proto_data holds a message of `full_name`'s type (as
  // google::protobuf::Any::Is: the type URL ends in "/<full_name>").
  bool ProtoDataIs(std::string_view full_name) const;
  // proto_data parsed into `m` when it holds m's type (as Any::UnpackTo):
  // false when there is no proto_data, it is of another type, or its bytes do
  // not parse.
  bool UnpackTo(google::protobuf::Message* m) const;
  // The whole event, parsed from event_wire; false if it does not parse.
  bool ParseEvent(event::v1::Event* out) const;
};

// Appends the deliveries of `response` (a serialized
// cityos.exchange.v1.SubscribeResponse) to `out`, their `keep` set to
// `response`, `pattern` to `pattern`; sets `*missed` to the response's
// `missed`. DATA_LOSS for malformed bytes: then `out` is left as it was.
absl::Status ParseFeedResponse(const std::shared_ptr<FeedResponse>& response,
                               size_t pattern, std::vector<FeedDelivery>* out,
                               uint64_t* missed);

}  // namespace cityos::carbon

#endif  // CITYOS_SERVICES_CARBON_FEED_WIRE_H_
