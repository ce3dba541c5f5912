"""The PyTorch-facing attention call: allocates outputs and workspace through
PyTorch (caching allocator, current stream) and hands raw views to the C++
core. No computation happens here."""

from __future__ import annotations

import math

import torch

from . import _C

_DTYPE_NAMES = {torch.float16: "float16", torch.bfloat16: "bfloat16", torch.float32: "float32"}

# Keyword arguments sageattn accepts besides its named parameters, with the
# C++ option each one sets.
_OPTION_KEYWORDS = {
    "qk_quant_gran": "qk_granularity",  # SageAttention's spelling
    "qk_granularity": "qk_granularity",
    "pv_format": "pv_format",
    "pv_accum": "pv_accum",
    "smooth_k": "smooth_k",
    "smooth_v": "smooth_v",
    "smooth_q": "smooth_q",
    "causal_align": "causal_align",
}
_GRANULARITY_ALIASES = {"per_warp": "per_warp", "per_thread": "per_thread", "per_block": "per_block"}


def _spec(t: torch.Tensor):
    """(pointer, dtype, shape, strides, device) of a tensor, as the core takes it."""
    if t.dtype not in _DTYPE_NAMES:
        raise ValueError(f"unsupported dtype {t.dtype} (expected float16, bfloat16 or float32)")
    device = t.device.index if t.is_cuda else -1
    if t.is_cuda and device is None:
        device = torch.cuda.current_device()
    return (t.data_ptr(), _DTYPE_NAMES[t.dtype], list(t.shape), list(t.stride()), device)


def _dims(q: torch.Tensor, layout: str):
    if q.dim() != 4:
        raise ValueError(f"q: expected a 4-D tensor [B, H, N, D] or [B, N, H, D], got shape {tuple(q.shape)}")
    if layout == "HND":
        b, h, n, _ = q.shape
    else:
        b, n, h, _ = q.shape
    return b, h, n


def sageattn(q, k, v, tensor_layout="HND", is_causal=False, sm_scale=None, return_lse=False, **kwargs):
    """Attention with INT8 Q K^T and FP8 P V (SageAttention2).

    q: [B, Hq, Nq, D] ("HND") or [B, Nq, Hq, D] ("NHD"); k, v: [B, Hkv, Nk, D]
    (Hq a multiple of Hkv). float16/bfloat16 on CUDA. Returns out shaped like
    q, and with return_lse=True also lse [B, Hq, Nq] (float32, natural log).
    `scale` and `softmax_scale` are accepted as aliases of sm_scale. Other
    keywords: qk_granularity ("per_warp" default, "per_thread", "per_block"),
    smooth_k (True), smooth_v (False), causal_align ("top_left" or
    "bottom_right"). Unknown keywords raise TypeError.
    """
    options = {}
    for alias in ("scale", "softmax_scale"):
        if alias in kwargs:
            if sm_scale is not None:
                raise TypeError(f"sageattn: got both sm_scale and its alias {alias!r}")
            sm_scale = kwargs.pop(alias)
    for key in list(kwargs):
        if key not in _OPTION_KEYWORDS:
            valid = ", ".join(["tensor_layout", "is_causal", "sm_scale", "scale", "softmax_scale", "return_lse"]
                              + sorted(_OPTION_KEYWORDS))
            raise TypeError(f"sageattn: unexpected keyword argument {key!r} (valid: {valid})")
        options[_OPTION_KEYWORDS[key]] = kwargs.pop(key)
    if tensor_layout not in ("HND", "NHD"):
        raise ValueError(f"tensor_layout: expected 'HND' or 'NHD', got {tensor_layout!r}")
    options.update(layout=tensor_layout, causal=bool(is_causal), return_lse=bool(return_lse))
    if sm_scale is not None:
        sm_scale = float(sm_scale)
        if not math.isfinite(sm_scale) or sm_scale <= 0:
            raise ValueError(f"sm_scale: expected a finite positive number, got {sm_scale}")
        options["sm_scale"] = sm_scale

    b, hq, nq = _dims(q, tensor_layout)
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    lse = torch.empty((b, hq, nq), dtype=torch.float32, device=q.device) if return_lse else None
    specs = (_spec(q), _spec(k), _spec(v), _spec(out), _spec(lse) if lse is not None else None)

    device_ctx = torch.cuda.device(q.device) if q.is_cuda else _NullContext()
    with device_ctx:
        nbytes = _C.workspace_size(*specs, options)
        workspace = torch.empty(max(nbytes, 1), dtype=torch.uint8, device=q.device)
        stream = torch.cuda.current_stream(q.device).cuda_stream if q.is_cuda else 0
        _C.forward(*specs, options, workspace.data_ptr(), nbytes, stream)
    return (out, lse) if return_lse else out


class _NullContext:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
