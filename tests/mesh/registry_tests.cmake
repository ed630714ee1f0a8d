# The service registry (services/registry): its logic on a SimulatedClock, the
# gRPC service, the plug-in and RegistrationKeeper through real gRPC on
# loopback.
cityos_test(mesh_registry_test LABEL mesh
  SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/registry_test.cc
  LIBS cityos_registry)

cityos_test(mesh_registry_grpc_test LABEL mesh
  SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/registry_grpc_test.cc
  LIBS cityos_registry
  TIMEOUT 300)
