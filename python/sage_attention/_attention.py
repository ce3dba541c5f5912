"""`sageattn`: the SageAttention-style entry point over the `forward` operator."""

from __future__ import annotations

from . import _ops, calibration
from ._ops import tensor_spec as _spec  # noqa: F401  (bench/bench_attention.py drives _C with it)

# Spellings accepted for sm_scale (FlashAttention's, SDPA's).
_SCALE_ALIASES = ("scale", "softmax_scale")
_NAMED_PARAMETERS = ("tensor_layout", "is_causal", "sm_scale", "return_lse", "layer_id", "timestep")
_VALID_KEYWORDS = ", ".join(_NAMED_PARAMETERS + _SCALE_ALIASES +
                            tuple(sorted((*_ops.QUANT_DEFAULTS, *_ops.OPTION_ALIASES))))
_DEFAULT_QUANT = tuple(_ops.QUANT_DEFAULTS.values())


def sageattn(q, k, v, tensor_layout="HND", is_causal=False, sm_scale=None, return_lse=False, *, layer_id=None,
             timestep=None, **kwargs):
    """Attention with INT8 Q K^T and FP8 P V (SageAttention2), inference only.

    q: [B, Hq, Nq, D] ("HND") or [B, Nq, Hq, D] ("NHD"); k, v: [B, Hkv, Nk, D]
    with Hq a multiple of Hkv (GQA/MQA), D <= 128 (on the CPU too, so that what
    runs in CPU tests runs on the GPU). float16/bfloat16
    CUDA tensors run the GPU kernels (Hopper's wgmma kernel for the default
    options, the mma.sync family for INT4 or FP16 P V and on sm_80/89/120
    builds); CPU tensors (float32 too) run the
    library's exact emulation of the kernel a Hopper GPU runs for the same
    options (slow; for tests). Strided
    views are fine as long as the head dimension is contiguous.

    Returns out shaped like q (contiguous), and with return_lse=True also
    lse [B, Hq, Nq] (float32, natural log of the softmax denominator, for
    `merge_state`).

    Each call is one C++ call: the quantization pre-pass (INT8 Q/K at the
    chosen granularity, per_warp by default, with K smoothing; FP8 V) runs inside it, with its scratch memory taken from
    PyTorch's allocator, on the current stream of the inputs' device. It is the
    `torch.ops.sage_attention.forward` custom op, so torch.compile(fullgraph=True)
    and CUDA graphs capture it (plain eager calls skip the dispatcher and run
    the op's kernel directly: same result, ~30 us less host time). Gradients
    are not implemented: inputs may require grad, but a backward through the
    result (lse included) raises NotImplementedError, as do forward-mode AD and
    torch.func's jvp/grad/vjp at the call.

    Keywords: sm_scale (default 1/sqrt(D); `scale` and `softmax_scale` are
    aliases), causal_align ("top_left" as SDPA's is_causal, or "bottom_right"
    for KV-cache decoding), qk_granularity ("per_warp", "per_thread",
    "per_block"; alias qk_quant_gran), qk_format ("int8", "int4"),
    pv_format ("fp8_e4m3", "fp8_e5m2", "fp16", "bf16"), pv_accum ("two_level",
    "fp32"), smooth_q (False), smooth_k (True), smooth_v (False). The GPU
    kernels run fp8_e4m3 (two_level) and fp16 P V; fp8_e5m2, bf16 and fp32
    accumulation of FP8 are emulated on the CPU only (a CUDA call with them
    raises NotImplementedError). fp16 P V rounds V to float16 unscaled: a
    bfloat16/float32 value of V that rounds past float16's largest
    (|v| >= 65520) becomes inf, and so do the outputs that use it. Unknown
    keywords raise TypeError.

    Adaptive 4/8-bit (sage_attention.calibration): `layer_id` (and, for
    diffusion models, `timestep`) name the call. Inside `with calibrator:` the
    call is measured and answered by the calibrator; inside `with plan:` the
    plan picks qk_format for the call (unless qk_format is passed here), and an
    INT4 choice also its calibrated granularity.
    """
    if layer_id is not None:
        layer_id, timestep = calibration.checked_key(layer_id, timestep)
        sm_scale = _resolve_scale_alias(sm_scale, kwargs)
        routed = _route_by_calibration(q, k, v, tensor_layout, is_causal, sm_scale, return_lse, layer_id, timestep,
                                       kwargs)
        if routed is not None:
            return routed
    elif timestep is not None:
        raise TypeError("sageattn: timestep names a call together with a layer_id; got a timestep without one")
    quant = _DEFAULT_QUANT
    if kwargs:
        sm_scale, quant = _parse_keywords(sm_scale, kwargs)
    if sm_scale is not None:
        sm_scale = _ops.scale_value("sm_scale", sm_scale)
    _ops.check_layout(tensor_layout)  # (before the options' cache, which fails on an unhashable one)
    out, lse = _ops.attention(q, k, v, tensor_layout, _ops.flag("is_causal", is_causal), sm_scale,
                              _ops.flag("return_lse", return_lse), *quant)
    return (out, lse) if return_lse else out


def _parse_keywords(sm_scale, kwargs):
    """(sm_scale, quantization option values in QUANT_DEFAULTS order) from sageattn's **kwargs."""
    sm_scale = _resolve_scale_alias(sm_scale, kwargs)
    options = dict(_ops.QUANT_DEFAULTS)
    for key, value in kwargs.items():
        name = _ops.OPTION_ALIASES.get(key, key)
        if name not in options:
            raise TypeError(f"sageattn: unexpected keyword argument {key!r} (valid: {_VALID_KEYWORDS})")
        if name != key and name in kwargs:
            raise TypeError(f"sageattn: got both {name} and its alias {key!r}")
        options[name] = _ops.option_value(name, value)
    return sm_scale, tuple(options.values())


def _route_by_calibration(q, k, v, tensor_layout, is_causal, sm_scale, return_lse, layer_id, timestep, kwargs):
    """The calibrator's answer for a named call, or None after merging the active plan's choice into kwargs.

    The calibrator measures the INT4 path by calling sageattn without a layer_id, so this never recurses.
    """
    cal = calibration.active_calibrator()
    if cal is not None:
        return cal.attention(q, k, v, layer_id=layer_id, timestep=timestep, tensor_layout=tensor_layout,
                             is_causal=is_causal, sm_scale=sm_scale, return_lse=return_lse, **kwargs)
    plan = calibration.active_plan()
    # The plan picks the format; an INT4 choice brings its calibrated
    # granularity, which replaces the caller's (in either spelling), while
    # INT8 keeps the caller's. A caller who names the format keeps both.
    if plan is not None and "qk_format" not in kwargs:
        planned = plan.sageattn_kwargs(layer_id, timestep)
        if "qk_granularity" in planned:
            for spelling in _ops.GRANULARITY_SPELLINGS:
                kwargs.pop(spelling, None)
        kwargs.update(planned)
    return None


def _resolve_scale_alias(sm_scale, kwargs):
    """sm_scale, taken from its alias in kwargs (removed there) when one is given."""
    for alias in _SCALE_ALIASES:
        if alias in kwargs:
            if sm_scale is not None:
                raise TypeError(f"sageattn: got both sm_scale and its alias {alias!r}")
            sm_scale = kwargs.pop(alias)
    return sm_scale
