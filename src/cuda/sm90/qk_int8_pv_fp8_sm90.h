// Host side of the SageAttention2 Hopper path: which calls it runs, how much
// workspace it needs, and running one (pre-pass + attention kernel).
#pragma once

#include <cstddef>
#include <string>

#include "cuda/device_info.h"
#include "sage/attention.h"

namespace sage::sm90 {

// Empty when the sm90 kernel can run these options and head dim; otherwise
// the reason (the caller returns it as not_implemented).
std::string unsupported_reason(const AttentionOptions& options, std::int64_t head_dim);

std::size_t workspace_bytes(const AttentionArgs& args, const AttentionOptions& options);

// Runs a validated, supported call on the current device (`device`: its
// properties, from the dispatch), asynchronously on `stream`. kernel_only
// skips the pre-pass (benchmarks: the workspace already holds this call's
// quantized inputs).
Status run(const AttentionArgs& args, const AttentionOptions& options, const cuda::DeviceInfo& device,
           void* workspace, Stream stream, bool kernel_only = false);

}  // namespace sage::sm90
