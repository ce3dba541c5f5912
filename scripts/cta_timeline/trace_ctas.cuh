// The per-CTA timeline build's records (scripts/cta_timeline/apply.py copies
// this into src/cuda/common/ of a copy of the tree; never part of the
// library): 8 words a record (kind, CTA, SM, then five values, the last
// two packed into one word) appended to a device array of each translation
// unit that includes it, read back and cleared by the sage_trace_dump_*
// function that unit defines (SAGE_TRACE_DUMP_FN; test_trace_timeline.cpp).
#pragma once
#include <cuda_runtime.h>
namespace {
constexpr unsigned kTraceRecords = 1u << 14;
__device__ unsigned long long g_trace[kTraceRecords * 8];
__device__ unsigned int g_trace_n;
__device__ __forceinline__ unsigned long long trace_now() {
  unsigned long long t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}
__device__ __forceinline__ unsigned long long trace_smid() {
  unsigned s;
  asm volatile("mov.u32 %0, %%smid;" : "=r"(s));
  return s;
}
__device__ __forceinline__ void trace_record(unsigned long long type, unsigned long long a, unsigned long long b,
                                             unsigned long long c, unsigned long long d, unsigned long long e,
                                             unsigned long long f) {
  const unsigned i = atomicAdd(&g_trace_n, 1u);
  if (i >= kTraceRecords) return;
  unsigned long long* r = g_trace + 8ull * i;
  r[0] = type; r[1] = blockIdx.x; r[2] = trace_smid(); r[3] = a; r[4] = b; r[5] = c; r[6] = d; r[7] = e + (f << 32);
}
}  // namespace
#define SAGE_TRACE_DUMP_FN(name)                                                              \
  extern "C" int name(unsigned long long* dst, int max_records) {                             \
    unsigned n = 0;                                                                           \
    cudaDeviceSynchronize();                                                                  \
    cudaMemcpyFromSymbol(&n, g_trace_n, sizeof n);                                            \
    if (n > kTraceRecords) n = kTraceRecords;                                                 \
    if (static_cast<int>(n) > max_records) n = max_records;                                   \
    if (n) cudaMemcpyFromSymbol(dst, g_trace, 8ull * n * sizeof(unsigned long long));        \
    const unsigned zero = 0;                                                                  \
    cudaMemcpyToSymbol(g_trace_n, &zero, sizeof zero);                                        \
    return static_cast<int>(n);                                                               \
  }
