// Merging two partial attention results over disjoint key sets.
//
// Sequence-parallel attention (ring, Ulysses) splits the keys: each part
// returns (out_i, lse_i) for its keys only. The attention over all keys is
//
//   lse = log(exp(lse_a) + exp(lse_b))
//   out = exp(lse_a - lse) * out_a + exp(lse_b - lse) * out_b
//
// computed stably (shifted by max(lse_a, lse_b), in fp32). A row whose two
// parts are both fully masked (lse = -inf) gets out = 0 and lse = -inf,
// never NaN. A row with one fully masked part gets exactly the other part
// (its out rounded to the output dtype, which changes nothing, and its lse);
// the masked part's out is not used, whatever it holds. A NaN or +inf lse
// (a part that overflowed, whose out is not meaningful either) gives NaN.
//
// Shapes (layout HND; NHD swaps the tokens and heads dimensions of the
// outputs):
//   out_a, out_b, out [B, H, N, D]   f16, bf16 or f32 (all three the same),
//                                     any strides with a unit last stride
//   lse_a, lse_b, lse [B, H, N]       f32 natural log, any strides
// out/lse may be the very same views as out_a/lse_a (in-place merge); any
// other overlap between an output and an input, or between out and lse, is
// rejected with invalid_argument (overlap of the memory ranges the views
// span, so views that interleave without sharing an element count too).
// Tensors with no rows are accepted and nothing happens; with head_dim 0
// only lse is merged.
#pragma once

#include "sage/attention.h"

namespace sage {

struct MergeArgs {
  TensorView out_a, lse_a;
  TensorView out_b, lse_b;
  TensorView out, lse;
};

// Host tensors are merged on the CPU (synchronously; `stream` is unused);
// GPU tensors (all on one device) by a CUDA kernel, asynchronously on
// `stream`, with no allocation and no synchronization. Errors name the
// argument ("out_b: ...").
Status merge_attention_states(const MergeArgs& args, TensorLayout layout, Stream stream);

}  // namespace sage
