"""diffusers models with their attention processors computing through sage."""

from __future__ import annotations

import copy
import pickle
import warnings

import pytest
import torch

pytest.importorskip("diffusers", reason="diffusers is not installed (pip install diffusers)")
from diffusers import FluxTransformer2DModel  # noqa: E402
from diffusers.models.attention_processor import Attention, AttnProcessor, AttnProcessor2_0  # noqa: E402

from conftest import cosine, randn, requires_gpu  # noqa: E402
from sage_attention.integrations.diffusers import (apply_sage_attention, is_sage_processor,  # noqa: E402
                                                   remove_sage_attention, sage_processor)


def flux(device="cpu", dtype=torch.float32, heads=2, head_dim=16, layers=1):
    torch.manual_seed(0)
    model = FluxTransformer2DModel(patch_size=1, in_channels=4, num_layers=layers, num_single_layers=layers,
                                   attention_head_dim=head_dim, num_attention_heads=heads, joint_attention_dim=32,
                                   pooled_projection_dim=32, axes_dims_rope=[head_dim // 4, head_dim // 4,
                                                                             head_dim // 2])
    return model.to(device=device, dtype=dtype).eval()


def flux_inputs(tokens=64, text=8, device="cpu", dtype=torch.float32):
    inputs = {"hidden_states": randn(1, tokens, 4, seed=1), "encoder_hidden_states": randn(1, text, 32, seed=2),
              "pooled_projections": randn(1, 32, seed=3), "timestep": torch.tensor([1.0]),
              "img_ids": randn(tokens, 3, seed=4), "txt_ids": randn(text, 3, seed=5)}
    return {name: t.to(device=device, dtype=dtype) for name, t in inputs.items()}


def run_both(model, inputs):
    with torch.no_grad():
        reference = model(**inputs).sample
        apply_sage_attention(model)
        return model(**inputs).sample, reference


def test_flux_transformer_matches_sdpa():
    model = flux()
    sage, reference = run_both(model, flux_inputs())
    assert all(type(p).__name__ == "SageFluxAttnProcessor" for p in model.attn_processors.values())
    assert not torch.equal(sage, reference), "the processors did not route to sage"
    assert cosine(sage, reference) > 0.999


def test_classic_attention_processor_matches_sdpa():
    attention = Attention(query_dim=64, cross_attention_dim=32, heads=4, dim_head=16, processor=AttnProcessor2_0())
    x, context = randn(2, 40, 64, seed=1), randn(2, 12, 32, seed=2)
    with torch.no_grad():
        reference = attention(x, encoder_hidden_states=context)
        attention.set_processor(sage_processor(attention.processor))
        sage = attention(x, encoder_hidden_states=context)
    assert not torch.equal(sage, reference) and cosine(sage, reference) > 0.999


def test_attention_mask_is_refused():
    attention = Attention(query_dim=64, heads=4, dim_head=16, processor=sage_processor(AttnProcessor2_0()))
    with torch.no_grad(), pytest.raises(NotImplementedError, match="attn_mask"):
        attention(randn(1, 8, 64), attention_mask=torch.ones(1, 8, dtype=torch.bool))


@requires_gpu
def test_flux_bf16_on_gpu():
    model = flux("cuda", torch.bfloat16, heads=8, head_dim=128, layers=2)
    inputs = flux_inputs(tokens=1024, text=128, device="cuda", dtype=torch.bfloat16)
    sage, reference = run_both(model, inputs)
    assert cosine(sage, reference) > 0.99


def test_apply_twice_changes_nothing_and_remove_restores_diffusers_processors():
    model = flux()
    originals = {name: type(p) for name, p in model.attn_processors.items()}
    apply_sage_attention(model)
    applied = dict(model.attn_processors)
    apply_sage_attention(model)
    assert all(model.attn_processors[name] is p for name, p in applied.items())
    remove_sage_attention(model)
    assert {name: type(p) for name, p in model.attn_processors.items()} == originals
    with torch.no_grad():  # diffusers' own processors again: SDPA's exact result
        inputs = flux_inputs()
        assert torch.equal(model(**inputs).sample, flux()(**inputs).sample)


def test_sage_processors_pickle_and_deepcopy():
    model = flux()
    apply_sage_attention(model)
    for clone in (pickle.loads(pickle.dumps(model)), copy.deepcopy(model)):
        assert all(is_sage_processor(p) for p in clone.attn_processors.values())
        with torch.no_grad():
            inputs = flux_inputs()
            assert torch.equal(clone(**inputs).sample, model(**inputs).sample)


def test_processor_that_never_calls_sdpa_warns():
    # The classic AttnProcessor computes attention with baddbmm, not SDPA: sage cannot reach it.
    attention = Attention(query_dim=64, heads=4, dim_head=16, processor=sage_processor(AttnProcessor()))
    with torch.no_grad(), pytest.warns(UserWarning, match="AttnProcessor ran without sage"):
        attention(randn(1, 8, 64))


def test_processor_that_calls_sdpa_does_not_warn():
    attention = Attention(query_dim=64, heads=4, dim_head=16, processor=sage_processor(AttnProcessor2_0()))
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("error")
        attention(randn(1, 8, 64))


def test_model_without_processors_is_refused_with_a_way_out():
    with pytest.raises(TypeError, match="override_sdpa"):
        apply_sage_attention(torch.nn.Linear(4, 4))


def test_attention_score_skipping_still_skips():
    # Perturbed-attention guidance: diffusers' mode replaces the attention with V; sage must not take the call.
    from diffusers.hooks.layer_skip import AttentionScoreSkipFunctionMode
    attention = Attention(query_dim=64, heads=4, dim_head=16, processor=AttnProcessor2_0())
    x = randn(1, 8, 64)
    with torch.no_grad():
        with AttentionScoreSkipFunctionMode():
            skipped = attention(x)
        attention.set_processor(sage_processor(attention.processor))
        with AttentionScoreSkipFunctionMode(), pytest.warns(UserWarning, match="AttentionScoreSkipFunctionMode"):
            assert torch.equal(attention(x), skipped)
