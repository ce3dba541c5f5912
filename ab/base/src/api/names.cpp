// Printable names of the public enums.
#include "api/tensor_checks.h"
#include "sage/options.h"
#include "sage/status.h"
#include "sage/tensor.h"

#include <cstdint>
#include <limits>

namespace sage {

const char* status_code_name(StatusCode code) {
  switch (code) {
    case StatusCode::ok: return "ok";
    case StatusCode::invalid_argument: return "invalid argument";
    case StatusCode::not_implemented: return "not implemented";
    case StatusCode::unsupported_device: return "unsupported device";
    case StatusCode::cuda_error: return "CUDA error";
    case StatusCode::internal: return "internal error";
    case StatusCode::out_of_memory: return "out of memory";
  }
  return "unknown status";
}

int dtype_bits(DType dtype) {
  switch (dtype) {
    case DType::f32: return 32;
    case DType::f16:
    case DType::bf16: return 16;
    case DType::i8:
    case DType::fp8_e4m3:
    case DType::fp8_e5m2:
    case DType::ue4m3: return 8;
    case DType::i4x2:
    case DType::fp4_e2m1x2: return 4;
  }
  return 0;
}

const char* dtype_name(DType dtype) {
  switch (dtype) {
    case DType::f32: return "float32";
    case DType::f16: return "float16";
    case DType::bf16: return "bfloat16";
    case DType::i8: return "int8";
    case DType::fp8_e4m3: return "float8_e4m3";
    case DType::fp8_e5m2: return "float8_e5m2";
    case DType::i4x2: return "int4 (packed)";
    case DType::fp4_e2m1x2: return "float4_e2m1 (packed)";
    case DType::ue4m3: return "ue4m3";
  }
  return "unknown dtype";
}

const char* method_name(Method m) {
  switch (m) {
    case Method::sage2: return "sage2";
    case Method::sage3: return "sage3";
    case Method::sagebwd: return "sagebwd";
  }
  return "unknown";
}

const char* granularity_name(Granularity g) {
  switch (g) {
    case Granularity::per_block: return "per-block";
    case Granularity::per_warp: return "per-warp";
    case Granularity::per_thread: return "per-thread";
  }
  return "unknown";
}

const char* qk_format_name(QKFormat f) { return f == QKFormat::int8 ? "int8" : "int4"; }

const char* pv_format_name(PVFormat f) {
  switch (f) {
    case PVFormat::fp8_e4m3: return "fp8-e4m3";
    case PVFormat::fp8_e5m2: return "fp8-e5m2";
    case PVFormat::fp16: return "fp16";
    case PVFormat::bf16: return "bf16";
  }
  return "unknown";
}

TensorView make_contiguous_view(void* data, DType dtype, std::initializer_list<std::int64_t> shape, int device) {
  TensorView t;
  t.data = data;
  t.dtype = dtype;
  t.device = device;
  // A rank above kMaxRank is recorded as such (validation rejects it) but
  // only kMaxRank dimensions are stored.
  t.rank = static_cast<int>(shape.size());
  int i = 0;
  for (std::int64_t s : shape) {
    if (i < kMaxRank) t.shape[i] = s;
    ++i;
  }
  if (t.rank > kMaxRank) return t;
  std::int64_t stride = 1;
  for (int d = t.rank - 1; d >= 0; --d) {
    t.stride[d] = stride;
    // Sizes whose element count overflows int64 get saturated strides;
    // validation rejects such views (the element count) with a message.
    if (!detail::checked_mul(stride, t.shape[d], &stride)) stride = std::numeric_limits<std::int64_t>::max();
  }
  return t;
}

}  // namespace sage
