#include "live_feed.h"

#include <algorithm>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "cityos/entity.h"

namespace cityos {
namespace {

// Events one dispatcher read takes from the shared bus subscription.
constexpr size_t kDispatchBatch = 4096;
// How long one dispatcher read waits before it looks again (a Close() wakes
// it at once anyway).
constexpr absl::Duration kDispatchPoll = absl::Milliseconds(100);
// A member's queue bound when none is configured: the bus's default.
constexpr size_t kDefaultMemberDepth = 65536;

}  // namespace

// One caller's live subscription: a bounded queue the feed's dispatcher
// fills.
class LiveFeeds::Member final : public Subscription {
 public:
  Member(LiveFeeds* owner, size_t capacity, const exchange::v1::EntityFilter& filter)
      : owner_(owner), capacity_(capacity) {
    absl::flat_hash_set<std::string> seen;
    for (const std::string& id : filter.ids()) {
      if (seen.insert(id).second) ids_.push_back(id);
    }
    if (ids_.empty()) type_ = filter.type();
  }
  ~Member() override {
    if (feed_ != nullptr) owner_->Leave(feed_, this);
  }

  absl::Status Next(size_t max, absl::Duration timeout, std::vector<Delivery>* out,
                    uint64_t* missed) override {
    if (max == 0) return absl::InvalidArgumentError("max must be at least 1");
    std::unique_lock<std::mutex> lock(mu_);
    if (queue_.empty() && !closed_ && end_.ok() && missed_ == 0 &&
        timeout > absl::ZeroDuration()) {
      waiting_ = true;
      cv_.wait_for(lock, absl::ToChronoNanoseconds(timeout), [this] {
        return !queue_.empty() || closed_ || !end_.ok() || missed_ > 0;
      });
      waiting_ = false;
    }
    if (missed != nullptr) {
      *missed = missed_;
      missed_ = 0;
    }
    const size_t n = std::min(max, queue_.size());
    for (size_t i = 0; i < n; ++i) {
      out->push_back(Delivery{std::move(queue_.front()), 1});
      queue_.pop_front();
    }
    if (n > 0) return absl::OkStatus();
    if (closed_) return absl::CancelledError("subscription closed");
    return end_;
  }
  absl::Status Ack(absl::Span<const uint64_t>) override { return absl::OkStatus(); }
  absl::Status Nak(absl::Span<const uint64_t>) override { return absl::OkStatus(); }
  void Close() override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      closed_ = true;
      std::deque<MessagePtr>().swap(queue_);
    }
    cv_.notify_all();
  }
  void Terminate(absl::Status reason) override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (end_.ok()) end_ = std::move(reason);
      std::deque<MessagePtr>().swap(queue_);
    }
    cv_.notify_all();
  }

  // Dispatcher side (under the feed's lock). Takes what fits of `staged`
  // (cleared), counting the rest as missed.
  void Push(std::vector<MessagePtr>* staged) {
    bool wake;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (closed_ || !end_.ok()) {
        staged->clear();
        return;
      }
      for (MessagePtr& m : *staged) {
        if (queue_.size() >= capacity_) {
          ++missed_;
          continue;
        }
        queue_.push_back(std::move(m));
      }
      wake = waiting_;
    }
    staged->clear();
    if (wake) cv_.notify_one();
  }
  void AddMissed(uint64_t n) {
    bool wake;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (closed_ || !end_.ok()) return;
      missed_ += n;
      wake = waiting_;
    }
    if (wake) cv_.notify_one();
  }

  const std::vector<std::string>& ids() const { return ids_; }
  const std::string& type() const { return type_; }

  // Set once by Join, before the member is reachable from elsewhere.
  std::shared_ptr<Feed> feed_;
  // The dispatcher's staging area for this member (under the feed's lock).
  std::vector<MessagePtr> staged_;

 private:
  LiveFeeds* const owner_;
  const size_t capacity_;
  std::vector<std::string> ids_;  // index keys: the filter's ids, without repeats
  std::string type_;              // else the filter's type (may be empty)

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<MessagePtr> queue_;
  uint64_t missed_ = 0;
  bool waiting_ = false;
  bool closed_ = false;
  absl::Status end_;
};

// One pattern's shared bus subscription and its dispatcher thread.
class LiveFeeds::Feed {
 public:
  Feed(std::string pattern, std::unique_ptr<Subscription> sub)
      : pattern_(std::move(pattern)), sub_(std::move(sub)) {}
  ~Feed() {
    sub_->Close();
    if (thread_.joinable()) thread_.join();
  }
  Feed(const Feed&) = delete;
  Feed& operator=(const Feed&) = delete;

  void Start() { thread_ = std::thread([this] { Run(); }); }

  const std::string& pattern() const { return pattern_; }

  // Adds `m` to the index; false when the feed has ended (its bus
  // subscription failed): a new feed is needed.
  bool Add(Member* m) {
    absl::MutexLock lock(&mu_);
    if (!end_.ok()) return false;
    members_.push_back(m);
    if (!m->ids().empty()) {
      for (const std::string& id : m->ids()) by_id_[id].push_back(m);
    } else if (!m->type().empty()) {
      by_type_[m->type()].push_back(m);
    } else {
      any_.push_back(m);
    }
    return true;
  }

  // Removes `m`; true when no member is left.
  bool Remove(Member* m) {
    absl::MutexLock lock(&mu_);
    auto drop = [m](std::vector<Member*>& v) {
      v.erase(std::remove(v.begin(), v.end(), m), v.end());
    };
    drop(members_);
    for (const std::string& id : m->ids()) {
      auto it = by_id_.find(id);
      if (it == by_id_.end()) continue;
      drop(it->second);
      if (it->second.empty()) by_id_.erase(it);
    }
    if (m->ids().empty() && !m->type().empty()) {
      auto it = by_type_.find(m->type());
      if (it != by_type_.end()) {
        drop(it->second);
        if (it->second.empty()) by_type_.erase(it);
      }
    }
    drop(any_);
    m->staged_.clear();
    return members_.empty();
  }

 private:
  void Run() {
    std::vector<Delivery> got;
    got.reserve(kDispatchBatch);
    std::vector<Member*> touched;
    while (true) {
      got.clear();
      uint64_t missed = 0;
      absl::Status s = sub_->Next(kDispatchBatch, kDispatchPoll, &got, &missed);
      if (!s.ok()) {
        absl::MutexLock lock(&mu_);
        end_ = s;
        for (Member* m : members_) m->Terminate(s);
        return;
      }
      if (got.empty() && missed == 0) continue;
      absl::MutexLock lock(&mu_);
      if (missed > 0) {
        for (Member* m : members_) m->AddMissed(missed);
      }
      auto give = [&touched](Member* m, const MessagePtr& message) {
        if (m->staged_.empty()) touched.push_back(m);
        m->staged_.push_back(message);
      };
      for (const Delivery& d : got) {
        const event::v1::Event& ev = d.message->event();
        if (!by_id_.empty()) {
          auto it = by_id_.find(EntityIdOf(ev));
          if (it != by_id_.end()) {
            for (Member* m : it->second) give(m, d.message);
          }
        }
        if (!by_type_.empty()) {
          auto it = by_type_.find(ev.type());
          if (it != by_type_.end()) {
            for (Member* m : it->second) give(m, d.message);
          }
        }
        for (Member* m : any_) give(m, d.message);
      }
      for (Member* m : touched) m->Push(&m->staged_);
      touched.clear();
    }
  }

  const std::string pattern_;
  const std::unique_ptr<Subscription> sub_;
  std::thread thread_;
  absl::Mutex mu_;
  absl::Status end_ ABSL_GUARDED_BY(mu_);
  std::vector<Member*> members_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, std::vector<Member*>> by_id_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, std::vector<Member*>> by_type_ ABSL_GUARDED_BY(mu_);
  std::vector<Member*> any_ ABSL_GUARDED_BY(mu_);
};

LiveFeeds::LiveFeeds(Bus* bus, Principal node, size_t queue_depth)
    : bus_(bus), node_(std::move(node)), queue_depth_(queue_depth) {}

LiveFeeds::~LiveFeeds() {
  absl::flat_hash_map<std::string, std::shared_ptr<Feed>> feeds;
  {
    absl::MutexLock lock(&mu_);
    feeds.swap(feeds_);
  }
  // Joins the dispatchers (members hold the feeds otherwise).
}

absl::StatusOr<std::unique_ptr<Subscription>> LiveFeeds::Join(
    const std::string& pattern, const exchange::v1::EntityFilter& filter) {
  auto member = std::make_unique<Member>(
      this, queue_depth_ == 0 ? kDefaultMemberDepth : queue_depth_, filter);
  std::shared_ptr<Feed> ended;  // released outside the lock
  absl::MutexLock lock(&mu_);
  auto it = feeds_.find(pattern);
  if (it != feeds_.end() && it->second->Add(member.get())) {
    member->feed_ = it->second;
    return std::unique_ptr<Subscription>(std::move(member));
  }
  SubscribeOptions options;
  options.subject_pattern = pattern;
  // The shared queue is drained by one dispatcher for many members: never
  // bound it tighter than the bus's default.
  options.queue_depth = queue_depth_ == 0 ? 0 : std::max(queue_depth_, kDefaultMemberDepth);
  absl::StatusOr<std::unique_ptr<Subscription>> sub = bus_->Subscribe(node_, options);
  if (!sub.ok()) return sub.status();
  auto feed = std::make_shared<Feed>(pattern, *std::move(sub));
  feed->Add(member.get());  // a new feed has not ended
  feed->Start();
  member->feed_ = feed;
  if (it != feeds_.end()) {
    ended = std::move(it->second);
    it->second = std::move(feed);
  } else {
    feeds_.emplace(pattern, std::move(feed));
  }
  return std::unique_ptr<Subscription>(std::move(member));
}

void LiveFeeds::Leave(const std::shared_ptr<Feed>& feed, Member* member) {
  absl::MutexLock lock(&mu_);
  if (!feed->Remove(member)) return;
  auto it = feeds_.find(feed->pattern());
  // The member still holds `feed`: erasing never destroys it under the lock.
  if (it != feeds_.end() && it->second == feed) feeds_.erase(it);
}

size_t LiveFeeds::feeds() const {
  absl::MutexLock lock(&mu_);
  return feeds_.size();
}

}  // namespace cityos
