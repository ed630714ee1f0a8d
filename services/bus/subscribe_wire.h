// A cityos.bus.v1.SubscribeResponse serialized by hand, for the Subscribe handler.
//
// Messages read from a stream's log carry the event as stored (Message::wire());
// a delivery of such a message is written around those bytes, untouched: no parse
// of the event and no re-serialization. Messages without wire() (live ones) have
// their event serialized as protobuf would. The result is byte for byte what
// SubscribeResponse::SerializeAsString() gives for the same deliveries (fields in
// field-number order, the Delivery's `publish_time` and `event` always present,
// as the service has always filled them), so clients parse it with the public
// cityos.bus.v1 types; tests/bus/subscribe_wire_test.cc checks both.
//
//   WireSubscribeResponse r;
//   r.set_missed(missed);
//   for (const Delivery& d : got) r.Add(d);
//   writer->Write(r);  // grpc::SerializationTraits below
//
// The response borrows the deliveries' messages: keep them alive until the
// response is written (or cleared).
#ifndef CITYOS_SERVICES_BUS_SUBSCRIBE_WIRE_H_
#define CITYOS_SERVICES_BUS_SUBSCRIBE_WIRE_H_

#include <grpcpp/impl/codegen/serialization_traits.h>
#include <grpcpp/support/byte_buffer.h>
#include <grpcpp/support/status.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "cityos/bus.h"
#include "cityos/wire.h"

namespace cityos {

class WireSubscribeResponse {
 public:
  // The size of a message's serialized event: wire() as stored, or the event's
  // serialized size (computed, and cached in the event, for live messages).
  static size_t EventSize(const Message& m) {
    return m.wire().empty() ? m.event().ByteSizeLong() : m.wire().size();
  }
  // Adds one delivery (the message is borrowed, not copied); `event_size` is
  // EventSize(*d.message). Returns the bytes it adds to the serialization.
  size_t Add(const Delivery& d, size_t event_size);
  size_t Add(const Delivery& d) { return Add(d, EventSize(*d.message)); }
  void set_missed(uint64_t missed) { missed_ = missed; }
  uint64_t missed() const { return missed_; }
  size_t deliveries_size() const { return entries_.size(); }
  // How many deliveries were written from their stored bytes (wire()).
  size_t forwarded() const { return forwarded_; }
  // Forgets the deliveries and `missed`; keeps the capacity.
  void Clear();

  // The serialized size, and the serialization into `out` (ByteSize() bytes).
  size_t ByteSize() const;
  void SerializeTo(char* out) const;
  std::string SerializeAsString() const;

 private:
  struct Entry {
    const Message* message;
    uint32_t delivery_count;
    wire::Timestamp time;  // publish_time
    uint32_t event_size;   // the event's serialization
    size_t body_size;     // the Delivery's body
  };
  std::vector<Entry> entries_;
  uint64_t missed_ = 0;
  size_t deliveries_bytes_ = 0;  // the deliveries, with their tags and lengths
  size_t forwarded_ = 0;
};

}  // namespace cityos

namespace grpc {

// Lets a gRPC writer of WireSubscribeResponse put it on the wire (one slice).
// Only the server side writes this type; clients read cityos.bus.v1.SubscribeResponse.
template <>
class SerializationTraits<cityos::WireSubscribeResponse> {
 public:
  static Status Serialize(const cityos::WireSubscribeResponse& msg, ByteBuffer* bb,
                          bool* own_buffer);
};

}  // namespace grpc

#endif  // CITYOS_SERVICES_BUS_SUBSCRIBE_WIRE_H_
