#include "subscribe_wire.h"

#include <grpcpp/support/slice.h>

namespace cityos {
namespace {

// Fields of cityos.bus.v1.SubscribeResponse and Delivery.
constexpr uint32_t kResponseDeliveries = 1;
constexpr uint32_t kResponseMissed = 2;
constexpr uint32_t kDeliveryStream = 1;
constexpr uint32_t kDeliverySequence = 2;
constexpr uint32_t kDeliveryPublishTime = 3;
constexpr uint32_t kDeliveryCount = 4;
constexpr uint32_t kDeliveryEvent = 5;

}  // namespace

size_t WireSubscribeResponse::Add(const Delivery& d, size_t event_size) {
  const Message& m = *d.message;
  // publish_time as TimestampToProto (cityos/proto_time.h) fills it.
  Entry e{.message = &m,
          .delivery_count = d.delivery_count,
          .time = wire::Timestamp(m.publish_time)};
  e.event_size = static_cast<uint32_t>(event_size);
  if (!m.wire().empty()) ++forwarded_;
  size_t body = 0;
  if (!m.stream.empty()) body += wire::LengthDelimitedFieldSize(kDeliveryStream, m.stream.size());
  if (m.sequence != 0) body += wire::VarintFieldSize(kDeliverySequence, m.sequence);
  body += wire::LengthDelimitedFieldSize(kDeliveryPublishTime, e.time.body_size);
  if (e.delivery_count != 0) body += wire::VarintFieldSize(kDeliveryCount, e.delivery_count);
  body += wire::LengthDelimitedFieldSize(kDeliveryEvent, e.event_size);
  e.body_size = body;
  entries_.push_back(e);
  const size_t added = wire::LengthDelimitedFieldSize(kResponseDeliveries, body);
  deliveries_bytes_ += added;
  return added;
}

void WireSubscribeResponse::Clear() {
  entries_.clear();
  missed_ = 0;
  deliveries_bytes_ = 0;
  forwarded_ = 0;
}

size_t WireSubscribeResponse::ByteSize() const {
  return deliveries_bytes_ + (missed_ != 0 ? wire::VarintFieldSize(kResponseMissed, missed_) : 0);
}

void WireSubscribeResponse::SerializeTo(char* out) const {
  uint8_t* p = reinterpret_cast<uint8_t*>(out);
  for (const Entry& e : entries_) {
    const Message& m = *e.message;
    p = wire::WriteLengthDelimitedHeader(kResponseDeliveries, e.body_size, p);
    if (!m.stream.empty()) {
      p = wire::WriteLengthDelimitedHeader(kDeliveryStream, m.stream.size(), p);
      p = wire::WriteBytes(m.stream, p);
    }
    if (m.sequence != 0) p = wire::WriteVarintField(kDeliverySequence, m.sequence, p);
    p = wire::WriteLengthDelimitedHeader(kDeliveryPublishTime, e.time.body_size, p);
    p = e.time.WriteBody(p);
    if (e.delivery_count != 0) p = wire::WriteVarintField(kDeliveryCount, e.delivery_count, p);
    p = wire::WriteLengthDelimitedHeader(kDeliveryEvent, e.event_size, p);
    if (!m.wire().empty()) {
      p = wire::WriteBytes(m.wire(), p);
    } else {
      // Sizes were cached by ByteSizeLong() in Add().
      p = m.event().SerializeWithCachedSizesToArray(p);
    }
  }
  if (missed_ != 0) p = wire::WriteVarintField(kResponseMissed, missed_, p);
}

std::string WireSubscribeResponse::SerializeAsString() const {
  std::string out(ByteSize(), '\0');
  SerializeTo(out.data());
  return out;
}

}  // namespace cityos

namespace grpc {

Status SerializationTraits<cityos::WireSubscribeResponse>::Serialize(
    const cityos::WireSubscribeResponse& msg, ByteBuffer* bb, bool* own_buffer) {
  *own_buffer = true;
  Slice slice(msg.ByteSize());
  msg.SerializeTo(reinterpret_cast<char*>(const_cast<uint8_t*>(slice.begin())));
  ByteBuffer tmp(&slice, 1);
  bb->Swap(&tmp);
  return Status::OK;
}

}  // namespace grpc
