// SageAttention2 emulation: INT8/INT4 QK^T with per-group scales (also used,
// INT8 per block, by the SageBwd forward) and the FP8/FP16/BF16 PV stage.
//
// ---- QK^T, integer (IntScores) ----
// Pre-pass per (batch, kv head): K' = K - mean_k if smooth_k (channel mean
// over all nk keys, rounded to fp32 once; the subtraction in fp32), else K.
// Per (batch, q head): Q' = Q minus its cta_q-block mean if smooth_q, else Q.
// Groups (TileGeometry, per (batch, head)): Q row r belongs to group
// q_group_of(r, g), key c to k_group_of(c, g); a group spans every channel
// of its rows.
//   amax  = max |x| over the group                 fp32; NaN if the group holds one
//   scale = num::symmetric_scale(amax, qmax)       amax / qmax; qmax = 127 (INT8)
//                                                  or 7 (INT4); 1.0 if amax is 0;
//                                                  NaN / inf for a NaN / inf amax,
//                                                  so the group's scores are NaN
//   inv   = num::reciprocal_rn(scale)              1 / scale, fp32
//   code  = num::quantize_symmetric(x, inv, qmax)  RNE of x * inv, saturating
// Scores of row r (group scale qs) and key j (group scale ks), base 2:
//   acc   = sum_d qcode[r][d] * kcode[j][d]        exact int32
//   qf    = qs * scale_log2                        fp32, once per row;
//           scale_log2 = (float)(sm_scale * log2(e)), rounded once from double
//   s2    = (float)acc * (qf * ks)                 fp32: two roundings
//   smooth_q: s2 = s2 + delta2[j], with the Q block's fp32 mean mq:
//     delta[j]  = (sum_d mq[d] * (float)kcode[j][d], fp32, d ascending) * ks
//     delta2[j] = delta[j] * scale_log2
//   (a kernel that fuses the last add into an FMA differs by one rounding).
//   The GPU kernels differ from this contract in two roundings, within the
//   GPU tests' tolerances: mq is the fp32 sum of the tile's rows in a
//   shuffle-tree order, divided by the row count (here: a double sum rounded
//   once), and scale_log2 is the fp32 product sm_scale * (float)log2(e)
//   (here: the double product rounded once; one ulp apart for some D).
// LSE correction (smooth_k): (sum_d q[r][d] * mean_k[d]) * sm_scale, over the
// original q (see lse_corrections).
//
// ---- PV (Sage2Values) ----
// V' = V - mean_v if smooth_v (channel mean over all nk keys of the (batch,
// kv head), fp32), else V. mean_v is added back to every output row.
//   fp8_e4m3 / fp8_e5m2 (fmax = 448 / 57344):
//     V: per channel d over all keys: vscale[d] = num::symmetric_scale(amax_d, fmax)
//        (amax_d / fmax; 1.0 for an all-zero channel; +inf for a channel
//        holding an infinity, which makes the channel NaN in every row; a NaN
//        is left out of amax and its code is NaN),
//        vcode = fp8(V'[j][d] * reciprocal_rn(vscale[d]))   (RNE, satfinite)
//     P: static scale, pcode = fp8(P~ * fmax)        (fp32 multiply, then RNE)
//     accumulation uses the decoded codes (products are exact in fp32);
//     epilogue: out[d] = (o[d] * inv_l) * (vscale[d] / fmax) + mean_v[d]
//     row sum (TileGeometry::l_sums_pv_operand): (sum_t pcode[t], fp32, t
//     ascending) / fmax, the sum O's weights are made of; the sm90 kernel
//     sums with its P V MMA (a column of ones) at the accumulator's ~22 bits
//   fp16 / bf16: P~ and V' rounded (RNE) to the format, no scales;
//     out[d] = o[d] * inv_l + mean_v[d]; row sum (l_sums_pv_operand): the
//     fp32 sum of the rounded P~
//   pv_accum = two_level: each K tile's sum_j p[j] * v[j][d] (j ascending)
//     goes into a fresh fp32 accumulator, which is then added to o[d];
//   pv_accum = fp32: o[d] += p[j] * v[j][d] directly, j ascending.
//   (On the GPU the FP8 MMA's accumulator keeps ~22 bits; here both are
//   fp32 and the two paths differ only in the order of the additions.)
#include <cmath>
#include <stdexcept>

#include "numerics/formats.h"
#include "reference/emulation_internal.h"
#include "reference/parallel.h"

namespace sage::ref::detail {
namespace {

// Integer codes and per-row (or per-key) scales of one head's Q or K.
struct IntCodes {
  std::vector<std::int16_t> codes;  // [rows][dim]
  std::vector<float> scale;         // [rows]: the scale of the row's group
};

// Quantizes x [rows][dim] with one scale per group, group_of(row) in
// [0, groups).
template <class GroupOf>
IntCodes quantize_groups(const std::vector<float>& x, std::int64_t rows, std::int64_t dim, std::int64_t groups,
                         int qmax, GroupOf group_of) {
  std::vector<float> amax(static_cast<std::size_t>(groups), 0.0f);
  for (std::int64_t r = 0; r < rows; ++r) {
    float& a = amax[static_cast<std::size_t>(group_of(r))];
    for (std::int64_t d = 0; d < dim; ++d) a = num::max_nan(a, std::fabs(x[r * dim + d]));
  }
  std::vector<float> scale(amax.size()), inv(amax.size());
  for (std::size_t g = 0; g < amax.size(); ++g) {
    scale[g] = num::symmetric_scale(amax[g], qmax);
    inv[g] = num::reciprocal_rn(scale[g]);
  }
  IntCodes out;
  out.codes.resize(static_cast<std::size_t>(rows * dim));
  out.scale.resize(static_cast<std::size_t>(rows));
  for (std::int64_t r = 0; r < rows; ++r) {
    const std::size_t g = static_cast<std::size_t>(group_of(r));
    out.scale[r] = scale[g];
    for (std::int64_t d = 0; d < dim; ++d)
      out.codes[r * dim + d] = static_cast<std::int16_t>(num::quantize_symmetric(x[r * dim + d], inv[g], qmax));
  }
  return out;
}

// Exact integer dot product (the compiler vectorizes it; int16 codes keep
// the products in range for any qmax <= 127).
std::int32_t dot_codes(const std::int16_t* a, const std::int16_t* b, std::int64_t n) {
  std::int32_t acc = 0;
  for (std::int64_t i = 0; i < n; ++i) acc += static_cast<std::int32_t>(a[i]) * static_cast<std::int32_t>(b[i]);
  return acc;
}

class IntScores final : public ScoreStage {
 public:
  IntScores(const Setup& s, QKFormat format, Granularity granularity)
      : s_(s), granularity_(granularity), qmax_(format == QKFormat::int8 ? 127 : 7) {
    keys_.resize(static_cast<std::size_t>(s.p.batch * s.p.heads_kv));
    queries_.resize(static_cast<std::size_t>(s.p.batch * s.p.heads_q));
    parallel_for(static_cast<std::int64_t>(keys_.size()), [&](std::int64_t h) { prepare_keys(h); });
    parallel_for(static_cast<std::int64_t>(queries_.size()), [&](std::int64_t h) { prepare_queries(h); });
  }

  void tile_logits(std::int64_t bhq, std::int64_t r0, std::int64_t rows, std::int64_t kt, float* s2) const override {
    const QueryHead& qh = queries_[static_cast<std::size_t>(bhq)];
    const KeyHead& kh = keys_[static_cast<std::size_t>(s_.kv_head_of(bhq))];
    const std::int64_t dim = s_.dim(), cta_k = s_.geo.cta_k, j0 = kt * cta_k, n = s_.keys_in_tile(kt);

    std::vector<float> delta2;
    if (!qh.block_mean.empty()) delta2 = smooth_q_delta(qh, kh, r0 / s_.geo.cta_q, j0, n);

    for (std::int64_t r = 0; r < rows; ++r) {
      const std::int16_t* qc = qh.q.codes.data() + (r0 + r) * dim;
      const float qf = qh.q.scale[r0 + r] * s_.scale_log2;
      float* out = s2 + r * cta_k;
      for (std::int64_t t = 0; t < n; ++t) {
        const std::int32_t acc = dot_codes(qc, kh.k.codes.data() + (j0 + t) * dim, dim);
        out[t] = static_cast<float>(acc) * (qf * kh.k.scale[j0 + t]);
        if (!delta2.empty()) out[t] = out[t] + delta2[t];
      }
    }
  }

  float lse_correction(std::int64_t bhq, std::int64_t r) const override {
    return queries_[static_cast<std::size_t>(bhq)].lse_corr[r];
  }

 private:
  struct KeyHead {
    IntCodes k;               // [nk][dim], scale per key
    std::vector<float> mean;  // smooth_k channel mean (zeros without)
  };
  struct QueryHead {
    IntCodes q;                     // [nq][dim], scale per row
    std::vector<float> block_mean;  // smooth_q: [q_tiles][dim]
    std::vector<float> lse_corr;    // [nq]
  };

  void prepare_keys(std::int64_t bhkv) {
    Smoothed sk = smooth_keys(s_, bhkv);
    KeyHead& kh = keys_[static_cast<std::size_t>(bhkv)];
    kh.k = quantize_groups(sk.values, s_.p.nk, s_.dim(), s_.geo.k_groups(s_.p.nk, granularity_), qmax_,
                           [&](std::int64_t c) { return s_.geo.k_group_of(c, granularity_); });
    kh.mean = std::move(sk.mean);
  }

  // Runs after prepare_keys of every kv head (the LSE correction needs mean_k).
  void prepare_queries(std::int64_t bhq) {
    SmoothedQueries sq = smooth_queries(s_, bhq);
    QueryHead& qh = queries_[static_cast<std::size_t>(bhq)];
    qh.q = quantize_groups(sq.values, s_.p.nq, s_.dim(), s_.geo.q_groups(s_.p.nq, granularity_), qmax_,
                           [&](std::int64_t r) { return s_.geo.q_group_of(r, granularity_); });
    qh.block_mean = std::move(sq.block_mean);
    qh.lse_corr = lse_corrections(s_, bhq, keys_[static_cast<std::size_t>(s_.kv_head_of(bhq))].mean);
  }

  // smooth_q: the scores' share of the Q block mean, base 2, for keys
  // [j0, j0 + n) (see the contract at the top of the file).
  std::vector<float> smooth_q_delta(const QueryHead& qh, const KeyHead& kh, std::int64_t q_tile, std::int64_t j0,
                                    std::int64_t n) const {
    const std::int64_t dim = s_.dim();
    const float* mq = qh.block_mean.data() + q_tile * dim;
    std::vector<float> delta2(static_cast<std::size_t>(n));
    for (std::int64_t t = 0; t < n; ++t) {
      const std::int16_t* kc = kh.k.codes.data() + (j0 + t) * dim;
      float dot = 0.0f;
      for (std::int64_t d = 0; d < dim; ++d) dot += mq[d] * static_cast<float>(kc[d]);
      const float delta = dot * kh.k.scale[j0 + t];
      delta2[t] = delta * s_.scale_log2;
    }
    return delta2;
  }

  const Setup& s_;
  Granularity granularity_;
  int qmax_;
  std::vector<KeyHead> keys_;
  std::vector<QueryHead> queries_;
};

// ---- PV ----

class Sage2Values final : public ValueStage {
 public:
  explicit Sage2Values(const Setup& s) : s_(s), format_(s.options.pv_format), accum_(s.options.pv_accum) {
    p_scale_ = format_ == PVFormat::fp8_e4m3 ? 448.0f : format_ == PVFormat::fp8_e5m2 ? 57344.0f : 1.0f;
    heads_.resize(static_cast<std::size_t>(s.p.batch * s.p.heads_kv));
    parallel_for(static_cast<std::int64_t>(heads_.size()), [&](std::int64_t h) { prepare(h); });
  }

  void accumulate(std::int64_t bhkv, std::int64_t kt, const float* p, std::int64_t rows, float* o) const override {
    const Head& h = heads_[static_cast<std::size_t>(bhkv)];
    const std::int64_t dim = s_.dim(), cta_k = s_.geo.cta_k, j0 = kt * cta_k, n = s_.keys_in_tile(kt);
    std::vector<float> pq(static_cast<std::size_t>(n)), tile(static_cast<std::size_t>(dim));
    for (std::int64_t r = 0; r < rows; ++r) {
      for (std::int64_t t = 0; t < n; ++t) pq[t] = quantize_p(p[r * cta_k + t]);
      float* orow = o + r * dim;
      if (accum_ == PVAccum::two_level) {
        std::fill(tile.begin(), tile.end(), 0.0f);
        add_products(pq.data(), n, h.values.data() + j0 * dim, dim, tile.data());
        for (std::int64_t d = 0; d < dim; ++d) orow[d] += tile[d];
      } else {
        add_products(pq.data(), n, h.values.data() + j0 * dim, dim, orow);
      }
    }
  }

  float row_sum(const float* p, std::int64_t n) const override {
    if (!s_.geo.l_sums_pv_operand(s_.dim())) return ValueStage::row_sum(p, n);
    float sum = 0.0f;
    for (std::int64_t t = 0; t < n; ++t) sum += quantize_p(p[t]);
    return is_fp8() ? sum / p_scale_ : sum;
  }

  void finish_row(std::int64_t bhkv, const float* o, float inv_l, float* out) const override {
    const Head& h = heads_[static_cast<std::size_t>(bhkv)];
    for (std::int64_t d = 0; d < s_.dim(); ++d) out[d] = (o[d] * inv_l) * h.dequant[d] + h.mean[d];
  }

 private:
  struct Head {
    std::vector<float> values;   // [nk][dim] decoded V codes (FP8) or rounded V (FP16/BF16)
    std::vector<float> dequant;  // [dim] vscale[d] / p_scale (FP8), 1 otherwise
    std::vector<float> mean;     // [dim] smooth_v mean (zeros without)
  };

  bool is_fp8() const { return format_ == PVFormat::fp8_e4m3 || format_ == PVFormat::fp8_e5m2; }

  // The value a kernel's PV MMA reads for x (already scaled).
  float round_to_format(float x) const {
    switch (format_) {
      case PVFormat::fp8_e4m3: return num::fp8_e4m3_to_float(num::fp8_e4m3_from_float(x));
      case PVFormat::fp8_e5m2: return num::fp8_e5m2_to_float(num::fp8_e5m2_from_float(x));
      case PVFormat::fp16: return num::round_to_f16(x);
      case PVFormat::bf16: return num::round_to_bf16(x);
    }
    return x;
  }
  float quantize_p(float p) const { return round_to_format(is_fp8() ? p * p_scale_ : p); }

  // acc[d] += p[t] * v[t][d], t ascending.
  static void add_products(const float* p, std::int64_t n, const float* v, std::int64_t dim, float* acc) {
    for (std::int64_t t = 0; t < n; ++t) {
      const float pt = p[t];
      const float* vt = v + t * dim;
      for (std::int64_t d = 0; d < dim; ++d) acc[d] += pt * vt[d];
    }
  }

  void prepare(std::int64_t bhkv) {
    const std::int64_t dim = s_.dim(), nk = s_.p.nk;
    Smoothed sv = smooth_values(s_, bhkv);
    Head& h = heads_[static_cast<std::size_t>(bhkv)];
    h.mean = std::move(sv.mean);
    h.values = std::move(sv.values);
    h.dequant.assign(static_cast<std::size_t>(dim), 1.0f);
    if (!is_fp8()) {
      for (float& x : h.values) x = round_to_format(x);
      return;
    }
    for (std::int64_t d = 0; d < dim; ++d) {
      float amax = 0.0f;
      for (std::int64_t j = 0; j < nk; ++j) amax = std::max(amax, std::fabs(h.values[j * dim + d]));
      // The format's max is both V's quantization range and P's static scale.
      const float vscale = num::symmetric_scale(amax, static_cast<int>(p_scale_));
      const float inv = num::reciprocal_rn(vscale);
      for (std::int64_t j = 0; j < nk; ++j) h.values[j * dim + d] = round_to_format(h.values[j * dim + d] * inv);
      h.dequant[d] = vscale / p_scale_;
    }
  }

  const Setup& s_;
  PVFormat format_;
  PVAccum accum_;
  float p_scale_ = 1.0f;
  std::vector<Head> heads_;
};

}  // namespace

std::unique_ptr<ScoreStage> make_int_scores(const Setup& s, QKFormat format, Granularity granularity) {
  return std::make_unique<IntScores>(s, format, granularity);
}

std::unique_ptr<ValueStage> make_sage2_values(const Setup& s) { return std::make_unique<Sage2Values>(s); }

}  // namespace sage::ref::detail
