#!/usr/bin/env python3
"""How much of one call's end-to-end time is the GPU waiting on the host (on a GPU machine).

The benchmark times one call at a time from an idle GPU: its CUDA-event span starts when the host
records the start event, so whatever the host does before the call's first kernel (and between its
launches, where a kernel must wait for the next one's launch) is inside the span. This script
times every call twice, alternating: as the benchmark does, and with a spin kernel of ~`--hold-us`
queued before the start event, so that the host finishes queueing the call while the GPU is
still busy and the span holds only the call's GPU time. The difference of the medians is the
host time the benchmark's figure carries ("exposed"), per method and length.

  PYTHONPATH=build-dev/python/pkg python3 scripts/host_exposure.py [--sizes 1024,4096] [--calls 40]
                                                                    [--hold-us 300]
(SAGE_PREPASS_CONCURRENT=0:0 in the environment times our call without the concurrent pre-pass.)
"""
import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "bench"))
from bench_attention import input_sets, method_context, positive_ints, sage_end_to_end, sdpa  # noqa: E402  (the benchmark's own)
from torch.nn.attention import SDPBackend  # noqa: E402


def span_us(fn, args, hold_cycles):
    """(CUDA-event span, host time until fn returned) of one call, in us, from an idle GPU or with
    the GPU held busy by a spin of `hold_cycles` before it."""
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    if hold_cycles:
        torch.cuda._sleep(hold_cycles)
    start.record()
    t0 = time.perf_counter()
    fn(*args)
    t1 = time.perf_counter()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) * 1e3, (t1 - t0) * 1e6


def hold_cycles_for(hold_us):
    """The spin's length in clock cycles for ~hold_us at the GPU's top clock (it counts cycles)."""
    return int(hold_us * torch.cuda.get_device_properties(0).clock_rate / 1e3)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="1024,4096")
    ap.add_argument("--calls", type=int, default=40)
    ap.add_argument("--hold-us", type=float, default=300.0)
    args = ap.parse_args()
    sizes = positive_ints(ap, "--sizes", args.sizes)
    if args.calls <= 0 or args.hold_us <= 0:
        ap.error("--calls and --hold-us take positive values")
    hold_cycles = hold_cycles_for(args.hold_us)
    print(f"{torch.cuda.get_device_name()}; the hold: {hold_cycles} cycles (~{args.hold_us:.0f} us at the top "
          f"clock); SAGE_PREPASS_CONCURRENT={os.environ.get('SAGE_PREPASS_CONCURRENT', '')!r}")
    print(f"{'N':>6} {'method':<11} {'from idle':>10} {'held':>10} {'exposed':>8}  (us, medians of {args.calls})")
    for n in sizes:
        sets = input_sets(2, 32, n, 128, torch.bfloat16, "cuda")
        fns = {"sage": sage_end_to_end(False), "sdpa-cudnn": sdpa(SDPBackend.CUDNN_ATTENTION, False)}
        for name, fn in fns.items():
            idle, held = [], []
            with method_context(fn):
                for i in range(5):
                    fn(*sets[i % len(sets)])
                for i in range(args.calls):
                    a = sets[i % len(sets)]
                    idle.append(span_us(fn, a, 0)[0])
                    held.append(span_us(fn, a, hold_cycles)[0])
            t_idle, t_held = statistics.median(idle), statistics.median(held)
            print(f"{n:>6} {name:<11} {t_idle:10.1f} {t_held:10.1f} {t_idle - t_held:8.1f}", flush=True)
        del sets
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
