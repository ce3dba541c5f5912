// Quantization pre-pass of the SageAttention2 GPU path: two launches, no
// allocation, no host synchronization.
//
//   1. kv_stats: per (batch, kv-head, chunk of keys), per channel: the sum
//      of K (smooth K), and the sum / max / min of V (V scale, smooth V).
//   2. quantize: one grid with three kinds of CTAs, each on a 128-row tile:
//        Q: INT8 with the granularity's scale groups (sm_scale*log2 e folded
//           into the scale), plus q . mean_k * sm_scale per row for the LSE;
//        K: K - mean_k, INT8 per group;
//        V: (V - mean_v) / v_scale[channel] in FP8 E4M3, written transposed
//           (V^T [Dp][Nk_pad]) with the keys of each 32-key chunk permuted
//           into the order of the kernel's P fragment.
// Head dims are padded with zeros to Dp (64 or 128) here, so the attention
// kernel only sees its native tile widths.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "sage/options.h"

namespace sage::quant {

// Strides in elements of a [B, H, N, D] view whose D stride is 1.
struct StridedInput {
  const void* data = nullptr;
  std::int64_t stride_b = 0, stride_h = 0, stride_n = 0;
};

struct PrepassProblem {
  int batch = 0, heads_q = 0, heads_kv = 0, nq = 0, nk = 0;
  int head_dim = 0, head_dim_padded = 0;
  bool bf16 = true;  // inputs are bf16 (else fp16)
  Granularity granularity = Granularity::per_warp;
  float sm_scale = 0.f;
  bool smooth_k = true, smooth_v = false, lse_correction = false;
};

struct PrepassBuffers {
  std::int8_t* q = nullptr;      // [B*Hq][Nq][Dp]
  std::int8_t* k = nullptr;      // [B*Hkv][Nk][Dp]
  std::uint8_t* vt = nullptr;    // [B*Hkv][Dp][Nk_pad], FP8 E4M3
  float* q_scale = nullptr;      // [B*Hq][q_groups]
  float* k_scale = nullptr;      // [B*Hkv][k_groups]
  float* v_scale = nullptr;      // [B*Hkv][Dp]
  float* v_mean = nullptr;       // [B*Hkv][Dp] (zeros unless smooth_v)
  float* lse_corr = nullptr;     // [B*Hq][Nq] (only with lse_correction)
  float* k_partial = nullptr;    // [B*Hkv][chunks][Dp]
  float* v_partial = nullptr;    // [B*Hkv][chunks][3][Dp]
};

struct PrepassLayout {
  int head_dim_padded = 0;
  int nk_padded = 0;  // V^T row length: Nk rounded up to 16 keys (TMA stride rule)
  int q_groups = 0, k_groups = 0;
  int chunks = 0, chunk_len = 0;
  std::size_t bytes = 0;
  PrepassBuffers carve(void* workspace) const;

 private:
  friend PrepassLayout make_prepass_layout(const PrepassProblem& p);
  std::size_t off_q = 0, off_k = 0, off_vt = 0, off_q_scale = 0, off_k_scale = 0, off_v_scale = 0,
              off_v_mean = 0, off_lse_corr = 0, off_k_partial = 0, off_v_partial = 0;
};

PrepassLayout make_prepass_layout(const PrepassProblem& p);

// Enqueues both pre-pass kernels on `stream`.
cudaError_t launch_prepass(const PrepassProblem& p, const PrepassLayout& layout, const PrepassBuffers& out,
                           StridedInput q, StridedInput k, StridedInput v, cudaStream_t stream);

// Position -> key inside a 32-key chunk of V^T: the key whose P value the
// kernel's FP8 A fragment holds at that position (see the sm90 softmax).
__host__ __device__ constexpr int vt_key_of_position(int pos) {
  const int half = pos / 16, quad = (pos % 16) / 4, i = pos % 4;
  return 16 * half + 8 * (i / 2) + 2 * quad + (i % 2);
}

}  // namespace sage::quant
