# sage_attention._torch_calls (src/torch_calls.cpp), built where the
# configuring Python's torch is a CUDA build with its C++ headers and
# libraries; skipped with a note otherwise (the package then takes the
# portable path). The torch and CUDA versions go into _torch_build.py,
# which the package checks before it loads the module: a binary built
# against one libtorch must not run under another.
execute_process(
  COMMAND "${Python_EXECUTABLE}" -c
          "import os, torch; r = os.path.dirname(torch.__file__); print(torch.__version__, torch.version.cuda, os.path.join(r, 'include'), os.path.join(r, 'lib'), int(torch._C._GLIBCXX_USE_CXX11_ABI), sep=';')"
  OUTPUT_VARIABLE torch_info OUTPUT_STRIP_TRAILING_WHITESPACE
  ERROR_VARIABLE torch_error ERROR_STRIP_TRAILING_WHITESPACE RESULT_VARIABLE torch_rc)
if(NOT torch_rc EQUAL 0)
  string(REGEX REPLACE ".*\n" "" torch_error "${torch_error}")  # the exception's line (may be empty)
  message(STATUS "sage_attention._torch_calls: not built (torch does not import in ${Python_EXECUTABLE}: ${torch_error})")
  return()
endif()
list(GET torch_info 0 SAGE_TORCH_VERSION)
list(GET torch_info 1 SAGE_TORCH_CUDA)
list(GET torch_info 2 torch_include)
list(GET torch_info 3 torch_lib)
list(GET torch_info 4 torch_cxx11_abi)
if(SAGE_TORCH_CUDA STREQUAL "None" OR NOT EXISTS "${torch_include}/torch/csrc/autograd/python_variable.h")
  message(STATUS "sage_attention._torch_calls: not built (torch ${SAGE_TORCH_VERSION} is a CPU-only build "
                 "or has no C++ headers)")
  return()
endif()
# The module speaks torch's C++ API and passes std::string-carrying types
# (sage::Status) to _C's core, which is built with the compiler's default
# std::string ABI: torch's must be that one.
include(CheckCXXSourceCompiles)
check_cxx_source_compiles("#include <string>\n#if _GLIBCXX_USE_CXX11_ABI != ${torch_cxx11_abi}\n#error\n#endif\nint main() {}"
                          SAGE_CXX_ABI_IS_TORCHS_${torch_cxx11_abi})
if(NOT SAGE_CXX_ABI_IS_TORCHS_${torch_cxx11_abi})
  message(STATUS "sage_attention._torch_calls: not built (torch ${SAGE_TORCH_VERSION} uses another std::string "
                 "ABI than this compiler's default, _GLIBCXX_USE_CXX11_ABI=${torch_cxx11_abi})")
  return()
endif()
set(torch_libraries "")
foreach(name IN ITEMS torch_python torch torch_cpu c10 c10_cuda)
  find_library(SAGE_TORCH_LIB_${name} ${name} PATHS "${torch_lib}" NO_DEFAULT_PATH NO_CACHE)
  if(NOT SAGE_TORCH_LIB_${name})
    message(STATUS "sage_attention._torch_calls: not built (torch ${SAGE_TORCH_VERSION} has no lib${name})")
    return()
  endif()
  list(APPEND torch_libraries "${SAGE_TORCH_LIB_${name}}")
endforeach()
message(STATUS "sage_attention._torch_calls: built against torch ${SAGE_TORCH_VERSION} (CUDA ${SAGE_TORCH_CUDA})")

Python_add_library(_torch_calls MODULE WITH_SOABI src/torch_calls.cpp)
target_include_directories(_torch_calls SYSTEM PRIVATE "${torch_include}" "${CUDAToolkit_INCLUDE_DIRS}")
# The core's headers only (those sage_internal and sage_attention export): its
# code is _C's, reached through a capsule (src/framework_entries.h).
target_include_directories(_torch_calls PRIVATE $<TARGET_PROPERTY:sage_internal,INTERFACE_INCLUDE_DIRECTORIES>
                                                $<TARGET_PROPERTY:sage_attention,INTERFACE_INCLUDE_DIRECTORIES>)
target_compile_features(_torch_calls PRIVATE cxx_std_20)
target_link_libraries(_torch_calls PRIVATE ${torch_libraries})
# The libraries are loaded by `import torch` before the package loads the
# module; the run paths are for a stray direct import (build tree: this
# torch; installed: the torch next to the package in site-packages).
set_target_properties(_torch_calls PROPERTIES LIBRARY_OUTPUT_DIRECTORY ${SAGE_PYTHON_STAGE}/sage_attention
                                              BUILD_RPATH "${torch_lib}" INSTALL_RPATH "$ORIGIN/../torch/lib")
set(torch_build_file ${SAGE_PYTHON_STAGE}/sage_attention/_torch_build.py)
file(WRITE ${torch_build_file}
     "# Written by CMake (python/torch_calls.cmake): the torch that _torch_calls was built against.\n"
     "TORCH_VERSION = \"${SAGE_TORCH_VERSION}\"\n"
     "TORCH_CUDA = \"${SAGE_TORCH_CUDA}\"\n")
install(TARGETS _torch_calls LIBRARY DESTINATION sage_attention COMPONENT python EXCLUDE_FROM_ALL)
install(FILES ${torch_build_file} DESTINATION sage_attention COMPONENT python EXCLUDE_FROM_ALL)
