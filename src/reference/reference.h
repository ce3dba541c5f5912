// CPU reference: exact attention in float64, a faithful emulation of each
// quantized pipeline (DESIGN.md section 1), accuracy metrics and the
// synthetic input distributions used by the tests, the CLI and the reports.
//
// All tensors here are dense row-major in [batch, heads, tokens, head_dim]
// order ("BHND"); lse is [batch, heads_q, nq]. Work is spread over the
// machine's cores (SAGE_NUM_THREADS in the environment caps the thread
// count, see parallel.h); results do not depend on the thread count.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "numerics/tile_geometry.h"
#include "sage/options.h"
#include "sage/tensor.h"

namespace sage::ref {

struct Problem {
  std::int64_t batch = 1, heads_q = 1, heads_kv = 1, nq = 0, nk = 0, head_dim = 0;
  bool causal = false;
  CausalAlign align = CausalAlign::top_left;
  double sm_scale = 0.0;  // resolved: never 0 here

  std::int64_t q_elems() const { return batch * heads_q * nq * head_dim; }
  std::int64_t kv_elems() const { return batch * heads_kv * nk * head_dim; }
  std::int64_t lse_elems() const { return batch * heads_q * nq; }
  // Query i sees key j (causal mask with its alignment).
  bool visible(std::int64_t i, std::int64_t j) const {
    if (!causal) return true;
    const std::int64_t shift = align == CausalAlign::bottom_right ? nk - nq : 0;
    return j <= i + shift;
  }
};

// Exact softmax attention in float64. A row that sees no key gets out = 0
// and lse = -inf. lse may be null.
void exact_attention(const Problem& p, const double* q, const double* k, const double* v, double* out,
                     double* lse);

// The quantized pipeline selected by `options` (method, QK format and
// granularity, PV format and accumulation, smoothing), with the groupings of
// `geometry`, the kernels' rounding and format conversions, and the online
// softmax tile by tile. Inputs are the values the kernel reads (already
// rounded to the input dtype). lse (natural log, corrected for smoothing)
// may be null.
//
// The mask and the scale come from `p` (p.causal, p.align, p.sm_scale); the
// matching fields of `options` are not read (the caller resolves them into
// the Problem). Per method, which options apply:
//   sage2:   all of qk_format, qk_granularity, pv_format, pv_accum, smooth_*;
//   sage3:   smooth_q/k/v (NVFP4 everywhere; head_dim % 16 == 0 and
//            geometry.cta_k % 16 == 0 are required);
//   sagebwd: smooth_q/k/v (INT8 per-block Q/K, INT8 P and V).
// The exact grouping, scale and operation-order contract of each pipeline is
// written at the top of src/reference/emulation*.cpp.
// Throws std::invalid_argument for sizes, sm_scale or geometry it cannot
// handle (the public API validates before it gets here).
void emulate_attention(const Problem& p, const AttentionOptions& options, const TileGeometry& geometry,
                       const float* q, const float* k, const float* v, float* out, float* lse);

// ---- metrics of `test` against `ref`, both [rows x cols] ----
struct Metrics {
  double cos_sim = 0;            // over all elements
  double rel_l1 = 0;             // sum|t - r| / sum|r|
  double rmse = 0;               // sqrt(mean (t - r)^2)
  double worst_row_cos_sim = 0;  // min over rows
  double max_abs_err = 0;
  std::int64_t nonfinite = 0;    // NaN/Inf in test
};
// Any NaN/Inf in test (or in ref) makes every metric NaN, so no threshold
// check can pass. Rows that are zero in both count as cos-sim 1.
Metrics compare(const double* ref, const float* test, std::int64_t rows, std::int64_t cols);

// ---- synthetic inputs ----
enum class Distribution {
  gaussian,          // N(0, 1) everywhere
  channel_bias,      // K and V get a large per-channel offset shared by all tokens
  outlier_channels,  // a few channels of Q and K are 10-50x larger
  heavy_tailed,      // Student-t (3 degrees of freedom)
  sharp,             // large-scale Q.K: near one-hot attention rows
  qk_bias,           // Q and K get per-channel offsets shared by all tokens (Q's smaller), V does not
};
const char* distribution_name(Distribution d);
bool parse_distribution(const std::string& name, Distribution* out);
std::vector<Distribution> all_distributions();

struct Inputs {
  std::vector<float> q, k, v;  // BHND, values representable in `round_to`
};
// Deterministic for a seed. round_to: f32 (no rounding), f16 or bf16.
Inputs make_inputs(const Problem& p, Distribution d, std::uint64_t seed, DType round_to = DType::bf16);

}  // namespace sage::ref
