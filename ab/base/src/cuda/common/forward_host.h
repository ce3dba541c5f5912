// Host steps both forward kernel families share: the pre-pass problem of a
// call (at the family's tile geometry), its launch, and the common kernel
// parameters.
#pragma once

#include <cuda_runtime.h>

#include <string>

#include "cuda/common/forward_params.h"
#include "cuda/common/kernel_attributes.h"
#include "cuda/common/programmatic_launch.cuh"
#include "cuda/quant/prepass.h"
#include "numerics/tile_geometry.h"
#include "sage/attention.h"

namespace sage::fwd {

Status cuda_status(cudaError_t err, const char* what);

// Launches a forward kernel of traits T (kThreads threads per CTA) over
// `grid` with `smem_bytes` of dynamic shared memory; `programmatic`: under
// the tail of the pre-pass (the kernel must wait for it, see
// cuda/common/programmatic_launch.cuh). (Compiled by nvcc only.)
template <class T, class Params>
cudaError_t launch_forward_kernel(void (*kernel)(Params), const Params& p, dim3 grid, int smem_bytes,
                                  cudaStream_t stream, bool programmatic) {
  // (Needed above 48 KiB.)
  const cudaError_t err = cuda::set_kernel_attribute_once(reinterpret_cast<const void*>(kernel),
                                                          cudaFuncAttributeMaxDynamicSharedMemorySize, smem_bytes);
  if (err != cudaSuccess) return err;
  return pdl::launch(programmatic, kernel, grid, dim3(T::kThreads), smem_bytes, stream, p);
}

// [B, H, N, D] strides of a q/k/v/out view in either layout.
quant::StridedInput strided(const TensorView& t, TensorLayout layout);

// The pre-pass of a validated call whose sizes check_gpu_kernel_limits bounded.
quant::PrepassProblem prepass_problem(const AttentionArgs& args, const AttentionOptions& o, TileGeometry geometry,
                                      quant::VFormat v_format);

// A call's pre-pass: its problem, where its outputs lie in the workspace
// and the buffers carved there.
struct Prepass {
  quant::PrepassProblem problem;
  quant::PrepassLayout layout;
  quant::PrepassBuffers buffers;
};

// Carves `problem`'s outputs out of `workspace` into *out and, unless
// kernel_only (the workspace already holds them: benchmarks), enqueues the
// pre-pass on `stream` (programmatic: see quant::launch_prepass).
Status start_prepass(const AttentionArgs& args, const AttentionOptions& o, const quant::PrepassProblem& problem,
                     void* workspace, cudaStream_t stream, bool kernel_only, bool programmatic, Prepass* out);

// The key offset of query row 0's diagonal (ForwardParams::causal_shift):
// nk - nq where a causal call aligns bottom-right, else 0.
int causal_shift(const AttentionOptions& o, const quant::PrepassProblem& pp);

// Everything in ForwardParams, from the call and its pre-pass.
void fill_forward_params(const AttentionArgs& args, const AttentionOptions& o, const Prepass& prepass,
                         ForwardParams* p);

}  // namespace sage::fwd
