#!/usr/bin/env python3
"""The rounds model of the non-causal sm90 schedule, and what key splits of its short items could gain.

Model (docs/perf-notes.md, sessions 34 and 44; H200, D = 128, 4K keys): a 192-row item costs its key
tiles plus 2.3 tile times, an item of 128 rows (one consumer idle) 0.73 per tile plus 2.3. A head of
N rows gets `full` items of 192 rows (static rounds over the CTAs, forward then backward, as the
kernel takes them) and short items of 128 rows for the rest (a head's last one counted whole,
as the host's choice of full items counts it, sm90 noncausal_full_items). Printed per length: the
busiest CTA's work today (that choice), and with the short items' keys split
  - in equal pieces (2-4), each piece paying the fixed 2.3 and a merge, assigned greedily, longest
    first, to the least loaded CTA (a rule the kernel's static rounds could at best match);
  - stream-K style: after the full items, the short items' key tiles laid end to end and cut into
    one run per CTA sized to even out the loads (a run that crosses items pays 2.3 and a merge per
    piece).
No split was built; this is what the model says one could keep of the ceiling measured in session
45 (short items at half their keys: the kernel -3.2% at 4K).

  python3 scripts/rounds_model.py [--ctas 132] [--heads 64] [--merge 1.0] [N ...]
"""
import argparse
import heapq

FIXED, SHORT_RATE = 2.3, 0.73


def static_loads(costs, ctas):
    loads = [0.0] * ctas
    for i, c in enumerate(costs):
        r, j = divmod(i, ctas)
        loads[j if r % 2 == 0 else ctas - 1 - j] += c
    return loads


def schedule(n, tiles, heads, full):
    rest = n - full * 192
    shorts = (rest + 127) // 128 if rest > 0 else 0
    return [tiles + FIXED] * (full * heads), shorts * heads


def today(n, tiles, heads, ctas):
    best = None
    for full in range(n // 192, -1, -1):
        fulls, shorts = schedule(n, tiles, heads, full)
        load = max(static_loads(fulls + [SHORT_RATE * tiles + FIXED] * shorts, ctas))
        if best is None or load < best[0]:
            best = (load, full)
    return best


def equal_pieces(n, tiles, heads, ctas, full, pieces, merge):
    fulls, shorts = schedule(n, tiles, heads, full)
    loads = static_loads(fulls, ctas)
    sizes = [tiles // pieces + (1 if k < tiles % pieces else 0) for k in range(pieces)]
    items = sorted((SHORT_RATE * t + FIXED + merge for t in sizes for _ in range(shorts)), reverse=True)
    heap = [(l, c) for c, l in enumerate(loads)]
    heapq.heapify(heap)
    for it in items:
        l, c = heapq.heappop(heap)
        heapq.heappush(heap, (l + it, c))
    return max(l for l, _ in heap)


def stream_k(n, tiles, heads, ctas, full, merge):
    fulls, shorts = schedule(n, tiles, heads, full)
    loads = static_loads(fulls, ctas)
    total = shorts * tiles
    lo, hi = max(loads), max(loads) + total
    for _ in range(60):  # the finish time whose runs cover every short tile
        mid = (lo + hi) / 2
        runs = sum(max(0.0, (mid - l - FIXED - merge) / SHORT_RATE) for l in loads)
        lo, hi = (lo, mid) if runs >= total else (mid, hi)
    start, worst = 0.0, 0.0
    for l in loads:
        end = start + max(0.0, (hi - l - FIXED - merge) / SHORT_RATE)
        a, b = round(start), min(round(end), total)
        cost = l if b <= a else l + SHORT_RATE * (b - a) + ((b - 1) // tiles - a // tiles + 1) * (FIXED + merge)
        worst, start = max(worst, cost), end
    return worst


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ctas", type=int, default=132)
    ap.add_argument("--heads", type=int, default=64, help="B * H")
    ap.add_argument("--merge", type=float, default=1.0, help="a piece's merge, in tile times")
    ap.add_argument("n", type=int, nargs="*", default=[1024, 4096])
    a = ap.parse_args()
    for n in a.n:
        tiles = (n + 127) // 128
        load, full = today(n, tiles, a.heads, a.ctas)
        fulls, shorts = schedule(n, tiles, a.heads, full)
        mean = (sum(fulls) + shorts * (SHORT_RATE * tiles + FIXED)) / a.ctas
        print(f"N={n}: {full} full items per head, busiest CTA {load:.1f} (mean {mean:.1f})")
        for pieces in (2, 3, 4):
            w = equal_pieces(n, tiles, a.heads, a.ctas, full, pieces, a.merge)
            print(f"  short items in {pieces} equal key pieces, LPT: {w:.1f} ({(w / load - 1) * 100:+.1f}%)")
        w = stream_k(n, tiles, a.heads, a.ctas, full, a.merge)
        print(f"  stream-K runs over the short items' tiles: {w:.1f} ({(w / load - 1) * 100:+.1f}%)")


if __name__ == "__main__":
    main()
