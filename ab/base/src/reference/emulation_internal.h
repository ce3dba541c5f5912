// Internals of the CPU emulation of the quantized pipelines (emulation*.cpp).
//
// The emulation is split the way the kernels are:
//   * a pre-pass per (batch, head) that smooths and quantizes Q, K and V
//     (the kernels' quantization kernels), built when a stage is made;
//   * a ScoreStage that turns one (Q tile, K tile) pair into base-2 logits
//     (the QK^T MMA and its epilogue);
//   * the online softmax, shared by every method (emulation.cpp);
//   * a ValueStage that adds one tile's P~ V into the fp32 O accumulator and
//     finishes each row (the PV MMA and the output epilogue).
// Every rule (grouping, scale, rounding, order of float operations) is
// written next to the code that applies it: those comments are the contract
// the GPU kernels copy.
#pragma once

#include <algorithm>
#include <cstdint>
#include <memory>
#include <vector>

#include "reference/reference.h"

namespace sage::ref::detail {

// Everything fixed for one emulate_attention call.
struct Setup {
  Problem p;
  AttentionOptions options;
  TileGeometry geo;
  const float* q = nullptr;  // BHND inputs, as the kernel reads them
  const float* k = nullptr;
  const float* v = nullptr;
  float sm_scale = 0;    // (float)p.sm_scale
  float scale_log2 = 0;  // (float)(p.sm_scale * log2(e)), rounded once from double
  std::int64_t q_tiles = 0, k_tiles = 0;
  std::int64_t q_heads_per_kv = 1;

  std::int64_t dim() const { return p.head_dim; }
  std::int64_t kv_head_of(std::int64_t bhq) const {  // bhq = b * heads_q + hq
    return (bhq / p.heads_q) * p.heads_kv + (bhq % p.heads_q) / q_heads_per_kv;
  }
  const float* q_head(std::int64_t bhq) const { return q + bhq * p.nq * p.head_dim; }
  const float* k_head(std::int64_t bhkv) const { return k + bhkv * p.nk * p.head_dim; }
  const float* v_head(std::int64_t bhkv) const { return v + bhkv * p.nk * p.head_dim; }
  // Number of keys of K tile `kt` that exist (the last tile may be partial).
  std::int64_t keys_in_tile(std::int64_t kt) const { return std::min<std::int64_t>(geo.cta_k, p.nk - kt * geo.cta_k); }
};

// Keys [0, count) are visible to query row i (Problem::visible is a prefix).
std::int64_t visible_prefix(const Problem& p, std::int64_t i);

// ---- smoothing (shared by all methods) ----

// Channel means of x [rows][dim]: summed in double, rounded to fp32 once.
// (How the kernel's pre-pass sums is free; only the rounded mean matters,
// and it is used identically for the subtraction and the correction.)
std::vector<float> channel_mean(const float* x, std::int64_t rows, std::int64_t dim);

// x - mean per channel (fp32 subtraction), as a new [rows][dim] array.
std::vector<float> subtract_mean(const float* x, std::int64_t rows, std::int64_t dim, const std::vector<float>& mean);

// Q of one (batch, q head) ready for quantization.
// smooth_q: rows of each cta_q block minus that block's channel mean
// (computed over the block's existing rows only: a tail block averages its
// nq % cta_q rows); block_mean holds the means [q_tiles][dim]. Otherwise
// values is a copy of Q and block_mean is empty.
struct SmoothedQueries {
  std::vector<float> values;      // [nq][dim]
  std::vector<float> block_mean;  // [q_tiles][dim] or empty
};
SmoothedQueries smooth_queries(const Setup& s, std::int64_t bhq);

// smooth_k: the LSE correction of each query row, in natural log:
//   corr_r = (sum_d q[r][d] * mean_k[d], fp32, d ascending) * sm_scale
// over the original (unsmoothed, unquantized) q. All zeros without smooth_k.
std::vector<float> lse_corrections(const Setup& s, std::int64_t bhq, const std::vector<float>& mean_k);

// ---- stages ----

class ScoreStage {
 public:
  virtual ~ScoreStage() = default;
  // Base-2 logits s2[r][t] (rows x cta_k, row stride cta_k) of query rows
  // [r0, r0 + rows) of head bhq against the keys of K tile kt. Entries of
  // keys past nk are unspecified: the driver masks them.
  virtual void tile_logits(std::int64_t bhq, std::int64_t r0, std::int64_t rows, std::int64_t kt,
                           float* s2) const = 0;
  // Natural-log correction added to the LSE of row r of head bhq.
  virtual float lse_correction(std::int64_t bhq, std::int64_t r) const = 0;
};

class ValueStage {
 public:
  virtual ~ValueStage() = default;
  // Adds tile kt's P~ V into o [rows][dim], which the driver has already
  // rescaled by exp2(m_old - m_new). p is [rows][cta_k]: P~ in [0, 1],
  // exactly 0 for masked keys and keys past nk.
  virtual void accumulate(std::int64_t bhkv, std::int64_t kt, const float* p, std::int64_t rows, float* o) const = 0;
  // One output row from its accumulator: out[d] = o[d] * inv_l, then the
  // stage's per-channel dequantization, then + mean_v[d] (smooth_v).
  virtual void finish_row(std::int64_t bhkv, const float* o, float inv_l, float* out) const = 0;
  // One row's share of l from its n visible P~ of a tile: by default their
  // fp32 sum, t ascending. A stage whose kernels sum P as their PV MMA reads
  // it (TileGeometry::l_sums_pv_operand) sums that instead (in P~'s units).
  virtual float row_sum(const float* p, std::int64_t n) const;
};

// sage2 (INT8/INT4, granularity of the options) and sagebwd (INT8, per block).
std::unique_ptr<ScoreStage> make_int_scores(const Setup& s, QKFormat format, Granularity granularity);
// sage3: NVFP4 Q and K.
std::unique_ptr<ScoreStage> make_nvfp4_scores(const Setup& s);
// sage2: FP8 E4M3/E5M2 (per-channel V scale, static P scale) or FP16/BF16.
std::unique_ptr<ValueStage> make_sage2_values(const Setup& s);
// sage3: two-level NVFP4 P, NVFP4 V.
std::unique_ptr<ValueStage> make_nvfp4_values(const Setup& s);
// sagebwd: INT8 P per row and tile, INT8 V per tile.
std::unique_ptr<ValueStage> make_int8_values(const Setup& s);

// K or V of one (batch, kv head) with its channel mean over all keys
// subtracted (smooth_k / smooth_v), or as is with a zero mean.
struct Smoothed {
  std::vector<float> values;  // [nk][dim]
  std::vector<float> mean;    // [dim]: zeros when smoothing is off
};
Smoothed smooth_keys(const Setup& s, std::int64_t bhkv);
Smoothed smooth_values(const Setup& s, std::int64_t bhkv);

}  // namespace sage::ref::detail
