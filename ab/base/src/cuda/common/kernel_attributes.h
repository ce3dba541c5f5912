// Function attributes of the library's kernels (dynamic shared memory above
// 48 KiB, the shared-memory carveout), set through the runtime once per
// kernel, device, attribute and value: an attribute persists, and setting it
// on every call cost host time on the short calls.
#pragma once

#include <cuda_runtime.h>

namespace sage::cuda {

// Sets `attribute` of `kernel` to `value` on the current device, unless this
// process already did. Returns the runtime's error (and tries again on the
// next call) where it refuses.
cudaError_t set_kernel_attribute_once(const void* kernel, cudaFuncAttribute attribute, int value);

}  // namespace sage::cuda
