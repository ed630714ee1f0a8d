# H2 ledger (label carbon): reference vectors, totals per line/site/enterprise/
# region/industry, every quarantine reason, dedup, cumulative readings and
# resets, restatements, rankings, folding, pagination, reopening.
cityos_test(carbon_ledger_test LABEL carbon
  SOURCES ${CMAKE_CURRENT_LIST_DIR}/ledger_test.cc
  LIBS cityos_carbon_ledger
  DEFINES CITYOS_CARBON_FACTORS_CSV="${PROJECT_SOURCE_DIR}/config/carbon/emission-factors.csv")
