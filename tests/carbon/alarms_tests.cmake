# H4 alarms (label carbon): plan validation and versions, hysteresis, projection,
# BELOW at period end, attribution, acknowledgement, delete, persistence across
# reopen, ListAlarms filters and pagination, publish order, the watcher hub.
cityos_test(carbon_plans_test LABEL carbon
  SOURCES ${CMAKE_CURRENT_LIST_DIR}/plans_test.cc
  LIBS cityos_carbon_alarms)
