# Installs the build into a scratch prefix, then configures, builds and runs
# tests/package_consumer against it with find_package(SageAttention CONFIG).
file(REMOVE_RECURSE ${SAGE_WORK_DIR})
set(prefix ${SAGE_WORK_DIR}/prefix)

function(run_step)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  message("${out}")
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "step failed (${rc}): ${ARGN}\n${err}")
  endif()
endfunction()

run_step(${CMAKE_COMMAND} --install ${SAGE_BUILD_DIR} --prefix ${prefix})
run_step(${CMAKE_COMMAND} -S ${SAGE_CONSUMER_SOURCE} -B ${SAGE_WORK_DIR}/build
         -DCMAKE_PREFIX_PATH=${prefix} -DCMAKE_BUILD_TYPE=Release)
run_step(${CMAKE_COMMAND} --build ${SAGE_WORK_DIR}/build)
run_step(${SAGE_WORK_DIR}/build/consumer)
run_step(${SAGE_WORK_DIR}/build/consumer_c)
if(EXISTS ${SAGE_WORK_DIR}/build/consumer_c_short_enums)
  run_step(${SAGE_WORK_DIR}/build/consumer_c_short_enums)
endif()

# A C-only project and a static build: a clear configure error, not thousands
# of undefined C++ symbols at link time.
if(NOT SAGE_LIBRARY_TYPE STREQUAL "STATIC_LIBRARY")
  return()
endif()
execute_process(COMMAND ${CMAKE_COMMAND} -S ${SAGE_CONSUMER_SOURCE}/c_only -B ${SAGE_WORK_DIR}/c_only
                        -DCMAKE_PREFIX_PATH=${prefix}
                RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
if(rc EQUAL 0 OR NOT err MATCHES "enable C\\+\\+ in the project")
  message(FATAL_ERROR "a C-only consumer of the static build was not refused clearly (rc ${rc}):\n${out}\n${err}")
endif()
