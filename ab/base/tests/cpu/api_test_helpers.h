// Helpers for the API tests: host tensors with arbitrary (padded, permuted)
// strides, element access by logical index, and dense copies for the
// reference. Written independently of the library's own gather/scatter so
// that the tests check them rather than reuse them.
#pragma once

#include <gtest/gtest.h>

#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include "numerics/formats.h"
#include "sage/attention.h"

namespace sage::test {

using Index4 = std::array<std::int64_t, 4>;

// A host tensor whose storage is larger than its view: every dimension is
// padded, so a loop that ignores the strides reads or writes the padding.
struct StridedTensor {
  std::vector<unsigned char> bytes;
  TensorView view;
};

inline int element_bytes(DType dtype) { return dtype_bits(dtype) / 8; }

// A view of logical `shape` inside storage of shape + pad (row-major over the
// padded shape, in the order `storage_order` lists the logical dimensions,
// outermost first). The last entry of storage_order must be the last
// dimension (unit stride).
inline StridedTensor make_strided(DType dtype, const std::vector<std::int64_t>& shape,
                                  const std::vector<std::int64_t>& pad, const std::vector<int>& storage_order) {
  StridedTensor t;
  const int rank = static_cast<int>(shape.size());
  t.view.dtype = dtype;
  t.view.rank = rank;
  std::int64_t stride = 1;
  for (int i = rank - 1; i >= 0; --i) {
    const int d = storage_order[i];
    t.view.shape[d] = shape[d];
    t.view.stride[d] = stride;
    stride *= shape[d] + pad[d];
  }
  t.bytes.resize(static_cast<std::size_t>(stride * element_bytes(dtype)));
  t.view.data = t.bytes.data();
  return t;
}

inline std::int64_t offset_of(const TensorView& v, const std::int64_t* index) {
  std::int64_t offset = 0;
  for (int d = 0; d < v.rank; ++d) offset += index[d] * v.stride[d];
  return offset;
}

inline float load(const void* p, DType dtype) {
  if (dtype == DType::f32) {
    float f;
    std::memcpy(&f, p, 4);
    return f;
  }
  std::uint16_t bits;
  std::memcpy(&bits, p, 2);
  return dtype == DType::f16 ? num::f16_to_float(bits) : num::bf16_to_float(bits);
}

inline void store(void* p, DType dtype, float value) {
  if (dtype == DType::f32) {
    std::memcpy(p, &value, 4);
    return;
  }
  const std::uint16_t bits = dtype == DType::f16 ? num::float_to_f16(value) : num::float_to_bf16(value);
  std::memcpy(p, &bits, 2);
}

inline unsigned char* address_of(const TensorView& v, const std::int64_t* index) {
  return static_cast<unsigned char*>(v.data) + offset_of(v, index) * element_bytes(v.dtype);
}

inline float get(const TensorView& v, const std::int64_t* index) { return load(address_of(v, index), v.dtype); }
inline void set(const TensorView& v, const std::int64_t* index, float value) {
  store(address_of(v, index), v.dtype, value);
}

// Calls fn(index) for every logical index of a view (rank <= 4).
template <class Fn>
void for_each_index(const TensorView& v, Fn&& fn) {
  std::int64_t index[kMaxRank] = {};
  const std::int64_t total = v.numel();
  for (std::int64_t n = 0; n < total; ++n) {
    std::int64_t rest = n;
    for (int d = v.rank - 1; d >= 0; --d) {
      index[d] = rest % v.shape[d];
      rest /= v.shape[d];
    }
    fn(static_cast<const std::int64_t*>(index));
  }
}

// Fills all storage bytes (view and padding) with one float value, e.g. NaN.
inline void poison(StridedTensor& t, float value) {
  const int bytes = element_bytes(t.view.dtype);
  for (std::size_t i = 0; i + bytes <= t.bytes.size(); i += bytes) store(t.bytes.data() + i, t.view.dtype, value);
}

// The element of a q/k/v/out view at (b, h, n, d), whatever the layout.
inline Index4 layout_index(TensorLayout layout, std::int64_t b, std::int64_t h, std::int64_t n, std::int64_t d) {
  return layout == TensorLayout::HND ? Index4{b, h, n, d} : Index4{b, n, h, d};
}

// Dense [B, H, N, D] doubles of a 4-D view in `layout`.
inline std::vector<double> dense_bhnd(const TensorView& v, TensorLayout layout) {
  const int hd = layout == TensorLayout::HND ? 1 : 2, nd = 3 - hd;
  const std::int64_t B = v.shape[0], H = v.shape[hd], N = v.shape[nd], D = v.shape[3];
  std::vector<double> out(static_cast<std::size_t>(B * H * N * D));
  std::size_t i = 0;
  for (std::int64_t b = 0; b < B; ++b)
    for (std::int64_t h = 0; h < H; ++h)
      for (std::int64_t n = 0; n < N; ++n)
        for (std::int64_t d = 0; d < D; ++d) out[i++] = get(v, layout_index(layout, b, h, n, d).data());
  return out;
}

// Fills a view with deterministic pseudo-random values in [-2, 2) (a small
// LCG: the tests must not depend on the reference's generators).
inline void fill_random(const TensorView& v, std::uint64_t seed) {
  std::uint64_t state = seed * 6364136223846793005ULL + 1442695040888963407ULL;
  for_each_index(v, [&](const std::int64_t* index) {
    state = state * 6364136223846793005ULL + 1442695040888963407ULL;
    const double unit = static_cast<double>(state >> 11) / 9007199254740992.0;  // [0, 1)
    set(v, index, static_cast<float>(4.0 * unit - 2.0));
  });
}

// Asserts code invalid_argument, a message starting with "<argument>:" (or
// "<argument> ") and containing each of `words`.
inline void expect_invalid(const Status& status, const std::string& argument,
                           std::initializer_list<std::string> words) {
  EXPECT_EQ(status.code(), StatusCode::invalid_argument) << status.message();
  const std::string& m = status.message();
  EXPECT_TRUE(m.rfind(argument + ":", 0) == 0 || m.rfind(argument + " ", 0) == 0)
      << "message should start with '" << argument << "': " << m;
  for (const std::string& word : words) EXPECT_NE(m.find(word), std::string::npos) << "'" << word << "' in: " << m;
}

// Cosine similarity of two equally long arrays.
inline double cos_sim(const std::vector<double>& a, const std::vector<double>& b) {
  double ab = 0, aa = 0, bb = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    ab += a[i] * b[i];
    aa += a[i] * a[i];
    bb += b[i] * b[i];
  }
  return ab / std::sqrt(aa * bb);
}

}  // namespace sage::test
