// Building blocks of argument validation shared by the entry points
// (validate.cpp for attention, merge.cpp for merge_attention_states):
// message building and the checks of one tensor on its own.
//
// Every check returns invalid_argument with a message that starts with the
// argument's name ("k: ..."), so that a user reading it knows what to fix
// without opening the source.
#pragma once

#include <cstdint>
#include <cstdio>
#include <string>
#include <string_view>
#include <type_traits>

#include "sage/attention.h"

namespace sage::detail {

// ---------------------------------------------------------------- messages

// Message building without iostreams: a stream's locale facets are process
// state, and inside a Python process that loaded other C++ runtimes they
// have crashed us (std::ostream in an extension module); plain appends have
// no such dependency.
inline void append(std::string& s, std::string_view v) { s += v; }
inline void append(std::string& s, const char* v) { s += v; }
inline void append(std::string& s, const std::string& v) { s += v; }
template <class Int, std::enable_if_t<std::is_integral_v<Int>, int> = 0>
void append(std::string& s, Int v) {
  s += std::to_string(v);
}
inline void append(std::string& s, double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g", v);
  s += buf;
}
inline void append(std::string& s, float v) { append(s, static_cast<double>(v)); }
inline void append(std::string& s, const void* v) {
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

// "[2, 32, 4096, 128]"
std::string list_string(const std::int64_t* values, int rank);

// "the host" or "GPU 3".
std::string device_label(int device);

// Overflow-checked int64 arithmetic (false when the result does not fit).
inline bool checked_mul(std::int64_t a, std::int64_t b, std::int64_t* out) { return !__builtin_mul_overflow(a, b, out); }
inline bool checked_add(std::int64_t a, std::int64_t b, std::int64_t* out) { return !__builtin_add_overflow(a, b, out); }

// ---------------------------------------------------------------- layouts and enums

// The layout's dimension order, for messages.
inline const char* layout_doc(TensorLayout layout) {
  return layout == TensorLayout::HND ? "layout HND: [B, H, N, D]" : "layout NHD: [B, N, H, D]";
}

// Index of the heads and tokens dimensions of a 4-D q/k/v/out view.
inline int heads_dim(TensorLayout layout) { return layout == TensorLayout::HND ? 1 : 2; }
inline int tokens_dim(TensorLayout layout) { return layout == TensorLayout::HND ? 2 : 1; }

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

// ---------------------------------------------------------------- one tensor on its own

Status check_rank(const char* name, const TensorView& t, int expected, const char* dims_doc);
Status check_dtype_value(const char* name, const TensorView& t);
Status check_non_negative_sizes(const char* name, const TensorView& t);
// Every dimension >= 1.
Status check_non_empty(const char* name, const TensorView& t);
Status check_data(const char* name, const TensorView& t);
Status check_non_negative_strides(const char* name, const TensorView& t);

// The innermost (head_dim) dimension of q/k/v/out must be contiguous:
// kernels and the emulation read a row as one run of memory. (The LSE is
// written one value per row, so any strides do.) A dimension of size 1 is
// exempt, since frameworks give such dimensions arbitrary strides.
Status check_unit_last_stride(const char* name, const TensorView& t);

// The largest element offset, sum (shape[d] - 1) * stride[d], must fit in
// int64, and so must the element count and the byte offset: kernels index
// with 64-bit offsets, and an overflow here would be a silent out-of-bounds
// access there. Also rejects views whose last byte would wrap the address
// space. Meaningful for non-empty views only.
Status check_offsets(const char* name, const TensorView& t);

Status check_device_ordinal(const char* name, const TensorView& t);

// Outputs must not alias themselves, or two results would race for one
// address. Sufficient test: ordered by stride, each dimension of size > 1
// starts past the extent of the previous one (dense and padded layouts,
// HND and NHD, all pass; broadcast zero strides do not).
Status check_no_self_overlap(const char* name, const TensorView& t);

// A view with a dimension of size 0 has no element: it is never read or
// written, so its pointer and strides need not be valid.
bool is_empty(const TensorView& t);

// Whether the byte ranges two validated views span intersect (false when
// either is empty). Conservative: views that interleave without sharing an
// element count as overlapping.
bool memory_ranges_overlap(const TensorView& x, const TensorView& y);

// A GPU tensor's data pointer must have the natural alignment of its dtype.
Status check_gpu_alignment(const char* name, const TensorView& t);

}  // namespace sage::detail
