#include "cuda/common/kernel_attributes.h"

#include <mutex>
#include <set>
#include <tuple>

namespace sage::cuda {

cudaError_t set_kernel_attribute_once(const void* kernel, cudaFuncAttribute attribute, int value) {
  int device = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err != cudaSuccess) return err;
  static std::mutex mutex;
  static std::set<std::tuple<const void*, int, int, int>> done;  // (kernel, device, attribute, value)
  const std::tuple<const void*, int, int, int> key{kernel, device, static_cast<int>(attribute), value};
  const std::lock_guard<std::mutex> lock(mutex);
  if (done.count(key)) return cudaSuccess;
  err = cudaFuncSetAttribute(kernel, attribute, value);
  if (err == cudaSuccess) done.insert(key);
  return err;
}

}  // namespace sage::cuda
