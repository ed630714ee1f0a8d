# H3 people: individual green-behaviour credits (rules from the reference CSV
# or config, event -> behaviour mapping, SQLite credits.db with caps and dedup)
# and the incentive ledger (SQLite incentives.db: points, coupons, loan tiers).
add_library(cityos_carbon_people STATIC
  ${CMAKE_CURRENT_LIST_DIR}/credits.cc
  ${CMAKE_CURRENT_LIST_DIR}/incentives.cc)
target_include_directories(cityos_carbon_people PUBLIC ${CMAKE_CURRENT_LIST_DIR})
# sqlite_util.h (header-only) of the information bank.
target_include_directories(cityos_carbon_people PRIVATE ${PROJECT_SOURCE_DIR}/services/infobank)
target_compile_options(cityos_carbon_people PRIVATE ${CITYOS_WARNINGS})
target_link_libraries(cityos_carbon_people PUBLIC cityos cityos_carbon_model PRIVATE SQLite::SQLite3)
