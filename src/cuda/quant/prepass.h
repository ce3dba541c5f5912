// Quantization pre-pass of the SageAttention2 GPU path: two launches, no
// allocation, no host synchronization.
//
//   1. kv_stats: per (batch, kv-head, chunk of keys), per channel: the sum
//      of K (smooth K), and the sum / max / min of V (V scale, smooth V).
//   2. quantize: one grid with three kinds of CTAs, each on a 128-row tile:
//        Q: INT8 with the granularity's scale groups (sm_scale*log2 e folded
//           into the scale), plus q . mean_k * sm_scale per row for the LSE;
//           smooth_q: each 128-row tile (= cta_q block of both kernel
//           geometries, and the CTA tile of every smooth_q kernel) minus its
//           channel mean, which is written out for the kernel's score
//           correction mean_q . k_j;
//        K: K - mean_k, INT8 per group;
//        (qk_bits = 4: Q and K in INT4 instead, for mma.sync m16n8k64);
//        V: (V - mean_v) / v_scale[channel] in FP8 E4M3, written transposed
//           (V^T [Dp][Nk_pad]) with the keys of each 32-key chunk permuted
//           into the order of the kernel's P fragment; or (v_format
//           fp16_rows, the mma.sync FP16 PV kernels) V - mean_v rounded to
//           fp16, row-major [Nk][Dp], no scale.
//      The Q and K groups follow PrepassProblem::geometry, the tile geometry
//      of the attention kernel that reads the output (kSm90Geometry or
//      kMmaGeometry); a 128-row job tile always covers whole groups.
// Or, on sm_90 for calls of many short heads (kv_head_jobs_path): the Q
// jobs alone in the quantize grid, then one job per (batch * kv head, K or
// V), on one CTA or split over a cluster's (kv_head_job_split), that reads
// the head's rows twice (statistics, then codes).
// Or, on sm_90 where a head's rows fit in a thread-block cluster's shared
// memory, or stream through it (allow_kv_clusters, kv_stream_max_keys,
// kv_quantized_in_clusters): the Q jobs alone in the quantize grid, then one
// cluster per (batch * kv head, K or V) that reads the head's rows (once
// where they fit, else twice from the same CTA, the second read meant to hit
// L2), reduces their statistics across the cluster and quantizes them as the
// K and V jobs do (no statistics kernel).
// Head dims are padded with zeros to Dp (64 or 128) here, so the attention
// kernel only sees its native tile widths.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "cuda/quant/kv_head_jobs_fit.h"
#include "numerics/fast_divisor.h"
#include "numerics/formats.h"
#include "numerics/tile_geometry.h"
#include "sage/options.h"

namespace sage::quant {

// Strides in elements of a [B, H, N, D] view whose D stride is 1.
struct StridedInput {
  const void* data = nullptr;
  std::int64_t stride_b = 0, stride_h = 0, stride_n = 0;
};

// Whether a 16-bit input's rows can be read 16 bytes at a time: a 16-byte
// aligned start and strides (the pre-pass's vector loads, TMA).
bool aligned16(const StridedInput& in);

// How V is stored for the attention kernel's P V MMA.
enum class VFormat {
  fp8_e4m3_transposed,  // V^T [Dp][Nk_pad] E4M3, per-channel scales, keys permuted per 32-key chunk
  fp16_rows,            // V [Nk][Dp] fp16 (mma.sync m16n8k16 reads it with ldmatrix.trans)
};

struct PrepassProblem {
  int batch = 0, heads_q = 0, heads_kv = 0, nq = 0, nk = 0;
  int head_dim = 0, head_dim_padded = 0;
  bool bf16 = true;  // inputs are bf16 (else fp16)
  Granularity granularity = Granularity::per_warp;
  // The attention kernel's tile geometry, which defines the Q and K scale
  // groups (see prepass_supports_geometry for the ones this pre-pass takes).
  TileGeometry geometry = kSm90Geometry;
  VFormat v_format = VFormat::fp8_e4m3_transposed;
  int qk_bits = 8;  // 8: INT8 Q/K; 4: INT4 (nibble-packed rows of Dp/2 bytes, scale amax/7)
  float sm_scale = 0.f;
  bool smooth_q = false, smooth_k = true, smooth_v = false, lse_correction = false;
  // The attention kernel quantizes Q itself (the sm90 kernel, where it can:
  // sm90::quantizes_q_in_kernel): no Q jobs; the Q and Q-scale buffers stay
  // in the layout, unwritten, so the workspace size does not depend on it.
  bool q_in_attention = false;
  // K and V may be quantized by the cluster kernel (sm_90 devices: the
  // caller's choice), where the call fits it (kv_quantized_in_clusters):
  // no statistics kernel runs, and no CTA waits for another cluster.
  bool allow_kv_clusters = false;
  // The longest heads (in keys) that the cluster kernel takes beyond those
  // whose rows its shared memory holds: its CTAs then stream their rows
  // twice, the second read meant to hit L2 (kv_cluster_shape). 0: only the
  // heads that fit.
  int kv_stream_max_keys = 0;
  // CTAs of the statistics kernel (0: one per item, every head at once).
  // Fewer, looping over the items head by head, complete the heads in order,
  // and the K and V jobs of a finished head run while the later heads are
  // read (kv_stats_kernel).
  int stats_ctas = 0;
  // The longest heads (in keys) that the head-jobs kernel may take (0: it
  // takes none): one job per head's K or V, for calls of many short
  // heads (kv_head_jobs_path), on a device of sm_count SMs (0: unknown, and
  // the kernel takes none).
  int kv_head_jobs_max_keys = 0;
  int sm_count = 0;
  // CTAs (a thread-block cluster) per head job, at most kKvHeadJobMaxCtas:
  // each reads a run of the head's 128-row tiles, and the CTAs exchange
  // their statistics through distributed shared memory; 0: the rule
  // kv_head_job_split (kv_head_jobs_fit.h). Where the device cannot place
  // such clusters, one CTA per job (kv_head_job_shape_fitting). (The sm90
  // dispatch sets 0 unless SAGE_PREPASS_KV_HEAD_JOB_SPLIT says otherwise.)
  int kv_head_job_split = 1;
  // Head-job CTAs per SM: 1 (123 registers each) or 2 (64 each, the
  // statistics read half as deep and the codes read without a tile in
  // flight ahead); 0: the rule kv_head_job_ctas_per_sm, and then the split
  // rule for that many. (The sm90 dispatch sets 0 unless
  // SAGE_PREPASS_KV_HEAD_JOBS_PER_SM says otherwise; the device probe keeps
  // 1: a grid of P CTAs on P SMs.)
  int kv_head_jobs_per_sm = 1;
  // The concurrent pre-pass (head-jobs path only; launch_kv_head_jobs): the
  // jobs of the first concurrent_heads (batch * kv head)s run first on the
  // whole GPU, those of the other heads on concurrent_sms SMs (one CTA of
  // one job at a time on each) beside the attention kernel, which starts
  // under both and waits for each head's flags (job_ready) instead of for
  // the grids. 0: the head jobs all at once, the attention kernel after.
  int concurrent_heads = 0;
  int concurrent_sms = 0;
};

struct PrepassBuffers {
  std::int8_t* q = nullptr;      // [B*Hq][Nq][Dp] (INT4: [B*Hq][Nq][Dp/2], two elements per byte)
  std::int8_t* k = nullptr;      // [B*Hkv][Nk][Dp] (INT4: [B*Hkv][Nk][Dp/2])
  std::uint8_t* vt = nullptr;    // [B*Hkv][Dp][Nk_pad], FP8 E4M3 (v_format fp8_e4m3_transposed), else null
  std::uint16_t* v16 = nullptr;  // [B*Hkv][Nk][Dp], fp16 bits (v_format fp16_rows), else null
  float* q_scale = nullptr;      // [B*Hq][q_groups]
  float* k_scale = nullptr;      // [B*Hkv][k_groups]
  float* v_scale = nullptr;      // [B*Hkv][Dp]
  float* v_mean = nullptr;       // [B*Hkv][Dp] (zeros unless smooth_v)
  float* lse_corr = nullptr;     // [B*Hq][Nq] (only with lse_correction)
  float* q_mean = nullptr;       // [B*Hq][q_tiles][Dp] channel mean of each 128-row Q tile (only with smooth_q)
  float* k_partial = nullptr;    // [B*Hkv][chunks][Dp]
  float* v_partial = nullptr;    // [B*Hkv][chunks][3][Dp]
  int* stats_ready = nullptr;    // [B*Hkv][chunks]: 1 once that chunk's partials are written
  // [2]: the sm90 attention kernel's work-item claim counters
  // (qk_int8_pv_fp8_sm90_scheduler.cuh), zeroed by the pre-pass's kernel
  // that the attention kernel waits for (beside the concurrent pre-pass, by
  // its first launch before that launch lets the others start).
  int* item_claims = nullptr;
  // The concurrent pre-pass (PrepassProblem::concurrent_heads): per head
  // job (K of (batch * kv head) h: job 2 h, its V: 2 h + 1) and CTA of the
  // job, kKvHeadJobMaxCtas flags, 1 once that CTA's codes and scales are
  // written; and the later launch's job claim counter.
  int* job_ready = nullptr;  // [2 * B*Hkv][kKvHeadJobMaxCtas]
  int* job_claims = nullptr;
};

struct PrepassLayout {
  int head_dim_padded = 0;
  int nk_padded = 0;  // V^T row length: Nk rounded up to 16 keys (TMA stride rule)
  int q_groups = 0, k_groups = 0;
  int chunks = 0, chunk_len = 0;
  int q_tiles = 0;  // 128-row Q tiles per head (rows of q_mean)
  // The quantize kernel's job decode (job -> head, tile; head -> batch,
  // head; query head -> kv head) without runtime divisions.
  num::FastDivisor q_tiles_div, k_tiles_div, heads_q_div, heads_kv_div, group_div;
  std::size_t bytes = 0;
  VFormat v_format = VFormat::fp8_e4m3_transposed;
  PrepassBuffers carve(void* workspace) const;

 private:
  friend PrepassLayout make_prepass_layout(const PrepassProblem& p);
  std::size_t off_q = 0, off_k = 0, off_vt = 0, off_q_scale = 0, off_k_scale = 0, off_v_scale = 0,
              off_v_mean = 0, off_lse_corr = 0, off_q_mean = 0, off_k_partial = 0, off_v_partial = 0,
              off_stats_ready = 0, off_item_claims = 0, off_job_ready = 0, off_job_claims = 0;
};

PrepassLayout make_prepass_layout(const PrepassProblem& p);

// sm_scale * log2(e) in fp32: the factor the Q scales carry into the
// kernel's base-2 scores (and smooth_q's key offsets).
__host__ __device__ inline float score_scale_log2(const PrepassProblem& p) {
  return p.sm_scale * static_cast<float>(num::kLog2e);
}

// Whether the pre-pass can produce the groups of `g`: its 128-row job tiles
// must hold whole Q and K groups (cta_q and cta_k divide 128) and each warp's
// 16 rows must lie inside one warp_q slice (warp_q a multiple of 16).
constexpr bool prepass_supports_geometry(TileGeometry g) {
  return g.cta_q > 0 && g.cta_k > 0 && 128 % g.cta_q == 0 && 128 % g.cta_k == 0 && g.warp_q % 16 == 0 &&
         g.cta_q % g.warp_q == 0 && g.cta_k % 8 == 0;
}
static_assert(prepass_supports_geometry(kSm90Geometry) && prepass_supports_geometry(kMmaGeometry));

// Whether launch_prepass quantizes this call's K and V with the cluster
// kernel (on the current device) rather than with the statistics kernel and
// the quantize kernel's K and V jobs; tests use it to know the path.
bool kv_quantized_in_clusters(const PrepassProblem& p, StridedInput q, StridedInput k, StridedInput v);

// The shape (CTAs per job and per SM) with which launch_prepass quantizes
// this call's K and V in the head-jobs kernel (cuda/quant/kv_head_jobs.cu;
// before the cluster kernel in its order of preference) on the current
// device, or {0, 0} where it takes another path.
KvHeadJobShape kv_head_job_shape(const PrepassProblem& p, StridedInput q, StridedInput k, StridedInput v);

// The head-jobs kernel's conditions for a call whose rows are Vec (16-byte
// aligned): heads of at most kv_head_jobs_max_keys keys, Dp = kKvHeadJobsDp,
// INT8 K per 128-key group (per_warp at cta_k 128), FP8 V^T without
// smooth_v, no LSE correction, and between 3/4 of and as many jobs (two per
// batch * kv head) as the device has SMs (sm_count, kv_head_jobs_fit).
inline constexpr int kKvHeadJobsDp = 128;
bool kv_head_jobs_path(const PrepassProblem& p, bool vec);

// Launches the head-jobs kernel alone, `jobs_at_once` jobs side by side (0:
// every job; each job takes kv_head_job_shape_fitting(p).ctas CTAs, one or
// two per SM, and loops over jobs jobs_at_once apart): the pre-pass's K
// and V for a call that kv_head_jobs_path admits. It zeroes the attention kernel's
// claim counters. `programmatic`: launched under the
// stream's previous kernel (the Q-only quantize grid), for which it waits
// before it completes. (The device probe bench/probes/kv_prepass_probe.cu
// runs it on a few SMs.) Where p.concurrent_heads > 0 (and jobs_at_once is
// 0, with no Q-only grid before it), the concurrent pre-pass instead: two
// launches, the first heads' jobs on the whole GPU, then the other heads'
// on p.concurrent_sms SMs, both raising their jobs' flags (job_ready), the
// first one clearing every flag and the claim counters before the second
// one or the attention kernel can start.
cudaError_t launch_kv_head_jobs(const PrepassProblem& p, const PrepassLayout& layout, const PrepassBuffers& out,
                                StridedInput k, StridedInput v, int jobs_at_once, cudaStream_t stream,
                                bool programmatic);

// How launch_kv_head_jobs runs `p`'s jobs on the current device: its CTAs
// per SM (p.kv_head_jobs_per_sm, the rule where 0) and per job
// (p.kv_head_job_split, the rule for that many per SM where 0, clamped to
// [1, kKvHeadJobMaxCtas]; 1 where the device cannot place clusters of that
// many of its CTAs).
KvHeadJobShape kv_head_job_shape_fitting(const PrepassProblem& p);

// Enqueues both pre-pass kernels on `stream`. `programmatic` (sm_90+
// devices): the quantize kernel starts under the statistics kernel (its Q
// jobs need no statistics, except K's mean for the LSE correction; each job
// that does waits for its own head's statistics flags, not for the whole
// grid), both kernels ask for the largest shared-memory carveout so that
// their CTAs can share SMs, and the next kernel of the stream may start
// under the quantize kernel's tail if it is launched programmatically and
// waits for it (cuda/common/programmatic_launch.cuh).
cudaError_t launch_prepass(const PrepassProblem& p, const PrepassLayout& layout, const PrepassBuffers& out,
                           StridedInput q, StridedInput k, StridedInput v, cudaStream_t stream, bool programmatic);

// Position -> key inside a 32-key chunk of V^T: the key whose P value the
// kernel's FP8 A fragment holds at that position (see the sm90 softmax).
__host__ __device__ constexpr int vt_key_of_position(int pos) {
  const int half = pos / 16, quad = (pos % 16) / 4, i = pos % 4;
  return 16 * half + 8 * (i / 2) + 2 * quad + (i % 2);
}

}  // namespace sage::quant
