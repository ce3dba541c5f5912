// Dispatch of GPU attention calls: find_kernel picks the kernel family for
// the device and options (with its companions launch_kernel and
// kernel_workspace_bytes).
//
// Families, in order of preference:
//   sm90  wgmma + TMA (src/cuda/sm90): compute capability 9.0 with 90a code;
//   mma   mma.sync (src/cuda/mma): any device whose code in this build is
//         sm_80 or newer (Ampere, Ada, Hopper as a fallback, sm_120); FP8 PV
//         needs sm_89 code and an sm_89+ device.
// The environment variable SAGE_FORCE_KERNEL=mma (or =sm90) restricts the
// choice to one family: tests use it to run the mma kernels on a Hopper GPU.
#include "cuda/device_dispatch.h"

#include <cuda_runtime.h>

#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>

#include "api/validate.h"
#include "cuda/device_info.h"
#if SAGE_HAS_SM90
#include "cuda/sm90/qk_int8_pv_fp8_sm90.h"
#endif
#if SAGE_HAS_MMA
#include "cuda/mma/mma_forward.h"
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

[[maybe_unused]] bool is_hopper(const cuda::DeviceInfo& device) {
  return device.cc_major == 9 && device.cc_minor == 0;
}

enum class Family { sm90, mma };

// SAGE_FORCE_KERNEL: "mma" or "sm90" limits the dispatch to that family;
// unset or empty: no limit. Read per call (cheap next to the pointer
// queries), so a test can switch it between calls.
struct FamilyFilter {
  bool sm90 = true, mma = true;
  std::string note;  // why a family is excluded, for error messages
};
FamilyFilter family_filter() {
  FamilyFilter f;
  const char* env = std::getenv("SAGE_FORCE_KERNEL");
  if (env == nullptr || *env == '\0') return f;
  if (std::strcmp(env, "mma") == 0) {
    f.sm90 = false;
    f.note = " (SAGE_FORCE_KERNEL=mma excludes the sm90 kernel)";
  } else if (std::strcmp(env, "sm90") == 0) {
    f.mma = false;
    f.note = " (SAGE_FORCE_KERNEL=sm90 excludes the mma.sync kernels)";
  }
  return f;
}

// Picks the family that runs the call on `device`, or says why none can.
Status find_kernel(const cuda::DeviceInfo& device, const AttentionArgs& args, const AttentionOptions& options,
                   Family* family) {
  [[maybe_unused]] const std::int64_t head_dim = attention_dims(args, options.layout).head_dim;
  [[maybe_unused]] const FamilyFilter filter = family_filter();
  std::string why;
  auto add_reason = [&why](const std::string& family_name, const std::string& reason) {
    why += (why.empty() ? "" : "; ") + family_name + ": " + reason;
  };
#if SAGE_HAS_SM90
  if (is_hopper(device) && filter.sm90) {
    const std::string reason = sm90::unsupported_reason(options, head_dim);
    if (reason.empty()) {
      *family = Family::sm90;
      return Status::ok();
    }
    add_reason("sm90 kernel", reason);
  }
#endif
#if SAGE_HAS_MMA
  if (filter.mma) {
    const int code_arch = cuda::device_code_arch(device.cc_major, device.cc_minor);
    if (code_arch >= 80) {
      mma::MmaCapabilities caps;
      caps.fp8_mma = device.cc_major * 10 + device.cc_minor >= 89 && code_arch >= 89;
      const std::string reason = mma::unsupported_reason(options, head_dim, caps);
      if (reason.empty()) {
        *family = Family::mma;
        return Status::ok();
      }
      add_reason("mma.sync kernels", reason);
    } else {
      add_reason("mma.sync kernels", "this build has no sm_80+ code for " + device.arch());
    }
  }
#endif
  (void)options, (void)family;
  if (why.empty()) why = "no GPU kernel family of this build runs on " + device.arch();
  return Status(StatusCode::not_implemented, why + filter.note);
}

// Everything a GPU call needs before it can launch.
Status check_gpu_call(const AttentionArgs& args, const AttentionOptions& options, cuda::DeviceInfo* info,
                      Family* family, PointerOrigin origin = PointerOrigin::caller) {
  SAGE_RETURN_IF_ERROR(supported_device_info(args.q.device, info));
  if (origin == PointerOrigin::caller) SAGE_RETURN_IF_ERROR(check_pointers_on_device(args, options));
  SAGE_RETURN_IF_ERROR(check_gpu_kernel_limits(attention_dims(args, options.layout), options));
  return find_kernel(*info, args, options, family);
}

// Whether the dispatch gives a valid call to the sm90 kernel; *device: the
// device it runs on.
[[maybe_unused]] bool takes_sm90_kernel(const AttentionArgs& args, const AttentionOptions& options,
                                        cuda::DeviceInfo* device) {
  Family family{};
  return check_gpu_call(args, options, device, &family).is_ok() && family == Family::sm90;
}

// Scratch bytes of the family find_kernel picked (quantized Q/K/V, scales).
std::size_t kernel_workspace_bytes(Family family, const AttentionArgs& args, const AttentionOptions& options) {
  switch (family) {
#if SAGE_HAS_SM90
    case Family::sm90: return sm90::workspace_bytes(args, options);
#endif
#if SAGE_HAS_MMA
    case Family::mma: return mma::workspace_bytes(args, options);
#endif
    default: break;
  }
  (void)args, (void)options;
  return 0;
}

// Runs the pre-pass into `workspace` (unless kernel_only) and the attention
// kernel on `stream`.
Status launch_kernel(Family family, const cuda::DeviceInfo& device, const AttentionArgs& args,
                     const AttentionOptions& options, void* workspace, Stream stream, bool kernel_only) {
  switch (family) {
#if SAGE_HAS_SM90
    case Family::sm90: return sm90::run(args, options, device, workspace, stream, kernel_only);
#endif
#if SAGE_HAS_MMA
    case Family::mma: return mma::run(args, options, workspace, stream, kernel_only);
#endif
    default: break;
  }
  (void)device, (void)args, (void)options, (void)workspace, (void)stream, (void)kernel_only;
  return Status(StatusCode::internal, "find_kernel accepted a call whose family has no launcher in this build");
}

// Everything up to the launch, shared by the entry points below. With an
// allocator, the workspace comes from it, sized by the call.
Status checked_launch(const AttentionArgs& args, const AttentionOptions& options, void* workspace,
                      std::size_t workspace_bytes, const WorkspaceAllocator* allocator, Stream stream,
                      bool kernel_only, PointerOrigin origin) {
  cuda::DeviceInfo device;
  Family family{};
  SAGE_RETURN_IF_ERROR(check_gpu_call(args, options, &device, &family, origin));
  const std::size_t needed = kernel_workspace_bytes(family, args, options);
  if (allocator != nullptr && needed > 0) {
    workspace = allocator->allocate(needed, allocator->context);
    if (workspace == nullptr) {
      return Status(StatusCode::out_of_memory,
                    "workspace: the allocator could not provide " + std::to_string(needed) + " bytes");
    }
    workspace_bytes = needed;
  }
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
    if (origin == PointerOrigin::caller) {
      SAGE_RETURN_IF_ERROR(check_pointer_on_device("workspace", workspace, args.q.device));
    }
  }
  return run_on_device(args.q.device,
                       [&] { return launch_kernel(family, device, args, options, workspace, stream, kernel_only); });
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

Status gpu_kernel_family(const AttentionArgs& args, const AttentionOptions& options, std::string* family_name) {
  cuda::DeviceInfo device;
  Family family{};
  SAGE_RETURN_IF_ERROR(check_gpu_call(args, options, &device, &family));
  *family_name = family == Family::sm90 ? "sm90" : "mma";
  return Status::ok();
}

Sm90Paths gpu_sm90_paths(const AttentionArgs& args, const AttentionOptions& options) {
  Sm90Paths paths;
#if SAGE_HAS_SM90
  cuda::DeviceInfo device;
  if (takes_sm90_kernel(args, options, &device)) {
    paths.q_in_kernel = sm90::quantizes_q_in_kernel(args, options);
    paths.kv_in_clusters = sm90::quantizes_kv_in_clusters(args, options, device.sm_count);
    const quant::KvHeadJobShape head_jobs = sm90::kv_head_job_shape(args, options, device.sm_count);
    paths.kv_head_job_ctas = head_jobs.ctas;
    paths.kv_head_jobs_per_sm = head_jobs.per_sm;
    paths.kv_head_jobs = paths.kv_head_job_ctas > 0;
    paths.out_by_tma = sm90::stores_output_by_tma(args, options);
    paths.claims_items = sm90::claims_work_items(args, options, device.sm_count);
    paths.concurrent_heads = sm90::concurrent_prepass_heads(args, options, device.sm_count);
  }
#else
  (void)args, (void)options;
#endif
  return paths;
}

Status gpu_workspace_size(const AttentionArgs& args, const AttentionOptions& options, std::size_t* bytes) {
  cuda::DeviceInfo device;
  Family family{};
  SAGE_RETURN_IF_ERROR(check_gpu_call(args, options, &device, &family));
  *bytes = kernel_workspace_bytes(family, args, options);
  return Status::ok();
}

Status gpu_attention_forward(const AttentionArgs& args, const AttentionOptions& options, void* workspace,
                             std::size_t workspace_bytes, Stream stream, PointerOrigin origin) {
  return checked_launch(args, options, workspace, workspace_bytes, nullptr, stream, false, origin);
}

Status gpu_attention_forward_allocating(const AttentionArgs& args, const AttentionOptions& options,
                                        const WorkspaceAllocator& allocator, Stream stream) {
  return checked_launch(args, options, nullptr, 0, &allocator, stream, false, PointerOrigin::framework_tensors);
}

Status gpu_attention_kernel_only(const AttentionArgs& args, const AttentionOptions& options, void* workspace,
                                 std::size_t workspace_bytes, Stream stream) {
  SAGE_RETURN_IF_ERROR(validate_attention_args(args, options));
  return checked_launch(args, options, workspace, workspace_bytes, nullptr, stream, true, PointerOrigin::caller);
}

}  // namespace sage::detail
