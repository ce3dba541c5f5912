// Dispatch of GPU attention calls: find_kernel picks the kernel family for
// the device and options (with its companions launch_kernel and
// kernel_workspace_bytes); later kernel families add their case there.
#include "cuda/device_dispatch.h"

#include <cuda_runtime.h>

#include <functional>
#include <string>

#include "api/validate.h"
#include "cuda/device_info.h"
#if SAGE_HAS_SM90
#include "cuda/sm90/qk_int8_pv_fp8_sm90.h"
#endif

namespace sage::detail {
namespace {

Status unsupported(std::string message) { return Status(StatusCode::unsupported_device, std::move(message)); }

// Device properties of the call's device, after checking that it exists and
// that this build can run on it.
Status supported_device_info(int ordinal, cuda::DeviceInfo* info) {
  std::string error;
  if (!cuda::device_info(ordinal, info, &error)) {
    return unsupported("no CUDA device " + std::to_string(ordinal) + ": " + error);
  }
  if (!cuda::build_supports(info->cc_major, info->cc_minor)) {
    return unsupported(info->arch() + " (" + info->name + ", device " + std::to_string(ordinal) +
                       ") is not supported by this build (built for " + cuda::built_archs_string() +
                       "; reconfigure with -DSAGE_CUDA_ARCHS=...)");
  }
  return Status::ok();
}

Status check_pointers_on_device(const AttentionArgs& args, const AttentionOptions& options) {
  const int ordinal = args.q.device;
  SAGE_RETURN_IF_ERROR(check_pointer_on_device("q", args.q.data, ordinal));
  SAGE_RETURN_IF_ERROR(check_pointer_on_device("k", args.k.data, ordinal));
  SAGE_RETURN_IF_ERROR(check_pointer_on_device("v", args.v.data, ordinal));
  SAGE_RETURN_IF_ERROR(check_pointer_on_device("out", args.out.data, ordinal));
  if (options.return_lse) SAGE_RETURN_IF_ERROR(check_pointer_on_device("lse", args.lse.data, ordinal));
  return Status::ok();
}

bool is_hopper(const cuda::DeviceInfo& device) { return device.cc_major == 9 && device.cc_minor == 0; }

// Whether this build has a kernel for the call on `device`.
Status find_kernel(const cuda::DeviceInfo& device, const AttentionArgs& args, const AttentionOptions& options) {
#if SAGE_HAS_SM90
  if (is_hopper(device)) {
    const std::string why = sm90::unsupported_reason(options, attention_dims(args, options.layout).head_dim);
    if (why.empty()) return Status::ok();
    return Status(StatusCode::not_implemented, why);
  }
#else
  (void)args, (void)options;
#endif
  return Status(StatusCode::not_implemented,
                "no GPU kernel for " + device.arch() + " is built yet (the sm90 kernel is the only one so far)");
}

// Everything a GPU call needs before it can launch.
Status check_gpu_call(const AttentionArgs& args, const AttentionOptions& options, cuda::DeviceInfo* info) {
  SAGE_RETURN_IF_ERROR(supported_device_info(args.q.device, info));
  SAGE_RETURN_IF_ERROR(check_pointers_on_device(args, options));
  SAGE_RETURN_IF_ERROR(check_gpu_kernel_limits(attention_dims(args, options.layout), options));
  return find_kernel(*info, args, options);
}

// Scratch bytes of the kernel find_kernel picked (quantized Q/K/V, scales).
std::size_t kernel_workspace_bytes(const cuda::DeviceInfo& device, const AttentionArgs& args,
                                   const AttentionOptions& options) {
#if SAGE_HAS_SM90
  if (is_hopper(device)) return sm90::workspace_bytes(args, options);
#endif
  (void)device, (void)args, (void)options;
  return 0;
}

// Runs the pre-pass into `workspace` (unless kernel_only) and the attention
// kernel on `stream`.
Status launch_kernel(const cuda::DeviceInfo& device, const AttentionArgs& args, const AttentionOptions& options,
                     void* workspace, Stream stream, bool kernel_only) {
#if SAGE_HAS_SM90
  if (is_hopper(device)) return sm90::run(args, options, workspace, stream, kernel_only);
#endif
  (void)args, (void)options, (void)workspace, (void)stream, (void)kernel_only;
  return Status(StatusCode::internal, "find_kernel accepted a call on " + device.arch() + " that has no launcher");
}

// Everything up to the launch, shared by the two entry points below.
Status checked_launch(const AttentionArgs& args, const AttentionOptions& options, void* workspace,
                      std::size_t workspace_bytes, Stream stream, bool kernel_only) {
  cuda::DeviceInfo device;
  SAGE_RETURN_IF_ERROR(check_gpu_call(args, options, &device));
  const std::size_t needed = kernel_workspace_bytes(device, args, options);
  if (workspace_bytes < needed) {
    return Status::invalid("workspace: " + std::to_string(workspace_bytes) + " bytes given, " +
                           std::to_string(needed) + " needed (see attention_workspace_size)");
  }
  if (needed > 0 && workspace == nullptr) return Status::invalid("workspace is NULL");
  // The pre-pass stores 16-byte vectors and TMA reads the buffers it carves.
  if (needed > 0) {
    if (reinterpret_cast<std::uintptr_t>(workspace) % 16 != 0) {
      return Status::invalid("workspace: must be 16-byte aligned (cudaMalloc and PyTorch allocations are)");
    }
    SAGE_RETURN_IF_ERROR(check_pointer_on_device("workspace", workspace, args.q.device));
  }
  return run_on_device(args.q.device,
                       [&] { return launch_kernel(device, args, options, workspace, stream, kernel_only); });
}

}  // namespace

// A kernel that reads memory the GPU cannot reach crashes (or reads another
// GPU's memory through peer access by accident), so the data pointers are
// checked against the tensors' device before anything launches.
Status check_pointer_on_device(const char* name, const void* data, int ordinal) {
  cudaPointerAttributes attributes{};
  const cudaError_t err = cudaPointerGetAttributes(&attributes, data);
  if (err != cudaSuccess) {
    (void)cudaGetLastError();
    return Status::invalid(std::string(name) + ": cannot query the data pointer: " + cudaGetErrorString(err));
  }
  const std::string tensor_device = "the tensor's device is GPU " + std::to_string(ordinal);
  switch (attributes.type) {
    case cudaMemoryTypeDevice:
      if (attributes.device == ordinal) return Status::ok();
      return Status::invalid(std::string(name) + ": data is memory of GPU " + std::to_string(attributes.device) +
                             ", but " + tensor_device);
    case cudaMemoryTypeManaged:
    case cudaMemoryTypeHost:  // pinned host memory, mapped into the device's address space
      return Status::ok();
    case cudaMemoryTypeUnregistered:
    default: {
      // Plain (pageable) host memory: readable only where the GPU shares the
      // host's page tables (HMM/ATS).
      int pageable_access = 0;
      if (cudaDeviceGetAttribute(&pageable_access, cudaDevAttrPageableMemoryAccess, ordinal) != cudaSuccess) {
        (void)cudaGetLastError();
      }
      if (pageable_access != 0) return Status::ok();
      return Status::invalid(std::string(name) + ": data is host memory that GPU " + std::to_string(ordinal) +
                             " cannot read, but " + tensor_device + " (use device = -1 for host tensors)");
    }
  }
}

Status run_on_device(int ordinal, const std::function<Status()>& launch) {
  int previous = -1;
  if (cudaGetDevice(&previous) != cudaSuccess) previous = -1;
  if (previous != ordinal && cudaSetDevice(ordinal) != cudaSuccess) {
    return Status(StatusCode::cuda_error, "cudaSetDevice(" + std::to_string(ordinal) + ") failed");
  }
  const Status st = launch();
  if (previous >= 0 && previous != ordinal) cudaSetDevice(previous);
  return st;
}

Status check_device_supported(int ordinal) {
  cuda::DeviceInfo info;
  return supported_device_info(ordinal, &info);
}

Status gpu_workspace_size(const AttentionArgs& args, const AttentionOptions& options, std::size_t* bytes) {
  cuda::DeviceInfo device;
  SAGE_RETURN_IF_ERROR(check_gpu_call(args, options, &device));
  *bytes = kernel_workspace_bytes(device, args, options);
  return Status::ok();
}

Status gpu_attention_forward(const AttentionArgs& args, const AttentionOptions& options, void* workspace,
                             std::size_t workspace_bytes, Stream stream) {
  return checked_launch(args, options, workspace, workspace_bytes, stream, false);
}

Status gpu_attention_kernel_only(const AttentionArgs& args, const AttentionOptions& options, void* workspace,
                                 std::size_t workspace_bytes, Stream stream) {
  SAGE_RETURN_IF_ERROR(validate_attention_args(args, options));
  return checked_launch(args, options, workspace, workspace_bytes, stream, true);
}

}  // namespace sage::detail
