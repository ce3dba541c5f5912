"""Shared helpers of the Python tests. CPU tests run the library's exact emulation of the GPU
numerics through the same operators; GPU tests skip themselves (with the reason) where no
usable GPU is present."""

from __future__ import annotations

import os
import random

import pytest
import torch

from sage_attention import _C


def _gpu_skip_reason() -> str:
    if not torch.cuda.is_available():
        return "no CUDA GPU visible to torch"
    reason = _C.device_support_error(0)
    return f"cuda:0 cannot run this build's kernels: {reason}" if reason else ""


GPU_SKIP_REASON = _gpu_skip_reason()
requires_gpu = pytest.mark.skipif(bool(GPU_SKIP_REASON), reason=GPU_SKIP_REASON or "GPU present")
requires_two_gpus = pytest.mark.skipif(
    bool(GPU_SKIP_REASON) or torch.cuda.device_count() < 2,
    reason=GPU_SKIP_REASON or f"needs 2 GPUs, found {torch.cuda.device_count()}")


def torch_calls_module():
    """sage_attention._torch_calls as the package loaded it. Skips where SAGE_TORCH_CALLS=0 turns it
    off or the package was built without it; fails where the build tree running the tests made it
    (SAGE_EXPECT_TORCH_CALLS=1, set by CTest and the device script) and the package did not load it."""
    from sage_attention import _ops
    if os.environ.get("SAGE_TORCH_CALLS") == "0":
        pytest.skip("SAGE_TORCH_CALLS=0 turns sage_attention._torch_calls off")
    if _ops._torch_calls is None:
        if os.environ.get("SAGE_EXPECT_TORCH_CALLS") == "1":
            pytest.fail("the build made sage_attention._torch_calls, but the package did not load it")
        pytest.skip("the package was built without sage_attention._torch_calls")
    return _ops._torch_calls


def reference_attention(q, k, v, is_causal=False, scale=None, causal_align="top_left"):
    """Exact float64 attention and its LSE, [B, H, N, D] inputs (GQA by repetition)."""
    q, k, v = (t.double() for t in (q, k, v))
    groups = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1)
    scores = q @ k.transpose(-1, -2) * (scale if scale is not None else q.shape[-1] ** -0.5)
    if is_causal:
        nq, nk = q.shape[2], k.shape[2]
        offset = nk - nq if causal_align == "bottom_right" else 0
        visible = torch.arange(nk)[None, :] <= torch.arange(nq)[:, None] + offset
        scores = scores.masked_fill(~visible, float("-inf"))
    lse = torch.logsumexp(scores, -1)
    probs = torch.exp(scores - lse[..., None]).nan_to_num(0.0)
    return probs @ v, lse


def cosine(a, b) -> float:
    return torch.nn.functional.cosine_similarity(a.double().flatten(), b.double().flatten(), dim=0).item()


# Fresh inputs on every run: a run's random base (printed in pytest's header; SAGE_TEST_SEED=N
# replays it) offsets every test's own seed, so tests still get distinct, repeatable tensors
# within a run and new ones across runs.
SEED_BASE = int(os.environ.get("SAGE_TEST_SEED") or random.SystemRandom().randrange(1 << 40))


def pytest_report_header(config):
    return f"sage-attention test inputs: SAGE_TEST_SEED={SEED_BASE} (set it to replay this run)"


def pytest_terminal_summary(terminalreporter):
    # Also at the end, where a quiet run (-q, as CI's) shows it next to its failures.
    terminalreporter.write_line(f"sage-attention test inputs: SAGE_TEST_SEED={SEED_BASE} (set it to replay this run)")


def randn(*shape, dtype=torch.float32, device="cpu", seed=0):
    generator = torch.Generator().manual_seed(SEED_BASE + seed)
    return torch.randn(*shape, generator=generator).to(dtype=dtype, device=device)

