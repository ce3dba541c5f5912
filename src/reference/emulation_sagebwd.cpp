// SageBwd forward emulation: the PV stage in INT8 (the QK^T stage is
// IntScores of emulation_sage2.cpp with INT8 and per-block groups: one Q
// scale per cta_q rows, one K scale per cta_k keys, K smoothed per
// options.smooth_k).
//
// V (per (batch, kv head)): V' = V - mean_v if smooth_v, else V. One scale
// per K tile (cta_k keys x all channels):
//   vscale[kt] = num::symmetric_scale(amax over the tile, 127)  (NaN / +inf if
//                the tile holds a NaN / an infinity: every row of a Q tile
//                that reaches the K tile is then NaN, as the INT8 codes
//                cannot carry them)
//   vcode      = num::quantize_symmetric(V', reciprocal_rn(vscale[kt]), 127)
// P (per row and K tile, "per token"):
//   pmax   = max_t P~[t]
//   pscale = num::symmetric_scale(pmax, 127)  (1 where pmax = 0: a row that
//            sees no key of the tile or whose P~ all underflow gets codes 0,
//            and o still takes 0 * a NaN or infinite vscale, as 0 * V does
//            in float attention)
//   pcode  = num::quantize_symmetric(P~[t], reciprocal_rn(pscale), 127)  in [0, 127]
// Per row and tile:
//   acc[d]  = sum_t pcode[t] * vcode[t][d]           exact int32
//   o[d]   += (float)acc[d] * (pscale * vscale[kt])  fp32
// Epilogue: out[d] = o[d] * inv_l + mean_v[d].
// options.pv_format and pv_accum do not apply (the int32 tile accumulator is
// two-level by construction).
#include <cmath>

#include "numerics/formats.h"
#include "reference/emulation_internal.h"
#include "reference/parallel.h"

namespace sage::ref::detail {
namespace {

class Int8Values final : public ValueStage {
 public:
  explicit Int8Values(const Setup& s) : s_(s) {
    heads_.resize(static_cast<std::size_t>(s.p.batch * s.p.heads_kv));
    parallel_for(static_cast<std::int64_t>(heads_.size()), [&](std::int64_t h) { prepare(h); });
  }

  void accumulate(std::int64_t bhkv, std::int64_t kt, const float* p, std::int64_t rows, float* o) const override {
    const Head& h = heads_[static_cast<std::size_t>(bhkv)];
    const std::int64_t dim = s_.dim(), cta_k = s_.geo.cta_k, n = s_.keys_in_tile(kt);
    const std::int16_t* v = h.codes.data() + kt * cta_k * dim;
    std::vector<std::int32_t> pcode(static_cast<std::size_t>(n)), acc(static_cast<std::size_t>(dim));
    for (std::int64_t r = 0; r < rows; ++r) {
      const float* pr = p + r * cta_k;
      const float pmax = *std::max_element(pr, pr + n);
      const float pscale = num::symmetric_scale(pmax, 127);
      const float inv = num::reciprocal_rn(pscale);
      for (std::int64_t t = 0; t < n; ++t) pcode[t] = num::quantize_symmetric(pr[t], inv, 127);

      std::fill(acc.begin(), acc.end(), 0);
      for (std::int64_t t = 0; t < n; ++t) {
        const std::int32_t pt = pcode[t];
        const std::int16_t* vt = v + t * dim;
        for (std::int64_t d = 0; d < dim; ++d) acc[d] += pt * static_cast<std::int32_t>(vt[d]);
      }
      const float dq = pscale * h.scale[kt];
      float* orow = o + r * dim;
      for (std::int64_t d = 0; d < dim; ++d) orow[d] += static_cast<float>(acc[d]) * dq;
    }
  }

  void finish_row(std::int64_t bhkv, const float* o, float inv_l, float* out) const override {
    const Head& h = heads_[static_cast<std::size_t>(bhkv)];
    for (std::int64_t d = 0; d < s_.dim(); ++d) out[d] = o[d] * inv_l + h.mean[d];
  }

 private:
  struct Head {
    std::vector<std::int16_t> codes;  // [nk][dim]
    std::vector<float> scale;         // [k_tiles]
    std::vector<float> mean;          // smooth_v mean (zeros without)
  };

  void prepare(std::int64_t bhkv) {
    const std::int64_t dim = s_.dim(), cta_k = s_.geo.cta_k;
    Smoothed sv = smooth_values(s_, bhkv);
    Head& h = heads_[static_cast<std::size_t>(bhkv)];
    h.codes.resize(sv.values.size());
    h.scale.resize(static_cast<std::size_t>(s_.k_tiles));
    for (std::int64_t kt = 0; kt < s_.k_tiles; ++kt) {
      const std::int64_t begin = kt * cta_k * dim, end = (kt * cta_k + s_.keys_in_tile(kt)) * dim;
      float amax = 0.0f;
      for (std::int64_t i = begin; i < end; ++i) amax = num::max_nan(amax, std::fabs(sv.values[i]));
      h.scale[kt] = num::symmetric_scale(amax, 127);
      const float inv = num::reciprocal_rn(h.scale[kt]);
      for (std::int64_t i = begin; i < end; ++i)
        h.codes[i] = static_cast<std::int16_t>(num::quantize_symmetric(sv.values[i], inv, 127));
    }
    h.mean = std::move(sv.mean);
  }

  const Setup& s_;
  std::vector<Head> heads_;
};

}  // namespace

std::unique_ptr<ValueStage> make_int8_values(const Setup& s) { return std::make_unique<Int8Values>(s); }

}  // namespace sage::ref::detail
