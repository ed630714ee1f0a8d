// File: cityos/state_store.h
//
// The entity state store: the latest state of every entity and its history.
// One interface; the embedded implementation is SQLite in the node's data dir
// (a PostgreSQL one can follow behind the same interface).
//
//   CITYOS_ASSIGN_OR_RETURN(auto store, OpenSqliteStateStore({.path = dir + "/entities.db"}));
//   CITYOS_ASSIGN_OR_RETURN(exchange::v1::Entity stored, store->Upsert(std::move(entity)));
//   CITYOS_ASSIGN_OR_RETURN(EntityPage page, store->Query(filter, {.page_size = 100}));
//
// Paging is by keyset (ascending id within the type), never by offset: an
// entity that matches during the whole paging is returned exactly once,
// whatever is written meanwhile.
#ifndef CITYOS_STATE_STORE_H_
#define CITYOS_STATE_STORE_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "cityos/exchange/v1/exchange.pb.h"

namespace cityos {

class Clock;

struct PageRequest {
  // 0 = 100; larger than 1000 is clamped to 1000.
  int page_size = 0;
  // From the previous page; empty for the first.
  std::string page_token;
  // Bound into the token with the filter, so that a token used with another
  // query (filter, or this context: e.g. purpose and projection) is
  // INVALID_ARGUMENT.
  std::string token_context;
  // Entities for which this returns false are left out silently and do not
  // count towards the page (the caller's per-entity policy). Null = all.
  std::function<bool(const exchange::v1::Entity&)> visible;
};

struct EntityPage {
  std::vector<exchange::v1::Entity> entities;
  std::string next_page_token;  // empty on the last page
};

// What SerializedPageRequest::visible makes of one stored entity.
enum class SerializedVisibility {
  kHidden,   // left out silently, not counted (PageRequest::visible's false)
  kVisible,  // on the page
  // The bytes do not parse: the query stops there and fails with the
  // DATA_LOSS Query gives for such a row (naming it); no later row is handed
  // to `visible`.
  kUnreadable,
};

// PageRequest for QuerySerialized: the same, but `visible` sees each entity
// as stored (a serialized exchange::v1::Entity), not parsed, and can say that
// it does not parse.
struct SerializedPageRequest {
  int page_size = 0;
  std::string page_token;
  std::string token_context;
  std::function<SerializedVisibility(std::string_view serialized_entity)> visible;
};

struct SerializedEntityPage {
  // Serialized exchange::v1::Entity, as stored.
  std::vector<std::string> entities;
  std::string next_page_token;  // empty on the last page
};

class StateStore {
 public:
  virtual ~StateStore() = default;

  // Stores `entity` (type and id required) as the entity's newest state:
  // version = previous + 1 (1 for the first), update_time = now; the previous
  // state goes to the history. Returns what was stored. A batch is one
  // transaction: all stored or none. INVALID_ARGUMENT for a missing type or
  // id (naming the index in a batch).
  virtual absl::StatusOr<exchange::v1::Entity> Upsert(exchange::v1::Entity entity) = 0;
  virtual absl::StatusOr<std::vector<exchange::v1::Entity>> UpsertBatch(
      std::vector<exchange::v1::Entity> entities) = 0;

  // NOT_FOUND when there is no such entity.
  virtual absl::StatusOr<exchange::v1::Entity> Get(std::string_view type,
                                                   std::string_view id) = 0;

  // Latest states matching `filter` (type required), by ascending id.
  // INVALID_ARGUMENT: bad filter, bad or foreign page token.
  virtual absl::StatusOr<EntityPage> Query(const exchange::v1::EntityFilter& filter,
                                           const PageRequest& page) = 0;

  // Query, the entities handed out serialized (as the store keeps them, so
  // a caller that forwards them need not parse them): the same entities, the
  // same page tokens (a token of one is valid for the other). The default
  // serializes what Query returns; the SQLite store returns its stored bytes
  // without parsing them (unless the filter needs C++-side matching).
  virtual absl::StatusOr<SerializedEntityPage> QuerySerialized(
      const exchange::v1::EntityFilter& filter, const SerializedPageRequest& page);

  // States of one entity whose observed_time is in [from, to), by ascending
  // version (the newest included). NOT_FOUND when there is no such entity.
  virtual absl::StatusOr<EntityPage> History(std::string_view type, std::string_view id,
                                             absl::Time from, absl::Time to,
                                             const PageRequest& page) = 0;

  // Number of entities (all types; each counted once, whatever its history).
  virtual absl::StatusOr<uint64_t> CountEntities() = 0;
};

struct SqliteStateStoreOptions {
  // The database file; created (0600) when missing. Required.
  std::string path;
  Clock* clock = nullptr;  // null = real clock
  // States kept per entity in the history, at most (oldest dropped); 0 = all.
  uint64_t max_history_per_entity = 0;
  // fsync on every commit (synchronous=FULL) rather than NORMAL (WAL: a
  // crash loses at most the last commits, never corrupts). Default: false.
  bool full_sync = false;
  // Memory for the latest states of the most recently listed types, served
  // from memory in front of SQLite (docs/state-store.md, "Memory index"):
  // a listing narrowed by type only and Get read a resident type without
  // SQLite. A type is loaded on its first listing, if it fits; 0 = off.
  size_t memory_index_bytes = size_t{256} << 20;
};

// The embedded SQLite store (WAL; one writer, readers in parallel).
absl::StatusOr<std::unique_ptr<StateStore>> OpenSqliteStateStore(
    SqliteStateStoreOptions options);

}  // namespace cityos

#endif  // CITYOS_STATE_STORE_H_
