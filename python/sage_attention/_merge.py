"""Merging partial attention results over disjoint key sets (sequence parallelism)."""

from __future__ import annotations

import torch

from . import _ops


def merge_state(out_a, lse_a, out_b, lse_b, tensor_layout="HND"):
    """(out, lse) of attention over the union of two disjoint key sets, from each part's (out, lse).

    out_*: [B, H, N, D] ("HND") or [B, N, H, D] ("NHD"), float16/bfloat16/
    float32; lse_*: [B, H, N] float32 natural log, as sageattn(...,
    return_lse=True) returns them. Computed stably in fp32:
    lse = logaddexp(lse_a, lse_b), out = exp(lse_a - lse) out_a + exp(lse_b - lse) out_b.
    A row whose parts both saw no key (lse = -inf) gets out = 0, lse = -inf; a NaN or +inf lse (a part
    that overflowed) gives NaN, where torch.logaddexp would give +inf.
    Not differentiable: backward raises NotImplementedError, and so does a call under forward-mode AD or a
    torch.func transform.
    """
    _refuse_derivatives("merge_state", out_a, lse_a, out_b, lse_b)
    return _ops.merge_state(out_a, lse_a, out_b, lse_b, tensor_layout)


def merge_state_(out_a, lse_a, out_b, lse_b, tensor_layout="HND"):
    """In-place merge_state: writes the merged result into out_a and lse_a and returns them.

    Not differentiable (an in-place write into a tensor autograd tracks would
    leave its graph describing the old values): inputs that require grad
    while grad mode is on raise RuntimeError."""
    if torch.is_grad_enabled() and any(t.requires_grad for t in (out_a, lse_a, out_b, lse_b)):
        raise RuntimeError("sage_attention.merge_state_ has no backward pass: call it under torch.no_grad() / "
                           "torch.inference_mode(), or use merge_state (out of place, raises on backward)")
    _refuse_derivatives("merge_state_", out_a, lse_a, out_b, lse_b)
    _ops.merge_state_inplace(out_a, lse_a, out_b, lse_b, tensor_layout)
    return out_a, lse_a


def _refuse_derivatives(name, *tensors):
    """Forward-mode tangents (an in-place merge would also leave out_a's old one) and torch.func gradients
    are refused, as for the attention."""
    _ops.refuse_lost_derivatives(tensors, f"sage_attention.{name} has no forward-mode derivative (torch.func.jvp, "
                                 "torch.autograd.forward_ad): pass tensors without tangents",
                                 f"sage_attention.{name} has no backward pass (inference-only)")
