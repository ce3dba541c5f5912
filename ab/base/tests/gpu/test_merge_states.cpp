// merge_attention_states on a GPU (the CUDA kernel in
// src/cuda/merge_states.cu) against the host implementation on the same
// inputs: every dtype, both layouts, padded/permuted strides whose rows allow
// the 16-byte vector path and ones that force the element-wise path
// (misaligned base, odd row padding, head_dim not a multiple of the vector),
// rows with empty parts (exact, never NaN), in place, a multi-million-element
// case; and the identity with the real GPU attention: attention_forward over
// [K1; K2] against the merge of the attention over K1 and over K2.
//
// Bounds: the kernel and the host loop run one formula (merge_states.h);
// they differ only by the device's expf/logf (<= 2 ulp) against the C
// library's, so out agrees within a few fp32 ulps of |w_a a| + |w_b b|
// before the output rounding, i.e. within 1 ulp of a 16-bit output, and
// lse within 1e-6 relative. Rows with an empty part are bitwise equal.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <tuple>
#include <vector>

#include "cpu/merge_test_helpers.h"
#include "gpu/gpu_test_util.h"
#include "numerics/formats.h"
#include "reference/reference.h"
#include "sage/attention.h"
#include "sage/merge.h"
#include "test_seed.h"

namespace sage {
namespace {

using test::DeviceBuffer;
using test::MergeCase;
using test::MergeShape;
using test::RowKind;
using test::RowPadding;
using test::StridedTensor;

// A host tensor's storage copied to the device, its view `shift` elements
// into the buffer (shift 1 takes the base off the 16-byte grid).
struct DeviceTensor {
  std::unique_ptr<DeviceBuffer<unsigned char>> buffer;
  TensorView view;
  std::int64_t shift_bytes = 0;
};

void upload(const StridedTensor& t, int device, std::int64_t shift, DeviceTensor* d) {
  d->shift_bytes = shift * test::element_bytes(t.view.dtype);
  d->buffer = std::make_unique<DeviceBuffer<unsigned char>>(t.bytes.size() + d->shift_bytes);
  SAGE_CUDA_CHECK(d->buffer->status());
  SAGE_CUDA_CHECK(cudaMemset(d->buffer->data(), 0, d->buffer->size()));
  SAGE_CUDA_CHECK(cudaMemcpy(d->buffer->data() + d->shift_bytes, t.bytes.data(), t.bytes.size(), cudaMemcpyHostToDevice));
  d->view = t.view;
  d->view.data = d->buffer->data() + d->shift_bytes;
  d->view.device = device;
}

// A host copy of `like` (same strides) holding what `d` holds on the device.
void download(const DeviceTensor& d, const StridedTensor& like, StridedTensor* out) {
  out->bytes.resize(like.bytes.size());
  out->view = like.view;
  out->view.data = out->bytes.data();
  SAGE_CUDA_CHECK(cudaMemcpy(out->bytes.data(), d.buffer->data() + d.shift_bytes, out->bytes.size(),
                             cudaMemcpyDeviceToHost));
}

struct GpuCaseOptions {
  RowPadding padding = RowPadding::vectors;
  std::int64_t shift = 0;  // elements by which every device view is moved
  bool in_place = false;
};

// The run's random base, offsetting each case's own seed: fresh inputs on
// every run, replayed with SAGE_TEST_SEED=<base>.
std::uint64_t run_seed_base() {
  static const std::uint64_t base = test::fresh_seed();
  return base;
}

// Builds a case, runs it on the GPU and on the host, and compares.
void expect_gpu_matches_host(DType dtype, TensorLayout layout, const MergeShape& shape, std::uint64_t case_seed,
                             const GpuCaseOptions& o) {
  const std::uint64_t seed = run_seed_base() + case_seed;
  SCOPED_TRACE(testing::Message() << dtype_name(dtype) << (layout == TensorLayout::HND ? " HND" : " NHD") << " B="
                                  << shape.batch << " H=" << shape.heads << " N=" << shape.tokens
                                  << " D=" << shape.head_dim << " case seed=" << case_seed << " shift=" << o.shift
                                  << " in_place=" << o.in_place << ", run " << test::seed_note(run_seed_base()));
  int device = 0;
  SAGE_CUDA_CHECK(cudaGetDevice(&device));
  MergeCase host = test::make_merge_case(dtype, layout, shape, seed, o.padding);
  const test::MergeExpected expected = test::merge_in_double(host);

  DeviceTensor out_a, lse_a, out_b, lse_b, out, lse;
  ASSERT_NO_FATAL_FAILURE(upload(host.out_a, device, o.shift, &out_a));
  ASSERT_NO_FATAL_FAILURE(upload(host.lse_a, device, o.shift, &lse_a));
  ASSERT_NO_FATAL_FAILURE(upload(host.out_b, device, o.shift, &out_b));
  ASSERT_NO_FATAL_FAILURE(upload(host.lse_b, device, o.shift, &lse_b));
  ASSERT_NO_FATAL_FAILURE(upload(host.out, device, o.shift, &out));  // NaN-poisoned, padding included
  ASSERT_NO_FATAL_FAILURE(upload(host.lse, device, o.shift, &lse));

  MergeArgs args{out_a.view, lse_a.view, out_b.view, lse_b.view, out.view, lse.view};
  if (o.in_place) args.out = out_a.view, args.lse = lse_a.view;
  cudaStream_t stream = nullptr;
  SAGE_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  const Status st = merge_attention_states(args, layout, stream);
  const cudaError_t sync = cudaStreamSynchronize(stream);
  (void)cudaStreamDestroy(stream);
  ASSERT_TRUE(st.is_ok()) << status_code_name(st.code()) << ": " << st.message();
  SAGE_CUDA_CHECK(sync);

  const Status host_st = merge_attention_states(host.args(), layout, nullptr);
  ASSERT_TRUE(host_st.is_ok()) << host_st.message();

  MergeCase gpu;  // host's shapes and strides, the GPU's results
  gpu.layout = layout;
  gpu.shape = shape;
  ASSERT_NO_FATAL_FAILURE(download(o.in_place ? out_a : out, o.in_place ? host.out_a : host.out, &gpu.out));
  ASSERT_NO_FATAL_FAILURE(download(o.in_place ? lse_a : lse, o.in_place ? host.lse_a : host.lse, &gpu.lse));

  if (!o.in_place) {
    EXPECT_EQ(test::padding_written(gpu.out), 0) << "out: padding written";
    EXPECT_EQ(test::padding_written(gpu.lse), 0) << "lse: padding written";
  }
  const double ulps = dtype == DType::f32 ? 8 : 1;
  std::int64_t bad = 0;
  for (std::int64_t row = 0; row < shape.rows(); ++row) {
    const RowKind kind = test::row_kind(row);
    const bool exact = kind == RowKind::a_empty || kind == RowKind::b_empty || kind == RowKind::both_empty;
    const float h_lse = test::lse_at(host, row), g_lse = test::lse_at(gpu, row);
    const bool lse_ok = exact ? g_lse == h_lse : std::abs(g_lse - h_lse) <= 1e-6 * std::max(1.0f, std::abs(h_lse));
    if (!lse_ok && bad++ < 10) ADD_FAILURE() << "row " << row << ": lse " << g_lse << " (host " << h_lse << ")";
    for (std::int64_t d = 0; d < shape.head_dim; ++d) {
      const float h = test::out_at(host, row, d), g = test::out_at(gpu, row, d);
      const double magnitude = expected.magnitude[static_cast<std::size_t>(row * shape.head_dim + d)];
      const double tol = exact ? 0.0 : ulps * test::ulp_of(magnitude, dtype) + test::ulp_of(0, dtype);
      if (!(std::abs(static_cast<double>(g) - h) <= tol) && bad++ < 10) {
        ADD_FAILURE() << "row " << row << " d " << d << ": " << g << " (host " << h << ")";
      }
    }
  }
  EXPECT_EQ(bad, 0);
}

using GpuMergeParam = std::tuple<DType, TensorLayout>;

class MergeGpu : public test::GpuTest, public ::testing::WithParamInterface<GpuMergeParam> {};

// Rows of whole vectors: the 16-byte path.
TEST_P(MergeGpu, VectorPathMatchesHost) {
  const auto [dtype, layout] = GetParam();
  for (std::uint64_t seed : {1u, 2u}) {
    expect_gpu_matches_host(dtype, layout, {1, 3, 17, 128}, seed, {});
    expect_gpu_matches_host(dtype, layout, {2, 5, 33, 64}, seed, {});
    expect_gpu_matches_host(dtype, layout, {1, 2, 9, 4000}, seed, {});  // more vectors per row than threads
  }
}

// Each of the three things that rules out 16-byte vectors.
TEST_P(MergeGpu, ElementPathMatchesHost) {
  const auto [dtype, layout] = GetParam();
  expect_gpu_matches_host(dtype, layout, {1, 3, 17, 128}, 3, {RowPadding::vectors, 1, false});  // misaligned base
  expect_gpu_matches_host(dtype, layout, {1, 3, 17, 40}, 4, {RowPadding::odd, 0, false});       // odd row strides
  expect_gpu_matches_host(dtype, layout, {2, 3, 17, 17}, 5, {RowPadding::vectors, 0, false});   // D % vector != 0
  expect_gpu_matches_host(dtype, layout, {1, 2, 5, 1}, 6, {RowPadding::odd, 0, false});         // D = 1
}

TEST_P(MergeGpu, InPlaceMatchesHost) {
  const auto [dtype, layout] = GetParam();
  expect_gpu_matches_host(dtype, layout, {1, 3, 17, 128}, 8, {RowPadding::vectors, 0, true});
  expect_gpu_matches_host(dtype, layout, {1, 3, 17, 40}, 9, {RowPadding::odd, 1, true});
}

INSTANTIATE_TEST_SUITE_P(DTypesLayouts, MergeGpu,
                         ::testing::Combine(::testing::Values(DType::f32, DType::f16, DType::bf16),
                                            ::testing::Values(TensorLayout::HND, TensorLayout::NHD)),
                         [](const ::testing::TestParamInfo<GpuMergeParam>& info) {
                           return std::string(dtype_name(std::get<0>(info.param))) +
                                  (std::get<1>(info.param) == TensorLayout::HND ? "_HND" : "_NHD");
                         });

class MergeGpuLarge : public test::GpuTest {};

// 2 x 16 x 2048 rows of 128: 8.4 M elements per tensor, many tiles per block.
TEST_F(MergeGpuLarge, MultiMillionElements) {
  expect_gpu_matches_host(DType::bf16, TensorLayout::NHD, {2, 16, 2048, 128}, 10, {});
}

// ---------------------------------------------------------------- with the GPU attention

// Dense bf16 bits of float values (already bf16-representable).
std::vector<std::uint16_t> to_bf16(const std::vector<float>& x) {
  std::vector<std::uint16_t> out(x.size());
  std::transform(x.begin(), x.end(), out.begin(), [](float f) { return num::float_to_bf16(f); });
  return out;
}

std::vector<double> to_double(const std::vector<std::uint16_t>& bf16) {
  std::vector<double> out(bf16.size());
  std::transform(bf16.begin(), bf16.end(), out.begin(), [](std::uint16_t b) { return num::bf16_to_float(b); });
  return out;
}

class MergeGpuAttention : public test::GpuTest, public ::testing::WithParamInterface<bool> {};

// attention_forward over all keys against the merge of attention_forward over
// keys [0, split) and [split, N). These are different quantizations (K
// smoothing, scales and the FP8 P per part), so close rather than equal: each
// is within cos 0.999 of exact attention on Gaussian inputs (worst seen
// 0.99910, test_sm90_forward.cpp), so the two can be ~0.998 apart. Checked:
// the merge is as close to exact float64 attention as the full call (no
// accuracy lost by splitting), and close to the full call. Causal (top-left,
// Nq = Nk): the second part is the bottom-right mask of its keys, fully
// masked for the first `split` queries (lse -inf).
TEST_P(MergeGpuAttention, MergedHalvesMatchTheFullCall) {
  const bool causal = GetParam();
  constexpr std::int64_t B = 1, H = 4, N = 512, D = 128, kSplit = 200;
  int device = 0;
  SAGE_CUDA_CHECK(cudaGetDevice(&device));
  ref::Problem p;
  p.batch = B, p.heads_q = p.heads_kv = H, p.nq = p.nk = N, p.head_dim = D;
  p.sm_scale = 1.0 / std::sqrt(static_cast<double>(D));
  const ref::Inputs in = ref::make_inputs(p, ref::Distribution::gaussian, 21, DType::bf16);

  const std::size_t elems = static_cast<std::size_t>(B * H * N * D), rows = static_cast<std::size_t>(B * H * N);
  DeviceBuffer<std::uint16_t> q(elems), k(elems), v(elems), out_full(elems), out_1(elems), out_2(elems), out_m(elems);
  DeviceBuffer<float> lse_full(rows), lse_1(rows), lse_2(rows), lse_m(rows);
  for (auto* b : {&q, &k, &v, &out_full, &out_1, &out_2, &out_m}) SAGE_CUDA_CHECK(b->status());
  for (auto* b : {&lse_full, &lse_1, &lse_2, &lse_m}) SAGE_CUDA_CHECK(b->status());
  SAGE_CUDA_CHECK(q.copy_from(to_bf16(in.q)));
  SAGE_CUDA_CHECK(k.copy_from(to_bf16(in.k)));
  SAGE_CUDA_CHECK(v.copy_from(to_bf16(in.v)));

  const auto view4 = [&](void* data, std::int64_t n) { return make_contiguous_view(data, DType::bf16, {B, H, n, D}, device); };
  const auto lse_view = [&](float* data) { return make_contiguous_view(data, DType::f32, {B, H, N}, device); };
  // Keys [from, from + n) of k or v: the same strides as the full tensor.
  const auto keys = [&](std::uint16_t* data, std::int64_t from, std::int64_t n) {
    TensorView t = view4(data + from * D, n);
    t.stride[0] = H * N * D, t.stride[1] = N * D;
    return t;
  };
  struct Call {
    AttentionArgs args;
    CausalAlign align;
  };
  const Call calls[] = {
      {{view4(q.data(), N), view4(k.data(), N), view4(v.data(), N), view4(out_full.data(), N), lse_view(lse_full.data())},
       CausalAlign::top_left},
      {{view4(q.data(), N), keys(k.data(), 0, kSplit), keys(v.data(), 0, kSplit), view4(out_1.data(), N),
        lse_view(lse_1.data())},
       CausalAlign::top_left},
      {{view4(q.data(), N), keys(k.data(), kSplit, N - kSplit), keys(v.data(), kSplit, N - kSplit),
        view4(out_2.data(), N), lse_view(lse_2.data())},
       CausalAlign::bottom_right},
  };
  std::size_t workspace_bytes = 0;
  for (const Call& c : calls) {
    AttentionOptions o;
    o.return_lse = true, o.causal = causal, o.causal_align = c.align;
    std::size_t bytes = 0;
    const Status st = attention_workspace_size(c.args, o, &bytes);
    if (st.code() == StatusCode::not_implemented || st.code() == StatusCode::unsupported_device) {
      GTEST_SKIP() << "no GPU attention kernel here: " << st.message();
    }
    ASSERT_TRUE(st.is_ok()) << st.message();
    workspace_bytes = std::max(workspace_bytes, bytes);
  }
  DeviceBuffer<unsigned char> workspace(std::max<std::size_t>(workspace_bytes, 1));
  SAGE_CUDA_CHECK(workspace.status());
  for (const Call& c : calls) {
    AttentionOptions o;
    o.return_lse = true, o.causal = causal, o.causal_align = c.align;
    const Status st = attention_forward(c.args, o, workspace.data(), workspace_bytes, nullptr);
    ASSERT_TRUE(st.is_ok()) << st.message();
  }
  const MergeArgs merge{view4(out_1.data(), N), lse_view(lse_1.data()), view4(out_2.data(), N),
                        lse_view(lse_2.data()), view4(out_m.data(), N), lse_view(lse_m.data())};
  const Status st = merge_attention_states(merge, TensorLayout::HND, nullptr);
  ASSERT_TRUE(st.is_ok()) << st.message();
  SAGE_CUDA_CHECK(cudaDeviceSynchronize());

  std::vector<std::uint16_t> full_bits, merged_bits;
  std::vector<float> full_lse, merged_lse, second_lse;
  SAGE_CUDA_CHECK(out_full.copy_to(full_bits));
  SAGE_CUDA_CHECK(out_m.copy_to(merged_bits));
  SAGE_CUDA_CHECK(lse_full.copy_to(full_lse));
  SAGE_CUDA_CHECK(lse_m.copy_to(merged_lse));
  SAGE_CUDA_CHECK(lse_2.copy_to(second_lse));

  const std::vector<double> full = to_double(full_bits), merged = to_double(merged_bits);
  for (std::size_t i = 0; i < merged.size(); ++i) ASSERT_TRUE(std::isfinite(merged[i])) << "element " << i;
  p.causal = causal;
  std::vector<double> exact(elems), exact_lse(rows);
  ref::exact_attention(p, std::vector<double>(in.q.begin(), in.q.end()).data(),
                       std::vector<double>(in.k.begin(), in.k.end()).data(),
                       std::vector<double>(in.v.begin(), in.v.end()).data(), exact.data(), exact_lse.data());
  const double cos_full = test::cos_sim(full, exact), cos_merged = test::cos_sim(merged, exact),
               cos_between = test::cos_sim(full, merged);
  SCOPED_TRACE(testing::Message() << "cos vs exact: full " << cos_full << ", merged " << cos_merged
                                  << "; merged vs full " << cos_between);
  EXPECT_GT(cos_merged, 0.9985);
  EXPECT_GT(cos_merged, cos_full - 5e-4);
  EXPECT_GT(cos_between, 0.997);
  std::int64_t empty_second = 0;
  for (std::size_t r = 0; r < rows; ++r) {
    empty_second += std::isinf(second_lse[r]) ? 1 : 0;
    ASSERT_TRUE(std::isfinite(merged_lse[r])) << "row " << r;
    EXPECT_NEAR(merged_lse[r], exact_lse[r], 0.1) << "row " << r << " (full call: " << full_lse[r] << ")";
  }
  EXPECT_EQ(empty_second, causal ? B * H * kSplit : 0);
}

INSTANTIATE_TEST_SUITE_P(Masks, MergeGpuAttention, ::testing::Values(false, true),
                         [](const ::testing::TestParamInfo<bool>& info) {
                           return std::string(info.param ? "Causal" : "Full");
                         });

}  // namespace
}  // namespace sage
