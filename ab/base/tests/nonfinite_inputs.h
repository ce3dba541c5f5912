// The non-finite values the NaN-propagation tests put into Q, K or V, one at
// a time (tests/cpu/test_emulation.cpp on the emulation,
// tests/gpu/attention_forward_harness.h on the GPU kernels): a NaN or an
// infinity must make the outputs that use it NaN, never finite and wrong.
#pragma once

#include <limits>

namespace sage::test {

struct NonFiniteInput {
  const char* what;
  char tensor;  // 'q', 'k' or 'v'
  float value;
};

inline constexpr NonFiniteInput kNonFiniteInputs[] = {
    {"NaN in Q", 'q', std::numeric_limits<float>::quiet_NaN()},
    {"inf in Q", 'q', std::numeric_limits<float>::infinity()},
    {"-inf in Q", 'q', -std::numeric_limits<float>::infinity()},
    {"NaN in K", 'k', std::numeric_limits<float>::quiet_NaN()},
    {"inf in K", 'k', std::numeric_limits<float>::infinity()},
    {"-inf in K", 'k', -std::numeric_limits<float>::infinity()},
    {"NaN in V", 'v', std::numeric_limits<float>::quiet_NaN()},
    {"inf in V", 'v', std::numeric_limits<float>::infinity()},
};

}  // namespace sage::test
