// Device probe (a timing experiment, not a test): how many instructions per
// SM and unit of time do the sm90 consumers' softmax instructions deliver,
// alone?
//
// Why (docs/perf-notes.md, session 67): the softmax turns each int32 score
// into an FP8 P with a conversion, an FMA, an exp2 (MUFU) and half of an
// E4M3 pair conversion. Whether a cheaper form pays depends on which pipe
// each piece runs on: e.g. packed half exp2 (`ex2.approx.f16x2`) halves the
// instructions only if its MUFU ops are twice as fast as the fp32 ones, and
// replacing the exp2 by FMA-pipe arithmetic pays only if MUFU, not issue,
// bounds the loop. Each kernel below runs 8 independent chains of one
// instruction (plus at most a few ALU ops that keep its input in range) in
// every thread of one full wave of 512-thread CTAs (as many per SM as fit),
// long enough that the chains' latency is hidden and the instruction's pipe
// (or the issue slot, for full-rate ones) sets the rate.
//
// Usage: sage_softmax_pipes_probe   (prints one line per instruction: its
// rate per SM and ns of wall time; over the SM clock in MHz / 1000, e.g.
// from nvidia-smi --query-gpu=clocks.sm beside it, that is the rate per
// clock. ncu's sm__inst_executed_pipe_*.sum over it says which pipe each
// one runs on: docs/perf-notes.md, session 68.)
#include <cuda_runtime.h>

#include <cstdint>
#include <cstdio>

namespace probe {

constexpr int kIters = 4096;
constexpr int kChains = 8;
constexpr int kThreads = 512;

enum class Op { kEx2F32, kEx2F16x2, kEx2Bf16x2, kE4m3x2FromF32, kE4m3x2FromF16x2, kF16x2FromF32, kF32FromS32, kPrmt, kFfma };

// One step of chain value x through op; the masks keep exp2's inputs in
// (-1, -0.5] and the conversions' inputs finite.
template <Op op>
__device__ __forceinline__ uint32_t step(uint32_t x) {
  uint32_t r;
  if constexpr (op == Op::kEx2F32) {
    float f = __uint_as_float((x & 0x007fffffu) | 0xbf000000u);
    asm volatile("ex2.approx.ftz.f32 %0, %1;" : "=f"(f) : "f"(f));
    r = __float_as_uint(f);
  } else if constexpr (op == Op::kEx2F16x2) {
    asm volatile("ex2.approx.f16x2 %0, %1;" : "=r"(r) : "r"((x & 0x03ff03ffu) | 0xb800b800u));
  } else if constexpr (op == Op::kEx2Bf16x2) {
    asm volatile("ex2.approx.ftz.bf16x2 %0, %1;" : "=r"(r) : "r"((x & 0x007f007fu) | 0xbf00bf00u));
  } else if constexpr (op == Op::kE4m3x2FromF32) {
    uint16_t pair;
    asm volatile("cvt.rn.satfinite.e4m3x2.f32 %0, %1, %2;"
                 : "=h"(pair)
                 : "f"(__uint_as_float(x & 0x3fffffffu)), "f"(__uint_as_float((x >> 1) & 0x3fffffffu)));
    r = x ^ pair;
  } else if constexpr (op == Op::kE4m3x2FromF16x2) {
    uint16_t pair;
    asm volatile("cvt.rn.satfinite.e4m3x2.f16x2 %0, %1;" : "=h"(pair) : "r"(x & 0x3bff3bffu));
    r = x ^ pair;
  } else if constexpr (op == Op::kF16x2FromF32) {
    const float f = __uint_as_float(x & 0x3fffffffu);
    asm volatile("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(f), "f"(f));
  } else if constexpr (op == Op::kF32FromS32) {
    float f;
    asm volatile("cvt.rn.f32.s32 %0, %1;" : "=f"(f) : "r"(x));
    r = __float_as_uint(f);
  } else if constexpr (op == Op::kPrmt) {
    asm volatile("prmt.b32 %0, %1, %2, 0x5410;" : "=r"(r) : "r"(x), "r"(x + 1));
  } else {
    float f = __uint_as_float(x);
    asm volatile("fma.rn.f32 %0, %1, %1, %1;" : "=f"(f) : "f"(f));
    r = __float_as_uint(f);
  }
  return r;
}

// out keeps the chains live.
template <Op op>
__global__ void __launch_bounds__(kThreads) pipe_kernel(uint32_t* out) {
  uint32_t v[kChains];
  for (int c = 0; c < kChains; ++c) v[c] = 0x3c003c00u ^ (threadIdx.x * 7u + c);
#pragma unroll 1
  for (int i = 0; i < kIters; ++i) {
#pragma unroll
    for (int c = 0; c < kChains; ++c) v[c] = step<op>(v[c]);
  }
  uint32_t acc = 0;
  for (int c = 0; c < kChains; ++c) acc ^= v[c];
  out[blockIdx.x * kThreads + threadIdx.x] = acc;
}

// Instructions (per thread, one PTX instruction each; the packed ones make
// two results) per SM and nanosecond of the kernel's wall time (CUDA
// events): the grid is one wave of `per_sm` CTAs on every SM, so an SM
// executes per_sm * kThreads * kIters * kChains of them. (Not per clock64
// cycle of each CTA, which the first form also reported: that scale read up
// to ~1.6x above what the wall time and the SM clock give, e.g. 25
// exponentials per clock and SM against the MUFU's 16; docs/perf-notes.md,
// sessions 67-68.) 0 if the kernel did not run.
template <Op op>
double instructions_per_sm_ns(int sms) {
  int per_sm = 0;
  cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, pipe_kernel<op>, kThreads, 0);
  if (per_sm < 1) return 0.0;
  const int ctas = sms * per_sm;
  uint32_t* out = nullptr;
  if (cudaMalloc(&out, sizeof(uint32_t) * ctas * kThreads) != cudaSuccess) return 0.0;
  const double per_sm_instructions = static_cast<double>(per_sm) * kThreads * kIters * kChains;
  cudaEvent_t start, stop;
  cudaEventCreate(&start);
  cudaEventCreate(&stop);
  double rate = 0.0;
  for (int run = 0; run < 3; ++run) {  // the first runs warm up (and raise the clock)
    cudaEventRecord(start);
    pipe_kernel<op><<<ctas, kThreads>>>(out);
    cudaEventRecord(stop);
    if (cudaEventSynchronize(stop) != cudaSuccess) {
      rate = 0.0;
      break;
    }
    float ms = 0.f;
    cudaEventElapsedTime(&ms, start, stop);
    rate = per_sm_instructions / (ms * 1e6);
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  cudaFree(out);
  return rate;
}

}  // namespace probe

int main() {
  using probe::Op;
  int sms = 0;
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0);
  cudaDeviceProp prop{};
  cudaGetDeviceProperties(&prop, 0);
  std::printf("%s, %d SMs: instructions per SM and ns (a packed one makes two results)\n", prop.name, sms);
  struct Row {
    const char* name;
    double (*run)(int);
  };
  const Row rows[] = {
      {"ex2.approx.ftz.f32", probe::instructions_per_sm_ns<Op::kEx2F32>},
      {"ex2.approx.f16x2", probe::instructions_per_sm_ns<Op::kEx2F16x2>},
      {"ex2.approx.ftz.bf16x2", probe::instructions_per_sm_ns<Op::kEx2Bf16x2>},
      {"cvt.rn.satfinite.e4m3x2.f32", probe::instructions_per_sm_ns<Op::kE4m3x2FromF32>},
      {"cvt.rn.satfinite.e4m3x2.f16x2", probe::instructions_per_sm_ns<Op::kE4m3x2FromF16x2>},
      {"cvt.rn.f16x2.f32", probe::instructions_per_sm_ns<Op::kF16x2FromF32>},
      {"cvt.rn.f32.s32", probe::instructions_per_sm_ns<Op::kF32FromS32>},
      {"prmt.b32", probe::instructions_per_sm_ns<Op::kPrmt>},
      {"fma.rn.f32", probe::instructions_per_sm_ns<Op::kFfma>},
  };
  for (const Row& row : rows) {
    std::printf("  %-30s %7.2f\n", row.name, row.run(sms));
  }
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) {
    std::printf("CUDA error: %s\n", cudaGetErrorString(err));
    return 1;
  }
  return 0;
}
