// Tile geometry that defines the quantization groups of Q and K.
//
// The kernels apply Q and K scales in the epilogue of the QK^T MMA
// (S = int32 acc * q_scale[row] * k_scale[col]), so the groups that share a
// scale are set by which rows/columns of the accumulator one CTA, one warp or
// one thread holds. The CPU emulation uses this same struct, which is what
// makes kernel-vs-emulation comparisons tight.
//
// Accumulator fragment of mma.sync m16n8 and of wgmma m64nN (per warp, 16
// rows): lane l holds rows (l / 4) and (l / 4) + 8 of the warp's 16 rows and,
// in every 8-column slice, columns 2 * (l % 4) and 2 * (l % 4) + 1.
//
//                 Q scale covers                    K scale covers
// per_block       cta_q rows                        cta_k keys
// per_warp        warp_q rows                       cta_k keys
// per_thread      rows r with the same (r % 8)      keys c with the same
//                 inside one warp_q slice            (c % 8) / 2 inside one
//                 (rows {g, g+8} when warp_q = 16)   cta_k tile (4 groups)
#pragma once

#include <cstdint>

#include "sage/options.h"

#if defined(__CUDACC__)
#define SAGE_HD __host__ __device__
#else
#define SAGE_HD
#endif

namespace sage {

struct TileGeometry {
  int cta_q = 128;  // query rows per Q block (its scale groups; the sm90 CTA tile can be 192)
  int cta_k = 128;  // keys per K/V tile
  int warp_q = 16;  // query rows one warp's MMA fragment covers
  // Not geometry, but as much the kernel family's: past which head dim the
  // softmax's row sum l adds up P as the PV MMA reads it (the sm90 kernels at
  // D > 64 make l with that MMA, from FP8 P) rather than the fp32 P~ (the
  // others; the default: never).
  int l_sums_pv_operand_past_dim = 1 << 30;

  SAGE_HD constexpr bool l_sums_pv_operand(std::int64_t head_dim) const {
    return head_dim > l_sums_pv_operand_past_dim;
  }

  // Number of Q scales for nq rows, and the scale index of row `r`.
  SAGE_HD constexpr std::int64_t q_groups(std::int64_t nq, Granularity g) const {
    const std::int64_t tiles = (nq + cta_q - 1) / cta_q;
    switch (g) {
      case Granularity::per_block: return tiles;
      case Granularity::per_warp: return tiles * (cta_q / warp_q);
      case Granularity::per_thread: return tiles * (cta_q / warp_q) * 8;
    }
    return 0;
  }
  SAGE_HD constexpr std::int64_t q_group_of(std::int64_t r, Granularity g) const {
    switch (g) {
      case Granularity::per_block: return r / cta_q;
      case Granularity::per_warp: return r / warp_q;
      case Granularity::per_thread: return (r / warp_q) * 8 + (r % 8);
    }
    return 0;
  }
  // Number of K scales for nk keys, and the scale index of key `c`.
  SAGE_HD constexpr std::int64_t k_groups(std::int64_t nk, Granularity g) const {
    const std::int64_t tiles = (nk + cta_k - 1) / cta_k;
    return g == Granularity::per_thread ? tiles * 4 : tiles;
  }
  SAGE_HD constexpr std::int64_t k_group_of(std::int64_t c, Granularity g) const {
    return g == Granularity::per_thread ? (c / cta_k) * 4 + (c % 8) / 2 : c / cta_k;
  }
};

// The quantization geometry of the Hopper (sm90, wgmma) kernels: 128-row Q
// blocks, 16-row warps, 128-key tiles. The kernel's CTA tile is one block
// (two consumer warpgroups of 64 rows) or 192 rows (three consumers:
// sm90::consumer_warpgroups), which changes no group: each warp's 16 rows
// still lie inside one 128-row block.
inline constexpr TileGeometry kSm90Geometry{128, 128, 16, /*l_sums_pv_operand_past_dim=*/64};

// The geometry of the mma.sync kernels (src/cuda/mma): 8 warps of 16 rows
// each, 64-key tiles. 64 keys keep the per-thread S accumulator at 32
// registers (next to a 64-register O accumulator at D = 128), so the whole
// online softmax stays in registers without spills; Q rows and their groups
// are the same as the sm90 kernel's (both have cta_q = 128, warp_q = 16),
// only the K groups differ (64 keys instead of 128).
inline constexpr TileGeometry kMmaGeometry{128, 64, 16};

// "kSm90Geometry" or "kMmaGeometry" (reports, JSON), "custom" for another.
inline const char* geometry_name(const TileGeometry& g) {
  const auto same = [&g](const TileGeometry& o) {
    return g.cta_q == o.cta_q && g.cta_k == o.cta_k && g.warp_q == o.warp_q &&
           g.l_sums_pv_operand_past_dim == o.l_sums_pv_operand_past_dim;
  };
  return same(kSm90Geometry) ? "kSm90Geometry" : same(kMmaGeometry) ? "kMmaGeometry" : "custom";
}

}  // namespace sage
