# ExchangeService on a real node over mTLS (helper SERVICE): reads,
# subscriptions, emergencies, audit; cityosctl as a subprocess.
cityos_test(exchange_service_test LABEL exchange
  SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/service_fixture.cc
          ${CMAKE_CURRENT_SOURCE_DIR}/service_read_test.cc
          ${CMAKE_CURRENT_SOURCE_DIR}/service_subscribe_test.cc
          ${CMAKE_CURRENT_SOURCE_DIR}/service_emergency_test.cc
          ${CMAKE_CURRENT_SOURCE_DIR}/service_audit_test.cc
  LIBS cityosd_lib cityos_exchange_service
  DEFINES CITYOSCTL_PATH="$<TARGET_FILE:cityosctl>"
  TIMEOUT 300)
add_dependencies(exchange_service_test cityosctl)

# LiveFeeds: live exchange subscriptions sharing one bus subscription per
# pattern (dispatch by id / type, per-member queues, missed counts, ends);
# event_wire: envelopes read off stored bytes, deliveries framed as bytes.
cityos_test(exchange_live_feed_test LABEL exchange
  SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/live_feed_test.cc
          ${CMAKE_CURRENT_SOURCE_DIR}/event_wire_test.cc
  LIBS cityos_exchange_service)

find_package(SQLite3 REQUIRED)
# Query built on the wire (event_wire: EntityHeaderView, EntityWireRedaction;
# ExchangeServiceImpl::QueryToWire) against the protobuf-built Query.
cityos_test(exchange_query_wire_test LABEL exchange
  SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/query_wire_test.cc
  LIBS cityos_exchange_service SQLite::SQLite3)

# The exchange plug-in's config section (store keys, refusals naming the key).
cityos_test(exchange_plugin_config_test LABEL exchange
  SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/exchange_plugin_config_test.cc
  LIBS cityos_exchange_service)
