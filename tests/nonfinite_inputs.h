// The non-finite values the NaN-propagation tests put into Q or K, one at a
// time (tests/cpu/test_emulation.cpp on the emulation,
// tests/gpu/attention_forward_harness.h on the GPU kernels): a NaN or an
// infinity there must make the rows that use it NaN, never finite and wrong.
#pragma once

#include <limits>

namespace sage::test {

struct NonFiniteInput {
  const char* what;
  bool in_q;  // else in K
  float value;
};

inline constexpr NonFiniteInput kNonFiniteInputs[] = {
    {"NaN in Q", true, std::numeric_limits<float>::quiet_NaN()},
    {"inf in Q", true, std::numeric_limits<float>::infinity()},
    {"NaN in K", false, std::numeric_limits<float>::quiet_NaN()},
    {"inf in K", false, std::numeric_limits<float>::infinity()},
    {"-inf in K", false, -std::numeric_limits<float>::infinity()},
};

}  // namespace sage::test
