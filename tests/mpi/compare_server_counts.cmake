# Runs mpi_sync_check with 2 workers and 1, then 3 servers; the weight digests must be equal.
foreach(servers 1 3)
  math(EXPR np "${servers} + 2")
  execute_process(
    COMMAND ${MPIRUN} --oversubscribe --bind-to none -np ${np} ${PROGRAM} --servers ${servers}
    OUTPUT_VARIABLE out ERROR_VARIABLE err RESULT_VARIABLE rc TIMEOUT 240)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "${servers} servers: exit ${rc}\n${out}\n${err}")
  endif()
  string(REGEX MATCH "weights digest ([0-9a-f]+)" _ "${out}")
  if(NOT CMAKE_MATCH_1)
    message(FATAL_ERROR "${servers} servers: no digest printed\n${out}")
  endif()
  set(digest_${servers} ${CMAKE_MATCH_1})
endforeach()
if(NOT digest_1 STREQUAL digest_3)
  message(FATAL_ERROR "weights differ: 1 server ${digest_1}, 3 servers ${digest_3}")
endif()
message(STATUS "1 and 3 servers give identical weights (digest ${digest_1})")
