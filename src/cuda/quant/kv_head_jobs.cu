// The pre-pass's head-jobs kernel: K and V with one job per (batch * kv
// head, K or V), for calls of many short heads (see prepass.h for what it
// produces, and kv_head_jobs_path for where it runs).
//
// A job reads its head's rows twice, straight into registers: first for the
// head's statistics (K: channel sums for mean_k; V: channel max and min for
// the V scales), then, 128-row tile by tile, for the codes (the second read
// meant to hit L2, where the first left the rows). It has its next tile's
// loads in flight while it quantizes the current one.
//
// A job runs on one CTA, or split over a thread-block cluster of `ctas`
// CTAs (kv_head_job_shape_fitting): CTA r then reads the r-th run of the
// head's 128-row tiles, twice, and the CTAs exchange their partial
// statistics through distributed shared memory (in rank order, as the
// cluster kernel of prepass.cu does).
//
// An SM holds one CTA (123 registers a thread; the statistics read keeps 8
// to 16 rows in flight per thread, the codes read one tile ahead) or two
// (kPerSm: 64 registers; 4 to 8 rows, and no tile ahead: the other CTA's
// warps hide the latencies). With one, the kernel waits on its own loads,
// barriers and dependent instructions (ncu at 4K keys: 25% of the warp
// slots active, issue 46% busy); two per SM take ~5% off it there, ~1% of
// the call (kv_head_job_ctas_per_sm). Why split: with one CTA per job, 128
// jobs of 4K keys read 128 MiB of rows before any job reads its own again,
// more than the L2 holds, so both reads come from DRAM; split 4 ways, the
// first wave reads ~33 MiB (kv_head_job_split). It also spreads the longer
// K jobs over more SMs. Measured (H200, docs/perf-notes.md, session 51): at
// 4K keys the split reads 141 MB from DRAM instead of 257, yet the kernel
// alone takes as long (ncu: 92 against 89 us) and the calls' pre-pass share
// moves by 0 to -4 us: the kernel is not bound by its DRAM reads.
//
// Why a third path beside the cluster kernel (docs/perf-notes.md, session
// 36): at D = 128 and 1K keys the cluster kernel's 1024 CTAs of one tile run
// in ~1.55 waves, each CTA paying a cluster exchange for its 16K elements;
// one wave of 128 head jobs (B=2 H=32) takes 12% less time alone (H200:
// 26.9 against 30.6 us), and whole calls 3-7% less. At 2K keys the two
// kernels are even alone (the calls still 1.5-1.7% faster), at 4K this one
// is 1.5% slower alone (the calls 0.4-0.6% faster); with fewer jobs than
// about the SMs (few heads) it would leave SMs idle (kv_head_jobs_fit).
//
// The arithmetic of every element is the other paths' (quantize_rows.cuh,
// formats.h: the V codes and scales agree bit for bit); the channel sums of
// K are added in another fixed order (per thread over rows r, r + 32, ...,
// then the 32 row lanes in order), so mean_k, and with it a K code next to a
// rounding boundary, can differ in its last bit from the other paths'; split
// over a cluster, each CTA sums its own rows so, then the CTAs' sums are
// added in rank order (the same float in every CTA of the cluster).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>

#include "cuda/common/cluster.cuh"
#include "cuda/common/cluster_launch.h"
#include "cuda/common/kernel_attributes.h"
#include "cuda/common/programmatic_launch.cuh"
#include "cuda/common/ptx_copy.cuh"
#include "cuda/quant/kv_head_jobs_fit.h"
#include "cuda/quant/prepass.h"
#include "cuda/quant/quantize_rows.cuh"
#include "numerics/formats.h"

namespace sage::quant {
namespace {

constexpr int kDp = kKvHeadJobsDp;
constexpr int kThreads = 512;
constexpr int kChunks = kDp / kVec;            // 16-byte chunks of a row: 16
constexpr int kRowLanes = kThreads / kChunks;  // rows a CTA reads side by side: 32
constexpr int kTileRows = 128;                 // a tile: one K scale group (per_warp at cta_k 128), one V^T tile
constexpr int kRowsPerThread = kTileRows / kRowLanes;  // rows of a tile per thread: 4
// With one CTA per SM: more than half of an SM's shared memory, so that a
// grid of P CTAs takes P SMs (the device probe times it on a few).
constexpr int kSmemFloor = 120 << 10;
static_assert(kRowsPerThread * kRowLanes == kTileRows && kRowLanes == 32, "a tile is 4 rows per thread");
static_assert(vt_key_of_position(4) == 2 && vt_key_of_position(6) == 10 && vt_key_of_position(16) == 16,
              "V^T positions 4q .. 4q + 3 of a 16-key half hold its keys 2q, 2q + 1, 2q + 8, 2q + 9");

struct HeadJobShared {
  float lanes[2][kRowLanes][kDp];  // the row lanes' partial statistics (K: sums; V: max, min)
  float partial[2][kDp];           // this CTA's (K: sums; V: max, min), read by the whole cluster
  float per_channel[kDp];          // K: mean_k; V: 1 / v_scale
  alignas(16) float group_max[2][kThreads / 32];      // K: the warps' |k - mean| maxima, by tile parity
  alignas(16) std::uint8_t vt[2][kDp][kTileRows];     // V^T tiles by parity, 16-byte blocks swizzled (v_codes)
  int claimed_job;                                    // HeadJobLaunch::claims: the job thread 0 claimed
};

// Which jobs one launch of the kernel runs, and how. The usual pre-pass is
// one launch of every job, strided over its clusters. The concurrent
// pre-pass (PrepassProblem::concurrent_heads) is two: the first heads' jobs
// strided over the whole GPU (`clears`), then the others claimed one at a
// time by a CTA on each of a few SMs (`claims`), both raising each job's
// flags in job_ready (publishes()) for the attention kernel, which runs
// beside them and waits for each head's flags instead of for the grids.
struct HeadJobLaunch {
  int first_job = 0, end_job = 0;  // jobs [first_job, end_job) of 2 * batch * heads_kv
  // Before its trigger: the flags of jobs past end_job (the second
  // launch's) and its CTAs' own are cleared, and the claim counters zeroed.
  bool clears = false;
  bool claims = false;  // one CTA per job, claimed from job_claims
  __host__ __device__ bool publishes() const { return clears || claims; }  // either launch of the concurrent pre-pass
};

// Clears what the concurrent pre-pass's first launch must clear before any
// CTA of the second launch or of the attention kernel can read it (those
// start after this grid's triggers: the fence and the barrier put the
// stores before this CTA's trigger, as kv_stats_kernel's clears). A CTA
// clears only its own jobs' flags of this launch (the clear of another
// CTA's flag could land after that CTA raised it), and its share of the
// second launch's, which no CTA of this grid raises.
__device__ void clear_before_trigger(const PrepassBuffers& out, const HeadJobLaunch& launch, int jobs, int ctas,
                                     int rank) {
  if (threadIdx.x == 0) {
    for (int job = launch.first_job + blockIdx.x / ctas; job < launch.end_job; job += gridDim.x / ctas) {
      out.job_ready[job * kKvHeadJobMaxCtas + rank] = 0;
    }
  }
  int* later = out.job_ready + launch.end_job * kKvHeadJobMaxCtas;
  const int later_flags = (jobs - launch.end_job) * kKvHeadJobMaxCtas;
  for (int i = blockIdx.x * kThreads + threadIdx.x; i < later_flags; i += gridDim.x * kThreads) later[i] = 0;
  if (blockIdx.x == 0 && threadIdx.x == 0) {
    out.item_claims[0] = out.item_claims[1] = 0;
    *out.job_claims = 0;
  }
  __threadfence();
  __syncthreads();
}

// This CTA's next job after `job` (its first where job < 0; past the
// launch's last: >= end_job): strided over the launch's clusters, or
// claimed (only by CTAs alone on their SMs: kMayClaim, so that the two-per-SM
// build, at 64 registers, keeps its loop as it was; the one-per-SM build,
// which the calls of up to 2K keys take, carries the claim's branch: their
// calls timed the same, H100, session 60). Ends with a barrier where
// claimed (the claim's broadcast).
template <bool kMayClaim>
__device__ __forceinline__ int next_job(const PrepassBuffers& out, const HeadJobLaunch& launch, int job, int ctas,
                                        HeadJobShared& s) {
  if (!kMayClaim || !launch.claims) {
    return job < 0 ? launch.first_job + static_cast<int>(blockIdx.x) / ctas : job + gridDim.x / ctas;
  }
  if (threadIdx.x == 0) s.claimed_job = launch.first_job + atomicAdd(out.job_claims, 1);
  __syncthreads();
  return s.claimed_job;
}

// The rows [first, first + n) of a head: those of one CTA of its job. Rows
// are counted from `first` (base points at it); 16 bytes of row `row`,
// chunk c8 (zeros past the n rows and past head_dim: Vec rows, so a chunk
// is in or out whole), with an L2 policy.
template <typename T>
struct HeadRows {
  const T* base;
  std::int64_t stride_n;
  int first, n, head_dim;
  __device__ __forceinline__ bool chunk_in(int c8) const { return kVec * c8 < head_dim; }
  // The same for a row below n and a chunk below head_dim (no checks).
  __device__ __forceinline__ uint4 load_inside(int row, int c8, uint64_t policy) const {
    return ptx::ld_global_nc_16_hinted(base + row * stride_n + kVec * c8, policy);
  }
  __device__ __forceinline__ uint4 load(int row, int c8, uint64_t policy) const {
    if (row >= n || !chunk_in(c8)) return make_uint4(0, 0, 0, 0);
    return load_inside(row, c8, policy);
  }
};

// The statistics read of one thread: its rows lane_row, lane_row + 32, ...
// in ascending order (K's channel sums are added in that order), in two
// banks of kBankRows rows, one bank's loads in flight while the other's
// rows are added. Against 16 rows loaded, then added (H200, GPU time of
// whole calls, B=2 H=32 D=128, 3 interleaved rounds, docs/perf-notes.md,
// session 39): 1K keys -3.7% (every round lower), causal 1K +0.3%, 4K 0.0%,
// causal 4K +0.3%. add(w): the thread's 16 bytes w of a row below n.
template <int kBankRows, typename T, class Add>
__device__ __forceinline__ void for_each_statistics_row(const HeadRows<T>& rows, int lane_row, int c8,
                                                        uint64_t policy, Add&& add) {
  constexpr int kBankStep = kRowLanes * kBankRows;  // the rows of a bank, over the CTA
  // A bank whose rows are all below n (every bank but the last) takes no
  // per-row checks: in the sm_90a SASS its loads and sums take ~40% fewer
  // instructions for K, its extremes ~65% fewer for V (docs/perf-notes.md,
  // session 40).
  auto whole = [&](int r0) { return r0 + (kBankRows - 1) * kRowLanes < rows.n; };
  const bool chunk_in = rows.chunk_in(c8);
  auto load = [&](uint4 (&bank)[kBankRows], int r0) {
    if (whole(r0) && chunk_in) {
#pragma unroll
      for (int u = 0; u < kBankRows; ++u) bank[u] = rows.load_inside(r0 + u * kRowLanes, c8, policy);
    } else {
#pragma unroll
      for (int u = 0; u < kBankRows; ++u) bank[u] = rows.load(r0 + u * kRowLanes, c8, policy);  // (zeros past n)
    }
  };
  auto add_bank = [&](const uint4 (&bank)[kBankRows], int r0) {
    if (whole(r0)) {
#pragma unroll
      for (int u = 0; u < kBankRows; ++u) add(bank[u]);
    } else {
#pragma unroll
      for (int u = 0; u < kBankRows; ++u) {
        if (r0 + u * kRowLanes < rows.n) add(bank[u]);
      }
    }
  };
  uint4 a[kBankRows], b[kBankRows];
  load(a, lane_row);
  for (int r0 = lane_row; r0 < rows.n; r0 += 2 * kBankStep) {
    load(b, r0 + kBankStep);
    add_bank(a, r0);
    load(a, r0 + 2 * kBankStep);
    add_bank(b, r0 + kBankStep);
  }
}

// The CTAs of one job: `ctas` of them in a cluster (1: a CTA alone), this
// one of rank `rank`, reading the rank-th run of `run_rows` rows of the
// head (a multiple of 128: no tile straddles two CTAs). The two cluster
// barriers of a job (cluster.cuh): partials_written (arrive and wait), then
// peers_read (arrive) and, once the CTA's tiles are quantized,
// partials_free (wait), which every CTA of the cluster passes once per job,
// empty ranks included.
struct JobCtas {
  int ctas, rank, run_rows;
  __device__ void partials_written() const {
    if (ctas > 1) {
      cluster::arrive();
      cluster::wait();
    } else {
      __syncthreads();
    }
  }
  // Row `which` of rank r's partials, channel c.
  __device__ float partial(const HeadJobShared& s, int which, int c, int r) const {
    return ctas > 1 ? cluster::load_from_rank(&s.partial[which][c], r) : s.partial[which][c];
  }
  __device__ void peers_read() const {
    if (ctas > 1) cluster::arrive();
  }
  __device__ void partials_free() const {
    if (ctas > 1) cluster::wait();
  }
  // This CTA's rows of a head of `nk` rows at `head` (row 0).
  template <typename T>
  __device__ HeadRows<T> rows_of(const T* head, std::int64_t stride_n, int nk, int head_dim) const {
    const int first = min(rank * run_rows, nk);
    return HeadRows<T>{head + first * stride_n, stride_n, first, min(run_rows, nk - first), head_dim};
  }
};

// First read: this thread's share of its CTA's statistics, then the CTA's
// (s.partial), then the head's from every CTA's in rank order, in
// s.per_channel (K: mean_k; V: 1 / v_scale, and v_scale, v_mean written out
// by rank 0).
template <int kPerSm, typename T>
__device__ void head_statistics(const PrepassProblem& p, const PrepassBuffers& out, const HeadRows<T>& rows, int bh,
                                bool v_job, const JobCtas& job, HeadJobShared& s) {
  constexpr int kBankRows = 8 / kPerSm;  // rows per bank: 8 to 16 in flight per thread, half that at two CTAs per SM
  const int c8 = threadIdx.x % kChunks, lane_row = threadIdx.x / kChunks;
  const uint64_t keep = ptx::l2_policy_evict_last();  // read again in the second pass
  float sum[kVec] = {};
  PairOf<T> hi[kVec / 2], lo[kVec / 2];
  for (int i = 0; i < kVec / 2; ++i) hi[i] = pair_of<T>(-INFINITY), lo[i] = pair_of<T>(INFINITY);
  if (v_job) {
    // The extremes on packed pairs (exact; NaN skipped as fmaxf does, the
    // other paths' rule).
    for_each_statistics_row<kBankRows>(rows, lane_row, c8, keep, [&](const uint4& w) {
      const uint32_t words[4] = {w.x, w.y, w.z, w.w};
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        PairOf<T> x;
        memcpy(&x, &words[i], sizeof(x));
        hi[i] = __hmax2(hi[i], x), lo[i] = __hmin2(lo[i], x);
      }
    });
  } else {
    for_each_statistics_row<kBankRows>(rows, lane_row, c8, keep, [&](const uint4& w) {
      const uint32_t words[4] = {w.x, w.y, w.z, w.w};
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const float2 f = to_float2<T>(words[i]);
        sum[2 * i] += f.x, sum[2 * i + 1] += f.y;
      }
    });
  }
#pragma unroll
  for (int i = 0; i < kVec / 2; ++i) {
    uint32_t hb, lb;
    memcpy(&hb, &hi[i], 4);
    memcpy(&lb, &lo[i], 4);
    const float2 h = to_float2<T>(hb), l = to_float2<T>(lb);
    const int c = kVec * c8 + 2 * i;
    s.lanes[0][lane_row][c] = v_job ? h.x : sum[2 * i];
    s.lanes[0][lane_row][c + 1] = v_job ? h.y : sum[2 * i + 1];
    s.lanes[1][lane_row][c] = l.x;
    s.lanes[1][lane_row][c + 1] = l.y;
  }
  __syncthreads();
  if (threadIdx.x < kDp) {
    const int c = threadIdx.x;
    if (v_job) {
      float mx = -INFINITY, mn = INFINITY;
      for (int r = 0; r < kRowLanes; ++r) mx = fmaxf(mx, s.lanes[0][r][c]), mn = fminf(mn, s.lanes[1][r][c]);
      s.partial[0][c] = mx, s.partial[1][c] = mn;
    } else {
      float total = 0.f;
      for (int r = 0; r < kRowLanes; ++r) total += s.lanes[0][r][c];
      s.partial[0][c] = total;
    }
  }
  job.partials_written();
  if (threadIdx.x < kDp) {
    const int c = threadIdx.x;
    if (v_job) {
      float mx = -INFINITY, mn = INFINITY;
      for (int r = 0; r < job.ctas; ++r) {
        mx = fmaxf(mx, job.partial(s, 0, c, r));
        mn = fminf(mn, job.partial(s, 1, c, r));
      }
      // (As the other paths' set_v_channel, without smooth_v: mean 0.)
      const float mean = 0.f;
      const float amax = fmaxf(fabsf(mx - mean), fabsf(mn - mean));
      const float scale = num::symmetric_scale(amax, 448);  // E4M3's largest finite
      s.per_channel[c] = num::reciprocal_rn(scale);
      if (job.rank == 0) {
        out.v_scale[static_cast<std::int64_t>(bh) * kDp + c] = scale;
        out.v_mean[static_cast<std::int64_t>(bh) * kDp + c] = mean;
      }
    } else {
      float total = 0.f;
      for (int r = 0; r < job.ctas; ++r) total += job.partial(s, 0, c, r);
      s.per_channel[c] = p.smooth_k ? total / static_cast<float>(p.nk) : 0.f;
    }
  }
  job.peers_read();
  __syncthreads();
}

// The second read: for each 128-row tile of `rows`, work(row0, parity, x)
// with x the thread's rows row0 + offsets[i] of chunk c8 as floats (zeros
// past n); parity alternates by tile (the work's double-buffered shared
// memory). kAhead: the next tile's loads are issued before the work (with
// two CTAs per SM its 16 registers would spill: not there).
template <bool kAhead, typename T, class Work>
__device__ __forceinline__ void for_each_tile(const HeadRows<T>& rows, const int (&offsets)[kRowsPerThread], int c8,
                                              Work&& work) {
  const uint64_t drop = ptx::l2_policy_evict_first();  // the rows' last read
  uint4 w[kRowsPerThread];
  auto load_tile = [&](int row0) {
#pragma unroll
    for (int i = 0; i < kRowsPerThread; ++i) w[i] = rows.load(row0 + offsets[i], c8, drop);
  };
  if constexpr (kAhead) load_tile(0);
  int parity = 0;
  for (int row0 = 0; row0 < rows.n; row0 += kTileRows, parity ^= 1) {
    if constexpr (!kAhead) load_tile(row0);
    float x[kRowsPerThread][kVec];
#pragma unroll
    for (int i = 0; i < kRowsPerThread; ++i) unpack8<T>(w[i], x[i]);
    if constexpr (kAhead) {
      if (row0 + kTileRows < rows.n) load_tile(row0 + kTileRows);
    }
    work(row0, parity, x);
  }
}

// Second read, K: per 128-row tile (one scale group), max |k - mean| over
// its rows, then their INT8 codes. A thread takes chunk c8 of rows
// lane_row + 32 i. The K jobs are the kernel's longer half (alone at 4K
// keys: K jobs 84 us, V jobs 57 us, both 99 us under ncu, session 40), so
// their instruction count is what this loop is written for: the values are
// subtracted once, and their codes need no clamp (their group's own scale:
// quantize_int8x8; the conversions pack in pairs, F2IP).
template <bool kAhead, typename T>
__device__ void k_codes(const PrepassProblem& p, const PrepassLayout& layout, const PrepassBuffers& out,
                        const HeadRows<T>& rows, int bh, HeadJobShared& s) {
  const int c8 = threadIdx.x % kChunks, lane_row = threadIdx.x / kChunks;
  float mean[kVec];
#pragma unroll
  for (int e = 0; e < kVec; ++e) mean[e] = s.per_channel[kVec * c8 + e];
  std::int8_t* codes = out.k + static_cast<std::int64_t>(bh) * p.nk * kDp;
  float* scales = out.k_scale + static_cast<std::int64_t>(bh) * layout.k_groups;
  int offsets[kRowsPerThread];
#pragma unroll
  for (int i = 0; i < kRowsPerThread; ++i) offsets[i] = lane_row + kRowLanes * i;
  for_each_tile<kAhead>(rows, offsets, c8, [&](int row0, int parity, float (&x)[kRowsPerThread][kVec]) {
    float m = 0.f;
#pragma unroll
    for (int i = 0; i < kRowsPerThread; ++i) {
      float row_max = 0.f;
#pragma unroll
      for (int e = 0; e < kVec; ++e) {
        x[i][e] -= mean[e];
        // Held in a register until the codes below: otherwise the compiler
        // unpacks and subtracts again after the barrier (64 instructions
        // per tile and thread, SASS of sm_90a).
        asm volatile("" : "+f"(x[i][e]));
        row_max = num::max_nan(row_max, fabsf(x[i][e]));
      }
      if (row0 + offsets[i] < rows.n) m = num::max_nan(m, row_max);  // rows past n are in no group's maximum
    }
    m = warp_max_of_magnitudes(m);
    if (threadIdx.x % 32 == 0) s.group_max[parity][threadIdx.x / 32] = m;
    // One barrier per tile: the maxima of the other parity were read before it.
    __syncthreads();
    const float amax = max_of_magnitudes(s.group_max[parity]);  // (the warps' maxima)
    const float scale = num::symmetric_scale(amax, 127);
    const float inv = num::reciprocal_rn(scale);
#pragma unroll
    for (int i = 0; i < kRowsPerThread; ++i) {
      const int row = row0 + offsets[i];
      if (row < rows.n) {
        *reinterpret_cast<uint2*>(codes + static_cast<std::int64_t>(rows.first + row) * kDp + kVec * c8) =
            quantize_int8x8(x[i], inv);
      }
    }
    if (threadIdx.x == 0) scales[(rows.first + row0) / kTileRows] = scale;
  });
}

// Second read, V: per 128-key tile, V / v_scale in E4M3, transposed through
// shared memory into V^T rows whose 32-key chunks hold their keys in the
// kernel's P order (vt_key_of_position). A thread takes chunk c8 of the four
// keys 2q, 2q + 1, 2q + 8, 2q + 9 of 16-key half hg: one 32-bit word of V^T
// per channel.
template <bool kAhead, typename T>
__device__ void v_codes(const PrepassLayout& layout, const PrepassBuffers& out, const HeadRows<T>& rows, int bh,
                        HeadJobShared& s) {
  const int c8 = threadIdx.x % kChunks, quad_of_tile = threadIdx.x / kChunks;
  const int hg = quad_of_tile / 4, q = quad_of_tile % 4;
  const int keys[kRowsPerThread] = {16 * hg + 2 * q, 16 * hg + 2 * q + 1, 16 * hg + 2 * q + 8, 16 * hg + 2 * q + 9};
  float inv[kVec];
#pragma unroll
  for (int e = 0; e < kVec; ++e) inv[e] = s.per_channel[kVec * c8 + e];
  std::uint8_t* vt = out.vt + static_cast<std::int64_t>(bh) * kDp * layout.nk_padded;
  // Where 16-byte block `block` of V^T row `channel` sits in a staging
  // tile: blocks XOR the channel's chunk (mod 8), so that the 16 lanes of a
  // store (16 chunks, one position) fall into 8 banks, not one.
  auto vt_block = [](int channel, int block) { return block ^ ((channel / kVec) % 8); };
  for_each_tile<kAhead>(rows, keys, c8, [&](int key0, int parity, float (&x)[kRowsPerThread][kVec]) {
    // Keys past n are zeros: code 0, as on the other paths.
#pragma unroll
    for (int e = 0; e < kVec; ++e) {
      const int c = kVec * c8 + e;
      const uint32_t word = fp8x2_e4m3_code(x[0][e] * inv[e], x[1][e] * inv[e]) |
                            fp8x2_e4m3_code(x[2][e] * inv[e], x[3][e] * inv[e]) << 16;
      *reinterpret_cast<uint32_t*>(&s.vt[parity][c][16 * vt_block(c, hg) + 4 * q]) = word;
    }
    // One barrier per tile: the other parity's tile was stored out before it.
    __syncthreads();
#pragma unroll
    for (int j = 0; j < kDp * (kTileRows / 16) / kThreads; ++j) {
      const int block_job = threadIdx.x + j * kThreads;  // (channel, 16-key block)
      const int c = block_job / (kTileRows / 16), block = block_job % (kTileRows / 16);
      const std::int64_t at = rows.first + key0 + 16 * block;
      if (at < layout.nk_padded) {  // nk_padded is a multiple of 16: a block is in or out whole
        *reinterpret_cast<uint4*>(vt + c * static_cast<std::int64_t>(layout.nk_padded) + at) =
            *reinterpret_cast<const uint4*>(&s.vt[parity][c][16 * vt_block(c, block)]);
      }
    }
  });
}

// The grid: clusters of `ctas` CTAs (1: plain CTAs), cluster j taking jobs
// j, j + clusters, ... (clusters = gridDim.x / ctas); kPerSm CTAs per SM.
template <typename T, int kPerSm>
__global__ void __launch_bounds__(kThreads, kPerSm)
    kv_head_jobs_kernel(PrepassProblem p, PrepassLayout layout, PrepassBuffers out, StridedInput k_in,
                        StridedInput v_in, int ctas, HeadJobLaunch launch) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  const int jobs = 2 * p.batch * p.heads_kv;
  const int tiles = (p.nk + kTileRows - 1) / kTileRows;
  const JobCtas job_ctas{ctas, ctas > 1 ? cluster::rank() : 0, (tiles + ctas - 1) / ctas * kTileRows};
  if (launch.clears) clear_before_trigger(out, launch, jobs, ctas, job_ctas.rank);
  // The attention kernel (which quantizes Q before it waits for this grid)
  // may start on SMs this grid leaves.
  pdl::allow_dependent_launch();
  // (zero_item_claims; a publishing launch does not: the attention kernel
  // may be claiming already, its counters cleared before the first trigger.)
  if (!launch.publishes() && blockIdx.x == 0 && threadIdx.x == 0) out.item_claims[0] = out.item_claims[1] = 0;
  extern __shared__ uint4 head_jobs_smem[];
  HeadJobShared& s = *reinterpret_cast<HeadJobShared*>(head_jobs_smem);
  // Job j: head j / 2, K (even) or V (odd): a head's two jobs side by side,
  // the heads in order. Every CTA of a cluster takes the same jobs.
  for (int job = next_job<kPerSm == 1>(out, launch, -1, ctas, s); job < launch.end_job;
       job = next_job<kPerSm == 1>(out, launch, job, ctas, s)) {
    const int bh = job / 2;
    const bool v_job = job % 2 == 1;
    const auto [b, h] = layout.heads_kv_div.divmod(bh);
    const StridedInput& in = v_job ? v_in : k_in;
    const HeadRows<T> rows = job_ctas.rows_of(static_cast<const T*>(in.data) + b * in.stride_b + h * in.stride_h,
                                              in.stride_n, p.nk, p.head_dim);
    head_statistics<kPerSm, T>(p, out, rows, bh, v_job, job_ctas, s);
    if (v_job) {
      v_codes<kPerSm == 1, T>(layout, out, rows, bh, s);
    } else {
      k_codes<kPerSm == 1, T>(p, layout, out, rows, bh, s);
    }
    if (launch.publishes()) __threadfence();  // (this thread's codes and scales, before the flag below)
    job_ctas.partials_free();
    __syncthreads();  // the next job rewrites s
    if (launch.publishes() && threadIdx.x == 0) {
      ptx::store_release_gpu(out.job_ready + job * kKvHeadJobMaxCtas + job_ctas.rank, 1);
    }
  }
  // When launched under a Q-only quantize grid (launch_kv_head_job_path),
  // this grid's completion must imply that one's: the attention kernel waits
  // for this one only.
  pdl::wait_for_prerequisites();
#endif
}

std::size_t head_jobs_smem_bytes(int per_sm) {
  return per_sm == 1 ? std::max<std::size_t>(sizeof(HeadJobShared), kSmemFloor) : sizeof(HeadJobShared);
}

template <typename T>
const void* head_jobs_kernel(int per_sm) {
  return per_sm == 1 ? reinterpret_cast<const void*>(kv_head_jobs_kernel<T, 1>)
                     : reinterpret_cast<const void*>(kv_head_jobs_kernel<T, 2>);
}

// The launch of `clusters` clusters of shape.ctas CTAs each (1: plain
// CTAs), programmatic (PDL) if asked; the attributes live in `attributes`.
cudaLaunchConfig_t head_jobs_config(int clusters, KvHeadJobShape shape, cudaStream_t stream, bool programmatic,
                                    cudaLaunchAttribute (&attributes)[2]) {
  cudaLaunchConfig_t config{};
  config.gridDim = dim3(clusters * shape.ctas);
  config.blockDim = dim3(kThreads);
  config.dynamicSmemBytes = head_jobs_smem_bytes(shape.per_sm);
  config.stream = stream;
  config.attrs = attributes;
  const int cluster_ctas = shape.ctas > 1 ? shape.ctas : 0;  // (one CTA per job: no clusters)
  config.numAttrs = static_cast<unsigned>(cuda::cluster_launch_attributes(cluster_ctas, programmatic, attributes));
  return config;
}

template <typename T>
cudaError_t allow_head_jobs_smem(int per_sm) {
  return cuda::set_kernel_attribute_once(head_jobs_kernel<T>(per_sm), cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         static_cast<int>(head_jobs_smem_bytes(per_sm)));
}

// Whether the current device places clusters of shape.ctas head-job CTAs
// (cuda::clusters_placeable); "no" runs one CTA per job.
template <typename T>
bool head_job_clusters_fit(KvHeadJobShape shape) {
  if (allow_head_jobs_smem<T>(shape.per_sm) != cudaSuccess) {
    cudaGetLastError();  // (an answer, not an error of the call)
    return false;
  }
  cudaLaunchAttribute attributes[2];
  return cuda::clusters_placeable(head_jobs_kernel<T>(shape.per_sm),
                                  head_jobs_config(1, shape, nullptr, false, attributes));
}

// The rules' shape for every job of p, with one CTA per job where the
// device cannot place its clusters.
template <typename T>
KvHeadJobShape head_job_shape_fitting(const PrepassProblem& p) {
  constexpr int kRowBytes = kDp * static_cast<int>(sizeof(T));
  KvHeadJobShape shape = kv_head_job_shape(2LL * p.batch * p.heads_kv, p.nk, p.sm_count, kRowBytes,
                                           p.kv_head_job_split, p.kv_head_jobs_per_sm);
  if (shape.ctas > 1 && !head_job_clusters_fit<T>(shape)) shape.ctas = 1;
  return shape;
}

// One launch of `slots` jobs (or clusters) side by side in `shape`.
template <typename T>
cudaError_t launch_jobs(const PrepassProblem& p, const PrepassLayout& layout, const PrepassBuffers& out,
                        StridedInput k, StridedInput v, KvHeadJobShape shape, int slots, HeadJobLaunch launch,
                        cudaStream_t stream, bool programmatic) {
  if (const cudaError_t e = allow_head_jobs_smem<T>(shape.per_sm); e != cudaSuccess) return e;
  cudaLaunchAttribute attributes[2];
  const cudaLaunchConfig_t config = head_jobs_config(slots, shape, stream, programmatic, attributes);
  return shape.per_sm == 1
             ? cudaLaunchKernelEx(&config, kv_head_jobs_kernel<T, 1>, p, layout, out, k, v, shape.ctas, launch)
             : cudaLaunchKernelEx(&config, kv_head_jobs_kernel<T, 2>, p, layout, out, k, v, shape.ctas, launch);
}

// The concurrent pre-pass (PrepassProblem::concurrent_heads): the first
// heads' jobs at once on the whole GPU, in the shape the rules give every
// job (H100, B=2 H=32 D=128 4K keys: 8 CTAs per job, two per SM, the first
// 16 heads' jobs in ~40 us; the shape the rules give 32 jobs, 4 CTAs per
// job and one per SM, took ~56), then (programmatic: its CTAs start
// under the first launch, on the SMs it leaves) one CTA per SM on
// concurrent_sms SMs claiming the other heads' jobs, one job per CTA at a
// time (one CTA per SM: 123 registers, more than half an SM's shared
// memory, so that P CTAs hold P SMs and no attention CTA shares them).
template <typename T>
cudaError_t launch_concurrent(const PrepassProblem& p, const PrepassLayout& layout, const PrepassBuffers& out,
                              StridedInput k, StridedInput v, cudaStream_t stream) {
  const int jobs = 2 * p.batch * p.heads_kv, first_jobs = 2 * p.concurrent_heads;
  const KvHeadJobShape first = head_job_shape_fitting<T>(p);
  HeadJobLaunch launch{0, first_jobs, /*clears=*/true, /*claims=*/false};
  if (const cudaError_t e = launch_jobs<T>(p, layout, out, k, v, first, first_jobs, launch, stream, false);
      e != cudaSuccess) {
    return e;
  }
  launch = HeadJobLaunch{first_jobs, jobs, /*clears=*/false, /*claims=*/true};
  return launch_jobs<T>(p, layout, out, k, v, KvHeadJobShape{1, 1}, std::min(p.concurrent_sms, jobs - first_jobs),
                        launch, stream, true);
}

template <typename T>
cudaError_t launch_typed(const PrepassProblem& p, const PrepassLayout& layout, const PrepassBuffers& out,
                         StridedInput k, StridedInput v, int jobs_at_once, cudaStream_t stream, bool programmatic) {
  const int jobs = 2 * p.batch * p.heads_kv;
  if (p.concurrent_heads > 0) {
    // (The dispatch asks for it only where this holds. Anything else must
    // not fall back to the plain launch: the attention kernel would wait
    // for flags that no job raises.)
    if (2 * p.concurrent_heads >= jobs || p.concurrent_sms <= 0 || jobs_at_once != jobs || programmatic) {
      return cudaErrorInvalidValue;
    }
    return launch_concurrent<T>(p, layout, out, k, v, stream);
  }
  return launch_jobs<T>(p, layout, out, k, v, head_job_shape_fitting<T>(p), jobs_at_once,
                        HeadJobLaunch{0, jobs}, stream, programmatic);
}

}  // namespace

bool kv_head_jobs_path(const PrepassProblem& p, bool vec) {
  if (p.kv_head_jobs_max_keys <= 0 || p.nk <= 0 || p.nk > p.kv_head_jobs_max_keys || !vec) return false;
  if (p.head_dim_padded != kDp || p.qk_bits != 8 || p.granularity != Granularity::per_warp ||
      p.geometry.cta_k != kTileRows || p.v_format != VFormat::fp8_e4m3_transposed || p.smooth_v ||
      p.lse_correction) {
    return false;
  }
  return kv_head_jobs_fit(2LL * p.batch * p.heads_kv, p.sm_count);
}

cudaError_t launch_kv_head_jobs(const PrepassProblem& p, const PrepassLayout& layout, const PrepassBuffers& out,
                                StridedInput k, StridedInput v, int jobs_at_once, cudaStream_t stream,
                                bool programmatic) {
  const int jobs = 2 * p.batch * p.heads_kv;
  jobs_at_once = jobs_at_once > 0 ? std::min(jobs_at_once, jobs) : jobs;
  return p.bf16 ? launch_typed<__nv_bfloat16>(p, layout, out, k, v, jobs_at_once, stream, programmatic)
                : launch_typed<__half>(p, layout, out, k, v, jobs_at_once, stream, programmatic);
}

KvHeadJobShape kv_head_job_shape_fitting(const PrepassProblem& p) {
  return p.bf16 ? head_job_shape_fitting<__nv_bfloat16>(p) : head_job_shape_fitting<__half>(p);
}

}  // namespace sage::quant
