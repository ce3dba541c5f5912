// Entry points for the language bindings (python/src), next to the public
// C++ API (sage/attention.h).
#pragma once

#include <cstddef>

#include "cuda/device_dispatch.h"
#include "sage/attention.h"

namespace sage::detail {

// attention_forward for a binding whose GPU tensors and workspace are a
// framework's device allocations (PyTorch CUDA tensors): the same
// validation, without the driver queries of where each pointer lives
// (PointerOrigin::framework_tensors; ~5 us of a call's host time).
Status attention_forward_of_framework_tensors(const AttentionArgs& args, const AttentionOptions& options,
                                              void* workspace, std::size_t workspace_bytes, Stream stream);

// The same with the workspace taken from the framework's allocator once the
// call is validated and its size known: one validation pass per call, and no
// size query before it (the PyTorch binding, python/src/torch_calls.cpp).
Status attention_forward_of_framework_tensors(const AttentionArgs& args, const AttentionOptions& options,
                                              const WorkspaceAllocator& allocator, Stream stream);

}  // namespace sage::detail
