cityos_test(bus_crc32c_test LABEL bus
  SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/crc32c_test.cc
  LIBS Boost::headers)
cityos_test(bus_segmented_log_test LABEL bus
  SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/segmented_log_test.cc)
cityos_test(bus_log_crash_test LABEL bus TIMEOUT 120
  SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/log_crash_test.cc)
cityos_test(bus_log_backend_fsync_test LABEL bus
  SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/log_backend_fsync_test.cc)
# bus_internal::VisibleReader: the hold of a record read past `visible`.
cityos_test(bus_visible_reader_test LABEL bus
  SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/visible_reader_test.cc)
