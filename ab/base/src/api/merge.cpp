// sage::merge_attention_states (include/sage/merge.h): validation, the host
// loop, and the route to the CUDA kernel (cuda/merge_states.cu). Both paths
// take their per-row arithmetic from cuda/merge_states.h.
#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <string>

#include "api/guarded.h"
#include "api/host_forward.h"
#include "api/tensor_checks.h"
#include "api/validate.h"
#include "cuda/device_dispatch.h"
#include "cuda/merge_states.h"
#include "sage/merge.h"

namespace sage {
namespace detail {
namespace {

struct NamedView {
  const char* name;
  const TensorView* t;
  bool is_out;  // an out_* tensor ([B, H, N, D]) rather than an lse_* one
};

// In the order messages report them: the inputs, then the outputs.
std::array<NamedView, 6> named_views(const MergeArgs& a) {
  return {{{"out_a", &a.out_a, true},
           {"lse_a", &a.lse_a, false},
           {"out_b", &a.out_b, true},
           {"lse_b", &a.lse_b, false},
           {"out", &a.out, true},
           {"lse", &a.lse, false}}};
}

// ---------------------------------------------------------------- validation

Status check_each_tensor(const MergeArgs& a, TensorLayout layout) {
  for (const NamedView& v : named_views(a)) {
    const TensorView& t = *v.t;
    SAGE_RETURN_IF_ERROR(check_rank(v.name, t, v.is_out ? 4 : 3, v.is_out ? layout_doc(layout) : "[B, H, N]"));
    SAGE_RETURN_IF_ERROR(check_dtype_value(v.name, t));
    SAGE_RETURN_IF_ERROR(check_non_negative_sizes(v.name, t));
    SAGE_RETURN_IF_ERROR(check_non_negative_strides(v.name, t));
    // out rows are read and written as runs of memory; lse entries one by one.
    if (v.is_out) SAGE_RETURN_IF_ERROR(check_unit_last_stride(v.name, t));
    SAGE_RETURN_IF_ERROR(check_device_ordinal(v.name, t));
    if (is_empty(t)) continue;
    SAGE_RETURN_IF_ERROR(check_data(v.name, t));
    SAGE_RETURN_IF_ERROR(check_offsets(v.name, t));
  }
  return Status::ok();
}

// out_a decides the dtype of the three out tensors; the LSEs are float32.
Status check_dtypes(const MergeArgs& a) {
  const DType dt = a.out_a.dtype;
  if (dt != DType::f16 && dt != DType::bf16 && dt != DType::f32) {
    return fail("out_a", "dtype ", dtype_name(dt), " is not supported (expected float16, bfloat16 or float32)");
  }
  for (const NamedView& v : named_views(a)) {
    if (v.is_out && v.t->dtype != dt) {
      return fail(v.name, "dtype ", dtype_name(v.t->dtype), " must equal out_a's dtype ", dtype_name(dt));
    }
    if (!v.is_out && v.t->dtype != DType::f32) return fail(v.name, "dtype must be float32, got ", dtype_name(v.t->dtype));
  }
  return Status::ok();
}

Status check_devices(const MergeArgs& a) {
  for (const NamedView& v : named_views(a)) {
    if (v.t->device != a.out_a.device) {
      return fail(v.name, "tensor is on ", device_label(v.t->device), " but out_a is on ",
                  device_label(a.out_a.device), " (all tensors must be on one device)");
    }
  }
  return Status::ok();
}

Status check_shapes(const MergeArgs& a, TensorLayout layout) {
  const std::int64_t expected_lse[3] = {a.out_a.shape[0], a.out_a.shape[heads_dim(layout)],
                                        a.out_a.shape[tokens_dim(layout)]};
  for (const NamedView& v : named_views(a)) {
    const TensorView& t = *v.t;
    if (v.is_out && !std::equal(t.shape, t.shape + 4, a.out_a.shape)) {
      return fail(v.name, "shape ", shape_string(t), " must equal out_a's shape ", shape_string(a.out_a), " (",
                  layout_doc(layout), ")");
    }
    if (!v.is_out && !std::equal(t.shape, t.shape + 3, expected_lse)) {
      return fail(v.name, "shape ", shape_string(t), " must be [B, H, N] = ", list_string(expected_lse, 3),
                  " (the same in both layouts)");
    }
  }
  return Status::ok();
}

// The very same elements at the same addresses (strides of size-1
// dimensions are never applied, so they may differ).
bool same_view(const TensorView& x, const TensorView& y) {
  if (x.data != y.data || x.dtype != y.dtype || x.rank != y.rank) return false;
  for (int d = 0; d < x.rank; ++d) {
    if (x.shape[d] != y.shape[d] || (x.shape[d] > 1 && x.stride[d] != y.stride[d])) return false;
  }
  return true;
}

// An output may share memory with one input only: its own (out with out_a,
// lse with lse_a), and only as the very same view (an in-place merge, which
// the kernel makes safe by reading each element before it writes it from one
// thread). Everything else could be overwritten before it is read. The test
// compares memory ranges, so views that interleave without sharing an element
// are rejected too.
Status check_no_overlap(const char* out_name, const TensorView& out, const char* in_name, const TensorView& in,
                        bool in_place_allowed) {
  if (is_empty(out) || is_empty(in)) return Status::ok();
  if (!memory_ranges_overlap(out, in)) return Status::ok();
  if (in_place_allowed && same_view(out, in)) return Status::ok();
  return fail(out_name, "overlaps ", in_name, " in memory (outputs may share memory only with their own input, out "
              "with out_a and lse with lse_a, and then only as the very same view: an in-place merge)");
}

// Runs after the shape checks: a wrong shape with the strides of the right
// one also looks like overlap, and the shape is the root cause to report.
Status check_overlaps(const MergeArgs& a) {
  if (!is_empty(a.out)) SAGE_RETURN_IF_ERROR(check_no_self_overlap("out", a.out));
  if (!is_empty(a.lse)) SAGE_RETURN_IF_ERROR(check_no_self_overlap("lse", a.lse));
  SAGE_RETURN_IF_ERROR(check_no_overlap("out", a.out, "out_a", a.out_a, true));
  SAGE_RETURN_IF_ERROR(check_no_overlap("out", a.out, "out_b", a.out_b, false));
  SAGE_RETURN_IF_ERROR(check_no_overlap("out", a.out, "lse_a", a.lse_a, false));
  SAGE_RETURN_IF_ERROR(check_no_overlap("out", a.out, "lse_b", a.lse_b, false));
  SAGE_RETURN_IF_ERROR(check_no_overlap("out", a.out, "lse", a.lse, false));
  SAGE_RETURN_IF_ERROR(check_no_overlap("lse", a.lse, "lse_a", a.lse_a, true));
  SAGE_RETURN_IF_ERROR(check_no_overlap("lse", a.lse, "out_a", a.out_a, false));
  SAGE_RETURN_IF_ERROR(check_no_overlap("lse", a.lse, "out_b", a.out_b, false));
  return check_no_overlap("lse", a.lse, "lse_b", a.lse_b, false);
}

// The kernel reads and writes elements of their natural alignment (16-byte
// vectors only where the views allow them).
Status check_gpu_pointers(const MergeArgs& a) {
  if (a.out_a.on_host()) return Status::ok();
  for (const NamedView& v : named_views(a)) {
    if (!is_empty(*v.t)) SAGE_RETURN_IF_ERROR(check_gpu_alignment(v.name, *v.t));
  }
  return Status::ok();
}

Status validate_merge_args(const MergeArgs& args, TensorLayout layout) {
  SAGE_RETURN_IF_ERROR(check_enum("layout", layout, TensorLayout::NHD, "HND or NHD"));
  SAGE_RETURN_IF_ERROR(check_each_tensor(args, layout));
  SAGE_RETURN_IF_ERROR(check_dtypes(args));
  SAGE_RETURN_IF_ERROR(check_devices(args));
  SAGE_RETURN_IF_ERROR(check_shapes(args, layout));
  SAGE_RETURN_IF_ERROR(check_overlaps(args));
  return check_gpu_pointers(args);
}

// ---------------------------------------------------------------- the two paths

// Address of row (b, h, n) of a [B, H, N, ...] view (out in BHND order, or
// an lse).
std::byte* row_address(const TensorView& t, std::int64_t b, std::int64_t h, std::int64_t n) {
  const std::int64_t offset = b * t.stride[0] + h * t.stride[1] + n * t.stride[2];
  return static_cast<std::byte*>(t.data) + offset * (dtype_bits(t.dtype) / 8);
}

// Row by row: the weights first (lse_a is read before lse is written, which
// keeps the in-place merge right), then the elements, each read before it
// is written. Elements of a row are contiguous (unit last stride, or D = 1).
void host_merge(const MergeArgs& args, TensorLayout layout) {
  const TensorView a = as_bhnd(args.out_a, layout), b = as_bhnd(args.out_b, layout), o = as_bhnd(args.out, layout);
  const DType dtype = a.dtype;
  const std::int64_t bytes = dtype_bits(dtype) / 8;
  for (std::int64_t bi = 0; bi < a.shape[0]; ++bi) {
    for (std::int64_t hi = 0; hi < a.shape[1]; ++hi) {
      for (std::int64_t ni = 0; ni < a.shape[2]; ++ni) {
        const MergeWeights w = merge_weights(load_element(row_address(args.lse_a, bi, hi, ni), DType::f32),
                                             load_element(row_address(args.lse_b, bi, hi, ni), DType::f32));
        const std::byte* row_a = row_address(a, bi, hi, ni);
        const std::byte* row_b = row_address(b, bi, hi, ni);
        std::byte* row_out = row_address(o, bi, hi, ni);
        for (std::int64_t d = 0; d < a.shape[3]; ++d) {
          const float merged = merge_value(load_element(row_a + d * bytes, dtype), load_element(row_b + d * bytes, dtype), w);
          store_element(row_out + d * bytes, dtype, merged);
        }
        store_element(row_address(args.lse, bi, hi, ni), DType::f32, w.lse);
      }
    }
  }
}

Status gpu_merge(const MergeArgs& args, TensorLayout layout, Stream stream) {
  const int ordinal = args.out_a.device;
  SAGE_RETURN_IF_ERROR(check_device_supported(ordinal));
  for (const NamedView& v : named_views(args)) {
    if (!is_empty(*v.t)) SAGE_RETURN_IF_ERROR(check_pointer_on_device(v.name, v.t->data, ordinal));
  }
  return run_on_device(ordinal, [&] { return launch_merge_states(args, layout, stream); });
}

}  // namespace
}  // namespace detail

Status merge_attention_states(const MergeArgs& args, TensorLayout layout, Stream stream) {
  return detail::guarded("merge_attention_states", [&]() -> Status {
    SAGE_RETURN_IF_ERROR(detail::validate_merge_args(args, layout));
    // lse has the shape [B, H, N] of the rows: no row, nothing to merge.
    // (With head_dim 0 the rows still have an lse to merge.)
    if (detail::is_empty(args.lse)) return Status::ok();
    // Host tensors run synchronously; the stream is not used.
    if (args.out_a.on_host()) {
      detail::host_merge(args, layout);
      return Status::ok();
    }
    return detail::gpu_merge(args, layout, stream);
  });
}

}  // namespace sage
