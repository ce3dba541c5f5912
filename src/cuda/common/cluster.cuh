// Thread-block cluster primitives (sm_90) that the pre-pass's cluster and
// head-jobs kernels share: the cluster barrier, split into its arrive and
// wait halves, and loads from another CTA's shared memory.
//
// A CTA's partials are published by a release arrive and read by its peers
// after their acquire wait; a CTA arrives again once it has read its peers'
// shared memory, and waits for that second barrier before it rewrites its
// own partials or exits (a peer may still be reading them). Every thread of
// every CTA of the cluster must take part in each barrier (.aligned: all
// threads of a warp execute it together). Below sm_90, where no kernel is
// launched in clusters, a CTA is a cluster of one: the barrier is the CTA's
// (__syncthreads at the wait), and rank 0, the only one, is the CTA itself.
#pragma once

#include <cstdint>

namespace sage::cluster {

__device__ __forceinline__ void arrive() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("barrier.cluster.arrive.release.aligned;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("barrier.cluster.wait.acquire.aligned;\n" ::: "memory");
#else
  __syncthreads();
#endif
}
__device__ __forceinline__ int rank() {
  uint32_t r = 0;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("mov.u32 %0, %%cluster_ctarank;\n" : "=r"(r));
#endif
  return static_cast<int>(r);
}
// The float at `local` (this CTA's shared memory) in the CTA of rank `rank`.
__device__ __forceinline__ float load_from_rank(const float* local, int rank) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  const uint32_t mine = static_cast<uint32_t>(__cvta_generic_to_shared(local));
  uint32_t remote;
  float v;
  asm volatile("mapa.shared::cluster.u32 %0, %1, %2;\n" : "=r"(remote) : "r"(mine), "r"(rank));
  asm volatile("ld.shared::cluster.f32 %0, [%1];\n" : "=f"(v) : "r"(remote) : "memory");
  return v;
#else
  (void)rank;  // (0)
  return *local;
#endif
}

}  // namespace sage::cluster
