# Trust layer of the mesh (label mesh): city CA, mTLS, node transport wiring.
cityos_test(mesh_ca_test LABEL mesh
  SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/ca_test.cc
  LIBS OpenSSL::Crypto)

cityos_test(mesh_tls_test LABEL mesh
  SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/tls_test.cc
  TIMEOUT 300)

cityos_test(mesh_node_tls_test LABEL mesh
  SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/node_tls_test.cc
  LIBS cityosd_lib
  DEFINES CITYOSD_PATH="$<TARGET_FILE:cityosd>"
  TIMEOUT 300)
add_dependencies(mesh_node_tls_test cityosd)
