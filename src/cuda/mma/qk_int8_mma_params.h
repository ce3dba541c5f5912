// Parameters of the mma.sync INT8-QK forward kernels (FP8 or FP16 PV), built
// on the host from the pre-pass buffers (src/cuda/quant/prepass.h, produced
// with kMmaGeometry groups) and passed by value (__grid_constant__).
#pragma once

#include <cstdint>

#include "sage/options.h"

namespace sage::mma {

// The P V stage of a kernel instantiation (see qk_int8_mma_fwd.cuh).
enum class PvMode { fp8_two_level, fp16_fp32, fp16_two_level };

struct QkInt8MmaParams {
  // Pre-pass outputs. Row-major, head dim zero-padded to Dp:
  //   q_i8  [B*Hq][Nq][Dp]      k_i8 [B*Hkv][Nk][Dp]
  //   vt_fp8 [B*Hkv][Dp][nk_padded], keys permuted inside each 32-key chunk
  //   to match the P fragment (quant::vt_key_of_position), zero past Nk.
  const std::int8_t* q;
  const std::int8_t* k;
  //   (FP8 PV) vt [B*Hkv][Dp][nk_padded] as above, v16 null;
  //   (FP16 PV) v16 [B*Hkv][Nk][Dp] fp16 bits, row-major, vt null.
  const std::uint8_t* vt;
  const std::uint16_t* v16;
  int nk_padded;  // V^T row length (a multiple of 16)

  const float* q_scale;   // [B*Hq][q_groups], sm_scale*log2(e) folded in
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

  int heads_q, heads_kv;
  int nq, nk, head_dim;
  int q_groups, k_groups;  // scale groups per head
  Granularity granularity;
  int causal_shift;     // key j visible to query i iff j <= i + causal_shift
  bool out_pair_store;  // out rows allow aligned 2-element stores
};

}  // namespace sage::mma
