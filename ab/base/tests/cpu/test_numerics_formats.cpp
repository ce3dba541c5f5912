// Exhaustive tests of src/numerics/formats.h against slow references written
// here from the format definitions (double arithmetic, no bit tricks):
//   * every code of every format decodes to sign * significand * 2^exponent;
//   * every finite code survives encode(decode(code));
//   * every midpoint between adjacent values rounds to the even code, and the
//     floats just above/below it round up/down;
//   * an encoder reference (nearest representable value by search over the
//     format's whole value table, ties to the even code, PTX saturation rules)
//     agrees on every bf16 and fp16 bit pattern and on millions of random
//     float bit patterns;
//   * INT8/INT4 rounding, saturation, NaN and scale rules.
#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "numerics/formats.h"
#include "test_seed.h"

namespace {

using sage::num::bf16_to_float;
using sage::num::f16_to_float;
using sage::num::float_to_bf16;
using sage::num::float_to_f16;
using sage::num::fp4_e2m1_from_float;
using sage::num::fp4_e2m1_to_float;
using sage::num::fp8_e4m3_from_float;
using sage::num::fp8_e4m3_to_float;
using sage::num::fp8_e5m2_from_float;
using sage::num::fp8_e5m2_to_float;
using sage::num::ue4m3_from_float;
using sage::num::ue4m3_to_float;

float from_bits(std::uint32_t b) { return std::bit_cast<float>(b); }
std::uint32_t to_bits(float f) { return std::bit_cast<std::uint32_t>(f); }

std::string hex(std::uint32_t v) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "0x%08X", v);
  return buf;
}

// ---------------------------------------------------------------------------
// Reference model of a small float format, from its definition only.
// ---------------------------------------------------------------------------
enum class Overflow {
  satfinite,  // |x| > max (inf included) -> signed max: PTX .satfinite
  ieee_inf,   // round as if the exponent were unbounded; past max -> +-inf
};

enum class NanRule {
  canonical_7f,   // every NaN -> one code (given below)
  positive_max,   // E2M1: no NaN in the format, NaN -> +max (PTX)
};

struct FormatSpec {
  const char* name;
  int exp_bits;
  int man_bits;
  int bias;
  bool has_sign;
  // Which all-ones-exponent codes are special.
  bool ieee_specials;  // exponent all ones: mantissa 0 = inf, else NaN (fp16, bf16, E5M2)
  bool fn_nan;         // only S.1111.111 is NaN, no inf (E4M3, UE4M3)
  Overflow overflow;
  NanRule nan_rule;
  std::uint32_t nan_code;  // encoder output for NaN inputs (canonical_7f rule)

  int total_bits() const { return (has_sign ? 1 : 0) + exp_bits + man_bits; }
  std::uint32_t code_count() const { return 1u << total_bits(); }
  std::uint32_t sign_bit() const { return has_sign ? 1u << (exp_bits + man_bits) : 0u; }
  std::uint32_t magnitude_mask() const { return (1u << (exp_bits + man_bits)) - 1u; }
};

struct Decoded {
  enum Kind { finite, inf, nan } kind;
  double value;  // signed value for finite/inf
};

// sign * (E == 0 ? M/2^m * 2^(1-bias) : (1 + M/2^m) * 2^(E-bias)), by the book.
Decoded reference_decode(const FormatSpec& f, std::uint32_t code) {
  const bool negative = f.has_sign && (code & f.sign_bit()) != 0;
  const std::uint32_t e = (code >> f.man_bits) & ((1u << f.exp_bits) - 1u);
  const std::uint32_t m = code & ((1u << f.man_bits) - 1u);
  const std::uint32_t e_max = (1u << f.exp_bits) - 1u;
  const std::uint32_t m_max = (1u << f.man_bits) - 1u;
  const double sign = negative ? -1.0 : 1.0;
  if (f.ieee_specials && e == e_max) {
    if (m == 0) return {Decoded::inf, sign * std::numeric_limits<double>::infinity()};
    return {Decoded::nan, std::numeric_limits<double>::quiet_NaN()};
  }
  if (f.fn_nan && e == e_max && m == m_max) return {Decoded::nan, std::numeric_limits<double>::quiet_NaN()};
  const double fraction = static_cast<double>(m) / std::ldexp(1.0, f.man_bits);
  const double magnitude = e == 0 ? std::ldexp(fraction, 1 - f.bias)
                                  : std::ldexp(1.0 + fraction, static_cast<int>(e) - f.bias);
  return {Decoded::finite, sign * magnitude};
}

// The non-negative finite values of a format, ascending, with their codes.
struct ValueTable {
  std::vector<double> values;
  std::vector<std::uint32_t> codes;
  double max_finite() const { return values.back(); }
};

ValueTable build_table(const FormatSpec& f) {
  ValueTable t;
  const std::uint32_t positive_codes = f.magnitude_mask() + 1u;
  for (std::uint32_t c = 0; c < positive_codes; ++c) {
    const Decoded d = reference_decode(f, c);
    if (d.kind != Decoded::finite) continue;
    t.values.push_back(d.value);
    t.codes.push_back(c);
  }
  // Codes of a float format are monotonic in value; the search relies on it.
  for (std::size_t i = 1; i < t.values.size(); ++i) {
    if (!(t.values[i] > t.values[i - 1])) ADD_FAILURE() << f.name << ": value table not ascending at " << i;
  }
  return t;
}

// Nearest representable value by search over the whole value table; ties go
// to the even code; out of range per the format's overflow rule. Works in
// double, where every candidate, 2|x| and lo + hi are exact, so the
// comparison 2|x| vs lo + hi decides "nearer" without rounding error.
std::uint32_t reference_encode(const FormatSpec& f, const ValueTable& t, float x) {
  if (std::isnan(x)) {
    return f.nan_rule == NanRule::positive_max ? t.codes.back() : f.nan_code;
  }
  const std::uint32_t sign = std::signbit(x) ? f.sign_bit() : 0u;
  const double a = std::fabs(static_cast<double>(x));
  const double max = t.max_finite();
  std::uint32_t magnitude_code;
  const std::uint32_t max_code = t.codes.back();
  const std::uint32_t inf_code = max_code + 1u;  // IEEE formats: the code after max is inf
  if (a > max && f.overflow == Overflow::satfinite) {
    magnitude_code = max_code;
  } else if (a > max) {
    // IEEE: round as if the exponent were unbounded. The next value past max
    // would be 2^(emax+1), whose code (inf) has an even, zero mantissa, so the
    // tie between max and it goes to inf.
    const double beyond = std::ldexp(1.0, std::ilogb(max) + 1);
    magnitude_code = 2.0 * a >= max + beyond ? inf_code : max_code;
  } else {
    // First value >= a.
    const auto it = std::lower_bound(t.values.begin(), t.values.end(), a);
    const std::size_t hi = static_cast<std::size_t>(it - t.values.begin());
    if (t.values[hi] == a || hi == 0) {
      magnitude_code = t.codes[hi];
    } else {
      const std::size_t lo = hi - 1;
      const double twice = 2.0 * a;
      const double sum = t.values[lo] + t.values[hi];
      if (twice < sum) magnitude_code = t.codes[lo];
      else if (twice > sum) magnitude_code = t.codes[hi];
      else magnitude_code = (t.codes[lo] & 1u) == 0 ? t.codes[lo] : t.codes[hi];
    }
  }
  return sign | magnitude_code;
}

// ---------------------------------------------------------------------------
// The formats under test: the spec plus the header's functions.
// ---------------------------------------------------------------------------
struct FormatUnderTest {
  FormatSpec spec;
  std::function<std::uint32_t(float)> encode;
  std::function<float(std::uint32_t)> decode;
};

const FormatUnderTest& bf16_format() {
  static const FormatUnderTest f{
      {"bf16", 8, 7, 127, true, true, false, Overflow::ieee_inf, NanRule::canonical_7f, 0x7FFF},
      [](float x) { return std::uint32_t{float_to_bf16(x)}; },
      [](std::uint32_t c) { return bf16_to_float(static_cast<std::uint16_t>(c)); }};
  return f;
}
const FormatUnderTest& f16_format() {
  static const FormatUnderTest f{
      {"fp16", 5, 10, 15, true, true, false, Overflow::ieee_inf, NanRule::canonical_7f, 0x7FFF},
      [](float x) { return std::uint32_t{float_to_f16(x)}; },
      [](std::uint32_t c) { return f16_to_float(static_cast<std::uint16_t>(c)); }};
  return f;
}
const FormatUnderTest& e4m3_format() {
  static const FormatUnderTest f{
      {"E4M3", 4, 3, 7, true, false, true, Overflow::satfinite, NanRule::canonical_7f, 0x7F},
      [](float x) { return std::uint32_t{fp8_e4m3_from_float(x)}; },
      [](std::uint32_t c) { return fp8_e4m3_to_float(static_cast<std::uint8_t>(c)); }};
  return f;
}
const FormatUnderTest& e5m2_format() {
  static const FormatUnderTest f{
      {"E5M2", 5, 2, 15, true, true, false, Overflow::satfinite, NanRule::canonical_7f, 0x7F},
      [](float x) { return std::uint32_t{fp8_e5m2_from_float(x)}; },
      [](std::uint32_t c) { return fp8_e5m2_to_float(static_cast<std::uint8_t>(c)); }};
  return f;
}
const FormatUnderTest& e2m1_format() {
  static const FormatUnderTest f{
      {"E2M1", 2, 1, 1, true, false, false, Overflow::satfinite, NanRule::positive_max, 0},
      [](float x) { return std::uint32_t{fp4_e2m1_from_float(x)}; },
      [](std::uint32_t c) { return fp4_e2m1_to_float(static_cast<std::uint8_t>(c)); }};
  return f;
}
// UE4M3 is unsigned: the spec has no sign bit; negative inputs are handled by
// the relu rule tested separately (the reference is applied to |x| >= 0 only).
const FormatUnderTest& ue4m3_format() {
  static const FormatUnderTest f{
      {"UE4M3", 4, 3, 7, false, false, true, Overflow::satfinite, NanRule::canonical_7f, 0x7F},
      [](float x) { return std::uint32_t{ue4m3_from_float(x)}; },
      [](std::uint32_t c) { return ue4m3_to_float(static_cast<std::uint8_t>(c)); }};
  return f;
}

std::vector<const FormatUnderTest*> all_formats() {
  return {&bf16_format(), &f16_format(), &e4m3_format(), &e5m2_format(), &e2m1_format(), &ue4m3_format()};
}

// Reference encode with the UE4M3 relu rule on top (negative -> 0, NaN -> 0x7F).
std::uint32_t reference_encode_any(const FormatUnderTest& f, const ValueTable& t, float x) {
  if (!f.spec.has_sign && !std::isnan(x) && std::signbit(x)) return 0u;
  return reference_encode(f.spec, t, x);
}

// ---------------------------------------------------------------------------
// Decoding: every code.
// ---------------------------------------------------------------------------
TEST(NumericsFormats, EveryCodeDecodesToItsDefinedValue) {
  for (const FormatUnderTest* f : all_formats()) {
    SCOPED_TRACE(f->spec.name);
    int failures = 0;
    for (std::uint32_t code = 0; code < f->spec.code_count(); ++code) {
      const Decoded want = reference_decode(f->spec, code);
      const float got = f->decode(code);
      bool ok;
      if (want.kind == Decoded::nan) {
        // Decoded NaNs are the canonical float NaN, except bf16 whose decode is exact.
        ok = std::isnan(got) && (f == &bf16_format() ? to_bits(got) == code << 16
                                                     : to_bits(got) == sage::num::kF32CanonicalNaN);
      } else {
        ok = static_cast<double>(got) == want.value && std::signbit(got) == std::signbit(want.value);
      }
      if (!ok && ++failures <= 5) {
        ADD_FAILURE() << "code " << hex(code) << " decodes to " << got << " (" << hex(to_bits(got))
                      << "), want " << want.value;
      }
    }
    EXPECT_EQ(failures, 0);
  }
}

TEST(NumericsFormats, UE4M3IgnoresBit7WhenDecoding) {
  for (std::uint32_t code = 0; code < 0x80; ++code) {
    EXPECT_EQ(to_bits(ue4m3_to_float(static_cast<std::uint8_t>(code | 0x80))),
              to_bits(ue4m3_to_float(static_cast<std::uint8_t>(code))));
  }
}

TEST(NumericsFormats, E2M1DecodesToTheEightListedMagnitudes) {
  const float magnitudes[8] = {0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f};
  for (std::uint8_t n = 0; n < 8; ++n) {
    EXPECT_EQ(fp4_e2m1_to_float(n), magnitudes[n]);
    EXPECT_EQ(fp4_e2m1_to_float(static_cast<std::uint8_t>(n | 8)), -magnitudes[n]);
    // Only the low nibble is read.
    EXPECT_EQ(fp4_e2m1_to_float(static_cast<std::uint8_t>(n | 0xF0)), magnitudes[n]);
    EXPECT_EQ(fp4_e2m1_to_float(static_cast<std::uint8_t>(n | 0xF8)), -magnitudes[n]);
  }
}

// ---------------------------------------------------------------------------
// encode(decode(code)) == code.
// ---------------------------------------------------------------------------
TEST(NumericsFormats, EveryFiniteCodeRoundTrips) {
  for (const FormatUnderTest* f : all_formats()) {
    SCOPED_TRACE(f->spec.name);
    int failures = 0;
    for (std::uint32_t code = 0; code < f->spec.code_count(); ++code) {
      const Decoded d = reference_decode(f->spec, code);
      if (d.kind == Decoded::nan) continue;
      std::uint32_t want = code;
      // Infinity codes: IEEE formats keep them; E5M2 (.satfinite) saturates.
      if (d.kind == Decoded::inf && f->spec.overflow == Overflow::satfinite) want = code - 1u;
      const std::uint32_t got = f->encode(f->decode(code));
      if (got != want && ++failures <= 5) {
        ADD_FAILURE() << "code " << hex(code) << " re-encodes to " << hex(got) << ", want " << hex(want);
      }
    }
    EXPECT_EQ(failures, 0);
  }
}

// ---------------------------------------------------------------------------
// Ties and their neighbours.
// ---------------------------------------------------------------------------
TEST(NumericsFormats, MidpointsRoundToEvenAndNeighboursRoundToNearest) {
  for (const FormatUnderTest* f : all_formats()) {
    SCOPED_TRACE(f->spec.name);
    const ValueTable t = build_table(f->spec);
    int failures = 0;
    const auto expect_code = [&](float x, std::uint32_t want, const char* what) {
      const std::uint32_t got = f->encode(x);
      if (got != want && ++failures <= 8) {
        ADD_FAILURE() << what << ": x = " << x << " (" << hex(to_bits(x)) << ") encodes to " << hex(got)
                      << ", want " << hex(want);
      }
    };
    for (std::size_t i = 0; i + 1 < t.values.size(); ++i) {
      const double lo = t.values[i], hi = t.values[i + 1];
      const float mid = static_cast<float>((lo + hi) / 2);
      ASSERT_EQ(static_cast<double>(mid), (lo + hi) / 2) << "midpoint not a float";
      const std::uint32_t even = (t.codes[i] & 1u) == 0 ? t.codes[i] : t.codes[i + 1];
      const float above = std::nextafter(mid, std::numeric_limits<float>::infinity());
      const float below = std::nextafter(mid, 0.0f);
      for (const bool negative : {false, true}) {
        if (negative && !f->spec.has_sign) continue;
        const std::uint32_t s = negative ? f->spec.sign_bit() : 0u;
        const float sign = negative ? -1.0f : 1.0f;
        expect_code(sign * mid, s | even, "midpoint");
        expect_code(sign * above, s | t.codes[i + 1], "just above midpoint");
        expect_code(sign * below, s | t.codes[i], "just below midpoint");
      }
    }
    EXPECT_EQ(failures, 0);
  }
}

// ---------------------------------------------------------------------------
// Saturation, infinities, NaN, zeros, subnormals.
// ---------------------------------------------------------------------------
TEST(NumericsFormats, SatfiniteFormatsClampEverythingBeyondMaxIncludingInf) {
  const float inf = std::numeric_limits<float>::infinity();
  for (const FormatUnderTest* f : {&e4m3_format(), &e5m2_format(), &e2m1_format()}) {
    SCOPED_TRACE(f->spec.name);
    const ValueTable t = build_table(f->spec);
    const std::uint32_t max_code = t.codes.back();
    const float max = static_cast<float>(t.max_finite());
    for (const float x : {std::nextafter(max, inf), max * 1.0625f, max * 1.5f, max * 2.0f, 1e30f,
                          std::numeric_limits<float>::max(), inf}) {
      EXPECT_EQ(f->encode(x), max_code) << x;
      EXPECT_EQ(f->encode(-x), f->spec.sign_bit() | max_code) << -x;
    }
  }
  EXPECT_EQ(fp8_e4m3_from_float(448.0f), 0x7E);
  EXPECT_EQ(fp8_e4m3_from_float(464.0f), 0x7E);  // halfway to the (NaN) next code
  EXPECT_EQ(fp8_e5m2_from_float(61440.0f), 0x7B);
  EXPECT_EQ(fp4_e2m1_from_float(7.0f), 0x7);
  EXPECT_EQ(fp4_e2m1_from_float(-inf), 0xF);
  EXPECT_EQ(ue4m3_from_float(inf), 0x7E);
  EXPECT_EQ(ue4m3_from_float(1e9f), 0x7E);
}

TEST(NumericsFormats, IeeeFormatsOverflowToInfinity) {
  const float inf = std::numeric_limits<float>::infinity();
  // fp16: max 65504; 65520 is the tie with 2^16 and goes to inf (even).
  EXPECT_EQ(float_to_f16(65504.0f), 0x7BFF);
  EXPECT_EQ(float_to_f16(std::nextafter(65520.0f, 0.0f)), 0x7BFF);
  EXPECT_EQ(float_to_f16(65520.0f), 0x7C00);
  EXPECT_EQ(float_to_f16(-65520.0f), 0xFC00);
  EXPECT_EQ(float_to_f16(inf), 0x7C00);
  EXPECT_EQ(float_to_f16(-inf), 0xFC00);
  // bf16: the tie between the largest bf16 and 2^128 is 0x7F7F8000.
  EXPECT_EQ(float_to_bf16(from_bits(0x7F7F7FFF)), 0x7F7F);
  EXPECT_EQ(float_to_bf16(from_bits(0x7F7F8000)), 0x7F80);
  EXPECT_EQ(float_to_bf16(std::numeric_limits<float>::max()), 0x7F80);
  EXPECT_EQ(float_to_bf16(-inf), 0xFF80);
}

TEST(NumericsFormats, NanInputsFollowThePtxRules) {
  const std::uint32_t nans[] = {0x7FC00000, 0xFFC00000, 0x7F800001, 0xFF800001,
                                0x7FFFFFFF, 0xFFFFFFFF, 0x7FA00000, 0x80000000 | 0x7FA00000};
  for (const std::uint32_t b : nans) {
    const float x = from_bits(b);
    SCOPED_TRACE(hex(b));
    EXPECT_EQ(fp8_e4m3_from_float(x), 0x7F);  // sign and payload dropped
    EXPECT_EQ(fp8_e5m2_from_float(x), 0x7F);
    EXPECT_EQ(fp4_e2m1_from_float(x), 0x7);  // +6: "NaN results are converted to positive MAX_NORM"
    EXPECT_EQ(ue4m3_from_float(x), 0x7F);
    EXPECT_EQ(float_to_f16(x), 0x7FFF);
    EXPECT_EQ(float_to_bf16(x), 0x7FFF);
    EXPECT_TRUE(std::isnan(sage::num::round_to_bf16(x)));
    EXPECT_TRUE(std::isnan(sage::num::round_to_f16(x)));
    EXPECT_TRUE(std::isnan(sage::num::round_to_e4m3(x)));
    EXPECT_TRUE(std::isnan(sage::num::round_to_e5m2(x)));
    EXPECT_EQ(sage::num::round_to_e2m1(x), 6.0f);
  }
}

TEST(NumericsFormats, ZerosKeepTheirSign) {
  const float tiny = from_bits(1);  // smallest float subnormal
  for (const float z : {0.0f, tiny}) {
    EXPECT_EQ(fp8_e4m3_from_float(z), 0x00);
    EXPECT_EQ(fp8_e4m3_from_float(-z), 0x80);
    EXPECT_EQ(fp8_e5m2_from_float(-z), 0x80);
    EXPECT_EQ(fp4_e2m1_from_float(-z), 0x8);
    EXPECT_EQ(float_to_f16(-z), 0x8000);
    EXPECT_EQ(ue4m3_from_float(-z), 0x00);
  }
  EXPECT_EQ(float_to_bf16(-0.0f), 0x8000);
  EXPECT_EQ(float_to_bf16(-tiny), 0x8000);
  EXPECT_TRUE(std::signbit(fp8_e4m3_to_float(0x80)));
  EXPECT_TRUE(std::signbit(fp8_e5m2_to_float(0x80)));
  EXPECT_TRUE(std::signbit(fp4_e2m1_to_float(0x8)));
  EXPECT_TRUE(std::signbit(f16_to_float(0x8000)));
}

TEST(NumericsFormats, SubnormalsAreExact) {
  // Smallest subnormals and the largest subnormal of each format.
  EXPECT_EQ(fp8_e4m3_to_float(0x01), std::ldexp(1.0f, -9));
  EXPECT_EQ(fp8_e4m3_to_float(0x07), 7 * std::ldexp(1.0f, -9));
  EXPECT_EQ(fp8_e4m3_to_float(0x08), std::ldexp(1.0f, -6));
  EXPECT_EQ(fp8_e5m2_to_float(0x01), std::ldexp(1.0f, -16));
  EXPECT_EQ(fp8_e5m2_to_float(0x03), 3 * std::ldexp(1.0f, -16));
  EXPECT_EQ(f16_to_float(0x0001), std::ldexp(1.0f, -24));
  EXPECT_EQ(f16_to_float(0x03FF), 1023 * std::ldexp(1.0f, -24));
  EXPECT_EQ(fp4_e2m1_to_float(0x1), 0.5f);
  EXPECT_EQ(bf16_to_float(0x0001), std::ldexp(1.0f, -133));
  // Encoding: half the smallest subnormal ties to zero (even), just above rounds up.
  EXPECT_EQ(fp8_e4m3_from_float(std::ldexp(1.0f, -10)), 0x00);
  EXPECT_EQ(fp8_e4m3_from_float(std::nextafter(std::ldexp(1.0f, -10), 1.0f)), 0x01);
  EXPECT_EQ(fp8_e4m3_from_float(3 * std::ldexp(1.0f, -10)), 0x02);  // 1.5 ulp -> even 2
  EXPECT_EQ(fp8_e5m2_from_float(std::ldexp(1.0f, -17)), 0x00);
  EXPECT_EQ(float_to_f16(std::ldexp(1.0f, -25)), 0x0000);
  EXPECT_EQ(float_to_f16(std::nextafter(std::ldexp(1.0f, -25), 1.0f)), 0x0001);
  EXPECT_EQ(fp4_e2m1_from_float(0.25f), 0x0);
  EXPECT_EQ(fp4_e2m1_from_float(0.75f), 0x2);  // tie 0.5 / 1.0 -> even code 2 (1.0)
  // Largest subnormal rounding up into the smallest normal.
  EXPECT_EQ(fp8_e4m3_from_float(7.5f * std::ldexp(1.0f, -9)), 0x08);
  EXPECT_EQ(float_to_bf16(from_bits(0x007FFFFF)), 0x0080);
}

// ---------------------------------------------------------------------------
// Encoder vs the reference encoder on big input sets.
// ---------------------------------------------------------------------------
void check_encoders_on(const std::vector<float>& inputs, const char* set_name) {
  for (const FormatUnderTest* f : all_formats()) {
    SCOPED_TRACE(std::string(f->spec.name) + " on " + set_name);
    const ValueTable t = build_table(f->spec);
    std::size_t failures = 0;
    for (const float x : inputs) {
      const std::uint32_t want = reference_encode_any(*f, t, x);
      const std::uint32_t got = f->encode(x);
      if (got != want && ++failures <= 5) {
        ADD_FAILURE() << "x = " << x << " (" << hex(to_bits(x)) << ") encodes to " << hex(got) << ", want "
                      << hex(want);
      }
    }
    EXPECT_EQ(failures, 0u);
  }
}

TEST(NumericsFormats, EncodersMatchReferenceOnEveryBf16AndF16Pattern) {
  std::vector<float> inputs;
  inputs.reserve(2 * 65536);
  for (std::uint32_t p = 0; p < 65536; ++p) {
    inputs.push_back(from_bits(p << 16));                              // every bf16 pattern
    inputs.push_back(f16_to_float(static_cast<std::uint16_t>(p)));     // every fp16 pattern
  }
  check_encoders_on(inputs, "bf16/fp16 patterns");
}

TEST(NumericsFormats, EncodersMatchReferenceOnRandomFloatBits) {
  // Fresh draws on every run; half uniform over all bit patterns, half
  // concentrated on exponents near the narrow formats' ranges (where the
  // interesting rounding happens).
  const std::uint64_t seed = sage::test::fresh_seed();
  SCOPED_TRACE(sage::test::seed_note(seed));
  std::mt19937_64 rng(seed);
  constexpr std::size_t kCount = 3'000'000;
  std::vector<float> inputs;
  inputs.reserve(kCount);
  for (std::size_t i = 0; i < kCount; ++i) {
    const std::uint64_t r = rng();
    std::uint32_t bits = static_cast<std::uint32_t>(r);
    if (i % 2 == 1) {
      // exponent field in [127 - 30, 127 + 20): 2^-30 .. 2^19
      const std::uint32_t exp_field = 97u + static_cast<std::uint32_t>((r >> 32) % 50u);
      bits = (bits & 0x807FFFFFu) | (exp_field << 23);
    }
    inputs.push_back(from_bits(bits));
  }
  check_encoders_on(inputs, "random float bits");
}

// ---------------------------------------------------------------------------
// Nibble packing.
// ---------------------------------------------------------------------------
TEST(NumericsFormats, NibblePackingPutsLowerIndexInLowNibble) {
  for (std::uint8_t lo = 0; lo < 16; ++lo) {
    for (std::uint8_t hi = 0; hi < 16; ++hi) {
      const std::uint8_t byte = sage::num::pack_nibbles(lo, hi);
      EXPECT_EQ(byte, lo | (hi << 4));
      EXPECT_EQ(sage::num::lo_nibble(byte), lo);
      EXPECT_EQ(sage::num::hi_nibble(byte), hi);
    }
  }
  // Bits above the nibble are dropped.
  EXPECT_EQ(sage::num::pack_nibbles(0xF3, 0xA5), 0x53);
}

// ---------------------------------------------------------------------------
// INT8 / INT4.
// ---------------------------------------------------------------------------
using sage::num::quantize_symmetric;
using sage::num::round_half_even_to_int;
using sage::num::symmetric_scale;

static_assert(sage::num::qmax<8>() == 127);
static_assert(sage::num::qmax<4>() == 7);

int clamp_int(long long v, int q) { return static_cast<int>(std::clamp<long long>(v, -q, q)); }

TEST(NumericsInt, EveryIntegerInAndBeyondRangeQuantizesToItselfSaturated) {
  for (const int q : {sage::num::qmax<8>(), sage::num::qmax<4>()}) {
    for (int k = -3 * q; k <= 3 * q; ++k) {
      EXPECT_EQ(quantize_symmetric(static_cast<float>(k), 1.0f, q), clamp_int(k, q)) << k;
    }
  }
}

TEST(NumericsInt, HalfIntegersRoundToEvenAndNeighboursToNearest) {
  for (const int q : {sage::num::qmax<8>(), sage::num::qmax<4>()}) {
    for (int k = -3 * q; k <= 3 * q; ++k) {
      const float half = static_cast<float>(k) + 0.5f;  // exact
      const long long even = (k % 2 == 0) ? k : k + 1;
      EXPECT_EQ(quantize_symmetric(half, 1.0f, q), clamp_int(even, q)) << half;
      EXPECT_EQ(quantize_symmetric(std::nextafter(half, 1e9f), 1.0f, q), clamp_int(k + 1, q)) << half;
      EXPECT_EQ(quantize_symmetric(std::nextafter(half, -1e9f), 1.0f, q), clamp_int(k, q)) << half;
    }
  }
  // Scaled ties: 2.5 * 2 = 5 exactly; 1.25 * 2 = 2.5 -> 2.
  EXPECT_EQ(quantize_symmetric(1.25f, 2.0f, 127), 2);
  EXPECT_EQ(quantize_symmetric(-1.25f, 2.0f, 127), -2);
  EXPECT_EQ(quantize_symmetric(1.75f, 2.0f, 127), 4);
}

TEST(NumericsInt, SaturationInfinityNanAndZero) {
  const float inf = std::numeric_limits<float>::infinity();
  const float nan = std::numeric_limits<float>::quiet_NaN();
  for (const int q : {127, 7}) {
    EXPECT_EQ(quantize_symmetric(inf, 1.0f, q), q);
    EXPECT_EQ(quantize_symmetric(-inf, 1.0f, q), -q);
    EXPECT_EQ(quantize_symmetric(1e30f, 1e30f, q), q);  // product overflows to inf
    EXPECT_EQ(quantize_symmetric(-3e38f, 1.0f, q), -q);
    EXPECT_EQ(quantize_symmetric(nan, 1.0f, q), 0);
    EXPECT_EQ(quantize_symmetric(-nan, 1.0f, q), 0);
    EXPECT_EQ(quantize_symmetric(0.0f, inf, q), 0);  // 0 * inf = NaN -> 0
    EXPECT_EQ(quantize_symmetric(-0.0f, 1.0f, q), 0);
    EXPECT_EQ(quantize_symmetric(0.5f, 1.0f, q), 0);
    EXPECT_EQ(quantize_symmetric(-0.5f, 1.0f, q), 0);
    EXPECT_EQ(quantize_symmetric(from_bits(1), 1.0f, q), 0);
  }
}

TEST(NumericsInt, RoundHalfEvenToIntMatchesCvtRniSemantics) {
  // The cvt.rni.s32.f32 rules: RNE, saturate to int32, NaN -> 0.
  EXPECT_EQ(round_half_even_to_int(2147483520.0f), 2147483520);  // largest float < 2^31
  EXPECT_EQ(round_half_even_to_int(2147483648.0f), INT32_MAX);
  EXPECT_EQ(round_half_even_to_int(-2147483648.0f), INT32_MIN);
  EXPECT_EQ(round_half_even_to_int(-4e9f), INT32_MIN);
  EXPECT_EQ(round_half_even_to_int(std::numeric_limits<float>::infinity()), INT32_MAX);
  EXPECT_EQ(round_half_even_to_int(-std::numeric_limits<float>::infinity()), INT32_MIN);
  EXPECT_EQ(round_half_even_to_int(std::numeric_limits<float>::quiet_NaN()), 0);
  EXPECT_EQ(round_half_even_to_int(8388607.5f), 8388608);  // tie at 2^23 - 0.5 -> even
  EXPECT_EQ(round_half_even_to_int(8388609.0f), 8388609);
  EXPECT_EQ(round_half_even_to_int(-0.5f), 0);
  EXPECT_EQ(round_half_even_to_int(-1.5f), -2);
  // Against std::nearbyint (default rounding mode is to-nearest-even) on a
  // strided sweep over all float bit patterns of magnitude below 2^31.
  int failures = 0;
  for (std::uint64_t b = 0; b <= 0xFFFFFFFFull; b += 997) {
    const float y = from_bits(static_cast<std::uint32_t>(b));
    if (std::isnan(y) || std::fabs(y) >= 2147483648.0f) continue;
    const auto want = static_cast<std::int32_t>(std::nearbyint(y));
    if (round_half_even_to_int(y) != want && ++failures <= 5) {
      ADD_FAILURE() << y << " (" << hex(static_cast<std::uint32_t>(b)) << ") -> " << round_half_even_to_int(y)
                    << ", want " << want;
    }
  }
  EXPECT_EQ(failures, 0);
}

TEST(NumericsInt, ScaleRules) {
  const float inf = std::numeric_limits<float>::infinity();
  const float nan = std::numeric_limits<float>::quiet_NaN();
  for (const int q : {127, 7}) {
    // Zero or negative amax -> scale 1 (1/scale finite, zeros stay zeros).
    for (const float amax : {0.0f, -0.0f, -1.0f, -inf}) {
      EXPECT_EQ(symmetric_scale(amax, q), 1.0f) << amax;
    }
    // A group holding a NaN or an infinity keeps it in its scale, so that the
    // results that use the group are NaN rather than finite and wrong.
    EXPECT_TRUE(std::isnan(symmetric_scale(nan, q)));
    EXPECT_EQ(symmetric_scale(inf, q), inf);
    EXPECT_TRUE(std::isnan(sage::num::max_nan(1.0f, nan)));
    EXPECT_TRUE(std::isnan(sage::num::max_nan(nan, 1.0f)));
    EXPECT_EQ(sage::num::max_nan(1.0f, 2.0f), 2.0f);
    EXPECT_EQ(sage::num::max_nan(2.0f, 1.0f), 2.0f);
    EXPECT_EQ(symmetric_scale(254.0f, q), 254.0f / static_cast<float>(q));
    EXPECT_EQ(symmetric_scale(std::numeric_limits<float>::max(), q),
              std::numeric_limits<float>::max() / static_cast<float>(q));
    // Tiny amax: the scale is floored at the smallest normal float, so the
    // reciprocal (<= 2^126) stays finite and the group stays in range; it
    // loses resolution (amax below 2^-127 quantizes to 0), which is harmless
    // for data that small.
    const float smallest_normal = std::numeric_limits<float>::min();
    for (const float amax : {from_bits(1), from_bits(0x00400000), smallest_normal, 100 * smallest_normal}) {
      const float s = symmetric_scale(amax, q);
      EXPECT_EQ(s, std::max(amax / static_cast<float>(q), smallest_normal)) << amax;
      const float inv = sage::num::reciprocal_rn(s);
      EXPECT_TRUE(std::isfinite(inv));
      const int quantized = quantize_symmetric(amax, inv, q);
      EXPECT_LE(quantized, q) << amax;
      if (amax >= smallest_normal) {
        EXPECT_GE(quantized, 1) << amax;
      }
      if (amax <= std::ldexp(1.0f, -127)) {
        EXPECT_EQ(quantized, 0) << amax;
      }
    }
  }
}

TEST(NumericsInt, GroupMaximumQuantizesToQmax) {
  // For any amax, the element equal to +-amax must land on +-qmax: the three
  // roundings (scale, reciprocal, product) move qmax by a few ulps only.
  std::mt19937 rng(1234);
  std::uniform_int_distribution<std::uint32_t> finite_positive(0x00000001u, 0x7F7FFFFFu);
  for (const int q : {127, 7}) {
    for (int i = 0; i < 200000; ++i) {
      const float amax = from_bits(finite_positive(rng));
      if (amax / static_cast<float>(q) < std::numeric_limits<float>::min()) continue;  // floored scale
      const float inv = sage::num::reciprocal_rn(symmetric_scale(amax, q));
      ASSERT_EQ(quantize_symmetric(amax, inv, q), q) << amax;
      ASSERT_EQ(quantize_symmetric(-amax, inv, q), -q) << amax;
    }
  }
}

TEST(NumericsInt, Int4PackingRoundTripsEveryPair) {
  for (int lo = -8; lo <= 7; ++lo) {
    for (int hi = -8; hi <= 7; ++hi) {
      const std::uint8_t byte = sage::num::pack_int4x2(lo, hi);
      EXPECT_EQ(sage::num::unpack_int4_lo(byte), lo);
      EXPECT_EQ(sage::num::unpack_int4_hi(byte), hi);
      EXPECT_EQ(byte & 0xF, lo & 0xF);  // two's complement nibble, low = lower index
    }
  }
  EXPECT_EQ(sage::num::pack_int4x2(-1, 7), 0x7F);
  EXPECT_EQ(sage::num::pack_int4x2(-7, -8), 0x89);
  EXPECT_EQ(sage::num::int4_from_nibble(0x8), -8);
  EXPECT_EQ(sage::num::int4_from_nibble(0xF7), 7);  // only the low 4 bits are read
}

// The header is usable in constant expressions.
static_assert(sage::num::fp8_e4m3_from_float(448.0f) == 0x7E);
static_assert(sage::num::fp8_e4m3_to_float(0x7E) == 448.0f);
static_assert(sage::num::fp8_e5m2_from_float(-57344.0f) == 0xFB);
static_assert(sage::num::fp4_e2m1_from_float(2.5f) == 0x4);  // tie 2 / 3 -> even (2)
static_assert(sage::num::float_to_bf16(1.0f) == 0x3F80);
static_assert(sage::num::float_to_f16(1.0f) == 0x3C00);
static_assert(sage::num::quantize_symmetric(2.5f, 1.0f, 127) == 2);

}  // namespace
