# Entities: the entity view of events, filters, obligations (cityos/entity.h;
# included by libcityos/CMakeLists.txt).
target_sources(cityos PRIVATE
  ${CMAKE_CURRENT_SOURCE_DIR}/src/entity/entity_internal.h
  ${CMAKE_CURRENT_SOURCE_DIR}/src/entity/entity_view.cc
  ${CMAKE_CURRENT_SOURCE_DIR}/src/entity/filter.cc
  ${CMAKE_CURRENT_SOURCE_DIR}/src/entity/obligation_plan.cc
  ${CMAKE_CURRENT_SOURCE_DIR}/src/entity/obligation_plan.h
  ${CMAKE_CURRENT_SOURCE_DIR}/src/entity/obligations.cc
  ${CMAKE_CURRENT_SOURCE_DIR}/src/entity/pseudonym.cc
  ${CMAKE_CURRENT_SOURCE_DIR}/src/entity/pseudonym_internal.h)
