# Observability: metrics registry and Prometheus encoder, W3C trace context,
# gRPC interceptors, the /metrics HTTP endpoint (Boost.Beast, header-only).
target_sources(cityos PRIVATE
  ${CMAKE_CURRENT_SOURCE_DIR}/src/obs/grpc_observability.cc
  ${CMAKE_CURRENT_SOURCE_DIR}/src/obs/metrics.cc
  ${CMAKE_CURRENT_SOURCE_DIR}/src/obs/metrics_http.cc
  ${CMAKE_CURRENT_SOURCE_DIR}/src/obs/trace.cc
  ${CMAKE_CURRENT_SOURCE_DIR}/src/obs/trace_internal.h)
target_link_libraries(cityos PRIVATE Boost::headers Threads::Threads)
