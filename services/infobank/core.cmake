# Consent store, consent checker (the exchange's consent hook), ethics review
# (inside the service), the gRPC service, the plug-in and cityos-infobank
# (CORE).
target_sources(cityos_infobank PRIVATE
  ${CMAKE_CURRENT_SOURCE_DIR}/consent_store.cc
  ${CMAKE_CURRENT_SOURCE_DIR}/consent_checker.cc
  ${CMAKE_CURRENT_SOURCE_DIR}/infobank_service.cc
  ${CMAKE_CURRENT_SOURCE_DIR}/infobank_plugin.cc)

# cityos-infobank: the plug-in as its own process (services/cityosd/standalone.h).
add_executable(cityos-infobank ${CMAKE_CURRENT_SOURCE_DIR}/main.cc)
target_compile_options(cityos-infobank PRIVATE ${CITYOS_WARNINGS})
target_link_libraries(cityos-infobank PRIVATE cityos_standalone cityos_infobank)
install(TARGETS cityos-infobank RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
