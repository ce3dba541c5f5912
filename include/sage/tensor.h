// A non-owning, strided view of a tensor that lives on the host or on a GPU.
//
// Shapes and strides count *logical elements*. For the packed 4-bit types
// (int4, fp4 e2m1: two values per byte, the lower-indexed value in the low
// nibble) the innermost dimension must be even and every other stride must be
// even, so that each row starts on a byte boundary.
#pragma once

#include <cstddef>
#include <cstdint>
#include <initializer_list>

namespace sage {

enum class DType : std::uint8_t {
  f32,
  f16,
  bf16,
  i8,
  fp8_e4m3,
  fp8_e5m2,
  i4x2,        // packed signed int4, two per byte
  fp4_e2m1x2,  // packed FP4 E2M1, two per byte
  ue4m3,       // unsigned E4M3 microscaling scale (one byte)
};

// Bits per logical element (4 for the packed types).
int dtype_bits(DType dtype);
const char* dtype_name(DType dtype);

inline constexpr int kMaxRank = 4;
inline constexpr int kHostDevice = -1;  // TensorView::device for host memory

struct TensorView {
  void* data = nullptr;
  DType dtype = DType::f32;
  int rank = 0;
  std::int64_t shape[kMaxRank] = {};
  std::int64_t stride[kMaxRank] = {};  // in elements
  int device = kHostDevice;            // CUDA device ordinal, or kHostDevice

  // The element count of the stored dimensions. It is defined for the views
  // validation rejects too: a rank past kMaxRank counts its first kMaxRank
  // dimensions, any negative size gives -1, and a count that overflows int64
  // gives INT64_MAX.
  std::int64_t numel() const {
    const int dims = rank < kMaxRank ? rank : kMaxRank;
    for (int i = 0; i < dims; ++i) {
      if (shape[i] < 0) return -1;
    }
    for (int i = 0; i < dims; ++i) {
      if (shape[i] == 0) return 0;
    }
    std::int64_t n = 1;
    for (int i = 0; i < dims; ++i) {
      if (n > INT64_MAX / shape[i]) return INT64_MAX;
      n *= shape[i];
    }
    return n;
  }
  bool on_host() const { return device == kHostDevice; }
};

// A view with row-major (contiguous) strides.
TensorView make_contiguous_view(void* data, DType dtype, std::initializer_list<std::int64_t> shape,
                                int device = kHostDevice);

}  // namespace sage
