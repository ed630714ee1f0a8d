#include "bus_config.h"

#include <algorithm>
#include <set>
#include <utility>

#include "absl/strings/str_format.h"
#include "cityos/status.h"
#include "cityos/subject.h"

namespace cityos {
namespace {

constexpr uint64_t kMaxEventBytesLimit = 64ull << 20;
constexpr int64_t kMaxLiveQueueDepth = int64_t{1} << 24;
const int64_t kMaxReaderSpinUs = absl::ToInt64Microseconds(BusOptions::kMaxReaderSpin);

bool ValidStreamName(const std::string& name) {
  if (name.empty() || name.size() > 64) return false;
  return std::all_of(name.begin(), name.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           c == '_' || c == '-';
  });
}

absl::StatusOr<Durability> DurabilityFromConfig(const ConfigNode& stream) {
  CITYOS_ASSIGN_OR_RETURN(std::string s, stream.GetString("durability", "fsync"));
  if (s == "fsync") return Durability::kFsync;
  if (s == "interval") return Durability::kInterval;
  if (s == "none") return Durability::kNone;
  return stream.Error("durability",
                      absl::StrFormat("expected fsync, interval or none, got \"%s\"", s));
}

absl::StatusOr<StreamConfig> StreamFromConfig(const ConfigNode& node) {
  if (!node.IsMap()) return node.Error("", "expected a map with keys name, subjects, ...");
  CITYOS_RETURN_IF_ERROR(node.CheckKeys({"name", "subjects", "durability", "sync_interval",
                                         "max_age", "max_bytes", "segment_bytes"}));
  StreamConfig c;
  CITYOS_ASSIGN_OR_RETURN(c.name, node.GetString("name"));
  if (!ValidStreamName(c.name)) {
    return node.Error("name", absl::StrFormat("stream name \"%s\" must be 1-64 characters of "
                                              "[A-Za-z0-9_-]",
                                              c.name));
  }
  CITYOS_ASSIGN_OR_RETURN(c.subjects, node.GetStringList("subjects"));
  if (c.subjects.empty()) return node.Error("subjects", "at least one subject pattern is required");
  for (const std::string& pattern : c.subjects) {
    if (absl::Status s = ValidatePattern(pattern); !s.ok()) {
      return node.Error("subjects", std::string(s.message()));
    }
  }
  CITYOS_ASSIGN_OR_RETURN(c.durability, DurabilityFromConfig(node));
  CITYOS_ASSIGN_OR_RETURN(c.sync_interval,
                          node.GetDuration("sync_interval", absl::Milliseconds(100)));
  if (c.sync_interval <= absl::ZeroDuration()) {
    return node.Error("sync_interval", "must be positive");
  }
  CITYOS_ASSIGN_OR_RETURN(c.max_age, node.GetDuration("max_age", absl::ZeroDuration()));
  if (c.max_age < absl::ZeroDuration()) return node.Error("max_age", "must not be negative");
  CITYOS_ASSIGN_OR_RETURN(c.max_bytes, node.GetBytes("max_bytes", 0));
  CITYOS_ASSIGN_OR_RETURN(c.segment_bytes, node.GetBytes("segment_bytes", 64ull << 20));
  if (c.segment_bytes == 0) return node.Error("segment_bytes", "must be positive");
  return c;
}

}  // namespace

absl::StatusOr<BusNodeConfig> ParseBusConfig(const ConfigNode& section) {
  CITYOS_RETURN_IF_ERROR(
      section.CheckKeys({"max_event_bytes", "live_queue_depth", "reader_spin_us", "streams"}));
  BusNodeConfig config;
  CITYOS_ASSIGN_OR_RETURN(config.max_event_bytes,
                          section.GetBytes("max_event_bytes", config.max_event_bytes));
  if (config.max_event_bytes == 0 || config.max_event_bytes > kMaxEventBytesLimit) {
    return section.Error("max_event_bytes", "must be between 1 and 64MiB");
  }
  CITYOS_ASSIGN_OR_RETURN(
      int64_t depth,
      section.GetInt("live_queue_depth", static_cast<int64_t>(config.live_queue_depth)));
  if (depth < 1 || depth > kMaxLiveQueueDepth) {
    return section.Error("live_queue_depth",
                         absl::StrFormat("must be between 1 and %d", kMaxLiveQueueDepth));
  }
  config.live_queue_depth = static_cast<size_t>(depth);
  CITYOS_ASSIGN_OR_RETURN(config.reader_spin_us,
                          section.GetInt("reader_spin_us", config.reader_spin_us));
  if (config.reader_spin_us < 0 || config.reader_spin_us > kMaxReaderSpinUs) {
    return section.Error("reader_spin_us",
                         absl::StrFormat("must be between 0 and %d (microseconds; 0 never "
                                         "spins), got %d",
                                         kMaxReaderSpinUs, config.reader_spin_us));
  }

  CITYOS_ASSIGN_OR_RETURN(std::vector<ConfigNode> streams, section.ElementsOrEmpty("streams"));
  std::set<std::string> names;
  for (const ConfigNode& node : streams) {
    CITYOS_ASSIGN_OR_RETURN(StreamConfig stream, StreamFromConfig(node));
    if (!names.insert(stream.name).second) {
      return node.Error("name", absl::StrFormat("stream \"%s\" is listed twice", stream.name));
    }
    for (const StreamConfig& other : config.streams) {
      for (const std::string& mine : stream.subjects) {
        for (const std::string& theirs : other.subjects) {
          if (PatternsOverlap(mine, theirs)) {
            return node.Error(
                "subjects", absl::StrFormat("pattern \"%s\" overlaps \"%s\" of stream \"%s\"",
                                            mine, theirs, other.name));
          }
        }
      }
    }
    config.streams.push_back(std::move(stream));
  }
  return config;
}

BusOptions MakeBusOptions(const BusNodeConfig& config, std::string data_dir, Clock* clock) {
  BusOptions options;
  options.data_dir = std::move(data_dir);
  options.limits.max_event_bytes = static_cast<size_t>(config.max_event_bytes);
  options.clock = clock;
  options.live_queue_depth = config.live_queue_depth;
  options.reader_spin = absl::Microseconds(config.reader_spin_us);
  return options;
}

}  // namespace cityos
