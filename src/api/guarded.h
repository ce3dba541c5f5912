// The exception boundary of the C++ entry points: whatever is thrown below
// them (bad_alloc or length_error from a large host problem, a bug) comes back as a Status.
#pragma once

#include <exception>
#include <new>
#include <stdexcept>
#include <string>

#include "sage/status.h"

namespace sage::detail {

inline Status out_of_host_memory(const char* function) {
  return Status(StatusCode::out_of_memory, std::string(function) + ": out of host memory");
}

// Runs `body` (which returns a Status) and converts any exception into one.
template <class Body>
Status guarded(const char* function, Body&& body) noexcept {
  try {
    return body();
  } catch (const std::bad_alloc&) {
    return out_of_host_memory(function);
  } catch (const std::length_error&) {  // (a host buffer longer than a vector can hold)
    return out_of_host_memory(function);
  } catch (const std::invalid_argument& e) {
    return Status::invalid(std::string(function) + ": " + e.what());
  } catch (const std::exception& e) {
    return Status(StatusCode::internal,
                  std::string(function) + ": unexpected error (please report): " + e.what());
  } catch (...) {
    return Status(StatusCode::internal, std::string(function) + ": unexpected non-standard exception (please report)");
  }
}

}  // namespace sage::detail
