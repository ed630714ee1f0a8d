# The policy decision point: compiler, indexes, evaluator, decision cache,
# emergencies, bus authorizer (included by libcityos/CMakeLists.txt).
target_sources(cityos PRIVATE
  ${CMAKE_CURRENT_SOURCE_DIR}/src/policy/bus_authorizer.cc
  ${CMAKE_CURRENT_SOURCE_DIR}/src/policy/compiled_policy.cc
  ${CMAKE_CURRENT_SOURCE_DIR}/src/policy/compiled_policy.h
  ${CMAKE_CURRENT_SOURCE_DIR}/src/policy/decision_cache.cc
  ${CMAKE_CURRENT_SOURCE_DIR}/src/policy/decision_cache.h
  ${CMAKE_CURRENT_SOURCE_DIR}/src/policy/evaluator.cc
  ${CMAKE_CURRENT_SOURCE_DIR}/src/policy/evaluator.h
  ${CMAKE_CURRENT_SOURCE_DIR}/src/policy/geo.cc
  ${CMAKE_CURRENT_SOURCE_DIR}/src/policy/geo.h
  ${CMAKE_CURRENT_SOURCE_DIR}/src/policy/pdp.cc
  ${CMAKE_CURRENT_SOURCE_DIR}/src/policy/policy_types.cc)
