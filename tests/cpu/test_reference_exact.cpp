// Tests of the CPU reference's building blocks: exact float64 attention
// against a naive formula written here, softmax invariances, the metrics on
// hand-computed vectors, the synthetic input distributions and parallel_for.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "numerics/formats.h"
#include "reference/parallel.h"
#include "reference/reference.h"

namespace sage::ref {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

// The textbook formula, one (batch, q head, row) at a time, with no blocking:
// S_j = q . k_j * scale over the visible keys, P = softmax(S), out = P V,
// lse = log(sum_j exp(S_j)).
void naive_attention(const Problem& p, const std::vector<double>& q, const std::vector<double>& k,
                     const std::vector<double>& v, std::vector<double>& out, std::vector<double>& lse) {
  const std::int64_t D = p.head_dim, group = p.heads_q / p.heads_kv;
  out.assign(static_cast<std::size_t>(p.q_elems()), 0.0);
  lse.assign(static_cast<std::size_t>(p.lse_elems()), 0.0);
  for (std::int64_t b = 0; b < p.batch; ++b)
    for (std::int64_t h = 0; h < p.heads_q; ++h) {
      const std::int64_t hk = h / group;
      for (std::int64_t i = 0; i < p.nq; ++i) {
        const double* qi = &q[((b * p.heads_q + h) * p.nq + i) * D];
        std::vector<double> s;
        std::vector<std::int64_t> keys;
        for (std::int64_t j = 0; j < p.nk; ++j) {
          if (!p.visible(i, j)) continue;
          const double* kj = &k[((b * p.heads_kv + hk) * p.nk + j) * D];
          double dot = 0;
          for (std::int64_t d = 0; d < D; ++d) dot += qi[d] * kj[d];
          s.push_back(dot * p.sm_scale);
          keys.push_back(j);
        }
        const std::int64_t row = (b * p.heads_q + h) * p.nq + i;
        if (s.empty()) {
          lse[row] = -kInf;
          continue;
        }
        double m = -kInf;
        for (double x : s) m = std::max(m, x);
        double l = 0;
        for (double x : s) l += std::exp(x - m);
        lse[row] = m + std::log(l);
        for (std::size_t t = 0; t < s.size(); ++t) {
          const double w = std::exp(s[t] - m) / l;
          const double* vj = &v[((b * p.heads_kv + hk) * p.nk + keys[t]) * D];
          for (std::int64_t d = 0; d < D; ++d) out[row * D + d] += w * vj[d];
        }
      }
    }
}

std::vector<double> random_tensor(std::int64_t n, std::mt19937_64& rng, double scale = 1.0) {
  std::normal_distribution<double> normal(0.0, scale);
  std::vector<double> x(static_cast<std::size_t>(n));
  for (double& e : x) e = normal(rng);
  return x;
}

struct ExactCase {
  const char* name;
  std::int64_t batch, heads_q, heads_kv, nq, nk, dim;
  bool causal;
  CausalAlign align;
};

Problem problem_of(const ExactCase& c) {
  Problem p;
  p.batch = c.batch;
  p.heads_q = c.heads_q;
  p.heads_kv = c.heads_kv;
  p.nq = c.nq;
  p.nk = c.nk;
  p.head_dim = c.dim;
  p.causal = c.causal;
  p.align = c.align;
  p.sm_scale = 1.0 / std::sqrt(static_cast<double>(c.dim));
  return p;
}

void expect_lse_equal(double expected, double actual, double tol) {
  if (std::isinf(expected)) {
    EXPECT_EQ(expected, actual);
  } else {
    EXPECT_NEAR(expected, actual, tol);
  }
}

class ReferenceExact : public ::testing::TestWithParam<ExactCase> {};

TEST_P(ReferenceExact, MatchesNaiveFormula) {
  const ExactCase& c = GetParam();
  const Problem p = problem_of(c);
  std::mt19937_64 rng(1234 + c.nq * 7 + c.nk);
  const auto q = random_tensor(p.q_elems(), rng, 1.5), k = random_tensor(p.kv_elems(), rng),
             v = random_tensor(p.kv_elems(), rng);
  std::vector<double> want_out, want_lse;
  naive_attention(p, q, k, v, want_out, want_lse);
  std::vector<double> out(static_cast<std::size_t>(p.q_elems()), 123.0), lse(static_cast<std::size_t>(p.lse_elems()));
  exact_attention(p, q.data(), k.data(), v.data(), out.data(), lse.data());
  for (std::size_t i = 0; i < out.size(); ++i) ASSERT_NEAR(want_out[i], out[i], 1e-12) << "element " << i;
  for (std::size_t i = 0; i < lse.size(); ++i) expect_lse_equal(want_lse[i], lse[i], 1e-12);

  // lse is optional.
  std::vector<double> out2(out.size());
  exact_attention(p, q.data(), k.data(), v.data(), out2.data(), nullptr);
  EXPECT_EQ(out, out2);
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, ReferenceExact,
    ::testing::Values(ExactCase{"single", 1, 1, 1, 1, 1, 8, false, CausalAlign::top_left},
                      ExactCase{"dim1", 1, 1, 1, 5, 7, 1, false, CausalAlign::top_left},
                      ExactCase{"gqa", 2, 4, 2, 17, 33, 16, false, CausalAlign::top_left},
                      ExactCase{"mqa_causal_tl", 1, 3, 1, 40, 40, 12, true, CausalAlign::top_left},
                      ExactCase{"causal_br_square", 1, 2, 2, 37, 37, 8, true, CausalAlign::bottom_right},
                      ExactCase{"nq_gt_nk_tl", 1, 2, 1, 70, 20, 8, true, CausalAlign::top_left},
                      ExactCase{"nq_gt_nk_br", 2, 2, 1, 70, 20, 8, true, CausalAlign::bottom_right},
                      ExactCase{"nq_lt_nk_tl", 1, 2, 2, 9, 130, 24, true, CausalAlign::top_left},
                      ExactCase{"nq_lt_nk_br", 1, 2, 2, 9, 130, 24, true, CausalAlign::bottom_right},
                      ExactCase{"blocks_cross", 1, 1, 1, 67, 129, 130, false, CausalAlign::top_left}),
    [](const ::testing::TestParamInfo<ExactCase>& info) { return std::string(info.param.name); });

TEST(ReferenceExactMasking, FullyMaskedRowsAreZeroWithMinusInfLse) {
  // Bottom-right alignment with nq > nk: rows i < nq - nk see no key.
  Problem p = problem_of({"", 1, 1, 1, 10, 4, 8, true, CausalAlign::bottom_right});
  std::mt19937_64 rng(7);
  const auto q = random_tensor(p.q_elems(), rng), k = random_tensor(p.kv_elems(), rng),
             v = random_tensor(p.kv_elems(), rng);
  std::vector<double> out(static_cast<std::size_t>(p.q_elems()), 99.0), lse(static_cast<std::size_t>(p.lse_elems()));
  exact_attention(p, q.data(), k.data(), v.data(), out.data(), lse.data());
  for (std::int64_t i = 0; i < p.nq; ++i) {
    const bool masked = i < p.nq - p.nk;
    EXPECT_EQ(masked, std::isinf(lse[i])) << "row " << i;
    for (std::int64_t d = 0; d < p.head_dim; ++d) {
      if (masked) {
        EXPECT_EQ(0.0, out[i * p.head_dim + d]);
      }
      EXPECT_TRUE(std::isfinite(out[i * p.head_dim + d]));
    }
  }
  // The last row sees every key: bottom-right puts the diagonal there.
  EXPECT_TRUE(std::isfinite(lse[p.nq - 1]));

  // No keys at all: every row is masked.
  p.nk = 0;
  exact_attention(p, q.data(), k.data(), v.data(), out.data(), lse.data());
  for (std::int64_t i = 0; i < p.nq; ++i) EXPECT_EQ(-kInf, lse[i]);
  for (std::int64_t i = 0; i < p.q_elems(); ++i) EXPECT_EQ(0.0, out[i]);
}

// Softmax is invariant to a per-row shift of the scores: adding a vector c to
// every key changes row i's scores by q_i . c, so out is unchanged and lse
// moves by q_i . c * scale. Adding c to every value row moves out by c
// (each row of P sums to 1). Scaling V scales out.
TEST(ReferenceExactInvariance, KeyShiftValueShiftAndScale) {
  Problem p = problem_of({"", 1, 2, 1, 33, 45, 16, false, CausalAlign::top_left});
  std::mt19937_64 rng(11);
  const auto q = random_tensor(p.q_elems(), rng), k = random_tensor(p.kv_elems(), rng),
             v = random_tensor(p.kv_elems(), rng), c = random_tensor(p.head_dim, rng, 3.0);
  std::vector<double> out(static_cast<std::size_t>(p.q_elems())), lse(static_cast<std::size_t>(p.lse_elems()));
  exact_attention(p, q.data(), k.data(), v.data(), out.data(), lse.data());

  std::vector<double> k_shift = k, v_shift = v, v_scaled = v;
  for (std::int64_t j = 0; j < p.nk; ++j)
    for (std::int64_t d = 0; d < p.head_dim; ++d) {
      k_shift[j * p.head_dim + d] += c[d];
      v_shift[j * p.head_dim + d] += c[d];
      v_scaled[j * p.head_dim + d] *= -2.5;
    }
  std::vector<double> out2(out.size()), lse2(lse.size());
  exact_attention(p, q.data(), k_shift.data(), v.data(), out2.data(), lse2.data());
  for (std::size_t i = 0; i < out.size(); ++i) EXPECT_NEAR(out[i], out2[i], 1e-12);
  for (std::int64_t row = 0; row < p.heads_q * p.nq; ++row) {
    double qc = 0;
    for (std::int64_t d = 0; d < p.head_dim; ++d) qc += q[row * p.head_dim + d] * c[d];
    EXPECT_NEAR(lse[row] + qc * p.sm_scale, lse2[row], 1e-11);
  }

  exact_attention(p, q.data(), k.data(), v_shift.data(), out2.data(), lse2.data());
  for (std::size_t i = 0; i < out.size(); ++i) EXPECT_NEAR(out[i] + c[i % p.head_dim], out2[i], 1e-12);
  EXPECT_EQ(lse, lse2);

  exact_attention(p, q.data(), k.data(), v_scaled.data(), out2.data(), nullptr);
  for (std::size_t i = 0; i < out.size(); ++i) EXPECT_NEAR(out[i] * -2.5, out2[i], 1e-12);
}

TEST(ReferenceExactInvariance, SingleVisibleKeyCopiesItsValue) {
  // Top-left causal: row 0 sees only key 0, so out[0] = v[0] and lse = s_00.
  Problem p = problem_of({"", 1, 1, 1, 5, 5, 4, true, CausalAlign::top_left});
  std::mt19937_64 rng(3);
  const auto q = random_tensor(p.q_elems(), rng), k = random_tensor(p.kv_elems(), rng),
             v = random_tensor(p.kv_elems(), rng);
  std::vector<double> out(static_cast<std::size_t>(p.q_elems())), lse(static_cast<std::size_t>(p.lse_elems()));
  exact_attention(p, q.data(), k.data(), v.data(), out.data(), lse.data());
  double s00 = 0;
  for (int d = 0; d < 4; ++d) {
    EXPECT_DOUBLE_EQ(v[d], out[d]);
    s00 += q[d] * k[d];
  }
  EXPECT_NEAR(s00 * p.sm_scale, lse[0], 1e-14);
}

TEST(ReferenceExact, RejectsBadProblems) {
  std::vector<double> x(64);
  Problem p = problem_of({"", 1, 3, 2, 2, 2, 4, false, CausalAlign::top_left});  // 3 % 2 != 0
  EXPECT_THROW(exact_attention(p, x.data(), x.data(), x.data(), x.data(), nullptr), std::invalid_argument);
  p = problem_of({"", 1, 1, 1, 2, 2, 4, false, CausalAlign::top_left});
  p.sm_scale = 0;
  EXPECT_THROW(exact_attention(p, x.data(), x.data(), x.data(), x.data(), nullptr), std::invalid_argument);
}

// ---- metrics ----

TEST(ReferenceMetrics, KnownVectors) {
  // ref rows (1, 0), (0, 2); test rows (1, 0), (1, 1).
  const double ref[] = {1, 0, 0, 2};
  const float test[] = {1, 0, 1, 1};
  const Metrics m = compare(ref, test, 2, 2);
  // dot = 1 + 2 = 3, |ref| = sqrt(5), |test| = sqrt(3).
  EXPECT_NEAR(3.0 / std::sqrt(15.0), m.cos_sim, 1e-15);
  EXPECT_NEAR(2.0 / 3.0, m.rel_l1, 1e-15);           // (0 + 0 + 1 + 1) / 3
  EXPECT_NEAR(std::sqrt(2.0 / 4.0), m.rmse, 1e-15);  // (1 + 1) / 4
  EXPECT_NEAR(1.0 / std::sqrt(2.0), m.worst_row_cos_sim, 1e-15);
  EXPECT_DOUBLE_EQ(1.0, m.max_abs_err);
  EXPECT_EQ(0, m.nonfinite);

  const Metrics same = compare(ref, std::vector<float>{1, 0, 0, 2}.data(), 2, 2);
  EXPECT_DOUBLE_EQ(1.0, same.cos_sim);
  EXPECT_DOUBLE_EQ(0.0, same.rel_l1);
  EXPECT_DOUBLE_EQ(0.0, same.rmse);
  EXPECT_DOUBLE_EQ(1.0, same.worst_row_cos_sim);
}

TEST(ReferenceMetrics, ZeroRowsAndZeroReference) {
  // A row that is zero in both (a fully masked row) counts as identical.
  const double ref[] = {0, 0, 1, 1};
  const Metrics m = compare(ref, std::vector<float>{0, 0, 1, 1}.data(), 2, 2);
  EXPECT_DOUBLE_EQ(1.0, m.worst_row_cos_sim);
  const Metrics off = compare(ref, std::vector<float>{0, 1, 1, 1}.data(), 2, 2);
  EXPECT_DOUBLE_EQ(0.0, off.worst_row_cos_sim);
  const double zeros[] = {0, 0};
  EXPECT_TRUE(std::isinf(compare(zeros, std::vector<float>{1, 0}.data(), 1, 2).rel_l1));
}

TEST(ReferenceMetrics, NonFiniteReferenceNeverPasses) {
  const double ref[] = {1, std::numeric_limits<double>::quiet_NaN(), 3, 4};
  const Metrics m = compare(ref, std::vector<float>{1, 2, 3, 4}.data(), 2, 2);
  EXPECT_EQ(0, m.nonfinite);  // counts the test's values only
  EXPECT_FALSE(m.cos_sim >= 0.0);
  EXPECT_FALSE(m.rel_l1 <= 1e30);
  EXPECT_FALSE(m.worst_row_cos_sim >= 0.0);
}

TEST(ReferenceMetrics, NaNNeverPasses) {
  const double ref[] = {1, 2, 3, 4};
  for (float bad : {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity(),
                    -std::numeric_limits<float>::infinity()}) {
    const float test[] = {1, 2, bad, 4};
    const Metrics m = compare(ref, test, 2, 2);
    EXPECT_EQ(1, m.nonfinite);
    EXPECT_FALSE(m.cos_sim >= 0.0);
    EXPECT_FALSE(m.worst_row_cos_sim >= 0.0);
    EXPECT_FALSE(m.rel_l1 <= 1e30);
    EXPECT_FALSE(m.rmse <= 1e30);
    EXPECT_FALSE(m.max_abs_err <= 1e30);
  }
}

// ---- inputs ----

Problem inputs_problem() {
  Problem p;
  p.batch = 2;
  p.heads_q = 4;
  p.heads_kv = 2;
  p.nq = 96;
  p.nk = 80;
  p.head_dim = 64;
  p.sm_scale = 0.125;
  return p;
}

double channel_mean_spread(const std::vector<float>& x, std::int64_t tokens, std::int64_t dim) {
  // Standard deviation over channels of the per-channel mean (first head).
  double sum2 = 0;
  for (std::int64_t d = 0; d < dim; ++d) {
    double mean = 0;
    for (std::int64_t t = 0; t < tokens; ++t) mean += x[t * dim + d];
    mean /= static_cast<double>(tokens);
    sum2 += mean * mean;
  }
  return std::sqrt(sum2 / static_cast<double>(dim));
}

TEST(ReferenceInputs, NamesRoundTrip) {
  EXPECT_EQ(6u, all_distributions().size());
  for (Distribution d : all_distributions()) {
    Distribution parsed{};
    ASSERT_TRUE(parse_distribution(distribution_name(d), &parsed)) << distribution_name(d);
    EXPECT_EQ(d, parsed);
  }
  EXPECT_FALSE(parse_distribution("uniform", nullptr));
  Distribution d{};
  EXPECT_TRUE(parse_distribution("channel-bias", &d));
  EXPECT_EQ(Distribution::channel_bias, d);
}

TEST(ReferenceInputs, DeterministicShapedAndRounded) {
  const Problem p = inputs_problem();
  for (Distribution d : all_distributions()) {
    SCOPED_TRACE(distribution_name(d));
    const Inputs a = make_inputs(p, d, 42), b = make_inputs(p, d, 42), c = make_inputs(p, d, 43);
    ASSERT_EQ(static_cast<std::size_t>(p.q_elems()), a.q.size());
    ASSERT_EQ(static_cast<std::size_t>(p.kv_elems()), a.k.size());
    ASSERT_EQ(static_cast<std::size_t>(p.kv_elems()), a.v.size());
    EXPECT_EQ(a.q, b.q);
    EXPECT_EQ(a.k, b.k);
    EXPECT_EQ(a.v, b.v);
    EXPECT_NE(a.q, c.q);
    for (const auto* t : {&a.q, &a.k, &a.v})
      for (float x : *t) {
        ASSERT_TRUE(std::isfinite(x));
        ASSERT_EQ(x, num::round_to_bf16(x));
      }
    const Inputs h = make_inputs(p, d, 42, DType::f16);
    for (float x : h.k) ASSERT_EQ(x, num::round_to_f16(x));
  }
  EXPECT_THROW(make_inputs(p, Distribution::gaussian, 1, DType::i8), std::invalid_argument);
}

TEST(ReferenceInputs, DistributionsHaveTheirShape) {
  const Problem p = inputs_problem();
  const Inputs g = make_inputs(p, Distribution::gaussian, 5, DType::f32);
  const Inputs cb = make_inputs(p, Distribution::channel_bias, 5, DType::f32);
  // Channel bias: per-channel means of K and V are ~N(0, 25), not ~N(0, 1/nk).
  EXPECT_LT(channel_mean_spread(g.k, p.nk, p.head_dim), 0.5);
  EXPECT_GT(channel_mean_spread(cb.k, p.nk, p.head_dim), 2.5);
  EXPECT_GT(channel_mean_spread(cb.v, p.nk, p.head_dim), 2.5);
  EXPECT_LT(channel_mean_spread(cb.q, p.nq, p.head_dim), 0.5);
  // Q and K bias: Q's channel means ~N(0, 4), K's ~N(0, 25), V's ~N(0, 1/nk).
  const Inputs qk = make_inputs(p, Distribution::qk_bias, 5, DType::f32);
  EXPECT_GT(channel_mean_spread(qk.q, p.nq, p.head_dim), 1.0);
  EXPECT_LT(channel_mean_spread(qk.q, p.nq, p.head_dim), 3.5);
  EXPECT_GT(channel_mean_spread(qk.k, p.nk, p.head_dim), 2.5);
  EXPECT_LT(channel_mean_spread(qk.v, p.nk, p.head_dim), 0.5);

  // Outliers: some channels of Q and K are >= 10x larger than the rest.
  const Inputs o = make_inputs(p, Distribution::outlier_channels, 5, DType::f32);
  auto channel_rms = [&](const std::vector<float>& x, std::int64_t tokens, std::int64_t d) {
    double s = 0;
    for (std::int64_t t = 0; t < tokens; ++t) s += double(x[t * p.head_dim + d]) * x[t * p.head_dim + d];
    return std::sqrt(s / static_cast<double>(tokens));
  };
  int big_k = 0, big_q = 0;
  for (std::int64_t d = 0; d < p.head_dim; ++d) {
    big_k += channel_rms(o.k, p.nk, d) > 5.0;
    big_q += channel_rms(o.q, p.nq, d) > 5.0;
  }
  EXPECT_GE(big_k, 1);
  EXPECT_LE(big_k, 6);
  EXPECT_EQ(big_k, big_q);  // the same channels in Q and K

  // Heavy tails: far more |x| > 5 than a Gaussian (~6e-7) would give.
  const Inputs h = make_inputs(p, Distribution::heavy_tailed, 5, DType::f32);
  std::int64_t tail = 0;
  for (float x : h.v) tail += std::fabs(x) > 5.0f;
  EXPECT_GT(tail, p.kv_elems() / 200);

  // Sharp: the largest attention weight of a row is most of the row.
  const Inputs s = make_inputs(p, Distribution::sharp, 5, DType::f32);
  double top_sum = 0;
  for (std::int64_t i = 0; i < p.nq; ++i) {
    std::vector<double> sc(static_cast<std::size_t>(p.nk));
    for (std::int64_t j = 0; j < p.nk; ++j) {
      double dot = 0;
      for (std::int64_t d = 0; d < p.head_dim; ++d) dot += double(s.q[i * p.head_dim + d]) * s.k[j * p.head_dim + d];
      sc[j] = dot * p.sm_scale;
    }
    const double m = *std::max_element(sc.begin(), sc.end());
    double l = 0;
    for (double x : sc) l += std::exp(x - m);
    top_sum += 1.0 / l;
  }
  EXPECT_GT(top_sum / static_cast<double>(p.nq), 0.5);
}

// ---- parallel_for ----

TEST(ReferenceParallel, VisitsEveryIndexOnceAndRethrows) {
  std::vector<std::atomic<int>> hits(1000);
  parallel_for(1000, [&](std::int64_t i) { hits[i].fetch_add(1); });
  for (auto& h : hits) EXPECT_EQ(1, h.load());
  parallel_for(0, [](std::int64_t) { FAIL(); });
  EXPECT_THROW(parallel_for(100, [](std::int64_t i) {
                 if (i == 37) throw std::runtime_error("boom");
               }),
               std::runtime_error);
  // Nested calls run inline and still visit everything.
  std::atomic<int> total{0};
  parallel_for(4, [&](std::int64_t) { parallel_for(5, [&](std::int64_t) { total.fetch_add(1); }); });
  EXPECT_EQ(20, total.load());
}

}  // namespace
}  // namespace sage::ref
