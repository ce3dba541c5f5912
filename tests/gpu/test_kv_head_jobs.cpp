// The pre-pass's head-jobs kernel split over thread-block clusters
// (quant::launch_kv_head_jobs with PrepassProblem::kv_head_job_split: each
// CTA of a job's cluster reads a run of the head's 128-row tiles, and the
// CTAs exchange their statistics through distributed shared memory),
// against one CTA per job on the same inputs (splits 2 to 8, each with one
// and with two CTAs per SM, PrepassProblem::kv_head_jobs_per_sm; and one CTA
// per job at two per SM):
//   * V's codes, scales and means bit for bit at every split (its channel
//     extremes are exact in any order);
//   * K's codes and scales bit for bit where K is not smoothed (no sums);
//     with smooth_k, mean_k is summed in another order (each CTA's rows,
//     then the CTAs in rank order), so a K scale may move in its last bits
//     and a code next to a rounding boundary by one, rarely.
// Every run writes into a workspace poisoned with a byte of its own, so an
// output that a split leaves unwritten shows as a mismatch; the attention
// kernel's claim counters must come back zeroed; a second run of each split
// must give the same bytes. The end-to-end calls at each split are in
// test_sm90_forward.cpp (Sm90KvHeadJobs).
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "cuda/quant/kv_head_jobs_fit.h"
#include "cuda/quant/prepass.h"
#include "gpu/gpu_test_util.h"
#include "numerics/formats.h"
#include "test_seed.h"

namespace {

using sage::quant::kKvHeadJobsDp;
using sage::test::DeviceBuffer;

struct JobsCase {
  const char* name;
  int batch, heads, nk, head_dim;
  bool bf16, smooth_k;
  int jobs_at_once;  // 0: every job at once; fewer: clusters loop over jobs
};

// The splits every case runs (CTAs per job, CTAs per SM): the rules' 2 and
// 4 at one per SM and 8 at two, runs of tiles that are not a power of two,
// and clusters wider than short heads have tiles (ranks without rows); at
// two per SM the kernel instance with the shallower reads, alone too.
struct Shape {
  int split, per_sm;
};
constexpr Shape kShapes[] = {{2, 1}, {3, 1}, {4, 1}, {5, 1}, {8, 1}, {1, 2}, {3, 2}, {4, 2}, {8, 2}};

// The bytes of the kernel's outputs in a workspace, in one host copy each.
struct Outputs {
  std::vector<std::int8_t> k;
  std::vector<float> k_scale, v_scale, v_mean;
  std::vector<std::uint8_t> vt;
  int item_claims[2] = {-1, -1};
};

class KvHeadJobBuffers : public sage::test::GpuTest, public ::testing::WithParamInterface<JobsCase> {
 protected:
  void SetUp() override {
    sage::test::GpuTest::SetUp();
    if (IsSkipped() || HasFatalFailure()) return;
    if (sm() != 90) GTEST_SKIP() << "the head-jobs kernel runs on compute capability 9.0; this GPU is sm_" << sm();
  }
};

sage::quant::PrepassProblem problem_of(const JobsCase& c, int sm_count) {
  sage::quant::PrepassProblem p;
  p.batch = c.batch, p.heads_q = c.heads, p.heads_kv = c.heads, p.nq = c.nk, p.nk = c.nk;
  p.head_dim = c.head_dim, p.head_dim_padded = kKvHeadJobsDp, p.bf16 = c.bf16;
  p.sm_scale = 1.f / std::sqrt(static_cast<float>(c.head_dim));
  p.smooth_k = c.smooth_k;
  p.q_in_attention = true, p.allow_kv_clusters = true;
  p.kv_head_jobs_max_keys = c.nk, p.sm_count = sm_count;
  return p;
}

// Dense [B, H, N, D] 16-bit rows: K with a per-channel offset (what smooth_k
// removes), V with channels of different ranges (per-channel V scales).
std::vector<std::uint16_t> make_rows(const JobsCase& c, bool v, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal;
  std::vector<float> offset(c.head_dim), range(c.head_dim);
  for (int d = 0; d < c.head_dim; ++d) {
    offset[d] = v ? 0.f : 3.f * normal(rng);
    range[d] = v ? std::exp2(static_cast<float>(d % 7) - 3.f) : 1.f;
  }
  std::vector<std::uint16_t> rows(static_cast<std::size_t>(c.batch) * c.heads * c.nk * c.head_dim);
  for (std::size_t i = 0; i < rows.size(); ++i) {
    const int d = static_cast<int>(i % c.head_dim);
    const float x = offset[d] + range[d] * normal(rng);
    rows[i] = c.bf16 ? sage::num::float_to_bf16(x) : sage::num::float_to_f16(x);
  }
  return rows;
}

// Case c's K and V rows (fresh from `seed`) on the device, its pre-pass
// problem on a device of `sms` SMs, and a workspace for it; upload() copies
// the rows once every buffer is allocated.
struct JobInputs {
  JobInputs(const JobsCase& c, int sms, std::uint64_t seed)
      : k_rows(make_rows(c, false, seed)),
        v_rows(make_rows(c, true, seed + 1)),
        dk(k_rows.size()),
        dv(v_rows.size()),
        p(problem_of(c, sms)),
        layout(sage::quant::make_prepass_layout(p)),
        ws(layout.bytes) {
    const std::int64_t stride_n = c.head_dim, stride_h = stride_n * c.nk, stride_b = stride_h * c.heads;
    k = {dk.data(), stride_b, stride_h, stride_n};
    v = {dv.data(), stride_b, stride_h, stride_n};
  }
  cudaError_t upload() {
    for (const cudaError_t allocated : {dk.status(), dv.status(), ws.status()}) {
      if (allocated != cudaSuccess) return allocated;
    }
    if (const cudaError_t e = dk.copy_from(k_rows); e != cudaSuccess) return e;
    return dv.copy_from(v_rows);
  }
  std::vector<std::uint16_t> k_rows, v_rows;
  DeviceBuffer<std::uint16_t> dk, dv;
  sage::quant::PrepassProblem p;
  sage::quant::PrepassLayout layout;
  DeviceBuffer<std::uint8_t> ws;
  sage::quant::StridedInput k{}, v{};
};

// The kernel's outputs in `ws` (carved by `layout`), downloaded.
template <class T>
void download(std::vector<T>* host, const T* device, std::size_t n) {
  host->resize(n);
  ASSERT_EQ(cudaMemcpy(host->data(), device, n * sizeof(T), cudaMemcpyDeviceToHost), cudaSuccess);
}

void download_outputs(const JobsCase& c, const sage::quant::PrepassLayout& layout, void* ws, Outputs* o) {
  const sage::quant::PrepassBuffers b = layout.carve(ws);
  const std::size_t heads = static_cast<std::size_t>(c.batch) * c.heads;
  ASSERT_NO_FATAL_FAILURE(download(&o->k, b.k, heads * c.nk * kKvHeadJobsDp));
  ASSERT_NO_FATAL_FAILURE(download(&o->k_scale, b.k_scale, heads * layout.k_groups));
  ASSERT_NO_FATAL_FAILURE(download(&o->vt, b.vt, heads * kKvHeadJobsDp * layout.nk_padded));
  ASSERT_NO_FATAL_FAILURE(download(&o->v_scale, b.v_scale, heads * kKvHeadJobsDp));
  ASSERT_NO_FATAL_FAILURE(download(&o->v_mean, b.v_mean, heads * kKvHeadJobsDp));
  ASSERT_EQ(cudaMemcpy(o->item_claims, b.item_claims, sizeof(o->item_claims), cudaMemcpyDeviceToHost), cudaSuccess);
}

// Runs the head-jobs kernel for `in.p` over its workspace poisoned with
// `poison` and downloads its outputs.
void run_jobs(const JobsCase& c, const JobInputs& in, int poison, Outputs* o) {
  void* const ws = in.ws.data();
  ASSERT_EQ(cudaMemset(ws, poison, in.layout.bytes), cudaSuccess);
  ASSERT_EQ(sage::quant::launch_kv_head_jobs(in.p, in.layout, in.layout.carve(ws), in.k, in.v, c.jobs_at_once,
                                             nullptr, false),
            cudaSuccess);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  ASSERT_NO_FATAL_FAILURE(download_outputs(c, in.layout, ws, o));
}

template <class T>
std::size_t count_differing(const std::vector<T>& a, const std::vector<T>& b) {
  std::size_t n = 0;
  for (std::size_t i = 0; i < a.size(); ++i) n += std::memcmp(&a[i], &b[i], sizeof(T)) != 0;
  return n;
}

// K of a split against one CTA per job: bit for bit without smooth_k; with
// it, scales within a few ulps and at most 0.1% of the codes one apart.
void expect_k_agrees(const JobsCase& c, const Outputs& split, const Outputs& one) {
  if (!c.smooth_k) {
    EXPECT_EQ(count_differing(split.k, one.k), 0u) << "K codes";
    EXPECT_EQ(count_differing(split.k_scale, one.k_scale), 0u) << "K scales";
    return;
  }
  std::size_t off_by_one = 0;
  for (std::size_t i = 0; i < one.k.size(); ++i) {
    const int diff = std::abs(split.k[i] - one.k[i]);
    ASSERT_LE(diff, 1) << "K code " << i << ": " << int{split.k[i]} << " against " << int{one.k[i]};
    off_by_one += diff;
  }
  EXPECT_LE(off_by_one, one.k.size() / 1000) << "K codes one apart";
  for (std::size_t g = 0; g < one.k_scale.size(); ++g) {
    ASSERT_TRUE(std::isfinite(split.k_scale[g])) << "K scale " << g;
    EXPECT_NEAR(split.k_scale[g], one.k_scale[g], 1e-5f * one.k_scale[g]) << "K scale " << g;
  }
}

// Another launch's outputs against one CTA per job: V bit for bit, K as
// expect_k_agrees, and the attention kernel's claim counters zeroed.
void expect_agrees_with_one_cta_per_job(const JobsCase& c, const Outputs& other, const Outputs& one) {
  EXPECT_EQ(other.item_claims[0], 0);
  EXPECT_EQ(other.item_claims[1], 0);
  EXPECT_EQ(count_differing(other.vt, one.vt), 0u) << "V^T codes";
  EXPECT_EQ(count_differing(other.v_scale, one.v_scale), 0u) << "V scales";
  EXPECT_EQ(count_differing(other.v_mean, one.v_mean), 0u) << "V means";
  expect_k_agrees(c, other, one);
}

TEST_P(KvHeadJobBuffers, SplitsMatchOneCtaPerJob) {
  const JobsCase& c = GetParam();
  const std::uint64_t seed = sage::test::fresh_seed();
  SCOPED_TRACE(std::string(c.name) + " " + sage::test::seed_note(seed));
  JobInputs in(c, sm_count(), seed);
  ASSERT_EQ(in.upload(), cudaSuccess);
  sage::quant::PrepassProblem& p = in.p;

  Outputs one;
  p.kv_head_job_split = 1, p.kv_head_jobs_per_sm = 1;
  ASSERT_EQ(sage::quant::kv_head_job_shape_fitting(p).ctas, 1);
  ASSERT_NO_FATAL_FAILURE(run_jobs(c, in, 0x00, &one));
  for (const auto [split, per_sm] : kShapes) {
    SCOPED_TRACE("split " + std::to_string(split) + ", " + std::to_string(per_sm) + " per SM");
    p.kv_head_job_split = split, p.kv_head_jobs_per_sm = per_sm;
    // (An H100 / H200 places clusters of up to 8 of these CTAs.)
    const sage::quant::KvHeadJobShape shape = sage::quant::kv_head_job_shape_fitting(p);
    ASSERT_EQ(shape.ctas, split) << "the device did not take the clusters";
    ASSERT_EQ(shape.per_sm, per_sm);
    Outputs first, again;
    ASSERT_NO_FATAL_FAILURE(run_jobs(c, in, 0xA5, &first));
    ASSERT_NO_FATAL_FAILURE(run_jobs(c, in, 0x5A, &again));
    expect_agrees_with_one_cta_per_job(c, first, one);
    EXPECT_EQ(count_differing(again.k, first.k) + count_differing(again.k_scale, first.k_scale) +
                  count_differing(again.vt, first.vt) + count_differing(again.v_scale, first.v_scale) +
                  count_differing(again.v_mean, first.v_mean),
              0u)
        << "a second run of the split gave other bytes";
  }
}

// The concurrent pre-pass's two launches (PrepassProblem::concurrent_heads:
// the first quarter of the heads' jobs at once, the others claimed by
// three CTAs) over a workspace of 0x01 bytes, in which every flag reads as
// raised and every counter as non-zero: the outputs as one CTA per job
// gives them, every job's flags raised (one per CTA of the first launch's
// clusters, one for each later job), the attention kernel's claim counters
// zeroed, and the job claims counted once per job and once per CTA (its
// claim past the last job).
TEST_P(KvHeadJobBuffers, ConcurrentLaunchesMatchOneCtaPerJob) {
  const JobsCase& c = GetParam();
  if (c.jobs_at_once != 0) GTEST_SKIP() << "the concurrent pre-pass runs every job (its launches choose their grids)";
  const int kv_heads = c.batch * c.heads;
  if (kv_heads < 2) GTEST_SKIP() << "one head: no second launch";
  const std::uint64_t seed = sage::test::fresh_seed();
  SCOPED_TRACE(std::string(c.name) + " " + sage::test::seed_note(seed));
  JobInputs in(c, sm_count(), seed);
  ASSERT_EQ(in.upload(), cudaSuccess);
  sage::quant::PrepassProblem& p = in.p;

  Outputs one, side;
  p.kv_head_job_split = 1, p.kv_head_jobs_per_sm = 1;
  ASSERT_NO_FATAL_FAILURE(run_jobs(c, in, 0x00, &one));
  p.kv_head_job_split = 0, p.kv_head_jobs_per_sm = 0;  // (the first launch: the rules' shape for its jobs)
  p.concurrent_heads = std::max(1, kv_heads / 4), p.concurrent_sms = 3;
  ASSERT_NO_FATAL_FAILURE(run_jobs(c, in, 0x01, &side));
  expect_agrees_with_one_cta_per_job(c, side, one);

  const int jobs = 2 * kv_heads, first_jobs = 2 * p.concurrent_heads;
  const int first_ctas = sage::quant::kv_head_job_shape_fitting(p).ctas;
  const sage::quant::PrepassBuffers b = in.layout.carve(in.ws.data());
  std::vector<int> ready;
  constexpr int kMaxCtas = sage::quant::kKvHeadJobMaxCtas;
  ASSERT_NO_FATAL_FAILURE(download(&ready, b.job_ready, static_cast<std::size_t>(jobs) * kMaxCtas));
  for (int job = 0; job < jobs; ++job) {
    const int ctas = job < first_jobs ? first_ctas : 1;
    for (int r = 0; r < ctas; ++r) EXPECT_EQ(ready[job * kMaxCtas + r], 1) << "job " << job << " CTA " << r;
  }
  int job_claims = -1;
  ASSERT_EQ(cudaMemcpy(&job_claims, b.job_claims, sizeof(int), cudaMemcpyDeviceToHost), cudaSuccess);
  EXPECT_EQ(job_claims, (jobs - first_jobs) + std::min(p.concurrent_sms, jobs - first_jobs));
}

// "Small" cases also run under compute-sanitizer (scripts/device-check.sh):
// memcheck, and racecheck and synccheck of the cluster exchange.
INSTANTIATE_TEST_SUITE_P(
    Sm90, KvHeadJobBuffers,
    ::testing::Values(
        // 3 tiles: splits 5 and 8 leave ranks without rows
        JobsCase{"Small_300keys_bf16_smoothK", 1, 3, 300, 128, true, true, 0},
        // one key, head dim padded inside the rows, fp16
        JobsCase{"Small_1key_d120_fp16", 2, 2, 1, 120, false, false, 0},
        // 12 tiles, clusters looping over jobs (3 of 8 at once)
        JobsCase{"Small_1531keys_looping", 1, 4, 1531, 128, true, false, 3},
        // the shape the split is for: 4K keys (32 jobs here)
        JobsCase{"4096keys_bf16_smoothK", 1, 16, 4096, 128, true, true, 0},
        // 17 tiles, D = 96, fp16, smoothed, clusters looping (5 at once)
        JobsCase{"2049keys_d96_fp16_looping", 2, 4, 2049, 96, false, true, 5}),
    [](const ::testing::TestParamInfo<JobsCase>& info) { return std::string(info.param.name); });

}  // namespace
