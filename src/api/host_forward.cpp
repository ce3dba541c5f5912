#include "api/host_forward.h"

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <utility>

#include "api/validate.h"
#include "cuda/mma/mma_forward.h"
#include "cuda/sm90/qk_int8_pv_fp8_sm90.h"
#include "numerics/formats.h"
#include "numerics/tile_geometry.h"
#include "reference/reference.h"

namespace sage::detail {
namespace {

// Calls fn(element_pointer, dense_index) for every element of a 4-D
// [B, H, N, D] view, dense_index running in row-major order.
template <class Fn>
void for_each_element(const TensorView& t, Fn&& fn) {
  const std::int64_t bytes = dtype_bits(t.dtype) / 8;
  auto* base = static_cast<std::byte*>(t.data);
  std::int64_t dense = 0;
  for (std::int64_t b = 0; b < t.shape[0]; ++b) {
    for (std::int64_t h = 0; h < t.shape[1]; ++h) {
      for (std::int64_t n = 0; n < t.shape[2]; ++n) {
        std::byte* row = base + (b * t.stride[0] + h * t.stride[1] + n * t.stride[2]) * bytes;
        for (std::int64_t d = 0; d < t.shape[3]; ++d) fn(row + d * t.stride[3] * bytes, dense++);
      }
    }
  }
}

void scatter_lse(const float* dense, const TensorView& lse) {
  auto* base = static_cast<std::byte*>(lse.data);
  std::int64_t i = 0;
  for (std::int64_t b = 0; b < lse.shape[0]; ++b) {
    for (std::int64_t h = 0; h < lse.shape[1]; ++h) {
      for (std::int64_t n = 0; n < lse.shape[2]; ++n) {
        const std::int64_t offset = b * lse.stride[0] + h * lse.stride[1] + n * lse.stride[2];
        std::memcpy(base + offset * static_cast<std::int64_t>(sizeof(float)), &dense[i++], sizeof(float));
      }
    }
  }
}

}  // namespace

ref::Problem reference_problem(const AttentionDims& dims, const AttentionOptions& options) {
  ref::Problem p;
  p.batch = dims.batch;
  p.heads_q = dims.heads_q;
  p.heads_kv = dims.heads_kv;
  p.nq = dims.nq;
  p.nk = dims.nk;
  p.head_dim = dims.head_dim;
  p.causal = options.causal;
  p.align = options.causal_align;
  p.sm_scale = options.sm_scale != 0.0f ? static_cast<double>(options.sm_scale)
                                         : 1.0 / std::sqrt(static_cast<double>(dims.head_dim));
  return p;
}

// Reads one element as float. memcpy, because host views carry no
// alignment promise.
float load_element(const std::byte* p, DType dtype) {
  switch (dtype) {
    case DType::f32: {
      float value;
      std::memcpy(&value, p, sizeof value);
      return value;
    }
    case DType::f16:
    case DType::bf16: {
      std::uint16_t bits;
      std::memcpy(&bits, p, sizeof bits);
      return dtype == DType::f16 ? num::f16_to_float(bits) : num::bf16_to_float(bits);
    }
    default: throw std::logic_error("load_element: validation let an unsupported dtype through");
  }
}

// Writes one element, rounding to nearest even for the 16-bit formats (the
// kernels' epilogue conversion).
void store_element(std::byte* p, DType dtype, float value) {
  switch (dtype) {
    case DType::f32: std::memcpy(p, &value, sizeof value); return;
    case DType::f16:
    case DType::bf16: {
      const std::uint16_t bits = dtype == DType::f16 ? num::float_to_f16(value) : num::float_to_bf16(value);
      std::memcpy(p, &bits, sizeof bits);
      return;
    }
    default: throw std::logic_error("store_element: validation let an unsupported dtype through");
  }
}

// The view with its dimensions reordered to [B, H, N, D], so that one loop
// nest serves both layouts (NHD swaps the heads and tokens dimensions).
TensorView as_bhnd(TensorView t, TensorLayout layout) {
  if (layout == TensorLayout::NHD) {
    std::swap(t.shape[1], t.shape[2]);
    std::swap(t.stride[1], t.stride[2]);
  }
  return t;
}

std::vector<float> gather_bhnd(const TensorView& t, TensorLayout layout) {
  std::vector<float> dense(static_cast<std::size_t>(t.numel()));
  const DType dtype = t.dtype;
  for_each_element(as_bhnd(t, layout), [&](const std::byte* p, std::int64_t i) { dense[i] = load_element(p, dtype); });
  return dense;
}

void scatter_bhnd(const float* dense, const TensorView& t, TensorLayout layout) {
  const DType dtype = t.dtype;
  for_each_element(as_bhnd(t, layout), [&](std::byte* p, std::int64_t i) { store_element(p, dtype, dense[i]); });
}

const TileGeometry& emulated_geometry(const AttentionOptions& options) {
  mma::MmaCapabilities hopper;
  hopper.fp8_mma = true;
  const bool mma_only = !sm90::unsupported_format_reason(options).empty() &&
                        mma::unsupported_format_reason(options, hopper).empty();
  return mma_only ? kMmaGeometry : kSm90Geometry;
}

Status host_attention_forward(const AttentionArgs& args, const AttentionOptions& options) {
  const ref::Problem problem = reference_problem(attention_dims(args, options.layout), options);
  const std::vector<float> q = gather_bhnd(args.q, options.layout);
  const std::vector<float> k = gather_bhnd(args.k, options.layout);
  const std::vector<float> v = gather_bhnd(args.v, options.layout);
  std::vector<float> out(static_cast<std::size_t>(problem.q_elems()));
  std::vector<float> lse(options.return_lse ? static_cast<std::size_t>(problem.lse_elems()) : 0);

  ref::emulate_attention(problem, options, emulated_geometry(options), q.data(), k.data(), v.data(), out.data(),
                         options.return_lse ? lse.data() : nullptr);

  scatter_bhnd(out.data(), args.out, options.layout);
  if (options.return_lse) scatter_lse(lse.data(), args.lse);
  return Status::ok();
}

}  // namespace sage::detail
