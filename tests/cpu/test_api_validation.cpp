// Every class of bad input to the attention entry points gets invalid_argument
// with a message that starts with the argument it is about and says what is
// wrong (DESIGN.md section 3, "Bad input").
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <limits>
#include <string>
#include <vector>

#include "api/validate.h"
#include "api_test_helpers.h"
#include "cuda/device_info.h"
#include "dispatch_expectation.h"
#include "sage/attention.h"

namespace sage {
namespace {

constexpr std::int64_t B = 2, Hq = 4, Hkv = 2, Nq = 8, Nk = 16, D = 32;

using test::expect_invalid;

// A valid host call (float32, HND, GQA 4/2, Nq != Nk) that each test breaks
// in one way.
class ApiValidation : public ::testing::Test {
 protected:
  void SetUp() override {
    q_.resize(B * Hq * Nq * D);
    k_.resize(B * Hkv * Nk * D);
    v_.resize(B * Hkv * Nk * D);
    out_.resize(B * Hq * Nq * D);
    lse_.resize(B * Hq * Nq);
    args.q = make_contiguous_view(q_.data(), DType::f32, {B, Hq, Nq, D});
    args.k = make_contiguous_view(k_.data(), DType::f32, {B, Hkv, Nk, D});
    args.v = make_contiguous_view(v_.data(), DType::f32, {B, Hkv, Nk, D});
    args.out = make_contiguous_view(out_.data(), DType::f32, {B, Hq, Nq, D});
    args.lse = make_contiguous_view(lse_.data(), DType::f32, {B, Hq, Nq});
    options.return_lse = true;
  }
  Status validate() const { return validate_attention_args(args, options); }

  // The same call as bfloat16 tensors on GPU 0 (validation only looks at
  // the pointers, it never dereferences them).
  void make_gpu_bf16() {
    for (TensorView* t : {&args.q, &args.k, &args.v, &args.out}) {
      *t = make_contiguous_view(reinterpret_cast<void*>(std::uintptr_t{1} << 20), DType::bf16,
                                {t->shape[0], t->shape[1], t->shape[2], t->shape[3]}, 0);
    }
    args.lse.device = 0;
  }

  std::vector<float> q_, k_, v_, out_, lse_;
  AttentionArgs args;
  AttentionOptions options;
};

TEST_F(ApiValidation, ValidArgumentsPass) { EXPECT_TRUE(validate().is_ok()) << validate().message(); }

TEST_F(ApiValidation, NullDataPointer) {
  for (auto [name, t] : {std::pair{"q", &args.q}, std::pair{"k", &args.k}, std::pair{"v", &args.v},
                         std::pair{"out", &args.out}, std::pair{"lse", &args.lse}}) {
    SetUp();
    t->data = nullptr;
    expect_invalid(validate(), name, {"NULL"});
  }
}

TEST_F(ApiValidation, WrongRank) {
  args.q = make_contiguous_view(q_.data(), DType::f32, {B * Hq, Nq, D});
  expect_invalid(validate(), "q", {"rank-4", "got rank 3"});
  SetUp();
  args.k = make_contiguous_view(k_.data(), DType::f32, {1, B, Hkv, Nk, D});  // rank above kMaxRank
  expect_invalid(validate(), "k", {"rank-4", "got rank 5"});
  SetUp();
  args.lse = make_contiguous_view(lse_.data(), DType::f32, {B, Hq, Nq, 1});
  expect_invalid(validate(), "lse", {"rank-3", "[B, Hq, Nq]", "got rank 4"});
}

TEST_F(ApiValidation, BatchMismatch) {
  args.k.shape[0] = args.v.shape[0] = 1;
  expect_invalid(validate(), "k", {"batch size 1", "q's batch size 2"});
}

TEST_F(ApiValidation, KeyValueShapeMismatch) {
  args.v.shape[2] = Nk - 1;
  expect_invalid(validate(), "v", {"shape [2, 2, 15, 32]", "k's shape [2, 2, 16, 32]"});
}

TEST_F(ApiValidation, OutShapeMismatch) {
  args.out.shape[2] = Nq + 1;
  expect_invalid(validate(), "out", {"shape", "q's shape [2, 4, 8, 32]"});
}

TEST_F(ApiValidation, HeadDimMismatch) {
  args.k.shape[3] = args.v.shape[3] = 16;
  expect_invalid(validate(), "k", {"head_dim 16", "q's head_dim 32"});
}

TEST_F(ApiValidation, QueryHeadsNotMultipleOfKeyValueHeads) {
  args.q.shape[1] = args.out.shape[1] = args.lse.shape[1] = 3;
  expect_invalid(validate(), "k", {"Hq = 3", "Hkv = 2", "multiple"});
}

TEST_F(ApiValidation, UnsupportedHeadDim) {
  std::vector<float> big(B * Hkv * Nk * 300);
  for (TensorView* t : {&args.q, &args.k, &args.v, &args.out}) {
    *t = make_contiguous_view(big.data(), DType::f32, {t->shape[0], t->shape[1], t->shape[2], 300});
  }
  expect_invalid(validate(), "q", {"head_dim 300", "1..256"});
}

TEST_F(ApiValidation, GpuHeadDimLimitsAreCheckedAtDispatch) {
  detail::AttentionDims dims{B, Hq, Hkv, Nq, Nk, 160};
  const Status s = detail::check_gpu_kernel_limits(dims, options);
  EXPECT_EQ(s.code(), StatusCode::not_implemented);
  EXPECT_NE(s.message().find("head_dim 160"), std::string::npos) << s.message();
  for (std::int64_t d : {1, 17, 64, 100, 128}) {
    dims.head_dim = d;
    EXPECT_TRUE(detail::check_gpu_kernel_limits(dims, options).is_ok()) << d;
  }
}

// Sizes past the kernels' 32-bit indexing and grid rows are refused before
// anything is cast to int (a batch of 2^32 + 1 must not wrap to 1).
TEST_F(ApiValidation, GpuSizeLimitsAreCheckedInInt64) {
  auto limit_error = [&](detail::AttentionDims dims) {
    const Status s = detail::check_gpu_kernel_limits(dims, options);
    EXPECT_EQ(s.code(), StatusCode::not_implemented) << s.message();
    return s.message();
  };
  const std::int64_t huge = (std::int64_t{1} << 32) + 1;
  EXPECT_NE(limit_error({huge, 1, 1, 128, 128, 64}).find("batch * heads_q"), std::string::npos);
  EXPECT_NE(limit_error({1, huge, 1, 128, 128, 64}).find("batch * heads_q"), std::string::npos);
  EXPECT_NE(limit_error({256, 256, 256, 128, 128, 64}).find("65535"), std::string::npos);
  EXPECT_NE(limit_error({1, 1, 1, huge, 128, 64}).find("sequence length"), std::string::npos);
  EXPECT_NE(limit_error({1, 1, 1, 128, std::int64_t{1} << 31, 64}).find("sequence length"), std::string::npos);
  EXPECT_TRUE(detail::check_gpu_kernel_limits({255, 257, 1, 262144, 262144, 128}, options).is_ok());
}

TEST_F(ApiValidation, DtypeMismatch) {
  args.k.dtype = DType::bf16;
  expect_invalid(validate(), "k", {"dtype bfloat16", "q's dtype float32"});
  SetUp();
  args.v.dtype = DType::f16;
  expect_invalid(validate(), "v", {"dtype float16"});
}

TEST_F(ApiValidation, UnsupportedDtype) {
  args.q.dtype = args.k.dtype = args.v.dtype = args.out.dtype = DType::i8;
  expect_invalid(validate(), "q", {"dtype int8", "not supported"});
  SetUp();
  args.q.dtype = static_cast<DType>(200);
  expect_invalid(validate(), "q", {"invalid dtype value 200"});
}

TEST_F(ApiValidation, OutDtypeMustEqualQ) {
  args.out.dtype = DType::bf16;
  expect_invalid(validate(), "out", {"dtype bfloat16", "q's dtype float32"});
}

TEST_F(ApiValidation, LseMustBeFloat32) {
  args.lse.dtype = DType::f16;
  expect_invalid(validate(), "lse", {"float32", "float16"});
}

TEST_F(ApiValidation, Float32OnlyOnTheHost) {
  for (TensorView* t : {&args.q, &args.k, &args.v, &args.out, &args.lse}) {
    t->device = 0;
    t->data = reinterpret_cast<void*>(std::uintptr_t{1} << 20);
  }
  expect_invalid(validate(), "q", {"float32", "host"});
}

TEST_F(ApiValidation, DeviceMismatch) {
  args.k.device = 0;
  expect_invalid(validate(), "k", {"GPU 0", "q is on the host"});
  SetUp();
  args.lse.device = 1;
  expect_invalid(validate(), "lse", {"GPU 1"});
}

TEST_F(ApiValidation, InvalidDeviceOrdinal) {
  args.v.device = -5;
  expect_invalid(validate(), "v", {"invalid device -5"});
}

TEST_F(ApiValidation, NonUnitLastStride) {
  args.q.stride[3] = 2;
  expect_invalid(validate(), "q", {"last dimension", "stride 1", "got stride 2"});
}

TEST_F(ApiValidation, NegativeStride) {
  args.k.stride[2] = -D;
  expect_invalid(validate(), "k", {"negative stride -32", "dimension 2"});
}

TEST_F(ApiValidation, EmptyTensor) {
  args.q.shape[2] = args.out.shape[2] = args.lse.shape[2] = 0;
  expect_invalid(validate(), "q", {"empty tensor", "[2, 4, 0, 32]"});
  SetUp();
  args.k.shape[2] = args.v.shape[2] = 0;
  expect_invalid(validate(), "k", {"empty tensor"});
}

TEST_F(ApiValidation, NegativeSize) {
  args.v.shape[1] = -2;
  expect_invalid(validate(), "v", {"negative size -2", "dimension 1"});
}

TEST_F(ApiValidation, ElementOffsetOverflow) {
  args.k.stride[0] = std::numeric_limits<std::int64_t>::max() / 2 + 1;  // (B - 1) * stride is fine...
  args.k.shape[0] = args.v.shape[0] = args.q.shape[0] = args.out.shape[0] = args.lse.shape[0] = 3;  // ...2x is not
  expect_invalid(validate(), "k", {"element offsets overflow int64"});
}

TEST_F(ApiValidation, ByteOffsetOverflow) {
  // The largest element offset fits in int64; times 4 bytes it does not.
  args.v.stride[0] = std::numeric_limits<std::int64_t>::max() / 4;
  expect_invalid(validate(), "v", {"byte offsets overflow int64"});
}

TEST_F(ApiValidation, ElementCountOverflow) {
  // Broadcast (stride 0) inputs are fine, but not 2^70 elements.
  const std::int64_t huge = std::int64_t{1} << 35;
  args.k.shape[1] = args.v.shape[1] = huge;
  args.k.stride[1] = args.v.stride[1] = 0;
  args.k.shape[2] = args.v.shape[2] = huge;
  args.k.stride[2] = args.v.stride[2] = 0;
  expect_invalid(validate(), "k", {"number of elements overflows int64"});
}

TEST_F(ApiValidation, OutputElementsMustNotOverlap) {
  args.out.stride[1] = 0;  // every head writes the same memory
  expect_invalid(validate(), "out", {"overlap"});
  SetUp();
  args.lse.stride[2] = 0;
  expect_invalid(validate(), "lse", {"overlap"});
}

// A view whose byte span is near 2^61 (batch stride 2^59 floats) still has
// its whole span compared: counted in bits it would overflow int64 and wrap
// to a few kilobytes, missing an lse placed 2^40 bytes in.
TEST_F(ApiValidation, OverlapOfViewsSpanningMoreThan2To60Bytes) {
  args.out.stride[0] = std::int64_t{1} << 59;
  args.lse.data = reinterpret_cast<std::byte*>(out_.data()) + (std::int64_t{1} << 40);
  expect_invalid(validate(), "lse", {"overlaps out"});
}

TEST_F(ApiValidation, OutAndLseMustNotOverlapEachOther) {
  // lse placed inside out's buffer: the kernel writes both at once.
  args.lse.data = out_.data() + 8;
  expect_invalid(validate(), "lse", {"overlaps out"});
  // Adjacent but disjoint is fine.
  std::vector<float> both(out_.size() + lse_.size());
  args.out.data = both.data();
  args.lse.data = both.data() + out_.size();
  EXPECT_TRUE(validate().is_ok()) << validate().message();
  // Without return_lse the lse view is ignored.
  options.return_lse = false;
  args.lse.data = out_.data();
  EXPECT_TRUE(validate().is_ok()) << validate().message();
}

TEST_F(ApiValidation, BroadcastInputsAreAccepted) {
  args.k.stride[0] = args.v.stride[0] = 0;  // both batches share one K/V
  EXPECT_TRUE(validate().is_ok()) << validate().message();
}

TEST_F(ApiValidation, SmScaleMustBeFiniteAndNonNegative) {
  for (float bad : {std::nanf(""), std::numeric_limits<float>::infinity(), -0.5f}) {
    options.sm_scale = bad;
    expect_invalid(validate(), "options.sm_scale", {"finite"});
  }
  // Finite, but sm_scale * log2(e), the factor every path applies in float, is not.
  for (float too_large : {2.4e38f, std::numeric_limits<float>::max()}) {
    options.sm_scale = too_large;
    expect_invalid(validate(), "options.sm_scale", {"log2(e)"});
  }
  options.sm_scale = 2.3e38f;  // the product still fits
  EXPECT_TRUE(validate().is_ok()) << validate().message();
  options.sm_scale = 0.25f;
  EXPECT_TRUE(validate().is_ok());
}

TEST_F(ApiValidation, OptionEnumsOutOfRange) {
  const AttentionOptions good = options;
  options.method = static_cast<Method>(7);
  expect_invalid(validate(), "options.method", {"invalid value 7"});
  options = good;
  options.layout = static_cast<TensorLayout>(-1);
  expect_invalid(validate(), "options.layout", {"invalid value -1"});
  options = good;
  options.causal_align = static_cast<CausalAlign>(2);
  expect_invalid(validate(), "options.causal_align", {"invalid value 2"});
  options = good;
  options.qk_format = static_cast<QKFormat>(5);
  expect_invalid(validate(), "options.qk_format", {"invalid value 5"});
  options = good;
  options.qk_granularity = static_cast<Granularity>(3);
  expect_invalid(validate(), "options.qk_granularity", {"invalid value 3"});
  options = good;
  options.pv_format = static_cast<PVFormat>(4);
  expect_invalid(validate(), "options.pv_format", {"invalid value 4"});
  options = good;
  options.pv_accum = static_cast<PVAccum>(9);
  expect_invalid(validate(), "options.pv_accum", {"invalid value 9"});
}

TEST_F(ApiValidation, Int4OnlyWithSage2) {
  options.qk_format = QKFormat::int4;
  EXPECT_TRUE(validate().is_ok());
  for (Method m : {Method::sage3, Method::sagebwd}) {
    options.method = m;
    expect_invalid(validate(), "options.qk_format", {"int4", "sage2", method_name(m)});
  }
}

TEST_F(ApiValidation, Sage2FormatKnobsAreRefusedByOtherMethods) {
  const AttentionOptions base = options;
  for (Method m : {Method::sage3, Method::sagebwd}) {
    options = base;
    options.method = m;
    EXPECT_TRUE(validate().is_ok()) << method_name(m);
    options.qk_granularity = Granularity::per_thread;
    expect_invalid(validate(), "options.qk_granularity",
                   {"per-thread", "sage2 option", method_name(m), "fixed formats", "at its default, per-warp"});
    options = base;
    options.method = m;
    options.pv_format = PVFormat::fp16;
    expect_invalid(validate(), "options.pv_format",
                   {"fp16", "sage2 option", method_name(m), "fixed formats", "at its default, fp8-e4m3"});
    options = base;
    options.method = m;
    options.pv_accum = PVAccum::fp32;
    expect_invalid(validate(), "options.pv_accum", {"fp32", "sage2 option", method_name(m)});
  }
}

TEST_F(ApiValidation, Sage3NeedsWholeNvfp4BlocksOnTheHost) {
  std::vector<float> buffer(B * Hq * Nk * 24);
  for (TensorView* t : {&args.q, &args.k, &args.v, &args.out}) {
    *t = make_contiguous_view(buffer.data(), DType::f32, {t->shape[0], t->shape[1], t->shape[2], 24});
  }
  EXPECT_TRUE(validate().is_ok());  // fine for sage2
  options.method = Method::sage3;
  expect_invalid(validate(), "q", {"head_dim 24", "multiple of 16", "sage3"});
}

TEST_F(ApiValidation, LseShape) {
  args.lse.shape[2] = Nq + 1;
  expect_invalid(validate(), "lse", {"shape [2, 4, 9]", "[B, Hq, Nq] = [2, 4, 8]"});
}

TEST_F(ApiValidation, LseIsOptional) {
  options.return_lse = false;
  args.lse = TensorView{};  // not looked at
  EXPECT_TRUE(validate().is_ok()) << validate().message();
}

TEST_F(ApiValidation, GqaAndMqaAreAccepted) {
  for (std::int64_t hkv : {std::int64_t{1}, std::int64_t{2}, std::int64_t{4}}) {
    args.k.shape[1] = args.v.shape[1] = hkv;
    EXPECT_TRUE(validate().is_ok()) << "Hkv " << hkv << ": " << validate().message();
  }
}

TEST_F(ApiValidation, NhdLayoutIsAccepted) {
  options.layout = TensorLayout::NHD;
  args.q = make_contiguous_view(q_.data(), DType::f32, {B, Nq, Hq, D});
  args.k = make_contiguous_view(k_.data(), DType::f32, {B, Nk, Hkv, D});
  args.v = make_contiguous_view(v_.data(), DType::f32, {B, Nk, Hkv, D});
  args.out = make_contiguous_view(out_.data(), DType::f32, {B, Nq, Hq, D});
  // lse stays [B, Hq, Nq] in both layouts.
  EXPECT_TRUE(validate().is_ok()) << validate().message();
  // An HND-shaped k is now a mismatch in the heads (and tokens) positions.
  args.k = make_contiguous_view(k_.data(), DType::f32, {B, Hkv, Nk, D});
  EXPECT_FALSE(validate().is_ok());
}

TEST_F(ApiValidation, StridedViewsAreAccepted) {
  // q as a slice of a wider buffer: padded heads and tokens, HND.
  std::vector<float> wide(B * (Hq + 1) * (Nq + 3) * (D + 8));
  args.q.data = wide.data();
  args.q.stride[3] = 1;
  args.q.stride[2] = D + 8;
  args.q.stride[1] = (Nq + 3) * (D + 8);
  args.q.stride[0] = (Hq + 1) * (Nq + 3) * (D + 8);
  EXPECT_TRUE(validate().is_ok()) << validate().message();
  // A size-1 dimension may carry any stride (frameworks give it one).
  args.q.shape[0] = args.k.shape[0] = args.v.shape[0] = args.out.shape[0] = args.lse.shape[0] = 1;
  args.q.stride[0] = 12345;
  EXPECT_TRUE(validate().is_ok()) << validate().message();
}

TEST_F(ApiValidation, GpuTensorsMustBeAlignedToTheirDtype) {
  make_gpu_bf16();
  EXPECT_TRUE(validate().is_ok()) << validate().message();
  args.q.data = static_cast<char*>(args.q.data) + 1;
  expect_invalid(validate(), "q", {"2-byte aligned", "bfloat16"});
}

TEST_F(ApiValidation, GpuStridesNeedNoVectorAlignment) {
  make_gpu_bf16();
  args.k.stride[2] = D + 4;  // 72-byte rows: read element by element
  args.q.data = static_cast<char*>(args.q.data) + 2;
  EXPECT_TRUE(validate().is_ok()) << validate().message();
}

TEST_F(ApiValidation, HostTensorsNeedNoAlignment) {
  std::vector<unsigned char> raw(q_.size() * 4 + 4);
  args.q.data = raw.data() + 1;
  EXPECT_TRUE(validate().is_ok()) << validate().message();
}

TEST_F(ApiValidation, EntryPointsValidateToo) {
  args.k.shape[0] = args.v.shape[0] = 1;
  std::size_t bytes = 123;
  expect_invalid(attention_workspace_size(args, options, &bytes), "k", {"batch size"});
  expect_invalid(attention_forward(args, options, nullptr, 0, nullptr), "k", {"batch size"});
  SetUp();
  expect_invalid(attention_workspace_size(args, options, nullptr), "bytes", {"NULL"});
}

TEST_F(ApiValidation, HostWorkspaceIsZero) {
  std::size_t bytes = 123;
  ASSERT_TRUE(attention_workspace_size(args, options, &bytes).is_ok());
  EXPECT_EQ(bytes, 0u);
}

// GPU tensors go to the GPU dispatch after validation. Without a GPU (the
// CI machines) that is unsupported_device naming the device; with one,
// nothing may launch on these fake pointers, so only the workspace query
// (which never launches) is asked.
TEST_F(ApiValidation, GpuDispatchReportsMissingDeviceOrKernel) {
  make_gpu_bf16();
  options.return_lse = false;
  std::size_t bytes = 0;
  if (cuda::device_count().count == 0) {
    for (const Status& s : {attention_forward(args, options, nullptr, 0, nullptr),
                            attention_workspace_size(args, options, &bytes)}) {
      EXPECT_EQ(s.code(), StatusCode::unsupported_device) << s.message();
      EXPECT_EQ(s.message().rfind("no CUDA device 0", 0), 0u) << s.message();
    }
    return;
  }
  // The fake pointers are host addresses: rejected naming q, unless this GPU
  // reads pageable host memory (HMM/ATS), where the call goes on to the
  // kernel choice. tests/gpu/test_api_dispatch.cpp uses real device memory.
  const Status s = attention_workspace_size(args, options, &bytes);
  if (s.code() == StatusCode::invalid_argument) {
    EXPECT_EQ(s.message().rfind("q: data is host memory", 0), 0u) << s.message();
  } else {
    EXPECT_EQ(s.code(), test::expected_default_dispatch(0)) << s.message();
  }
  // An ordinal past the last device is unsupported_device.
  for (TensorView* t : {&args.q, &args.k, &args.v, &args.out}) t->device = 1000;
  const Status missing = attention_workspace_size(args, options, &bytes);
  EXPECT_EQ(missing.code(), StatusCode::unsupported_device) << missing.message();
  EXPECT_EQ(missing.message().rfind("no CUDA device 1000", 0), 0u) << missing.message();
}

// numel() is defined for every view, the ones validation rejects too: no
// read past the stored dimensions, no signed overflow.
TEST(TensorView, NumelOfViewsValidationRejects) {
  EXPECT_EQ(make_contiguous_view(nullptr, DType::f32, {2, 3, 4, 5}).numel(), 120);
  EXPECT_EQ(make_contiguous_view(nullptr, DType::f32, {}).numel(), 1);
  // Rank 5 (make_contiguous_view records it, stores four sizes): the stored four.
  EXPECT_EQ(make_contiguous_view(nullptr, DType::f32, {2, 3, 4, 5, 6}).numel(), 120);
  EXPECT_EQ(make_contiguous_view(nullptr, DType::f32, {1LL << 32, 1LL << 32, 4, 1}).numel(),
            std::numeric_limits<std::int64_t>::max());
  EXPECT_EQ(make_contiguous_view(nullptr, DType::f32, {1LL << 40, 0, 1LL << 40, 1}).numel(), 0);
  EXPECT_EQ(make_contiguous_view(nullptr, DType::f32, {2, -3, 4, 5}).numel(), -1);
}

}  // namespace
}  // namespace sage
