// The two pre-pass kernels (see prepass.h for what they produce).
#include "cuda/quant/prepass.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>

#include "numerics/formats.h"
#include "numerics/tile_geometry.h"

namespace sage::quant {
namespace {

constexpr int kThreads = 256;
constexpr int kTileRows = 128;  // rows of one job tile: whole groups (prepass_supports_geometry)
constexpr int kMaxChunks = 32;  // key chunks of the statistics pass
constexpr int kVec = 8;         // elements per 16-byte load
constexpr float kE4m3Max = 448.f;
constexpr int kTilePad = 32;
#ifndef SAGE_PREPASS_MIN_BLOCKS
#define SAGE_PREPASS_MIN_BLOCKS 2  // CTAs per SM the quantize kernel's registers must allow
#endif
static_assert(16 * (kThreads / 32) == kTileRows, "one warp per 16-row slice");

std::size_t align_up(std::size_t x, std::size_t a) { return (x + a - 1) / a * a; }

template <typename T>
__device__ __forceinline__ float to_float(T x);
template <>
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
template <>
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }

// Reads 8 consecutive channels [c0, c0+8) of one row (zeros past head_dim or
// past the last row). Vec: the row start and c0 are 16-byte aligned and
// head_dim is a multiple of 8, so one 16-byte load does.
template <typename T, bool Vec>
__device__ __forceinline__ void load8(const T* row, bool row_ok, int c0, int head_dim, float (&x)[kVec]) {
  if (Vec && row_ok && c0 < head_dim) {
    const uint4 raw = *reinterpret_cast<const uint4*>(row + c0);
    const T* e = reinterpret_cast<const T*>(&raw);
#pragma unroll
    for (int i = 0; i < kVec; ++i) x[i] = to_float(e[i]);
    return;
  }
#pragma unroll
  for (int i = 0; i < kVec; ++i) x[i] = (row_ok && c0 + i < head_dim) ? to_float(row[c0 + i]) : 0.f;
}

// Hardware conversions for the hot loops. numerics/formats.h (what the CPU
// emulation runs) is portable bit arithmetic, tens of instructions per value;
// tests/gpu/test_numerics_cvt.cu checks over all 2^32 floats that it equals
// these instructions bit for bit, so the two paths agree exactly.
// qmax: 127 (INT8) or 7 (INT4).
__device__ __forceinline__ int quantize_int(float x, float inv_scale, int qmax) {
  const int q = __float2int_rn(x * inv_scale);  // cvt.rni.s32.f32: ties to even, NaN -> 0, saturating
  return q > qmax ? qmax : (q < -qmax ? -qmax : q);
}
__device__ __forceinline__ uint32_t fp8_e4m3_code(float x) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
  uint16_t pair;
  asm("cvt.rn.satfinite.e4m3x2.f32 %0, %1, %2;\n" : "=h"(pair) : "f"(0.f), "f"(x));
  return pair & 0xFFu;  // x is the low byte
#else
  return num::fp8_e4m3_from_float(x);
#endif
}

__device__ __forceinline__ void atomic_max_nonneg(float* slot, float v) {
  // Non-negative floats order like their bit patterns.
  atomicMax(reinterpret_cast<unsigned*>(slot), __float_as_uint(v));
}

// ---- 1. statistics ----------------------------------------------------------
template <typename T, bool Vec>
__global__ void __launch_bounds__(kThreads) kv_stats_kernel(PrepassProblem p, PrepassLayout layout, PrepassBuffers out,
                                                             StridedInput k_in, StridedInput v_in) {
  extern __shared__ float red[];  // [row_lanes][Dp]
  const int dp = layout.head_dim_padded;
  const int lanes_per_row = dp / kVec;
  const int row_lanes = kThreads / lanes_per_row;
  const int c0 = (threadIdx.x % lanes_per_row) * kVec;
  const int rl = threadIdx.x / lanes_per_row;
  const int chunk = blockIdx.x;
  const int bh_kv = blockIdx.y;
  const int b = bh_kv / p.heads_kv, h = bh_kv % p.heads_kv;
  const T* k_base = static_cast<const T*>(k_in.data) + b * k_in.stride_b + h * k_in.stride_h;
  const T* v_base = static_cast<const T*>(v_in.data) + b * v_in.stride_b + h * v_in.stride_h;
  const int start = chunk * layout.chunk_len;
  const int end = min(p.nk, start + layout.chunk_len);

  float ksum[kVec] = {}, vsum[kVec] = {}, vmax[kVec], vmin[kVec];
#pragma unroll
  for (int i = 0; i < kVec; ++i) vmax[i] = -INFINITY, vmin[i] = INFINITY;
  for (int r = start + rl; r < end; r += row_lanes) {
    float x[kVec];
    if (p.smooth_k) {
      load8<T, Vec>(k_base + r * k_in.stride_n, true, c0, p.head_dim, x);
#pragma unroll
      for (int i = 0; i < kVec; ++i) ksum[i] += x[i];
    }
    load8<T, Vec>(v_base + r * v_in.stride_n, true, c0, p.head_dim, x);
#pragma unroll
    for (int i = 0; i < kVec; ++i) vsum[i] += x[i], vmax[i] = fmaxf(vmax[i], x[i]), vmin[i] = fminf(vmin[i], x[i]);
  }

  // Reduce the row lanes of each quantity through shared memory, in a fixed
  // order so that results are deterministic.
  auto reduce_into = [&](const float (&mine)[kVec], float* dst, int op) {  // op: 0 sum, 1 max, 2 min
#pragma unroll
    for (int i = 0; i < kVec; ++i) red[rl * dp + c0 + i] = mine[i];
    __syncthreads();
    for (int c = threadIdx.x; c < dp; c += kThreads) {
      float acc = red[c];
      for (int j = 1; j < row_lanes; ++j) {
        const float y = red[j * dp + c];
        acc = op == 0 ? acc + y : (op == 1 ? fmaxf(acc, y) : fminf(acc, y));
      }
      dst[c] = acc;
    }
    __syncthreads();
  };
  const std::int64_t slot = static_cast<std::int64_t>(bh_kv) * layout.chunks + chunk;
  if (p.smooth_k) reduce_into(ksum, out.k_partial + slot * dp, 0);
  float* vp = out.v_partial + slot * 3 * dp;
  reduce_into(vsum, vp, 0);
  reduce_into(vmax, vp + dp, 1);
  reduce_into(vmin, vp + 2 * dp, 2);
}

// ---- 2. quantization -----------------------------------------------------------
struct QuantShared {
  float mean[128];       // mean_k (Q, K jobs) or mean_v (V job)
  float q_mean[128];     // Q job with smooth_q: the tile's channel mean
  float inv_scale[128];  // V job: 1 / v_scale per channel
  float amax[64];        // per scale group of the tile
  // V job: FP8 tile [key][channel] before the transpose. Rows are padded by
  // 32 bytes: a warp's 8-byte stores (8 rows x 4 column groups) then fall on
  // distinct banks two at a time, the least an 8-byte access allows.
  alignas(16) uint8_t tile[kTileRows * (128 + kTilePad)];
};

// Mean of K (sum partials / nk) or, for V, the mean, the scale and its
// reciprocal per channel; `write_v` publishes the V scale and mean.
__device__ void finalize_stats(const PrepassProblem& p, const PrepassLayout& layout, const PrepassBuffers& out,
                               int bh_kv, bool v_job, bool write_v, QuantShared& sh) {
  const int dp = layout.head_dim_padded;
  for (int c = threadIdx.x; c < dp; c += kThreads) {
    if (!v_job) {
      float sum = 0.f;
      // Unrolled so that the partials' loads are in flight together: this
      // chain sits at the start of every CTA.
      if (p.smooth_k) {
#pragma unroll 8
        for (int j = 0; j < layout.chunks; ++j) sum += out.k_partial[(static_cast<std::int64_t>(bh_kv) * layout.chunks + j) * dp + c];
      }
      sh.mean[c] = p.smooth_k ? sum / static_cast<float>(p.nk) : 0.f;
      continue;
    }
    float sum = 0.f, mx = -INFINITY, mn = INFINITY;
#pragma unroll 8
    for (int j = 0; j < layout.chunks; ++j) {
      const float* vp = out.v_partial + (static_cast<std::int64_t>(bh_kv) * layout.chunks + j) * 3 * dp;
      sum += vp[c];
      mx = fmaxf(mx, vp[dp + c]);
      mn = fminf(mn, vp[2 * dp + c]);
    }
    const float mean = p.smooth_v ? sum / static_cast<float>(p.nk) : 0.f;
    // fl(v - mean) is monotonic in v, so its extremes come from max and min.
    const float amax = fmaxf(fabsf(mx - mean), fabsf(mn - mean));
    const float scale = num::symmetric_scale(amax, static_cast<int>(kE4m3Max));
    sh.mean[c] = mean;
    sh.inv_scale[c] = num::reciprocal_rn(scale);
    if (write_v) {
      out.v_scale[static_cast<std::int64_t>(bh_kv) * dp + c] = scale;
      out.v_mean[static_cast<std::int64_t>(bh_kv) * dp + c] = mean;
    }
  }
}

// This thread's share of a 128-row tile: rows (16 * warp + lane/4) and +8,
// channels 32*i + 8*(lane%4) + [0, 8) for i < Dp/32. The inputs stay in
// their 16-bit form (half the registers of floats, which lets four CTAs
// share an SM) and are converted - and smoothed - where they are used.
// Rows past the end read as 0, also when a mean is subtracted.
template <typename T, int Dp>
struct TileFragment {
  T raw[2][Dp / 32][kVec];
  bool row_ok[2];
  const float* mean = nullptr;  // per channel, subtracted on use; or null

  static __device__ __forceinline__ int row(int r) { return 16 * (threadIdx.x / 32) + (threadIdx.x % 32) / 4 + 8 * r; }
  static __device__ __forceinline__ int col(int i) { return 32 * i + 8 * (threadIdx.x % 4); }
  __device__ __forceinline__ float x(int r, int i, int e) const {
    if (!row_ok[r]) return 0.f;
    const float v = to_float(raw[r][i][e]);
    return mean ? v - mean[col(i) + e] : v;  // pad channels: 0 - 0
  }
};

// Reads channels [c0, c0+8) of one row as raw 16-bit values (zeros past
// head_dim). Vec: one 16-byte load does (see load8).
template <typename T, bool Vec>
__device__ __forceinline__ void load8_raw(const T* row, int c0, int head_dim, T (&x)[kVec]) {
  if (Vec && c0 < head_dim) {
    const uint4 v = *reinterpret_cast<const uint4*>(row + c0);
    const T* e = reinterpret_cast<const T*>(&v);
#pragma unroll
    for (int i = 0; i < kVec; ++i) x[i] = e[i];
    return;
  }
#pragma unroll
  for (int i = 0; i < kVec; ++i) x[i] = c0 + i < head_dim ? row[c0 + i] : T(0.f);
}

template <typename T, bool Vec, int Dp>
__device__ void load_tile(const StridedInput& in, int b, int h, int row0, int n, int head_dim, const float* mean,
                          TileFragment<T, Dp>& f) {
  const T* base = static_cast<const T*>(in.data) + b * in.stride_b + h * in.stride_h;
  f.mean = mean;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int row = row0 + f.row(r);
    f.row_ok[r] = row < n;
#pragma unroll
    for (int i = 0; i < Dp / 32; ++i) {
      if (f.row_ok[r]) {
        load8_raw<T, Vec>(base + row * in.stride_n, f.col(i), head_dim, f.raw[r][i]);
      } else {
#pragma unroll
        for (int e = 0; e < kVec; ++e) f.raw[r][i][e] = T(0.f);
      }
    }
  }
}

template <typename T, int Dp>
__device__ float row_absmax(const TileFragment<T, Dp>& f, int r) {
  float m = 0.f;
#pragma unroll
  for (int i = 0; i < Dp / 32; ++i)
#pragma unroll
    for (int e = 0; e < kVec; ++e) m = fmaxf(m, fabsf(f.x(r, i, e)));
  return m;
}

// Folds `amax` over the lanes that differ only in their low `lane_bits` bits
// (they share one scale group: both rows of a thread always do), then one
// lane per group publishes it. One shared atomic per group and warp: a whole
// warp hitting one address would serialize.
__device__ __forceinline__ void publish_group_amax(QuantShared& sh, int slot, float amax, int lane_bits) {
  for (int b = 0; b < lane_bits; ++b) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, 1 << b));
  if ((threadIdx.x % 32 & ((1 << lane_bits) - 1)) == 0) atomic_max_nonneg(&sh.amax[slot], amax);
}

// Quantizes the fragment to INT8 (bits 8: one byte per element, rows of Dp
// bytes) or INT4 (bits 4: two's-complement nibbles, the lower-indexed
// element in the low nibble as mma.sync .s4 reads them, rows of Dp / 2
// bytes) with per-row-group scales (group slot of each of the thread's rows
// given) and stores the rows that exist.
template <typename T, int Dp>
__device__ void store_int_tile(const TileFragment<T, Dp>& f, const int (&slot)[2], const QuantShared& sh, int bits,
                               int8_t* dst, int row0, int n) {
  const int qmax = bits == 8 ? 127 : 7;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int row = row0 + f.row(r);
    if (row >= n) continue;
    const float inv = num::reciprocal_rn(num::symmetric_scale(sh.amax[slot[r]], qmax));
#pragma unroll
    for (int i = 0; i < Dp / 32; ++i) {
      uint32_t packed[2] = {0, 0};
      if (bits == 8) {
#pragma unroll
        for (int e = 0; e < kVec; ++e) {
          const int q = quantize_int(f.x(r, i, e), inv, qmax);
          packed[e / 4] |= (static_cast<uint32_t>(q) & 0xFFu) << (8 * (e % 4));
        }
        *reinterpret_cast<uint2*>(dst + static_cast<std::int64_t>(row) * Dp + f.col(i)) =
            make_uint2(packed[0], packed[1]);
      } else {
#pragma unroll
        for (int e = 0; e < kVec; ++e) {
          const int q = quantize_int(f.x(r, i, e), inv, qmax);
          packed[0] |= (static_cast<uint32_t>(q) & 0xFu) << (4 * e);
        }
        *reinterpret_cast<uint32_t*>(dst + static_cast<std::int64_t>(row) * (Dp / 2) + f.col(i) / 2) = packed[0];
      }
    }
  }
}

// Channel mean of the tile's first `rows` rows (the rows that exist) into
// `mean` (shared, Dp floats), as the emulation's block mean: per channel the
// sum over the rows, divided by their count. Warps reduce their 16 rows with
// shuffles, then one thread per channel adds the warps' sums in a fixed
// order (deterministic: no atomics). Ends with a barrier.
template <typename T, int Dp>
__device__ void tile_channel_mean(const TileFragment<T, Dp>& f, QuantShared& sh, int rows, float* mean) {
  constexpr int kWarps = kThreads / 32;
  static_assert(sizeof(float) * kWarps * Dp <= sizeof(sh.tile), "warp sums fit in the (Q job's unused) V tile");
  float* warp_sums = reinterpret_cast<float*>(sh.tile);  // [warp][channel]
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
#pragma unroll
  for (int i = 0; i < Dp / 32; ++i)
#pragma unroll
    for (int e = 0; e < kVec; ++e) {
      float sum = f.x(0, i, e) + f.x(1, i, e);  // rows that do not exist read as 0
      // Lanes with the same lane % 4 hold the same channels of other rows.
      sum += __shfl_xor_sync(0xffffffffu, sum, 4);
      sum += __shfl_xor_sync(0xffffffffu, sum, 8);
      sum += __shfl_xor_sync(0xffffffffu, sum, 16);
      if (lane < 4) warp_sums[warp * Dp + f.col(i) + e] = sum;
    }
  __syncthreads();
  for (int c = threadIdx.x; c < Dp; c += kThreads) {
    float sum = 0.f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) sum += warp_sums[w * Dp + c];
    mean[c] = sum / static_cast<float>(rows);
  }
  __syncthreads();
}

// The integer half of a Q or K job, once the tile is loaded, the statistics
// are in shared memory and the group maxima are cleared: group maxima, INT8
// or INT4 rows (p.qk_bits), and one scale per group (times scale_factor: Q carries
// sm_scale * log2 e into the kernel's scores).
//
// Groups follow `geo` (the attention kernel's geometry). A job tile holds
// whole groups; the last tile of a head may hold fewer groups than a full
// one (cta_k < 128), so only groups below `total_groups` are written.
template <typename T, int Dp>
__device__ void quantize_int_tile(const TileFragment<T, Dp>& f, QuantShared& sh, bool is_query, int bits,
                                  const TileGeometry& geo, Granularity g, int row0, int n, int total_groups,
                                  int8_t* rows, float* scales, float scale_factor) {
  auto group_of = [&](std::int64_t r) { return is_query ? geo.q_group_of(r, g) : geo.k_group_of(r, g); };
  const std::int64_t first_group = group_of(row0);
  int slot[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) slot[r] = static_cast<int>(group_of(row0 + f.row(r)) - first_group);
  // Lanes that share a group: per thread, the 4 lanes of a row quad (Q) or
  // the 8 lanes whose keys share (key % 8) / 2 (K); otherwise the warp.
  const int lane_bits = g != Granularity::per_thread ? 5 : (is_query ? 2 : 3);
  publish_group_amax(sh, slot[0], fmaxf(row_absmax(f, 0), row_absmax(f, 1)), lane_bits);
  __syncthreads();

  store_int_tile(f, slot, sh, bits, rows, row0, n);
  const int groups_full_tile =
      static_cast<int>(is_query ? geo.q_groups(kTileRows, g) : geo.k_groups(kTileRows, g));
  const int groups_here = min(groups_full_tile, total_groups - static_cast<int>(first_group));
  for (int i = threadIdx.x; i < groups_here; i += kThreads)
    scales[first_group + i] = num::symmetric_scale(sh.amax[i], bits == 8 ? 127 : 7) * scale_factor;
}

__device__ __forceinline__ void clear_group_amax(QuantShared& sh) {
  for (int i = threadIdx.x; i < 64; i += kThreads) sh.amax[i] = 0.f;
}

template <typename T, bool Vec, int Dp>
__device__ void quantize_q_tile(const PrepassProblem& p, const PrepassLayout& layout, const PrepassBuffers& out,
                                const StridedInput& in, int job, QuantShared& sh) {
  const int tiles = (p.nq + kTileRows - 1) / kTileRows;
  const int bh = job / tiles, tile = job % tiles;
  const int b = bh / p.heads_q, h = bh % p.heads_q;
  const int bh_kv = b * p.heads_kv + h / (p.heads_q / p.heads_kv);
  const int row0 = tile * kTileRows;
  // The tile's loads go out first; the statistics are reduced while they fly.
  TileFragment<T, Dp> f;
  load_tile<T, Vec, Dp>(in, b, h, row0, p.nq, p.head_dim, nullptr, f);
  if (p.lse_correction) finalize_stats(p, layout, out, bh_kv, false, false, sh);
  clear_group_amax(sh);
  __syncthreads();
  if (p.smooth_q) {
    tile_channel_mean(f, sh, min(kTileRows, p.nq - row0), sh.q_mean);
    for (int c = threadIdx.x; c < Dp; c += kThreads)
      out.q_mean[(static_cast<std::int64_t>(bh) * layout.q_tiles + tile) * Dp + c] = sh.q_mean[c];
    f.mean = sh.q_mean;  // quantize Q - mean_q
  }
  quantize_int_tile(f, sh, true, p.qk_bits, p.geometry, p.granularity, row0, p.nq, layout.q_groups,
                    out.q + static_cast<std::int64_t>(bh) * p.nq * (Dp * p.qk_bits / 8),
                     out.q_scale + static_cast<std::int64_t>(bh) * layout.q_groups, score_scale_log2(p));
  f.mean = nullptr;  // the LSE correction reads the original rows

  if (p.lse_correction) {  // q . mean_k * sm_scale, from the unquantized row
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float dot = 0.f;
#pragma unroll
      for (int i = 0; i < Dp / 32; ++i)
#pragma unroll
        for (int e = 0; e < kVec; ++e) dot = fmaf(f.x(r, i, e), sh.mean[f.col(i) + e], dot);
      dot += __shfl_xor_sync(0xffffffffu, dot, 1);
      dot += __shfl_xor_sync(0xffffffffu, dot, 2);
      const int row = row0 + f.row(r);
      if (threadIdx.x % 4 == 0 && row < p.nq) out.lse_corr[static_cast<std::int64_t>(bh) * p.nq + row] = dot * p.sm_scale;
    }
  }
}

template <typename T, bool Vec, int Dp>
__device__ void quantize_k_tile(const PrepassProblem& p, const PrepassLayout& layout, const PrepassBuffers& out,
                                const StridedInput& in, int job, QuantShared& sh) {
  const int tiles = (p.nk + kTileRows - 1) / kTileRows;
  const int bh_kv = job / tiles, tile = job % tiles;
  const int b = bh_kv / p.heads_kv, h = bh_kv % p.heads_kv;
  const int row0 = tile * kTileRows;
  // The tile's loads go out first; the mean is reduced while they fly.
  TileFragment<T, Dp> f;
  load_tile<T, Vec, Dp>(in, b, h, row0, p.nk, p.head_dim, p.smooth_k ? sh.mean : nullptr, f);
  finalize_stats(p, layout, out, bh_kv, false, false, sh);
  clear_group_amax(sh);
  __syncthreads();
  quantize_int_tile(f, sh, false, p.qk_bits, p.geometry, p.granularity, row0, p.nk, layout.k_groups,
                    out.k + static_cast<std::int64_t>(bh_kv) * p.nk * (Dp * p.qk_bits / 8),
                     out.k_scale + static_cast<std::int64_t>(bh_kv) * layout.k_groups, 1.f);
}

template <typename T, bool Vec, int Dp>
__device__ void quantize_v_tile(const PrepassProblem& p, const PrepassLayout& layout, const PrepassBuffers& out,
                                const StridedInput& in, int job, QuantShared& sh) {
  const int tiles = (p.nk + kTileRows - 1) / kTileRows;
  const int bh_kv = job / tiles, tile = job % tiles;
  const int b = bh_kv / p.heads_kv, h = bh_kv % p.heads_kv;
  const int row0 = tile * kTileRows;
  // The tile's loads go out first; the statistics are reduced while they fly.
  TileFragment<T, Dp> f;
  load_tile<T, Vec, Dp>(in, b, h, row0, p.nk, p.head_dim, p.smooth_v ? sh.mean : nullptr, f);
  finalize_stats(p, layout, out, bh_kv, true, tile == 0, sh);
  __syncthreads();
  if (p.v_format == VFormat::fp16_rows) {
    // Rows of fp16 (RNE, as the emulation's round_to_f16), 8 channels per
    // 16-byte store; rows past nk are not stored (the kernel zero-fills them).
    std::uint16_t* dst = out.v16 + static_cast<std::int64_t>(bh_kv) * p.nk * Dp;
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int row = row0 + f.row(r);
      if (row >= p.nk) continue;
#pragma unroll
      for (int i = 0; i < Dp / 32; ++i) {
        uint32_t packed[4];
#pragma unroll
        for (int e = 0; e < kVec; e += 2) {
          const __half2 pair = __floats2half2_rn(f.x(r, i, e), f.x(r, i, e + 1));
          packed[e / 2] = *reinterpret_cast<const uint32_t*>(&pair);
        }
        *reinterpret_cast<uint4*>(dst + static_cast<std::int64_t>(row) * Dp + f.col(i)) =
            make_uint4(packed[0], packed[1], packed[2], packed[3]);
      }
    }
    return;
  }
  // FP8 into shared memory as [key][channel], 8 channels per store; keys
  // past nk are 0 (x() reads them as 0).
#pragma unroll
  for (int r = 0; r < 2; ++r)
#pragma unroll
    for (int i = 0; i < Dp / 32; ++i) {
      uint32_t packed[2] = {0, 0};
#pragma unroll
      for (int e = 0; e < kVec; ++e) {
        const uint32_t code = fp8_e4m3_code(f.x(r, i, e) * sh.inv_scale[f.col(i) + e]);
        packed[e / 4] |= code << (8 * (e % 4));
      }
      *reinterpret_cast<uint2*>(&sh.tile[f.row(r) * (Dp + kTilePad) + f.col(i)]) = make_uint2(packed[0], packed[1]);
    }
  __syncthreads();

  // Transposed, permuted store: each thread writes one 32-key chunk (a full
  // 32-byte sector) of one channel row of V^T. Neighbouring lanes take
  // neighbouring channels, so their byte reads of the tile hit consecutive
  // words (no bank conflicts).
  constexpr int kChunks = kTileRows / 32;
  uint8_t* vt = out.vt + static_cast<std::int64_t>(bh_kv) * Dp * layout.nk_padded;
  for (int job = threadIdx.x; job < Dp * kChunks; job += kThreads) {
    const int c = job % Dp;
    const int pos0 = (job / Dp) * 32;
    uint32_t words[8] = {0, 0, 0, 0, 0, 0, 0, 0};
#pragma unroll
    for (int e = 0; e < 32; ++e) {
      const int key = pos0 + vt_key_of_position(e);
      words[e / 4] |= static_cast<uint32_t>(sh.tile[key * (Dp + kTilePad) + c]) << (8 * (e % 4));
    }
    uint8_t* dst = vt + static_cast<std::int64_t>(c) * layout.nk_padded + row0 + pos0;
    // nk_padded is a multiple of 16: each half of the chunk is in or out whole.
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      if (row0 + pos0 + 16 * half < layout.nk_padded) {
        *reinterpret_cast<uint4*>(dst + 16 * half) =
            make_uint4(words[4 * half], words[4 * half + 1], words[4 * half + 2], words[4 * half + 3]);
      }
    }
  }
}

template <typename T, bool Vec, int Dp>
__global__ void __launch_bounds__(kThreads, SAGE_PREPASS_MIN_BLOCKS)
    quantize_kernel(PrepassProblem p, PrepassLayout layout, PrepassBuffers out, StridedInput q, StridedInput k,
                    StridedInput v) {
  __shared__ QuantShared sh;
  const int q_jobs = p.batch * p.heads_q * ((p.nq + kTileRows - 1) / kTileRows);
  const int kv_jobs = p.batch * p.heads_kv * ((p.nk + kTileRows - 1) / kTileRows);
  const int job = blockIdx.x;
  if (job < q_jobs) {
    quantize_q_tile<T, Vec, Dp>(p, layout, out, q, job, sh);
  } else if (job < q_jobs + kv_jobs) {
    quantize_k_tile<T, Vec, Dp>(p, layout, out, k, job - q_jobs, sh);
  } else {
    quantize_v_tile<T, Vec, Dp>(p, layout, out, v, job - q_jobs - kv_jobs, sh);
  }
}

bool aligned16(const StridedInput& in) {
  return reinterpret_cast<std::uintptr_t>(in.data) % 16 == 0 && in.stride_b % kVec == 0 && in.stride_h % kVec == 0 &&
         in.stride_n % kVec == 0;
}

template <typename T, bool Vec, int Dp>
cudaError_t launch_typed(const PrepassProblem& p, const PrepassLayout& layout, const PrepassBuffers& out,
                         StridedInput q, StridedInput k, StridedInput v, cudaStream_t stream) {
  const dim3 stats_grid(layout.chunks, p.batch * p.heads_kv);
  const std::size_t stats_smem = sizeof(float) * kThreads * kVec;  // row_lanes * Dp floats
  kv_stats_kernel<T, Vec><<<stats_grid, kThreads, stats_smem, stream>>>(p, layout, out, k, v);
  const int q_jobs = p.batch * p.heads_q * ((p.nq + kTileRows - 1) / kTileRows);
  const int kv_jobs = p.batch * p.heads_kv * ((p.nk + kTileRows - 1) / kTileRows);
  quantize_kernel<T, Vec, Dp><<<q_jobs + 2 * kv_jobs, kThreads, 0, stream>>>(p, layout, out, q, k, v);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_for_type(const PrepassProblem& p, const PrepassLayout& layout, const PrepassBuffers& out,
                            StridedInput q, StridedInput k, StridedInput v, cudaStream_t stream) {
  const bool vec = p.head_dim % kVec == 0 && aligned16(q) && aligned16(k) && aligned16(v);
  if (layout.head_dim_padded == 64)
    return vec ? launch_typed<T, true, 64>(p, layout, out, q, k, v, stream)
               : launch_typed<T, false, 64>(p, layout, out, q, k, v, stream);
  return vec ? launch_typed<T, true, 128>(p, layout, out, q, k, v, stream)
             : launch_typed<T, false, 128>(p, layout, out, q, k, v, stream);
}

}  // namespace

PrepassLayout make_prepass_layout(const PrepassProblem& p) {
  PrepassLayout l;
  l.head_dim_padded = p.head_dim <= 64 ? 64 : 128;
  l.nk_padded = (p.nk + 15) / 16 * 16;
  l.q_groups = static_cast<int>(p.geometry.q_groups(p.nq, p.granularity));
  l.k_groups = static_cast<int>(p.geometry.k_groups(p.nk, p.granularity));
  const int want_chunks = (p.nk + 511) / 512;
  l.chunks = std::max(1, std::min(kMaxChunks, want_chunks));
  l.chunk_len = (p.nk + l.chunks - 1) / l.chunks;

  const std::size_t dp = static_cast<std::size_t>(l.head_dim_padded);
  const std::size_t bhq = static_cast<std::size_t>(p.batch) * p.heads_q;
  const std::size_t bhk = static_cast<std::size_t>(p.batch) * p.heads_kv;
  std::size_t at = 0;
  auto take = [&](std::size_t bytes) {
    const std::size_t off = at;
    at = align_up(at + bytes, 256);  // TMA bases need 16 bytes; 256 keeps rows tidy
    return off;
  };
  const std::size_t row_bytes = dp * p.qk_bits / 8;  // INT8: Dp bytes, INT4: Dp / 2
  l.off_q = take(bhq * p.nq * row_bytes);
  l.off_k = take(bhk * p.nk * row_bytes);
  l.v_format = p.v_format;
  l.off_vt = take(p.v_format == VFormat::fp16_rows ? bhk * p.nk * dp * sizeof(std::uint16_t)
                                                    : bhk * dp * l.nk_padded);
  l.off_q_scale = take(sizeof(float) * bhq * l.q_groups);
  l.off_k_scale = take(sizeof(float) * bhk * l.k_groups);
  l.off_v_scale = take(sizeof(float) * bhk * dp);
  l.off_v_mean = take(sizeof(float) * bhk * dp);
  l.off_lse_corr = take(p.lse_correction ? sizeof(float) * bhq * p.nq : 0);
  l.q_tiles = (p.nq + kTileRows - 1) / kTileRows;
  l.off_q_mean = take(p.smooth_q ? sizeof(float) * bhq * l.q_tiles * dp : 0);
  l.off_k_partial = take(sizeof(float) * bhk * l.chunks * dp);
  l.off_v_partial = take(sizeof(float) * bhk * l.chunks * 3 * dp);
  l.bytes = at;
  return l;
}

PrepassBuffers PrepassLayout::carve(void* workspace) const {
  auto* base = static_cast<std::uint8_t*>(workspace);
  PrepassBuffers b;
  b.q = reinterpret_cast<std::int8_t*>(base + off_q);
  b.k = reinterpret_cast<std::int8_t*>(base + off_k);
  if (v_format == VFormat::fp16_rows) {
    b.v16 = reinterpret_cast<std::uint16_t*>(base + off_vt);
  } else {
    b.vt = base + off_vt;
  }
  b.q_scale = reinterpret_cast<float*>(base + off_q_scale);
  b.k_scale = reinterpret_cast<float*>(base + off_k_scale);
  b.v_scale = reinterpret_cast<float*>(base + off_v_scale);
  b.v_mean = reinterpret_cast<float*>(base + off_v_mean);
  b.lse_corr = off_lse_corr != off_q_mean ? reinterpret_cast<float*>(base + off_lse_corr) : nullptr;
  b.q_mean = off_q_mean != off_k_partial ? reinterpret_cast<float*>(base + off_q_mean) : nullptr;
  b.k_partial = reinterpret_cast<float*>(base + off_k_partial);
  b.v_partial = reinterpret_cast<float*>(base + off_v_partial);
  return b;
}

cudaError_t launch_prepass(const PrepassProblem& p, const PrepassLayout& layout, const PrepassBuffers& out,
                           StridedInput q, StridedInput k, StridedInput v, cudaStream_t stream) {
  return p.bf16 ? launch_for_type<__nv_bfloat16>(p, layout, out, q, k, v, stream)
                : launch_for_type<__half>(p, layout, out, q, k, v, stream);
}

}  // namespace sage::quant
