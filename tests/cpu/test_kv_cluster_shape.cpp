// quant::kv_cluster_shape (src/cuda/quant/kv_cluster_shape.h): which heads
// the pre-pass's cluster kernel takes, and how it spreads their tiles. The
// GPU tests check the path calls take (Sm90Forward.KvClustersOnlyWhereTheCallFits);
// here every length up to past the limits, at both padded head dims.
#include <gtest/gtest.h>

#include <string>

#include "cuda/quant/kv_cluster_shape.h"

namespace {

using sage::quant::kKvClusterMaxCtas;
using sage::quant::kKvClusterMaxTileBytes;
using sage::quant::kv_cluster_shape;
using sage::quant::kv_cluster_tile_bytes;

TEST(KvClusterShape, EveryLengthFitsOrFallsBack) {
  for (const int dp : {64, 128}) {
    const int max_tiles_per_cta = kKvClusterMaxTileBytes / kv_cluster_tile_bytes(dp);
    for (int nk = 0; nk <= 9000; ++nk) {
      SCOPED_TRACE("dp " + std::to_string(dp) + " nk " + std::to_string(nk));
      const int tiles = (nk + 127) / 128;
      const auto shape = kv_cluster_shape(nk, dp);
      const bool fits = tiles > 0 && tiles <= kKvClusterMaxCtas * max_tiles_per_cta;
      ASSERT_EQ(shape.ctas > 0, fits);
      if (!fits) continue;
      EXPECT_LE(shape.ctas, kKvClusterMaxCtas);
      EXPECT_LE(shape.tiles_per_cta * kv_cluster_tile_bytes(dp), kKvClusterMaxTileBytes);
      EXPECT_GE(shape.ctas * shape.tiles_per_cta, tiles) << "every tile has a CTA";
      EXPECT_LT((shape.ctas - 1) * shape.tiles_per_cta, tiles) << "every CTA has a tile";
      // The fewest tiles per CTA: one fewer would need more than the cluster's CTAs.
      if (shape.tiles_per_cta > 1) EXPECT_GT((tiles + shape.tiles_per_cta - 2) / (shape.tiles_per_cta - 1), kKvClusterMaxCtas);
    }
  }
}

TEST(KvClusterShape, LimitsOfThePath) {
  EXPECT_EQ(kv_cluster_shape(1024, 128).ctas, 8);
  EXPECT_EQ(kv_cluster_shape(1024, 128).tiles_per_cta, 1);
  EXPECT_EQ(kv_cluster_shape(2048, 128).tiles_per_cta, 2);
  EXPECT_EQ(kv_cluster_shape(2049, 128).ctas, 0);
  EXPECT_EQ(kv_cluster_shape(4096, 64).tiles_per_cta, 4);
  EXPECT_EQ(kv_cluster_shape(4097, 64).ctas, 0);
  EXPECT_EQ(kv_cluster_shape(300, 128).ctas, 3);  // one CTA per tile below 8 tiles
  EXPECT_EQ(kv_cluster_shape(0, 128).ctas, 0);
}

}  // namespace
