#!/usr/bin/env python3
"""Compares benchmark runs of several builds (scripts/ab_bench.sh writes them as NAME.ROUND.json):
for each shape and method, the mean time of each build over its rounds, its change against the
first build, and the single runs (to judge the noise).

  python3 scripts/ab_compare.py DIR NAME [NAME ...]
"""
import collections
import glob
import json
import os
import sys


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    out, names = sys.argv[1], sys.argv[2:]
    times = collections.defaultdict(lambda: collections.defaultdict(list))
    for name in names:
        for path in sorted(glob.glob(os.path.join(out, f"{name}.*.json"))):
            for r in json.load(open(path))["rows"]:
                key = (r["D"], int(r["causal"]), r["N"], r["method"])
                times[key][name].append(r["ms"] * 1e3)
    base = names[0]
    print(f"{'D':>3} {'c':>1} {'N':>6} {'method':<12} | " + " ".join(f"{n:>10}" for n in names) +
          f" | change vs {base} | runs (us)")
    for key in sorted(times):
        runs = times[key]
        mean = {n: sum(runs[n]) / len(runs[n]) for n in names if runs[n]}
        change = " ".join(f"{100 * (mean[n] / mean[base] - 1):+6.1f}%" for n in names[1:] if n in mean and base in mean)
        print(f"{key[0]:>3} {key[1]:>1} {key[2]:>6} {key[3]:<12} | " +
              " ".join(f"{mean[n]:10.1f}" if n in mean else f"{'-':>10}" for n in names) +
              f" | {change:>14} | " + "  ".join(f"{n}: " + ",".join(f"{t:.1f}" for t in runs[n]) for n in names))


if __name__ == "__main__":
    main()
