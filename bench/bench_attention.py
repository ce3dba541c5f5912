#!/usr/bin/env python3
"""Benchmark: sage-attention vs PyTorch SDPA (cuDNN and FlashAttention-2
backends), in the same run on the same GPU.

Methods (bf16 in, bf16 out):
  sage         sageattn() end to end: quantization pre-pass + attention kernel
  sage-portable  the same through the package's portable binding (not by default: it shows the
               host time that sage_attention._torch_calls saves)
  sage-kernel  the attention kernel alone, on inputs the pre-pass already quantized
  sdpa-cudnn   torch SDPA, CUDNN_ATTENTION backend
  sdpa-flash   torch SDPA, FLASH_ATTENTION backend
               (each SDPA backend is chosen around a round's calls of its method, as a user
               sets it once, not inside every timed call: sdpa)

Times are medians of CUDA-event timings, one call at a time, over rotating input
sets whose total size exceeds the L2 cache. The methods of a shape are timed in
interleaved rounds (--rounds, each method --iters calls a round), so that the GPU's clocks
drifting over a run (warming up, power limits) weigh on every method alike. --order says how a
round's order changes: "balanced" (the default; balanced_rounds) makes each method come directly
after each other method equally often, round boundaries included, over a whole number of cycles
(n - 1 rounds for n methods: 3 for the default 4), so that what one method leaves behind (the
power state after FlashAttention-2's long calls) does not fall on the same successor every time;
"rotated" shifts the order by one each round (sessions 61-71, where each method always followed
the same one; with --rounds 5 --iters 10, their timing). --rounds 1 --iters 30 --order rotated
times each method in one block, as this benchmark did before session 61.
TOPS = 4*B*H*N*N*D (/2 causal) / time.
Writes bench/results/<gpu>-<date>.json (rows also carry the quartiles ms_q1, ms_q3 and, where
NVML answers, the median SM clock during the method's calls, sm_mhz, and the time the driver spent
capping power while the shape ran, shape_power_capped_ms: bench/nvml_queries.py says why. The clock
is one sample a call, which can read the top clock while the driver counts capping: session 71).

  python3 bench/bench_attention.py [--quick] [--out FILE] [--dims 128] [--sizes 4096,16384] [--causal 0]
                                   [--methods sage,sage-kernel,sdpa-cudnn] [--rounds 6] [--iters 8] [--warmup 3]
                                   [--order balanced|rotated]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import json
import os
import statistics
import subprocess
import sys
import time

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

import sage_attention
from sage_attention import _attention as sage_impl
from sage_attention import _ops

from nvml_queries import NVML_PERF_POLICY_POWER, Nvml  # (bench/, beside this file)

L2_BYTES = 64 << 20


def input_sets(b, h, n, d, dtype, device):
    """Enough (q, k, v) sets that one pass over them does not fit in L2."""
    per_set = 3 * b * h * n * d * 2
    count = max(1, min(8, (4 * L2_BYTES) // per_set + 1))
    return [tuple(torch.randn(b, h, n, d, dtype=dtype, device=device) for _ in range(3)) for _ in range(count)]


def power_capped_ns(nvml):
    """The driver's count of power-capping time (ns), or None without NVML or where the board does
    not keep it."""
    try:
        return nvml.violation_ns(NVML_PERF_POLICY_POWER) if nvml is not None else None
    except RuntimeError:
        return None


def timed_calls(fn, sets, warmup, iters, after_record=None):
    """(CUDA-event ms, host us until fn returned) of `iters` calls, one at a time, after `warmup`
    untimed ones, all inside the method's context (method_context: an SDPA method's backend is chosen
    around them, outside the spans). The two host clock reads sit inside each span (~0.1 us);
    `after_record()` runs after each call's end event is recorded, before the host waits for it:
    outside the span."""
    times = []
    with method_context(fn):
        for i in range(warmup):
            fn(*sets[i % len(sets)])
        torch.cuda.synchronize()
        for i in range(iters):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            args = sets[i % len(sets)]
            start.record()
            t0 = time.perf_counter()
            fn(*args)
            t1 = time.perf_counter()
            end.record()
            if after_record is not None:
                after_record()
            end.synchronize()
            times.append((start.elapsed_time(end), (t1 - t0) * 1e6))
    return times


def call_times_ms(fn, sets, warmup, iters, nvml=None):
    """CUDA-event times of `iters` calls (timed_calls), and the SM clock (MHz) NVML gives while each
    call runs (none without `nvml`): it is read once the host has queued the call, which for every
    method here is before its GPU work ends."""
    clocks = []

    def read_clock():
        try:
            clocks.append(nvml.sm_clock_mhz())
        except RuntimeError:
            pass  # a failed query costs this call its clock, not the method its times

    timed = timed_calls(fn, sets, warmup, iters, read_clock if nvml is not None else None)
    return [ms for ms, _ in timed], clocks


@functools.lru_cache(maxsize=None)
def balanced_rounds(n):
    """A cycle of rounds for n methods: n - 1 rounds (one where n <= 2), each with every method once,
    in which every method comes directly after each other method exactly once when the rounds are
    read one after another and around, their boundaries included (only the untimed warm-up calls
    part two rounds, as they part two methods inside a round). Found by a depth-first search, which
    is instant for the benchmark's at most five methods."""
    if n <= 2:
        return (tuple(range(n)),)
    sequence, used = [], set()

    def extend():
        if len(sequence) == n * (n - 1):
            return sequence[-1] != sequence[0] and (sequence[-1], sequence[0]) not in used
        in_round = set(sequence[len(sequence) - len(sequence) % n:])
        for m in range(n):
            pair = (sequence[-1], m) if sequence else None
            if m in in_round or (pair and (pair[0] == m or pair in used)):
                continue
            if pair:
                used.add(pair)
            sequence.append(m)
            if extend():
                return True
            sequence.pop()
            used.discard(pair)
        return False

    if not extend():
        raise RuntimeError(f"no balanced cycle of rounds for {n} methods")
    return tuple(tuple(sequence[i:i + n]) for i in range(0, n * (n - 1), n))


def round_order(n, r, order="balanced"):
    """The order of n methods (their indices) in round r: "rotated", shifted by r; "balanced",
    round r of balanced_rounds(n), repeated."""
    if order == "rotated":
        return [(i + r) % n for i in range(n)]
    cycle = balanced_rounds(n)
    return list(cycle[r % len(cycle)])


def interleaved_times_ms(fns, sets, rounds, iters, warmup, nvml=None, order="balanced"):
    """Each method's (call times, SM clocks) (call_times_ms) over `rounds` rounds of `iters` calls,
    every method once a round, in round_order. A method that fails is dropped (its error printed)."""
    names = list(fns)
    timed = {name: ([], []) for name in names}
    for r in range(rounds):
        for name in (names[i] for i in round_order(len(names), r, order)):
            if name not in timed:
                continue
            try:
                t, c = call_times_ms(fns[name], sets, warmup, iters, nvml)
            except Exception as e:
                print(f"  {name}: failed: {e}", file=sys.stderr)
                del timed[name]
                continue
            timed[name][0].extend(t)
            timed[name][1].extend(c)
    return timed


def sdpa(backend, causal):
    """SDPA on one backend. The backend is chosen by `run.context()` (sdpa_kernel), which the timers
    enter around a method's calls (method_context: the benchmark once a round), as a user sets the
    backend once: entered per call, sdpa_kernel's Python (~14 us a call on the development machine's
    host, enter and exit) would sit inside a one-call-at-a-time span, which the benchmark did until
    session 72. A call outside that context raises, rather than let SDPA pick a backend of its own
    (a caller that enters another sdpa_kernel inside it is not caught)."""
    entered = [0]

    @contextlib.contextmanager
    def context():
        with sdpa_kernel(backend):
            entered[0] += 1
            try:
                yield
            finally:
                entered[0] -= 1

    def run(q, k, v):
        if not entered[0]:
            raise RuntimeError(f"sdpa({backend.name}) called outside its method_context()")
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal)

    run.context = context
    return run


def method_context(fn):
    """The context a timed method's calls run in: an SDPA method's backend (sdpa), or none."""
    return getattr(fn, "context", contextlib.nullcontext)()


def sage_end_to_end(causal):
    return lambda q, k, v: sage_attention.sageattn(q, k, v, tensor_layout="HND", is_causal=causal)


def sage_portable_binding(causal):
    """`sage` through the package's portable binding (_C with tensor tuples) instead of
    _torch_calls: the same GPU work, the host time of a package built without it."""
    fast = _ops._torch_calls

    def run(q, k, v):
        _ops._torch_calls = None
        try:
            return sage_attention.sageattn(q, k, v, tensor_layout="HND", is_causal=causal)
        finally:
            _ops._torch_calls = fast
    return run


def sage_kernel_only(sets, causal):
    """Runs the pre-pass once per input set, then times only the kernel."""
    options = {"layout": "HND", "causal": causal, "return_lse": False}
    prepared = {}
    for q, k, v in sets:
        out = torch.empty_like(q)
        specs = tuple(sage_impl._spec(t) for t in (q, k, v, out)) + (None,)
        nbytes = sage_attention._C.workspace_size(*specs, options)
        ws = torch.empty(nbytes, dtype=torch.uint8, device=q.device)
        stream = torch.cuda.current_stream().cuda_stream
        sage_attention._C.forward(*specs, options, ws.data_ptr(), nbytes, stream)
        prepared[id(q)] = (specs, ws, nbytes)

    def run(q, k, v):
        specs, ws, nbytes = prepared[id(q)]
        sage_attention._C._attention_kernel_only(*specs, options, ws.data_ptr(), nbytes,
                                                 torch.cuda.current_stream().cuda_stream)
    return run


# The methods in the order they are timed: each makes the function to time from (input sets, causal).
METHODS = {
    "sage": lambda sets, causal: sage_end_to_end(causal),
    "sage-portable": lambda sets, causal: sage_portable_binding(causal),
    "sage-kernel": sage_kernel_only,
    "sdpa-cudnn": lambda sets, causal: sdpa(SDPBackend.CUDNN_ATTENTION, causal),
    "sdpa-flash": lambda sets, causal: sdpa(SDPBackend.FLASH_ATTENTION, causal),
}


def git_commit():
    # SAGE_COMMIT first: a copy of the tree (the GPU machine's) may carry a
    # stale .git, so the caller names the commit it copied.
    if os.environ.get("SAGE_COMMIT"):
        return os.environ["SAGE_COMMIT"]
    try:
        tree = os.path.dirname(os.path.abspath(__file__))  # this checkout's, wherever the run starts
        commit = subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], text=True, cwd=tree,
                                         stderr=subprocess.DEVNULL).strip()
        changed = subprocess.check_output(["git", "status", "--porcelain", "--untracked-files=no"], text=True,
                                          cwd=tree, stderr=subprocess.DEVNULL).strip()
    except Exception:
        return "unknown"
    return commit + ("+uncommitted" if changed else "")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer sizes (N in 1024, 4096)")
    ap.add_argument("--out", help="JSON path (default bench/results/<gpu>-<date>.json)")
    ap.add_argument("--dims", default="64,128", help="head dims (comma-separated)")
    ap.add_argument("--sizes", default=None, help="sequence lengths (default 1024,4096,16384; --quick 1024,4096)")
    ap.add_argument("--causal", default="0,1", help="causal settings to run (0, 1 or 0,1)")
    ap.add_argument("--methods", default="sage,sage-kernel,sdpa-cudnn,sdpa-flash",
                    help="methods to time (comma-separated; A/B runs of two builds can skip sdpa-flash; "
                         "sage-portable: sage through the portable binding)")
    ap.add_argument("--rounds", default="6", help="interleaved rounds per shape (1: each method in one block)")
    ap.add_argument("--iters", default="8", help="timed calls per method and round")
    ap.add_argument("--order", default="balanced", choices=("balanced", "rotated"),
                    help="how each round orders the methods (round_order)")
    ap.add_argument("--warmup", default="3", help="untimed calls before each method's timed ones in a round")
    args = ap.parse_args()
    (rounds,) = positive_ints(ap, "--rounds", args.rounds)
    (iters,) = positive_ints(ap, "--iters", args.iters)
    (warmup,) = positive_ints(ap, "--warmup", args.warmup)
    wanted = args.methods.split(",")
    if not wanted or any(m not in METHODS for m in wanted):
        ap.error(f"--methods takes a comma-separated subset of {', '.join(METHODS)}")
    dims = positive_ints(ap, "--dims", args.dims)
    ns = (positive_ints(ap, "--sizes", args.sizes) if args.sizes
          else [1024, 4096] if args.quick else [1024, 4096, 16384])
    causal_settings = args.causal.split(",")
    if not causal_settings or any(c not in ("0", "1") for c in causal_settings):
        ap.error(f"--causal takes 0, 1 or 0,1, not {args.causal!r}")
    if not torch.cuda.is_available():
        sys.exit("bench: no CUDA GPU; the benchmark needs one")

    dev = torch.device("cuda")
    gpu = torch.cuda.get_device_name(dev)
    nvml = Nvml.open_or_none(torch.cuda.device_count())
    B, H = 2, 32
    path = args.out or os.path.join(os.path.dirname(__file__), "results",
                                    f"{gpu.replace(' ', '_')}-{datetime.date.today().isoformat()}.json")
    rows = []
    # Which binding "sage" goes through: a package staged without its _torch_calls module (or
    # under another torch) pays 8-17 us more host time per call, which the 1K cells show.
    binding = "torch_calls" if _ops._torch_calls is not None else "portable"
    print(f"GPU: {gpu}  torch {torch.__version__}  sage-attention {sage_attention.__version__}  "
          f"binding {binding}", flush=True)
    print(f"timing: {rounds} interleaved round(s) ({args.order} order) of {iters} calls per method, each after "
          f"{warmup} untimed", flush=True)
    methods = len(set(wanted))
    cycle = len(balanced_rounds(methods)) if args.order == "balanced" else methods
    if rounds > 1 and rounds % cycle:
        print(f"note: {rounds} rounds are not a whole number of {args.order} cycles of {cycle} rounds for "
              f"{methods} methods: the order is balanced only over whole cycles", flush=True)
    result = {"gpu": gpu, "torch": torch.__version__, "commit": git_commit(), "binding": binding,
              "timing": {"rounds": rounds, "iters_per_round": iters, "warmup_per_round": warmup,
                         "order": args.order},
              "rows": rows}
    for d in dims:
        for causal in (c == "1" for c in causal_settings):
            for n in ns:
                try:
                    sets = input_sets(B, H, n, d, torch.bfloat16, dev)
                except torch.cuda.OutOfMemoryError as e:
                    print(f"  D={d} causal={int(causal)} N={n}: skipped, inputs do not fit: {e}", file=sys.stderr)
                    continue
                flops = 4 * B * H * n * n * d / (2 if causal else 1)
                fns = {}
                for name in (m for m in METHODS if m in wanted):
                    try:  # a method that cannot run this shape fails alone
                        fns[name] = METHODS[name](sets, causal)
                    except Exception as e:
                        print(f"  {name}: failed: {e}", file=sys.stderr)
                capped_before = power_capped_ns(nvml)
                timed = interleaved_times_ms(fns, sets, rounds, iters, warmup, nvml, args.order)
                capped_after = power_capped_ns(nvml)
                capped_ms = (capped_after - capped_before) / 1e6 if None not in (capped_before, capped_after) else None
                for name, (times, clocks) in timed.items():
                    ms = statistics.median(times)
                    q1, _, q3 = statistics.quantiles(times, n=4) if len(times) > 1 else (ms, ms, ms)
                    row = {"method": name, "B": B, "H": H, "N": n, "D": d, "causal": causal,
                           "ms": round(ms, 4), "tops": round(flops / ms / 1e9, 1),
                           "ms_q1": round(q1, 4), "ms_q3": round(q3, 4)}
                    if clocks:
                        row["sm_mhz"] = statistics.median(clocks)
                    if capped_ms is not None:
                        row["shape_power_capped_ms"] = round(capped_ms, 1)
                    rows.append(row)
                del fns
                print_rows([r for r in rows if r["N"] == n and r["D"] == d and r["causal"] == causal])
                write_result(path, result)  # after every shape: an interrupted run keeps what it measured
                del sets
                torch.cuda.empty_cache()

    if not rows:
        sys.exit("bench: nothing ran (every method failed or every shape was skipped; see above)")
    print(f"\nwrote {path}\n")
    print_summary(rows)


def positive_ints(ap, flag, text):
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        ap.error(f"{flag} takes comma-separated positive integers, not {text!r}")
    if any(v <= 0 for v in values):
        ap.error(f"{flag} takes comma-separated positive integers, not {text!r}")
    return values


def write_result(path, result):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(result, f, indent=1)


def print_rows(rows):
    for r in rows:
        clock = f"  SM {r['sm_mhz']:.0f} MHz" if "sm_mhz" in r else ""
        print(f"  D={r['D']:<4} causal={int(r['causal'])} N={r['N']:<6} {r['method']:<12} "
              f"{r['ms']:9.3f} ms ({r['ms_q1']:.3f}-{r['ms_q3']:.3f}) {r['tops']:8.1f} TOPS{clock}", flush=True)


def print_summary(rows):
    """TOPS per method and sage's ratios to the SDPA backends; where NVML answered, the two methods'
    (sage, cuDNN) median SM clocks and the shape's power-capping time beside them."""
    keys = sorted({(r["D"], r["causal"], r["N"]) for r in rows})
    print(f"{'D':>4} {'causal':>6} {'N':>6} | {'sage':>7} {'kernel':>7} {'cudnn':>7} {'flash':>7} | "
          f"{'sage/cudnn':>10} {'sage/flash':>10} {'kern/cudnn':>10} {'port/cudnn':>10} | "
          f"{'MHz sage':>8} {'cudnn':>5} {'capped ms':>9}")
    for d, causal, n in keys:
        shape = {r["method"]: r for r in rows if (r["D"], r["causal"], r["N"]) == (d, causal, n)}
        t = {name: r["tops"] for name, r in shape.items()}
        def ratio(a, b):
            return f"{t[a] / t[b]:10.2f}" if a in t and b in t else f"{'-':>10}"
        sage_mhz, cudnn_mhz = (f"{shape[m]['sm_mhz']:.0f}" if "sm_mhz" in shape.get(m, {}) else "-"
                               for m in ("sage", "sdpa-cudnn"))
        capped = next((f"{r['shape_power_capped_ms']:.0f}" for r in shape.values() if "shape_power_capped_ms" in r),
                      "-")
        print(f"{d:>4} {int(causal):>6} {n:>6} | {t.get('sage', 0):7.0f} {t.get('sage-kernel', 0):7.0f} "
              f"{t.get('sdpa-cudnn', 0):7.0f} {t.get('sdpa-flash', 0):7.0f} | "
              f"{ratio('sage', 'sdpa-cudnn')} {ratio('sage', 'sdpa-flash')} {ratio('sage-kernel', 'sdpa-cudnn')} "
              f"{ratio('sage-portable', 'sdpa-cudnn')} | {sage_mhz:>8} {cudnn_mhz:>5} {capped:>9}")


if __name__ == "__main__":
    main()
