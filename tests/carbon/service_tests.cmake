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
