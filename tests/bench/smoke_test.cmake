# bench.smoke: cityos-bench lists its scenarios and runs two tiny scenarios
# (with their NATS peer, or a peer_error when nats-server is missing); every
# output line must be a JSON object with name, value and unit. Then
# exchange.query for a second, with its canned-response peer. No timing is
# checked: benchmarks never decide tests.
#   cmake -DBENCH=/path/to/cityos-bench -P smoke_test.cmake
if(NOT BENCH)
  message(FATAL_ERROR "pass -DBENCH=<path to cityos-bench>")
endif()

# Fails unless the JSON object `line` has every one of the fields after it.
function(require_fields line)
  foreach(field IN LISTS ARGN)
    string(JSON v ERROR_VARIABLE err GET "${line}" ${field})
    if(err)
      message(FATAL_ERROR "line lacks ${field}: ${line}")
    endif()
  endforeach()
endfunction()

execute_process(COMMAND ${BENCH} --list
  OUTPUT_VARIABLE list_out ERROR_VARIABLE list_err RESULT_VARIABLE list_rc)
if(NOT list_rc EQUAL 0)
  message(FATAL_ERROR "cityos-bench --list failed (${list_rc}): ${list_err}")
endif()
foreach(expected bus.inproc.1to1 bus.inproc.1to4 bus.durable.fsync.p16 bus.durable.none.p1
                 bus.grpc.publish_stream.fsync bus.grpc.subscribe bus.replay.disk
                 bus.memory.stalled_subscriber)
  string(FIND "${list_out}" "${expected} " pos)
  if(pos EQUAL -1)
    message(FATAL_ERROR "cityos-bench --list does not name ${expected}:\n${list_out}")
  endif()
endforeach()

execute_process(COMMAND ${BENCH} --filter "^bus\\.(inproc\\.1to1|durable\\.fsync\\.p4)$"
                        --events 2000 --seconds 1
  OUTPUT_VARIABLE run_out ERROR_VARIABLE run_err RESULT_VARIABLE run_rc)
if(NOT run_rc EQUAL 0)
  message(FATAL_ERROR "cityos-bench run failed (${run_rc}):\n${run_out}\n${run_err}")
endif()

string(STRIP "${run_out}" run_out)
string(REPLACE ";" "\\;" run_out "${run_out}")
string(REPLACE "\n" ";" lines "${run_out}")
set(count 0)
foreach(line IN LISTS lines)
  string(JSON type ERROR_VARIABLE err TYPE "${line}")
  if(err OR NOT type STREQUAL "OBJECT")
    message(FATAL_ERROR "not a JSON object: ${line} (${err})")
  endif()
  require_fields("${line}" name value unit)
  string(JSON value_type TYPE "${line}" value)
  if(NOT value_type STREQUAL "NUMBER")
    message(FATAL_ERROR "value is not a number: ${line}")
  endif()
  math(EXPR count "${count} + 1")
endforeach()
if(NOT count EQUAL 2)
  message(FATAL_ERROR "expected 2 lines, got ${count}:\n${run_out}")
endif()

# exchange.query with its peer (the same client against a server answering
# canned bytes): the exchange's answers pass the client's checks (else the
# scenario fails), and the peer ran, here without NATS.
execute_process(COMMAND ${BENCH} --filter "^exchange\\.query$" --seconds 1
  OUTPUT_VARIABLE query_out ERROR_VARIABLE query_err RESULT_VARIABLE query_rc)
if(NOT query_rc EQUAL 0)
  message(FATAL_ERROR "cityos-bench exchange.query failed (${query_rc}):\n${query_out}\n${query_err}")
endif()
string(STRIP "${query_out}" query_out)
# peer_value is null when the peer failed; ratio is there only when it ran.
require_fields("${query_out}" name value peer_value ratio)
message(STATUS "cityos-bench smoke: ${count} well-formed lines, exchange.query with its peer")
