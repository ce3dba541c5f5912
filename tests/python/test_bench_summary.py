"""The benchmark's pieces that need no GPU (bench/bench_attention.py): its summary from fabricated
rows, the order of its rounds, its NVML access, which must degrade to no clocks where the
driver's library is missing (CI) and read a plausible clock where it is present, and the rule that
an SDPA method runs only inside the context that chooses its backend."""

from __future__ import annotations

import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "bench"))
import bench_attention  # noqa: E402
from nvml_queries import Nvml  # noqa: E402


def row(method, ms, mhz=None, n=4096):
    r = {"method": method, "B": 2, "H": 32, "N": n, "D": 128, "causal": False, "ms": ms,
         "tops": 4 * 2 * 32 * n * n * 128 / ms / 1e9, "ms_q1": ms, "ms_q3": ms}
    if mhz is not None:
        r["sm_mhz"] = mhz
    return r


def test_summary_prints_ratios_clocks_and_capping(capsys):
    rows = [row("sage", 0.72, 1900), row("sdpa-cudnn", 0.9, 1600),
            row("sage", 0.1, n=1024), row("sdpa-cudnn", 0.1, n=1024)]
    for r in rows[:2]:
        r["shape_power_capped_ms"] = 212.5
    bench_attention.print_summary(rows)
    lines = capsys.readouterr().out.splitlines()
    line_4k = next(line for line in lines if line.split()[:3] == ["128", "0", "4096"])
    line_1k = next(line for line in lines if line.split()[:3] == ["128", "0", "1024"])
    assert line_4k.split("|")[-2].split()[0] == "1.25"  # sage / cuDNN: 0.9 ms against 0.72
    assert line_4k.split("|")[-1].split() == ["1900", "1600", "212"]  # (212.5 rounds half to even)
    assert line_1k.split("|")[-2].split()[0] == "1.00"
    assert line_1k.split("|")[-1].split() == ["-", "-", "-"]  # no NVML: no clocks, no capping time
    header = next(line for line in lines if "MHz sage" in line)
    for label, value in (("MHz sage", "1900"), ("cudnn", "1600"), ("capped ms", "212")):
        label_end = header.rindex(label) + len(label)  # columns are right-aligned under their labels
        assert line_4k.rindex(value) + len(value) == label_end, (label, header, line_4k)


def test_nvml_is_optional(capsys):
    nvml = Nvml.open_or_none(torch.cuda.device_count())
    if nvml is None:  # no driver library (CI), or several GPUs: said, and the benchmark records no clocks
        assert "NVML unavailable" in capsys.readouterr().out
        return
    mhz = nvml.sm_clock_mhz()
    assert 100 <= mhz <= 5000, f"SM clock {mhz} MHz"


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5])
def test_balanced_rounds_put_every_method_after_every_other_once_a_cycle(n):
    cycle = [bench_attention.round_order(n, r) for r in range(max(1, n - 1))]
    for order in cycle:
        assert sorted(order) == list(range(n))
    sequence = [m for order in cycle for m in order]
    pairs = list(zip(sequence, sequence[1:] + sequence[:1]))  # read around: the next cycle follows
    if n > 1:
        assert sorted(pairs) == sorted((a, b) for a in range(n) for b in range(n) if a != b)
    assert bench_attention.round_order(n, len(cycle)) == cycle[0]  # then the cycle repeats


def test_rotated_order_keeps_each_method_after_the_same_one():
    orders = [bench_attention.round_order(4, r, "rotated") for r in range(4)]
    assert orders[1] == [1, 2, 3, 0]
    pairs = {(a, b) for order in orders for a, b in zip(order, order[1:])}
    assert pairs == {(0, 1), (1, 2), (2, 3), (3, 0)}


def test_interleaved_rounds_time_every_method_and_drop_a_failing_one(monkeypatch):
    calls = []

    def fake_call_times_ms(fn, sets, warmup, iters, nvml):
        calls.append(fn)
        if fn == "broken" and calls.count("broken") == 2:
            raise RuntimeError("second round fails")
        return [float(len(calls))] * iters, [1980] * iters

    monkeypatch.setattr(bench_attention, "call_times_ms", fake_call_times_ms)
    fns = {"a": "a", "broken": "broken", "c": "c"}
    timed = bench_attention.interleaved_times_ms(fns, None, rounds=4, iters=2, warmup=0)
    assert set(timed) == {"a", "c"}
    for name in ("a", "c"):
        times, clocks = timed[name]
        assert len(times) == 8 and clocks == [1980] * 8
    assert calls.count("broken") == 2  # not called again once it failed
    first_rounds = [calls[i:i + 3] for i in (0, 3)]
    assert all(sorted(r) == ["a", "broken", "c"] for r in first_rounds)


def test_sdpa_methods_choose_their_backend_once_around_their_calls():
    # The MATH backend runs on CPU tensors: the same rule as cuDNN's and FlashAttention's methods.
    from torch.nn.attention import SDPBackend

    q, k, v = (torch.randn(1, 2, 5, 8) for _ in range(3))
    run = bench_attention.sdpa(SDPBackend.MATH, causal=True)
    with pytest.raises(RuntimeError, match="outside its method_context"):
        run(q, k, v)  # SDPA would pick a backend of its own
    flash_before = torch.backends.cuda.flash_sdp_enabled()
    with bench_attention.method_context(run):
        assert not torch.backends.cuda.flash_sdp_enabled()  # only MATH is on inside
        with bench_attention.method_context(run):  # nested: still inside after the inner one ends
            pass
        assert not torch.backends.cuda.flash_sdp_enabled()
        out = run(q, k, v)
    assert torch.backends.cuda.flash_sdp_enabled() == flash_before  # restored
    expected = torch.nn.functional.scaled_dot_product_attention(q.double(), k.double(), v.double(), is_causal=True)
    assert torch.allclose(out.double(), expected, atol=1e-5)
    with pytest.raises(RuntimeError, match="outside its method_context"):
        run(q, k, v)
    with bench_attention.method_context(lambda q, k, v: None):  # ours: no context, nothing to choose
        pass
