// The StateStore interface's default methods (cityos/state_store.h).
#include <string>
#include <utility>

#include "cityos/state_store.h"

namespace cityos {

absl::StatusOr<SerializedEntityPage> StateStore::QuerySerialized(
    const exchange::v1::EntityFilter& filter, const SerializedPageRequest& page) {
  SerializedEntityPage out;
  PageRequest request{.page_size = page.page_size,
                      .page_token = page.page_token,
                      .token_context = page.token_context};
  // Serialized once, in the order Query examines them; those `visible`
  // rejects are dropped at once.
  // Query's entities parsed; bytes `visible` still finds unreadable stop
  // the page (no later entity is handed to it) and fail it.
  bool unreadable = false;
  request.visible = [&](const exchange::v1::Entity& e) {
    if (unreadable) return false;
    std::string bytes = e.SerializeAsString();
    if (page.visible) {
      switch (page.visible(bytes)) {
        case SerializedVisibility::kVisible:
          break;
        case SerializedVisibility::kHidden:
          return false;
        case SerializedVisibility::kUnreadable:
          unreadable = true;
          return false;
      }
    }
    out.entities.push_back(std::move(bytes));
    return true;
  };
  absl::StatusOr<EntityPage> result = Query(filter, request);
  if (!result.ok()) return result.status();
  if (unreadable) return absl::DataLossError("entity store: a stored entity does not parse");
  out.next_page_token = std::move(result->next_page_token);
  return out;
}

}  // namespace cityos
