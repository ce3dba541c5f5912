// The CUDA kernel of merge_attention_states: a memory-bound pass over
// out_a, out_b -> out (and lse_a, lse_b -> lse).
//
// Each block works on tiles of whole rows (a row = the head_dim elements of
// one (batch, head, token)):
//   1. one thread per row of the tile reads the row's two LSEs, computes its
//      two weights once (merge_weights), writes the merged lse and leaves the
//      weights and the row's element offsets in shared memory;
//   2. all threads stream the tile's elements, consecutive threads on
//      consecutive 16-byte vectors of a row (coalesced), and write out.
// In-place merges (out == out_a, lse == lse_a) are safe: every element and
// every lse entry is read and then written by one thread, and no other
// thread reads it.
//
// Vectors of 16 bytes are used when the three out views allow them (16-byte
// aligned rows, head_dim a multiple of the vector width); otherwise the same
// kernel runs with one element per access. Offsets are 64-bit throughout.
#include "cuda/merge_states.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <string>

#include "api/host_forward.h"

namespace sage::detail {
namespace {

constexpr int kThreads = 256;
constexpr int kMaxTileRows = kThreads;           // step 1 gives each row a thread
constexpr int kTargetTileVectors = 4 * kThreads;  // step 2: about 4 vectors per thread in flight
constexpr int kVectorBytes = 16;

// Element offsets of row (b, h, n) of a view in [B, H, N, ...] order.
struct RowStrides {
  std::int64_t b = 0, h = 0, n = 0;
  __device__ std::int64_t offset(std::int64_t bi, std::int64_t hi, std::int64_t ni) const {
    return bi * b + hi * h + ni * n;
  }
};

struct MergeParams {
  const void* out_a = nullptr;
  const void* out_b = nullptr;
  void* out = nullptr;
  const float* lse_a = nullptr;
  const float* lse_b = nullptr;
  float* lse = nullptr;
  RowStrides out_a_rows, out_b_rows, out_rows, lse_a_rows, lse_b_rows, lse_rows;
  std::int64_t heads = 0, tokens = 0, rows = 0;
  std::int64_t vectors_per_row = 0;  // head_dim / elements per access
  std::int64_t tiles = 0;
  int rows_per_tile = 0;
};

// What step 2 needs of one row.
struct RowPlan {
  std::int64_t a, b, out;  // element offsets of the row in out_a, out_b, out
  MergeWeights w;
};

template <class T>
__device__ __forceinline__ float to_float(T x);
template <>
__device__ __forceinline__ float to_float(float x) { return x; }
template <>
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
template <>
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

// Round to nearest even, as the host path (numerics/formats.h) does.
template <class T>
__device__ __forceinline__ T from_float(float x);
template <>
__device__ __forceinline__ float from_float(float x) { return x; }
template <>
__device__ __forceinline__ __half from_float(float x) { return __float2half_rn(x); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float(float x) { return __float2bfloat16_rn(x); }

// kWidth consecutive elements moved by one load or store (16 bytes, or one
// element on the fallback path).
template <class T, int kWidth>
struct alignas(sizeof(T) * kWidth) Pack {
  T v[kWidth];
};

// Step 1 for one row: merges its lse and returns its plan. The merged lse
// is written by the one thread that read lse_a of this row, which is what
// keeps the in-place merge (lse == lse_a) race-free.
__device__ RowPlan merge_row_lse(const MergeParams& p, std::int64_t row) {
  const std::int64_t n = row % p.tokens, bh = row / p.tokens;
  const std::int64_t h = bh % p.heads, b = bh / p.heads;
  const MergeWeights w =
      merge_weights(p.lse_a[p.lse_a_rows.offset(b, h, n)], p.lse_b[p.lse_b_rows.offset(b, h, n)]);
  p.lse[p.lse_rows.offset(b, h, n)] = w.lse;
  return {p.out_a_rows.offset(b, h, n), p.out_b_rows.offset(b, h, n), p.out_rows.offset(b, h, n), w};
}

// Where a thread is in step 2's walk over a tile's (row, vector) pairs in
// row-major order, and how far it moves per step (kThreads vectors), kept as
// a row and column so that the loop needs no division.
struct TileWalk {
  int row = 0, step_rows = 0;
  std::int64_t col = 0, step_cols = 0;
};

__device__ TileWalk first_position(std::int64_t vectors_per_row) {
  const std::int64_t t = threadIdx.x;
  TileWalk w;
  w.row = static_cast<int>(t / vectors_per_row);
  w.col = t % vectors_per_row;
  w.step_rows = static_cast<int>(kThreads / vectors_per_row);
  w.step_cols = kThreads % vectors_per_row;
  return w;
}

// Step 2: this thread's vectors of the tile.
template <class T, int kWidth>
__device__ void merge_tile_elements(const MergeParams& p, const RowPlan* plan, int rows_in_tile, TileWalk w) {
  using V = Pack<T, kWidth>;
  const T* out_a = static_cast<const T*>(p.out_a);
  const T* out_b = static_cast<const T*>(p.out_b);
  T* out = static_cast<T*>(p.out);
  while (w.row < rows_in_tile) {
    const RowPlan& r = plan[w.row];
    const std::int64_t e = w.col * kWidth;
    const V a = *reinterpret_cast<const V*>(out_a + r.a + e);
    const V b = *reinterpret_cast<const V*>(out_b + r.b + e);
    V o;
#pragma unroll
    for (int i = 0; i < kWidth; ++i) o.v[i] = from_float<T>(merge_value(to_float(a.v[i]), to_float(b.v[i]), r.w));
    *reinterpret_cast<V*>(out + r.out + e) = o;
    w.row += w.step_rows;
    w.col += w.step_cols;
    if (w.col >= p.vectors_per_row) {
      w.col -= p.vectors_per_row;
      ++w.row;
    }
  }
}

template <class T, int kWidth>
__global__ void __launch_bounds__(kThreads) merge_states_kernel(const MergeParams p) {
  __shared__ RowPlan plan[kMaxTileRows];
  // head_dim 0: only the lse is merged.
  const bool has_elements = p.vectors_per_row > 0;
  const TileWalk start = has_elements ? first_position(p.vectors_per_row) : TileWalk{};
  for (std::int64_t tile = blockIdx.x; tile < p.tiles; tile += gridDim.x) {
    const std::int64_t row0 = tile * p.rows_per_tile;
    const int rows_in_tile = static_cast<int>(min(static_cast<std::int64_t>(p.rows_per_tile), p.rows - row0));
    if (static_cast<int>(threadIdx.x) < rows_in_tile) plan[threadIdx.x] = merge_row_lse(p, row0 + threadIdx.x);
    __syncthreads();
    if (has_elements) merge_tile_elements<T, kWidth>(p, plan, rows_in_tile, start);
    __syncthreads();  // the next tile overwrites the plan
  }
}

// ---------------------------------------------------------------- host side

RowStrides row_strides(const TensorView& bhn) { return {bhn.stride[0], bhn.stride[1], bhn.stride[2]}; }

// Whether every row of a [B, H, N, D] view starts on a 16-byte boundary,
// i.e. the base is aligned and each row stride is a whole number of vectors
// (strides of size-1 dimensions are never applied).
bool rows_are_vector_aligned(const TensorView& bhnd, int width) {
  if (reinterpret_cast<std::uintptr_t>(bhnd.data) % kVectorBytes != 0) return false;
  for (int d = 0; d < 3; ++d) {
    if (bhnd.shape[d] > 1 && bhnd.stride[d] % width != 0) return false;
  }
  return true;
}

MergeParams make_params(const MergeArgs& args, TensorLayout layout) {
  const TensorView a = as_bhnd(args.out_a, layout), b = as_bhnd(args.out_b, layout), o = as_bhnd(args.out, layout);
  MergeParams p;
  p.out_a = a.data;
  p.out_b = b.data;
  p.out = o.data;
  p.lse_a = static_cast<const float*>(args.lse_a.data);
  p.lse_b = static_cast<const float*>(args.lse_b.data);
  p.lse = static_cast<float*>(args.lse.data);
  p.out_a_rows = row_strides(a);
  p.out_b_rows = row_strides(b);
  p.out_rows = row_strides(o);
  p.lse_a_rows = row_strides(args.lse_a);
  p.lse_b_rows = row_strides(args.lse_b);
  p.lse_rows = row_strides(args.lse);
  p.heads = a.shape[1];
  p.tokens = a.shape[2];
  p.rows = a.shape[0] * a.shape[1] * a.shape[2];
  return p;
}

template <class T, int kWidth>
Status launch(MergeParams p, std::int64_t head_dim, Stream stream) {
  p.vectors_per_row = head_dim / kWidth;
  // Tiles of about kTargetTileVectors vectors (at least one row, at most
  // kMaxTileRows rows).
  const std::int64_t rows_for_target = p.vectors_per_row > 0 ? kTargetTileVectors / p.vectors_per_row : kMaxTileRows;
  p.rows_per_tile = static_cast<int>(std::clamp<std::int64_t>(rows_for_target, 1, kMaxTileRows));
  p.tiles = (p.rows + p.rows_per_tile - 1) / p.rows_per_tile;
  const auto blocks = static_cast<unsigned>(std::min<std::int64_t>(p.tiles, INT_MAX));
  merge_states_kernel<T, kWidth><<<blocks, kThreads, 0, stream>>>(p);
  const cudaError_t err = cudaGetLastError();
  if (err == cudaSuccess) return Status::ok();
  return Status(StatusCode::cuda_error,
                std::string("merge_attention_states: kernel launch failed: ") + cudaGetErrorString(err));
}

template <class T>
Status launch_for_dtype(const MergeArgs& args, TensorLayout layout, Stream stream) {
  constexpr int kVectorWidth = kVectorBytes / static_cast<int>(sizeof(T));
  const std::int64_t head_dim = args.out_a.shape[3];
  const bool vectors = head_dim % kVectorWidth == 0 &&
                       rows_are_vector_aligned(as_bhnd(args.out_a, layout), kVectorWidth) &&
                       rows_are_vector_aligned(as_bhnd(args.out_b, layout), kVectorWidth) &&
                       rows_are_vector_aligned(as_bhnd(args.out, layout), kVectorWidth);
  const MergeParams p = make_params(args, layout);
  return vectors ? launch<T, kVectorWidth>(p, head_dim, stream) : launch<T, 1>(p, head_dim, stream);
}

}  // namespace

Status launch_merge_states(const MergeArgs& args, TensorLayout layout, Stream stream) {
  switch (args.out_a.dtype) {
    case DType::f32: return launch_for_dtype<float>(args, layout, stream);
    case DType::f16: return launch_for_dtype<__half>(args, layout, stream);
    case DType::bf16: return launch_for_dtype<__nv_bfloat16>(args, layout, stream);
    default: return Status(StatusCode::internal, "launch_merge_states: validation let an unsupported dtype through");
  }
}

}  // namespace sage::detail
