# The SQLite entity store (libcityos/src/store). The tests reach into the
# database file with SQLite directly (schema version refusal, a failing
# trigger), hence the direct link.
find_package(SQLite3 REQUIRED)
cityos_test(exchange_store_test LABEL exchange
  SOURCES store_test.cc LIBS SQLite::SQLite3)
cityos_test(exchange_store_paging_test LABEL exchange
  SOURCES store_paging_test.cc TIMEOUT 300)
# store_internal::Transaction: the destructor's ROLLBACK does not allocate.
cityos_test(exchange_sqlite_transaction_test LABEL exchange
  SOURCES sqlite_transaction_test.cc LIBS SQLite::SQLite3)
# store_internal page tokens: the fingerprint's bytes are pinned (tokens
# outlive a restart), round trips and refusals.
cityos_test(exchange_page_token_test LABEL exchange SOURCES page_token_test.cc)
# store_internal::LatestIndex, the store's memory index: snapshots, kept
# states, the memory budget.
cityos_test(exchange_latest_index_test LABEL exchange SOURCES latest_index_test.cc)
