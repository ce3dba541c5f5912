// emulate_attention: the online-softmax driver shared by every quantized
// pipeline, the smoothing helpers, and the dispatch on options.method.
//
// Driver, per (batch, q head, Q tile of cta_q rows), all in fp32:
//   m[r] = -inf, l[r] = 0, o[r][:] = 0
//   for each K tile kt (cta_k keys; tiles past the last visible key skipped):
//     s2 = ScoreStage::tile_logits(...)          base-2 logits
//     for each row r, with n = visible keys of the row inside this tile:
//       tile_max = max_{t<n} s2[r][t]              (-inf when n = 0; NaN logits
//                                                  left out, as fmaxf leaves them)
//       m_new    = max(m[r], tile_max)
//       if m_new == -inf and no logit is NaN: P~ = 0, nothing else changes
//         (row saw no key yet); a NaN logit's P~ makes l and o NaN
//       alpha    = exp2(m[r] - m_new)              (0 when m[r] = -inf)
//       P~[t]    = exp2(s2[r][t] - m_new) for t < n, 0 for masked keys
//       l[r]     = l[r] * alpha + ValueStage::row_sum(P~): sum_t P~[t], fp32,
//                  t ascending; where TileGeometry::l_sums_pv_operand,
//                  the same sum over P as the PV stage quantizes it
//       o[r][:] *= alpha;  m[r] = m_new
//     ValueStage::accumulate(P~ tile, o)
//   per row: l == 0 (no visible key) -> out = 0, lse = -inf; else
//     inv_l = 1 / l;  out = ValueStage::finish_row(o, inv_l)
//     lse   = (m + log2(l)) * ln(2) + ScoreStage::lse_correction  (fp32)
// exp2/log2 are the C library's (correctly rounded or nearly); the kernels'
// ex2.approx differs by a couple of ulp. The kernels' order of the row-sum
// additions differs too (per-thread partials, then a quad reduction; the
// sm90 MMA's own order and ~22-bit accumulator where it makes the sums).
#include <cmath>
#include <limits>
#include <stdexcept>

#include "numerics/formats.h"
#include "reference/emulation_internal.h"
#include "reference/parallel.h"

namespace sage::ref {
namespace detail {

std::int64_t visible_prefix(const Problem& p, std::int64_t i) {
  if (!p.causal) return p.nk;
  const std::int64_t shift = p.align == CausalAlign::bottom_right ? p.nk - p.nq : 0;
  return std::clamp<std::int64_t>(i + shift + 1, 0, p.nk);
}

float ValueStage::row_sum(const float* p, std::int64_t n) const {
  float sum = 0.0f;
  for (std::int64_t t = 0; t < n; ++t) sum += p[t];
  return sum;
}

std::vector<float> channel_mean(const float* x, std::int64_t rows, std::int64_t dim) {
  std::vector<double> sum(static_cast<std::size_t>(dim), 0.0);
  for (std::int64_t r = 0; r < rows; ++r)
    for (std::int64_t d = 0; d < dim; ++d) sum[d] += x[r * dim + d];
  std::vector<float> mean(static_cast<std::size_t>(dim), 0.0f);
  if (rows > 0)
    for (std::int64_t d = 0; d < dim; ++d) mean[d] = static_cast<float>(sum[d] / static_cast<double>(rows));
  return mean;
}

std::vector<float> subtract_mean(const float* x, std::int64_t rows, std::int64_t dim, const std::vector<float>& mean) {
  std::vector<float> out(static_cast<std::size_t>(rows * dim));
  for (std::int64_t r = 0; r < rows; ++r)
    for (std::int64_t d = 0; d < dim; ++d) out[r * dim + d] = x[r * dim + d] - mean[d];
  return out;
}

SmoothedQueries smooth_queries(const Setup& s, std::int64_t bhq) {
  const std::int64_t dim = s.dim(), nq = s.p.nq;
  const float* q = s.q_head(bhq);
  SmoothedQueries out;
  out.values.assign(q, q + nq * dim);
  if (!s.options.smooth_q) return out;
  out.block_mean.resize(static_cast<std::size_t>(s.q_tiles * dim));
  for (std::int64_t qt = 0; qt < s.q_tiles; ++qt) {
    const std::int64_t r0 = qt * s.geo.cta_q, rows = std::min<std::int64_t>(s.geo.cta_q, nq - r0);
    const std::vector<float> mean = channel_mean(q + r0 * dim, rows, dim);
    std::copy(mean.begin(), mean.end(), out.block_mean.begin() + qt * dim);
    for (std::int64_t r = r0; r < r0 + rows; ++r)
      for (std::int64_t d = 0; d < dim; ++d) out.values[r * dim + d] = q[r * dim + d] - mean[d];
  }
  return out;
}

std::vector<float> lse_corrections(const Setup& s, std::int64_t bhq, const std::vector<float>& mean_k) {
  const std::int64_t dim = s.dim();
  std::vector<float> corr(static_cast<std::size_t>(s.p.nq), 0.0f);
  if (!s.options.smooth_k) return corr;
  const float* q = s.q_head(bhq);
  for (std::int64_t r = 0; r < s.p.nq; ++r) {
    float dot = 0.0f;
    for (std::int64_t d = 0; d < dim; ++d) dot += q[r * dim + d] * mean_k[d];
    corr[r] = dot * s.sm_scale;
  }
  return corr;
}

namespace {
Smoothed channel_smoothed(const float* x, std::int64_t n, std::int64_t dim, bool enabled) {
  Smoothed out;
  if (enabled) {
    out.mean = channel_mean(x, n, dim);
    out.values = subtract_mean(x, n, dim, out.mean);
  } else {
    out.mean.assign(static_cast<std::size_t>(dim), 0.0f);
    out.values.assign(x, x + n * dim);
  }
  return out;
}
}  // namespace

Smoothed smooth_keys(const Setup& s, std::int64_t bhkv) {
  return channel_smoothed(s.k_head(bhkv), s.p.nk, s.dim(), s.options.smooth_k);
}

Smoothed smooth_values(const Setup& s, std::int64_t bhkv) {
  return channel_smoothed(s.v_head(bhkv), s.p.nk, s.dim(), s.options.smooth_v);
}

}  // namespace detail

namespace {

using detail::ScoreStage;
using detail::Setup;
using detail::ValueStage;

constexpr float kLn2 = 0.693147180559945309f;

Setup make_setup(const Problem& p, const AttentionOptions& options, const TileGeometry& geo, const float* q,
                 const float* k, const float* v) {
  if (p.batch <= 0 || p.heads_q <= 0 || p.heads_kv <= 0 || p.nq < 0 || p.nk < 0 || p.head_dim <= 0)
    throw std::invalid_argument("emulate_attention: sizes must be positive");
  if (p.heads_q % p.heads_kv != 0)
    throw std::invalid_argument("emulate_attention: heads_q must be a multiple of heads_kv");
  if (!(p.sm_scale > 0.0) || !std::isfinite(p.sm_scale))
    throw std::invalid_argument("emulate_attention: sm_scale must be resolved (finite, > 0)");
  if (geo.cta_q <= 0 || geo.cta_k <= 0 || geo.warp_q <= 0 || geo.warp_q % 8 != 0 || geo.cta_q % geo.warp_q != 0 ||
      geo.cta_k % 8 != 0)
    throw std::invalid_argument("emulate_attention: tile geometry needs warp_q % 8 == 0, cta_q % warp_q == 0, "
                                "cta_k % 8 == 0");
  Setup s;
  s.p = p;
  s.options = options;
  s.geo = geo;
  s.q = q;
  s.k = k;
  s.v = v;
  s.sm_scale = static_cast<float>(p.sm_scale);
  s.scale_log2 = static_cast<float>(p.sm_scale * num::kLog2e);
  s.q_tiles = (p.nq + geo.cta_q - 1) / geo.cta_q;
  s.k_tiles = (p.nk + geo.cta_k - 1) / geo.cta_k;
  s.q_heads_per_kv = p.heads_q / p.heads_kv;
  return s;
}

// Running state of one Q tile's rows.
struct RowState {
  std::vector<float> m, l, o;  // [rows], [rows], [rows][dim]
  RowState(std::int64_t rows, std::int64_t dim)
      : m(static_cast<std::size_t>(rows), -std::numeric_limits<float>::infinity()),
        l(static_cast<std::size_t>(rows), 0.0f),
        o(static_cast<std::size_t>(rows * dim), 0.0f) {}
};

// One row's online-softmax step on one K tile: turns its logits s2[0, cta_k)
// into P~ (in place; masked keys -> 0) and rescales its state.
// A NaN logit (from a NaN or infinite input, whose group scale is NaN or
// inf: num::symmetric_scale) is left out of the maximum, as the kernels'
// fmaxf leaves it, and its exponential makes the row's l and O NaN.
void softmax_step(const ValueStage& values, float* s2, std::int64_t visible, std::int64_t cta_k, float& m, float& l,
                  float* o, std::int64_t dim) {
  float tile_max = -std::numeric_limits<float>::infinity();
  bool nan_logit = false;
  for (std::int64_t t = 0; t < visible; ++t) {
    if (std::isnan(s2[t])) {
      nan_logit = true;
    } else {
      tile_max = std::max(tile_max, s2[t]);
    }
  }
  const float m_new = std::max(m, tile_max);
  if (m_new == -std::numeric_limits<float>::infinity() && !nan_logit) {
    std::fill(s2, s2 + cta_k, 0.0f);
    return;
  }
  const float alpha = std::exp2(m - m_new);  // exp2(-inf) = 0 on the first visible tile
  for (std::int64_t t = 0; t < visible; ++t) s2[t] = std::exp2(s2[t] - m_new);
  std::fill(s2 + visible, s2 + cta_k, 0.0f);
  l = l * alpha + values.row_sum(s2, visible);
  m = m_new;
  for (std::int64_t d = 0; d < dim; ++d) o[d] *= alpha;
}

// The whole attention of one Q tile of head bhq.
void run_q_tile(const Setup& s, const ScoreStage& scores, const ValueStage& values, std::int64_t bhq,
                std::int64_t qt, float* out, float* lse) {
  const std::int64_t dim = s.dim(), cta_k = s.geo.cta_k;
  const std::int64_t r0 = qt * s.geo.cta_q, rows = std::min<std::int64_t>(s.geo.cta_q, s.p.nq - r0);
  const std::int64_t bhkv = s.kv_head_of(bhq);

  std::vector<std::int64_t> visible(static_cast<std::size_t>(rows));
  std::int64_t last_key = 0;  // keys [0, last_key) are visible to some row of the tile
  for (std::int64_t r = 0; r < rows; ++r) {
    visible[r] = detail::visible_prefix(s.p, r0 + r);
    last_key = std::max(last_key, visible[r]);
  }

  RowState st(rows, dim);
  std::vector<float> tile(static_cast<std::size_t>(rows * cta_k));
  const std::int64_t tiles = (last_key + cta_k - 1) / cta_k;
  for (std::int64_t kt = 0; kt < tiles; ++kt) {
    scores.tile_logits(bhq, r0, rows, kt, tile.data());
    for (std::int64_t r = 0; r < rows; ++r) {
      const std::int64_t n = std::clamp<std::int64_t>(visible[r] - kt * cta_k, 0, cta_k);
      softmax_step(values, tile.data() + r * cta_k, n, cta_k, st.m[r], st.l[r], st.o.data() + r * dim, dim);
    }
    values.accumulate(bhkv, kt, tile.data(), rows, st.o.data());
  }

  for (std::int64_t r = 0; r < rows; ++r) {
    const std::int64_t row = bhq * s.p.nq + r0 + r;
    float* out_row = out + row * dim;
    if (st.l[r] == 0.0f) {
      std::fill(out_row, out_row + dim, 0.0f);
      if (lse) lse[row] = -std::numeric_limits<float>::infinity();
      continue;
    }
    values.finish_row(bhkv, st.o.data() + r * dim, 1.0f / st.l[r], out_row);
    if (lse) lse[row] = (st.m[r] + std::log2(st.l[r])) * kLn2 + scores.lse_correction(bhq, r0 + r);
  }
}

}  // namespace

void emulate_attention(const Problem& p, const AttentionOptions& options, const TileGeometry& geometry,
                       const float* q, const float* k, const float* v, float* out, float* lse) {
  const Setup s = make_setup(p, options, geometry, q, k, v);
  if (p.nq == 0) return;

  // The pre-pass (smoothing and quantization of K, V and Q) runs when the
  // stages are made; the main loop then only reads them.
  std::unique_ptr<ScoreStage> scores;
  std::unique_ptr<ValueStage> values;
  switch (options.method) {
    case Method::sage2:
      scores = detail::make_int_scores(s, options.qk_format, options.qk_granularity);
      values = detail::make_sage2_values(s);
      break;
    case Method::sage3:
      scores = detail::make_nvfp4_scores(s);
      values = detail::make_nvfp4_values(s);
      break;
    case Method::sagebwd:
      scores = detail::make_int_scores(s, QKFormat::int8, Granularity::per_block);
      values = detail::make_int8_values(s);
      break;
  }
  if (!scores || !values) throw std::invalid_argument("emulate_attention: unknown method");

  parallel_for(p.batch * p.heads_q * s.q_tiles, [&](std::int64_t task) {
    run_q_tile(s, *scores, *values, task / s.q_tiles, task % s.q_tiles, out, lse);
  });
}

}  // namespace sage::ref
