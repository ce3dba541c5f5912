// Internal helpers around argument validation (the public entry point is
// sage::validate_attention_args in include/sage/attention.h).
//
// Validation is split in two on purpose:
//  - validate_attention_args: everything that is wrong whatever machine runs
//    the call (ranks, shapes, dtypes, strides, offsets, options, alignment of
//    GPU pointers). Returns invalid_argument.
//  - check_gpu_kernel_limits: what the GPU kernels *of this build* cannot do
//    yet (head dims above 128, sizes past their 32-bit indexing). Called at
//    dispatch, because
//    it changes as kernels land; returns not_implemented.
#pragma once

#include <cstdint>
#include <string>

#include "sage/attention.h"

// Returns early from a function that returns Status when `expr` fails.
#define SAGE_RETURN_IF_ERROR(expr)                  \
  do {                                              \
    ::sage::Status sage_status_ = (expr);           \
    if (!sage_status_.is_ok()) return sage_status_; \
  } while (0)

namespace sage::detail {

// Head dims the host emulation accepts.
inline constexpr std::int64_t kHostMinHeadDim = 1;
inline constexpr std::int64_t kHostMaxHeadDim = 256;
// NVFP4 microscaling groups 16 elements along head_dim (DESIGN.md section 1).
inline constexpr std::int64_t kNvfp4BlockSize = 16;
// Largest head dim the GPU kernels of this build take (smaller ones are
// zero-padded to 64 or 128 by the pre-pass).
inline constexpr std::int64_t kGpuMaxHeadDim = 128;
// Sizes the GPU kernels index with 32-bit integers and CUDA grid rows.
inline constexpr std::int64_t kGpuMaxTokens = (std::int64_t{1} << 31) - 256;
inline constexpr std::int64_t kGpuMaxBatchHeads = 65535;

// The problem sizes of one call, read from validated arguments.
struct AttentionDims {
  std::int64_t batch = 0, heads_q = 0, heads_kv = 0, nq = 0, nk = 0, head_dim = 0;
};

// Reads B, Hq, Hkv, Nq, Nk, D from q and k according to the layout. Only
// meaningful once validate_attention_args has accepted the arguments.
AttentionDims attention_dims(const AttentionArgs& args, TensorLayout layout);

// Limits of the GPU kernels compiled into this build (head dims with an
// instantiation). Returns not_implemented with a message naming q's
// head_dim when the kernels cannot run the problem.
Status check_gpu_kernel_limits(const AttentionDims& dims, const AttentionOptions& options);

// "[2, 32, 4096, 128]"
std::string shape_string(const TensorView& t);

}  // namespace sage::detail
