# The entity state store: SQLite (WAL) in the node's data dir (included by
# libcityos/CMakeLists.txt). SQLite is a private dependency; static consumers
# get it through find_dependency(SQLite3) in cmake/cityosConfig.cmake.in.
find_package(SQLite3 REQUIRED)
target_sources(cityos PRIVATE
  ${CMAKE_CURRENT_SOURCE_DIR}/src/store/latest_index.cc
  ${CMAKE_CURRENT_SOURCE_DIR}/src/store/page_token.cc
  ${CMAKE_CURRENT_SOURCE_DIR}/src/store/sqlite.cc
  ${CMAKE_CURRENT_SOURCE_DIR}/src/store/sqlite_state_store.cc
  ${CMAKE_CURRENT_SOURCE_DIR}/src/store/state_store.cc
  ${CMAKE_CURRENT_SOURCE_DIR}/src/store/latest_index.h
  ${CMAKE_CURRENT_SOURCE_DIR}/src/store/page_token.h
  ${CMAKE_CURRENT_SOURCE_DIR}/src/store/sqlite.h)
target_link_libraries(cityos PRIVATE SQLite::SQLite3)
