// num::FastDivisor (src/numerics/fast_divisor.h) against plain division: the
// host evaluates the same multiply-high, add and shift as the device, so a
// divisor whose constants are right here is right on the GPU.
#include <gtest/gtest.h>

#include <cstdint>
#include <random>
#include <vector>

#include "numerics/fast_divisor.h"
#include "test_seed.h"

namespace {

using sage::num::FastDivisor;

constexpr std::uint32_t kMaxN = (1u << 31) - 1;

// Every dividend near the points where the quotient steps (multiples of d,
// +-2), near 0 and near 2^31, and random ones in between.
std::vector<std::uint32_t> dividends(std::uint32_t d, std::mt19937_64& rng) {
  std::vector<std::uint32_t> n;
  for (std::uint32_t i = 0; i < 64; ++i) n.push_back(i), n.push_back(kMaxN - i);
  std::uniform_int_distribution<std::uint32_t> any(0, kMaxN);
  for (int i = 0; i < 2000; ++i) {
    const std::uint64_t multiple = static_cast<std::uint64_t>(any(rng) / d) * d;
    for (int delta = -2; delta <= 2; ++delta) {
      const std::int64_t x = static_cast<std::int64_t>(multiple) + delta;
      if (x >= 0 && x <= kMaxN) n.push_back(static_cast<std::uint32_t>(x));
    }
    n.push_back(any(rng));
  }
  return n;
}

void expect_exact(std::uint32_t d, std::mt19937_64& rng) {
  const FastDivisor f = FastDivisor::of(d);
  for (std::uint32_t n : dividends(d, rng)) {
    ASSERT_EQ(f.div(n), n / d) << "n = " << n << ", d = " << d;
    const auto [q, r] = f.divmod(static_cast<int>(n));
    ASSERT_EQ(q, static_cast<int>(n / d)) << "n = " << n << ", d = " << d;
    ASSERT_EQ(r, static_cast<int>(n % d)) << "n = " << n << ", d = " << d;
  }
}

TEST(FastDivisor, EqualsDivisionForSmallDivisors) {
  const std::uint64_t seed = sage::test::fresh_seed();
  SCOPED_TRACE(sage::test::seed_note(seed));
  std::mt19937_64 rng(seed);
  for (std::uint32_t d = 1; d <= 4096; ++d) expect_exact(d, rng);
}

TEST(FastDivisor, EqualsDivisionForPowersOfTwoAndTheirNeighbours) {
  const std::uint64_t seed = sage::test::fresh_seed();
  SCOPED_TRACE(sage::test::seed_note(seed));
  std::mt19937_64 rng(seed);
  for (int k = 1; k <= 30; ++k) {
    for (std::int64_t delta = -1; delta <= 1; ++delta) expect_exact(static_cast<std::uint32_t>((1ll << k) + delta), rng);
  }
  expect_exact(kMaxN, rng);
}

TEST(FastDivisor, EqualsDivisionForRandomDivisors) {
  const std::uint64_t seed = sage::test::fresh_seed();
  SCOPED_TRACE(sage::test::seed_note(seed));
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<std::uint32_t> any(1, kMaxN);
  for (int i = 0; i < 300; ++i) expect_exact(any(rng), rng);
}

}  // namespace
