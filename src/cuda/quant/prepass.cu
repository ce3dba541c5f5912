// The two pre-pass kernels (see prepass.h for what they produce).
//
// Both are bound by memory traffic, so they are built to keep many bytes in
// flight per SM at a small register cost, and to spend few instructions per
// element:
//   - input rows travel with cp.async (global -> shared memory), which holds
//     no registers while the bytes are in flight: the quantize kernel's CTAs
//     have their whole 128-row tile in flight at once and stay small enough
//     for several of them to share an SM, and each statistics thread keeps
//     kStatsStages rows in flight;
//   - each pass reads the tile from shared memory in the order that suits
//     it, so a thread's per-channel constants (means, V scales) are a few
//     registers loaded once, and V is transposed straight from the tile.
// The arithmetic of every element and the order of every sum are fixed
// (written out where they are done), so the results are deterministic and
// do not depend on how the work is spread over threads.
#include "cuda/quant/prepass.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cstring>
#include <type_traits>

#include "cuda/common/cluster.cuh"
#include "cuda/common/cluster_launch.h"
#include "cuda/common/kernel_attributes.h"
#include "cuda/common/programmatic_launch.cuh"
#include "cuda/common/ptx_copy.cuh"
#include "cuda/quant/kv_cluster_shape.h"
#include "cuda/quant/quantize_rows.cuh"
#include "numerics/formats.h"
#include "numerics/tile_geometry.h"

namespace sage::quant {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kTileRows = 128;   // rows of one job tile: whole groups (prepass_supports_geometry)
constexpr int kMaxChunks = 32;   // key chunks of the statistics pass
constexpr int kStatsStages = 4;  // rows of K and V in flight per statistics thread
constexpr float kE4m3Max = 448.f;
// CTAs per SM the quantize kernel's registers must allow. 5 (48 registers)
// is also what its 38 KB of shared memory allows at Dp = 128; measured on an
// H200 at B=2 H=32 N=4096 D=128 it ran 106 us, against 111 us with 4 (64
// registers).
#ifndef SAGE_PREPASS_MIN_BLOCKS
#define SAGE_PREPASS_MIN_BLOCKS 5
#endif
static_assert(16 * kWarps == kTileRows, "one warp per 16-row slice");

// Job tiles over n rows of one head.
__host__ __device__ constexpr int job_tiles(int n) { return (n + kTileRows - 1) / kTileRows; }

std::size_t align_up(std::size_t x, std::size_t a) { return (x + a - 1) / a * a; }

template <typename T>
__device__ __forceinline__ float to_float(T x);
template <>
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
template <>
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }

// The bits of a 16-bit input element (0 is +0 in both formats).
__device__ __forceinline__ uint32_t bits16(__nv_bfloat16 x) { return __bfloat16_as_ushort(x); }
__device__ __forceinline__ uint32_t bits16(__half x) { return __half_as_ushort(x); }

// Reads 8 consecutive channels [c0, c0+8) of one row (zeros past head_dim),
// element by element: the path for inputs that 16-byte loads cannot take.
template <typename T>
__device__ __forceinline__ void load8(const T* row, int c0, int head_dim, float (&x)[kVec]) {
#pragma unroll
  for (int i = 0; i < kVec; ++i) x[i] = c0 + i < head_dim ? to_float(row[c0 + i]) : 0.f;
}

using ptx::cp_async_16;  // (cuda/common/ptx_copy.cuh)
using ptx::cp_async_16_hinted;
using ptx::cp_async_commit;
using ptx::cp_async_wait;

__device__ __forceinline__ void atomic_max_nonneg(float* slot, float v) {
  // Non-negative floats order like their bit patterns, and a positive NaN
  // (fabsf, max_nan) above them all: a group maximum stays NaN.
  atomicMax(reinterpret_cast<unsigned*>(slot), __float_as_uint(v));
}

// Whether the statistics kernel and the K / V jobs read K and V with L2
// hints (kv_stats_item, load_tile): only where the heads run in order, the
// schedule the hints were measured on; elsewhere (one statistics CTA per
// item, the mma family's pre-pass, no programmatic overlap) every row is
// read before any K / V job runs, and the hints' effect was not measured.
__device__ __forceinline__ bool l2_hints_for_second_read(const PrepassProblem& p) { return p.stats_ctas > 0; }

// The attention kernel's claim counters to zero, by the first thread of a
// grid: the quantize grid and the cluster kernel, one of which is the
// pre-pass's last grid, the one the attention kernel waits for (a grid
// that runs before it zeroes them too, harmlessly: nothing claims until
// the attention kernel's wait returns).
__device__ __forceinline__ void zero_item_claims(const PrepassBuffers& out) {
  if (blockIdx.x == 0 && blockIdx.y == 0 && threadIdx.x == 0) out.item_claims[0] = out.item_claims[1] = 0;
}

// ---- 1. statistics ----------------------------------------------------------
// Reduces each channel of `red` ([rows][dp] floats, one row per lane group
// of the caller, written before the call) over its rows in row order into
// dst[dp] (op: 0 sum, 1 max, 2 min): a fixed order, so deterministic
// results. Every thread of the CTA takes part; both ends are barriers.
__device__ void reduce_rows(const float* red, int rows, int dp, int op, float* dst) {
  __syncthreads();
  for (int c = threadIdx.x; c < dp; c += kThreads) {
    float acc = red[c];
    for (int j = 1; j < rows; ++j) {
      const float y = red[j * dp + c];
      acc = op == 0 ? acc + y : (op == 1 ? fmaxf(acc, y) : fminf(acc, y));
    }
    dst[c] = acc;
  }
  __syncthreads();
}

// The statistics kernel's items are (batch * kv head, chunk of keys) pairs,
// numbered head-major: item bh_kv * chunks + chunk. Its CTAs take items
// blockIdx.x, blockIdx.x + gridDim.x, ... in order, so that with fewer CTAs
// than items (PrepassProblem::stats_ctas) the heads complete in order and the
// K and V jobs of the first heads run while the statistics of the later heads
// are read. (Their rows were meant to come back from L2; on an H200 at 4K
// keys they mostly do not: docs/perf-notes.md, session 20.) Each item's flag
// in stats_ready says that its partials are written: cleared by its CTA
// before the quantize grid may start (allow_dependent_launch), set once the
// partials are out.

// Thread (rl, c0) accumulates channels [c0, c0+8) of one item over the rows
// start + rl + i * row_lanes in order of i; then the row lanes are reduced
// in a fixed order. Vec (16-byte aligned rows): each thread streams its own
// rows through a private ring of kStatsStages 16-byte shared slots per
// tensor, so that many rows are in flight without holding registers. A
// thread reads back only what it copied itself, so the ring needs no
// barrier.
template <typename T, bool Vec>
__device__ void kv_stats_item(const PrepassProblem& p, const PrepassLayout& layout, const PrepassBuffers& out,
                              const StridedInput& k_in, const StridedInput& v_in, int item, float* red, uint4* ring) {
  const int dp = layout.head_dim_padded;
  const int lanes_per_row = dp / kVec;
  const int row_lanes = kThreads / lanes_per_row;
  const int c0 = (threadIdx.x % lanes_per_row) * kVec;
  const int rl = threadIdx.x / lanes_per_row;
  const int bh_kv = item / layout.chunks, chunk = item % layout.chunks;
  const int b = bh_kv / p.heads_kv, h = bh_kv % p.heads_kv;
  const T* k_base = static_cast<const T*>(k_in.data) + b * k_in.stride_b + h * k_in.stride_h;
  const T* v_base = static_cast<const T*>(v_in.data) + b * v_in.stride_b + h * v_in.stride_h;
  const int start = chunk * layout.chunk_len;
  const int end = min(p.nk, start + layout.chunk_len);

  float ksum[kVec] = {}, vsum[kVec] = {}, vmax[kVec], vmin[kVec];
#pragma unroll
  for (int i = 0; i < kVec; ++i) vmax[i] = -INFINITY, vmin[i] = INFINITY;
  auto accumulate = [&](const float (&xk)[kVec], const float (&xv)[kVec]) {
#pragma unroll
    for (int i = 0; i < kVec; ++i) {
      if (p.smooth_k) ksum[i] += xk[i];
      vsum[i] += xv[i], vmax[i] = fmaxf(vmax[i], xv[i]), vmin[i] = fminf(vmin[i], xv[i]);
    }
  };
  if constexpr (Vec) {
    const int rows = end - start > rl ? (end - start - rl + row_lanes - 1) / row_lanes : 0;
    const bool in_dim = c0 < p.head_dim;  // else a pad chunk: zeros, never loaded
    auto ring_slot = [&](int i) { return ring + (i % kStatsStages) * 2 * kThreads + threadIdx.x; };
    // One commit group per row (empty past the last), so that waiting for
    // all but kStatsStages - 1 groups means waiting for the oldest row.
    // With the heads in order (stats_ctas > 0), the rows are read again by
    // their head's K and V jobs while later heads are read here: asked to
    // stay in L2 over other lines (those jobs' reads, the rows' last, ask
    // the opposite: l2_hints_for_second_read). With this pair of hints an
    // H200 call read 8-12 MB less and took 0.7-1.5% less GPU time at D=128
    // 4K keys (docs/perf-notes.md, session 20).
    const bool hinted = l2_hints_for_second_read(p);
    const uint64_t keep = ptx::l2_policy_evict_last();
    auto copy = [&](uint4* dst, const T* src) {
      if (hinted) {
        cp_async_16_hinted(dst, src, keep);
      } else {
        cp_async_16(dst, src);
      }
    };
    auto issue = [&](int i) {
      if (i < rows && in_dim) {
        const int r = start + rl + i * row_lanes;
        if (p.smooth_k) copy(ring_slot(i), k_base + r * k_in.stride_n + c0);
        copy(ring_slot(i) + kThreads, v_base + r * v_in.stride_n + c0);
      }
      cp_async_commit();
    };
#pragma unroll
    for (int i = 0; i < kStatsStages - 1; ++i) issue(i);
    for (int i = 0; i < rows; ++i) {
      // Refills the slot that row i - 1 used: its values were consumed above.
      issue(i + kStatsStages - 1);
      cp_async_wait<kStatsStages - 1>();
      float xk[kVec] = {}, xv[kVec] = {};
      if (in_dim) {
        if (p.smooth_k) unpack8<T>(ring_slot(i)[0], xk);
        unpack8<T>(ring_slot(i)[kThreads], xv);
      }
      accumulate(xk, xv);
    }
  } else {
    for (int r = start + rl; r < end; r += row_lanes) {
      float xk[kVec] = {}, xv[kVec];
      if (p.smooth_k) load8<T>(k_base + r * k_in.stride_n, c0, p.head_dim, xk);
      load8<T>(v_base + r * v_in.stride_n, c0, p.head_dim, xv);
      accumulate(xk, xv);
    }
  }

  // Reduce the row lanes of each quantity through shared memory.
  auto reduce_into = [&](const float (&mine)[kVec], float* dst, int op) {  // op: 0 sum, 1 max, 2 min
#pragma unroll
    for (int i = 0; i < kVec; ++i) red[rl * dp + c0 + i] = mine[i];
    reduce_rows(red, row_lanes, dp, op, dst);
  };
  const std::int64_t slot = static_cast<std::int64_t>(bh_kv) * layout.chunks + chunk;
  if (p.smooth_k) reduce_into(ksum, out.k_partial + slot * dp, 0);
  float* vp = out.v_partial + slot * 3 * dp;
  reduce_into(vsum, vp, 0);
  reduce_into(vmax, vp + dp, 1);
  reduce_into(vmin, vp + 2 * dp, 2);
  // Every thread's partials, then the flag (the threadFenceReduction order).
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) ptx::store_release_gpu(out.stats_ready + item, 1);
}

template <typename T, bool Vec>
__global__ void __launch_bounds__(kThreads) kv_stats_kernel(PrepassProblem p, PrepassLayout layout, PrepassBuffers out,
                                                             StridedInput k_in, StridedInput v_in) {
  const int items = layout.chunks * p.batch * p.heads_kv;
  // Clears this CTA's flags before the quantize grid may start and read
  // them: a flag set means its partials of this call are written. Only its
  // own: a clear of another CTA's flag could land after that CTA set it,
  // and its head's jobs would wait forever. The trigger below carries no
  // memory ordering in PTX (only griddepcontrol.wait does); what makes the
  // clears visible to the quantize grid is that every thread's fence has
  // completed (the stores performed at GPU scope) before the barrier and
  // the trigger, and that grid's CTAs start after every CTA's trigger.
  for (int item = blockIdx.x + threadIdx.x * gridDim.x; item < items; item += kThreads * gridDim.x)
    out.stats_ready[item] = 0;
  __threadfence();
  __syncthreads();
  // The quantize kernel's Q jobs need no statistics (except K's mean for the
  // LSE correction), and its jobs wait only for their own head's flags: it
  // may start at once and fill the SMs that this grid leaves idle.
  pdl::allow_dependent_launch();
  // [row_lanes][Dp] floats of the lane reduction, then (Vec) the ring:
  // [stage][K, V][thread] 16-byte slots.
  extern __shared__ uint4 stats_smem[];
  float* red = reinterpret_cast<float*>(stats_smem);
  uint4* ring = stats_smem + kThreads * kVec * sizeof(float) / sizeof(uint4);
  for (int item = blockIdx.x; item < items; item += gridDim.x)
    kv_stats_item<T, Vec>(p, layout, out, k_in, v_in, item, red, ring);
}

// Waits until the statistics kernel has written every chunk partial of head
// bh_kv (its flags in stats_ready): lanes of warp 0 poll the flags, the CTA
// waits at a barrier. Ends with a barrier.
__device__ __noinline__ void wait_for_head_stats(const PrepassLayout& layout, const PrepassBuffers& out, int bh_kv) {
  if (threadIdx.x < 32) {
    const int* flags = out.stats_ready + static_cast<std::int64_t>(bh_kv) * layout.chunks;
    static_assert(kMaxChunks <= 32, "one flag per lane");
    const bool mine = threadIdx.x < layout.chunks;
    while (!__all_sync(0xffffffffu, !mine || ptx::load_acquire_gpu(flags + threadIdx.x) == 1)) __nanosleep(256);
  }
  __syncthreads();
}

// ---- 2. quantization -----------------------------------------------------------
// The quantize grid: one CTA per job, the Q jobs first, then the K and V
// jobs head by head (kv_job_tile; job_tiles of each per head).
struct QuantizeJobs {
  int q, kv;
};
__host__ __device__ inline QuantizeJobs quantize_jobs(const PrepassProblem& p) {
  return {p.q_in_attention ? 0 : p.batch * p.heads_q * job_tiles(p.nq), p.batch * p.heads_kv * job_tiles(p.nk)};
}

template <int Dp>
struct QuantShared {
  alignas(16) float mean[Dp];    // mean_k (Q, K jobs) or mean_v (V job)
  alignas(16) float q_mean[Dp];  // Q job with smooth_q: the tile's channel mean
  float amax[64];                // per scale group of the tile
  union {
    float inv_scale[Dp];            // V job: 1 / v_scale per channel
    float slice_sums[kWarps * Dp];  // Q job with smooth_q: [16-row slice][channel] sums
  };
};

// 16-bit values of a job's 128 rows as read from the input, [row][8-channel
// chunk]; zeros past the last row and past head_dim.
template <int Dp>
using JobTile = uint4[kTileRows * Dp / kVec];

// The quantize kernel's shared memory: one job's scratch and its rows.
template <int Dp>
struct QuantJobShared {
  QuantShared<Dp> sh;
  JobTile<Dp> tile;
};

// Channel c's statistics of a head, from its sums over all nk keys (K:
// sum; V: sum, max, min), into sh: K's mean (smooth_k), or V's mean
// (smooth_v), scale and its reciprocal; `write_v` publishes the V scale and
// mean. The two statistics paths (kv_stats_kernel + finalize_stats, and the
// cluster kernel) share this arithmetic.
template <int Dp>
__device__ __forceinline__ void set_k_channel(const PrepassProblem& p, int c, float sum, QuantShared<Dp>& sh) {
  sh.mean[c] = p.smooth_k ? sum / static_cast<float>(p.nk) : 0.f;
}
template <int Dp>
__device__ __forceinline__ void set_v_channel(const PrepassProblem& p, const PrepassBuffers& out, int bh_kv, int c,
                                              float sum, float mx, float mn, bool write_v, QuantShared<Dp>& sh) {
  const float mean = p.smooth_v ? sum / static_cast<float>(p.nk) : 0.f;
  // fl(v - mean) is monotonic in v, so its extremes come from max and min.
  const float amax = fmaxf(fabsf(mx - mean), fabsf(mn - mean));
  const float scale = num::symmetric_scale(amax, static_cast<int>(kE4m3Max));
  sh.mean[c] = mean;
  sh.inv_scale[c] = num::reciprocal_rn(scale);
  if (write_v) {
    out.v_scale[static_cast<std::int64_t>(bh_kv) * Dp + c] = scale;
    out.v_mean[static_cast<std::int64_t>(bh_kv) * Dp + c] = mean;
  }
}

// The head's statistics from the statistics kernel's chunk partials, in
// chunk order (set_k_channel / set_v_channel).
template <int Dp>
__device__ void finalize_stats(const PrepassProblem& p, const PrepassLayout& layout, const PrepassBuffers& out,
                               int bh_kv, bool v_job, bool write_v, QuantShared<Dp>& sh) {
  for (int c = threadIdx.x; c < Dp; c += kThreads) {
    if (!v_job) {
      float sum = 0.f;
      // Unrolled so that the partials' loads are in flight together.
      if (p.smooth_k) {
#pragma unroll 8
        for (int j = 0; j < layout.chunks; ++j) sum += out.k_partial[(static_cast<std::int64_t>(bh_kv) * layout.chunks + j) * Dp + c];
      }
      set_k_channel(p, c, sum, sh);
      continue;
    }
    float sum = 0.f, mx = -INFINITY, mn = INFINITY;
#pragma unroll 8
    for (int j = 0; j < layout.chunks; ++j) {
      const float* vp = out.v_partial + (static_cast<std::int64_t>(bh_kv) * layout.chunks + j) * 3 * Dp;
      sum += vp[c];
      mx = fmaxf(mx, vp[Dp + c]);
      mn = fminf(mn, vp[2 * Dp + c]);
    }
    set_v_channel(p, out, bh_kv, c, sum, mx, mn, write_v, sh);
  }
}

// What a tile's copies ask of L2 for the lines they read: nothing, to keep
// them over other lines (they are read again soon: evict_last), or to let
// them go first (their last read: evict_first).
enum class L2Hint { none, keep, drop };

// Starts copying rows [row0, row0 + 128) of one (batch, head) into `tile`:
// cp.async for each 16-byte chunk inside the tensor (Vec), zeros past row n
// and past head_dim, element loads when rows are not 16-byte aligned; one
// commit group. The caller waits (cp_async_wait, then a barrier) before
// reading the tile. A thread copies one 8-channel chunk column (c0) of every
// kRowStep-th row, so its source pointer only steps by kRowStep rows (no
// per-chunk address arithmetic) and its column test is made once.
template <typename T, bool Vec, int Dp>
__device__ void load_tile(const StridedInput& in, int b, int h, int row0, int n, int head_dim, uint4* tile,
                          L2Hint hint = L2Hint::none) {
  constexpr int kChunks = Dp / kVec;
  constexpr int kRowStep = kThreads / kChunks;
  static_assert(kThreads % kChunks == 0 && kTileRows % kRowStep == 0, "whole rows per pass");
  // Neighbouring threads take neighbouring chunks of a row (coalesced).
  const int c0 = (threadIdx.x % kChunks) * kVec;
  const int first = threadIdx.x / kChunks;  // the thread's first row in the tile
  const bool in_dim = c0 < head_dim;        // Vec: the whole chunk (head_dim % 8 == 0)
  const T* src = static_cast<const T*>(in.data) + b * in.stride_b + h * in.stride_h +
                 static_cast<std::int64_t>(row0 + first) * in.stride_n + c0;
  const std::int64_t step = static_cast<std::int64_t>(kRowStep) * in.stride_n;
  const uint64_t policy = hint == L2Hint::keep ? ptx::l2_policy_evict_last() : ptx::l2_policy_evict_first();
  // (Element loads, !Vec, one row at a time: unrolled, their 64 loads in
  // flight spilled registers.)
#pragma unroll(Vec ? kTileRows / kRowStep : 1)
  for (int it = 0; it < kTileRows / kRowStep; ++it, src += step) {
    const int row = row0 + first + it * kRowStep;
    uint4* dst = &tile[threadIdx.x + it * kThreads];
    if (Vec && row < n && in_dim) {
      if (hint != L2Hint::none) {
        cp_async_16_hinted(dst, src, policy);
      } else {
        cp_async_16(dst, src);
      }
    } else {
      uint32_t w[4];
#pragma unroll
      for (int i = 0; i < kVec; i += 2) {
        const uint32_t lo = row < n && c0 + i < head_dim ? bits16(src[i]) : 0u;
        const uint32_t hi = row < n && c0 + i + 1 < head_dim ? bits16(src[i + 1]) : 0u;
        w[i / 2] = lo | hi << 16;
      }
      *dst = make_uint4(w[0], w[1], w[2], w[3]);
    }
  }
  cp_async_commit();
}

// The 8 per-channel values of this lane's chunk (from shared memory).
template <int Dp>
__device__ __forceinline__ void load_channels(const float* per_channel, float (&v)[kVec]) {
  const float4* src = reinterpret_cast<const float4*>(per_channel + kVec * RowLanes<Dp>::chunk());
  const float4 a = src[0], b = src[1];
  v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w, v[4] = b.x, v[5] = b.y, v[6] = b.z, v[7] = b.w;
}

// Row j of this lane's chunk as floats, minus the channel means (kSub).
template <typename T, int Dp, bool kSub>
__device__ __forceinline__ void read_row(const uint4* tile, int j, const float (&mean)[kVec], float (&x)[kVec]) {
  using L = RowLanes<Dp>;
  unpack8<T>(tile[L::row(j) * L::kChunkLanes + L::chunk()], x);
  if (kSub) {
#pragma unroll
    for (int e = 0; e < kVec; ++e) x[e] -= mean[e];
  }
}

// The integer half of a Q or K job, once the tile and the statistics are in
// shared memory and the group maxima are cleared: group maxima, INT8 or INT4
// rows (bits), and one scale per group (times scale_factor: Q carries
// sm_scale * log2 e into the kernel's scores). kSub: the values are the rows
// minus `mean` (per channel). Rows past n count as 0 and are not stored.
//
// Groups follow `geo` (the attention kernel's geometry). A job tile holds
// whole groups; the last tile of a head may hold fewer groups than a full
// one (cta_k < 128), so only groups below `total_groups` are written.
template <typename T, int Dp, bool kSub>
__device__ void quantize_int_tile(QuantShared<Dp>& sh, const uint4* tile, const float* mean, bool is_query, int bits,
                                  const TileGeometry& geo, Granularity g, int row0, int n, int total_groups,
                                  int8_t* rows_out, float* scales, float scale_factor) {
  using L = RowLanes<Dp>;
  const int lane = threadIdx.x % 32;
  const int rows_here = min(kTileRows, n - row0);
  float mu[kVec] = {};
  if (kSub) load_channels<Dp>(mean, mu);

  // |x| maxima of the lane's rows over its chunk (the order of a max does
  // not matter), then over whole rows: lane l holds row (l / 2) of its warp.
  float m[L::kRows];
#pragma unroll
  for (int j = 0; j < L::kRows; ++j) {
    if constexpr (kSub) {
      float x[kVec];
      read_row<T, Dp, kSub>(tile, j, mu, x);
      m[j] = 0.f;
#pragma unroll
      for (int e = 0; e < kVec; ++e) m[j] = num::max_nan(m[j], fabsf(x[e]));
    } else {
      m[j] = abs_max8<T>(tile[L::row(j) * L::kChunkLanes + L::chunk()]);
    }
    if (L::row(j) >= rows_here) m[j] = 0.f;
  }
  float amax = row_max_scatter(m);

  // Scale groups: within a 128-row tile the group of a row, relative to the
  // tile's first group, is the group of its tile-relative row (row0 is a
  // multiple of every group period). The lowest lane of each group in the
  // warp publishes its maximum (groups can span warps).
  const int slot = static_cast<int>(is_query ? geo.q_group_of(16 * (threadIdx.x / 32) + lane / 2, g)
                                             : geo.k_group_of(16 * (threadIdx.x / 32) + lane / 2, g));
  const bool publish = merge_group_max(amax, slot);
  if (publish) atomic_max_nonneg(&sh.amax[slot], amax);
  __syncthreads();

  // 1 / scale of each of the lane's rows: computed once per row (by the
  // lanes that hold row l / 2) and fetched from there.
  const int qmax = bits == 8 ? 127 : 7;
  const float inv_own = num::reciprocal_rn(num::symmetric_scale(sh.amax[slot], qmax));
  float inv[L::kRows];
#pragma unroll
  for (int j = 0; j < L::kRows; ++j) inv[j] = __shfl_sync(0xffffffffu, inv_own, 2 * (L::row(j) % 16));
#pragma unroll
  for (int j = 0; j < L::kRows; ++j) {
    if (L::row(j) >= rows_here) continue;
    float x[kVec];
    read_row<T, Dp, kSub>(tile, j, mu, x);
    const std::int64_t row = row0 + L::row(j);
    if (bits == 8) {  // one byte per element, rows of Dp bytes (x as the maxima read it: no clamp can act)
      *reinterpret_cast<uint2*>(rows_out + row * Dp + kVec * L::chunk()) = quantize_int8x8(x, inv[j]);
    } else {  // two's-complement nibbles, the lower-indexed element in the low nibble (mma.sync .s4)
      uint32_t packed = 0;
#pragma unroll
      for (int e = 0; e < kVec; ++e)
        packed |= (static_cast<uint32_t>(quantize_int(x[e], inv[j], qmax)) & 0xFu) << (4 * e);
      *reinterpret_cast<uint32_t*>(rows_out + row * (Dp / 2) + kVec / 2 * L::chunk()) = packed;
    }
  }

  const std::int64_t first_group = is_query ? geo.q_group_of(row0, g) : geo.k_group_of(row0, g);
  const int groups_full_tile =
      static_cast<int>(is_query ? geo.q_groups(kTileRows, g) : geo.k_groups(kTileRows, g));
  const int groups_here = min(groups_full_tile, total_groups - static_cast<int>(first_group));
  for (int i = threadIdx.x; i < groups_here; i += kThreads)
    scales[first_group + i] = num::symmetric_scale(sh.amax[i], qmax) * scale_factor;
}

// Channel mean of the tile's first `rows` rows (the rows that exist; the
// tile holds zeros past them) into sh.q_mean, as the emulation's block
// mean: per channel the sum over the rows, divided by their count. The sum
// has a fixed order: per 16-row slice the rows pair up as (i, i + 8), the 8
// pairs add as a binary tree ((p0 + p1) + (p2 + p3)) + ((p4 + p5) + (p6 + p7)),
// and the slices' sums add from 0 in slice order. A thread takes a channel
// pair of one slice (4-byte tile reads of neighbouring pairs: no bank
// conflicts). Ends with a barrier.
template <typename T, int Dp>
__device__ void tile_channel_mean(QuantShared<Dp>& sh, const uint4* tile, int rows) {
  const uint32_t* tile32 = reinterpret_cast<const uint32_t*>(tile);  // [row][channel pair]
  for (int job = threadIdx.x; job < Dp / 2 * kWarps; job += kThreads) {
    const int pair = job % (Dp / 2), slice = job / (Dp / 2);
    auto add = [](float2 a, float2 b) { return make_float2(a.x + b.x, a.y + b.y); };
    auto rows = [&](int i) {  // p_i: rows i and i + 8 of the slice
      return add(to_float2<T>(tile32[(16 * slice + i) * (Dp / 2) + pair]),
                 to_float2<T>(tile32[(16 * slice + i + 8) * (Dp / 2) + pair]));
    };
    const float2 s0123 = add(add(rows(0), rows(1)), add(rows(2), rows(3)));
    const float2 s = add(s0123, add(add(rows(4), rows(5)), add(rows(6), rows(7))));
    sh.slice_sums[slice * Dp + 2 * pair] = s.x;
    sh.slice_sums[slice * Dp + 2 * pair + 1] = s.y;
  }
  __syncthreads();
  for (int c = threadIdx.x; c < Dp; c += kThreads) {
    float sum = 0.f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) sum += sh.slice_sums[w * Dp + c];
    sh.q_mean[c] = sum / static_cast<float>(rows);
  }
  __syncthreads();
}

// q . mean_k * sm_scale of each row that exists, from the unquantized rows
// in the tile, in a fixed order: quarter q of a row is one FMA chain over
// the channels 32 i + 8 q + [0, 8) in order of i, and the four quarters (four
// neighbouring lanes) add as (q0 + q1) + (q2 + q3).
template <typename T, int Dp>
__device__ void lse_correction_tile(const QuantShared<Dp>& sh, const uint4* tile, float sm_scale, int row0, int n,
                                    float* lse_corr) {
#pragma unroll
  for (int it = 0; it < kTileRows * 4 / kThreads; ++it) {
    const int job = threadIdx.x + it * kThreads;
    const int row = job / 4, quarter = job % 4;
    float dot = 0.f;
#pragma unroll
    for (int i = 0; i < Dp / 32; ++i) {
      const int chunk = 4 * i + quarter;
      float x[kVec];
      unpack8<T>(tile[row * (Dp / kVec) + chunk], x);
#pragma unroll
      for (int e = 0; e < kVec; ++e) dot = fmaf(x[e], sh.mean[kVec * chunk + e], dot);
    }
    dot += __shfl_xor_sync(0xffffffffu, dot, 1);
    dot += __shfl_xor_sync(0xffffffffu, dot, 2);
    if (quarter == 0 && row0 + row < n) lse_corr[row0 + row] = dot * sm_scale;
  }
}

template <typename T, bool Vec, int Dp>
__device__ void quantize_q_tile(const PrepassProblem& p, const PrepassLayout& layout, const PrepassBuffers& out,
                                const StridedInput& in, int job, QuantJobShared<Dp>& js) {
  QuantShared<Dp>& sh = js.sh;
  const auto [bh, tile] = layout.q_tiles_div.divmod(job);
  const auto [b, h] = layout.heads_q_div.divmod(bh);
  const int bh_kv = b * p.heads_kv + static_cast<int>(layout.group_div.div(static_cast<std::uint32_t>(h)));
  const int row0 = tile * kTileRows;
  // The tile's copies go out first; the statistics are reduced while they fly.
  load_tile<T, Vec, Dp>(in, b, h, row0, p.nq, p.head_dim, js.tile);
  if (p.lse_correction) {
    wait_for_head_stats(layout, out, bh_kv);  // K's mean
    finalize_stats(p, layout, out, bh_kv, false, false, sh);
  }
  for (int i = threadIdx.x; i < 64; i += kThreads) sh.amax[i] = 0.f;
  cp_async_wait<0>();
  __syncthreads();
  int8_t* q_rows = out.q + static_cast<std::int64_t>(bh) * p.nq * (Dp * p.qk_bits / 8);
  float* q_scales = out.q_scale + static_cast<std::int64_t>(bh) * layout.q_groups;
  if (p.smooth_q) {  // quantize Q - mean_q
    tile_channel_mean<T, Dp>(sh, js.tile, min(kTileRows, p.nq - row0));
    for (int c = threadIdx.x; c < Dp; c += kThreads)
      out.q_mean[(static_cast<std::int64_t>(bh) * layout.q_tiles + tile) * Dp + c] = sh.q_mean[c];
    quantize_int_tile<T, Dp, true>(sh, js.tile, sh.q_mean, true, p.qk_bits, p.geometry, p.granularity, row0, p.nq,
                                   layout.q_groups, q_rows, q_scales, score_scale_log2(p));
  } else {
    quantize_int_tile<T, Dp, false>(sh, js.tile, nullptr, true, p.qk_bits, p.geometry, p.granularity, row0, p.nq,
                                    layout.q_groups, q_rows, q_scales, score_scale_log2(p));
  }
  if (p.lse_correction)
    lse_correction_tile<T, Dp>(sh, js.tile, p.sm_scale, row0, p.nq,
                               out.lse_corr + static_cast<std::int64_t>(bh) * p.nq);
}

// A K or V job: one 128-row tile of one kv head.
struct KvTile {
  int bh_kv, tile, row0;
};
// The K and V jobs are numbered head by head (the K tiles of a head, then
// its V tiles), in the order the statistics kernel completes the heads.
__device__ __forceinline__ KvTile kv_job_tile(const PrepassLayout& layout, int kv_job, bool* v_job) {
  const auto [head_kind, tile] = layout.k_tiles_div.divmod(kv_job);
  *v_job = (head_kind & 1) != 0;
  return {head_kind >> 1, tile, tile * kTileRows};
}

// The opening of a K or V job: its tile's copies started, and (once the
// statistics kernel has written the head's partials) the head's statistics
// reduced into sh while they fly.
template <typename T, bool Vec, int Dp>
__device__ void start_kv_tile(const PrepassProblem& p, const PrepassLayout& layout, const PrepassBuffers& out,
                              const StridedInput& in, const KvTile& t, bool v_job, QuantJobShared<Dp>& js) {
  const auto [b, h] = layout.heads_kv_div.divmod(t.bh_kv);
  load_tile<T, Vec, Dp>(in, b, h, t.row0, p.nk, p.head_dim, js.tile,
                        l2_hints_for_second_read(p) ? L2Hint::drop : L2Hint::none);
  wait_for_head_stats(layout, out, t.bh_kv);
  finalize_stats(p, layout, out, t.bh_kv, v_job, v_job && t.tile == 0, js.sh);
}

// K rows [row0, row0 + 128) of head bh_kv, from `tile` (each thread's own
// copies complete), once sh holds the head's mean (smooth_k).
template <typename T, int Dp>
__device__ void quantize_k_rows(const PrepassProblem& p, const PrepassLayout& layout, const PrepassBuffers& out,
                                int bh_kv, int row0, QuantShared<Dp>& sh, const uint4* tile) {
  for (int i = threadIdx.x; i < 64; i += kThreads) sh.amax[i] = 0.f;
  __syncthreads();
  int8_t* k_rows = out.k + static_cast<std::int64_t>(bh_kv) * p.nk * (Dp * p.qk_bits / 8);
  float* k_scales = out.k_scale + static_cast<std::int64_t>(bh_kv) * layout.k_groups;
  if (p.smooth_k) {  // quantize K - mean_k
    quantize_int_tile<T, Dp, true>(sh, tile, sh.mean, false, p.qk_bits, p.geometry, p.granularity, row0, p.nk,
                                   layout.k_groups, k_rows, k_scales, 1.f);
  } else {
    quantize_int_tile<T, Dp, false>(sh, tile, nullptr, false, p.qk_bits, p.geometry, p.granularity, row0, p.nk,
                                    layout.k_groups, k_rows, k_scales, 1.f);
  }
}

template <typename T, bool Vec, int Dp>
__device__ void quantize_k_tile(const PrepassProblem& p, const PrepassLayout& layout, const PrepassBuffers& out,
                                const StridedInput& in, const KvTile& t, QuantJobShared<Dp>& js) {
  start_kv_tile<T, Vec, Dp>(p, layout, out, in, t, false, js);
  cp_async_wait<0>();
  quantize_k_rows<T, Dp>(p, layout, out, t.bh_kv, t.row0, js.sh, js.tile);
}

// V - mean_v (kSub) of the tile's rows that exist, rounded to fp16 (RNE, as
// the emulation's round_to_f16), row-major [Nk][Dp]: 8 channels per 16-byte
// store; rows past nk are not stored (the kernel zero-fills them).
template <typename T, int Dp, bool kSub>
__device__ void store_v_fp16_rows(const QuantShared<Dp>& sh, const uint4* tile, int row0, int n, std::uint16_t* dst) {
  using L = RowLanes<Dp>;
  float mu[kVec] = {};
  if (kSub) load_channels<Dp>(sh.mean, mu);
#pragma unroll
  for (int j = 0; j < L::kRows; ++j) {
    const int row = row0 + L::row(j);
    if (row >= n) continue;
    float x[kVec];
    read_row<T, Dp, kSub>(tile, j, mu, x);
    uint32_t packed[4];
#pragma unroll
    for (int e = 0; e < kVec; e += 2) {
      const __half2 pair = __floats2half2_rn(x[e], x[e + 1]);
      packed[e / 2] = *reinterpret_cast<const uint32_t*>(&pair);
    }
    *reinterpret_cast<uint4*>(dst + static_cast<std::int64_t>(row) * Dp + kVec * L::chunk()) =
        make_uint4(packed[0], packed[1], packed[2], packed[3]);
  }
}

// (V - mean_v (kSub)) / v_scale in FP8 E4M3, transposed and permuted: V^T
// row c, 32-key chunk at pos0 holds at position e the key
// pos0 + vt_key_of_position(e). A thread takes a pair of channels over one
// 32-key chunk: it reads the keys' 4-byte channel pairs straight from the
// [key][channel] tile (neighbouring lanes: neighbouring pairs, no bank
// conflicts), converts two keys per cvt (positions e, e + 1 are keys k,
// k + 1) and writes the chunk's full 32-byte sector of each of its two V^T
// rows, one 16-key half at a time. Keys past nk are 0.
template <typename T, int Dp, bool kSub>
__device__ void store_vt_fp8(const QuantShared<Dp>& sh, const uint4* tile, const PrepassLayout& layout, int row0, int n,
                             uint8_t* vt) {
  constexpr int kPairs = Dp / 2;
  static_assert(vt_key_of_position(0) + 1 == vt_key_of_position(1) && vt_key_of_position(16) == 16,
                "even positions start key pairs; each 16-position half holds its own 16 keys");
  const uint32_t* tile32 = reinterpret_cast<const uint32_t*>(tile);  // [key][channel pair]
  const int keys_here = min(kTileRows, n - row0);
  for (int job = threadIdx.x; job < kPairs * (kTileRows / 32); job += kThreads) {
    const int pair = job % kPairs, pos0 = (job / kPairs) * 32;
    const int c = 2 * pair;
    const float inv0 = sh.inv_scale[c], inv1 = sh.inv_scale[c + 1];
    const float mean0 = kSub ? sh.mean[c] : 0.f, mean1 = kSub ? sh.mean[c + 1] : 0.f;
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      uint32_t words0[4] = {}, words1[4] = {};  // channel c, c + 1: positions 16 half + 4 w + [0, 4)
#pragma unroll
      for (int e = 0; e < 16; e += 2) {
        const int key = pos0 + vt_key_of_position(16 * half + e);
        float2 lo = to_float2<T>(tile32[key * kPairs + pair]);        // position e: channels c, c + 1
        float2 hi = to_float2<T>(tile32[(key + 1) * kPairs + pair]);  // position e + 1
        if (kSub) lo.x -= mean0, lo.y -= mean1, hi.x -= mean0, hi.y -= mean1;
        // Keys past nk are zeros in the tile (code 0 as they are); only V -
        // mean_v must be set back to 0 there.
        if (kSub && key >= keys_here) lo = make_float2(0.f, 0.f);
        if (kSub && key + 1 >= keys_here) hi = make_float2(0.f, 0.f);
        const int shift = 16 * ((e / 2) % 2);
        words0[e / 4] |= fp8x2_e4m3_code(lo.x * inv0, hi.x * inv0) << shift;
        words1[e / 4] |= fp8x2_e4m3_code(lo.y * inv1, hi.y * inv1) << shift;
      }
      // nk_padded is a multiple of 16: each half of the chunk is in or out whole.
      const std::int64_t at = row0 + pos0 + 16 * half;
      if (at < layout.nk_padded) {
        *reinterpret_cast<uint4*>(vt + c * static_cast<std::int64_t>(layout.nk_padded) + at) =
            make_uint4(words0[0], words0[1], words0[2], words0[3]);
        *reinterpret_cast<uint4*>(vt + (c + 1) * static_cast<std::int64_t>(layout.nk_padded) + at) =
            make_uint4(words1[0], words1[1], words1[2], words1[3]);
      }
    }
  }
}

// V rows [row0, row0 + 128) of head bh_kv in the call's V format, from
// `tile` (shared by a barrier), once sh holds the head's V factors.
template <typename T, int Dp>
__device__ void store_v_rows(const PrepassProblem& p, const PrepassLayout& layout, const PrepassBuffers& out,
                             int bh_kv, int row0, const QuantShared<Dp>& sh, const uint4* tile) {
  if (p.v_format == VFormat::fp16_rows) {
    std::uint16_t* dst = out.v16 + static_cast<std::int64_t>(bh_kv) * p.nk * Dp;
    if (p.smooth_v) {
      store_v_fp16_rows<T, Dp, true>(sh, tile, row0, p.nk, dst);
    } else {
      store_v_fp16_rows<T, Dp, false>(sh, tile, row0, p.nk, dst);
    }
    return;
  }
  uint8_t* vt = out.vt + static_cast<std::int64_t>(bh_kv) * Dp * layout.nk_padded;
  if (p.smooth_v) {
    store_vt_fp8<T, Dp, true>(sh, tile, layout, row0, p.nk, vt);
  } else {
    store_vt_fp8<T, Dp, false>(sh, tile, layout, row0, p.nk, vt);
  }
}

template <typename T, bool Vec, int Dp>
__device__ void quantize_v_tile(const PrepassProblem& p, const PrepassLayout& layout, const PrepassBuffers& out,
                                const StridedInput& in, const KvTile& t, QuantJobShared<Dp>& js) {
  start_kv_tile<T, Vec, Dp>(p, layout, out, in, t, true, js);
  cp_async_wait<0>();
  __syncthreads();
  store_v_rows<T, Dp>(p, layout, out, t.bh_kv, t.row0, js.sh, js.tile);
}

template <typename T, bool Vec, int Dp>
__global__ void __launch_bounds__(kThreads, SAGE_PREPASS_MIN_BLOCKS)
    quantize_kernel(PrepassProblem p, PrepassLayout layout, PrepassBuffers out, StridedInput q, StridedInput k,
                    StridedInput v) {
  // The attention kernel waits for this grid before it reads anything; it may
  // launch and run its prologue while the last tiles are quantized.
  pdl::allow_dependent_launch();
  zero_item_claims(out);
  __shared__ QuantJobShared<Dp> js;
  const QuantizeJobs jobs = quantize_jobs(p);
  const int job = blockIdx.x;
  if (job < jobs.q) {
    quantize_q_tile<T, Vec, Dp>(p, layout, out, q, job, js);
    return;
  }
  bool v_job;
  const KvTile t = kv_job_tile(layout, job - jobs.q, &v_job);
  if (v_job) {
    quantize_v_tile<T, Vec, Dp>(p, layout, out, v, t, js);
  } else {
    quantize_k_tile<T, Vec, Dp>(p, layout, out, k, t, js);
  }
}

// ---- 3. K or V of one head in a thread-block cluster (sm_90) ------------------
// This kernel replaces the statistics kernel and the K and V jobs where the
// call allows (kv_cluster_shape): each head's rows are read once where they
// fit in the cluster's shared memory, and past that twice by the same CTA
// (the second read meant to hit L2), and no CTA waits for CTAs outside its
// cluster (the statistics
// kernel's second read of K and V, and the wait of every K and V job for
// that whole grid, as the two-kernel path had it until session 19, cost
// 8-16% of a call at 1K-4K keys: docs/perf-notes.md, session 8). One cluster
// per (batch * kv head, K or V); CTA r of a cluster of `ctas` owns the
// head's 128-row tiles [r T, r T + T) (T = tiles_per_cta), which pass
// through S = kv_cluster_held_tiles shared-memory slots (tile t in slot
// t mod S; S = T where the head fits, and every tile is read once):
//   1. copies its first S tiles in (cp.async), then takes the partial
//      statistics of each tile as it lands and refills its slot with tile
//      t + S (K: the sum, if smooth_k; V: the sum, if smooth_v, the max and
//      the min): thread (pair, part) sums rows part R .. part R + R - 1 of
//      each tile in tile and row order, then the parts add in part order;
//   2. after a cluster barrier, reduces the cluster's partials in rank order
//      (distributed shared memory) into the head's statistics
//      (set_k_channel / set_v_channel, rank 0 of a V cluster publishing the
//      V scales and means), and signals that it is done reading the others;
//   3. quantizes its tiles (quantize_k_rows / store_v_rows, the K and V
//      jobs' code) from the last to the first: the S tiles still in shared
//      memory first, then the others, each read again into the slot that
//      the tile S after it freed. Their first read asked L2 to keep their
//      lines (evict_last) and the last read of every line asks it to drop
//      them (evict_first), so that the T - S tiles of each resident CTA,
//      not the lines already done with, are what L2 holds between the two
//      reads. (They fit it at 4K keys, D = 128: 142 MB read for 134 MB of K
//      and V; not at 8K, where three CTAs per SM hold ~76 MB to re-read and
//      the kernel read 418 MB for 268: docs/perf-notes.md, session 21.)
//      A CTA that re-reads nothing reads without hints;
//   4. waits for the whole cluster before it exits (its partials must
//      outlive the others' reads).
// The order of every sum is fixed by the shape, so results are deterministic;
// the sums are ordered differently from the statistics kernel's, so a mean
// may differ from that path's in its last bits.
static_assert(kKvClusterTileRows == kTileRows, "the cluster kernel's tiles are job tiles");

template <int Dp>
struct KvClusterShared {
  QuantShared<Dp> sh;  // (its slice_sums hold the parts of step 1)
  float partial[3][Dp];  // this CTA's statistics (sum, max, min), read by the whole cluster
};

template <int Dp>
std::size_t kv_cluster_smem_bytes(const KvClusterShape& shape) {
  return sizeof(KvClusterShared<Dp>) + static_cast<std::size_t>(kv_cluster_held_tiles(shape, Dp)) * sizeof(JobTile<Dp>);
}

// Step 1: a thread's share of its CTA's statistics, tile by tile (add_tile
// in tile order), then the CTA's (publish): partial[0] (the sum, if `sums`),
// partial[1] and partial[2] (max and min, if `extremes`).
template <typename T, int Dp>
class PartialStats {
 public:
  __device__ PartialStats(bool sums, bool extremes)
      : sums_(sums), extremes_(extremes), hi_(pair_of<T>(-INFINITY)), lo_(pair_of<T>(INFINITY)) {}

  // The tile's first `rows` rows (those below nk).
  __device__ void add_tile(const uint4* tile, int rows) {
    // [row][channel pair]: a warp reads 32 neighbouring pairs of one row (no bank conflicts).
    const uint32_t* tile32 = reinterpret_cast<const uint32_t*>(tile);
    const int end = min((part() + 1) * kPartRows, rows);
#pragma unroll 4
    for (int r = part() * kPartRows; r < end; ++r) {
      const uint32_t w = tile32[r * kPairs + pair()];
      if (sums_) {
        const float2 x = to_float2<T>(w);
        sum_.x += x.x, sum_.y += x.y;
      }
      if (extremes_) {
        // The extremes on the packed pairs (exact), skipping NaN as fmaxf
        // does (the statistics kernel's rule: a NaN in V reaches the output
        // through its own code, not through the scale).
        PairOf<T> x;
        memcpy(&x, &w, sizeof(x));
        hi_ = __hmax2(hi_, x), lo_ = __hmin2(lo_, x);
      }
    }
  }

  // Every thread of the CTA calls it; ends with a barrier where it reduces
  // anything (K without smooth_k has nothing to publish).
  __device__ void publish(KvClusterShared<Dp>& s) const {
    uint32_t hi_bits, lo_bits;
    memcpy(&hi_bits, &hi_, sizeof(hi_bits));
    memcpy(&lo_bits, &lo_, sizeof(lo_bits));
    float* parts = s.sh.slice_sums;  // [kParts][Dp]
    auto reduce_parts = [&](float2 mine, float* dst, int op) {  // op: 0 sum, 1 max, 2 min
      parts[part() * Dp + 2 * pair()] = mine.x;
      parts[part() * Dp + 2 * pair() + 1] = mine.y;
      reduce_rows(parts, kParts, Dp, op, dst);
    };
    if (sums_) reduce_parts(sum_, s.partial[0], 0);
    if (extremes_) {
      reduce_parts(to_float2<T>(hi_bits), s.partial[1], 1);
      reduce_parts(to_float2<T>(lo_bits), s.partial[2], 2);
    }
  }

 private:
  static constexpr int kPairs = Dp / 2, kParts = kThreads / kPairs, kPartRows = kTileRows / kParts;
  static_assert(kThreads % kPairs == 0 && kTileRows % kParts == 0 && kParts <= kWarps, "the parts fit in slice_sums");
  __device__ static int pair() { return threadIdx.x % kPairs; }
  __device__ static int part() { return threadIdx.x / kPairs; }

  bool sums_, extremes_;
  float2 sum_ = make_float2(0.f, 0.f);
  PairOf<T> hi_, lo_;
};

#ifndef SAGE_KV_CLUSTER_MIN_BLOCKS
#define SAGE_KV_CLUSTER_MIN_BLOCKS 5
#endif
template <typename T, int Dp>
__global__ void __launch_bounds__(kThreads, SAGE_KV_CLUSTER_MIN_BLOCKS)
    kv_cluster_kernel(PrepassProblem p, PrepassLayout layout, PrepassBuffers out, StridedInput k_in, StridedInput v_in,
                      KvClusterShape shape) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  // The next kernel (the attention kernel, which quantizes Q itself before
  // it waits for this grid) may start on SMs this grid leaves.
  pdl::allow_dependent_launch();
  zero_item_claims(out);
  extern __shared__ uint4 kv_cluster_smem[];
  KvClusterShared<Dp>& s = *reinterpret_cast<KvClusterShared<Dp>*>(kv_cluster_smem);
  uint4* slots = kv_cluster_smem + sizeof(KvClusterShared<Dp>) / sizeof(uint4);
  static_assert(sizeof(KvClusterShared<Dp>) % sizeof(uint4) == 0, "tiles start 16-byte aligned");
  constexpr int kTileChunks = kTileRows * Dp / kVec;
  // Every slot is one commit group in flight: waiting for all but the
  // newest kMaxHeld - 1 means waiting for the oldest. (Where the CTA holds
  // fewer slots, their count of groups is made up with empty ones.)
  constexpr int kMaxHeld = kv_cluster_max_held_tiles(Dp);

  const bool v_job = static_cast<int>(blockIdx.x) >= shape.ctas;
  const int rank = cluster::rank();
  const int bh_kv = blockIdx.y;
  const auto [b, h] = layout.heads_kv_div.divmod(bh_kv);
  const int first_tile = rank * shape.tiles_per_cta;
  const int tiles_here = min(shape.tiles_per_cta, job_tiles(p.nk) - first_tile);
  const int row_begin = first_tile * kTileRows;
  const int held = kv_cluster_held_tiles(shape, Dp);
  const int read_twice = max(0, tiles_here - held);  // tiles [0, read_twice) are read (again) in step 3
  const StridedInput in = v_job ? v_in : k_in;
  auto slot = [&](int t) { return slots + (t % held) * kTileChunks; };
  auto row0 = [&](int t) { return row_begin + t * kTileRows; };
  // Tile t's copies as one commit group (an empty group for t out of range).
  auto fetch = [&](int t, L2Hint hint) {
    if (t >= 0 && t < tiles_here) {
      load_tile<T, true, Dp>(in, b, h, row0(t), p.nk, p.head_dim, slot(t), hint);
    } else {
      cp_async_commit();
    }
  };
  // First reads: kept in L2 for this CTA's second where there is one; the
  // others dropped first, where the CTA reads any tile twice.
  auto first_read_hint = [&](int t) {
    return t < read_twice ? L2Hint::keep : (read_twice > 0 ? L2Hint::drop : L2Hint::none);
  };

  // 1. the CTA's partial statistics, a tile at a time. K without smooth_k
  // has none: only the tiles that step 3 finds in their slots are read here
  // (no refills), the others once, in step 3.
  const bool sums = v_job ? p.smooth_v : p.smooth_k;
  const int first = v_job || sums ? 0 : read_twice;
  for (int i = 0; i < kMaxHeld; ++i) fetch(i < held ? first + i : -1, first_read_hint(first + i));
  PartialStats<T, Dp> stats(sums, v_job);
  for (int t = first; t < tiles_here; ++t) {
    cp_async_wait<kMaxHeld - 1>();
    __syncthreads();
    stats.add_tile(slot(t), min(kTileRows, p.nk - row0(t)));
    if (t + held < tiles_here) __syncthreads();  // the slot is read to the end before its refill
    fetch(t + held < tiles_here ? t + held : -1, first_read_hint(t + held));
  }
  stats.publish(s);

  // 2. the head's statistics, from every CTA's partials in rank order.
  cluster::arrive();
  cluster::wait();
  for (int c = threadIdx.x; c < Dp; c += kThreads) {
    float sum = 0.f, mx = -INFINITY, mn = INFINITY;
    // Four ranks' loads in flight at a time: fully unrolled, the D = 64
    // kernel spilled (48 registers, with the copies of step 3 still to come).
#pragma unroll 4
    for (int r = 0; r < kKvClusterMaxCtas; ++r) {
      if (r >= shape.ctas) break;
      if (sums) sum += cluster::load_from_rank(&s.partial[0][c], r);
      if (v_job) {
        mx = fmaxf(mx, cluster::load_from_rank(&s.partial[1][c], r));
        mn = fminf(mn, cluster::load_from_rank(&s.partial[2][c], r));
      }
    }
    if (v_job) {
      set_v_channel(p, out, bh_kv, c, sum, mx, mn, rank == 0, s.sh);
    } else {
      set_k_channel(p, c, sum, s.sh);
    }
  }
  cluster::arrive();  // done with the other CTAs' shared memory
  __syncthreads();

  // 3. its tiles, quantized from the last to the first; tile t's slot then
  // takes tile t - held (read again, where t - held >= 0).
  for (int t = tiles_here - 1; t >= 0; --t) {
    cp_async_wait<kMaxHeld - 1>();
    __syncthreads();
    if (v_job) {
      store_v_rows<T, Dp>(p, layout, out, bh_kv, row0(t), s.sh, slot(t));
    } else {
      quantize_k_rows<T, Dp>(p, layout, out, bh_kv, row0(t), s.sh, slot(t));
    }
    __syncthreads();  // the slot (and K's group maxima) read to the end
    fetch(t - held, L2Hint::drop);
  }
  // 4.
  cluster::wait();
  // When launched under a Q-only quantize grid (launch_typed), this grid's
  // completion must imply that one's: the attention kernel waits for this one only.
  pdl::wait_for_prerequisites();
#endif
}

// The launch of the cluster kernel over `rows` kv heads (grid rows): K and V
// clusters of shape.ctas CTAs each, programmatic (PDL) if asked; the
// attributes live in `attributes`.
template <int Dp>
cudaLaunchConfig_t kv_cluster_config(const KvClusterShape& shape, int rows, cudaStream_t stream, bool programmatic,
                                     cudaLaunchAttribute (&attributes)[2]) {
  cudaLaunchConfig_t config{};
  config.gridDim = dim3(2 * shape.ctas, rows);
  config.blockDim = dim3(kThreads);
  config.dynamicSmemBytes = kv_cluster_smem_bytes<Dp>(shape);
  config.stream = stream;
  config.attrs = attributes;
  config.numAttrs = static_cast<unsigned>(cuda::cluster_launch_attributes(shape.ctas, programmatic, attributes));
  return config;
}

// Whether clusters of `shape` can run on the current device (its shared
// memory and cluster size allowed, at least one such cluster placeable:
// cuda::clusters_placeable); "no" gives the call the two-kernel path.
template <typename T, int Dp>
bool kv_clusters_fit(const KvClusterShape& shape) {
  const void* kernel = reinterpret_cast<const void*>(kv_cluster_kernel<T, Dp>);
  // The kernel's limit is set to the largest shape's (an attribute set for
  // a smaller shape later would fail a larger one remembered as fitting).
  const KvClusterShape largest{kKvClusterMaxCtas, kv_cluster_max_held_tiles(Dp)};
  if (cuda::set_kernel_attribute_once(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      static_cast<int>(kv_cluster_smem_bytes<Dp>(largest))) != cudaSuccess) {
    cudaGetLastError();  // (an answer, not an error of the call)
    return false;
  }
  cudaLaunchAttribute attributes[2];
  return cuda::clusters_placeable(kernel, kv_cluster_config<Dp>(shape, 1, nullptr, false, attributes));
}

// The cluster shape the call's K and V take, or ctas 0 for the two-kernel
// path: allowed by the caller (PrepassProblem::allow_kv_clusters), rows the
// cp.async copies can read (Vec), no LSE correction (its Q jobs need K's
// mean from the statistics kernel), a head that fits or may stream
// (kv_cluster_shape, PrepassProblem::kv_stream_max_keys) and
// a device that places the clusters. (Its grid rows, B * Hkv, are bounded
// by validation: kGpuMaxBatchHeads.)
template <typename T, int Dp>
KvClusterShape kv_cluster_path(const PrepassProblem& p, bool vec) {
  if (!p.allow_kv_clusters || !vec || p.lse_correction) return {};
  const KvClusterShape shape = kv_cluster_shape(p.nk, Dp, p.kv_stream_max_keys);
  return shape.ctas > 0 && kv_clusters_fit<T, Dp>(shape) ? shape : KvClusterShape{};
}

// The first launch of the cluster and head-jobs paths: the Q jobs (if any)
// in a quantize grid of their own, an ordinary launch (see launch_typed).
// The K / V kernel that follows may run under its tail (programmatic where
// *q_grid: it reads nothing the grid writes, and waits for it before it exits).
template <typename T, int Dp>
cudaError_t launch_q_only_grid(const PrepassProblem& p, const PrepassLayout& layout, const PrepassBuffers& out,
                               StridedInput q, StridedInput k, StridedInput v, cudaStream_t stream, bool* q_grid) {
  const int q_jobs = quantize_jobs(p).q;
  *q_grid = q_jobs > 0;
  if (!*q_grid) return cudaSuccess;
  quantize_kernel<T, true, Dp><<<q_jobs, kThreads, 0, stream>>>(p, layout, out, q, k, v);
  return cudaGetLastError();
}

// The cluster path: the Q-only grid, then the clusters.
template <typename T, int Dp>
cudaError_t launch_kv_clusters(const PrepassProblem& p, const PrepassLayout& layout, const PrepassBuffers& out,
                               StridedInput q, StridedInput k, StridedInput v, const KvClusterShape& shape,
                               cudaStream_t stream, bool programmatic) {
  bool q_grid = false;
  if (const cudaError_t err = launch_q_only_grid<T, Dp>(p, layout, out, q, k, v, stream, &q_grid); err != cudaSuccess) {
    return err;
  }
  cudaLaunchAttribute attributes[2];
  const cudaLaunchConfig_t config =
      kv_cluster_config<Dp>(shape, p.batch * p.heads_kv, stream, programmatic && q_grid, attributes);
  return cudaLaunchKernelEx(&config, kv_cluster_kernel<T, Dp>, p, layout, out, k, v, shape);
}

// The head-jobs path: the Q-only grid, then one CTA per head job.
template <typename T, int Dp>
cudaError_t launch_kv_head_job_path(const PrepassProblem& p, const PrepassLayout& layout, const PrepassBuffers& out,
                                    StridedInput q, StridedInput k, StridedInput v, cudaStream_t stream,
                                    bool programmatic) {
  bool q_grid = false;
  if (const cudaError_t err = launch_q_only_grid<T, Dp>(p, layout, out, q, k, v, stream, &q_grid); err != cudaSuccess) {
    return err;
  }
  if (q_grid && p.concurrent_heads > 0) return cudaErrorInvalidValue;  // (the dispatch asks for neither with the other)
  return launch_kv_head_jobs(p, layout, out, k, v, 0, stream, programmatic && q_grid);
}

// Asks for the largest shared-memory carveout for `kernel` (once per kernel
// and device). An SM holds CTAs of one carveout at a time: with the carveouts
// the driver picked for each kernel's own needs, the quantize grid, launched
// programmatically under the statistics kernel, started only ~8 us before
// that kernel's end, when SMs drained (H200, docs/perf-notes.md, session 19).
// A hint: a refusal leaves the driver's choice, and is cleared so that the
// launch checks that follow do not report it.
void prefer_max_shared_carveout(const void* kernel) {
  if (cuda::set_kernel_attribute_once(kernel, cudaFuncAttributePreferredSharedMemoryCarveout,
                                      cudaSharedmemCarveoutMaxShared) != cudaSuccess) {
    cudaGetLastError();
  }
}

template <typename T, bool Vec, int Dp>
cudaError_t launch_typed(const PrepassProblem& p, const PrepassLayout& layout, const PrepassBuffers& out,
                         StridedInput q, StridedInput k, StridedInput v, cudaStream_t stream, bool programmatic) {
  // Where the kernels overlap (programmatic), on both paths, so that the
  // quantize kernel (which the cluster path runs too) has one carveout
  // whatever ran before.
  if (programmatic) {
    prefer_max_shared_carveout(reinterpret_cast<const void*>(kv_stats_kernel<T, Vec>));
    prefer_max_shared_carveout(reinterpret_cast<const void*>(quantize_kernel<T, Vec, Dp>));
  }
  if constexpr (Vec) {
    if (kv_head_jobs_path(p, true)) return launch_kv_head_job_path<T, Dp>(p, layout, out, q, k, v, stream, programmatic);
    const KvClusterShape shape = kv_cluster_path<T, Dp>(p, true);
    if (shape.ctas > 0) return launch_kv_clusters<T, Dp>(p, layout, out, q, k, v, shape, stream, programmatic);
  }
  const int stats_items = layout.chunks * p.batch * p.heads_kv;
  const dim3 stats_grid(p.stats_ctas > 0 ? std::min(p.stats_ctas, stats_items) : stats_items);
  // The lane reduction (row_lanes * Dp floats), then the Vec ring.
  const std::size_t stats_smem =
      sizeof(float) * kThreads * kVec + (Vec ? sizeof(uint4) * kStatsStages * 2 * kThreads : 0);
  // An ordinary launch, never a programmatic one: it starts only once the
  // stream's earlier work (whatever wrote Q, K, V) is complete, which the
  // sm90 kernel relies on when it reads the caller's Q before its wait.
  kv_stats_kernel<T, Vec><<<stats_grid, kThreads, stats_smem, stream>>>(p, layout, out, k, v);
  const QuantizeJobs jobs = quantize_jobs(p);
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  // Programmatic or not, the quantize kernel never waits for this grid as a
  // whole: its jobs read the statistics only once their head's flags are
  // set, and every head has K jobs, so once it completes every statistics
  // write it depends on is visible. The statistics CTAs may still be exiting
  // when the next kernel's wait for the quantize grid returns; nothing reads
  // their memory after it.
  return pdl::launch(programmatic, quantize_kernel<T, Vec, Dp>, dim3(jobs.q + 2 * jobs.kv), dim3(kThreads), 0, stream,
                     p, layout, out, q, k, v);
}

bool vec_rows(const PrepassProblem& p, const StridedInput& q, const StridedInput& k, const StridedInput& v) {
  return p.head_dim % kVec == 0 && aligned16(q) && aligned16(k) && aligned16(v);
}

template <typename T>
cudaError_t launch_for_type(const PrepassProblem& p, const PrepassLayout& layout, const PrepassBuffers& out,
                            StridedInput q, StridedInput k, StridedInput v, cudaStream_t stream,
                            bool programmatic) {
  const bool vec = vec_rows(p, q, k, v);
  if (layout.head_dim_padded == 64)
    return vec ? launch_typed<T, true, 64>(p, layout, out, q, k, v, stream, programmatic)
               : launch_typed<T, false, 64>(p, layout, out, q, k, v, stream, programmatic);
  return vec ? launch_typed<T, true, 128>(p, layout, out, q, k, v, stream, programmatic)
             : launch_typed<T, false, 128>(p, layout, out, q, k, v, stream, programmatic);
}

template <typename T>
bool kv_in_clusters_for_type(const PrepassProblem& p, bool vec) {
  return (p.head_dim_padded == 64 ? kv_cluster_path<T, 64>(p, vec) : kv_cluster_path<T, 128>(p, vec)).ctas > 0;
}

}  // namespace

bool aligned16(const StridedInput& in) {
  return reinterpret_cast<std::uintptr_t>(in.data) % 16 == 0 && in.stride_b % kVec == 0 && in.stride_h % kVec == 0 &&
         in.stride_n % kVec == 0;
}

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
  l.q_tiles = job_tiles(p.nq);
  l.q_tiles_div = num::FastDivisor::of(static_cast<std::uint32_t>(l.q_tiles));
  l.k_tiles_div = num::FastDivisor::of(static_cast<std::uint32_t>(job_tiles(p.nk)));
  l.heads_q_div = num::FastDivisor::of(static_cast<std::uint32_t>(p.heads_q));
  l.heads_kv_div = num::FastDivisor::of(static_cast<std::uint32_t>(p.heads_kv));
  l.group_div = num::FastDivisor::of(static_cast<std::uint32_t>(p.heads_q / p.heads_kv));
  l.off_q_mean = take(p.smooth_q ? sizeof(float) * bhq * l.q_tiles * dp : 0);
  l.off_k_partial = take(sizeof(float) * bhk * l.chunks * dp);
  l.off_v_partial = take(sizeof(float) * bhk * l.chunks * 3 * dp);
  l.off_stats_ready = take(sizeof(int) * bhk * l.chunks);
  l.off_item_claims = take(2 * sizeof(int));
  l.off_job_ready = take(sizeof(int) * 2 * bhk * kKvHeadJobMaxCtas);
  l.off_job_claims = take(sizeof(int));
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
  b.stats_ready = reinterpret_cast<int*>(base + off_stats_ready);
  b.item_claims = reinterpret_cast<int*>(base + off_item_claims);
  b.job_ready = reinterpret_cast<int*>(base + off_job_ready);
  b.job_claims = reinterpret_cast<int*>(base + off_job_claims);
  return b;
}

bool kv_quantized_in_clusters(const PrepassProblem& p, StridedInput q, StridedInput k, StridedInput v) {
  const bool vec = vec_rows(p, q, k, v);
  if (kv_head_jobs_path(p, vec)) return false;
  return p.bf16 ? kv_in_clusters_for_type<__nv_bfloat16>(p, vec) : kv_in_clusters_for_type<__half>(p, vec);
}

KvHeadJobShape kv_head_job_shape(const PrepassProblem& p, StridedInput q, StridedInput k, StridedInput v) {
  return kv_head_jobs_path(p, vec_rows(p, q, k, v)) ? kv_head_job_shape_fitting(p) : KvHeadJobShape{};
}

cudaError_t launch_prepass(const PrepassProblem& p, const PrepassLayout& layout, const PrepassBuffers& out,
                           StridedInput q, StridedInput k, StridedInput v, cudaStream_t stream, bool programmatic) {
  return p.bf16 ? launch_for_type<__nv_bfloat16>(p, layout, out, q, k, v, stream, programmatic)
                : launch_for_type<__half>(p, layout, out, q, k, v, stream, programmatic);
}

}  // namespace sage::quant
