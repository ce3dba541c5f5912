// The Python exception a failed sage::Status raises: _C's, which it hands
// _torch_calls too (framework_entries.h), so a call fails the same way
// through either.
#pragma once

#include <Python.h>

#include <string>

#include "sage/sage.h"

// Sets the Python error for a failed status: ValueError for invalid
// arguments, NotImplementedError (a RuntimeError: callers catching that
// still do), MemoryError, RuntimeError otherwise.
inline void set_python_error(const sage::Status& st) {
  switch (st.code()) {
    case sage::StatusCode::invalid_argument: PyErr_SetString(PyExc_ValueError, st.message().c_str()); return;
    case sage::StatusCode::not_implemented:
      PyErr_SetString(PyExc_NotImplementedError, ("not implemented: " + st.message()).c_str());
      return;
    case sage::StatusCode::out_of_memory: PyErr_SetString(PyExc_MemoryError, st.message().c_str()); return;
    default:
      PyErr_SetString(PyExc_RuntimeError,
                      (std::string(sage::status_code_name(st.code())) + ": " + st.message()).c_str());
  }
}
