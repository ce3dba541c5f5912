// Programmatic dependent launch (sm_90+): the kernels of one attention call
// (statistics -> quantization -> attention) overlap their launch, prologue
// and first loads with the tail of the kernel before them.
//
// A kernel launched by launch(true, ...) may start once every CTA of the
// kernel before it in the stream has called allow_dependent_launch (or
// exited), so it must call wait_for_prerequisites before it reads anything
// that kernel writes; the wait returns when that kernel has completed and
// its memory is visible. A kernel launched the plain way starts after its
// predecessor completes, and its wait returns at once: the device functions
// are correct under both launches, and are no-ops below sm_90.
// (Two exceptions wait for flags that the CTAs before them set with release
// stores instead: the pre-pass's quantize kernel never waits for the
// statistics kernel as a whole, each of its jobs for its head's statistics,
// cuda/quant/prepass.cu; and the attention kernel beside the concurrent
// pre-pass, each item for its head's K and V jobs, sm90's
// wait_for_kv_head; it waits for the grid itself only as it ends.)
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <utility>

namespace sage::pdl {

// Lets the next kernel of the stream (if launched by launch(true, ...))
// start as soon as every CTA of this grid has called this.
__device__ __forceinline__ void allow_dependent_launch() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
#endif
}

// Waits until the kernel this one depends on has completed and its writes
// are visible.
__device__ __forceinline__ void wait_for_prerequisites() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;\n" ::: "memory");
#endif
}

// Launches kernel<<<grid, block, smem, stream>>>(args...), programmatically
// dependent on the stream's previous kernel when `programmatic` (sm_90+
// devices only: callers pass false elsewhere).
template <typename... Params, typename... Args>
cudaError_t launch(bool programmatic, void (*kernel)(Params...), dim3 grid, dim3 block, std::size_t smem,
                   cudaStream_t stream, Args&&... args) {
  cudaLaunchAttribute attribute{};
  attribute.id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attribute.val.programmaticStreamSerializationAllowed = 1;
  cudaLaunchConfig_t config{};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = smem;
  config.stream = stream;
  config.attrs = &attribute;
  config.numAttrs = programmatic ? 1 : 0;
  return cudaLaunchKernelEx(&config, kernel, std::forward<Args>(args)...);
}

}  // namespace sage::pdl
