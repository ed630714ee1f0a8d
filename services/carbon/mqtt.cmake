# H5: the smart-meter MQTT bridge and publisher (libmosquitto via pkg-config).
pkg_check_modules(MOSQUITTO REQUIRED IMPORTED_TARGET libmosquitto)
add_library(cityos_carbon_mqtt STATIC ${CMAKE_CURRENT_LIST_DIR}/mqtt_bridge.cc)
target_include_directories(cityos_carbon_mqtt PUBLIC ${CMAKE_CURRENT_LIST_DIR})
target_compile_options(cityos_carbon_mqtt PRIVATE ${CITYOS_WARNINGS})
target_link_libraries(cityos_carbon_mqtt PUBLIC cityos
                      PRIVATE PkgConfig::MOSQUITTO nlohmann_json::nlohmann_json)
