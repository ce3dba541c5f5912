#include "cuda/common/cluster_launch.h"

#include <map>
#include <mutex>
#include <tuple>

namespace sage::cuda {

int cluster_launch_attributes(int cluster_ctas, bool programmatic, cudaLaunchAttribute (&attributes)[2]) {
  int used = 0;
  if (cluster_ctas > 0) {
    attributes[used] = cudaLaunchAttribute{};
    attributes[used].id = cudaLaunchAttributeClusterDimension;
    attributes[used].val.clusterDim.x = static_cast<unsigned>(cluster_ctas);
    attributes[used].val.clusterDim.y = attributes[used].val.clusterDim.z = 1;
    ++used;
  }
  if (programmatic) {
    attributes[used] = cudaLaunchAttribute{};
    attributes[used].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attributes[used].val.programmaticStreamSerializationAllowed = 1;
    ++used;
  }
  return used;
}

namespace {

unsigned cluster_size_of(const cudaLaunchConfig_t& config) {
  for (unsigned i = 0; i < config.numAttrs; ++i) {
    if (config.attrs[i].id == cudaLaunchAttributeClusterDimension) {
      const auto& dim = config.attrs[i].val.clusterDim;
      return dim.x * dim.y * dim.z;
    }
  }
  return 1;
}

}  // namespace

bool clusters_placeable(const void* kernel, const cudaLaunchConfig_t& config) {
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess) {
    cudaGetLastError();
    return false;
  }
  using Key = std::tuple<const void*, int, unsigned, std::size_t>;  // (kernel, device, cluster size, shared memory)
  static std::mutex mutex;
  static std::map<Key, bool> known;
  const Key key{kernel, device, cluster_size_of(config), config.dynamicSmemBytes};
  const std::lock_guard<std::mutex> lock(mutex);
  if (const auto it = known.find(key); it != known.end()) return it->second;
  cudaFuncAttributes function{};
  int clusters = 0;
  if (cudaFuncGetAttributes(&function, kernel) != cudaSuccess ||
      (function.binaryVersion >= 90 && cudaOccupancyMaxActiveClusters(&clusters, kernel, &config) != cudaSuccess)) {
    cudaGetLastError();
    return false;
  }
  const bool placeable = function.binaryVersion >= 90 && clusters > 0;
  known[key] = placeable;
  return placeable;
}

}  // namespace sage::cuda
