# The multi-process mesh on loopback with mTLS (label mesh): cityosd, two
# helper processes (mesh_vendor, mesh_consumer) and cityosctl.
add_executable(mesh_vendor ${CMAKE_CURRENT_SOURCE_DIR}/mesh_vendor.cc)
target_compile_options(mesh_vendor PRIVATE ${CITYOS_WARNINGS})
target_link_libraries(mesh_vendor PRIVATE cityos cityos_registry)

add_executable(mesh_consumer ${CMAKE_CURRENT_SOURCE_DIR}/mesh_consumer.cc)
target_compile_options(mesh_consumer PRIVATE ${CITYOS_WARNINGS})
target_link_libraries(mesh_consumer PRIVATE cityos)

cityos_test(mesh_e2e_test LABEL mesh
  SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/e2e_mesh_test.cc
  LIBS cityosctl_lib nlohmann_json::nlohmann_json
  DEFINES CITYOSD_PATH="$<TARGET_FILE:cityosd>"
          CITYOSCTL_PATH="$<TARGET_FILE:cityosctl>"
          MESH_VENDOR_PATH="$<TARGET_FILE:mesh_vendor>"
          MESH_CONSUMER_PATH="$<TARGET_FILE:mesh_consumer>"
  TIMEOUT 300)
add_dependencies(mesh_e2e_test cityosd cityosctl mesh_vendor mesh_consumer)

# The standalone plug-in binaries joining the mesh with their own certificates.
cityos_test(mesh_e2e_standalone_test LABEL mesh
  SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/e2e_standalone_test.cc
  LIBS nlohmann_json::nlohmann_json
  DEFINES CITYOSD_PATH="$<TARGET_FILE:cityosd>"
          CITYOSCTL_PATH="$<TARGET_FILE:cityosctl>"
          CITYOS_BUS_PATH="$<TARGET_FILE:cityos-bus>"
          CITYOS_REGISTRY_PATH="$<TARGET_FILE:cityos-registry>"
  TIMEOUT 300)
add_dependencies(mesh_e2e_standalone_test cityosd cityosctl cityos-bus cityos-registry)
