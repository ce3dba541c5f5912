// Host side of the SageAttention2 Hopper path: which calls it runs, how much
// workspace it needs, and running one (pre-pass + attention kernel).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "cuda/device_info.h"
#include "cuda/quant/kv_head_jobs_fit.h"
#include "sage/attention.h"

namespace sage::sm90 {

// Empty when the sm90 kernel runs these options' method and formats:
// SageAttention2 with INT8 Q K^T, FP8 E4M3 P V and two-level accumulation
// (its other formats run on the mma.sync kernels); otherwise the reason.
// Inline: the host path picks the geometry it emulates by the same rule in
// builds without sm90 code (detail::emulated_geometry).
inline std::string unsupported_format_reason(const AttentionOptions& o) {
  if (o.method != Method::sage2) return std::string("method ") + method_name(o.method) + " has no sm90 kernel yet";
  if (o.qk_format != QKFormat::int8) return "qk_format int4 runs on the mma.sync kernels (wgmma has no INT4)";
  if (o.pv_format != PVFormat::fp8_e4m3) {
    return std::string("pv_format ") + pv_format_name(o.pv_format) + " has no sm90 kernel yet (use fp8-e4m3)";
  }
  if (o.pv_accum != PVAccum::two_level) return "pv_accum fp32 has no sm90 kernel (FP8 MMAs use two_level)";
  return {};
}

// Empty when the sm90 kernel can run these options and head dim; otherwise
// the reason (the caller returns it as not_implemented).
std::string unsupported_reason(const AttentionOptions& options, std::int64_t head_dim);

// The longest key sequences of the D = 128 causal calls whose kernel
// quantizes Q with two consumers (their steps run on across items) instead
// of three: GPU time of whole calls, three against two (H200, B=2 H=32,
// docs/perf-notes.md, session 29): causal +4.4% at 1K keys, -3.9% at 2K,
// -4.2% at 4K (non-causal -5.3% at 1K, -3.2% at 2K: always three there).
// Between 1K and 2K not measured.
inline constexpr std::int64_t kMaxKeysTwoConsumersD128Causal = 1024;

// The longest heads whose K and V the pre-pass's cluster kernel streams
// (quant::PrepassProblem::kv_stream_max_keys: rows read twice, the second
// time meant to come from L2; the heads it holds whole in shared memory reach
// 2048 keys at D = 128, 4096 at D = 64). H200, GPU time of whole calls against
// the statistics kernel + K/V jobs (docs/perf-notes.md, session 21): D = 128
// -0.3..-0.8% at 4K, -0.4..-1.9% at 8K, 0..-0.6% at 16K; D = 64 -0.4..-0.6% at
// 8K-16K. Past 16384 keys not measured. SAGE_PREPASS_KV_STREAM_KEYS overrides
// it (read per call; 0: held heads only).
inline constexpr int kKvStreamMaxKeys = 16384;
// The longest heads whose K and V the pre-pass's head-jobs kernel takes
// (quant::kv_head_jobs_path: one job per head's K or V, where there are
// jobs for about every SM) instead of the cluster kernel. H200, GPU time of
// whole calls against the cluster kernel, D = 128, B=2 H=32, 3 interleaved
// rounds (docs/perf-notes.md, session 36): 1K keys -2.8%, causal -7.3%; 2K
// -1.7%, causal -1.5%; 4K -0.6%, causal -0.4% (every round lower): the gain
// shrinks with the heads' length (the second read of a head, meant to hit
// L2, competes with a whole wave of heads: 128 MB of rows at 4K keys). Past
// 4K not measured.
// SAGE_PREPASS_KV_HEAD_JOBS_KEYS overrides it (read per call; 0: never).
inline constexpr int kKvHeadJobsMaxKeys = 4096;
// Where the head jobs run as the concurrent pre-pass
// (quant::PrepassProblem::concurrent_heads): the first
// kConcurrentPrepassFirstHeads (batch * kv head)s' jobs on the whole GPU,
// the others' on 2 of every 11 SMs beside the attention kernel, which waits
// for each head's flags instead of for the grids. Non-causal D = 128 calls
// whose Q the kernel quantizes, on the head-jobs path (up to
// kKvHeadJobsMaxKeys keys, about a job per SM), with more than
// kConcurrentPrepassMinKeys keys. H100, GPU time of whole calls against
// the head jobs all at once, B=2 H=32 D=128, 3 interleaved rounds
// (docs/perf-notes.md, sessions 59-60), 4 heads first and 24 SMs: 3200
// keys -3.4%, 3584 -3.9%, 4096 -1.9..-2.6% (16 SMs -2.8%, 32 -2.2%; 2
// heads first -2.1%, 6-8 heads -1.8..-2.2%, 16 -0.8%); session 61, the
// same shape against it off: 3072 keys -2.6%, 2816 -1.8%, 2560 -1.2%, 2304
// -0.4% (within noise: the bound); 2048 with 8 or 16 heads first
// +1.1..+4.3% (the first launch's latency, one job's, is most of the
// pre-pass there).
// SAGE_PREPASS_CONCURRENT=H:P forces H heads first and P SMs wherever a call
// can take it, =0 turns it off (read per call).
inline constexpr int kConcurrentPrepassFirstHeads = 4;
inline constexpr int kConcurrentPrepassMinKeys = 2304;

// Whether the attention kernel quantizes the call's Q itself (the pre-pass
// then skips Q): per-warp or per-thread groups, no smooth_q, no LSE
// correction, Q rows TMA can read and out not sharing Q's memory, and
// SAGE_SM90_Q_PREPASS not "1". At any length: each work item pays for
// quantizing its Q tile, and the pre-pass skips reading the 16-bit Q and
// writing its codes, both in proportion to the query rows. (At D = 128 this
// had length limits while two consumers with two 16-bit Q buffers paid more
// than the pre-pass saved: +1.9% at 4K keys, session 14. With three
// consumers, H200, B=2 H=32, GPU time of whole calls against the pre-pass's
// Q, docs/perf-notes.md, sessions 29-30: -2.6% at 4K keys, -1.3% at 8K,
// -0.7% at 16K, -0.3% at 32K; causal -1.9% at 8K, -0.6% at 16K, -0.4% at
// 32K; the kernel alone 0.3-2.5% slower.)
// Tests use it to know which path a call takes.
bool quantizes_q_in_kernel(const AttentionArgs& args, const AttentionOptions& options);

// Whether the pre-pass quantizes the call's K and V with its cluster kernel
// (quant::kv_quantized_in_clusters: each head's rows read by one cluster, no
// statistics kernel) on the current device, unless SAGE_PREPASS_KV_CLUSTERS
// is "0" (the two-kernel path everywhere: A/B timing in one build, and the
// tests' comparison of the paths; read per call). Tests use it to know which
// path a call takes. sm_count: the device's.
bool quantizes_kv_in_clusters(const AttentionArgs& args, const AttentionOptions& options, int sm_count);

// The CTAs per job and per SM with which the pre-pass's head-jobs kernel
// quantizes the call's K and V (kKvHeadJobsMaxKeys; it comes before the
// cluster kernel; SAGE_PREPASS_KV_HEAD_JOB_SPLIT,
// SAGE_PREPASS_KV_HEAD_JOBS_PER_SM) on the current device of sm_count SMs,
// or {0, 0} where another path does.
quant::KvHeadJobShape kv_head_job_shape(const AttentionArgs& args, const AttentionOptions& options, int sm_count);

// Whether the kernel's epilogue writes the output by TMA (a 16-byte aligned
// start and strides, head_dim a multiple of 8) rather than from its
// threads' registers. Tests use it to know which path a call takes.
bool stores_output_by_tma(const AttentionArgs& args, const AttentionOptions& options);

// Whether a causal call on a device of `sm_count` SMs claims its work items
// from a counter instead of taking static rounds (causal_schedule: static
// rounds would balance badly, on a persistent grid of more than two rounds;
// SAGE_SM90_CLAIMS=1 or 0 forces it; read per call). Tests use it to know
// which path a call takes.
bool claims_work_items(const AttentionArgs& args, const AttentionOptions& options, int sm_count);

// The heads whose K and V jobs run first, on the whole GPU, where a call on
// a device of `sm_count` SMs takes the concurrent pre-pass
// (kConcurrentPrepassFirstHeads; SAGE_PREPASS_CONCURRENT, read per call);
// 0 where it does not. Tests use it to know the path.
int concurrent_prepass_heads(const AttentionArgs& args, const AttentionOptions& options, int sm_count);

std::size_t workspace_bytes(const AttentionArgs& args, const AttentionOptions& options);

// Runs a validated, supported call on the current device (`device`: its
// properties, from the dispatch), asynchronously on `stream`. kernel_only
// skips the pre-pass (benchmarks: the workspace already holds this call's
// quantized inputs, from a full call under the same SAGE_SM90_Q_PREPASS; a
// kernel that quantizes Q itself times that work too).
Status run(const AttentionArgs& args, const AttentionOptions& options, const cuda::DeviceInfo& device,
           void* workspace, Stream stream, bool kernel_only = false);

}  // namespace sage::sm90
