// The parameters both forward kernel families (sm90, mma) share: the
// pre-pass scales and means, the caller's output and LSE, the sizes and the
// masking. Each family's Params struct derives from this one and adds how
// its kernel reads the quantized Q/K/V (TMA descriptors or pointers). Built
// on the host by fill_forward_params (forward_host.h), passed by value
// (__grid_constant__).
#pragma once

#include <cstdint>

#include "sage/options.h"

namespace sage::fwd {

struct ForwardParams {
  const float* q_scale;   // [B*Hq][q_groups], sm_scale*log2(e) folded in; null when the kernel quantizes Q
  const float* k_scale;   // [B*Hkv][k_groups]
  const float* v_scale;   // [B*Hkv][Dp], amax/448 per channel (FP8 PV only)
  const float* v_mean;    // [B*Hkv][Dp] or null (smooth_v off)
  const float* lse_corr;  // [B*Hq][Nq] q.mean_k*sm_scale, or null
  const float* q_mean;    // smooth_q: [B*Hq][q_tiles][Dp] mean of each 128-row Q tile, else null
  int q_tiles;
  float scale_log2;  // sm_scale * log2(e), as folded into q_scale (smooth_q's key offsets)

  void* out;  // bf16/fp16, strides in elements
  std::int64_t out_stride_b, out_stride_h, out_stride_n;
  float* lse;  // or null
  std::int64_t lse_stride_b, lse_stride_h, lse_stride_n;

  int batch_heads;  // B * Hq
  int heads_q, heads_kv;
  int nq, nk, head_dim;
  int q_groups, k_groups;  // scale groups per head
  Granularity granularity;
  int causal_shift;     // key j visible to query i iff j <= i + causal_shift
  bool out_pair_store;  // out rows allow aligned 2-element stores
};

}  // namespace sage::fwd
