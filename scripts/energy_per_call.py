#!/usr/bin/env python3
"""Energy and power of one call of ours and of SDPA cuDNN's, from NVML (on a GPU machine).

Session 62 traced the benchmark's drift to the GPU's power capping: a method's time moves in steps
of 4-15%, not by the same factor for ours and cuDNN's. This script asks whether our call's own power
draw is what sets its clocks: for each method, in rounds that alternate the methods, it launches
--calls calls back to back (the benchmark's input sets, rotating) and reads NVML's total-energy
counter (mJ) before and after them and the SM clock while the last of them run, so that it prints
per round and method the energy of one call, the mean power over the calls, the time per call and
that clock; then the medians over the rounds, and how many microseconds of power capping
the driver counted during the whole run (NVML's violation counter of the power policy).

NVML through ctypes (bench/nvml_queries.py, on the driver's own library): no Python package needed.

  PYTHONPATH=build-dev/python/pkg python3 scripts/energy_per_call.py [--n 4096] [--d 128] [--causal 0]
                                                                      [--calls 2000] [--rounds 4]
"""
import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "bench"))
from bench_attention import input_sets, method_context, sage_end_to_end, sdpa  # noqa: E402  (the benchmark's own calls)
from nvml_queries import NVML_PERF_POLICY_POWER, NVML_PERF_POLICY_THERMAL, Nvml  # noqa: E402
from torch.nn.attention import SDPBackend  # noqa: E402


def measure(fn, sets, calls, nvml):
    """(mJ per call, mean W, us per call, SM MHz near the end) of `calls` calls launched back to back."""
    for i in range(3):
        fn(*sets[i % len(sets)])
    torch.cuda.synchronize()
    e0, t0 = nvml.energy_mj(), time.perf_counter()
    for i in range(calls):
        fn(*sets[i % len(sets)])
    busy_mhz = nvml.sm_clock_mhz()  # (the launch queue is still full here: the GPU is busy)
    torch.cuda.synchronize()
    t1, e1 = time.perf_counter(), nvml.energy_mj()
    seconds = t1 - t0
    return (e1 - e0) / calls, (e1 - e0) / 1e3 / seconds, seconds / calls * 1e6, busy_mhz


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=4096)
    ap.add_argument("--d", type=int, default=128)
    ap.add_argument("--causal", type=int, default=0)
    ap.add_argument("--calls", type=int, default=2000)  # ~1.4 s at 4K: the counter moves in coarse steps
    ap.add_argument("--rounds", type=int, default=4)
    args = ap.parse_args()
    nvml = Nvml(torch.cuda.device_count())
    sets = input_sets(2, 32, args.n, args.d, torch.bfloat16, "cuda")
    causal = bool(args.causal)
    fns = {"sage": sage_end_to_end(causal), "sdpa-cudnn": sdpa(SDPBackend.CUDNN_ATTENTION, causal)}
    names = list(fns)
    power0, thermal0 = nvml.violation_ns(NVML_PERF_POLICY_POWER), nvml.violation_ns(NVML_PERF_POLICY_THERMAL)
    rows = {name: [] for name in names}
    print(f"{torch.cuda.get_device_name()}, B=2 H=32 N={args.n} D={args.d} causal={args.causal}, "
          f"{args.calls} calls back to back per round and method")
    for r in range(args.rounds):
        for name in names[r % 2:] + names[:r % 2]:
            with method_context(fns[name]):
                mj, watts, us, mhz = measure(fns[name], sets, args.calls, nvml)
            rows[name].append((mj, watts, us, mhz))
            print(f"  round {r} {name:11s} {mj:8.1f} mJ/call {watts:6.0f} W {us:8.1f} us/call  SM {mhz} MHz")
    print("medians over the rounds:")
    for name in names:
        mj, watts, us, mhz = (statistics.median(v) for v in zip(*rows[name]))
        print(f"  {name:11s} {mj:8.1f} mJ/call {watts:6.0f} W {us:8.1f} us/call  SM {mhz:.0f} MHz")
    print(f"power capping during the run: {(nvml.violation_ns(NVML_PERF_POLICY_POWER) - power0) / 1e3:.0f} us, "
          f"thermal: {(nvml.violation_ns(NVML_PERF_POLICY_THERMAL) - thermal0) / 1e3:.0f} us")


if __name__ == "__main__":
    main()
