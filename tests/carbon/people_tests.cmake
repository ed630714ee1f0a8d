# H3 people: green-behaviour credits (rules CSV, caps, event mapping, ledger)
# and the incentive ledger. The credits test reads the real reference CSV.
cityos_test(carbon_credits_test LABEL carbon
  SOURCES ${CMAKE_CURRENT_LIST_DIR}/credits_test.cc
  LIBS cityos_carbon_people
  DEFINES CITYOS_GREEN_CREDITS_CSV="${PROJECT_SOURCE_DIR}/config/carbon/green-behaviour-credits.csv")
cityos_test(carbon_incentives_test LABEL carbon
  SOURCES ${CMAKE_CURRENT_LIST_DIR}/incentives_test.cc
  LIBS cityos_carbon_people)
