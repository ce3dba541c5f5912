"""sage_attention.calibration: scores, plans, the plan file, the run-time lookup and recordings
for `sage calibrate` (CPU: the INT4 path runs in the library's emulation)."""

from __future__ import annotations

import asyncio
import gc
import json
import math
import os
import shutil
import subprocess
import threading

import numpy as np
import pytest
import torch

from conftest import randn, reference_attention
from sage_attention import calibration, sageattn
from sage_attention.calibration import (Calibrator, Plan, Recorder, active_calibrator, active_plan,
                                        attention_score, exact_attention)

SHAPE = (1, 2, 64, 64)


def gaussian(seed):
    return tuple(randn(*SHAPE, seed=seed + i).bfloat16() for i in range(3))


def outliers(seed):
    """Three channels of Q and K at +-30 in every token: hostile to INT4's per-thread scales whatever
    the seed (scaling random values by 30 instead left some draws harmless: over fresh seeds the INT4
    scores of the two kinds overlapped; these stay below 0.34, Gaussian ones above 0.78)."""
    q, k, v = gaussian(seed)
    q, k = q.float(), k.float()
    q[..., :3] = 30 * torch.sign(q[..., :3])
    k[..., :3] = 30 * torch.sign(k[..., :3])
    return q.bfloat16(), k.bfloat16(), v


def calibrate_four_layers():
    """Layers 0, 2 Gaussian, 1, 3 with outliers; timesteps 0 and 10."""
    calibrator = Calibrator()
    for layer in range(4):
        for timestep in (0, 10):
            inputs = (outliers if layer % 2 else gaussian)(100 * layer + timestep)
            calibrator.record(*inputs, layer_id=layer, timestep=timestep)
    return calibrator


def with_scores(scores):
    calibrator = Calibrator()
    for layer, score in enumerate(scores):
        calibrator.add_score(layer, None, score)
    return calibrator


def int8_keys(plan):
    return sum(e.qk_format == "int8" for e in plan.entries)


def plan_document(entries, **header):
    document = {"format": "sage-attention calibration plan", "version": 1, "fraction_int8": 0.3,
                "int4_granularity": "per_thread", "default_qk_format": "int8", "entries": entries}
    document.update(header)
    return json.dumps(document)


def entry(layer, timestep, qk_format, score=0.5):
    return {"layer": layer, "timestep": timestep, "score": score, "calls": 1, "qk_format": qk_format}


def test_hostile_layers_get_int8():
    plan = calibrate_four_layers().make_plan(0.5)
    for timestep in (0, 10):
        assert [plan.decide(layer, timestep)[0] for layer in range(4)] == ["int4", "int8", "int4", "int8"]
    for e in plan.entries:
        assert e.calls == 1 and -1 < e.score < 1
        if e.layer % 2 == 0:
            assert e.score > 0.7


def test_score_is_the_metric_of_the_int4_output():
    q, k, v = gaussian(7)
    calibrator = Calibrator()
    score = calibrator.record(q, k, v, layer_id=0, is_causal=True)
    int4 = sageattn(q, k, v, is_causal=True, qk_format="int4", qk_granularity="per_thread")
    exact, _ = reference_attention(q, k, v, is_causal=True)  # (conftest's: independent of the module under test)
    cos = torch.nn.functional.cosine_similarity(int4.double().flatten(), exact.flatten(), dim=0).item()
    rel_l1 = ((int4.double() - exact).abs().sum() / exact.abs().sum()).item()
    assert score == pytest.approx(cos * (1 - rel_l1), rel=1e-12)
    assert calibrator.scores == {(0, None): (score, 1)}


def test_score_edge_cases():
    zeros = torch.zeros(4)
    assert attention_score(zeros, zeros) == 1.0
    assert attention_score(zeros, torch.ones(4)) == 0.0  # cos_sim 0, rel_l1 1
    assert math.isnan(attention_score(torch.tensor([1.0, float("nan")]), torch.ones(2)))
    assert math.isnan(attention_score(torch.tensor([1.0, float("inf")]), torch.ones(2)))


def test_exact_attention_matches_sdpa_with_gqa_and_nhd():
    q, k, v = randn(1, 4, 32, 16, seed=1), randn(1, 2, 48, 16, seed=2), randn(1, 2, 48, 16, seed=3)
    out, lse = exact_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), "NHD", True, 0.3,
                               "bottom_right")
    mask = torch.ones(32, 48, dtype=torch.bool).tril(48 - 32)
    expected = torch.nn.functional.scaled_dot_product_attention(
        q.double(), k.double().repeat_interleave(2, 1), v.double().repeat_interleave(2, 1), attn_mask=mask, scale=0.3)
    torch.testing.assert_close(out.transpose(1, 2), expected)
    assert lse.shape == (1, 4, 32)


def test_attention_returns_exact_output_while_calibrating():
    q, k, v = gaussian(3)
    calibrator = Calibrator()
    with calibrator:
        assert active_calibrator() is calibrator
        out, lse = calibrator.attention(q, k, v, layer_id=2, timestep=5, return_lse=True)
    assert active_calibrator() is None
    exact, exact_lse = exact_attention(q, k, v)
    assert out.dtype == torch.bfloat16 and lse.dtype == torch.float32
    torch.testing.assert_close(out, exact.bfloat16())
    torch.testing.assert_close(lse, exact_lse.float())
    assert list(calibrator.scores) == [(2, 5)]


def test_repeated_calls_are_averaged():
    a, b = gaussian(1), outliers(2)
    calibrator = Calibrator()
    score_a = calibrator.record(*a, layer_id=3, timestep=5)
    score_b = calibrator.record(*b, layer_id=3, timestep=5)
    assert calibrator.scores[(3, 5)] == (pytest.approx((score_a + score_b) / 2), 2)


def test_plan_is_deterministic():
    assert calibrate_four_layers().make_plan(0.3).to_json() == calibrate_four_layers().make_plan(0.3).to_json()


def test_bad_keys_and_fractions():
    calibrator = with_scores([0.5])
    with pytest.raises(ValueError, match="layer_id"):
        calibrator.add_score(-1, None, 0.5)
    with pytest.raises(ValueError, match="timestep"):
        calibrator.add_score(0, -1, 0.5)
    with pytest.raises(ValueError, match="score"):
        calibrator.add_score(0, None, math.inf)
    with pytest.raises(ValueError, match="layer_id: must fit int64"):  # (the C++ reader refuses the file)
        calibrator.add_score(2**63, None, 0.5)
    calibrator.add_score(2**63 - 1, None, 0.5)
    for bad in (-0.1, 1.1, math.nan):
        with pytest.raises(ValueError, match="fraction_int8"):
            calibrator.make_plan(bad)


def test_scores_of_numpy_and_torch_numbers_are_plain_floats():
    calibrator = Calibrator()
    calibrator.add_score(0, None, np.float32(0.75))
    calibrator.add_score(1, None, torch.tensor(0.5, dtype=torch.float64))
    plan = Plan.from_json(calibrator.make_plan(0.5).to_json())
    assert [(e.layer, e.score) for e in plan.entries] == [(0, 0.75), (1, 0.5)]


def test_plan_lookups_check_their_key():
    plan = with_scores([0.5, 0.6]).make_plan(0.5)
    with pytest.raises(ValueError, match="timestep: must be >= 0"):  # (no timestep is None, not -1)
        plan.decide(0, -1)
    with pytest.raises(TypeError, match="layer_id"):
        plan.sageattn_kwargs(True)
    assert plan.decide(np.int64(0)) == plan.decide(0)


def test_score_sums_that_would_overflow_are_refused():
    """Finite scores whose sum overflows would give an infinite mean, which the plan file cannot hold
    (as in C++): the score that would overflow the sum is refused and the key keeps its first score."""
    calibrator = Calibrator()
    calibrator.add_score(2, None, -1e308)
    with pytest.raises(ValueError, match="would overflow"):
        calibrator.add_score(2, None, -1e308)
    assert calibrator.scores == {(2, None): (-1e308, 1)}


def test_fraction_edge_cases():
    ten = with_scores([0.9, 0.1, 0.8, 0.2, 0.7, 0.3, 0.6, 0.4, 0.5, 0.95])
    assert [int8_keys(ten.make_plan(f)) for f in (0.0, 1.0, 0.3, 0.31, 0.01)] == [0, 10, 3, 4, 1]
    plan = ten.make_plan(0.3)
    assert [layer for layer in range(10) if plan.decide(layer)[0] == "int8"] == [1, 3, 5]
    three = with_scores([0.5, 0.6, 0.7])
    assert int8_keys(three.make_plan(0.25)) == 1 and int8_keys(three.make_plan(0.5)) == 2
    with pytest.warns(RuntimeWarning, match="no call was measured, so the plan is empty"):
        assert Calibrator().make_plan().entries == []


def test_ties_by_key_order_and_nan_is_worst():
    ties = with_scores([0.5, 0.5, 0.5]).make_plan(0.34)
    assert [ties.decide(layer)[0] for layer in range(3)] == ["int8", "int8", "int4"]
    calibrator = with_scores([0.1, 0.9])
    calibrator.add_score(2, None, 0.95)
    calibrator.add_score(2, None, math.nan)
    plan = calibrator.make_plan(0.34)
    assert [plan.decide(layer)[0] for layer in range(3)] == ["int8", "int4", "int8"]
    assert '"score": null' in plan.to_json()


def test_runtime_follows_the_plan():
    plan = calibrate_four_layers().make_plan(0.5)
    with plan:
        assert active_plan() is plan
        assert active_plan().sageattn_kwargs(0, 10) == {"qk_format": "int4", "qk_granularity": "per_thread"}
        assert active_plan().sageattn_kwargs(1, 0) == {"qk_format": "int8"}
        assert active_plan().sageattn_kwargs(99, 0) == {"qk_format": "int8"}  # unknown layer: the safe default
    assert active_plan() is None
    q, k, v = gaussian(5)
    out = sageattn(q, k, v, **plan.sageattn_kwargs(0, 0))
    torch.testing.assert_close(out, sageattn(q, k, v, qk_format="int4", qk_granularity="per_thread"))
    assert Plan().decide(0) == ("int8", "default")


def test_sageattn_layer_id_follows_the_active_plan():
    plan = calibrate_four_layers().make_plan(0.5)
    q, k, v = gaussian(7)
    int4 = sageattn(q, k, v, qk_format="int4", qk_granularity="per_thread")
    int8 = sageattn(q, k, v, qk_format="int8")
    assert not torch.equal(int4, int8)  # otherwise the test could not tell the paths apart
    with plan:
        assert torch.equal(sageattn(q, k, v, layer_id=0, timestep=0), int4)
        assert torch.equal(sageattn(q, k, v, layer_id=1, timestep=0), int8)
        # An explicit keyword wins over the plan; a call without layer_id is not routed.
        assert torch.equal(sageattn(q, k, v, layer_id=0, timestep=0, qk_format="int8"), int8)
        assert torch.equal(sageattn(q, k, v), int8)
        # An INT4 choice brings its calibrated granularity, which replaces the caller's (either spelling);
        # an INT8 choice keeps the caller's.
        assert torch.equal(sageattn(q, k, v, layer_id=0, timestep=0, qk_quant_gran="per_block"), int4)
        assert torch.equal(sageattn(q, k, v, layer_id=0, timestep=0, qk_granularity="per_block"), int4)
        int8_per_block = sageattn(q, k, v, qk_format="int8", qk_granularity="per_block")
        assert not torch.equal(int8_per_block, int8)
        assert torch.equal(sageattn(q, k, v, layer_id=1, timestep=0, qk_quant_gran="per_block"), int8_per_block)
        assert torch.equal(sageattn(q, k, v, layer_id=1, timestep=0, qk_granularity="per_block"), int8_per_block)


def test_compiled_calls_follow_the_active_plan():
    """Traced code reads the plan through the compiled view: a plan entered, changed or closed after
    the first trace must give the new choice (the guards on that view make torch.compile retrace),
    never the one baked into the first graph."""
    int4_plan = calibrate_four_layers().make_plan(0.5)
    int8_plan = calibrate_four_layers().make_plan(1.0)
    assert int4_plan.sageattn_kwargs(0, 0)["qk_format"] == "int4"
    assert int8_plan.sageattn_kwargs(0, 0)["qk_format"] == "int8"
    q, k, v = gaussian(7)
    int4 = sageattn(q, k, v, qk_format="int4", qk_granularity="per_thread")
    int8 = sageattn(q, k, v, qk_format="int8")
    assert not torch.equal(int4, int8)
    torch.compiler.reset()
    layer_zero = torch.compile(lambda q, k, v: sageattn(q, k, v, layer_id=0, timestep=0), backend="eager",
                               fullgraph=True)
    with int4_plan:
        assert torch.equal(layer_zero(q, k, v), int4)
    with int8_plan:
        assert torch.equal(layer_zero(q, k, v), int8)
    assert torch.equal(layer_zero(q, k, v), int8)  # no plan: the default
    with int4_plan:
        assert torch.equal(layer_zero(q, k, v), int4)


def test_sageattn_layer_id_is_measured_by_the_active_calibrator():
    q, k, v = gaussian(8)
    calibrator = Calibrator()
    with calibrator:
        out = sageattn(q, k, v, layer_id=3, timestep=None, scale=0.1)
    assert list(calibrator.scores) == [(3, None)]
    torch.testing.assert_close(out, exact_attention(q, k, v, sm_scale=0.1)[0].to(q.dtype))


def test_calls_keys_are_checked_where_they_are_routed():
    q, k, v = gaussian(9)
    plan = Plan([], default_qk_format="int4")
    with plan:
        # numpy integers and integer scalar tensors name a call as their int does
        int4 = sageattn(q, k, v, layer_id=2)
        assert torch.equal(sageattn(q, k, v, layer_id=np.int64(2)), int4)
        assert torch.equal(sageattn(q, k, v, layer_id=torch.tensor(2)), int4)
        for layer_id, error in (("0", TypeError), (True, TypeError), (-1, ValueError), (1.0, TypeError)):
            with pytest.raises(error, match="layer_id"):
                sageattn(q, k, v, layer_id=layer_id)
        with pytest.raises(ValueError, match="timestep: must be >= 0"):
            sageattn(q, k, v, layer_id=0, timestep=-3)
    with pytest.raises(TypeError, match="timestep without one"):
        sageattn(q, k, v, timestep=5)  # (would go unmeasured and unplanned)
    with pytest.raises(TypeError, match="layer_id"):
        sageattn(q, k, v, layer_id="0")  # also with no plan or calibrator active
    calibrator = Calibrator()
    with calibrator:
        sageattn(q, k, v, layer_id=np.int64(1), qk_quant_gran="per_warp")  # the alias is INT4's to replace too
    assert list(calibrator.scores) == [(1, None)]


def test_a_calibrator_block_that_measures_nothing_warns():
    q, k, v = gaussian(10)
    calibrator = Calibrator()
    with pytest.warns(RuntimeWarning, match="no call was measured in it.*layer_id"):
        with calibrator:
            sageattn(q, k, v)  # no layer id: not measured
    with calibrator:
        sageattn(q, k, v, layer_id=0)
    assert calibrator.scores[(0, None)][1] == 1


def test_plan_arguments_are_checked():
    for kwargs, message in (({"default_qk_format": "INT4"}, "default_qk_format"),
                            ({"int4_granularity": "per_row"}, "int4_granularity"),
                            ({"fraction_int8": 2.0}, "fraction_int8")):
        with pytest.raises(ValueError, match=message):
            Plan([], **kwargs)


def test_one_plan_active_in_concurrent_tasks_and_threads():
    """A block belongs to its thread or task: the same plan may be open in several, and blocks that
    close out of order leave nothing active behind (eager or compiled view)."""
    first, second = Plan([], default_qk_format="int4"), Plan([], default_qk_format="int8")

    async def hold(plan, seconds, seen):
        with plan:
            await asyncio.sleep(seconds)
            seen.append(active_plan() is plan)

    async def both():
        seen = []
        await asyncio.gather(hold(first, 0.05, seen), hold(first, 0.1, seen), hold(second, 0.02, seen))
        return seen

    assert asyncio.run(both()) == [True, True, True]
    assert active_plan() is None and calibration._compiled_view["plan"] is None

    entered, release = threading.Event(), threading.Event()

    def hold_in_thread():
        with first:
            entered.set()
            release.wait()

    thread = threading.Thread(target=hold_in_thread)
    thread.start()
    entered.wait()
    with second:
        assert active_plan() is second and calibration._compiled_view["plan"] is second
    assert active_plan() is None and calibration._compiled_view["plan"] is first  # still open in the thread
    release.set()
    thread.join()
    assert calibration._compiled_view["plan"] is None


def test_a_block_ended_in_another_task_is_refused_and_leaves_nothing_open():
    plan = Plan([])

    async def end():
        plan.__exit__(None, None, None)

    async def main():
        plan.__enter__()
        with pytest.raises(RuntimeError, match="ends in another task"):
            await asyncio.create_task(end())

    asyncio.run(main())
    assert calibration._open_blocks["plan"] == [] and calibration._compiled_view["plan"] is None


def test_a_block_ended_before_one_inside_it_is_refused_and_changes_nothing():
    outer, inner = Plan([]), Plan([])
    outer.__enter__()
    inner.__enter__()
    with pytest.raises(RuntimeError, match="ends before a block opened inside it \\(Plan\\) ended"):
        outer.__exit__(None, None, None)
    # Both views still see the inner block, then the outer one, until each ends in order.
    assert active_plan() is inner and calibration._compiled_view["plan"] is inner
    inner.__exit__(None, None, None)
    assert active_plan() is outer and calibration._compiled_view["plan"] is outer
    outer.__exit__(None, None, None)
    assert active_plan() is None and calibration._compiled_view["plan"] is None


def test_recorder_checks_what_it_writes(tmp_path):
    q = k = v = torch.zeros(1, 1, 16, 16)
    with Recorder(tmp_path) as recorder:
        with pytest.raises(ValueError, match="tensor_layout"):
            recorder.record(q, k, v, layer_id=0, tensor_layout="BHND")
        with pytest.raises(ValueError, match="causal_align"):
            recorder.record(q, k, v, layer_id=0, causal_align="bottom-right")
        with pytest.raises(TypeError, match="smooth_k: expected a bool"):
            recorder.record(q, k, v, layer_id=0, smooth_k=2)
        with pytest.raises(ValueError, match="pv_format: unknown value 'fp6'"):
            recorder.record(q, k, v, layer_id=0, pv_format="fp6")
        with pytest.raises(ValueError, match="sm_scale"):
            recorder.record(q, k, v, layer_id=0, sm_scale=-1.0)
        with pytest.raises(ValueError, match="q: expected a rank-4 tensor"):
            recorder.record(q[0], k, v, layer_id=0)
        recorder.record(q, k, v, layer_id=0, is_causal=1, smooth_k=0, sm_scale=np.float32(0.5))
    call = json.loads((tmp_path / "index.json").read_text())["calls"][0]
    assert (call["causal"], call["smooth_k"], call["sm_scale"]) == (True, False, 0.5)


def test_a_finalizer_may_open_a_block_while_the_lock_is_held():
    """Garbage collection can run a finalizer inside the process-wide bookkeeping's locked section."""
    plan = Plan([])

    class Finalized:
        def __del__(self):
            with plan:
                pass

    def collect_under_the_lock():
        cycle = Finalized()
        cycle.self = cycle
        del cycle
        with calibration._open_blocks_lock:
            gc.collect()

    worker = threading.Thread(target=collect_under_the_lock, daemon=True)
    worker.start()
    worker.join(timeout=30)
    assert not worker.is_alive(), "deadlock"
    assert calibration._open_blocks["plan"] == []


def test_one_calibrator_measures_from_several_threads():
    calibrator = Calibrator()
    errors = []

    def measure(layer):
        try:
            with calibrator:
                for i in range(500):
                    calibrator.add_score(layer * 1000 + i % 50, None, 0.5)
                    calibrator.scores  # (read while others write)
        except Exception as e:  # noqa: BLE001 (reported below)
            errors.append(e)

    threads = [threading.Thread(target=measure, args=(layer,)) for layer in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sum(calls for _, calls in calibrator.scores.values()) == 2000


def test_unseen_timesteps():
    plan = Plan.from_json(plan_document([
        entry(0, 0, "int4"), entry(0, 10, "int8"), entry(0, 30, "int4"),
        entry(1, None, "int4"), entry(1, 5, "int8"), entry(2, 3, "int4")]))
    assert plan.decide(0, 10) == ("int8", "exact")
    assert plan.decide(0, 3) == ("int4", "nearest-timestep")
    assert plan.decide(0, 8) == ("int8", "nearest-timestep")
    assert plan.decide(0, 20) == ("int8", "nearest-timestep")  # 10 and 30 tie: the safe one
    assert plan.decide(0, 1000) == ("int4", "nearest-timestep")
    assert plan.decide(0, None) == ("int8", "layer-worst")
    assert plan.decide(1, 5) == ("int8", "exact")
    assert plan.decide(1, 6) == ("int4", "layer")
    assert plan.decide(2, None) == ("int4", "layer-worst")
    assert plan.decide(3, 3) == ("int8", "default")


def test_round_trip_and_files(tmp_path):
    calibrator = calibrate_four_layers()
    calibrator.add_score(7, None, math.nan)
    plan = calibrator.make_plan(0.3)
    text = plan.to_json()
    back = Plan.from_json(text)
    assert back.to_json() == text
    assert [(e.layer, e.timestep, e.calls, e.qk_format) for e in back.entries] == \
        [(e.layer, e.timestep, e.calls, e.qk_format) for e in plan.entries]
    assert all(a.score == b.score or (math.isnan(a.score) and math.isnan(b.score))
               for a, b in zip(plan.entries, back.entries))
    path = tmp_path / "plan.json"
    plan.save(path)
    assert Plan.load(path).to_json() == text
    assert json.loads(text)["version"] == 1
    path.write_text(text.replace('"version": 1', '"version": 1,,'))
    with pytest.raises(ValueError, match=f"^{path}: line 3, column 16: Expecting property name"):
        Plan.load(path)


@pytest.mark.parametrize("text, message", [
    ("{", "plan: line 1, column 2"),
    ("[]", "the document: expected an object"),
    (json.dumps({"format": "x", "version": 1}), "not a calibration plan"),
    (plan_document([], version=2), "this library reads version 1, got 2"),
    (json.dumps({"format": "sage-attention calibration plan", "version": 1}), "missing member 'fraction_int8'"),
    (plan_document([], fraction_int8=1.5), "fraction_int8: must be in"),
    (plan_document([], int4_granularity="per_lane"), "int4_granularity: expected one of"),
    (plan_document([entry(0, None, "int16")]), "entries\\[0\\].qk_format: expected one of"),
    (plan_document([entry(0, None, "int4"), {"layer": "one"}]), "entries\\[1\\].layer: expected an integer"),
    (plan_document([entry(-1, None, "int4")]), "entries\\[0\\].layer: must be >= 0"),
    (plan_document([entry(0, -3, "int4")]), "entries\\[0\\].timestep: must be >= 0 or null"),
    (plan_document([dict(entry(0, None, "int4"), calls=0)]), "entries\\[0\\].calls: must be >= 1"),
    (plan_document([entry(0, None, "int4"), entry(0, None, "int8")]), "layer 0, timestep null appears twice"),
    # What the C++ reader refuses, Python's json module would take: the same errors here.
    (plan_document([entry(0, None, "int4")]).replace('"qk_format": "int4"', '"qk_format": "int8", "qk_format": "int4"'),
     'duplicate member "qk_format"'),
    (plan_document([entry(0, None, "int4")]).replace('"score": 0.5', '"score": NaN'), "NaN is not JSON"),
    (plan_document([entry(0, None, "int4")]).replace('"score": 0.5', '"score": -Infinity'), "-Infinity is not JSON"),
    (plan_document([entry(0, None, "int4")]).replace('"score": 0.5', '"score": 1e400'), "number out of range: 1e400"),
    (plan_document([entry(2**63, None, "int4")]), "entries\\[0\\].layer: integer out of range"),
    (plan_document([dict(entry(0, None, "int4"), calls=2**64)]), "entries\\[0\\].calls: integer out of range"),
])
def test_malformed_plans_name_the_problem(text, message):
    with pytest.raises(ValueError, match=message):
        Plan.from_json(text)


def test_unknown_members_are_ignored():
    plan = Plan.from_json(plan_document([dict(entry(2, None, "int4"), note=1), entry(1, None, "int8")], comment=[1]))
    assert [e.layer for e in plan.entries] == [1, 2]


def _sage_cli():
    return os.environ.get("SAGE_CLI") or shutil.which("sage")


@pytest.mark.skipif(not _sage_cli(), reason="the sage CLI is not on PATH (or in $SAGE_CLI)")
def test_recording_calibrates_like_python(tmp_path):
    """A Recorder's directory through `sage calibrate` (the C++ calibrator) gives the same plan."""
    calibrator = Calibrator()
    with Recorder(tmp_path / "rec") as recorder:
        for layer in range(3):
            inputs = (outliers if layer == 1 else gaussian)(layer)
            # A scale that float32 rounds (both sides take it in float32), and a flag spelled 1 (the recording
            # writes JSON's true, the only spelling `sage calibrate` reads).
            options = dict(is_causal=layer == 2, smooth_v=True, sm_scale=0.3 if layer == 0 else None,
                           smooth_k=1 if layer == 2 else True)
            recorder.record(*inputs, layer_id=layer, **options)
            calibrator.record(*inputs, layer_id=layer, **options)
    result = subprocess.run([_sage_cli(), "calibrate", "--recordings", str(tmp_path / "rec"), "--fraction", "0.3"],
                            capture_output=True, text=True, check=True)
    cli_plan = Plan.from_json(result.stdout)
    python_plan = calibrator.make_plan(0.3)
    assert [e.qk_format for e in cli_plan.entries] == [e.qk_format for e in python_plan.entries] == \
        ["int4", "int8", "int4"]
    for cli_entry, python_entry in zip(cli_plan.entries, python_plan.entries):
        assert cli_entry.score == pytest.approx(python_entry.score, rel=1e-12)
