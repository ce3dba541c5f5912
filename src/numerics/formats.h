// Format conversions shared by host and device code: bf16, fp16, FP8 (E4M3,
// E5M2), FP4 (E2M1), the UE4M3 block scale of NVFP4, and INT8/INT4 symmetric
// quantization.
//
// Every function here is integer bit manipulation (plus, for INT quantization,
// one IEEE multiply), so it gives the same bits on the host and on the device,
// and the CPU emulation of a kernel rounds exactly like the kernel. The GPU
// test tests/gpu/test_numerics_cvt.cu checks them bit for bit against the
// hardware cvt instructions over all 2^32 float inputs.
//
// Formats (S = sign, E = exponent field, M = mantissa field):
//
//   bf16   S EEEEEEEE MMMMMMM      bias 127  the top half of an fp32; inf, NaN
//   fp16   S EEEEE MMMMMMMMMM      bias 15   IEEE binary16; max 65504, inf, NaN
//   E4M3   S EEEE MMM              bias 7    OCP "fn": no inf; S.1111.111 is
//                                            NaN; max 448 (S.1111.110);
//                                            min subnormal 2^-9
//   E5M2   S EEEEE MM              bias 15   IEEE-like: S.11111.00 is inf,
//                                            S.11111.{01,10,11} NaN; max 57344;
//                                            min subnormal 2^-16
//   E2M1   S EE M (a nibble)       bias 1    values 0 .5 1 1.5 2 3 4 6 and
//                                            their negatives; no inf, no NaN
//   UE4M3  0 EEEE MMM              bias 7    E4M3 without a sign: the NVFP4
//                                            block scale; 0x7F is NaN
//   INT8 / INT4                              two's complement, symmetric range
//                                            [-qmax, qmax] (127 / 7); the most
//                                            negative code is never produced
//
// A field value E = 0 means a subnormal: value = M * 2^(1 - bias - mbits).
// Otherwise value = (1 + M / 2^mbits) * 2^(E - bias).
//
// Rounding is always round-to-nearest, ties to even. Out-of-range and NaN
// rules follow the PTX instructions the kernels use, as measured on an H200
// (sm_90) and as the PTX ISA ("cvt", .satfinite) states:
//   * .satfinite (E4M3, E5M2, E2M1): "If the absolute value of input (ignoring
//     sign) is greater than MAX_NORM of the specified destination format, then
//     the result is sign-preserved MAX_NORM" - so +-inf gives +-max too.
//   * NaN input, E4M3 and E5M2: the PTX ISA says "the result is NaN in the
//     specified destination format"; the hardware returns 0x7F for every NaN
//     (sign and payload dropped), and so do we.
//   * NaN input, E2M1 (no NaN in the format): the PTX ISA says NaN results are
//     converted to positive MAX_NORM, i.e. +6 (nibble 0x7).
//   * fp16 / bf16 (cvt.rn.f16.f32, cvt.rn.bf16.f32, no .satfinite): IEEE
//     overflow to +-inf; every NaN becomes the canonical 0x7FFF.
//   * Zero keeps its sign: -0.0 and negative values that round to zero give
//     the negative-zero code (0x80, nibble 0x8, 0x8000).
//   * Decoding a NaN code (E4M3, E5M2, UE4M3, fp16) returns the canonical
//     float NaN 0x7FFFFFFF, as cvt.f32.f16 does on the GPU; bf16 decoding is
//     exact (the 16 bits become the top half of the float, payload and all).
#pragma once

#include <cstdint>

#if !defined(SAGE_HD)
#if defined(__CUDACC__)
#define SAGE_HD __host__ __device__
#else
#define SAGE_HD
#endif
#endif

namespace sage::num {

// ---------------------------------------------------------------------------
// Constants
// ---------------------------------------------------------------------------
inline constexpr float kE4M3Max = 448.0f;
inline constexpr float kE5M2Max = 57344.0f;
inline constexpr float kE2M1Max = 6.0f;
inline constexpr float kUE4M3Max = 448.0f;
inline constexpr float kF16Max = 65504.0f;
// log2(e): every path runs the softmax in base 2, its logits scaled by
// sm_scale * kLog2e (the GPU and the validation in float, the emulation in
// double, rounded to float).
inline constexpr double kLog2e = 1.4426950408889634074;

inline constexpr std::uint8_t kE4M3NaN = 0x7F;   // what every NaN encodes to
inline constexpr std::uint8_t kE5M2NaN = 0x7F;   // what every NaN encodes to
inline constexpr std::uint8_t kUE4M3NaN = 0x7F;  // what every NaN encodes to
inline constexpr std::uint16_t kF16NaN = 0x7FFF;
inline constexpr std::uint16_t kBF16NaN = 0x7FFF;
inline constexpr std::uint32_t kF32CanonicalNaN = 0x7FFFFFFFu;

namespace detail {

inline constexpr std::uint32_t kF32SignMask = 0x80000000u;
inline constexpr std::uint32_t kF32AbsMask = 0x7FFFFFFFu;
inline constexpr std::uint32_t kF32InfBits = 0x7F800000u;
inline constexpr int kF32MantissaBits = 23;
inline constexpr int kF32Bias = 127;

// __builtin_bit_cast is constexpr and works in host and device code (GCC,
// Clang, MSVC, nvcc), unlike std::bit_cast in device code.
SAGE_HD constexpr std::uint32_t bits_of(float x) { return __builtin_bit_cast(std::uint32_t, x); }
SAGE_HD constexpr float float_of(std::uint32_t b) { return __builtin_bit_cast(float, b); }

SAGE_HD constexpr bool is_nan_bits(std::uint32_t b) { return (b & kF32AbsMask) > kF32InfBits; }

// 2^e for e in the normal float range.
SAGE_HD constexpr float pow2(int e) { return float_of(static_cast<std::uint32_t>(e + kF32Bias) << kF32MantissaBits); }

// v / 2^shift rounded to nearest, ties to even (1 <= shift <= 31).
SAGE_HD constexpr std::uint32_t shift_right_rne(std::uint32_t v, int shift) {
  const std::uint32_t quotient = v >> shift;
  const std::uint32_t remainder = v & ((1u << shift) - 1u);
  const std::uint32_t half = 1u << (shift - 1);
  const bool round_up = remainder > half || (remainder == half && (quotient & 1u));
  return quotient + (round_up ? 1u : 0u);
}

// Rounds the magnitude of a finite float (its bits without the sign) to the
// magnitude code (exponent field and mantissa field side by side) of a narrow
// format with `man_bits` mantissa bits and exponent bias `bias`.
//
// Because a code is the exponent field followed by the mantissa field, adding
// one to a code whose mantissa is all ones carries into the exponent: that is
// exactly the next binade. So one integer RNE of the significand, shifted to
// the target's precision at that exponent, gives the right code for normals,
// subnormals and the subnormal->normal and normal->next-binade carries. No
// overflow handling: the caller saturates (the result can exceed any max).
SAGE_HD constexpr std::uint32_t round_magnitude(std::uint32_t abs_bits, int man_bits, int bias) {
  const std::uint32_t exp_field = abs_bits >> kF32MantissaBits;
  const std::uint32_t fraction = abs_bits & ((1u << kF32MantissaBits) - 1u);
  // Float subnormals have no implicit bit and the exponent of the smallest normal.
  const std::uint32_t significand = exp_field != 0 ? (fraction | (1u << kF32MantissaBits)) : fraction;
  const int exponent = exp_field != 0 ? static_cast<int>(exp_field) - kF32Bias : 1 - kF32Bias;
  const int target_exp_field = exponent + bias;  // <= 0: the target holds it as a subnormal
  // Significand bits below the target's last mantissa bit; a subnormal target
  // drops (1 - target_exp_field) more.
  int shift = kF32MantissaBits - man_bits + (target_exp_field < 1 ? 1 - target_exp_field : 0);
  if (shift > 31) shift = 31;  // the value rounds to zero either way; keeps the shift defined
  const std::uint32_t binade_base =
      target_exp_field > 1 ? static_cast<std::uint32_t>(target_exp_field - 1) << man_bits : 0u;
  return binade_base + shift_right_rne(significand, shift);
}

// Value of a finite magnitude code (see round_magnitude). Exact: every value of
// these formats is a normal float.
SAGE_HD constexpr float decode_magnitude(std::uint32_t code, int man_bits, int bias) {
  const std::uint32_t exp_field = code >> man_bits;
  const std::uint32_t mantissa = code & ((1u << man_bits) - 1u);
  if (exp_field == 0) {
    // M * 2^(1 - bias - mbits): an exact product (small integer times a power of two).
    return static_cast<float>(mantissa) * pow2(1 - bias - man_bits);
  }
  const std::uint32_t f32_exp = exp_field - static_cast<std::uint32_t>(bias) + kF32Bias;
  return float_of((f32_exp << kF32MantissaBits) | (mantissa << (kF32MantissaBits - man_bits)));
}

// Encoder for the .satfinite formats (E4M3, E5M2, E2M1): RNE, |x| beyond the
// largest finite value (inf included) gives the signed largest finite value.
SAGE_HD constexpr std::uint32_t encode_satfinite(float x, int man_bits, int bias, std::uint32_t max_code,
                                                 std::uint32_t sign_code_bit, std::uint32_t nan_code) {
  const std::uint32_t b = bits_of(x);
  if (is_nan_bits(b)) return nan_code;
  const std::uint32_t sign = (b & kF32SignMask) != 0 ? sign_code_bit : 0u;
  std::uint32_t magnitude = round_magnitude(b & kF32AbsMask, man_bits, bias);
  if (magnitude > max_code) magnitude = max_code;
  return sign | magnitude;
}

// Format parameters (mantissa bits, bias, largest finite magnitude code).
inline constexpr int kF16ManBits = 10, kF16Bias = 15;
inline constexpr std::uint32_t kF16InfCode = 0x7C00;
inline constexpr int kE4M3ManBits = 3, kE4M3Bias = 7;
inline constexpr std::uint32_t kE4M3MaxCode = 0x7E;
inline constexpr int kE5M2ManBits = 2, kE5M2Bias = 15;
inline constexpr std::uint32_t kE5M2MaxCode = 0x7B, kE5M2InfCode = 0x7C;
inline constexpr int kE2M1ManBits = 1, kE2M1Bias = 1;
inline constexpr std::uint32_t kE2M1MaxCode = 0x7;

}  // namespace detail

// ---------------------------------------------------------------------------
// bf16
// ---------------------------------------------------------------------------
SAGE_HD constexpr float bf16_to_float(std::uint16_t h) {
  return detail::float_of(static_cast<std::uint32_t>(h) << 16);
}

// RNE like cvt.rn.bf16.f32: overflow gives +-inf, any NaN gives 0x7FFF.
SAGE_HD constexpr std::uint16_t float_to_bf16(float x) {
  const std::uint32_t b = detail::bits_of(x);
  if (detail::is_nan_bits(b)) return kBF16NaN;
  // Adding 0x7FFF plus the lowest kept bit rounds the low half to nearest-even;
  // a carry out of the mantissa lands in the exponent (and max+ rounds to inf).
  const std::uint32_t rounding_bias = 0x7FFFu + ((b >> 16) & 1u);
  return static_cast<std::uint16_t>((b + rounding_bias) >> 16);
}

SAGE_HD constexpr float round_to_bf16(float x) { return bf16_to_float(float_to_bf16(x)); }

// ---------------------------------------------------------------------------
// fp16
// ---------------------------------------------------------------------------
// Exact; a NaN code gives the canonical float NaN (as cvt.f32.f16 on sm_90).
SAGE_HD constexpr float f16_to_float(std::uint16_t h) {
  const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000u) << 16;
  const std::uint32_t magnitude = h & 0x7FFFu;
  if (magnitude > detail::kF16InfCode) return detail::float_of(kF32CanonicalNaN);
  if (magnitude == detail::kF16InfCode) return detail::float_of(sign | detail::kF32InfBits);
  const float value = detail::decode_magnitude(magnitude, detail::kF16ManBits, detail::kF16Bias);
  return detail::float_of(sign | detail::bits_of(value));
}

// RNE like cvt.rn.f16.f32: |x| >= 65520 gives +-inf (IEEE), any NaN gives 0x7FFF.
SAGE_HD constexpr std::uint16_t float_to_f16(float x) {
  const std::uint32_t b = detail::bits_of(x);
  if (detail::is_nan_bits(b)) return kF16NaN;
  std::uint32_t magnitude = detail::round_magnitude(b & detail::kF32AbsMask, detail::kF16ManBits, detail::kF16Bias);
  if (magnitude > detail::kF16InfCode) magnitude = detail::kF16InfCode;
  return static_cast<std::uint16_t>(((b >> 16) & 0x8000u) | magnitude);
}

SAGE_HD constexpr float round_to_f16(float x) { return f16_to_float(float_to_f16(x)); }

// ---------------------------------------------------------------------------
// FP8 E4M3 (OCP fn)
// ---------------------------------------------------------------------------
// As cvt.rn.satfinite.e4m3x2.f32: RNE, |x| > 448 (inf too) -> +-448, NaN -> 0x7F.
SAGE_HD constexpr std::uint8_t fp8_e4m3_from_float(float x) {
  return static_cast<std::uint8_t>(detail::encode_satfinite(x, detail::kE4M3ManBits, detail::kE4M3Bias,
                                                            detail::kE4M3MaxCode, 0x80u, kE4M3NaN));
}

SAGE_HD constexpr float fp8_e4m3_to_float(std::uint8_t code) {
  const std::uint32_t magnitude = code & 0x7Fu;
  if (magnitude == 0x7Fu) return detail::float_of(kF32CanonicalNaN);
  const float value = detail::decode_magnitude(magnitude, detail::kE4M3ManBits, detail::kE4M3Bias);
  return (code & 0x80u) != 0 ? -value : value;
}

SAGE_HD constexpr float round_to_e4m3(float x) { return fp8_e4m3_to_float(fp8_e4m3_from_float(x)); }

// ---------------------------------------------------------------------------
// FP8 E5M2
// ---------------------------------------------------------------------------
// As cvt.rn.satfinite.e5m2x2.f32: RNE, |x| > 57344 (inf too) -> +-57344, NaN -> 0x7F.
SAGE_HD constexpr std::uint8_t fp8_e5m2_from_float(float x) {
  return static_cast<std::uint8_t>(detail::encode_satfinite(x, detail::kE5M2ManBits, detail::kE5M2Bias,
                                                            detail::kE5M2MaxCode, 0x80u, kE5M2NaN));
}

SAGE_HD constexpr float fp8_e5m2_to_float(std::uint8_t code) {
  const std::uint32_t sign = (code & 0x80u) != 0 ? detail::kF32SignMask : 0u;
  const std::uint32_t magnitude = code & 0x7Fu;
  if (magnitude > detail::kE5M2InfCode) return detail::float_of(kF32CanonicalNaN);
  if (magnitude == detail::kE5M2InfCode) return detail::float_of(sign | detail::kF32InfBits);
  const float value = detail::decode_magnitude(magnitude, detail::kE5M2ManBits, detail::kE5M2Bias);
  return detail::float_of(sign | detail::bits_of(value));
}

SAGE_HD constexpr float round_to_e5m2(float x) { return fp8_e5m2_to_float(fp8_e5m2_from_float(x)); }

// ---------------------------------------------------------------------------
// FP4 E2M1 (one value per nibble)
// ---------------------------------------------------------------------------
// As cvt.rn.satfinite.e2m1x2.f32: RNE, |x| > 6 (inf too) -> +-6, NaN -> +6
// (0x7). Returns a nibble 0..15.
SAGE_HD constexpr std::uint8_t fp4_e2m1_from_float(float x) {
  return static_cast<std::uint8_t>(detail::encode_satfinite(x, detail::kE2M1ManBits, detail::kE2M1Bias,
                                                            detail::kE2M1MaxCode, 0x8u, detail::kE2M1MaxCode));
}

// Only the low 4 bits of `nibble` are read.
SAGE_HD constexpr float fp4_e2m1_to_float(std::uint8_t nibble) {
  const float value = detail::decode_magnitude(nibble & 0x7u, detail::kE2M1ManBits, detail::kE2M1Bias);
  return (nibble & 0x8u) != 0 ? -value : value;
}

SAGE_HD constexpr float round_to_e2m1(float x) { return fp4_e2m1_to_float(fp4_e2m1_from_float(x)); }

// Two 4-bit elements per byte: the lower-indexed element lives in the low
// nibble. (PTX cvt ... e2m1x2.f32 d, a, b puts a in the HIGH nibble, so a
// kernel converts the pair (x[2i], x[2i+1]) as cvt d, x[2i+1], x[2i].)
SAGE_HD constexpr std::uint8_t pack_nibbles(std::uint8_t lo, std::uint8_t hi) {
  return static_cast<std::uint8_t>((lo & 0xFu) | ((hi & 0xFu) << 4));
}
SAGE_HD constexpr std::uint8_t lo_nibble(std::uint8_t byte) { return static_cast<std::uint8_t>(byte & 0xFu); }
SAGE_HD constexpr std::uint8_t hi_nibble(std::uint8_t byte) { return static_cast<std::uint8_t>(byte >> 4); }

// ---------------------------------------------------------------------------
// UE4M3: the unsigned E4M3 block scale of NVFP4
// ---------------------------------------------------------------------------
// Same as fp8_e4m3_from_float for x >= +0, so a kernel can use
// cvt.rn.satfinite.relu.e4m3x2.f32 (or the plain E4M3 cvt on a non-negative
// scale). Negative inputs, -0 and -inf included, give 0 (a scale is a
// magnitude, and .relu "clamps the result to 0 if negative"). NaN gives 0x7F,
// the UE4M3 NaN. Values above 448 (and +inf) give 448 (0x7E).
SAGE_HD constexpr std::uint8_t ue4m3_from_float(float x) {
  const std::uint32_t b = detail::bits_of(x);
  if (detail::is_nan_bits(b)) return kUE4M3NaN;
  if ((b & detail::kF32SignMask) != 0) return 0;
  return fp8_e4m3_from_float(x);
}

// Bit 7 is not part of the format and is ignored; 0x7F is NaN.
SAGE_HD constexpr float ue4m3_to_float(std::uint8_t code) {
  return fp8_e4m3_to_float(static_cast<std::uint8_t>(code & 0x7Fu));
}

// ---------------------------------------------------------------------------
// INT8 / INT4 symmetric quantization
// ---------------------------------------------------------------------------
template <int Bits>
constexpr int qmax() {
  static_assert(Bits == 8 || Bits == 4, "symmetric quantization is defined for INT8 and INT4");
  return (1 << (Bits - 1)) - 1;
}

// Rounds to the nearest integer, ties to even, saturating to the int32 range
// with NaN -> 0: exactly cvt.rni.s32.f32.
SAGE_HD constexpr std::int32_t round_half_even_to_int(float y) {
  const std::uint32_t b = detail::bits_of(y);
  if (detail::is_nan_bits(b)) return 0;
  const bool negative = (b & detail::kF32SignMask) != 0;
  const int exp_field = static_cast<int>((b & detail::kF32AbsMask) >> detail::kF32MantissaBits);
  // |y| >= 2^31: saturate (-2^31 itself is INT32_MIN, the same answer).
  if (exp_field >= detail::kF32Bias + 31) return negative ? INT32_MIN : INT32_MAX;
  // |y| < 0.5 rounds to zero (0.5 itself is handled below as a tie to 0).
  if (exp_field < detail::kF32Bias - 1) return 0;
  const std::uint32_t significand = (b & 0x7FFFFFu) | 0x800000u;
  // Bits of the significand below the units place.
  const int fraction_bits = detail::kF32MantissaBits - (exp_field - detail::kF32Bias);
  const std::uint32_t magnitude = fraction_bits > 0 ? detail::shift_right_rne(significand, fraction_bits)
                                                    : significand << -fraction_bits;
  return negative ? -static_cast<std::int32_t>(magnitude) : static_cast<std::int32_t>(magnitude);
}

// max(a, b), NaN when either is NaN (IEEE 754-2019 maximum, not maxNum):
// the maximum of a quantization group taken with it is NaN when the group
// holds a NaN, so the group's scale and every result that uses it are NaN,
// as float attention gives them; fmaxf / std::max would skip the NaN and
// leave the output finite and wrong. The same bits on host and device: the
// canonical NaN, and +0 over -0 (one FMNMX.NAN on sm_80+).
SAGE_HD inline float max_nan(float a, float b) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  float d;
  asm("max.NaN.f32 %0, %1, %2;" : "=f"(d) : "f"(a), "f"(b));
  return d;
#else
  if (detail::is_nan_bits(detail::bits_of(a)) || detail::is_nan_bits(detail::bits_of(b))) {
    return detail::float_of(kF32CanonicalNaN);
  }
  if (a == b) return (detail::bits_of(a) & detail::kF32SignMask) != 0 ? b : a;  // +0 over -0
  return a < b ? b : a;
#endif
}

// The scale of a group whose largest |x| is `amax`: amax / qmax, computed with
// an IEEE round-to-nearest division on host and device (also under
// --use_fast_math). Rules:
//   * amax NaN or +inf (the group holds a NaN or an infinity, max_nan) ->
//     NaN or +inf: the group has no meaningful codes, and a non-finite scale
//     makes every result that uses them NaN, as float attention gives,
//     instead of finite and wrong;
//   * amax zero or negative -> 1.0 (an all-zero group quantizes to zeros);
//   * amax / qmax below the smallest normal float (2^-126) -> 2^-126, so the
//     reciprocal (<= 2^126) does not overflow; values still map into range but
//     with fewer levels (a group with amax <= 2^-127 quantizes to all zeros).
// So 1 / scale is finite and nonzero for every finite amax. (A finite input
// can still give an infinite amax where smoothing overflows fp32, |x - mean|
// > FLT_MAX: float attention overflows there too.)
SAGE_HD inline float symmetric_scale(float amax, int qmax) {
  const std::uint32_t b = detail::bits_of(amax);
  if (detail::is_nan_bits(b)) return amax;
  if ((b & detail::kF32SignMask) != 0 || b == 0) return 1.0f;  // zero or negative
#if defined(__CUDA_ARCH__)
  const float scale = __fdiv_rn(amax, static_cast<float>(qmax));
#else
  const float scale = amax / static_cast<float>(qmax);
#endif
  constexpr float kSmallestNormal = detail::pow2(-126);
  return scale < kSmallestNormal ? kSmallestNormal : scale;
}

// 1 / scale, IEEE round-to-nearest on host and device: what a kernel
// multiplies by (quantize_symmetric takes this, not the scale).
SAGE_HD inline float reciprocal_rn(float scale) {
#if defined(__CUDA_ARCH__)
  return __frcp_rn(scale);
#else
  return 1.0f / scale;
#endif
}

// saturate(round_half_even(x * inv_scale), -qmax, qmax), the exact sequence
// mul.rn.f32 + cvt.rni.s32.f32 + min/max a kernel runs. NaN (x NaN, or 0 * inf)
// gives 0; +-inf and overflow give +-qmax. The product feeds only comparisons
// and bit operations, so a compiler cannot contract it into an FMA.
SAGE_HD constexpr int quantize_symmetric(float x, float inv_scale, int qmax) {
  const std::int32_t q = round_half_even_to_int(x * inv_scale);
  return q > qmax ? qmax : (q < -qmax ? -qmax : q);
}

// INT4: two two's-complement nibbles per byte, the lower-indexed element in the
// low nibble (the layout mma.sync .s4 operands use). Inputs must be in [-8, 7].
SAGE_HD constexpr std::uint8_t pack_int4x2(int lo, int hi) {
  return pack_nibbles(static_cast<std::uint8_t>(lo & 0xF), static_cast<std::uint8_t>(hi & 0xF));
}
// Sign-extends a nibble (only its low 4 bits are read) to an int in [-8, 7].
SAGE_HD constexpr int int4_from_nibble(std::uint8_t nibble) {
  const int v = nibble & 0xF;
  return v >= 8 ? v - 16 : v;
}
SAGE_HD constexpr int unpack_int4_lo(std::uint8_t byte) { return int4_from_nibble(lo_nibble(byte)); }
SAGE_HD constexpr int unpack_int4_hi(std::uint8_t byte) { return int4_from_nibble(hi_nibble(byte)); }

}  // namespace sage::num
