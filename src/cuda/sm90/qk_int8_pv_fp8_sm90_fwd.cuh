// Hopper forward kernel: INT8 Q K^T and FP8 (E4M3) P V with wgmma, TMA loads,
// warp specialization.
//
// Each CTA loops over work items (up to kBlockQ query rows of one (batch,
// head); a consumer with no row in an item skips it: skip_item) that its
// producer takes and publishes to the other warps
// (qk_int8_pv_fp8_sm90_scheduler.cuh):
//   warpgroup 0  producer: one thread issues the TMA loads of the Q tile and
//                of K / V^T tiles into a kStages-deep ring of shared buffers
//                (the ring runs on across items). An item's Q tile and its
//                epilogue's channel factors (V scales, V mean) go to one of
//                two item buffers, so that the next item's are loaded while
//                the consumers work on this one: past a CTA's first item,
//                an item's start waits for no load and its end for no
//                global read;
//   warpgroups 1.. consumers (two or three: consumer_warpgroups, and the
//                host's kernel_consumers): each owns 64 query rows and,
//                for every key tile, runs S = Q K^T
//                (int32), the online softmax in fp32 (base 2, scales folded
//                in), packs P to FP8 in registers and accumulates P V^T into
//                a fresh fp32 tile accumulator that is added into O
//                (two-level accumulation). At D = 128 P V^T has 8 columns
//                more than the head: P times a constant tile of ones, each
//                row's sum of its FP8 P, which is the softmax's row sum l
//                (FwdTraits::kRowSumsFromPv).
// Each consumer issues P V^T of tile t-1 and Q K^T of tile t back to back,
// folds P V^T into O while Q K^T runs, then runs the softmax of tile t
// (where FwdTraits::kStepsAcrossItems, across items too: an item's last
// P V^T with the next item's first Q K^T, its epilogue under the latter).
// With three consumers at D = 128 (FwdTraits::kSerialSteps) there are no
// registers for that: each consumer waits for each of its MMAs in turn. The
// consumers are left to run side by side (their softmaxes overlap, so a
// scheduler has two or three softmax warps to interleave, and one
// consumer's MMAs run under another's softmax): a ping-pong schedule
// (named-barrier turns) was 3-10% slower (docs/perf-notes.md).
//
// Data flow per key tile (consumer view):
//   smem K[st] --wgmma s8--> S int32 regs --x q_scale*k_scale, max, exp2-->
//   P fp32 regs --cvt e4m3 (x448)--> P fp8 regs (A operand) --wgmma e4m3
//   with smem V^T[st] (and its ones rows)--> PV fp32 (and row sums)
//   --O = O*alpha + PV (l = l*alpha + sums)--> O regs (l).
// Per item, the epilogue: O regs --/ l, V scales--> 16-bit, stmatrix into
// the consumer's staging tile --TMA store--> out (where out's start and
// strides are 16-byte aligned and head_dim a multiple of 8; otherwise
// stored from the registers):
// qk_int8_pv_fp8_sm90_epilogue.cuh.
// Q (QuantizeQ instances): the caller's 16-bit rows arrive by TMA and each
// consumer quantizes its own 64 rows to INT8 into the Q buffer at the start
// of an item, with the pre-pass's arithmetic (quantize_q_rows); otherwise
// the pre-pass's INT8 rows arrive. (With three consumers at D = 128 the
// 16-bit tile has one buffer, not one per item buffer: two do not fit; the
// producer refills it once every consumer has quantized it, q16_empty.)
// This saves the pre-pass its Q jobs and
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
#include "cuda/sm90/qk_int8_pv_fp8_sm90_epilogue.cuh"
#include "cuda/sm90/qk_int8_pv_fp8_sm90_params.h"
#include "cuda/sm90/qk_int8_pv_fp8_sm90_scheduler.cuh"
#include "cuda/sm90/qk_int8_pv_fp8_sm90_softmax.cuh"
#include "cuda/sm90/wgmma_ops.cuh"
#include "numerics/formats.h"
#include "numerics/tile_geometry.h"

namespace sage::sm90 {

inline constexpr int kOffsetBarrier = 1;    // named barrier of the smooth_q key-offset warps
inline constexpr int kConsumerBarrier = 2;  // + consumer: its four warps (INT8 Q rows written, output staged)

template <int HeadDimPadded, bool Causal, typename OutT, bool SmoothQ = false, bool QuantizeQ = false,
          bool ClaimsBuild = false, int Consumers = consumer_warpgroups(SmoothQ)>
struct FwdTraits {
  static constexpr int kDp = HeadDimPadded;
  static constexpr bool kCausal = Causal;
  static constexpr bool kSmoothQ = SmoothQ;
  static constexpr bool kQuantizeQ = QuantizeQ;  // Q quantized here, from the caller's rows
  static constexpr bool kPvFp8 = true;  // (the shared epilogue applies the V scales; the producer copies them)
  static constexpr int kOffsetThreads = 64;  // producer warps 1, 2: two keys each per tile
  using Out = OutT;
  static constexpr int kRowsPerConsumer = 64;  // wgmma M
  static constexpr int kConsumers = Consumers;
  // The quantization groups stay those of kSm90Geometry (128-row blocks,
  // 16-row warps): every warp's 16 rows lie inside one block either way.
  static constexpr int kBlockQ = query_block_rows(Consumers);
  static constexpr int kBlockK = kSm90Geometry.cta_k;
  static constexpr int kThreads = 128 * (1 + kConsumers);
  // Three stages: a stage is refilled only once every consumer is done with
  // it, and they drift apart by up to a tile. (Two timed the same in the
  // three-consumer D = 128 instances, 4K and 16K keys: 33 KiB there are
  // free should shared memory be needed; docs/perf-notes.md, session 60.)
  static constexpr int kStages = 3;
  // A consumer holds O, the P V^T tile accumulator, S and P at once while
  // its two MMAs run (~210 registers at D = 128, ~150 at D = 64; with serial
  // steps at most O, S and P, or O, P and the tile accumulator); the
  // smooth_q producer warps need 40 (their key-offset loop spills a few
  // words per K tile at that size, outside its FMA loop). The split must fit
  // in what the CTA was given at launch (kThreads x the register count of
  // __launch_bounds__(kThreads, 1)): setmaxnreg.inc waits for registers that
  // never come otherwise.
  static constexpr int kProducerRegs = SmoothQ ? 40 : 24;
  static constexpr int kConsumerRegs = kConsumers == 3 ? 160 : SmoothQ ? 232 : 240;
  // Whether a consumer's steps run on across its items (consume_across_items).
  // Measured against per-item steps (H200, GPU time of whole calls, B=2
  // H=32, 3 rounds): D = 128 with Q quantized here, non-causal 1K keys
  // -3.1%; causal 1K +0.4% (its kernel -3.3%), 2K -2.3%, 4K -1.9%. Not at
  // D = 64 (its three 160-register consumers spill: 0-6% slower), nor where
  // Q comes from the pre-pass (2-11% slower: the loop's schedule). (Measured
  // when every D = 128 instance that quantized Q had two consumers; since
  // session 29 only the causal calls of up to 1024 keys run them.)
  // Three consumers at D = 128 have no registers for O, S and the P V^T
  // tile at once (160 each): every step waits for its Q K^T, runs the
  // softmax, then issues P V^T and waits for it. (Streaming P V^T chunk by
  // chunk under the exponentials keeps its accumulator live next to S:
  // 800 bytes of spills; D = 128 without kScoresDieEarly: 600. P V^T
  // accumulated into O itself, with P through shared memory, fits and
  // lets the next Q K^T follow it at once, but measured 6.4% slower, and
  // one level of FP8 accumulation over all keys is wrong in scale: relative
  // L1 0.32 at 16K keys; docs/perf-notes.md, session 60.)
  static constexpr bool kSerialSteps = kConsumers == 3 && HeadDimPadded == 128;
  static constexpr bool kStepsAcrossItems = steps_across_items(QuantizeQ, Consumers);
  // Whether a launch may claim its items (QkInt8PvFp8Params::claims_items:
  // causal launches where the static rounds balance badly, and every launch
  // beside the concurrent pre-pass). The causal instances whose consumers
  // take their items as the producer publishes them always may. The others
  // come in two builds, the second (ClaimsBuild) for the claiming launches:
  // - with steps across items (causal), the consumers take the next item
  //   before they end the current one, and reading it where the producer
  //   publishes it (published_work) made the D = 128 causal kernel 3-11%
  //   slower, static rounds or not; computed as the static rounds give it,
  //   +0.1% (H200, docs/perf-notes.md, session 24). So static rounds where
  //   they balance well, published (claimed) items where they do not (B=1
  //   with 12-16 heads at 4K keys: the kernel 17-22% faster, session 25,
  //   when those calls still ran two consumers);
  // - non-causal, the claim code in the producer moved the key-tile loop of
  //   every call (kernel +0.6% at 4K keys, H100, session 59), so only the
  //   launches beside the concurrent pre-pass take the build with it.
  static constexpr bool kMayClaimItems = ClaimsBuild || (Causal && !kStepsAcrossItems);
  // The non-causal second build runs beside the concurrent pre-pass only: its
  // producer waits for each item's kv-head flags (QkInt8PvFp8Params::job_ready),
  // not for the pre-pass's grids, and every item is claimed. (Only there, so
  // that no other instance's code moves.)
  static constexpr bool kBesideConcurrentPrepass = ClaimsBuild && !Causal;
  static constexpr int kQBytes = kBlockQ * kDp;
  static constexpr int kQ16Bytes = kBlockQ * kDp * 2;  // QuantizeQ: the caller's rows (inputs share OutT)
  // The INT8 Q tiles: one per item buffer where they are loaded, one where
  // the consumers write it (each rewrites its rows only after its last Q K^T).
  static constexpr int kQBuffers = QuantizeQ ? 1 : 2;
  // The 16-bit Q tiles: one per item buffer, except with three consumers at
  // D = 128, where two do not fit in shared memory: then one, which the
  // producer refills for the next item once every consumer has quantized it
  // (q16_empty; they do so first thing in an item, so the refill lands long
  // before the next item starts).
  static constexpr int kQ16Buffers = QuantizeQ && HeadDimPadded == 128 && Consumers == 3 ? 1 : 2;
  static constexpr int kQLoadBytes = QuantizeQ ? kQ16Bytes : kQBytes;  // per item, by TMA
  static constexpr int kKBytes = kBlockK * kDp;
  static constexpr int kVBytes = kDp * kBlockK;
  // Whether P V^T makes the softmax's row sums (the contract the emulation
  // follows: TileGeometry::l_sums_pv_operand). Its columns are then V^T's
  // kDp channels and 8 rows of FP8 ones (kOnesBytes behind each V^T stage,
  // written once per CTA), whose 8 result columns all hold the row sums of
  // P. That takes the sums' ~70 instructions per tile off the consumers'
  // softmax, which is issue-bound, for 8 / kDp more P V^T work on the tensor
  // pipe: D = 128 calls 2-4% faster (H200, B=2 H=32, 1K and 4K keys), D = 64
  // 4-5% slower without a mask (its 160-register consumers spill in the
  // loop), so not there (docs/perf-notes.md, session 27).
  static constexpr bool kRowSumsFromPv = kSm90Geometry.l_sums_pv_operand(kDp);
  static constexpr int kPvN = kDp + (kRowSumsFromPv ? 8 : 0);
  static constexpr int kOnesBytes = kRowSumsFromPv ? 8 * kBlockK : 0;
  static constexpr int kVtStageBytes = kVBytes + kOnesBytes;
  static constexpr int kSAcc = kBlockK / 2;  // int32 S accumulators per thread
  static constexpr int kOAcc = kDp / 2;      // fp32 O accumulators per thread
  static constexpr int kPvAcc = kPvN / 2;    // the P V^T tile's: O's (then 4 of row sums)

  static_assert(kDp == 64 || kDp == 128, "head dims are padded to 64 or 128");
  static_assert(127 * 127 * kDp < (1 << 24), "INT8 scores must convert to fp32 exactly");
  static_assert(kBlockK == 128, "V^T rows of 128 FP8 keys fill one 128-byte swizzle row");
  static_assert(kVBytes % 1024 == 0 && (kOnesBytes == 0 || kOnesBytes == 1024),
                "the ones rows are V^T's next 8-row core matrix: one 1024-byte swizzle atom behind the channels");
  static_assert(kBlockQ == kConsumers * kRowsPerConsumer && (kConsumers == 2 || kConsumers == 3),
                "two or three consumer warpgroups");
  static_assert(Consumers == consumer_warpgroups(SmoothQ) || (QuantizeQ && Causal && HeadDimPadded == 128),
                "two consumers that quantize Q: the D = 128 short causal instances only");
  static_assert(kSm90Geometry.cta_q % kSm90Geometry.warp_q == 0, "a warp's rows share their Q block");
  static_assert(kSm90Geometry.warp_q == 16, "each warp of a wgmma owns 16 rows");
  static constexpr int kLaunchRegs = 65536 / kThreads / 8 * 8;  // per thread, as ptxas allocates them
  static_assert(128 * kProducerRegs + 128 * kConsumers * kConsumerRegs <= kThreads * kLaunchRegs,
                "setmaxnreg split beyond the CTA's launch allocation (deadlock)");
  static_assert(kBlockK == 2 * kOffsetThreads, "two keys per key-offset thread");
  static_assert(!(SmoothQ && QuantizeQ), "smooth_q's Q comes from the pre-pass (its tile means)");
  static_assert(!ClaimsBuild || (Causal ? kStepsAcrossItems : QuantizeQ && HeadDimPadded == 128),
                "second builds: causal steps across items, and the non-causal D = 128 instances that "
                "quantize Q (the concurrent pre-pass's)");
  static_assert(kConsumerBarrier + kConsumers <= 16, "named barriers");
};

// The epilogue's per-channel factors of one item's kv head (ForwardParams).
template <int Dp>
struct ItemFactors {
  alignas(16) float v_scale[Dp];
  alignas(16) float v_mean[Dp];  // smooth V only
};

template <class T>
struct FwdSharedStorage {
  alignas(1024) int8_t q[T::kQBuffers][T::kQBytes];
  alignas(1024) int8_t k[T::kStages][T::kKBytes];
  alignas(1024) uint8_t vt[T::kStages][T::kVtStageBytes];  // V^T's kVBytes (then the ones rows)
  alignas(128) uint8_t q16[T::kQ16Buffers][T::kQuantizeQ ? T::kQ16Bytes : 16];  // QuantizeQ: [kBlockQ][kDp] 16-bit
  alignas(1024) uint8_t out_stage[T::kConsumers][OutStage<T::kDp>::kBytes];  // per consumer, epilogue
  ItemFactors<T::kDp> factors[2];
  // Item buffer b (a ring of two over a CTA's items: ItemSlot): work_of
  // the work of the item it holds (no_work(): the CTA has no more),
  // item_full that it is published and its Q tile (or q16) has landed,
  // factors_full its factors, and item_empty that the consumers (and
  // smooth_q's key-offset warps) are done with them. The factors have a
  // barrier of their own because QuantizeQ's first Q tile is loaded and
  // quantized before the programmatic wait and the factors only after it.
  fwd::CtaWork work_of[2];
  uint64_t item_full[2];
  uint64_t factors_full[2];
  uint64_t item_empty[2];
  uint64_t k_full[T::kStages];
  uint64_t v_full[T::kStages];
  uint64_t kv_empty[T::kStages];
  // smooth_q only (unused otherwise: 1.5 KiB)
  float q_mean[T::kDp];
  float delta[T::kStages][T::kBlockK];  // base-2 score offset per key
  uint64_t delta_full[T::kStages];
  uint64_t q16_empty;  // kQ16Buffers == 1: every consumer has quantized the Q tile in q16[0]
};

// Where byte `off` of a row-major tile of Dp-byte INT8 rows (Q, K) lies once
// TMA has written it with the swizzle of its row width (128- or 64-byte:
// 16-byte chunk bits 4.. XOR row-group bits 7..).
template <int Dp>
__device__ __forceinline__ int swizzled(int off) {
  return off ^ (((off >> 7) & (Dp / 16 - 1)) << 4);
}

// ---- producer: TMA loads ----------------------------------------------------------
// Per work item: the Q tile and the channel factors into its item buffer
// (produce_items: once the consumers are done with the item before the
// previous one), then its K / V^T tiles (ring entries it0, it0 + 1, ...).
template <class T>
__device__ void produce(const QkInt8PvFp8Params& p, FwdSharedStorage<T>& s) {
  produce_items<T>(p, s, [&](const fwd::CtaWork& w, int j, int it0, int b) {
    mbar_arrive_expect_tx(&s.item_full[b], T::kQLoadBytes);
    if constexpr (T::kQuantizeQ) {
      if constexpr (T::kQ16Buffers == 1) {
        if (j > 0) mbar_wait_idle(&s.q16_empty, (j - 1) & 1);  // item j - 1's tile quantized
      }
      tma_load_4d(s.q16[b % T::kQ16Buffers], &p.tmap_q, &s.item_full[b], 0, w.first_row,
                  w.bh % p.heads_q, w.bh / p.heads_q);
      // The caller's Q does not come from the pre-pass: the first one is
      // loaded before the wait for it (see the kernel), the factors, K and V
      // after; beside the concurrent pre-pass, each item's after its head's flags.
      if (j == 0 && !T::kBesideConcurrentPrepass) pdl::wait_for_prerequisites();
    } else {
      tma_load_3d(s.q[b], &p.tmap_q, &s.item_full[b], 0, w.first_row, w.bh);
    }
    if constexpr (T::kBesideConcurrentPrepass) wait_for_kv_head(p, w.bh_kv);
    const int64_t factors_at = static_cast<int64_t>(w.bh_kv) * T::kDp;
    constexpr uint32_t kRowBytes = sizeof(float) * T::kDp;
    mbar_arrive_expect_tx(&s.factors_full[b], p.v_mean ? 2 * kRowBytes : kRowBytes);
    bulk_load(s.factors[b].v_scale, p.v_scale + factors_at, kRowBytes, &s.factors_full[b]);
    if (p.v_mean) bulk_load(s.factors[b].v_mean, p.v_mean + factors_at, kRowBytes, &s.factors_full[b]);
    for (int t = 0; t < w.n_tiles; ++t) {
      const auto [st, phase] = RingSlot<T::kStages>::at(it0 + t);
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
    const auto [st, phase] = RingSlot<T::kStages>::at(it0 + t);
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
  for_each_published_item(s, [&](const fwd::CtaWork& w, int j, int it0) {
    // Read the item (the producer may publish the one after next in its buffer now).
    mbar_arrive(&s.item_empty[ItemSlot::at(j).stage]);
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
__device__ __forceinline__ float quantize_q_rows(const QkInt8PvFp8Params& p, FwdSharedStorage<T>& s, int consumer,
                                                 const uint8_t* q16) {
  using L = quant::RowLanes<T::kDp>;
  constexpr TileGeometry geometry = kSm90Geometry;
  const int lane = threadIdx.x % 32;
  const int first_row = consumer * T::kRowsPerConsumer + (threadIdx.x / 32) % 4 * 16;  // of the warp, in the tile
  const uint4* rows16 = reinterpret_cast<const uint4*>(q16) + first_row * L::kChunkLanes;
  // Each chunk is read once and kept for the codes: kRows chunks are 4 kRows
  // registers. (Per item, no O, S or P is live yet; across items O and P
  // are, and ptxas spills 8-12 bytes around this, outside the key-tile loop.)
  uint4 raw[L::kRows];
#pragma unroll
  for (int j = 0; j < L::kRows; ++j) raw[j] = rows16[L::row_in_warp(j) * L::kChunkLanes + L::chunk()];
  // Per-warp granularity: one group, all the warp's rows, so one maximum and
  // no per-row exchange. Otherwise the lane gets its row lane / 2's group's.
  static_assert(geometry.warp_q == 16, "a warp's 16 rows are one per-warp group");
  const bool warp_group = p.granularity == Granularity::per_warp;
  float amax;
  if (warp_group) {
    amax = quant::warp_max_of_magnitudes(quant::abs_max8<typename T::Out>(raw));
  } else {
    float m[L::kRows];
#pragma unroll
    for (int j = 0; j < L::kRows; ++j) m[j] = quant::abs_max8<typename T::Out>(raw[j]);
    amax = quant::row_max_scatter(m);
    quant::merge_group_max(amax, static_cast<int>(geometry.q_group_of(lane / 2, p.granularity)));
  }
  const float scale = num::symmetric_scale(amax, 127);
  const float inv_own = num::reciprocal_rn(scale);
  float inv[L::kRows];  // 1 / scale of the group of the lane's row j
  float q_scale = scale;  // the scale of the thread's fragment rows, lane / 4 and lane / 4 + 8
#pragma unroll
  for (int j = 0; j < L::kRows; ++j) inv[j] = inv_own;
  if (!warp_group) {
#pragma unroll
    for (int j = 0; j < L::kRows; ++j) inv[j] = __shfl_sync(0xffffffffu, inv_own, 2 * L::row_in_warp(j));
    q_scale = __shfl_sync(0xffffffffu, scale, 2 * (lane / 4));
  }
#pragma unroll
  for (int j = 0; j < L::kRows; ++j) {
    const int r = L::row_in_warp(j);
    float x[quant::kVec];
    quant::unpack8<typename T::Out>(raw[j], x);
    const int off = (first_row + r) * T::kDp + quant::kVec * L::chunk();
    *reinterpret_cast<uint2*>(s.q[0] + swizzled<T::kDp>(off)) =
        quant::quantize_int8x8(x, inv[j]);
  }
  fence_proxy_async_shared();  // the stores above, for the wgmma that reads them
  named_barrier_sync(kConsumerBarrier + consumer, 128);
  return q_scale * p.scale_log2;
}

// S = Q K^T, issued asynchronously (one commit group): s_acc is written
// until mma_wait releases it. q and k: the descriptors of the Q rows and
// the K tile.
template <class T>
__device__ __forceinline__ void qk_mma_issue(int32_t (&s_acc)[T::kSAcc], uint64_t q, uint64_t k) {
  wgmma_fence();
#pragma unroll
  for (int kk = 0; kk < T::kDp / 32; ++kk) {
    wgmma_m64n128k32_s32_s8_ss(s_acc, desc_advance(q, kk * 32), desc_advance(k, kk * 32), kk > 0);
  }
  wgmma_commit();
}

// P V^T into a fresh accumulator (the tile's level of the two-level
// accumulation), issued asynchronously (one commit group); p_frag is read
// until it completes. pv[kOAcc ..] are the row sums (FwdTraits::kRowSumsFromPv).
template <class T>
__device__ __forceinline__ void pv_mma_issue(float (&pv)[T::kPvAcc], const uint32_t (&p_frag)[T::kBlockK / 32][4],
                                             uint64_t vt) {
  wgmma_fence();
#pragma unroll
  for (int c = 0; c < T::kBlockK / 32; ++c) {
    if constexpr (T::kPvN == 136) {
      wgmma_m64n136k32_f32_e4m3_rs(pv, p_frag[c], desc_advance(vt, c * 32), c > 0);
    } else {
      static_assert(T::kPvN == 64, "the P V^T shapes the sm90 instances use");
      wgmma_m64n64k32_f32_e4m3_rs(pv, p_frag[c], desc_advance(vt, c * 32), c > 0);
    }
  }
  wgmma_commit();
}

// The second level of the two-level accumulation, once a tile's P V^T is
// complete: O = O * alpha + the tile, and (kRowSumsFromPv) the same for l
// with the tile's row sums (rows r and r + 8 of the thread).
template <class T, class Softmax>
__device__ __forceinline__ void fold_tile(float (&o)[T::kOAcc], Softmax& softmax, const float (&alpha)[2],
                                          const float (&pv)[T::kPvAcc]) {
#pragma unroll
  for (int i = 0; i < T::kOAcc; ++i) o[i] = o[i] * alpha[(i / 2) % 2] + pv[i];
  if constexpr (T::kRowSumsFromPv) softmax.fold_row_sums(alpha, pv[T::kOAcc], pv[T::kOAcc + 2]);
}

// Waits until at most `Pending` commit groups are in flight, then hands the
// accumulator of the completed one back to the compiler.
template <int Pending, typename Acc, int N>
__device__ __forceinline__ void mma_wait(Acc (&acc)[N]) {
  wgmma_wait<Pending>();
  fence_operands(acc);
}

// A consumer's view of one work item: its rows, its Q (scale and wgmma
// descriptor), and where its key tiles and item buffer are.
struct ConsumerItem {
  fwd::CtaWork w;
  int it0;          // ring entry of its key tile 0
  ItemSlot buffer;  // its item buffer (Q tile, channel factors)
  int first_row;    // this consumer's first row in the head
  int rows[2];      // this thread's two rows (r and r + 8 of its warp's 16)
  float q_scale;    // of both rows (sm_scale * log2 e folded in)
  uint64_t q_desc;  // the wgmma descriptor of this consumer's INT8 Q rows
  const float* k_scales;
};

// Opens work item (w, round j): waits for its Q tile and, QuantizeQ,
// quantizes it into the INT8 Q buffer. Each warp rewrites only its own 16
// rows, which only its own share of the Q K^T wgmma reads, so each warp
// needs only its own wait for its previous item's last Q K^T (as on the
// register-store epilogue's path, which has no barrier in between either).
template <class T>
__device__ __forceinline__ ConsumerItem begin_item(const QkInt8PvFp8Params& p, FwdSharedStorage<T>& s,
                                                   const fwd::CtaWork& w, int it0, int j, int consumer) {
  constexpr TileGeometry geometry = kSm90Geometry;  // a device-side copy of the host constant
  const int lane = threadIdx.x % 32;
  const int warp = (threadIdx.x / 32) % 4;
  ConsumerItem it;
  it.w = w;
  it.it0 = it0;
  it.buffer = ItemSlot::at(j);
  // (Causal items are whole tiles: their first row computed from q_tile,
  // as before w.first_row existed, leaves those instances' key-tile loops
  // as they were; from w.first_row ptxas scheduled them otherwise.)
  it.first_row = (T::kCausal ? w.q_tile * T::kBlockQ : w.first_row) + consumer * T::kRowsPerConsumer;
  it.rows[0] = it.first_row + warp * 16 + lane / 4;
  it.rows[1] = it.rows[0] + 8;
  // Both rows share one Q scale and, per key tile, one K scale at every
  // granularity (see tile_geometry.h), so S = acc * (q_scale * k_scale).
  it.k_scales = p.k_scale + static_cast<int64_t>(w.bh_kv) * p.k_groups;
  const int8_t* q_rows = s.q[it.buffer.stage % T::kQBuffers] + consumer * T::kRowsPerConsumer * T::kDp;
  mbar_wait(&s.item_full[it.buffer.stage], it.buffer.phase);
  if constexpr (T::kQuantizeQ) {
    it.q_scale = quantize_q_rows<T>(p, s, consumer, s.q16[it.buffer.stage % T::kQ16Buffers]);
    // (quantize_q_rows ends at the consumer's barrier: all its reads of the tile are done.)
    if constexpr (T::kQ16Buffers == 1) {
      if (threadIdx.x % 128 == 0) mbar_arrive(&s.q16_empty);
    }
    // The K scales (beside the concurrent pre-pass, read only after a K
    // tile's k_full, whose load the producer issues after its wait for the
    // head's flags).
    if (j == 0 && !T::kBesideConcurrentPrepass) pdl::wait_for_prerequisites();
  } else {
    // A row past nq (the last item's tail) takes the scale of the head's
    // last row: the scale groups end there, and its results are never
    // stored. (A consumer with no row in the item skips it: consume_item.)
    const int scale_row = min(it.rows[0], p.nq - 1);
    it.q_scale = p.q_scale[static_cast<int64_t>(w.bh) * p.q_groups + geometry.q_group_of(scale_row, p.granularity)];
  }
  // The wgmma descriptors are computed once and held opaque: a stage and a
  // K step are adds (left to itself the compiler derives them again from
  // the addresses in every step). Except Q's in the non-causal D = 128
  // instances that read the pre-pass's Q: there ptxas scheduled the loop
  // better without it held (H200: -1.7% kernel time at 16K keys and -1.1%
  // at 4K against +0.4% and +0.7% held, docs/perf-notes.md, session 11;
  // measured with two consumers: the three serial ones inherit it).
  constexpr bool kHoldQDesc = T::kCausal || T::kQuantizeQ || T::kDp != 128;
  it.q_desc = kHoldQDesc ? opaque(make_smem_desc<T::kDp>(q_rows)) : make_smem_desc<T::kDp>(q_rows);
  return it;
}

// Closes a work item once O holds all its tiles: O / l to the output (and
// the LSE), and its item buffer handed back to the producer.
template <class T, class Softmax>
__device__ __forceinline__ void end_item(const QkInt8PvFp8Params& p, FwdSharedStorage<T>& s, const ConsumerItem& it,
                                         const float (&o)[T::kOAcc], Softmax& softmax, int consumer) {
  const int quad = threadIdx.x % 4;
  softmax.finish();
  // Loaded with the item's Q (a CTA's first item: after the programmatic wait).
  mbar_wait(&s.factors_full[it.buffer.stage], it.buffer.phase);
  const ItemFactors<T::kDp>& staged = s.factors[it.buffer.stage];
  const auto factors = fwd::channel_factors_from<T, /*kGlobal=*/false>(staged.v_scale,
                                                                       p.v_mean ? staged.v_mean : nullptr, quad);
  if (p.out_tma) {
    store_output_tma<T>(p, s.out_stage[consumer], kConsumerBarrier + consumer, o, softmax, factors, it.rows,
                        it.first_row, it.w.bh, quad);
  } else {
    fwd::write_output<T>(p, o, softmax, factors, it.rows, it.w.bh, quad);
  }
  mbar_arrive(&s.item_empty[it.buffer.stage]);  // its Q tile (q16) and factors are read: the producer may refill them
}

// Once S of key tile t (ring entry `at`) of item `it` is complete: its
// masks, its scores and the online softmax step into p_frag / alpha. quad:
// the thread's column pair inside each 8-column slice.
template <class T, class Softmax>
__device__ __forceinline__ void softmax_of_tile(const QkInt8PvFp8Params& p, FwdSharedStorage<T>& s,
                                                const ConsumerItem& it, int quad, int t, RingSlot<T::kStages> at,
                                                int32_t (&s_acc)[T::kSAcc], Softmax& softmax,
                                                uint32_t (&p_frag)[T::kBlockK / 32][4], float (&alpha)[2]) {
  constexpr TileGeometry geometry = kSm90Geometry;
  const int key0 = t * T::kBlockK;
  const float qk_scale = it.q_scale * it.k_scales[geometry.k_group_of(key0 + 2 * quad, p.granularity)];
  const bool needs_mask = key0 + T::kBlockK > p.nk ||
                          (T::kCausal && key0 + T::kBlockK - 1 > it.first_row + p.causal_shift);
  if (needs_mask) mask_scores<T::kSAcc>(s_acc, it.rows, key0 + 2 * quad, p.nk, T::kCausal, p.causal_shift);
  if constexpr (T::kSmoothQ) {
    float sf[T::kSAcc];
    mbar_wait(&s.delta_full[at.stage], at.phase);
    smoothq::scores_with_offsets(s_acc, qk_scale, s.delta[at.stage], 2 * quad, sf);
    softmax.step(p_frag, alpha, sf);
  } else {
    softmax.step(p_frag, alpha, s_acc, qk_scale, needs_mask);
  }
}

// The pieces of a consumer's key-tile steps, over the state that carries
// from step to step: O, the online softmax, P of the previous tile and its
// rescale factors.
template <class T>
struct ConsumerSteps {
  using Softmax = OnlineSoftmax<T::kSAcc, /*kScaleP448=*/true, /*kScoresDieEarly=*/T::kConsumers == 3,
                                T::kRowSumsFromPv>;
  using Slot = RingSlot<T::kStages>;
  const QkInt8PvFp8Params& p;
  FwdSharedStorage<T>& s;
  Softmax softmax;
  float o[T::kOAcc];
  uint32_t p_frag[T::kBlockK / 32][4];  // P of the previous tile, FP8
  float alpha[2];                        // its rescale factors of O
  uint64_t k_desc, vt_desc;              // of stage 0, held opaque (see begin_item)

  __device__ __forceinline__ ConsumerSteps(const QkInt8PvFp8Params& params, FwdSharedStorage<T>& storage)
      : p(params), s(storage) {
    k_desc = opaque(make_smem_desc<T::kDp>(s.k[0]));
    vt_desc = opaque(make_smem_desc<128>(s.vt[0]));
  }
  __device__ __forceinline__ void start_item() {
#pragma unroll
    for (int i = 0; i < T::kOAcc; ++i) o[i] = 0.f;
    softmax = Softmax{};
  }
  __device__ __forceinline__ void issue_qk(const ConsumerItem& it, Slot at, int32_t (&s_acc)[T::kSAcc]) {
    mbar_wait(&s.k_full[at.stage], at.phase);
    qk_mma_issue<T>(s_acc, it.q_desc, desc_advance(k_desc, at.stage * T::kKBytes));
  }
  __device__ __forceinline__ void issue_pv(Slot at, float (&pv)[T::kPvAcc]) {
    mbar_wait(&s.v_full[at.stage], at.phase);
    pv_mma_issue<T>(pv, p_frag, desc_advance(vt_desc, at.stage * T::kVtStageBytes));
  }
  // Once P V^T of a tile is complete: frees its stage, folds it into O.
  __device__ __forceinline__ void fold_pv(Slot at, const float (&pv)[T::kPvAcc]) {
    mbar_arrive(&s.kv_empty[at.stage]);  // its K and V^T may be overwritten now
    fold_tile<T>(o, softmax, alpha, pv);
  }
  // Once S of tile t (ring entry `at`) is complete: the softmax into p_frag / alpha.
  __device__ __forceinline__ void softmax_tile(const ConsumerItem& it, int t, Slot at, int32_t (&s_acc)[T::kSAcc]) {
    softmax_of_tile<T>(p, s, it, threadIdx.x % 4, t, at, s_acc, softmax, p_frag, alpha);
  }
  // Step 0 of an item: its Q K^T waited for alone.
  __device__ __forceinline__ void first_step(const ConsumerItem& it, Slot at) {
    int32_t s_acc[T::kSAcc];
    issue_qk(it, at, s_acc);
    mma_wait<0>(s_acc);
    softmax_tile(it, 0, at, s_acc);
  }
  // Steps 1 .. n_tiles - 1 of an item; `cur` enters at tile 0's entry and
  // leaves at the last tile's.
  __device__ __forceinline__ void middle_steps(const ConsumerItem& it, Slot& cur) {
    for (int t = 1; t < it.w.n_tiles; ++t) {
      float pv[T::kPvAcc];
      int32_t s_acc[T::kSAcc];
      const Slot prev = cur;
      cur.advance();
      issue_pv(prev, pv);
      issue_qk(it, cur, s_acc);
      mma_wait<1>(pv);  // P V^T done, Q K^T still running
      fold_pv(prev, pv);
      mma_wait<0>(s_acc);
      softmax_tile(it, t, cur, s_acc);
    }
  }
  // The last tile's P V^T, waited for alone.
  __device__ __forceinline__ void last_step(Slot at) {
    float pv[T::kPvAcc];
    issue_pv(at, pv);
    mma_wait<0>(pv);
    fold_pv(at, pv);
  }
};

// An item in which this consumer owns no row (the item's rows end before
// its 64: noncausal_item's short items, a head's last tile): it keeps every
// barrier of the item as a busy consumer does, without the work. It waits
// for each key tile's K and V^T, as the busy ones do before their MMAs, and
// then releases the stage: an mbarrier's parity wait cannot tell a phase
// from the one two uses later, so a consumer must see every phase of the
// ring's barriers (one that skipped them could pass its next item's waits
// on a stage's previous, still-loading use), and the ring must not run more
// than a use ahead of it (kv_empty counts its threads). Then, as end_item,
// the item buffer; as quantize_q_rows with one 16-bit Q buffer, q16_empty;
// and in a CTA's first item the programmatic wait, before its later items
// read the pre-pass's outputs.
template <class T>
__device__ __forceinline__ void skip_item(FwdSharedStorage<T>& s, const fwd::CtaWork& w, int it0, int j) {
  if constexpr (T::kQuantizeQ) {
    if constexpr (T::kQ16Buffers == 1) {
      if (threadIdx.x % 128 == 0) mbar_arrive(&s.q16_empty);
    }
    if (j == 0 && !T::kBesideConcurrentPrepass) pdl::wait_for_prerequisites();
  }
  RingSlot<T::kStages> cur = RingSlot<T::kStages>::at(it0);
  for (int t = 0; t < w.n_tiles; ++t) {
    mbar_wait(&s.k_full[cur.stage], cur.phase);
    mbar_wait(&s.v_full[cur.stage], cur.phase);
    mbar_arrive(&s.kv_empty[cur.stage]);
    cur.advance();
  }
  mbar_arrive(&s.item_empty[ItemSlot::at(j).stage]);
}

// One work item of a consumer: step t issues P V^T of tile t-1 (if any) and
// Q K^T of tile t (if any) back to back, folds P V^T into O under the
// running Q K^T, then runs the softmax of tile t. P and alpha carry from
// step to step. Key tile t is ring entry it0 + t; j is the item's round in
// this CTA (its item buffer's ring entry). With T::kSerialSteps, step t
// is tile t's Q K^T, softmax and P V^T, each MMA waited for in turn.
// The steps' pieces are the lambdas below and not ConsumerSteps: with the
// struct, ptxas scheduled these instances' key-tile loops otherwise, and
// they ran 1-5% slower (H200, docs/perf-notes.md, session 16).
// (A wgmma and its wait must not sit in different conditional blocks: ptxas
// then serializes every wgmma of the kernel, warning C7518. Code between
// them may branch. Hence the peeled first and last steps.)
template <class T>
__device__ __forceinline__ void consume_item(const QkInt8PvFp8Params& p, FwdSharedStorage<T>& s,
                                             const fwd::CtaWork& w, int it0, int j, int consumer) {
  // (The vote tells ptxas the branch is warp-uniform; on a plain compare of
  // the published rows it moved the loop's wgmma descriptors out of the
  // uniform registers and spilled 13 words in the key-tile loop.)
  if (__all_sync(0xffffffffu, consumer * T::kRowsPerConsumer >= w.rows)) {
    skip_item<T>(s, w, it0, j);
    return;
  }
  const int quad = threadIdx.x % 4;  // column pair inside each 8-column slice
  const ConsumerItem it = begin_item<T>(p, s, w, it0, j, consumer);
  typename ConsumerSteps<T>::Softmax softmax;
  float o[T::kOAcc];
#pragma unroll
  for (int i = 0; i < T::kOAcc; ++i) o[i] = 0.f;
  uint32_t p_frag[T::kBlockK / 32][4];  // P of the previous tile, FP8
  float alpha[2];                        // its rescale factors of O
  const uint64_t k_desc = opaque(make_smem_desc<T::kDp>(s.k[0]));
  const uint64_t vt_desc = opaque(make_smem_desc<128>(s.vt[0]));
  using Slot = RingSlot<T::kStages>;
  auto issue_qk = [&](Slot at, int32_t(&s_acc)[T::kSAcc]) {
    mbar_wait(&s.k_full[at.stage], at.phase);
    qk_mma_issue<T>(s_acc, it.q_desc, desc_advance(k_desc, at.stage * T::kKBytes));
  };
  auto issue_pv = [&](Slot at, float(&pv)[T::kPvAcc]) {
    mbar_wait(&s.v_full[at.stage], at.phase);
    pv_mma_issue<T>(pv, p_frag, desc_advance(vt_desc, at.stage * T::kVtStageBytes));
  };
  // Once P V^T of a tile is complete: frees its stage, folds it into O.
  auto fold_pv = [&](Slot at, const float(&pv)[T::kPvAcc]) {
    mbar_arrive(&s.kv_empty[at.stage]);  // its K and V^T may be overwritten now
    fold_tile<T>(o, softmax, alpha, pv);
  };
  // Once S of tile t (ring entry `at`) is complete: the softmax into p_frag / alpha.
  auto softmax_tile = [&](int t, Slot at, int32_t(&s_acc)[T::kSAcc]) {
    softmax_of_tile<T>(p, s, it, quad, t, at, s_acc, softmax, p_frag, alpha);
  };

  Slot cur = Slot::at(it0);  // key tile t's entry
  const int n_tiles = w.n_tiles;
  if constexpr (T::kSerialSteps) {
    for (int t = 0; t < n_tiles; ++t) {
      {  // S dies at the block's end: P V^T's accumulator takes its registers
        int32_t s_acc[T::kSAcc];
        issue_qk(cur, s_acc);
        mma_wait<0>(s_acc);
        softmax_tile(t, cur, s_acc);
      }
      float pv[T::kPvAcc];
      issue_pv(cur, pv);
      mma_wait<0>(pv);
      fold_pv(cur, pv);
      cur.advance();
    }
  } else {
    if (n_tiles > 0) {
      int32_t s_acc[T::kSAcc];
      issue_qk(cur, s_acc);
      mma_wait<0>(s_acc);
      softmax_tile(0, cur, s_acc);
    }
    for (int t = 1; t < n_tiles; ++t) {
      float pv[T::kPvAcc];
      int32_t s_acc[T::kSAcc];
      const Slot prev = cur;
      cur.advance();
      issue_pv(prev, pv);
      issue_qk(cur, s_acc);
      mma_wait<1>(pv);  // P V^T done, Q K^T still running
      fold_pv(prev, pv);
      mma_wait<0>(s_acc);
      softmax_tile(t, cur, s_acc);
    }
    if (n_tiles > 0) {
      float pv[T::kPvAcc];
      issue_pv(cur, pv);
      mma_wait<0>(pv);
      fold_pv(cur, pv);
    }
  }
  end_item<T>(p, s, it, o, softmax, consumer);
}

// The work of a consumer's item in round j where its steps run on across
// items, and whether there is one (the CTA has items left): as the producer
// published it where the instance may claim, else its static round's,
// computed here (see FwdTraits::kMayClaimItems).
struct AcrossItemsWork {
  fwd::CtaWork w;
  bool more;
};
template <class T>
__device__ __forceinline__ AcrossItemsWork across_items_work(const QkInt8PvFp8Params& p, FwdSharedStorage<T>& s,
                                                             int j, int items) {
  if constexpr (T::kMayClaimItems) {
    const fwd::CtaWork w = published_work(s, j);
    return {w, is_work(w)};
  } else {
    const int item = static_item(j);
    const bool more = item < items;
    return {more ? item_work<T>(p, item) : fwd::CtaWork{}, more};
  }
}

// A consumer's items with the steps run on across them (T::kStepsAcrossItems):
// once an item's last softmax is done, the next item is opened (its Q
// quantized), the item's last P V^T and the next item's first Q K^T are
// issued back to back, and the item's epilogue runs under that Q K^T. (The
// next Q quantized under the last P V^T instead, issued first, measured
// 0.5-3.5% slower.) Where an item or its successor has no key tiles, the
// item closes as in consume_item.
template <class T>
__device__ void consume_across_items(const QkInt8PvFp8Params& p, FwdSharedStorage<T>& s, int consumer) {
  ConsumerSteps<T> steps(p, s);
  using Slot = typename ConsumerSteps<T>::Slot;
  int j = 0;
  const int items = work_items<T>(p);
  const auto [first, any] = across_items_work<T>(p, s, 0, items);
  if (!any) return;
  steps.start_item();
  ConsumerItem it = begin_item<T>(p, s, first, 0, 0, consumer);
  Slot cur = Slot::at(0);  // the current key tile's ring entry
  if (it.w.n_tiles > 0) steps.first_step(it, cur);
  while (true) {
    steps.middle_steps(it, cur);
    const int next_it0 = it.it0 + it.w.n_tiles;
    const auto [next_w, more] = across_items_work<T>(p, s, ++j, items);
    if (more && it.w.n_tiles > 0 && next_w.n_tiles > 0) {
      float pv[T::kPvAcc];
      int32_t s_acc[T::kSAcc];
      const Slot last = cur;
      cur.advance();
      const ConsumerItem next = begin_item<T>(p, s, next_w, next_it0, j, consumer);
      steps.issue_pv(last, pv);
      steps.issue_qk(next, cur, s_acc);
      mma_wait<1>(pv);
      steps.fold_pv(last, pv);
      end_item<T>(p, s, it, steps.o, steps.softmax, consumer);
      mma_wait<0>(s_acc);
      steps.start_item();
      it = next;
      steps.softmax_tile(it, 0, cur, s_acc);
      continue;
    }
    if (it.w.n_tiles > 0) steps.last_step(cur);
    end_item<T>(p, s, it, steps.o, steps.softmax, consumer);
    if (!more) break;
    steps.start_item();
    it = begin_item<T>(p, s, next_w, next_it0, j, consumer);
    cur = Slot::at(next_it0);
    if (it.w.n_tiles > 0) steps.first_step(it, cur);
  }
}

template <class T>
__device__ void consume(const QkInt8PvFp8Params& p, FwdSharedStorage<T>& s, int consumer) {
  if constexpr (T::kStepsAcrossItems) {
    consume_across_items<T>(p, s, consumer);
  } else {
    for_each_published_item(s,
                            [&](const fwd::CtaWork& w, int j, int it0) { consume_item<T>(p, s, w, it0, j, consumer); });
  }
  wait_output_stores();
}

// ---- kernel ----------------------------------------------------------------------------
// The ones rows behind every V^T stage (FwdTraits::kRowSumsFromPv), by all
// threads, fenced for the wgmma (async proxy) that reads them; the kernel's
// __syncthreads publishes them. TMA never writes them.
template <class T>
__device__ __forceinline__ void write_ones_rows(FwdSharedStorage<T>& s) {
  if constexpr (T::kRowSumsFromPv) {
    constexpr uint32_t kOnes = 0x38383838u;  // four E4M3 1.0
    constexpr int kWords = T::kOnesBytes / 4;
    for (int i = threadIdx.x; i < T::kStages * kWords; i += T::kThreads) {
      reinterpret_cast<uint32_t*>(s.vt[i / kWords] + T::kVBytes)[i % kWords] = kOnes;
    }
    fence_proxy_async_shared();
  }
}

template <class T>
__global__ void __launch_bounds__(T::kThreads, 1) qk_int8_pv_fp8_sm90_kernel(const __grid_constant__ QkInt8PvFp8Params p) {
  extern __shared__ uint8_t smem_raw[];
  // TMA swizzled tiles and wgmma descriptors need 1024-byte aligned buffers.
  // The padding is added to smem_raw itself, not to an integer copy of its
  // address: the compiler then still knows `s` is shared memory and reads
  // and writes it with LDS / STS (through a round trip via uintptr_t every
  // access was a generic LD / ST: the Q quantization's, the epilogue's).
  const uint32_t pad = (1024u - (smem_addr(smem_raw) & 1023u)) & 1023u;
  auto& s = *reinterpret_cast<FwdSharedStorage<T>*>(smem_raw + pad);

  if (threadIdx.x == 0) {
    for (int b = 0; b < 2; ++b) {
      mbar_init(&s.item_full[b], 1);
      mbar_init(&s.factors_full[b], 1);
      mbar_init(&s.item_empty[b], 128 * T::kConsumers + (T::kSmoothQ ? T::kOffsetThreads : 0));
    }
    if constexpr (T::kQ16Buffers == 1) mbar_init(&s.q16_empty, T::kConsumers);
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
    if (p.out_tma) tma_prefetch_descriptor(&p.tmap_out);
  }
  write_ones_rows<T>(s);
  // Launched under the pre-pass's tail (programmatic launch): everything
  // below reads its outputs, except (QuantizeQ) the first item's Q, which
  // the caller wrote before the pre-pass started (its statistics kernel is
  // an ordinary launch: whatever wrote Q is complete before it starts, and
  // so before this kernel starts). There the producer and the consumers
  // wait themselves once that Q is loaded and quantized, so that this work
  // runs under the pre-pass's tail too; beside the concurrent pre-pass the
  // producer waits for each item's head instead (wait_for_kv_head).
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
    // Beside the concurrent pre-pass no thread waited for the head jobs'
    // grid as a whole (each item waited for its own head's flags). One
    // thread waiting here, after its consumer's last item, where that grid
    // is long done, makes this kernel's completion imply its (and so the
    // end of its CTAs' last job claims), as every other build's completion
    // implies its pre-pass's, for whatever the stream runs next. (Not at the
    // kernel's end for every thread: the producer warp's idle lanes get
    // there first, and their wait held up lane 0's loads until that grid
    // completed, +90-170 us a call on an H100, session 61.)
    if constexpr (T::kBesideConcurrentPrepass) {
      if (threadIdx.x == 128) pdl::wait_for_prerequisites();
    }
  }
}

}  // namespace sage::sm90
