# cityos.bus.v1.BusService through gRPC, and the node's `bus:` section.
cityos_test(bus_grpc_service_test LABEL bus
  SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/bus_service_test.cc
  LIBS cityos_bus_service cityosd_lib
  TIMEOUT 300)

cityos_test(bus_grpc_node_test LABEL bus
  SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/bus_service_node_test.cc
  LIBS cityos_bus_service cityosd_lib
  DEFINES CITYOS_SOURCE_DIR="${PROJECT_SOURCE_DIR}")

cityos_test(bus_subscribe_wire_test LABEL bus
  SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/subscribe_wire_test.cc
  LIBS cityos_bus_service)
