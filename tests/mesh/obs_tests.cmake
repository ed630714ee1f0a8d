# Observability (label mesh): metrics registry and exposition format, W3C
# trace context and the logger, gRPC interceptors, the /metrics endpoint, and
# the bus metrics.
cityos_test(mesh_obs_test LABEL mesh
  SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/obs_metrics_test.cc
          ${CMAKE_CURRENT_SOURCE_DIR}/obs_trace_test.cc
          ${CMAKE_CURRENT_SOURCE_DIR}/obs_grpc_test.cc
          ${CMAKE_CURRENT_SOURCE_DIR}/obs_http_test.cc
          ${CMAKE_CURRENT_SOURCE_DIR}/obs_bus_test.cc
  LIBS nlohmann_json::nlohmann_json)
