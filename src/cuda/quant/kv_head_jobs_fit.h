// When the pre-pass's head-jobs kernel (kv_head_jobs.cu) has the right
// number of jobs for the device, and over how many CTAs each job is split:
// plain C++, so that the CPU tests check it.
#pragma once

namespace sage::quant {

// `jobs` (two per batch * kv head: its K and its V) on a device of `sms`
// SMs, one CTA per SM. At least 3/4 as many jobs as SMs: with fewer, the
// cluster kernel spreads each head over up to 8 CTAs, where the jobs would
// leave SMs idle. At most one job per SM: CTAs that loop over several jobs
// were neither timed nor checked against the other paths on a GPU
// (docs/perf-notes.md, session 36).
constexpr bool kv_head_jobs_fit(long long jobs, int sms) { return sms > 0 && 4 * jobs >= 3LL * sms && jobs <= sms; }

// The most CTAs (a thread-block cluster) one head job may be split over:
// the portable cluster size.
inline constexpr int kKvHeadJobMaxCtas = 8;

// The bytes of rows that the first wave of a head-jobs grid may read before
// it reads them again: below the 50 MiB L2 of an H100 / H200, with room for
// the codes it writes meanwhile.
inline constexpr long long kKvHeadJobWaveBytes = 40LL << 20;

// The rule for the CTAs per head job, with `per_sm` head-job CTAs per SM
// (1 or 2: kv_head_job_ctas_per_sm): the fewest of 1, 2, 4 .. 4 * per_sm
// whose first wave (per_sm CTAs per SM, each reading its run of 1/ctas of a
// head's `nk` rows of `row_bytes`) reads at most kKvHeadJobWaveBytes, else
// 4 * per_sm. A job reads its rows twice, for the statistics and then for
// the codes; with one CTA per job, 128 jobs of 4K keys read 128 MiB before
// the first job reads its rows again, so both reads come from DRAM. Split 4
// ways, a wave of one CTA per SM reads ~33 MiB, and the second read hits L2
// (B=2 H=32 D=128 16-bit, one CTA per SM: 1K keys 1, 2K 2, 4K 4; two per
// SM at 4K: 8). The sm90 dispatch takes this rule; what it saves is small
// (H200: the pre-pass's share of a call 0 to 4 us lower at 2K-4K, since
// the kernel is not bound by its DRAM reads; docs/perf-notes.md, session 51).
constexpr int kv_head_job_split(long long jobs, long long nk, int sms, int row_bytes, int per_sm = 1) {
  const int most = 4 * per_sm;
  const long long slots = static_cast<long long>(per_sm) * sms;
  for (int ctas = 1; ctas < most; ctas *= 2) {
    const long long wave = jobs * ctas < slots ? jobs * ctas : slots;
    if (wave * ((nk + ctas - 1) / ctas) * row_bytes <= kKvHeadJobWaveBytes) return ctas;
  }
  return most;
}

// The rule for the head-job CTAs per SM: 2 (64 registers each, twice the
// warps per SM) for the longest heads, those that one CTA per SM splits 4
// ways (2483 to 4096 keys at D = 128 for B=2 H=32), else 1 (123 registers,
// the statistics read 8-16 rows deep per thread). The kernel is bound by its
// own latencies, loads and barriers, with 16 warps per SM (docs/perf-notes.md,
// session 52). H200, GPU time of whole calls (B=2 H=32 D=128, interleaved
// rounds, two A/B runs): 4K keys, two per SM over 8-CTA clusters against
// one per SM over 4, calls -1.1% and -1.0% (the pre-pass's share 79.7 ->
// 73.0 us and 85.4 -> 84.1), causal -1.0% (86.9 -> 80.3); ncu, the kernel
// alone: 91.5 -> 87.2 us. Two per SM at 1K and 2K keys: calls -1.4% to
// +1.1% (+11.8% at 1K over 8-CTA clusters), so not there.
constexpr int kv_head_job_ctas_per_sm(long long jobs, long long nk, int sms, int row_bytes) {
  return kv_head_job_split(jobs, nk, sms, row_bytes, 1) == 4 ? 2 : 1;
}

// How the head-jobs kernel runs a call's jobs: CTAs per job (a cluster
// where > 1) and resident per SM; {0, 0} where the call takes another path.
struct KvHeadJobShape {
  int ctas = 0;
  int per_sm = 0;
};

// The shape asked for `jobs` jobs of `nk` rows of `row_bytes` on `sms` SMs:
// `per_sm` CTAs per SM (at most 2; 0: kv_head_job_ctas_per_sm) and `split`
// CTAs per job (at most kKvHeadJobMaxCtas; 0: kv_head_job_split for that
// many per SM). (Whether the device places such clusters is the launch's
// question: kv_head_job_shape_fitting, prepass.h.)
constexpr KvHeadJobShape kv_head_job_shape(long long jobs, long long nk, int sms, int row_bytes, int split = 0,
                                           int per_sm = 0) {
  const int resident = per_sm > 0 ? (per_sm < 2 ? per_sm : 2) : kv_head_job_ctas_per_sm(jobs, nk, sms, row_bytes);
  const int ctas = split > 0 ? (split < kKvHeadJobMaxCtas ? split : kKvHeadJobMaxCtas)
                             : kv_head_job_split(jobs, nk, sms, row_bytes, resident);
  return {ctas, resident};
}

}  // namespace sage::quant
