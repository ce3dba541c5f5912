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
import os
import statistics
import sys

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from host_exposure import hold_cycles_for, span_us  # (scripts/, beside this file)

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "bench"))
from bench_attention import input_sets, method_context, positive_ints, sage_end_to_end, sdpa  # noqa: E402


def cases():
    """(name, call, whether it takes q, k, v); bench_attention.sdpa's calls choose their backend
    once, around the calls (method_context), as the benchmark now does."""
    plain_sdpa = torch.nn.functional.scaled_dot_product_attention

    def chosen_per_call(backend):
        def call(q, k, v):
            with sdpa_kernel(backend):
                return plain_sdpa(q, k, v)
        return call

    def context_around_spin():
        with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
            torch.cuda._sleep(1000)

    return [("sage", sage_end_to_end(False), True),
            ("cudnn, chosen per call", chosen_per_call(SDPBackend.CUDNN_ATTENTION), True),
            ("cudnn, chosen once", sdpa(SDPBackend.CUDNN_ATTENTION, False), True),
            ("flash, chosen per call", chosen_per_call(SDPBackend.FLASH_ATTENTION), True),
            ("flash, chosen once", sdpa(SDPBackend.FLASH_ATTENTION, False), True),
            ("sdpa, its default backend", plain_sdpa, True),
            ("the context around a spin", context_around_spin, False),
            ("a spin kernel alone", lambda: torch.cuda._sleep(1000), False)]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="1024,4096")
    ap.add_argument("--calls", type=int, default=60)
    args = ap.parse_args()
    sizes = positive_ints(ap, "--sizes", args.sizes)
    if args.calls <= 0:
        ap.error("--calls takes a positive value")
    hold_cycles = hold_cycles_for(300.0)
    print(f"{torch.cuda.get_device_name()}: us, medians of {args.calls}; exposed = from idle - held; "
          "host = host time until the call returns")
    for n in sizes:
        qkv = input_sets(2, 32, n, 128, torch.bfloat16, "cuda")[0]
        print(f"N={n}")
        for name, fn, takes_qkv in cases():
            call_args = qkv if takes_qkv else ()
            idle, held, host = [], [], []
            with method_context(fn):
                for _ in range(5):
                    fn(*call_args)
                for _ in range(args.calls):
                    t, h = span_us(fn, call_args, 0)
                    idle.append(t)
                    host.append(h)
                    held.append(span_us(fn, call_args, hold_cycles)[0])
            t_idle, t_held = statistics.median(idle), statistics.median(held)
            print(f"  {name:27s} from idle {t_idle:8.1f}  held {t_held:8.1f}  exposed {t_idle - t_held:6.1f}  "
                  f"host {statistics.median(host):6.1f}", flush=True)
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
