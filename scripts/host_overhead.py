"""Host time of one sageattn call, and where it goes (on a GPU machine).

By default a tiny problem (B=H=1, N=128, D=128) keeps the GPU idle, so wall time per call
is host time: Python, the dispatcher, the C++ core (validation, pointer
checks, TMA descriptors, launches). Each piece is timed alone over many calls.
With --n N (B=2, H=32, D=128 as the benchmark's shapes), each piece is timed from an idle GPU
instead, one call at a time after a synchronize, until the host returns (the median of 60):
the host time the benchmark's one-call-at-a-time timing sees before and between the launches.

  PYTHONPATH=build-dev/python/pkg python3 scripts/host_overhead.py [--n 4096]
"""

import argparse
import statistics
import time

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

import sage_attention as s
from sage_attention import _C, _ops


def wall_us(fn, n=2000):
    for _ in range(50):
        fn()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(n):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t) / n * 1e6


IDLE_CALLS = 60  # timed calls a piece from an idle GPU (--n)


def wall_us_from_idle(fn, n=IDLE_CALLS):
    for _ in range(5):
        fn()
    times = []
    for _ in range(n):
        torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e6)
    torch.cuda.synchronize()
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=None, help="B=2 H=32 N keys, timed from an idle GPU")
    cli = ap.parse_args()
    if cli.n is not None and cli.n <= 0:
        ap.error(f"--n takes a positive number of keys, not {cli.n}")
    shape = (1, 1, 128, 128) if cli.n is None else (2, 32, cli.n, 128)
    time_us = wall_us if cli.n is None else wall_us_from_idle
    if cli.n is not None:
        print(f"B=2 H=32 N={cli.n} D=128: host time of one call from an idle GPU "
              f"(median of {IDLE_CALLS})")
    q, k, v = [torch.randn(*shape, dtype=torch.bfloat16, device="cuda") for _ in range(3)]
    out, lse = _ops._new_outputs(q, "HND", False)
    args = _ops._with_defaults(())
    options = _ops._core_options(*args)
    specs = (_ops.tensor_spec(q), _ops.tensor_spec(k), _ops.tensor_spec(v), _ops.tensor_spec(out), None)
    nbytes = _C.workspace_size(*specs, options)
    ws = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    stream = torch.cuda.current_stream().cuda_stream
    pieces = {
        "sageattn (whole call)": lambda: s.sageattn(q, k, v),
        "torch.ops.sage_attention.forward": lambda: _ops.forward(q, k, v),
        "_forward_kernel (no dispatcher)": lambda: _ops._forward_kernel(q, k, v),
        "_torch_calls.forward (torch tensors in C++)": (
            (lambda: _ops._torch_calls.forward(q, k, v, options._address, _ops.MAX_HEAD_DIM))
            if _ops._torch_calls is not None else None),
        "_C.forward (C++ core alone)": lambda: _C.forward(*specs, options, ws.data_ptr(), nbytes, stream),
        "  _C.workspace_size (checks + dispatch)": lambda: _C.workspace_size(*specs, options),
        "  outputs + workspace (3 torch.empty)": lambda: (_ops._new_outputs(q, "HND", False),
                                                          torch.empty(nbytes, dtype=torch.uint8, device="cuda")),
        "  tensor_spec x4": lambda: (_ops.tensor_spec(q), _ops.tensor_spec(k), _ops.tensor_spec(v),
                                     _ops.tensor_spec(out)),
    }
    for name, fn in pieces.items():
        if fn is None:
            print(f"{name:40s} (not built)")
            continue
        print(f"{name:40s} {time_us(fn):7.1f} us", flush=True)
    _ops._torch_calls, fast = None, _ops._torch_calls
    print(f"{'sageattn, portable binding':40s} {time_us(lambda: s.sageattn(q, k, v)):7.1f} us")
    _ops._torch_calls = fast
    with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
        t = time_us(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v))
    print(f"{'sdpa cudnn (whole call)':40s} {t:7.1f} us")


if __name__ == "__main__":
    main()
