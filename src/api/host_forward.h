// The host path of attention_forward: tensors in host memory run through the
// CPU emulation of the same numerics as the GPU kernels (slow; for tests and
// machines without a GPU).
#pragma once

#include <vector>

#include "sage/attention.h"

namespace sage::detail {

// Runs a call that validate_attention_args accepted and whose tensors are
// on the host. Synchronous. Throws std::bad_alloc when the dense copies do
// not fit in memory (attention_forward turns that into a Status).
Status host_attention_forward(const AttentionArgs& args, const AttentionOptions& options);

// Copies a strided 4-D f32/f16/bf16 view in `layout` into dense float
// [B, H, N, D] order, and back (RNE conversion to the view's dtype).
std::vector<float> gather_bhnd(const TensorView& t, TensorLayout layout);
void scatter_bhnd(const float* dense, const TensorView& t, TensorLayout layout);

}  // namespace sage::detail
