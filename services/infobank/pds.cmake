# Personal data store (AES-256-GCM per person, crypto-shredding), benefits
# ledger, provision history (issue 6, part PDS).
target_sources(cityos_infobank PRIVATE
  ${CMAKE_CURRENT_LIST_DIR}/benefits.cc
  ${CMAKE_CURRENT_LIST_DIR}/personal_store.cc
  ${CMAKE_CURRENT_LIST_DIR}/provision.cc)
