// The CPU emulation of each quantized pipeline against exact float64
// attention, with documented bounds, plus checks of the emulation's own
// structure: scale groups, smoothing, LSE correction, masking, determinism.
//
// Inputs are fresh for every run (seeded from std::random_device); each test
// prints its seed on failure. Rerun a failure with SAGE_TEST_SEED=<seed>.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <iterator>
#include <limits>
#include <map>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <tuple>
#include <vector>

#include "numerics/formats.h"
#include "reference/reference.h"
#include "nonfinite_inputs.h"
#include "test_seed.h"

namespace sage::ref {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

// ---- helpers -------------------------------------------------------------

using test::fresh_seed;
using test::seed_note;

Problem make_problem(std::int64_t nq, std::int64_t nk, std::int64_t dim, std::int64_t heads_q = 1,
                     std::int64_t heads_kv = 1, std::int64_t batch = 1, bool causal = false,
                     CausalAlign align = CausalAlign::top_left) {
  Problem p;
  p.batch = batch;
  p.heads_q = heads_q;
  p.heads_kv = heads_kv;
  p.nq = nq;
  p.nk = nk;
  p.head_dim = dim;
  p.causal = causal;
  p.align = align;
  p.sm_scale = 1.0 / std::sqrt(static_cast<double>(dim));
  return p;
}

// Inputs and their exact attention.
struct Case {
  Problem p;
  Inputs in;
  std::vector<double> out, lse;
};

std::vector<double> to_double(const std::vector<float>& x) { return std::vector<double>(x.begin(), x.end()); }

void compute_exact(Case& c) {
  c.out.assign(static_cast<std::size_t>(c.p.q_elems()), 0.0);
  c.lse.assign(static_cast<std::size_t>(c.p.lse_elems()), 0.0);
  const auto q = to_double(c.in.q), k = to_double(c.in.k), v = to_double(c.in.v);
  exact_attention(c.p, q.data(), k.data(), v.data(), c.out.data(), c.lse.data());
}

Case make_case(const Problem& p, Distribution d, std::uint64_t seed) {
  Case c{p, make_inputs(p, d, seed), {}, {}};
  compute_exact(c);
  return c;
}

struct Result {
  std::vector<float> out, lse;
  Metrics m;
  double lse_err = 0;  // max |lse - exact lse| over rows with a finite exact lse
};

Result run(const Case& c, const AttentionOptions& o, const TileGeometry& geo = kSm90Geometry) {
  Result r;
  r.out.assign(static_cast<std::size_t>(c.p.q_elems()), std::numeric_limits<float>::quiet_NaN());
  r.lse.assign(static_cast<std::size_t>(c.p.lse_elems()), std::numeric_limits<float>::quiet_NaN());
  emulate_attention(c.p, o, geo, c.in.q.data(), c.in.k.data(), c.in.v.data(), r.out.data(), r.lse.data());
  r.m = compare(c.out.data(), r.out.data(), c.p.batch * c.p.heads_q * c.p.nq, c.p.head_dim);
  for (std::size_t i = 0; i < r.lse.size(); ++i)
    if (std::isfinite(c.lse[i])) r.lse_err = std::max(r.lse_err, std::fabs(r.lse[i] - c.lse[i]));
  return r;
}

std::string describe(const Metrics& m) {
  std::ostringstream s;
  s << "cos " << m.cos_sim << " relL1 " << m.rel_l1 << " rmse " << m.rmse << " worst-row cos "
    << m.worst_row_cos_sim << " nonfinite " << m.nonfinite;
  return s.str();
}

// ---- the pipelines and their bounds ----------------------------------------
//
// Measured at B = H = 1, N = 1024, D = 128, non-causal, bf16 inputs, over 60
// seeds: mean cos-sim / worst cos-sim | mean relL1 / worst relL1. The bounds
// asserted (the "bound" lines, cos-sim >= | relL1 <=) sit below the worst
// seed with a margin; heavy-tailed and outlier inputs have fat tails from
// seed to seed (one extreme K or Q value sets a whole group's scale), so
// their margins are wider.
//
//                 gaussian                 channel-bias               outliers                 heavy-tailed             sharp
// sage2 int8/fp8  .99928/.99921|.0378/.0398  .999998/.999997|.0020/.0022  .9913/.9850|.048/.063  .9959/.9812|.070/.103  .99893/.99883|.0406/.0424
//   bound         .999 | .045              .99999 | .003               .975 | .080            .970 | .130            .998 | .050
// sage2 int8/e5m2 .99738/.99711|.0722/.0757  .999991/.999989|.0053/.0058  .9903/.9839|.069/.083  .9950/.9804|.085/.121  .99784/.99774|.0592/.0606
//   bound         .996 | .085              .99995 | .007               .975 | .100            .970 | .150            .9965 | .070
// sage2 int8/fp16 .99992/.99991|.0124/.0132  1.0000/1.0000|.00013/.00016  .9917/.9853|.027/.043  .9962/.9815|.059/.088  .99930/.99919|.0281/.0305
//   bound         .9998 | .016             .99999 | .0003              .975 | .060            .970 | .110            .9985 | .036
// sage2 int8/bf16 as fp16 (to 1e-5); same bounds
// sage2 int4/fp8  .97896/.97667|.205/.217    .999996/.999994|.0031/.0034  .785/.691|.342/.469    .821/.787|.498/.557    .8529/.8338|.437/.473
//  (per-thread, smooth q+k)
//   bound         .970 | .240              .99995 | .005               .600 | .550            .720 | .650            .800 | .520
// sage3 nvfp4     .98207/.98061|.188/.196    .99984/.99962|.0182/.0202    .884/.787|.256/.379    .9683/.9544|.225/.235  .9191/.9106|.334/.350
//  (smooth q+k)
//   bound         .975 | .220              .9990 | .024                .700 | .450            .940 | .270            .890 | .400
// sagebwd int8    .99977/.99974|.0213/.0225  1.0000/.999999|.00077/.00091  .9901/.9847|.040/.054  .9886/.9568|.142/.251  .99915/.99897|.0341/.0374
//   bound         .9995 | .026             .99999 | .0012              .975 | .070            .930 | .300            .998 | .043
//
// Why the numbers look like this: Gaussian inputs give nearly uniform
// attention, so O is an average of ~N random rows and small; the
// per-element P and V rounding noise (FP8 E4M3: ~3 % per element) does not
// average away relative to it. The "outliers" inputs scale 4 % of the
// channels of both Q and K by 10-50x, so scores reach hundreds: rows are
// near-argmax and a few of them flip (worst-row cos-sim is meaningless
// there, hence only whole-tensor bounds). INT4 and NVFP4 have 15 levels per
// group: the errors are an order of magnitude above INT8's.
struct Bounds {
  double min_cos, max_rel_l1;
};

struct Pipeline {
  const char* name;
  AttentionOptions options;
  Bounds bounds[6];  // in the order of all_distributions()
  double lse_tol;    // max |lse - exact| on gaussian and channel-bias inputs
  // The same on causal rows that see a handful of keys: there the LSE is
  // about the top score itself, whose rounding error does not average out
  // (measured up to ~0.042 for INT8, ~0.75 for INT4 and ~0.6 for NVFP4 over
  // 45 seeds).
  double lse_tol_short_rows;
};

AttentionOptions sage2(QKFormat qk, Granularity g, PVFormat pv) {
  AttentionOptions o;
  o.method = Method::sage2;
  o.qk_format = qk;
  o.qk_granularity = g;
  o.pv_format = pv;
  return o;
}

std::vector<Pipeline> pipelines() {
  AttentionOptions int4 = sage2(QKFormat::int4, Granularity::per_thread, PVFormat::fp8_e4m3);
  int4.smooth_q = true;
  AttentionOptions s3;
  s3.method = Method::sage3;
  s3.smooth_q = true;
  AttentionOptions bwd;
  bwd.method = Method::sagebwd;
  // Bounds per distribution (gaussian, channel bias, outliers, heavy-tailed, sharp, qk-bias): the
  // worst cos-sim and rel-L1 over 558 fresh seeds (N=1024, D=128; qk-bias: 300 seeds), with 50%
  // more room for 1 - cos and 25% for rel-L1 (qk-bias's INT4 and NVFP4, whose tails are long,
  // rounded out further), and never tighter than the first (8-seed) bounds.
  // LSE tolerances (EmulationLse: 512 x 384 keys, D=128, gaussian and channel-bias, smooth K on
  // and off): the largest over 300 fresh seeds was 0.016 for INT8 with FP8 E4M3, FP16 or BF16 P V,
  // 0.023 with E5M2 P (two mantissa bits: the row sums of its P are that coarse), 0.16 for INT4 and
  // 0.14 for NVFP4, so the bounds leave ~50% more (the first bounds, from 8 seeds, failed E5M2 and
  // NVFP4 runs now and then). INT4 without K smoothing has a long tail: 0.213 once in 2400 seeds,
  // so its bound is 0.3. A missing smoothing correction is off by several units. Short causal rows
  // (EmulationShapes, 300 seeds): largest 0.051 for INT8 (E5M2: 0.067), 0.70 for INT4, 0.72 for NVFP4.
  return {
      {"sage2-int8-fp8", AttentionOptions{},
       {{.9987, .051}, {.99999, .003}, {.97, .086}, {.952, .16}, {.998, .055}, {.9982, .061}}, 0.025, 0.08},
      {"sage2-int8-e5m2", sage2(QKFormat::int8, Granularity::per_warp, PVFormat::fp8_e5m2),
       {{.9952, .099}, {.99995, .0076}, {.969, .11}, {.951, .18}, {.9964, .078}, {.996, .09}}, 0.035, 0.1},
      {"sage2-int8-fp16", sage2(QKFormat::int8, Granularity::per_warp, PVFormat::fp16),
       {{.9998, .018}, {.99999, .0003}, {.971, .062}, {.952, .14}, {.9985, .04}, {.9988, .05}}, 0.025, 0.08},
      {"sage2-int8-bf16", sage2(QKFormat::int8, Granularity::per_warp, PVFormat::bf16),
       {{.9998, .018}, {.99999, .0003}, {.971, .062}, {.952, .14}, {.9985, .04}, {.9988, .05}}, 0.025, 0.08},
      {"sage2-int4-fp8", int4, {{.963, .28}, {.99995, .005}, {.52, .62}, {.63, .72}, {.73, .61}, {.84, .70}}, 0.3, 1.5},
      {"sage3-nvfp4", s3, {{.968, .26}, {.999, .028}, {.59, .58}, {.932, .31}, {.86, .46}, {.90, .50}}, 0.22, 1.2},
      {"sagebwd-int8", bwd,
       {{.9995, .029}, {.99999, .0013}, {.966, .079}, {.89, .39}, {.998, .047}, {.9986, .055}}, 0.025, 0.08},
  };
}

// ---- accuracy against exact attention ---------------------------------------

TEST(EmulationAccuracy, Sage2Int8Fp8GaussianMeetsIssueBound) {
  // Issue 2: INT8 + FP8 at N = 1024, D = 128, Gaussian inputs: cos-sim >= 0.999.
  const std::uint64_t seed = fresh_seed();
  SCOPED_TRACE(seed_note(seed));
  const Case c = make_case(make_problem(1024, 1024, 128), Distribution::gaussian, seed);
  const Result r = run(c, AttentionOptions{});
  EXPECT_GE(r.m.cos_sim, 0.999) << describe(r.m);
  EXPECT_EQ(0, r.m.nonfinite);
}

TEST(EmulationAccuracy, EveryPipelineWithinBoundsOnEveryDistribution) {
  const std::uint64_t seed = fresh_seed();
  SCOPED_TRACE(seed_note(seed));
  const Problem p = make_problem(1024, 1024, 128);
  const std::vector<Pipeline> all = pipelines();
  const std::vector<Distribution> dists = all_distributions();
  // A distribution added without its bounds would read past each pipeline's array.
  ASSERT_EQ(dists.size(), std::size(all.front().bounds)) << "bounds per pipeline vs all_distributions()";
  std::ostringstream table;
  table << "emulation vs exact, N=1024 D=128, " << seed_note(seed) << "\n";
  for (std::size_t di = 0; di < dists.size(); ++di) {
    const Case c = make_case(p, dists[di], seed + di);
    for (const Pipeline& pl : all) {
      SCOPED_TRACE(std::string(pl.name) + " on " + distribution_name(dists[di]));
      const Result r = run(c, pl.options);
      const Bounds& b = pl.bounds[di];
      EXPECT_GE(r.m.cos_sim, b.min_cos) << describe(r.m);
      EXPECT_LE(r.m.rel_l1, b.max_rel_l1) << describe(r.m);
      EXPECT_EQ(0, r.m.nonfinite);
      char line[200];
      std::snprintf(line, sizeof line, "  %-13s %-16s cos %.6f relL1 %.5f worst-row %.5f lse-err %.2e\n",
                    distribution_name(dists[di]), pl.name, r.m.cos_sim, r.m.rel_l1, r.m.worst_row_cos_sim,
                    r.lse_err);
      table << line;
    }
  }
  std::cout << table.str();
}

// The LSE of every pipeline matches the exact one: on channel-biased K the
// smooth_k correction (q . mean_k * sm_scale) is several units, so a missing
// or wrong correction would show at once.
TEST(EmulationLse, MatchesExactWithSmoothingCorrection) {
  const std::uint64_t seed = fresh_seed();
  SCOPED_TRACE(seed_note(seed));
  const Problem p = make_problem(512, 384, 128);
  for (Distribution d : {Distribution::gaussian, Distribution::channel_bias}) {
    const Case c = make_case(p, d, seed);
    for (const Pipeline& pl : pipelines()) {
      SCOPED_TRACE(std::string(pl.name) + " on " + distribution_name(d));
      for (bool smooth_k : {true, false}) {
        AttentionOptions o = pl.options;
        o.smooth_k = smooth_k;
        if (!smooth_k && d == Distribution::channel_bias) continue;  // unsmoothed INT4 is far off there
        const Result r = run(c, o);
        EXPECT_LE(r.lse_err, pl.lse_tol) << "smooth_k " << smooth_k;
      }
    }
  }
}

// ---- smoothing -------------------------------------------------------------

// K smoothing on channel-biased K: the bias inflates every K group's amax, so
// the quantization step is ~10x the spread of the values that matter;
// subtracting the channel mean removes it. PV runs in FP16 with smooth_v here
// so the QK^T error is what the metric sees (with FP8 PV, P/V rounding
// dominates the error and hides the QK^T gain). Measured relL1 ratio
// (smoothed / not) ~0.33 for INT8 and ~0.28 for INT4.
TEST(EmulationSmoothing, SmoothKHelpsOnChannelBias) {
  const std::uint64_t seed = fresh_seed();
  SCOPED_TRACE(seed_note(seed));
  const Case c = make_case(make_problem(1024, 1024, 128), Distribution::channel_bias, seed);
  for (QKFormat qk : {QKFormat::int8, QKFormat::int4}) {
    for (Granularity g : {Granularity::per_warp, Granularity::per_thread}) {
      SCOPED_TRACE(std::string(qk_format_name(qk)) + " " + granularity_name(g));
      AttentionOptions o = sage2(qk, g, PVFormat::fp16);
      o.smooth_v = true;
      o.smooth_k = true;
      const Result on = run(c, o);
      o.smooth_k = false;
      const Result off = run(c, o);
      EXPECT_LT(on.m.rel_l1, 0.6 * off.m.rel_l1) << "on: " << describe(on.m) << "\noff: " << describe(off.m);
      EXPECT_GE(on.m.cos_sim, off.m.cos_sim);
    }
  }
  // The same holds for NVFP4 (measured relL1 ratio ~0.8, from the
  // per-16-channel blocks' coarser grid).
  AttentionOptions s3;
  s3.method = Method::sage3;
  s3.smooth_k = true;
  const Result on = run(c, s3);
  s3.smooth_k = false;
  const Result off = run(c, s3);
  EXPECT_LT(on.m.rel_l1, off.m.rel_l1) << "on: " << describe(on.m) << "\noff: " << describe(off.m);
}

// V smoothing with FP8 PV on channel-biased V: without it the per-channel FP8
// scale is set by the bias and O (~ the bias) carries its rounding error;
// with it only the small centred values are quantized. Measured relL1 ratio ~0.23.
TEST(EmulationSmoothing, SmoothVHelpsFp8PvOnChannelBias) {
  const std::uint64_t seed = fresh_seed();
  SCOPED_TRACE(seed_note(seed));
  const Case c = make_case(make_problem(1024, 1024, 128), Distribution::channel_bias, seed);
  for (PVFormat pv : {PVFormat::fp8_e4m3, PVFormat::fp8_e5m2}) {
    SCOPED_TRACE(pv_format_name(pv));
    AttentionOptions o = sage2(QKFormat::int8, Granularity::per_warp, pv);
    o.smooth_v = true;
    const Result on = run(c, o);
    o.smooth_v = false;
    const Result off = run(c, o);
    EXPECT_LT(on.m.rel_l1, 0.5 * off.m.rel_l1) << "on: " << describe(on.m) << "\noff: " << describe(off.m);
  }
  AttentionOptions bwd;
  bwd.method = Method::sagebwd;
  bwd.smooth_v = true;
  const Result on = run(c, bwd);
  bwd.smooth_v = false;
  const Result off = run(c, bwd);
  // SageBwd (INT8 V per block): measured on/off relL1 ratio over 400 seeds median 0.30, 99th
  // percentile 0.53, max 0.70 (the seeds whose channel biases happen to be small).
  EXPECT_LT(on.m.rel_l1, 0.9 * off.m.rel_l1) << "on: " << describe(on.m) << "\noff: " << describe(off.m);
}

// Q smoothing: with a per-channel offset in Q (shared by all tokens), INT4 Q
// groups waste their 15 levels on the offset; subtracting the block mean and
// adding mean_q . k back (in fp32) removes that part of the error. The gain
// is moderate: the K rounding error, now multiplied by the large Q, remains.
// Per input (4 heads), the on/off ratio over 400 seeds: rel-L1 median 0.81
// (sage2) / 0.78 (sage3), max 0.96 / 0.93; LSE error median 0.62 / 0.56,
// max 0.91 / 1.004. So the test sums the errors over three inputs.
TEST(EmulationSmoothing, SmoothQHelpsInt4OnBiasedQueries) {
  const std::uint64_t seed = fresh_seed();
  SCOPED_TRACE(seed_note(seed));
  struct Errors {
    double rel_l1 = 0, lse = 0;
  };
  Errors on[2], off[2];  // per method
  for (std::uint64_t input = 0; input < 3; ++input) {
    Case c{make_problem(512, 512, 128, 4, 4), {}, {}, {}};
    c.in = make_inputs(c.p, Distribution::gaussian, seed + input, DType::f32);
    std::mt19937_64 rng(seed + input);
    std::normal_distribution<float> bias(0.0f, 4.0f);
    const std::int64_t D = c.p.head_dim;
    for (std::int64_t h = 0; h < c.p.heads_q; ++h)
      for (std::int64_t d = 0; d < D; ++d) {
        const float b = bias(rng);
        for (std::int64_t i = 0; i < c.p.nq; ++i) c.in.q[(h * c.p.nq + i) * D + d] += b;
      }
    compute_exact(c);
    const Method methods[2] = {Method::sage2, Method::sage3};
    for (int mi = 0; mi < 2; ++mi) {
      AttentionOptions o = sage2(QKFormat::int4, Granularity::per_thread, PVFormat::fp16);
      o.method = methods[mi];
      o.smooth_q = true;
      const Result with = run(c, o);
      o.smooth_q = false;
      const Result without = run(c, o);
      on[mi].rel_l1 += with.m.rel_l1, on[mi].lse += with.lse_err;
      off[mi].rel_l1 += without.m.rel_l1, off[mi].lse += without.lse_err;
    }
  }
  for (int mi = 0; mi < 2; ++mi) {
    SCOPED_TRACE(mi == 0 ? "sage2" : "sage3");
    EXPECT_LT(on[mi].rel_l1, off[mi].rel_l1);
    EXPECT_LT(on[mi].lse, off[mi].lse);
  }
}

// ---- granularity -----------------------------------------------------------

// Finer groups have smaller amax, so never a coarser grid: per-thread beats
// per-block and per-warp sits between (measured INT8 on outliers, 60 seeds:
// cos .9889 / .9913 / .9944 for block / warp / thread). On outlier inputs
// single seeds are noisy (near-tie rows flip), so four heads are averaged
// and the per-warp sandwich is only asserted on heavy-tailed inputs.
// INT4's errors are large (relative L1 0.3 - 0.9), and there cos-sim is
// decided by the few rows with the largest outputs: a rare draw inverts it
// (seed 14420125257616906309, INT4 heavy-tailed: cos .902 / .920 / .893 for
// block / warp / thread while relative L1 falls .91 / .76 / .56), so INT4's
// order is asserted on relative L1, which held in 240 seeds with >= 11% to
// spare at each step (cos by 0.07 on average, but not in every draw).
TEST(EmulationGranularity, FinerIsNotWorseOnOutliers) {
  const std::uint64_t seed = fresh_seed();
  SCOPED_TRACE(seed_note(seed));
  for (Distribution d : {Distribution::outlier_channels, Distribution::heavy_tailed}) {
    const Case c = make_case(make_problem(512, 512, 128, 4, 4), d, seed);
    for (QKFormat qk : {QKFormat::int8, QKFormat::int4}) {
      SCOPED_TRACE(std::string(qk_format_name(qk)) + " on " + distribution_name(d));
      const Result block = run(c, sage2(qk, Granularity::per_block, PVFormat::fp16));
      const Result warp = run(c, sage2(qk, Granularity::per_warp, PVFormat::fp16));
      const Result thread = run(c, sage2(qk, Granularity::per_thread, PVFormat::fp16));
      EXPECT_LE(thread.m.rel_l1, block.m.rel_l1 * 1.05);
      if (qk == QKFormat::int4) {
        EXPECT_LE(warp.m.rel_l1, block.m.rel_l1);
        EXPECT_LE(thread.m.rel_l1, warp.m.rel_l1);
        continue;
      }
      EXPECT_GE(thread.m.cos_sim, block.m.cos_sim - 1e-3);
      if (d == Distribution::heavy_tailed) {
        EXPECT_GE(warp.m.cos_sim, block.m.cos_sim - 1e-3);
        EXPECT_GE(thread.m.cos_sim, warp.m.cos_sim - 1e-3);
      }
    }
  }
}

// ---- the scale groups, hand-checked ------------------------------------------
//
// A tiny geometry (cta_q 32, cta_k 16, warp_q 16) and inputs where one
// element is 100 and every other |x| is small: every other member of that
// element's scale group quantizes to 0 (0.25 / (100 / 127) < 0.5), which
// shows up in the output. V is one-hot (v_j = e_j), so out[i][j] is P[i][j].
constexpr TileGeometry kTinyGeometry{32, 16, 16};

double pattern(std::int64_t a, std::int64_t b) {  // a fixed +-1 pattern
  return ((a * 7 + b * 13 + (a * b) % 5) % 3 == 0) ? -1.0 : 1.0;
}

Case grouping_case(bool outlier_in_q) {
  Case c{make_problem(48, 48, 48), {}, {}, {}};
  c.p.sm_scale = 1.0;
  const std::int64_t n = 48;
  c.in.q.resize(n * n);
  c.in.k.resize(n * n);
  c.in.v.assign(n * n, 0.0f);
  for (std::int64_t i = 0; i < n; ++i)
    for (std::int64_t d = 0; d < n; ++d) {
      c.in.q[i * n + d] = static_cast<float>(0.25 * pattern(i, d));
      c.in.k[i * n + d] = static_cast<float>((outlier_in_q ? 1.0 : 0.3) * pattern(d + 3, i));
    }
  for (std::int64_t j = 0; j < n; ++j) c.in.v[j * n + j] = 1.0f;
  (outlier_in_q ? c.in.q : c.in.k)[0] = 100.0f;
  compute_exact(c);
  return c;
}

AttentionOptions grouping_options(Granularity g) {
  AttentionOptions o = sage2(QKFormat::int8, g, PVFormat::fp16);
  o.smooth_k = false;  // keep K exactly as built
  o.pv_accum = PVAccum::fp32;
  return o;
}

TEST(EmulationGrouping, QueryScaleGroupsFollowTheGeometry) {
  const Case c = grouping_case(/*outlier_in_q=*/true);
  // Rows that share row 0's scale (other than row 0) see all-zero Q codes:
  // uniform attention, out = 1/48 everywhere.
  const std::map<Granularity, std::set<std::int64_t>> expected = {
      {Granularity::per_block, [] { std::set<std::int64_t> s; for (int r = 1; r < 32; ++r) s.insert(r); return s; }()},
      {Granularity::per_warp, [] { std::set<std::int64_t> s; for (int r = 1; r < 16; ++r) s.insert(r); return s; }()},
      {Granularity::per_thread, {8}},  // rows {r, r + 8} of a 16-row warp slice
  };
  for (const auto& [g, rows] : expected) {
    SCOPED_TRACE(granularity_name(g));
    const Result r = run(c, grouping_options(g), kTinyGeometry);
    std::set<std::int64_t> uniform;
    for (std::int64_t i = 0; i < 48; ++i) {
      double dev = 0;
      for (std::int64_t d = 0; d < 48; ++d) dev = std::max(dev, std::fabs(r.out[i * 48 + d] - 1.0 / 48));
      if (dev < 1e-6) uniform.insert(i);
    }
    EXPECT_EQ(rows, uniform);
  }
}

TEST(EmulationGrouping, KeyScaleGroupsFollowTheGeometry) {
  const Case c = grouping_case(/*outlier_in_q=*/false);
  // Keys that share key 0's scale get all-zero codes, hence score 0 and the
  // same probability as key 1 (which is in key 0's group at every
  // granularity) in every row.
  const std::map<Granularity, std::set<std::int64_t>> expected = {
      {Granularity::per_block, [] { std::set<std::int64_t> s; for (int j = 2; j < 16; ++j) s.insert(j); return s; }()},
      {Granularity::per_warp, [] { std::set<std::int64_t> s; for (int j = 2; j < 16; ++j) s.insert(j); return s; }()},
      {Granularity::per_thread, {8, 9}},  // keys c with (c % 8) / 2 == 0 in the first tile
  };
  for (const auto& [g, keys] : expected) {
    SCOPED_TRACE(granularity_name(g));
    const Result r = run(c, grouping_options(g), kTinyGeometry);
    std::set<std::int64_t> like_key1;
    for (std::int64_t j = 2; j < 48; ++j) {
      bool same = true;
      for (std::int64_t i = 0; i < 48 && same; ++i) same = r.out[i * 48 + j] == r.out[i * 48 + 1];
      if (same) like_key1.insert(j);
    }
    EXPECT_EQ(keys, like_key1);
  }
}

// ---- faithfulness: sage2 equals exact attention on the quantized inputs ----
//
// Quantize Q and K here, independently of the emulation's code (groups from
// the table in tile_geometry.h, scales and rounding from formats.h), run
// exact float64 attention on the dequantized values, and compare: with FP16
// PV the only remaining differences are P~ rounded to FP16 and fp32
// arithmetic, so the agreement must be far tighter than against the
// unquantized inputs.

// The group key of row r (Q) or key c (K), as tile_geometry.h's table says.
std::tuple<std::int64_t, std::int64_t> q_group(std::int64_t r, Granularity g, const TileGeometry& geo) {
  switch (g) {
    case Granularity::per_block: return {r / geo.cta_q, 0};
    case Granularity::per_warp: return {r / geo.warp_q, 0};
    case Granularity::per_thread: return {r / geo.warp_q, r % 8};
  }
  return {0, 0};
}
std::tuple<std::int64_t, std::int64_t> k_group(std::int64_t c, Granularity g, const TileGeometry& geo) {
  if (g == Granularity::per_thread) return {c / geo.cta_k, (c % 8) / 2};
  return {c / geo.cta_k, 0};
}

// Rows of x [rows][dim] quantized and dequantized per group.
template <class GroupOf>
std::vector<double> fake_quantize(const std::vector<float>& x, std::int64_t rows, std::int64_t dim, int qmax,
                                  GroupOf group_of) {
  std::map<std::tuple<std::int64_t, std::int64_t>, float> amax;
  for (std::int64_t r = 0; r < rows; ++r)
    for (std::int64_t d = 0; d < dim; ++d) amax[group_of(r)] = std::max(amax[group_of(r)], std::fabs(x[r * dim + d]));
  std::vector<double> out(x.size());
  for (std::int64_t r = 0; r < rows; ++r) {
    const float scale = num::symmetric_scale(amax[group_of(r)], qmax);
    for (std::int64_t d = 0; d < dim; ++d)
      out[r * dim + d] = double(num::quantize_symmetric(x[r * dim + d], num::reciprocal_rn(scale), qmax)) * scale;
  }
  return out;
}

std::vector<float> column_mean(const float* x, std::int64_t rows, std::int64_t dim) {
  std::vector<float> mean(static_cast<std::size_t>(dim));
  for (std::int64_t d = 0; d < dim; ++d) {
    double s = 0;
    for (std::int64_t r = 0; r < rows; ++r) s += x[r * dim + d];
    mean[d] = static_cast<float>(s / static_cast<double>(rows));
  }
  return mean;
}

TEST(EmulationFaithfulness, Sage2EqualsExactAttentionOnQuantizedInputs) {
  const std::uint64_t seed = fresh_seed();
  SCOPED_TRACE(seed_note(seed));
  const Problem p = make_problem(300, 260, 64);  // one head; partial tiles
  const Inputs in = make_inputs(p, Distribution::channel_bias, seed);
  const TileGeometry& geo = kSm90Geometry;
  const std::int64_t D = p.head_dim;
  for (QKFormat qk : {QKFormat::int8, QKFormat::int4})
    for (Granularity g : {Granularity::per_block, Granularity::per_warp, Granularity::per_thread})
      for (bool smooth : {false, true}) {
        SCOPED_TRACE(std::string(qk_format_name(qk)) + " " + granularity_name(g) + (smooth ? " smooth q+k" : ""));
        const int qmax = qk == QKFormat::int8 ? 127 : 7;
        // Smoothing as the contract says: K minus its channel mean; Q minus
        // its cta_q-block mean, the mean added back in full precision.
        std::vector<float> ks = in.k, qs = in.q;
        std::vector<float> mean_k(static_cast<std::size_t>(D), 0.0f);
        std::vector<double> q_back(in.q.size(), 0.0);
        if (smooth) {
          mean_k = column_mean(in.k.data(), p.nk, D);
          for (std::int64_t j = 0; j < p.nk; ++j)
            for (std::int64_t d = 0; d < D; ++d) ks[j * D + d] = in.k[j * D + d] - mean_k[d];
          for (std::int64_t r0 = 0; r0 < p.nq; r0 += geo.cta_q) {
            const std::int64_t rows = std::min<std::int64_t>(geo.cta_q, p.nq - r0);
            const std::vector<float> mq = column_mean(in.q.data() + r0 * D, rows, D);
            for (std::int64_t r = r0; r < r0 + rows; ++r)
              for (std::int64_t d = 0; d < D; ++d) {
                qs[r * D + d] = in.q[r * D + d] - mq[d];
                q_back[r * D + d] = mq[d];
              }
          }
        }
        std::vector<double> qd = fake_quantize(qs, p.nq, D, qmax, [&](std::int64_t r) { return q_group(r, g, geo); });
        const std::vector<double> kd =
            fake_quantize(ks, p.nk, D, qmax, [&](std::int64_t c) { return k_group(c, g, geo); });
        for (std::size_t i = 0; i < qd.size(); ++i) qd[i] += q_back[i];
        std::vector<double> vd(in.v.size());
        for (std::size_t i = 0; i < vd.size(); ++i) vd[i] = num::round_to_f16(in.v[i]);

        std::vector<double> want(static_cast<std::size_t>(p.q_elems())), want_lse(static_cast<std::size_t>(p.nq));
        exact_attention(p, qd.data(), kd.data(), vd.data(), want.data(), want_lse.data());

        AttentionOptions o = sage2(qk, g, PVFormat::fp16);
        o.smooth_k = o.smooth_q = smooth;
        std::vector<float> out(want.size()), lse(want_lse.size());
        emulate_attention(p, o, geo, in.q.data(), in.k.data(), in.v.data(), out.data(), lse.data());
        const Metrics m = compare(want.data(), out.data(), p.nq, D);
        EXPECT_GE(m.cos_sim, 0.999999) << describe(m);
        EXPECT_LE(m.rel_l1, 2e-4) << describe(m);
        // The emulation's LSE is that of the smoothed scores plus q . mean_k * sm_scale.
        double worst = 0;
        for (std::int64_t i = 0; i < p.nq; ++i) {
          double qm = 0;
          for (std::int64_t d = 0; d < D; ++d) qm += double(in.q[i * D + d]) * mean_k[d];
          worst = std::max(worst, std::fabs(want_lse[i] + qm * p.sm_scale - lse[i]));
        }
        EXPECT_LE(worst, 2e-4);
      }
}

// Where the kernel family sums P as its PV MMA reads it (kSm90Geometry past
// D = 64: TileGeometry::l_sums_pv_operand), O's weights sum to one whatever
// the FP8 rounding of P: with every key's V row the same, each output row
// is that row, to fp32 rounding (V's per-channel scale makes each code
// +-448 or 0, exactly). Summing the fp32 P~ instead (the mma.sync kernels;
// the sm90 kernels at D = 64) leaves the rows off by P's quantization, which
// shows that the rule is in effect where it should be and only there.
TEST(EmulationRowSums, FollowTheKernelFamily) {
  const std::uint64_t seed = fresh_seed();
  SCOPED_TRACE(seed_note(seed));
  for (const std::int64_t dim : {128, 64}) {
    const Problem p = make_problem(200, 300, dim);  // partial tiles
    Inputs in = make_inputs(p, Distribution::gaussian, seed);
    for (std::int64_t j = 1; j < p.nk; ++j)
      std::copy(in.v.begin(), in.v.begin() + dim, in.v.begin() + j * dim);
    for (const TileGeometry* geo : {&kSm90Geometry, &kMmaGeometry}) {
      SCOPED_TRACE("D=" + std::to_string(dim) + (geo == &kSm90Geometry ? " sm90" : " mma"));
      std::vector<float> out(static_cast<std::size_t>(p.q_elems()));
      emulate_attention(p, AttentionOptions{}, *geo, in.q.data(), in.k.data(), in.v.data(), out.data(), nullptr);
      double worst = 0;  // |out - v| relative to the largest |v|
      float vmax = 0;
      for (std::int64_t d = 0; d < dim; ++d) vmax = std::max(vmax, std::fabs(in.v[d]));
      for (std::int64_t r = 0; r < p.nq; ++r)
        for (std::int64_t d = 0; d < dim; ++d)
          worst = std::max(worst, std::fabs(double(out[r * dim + d]) - in.v[d]) / vmax);
      if (geo->l_sums_pv_operand(dim)) {
        EXPECT_LE(worst, 1e-5);
      } else {
        EXPECT_GE(worst, 1e-4) << "fp32 sums of P~ against a quantized P: the rows should be off";
      }
    }
  }
  EXPECT_TRUE(kSm90Geometry.l_sums_pv_operand(128) && !kSm90Geometry.l_sums_pv_operand(64) &&
              !kMmaGeometry.l_sums_pv_operand(128));
}

// ---- shapes: odd sizes, GQA, causal alignments, masked rows ---------------

struct ShapeCase {
  std::int64_t batch, heads_q, heads_kv, nq, nk, dim;
  bool causal;
  CausalAlign align;
};

// Bounds for these small, mixed problems: the Gaussian bounds of the table,
// loosened (short rows make O larger relative to the noise, but causal rows
// of a handful of keys can be sharp).
double shape_min_cos(const Pipeline& pl) { return pl.bounds[0].min_cos - (1.0 - pl.bounds[0].min_cos) * 2.0; }

TEST(EmulationShapes, OddSizesGqaCausalAndMaskedRows) {
  const std::uint64_t seed = fresh_seed();
  SCOPED_TRACE(seed_note(seed));
  const std::vector<ShapeCase> cases = {
      {1, 1, 1, 1, 1, 64, false, CausalAlign::top_left},
      {1, 1, 1, 17, 17, 32, true, CausalAlign::top_left},
      {2, 4, 2, 127, 129, 128, true, CausalAlign::top_left},
      {1, 2, 1, 129, 127, 64, true, CausalAlign::bottom_right},
      {1, 1, 1, 200, 77, 48, true, CausalAlign::bottom_right},  // rows 0..122 see nothing
      {1, 3, 1, 77, 300, 80, true, CausalAlign::bottom_right},
      {1, 2, 2, 300, 45, 16, true, CausalAlign::top_left},
      {1, 1, 1, 33, 257, 72, false, CausalAlign::top_left},  // D % 16 != 0: NVFP4 refuses
  };
  std::uint64_t case_seed = seed;
  for (const ShapeCase& sc : cases) {
    const Problem p = make_problem(sc.nq, sc.nk, sc.dim, sc.heads_q, sc.heads_kv, sc.batch, sc.causal, sc.align);
    std::ostringstream name;
    name << "B" << sc.batch << " Hq" << sc.heads_q << " Hkv" << sc.heads_kv << " Nq" << sc.nq << " Nk" << sc.nk << " D"
         << sc.dim << (sc.causal ? (sc.align == CausalAlign::top_left ? " causal-tl" : " causal-br") : "");
    SCOPED_TRACE(name.str());
    const Case c = make_case(p, Distribution::gaussian, ++case_seed);
    for (const Pipeline& pl : pipelines()) {
      SCOPED_TRACE(pl.name);
      if (pl.options.method == Method::sage3 && sc.dim % 16 != 0) {
        std::vector<float> out(static_cast<std::size_t>(p.q_elems()));
        EXPECT_THROW(emulate_attention(p, pl.options, kSm90Geometry, c.in.q.data(), c.in.k.data(), c.in.v.data(),
                                       out.data(), nullptr),
                     std::invalid_argument);
        continue;
      }
      const Result r = run(c, pl.options);
      EXPECT_EQ(0, r.m.nonfinite);
      EXPECT_GE(r.m.cos_sim, shape_min_cos(pl)) << describe(r.m);
      EXPECT_LE(r.lse_err, pl.lse_tol_short_rows);
      for (std::size_t row = 0; row < r.lse.size(); ++row) {
        if (std::isinf(c.lse[row])) {  // fully masked: out 0, lse -inf
          EXPECT_EQ(-std::numeric_limits<float>::infinity(), r.lse[row]) << "row " << row;
          for (std::int64_t d = 0; d < p.head_dim; ++d) ASSERT_EQ(0.0f, r.out[row * p.head_dim + d]) << "row " << row;
        } else {
          ASSERT_TRUE(std::isfinite(r.lse[row])) << "row " << row;
        }
      }
    }
  }
}

// ---- special values, determinism -------------------------------------------

TEST(EmulationSpecialValues, ZeroInputsGiveZeroOutputAndLogNLse) {
  const Problem p = make_problem(130, 70, 64, 2, 1);
  Case c{p, {}, {}, {}};
  c.in.q.assign(static_cast<std::size_t>(p.q_elems()), 0.0f);
  c.in.k.assign(static_cast<std::size_t>(p.kv_elems()), 0.0f);
  c.in.v.assign(static_cast<std::size_t>(p.kv_elems()), 0.0f);
  compute_exact(c);
  for (const Pipeline& pl : pipelines()) {
    for (bool smooth : {false, true}) {
      SCOPED_TRACE(std::string(pl.name) + (smooth ? " all smoothing" : ""));
      AttentionOptions o = pl.options;
      o.smooth_q = o.smooth_k = o.smooth_v = smooth;
      const Result r = run(c, o);
      for (float x : r.out) ASSERT_EQ(0.0f, x);
      for (float x : r.lse) ASSERT_NEAR(std::log(70.0), x, 1e-5);
    }
  }
}

// A NaN in the inputs makes the exact result NaN, so no metric can pass,
// whatever the pipeline does with it. FP8/FP16/BF16 conversions keep a NaN in
// V (it reaches the output); INT8/INT4 groups keep a NaN or an infinity of Q
// or K in their scale and NVFP4 blocks decode to NaN (next test).
TEST(EmulationSpecialValues, NaNInputNeverPasses) {
  const std::uint64_t seed = fresh_seed();
  SCOPED_TRACE(seed_note(seed));
  Case c{make_problem(64, 64, 64), {}, {}, {}};
  c.in = make_inputs(c.p, Distribution::gaussian, seed);
  c.in.v[5 * 64 + 3] = std::numeric_limits<float>::quiet_NaN();
  compute_exact(c);
  for (const Pipeline& pl : pipelines()) {
    SCOPED_TRACE(pl.name);
    const Result r = run(c, pl.options);
    EXPECT_FALSE(r.m.cos_sim >= 0.0) << describe(r.m);
    EXPECT_FALSE(r.m.rel_l1 <= 1.0) << describe(r.m);
    if (pl.options.method == Method::sage2) {
      EXPECT_GT(r.m.nonfinite, 0);  // P V carries the NaN
    }
  }
}

// A NaN or an infinity in Q, K or V: every output element that exact
// attention makes non-finite is non-finite too (NaN, or inf where FP16/BF16
// P V carries an infinity of V as float attention does), and the LSE of such
// a row is NaN where the value was in Q or K (the LSE does not depend on V):
// never finite and wrong. The NaN spreads to the value's scale group (query
// rows: 16 per-warp, 2 per-thread, 128 per-block or with smooth Q; keys: a
// key tile, or with smooth K the whole head through the channel mean; V:
// with FP8 P V the channel of an infinity, in every row; with SageBwd's INT8
// V the rows of every Q tile that reaches the value's key tile; NVFP4: the
// value's block of 16, in those rows),
// never to another head. For every pipeline (sage2, sagebwd, sage3), both
// smooth-K settings, non-causal and causal.
TEST(EmulationSpecialValues, NonFiniteInputsGiveNaNWhereExactAttentionDoes) {
  const std::uint64_t seed = fresh_seed();
  SCOPED_TRACE(seed_note(seed));
  constexpr std::int64_t kDim = 64;
  for (const bool causal : {false, true}) {
    Case c{make_problem(70, 90, kDim, 2, 2, 1, causal, CausalAlign::bottom_right), {}, {}, {}};
    const Inputs clean = make_inputs(c.p, Distribution::gaussian, seed);
    for (const test::NonFiniteInput& poison : test::kNonFiniteInputs) {
      c.in = clean;
      // Head 0, row / key 37, channel 5; head 1 stays clean.
      std::vector<float>& tensor = poison.tensor == 'q' ? c.in.q : poison.tensor == 'k' ? c.in.k : c.in.v;
      tensor[37 * kDim + 5] = poison.value;
      compute_exact(c);
      for (const Pipeline& pl : pipelines()) {
        for (const bool smooth_k : {true, false}) {
          SCOPED_TRACE(std::string(poison.what) + ", " + pl.name + (smooth_k ? ", smooth K" : "") +
                       (causal ? ", causal" : ""));
          AttentionOptions o = pl.options;
          o.smooth_k = smooth_k;
          const Result r = run(c, o);
          std::int64_t nonfinite_outputs = 0, finite_where_exact_is_not = 0, bad_lse = 0, nonfinite_clean_head = 0;
          for (std::int64_t row = 0; row < 2 * c.p.nq; ++row) {
            bool exact_row_finite = true;
            for (std::int64_t d = 0; d < kDim; ++d) {
              const std::size_t i = static_cast<std::size_t>(row * kDim + d);
              exact_row_finite = exact_row_finite && std::isfinite(c.out[i]);
              finite_where_exact_is_not += !std::isfinite(c.out[i]) && std::isfinite(r.out[i]);
              nonfinite_outputs += !std::isfinite(r.out[i]);
              nonfinite_clean_head += row >= c.p.nq && !std::isfinite(r.out[i]);
            }
            bad_lse += poison.tensor != 'v' && !exact_row_finite && !std::isnan(r.lse[row]);
          }
          EXPECT_GT(nonfinite_outputs, 0);
          EXPECT_EQ(finite_where_exact_is_not, 0) << "finite outputs where exact attention is not finite";
          EXPECT_EQ(bad_lse, 0) << "rows with a non-finite exact output whose LSE is not NaN";
          EXPECT_EQ(nonfinite_clean_head, 0) << "non-finite outputs in the head without the value";
        }
      }
    }
  }
}

// The same where the row's P~ underflows to 0 in the value's key tile: key 0
// dominates (a logit 2^8 above the others, base 2), so every P~ of the second
// tile is 0 in fp32, while exact attention (float64) still gives the
// poisoned key a weight of ~2^-288 and so a non-finite output. The quantized P of such a tile is all
// zeros, which must still carry a NaN or infinite V into O (0 * V), as float
// attention does: SageBwd and SageAttention3 once skipped that tile.
TEST(EmulationSpecialValues, NonFiniteVReachesRowsWhoseProbabilitiesUnderflow) {
  const std::uint64_t seed = fresh_seed();
  SCOPED_TRACE(seed_note(seed));
  constexpr std::int64_t kDim = 64, kKeys = 256, kPoisonKey = 200, kChannel = 5;
  Case c{make_problem(1, kKeys, kDim), {}, {}, {}};
  c.p.sm_scale = 1.0;
  const Inputs clean = make_inputs(c.p, Distribution::gaussian, seed);
  for (const test::NonFiniteInput& poison : test::kNonFiniteInputs) {
    if (poison.tensor != 'v') continue;
    c.in = clean;
    std::fill(c.in.q.begin(), c.in.q.end(), 0.0f);
    std::fill(c.in.k.begin(), c.in.k.end(), 0.0f);
    c.in.q[0] = 1.0f;
    c.in.k[0] = 200.0f;  // logit 200 (288 in base 2) for key 0, 0 for every other key
    c.in.v[kPoisonKey * kDim + kChannel] = poison.value;
    compute_exact(c);
    ASSERT_FALSE(std::isfinite(c.out[kChannel])) << "the exact reference must see the value";
    for (const Pipeline& pl : pipelines()) {
      for (const bool smooth_k : {true, false}) {
        SCOPED_TRACE(std::string(poison.what) + ", " + pl.name + (smooth_k ? ", smooth K" : ""));
        AttentionOptions o = pl.options;
        o.smooth_k = smooth_k;
        const Result r = run(c, o);
        EXPECT_FALSE(std::isfinite(r.out[kChannel])) << "out[" << kChannel << "] = " << r.out[kChannel];
      }
    }
  }
}

TEST(EmulationDeterminism, SameBitsEveryRunAndThreadCount) {
  const std::uint64_t seed = fresh_seed();
  SCOPED_TRACE(seed_note(seed));
  const Case c = make_case(make_problem(300, 280, 64, 4, 2, 2, true, CausalAlign::bottom_right),
                           Distribution::heavy_tailed, seed);
  for (const Pipeline& pl : pipelines()) {
    SCOPED_TRACE(pl.name);
    AttentionOptions o = pl.options;
    o.smooth_v = true;
    const Result a = run(c, o);
    const Result b = run(c, o);
    ::setenv("SAGE_NUM_THREADS", "1", 1);
    const Result serial = run(c, o);
    ::unsetenv("SAGE_NUM_THREADS");
    EXPECT_EQ(0, std::memcmp(a.out.data(), b.out.data(), a.out.size() * sizeof(float)));
    EXPECT_EQ(0, std::memcmp(a.out.data(), serial.out.data(), a.out.size() * sizeof(float)));
    EXPECT_EQ(0, std::memcmp(a.lse.data(), serial.lse.data(), a.lse.size() * sizeof(float)));
  }
}

TEST(EmulationErrors, RejectsBadArguments) {
  const Problem p = make_problem(16, 16, 40);
  std::vector<float> x(static_cast<std::size_t>(p.q_elems()), 1.0f), out(x.size());
  AttentionOptions s3;
  s3.method = Method::sage3;
  EXPECT_THROW(emulate_attention(p, s3, kSm90Geometry, x.data(), x.data(), x.data(), out.data(), nullptr),
               std::invalid_argument);  // NVFP4 needs head_dim % 16 == 0
  Problem bad = make_problem(16, 16, 64);
  bad.sm_scale = 0;
  std::vector<float> y(static_cast<std::size_t>(bad.q_elems()));
  EXPECT_THROW(emulate_attention(bad, AttentionOptions{}, kSm90Geometry, y.data(), y.data(), y.data(), y.data(),
                                 nullptr),
               std::invalid_argument);
  EXPECT_THROW(emulate_attention(make_problem(16, 16, 64), AttentionOptions{}, TileGeometry{128, 128, 12}, y.data(),
                                 y.data(), y.data(), y.data(), nullptr),
               std::invalid_argument);
}

// ---- one large run: N = 2048, D = 128 (accuracy at a longer sequence) ------
// (How long the emulation takes is the CLI's business: `sage run --device cpu`
// prints its time; tests do not time.)

TEST(EmulationLarge, Sage2AtN2048) {
  const std::uint64_t seed = fresh_seed();
  SCOPED_TRACE(seed_note(seed));
  const Case c = make_case(make_problem(2048, 2048, 128), Distribution::gaussian, seed);
  const Result r = run(c, AttentionOptions{});
  EXPECT_GE(r.m.cos_sim, 0.999) << describe(r.m);
}

}  // namespace
}  // namespace sage::ref
