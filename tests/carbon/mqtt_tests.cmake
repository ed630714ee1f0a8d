# H5: the MQTT bridge against a real mosquitto broker started by the test, and
# the demo-city simulator.
cityos_test(carbon_mqtt_bridge_test LABEL carbon
  SOURCES ${CMAKE_CURRENT_LIST_DIR}/mqtt_bridge_test.cc
  LIBS cityos_carbon_mqtt
  TIMEOUT 180)
if(TARGET cityos_citysim AND EXISTS ${CMAKE_CURRENT_LIST_DIR}/sim_test.cc)
  cityos_test(carbon_sim_test LABEL carbon
    SOURCES ${CMAKE_CURRENT_LIST_DIR}/sim_test.cc
    LIBS cityos_citysim cityos_carbon_mqtt
    DEFINES CITY_SIM_BIN="$<TARGET_FILE:city-sim>"
    TIMEOUT 180)
  add_dependencies(carbon_sim_test city-sim)
endif()
# The binary's grpc mode against a real node (cityosd's Node, mTLS).
if(TARGET cityos_citysim AND TARGET cityosd_lib AND EXISTS ${CMAKE_CURRENT_LIST_DIR}/sim_grpc_test.cc)
  cityos_test(carbon_sim_grpc_test LABEL carbon
    SOURCES ${PROJECT_SOURCE_DIR}/tests/exchange/service_fixture.cc
            ${CMAKE_CURRENT_LIST_DIR}/sim_grpc_test.cc
    LIBS cityosd_lib cityos_exchange_service cityos_citysim
    DEFINES CITY_SIM_BIN="$<TARGET_FILE:city-sim>"
    TIMEOUT 180)
  target_include_directories(carbon_sim_grpc_test PRIVATE ${PROJECT_SOURCE_DIR}/tests/exchange)
  add_dependencies(carbon_sim_grpc_test city-sim)
endif()
