# H6 service: cityos.carbon.v1.CarbonAccountService, the exchange feed (the
# service's only input path), the `carbon` plug-in and the cityos-carbon
# binary. Links every other carbon part.
add_library(cityos_carbon_service STATIC
  ${CMAKE_CURRENT_LIST_DIR}/feed_wire.cc
  ${CMAKE_CURRENT_LIST_DIR}/exchange_feed.cc
  ${CMAKE_CURRENT_LIST_DIR}/carbon_service.cc
  ${CMAKE_CURRENT_LIST_DIR}/carbon_service_rpc.cc
  ${CMAKE_CURRENT_LIST_DIR}/carbon_service_report.cc
  ${CMAKE_CURRENT_LIST_DIR}/carbon_plugin.cc)
target_include_directories(cityos_carbon_service PUBLIC ${CMAKE_CURRENT_LIST_DIR})
target_include_directories(cityos_carbon_service PRIVATE ${PROJECT_SOURCE_DIR}/services/infobank)
target_compile_options(cityos_carbon_service PRIVATE ${CITYOS_WARNINGS})
target_link_libraries(cityos_carbon_service
  PUBLIC cityos gRPC::grpc++ cityos_carbon_model cityos_carbon_ledger cityos_carbon_people
         cityos_carbon_alarms cityos_carbon_mqtt
  PRIVATE SQLite::SQLite3 nlohmann_json::nlohmann_json)

# cityos-carbon: the plug-in as its own process (services/cityosd/standalone.h).
add_executable(cityos-carbon ${CMAKE_CURRENT_LIST_DIR}/main.cc)
target_compile_options(cityos-carbon PRIVATE ${CITYOS_WARNINGS})
target_link_libraries(cityos-carbon PRIVATE cityos_standalone cityos_carbon_service)
install(TARGETS cityos-carbon RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
