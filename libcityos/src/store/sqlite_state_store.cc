// The embedded SQLite entity store (cityos/state_store.h; docs/state-store.md).
//
// Two tables: `entities` holds the newest state of every entity, `history`
// every stored state (the newest included) keyed by version. Each row keeps
// the serialized exchange::v1::Entity plus the columns the SQL narrows on;
// whatever SQL cannot express (attribute conditions, exact circle, polygon
// and region membership) is decided by MatchesFilter in C++ over the rows
// SQL let through, so SQL only ever has to be a superset.
//
// Concurrency: one writer connection behind a mutex (SQLite has one writer
// at a time anyway; a batch is one IMMEDIATE transaction), and a pool of
// reader connections; in WAL mode readers see the last committed state and
// never block or are blocked by the writer.
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <condition_variable>
#include <cstring>
#include <functional>
#include <limits>
#include <mutex>
#include <optional>
#include <thread>
#include <utility>
#include <variant>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "cityos/clock.h"
#include "cityos/entity.h"
#include "cityos/logging.h"
#include "cityos/metrics.h"
#include "cityos/proto_time.h"
#include "cityos/state_store.h"
#include "cityos/status.h"
#include "core/strings.h"
#include "google/protobuf/io/coded_stream.h"
#include "google/protobuf/io/zero_copy_stream_impl_lite.h"
#include "store/latest_index.h"
#include "store/page_token.h"
#include "store/sqlite.h"

namespace cityos {
namespace {

using exchange::v1::Entity;
using exchange::v1::EntityFilter;
using store_internal::DecodePageToken;
using store_internal::EncodePageToken;
using store_internal::LatestIndex;
using store_internal::Fingerprint;
using store_internal::SqliteConnection;
using store_internal::Statement;
using store_internal::Transaction;

// The schema this binary writes. A database with a newer version was written
// by a newer cityos and is refused rather than misread.
constexpr int64_t kSchemaVersion = 1;

constexpr int kDefaultPageSize = 100;
constexpr int kMaxPageSize = 1000;
// Reader connections kept open when idle; more are opened under load and
// closed when returned beyond this.
constexpr size_t kMaxIdleReaders = 8;
// Page caches: the writer's holds the hot upper levels and leaves of the
// tables and indexes it updates at random; readers mostly read through the
// shared mapping.
constexpr int kWriterCacheKib = 64 * 1024;
constexpr int kReaderCacheKib = 8 * 1024;
// WAL size (pages) that triggers a checkpoint: larger than SQLite's 1000, so
// that a page updated many times between checkpoints is copied once.
constexpr int kCheckpointPages = 8192;  // 32 MiB at 4 KiB pages

constexpr char kSchema[] = R"sql(
CREATE TABLE schema_version(version INTEGER NOT NULL);
CREATE TABLE entities(
  type TEXT NOT NULL,
  id TEXT NOT NULL,
  version INTEGER NOT NULL,
  observed_ns INTEGER NOT NULL,
  update_ns INTEGER NOT NULL,
  lat REAL,
  lon REAL,
  owner TEXT NOT NULL,
  data_subject TEXT NOT NULL,
  blob BLOB NOT NULL,
  PRIMARY KEY(type, id)
) WITHOUT ROWID;
CREATE INDEX entities_by_owner ON entities(type, owner, id);
CREATE INDEX entities_by_subject ON entities(type, data_subject, id);
CREATE INDEX entities_by_lat ON entities(type, lat);
-- Rows are appended in write order (seq), so a batch fills a few pages at
-- the end of the table instead of dirtying one page per entity; the index
-- (small entries) gives the per-entity order.
CREATE TABLE history(
  seq INTEGER PRIMARY KEY,
  type TEXT NOT NULL,
  id TEXT NOT NULL,
  version INTEGER NOT NULL,
  observed_ns INTEGER NOT NULL,
  blob BLOB NOT NULL);
CREATE UNIQUE INDEX history_by_version ON history(type, id, version);
)sql";

constexpr char kSelectCurrent[] =
    "SELECT version, lat, lon, owner, data_subject FROM entities WHERE type=?1 AND id=?2";
constexpr char kInsertEntity[] =
    "INSERT INTO entities(type, id, version, observed_ns, update_ns, lat, lon, owner, "
    "data_subject, blob) VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)";
// Updates set only the indexed columns that changed: SQLite rewrites an
// index entry for every indexed column named in SET, changed or not, and
// most updates (a sensor's new reading) change neither owner nor subject.
const std::string& UpdateEntitySql(bool location_changed, bool keys_changed) {
  static const std::string* const kSql = [] {
    auto* sql = new std::string[4];
    for (int i = 0; i < 4; ++i) {
      sql[i] = absl::StrCat("UPDATE entities SET version=?3, observed_ns=?4, update_ns=?5, blob=?10",
                            (i & 1) ? ", lat=?6, lon=?7" : "",
                            (i & 2) ? ", owner=?8, data_subject=?9" : "",
                            " WHERE type=?1 AND id=?2");
    }
    return sql;
  }();
  return kSql[(location_changed ? 1 : 0) | (keys_changed ? 2 : 0)];
}
constexpr char kInsertHistory[] =
    "INSERT INTO history(type, id, version, observed_ns, blob) VALUES(?1, ?2, ?3, ?4, ?5)";
constexpr char kTrimHistory[] = "DELETE FROM history WHERE type=?1 AND id=?2 AND version<=?3";
constexpr char kGetEntity[] = "SELECT id, blob FROM entities WHERE type=?1 AND id=?2";
// A listing narrowed by type only, in id order from `?2` on (exclusive).
constexpr char kListByType[] = "SELECT id, blob FROM entities WHERE type=?1 AND id>?2 ORDER BY id";
// Every entity of a type, for the memory index.
constexpr char kLoadType[] = "SELECT id, blob FROM entities WHERE type=?1 ORDER BY id";
// Its size, as the memory index counts it (length() of a blob reads no
// content).
constexpr char kSizeType[] =
    "SELECT COUNT(*), TOTAL(length(CAST(id AS BLOB))) + TOTAL(length(blob)) FROM entities "
    "WHERE type=?1";
constexpr char kCountEntities[] = "SELECT COUNT(*) FROM entities";

// Nanoseconds since the epoch, saturating (timestamps beyond 1677..2262 only
// occur in nonsense input; they still order correctly against real ones).
int64_t TimestampNanos(const google::protobuf::Timestamp& t) {
  constexpr int64_t kMaxSeconds = std::numeric_limits<int64_t>::max() / 1000000000 - 1;
  int64_t seconds = std::clamp<int64_t>(t.seconds(), -kMaxSeconds, kMaxSeconds);
  return seconds * 1000000000 + t.nanos();
}

absl::StatusOr<int> EffectivePageSize(int requested) {
  if (requested < 0) {
    return absl::InvalidArgumentError(
        absl::StrFormat("page_size must not be negative, got %d", requested));
  }
  if (requested == 0) return kDefaultPageSize;
  return std::min(requested, kMaxPageSize);
}

std::string DeterministicBytes(const google::protobuf::MessageLite& message) {
  std::string out;
  {
    google::protobuf::io::StringOutputStream stream(&out);
    google::protobuf::io::CodedOutputStream coded(&stream);
    coded.SetSerializationDeterministic(true);
    message.SerializeToCodedStream(&coded);
  }
  return out;
}

std::string Int64Bytes(int64_t v) {
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>(static_cast<uint64_t>(v) >> (8 * i));
  return out;
}

// A latitude/longitude rectangle that contains an area (a superset is fine:
// MatchesFilter decides exactly).
struct LatLonBox {
  double south, north;
  bool all_longitudes = false;
  double west = -180, east = 180;  // west > east: crosses the antimeridian
};

std::optional<LatLonBox> BoundingBoxOf(const common::v1::GeoArea& area) {
  constexpr double kDegPerRad = 180.0 / M_PI;
  switch (area.shape_case()) {
    case common::v1::GeoArea::kBoundingBox: {
      const auto& b = area.bounding_box();
      return LatLonBox{.south = b.south_west().latitude(),
                       .north = b.north_east().latitude(),
                       .west = b.south_west().longitude(),
                       .east = b.north_east().longitude()};
    }
    case common::v1::GeoArea::kCircle: {
      const auto& c = area.circle();
      // The angular radius on the smallest earth radius anyone uses (polar),
      // plus 1%: never narrower than the haversine circle MatchesFilter uses.
      constexpr double kPolarRadiusM = 6356752.0;
      double delta = c.radius_m() / kPolarRadiusM * 1.01;
      double lat = c.center().latitude() / kDegPerRad;
      LatLonBox box{.south = std::max(-90.0, (lat - delta) * kDegPerRad),
                    .north = std::min(90.0, (lat + delta) * kDegPerRad)};
      // A circle over a pole spans every longitude; otherwise its widest
      // point is asin(sin(delta) / cos(lat)) east and west of the centre.
      double s = std::sin(delta) / std::cos(lat);
      if (delta >= M_PI / 2 - std::abs(lat) || s >= 1) {
        box.all_longitudes = true;
        return box;
      }
      double dlon = std::asin(s) * kDegPerRad;
      double west = c.center().longitude() - dlon;
      double east = c.center().longitude() + dlon;
      if (west < -180) west += 360;
      if (east > 180) east -= 360;
      box.west = west;
      box.east = east;
      return box;
    }
    case common::v1::GeoArea::kPolygon: {
      // Ray casting works on the vertices' coordinates as given, so every
      // inside point lies within their extent.
      const auto& v = area.polygon().vertices();
      if (v.empty()) return std::nullopt;
      LatLonBox box{.south = 90, .north = -90, .west = 180, .east = -180};
      for (const auto& p : v) {
        box.south = std::min(box.south, p.latitude());
        box.north = std::max(box.north, p.latitude());
        box.west = std::min(box.west, p.longitude());
        box.east = std::max(box.east, p.longitude());
      }
      return box;
    }
    default:
      // A region is matched against the entity's `region`, not its location.
      return std::nullopt;
  }
}

// The SQL conditions (beyond type and cursor) that narrow a query, with their
// parameters numbered from ?4.
struct Narrowing {
  std::string where;
  std::vector<std::variant<std::string, int64_t, double>> params;

  void Add(std::string_view column_condition) { absl::StrAppend(&where, " AND ", AV(column_condition)); }
  std::string Next() { return absl::StrCat("?", params.size() + 4); }
};

Narrowing NarrowingOf(const EntityFilter& filter) {
  Narrowing n;
  if (!filter.owner().empty()) {
    n.Add(absl::StrCat("owner=", n.Next()));
    n.params.emplace_back(filter.owner());
  }
  if (!filter.data_subject().empty()) {
    n.Add(absl::StrCat("data_subject=", n.Next()));
    n.params.emplace_back(filter.data_subject());
  }
  if (filter.has_area()) {
    if (std::optional<LatLonBox> box = BoundingBoxOf(filter.area())) {
      std::string a = n.Next();
      n.params.emplace_back(box->south);
      std::string b = n.Next();
      n.params.emplace_back(box->north);
      n.Add(absl::StrCat("lat BETWEEN ", a, " AND ", b));
      if (!box->all_longitudes) {
        std::string w = n.Next();
        n.params.emplace_back(box->west);
        std::string e = n.Next();
        n.params.emplace_back(box->east);
        n.Add(box->west <= box->east ? absl::StrCat("lon BETWEEN ", w, " AND ", e)
                                     : absl::StrCat("(lon>=", w, " OR lon<=", e, ")"));
      }
    }
  }
  if (filter.has_observed()) {
    if (filter.observed().has_start()) {
      n.Add(absl::StrCat("observed_ns>=", n.Next()));
      n.params.emplace_back(TimestampNanos(filter.observed().start()));
    }
    if (filter.observed().has_end()) {
      n.Add(absl::StrCat("observed_ns<", n.Next()));
      n.params.emplace_back(TimestampNanos(filter.observed().end()));
    }
  }
  return n;
}

Counter ReadsCounter(std::string_view kind, std::string_view path) {
  return MetricsRegistry::Global()
      .AddCounterFamily("cityos_store_reads_total",
                        "Entity store reads by kind (listing: a page of Query or "
                        "QuerySerialized; get) and by what served them (memory: the memory "
                        "index; sqlite).",
                        {"kind", "path"})
      .WithLabels({kind, path});
}

// The fingerprint of a query's tokens: its filter and the caller's context.
// A client paging through a listing asks the same query page after page, so
// each thread keeps the last one it computed (the hash is most of the cost).
std::string QueryFingerprint(const EntityFilter& filter, std::string_view token_context) {
  struct Last {
    std::string filter, context, fingerprint;
  };
  static thread_local Last last;
  std::string bytes = DeterministicBytes(filter);
  if (last.fingerprint.empty() || bytes != last.filter || token_context != last.context) {
    last.fingerprint = Fingerprint({"query", bytes, token_context});
    last.filter = std::move(bytes);
    last.context.assign(token_context.data(), token_context.size());
  }
  return last.fingerprint;
}

// Whether `filter` states nothing but its type (which the SQL always narrows
// on), so that MatchesFilter cannot reject a row the SQL returned.
bool OnlyType(const EntityFilter& filter) {
  static_assert(EntityFilter::kTypeFieldNumber == 1);
  // The filter's size is that of its type field (tag 1, length, bytes) and
  // nothing else; no copy of the filter is made per query.
  const size_t type_size = filter.type().size();
  const size_t type_field =
      type_size == 0
          ? 0
          : 1 + google::protobuf::io::CodedOutputStream::VarintSize64(type_size) + type_size;
  return filter.ByteSizeLong() == type_field;
}

// A candidate row of a listing: its keyset key (id, or version in decimal)
// and the serialized state.
struct Row {
  std::string key;
  std::string blob;
};
// Appends up to `limit` rows whose key is after `after`, ascending (fewer
// only at the end). Rounds grow, doubling, up to `max_round` rows: large
// rounds pay off where each costs a statement; the streamed listing's only
// step on, so its rounds stay small (no row is copied out long before it is
// looked at).
struct FetchFn {
  std::function<absl::Status(const std::string& after, int limit, std::vector<Row>* rows)> rows;
  int max_round = 4096;
  absl::Status operator()(const std::string& after, int limit, std::vector<Row>* out) const {
    return rows(after, limit, out);
  }
};

// Fills one page by keyset: rows after `cursor` in key order, keeping those
// that `matches` (null = all) and `take` accepts (it decides visibility and
// adds the row to the page; `parsed` is the row's entity when `matches` had
// to parse it, else null), fetching more until `take` has accepted `size`
// rows, so a page is short only at the end. The next token is set only when
// another matching row exists after the page; it points at the last row
// examined (returned or rejected), so the next page neither repeats nor
// re-examines anything.
using TakeFn = std::function<absl::StatusOr<bool>(Row& row, Entity* parsed)>;

// The error of a stored row that does not parse: it ends the query (every
// page path says the same).
absl::Status UnparsableRow(std::string_view path, std::string_view key) {
  return absl::DataLossError(
      absl::StrFormat("entity store %s: stored state %s does not parse", path, key));
}

absl::StatusOr<std::string> FillPageRows(const FetchFn& fetch, std::string cursor, int size,
                                         const std::function<bool(const Entity&)>& matches,
                                         const TakeFn& take, std::string_view fingerprint,
                                         std::string_view path) {
  int taken = 0;
  bool full = false;
  std::vector<Row> rows;
  // Without a C++-side condition every fetched row matches, so the page plus
  // one row (which says whether a next page exists) is all that is needed;
  // with one, read ahead some more so that rejected rows need fewer rounds.
  int limit = matches ? std::max(size + 1, 16) : size + 1;
  Entity entity;
  while (true) {
    rows.clear();
    rows.reserve(limit);
    CITYOS_RETURN_IF_ERROR(fetch(cursor, limit, &rows));
    for (Row& row : rows) {
      if (full && !matches) {
        // Another row after a full page: no need to look at it.
        return EncodePageToken(fingerprint, cursor);
      }
      Entity* parsed = nullptr;
      if (matches) {
        entity.Clear();
        if (!entity.ParseFromString(row.blob)) {
          return UnparsableRow(path, row.key);
        }
        if (!matches(entity)) {
          cursor = std::move(row.key);
          continue;
        }
        parsed = &entity;
      }
      if (full) return EncodePageToken(fingerprint, cursor);
      cursor = row.key;
      CITYOS_ASSIGN_OR_RETURN(bool accepted, take(row, parsed));
      if (!accepted) continue;
      if (++taken == size) full = true;
    }
    if (static_cast<int>(rows.size()) < limit) return std::string();
    // Many rows rejected (filter or policy): read further ahead each round.
    limit = std::min(limit * 2, std::max(fetch.max_round, limit));
  }
}

// FillPageRows into parsed entities, `visible` deciding (null = all).
absl::StatusOr<EntityPage> FillPage(const FetchFn& fetch, std::string cursor, int size,
                                    const std::function<bool(const Entity&)>& matches,
                                    const std::function<bool(const Entity&)>& visible,
                                    std::string_view fingerprint, std::string_view path) {
  EntityPage page;
  TakeFn take = [&](Row& row, Entity* parsed) -> absl::StatusOr<bool> {
    Entity entity;
    if (parsed != nullptr) {
      entity.Swap(parsed);
    } else if (!entity.ParseFromString(row.blob)) {
      return UnparsableRow(path, row.key);
    }
    if (visible && !visible(entity)) return false;
    page.entities.push_back(std::move(entity));
    return true;
  };
  CITYOS_ASSIGN_OR_RETURN(page.next_page_token,
                          FillPageRows(fetch, std::move(cursor), size, matches, take,
                                       fingerprint, path));
  return page;
}

// FillPageRows into the stored bytes, `visible` deciding (null = all): no
// row is parsed unless `matches` needs it.
absl::StatusOr<SerializedEntityPage> FillSerializedPage(
    const FetchFn& fetch, std::string cursor, int size,
    const std::function<bool(const Entity&)>& matches,
    const std::function<SerializedVisibility(std::string_view)>& visible,
    std::string_view fingerprint, std::string_view path) {
  SerializedEntityPage page;
  page.entities.reserve(size);
  TakeFn take = [&](Row& row, Entity*) -> absl::StatusOr<bool> {
    if (visible) {
      switch (visible(row.blob)) {
        case SerializedVisibility::kVisible:
          break;
        case SerializedVisibility::kHidden:
          return false;
        case SerializedVisibility::kUnreadable:
          // As FillPage: the first row that does not parse ends the query.
          return UnparsableRow(path, row.key);
      }
    }
    page.entities.push_back(std::move(row.blob));
    return true;
  };
  CITYOS_ASSIGN_OR_RETURN(page.next_page_token,
                          FillPageRows(fetch, std::move(cursor), size, matches, take,
                                       fingerprint, path));
  return page;
}

class SqliteStateStore;

// A reader connection borrowed from the pool; returned when destroyed.
class ReaderLease {
 public:
  ReaderLease(SqliteStateStore* store, std::unique_ptr<SqliteConnection> conn)
      : store_(store), conn_(std::move(conn)) {}
  ReaderLease(ReaderLease&&) = default;
  ReaderLease& operator=(ReaderLease&&) = delete;
  ~ReaderLease();
  SqliteConnection* get() const { return conn_.get(); }

 private:
  SqliteStateStore* store_;
  std::unique_ptr<SqliteConnection> conn_;
};

// Checkpoints (copies the WAL into the database file, then fsyncs it) on its
// own thread and connection, so that the writer never stalls on a
// checkpoint's fsync: the writer's commit hook only signals when the WAL has
// grown past kCheckpointPages. PASSIVE checkpoints run alongside the writer
// and readers; once one has copied everything, the writer starts the WAL
// over from its beginning.
class Checkpointer {
 public:
  explicit Checkpointer(std::unique_ptr<SqliteConnection> conn)
      : conn_(std::move(conn)), thread_([this] { Run(); }) {}
  ~Checkpointer() {
    {
      std::lock_guard lock(mu_);
      stop_ = true;
    }
    cv_.notify_one();
    thread_.join();
  }
  // Called by SQLite on the writer's thread after each commit.
  static int OnCommit(void* self, sqlite3*, const char*, int wal_pages) {
    if (wal_pages >= kCheckpointPages) {
      auto* c = static_cast<Checkpointer*>(self);
      {
        std::lock_guard lock(c->mu_);
        c->wanted_ = true;
      }
      c->cv_.notify_one();
    }
    return SQLITE_OK;
  }

 private:
  void Run() {
    std::unique_lock lock(mu_);
    while (true) {
      cv_.wait(lock, [this] { return wanted_ || stop_; });
      if (stop_) return;
      wanted_ = false;
      lock.unlock();
      int rc = sqlite3_wal_checkpoint_v2(conn_->db(), nullptr, SQLITE_CHECKPOINT_PASSIVE,
                                         nullptr, nullptr);
      if (rc != SQLITE_OK && rc != SQLITE_BUSY) {
        LogWarn("store", "WAL checkpoint failed",
                {{"path", conn_->path()}, {"error", sqlite3_errmsg(conn_->db())}});
      }
      lock.lock();
    }
  }

  const std::unique_ptr<SqliteConnection> conn_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool wanted_ = false;  // guarded by mu_
  bool stop_ = false;    // guarded by mu_
  std::thread thread_;   // last: starts after the fields above exist
};

class SqliteStateStore final : public StateStore {
 public:
  SqliteStateStore(SqliteStateStoreOptions options, std::unique_ptr<SqliteConnection> writer,
                   std::unique_ptr<Checkpointer> checkpointer)
      : options_(std::move(options)),
        clock_(options_.clock != nullptr ? options_.clock : Clock::Real()),
        checkpointer_(std::move(checkpointer)),
        writer_(std::move(writer)),
        index_(options_.memory_index_bytes > 0
                   ? std::make_unique<LatestIndex>(options_.memory_index_bytes)
                   : nullptr),
        listing_memory_(ReadsCounter("listing", "memory")),
        listing_sqlite_(ReadsCounter("listing", "sqlite")),
        get_memory_(ReadsCounter("get", "memory")),
        get_sqlite_(ReadsCounter("get", "sqlite")) {
    // Replaces SQLite's automatic checkpoint in the writer's commit.
    sqlite3_wal_hook(writer_->db(), &Checkpointer::OnCommit, checkpointer_.get());
  }
  ~SqliteStateStore() override {
    // Unhook before the checkpointer goes; the writer closes last, and as
    // the last connection it checkpoints the rest and removes the WAL.
    sqlite3_wal_hook(writer_->db(), nullptr, nullptr);
    checkpointer_.reset();
    absl::MutexLock lock(&readers_mu_);
    idle_readers_.clear();
  }

  absl::StatusOr<Entity> Upsert(Entity entity) override {
    if (entity.type().empty()) return absl::InvalidArgumentError("entity.type is required");
    if (entity.id().empty()) return absl::InvalidArgumentError("entity.id is required");
    std::vector<Entity> batch;
    batch.push_back(std::move(entity));
    CITYOS_ASSIGN_OR_RETURN(batch, Write(std::move(batch)));
    return std::move(batch.front());
  }

  absl::StatusOr<std::vector<Entity>> UpsertBatch(std::vector<Entity> entities) override {
    for (size_t i = 0; i < entities.size(); ++i) {
      if (entities[i].type().empty()) {
        return absl::InvalidArgumentError(absl::StrFormat("entities[%d]: type is required", i));
      }
      if (entities[i].id().empty()) {
        return absl::InvalidArgumentError(absl::StrFormat("entities[%d]: id is required", i));
      }
    }
    if (entities.empty()) return entities;
    return Write(std::move(entities));
  }

  absl::StatusOr<Entity> Get(std::string_view type, std::string_view id) override {
    if (type.empty()) return absl::InvalidArgumentError("type is required");
    if (id.empty()) return absl::InvalidArgumentError("id is required");
    auto parsed = [&](std::string_view state) -> absl::StatusOr<Entity> {
      Entity entity;
      if (!entity.ParseFromArray(state.data(), static_cast<int>(state.size()))) {
        return absl::DataLossError(absl::StrFormat(
            "entity store %s: stored state of %s \"%s\" does not parse", options_.path, type, id));
      }
      return entity;
    };
    auto not_found = [&] {
      return absl::NotFoundError(absl::StrFormat("no entity \"%s\" of type %s", id, type));
    };
    if (index_ != nullptr) {
      if (std::optional<LatestIndex::Found> found = index_->Latest(type, id)) {
        get_memory_.Add();
        if (found->state == nullptr) return not_found();
        return parsed(*found->state);
      }
    }
    get_sqlite_.Add();
    CITYOS_ASSIGN_OR_RETURN(ReaderLease reader, AcquireReader());
    CITYOS_ASSIGN_OR_RETURN(Statement stmt, reader.get()->Prepare(kGetEntity));
    stmt.BindText(1, type);
    stmt.BindText(2, id);
    CITYOS_ASSIGN_OR_RETURN(bool found, stmt.Step("get entity"));
    if (!found) return not_found();
    return parsed(stmt.ColumnBlob(1));
  }

  absl::StatusOr<EntityPage> Query(const EntityFilter& filter, const PageRequest& page) override {
    return QueryWith<EntityPage>(
        filter, page.page_size, page.page_token, page.token_context,
        [&](const FetchFn& fetch, std::string cursor, int size,
            const std::function<bool(const Entity&)>& matches, std::string_view fingerprint) {
          return FillPage(fetch, std::move(cursor), size, matches, page.visible, fingerprint,
                          options_.path);
        });
  }

  absl::StatusOr<SerializedEntityPage> QuerySerialized(
      const EntityFilter& filter, const SerializedPageRequest& page) override {
    return QueryWith<SerializedEntityPage>(
        filter, page.page_size, page.page_token, page.token_context,
        [&](const FetchFn& fetch, std::string cursor, int size,
            const std::function<bool(const Entity&)>& matches, std::string_view fingerprint) {
          return FillSerializedPage(fetch, std::move(cursor), size, matches, page.visible,
                                    fingerprint, options_.path);
        });
  }

 private:
  // Query and QuerySerialized: the SQL side (snapshot, fetch, C++ filter),
  // `fill` the page.
  template <typename Page, typename Fill>
  absl::StatusOr<Page> QueryWith(const EntityFilter& filter, int page_size,
                                 const std::string& page_token, const std::string& token_context,
                                 const Fill& fill) {
    if (filter.type().empty()) return absl::InvalidArgumentError("filter.type is required");
    CITYOS_RETURN_IF_ERROR(ValidateFilter(filter));
    CITYOS_ASSIGN_OR_RETURN(int size, EffectivePageSize(page_size));
    std::string fingerprint = QueryFingerprint(filter, token_context);
    std::string cursor;  // every id is > "" (ids are never empty)
    if (!page_token.empty()) {
      CITYOS_ASSIGN_OR_RETURN(cursor, DecodePageToken(page_token, fingerprint));
    }

    std::function<bool(const Entity&)> matches;
    if (filter.ids_size() > 0 || !OnlyType(filter)) {
      matches = [&filter](const Entity& e) {
        // An empty row is a listed id that does not exist.
        return !e.type().empty() && MatchesFilter(filter, e);
      };
    }  // else SQL's `type=?1` is the whole filter: every row matches

    // One snapshot for the whole page: each entity is returned in its state
    // when its page was read. A listing narrowed by type only (the type
    // alone, or with conditions only C++ checks) reads the memory index
    // when its type is resident there (a snapshot of it), else it is one
    // SQLite statement, stepped on from round to round (below): its own read
    // transaction is that snapshot. Every other listing runs several
    // statements (a fetch round each) inside one read transaction.
    Narrowing narrowing;
    if (filter.ids_size() == 0) narrowing = NarrowingOf(filter);
    const bool streamed = filter.ids_size() == 0 && narrowing.where.empty();
    if (streamed && index_ != nullptr) {
      if (std::optional<LatestIndex::Snapshot> snapshot = OpenResident(filter.type())) {
        FetchFn fetch;
        fetch.max_round = 64;
        fetch.rows = [&](const std::string& after, int limit,
                         std::vector<Row>* rows) -> absl::Status {
          snapshot->Next(after, limit, [rows](std::string_view id, std::string_view state) {
            rows->push_back(Row{std::string(id), std::string(state)});
          });
          return absl::OkStatus();
        };
        listing_memory_.Add();
        return fill(fetch, std::move(cursor), size, matches, fingerprint);
      }
    }
    listing_sqlite_.Add();

    CITYOS_ASSIGN_OR_RETURN(ReaderLease reader, AcquireReader());
    SqliteConnection* db = reader.get();
    std::optional<Transaction> txn;
    if (!streamed) {
      CITYOS_ASSIGN_OR_RETURN(Transaction begun, Transaction::Begin(db, "BEGIN"));
      txn.emplace(std::move(begun));
    }

    FetchFn fetch;
    std::vector<std::string> ids;
    std::string sql;
    // The streamed listing's statement, prepared by the first fetch round
    // and stepped on by the next ones (each continues after the last row the
    // previous one returned, which is the round's `after`); reset when the
    // page is done, which ends its read transaction.
    std::optional<Statement> listing;  // declared after `reader`: reset before it returns
    bool listing_done = false;
    std::string listing_last;  // the key of the last row the listing returned
    if (streamed) {
      // The primary key (type, id) is the listing's order: the rows stream
      // out of it, nothing is sorted, so no LIMIT is needed.
      fetch.max_round = 64;
      fetch.rows = [&](const std::string& after, int limit, std::vector<Row>* rows) -> absl::Status {
        // Each round continues after the last row returned, which
        // FillPageRows passes as `after`.
        if (listing.has_value() && after != listing_last) {
          return absl::InternalError(absl::StrFormat(
              "entity store %s: a listing round after \"%s\", not after its last row \"%s\"",
              options_.path, after, listing_last));
        }
        if (!listing.has_value()) {
          CITYOS_ASSIGN_OR_RETURN(Statement stmt, db->Prepare(kListByType));
          stmt.BindText(1, filter.type());
          stmt.BindText(2, after);
          listing.emplace(std::move(stmt));
        }
        for (int n = 0; n < limit && !listing_done; ++n) {
          CITYOS_ASSIGN_OR_RETURN(bool row, listing->Step("query entities"));
          if (!row) {
            listing_done = true;
            break;
          }
          rows->push_back(
              Row{std::string(listing->ColumnText(0)), std::string(listing->ColumnBlob(1))});
          listing_last = rows->back().key;
        }
        return absl::OkStatus();
      };
    } else if (filter.ids_size() > 0) {
      // Point lookups of the listed ids in id order: the primary key does the
      // work, MatchesFilter the rest.
      ids.assign(filter.ids().begin(), filter.ids().end());
      std::sort(ids.begin(), ids.end());
      ids.erase(std::unique(ids.begin(), ids.end()), ids.end());
      fetch.rows = [&](const std::string& after, int limit,
                       std::vector<Row>* rows) -> absl::Status {
        auto it = std::upper_bound(ids.begin(), ids.end(), after);
        for (int n = 0; it != ids.end() && n < limit; ++it, ++n) {
          CITYOS_ASSIGN_OR_RETURN(Statement stmt, db->Prepare(kGetEntity));
          stmt.BindText(1, filter.type());
          stmt.BindText(2, *it);
          CITYOS_ASSIGN_OR_RETURN(bool found, stmt.Step("query entities"));
          // A listed id that does not exist still counts as examined, so the
          // fetch reports it (as a row that matches nothing) to keep the
          // "fewer rows than asked = the end" rule.
          rows->push_back(Row{*it, found ? std::string(stmt.ColumnBlob(1)) : std::string()});
        }
        return absl::OkStatus();
      };
    } else {
      sql = absl::StrCat("SELECT id, blob FROM entities WHERE type=?1 AND id>?2",
                         narrowing.where, " ORDER BY id LIMIT ?3");
      fetch.rows = [&](const std::string& after, int limit,
                       std::vector<Row>* rows) -> absl::Status {
        CITYOS_ASSIGN_OR_RETURN(Statement stmt, db->Prepare(sql));
        stmt.BindText(1, filter.type());
        stmt.BindText(2, after);
        stmt.BindInt64(3, limit);
        for (size_t i = 0; i < narrowing.params.size(); ++i) {
          int index = static_cast<int>(i) + 4;
          const auto& p = narrowing.params[i];
          if (const auto* s = std::get_if<std::string>(&p)) stmt.BindText(index, *s);
          if (const auto* v = std::get_if<int64_t>(&p)) stmt.BindInt64(index, *v);
          if (const auto* d = std::get_if<double>(&p)) stmt.BindDouble(index, *d);
        }
        while (true) {
          CITYOS_ASSIGN_OR_RETURN(bool row, stmt.Step("query entities"));
          if (!row) break;
          rows->push_back(Row{std::string(stmt.ColumnText(0)), std::string(stmt.ColumnBlob(1))});
        }
        return absl::OkStatus();
      };
    }
    absl::StatusOr<Page> result = fill(fetch, std::move(cursor), size, matches, fingerprint);
    // A read transaction ends as cheaply with COMMIT as with the destructor's
    // ROLLBACK; should it fail, the destructor still ends it. The streamed
    // listing's ends when its statement is reset (destroyed).
    if (txn.has_value()) (void)txn->Commit();
    return result;
  }

 public:

  absl::StatusOr<EntityPage> History(std::string_view type, std::string_view id, absl::Time from,
                                     absl::Time to, const PageRequest& page) override {
    if (type.empty()) return absl::InvalidArgumentError("type is required");
    if (id.empty()) return absl::InvalidArgumentError("id is required");
    CITYOS_ASSIGN_OR_RETURN(int size, EffectivePageSize(page.page_size));
    // absl::ToUnixNanos saturates for infinite (and out of range) times.
    int64_t from_ns = absl::ToUnixNanos(from);
    int64_t to_ns = absl::ToUnixNanos(to);
    bool unbounded_end = to == absl::InfiniteFuture();
    std::string fingerprint = Fingerprint({"history", type, id, Int64Bytes(from_ns),
                                           Int64Bytes(unbounded_end ? 0 : to_ns),
                                           unbounded_end ? "open" : "closed", page.token_context});
    std::string cursor = "0";
    if (!page.page_token.empty()) {
      CITYOS_ASSIGN_OR_RETURN(cursor, DecodePageToken(page.page_token, fingerprint));
      uint64_t version;
      if (!absl::SimpleAtoi(cursor, &version)) {
        return absl::InvalidArgumentError("malformed page token");
      }
    }

    CITYOS_ASSIGN_OR_RETURN(ReaderLease reader, AcquireReader());
    SqliteConnection* db = reader.get();
    CITYOS_ASSIGN_OR_RETURN(Transaction txn, Transaction::Begin(db, "BEGIN"));
    {
      CITYOS_ASSIGN_OR_RETURN(Statement stmt, db->Prepare(kGetEntity));
      stmt.BindText(1, type);
      stmt.BindText(2, id);
      CITYOS_ASSIGN_OR_RETURN(bool found, stmt.Step("read history"));
      if (!found) {
        return absl::NotFoundError(absl::StrFormat("no entity \"%s\" of type %s", id, type));
      }
    }
    std::string sql = absl::StrCat(
        "SELECT version, blob FROM history WHERE type=?1 AND id=?2 AND version>?3 "
        "AND observed_ns>=?4",
        unbounded_end ? "" : " AND observed_ns<?5", " ORDER BY version LIMIT ?6");
    FetchFn fetch;
    fetch.rows = [&](const std::string& after, int limit,
                        std::vector<Row>* rows) -> absl::Status {
      int64_t after_version = 0;
      (void)absl::SimpleAtoi(after, &after_version);
      CITYOS_ASSIGN_OR_RETURN(Statement stmt, db->Prepare(sql));
      stmt.BindText(1, type);
      stmt.BindText(2, id);
      stmt.BindInt64(3, after_version);
      stmt.BindInt64(4, from_ns);
      if (!unbounded_end) stmt.BindInt64(5, to_ns);
      stmt.BindInt64(6, limit);
      while (true) {
        CITYOS_ASSIGN_OR_RETURN(bool row, stmt.Step("read history"));
        if (!row) break;
        rows->push_back(Row{absl::StrCat(stmt.ColumnInt64(0)), std::string(stmt.ColumnBlob(1))});
      }
      return absl::OkStatus();
    };
    absl::StatusOr<EntityPage> result =
        FillPage(fetch, std::move(cursor), size, nullptr, page.visible, fingerprint, options_.path);
    (void)txn.Commit();  // ends the read transaction (see QueryWith)
    return result;
  }

  absl::StatusOr<uint64_t> CountEntities() override {
    CITYOS_ASSIGN_OR_RETURN(ReaderLease reader, AcquireReader());
    CITYOS_ASSIGN_OR_RETURN(Statement stmt, reader.get()->Prepare(kCountEntities));
    CITYOS_ASSIGN_OR_RETURN(bool row, stmt.Step("count entities"));
    return row ? static_cast<uint64_t>(stmt.ColumnInt64(0)) : 0;
  }

  void ReturnReader(std::unique_ptr<SqliteConnection> conn) {
    absl::MutexLock lock(&readers_mu_);
    if (idle_readers_.size() < kMaxIdleReaders) idle_readers_.push_back(std::move(conn));
  }

 private:
  absl::StatusOr<ReaderLease> AcquireReader() {
    {
      absl::MutexLock lock(&readers_mu_);
      if (!idle_readers_.empty()) {
        std::unique_ptr<SqliteConnection> conn = std::move(idle_readers_.back());
        idle_readers_.pop_back();
        return ReaderLease(this, std::move(conn));
      }
    }
    CITYOS_ASSIGN_OR_RETURN(
        std::unique_ptr<SqliteConnection> conn,
        SqliteConnection::Open(options_.path, {.full_sync = options_.full_sync,
                                               .query_only = true,
                                               .cache_kib = kReaderCacheKib}));
    return ReaderLease(this, std::move(conn));
  }

  // Stores a validated, non-empty batch in one transaction.
  absl::StatusOr<std::vector<Entity>> Write(std::vector<Entity> entities) {
    absl::MutexLock lock(&writer_mu_);
    SqliteConnection* db = writer_.get();
    // Read under the lock, so update_time follows commit order.
    google::protobuf::Timestamp now;
    TimestampToProto(clock_->Now(), &now);
    int64_t now_ns = TimestampNanos(now);
    CITYOS_ASSIGN_OR_RETURN(Transaction txn, Transaction::Begin(db, "BEGIN IMMEDIATE"));
    // Inside the write transaction: no other connection can commit now.
    if (index_ != nullptr) CheckExternalWrites();
    std::string blob;
    // What the memory index needs of the batch: the types and ids written
    // when a type is resident or known empty, and their states only when a
    // type is resident (nothing when no listing has loaded one).
    const bool indexing = index_ != nullptr && index_->wants_commits();
    const bool states = indexing && index_->wants_states();
    std::vector<LatestIndex::Written> written;
    if (indexing) written.reserve(entities.size());
    for (size_t i = 0; i < entities.size(); ++i) {
      absl::Status status = WriteOne(db, now, now_ns, &entities[i], &blob);
      if (!status.ok()) {
        return entities.size() == 1 ? status : Annotate(status, absl::StrFormat("entities[%d]", i));
      }
      if (indexing) {
        written.push_back(
            {entities[i].type(), entities[i].id(), states ? std::move(blob) : std::string()});
      }
    }
    CITYOS_RETURN_IF_ERROR(txn.Commit());
    // Still under the writer lock: the index follows commit order.
    if (indexing) index_->Apply(std::move(written));
    return entities;
  }

  absl::Status WriteOne(SqliteConnection* db, const google::protobuf::Timestamp& now,
                        int64_t now_ns, Entity* entity, std::string* blob)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(writer_mu_) {
    int64_t version = 1;
    bool location_changed = true, keys_changed = true;
    {
      CITYOS_ASSIGN_OR_RETURN(Statement stmt, db->Prepare(kSelectCurrent));
      stmt.BindText(1, entity->type());
      stmt.BindText(2, entity->id());
      CITYOS_ASSIGN_OR_RETURN(bool found, stmt.Step("read version"));
      if (found) {
        version = stmt.ColumnInt64(0) + 1;
        bool had_location = !stmt.ColumnIsNull(1);
        location_changed =
            had_location != entity->has_location() ||
            (had_location && (stmt.ColumnDouble(1) != entity->location().latitude() ||
                              stmt.ColumnDouble(2) != entity->location().longitude()));
        keys_changed = stmt.ColumnText(3) != entity->owner() ||
                       stmt.ColumnText(4) != entity->data_subject();
      }
    }
    entity->set_version(static_cast<uint64_t>(version));
    *entity->mutable_update_time() = now;
    blob->clear();
    entity->SerializeToString(blob);
    int64_t observed_ns = TimestampNanos(entity->observed_time());
    {
      CITYOS_ASSIGN_OR_RETURN(
          Statement stmt, db->Prepare(version == 1 ? std::string(kInsertEntity)
                                                   : UpdateEntitySql(location_changed,
                                                                     keys_changed)));
      // Parameters a variant does not name are not bound (SQLITE_RANGE is
      // only returned beyond the highest index the statement uses, ?10).
      stmt.BindText(1, entity->type());
      stmt.BindText(2, entity->id());
      stmt.BindInt64(3, version);
      stmt.BindInt64(4, observed_ns);
      stmt.BindInt64(5, now_ns);
      if (entity->has_location()) {
        stmt.BindDouble(6, entity->location().latitude());
        stmt.BindDouble(7, entity->location().longitude());
      } else {
        stmt.BindNull(6);
        stmt.BindNull(7);
      }
      stmt.BindText(8, entity->owner());
      stmt.BindText(9, entity->data_subject());
      stmt.BindBlob(10, *blob);
      CITYOS_RETURN_IF_ERROR(stmt.Run("store entity"));
    }
    {
      CITYOS_ASSIGN_OR_RETURN(Statement stmt, db->Prepare(kInsertHistory));
      stmt.BindText(1, entity->type());
      stmt.BindText(2, entity->id());
      stmt.BindInt64(3, version);
      stmt.BindInt64(4, observed_ns);
      stmt.BindBlob(5, *blob);
      CITYOS_RETURN_IF_ERROR(stmt.Run("store history"));
    }
    uint64_t keep = options_.max_history_per_entity;
    if (keep > 0 && static_cast<uint64_t>(version) > keep) {
      CITYOS_ASSIGN_OR_RETURN(Statement stmt, db->Prepare(kTrimHistory));
      stmt.BindText(1, entity->type());
      stmt.BindText(2, entity->id());
      stmt.BindInt64(3, version - static_cast<int64_t>(keep));
      CITYOS_RETURN_IF_ERROR(stmt.Run("trim history"));
    }
    return absl::OkStatus();
  }

  // A snapshot of `type` in the memory index, loading the type first when
  // that is worth trying and it fits; nullopt: read SQLite.
  std::optional<LatestIndex::Snapshot> OpenResident(const std::string& type) {
    if (std::optional<LatestIndex::Snapshot> s = index_->Open(type)) return s;
    if (!index_->ShouldLoad(type)) return std::nullopt;
    // Sized first on a reader connection, without the writer lock: a type
    // too large for the budget is refused without holding up writes.
    absl::StatusOr<size_t> size = EstimateTypeBytes(type);
    if (!size.ok()) {
      LogWarn("store", "memory index: cannot size a type",
              {{"path", options_.path}, {"type", type},
               {"error", std::string(size.status().message())}});
      return std::nullopt;
    }
    if (!index_->Fits(type, *size)) return std::nullopt;
    {
      // Waits for a write under way (a batch), once per type.
      absl::MutexLock lock(&writer_mu_);
      LoadType(type);
    }
    return index_->Open(type);
  }

  // What `type`'s entities would cost in the memory index, as it counts.
  absl::StatusOr<size_t> EstimateTypeBytes(const std::string& type) {
    CITYOS_ASSIGN_OR_RETURN(ReaderLease reader, AcquireReader());
    CITYOS_ASSIGN_OR_RETURN(Statement stmt, reader.get()->Prepare(kSizeType));
    stmt.BindText(1, type);
    CITYOS_ASSIGN_OR_RETURN(bool row, stmt.Step("size a type"));
    if (!row) return 0;
    const int64_t count = stmt.ColumnInt64(0);
    const int64_t bytes = stmt.ColumnInt64(1);
    return static_cast<size_t>(std::max<int64_t>(0, bytes)) +
           static_cast<size_t>(std::max<int64_t>(0, count)) *
               (LatestIndex::kEntryOverhead + LatestIndex::kVersionOverhead);
  }

  // Loads every entity of `type` into the memory index (the writer lock
  // held: no commit falls between the read and the load; writes wait for
  // it, about 0.75 µs per entity).
  void LoadType(const std::string& type) ABSL_EXCLUSIVE_LOCKS_REQUIRED(writer_mu_) {
    CheckExternalWrites();
    const absl::Time start = absl::Now();
    size_t rows = 0;
    absl::Status read_status;
    const LatestIndex::LoadResult result = index_->Load(type, [&](LatestIndex::RowSink row) {
      absl::StatusOr<Statement> stmt = writer_->Prepare(kLoadType);
      if (!stmt.ok()) {
        read_status = stmt.status();
        return false;
      }
      stmt->BindText(1, type);
      while (true) {
        absl::StatusOr<bool> step = stmt->Step("load a type into the memory index");
        if (!step.ok()) {
          read_status = step.status();
          return false;
        }
        if (!*step) return true;
        ++rows;
        if (!row(stmt->ColumnText(0), stmt->ColumnBlob(1))) return true;
      }
    });
    if (result == LatestIndex::LoadResult::kFailed) {
      LogWarn("store", "memory index: cannot load a type",
              {{"path", options_.path}, {"type", type},
               {"error", std::string(read_status.message())}});
    } else if (result == LatestIndex::LoadResult::kLoaded) {
      LogInfo("store", "memory index: type loaded",
              {{"type", type},
               {"entities", std::to_string(rows)},
               {"ms", absl::StrFormat("%.1f", absl::ToDoubleMilliseconds(absl::Now() - start))}});
    }
  }

  // The memory index mirrors this process's commits only: a commit by
  // another connection (another process writing the file; SQLite counts it
  // in the writer connection's data_version, checkpoints do not change it)
  // drops it, to be loaded again. Should data_version not be readable, the
  // index is dropped too (it may be stale), and the write goes on.
  void CheckExternalWrites() ABSL_EXCLUSIVE_LOCKS_REQUIRED(writer_mu_) {
    absl::StatusOr<Statement> stmt = writer_->Prepare("PRAGMA data_version");
    absl::StatusOr<bool> row = stmt.ok() ? stmt->Step("read data_version")
                                         : absl::StatusOr<bool>(stmt.status());
    if (!row.ok() || !*row) {
      LogWarn("store", "entity store: cannot read data_version; the memory index is dropped",
              {{"path", options_.path},
               {"error", row.ok() ? "no row" : std::string(row.status().message())}});
      index_->Clear();
      data_version_.reset();
      return;
    }
    const int64_t version = stmt->ColumnInt64(0);
    if (data_version_.has_value() && *data_version_ != version) {
      LogWarn("store",
              "entity store: another connection wrote the database; the memory index is "
              "dropped and loaded again from it",
              {{"path", options_.path}});
      index_->Clear();
    }
    data_version_ = version;
  }

  const SqliteStateStoreOptions options_;
  Clock* const clock_;
  std::unique_ptr<Checkpointer> checkpointer_;
  absl::Mutex writer_mu_;
  const std::unique_ptr<SqliteConnection> writer_ ABSL_PT_GUARDED_BY(writer_mu_);
  // Null when options_.memory_index_bytes is 0.
  const std::unique_ptr<LatestIndex> index_;
  std::optional<int64_t> data_version_ ABSL_GUARDED_BY(writer_mu_);
  // cityos_store_reads_total (docs/observability.md).
  const Counter listing_memory_, listing_sqlite_, get_memory_, get_sqlite_;
  // Taken twice per read (borrow, return). An absl::Mutex so that
  // ABSL_GUARDED_BY below is checked (thread-safety analysis).
  absl::Mutex readers_mu_;
  std::vector<std::unique_ptr<SqliteConnection>> idle_readers_ ABSL_GUARDED_BY(readers_mu_);
};

ReaderLease::~ReaderLease() {
  if (conn_ != nullptr) store_->ReturnReader(std::move(conn_));
}

// Creates the schema in a new database, or checks the version of an
// existing one.
absl::Status InitSchema(SqliteConnection* db) {
  CITYOS_ASSIGN_OR_RETURN(Transaction txn, Transaction::Begin(db, "BEGIN IMMEDIATE"));
  bool has_version_table = false;
  int64_t other_tables = 0;
  {
    CITYOS_ASSIGN_OR_RETURN(
        Statement stmt,
        db->Prepare("SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%'"));
    while (true) {
      CITYOS_ASSIGN_OR_RETURN(bool row, stmt.Step("read schema"));
      if (!row) break;
      if (stmt.ColumnText(0) == "schema_version") {
        has_version_table = true;
      } else {
        ++other_tables;
      }
    }
  }
  if (!has_version_table) {
    if (other_tables > 0) {
      return absl::FailedPreconditionError(absl::StrFormat(
          "entity store %s: the database has tables but no schema_version: not an entity store",
          db->path()));
    }
    CITYOS_RETURN_IF_ERROR(db->Exec(kSchema, "create schema"));
    {
      CITYOS_ASSIGN_OR_RETURN(Statement stmt,
                              db->Prepare("INSERT INTO schema_version(version) VALUES(?1)"));
      stmt.BindInt64(1, kSchemaVersion);
      CITYOS_RETURN_IF_ERROR(stmt.Run("write schema version"));
    }
    return txn.Commit();
  }
  CITYOS_ASSIGN_OR_RETURN(Statement stmt, db->Prepare("SELECT version FROM schema_version"));
  CITYOS_ASSIGN_OR_RETURN(bool row, stmt.Step("read schema version"));
  if (!row) {
    return absl::DataLossError(
        absl::StrFormat("entity store %s: schema_version is empty", db->path()));
  }
  int64_t version = stmt.ColumnInt64(0);
  if (version > kSchemaVersion) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "entity store %s has schema version %d, newer than the %d this cityos knows; "
        "it was written by a newer cityos",
        db->path(), version, kSchemaVersion));
  }
  if (version < 1) {
    return absl::DataLossError(
        absl::StrFormat("entity store %s: invalid schema version %d", db->path(), version));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<StateStore>> OpenSqliteStateStore(SqliteStateStoreOptions options) {
  if (options.path.empty()) {
    return absl::InvalidArgumentError("SqliteStateStoreOptions.path is required");
  }
  // Create the file ourselves: SQLite would create it 0644 (less umask); it
  // gives the -wal and -shm files the mode of the database file.
  int fd = ::open(options.path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (fd < 0) {
    int err = errno;
    std::string message =
        absl::StrFormat("entity store %s: cannot open: %s", options.path, std::strerror(err));
    return err == ENOSPC ? absl::ResourceExhaustedError(message)
                         : absl::FailedPreconditionError(message);
  }
  ::close(fd);
  CITYOS_ASSIGN_OR_RETURN(
      std::unique_ptr<SqliteConnection> writer,
      SqliteConnection::Open(options.path, {.full_sync = options.full_sync,
                                            .cache_kib = kWriterCacheKib}));
  {
    // WAL: readers see the last commit while a batch is written, and a
    // commit costs one append (plus an fsync with synchronous=FULL).
    CITYOS_ASSIGN_OR_RETURN(Statement stmt, writer->Prepare("PRAGMA journal_mode=WAL"));
    CITYOS_ASSIGN_OR_RETURN(bool row, stmt.Step("set journal_mode"));
    if (!row || stmt.ColumnText(0) != "wal") {
      return absl::FailedPreconditionError(absl::StrFormat(
          "entity store %s: cannot use WAL journal mode (got \"%s\")", options.path,
          row ? stmt.ColumnText(0) : ""));
    }
  }
  CITYOS_RETURN_IF_ERROR(InitSchema(writer.get()));
  CITYOS_ASSIGN_OR_RETURN(
      std::unique_ptr<SqliteConnection> checkpoint_conn,
      SqliteConnection::Open(options.path, {.full_sync = options.full_sync, .cache_kib = 1024}));
  auto checkpointer = std::make_unique<Checkpointer>(std::move(checkpoint_conn));
  return std::unique_ptr<StateStore>(
      new SqliteStateStore(std::move(options), std::move(writer), std::move(checkpointer)));
}

}  // namespace cityos
