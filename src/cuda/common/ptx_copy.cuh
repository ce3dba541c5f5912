// PTX wrappers every kernel of the library shares (pre-pass, sm90, mma.sync):
// the shared-memory address of a generic pointer, the cp.async copies
// (sm_80 and newer) with their group commit and wait, and the flag accesses
// by which one grid's CTAs wait for another's.
#pragma once

#include <cstdint>

namespace sage::ptx {

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// Copies 16 bytes from global `src` to shared `dst` (cached in L2 only).
__device__ __forceinline__ void cp_async_16(void* dst, const void* src) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(smem_addr(dst)), "l"(src) : "memory");
}
// The same, except that when !valid nothing is read and the 16 bytes are
// zero-filled (src-size 0), so tiles past the end of a tensor need no
// separate clearing.
__device__ __forceinline__ void cp_async_16(void* dst, const void* src, bool valid) {
  const int src_bytes = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(dst)), "l"(src), "r"(src_bytes)
               : "memory");
}
// L2 eviction priorities for cp_async_16_hinted (an opaque 64-bit
// policy, PTX createpolicy; no side effects, so plain asm that the compiler
// may hoist or drop): an access with evict_last asks that its lines be
// kept over normal ones, one with evict_first that they go first; each
// access sets the priority of the lines it touches.
__device__ __forceinline__ uint64_t l2_policy_evict_last() {
  uint64_t policy;
  asm("createpolicy.fractional.L2::evict_last.b64 %0, 1.0;\n" : "=l"(policy));
  return policy;
}
__device__ __forceinline__ uint64_t l2_policy_evict_first() {
  uint64_t policy;
  asm("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;\n" : "=l"(policy));
  return policy;
}
// cp_async_16 with an L2 eviction policy for the lines it reads.
__device__ __forceinline__ void cp_async_16_hinted(void* dst, const void* src, uint64_t l2_policy) {
  asm volatile("cp.async.cg.shared.global.L2::cache_hint [%0], [%1], 16, %2;\n" ::"r"(smem_addr(dst)), "l"(src),
               "l"(l2_policy)
               : "memory");
}
// 16 bytes of read-only global memory into registers, with an L2 eviction
// policy for the lines it reads (l2_policy_evict_last / _first).
__device__ __forceinline__ uint4 ld_global_nc_16_hinted(const void* src, uint64_t l2_policy) {
  uint4 r;
  asm volatile("ld.global.nc.L2::cache_hint.v4.u32 {%0, %1, %2, %3}, [%4], %5;\n"
               : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
               : "l"(src), "l"(l2_policy));
  return r;
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
// Waits until at most N of this thread's committed groups are still in flight.
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

// A flag for CTAs of other grids: the release store orders the writer's
// earlier writes (with a fence and a barrier before it: its CTA's) before
// the flag, and the acquire load orders the reader's later reads after it.
__device__ __forceinline__ void store_release_gpu(int* flag, int value) {
  asm volatile("st.release.gpu.global.b32 [%0], %1;\n" ::"l"(flag), "r"(value) : "memory");
}
__device__ __forceinline__ int load_acquire_gpu(const int* flag) {
  int value;
  asm volatile("ld.acquire.gpu.global.b32 %0, [%1];\n" : "=r"(value) : "l"(flag) : "memory");
  return value;
}
// The same without the ordering: several flags polled in one round trip,
// then one fence (__threadfence) after them, the acquire pattern of the PTX
// memory model.
__device__ __forceinline__ int load_relaxed_gpu(const int* flag) {
  int value;
  asm volatile("ld.relaxed.gpu.global.b32 %0, [%1];\n" : "=r"(value) : "l"(flag) : "memory");
  return value;
}

}  // namespace sage::ptx
