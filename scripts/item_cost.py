#!/usr/bin/env python3
"""What one work item and one key tile cost the sm90 attention kernel (on a GPU machine).

The kernel is persistent: each of its CTAs (one per SM) takes work items (a 128- or 192-row
query tile of one head, over all its key tiles) in rounds. Timing the kernel alone (on inputs the
pre-pass already quantized; launches back to back, so no host time) at head counts that give
whole rounds, at two sequence lengths, separates the time per key tile from the time per item
(its start and its epilogue): t = a + b * tiles_per_cta + c * items_per_cta, least squares.

--by-rows: what an item costs by its rows (64, 128, 192: one, two or three busy consumers; the
others skip it), at --keys keys. Every CTA takes `rounds` items of the same rows, one per query
head, all heads sharing one K/V head (GQA), so that their key tiles come from L2 as the items of
a real call's head do (with a K/V head each, 132 CTAs would stream ~1 MB each per item from
DRAM). The slope over 1-3 rounds is an item's time; its ratio to a 192-row item's is what the
host's model takes for a short item (sm90 noncausal_full_items, kShortItemTileCost).

  python3 scripts/item_cost.py [--dim 128] [--q-prepass 0|1|both]
  python3 scripts/item_cost.py --by-rows [--keys 4096]
"""
import argparse
import os
import statistics
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "bench"))
from bench_attention import sage_kernel_only  # noqa: E402 (the benchmark's kernel-only call)


def kernel_us(n, heads, d, reps=20, rounds=5, nk=None, kv_heads=None):
    q = torch.randn(1, heads, n, d, dtype=torch.bfloat16, device="cuda")
    k, v = (torch.randn(1, kv_heads or heads, nk or n, d, dtype=torch.bfloat16, device="cuda") for _ in range(2))
    run = sage_kernel_only([(q, k, v)], causal=False)
    for _ in range(3):
        run(q, k, v)
    samples = []
    for _ in range(rounds):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(reps):
            run(q, k, v)
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end) * 1e3 / reps)
    return statistics.median(samples)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--q-prepass", default="both", choices=("0", "1", "both"),
                    help="SAGE_SM90_Q_PREPASS for the calls (0: Q quantized in the kernel where it can, 1: by the pre-pass)")
    ap.add_argument("--by-rows", action="store_true", help="the cost of an item by its rows (see above)")
    ap.add_argument("--keys", type=int, default=4096, help="keys per head with --by-rows")
    args = ap.parse_args()
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    if args.by_rows:
        by_rows(args, sms)
        return
    modes = ("0", "1") if args.q_prepass == "both" else (args.q_prepass,)
    for mode in modes:
        os.environ["SAGE_SM90_Q_PREPASS"] = mode
        # CTA tile rows (sm90::query_block_rows): three consumers in every non-causal instance.
        block_q = 192
        rows, times = [], []
        for n in (1024, 4096):
            q_tiles = n // block_q if n % block_q == 0 else n // block_q + 1
            tiles_per_item = (n + 127) // 128
            for rounds_wanted in (1, 2, 4, 8):
                # heads * q_tiles = rounds * sms exactly where possible
                heads = max(1, rounds_wanted * sms // q_tiles)
                items = heads * q_tiles
                items_per_cta = -(-items // sms)
                t = kernel_us(n, heads, args.dim)
                rows.append((1.0, items_per_cta * tiles_per_item, items_per_cta))
                times.append(t)
                print(f"Q prepass={mode} D={args.dim} N={n:5d} heads={heads:4d} items={items:5d} "
                      f"items/CTA={items_per_cta:3d} tiles/CTA={items_per_cta * tiles_per_item:4d}: {t:8.1f} us",
                      flush=True)
        a, b, c = np.linalg.lstsq(np.array(rows), np.array(times), rcond=None)[0]
        fit = np.array(rows) @ np.array([a, b, c])
        worst = max(abs(f - t) / t for f, t in zip(fit, times))
        print(f"Q prepass={mode}: fixed {a:.1f} us + {b:.3f} us per key tile + {c:.2f} us per item "
              f"(worst fit error {100 * worst:.1f}%)", flush=True)


def by_rows(args, sms):
    per_item = {}
    for rows in (192, 128, 64):
        rounds = (1, 2, 3)
        times = [kernel_us(rows, r * sms, args.dim, nk=args.keys, kv_heads=1) for r in rounds]
        slope, _ = np.polyfit(rounds, times, 1)
        per_item[rows] = slope
        print(f"D={args.dim} keys={args.keys} rows={rows:3d}: " +
              ", ".join(f"{r} round(s) {t:.1f} us" for r, t in zip(rounds, times)) +
              f"; {slope:.1f} us per item, {slope / per_item[192]:.3f} of a 192-row item", flush=True)


if __name__ == "__main__":
    main()
