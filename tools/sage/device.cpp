#include "device.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <utility>

#include "cuda/device_dispatch.h"
#include "cuda/device_info.h"

namespace sage_cli {
namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

sage::Status cuda_status(cudaError_t err, const std::string& what) {
  if (err == cudaSuccess) return sage::Status::ok();
  (void)cudaGetLastError();
  return sage::Status(sage::StatusCode::cuda_error, what + ": " + cudaGetErrorString(err));
}

// Device memory that frees itself.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  DeviceBuffer(DeviceBuffer&& other) noexcept : data_(std::exchange(other.data_, nullptr)) {}
  ~DeviceBuffer() {
    if (data_ != nullptr) cudaFree(data_);
  }

  sage::Status allocate(std::size_t bytes) {
    if (bytes == 0) return sage::Status::ok();
    return cuda_status(cudaMalloc(&data_, bytes), "cudaMalloc(" + std::to_string(bytes) + " bytes)");
  }
  void* get() const { return data_; }

 private:
  void* data_ = nullptr;
};

// A host tensor's twin on the GPU.
struct DeviceTensor {
  DeviceBuffer buffer;
  sage::TensorView view;
};

sage::Status upload(const HostTensor& host, int ordinal, DeviceTensor* device) {
  const std::size_t bytes = host.storage.size();
  if (auto s = device->buffer.allocate(bytes); !s) return s;
  device->view = host.view;
  device->view.data = device->buffer.get();
  device->view.device = ordinal;
  return cuda_status(cudaMemcpy(device->buffer.get(), host.storage.data(), bytes, cudaMemcpyHostToDevice),
                     "cudaMemcpy to the GPU");
}

sage::Status download(const DeviceTensor& device, HostTensor* host) {
  return cuda_status(
      cudaMemcpy(host->storage.data(), device.buffer.get(), host->storage.size(), cudaMemcpyDeviceToHost),
      "cudaMemcpy from the GPU");
}

struct DeviceTensors {
  DeviceTensor q, k, v, out;
};

sage::Status upload_all(const HostTensors& host, int ordinal, DeviceTensors* device) {
  for (auto [from, to] : {std::pair{&host.q, &device->q}, std::pair{&host.k, &device->k},
                          std::pair{&host.v, &device->v}, std::pair{&host.out, &device->out}}) {
    if (auto s = upload(*from, ordinal, to); !s) return s;
  }
  return sage::Status::ok();
}

sage::AttentionArgs args_of(const DeviceTensors& t) { return {t.q.view, t.k.view, t.v.view, t.out.view, {}}; }
sage::AttentionArgs args_of(const HostTensors& t) { return {t.q.view, t.k.view, t.v.view, t.out.view, {}}; }

double median(std::vector<double> values) {
  std::sort(values.begin(), values.end());
  return values[values.size() / 2];
}

CallResult run_on_host(const ProblemSize& size, const sage::ref::Inputs& inputs,
                       const sage::AttentionOptions& options) {
  HostTensors tensors = make_host_tensors(size, inputs);
  CallResult result;
  const Clock::time_point start = Clock::now();
  result.status = sage::attention_forward(args_of(tensors), options, nullptr, 0, nullptr);
  result.seconds = seconds_since(start);
  if (result.status) result.out = load_floats(tensors.out);
  return result;
}

CallResult run_on_gpu(int ordinal, const ProblemSize& size, const sage::ref::Inputs& inputs,
                      const sage::AttentionOptions& options, int timed_calls) {
  CallResult result;
  const auto failed = [&](sage::Status s) {
    result.status = std::move(s);
    return result;
  };
  if (auto s = cuda_status(cudaSetDevice(ordinal), "cudaSetDevice"); !s) return failed(s);
  HostTensors host = make_host_tensors(size, inputs);
  DeviceTensors device;
  if (auto s = upload_all(host, ordinal, &device); !s) return failed(s);
  const sage::AttentionArgs args = args_of(device);

  std::size_t workspace_bytes = 0;
  if (auto s = sage::attention_workspace_size(args, options, &workspace_bytes); !s) return failed(s);
  DeviceBuffer workspace;
  if (auto s = workspace.allocate(workspace_bytes); !s) return failed(s);

  // One warm-up call (module loading, clocks), then the timed calls, each
  // timed to completion on the default stream.
  std::vector<double> times;
  for (int call = 0; call <= timed_calls; ++call) {
    const Clock::time_point start = Clock::now();
    if (auto s = sage::attention_forward(args, options, workspace.get(), workspace_bytes, nullptr); !s) {
      return failed(s);
    }
    if (auto s = cuda_status(cudaDeviceSynchronize(), "attention kernel"); !s) return failed(s);
    if (call > 0) times.push_back(seconds_since(start));
  }
  if (auto s = download(device.out, &host.out); !s) return failed(s);
  result.out = load_floats(host.out);
  result.seconds = median(times);
  return result;
}

}  // namespace

void add_device_flag(ArgParser& parser) {
  parser.add_option("--device", "", "auto|cpu|gpu",
                    "where to compute (default auto: gpu when one is present\nand supported by this build, else cpu)");
}

std::string gpu_absence_reason() {
  const sage::cuda::DeviceCount devices = sage::cuda::device_count();
  if (!devices.error.empty()) return "no CUDA GPU found: " + devices.error;
  if (devices.count == 0) return "no CUDA GPU found: the CUDA runtime reports 0 devices";
  return "";
}

DeviceChoice choose_device(const ArgParser& parser) {
  DeviceChoice choice;
  const std::string wanted = parser.get_choice("--device", "auto", {"auto", "cpu", "gpu"});
  choice.automatic = wanted == "auto";
  if (wanted == "cpu") return choice;

  sage::cuda::DeviceInfo info;
  std::string error;
  if (!sage::cuda::device_info(0, &info, &error)) {
    // An explicit --device gpu still goes through the library, which then
    // reports the missing device as a Status like any other caller sees it.
    choice.gpu = !choice.automatic;
    choice.note = gpu_absence_reason();
    return choice;
  }
  choice.gpu_label = "GPU 0 (" + info.name + ", " + info.arch() + ")";
  if (choice.automatic && !sage::cuda::build_supports(info.cc_major, info.cc_minor)) {
    choice.note = choice.gpu_label + " is not supported by this build (built for " +
                  sage::cuda::built_archs_string() + ")";
    return choice;
  }
  choice.gpu = true;
  return choice;
}

sage::Status probe_gpu(int ordinal, const ProblemSize& size, const sage::AttentionOptions& options) {
  // A missing device or driver: the library's own words for it.
  if (auto s = sage::detail::check_device_supported(ordinal); !s) return s;
  if (auto s = cuda_status(cudaSetDevice(ordinal), "cudaSetDevice"); !s) return s;
  // Uninitialized tensors are fine: asking for the workspace reads no data.
  DeviceTensors device;
  for (auto [layout, tensor] : {std::pair{q_layout(size), &device.q}, std::pair{kv_layout(size), &device.k},
                                std::pair{kv_layout(size), &device.v}, std::pair{q_layout(size), &device.out}}) {
    if (auto s = tensor->buffer.allocate(dense_bytes(layout)); !s) return s;
    tensor->view = layout;
    tensor->view.data = tensor->buffer.get();
    tensor->view.device = ordinal;
  }
  std::size_t bytes = 0;
  sage::AttentionOptions call_options = options;  // the call as it will run: the size says whether it is causal
  call_options.causal = size.causal;
  return sage::attention_workspace_size(args_of(device), call_options, &bytes);
}

CallResult run_attention(const DeviceChoice& device, const ProblemSize& size, const sage::ref::Inputs& inputs,
                         const sage::AttentionOptions& options, int timed_calls) {
  if (!device.gpu) return run_on_host(size, inputs, options);
  return run_on_gpu(device.ordinal, size, inputs, options, std::max(1, timed_calls));
}

}  // namespace sage_cli
