// Small named wrappers around the PTX of the mma.sync kernel family (sm_80
// and newer): ldmatrix and the warp-level MMAs (cp.async comes from
// cuda/common/ptx_copy.cuh). Each wrapper names its operand fragments the
// way the PTX ISA's "matrix fragments for mma.m16n8k32" section does:
//   lane l, g = l / 4 (group), q = l % 4 (thread in group);
//   A (16 x 32 bytes, row-major): a0 row g, bytes 4q..4q+3; a1 row g+8, same
//     bytes; a2 row g, bytes 16+4q..; a3 row g+8, bytes 16+4q..;
//   B (32 bytes x 8, "col": B[k][n] stored per column n): b0 column g,
//     bytes 4q..4q+3; b1 column g, bytes 16+4q..;
//   C/D (16 x 8): c0, c1 row g, columns 2q, 2q+1; c2, c3 row g+8.
#pragma once

#include <cstdint>

#include "cuda/common/ptx_copy.cuh"

namespace sage::mma {

using ptx::cp_async_16;
using ptx::cp_async_commit;
using ptx::cp_async_wait;
using ptx::smem_addr;

// ---- ldmatrix ----------------------------------------------------------------
// Four 8x8 b16 matrices (8 rows of 16 bytes each); lanes 8m..8m+7 give the
// row addresses of matrix m, and register m of lane l receives bytes
// 4*(l%4)..4*(l%4)+3 of row l/4 of matrix m: for 8-bit data exactly the
// A/B fragment pieces listed above.
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* row_addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(row_addr)));
}

// The same with .trans: register m of lane l receives the two b16 elements
// (rows 2*(l%4) and 2*(l%4)+1, column l/4) of matrix m, i.e. a column pair
// of a row-major tile: the B fragment of m16n8k16 from a [k][n] tile.
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* row_addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(row_addr)));
}

// ---- MMAs ----------------------------------------------------------------------
// D = A * B + C, INT8 x INT8 -> int32 (exact), m16n8k32.
__device__ __forceinline__ void mma_s8_m16n8k32(int32_t (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// D = A * B + C, INT4 x INT4 -> int32 (exact), m16n8k64. Each register
// holds 8 nibbles (the lower k in the lower nibble), so the fragments cover
// the same bytes as m16n8k32 INT8 with two elements per byte. (sm_80+; on
// Hopper it is slow - no INT4 tensor cores, ~45 TOPS measured - and used
// for correctness only.)
__device__ __forceinline__ void mma_s4_m16n8k64(int32_t (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k64.row.col.s32.s4.s4.s32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// D = A * B + C, FP8 E4M3 x E4M3 -> fp32, m16n8k32 (sm_89 and newer; the
// caller compiles it only there). The tensor core keeps fewer accumulator
// bits than fp32 (~22 on Ada/Hopper): callers accumulate one key tile at a
// time into a fresh C and add that into fp32 (two-level accumulation).
__device__ __forceinline__ void mma_e4m3_m16n8k32(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
  asm volatile(
      "mma.sync.aligned.m16n8k32.row.col.f32.e4m3.e4m3.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#else
  (void)d, (void)a, (void)b0, (void)b1;
  __trap();  // unreachable: the dispatch never runs FP8 PV below sm_89
#endif
}

// D = A * B + C, FP16 x FP16 -> fp32, m16n8k16 (sm_80+). Fragments (b16
// pairs, the lower k in the lower half): a0 row g, k 2q..2q+1; a1 row g+8;
// a2 row g, k 8+2q..; a3 row g+8, k 8+2q..; b0 column g, k 2q..2q+1; b1
// column g, k 8+2q..; C as for m16n8k32.
__device__ __forceinline__ void mma_f16_m16n8k16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

}  // namespace sage::mma
