#!/usr/bin/env python3
"""GPU time of sageattn calls without their host time (on a GPU machine), for A/B comparisons.

bench/bench_attention.py times one call at a time, as a user sees it: its 1K figures carry the
host time of the call (20-45 us on the lent machines, and varying by +-10 us between runs). Here
each figure is the mean of `reps` calls launched back to back (the host stays ahead of the GPU), the
median of `rounds` such batches: `kernel` is the attention kernel alone (on inputs the pre-pass
already quantized), `call` the whole call (pre-pass and kernel), and with --cudnn `cudnn` PyTorch
SDPA's cuDNN backend the same way (the yardstick without its host time either). Prints one JSON
object per line.

  PYTHONPATH=build-ab-NAME/python/pkg python3 scripts/gpu_time.py [--dims 64,128] [--sizes 1024,4096]
                                                                  [--causal 0,1] [--tag NAME] [--cudnn] [--rest S]
                                                                  >> OUT/gpu-NAME.jsonl
  python3 scripts/gpu_time.py --compare OUT NAME [NAME ...]   (each NAME's mean, and its change against
                                                               the first NAME's; OUT/gpu-NAME.jsonl)
"""
import argparse
import collections
import json
import os
import statistics
import sys
import time


def batch_us(fn, args, reps, rounds, rest=0.0):
    import torch
    time.sleep(rest)  # see --rest
    for _ in range(3):
        fn(*args)
    torch.cuda.synchronize()
    samples = []
    for _ in range(rounds):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(reps):
            fn(*args)
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end) * 1e3 / reps)
    return statistics.median(samples)


def compare(out, names):
    """Mean of each variant's figures per shape and metric, and the change against the first."""
    runs = collections.defaultdict(list)  # (D, N, causal, metric, name) -> figures
    for name in names:
        path = os.path.join(out, f"gpu-{name}.jsonl")
        if os.path.exists(path):
            for line in open(path):
                row = json.loads(line)
                for metric in ("kernel", "call", "cudnn"):
                    if metric in row:
                        runs[(row["D"], row["N"], row["causal"], metric, name)].append(row[metric])
    shapes = sorted({key[:4] for key in runs})
    print(f"{'D':>4} {'c':>1} {'N':>6} {'metric':7}| " + " ".join(f"{n:>9}" for n in names) + " | change vs " + names[0])
    for d, n, causal, metric in shapes:
        means = [statistics.mean(runs[(d, n, causal, metric, name)]) if runs[(d, n, causal, metric, name)] else None
                 for name in names]
        cells = " ".join(f"{m:9.1f}" if m else f"{'-':>9}" for m in means)
        changes = " ".join(f"{(m / means[0] - 1) * 100:+6.1f}%" if m and means[0] else "      -" for m in means[1:])
        spread = "  ".join(f"{name}: " + ",".join(f"{x:.1f}" for x in runs[(d, n, causal, metric, name)]) for name in names)
        print(f"{d:4d} {int(causal)} {n:6d} {metric:7}| {cells} | {changes} | {spread}")


def main():
    if len(sys.argv) > 2 and sys.argv[1] == "--compare":
        compare(sys.argv[2], sys.argv[3:])
        return
    import torch

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "bench"))
    from torch.nn.attention import SDPBackend

    from bench_attention import method_context, sage_end_to_end, sage_kernel_only, sdpa  # the benchmark's calls
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dims", default="64,128")
    ap.add_argument("--sizes", default="1024,4096")
    ap.add_argument("--causal", default="0,1")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--tag", default="")
    ap.add_argument("--cudnn", action="store_true", help="also time SDPA's cuDNN backend")
    ap.add_argument("--rest", type=float, default=None,
                    help="seconds of idle GPU before each timed batch (default: 1 with --cudnn, else 0): right "
                         "after a batch of cuDNN's non-causal 4K calls, the next batch of ours measured up to 17%% "
                         "slower for a fraction of a second (H200, docs/perf-notes.md, session 18); after our "
                         "own batches it did not")
    args = ap.parse_args()
    if args.rest is None:
        args.rest = 1.0 if args.cudnn else 0.0
    for d in (int(x) for x in args.dims.split(",")):
        for n in (int(x) for x in args.sizes.split(",")):
            for causal in (bool(int(x)) for x in args.causal.split(",")):
                qkv = tuple(torch.randn(args.batch, args.heads, n, d, dtype=torch.bfloat16, device="cuda")
                            for _ in range(3))
                kernel = sage_kernel_only([qkv], causal)
                call = sage_end_to_end(causal)
                row = {"tag": args.tag, "D": d, "N": n, "causal": causal,
                       "kernel": round(batch_us(kernel, qkv, args.reps, args.rounds, args.rest), 2),
                       "call": round(batch_us(call, qkv, args.reps, args.rounds, args.rest), 2)}
                if args.cudnn:
                    cudnn = sdpa(SDPBackend.CUDNN_ATTENTION, causal)
                    with method_context(cudnn):  # (its backend chosen once, as the benchmark does)
                        row["cudnn"] = round(batch_us(cudnn, qkv, args.reps, args.rounds, args.rest), 2)
                print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
