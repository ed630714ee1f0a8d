# H6: CarbonAccountService on a real node (mTLS) with the exchange (the
# service's only input path) and the information bank (real consent):
# accounting via the exchange, quarantine, consent-gated credits, alarms and
# WatchAlarms, access rules, the monthly report, a restatement end to end,
# `cityosctl carbon` in-process, the plug-in's config errors.
cityos_test(carbon_service_test LABEL carbon
  SOURCES ${PROJECT_SOURCE_DIR}/tests/exchange/service_fixture.cc
          ${CMAKE_CURRENT_SOURCE_DIR}/service_test.cc
  LIBS cityosd_lib cityos_exchange_service cityos_infobank cityos_carbon_service cityosctl_lib
  TIMEOUT 300)
target_include_directories(carbon_service_test PRIVATE ${PROJECT_SOURCE_DIR}/tests/exchange)
# The feed's reading of Subscribe responses from their bytes (feed_wire.h):
# agrees with a full protobuf parse, including unusual but valid wire, every
# prefix and random corruptions; malformed bytes are DATA_LOSS.
cityos_test(carbon_feed_wire_test LABEL carbon
  SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/feed_wire_test.cc
  LIBS cityos_carbon_service)
# ExchangeFeed against a fake exchange (mTLS, raw Subscribe): real requests,
# deliveries read from the bytes, a malformed response refused and the stream
# resumed.
cityos_test(carbon_exchange_feed_test LABEL carbon
  SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/exchange_feed_test.cc
  LIBS cityos_carbon_service)
