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

// Empty when the mma family runs these options' method and formats on a
// device with `caps`; otherwise the reason. Inline: the host path picks the
// geometry it emulates by the same rule in builds without mma code
// (detail::emulated_geometry).
inline std::string unsupported_format_reason(const AttentionOptions& o, const MmaCapabilities& caps) {
  if (o.method != Method::sage2) return std::string("method ") + method_name(o.method) + " has no mma.sync kernel yet";
  switch (o.pv_format) {
    case PVFormat::fp8_e4m3:
      if (!caps.fp8_mma) {
        return "pv_format fp8-e4m3 needs FP8 mma.sync: compute capability 8.9 or newer and this build compiled "
               "for sm_89 or newer (add 89 to SAGE_CUDA_ARCHS); sm_80/sm_86 have no FP8 tensor cores, use "
               "pv_format fp16 there";
      }
      if (o.pv_accum != PVAccum::two_level) return "pv_accum fp32 with FP8 PV has no mma.sync kernel (use two_level)";
      return {};
    case PVFormat::fp16: return {};  // fp32 and two_level accumulation
    default:
      return std::string("pv_format ") + pv_format_name(o.pv_format) +
             " has no mma.sync kernel yet (fp8-e4m3 and fp16 so far)";
  }
}

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
