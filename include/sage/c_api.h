/* C API of sage-attention, for bindings from other languages (FFI).
 *
 * Every function but sage_plan_free, sage_last_error and
 * sage_version_string returns a sage_status_t; on failure, sage_last_error()
 * returns a readable message for the calling thread (valid until the next
 * failed call from that thread). No function throws or aborts.
 * The semantics are those of include/sage/attention.h and include/sage/merge.h.
 */
#ifndef SAGE_C_API_H_
#define SAGE_C_API_H_

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The enumerations name the values; every struct field, argument and result
 * that holds one is an int32_t (the *_t typedefs below), because the size of
 * a C enum depends on the compiler and its flags (-fshort-enums, the default
 * of some ARM ABIs) and the structs' layout must not. The layout of
 * sage_tensor_t and sage_options_t is fixed for a SONAME (libsage_attention.so.0.1);
 * fields are only ever added in a new one. */

enum sage_status {
  SAGE_OK = 0,
  SAGE_ERROR_INVALID_ARGUMENT = 1,
  SAGE_ERROR_NOT_IMPLEMENTED = 2,
  SAGE_ERROR_UNSUPPORTED_DEVICE = 3,
  SAGE_ERROR_CUDA = 4,
  SAGE_ERROR_INTERNAL = 5,
  SAGE_ERROR_OUT_OF_MEMORY = 6
};
typedef int32_t sage_status_t;

enum sage_dtype {
  SAGE_DTYPE_F32 = 0,
  SAGE_DTYPE_F16 = 1,
  SAGE_DTYPE_BF16 = 2,
  SAGE_DTYPE_I8 = 3,
  SAGE_DTYPE_FP8_E4M3 = 4,
  SAGE_DTYPE_FP8_E5M2 = 5,
  SAGE_DTYPE_I4X2 = 6,
  SAGE_DTYPE_FP4_E2M1X2 = 7,
  SAGE_DTYPE_UE4M3 = 8
};
typedef int32_t sage_dtype_t;

#define SAGE_MAX_RANK 4
#define SAGE_HOST_DEVICE (-1)

typedef struct sage_tensor_t {
  void* data;
  sage_dtype_t dtype;
  int32_t rank;
  int64_t shape[SAGE_MAX_RANK];
  int64_t stride[SAGE_MAX_RANK]; /* in elements */
  int32_t device;                /* CUDA ordinal or SAGE_HOST_DEVICE */
} sage_tensor_t;

enum sage_layout { SAGE_LAYOUT_HND = 0, SAGE_LAYOUT_NHD = 1 };
typedef int32_t sage_layout_t;
enum sage_causal_align { SAGE_CAUSAL_TOP_LEFT = 0, SAGE_CAUSAL_BOTTOM_RIGHT = 1 };
typedef int32_t sage_causal_align_t;
enum sage_method { SAGE_METHOD_SAGE2 = 0, SAGE_METHOD_SAGE3 = 1, SAGE_METHOD_SAGEBWD = 2 };
typedef int32_t sage_method_t;
enum sage_qk_format { SAGE_QK_INT8 = 0, SAGE_QK_INT4 = 1 };
typedef int32_t sage_qk_format_t;
enum sage_granularity {
  SAGE_GRANULARITY_PER_BLOCK = 0,
  SAGE_GRANULARITY_PER_WARP = 1,
  SAGE_GRANULARITY_PER_THREAD = 2
};
typedef int32_t sage_granularity_t;
enum sage_pv_format {
  SAGE_PV_FP8_E4M3 = 0,
  SAGE_PV_FP8_E5M2 = 1,
  SAGE_PV_FP16 = 2,
  SAGE_PV_BF16 = 3
};
typedef int32_t sage_pv_format_t;
enum sage_pv_accum { SAGE_PV_ACCUM_FP32 = 0, SAGE_PV_ACCUM_TWO_LEVEL = 1 };
typedef int32_t sage_pv_accum_t;

typedef struct sage_options_t {
  sage_method_t method;
  sage_layout_t layout;
  int32_t causal;
  sage_causal_align_t causal_align;
  float sm_scale; /* 0 = 1/sqrt(head_dim) */
  sage_qk_format_t qk_format;
  sage_granularity_t qk_granularity;
  sage_pv_format_t pv_format;
  sage_pv_accum_t pv_accum;
  int32_t smooth_q;
  int32_t smooth_k;
  int32_t smooth_v;
  int32_t return_lse;
} sage_options_t;

/* Fills *options with the library defaults (the C++ AttentionOptions{}). */
sage_status_t sage_default_options(sage_options_t* options);

/* `lse` [B, Hq, Nq] float32 is required when options->return_lse is set and
 * must be NULL when it is not (a given lse that would stay unwritten is an
 * error, SAGE_ERROR_INVALID_ARGUMENT, for both functions). */
sage_status_t sage_attention_workspace_size(const sage_tensor_t* q, const sage_tensor_t* k,
                                            const sage_tensor_t* v, const sage_tensor_t* out,
                                            const sage_tensor_t* lse, const sage_options_t* options,
                                            size_t* bytes);

/* `stream` is a cudaStream_t (NULL = the legacy default stream). `out` and
 * `lse` may share memory with q, k and v (out written over q, in place, for
 * one), never with each other (sage/attention.h). */
sage_status_t sage_attention_forward(const sage_tensor_t* q, const sage_tensor_t* k, const sage_tensor_t* v,
                                     const sage_tensor_t* out, const sage_tensor_t* lse,
                                     const sage_options_t* options, void* workspace, size_t workspace_bytes,
                                     void* stream);

/* Merges two partial attention results over disjoint key sets into the
 * attention over all of them (include/sage/merge.h): out_* [B, H, N, D] in
 * `layout`, lse_* [B, H, N] float32. `out` and `lse` may be the very same
 * views as `out_a` and `lse_a` (in-place merge). `stream` is a cudaStream_t
 * (NULL = the legacy default stream), unused for host tensors. */
sage_status_t sage_merge_attention_states(const sage_tensor_t* out_a, const sage_tensor_t* lse_a,
                                          const sage_tensor_t* out_b, const sage_tensor_t* lse_b,
                                          const sage_tensor_t* out, const sage_tensor_t* lse, sage_layout_t layout,
                                          void* stream);

/* Adaptive 4/8-bit Q K^T (include/sage/calibration.h, docs/calibration.md):
 * a plan file written by a calibration run picks qk_format per call.
 * layer >= 0 is the caller's layer id; timestep >= 0, or SAGE_NO_TIMESTEP.
 * A (layer, timestep) the plan has never seen gets the plan's rules (the
 * nearest calibrated timestep of the layer; INT8 for an unknown layer). */
#define SAGE_NO_TIMESTEP (-1)
typedef struct sage_plan_t sage_plan_t; /* opaque */

/* Reads a plan file; on success *plan must be freed with sage_plan_free. A
 * malformed file fails with SAGE_ERROR_INVALID_ARGUMENT, and
 * sage_last_error() names the file, the problem and where it is. */
sage_status_t sage_plan_load(const char* path, sage_plan_t** plan);

/* *options = *base with qk_format as the plan decides for (layer, timestep);
 * INT4 also takes the plan's INT4 granularity. `options` may be `base`.
 * A plan decides for sage2 calls: base->method must be SAGE_METHOD_SAGE2.
 * layer must be >= 0 and timestep >= 0 or SAGE_NO_TIMESTEP
 * (SAGE_ERROR_INVALID_ARGUMENT otherwise). */
sage_status_t sage_plan_options_for(const sage_plan_t* plan, int64_t layer, int64_t timestep,
                                    const sage_options_t* base, sage_options_t* options);

/* Frees a plan from sage_plan_load (NULL is fine). */
void sage_plan_free(sage_plan_t* plan);

/* The message of the calling thread's last failed call ("" if none). */
const char* sage_last_error(void);

/* "MAJOR.MINOR.PATCH" */
const char* sage_version_string(void);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* SAGE_C_API_H_ */
