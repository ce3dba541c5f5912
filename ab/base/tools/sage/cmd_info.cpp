// `sage info`: what this build is and what it can see.
#include <cstdio>
#include <iostream>
#include <string>

#include "commands.h"
#include "cuda/device_info.h"
#include "device.h"
#include "reference/parallel.h"
#include "sage/version.h"

#ifndef SAGE_BUILD_TYPE
#define SAGE_BUILD_TYPE "unknown"
#endif

namespace sage_cli {
namespace {

std::string gibibytes(std::size_t bytes) {
  char text[32];
  std::snprintf(text, sizeof text, "%.1f GiB", static_cast<double>(bytes) / (1024.0 * 1024.0 * 1024.0));
  return text;
}

void print_gpus() {
  if (const std::string absence = gpu_absence_reason(); !absence.empty()) {
    std::cout << "GPUs:                  " << absence << "\n";
    return;
  }
  const int count = sage::cuda::device_count().count;
  std::cout << "GPUs:                  " << count << "\n";
  for (int i = 0; i < count; ++i) {
    sage::cuda::DeviceInfo info;
    std::string error;
    if (!sage::cuda::device_info(i, &info, &error)) {
      std::cout << "  GPU " << i << ": " << error << "\n";
      continue;
    }
    const bool supported = sage::cuda::build_supports(info.cc_major, info.cc_minor);
    std::cout << "  GPU " << i << ": " << info.name << ", " << info.arch() << ", " << info.sm_count << " SMs, "
              << gibibytes(info.total_memory) << ", "
              << (supported ? "supported by this build" : "not supported by this build") << "\n";
  }
}

}  // namespace

void declare_info(ArgParser& parser) { (void)parser; }

int run_info(const ArgParser& parser) {
  (void)parser;
  std::cout << "sage-attention " << SAGE_VERSION_STRING << "\n";
  std::cout << "build type:            " << SAGE_BUILD_TYPE << "\n";
  std::cout << "CUDA archs built:      " << sage::cuda::built_archs_string() << "\n";
  std::cout << "CUDA runtime:          " << sage::cuda::version_string(sage::cuda::runtime_version()) << "\n";
  const int driver = sage::cuda::driver_version();
  std::cout << "CUDA driver:           "
            << (driver > 0 ? "supports CUDA " + sage::cuda::version_string(driver) : std::string("none found"))
            << "\n";
  print_gpus();
  std::cout << "CPU reference threads: " << sage::ref::parallel_threads()
            << " (set SAGE_NUM_THREADS to change)\n";
  return 0;
}

}  // namespace sage_cli
