// quant::kv_cluster_shape (src/cuda/quant/kv_cluster_shape.h): which heads
// the pre-pass's cluster kernel takes, and how it spreads their tiles. The
// GPU tests check the path calls take (Sm90Forward.KvClustersOnlyWhereTheCallFits);
// here every length up to past the limits, at both padded head dims, with
// and without streaming.
#include <gtest/gtest.h>

#include <algorithm>
#include <string>

#include "cuda/quant/kv_cluster_shape.h"
#include "cuda/quant/kv_head_jobs_fit.h"

namespace {

using sage::quant::kKvClusterMaxCtas;
using sage::quant::kKvClusterMaxTileBytes;
using sage::quant::kv_cluster_held_tiles;
using sage::quant::kv_cluster_max_held_tiles;
using sage::quant::kv_cluster_shape;
using sage::quant::kv_cluster_tile_bytes;

TEST(KvClusterShape, EveryLengthFitsStreamsOrFallsBack) {
  for (const int max_stream_keys : {0, 5000, 8192}) {
    for (const int dp : {64, 128}) {
      const int max_held = kKvClusterMaxTileBytes / kv_cluster_tile_bytes(dp);
      ASSERT_EQ(kv_cluster_max_held_tiles(dp), max_held);
      for (int nk = 0; nk <= 9000; ++nk) {
        SCOPED_TRACE("dp " + std::to_string(dp) + " nk " + std::to_string(nk) + " max_stream_keys " +
                     std::to_string(max_stream_keys));
        const int tiles = (nk + 127) / 128;
        const auto shape = kv_cluster_shape(nk, dp, max_stream_keys);
        const bool held = tiles > 0 && tiles <= kKvClusterMaxCtas * max_held;
        const bool streamed = tiles > 0 && !held && nk <= max_stream_keys;
        ASSERT_EQ(shape.ctas > 0, held || streamed);
        if (shape.ctas == 0) continue;
        EXPECT_LE(shape.ctas, kKvClusterMaxCtas);
        EXPECT_GE(shape.ctas * shape.tiles_per_cta, tiles) << "every tile has a CTA";
        EXPECT_LT((shape.ctas - 1) * shape.tiles_per_cta, tiles) << "every CTA has a tile";
        // The fewest tiles per CTA: one fewer would need more than the cluster's CTAs.
        if (shape.tiles_per_cta > 1) EXPECT_GT((tiles + shape.tiles_per_cta - 2) / (shape.tiles_per_cta - 1), kKvClusterMaxCtas);
        // Shared memory: every tile where the head fits, the most a CTA holds where it streams.
        const int in_smem = kv_cluster_held_tiles(shape, dp);
        EXPECT_LE(in_smem * kv_cluster_tile_bytes(dp), kKvClusterMaxTileBytes);
        EXPECT_EQ(in_smem, held ? shape.tiles_per_cta : max_held);
      }
    }
  }
}

TEST(KvClusterShape, LimitsOfThePath) {
  EXPECT_EQ(kv_cluster_shape(1024, 128, 0).ctas, 8);
  EXPECT_EQ(kv_cluster_shape(1024, 128, 0).tiles_per_cta, 1);
  EXPECT_EQ(kv_cluster_shape(2048, 128, 0).tiles_per_cta, 2);
  EXPECT_EQ(kv_cluster_shape(2049, 128, 0).ctas, 0);
  EXPECT_EQ(kv_cluster_shape(2049, 128, 2049).tiles_per_cta, 3);  // streams: one tile read twice
  EXPECT_EQ(kv_cluster_held_tiles(kv_cluster_shape(2049, 128, 2049), 128), 2);
  EXPECT_EQ(kv_cluster_shape(4096, 128, 4096).tiles_per_cta, 4);
  EXPECT_EQ(kv_cluster_shape(4097, 128, 4096).ctas, 0);
  EXPECT_EQ(kv_cluster_shape(4096, 64, 0).tiles_per_cta, 4);
  EXPECT_EQ(kv_cluster_shape(4097, 64, 0).ctas, 0);
  EXPECT_EQ(kv_cluster_shape(4097, 64, 8192).tiles_per_cta, 5);
  EXPECT_EQ(kv_cluster_shape(300, 128, 0).ctas, 3);  // one CTA per tile below 8 tiles
  EXPECT_EQ(kv_cluster_held_tiles(kv_cluster_shape(300, 128, 0), 128), 1);
  EXPECT_EQ(kv_cluster_shape(0, 128, 8192).ctas, 0);
}

// quant::kv_head_jobs_fit: the head-jobs kernel takes a call whose jobs
// (two per batch * kv head) fill one wave of CTAs, one per SM, to at least
// 3/4 (the GPU tests check the path calls take:
// Sm90Forward.KvHeadJobsOnlyWhereTheCallFits).
TEST(KvHeadJobsFit, OneWaveAtLeastThreeQuartersFull) {
  using sage::quant::kv_head_jobs_fit;
  for (const int sms : {114, 132, 144}) {
    SCOPED_TRACE("sms " + std::to_string(sms));
    const int least = (3 * sms + 3) / 4;
    for (int jobs = 0; jobs <= 2 * sms; ++jobs) {
      EXPECT_EQ(kv_head_jobs_fit(jobs, sms), jobs >= least && jobs <= sms) << "jobs " << jobs;
    }
  }
  EXPECT_TRUE(kv_head_jobs_fit(128, 132));    // B=2 H=32 on an H100 SXM / H200 (the timed shape)
  EXPECT_FALSE(kv_head_jobs_fit(98, 132));    // 49 heads
  EXPECT_TRUE(kv_head_jobs_fit(99, 132));     // 3/4 of the SMs
  EXPECT_FALSE(kv_head_jobs_fit(256, 132));   // B=4 H=32: CTAs would loop over jobs
  EXPECT_FALSE(kv_head_jobs_fit(1LL << 40, 132));
  EXPECT_FALSE(kv_head_jobs_fit(0, 0));       // no device
}

// quant::kv_head_job_split: the fewest of 1, 2 and 4 CTAs per head job
// whose first wave (one CTA per SM) reads at most kKvHeadJobWaveBytes of
// rows before any of them is read again.
TEST(KvHeadJobSplit, FewestCtasWhoseFirstWaveFitsTheBytes) {
  using sage::quant::kKvHeadJobWaveBytes;
  using sage::quant::kv_head_job_split;
  constexpr int kRow = 256;  // D = 128, 16-bit
  // B=2 H=32 on an H100 SXM / H200: 128 jobs of 32 MiB a wave at 1K keys;
  // at 2K, 2 CTAs per job (132 of 264 CTAs of 1K rows); at 4K, 4.
  EXPECT_EQ(kv_head_job_split(128, 1024, 132, kRow), 1);
  EXPECT_EQ(kv_head_job_split(128, 2048, 132, kRow), 2);
  EXPECT_EQ(kv_head_job_split(128, 4096, 132, kRow), 4);
  EXPECT_EQ(kv_head_job_split(128, 1, 132, kRow), 1);
  // Past what 4 CTAs bring under the bytes: still 4, the most the rule takes.
  EXPECT_EQ(kv_head_job_split(128, 16384, 132, kRow), 4);
  // The bound itself: a wave of exactly kKvHeadJobWaveBytes (128 jobs of
  // 1280 rows) fits, one row more does not.
  static_assert(128LL * 1280 * kRow == kKvHeadJobWaveBytes);
  EXPECT_EQ(kv_head_job_split(128, 1280, 132, kRow), 1);
  EXPECT_EQ(kv_head_job_split(128, 1281, 132, kRow), 2);
  // Against the wave it models, for every length up to 8K keys: the answer
  // fits (or is 4), and one fewer power of two would not.
  auto wave_bytes = [&](long long jobs, long long nk, int sms, int ctas) {
    return std::min<long long>(jobs * ctas, sms) * ((nk + ctas - 1) / ctas) * kRow;
  };
  for (const int sms : {114, 132}) {
    for (long long nk = 1; nk <= 8192; nk += 37) {
      const int ctas = kv_head_job_split(99, nk, sms, kRow);
      SCOPED_TRACE("sms " + std::to_string(sms) + " nk " + std::to_string(nk));
      ASSERT_TRUE(ctas == 1 || ctas == 2 || ctas == 4);
      if (ctas < 4) EXPECT_LE(wave_bytes(99, nk, sms, ctas), kKvHeadJobWaveBytes);
      if (ctas > 1) EXPECT_GT(wave_bytes(99, nk, sms, ctas / 2), kKvHeadJobWaveBytes);
    }
  }
}

// The same rule with two CTAs per SM: a wave of twice the SMs' CTAs, and up
// to 8 CTAs per job; and quant::kv_head_job_ctas_per_sm, which takes two
// where one CTA per SM needs 4 per job (the longest heads), and
// kv_head_job_shape, the two together.
TEST(KvHeadJobSplit, TwoPerSmForTheLongestHeads) {
  using sage::quant::kKvHeadJobWaveBytes;
  using sage::quant::kv_head_job_ctas_per_sm;
  using sage::quant::kv_head_job_shape;
  using sage::quant::kv_head_job_split;
  constexpr int kRow = 256;  // D = 128, 16-bit
  // B=2 H=32 on an H100 SXM / H200 at two per SM: 1K keys 1 (128 CTAs),
  // 2K 4 (264 CTAs of 512 rows), 4K 8; 8 is the most.
  EXPECT_EQ(kv_head_job_split(128, 1024, 132, kRow, 2), 1);
  EXPECT_EQ(kv_head_job_split(128, 2048, 132, kRow, 2), 4);
  EXPECT_EQ(kv_head_job_split(128, 4096, 132, kRow, 2), 8);
  EXPECT_EQ(kv_head_job_split(128, 16384, 132, kRow, 2), 8);
  // One per SM unless one per SM would split 4 ways.
  EXPECT_EQ(kv_head_job_ctas_per_sm(128, 1024, 132, kRow), 1);
  EXPECT_EQ(kv_head_job_ctas_per_sm(128, 2048, 132, kRow), 1);
  EXPECT_EQ(kv_head_job_ctas_per_sm(128, 2049, 132, kRow), 1);  // 2 CTAs of 1025 rows: 33.0 MiB a wave
  EXPECT_EQ(kv_head_job_ctas_per_sm(128, 2561, 132, kRow), 2);  // 2 of 1281: past 40 MiB
  EXPECT_EQ(kv_head_job_ctas_per_sm(128, 4096, 132, kRow), 2);
  for (const int sms : {114, 132}) {
    for (long long nk = 1; nk <= 8192; nk += 37) {
      SCOPED_TRACE("sms " + std::to_string(sms) + " nk " + std::to_string(nk));
      const auto shape = kv_head_job_shape(99, nk, sms, kRow);
      EXPECT_EQ(shape.per_sm, kv_head_job_split(99, nk, sms, kRow) == 4 ? 2 : 1);
      EXPECT_EQ(shape.ctas, kv_head_job_split(99, nk, sms, kRow, shape.per_sm));
      const int ctas = kv_head_job_split(99, nk, sms, kRow, 2);
      ASSERT_TRUE(ctas == 1 || ctas == 2 || ctas == 4 || ctas == 8);
      const long long wave = std::min<long long>(99LL * ctas, 2LL * sms) * ((nk + ctas - 1) / ctas) * kRow;
      if (ctas < 8) EXPECT_LE(wave, kKvHeadJobWaveBytes);
    }
  }
  constexpr auto four_k = kv_head_job_shape(128, 4096, 132, kRow);
  static_assert(four_k.ctas == 8 && four_k.per_sm == 2, "B=2 H=32 D=128 at 4K keys: two per SM over 8-CTA clusters");
  // What a call asks for instead (SAGE_PREPASS_KV_HEAD_JOB_SPLIT,
  // SAGE_PREPASS_KV_HEAD_JOBS_PER_SM): taken as asked up to 8 CTAs per job
  // and 2 per SM; one per SM alone gets the one-per-SM split.
  EXPECT_EQ(kv_head_job_shape(128, 4096, 132, kRow, 0, 1).ctas, 4);
  EXPECT_EQ(kv_head_job_shape(128, 4096, 132, kRow, 0, 1).per_sm, 1);
  EXPECT_EQ(kv_head_job_shape(128, 1024, 132, kRow, 0, 2).ctas, 1);
  EXPECT_EQ(kv_head_job_shape(128, 1024, 132, kRow, 0, 2).per_sm, 2);
  EXPECT_EQ(kv_head_job_shape(128, 4096, 132, kRow, 3, 0).ctas, 3);
  EXPECT_EQ(kv_head_job_shape(128, 4096, 132, kRow, 3, 0).per_sm, 2);
  EXPECT_EQ(kv_head_job_shape(128, 1024, 132, kRow, 16, 5).ctas, 8);
  EXPECT_EQ(kv_head_job_shape(128, 1024, 132, kRow, 16, 5).per_sm, 2);
}

}  // namespace
