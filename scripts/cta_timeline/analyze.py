#!/usr/bin/env python3
"""Summary of one call's per-CTA timeline (the output of scripts/cta_timeline/run.sh).

Each REC line is one record of the diagnostic build (trace_ctas.cuh): the attention kernel's items
(when its producer started each item, how long it waited for the item's head flags), each attention
CTA's start and its consumers' ends, each head-job CTA's start and end, and each head job's start
and end and the end of its statistics read (its first read of the rows). Times are us from the
call's first kernel start. Prints, for the call picked:
  - each head-jobs launch: its CTAs, SMs, start and end, and its jobs' durations (K and V, and
    their statistics reads);
  - the attention CTAs' starts and ends, and their idle time at the end (the last CTA's end less
    each CTA's, summed: SM-us the end of the kernel leaves unused);
  - the flag waits (SM-us, and which rounds and heads waited more than 3 us);
  - items per CTA, item kinds, and the step between successive item starts per kind.

  python3 scripts/cta_timeline/analyze.py LOG [CALL ...]   (default: calls 5 to 7 of the 8 the run makes)
"""
import collections
import statistics
import sys

MASK32 = (1 << 32) - 1


def records(path, call):
    """(what, fields) of the REC lines of call `call`."""
    out = []
    for line in open(path):
        if line.startswith("REC "):
            f = line.split()
            if int(f[2]) == call:
                out.append((f[1], [int(x) for x in f[3:]]))
    return out


def timeline(recs):
    """The call's items, attention CTAs, head-job CTAs and jobs, in us from its first kernel start."""
    t0 = min([r[3] for _, r in recs if r[0] == 2] + [r[4] for _, r in recs if r[0] == 4])
    us = lambda t: (t - t0) / 1e3  # noqa: E731

    def from_low_bits(lo):
        # A time of which a record kept only the low 32 bits: the call lasts far less than 2^32 ns,
        # so its high bits are t0's (or one more).
        t = ((t0 >> 32) << 32) | lo
        return t + (1 << 32) if t < t0 - (1 << 31) else t

    def start_and_wait(word):
        # An item record packs its start (all 64 bits) plus the wait (ns) shifted up by 32: the low
        # 32 bits are the start's, the high ones the start's high bits plus the wait.
        t = from_low_bits(word & MASK32)
        return us(t), (((word >> 32) - (t >> 32)) & MASK32) / 1e3

    items, ctas, consumers, job_ctas, jobs = [], {}, collections.defaultdict(dict), [], []
    for _, r in recs:
        kind, cta, sm = r[0], r[1], r[2]
        if kind == 1:
            t, wait = start_and_wait(r[7])
            items.append(dict(cta=cta, sm=sm, round=r[3], bh=r[4], rows=r[5] >> 32, tiles=r[6], t=t, wait=wait))
        elif kind == 2:
            ctas[cta] = dict(sm=sm, start=us(r[3]), producer_end=us(r[4]))
        elif kind == 3:
            consumers[cta][r[3]] = us(r[4])
        elif kind == 4:
            job_ctas.append(dict(cta=cta, sm=sm, second=r[3], start=us(r[4]), end=us(r[5])))
        elif kind == 5:
            # (the last word: the CTA's cluster rank, the end of its statistics read's low 32 bits above it)
            jobs.append(dict(cta=cta, second=r[3], job=r[4], start=us(r[5]), end=us(r[6]),
                             stats=us(from_low_bits(r[7] >> 32))))
    for cta, c in ctas.items():
        c["end"] = max(consumers[cta].values()) if consumers[cta] else c["producer_end"]
    return items, ctas, job_ctas, jobs


def summarize(items, ctas, job_ctas, jobs):
    lines = []
    for second in (0, 1):
        launch = [c for c in job_ctas if c["second"] == second]
        if not launch:
            continue
        js = [j for j in jobs if j["second"] == second]
        k_jobs, v_jobs = [j for j in js if j["job"] % 2 == 0], [j for j in js if j["job"] % 2]
        dur = lambda sel: statistics.median([j["end"] - j["start"] for j in sel])  # noqa: E731
        read1 = lambda sel: statistics.median([j["stats"] - j["start"] for j in sel])  # noqa: E731
        lines.append(f"head-jobs launch {'2 (claims)' if second else '1'}: {len(launch)} CTAs on "
                     f"{len({c['sm'] for c in launch})} SMs, start {min(c['start'] for c in launch):.1f}-"
                     f"{max(c['start'] for c in launch):.1f} us, end {min(c['end'] for c in launch):.1f}-"
                     f"{max(c['end'] for c in launch):.1f}; {len(js)} job records, median K "
                     f"{dur(k_jobs):.1f} us (statistics read {read1(k_jobs):.1f}), V {dur(v_jobs):.1f} us "
                     f"({read1(v_jobs):.1f})")
    ends = sorted(c["end"] for c in ctas.values())
    starts = sorted(c["start"] for c in ctas.values())
    last = ends[-1]
    idle = sum(last - e for e in ends)
    lines.append(f"attention CTAs: {len(ctas)}, start {starts[0]:.1f} / {statistics.median(starts):.1f} / "
                 f"{starts[-1]:.1f} us (min / median / max), end {ends[0]:.1f} / {statistics.median(ends):.1f} / "
                 f"{last:.1f}")
    lines.append(f"idle at the end: {idle:.0f} SM-us, {idle / len(ends):.1f} us per CTA")
    waits = [i["wait"] for i in items]
    long_waits = collections.Counter((i["round"], i["bh"]) for i in items if i["wait"] > 3)
    lines.append(f"flag waits: {sum(waits):.0f} SM-us in all, {sum(w for w in waits if w > 3):.0f} in waits over 3 us "
                 f"(round, head): items {sorted(long_waits.items())}")
    later = sorted(i["wait"] for i in items if i["round"] >= 1)
    if later:
        lines.append("flag waits past round 0, quantiles 0/.25/.5/.75/.99: "
                     + " ".join(f"{later[int(q * (len(later) - 1))]:.2f}" for q in (0, .25, .5, .75, .99)))
    per_cta = collections.Counter(i["cta"] for i in items)
    lines.append(f"items per CTA (count: CTAs): {sorted(collections.Counter(per_cta.values()).items())}; "
                 f"item kinds (rows, key tiles): {sorted(collections.Counter((i['rows'], i['tiles']) for i in items).items())}")
    by_cta = collections.defaultdict(list)
    for i in items:
        by_cta[i["cta"]].append(i)
    steps = collections.defaultdict(list)
    for its in by_cta.values():
        its.sort(key=lambda i: i["round"])
        for a, b in zip(its[1:], its[2:]):  # (round 0's start includes the kernel's start)
            steps[a["rows"]].append(b["t"] - a["t"])
    for rows, v in sorted(steps.items()):
        lines.append(f"step between item starts, {rows}-row items: median {statistics.median(v):.1f} us (n={len(v)})")
    return lines


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    calls = [int(c) for c in sys.argv[2:]] or [5, 6, 7]
    for call in calls:
        recs = records(sys.argv[1], call)
        if not recs:
            print(f"call {call}: no records")
            continue
        print(f"== call {call}")
        for line in summarize(*timeline(recs)):
            print("  " + line)


if __name__ == "__main__":
    main()
