// The embedded BusBackend: one SegmentedLog per stream, durable consumers kept
// in memory with their ack floor saved in the data dir.
//
// Layout under LogBackendOptions::dir:
//   <stream>/stream.json             the stream's config (JSON, format 1)
//   <stream>/log/                    its segmented log (docs/bus-log-format.md)
//   <stream>/consumers/<name>.json   a consumer's config and ack floor
// Each log record's payload is: varint32 subject length, subject bytes, then
// the serialized cityos.event.v1.Event.
//
// An `fsync` stream's log commits in two stages inside SegmentedLog (its
// kFsync pipeline, log/segmented_log.h): the log's flusher writes each group,
// its syncer fdatasyncs everything written and then acknowledges, so the next
// group is written while the current one syncs. The log's readers and state
// show only synced records: nothing is handed out before it is acknowledged.
#include <condition_variable>
#include <filesystem>
#include <map>
#include <mutex>
#include <set>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "bus/validate.h"
#include "bus/visible_reader.h"
#include "cityos/bus_backend.h"
#include "cityos/clock.h"
#include "cityos/logging.h"
#include "cityos/status.h"
#include "cityos/subject.h"
#include "core/file_util.h"
#include "core/strings.h"
#include "log/segmented_log.h"

namespace cityos {
namespace {

namespace fs = std::filesystem;
using bus_internal::VisibleReader;
using log_internal::LogReader;
using log_internal::LogRecord;
using log_internal::SegmentedLog;
using nlohmann::json;

constexpr int kFormat = 1;

// ---- record payload: varint32 subject length | subject | event bytes

void PutVarint32(std::string* out, uint32_t v) {
  while (v >= 0x80) {
    out->push_back(static_cast<char>(v | 0x80));
    v >>= 7;
  }
  out->push_back(static_cast<char>(v));
}

bool DecodeRecord(std::string_view payload, std::string* subject, std::string* event) {
  uint32_t len = 0;
  size_t i = 0;
  for (int shift = 0; shift <= 28; shift += 7) {
    if (i >= payload.size()) return false;
    uint8_t b = static_cast<uint8_t>(payload[i++]);
    len |= static_cast<uint32_t>(b & 0x7F) << shift;
    if ((b & 0x80) == 0) break;
    if (shift == 28) return false;
  }
  if (payload.size() - i < len) return false;
  subject->assign(payload.data() + i, len);
  event->assign(payload.data() + i + len, payload.size() - i - len);
  return true;
}

// ---- JSON of configs

int64_t Ns(absl::Duration d) { return absl::ToInt64Nanoseconds(d); }

json StartToJson(const StartPosition& s) {
  static const char* kKinds[] = {"new", "earliest", "last", "sequence", "time"};
  json j = {{"kind", kKinds[static_cast<int>(s.kind)]}};
  if (s.kind == StartPosition::Kind::kSequence) j["sequence"] = s.sequence;
  if (s.kind == StartPosition::Kind::kTime) j["time_unix_ns"] = absl::ToUnixNanos(s.time);
  return j;
}

StartPosition StartFromJson(const json& j) {
  StartPosition s;
  std::string k = j.at("kind").get<std::string>();
  if (k == "earliest") s.kind = StartPosition::Kind::kEarliest;
  if (k == "last") s.kind = StartPosition::Kind::kLast;
  if (k == "sequence") {
    s.kind = StartPosition::Kind::kSequence;
    s.sequence = j.at("sequence").get<uint64_t>();
  }
  if (k == "time") {
    s.kind = StartPosition::Kind::kTime;
    s.time = absl::FromUnixNanos(j.at("time_unix_ns").get<int64_t>());
  }
  return s;
}

json StreamToJson(const StreamConfig& c) {
  return {{"format", kFormat},
          {"name", c.name},
          {"subjects", c.subjects},
          {"durability", DurabilityName(c.durability)},
          {"sync_interval_ns", Ns(c.sync_interval)},
          {"max_age_ns", Ns(c.max_age)},
          {"max_bytes", c.max_bytes},
          {"segment_bytes", c.segment_bytes}};
}

absl::StatusOr<StreamConfig> StreamFromJson(const std::string& path, const std::string& text) {
  try {
    json j = json::parse(text);
    if (j.at("format").get<int>() != kFormat) {
      return absl::FailedPreconditionError(
          absl::StrCat(path, ": unsupported format ", j.at("format").dump()));
    }
    StreamConfig c;
    c.name = j.at("name").get<std::string>();
    c.subjects = j.at("subjects").get<std::vector<std::string>>();
    CITYOS_ASSIGN_OR_RETURN(c.durability, ParseDurability(j.at("durability").get<std::string>()));
    c.sync_interval = absl::Nanoseconds(j.at("sync_interval_ns").get<int64_t>());
    c.max_age = absl::Nanoseconds(j.at("max_age_ns").get<int64_t>());
    c.max_bytes = j.at("max_bytes").get<uint64_t>();
    c.segment_bytes = j.at("segment_bytes").get<uint64_t>();
    return c;
  } catch (const json::exception& e) {
    return absl::DataLossError(absl::StrCat(path, ": not a valid stream config: ", e.what()));
  }
}

json ConsumerToJson(const ConsumerConfig& c, uint64_t ack_floor) {
  return {{"format", kFormat},
          {"stream", c.stream},
          {"name", c.name},
          {"start", StartToJson(c.start)},
          {"filter_subject", c.filter_subject},
          {"ack_wait_ns", Ns(c.ack_wait)},
          {"max_in_flight", c.max_in_flight},
          {"max_deliveries", c.max_deliveries},
          {"ack_floor", ack_floor}};
}

absl::Status ConsumerFromJson(const std::string& path, const std::string& text,
                              ConsumerConfig* c, uint64_t* ack_floor) {
  try {
    json j = json::parse(text);
    c->stream = j.at("stream").get<std::string>();
    c->name = j.at("name").get<std::string>();
    c->start = StartFromJson(j.at("start"));
    c->filter_subject = j.at("filter_subject").get<std::string>();
    c->ack_wait = absl::Nanoseconds(j.at("ack_wait_ns").get<int64_t>());
    c->max_in_flight = j.at("max_in_flight").get<uint32_t>();
    c->max_deliveries = j.at("max_deliveries").get<uint32_t>();
    *ack_floor = j.at("ack_floor").get<uint64_t>();
    return absl::OkStatus();
  } catch (const json::exception& e) {
    return absl::DataLossError(absl::StrCat(path, ": not a valid consumer: ", e.what()));
  }
}

log_internal::Durability ToLogDurability(Durability d) {
  switch (d) {
    case Durability::kFsync:
      return log_internal::Durability::kFsync;
    case Durability::kInterval:
      return log_internal::Durability::kInterval;
    case Durability::kNone:
      return log_internal::Durability::kNone;
  }
  return log_internal::Durability::kFsync;
}

// ---- state

struct InFlight {
  uint64_t member = 0;
  absl::Time deadline;
  uint32_t count = 0;
  bool due = false;  // nak'd or its member left: redeliver at once
  StoredRecord record;
};

// The next record up to `visible` of `reader`, decoded into *out; false when
// there is none yet. DATA_LOSS for a record whose payload header does not
// decode.
absl::StatusOr<bool> ReadVisible(VisibleReader& reader, uint64_t visible,
                                 const std::string& stream, StoredRecord* out) {
  CITYOS_ASSIGN_OR_RETURN(const LogRecord* record, reader.Next(visible));
  if (record == nullptr) return false;
  out->sequence = record->sequence;
  out->publish_time = record->publish_time;
  if (!DecodeRecord(record->payload, &out->subject, &out->payload)) {
    return absl::DataLossError(absl::StrCat("stream ", stream, ": record ", record->sequence,
                                            " has a bad payload header"));
  }
  return true;
}

struct Consumer {
  ConsumerConfig config;
  VisibleReader reader;
  // The sequence of the next new record this consumer hands out.
  uint64_t next_seq() const { return reader.next_sequence(); }
  std::map<uint64_t, InFlight> in_flight;
  std::set<uint64_t> members;
  uint64_t redelivered = 0;
  uint64_t saved_floor = 0;
  bool deleted = false;

  uint64_t AckFloor() const {
    return in_flight.empty() ? next_seq() : std::min(in_flight.begin()->first, next_seq());
  }
};

struct Stream {
  StreamConfig config;
  std::string dir;
  std::unique_ptr<SegmentedLog> log;
  std::mutex mu;
  std::condition_variable cv;  // appends, acks/naks, members leaving, deletion
  bool deleted = false;        // guarded by mu
  bool closed = false;         // guarded by mu
  std::map<std::string, std::shared_ptr<Consumer>, std::less<>> consumers;  // mu

  ~Stream() { CloseLog().IgnoreError(); }

  // Closes the log: pending appends are written (fsync: and synced) and
  // acknowledged. Idempotent.
  absl::Status CloseLog() { return log ? log->Close() : absl::OkStatus(); }

  // Newest record readers may see: acknowledged (durable for fsync streams;
  // the log shows nothing before that).
  uint64_t VisibleLast() const { return log->LastSequence(); }

  // The log's extent as acknowledged.
  log_internal::LogState State() const { return log->State(); }
};

class LogStreamReader final : public StreamReader {
 public:
  LogStreamReader(std::shared_ptr<Stream> stream, std::unique_ptr<LogReader> reader)
      : stream_(std::move(stream)), reader_(std::move(reader)) {}

  absl::StatusOr<bool> Next(StoredRecord* out) override {
    {
      std::lock_guard<std::mutex> lock(stream_->mu);
      if (stream_->deleted) {
        return absl::NotFoundError(absl::StrCat("stream ", stream_->config.name, " was deleted"));
      }
    }
    return ReadVisible(reader_, stream_->VisibleLast(), stream_->config.name, out);
  }
  uint64_t next_sequence() const override { return reader_.next_sequence(); }

 private:
  std::shared_ptr<Stream> stream_;
  VisibleReader reader_;
};

class LogBackend final : public BusBackend {
 public:
  explicit LogBackend(LogBackendOptions options)
      : options_(std::move(options)), clock_(options_.clock ? options_.clock : Clock::Real()) {}
  ~LogBackend() override { Close().IgnoreError(); }

  absl::Status Load() {
    std::error_code ec;
    fs::create_directories(options_.dir, ec);
    if (ec) {
      return absl::FailedPreconditionError(
          absl::StrCat("bus dir ", options_.dir, ": cannot be created: ", ec.message()));
    }
    for (const auto& entry : fs::directory_iterator(options_.dir, ec)) {
      std::string json_path = (entry.path() / "stream.json").string();
      if (!entry.is_directory() || !fs::exists(json_path)) continue;
      CITYOS_ASSIGN_OR_RETURN(std::string text, ReadFileToString(json_path));
      CITYOS_ASSIGN_OR_RETURN(StreamConfig config, StreamFromJson(json_path, text));
      CITYOS_ASSIGN_OR_RETURN(std::shared_ptr<Stream> s, OpenStream(config));
      CITYOS_RETURN_IF_ERROR(LoadConsumers(*s));
      absl::MutexLock lock(&mu_);
      streams_[config.name] = std::move(s);
    }
    if (ec) {
      return absl::InternalError(absl::StrCat("bus dir ", options_.dir, ": ", ec.message()));
    }
    return absl::OkStatus();
  }

  // ---- streams

  absl::StatusOr<StreamInfo> CreateStream(const StreamConfig& config) override {
    CITYOS_RETURN_IF_ERROR(bus_internal::ValidateStreamConfig(config));
    {
      absl::MutexLock lock(&mu_);
      if (closed_) return absl::UnavailableError("bus backend is closed");
      auto it = streams_.find(config.name);
      if (it != streams_.end()) {
        if (it->second->config == config) return InfoOf(*it->second);
        return absl::AlreadyExistsError(absl::StrCat(
            "stream ", config.name, " exists with a different configuration"));
      }
    }
    std::string dir = StreamDir(config.name);
    std::error_code ec;
    fs::create_directories(fs::path(dir) / "consumers", ec);
    if (ec) {
      return absl::InternalError(absl::StrCat("stream dir ", dir, ": ", ec.message()));
    }
    CITYOS_ASSIGN_OR_RETURN(std::shared_ptr<Stream> s, OpenStream(config));
    // The config file is written last: a crash before it leaves a directory
    // that Load() ignores.
    if (absl::Status w = WriteFileAtomically(dir + "/stream.json", StreamToJson(config).dump(2));
        !w.ok()) {
      s->CloseLog().IgnoreError();
      fs::remove_all(dir, ec);
      return w;
    }
    absl::MutexLock lock(&mu_);
    streams_[config.name] = s;
    return InfoOf(*s);
  }

  absl::Status DeleteStream(std::string_view name) override {
    std::shared_ptr<Stream> s;
    {
      absl::MutexLock lock(&mu_);
      auto it = streams_.find(std::string(name));
      if (it == streams_.end()) return NoStream(name);
      s = it->second;
      streams_.erase(it);
    }
    {
      std::lock_guard<std::mutex> lock(s->mu);
      s->deleted = true;
      for (auto& [n, c] : s->consumers) c->deleted = true;
    }
    s->cv.notify_all();
    s->log->SetAppendListener(nullptr);
    absl::Status closed = s->CloseLog();
    // Remove stream.json first so a crash mid-delete leaves nothing loadable.
    std::error_code ec;
    fs::remove(fs::path(s->dir) / "stream.json", ec);
    fs::remove_all(s->dir, ec);
    if (ec) {
      return absl::InternalError(absl::StrCat("stream ", s->config.name, ": deleting ", s->dir,
                                              ": ", ec.message()));
    }
    return closed;
  }

  absl::StatusOr<StreamInfo> GetStream(std::string_view name) override {
    CITYOS_ASSIGN_OR_RETURN(std::shared_ptr<Stream> s, Find(name));
    return InfoOf(*s);
  }

  std::vector<StreamInfo> ListStreams() override {
    std::vector<std::shared_ptr<Stream>> all;
    {
      absl::MutexLock lock(&mu_);
      for (auto& [n, s] : streams_) all.push_back(s);
    }
    std::vector<StreamInfo> out;
    for (auto& s : all) out.push_back(InfoOf(*s));
    return out;
  }

  void Append(std::string_view stream, absl::Span<const AppendRecord> records,
              AppendCallback done) override {
    auto s = Find(stream);
    if (!s.ok()) {
      done(s.status(), absl::InfinitePast());
      return;
    }
    // One buffer for the whole batch; each event serialized once, in place.
    std::vector<size_t> sizes(records.size());
    size_t total = 0;
    for (size_t i = 0; i < records.size(); ++i) {
      sizes[i] = records[i].event->ByteSizeLong();
      total += 5 + records[i].subject.size() + sizes[i];
    }
    std::string buf;
    buf.reserve(total);
    std::vector<size_t> ends(records.size());
    for (size_t i = 0; i < records.size(); ++i) {
      PutVarint32(&buf, static_cast<uint32_t>(records[i].subject.size()));
      buf.append(records[i].subject);
      size_t at = buf.size();
      buf.resize(at + sizes[i]);
      records[i].event->SerializeWithCachedSizesToArray(
          reinterpret_cast<uint8_t*>(buf.data() + at));
      ends[i] = buf.size();
    }
    std::vector<std::string_view> views(records.size());
    for (size_t i = 0, start = 0; i < records.size(); start = ends[i], ++i) {
      views[i] = std::string_view(buf).substr(start, ends[i] - start);
    }
    (*s)->log->AppendAsyncTimed(
        views, [done = std::move(done)](absl::StatusOr<uint64_t> first, absl::Time t) mutable {
          done(std::move(first), t);
        });
  }

  absl::StatusOr<std::unique_ptr<StreamReader>> Read(std::string_view stream,
                                                     uint64_t sequence) override {
    CITYOS_ASSIGN_OR_RETURN(std::shared_ptr<Stream> s, Find(stream));
    CITYOS_ASSIGN_OR_RETURN(std::unique_ptr<LogReader> r, s->log->NewReader(std::max<uint64_t>(sequence, 1)));
    return std::unique_ptr<StreamReader>(new LogStreamReader(s, std::move(r)));
  }

  absl::StatusOr<uint64_t> ResolveStart(std::string_view stream,
                                        const StartPosition& start) override {
    CITYOS_ASSIGN_OR_RETURN(std::shared_ptr<Stream> s, Find(stream));
    return Resolve(*s, start);
  }

  absl::StatusOr<uint64_t> WaitForSequence(std::string_view stream, uint64_t sequence,
                                           absl::Time deadline) override {
    CITYOS_ASSIGN_OR_RETURN(std::shared_ptr<Stream> s, Find(stream));
    std::unique_lock<std::mutex> lock(s->mu);
    while (true) {
      if (s->deleted) return NoStream(stream);
      if (s->closed) return absl::UnavailableError("the bus is shutting down");
      uint64_t last = s->VisibleLast();
      if (last >= sequence) return last;
      absl::Duration left = deadline - absl::Now();
      if (left <= absl::ZeroDuration()) return last;
      s->cv.wait_for(lock, absl::ToChronoNanoseconds(left));
    }
  }

  // ---- consumers

  absl::StatusOr<ConsumerInfo> CreateConsumer(const ConsumerConfig& config) override {
    CITYOS_RETURN_IF_ERROR(bus_internal::ValidateConsumerConfig(config));
    CITYOS_ASSIGN_OR_RETURN(std::shared_ptr<Stream> s, Find(config.stream));
    std::lock_guard<std::mutex> lock(s->mu);
    auto it = s->consumers.find(config.name);
    if (it != s->consumers.end()) {
      if (it->second->config == config) return InfoOfLocked(*s, *it->second);
      return absl::AlreadyExistsError(absl::StrCat("consumer ", config.name, " on stream ",
                                                   config.stream,
                                                   " exists with a different configuration"));
    }
    CITYOS_ASSIGN_OR_RETURN(uint64_t start, Resolve(*s, config.start));
    auto c = std::make_shared<Consumer>();
    c->config = config;
    CITYOS_RETURN_IF_ERROR(PositionLocked(*s, *c, start));
    CITYOS_RETURN_IF_ERROR(SaveConsumerLocked(*s, *c));
    s->consumers[config.name] = c;
    return InfoOfLocked(*s, *c);
  }

  absl::Status DeleteConsumer(std::string_view stream, std::string_view name) override {
    CITYOS_ASSIGN_OR_RETURN(std::shared_ptr<Stream> s, Find(stream));
    {
      std::lock_guard<std::mutex> lock(s->mu);
      auto it = s->consumers.find(name);
      if (it == s->consumers.end()) return NoConsumer(stream, name);
      it->second->deleted = true;
      s->consumers.erase(it);
      std::error_code ec;
      fs::remove(ConsumerPath(*s, name), ec);
    }
    s->cv.notify_all();
    return absl::OkStatus();
  }

  absl::StatusOr<ConsumerInfo> GetConsumer(std::string_view stream,
                                           std::string_view name) override {
    CITYOS_ASSIGN_OR_RETURN(std::shared_ptr<Stream> s, Find(stream));
    std::lock_guard<std::mutex> lock(s->mu);
    auto it = s->consumers.find(name);
    if (it == s->consumers.end()) return NoConsumer(stream, name);
    return InfoOfLocked(*s, *it->second);
  }

  absl::StatusOr<std::vector<ConsumerInfo>> ListConsumers(std::string_view stream) override {
    CITYOS_ASSIGN_OR_RETURN(std::shared_ptr<Stream> s, Find(stream));
    std::lock_guard<std::mutex> lock(s->mu);
    std::vector<ConsumerInfo> out;
    for (auto& [n, c] : s->consumers) out.push_back(InfoOfLocked(*s, *c));
    return out;
  }

  absl::StatusOr<uint64_t> JoinConsumer(std::string_view stream,
                                        std::string_view consumer) override {
    CITYOS_ASSIGN_OR_RETURN(std::shared_ptr<Stream> s, Find(stream));
    std::lock_guard<std::mutex> lock(s->mu);
    auto it = s->consumers.find(consumer);
    if (it == s->consumers.end()) return NoConsumer(stream, consumer);
    uint64_t id = next_member_.fetch_add(1);
    it->second->members.insert(id);
    return id;
  }

  void LeaveConsumer(std::string_view stream, std::string_view consumer,
                     uint64_t member) override {
    auto s = Find(stream);
    if (!s.ok()) return;
    {
      std::lock_guard<std::mutex> lock((*s)->mu);
      auto it = (*s)->consumers.find(consumer);
      if (it == (*s)->consumers.end()) return;
      Consumer& c = *it->second;
      c.members.erase(member);
      for (auto& [seq, f] : c.in_flight) {
        if (f.member == member) f.due = true;
      }
    }
    (*s)->cv.notify_all();
  }

  absl::Status Fetch(std::string_view stream, std::string_view consumer, uint64_t member,
                     size_t max, absl::Time deadline, std::vector<FetchedRecord>* out) override {
    CITYOS_ASSIGN_OR_RETURN(std::shared_ptr<Stream> s, Find(stream));
    std::unique_lock<std::mutex> lock(s->mu);
    auto it = s->consumers.find(consumer);
    if (it == s->consumers.end()) return NoConsumer(stream, consumer);
    std::shared_ptr<Consumer> c = it->second;
    size_t start = out->size();
    while (true) {
      if (c->deleted) return NoConsumer(stream, consumer);
      if (s->closed) return absl::UnavailableError("the bus is shutting down");
      if (!c->members.contains(member)) {
        return absl::FailedPreconditionError(
            absl::StrFormat("member %d is not in consumer %s", member, consumer));
      }
      absl::Time now = clock_->Now();
      absl::Time next_due = absl::InfiniteFuture();
      // 1. Redeliveries that are due.
      for (auto f = c->in_flight.begin(); f != c->in_flight.end() && out->size() - start < max;) {
        if (!f->second.due && f->second.deadline > now) {
          next_due = std::min(next_due, f->second.deadline);
          ++f;
          continue;
        }
        if (c->config.max_deliveries != 0 && f->second.count >= c->config.max_deliveries) {
          LogWarn("bus", "event not redelivered: max_deliveries reached",
                  {{"stream", std::string(stream)},
                   {"consumer", std::string(consumer)},
                   {"sequence", absl::StrCat(f->first)}});
          f = c->in_flight.erase(f);
          continue;
        }
        f->second.member = member;
        f->second.due = false;
        f->second.deadline = now + c->config.ack_wait;
        ++f->second.count;
        ++c->redelivered;
        out->push_back(FetchedRecord{f->second.record, f->second.count});
        ++f;
      }
      // 2. New records, within max_in_flight.
      while (out->size() - start < max && c->in_flight.size() < c->config.max_in_flight) {
        StoredRecord rec;
        CITYOS_ASSIGN_OR_RETURN(bool more, ReadVisible(c->reader, s->VisibleLast(), s->config.name, &rec));
        if (!more) break;
        if (!c->config.filter_subject.empty() &&
            !SubjectMatches(c->config.filter_subject, rec.subject)) {
          continue;
        }
        InFlight& f = c->in_flight[rec.sequence];
        f.member = member;
        f.deadline = now + c->config.ack_wait;
        f.count = 1;
        f.record = rec;
        out->push_back(FetchedRecord{std::move(rec), 1});
      }
      if (out->size() > start) return absl::OkStatus();
      absl::Time real_now = absl::Now();
      if (real_now >= deadline) return absl::OkStatus();
      absl::Duration wait = deadline - real_now;
      if (next_due != absl::InfiniteFuture()) wait = std::min(wait, next_due - now);
      s->cv.wait_for(lock, absl::ToChronoNanoseconds(std::max(wait, absl::Microseconds(100))));
    }
  }

  absl::StatusOr<uint64_t> Ack(std::string_view stream, std::string_view consumer,
                               absl::Span<const uint64_t> acks,
                               absl::Span<const uint64_t> naks) override {
    CITYOS_ASSIGN_OR_RETURN(std::shared_ptr<Stream> s, Find(stream));
    uint64_t floor;
    {
      std::lock_guard<std::mutex> lock(s->mu);
      auto it = s->consumers.find(consumer);
      if (it == s->consumers.end()) return NoConsumer(stream, consumer);
      Consumer& c = *it->second;
      for (uint64_t seq : acks) c.in_flight.erase(seq);
      for (uint64_t seq : naks) {
        auto f = c.in_flight.find(seq);
        if (f != c.in_flight.end()) f->second.due = true;
      }
      floor = c.AckFloor();
    }
    if (!naks.empty()) s->cv.notify_all();
    return floor;
  }

  absl::Status Housekeeping() override {
    std::vector<std::shared_ptr<Stream>> all;
    {
      absl::MutexLock lock(&mu_);
      for (auto& [n, s] : streams_) all.push_back(s);
    }
    absl::Status first;
    for (auto& s : all) {
      if (absl::Status r = s->log->ApplyRetention(); !r.ok() && first.ok()) first = r;
      std::lock_guard<std::mutex> lock(s->mu);
      if (s->deleted) continue;
      for (auto& [n, c] : s->consumers) {
        if (c->AckFloor() == c->saved_floor) continue;
        if (absl::Status w = SaveConsumerLocked(*s, *c); !w.ok() && first.ok()) first = w;
      }
    }
    return first;
  }

  absl::Status Close() override {
    std::map<std::string, std::shared_ptr<Stream>> all;
    {
      absl::MutexLock lock(&mu_);
      if (closed_) return absl::OkStatus();
      closed_ = true;
      all.swap(streams_);
    }
    absl::Status first;
    for (auto& [n, s] : all) {
      // Close the log first: pending appends complete and readers see them.
      if (absl::Status c = s->CloseLog(); !c.ok() && first.ok()) first = c;
      {
        std::lock_guard<std::mutex> lock(s->mu);
        s->closed = true;
        for (auto& [cn, c] : s->consumers) {
          if (absl::Status w = SaveConsumerLocked(*s, *c); !w.ok() && first.ok()) first = w;
        }
      }
      s->cv.notify_all();
    }
    return first;
  }

 private:
  std::string StreamDir(std::string_view name) const {
    return (fs::path(options_.dir) / std::string(name)).string();
  }
  static std::string ConsumerPath(const Stream& s, std::string_view name) {
    return (fs::path(s.dir) / "consumers" / (std::string(name) + ".json")).string();
  }
  static absl::Status NoStream(std::string_view name) {
    return absl::NotFoundError(absl::StrFormat("stream %s not found", name));
  }
  static absl::Status NoConsumer(std::string_view stream, std::string_view name) {
    return absl::NotFoundError(
        absl::StrFormat("consumer %s not found on stream %s", name, stream));
  }

  absl::StatusOr<std::shared_ptr<Stream>> Find(std::string_view name) {
    absl::MutexLock lock(&mu_);
    if (closed_) return absl::UnavailableError("the bus is shutting down");
    auto it = streams_.find(std::string(name));
    if (it == streams_.end()) return NoStream(name);
    return it->second;
  }

  absl::StatusOr<std::shared_ptr<Stream>> OpenStream(const StreamConfig& config) {
    auto s = std::make_shared<Stream>();
    s->config = config;
    s->dir = StreamDir(config.name);
    log_internal::LogOptions lo;
    lo.dir = s->dir + "/log";
    lo.durability = ToLogDurability(config.durability);
    lo.sync_interval = config.sync_interval;
    lo.segment_bytes = config.segment_bytes;
    lo.max_age = config.max_age;
    lo.max_bytes = config.max_bytes;
    lo.clock = clock_;
    auto log = SegmentedLog::Open(lo);
    if (!log.ok()) return Annotate(log.status(), absl::StrCat("stream ", config.name));
    s->log = *std::move(log);
    if (s->log->recovery_info().truncated) {
      LogWarn("bus", "recovered a torn log tail",
              {{"stream", config.name}, {"detail", s->log->recovery_info().ToString()}});
    }
    // Wake waiters (replay subscribers, consumers) after each durable group.
    std::weak_ptr<Stream> weak = s;
    auto wake = [weak](uint64_t) {
      if (auto st = weak.lock()) {
        { std::lock_guard<std::mutex> lock(st->mu); }
        st->cv.notify_all();
      }
    };
    s->log->SetAppendListener(std::move(wake));
    return s;
  }

  absl::Status LoadConsumers(Stream& s) {
    std::error_code ec;
    fs::path dir = fs::path(s.dir) / "consumers";
    fs::create_directories(dir, ec);
    std::lock_guard<std::mutex> lock(s.mu);
    for (const auto& entry : fs::directory_iterator(dir, ec)) {
      if (entry.path().extension() != ".json") continue;
      std::string path = entry.path().string();
      CITYOS_ASSIGN_OR_RETURN(std::string text, ReadFileToString(path));
      auto c = std::make_shared<Consumer>();
      uint64_t floor = 0;
      CITYOS_RETURN_IF_ERROR(ConsumerFromJson(path, text, &c->config, &floor));
      // At-least-once: everything from the saved ack floor is delivered again.
      CITYOS_RETURN_IF_ERROR(PositionLocked(s, *c, floor));
      c->saved_floor = floor;
      s.consumers[c->config.name] = c;
    }
    return absl::OkStatus();
  }

  absl::Status PositionLocked(Stream& s, Consumer& c, uint64_t seq) {
    CITYOS_ASSIGN_OR_RETURN(std::unique_ptr<LogReader> reader,
                            s.log->NewReader(std::max<uint64_t>(seq, 1)));
    c.reader = VisibleReader(std::move(reader));
    return absl::OkStatus();
  }

  absl::Status SaveConsumerLocked(Stream& s, Consumer& c) {
    uint64_t floor = c.AckFloor();
    CITYOS_RETURN_IF_ERROR(WriteFileAtomically(ConsumerPath(s, c.config.name),
                                               ConsumerToJson(c.config, floor).dump(2)));
    c.saved_floor = floor;
    return absl::OkStatus();
  }

  absl::StatusOr<uint64_t> Resolve(Stream& s, const StartPosition& start) {
    log_internal::LogState st = s.State();
    switch (start.kind) {
      case StartPosition::Kind::kEarliest:
        return st.first_sequence;
      case StartPosition::Kind::kNew:
        return st.last_sequence + 1;
      case StartPosition::Kind::kLast:
        return st.last_sequence >= st.first_sequence ? st.last_sequence : st.first_sequence;
      case StartPosition::Kind::kSequence:
        if (start.sequence == 0) {
          return absl::InvalidArgumentError("start sequence must be at least 1");
        }
        return std::max(start.sequence, st.first_sequence);
      case StartPosition::Kind::kTime:
        return s.log->SequenceAtOrAfter(start.time);
    }
    return st.first_sequence;
  }

  StreamInfo InfoOf(Stream& s) {
    std::lock_guard<std::mutex> lock(s.mu);
    StreamInfo info = BaseInfo(s);
    info.consumers = static_cast<uint32_t>(s.consumers.size());
    return info;
  }

  static StreamInfo BaseInfo(Stream& s) {
    log_internal::LogState st = s.State();
    StreamInfo info;
    info.config = s.config;
    info.first_sequence = st.events > 0 ? st.first_sequence : 0;
    info.last_sequence = st.last_sequence;
    info.events = st.events;
    info.bytes = st.bytes;
    info.segments = st.segments;
    info.first_time = st.first_time;
    info.last_time = st.last_time;
    return info;
  }

  ConsumerInfo InfoOfLocked(Stream& s, Consumer& c) {
    ConsumerInfo info;
    info.config = c.config;
    info.ack_floor = c.AckFloor();
    info.next_sequence = c.next_seq();
    info.in_flight = static_cast<uint32_t>(c.in_flight.size());
    uint64_t last = s.VisibleLast();
    const uint64_t next = c.next_seq();
    info.pending = last >= next ? last - next + 1 : 0;
    info.members = static_cast<uint32_t>(c.members.size());
    info.redelivered = c.redelivered;
    return info;
  }

  LogBackendOptions options_;
  Clock* clock_;
  std::atomic<uint64_t> next_member_{1};
  absl::Mutex mu_;
  std::map<std::string, std::shared_ptr<Stream>> streams_ ABSL_GUARDED_BY(mu_);
  bool closed_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace

absl::StatusOr<std::string> RepairStreamLog(const std::string& dir) {
  std::error_code ec;
  std::string log_dir = dir;
  if (fs::exists(fs::path(dir) / "stream.json", ec)) log_dir = (fs::path(dir) / "log").string();
  if (!fs::is_directory(log_dir, ec)) {
    return absl::NotFoundError(absl::StrCat("repair: ", log_dir, " is not a directory"));
  }
  CITYOS_ASSIGN_OR_RETURN(log_internal::RepairReport report, SegmentedLog::Repair(log_dir));
  return report.ToString();
}

absl::StatusOr<std::shared_ptr<BusBackend>> OpenLogBackend(const LogBackendOptions& options) {
  if (options.dir.empty()) return absl::InvalidArgumentError("log backend: dir is required");
  auto b = std::make_shared<LogBackend>(options);
  CITYOS_RETURN_IF_ERROR(b->Load());
  return std::shared_ptr<BusBackend>(std::move(b));
}

}  // namespace cityos
