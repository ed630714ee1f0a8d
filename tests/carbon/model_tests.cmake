# H1 model (label carbon): units, regions, periods, the emission factor
# registry (seeded from the shared reference CSV, which must exist) and grades.
cityos_test(carbon_units_test LABEL carbon
  SOURCES ${CMAKE_CURRENT_LIST_DIR}/units_test.cc
  LIBS cityos_carbon_model)
cityos_test(carbon_regions_test LABEL carbon
  SOURCES ${CMAKE_CURRENT_LIST_DIR}/regions_test.cc
  LIBS cityos_carbon_model)
cityos_test(carbon_periods_test LABEL carbon
  SOURCES ${CMAKE_CURRENT_LIST_DIR}/periods_test.cc
  LIBS cityos_carbon_model)
cityos_test(carbon_factors_test LABEL carbon
  SOURCES ${CMAKE_CURRENT_LIST_DIR}/factors_test.cc
  LIBS cityos_carbon_model
  DEFINES CARBON_REFERENCE_DIR="${PROJECT_SOURCE_DIR}/config/carbon")
cityos_test(carbon_grades_test LABEL carbon
  SOURCES ${CMAKE_CURRENT_LIST_DIR}/grades_test.cc
  LIBS cityos_carbon_model)
