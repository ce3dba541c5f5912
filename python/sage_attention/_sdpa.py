"""A drop-in for torch.nn.functional.scaled_dot_product_attention, and a mode
that routes a model's SDPA calls to it."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode, _get_current_function_mode_stack

from . import _ops


def scaled_dot_product_attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                                 enable_gqa=False):
    """torch.nn.functional.scaled_dot_product_attention computed by SageAttention2.

    Same arguments and semantics as SDPA: inputs [..., H, L, E] (at least 3-D;
    every dimension before the heads is batch, broadcast between query, key
    and value as SDPA does; empty inputs give empty outputs, no key gives
    zeros), is_causal aligned top-left,
    scale defaulting to 1/sqrt(E), Hq != Hkv only with enable_gqa=True (Hq a
    multiple of Hkv). Returns [..., Hq, L, E] in the query's dtype.

    What it cannot honour raises instead of being ignored: attn_mask
    (NotImplementedError), dropout_p > 0 (NotImplementedError), Ev != E or
    E > 128 (NotImplementedError), a gradient (there is no backward yet:
    inputs may require grad, as in a model in eval() mode without no_grad(),
    but .backward() through the result raises NotImplementedError, as do
    forward-mode AD and torch.func's jvp/grad/vjp at the call).
    Unsupported dtypes and devices get the core's ValueError. The results differ from SDPA's by the
    quantization error (cosine similarity ~0.999 on typical activations).
    """
    scale = _reject_unsupported(query, key, value, attn_mask, dropout_p, scale)
    is_causal = _ops.flag("is_causal", is_causal)
    heads_q, heads_kv = query.shape[-3], key.shape[-3]
    if heads_q != heads_kv and not enable_gqa:
        raise ValueError(f"query has {heads_q} heads but key/value have {heads_kv}: pass enable_gqa=True for "
                         "grouped-query attention (as with torch's scaled_dot_product_attention)")
    if heads_q != heads_kv and (heads_kv == 0 or heads_q % heads_kv != 0):
        raise ValueError(f"enable_gqa: query heads ({heads_q}) must be a multiple of key/value heads ({heads_kv})")
    if key.shape[-3:-1] != value.shape[-3:-1]:
        raise ValueError(f"key {tuple(key.shape)} and value {tuple(value.shape)} must have the same heads and "
                         "sequence length")
    try:
        batch = torch.broadcast_shapes(query.shape[:-3], key.shape[:-3], value.shape[:-3])
    except RuntimeError:
        raise ValueError(f"batch dimensions do not broadcast: query {tuple(query.shape)}, key {tuple(key.shape)}, "
                         f"value {tuple(value.shape)}") from None
    query, key, value = (t.expand(*batch, *t.shape[-3:]) for t in (query, key, value))
    out, _ = _ops.attention(_as_bhld(query), _as_bhld(key), _as_bhld(value), "HND", is_causal, scale, False,
                            *_ops.QUANT_DEFAULTS.values())
    return out.view(query.shape)


def _reject_unsupported(query, key, value, attn_mask, dropout_p, scale):
    """Raise for every argument this implementation would otherwise have to ignore; the scale as a
    float (or None)."""
    if attn_mask is not None:
        raise NotImplementedError("sage_attention.scaled_dot_product_attention: attn_mask is not supported (only "
                                  "is_causal); use torch's scaled_dot_product_attention for masked attention")
    if dropout_p:
        raise NotImplementedError(f"sage_attention.scaled_dot_product_attention: dropout_p={dropout_p} is not "
                                  "supported (inference only; pass dropout_p=0.0)")
    for name, t in (("query", query), ("key", key), ("value", value)):
        if isinstance(t, torch.Tensor) and t.is_nested:
            raise NotImplementedError(f"sage_attention.scaled_dot_product_attention: {name} is a nested tensor, "
                                      "which is not supported (pad the sequences, or use torch's "
                                      "scaled_dot_product_attention)")
        _ops.check_dense(**{name: t})
        if t.dim() < 3:
            raise ValueError(f"{name}: expected at least 3 dimensions [..., H, L, E], got shape {tuple(t.shape)}")
    head_dim, value_dim = query.shape[-1], value.shape[-1]
    if value_dim != head_dim:
        raise NotImplementedError(f"value head dim {value_dim} != query/key head dim {head_dim} is not supported")
    _ops.check_head_dim("query", head_dim)
    if scale is None:
        return None
    scale = _ops.scale_value("scale", scale)
    if not (math.isfinite(scale) and scale > 0):
        raise NotImplementedError(f"scale={scale} is not supported (a finite positive number, or None)")
    _ops.check_float32_scale("scale", scale)
    return scale


def _as_bhld(t: torch.Tensor) -> torch.Tensor:
    """[..., H, L, E] as a 4-D [B, H, L, E] view (a copy only when the batch dims cannot be merged or
    E is not contiguous, which the kernels need)."""
    if t.stride(-1) != 1:
        t = t.contiguous()
    return t.reshape(-1, *t.shape[-3:]) if t.dim() != 4 else t


class SageSDPAMode(TorchFunctionMode):
    """Sends torch.nn.functional.scaled_dot_product_attention calls to the sage version; `calls`
    counts them (so that a caller can tell code that never reached SDPA).

    Where another torch function mode was entered before this one (diffusers' attention-score
    skipping for perturbed-attention guidance, say), SDPA goes to that mode instead, as it would
    without sage: such a mode may compute something else than attention, and sage computing first
    would take that from it. `deferred_to` names those modes. (torch's own device context, which
    `torch.device(...)` and `set_default_device` enter, is not one of them.)"""

    def __init__(self):
        super().__init__()
        self.calls = 0
        self.deferred_to = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is F.scaled_dot_product_attention:
            outer = _outer_modes()
            if outer:
                self.deferred_to.update(type(m).__name__ for m in outer)
                return func(*args, **(kwargs or {}))
            self.calls += 1
            return scaled_dot_product_attention(*args, **(kwargs or {}))
        return func(*args, **(kwargs or {}))


def _outer_modes() -> list:
    """The torch function modes active below the one handling a call (it is off the stack meanwhile),
    other than sage's own and torch's device context."""
    return [m for m in _get_current_function_mode_stack()
            if not isinstance(m, SageSDPAMode) and type(m).__name__ != "DeviceContext"]


def override_sdpa() -> SageSDPAMode:
    """Context manager that sends every torch.nn.functional.scaled_dot_product_attention call
    made inside it to sage_attention.scaled_dot_product_attention:

        with sage_attention.override_sdpa(), torch.inference_mode():
            logits = model(input_ids)

    Works for any model that calls SDPA (no code change in the model). A call
    with arguments sage cannot honour (an attention mask, dropout) raises,
    rather than silently computing something else. Another torch function
    mode entered before this one gets the SDPA calls first, as without sage
    (they then run on torch's SDPA): see SageSDPAMode.
    """
    return SageSDPAMode()
