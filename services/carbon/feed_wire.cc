// ParseFeedResponse: a SubscribeResponse's deliveries as views into its bytes.
#include "feed_wire.h"

#include <algorithm>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "cityos/wire.h"

namespace cityos::carbon {
namespace {

using wire::kLengthDelimited;
using wire::kVarint;
using wire::IsValidUtf8;

// Nesting depths, for the limit on groups: the response, a delivery, its
// event and decision, the event's proto_data.
constexpr int kResponseDepth = 0, kDeliveryDepth = 1, kEventDepth = 2, kAnyDepth = 3;

// The `data` oneof of an Event: which member was seen last.
enum class Data { kNone, kOther, kProto };

struct EventState {
  std::string_view id, type, owner, type_url, value;
  Data data = Data::kNone;
};

// google.protobuf.Any: type_url = 1 (string), value = 2 (bytes).
bool WalkAny(std::string_view bytes, EventState* st) {
  wire::Reader r(bytes);
  while (!r.done()) {
    uint32_t f, wt;
    if (!r.ReadTag(&f, &wt)) return false;
    if (wt == kLengthDelimited && (f == 1 || f == 2)) {
      std::string_view v;
      if (!r.ReadLengthDelimited(&v)) return false;
      if (f == 1) {
        if (!IsValidUtf8(v)) return false;
        st->type_url = v;
      } else {
        st->value = v;
      }
    } else if (!r.SkipField(f, wt, kAnyDepth)) {
      return false;
    }
  }
  return true;
}

// cityos.event.v1.Event: id = 1, type = 4, owner = 13 (strings); the data
// oneof: binary_data = 20, text_data = 21, proto_data = 22.
bool WalkEvent(std::string_view bytes, EventState* st) {
  wire::Reader r(bytes);
  while (!r.done()) {
    uint32_t f, wt;
    if (!r.ReadTag(&f, &wt)) return false;
    if (wt != kLengthDelimited) {
      if (!r.SkipField(f, wt, kEventDepth)) return false;
      continue;
    }
    std::string_view v;
    if (!r.ReadLengthDelimited(&v)) return false;
    switch (f) {
      case 1:
      case 4:
      case 13:
        if (!IsValidUtf8(v)) return false;
        (f == 1 ? st->id : f == 4 ? st->type : st->owner) = v;
        break;
      case 20:
        st->data = Data::kOther;
        break;
      case 21:
        // text_data is a string: a full parse checks it.
        if (!IsValidUtf8(v)) return false;
        st->data = Data::kOther;
        break;
      case 22:
        if (st->data != Data::kProto) {
          // Another member was set (or none): proto_data starts empty.
          st->type_url = {};
          st->value = {};
          st->data = Data::kProto;
        }
        if (!WalkAny(v, st)) return false;
        break;
      default:
        break;  // other fields, and unknown ones: skipped
    }
  }
  return true;
}

// cityos.exchange.v1.Decision: consent_id = 6.
bool WalkDecision(std::string_view bytes, std::string_view* consent_id) {
  wire::Reader r(bytes);
  while (!r.done()) {
    uint32_t f, wt;
    if (!r.ReadTag(&f, &wt)) return false;
    if (f == 6 && wt == kLengthDelimited) {
      std::string_view v;
      if (!r.ReadLengthDelimited(&v) || !IsValidUtf8(v)) return false;
      *consent_id = v;
    } else if (!r.SkipField(f, wt, kEventDepth)) {
      return false;
    }
  }
  return true;
}

// cityos.exchange.v1.ExchangeDelivery: event = 1, publish_time = 2,
// decision = 3, resume_token = 4.
bool WalkDelivery(std::string_view bytes, FeedResponse* resp, FeedDelivery* d) {
  wire::Reader r(bytes);
  EventState ev;
  // Pieces of the event field (more than one only if the sender split it).
  std::string_view first_piece;
  std::string* joined = nullptr;
  int pieces = 0;
  while (!r.done()) {
    uint32_t f, wt;
    if (!r.ReadTag(&f, &wt)) return false;
    if (wt != kLengthDelimited || (f != 1 && f != 3 && f != 4)) {
      if (!r.SkipField(f, wt, kDeliveryDepth)) return false;
      continue;
    }
    std::string_view v;
    if (!r.ReadLengthDelimited(&v)) return false;
    if (f == 1) {
      // Walking the pieces in order with one state is what parsing their
      // concatenation (protobuf's merge of repeated message fields) does.
      if (!WalkEvent(v, &ev)) return false;
      if (++pieces == 1) {
        first_piece = v;
      } else {
        if (joined == nullptr) {
          joined = &resp->joined.emplace_back(first_piece);
        }
        joined->append(v);
      }
    } else if (f == 3) {
      if (!WalkDecision(v, &d->consent_id)) return false;
    } else {
      if (!IsValidUtf8(v)) return false;
      d->resume_token = v;
    }
  }
  d->event_wire = joined != nullptr ? std::string_view(*joined) : first_piece;
  d->id = ev.id;
  d->type = ev.type;
  d->owner = ev.owner;
  d->has_proto_data = ev.data == Data::kProto;
  if (d->has_proto_data) {
    d->proto_type_url = ev.type_url;
    d->proto_value = ev.value;
  }
  return true;
}

}  // namespace

FeedResponse::~FeedResponse() {
  if (pool != nullptr && data != nullptr) pool->Give(std::move(data), capacity);
}

std::shared_ptr<FeedResponse> FeedResponse::Copy(std::string_view bytes) {
  auto r = std::make_shared<FeedResponse>();
  r->capacity = bytes.size() == 0 ? 1 : bytes.size();
  r->data.reset(new char[r->capacity]);
  if (!bytes.empty()) std::memcpy(r->data.get(), bytes.data(), bytes.size());
  r->size = bytes.size();
  return r;
}

std::shared_ptr<FeedResponse> FeedBufferPool::Make(size_t n) {
  auto r = std::make_shared<FeedResponse>();
  {
    std::lock_guard<std::mutex> l(mu_);
    // The smallest idle buffer that fits.
    size_t best = free_.size();
    for (size_t i = 0; i < free_.size(); ++i) {
      if (free_[i].second >= n &&
          (best == free_.size() || free_[i].second < free_[best].second)) {
        best = i;
      }
    }
    if (best < free_.size()) {
      r->data = std::move(free_[best].first);
      r->capacity = free_[best].second;
      free_[best] = std::move(free_.back());
      free_.pop_back();
    }
  }
  if (r->data == nullptr) {
    // Some headroom so that slightly larger responses reuse it too.
    r->capacity = std::max<size_t>(n + n / 8, 4096);
    r->data.reset(new char[r->capacity]);
  }
  r->size = n;
  r->pool = shared_from_this();
  return r;
}

size_t FeedBufferPool::idle() const {
  std::lock_guard<std::mutex> l(mu_);
  return free_.size();
}

void FeedBufferPool::Give(std::unique_ptr<char[]> data, size_t capacity) {
  std::lock_guard<std::mutex> l(mu_);
  if (free_.size() < max_) {
    free_.emplace_back(std::move(data), capacity);
    return;
  }
  // Full: keep the larger buffers.
  size_t smallest = 0;
  for (size_t i = 1; i < free_.size(); ++i) {
    if (free_[i].second < free_[smallest].second) smallest = i;
  }
  if (!free_.empty() && free_[smallest].second < capacity) {
    free_[smallest] = {std::move(data), capacity};
  }
}

bool FeedDelivery::ProtoDataIs(std::string_view full_name) const {
  // As google::protobuf::internal::AnyMetadata: "<prefix>/<full name>".
  return has_proto_data && proto_type_url.size() > full_name.size() &&
         proto_type_url[proto_type_url.size() - full_name.size() - 1] == '/' &&
         proto_type_url.substr(proto_type_url.size() - full_name.size()) ==
             full_name;
}

bool FeedDelivery::UnpackTo(google::protobuf::Message* m) const {
  if (!ProtoDataIs(m->GetDescriptor()->full_name())) return false;
  return m->ParseFromArray(proto_value.data(),
                           static_cast<int>(proto_value.size()));
}

bool FeedDelivery::ParseEvent(event::v1::Event* out) const {
  return out->ParseFromArray(event_wire.data(),
                             static_cast<int>(event_wire.size()));
}

absl::Status ParseFeedResponse(const std::shared_ptr<FeedResponse>& response,
                               size_t pattern, std::vector<FeedDelivery>* out,
                               uint64_t* missed) {
  const size_t before = out->size();
  const size_t joined_before = response->joined.size();
  auto fail = [&](std::string what) {
    out->resize(before);
    response->joined.resize(joined_before);
    return absl::DataLossError(absl::StrCat(
        "exchange Subscribe response of ", response->size,
        " bytes is malformed: ", what));
  };
  wire::Reader r(response->wire());
  uint64_t m = 0;
  std::shared_ptr<const void> keep = response;
  while (!r.done()) {
    uint32_t f, wt;
    if (!r.ReadTag(&f, &wt) || wt > wire::kFixed32) {
      return fail(absl::StrCat("bad tag after delivery ", out->size() - before));
    }
    if (f == 1 && wt == kLengthDelimited) {
      std::string_view v;
      if (!r.ReadLengthDelimited(&v)) {
        return fail(absl::StrCat("delivery ", out->size() - before,
                                 " overruns the message"));
      }
      FeedDelivery& d = out->emplace_back();
      if (!WalkDelivery(v, response.get(), &d)) {
        return fail(absl::StrCat("delivery ", out->size() - before - 1,
                                 " is not a well-formed ExchangeDelivery"));
      }
      d.pattern = pattern;
      d.keep = keep;
    } else if (f == 2 && wt == kVarint) {
      if (!r.ReadVarint(&m)) return fail("bad varint in `missed`");
    } else if (!r.SkipField(f, wt, kResponseDepth)) {
      return fail(absl::StrCat("bad field ", f, " after delivery ",
                               out->size() - before));
    }
  }
  *missed = m;
  return absl::OkStatus();
}

}  // namespace cityos::carbon
