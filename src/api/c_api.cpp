// The C API (include/sage/c_api.h): converts the C structs into the C++
// views and options, calls the C++ API and keeps the calling thread's last
// error message. Nothing here throws: every function body runs inside a
// catch-all.
#include "sage/c_api.h"

#include <cstddef>
#include <cstdint>
#include <exception>
#include <memory>
#include <string>

#include "sage/attention.h"
#include "sage/calibration.h"
#include "sage/merge.h"
#include "sage/version.h"

namespace {

using sage::Status;
using sage::StatusCode;

// The message of this thread's last failed call. sage_last_error() returns
// a pointer into it, valid until the next failing call on this thread.
thread_local std::string t_last_error;
thread_local const char* t_last_error_text = "";

void set_last_error(const char* message) noexcept {
  try {
    t_last_error = message;
    t_last_error_text = t_last_error.c_str();
  } catch (...) {
    t_last_error_text = "out of memory while recording the error message";
  }
}

sage_status_t to_c_status(StatusCode code) {
  switch (code) {
    case StatusCode::ok: return SAGE_OK;
    case StatusCode::invalid_argument: return SAGE_ERROR_INVALID_ARGUMENT;
    case StatusCode::not_implemented: return SAGE_ERROR_NOT_IMPLEMENTED;
    case StatusCode::unsupported_device: return SAGE_ERROR_UNSUPPORTED_DEVICE;
    case StatusCode::cuda_error: return SAGE_ERROR_CUDA;
    case StatusCode::internal: return SAGE_ERROR_INTERNAL;
    case StatusCode::out_of_memory: return SAGE_ERROR_OUT_OF_MEMORY;
  }
  return SAGE_ERROR_INTERNAL;
}

// Records a failed status as the thread's last error.
sage_status_t report(const Status& status) noexcept {
  if (!status.is_ok()) set_last_error(status.message().c_str());
  return to_c_status(status.code());
}

// Runs `body` (returning a Status) and reports its result; an exception
// becomes SAGE_ERROR_INTERNAL.
template <class Body>
sage_status_t c_boundary(const char* function, Body&& body) noexcept {
  try {
    return report(body());
  } catch (const std::exception& e) {
    set_last_error((std::string(function) + ": unexpected error (please report): " + e.what()).c_str());
  } catch (...) {
    set_last_error("unexpected non-standard exception (please report)");
  }
  return SAGE_ERROR_INTERNAL;
}

// The C values are the C++ enumerators' positions: conversions are casts
// after a range check.
template <class CppEnum>
constexpr bool same_value(int c_value, CppEnum value) {
  return c_value == static_cast<int>(value);
}
static_assert(same_value(SAGE_DTYPE_F32, sage::DType::f32) && same_value(SAGE_DTYPE_F16, sage::DType::f16) &&
              same_value(SAGE_DTYPE_BF16, sage::DType::bf16) && same_value(SAGE_DTYPE_I8, sage::DType::i8) &&
              same_value(SAGE_DTYPE_FP8_E4M3, sage::DType::fp8_e4m3) &&
              same_value(SAGE_DTYPE_FP8_E5M2, sage::DType::fp8_e5m2) && same_value(SAGE_DTYPE_I4X2, sage::DType::i4x2) &&
              same_value(SAGE_DTYPE_FP4_E2M1X2, sage::DType::fp4_e2m1x2) &&
              same_value(SAGE_DTYPE_UE4M3, sage::DType::ue4m3));
static_assert(same_value(SAGE_LAYOUT_NHD, sage::TensorLayout::NHD) &&
              same_value(SAGE_CAUSAL_BOTTOM_RIGHT, sage::CausalAlign::bottom_right) &&
              same_value(SAGE_METHOD_SAGE3, sage::Method::sage3) &&
              same_value(SAGE_METHOD_SAGEBWD, sage::Method::sagebwd) && same_value(SAGE_QK_INT4, sage::QKFormat::int4) &&
              same_value(SAGE_GRANULARITY_PER_WARP, sage::Granularity::per_warp) &&
              same_value(SAGE_GRANULARITY_PER_THREAD, sage::Granularity::per_thread) &&
              same_value(SAGE_PV_FP8_E5M2, sage::PVFormat::fp8_e5m2) && same_value(SAGE_PV_FP16, sage::PVFormat::fp16) &&
              same_value(SAGE_PV_BF16, sage::PVFormat::bf16) &&
              same_value(SAGE_PV_ACCUM_TWO_LEVEL, sage::PVAccum::two_level));
// The structs' layout is part of the ABI (c_api.h): every field a fixed-width
// type, no padding but the tail of sage_tensor_t on 64-bit targets.
static_assert(sizeof(sage_options_t) == 13 * 4, "sage_options_t changed: a new SONAME");
static_assert(offsetof(sage_tensor_t, dtype) == sizeof(void*) && offsetof(sage_tensor_t, rank) == sizeof(void*) + 4 &&
                  offsetof(sage_tensor_t, shape) == sizeof(void*) + 8 &&
                  offsetof(sage_tensor_t, device) == sizeof(void*) + 8 + 2 * 8 * SAGE_MAX_RANK,
              "sage_tensor_t changed: a new SONAME");

// A C caller can store any int32 in an enum-valued field: range-checked
// before the conversion (an out-of-range C++ enum value is undefined).
template <class CppEnum>
Status convert_enum(const std::string& name, std::int32_t raw, int count, const char* expected, CppEnum* out) {
  if (raw < 0 || raw >= count) {
    return Status::invalid(name + ": invalid value " + std::to_string(raw) + " (expected " + expected + ")");
  }
  *out = static_cast<CppEnum>(raw);
  return Status::ok();
}

#define SAGE_C_RETURN_IF_ERROR(expr)                \
  do {                                              \
    ::sage::Status sage_status_ = (expr);           \
    if (!sage_status_.is_ok()) return sage_status_; \
  } while (0)

Status convert_tensor(const char* name, const sage_tensor_t* c, sage::TensorView* out) {
  if (c == nullptr) return Status::invalid(std::string(name) + " is NULL");
  SAGE_C_RETURN_IF_ERROR(convert_enum(std::string(name) + ".dtype", c->dtype, 9,
                                      "a SAGE_DTYPE_* value, 0..8", &out->dtype));
  out->data = c->data;
  out->rank = c->rank;  // the C++ validation reports a wrong rank
  for (int d = 0; d < SAGE_MAX_RANK; ++d) {
    out->shape[d] = c->shape[d];
    out->stride[d] = c->stride[d];
  }
  out->device = c->device;
  return Status::ok();
}

// `name` is the argument's name in the C function ("options", "base").
Status convert_options(const std::string& name, const sage_options_t* c, sage::AttentionOptions* out) {
  if (c == nullptr) return Status::invalid(name + " is NULL (fill one with sage_default_options)");
  const std::string field = name + ".";
  SAGE_C_RETURN_IF_ERROR(convert_enum(field + "method", c->method, 3, "SAGE_METHOD_*: 0..2", &out->method));
  SAGE_C_RETURN_IF_ERROR(convert_enum(field + "layout", c->layout, 2, "SAGE_LAYOUT_*: 0..1", &out->layout));
  SAGE_C_RETURN_IF_ERROR(
      convert_enum(field + "causal_align", c->causal_align, 2, "SAGE_CAUSAL_*: 0..1", &out->causal_align));
  SAGE_C_RETURN_IF_ERROR(convert_enum(field + "qk_format", c->qk_format, 2, "SAGE_QK_*: 0..1", &out->qk_format));
  SAGE_C_RETURN_IF_ERROR(convert_enum(field + "qk_granularity", c->qk_granularity, 3, "SAGE_GRANULARITY_*: 0..2",
                                      &out->qk_granularity));
  SAGE_C_RETURN_IF_ERROR(convert_enum(field + "pv_format", c->pv_format, 4, "SAGE_PV_*: 0..3", &out->pv_format));
  SAGE_C_RETURN_IF_ERROR(convert_enum(field + "pv_accum", c->pv_accum, 2, "SAGE_PV_ACCUM_*: 0..1", &out->pv_accum));
  out->causal = c->causal != 0;
  out->sm_scale = c->sm_scale;
  out->smooth_q = c->smooth_q != 0;
  out->smooth_k = c->smooth_k != 0;
  out->smooth_v = c->smooth_v != 0;
  out->return_lse = c->return_lse != 0;
  return Status::ok();
}

// The arguments of one C call in C++ form.
struct CallArgs {
  sage::AttentionArgs args;
  sage::AttentionOptions options;
};

Status convert_call(const sage_tensor_t* q, const sage_tensor_t* k, const sage_tensor_t* v, const sage_tensor_t* out,
                    const sage_tensor_t* lse, const sage_options_t* options, CallArgs* call) {
  SAGE_C_RETURN_IF_ERROR(convert_tensor("q", q, &call->args.q));
  SAGE_C_RETURN_IF_ERROR(convert_tensor("k", k, &call->args.k));
  SAGE_C_RETURN_IF_ERROR(convert_tensor("v", v, &call->args.v));
  SAGE_C_RETURN_IF_ERROR(convert_tensor("out", out, &call->args.out));
  SAGE_C_RETURN_IF_ERROR(convert_options("options", options, &call->options));
  if (call->options.return_lse) {
    if (lse == nullptr) return Status::invalid("lse is NULL but options->return_lse is set");
    SAGE_C_RETURN_IF_ERROR(convert_tensor("lse", lse, &call->args.lse));
  } else if (lse != nullptr) {
    // A caller that passes lse expects it written; the call would leave it as it was.
    return Status::invalid("lse is given but options->return_lse is 0 (set it to have lse written, or pass NULL)");
  }
  return Status::ok();
}

Status convert_merge_call(const sage_tensor_t* out_a, const sage_tensor_t* lse_a, const sage_tensor_t* out_b,
                          const sage_tensor_t* lse_b, const sage_tensor_t* out, const sage_tensor_t* lse,
                          sage_layout_t layout, sage::MergeArgs* args, sage::TensorLayout* cpp_layout) {
  SAGE_C_RETURN_IF_ERROR(convert_tensor("out_a", out_a, &args->out_a));
  SAGE_C_RETURN_IF_ERROR(convert_tensor("lse_a", lse_a, &args->lse_a));
  SAGE_C_RETURN_IF_ERROR(convert_tensor("out_b", out_b, &args->out_b));
  SAGE_C_RETURN_IF_ERROR(convert_tensor("lse_b", lse_b, &args->lse_b));
  SAGE_C_RETURN_IF_ERROR(convert_tensor("out", out, &args->out));
  SAGE_C_RETURN_IF_ERROR(convert_tensor("lse", lse, &args->lse));
  return convert_enum("layout", layout, 2, "SAGE_LAYOUT_*: 0..1", cpp_layout);
}

template <class CppEnum>
std::int32_t to_c_enum(CppEnum value) {
  return static_cast<std::int32_t>(value);
}

// The C struct of C++ options (the reverse of convert_options).
void to_c_options(const sage::AttentionOptions& d, sage_options_t* options) {
  options->method = to_c_enum(d.method);
  options->layout = to_c_enum(d.layout);
  options->causal = d.causal ? 1 : 0;
  options->causal_align = to_c_enum(d.causal_align);
  options->sm_scale = d.sm_scale;
  options->qk_format = to_c_enum(d.qk_format);
  options->qk_granularity = to_c_enum(d.qk_granularity);
  options->pv_format = to_c_enum(d.pv_format);
  options->pv_accum = to_c_enum(d.pv_accum);
  options->smooth_q = d.smooth_q ? 1 : 0;
  options->smooth_k = d.smooth_k ? 1 : 0;
  options->smooth_v = d.smooth_v ? 1 : 0;
  options->return_lse = d.return_lse ? 1 : 0;
}

}  // namespace

extern "C" {

sage_status_t sage_default_options(sage_options_t* options) {
  return c_boundary("sage_default_options", [&]() -> Status {
    if (options == nullptr) return Status::invalid("options is NULL");
    to_c_options(sage::AttentionOptions{}, options);
    return Status::ok();
  });
}

sage_status_t sage_attention_workspace_size(const sage_tensor_t* q, const sage_tensor_t* k, const sage_tensor_t* v,
                                            const sage_tensor_t* out, const sage_tensor_t* lse,
                                            const sage_options_t* options, size_t* bytes) {
  return c_boundary("sage_attention_workspace_size", [&]() -> Status {
    if (bytes == nullptr) return Status::invalid("bytes is NULL");
    *bytes = 0;
    CallArgs call;
    SAGE_C_RETURN_IF_ERROR(convert_call(q, k, v, out, lse, options, &call));
    return sage::attention_workspace_size(call.args, call.options, bytes);
  });
}

sage_status_t sage_attention_forward(const sage_tensor_t* q, const sage_tensor_t* k, const sage_tensor_t* v,
                                     const sage_tensor_t* out, const sage_tensor_t* lse,
                                     const sage_options_t* options, void* workspace, size_t workspace_bytes,
                                     void* stream) {
  return c_boundary("sage_attention_forward", [&]() -> Status {
    CallArgs call;
    SAGE_C_RETURN_IF_ERROR(convert_call(q, k, v, out, lse, options, &call));
    return sage::attention_forward(call.args, call.options, workspace, workspace_bytes,
                                   static_cast<sage::Stream>(stream));
  });
}

sage_status_t sage_merge_attention_states(const sage_tensor_t* out_a, const sage_tensor_t* lse_a,
                                          const sage_tensor_t* out_b, const sage_tensor_t* lse_b,
                                          const sage_tensor_t* out, const sage_tensor_t* lse, sage_layout_t layout,
                                          void* stream) {
  return c_boundary("sage_merge_attention_states", [&]() -> Status {
    sage::MergeArgs args;
    sage::TensorLayout cpp_layout{};
    SAGE_C_RETURN_IF_ERROR(convert_merge_call(out_a, lse_a, out_b, lse_b, out, lse, layout, &args, &cpp_layout));
    return sage::merge_attention_states(args, cpp_layout, static_cast<sage::Stream>(stream));
  });
}

// sage_plan_t is the C++ Plan itself behind an opaque name.
struct sage_plan_t {
  sage::Plan plan;
};

sage_status_t sage_plan_load(const char* path, sage_plan_t** plan) {
  return c_boundary("sage_plan_load", [&]() -> Status {
    if (plan == nullptr) return Status::invalid("plan is NULL");
    *plan = nullptr;
    if (path == nullptr) return Status::invalid("path is NULL");
    auto loaded = std::make_unique<sage_plan_t>();
    SAGE_C_RETURN_IF_ERROR(sage::Plan::load(path, &loaded->plan));
    *plan = loaded.release();
    return Status::ok();
  });
}

sage_status_t sage_plan_options_for(const sage_plan_t* plan, int64_t layer, int64_t timestep,
                                    const sage_options_t* base, sage_options_t* options) {
  return c_boundary("sage_plan_options_for", [&]() -> Status {
    if (plan == nullptr) return Status::invalid("plan is NULL");
    if (options == nullptr) return Status::invalid("options is NULL");
    SAGE_C_RETURN_IF_ERROR(sage::check_calibration_key(layer, timestep));
    sage::AttentionOptions cpp_base;
    SAGE_C_RETURN_IF_ERROR(convert_options("base", base, &cpp_base));
    if (cpp_base.method != sage::Method::sage2) {
      return Status::invalid(std::string("base.method: a calibration plan picks the Q K^T format of sage2 calls; "
                                         "base is a ") + sage::method_name(cpp_base.method) + " call");
    }
    to_c_options(plan->plan.options_for(layer, timestep, cpp_base), options);
    return Status::ok();
  });
}

void sage_plan_free(sage_plan_t* plan) { delete plan; }

const char* sage_last_error(void) { return t_last_error_text; }

const char* sage_version_string(void) { return SAGE_VERSION_STRING; }

}  // extern "C"
