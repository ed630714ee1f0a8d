# H7: the demo city's consents on a real node (mTLS, the shipped
# config/policies): the city-sim plug-in has the consenting citizens grant
# their carbon_accounting consents through the information bank, once, and
# the exchange's decisions for the carbon office follow.
if(TARGET cityos_citysim AND TARGET cityosd_lib AND EXISTS ${CMAKE_CURRENT_LIST_DIR}/sim_consent_test.cc)
  cityos_test(carbon_sim_consent_test LABEL carbon
    SOURCES ${PROJECT_SOURCE_DIR}/tests/exchange/service_fixture.cc
            ${CMAKE_CURRENT_LIST_DIR}/sim_consent_test.cc
    LIBS cityosd_lib cityos_exchange_service cityos_infobank cityos_citysim
    DEFINES CITYOS_SOURCE_DIR="${PROJECT_SOURCE_DIR}"
    TIMEOUT 300)
  target_include_directories(carbon_sim_consent_test PRIVATE ${PROJECT_SOURCE_DIR}/tests/exchange)
endif()
