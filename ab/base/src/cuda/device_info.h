// Small CUDA runtime queries for the CLI and the dispatch: which GPUs are
// there, what they are, and which architectures this build has kernels for.
//
// Plain C++ (no CUDA headers), so host-only code can include it. Every
// function behaves on a machine without a driver or GPU: it reports 0
// devices and the CUDA runtime's error text instead of failing.
#pragma once

#include <cstddef>
#include <string>
#include <vector>

namespace sage::cuda {

struct DeviceCount {
  int count = 0;
  std::string error;  // empty when the query succeeded (count may still be 0)
};

// Number of CUDA devices the runtime sees.
DeviceCount device_count();

struct DeviceInfo {
  int ordinal = -1;
  std::string name;
  int cc_major = 0, cc_minor = 0;  // compute capability
  int sm_count = 0;
  std::size_t total_memory = 0;  // bytes
  std::string arch() const;      // "sm_90"
};

// Properties of device `ordinal`; false (and *error set) when it does not
// exist or the runtime fails.
bool device_info(int ordinal, DeviceInfo* info, std::string* error);

// Versions as CUDA encodes them (1000 * major + 10 * minor), 0 if unknown.
int runtime_version();
int driver_version();  // 0 when no driver is installed
// "13.0" from 13000.
std::string version_string(int cuda_version);

// The SAGE_CUDA_ARCHS this library was built with ("90a", "80", ...).
std::vector<std::string> built_archs();
std::string built_archs_string();  // "90a;120a"

// Whether the build has device code that runs on compute capability
// major.minor. Arch-specific targets ("90a") run only on that exact
// capability; plain ones ("80") run on the same major with minor >= it.
bool build_supports(int cc_major, int cc_minor);

// The architecture number (89 for "89", 90 for "90a") of the device code the
// CUDA runtime picks for compute capability major.minor: the largest built
// architecture that runs there (same rule as build_supports); 0 if none.
// Kernels whose instructions need a minimum architecture (FP8 mma.sync:
// 89) check this, not the device's capability alone: an sm_89 GPU running
// a build for "80" executes the sm_80 code.
int device_code_arch(int cc_major, int cc_minor);

}  // namespace sage::cuda
