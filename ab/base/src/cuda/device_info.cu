#include "cuda/device_info.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <map>
#include <mutex>
#include <string>

#include "sage/version.h"

namespace sage::cuda {
namespace {

// Reads the runtime's text for `err` and clears the error, so a failed query
// (no driver, no device) does not show up in a later cudaGetLastError().
std::string consume_error(cudaError_t err) {
  (void)cudaGetLastError();
  return std::string(cudaGetErrorString(err)) + " (" + cudaGetErrorName(err) + ")";
}

// "90a" -> 90 and true (arch-specific); "80" -> 80 and false. False on junk.
bool parse_arch(const std::string& arch, int* number, bool* specific) {
  std::size_t digits = 0;
  while (digits < arch.size() && arch[digits] >= '0' && arch[digits] <= '9') ++digits;
  if (digits == 0) return false;
  *number = std::stoi(arch.substr(0, digits));
  // "90a" (arch-specific) and "100f" (family-specific) code does not run on
  // other capabilities; treat both as "this exact capability" to stay on the
  // safe side. A "-real"/"-virtual" suffix does not change that.
  *specific = digits < arch.size() && (arch[digits] == 'a' || arch[digits] == 'f');
  return true;
}

}  // namespace

std::string DeviceInfo::arch() const { return "sm_" + std::to_string(cc_major * 10 + cc_minor); }

DeviceCount device_count() {
  DeviceCount result;
  const cudaError_t err = cudaGetDeviceCount(&result.count);
  if (err != cudaSuccess) {
    result.count = 0;
    result.error = consume_error(err);
    // Without any driver the runtime says "CUDA driver version is
    // insufficient", which reads as if an update would help.
    if (driver_version() == 0) result.error = "no CUDA driver found";
  }
  return result;
}

bool device_info(int ordinal, DeviceInfo* info, std::string* error) {
  const DeviceCount devices = device_count();
  if (!devices.error.empty()) {
    *error = devices.error;
    return false;
  }
  if (ordinal < 0 || ordinal >= devices.count) {
    *error = "no CUDA device " + std::to_string(ordinal) + " (" + std::to_string(devices.count) + " found)";
    return false;
  }
  // Every GPU call asks; cudaGetDeviceProperties costs tens of microseconds,
  // which short attention calls cannot afford, and the answer never changes.
  static std::mutex mutex;
  static std::map<int, DeviceInfo> known;
  std::lock_guard<std::mutex> lock(mutex);
  if (auto it = known.find(ordinal); it != known.end()) {
    *info = it->second;
    return true;
  }
  cudaDeviceProp prop{};
  const cudaError_t err = cudaGetDeviceProperties(&prop, ordinal);
  if (err != cudaSuccess) {
    *error = consume_error(err);
    return false;
  }
  info->ordinal = ordinal;
  info->name = prop.name;
  info->cc_major = prop.major;
  info->cc_minor = prop.minor;
  info->sm_count = prop.multiProcessorCount;
  info->total_memory = prop.totalGlobalMem;
  known[ordinal] = *info;
  return true;
}

int runtime_version() {
  int version = 0;
  if (cudaRuntimeGetVersion(&version) != cudaSuccess) {
    (void)cudaGetLastError();
    return 0;
  }
  return version;
}

int driver_version() {
  int version = 0;
  if (cudaDriverGetVersion(&version) != cudaSuccess) {
    (void)cudaGetLastError();
    return 0;
  }
  return version;
}

std::string version_string(int cuda_version) {
  if (cuda_version <= 0) return "none";
  return std::to_string(cuda_version / 1000) + "." + std::to_string(cuda_version % 1000 / 10);
}

std::vector<std::string> built_archs() {
  std::vector<std::string> archs;
  const std::string list = SAGE_CUDA_ARCHS_STRING;
  std::size_t start = 0;
  while (start <= list.size()) {
    const std::size_t end = std::min(list.find(';', start), list.size());
    if (end > start) archs.push_back(list.substr(start, end - start));
    start = end + 1;
  }
  return archs;
}

std::string built_archs_string() { return SAGE_CUDA_ARCHS_STRING; }

int device_code_arch(int cc_major, int cc_minor) {
  int best = 0;
  for (const std::string& arch : built_archs()) {
    int number = 0;
    bool specific = false;
    if (!parse_arch(arch, &number, &specific)) continue;
    const int major = number / 10, minor = number % 10;
    const bool runs = specific ? (major == cc_major && minor == cc_minor) : (major == cc_major && minor <= cc_minor);
    if (runs && number > best) best = number;
  }
  return best;
}

bool build_supports(int cc_major, int cc_minor) {
  for (const std::string& arch : built_archs()) {
    int number = 0;
    bool specific = false;
    if (!parse_arch(arch, &number, &specific)) continue;
    const int major = number / 10, minor = number % 10;
    if (specific ? (major == cc_major && minor == cc_minor) : (major == cc_major && minor <= cc_minor)) return true;
  }
  return false;
}

}  // namespace sage::cuda
