// Hopper forward kernel: INT8 Q K^T and FP8 (E4M3) P V with wgmma, TMA loads,
// warp specialization.
//
// Each CTA loops over work items (a tile of kBlockQ queries of one (batch,
// head); fwd::item_work) in rounds of gridDim.x (fwd::cta_item):
//   warpgroup 0  producer: one thread issues the TMA loads of the Q tile and
//                of K / V^T tiles into a kStages-deep ring of shared buffers
//                (the ring runs on across items; Q of the next item is
//                loaded as soon as the consumers are done with this one's:
//                after their last Q K^T, or, where they quantize Q
//                themselves, once they have);
//   warpgroups 1.. consumers (two; three at D = 64, see
//                consumer_warpgroups): each owns 64 query rows and, for every
//                key tile, runs S = Q K^T (int32), the online softmax in fp32
//                (base 2, scales folded in), packs P to FP8 in registers and
//                accumulates P V^T into a fresh fp32 tile accumulator that is
//                added into O (two-level accumulation).
// Each consumer issues P V^T of tile t-1 and Q K^T of tile t back to back,
// folds P V^T into O while Q K^T runs, then runs the softmax of tile t. The
// consumers are left to run side by side (their softmaxes overlap, so a
// scheduler has two or three softmax warps to interleave): a ping-pong schedule
// (named-barrier turns, one consumer's MMAs under the other's softmax) was
// 3-10% slower (docs/perf-notes.md).
//
// Data flow per key tile (consumer view):
//   smem K[st] --wgmma s8--> S int32 regs --x q_scale*k_scale, max, exp2-->
//   P fp32 regs --cvt e4m3 (x448)--> P fp8 regs (A operand) --wgmma e4m3
//   with smem V^T[st]--> PV fp32 --O = O*alpha + PV--> O regs.
// Q (QuantizeQ instances): the caller's 16-bit rows arrive by TMA and each
// consumer quantizes its own 64 rows to INT8 into the Q buffer at the start
// of an item, with the pre-pass's arithmetic (quantize_q_rows); otherwise
// the pre-pass's INT8 rows arrive. This saves the pre-pass its Q jobs and
// costs each item its quantization: the dispatch takes it where that paid
// (sm90::quantizes_q_in_kernel, docs/perf-notes.md).
// smooth_q (SmoothQ instances): warps 1 and 2 of the producer warpgroup,
// otherwise idle, compute the per-key score offsets mean_q . k_j of each K
// tile once it lands (smem K[st] --> delta[st], src/cuda/smooth_q.cuh); the
// consumers add them to the scaled scores before the softmax.
#pragma once

#include <climits>
#include <cstdint>

#include "cuda/common/forward_device.cuh"
#include "cuda/common/programmatic_launch.cuh"
#include "cuda/common/smooth_q.cuh"
#include "cuda/quant/quantize_rows.cuh"
#include "cuda/sm90/ptx_sm90.cuh"
#include "cuda/sm90/qk_int8_pv_fp8_sm90_params.h"
#include "cuda/sm90/qk_int8_pv_fp8_sm90_softmax.cuh"
#include "cuda/sm90/wgmma_ops.cuh"
#include "numerics/formats.h"
#include "numerics/tile_geometry.h"

namespace sage::sm90 {

inline constexpr int kOffsetBarrier = 1;      // named barrier of the smooth_q key-offset warps
inline constexpr int kQuantizedQBarrier = 2;  // + consumer: its warps are done writing its INT8 Q rows

template <int HeadDimPadded, bool Causal, typename OutT, bool SmoothQ = false, bool QuantizeQ = false>
struct FwdTraits {
  static constexpr int kDp = HeadDimPadded;
  static constexpr bool kCausal = Causal;
  static constexpr bool kSmoothQ = SmoothQ;
  static constexpr bool kQuantizeQ = QuantizeQ;  // Q quantized here, from the caller's rows
  static constexpr bool kPvFp8 = true;  // (the shared epilogue applies the V scales)
  static constexpr int kOffsetThreads = 64;  // producer warps 1, 2: two keys each per tile
  using Out = OutT;
  static constexpr int kRowsPerConsumer = 64;  // wgmma M
  static constexpr int kConsumers = consumer_warpgroups(HeadDimPadded, SmoothQ);
  // The quantization groups stay those of kSm90Geometry (128-row blocks,
  // 16-row warps): every warp's 16 rows lie inside one block either way.
  static constexpr int kBlockQ = query_block_rows(HeadDimPadded, SmoothQ);
  static constexpr int kBlockK = kSm90Geometry.cta_k;
  static constexpr int kThreads = 128 * (1 + kConsumers);
  // Three stages: a stage is refilled only once every consumer is done with
  // it, and they drift apart by up to a tile.
  static constexpr int kStages = 3;
  // A consumer holds O, the P V^T tile accumulator, S and P at once while
  // its two MMAs run (~210 registers at D = 128, ~150 at D = 64); the
  // smooth_q producer warps need 40 (their key-offset loop spills a few
  // words per K tile at that size, outside its FMA loop). The split must fit
  // in what the CTA was given at launch (kThreads x the register count of
  // __launch_bounds__(kThreads, 1)): setmaxnreg.inc waits for registers that
  // never come otherwise.
  static constexpr int kProducerRegs = SmoothQ ? 40 : 24;
  static constexpr int kConsumerRegs = kConsumers == 3 ? 160 : SmoothQ ? 232 : 240;
  static constexpr int kQBytes = kBlockQ * kDp;
  static constexpr int kQ16Bytes = kBlockQ * kDp * 2;  // QuantizeQ: the caller's rows (inputs share OutT)
  static constexpr int kKBytes = kBlockK * kDp;
  static constexpr int kVBytes = kDp * kBlockK;
  static constexpr int kSAcc = kBlockK / 2;  // int32 S accumulators per thread
  static constexpr int kOAcc = kDp / 2;      // fp32 O accumulators per thread

  static_assert(kDp == 64 || kDp == 128, "head dims are padded to 64 or 128");
  static_assert(127 * 127 * kDp < (1 << 24), "INT8 scores must convert to fp32 exactly");
  static_assert(kBlockK == 128, "V^T rows of 128 FP8 keys fill one 128-byte swizzle row");
  static_assert(kBlockQ == kConsumers * kRowsPerConsumer && (kConsumers == 2 || kConsumers == 3),
                "two or three consumer warpgroups");
  static_assert(kSm90Geometry.cta_q % kSm90Geometry.warp_q == 0, "a warp's rows share their Q block");
  static_assert(kSm90Geometry.warp_q == 16, "each warp of a wgmma owns 16 rows");
  static constexpr int kLaunchRegs = 65536 / kThreads / 8 * 8;  // per thread, as ptxas allocates them
  static_assert(128 * kProducerRegs + 128 * kConsumers * kConsumerRegs <= kThreads * kLaunchRegs,
                "setmaxnreg split beyond the CTA's launch allocation (deadlock)");
  static_assert(kBlockK == 2 * kOffsetThreads, "two keys per key-offset thread");
  static_assert(!(SmoothQ && QuantizeQ), "smooth_q's Q comes from the pre-pass (its tile means)");
  static_assert(kQuantizedQBarrier + kConsumers <= 16, "named barriers");
};

template <class T>
struct FwdSharedStorage {
  alignas(1024) int8_t q[T::kQBytes];
  alignas(1024) int8_t k[T::kStages][T::kKBytes];
  alignas(1024) uint8_t vt[T::kStages][T::kVBytes];
  alignas(128) uint8_t q16[T::kQuantizeQ ? T::kQ16Bytes : 16];  // QuantizeQ: [kBlockQ][kDp] 16-bit
  uint64_t q_full;
  uint64_t q_empty;  // the consumers are done with the Q tile (QuantizeQ: with q16)
  uint64_t k_full[T::kStages];
  uint64_t v_full[T::kStages];
  uint64_t kv_empty[T::kStages];
  // smooth_q only (unused otherwise: 1.5 KiB)
  float q_mean[T::kDp];
  float delta[T::kStages][T::kBlockK];  // base-2 score offset per key
  uint64_t delta_full[T::kStages];
};

// Where byte `off` of a row-major tile of Dp-byte INT8 rows (Q, K) lies once
// TMA has written it with the swizzle of its row width (128- or 64-byte:
// 16-byte chunk bits 4.. XOR row-group bits 7..).
template <int Dp>
__device__ __forceinline__ int swizzled(int off) {
  return off ^ (((off >> 7) & (Dp / 16 - 1)) << 4);
}

// ---- producer: TMA loads ----------------------------------------------------------
// Per work item: the Q tile (once the consumers released the previous one),
// then its K / V^T tiles. Ring entry `it` (K/V tiles counted over all items,
// fwd::for_each_item) is stage it % kStages, phase (it / kStages) & 1 for the
// producer, the consumers and the key-offset warps alike.
template <class T>
__device__ void produce(const QkInt8PvFp8Params& p, FwdSharedStorage<T>& s) {
  fwd::for_each_item<T>(p, [&](const fwd::CtaWork& w, int j, int it0) {
    mbar_wait_idle(&s.q_empty, (j & 1) ^ 1);  // passes at once on a fresh barrier
    if constexpr (T::kQuantizeQ) {
      mbar_arrive_expect_tx(&s.q_full, T::kQ16Bytes);
      tma_load_4d(s.q16, &p.tmap_q, &s.q_full, 0, w.q_tile * T::kBlockQ, w.bh % p.heads_q, w.bh / p.heads_q);
      // The caller's Q does not come from the pre-pass: the first one is
      // loaded before the wait for it (see the kernel), K and V after.
      if (j == 0) pdl::wait_for_prerequisites();
    } else {
      mbar_arrive_expect_tx(&s.q_full, T::kQBytes);
      tma_load_3d(s.q, &p.tmap_q, &s.q_full, 0, w.q_tile * T::kBlockQ, w.bh);
    }
    for (int t = 0; t < w.n_tiles; ++t) {
      const int st = (it0 + t) % T::kStages;
      const uint32_t phase = ((it0 + t) / T::kStages) & 1;
      mbar_wait_idle(&s.kv_empty[st], phase ^ 1);  // passes at once on a fresh barrier
      mbar_arrive_expect_tx(&s.k_full[st], T::kKBytes);
      tma_load_3d(s.k[st], &p.tmap_k, &s.k_full[st], 0, t * T::kBlockK, w.bh_kv);
      mbar_arrive_expect_tx(&s.v_full[st], T::kVBytes);
      tma_load_3d(s.vt[st], &p.tmap_vt, &s.v_full[st], t * T::kBlockK, 0, w.bh_kv);
    }
  });
}

// The key offsets of one work item's K tiles; K tile t is ring entry it0 + t.
template <class T>
__device__ __forceinline__ void key_offsets_of_item(const QkInt8PvFp8Params& p, FwdSharedStorage<T>& s,
                                                    const fwd::CtaWork& w, int it0) {
  const int i = threadIdx.x - 32;
  constexpr TileGeometry geometry = kSm90Geometry;
  const float* k_scales = p.k_scale + static_cast<int64_t>(w.bh_kv) * p.k_groups;
  for (int t = 0; t < w.n_tiles; ++t) {
    const int st = (it0 + t) % T::kStages;
    const uint32_t phase = ((it0 + t) / T::kStages) & 1;
    mbar_wait_idle(&s.kv_empty[st], phase ^ 1);
    mbar_wait_idle(&s.k_full[st], phase);
    // Two keys, each summed over the even and the odd 16-channel chunks
    // separately: four independent FMA chains instead of two long ones.
    float dot[2][2] = {{0.f, 0.f}, {0.f, 0.f}};
#pragma unroll 2  // (fully unrolled, the loads outgrow the producer's 40 registers)
    for (int c = 0; c < T::kDp / 16; ++c) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int off = (i + 64 * h) * T::kDp + 16 * c;
        const uint4 chunk = *reinterpret_cast<const uint4*>(s.k[st] + swizzled<T::kDp>(off));
        dot[h][c % 2] = smoothq::dot_chunk16<8>(chunk, s.q_mean + 16 * c, dot[h][c % 2]);
      }
    }
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int key = t * T::kBlockK + i + 64 * h;
      s.delta[st][i + 64 * h] = smoothq::key_offset(dot[h][0] + dot[h][1], k_scales,
                                                    geometry.k_group_of(key, p.granularity), key < p.nk, p.scale_log2);
    }
    mbar_arrive(&s.delta_full[st]);
  }
}

// smooth_q: delta2 of every key of every tile (smooth_q.cuh), by warps 1
// and 2 of the producer warpgroup, thread i taking keys i and i + 64. A
// stage's delta is rewritten only once kv_empty says both consumers are done
// with the stage (they read delta before their P V MMA, which precedes their
// kv_empty arrival); it is published through delta_full.
template <class T>
__device__ void produce_key_offsets(const QkInt8PvFp8Params& p, FwdSharedStorage<T>& s) {
  static_assert(T::kBlockQ == kSm90Geometry.cta_q, "q_mean is per smoothing block: one per Q tile");
  fwd::for_each_item<T>(p, [&](const fwd::CtaWork& w, int, int it0) {
    named_barrier_sync(kOffsetBarrier, T::kOffsetThreads);  // all done with the previous item's mean
    const int i = threadIdx.x - 32;
    const float* mq = p.q_mean + (static_cast<int64_t>(w.bh) * p.q_tiles + w.q_tile) * T::kDp;
    for (int c = i; c < T::kDp; c += T::kOffsetThreads) s.q_mean[c] = mq[c];
    named_barrier_sync(kOffsetBarrier, T::kOffsetThreads);
    key_offsets_of_item<T>(p, s, w, it0);
  });
}

// ---- consumer: Q quantization, MMAs + softmax ---------------------------------------
// QuantizeQ: this consumer's 64 rows of the 16-bit Q tile (q16, zeros past
// head_dim and nq as TMA fills them) quantized to INT8 into the Q buffer, in
// the 128- or 64-byte swizzled layout its Q K^T reads, by the pre-pass's
// arithmetic (quantize_rows.cuh: the same rows and scales, bit for bit).
// Warp w takes its own 16 rows, the rows of its wgmma fragment: at per-warp
// and per-thread granularity every scale group lies inside them. Returns
// this thread's Q scale (its rows r and r + 8 share one), sm_scale * log2 e
// folded in as the pre-pass writes it. (Done by the otherwise idle producer
// warps instead, into a second Q buffer, with the consumers at 232
// registers to give those warps 40, the kernel measured slower still:
// docs/perf-notes.md, session 9.)
template <class T>
__device__ __forceinline__ float quantize_q_rows(const QkInt8PvFp8Params& p, FwdSharedStorage<T>& s, int consumer) {
  using L = quant::RowLanes<T::kDp>;
  constexpr TileGeometry geometry = kSm90Geometry;
  const int lane = threadIdx.x % 32;
  const int first_row = consumer * T::kRowsPerConsumer + (threadIdx.x / 32) % 4 * 16;  // of the warp, in the tile
  const uint4* rows16 = reinterpret_cast<const uint4*>(s.q16) + first_row * L::kChunkLanes;
  float m[L::kRows];
#pragma unroll
  for (int j = 0; j < L::kRows; ++j) {
    m[j] = quant::abs_max8<typename T::Out>(rows16[L::row_in_warp(j) * L::kChunkLanes + L::chunk()]);
  }
  float amax = quant::row_max_scatter(m);  // of row lane / 2
  quant::merge_group_max(amax, static_cast<int>(geometry.q_group_of(lane / 2, p.granularity)));
  const float scale = num::symmetric_scale(amax, 127);
  const float inv_own = num::reciprocal_rn(scale);
#pragma unroll
  for (int j = 0; j < L::kRows; ++j) {
    const int r = L::row_in_warp(j);
    float x[quant::kVec];
    quant::unpack8<typename T::Out>(rows16[r * L::kChunkLanes + L::chunk()], x);
    const int off = (first_row + r) * T::kDp + quant::kVec * L::chunk();
    *reinterpret_cast<uint2*>(s.q + swizzled<T::kDp>(off)) =
        quant::quantize_int8x8(x, __shfl_sync(0xffffffffu, inv_own, 2 * r));
  }
  fence_proxy_async_shared();  // the stores above, for the wgmma that reads them
  named_barrier_sync(kQuantizedQBarrier + consumer, 128);
  return __shfl_sync(0xffffffffu, scale, 2 * (lane / 4)) * p.scale_log2;
}

// S = Q K^T, issued asynchronously (one commit group): s_acc is written
// until mma_wait releases it.
template <class T>
__device__ __forceinline__ void qk_mma_issue(int32_t (&s_acc)[T::kSAcc], const int8_t* q_rows, const int8_t* k_tile) {
  wgmma_fence();
#pragma unroll
  for (int kk = 0; kk < T::kDp / 32; ++kk) {
    wgmma_m64n128k32_s32_s8_ss(s_acc, make_smem_desc<T::kDp>(q_rows, kk * 32), make_smem_desc<T::kDp>(k_tile, kk * 32),
                               kk > 0);
  }
  wgmma_commit();
}

// P V^T into a fresh accumulator (the tile's level of the two-level
// accumulation), issued asynchronously (one commit group); p_frag is read
// until it completes.
template <class T>
__device__ __forceinline__ void pv_mma_issue(float (&pv)[T::kOAcc], const uint32_t (&p_frag)[T::kBlockK / 32][4],
                                             const uint8_t* vt_tile) {
  wgmma_fence();
#pragma unroll
  for (int c = 0; c < T::kBlockK / 32; ++c) {
    if constexpr (T::kDp == 128) {
      wgmma_m64n128k32_f32_e4m3_rs(pv, p_frag[c], make_smem_desc<128>(vt_tile, c * 32), c > 0);
    } else {
      wgmma_m64n64k32_f32_e4m3_rs(pv, p_frag[c], make_smem_desc<128>(vt_tile, c * 32), c > 0);
    }
  }
  wgmma_commit();
}

// Waits until at most `Pending` commit groups are in flight, then hands the
// accumulator of the completed one back to the compiler.
template <int Pending, typename Acc, int N>
__device__ __forceinline__ void mma_wait(Acc (&acc)[N]) {
  wgmma_wait<Pending>();
  fence_operands(acc);
}

// One work item of a consumer: step t issues P V^T of tile t-1 (if any) and
// Q K^T of tile t (if any) back to back, folds P V^T into O under the
// running Q K^T, then runs the softmax of tile t. P and alpha carry from
// step to step. Key tile t is ring entry it0 + t; j is the item's round in
// this CTA (its parity is the phase of the item's Q tile).
template <class T>
__device__ __forceinline__ void consume_item(const QkInt8PvFp8Params& p, FwdSharedStorage<T>& s,
                                             const fwd::CtaWork& w, int it0, int j, int consumer) {
  const uint32_t q_phase = j & 1;
  const bool first_item = j == 0;
  const int q_tile = w.q_tile, bh = w.bh, bh_kv = w.bh_kv, n_tiles = w.n_tiles;
  const int lane = threadIdx.x % 32;
  const int warp = (threadIdx.x / 32) % 4;
  const int quad = lane % 4;  // column pair inside each 8-column slice
  const int first_row = q_tile * T::kBlockQ + consumer * T::kRowsPerConsumer;  // of this consumer
  // This thread's two rows (r and r + 8 of its warp's 16).
  const int row0 = first_row + warp * 16 + lane / 4;
  const int rows[2] = {row0, row0 + 8};

  // Both rows share one Q scale and, per key tile, one K scale at every
  // granularity (see tile_geometry.h), so S = acc * (q_scale * k_scale).
  constexpr TileGeometry geometry = kSm90Geometry;  // a device-side copy of the host constant
  const float* k_scales = p.k_scale + static_cast<int64_t>(bh_kv) * p.k_groups;

  OnlineSoftmax<T::kSAcc, /*kScaleP448=*/true, /*kScoresDieEarly=*/T::kConsumers == 3> softmax;
  float o[T::kOAcc];
#pragma unroll
  for (int i = 0; i < T::kOAcc; ++i) o[i] = 0.f;

  const int8_t* q_rows = s.q + consumer * T::kRowsPerConsumer * T::kDp;
  mbar_wait(&s.q_full, q_phase);
  float q_scale;
  if constexpr (T::kQuantizeQ) {
    q_scale = quantize_q_rows<T>(p, s, consumer);
    mbar_arrive(&s.q_empty);  // q16 is read: the producer may load the next item's rows
    if (first_item) pdl::wait_for_prerequisites();  // the K scales and V factors below
  } else {
    q_scale = p.q_scale[static_cast<int64_t>(bh) * p.q_groups + geometry.q_group_of(row0, p.granularity)];
  }

  uint32_t p_frag[T::kBlockK / 32][4];  // P of the previous tile, FP8
  float alpha[2];                        // its rescale factors of O

  auto issue_qk = [&](int t, int32_t(&s_acc)[T::kSAcc]) {
    const int st = (it0 + t) % T::kStages;
    mbar_wait(&s.k_full[st], ((it0 + t) / T::kStages) & 1);
    qk_mma_issue<T>(s_acc, q_rows, s.k[st]);
  };
  auto issue_pv = [&](int t, float(&pv)[T::kOAcc]) {
    const int st = (it0 + t) % T::kStages;
    mbar_wait(&s.v_full[st], ((it0 + t) / T::kStages) & 1);
    pv_mma_issue<T>(pv, p_frag, s.vt[st]);
  };
  // Once P V^T of tile t is complete: frees its stage, folds it into O.
  auto fold_pv = [&](int t, const float(&pv)[T::kOAcc]) {
    mbar_arrive(&s.kv_empty[(it0 + t) % T::kStages]);  // K and V^T of tile t may be overwritten now
#pragma unroll
    for (int i = 0; i < T::kOAcc; ++i) o[i] = o[i] * alpha[(i / 2) % 2] + pv[i];
  };
  // Once S of tile t is complete: the softmax into p_frag / alpha.
  auto softmax_tile = [&](int t, int32_t(&s_acc)[T::kSAcc]) {
    const int st = (it0 + t) % T::kStages;
    const int key0 = t * T::kBlockK;
    const float qk_scale = q_scale * k_scales[geometry.k_group_of(key0 + 2 * quad, p.granularity)];
    const bool needs_mask = key0 + T::kBlockK > p.nk ||
                            (T::kCausal && key0 + T::kBlockK - 1 > first_row + p.causal_shift);
    if (needs_mask) mask_scores<T::kSAcc>(s_acc, rows, key0 + 2 * quad, p.nk, T::kCausal, p.causal_shift);
    if constexpr (T::kSmoothQ) {
      float sf[T::kSAcc];
      mbar_wait(&s.delta_full[st], ((it0 + t) / T::kStages) & 1);
      smoothq::scores_with_offsets(s_acc, qk_scale, s.delta[st], 2 * quad, sf);
      softmax.step(p_frag, alpha, sf);
    } else {
      softmax.step(p_frag, alpha, s_acc, qk_scale, needs_mask);
    }
  };

  // (No branch may separate a wgmma from its wait: ptxas then serializes
  // every wgmma of the kernel. Hence the first and last steps are peeled.)
  if (n_tiles > 0) {
    int32_t s_acc[T::kSAcc];
    issue_qk(0, s_acc);
    mma_wait<0>(s_acc);
    softmax_tile(0, s_acc);
  }
  for (int t = 1; t < n_tiles; ++t) {
    float pv[T::kOAcc];
    int32_t s_acc[T::kSAcc];
    issue_pv(t - 1, pv);
    issue_qk(t, s_acc);
    mma_wait<1>(pv);  // P V^T done, Q K^T still running
    fold_pv(t - 1, pv);
    mma_wait<0>(s_acc);
    softmax_tile(t, s_acc);
  }
  // Every Q K^T of the item is complete: the producer may load the next Q.
  // (QuantizeQ: the INT8 Q buffer is the consumers' own, rewritten only
  // after this point.)
  if constexpr (!T::kQuantizeQ) mbar_arrive(&s.q_empty);
  // The epilogue's channel factors: read while the last P V^T runs, their
  // latency was exposed at every item's end. Only where that measured faster
  // (H200, docs/perf-notes.md, session 10): causal D = 128, -2..-3% kernel
  // time at 4K keys; non-causal D = 128 ran +2% at 16K (ptxas scheduled its
  // loop differently), and the 160-register consumers of D = 64 would spill.
  constexpr bool kFactorsUnderPv = T::kCausal && T::kConsumers == 2;
  fwd::ChannelFactors<T> factors;
  if (n_tiles > 0) {
    float pv[T::kOAcc];
    issue_pv(n_tiles - 1, pv);
    if constexpr (kFactorsUnderPv) factors = fwd::load_channel_factors<T>(p, bh_kv, quad);
    mma_wait<0>(pv);
    fold_pv(n_tiles - 1, pv);
    if constexpr (!kFactorsUnderPv) factors = fwd::load_channel_factors<T>(p, bh_kv, quad);
  } else {
    factors = fwd::load_channel_factors<T>(p, bh_kv, quad);
  }

  softmax.finish();
  fwd::write_output<T>(p, o, softmax, factors, rows, bh, quad);
}

template <class T>
__device__ void consume(const QkInt8PvFp8Params& p, FwdSharedStorage<T>& s, int consumer) {
  fwd::for_each_item<T>(p, [&](const fwd::CtaWork& w, int j, int it0) { consume_item<T>(p, s, w, it0, j, consumer); });
}

// ---- kernel ----------------------------------------------------------------------------
template <class T>
__global__ void __launch_bounds__(T::kThreads, 1) qk_int8_pv_fp8_sm90_kernel(const __grid_constant__ QkInt8PvFp8Params p) {
  extern __shared__ uint8_t smem_raw[];
  // TMA swizzled tiles and wgmma descriptors need 1024-byte aligned buffers.
  auto& s = *reinterpret_cast<FwdSharedStorage<T>*>((reinterpret_cast<uintptr_t>(smem_raw) + 1023) & ~uintptr_t(1023));

  if (threadIdx.x == 0) {
    mbar_init(&s.q_full, 1);
    mbar_init(&s.q_empty, 128 * T::kConsumers);
    for (int i = 0; i < T::kStages; ++i) {
      mbar_init(&s.k_full[i], 1);
      mbar_init(&s.v_full[i], 1);
      mbar_init(&s.kv_empty[i], 128 * T::kConsumers);
      mbar_init(&s.delta_full[i], T::kOffsetThreads);
    }
    mbar_fence_init();
    tma_prefetch_descriptor(&p.tmap_q);
    tma_prefetch_descriptor(&p.tmap_k);
    tma_prefetch_descriptor(&p.tmap_vt);
  }
  // Launched under the pre-pass's tail (programmatic launch): everything
  // below reads its outputs, except (QuantizeQ) the first item's Q, which
  // the caller wrote before the pre-pass started (its statistics kernel is
  // an ordinary launch: whatever wrote Q is complete before it starts, and
  // so before this kernel starts). There the producer and the consumers
  // wait themselves once that Q is loaded and quantized, so that this work
  // runs under the pre-pass's tail too.
  if constexpr (!T::kQuantizeQ) pdl::wait_for_prerequisites();
  __syncthreads();

  const int warpgroup = threadIdx.x / 128;
  if (warpgroup == 0) {
    regs_decrease<T::kProducerRegs>();
    if (threadIdx.x == 0) produce<T>(p, s);
    if constexpr (T::kSmoothQ) {
      if (threadIdx.x >= 32 && threadIdx.x < 32 + T::kOffsetThreads) produce_key_offsets<T>(p, s);
    }
  } else {
    regs_increase<T::kConsumerRegs>();
    consume<T>(p, s, warpgroup - 1);
  }
}

}  // namespace sage::sm90
