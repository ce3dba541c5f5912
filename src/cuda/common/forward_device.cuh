// Device code both forward kernel families share: which key tiles a query
// tile visits, and the epilogue (O / l, the FP8 V scale per channel, the
// smooth-V mean, to the caller's strided output; the LSE).
//
// Kernel traits T provide kBlockQ, kBlockK, kCausal, kDp, kOAcc, kPvFp8 and
// Out. O's register layout (per 8-channel slice j: channels 8j + 2*quad +
// {0,1} of rows[0] in o[4j], o[4j+1] and of rows[1] in o[4j+2], o[4j+3]) is
// the accumulator layout of both wgmma and mma.sync m16n8.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "cuda/common/forward_params.h"

namespace sage::fwd {

// Query tiles of kBlockQ rows per (batch, query head): the host's grids and
// the persistent kernels' work items count them the same way.
template <class T>
__host__ __device__ __forceinline__ int query_tiles(const ForwardParams& p) {
  return (p.nq + T::kBlockQ - 1) / T::kBlockQ;
}

// Number of key tiles query tile `q_tile` must visit (0 when a causal mask
// hides every key from every row of the tile).
template <class T>
__device__ __forceinline__ int key_tiles_for(const ForwardParams& p, int q_tile) {
  const int all = (p.nk + T::kBlockK - 1) / T::kBlockK;
  if (!T::kCausal) return all;
  const int last_row = min(q_tile * T::kBlockQ + T::kBlockQ - 1, p.nq - 1);
  const long long last_key = static_cast<long long>(last_row) + p.causal_shift;
  if (last_key < 0) return 0;
  const long long reach = last_key / T::kBlockK + 1;
  return reach < all ? static_cast<int>(reach) : all;
}

// One work item: query tile q_tile of (batch, query head) bh, which reads
// kv head bh_kv (GQA), over n_tiles key tiles; its rows are first_row ..
// first_row + rows - 1 (the tile's, except in the sm90 kernel's non-causal
// items, whose rows need not be a tile's: noncausal_item).
struct CtaWork {
  int q_tile, bh, bh_kv, n_tiles;
  int first_row, rows;
};
__device__ __forceinline__ int kv_head_of(const ForwardParams& p, int bh) {
  const int b = bh / p.heads_q;
  const int h = bh % p.heads_q;
  return b * p.heads_kv + h / (p.heads_q / p.heads_kv);
}
template <class T>
__device__ __forceinline__ CtaWork work_of(const ForwardParams& p, int q_tile, int bh) {
  const int first_row = q_tile * T::kBlockQ;
  return {q_tile, bh, kv_head_of(p, bh), key_tiles_for<T>(p, q_tile), first_row, min(T::kBlockQ, p.nq - first_row)};
}

// One CTA per work item: the grid is (query tiles, B * Hq); causal grids
// run the longest rows first, so the tail of the grid is short work.
template <class T>
__device__ __forceinline__ CtaWork cta_work(const ForwardParams& p) {
  return work_of<T>(p, T::kCausal ? gridDim.x - 1 - blockIdx.x : blockIdx.x, blockIdx.y);
}

template <typename OutT>
struct OutputConvert;
template <>
struct OutputConvert<__nv_bfloat16> {
  using Pair = __nv_bfloat162;
  static __device__ __forceinline__ __nv_bfloat16 one(float x) { return __float2bfloat16_rn(x); }
  static __device__ __forceinline__ Pair two(float a, float b) { return __floats2bfloat162_rn(a, b); }
};
template <>
struct OutputConvert<__half> {
  using Pair = __half2;
  static __device__ __forceinline__ __half one(float x) { return __float2half_rn(x); }
  static __device__ __forceinline__ Pair two(float a, float b) { return __floats2half2_rn(a, b); }
};

// This thread's per-channel epilogue factors: for each 8-channel slice j,
// channels 8j + 2*quad + {0, 1}. They are read into registers before the
// first output store: read between stores (which may alias them, as far as
// the compiler knows) each one was a dependent global round trip, 11% of the
// sm90 kernel's time at N=4096. The sm90 kernel has its producer copy them
// into shared memory with the item's Q tile, so no global read is left at
// an item's end.
template <class T>
struct ChannelFactors {
  float2 v_scale[T::kDp / 8];
  float2 v_mean[T::kDp / 8];
};
// From this kv head's rows of the factors (v_mean null where smooth V is
// off; v_scale null where PV is not FP8), in global memory (kGlobal: read
// through the read-only path) or in shared memory. Both rows hold kDp
// floats (padded channels included), so every pair is in bounds and 8-byte
// aligned.
template <class T, bool kGlobal>
__device__ __forceinline__ ChannelFactors<T> channel_factors_from(const float* v_scale, const float* v_mean,
                                                                  int quad) {
  auto pair = [](const float* at) {
    const float2* p2 = reinterpret_cast<const float2*>(at);
    return kGlobal ? __ldg(p2) : *p2;
  };
  ChannelFactors<T> f;
#pragma unroll
  for (int j = 0; j < T::kDp / 8; ++j) {
    const int col = 8 * j + 2 * quad;
    f.v_scale[j] = v_scale ? pair(v_scale + col) : make_float2(1.f, 1.f);
    f.v_mean[j] = v_mean ? pair(v_mean + col) : make_float2(0.f, 0.f);
  }
  return f;
}
template <class T>
__device__ __forceinline__ ChannelFactors<T> load_channel_factors(const ForwardParams& p, int bh_kv, int quad) {
  const int64_t row = static_cast<int64_t>(bh_kv) * T::kDp;
  return channel_factors_from<T, /*kGlobal=*/true>(T::kPvFp8 ? p.v_scale + row : nullptr,
                                                   p.v_mean ? p.v_mean + row : nullptr, quad);
}

// Channels 8j + 2*quad + {0, 1} of O row `r` (of the thread's two), times
// inv_l and the V scales, plus the V mean where add_mean.
template <class T>
__device__ __forceinline__ float2 output_pair(const float (&o)[T::kOAcc], const ChannelFactors<T>& f, int r, int j,
                                              float inv_l, bool add_mean) {
  float2 v = make_float2(o[4 * j + 2 * r] * inv_l * f.v_scale[j].x, o[4 * j + 2 * r + 1] * inv_l * f.v_scale[j].y);
  if (add_mean) v.x += f.v_mean[j].x, v.y += f.v_mean[j].y;
  return v;
}

// How the thread's row r is finished: O times inv_l = 1 / l, or 0 for a row
// that saw no key (l == 0: it writes 0); a NaN l (a NaN or an infinity in
// its inputs: num::symmetric_scale) gives a NaN inv_l, so the whole row is
// NaN, not only the channels whose O is. The V mean is added to rows that
// saw keys.
struct RowFinish {
  float inv_l;
  bool add_mean;
};
template <class Softmax>
__device__ __forceinline__ RowFinish row_finish(const ForwardParams& p, const Softmax& softmax, int r) {
  const bool saw_keys = softmax.l[r] != 0.f;
  return {saw_keys ? 1.f / softmax.l[r] : 0.f, p.v_mean != nullptr && saw_keys};
}

// The LSE of row `row` (this thread's row r of two) where the call asks for
// it, with the smoothing correction; written by one thread of the row's quad.
template <class Softmax>
__device__ __forceinline__ void write_lse(const ForwardParams& p, const Softmax& softmax, int r, int row, int bh) {
  if (!p.lse) return;
  float lse = softmax.lse(r);
  if (p.lse_corr && lse != -INFINITY) lse += p.lse_corr[static_cast<int64_t>(bh) * p.nq + row];
  const int b = bh / p.heads_q;
  const int h = bh % p.heads_q;
  p.lse[b * p.lse_stride_b + h * p.lse_stride_h + row * p.lse_stride_n] = lse;
}

// O / l (and the V scales, the V mean) of the thread's two rows to the
// caller's strided output; the LSE.
template <class T, class Softmax>
__device__ __forceinline__ void write_output(const ForwardParams& p, const float (&o)[T::kOAcc],
                                             const Softmax& softmax, const ChannelFactors<T>& f, const int (&rows)[2],
                                             int bh, int quad) {
  using Out = typename T::Out;
  using Convert = OutputConvert<Out>;
  const int b = bh / p.heads_q;
  const int h = bh % p.heads_q;
  // Every channel a real one and pair stores allowed (the usual call): the
  // stores need no per-channel test. Those tests and their branches were
  // most of the epilogue's instructions (ncu, D=128: ~900 per warp and
  // item; the epilogue held 15% of the kernel's samples at 1K keys).
  const bool dense = p.head_dim == T::kDp && p.out_pair_store;

#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int row = rows[r];
    if (row >= p.nq) continue;
    const auto [inv_l, add_mean] = row_finish(p, softmax, r);
    Out* dst = static_cast<Out*>(p.out) + b * p.out_stride_b + h * p.out_stride_h + row * p.out_stride_n + 2 * quad;
    if (dense) {
#pragma unroll
      for (int j = 0; j < T::kDp / 8; ++j) {
        const float2 v = output_pair<T>(o, f, r, j, inv_l, add_mean);
        *reinterpret_cast<typename Convert::Pair*>(dst + 8 * j) = Convert::two(v.x, v.y);
      }
    } else {
#pragma unroll
      for (int j = 0; j < T::kDp / 8; ++j) {
        const int col = 8 * j + 2 * quad;
        if (col >= p.head_dim) continue;
        const float2 v = output_pair<T>(o, f, r, j, inv_l, add_mean);
        if (col + 1 < p.head_dim && p.out_pair_store) {
          *reinterpret_cast<typename Convert::Pair*>(dst + 8 * j) = Convert::two(v.x, v.y);
        } else {
          dst[8 * j] = Convert::one(v.x);
          if (col + 1 < p.head_dim) dst[8 * j + 1] = Convert::one(v.y);
        }
      }
    }
    if (quad == 0) write_lse(p, softmax, r, row, bh);
  }
}

}  // namespace sage::fwd
