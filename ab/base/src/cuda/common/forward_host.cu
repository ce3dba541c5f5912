#include "cuda/common/forward_host.h"

#include <cmath>
#include <cstdint>

#include "api/validate.h"

namespace sage::fwd {

Status cuda_status(cudaError_t err, const char* what) {
  return Status(StatusCode::cuda_error, std::string(what) + ": " + cudaGetErrorString(err));
}

quant::StridedInput strided(const TensorView& t, TensorLayout layout) {
  quant::StridedInput s;
  s.data = t.data;
  s.stride_b = t.stride[0];
  s.stride_h = layout == TensorLayout::HND ? t.stride[1] : t.stride[2];
  s.stride_n = layout == TensorLayout::HND ? t.stride[2] : t.stride[1];
  return s;
}

// The int casts are safe: check_gpu_kernel_limits bounded every size first.
quant::PrepassProblem prepass_problem(const AttentionArgs& args, const AttentionOptions& o, TileGeometry geometry,
                                      quant::VFormat v_format) {
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
  p.geometry = geometry;
  p.v_format = v_format;
  p.qk_bits = o.qk_format == QKFormat::int4 ? 4 : 8;
  p.sm_scale = o.sm_scale > 0.f ? o.sm_scale : 1.f / std::sqrt(static_cast<float>(d.head_dim));
  p.smooth_q = o.smooth_q;
  p.smooth_k = o.smooth_k;
  p.smooth_v = o.smooth_v;
  p.lse_correction = o.return_lse && o.smooth_k;
  return p;
}

Status start_prepass(const AttentionArgs& args, const AttentionOptions& o, const quant::PrepassProblem& problem,
                     void* workspace, cudaStream_t stream, bool kernel_only, bool programmatic, Prepass* out) {
  out->problem = problem;
  out->layout = quant::make_prepass_layout(problem);
  out->buffers = out->layout.carve(workspace);
  if (kernel_only) return Status::ok();
  const cudaError_t err = quant::launch_prepass(problem, out->layout, out->buffers, strided(args.q, o.layout),
                                                strided(args.k, o.layout), strided(args.v, o.layout), stream,
                                                programmatic);
  return err == cudaSuccess ? Status::ok() : cuda_status(err, "quantization pre-pass launch");
}

void fill_forward_params(const AttentionArgs& args, const AttentionOptions& o, const Prepass& prepass,
                         ForwardParams* p) {
  const quant::PrepassProblem& pp = prepass.problem;
  const quant::PrepassLayout& layout = prepass.layout;
  const quant::PrepassBuffers& buf = prepass.buffers;
  p->q_scale = pp.q_in_attention ? nullptr : buf.q_scale;
  p->k_scale = buf.k_scale;
  p->v_scale = buf.v_scale;
  p->v_mean = o.smooth_v ? buf.v_mean : nullptr;
  p->lse_corr = pp.lse_correction ? buf.lse_corr : nullptr;
  p->q_mean = pp.smooth_q ? buf.q_mean : nullptr;
  p->q_tiles = layout.q_tiles;
  p->scale_log2 = quant::score_scale_log2(pp);

  const quant::StridedInput out = strided(args.out, o.layout);
  p->out = args.out.data;
  p->out_stride_b = out.stride_b;
  p->out_stride_h = out.stride_h;
  p->out_stride_n = out.stride_n;
  p->out_pair_store = reinterpret_cast<std::uintptr_t>(args.out.data) % 4 == 0 && out.stride_b % 2 == 0 &&
                      out.stride_h % 2 == 0 && out.stride_n % 2 == 0;
  p->lse = nullptr;
  p->lse_stride_b = p->lse_stride_h = p->lse_stride_n = 0;
  if (o.return_lse) {
    p->lse = static_cast<float*>(args.lse.data);
    p->lse_stride_b = args.lse.stride[0];
    p->lse_stride_h = args.lse.stride[1];
    p->lse_stride_n = args.lse.stride[2];
  }
  p->batch_heads = pp.batch * pp.heads_q;
  p->heads_q = pp.heads_q;
  p->heads_kv = pp.heads_kv;
  p->nq = pp.nq;
  p->nk = pp.nk;
  p->head_dim = pp.head_dim;
  p->q_groups = layout.q_groups;
  p->k_groups = layout.k_groups;
  p->granularity = o.qk_granularity;
  p->causal_shift = causal_shift(o, pp);
}

int causal_shift(const AttentionOptions& o, const quant::PrepassProblem& pp) {
  return o.causal && o.causal_align == CausalAlign::bottom_right ? pp.nk - pp.nq : 0;
}

}  // namespace sage::fwd
