// GPU side of the attention entry points: is there a device that this build
// can run on, and which kernel runs the (already validated) call.
#pragma once

#include <cstddef>
#include <functional>
#include <string>

#include "sage/attention.h"

namespace sage::detail {

// unsupported_device when GPU `ordinal` does not exist (or there is no
// driver) or this build has no device code for its architecture.
Status check_device_supported(int ordinal);

// invalid_argument naming `name` when `data` is memory that GPU `ordinal`
// cannot read (another GPU's memory, or pageable host memory on a GPU
// without HMM/ATS): a kernel reading it would crash, or read another GPU's
// memory through peer access by accident.
Status check_pointer_on_device(const char* name, const void* data, int ordinal);

// Runs `launch` with GPU `ordinal` as the current device and then restores
// the caller's: kernels run on the tensors' device, whatever the caller's
// current one is.
Status run_on_device(int ordinal, const std::function<Status()>& launch);

// The kernel family the dispatch picks for a call ("sm90" or "mma"), with
// the same errors as gpu_attention_forward: what the tests and tools use to
// check the choice without launching anything.
Status gpu_kernel_family(const AttentionArgs& args, const AttentionOptions& options, std::string* family);

// Which optional paths of the sm90 kernel a call takes (all false where the
// dispatch does not give the call to the sm90 kernel, or it is not built):
// tests use it to know which path a call takes.
struct Sm90Paths {
  bool q_in_kernel = false;     // Q quantized inside the attention kernel (sm90::quantizes_q_in_kernel)
  bool kv_in_clusters = false;  // K and V by the pre-pass's cluster kernel (sm90::quantizes_kv_in_clusters)
  bool kv_head_jobs = false;    // K and V by the pre-pass's head-jobs kernel (sm90::kv_head_job_shape)
  int kv_head_job_ctas = 0;     // and over how many CTAs (a cluster) each of its jobs runs
  int kv_head_jobs_per_sm = 0;  // and how many of its CTAs an SM holds
  bool out_by_tma = false;      // the output stored by TMA from shared memory (sm90::stores_output_by_tma)
  bool claims_items = false;    // causal work items claimed from a counter (sm90::claims_work_items)
  int concurrent_heads = 0;     // the concurrent pre-pass's first heads, 0: off (sm90::concurrent_prepass_heads)
};
Sm90Paths gpu_sm90_paths(const AttentionArgs& args, const AttentionOptions& options);

// Bytes of device workspace a GPU call needs. Same errors as
// gpu_attention_forward, so callers learn early that a call cannot run.
Status gpu_workspace_size(const AttentionArgs& args, const AttentionOptions& options, std::size_t* bytes);

// Where a GPU call's data pointers come from, which decides whether the
// dispatch asks the driver where each one lives (check_pointer_on_device,
// ~1 us per pointer).
enum class PointerOrigin {
  caller,           // raw pointers of a C or C++ caller: every one is checked
  framework_tensors  // the device memory of a framework's GPU tensors (PyTorch:
                     // a CUDA tensor's storage is on its device, and the
                     // workspace too), whose placement the framework guarantees
};

// Runs a validated call whose tensors are on a GPU.
Status gpu_attention_forward(const AttentionArgs& args, const AttentionOptions& options, void* workspace,
                             std::size_t workspace_bytes, Stream stream,
                             PointerOrigin origin = PointerOrigin::caller);

// A framework's device allocator, for callers that would otherwise ask
// for the workspace size first and validate the call twice: `allocate`
// returns `bytes` of device memory on the call's device (16-byte aligned,
// usable by work on the call's stream), or nullptr when it cannot. The
// memory must stay valid until the call has returned (a stream-ordered
// allocator, as PyTorch's caching allocator, may then reuse it for later
// work on the same stream).
struct WorkspaceAllocator {
  void* (*allocate)(std::size_t bytes, void* context) = nullptr;
  void* context = nullptr;
};

// gpu_attention_forward with a workspace of exactly the size the call
// needs, taken from `allocator` once the call is known to be valid (pointer
// origin: framework tensors).
Status gpu_attention_forward_allocating(const AttentionArgs& args, const AttentionOptions& options,
                                        const WorkspaceAllocator& allocator, Stream stream);

// Benchmarks only: runs the attention kernel of a call whose pre-pass
// already filled `workspace` (the same arguments as the previous
// gpu_attention_forward on it), so the kernel can be timed alone.
Status gpu_attention_kernel_only(const AttentionArgs& args, const AttentionOptions& options, void* workspace,
                                 std::size_t workspace_bytes, Stream stream);

}  // namespace sage::detail
