#!/usr/bin/env python3
"""Regenerates docs/accuracy.md and docs/accuracy.png: the SageAttention2
ablations measured with the CPU emulation against exact float64 attention.

Every number comes from `sage accuracy --device cpu --dist all --ablation all
--json ...` (tools/sage/cmd_accuracy.cpp), run here at a fixed problem size
and seed; this script only runs the CLI, renders the tables and the chart and
words the findings from the measured numbers.

    cmake --build build --target sage            # any build directory
    python3 scripts/accuracy_report.py           # finds build*/tools/sage/sage
    python3 scripts/accuracy_report.py --sage path/to/sage --quick   # small, to try the script

Needs matplotlib for the chart (`pip install matplotlib`). A dev tool: CI
does not run it; docs/accuracy.md and docs/accuracy.png are committed.
"""

import argparse
import glob
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# What the emulation cannot show (its accumulators are all fp32), measured on a GPU and quoted as is.
TWO_LEVEL_ON_HOPPER = (
    " On the hardware it was measured once (an H100, docs/perf-notes.md, session 60): a kernel whose "
    "FP8 MMA accumulated P V^T over all of a row's keys, one level, reached relative L1 0.072 at 4K keys "
    "and 0.32 at 16K on Gaussian inputs (cos-sim still 0.9992), against 0.039 and 0.037 with the "
    "per-tile second level: an error of scale, most likely from the row sums, which only grow and so "
    "lose their late terms to the short accumulator.")

ABLATIONS = ["smoothing", "granularity", "pv-format", "smooth-v"]
ABLATION_TITLES = {
    "smoothing": "Smoothing of Q and K",
    "granularity": "Granularity of the Q/K scales",
    "pv-format": "P and V format, accumulation",
    "smooth-v": "Smooth V",
}
DISTRIBUTIONS = ["gaussian", "channel-bias", "outliers", "heavy-tailed", "sharp", "qk-bias"]
Q_BIASED = ["qk-bias"]  # the distributions whose Q has a channel offset for smooth Q to remove
DIST_TEXT = {
    "gaussian": "N(0, 1) in Q, K and V",
    "channel-bias": "Gaussian plus a per-channel offset ~ N(0, 5²) shared by all tokens, in K and in V (not in Q)",
    "outliers": "Gaussian with ~4% of the channels of Q and K (the same channels in both) scaled by 10-50x",
    "heavy-tailed": "Student-t with 3 degrees of freedom in Q, K and V",
    "sharp": "Gaussian with Q scaled so that the logits have standard deviation 8: near one-hot rows",
    "qk-bias": "Gaussian plus a per-channel offset shared by all tokens, ~ N(0, 2²) in Q and ~ N(0, 5²) in K "
               "(not in V); Q's offset adds to a head's logits a per-key term of standard deviation ~2",
}
METRICS = [("cos_sim", "cos-sim"), ("rel_l1", "rel-L1"), ("rmse", "RMSE"), ("worst_row_cos_sim", "worst-row cos")]
MMA_MARK = " †"  # rows emulated at kMmaGeometry (the mma.sync kernels run their formats)


def supports_ablation(sage):
    try:
        help_text = subprocess.run([sage, "accuracy", "--help"], capture_output=True, text=True, timeout=60).stdout
    except OSError:
        return False
    return "--ablation" in help_text


def find_sage(explicit):
    if explicit:
        return explicit
    candidates = sorted(glob.glob(os.path.join(REPO, "build*", "tools", "sage", "sage")), key=os.path.getmtime)
    for sage in reversed(candidates):  # the newest build that has --ablation
        if supports_ablation(sage):
            return sage
    sys.exit("accuracy_report: no build*/tools/sage/sage with `accuracy --ablation`; build it "
             "(cmake --build <dir> --target sage) or pass --sage PATH")


def run_cli(sage, args, json_path, reuse=False):
    if reuse:
        with open(json_path) as f:
            return json.load(f)
    command = [sage, "accuracy", "--device", "cpu", "--dist", "all", "--json", json_path] + args
    print("$ " + " ".join(shlex.quote(c) for c in command), file=sys.stderr, flush=True)
    # The CLI's progress goes to our stderr; its table (stdout) is not needed.
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    with open(json_path) as f:
        return json.load(f)


def index_results(data):
    """{(ablation, distribution, method): row}"""
    return {(r.get("ablation", ""), r["distribution"], r["method"]): r for r in data["results"]}


def methods_of(data, ablation):
    seen = []
    for r in data["results"]:
        if r.get("ablation") == ablation and r["method"] not in seen:
            seen.append(r["method"])
    return seen


# ---- number formatting ----

def fmt_cos(x):
    return "n/a" if x is None else f"{x:.6f}"


def fmt_sci(x):
    return "n/a" if x is None else f"{x:.3e}"


def fmt_metric(key, x):
    return fmt_cos(x) if key in ("cos_sim", "worst_row_cos_sim") else fmt_sci(x)


def pct_change(new, old):
    return 100.0 * (new - old) / old


def fmt_pct(p):
    return f"{p:+.1f}%"


# ---- the findings, worded from the numbers ----

class Findings:
    def __init__(self, runs, seeds_runs):
        self.runs = runs  # {head_dim: index}
        self.seeds_runs = seeds_runs  # {seed: index} at the largest head_dim (smoothing only)
        self.dims = sorted(runs)

    def get(self, d, ablation, dist, method, key="rel_l1"):
        row = self.runs[d].get((ablation, dist, method))
        return None if row is None else row.get(key)

    def change_range(self, ablation, dist, new, old, key="rel_l1"):
        """Relative changes (%) of `key` from `old` to `new`, one per head_dim."""
        out = []
        for d in self.dims:
            a, b = self.get(d, ablation, dist, new, key), self.get(d, ablation, dist, old, key)
            if a is not None and b is not None and b != 0:
                out.append(pct_change(a, b))
        return out

    def pair_text(self, ablation, dist, new, old, key="rel_l1"):
        """'3.19e-02 -> 1.54e-02 (D=64: ...)'-style text over the head dims."""
        parts = []
        for d in self.dims:
            a, b = self.get(d, ablation, dist, new, key), self.get(d, ablation, dist, old, key)
            if a is None or b is None:
                continue
            parts.append(f"D={d}: {fmt_metric(key, b)} → {fmt_metric(key, a)}")
        return "; ".join(parts)

    def words(self):
        lines = []
        D = self.dims[-1]

        # Smoothing.
        for qk, label in (("int4 per-thread", "INT4"), ("int8 per-warp", "INT8")):
            big, small = [], []
            for dist in DISTRIBUTIONS:
                ch = self.change_range("smoothing", dist, f"{qk}, smooth K", f"{qk}, no smoothing")
                if not ch:
                    continue
                (big if min(ch) < -20 else small).append((dist, ch))
            text = f"**Smooth K, {label} QK** ({qk}): "
            if big:
                text += "; ".join(
                    f"on {dist} it cuts rel-L1 by {-max(ch):.0f}-{-min(ch):.0f}% "
                    f"({self.pair_text('smoothing', dist, f'{qk}, smooth K', f'{qk}, no smoothing')})"
                    for dist, ch in big)
                text += ". "
            if small:
                worst = max(abs(c) for _, ch in small for c in ch)
                text += (("Elsewhere" if big else "on every distribution") +
                         f" rel-L1 moves by at most {worst:.1f}% "
                         f"({', '.join(d for d, _ in small)}).")
            lines.append(text)

        # Smooth Q, on top of smooth K (the default recipe's).
        q_text = []
        for qk in ("int4 per-thread", "int8 per-warp"):
            for dist in Q_BIASED:
                ch = self.change_range("smoothing", dist, f"{qk}, smooth Q+K", f"{qk}, smooth K")
                if ch:
                    q_text.append(f"{qk} on {dist}: {', '.join(fmt_pct(c) for c in ch)} "
                                  f"({self.pair_text('smoothing', dist, f'{qk}, smooth Q+K', f'{qk}, smooth K')})")
        others = [(c, qk, dist) for qk in ("int4 per-thread", "int8 per-warp")
                  for dist in DISTRIBUTIONS if dist not in Q_BIASED
                  for c in self.change_range("smoothing", dist, f"{qk}, smooth Q+K", f"{qk}, smooth K")]
        if q_text and others:
            lo, hi = min(others), max(others)
            lines.append(
                "**Smooth Q** (on top of smooth K; rel-L1 of Q+K against K alone, per head dim): "
                + "; ".join(q_text) + ". On the distributions without a Q offset it has little to remove: "
                f"{fmt_pct(lo[0])} ({lo[1]}, {lo[2]}) to {fmt_pct(hi[0])} ({hi[1]}, {hi[2]}).")

        if self.seeds_runs:
            seeds = sorted(self.seeds_runs)
            consistent, mixed = [], []
            for dist in DISTRIBUTIONS:
                for qk in ("int4 per-thread", "int8 per-warp"):
                    signs = set()
                    for s in seeds:
                        idx = self.seeds_runs[s]
                        a = idx.get(("smoothing", dist, f"{qk}, smooth K"))
                        b = idx.get(("smoothing", dist, f"{qk}, no smoothing"))
                        if a and b:
                            signs.add(a["rel_l1"] < b["rel_l1"])
                    (consistent if len(signs) == 1 else mixed).append(f"{qk.split()[0].upper()} {dist}")
            lines.append(
                f"Seed check (D={D}, seeds {', '.join(map(str, seeds))}): smooth K lowers or raises rel-L1 the "
                f"same way for every seed on {', '.join(consistent) if consistent else 'no case'}; the sign "
                f"flips between seeds on {', '.join(mixed) if mixed else 'no case'} (there the effect is "
                "noise). The per-seed numbers are in the seed table below.")

        # Granularity.
        for fmt in ("int8", "int4"):
            monotone = []
            ratios = []
            for dist in DISTRIBUTIONS:
                for d in self.dims:
                    vals = [self.get(d, "granularity", dist, f"{fmt} {g}") for g in
                            ("per-block", "per-warp", "per-thread")]
                    if None in vals:
                        continue
                    monotone.append(vals[0] >= vals[1] >= vals[2])
                    ratios.append((vals[0] / vals[2], dist, d))
            if not ratios:
                continue
            best = max(ratios)
            worst = min(ratios)
            order = ("in every case" if all(monotone) else
                     f"in {sum(monotone)} of {len(monotone)} (distribution, D) cases")
            lines.append(
                f"**Granularity, {fmt.upper()}**: rel-L1 falls from per-block to per-warp to per-thread {order}; "
                f"per-block / per-thread rel-L1 ranges from {worst[0]:.2f}x ({worst[1]}, D={worst[2]}) to "
                f"{best[0]:.2f}x ({best[1]}, D={best[2]}).")

        # PV format.
        e5 = [(self.get(d, "pv-format", dist, "pv fp8-e5m2, two-level") /
               self.get(d, "pv-format", dist, "pv fp8-e4m3, two-level"), dist, d)
              for dist in DISTRIBUTIONS for d in self.dims]
        f16 = [(self.get(d, "pv-format", dist, "pv fp16, fp32 accum") /
                self.get(d, "pv-format", dist, "pv fp8-e4m3, two-level"), dist, d)
               for dist in DISTRIBUTIONS for d in self.dims]
        lines.append(
            f"**FP8 E5M2 instead of E4M3** for P and V multiplies rel-L1 by {min(e5)[0]:.2f}x "
            f"({min(e5)[1]}, D={min(e5)[2]}) to {max(e5)[0]:.2f}x ({max(e5)[1]}, D={max(e5)[2]}): E5M2's 2 "
            "mantissa bits cost more than its range gains, P being in [0, 1] with a static scale and V scaled "
            "per channel.")
        # BF16 P V is the 16-bit row at the default rows' geometry: the clean comparison with FP8.
        g = {d: (self.get(d, "pv-format", "gaussian", "pv fp8-e4m3, two-level"),
                 self.get(d, "pv-format", "gaussian", "pv bf16, fp32 accum")) for d in self.dims}
        lines.append(
            f"**FP16 P and V** {MMA_MARK.strip()} gives {min(f16)[0]:.2f}x ({min(f16)[1]}, D={min(f16)[2]}) to "
            f"{max(f16)[0]:.2f}x ({max(f16)[1]}, D={max(f16)[2]}) the rel-L1 of FP8 E4M3 (with the mma.sync "
            "kernels' K groups and row sum as well, see Setup). On Gaussian inputs the FP8 P V stage is most of "
            "the default recipe's error, by BF16 P and V at the same geometry: "
            + "; ".join(f"D={d}: {fmt_sci(a)} with E4M3, {fmt_sci(b)} with BF16" for d, (a, b) in g.items())
            + " (what is left with BF16 is mostly the INT8 Q K^T). BF16 P and V come within "
            + f"{self.max_rel_diff('pv-format', 'pv bf16, fp32 accum', 'pv fp16, fp32 accum'):.1f}% of FP16 "
            "(V is already bf16 here; besides P's rounding the two rows differ in their K groups and row sum).")
        acc = max(self.max_rel_diff("pv-format", f"pv {f}, fp32 accum", f"pv {f}, two-level")
                  for f in ("fp8-e4m3", "fp8-e5m2", "fp16", "bf16"))
        lines.append(
            f"**Two-level vs fp32 accumulation**: at most {acc:.1e}% apart in rel-L1 (identical in every printed "
            "digit). In the emulation both "
            "accumulators are fp32 and the two differ only in the order of the additions; the GPU FP8 MMA's "
            "~22-bit accumulator, the reason for two-level accumulation, is not modelled, so this row cannot "
            "show what two-level accumulation buys on the hardware."
            + TWO_LEVEL_ON_HOPPER)

        # Smooth V.
        for fmt in ("fp8-e4m3", "fp8-e5m2", "fp16"):
            ch = self.change_range("smooth-v", "channel-bias", f"pv {fmt}, smooth V on", f"pv {fmt}, smooth V off",
                                   key="rmse")
            others = [abs(c) for dist in DISTRIBUTIONS if dist != "channel-bias" for c in
                      self.change_range("smooth-v", dist, f"pv {fmt}, smooth V on", f"pv {fmt}, smooth V off",
                                        key="rmse")]
            lines.append(
                f"**Smooth V, PV {fmt}**: on channel-bias RMSE changes by "
                f"{', '.join(fmt_pct(c) for c in ch)} (D={', '.join(map(str, self.dims))}); on the other "
                f"distributions by at most {max(others):.1f}%.")

        # Worst rows.
        int8 = [(r["worst_row_cos_sim"], r["cos_sim"], dist, d) for d in self.dims
                for (ab, dist, m), r in self.runs[d].items()
                if ab == "smoothing" and m.startswith("int8") and r.get("worst_row_cos_sim") is not None]
        negative = sorted({dist for w_, _, dist, _ in int8 if w_ < 0})
        negative_at = sorted({(dist, d) for w_, _, dist, d in int8 if w_ < 0}, key=lambda x: (x[1], x[0]))
        if negative:
            lowest_cos = min(c for w_, c, dist, _ in int8 if dist in negative)
            bf16_low = sorted({dist for d in self.dims for dist in negative
                               if (self.get(d, "pv-format", dist, "pv bf16, fp32 accum", "worst_row_cos_sim") or 1)
                               < 0.5})
            per_thread = [(self.get(d, "granularity", dist, "int8 per-thread", "worst_row_cos_sim"),
                           self.get(d, "granularity", dist, "int8 per-block", "worst_row_cos_sim"), dist, d)
                          for d in self.dims for dist in negative]
            lines.append(
                f"**Worst rows**: on {', '.join(f'{dist} (D={d})' for dist, d in negative_at)} some output row "
                f"of at least one INT8 smoothing variant has a cos-sim below 0, while the whole-tensor cos-sim stays at {lowest_cos:.5f} or above. "
                "These distributions make many rows nearly one-hot (outlier channels or heavy tails give some "
                "logits a scale of tens), so a small score error can pick a different top key and the row turns "
                "into another V row (our reading; the report does not check it row by row). The Q K^T side "
                f"causes it, not P V: with BF16 P and V the worst row stays below 0.5 on "
                f"{', '.join(bf16_low) if bf16_low else 'none of them'}. INT8 per-thread vs per-block worst row: "
                + "; ".join(f"{dist} D={d}: {fmt_cos(b)} → {fmt_cos(a)}" for a, b, dist, d in per_thread) + ".")
        return lines

    def max_rel_diff(self, ablation, a, b, key="rel_l1"):
        out = 0.0
        for d in self.dims:
            for dist in DISTRIBUTIONS:
                x, y = self.get(d, ablation, dist, a, key), self.get(d, ablation, dist, b, key)
                if x is not None and y:
                    out = max(out, abs(pct_change(x, y)))
        return out


# ---- the chart ----

def draw_chart(runs, problem, path, head_dim):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    idx = runs[head_dim]
    panels = [
        ("smoothing", "Smoothing (INT8 per-warp, INT4 per-thread)",
         ["int8 per-warp, no smoothing", "int8 per-warp, smooth K", "int8 per-warp, smooth Q+K",
          "int4 per-thread, no smoothing", "int4 per-thread, smooth K", "int4 per-thread, smooth Q+K"]),
        ("granularity", "QK granularity (smooth K on)",
         ["int8 per-block", "int8 per-warp", "int8 per-thread", "int4 per-block", "int4 per-warp",
          "int4 per-thread"]),
        ("pv-format", "P/V format (INT8 per-warp QK)",
         ["pv fp8-e4m3, two-level", "pv fp8-e5m2, two-level", "pv fp16, fp32 accum", "pv bf16, fp32 accum"]),
        ("smooth-v", "Smooth V (INT8 per-warp QK)",
         ["pv fp8-e4m3, smooth V off", "pv fp8-e4m3, smooth V on", "pv fp8-e5m2, smooth V off",
          "pv fp8-e5m2, smooth V on"]),
    ]
    fig, axes = plt.subplots(2, 2, figsize=(13, 8.5))
    for ax, (ablation, title, methods) in zip(axes.flat, panels):
        n = len(methods)
        width = 0.8 / n
        cmap = plt.get_cmap("tab10")
        for i, m in enumerate(methods):
            ys = [idx.get((ablation, dist, m), {}).get("rel_l1") for dist in DISTRIBUTIONS]
            xs = [j + (i - (n - 1) / 2) * width for j in range(len(DISTRIBUTIONS))]
            ax.bar([x for x, y in zip(xs, ys) if y], [y for y in ys if y], width, label=m, color=cmap(i))
        ax.set_yscale("log")
        bottom, top = ax.get_ylim()
        ax.set_ylim(bottom, top * 12)  # room for the legend above the bars
        ax.set_xticks(range(len(DISTRIBUTIONS)))
        ax.set_xticklabels(DISTRIBUTIONS, fontsize=9)
        ax.set_title(title, fontsize=11)
        ax.set_ylabel("relative L1 error (log)")
        ax.grid(axis="y", which="both", alpha=0.3)
        ax.legend(fontsize=7.5, loc="upper left", ncol=2)
    fig.suptitle(f"SageAttention2 ablations, CPU emulation vs float64: relative L1, "
                 f"D={head_dim}, N={problem['nq']}, H={problem['heads_q']}, lower is better",
                 fontsize=12)
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---- the markdown ----

def table(runs, ablation, dist, dims):
    methods = []
    for d in dims:
        for (ab, di, m) in runs[d]:
            if ab == ablation and di == dist and m not in methods:
                methods.append(m)
    head = "| variant | " + " | ".join(f"D={d} {label}" for d in dims for _, label in METRICS) + " |"
    sep = "|---|" + "---:|" * (len(dims) * len(METRICS))
    lines = [head, sep]
    for m in methods:
        cells = []
        for d in dims:
            row = runs[d].get((ablation, dist, m), {})
            if "error" in row:
                cells += ["n/a"] * len(METRICS)
                continue
            cells += [fmt_metric(k, row.get(k)) for k, _ in METRICS]
        mma = any(runs[d].get((ablation, dist, m), {}).get("geometry") == "kMmaGeometry" for d in dims)
        lines.append(f"| {m}{MMA_MARK if mma else ''} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def seed_table(seeds_runs):
    seeds = sorted(seeds_runs)
    first = seeds_runs[seeds[0]]
    methods = []
    for (ab, di, m) in first:
        if ab == "smoothing" and m not in methods:
            methods.append(m)
    lines = ["| distribution | variant | " + " | ".join(f"seed {s}" for s in seeds) + " |",
             "|---|---|" + "---:|" * len(seeds)]
    for dist in DISTRIBUTIONS:
        for m in methods:
            vals = [seeds_runs[s].get(("smoothing", dist, m), {}).get("rel_l1") for s in seeds]
            lines.append(f"| {dist} | {m} | " + " | ".join(fmt_sci(v) for v in vals) + " |")
    return "\n".join(lines)


def render(runs, seeds_runs, p, geo, meta, findings, chart_name, chart_dim):
    dims = sorted(runs)
    out = []
    w = out.append
    w("# Accuracy: the SageAttention2 ablations on synthetic inputs\n")
    w("<!-- Generated by scripts/accuracy_report.py; edit the script, not this file. -->\n")
    w("Every number below is measured by `scripts/accuracy_report.py`, which runs "
      "`sage accuracy --device cpu --dist all --ablation all --json FILE` (the CPU emulation of the kernels, "
      "through `sage::attention_forward` on host tensors) and compares each output with exact attention in "
      "float64 on the same bf16-rounded inputs. Regenerate with\n")
    w("```bash\n" + meta["command"] + "\n```\n")
    t = meta["timing"]
    w(f"(The last regeneration took {t['wall_s']:.0f} s wall clock and {t['cpu_s']:.0f} s of CPU time on a "
      f"{t['cores']}-core machine shared with other jobs; about {t['cpu_s'] / t['cores']:.0f} s on {t['cores']} "
      "idle cores. The emulation is parallel over heads and Q tiles, `SAGE_NUM_THREADS` caps it, and its "
      "results do not depend on the thread count.)\n")

    w("## Setup\n")
    w(f"- Problem: B={p['batch']}, H={p['heads_q']} (Hkv={p['heads_kv']}), N={p['nq']} queries and keys, "
      f"D = {' and '.join(str(d) for d in dims)}, {p['dtype']} inputs and output, "
      f"{'causal' if p['causal'] else 'non-causal'}, sm_scale = 1/sqrt(D), seed {p['seed']}"
      + (f" (the smoothing ablation also with seeds {', '.join(str(s) for s in sorted(seeds_runs) if s != p['seed'])} "
         f"at D={dims[-1]}, to see what is noise)" if seeds_runs else "") + ".")
    sm90, mma = geo["kSm90Geometry"], geo["kMmaGeometry"]
    w(f"- Tile geometry: each row is emulated at the geometry of the kernel a Hopper GPU runs for its formats: "
      f"`kSm90Geometry` (the sm90 kernel's: cta_q={sm90['cta_q']}, cta_k={sm90['cta_k']}, "
      f"warp_q={sm90['warp_q']}) for INT8 Q K^T with FP8 E4M3 P V and two-level accumulation, and for the formats "
      f"no GPU kernel runs yet (FP8 E5M2 or BF16 P V, FP8 with fp32 accumulation); `kMmaGeometry` (the mma.sync "
      f"kernels': cta_q={mma['cta_q']}, cta_k={mma['cta_k']}, warp_q={mma['warp_q']}) for the rows marked "
      f"{MMA_MARK.strip()} (INT4 Q K^T, FP16 P V). The geometry sets the quantization groups of Q and K: per-block = one "
      "scale per cta_q query rows / cta_k keys; per-warp = per warp_q query rows / cta_k keys; per-thread = per 2 "
      "query rows (rows g and g+8 of a 16-row warp slice) / cta_k / 4 keys (keys with the same (c mod 8) / 2 in a "
      "cta_k-key tile).")
    w("- The same kernel family sets how the softmax's row sum l is made: in the sm90 geometry's rows past "
      "D = 64 as the sum of P as the P V stage rounds it, the P that O accumulates (FP8, or BF16; the sm90 kernel "
      "makes it with its P V MMA: `TileGeometry::l_sums_pv_operand`); at D = 64 and in the rows marked "
      f"{MMA_MARK.strip()} as the fp32 sum of the unquantized P~.")
    w("- Default recipe, changed one thing at a time: INT8 Q K^T per-warp with smooth K, P and V in FP8 E4M3 "
      "(P with the static 448 scale, V per channel), two-level P V accumulation, no smooth Q or V. "
      "INT4 rows use per-thread scales (the SageAttention2 INT4 recipe) unless the granularity is the thing varied. "
      f"The rows marked {MMA_MARK.strip()} change the geometry too (the K groups, and the row sum past D = 64).")
    w("- Distributions (`src/reference/inputs.cpp`):")
    for dist in DISTRIBUTIONS:
        w(f"  - `{dist}`: {DIST_TEXT[dist]}.")
    w("- Metrics over the whole [B, H, N, D] output: cos-sim, relative L1 = Σ|out − ref| / Σ|ref|, RMSE, and "
      "worst-row cos-sim = the lowest cos-sim of any single output row (one query of one head).")
    w("- Not shown: **per-token** scales. The emulation's Q/K groups come from the tile geometry "
      "(`TileGeometry::q_group_of` / `k_group_of`), whose finest Q group is 2 rows (per-thread) and whose "
      "K groups span a whole tile or a quarter of it; `emulate_attention` requires warp_q % 8 == 0 and "
      "cta_k % 8 == 0, so one scale per token cannot be expressed by a geometry, and no kernel here uses "
      "per-token scales. Adding it would take a new `Granularity` value in the emulation, not a report option.")
    w("- Caveat on `channel-bias`: V's per-channel offsets (~5) dominate every output row (the attention "
      "average of V is ≈ V's channel mean), so relative L1 and cos-sim are tiny for every method there; "
      "RMSE, an absolute error, shows the differences better.\n")

    w("## At a glance\n")
    w(f"![relative L1 of each ablation, D={chart_dim}]({chart_name})\n")
    w(f"Relative L1 error (log scale, lower is better) at D={chart_dim}; the tables below have all four metrics "
      "for both head dims.\n")

    w("## Findings\n")
    w("Worded by the script from the numbers of this run.\n")
    for line in findings:
        w(f"- {line}")
    w("")

    for ablation in ABLATIONS:
        w(f"## {ABLATION_TITLES[ablation]}\n")
        note = {
            "smoothing": "None / K / Q / Q+K for INT8 per-warp and INT4 per-thread Q K^T; PV FP8 E4M3, two-level. "
                         "Smooth K subtracts K's channel mean over all keys (softmax-invariant, exact correction); "
                         "smooth Q subtracts each 128-row Q block's channel mean and adds the mean's scores back "
                         "(in fp32).",
            "granularity": "Per-block / per-warp / per-thread scales of Q and K (groups as in Setup), INT8 and INT4, "
                           "smooth K on; PV FP8 E4M3, two-level.",
            "pv-format": "P and V in FP8 E4M3, FP8 E5M2, FP16 or BF16, each with two-level and with plain fp32 "
                         "accumulation; Q K^T INT8 per-warp with smooth K.",
            "smooth-v": "V minus its channel mean (added back to the output), for FP8 E4M3, FP8 E5M2 and FP16 "
                        "P V; Q K^T INT8 per-warp with smooth K.",
        }[ablation]
        w(note + "\n")
        for dist in DISTRIBUTIONS:
            w(f"**{dist}**\n")
            w(table(runs, ablation, dist, dims) + "\n")

    if seeds_runs:
        w(f"## Seed check (smoothing, D={dims[-1]})\n")
        w("Relative L1 of the smoothing ablation for several seeds (same sizes): a difference between two "
          "variants means something only where it keeps its sign across seeds.\n")
        w(seed_table(seeds_runs) + "\n")
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sage", help="the sage program (default: the newest build*/tools/sage/sage)")
    ap.add_argument("--out", default=os.path.join(REPO, "docs", "accuracy.md"), help="markdown to write")
    ap.add_argument("--chart", default=os.path.join(REPO, "docs", "accuracy.png"), help="PNG to write")
    ap.add_argument("-n", "--seq-len", type=int, default=2048)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--head-dims", default="64,128")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--extra-seeds", default="1,2",
                    help="more seeds for the smoothing ablation at the largest head dim ('' for none)")
    ap.add_argument("--json-dir", help="keep the CLI's JSON files here (default: a temporary directory)")
    ap.add_argument("--reuse-json", action="store_true",
                    help="re-render from the JSON files a run with --json-dir left there (same flags), running nothing")
    ap.add_argument("--quick", action="store_true", help="N=256, H=1: to try the script, not for the report")
    args = ap.parse_args()
    if args.quick:
        args.seq_len, args.heads = 256, 1

    if args.reuse_json and not args.json_dir:
        sys.exit("accuracy_report: --reuse-json needs --json-dir")
    sage = None if args.reuse_json else find_sage(args.sage)
    dims = [int(d) for d in args.head_dims.split(",") if d]
    extra_seeds = [int(s) for s in args.extra_seeds.split(",") if s]
    size = ["-n", str(args.seq_len), "--heads", str(args.heads)]

    start = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        json_dir = args.json_dir or tmp
        os.makedirs(json_dir, exist_ok=True)
        runs, problems, geometries = {}, {}, {}
        for d in dims:
            data = run_cli(sage, size + ["-d", str(d), "--seed", str(args.seed), "--ablation", "all"],
                           os.path.join(json_dir, f"accuracy_d{d}.json"), args.reuse_json)
            runs[d] = index_results(data)
            problems[d] = data["problem"]
            geometries[d] = data.get("geometries")
        seeds_runs = {}
        if extra_seeds:
            dmax = max(dims)
            seeds_runs[args.seed] = {k: v for k, v in runs[dmax].items() if k[0] == "smoothing"}
            for s in extra_seeds:
                data = run_cli(sage, size + ["-d", str(dmax), "--seed", str(s), "--ablation", "smoothing"],
                               os.path.join(json_dir, f"accuracy_smoothing_d{dmax}_seed{s}.json"), args.reuse_json)
                seeds_runs[s] = index_results(data)
        timing_path = os.path.join(json_dir, "timing.json")
        if args.reuse_json:
            with open(timing_path) as f:
                timing = json.load(f)
        else:
            children = os.times()
            timing = {"wall_s": time.time() - start, "cpu_s": children.children_user + children.children_system,
                      "cores": os.cpu_count()}
            with open(timing_path, "w") as f:
                json.dump(timing, f)

    if any(geometries[d] is None for d in dims):
        sys.exit("accuracy_report: the CLI did not report its tile geometry (not the CPU emulation?)")

    command = "python3 scripts/accuracy_report.py   # --sage PATH if the build is not build*/"
    defaults = ap.parse_args([])
    for flag, value, default in (("-n", args.seq_len, defaults.seq_len), ("--heads", args.heads, defaults.heads),
                                 ("--head-dims", args.head_dims, defaults.head_dims),
                                 ("--seed", args.seed, defaults.seed),
                                 ("--extra-seeds", args.extra_seeds, defaults.extra_seeds)):
        if value != default and not args.quick:
            command += f" {flag} {shlex.quote(str(value))}"
    if args.quick:
        command += " --quick"
    meta = {"command": "cmake --build build --target sage\n" + command, "timing": timing}

    findings = Findings(runs, seeds_runs).words()
    chart_dim = max(dims)
    draw_chart(runs, problems[chart_dim], args.chart, chart_dim)
    chart_name = os.path.relpath(args.chart, os.path.dirname(os.path.abspath(args.out)))
    text = render(runs, seeds_runs, problems[dims[0]], geometries[dims[0]], meta, findings, chart_name, chart_dim)
    with open(args.out, "w") as f:
        f.write(text.rstrip("\n") + "\n")
    print(f"wrote {args.out} and {args.chart} (CLI runs: {timing['wall_s']:.0f} s wall, "
          f"{timing['cpu_s']:.0f} s CPU)", file=sys.stderr)


if __name__ == "__main__":
    main()
