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

// The rule for the CTAs per head job: the fewest of 1, 2 and 4 whose first
// wave (one CTA per SM, each reading its run of 1/ctas of a head's `nk`
// rows of `row_bytes`) reads at most kKvHeadJobWaveBytes, else 4. A job
// reads its rows twice, for the statistics and then for the codes; with one
// CTA per job, 128 jobs of 4K keys read 128 MiB before the first job reads
// its rows again, so both reads come from DRAM. Split 4 ways, a wave reads
// ~33 MiB, and the second read hits L2 (B=2 H=32 D=128 16-bit: 1K keys 1,
// 2K 2, 4K 4). The sm90 dispatch takes this rule; what it saves is small
// (H200: the pre-pass's share of a call 0 to 4 us lower at 2K-4K, since
// the kernel is not bound by its DRAM reads; docs/perf-notes.md, session 51).
constexpr int kv_head_job_split(long long jobs, long long nk, int sms, int row_bytes) {
  for (int ctas = 1; ctas < 4; ctas *= 2) {
    const long long wave = jobs * ctas < sms ? jobs * ctas : sms;
    if (wave * ((nk + ctas - 1) / ctas) * row_bytes <= kKvHeadJobWaveBytes) return ctas;
  }
  return 4;
}

}  // namespace sage::quant
