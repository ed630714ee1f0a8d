# The trust layer of the service mesh: city CA, mTLS credentials, client
# contexts (included by libcityos/CMakeLists.txt).
target_sources(cityos PRIVATE
  ${CMAKE_CURRENT_SOURCE_DIR}/src/mesh/ca.cc
  ${CMAKE_CURRENT_SOURCE_DIR}/src/mesh/client_config.cc
  ${CMAKE_CURRENT_SOURCE_DIR}/src/mesh/dev_pki.cc
  ${CMAKE_CURRENT_SOURCE_DIR}/src/mesh/tls.cc
  ${CMAKE_CURRENT_SOURCE_DIR}/src/mesh/trust_store.cc
  ${CMAKE_CURRENT_SOURCE_DIR}/src/mesh/x509_util.cc
  ${CMAKE_CURRENT_SOURCE_DIR}/src/mesh/trust_store.h
  ${CMAKE_CURRENT_SOURCE_DIR}/src/mesh/x509_util.h)
