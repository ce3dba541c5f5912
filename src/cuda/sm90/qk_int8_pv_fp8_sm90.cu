// Host side of the SageAttention2 Hopper path: pre-pass, TMA descriptors,
// and the switch from runtime options to a kernel instantiation.
#include "cuda/sm90/qk_int8_pv_fp8_sm90.h"

#include <cuda.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <cudaTypedefs.h>

#include <cmath>
#include <string>

#include "api/validate.h"
#include "cuda/common/forward_host.h"
#include "cuda/quant/prepass.h"
#include "cuda/sm90/qk_int8_pv_fp8_sm90_params.h"

namespace sage::sm90 {

template <int Dp, bool Causal, typename OutT, bool SmoothQ>
cudaError_t launch_qk_int8_pv_fp8_sm90(const QkInt8PvFp8Params& p, int sm_count, cudaStream_t stream);

namespace {

quant::PrepassProblem prepass_problem(const AttentionArgs& args, const AttentionOptions& o) {
  return fwd::prepass_problem(args, o, kSm90Geometry, quant::VFormat::fp8_e4m3_transposed);
}

PFN_cuTensorMapEncodeTiled_v12000 tensor_map_encoder() {
  static PFN_cuTensorMapEncodeTiled_v12000 fn = [] {
    void* ptr = nullptr;
    cudaDriverEntryPointQueryResult found{};
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &ptr, 12000, cudaEnableDefault, &found) !=
            cudaSuccess ||
        found != cudaDriverEntryPointSuccess) {
      ptr = nullptr;
    }
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(ptr);
  }();
  return fn;
}

// A 3D byte tensor [dim2][dim1][dim0] (dim0 contiguous) loaded in boxes of
// box0 x box1 x 1 with the swizzle that matches a box0-byte row.
Status make_tensor_map(CUtensorMap* map, void* base, std::uint64_t dim0, std::uint64_t dim1, std::uint64_t dim2,
                       std::uint32_t box0, std::uint32_t box1) {
  auto encode = tensor_map_encoder();
  if (!encode) return Status(StatusCode::cuda_error, "the CUDA driver does not provide cuTensorMapEncodeTiled");
  const cuuint64_t dims[3] = {dim0, dim1, dim2};
  const cuuint64_t strides[2] = {dim0, dim0 * dim1};  // bytes, for dims 1 and 2
  const cuuint32_t box[3] = {box0, box1, 1};
  const cuuint32_t elem_strides[3] = {1, 1, 1};
  const CUtensorMapSwizzle swizzle = box0 == 128 ? CU_TENSOR_MAP_SWIZZLE_128B : CU_TENSOR_MAP_SWIZZLE_64B;
  const CUresult r = encode(map, CU_TENSOR_MAP_DATA_TYPE_UINT8, 3, base, dims, strides, box, elem_strides,
                            CU_TENSOR_MAP_INTERLEAVE_NONE, swizzle, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                            CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  if (r != CUDA_SUCCESS) {
    return Status(StatusCode::internal, "cuTensorMapEncodeTiled failed (error " + std::to_string(r) + ")");
  }
  return Status::ok();
}

template <int Dp, bool SmoothQ>
cudaError_t launch_for(const QkInt8PvFp8Params& p, bool causal, bool bf16, int sm_count, cudaStream_t s) {
  if (bf16) {
    return causal ? launch_qk_int8_pv_fp8_sm90<Dp, true, __nv_bfloat16, SmoothQ>(p, sm_count, s)
                  : launch_qk_int8_pv_fp8_sm90<Dp, false, __nv_bfloat16, SmoothQ>(p, sm_count, s);
  }
  return causal ? launch_qk_int8_pv_fp8_sm90<Dp, true, __half, SmoothQ>(p, sm_count, s)
                : launch_qk_int8_pv_fp8_sm90<Dp, false, __half, SmoothQ>(p, sm_count, s);
}

template <int Dp>
cudaError_t launch_for_dp(const QkInt8PvFp8Params& p, bool causal, bool bf16, int sm_count, cudaStream_t s) {
  return p.q_mean ? launch_for<Dp, true>(p, causal, bf16, sm_count, s)
                  : launch_for<Dp, false>(p, causal, bf16, sm_count, s);
}

}  // namespace

std::string unsupported_reason(const AttentionOptions& o, std::int64_t head_dim) {
  if (o.method != Method::sage2) return std::string("method ") + method_name(o.method) + " has no sm90 kernel yet";
  if (o.qk_format != QKFormat::int8) return "qk_format int4 runs on the mma.sync kernels (wgmma has no INT4)";
  if (o.pv_format != PVFormat::fp8_e4m3) {
    return std::string("pv_format ") + pv_format_name(o.pv_format) + " has no sm90 kernel yet (use fp8-e4m3)";
  }
  if (o.pv_accum != PVAccum::two_level) return "pv_accum fp32 has no sm90 kernel (FP8 MMAs use two_level)";
  if (head_dim > 128) return "head_dim " + std::to_string(head_dim) + " > 128 has no sm90 kernel yet";
  return {};
}

std::size_t workspace_bytes(const AttentionArgs& args, const AttentionOptions& options) {
  return quant::make_prepass_layout(prepass_problem(args, options)).bytes;
}

Status run(const AttentionArgs& args, const AttentionOptions& o, const cuda::DeviceInfo& device, void* workspace,
           Stream stream, bool kernel_only) {
  cudaStream_t s = reinterpret_cast<cudaStream_t>(stream);
  fwd::Prepass prepass;
  SAGE_RETURN_IF_ERROR(fwd::start_prepass(args, o, prepass_problem(args, o), workspace, s, kernel_only,
                                         /*programmatic=*/true, &prepass));
  const quant::PrepassProblem& pp = prepass.problem;
  const quant::PrepassLayout& layout = prepass.layout;
  const quant::PrepassBuffers& buf = prepass.buffers;

  const int dp = layout.head_dim_padded;
  QkInt8PvFp8Params p{};
  fwd::fill_forward_params(args, o, prepass, &p);
  SAGE_RETURN_IF_ERROR(make_tensor_map(&p.tmap_q, buf.q, dp, pp.nq, std::uint64_t(pp.batch) * pp.heads_q, dp,
                                       query_block_rows(dp, p.q_mean != nullptr)));
  SAGE_RETURN_IF_ERROR(make_tensor_map(&p.tmap_k, buf.k, dp, pp.nk, std::uint64_t(pp.batch) * pp.heads_kv, dp, 128));
  SAGE_RETURN_IF_ERROR(
      make_tensor_map(&p.tmap_vt, buf.vt, layout.nk_padded, dp, std::uint64_t(pp.batch) * pp.heads_kv, 128, dp));

  const cudaError_t err = dp == 64 ? launch_for_dp<64>(p, o.causal, pp.bf16, device.sm_count, s)
                                   : launch_for_dp<128>(p, o.causal, pp.bf16, device.sm_count, s);
  if (err != cudaSuccess) return fwd::cuda_status(err, "sm90 attention kernel launch");
  return Status::ok();
}

}  // namespace sage::sm90
