// Uses the installed headers and library through both APIs: a rejected call
// must come back with a message naming the bad argument.
#include <sage/c_api.h>
#include <sage/sage.h>

#include <cstdio>
#include <string>

int main() {
  sage::AttentionArgs args;  // every tensor empty: q must be named
  sage::Status st = sage::validate_attention_args(args, sage::AttentionOptions{});
  if (st.is_ok() || st.message().find("q") == std::string::npos) {
    std::fprintf(stderr, "C++ API did not reject empty q: '%s'\n", st.message().c_str());
    return 1;
  }
  sage_options_t opts;
  if (sage_default_options(&opts) != SAGE_OK) return 1;
  if (sage_attention_forward(nullptr, nullptr, nullptr, nullptr, nullptr, &opts, nullptr, 0, nullptr) !=
      SAGE_ERROR_INVALID_ARGUMENT) {
    std::fprintf(stderr, "C API did not reject null tensors\n");
    return 1;
  }
  std::printf("sage-attention %s consumed: %s\n", SAGE_VERSION_STRING, sage_last_error());
  return 0;
}
