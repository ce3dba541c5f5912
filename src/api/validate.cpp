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
#include <exception>
#include <cstdio>
#include <type_traits>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>

#include "sage/attention.h"

namespace sage {
namespace detail {
namespace {

// ---------------------------------------------------------------- helpers

// Message building without iostreams: a stream's locale facets are process
// state, and inside a Python process that loaded other C++ runtimes they
// have crashed us (std::ostream in an extension module); plain appends have
// no such dependency.
void append(std::string& s, std::string_view v) { s += v; }
void append(std::string& s, const char* v) { s += v; }
void append(std::string& s, const std::string& v) { s += v; }
template <class Int, std::enable_if_t<std::is_integral_v<Int>, int> = 0>
void append(std::string& s, Int v) {
  s += std::to_string(v);
}
void append(std::string& s, double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g", v);
  s += buf;
}
void append(std::string& s, float v) { append(s, static_cast<double>(v)); }
void append(std::string& s, const void* v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%p", v);
  s += buf;
}

template <class... Parts>
std::string concat(const Parts&... parts) {
  std::string s;
  (append(s, parts), ...);
  return s;
}

// invalid_argument with "name: details".
template <class... Parts>
Status fail(std::string_view name, const Parts&... parts) {
  return Status::invalid(concat(name, ": ", parts...));
}

std::string list_string(const std::int64_t* values, int rank) {
  std::string s = "[";
  for (int i = 0; i < rank; ++i) s += (i ? ", " : "") + std::to_string(values[i]);
  return s + "]";
}

// Overflow-checked int64 arithmetic (false when the result does not fit).
bool checked_mul(std::int64_t a, std::int64_t b, std::int64_t* out) { return !__builtin_mul_overflow(a, b, out); }
bool checked_add(std::int64_t a, std::int64_t b, std::int64_t* out) { return !__builtin_add_overflow(a, b, out); }

std::string device_label(int device) {
  return device == kHostDevice ? std::string("the host") : concat("GPU ", device);
}

// The layout's dimension order, for messages.
const char* layout_doc(TensorLayout layout) {
  return layout == TensorLayout::HND ? "layout HND: [B, H, N, D]" : "layout NHD: [B, N, H, D]";
}

// Index of the heads and tokens dimensions of a 4-D q/k/v/out view.
int heads_dim(TensorLayout layout) { return layout == TensorLayout::HND ? 1 : 2; }
int tokens_dim(TensorLayout layout) { return layout == TensorLayout::HND ? 2 : 1; }

// ---------------------------------------------------------------- options

// Enum values that arrive from C or from a cast can be anything; a switch on
// them later would silently fall through.
template <class Enum>
bool enum_in_range(Enum value, Enum last) {
  using U = std::underlying_type_t<Enum>;
  const auto v = static_cast<U>(value);
  return v >= 0 && v <= static_cast<U>(last);
}

template <class Enum>
Status check_enum(const char* name, Enum value, Enum last, const char* expected) {
  if (enum_in_range(value, last)) return Status::ok();
  return fail(name, "invalid value ", static_cast<long long>(static_cast<std::underlying_type_t<Enum>>(value)),
              " (expected ", expected, ")");
}

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

Status check_sm_scale(float sm_scale) {
  if (std::isfinite(sm_scale) && sm_scale >= 0.0f) return Status::ok();
  return fail("options.sm_scale", "must be finite and >= 0 (0 selects 1/sqrt(head_dim)), got ", sm_scale);
}

// Combinations the methods do not have: INT4 QK^T exists only in the
// SageAttention2 pipeline (sage3 is NVFP4 throughout, SageBwd is INT8).
Status check_method_combination(const AttentionOptions& o) {
  if (o.qk_format == QKFormat::int4 && o.method != Method::sage2) {
    return fail("options.qk_format", "int4 is only available with method sage2 (got method ", method_name(o.method),
                ")");
  }
  return Status::ok();
}

Status check_options(const AttentionOptions& o) {
  SAGE_RETURN_IF_ERROR(check_option_enums(o));
  SAGE_RETURN_IF_ERROR(check_sm_scale(o.sm_scale));
  return check_method_combination(o);
}

// ---------------------------------------------------------------- one tensor on its own

Status check_rank(const char* name, const TensorView& t, int expected, const char* dims_doc) {
  if (t.rank == expected) return Status::ok();
  return fail(name, "expected a rank-", expected, " tensor (", dims_doc, "), got rank ", t.rank);
}

Status check_dtype_value(const char* name, const TensorView& t) {
  if (enum_in_range(t.dtype, DType::ue4m3)) return Status::ok();
  return fail(name, "invalid dtype value ", static_cast<int>(static_cast<std::underlying_type_t<DType>>(t.dtype)));
}

// Every dimension >= 1: an empty attention call has nothing to compute, and
// accepting it would make every kernel handle a degenerate grid.
Status check_sizes(const char* name, const TensorView& t) {
  for (int d = 0; d < t.rank; ++d) {
    if (t.shape[d] < 0) {
      return fail(name, "negative size ", t.shape[d], " in dimension ", d, " (shape ", list_string(t.shape, t.rank),
                  ")");
    }
  }
  for (int d = 0; d < t.rank; ++d) {
    if (t.shape[d] == 0) {
      return fail(name, "empty tensor: shape ", list_string(t.shape, t.rank), " has size 0 in dimension ", d,
                  " (every dimension must be >= 1)");
    }
  }
  return Status::ok();
}

Status check_data(const char* name, const TensorView& t) {
  if (t.data != nullptr) return Status::ok();
  return fail(name, "data is NULL");
}

Status check_non_negative_strides(const char* name, const TensorView& t) {
  for (int d = 0; d < t.rank; ++d) {
    if (t.stride[d] < 0) {
      return fail(name, "negative stride ", t.stride[d], " in dimension ", d,
                  " (negative strides are not supported; strides ", list_string(t.stride, t.rank), ")");
    }
  }
  return Status::ok();
}

// The innermost (head_dim) dimension of q/k/v/out must be contiguous:
// kernels and the emulation read a row as one run of memory. (The LSE is
// written one value per row, so any strides do.) A dimension of size 1 is
// exempt, since frameworks give such dimensions arbitrary strides.
Status check_unit_last_stride(const char* name, const TensorView& t) {
  const int last = t.rank - 1;
  if (last >= 0 && t.shape[last] > 1 && t.stride[last] != 1) {
    return fail(name, "the last dimension must be contiguous (stride 1), got stride ", t.stride[last], " (strides ",
                list_string(t.stride, t.rank), ")");
  }
  return Status::ok();
}

// The largest element offset, sum (shape[d] - 1) * stride[d], must fit in
// int64, and so must the element count and the byte offset: kernels index
// with 64-bit offsets, and an overflow here would be a silent out-of-bounds
// access there. Also rejects views whose last byte would wrap the address
// space.
Status check_offsets(const char* name, const TensorView& t) {
  // Built only on failure: this runs on every call.
  const auto where = [&] {
    return concat(" (shape ", list_string(t.shape, t.rank), ", strides ",
                                   list_string(t.stride, t.rank), ")");
  };
  std::int64_t numel = 1;
  std::int64_t max_offset = 0;
  for (int d = 0; d < t.rank; ++d) {
    std::int64_t span = 0;
    if (!checked_mul(numel, t.shape[d], &numel)) return fail(name, "the number of elements overflows int64", where());
    if (!checked_mul(t.shape[d] - 1, t.stride[d], &span) || !checked_add(max_offset, span, &max_offset)) {
      return fail(name, "element offsets overflow int64", where());
    }
  }
  // Bytes up to the end of the last element (packed 4-bit types hold two
  // elements per byte).
  const int bits = dtype_bits(t.dtype);
  std::int64_t end_byte = max_offset / 2 + 1;
  if (bits % 8 == 0 && (!checked_add(max_offset, 1, &end_byte) || !checked_mul(end_byte, bits / 8, &end_byte))) {
    return fail(name, "byte offsets overflow int64 (largest element offset ", max_offset, ")", where());
  }
  const auto last_byte = static_cast<std::uint64_t>(end_byte);
  const auto base = reinterpret_cast<std::uintptr_t>(t.data);
  if (base > UINTPTR_MAX - last_byte) {
    return fail(name, "the view extends past the end of the address space (", last_byte, " bytes from ", t.data, ")");
  }
  return Status::ok();
}

Status check_device_ordinal(const char* name, const TensorView& t) {
  if (t.device >= kHostDevice) return Status::ok();
  return fail(name, "invalid device ", t.device, " (use ", kHostDevice, " for host memory or a CUDA ordinal >= 0)");
}

// Outputs must not alias themselves, or two results would race for one
// address. Sufficient test: ordered by stride, each dimension of size > 1
// starts past the extent of the previous one (dense and padded layouts,
// HND and NHD, all pass; broadcast zero strides do not).
Status check_no_self_overlap(const char* name, const TensorView& t) {
  int order[kMaxRank];
  int n = 0;
  for (int d = 0; d < t.rank; ++d) {
    if (t.shape[d] > 1) order[n++] = d;
  }
  // Insertion sort by stride (at most kMaxRank entries).
  for (int i = 1; i < n; ++i) {
    for (int j = i; j > 0 && t.stride[order[j]] < t.stride[order[j - 1]]; --j) std::swap(order[j], order[j - 1]);
  }
  std::int64_t extent = 1;  // elements covered by the dimensions so far
  for (int i = 0; i < n; ++i) {
    const int d = order[i];
    if (t.stride[d] < extent) {
      return fail(name, "elements overlap in memory (stride ", t.stride[d], " of dimension ", d,
                  " is smaller than the extent of the faster dimensions; strides ", list_string(t.stride, t.rank),
                  ", shape ", list_string(t.shape, t.rank), ")");
    }
    // (shape - 1) * stride fits (check_offsets); adding one more stride
    // may not, and then nothing can lie beyond it anyway.
    if (!checked_mul(t.stride[d], t.shape[d], &extent)) extent = INT64_MAX;
  }
  return Status::ok();
}

Status check_tensor(const char* name, const TensorView& t, int rank, const char* dims_doc, bool rows_contiguous) {
  SAGE_RETURN_IF_ERROR(check_rank(name, t, rank, dims_doc));
  SAGE_RETURN_IF_ERROR(check_dtype_value(name, t));
  SAGE_RETURN_IF_ERROR(check_sizes(name, t));
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
  if (o.return_lse) SAGE_RETURN_IF_ERROR(check_no_self_overlap("lse", a.lse));
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
Status check_gpu_alignment(const char* name, const TensorView& t) {
  const auto address = reinterpret_cast<std::uintptr_t>(t.data);
  const std::uintptr_t alignment = static_cast<std::uintptr_t>(std::max(1, dtype_bits(t.dtype) / 8));
  if (address % alignment != 0) {
    return fail(name, "data pointer ", t.data, " is not ", alignment, "-byte aligned (the size of its dtype ",
                dtype_name(t.dtype), ")");
  }
  return Status::ok();
}

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

// The head dims the GPU kernels are instantiated for. The kernel issues keep
// this list in step with their explicit instantiation files.
Status check_gpu_kernel_limits(const AttentionDims& dims, const AttentionOptions& options) {
  // The pre-pass pads any head dim up to the kernels' native 64 or 128.
  if (dims.head_dim <= kGpuMaxHeadDim) return Status::ok();
  return Status(StatusCode::not_implemented,
                concat("q: head_dim ", dims.head_dim, " has no GPU kernel for method ", method_name(options.method),
                       " in this build (GPU head dims: 1..", kGpuMaxHeadDim, "; the host emulation takes ",
                       kHostMinHeadDim, "..", kHostMaxHeadDim, ")"));
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
