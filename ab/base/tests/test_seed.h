// Seeds of the tests' random inputs: fresh on every run, so that a run tries
// inputs no earlier run saw, and replayable: a failure prints its seed
// (seed_note), and SAGE_TEST_SEED=<seed> makes every fresh_seed() return it.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <random>
#include <string>

namespace sage::test {

inline std::uint64_t fresh_seed() {
  if (const char* env = std::getenv("SAGE_TEST_SEED"); env != nullptr && *env != '\0') {
    return std::strtoull(env, nullptr, 0);
  }
  std::random_device rd;
  return (static_cast<std::uint64_t>(rd()) << 32) ^ rd();
}

inline std::string seed_note(std::uint64_t seed) {
  return "seed " + std::to_string(seed) + " (rerun with SAGE_TEST_SEED=" + std::to_string(seed) + ")";
}

}  // namespace sage::test
