#!/usr/bin/env python3
"""Where a kernel's instructions and stalls are, per SASS line, from an ncu source-page CSV.

Reads what `ncu --import REPORT --page source --csv --print-source sass` prints (the file
scripts/profile_prepass.sh writes as ncu-prepass-sass.csv; its report needs the SourceCounters
section) and prints, for each kernel in it:
  - the executed instructions per warp (the first instruction's count is the number of warps),
    in all and by opcode;
  - the largest straight runs of lines (consecutive lines executed equally often), by instructions
    per warp: where the code's weight sits;
  - the stall samples by reason, and the lines with the most samples of one reason (--stall).

  python3 scripts/sass_counts.py ncu-prepass-sass.csv [--kernel REGEX] [--stall no_inst] [--top 20]
"""
import argparse
import collections
import csv
import re


def read_kernels(path):
    """[(kernel name, [row dict per SASS line])] in file order."""
    kernels, header = [], None
    with open(path, newline="") as f:
        for row in csv.reader(f):
            if not row:
                continue
            if row[0] == "Kernel Name":
                kernels.append((row[1], []))
            elif row[0] == "Address":
                header = row
            elif kernels and header:
                kernels[-1][1].append(dict(zip(header, row)))
    return kernels


def count(line, column):
    value = line.get(column, "") or "0"
    return int(value.replace(",", "")) if value.replace(",", "").isdigit() else 0


def opcode(source):
    """The opcode of a SASS line without its predicate and modifiers (`@!P0 LDS.128 ...` -> LDS)."""
    text = re.sub(r"^@!?U?P\w+\s+", "", source.strip())
    return text.split(" ")[0].split(".")[0]


def straight_runs(lines, warps):
    """[(first, last, executions per warp)] of consecutive lines executed equally often."""
    runs = []
    for i, line in enumerate(lines):
        executed = count(line, "Instructions Executed")
        if not executed:
            continue
        per_warp = round(executed / warps, 3)
        if runs and runs[-1][1] == i - 1 and runs[-1][2] == per_warp:
            runs[-1][1] = i
        else:
            runs.append([i, i, per_warp])
    return runs


def stall_columns(line):
    """The line's stall-sample columns (the sampled reasons, without ncu's "Not Issued" copies)."""
    return [c for c in line if c.startswith("stall_") and "(Not Issued)" not in c]


def report(name, lines, stall, top):
    warps = count(lines[0], "Instructions Executed") or 1
    executed = [count(line, "Instructions Executed") for line in lines]
    print(f"=== {name[:140]}")
    print(f"  {warps} warps, {sum(executed) / warps:.0f} instructions per warp ({len(lines)} SASS lines)")
    by_op = collections.Counter()
    for line, n in zip(lines, executed):
        by_op[opcode(line["Source"])] += n
    print("  per warp by opcode: " + ", ".join(f"{op} {n / warps:.0f}" for op, n in by_op.most_common(20)))
    runs = sorted(straight_runs(lines, warps), key=lambda r: -(r[1] - r[0] + 1) * r[2])[:top]
    print("  largest straight runs (lines first-last: executions per warp x lines = per warp):")
    for first, last, per_warp in sorted(runs):
        size = last - first + 1
        print(f"    {first:6d}-{last:<6d} {per_warp:7.3f} x {size:4d} = {per_warp * size:7.1f}"
              f"   {lines[first]['Source'].strip()[:60]}")
    reasons = collections.Counter()
    for line in lines:
        for column in stall_columns(line):
            reasons[column[len("stall_"):]] += count(line, column)
    total = sum(reasons.values()) or 1
    print("  stall samples: " + ", ".join(f"{r} {100 * n / total:.0f}%" for r, n in reasons.most_common(10) if n))
    columns = stall_columns if stall == "all" else (lambda line: [f"stall_{stall}"])
    samples = [sum(count(line, c) for c in columns(line)) for line in lines]
    hot = [i for i in sorted(range(len(lines)), key=lambda i: -samples[i])[:top] if samples[i]]
    if hot:
        print(f"  lines with the most '{stall}' samples:")
        for i in sorted(hot):
            print(f"    {i:6d} {samples[i]:6d}   {lines[i]['Source'].strip()[:70]}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("csv", help="ncu --page source --csv --print-source sass output")
    ap.add_argument("--kernel", default="", help="only kernels whose name matches this regular expression")
    ap.add_argument("--stall", default="no_inst", help="stall reason whose hottest lines to list (the CSV's "
                    "stall_* column without the prefix, e.g. no_inst, long_sb, barrier; all: every reason's samples)")
    ap.add_argument("--top", type=int, default=15, help="runs and lines to list per kernel")
    args = ap.parse_args()
    seen = set()
    for name, lines in read_kernels(args.csv):
        # ncu lists a kernel once per profiled launch; the counters are per launch.
        if not lines or not re.search(args.kernel, name) or (name, len(lines)) in seen:
            continue
        seen.add((name, len(lines)))
        report(name, lines, args.stall, args.top)


if __name__ == "__main__":
    main()
