// Epilogue of the sm90 forward kernel: a consumer's 64 output rows leave
// through shared memory and TMA.
//
// Data flow: O regs --x 1/l, x V scale, + V mean, cvt 16-bit--> packed pairs
// --stmatrix--> the consumer's staging tile (TMA's 128-byte swizzle) --one
// TMA store per 64-channel box--> the caller's output (rows past nq and
// channels past head_dim clipped by the tensor map's bounds; exactly, since
// the path is taken only where head_dim is a multiple of 8:
// make_out_tensor_map).
// Why: stored from the registers (fwd::write_output), each thread writes
// its rows as 16 four-byte pieces per row, 8 rows per warp store, and the
// second row's stores stalled on the first's (ncu, 1K keys: the epilogue
// was ~0.9 key-tile steps of each work item). Here a warp issues eight
// shared-memory stores and one thread a bulk copy that runs on while the
// consumers start their next item.
// The arithmetic is fwd::output_pair's, so both paths write the same bits.
#pragma once

#include <cstdint>
#include <cstring>

#include "cuda/common/forward_device.cuh"
#include "cuda/sm90/ptx_sm90.cuh"
#include "cuda/sm90/qk_int8_pv_fp8_sm90_params.h"

namespace sage::sm90 {

// One consumer's staging tile: 64 rows x Dp 16-bit channels as Dp / 64 boxes
// (kOutBoxRows x kOutBoxChannels, the output tensor map's box).
template <int Dp>
struct OutStage {
  static constexpr int kRows = kOutBoxRows;
  static constexpr int kBoxChannels = kOutBoxChannels;
  static constexpr int kBoxes = Dp / kBoxChannels;
  static constexpr int kBoxBytes = kRows * kBoxChannels * 2;
  static constexpr int kBytes = kBoxes * kBoxBytes;
  static_assert(Dp % kBoxChannels == 0, "whole boxes");
  static_assert(kBoxChannels * 2 == 128, "128-byte rows (offset() swizzles 8 of them)");

  // Byte offset of row r's channels 8j..8j+7 (16 bytes): box j / 8, row r
  // at 128 r, its 16-byte chunk j % 8 moved to (j % 8) ^ (r % 8) as TMA's
  // 128-byte swizzle reads it (box bases 1024-byte aligned). The eight rows
  // of an 8x8 matrix land in eight different bank groups.
  static __device__ __forceinline__ uint32_t offset(int r, int j) {
    return static_cast<uint32_t>((j / 8) * kBoxBytes + r * 128 + (((j % 8) ^ (r % 8)) << 4));
  }
};

// The consumer's O / l (V scales, V mean) through `stage` to the output
// (p.tmap_out); its rows start at row `first_row` of head bh. `barrier` is
// the consumer warpgroup's named barrier. The thread of the consumer that
// issues the stores waits, before the tile is rewritten, until its previous
// store has read it; the kernel waits for the last one before it exits
// (wait_output_stores).
template <class T, class Softmax>
__device__ __forceinline__ void store_output_tma(const QkInt8PvFp8Params& p, uint8_t* stage, int barrier,
                                                 const float (&o)[T::kOAcc], const Softmax& softmax,
                                                 const fwd::ChannelFactors<T>& f, const int (&rows)[2], int first_row,
                                                 int bh, int quad) {
  using Convert = fwd::OutputConvert<typename T::Out>;
  using Stage = OutStage<T::kDp>;
  const int lane = threadIdx.x % 32;
  const int warp = (threadIdx.x / 32) % 4;
  const bool issuer = threadIdx.x % 128 == 0;

  // packed[j][r]: channels 8j + 2 quad + {0, 1} of rows[r].
  uint32_t packed[T::kDp / 8][2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const auto [inv_l, add_mean] = fwd::row_finish(p, softmax, r);
#pragma unroll
    for (int j = 0; j < T::kDp / 8; ++j) {
      const float2 v = fwd::output_pair<T>(o, f, r, j, inv_l, add_mean);
      const typename Convert::Pair pair = Convert::two(v.x, v.y);
      std::memcpy(&packed[j][r], &pair, sizeof(uint32_t));
    }
  }

  if (issuer) bulk_wait_read<0>();  // the previous item's store is done reading the tile
  named_barrier_sync(barrier, 128);
  // Lane l addresses row l % 8 of matrix l / 8: matrices (rows +0, slice j),
  // (rows +8, slice j), (rows +0, slice j + 1), (rows +8, slice j + 1).
  const int row = warp * 16 + 8 * ((lane / 8) % 2) + lane % 8;
  const uint32_t base = smem_addr(stage);
#pragma unroll
  for (int j = 0; j < T::kDp / 8; j += 2) {
    stmatrix_x4(base + Stage::offset(row, j + lane / 16), packed[j][0], packed[j][1], packed[j + 1][0],
                packed[j + 1][1]);
  }
  fence_proxy_async_shared();  // the tile, for the TMA store's reads
  named_barrier_sync(barrier, 128);
  if (issuer) {
    const int b = bh / p.heads_q;
    const int h = bh % p.heads_q;
#pragma unroll
    for (int box = 0; box < Stage::kBoxes; ++box) {
      tma_store_4d(&p.tmap_out, stage + box * Stage::kBoxBytes, box * Stage::kBoxChannels, first_row, h, b);
    }
    bulk_commit_group();
  }
  if (quad == 0) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      if (rows[r] < p.nq) fwd::write_lse(p, softmax, r, rows[r], bh);
    }
  }
}

// Before the CTA exits: its output stores have read their tiles (and written
// the output).
__device__ __forceinline__ void wait_output_stores() {
  if (threadIdx.x % 128 == 0) bulk_wait<0>();
}

}  // namespace sage::sm90
