#!/usr/bin/env python3
"""Turns a copy of the source tree into the per-CTA timeline build (a diagnostic; never in src/).

Run in the root of a copy (scripts/cta_timeline/run.sh makes one): the attention kernel records, per
item, when its producer started it and how long it waited for its head's flags, and per CTA its
start and its consumers' ends; the head-jobs kernel records each CTA's start and end and each job's
start and end and the end of its statistics read. Records are 64-byte rows (trace_ctas.cuh: global
timer, SM id) appended to a device array of each instrumented translation unit; the GPU test
TraceTimeline.Calls (test_trace_timeline.cpp, skipped unless SAGE_TRACE_N is set) runs 8 calls of
B=2 H=32 N D=128 bf16 through the C++ API and prints the records of each. The records cost each item
a few instructions in the producer thread (the claims build then spills 40 more bytes): the traced
4K call took 680-692 us on an H100, as the untraced one does in GPU time (session 62).

  python3 scripts/cta_timeline/apply.py      (in the copy's root; the kit's files come from here)
"""
import os
import shutil

KIT = os.path.dirname(os.path.abspath(__file__))


def edit(f, pairs):
    """Replaces each `a` of pairs, which must occur once in file f, by its `b`."""
    s = open(f).read()
    for a, b in pairs:
        if s.count(a) != 1:
            raise SystemExit(f"cta_timeline/apply.py: {f} no longer has this text once ({s.count(a)} times); "
                             f"update the kit's edit:\n{a}")
        s = s.replace(a, b)
    open(f, 'w').write(s)


edit('src/cuda/sm90/qk_int8_pv_fp8_sm90_fwd.cuh', [
('''    if constexpr (T::kBesideConcurrentPrepass) wait_for_kv_head(p, w.bh_kv);
    const int64_t factors_at''', '''    const unsigned long long t_a = trace_now();
    if constexpr (T::kBesideConcurrentPrepass) wait_for_kv_head(p, w.bh_kv);
    trace_record(1, j, w.bh, w.first_row + (static_cast<unsigned long long>(w.rows) << 32), w.n_tiles, t_a,
                 trace_now() - t_a);
    const int64_t factors_at'''),
('''  extern __shared__ uint8_t smem_raw[];
  // TMA swizzled''', '''  const unsigned long long t_entry = trace_now();
  extern __shared__ uint8_t smem_raw[];
  // TMA swizzled'''),
('''    if (threadIdx.x == 0) produce<T>(p, s);''', '''    if (threadIdx.x == 0) {
      produce<T>(p, s);
      trace_record(2, t_entry, trace_now(), 0, 0, 0, 0);
    }'''),
('''    consume<T>(p, s, warpgroup - 1);
''', '''    consume<T>(p, s, warpgroup - 1);
    if (threadIdx.x % 128 == 0) trace_record(3, warpgroup - 1, trace_now(), 0, 0, 0, 0);
'''),
('#pragma once\n', '#pragma once\n#include "cuda/common/trace_ctas.cuh"\n'),
])
edit('src/cuda/quant/kv_head_jobs.cu', [
('''  const int jobs = 2 * p.batch * p.heads_kv;
  const int tiles = (p.nk + kTileRows - 1) / kTileRows;
  const JobCtas''', '''  const unsigned long long t_entry = trace_now();
  const int jobs = 2 * p.batch * p.heads_kv;
  const int tiles = (p.nk + kTileRows - 1) / kTileRows;
  const JobCtas'''),
('''    const bool v_job = job % 2 == 1;
''', '''    const bool v_job = job % 2 == 1;
    const unsigned long long t_job = trace_now();
'''),
('''    head_statistics<kPerSm, T>(p, out, rows, bh, v_job, job_ctas, s);
''', '''    head_statistics<kPerSm, T>(p, out, rows, bh, v_job, job_ctas, s);
    const unsigned long long t_stats = trace_now();
'''),
('''    if (launch.publishes() && threadIdx.x == 0) {''', '''    if (threadIdx.x == 0) trace_record(5, launch.claims ? 1 : 0, job, t_job, trace_now(), job_ctas.rank, t_stats);
    if (launch.publishes() && threadIdx.x == 0) {'''),
('''  pdl::wait_for_prerequisites();
#endif
}''', '''  if (threadIdx.x == 0) trace_record(4, launch.claims ? 1 : 0, t_entry, trace_now(), 0, 0, 0);
  pdl::wait_for_prerequisites();
#endif
}'''),
('#include <cuda_bf16.h>', '#include <cuda_bf16.h>\n#include "cuda/common/trace_ctas.cuh"'),
])
for f, name in (('src/cuda/sm90/qk_int8_pv_fp8_sm90_hdim128_claims.cu', 'claims'),
                ('src/cuda/sm90/qk_int8_pv_fp8_sm90_hdim128.cu', 'plain'),
                ('src/cuda/quant/kv_head_jobs.cu', 'jobs')):
    s = open(f).read().rstrip('\n') + f'\nSAGE_TRACE_DUMP_FN(sage_trace_dump_{name})\n'
    open(f, 'w').write(s)
shutil.copy(os.path.join(KIT, 'trace_ctas.cuh'), 'src/cuda/common/')
shutil.copy(os.path.join(KIT, 'test_trace_timeline.cpp'), 'tests/gpu/')
