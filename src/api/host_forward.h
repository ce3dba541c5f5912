// The host path of attention_forward: tensors in host memory run through the
// CPU emulation of the same numerics as the GPU kernels (slow; for tests and
// machines without a GPU).
#pragma once

#include <cstddef>
#include <vector>

#include "api/validate.h"
#include "numerics/tile_geometry.h"
#include "reference/reference.h"
#include "sage/attention.h"

namespace sage::detail {

// The tile geometry whose numerics the host path emulates: that of the
// kernel a Hopper GPU runs for these options. kMmaGeometry (64-key K groups)
// for the formats only the mma.sync kernels run (INT4 Q K^T with FP8 E4M3 or
// FP16 P V, INT8 with FP16 P V); kSm90Geometry for the rest: the sm90 kernel's
// formats, and those no GPU kernel runs yet (E5M2 or BF16 P V, FP8 with fp32
// accumulation, sage3, sagebwd). On other GPUs (sm_89, sm_100, sm_120), or
// Hopper without 90a code, the mma.sync kernels run INT8 Q K^T with FP8 P V
// too, at kMmaGeometry: there the K groups differ from the host's.
const TileGeometry& emulated_geometry(const AttentionOptions& options);

// Runs a call that validate_attention_args accepted and whose tensors are
// on the host. Synchronous. Throws std::bad_alloc when the dense copies do
// not fit in memory (attention_forward turns that into a Status).
Status host_attention_forward(const AttentionArgs& args, const AttentionOptions& options);

// The reference's description of a call: its sizes, mask and resolved
// sm_scale (0 becomes 1/sqrt(head_dim)).
ref::Problem reference_problem(const AttentionDims& dims, const AttentionOptions& options);

// One f32/f16/bf16 element of a host view, read as float (memcpy: host views
// carry no alignment promise) and written back with the kernels' rounding
// (to nearest even). Throw std::logic_error for other dtypes.
float load_element(const std::byte* p, DType dtype);
void store_element(std::byte* p, DType dtype, float value);

// The view with its dimensions reordered to [B, H, N, D], so that one loop
// nest serves both layouts (NHD swaps the heads and tokens dimensions).
TensorView as_bhnd(TensorView t, TensorLayout layout);

// Copies a strided 4-D f32/f16/bf16 view in `layout` into dense float
// [B, H, N, D] order, and back (RNE conversion to the view's dtype).
std::vector<float> gather_bhnd(const TensorView& t, TensorLayout layout);
void scatter_bhnd(const float* dense, const TensorView& t, TensorLayout layout);

}  // namespace sage::detail
