// Helpers for the merge_attention_states tests (the host tests here and the
// GPU tests in tests/gpu): a merge problem in padded, strided host storage
// with rows of every special kind, and the merge recomputed in float64.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "api_test_helpers.h"
#include "sage/merge.h"

namespace sage::test {

inline constexpr float kInf = std::numeric_limits<float>::infinity();

struct MergeShape {
  std::int64_t batch = 1, heads = 3, tokens = 17, head_dim = 40;
  std::int64_t rows() const { return batch * heads * tokens; }
};

// What the lse pair of a row is made of. Cycling through these, every kind
// shows up in every test that has a handful of rows.
enum class RowKind {
  random,       // both in [-4, 4)
  a_empty,      // lse_a = -inf (and out_a's row NaN: it must not be read)
  b_empty,      // lse_b = -inf (out_b's row NaN)
  both_empty,   // both -inf (both rows NaN): out 0, lse -inf
  large,        // around +100: exp without the shift would overflow
  far_apart,    // 60 apart: one weight ~1e-26
};
inline constexpr int kRowKinds = 6;
inline RowKind row_kind(std::int64_t row) { return static_cast<RowKind>(row % kRowKinds); }

struct MergeCase {
  TensorLayout layout = TensorLayout::HND;
  MergeShape shape;
  StridedTensor out_a, lse_a, out_b, lse_b, out, lse;

  MergeArgs args() const { return {out_a.view, lse_a.view, out_b.view, lse_b.view, out.view, lse.view}; }
};

inline std::vector<std::int64_t> out_shape(TensorLayout layout, const MergeShape& s) {
  return layout == TensorLayout::HND ? std::vector<std::int64_t>{s.batch, s.heads, s.tokens, s.head_dim}
                                     : std::vector<std::int64_t>{s.batch, s.tokens, s.heads, s.head_dim};
}

// Row (b, h, n) of the dense row order (b outermost, n innermost).
inline Index4 row_index(const MergeShape& s, std::int64_t row) {
  return {row / (s.heads * s.tokens), row / s.tokens % s.heads, row % s.tokens, 0};
}

// A deterministic value in [0, 1) for (seed, i).
inline double unit_hash(std::uint64_t seed, std::uint64_t i) {
  std::uint64_t x = seed * 0x9E3779B97F4A7C15ULL + i * 0xBF58476D1CE4E5B9ULL + 1;
  x ^= x >> 31;
  x *= 0x94D049BB133111EBULL;
  x ^= x >> 29;
  return static_cast<double>(x >> 11) / 9007199254740992.0;
}

inline void set_lse_pair(MergeCase& c, std::int64_t row, std::uint64_t seed) {
  const Index4 i = row_index(c.shape, row);
  const float ra = static_cast<float>(8 * unit_hash(seed, 2 * row) - 4);
  const float rb = static_cast<float>(8 * unit_hash(seed, 2 * row + 1) - 4);
  float a = ra, b = rb;
  switch (row_kind(row)) {
    case RowKind::random: break;
    case RowKind::a_empty: a = -kInf; break;
    case RowKind::b_empty: b = -kInf; break;
    case RowKind::both_empty: a = b = -kInf; break;
    case RowKind::large: a = 100 + ra, b = 100 + rb; break;
    case RowKind::far_apart: a = ra + 30, b = ra - 30; break;
  }
  set(c.lse_a.view, i.data(), a);
  set(c.lse_b.view, i.data(), b);
}

// NaN in out_x's row where lse_x = -inf: a part without keys must not
// contribute, whatever its out holds.
inline void poison_empty_rows(MergeCase& c) {
  const int hd = c.layout == TensorLayout::HND ? 1 : 2;
  for_each_index(c.out_a.view, [&](const std::int64_t* i) {
    const Index4 lse_i = {i[0], i[hd], i[3 - hd], 0};
    if (get(c.lse_a.view, lse_i.data()) == -kInf) set(c.out_a.view, i, std::nanf(""));
    if (get(c.lse_b.view, lse_i.data()) == -kInf) set(c.out_b.view, i, std::nanf(""));
  });
}

// How far the rows of the out tensors are padded: by whole 16-byte vectors
// (so that rows with head_dim a multiple of the vector width stay aligned
// for the GPU kernel's vector path) or by odd numbers of elements.
enum class RowPadding { vectors, odd };

// A case whose six tensors all have different padded strides (out_b and
// lse_b stored with heads and tokens swapped), random out_a/out_b, lse rows
// of every RowKind, and out/lse (padding included) filled with NaN.
inline MergeCase make_merge_case(DType dtype, TensorLayout layout, const MergeShape& s, std::uint64_t seed,
                                 RowPadding padding = RowPadding::odd) {
  MergeCase c;
  c.layout = layout;
  c.shape = s;
  const std::vector<std::int64_t> shape = out_shape(layout, s);
  const bool odd = padding == RowPadding::odd;
  c.out_a = make_strided(dtype, shape, {1, 2, 1, odd ? 3 : 8}, {0, 1, 2, 3});
  c.out_b = make_strided(dtype, shape, {0, 1, 2, odd ? 5 : 16}, {0, 2, 1, 3});
  c.out = make_strided(dtype, shape, {2, 1, 3, odd ? 1 : 0}, {0, 1, 2, 3});
  c.lse_a = make_strided(DType::f32, {s.batch, s.heads, s.tokens}, {0, 1, 3}, {0, 1, 2});
  c.lse_b = make_strided(DType::f32, {s.batch, s.heads, s.tokens}, {1, 0, 2}, {0, 2, 1});
  c.lse = make_strided(DType::f32, {s.batch, s.heads, s.tokens}, {1, 2, 1}, {2, 0, 1});
  fill_random(c.out_a.view, seed);
  fill_random(c.out_b.view, seed + 1);
  for (std::int64_t row = 0; row < s.rows(); ++row) set_lse_pair(c, row, seed);
  poison_empty_rows(c);
  poison(c.out, std::nanf(""));
  poison(c.lse, std::nanf(""));
  return c;
}

// The merge in float64 of the inputs as stored (already rounded to their
// dtype), dense [B, H, N, D] / [B, H, N], with the magnitude
// |w_a out_a| + |w_b out_b| of each element for error bounds.
struct MergeExpected {
  std::vector<double> out, magnitude, lse;
};

inline MergeExpected merge_in_double(const MergeCase& c) {
  const MergeShape& s = c.shape;
  MergeExpected e;
  for (std::int64_t row = 0; row < s.rows(); ++row) {
    const Index4 r = row_index(s, row);
    const double la = get(c.lse_a.view, r.data()), lb = get(c.lse_b.view, r.data());
    const bool a_empty = la == -INFINITY, b_empty = lb == -INFINITY;
    const double m = std::max(la, lb);
    const double lse = a_empty && b_empty ? -INFINITY : m + std::log(std::exp(la - m) + std::exp(lb - m));
    const double wa = a_empty ? 0 : std::exp(la - lse), wb = b_empty ? 0 : std::exp(lb - lse);
    e.lse.push_back(lse);
    for (std::int64_t d = 0; d < s.head_dim; ++d) {
      const Index4 i = layout_index(c.layout, r[0], r[1], r[2], d);
      const double a = a_empty ? 0 : get(c.out_a.view, i.data()), b = b_empty ? 0 : get(c.out_b.view, i.data());
      e.out.push_back(wa * a + wb * b);
      e.magnitude.push_back(std::abs(wa * a) + std::abs(wb * b));
    }
  }
  return e;
}

// Spacing of `dtype`'s values at |x| (the subnormal spacing near 0).
inline double ulp_of(double x, DType dtype) {
  const int mantissa_bits = dtype == DType::f32 ? 23 : dtype == DType::f16 ? 10 : 7;
  const int min_exponent = dtype == DType::f16 ? -14 : -126;
  const int exponent = x == 0 ? min_exponent : std::max(std::ilogb(x), min_exponent);
  return std::ldexp(1.0, exponent - mantissa_bits);
}

// The out element and lse entry of dense row `row`.
inline float out_at(const MergeCase& c, std::int64_t row, std::int64_t d) {
  const Index4 r = row_index(c.shape, row);
  return get(c.out.view, layout_index(c.layout, r[0], r[1], r[2], d).data());
}
inline float lse_at(const MergeCase& c, std::int64_t row) { return get(c.lse.view, row_index(c.shape, row).data()); }

// Storage elements of `t` outside its view that are no longer NaN.
inline std::int64_t padding_written(const test::StridedTensor& t) {
  std::vector<bool> in_view(t.bytes.size(), false);
  const int bytes = test::element_bytes(t.view.dtype);
  test::for_each_index(t.view, [&](const std::int64_t* i) { in_view[test::offset_of(t.view, i) * bytes] = true; });
  std::int64_t written = 0;
  for (std::size_t b = 0; b + bytes <= t.bytes.size(); b += bytes) {
    if (!in_view[b] && !std::isnan(test::load(t.bytes.data() + b, t.view.dtype))) ++written;
  }
  return written;
}

}  // namespace sage::test
