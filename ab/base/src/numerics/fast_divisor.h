// Division by a divisor that is fixed for a whole launch, as one multiply-high,
// an add and a shift instead of the ~20-instruction sequence a GPU runs for a
// division by a runtime value: the pre-pass decodes every job's (head, tile)
// from its block index this way (cuda/quant/prepass.cu).
//
// For a divisor 1 <= d < 2^31 let s = ceil(log2 d) and
// m = floor(2^32 (2^s - d) / d) + 1 (< 2^32). Then for every 0 <= n < 2^31
//   n / d == (umulhi(n, m) + n) >> s
// (Granlund and Montgomery, "Division by invariant integers using
// multiplication", 1994: m + 2^32 is the (32 + s)-bit rounded-up reciprocal
// 2^(32+s) / d, whose error stays below 2^s / n for n < 2^31). The sum
// cannot overflow: umulhi(n, m) < n < 2^31. tests/cpu/test_fast_divisor.cpp
// checks the identity against plain division.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define SAGE_FAST_DIV_HD __host__ __device__
#else
#define SAGE_FAST_DIV_HD
#endif

namespace sage::num {

struct FastDivisor {
  std::uint32_t d = 1, mul = 0, shift = 0;

  // Host side: the constants of divisor d (1 <= d < 2^31).
  static FastDivisor of(std::uint32_t d) {
    FastDivisor f;
    f.d = d;
    while ((std::uint64_t{1} << f.shift) < d) ++f.shift;
    f.mul = static_cast<std::uint32_t>(((std::uint64_t{1} << 32) * ((std::uint64_t{1} << f.shift) - d)) / d + 1);
    return f;
  }

  // n / d for 0 <= n < 2^31.
  SAGE_FAST_DIV_HD std::uint32_t div(std::uint32_t n) const {
#if defined(__CUDA_ARCH__)
    const std::uint32_t hi = __umulhi(n, mul);
#else
    const std::uint32_t hi = static_cast<std::uint32_t>((static_cast<std::uint64_t>(n) * mul) >> 32);
#endif
    return (hi + n) >> shift;
  }

  // n / d and n % d.
  struct QuotientRemainder {
    int quotient, remainder;
  };
  SAGE_FAST_DIV_HD QuotientRemainder divmod(int n) const {
    const int q = static_cast<int>(div(static_cast<std::uint32_t>(n)));
    return {q, n - q * static_cast<int>(d)};
  }
};

}  // namespace sage::num

#undef SAGE_FAST_DIV_HD
