// Host side of the SageAttention2 Hopper path: pre-pass, TMA descriptors,
// and the switch from runtime options to a kernel instantiation.
#include "cuda/sm90/qk_int8_pv_fp8_sm90.h"

#include <cuda.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <cudaTypedefs.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <string>
#include <tuple>

#include "api/tensor_checks.h"
#include "api/validate.h"
#include "cuda/common/forward_host.h"
#include "cuda/quant/prepass.h"
#include "cuda/sm90/qk_int8_pv_fp8_sm90_params.h"

namespace sage::sm90 {

template <int Dp, bool Causal, typename OutT, bool SmoothQ, bool QuantizeQ, bool ClaimsBuild, int Consumers>
cudaError_t launch_qk_int8_pv_fp8_sm90(const QkInt8PvFp8Params& p, int sm_count, cudaStream_t stream);

namespace {

// A non-negative count from the environment variable `name`, or `fallback`
// where it is unset, empty or not such a number (read per call: A/B timings
// in one build, and the tests).
int count_from_env(const char* name, int fallback) {
  const char* env = std::getenv(name);
  if (env != nullptr && *env != '\0') {
    char* end = nullptr;
    const long n = std::strtol(env, &end, 10);
    if (*end == '\0' && n >= 0 && n <= (1L << 30)) return static_cast<int>(n);
  }
  return fallback;
}

quant::PrepassProblem prepass_problem(const AttentionArgs& args, const AttentionOptions& o) {
  quant::PrepassProblem p = fwd::prepass_problem(args, o, kSm90Geometry, quant::VFormat::fp8_e4m3_transposed);
  const char* env = std::getenv("SAGE_PREPASS_KV_CLUSTERS");
  p.allow_kv_clusters = env == nullptr || std::strcmp(env, "0") != 0;
  p.kv_stream_max_keys = count_from_env("SAGE_PREPASS_KV_STREAM_KEYS", kKvStreamMaxKeys);
  // (SAGE_PREPASS_KV_CLUSTERS=0: the two-kernel path everywhere, this one included.)
  p.kv_head_jobs_max_keys =
      p.allow_kv_clusters ? count_from_env("SAGE_PREPASS_KV_HEAD_JOBS_KEYS", kKvHeadJobsMaxKeys) : 0;
  // The head jobs split over clusters by the rule (quant::kv_head_job_split:
  // B=2 H=32 D=128, 1 CTA per job at 1K, 2 at 2K, 4 at 4K). H200, the
  // pre-pass's share of whole calls (GPU time of the call less the kernel
  // alone, docs/perf-notes.md, session 51) against one CTA per job: 2K
  // 40.1 -> 38.3 us, causal 2K 42.5 -> 40.8, 4K 78.6 -> 78.7, causal 4K
  // 87.3 -> 83.4; 8 CTAs per job at 1K: +28 us.
  // SAGE_PREPASS_KV_HEAD_JOB_SPLIT=N asks for N CTAs per job (at most 8; 1:
  // no split), =0 for the rule.
  p.kv_head_job_split = count_from_env("SAGE_PREPASS_KV_HEAD_JOB_SPLIT", 0);
  // And two head-job CTAs per SM for the longest heads
  // (quant::kv_head_job_ctas_per_sm: B=2 H=32 D=128 at 4K keys, over 8-CTA
  // clusters; whole calls -1.0% non-causal and causal, H200,
  // docs/perf-notes.md, session 52). SAGE_PREPASS_KV_HEAD_JOBS_PER_SM=1 or 2
  // asks for that many, =0 for the rule.
  p.kv_head_jobs_per_sm = count_from_env("SAGE_PREPASS_KV_HEAD_JOBS_PER_SM", 0);
  return p;
}

// CTAs of the pre-pass's statistics kernel (PrepassProblem::stats_ctas):
// three per two SMs. H200, GPU time of whole calls at D=128 4K keys against
// one per SM (interleaved A/B runs, docs/perf-notes.md, session 20): 3/2
// per SM -0.1% non-causal, -1.4% causal; 33-99 CTAs slower (up to +12% /
// +20%; likely the K and V jobs waiting for their heads' statistics), 110
// even; 2 per SM about +1.0% / -0.4% (from session 19's runs). Not measured
// at 8K-16K keys, nor at D=64.
// SAGE_PREPASS_STATS_CTAS overrides the count (0: one CTA per item, every
// head at once).
int statistics_ctas(int sm_count) { return count_from_env("SAGE_PREPASS_STATS_CTAS", sm_count * 3 / 2); }

// CTAs of the persistent attention kernel: one per SM. SAGE_SM90_CTAS caps
// them (0 or unset: no cap): the tests run the work-item schedule over few
// CTAs, which must give the same bits.
int persistent_ctas(int sm_count) {
  const int cap = count_from_env("SAGE_SM90_CTAS", 0);
  return cap > 0 && cap < sm_count ? cap : sm_count;
}

// Consumer warpgroups of the instance that runs a call whose kernel
// quantizes Q (quantize_q) or not: consumer_warpgroups, except two for the
// D = 128 causal calls of at most kMaxKeysTwoConsumersD128Causal keys that
// quantize Q.
int kernel_consumers(const AttentionOptions& o, const quant::PrepassProblem& pp, bool quantize_q) {
  const bool short_causal = o.causal && pp.nk <= kMaxKeysTwoConsumersD128Causal;
  return quantize_q && pp.head_dim_padded == 128 && short_causal ? 2 : consumer_warpgroups(pp.smooth_q);
}

// compute(), run once per key: the schedule models below walk every item or
// candidate tiling (causal_schedule 4 us on one core of the development
// machine at B=2 H=32 with 4K keys, a tenth of a call's host time), for an
// answer that depends on the shape alone. One cache per call site (each
// passes a lambda of its own type).
template <class Key, class Compute>
auto remembered(const Key& key, Compute&& compute) {
  static std::mutex mutex;
  static std::map<Key, decltype(compute())> known;
  const std::lock_guard<std::mutex> lock(mutex);
  if (const auto it = known.find(key); it != known.end()) return it->second;
  if (known.size() >= 1024) known.clear();  // (a bound for callers with ever new shapes)
  return known[key] = compute();
}

// How a causal launch takes its work items (causal_schedule): on a
// persistent grid, in windows of heads and claimed where the model of the
// static rounds says they balance badly (the D = 128 two-consumer instances
// that quantize Q have a second build for claims, launch_causal). H200, GPU time
// (docs/perf-notes.md, sessions 24-25): -8..-13% of the kernel at D=64 B=2
// H=32 (192-row items: static 1.10-1.15 in the model), -18..-22% at D=64
// B=1 H=16, -17..-29% at D=128 B=1 H=12-16 (2K-4K keys, two consumers then),
// -8..-10% at D=128 B=2 H=32 with 2K-4K keys (three consumers, session 30).
// SAGE_SM90_CLAIMS=1 or 0 forces windows and claims, or neither (the tests
// run both); SAGE_SM90_WINDOW_HEADS (below) sets the windows. consumers:
// kernel_consumers of the call.
CausalSchedule causal_schedule_of(const AttentionOptions& o, const quant::PrepassProblem& pp, int ctas,
                                  int consumers) {
  if (!o.causal || pp.nq > kCausalPersistentMaxRows) return {};  // (nq: one CTA per item, nothing to order)
  const char* env = std::getenv("SAGE_SM90_CLAIMS");
  if (env != nullptr && std::strcmp(env, "1") == 0) return {true, true};
  if (env != nullptr && std::strcmp(env, "0") == 0) return {};
  const int batch_heads = pp.batch * pp.heads_q, block_q = query_block_rows(consumers);
  const int shift = fwd::causal_shift(o, pp);
  const bool across = steps_across_items(pp.q_in_attention, consumers);
  return remembered(std::make_tuple(batch_heads, pp.nq, pp.nk, block_q, shift, ctas, across),
                    [&] { return causal_schedule(batch_heads, pp.nq, pp.nk, block_q, shift, ctas, across); });
}

// Full items per head of a non-causal launch (noncausal_full_items, the
// model's choice, computed once per shape: it walks every candidate tiling,
// up to a few hundred thousand steps for the longest heads).
// SAGE_SM90_FULL_ITEMS=N forces N (at most as many as fit): A/B timings of
// tilings in one build, and the tests, which expect the same bits from
// every tiling.
int full_items_of(const quant::PrepassProblem& pp, int ctas, int consumers) {
  const int block_q = query_block_rows(consumers);
  const int forced = count_from_env("SAGE_SM90_FULL_ITEMS", -1);
  if (forced >= 0) return std::min(forced, pp.nq / block_q);
  const int batch_heads = pp.batch * pp.heads_q;
  return remembered(std::make_tuple(batch_heads, pp.nq, pp.nk, block_q, ctas),
                    [&] { return noncausal_full_items(batch_heads, pp.nq, pp.nk, block_q, ctas); });
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

// Encodes a tiled tensor map of `rank` dimensions (strides in bytes, for
// dims 1..rank-1; unit element strides, no interleave; loads fill zeros out
// of bounds).
Status encode_tensor_map(CUtensorMap* map, CUtensorMapDataType type, cuuint32_t rank, const void* base,
                         const cuuint64_t* dims, const cuuint64_t* strides, const cuuint32_t* box,
                         CUtensorMapSwizzle swizzle) {
  auto encode = tensor_map_encoder();
  if (!encode) return Status(StatusCode::cuda_error, "the CUDA driver does not provide cuTensorMapEncodeTiled");
  const cuuint32_t elem_strides[4] = {1, 1, 1, 1};
  const CUresult r = encode(map, type, rank, const_cast<void*>(base), dims, strides, box, elem_strides,
                            CU_TENSOR_MAP_INTERLEAVE_NONE, swizzle, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                            CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  if (r != CUDA_SUCCESS) {
    return Status(StatusCode::internal, "cuTensorMapEncodeTiled failed (error " + std::to_string(r) + ")");
  }
  return Status::ok();
}

// A 3D byte tensor [dim2][dim1][dim0] (dim0 contiguous) loaded in boxes of
// box0 x box1 x 1 with the swizzle that matches a box0-byte row.
Status make_tensor_map(CUtensorMap* map, void* base, std::uint64_t dim0, std::uint64_t dim1, std::uint64_t dim2,
                       std::uint32_t box0, std::uint32_t box1) {
  const cuuint64_t dims[3] = {dim0, dim1, dim2};
  const cuuint64_t strides[2] = {dim0, dim0 * dim1};
  const cuuint32_t box[3] = {box0, box1, 1};
  return encode_tensor_map(map, CU_TENSOR_MAP_DATA_TYPE_UINT8, 3, base, dims, strides, box,
                           box0 == 128 ? CU_TENSOR_MAP_SWIZZLE_128B : CU_TENSOR_MAP_SWIZZLE_64B);
}

// A caller's 16-bit tensor [B][H][N][head_dim] (element strides `t`) as a
// 4D tensor map with boxes of box_channels x box_rows x 1 x 1: the caller's
// Q for the kernels that quantize Q themselves (zeros past head_dim and N),
// the output for the TMA-store epilogue (rows past N dropped; channels past
// head_dim too where head_dim is a multiple of 8: make_out_tensor_map).
// invalid_argument where TMA cannot reach the tensor: a start or a stride
// that is no multiple of 16 bytes (a dimension of size 1 is never stepped:
// it gets a stride TMA accepts, whatever the caller's).
Status make_rows16_tensor_map(CUtensorMap* map, const quant::StridedInput& t, std::int64_t batch, std::int64_t heads,
                              std::int64_t n, std::int64_t head_dim, std::uint32_t box_channels,
                              std::uint32_t box_rows, CUtensorMapSwizzle swizzle) {
  const std::int64_t stride_n = n == 1 ? (head_dim + 7) / 8 * 8 : t.stride_n;
  const std::int64_t stride_h = heads == 1 ? stride_n * n : t.stride_h;
  const std::int64_t stride_b = batch == 1 ? stride_h * heads : t.stride_b;
  if (!quant::aligned16({t.data, stride_b, stride_h, stride_n})) {
    return Status(StatusCode::invalid_argument, "TMA needs a 16-byte aligned start and strides");
  }
  const cuuint64_t dims[4] = {cuuint64_t(head_dim), cuuint64_t(n), cuuint64_t(heads), cuuint64_t(batch)};
  const cuuint64_t strides[3] = {cuuint64_t(stride_n) * 2, cuuint64_t(stride_h) * 2, cuuint64_t(stride_b) * 2};
  const cuuint32_t box[4] = {box_channels, box_rows, 1, 1};
  return encode_tensor_map(map, CU_TENSOR_MAP_DATA_TYPE_UINT16, 4, t.data, dims, strides, box, swizzle);
}

// Q: boxes of one CTA tile's rows (those of the instance that quantizes Q)
// x Dp channels, no swizzle.
Status make_q16_tensor_map(CUtensorMap* map, const AttentionOptions& o, const quant::PrepassProblem& pp,
                           const quant::StridedInput& q) {
  return make_rows16_tensor_map(map, q, pp.batch, pp.heads_q, pp.nq, pp.head_dim, cuuint32_t(pp.head_dim_padded),
                                cuuint32_t(query_block_rows(kernel_consumers(o, pp, /*quantize_q=*/true))),
                                CU_TENSOR_MAP_SWIZZLE_NONE);
}

// The output: boxes of a consumer's 64 rows x 64 channels in the staging
// tile's 128-byte swizzle (OutStage). False where TMA cannot write it, and
// where head_dim is no multiple of 8: a TMA store writes a row's last
// 16-byte piece whole, past head_dim (H200: D = 100 wrote channels 100-103
// of the caller's row padding).
bool make_out_tensor_map(CUtensorMap* map, const AttentionArgs& args, const AttentionOptions& o,
                         const quant::PrepassProblem& pp) {
  if (pp.head_dim % 8 != 0) return false;
  return make_rows16_tensor_map(map, fwd::strided(args.out, o.layout), pp.batch, pp.heads_q, pp.nq, pp.head_dim,
                                kOutBoxChannels, kOutBoxRows, CU_TENSOR_MAP_SWIZZLE_128B)
      .is_ok();
}

// Whether the attention kernel can quantize Q itself, so that the pre-pass
// skips its Q jobs: its Q scale groups must lie inside a warp's 16 rows
// (per_warp, per_thread), smooth_q and the LSE correction need the
// pre-pass's pass over Q, out and lse must not share memory with Q (the
// kernel reads Q while other CTAs write them; the pre-pass has read all of
// it before), and TMA must be able to read the caller's rows (16-byte
// aligned start and strides; an encoding TMA refuses leaves Q to the
// pre-pass too). SAGE_SM90_Q_PREPASS=1 keeps Q in the pre-pass: the tests
// compare both paths and A/B timings switch them in one build (read per
// call, so a test can switch it between calls). On true, *map reads the
// caller's Q.
bool q_quantized_in_kernel(const AttentionArgs& args, const AttentionOptions& o, const quant::PrepassProblem& pp,
                           CUtensorMap* map) {
  const char* env = std::getenv("SAGE_SM90_Q_PREPASS");
  if (env != nullptr && std::strcmp(env, "1") == 0) return false;
  if (pp.smooth_q || pp.lse_correction || pp.granularity == Granularity::per_block) return false;
  if (detail::memory_ranges_overlap(args.q, args.out)) return false;
  if (o.return_lse && detail::memory_ranges_overlap(args.q, args.lse)) return false;
  return make_q16_tensor_map(map, o, pp, fwd::strided(args.q, o.layout)).is_ok();
}

// The call's pre-pass problem as run() launches it: whether the kernel
// quantizes Q decided (*q_map: the caller's Q, where it does).
quant::PrepassProblem call_problem(const AttentionArgs& args, const AttentionOptions& o, CUtensorMap* q_map) {
  quant::PrepassProblem problem = prepass_problem(args, o);
  problem.q_in_attention = q_quantized_in_kernel(args, o, problem, q_map);
  return problem;
}

// The concurrent pre-pass (quant::PrepassProblem::concurrent_heads) for a
// call whose problem `pp` is decided but for it (kConcurrentPrepassMinKeys):
// only where the head jobs quantize K and V, the kernel quantizes Q (no
// pre-pass grid over Q before them) at D = 128, the call is not causal, and
// out and lse share no memory with K and V (the kernel writes them while the
// pre-pass still reads); there by the rule, or as SAGE_PREPASS_CONCURRENT
// says (H:P, or 0: never). Returns pp with concurrent_heads and
// concurrent_sms set, or as it was.
quant::PrepassProblem with_concurrent_prepass(const AttentionArgs& args, const AttentionOptions& o,
                                              quant::PrepassProblem pp, bool kernel_only) {
  const int kv_heads = pp.batch * pp.heads_kv;
  int heads = pp.nk > kConcurrentPrepassMinKeys ? kConcurrentPrepassFirstHeads : 0;
  int sms = pp.sm_count * 2 / 11;
  if (const char* env = std::getenv("SAGE_PREPASS_CONCURRENT"); env != nullptr && *env != '\0') {
    if (std::sscanf(env, "%d:%d", &heads, &sms) != 2) heads = 0;
  }
  if (heads <= 0 || heads >= kv_heads || sms <= 0 || sms >= pp.sm_count) return pp;
  if (kernel_only || o.causal || !pp.q_in_attention || pp.head_dim_padded != 128) return pp;
  if (quant::kv_head_job_shape(pp, fwd::strided(args.q, o.layout), fwd::strided(args.k, o.layout),
                               fwd::strided(args.v, o.layout))
          .ctas == 0) {
    return pp;
  }
  for (const TensorView* input : {&args.k, &args.v}) {
    if (detail::memory_ranges_overlap(*input, args.out)) return pp;
    if (o.return_lse && detail::memory_ranges_overlap(*input, args.lse)) return pp;
  }
  pp.concurrent_heads = heads;
  pp.concurrent_sms = sms;
  return pp;
}

// The causal instance: where its consumers run their steps across items,
// the build that reads claimed items if the launch claims, else the one
// that computes its static rounds (FwdTraits::kMayClaimItems).
template <int Dp, typename OutT, bool SmoothQ, bool QuantizeQ, int Consumers>
cudaError_t launch_causal(const QkInt8PvFp8Params& p, int sm_count, cudaStream_t s) {
  if constexpr (steps_across_items(QuantizeQ, Consumers)) {
    if (p.claims_items) {
      return launch_qk_int8_pv_fp8_sm90<Dp, true, OutT, SmoothQ, QuantizeQ, true, Consumers>(p, sm_count, s);
    }
  }
  return launch_qk_int8_pv_fp8_sm90<Dp, true, OutT, SmoothQ, QuantizeQ, false, Consumers>(p, sm_count, s);
}

// consumers: kernel_consumers of the call (two only where it is causal at
// D = 128 and quantizes Q).
template <int Dp, bool SmoothQ, bool QuantizeQ>
cudaError_t launch_for(const QkInt8PvFp8Params& p, bool causal, bool bf16, int consumers, int sm_count,
                       cudaStream_t s) {
  constexpr int kConsumers = consumer_warpgroups(SmoothQ);
  if constexpr (Dp == 128 && QuantizeQ) {
    if (causal && consumers == 2) {
      return bf16 ? launch_causal<Dp, __nv_bfloat16, SmoothQ, QuantizeQ, 2>(p, sm_count, s)
                  : launch_causal<Dp, __half, SmoothQ, QuantizeQ, 2>(p, sm_count, s);
    }
  }
  // Any other count has no instance here: the Q tensor map's box (query_block_rows(consumers))
  // would not match the kernel's tile, so refuse rather than launch it.
  if (consumers != kConsumers) return cudaErrorInvalidValue;
  if (p.job_ready != nullptr) {  // beside the concurrent pre-pass: the build that claims its items
    if constexpr (Dp == 128 && QuantizeQ) {
      if (!causal) {
        return bf16 ? launch_qk_int8_pv_fp8_sm90<Dp, false, __nv_bfloat16, SmoothQ, QuantizeQ, true, kConsumers>(
                          p, sm_count, s)
                    : launch_qk_int8_pv_fp8_sm90<Dp, false, __half, SmoothQ, QuantizeQ, true, kConsumers>(p, sm_count,
                                                                                                        s);
      }
    }
    return cudaErrorInvalidValue;  // (with_concurrent_prepass takes no other call)
  }
  if (bf16) {
    return causal ? launch_causal<Dp, __nv_bfloat16, SmoothQ, QuantizeQ, kConsumers>(p, sm_count, s)
                  : launch_qk_int8_pv_fp8_sm90<Dp, false, __nv_bfloat16, SmoothQ, QuantizeQ, false, kConsumers>(
                        p, sm_count, s);
  }
  return causal ? launch_causal<Dp, __half, SmoothQ, QuantizeQ, kConsumers>(p, sm_count, s)
                : launch_qk_int8_pv_fp8_sm90<Dp, false, __half, SmoothQ, QuantizeQ, false, kConsumers>(p, sm_count,
                                                                                                      s);
}

template <int Dp>
cudaError_t launch_for_dp(const QkInt8PvFp8Params& p, bool quantize_q, bool causal, bool bf16, int consumers,
                          int sm_count, cudaStream_t s) {
  if (p.q_mean) return launch_for<Dp, true, false>(p, causal, bf16, consumers, sm_count, s);
  return quantize_q ? launch_for<Dp, false, true>(p, causal, bf16, consumers, sm_count, s)
                    : launch_for<Dp, false, false>(p, causal, bf16, consumers, sm_count, s);
}

}  // namespace

std::string unsupported_reason(const AttentionOptions& o, std::int64_t head_dim) {
  std::string reason = unsupported_format_reason(o);
  if (!reason.empty()) return reason;
  if (head_dim > 128) return "head_dim " + std::to_string(head_dim) + " > 128 has no sm90 kernel yet";
  return {};
}

bool quantizes_q_in_kernel(const AttentionArgs& args, const AttentionOptions& options) {
  CUtensorMap map;
  return call_problem(args, options, &map).q_in_attention;
}

bool quantizes_kv_in_clusters(const AttentionArgs& args, const AttentionOptions& options, int sm_count) {
  quant::PrepassProblem p = prepass_problem(args, options);
  p.sm_count = sm_count;
  return quant::kv_quantized_in_clusters(p, fwd::strided(args.q, options.layout), fwd::strided(args.k, options.layout),
                                         fwd::strided(args.v, options.layout));
}

quant::KvHeadJobShape kv_head_job_shape(const AttentionArgs& args, const AttentionOptions& options, int sm_count) {
  quant::PrepassProblem p = prepass_problem(args, options);
  p.sm_count = sm_count;
  return quant::kv_head_job_shape(p, fwd::strided(args.q, options.layout), fwd::strided(args.k, options.layout),
                                  fwd::strided(args.v, options.layout));
}

bool stores_output_by_tma(const AttentionArgs& args, const AttentionOptions& options) {
  CUtensorMap map;
  return make_out_tensor_map(&map, args, options, prepass_problem(args, options));
}

bool claims_work_items(const AttentionArgs& args, const AttentionOptions& options, int sm_count) {
  CUtensorMap map;
  const quant::PrepassProblem problem = call_problem(args, options, &map);
  return causal_schedule_of(options, problem, persistent_ctas(sm_count),
                            kernel_consumers(options, problem, problem.q_in_attention))
      .claims;
}

int concurrent_prepass_heads(const AttentionArgs& args, const AttentionOptions& options, int sm_count) {
  CUtensorMap map;
  quant::PrepassProblem problem = call_problem(args, options, &map);
  problem.sm_count = sm_count;
  return with_concurrent_prepass(args, options, problem, /*kernel_only=*/false).concurrent_heads;
}

std::size_t workspace_bytes(const AttentionArgs& args, const AttentionOptions& options) {
  return quant::make_prepass_layout(prepass_problem(args, options)).bytes;
}

Status run(const AttentionArgs& args, const AttentionOptions& o, const cuda::DeviceInfo& device, void* workspace,
           Stream stream, bool kernel_only) {
  cudaStream_t s = reinterpret_cast<cudaStream_t>(stream);
  QkInt8PvFp8Params p{};
  quant::PrepassProblem problem = call_problem(args, o, &p.tmap_q);
  problem.stats_ctas = statistics_ctas(device.sm_count);
  problem.sm_count = device.sm_count;
  problem = with_concurrent_prepass(args, o, problem, kernel_only);
  fwd::Prepass prepass;
  SAGE_RETURN_IF_ERROR(
      fwd::start_prepass(args, o, problem, workspace, s, kernel_only, /*programmatic=*/true, &prepass));
  const quant::PrepassProblem& pp = prepass.problem;
  const quant::PrepassLayout& layout = prepass.layout;
  const quant::PrepassBuffers& buf = prepass.buffers;

  const int dp = layout.head_dim_padded;
  const int consumers = kernel_consumers(o, pp, pp.q_in_attention);
  fwd::fill_forward_params(args, o, prepass, &p);
  p.out_tma = make_out_tensor_map(&p.tmap_out, args, o, pp);
  if (!pp.q_in_attention) {
    SAGE_RETURN_IF_ERROR(make_tensor_map(&p.tmap_q, buf.q, dp, pp.nq, std::uint64_t(pp.batch) * pp.heads_q, dp,
                                         query_block_rows(consumers)));
  }
  SAGE_RETURN_IF_ERROR(make_tensor_map(&p.tmap_k, buf.k, dp, pp.nk, std::uint64_t(pp.batch) * pp.heads_kv, dp, 128));
  SAGE_RETURN_IF_ERROR(
      make_tensor_map(&p.tmap_vt, buf.vt, layout.nk_padded, dp, std::uint64_t(pp.batch) * pp.heads_kv, 128, dp));

  const int ctas = persistent_ctas(device.sm_count);
  p.full_items = o.causal ? 0 : full_items_of(pp, ctas, consumers);
  p.item_claims = buf.item_claims;
  const CausalSchedule schedule = causal_schedule_of(o, pp, ctas, consumers);
  p.claims_items = schedule.claims;
  if (pp.concurrent_heads > 0) {
    p.job_ready = buf.job_ready;
    p.ready_split_jobs = 2 * pp.concurrent_heads;
    p.ready_split_ctas = quant::kv_head_job_shape_fitting(pp).ctas;
    p.claims_items = true;
  }
  // SAGE_SM90_WINDOW_HEADS: heads per window of every causal launch's order
  // (0 or unset: causal_window_heads where the schedule takes windows, one
  // head elsewhere; the tests try others, static rounds and claims alike).
  const int window_env = count_from_env("SAGE_SM90_WINDOW_HEADS", 0);
  p.window_heads = window_env > 0       ? std::min(window_env, p.batch_heads)
                   : !schedule.windows ? 1
                                       : causal_window_heads(p.batch_heads, pp.nk, dp);
  const cudaError_t err = dp == 64 ? launch_for_dp<64>(p, pp.q_in_attention, o.causal, pp.bf16, consumers, ctas, s)
                                   : launch_for_dp<128>(p, pp.q_in_attention, o.causal, pp.bf16, consumers, ctas, s);
  if (err != cudaSuccess) return fwd::cuda_status(err, "sm90 attention kernel launch");
  return Status::ok();
}

}  // namespace sage::sm90
