// SageAttention3 emulation: NVFP4 microscaling of Q, K, P and V.
//
// NVFP4 block quantization of 16 values x[0..16) (used for every tensor):
//   bmax  = max |x|                                  fp32 (a block holding a NaN
//                                                    or an infinity decodes to NaN)
//   scale = ue4m3_to_float(ue4m3_from_float(bmax / 6))   RNE, satfinite (<= 448)
//   inv   = 1 / scale (fp32; 0 when scale is 0)
//   e[i]  = fp4_e2m1_from_float(x[i] * inv)          RNE, satfinite (|e| <= 6)
//   value = fp4_e2m1_to_float(e[i]) * scale          exact in fp32 (and in BF16,
//                                                    which the Hopper emulation uses)
// Requirements: head_dim % 16 == 0 (Q/K blocks run along head_dim; the caller
// pads) and cta_k % 16 == 0 (P/V blocks run along keys inside a K tile).
// NVFP4 has no per-tensor scale here, as in SageAttention3, so a block's
// range is bounded on both sides: a block of Q, K or V (after smoothing) whose
// largest |value| passes 464 * 6 = 2784 would get a scale rounded past E4M3's
// largest (448) and be clamped, and is refused (std::invalid_argument, an
// invalid-argument Status at the API); a block whose largest |value| is at
// most 6 * 2^-10 (about 0.0059: half the smallest UE4M3 scale, times 6)
// quantizes to zeros, and blocks up to 6 * 2^-6 keep fewer than E4M3's
// three mantissa bits of scale.
//
// QK^T (Nvfp4Scores): K' = K - mean_k (smooth_k), Q' = Q - block mean
// (smooth_q), both quantized in 1x16 blocks along head_dim. Score of row r,
// key j, base 2:
//   part_b = sum_{i<16} q[16b+i] * k[16b+i]   exact in fp32 (one block's
//            products share scale_q * scale_k and are small multiples of it)
//   acc    = sum_b part_b                      fp32, b ascending
//   s2     = acc * scale_log2  (+ delta2[j] with smooth_q:
//            delta[j] = sum_d mq[d] * k[j][d], fp32, d ascending, over the
//            dequantized key; delta2[j] = delta[j] * scale_log2)
// LSE correction as in sage2 (q . mean_k * sm_scale).
//
// PV (Nvfp4Values): V' = V - mean_v (smooth_v); per channel, blocks of 16
// consecutive keys (tile-aligned; keys past nk count as 0). Per row and K
// tile, two-level quantization of P~:
//   pmax = max_t P~[t]
//   s1   = pmax / (448 * 6)                    fp32
//   x[t] = P~[t] * (1 / s1)                    maps pmax to ~2688 = 448 * 6,
//                                              so the block scales use E4M3's range
//   x quantized in 1x16 blocks along the keys (rule above) -> p[t]
//   (pmax = 0, a row that sees no key of the tile or whose P~ all underflow:
//   every p[t] = 0, which still carries a NaN block of V into o, as 0 * V
//   does in float attention)
//   part_b[d] = sum_{t in block b} p[t] * v[t][d]   exact in fp32
//   tile[d]   = sum_b part_b[d]                      fp32, b ascending
//   o[d]     += tile[d] * s1
// The per-row, per-tile s1 makes the accumulation two-level by construction;
// options.pv_accum and pv_format do not apply. Epilogue:
//   out[d] = o[d] * inv_l + mean_v[d]
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <stdexcept>
#include <string>

#include "numerics/formats.h"
#include "reference/emulation_internal.h"
#include "reference/parallel.h"

namespace sage::ref::detail {
namespace {

constexpr std::int64_t kBlock = 16;  // NVFP4 block length

// Quantizes n <= 16 values x[i * stride] in one NVFP4 block and writes the
// decoded values (element * block scale) to out[i * stride]. Returns the
// block's largest |value|.
float nvfp4_block(const float* x, std::int64_t n, std::int64_t stride, float* out) {
  float bmax = 0.0f;
  for (std::int64_t i = 0; i < n; ++i) bmax = std::max(bmax, std::fabs(x[i * stride]));
  const float scale = num::ue4m3_to_float(num::ue4m3_from_float(bmax / 6.0f));
  const float inv = scale > 0.0f ? 1.0f / scale : 0.0f;
  for (std::int64_t i = 0; i < n; ++i)
    out[i * stride] = num::fp4_e2m1_to_float(num::fp4_e2m1_from_float(x[i * stride] * inv)) * scale;
  return bmax;
}

// nvfp4_block for a block of the inputs (Q, K, V): one that holds a NaN or
// an infinity decodes to NaN, where the satfinite conversions would clamp it
// to a finite value. (P's blocks keep the clamp: a tile whose largest P~ is
// below about 2^-116 (448 * 6 / FLT_MAX) scales P~ past fp32's range, to inf
// and 0 * inf, legitimately, and those values' share of the output is
// negligible.) Returns the block's largest |value| (0 for a NaN block).
float nvfp4_input_block(const float* x, std::int64_t n, std::int64_t stride, float* out) {
  for (std::int64_t i = 0; i < n; ++i) {
    if (!std::isfinite(x[i * stride])) {
      for (std::int64_t j = 0; j < n; ++j) out[j * stride] = std::numeric_limits<float>::quiet_NaN();
      return 0.0f;
    }
  }
  return nvfp4_block(x, n, stride, out);
}

// Refuses the inputs when a block of `tensor` (over its heads' largest
// block maxima) holds a value whose block scale, largest / 6, passes 464:
// that rounds beyond E4M3's largest, 448 (464 is the tie between 448 and
// 480, which goes to the even 448), where satfinite would clamp the block.
// Finite, wrong output is what the library never returns.
template <class Head>
void check_block_range(const char* tensor, const std::vector<Head>& heads) {
  float worst = 0.0f;
  for (const Head& h : heads) worst = std::max(worst, h.largest_block_max);
  if (!(worst / 6.0f > 464.0f)) return;
  char value[32];
  std::snprintf(value, sizeof value, "%g", static_cast<double>(worst));
  throw std::invalid_argument(std::string("sage3 (NVFP4): a 1x16 block of ") + tensor + " holds |value| " + value +
                              " (after smoothing, where on): its E4M3 block scale (largest / 6) would pass 448, "
                              "the format's largest, and the block would be clamped; sage3 takes blocks up to "
                              "|value| 2784 (scale the input down, or use method sage2)");
}

// Rows of x [rows][dim] quantized in 1x16 blocks along dim (dim % 16 == 0);
// *largest: the largest block max.
std::vector<float> nvfp4_rows(const std::vector<float>& x, std::int64_t rows, std::int64_t dim, float* largest) {
  std::vector<float> out(x.size());
  for (std::int64_t r = 0; r < rows; ++r)
    for (std::int64_t b = 0; b < dim; b += kBlock)
      *largest = std::max(*largest, nvfp4_input_block(x.data() + r * dim + b, kBlock, 1, out.data() + r * dim + b));
  return out;
}

void check_nvfp4_shapes(const Setup& s) {
  if (s.dim() % kBlock != 0)
    throw std::invalid_argument("emulate_attention: sage3 (NVFP4) needs head_dim to be a multiple of 16 "
                                "(pad the head dimension with zeros)");
  if (s.geo.cta_k % kBlock != 0)
    throw std::invalid_argument("emulate_attention: sage3 (NVFP4) needs cta_k to be a multiple of 16");
}

class Nvfp4Scores final : public ScoreStage {
 public:
  explicit Nvfp4Scores(const Setup& s) : s_(s) {
    check_nvfp4_shapes(s);
    keys_.resize(static_cast<std::size_t>(s.p.batch * s.p.heads_kv));
    queries_.resize(static_cast<std::size_t>(s.p.batch * s.p.heads_q));
    parallel_for(static_cast<std::int64_t>(keys_.size()), [&](std::int64_t h) { prepare_keys(h); });
    check_block_range("K", keys_);
    parallel_for(static_cast<std::int64_t>(queries_.size()), [&](std::int64_t h) { prepare_queries(h); });
    check_block_range("Q", queries_);
  }

  void tile_logits(std::int64_t bhq, std::int64_t r0, std::int64_t rows, std::int64_t kt, float* s2) const override {
    const QueryHead& qh = queries_[static_cast<std::size_t>(bhq)];
    const KeyHead& kh = keys_[static_cast<std::size_t>(s_.kv_head_of(bhq))];
    const std::int64_t dim = s_.dim(), cta_k = s_.geo.cta_k;
    const float* kt_block = kh.transposed.data() + kt * dim * cta_k;  // [dim][cta_k]

    std::vector<float> delta2;
    if (!qh.block_mean.empty()) delta2 = smooth_q_delta(qh, kt_block, r0 / s_.geo.cta_q);

    std::vector<float> acc(static_cast<std::size_t>(cta_k)), part(static_cast<std::size_t>(cta_k));
    for (std::int64_t r = 0; r < rows; ++r) {
      const float* qr = qh.values.data() + (r0 + r) * dim;
      std::fill(acc.begin(), acc.end(), 0.0f);
      for (std::int64_t b = 0; b < dim; b += kBlock) {
        std::fill(part.begin(), part.end(), 0.0f);
        for (std::int64_t i = b; i < b + kBlock; ++i) {
          const float qd = qr[i];
          const float* kd = kt_block + i * cta_k;
          for (std::int64_t t = 0; t < cta_k; ++t) part[t] += qd * kd[t];
        }
        for (std::int64_t t = 0; t < cta_k; ++t) acc[t] += part[t];
      }
      float* out = s2 + r * cta_k;
      for (std::int64_t t = 0; t < cta_k; ++t) out[t] = acc[t] * s_.scale_log2;
      if (!delta2.empty())
        for (std::int64_t t = 0; t < cta_k; ++t) out[t] = out[t] + delta2[t];
    }
  }

  float lse_correction(std::int64_t bhq, std::int64_t r) const override {
    return queries_[static_cast<std::size_t>(bhq)].lse_corr[r];
  }

 private:
  struct KeyHead {
    std::vector<float> transposed;  // [k_tiles][dim][cta_k] dequantized K', 0 past nk
    std::vector<float> mean;
    float largest_block_max = 0.0f;  // of K' (check_block_range)
  };
  struct QueryHead {
    std::vector<float> values;      // [nq][dim] dequantized Q'
    std::vector<float> block_mean;  // smooth_q: [q_tiles][dim]
    std::vector<float> lse_corr;    // [nq]
    float largest_block_max = 0.0f;  // of Q'
  };

  void prepare_keys(std::int64_t bhkv) {
    const std::int64_t dim = s_.dim(), cta_k = s_.geo.cta_k;
    Smoothed sk = smooth_keys(s_, bhkv);
    KeyHead& kh = keys_[static_cast<std::size_t>(bhkv)];
    const std::vector<float> k = nvfp4_rows(sk.values, s_.p.nk, dim, &kh.largest_block_max);
    kh.transposed.assign(static_cast<std::size_t>(s_.k_tiles * dim * cta_k), 0.0f);
    for (std::int64_t j = 0; j < s_.p.nk; ++j) {
      float* tile = kh.transposed.data() + (j / cta_k) * dim * cta_k;
      for (std::int64_t d = 0; d < dim; ++d) tile[d * cta_k + j % cta_k] = k[j * dim + d];
    }
    kh.mean = std::move(sk.mean);
  }

  void prepare_queries(std::int64_t bhq) {
    SmoothedQueries sq = smooth_queries(s_, bhq);
    QueryHead& qh = queries_[static_cast<std::size_t>(bhq)];
    qh.values = nvfp4_rows(sq.values, s_.p.nq, s_.dim(), &qh.largest_block_max);
    qh.block_mean = std::move(sq.block_mean);
    qh.lse_corr = lse_corrections(s_, bhq, keys_[static_cast<std::size_t>(s_.kv_head_of(bhq))].mean);
  }

  std::vector<float> smooth_q_delta(const QueryHead& qh, const float* kt_block, std::int64_t q_tile) const {
    const std::int64_t dim = s_.dim(), cta_k = s_.geo.cta_k;
    const float* mq = qh.block_mean.data() + q_tile * dim;
    std::vector<float> delta(static_cast<std::size_t>(cta_k), 0.0f);
    for (std::int64_t d = 0; d < dim; ++d)
      for (std::int64_t t = 0; t < cta_k; ++t) delta[t] += mq[d] * kt_block[d * cta_k + t];
    for (float& x : delta) x = x * s_.scale_log2;
    return delta;
  }

  const Setup& s_;
  std::vector<KeyHead> keys_;
  std::vector<QueryHead> queries_;
};

class Nvfp4Values final : public ValueStage {
 public:
  explicit Nvfp4Values(const Setup& s) : s_(s) {
    check_nvfp4_shapes(s);
    heads_.resize(static_cast<std::size_t>(s.p.batch * s.p.heads_kv));
    parallel_for(static_cast<std::int64_t>(heads_.size()), [&](std::int64_t h) { prepare(h); });
    check_block_range("V", heads_);
  }

  void accumulate(std::int64_t bhkv, std::int64_t kt, const float* p, std::int64_t rows, float* o) const override {
    const Head& h = heads_[static_cast<std::size_t>(bhkv)];
    const std::int64_t dim = s_.dim(), cta_k = s_.geo.cta_k;
    const float* v = h.values.data() + kt * cta_k * dim;  // [cta_k][dim], 0 past nk
    std::vector<float> x(static_cast<std::size_t>(cta_k)), pq(static_cast<std::size_t>(cta_k));
    std::vector<float> tile(static_cast<std::size_t>(dim)), part(static_cast<std::size_t>(dim));
    for (std::int64_t r = 0; r < rows; ++r) {
      const float* pr = p + r * cta_k;
      const float pmax = *std::max_element(pr, pr + cta_k);
      const float s1 = pmax / (448.0f * 6.0f);
      if (s1 == 0.0f) {
        std::fill(pq.begin(), pq.end(), 0.0f);
      } else {
        const float inv_s1 = 1.0f / s1;
        for (std::int64_t t = 0; t < cta_k; ++t) x[t] = pr[t] * inv_s1;
        for (std::int64_t b = 0; b < cta_k; b += kBlock) nvfp4_block(x.data() + b, kBlock, 1, pq.data() + b);
      }

      std::fill(tile.begin(), tile.end(), 0.0f);
      for (std::int64_t b = 0; b < cta_k; b += kBlock) {
        std::fill(part.begin(), part.end(), 0.0f);
        for (std::int64_t t = b; t < b + kBlock; ++t) {
          const float pt = pq[t];
          const float* vt = v + t * dim;
          for (std::int64_t d = 0; d < dim; ++d) part[d] += pt * vt[d];
        }
        for (std::int64_t d = 0; d < dim; ++d) tile[d] += part[d];
      }
      float* orow = o + r * dim;
      for (std::int64_t d = 0; d < dim; ++d) orow[d] += tile[d] * s1;
    }
  }

  void finish_row(std::int64_t bhkv, const float* o, float inv_l, float* out) const override {
    const Head& h = heads_[static_cast<std::size_t>(bhkv)];
    for (std::int64_t d = 0; d < s_.dim(); ++d) out[d] = o[d] * inv_l + h.mean[d];
  }

 private:
  struct Head {
    std::vector<float> values;  // [k_tiles * cta_k][dim] dequantized V', 0 past nk
    std::vector<float> mean;    // smooth_v mean (zeros without)
    float largest_block_max = 0.0f;  // of V'
  };

  void prepare(std::int64_t bhkv) {
    const std::int64_t dim = s_.dim(), nk = s_.p.nk, padded = s_.k_tiles * s_.geo.cta_k;
    Smoothed sv = smooth_values(s_, bhkv);
    Head& h = heads_[static_cast<std::size_t>(bhkv)];
    std::vector<float> padded_v(static_cast<std::size_t>(padded * dim), 0.0f);
    std::copy(sv.values.begin(), sv.values.end(), padded_v.begin());
    h.values.assign(padded_v.size(), 0.0f);
    // Blocks of 16 consecutive keys per channel (the stride walks the keys).
    for (std::int64_t j = 0; j < nk; j += kBlock)
      for (std::int64_t d = 0; d < dim; ++d)
        h.largest_block_max = std::max(
            h.largest_block_max,
            nvfp4_input_block(padded_v.data() + j * dim + d, kBlock, dim, h.values.data() + j * dim + d));
    h.mean = std::move(sv.mean);
  }

  const Setup& s_;
  std::vector<Head> heads_;
};

}  // namespace

std::unique_ptr<ScoreStage> make_nvfp4_scores(const Setup& s) { return std::make_unique<Nvfp4Scores>(s); }
std::unique_ptr<ValueStage> make_nvfp4_values(const Setup& s) { return std::make_unique<Nvfp4Values>(s); }

}  // namespace sage::ref::detail
