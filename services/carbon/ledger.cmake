# H2 ledger: accounts, readings -> emission records, quarantine, aggregates,
# rankings, restatements; persisted to SQLite (ledger.db) by a background writer.
add_library(cityos_carbon_ledger STATIC
  ${CMAKE_CURRENT_LIST_DIR}/ledger.cc
  ${CMAKE_CURRENT_LIST_DIR}/ledger_query.cc
  ${CMAKE_CURRENT_LIST_DIR}/ledger_store.cc)
target_include_directories(cityos_carbon_ledger PUBLIC ${CMAKE_CURRENT_LIST_DIR})
target_include_directories(cityos_carbon_ledger PRIVATE ${PROJECT_SOURCE_DIR}/services/infobank)
target_compile_options(cityos_carbon_ledger PRIVATE ${CITYOS_WARNINGS})
target_link_libraries(cityos_carbon_ledger PUBLIC cityos cityos_carbon_model
                      absl::flat_hash_map absl::flat_hash_set absl::hash absl::inlined_vector
                      PRIVATE SQLite::SQLite3)
