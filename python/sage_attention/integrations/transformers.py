"""Hugging Face transformers (5.x) integration: `attn_implementation="sage"`.

    import sage_attention.integrations.transformers  # registers "sage"
    model = AutoModelForCausalLM.from_pretrained(name, attn_implementation="sage", dtype=torch.bfloat16)
    # or, on a loaded model: model.set_attn_implementation("sage")

Importing this module registers an attention function with transformers'
AttentionInterface and, under the same name, a mask builder with
AttentionMaskInterface. The latter matters: an attention name without a mask
builder makes transformers drop every mask, padding included. Ours returns no
mask exactly when the pattern is one the kernel applies by itself: full
attention, or causal attention over a KV cache that holds exactly the past
and present tokens (bottom-right aligned; top-left is the same thing when
there is no past). It decides from shapes and argument identity only, so it
holds while torch.compile traces the model. Any other pattern (padding,
sliding windows, packed sequences, static caches with unused slots) gets
transformers' SDPA mask, which the attention function refuses with a clear
error rather than ignoring it. Attention that needs logit soft-capping,
sinks, a position bias or dropout raises too. A sliding window or an attention
chunk (Mistral, Gemma 2/3, Qwen2 with sliding windows, Llama 4) needs no mask
while every key lies inside it, and raises once the keys reach past it. Under
torch.compile, transformers cannot read the inputs and builds a mask for any call
with an attention_mask or without a KV cache: compile calls with the (default)
cache and without an attention_mask.
"""

from __future__ import annotations

import weakref

from transformers import AttentionInterface, PreTrainedModel
from transformers.masking_utils import (AttentionMaskInterface, bidirectional_mask_function, causal_mask_function,
                                        prepare_padding_mask, sdpa_mask)
from transformers.utils.import_utils import is_tracing

from .. import calibration
from .._attention import sageattn

NAME = "sage"

# Attention features some models pass that sage cannot apply (the keyword transformers uses for each).
_UNSUPPORTED_FEATURES = {"softcap": "logit soft-capping", "s_aux": "attention sinks",
                         "position_bias": "an additive position bias"}


def sage_attention_forward(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None,
                           **kwargs):
    """transformers attention function: query [B, Hq, L, D], key/value [B, Hkv, S, D] ->
    ([B, L, Hq, D], None). Causal attention is aligned bottom-right (the last query sees the
    last key), the pattern `sage_mask` returns no mask for."""
    _reject_unsupported(module, attention_mask, dropout, kwargs)
    if is_causal is None:
        is_causal = getattr(module, "is_causal", True)
    out = sageattn(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), tensor_layout="NHD",
                   is_causal=bool(is_causal), causal_align="bottom_right", sm_scale=scaling,
                   layer_id=_layer_id(module))
    return out, None


def assign_layer_ids(model) -> dict:
    """Numbers the attention modules of `model` for adaptive 4/8-bit and returns {module name: id}.

    sage attention names each call by its module's `layer_idx` (sage_attention.calibration:
    measured inside `with calibrator:`, its Q/K format picked inside `with plan:`). That index is
    unique in decoder-only models but repeats across the stacks of encoder-decoder models (BART,
    Whisper: encoder layer i, decoder self- and cross-attention i), where calibrating would
    merge different attentions into one key; calibrating such a model without this raises. Some
    attention modules have no layer_idx at all (ViT, CLIP, the vision tower of LLaVA): their
    calls are named only after this. The ids follow `named_modules()` order, the modules with a
    layer_idx first (as before those without one were numbered, so that plans made then keep
    their ids), so the same architecture gets the same ids in the calibration run and at run
    time."""
    # An attention module: transformers 5 gives every one an is_causal, not every one a layer_idx.
    attention = [(name, module) for name, module in model.named_modules()
                 if hasattr(module, "is_causal") and not isinstance(module, PreTrainedModel)]
    ids = {}
    for name, module in sorted(attention, key=lambda item: not hasattr(item[1], "layer_idx")):  # (stable)
        module.sage_layer_id = ids[name] = len(ids)
    return ids


# Per calibrator: the attention module seen under each layer_idx, to catch repeated indices.
_modules_by_layer_idx = weakref.WeakKeyDictionary()


def _layer_id(module):
    """The layer id of an attention call: assign_layer_ids' number, else the module's layer_idx
    (checked for uniqueness while calibrating), else None (the call is not named)."""
    assigned = getattr(module, "sage_layer_id", None)
    if assigned is not None:
        return assigned
    layer_idx = getattr(module, "layer_idx", None)
    calibrator = calibration.active_calibrator()
    if layer_idx is not None and calibrator is not None:
        seen = _modules_by_layer_idx.setdefault(calibrator, {})
        first = seen.setdefault(layer_idx, weakref.ref(module))()
        if first is not None and first is not module:
            raise ValueError(
                f"sage attention: layer_idx {layer_idx} belongs to two attention modules ({type(first).__name__} "
                f"and {type(module).__name__}: encoder and decoder stacks repeat it, and so do two models run "
                "under one calibrator), so calibration would merge them: call "
                "sage_attention.integrations.transformers.assign_layer_ids(model) first")
    return layer_idx


def sage_mask(q_length, kv_length, q_offset=0, kv_offset=0, mask_function=causal_mask_function,
              attention_mask=None, local_size=None, allow_is_causal_skip=True, allow_is_bidirectional_skip=False,
              **kwargs):
    """transformers mask builder for "sage": None when the kernel's own masking is exact, else the
    materialized SDPA mask (which sage_attention_forward refuses)."""
    # A sliding window or attention chunk (local_size) changes nothing while every key lies inside
    # it: the keys are positions 0 .. kv_length - 1 here (kv_offset 0), so below local_size.
    window_is_moot = local_size is None or (isinstance(kv_length, int) and kv_length < local_size)
    plain = window_is_moot and kv_offset == 0 and not _has_padding(attention_mask, kv_length, kv_offset)
    # Keys = the cache's past tokens followed by this step's: causal is bottom-right aligned.
    cache_is_exactly_past_and_present = isinstance(q_offset, int) and kv_length == q_offset + q_length
    # Causal: the causal function, or (a window given while the causal skip is allowed) transformers'
    # sliding-window or chunked causal mask, the only callers that pass both; its own SDPA path
    # skips those masks on the same condition.
    causal = mask_function is causal_mask_function or local_size is not None
    if plain and allow_is_causal_skip and causal and cache_is_exactly_past_and_present:
        return None
    if plain and allow_is_bidirectional_skip and mask_function is bidirectional_mask_function:
        return None
    return sdpa_mask(q_length=q_length, kv_length=kv_length, q_offset=q_offset, kv_offset=kv_offset,
                     mask_function=mask_function, attention_mask=attention_mask, local_size=local_size,
                     allow_is_causal_skip=False, allow_is_bidirectional_skip=False, **kwargs)


def _has_padding(attention_mask, kv_length, kv_offset) -> bool:
    """Whether a 2-D padding mask masks anything (assumed so while tracing, where it cannot be read:
    tokenizers return an all-ones mask with every batch, and that one must not need a mask)."""
    if attention_mask is None:
        return False
    if is_tracing(attention_mask):
        return True
    return not bool(prepare_padding_mask(attention_mask, kv_length, kv_offset).all())


def _reject_unsupported(module, attention_mask, dropout, kwargs):
    where = f"sage attention ({type(module).__name__})"
    if attention_mask is not None:
        # (While tracing, transformers cannot read the inputs, so it cannot rule out padding or
        # packed sequences and builds a mask it would skip eagerly. The eager rerun of a frame that
        # broke the graph raises here too, no longer compiling: so the hint is always given.)
        raise NotImplementedError(
            f"{where}: got an attention mask of shape {tuple(attention_mask.shape)}; sage supports causal or full "
            "attention only, not padding, sliding-window or packed-sequence masks. Run unpadded batches "
            "(e.g. batch size 1 or equal lengths without an attention_mask), or use attn_implementation='sdpa'. "
            "Under torch.compile, transformers builds such a mask for every call with an attention_mask or "
            "without a KV cache (use_cache=False): compile calls that pass neither.")
    if dropout:
        raise NotImplementedError(f"{where}: attention dropout {dropout} is not supported (inference only; "
                                  "call model.eval())")
    for keyword, feature in _UNSUPPORTED_FEATURES.items():
        if kwargs.get(keyword) is not None:
            raise NotImplementedError(f"{where}: {feature} ({keyword}=...) is not supported")


def register(name: str = NAME) -> None:
    """Make `attn_implementation=name` route attention through sage_attention."""
    AttentionInterface.register(name, sage_attention_forward)
    AttentionMaskInterface.register(name, sage_mask)


register()
