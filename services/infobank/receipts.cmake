# Consent receipts: Kantara Consent Receipt v1.1 signed as compact JWS (EdDSA,
# the bank's Ed25519 key), VerifyReceiptJws, the ISO/IEC TS 27560 export.
target_sources(cityos_infobank PRIVATE ${CMAKE_CURRENT_LIST_DIR}/receipts.cc)
