// The C++ entry points: validate, then route to the host emulation or to the
// GPU dispatch. This is the exception boundary of the library: whatever is
// thrown below (bad_alloc from a large host problem, a bug) comes back as a
// Status.
#include "api/binding_entry.h"
#include "api/guarded.h"
#include "api/host_forward.h"
#include "api/validate.h"
#include "cuda/device_dispatch.h"
#include "sage/attention.h"

namespace sage {

Status attention_workspace_size(const AttentionArgs& args, const AttentionOptions& options, std::size_t* bytes) {
  return detail::guarded("attention_workspace_size", [&]() -> Status {
    if (bytes == nullptr) return Status::invalid("bytes is NULL");
    *bytes = 0;
    SAGE_RETURN_IF_ERROR(validate_attention_args(args, options));
    if (args.q.on_host()) return Status::ok();  // the emulation allocates its own host memory
    return detail::gpu_workspace_size(args, options, bytes);
  });
}

namespace {

// Validation, then the host emulation (synchronous: no workspace, no
// stream) or `gpu_forward` for device tensors.
template <class GpuForward>
Status forward(const AttentionArgs& args, const AttentionOptions& options, const GpuForward& gpu_forward) {
  return detail::guarded("attention_forward", [&]() -> Status {
    SAGE_RETURN_IF_ERROR(validate_attention_args(args, options));
    if (args.q.on_host()) return detail::host_attention_forward(args, options);
    return gpu_forward();
  });
}

}  // namespace

Status attention_forward(const AttentionArgs& args, const AttentionOptions& options, void* workspace,
                         std::size_t workspace_bytes, Stream stream) {
  return forward(args, options, [&] {
    return detail::gpu_attention_forward(args, options, workspace, workspace_bytes, stream,
                                         detail::PointerOrigin::caller);
  });
}

Status detail::attention_forward_of_framework_tensors(const AttentionArgs& args, const AttentionOptions& options,
                                                      void* workspace, std::size_t workspace_bytes, Stream stream) {
  return forward(args, options, [&] {
    return detail::gpu_attention_forward(args, options, workspace, workspace_bytes, stream,
                                         detail::PointerOrigin::framework_tensors);
  });
}

Status detail::attention_forward_of_framework_tensors(const AttentionArgs& args, const AttentionOptions& options,
                                                      const WorkspaceAllocator& allocator, Stream stream) {
  return forward(args, options,
                 [&] { return detail::gpu_attention_forward_allocating(args, options, allocator, stream); });
}

}  // namespace sage
