// mma.sync forward kernels: INT8 Q K^T (m16n8k32; or INT4, m16n8k64, from
// nibble-packed rows: the same byte addressing, twice the k per byte) with,
// by PvMode,
//   fp8_two_level   FP8 E4M3 P V (m16n8k32, two-level accumulation): sm_89+
//                   (Ada, Hopper as a fallback, Blackwell consumer sm_120);
//   fp16_fp32       FP16 P V (m16n8k16) straight into the fp32 O: sm_80+;
//   fp16_two_level  FP16 P V into a fresh accumulator per key tile: sm_80+.
// One kernel template; FwdTraits carries the choices.
//
// One CTA computes a 128-row tile of queries of one (batch, head) with 8
// warps; warp w owns rows 16w..16w+15 (kMmaGeometry: cta_q 128, warp_q 16,
// cta_k 64). All warps share each 64-key K / V^T tile.
//
// Data flow:
//   global (pre-pass output) --cp.async, 2 stages--> smem Q, K[st], V^T[st]
//   per key tile:
//     smem Q, K[st] --ldmatrix--> A, B fragments --mma s8--> S int32 (32 regs)
//     S --x q_scale*k_scale, row max, exp2 (OnlineSoftmax)--> P fp32
//       --cvt e4m3 (x448)--> P fp8 A fragments (the S accumulator layout
//       is the A layout once V^T's keys are permuted, see prepass.h)
//     smem V^T[st] --ldmatrix--> B fragments --mma e4m3, fresh accumulator
//       per 8-channel slice and key tile--> O = O * alpha + PV (fp32)
//   FP16 PV instead: P fp32 --cvt f16x2--> A fragments (the m16n8 S layout
//     is the m16n8k16 A layout, no permutation); smem V [key][channel]
//     --ldmatrix.trans--> B fragments --mma f16--> O (fp32 mode: O *= alpha,
//     then accumulate into O; two-level: O = O * alpha + fresh PV).
//   epilogue: O / l (* v_scale for FP8) (+ mean_v) -> out; LSE.
//   smooth_q (SmoothQ instances): after a tile lands, all threads compute
//   its per-key score offsets mean_q . k_j (smem K[st] --> delta,
//   src/cuda/smooth_q.cuh), added to the scaled scores before the softmax.
// The online softmax and the FP8 packing are the sm90 kernel's (same
// accumulator and A-fragment layouts), so both families quantize P alike.
#pragma once

#include <climits>
#include <cstdint>

#include <cuda_fp16.h>

#include "cuda/common/forward_device.cuh"
#include "cuda/common/smooth_q.cuh"
#include "cuda/mma/ptx_mma.cuh"
#include "cuda/mma/qk_int8_mma_params.h"
#include "cuda/sm90/qk_int8_pv_fp8_sm90_softmax.cuh"
#include "numerics/tile_geometry.h"

namespace sage::mma {

template <int HeadDimPadded, bool Causal, typename OutT, PvMode Pv, int QkBits = 8, bool SmoothQ = false>
struct FwdTraits {
  static constexpr int kDp = HeadDimPadded;
  static constexpr bool kSmoothQ = SmoothQ;
  static constexpr int kQkBits = QkBits;
  static constexpr int kQKRowBytes = kDp * QkBits / 8;  // bytes per Q / K row in global and shared memory
  static constexpr bool kCausal = Causal;
  using Out = OutT;
  static constexpr PvMode kPv = Pv;
  static constexpr bool kPvFp8 = Pv == PvMode::fp8_two_level;
  static constexpr bool kTwoLevel = Pv != PvMode::fp16_fp32;
  static constexpr int kBlockQ = kMmaGeometry.cta_q;
  static constexpr int kBlockK = kMmaGeometry.cta_k;
  static constexpr int kWarpQ = kMmaGeometry.warp_q;
  static constexpr int kWarps = kBlockQ / kWarpQ;
  static constexpr int kThreads = 32 * kWarps;
  static constexpr int kStages = 2;
  // Shared rows are padded by 16 bytes: the 8 row addresses of one ldmatrix
  // matrix then start in 8 different 16-byte bank groups (row pitches of
  // 80 and 144 bytes), so ldmatrix is conflict-free without a swizzle.
  static constexpr int kPad = 16;
  static constexpr int kQKPitch = kQKRowBytes + kPad;  // bytes per Q / K shared row
  // FP8: V^T rows (one channel, kBlockK keys); FP16: V rows (one key, kDp channels).
  static constexpr int kVRows = kPvFp8 ? kDp : kBlockK;
  static constexpr int kVPitch = (kPvFp8 ? kBlockK : 2 * kDp) + kPad;
  static constexpr int kKSteps = kQKRowBytes / 32;  // 32-byte k steps of Q K^T (k32 INT8 / k64 INT4)
  static constexpr int kSAcc = kBlockK / 2;       // int32 S accumulators per thread
  static constexpr int kOAcc = kDp / 2;           // fp32 O accumulators per thread
  static constexpr int kPChunks = kPvFp8 ? kBlockK / 32 : kBlockK / 16;  // A fragments of P per tile

  static_assert(kDp == 64 || kDp == 128, "head dims are padded to 64 or 128");
  static_assert(QkBits == 8 || QkBits == 4, "INT8 or INT4 Q/K");
  static_assert(127 * 127 * kDp < (1 << 24), "integer scores must convert to fp32 exactly");
  static_assert(kQKRowBytes % 32 == 0, "whole 32-byte k steps");
  static_assert(kWarpQ == 16, "one m16 MMA row block per warp");
  static_assert(kBlockQ % kWarpQ == 0 && kThreads <= 1024, "whole warps");
  static_assert(kBlockK % 32 == 0, "whole 32-key chunks of the permuted V^T");
  static_assert((kQKPitch % 16) == 0 && (kVPitch % 16) == 0, "cp.async / ldmatrix need 16-byte rows");
  // smooth_q: kOffsetParts threads per key, each over a contiguous run of
  // the key's code bytes (whole 4-byte words), combined with shuffles.
  static constexpr int kOffsetParts = kThreads / kBlockK;
  static constexpr int kOffsetPartBytes = kQKRowBytes / kOffsetParts;
  static_assert(kOffsetParts == 4 && kOffsetPartBytes % 4 == 0, "a quad per key, whole words per thread");
};

template <class T>
struct FwdSharedStorage {
  alignas(128) int8_t q[T::kBlockQ * T::kQKPitch];
  alignas(128) int8_t k[T::kStages][T::kBlockK * T::kQKPitch];
  alignas(128) uint8_t v[T::kStages][T::kVRows * T::kVPitch];
  // smooth_q only (unused otherwise: under 1 KiB)
  float q_mean[T::kDp];
  float delta[T::kBlockK];  // base-2 score offset per key of the current tile
};

// ---- loads (all threads, 16 bytes each) ---------------------------------------
template <class T>
__device__ __forceinline__ void load_q_tile(const QkInt8MmaParams& p, FwdSharedStorage<T>& s, int q_tile, int bh) {
  constexpr int kChunks = T::kQKRowBytes / 16;
  const int8_t* base = p.q + static_cast<int64_t>(bh) * p.nq * T::kQKRowBytes;
  for (int i = threadIdx.x; i < T::kBlockQ * kChunks; i += T::kThreads) {
    const int row = i / kChunks, c = i % kChunks;
    const int src_row = q_tile * T::kBlockQ + row;
    const bool ok = src_row < p.nq;  // rows past Nq: zeros (their results are not stored)
    cp_async_16(s.q + row * T::kQKPitch + 16 * c,
                base + static_cast<int64_t>(ok ? src_row : 0) * T::kQKRowBytes + 16 * c, ok);
  }
}

template <class T>
__device__ __forceinline__ void load_kv_tile(const QkInt8MmaParams& p, FwdSharedStorage<T>& s, int tile, int st,
                                             int bh_kv) {
  const int key0 = tile * T::kBlockK;
  {  // K rows past Nk read as zeros; the softmax masks their scores anyway.
    constexpr int kChunks = T::kQKRowBytes / 16;
    const int8_t* base = p.k + static_cast<int64_t>(bh_kv) * p.nk * T::kQKRowBytes;
    for (int i = threadIdx.x; i < T::kBlockK * kChunks; i += T::kThreads) {
      const int row = i / kChunks, c = i % kChunks;
      const bool ok = key0 + row < p.nk;
      cp_async_16(s.k[st] + row * T::kQKPitch + 16 * c,
                  base + static_cast<int64_t>(ok ? key0 + row : 0) * T::kQKRowBytes + 16 * c, ok);
    }
  }
  if constexpr (T::kPvFp8) {
    // V^T: Dp channel rows of kBlockK keys. The pre-pass wrote zeros up to
    // nk_padded (a multiple of 16); 16-key chunks past it are zero-filled
    // here, so P = 0 never meets a NaN byte.
    constexpr int kChunks = T::kBlockK / 16;
    const uint8_t* base = p.vt + static_cast<int64_t>(bh_kv) * T::kDp * p.nk_padded;
    for (int i = threadIdx.x; i < T::kDp * kChunks; i += T::kThreads) {
      const int ch = i / kChunks, c = i % kChunks;
      const int key = key0 + 16 * c;
      const bool ok = key < p.nk_padded;
      cp_async_16(s.v[st] + ch * T::kVPitch + 16 * c, base + static_cast<int64_t>(ch) * p.nk_padded + (ok ? key : 0),
                  ok);
    }
  } else {
    // V rows (fp16, Dp channels = 2 * Dp bytes); rows past Nk are zeros.
    constexpr int kChunks = 2 * T::kDp / 16;
    const uint16_t* base = p.v16 + static_cast<int64_t>(bh_kv) * p.nk * T::kDp;
    for (int i = threadIdx.x; i < T::kBlockK * kChunks; i += T::kThreads) {
      const int row = i / kChunks, c = i % kChunks;
      const bool ok = key0 + row < p.nk;
      cp_async_16(s.v[st] + row * T::kVPitch + 16 * c,
                  base + static_cast<int64_t>(ok ? key0 + row : 0) * T::kDp + 8 * c, ok);
    }
  }
}

// smooth_q: delta2 of every key of the tile in stage st (smooth_q.cuh),
// a quad of threads per key. Ends with a barrier: delta is then complete.
template <class T>
__device__ __forceinline__ void compute_key_offsets(const QkInt8MmaParams& p, FwdSharedStorage<T>& s, int st,
                                                    int key0, const float* k_scales) {
  const int key = threadIdx.x / T::kOffsetParts, part = threadIdx.x % T::kOffsetParts;
  constexpr int kChannelsPerByte = 8 / T::kQkBits;
  const int8_t* codes = s.k[st] + key * T::kQKPitch + part * T::kOffsetPartBytes;
  const float* mq = s.q_mean + part * T::kOffsetPartBytes * kChannelsPerByte;
  float dot = 0.f;
#pragma unroll
  for (int w = 0; w < T::kOffsetPartBytes / 4; ++w) {
    dot = smoothq::dot_word<T::kQkBits>(*reinterpret_cast<const uint32_t*>(codes + 4 * w),
                                        mq + 4 * kChannelsPerByte * w, dot);
  }
  dot += __shfl_xor_sync(0xffffffffu, dot, 1);
  dot += __shfl_xor_sync(0xffffffffu, dot, 2);
  if (part == 0) {
    constexpr TileGeometry geometry = kMmaGeometry;
    s.delta[key] = smoothq::key_offset(dot, k_scales, geometry.k_group_of(key0 + key, p.granularity),
                                       key0 + key < p.nk, p.scale_log2);
  }
  __syncthreads();
}

// ---- MMAs of one warp ----------------------------------------------------------
// S (16 rows x kBlockK keys) = the warp's Q rows x K tile. Q's A fragments
// are re-read from shared memory per k32 step rather than held across the
// loop: 16 registers at D = 128 that the O and S accumulators need more
// (with them resident, ptxas spills on sm_90a), for 25% more ldmatrix
// traffic than K alone.
template <class T>
__device__ __forceinline__ void qk_mma(int32_t (&s)[T::kSAcc], const int8_t* q_lane_row, const int8_t* k_tile,
                                       int lane) {
#pragma unroll
  for (int i = 0; i < T::kSAcc; ++i) s[i] = 0;
  // ldmatrix x4 over 16 keys x 32 bytes: matrices (keys 0-7, bytes 0-15),
  // (keys 0-7, bytes 16-31), (keys 8-15, bytes 0-15), (keys 8-15, 16-31) =
  // b0, b1 of two neighbouring n8 tiles.
  const int8_t* lane_row = k_tile + ((lane % 8) + 8 * (lane / 16)) * T::kQKPitch + 16 * ((lane / 8) % 2);
#pragma unroll
  for (int kk = 0; kk < T::kKSteps; ++kk) {
    uint32_t qf[4];
    ldmatrix_x4(qf, q_lane_row + 32 * kk);
#pragma unroll
    for (int np = 0; np < T::kBlockK / 16; ++np) {
      uint32_t b[4];
      ldmatrix_x4(b, lane_row + np * 16 * T::kQKPitch + 32 * kk);
      auto& lo = *reinterpret_cast<int32_t(*)[4]>(&s[8 * np]);
      auto& hi = *reinterpret_cast<int32_t(*)[4]>(&s[8 * np + 4]);
      if constexpr (T::kQkBits == 8) {
        mma_s8_m16n8k32(lo, qf, b[0], b[1]);
        mma_s8_m16n8k32(hi, qf, b[2], b[3]);
      } else {
        mma_s4_m16n8k64(lo, qf, b[0], b[1]);
        mma_s4_m16n8k64(hi, qf, b[2], b[3]);
      }
    }
  }
}

// FP8: O = O * alpha + P V for the warp's 16 rows. Each pair of 8-channel
// slices accumulates the tile's kBlockK keys into a fresh accumulator first
// (two-level accumulation, tile = kBlockK keys as in the emulation).
template <class T>
__device__ __forceinline__ void pv_mma_fp8(float (&o)[T::kOAcc], const uint32_t (&pf)[T::kPChunks][4],
                                       const float (&alpha)[2], const uint8_t* vt_tile, int lane) {
  const uint8_t* lane_row = vt_tile + ((lane % 8) + 8 * (lane / 16)) * T::kVPitch + 16 * ((lane / 8) % 2);
#pragma unroll
  for (int dp = 0; dp < T::kDp / 16; ++dp) {
    float acc[2][4] = {{0.f, 0.f, 0.f, 0.f}, {0.f, 0.f, 0.f, 0.f}};
#pragma unroll
    for (int c = 0; c < T::kPChunks; ++c) {
      uint32_t b[4];
      ldmatrix_x4(b, lane_row + dp * 16 * T::kVPitch + 32 * c);
      mma_e4m3_m16n8k32(acc[0], pf[c], b[0], b[1]);
      mma_e4m3_m16n8k32(acc[1], pf[c], b[2], b[3]);
    }
#pragma unroll
    for (int h = 0; h < 2; ++h)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        float& x = o[8 * dp + 4 * h + e];
        x = x * alpha[e / 2] + acc[h][e];
      }
  }
}

// FP16 A fragments of P for k16 step ks (keys 16ks..16ks+15 = S slices 2ks,
// 2ks+1): a0 = row g of slice 2ks, a1 = row g+8 of it, a2, a3 the same of
// slice 2ks+1; the lower key in the lower half of each register.
template <class T>
__device__ __forceinline__ void pack_p_f16(const float (&pexp)[T::kSAcc], uint32_t (&pf)[T::kPChunks][4]) {
#pragma unroll
  for (int ks = 0; ks < T::kPChunks; ++ks) {
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      const int i = 4 * (2 * ks + r / 2) + 2 * (r % 2);
      const __half2 h = __floats2half2_rn(pexp[i], pexp[i + 1]);
      pf[ks][r] = *reinterpret_cast<const uint32_t*>(&h);
    }
  }
}

// FP16: P V for the warp's 16 rows from V [key][channel] with ldmatrix.trans:
// matrices (keys 0-7, channels 0-7), (keys 8-15, 0-7), (keys 0-7, 8-15),
// (keys 8-15, 8-15) = b0, b1 of two neighbouring 8-channel slices.
template <class T>
__device__ __forceinline__ void pv_mma_f16(float (&o)[T::kOAcc], const uint32_t (&pf)[T::kPChunks][4],
                                           const float (&alpha)[2], const uint8_t* v_tile, int lane) {
  const uint8_t* lane_row = v_tile + ((lane % 8) + 8 * ((lane / 8) % 2)) * T::kVPitch + 16 * (lane / 16);
#pragma unroll
  for (int dp = 0; dp < T::kDp / 16; ++dp) {
    float acc[2][4];
#pragma unroll
    for (int h = 0; h < 2; ++h)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        float& x = o[8 * dp + 4 * h + e];
        if constexpr (T::kTwoLevel) {
          acc[h][e] = 0.f;
        } else {
          acc[h][e] = x * alpha[e / 2];  // accumulate straight into the rescaled O
        }
      }
#pragma unroll
    for (int ks = 0; ks < T::kPChunks; ++ks) {
      uint32_t b[4];
      ldmatrix_x4_trans(b, lane_row + ks * 16 * T::kVPitch + 32 * dp);
      mma_f16_m16n8k16(acc[0], pf[ks], b[0], b[1]);
      mma_f16_m16n8k16(acc[1], pf[ks], b[2], b[3]);
    }
#pragma unroll
    for (int h = 0; h < 2; ++h)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        float& x = o[8 * dp + 4 * h + e];
        if constexpr (T::kTwoLevel) {
          x = x * alpha[e / 2] + acc[h][e];
        } else {
          x = acc[h][e];
        }
      }
  }
}

// The softmax of one tile's scores (integer + scale, or float with smooth_q)
// and its P V into O.
template <class T, class Softmax, class... Scores>
__device__ __forceinline__ void softmax_and_pv(Softmax& softmax, float (&o)[T::kOAcc], const uint8_t* v_tile, int lane,
                                               const Scores&... scores) {
  uint32_t pf[T::kPChunks][4];
  float alpha[2];
  if constexpr (T::kPvFp8) {
    softmax.step(pf, alpha, scores...);
    pv_mma_fp8<T>(o, pf, alpha, v_tile, lane);
  } else {
    float pexp[T::kSAcc];
    softmax.exponentiate(scores..., pexp, alpha);
    pack_p_f16<T>(pexp, pf);
    pv_mma_f16<T>(o, pf, alpha, v_tile, lane);
  }
}

// ---- kernel ----------------------------------------------------------------------
template <class T>
__device__ __forceinline__ void forward_tile(const QkInt8MmaParams& p, FwdSharedStorage<T>& s) {
  const fwd::CtaWork w = fwd::cta_work<T>(p);
  const int q_tile = w.q_tile, bh = w.bh, bh_kv = w.bh_kv, n_tiles = w.n_tiles;

  // Prologue: group 0 = Q + tile 0, group 1 = tile 1 (possibly empty groups:
  // the wait counts below stay uniform).
  load_q_tile<T>(p, s, q_tile, bh);
  if constexpr (T::kSmoothQ) {  // plain loads: visible after the loop's first barrier
    const float* mq = p.q_mean + (static_cast<int64_t>(bh) * p.q_tiles + q_tile) * T::kDp;
    for (int c = threadIdx.x; c < T::kDp; c += T::kThreads) s.q_mean[c] = mq[c];
  }
  if (n_tiles > 0) load_kv_tile<T>(p, s, 0, 0, bh_kv);
  cp_async_commit();
  if (n_tiles > 1) load_kv_tile<T>(p, s, 1, 1, bh_kv);
  cp_async_commit();

  const int lane = threadIdx.x % 32;
  const int warp = threadIdx.x / 32;
  const int quad = lane % 4;
  // This thread's two rows (g and g + 8 of its warp's 16).
  const int row0 = q_tile * T::kBlockQ + warp * T::kWarpQ + lane / 4;
  const int rows[2] = {row0, row0 + 8};

  // Both rows share one Q scale and, per key tile, one K scale at every
  // granularity (tile_geometry.h), so S = acc * (q_scale * k_scale).
  constexpr TileGeometry geometry = kMmaGeometry;  // a device-side copy of the host constant
  const float q_scale = p.q_scale[static_cast<int64_t>(bh) * p.q_groups + geometry.q_group_of(row0, p.granularity)];
  const float* k_scales = p.k_scale + static_cast<int64_t>(bh_kv) * p.k_groups;

  // ldmatrix x4 over 16 rows x 32 bytes: matrices (rows 0-7, bytes 0-15),
  // (rows 8-15, bytes 0-15), (rows 0-7, 16-31), (rows 8-15, 16-31) = a0..a3.
  const int8_t* q_lane_row =
      s.q + (warp * T::kWarpQ + (lane % 8) + 8 * ((lane / 8) % 2)) * T::kQKPitch + 16 * (lane / 16);

  sm90::OnlineSoftmax<T::kSAcc, /*kScaleP448=*/T::kPvFp8> softmax;
  float o[T::kOAcc];
#pragma unroll
  for (int i = 0; i < T::kOAcc; ++i) o[i] = 0.f;

  for (int t = 0; t < n_tiles; ++t) {
    const int st = t % T::kStages;
    cp_async_wait<1>();  // tile t's group (with Q for t = 0) has landed; t+1's may fly
    __syncthreads();
    const int key0 = t * T::kBlockK;
    const float qk_scale = q_scale * k_scales[geometry.k_group_of(key0 + 2 * quad, p.granularity)];

    if constexpr (T::kSmoothQ) compute_key_offsets<T>(p, s, st, key0, k_scales);
    int32_t s_acc[T::kSAcc];
    qk_mma<T>(s_acc, q_lane_row, s.k[st], lane);

    const bool needs_mask = key0 + T::kBlockK > p.nk ||
                            (T::kCausal && key0 + T::kBlockK - 1 > q_tile * T::kBlockQ + p.causal_shift);
    if (needs_mask) sm90::mask_scores<T::kSAcc>(s_acc, rows, key0 + 2 * quad, p.nk, T::kCausal, p.causal_shift);

    if constexpr (T::kSmoothQ) {
      float sf[T::kSAcc];
      smoothq::scores_with_offsets(s_acc, qk_scale, s.delta, 2 * quad, sf);
      softmax_and_pv<T>(softmax, o, s.v[st], lane, sf);
    } else {
      softmax_and_pv<T>(softmax, o, s.v[st], lane, s_acc, qk_scale, needs_mask);
    }

    __syncthreads();  // every warp is done with stage st
    if (t + T::kStages < n_tiles) load_kv_tile<T>(p, s, t + T::kStages, st, bh_kv);
    cp_async_commit();
  }
  cp_async_wait<0>();

  softmax.finish();
  fwd::write_output<T>(p, o, softmax, fwd::load_channel_factors<T>(p, bh_kv, quad), rows, bh, quad);
}

template <class T>
__global__ void __launch_bounds__(T::kThreads, 1) qk_int8_mma_kernel(const __grid_constant__ QkInt8MmaParams p) {
  extern __shared__ __align__(128) uint8_t smem_raw[];
  auto& s = *reinterpret_cast<FwdSharedStorage<T>*>(smem_raw);
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 890
  if constexpr (T::kPvFp8) {
    __trap();  // FP8 mma.sync needs sm_89; the dispatch never launches this here
  } else {
    forward_tile<T>(p, s);
  }
#else
  forward_tile<T>(p, s);
#endif
}

}  // namespace sage::mma
