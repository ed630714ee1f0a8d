# Consent receipts (RECEIPTS): Kantara v1.1 fields, JWS (EdDSA) verification and
# tamper detection, malformed inputs, the ISO/IEC TS 27560 export, and
# `cityosctl consent verify-receipt` run as a subprocess.
cityos_test(infobank_receipts_test LABEL infobank
  SOURCES ${CMAKE_CURRENT_LIST_DIR}/receipts_test.cc
  LIBS cityos_infobank nlohmann_json::nlohmann_json
  DEFINES CITYOSCTL_PATH="$<TARGET_FILE:cityosctl>")
add_dependencies(infobank_receipts_test cityosctl)
