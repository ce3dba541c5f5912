#!/usr/bin/env python3
"""Smoke check of a build before its timings count (scripts/ab_bench.sh runs it per variant).

The GPU output of a few calls against the CPU emulation of the same pipeline (the package's CPU
path): shapes that give the persistent CTAs several work items each (the consumer's walk across
items), odd lengths, causal alignments whose first query tiles see no key, GQA, both layouts,
fp16 and bf16, head dims 64, 128 and padded ones (96, 40; 36, whose rows no 16-byte store can
reach), the LSE, K and V by the pre-pass's head jobs. Exits 1 on the first mismatch, saying which
case. Not a test suite: the GPU tests (tests/gpu, tests/python/test_gpu.py) are; this keeps a
broken variant from being timed.

  PYTHONPATH=build-ab-NAME/python/pkg python3 scripts/ab_smoke.py
"""

import sys
import zlib

import torch

import sage_attention as sage

CASES = [  # (B, Hq, Hkv, Nq, Nk, D, causal, causal_align, layout, dtype, granularity, return_lse)
    (1, 160, 160, 384, 384, 128, False, "top_left", "HND", torch.bfloat16, "per_warp", False),
    (1, 160, 40, 384, 384, 128, True, "top_left", "HND", torch.bfloat16, "per_warp", True),
    (2, 100, 100, 500, 500, 64, False, "top_left", "HND", torch.float16, "per_warp", True),
    (1, 96, 24, 500, 200, 128, True, "bottom_right", "HND", torch.bfloat16, "per_thread", True),
    (1, 150, 150, 300, 333, 96, True, "bottom_right", "NHD", torch.float16, "per_warp", True),
    (2, 80, 80, 257, 257, 40, False, "top_left", "NHD", torch.bfloat16, "per_warp", False),
    (1, 140, 140, 260, 260, 36, True, "top_left", "HND", torch.bfloat16, "per_warp", True),
    # K and V by the pre-pass's head jobs (128 jobs: about one per SM of an H100 / H200).
    (1, 64, 64, 128, 2500, 128, False, "top_left", "HND", torch.bfloat16, "per_warp", False),
]


def run(case, device):
    b, hq, hkv, nq, nk, d, causal, align, layout, dtype, granularity, lse = case
    # (crc32, not hash(): str hashes change from one process to the next.)
    gen = torch.Generator().manual_seed(zlib.crc32(repr(case).encode()))

    def tensor(h, n):
        shape = (b, h, n, d) if layout == "HND" else (b, n, h, d)
        return (torch.randn(shape, generator=gen) * 1.5 + 0.3).to(dtype)

    q, k, v = tensor(hq, nq), tensor(hkv, nk), tensor(hkv, nk)
    result = sage.sageattn(q.to(device), k.to(device), v.to(device), tensor_layout=layout, is_causal=causal,
                           return_lse=lse, causal_align=align, qk_granularity=granularity)
    return result if lse else (result, None)


def main():
    for case in CASES:
        (out, lse), (want, want_lse) = run(case, "cuda"), run(case, "cpu")
        out = out.cpu().double()
        want = want.double()
        cos = torch.nn.functional.cosine_similarity(out.flatten(), want.flatten(), dim=0).item()
        worst = (out - want).abs().max().item()
        scale = want.abs().max().item()
        ok = torch.isfinite(out).all().item() and cos > 0.9999 and worst <= 0.02 * scale
        if lse is not None:
            lse, want_lse = lse.cpu(), want_lse
            finite = torch.isfinite(want_lse)
            ok = ok and torch.equal(finite, torch.isfinite(lse)) and torch.equal(lse[~finite], want_lse[~finite])
            ok = ok and (lse[finite] - want_lse[finite]).abs().max().item() <= 1e-3 * max(1.0, want_lse[finite].abs().max().item())
        print(f"{'ok  ' if ok else 'FAIL'} {case}: cos {cos:.7f}, max |diff| {worst:.3g} (max |out| {scale:.3g})",
              flush=True)
        if not ok:
            sys.exit(1)


if __name__ == "__main__":
    main()
