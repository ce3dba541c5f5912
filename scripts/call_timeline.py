"""Timeline of one end-to-end sageattn call (on a GPU machine): when each CUDA runtime
call is made on the host and when each kernel runs on the GPU, relative to the start of
the Python call, from the PyTorch profiler. Shows the host time before the first
kernel, the gaps between the kernels, and the kernels' durations.

Usage: python3 scripts/call_timeline.py [N] [causal] [sage|cudnn]   (B=2, H=32, D=128, bf16;
cudnn: the same for PyTorch SDPA's cuDNN backend, the yardstick)
"""

import os
import sys

import torch
from torch.nn.attention import SDPBackend
from torch.profiler import ProfilerActivity, profile, record_function

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "bench"))
from bench_attention import method_context, sage_end_to_end, sdpa  # noqa: E402  (the benchmark's calls)


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 4096
    causal = len(sys.argv) > 2 and sys.argv[2].lower() in ("1", "true", "causal")
    method = sys.argv[3] if len(sys.argv) > 3 else "sage"
    q, k, v = [torch.randn(2, 32, n, 128, dtype=torch.bfloat16, device="cuda") for _ in range(3)]

    fn = sdpa(SDPBackend.CUDNN_ATTENTION, causal) if method == "cudnn" else sage_end_to_end(causal)
    with method_context(fn):  # (cuDNN's backend chosen once, outside the calls, as the benchmark does)
        for _ in range(20):
            fn(q, k, v)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for i in range(3):
                torch.cuda.synchronize()
                with record_function(f"call{i}"):
                    fn(q, k, v)
                torch.cuda.synchronize()
    events = [e for e in prof.events() if e.time_range.start is not None]
    calls = sorted((e for e in events if e.name.startswith("call") and e.device_type == torch.autograd.DeviceType.CPU),
                   key=lambda e: e.time_range.start)
    last = calls[-1]
    t0, t1 = last.time_range.start, last.time_range.end
    rows = []
    for e in events:
        st, en = e.time_range.start, e.time_range.end
        on_gpu = e.device_type == torch.autograd.DeviceType.CUDA
        if on_gpu and t0 <= st <= t1 + 20000 and not e.name.startswith("call"):
            rows.append((st - t0, en - st, "GPU", e.name[:70]))
        elif not on_gpu and t0 <= st <= t1 and e.name.startswith("cu") and "Synchronize" not in e.name:
            rows.append((st - t0, en - st, "host", e.name[:70]))
    print(f"{method} N={n} causal={causal}: the Python call took {t1 - t0:.1f} us on the host")
    for start, dur, where, name in sorted(rows):
        print(f"  {start:8.1f} us  +{dur:7.1f} us  {where:4s}  {name}")


if __name__ == "__main__":
    main()
