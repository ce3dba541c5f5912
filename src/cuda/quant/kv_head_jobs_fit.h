// When the pre-pass's head-jobs kernel (kv_head_jobs.cu) has the right
// number of jobs for the device: plain C++, so that the CPU tests check it.
#pragma once

namespace sage::quant {

// `jobs` (two per batch * kv head: its K and its V) on a device of `sms`
// SMs, one CTA per SM. At least 3/4 as many jobs as SMs: with fewer, the
// cluster kernel spreads each head over up to 8 CTAs, where the jobs would
// leave SMs idle. At most one job per SM: CTAs that loop over several jobs
// were neither timed nor checked against the other paths on a GPU
// (docs/perf-notes.md, session 36).
constexpr bool kv_head_jobs_fit(long long jobs, int sms) { return sms > 0 && 4 * jobs >= 3LL * sms && jobs <= sms; }

}  // namespace sage::quant
