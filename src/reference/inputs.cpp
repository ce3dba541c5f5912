// Synthetic attention inputs, deterministic for a seed on every platform:
// the random numbers come from our own splitmix64 generator and Box-Muller
// transform (the standard library's distributions differ between
// implementations).
//
// Layout is BHND; q is [batch, heads_q, nq, D], k and v [batch, heads_kv, nk, D].
// Each tensor draws from its own stream (seed mixed with a tensor tag), so
// changing nk does not change q.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <string>

#include "numerics/formats.h"
#include "reference/reference.h"

namespace sage::ref {
namespace {

// splitmix64 (Steele, Lea, Flood 2014): a tiny, well-mixed 64-bit generator.
class Rng {
 public:
  explicit Rng(std::uint64_t seed) : state_(seed) {}

  std::uint64_t next_u64() {
    std::uint64_t z = (state_ += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  // Uniform in (0, 1): 53 random bits, never exactly 0 (log-safe).
  double uniform() { return (static_cast<double>(next_u64() >> 11) + 0.5) * 0x1.0p-53; }
  double uniform(double lo, double hi) { return lo + (hi - lo) * uniform(); }
  // Standard normal by Box-Muller (one value per call, for simplicity).
  double normal() {
    const double radius = std::sqrt(-2.0 * std::log(uniform()));
    return radius * std::cos(6.283185307179586 * uniform());
  }
  // Student-t with `dof` degrees of freedom: z / sqrt(chi2_dof / dof).
  double student_t(int dof) {
    double chi2 = 0.0;
    for (int i = 0; i < dof; ++i) {
      const double z = normal();
      chi2 += z * z;
    }
    return normal() / std::sqrt(chi2 / dof);
  }

 private:
  std::uint64_t state_;
};

enum class Tensor : std::uint64_t { q = 1, k = 2, v = 3, layout = 4 };

// Standard deviations of the per-channel offsets (add_channel_bias). Q's is
// smaller than K's: an offset b of Q adds b . k_j * sm_scale to the scores
// of its head's rows, which varies over the keys with standard deviation
// |b| * sm_scale ~ 2 (|b| ~ 2 sqrt(D) for Gaussian keys), where K's offset
// adds a constant per row, which the softmax ignores; at 5 the rows would
// be nearly one-hot, the `sharp` inputs again.
constexpr double kKvBias = 5.0, kQBias = 2.0;

Rng stream(std::uint64_t seed, Tensor which) {
  Rng mixer(seed ^ (static_cast<std::uint64_t>(which) * 0xD1B54A32D192ED03ull));
  return Rng(mixer.next_u64());
}

// Shape of one BHND tensor.
struct Shape {
  std::int64_t batch, heads, tokens, dim;
  // Throws std::length_error when the count overflows std::size_t (huge
  // sizes from the caller), where the product would wrap to a small one.
  std::size_t elems() const {
    std::size_t n = 1;
    for (const std::int64_t extent : {batch, heads, tokens, dim}) {
      if (__builtin_mul_overflow(n, static_cast<std::size_t>(extent), &n)) {
        throw std::length_error("make_inputs: tensor of " + std::to_string(batch) + "x" + std::to_string(heads) +
                                "x" + std::to_string(tokens) + "x" + std::to_string(dim) + " elements is too large");
      }
    }
    return n;
  }
  // Offset of (b, h, token 0, channel 0): less than elems(), so it cannot
  // overflow once the tensor is allocated.
  std::int64_t head_offset(std::int64_t b, std::int64_t h) const { return (b * heads + h) * tokens * dim; }
};

std::vector<float> gaussian(const Shape& s, Rng& rng) {
  std::vector<float> x(s.elems());
  for (float& e : x) e = static_cast<float>(rng.normal());
  return x;
}

std::vector<float> student_t(const Shape& s, Rng& rng) {
  std::vector<float> x(s.elems());
  for (float& e : x) e = static_cast<float>(rng.student_t(3));
  return x;
}

// Adds a per-(batch, head, channel) offset ~ N(0, sigma^2), shared by all
// tokens: the structured bias real Q, K and V activations show, which makes
// per-block INT8 scales wasteful and smoothing worthwhile.
void add_channel_bias(std::vector<float>& x, const Shape& s, double sigma, Rng& rng) {
  for (std::int64_t b = 0; b < s.batch; ++b)
    for (std::int64_t h = 0; h < s.heads; ++h) {
      float* head = x.data() + s.head_offset(b, h);
      for (std::int64_t d = 0; d < s.dim; ++d) {
        const float bias = static_cast<float>(sigma * rng.normal());
        for (std::int64_t t = 0; t < s.tokens; ++t) head[t * s.dim + d] += bias;
      }
    }
}

// Per (batch, kv head): about 4% of the channels (at least one) get a factor
// in [10, 50]; the same channels are scaled in K and in every q head of the
// GQA group, as outlier channels of real models line up in Q and K.
void scale_outlier_channels(std::vector<float>& q, const Shape& qs, std::vector<float>& k, const Shape& ks,
                            Rng& rng) {
  const std::int64_t group = qs.heads / ks.heads;
  const std::int64_t count = std::max<std::int64_t>(1, (ks.dim * 4 + 50) / 100);
  std::vector<float> factor(static_cast<std::size_t>(ks.dim));
  for (std::int64_t b = 0; b < ks.batch; ++b)
    for (std::int64_t hk = 0; hk < ks.heads; ++hk) {
      std::fill(factor.begin(), factor.end(), 1.0f);
      for (std::int64_t c = 0; c < count; ++c) {
        const std::int64_t channel = static_cast<std::int64_t>(rng.next_u64() % static_cast<std::uint64_t>(ks.dim));
        factor[static_cast<std::size_t>(channel)] = static_cast<float>(rng.uniform(10.0, 50.0));
      }
      auto apply = [&](std::vector<float>& x, const Shape& s, std::int64_t h) {
        float* head = x.data() + s.head_offset(b, h);
        for (std::int64_t t = 0; t < s.tokens; ++t)
          for (std::int64_t d = 0; d < s.dim; ++d) head[t * s.dim + d] *= factor[static_cast<std::size_t>(d)];
      };
      apply(k, ks, hk);
      for (std::int64_t hq = hk * group; hq < (hk + 1) * group; ++hq) apply(q, qs, hq);
    }
}

// Rounds every value to what a tensor of `dtype` holds.
void round_all(std::vector<float>& x, DType dtype) {
  switch (dtype) {
    case DType::f32: return;
    case DType::f16:
      for (float& e : x) e = num::round_to_f16(e);
      return;
    case DType::bf16:
      for (float& e : x) e = num::round_to_bf16(e);
      return;
    default: throw std::invalid_argument("make_inputs: round_to must be f32, f16 or bf16");
  }
}

}  // namespace

const char* distribution_name(Distribution d) {
  switch (d) {
    case Distribution::gaussian: return "gaussian";
    case Distribution::channel_bias: return "channel-bias";
    case Distribution::outlier_channels: return "outliers";
    case Distribution::heavy_tailed: return "heavy-tailed";
    case Distribution::sharp: return "sharp";
    case Distribution::qk_bias: return "qk-bias";
  }
  return "unknown";
}

bool parse_distribution(const std::string& name, Distribution* out) {
  for (Distribution d : all_distributions()) {
    if (name == distribution_name(d)) {
      if (out) *out = d;
      return true;
    }
  }
  return false;
}

std::vector<Distribution> all_distributions() {
  return {Distribution::gaussian, Distribution::channel_bias, Distribution::outlier_channels,
          Distribution::heavy_tailed, Distribution::sharp, Distribution::qk_bias};
}

Inputs make_inputs(const Problem& p, Distribution d, std::uint64_t seed, DType round_to) {
  if (p.batch <= 0 || p.heads_q <= 0 || p.heads_kv <= 0 || p.nq < 0 || p.nk < 0 || p.head_dim <= 0 ||
      p.heads_q % p.heads_kv != 0)
    throw std::invalid_argument("make_inputs: invalid problem sizes");
  const Shape qs{p.batch, p.heads_q, p.nq, p.head_dim};
  const Shape ks{p.batch, p.heads_kv, p.nk, p.head_dim};
  Rng rq = stream(seed, Tensor::q), rk = stream(seed, Tensor::k), rv = stream(seed, Tensor::v);
  Rng rlayout = stream(seed, Tensor::layout);

  Inputs in;
  const bool heavy = d == Distribution::heavy_tailed;
  in.q = heavy ? student_t(qs, rq) : gaussian(qs, rq);
  in.k = heavy ? student_t(ks, rk) : gaussian(ks, rk);
  in.v = heavy ? student_t(ks, rv) : gaussian(ks, rv);

  switch (d) {
    case Distribution::gaussian:
    case Distribution::heavy_tailed: break;
    case Distribution::channel_bias:
      add_channel_bias(in.k, ks, kKvBias, rlayout);
      add_channel_bias(in.v, ks, kKvBias, rlayout);
      break;
    case Distribution::qk_bias:
      // V plain, so that V's offsets do not dominate every output row (as
      // in channel-bias) and the relative errors show what Q K^T loses.
      add_channel_bias(in.q, qs, kQBias, rlayout);
      add_channel_bias(in.k, ks, kKvBias, rlayout);
      break;
    case Distribution::outlier_channels: scale_outlier_channels(in.q, qs, in.k, ks, rlayout); break;
    case Distribution::sharp: {
      // Scores q.k * sm_scale of unit Gaussians have standard deviation
      // sm_scale * sqrt(D); scaling Q to make it 8 puts the top score of a row
      // several units above the next ones: near one-hot rows.
      const double scale = p.sm_scale > 0 ? p.sm_scale : 1.0 / std::sqrt(static_cast<double>(p.head_dim));
      const float factor = static_cast<float>(8.0 / (scale * std::sqrt(static_cast<double>(p.head_dim))));
      for (float& e : in.q) e *= factor;
      break;
    }
  }
  round_all(in.q, round_to);
  round_all(in.k, round_to);
  round_all(in.v, round_to);
  return in;
}

}  // namespace sage::ref
