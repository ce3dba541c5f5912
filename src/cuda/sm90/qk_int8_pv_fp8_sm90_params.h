// Parameters of the Hopper INT8-QK / FP8-PV forward kernel: the shared
// forward parameters (src/cuda/common/forward_params.h) plus the TMA
// descriptors of the pre-pass outputs (src/cuda/quant/prepass.h):
//   q_i8 [B*Hq][Nq][Dp], k_i8 [B*Hkv][Nk][Dp], vt_fp8 [B*Hkv][Dp][Nk_pad]
//   (keys permuted inside each 32-key chunk to match the P fragment).
// Built on the host, passed by value (__grid_constant__).
#pragma once

#include <cuda.h>

#include "cuda/common/forward_params.h"
#include "cuda/sm90/qk_int8_pv_fp8_sm90_item_order.h"

namespace sage::sm90 {

// Consumer warpgroups per CTA (64 query rows each). The kernel is bound by
// the latency of its softmaxes (a warp's chain of exponentials), so a third
// consumer gives each scheduler a third softmax warp to interleave. At D = 64
// its registers (O and the P V^T tile at 32 each) fit in the 160 a
// 512-thread CTA leaves; measured against two (H200, B=2 H=32): kernel -7%
// at N=4096, -12% at 16384, causal 16384 -6%; +4..6% at N=1024 and causal
// 4096, where fewer and longer work items balance worse. At D = 128 they fit
// only with serial steps (FwdTraits::kSerialSteps); measured against two
// (GPU time, 3 rounds): kernel -1.5% at N=4096, -3.0% at 16384, causal 16384
// -5.5% (docs/perf-notes.md, session 18); where the kernel quantizes Q, with
// one 16-bit Q buffer (FwdTraits::kQ16Buffers), whole calls -5.3% at 1K,
// -3.2% at 2K, causal -3.9% at 2K and -4.2% at 4K, but causal 1K +4.4%
// (session 29): the short causal calls that quantize Q keep two consumers
// (kernel_consumers, qk_int8_pv_fp8_sm90.cu). smooth_q keeps two
// everywhere: its key offsets are per 128-row Q block (the smoothing block
// of the pre-pass).
constexpr int consumer_warpgroups(bool smooth_q) { return smooth_q ? 2 : 3; }
// Whether a consumer's key-tile steps run on across its work items
// (FwdTraits::kStepsAcrossItems): where the kernel quantizes Q with two
// consumers (D = 128, short causal calls).
constexpr bool steps_across_items(bool quantize_q, int consumers) { return quantize_q && consumers == 2; }
// Query rows per CTA tile (the Q tensor map's box).
constexpr int query_block_rows(int consumers) { return 64 * consumers; }

// The TMA-store epilogue's box: a consumer's 64 rows x 64 channels (128-byte
// rows, the widest swizzled row TMA takes); Dp / 64 boxes per consumer.
inline constexpr int kOutBoxRows = 64;
inline constexpr int kOutBoxChannels = 64;

struct QkInt8PvFp8Params : fwd::ForwardParams {
  CUtensorMap tmap_q;
  CUtensorMap tmap_k;
  CUtensorMap tmap_vt;
  // The caller's output [B][Hq][Nq][head_dim] for the TMA-store epilogue
  // (qk_int8_pv_fp8_sm90_epilogue.cuh); valid where out_tma, which needs a
  // 16-byte aligned start and strides and head_dim a multiple of 8
  // (make_out_tensor_map). Otherwise the threads store their
  // rows themselves (fwd::write_output).
  CUtensorMap tmap_out;
  bool out_tma;
  // Causal launches: items are taken in causal_item order with window_heads
  // heads per window, and, where claims_items, past a CTA's first two rounds
  // claimed from item_claims ([0] the next claim, [1] the CTAs done
  // claiming), two counters in the workspace that the pre-pass zeroes and
  // the kernel leaves at zero (qk_int8_pv_fp8_sm90_scheduler.cuh).
  int* item_claims;
  int window_heads;
  bool claims_items;
  // Non-causal launches: full (kBlockQ-row) items per head, the rest of a
  // head's rows in short items (noncausal_item, noncausal_full_items).
  int full_items;
  // The concurrent pre-pass (quant::PrepassProblem::concurrent_heads), null
  // elsewhere: its jobs' flags (quant::PrepassBuffers::job_ready), for which
  // the producer waits before it loads anything of an item's kv head; the
  // first ready_split_jobs jobs raise ready_split_ctas flags each (one per
  // CTA of their clusters), the others one. The kernel then claims every
  // item (claims_items), from round 0: the CTAs that start only once the
  // pre-pass leaves their SMs take fewer. (Last: the other fields keep
  // their offsets, and the other instances their code.)
  const int* job_ready;
  int ready_split_jobs;
  int ready_split_ctas;
};

}  // namespace sage::sm90
