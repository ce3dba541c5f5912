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
#include "cuda/common/forward_host.h"
#include "cuda/mma/qk_int8_mma_params.h"
#include "cuda/quant/prepass.h"
#include "numerics/tile_geometry.h"

namespace sage::mma {

template <int Dp, bool Causal, typename OutT, PvMode Pv, int QkBits, bool SmoothQ>
cudaError_t launch_qk_int8_mma(const QkInt8MmaParams& p, cudaStream_t stream);

namespace {

bool fp16_pv(const AttentionOptions& o) { return o.pv_format == PVFormat::fp16; }

quant::PrepassProblem prepass_problem(const AttentionArgs& args, const AttentionOptions& o) {
  return fwd::prepass_problem(args, o, kMmaGeometry,
                              fp16_pv(o) ? quant::VFormat::fp16_rows : quant::VFormat::fp8_e4m3_transposed);
}

template <int Dp, PvMode Pv, int QkBits, bool SmoothQ>
cudaError_t launch_smooth(const QkInt8MmaParams& p, bool causal, bool bf16, cudaStream_t s) {
  if (bf16) {
    return causal ? launch_qk_int8_mma<Dp, true, __nv_bfloat16, Pv, QkBits, SmoothQ>(p, s)
                  : launch_qk_int8_mma<Dp, false, __nv_bfloat16, Pv, QkBits, SmoothQ>(p, s);
  }
  return causal ? launch_qk_int8_mma<Dp, true, __half, Pv, QkBits, SmoothQ>(p, s)
                : launch_qk_int8_mma<Dp, false, __half, Pv, QkBits, SmoothQ>(p, s);
}

template <int Dp, PvMode Pv, int QkBits>
cudaError_t launch_for(const QkInt8MmaParams& p, bool causal, bool bf16, cudaStream_t s) {
  return p.q_mean ? launch_smooth<Dp, Pv, QkBits, true>(p, causal, bf16, s)
                  : launch_smooth<Dp, Pv, QkBits, false>(p, causal, bf16, s);
}

template <int Dp, int QkBits>
cudaError_t launch_for_bits(const QkInt8MmaParams& p, PvMode pv, bool causal, bool bf16, cudaStream_t s) {
  switch (pv) {
    case PvMode::fp8_two_level: return launch_for<Dp, PvMode::fp8_two_level, QkBits>(p, causal, bf16, s);
    case PvMode::fp16_fp32: return launch_for<Dp, PvMode::fp16_fp32, QkBits>(p, causal, bf16, s);
    case PvMode::fp16_two_level: return launch_for<Dp, PvMode::fp16_two_level, QkBits>(p, causal, bf16, s);
  }
  return cudaErrorInvalidValue;
}

// Every (PV mode, Q/K bits) pair is instantiated.
template <int Dp>
cudaError_t launch_for_dp(const QkInt8MmaParams& p, PvMode pv, int qk_bits, bool causal, bool bf16,
                          cudaStream_t s) {
  return qk_bits == 4 ? launch_for_bits<Dp, 4>(p, pv, causal, bf16, s)
                      : launch_for_bits<Dp, 8>(p, pv, causal, bf16, s);
}

}  // namespace

std::string unsupported_reason(const AttentionOptions& o, std::int64_t head_dim, const MmaCapabilities& caps) {
  std::string reason = unsupported_format_reason(o, caps);
  if (!reason.empty()) return reason;
  if (head_dim > 128) return "head_dim " + std::to_string(head_dim) + " > 128 has no mma.sync kernel yet";
  return {};
}

std::size_t workspace_bytes(const AttentionArgs& args, const AttentionOptions& options) {
  return quant::make_prepass_layout(prepass_problem(args, options)).bytes;
}

Status run(const AttentionArgs& args, const AttentionOptions& o, void* workspace, Stream stream, bool kernel_only) {
  cudaStream_t s = reinterpret_cast<cudaStream_t>(stream);
  fwd::Prepass prepass;
  SAGE_RETURN_IF_ERROR(fwd::start_prepass(args, o, prepass_problem(args, o), workspace, s, kernel_only,
                                         /*programmatic=*/false, &prepass));
  const quant::PrepassProblem& pp = prepass.problem;
  const quant::PrepassLayout& layout = prepass.layout;
  const quant::PrepassBuffers& buf = prepass.buffers;

  QkInt8MmaParams p{};
  fwd::fill_forward_params(args, o, prepass, &p);
  p.q = buf.q;
  p.k = buf.k;
  p.vt = buf.vt;
  p.v16 = buf.v16;
  p.nk_padded = layout.nk_padded;

  const PvMode pv = !fp16_pv(o)                       ? PvMode::fp8_two_level
                    : o.pv_accum == PVAccum::two_level ? PvMode::fp16_two_level
                                                       : PvMode::fp16_fp32;
  const cudaError_t err =
      layout.head_dim_padded == 64 ? launch_for_dp<64>(p, pv, pp.qk_bits, o.causal, pp.bf16, s)
                                   : launch_for_dp<128>(p, pv, pp.qk_bits, o.causal, pp.bf16, s);
  if (err != cudaSuccess) return fwd::cuda_status(err, "mma.sync attention kernel launch");
  return Status::ok();
}

}  // namespace sage::mma
