# Personal data store, benefits ledger, provision history (label infobank);
# included by CMakeLists.txt.
find_package(SQLite3 REQUIRED)
cityos_test(infobank_pds_test LABEL infobank
  SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/personal_store_test.cc
          ${CMAKE_CURRENT_SOURCE_DIR}/benefits_test.cc
          ${CMAKE_CURRENT_SOURCE_DIR}/provision_test.cc
          ${CMAKE_CURRENT_SOURCE_DIR}/sqlite_util_test.cc
  LIBS cityos_infobank OpenSSL::Crypto SQLite::SQLite3
  TIMEOUT 180)
