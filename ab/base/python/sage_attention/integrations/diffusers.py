"""diffusers integration: run a model's attention processors with SDPA routed to sage.

    from sage_attention.integrations.diffusers import apply_sage_attention
    apply_sage_attention(pipe.transformer)   # or pipe.unet

Every attention processor of the model (AttnProcessor2_0, the Flux/SD3/...
processors, and the attention dispatcher's native backend: all of them end
in torch's scaled_dot_product_attention) is swapped for a subclass that runs
the original under `sage_attention.override_sdpa()`. The projections,
normalizations and RoPE stay diffusers' own code; only the attention math
changes. A call sage cannot honour (an attention mask, dropout) raises.
"""

from __future__ import annotations

import copy
import functools
import inspect

from .._sdpa import override_sdpa


@functools.cache
def _sage_processor_class(processor_class: type) -> type:
    """`processor_class` whose __call__ runs under override_sdpa(). The signature is the original's:
    diffusers passes a processor only the keyword arguments its __call__ declares."""

    def __call__(self, *args, **kwargs):
        with override_sdpa():
            return processor_class.__call__(self, *args, **kwargs)

    __call__.__signature__ = inspect.signature(processor_class.__call__)
    return type(f"Sage{processor_class.__name__}", (processor_class,),
                {"__call__": __call__, "__doc__": f"{processor_class.__name__} with SDPA computed by sage_attention."})


def sage_processor(processor):
    """A copy of a diffusers attention processor that computes its attention with sage."""
    sage = copy.copy(processor)
    sage.__class__ = _sage_processor_class(type(processor))
    return sage


def apply_sage_attention(model) -> None:
    """Swap every attention processor of a diffusers model (anything with `attn_processors` /
    `set_attn_processor`) for its sage version."""
    model.set_attn_processor({name: sage_processor(p) for name, p in model.attn_processors.items()})
