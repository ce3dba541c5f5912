// Small named wrappers around the Hopper (sm_90a) PTX the attention kernel
// uses: mbarriers, TMA tile loads, wgmma fences and shared-memory matrix
// descriptors, register reallocation, named barriers and FP8 packing.
#pragma once

#include <cstdint>

#include "cuda/common/ptx_copy.cuh"

namespace sage::sm90 {

using ptx::smem_addr;

// ---- mbarrier -------------------------------------------------------------
__device__ __forceinline__ void mbar_init(uint64_t* bar, uint32_t arrivals) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(smem_addr(bar)), "r"(arrivals));
}
// Barrier `id` (1..15; 0 is __syncthreads) over `threads` threads (a multiple of 32).
__device__ __forceinline__ void named_barrier_sync(int id, int threads) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}

// Makes the initialized barriers visible to the async (TMA) proxy.
__device__ __forceinline__ void mbar_fence_init() { asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory"); }

__device__ __forceinline__ void mbar_arrive_expect_tx(uint64_t* bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(smem_addr(bar)), "r"(bytes) : "memory");
}
__device__ __forceinline__ void mbar_arrive(uint64_t* bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(smem_addr(bar)) : "memory");
}
// Blocks until the phase with the given parity has completed.
__device__ __forceinline__ void mbar_wait(uint64_t* bar, uint32_t parity) {
  asm volatile(
      "{\n"
      ".reg .pred done;\n"
      "wait_%=:\n"
      "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
      "@!done bra wait_%=;\n"
      "}\n" ::"r"(smem_addr(bar)),
      "r"(parity)
      : "memory");
}

// The same for a waiter with nothing else to do (the producer warps): each
// try_wait may suspend the thread until the phase completes (the hint bounds
// the suspension, in ns) instead of returning at once. A spinning producer
// took a sixth of its SM sub-partition's issue slots from the consumer warp
// beside it.
__device__ __forceinline__ void mbar_wait_idle(uint64_t* bar, uint32_t parity) {
  asm volatile(
      "{\n"
      ".reg .pred done;\n"
      "wait_%=:\n"
      "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1, %2;\n"
      "@!done bra wait_%=;\n"
      "}\n" ::"r"(smem_addr(bar)),
      "r"(parity), "r"(1000000u)
      : "memory");
}

// ---- TMA --------------------------------------------------------------------
// Loads the 3D box at (c0, c1, c2) of `tmap` into shared memory; completion
// is signalled on `bar` as transaction bytes. Out-of-bounds elements are 0.
__device__ __forceinline__ void tma_load_3d(void* dst, const void* tmap, uint64_t* bar, int c0, int c1, int c2) {
  asm volatile(
      "cp.async.bulk.tensor.3d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%3, %4, %5}], [%2];\n" ::"r"(
          smem_addr(dst)),
      "l"(tmap), "r"(smem_addr(bar)), "r"(c0), "r"(c1), "r"(c2)
      : "memory");
}
// The same for a 4D box at (c0, c1, c2, c3).
__device__ __forceinline__ void tma_load_4d(void* dst, const void* tmap, uint64_t* bar, int c0, int c1, int c2,
                                            int c3) {
  asm volatile(
      "cp.async.bulk.tensor.4d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%3, %4, %5, %6}], [%2];\n" ::"r"(
          smem_addr(dst)),
      "l"(tmap), "r"(smem_addr(bar)), "r"(c0), "r"(c1), "r"(c2), "r"(c3)
      : "memory");
}
// Copies `bytes` (a multiple of 16; both addresses 16-byte aligned) from
// global to shared memory, completion signalled on `bar` like a TMA load.
__device__ __forceinline__ void bulk_load(void* dst, const void* src, uint32_t bytes, uint64_t* bar) {
  asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n" ::"r"(
                   smem_addr(dst)),
               "l"(src), "r"(bytes), "r"(smem_addr(bar))
               : "memory");
}
// Orders global memory as seen by this thread's generic accesses before its
// later async-proxy accesses (TMA and bulk loads of what other CTAs stored).
__device__ __forceinline__ void fence_proxy_async_global() { asm volatile("fence.proxy.async.global;\n" ::: "memory"); }
// Makes this thread's shared-memory stores (generic proxy) visible to later
// reads of the async proxy (wgmma operands, TMA stores).
__device__ __forceinline__ void fence_proxy_async_shared() {
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}
// Stores the 4D box at (c0, c1, c2, c3) of `tmap` from shared memory `src`
// as one bulk async-group of this thread once committed (bulk_commit_group).
// Rows (dims 1..3) outside the tensor are not written; along dim 0 the
// store writes whole 16-byte pieces, so a row whose bytes end inside one
// is written past its end (make_out_tensor_map).
__device__ __forceinline__ void tma_store_4d(const void* tmap, const void* src, int c0, int c1, int c2, int c3) {
  asm volatile("cp.async.bulk.tensor.4d.global.shared::cta.bulk_group [%0, {%2, %3, %4, %5}], [%1];\n" ::"l"(tmap),
               "r"(smem_addr(src)), "r"(c0), "r"(c1), "r"(c2), "r"(c3)
               : "memory");
}
__device__ __forceinline__ void bulk_commit_group() { asm volatile("cp.async.bulk.commit_group;\n" ::: "memory"); }
// Waits until at most N of this thread's bulk groups still read their
// shared-memory source (the source may be overwritten then).
template <int N>
__device__ __forceinline__ void bulk_wait_read() {
  asm volatile("cp.async.bulk.wait_group.read %0;\n" ::"n"(N) : "memory");
}
// Waits until at most N of this thread's bulk groups are incomplete (their
// global writes done).
template <int N>
__device__ __forceinline__ void bulk_wait() {
  asm volatile("cp.async.bulk.wait_group %0;\n" ::"n"(N) : "memory");
}
// Four 8x8 16-bit matrices to shared memory: register i of lane l holds
// row l / 4, columns 2 (l % 4) + {0, 1} of matrix i (the mma accumulator
// layout, packed); lanes 8i..8i+7 give the row addresses of matrix i.
__device__ __forceinline__ void stmatrix_x4(uint32_t row_addr, uint32_t r0, uint32_t r1, uint32_t r2, uint32_t r3) {
  asm volatile("stmatrix.sync.aligned.m8n8.x4.shared.b16 [%0], {%1, %2, %3, %4};\n" ::"r"(row_addr), "r"(r0), "r"(r1),
               "r"(r2), "r"(r3)
               : "memory");
}
__device__ __forceinline__ void tma_prefetch_descriptor(const void* tmap) {
  asm volatile("prefetch.tensormap [%0];\n" ::"l"(tmap) : "memory");
}

// ---- wgmma ------------------------------------------------------------------
__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
// Keeps the compiler from moving reads/writes of an accumulator register
// across the asynchronous MMA that owns it.
template <typename T>
__device__ __forceinline__ void fence_operand(T& r) {
  asm volatile("" : "+r"(*reinterpret_cast<uint32_t*>(&r))::"memory");
}
template <typename T, int N>
__device__ __forceinline__ void fence_operands(T (&r)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) fence_operand(r[i]);
}

// Shared-memory matrix descriptor of a K-major tile written by TMA with the
// given swizzle: rows of `row_bytes` (= the swizzle width), 8-row core
// matrices `8 * row_bytes` apart. The tile base must be 1024-byte aligned;
// advancing along K inside the swizzle atom is done by adding the byte
// offset to the start address (desc_advance; the hardware applies the XOR
// pattern to the absolute address bits).
enum class Swizzle : uint64_t { b128 = 1, b64 = 2, b32 = 3 };

template <int RowBytes>
__device__ __forceinline__ uint64_t make_smem_desc(const void* tile) {
  static_assert(RowBytes == 128 || RowBytes == 64, "K-major tiles use 64- or 128-byte swizzle rows");
  constexpr Swizzle swizzle = RowBytes == 128 ? Swizzle::b128 : Swizzle::b64;
  const uint64_t start = smem_addr(tile) >> 4;
  const uint64_t leading = 1;                      // unused for swizzled K-major layouts
  const uint64_t stride = (8 * RowBytes) >> 4;     // between 8-row core matrices
  return (start & 0x3FFF) | (leading << 16) | (stride << 32) | (static_cast<uint64_t>(swizzle) << 62);
}

// The descriptor of the tile `bytes` further on (the next 32-byte K step
// inside a swizzle row, another stage of a ring of tiles): an add to the
// start address field, which cannot carry out of its 14 bits because shared
// addresses stay below 2^18 bytes (an SM of sm_90 has 228 KiB).
// (A 32-bit add on the low word: a 64-bit one costs a carry instruction.)
__device__ __forceinline__ uint64_t desc_advance(uint64_t desc, uint32_t bytes) {
  const uint32_t lo = static_cast<uint32_t>(desc) + (bytes >> 4);
  return (desc & 0xFFFFFFFF00000000ull) | lo;
}

// The value itself, which the compiler can no longer see through: it keeps
// it in a register instead of computing it again at each use.
__device__ __forceinline__ uint64_t opaque(uint64_t v) {
  asm volatile("" : "+l"(v));
  return v;
}

// ---- warp specialization -------------------------------------------------------
template <int Regs>
__device__ __forceinline__ void regs_increase() {
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(Regs));
}
template <int Regs>
__device__ __forceinline__ void regs_decrease() {
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(Regs));
}

// ---- conversions --------------------------------------------------------------
// Two floats -> two E4M3 bytes (RNE, satfinite); `lo` lands in the low byte.
__device__ __forceinline__ uint16_t pack_e4m3x2(float lo, float hi) {
  uint16_t r;
  asm("cvt.rn.satfinite.e4m3x2.f32 %0, %1, %2;\n" : "=h"(r) : "f"(hi), "f"(lo));
  return r;
}
__device__ __forceinline__ uint32_t pack_e4m3x4(float a0, float a1, float a2, float a3) {
  return static_cast<uint32_t>(pack_e4m3x2(a0, a1)) | (static_cast<uint32_t>(pack_e4m3x2(a2, a3)) << 16);
}
__device__ __forceinline__ float fast_exp2(float x) {
  float r;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(r) : "f"(x));
  return r;
}

}  // namespace sage::sm90
