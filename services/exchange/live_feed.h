// Live exchange subscriptions share one bus subscription per subject pattern.
//
// Every live exchange Subscribe used to take its own bus subscription, so the
// bus fanned each event out to every exchange subscription of the pattern and
// each woke up to throw most of them away (100 subscriptions filtered to one
// entity each = 100 queue pushes, 100 shared_ptr copies and 100 filter tests
// per event, 99 of them for nothing). A LiveFeeds instead keeps, per pattern,
// one bus subscription (taken as the node) read by one dispatcher thread,
// which hands each event only to the members whose filter can match it:
//   - members whose filter names entity ids are indexed by id (the id
//     EntityFromEvent gives the event: its entity-id extension, else its
//     source): one hash look-up per event, whatever the number of members;
//   - members without ids but with a type are indexed by type;
//   - the others get every event of the pattern.
// The per-event cost of the dispatcher does not grow with the number of
// members that do not want the event. A member still applies its whole filter
// (and the caller's decision, obligations, ...) to what it receives: the index
// only leaves out events the filter cannot match.
//
// Each member is a Subscription with its own bounded queue (`queue_depth`
// events, 0 = 65,536, the bus's default): when it is full, events are dropped
// for that member only and counted in Next()'s `missed`, as a bus live
// subscription does. Events the shared bus subscription itself missed (its
// queue was full) are counted as missed by every member, since which of them
// would have wanted them is unknown. When the shared bus subscription ends
// (the bus closes: UNAVAILABLE), every member ends with the same status.
// Terminate()/Close() end one member only. The last member to leave a pattern
// unsubscribes it from the bus.
//
// A member sees the events the dispatcher hands out after it joined; an event
// published shortly before the join but still waiting in the shared bus
// queue can therefore reach it too (the bus's own live subscriptions start at
// the routing of the next event instead). Live delivery has no position, so
// nothing relies on that boundary.
#ifndef CITYOS_SERVICES_EXCHANGE_LIVE_FEED_H_
#define CITYOS_SERVICES_EXCHANGE_LIVE_FEED_H_

#include <cstddef>
#include <memory>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "cityos/bus.h"
#include "cityos/event.h"
#include "cityos/exchange/v1/exchange.pb.h"
#include "cityos/principal.h"

namespace cityos {

class LiveFeeds {
 public:
  // `bus` outlives this object; `node` is who the shared subscriptions are
  // taken as. `queue_depth`: each member's queue bound (0 = 65,536, the bus's
  // default); the shared bus subscriptions take the bus's default or
  // `queue_depth`, whichever is larger.
  LiveFeeds(Bus* bus, Principal node, size_t queue_depth);
  // Every member must be gone (destroyed) first.
  ~LiveFeeds();
  LiveFeeds(const LiveFeeds&) = delete;
  LiveFeeds& operator=(const LiveFeeds&) = delete;

  // A live subscription to `pattern` (a valid subject pattern) for one caller,
  // fed by the pattern's shared bus subscription (taken now if there is none)
  // with the events `filter` can match. Errors: those of Bus::Subscribe.
  // Thread-safe.
  absl::StatusOr<std::unique_ptr<Subscription>> Join(const std::string& pattern,
                                                     const exchange::v1::EntityFilter& filter);

  // Shared bus subscriptions open now (tests).
  size_t feeds() const;

 private:
  class Feed;
  class Member;
  // Removes `member` from `feed`; drops the feed when it was the last one.
  void Leave(const std::shared_ptr<Feed>& feed, Member* member);

  Bus* const bus_;
  const Principal node_;
  const size_t queue_depth_;
  mutable absl::Mutex mu_;
  absl::flat_hash_map<std::string, std::shared_ptr<Feed>> feeds_ ABSL_GUARDED_BY(mu_);
};

}  // namespace cityos

#endif  // CITYOS_SERVICES_EXCHANGE_LIVE_FEED_H_
