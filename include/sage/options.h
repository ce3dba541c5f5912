// What a caller can choose about one attention call. Defaults are the
// SageAttention2 recipe: INT8 QK^T with per-warp scales and K smoothing,
// FP8 E4M3 PV with two-level accumulation.
#pragma once

namespace sage {

// How q/k/v/out are laid out: HND = [batch, heads, tokens, head_dim],
// NHD = [batch, tokens, heads, head_dim]. Strides are free except that the
// head_dim stride must be 1.
enum class TensorLayout { HND, NHD };

// Where the causal diagonal sits when Nq != Nk. top_left: query i sees keys
// j <= i (PyTorch SDPA's is_causal). bottom_right: query i sees keys
// j <= i + Nk - Nq (FlashAttention's convention, the one for decoding with a
// KV cache).
enum class CausalAlign { top_left, bottom_right };

// Which member of the family computes the attention.
enum class Method {
  sage2,    // INT8/INT4 QK^T, FP8/FP16 PV (SageAttention2)
  sage3,    // NVFP4 microscaling Q, K, P, V (SageAttention3); refuses a 1x16
            // block of Q, K or V (after smoothing) with |value| > 2784
  sagebwd,  // INT8 QK^T and PV, per-block scales (SageBwd forward)
};

enum class QKFormat { int8, int4 };

// How many elements share one quantization scale of Q and K (the groupings
// follow the kernel's tile geometry, see src/numerics/tile_geometry.h).
enum class Granularity { per_block, per_warp, per_thread };

// P and V's format in the P V product. The FP8 formats give V per-channel
// scales, so any finite V fits; fp16 and bf16 round V as it is: with fp16, a
// bf16 or f32 value that rounds past FP16's largest (|v| >= 65520) becomes
// infinite, and so do the outputs that use it (as in the kernels; use
// fp8_e4m3 there). bf16 keeps any finite V, but its products are summed
// before the softmax's normalization, in fp32: values near float's largest
// (|v| above about FLT_MAX / Nk) can overflow that sum, where the FP8 formats'
// scaled codes cannot.
enum class PVFormat { fp8_e4m3, fp8_e5m2, fp16, bf16 };

// fp32: accumulate P V straight into fp32 registers. two_level: accumulate
// each K tile into a fresh accumulator and add that into fp32 (needed for
// FP8 MMAs, whose accumulators keep about 22 bits).
enum class PVAccum { fp32, two_level };

struct AttentionOptions {
  Method method = Method::sage2;
  TensorLayout layout = TensorLayout::HND;
  bool causal = false;
  CausalAlign causal_align = CausalAlign::top_left;
  // Softmax scale; 0 means the default 1/sqrt(head_dim). Must be finite,
  // non-negative and at most FLT_MAX / log2(e) (~2.36e38: the kernels scale
  // the logits by sm_scale * log2(e) in float).
  float sm_scale = 0.0f;
  QKFormat qk_format = QKFormat::int8;
  Granularity qk_granularity = Granularity::per_warp;
  PVFormat pv_format = PVFormat::fp8_e4m3;
  PVAccum pv_accum = PVAccum::two_level;
  bool smooth_q = false;
  bool smooth_k = true;
  bool smooth_v = false;
  bool return_lse = false;
};

const char* method_name(Method m);
const char* granularity_name(Granularity g);
const char* qk_format_name(QKFormat f);
const char* pv_format_name(PVFormat f);

}  // namespace sage
