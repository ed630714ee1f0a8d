# Audit log and signing keys (label exchange); included by CMakeLists.txt.
cityos_test(exchange_audit_test LABEL exchange
  SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/audit_signing_test.cc
          ${CMAKE_CURRENT_SOURCE_DIR}/audit_log_test.cc
          ${CMAKE_CURRENT_SOURCE_DIR}/audit_tamper_test.cc
          ${CMAKE_CURRENT_SOURCE_DIR}/audit_query_test.cc
  LIBS OpenSSL::Crypto
  TIMEOUT 180)
cityos_test(exchange_audit_crash_test LABEL exchange
  SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/audit_crash_test.cc
  TIMEOUT 180)
