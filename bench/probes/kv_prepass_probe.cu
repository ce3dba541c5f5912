// Device probe (a timing experiment, not a test): how much SM time does the
// pre-pass's head-jobs kernel (src/cuda/quant/kv_head_jobs.cu) need on a few
// SMs, and how much do it and the attention kernel slow each other down when
// they share the GPU?
//
// Why (docs/perf-notes.md, session 36): a call is the pre-pass and then the
// attention kernel, and the pre-pass holds every SM while it runs (~89 us
// at D = 128, 4K keys, B=2 H=32). A pre-pass that ran on P SMs beside the
// attention kernel (the other SMs working on items whose K and V are ready)
// would cost the call about its SM time over the SM count, P * D(P) / 132,
// plus the first items' wait. This probe measures D(P) of the head-jobs
// kernel (one CTA per SM, looping over jobs P apart) for several P, the
// library's default pre-pass for K and V on the same inputs (and that both
// give the same V codes and scales, and K codes within one of each other),
// and both kernels side by side on disjoint SMs.
//
// Usage: sage_kv_prepass_probe [N ...]   (default 1024 4096; B=2 H=32 D=128 bf16)
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "cuda/device_dispatch.h"
#include "cuda/quant/prepass.h"
#include "cuda/sm90/qk_int8_pv_fp8_sm90.h"
#include "sage/attention.h"

namespace probe {

constexpr int kDp = sage::quant::kKvHeadJobsDp;
constexpr int kTileRows = 128;

#define PROBE_CHECK(x)                                                                       \
  do {                                                                                       \
    const cudaError_t e_ = (x);                                                              \
    if (e_ != cudaSuccess) {                                                                 \
      std::fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_)); \
      std::exit(1);                                                                          \
    }                                                                                        \
  } while (0)

std::uint16_t bf16_bits(float x) {
  std::uint32_t b;
  std::memcpy(&b, &x, 4);
  return static_cast<std::uint16_t>((b + 0x7FFFu + ((b >> 16) & 1u)) >> 16);
}

template <typename F>
float median_ms(F&& launch, int reps) {
  cudaEvent_t a, b;
  PROBE_CHECK(cudaEventCreate(&a));
  PROBE_CHECK(cudaEventCreate(&b));
  std::vector<float> t;
  for (int i = 0; i < reps + 3; ++i) {
    PROBE_CHECK(cudaEventRecord(a));
    launch();
    PROBE_CHECK(cudaEventRecord(b));
    PROBE_CHECK(cudaEventSynchronize(b));
    float ms = 0.f;
    PROBE_CHECK(cudaEventElapsedTime(&ms, a, b));
    if (i >= 3) t.push_back(ms);
  }
  std::sort(t.begin(), t.end());
  PROBE_CHECK(cudaEventDestroy(a));
  PROBE_CHECK(cudaEventDestroy(b));
  return t[t.size() / 2];
}

template <typename T>
std::vector<T> to_host(const T* d, std::size_t count) {
  std::vector<T> h(count);
  PROBE_CHECK(cudaMemcpy(h.data(), d, count * sizeof(T), cudaMemcpyDeviceToHost));
  return h;
}

template <typename T>
std::size_t mismatches(const T* a, const T* b, std::size_t count, int* worst = nullptr) {
  const std::vector<T> x = to_host(a, count), y = to_host(b, count);
  std::size_t bad = 0;
  int w = 0;
  for (std::size_t i = 0; i < count; ++i) {
    if (std::memcmp(&x[i], &y[i], sizeof(T)) != 0) {
      ++bad;
      if constexpr (std::is_integral_v<T>) w = std::max(w, std::abs(static_cast<int>(x[i]) - static_cast<int>(y[i])));
    }
  }
  if (worst != nullptr) *worst = w;
  return bad;
}

int run(int n, int sm_count) {
  const int batch = 2, heads = 32, bh = batch * heads;
  const std::size_t elems = static_cast<std::size_t>(bh) * n * kDp;
  // Gaussian rows; K with a per-channel offset (what smooth_k removes).
  std::vector<std::uint16_t> hk(elems), hv(elems);
  std::mt19937 rng(1234u + static_cast<unsigned>(n));
  std::normal_distribution<float> normal(0.f, 1.f);
  std::vector<float> bias(kDp);
  for (float& b : bias) b = 2.f * normal(rng);
  for (std::size_t i = 0; i < elems; ++i) {
    hk[i] = bf16_bits(normal(rng) + bias[i % kDp]);
    hv[i] = bf16_bits(normal(rng));
  }
  __nv_bfloat16 *dk, *dv;
  PROBE_CHECK(cudaMalloc(&dk, elems * 2));
  PROBE_CHECK(cudaMalloc(&dv, elems * 2));
  PROBE_CHECK(cudaMemcpy(dk, hk.data(), elems * 2, cudaMemcpyHostToDevice));
  PROBE_CHECK(cudaMemcpy(dv, hv.data(), elems * 2, cudaMemcpyHostToDevice));

  // The library's pre-pass as the sm90 dispatch sets it up (Q in the attention kernel).
  sage::quant::PrepassProblem p;
  p.batch = batch, p.heads_q = heads, p.heads_kv = heads, p.nq = n, p.nk = n;
  p.head_dim = kDp, p.head_dim_padded = kDp, p.bf16 = true;
  p.sm_scale = 1.f / std::sqrt(static_cast<float>(kDp));
  p.q_in_attention = true, p.allow_kv_clusters = true;
  p.kv_stream_max_keys = sage::sm90::kKvStreamMaxKeys;
  p.stats_ctas = sm_count * 3 / 2;
  p.kv_head_jobs_max_keys = 0;  // the library's other paths (clusters here)
  const sage::quant::PrepassLayout layout = sage::quant::make_prepass_layout(p);
  void *ws_ref, *ws_new;
  PROBE_CHECK(cudaMalloc(&ws_ref, layout.bytes));
  PROBE_CHECK(cudaMalloc(&ws_new, layout.bytes));
  PROBE_CHECK(cudaMemset(ws_ref, 0, layout.bytes));
  PROBE_CHECK(cudaMemset(ws_new, 0, layout.bytes));
  const sage::quant::PrepassBuffers ref = layout.carve(ws_ref), out = layout.carve(ws_new);
  const sage::quant::StridedInput kin{dk, static_cast<std::int64_t>(n) * kDp * heads, static_cast<std::int64_t>(n) * kDp, kDp};
  const sage::quant::StridedInput vin{dv, kin.stride_b, kin.stride_h, kin.stride_n};
  const sage::quant::StridedInput qin = kin;  // (no Q jobs)
  const bool clusters = sage::quant::kv_quantized_in_clusters(p, qin, kin, vin);
  auto library = [&] { PROBE_CHECK(sage::quant::launch_prepass(p, layout, ref, qin, kin, vin, nullptr, false)); };

  sage::quant::PrepassProblem p_jobs = p;
  p_jobs.kv_head_jobs_max_keys = n;
  const sage::quant::PrepassLayout layout_jobs = sage::quant::make_prepass_layout(p_jobs);
  auto lean = [&](int ctas) {
    PROBE_CHECK(sage::quant::launch_kv_head_jobs(p_jobs, layout_jobs, out, kin, vin, ctas, nullptr, false));
  };

  library();
  // The outputs of the head jobs on all SMs (a job per CTA) and on a
  // quarter of them (CTAs looping over jobs), each on a cleared workspace.
  std::size_t bad_vt_or_vs = 0;
  for (int ctas : {sm_count, sm_count / 4}) {
    PROBE_CHECK(cudaMemset(ws_new, 0, layout.bytes));
    lean(ctas);
    PROBE_CHECK(cudaDeviceSynchronize());
    int worst_k = 0;
    const std::size_t bad_k = mismatches(out.k, ref.k, elems, &worst_k);
    const std::size_t bad_ks = mismatches(out.k_scale, ref.k_scale, static_cast<std::size_t>(bh) * layout.k_groups);
    const std::size_t bad_vt = mismatches(out.vt, ref.vt, static_cast<std::size_t>(bh) * kDp * layout.nk_padded);
    const std::size_t bad_vs = mismatches(out.v_scale, ref.v_scale, static_cast<std::size_t>(bh) * kDp);
    bad_vt_or_vs += bad_vt + bad_vs;
    std::printf("N=%d: library path %s; head jobs on %d CTAs vs library: K codes %zu of %zu differ (max |diff| %d), "
                "K scales %zu, V^T codes %zu, V scales %zu\n",
                n, clusters ? "clusters" : "two kernels", ctas, bad_k, elems, worst_k, bad_ks, bad_vt, bad_vs);
  }

  const double bytes = 3.0 * elems * 2;  // K and V read, their codes written (the floor's traffic)
  const float lib_ms = median_ms(library, 20);
  std::printf("  library pre-pass (K/V only, all %d SMs): %8.1f us  SM time %8.0f SM-us  %6.2f TB/s\n", sm_count,
              1e3 * lib_ms, 1e3 * lib_ms * sm_count, bytes / (lib_ms * 1e-3) / 1e12);
  std::printf("{\"probe\": \"kv_prepass\", \"n\": %d, \"path\": \"library\", \"ctas\": %d, \"us\": %.2f}\n", n, sm_count,
              1e3 * lib_ms);
  for (int ctas : {sm_count, sm_count / 2, sm_count / 3, sm_count / 4, sm_count / 6}) {
    const float ms = median_ms([&] { lean(ctas); }, 20);
    std::printf("  head jobs, %3d CTAs (SMs):             %8.1f us  SM time %8.0f SM-us  %6.2f TB/s\n", ctas, 1e3 * ms,
                1e3 * ms * ctas, bytes / (ms * 1e-3) / 1e12);
    std::printf("{\"probe\": \"kv_prepass\", \"n\": %d, \"path\": \"head_jobs\", \"ctas\": %d, \"us\": %.2f}\n", n, ctas,
                1e3 * ms);
  }
  PROBE_CHECK(cudaFree(dk));
  PROBE_CHECK(cudaFree(dv));
  PROBE_CHECK(cudaFree(ws_ref));
  PROBE_CHECK(cudaFree(ws_new));
  return bad_vt_or_vs == 0 ? 0 : 1;  // (K may differ where its mean does: see the top)
}

// Holds its stream for `ns` nanoseconds: the two streams of the concurrent
// run wait for it, so both kernels are queued before either starts.
__global__ void hold(long long ns) {
  long long t0, t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t0));
  do {
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  } while (t - t0 < ns);
}

// The attention kernel alone on C = SMs - P CTAs (SAGE_SM90_CTAS, the
// library's cap of its persistent grid), the head-jobs kernel alone on P, and
// both at once on disjoint SMs (each CTA of either fills an SM): how much
// each slows the other down through L2 and DRAM. (Not the design's
// schedule, where the P SMs join the attention kernel once the pre-pass
// ends: this measures only the interference.)
void concurrency(int n, int sm_count) {
  const int batch = 2, heads = 32;
  const std::size_t elems = static_cast<std::size_t>(batch) * heads * n * kDp;
  std::vector<std::uint16_t> h(elems);
  std::mt19937 rng(99u);
  std::normal_distribution<float> normal(0.f, 1.f);
  void* bufs[4];
  for (void*& b : bufs) {
    for (auto& x : h) x = bf16_bits(normal(rng));
    PROBE_CHECK(cudaMalloc(&b, elems * 2));
    PROBE_CHECK(cudaMemcpy(b, h.data(), elems * 2, cudaMemcpyHostToDevice));
  }
  auto view = [&](void* d) { return sage::make_contiguous_view(d, sage::DType::bf16, {batch, heads, n, kDp}, 0); };
  sage::AttentionArgs args;
  args.q = view(bufs[0]), args.k = view(bufs[1]), args.v = view(bufs[2]), args.out = view(bufs[3]);
  const sage::AttentionOptions options;
  std::size_t ws_bytes = 0;
  if (!sage::attention_workspace_size(args, options, &ws_bytes).is_ok()) std::exit(1);
  void* ws;
  PROBE_CHECK(cudaMalloc(&ws, ws_bytes));
  if (!sage::attention_forward(args, options, ws, ws_bytes, nullptr).is_ok()) std::exit(1);
  PROBE_CHECK(cudaDeviceSynchronize());

  // The head-jobs kernel's own buffers (its inputs: this call's K and V).
  sage::quant::PrepassProblem p;
  p.batch = batch, p.heads_q = heads, p.heads_kv = heads, p.nq = n, p.nk = n;
  p.head_dim = kDp, p.head_dim_padded = kDp, p.kv_head_jobs_max_keys = n;
  const sage::quant::PrepassLayout layout = sage::quant::make_prepass_layout(p);
  void* ws_jobs;
  PROBE_CHECK(cudaMalloc(&ws_jobs, layout.bytes));
  const sage::quant::PrepassBuffers out = layout.carve(ws_jobs);
  const sage::quant::StridedInput kin{bufs[1], static_cast<std::int64_t>(n) * kDp * heads,
                                      static_cast<std::int64_t>(n) * kDp, kDp};
  const sage::quant::StridedInput vin{bufs[2], kin.stride_b, kin.stride_h, kin.stride_n};

  cudaStream_t sa, sb, sc;
  PROBE_CHECK(cudaStreamCreateWithFlags(&sa, cudaStreamNonBlocking));
  PROBE_CHECK(cudaStreamCreateWithFlags(&sb, cudaStreamNonBlocking));
  PROBE_CHECK(cudaStreamCreateWithFlags(&sc, cudaStreamNonBlocking));
  cudaEvent_t go, a_end, b_end;
  PROBE_CHECK(cudaEventCreate(&go));
  PROBE_CHECK(cudaEventCreate(&a_end));
  PROBE_CHECK(cudaEventCreate(&b_end));
  auto attention = [&](cudaStream_t st) {
    if (!sage::detail::gpu_attention_kernel_only(args, options, ws, ws_bytes, st).is_ok()) std::exit(1);
  };
  auto lean = [&](cudaStream_t st, int ctas) {
    PROBE_CHECK(sage::quant::launch_kv_head_jobs(p, layout, out, kin, vin, ctas, st, false));
  };
  // Median durations (us) from `go` to each stream's end; run_a / run_b may be null.
  auto timed = [&](auto run_a, auto run_b) {
    std::vector<float> ta, tb;
    for (int i = 0; i < 13; ++i) {
      hold<<<1, 1, 0, sc>>>(300000);
      PROBE_CHECK(cudaEventRecord(go, sc));
      PROBE_CHECK(cudaStreamWaitEvent(sa, go));
      PROBE_CHECK(cudaStreamWaitEvent(sb, go));
      run_a(sa);
      run_b(sb);
      PROBE_CHECK(cudaEventRecord(a_end, sa));
      PROBE_CHECK(cudaEventRecord(b_end, sb));
      PROBE_CHECK(cudaDeviceSynchronize());
      float x = 0.f, y = 0.f;
      PROBE_CHECK(cudaEventElapsedTime(&x, go, a_end));
      PROBE_CHECK(cudaEventElapsedTime(&y, go, b_end));
      if (i >= 3) ta.push_back(1e3f * x), tb.push_back(1e3f * y);
    }
    std::sort(ta.begin(), ta.end());
    std::sort(tb.begin(), tb.end());
    return std::make_pair(ta[ta.size() / 2], tb[tb.size() / 2]);
  };
  auto nothing = [](cudaStream_t) {};
  setenv("SAGE_SM90_CTAS", "0", 1);
  const float full = timed(nothing, attention).second;
  std::printf("N=%d concurrency: attention kernel alone on all %d SMs: %.1f us\n", n, sm_count, full);
  for (int ctas : {sm_count / 6, sm_count / 4, sm_count / 3}) {
    setenv("SAGE_SM90_CTAS", std::to_string(sm_count - ctas).c_str(), 1);
    const float att_alone = timed(nothing, attention).second;
    const float lean_alone = timed([&](cudaStream_t st) { lean(st, ctas); }, nothing).first;
    const auto both = timed([&](cudaStream_t st) { lean(st, ctas); }, attention);
    std::printf("  P=%3d: head jobs alone %7.1f us, with attention on %3d SMs %7.1f us (%+.1f%%); attention alone %7.1f us, "
                "with head jobs %7.1f us (%+.1f%%)\n",
                ctas, lean_alone, sm_count - ctas, both.first, 100.0 * (both.first / lean_alone - 1.0), att_alone,
                both.second, 100.0 * (both.second / att_alone - 1.0));
    std::printf("{\"probe\": \"kv_prepass_concurrency\", \"n\": %d, \"ctas\": %d, \"head_jobs_alone_us\": %.2f, "
                "\"head_jobs_with_attention_us\": %.2f, \"attention_alone_us\": %.2f, \"attention_with_head_jobs_us\": %.2f, "
                "\"attention_full_us\": %.2f}\n",
                n, ctas, lean_alone, both.first, att_alone, both.second, full);
  }
  unsetenv("SAGE_SM90_CTAS");
  for (void* b : bufs) PROBE_CHECK(cudaFree(b));
  PROBE_CHECK(cudaFree(ws));
  PROBE_CHECK(cudaFree(ws_jobs));
}

}  // namespace probe

int main(int argc, char** argv) {
  int sm_count = 0;
  PROBE_CHECK(cudaDeviceGetAttribute(&sm_count, cudaDevAttrMultiProcessorCount, 0));
  std::vector<int> sizes;
  for (int i = 1; i < argc; ++i) sizes.push_back(std::atoi(argv[i]));
  if (sizes.empty()) sizes = {1024, 4096};
  int rc = 0;
  for (int n : sizes) {
    if (n <= 0 || n % probe::kTileRows != 0) {
      std::fprintf(stderr, "N must be a positive multiple of %d\n", probe::kTileRows);
      return 2;
    }
    rc |= probe::run(n, sm_count);
    probe::concurrency(n, sm_count);
  }
  return rc;
}
