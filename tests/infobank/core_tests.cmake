# CORE: consent index and store (unit), the ConsentService on a real node
# with the exchange (grant / revoke / expiry / ethics review / validation,
# revocation -> live subscription cut latency).
cityos_test(infobank_consent_test LABEL infobank
  SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/consent_checker_test.cc
  LIBS cityos_infobank)
cityos_test(infobank_service_test LABEL infobank
  SOURCES ${PROJECT_SOURCE_DIR}/tests/exchange/service_fixture.cc
          ${CMAKE_CURRENT_SOURCE_DIR}/service_test.cc
  LIBS cityosd_lib cityos_exchange_service cityos_infobank
  TIMEOUT 300)
target_include_directories(infobank_service_test PRIVATE ${PROJECT_SOURCE_DIR}/tests/exchange)
