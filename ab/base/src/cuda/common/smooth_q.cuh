// Device side of smooth_q, shared by both kernel families.
//
// The pre-pass quantizes Q' = Q - mean_q, mean_q being the channel mean of
// the query tile (128 rows = cta_q of both geometries; prepass.h). The
// scores then miss mean_q . k_j, which the kernel adds back per key from
// the quantized K it already holds in shared memory (the emulation's
// contract, src/reference/emulation_sage2.cpp):
//   delta2[j] = ((sum_d mean_q[d] * kcode[j][d]) * k_scale[j]) * scale_log2
//   s2[r][j]  = (float)acc[r][j] * (q_scale * k_scale) + delta2[j]
// The dot runs over channels in ascending order in pieces whose partial
// sums are then added (the emulation adds sequentially: a few ulps apart).
// One delta2 per key and query tile: O(tile) shared memory, nothing in
// global memory beyond mean_q itself.
#pragma once

#include <climits>
#include <cstdint>

namespace sage::smoothq {

// Adds the dot of 4 bytes of codes with their channels' mean_q (from
// shared memory): INT8, one code per byte; INT4, two's-complement nibbles
// with the lower channel in the low nibble (the pre-pass's packing).
// INT8 codes are converted without I2F, whose pipe (16 per clock and SM on
// Hopper) the softmax's own score conversions already load: the byte, offset
// to unsigned, becomes the low mantissa byte of 2^23 (one PRMT), and one
// exact FADD removes 2^23 + 128.
template <int Bits>
__device__ __forceinline__ float dot_word(uint32_t word, const float* mq, float acc) {
  static_assert(Bits == 8 || Bits == 4, "INT8 or INT4 codes");
  const uint32_t biased = word ^ 0x80808080u;  // code + 128 in every byte
#pragma unroll
  for (int b = 0; b < 4; ++b) {
    if constexpr (Bits == 8) {
      const float code = __int_as_float(__byte_perm(biased, 0x4B000000u, 0x7540u | b)) - 8388736.0f;
      acc = fmaf(mq[b], code, acc);
    } else {
      const int byte = static_cast<int8_t>(word >> (8 * b));
      const int lo = static_cast<int8_t>(byte << 4) >> 4;  // sign-extends the low nibble
      const int hi = byte >> 4;                           // arithmetic shift: the high nibble
      acc = fmaf(mq[2 * b], static_cast<float>(lo), acc);
      acc = fmaf(mq[2 * b + 1], static_cast<float>(hi), acc);
    }
  }
  return acc;
}

// Dot of 16 bytes of codes (one 16-byte shared load) with their channels' mean_q.
template <int Bits>
__device__ __forceinline__ float dot_chunk16(const uint4& chunk, const float* mq, float acc) {
  constexpr int kPerWord = 32 / Bits;  // channels per 32-bit word
  acc = dot_word<Bits>(chunk.x, mq, acc);
  acc = dot_word<Bits>(chunk.y, mq + kPerWord, acc);
  acc = dot_word<Bits>(chunk.z, mq + 2 * kPerWord, acc);
  return dot_word<Bits>(chunk.w, mq + 3 * kPerWord, acc);
}

// delta2 of one key from its code dot and K scale (0 past the last key,
// whose scores are masked anyway and whose scale group may not exist).
__device__ __forceinline__ float key_offset(float dot, const float* k_scales, int k_group, bool exists,
                                            float scale_log2) {
  return exists ? __fmul_rn(__fmul_rn(dot, k_scales[k_group]), scale_log2) : 0.f;
}

// Float scores of one tile with the per-key offsets (base 2): in the wgmma /
// mma.sync accumulator layout, element i of this thread is column
// col0 + 8 * (i / 4) + (i % 2); masked scores (INT_MIN) become -inf.
// Multiply, then add, each rounded, as the emulation does.
template <int NAcc>
__device__ __forceinline__ void scores_with_offsets(const int32_t (&s)[NAcc], float qk_scale, const float* delta,
                                                    int col0, float (&sf)[NAcc]) {
#pragma unroll
  for (int i = 0; i < NAcc; ++i) {
    const float d = delta[col0 + 8 * (i / 4) + (i % 2)];
    sf[i] = s[i] == INT_MIN ? -INFINITY : __fadd_rn(__fmul_rn(static_cast<float>(s[i]), qk_scale), d);
  }
}

}  // namespace sage::smoothq
