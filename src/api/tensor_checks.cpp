#include "api/tensor_checks.h"

#include <algorithm>
#include <cstdint>
#include <string>
#include <utility>

#include "api/validate.h"

namespace sage::detail {

std::string list_string(const std::int64_t* values, int rank) {
  std::string s = "[";
  for (int i = 0; i < rank; ++i) s += (i ? ", " : "") + std::to_string(values[i]);
  return s + "]";
}

std::string device_label(int device) {
  return device == kHostDevice ? std::string("the host") : concat("GPU ", device);
}

Status check_rank(const char* name, const TensorView& t, int expected, const char* dims_doc) {
  if (t.rank == expected) return Status::ok();
  return fail(name, "expected a rank-", expected, " tensor (", dims_doc, "), got rank ", t.rank);
}

Status check_dtype_value(const char* name, const TensorView& t) {
  if (enum_in_range(t.dtype, DType::ue4m3)) return Status::ok();
  return fail(name, "invalid dtype value ", static_cast<int>(static_cast<std::underlying_type_t<DType>>(t.dtype)));
}

Status check_non_negative_sizes(const char* name, const TensorView& t) {
  for (int d = 0; d < t.rank; ++d) {
    if (t.shape[d] < 0) {
      return fail(name, "negative size ", t.shape[d], " in dimension ", d, " (shape ", list_string(t.shape, t.rank),
                  ")");
    }
  }
  return Status::ok();
}

Status check_non_empty(const char* name, const TensorView& t) {
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

Status check_unit_last_stride(const char* name, const TensorView& t) {
  const int last = t.rank - 1;
  if (last >= 0 && t.shape[last] > 1 && t.stride[last] != 1) {
    return fail(name, "the last dimension must be contiguous (stride 1), got stride ", t.stride[last], " (strides ",
                list_string(t.stride, t.rank), ")");
  }
  return Status::ok();
}

namespace {
// Bytes from a view's first element to the end of the one at element offset
// max_offset (packed 4-bit types hold two elements per byte); false when that
// overflows int64. (In bytes, not bits: a view check_offsets accepts may
// span more than 2^60 bytes.)
bool bytes_through(std::int64_t max_offset, DType dtype, std::int64_t* bytes) {
  const int bits = dtype_bits(dtype);
  if (bits % 8 != 0) {
    *bytes = max_offset / 2 + 1;
    return true;
  }
  return checked_add(max_offset, 1, bytes) && checked_mul(*bytes, bits / 8, bytes);
}
}  // namespace

Status check_offsets(const char* name, const TensorView& t) {
  // Built only on failure: this runs on every call.
  const auto where = [&] {
    return concat(" (shape ", list_string(t.shape, t.rank), ", strides ", list_string(t.stride, t.rank), ")");
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
  std::int64_t end_byte = 0;
  if (!bytes_through(max_offset, t.dtype, &end_byte)) {
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

Status check_gpu_alignment(const char* name, const TensorView& t) {
  const auto address = reinterpret_cast<std::uintptr_t>(t.data);
  const std::uintptr_t alignment = static_cast<std::uintptr_t>(std::max(1, dtype_bits(t.dtype) / 8));
  if (address % alignment != 0) {
    return fail(name, "data pointer ", t.data, " is not ", alignment, "-byte aligned (the size of its dtype ",
                dtype_name(t.dtype), ")");
  }
  return Status::ok();
}

bool is_empty(const TensorView& t) {
  for (int d = 0; d < t.rank; ++d) {
    if (t.shape[d] == 0) return true;
  }
  return false;
}

namespace {
// First and last byte a non-empty, validated view can touch.
struct ByteSpan {
  std::uintptr_t first, last;
};

ByteSpan byte_span(const TensorView& t) {
  std::int64_t max_offset = 0;  // fits: check_offsets
  for (int d = 0; d < t.rank; ++d) max_offset += (t.shape[d] - 1) * t.stride[d];
  const auto first = reinterpret_cast<std::uintptr_t>(t.data);
  std::int64_t bytes = 0;
  bytes_through(max_offset, t.dtype, &bytes);  // fits: check_offsets
  return {first, first + static_cast<std::uintptr_t>(bytes) - 1};
}
}  // namespace

bool memory_ranges_overlap(const TensorView& x, const TensorView& y) {
  if (is_empty(x) || is_empty(y)) return false;
  const ByteSpan a = byte_span(x), b = byte_span(y);
  return !(a.last < b.first || b.last < a.first);
}

}  // namespace sage::detail
