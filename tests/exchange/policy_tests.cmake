# The policy decision point: language, decisions, hooks, cache, emergencies,
# bus authorizer, index-vs-linear equivalence, the shipped config/policies.
cityos_test(exchange_policy_test LABEL exchange
  SOURCES
    ${CMAKE_CURRENT_SOURCE_DIR}/policy_decide_test.cc
    ${CMAKE_CURRENT_SOURCE_DIR}/policy_admin_test.cc
    ${CMAKE_CURRENT_SOURCE_DIR}/policy_emergency_test.cc
    ${CMAKE_CURRENT_SOURCE_DIR}/policy_bus_test.cc
    ${CMAKE_CURRENT_SOURCE_DIR}/policy_random_test.cc
  DEFINES CITYOS_SOURCE_DIR="${PROJECT_SOURCE_DIR}"
  TIMEOUT 300)
