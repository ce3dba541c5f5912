// Where the `accuracy` and `run` commands compute: the CPU emulation (host
// tensors) or a GPU (device tensors), both through sage::attention_forward.
#pragma once

#include <string>
#include <vector>

#include "args.h"
#include "problem.h"
#include "sage/attention.h"

namespace sage_cli {

struct DeviceChoice {
  bool gpu = false;
  int ordinal = 0;         // CUDA device when gpu
  bool automatic = false;  // picked by us, not by --device
  std::string gpu_label;   // "GPU 0 (NVIDIA H100 80GB HBM3, sm_90)"
  std::string note;        // why the CPU was picked automatically
};

void add_device_flag(ArgParser& parser);
// --device cpu|gpu, or auto (the default): GPU 0 when present and supported by
// this build, else the CPU (with `note` saying why).
DeviceChoice choose_device(const ArgParser& parser);
// "no CUDA GPU found: <reason>" or "" when GPU `ordinal` exists.
std::string gpu_absence_reason();

// Checks that the GPU path can run this problem, without running it: the
// tensors are allocated on the device and attention_workspace_size is
// asked (it reports a missing kernel as not_implemented). `options.causal`
// is taken from `size`.
sage::Status probe_gpu(int ordinal, const ProblemSize& size, const sage::AttentionOptions& options);

struct CallResult {
  sage::Status status;
  std::vector<float> out;  // dense BHND
  double seconds = 0;      // median over the timed calls
};

// One attention call (or `timed_calls` of them after one warm-up call on a
// GPU) on inputs that are dense BHND floats representable in size.dtype.
CallResult run_attention(const DeviceChoice& device, const ProblemSize& size, const sage::ref::Inputs& inputs,
                         const sage::AttentionOptions& options, int timed_calls = 1);

}  // namespace sage_cli
