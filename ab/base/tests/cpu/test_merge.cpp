// merge_attention_states on the host: the merge against the formula in
// float64 (every dtype, both layouts, padded and permuted strides, rows with
// empty parts, large LSEs), in place, empty tensors, every validation error,
// the C API, and the identity it exists for: attention over [K1; K2] equals
// the merge of the attention over K1 and over K2.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <tuple>
#include <vector>

#include "api_test_helpers.h"
#include "merge_test_helpers.h"
#include "reference/reference.h"
#include "sage/c_api.h"
#include "sage/merge.h"
#include "test_seed.h"

namespace sage {
namespace {

using test::MergeCase;
using test::MergeShape;
using test::RowKind;

// Relative error the fp32 arithmetic may add before the output rounding
// (exp, a division, a product and an fma: a few fp32 ulps).
constexpr double kFp32MathTol = 8.0 / (1 << 23);

// Every element and lse entry of `c` (after the merge) against float64.
// Rows with an empty part must equal the other part exactly; rows with two
// empty parts must give out 0 and lse -inf; nothing may be NaN, and the
// padding around out and lse must still hold its NaN poison.
void expect_matches_double(const MergeCase& c, const test::MergeExpected& e) {
  const MergeShape& s = c.shape;
  const DType dtype = c.out.view.dtype;
  std::int64_t bad_out = 0, bad_lse = 0;
  for (std::int64_t row = 0; row < s.rows(); ++row) {
    const RowKind kind = test::row_kind(row);
    const float lse = test::lse_at(c, row);
    const bool lse_ok = std::isinf(e.lse[row]) ? lse == e.lse[row]
                                               : std::abs(lse - e.lse[row]) <= 1e-6 * std::max(1.0, std::abs(e.lse[row]));
    bad_lse += lse_ok ? 0 : 1;
    if (!lse_ok) ADD_FAILURE() << "row " << row << ": lse " << lse << ", expected " << e.lse[row];
    for (std::int64_t d = 0; d < s.head_dim; ++d) {
      const std::size_t i = static_cast<std::size_t>(row * s.head_dim + d);
      const float got = test::out_at(c, row, d);
      const bool exact = kind == RowKind::a_empty || kind == RowKind::b_empty || kind == RowKind::both_empty;
      const double tol = exact ? 0.0
                               : kFp32MathTol * e.magnitude[i] + test::ulp_of(e.out[i], dtype) / 2 +
                                     test::ulp_of(0, dtype);
      if (!(std::abs(got - e.out[i]) <= tol)) {
        if (bad_out++ < 10) ADD_FAILURE() << "row " << row << " d " << d << ": " << got << ", expected " << e.out[i];
      }
    }
  }
  EXPECT_EQ(bad_out, 0);
  EXPECT_EQ(bad_lse, 0);
}

// ---------------------------------------------------------------- against float64

using MergeParam = std::tuple<DType, TensorLayout, std::int64_t /*head_dim*/>;

class MergeHost : public ::testing::TestWithParam<MergeParam> {};

TEST_P(MergeHost, MatchesFloat64OnFreshInputs) {
  const auto [dtype, layout, head_dim] = GetParam();
  const std::uint64_t base = test::fresh_seed();
  SCOPED_TRACE(test::seed_note(base));
  for (const MergeShape shape : {MergeShape{1, 3, 17, head_dim}, MergeShape{2, 2, 9, head_dim}}) {
    for (std::uint64_t seed = base; seed < base + 3; ++seed) {
      SCOPED_TRACE(testing::Message() << "B=" << shape.batch << " H=" << shape.heads << " N=" << shape.tokens
                                      << " seed=" << seed);
      MergeCase c = test::make_merge_case(dtype, layout, shape, seed);
      const test::MergeExpected expected = test::merge_in_double(c);
      const Status st = merge_attention_states(c.args(), layout, nullptr);
      ASSERT_TRUE(st.is_ok()) << st.message();
      expect_matches_double(c, expected);
      EXPECT_EQ(test::padding_written(c.out), 0) << "out: padding written";
      EXPECT_EQ(test::padding_written(c.lse), 0) << "lse: padding written";
    }
  }
}

// out = out_a and lse = lse_a (the very same views) gives bitwise what the
// out-of-place merge gives.
TEST_P(MergeHost, InPlaceEqualsOutOfPlace) {
  const auto [dtype, layout, head_dim] = GetParam();
  const MergeShape shape{1, 3, 17, head_dim};
  MergeCase c = test::make_merge_case(dtype, layout, shape, 7);
  ASSERT_TRUE(merge_attention_states(c.args(), layout, nullptr).is_ok());
  MergeArgs in_place = c.args();
  in_place.out = in_place.out_a;
  in_place.lse = in_place.lse_a;
  const Status st = merge_attention_states(in_place, layout, nullptr);
  ASSERT_TRUE(st.is_ok()) << st.message();
  for (std::int64_t row = 0; row < shape.rows(); ++row) {
    const test::Index4 r = test::row_index(shape, row);
    const float lse = test::get(c.lse_a.view, r.data());
    EXPECT_TRUE(lse == test::lse_at(c, row) || (std::isnan(lse) && std::isnan(test::lse_at(c, row)))) << row;
    for (std::int64_t d = 0; d < head_dim; ++d) {
      const float got = test::get(c.out_a.view, test::layout_index(layout, r[0], r[1], r[2], d).data());
      EXPECT_EQ(got, test::out_at(c, row, d)) << "row " << row << " d " << d;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(DTypesLayoutsHeadDims, MergeHost,
                         ::testing::Combine(::testing::Values(DType::f32, DType::f16, DType::bf16),
                                            ::testing::Values(TensorLayout::HND, TensorLayout::NHD),
                                            ::testing::Values(std::int64_t{40}, std::int64_t{128})),
                         [](const ::testing::TestParamInfo<MergeParam>& info) {
                           return std::string(dtype_name(std::get<0>(info.param))) +
                                  (std::get<1>(info.param) == TensorLayout::HND ? "_HND_D" : "_NHD_D") +
                                  std::to_string(std::get<2>(info.param));
                         });

// One part empty: the other part exactly, bit for bit, whatever the empty
// part's out holds; both empty: zeros and -inf.
TEST(MergeHostRows, EmptyPartsAreExact) {
  float out_a[2] = {1.5f, -0.0f}, out_b[2] = {std::nanf(""), 3.0f};
  float lse_a = 0.25f, lse_b = -test::kInf;
  float out[2] = {0, 0}, lse = 0;
  MergeArgs args{make_contiguous_view(out_a, DType::f32, {1, 1, 1, 2}), make_contiguous_view(&lse_a, DType::f32, {1, 1, 1}),
                 make_contiguous_view(out_b, DType::f32, {1, 1, 1, 2}), make_contiguous_view(&lse_b, DType::f32, {1, 1, 1}),
                 make_contiguous_view(out, DType::f32, {1, 1, 1, 2}), make_contiguous_view(&lse, DType::f32, {1, 1, 1})};
  ASSERT_TRUE(merge_attention_states(args, TensorLayout::HND, nullptr).is_ok());
  EXPECT_EQ(out[0], 1.5f);
  EXPECT_TRUE(std::signbit(out[1]) && out[1] == 0.0f) << "-0 copied as -0";
  EXPECT_EQ(lse, 0.25f);

  lse_a = -test::kInf;
  out_a[0] = std::nanf("");
  ASSERT_TRUE(merge_attention_states(args, TensorLayout::HND, nullptr).is_ok());
  EXPECT_EQ(out[0], 0.0f);
  EXPECT_EQ(out[1], 0.0f);
  EXPECT_EQ(lse, -test::kInf);
}

// Shifted by the larger LSE: no overflow where exp(lse) alone would.
TEST(MergeHostRows, LargeLseDoesNotOverflow) {
  float out_a = 2.0f, out_b = 4.0f, lse_a = 1000.0f, lse_b = 1000.0f, out = 0, lse = 0;
  MergeArgs args{make_contiguous_view(&out_a, DType::f32, {1, 1, 1, 1}), make_contiguous_view(&lse_a, DType::f32, {1, 1, 1}),
                 make_contiguous_view(&out_b, DType::f32, {1, 1, 1, 1}), make_contiguous_view(&lse_b, DType::f32, {1, 1, 1}),
                 make_contiguous_view(&out, DType::f32, {1, 1, 1, 1}), make_contiguous_view(&lse, DType::f32, {1, 1, 1})};
  ASSERT_TRUE(merge_attention_states(args, TensorLayout::HND, nullptr).is_ok());
  EXPECT_EQ(out, 3.0f);
  EXPECT_FLOAT_EQ(lse, 1000.0f + std::log(2.0f));
}

// No rows: nothing is read or written, so NULL data is fine. head_dim 0:
// the rows still have an lse to merge.
TEST(MergeHostRows, EmptyTensors) {
  MergeArgs args;
  for (TensorView* t : {&args.out_a, &args.out_b, &args.out}) *t = make_contiguous_view(nullptr, DType::bf16, {2, 0, 3, 64});
  for (TensorView* t : {&args.lse_a, &args.lse_b, &args.lse}) *t = make_contiguous_view(nullptr, DType::f32, {2, 3, 0});
  Status st = merge_attention_states(args, TensorLayout::NHD, nullptr);
  EXPECT_TRUE(st.is_ok()) << st.message();

  float lse_a[2] = {0.0f, -test::kInf}, lse_b[2] = {0.0f, 1.0f}, lse[2] = {std::nanf(""), std::nanf("")};
  for (TensorView* t : {&args.out_a, &args.out_b, &args.out}) *t = make_contiguous_view(nullptr, DType::bf16, {1, 2, 1, 0});
  args.lse_a = make_contiguous_view(lse_a, DType::f32, {1, 2, 1});
  args.lse_b = make_contiguous_view(lse_b, DType::f32, {1, 2, 1});
  args.lse = make_contiguous_view(lse, DType::f32, {1, 2, 1});
  st = merge_attention_states(args, TensorLayout::HND, nullptr);
  ASSERT_TRUE(st.is_ok()) << st.message();
  EXPECT_FLOAT_EQ(lse[0], std::log(2.0f));
  EXPECT_EQ(lse[1], 1.0f);
}

// ---------------------------------------------------------------- validation

// A valid host merge (float32, HND, B=2, H=3, N=5, D=8) that each test
// breaks in one way.
class MergeValidation : public ::testing::Test {
 protected:
  static constexpr std::int64_t B = 2, H = 3, N = 5, D = 8;
  void SetUp() override {
    for (std::vector<float>* buffer : {&out_a_, &out_b_, &out_}) buffer->assign(B * H * N * D, 0.0f);
    for (std::vector<float>* buffer : {&lse_a_, &lse_b_, &lse_}) buffer->assign(B * H * N, 0.0f);
    args.out_a = make_contiguous_view(out_a_.data(), DType::f32, {B, H, N, D});
    args.out_b = make_contiguous_view(out_b_.data(), DType::f32, {B, H, N, D});
    args.out = make_contiguous_view(out_.data(), DType::f32, {B, H, N, D});
    args.lse_a = make_contiguous_view(lse_a_.data(), DType::f32, {B, H, N});
    args.lse_b = make_contiguous_view(lse_b_.data(), DType::f32, {B, H, N});
    args.lse = make_contiguous_view(lse_.data(), DType::f32, {B, H, N});
    layout = TensorLayout::HND;
  }
  Status merge() const { return merge_attention_states(args, layout, nullptr); }

  // Each tensor with its name, to break them one by one.
  std::vector<std::pair<const char*, TensorView*>> all() {
    return {{"out_a", &args.out_a}, {"lse_a", &args.lse_a}, {"out_b", &args.out_b},
            {"lse_b", &args.lse_b}, {"out", &args.out},     {"lse", &args.lse}};
  }

  std::vector<float> out_a_, out_b_, out_, lse_a_, lse_b_, lse_;
  MergeArgs args;
  TensorLayout layout = TensorLayout::HND;
};

TEST_F(MergeValidation, ValidArgumentsPass) { EXPECT_TRUE(merge().is_ok()) << merge().message(); }

TEST_F(MergeValidation, InvalidLayout) {
  layout = static_cast<TensorLayout>(7);
  test::expect_invalid(merge(), "layout", {"invalid value 7", "HND or NHD"});
}

TEST_F(MergeValidation, WrongRank) {
  args.out_a.rank = 3;
  test::expect_invalid(merge(), "out_a", {"rank-4", "got rank 3"});
  SetUp();
  args.lse_b.rank = 4;
  test::expect_invalid(merge(), "lse_b", {"rank-3", "[B, H, N]", "got rank 4"});
}

TEST_F(MergeValidation, InvalidDtypeValue) {
  args.out.dtype = static_cast<DType>(99);
  test::expect_invalid(merge(), "out", {"invalid dtype value 99"});
}

TEST_F(MergeValidation, NegativeSizeOrStride) {
  args.lse_a.shape[1] = -1;
  test::expect_invalid(merge(), "lse_a", {"negative size -1"});
  SetUp();
  args.out_b.stride[0] = -1;
  test::expect_invalid(merge(), "out_b", {"negative stride -1"});
}

TEST_F(MergeValidation, OutRowsMustBeContiguous) {
  args.out.stride[3] = 2;
  test::expect_invalid(merge(), "out", {"last dimension must be contiguous"});
  SetUp();
  args.lse.stride[2] = 7;  // the LSE takes any strides (this one does not overlap)
  args.lse.stride[1] = 35, args.lse.stride[0] = 105;
  lse_.resize(2 * 105);
  args.lse.data = lse_.data();
  EXPECT_TRUE(merge().is_ok()) << merge().message();
}

TEST_F(MergeValidation, InvalidDevice) {
  args.lse.device = -2;
  test::expect_invalid(merge(), "lse", {"invalid device -2"});
}

TEST_F(MergeValidation, NullData) {
  for (auto [name, t] : all()) {
    SetUp();
    t->data = nullptr;
    test::expect_invalid(merge(), name, {"data is NULL"});
  }
}

TEST_F(MergeValidation, OffsetsOverflow) {
  args.out_a.stride[0] = std::numeric_limits<std::int64_t>::max() / 2;
  test::expect_invalid(merge(), "out_a", {"overflow"});
}

TEST_F(MergeValidation, Dtypes) {
  for (TensorView* t : {&args.out_a, &args.out_b, &args.out}) t->dtype = DType::i8;
  test::expect_invalid(merge(), "out_a", {"int8", "not supported", "float16, bfloat16 or float32"});
  SetUp();
  args.out_b.dtype = DType::bf16;
  test::expect_invalid(merge(), "out_b", {"bfloat16", "must equal out_a's dtype float32"});
  SetUp();
  args.out.dtype = DType::f16;
  test::expect_invalid(merge(), "out", {"float16", "must equal out_a's dtype"});
  SetUp();
  args.lse_b.dtype = DType::f16;
  test::expect_invalid(merge(), "lse_b", {"must be float32", "float16"});
}

TEST_F(MergeValidation, AllOnOneDevice) {
  args.out.device = 0;
  test::expect_invalid(merge(), "out", {"GPU 0", "out_a is on the host", "one device"});
}

TEST_F(MergeValidation, Shapes) {
  args.out_b.shape[3] = D / 2;
  test::expect_invalid(merge(), "out_b", {"shape [2, 3, 5, 4]", "must equal out_a's shape [2, 3, 5, 8]"});
  SetUp();
  args.lse.shape[2] = N - 1;
  test::expect_invalid(merge(), "lse", {"shape [2, 3, 4]", "[B, H, N] = [2, 3, 5]"});
  SetUp();
  layout = TensorLayout::NHD;  // out_a [B, N, H, D] = [2, 3, 5, 8]: H = 5, N = 3
  test::expect_invalid(merge(), "lse_a", {"[B, H, N] = [2, 5, 3]"});
}

TEST_F(MergeValidation, OutputsMustNotOverlapThemselves) {
  args.out.stride[2] = 0;
  test::expect_invalid(merge(), "out", {"elements overlap"});
  SetUp();
  args.lse.stride[1] = 1;
  test::expect_invalid(merge(), "lse", {"elements overlap"});
}

TEST_F(MergeValidation, OutputsMustNotOverlapOtherTensors) {
  struct Case {
    const char* output;
    TensorView MergeArgs::*out_field;
    const char* input;
    TensorView MergeArgs::*in_field;
    std::int64_t shift;  // elements
  };
  const Case cases[] = {
      {"out", &MergeArgs::out, "out_a", &MergeArgs::out_a, 1},  // overlapping, not the same view
      {"out", &MergeArgs::out, "out_b", &MergeArgs::out_b, 0},  {"out", &MergeArgs::out, "lse_a", &MergeArgs::lse_a, 0},
      {"out", &MergeArgs::out, "lse_b", &MergeArgs::lse_b, 3},  {"out", &MergeArgs::out, "lse", &MergeArgs::lse, 0},
      {"lse", &MergeArgs::lse, "lse_a", &MergeArgs::lse_a, 2},  {"lse", &MergeArgs::lse, "out_a", &MergeArgs::out_a, 5},
      {"lse", &MergeArgs::lse, "out_b", &MergeArgs::out_b, 0},  {"lse", &MergeArgs::lse, "lse_b", &MergeArgs::lse_b, 0},
  };
  for (const Case& c : cases) {
    SetUp();
    SCOPED_TRACE(std::string(c.output) + " on " + c.input);
    // The input gets a buffer of its own, with room for the whole output past
    // the shift: the output then overlaps the input only, whatever the heap
    // puts next to the fixture's buffers (the error names the first overlap).
    std::vector<float> room(static_cast<std::size_t>(c.shift + 2 * B * H * N * D), 0.0f);
    TensorView& out = args.*c.out_field;
    TensorView& in = args.*c.in_field;
    in.data = room.data();
    out.data = room.data() + c.shift;
    test::expect_invalid(merge(), c.output, {std::string("overlaps ") + c.input, "in-place"});
  }
}

// The in-place merge: the very same views (strides of size-1 dimensions may
// differ, they are never applied).
TEST_F(MergeValidation, InPlaceIsAllowed) {
  args.out = args.out_a;
  args.lse = args.lse_a;
  EXPECT_TRUE(merge().is_ok()) << merge().message();
  SetUp();
  for (TensorView* t : {&args.out_a, &args.out_b, &args.out}) *t = make_contiguous_view(t->data, DType::f32, {B, 1, N, D});
  args.out = args.out_a;
  args.out.stride[1] = 12345;
  for (TensorView* t : {&args.lse_a, &args.lse_b, &args.lse}) *t = make_contiguous_view(t->data, DType::f32, {B, 1, N});
  EXPECT_TRUE(merge().is_ok()) << merge().message();
}

// GPU views (never dereferenced here: alignment is checked before any device
// is looked at) must be aligned to their element size.
TEST_F(MergeValidation, GpuPointersMustBeAligned) {
  std::uintptr_t address = std::uintptr_t{1} << 20;
  for (auto [name, t] : all()) {
    t->data = reinterpret_cast<void*>(address);
    t->device = 0;
    address += std::uintptr_t{1} << 16;
  }
  for (TensorView* t : {&args.out_a, &args.out_b, &args.out}) t->dtype = DType::bf16;
  args.out_b.data = static_cast<char*>(args.out_b.data) + 1;
  test::expect_invalid(merge(), "out_b", {"not 2-byte aligned"});
}

// ---------------------------------------------------------------- the C API

TEST_F(MergeValidation, CApiMatchesCpp) {
  for (std::size_t i = 0; i < out_a_.size(); ++i) out_a_[i] = std::sin(0.3f * i), out_b_[i] = std::cos(0.7f * i);
  for (std::size_t i = 0; i < lse_a_.size(); ++i) lse_a_[i] = 0.1f * i, lse_b_[i] = 2.0f - 0.2f * i;
  ASSERT_TRUE(merge().is_ok());
  const std::vector<float> cpp_out = out_, cpp_lse = lse_;
  out_.assign(out_.size(), 0.0f);
  lse_.assign(lse_.size(), 0.0f);

  auto c_tensor = [](const TensorView& v) {
    sage_tensor_t t{};
    t.data = v.data;
    t.dtype = static_cast<sage_dtype_t>(v.dtype);
    t.rank = v.rank;
    for (int d = 0; d < SAGE_MAX_RANK; ++d) t.shape[d] = v.shape[d], t.stride[d] = v.stride[d];
    t.device = v.device;
    return t;
  };
  const sage_tensor_t oa = c_tensor(args.out_a), la = c_tensor(args.lse_a), ob = c_tensor(args.out_b),
                      lb = c_tensor(args.lse_b), o = c_tensor(args.out), l = c_tensor(args.lse);
  ASSERT_EQ(sage_merge_attention_states(&oa, &la, &ob, &lb, &o, &l, SAGE_LAYOUT_HND, nullptr), SAGE_OK)
      << sage_last_error();
  EXPECT_EQ(out_, cpp_out);
  EXPECT_EQ(lse_, cpp_lse);

  EXPECT_EQ(sage_merge_attention_states(&oa, &la, nullptr, &lb, &o, &l, SAGE_LAYOUT_HND, nullptr),
            SAGE_ERROR_INVALID_ARGUMENT);
  EXPECT_STREQ(sage_last_error(), "out_b is NULL");
  EXPECT_EQ(sage_merge_attention_states(&oa, &la, &ob, &lb, &o, &l, static_cast<sage_layout_t>(5), nullptr),
            SAGE_ERROR_INVALID_ARGUMENT);
  EXPECT_NE(std::string(sage_last_error()).find("layout: invalid value 5"), std::string::npos) << sage_last_error();
  EXPECT_EQ(sage_merge_attention_states(&oa, &la, &ob, &lb, &la, &l, SAGE_LAYOUT_HND, nullptr),
            SAGE_ERROR_INVALID_ARGUMENT);
  EXPECT_NE(std::string(sage_last_error()).find("out: expected a rank-4"), std::string::npos) << sage_last_error();
}

// ---------------------------------------------------------------- the split identity

struct SplitCase {
  std::int64_t batch, heads_q, heads_kv, nq, nk, head_dim, split;  // keys [0, split) and [split, nk)
  bool causal;  // top-left; needs nq == nk (see keys_after)
  TensorLayout layout;
};

// Keys [from, to) of a dense [B, Hkv, Nk, D] array.
std::vector<double> key_range(const std::vector<double>& x, const ref::Problem& p, std::int64_t from, std::int64_t to) {
  std::vector<double> out;
  for (std::int64_t bh = 0; bh < p.batch * p.heads_kv; ++bh) {
    const auto row = x.begin() + (bh * p.nk + from) * p.head_dim;
    out.insert(out.end(), row, row + (to - from) * p.head_dim);
  }
  return out;
}

struct PartResult {
  std::vector<double> out, lse;
};

// Exact attention of all queries over keys [from, to). With the full
// problem's top-left causal mask, query i sees key j <= i: over the first
// part that is the same top-left mask; over keys [from, nk) it is key
// j' <= i - from, which with nq == nk is the bottom-right mask of that part
// (shift nk - from - nq = -from).
PartResult attend(const ref::Problem& full, const std::vector<double>& q, const std::vector<double>& k,
                  const std::vector<double>& v, std::int64_t from, std::int64_t to) {
  ref::Problem p = full;
  p.nk = to - from;
  if (from > 0) p.align = CausalAlign::bottom_right;
  PartResult r{std::vector<double>(static_cast<std::size_t>(p.q_elems())),
               std::vector<double>(static_cast<std::size_t>(p.lse_elems()))};
  ref::exact_attention(p, q.data(), key_range(k, full, from, to).data(), key_range(v, full, from, to).data(),
                       r.out.data(), r.lse.data());
  return r;
}

// A part's (out, lse) as float32 views in the case's layout.
struct PartViews {
  test::StridedTensor out, lse;
};

PartViews to_views(const PartResult& r, const SplitCase& s) {
  PartViews v{test::make_strided(DType::f32, test::out_shape(s.layout, {s.batch, s.heads_q, s.nq, s.head_dim}),
                                 {0, 1, 0, 2}, {0, 1, 2, 3}),
              test::make_strided(DType::f32, {s.batch, s.heads_q, s.nq}, {0, 0, 1}, {0, 1, 2})};
  std::size_t i = 0, row = 0;
  for (std::int64_t b = 0; b < s.batch; ++b)
    for (std::int64_t h = 0; h < s.heads_q; ++h)
      for (std::int64_t n = 0; n < s.nq; ++n, ++row) {
        const test::Index4 lse_i{b, h, n, 0};
        test::set(v.lse.view, lse_i.data(), static_cast<float>(r.lse[row]));
        for (std::int64_t d = 0; d < s.head_dim; ++d) {
          test::set(v.out.view, test::layout_index(s.layout, b, h, n, d).data(), static_cast<float>(r.out[i++]));
        }
      }
  return v;
}

class MergeSplitIdentity : public ::testing::TestWithParam<SplitCase> {};

TEST_P(MergeSplitIdentity, MergedPartsEqualTheFullAttention) {
  const SplitCase s = GetParam();
  ref::Problem full;
  full.batch = s.batch, full.heads_q = s.heads_q, full.heads_kv = s.heads_kv;
  full.nq = s.nq, full.nk = s.nk, full.head_dim = s.head_dim;
  full.causal = s.causal;
  full.sm_scale = 1.0 / std::sqrt(static_cast<double>(s.head_dim));
  const ref::Inputs in = ref::make_inputs(full, ref::Distribution::gaussian, 5, DType::f32);
  const std::vector<double> q(in.q.begin(), in.q.end()), k(in.k.begin(), in.k.end()), v(in.v.begin(), in.v.end());

  PartResult expected{std::vector<double>(static_cast<std::size_t>(full.q_elems())),
                      std::vector<double>(static_cast<std::size_t>(full.lse_elems()))};
  ref::exact_attention(full, q.data(), k.data(), v.data(), expected.out.data(), expected.lse.data());
  const PartResult first = attend(full, q, k, v, 0, s.split), second = attend(full, q, k, v, s.split, s.nk);

  PartViews a = to_views(first, s), b = to_views(second, s);
  PartViews merged = to_views(first, s);  // overwritten below
  test::poison(merged.out, std::nanf(""));
  test::poison(merged.lse, std::nanf(""));
  const MergeArgs args{a.out.view, a.lse.view, b.out.view, b.lse.view, merged.out.view, merged.lse.view};
  const Status st = merge_attention_states(args, s.layout, nullptr);
  ASSERT_TRUE(st.is_ok()) << st.message();

  std::int64_t empty_rows = 0;
  for (double lse : second.lse) empty_rows += std::isinf(lse) ? 1 : 0;
  if (s.causal) {
    EXPECT_EQ(empty_rows, s.batch * s.heads_q * s.split) << "the second part must be fully masked for the first rows";
  }

  const std::vector<double> out = test::dense_bhnd(merged.out.view, s.layout);
  std::size_t row = 0;
  for (std::int64_t b_ = 0; b_ < s.batch; ++b_)
    for (std::int64_t h = 0; h < s.heads_q; ++h)
      for (std::int64_t n = 0; n < s.nq; ++n, ++row) {
        const test::Index4 i{b_, h, n, 0};
        EXPECT_NEAR(test::get(merged.lse.view, i.data()), expected.lse[row], 1e-6 * std::max(1.0, std::abs(expected.lse[row])))
            << "row " << row;
      }
  for (std::size_t i = 0; i < out.size(); ++i) ASSERT_NEAR(out[i], expected.out[i], 2e-6) << "element " << i;
}

INSTANTIATE_TEST_SUITE_P(Cases, MergeSplitIdentity,
                         ::testing::Values(SplitCase{1, 2, 2, 24, 24, 16, 10, true, TensorLayout::HND},
                                           SplitCase{2, 4, 2, 13, 29, 40, 11, false, TensorLayout::NHD},
                                           SplitCase{1, 3, 1, 32, 32, 64, 17, true, TensorLayout::NHD}));

}  // namespace
}  // namespace sage
