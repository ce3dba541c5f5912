// The attention entry points of the C++ API.
//
//   out = softmax(q k^T * sm_scale [+ causal mask]) v      per (batch, head)
//
// Shapes (layout HND; NHD swaps the tokens and heads dimensions):
//   q   [B, Hq,  Nq, D]     k, v [B, Hkv, Nk, D]     out [B, Hq, Nq, D]
//   lse [B, Hq, Nq] fp32, natural log (only when options.return_lse)
// Hq must be a multiple of Hkv (GQA/MQA). Tensors on a GPU run the CUDA
// kernels; tensors on the host run the CPU emulation of the kernel a Hopper
// GPU runs for the same options, bit for bit (slow, for tests and for
// machines without a GPU): the sm90 kernel, or the mma.sync kernels for INT4
// Q K^T or FP16 P V, whose K scale groups span 64 keys instead of 128. (On
// other GPUs, or Hopper without 90a code, the mma.sync kernels run INT8 Q K^T
// with FP8 P V too, with their 64-key groups: there those bits differ from
// the host's.)
#pragma once

#include <cstddef>

#include "sage/options.h"
#include "sage/status.h"
#include "sage/tensor.h"

struct CUstream_st;  // cudaStream_t without including the CUDA headers

namespace sage {

using Stream = CUstream_st*;

struct AttentionArgs {
  TensorView q, k, v, out;
  TensorView lse;  // ignored unless options.return_lse
};

// Bytes of scratch memory attention_forward needs for these arguments (0 for
// host tensors). The library allocates no device memory behind the caller's
// back (the host path does allocate host scratch for its float copies).
Status attention_workspace_size(const AttentionArgs& args, const AttentionOptions& options,
                                std::size_t* bytes);

// Checks every argument and returns invalid_argument with a message naming
// the first offending one. attention_forward calls it; it is public so that
// bindings can fail early.
Status validate_attention_args(const AttentionArgs& args, const AttentionOptions& options);

// Runs one attention call. `workspace` must be device memory of at least
// attention_workspace_size() bytes on the tensors' device (may be null when
// that size is 0). Asynchronous on `stream` for GPU tensors.
// out and lse may share memory with q, k and v (out written over q, in
// place, for one): every input is read before an output can overwrite it.
// They must not overlap each other, nor themselves (invalid_argument).
Status attention_forward(const AttentionArgs& args, const AttentionOptions& options, void* workspace,
                         std::size_t workspace_bytes, Stream stream);

}  // namespace sage
