#!/usr/bin/env python3
"""The benchmark's figures round by round, in both timing orders (on a GPU machine).

bench/bench_attention.py times one call at a time (CUDA events around the call, a synchronize
after it). Session 61 found every method slower when the methods are timed in interleaved rounds
than in one block each (ours ~3-5%, cuDNN's ~2%), with the clocks nvidia-smi reported alike.
Session 62 ran this script: the calls of one method in one round time alike, and across rounds a
method's time moves in steps of 4-15%, not by the same factor for the two methods (the GPU's power
capping: the driver counted 0.75 s of it in a minute of these calls), so the ratio of one round
ranged 1.08-1.24 at D=128 4K on an H100. Timed in blocks, ours went first.

Prints, for each order (interleaved, blocks, twice each), each method's median per round and the
ratio of the two methods' medians per round; --json keeps every call's time and the host time of
each Python call.

  PYTHONPATH=build-dev/python/pkg python3 scripts/e2e_gap.py [--n 4096] [--d 128] [--causal 0]
                                                              [--rounds 5] [--iters 10] [--warmup 3]
                                                              [--json FILE]
"""
import argparse
import json
import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "bench"))
from bench_attention import input_sets, round_order, sage_end_to_end, sdpa, timed_calls  # noqa: E402  (the benchmark's own)
from torch.nn.attention import SDPBackend  # noqa: E402


def schedule(names, pattern, rounds):
    """(round, method) blocks in the benchmark's order: interleaved rounds in its default round_order,
    or one block of `rounds` rounds per method."""
    if pattern == "blocks":
        return [(r, name) for name in names for r in range(rounds)]
    return [(r, names[i]) for r in range(rounds) for i in round_order(len(names), r)]


def run_pattern(fns, sets, pattern, rounds, iters, warmup):
    """{method: [[(call ms, host us), ...] per round]}, the calls timed as the benchmark times them."""
    times = {name: [[] for _ in range(rounds)] for name in fns}
    for r, name in schedule(list(fns), pattern, rounds):
        times[name][r].extend(timed_calls(fns[name], sets, warmup, iters))
    return times


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=4096)
    ap.add_argument("--d", type=int, default=128)
    ap.add_argument("--causal", type=int, default=0)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--json", help="write every call's time here")
    args = ap.parse_args()
    causal = bool(args.causal)
    sets = input_sets(2, 32, args.n, args.d, torch.bfloat16, torch.device("cuda"))
    fns = {"sage": sage_end_to_end(causal), "sdpa-cudnn": sdpa(SDPBackend.CUDNN_ATTENTION, causal)}
    runs = []
    for pattern in ("interleaved", "blocks", "interleaved", "blocks"):
        times = run_pattern(fns, sets, pattern, args.rounds, args.iters, args.warmup)
        medians = {name: [statistics.median(c[0] for c in rnd) * 1e3 for rnd in per_round]
                   for name, per_round in times.items()}
        host = {name: statistics.median(c[1] for rnd in per_round for c in rnd) for name, per_round in times.items()}
        print(f"{pattern}: per-round medians (us)")
        for name in fns:
            print(f"  {name:10s} " + " ".join(f"{m:8.1f}" for m in medians[name])
                  + f"   host {host[name]:.1f} us a call")
        print("  ratio      " + " ".join(f"{b / a:8.3f}" for a, b in zip(medians["sage"], medians["sdpa-cudnn"])))
        runs.append({"pattern": pattern, "per_round_median_us": medians, "host_median_us": host,
                     "calls_ms": {name: [[round(c[0], 4) for c in rnd] for rnd in per_round]
                                  for name, per_round in times.items()}})
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"gpu": torch.cuda.get_device_name(), "N": args.n, "D": args.d, "causal": causal,
                       "runs": runs}, f, indent=1)


if __name__ == "__main__":
    main()
