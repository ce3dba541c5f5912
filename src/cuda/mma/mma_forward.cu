// Host side of the mma.sync kernel family: the pre-pass at kMmaGeometry (V
// in FP8 V^T or fp16 rows, by pv_format) and the switch from runtime options
// to a kernel instantiation (head dim, causal, output type, PV mode).
#include "cuda/mma/mma_forward.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <string>

#include "api/validate.h"
#include "cuda/mma/qk_int8_mma_params.h"
#include "cuda/quant/prepass.h"
#include "numerics/tile_geometry.h"

namespace sage::mma {

template <int Dp, bool Causal, typename OutT, PvMode Pv, int QkBits, bool SmoothQ>
cudaError_t launch_qk_int8_mma(const QkInt8MmaParams& p, int batch_heads, cudaStream_t stream);

namespace {

Status cuda_status(cudaError_t err, const char* what) {
  return Status(StatusCode::cuda_error, std::string(what) + ": " + cudaGetErrorString(err));
}

// [B, H, N, D] strides of a q/k/v/out view in either layout.
quant::StridedInput strided(const TensorView& t, TensorLayout layout) {
  quant::StridedInput s;
  s.data = t.data;
  s.stride_b = t.stride[0];
  s.stride_h = layout == TensorLayout::HND ? t.stride[1] : t.stride[2];
  s.stride_n = layout == TensorLayout::HND ? t.stride[2] : t.stride[1];
  return s;
}

bool fp16_pv(const AttentionOptions& o) { return o.pv_format == PVFormat::fp16; }

// The int casts are safe: check_gpu_kernel_limits bounded every size first.
quant::PrepassProblem prepass_problem(const AttentionArgs& args, const AttentionOptions& o) {
  const detail::AttentionDims d = detail::attention_dims(args, o.layout);
  quant::PrepassProblem p;
  p.batch = static_cast<int>(d.batch);
  p.heads_q = static_cast<int>(d.heads_q);
  p.heads_kv = static_cast<int>(d.heads_kv);
  p.nq = static_cast<int>(d.nq);
  p.nk = static_cast<int>(d.nk);
  p.head_dim = static_cast<int>(d.head_dim);
  p.head_dim_padded = p.head_dim <= 64 ? 64 : 128;
  p.bf16 = args.q.dtype == DType::bf16;
  p.granularity = o.qk_granularity;
  p.geometry = kMmaGeometry;
  p.v_format = fp16_pv(o) ? quant::VFormat::fp16_rows : quant::VFormat::fp8_e4m3_transposed;
  p.qk_bits = o.qk_format == QKFormat::int4 ? 4 : 8;
  p.sm_scale = o.sm_scale > 0.f ? o.sm_scale : 1.f / std::sqrt(static_cast<float>(d.head_dim));
  p.smooth_q = o.smooth_q;
  p.smooth_k = o.smooth_k;
  p.smooth_v = o.smooth_v;
  p.lse_correction = o.return_lse && o.smooth_k;
  return p;
}

template <int Dp, PvMode Pv, int QkBits, bool SmoothQ>
cudaError_t launch_smooth(const QkInt8MmaParams& p, bool causal, bool bf16, int batch_heads, cudaStream_t s) {
  if (bf16) {
    return causal ? launch_qk_int8_mma<Dp, true, __nv_bfloat16, Pv, QkBits, SmoothQ>(p, batch_heads, s)
                  : launch_qk_int8_mma<Dp, false, __nv_bfloat16, Pv, QkBits, SmoothQ>(p, batch_heads, s);
  }
  return causal ? launch_qk_int8_mma<Dp, true, __half, Pv, QkBits, SmoothQ>(p, batch_heads, s)
                : launch_qk_int8_mma<Dp, false, __half, Pv, QkBits, SmoothQ>(p, batch_heads, s);
}

template <int Dp, PvMode Pv, int QkBits>
cudaError_t launch_for(const QkInt8MmaParams& p, bool causal, bool bf16, int batch_heads, cudaStream_t s) {
  return p.q_mean ? launch_smooth<Dp, Pv, QkBits, true>(p, causal, bf16, batch_heads, s)
                  : launch_smooth<Dp, Pv, QkBits, false>(p, causal, bf16, batch_heads, s);
}

// The instantiated (PV mode, Q/K bits) pairs; unsupported_reason admits no other.
template <int Dp>
cudaError_t launch_for_dp(const QkInt8MmaParams& p, PvMode pv, int qk_bits, bool causal, bool bf16,
                          int batch_heads, cudaStream_t s) {
  if (qk_bits == 4) {
    switch (pv) {
      case PvMode::fp8_two_level: return launch_for<Dp, PvMode::fp8_two_level, 4>(p, causal, bf16, batch_heads, s);
      case PvMode::fp16_fp32: return launch_for<Dp, PvMode::fp16_fp32, 4>(p, causal, bf16, batch_heads, s);
      case PvMode::fp16_two_level: break;
    }
    return cudaErrorInvalidValue;
  }
  switch (pv) {
    case PvMode::fp8_two_level: return launch_for<Dp, PvMode::fp8_two_level, 8>(p, causal, bf16, batch_heads, s);
    case PvMode::fp16_fp32: return launch_for<Dp, PvMode::fp16_fp32, 8>(p, causal, bf16, batch_heads, s);
    case PvMode::fp16_two_level: return launch_for<Dp, PvMode::fp16_two_level, 8>(p, causal, bf16, batch_heads, s);
  }
  return cudaErrorInvalidValue;
}

}  // namespace

std::string unsupported_reason(const AttentionOptions& o, std::int64_t head_dim, const MmaCapabilities& caps) {
  if (o.method != Method::sage2) return std::string("method ") + method_name(o.method) + " has no mma.sync kernel yet";
  switch (o.pv_format) {
    case PVFormat::fp8_e4m3:
      if (!caps.fp8_mma) {
        return "pv_format fp8-e4m3 needs FP8 mma.sync: compute capability 8.9 or newer and this build compiled "
               "for sm_89 or newer (add 89 to SAGE_CUDA_ARCHS); sm_80/sm_86 have no FP8 tensor cores, use "
               "pv_format fp16 there";
      }
      if (o.pv_accum != PVAccum::two_level) return "pv_accum fp32 with FP8 PV has no mma.sync kernel (use two_level)";
      break;
    case PVFormat::fp16: break;  // fp32 and two_level accumulation
    default:
      return std::string("pv_format ") + pv_format_name(o.pv_format) +
             " has no mma.sync kernel yet (fp8-e4m3 and fp16 so far)";
  }
  if (o.qk_format == QKFormat::int4 && o.pv_format == PVFormat::fp16 && o.pv_accum != PVAccum::fp32) {
    return "qk_format int4 with pv_format fp16 is built with pv_accum fp32 only (two_level is not instantiated)";
  }
  if (head_dim > 128) return "head_dim " + std::to_string(head_dim) + " > 128 has no mma.sync kernel yet";
  return {};
}

std::size_t workspace_bytes(const AttentionArgs& args, const AttentionOptions& options) {
  return quant::make_prepass_layout(prepass_problem(args, options)).bytes;
}

Status run(const AttentionArgs& args, const AttentionOptions& o, void* workspace, Stream stream, bool kernel_only) {
  const quant::PrepassProblem pp = prepass_problem(args, o);
  const quant::PrepassLayout layout = quant::make_prepass_layout(pp);
  const quant::PrepassBuffers buf = layout.carve(workspace);
  cudaStream_t s = reinterpret_cast<cudaStream_t>(stream);

  cudaError_t err = cudaSuccess;
  if (!kernel_only) {
    err = quant::launch_prepass(pp, layout, buf, strided(args.q, o.layout), strided(args.k, o.layout),
                                strided(args.v, o.layout), s);
    if (err != cudaSuccess) return cuda_status(err, "quantization pre-pass launch");
  }

  QkInt8MmaParams p{};
  p.q = buf.q;
  p.k = buf.k;
  p.vt = buf.vt;
  p.v16 = buf.v16;
  p.nk_padded = layout.nk_padded;
  p.q_scale = buf.q_scale;
  p.k_scale = buf.k_scale;
  p.v_scale = buf.v_scale;
  p.v_mean = o.smooth_v ? buf.v_mean : nullptr;
  p.lse_corr = pp.lse_correction ? buf.lse_corr : nullptr;
  p.q_mean = pp.smooth_q ? buf.q_mean : nullptr;
  p.q_tiles = layout.q_tiles;
  p.scale_log2 = quant::score_scale_log2(pp);
  const quant::StridedInput out = strided(args.out, o.layout);
  p.out = args.out.data;
  p.out_stride_b = out.stride_b;
  p.out_stride_h = out.stride_h;
  p.out_stride_n = out.stride_n;
  p.out_pair_store = reinterpret_cast<std::uintptr_t>(args.out.data) % 4 == 0 && out.stride_b % 2 == 0 &&
                     out.stride_h % 2 == 0 && out.stride_n % 2 == 0;
  if (o.return_lse) {
    p.lse = static_cast<float*>(args.lse.data);
    p.lse_stride_b = args.lse.stride[0];
    p.lse_stride_h = args.lse.stride[1];
    p.lse_stride_n = args.lse.stride[2];
  }
  p.heads_q = pp.heads_q;
  p.heads_kv = pp.heads_kv;
  p.nq = pp.nq;
  p.nk = pp.nk;
  p.head_dim = pp.head_dim;
  p.q_groups = layout.q_groups;
  p.k_groups = layout.k_groups;
  p.granularity = o.qk_granularity;
  p.causal_shift = o.causal && o.causal_align == CausalAlign::bottom_right ? pp.nk - pp.nq : 0;

  const int batch_heads = pp.batch * pp.heads_q;
  const PvMode pv = !fp16_pv(o)                       ? PvMode::fp8_two_level
                    : o.pv_accum == PVAccum::two_level ? PvMode::fp16_two_level
                                                       : PvMode::fp16_fp32;
  err = layout.head_dim_padded == 64 ? launch_for_dp<64>(p, pv, pp.qk_bits, o.causal, pp.bf16, batch_heads, s)
                                     : launch_for_dp<128>(p, pv, pp.qk_bits, o.causal, pp.bf16, batch_heads, s);
  if (err != cudaSuccess) return cuda_status(err, "mma.sync attention kernel launch");
  return Status::ok();
}

}  // namespace sage::mma
