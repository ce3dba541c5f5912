#!/usr/bin/env python3
"""What choosing SDPA's backend inside every call costs a one-call-at-a-time timing (on a GPU machine).

`with sdpa_kernel(backend): scaled_dot_product_attention(...)` runs the context manager's Python
(it reads and sets every backend's flag, then restores them) around each call. A benchmark that
times such calls one at a time from an idle GPU counts that Python inside SDPA's figure, which the
benchmark did until session 72 (it now enters the context once around a method's calls:
bench_attention.sdpa). Each case is timed as scripts/host_exposure.py times a call: from an idle
GPU, and with a ~300 us spin kernel queued before the start event (the GPU time alone); the
difference is the host time inside the figure ("exposed"). Unlike host_exposure.py it calls one
input set over and over (L2 warmer than the benchmark's rotating sets). B=2 H=32 D=128 bf16,
non-causal. The cases run one after another, so the GPU-time side drifts between them (at 4K by
~20-30 us of cuDNN's ~830): compare the 1K cases, or the from-idle figures.

  PYTHONPATH=build-dev/python/pkg python3 scripts/sdpa_context_cost.py [--sizes 1024,4096] [--calls 60]
"""
import argparse
import contextlib
import os
import statistics
import sys
import time

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "bench"))
from bench_attention import input_sets, sage_end_to_end  # noqa: E402  (the benchmark's own call)


def span_us(fn, hold_cycles):
    """(CUDA-event span, host time until fn returns) of one call, from an idle GPU or held busy."""
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    if hold_cycles:
        torch.cuda._sleep(hold_cycles)
    start.record()
    t0 = time.perf_counter()
    fn()
    t1 = time.perf_counter()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) * 1e3, (t1 - t0) * 1e6


def cases(q, k, v):
    """(name, backend to choose once around the calls or None, call)."""
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def chosen_per_call(backend):
        def call():
            with sdpa_kernel(backend):
                return sdpa(q, k, v)
        return call

    def context_around_spin():
        with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
            torch.cuda._sleep(1000)

    sage = sage_end_to_end(False)
    return [("sage", None, lambda: sage(q, k, v)),
            ("cudnn, chosen per call", None, chosen_per_call(SDPBackend.CUDNN_ATTENTION)),
            ("cudnn, chosen once", SDPBackend.CUDNN_ATTENTION, lambda: sdpa(q, k, v)),
            ("flash, chosen per call", None, chosen_per_call(SDPBackend.FLASH_ATTENTION)),
            ("flash, chosen once", SDPBackend.FLASH_ATTENTION, lambda: sdpa(q, k, v)),
            ("sdpa, its default backend", None, lambda: sdpa(q, k, v)),
            ("the context around a spin", None, context_around_spin),
            ("a spin kernel alone", None, lambda: torch.cuda._sleep(1000))]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="1024,4096")
    ap.add_argument("--calls", type=int, default=60)
    args = ap.parse_args()
    try:
        sizes = [int(x) for x in args.sizes.split(",")]
    except ValueError:
        ap.error(f"--sizes takes comma-separated positive integers, not {args.sizes!r}")
    if any(n <= 0 for n in sizes) or args.calls <= 0:
        ap.error("--sizes and --calls take positive values")
    hold_cycles = int(300 * torch.cuda.get_device_properties(0).clock_rate / 1e3)  # ~300 us
    print(f"{torch.cuda.get_device_name()}: us, medians of {args.calls}; exposed = from idle - held; "
          "host = host time until the call returns")
    for n in sizes:
        q, k, v = input_sets(2, 32, n, 128, torch.bfloat16, "cuda")[0]
        print(f"N={n}")
        for name, backend, fn in cases(q, k, v):
            idle, held, host = [], [], []
            with sdpa_kernel(backend) if backend is not None else contextlib.nullcontext():
                for _ in range(5):
                    fn()
                for _ in range(args.calls):
                    t, h = span_us(fn, 0)
                    idle.append(t)
                    host.append(h)
                    held.append(span_us(fn, hold_cycles)[0])
            t_idle, t_held = statistics.median(idle), statistics.median(held)
            print(f"  {name:27s} from idle {t_idle:8.1f}  held {t_held:8.1f}  exposed {t_idle - t_held:6.1f}  "
                  f"host {statistics.median(host):6.1f}", flush=True)
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
