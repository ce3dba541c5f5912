// Launches in thread-block clusters (sm_90): the attributes of such a launch
// and whether the device places its clusters, for the kernels that run in
// them (the pre-pass's cluster and head-jobs kernels).
#pragma once

#include <cuda_runtime.h>

namespace sage::cuda {

// Writes the attributes of a launch in clusters of `cluster_ctas` CTAs along
// x (0: no cluster attribute) that is programmatic (PDL) if asked, and
// returns how many it wrote.
int cluster_launch_attributes(int cluster_ctas, bool programmatic, cudaLaunchAttribute (&attributes)[2]);

// Whether the current device places at least one cluster of `config`'s
// launch of `kernel`, whose shared-memory attribute the caller has set: the
// kernel built for sm_90 or newer (the library's cluster kernels have empty
// bodies for older targets) and cudaOccupancyMaxActiveClusters above 0. The
// driver's answers are remembered per kernel, device, cluster size and
// shared memory (host time counts on short calls). A failed query answers
// "no" for this call only and is asked again on the next; its error is
// cleared, so that the launch checks that follow do not report it.
bool clusters_placeable(const void* kernel, const cudaLaunchConfig_t& config);

}  // namespace sage::cuda
