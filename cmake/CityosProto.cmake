# Generates C++ and gRPC code for every contract under proto/ into one library
# target, cityos_proto, that everything links. One protoc run for all files.
find_program(CITYOS_GRPC_CPP_PLUGIN grpc_cpp_plugin REQUIRED)
set(CITYOS_PROTO_ROOT ${PROJECT_SOURCE_DIR}/proto)
set(CITYOS_PROTO_OUT ${PROJECT_BINARY_DIR}/gen)
file(GLOB_RECURSE CITYOS_PROTO_FILES CONFIGURE_DEPENDS
     RELATIVE ${CITYOS_PROTO_ROOT} ${CITYOS_PROTO_ROOT}/cityos/*.proto)
list(SORT CITYOS_PROTO_FILES)

set(_srcs)
set(_abs)
foreach(rel ${CITYOS_PROTO_FILES})
  string(REGEX REPLACE "\\.proto$" "" stem ${rel})
  list(APPEND _srcs ${CITYOS_PROTO_OUT}/${stem}.pb.cc ${CITYOS_PROTO_OUT}/${stem}.pb.h)
  # Only files that declare a service get meaningful gRPC stubs, but protoc's
  # grpc plugin emits the files for every input; compile them all.
  list(APPEND _srcs ${CITYOS_PROTO_OUT}/${stem}.grpc.pb.cc ${CITYOS_PROTO_OUT}/${stem}.grpc.pb.h)
  list(APPEND _abs ${CITYOS_PROTO_ROOT}/${rel})
endforeach()

add_custom_command(
  OUTPUT ${_srcs}
  COMMAND ${CMAKE_COMMAND} -E make_directory ${CITYOS_PROTO_OUT}
  COMMAND protobuf::protoc -I${CITYOS_PROTO_ROOT}
          --cpp_out=${CITYOS_PROTO_OUT} --grpc_out=${CITYOS_PROTO_OUT}
          --plugin=protoc-gen-grpc=${CITYOS_GRPC_CPP_PLUGIN}
          ${CITYOS_PROTO_FILES}
  WORKING_DIRECTORY ${CITYOS_PROTO_ROOT}
  DEPENDS ${_abs}
  COMMENT "Generating C++ and gRPC code for ${CMAKE_PROJECT_NAME} contracts"
  VERBATIM)

add_library(cityos_proto ${_srcs})
target_include_directories(cityos_proto SYSTEM PUBLIC
  $<BUILD_INTERFACE:${CITYOS_PROTO_OUT}>
  $<INSTALL_INTERFACE:${CMAKE_INSTALL_INCLUDEDIR}>)
target_link_libraries(cityos_proto PUBLIC protobuf::libprotobuf gRPC::grpc++)
set_target_properties(cityos_proto PROPERTIES EXPORT_NAME proto)
