// merge_attention_states (include/sage/merge.h) inside the library: the
// per-row arithmetic, shared by the host loop (api/merge.cpp) and the CUDA
// kernel (merge_states.cu) so that both follow one formula, and the kernel's
// launcher.
#pragma once

#include <cmath>

#include "sage/merge.h"

#if !defined(SAGE_HD)
#if defined(__CUDACC__)
#define SAGE_HD __host__ __device__
#else
#define SAGE_HD
#endif
#endif

namespace sage::detail {

// How one row's two parts combine: out = a * out_a + b * out_b; lse is the
// merged log-sum-exp.
struct MergeWeights {
  float a, b, lse;
};

// lse = log(exp(lse_a) + exp(lse_b)), computed after shifting by the larger
// of the two so that no exp overflows (the larger term is exp(0) = 1, the
// sum lies in [1, 2]). Both parts empty (-inf): weights 0 and lse -inf
// rather than the NaN of -inf - -inf. One part empty: weights exactly 1 and
// 0 and lse exactly the other part's. A NaN lse gives NaN weights and lse.
SAGE_HD inline MergeWeights merge_weights(float lse_a, float lse_b) {
  if (lse_a == -INFINITY && lse_b == -INFINITY) return {0.f, 0.f, -INFINITY};
  const float m = fmaxf(lse_a, lse_b);
  const float ea = expf(lse_a - m), eb = expf(lse_b - m);
  const float sum = ea + eb;
  return {ea / sum, eb / sum, m + logf(sum)};
}

// One output element. A part with weight 0 (no visible key, or a weight
// below the fp32 range) is skipped rather than multiplied, so whatever its
// out holds (NaN included) cannot leak in, and a row with one empty part
// copies the other part exactly. fmaf: one rounding, the same on the host
// and on the device.
SAGE_HD inline float merge_value(float a, float b, const MergeWeights& w) {
  if (w.b == 0.f) return w.a == 0.f ? 0.f : w.a * a;
  if (w.a == 0.f) return w.b * b;
  return fmaf(w.a, a, w.b * b);
}

// Launches the merge of validated, non-empty GPU tensors on `stream`, on the
// current device (the caller makes it the tensors' device). Asynchronous: no
// allocation, no synchronization. cuda_error with the runtime's message when
// the launch fails.
Status launch_merge_states(const MergeArgs& args, TensorLayout layout, Stream stream);

}  // namespace sage::detail
