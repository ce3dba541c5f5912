// attention_forward on host tensors: strided views in both layouts and all
// three input dtypes, GQA, causal alignment, LSE, and the output conversion,
// checked against exact attention in float64 and, bit for bit, against the
// emulation the host path is documented to run.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "api/host_forward.h"
#include "api_test_helpers.h"
#include "numerics/tile_geometry.h"
#include "reference/reference.h"
#include "sage/attention.h"
#include "test_seed.h"

namespace sage {
namespace {

using test::StridedTensor;

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

struct Sizes {
  std::int64_t batch = 2, heads_q = 4, heads_kv = 2, nq = 40, nk = 72, head_dim = 64;
};

// q, k, v, out, lse of one call, each a padded (and partly permuted) view
// over storage that is poisoned with NaN before the call.
struct Call {
  StridedTensor q, k, v, out, lse;
  AttentionOptions options;
  AttentionArgs args() const { return {q.view, k.view, v.view, out.view, lse.view}; }
};

// Shape of a q/k/v/out tensor in a layout.
std::vector<std::int64_t> shape_in(TensorLayout layout, std::int64_t b, std::int64_t h, std::int64_t n,
                                   std::int64_t d) {
  return layout == TensorLayout::HND ? std::vector<std::int64_t>{b, h, n, d} : std::vector<std::int64_t>{b, n, h, d};
}

Call make_call(DType dtype, TensorLayout layout, const Sizes& s, std::uint64_t seed) {
  Call c;
  c.options.layout = layout;
  c.options.return_lse = true;
  // q and out: padded in every dimension. k and v: stored with dimensions 1
  // and 2 swapped relative to the layout, so that the view is not in its
  // natural order at all.
  c.q = test::make_strided(dtype, shape_in(layout, s.batch, s.heads_q, s.nq, s.head_dim), {1, 3, 1, 8}, {0, 1, 2, 3});
  c.k = test::make_strided(dtype, shape_in(layout, s.batch, s.heads_kv, s.nk, s.head_dim), {0, 1, 2, 4}, {0, 2, 1, 3});
  c.v = test::make_strided(dtype, shape_in(layout, s.batch, s.heads_kv, s.nk, s.head_dim), {0, 2, 1, 0}, {0, 2, 1, 3});
  c.out = test::make_strided(dtype, shape_in(layout, s.batch, s.heads_q, s.nq, s.head_dim), {1, 2, 1, 4}, {0, 1, 2, 3});
  c.lse = test::make_strided(DType::f32, {s.batch, s.heads_q, s.nq}, {0, 1, 5}, {0, 2, 1});
  for (StridedTensor* t : {&c.q, &c.k, &c.v, &c.out, &c.lse}) test::poison(*t, kNaN);
  test::fill_random(c.q.view, seed);
  test::fill_random(c.k.view, seed + 1);
  test::fill_random(c.v.view, seed + 2);
  return c;
}

ref::Problem problem_of(const Sizes& s, const AttentionOptions& o) {
  ref::Problem p;
  p.batch = s.batch;
  p.heads_q = s.heads_q;
  p.heads_kv = s.heads_kv;
  p.nq = s.nq;
  p.nk = s.nk;
  p.head_dim = s.head_dim;
  p.causal = o.causal;
  p.align = o.causal_align;
  p.sm_scale = o.sm_scale != 0.0f ? o.sm_scale : 1.0 / std::sqrt(static_cast<double>(s.head_dim));
  return p;
}

// Dense [B, Hq, Nq] of an lse view.
std::vector<double> dense_lse(const TensorView& lse) {
  std::vector<double> out;
  test::for_each_index(lse, [&](const std::int64_t* i) { out.push_back(test::get(lse, i)); });
  return out;
}

// Every element of the view is finite; every storage element outside the
// view still holds the NaN poison (nothing was written out of bounds).
void expect_view_written_and_padding_untouched(const StridedTensor& t, const char* name) {
  std::set<std::int64_t> in_view;
  std::int64_t nonfinite = 0;
  test::for_each_index(t.view, [&](const std::int64_t* i) {
    in_view.insert(test::offset_of(t.view, i));
    if (!std::isfinite(test::get(t.view, i))) ++nonfinite;
  });
  EXPECT_EQ(nonfinite, 0) << name << ": elements left unwritten (NaN) or non-finite";
  const int bytes = test::element_bytes(t.view.dtype);
  std::int64_t touched = 0;
  for (std::int64_t e = 0; e * bytes < static_cast<std::int64_t>(t.bytes.size()); ++e) {
    if (in_view.count(e) == 0 && !std::isnan(test::load(t.bytes.data() + e * bytes, t.view.dtype))) ++touched;
  }
  EXPECT_EQ(touched, 0) << name << ": padding outside the view was written";
}

class ApiHostForward : public ::testing::TestWithParam<DType> {
 protected:
  void expect_host_path_equals_emulation(const AttentionOptions& formats, const TileGeometry& geometry, const Sizes& s,
                                         std::uint64_t seed) {
    Call c = make_call(GetParam(), TensorLayout::NHD, s, seed);
    c.options.qk_format = formats.qk_format;
    c.options.qk_granularity = formats.qk_granularity;
    c.options.pv_format = formats.pv_format;
    c.options.causal = true;
    ASSERT_TRUE(attention_forward(c.args(), c.options, nullptr, 0, nullptr).is_ok());

    const ref::Problem p = problem_of(s, c.options);
    const auto to_float = [](const std::vector<double>& d) { return std::vector<float>(d.begin(), d.end()); };
    const std::vector<float> q = to_float(test::dense_bhnd(c.q.view, TensorLayout::NHD));
    const std::vector<float> k = to_float(test::dense_bhnd(c.k.view, TensorLayout::NHD));
    const std::vector<float> v = to_float(test::dense_bhnd(c.v.view, TensorLayout::NHD));
    std::vector<float> emulated(q.size()), emulated_lse(static_cast<std::size_t>(p.lse_elems()));
    ref::emulate_attention(p, c.options, geometry, q.data(), k.data(), v.data(), emulated.data(),
                           emulated_lse.data());

    std::size_t i = 0;
    std::int64_t mismatches = 0;
    for (std::int64_t b = 0; b < s.batch; ++b)
      for (std::int64_t h = 0; h < s.heads_q; ++h)
        for (std::int64_t n = 0; n < s.nq; ++n)
          for (std::int64_t d = 0; d < s.head_dim; ++d, ++i) {
            const test::Index4 index = test::layout_index(TensorLayout::NHD, b, h, n, d);
            const float expected = test::load(
                [&] {
                  static thread_local unsigned char converted[4];
                  test::store(converted, GetParam(), emulated[i]);  // RNE into out's dtype
                  return converted;
                }(),
                GetParam());
            if (test::get(c.out.view, index.data()) != expected) ++mismatches;
          }
    EXPECT_EQ(mismatches, 0);
    const std::vector<double> lse = dense_lse(c.lse.view);
    for (std::size_t r = 0; r < lse.size(); ++r) ASSERT_EQ(static_cast<float>(lse[r]), emulated_lse[r]) << r;
  }
};

// The acceptance test of the host path: NHD strided views, GQA, Nq != Nk,
// causal bottom-right, LSE, against float64.
TEST_P(ApiHostForward, StridedNhdGqaCausalBottomRightMatchesExact) {
  const Sizes s;
  const std::uint64_t seed = test::fresh_seed();
  SCOPED_TRACE(test::seed_note(seed));
  Call c = make_call(GetParam(), TensorLayout::NHD, s, seed);
  c.options.causal = true;
  c.options.causal_align = CausalAlign::bottom_right;
  const Status status = attention_forward(c.args(), c.options, nullptr, 0, nullptr);
  ASSERT_TRUE(status.is_ok()) << status.message();

  expect_view_written_and_padding_untouched(c.out, "out");
  expect_view_written_and_padding_untouched(c.lse, "lse");

  const ref::Problem p = problem_of(s, c.options);
  const std::vector<double> q = test::dense_bhnd(c.q.view, TensorLayout::NHD);
  const std::vector<double> k = test::dense_bhnd(c.k.view, TensorLayout::NHD);
  const std::vector<double> v = test::dense_bhnd(c.v.view, TensorLayout::NHD);
  std::vector<double> exact(q.size()), exact_lse(static_cast<std::size_t>(p.lse_elems()));
  ref::exact_attention(p, q.data(), k.data(), v.data(), exact.data(), exact_lse.data());

  const std::vector<double> out = test::dense_bhnd(c.out.view, TensorLayout::NHD);
  const std::vector<float> out_f(out.begin(), out.end());
  const ref::Metrics m = ref::compare(exact.data(), out_f.data(), p.batch * p.heads_q * p.nq, p.head_dim);
  // INT8 QK^T + FP8 PV on uniform inputs: documented bound for the default
  // recipe is cos-sim >= 0.999 at N=1024; these short rows are a bit noisier.
  EXPECT_GT(m.cos_sim, 0.995) << dtype_name(GetParam());
  EXPECT_GT(m.worst_row_cos_sim, 0.98) << dtype_name(GetParam());

  const std::vector<double> lse = dense_lse(c.lse.view);
  for (std::size_t i = 0; i < lse.size(); ++i) ASSERT_NEAR(lse[i], exact_lse[i], 0.05) << "lse row " << i;
}

// The host path is the emulation at the geometry of the kernel a Hopper GPU
// runs for the options, plus layout handling and the output conversion
// (round to nearest even into out's dtype): bit for bit. For the default
// formats (the sm90 kernel's) and two that only the mma.sync kernels run
// (72 keys: one 128-key tile there, two 64-key ones here).
TEST_P(ApiHostForward, EqualsEmulationBitForBit) {
  const Sizes s;
  const std::uint64_t seed = test::fresh_seed();
  SCOPED_TRACE(test::seed_note(seed));
  AttentionOptions int4, fp16_pv;
  int4.qk_format = QKFormat::int4;
  int4.qk_granularity = Granularity::per_thread;
  fp16_pv.pv_format = PVFormat::fp16;
  for (const auto& [formats, geometry] : {std::pair{AttentionOptions{}, kSm90Geometry}, std::pair{int4, kMmaGeometry},
                                           std::pair{fp16_pv, kMmaGeometry}}) {
    SCOPED_TRACE(std::string("qk ") + qk_format_name(formats.qk_format) + ", pv " + pv_format_name(formats.pv_format));
    expect_host_path_equals_emulation(formats, geometry, s, seed);
  }
}

// Which geometry the host path emulates: the kernel's that a Hopper GPU runs
// for the formats (src/cuda/mma: kMmaGeometry; src/cuda/sm90: kSm90Geometry),
// and kSm90Geometry where no GPU kernel runs them yet.
TEST(ApiHostForwardGeometry, IsTheHopperKernelsForTheFormats) {
  const auto with = [](auto&& change) {
    AttentionOptions o;
    change(o);
    return o;
  };
  struct Row {
    const char* what;
    AttentionOptions options;
    const char* geometry;
  } rows[] = {
      {"default (sm90)", {}, "kSm90Geometry"},
      {"per-block INT8, smooth Q and V (sm90)", with([](AttentionOptions& o) {
         o.qk_granularity = Granularity::per_block;
         o.smooth_q = o.smooth_v = true;
       }),
       "kSm90Geometry"},
      {"INT4, FP8 (mma)", with([](AttentionOptions& o) { o.qk_format = QKFormat::int4; }), "kMmaGeometry"},
      {"INT8, FP16 two-level (mma)", with([](AttentionOptions& o) { o.pv_format = PVFormat::fp16; }), "kMmaGeometry"},
      {"INT4, FP16 fp32 accumulation (mma)", with([](AttentionOptions& o) {
         o.qk_format = QKFormat::int4;
         o.pv_format = PVFormat::fp16;
         o.pv_accum = PVAccum::fp32;
       }),
       "kMmaGeometry"},
      {"FP8 with fp32 accumulation (no kernel)", with([](AttentionOptions& o) { o.pv_accum = PVAccum::fp32; }),
       "kSm90Geometry"},
      {"E5M2 (no kernel)", with([](AttentionOptions& o) { o.pv_format = PVFormat::fp8_e5m2; }), "kSm90Geometry"},
      {"BF16 P V (no kernel)", with([](AttentionOptions& o) { o.pv_format = PVFormat::bf16; }), "kSm90Geometry"},
      {"INT4, E5M2 (no kernel)", with([](AttentionOptions& o) {
         o.qk_format = QKFormat::int4;
         o.pv_format = PVFormat::fp8_e5m2;
       }),
       "kSm90Geometry"},
      {"sage3 (no kernel)", with([](AttentionOptions& o) { o.method = Method::sage3; }), "kSm90Geometry"},
      {"sagebwd (no kernel)", with([](AttentionOptions& o) { o.method = Method::sagebwd; }), "kSm90Geometry"},
  };
  for (const Row& r : rows) EXPECT_STREQ(geometry_name(detail::emulated_geometry(r.options)), r.geometry) << r.what;
}


// The same logical data in HND and NHD gives the same bits.
TEST_P(ApiHostForward, HndAndNhdAgree) {
  const Sizes s;
  const std::uint64_t seed = test::fresh_seed();
  SCOPED_TRACE(test::seed_note(seed));
  Call nhd = make_call(GetParam(), TensorLayout::NHD, s, seed);
  Call hnd = make_call(GetParam(), TensorLayout::HND, s, seed + 1);  // (its own padding; the data is copied from nhd)
  // Copy nhd's inputs into hnd's views element by element.
  for (auto [from, to] : {std::pair{&nhd.q, &hnd.q}, std::pair{&nhd.k, &hnd.k}, std::pair{&nhd.v, &hnd.v}}) {
    test::for_each_index(to->view, [&](const std::int64_t* i) {
      const test::Index4 swapped{i[0], i[2], i[1], i[3]};
      test::set(to->view, i, test::get(from->view, swapped.data()));
    });
  }
  ASSERT_TRUE(attention_forward(nhd.args(), nhd.options, nullptr, 0, nullptr).is_ok());
  ASSERT_TRUE(attention_forward(hnd.args(), hnd.options, nullptr, 0, nullptr).is_ok());
  EXPECT_EQ(test::dense_bhnd(nhd.out.view, TensorLayout::NHD), test::dense_bhnd(hnd.out.view, TensorLayout::HND));
  EXPECT_EQ(dense_lse(nhd.lse.view), dense_lse(hnd.lse.view));
}

// Outputs may share memory with the inputs (sage/attention.h): out written
// over q, k or v, or lse over any of them, gives the bits of the same call
// with outputs of their own. Each call gets the same fresh inputs
// (make_call with one seed): the outputs overwrite them.
TEST_P(ApiHostForward, OutputsOverTheirInputsGiveTheSameBits) {
  Sizes s;
  s.heads_q = s.heads_kv = 2, s.nq = s.nk = 48;  // out has the shape of q, k and v
  const std::uint64_t seed = test::fresh_seed();
  SCOPED_TRACE(test::seed_note(seed));
  Call separate = make_call(GetParam(), TensorLayout::NHD, s, seed);
  ASSERT_TRUE(attention_forward(separate.args(), separate.options, nullptr, 0, nullptr).is_ok());
  const std::vector<double> out = test::dense_bhnd(separate.out.view, TensorLayout::NHD);
  const std::vector<double> lse = dense_lse(separate.lse.view);
  StridedTensor Call::*const inputs[] = {&Call::q, &Call::k, &Call::v};
  for (StridedTensor Call::*input : inputs) {
    SCOPED_TRACE(input == &Call::q ? "over q" : input == &Call::k ? "over k" : "over v");
    Call over = make_call(GetParam(), TensorLayout::NHD, s, seed);
    AttentionArgs args = over.args();
    args.out = (over.*input).view;
    ASSERT_TRUE(attention_forward(args, over.options, nullptr, 0, nullptr).is_ok());
    EXPECT_EQ(test::dense_bhnd(args.out, TensorLayout::NHD), out) << "out";
    EXPECT_EQ(dense_lse(over.lse.view), lse);

    Call lse_over = make_call(GetParam(), TensorLayout::NHD, s, seed);
    args = lse_over.args();
    args.lse.data = (lse_over.*input).bytes.data();  // (the lse spans fewer bytes than any input)
    ASSERT_TRUE(attention_forward(args, lse_over.options, nullptr, 0, nullptr).is_ok());
    EXPECT_EQ(test::dense_bhnd(lse_over.out.view, TensorLayout::NHD), out);
    EXPECT_EQ(dense_lse(args.lse), lse) << "lse";
  }
}

INSTANTIATE_TEST_SUITE_P(Dtypes, ApiHostForward, ::testing::Values(DType::f32, DType::f16, DType::bf16),
                         [](const ::testing::TestParamInfo<DType>& info) {
                           return std::string(dtype_name(info.param));
                         });

TEST(ApiHostForwardOptions, DefaultSmScaleIsOneOverSqrtHeadDim) {
  const Sizes s;  // head_dim 64: 1/8 is exact in float
  const std::uint64_t seed = test::fresh_seed();
  SCOPED_TRACE(test::seed_note(seed));
  Call by_default = make_call(DType::f32, TensorLayout::HND, s, seed);
  Call explicit_scale = make_call(DType::f32, TensorLayout::HND, s, seed);
  explicit_scale.options.sm_scale = 0.125f;
  ASSERT_TRUE(attention_forward(by_default.args(), by_default.options, nullptr, 0, nullptr).is_ok());
  ASSERT_TRUE(attention_forward(explicit_scale.args(), explicit_scale.options, nullptr, 0, nullptr).is_ok());
  EXPECT_EQ(test::dense_bhnd(by_default.out.view, TensorLayout::HND),
            test::dense_bhnd(explicit_scale.out.view, TensorLayout::HND));
}

TEST(ApiHostForwardOptions, CustomSmScaleMatchesExact) {
  const Sizes s;
  const std::uint64_t seed = test::fresh_seed();
  SCOPED_TRACE(test::seed_note(seed));
  Call c = make_call(DType::f32, TensorLayout::HND, s, seed);
  c.options.sm_scale = 0.3f;
  ASSERT_TRUE(attention_forward(c.args(), c.options, nullptr, 0, nullptr).is_ok());
  const ref::Problem p = problem_of(s, c.options);
  const std::vector<double> q = test::dense_bhnd(c.q.view, TensorLayout::HND);
  const std::vector<double> k = test::dense_bhnd(c.k.view, TensorLayout::HND);
  const std::vector<double> v = test::dense_bhnd(c.v.view, TensorLayout::HND);
  std::vector<double> exact(q.size());
  ref::exact_attention(p, q.data(), k.data(), v.data(), exact.data(), nullptr);
  EXPECT_GT(test::cos_sim(exact, test::dense_bhnd(c.out.view, TensorLayout::HND)), 0.99);
}

// Bottom-right alignment with Nq > Nk: the first Nq - Nk queries see no key.
// They get out = 0 and lse = -inf, and still overwrite the NaN poison.
TEST(ApiHostForwardOptions, RowsThatSeeNoKeyGetZeroAndMinusInfinity) {
  Sizes s;
  s.nq = 24;
  s.nk = 8;
  const std::uint64_t seed = test::fresh_seed();
  SCOPED_TRACE(test::seed_note(seed));
  Call c = make_call(DType::bf16, TensorLayout::HND, s, seed);
  c.options.causal = true;
  c.options.causal_align = CausalAlign::bottom_right;
  ASSERT_TRUE(attention_forward(c.args(), c.options, nullptr, 0, nullptr).is_ok());
  expect_view_written_and_padding_untouched(c.out, "out");
  test::for_each_index(c.lse.view, [&](const std::int64_t* i) {
    const float lse = test::get(c.lse.view, i);
    if (i[2] < s.nq - s.nk) {
      EXPECT_EQ(lse, -std::numeric_limits<float>::infinity()) << "row " << i[2];
      for (std::int64_t d = 0; d < s.head_dim; ++d) {
        const test::Index4 o{i[0], i[1], i[2], d};
        ASSERT_EQ(test::get(c.out.view, o.data()), 0.0f);
      }
    } else {
      EXPECT_TRUE(std::isfinite(lse)) << "row " << i[2];
    }
  });
}

TEST(ApiHostForwardOptions, LseIsOptional) {
  const Sizes s;
  const std::uint64_t seed = test::fresh_seed();
  SCOPED_TRACE(test::seed_note(seed));
  Call c = make_call(DType::bf16, TensorLayout::HND, s, seed);
  c.options.return_lse = false;
  AttentionArgs args = c.args();
  args.lse = TensorView{};
  ASSERT_TRUE(attention_forward(args, c.options, nullptr, 0, nullptr).is_ok());
  expect_view_written_and_padding_untouched(c.out, "out");
}

// NVFP4 without a per-tensor scale (as in SageAttention3) cannot hold a
// block whose largest |value| passes 2784: its E4M3 scale would round past
// 448 and the block would be clamped, finite and wrong. Such inputs are
// refused, naming the tensor; 2784 itself is taken; and the check sees the
// block as quantized, after smoothing: a large K offset that smooth_k removes
// is fine.
TEST(ApiHostForwardOptions, Sage3RefusesBlocksItsScalesCannotHold) {
  const Sizes s;
  const std::uint64_t seed = test::fresh_seed();
  SCOPED_TRACE(test::seed_note(seed));
  const auto run_with = [&](const char* tensor, float value, bool smooth_k) {
    Call c = make_call(DType::f32, TensorLayout::HND, s, seed);
    c.options.method = Method::sage3;
    c.options.smooth_k = smooth_k;
    const TensorView& target = tensor[0] == 'Q' ? c.q.view : tensor[0] == 'K' ? c.k.view : c.v.view;
    const std::int64_t where[4] = {1, 1, 5, 17};
    test::set(target, where, value);
    if (smooth_k) {  // the same offset in every key of the channel: the mean takes it away
      for (std::int64_t j = 0; j < s.nk; ++j) {
        const std::int64_t key[4] = {1, 1, j, 17};
        test::set(target, key, value);
      }
    }
    return attention_forward(c.args(), c.options, nullptr, 0, nullptr);
  };
  for (const char* tensor : {"Q", "K", "V"}) {
    SCOPED_TRACE(tensor);
    for (float too_large : {3000.0f, -2785.0f, 1e30f}) {
      const Status status = run_with(tensor, too_large, false);
      EXPECT_EQ(status.code(), StatusCode::invalid_argument) << status.message();
      EXPECT_NE(status.message().find(std::string("sage3 (NVFP4): a 1x16 block of ") + tensor), std::string::npos)
          << status.message();
      EXPECT_NE(status.message().find("2784"), std::string::npos) << status.message();
    }
    const Status at_limit = run_with(tensor, 2784.0f, false);
    EXPECT_TRUE(at_limit.is_ok()) << at_limit.message();
  }
  const Status smoothed = run_with("K", 5000.0f, true);
  EXPECT_TRUE(smoothed.is_ok()) << smoothed.message();
}

// A failure inside the host path comes back as a Status, never as an
// exception: a broadcast q of 2^60 f32 rows asks for a 2^62-byte buffer
// (bad_alloc), one of 2^61 f16 rows for a float buffer longer than a vector
// can hold (length_error); both are out of memory.
TEST(ApiHostForwardOptions, ExceptionsBecomeStatus) {
  struct Case {
    DType dtype;
    int log2_rows;
  };
  for (const Case c : {Case{DType::f32, 60}, Case{DType::f16, 61}}) {
    SCOPED_TRACE(std::string(dtype_name(c.dtype)) + " rows 2^" + std::to_string(c.log2_rows));
    const std::int64_t rows = std::int64_t{1} << c.log2_rows;
    float values[4] = {1.0f, 1.0f, 1.0f, 0.0f};  // q, k, v, out: one element each (any dtype fits)
    AttentionArgs args;
    args.q = make_contiguous_view(&values[0], c.dtype, {1, 1, rows, 1});
    args.q.stride[0] = args.q.stride[1] = args.q.stride[2] = 0;  // one value, broadcast
    args.k = make_contiguous_view(&values[1], c.dtype, {1, 1, 1, 1});
    args.v = make_contiguous_view(&values[2], c.dtype, {1, 1, 1, 1});
    args.out = make_contiguous_view(&values[3], c.dtype, {1, 1, rows, 1});  // never reached
    Status status;
    EXPECT_NO_THROW(status = attention_forward(args, AttentionOptions{}, nullptr, 0, nullptr));
    EXPECT_EQ(status.code(), StatusCode::out_of_memory) << status.message();
    EXPECT_NE(status.message().find("attention_forward"), std::string::npos) << status.message();
  }
}

}  // namespace
}  // namespace sage
