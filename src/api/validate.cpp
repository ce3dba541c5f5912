// Argument validation of the attention entry points.
//
// Every message starts with the argument it is about ("k: ...",
// "options.sm_scale: ...") so that a user reading it knows what to fix
// without opening the source. Checks run from the most basic (is this a
// tensor at all?) to the most specific (does its shape agree with q's?), so
// the first message is about the root cause rather than a consequence.
#include "api/validate.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <limits>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>

#include "api/tensor_checks.h"
#include "numerics/formats.h"
#include "sage/attention.h"

namespace sage {
namespace detail {
namespace {

// ---------------------------------------------------------------- options

Status check_option_enums(const AttentionOptions& o) {
  SAGE_RETURN_IF_ERROR(check_enum("options.method", o.method, Method::sagebwd, "sage2, sage3 or sagebwd"));
  SAGE_RETURN_IF_ERROR(check_enum("options.layout", o.layout, TensorLayout::NHD, "HND or NHD"));
  SAGE_RETURN_IF_ERROR(
      check_enum("options.causal_align", o.causal_align, CausalAlign::bottom_right, "top_left or bottom_right"));
  SAGE_RETURN_IF_ERROR(check_enum("options.qk_format", o.qk_format, QKFormat::int4, "int8 or int4"));
  SAGE_RETURN_IF_ERROR(check_enum("options.qk_granularity", o.qk_granularity, Granularity::per_thread,
                                  "per_block, per_warp or per_thread"));
  SAGE_RETURN_IF_ERROR(
      check_enum("options.pv_format", o.pv_format, PVFormat::bf16, "fp8_e4m3, fp8_e5m2, fp16 or bf16"));
  SAGE_RETURN_IF_ERROR(check_enum("options.pv_accum", o.pv_accum, PVAccum::two_level, "fp32 or two_level"));
  return Status::ok();
}

// Every path multiplies the scale by log2(e) in float (the softmax runs in base 2), so a scale
// whose product overflows would turn finite logits into inf and NaN.
Status check_sm_scale(float sm_scale) {
  constexpr float kLargestScale = std::numeric_limits<float>::max() / static_cast<float>(num::kLog2e);
  if (std::isfinite(sm_scale) && sm_scale >= 0.0f && sm_scale <= kLargestScale) return Status::ok();
  return fail("options.sm_scale", "must be finite, >= 0 (0 selects 1/sqrt(head_dim)) and at most ", kLargestScale,
              " (its product with log2(e) must fit a float), got ", sm_scale);
}

// Combinations the methods do not have: INT4 QK^T exists only in the
// SageAttention2 pipeline (sage3 is NVFP4 throughout, SageBwd is INT8), and
// the SageAttention2 format knobs mean nothing to the other methods, whose
// formats are fixed: they must stay at their defaults, never be ignored.
Status check_method_combination(const AttentionOptions& o) {
  if (o.qk_format == QKFormat::int4 && o.method != Method::sage2) {
    return fail("options.qk_format", "int4 is only available with method sage2 (got method ", method_name(o.method),
                ")");
  }
  if (o.method == Method::sage2) return Status::ok();
  const AttentionOptions defaults;
  const char* fixed = o.method == Method::sage3 ? "NVFP4 in 1x16 blocks throughout" : "INT8 per block throughout";
  if (o.qk_granularity != defaults.qk_granularity) {
    return fail("options.qk_granularity", granularity_name(o.qk_granularity), " is a sage2 option; method ",
                method_name(o.method), " has fixed formats (", fixed, "): leave the field at its default, ",
                granularity_name(defaults.qk_granularity));
  }
  if (o.pv_format != defaults.pv_format) {
    return fail("options.pv_format", pv_format_name(o.pv_format), " is a sage2 option; method ", method_name(o.method),
                " has fixed formats (", fixed, "): leave the field at its default, ",
                pv_format_name(defaults.pv_format));
  }
  if (o.pv_accum != defaults.pv_accum) {
    return fail("options.pv_accum", "fp32 is a sage2 option; method ", method_name(o.method),
                " has its own accumulation (leave it at two_level)");
  }
  return Status::ok();
}

Status check_options(const AttentionOptions& o) {
  SAGE_RETURN_IF_ERROR(check_option_enums(o));
  SAGE_RETURN_IF_ERROR(check_sm_scale(o.sm_scale));
  return check_method_combination(o);
}

// ---------------------------------------------------------------- one tensor on its own

Status check_tensor(const char* name, const TensorView& t, int rank, const char* dims_doc, bool rows_contiguous) {
  SAGE_RETURN_IF_ERROR(check_rank(name, t, rank, dims_doc));
  SAGE_RETURN_IF_ERROR(check_dtype_value(name, t));
  SAGE_RETURN_IF_ERROR(check_non_negative_sizes(name, t));
  // An empty attention call has nothing to compute, and accepting it would
  // make every kernel handle a degenerate grid.
  SAGE_RETURN_IF_ERROR(check_non_empty(name, t));
  SAGE_RETURN_IF_ERROR(check_data(name, t));
  SAGE_RETURN_IF_ERROR(check_non_negative_strides(name, t));
  if (rows_contiguous) SAGE_RETURN_IF_ERROR(check_unit_last_stride(name, t));
  SAGE_RETURN_IF_ERROR(check_offsets(name, t));
  return check_device_ordinal(name, t);
}

Status check_each_tensor(const AttentionArgs& a, const AttentionOptions& o) {
  const char* doc = layout_doc(o.layout);
  SAGE_RETURN_IF_ERROR(check_tensor("q", a.q, 4, doc, true));
  SAGE_RETURN_IF_ERROR(check_tensor("k", a.k, 4, doc, true));
  SAGE_RETURN_IF_ERROR(check_tensor("v", a.v, 4, doc, true));
  SAGE_RETURN_IF_ERROR(check_tensor("out", a.out, 4, doc, true));
  if (o.return_lse) SAGE_RETURN_IF_ERROR(check_tensor("lse", a.lse, 3, "[B, Hq, Nq]", false));
  return Status::ok();
}

// Runs after the shape checks: a wrong shape with the strides of the right
// one also looks like overlap, and the shape is the root cause to report.
Status check_outputs_do_not_overlap(const AttentionArgs& a, const AttentionOptions& o) {
  SAGE_RETURN_IF_ERROR(check_no_self_overlap("out", a.out));
  if (!o.return_lse) return Status::ok();
  SAGE_RETURN_IF_ERROR(check_no_self_overlap("lse", a.lse));
  if (memory_ranges_overlap(a.out, a.lse)) return fail("lse", "overlaps out in memory (they are written at once)");
  return Status::ok();
}

// ---------------------------------------------------------------- tensors against each other

// q decides the dtype; the host emulation also reads float32 (handy for
// tests), the GPU kernels read 16-bit floats only.
Status check_dtypes(const AttentionArgs& a, const AttentionOptions& o) {
  const DType dt = a.q.dtype;
  if (dt != DType::f16 && dt != DType::bf16 && dt != DType::f32) {
    return fail("q", "dtype ", dtype_name(dt),
                " is not supported (expected float16 or bfloat16; float32 also on the host)");
  }
  if (dt == DType::f32 && !a.q.on_host()) {
    return fail("q", "dtype float32 is only supported for host tensors (the GPU kernels take float16 or bfloat16)");
  }
  const struct { const char* name; const TensorView& t; } same_as_q[] = {{"k", a.k}, {"v", a.v}, {"out", a.out}};
  for (const auto& [name, t] : same_as_q) {
    if (t.dtype != dt) return fail(name, "dtype ", dtype_name(t.dtype), " must equal q's dtype ", dtype_name(dt));
  }
  if (o.return_lse && a.lse.dtype != DType::f32) {
    return fail("lse", "dtype must be float32, got ", dtype_name(a.lse.dtype));
  }
  return Status::ok();
}

Status check_devices(const AttentionArgs& a, const AttentionOptions& o) {
  const struct { const char* name; const TensorView& t; bool used; } others[] = {
      {"k", a.k, true}, {"v", a.v, true}, {"out", a.out, true}, {"lse", a.lse, o.return_lse}};
  for (const auto& [name, t, used] : others) {
    if (used && t.device != a.q.device) {
      return fail(name, "tensor is on ", device_label(t.device), " but q is on ", device_label(a.q.device),
                  " (all tensors must be on one device)");
    }
  }
  return Status::ok();
}

Status check_shapes(const AttentionArgs& a, const AttentionOptions& o) {
  const char* doc = layout_doc(o.layout);
  const int hd = heads_dim(o.layout);
  if (a.k.shape[0] != a.q.shape[0]) {
    return fail("k", "batch size ", a.k.shape[0], " differs from q's batch size ", a.q.shape[0], " (shape ",
                shape_string(a.k), " vs ", shape_string(a.q), ", ", doc, ")");
  }
  if (a.k.shape[3] != a.q.shape[3]) {
    return fail("k", "head_dim ", a.k.shape[3], " differs from q's head_dim ", a.q.shape[3], " (shape ",
                shape_string(a.k), " vs ", shape_string(a.q), ", ", doc, ")");
  }
  if (!std::equal(a.v.shape, a.v.shape + 4, a.k.shape)) {
    return fail("v", "shape ", shape_string(a.v), " must equal k's shape ", shape_string(a.k), " (", doc, ")");
  }
  if (!std::equal(a.out.shape, a.out.shape + 4, a.q.shape)) {
    return fail("out", "shape ", shape_string(a.out), " must equal q's shape ", shape_string(a.q), " (", doc, ")");
  }
  const std::int64_t hq = a.q.shape[hd], hkv = a.k.shape[hd];
  if (hq % hkv != 0) {
    return fail("k", "the number of query heads (Hq = ", hq, " in q) must be a multiple of the number of key/value "
                "heads (Hkv = ", hkv, " in k)");
  }
  if (o.return_lse) {
    const std::int64_t expected[3] = {a.q.shape[0], hq, a.q.shape[tokens_dim(o.layout)]};
    if (!std::equal(a.lse.shape, a.lse.shape + 3, expected)) {
      return fail("lse", "shape ", shape_string(a.lse), " must be [B, Hq, Nq] = ", list_string(expected, 3),
                  " (the same in both layouts)");
    }
  }
  return Status::ok();
}

// Head dims the library accepts anywhere. The GPU kernels of a build may
// accept fewer: see check_gpu_kernel_limits.
Status check_head_dim(const AttentionArgs& a, const AttentionOptions& o) {
  const std::int64_t d = a.q.shape[3];
  if (d < kHostMinHeadDim || d > kHostMaxHeadDim) {
    return fail("q", "head_dim ", d, " is not supported (", kHostMinHeadDim, "..", kHostMaxHeadDim, ")");
  }
  // The GPU pre-pass pads head_dim to whole NVFP4 blocks; the emulation
  // does not, so it needs whole blocks.
  if (o.method == Method::sage3 && a.q.on_host() && d % kNvfp4BlockSize != 0) {
    return fail("q", "head_dim ", d, " must be a multiple of ", kNvfp4BlockSize,
                " for method sage3 on the host (NVFP4 scales cover blocks of ", kNvfp4BlockSize, " elements)");
  }
  return Status::ok();
}

// The GPU pre-pass reads q/k/v with 16-byte vectors when rows allow it and
// element by element otherwise, and the epilogue writes out the same way, so
// a GPU tensor needs only the natural alignment of its dtype.
Status check_gpu_pointers(const AttentionArgs& a, const AttentionOptions& o) {
  if (a.q.on_host()) return Status::ok();
  SAGE_RETURN_IF_ERROR(check_gpu_alignment("q", a.q));
  SAGE_RETURN_IF_ERROR(check_gpu_alignment("k", a.k));
  SAGE_RETURN_IF_ERROR(check_gpu_alignment("v", a.v));
  SAGE_RETURN_IF_ERROR(check_gpu_alignment("out", a.out));
  // The LSE is written one float per row: natural alignment is enough.
  if (o.return_lse) {
    const auto address = reinterpret_cast<std::uintptr_t>(a.lse.data);
    if (address % sizeof(float) != 0) {
      return fail("lse", "data pointer ", a.lse.data, " is not ", sizeof(float), "-byte aligned");
    }
  }
  return Status::ok();
}

}  // namespace

std::string shape_string(const TensorView& t) { return list_string(t.shape, std::clamp(t.rank, 0, kMaxRank)); }

AttentionDims attention_dims(const AttentionArgs& args, TensorLayout layout) {
  const int hd = heads_dim(layout), nd = tokens_dim(layout);
  AttentionDims dims;
  dims.batch = args.q.shape[0];
  dims.heads_q = args.q.shape[hd];
  dims.heads_kv = args.k.shape[hd];
  dims.nq = args.q.shape[nd];
  dims.nk = args.k.shape[nd];
  dims.head_dim = args.q.shape[3];
  return dims;
}

// What the GPU kernels of this build take: head dims up to kGpuMaxHeadDim,
// sizes that fit their 32-bit index arithmetic, and one grid row per
// (batch, q head). The kernel issues keep this in step with their
// explicit instantiation files.
Status check_gpu_kernel_limits(const AttentionDims& dims, const AttentionOptions& options) {
  // The pre-pass pads any head dim up to the kernels' native 64 or 128.
  if (dims.head_dim > kGpuMaxHeadDim) {
    return Status(StatusCode::not_implemented,
                  concat("q: head_dim ", dims.head_dim, " has no GPU kernel for method ", method_name(options.method),
                         " in this build (GPU head dims: 1..", kGpuMaxHeadDim, "; the host emulation takes ",
                         kHostMinHeadDim, "..", kHostMaxHeadDim, ")"));
  }
  // Token indices are 32-bit inside the kernels, rounded up to whole tiles.
  if (dims.nq > kGpuMaxTokens || dims.nk > kGpuMaxTokens) {
    return Status(StatusCode::not_implemented,
                  concat("sequence length ", std::max(dims.nq, dims.nk), " exceeds the GPU kernels' limit of ",
                         kGpuMaxTokens, " tokens"));
  }
  // (batch and heads_q are each >= 1 and below 2^31 here, so the product fits.)
  if (dims.batch > kGpuMaxBatchHeads || dims.heads_q > kGpuMaxBatchHeads ||
      dims.batch * dims.heads_q > kGpuMaxBatchHeads) {
    return Status(StatusCode::not_implemented,
                  concat("batch * heads_q = ", dims.batch, " * ", dims.heads_q, " exceeds the GPU kernels' limit of ",
                         kGpuMaxBatchHeads, " (one grid row per batch and head; split the batch)"));
  }
  return Status::ok();
}

}  // namespace detail

Status validate_attention_args(const AttentionArgs& args, const AttentionOptions& options) {
  using namespace detail;
  // Building a message allocates; that is the only thing here that can
  // throw, and a public function must not.
  try {
    SAGE_RETURN_IF_ERROR(check_options(options));
    SAGE_RETURN_IF_ERROR(check_each_tensor(args, options));
    SAGE_RETURN_IF_ERROR(check_dtypes(args, options));
    SAGE_RETURN_IF_ERROR(check_devices(args, options));
    SAGE_RETURN_IF_ERROR(check_shapes(args, options));
    SAGE_RETURN_IF_ERROR(check_outputs_do_not_overlap(args, options));
    SAGE_RETURN_IF_ERROR(check_head_dim(args, options));
    return check_gpu_pointers(args, options);
  } catch (const std::exception& e) {
    return Status(StatusCode::internal, std::string("validate_attention_args: ") + e.what());
  }
}

}  // namespace sage
