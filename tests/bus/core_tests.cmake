cityos_test(bus_subject_test LABEL bus
  SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/subject_test.cc)
cityos_test(bus_core_test LABEL bus
  SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/bus_test.cc)
cityos_test(bus_crash_test LABEL bus OWN_MAIN TIMEOUT 300
  SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/bus_crash_test.cc)
cityos_test(bus_repair_process_test LABEL bus
  SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/repair_process_test.cc
  DEFINES CITYOSD_PATH="$<TARGET_FILE:cityosd>")
add_dependencies(bus_repair_process_test cityosd)
cityos_test(bus_event_wire_test LABEL bus
  SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/event_wire_test.cc)
cityos_test(bus_live_queue_test LABEL bus
  SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/live_queue_test.cc)
