"""DRAM traffic of whole calls (on a GPU machine, under ncu's range replay).

ncu's kernel replay serializes the kernels of a call and flushes L2 between them, so it cannot
show whether the pre-pass's quantize jobs read K and V back from L2 while the statistics kernel
still runs. Range replay measures a span of launches as a whole (whether it keeps programmatic
launches overlapping as a plain run does was not checked). This script marks three spans with
cudaProfilerStart / cudaProfilerStop, each after a warm-up outside it:
  1. one sageattn call (pre-pass kernels + attention kernel),
  2. the attention kernel alone (on inputs the pre-pass already quantized),
  3. PyTorch SDPA's cuDNN backend (the yardstick's traffic).
Run it as

  ncu --replay-mode app-range --cache-control all --clock-control none \
      --metrics gpu__time_duration.sum,dram__bytes_read.sum,dram__bytes_write.sum,lts__t_sector_hit_rate.pct \
      python3 scripts/range_bytes.py [N] [causal]          (B=2, H=32, D=128, bf16)

and read the pre-pass's traffic as span 1 minus span 2 (approximately: span 2 starts from a
flushed L2, while inside a call the kernel may find the codes still in L2). Writes are undercounted:
a span ends with dirty lines still in L2. Without L2 reuse the two-kernel pre-pass reads K and V
twice (and Q once where it quantizes Q) and writes their codes.
"""

import os
import sys

import torch
from torch.nn.attention import SDPBackend

import sage_attention as s

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "bench"))
from bench_attention import method_context, sage_kernel_only, sdpa  # noqa: E402  (the benchmark's calls)


def measured(label, fn):
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    torch.cuda.profiler.start()
    fn()
    torch.cuda.synchronize()
    torch.cuda.profiler.stop()
    print(f"span: {label}", flush=True)


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 4096
    causal = len(sys.argv) > 2 and sys.argv[2].lower() in ("1", "true", "causal")
    q, k, v = [torch.randn(2, 32, n, 128, dtype=torch.bfloat16, device="cuda") for _ in range(3)]
    mb = q.numel() * q.element_size() / 1e6
    print(f"N={n} causal={int(causal)}: Q, K, V {mb:.1f} MB each (bf16); a pre-pass without L2 reuse reads "
          f"{4 * mb:.0f} MB and writes {mb:.0f} MB of K and V codes (with Q jobs: {5 * mb:.0f} / {1.5 * mb:.0f} MB); "
          f"one read of K and V: {2 * mb:.0f} MB", flush=True)
    measured("sage call", lambda: s.sageattn(q, k, v, is_causal=causal))
    kernel = sage_kernel_only([(q, k, v)], causal)
    measured("sage kernel only", lambda: kernel(q, k, v))

    cudnn = sdpa(SDPBackend.CUDNN_ATTENTION, causal)
    with method_context(cudnn):  # (its backend chosen once, outside the profiled range)
        measured("sdpa cudnn", lambda: cudnn(q, k, v))


if __name__ == "__main__":
    main()
