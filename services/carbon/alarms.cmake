# H4 alarms: plans (budgets per account / region and period) and the alarm
# engine (raise / update / acknowledge / clear with hysteresis, SQLite
# alarms.db), plus the AlarmWatchers hub that WatchAlarms streams from.
add_library(cityos_carbon_alarms STATIC
  ${CMAKE_CURRENT_LIST_DIR}/plans.cc
  ${CMAKE_CURRENT_LIST_DIR}/plans.h
  ${CMAKE_CURRENT_LIST_DIR}/touched.h)
target_include_directories(cityos_carbon_alarms PUBLIC ${CMAKE_CURRENT_LIST_DIR})
target_include_directories(cityos_carbon_alarms PRIVATE ${PROJECT_SOURCE_DIR}/services/infobank)
target_compile_options(cityos_carbon_alarms PRIVATE ${CITYOS_WARNINGS})
target_link_libraries(cityos_carbon_alarms PUBLIC cityos cityos_carbon_model
                      PRIVATE SQLite::SQLite3)
