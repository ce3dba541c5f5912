// Launch of one instantiation of the mma.sync INT8-QK forward kernel
// (included by the instantiation files only: one per PV precision and head
// dim, so a build compiles them in parallel).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "cuda/common/forward_host.h"

#include "cuda/mma/qk_int8_mma_fwd.cuh"

namespace sage::mma {

template <int Dp, bool Causal, typename OutT, PvMode Pv, int QkBits, bool SmoothQ>
cudaError_t launch_qk_int8_mma(const QkInt8MmaParams& p, cudaStream_t stream) {
  using T = FwdTraits<Dp, Causal, OutT, Pv, QkBits, SmoothQ>;
  constexpr int kSmem = sizeof(FwdSharedStorage<T>);
  static_assert(kSmem <= 99 * 1024, "shared memory per CTA (sm_86/89/120 allow 99 KiB)");
  const dim3 grid(fwd::query_tiles<T>(p), p.batch_heads);  // one CTA per query tile
  return fwd::launch_forward_kernel<T>(qk_int8_mma_kernel<T>, p, grid, kSmem, stream, /*programmatic=*/false);
}

// The eight (causal, output type, smooth_q) instances of one (head dim, PV mode, Q/K bits).
#define SAGE_INSTANTIATE_MMA_FWD_ONE(DP, PV, BITS, CAUSAL, OUT, SMOOTH_Q) \
  template cudaError_t launch_qk_int8_mma<DP, CAUSAL, OUT, PV, BITS, SMOOTH_Q>(const QkInt8MmaParams&, cudaStream_t);
#define SAGE_INSTANTIATE_MMA_FWD(DP, PV, BITS)                               \
  SAGE_INSTANTIATE_MMA_FWD_ONE(DP, PV, BITS, false, __nv_bfloat16, false) \
  SAGE_INSTANTIATE_MMA_FWD_ONE(DP, PV, BITS, true, __nv_bfloat16, false)  \
  SAGE_INSTANTIATE_MMA_FWD_ONE(DP, PV, BITS, false, __half, false)        \
  SAGE_INSTANTIATE_MMA_FWD_ONE(DP, PV, BITS, true, __half, false)         \
  SAGE_INSTANTIATE_MMA_FWD_ONE(DP, PV, BITS, false, __nv_bfloat16, true)  \
  SAGE_INSTANTIATE_MMA_FWD_ONE(DP, PV, BITS, true, __nv_bfloat16, true)   \
  SAGE_INSTANTIATE_MMA_FWD_ONE(DP, PV, BITS, false, __half, true)         \
  SAGE_INSTANTIATE_MMA_FWD_ONE(DP, PV, BITS, true, __half, true)

}  // namespace sage::mma
