// End-to-end tests of the SageAttention2 mma.sync path (sage::attention_forward
// on GPU tensors with the dispatch limited to the mma.sync family by
// SAGE_FORCE_KERNEL=mma: quantization pre-pass at kMmaGeometry + INT8-QK /
// FP8-PV mma.sync kernel, src/cuda/mma).
//
// The harness (attention_forward_harness.h) is the sm90 tests': fresh inputs
// per case (SAGE_TEST_SEED replays one), the case's layout and storage,
// poisoned out/lse, and the checks
//   (a) against the CPU emulation with kMmaGeometry (the kernel's groups:
//       64-key K groups, 128-row Q tiles of 16-row warps) - tight;
//   (b) against exact float64, (c) the LSE against the exact LSE, with the
//       bounds set from the emulation's own accuracy (the numerics are the
//       sm90 kernel's up to the K group size, so its bounds apply);
// plus every output written and finite, padding untouched, rows that see no
// key exactly 0 with lse = -inf.
//
// The FP8 PV cases run on any GPU of compute capability 8.9 or newer (FP8
// mma.sync; this build must have sm_89+ code for it), the FP16 PV cases (the
// sm_80 path) also on sm_80/sm_86; on Hopper the mma kernels are a fallback
// verified for correctness only. Elsewhere every test reports SKIPPED. Names
// of the quick subset (for compute-sanitizer) contain "Small".
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <cstdio>
#include <optional>
#include <string>
#include <vector>

#include "gpu/attention_forward_harness.h"
#include "gpu/gpu_test_util.h"
#include "numerics/tile_geometry.h"
#include "reference/reference.h"
#include "sage/attention.h"

namespace {

// ------------------------------------------------------------------ device

// A GPU with mma.sync INT8 (compute capability >= 8.0) with the dispatch
// limited to the mma.sync family. (Cases and tests that need FP8 PV skip
// themselves below sm_89.)
class MmaTest : public KernelFamilyTest {
 protected:
  MmaTest() : KernelFamilyTest("mma", [](int sm) { return sm >= 80; }, "compute capability 8.0 or newer") {}
};

// ------------------------------------------------------------------ the case table

// Tile edges of this family: 64-key K tiles (63/64/65, 127/128/129 keys),
// 128-row Q tiles; odd head dims go through the pre-pass's zero padding.
std::vector<Case> all_cases() {
  using namespace case_table;
  // ---- quick subset (also run under compute-sanitizer): the shared one, then this family's
  std::vector<Case> cases = shared_small_cases();
  const std::vector<Case> own_small = {
      // A tiny sm_scale: masked scores no longer flush to 0 in exp2 (see the sm90 table).
      {.small = true, .b = 1, .hq = 2, .hkv = 2, .nq = 300, .nk = 300, .d = 64, .causal = true, .align = TL,
       .sm_scale = 1e-6f},
      {.small = true, .b = 1, .hq = 2, .hkv = 1, .nq = 64, .nk = 63, .d = 128, .causal = true, .align = BR,
       .granularity = G::per_thread, .smooth_v = true},
      {.small = true, .b = 1, .hq = 2, .hkv = 2, .nq = 128, .nk = 65, .d = 64, .layout = NHD,
       .granularity = G::per_block},
  };
  cases.insert(cases.end(), own_small.begin(), own_small.end());
  const std::vector<Case> shared = shared_forward_cases();
  cases.insert(cases.end(), shared.begin(), shared.end());
  // ---- FP16 PV (fp32 and two-level accumulation), the sm_80 path
  constexpr auto F16 = sage::PVFormat::fp16;
  constexpr auto ACC32 = sage::PVAccum::fp32;
  const std::vector<Case> fp16_pv = {
      {.small = true, .b = 1, .hq = 2, .hkv = 2, .nq = 1, .nk = 1, .d = 64, .pv_format = F16, .pv_accum = ACC32},
      {.small = true, .b = 2, .hq = 4, .hkv = 2, .nq = 65, .nk = 130, .d = 128, .layout = NHD, .causal = true,
       .align = BR, .dtype = FP16, .granularity = G::per_thread, .smooth_v = true, .pv_format = F16},
      {.small = true, .b = 1, .hq = 2, .hkv = 1, .nq = 129, .nk = 63, .d = 100, .causal = true, .align = TL,
       .storage = Storage::padded, .strided_out = true, .pv_format = F16, .pv_accum = ACC32},
      {.small = true, .b = 1, .hq = 2, .hkv = 2, .nq = 300, .nk = 100, .d = 64, .causal = true, .align = BR,
       .dist = D::channel_bias, .pv_format = F16},
      {.b = 1, .hq = 4, .hkv = 4, .nq = 1531, .nk = 1531, .d = 128, .causal = true, .align = TL,
       .pv_format = F16, .pv_accum = ACC32},
      {.b = 2, .hq = 4, .hkv = 2, .nq = 1531, .nk = 1531, .d = 64, .layout = NHD, .dtype = FP16,
       .granularity = G::per_block, .dist = D::sharp, .pv_format = F16},
      {.b = 1, .hq = 2, .hkv = 1, .nq = 3000, .nk = 3000, .d = 128, .layout = NHD, .smooth_v = true,
       .dist = D::heavy_tailed, .pv_format = F16, .pv_accum = ACC32},
      {.b = 2, .hq = 8, .hkv = 1, .nq = 1, .nk = 3000, .d = 64, .causal = true, .align = BR,
       .granularity = G::per_thread, .pv_format = F16},
      {.b = 1, .hq = 2, .hkv = 2, .nq = 1000, .nk = 300, .d = 128, .causal = true, .align = BR,
       .return_lse = false, .dist = D::outlier_channels, .pv_format = F16, .pv_accum = ACC32},
  };
  cases.insert(cases.end(), fp16_pv.begin(), fp16_pv.end());
  // ---- INT4 Q/K (m16n8k64; on Hopper slow, correctness only), with FP8 PV
  // and with FP16 PV (fp32 accumulation, the instantiated pair)
  constexpr auto I4 = sage::QKFormat::int4;
  const std::vector<Case> int4 = {
      {.small = true, .b = 1, .hq = 2, .hkv = 2, .nq = 1, .nk = 1, .d = 64, .granularity = G::per_thread,
       .qk_format = I4},
      {.small = true, .b = 2, .hq = 4, .hkv = 2, .nq = 65, .nk = 130, .d = 128, .layout = NHD, .causal = true,
       .align = BR, .dtype = FP16, .granularity = G::per_thread, .smooth_v = true, .qk_format = I4},
      {.small = true, .b = 1, .hq = 2, .hkv = 1, .nq = 129, .nk = 63, .d = 100, .causal = true, .align = TL,
       .granularity = G::per_warp, .storage = Storage::padded, .strided_out = true, .pv_format = F16,
       .pv_accum = ACC32, .qk_format = I4},
      {.small = true, .b = 1, .hq = 2, .hkv = 2, .nq = 300, .nk = 100, .d = 64, .causal = true, .align = BR,
       .granularity = G::per_thread, .dist = D::channel_bias, .qk_format = I4},
      {.b = 1, .hq = 4, .hkv = 4, .nq = 1531, .nk = 1531, .d = 128, .causal = true, .align = TL,
       .granularity = G::per_thread, .qk_format = I4},
      {.b = 2, .hq = 4, .hkv = 2, .nq = 1531, .nk = 1531, .d = 64, .layout = NHD, .dtype = FP16,
       .granularity = G::per_block, .pv_format = F16, .pv_accum = ACC32, .qk_format = I4},
      {.b = 1, .hq = 2, .hkv = 1, .nq = 3000, .nk = 3000, .d = 128, .layout = NHD, .granularity = G::per_thread,
       .smooth_v = true, .dist = D::channel_bias, .qk_format = I4},
      {.b = 2, .hq = 8, .hkv = 1, .nq = 1, .nk = 3000, .d = 64, .causal = true, .align = BR,
       .granularity = G::per_thread, .dist = D::sharp, .pv_format = F16, .pv_accum = ACC32, .qk_format = I4},
      {.b = 1, .hq = 2, .hkv = 2, .nq = 1000, .nk = 300, .d = 128, .causal = true, .align = BR,
       .granularity = G::per_warp, .return_lse = false, .qk_format = I4},
      // FP16 P V with two-level accumulation
      {.small = true, .b = 1, .hq = 4, .hkv = 2, .nq = 130, .nk = 257, .d = 64, .layout = NHD, .causal = true,
       .align = BR, .dtype = FP16, .granularity = G::per_thread, .pv_format = F16, .qk_format = I4},
      {.b = 2, .hq = 2, .hkv = 2, .nq = 1531, .nk = 1531, .d = 128, .granularity = G::per_thread, .smooth_v = true,
       .dist = D::heavy_tailed, .pv_format = F16, .qk_format = I4},
  };
  cases.insert(cases.end(), int4.begin(), int4.end());
  // ---- smooth_q (per-tile Q mean + in-kernel key offsets) with every Q/K and PV format,
  // and Q with channel offsets (qk-bias: tile means far from zero)
  const std::vector<Case> smooth_q = {
      {.small = true, .b = 1, .hq = 2, .hkv = 2, .nq = 1, .nk = 1, .d = 64, .smooth_q = true},
      {.small = true, .b = 2, .hq = 4, .hkv = 2, .nq = 129, .nk = 65, .d = 128, .layout = NHD, .causal = true,
       .align = BR, .dtype = FP16, .granularity = G::per_thread, .smooth_v = true, .smooth_q = true},
      {.small = true, .b = 1, .hq = 2, .hkv = 1, .nq = 300, .nk = 100, .d = 100, .causal = true, .align = TL,
       .granularity = G::per_thread, .storage = Storage::padded, .strided_out = true, .qk_format = I4,
       .smooth_q = true},
      {.small = true, .b = 1, .hq = 2, .hkv = 2, .nq = 200, .nk = 190, .d = 64, .granularity = G::per_block,
       .dist = D::outlier_channels, .pv_format = F16, .smooth_q = true},
      {.b = 1, .hq = 4, .hkv = 4, .nq = 1531, .nk = 1531, .d = 128, .causal = true, .align = TL,
       .dist = D::outlier_channels, .smooth_q = true},
      {.b = 2, .hq = 4, .hkv = 2, .nq = 1000, .nk = 3000, .d = 64, .layout = NHD, .granularity = G::per_thread,
       .dist = D::channel_bias, .qk_format = I4, .smooth_q = true},
      {.b = 1, .hq = 2, .hkv = 2, .nq = 3000, .nk = 1531, .d = 128, .dtype = FP16, .smooth_k = false,
       .return_lse = false, .dist = D::heavy_tailed, .pv_format = F16, .pv_accum = ACC32, .smooth_q = true},
      {.b = 1, .hq = 2, .hkv = 1, .nq = 1531, .nk = 1531, .d = 128, .causal = true, .align = BR,
       .granularity = G::per_thread, .pv_format = F16, .pv_accum = ACC32, .qk_format = I4, .smooth_q = true},
      {.b = 1, .hq = 2, .hkv = 2, .nq = 700, .nk = 900, .d = 128, .granularity = G::per_thread, .dist = D::qk_bias,
       .qk_format = I4, .smooth_q = true},
  };
  cases.insert(cases.end(), smooth_q.begin(), smooth_q.end());
  return cases;
}

// ------------------------------------------------------------------ parameterized cases

class MmaForwardCase : public MmaTest, public ::testing::WithParamInterface<Case> {};

TEST_P(MmaForwardCase, MatchesReference) {
  if (GetParam().pv_format == sage::PVFormat::fp8_e4m3 && sm() < 89) {
    GTEST_SKIP() << "FP8 PV needs compute capability 8.9 or newer (this GPU: sm_" << sm() << ")";
  }
  run_case(GetParam(), device(), sage::kMmaGeometry, "mma");
}

std::string case_name(const ::testing::TestParamInfo<Case>& info) { return info.param.name(); }

INSTANTIATE_TEST_SUITE_P(Mma, MmaForwardCase, ::testing::ValuesIn(all_cases()), case_name);

class MmaForward : public MmaTest {};

// SageAttention2's published accuracy on Gaussian inputs at N = 4096,
// D = 128 with the default options, measured against float64.
TEST_F(MmaForward, PublishedAccuracyGaussianN4096D128) {
  if (sm() < 89) GTEST_SKIP() << "FP8 PV needs compute capability 8.9 or newer";
  Case c;  // default options (per-warp INT8 QK, smooth K, FP8 PV), bf16, HND, plus return_lse
  c.b = 1, c.hq = 4, c.hkv = 4, c.nq = 4096, c.nk = 4096, c.d = 128;
  Metrics m;
  ASSERT_NO_FATAL_FAILURE(run_case(c, device(), sage::kMmaGeometry, "mma-published", &m));
  std::printf("[mma-published] Gaussian B=1 H=4 N=4096 D=128 vs float64: cos_sim=%.6f (>= %.4f) "
              "rel_l1=%.5f (<= %.2f)\n",
              m.cos_sim, kPublishedMinCos, m.rel_l1, kPublishedMaxRelL1);
  EXPECT_GE(m.cos_sim, kPublishedMinCos);
  EXPECT_LE(m.rel_l1, kPublishedMaxRelL1);
}

// NaN / inf inputs (expect_nonfinite_inputs_give_nan): INT8 and INT4 Q K^T.
TEST_F(MmaForward, NonFiniteInputsGiveNaNAsTheEmulation) {
  Case c;
  c.nq = 100, c.nk = 150, c.d = 64;
  c.pv_format = sm() >= 89 ? sage::PVFormat::fp8_e4m3 : sage::PVFormat::fp16;
  expect_nonfinite_inputs_give_nan(c, device(), sage::kMmaGeometry);
  c.qk_format = sage::QKFormat::int4;
  c.granularity = Granularity::per_thread;
  expect_nonfinite_inputs_give_nan(c, device(), sage::kMmaGeometry);
}

TEST_F(MmaForward, SmallRepeatable) {
  if (sm() < 89) GTEST_SKIP() << "FP8 PV needs compute capability 8.9 or newer";
  expect_small_call_repeatable(device());
}

// out and lse written over q, k or v, on a call of several CTAs per head.
TEST_F(MmaForward, OutputsOverInputsGiveTheSameBits) {
  if (sm() < 89) GTEST_SKIP() << "FP8 PV needs compute capability 8.9 or newer";
  expect_outputs_over_inputs_give_the_same_bits(device());
}

// Options the mma.sync family cannot run yet are refused with a message that
// names the family and the option, never run on something else.
TEST_F(MmaForward, SmallUnsupportedOptionsNamed) {
  constexpr std::int64_t B = 1, H = 2, N = 64, D = 64;
  DeviceBuffer<std::uint16_t> q(B * H * N * D), out(B * H * N * D);
  SAGE_CUDA_CHECK(q.status());
  SAGE_CUDA_CHECK(out.status());
  AttentionArgs args;
  args.q = sage::make_contiguous_view(q.data(), DType::bf16, {B, H, N, D}, device());
  args.k = args.v = args.q;
  args.out = sage::make_contiguous_view(out.data(), DType::bf16, {B, H, N, D}, device());
  struct Want {
    AttentionOptions options;
    const char* needle;
  };
  std::vector<Want> wants(4);
  wants[0].options.method = sage::Method::sage3, wants[0].needle = "sage3";
  wants[1].options.pv_format = sage::PVFormat::bf16, wants[1].needle = "bf16";
  wants[2].options.pv_format = sage::PVFormat::fp8_e5m2, wants[2].needle = "e5m2";
  wants[3].options.pv_accum = sage::PVAccum::fp32, wants[3].needle = "pv_accum fp32";
  for (const Want& w : wants) {
    std::size_t bytes = 0;
    const Status s = sage::attention_workspace_size(args, w.options, &bytes);
    EXPECT_EQ(s.code(), StatusCode::not_implemented) << status_text(s);
    EXPECT_NE(s.message().find("mma.sync"), std::string::npos) << s.message();
    EXPECT_NE(s.message().find(w.needle), std::string::npos) << s.message();
  }
}

}  // namespace
