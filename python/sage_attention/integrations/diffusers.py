"""diffusers integration: run a model's attention processors with SDPA routed to sage.

    from sage_attention.integrations.diffusers import apply_sage_attention, remove_sage_attention
    apply_sage_attention(pipe.transformer)   # or pipe.unet
    remove_sage_attention(pipe.transformer)  # back to diffusers' own processors

Every attention processor of the model is swapped for a subclass that runs
the original under `sage_attention.override_sdpa()`, so that its call to
torch's scaled_dot_product_attention (AttnProcessor2_0, and the Flux/SD3/Wan/...
processors through the attention dispatcher's default "native" backend)
computes with sage. The projections, normalizations and RoPE stay diffusers'
own code; only the attention math changes. A call sage cannot honour (an
attention mask, dropout) raises.

A processor that makes no SDPA call runs without sage and warns (Python's
warning filters show it once per place by default): the classic
AttnProcessor, linear-attention processors (Sana), attention slicing enabled
before apply_sage_attention, and diffusers attention backends that do not call
torch's SDPA (`set_attention_backend`, `attention_backend(...)`,
DIFFUSERS_ATTN_BACKEND: flash, flex, xformers, ...; "native" and the
"_native_*" ones call it, so sage computes for them). So does one whose SDPA
calls a torch function mode entered before it takes (diffusers'
attention-score skipping for perturbed-attention guidance): sage leaves them
to that mode. Processors that diffusers installs after apply_sage_attention
(`enable_attention_slicing()`, loading an IP-Adapter) are its own again:
apply it once more after them.

torch.compile: compile with the default fullgraph=False. Dynamo cannot trace
some tensor methods (the Flux processors' `unflatten`) under the
TorchFunctionMode the processors run in, so fullgraph=True fails there; with
fullgraph=False the graph breaks around those calls and the rest compiles.
"""

from __future__ import annotations

import functools
import inspect
import warnings

from .._sdpa import override_sdpa


@functools.cache
def _sage_processor_class(processor_class: type) -> type:
    """`processor_class` whose __call__ runs under override_sdpa(). The signature is the original's:
    diffusers passes a processor only the keyword arguments its __call__ declares."""

    def __call__(self, *args, **kwargs):
        mode = override_sdpa()
        with mode:
            out = processor_class.__call__(self, *args, **kwargs)
        if mode.calls == 0:
            why = (f"another torch function mode took its SDPA calls ({', '.join(sorted(mode.deferred_to))})"
                   if mode.deferred_to else "attention slicing, a processor that does not call torch's SDPA, or a "
                   "diffusers attention backend that does not")
            warnings.warn(f"sage_attention: {processor_class.__name__} ran without sage: {why}", stacklevel=2)
        return out

    def __reduce__(self):  # the class is made here, not importable by name: pickle the original, then wrap it
        return sage_processor, (original_processor(self),)

    __call__.__signature__ = inspect.signature(processor_class.__call__)
    return type(f"Sage{processor_class.__name__}", (processor_class,),
                {"__call__": __call__, "__reduce__": __reduce__, "_sage_original_class": processor_class,
                 "__doc__": f"{processor_class.__name__} with SDPA computed by sage_attention."})


def is_sage_processor(processor) -> bool:
    """Whether `processor` is one that sage_processor made."""
    return "_sage_original_class" in type(processor).__dict__


def sage_processor(processor):
    """A copy of a diffusers attention processor that computes its attention with sage (the
    processor itself if it already does)."""
    if is_sage_processor(processor):
        return processor
    return _copy_as(processor, _sage_processor_class(type(processor)))


def original_processor(processor):
    """The diffusers processor a sage processor was made from (a copy), or `processor` itself."""
    if not is_sage_processor(processor):
        return processor
    return _copy_as(processor, type(processor)._sage_original_class)


def _copy_as(processor, cls):
    """A shallow copy of `processor` as an instance of `cls` (not copy.copy: a sage processor's
    __reduce__ would bring it back here)."""
    copied = cls.__new__(cls)
    copied.__dict__.update(processor.__dict__)
    return copied


def apply_sage_attention(model) -> None:
    """Swap every attention processor of a diffusers model (anything with `attn_processors` /
    `set_attn_processor`) for its sage version. Applying it twice changes nothing."""
    _check_has_processors(model)
    model.set_attn_processor({name: sage_processor(p) for name, p in model.attn_processors.items()})


def remove_sage_attention(model) -> None:
    """Undo apply_sage_attention: every sage processor of the model back to its diffusers original."""
    _check_has_processors(model)
    model.set_attn_processor({name: original_processor(p) for name, p in model.attn_processors.items()})


def _check_has_processors(model) -> None:
    if not (hasattr(model, "attn_processors") and hasattr(model, "set_attn_processor")):
        raise TypeError(f"{type(model).__name__} has no attn_processors / set_attn_processor (not a diffusers model "
                        "with attention processors); to route its SDPA calls to sage, run it under "
                        "`with sage_attention.override_sdpa():` instead")
