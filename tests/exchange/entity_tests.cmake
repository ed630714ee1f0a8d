# Entity view, filters and obligations (cityos/entity.h).
cityos_test(exchange_entity_test LABEL exchange
  SOURCES entity_view_test.cc entity_filter_test.cc entity_obligation_test.cc
  LIBS cityos)
