// Status: the result of every public call. Carries a code and a readable
// message that names the offending argument ("q: expected rank 4, got 3").
#pragma once

#include <string>
#include <utility>

namespace sage {

enum class StatusCode {
  ok = 0,
  invalid_argument = 1,   // the caller passed something we cannot accept
  not_implemented = 2,    // a valid request that this build has no kernel for yet
  unsupported_device = 3, // the GPU (or its absence) cannot run the request
  cuda_error = 4,         // the CUDA runtime reported an error
  internal = 5,           // a bug in the library: please report it
  out_of_memory = 6,      // a host allocation failed: the problem does not fit in memory
};

const char* status_code_name(StatusCode code);

class [[nodiscard]] Status {
 public:
  Status() = default;  // ok
  Status(StatusCode code, std::string message) : code_(code), message_(std::move(message)) {}

  static Status ok() { return {}; }
  static Status invalid(std::string message) { return {StatusCode::invalid_argument, std::move(message)}; }

  bool is_ok() const { return code_ == StatusCode::ok; }
  explicit operator bool() const { return is_ok(); }
  StatusCode code() const { return code_; }
  const std::string& message() const { return message_; }

 private:
  StatusCode code_ = StatusCode::ok;
  std::string message_;
};

}  // namespace sage
