// Host side of the mma.sync kernel family (sm_80 and newer; src/cuda/mma):
// which calls it runs, how much workspace it needs, and running one
// (pre-pass with kMmaGeometry groups + attention kernel).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "sage/attention.h"

namespace sage::mma {

// What the device (and the code this build has for it) can do.
struct MmaCapabilities {
  bool fp8_mma = false;  // mma.sync ... e4m3: sm_89 and newer, and code built for >= sm_89
};

// Empty when the mma family can run these options and head dim on a device
// with `caps`; otherwise the reason (the caller returns it as not_implemented).
std::string unsupported_reason(const AttentionOptions& options, std::int64_t head_dim, const MmaCapabilities& caps);

std::size_t workspace_bytes(const AttentionArgs& args, const AttentionOptions& options);

// Runs a validated, supported call on the current device, asynchronously on
// `stream`. kernel_only skips the pre-pass (benchmarks: the workspace
// already holds this call's quantized inputs).
Status run(const AttentionArgs& args, const AttentionOptions& options, void* workspace, Stream stream,
           bool kernel_only = false);

}  // namespace sage::mma
