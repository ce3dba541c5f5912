"""The benchmark's pieces that need no GPU (bench/bench_attention.py): its summary from fabricated
rows, the order of its rounds, and its NVML access, which must degrade to no clocks where the
driver's library is missing (CI) and read a plausible clock where it is present."""

from __future__ import annotations

import os
import sys

import pytest

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


def test_nvml_is_optional(capsys):
    nvml = Nvml.open_or_none(0)
    if nvml is None:  # no driver library (CI): said, and the benchmark records no clocks
        assert "NVML unavailable" in capsys.readouterr().out
        return
    mhz = nvml.sm_clock_mhz()
    assert 100 <= mhz <= 5000, f"SM clock {mhz} MHz"


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5])
def test_balanced_order_puts_every_method_after_every_other_equally_often(n):
    cycle = n if n % 2 == 0 else 2 * n
    rows = [bench_attention.round_order(n, r) for r in range(cycle)]
    for row in rows:
        assert sorted(row) == list(range(n))
    firsts = [row[0] for row in rows]
    assert all(firsts.count(m) == cycle // n for m in range(n))
    follows = {}
    for row in rows:
        for a, b in zip(row, row[1:]):
            follows[(a, b)] = follows.get((a, b), 0) + 1
    expected = {(a, b) for a in range(n) for b in range(n) if a != b}
    assert set(follows) == expected
    assert len(set(follows.values())) <= 1  # each ordered pair equally often
    assert bench_attention.round_order(n, cycle) == rows[0]  # then the cycle repeats


def test_rotated_order_keeps_each_method_after_the_same_one():
    rows = [bench_attention.round_order(4, r, "rotated") for r in range(4)]
    assert rows[1] == [1, 2, 3, 0]
    pairs = {(a, b) for row in rows for a, b in zip(row, row[1:])}
    assert pairs == {(0, 1), (1, 2), (2, 3), (3, 0)}
