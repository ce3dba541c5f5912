// The C API: NULL pointers, enum values no C++ enum can hold, the per-thread
// last error, defaults, and a real host call checked against exact attention.
#include "sage/c_api.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <thread>
#include <vector>

#include "reference/reference.h"
#include "sage/attention.h"
#include "sage/version.h"

namespace {

static_assert(SAGE_OK == static_cast<int>(sage::StatusCode::ok));
static_assert(SAGE_ERROR_INVALID_ARGUMENT == static_cast<int>(sage::StatusCode::invalid_argument));
static_assert(SAGE_ERROR_NOT_IMPLEMENTED == static_cast<int>(sage::StatusCode::not_implemented));
static_assert(SAGE_ERROR_UNSUPPORTED_DEVICE == static_cast<int>(sage::StatusCode::unsupported_device));
static_assert(SAGE_ERROR_CUDA == static_cast<int>(sage::StatusCode::cuda_error));
static_assert(SAGE_ERROR_INTERNAL == static_cast<int>(sage::StatusCode::internal));
static_assert(SAGE_ERROR_OUT_OF_MEMORY == static_cast<int>(sage::StatusCode::out_of_memory));

sage_tensor_t dense_tensor(float* data, std::initializer_list<std::int64_t> shape) {
  sage_tensor_t t{};
  t.data = data;
  t.dtype = SAGE_DTYPE_F32;
  t.rank = static_cast<std::int32_t>(shape.size());
  t.device = SAGE_HOST_DEVICE;
  int d = 0;
  for (std::int64_t extent : shape) t.shape[d++] = extent;
  std::int64_t stride = 1;
  for (int i = t.rank - 1; i >= 0; --i) {
    t.stride[i] = stride;
    stride *= t.shape[i];
  }
  return t;
}

// A tiny valid problem: B=1, H=2, N=32, D=16, float32 on the host.
class CApi : public ::testing::Test {
 protected:
  static constexpr std::int64_t kB = 1, kH = 2, kN = 32, kD = 16;
  void SetUp() override {
    for (std::vector<float>* buffer : {&q_, &k_, &v_}) buffer->assign(kB * kH * kN * kD, 0.0f);
    // Poisoned outputs: a value the call does not write stays NaN and fails the comparisons.
    out_.assign(kB * kH * kN * kD, std::numeric_limits<float>::quiet_NaN());
    lse_.assign(kB * kH * kN, std::numeric_limits<float>::quiet_NaN());
    // Deterministic, varied inputs (a fixed pattern, no generator needed).
    for (std::size_t i = 0; i < q_.size(); ++i) {
      q_[i] = std::sin(0.37f * static_cast<float>(i));
      k_[i] = std::cos(0.23f * static_cast<float>(i) + 1.0f);
      v_[i] = std::sin(0.11f * static_cast<float>(i) + 2.0f);
    }
    q = dense_tensor(q_.data(), {kB, kH, kN, kD});
    k = dense_tensor(k_.data(), {kB, kH, kN, kD});
    v = dense_tensor(v_.data(), {kB, kH, kN, kD});
    out = dense_tensor(out_.data(), {kB, kH, kN, kD});
    lse = dense_tensor(lse_.data(), {kB, kH, kN});
    ASSERT_EQ(sage_default_options(&options), SAGE_OK);
  }
  // lse goes along exactly when the options ask for it.
  sage_status_t forward() {
    return sage_attention_forward(&q, &k, &v, &out, options.return_lse ? &lse : nullptr, &options, nullptr, 0,
                                  nullptr);
  }

  std::vector<float> q_, k_, v_, out_, lse_;
  sage_tensor_t q, k, v, out, lse;
  sage_options_t options;
};

TEST_F(CApi, DefaultsEqualCppDefaults) {
  const sage::AttentionOptions d{};
  EXPECT_EQ(static_cast<int>(options.method), static_cast<int>(d.method));
  EXPECT_EQ(static_cast<int>(options.layout), static_cast<int>(d.layout));
  EXPECT_EQ(options.causal != 0, d.causal);
  EXPECT_EQ(static_cast<int>(options.causal_align), static_cast<int>(d.causal_align));
  EXPECT_EQ(options.sm_scale, d.sm_scale);
  EXPECT_EQ(static_cast<int>(options.qk_format), static_cast<int>(d.qk_format));
  EXPECT_EQ(static_cast<int>(options.qk_granularity), static_cast<int>(d.qk_granularity));
  EXPECT_EQ(static_cast<int>(options.pv_format), static_cast<int>(d.pv_format));
  EXPECT_EQ(static_cast<int>(options.pv_accum), static_cast<int>(d.pv_accum));
  EXPECT_EQ(options.smooth_q != 0, d.smooth_q);
  EXPECT_EQ(options.smooth_k != 0, d.smooth_k);
  EXPECT_EQ(options.smooth_v != 0, d.smooth_v);
  EXPECT_EQ(options.return_lse != 0, d.return_lse);
  EXPECT_EQ(sage_default_options(nullptr), SAGE_ERROR_INVALID_ARGUMENT);
  EXPECT_STREQ(sage_last_error(), "options is NULL");
}

TEST_F(CApi, NullPointers) {
  EXPECT_EQ(sage_attention_forward(nullptr, &k, &v, &out, nullptr, &options, nullptr, 0, nullptr),
            SAGE_ERROR_INVALID_ARGUMENT);
  EXPECT_STREQ(sage_last_error(), "q is NULL");
  EXPECT_EQ(sage_attention_forward(&q, nullptr, &v, &out, nullptr, &options, nullptr, 0, nullptr),
            SAGE_ERROR_INVALID_ARGUMENT);
  EXPECT_STREQ(sage_last_error(), "k is NULL");
  EXPECT_EQ(sage_attention_forward(&q, &k, nullptr, &out, nullptr, &options, nullptr, 0, nullptr),
            SAGE_ERROR_INVALID_ARGUMENT);
  EXPECT_STREQ(sage_last_error(), "v is NULL");
  EXPECT_EQ(sage_attention_forward(&q, &k, &v, nullptr, nullptr, &options, nullptr, 0, nullptr),
            SAGE_ERROR_INVALID_ARGUMENT);
  EXPECT_STREQ(sage_last_error(), "out is NULL");
  EXPECT_EQ(sage_attention_forward(&q, &k, &v, &out, nullptr, nullptr, nullptr, 0, nullptr),
            SAGE_ERROR_INVALID_ARGUMENT);
  EXPECT_NE(std::string(sage_last_error()).find("options is NULL"), std::string::npos);

  size_t bytes = 0;
  EXPECT_EQ(sage_attention_workspace_size(&q, &k, &v, &out, nullptr, &options, nullptr),
            SAGE_ERROR_INVALID_ARGUMENT);
  EXPECT_STREQ(sage_last_error(), "bytes is NULL");
  EXPECT_EQ(sage_attention_workspace_size(nullptr, &k, &v, &out, nullptr, &options, &bytes),
            SAGE_ERROR_INVALID_ARGUMENT);
  EXPECT_STREQ(sage_last_error(), "q is NULL");
}

TEST_F(CApi, LseIsGivenExactlyWhenRequested) {
  options.return_lse = 0;
  EXPECT_EQ(sage_attention_forward(&q, &k, &v, &out, nullptr, &options, nullptr, 0, nullptr), SAGE_OK)
      << sage_last_error();
  // An lse the call would leave unwritten (still the NaN poison) is refused, by both functions.
  EXPECT_EQ(sage_attention_forward(&q, &k, &v, &out, &lse, &options, nullptr, 0, nullptr),
            SAGE_ERROR_INVALID_ARGUMENT);
  EXPECT_NE(std::string(sage_last_error()).find("lse is given but options->return_lse is 0"), std::string::npos)
      << sage_last_error();
  size_t bytes = 0;
  EXPECT_EQ(sage_attention_workspace_size(&q, &k, &v, &out, &lse, &options, &bytes), SAGE_ERROR_INVALID_ARGUMENT);
  options.return_lse = 1;
  EXPECT_EQ(sage_attention_forward(&q, &k, &v, &out, nullptr, &options, nullptr, 0, nullptr),
            SAGE_ERROR_INVALID_ARGUMENT);
  EXPECT_NE(std::string(sage_last_error()).find("lse is NULL"), std::string::npos) << sage_last_error();
}

TEST_F(CApi, NullDataPointerNamesTheTensor) {
  v.data = nullptr;
  EXPECT_EQ(forward(), SAGE_ERROR_INVALID_ARGUMENT);
  EXPECT_STREQ(sage_last_error(), "v: data is NULL");
}

// Values a C caller can store in an enum-valued (int32_t) field that no
// enumerator has.
TEST_F(CApi, GarbageEnumValues) {
  const sage_options_t good = options;
  options.method = 7;
  EXPECT_EQ(forward(), SAGE_ERROR_INVALID_ARGUMENT);
  EXPECT_NE(std::string(sage_last_error()).find("options.method: invalid value 7"), std::string::npos)
      << sage_last_error();

  options = good;
  options.pv_format = -1;
  EXPECT_EQ(forward(), SAGE_ERROR_INVALID_ARGUMENT);
  EXPECT_NE(std::string(sage_last_error()).find("options.pv_format: invalid value -1"), std::string::npos)
      << sage_last_error();

  options = good;
  options.layout = 2;
  EXPECT_EQ(forward(), SAGE_ERROR_INVALID_ARGUMENT);
  EXPECT_NE(std::string(sage_last_error()).find("options.layout"), std::string::npos);

  options = good;
  options.qk_granularity = 1000;
  EXPECT_EQ(forward(), SAGE_ERROR_INVALID_ARGUMENT);
  EXPECT_NE(std::string(sage_last_error()).find("options.qk_granularity"), std::string::npos);

  options = good;
  k.dtype = 42;
  EXPECT_EQ(forward(), SAGE_ERROR_INVALID_ARGUMENT);
  EXPECT_NE(std::string(sage_last_error()).find("k.dtype: invalid value 42"), std::string::npos)
      << sage_last_error();
}

TEST_F(CApi, ValidationMessagesPassThrough) {
  k.shape[2] = kN - 1;  // v keeps kN
  EXPECT_EQ(forward(), SAGE_ERROR_INVALID_ARGUMENT);
  EXPECT_EQ(std::string(sage_last_error()).rfind("v: shape", 0), 0u) << sage_last_error();
}

TEST_F(CApi, LastErrorIsPerThread) {
  q.rank = 3;
  EXPECT_EQ(forward(), SAGE_ERROR_INVALID_ARGUMENT);
  const std::string main_error = sage_last_error();
  EXPECT_EQ(main_error.rfind("q: expected a rank-4 tensor", 0), 0u) << main_error;

  std::string other_before, other_after;
  std::thread other([&] {
    other_before = sage_last_error();
    sage_attention_forward(nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, 0, nullptr);
    other_after = sage_last_error();
  });
  other.join();
  EXPECT_EQ(other_before, "");
  EXPECT_EQ(other_after, "q is NULL");
  EXPECT_EQ(std::string(sage_last_error()), main_error);
}

TEST_F(CApi, VersionString) {
  EXPECT_STREQ(sage_version_string(), SAGE_VERSION_STRING);
  EXPECT_EQ(std::string(sage_version_string()).find('.') != std::string::npos, true);
}

TEST_F(CApi, HostWorkspaceIsZero) {
  size_t bytes = 99;
  EXPECT_EQ(sage_attention_workspace_size(&q, &k, &v, &out, nullptr, &options, &bytes), SAGE_OK)
      << sage_last_error();
  EXPECT_EQ(bytes, 0u);
}

TEST_F(CApi, HostForwardMatchesExactAttention) {
  options.return_lse = 1;
  options.causal = 1;
  ASSERT_EQ(forward(), SAGE_OK) << sage_last_error();

  sage::ref::Problem p;
  p.batch = kB;
  p.heads_q = p.heads_kv = kH;
  p.nq = p.nk = kN;
  p.head_dim = kD;
  p.causal = true;
  p.sm_scale = 1.0 / std::sqrt(static_cast<double>(kD));
  const std::vector<double> qd(q_.begin(), q_.end()), kd(k_.begin(), k_.end()), vd(v_.begin(), v_.end());
  std::vector<double> exact(qd.size()), exact_lse(lse_.size());
  sage::ref::exact_attention(p, qd.data(), kd.data(), vd.data(), exact.data(), exact_lse.data());

  const sage::ref::Metrics m = sage::ref::compare(exact.data(), out_.data(), kB * kH * kN, kD);
  EXPECT_GT(m.cos_sim, 0.99);
  EXPECT_EQ(m.nonfinite, 0);
  for (std::size_t i = 0; i < lse_.size(); ++i) EXPECT_NEAR(lse_[i], exact_lse[i], 0.05) << "row " << i;
}

}  // namespace
