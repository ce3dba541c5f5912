// The conversions of src/numerics/formats.h, run in device code, against the
// hardware PTX conversions they model, bit for bit:
//   * encoders over all 2^32 float bit patterns: cvt.rn.satfinite.e4m3x2.f32,
//     cvt.rn.satfinite.e5m2x2.f32, cvt.rn.satfinite.relu.e4m3x2.f32 (UE4M3),
//     cvt.rn.bf16.f32, cvt.rn.f16.f32, cvt.rni.s32.f32, and the INT8/INT4
//     quantization sequence mul.rn.f32 + cvt.rni.s32.f32 + min/max;
//   * decoders over every code: cvt.rn.f16x2.e4m3x2 / e5m2x2 (256 codes),
//     cvt.f32.f16 and cvt.f32.bf16 (65536 codes);
//   * FP4 E2M1 (cvt.rn.satfinite.e2m1x2.f32, cvt.rn.f16x2.e2m1x2) only where
//     the instruction exists (sm_100a/sm_120a family targets) and the GPU is
//     one of those; skipped otherwise.
//   * maxima of magnitudes: quant::warp_max_of_magnitudes (one redux.sync)
//     against the butterfly of num::max_nan it replaced, and
//     quant::max_of_magnitudes<16> (a tree of unsigned maxima) against
//     sixteen max_nan in a row, on the values their callers give them
//     (magnitudes: sign bit clear, NaN only the canonical one).
// A grid-stride kernel counts mismatches and records the first few.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <sstream>
#include <string>
#include <vector>

#include "cuda/quant/quantize_rows.cuh"
#include "gpu/gpu_test_util.h"
#include "numerics/formats.h"

// The FP4 conversions exist on the family-specific Blackwell targets
// (sm_100a/f, sm_103a/f, sm_110a/f, sm_120a/f, sm_121a/f); nvcc defines
// __CUDA_ARCH_FAMILY_SPECIFIC__ (e.g. 1000) for those, and also for sm_90a
// (900), hence the lower bound.
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FAMILY_SPECIFIC__) && (__CUDA_ARCH_FAMILY_SPECIFIC__ >= 1000)
#define SAGE_TEST_HAS_FP4_CVT 1
#else
#define SAGE_TEST_HAS_FP4_CVT 0
#endif

namespace {

using sage::test::DeviceBuffer;

// ---------------------------------------------------------------------------
// Small named PTX wrappers. The x2 forms put their first source in the upper
// half of the result (PTX ISA, cvt: "d[15:8] = convert(a); d[7:0] = convert(b)").
// ---------------------------------------------------------------------------
namespace ptx {

// FP8 conversions exist from sm_89 on. Builds that include older targets
// (e.g. SAGE_CUDA_ARCHS="80;...") compile a trap there; the tests check the
// device's capability before launching (require_sm), so it never runs.
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 890
#define SAGE_FP8_CVT(...) asm volatile(__VA_ARGS__)
#else
#define SAGE_FP8_CVT(...) __trap()
#endif

__device__ __forceinline__ std::uint16_t cvt_rn_satfinite_e4m3x2(float hi, float lo) {
  std::uint16_t d = 0;
  SAGE_FP8_CVT("cvt.rn.satfinite.e4m3x2.f32 %0, %1, %2;" : "=h"(d) : "f"(hi), "f"(lo));
  return d;
}

__device__ __forceinline__ std::uint16_t cvt_rn_satfinite_relu_e4m3x2(float hi, float lo) {
  std::uint16_t d = 0;
  SAGE_FP8_CVT("cvt.rn.satfinite.relu.e4m3x2.f32 %0, %1, %2;" : "=h"(d) : "f"(hi), "f"(lo));
  return d;
}

__device__ __forceinline__ std::uint16_t cvt_rn_satfinite_e5m2x2(float hi, float lo) {
  std::uint16_t d = 0;
  SAGE_FP8_CVT("cvt.rn.satfinite.e5m2x2.f32 %0, %1, %2;" : "=h"(d) : "f"(hi), "f"(lo));
  return d;
}

__device__ __forceinline__ std::uint16_t cvt_rn_bf16(float x) {
  std::uint16_t d;
  asm volatile("cvt.rn.bf16.f32 %0, %1;" : "=h"(d) : "f"(x));
  return d;
}

__device__ __forceinline__ std::uint16_t cvt_rn_f16(float x) {
  std::uint16_t d;
  asm volatile("cvt.rn.f16.f32 %0, %1;" : "=h"(d) : "f"(x));
  return d;
}

__device__ __forceinline__ std::int32_t cvt_rni_s32(float x) {
  std::int32_t d;
  asm volatile("cvt.rni.s32.f32 %0, %1;" : "=r"(d) : "f"(x));
  return d;
}

__device__ __forceinline__ float mul_rn(float a, float b) {
  float d;
  asm volatile("mul.rn.f32 %0, %1, %2;" : "=f"(d) : "f"(a), "f"(b));
  return d;
}

__device__ __forceinline__ std::int32_t clamp_s32(std::int32_t x, std::int32_t lo, std::int32_t hi) {
  std::int32_t d;
  asm volatile("max.s32 %0, %1, %2;" : "=r"(d) : "r"(x), "r"(lo));
  asm volatile("min.s32 %0, %0, %1;" : "+r"(d) : "r"(hi));
  return d;
}

// Two FP8 codes (upper byte, lower byte) -> two f16 (upper half, lower half).
__device__ __forceinline__ std::uint32_t cvt_rn_f16x2_e4m3x2(std::uint16_t codes) {
  std::uint32_t d = 0;
  SAGE_FP8_CVT("cvt.rn.f16x2.e4m3x2 %0, %1;" : "=r"(d) : "h"(codes));
  return d;
}

__device__ __forceinline__ std::uint32_t cvt_rn_f16x2_e5m2x2(std::uint16_t codes) {
  std::uint32_t d = 0;
  SAGE_FP8_CVT("cvt.rn.f16x2.e5m2x2 %0, %1;" : "=r"(d) : "h"(codes));
  return d;
}

__device__ __forceinline__ float cvt_f32_f16(std::uint16_t h) {
  float d;
  asm volatile("cvt.f32.f16 %0, %1;" : "=f"(d) : "h"(h));
  return d;
}

__device__ __forceinline__ float cvt_f32_bf16(std::uint16_t h) {
  float d;
  asm volatile("cvt.f32.bf16 %0, %1;" : "=f"(d) : "h"(h));
  return d;
}

#if SAGE_TEST_HAS_FP4_CVT
// Two floats -> one byte: convert(hi) in bits 7:4, convert(lo) in bits 3:0.
__device__ __forceinline__ std::uint16_t cvt_rn_satfinite_e2m1x2(float hi, float lo) {
  std::uint16_t d;
  asm volatile(
      "{\n"
      "  .reg .b8 packed;\n"
      "  cvt.rn.satfinite.e2m1x2.f32 packed, %1, %2;\n"
      "  cvt.u16.u8 %0, packed;\n"
      "}"
      : "=h"(d)
      : "f"(hi), "f"(lo));
  return d;
}

// One byte of two E2M1 codes -> two f16 (upper nibble -> upper half).
__device__ __forceinline__ std::uint32_t cvt_rn_f16x2_e2m1x2(std::uint16_t byte) {
  std::uint32_t d;
  asm volatile(
      "{\n"
      "  .reg .b8 lo8, hi8;\n"
      "  mov.b16 {lo8, hi8}, %1;\n"
      "  cvt.rn.f16x2.e2m1x2 %0, lo8;\n"
      "}"
      : "=r"(d)
      : "h"(byte));
  return d;
}
#endif

}  // namespace ptx

__device__ __forceinline__ float negated(float x) { return __uint_as_float(__float_as_uint(x) ^ 0x80000000u); }

// ---------------------------------------------------------------------------
// The sweep: check(i, hardware, header) over i in [0, count).
// ---------------------------------------------------------------------------
struct Mismatch {
  std::uint32_t input;
  std::uint32_t hardware;
  std::uint32_t header;
};

constexpr int kMaxRecorded = 8;

struct SweepResult {
  unsigned long long mismatches;
  Mismatch first[kMaxRecorded];
};

template <class Check>
__global__ void sweep_kernel(Check check, std::uint64_t count, SweepResult* result) {
  const std::uint64_t stride = static_cast<std::uint64_t>(gridDim.x) * blockDim.x;
  for (std::uint64_t i = static_cast<std::uint64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < count; i += stride) {
    const std::uint32_t input = static_cast<std::uint32_t>(i);
    std::uint32_t hardware = 0, header = 0;
    if (!check(input, hardware, header)) {
      const unsigned long long slot = atomicAdd(&result->mismatches, 1ull);
      if (slot < kMaxRecorded) result->first[slot] = Mismatch{input, hardware, header};
    }
  }
}

constexpr std::uint64_t kAllFloats = 1ull << 32;

class NumericsCvtGpu : public sage::test::GpuKernelTest {
 protected:
  // Runs `check` over [0, count) and expects no mismatch; `what` names the
  // instruction and the header function in the failure message.
  template <class Check>
  void expect_agreement(const Check& check, std::uint64_t count, const std::string& what) {
    DeviceBuffer<SweepResult> result(1);
    SAGE_CUDA_CHECK(result.status());
    SAGE_CUDA_CHECK(result.zero());
    const int blocks = sm_count() * 8;
    sweep_kernel<<<blocks, 256>>>(check, count, result.data());
    SAGE_CUDA_CHECK(cudaGetLastError());
    SAGE_CUDA_CHECK(cudaDeviceSynchronize());
    std::vector<SweepResult> host;
    SAGE_CUDA_CHECK(result.copy_to(host));
    const SweepResult& r = host[0];
    std::ostringstream detail;
    const unsigned long long shown = r.mismatches < kMaxRecorded ? r.mismatches : kMaxRecorded;
    for (unsigned long long k = 0; k < shown; ++k) {
      char line[128];
      std::snprintf(line, sizeof line, "\n  input 0x%08X: hardware 0x%08X, header 0x%08X", r.first[k].input,
                    r.first[k].hardware, r.first[k].header);
      detail << line;
    }
    EXPECT_EQ(r.mismatches, 0ull) << what << ": " << r.mismatches << " mismatches out of " << count
                                  << "; the first ones (order is arbitrary):" << detail.str();
  }

  void require_sm(int min_sm, const char* why) {
    if (sm() < min_sm) GTEST_SKIP() << why << " needs sm_" << min_sm << "+, this GPU is sm_" << sm();
  }
};

// ---------------------------------------------------------------------------
// Checks. Each takes an index, fills (hardware, header) and says if they agree.
// Encoders convert x and -x together to exercise both halves of the x2 forms.
// ---------------------------------------------------------------------------
struct E4M3Encode {
  __device__ bool operator()(std::uint32_t bits, std::uint32_t& hw, std::uint32_t& mine) const {
    const float x = __uint_as_float(bits);
    hw = ptx::cvt_rn_satfinite_e4m3x2(x, negated(x));
    mine = (std::uint32_t{sage::num::fp8_e4m3_from_float(x)} << 8) | sage::num::fp8_e4m3_from_float(negated(x));
    return hw == mine;
  }
};

struct E5M2Encode {
  __device__ bool operator()(std::uint32_t bits, std::uint32_t& hw, std::uint32_t& mine) const {
    const float x = __uint_as_float(bits);
    hw = ptx::cvt_rn_satfinite_e5m2x2(x, negated(x));
    mine = (std::uint32_t{sage::num::fp8_e5m2_from_float(x)} << 8) | sage::num::fp8_e5m2_from_float(negated(x));
    return hw == mine;
  }
};

struct UE4M3EncodeVsRelu {
  __device__ bool operator()(std::uint32_t bits, std::uint32_t& hw, std::uint32_t& mine) const {
    const float x = __uint_as_float(bits);
    hw = ptx::cvt_rn_satfinite_relu_e4m3x2(x, negated(x));
    mine = (std::uint32_t{sage::num::ue4m3_from_float(x)} << 8) | sage::num::ue4m3_from_float(negated(x));
    return hw == mine;
  }
};

struct BF16Encode {
  __device__ bool operator()(std::uint32_t bits, std::uint32_t& hw, std::uint32_t& mine) const {
    const float x = __uint_as_float(bits);
    hw = ptx::cvt_rn_bf16(x);
    mine = sage::num::float_to_bf16(x);
    return hw == mine;
  }
};

struct F16Encode {
  __device__ bool operator()(std::uint32_t bits, std::uint32_t& hw, std::uint32_t& mine) const {
    const float x = __uint_as_float(bits);
    hw = ptx::cvt_rn_f16(x);
    mine = sage::num::float_to_f16(x);
    return hw == mine;
  }
};

struct RoundHalfEven {
  __device__ bool operator()(std::uint32_t bits, std::uint32_t& hw, std::uint32_t& mine) const {
    const float x = __uint_as_float(bits);
    hw = static_cast<std::uint32_t>(ptx::cvt_rni_s32(x));
    mine = static_cast<std::uint32_t>(sage::num::round_half_even_to_int(x));
    return hw == mine;
  }
};

struct QuantizeSymmetric {
  float inv_scale;
  int qmax;
  __device__ bool operator()(std::uint32_t bits, std::uint32_t& hw, std::uint32_t& mine) const {
    const float x = __uint_as_float(bits);
    hw = static_cast<std::uint32_t>(ptx::clamp_s32(ptx::cvt_rni_s32(ptx::mul_rn(x, inv_scale)), -qmax, qmax));
    mine = static_cast<std::uint32_t>(sage::num::quantize_symmetric(x, inv_scale, qmax));
    return hw == mine;
  }
};

// Decoders compare float bits: the header decodes straight to float, the
// hardware to f16, which f16_to_float (checked exhaustively below against
// cvt.f32.f16) widens exactly. NaN codes must give the same canonical NaN.
struct E4M3Decode {
  __device__ bool operator()(std::uint32_t code, std::uint32_t& hw, std::uint32_t& mine) const {
    const std::uint16_t pair = static_cast<std::uint16_t>((code << 8) | (255u - code));
    const std::uint32_t halves = ptx::cvt_rn_f16x2_e4m3x2(pair);
    const float hw_hi = sage::num::f16_to_float(static_cast<std::uint16_t>(halves >> 16));
    const float hw_lo = sage::num::f16_to_float(static_cast<std::uint16_t>(halves & 0xFFFFu));
    const float my_hi = sage::num::fp8_e4m3_to_float(static_cast<std::uint8_t>(code));
    const float my_lo = sage::num::fp8_e4m3_to_float(static_cast<std::uint8_t>(255u - code));
    hw = __float_as_uint(hw_hi);
    mine = __float_as_uint(my_hi);
    return __float_as_uint(hw_hi) == __float_as_uint(my_hi) && __float_as_uint(hw_lo) == __float_as_uint(my_lo);
  }
};

struct E5M2Decode {
  __device__ bool operator()(std::uint32_t code, std::uint32_t& hw, std::uint32_t& mine) const {
    const std::uint16_t pair = static_cast<std::uint16_t>((code << 8) | (255u - code));
    const std::uint32_t halves = ptx::cvt_rn_f16x2_e5m2x2(pair);
    const float hw_hi = sage::num::f16_to_float(static_cast<std::uint16_t>(halves >> 16));
    const float hw_lo = sage::num::f16_to_float(static_cast<std::uint16_t>(halves & 0xFFFFu));
    const float my_hi = sage::num::fp8_e5m2_to_float(static_cast<std::uint8_t>(code));
    const float my_lo = sage::num::fp8_e5m2_to_float(static_cast<std::uint8_t>(255u - code));
    hw = __float_as_uint(hw_hi);
    mine = __float_as_uint(my_hi);
    return __float_as_uint(hw_hi) == __float_as_uint(my_hi) && __float_as_uint(hw_lo) == __float_as_uint(my_lo);
  }
};

struct F16Decode {
  __device__ bool operator()(std::uint32_t code, std::uint32_t& hw, std::uint32_t& mine) const {
    hw = __float_as_uint(ptx::cvt_f32_f16(static_cast<std::uint16_t>(code)));
    mine = __float_as_uint(sage::num::f16_to_float(static_cast<std::uint16_t>(code)));
    return hw == mine;
  }
};

struct BF16Decode {
  __device__ bool operator()(std::uint32_t code, std::uint32_t& hw, std::uint32_t& mine) const {
    hw = __float_as_uint(ptx::cvt_f32_bf16(static_cast<std::uint16_t>(code)));
    mine = __float_as_uint(sage::num::bf16_to_float(static_cast<std::uint16_t>(code)));
    return hw == mine;
  }
};

// FP4: compiled for real only on the targets that have the instructions; the
// tests never launch these elsewhere (fp4_cvt_compiled_kernel says so).
struct E2M1Encode {
  __device__ bool operator()(std::uint32_t bits, std::uint32_t& hw, std::uint32_t& mine) const {
#if SAGE_TEST_HAS_FP4_CVT
    const float x = __uint_as_float(bits);
    hw = ptx::cvt_rn_satfinite_e2m1x2(x, negated(x));
    mine = sage::num::pack_nibbles(sage::num::fp4_e2m1_from_float(negated(x)), sage::num::fp4_e2m1_from_float(x));
    return hw == mine;
#else
    hw = mine = bits;
    return false;
#endif
  }
};

struct E2M1Decode {
  __device__ bool operator()(std::uint32_t byte, std::uint32_t& hw, std::uint32_t& mine) const {
#if SAGE_TEST_HAS_FP4_CVT
    const std::uint32_t halves = ptx::cvt_rn_f16x2_e2m1x2(static_cast<std::uint16_t>(byte));
    const float hw_hi = sage::num::f16_to_float(static_cast<std::uint16_t>(halves >> 16));
    const float hw_lo = sage::num::f16_to_float(static_cast<std::uint16_t>(halves & 0xFFFFu));
    const std::uint8_t b = static_cast<std::uint8_t>(byte);
    const float my_hi = sage::num::fp4_e2m1_to_float(sage::num::hi_nibble(b));
    const float my_lo = sage::num::fp4_e2m1_to_float(sage::num::lo_nibble(b));
    hw = halves;
    mine = (std::uint32_t{sage::num::float_to_f16(my_hi)} << 16) | sage::num::float_to_f16(my_lo);
    return __float_as_uint(hw_hi) == __float_as_uint(my_hi) && __float_as_uint(hw_lo) == __float_as_uint(my_lo);
#else
    hw = mine = byte;
    return false;
#endif
  }
};

__global__ void fp4_cvt_compiled_kernel(int* compiled) { *compiled = SAGE_TEST_HAS_FP4_CVT; }

// symmetric_scale and reciprocal_rn in device code, for comparison with the host.
__global__ void scale_helpers_kernel(const float* amax, int n, int qmax, float* scale, float* inverse) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  scale[i] = sage::num::symmetric_scale(amax[i], qmax);
  inverse[i] = sage::num::reciprocal_rn(scale[i]);
}

// The value of lane `lane` of test warp `warp` for warp_max_of_magnitudes:
// what its callers pass (fabsf or abs_max8 under num::max_nan: the sign bit
// clear, a NaN only as the canonical 0x7FFFFFFF), drawn four ways by the
// warp's index: bits over the whole non-negative range (NaN bit patterns made
// canonical: ~0.4% of lanes, so some warps hold one), values in [0.5, 2)
// that differ in their low bits, zeros with a few subnormals, and finite
// values with one lane +inf or NaN.
__device__ std::uint32_t magnitude_lane_bits(std::uint64_t warp, int lane) {
  std::uint64_t z = (warp * 32 + static_cast<std::uint64_t>(lane)) + 0x9E3779B97F4A7C15ull;  // splitmix64
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  z ^= z >> 31;
  const std::uint32_t r = static_cast<std::uint32_t>(z);
  constexpr std::uint32_t kInf = 0x7F800000u, kCanonicalNaN = 0x7FFFFFFFu;
  switch (warp % 4) {
    case 0: {
      const std::uint32_t b = r & 0x7FFFFFFFu;
      return b > kInf ? kCanonicalNaN : b;
    }
    case 1:
      return 0x3F000000u + (r & 0x00FFFFFFu);
    case 2:
      return (r >> 28) == 0 ? (r & 0x007FFFFFu) : 0u;
    default: {
      const int special = static_cast<int>(warp / 4 % 32);
      if (lane != special) return 0x3F800000u + (r & 0x007FFFFFu);
      return (warp / 128) % 2 == 0 ? kInf : kCanonicalNaN;
    }
  }
}

// One test warp a warp of threads: warp_max_of_magnitudes against the
// num::max_nan butterfly, in every lane, and in lane 0 max_of_magnitudes of
// the warp's first 16 values against max_nan over them in order; mismatching
// warps are counted (input: the warp, hardware: the max_nan bits, header:
// the other form's).
__global__ void warp_max_kernel(std::uint64_t warps, SweepResult* result) {
  const int lane = threadIdx.x % 32;
  const std::uint64_t stride = static_cast<std::uint64_t>(gridDim.x) * blockDim.x / 32;
  for (std::uint64_t w = (static_cast<std::uint64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32; w < warps;
       w += stride) {
    const float x = __uint_as_float(magnitude_lane_bits(w, lane));
    float butterfly = x;
#pragma unroll
    for (int mask = 16; mask >= 1; mask /= 2) {
      butterfly = sage::num::max_nan(butterfly, __shfl_xor_sync(0xffffffffu, butterfly, mask));
    }
    float reduced = sage::quant::warp_max_of_magnitudes(x);
    bool differs = __float_as_uint(butterfly) != __float_as_uint(reduced);
    if (__any_sync(0xffffffffu, differs)) {
      differs = true;  // (lane 0 records the warp's mismatch)
    } else if (lane == 0) {
      alignas(16) float sixteen[16];
      float in_order = 0.f;
      for (int i = 0; i < 16; ++i) {
        sixteen[i] = __uint_as_float(magnitude_lane_bits(w, i));
        in_order = sage::num::max_nan(in_order, sixteen[i]);
      }
      butterfly = in_order;
      reduced = sage::quant::max_of_magnitudes(sixteen);
      differs = __float_as_uint(in_order) != __float_as_uint(reduced);
    }
    if (differs && lane == 0) {
      const unsigned long long slot = atomicAdd(&result->mismatches, 1ull);
      if (slot < kMaxRecorded) {
        result->first[slot] = Mismatch{static_cast<std::uint32_t>(w), __float_as_uint(butterfly), __float_as_uint(reduced)};
      }
    }
  }
}

// ---------------------------------------------------------------------------
// Tests.
// ---------------------------------------------------------------------------
TEST_F(NumericsCvtGpu, E4M3EncodeMatchesCvtSatfiniteOnAllFloats) {
  require_sm(89, "cvt.rn.satfinite.e4m3x2.f32");
  expect_agreement(E4M3Encode{}, kAllFloats, "cvt.rn.satfinite.e4m3x2.f32 vs fp8_e4m3_from_float");
}

TEST_F(NumericsCvtGpu, E5M2EncodeMatchesCvtSatfiniteOnAllFloats) {
  require_sm(89, "cvt.rn.satfinite.e5m2x2.f32");
  expect_agreement(E5M2Encode{}, kAllFloats, "cvt.rn.satfinite.e5m2x2.f32 vs fp8_e5m2_from_float");
}

TEST_F(NumericsCvtGpu, UE4M3EncodeMatchesCvtSatfiniteReluOnAllFloats) {
  require_sm(89, "cvt.rn.satfinite.relu.e4m3x2.f32");
  expect_agreement(UE4M3EncodeVsRelu{}, kAllFloats, "cvt.rn.satfinite.relu.e4m3x2.f32 vs ue4m3_from_float");
}

TEST_F(NumericsCvtGpu, BF16EncodeMatchesCvtOnAllFloats) {
  expect_agreement(BF16Encode{}, kAllFloats, "cvt.rn.bf16.f32 vs float_to_bf16");
}

TEST_F(NumericsCvtGpu, F16EncodeMatchesCvtOnAllFloats) {
  expect_agreement(F16Encode{}, kAllFloats, "cvt.rn.f16.f32 vs float_to_f16");
}

TEST_F(NumericsCvtGpu, RoundHalfEvenMatchesCvtRniOnAllFloats) {
  expect_agreement(RoundHalfEven{}, kAllFloats, "cvt.rni.s32.f32 vs round_half_even_to_int");
}

TEST_F(NumericsCvtGpu, QuantizeSymmetricMatchesPtxSequenceOnAllFloats) {
  // Reciprocal scales of typical and extreme groups, INT8 and INT4.
  const float amaxes[] = {1.0f, 3.7f, 0.0123f, 6.5e4f, 1e-30f, 3e38f};
  for (const int qmax : {sage::num::qmax<8>(), sage::num::qmax<4>()}) {
    for (const float amax : amaxes) {
      const float inv = sage::num::reciprocal_rn(sage::num::symmetric_scale(amax, qmax));
      std::ostringstream what;
      what << "mul.rn + cvt.rni.s32 + clamp vs quantize_symmetric (qmax " << qmax << ", amax " << amax << ")";
      expect_agreement(QuantizeSymmetric{inv, qmax}, kAllFloats, what.str());
    }
  }
}

TEST_F(NumericsCvtGpu, ScaleHelpersGiveTheSameBitsAsOnTheHost) {
  // Every 4099th float bit pattern (all classes: zeros, subnormals, normals,
  // inf, NaN, both signs) plus a few specials.
  std::vector<float> amax;
  for (std::uint64_t b = 0; b < kAllFloats; b += 4099) amax.push_back(__builtin_bit_cast(float, static_cast<std::uint32_t>(b)));
  for (const std::uint32_t b : {0x00000000u, 0x80000000u, 0x00000001u, 0x00800000u, 0x7F7FFFFFu, 0x7F800000u,
                                0xFF800000u, 0x7FC00000u, 0x3F800000u}) {
    amax.push_back(__builtin_bit_cast(float, b));
  }
  const int n = static_cast<int>(amax.size());
  DeviceBuffer<float> d_amax(amax.size()), d_scale(amax.size()), d_inverse(amax.size());
  SAGE_CUDA_CHECK(d_amax.status());
  SAGE_CUDA_CHECK(d_scale.status());
  SAGE_CUDA_CHECK(d_inverse.status());
  SAGE_CUDA_CHECK(d_amax.copy_from(amax));
  for (const int qmax : {sage::num::qmax<8>(), sage::num::qmax<4>()}) {
    scale_helpers_kernel<<<(n + 255) / 256, 256>>>(d_amax.data(), n, qmax, d_scale.data(), d_inverse.data());
    SAGE_CUDA_CHECK(cudaGetLastError());
    std::vector<float> scale, inverse;
    SAGE_CUDA_CHECK(d_scale.copy_to(scale));
    SAGE_CUDA_CHECK(d_inverse.copy_to(inverse));
    int failures = 0;
    for (int i = 0; i < n; ++i) {
      const float want_scale = sage::num::symmetric_scale(amax[i], qmax);
      const float want_inverse = sage::num::reciprocal_rn(want_scale);
      // A NaN amax gives a NaN scale and inverse: which NaN is not specified
      // (the host keeps the payload, the device's reciprocal gives its own).
      auto same = [](float a, float b) {
        return (std::isnan(a) && std::isnan(b)) ||
               __builtin_bit_cast(std::uint32_t, a) == __builtin_bit_cast(std::uint32_t, b);
      };
      const bool ok = same(scale[i], want_scale) && same(inverse[i], want_inverse);
      if (!ok && ++failures <= 5) {
        ADD_FAILURE() << "qmax " << qmax << ", amax " << amax[i] << ": device scale " << scale[i] << " inverse "
                      << inverse[i] << ", host " << want_scale << " " << want_inverse;
      }
    }
    EXPECT_EQ(failures, 0);
  }
}

TEST_F(NumericsCvtGpu, MaximaOfMagnitudesMatchMaxNan) {
  constexpr std::uint64_t kWarps = 1ull << 22;
  DeviceBuffer<SweepResult> result(1);
  SAGE_CUDA_CHECK(result.status());
  SAGE_CUDA_CHECK(result.zero());
  warp_max_kernel<<<sm_count() * 8, 256>>>(kWarps, result.data());
  SAGE_CUDA_CHECK(cudaGetLastError());
  SAGE_CUDA_CHECK(cudaDeviceSynchronize());
  std::vector<SweepResult> host;
  SAGE_CUDA_CHECK(result.copy_to(host));
  std::ostringstream detail;
  for (unsigned long long k = 0; k < std::min<unsigned long long>(host[0].mismatches, kMaxRecorded); ++k) {
    char line[128];
    std::snprintf(line, sizeof line, "\n  warp %u: max_nan 0x%08X, other form 0x%08X", host[0].first[k].input,
                  host[0].first[k].hardware, host[0].first[k].header);
    detail << line;
  }
  EXPECT_EQ(host[0].mismatches, 0ull) << host[0].mismatches << " of " << kWarps << " warps differ:" << detail.str();
}

TEST_F(NumericsCvtGpu, E4M3DecodeMatchesCvtF16x2OnAllCodes) {
  require_sm(89, "cvt.rn.f16x2.e4m3x2");
  expect_agreement(E4M3Decode{}, 256, "cvt.rn.f16x2.e4m3x2 vs fp8_e4m3_to_float");
}

TEST_F(NumericsCvtGpu, E5M2DecodeMatchesCvtF16x2OnAllCodes) {
  require_sm(89, "cvt.rn.f16x2.e5m2x2");
  expect_agreement(E5M2Decode{}, 256, "cvt.rn.f16x2.e5m2x2 vs fp8_e5m2_to_float");
}

TEST_F(NumericsCvtGpu, F16DecodeMatchesCvtF32F16OnAllCodes) {
  expect_agreement(F16Decode{}, 65536, "cvt.f32.f16 vs f16_to_float");
}

TEST_F(NumericsCvtGpu, BF16DecodeMatchesCvtF32BF16OnAllCodes) {
  require_sm(90, "cvt.f32.bf16");
  expect_agreement(BF16Decode{}, 65536, "cvt.f32.bf16 vs bf16_to_float");
}

// FP4 needs a Blackwell GPU and a binary built for its family-specific target.
class NumericsCvtGpuFp4 : public NumericsCvtGpu {
 protected:
  void SetUp() override {
    NumericsCvtGpu::SetUp();
    if (IsSkipped() || HasFatalFailure()) return;
    if (sm() < 100) GTEST_SKIP() << "FP4 E2M1 cvt needs sm_100a/sm_120a-class GPUs; this GPU is sm_" << sm();
    DeviceBuffer<int> compiled(1);
    SAGE_CUDA_CHECK(compiled.status());
    fp4_cvt_compiled_kernel<<<1, 1>>>(compiled.data());
    SAGE_CUDA_CHECK(cudaGetLastError());
    std::vector<int> host;
    SAGE_CUDA_CHECK(compiled.copy_to(host));
    if (host[0] == 0) {
      GTEST_SKIP() << "this binary's code for sm_" << sm()
                   << " has no FP4 cvt: add the family-specific target (e.g. 100a or 120a) to SAGE_CUDA_ARCHS";
    }
  }
};

TEST_F(NumericsCvtGpuFp4, E2M1EncodeMatchesCvtSatfiniteOnAllFloats) {
  expect_agreement(E2M1Encode{}, kAllFloats, "cvt.rn.satfinite.e2m1x2.f32 vs fp4_e2m1_from_float");
}

TEST_F(NumericsCvtGpuFp4, E2M1DecodeMatchesCvtF16x2OnAllBytes) {
  expect_agreement(E2M1Decode{}, 256, "cvt.rn.f16x2.e2m1x2 vs fp4_e2m1_to_float");
}

}  // namespace
