// End-to-end tests of the SageAttention2 Hopper path (sage::attention_forward
// on GPU tensors: quantization pre-pass + INT8-QK / FP8-PV wgmma kernel).
//
// Each case draws fresh inputs (seed from std::random_device, or from the
// environment variable SAGE_TEST_SEED to replay a failure; the seed is in
// every failure trace and metrics line), lays them out on the host as 16-bit
// bit patterns in the case's layout and storage (dense, padded row/head/batch
// strides, or q/k/v as slices of one packed [B, N, 3, H, D] buffer),
// uploads, fills out (and its padding) with the NaN pattern 0xFFFF and lse
// with NaN, runs on a non-blocking stream and checks:
//   (a) against the CPU emulation of the same options (src/reference,
//       kSm90Geometry) - tight, this is the check that finds kernel bugs;
//   (b) against exact float64 attention on the same (rounded) inputs;
//   (c) the LSE against the exact LSE; rows that see no key (causal
//       bottom-right with Nq > Nk) must give lse = -inf and out == 0 exactly;
// plus: every output element finite (with the poison this is also "every
// element written"), every lse entry written, the padding of a strided out
// (and lse when return_lse is off) left untouched. The bounds and why they
// are what they are: see "bounds" below.
//
// Without a CUDA device, or on a GPU other than compute capability 9.0,
// every test here reports SKIPPED. Names of the quick subset (meant for
// compute-sanitizer) contain "Small": --gtest_filter='*Small*'.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "cuda/quant/kv_head_jobs_fit.h"
#include "cuda/quant/prepass.h"
#include "cuda/sm90/qk_int8_pv_fp8_sm90.h"
#include "gpu/attention_forward_harness.h"
#include "gpu/gpu_test_util.h"
#include "numerics/formats.h"
#include "numerics/tile_geometry.h"
#include "reference/reference.h"
#include "sage/attention.h"

namespace {

// ------------------------------------------------------------------ device

// The fixture of every test here: a compute capability 9.0 GPU (the sm90
// kernel's only target) with the dispatch limited to the sm90 family.
class Sm90Test : public KernelFamilyTest {
 protected:
  Sm90Test() : KernelFamilyTest("sm90", [](int sm) { return sm == 90; }, "a compute capability 9.0 GPU") {}
};

// ------------------------------------------------------------------ the case table

std::vector<Case> all_cases() {
  using namespace case_table;
  // ---- quick subset (also run under compute-sanitizer): the shared one, then this family's
  std::vector<Case> cases = shared_small_cases();
  const std::vector<Case> own_small = {
      // The TMA-store epilogue with a box that ends past head_dim (96, 80, 32: the
      // second or only 64-channel box clipped) and padding after each row,
      // which it must leave alone.
      {.small = true, .b = 2, .hq = 2, .hkv = 1, .nq = 129, .nk = 129, .d = 32, .causal = true, .align = TL,
       .strided_out = true},
      {.small = true, .b = 1, .hq = 2, .hkv = 2, .nq = 257, .nk = 300, .d = 96, .layout = NHD, .dtype = FP16,
       .storage = Storage::padded, .strided_out = true},
      {.small = true, .b = 1, .hq = 3, .hkv = 1, .nq = 300, .nk = 257, .d = 80, .causal = true, .align = BR,
       .strided_out = true},
  };
  cases.insert(cases.end(), own_small.begin(), own_small.end());
  const std::vector<Case> shared = shared_forward_cases();
  cases.insert(cases.end(), shared.begin(), shared.end());
  const std::vector<Case> more = {
      // ---- Nq != Nk and rows that see no key, at the sizes the shared cases leave out
      {.b = 1, .hq = 4, .hkv = 2, .nq = 1000, .nk = 300, .d = 64, .dtype = FP16, .dist = D::sharp},
      {.b = 1, .hq = 2, .hkv = 2, .nq = 3000, .nk = 17, .d = 128, .layout = NHD, .dtype = FP16},

      // ---- strides, explicit sm_scale, odd head dims at larger sizes
      {.b = 1, .hq = 4, .hkv = 4, .nq = 1531, .nk = 1531, .d = 128, .layout = NHD, .causal = true, .align = TL,
       .storage = Storage::packed_qkv},
      {.b = 2, .hq = 2, .hkv = 2, .nq = 1000, .nk = 1000, .d = 64, .dtype = FP16, .granularity = G::per_thread,
       .storage = Storage::padded, .strided_out = true},
      {.b = 1, .hq = 4, .hkv = 4, .nq = 1000, .nk = 1000, .d = 128, .layout = NHD, .storage = Storage::padded},
      {.b = 1, .hq = 2, .hkv = 2, .nq = 1000, .nk = 1000, .d = 64, .strided_out = true, .sm_scale = 0.05f},
      // A tiny sm_scale makes q_scale * k_scale * sm_scale so small that a
      // masked score (INT_MIN) no longer flushes to 0 in exp2: the softmax's
      // explicit per-score check (masked tiles only) must zero it.
      {.b = 1, .hq = 2, .hkv = 2, .nq = 300, .nk = 300, .d = 128, .causal = true, .align = TL, .sm_scale = 1e-6f},
      {.b = 1, .hq = 4, .hkv = 2, .nq = 200, .nk = 1000, .d = 64, .layout = NHD, .causal = true, .align = BR,
       .dtype = FP16, .granularity = G::per_thread, .sm_scale = 1e-6f},
      {.b = 1, .hq = 2, .hkv = 2, .nq = 100, .nk = 300, .d = 128, .sm_scale = 1e-6f},
      {.b = 1, .hq = 4, .hkv = 2, .nq = 1531, .nk = 1531, .d = 32, .causal = true, .align = TL},
      {.b = 1, .hq = 2, .hkv = 2, .nq = 1531, .nk = 1531, .d = 80, .layout = NHD, .dtype = FP16,
       .granularity = G::per_thread, .dist = D::outlier_channels},
      {.b = 1, .hq = 2, .hkv = 1, .nq = 1000, .nk = 1531, .d = 100, .causal = true, .align = BR,
       .storage = Storage::padded, .strided_out = true},
      {.b = 1, .hq = 2, .hkv = 2, .nq = 1531, .nk = 1000, .d = 127, .layout = NHD, .causal = true, .align = BR,
       .smooth_v = true, .storage = Storage::padded},

      // ---- whole tiles (no tail), more heads and batches, remaining combinations
      {.b = 2, .hq = 4, .hkv = 4, .nq = 256, .nk = 256, .d = 128, .causal = true, .align = TL,
       .granularity = G::per_thread},
      {.b = 1, .hq = 2, .hkv = 2, .nq = 128, .nk = 384, .d = 64, .layout = NHD, .causal = true, .align = BR,
       .dtype = FP16, .granularity = G::per_block},
      {.b = 4, .hq = 8, .hkv = 2, .nq = 513, .nk = 513, .d = 64, .layout = NHD, .causal = true, .align = TL,
       .storage = Storage::padded, .strided_out = true},
      {.b = 1, .hq = 2, .hkv = 2, .nq = 1531, .nk = 1531, .d = 128, .granularity = G::per_thread,
       .dist = D::heavy_tailed},
      {.b = 1, .hq = 2, .hkv = 1, .nq = 1000, .nk = 1531, .d = 128, .layout = NHD, .causal = true, .align = BR,
       .dtype = FP16, .granularity = G::per_block, .dist = D::sharp},
      {.b = 1, .hq = 4, .hkv = 2, .nq = 17, .nk = 3000, .d = 64, .granularity = G::per_thread, .smooth_v = true,
       .return_lse = false},
      {.b = 1, .hq = 2, .hkv = 2, .nq = 3000, .nk = 3000, .d = 128, .causal = true, .align = TL, .smooth_v = true,
       .dist = D::channel_bias},
  };
  cases.insert(cases.end(), more.begin(), more.end());
  // ---- smooth_q (per-tile Q mean + the producer's key offsets): tails of
  // Q and K tiles, GQA, both layouts and alignments, every granularity, and
  // Q with channel offsets (qk-bias: tile means far from zero).
  const std::vector<Case> smooth_q = {
      {.small = true, .b = 1, .hq = 2, .hkv = 2, .nq = 1, .nk = 1, .d = 64, .smooth_q = true},
      {.small = true, .b = 2, .hq = 4, .hkv = 2, .nq = 129, .nk = 130, .d = 128, .layout = NHD, .causal = true,
       .align = BR, .dtype = FP16, .granularity = G::per_thread, .smooth_v = true, .smooth_q = true},
      {.small = true, .b = 1, .hq = 2, .hkv = 1, .nq = 300, .nk = 100, .d = 100, .causal = true, .align = BR,
       .granularity = G::per_block, .storage = Storage::padded, .strided_out = true, .smooth_q = true},
      {.b = 1, .hq = 4, .hkv = 4, .nq = 1531, .nk = 1531, .d = 128, .causal = true, .align = TL,
       .dist = D::outlier_channels, .smooth_q = true},
      {.b = 2, .hq = 4, .hkv = 2, .nq = 1000, .nk = 3000, .d = 64, .layout = NHD, .granularity = G::per_thread,
       .dist = D::channel_bias, .smooth_q = true},
      {.b = 1, .hq = 2, .hkv = 2, .nq = 3000, .nk = 1531, .d = 128, .dtype = FP16, .smooth_k = false,
       .return_lse = false, .dist = D::heavy_tailed, .smooth_q = true},
      {.b = 1, .hq = 4, .hkv = 2, .nq = 1000, .nk = 1531, .d = 128, .dist = D::qk_bias, .smooth_q = true},
  };
  cases.insert(cases.end(), smooth_q.begin(), smooth_q.end());
  // ---- persistent CTAs (at most one per SM, each looping over query tiles):
  // several hundred work items, so every CTA of a 132-SM H100/H200 runs 2-4
  // of them with its K/V ring, item buffers and barrier phases carried across
  // items; with causal masks, items without any key (q tile 0 of Nq > Nk
  // bottom-right), tails, GQA and smooth_q.
  const std::vector<Case> many_items = {
      {.b = 4, .hq = 40, .hkv = 8, .nq = 300, .nk = 300, .d = 128, .causal = true, .align = BR},
      {.b = 2, .hq = 70, .hkv = 70, .nq = 300, .nk = 100, .d = 64, .layout = NHD, .causal = true, .align = BR,
       .dtype = FP16},
      {.b = 3, .hq = 50, .hkv = 10, .nq = 190, .nk = 700, .d = 128, .granularity = G::per_thread,
       .dist = D::heavy_tailed},
      {.b = 2, .hq = 48, .hkv = 48, .nq = 257, .nk = 257, .d = 64, .causal = true, .align = TL, .smooth_v = true,
       .smooth_q = true},
  };
  cases.insert(cases.end(), many_items.begin(), many_items.end());
  return cases;
}

// ------------------------------------------------------------------ parameterized cases

class Sm90ForwardCase : public Sm90Test, public ::testing::WithParamInterface<Case> {};

TEST_P(Sm90ForwardCase, MatchesReference) { run_case(GetParam(), device(), sage::kSm90Geometry, "sm90"); }

std::string case_name(const ::testing::TestParamInfo<Case>& info) { return info.param.name(); }

INSTANTIATE_TEST_SUITE_P(Sm90, Sm90ForwardCase, ::testing::ValuesIn(all_cases()), case_name);

// ------------------------------------------------------------------ published accuracy

// SageAttention2's published accuracy on Gaussian inputs at N = 4096,
// D = 128 with the default options, measured against float64.
class Sm90Forward : public Sm90Test {};

// ------------------------------------------------------------------ Q quantized in the kernel

// Calls whose Q the attention kernel quantizes itself (per-warp or
// per-thread groups, no smooth_q, no LSE correction: return_lse off or
// smooth_k off, Q rows TMA can read), over head dims (odd ones too: TMA
// zero-fills part of a 16-byte chunk), lengths, layouts, storage, dtypes,
// causal alignments and GQA, and with more work items than an H200 has SMs
// (persistent CTAs reuse their Q buffers; at D = 128 three consumers share
// one 16-bit Q buffer, and in the short causal calls two consumers run their
// steps on across items: the last three cases give the kernel items of 0, 1
// and 2 key tiles in a row, items of one tile, and the register-store
// epilogue).
// (The small ones also run under compute-sanitizer.)
std::vector<Case> q_in_kernel_cases() {
  using namespace case_table;
  return {
      {.small = true, .b = 1, .hq = 2, .hkv = 2, .nq = 1, .nk = 1, .d = 128, .return_lse = false},
      {.small = true, .b = 2, .hq = 2, .hkv = 2, .nq = 17, .nk = 300, .d = 128, .layout = NHD, .return_lse = false},
      {.b = 2, .hq = 8, .hkv = 2, .nq = 300, .nk = 300, .d = 128, .causal = true, .align = TL,
       .granularity = G::per_thread, .return_lse = false, .dist = D::outlier_channels},
      {.b = 1, .hq = 4, .hkv = 1, .nq = 1531, .nk = 1000, .d = 128, .causal = true, .align = BR, .dtype = FP16,
       .smooth_v = true, .return_lse = false, .dist = D::heavy_tailed},
      // (past kMaxKeysTwoConsumersD128Causal: three consumers; 224 items, so
      // that CTAs refill their one 16-bit Q buffer)
      {.b = 2, .hq = 16, .hkv = 4, .nq = 1300, .nk = 1300, .d = 128, .causal = true, .align = TL,
       .return_lse = false},
      {.b = 1, .hq = 2, .hkv = 2, .nq = 300, .nk = 129, .d = 128, .causal = true, .align = BR, .smooth_k = false,
       .return_lse = true, .dist = D::channel_bias},
      {.b = 2, .hq = 4, .hkv = 4, .nq = 129, .nk = 129, .d = 128, .return_lse = false, .storage = Storage::padded,
       .strided_out = true},
      {.b = 1, .hq = 4, .hkv = 4, .nq = 200, .nk = 200, .d = 128, .layout = NHD, .causal = true, .align = TL,
       .return_lse = false, .storage = Storage::packed_qkv},
      {.small = true, .b = 1, .hq = 2, .hkv = 2, .nq = 65, .nk = 65, .d = 64, .return_lse = false},
      {.b = 2, .hq = 6, .hkv = 2, .nq = 1531, .nk = 700, .d = 64, .layout = NHD, .dtype = FP16,
       .granularity = G::per_thread, .return_lse = false, .dist = D::sharp},
      {.b = 1, .hq = 3, .hkv = 3, .nq = 383, .nk = 383, .d = 64, .causal = true, .align = BR, .smooth_k = false,
       .return_lse = true},
      {.b = 1, .hq = 2, .hkv = 1, .nq = 257, .nk = 190, .d = 80, .causal = true, .align = TL, .return_lse = false},
      {.b = 2, .hq = 2, .hkv = 2, .nq = 127, .nk = 255, .d = 32, .layout = NHD, .granularity = G::per_thread,
       .return_lse = false},
      {.b = 1, .hq = 2, .hkv = 2, .nq = 100, .nk = 100, .d = 96, .dtype = FP16, .return_lse = false,
       .storage = Storage::padded},
      {.b = 2, .hq = 2, .hkv = 1, .nq = 129, .nk = 200, .d = 100, .granularity = G::per_thread,
       .return_lse = false, .storage = Storage::padded},
      {.b = 1, .hq = 3, .hkv = 3, .nq = 65, .nk = 65, .d = 127, .layout = NHD, .causal = true, .align = BR,
       .return_lse = false, .storage = Storage::padded, .strided_out = true},
      {.b = 4, .hq = 40, .hkv = 8, .nq = 300, .nk = 300, .d = 128, .return_lse = false},
      {.b = 4, .hq = 40, .hkv = 40, .nq = 300, .nk = 257, .d = 64, .layout = NHD, .causal = true, .align = TL,
       .granularity = G::per_thread, .return_lse = false},
      {.b = 4, .hq = 40, .hkv = 8, .nq = 300, .nk = 129, .d = 128, .causal = true, .align = BR,
       .return_lse = false},
      {.b = 4, .hq = 40, .hkv = 8, .nq = 300, .nk = 100, .d = 128, .layout = NHD, .return_lse = false,
       .dist = D::heavy_tailed},
      {.b = 3, .hq = 40, .hkv = 10, .nq = 300, .nk = 129, .d = 100, .causal = true, .align = BR, .dtype = FP16,
       .return_lse = false, .storage = Storage::padded},
  };
}

// The call c with Q quantized in the kernel (the dispatch's own choice)
// against itself with Q left to the pre-pass (SAGE_SM90_Q_PREPASS=1): both
// paths quantize with the same arithmetic (cuda/quant/quantize_rows.cuh), so
// out and lse agree bit for bit; the pre-pass path is the one the other
// cases check against the emulation and float64.
void expect_q_paths_bit_identical(const Case& c, int device) {
  const std::uint64_t seed = fresh_seed();
  SCOPED_TRACE(c.describe() + " " + sage::test::seed_note(seed));
  const sage::ref::Inputs in = sage::ref::make_inputs(c.problem(), c.dist, seed, c.dtype);
  GpuResult in_kernel, by_prepass;
  {
    ScopedEnv env("SAGE_SM90_Q_PREPASS", "");
    ASSERT_NO_FATAL_FAILURE(run_on_gpu(c, in, device, &in_kernel));
    ASSERT_TRUE(in_kernel.sm90.q_in_kernel) << "the call does not take the in-kernel Q path";
  }
  {
    ScopedEnv prepass("SAGE_SM90_Q_PREPASS", "1");
    ASSERT_NO_FATAL_FAILURE(run_on_gpu(c, in, device, &by_prepass));
    ASSERT_FALSE(by_prepass.sm90.q_in_kernel);
  }
  EXPECT_EQ(count_nonfinite(in_kernel.out), 0);
  auto first_difference = [](const std::vector<float>& a, const std::vector<float>& b) -> std::int64_t {
    if (a.size() != b.size()) return 0;
    for (std::size_t i = 0; i < a.size(); ++i) {
      if (std::memcmp(&a[i], &b[i], sizeof(float)) != 0) return static_cast<std::int64_t>(i);
    }
    return -1;
  };
  const std::int64_t out_diff = first_difference(in_kernel.out, by_prepass.out);
  EXPECT_EQ(out_diff, -1) << "out differs first at element " << out_diff << ": "
                          << (out_diff >= 0 ? in_kernel.out[out_diff] : 0.f) << " vs "
                          << (out_diff >= 0 ? by_prepass.out[out_diff] : 0.f);
  const std::int64_t lse_diff = first_difference(in_kernel.lse, by_prepass.lse);
  EXPECT_EQ(lse_diff, -1) << "lse differs first at element " << lse_diff;
}

class Sm90QInKernel : public Sm90Test, public ::testing::WithParamInterface<Case> {};

TEST_P(Sm90QInKernel, EqualsQuantizedByThePrepass) { expect_q_paths_bit_identical(GetParam(), device()); }

// Long key sequences at D = 128, where the kernel quantized Q only under an
// environment switch before session 30 (4K keys and more): 4397 keys (a
// partial last key tile), 192 work items of 192 rows (more than an
// H100/H200 has SMs, so CTAs run later items too, and refill their one
// 16-bit Q buffer); causal bottom-right, so the last query tiles read them
// all; the LSE without smooth_k (no LSE correction, which would keep Q in
// the pre-pass).
TEST_F(Sm90Forward, QInKernelOverLongKeySequences) {
  Case c;
  c.b = 1, c.hq = 48, c.hkv = 8;
  c.d = 128;
  c.nq = 600;
  c.nk = 4397;
  c.smooth_k = false;
  c.return_lse = true;
  expect_q_paths_bit_identical(c, device());
  c.causal = true, c.align = CausalAlign::bottom_right;
  expect_q_paths_bit_identical(c, device());
}

INSTANTIATE_TEST_SUITE_P(Sm90, Sm90QInKernel, ::testing::ValuesIn(q_in_kernel_cases()), case_name);

// NaN / inf inputs (expect_nonfinite_inputs_give_nan): Q from the pre-pass
// (per-thread groups, causal, LSE with its smooth-K correction; smooth Q,
// the float-score softmax, K not smoothed: the pre-pass's K maxima on the
// 16-bit rows) and Q quantized in the kernel (per-thread without K
// smoothing, which leaves no LSE correction; per-warp at D = 128 and 64).
TEST_F(Sm90Forward, NonFiniteInputsGiveNaNAsTheEmulation) {
  const bool prepass = false, in_kernel = true;  // the sm90 Q path each case takes
  Case prepass_q;
  prepass_q.nq = 150, prepass_q.nk = 200;
  prepass_q.causal = true, prepass_q.align = CausalAlign::bottom_right;
  prepass_q.granularity = Granularity::per_thread;
  expect_nonfinite_inputs_give_nan(prepass_q, device(), sage::kSm90Geometry, prepass);
  Case raw_k = prepass_q;
  raw_k.smooth_k = false, raw_k.causal = false;
  expect_nonfinite_inputs_give_nan(raw_k, device(), sage::kSm90Geometry, in_kernel);
  Case smooth_q = raw_k;
  smooth_q.smooth_q = true, smooth_q.granularity = Granularity::per_warp;
  expect_nonfinite_inputs_give_nan(smooth_q, device(), sage::kSm90Geometry, prepass);
  for (const std::int64_t d : {128, 64}) {
    Case in_kernel_q;
    in_kernel_q.nq = in_kernel_q.nk = 130, in_kernel_q.d = d;
    in_kernel_q.return_lse = false;
    expect_nonfinite_inputs_give_nan(in_kernel_q, device(), sage::kSm90Geometry, in_kernel);
  }
}

// Which path a call takes, variant by variant: one call per variant (a
// description, a case, the path expected), each checked for that path
// (`took`: the GpuResult flag of the path) and a finite output.
struct PathVariant {
  const char* what;
  Case c;
  bool expected;
};
void expect_paths(const std::vector<PathVariant>& variants, int device, bool sage::detail::Sm90Paths::*took) {
  const std::uint64_t seed = fresh_seed();
  SCOPED_TRACE(sage::test::seed_note(seed));
  for (const PathVariant& v : variants) {
    SCOPED_TRACE(std::string(v.what) + ": " + v.c.describe());
    const sage::ref::Inputs in = sage::ref::make_inputs(v.c.problem(), v.c.dist, seed, v.c.dtype);
    GpuResult gpu;
    ASSERT_NO_FATAL_FAILURE(run_on_gpu(v.c, in, device, &gpu));
    EXPECT_EQ(gpu.sm90.*took, v.expected);
    EXPECT_EQ(count_nonfinite(gpu.out), 0);
  }
}

// The variants of `base` made by `add(what, expected, change)`.
template <class Fill>
std::vector<PathVariant> path_variants(const Case& base, Fill fill) {
  std::vector<PathVariant> variants;
  auto add = [&](const char* what, bool expected, auto change) {
    Case c = base;
    change(c);
    variants.push_back({what, c, expected});
  };
  fill(add);
  return variants;
}

// The calls that keep Q in the pre-pass: each condition of the in-kernel
// path, broken alone; and long calls, which no longer do.
TEST_F(Sm90Forward, QStaysInThePrepassWhereTheKernelCannotTakeIt) {
  Case base;
  base.nq = base.nk = 64;
  base.return_lse = false;
  const auto variants = path_variants(base, [](auto add) {
    add("the plain call", true, [](Case&) {});
    add("per-block groups", false, [](Case& c) { c.granularity = Granularity::per_block; });
    add("smooth_q", false, [](Case& c) { c.smooth_q = true; });
    add("LSE with smooth_k (the LSE correction)", false, [](Case& c) { c.return_lse = true; });
    add("rows TMA cannot read (D = 100, dense: 200-byte rows)", false, [](Case& c) { c.d = 100; });
    add("D = 128, 4097 keys (no length limit)", true, [](Case& c) { c.nk = 4097; });
    add("D = 128 causal, 4097 keys", true, [](Case& c) {
      c.causal = true;
      c.nk = 4097;
    });
  });
  expect_paths(variants, device(), &sage::detail::Sm90Paths::q_in_kernel);
}


// ------------------------------------------------------------------ K and V in clusters

// Calls whose K and V the pre-pass's cluster kernel quantizes (one cluster
// per head and tensor; sm90::quantizes_kv_in_clusters), over the cluster
// shapes (one to four 128-row tiles per CTA held in shared memory, up to 8
// CTAs; and heads that stream through those slots, with one to fourteen of a
// CTA's tiles read twice), partial
// last tiles and single keys, head dims padded inside the tiles, GQA,
// layouts, dtypes, granularities and smoothing, with Q quantized in the
// kernel and by the pre-pass's Q-only grid ahead of the clusters. The case
// table above checks the path against the emulation and float64 (it takes
// it wherever it can); here each call runs again on the two-kernel path
// (SAGE_PREPASS_KV_CLUSTERS=0). Without K and V smoothing no sum enters the
// quantization (V's extremes do not depend on their order): both paths must
// give the same bits. With it the means are summed in another order, so
// they may differ in their last bits, and the outputs only by the rare
// INT8 or FP8 code that flips with them.
std::vector<Case> kv_cluster_cases() {
  using namespace case_table;
  return {
      {.small = true, .b = 1, .hq = 2, .hkv = 2, .nq = 1, .nk = 1, .d = 128, .return_lse = false},
      {.small = true, .b = 2, .hq = 4, .hkv = 2, .nq = 33, .nk = 300, .d = 64, .layout = NHD, .smooth_k = false,
       .return_lse = true},
      {.b = 1, .hq = 4, .hkv = 4, .nq = 200, .nk = 1024, .d = 128, .return_lse = false, .dist = D::channel_bias},
      {.b = 1, .hq = 8, .hkv = 2, .nq = 129, .nk = 1531, .d = 128, .causal = true, .align = BR, .dtype = FP16,
       .smooth_v = true, .return_lse = false, .dist = D::outlier_channels},
      {.b = 2, .hq = 2, .hkv = 2, .nq = 300, .nk = 2048, .d = 128, .smooth_k = false, .return_lse = false,
       .storage = Storage::padded},
      {.b = 1, .hq = 2, .hkv = 1, .nq = 130, .nk = 2000, .d = 128, .granularity = G::per_thread, .return_lse = false,
       .dist = D::heavy_tailed},
      {.b = 1, .hq = 3, .hkv = 3, .nq = 64, .nk = 1900, .d = 96, .layout = NHD, .smooth_k = false,
       .return_lse = false},
      {.b = 1, .hq = 2, .hkv = 2, .nq = 100, .nk = 4096, .d = 64, .causal = true, .align = BR, .smooth_v = true,
       .return_lse = false},
      {.b = 2, .hq = 4, .hkv = 4, .nq = 3000, .nk = 3000, .d = 64, .dtype = FP16, .granularity = G::per_thread,
       .smooth_k = false, .return_lse = false, .storage = Storage::packed_qkv},
      // Streamed heads: D = 128 past 2048 keys, D = 64 past 4096.
      {.small = true, .b = 1, .hq = 2, .hkv = 1, .nq = 70, .nk = 2049, .d = 128, .smooth_k = false,
       .return_lse = false},
      {.b = 1, .hq = 4, .hkv = 2, .nq = 257, .nk = 4096, .d = 128, .causal = true, .return_lse = false,
       .dist = D::channel_bias},
      {.b = 2, .hq = 2, .hkv = 2, .nq = 100, .nk = 5003, .d = 120, .layout = NHD, .dtype = FP16, .smooth_v = true,
       .return_lse = false, .dist = D::outlier_channels},
      {.b = 1, .hq = 3, .hkv = 3, .nq = 64, .nk = 4097, .d = 64, .granularity = G::per_thread, .smooth_k = false,
       .return_lse = false, .storage = Storage::padded},
      {.b = 1, .hq = 2, .hkv = 2, .nq = 33, .nk = 11000, .d = 128, .causal = true, .align = BR, .smooth_v = true,
       .return_lse = false, .dist = D::heavy_tailed},
      // The ring's corners: D = 64 CTAs of 9 tiles through 4 slots (slot 0
      // holds tiles 0, 4 and 8: refilled twice in each pass); D = 128 CTAs of
      // 3 tiles where the last CTA has one (fewer tiles than its 2 slots,
      // with a partial last tile); and the longest streamed head.
      {.small = true, .b = 1, .hq = 2, .hkv = 2, .nq = 50, .nk = 9000, .d = 64, .layout = NHD, .return_lse = false,
       .dist = D::heavy_tailed},
      {.b = 1, .hq = 2, .hkv = 1, .nq = 130, .nk = 2400, .d = 128, .smooth_k = false, .return_lse = true,
       .dist = D::channel_bias},
      {.b = 1, .hq = 2, .hkv = 1, .nq = 16, .nk = sage::sm90::kKvStreamMaxKeys, .d = 128, .smooth_k = false,
       .return_lse = false},
  };
}

// A call's result on one of the sm_90 pre-pass's paths for K and V (`path`)
// against the two-kernel path's: without smoothing of K or V no channel
// sum enters the quantization (V's extremes do not depend on their order),
// so the bits must agree; with it the means are summed in another order,
// and only the rare INT8 or FP8 code that flips with them may differ.
void expect_matches_two_kernel_path(const Case& c, const GpuResult& path, const GpuResult& two_kernels) {
  EXPECT_EQ(count_nonfinite(path.out), 0);
  ASSERT_EQ(path.out.size(), two_kernels.out.size());
  if (!c.smooth_k && !c.smooth_v) {
    EXPECT_EQ(std::memcmp(path.out.data(), two_kernels.out.data(), path.out.size() * sizeof(float)), 0)
        << "out differs between the paths";
    EXPECT_EQ(std::memcmp(path.lse.data(), two_kernels.lse.data(), path.lse.size() * sizeof(float)), 0)
        << "lse differs between the paths";
    return;
  }
  const std::int64_t rows = c.b * c.hq * c.nq;
  std::vector<double> ref(two_kernels.out.begin(), two_kernels.out.end());
  const Metrics m = sage::ref::compare(ref.data(), path.out.data(), rows, c.d);
  EXPECT_GE(m.cos_sim, 0.99999) << "out of the path vs the two-kernel path";
  EXPECT_GE(m.worst_row_cos_sim, 0.9999);
  EXPECT_LE(m.rel_l1, 1e-3);
}

class Sm90KvClusters : public Sm90Test, public ::testing::WithParamInterface<Case> {};

TEST_P(Sm90KvClusters, AgreeWithTheTwoKernelPath) {
  const Case& c = GetParam();
  const std::uint64_t seed = fresh_seed();
  SCOPED_TRACE(c.describe() + " " + sage::test::seed_note(seed));
  const sage::ref::Inputs in = sage::ref::make_inputs(c.problem(), c.dist, seed, c.dtype);
  GpuResult clusters, two_kernels;
  ASSERT_NO_FATAL_FAILURE(run_on_gpu(c, in, device(), &clusters));
  ASSERT_TRUE(clusters.sm90.kv_in_clusters) << "the call does not take the cluster path";
  {
    ScopedEnv off("SAGE_PREPASS_KV_CLUSTERS", "0");
    ASSERT_NO_FATAL_FAILURE(run_on_gpu(c, in, device(), &two_kernels));
    ASSERT_FALSE(two_kernels.sm90.kv_in_clusters);
  }
  expect_matches_two_kernel_path(c, clusters, two_kernels);
}

INSTANTIATE_TEST_SUITE_P(Sm90, Sm90KvClusters, ::testing::ValuesIn(kv_cluster_cases()), case_name);

// The calls that keep the statistics kernel and the K / V jobs: each
// condition of the cluster path broken alone.
TEST_F(Sm90Forward, KvClustersOnlyWhereTheCallFits) {
  Case base;
  base.nq = base.nk = 256;
  base.return_lse = false;
  const auto variants = path_variants(base, [](auto add) {
    add("the plain call", true, [](Case&) {});
    add("LSE with smooth_k (the LSE correction)", false, [](Case& c) { c.return_lse = true; });
    add("LSE without smooth_k", true, [](Case& c) { c.return_lse = true, c.smooth_k = false; });
    add("rows cp.async cannot read (D = 100, dense: 200-byte rows)", false, [](Case& c) { c.d = 100; });
    add("D = 128 at 2048 keys (8 CTAs of two tiles)", true, [](Case& c) { c.nk = 2048; });
    add("D = 128 past 2048 keys (streamed)", true, [](Case& c) { c.nk = 2049; });
    add("D = 64 at 4096 keys (8 CTAs of four tiles)", true, [](Case& c) { c.d = 64, c.nk = 4096; });
    add("D = 64 past 4096 keys (streamed)", true, [](Case& c) { c.d = 64, c.nk = 4097; });
    add("D = 128 at kKvStreamMaxKeys keys (streamed)", true,
        [](Case& c) { c.nq = 16, c.nk = sage::sm90::kKvStreamMaxKeys; });
    add("D = 128 past kKvStreamMaxKeys keys", false,
        [](Case& c) { c.nq = 16, c.nk = sage::sm90::kKvStreamMaxKeys + 1; });
  });
  expect_paths(variants, device(), &sage::detail::Sm90Paths::kv_in_clusters);
  {
    ScopedEnv held_only("SAGE_PREPASS_KV_STREAM_KEYS", "0");
    Case streamed = base, held = base;
    streamed.nk = 2049, held.nk = 2048;
    expect_paths({{"SAGE_PREPASS_KV_STREAM_KEYS=0, D = 128 past 2048 keys", streamed, false},
                  {"SAGE_PREPASS_KV_STREAM_KEYS=0, D = 128 at 2048 keys", held, true}},
                 device(), &sage::detail::Sm90Paths::kv_in_clusters);
  }
  ScopedEnv off("SAGE_PREPASS_KV_CLUSTERS", "0");
  expect_paths({{"SAGE_PREPASS_KV_CLUSTERS=0", base, false}}, device(), &sage::detail::Sm90Paths::kv_in_clusters);
}

// ------------------------------------------------------------------ K and V by head jobs

// Calls whose K and V the pre-pass's head-jobs kernel quantizes (one CTA job
// per head and tensor, where there are jobs for about every SM: 2 * B * Hkv
// at least 3/4 of the SMs; sm90::kv_head_job_shape), taken here
// with SAGE_PREPASS_KV_HEAD_JOBS_KEYS: single keys and partial last tiles,
// head dims padded inside the rows, GQA, both layouts and dtypes, padded and
// packed storage, causal, and Q from the pre-pass's Q-only grid ahead of the
// jobs (smooth_q), on a workspace of 32-bit ones (the kernel must reset the
// claim counters it hands on). Each call runs at every split of its jobs
// over CTAs that kHeadJobSplits names and at the CTAs per SM that
// kHeadJobsPerSm names, and on the two-kernel path
// (SAGE_PREPASS_KV_CLUSTERS=0: expect_matches_two_kernel_path; mean_k is
// summed in another order here, kv_head_jobs.cu). Each table has 128 jobs;
// on a device with fewer SMs the case runs with fewer heads
// (with_head_jobs_for).
std::vector<Case> kv_head_job_cases() {
  using namespace case_table;
  return {
      {.small = true, .b = 2, .hq = 32, .hkv = 32, .nq = 1, .nk = 1, .d = 128, .smooth_k = false, .return_lse = false},
      {.small = true, .b = 1, .hq = 64, .hkv = 64, .nq = 17, .nk = 300, .d = 128, .return_lse = false,
       .dist = D::channel_bias},
      {.b = 2, .hq = 64, .hkv = 32, .nq = 127, .nk = 1531, .d = 120, .layout = NHD, .dtype = FP16, .smooth_k = false,
       .return_lse = true},
      {.b = 4, .hq = 16, .hkv = 16, .nq = 200, .nk = 1024, .d = 128, .causal = true, .align = BR, .return_lse = false,
       .dist = D::outlier_channels, .storage = Storage::padded},
      {.b = 2, .hq = 32, .hkv = 32, .nq = 100, .nk = 2049, .d = 128, .return_lse = false, .dist = D::heavy_tailed,
       .smooth_q = true},
      {.b = 2, .hq = 32, .hkv = 32, .nq = 2048, .nk = 2048, .d = 96, .smooth_k = false, .return_lse = false,
       .storage = Storage::packed_qkv},
  };
}

// Case c with as many kv heads as one wave of head jobs takes on a device
// of `sms` SMs, where c's own do not fit that wave (kv_head_jobs_fit: the
// tables' 128 jobs are more than a 114-SM H100 PCIe has SMs); the query
// heads keep their group size.
Case with_head_jobs_for(Case c, int sms) {
  if (sage::quant::kv_head_jobs_fit(2 * c.b * c.hkv, sms)) return c;
  const std::int64_t group = c.hq / c.hkv;
  c.hkv = std::max<std::int64_t>(1, sms / (2 * c.b));
  c.hq = c.hkv * group;
  return c;
}

// The CTAs per head job the cases run at (SAGE_PREPASS_KV_HEAD_JOB_SPLIT):
// unset (the default: the rule, quant::kv_head_job_split), one CTA per job,
// and clusters of 2 to 8 (3: runs of tiles that are not a power of two; 8
// at 300 keys: ranks without rows).
constexpr const char* kHeadJobSplits[] = {nullptr, "1", "2", "3", "4", "8"};

// And the CTAs per SM (SAGE_PREPASS_KV_HEAD_JOBS_PER_SM) each case also runs
// at with the split unset, one and two (the rule is the unset row above).
constexpr const char* kHeadJobsPerSm[] = {"1", "2"};

// The shape (CTAs per job and per SM) that a split and a per-SM count of
// the tables above ask for, for case c on a device of `sms` SMs.
sage::quant::KvHeadJobShape head_job_shape_asked(const char* split, const char* per_sm, const Case& c, int sms) {
  constexpr int kRowBytes = sage::quant::kKvHeadJobsDp * 2;  // 16-bit rows, padded
  return sage::quant::kv_head_job_shape(2LL * c.b * c.hkv, c.nk, sms, kRowBytes, split ? std::atoi(split) : 0,
                                        per_sm ? std::atoi(per_sm) : 0);
}

class Sm90KvHeadJobs : public Sm90Test, public ::testing::WithParamInterface<Case> {};

TEST_P(Sm90KvHeadJobs, AgreeWithTheTwoKernelPath) {
  const Case c = with_head_jobs_for(GetParam(), sm_count());
  const std::uint64_t seed = fresh_seed();
  SCOPED_TRACE(c.describe() + " " + sage::test::seed_note(seed));
  const sage::ref::Inputs in = sage::ref::make_inputs(c.problem(), c.dist, seed, c.dtype);
  GpuResult two_kernels;
  {
    ScopedEnv off("SAGE_PREPASS_KV_CLUSTERS", "0");
    ASSERT_NO_FATAL_FAILURE(run_on_gpu(c, in, device(), &two_kernels));
    ASSERT_FALSE(two_kernels.sm90.kv_head_jobs);
  }
  ScopedEnv on("SAGE_PREPASS_KV_HEAD_JOBS_KEYS", "1000000");
  auto run_at = [&](const char* split, const char* per_sm) {
    SCOPED_TRACE(std::string("SAGE_PREPASS_KV_HEAD_JOB_SPLIT=") + (split ? split : "(unset)") +
                 " SAGE_PREPASS_KV_HEAD_JOBS_PER_SM=" + (per_sm ? per_sm : "(unset)"));
    ScopedEnv ctas("SAGE_PREPASS_KV_HEAD_JOB_SPLIT", split);
    ScopedEnv resident("SAGE_PREPASS_KV_HEAD_JOBS_PER_SM", per_sm);
    GpuResult jobs;
    ASSERT_NO_FATAL_FAILURE(run_on_gpu(c, in, device(), &jobs, /*repeat=*/true, /*workspace_word=*/1u));
    ASSERT_TRUE(jobs.sm90.kv_head_jobs) << "the call does not take the head-jobs path";
    ASSERT_FALSE(jobs.sm90.kv_in_clusters);
    // (An H100 / H200 places clusters of up to 8 of these CTAs: a shape
    // the device refused must not pass here as a split.)
    const sage::quant::KvHeadJobShape asked = head_job_shape_asked(split, per_sm, c, sm_count());
    ASSERT_EQ(jobs.sm90.kv_head_job_ctas, asked.ctas);
    ASSERT_EQ(jobs.sm90.kv_head_jobs_per_sm, asked.per_sm);
    expect_matches_two_kernel_path(c, jobs, two_kernels);
  };
  for (const char* split : kHeadJobSplits) ASSERT_NO_FATAL_FAILURE(run_at(split, nullptr));
  for (const char* per_sm : kHeadJobsPerSm) ASSERT_NO_FATAL_FAILURE(run_at(nullptr, per_sm));
  // The concurrent pre-pass (SAGE_PREPASS_CONCURRENT=H:P), where the call
  // takes it (not causal, Q quantized in the kernel): a quarter of the
  // heads first, the rest on a sixteenth of the SMs, from a workspace of
  // ones (every flag raised, every counter non-zero: the first launch must
  // clear them, or the kernel reads codes not yet written).
  const std::int64_t kv_heads = c.b * c.hkv;
  const std::string concurrent =
      std::to_string(std::max<std::int64_t>(1, kv_heads / 4)) + ":" + std::to_string(std::max(1, sm_count() / 16));
  SCOPED_TRACE("SAGE_PREPASS_CONCURRENT=" + concurrent);
  ScopedEnv on_the_side("SAGE_PREPASS_CONCURRENT", concurrent.c_str());
  GpuResult side;
  ASSERT_NO_FATAL_FAILURE(run_on_gpu(c, in, device(), &side, /*repeat=*/true, /*workspace_word=*/1u));
  ASSERT_TRUE(side.sm90.kv_head_jobs);
  const bool takes_it = !c.causal && side.sm90.q_in_kernel && kv_heads > 1;
  ASSERT_EQ(side.sm90.concurrent_heads, takes_it ? std::max<std::int64_t>(1, kv_heads / 4) : 0);
  expect_matches_two_kernel_path(c, side, two_kernels);
}

INSTANTIATE_TEST_SUITE_P(Sm90, Sm90KvHeadJobs, ::testing::ValuesIn(kv_head_job_cases()), case_name);

// The calls that keep the head-jobs kernel off: each of its conditions
// broken alone (kv_head_jobs_path).
TEST_F(Sm90Forward, KvHeadJobsOnlyWhereTheCallFits) {
  Case base;
  base.b = 2, base.hq = base.hkv = 32, base.nq = base.nk = 256;
  base.return_lse = false;
  base = with_head_jobs_for(base, sm_count());
  {
    ScopedEnv on("SAGE_PREPASS_KV_HEAD_JOBS_KEYS", "4096");
    const auto variants = path_variants(base, [](auto add) {
      add("the plain call", true, [](Case&) {});
      add("4096 keys", true, [](Case& c) { c.nk = 4096; });
      add("past SAGE_PREPASS_KV_HEAD_JOBS_KEYS", false, [](Case& c) { c.nk = 4097; });
      add("few heads (a job for 8 of the SMs)", false, [](Case& c) { c.b = 1, c.hq = c.hkv = 4; });
      add("more jobs than SMs (320)", false, [](Case& c) { c.b = 2, c.hq = c.hkv = 80; });
      add("D = 64", false, [](Case& c) { c.d = 64; });
      add("smooth_v", false, [](Case& c) { c.smooth_v = true; });
      add("per-thread groups", false, [](Case& c) { c.granularity = Granularity::per_thread; });
      add("LSE with smooth_k (the LSE correction)", false, [](Case& c) { c.return_lse = true; });
      add("rows cp.async cannot read (D = 100, dense: 200-byte rows)", false, [](Case& c) { c.d = 100; });
    });
    expect_paths(variants, device(), &sage::detail::Sm90Paths::kv_head_jobs);
    ScopedEnv off("SAGE_PREPASS_KV_CLUSTERS", "0");
    expect_paths({{"SAGE_PREPASS_KV_CLUSTERS=0", base, false}}, device(), &sage::detail::Sm90Paths::kv_head_jobs);
  }
  Case longer = base;
  longer.nk = sage::sm90::kKvHeadJobsMaxKeys + 1;
  expect_paths({{"the default limit (kKvHeadJobsMaxKeys)", base, sage::sm90::kKvHeadJobsMaxKeys >= base.nk},
                {"past the default limit", longer, false}},
               device(), &sage::detail::Sm90Paths::kv_head_jobs);
}

// Where the rule takes the concurrent pre-pass (kConcurrentPrepassMinKeys,
// on the head-jobs path) and where it does not: each condition broken
// alone, and SAGE_PREPASS_CONCURRENT turning it off or forcing it.
TEST_F(Sm90Forward, ConcurrentPrepassOnlyWhereTheRuleTakesIt) {
  const int first = sage::sm90::kConcurrentPrepassFirstHeads;
  Case base;  // a head job per SM (kv_head_jobs_fit)
  base.b = 1, base.hq = base.hkv = sm_count() / 2, base.nq = 200, base.nk = sage::sm90::kKvHeadJobsMaxKeys;
  base.return_lse = false;
  struct Variant {
    const char* what;
    Case c;
    const char* env;  // SAGE_PREPASS_CONCURRENT (nullptr: unset)
    int expected;
    bool head_jobs = true;  // whether the call stays on the head-jobs path (false: the rule never decides)
  };
  auto with = [&](auto change) {
    Case c = base;
    change(c);
    return c;
  };
  const std::vector<Variant> variants = {
      {"the plain call", base, nullptr, first},
      {"GQA, as many kv heads", with([](Case& c) { c.hq = 2 * c.hkv; }), nullptr, first},
      {"two batches", with([](Case& c) { c.b = 2, c.hq = c.hkv = c.hkv / 2; }), nullptr, first},
      {"kConcurrentPrepassMinKeys keys", with([](Case& c) { c.nk = sage::sm90::kConcurrentPrepassMinKeys; }),
       nullptr, 0},
      {"off the head-jobs path (a job for a quarter of the SMs)", with([](Case& c) { c.hq = c.hkv = c.hkv / 4; }),
       nullptr, 0, false},
      {"causal", with([](Case& c) { c.causal = true; }), nullptr, 0},
      {"Q from the pre-pass (smooth_q: its Q-only grid before the head jobs)",
       with([](Case& c) { c.smooth_q = true; }), nullptr, 0},
      {"D = 64 (no head jobs either)", with([](Case& c) { c.d = 64; }), nullptr, 0, false},
      {"Q from the pre-pass (per-block groups: no head jobs either)",
       with([](Case& c) { c.granularity = Granularity::per_block; }), nullptr, 0, false},
      {"SAGE_PREPASS_CONCURRENT=0", base, "0", 0},
      {"SAGE_PREPASS_CONCURRENT=2:8 at 1K keys", with([](Case& c) { c.nk = 1024; }), "2:8", 2},
  };
  const std::uint64_t seed = fresh_seed();
  SCOPED_TRACE(sage::test::seed_note(seed));
  for (const Variant& v : variants) {
    SCOPED_TRACE(std::string(v.what) + ": " + v.c.describe());
    ScopedEnv env("SAGE_PREPASS_CONCURRENT", v.env);
    const sage::ref::Inputs in = sage::ref::make_inputs(v.c.problem(), v.c.dist, seed, v.c.dtype);
    GpuResult gpu;
    ASSERT_NO_FATAL_FAILURE(run_on_gpu(v.c, in, device(), &gpu));
    EXPECT_EQ(gpu.sm90.kv_head_jobs, v.head_jobs);
    EXPECT_EQ(gpu.sm90.concurrent_heads, v.expected);
    EXPECT_EQ(count_nonfinite(gpu.out), 0);
  }
}

// The default concurrent pre-pass (the rule's shape: kConcurrentPrepassFirstHeads
// heads first, the rest on 2 of every 11 SMs) on calls of 4096 and 3500
// keys, from a workspace of ones, against the same calls with it off
// (SAGE_PREPASS_CONCURRENT=0: every head job in one launch before the
// kernel). The jobs write the same codes, so the outputs match bit for bit
// where K is not smoothed; mean_k is summed over other CTA splits in the
// second launch (one CTA per job), so smoothed K only agrees closely
// (expect_matches_two_kernel_path).
TEST_F(Sm90Forward, ConcurrentPrepassDefaultMatchesTheHeadJobsInOneLaunch) {
  using namespace case_table;
  const std::vector<Case> cases = {
      {.b = 2, .hq = 64, .hkv = 32, .nq = 333, .nk = 4096, .d = 128, .layout = NHD, .dtype = FP16,
       .smooth_k = false, .return_lse = true, .dist = D::heavy_tailed},
      {.b = 2, .hq = 32, .hkv = 32, .nq = 1000, .nk = 3500, .d = 120, .return_lse = false,
       .dist = D::channel_bias},
  };
  for (const Case& base : cases) {
    const Case c = with_head_jobs_for(base, sm_count());
    const std::uint64_t seed = fresh_seed();
    SCOPED_TRACE(c.describe() + " " + sage::test::seed_note(seed));
    const sage::ref::Inputs in = sage::ref::make_inputs(c.problem(), c.dist, seed, c.dtype);
    GpuResult one_launch;
    {
      ScopedEnv off("SAGE_PREPASS_CONCURRENT", "0");
      ASSERT_NO_FATAL_FAILURE(run_on_gpu(c, in, device(), &one_launch));
      ASSERT_TRUE(one_launch.sm90.kv_head_jobs);
      ASSERT_EQ(one_launch.sm90.concurrent_heads, 0);
    }
    ScopedEnv unset("SAGE_PREPASS_CONCURRENT", nullptr);
    GpuResult concurrent;
    ASSERT_NO_FATAL_FAILURE(run_on_gpu(c, in, device(), &concurrent, /*repeat=*/true, /*workspace_word=*/1u));
    ASSERT_EQ(concurrent.sm90.concurrent_heads, sage::sm90::kConcurrentPrepassFirstHeads);
    expect_matches_two_kernel_path(c, concurrent, one_launch);
  }
}

// ------------------------------------------------------------------ statistics schedule

// Runs call c twice on a workspace of 32-bit ones (which reads as set flags
// and non-zero counters: the pre-pass must reset what it relies on) and
// expects out (and the LSE) bit for bit as in `expected`, the run of
// another schedule (named by `what`).
void expect_same_bits_from_dirty_workspace(const Case& c, const sage::ref::Inputs& in, int device,
                                           const GpuResult& expected, const char* what) {
  GpuResult r;
  ASSERT_NO_FATAL_FAILURE(run_on_gpu(c, in, device, &r, /*repeat=*/true, /*workspace_word=*/1u));
  ASSERT_EQ(r.out.size(), expected.out.size());
  EXPECT_EQ(std::memcmp(r.out.data(), expected.out.data(), r.out.size() * sizeof(float)), 0)
      << "out differs from " << what;
  if (c.return_lse) {
    EXPECT_EQ(std::memcmp(r.lse.data(), expected.lse.data(), r.lse.size() * sizeof(float)), 0)
        << "lse differs from " << what;
  }
}

// Calls on the two-kernel path (statistics kernel, then the quantize grid's
// K and V jobs, each waiting for its own head's statistics flags), run with
// the statistics kernel's items spread over one CTA per item (every head at
// once), over a single CTA (heads strictly one after another, the K and V
// jobs of later heads waiting long), over three, and over the default count
// (three per two SMs, 198 on an H200: fewer than the last case's 256 items): the partials are the
// same sums in the same order, so every schedule must give the same bits.
// Those runs start from a workspace of 32-bit ones, in which every flag
// reads as set: a flag the statistics kernel failed to clear before the
// quantize grid starts lets a job read that garbage as statistics. Why each
// case is off the cluster path, with streamed heads turned off
// (SAGE_PREPASS_KV_STREAM_KEYS=0): 2500 keys (D = 128 clusters hold up to
// 2048), the LSE correction (its Q jobs wait for K's statistics too), rows
// the statistics kernel reads element by element (D = 100, unaligned), 5000
// keys (D = 64 clusters hold up to 4096), 4096 keys.
std::vector<Case> stats_schedule_cases() {
  using namespace case_table;
  return {
      {.small = true, .b = 1, .hq = 4, .hkv = 2, .nq = 77, .nk = 2500, .d = 128, .causal = true, .align = BR,
       .return_lse = false},
      {.small = true, .b = 1, .hq = 2, .hkv = 2, .nq = 300, .nk = 700, .d = 64, .layout = NHD, .return_lse = true},
      {.b = 1, .hq = 3, .hkv = 3, .nq = 129, .nk = 1531, .d = 100, .dtype = FP16, .return_lse = false,
       .dist = D::channel_bias},
      {.b = 1, .hq = 2, .hkv = 1, .nq = 200, .nk = 5000, .d = 64, .granularity = G::per_thread, .smooth_v = true,
       .return_lse = false, .dist = D::outlier_channels},
      {.b = 2, .hq = 16, .hkv = 16, .nq = 64, .nk = 4096, .d = 128, .return_lse = false, .storage = Storage::padded},
  };
}

class Sm90StatsSchedule : public Sm90Test, public ::testing::WithParamInterface<Case> {};

TEST_P(Sm90StatsSchedule, EveryScheduleGivesTheSameBits) {
  const Case& c = GetParam();
  const std::uint64_t seed = fresh_seed();
  SCOPED_TRACE(c.describe() + " " + sage::test::seed_note(seed));
  const sage::ref::Inputs in = sage::ref::make_inputs(c.problem(), c.dist, seed, c.dtype);
  ScopedEnv held_only("SAGE_PREPASS_KV_STREAM_KEYS", "0");
  GpuResult all_at_once;
  {
    ScopedEnv ctas("SAGE_PREPASS_STATS_CTAS", "0");
    ASSERT_NO_FATAL_FAILURE(run_on_gpu(c, in, device(), &all_at_once));
  }
  ASSERT_FALSE(all_at_once.sm90.kv_in_clusters) << "the call takes the cluster path: no statistics kernel";
  EXPECT_EQ(count_nonfinite(all_at_once.out), 0);
  for (const char* ctas : {"1", "3", ""}) {  // "": the default count
    SCOPED_TRACE(std::string("SAGE_PREPASS_STATS_CTAS=") + ctas);
    ScopedEnv env("SAGE_PREPASS_STATS_CTAS", ctas);
    expect_same_bits_from_dirty_workspace(c, in, device(), all_at_once, "the one-CTA-per-item schedule");
  }
}

INSTANTIATE_TEST_SUITE_P(Sm90, Sm90StatsSchedule, ::testing::ValuesIn(stats_schedule_cases()), case_name);

// ------------------------------------------------------------------ work-item schedule

// The persistent kernel's items (qk_int8_pv_fp8_sm90_scheduler.cuh) run
// over capped grids (SAGE_SM90_CTAS: 1, 3 and 7 CTAs, so that causal calls
// that claim take most of their items from the workspace counter, and 64,
// few items per CTA), with claims forced on and off (SAGE_SM90_CLAIMS; where
// the D = 128 kernel quantizes Q with two consumers, causal calls of up to
// 1024 keys, they run their steps across items and the switch picks between
// the build that computes its static rounds and the one that reads claimed
// items) and other causal window orders, static
// and claimed (SAGE_SM90_WINDOW_HEADS): each item's arithmetic does not depend
// on which CTA runs it or when, so every schedule must give the default's
// bits. The capped runs start from a workspace of 32-bit ones (claim
// counters that must be zeroed by the pre-pass) and run twice on it.
// Cases: GQA with bottom-right alignment and Nq != Nk; rows that see no key
// (Nq > Nk, bottom-right: items of zero key tiles; Q quantized in the
// kernel, steps across items); D = 64 with top-left alignment and LSE;
// smooth_q (its key-offset warps read the published items too); D = 128
// with Q quantized in the kernel over 12 heads of 1531 keys (three
// consumers, one 16-bit Q buffer refilled item after item) and over 16
// heads of 1000 keys (steps across items, every item at least one key
// tile: the hand-over between items overlapped); non-causal calls (static
// rounds over noncausal_item's tilings, the model's for each grid and
// forced ones, over the capped grids too: short items of 128 rows and fewer,
// whose idle consumers only keep the barriers) over 2000, 1000 and 600 rows.
std::vector<Case> schedule_cases() {
  using namespace case_table;
  return {
      {.small = true, .b = 2, .hq = 6, .hkv = 2, .nq = 700, .nk = 900, .d = 128, .causal = true, .align = BR},
      {.small = true, .b = 1, .hq = 4, .hkv = 4, .nq = 900, .nk = 300, .d = 128, .causal = true, .align = BR,
       .return_lse = false},
      {.b = 1, .hq = 5, .hkv = 5, .nq = 1531, .nk = 1531, .d = 64, .causal = true, .dtype = FP16},
      {.b = 1, .hq = 3, .hkv = 3, .nq = 1000, .nk = 1000, .d = 128, .causal = true, .return_lse = false,
       .smooth_q = true},
      {.b = 1, .hq = 12, .hkv = 12, .nq = 1531, .nk = 1531, .d = 128, .causal = true, .dtype = FP16,
       .return_lse = false},
      {.b = 1, .hq = 16, .hkv = 8, .nq = 1000, .nk = 1000, .d = 128, .causal = true, .return_lse = false},
      {.b = 1, .hq = 3, .hkv = 1, .nq = 2000, .nk = 777, .d = 128, .return_lse = false},
      {.b = 2, .hq = 6, .hkv = 3, .nq = 1000, .nk = 1000, .d = 128, .return_lse = false},
      {.b = 1, .hq = 7, .hkv = 7, .nq = 600, .nk = 513, .d = 64, .dtype = FP16},
  };
}

class Sm90WorkSchedule : public Sm90Test, public ::testing::WithParamInterface<Case> {};

TEST_P(Sm90WorkSchedule, EveryScheduleGivesTheSameBits) {
  const Case& c = GetParam();
  const std::uint64_t seed = fresh_seed();
  SCOPED_TRACE(c.describe() + " " + sage::test::seed_note(seed));
  const sage::ref::Inputs in = sage::ref::make_inputs(c.problem(), c.dist, seed, c.dtype);
  GpuResult reference;
  ASSERT_NO_FATAL_FAILURE(run_on_gpu(c, in, device(), &reference));
  EXPECT_EQ(count_nonfinite(reference.out), 0);
  if (c.d == 128 && c.causal && !c.return_lse && !c.smooth_q) {
    ASSERT_TRUE(reference.sm90.q_in_kernel)
        << "the case should reach the in-kernel Q path (up to 1024 keys: steps across items)";
  }
  for (const char* ctas : {"1", "3", "7", "64"}) {
    for (const char* claims : {"1", "0"}) {
      for (const char* window : {"", "1", "3"}) {
        SCOPED_TRACE(std::string("SAGE_SM90_CTAS=") + ctas + " SAGE_SM90_CLAIMS=" + claims +
                     " SAGE_SM90_WINDOW_HEADS=" + window);
        ScopedEnv cap("SAGE_SM90_CTAS", ctas);
        ScopedEnv claim("SAGE_SM90_CLAIMS", claims);
        ScopedEnv order("SAGE_SM90_WINDOW_HEADS", window);
        ASSERT_NO_FATAL_FAILURE(
            expect_same_bits_from_dirty_workspace(c, in, device(), reference, "the default schedule"));
      }
    }
  }
  if (c.causal) return;
  // Non-causal tilings (SAGE_SM90_FULL_ITEMS: full items per head, the rest
  // in short items): none, one, as many as fit, each over a few CTAs (so
  // that idle consumers walk several items in a row) and the whole grid.
  for (const char* full : {"0", "1", "1000000"}) {
    for (const char* ctas : {"1", "3", "7", ""}) {
      SCOPED_TRACE(std::string("SAGE_SM90_FULL_ITEMS=") + full + " SAGE_SM90_CTAS=" + ctas);
      ScopedEnv tiling("SAGE_SM90_FULL_ITEMS", full);
      ScopedEnv cap("SAGE_SM90_CTAS", ctas);
      ASSERT_NO_FATAL_FAILURE(
          expect_same_bits_from_dirty_workspace(c, in, device(), reference, "the default schedule"));
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Sm90, Sm90WorkSchedule, ::testing::ValuesIn(schedule_cases()), case_name);

TEST_F(Sm90Forward, PublishedAccuracyGaussianN4096D128) {
  Case c;  // default options (per-warp INT8 QK, smooth K, FP8 PV), bf16, HND, plus return_lse
  c.b = 1, c.hq = 4, c.hkv = 4, c.nq = 4096, c.nk = 4096, c.d = 128;
  Metrics m;
  ASSERT_NO_FATAL_FAILURE(run_case(c, device(), sage::kSm90Geometry, "sm90-published", &m));
  std::printf("[sm90-published] Gaussian B=1 H=4 N=4096 D=128 vs float64: cos_sim=%.6f (>= %.4f) "
              "rel_l1=%.5f (<= %.2f)\n",
              m.cos_sim, kPublishedMinCos, m.rel_l1, kPublishedMaxRelL1);
  EXPECT_GE(m.cos_sim, kPublishedMinCos);
  EXPECT_LE(m.rel_l1, kPublishedMaxRelL1);
}

// ------------------------------------------------------------------ 64-bit offsets

// Approximately N(0, 1) values (Irwin-Hall sum of four 16-bit uniforms) from
// a hash of (seed, tensor, index): fills multi-GB tensors in parallel, with
// different values in every head, so that an offset that wraps would read
// the wrong data and be caught.
std::uint64_t mix64(std::uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}
float hashed_normal(std::uint64_t seed, std::uint64_t tensor, std::uint64_t index) {
  const std::uint64_t h = mix64(seed ^ mix64(tensor * 0x9E3779B97F4A7C15ull + index));
  float s = 0.0f;
  for (int i = 0; i < 4; ++i) s += static_cast<float>((h >> (16 * i)) & 0xFFFF) * (1.0f / 65536.0f);
  return (s - 2.0f) * 1.7320508f;  // Irwin-Hall(4): mean 2, variance 1/3
}

// Dense bf16 bits of a [rows x D] tensor, filled in parallel.
std::vector<std::uint16_t> hashed_bf16(std::uint64_t seed, std::uint64_t tensor, std::int64_t elems) {
  std::vector<std::uint16_t> bits(static_cast<std::size_t>(elems));
  constexpr std::int64_t kChunk = 1 << 22;
  sage::ref::parallel_for((elems + kChunk - 1) / kChunk, [&](std::int64_t c) {
    const std::int64_t end = std::min(elems, (c + 1) * kChunk);
    for (std::int64_t i = c * kChunk; i < end; ++i)
      bits[static_cast<std::size_t>(i)] =
          sage::num::float_to_bf16(hashed_normal(seed, tensor, static_cast<std::uint64_t>(i)));
  });
  return bits;
}

std::vector<double> bf16_to_double(const std::uint16_t* bits, std::int64_t n) {
  std::vector<double> out(static_cast<std::size_t>(n));
  for (std::int64_t i = 0; i < n; ++i) out[static_cast<std::size_t>(i)] = sage::num::bf16_to_float(bits[i]);
  return out;
}

// Counts NaN/Inf of a bf16 buffer, in parallel.
std::int64_t count_nonfinite_bf16(const std::vector<std::uint16_t>& bits) {
  const std::int64_t n = static_cast<std::int64_t>(bits.size());
  constexpr std::int64_t kChunk = 1 << 22;
  const std::int64_t chunks = (n + kChunk - 1) / kChunk;
  std::vector<std::int64_t> counts(static_cast<std::size_t>(chunks), 0);
  sage::ref::parallel_for(chunks, [&](std::int64_t c) {
    std::int64_t k = 0;
    const std::int64_t end = std::min(n, (c + 1) * kChunk);
    for (std::int64_t i = c * kChunk; i < end; ++i) k += (bits[static_cast<std::size_t>(i)] & 0x7F80) == 0x7F80;
    counts[static_cast<std::size_t>(c)] = k;
  });
  std::int64_t total = 0;
  for (std::int64_t k : counts) total += k;
  return total;
}

// Large dense HND bf16 problem, non-causal, default options + return_lse:
// uploads hashed inputs, runs, downloads out and lse.
struct LargeRun {
  std::int64_t B, H, N, D;
  std::uint64_t seed;
  std::vector<std::uint16_t> q, k, v, out;
  std::vector<float> lse;
};

// Sets *skip_reason instead of failing when the machine lacks the memory.
void run_large(LargeRun* r, int device, std::string* skip_reason) {
  const std::int64_t elems = r->B * r->H * r->N * r->D;
  const std::size_t tensor_bytes = static_cast<std::size_t>(elems) * sizeof(std::uint16_t);
  const std::size_t lse_bytes = static_cast<std::size_t>(r->B * r->H * r->N) * sizeof(float);
  if (available_host_bytes() < 4 * tensor_bytes + (4ull << 30)) {
    *skip_reason = "not enough free host memory (" + std::to_string(available_host_bytes() >> 20) + " MiB, need " +
                   std::to_string((4 * tensor_bytes >> 20) + 4096) + " MiB)";
    return;
  }

  AttentionOptions options;
  options.return_lse = true;
  auto view = [&](void* data) {
    return sage::make_contiguous_view(data, DType::bf16, {r->B, r->H, r->N, r->D}, device);
  };
  // The workspace (INT8 Q and K, FP8 V^T, scales) is about 1.5 bytes per
  // element of q; 2 bytes is a safe estimate before anything is allocated
  // (the library checks the pointers, so the real query needs the buffers).
  const std::size_t need = 4 * tensor_bytes + lse_bytes + static_cast<std::size_t>(elems) * 2 + (1ull << 30);
  if (free_device_bytes() < need) {
    *skip_reason = "not enough free GPU memory (" + std::to_string(free_device_bytes() >> 20) + " MiB free, need " +
                   std::to_string(need >> 20) + " MiB)";
    return;
  }

  r->q = hashed_bf16(r->seed, 1, elems);
  r->k = hashed_bf16(r->seed, 2, elems);
  r->v = hashed_bf16(r->seed, 3, elems);

  DeviceBuffer<std::uint16_t> dq(static_cast<std::size_t>(elems)), dk(static_cast<std::size_t>(elems)),
      dv(static_cast<std::size_t>(elems)), dout(static_cast<std::size_t>(elems));
  DeviceBuffer<float> dlse(static_cast<std::size_t>(r->B * r->H * r->N));
  SAGE_CUDA_CHECK(dq.status());
  SAGE_CUDA_CHECK(dk.status());
  SAGE_CUDA_CHECK(dv.status());
  SAGE_CUDA_CHECK(dout.status());
  SAGE_CUDA_CHECK(dlse.status());
  AttentionArgs args;
  args.q = view(dq.data());
  args.k = view(dk.data());
  args.v = view(dv.data());
  args.out = view(dout.data());
  args.lse = sage::make_contiguous_view(dlse.data(), DType::f32, {r->B, r->H, r->N}, device);
  std::size_t ws_bytes = 0;
  {
    const Status s = sage::attention_workspace_size(args, options, &ws_bytes);
    ASSERT_TRUE(s.is_ok()) << "attention_workspace_size: " << status_text(s);
  }
  if (free_device_bytes() < ws_bytes + (256ull << 20)) {
    *skip_reason = "not enough free GPU memory for the workspace (" + std::to_string(ws_bytes >> 20) + " MiB)";
    return;
  }
  DeviceBuffer<unsigned char> ws(std::max<std::size_t>(ws_bytes, 1));
  SAGE_CUDA_CHECK(ws.status());
  SAGE_CUDA_CHECK(dq.copy_from(r->q));
  SAGE_CUDA_CHECK(dk.copy_from(r->k));
  SAGE_CUDA_CHECK(dv.copy_from(r->v));
  SAGE_CUDA_CHECK(cudaMemset(dout.data(), 0xFF, tensor_bytes));
  SAGE_CUDA_CHECK(cudaMemset(dlse.data(), 0xFF, lse_bytes));

  StreamGuard stream;
  SAGE_CUDA_CHECK(cudaStreamCreateWithFlags(&stream.stream, cudaStreamNonBlocking));
  SAGE_CUDA_CHECK(cudaDeviceSynchronize());
  {
    const Status s = sage::attention_forward(args, options, ws.data(), ws_bytes,
                                             reinterpret_cast<sage::Stream>(stream.stream));
    ASSERT_TRUE(s.is_ok()) << "attention_forward: " << status_text(s);
  }
  SAGE_CUDA_CHECK(cudaStreamSynchronize(stream.stream));
  SAGE_CUDA_CHECK(cudaGetLastError());
  SAGE_CUDA_CHECK(dout.copy_to(r->out));
  SAGE_CUDA_CHECK(dlse.copy_to(r->lse));
}

// Whole-output checks of a large run: no NaN/Inf in out (poisoned: every
// element written) nor in lse (non-causal: every row sees keys).
void check_large_finite(const LargeRun& r) {
  const std::int64_t bad_out = count_nonfinite_bf16(r.out);
  EXPECT_EQ(bad_out, 0) << bad_out << " of " << r.out.size() << " output elements are NaN/Inf (or unwritten)";
  const std::int64_t bad_lse = count_nonfinite(r.lse);
  EXPECT_EQ(bad_lse, 0) << bad_lse << " of " << r.lse.size() << " lse entries are NaN/Inf (or unwritten)";
}

// (1) One head with N = 262144: Nq * Nk and the per-head score count are far
// beyond int32. 64 query rows (the first, the last, tile edges and random
// ones; 64 rather than 16 so that the cos_sim of the sample is a steady
// statistic: the numerics sit at ~0.9992 against the 0.999 bound) are
// compared with exact attention over all keys.
constexpr std::size_t kSampledRows = 64;
TEST_F(Sm90Forward, Offsets64BitLongSequenceN262144) {
  LargeRun r{1, 1, 262144, 64, fresh_seed(), {}, {}, {}, {}, {}};
  SCOPED_TRACE("B=1 H=1 N=262144 D=64 bf16 HND " + sage::test::seed_note(r.seed));
  std::string skip;
  ASSERT_NO_FATAL_FAILURE(run_large(&r, device(), &skip));
  if (!skip.empty()) GTEST_SKIP() << skip;
  check_large_finite(r);

  const std::int64_t N = r.N, D = r.D;
  std::vector<std::int64_t> sample = {0, 1, 127, 128, N / 2 - 1, N / 2, N - 129, N - 128, N - 2, N - 1};
  std::mt19937_64 pick(r.seed);
  while (sample.size() < kSampledRows) {
    sample.push_back(static_cast<std::int64_t>(pick() % static_cast<std::uint64_t>(N)));
  }

  // Non-causal, so the sampled rows form a small problem of their own.
  Problem p;
  p.nq = static_cast<std::int64_t>(sample.size());
  p.nk = N;
  p.head_dim = D;
  p.sm_scale = 1.0 / std::sqrt(static_cast<double>(D));
  std::vector<double> q(static_cast<std::size_t>(p.nq * D));
  std::vector<float> got(q.size()), got_lse(sample.size());
  for (std::size_t s = 0; s < sample.size(); ++s) {
    const std::int64_t row = sample[s];
    for (std::int64_t d = 0; d < D; ++d) {
      q[s * D + d] = sage::num::bf16_to_float(r.q[static_cast<std::size_t>(row * D + d)]);
      got[s * D + d] = sage::num::bf16_to_float(r.out[static_cast<std::size_t>(row * D + d)]);
    }
    got_lse[s] = r.lse[static_cast<std::size_t>(row)];
  }
  const std::vector<double> k = bf16_to_double(r.k.data(), N * D), v = bf16_to_double(r.v.data(), N * D);
  std::vector<double> ex(q.size()), ex_lse(sample.size());
  sage::ref::exact_attention(p, q.data(), k.data(), v.data(), ex.data(), ex_lse.data());
  const Metrics m = sage::ref::compare(ex.data(), got.data(), p.nq, D);
  const ExactBounds bounds = exact_bounds(Distribution::gaussian, true);
  expect_exact_bounds(m, bounds, "sampled rows vs exact float64");
  const double lse_err = check_lse("sampled lse vs exact", got_lse, ex_lse, std::vector<std::int64_t>(sample.size(), N),
                                   exact_lse_tol(bounds));
  print_metrics("sm90-64bit", "B=1 H=1 N=262144 D=64 (" + std::to_string(kSampledRows) + " sampled rows)", r.seed,
                nullptr, m, 0, lse_err);
}

// (2) B * H * N * D = 2 * 4608 * 2048 * 128 = 2.4e9 elements > 2^31 in each
// of q, k, v and out (heads 8192.. start past element 2^31); B * H = 9216
// stays inside the kernel's grid-y limit of 65535. About 19 GiB of inputs
// and outputs plus the workspace on the GPU, as much on the host. Sampled
// heads (both ends of each batch, both sides of the 2^31 boundary, random)
// are compared with exact attention.
TEST_F(Sm90Forward, Offsets64BitManyHeads) {
  LargeRun r{2, 4608, 2048, 128, fresh_seed(), {}, {}, {}, {}, {}};
  SCOPED_TRACE("B=2 H=4608 N=2048 D=128 bf16 HND " + sage::test::seed_note(r.seed));
  ASSERT_GT(r.B * r.H * r.N * r.D, std::int64_t{1} << 31);
  std::string skip;
  ASSERT_NO_FATAL_FAILURE(run_large(&r, device(), &skip));
  if (!skip.empty()) GTEST_SKIP() << skip;
  check_large_finite(r);

  const std::int64_t BH = r.B * r.H, N = r.N, D = r.D, head = N * D;
  std::vector<std::int64_t> heads = {0, r.H - 1, r.H, 8191, 8192, BH - 1};
  std::mt19937_64 pick(r.seed);
  for (int i = 0; i < 2; ++i) heads.push_back(static_cast<std::int64_t>(pick() % static_cast<std::uint64_t>(BH)));

  Problem p;
  p.nq = p.nk = N;
  p.head_dim = D;
  p.sm_scale = 1.0 / std::sqrt(static_cast<double>(D));
  // The hashed inputs are Irwin-Hall(4), close to Gaussian.
  const ExactBounds bounds = exact_bounds(Distribution::gaussian, true);
  for (std::int64_t h : heads) {
    SCOPED_TRACE("flattened head " + std::to_string(h) + " (b=" + std::to_string(h / r.H) +
                 ", h=" + std::to_string(h % r.H) + ", first element " + std::to_string(h * head) + ")");
    const std::size_t base = static_cast<std::size_t>(h * head);
    const std::vector<double> q = bf16_to_double(r.q.data() + base, head), k = bf16_to_double(r.k.data() + base, head),
                              v = bf16_to_double(r.v.data() + base, head);
    std::vector<float> got(static_cast<std::size_t>(head));
    for (std::int64_t i = 0; i < head; ++i) {
      got[static_cast<std::size_t>(i)] = sage::num::bf16_to_float(r.out[base + static_cast<std::size_t>(i)]);
    }
    const std::vector<float> got_lse(r.lse.begin() + h * N, r.lse.begin() + (h + 1) * N);
    std::vector<double> ex(static_cast<std::size_t>(head)), ex_lse(static_cast<std::size_t>(N));
    sage::ref::exact_attention(p, q.data(), k.data(), v.data(), ex.data(), ex_lse.data());
    const Metrics m = sage::ref::compare(ex.data(), got.data(), N, D);
    expect_exact_bounds(m, bounds, "sampled head vs exact float64");
    const double lse_err = check_lse("sampled head lse vs exact", got_lse, ex_lse,
                                     std::vector<std::int64_t>(got_lse.size(), N), exact_lse_tol(bounds));
    print_metrics("sm90-64bit", "B=2 H=4608 N=2048 D=128, head " + std::to_string(h), r.seed, nullptr, m, 0, lse_err);
  }
}

// The kernel alone (as the benchmark's kernel-only timing runs it, with no
// pre-pass to zero the claim counters) launched again and again on one
// workspace: each launch must leave the counters at zero for the next, or
// the next one's CTAs claim past items they never run (poisoned rows). At
// D = 64 (192-row items, read where the producer publishes them) and at
// D = 128 with Q quantized in the kernel (the build whose consumers run
// their steps across claimed items).
class Sm90KernelAlone : public Sm90Test, public ::testing::WithParamInterface<int> {};

TEST_P(Sm90KernelAlone, RelaunchedClaimsEveryItem) {
  const std::int64_t B = 1, H = 8, N = 1000, D = GetParam();
  const auto elements = static_cast<std::size_t>(B * H * N * D);
  DeviceBuffer<std::uint16_t> q{elements}, k{elements}, v{elements}, out{elements};
  for (cudaError_t e : {q.status(), k.status(), v.status(), out.status()}) SAGE_CUDA_CHECK(e);
  std::vector<std::uint16_t> host(elements);
  std::uint64_t tensor = 0;
  for (DeviceBuffer<std::uint16_t>* t : {&q, &k, &v}) {
    for (std::size_t i = 0; i < host.size(); ++i) host[i] = sage::num::float_to_bf16(hashed_normal(11, tensor, i));
    SAGE_CUDA_CHECK(t->copy_from(host));
    ++tensor;
  }
  AttentionArgs args;
  args.q = sage::make_contiguous_view(q.data(), DType::bf16, {B, H, N, D}, device());
  args.k = sage::make_contiguous_view(k.data(), DType::bf16, {B, H, N, D}, device());
  args.v = sage::make_contiguous_view(v.data(), DType::bf16, {B, H, N, D}, device());
  args.out = sage::make_contiguous_view(out.data(), DType::bf16, {B, H, N, D}, device());
  AttentionOptions options;
  options.causal = true;
  ScopedEnv cap("SAGE_SM90_CTAS", "3");  // 48 items of 192 rows (D = 64) or 64 of 128: all but 6 claimed
  ScopedEnv claim("SAGE_SM90_CLAIMS", "1");
  const sage::detail::Sm90Paths paths = sage::detail::gpu_sm90_paths(args, options);
  ASSERT_TRUE(paths.claims_items);
  ASSERT_TRUE(paths.q_in_kernel) << "the call should quantize Q in the kernel (at D = 128: steps across items)";
  std::size_t ws_bytes = 0;
  ASSERT_TRUE(sage::attention_workspace_size(args, options, &ws_bytes).is_ok());
  DeviceBuffer<unsigned char> ws(ws_bytes);
  SAGE_CUDA_CHECK(ws.status());
  SAGE_CUDA_CHECK(cudaMemset(ws.data(), 0xFF, ws_bytes));
  SAGE_CUDA_CHECK(cudaMemset(out.data(), 0xFF, out.size() * sizeof(std::uint16_t)));
  ASSERT_TRUE(sage::attention_forward(args, options, ws.data(), ws_bytes, nullptr).is_ok());
  SAGE_CUDA_CHECK(cudaDeviceSynchronize());
  std::vector<std::uint16_t> first;
  SAGE_CUDA_CHECK(out.copy_to(first));
  EXPECT_EQ(std::count(first.begin(), first.end(), kPoison16), 0) << "the whole call left rows unwritten";
  for (int launch = 0; launch < 3; ++launch) {
    SCOPED_TRACE("kernel-only launch " + std::to_string(launch));
    SAGE_CUDA_CHECK(cudaMemset(out.data(), 0xFF, out.size() * sizeof(std::uint16_t)));
    ASSERT_TRUE(sage::detail::gpu_attention_kernel_only(args, options, ws.data(), ws_bytes, nullptr).is_ok());
    SAGE_CUDA_CHECK(cudaDeviceSynchronize());
    std::vector<std::uint16_t> again;
    SAGE_CUDA_CHECK(out.copy_to(again));
    EXPECT_TRUE(again == first) << std::count(again.begin(), again.end(), kPoison16) << " elements left poisoned";
  }
}

INSTANTIATE_TEST_SUITE_P(Sm90, Sm90KernelAlone, ::testing::Values(64, 128),
                         [](const ::testing::TestParamInfo<int>& info) { return "D" + std::to_string(info.param); });

// ------------------------------------------------------------------ repeatability

TEST_F(Sm90Forward, SmallRepeatable) {
  expect_small_call_repeatable(device());
}

// ------------------------------------------------------------------ errors

// Small valid device tensors for the error tests.
struct SmallCall {
  static constexpr std::int64_t B = 1, H = 2, N = 64, D = 64;
  DeviceBuffer<std::uint16_t> q{B * H * N * D}, k{B * H * N * D}, v{B * H * N * D}, out{B * H * N * D};
  AttentionArgs args;

  explicit SmallCall(int device) {
    args.q = sage::make_contiguous_view(q.data(), DType::bf16, {B, H, N, D}, device);
    args.k = sage::make_contiguous_view(k.data(), DType::bf16, {B, H, N, D}, device);
    args.v = sage::make_contiguous_view(v.data(), DType::bf16, {B, H, N, D}, device);
    args.out = sage::make_contiguous_view(out.data(), DType::bf16, {B, H, N, D}, device);
  }
  cudaError_t status() const {
    for (cudaError_t e : {q.status(), k.status(), v.status(), out.status()})
      if (e != cudaSuccess) return e;
    return cudaSuccess;
  }
  // Gaussian-ish inputs, out poisoned.
  cudaError_t fill() {
    std::vector<std::uint16_t> host(static_cast<std::size_t>(B * H * N * D));
    for (std::size_t i = 0; i < host.size(); ++i) host[i] = sage::num::float_to_bf16(hashed_normal(7, 0, i));
    for (DeviceBuffer<std::uint16_t>* t : {&q, &k, &v}) {
      if (cudaError_t e = t->copy_from(host); e != cudaSuccess) return e;
    }
    return cudaMemset(out.data(), 0xFF, out.size() * sizeof(std::uint16_t));
  }
  // Number of output elements that lost their poison.
  std::int64_t written(cudaError_t* err) const {
    std::vector<std::uint16_t> host;
    *err = out.copy_to(host);
    return std::count_if(host.begin(), host.end(), [](std::uint16_t x) { return x != kPoison16; });
  }
};

// out written over q (in place) keeps Q in the pre-pass, which reads all of
// Q before the attention kernel writes out (the kernel itself would read
// rows that other CTAs have overwritten), and gives the bits of the same
// call with a separate out.
TEST_F(Sm90Forward, SmallInPlaceOutKeepsQInThePrepass) {
  SmallCall call(device());
  SAGE_CUDA_CHECK(call.status());
  SAGE_CUDA_CHECK(call.fill());
  AttentionOptions options;  // per-warp, no LSE: the in-kernel path unless out shares q's memory
  DeviceBuffer<unsigned char> ws(1 << 20);
  SAGE_CUDA_CHECK(ws.status());
  ASSERT_TRUE(sage::detail::gpu_sm90_paths(call.args, options).q_in_kernel);
  ASSERT_TRUE(sage::attention_forward(call.args, options, ws.data(), ws.size(), nullptr).is_ok());
  SAGE_CUDA_CHECK(cudaDeviceSynchronize());
  std::vector<std::uint16_t> separate, in_place;
  SAGE_CUDA_CHECK(call.out.copy_to(separate));

  AttentionArgs args = call.args;
  args.out = args.q;
  EXPECT_FALSE(sage::detail::gpu_sm90_paths(args, options).q_in_kernel);
  ASSERT_TRUE(sage::attention_forward(args, options, ws.data(), ws.size(), nullptr).is_ok());
  SAGE_CUDA_CHECK(cudaDeviceSynchronize());
  SAGE_CUDA_CHECK(call.q.copy_to(in_place));
  EXPECT_EQ(in_place, separate);
}

// out and lse written over q, k or v, on a call of several CTAs per head.
TEST_F(Sm90Forward, OutputsOverInputsGiveTheSameBits) { expect_outputs_over_inputs_give_the_same_bits(device()); }

// lse written over q keeps Q in the pre-pass too (query only): the kernel
// writes the LSE while other CTAs still read Q. With smooth_k off, where the
// LSE needs no correction, a separate lse leaves Q to the kernel.
TEST_F(Sm90Forward, SmallLseOverQKeepsQInThePrepass) {
  SmallCall call(device());
  SAGE_CUDA_CHECK(call.status());
  DeviceBuffer<float> lse(SmallCall::B * SmallCall::H * SmallCall::N);
  SAGE_CUDA_CHECK(lse.status());
  AttentionOptions options;
  options.return_lse = true;
  options.smooth_k = false;
  AttentionArgs args = call.args;
  args.lse = sage::make_contiguous_view(lse.data(), DType::f32, {SmallCall::B, SmallCall::H, SmallCall::N}, device());
  EXPECT_TRUE(sage::detail::gpu_sm90_paths(args, options).q_in_kernel);
  args.lse.data = call.q.data();  // (q holds 4x the bytes this lse spans)
  EXPECT_FALSE(sage::detail::gpu_sm90_paths(args, options).q_in_kernel);
}

// Q rows TMA cannot read keep Q in the pre-pass: a start that is not 16-byte
// aligned, and a head stride that is not a multiple of 16 bytes (query only:
// the calls themselves are valid).
TEST_F(Sm90Forward, SmallQStaysInThePrepassWhereTmaCannotReadIt) {
  SmallCall call(device());
  SAGE_CUDA_CHECK(call.status());
  const AttentionOptions options;
  constexpr std::int64_t B = SmallCall::B, H = SmallCall::H, N = SmallCall::N - 1, D = SmallCall::D;
  auto with_q = [&](std::uint16_t* data, std::int64_t stride_h) {
    AttentionArgs args = call.args;
    args.q.data = data;
    args.q.shape[2] = N;
    args.q.stride[1] = stride_h;
    args.q.stride[0] = H * stride_h + D;
    args.out.shape[2] = N;  // (out keeps its own, aligned memory)
    return args;
  };
  AttentionArgs shorter = call.args;
  shorter.q.shape[2] = shorter.out.shape[2] = N;
  ASSERT_TRUE(sage::detail::gpu_sm90_paths(shorter, options).q_in_kernel) << "the aligned call should take it";
  EXPECT_FALSE(sage::detail::gpu_sm90_paths(with_q(call.q.data() + 1, N * D), options).q_in_kernel)
      << "q starting 2 bytes past a 16-byte boundary";
  EXPECT_FALSE(sage::detail::gpu_sm90_paths(with_q(call.q.data(), N * D + 4), options).q_in_kernel)
      << "a head stride of N * D + 4 elements";
}

// The epilogue writes the output by TMA where its start and strides are
// 16-byte aligned (and head_dim a multiple of 8) and from the threads'
// registers otherwise (rows of D + 4 elements: 136 bytes apart). Both paths
// write the same bits and every element of the view; the register path
// nothing between its rows (the TMA path's padding is checked by the
// strided-out cases of Sm90ForwardCase).
TEST_F(Sm90Forward, SmallOutputStorePathsWriteTheSameBits) {
  SmallCall call(device());
  SAGE_CUDA_CHECK(call.status());
  SAGE_CUDA_CHECK(call.fill());
  constexpr std::int64_t B = SmallCall::B, H = SmallCall::H, N = SmallCall::N, D = SmallCall::D, pitch = D + 4;
  AttentionOptions options;
  options.causal = true;  // (rows of the tile that see few keys, a masked diagonal tile)
  DeviceBuffer<unsigned char> ws(1 << 20);
  SAGE_CUDA_CHECK(ws.status());
  ASSERT_TRUE(sage::detail::gpu_sm90_paths(call.args, options).out_by_tma);
  ASSERT_TRUE(sage::attention_forward(call.args, options, ws.data(), ws.size(), nullptr).is_ok());
  SAGE_CUDA_CHECK(cudaDeviceSynchronize());
  std::vector<std::uint16_t> by_tma;
  SAGE_CUDA_CHECK(call.out.copy_to(by_tma));

  DeviceBuffer<std::uint16_t> pitched(B * H * N * pitch);
  SAGE_CUDA_CHECK(pitched.status());
  SAGE_CUDA_CHECK(cudaMemset(pitched.data(), 0xFF, pitched.size() * sizeof(std::uint16_t)));
  AttentionArgs args = call.args;
  args.out.data = pitched.data();
  args.out.stride[0] = H * N * pitch, args.out.stride[1] = N * pitch, args.out.stride[2] = pitch;
  EXPECT_FALSE(sage::detail::gpu_sm90_paths(args, options).out_by_tma);
  ASSERT_TRUE(sage::attention_forward(args, options, ws.data(), ws.size(), nullptr).is_ok());
  SAGE_CUDA_CHECK(cudaDeviceSynchronize());
  std::vector<std::uint16_t> by_threads;
  SAGE_CUDA_CHECK(pitched.copy_to(by_threads));

  std::int64_t differ = 0, lost_poison = 0, unwritten = 0;
  for (std::int64_t row = 0; row < B * H * N; ++row) {
    for (std::int64_t c = 0; c < pitch; ++c) {
      const std::uint16_t got = by_threads[static_cast<std::size_t>(row * pitch + c)];
      if (c >= D) {
        lost_poison += got != kPoison16;
        continue;
      }
      const std::uint16_t want = by_tma[static_cast<std::size_t>(row * D + c)];
      unwritten += want == kPoison16;
      differ += got != want;
    }
  }
  EXPECT_EQ(unwritten, 0) << "elements the TMA store left unwritten";
  EXPECT_EQ(differ, 0) << "elements where the two store paths disagree";
  EXPECT_EQ(lost_poison, 0) << "padding elements between rows the register path wrote";
}

TEST_F(Sm90Forward, SmallErrorMismatchedDevices) {
  SmallCall call(device());
  SAGE_CUDA_CHECK(call.status());
  AttentionOptions options;
  DeviceBuffer<unsigned char> ws(1 << 20);
  SAGE_CUDA_CHECK(ws.status());

  // k claims to be host memory while q is on the GPU.
  {
    AttentionArgs args = call.args;
    args.k.device = sage::kHostDevice;
    std::size_t bytes = 0;
    const Status s = sage::attention_workspace_size(args, options, &bytes);
    EXPECT_EQ(s.code(), StatusCode::invalid_argument) << status_text(s);
    EXPECT_NE(s.message().find("k"), std::string::npos) << s.message();
    const Status f = sage::attention_forward(args, options, ws.data(), ws.size(), nullptr);
    EXPECT_EQ(f.code(), StatusCode::invalid_argument) << status_text(f);
    EXPECT_EQ(f.message().rfind("k:", 0), 0u) << "the message should name k: " << f.message();
  }
  // out on another GPU ordinal than q.
  {
    AttentionArgs args = call.args;
    args.out.device = device() + 1;
    const Status f = sage::attention_forward(args, options, ws.data(), ws.size(), nullptr);
    EXPECT_EQ(f.code(), StatusCode::invalid_argument) << status_text(f);
    EXPECT_EQ(f.message().rfind("out:", 0), 0u) << "the message should name out: " << f.message();
  }
  // lse (with return_lse) on another device.
  {
    AttentionArgs args = call.args;
    DeviceBuffer<float> lse(SmallCall::B * SmallCall::H * SmallCall::N);
    SAGE_CUDA_CHECK(lse.status());
    args.lse = sage::make_contiguous_view(lse.data(), DType::f32, {SmallCall::B, SmallCall::H, SmallCall::N},
                                          sage::kHostDevice);
    AttentionOptions o = options;
    o.return_lse = true;
    const Status f = sage::attention_forward(args, o, ws.data(), ws.size(), nullptr);
    EXPECT_EQ(f.code(), StatusCode::invalid_argument) << status_text(f);
    EXPECT_EQ(f.message().rfind("lse:", 0), 0u) << "the message should name lse: " << f.message();
  }
  // Every tensor on a device ordinal that does not exist.
  {
    int count = 0;
    SAGE_CUDA_CHECK(cudaGetDeviceCount(&count));
    AttentionArgs args = call.args;
    for (TensorView* t : {&args.q, &args.k, &args.v, &args.out}) t->device = count;
    std::size_t bytes = 0;
    const Status s = sage::attention_workspace_size(args, options, &bytes);
    EXPECT_EQ(s.code(), StatusCode::unsupported_device) << status_text(s);
    const Status f = sage::attention_forward(args, options, ws.data(), ws.size(), nullptr);
    EXPECT_EQ(f.code(), StatusCode::unsupported_device) << status_text(f);
    EXPECT_FALSE(f.message().empty());
  }
  SAGE_CUDA_CHECK(cudaGetLastError());  // no CUDA error left behind
  SAGE_CUDA_CHECK(cudaDeviceSynchronize());
}

TEST_F(Sm90Forward, SmallErrorWorkspaceTooSmall) {
  SmallCall call(device());
  SAGE_CUDA_CHECK(call.status());
  SAGE_CUDA_CHECK(call.fill());
  AttentionOptions options;
  std::size_t needed = 0;
  {
    const Status s = sage::attention_workspace_size(call.args, options, &needed);
    ASSERT_TRUE(s.is_ok()) << status_text(s);
  }
  ASSERT_GT(needed, 0u) << "the sm90 path quantizes into the workspace, so it needs one";
  DeviceBuffer<unsigned char> ws(needed);
  SAGE_CUDA_CHECK(ws.status());
  StreamGuard stream;
  SAGE_CUDA_CHECK(cudaStreamCreateWithFlags(&stream.stream, cudaStreamNonBlocking));
  const auto st = reinterpret_cast<sage::Stream>(stream.stream);

  // One byte short.
  {
    const Status f = sage::attention_forward(call.args, options, ws.data(), needed - 1, st);
    EXPECT_EQ(f.code(), StatusCode::invalid_argument) << status_text(f);
    EXPECT_NE(f.message().find("workspace"), std::string::npos) << f.message();
  }
  // None at all.
  {
    const Status f = sage::attention_forward(call.args, options, nullptr, 0, st);
    EXPECT_EQ(f.code(), StatusCode::invalid_argument) << status_text(f);
    EXPECT_NE(f.message().find("workspace"), std::string::npos) << f.message();
  }
  // A size but a NULL pointer.
  {
    const Status f = sage::attention_forward(call.args, options, nullptr, needed, st);
    EXPECT_EQ(f.code(), StatusCode::invalid_argument) << status_text(f);
    EXPECT_NE(f.message().find("workspace"), std::string::npos) << f.message();
  }
  SAGE_CUDA_CHECK(cudaStreamSynchronize(stream.stream));
  SAGE_CUDA_CHECK(cudaGetLastError());
  cudaError_t err = cudaSuccess;
  const std::int64_t touched = call.written(&err);
  SAGE_CUDA_CHECK(err);
  EXPECT_EQ(touched, 0) << "a rejected call wrote to out";

  // The device is still healthy: the same call with the right workspace runs
  // and writes every element.
  {
    const Status f = sage::attention_forward(call.args, options, ws.data(), needed, st);
    ASSERT_TRUE(f.is_ok()) << status_text(f);
  }
  SAGE_CUDA_CHECK(cudaStreamSynchronize(stream.stream));
  std::vector<std::uint16_t> host;
  SAGE_CUDA_CHECK(call.out.copy_to(host));
  const std::int64_t bad =
      std::count_if(host.begin(), host.end(), [](std::uint16_t x) { return (x & 0x7F80) == 0x7F80; });
  EXPECT_EQ(bad, 0) << "NaN/Inf (or unwritten) output elements after a valid call";
}

}  // namespace
