# Generates C++ and gRPC code for every contract under proto/ into one library
# target, cityos_proto, that everything links. One protoc run for all files.
find_program(CITYOS_GRPC_CPP_PLUGIN grpc_cpp_plugin REQUIRED)

# cityos_protoc(<out-var> ROOT <dir> OUT <dir> FILES <relative .proto...>)
# Adds one protoc run generating C++ and gRPC code for FILES (relative to
# ROOT) into OUT, and sets <out-var> to the generated .cc/.h files.
function(cityos_protoc out_var)
  cmake_parse_arguments(P "" "ROOT;OUT" "FILES" ${ARGN})
  set(srcs)
  set(deps)
  foreach(rel ${P_FILES})
    string(REGEX REPLACE "\\.proto$" "" stem ${rel})
    list(APPEND srcs ${P_OUT}/${stem}.pb.cc ${P_OUT}/${stem}.pb.h
                     ${P_OUT}/${stem}.grpc.pb.cc ${P_OUT}/${stem}.grpc.pb.h)
    list(APPEND deps ${P_ROOT}/${rel})
  endforeach()
  add_custom_command(
    OUTPUT ${srcs}
    COMMAND ${CMAKE_COMMAND} -E make_directory ${P_OUT}
    COMMAND protobuf::protoc -I${P_ROOT} --cpp_out=${P_OUT} --grpc_out=${P_OUT}
            --plugin=protoc-gen-grpc=${CITYOS_GRPC_CPP_PLUGIN} ${P_FILES}
    WORKING_DIRECTORY ${P_ROOT}
    DEPENDS ${deps}
    COMMENT "protoc: ${P_FILES}"
    VERBATIM)
  set(${out_var} ${srcs} PARENT_SCOPE)
endfunction()
set(CITYOS_PROTO_ROOT ${PROJECT_SOURCE_DIR}/proto)
set(CITYOS_PROTO_OUT ${PROJECT_BINARY_DIR}/gen)
file(GLOB_RECURSE CITYOS_PROTO_FILES CONFIGURE_DEPENDS
     RELATIVE ${CITYOS_PROTO_ROOT} ${CITYOS_PROTO_ROOT}/cityos/*.proto)
list(SORT CITYOS_PROTO_FILES)

cityos_protoc(_srcs ROOT ${CITYOS_PROTO_ROOT} OUT ${CITYOS_PROTO_OUT}
              FILES ${CITYOS_PROTO_FILES})

add_library(cityos_proto ${_srcs})
target_include_directories(cityos_proto SYSTEM PUBLIC
  $<BUILD_INTERFACE:${CITYOS_PROTO_OUT}>
  $<INSTALL_INTERFACE:${CMAKE_INSTALL_INCLUDEDIR}>)
target_link_libraries(cityos_proto PUBLIC protobuf::libprotobuf gRPC::grpc++)
set_target_properties(cityos_proto PROPERTIES EXPORT_NAME proto)
