// What the GPU dispatch answers a valid bf16 call with the default options
// (INT8 Q K^T, FP8 P V) on a device, worked out independently of the
// dispatch from the device's capability and the build's architectures: the
// dispatch tests compare with it rather than accept any of the possible
// answers (a test that takes every outcome checks nothing).
#pragma once

#include <string>

#include "cuda/device_info.h"
#include "sage/status.h"

namespace sage::test {

// ok where this build has code for the device and FP8 tensor cores exist
// (the code it runs is sm_89 or newer); not_implemented on sm_80/86 code
// (no FP8 mma: only fp16 P V runs there); unsupported_device where the
// build has no code for the device, or there is no such device.
inline StatusCode expected_default_dispatch(int ordinal) {
  cuda::DeviceInfo info;
  std::string error;
  if (!cuda::device_info(ordinal, &info, &error) || !cuda::build_supports(info.cc_major, info.cc_minor)) {
    return StatusCode::unsupported_device;
  }
  return cuda::device_code_arch(info.cc_major, info.cc_minor) >= 89 ? StatusCode::ok : StatusCode::not_implemented;
}

}  // namespace sage::test
