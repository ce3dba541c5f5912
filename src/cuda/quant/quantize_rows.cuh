// Element- and row-level pieces of INT quantization on the GPU, shared by
// the pre-pass's quantize kernel (cuda/quant/prepass.cu) and the sm90
// attention kernel, which quantizes its Q tile itself where it can
// (sm90/qk_int8_pv_fp8_sm90_fwd.cuh): both run the same arithmetic, so
// their INT8 rows and scales agree bit for bit.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "numerics/formats.h"

namespace sage::quant {

inline constexpr int kVec = 8;  // 16-bit elements per 16-byte load

// The two 16-bit elements of a 32-bit word as floats (.x the lower-addressed
// one). Both conversions are exact.
template <typename T>
__device__ __forceinline__ float2 to_float2(uint32_t w);
template <>
__device__ __forceinline__ float2 to_float2<__nv_bfloat16>(uint32_t w) {
  return make_float2(__uint_as_float(w << 16), __uint_as_float(w & 0xFFFF0000u));
}
template <>
__device__ __forceinline__ float2 to_float2<__half>(uint32_t w) {
  __half2 h;
  memcpy(&h, &w, sizeof(h));
  return __half22float2(h);
}

// The 8 elements of a 16-byte chunk as floats.
template <typename T>
__device__ __forceinline__ void unpack8(uint4 raw, float (&x)[kVec]) {
  const uint32_t w[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 f = to_float2<T>(w[i]);
    x[2 * i] = f.x, x[2 * i + 1] = f.y;
  }
}

// Two 16-bit elements of T as one packed value.
template <typename T>
using PairOf = typename std::conditional<std::is_same<T, __half>::value, __half2, __nv_bfloat162>::type;

// Both halves of a packed pair set to v.
template <typename T>
__device__ __forceinline__ PairOf<T> pair_of(float v) {
  if constexpr (std::is_same<T, __half>::value) {
    return __float2half2_rn(v);
  } else {
    return __float2bfloat162_rn(v);
  }
}

// max |x| of a 16-byte chunk's even and odd elements, as one packed pair.
template <typename T>
__device__ __forceinline__ PairOf<T> abs_max_pair(uint4 raw) {
  PairOf<T> h[4];
  memcpy(h, &raw, sizeof(raw));
  return __hmax2_nan(__hmax2_nan(__habs2(h[0]), __habs2(h[1])), __hmax2_nan(__habs2(h[2]), __habs2(h[3])));
}
// max |x| over the 8 elements of each of N 16-byte chunks, on packed pairs
// (half the instructions of unpacking to fp32). Exact: the maximum of
// representable values; NaN if an element is NaN (num::max_nan: the
// group's scale then makes the results that use it NaN).
template <typename T, int N>
__device__ __forceinline__ float abs_max8(const uint4 (&raw)[N]) {
  static_assert((N & (N - 1)) == 0, "a tree of maxima over a power of two of chunks");
  PairOf<T> m[N];
#pragma unroll
  for (int i = 0; i < N; ++i) m[i] = abs_max_pair<T>(raw[i]);
#pragma unroll
  for (int width = N; width > 1; width /= 2) {
#pragma unroll
    for (int i = 0; i < width / 2; ++i) m[i] = __hmax2_nan(m[i], m[i + width / 2]);
  }
  return num::max_nan(__low2float(m[0]), __high2float(m[0]));
}
template <typename T>
__device__ __forceinline__ float abs_max8(uint4 raw) {
  const uint4 one[1] = {raw};
  return abs_max8<T>(one);
}

// Hardware conversions for the hot loops. numerics/formats.h (what the CPU
// emulation runs) is portable bit arithmetic, tens of instructions per value;
// tests/gpu/test_numerics_cvt.cu checks over all 2^32 floats that it equals
// these instructions bit for bit, so the two paths agree exactly.
// qmax: 127 (INT8) or 7 (INT4).
__device__ __forceinline__ int quantize_int(float x, float inv_scale, int qmax) {
  const int q = __float2int_rn(x * inv_scale);  // cvt.rni.s32.f32: ties to even, NaN -> 0, saturating
  return q > qmax ? qmax : (q < -qmax ? -qmax : q);
}

// The INT8 codes of 8 values, 4 per word (element 0 in the lowest byte):
// quantize_int's result for qmax = 127 in fewer instructions, for values of
// the group whose largest |x| set the scale (inv_scale =
// reciprocal_rn(symmetric_scale(amax, 127)), amax the group's max_nan of
// |x|), which is how every caller quantizes. The packing conversions
// (cvt.pack.sat) saturate at +127, quantize_int's upper clamp; its lower
// one, -127, cannot act on such values: for finite amax, amax / scale <=
// 127 (1 + u) (the division's rounding; the smallest-normal floor only
// lowers it), and inv_scale and the product add a rounding each, so
// |x * inv_scale| <= 127 (1 + 3u) < 127.5, which rounds into [-127, 127];
// for non-finite amax the scale is NaN or +inf, inv_scale NaN or 0, and the
// product 0 or NaN: code 0 either way. Without the clamp the conversions
// fuse into packed pairs (F2IP on sm_90a).
__device__ __forceinline__ uint2 quantize_int8x8(const float (&x)[kVec], float inv_scale) {
  int q[kVec];
#pragma unroll
  for (int e = 0; e < kVec; ++e) q[e] = __float2int_rn(x[e] * inv_scale);
  uint32_t word[2];
#pragma unroll
  for (int w = 0; w < 2; ++w) {
    // cvt.pack.sat.s8.s32.b32 d, a, b, c: d = c << 16 | sat(a) << 8 | sat(b).
    uint32_t upper;
    asm("cvt.pack.sat.s8.s32.b32 %0, %1, %2, 0;\n" : "=r"(upper) : "r"(q[4 * w + 3]), "r"(q[4 * w + 2]));
    asm("cvt.pack.sat.s8.s32.b32 %0, %1, %2, %3;\n" : "=r"(word[w]) : "r"(q[4 * w + 1]), "r"(q[4 * w]), "r"(upper));
  }
  return make_uint2(word[0], word[1]);
}

// E4M3 codes of two values in one conversion: lo in the low byte, hi in the
// next (the conversion is per element, so a pair gives each value's code).
__device__ __forceinline__ uint32_t fp8x2_e4m3_code(float lo, float hi) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
  uint16_t pair;
  asm("cvt.rn.satfinite.e4m3x2.f32 %0, %1, %2;\n" : "=h"(pair) : "f"(hi), "f"(lo));
  return pair;
#else
  return num::fp8_e4m3_from_float(lo) | num::fp8_e4m3_from_float(hi) << 8;
#endif
}

// Which part of a tile of rows a thread takes in the row-wise passes
// (group maxima, INT rows, fp16 rows): warp w the rows [16 w, 16 w + 16)
// (inside one warp_q slice), lane l the 8-channel chunk l % kChunkLanes of
// kRows consecutive rows. A lane thus needs the per-channel constants of 8
// channels only, and its 16-byte reads of a tile of unpadded rows cover
// whole rows per quarter warp (no bank conflicts).
template <int Dp>
struct RowLanes {
  static constexpr int kChunkLanes = Dp / kVec;  // lanes per row: 16 (Dp 128) or 8 (Dp 64)
  static constexpr int kRows = kChunkLanes / 2;  // rows per lane: 8 or 4
  static_assert(kRows * (32 / kChunkLanes) == 16, "a warp covers its 16 rows once");
  static __device__ __forceinline__ int chunk() { return threadIdx.x % 32 % kChunkLanes; }
  // The lane's row j among its warp's 16.
  static __device__ __forceinline__ int row_in_warp(int j) { return (threadIdx.x % 32 / kChunkLanes) * kRows + j; }
  // Tile row of the lane's row j (warp w of the CTA takes rows [16 w, 16 w + 16)).
  static __device__ __forceinline__ int row(int j) { return 16 * (threadIdx.x / 32) + row_in_warp(j); }
};

// Max-reduces m[j] (row j of this lane, over its own chunk) across the
// lanes of the warp that hold the other chunks of the same rows, and
// scatters the rows over them: on return, the lane holds the maximum over
// the whole row (lane / 2) of the warp's 16 rows. Each step halves the
// values a lane keeps, so 8 rows take 8 shuffles.
template <int kRows>
__device__ __forceinline__ float row_max_scatter(float (&m)[kRows]) {
  const int lane = threadIdx.x % 32;
#pragma unroll
  for (int half = kRows / 2; half >= 1; half /= 2) {
    // Lanes with bit 2 * half set keep the upper half of their rows.
    const bool upper = lane & (2 * half);
#pragma unroll
    for (int i = 0; i < half; ++i) {
      const float keep = upper ? m[i + half] : m[i];
      const float send = upper ? m[i] : m[i + half];
      m[i] = num::max_nan(keep, __shfl_xor_sync(0xffffffffu, send, 2 * half));
    }
  }
  return num::max_nan(m[0], __shfl_xor_sync(0xffffffffu, m[0], 1));
}

// The largest magnitude of the warp's lanes, in every lane: num::max_nan
// over the lanes, for values with a clear sign bit (+0 to +inf, and the
// canonical NaN that max_nan and abs_max8 give). Such floats are ordered as
// their bits are as unsigned integers, and that NaN (0x7FFFFFFF) has the
// largest bits of all, as max_nan lets a NaN win: so one integer reduction
// (redux.sync, sm_80+) gives max_nan's result bit for bit, where a butterfly
// chains five shuffles and maxima (the K jobs' per-tile scale and the
// kernel's per-warp Q scale wait on it). H100, B=2 H=32 D=128, GPU time
// against the butterfly: the attention kernel alone -2.5% at 1K keys, whole
// calls -1.6..+0.5% at 1K-4K (docs/perf-notes.md, session 70).
__device__ __forceinline__ float warp_max_of_magnitudes(float x) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  return __uint_as_float(__reduce_max_sync(0xffffffffu, __float_as_uint(x)));
#else
#pragma unroll
  for (int mask = 16; mask >= 1; mask /= 2) x = num::max_nan(x, __shfl_xor_sync(0xffffffffu, x, mask));
  return x;
#endif
}

// num::max_nan of kN magnitudes (as warp_max_of_magnitudes takes them) at
// 16-byte aligned `values`, as a tree of unsigned maxima of their bits, for
// the same reason: the K jobs' tile maximum over their warps' maxima, which
// every thread waits for after the tile's barrier (sixteen max_nan in a row,
// asm statements the compiler does not reorder, made a chain sixteen deep).
template <int kN>
__device__ __forceinline__ float max_of_magnitudes(const float (&values)[kN]) {
  static_assert(kN >= 4 && (kN & (kN - 1)) == 0, "16-byte loads, then a tree over a power of two");
  const uint4* words = reinterpret_cast<const uint4*>(values);
  uint32_t m[kN / 4];
#pragma unroll
  for (int i = 0; i < kN / 4; ++i) {
    const uint4 w = words[i];
    m[i] = max(max(w.x, w.y), max(w.z, w.w));
  }
#pragma unroll
  for (int width = kN / 4; width > 1; width /= 2) {
#pragma unroll
    for (int i = 0; i < width / 2; ++i) m[i] = max(m[i], m[i + width / 2]);
  }
  return __uint_as_float(m[0]);
}

// After row_max_scatter: merges `amax` over the lanes whose rows lie in the
// same scale group `slot`. Inside a warp's 16 rows every granularity's group
// is the set of rows that agree on some bits of the row index (a range of 8
// or 16 rows, or rows of equal r % 8 or (r % 8) / 2), i.e. of lanes that
// agree on some lane bits; a butterfly that only merges lanes of the same
// group thus gives each lane its group's maximum (max is exact in any
// order). Returns true on the lowest lane of each group.
__device__ __forceinline__ bool merge_group_max(float& amax, int slot) {
  const int lane = threadIdx.x % 32;
  bool lowest = lane % 2 == 0;  // lanes 2r and 2r + 1 both hold row r
#pragma unroll
  for (int mask = 2; mask < 32; mask *= 2) {
    const float other = __shfl_xor_sync(0xffffffffu, amax, mask);
    if (__shfl_xor_sync(0xffffffffu, slot, mask) == slot) {
      amax = num::max_nan(amax, other);
      lowest = lowest && !(lane & mask);
    }
  }
  return lowest;
}

}  // namespace sage::quant
