# sage_attention._torch_calls (src/torch_calls.cpp), built where the
# configuring Python's torch is a CUDA build with its C++ headers and
# libraries; skipped with a note otherwise (the package then takes the
# portable path). The torch version goes into _torch_build.py, which the
# package checks before it loads the module: a binary built against one
# libtorch must not run under another.
execute_process(
  COMMAND "${Python_EXECUTABLE}" -c
          "import os, torch; r = os.path.dirname(torch.__file__); print(torch.__version__, os.path.join(r, 'include'), os.path.join(r, 'lib'), int(torch._C._GLIBCXX_USE_CXX11_ABI), sep=';')"
  OUTPUT_VARIABLE torch_info OUTPUT_STRIP_TRAILING_WHITESPACE RESULT_VARIABLE torch_rc ERROR_QUIET)
if(NOT torch_rc EQUAL 0)
  message(STATUS "sage_attention._torch_calls: not built (torch does not import in ${Python_EXECUTABLE})")
  return()
endif()
list(GET torch_info 0 SAGE_TORCH_VERSION)
list(GET torch_info 1 torch_include)
list(GET torch_info 2 torch_lib)
list(GET torch_info 3 torch_cxx11_abi)
set(torch_libraries "")
foreach(name IN ITEMS torch_python torch torch_cpu c10 c10_cuda)
  find_library(SAGE_TORCH_LIB_${name} ${name} PATHS "${torch_lib}" NO_DEFAULT_PATH NO_CACHE)
  if(NOT SAGE_TORCH_LIB_${name} OR NOT EXISTS "${torch_include}/torch/csrc/autograd/python_variable.h")
    message(STATUS "sage_attention._torch_calls: not built (torch ${SAGE_TORCH_VERSION} has no lib${name} "
                   "or no C++ headers: a CPU-only or header-less build)")
    return()
  endif()
  list(APPEND torch_libraries "${SAGE_TORCH_LIB_${name}}")
endforeach()
message(STATUS "sage_attention._torch_calls: built against torch ${SAGE_TORCH_VERSION}")

Python_add_library(_torch_calls MODULE WITH_SOABI src/torch_calls.cpp)
target_include_directories(_torch_calls SYSTEM PRIVATE "${torch_include}" "${CUDAToolkit_INCLUDE_DIRS}")
target_compile_definitions(_torch_calls PRIVATE _GLIBCXX_USE_CXX11_ABI=${torch_cxx11_abi})
target_link_libraries(_torch_calls PRIVATE sage_internal ${torch_libraries})
# The libraries are loaded by `import torch` before the package loads the
# module; the run paths are for a stray direct import (build tree: this
# torch; installed: the torch next to the package in site-packages).
set_target_properties(_torch_calls PROPERTIES LIBRARY_OUTPUT_DIRECTORY ${SAGE_PYTHON_STAGE}/sage_attention
                                              BUILD_RPATH "${torch_lib}" INSTALL_RPATH "$ORIGIN/../torch/lib")
set(torch_build_file ${SAGE_PYTHON_STAGE}/sage_attention/_torch_build.py)
file(WRITE ${torch_build_file}
     "# Written by CMake (python/torch_calls.cmake): the torch that _torch_calls was built against.\n"
     "TORCH_VERSION = \"${SAGE_TORCH_VERSION}\"\n")
install(TARGETS _torch_calls LIBRARY DESTINATION sage_attention COMPONENT python)
install(FILES ${torch_build_file} DESTINATION sage_attention COMPONENT python)
