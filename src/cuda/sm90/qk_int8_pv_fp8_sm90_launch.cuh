// Launch of one instantiation of the sm90 forward kernel (included by the
// per-head-dim instantiation files only).
#pragma once

#include <cuda_runtime.h>

#include "cuda/common/forward_host.h"

#include "cuda/sm90/qk_int8_pv_fp8_sm90_fwd.cuh"

namespace sage::sm90 {

// The kernel is persistent: `sm_count` CTAs (one per SM; fewer when there
// are fewer work items) loop over the work items of every head
// (qk_int8_pv_fp8_sm90_scheduler.cuh: work_items), except causal calls past
// kCausalPersistentMaxRows query rows per head (one CTA per query tile).

template <int Dp, bool Causal, typename OutT, bool SmoothQ, bool QuantizeQ, bool ClaimsBuild, int Consumers>
cudaError_t launch_qk_int8_pv_fp8_sm90(const QkInt8PvFp8Params& p, int sm_count, cudaStream_t stream) {
  using T = FwdTraits<Dp, Causal, OutT, SmoothQ, QuantizeQ, ClaimsBuild, Consumers>;
  constexpr int kSmem = sizeof(FwdSharedStorage<T>) + 1024;  // + slack for the 1024-byte alignment
  static_assert(kSmem <= 227 * 1024, "shared memory per CTA");
  const long long items = work_items<T>(p);
  const bool persistent = !Causal || p.nq <= kCausalPersistentMaxRows;
  const long long ctas = !persistent || items < sm_count ? items : sm_count;
  const dim3 grid(static_cast<unsigned>(ctas));
  // Programmatic: the kernel's CTAs start under the tail of the pre-pass and
  // wait for it after their prologue.
  return fwd::launch_forward_kernel<T>(qk_int8_pv_fp8_sm90_kernel<T>, p, grid, kSmem, stream, /*programmatic=*/true);
}

// The instances of one head dim: (causal, output type) x (Q from the
// pre-pass, smoothed Q from the pre-pass, Q quantized in the kernel), each
// with its consumer_warpgroups; and at D = 128 the short causal calls'
// instances that quantize Q with two consumers, whose steps run on across
// items, once with static rounds and once with claimed items, and the
// non-causal ones that quantize Q built again with claimed items, for the
// launches beside the concurrent pre-pass (FwdTraits::kMayClaimItems).
#define SAGE_INSTANTIATE_SM90_FWD_ONE(DP, CAUSAL, OUT, SMOOTH_Q, QUANTIZE_Q, CLAIMS, CONSUMERS)                  \
  template cudaError_t launch_qk_int8_pv_fp8_sm90<DP, CAUSAL, OUT, SMOOTH_Q, QUANTIZE_Q, CLAIMS, CONSUMERS>( \
      const QkInt8PvFp8Params&, int, cudaStream_t);
#define SAGE_INSTANTIATE_SM90_FWD_Q(DP, CAUSAL, OUT)                                              \
  SAGE_INSTANTIATE_SM90_FWD_ONE(DP, CAUSAL, OUT, false, false, false, consumer_warpgroups(false)) \
  SAGE_INSTANTIATE_SM90_FWD_ONE(DP, CAUSAL, OUT, true, false, false, consumer_warpgroups(true))   \
  SAGE_INSTANTIATE_SM90_FWD_ONE(DP, CAUSAL, OUT, false, true, false, consumer_warpgroups(false))
#define SAGE_INSTANTIATE_SM90_FWD(DP)                    \
  SAGE_INSTANTIATE_SM90_FWD_Q(DP, false, __nv_bfloat16) \
  SAGE_INSTANTIATE_SM90_FWD_Q(DP, true, __nv_bfloat16)  \
  SAGE_INSTANTIATE_SM90_FWD_Q(DP, false, __half)        \
  SAGE_INSTANTIATE_SM90_FWD_Q(DP, true, __half)
#define SAGE_INSTANTIATE_SM90_FWD_TWO_CONSUMERS_CAUSAL(DP)                       \
  SAGE_INSTANTIATE_SM90_FWD_ONE(DP, true, __nv_bfloat16, false, true, false, 2) \
  SAGE_INSTANTIATE_SM90_FWD_ONE(DP, true, __nv_bfloat16, false, true, true, 2)  \
  SAGE_INSTANTIATE_SM90_FWD_ONE(DP, true, __half, false, true, false, 2)        \
  SAGE_INSTANTIATE_SM90_FWD_ONE(DP, true, __half, false, true, true, 2)
#define SAGE_INSTANTIATE_SM90_FWD_NONCAUSAL_CLAIMS(DP)                                            \
  SAGE_INSTANTIATE_SM90_FWD_ONE(DP, false, __nv_bfloat16, false, true, true, consumer_warpgroups(false)) \
  SAGE_INSTANTIATE_SM90_FWD_ONE(DP, false, __half, false, true, true, consumer_warpgroups(false))

}  // namespace sage::sm90
