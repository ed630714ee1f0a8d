# H1 model: units, regions, periods, the emission factor registry (SQLite
# factors.db) and grades. Linked by every other carbon part.
add_library(cityos_carbon_model STATIC
  ${CMAKE_CURRENT_LIST_DIR}/units.cc
  ${CMAKE_CURRENT_LIST_DIR}/regions.cc
  ${CMAKE_CURRENT_LIST_DIR}/periods.cc
  ${CMAKE_CURRENT_LIST_DIR}/factors.cc
  ${CMAKE_CURRENT_LIST_DIR}/grades.cc)
target_include_directories(cityos_carbon_model PUBLIC ${CMAKE_CURRENT_LIST_DIR})
target_include_directories(cityos_carbon_model PRIVATE ${PROJECT_SOURCE_DIR}/services/infobank)
target_compile_options(cityos_carbon_model PRIVATE ${CITYOS_WARNINGS})
target_link_libraries(cityos_carbon_model PUBLIC cityos PRIVATE SQLite::SQLite3)
