// How the pre-pass's cluster kernel (cuda/quant/prepass.cu, section 3)
// spreads one head's K or V rows over a thread-block cluster: plain C++, so
// that the CPU tests check the policy too.
#pragma once

namespace sage::quant {

struct KvClusterShape {
  int ctas = 0, tiles_per_cta = 0;  // ctas 0: the call does not take the path (two-kernel path)
};

inline constexpr int kKvClusterTileRows = 128;  // rows of one tile (the quantize kernel's job tile)

// Clusters of at most 8 CTAs (the portable size): a cluster starts only once
// all its CTAs fit on the SMs of one GPC at once, and with 16 (H200,
// docs/perf-notes.md, session 15) the call was slower than with 8 twice as
// large CTAs at 2K keys, and no faster than the two-kernel path at 4K.
inline constexpr int kKvClusterMaxCtas = 8;
// Shared memory for 16-bit rows per CTA: at most two 128-row tiles at
// Dp = 128 (three CTAs per SM), four at Dp = 64. A head whose tiles fit
// (Dp = 128 up to 2048 keys, Dp = 64 up to 4096) is read from memory once
// and held; a longer one streams through these slots (see
// kv_cluster_held_tiles).
inline constexpr int kKvClusterMaxTileBytes = 64 << 10;

// Bytes of one tile of 16-bit rows of dp channels.
constexpr int kv_cluster_tile_bytes(int dp) { return kKvClusterTileRows * dp * 2; }

// Tiles a CTA holds in shared memory at once.
constexpr int kv_cluster_max_held_tiles(int dp) { return kKvClusterMaxTileBytes / kv_cluster_tile_bytes(dp); }

// The fewest tiles per CTA that spread a head of nk keys over a cluster of
// up to kKvClusterMaxCtas, and the CTAs that takes (each with at least one
// tile); none for nk = 0, and none where the tiles per CTA exceed what a CTA
// holds (kv_cluster_max_held_tiles) unless nk <= max_stream_keys: such a CTA
// reads the tiles that do not stay in its shared memory twice (the
// statistics, then the codes), the second time meant to come from L2.
constexpr KvClusterShape kv_cluster_shape(int nk, int dp, int max_stream_keys) {
  const int tiles = (nk + kKvClusterTileRows - 1) / kKvClusterTileRows;
  const int per_cta = (tiles + kKvClusterMaxCtas - 1) / kKvClusterMaxCtas;
  if (tiles <= 0 || (per_cta > kv_cluster_max_held_tiles(dp) && nk > max_stream_keys)) return {};
  return {(tiles + per_cta - 1) / per_cta, per_cta};
}

// Tiles of a CTA of `shape` in shared memory at once: all of them where they
// fit, else as many as it holds.
constexpr int kv_cluster_held_tiles(const KvClusterShape& shape, int dp) {
  return shape.tiles_per_cta < kv_cluster_max_held_tiles(dp) ? shape.tiles_per_cta : kv_cluster_max_held_tiles(dp);
}

}  // namespace sage::quant
