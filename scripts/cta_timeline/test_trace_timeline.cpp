// The per-CTA timeline build's driver (scripts/cta_timeline/apply.py copies
// it into tests/gpu/ of a copy of the tree): with SAGE_TRACE_N set, 8 calls
// of B=2 H=32 N D=128 bf16 (non-causal, default options) through the C++
// API, each followed by the records of the head-jobs kernel and of the two
// D=128 attention builds, printed as "REC <unit> <call> <8 words>"
// (scripts/cta_timeline/analyze.py reads them). Skipped otherwise.
#include <cstdio>
#include <cstdlib>
#include <cstdint>
#include <cstring>
#include <vector>

#include "gpu_test_util.h"
#include "sage/attention.h"

extern "C" int sage_trace_dump_jobs(unsigned long long*, int);
extern "C" int sage_trace_dump_claims(unsigned long long*, int);
extern "C" int sage_trace_dump_plain(unsigned long long*, int);

namespace {
void dump(const char* what, int call, int (*fn)(unsigned long long*, int)) {
  std::vector<unsigned long long> r(8u << 14);
  const int n = fn(r.data(), 1 << 14);
  for (int i = 0; i < n; ++i) {
    const unsigned long long* x = &r[8ull * i];
    std::printf("REC %s %d %llu %llu %llu %llu %llu %llu %llu %llu\n", what, call, x[0], x[1], x[2], x[3], x[4], x[5],
                x[6], x[7]);
  }
}
}  // namespace

TEST(TraceTimeline, Calls) {
  SAGE_SKIP_IF_NO_GPU();
  const char* run = std::getenv("SAGE_TRACE_N");
  if (!run) GTEST_SKIP() << "set SAGE_TRACE_N";
  const int64_t B = 2, H = 32, N = std::atoll(run), D = 128;
  const int64_t elems = B * H * N * D;
  std::vector<uint16_t> host(elems);
  uint32_t x = 12345;
  for (auto& h : host) {
    x = x * 1664525u + 1013904223u;
    const float f = ((x >> 9) & 0xffff) / 32768.0f - 1.0f;
    uint32_t bits;
    std::memcpy(&bits, &f, 4);
    h = static_cast<uint16_t>(bits >> 16);
  }
  sage::test::DeviceBuffer<uint16_t> q(elems), k(elems), v(elems), o(elems);
  SAGE_CUDA_CHECK(q.copy_from(host));
  SAGE_CUDA_CHECK(k.copy_from(host));
  SAGE_CUDA_CHECK(v.copy_from(host));
  sage::AttentionArgs args;
  args.q = sage::make_contiguous_view(q.data(), sage::DType::bf16, {B, H, N, D}, 0);
  args.k = sage::make_contiguous_view(k.data(), sage::DType::bf16, {B, H, N, D}, 0);
  args.v = sage::make_contiguous_view(v.data(), sage::DType::bf16, {B, H, N, D}, 0);
  args.out = sage::make_contiguous_view(o.data(), sage::DType::bf16, {B, H, N, D}, 0);
  sage::AttentionOptions options;
  std::size_t bytes = 0;
  ASSERT_TRUE(sage::attention_workspace_size(args, options, &bytes).is_ok());
  sage::test::DeviceBuffer<uint8_t> ws(bytes);
  for (int call = 0; call < 8; ++call) {
    ASSERT_TRUE(sage::attention_forward(args, options, ws.data(), bytes, nullptr).is_ok());
    SAGE_CUDA_CHECK(cudaDeviceSynchronize());
    dump("jobs", call, sage_trace_dump_jobs);
    dump("claims", call, sage_trace_dump_claims);
    dump("plain", call, sage_trace_dump_plain);
  }
}
