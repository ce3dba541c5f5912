// Online softmax of the sm90 consumer warpgroups, in base 2.
//
// Each thread holds two query rows (lane/4 and lane/4 + 8 of its warp's 16)
// and, for a 128-key tile, 32 int32 scores per row: in every 8-column slice
// j, columns 8j + 2*(lane%4) + {0, 1} (wgmma accumulator layout). The four
// threads of a quad together hold whole rows, so row reductions are two
// shuffles.
//
// Scores are s = acc * qk_scale, where qk_scale = q_scale * k_scale already
// carries sm_scale * log2(e). P~ = exp2(s - m) is produced pre-multiplied by
// 448 (exp2(s - (m - log2 448))) so it fills the E4M3 range; the row sum l
// is kept in the same x448 units, so O / l needs no further P scale.
// With kScaleP448 = false (16-bit P, used by the mma.sync family's FP16 PV
// kernels) P~ is produced unscaled and exponentiate() hands it out in fp32
// for the caller to pack.
//
// Row sums: by default l sums the fp32 P~ (per thread, then across the
// quad in finish()). With kRowSumsFromPv the caller's P V^T MMA makes them
// instead (the sm90 kernels at D = 128: 8 columns of ones next to V^T's
// channels), so l is the sum of the FP8 P that O itself accumulates, whole
// rows in every thread, and the softmax only rescales it (fold_row_sums).
// That takes the sums' additions off the softmax, which is issue-bound (~4%
// of the sm90 kernel at D = 128, 4K keys: docs/perf-notes.md, session 26).
#pragma once

#include <climits>
#include <cstdint>

#include "cuda/sm90/ptx_sm90.cuh"

namespace sage::sm90 {

inline constexpr float kLog2P8Scale = 8.807354922057604f;  // log2(448)

// Sets masked scores to INT_MIN: keys at or past nk, and (causal) keys after
// row + causal_shift. `col0` is this thread's first column in the tile.
template <int NAcc>
__device__ __forceinline__ void mask_scores(int32_t (&s)[NAcc], const int (&rows)[2], int col0, int nk, bool causal,
                                            int causal_shift) {
#pragma unroll
  for (int i = 0; i < NAcc; ++i) {
    const int col = col0 + (i / 4) * 8 + (i % 2);
    const int row = rows[(i / 2) % 2];
    const bool hidden = col >= nk || (causal && static_cast<long long>(col) > static_cast<long long>(row) + causal_shift);
    if (hidden) s[i] = INT_MIN;
  }
}

__device__ __forceinline__ float quad_max(float v) {
  v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
  return fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
}
__device__ __forceinline__ float quad_sum(float v) {
  v += __shfl_xor_sync(0xffffffffu, v, 1);
  return v + __shfl_xor_sync(0xffffffffu, v, 2);
}

// kScoresDieEarly: see exponentiate(); for consumers short of registers.
template <int NAcc, bool kScaleP448 = true, bool kScoresDieEarly = false, bool kRowSumsFromPv = false>
struct OnlineSoftmax {
  static_assert(NAcc % 16 == 0, "whole 32-key chunks");
  static_assert(!kRowSumsFromPv || kScaleP448, "the MMA sums the FP8 P (x448)");
  static constexpr float kLog2PScale = kScaleP448 ? kLog2P8Scale : 0.f;
  float m[2] = {-INFINITY, -INFINITY};  // running row max (base-2 units)
  float l[2] = {0.f, 0.f};              // the row sum, or this thread's share of it (x448 when kScaleP448)

  // Consumes one tile of scores: updates m and l, returns the factor alpha
  // by which O must be rescaled, and the FP8 A-operand fragments of P for
  // the P V^T wgmma (k = 32 keys per fragment). Scores are either integer
  // (s * qk_scale) or, with smooth_q, already float (smoothq::scores_with_offsets).
  template <class... Scores>
  __device__ __forceinline__ void step(uint32_t (&frag)[NAcc / 16][4], float (&alpha)[2], const Scores&... scores) {
    static_assert(kScaleP448, "FP8 fragments need the x448 scale");
    float pexp[NAcc];
    exponentiate(scores..., pexp, alpha);

    // Fragment of chunk c (keys 32c..32c+31): register 0 = row 0, slices
    // 4c and 4c+1; register 1 = row 1, same slices; registers 2, 3 = slices
    // 4c+2, 4c+3. The pre-pass permutes V^T's keys to match this order.
#pragma unroll
    for (int c = 0; c < NAcc / 16; ++c) {
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const int a = 4 * (4 * c + 2 * half);  // slice 4c + 2*half
        const int b = a + 4;                   // the next slice
        frag[c][2 * half + 0] = pack_e4m3x4(pexp[a + 0], pexp[a + 1], pexp[b + 0], pexp[b + 1]);
        frag[c][2 * half + 1] = pack_e4m3x4(pexp[a + 2], pexp[a + 3], pexp[b + 2], pexp[b + 3]);
      }
    }
  }

  // The part of step() before the packing, integer scores: updates m and l,
  // returns alpha and P~ (x448 when kScaleP448) in the accumulator layout of s.
  __device__ __forceinline__ void exponentiate(const int32_t (&s)[NAcc], float qk_scale, bool masked,
                                               float (&pexp)[NAcc], float (&alpha)[2]) {
    // qk_scale > 0, so this thread's largest integer gives its largest score.
    // The threads of a quad can hold different K scales (per-thread
    // granularity), so the quad reduces scores, not integers.
    // (Two independent maxima per row, four partial sums below: the softmax
    // is latency-bound, so the length of its dependency chains, more than
    // its instruction count, sets its time: +7%, docs/perf-notes.md.)
    int imax[2][2] = {{INT_MIN, INT_MIN}, {INT_MIN, INT_MIN}};
#pragma unroll
    for (int i = 0; i < NAcc; ++i) imax[(i / 2) % 2][(i / 4) % 2] = max(imax[(i / 2) % 2][(i / 4) % 2], s[i]);
    float shift[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int row_max = max(imax[r][0], imax[r][1]);
      const float mine = row_max == INT_MIN ? -INFINITY : static_cast<float>(row_max) * qk_scale;
      update_row(r, mine, alpha, shift);
    }

    // A masked score (INT_MIN) must give exactly 0. Its exponent
    // INT_MIN * qk_scale - shift is far below exp2's flush-to-zero point
    // unless qk_scale is tiny (inputs near zero), so the per-score check
    // (two instructions per score, a fifth of the loop when it ran on every
    // tile) runs only on the tiles where it can matter. By default it runs
    // after the exponentials, which keeps S live next to P through them.
    // With kScoresDieEarly those rare tiles take a second copy of the loop
    // that selects the exponent instead, so that each score dies as its
    // exponential is made: the 160-register consumers at D = 64 spilled 200
    // bytes otherwise, the serial ones at D = 128 ~600. (At D = 128 with 240
    // registers, where S fits, the second copy measured 5-7% slower, and a bit mask of the hidden scores, another way to let S
    // die, 8-14%, though neither adds instructions to an unmasked tile:
    // docs/perf-notes.md.)
    if constexpr (kScoresDieEarly) {
      if (masked && !masked_scores_flush_to_zero(qk_scale, shift)) {
#pragma unroll
        for (int i = 0; i < NAcc; ++i) {
          const float x = fmaf(static_cast<float>(s[i]), qk_scale, -shift[(i / 2) % 2]);
          pexp[i] = fast_exp2(s[i] == INT_MIN ? -INFINITY : x);
        }
      } else {
        exponentials(s, qk_scale, shift, pexp);
      }
    } else {
      exponentials(s, qk_scale, shift, pexp);
      if (masked && !masked_scores_flush_to_zero(qk_scale, shift)) {
#pragma unroll
        for (int i = 0; i < NAcc; ++i) {
          if (s[i] == INT_MIN) pexp[i] = 0.f;
        }
      }
    }
    if constexpr (!kRowSumsFromPv) add_row_sums(pexp);
  }

  // P~ = exp2(s * qk_scale - shift) of every score.
  static __device__ __forceinline__ void exponentials(const int32_t (&s)[NAcc], float qk_scale, const float (&shift)[2],
                                                      float (&pexp)[NAcc]) {
#pragma unroll
    for (int i = 0; i < NAcc; ++i) {
      // (A plain conversion: I2FP is one instruction; the magic-number
      // add and subtract measured 2-4% slower, docs/perf-notes.md.)
      pexp[i] = fast_exp2(fmaf(static_cast<float>(s[i]), qk_scale, -shift[(i / 2) % 2]));
    }
  }

  // l += this tile's P~, row by row, in four independent partial sums per row.
  __device__ __forceinline__ void add_row_sums(const float (&pexp)[NAcc]) {
    float part[2][4] = {};
#pragma unroll
    for (int i = 0; i < NAcc; ++i) part[(i / 2) % 2][(i / 4) % 4] += pexp[i];
#pragma unroll
    for (int r = 0; r < 2; ++r) l[r] += (part[r][0] + part[r][1]) + (part[r][2] + part[r][3]);
  }

  // True when exp2(INT_MIN * qk_scale - shift[r]) is 0 for both rows:
  // ex2.approx.ftz returns 0 below -126; -128 leaves a margin.
  static __device__ __forceinline__ bool masked_scores_flush_to_zero(float qk_scale, const float (&shift)[2]) {
    return fmaf(static_cast<float>(INT_MIN), qk_scale, -fminf(shift[0], shift[1])) < -128.f;
  }

  // The same for float scores (masked ones -inf, whose exp2 is 0).
  __device__ __forceinline__ void exponentiate(const float (&sf)[NAcc], float (&pexp)[NAcc], float (&alpha)[2]) {
    float mine[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int i = 0; i < NAcc; ++i) mine[(i / 2) % 2] = fmaxf(mine[(i / 2) % 2], sf[i]);
    float shift[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) update_row(r, mine[r], alpha, shift);
#pragma unroll
    for (int i = 0; i < NAcc; ++i) pexp[i] = fast_exp2(sf[i] - shift[(i / 2) % 2]);
    if constexpr (!kRowSumsFromPv) add_row_sums(pexp);
  }

  // Row r's new running max from this thread's largest score of the tile:
  // the rescale factor alpha of O and l, and the shift that exp2 subtracts.
  __device__ __forceinline__ void update_row(int r, float mine, float (&alpha)[2], float (&shift)[2]) {
    const float m_new = fmaxf(m[r], quad_max(mine));
    // A row that has seen no key yet keeps O = 0 and l = 0; any alpha works.
    alpha[r] = m_new == -INFINITY ? 1.f : fast_exp2(m[r] - m_new);
    shift[r] = (m_new == -INFINITY ? 0.f : m_new) - kLog2PScale;
    m[r] = m_new;
    if constexpr (!kRowSumsFromPv) l[r] *= alpha[r];
  }

  // kRowSumsFromPv: once a tile's P V^T is complete, l = l * alpha + that
  // tile's row sums (its ones columns), with the alpha of the same tile.
  __device__ __forceinline__ void fold_row_sums(const float (&alpha)[2], float sum0, float sum1) {
    static_assert(kRowSumsFromPv, "the softmax sums P itself");
    l[0] = l[0] * alpha[0] + sum0;
    l[1] = l[1] * alpha[1] + sum1;
  }

  // Completes the row sums across the quad.
  __device__ __forceinline__ void finish() {
    if constexpr (!kRowSumsFromPv) {
      l[0] = quad_sum(l[0]);
      l[1] = quad_sum(l[1]);
    }
  }

  // Natural-log LSE of the row (before any smoothing correction); -inf for
  // a row that saw no key, NaN for one whose scores were NaN.
  __device__ __forceinline__ float lse(int r) const {
    if (l[r] == 0.f) return -INFINITY;
    return (m[r] + __log2f(l[r]) - kLog2PScale) * 0.6931471805599453f;
  }
};

}  // namespace sage::sm90
