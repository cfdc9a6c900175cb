# Installs the build tree into a scratch prefix, checks that exactly the public API was installed,
# then configures, builds and runs the consumer against that prefix alone.
file(REMOVE_RECURSE ${WORK})
execute_process(COMMAND ${CMAKE_COMMAND} --install ${BUILD_DIR} --prefix ${WORK}/prefix
  RESULT_VARIABLE rc OUTPUT_QUIET ERROR_VARIABLE err)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "install failed: ${err}")
endif()

# The public API (docs/architecture.md, "Public API"). Nothing else may be installed under
# include/: not the endpoint or its frame handlers, the server, the in-process transport, the
# trainer, thread_annotations.h, or a generated protobuf header.
set(expected
  shardps/base/cluster.h
  shardps/base/layout.h
  shardps/base/optimizer.h
  shardps/base/status.h
  shardps/net/auth.h
  shardps/net/endpoint_options.h
  shardps/net/tcp_transport.h
  shardps/net/transport.h
  shardps/node.h
  shardps/ps/server_options.h
  shardps/storage/checkpoint_registry.h
  shardps/storage/file_system.h
  shardps/storage/safetensors.h
  shardps/worker/checkpoint_driver.h
  shardps/worker/kv_client.h)
if(WITH_MPI)
  list(APPEND expected shardps/net/mpi_transport.h)
endif()
file(GLOB_RECURSE installed RELATIVE ${WORK}/prefix/include ${WORK}/prefix/include/*)
list(SORT expected)
list(SORT installed)
set(extra ${installed})
list(REMOVE_ITEM extra ${expected})
set(missing ${expected})
if(installed)
  list(REMOVE_ITEM missing ${installed})
endif()
if(extra OR missing)
  message(FATAL_ERROR "installed headers are not the public API:\n  installed but not public: ${extra}\n"
                      "  public but not installed: ${missing}")
endif()

execute_process(COMMAND ${CMAKE_COMMAND} -S ${SOURCE} -B ${WORK}/build -DCMAKE_PREFIX_PATH=${WORK}/prefix
  -DCMAKE_BUILD_TYPE=Release -DSHARDPS_INSTALLED_INCLUDE=${WORK}/prefix/include
  RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "configure failed:\n${out}\n${err}")
endif()
execute_process(COMMAND ${CMAKE_COMMAND} --build ${WORK}/build RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "build failed:\n${out}\n${err}")
endif()
execute_process(COMMAND ${WORK}/build/consumer ${WORK}/run RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err
  TIMEOUT 120)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "consumer failed (${rc}):\n${out}\n${err}")
endif()
message(STATUS "${out}")
