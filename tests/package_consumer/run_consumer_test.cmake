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
