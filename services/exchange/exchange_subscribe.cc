#include "exchange_subscribe.h"

#include <algorithm>
#include <optional>
#include <utility>
#include <vector>

#include "absl/strings/numbers.h"
#include "google/protobuf/arena.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "cityos/grpc_util.h"
#include "cityos/logging.h"
#include "cityos/proto_time.h"
#include "cityos/subject.h"
#include "event_wire.h"

namespace cityos {
namespace {

using exchange::v1::SubscribeRequest;
using exchange::v1::SubscribeResponse;

grpc::Status Invalid(std::string message) {
  return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, std::move(message));
}

// Whether the filter has conditions that need the entity view (beyond the
// envelope attributes type, owner and data subject).
bool NeedsEntity(const exchange::v1::EntityFilter& f) {
  return f.ids_size() > 0 || f.attributes_size() > 0 || f.has_area() || f.has_observed();
}

std::vector<std::string_view> Tokens(std::string_view s) {
  std::vector<std::string_view> out;
  size_t start = 0;
  while (true) {
    size_t dot = s.find('.', start);
    out.push_back(s.substr(start, dot == std::string_view::npos ? dot : dot - start));
    if (dot == std::string_view::npos) return out;
    start = dot + 1;
  }
}

}  // namespace

ObligationApplier& RecipientAppliers::For(const std::string& org) {
  absl::MutexLock lock(&mu_);
  auto it = appliers_.find(org);
  if (it == appliers_.end()) {
    it = appliers_
             .emplace(org, std::make_unique<ObligationApplier>(
                               PseudonymKey::ForRecipient(secret_, org)))
             .first;
  }
  return *it->second;
}

std::string MakeResumeToken(std::string_view stream, uint64_t sequence) {
  // Built by hand: one per delivered event.
  char digits[24];
  char* end = digits + sizeof(digits);
  char* p = end;
  do {
    *--p = static_cast<char>('0' + sequence % 10);
    sequence /= 10;
  } while (sequence != 0);
  std::string token;
  token.reserve(stream.size() + 1 + static_cast<size_t>(end - p));
  token.append(stream);
  token.push_back(':');
  token.append(p, end);
  return token;
}

absl::StatusOr<std::pair<std::string, uint64_t>> ParseResumeToken(std::string_view token) {
  size_t colon = token.rfind(':');
  uint64_t seq = 0;
  if (colon == std::string_view::npos || colon == 0 ||
      !absl::SimpleAtoi(absl::string_view(token.data() + colon + 1, token.size() - colon - 1),
                        &seq) ||
      seq == 0) {
    return absl::InvalidArgumentError(
        absl::StrFormat("resume_token: \"%s\" is not a token from an earlier delivery", token));
  }
  return std::make_pair(std::string(token.substr(0, colon)), seq);
}

bool PatternCovers(std::string_view outer, std::string_view inner) {
  std::vector<std::string_view> o = Tokens(outer), in = Tokens(inner);
  for (size_t i = 0; i < o.size(); ++i) {
    if (o[i] == ">") return i < in.size();
    if (i >= in.size()) return false;
    if (in[i] == ">") return false;  // `>` is only covered by `>`
    if (o[i] == "*") continue;
    if (in[i] == "*" || in[i] != o[i]) return false;
  }
  return o.size() == in.size();
}

struct SubscriptionHub::Live {
  Principal who;
  std::string purpose;
  std::string pattern;
  exchange::v1::EntityFilter filter;

  std::mutex mu;
  // Null once the stream ended (the handler is about to destroy it).
  Subscription* bus_sub ABSL_GUARDED_BY(mu) = nullptr;
  // The last event delivered, and how it was decided: what the re-check
  // decides again.
  MessagePtr last_event ABSL_GUARDED_BY(mu);
  std::optional<std::pair<double, double>> last_location ABSL_GUARDED_BY(mu);
  Action last_action ABSL_GUARDED_BY(mu) = Action::kSubscribe;
  std::shared_ptr<const Decision> last_decision ABSL_GUARDED_BY(mu);
  // Set by End(): wakes the handler out of a linger pause.
  bool ended ABSL_GUARDED_BY(mu) = false;
  std::condition_variable ended_cv;

  void End(absl::Status why) {
    {
      std::lock_guard<std::mutex> lock(mu);
      ended = true;
      if (bus_sub != nullptr) bus_sub->Terminate(std::move(why));
    }
    ended_cv.notify_all();
  }

  // Sleeps `d`, or less when the stream is ended meanwhile.
  void Linger(absl::Duration d) {
    std::unique_lock<std::mutex> lock(mu);
    ended_cv.wait_for(lock, absl::ToChronoNanoseconds(d), [this] { return ended; });
  }
};

SubscriptionHub::SubscriptionHub(const ExchangeDeps* deps, ExchangeServiceOptions options)
    : deps_(deps), options_(options), feeds_(deps->bus, deps->node, options.queue_depth) {}

SubscriptionHub::~SubscriptionHub() { Stop(); }

void SubscriptionHub::Start() {
  watch_id_ = deps_->pdp->Watch([this](const PolicyChange& change) { OnChange(change); });
  watching_ = true;
  rechecker_ = std::thread([this] { RecheckLoop(); });
}

void SubscriptionHub::Stop() {
  if (watching_) {
    deps_->pdp->Unwatch(watch_id_);
    watching_ = false;
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (rechecker_.joinable()) rechecker_.join();
}

void SubscriptionHub::BeginShutdown() {
  draining_.store(true);
  std::vector<std::shared_ptr<Live>> all;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto& [id, l] : live_) all.push_back(l);
  }
  for (auto& l : all) l->End(absl::UnavailableError("the node is shutting down"));
}

size_t SubscriptionHub::open() const {
  std::lock_guard<std::mutex> lock(mu_);
  return live_.size();
}

void SubscriptionHub::OnChange(const PolicyChange& change) {
  // Called by the PDP on the changing thread: only note it and wake the
  // re-check thread (deciding here could re-enter the PDP).
  if (change.kind == PolicyChange::Kind::kEmergency) emergency_epoch_.fetch_add(1);
  {
    std::lock_guard<std::mutex> lock(mu_);
    change_pending_ = true;
  }
  cv_.notify_all();
}

void SubscriptionHub::NoteDeadline(absl::Time t) {
  if (t == absl::InfiniteFuture()) return;
  bool wake = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (t < wake_at_) {
      wake_at_ = t;
      wake = true;
    }
  }
  if (wake) cv_.notify_all();
}

void SubscriptionHub::RecheckLoop() {
  std::unique_lock<std::mutex> lock(mu_);
  while (!stop_) {
    if (!change_pending_) {
      if (wake_at_ == absl::InfiniteFuture()) {
        cv_.wait(lock);
      } else {
        // Deadlines are on the node's clock, which may be simulated: wait in
        // short real slices and look at the clock again.
        absl::Duration left = wake_at_ - deps_->clock->Now();
        if (left > absl::ZeroDuration()) {
          cv_.wait_for(lock, absl::ToChronoMilliseconds(
                                 std::clamp(left, absl::Milliseconds(1), absl::Milliseconds(20))));
        }
      }
      if (stop_) break;
      const bool due = wake_at_ != absl::InfiniteFuture() && deps_->clock->Now() >= wake_at_;
      if (!change_pending_ && !due) continue;
    }
    change_pending_ = false;
    wake_at_ = absl::InfiniteFuture();
    std::vector<std::shared_ptr<Live>> all;
    all.reserve(live_.size());
    for (auto& [id, l] : live_) all.push_back(l);
    lock.unlock();
    absl::Time next = absl::InfiniteFuture();
    for (auto& l : all) {
      Recheck(*l);
      std::lock_guard<std::mutex> l_lock(l->mu);
      if (l->bus_sub != nullptr && l->last_decision != nullptr) {
        next = std::min(next, l->last_decision->valid_until);
      }
    }
    lock.lock();
    wake_at_ = std::min(wake_at_, next);
  }
}

void SubscriptionHub::Recheck(Live& live) {
  PolicyDecisionPoint& pdp = *deps_->pdp;
  AccessRequest whole{.principal = &live.who, .action = Action::kSubscribe, .purpose = live.purpose};
  whole.resource.subject = live.pattern;
  whole.resource.type = live.filter.type();
  whole.resource.owner = live.filter.owner();
  whole.resource.data_subject = live.filter.data_subject();
  const std::string who_id = live.who.SpiffeId();
  if (!pdp.MayAllow(whole)) {
    Decision denied;
    denied.effect = exchange::v1::EFFECT_DENY;
    denied.severity = exchange::v1::SEVERITY_NOTICE;
    denied.reason = "no rule allows this subscription any more";
    deps_->auditor->Record(who_id, "subscribe", live.pattern, live.purpose,
                           live.filter.data_subject(), denied);
    live.End(absl::PermissionDeniedError(absl::StrFormat(
        "access withdrawn: no rule allows %s to subscribe to %s for purpose %s any more", who_id,
        live.pattern, live.purpose)));
    return;
  }
  MessagePtr event;
  std::optional<std::pair<double, double>> location;
  Action action;
  std::shared_ptr<const Decision> last;
  {
    std::lock_guard<std::mutex> lock(live.mu);
    if (live.bus_sub == nullptr || live.last_event == nullptr) return;
    event = live.last_event;
    location = live.last_location;
    action = live.last_action;
    last = live.last_decision;
  }
  const bool one_subject = !live.filter.data_subject().empty();
  const bool conditional = last != nullptr && (!last->emergency_id.empty() ||
                                               last->valid_until != absl::InfiniteFuture());
  if (!one_subject && !conditional) return;
  AccessRequest again{.principal = &live.who, .action = action,
                      .resource = ResourceView::Of(event->event()), .purpose = live.purpose};
  again.resource.location = location;
  std::shared_ptr<const Decision> d = pdp.Decide(again);
  if (d->allowed()) {
    std::lock_guard<std::mutex> lock(live.mu);
    if (live.last_event == event) live.last_decision = d;
    return;
  }
  deps_->auditor->Record(who_id, ActionName(action), event->event().subject(), live.purpose,
                         event->event().data_subject(), *d);
  live.End(absl::PermissionDeniedError(absl::StrFormat("access withdrawn: %s", d->reason)));
}

grpc::Status SubscriptionHub::Serve(grpc::ServerContext* context, const Principal& who,
                                    const SubscribeRequest& request,
                                    SubscribeSink* sink) {
  PolicyDecisionPoint& pdp = *deps_->pdp;
  if (draining_.load()) {
    return grpc::Status(grpc::StatusCode::UNAVAILABLE, "the node is shutting down");
  }
  // --- validation ---
  if (request.subject_pattern().empty()) return Invalid("subject_pattern: required");
  if (absl::Status s = ValidatePattern(request.subject_pattern()); !s.ok()) {
    return Invalid(absl::StrFormat("subject_pattern: %s", s.message()));
  }
  if (request.has_filter()) {
    if (absl::Status s = ValidateFilter(request.filter()); !s.ok()) {
      return Invalid(absl::StrFormat("filter: %s", s.message()));
    }
  }
  if (request.purpose().empty()) return Invalid("purpose: required");
  if (!pdp.IsKnownPurpose(request.purpose())) {
    return Invalid(absl::StrFormat("purpose: unknown purpose \"%s\"", request.purpose()));
  }
  if (request.has_start_time() && !request.resume_token().empty()) {
    return Invalid("start_time and resume_token are exclusive: give one");
  }
  std::optional<absl::Time> start_time;
  if (request.has_start_time()) {
    absl::StatusOr<absl::Time> t = TimestampFromProto(request.start_time(), "start_time");
    if (!t.ok()) return ToGrpcStatus(t.status());
    start_time = *t;
  }
  std::optional<std::pair<std::string, uint64_t>> resume;
  if (!request.resume_token().empty()) {
    auto r = ParseResumeToken(request.resume_token());
    if (!r.ok()) return ToGrpcStatus(r.status());
    resume = *std::move(r);
  }
  const exchange::v1::EntityFilter& filter = request.filter();
  const std::string who_id = who.SpiffeId();

  // --- may the caller subscribe at all? Decided before anything is read. ---
  AccessRequest whole{.principal = &who, .action = Action::kSubscribe,
                      .purpose = request.purpose()};
  whole.resource.subject = request.subject_pattern();
  whole.resource.type = filter.type();
  whole.resource.owner = filter.owner();
  whole.resource.data_subject = filter.data_subject();
  if (!pdp.MayAllow(whole)) {
    Decision denied;
    denied.effect = exchange::v1::EFFECT_DENY;
    denied.severity = exchange::v1::SEVERITY_NOTICE;
    denied.reason = "no rule can allow this subscription";
    deps_->auditor->Record(who_id, "subscribe", request.subject_pattern(), request.purpose(),
                           filter.data_subject(), denied);
    return grpc::Status(grpc::StatusCode::PERMISSION_DENIED,
                        absl::StrFormat("no rule allows %s to subscribe to %s for purpose %s",
                                        who_id, request.subject_pattern(), request.purpose()));
  }

  // --- the bus subscription, as the node ---
  Bus& bus = *deps_->bus;
  SubscribeOptions bus_options;
  std::string replay_stream;
  uint64_t replay_last = 0;  // events up to this sequence are replayed (history)
  if (start_time.has_value() || resume.has_value()) {
    if (resume.has_value()) {
      absl::StatusOr<StreamInfo> info = bus.GetStream(deps_->node, resume->first);
      if (!info.ok()) {
        if (absl::IsNotFound(info.status())) {
          return grpc::Status(grpc::StatusCode::NOT_FOUND,
                              absl::StrFormat("resume_token: stream %s no longer exists",
                                              resume->first));
        }
        return ToGrpcStatus(info.status());
      }
      bool covers = false;
      for (const std::string& p : info->config.subjects) {
        covers = covers || PatternCovers(p, request.subject_pattern());
      }
      if (!covers) {
        return Invalid(absl::StrFormat("resume_token: stream %s does not capture %s",
                                       resume->first, request.subject_pattern()));
      }
      if (info->first_sequence > resume->second + 1) {
        return grpc::Status(
            grpc::StatusCode::NOT_FOUND,
            absl::StrFormat("resume_token: position %d of stream %s is no longer retained "
                            "(oldest is %d)",
                            resume->second, resume->first, info->first_sequence));
      }
      replay_stream = resume->first;
      replay_last = info->last_sequence;
      bus_options.start = StartPosition::AtSequence(resume->second + 1);
    } else {
      absl::StatusOr<std::vector<StreamInfo>> streams = bus.ListStreams(deps_->node);
      if (!streams.ok()) return ToGrpcStatus(streams.status());
      for (const StreamInfo& info : *streams) {
        for (const std::string& p : info.config.subjects) {
          if (PatternCovers(p, request.subject_pattern())) {
            replay_stream = info.config.name;
            replay_last = info.last_sequence;
          }
        }
      }
      if (replay_stream.empty()) {
        return Invalid(absl::StrFormat(
            "start_time: no bus stream captures %s, so there is nothing to replay; subscribe "
            "live (no start_time) or to a pattern inside one stream",
            request.subject_pattern()));
      }
      bus_options.start = StartPosition::AtTime(*start_time);
    }
    bus_options.stream = replay_stream;
    bus_options.subject_pattern = request.subject_pattern();
  }
  // Replay: a bus subscription of its own. Live: a member of the pattern's
  // shared bus subscription, fed the events its filter can match.
  absl::StatusOr<std::unique_ptr<Subscription>> sub =
      replay_stream.empty() ? feeds_.Join(request.subject_pattern(), filter)
                            : bus.Subscribe(deps_->node, bus_options);
  if (!sub.ok()) return ToGrpcStatus(sub.status());

  auto live = std::make_shared<Live>();
  live->who = who;
  live->purpose = request.purpose();
  live->pattern = request.subject_pattern();
  live->filter = filter;
  live->bus_sub = sub->get();
  uint64_t id;
  {
    std::lock_guard<std::mutex> lock(mu_);
    id = next_id_++;
    live_[id] = live;
  }
  // Unregisters and detaches the bus subscription before it is destroyed.
  struct Unregister {
    SubscriptionHub* hub;
    uint64_t id;
    std::shared_ptr<Live> live;
    ~Unregister() {
      {
        std::lock_guard<std::mutex> lock(hub->mu_);
        hub->live_.erase(id);
      }
      std::lock_guard<std::mutex> lock(live->mu);
      live->bus_sub = nullptr;
    }
  } unregister{this, id, live};
  // A drain that began while we subscribed must still end this stream.
  if (draining_.load()) {
    return grpc::Status(grpc::StatusCode::UNAVAILABLE, "the node is shutting down");
  }
  sink->SendInitialMetadata();

  const size_t max_batch = request.max_batch() == 0
                               ? options_.default_max_batch
                               : std::min<size_t>(request.max_batch(), options_.max_batch_limit);
  const bool filter_needs_entity = NeedsEntity(filter);
  ObligationApplier& applier = deps_->appliers->For(who.org);
  uint64_t seen_epoch = 0;
  bool emergencies = false;
  // Decisions serialized once per decision and copied into every delivery
  // that carries them.
  std::vector<std::pair<std::shared_ptr<const Decision>, std::string>> decision_bytes;
  auto bytes_for = [&](const std::shared_ptr<const Decision>& d) -> const std::string& {
    for (auto& [key, bytes] : decision_bytes) {
      if (key == d) return bytes;
    }
    // Policies change rarely; a long stream must not hold every decision it
    // ever saw.
    if (decision_bytes.size() >= 64) decision_bytes.clear();
    decision_bytes.emplace_back(d, d->ToProto().SerializeAsString());
    return decision_bytes.back().second;
  };

  std::vector<Delivery> got;
  got.reserve(max_batch);
  // The response being built, serialized (a SubscribeResponse: deliveries,
  // then `missed`), reused from one response to the next.
  std::string out;
  size_t out_deliveries = 0;
  uint64_t out_missed = 0;
  auto send = [&]() -> bool {
    if (out_missed > 0) {
      wire::AppendVarintField(2, out_missed, &out);  // SubscribeResponse.missed
    }
    const bool written = sink->Write(out);
    out.clear();
    out_deliveries = 0;
    out_missed = 0;
    return written;
  };
  // One event after obligations, serialized (reused).
  std::string event_bytes;
  // Events that cannot go the wire way (live ones, or when the entity view or
  // a location is needed) are copied here (reused) to apply obligations.
  event::v1::Event copy;
  // Identical allows in a row (same action, subject, data subject and
  // decision) are counted here and audited as one record. The views point
  // into messages of `got`, which outlive every flush.
  struct Pending {
    std::string_view subject;
    std::string_view data_subject;
    Action action = Action::kSubscribe;
    std::shared_ptr<const Decision> decision;
    uint64_t count = 0;
  } pending;
  auto flush_audit = [&] {
    if (pending.count == 0) return;
    deps_->auditor->Record(who_id, ActionName(pending.action), pending.subject,
                           request.purpose(), pending.data_subject, *pending.decision,
                           pending.count);
    pending.count = 0;
    pending.decision.reset();
  };
  auto audit_allow = [&](std::string_view subject, std::string_view data_subject, Action action,
                         const std::shared_ptr<const Decision>& decision) {
    if (pending.count > 0 && pending.decision == decision && pending.action == action &&
        pending.subject == subject && pending.data_subject == data_subject) {
      ++pending.count;
      return;
    }
    flush_audit();
    pending = Pending{subject, data_subject, action, decision, 1};
  };
  // Events on the wire path / the parsed path (tests and benchmarks).
  uint64_t wire_events = 0, parsed_events = 0;
  while (!context->IsCancelled()) {
    got.clear();
    uint64_t missed = 0;
    absl::Status s = (*sub)->Next(max_batch, options_.poll_interval, &got, &missed);
    if (!s.ok()) {
      if (absl::IsCancelled(s)) break;
      stats_.wire_events.fetch_add(wire_events);
      stats_.parsed_events.fetch_add(parsed_events);
      return ToGrpcStatus(s);
    }
    if (got.empty() && missed == 0) continue;
    if (uint64_t epoch = emergency_epoch_.load(); epoch != seen_epoch) {
      seen_epoch = epoch;
      emergencies = false;
      for (const exchange::v1::Emergency& e : pdp.ListEmergencies(false)) {
        emergencies = emergencies || e.state() == exchange::v1::EMERGENCY_STATE_ACTIVE ||
                      e.state() == exchange::v1::EMERGENCY_STATE_SCHEDULED;
      }
    }
    // A response is only sent when there is something in it: a narrow
    // subscription mostly wakes for events its filter leaves out.
    out_missed = missed;
    size_t bytes = 0;
    // The last delivered event, as an index into `got` (copying the
    // shared_ptrs per event would cost two atomic operations each).
    const Delivery* last_allowed = nullptr;
    std::optional<std::pair<double, double>> last_location;
    Action last_action = Action::kSubscribe;
    std::shared_ptr<const Decision> last_decision;
    bool broken = false;
    for (const Delivery& d : got) {
      const Message& m = *d.message;
      // The wire path: stored events (replay) whose decision needs only the
      // envelope, read from the stored bytes without parsing the event. Else
      // the parsed event (live events are parsed already).
      EnvelopeView env;
      const bool wire = !m.wire().empty() && !emergencies && !filter_needs_entity &&
                        env.Parse(m.wire());
      const event::v1::Event* ev = wire ? nullptr : &m.event();
      const std::string_view type = wire ? env.type : std::string_view(ev->type());
      const std::string_view owner = wire ? env.owner : std::string_view(ev->owner());
      const std::string_view data_subject =
          wire ? env.data_subject : std::string_view(ev->data_subject());
      const std::string_view subject = wire ? env.subject : std::string_view(ev->subject());
      // Envelope conditions of the filter first: cheap, and what the
      // subscription asked for is not the caller's business to be audited.
      // The ids first: a subscription naming ids wants few of the pattern's
      // events, and this test leaves out most of them soonest.
      if (filter.ids_size() > 0) {
        // The entity id, as EntityFromEvent takes it.
        const std::string_view id = wire ? env.entity_id() : std::string_view(EntityIdOf(*ev));
        if (std::find(filter.ids().begin(), filter.ids().end(), id) == filter.ids().end()) {
          continue;
        }
      }
      if (!filter.type().empty() && type != filter.type()) continue;
      if (!filter.owner().empty() && owner != filter.owner()) continue;
      if (!filter.data_subject().empty() && data_subject != filter.data_subject()) continue;
      const bool replayed = !replay_stream.empty() && m.stream == replay_stream &&
                            m.sequence <= replay_last;
      const Action action = replayed ? Action::kHistory : Action::kSubscribe;
      AccessRequest req{.principal = &who, .action = action,
                        .resource = wire ? env.Resource() : ResourceView::Of(*ev),
                        .purpose = request.purpose()};
      std::optional<std::pair<double, double>> location;
      if (emergencies) {
        // Emergency rules are bound to an area: the decision needs where the
        // event is.
        absl::StatusOr<exchange::v1::Entity> e = EntityFromEvent(*ev);
        if (e.ok() && e->has_location()) {
          location = std::make_pair(e->location().latitude(), e->location().longitude());
        }
        req.resource.location = location;
      }
      std::shared_ptr<const Decision> decision = pdp.Decide(req);
      if (!decision->allowed()) {
        deps_->auditor->Record(who_id, ActionName(action), subject, request.purpose(),
                               data_subject, *decision);
        continue;
      }
      audit_allow(subject, data_subject, action, decision);
      // Aggregate-only data is never delivered record by record.
      if (decision->has_obligation(exchange::v1::OBLIGATION_KIND_AGGREGATE_ONLY)) continue;
      // The event's size, roughly (payload plus room for the envelope), to
      // keep each response well under gRPC's message limit.
      const size_t size =
          (wire ? env.payload_bytes
                : ev->proto_data().value().size() + ev->text_data().size() +
                      ev->binary_data().size()) +
          1024;
      // The event as delivered: obligations applied, serialized.
      std::string_view delivered;
      absl::Status applied;
      if (wire) {
        if (decision->obligations.empty()) {
          delivered = m.wire();
        } else {
          event_bytes.clear();
          applied = applier.ApplyToWire(decision->obligations, m.wire(), &event_bytes);
          delivered = event_bytes;
        }
      } else {
        const event::v1::Event* view = ev;
        if (!decision->obligations.empty()) {
          copy = *ev;
          applied = applier.Apply(decision->obligations, &copy);
          view = &copy;
        }
        if (applied.ok() && filter_needs_entity) {
          // Filtered on what the caller may see, so that a filter on a
          // redacted field cannot reveal its value.
          absl::StatusOr<exchange::v1::Entity> entity = EntityFromEvent(*view);
          if (!entity.ok() || !MatchesFilter(filter, *entity)) continue;
        }
        event_bytes.clear();
        if (applied.ok()) view->AppendToString(&event_bytes);
        delivered = event_bytes;
      }
      if (!applied.ok()) {
        // Fail closed: an obligation that cannot be met means no delivery.
        LogWarn("exchange", "obligation cannot be applied; event withheld",
                {{"subject", std::string(subject)}, {"error", std::string(applied.message())}});
        continue;
      }
      if (out_deliveries > 0 && bytes + size > options_.max_response_bytes) {
        if (!send()) {
          broken = true;
          break;
        }
        bytes = 0;
      }
      AppendDelivery(delivered, m.publish_time, bytes_for(decision), m.stream, m.sequence, &out);
      ++out_deliveries;
      ++(wire ? wire_events : parsed_events);
      bytes += size;
      last_allowed = &d;
      last_location = location;
      last_action = action;
      if (last_decision != decision) last_decision = decision;
    }
    flush_audit();
    if (broken) break;
    if (last_allowed != nullptr) {
      {
        std::lock_guard<std::mutex> lock(live->mu);
        live->last_event = last_allowed->message;
        live->last_location = last_location;
        live->last_action = last_action;
        live->last_decision = last_decision;
      }
      NoteDeadline(last_decision->valid_until);
    }
    if (out_deliveries > 0 || out_missed > 0) {
      if (!send()) break;
    }
    if (got.size() < max_batch && options_.linger > absl::ZeroDuration()) {
      live->Linger(options_.linger);
    }
  }
  stats_.wire_events.fetch_add(wire_events);
  stats_.parsed_events.fetch_add(parsed_events);
  flush_audit();
  return grpc::Status(grpc::StatusCode::CANCELLED, "the call was cancelled");
}

}  // namespace cityos
