// The GPU side of the attention entry points on a real device: pointer
// checks against the tensors' device, and the dispatch's answer for a valid
// call. Only attention_workspace_size is called: it runs every check that
// attention_forward runs before a launch, and never launches.
#include <gtest/gtest.h>

#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include "cuda/device_dispatch.h"
#include "cuda/device_info.h"
#include "dispatch_expectation.h"
#include "gpu/gpu_test_util.h"
#include "sage/attention.h"

namespace sage {
namespace {

constexpr std::int64_t B = 1, H = 2, N = 256, D = 128;

class ApiGpuDispatch : public test::GpuTest {
 protected:
  void SetUp() override {
    test::GpuTest::SetUp();
    if (IsSkipped() || HasFatalFailure()) return;
    SAGE_CUDA_CHECK(q_.status());
    SAGE_CUDA_CHECK(k_.status());
    SAGE_CUDA_CHECK(v_.status());
    SAGE_CUDA_CHECK(out_.status());
    SAGE_CUDA_CHECK(cudaGetDevice(&device_));
    args_.q = make_contiguous_view(q_.data(), DType::bf16, {B, H, N, D}, device_);
    args_.k = make_contiguous_view(k_.data(), DType::bf16, {B, H, N, D}, device_);
    args_.v = make_contiguous_view(v_.data(), DType::bf16, {B, H, N, D}, device_);
    args_.out = make_contiguous_view(out_.data(), DType::bf16, {B, H, N, D}, device_);
  }
  Status workspace_query() {
    std::size_t bytes = 0;
    return attention_workspace_size(args_, options_, &bytes);
  }

  test::DeviceBuffer<std::uint16_t> q_{B * H * N * D}, k_{B * H * N * D}, v_{B * H * N * D}, out_{B * H * N * D};
  int device_ = 0;
  AttentionArgs args_;
  AttentionOptions options_;
};

// ok on an H100/H200 with this build (and on sm_89+); see expected_default_dispatch.
TEST_F(ApiGpuDispatch, ValidCallReachesTheKernelChoice) {
  const Status s = workspace_query();
  EXPECT_EQ(s.code(), test::expected_default_dispatch(device_)) << status_code_name(s.code()) << ": " << s.message();
}

// On Hopper with this build the default options run the wgmma kernel and
// INT4 Q K^T or FP16 P V the mma.sync family (README): the fallback runs
// correctly too, so only the choice itself shows a dispatch that sends the
// defaults to the slower family. (Unset SAGE_FORCE_KERNEL: it limits the choice.)
TEST_F(ApiGpuDispatch, HopperRunsTheDefaultsOnTheWgmmaKernel) {
  cuda::DeviceInfo info;
  std::string error;
  ASSERT_TRUE(cuda::device_info(device_, &info, &error)) << error;
  if (info.cc_major != 9 || info.cc_minor != 0 || cuda::device_code_arch(9, 0) != 90) {
    GTEST_SKIP() << "not an sm_90 GPU with this build's sm_90a code (" << info.arch() << ")";
  }
  if (const char* forced = std::getenv("SAGE_FORCE_KERNEL"); forced != nullptr && *forced != '\0') {
    GTEST_SKIP() << "SAGE_FORCE_KERNEL=" << forced << " limits the dispatch";
  }
  std::string family;
  ASSERT_TRUE(detail::gpu_kernel_family(args_, options_, &family).is_ok());
  EXPECT_EQ(family, "sm90");
  AttentionOptions int4 = options_;
  int4.qk_format = QKFormat::int4;
  ASSERT_TRUE(detail::gpu_kernel_family(args_, int4, &family).is_ok());
  EXPECT_EQ(family, "mma");
  AttentionOptions fp16_pv = options_;
  fp16_pv.pv_format = PVFormat::fp16;
  ASSERT_TRUE(detail::gpu_kernel_family(args_, fp16_pv, &family).is_ok());
  EXPECT_EQ(family, "mma");
}

TEST_F(ApiGpuDispatch, HostMemoryWithAGpuDeviceIsRejected) {
  int pageable_access = 0;
  SAGE_CUDA_CHECK(cudaDeviceGetAttribute(&pageable_access, cudaDevAttrPageableMemoryAccess, device_));
  if (pageable_access != 0) GTEST_SKIP() << "this GPU reads pageable host memory";
  std::vector<std::uint16_t> host(B * H * N * D);
  args_.k.data = host.data();
  const Status s = workspace_query();
  EXPECT_EQ(s.code(), StatusCode::invalid_argument) << s.message();
  EXPECT_EQ(s.message().rfind("k: data is host memory", 0), 0u) << s.message();
}

TEST_F(ApiGpuDispatch, MissingDeviceIsUnsupported) {
  for (TensorView* t : {&args_.q, &args_.k, &args_.v, &args_.out}) t->device = 999;
  const Status s = workspace_query();
  EXPECT_EQ(s.code(), StatusCode::unsupported_device) << s.message();
  EXPECT_EQ(s.message().rfind("no CUDA device 999", 0), 0u) << s.message();
}

TEST_F(ApiGpuDispatch, UnsupportedHeadDimIsNotImplemented) {
  // D = 160 passes validation (1..256) but the GPU kernels stop at 128.
  for (TensorView* t : {&args_.q, &args_.k, &args_.v, &args_.out}) {
    *t = make_contiguous_view(t->data, DType::bf16, {B, H, N, 160}, device_);
  }
  const Status s = workspace_query();
  if (s.code() == StatusCode::unsupported_device) GTEST_SKIP() << s.message();
  EXPECT_EQ(s.code(), StatusCode::not_implemented) << s.message();
  EXPECT_NE(s.message().find("head_dim 160"), std::string::npos) << s.message();
}

}  // namespace
}  // namespace sage
