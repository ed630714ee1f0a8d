# The tamper-evident audit log and Ed25519 signing keys (included by
# libcityos/CMakeLists.txt). OpenSSL::Crypto is linked privately there.
target_sources(cityos PRIVATE
  ${CMAKE_CURRENT_SOURCE_DIR}/src/audit/audit_format.cc
  ${CMAKE_CURRENT_SOURCE_DIR}/src/audit/audit_log.cc
  ${CMAKE_CURRENT_SOURCE_DIR}/src/audit/signing.cc
  ${CMAKE_CURRENT_SOURCE_DIR}/src/audit/audit_format.h
  ${CMAKE_CURRENT_SOURCE_DIR}/src/audit/signing_internal.h)
