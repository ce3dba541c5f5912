#!/usr/bin/env python3
"""How much each method's GPU time owes to inputs left in L2 by the call before (on a GPU machine).

scripts/gpu_time.py (the A/B timer) launches each method back to back on one input set, so a
call may find part of its inputs in L2; bench/bench_attention.py (the standard figures) rotates
input sets whose total exceeds L2, one call at a time. Here both methods (sageattn end to end and
PyTorch SDPA's cuDNN backend, B=2 H=32 bf16) run back to back, in alternating rounds, on one input
set ("same") and on the benchmark's rotating sets ("rotating"): the difference is each method's
gain from a warm L2, without host time in either. Prints one JSON object per method, shape and
input mode (median of the rounds' per-call means, us).

  PYTHONPATH=build-dev/python/pkg python3 scripts/l2_warmth.py [--sizes 1024,4096] [--d 128]
                                                                [--causal 0] [--rounds 6] [--reps 20]
"""
import argparse
import itertools
import json
import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "bench"))
from bench_attention import input_sets, method_context, round_order, sage_end_to_end, sdpa  # noqa: E402  (the benchmark's own)
from gpu_time import batch_us  # noqa: E402  (the A/B timer's batch: 3 calls to warm up, then reps back to back)
from torch.nn.attention import SDPBackend  # noqa: E402


def cycling(fn, sets):
    """fn over `sets` in turn, one set a call, as a function of no arguments (for batch_us)."""
    turns = itertools.cycle(sets)
    return lambda: fn(*next(turns))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1024,4096", help="sequence lengths (queries = keys), comma-separated")
    ap.add_argument("--d", type=int, default=128, help="head dim")
    ap.add_argument("--causal", type=int, default=0, help="1: causal (top-left)")
    ap.add_argument("--rounds", type=int, default=6,
                    help="rounds; each times every method and input mode once (6: two balanced cycles)")
    ap.add_argument("--reps", type=int, default=20, help="calls a batch")
    a = ap.parse_args()
    for n in (int(x) for x in a.sizes.split(",")):
        time_one_shape(n, a.d, bool(a.causal), a.rounds, a.reps)


def time_one_shape(n, d, causal, rounds, reps):
    rotating = input_sets(2, 32, n, d, torch.bfloat16, "cuda")
    modes = {"same": rotating[:1], "rotating": rotating}
    methods = {"sage": sage_end_to_end(causal), "sdpa-cudnn": sdpa(SDPBackend.CUDNN_ATTENTION, causal)}
    times = {(m, mode): [] for m in methods for mode in modes}
    order = [(m, mode) for m in methods for mode in modes]
    for r in range(rounds):  # (in the benchmark's order of rounds)
        for m, mode in (order[i] for i in round_order(len(order), r)):
            with method_context(methods[m]):
                times[(m, mode)].append(batch_us(cycling(methods[m], modes[mode]), (), reps, 1))
    for (m, mode), ts in times.items():
        print(json.dumps({"method": m, "inputs": mode, "sets": len(modes[mode]), "N": n, "D": d,
                          "causal": causal, "us": round(statistics.median(ts), 1),
                          "rounds": [round(t, 1) for t in ts]}), flush=True)


if __name__ == "__main__":
    main()
