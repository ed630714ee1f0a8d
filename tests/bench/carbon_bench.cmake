# Google Benchmark for the carbon ledger's ingest path (issue 7: >= 1M
# readings/s accounted in-process, one thread, writer on).
if(TARGET cityos_carbon_ledger)
  find_package(benchmark REQUIRED)
  add_executable(carbon_bench ${CMAKE_CURRENT_LIST_DIR}/carbon_bench.cc)
  target_compile_options(carbon_bench PRIVATE ${CITYOS_WARNINGS})
  target_compile_definitions(carbon_bench PRIVATE
    CITYOS_CARBON_FACTORS_CSV="${PROJECT_SOURCE_DIR}/config/carbon/emission-factors.csv")
  target_link_libraries(carbon_bench PRIVATE cityos_carbon_ledger benchmark::benchmark)
endif()
