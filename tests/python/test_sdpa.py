"""sage_attention.scaled_dot_product_attention keeps SDPA's semantics and refuses what it cannot honour."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from conftest import cosine, randn
from sage_attention import override_sdpa, scaled_dot_product_attention as sage_sdpa


@pytest.mark.parametrize("shape_q, shape_kv", [
    ((2, 4, 24, 32), (2, 4, 40, 32)),     # B, H, L, E
    ((4, 24, 32), (4, 40, 32)),           # H, L, E
    ((2, 3, 4, 24, 32), (2, 3, 4, 40, 32)),  # extra batch dim
])
@pytest.mark.parametrize("is_causal", [False, True])
def test_matches_torch_sdpa(shape_q, shape_kv, is_causal):
    q, k, v = randn(*shape_q, seed=1), randn(*shape_kv, seed=2), randn(*shape_kv, seed=3)
    out = sage_sdpa(q, k, v, is_causal=is_causal)
    want = F.scaled_dot_product_attention(q, k, v, is_causal=is_causal)  # causal: top-left, Lq != Lk
    assert out.shape == want.shape and cosine(out, want) > 0.995


def test_scale_and_gqa():
    q, k, v = randn(2, 8, 16, 64, seed=1), randn(2, 2, 16, 64, seed=2), randn(2, 2, 16, 64, seed=3)
    out = sage_sdpa(q, k, v, scale=0.05, enable_gqa=True)
    want = F.scaled_dot_product_attention(q, k, v, scale=0.05, enable_gqa=True)
    assert cosine(out, want) > 0.995


def test_non_contiguous_head_dim_is_handled():
    q, k, v = (randn(1, 2, 32, 16, seed=s).transpose(-1, -2) for s in (1, 2, 3))  # E has stride != 1
    assert cosine(sage_sdpa(q, k, v), F.scaled_dot_product_attention(q, k, v)) > 0.995


@pytest.mark.parametrize("kwargs, error, message", [
    ({"attn_mask": torch.ones(16, 16, dtype=torch.bool)}, NotImplementedError, "attn_mask"),
    ({"dropout_p": 0.1}, NotImplementedError, "dropout_p"),
    ({"scale": 0.0}, NotImplementedError, "scale"),
    ({"scale": 1e-46}, ValueError, "scale: 1e-46 is 0.0 in float32"),
    ({"scale": 10**400}, ValueError, "scale: .* too large for a float"),
])
def test_unsupported_arguments_raise(kwargs, error, message):
    q = randn(1, 2, 16, 32)
    with pytest.raises(error, match=message):
        sage_sdpa(q, q, q, **kwargs)


@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors")
@pytest.mark.parametrize("layout", [torch.strided, torch.jagged])
def test_nested_tensors_are_refused(layout):
    """Unpadded (nested) batches are an SDPA feature this implementation does not have: refused, naming
    the argument, rather than failing somewhere inside."""
    q = torch.nested.nested_tensor([randn(5, 2, 32), randn(7, 2, 32)], layout=layout).transpose(1, 2)
    with pytest.raises(NotImplementedError, match="query is a nested tensor"):
        sage_sdpa(q, q, q)


def test_head_count_mismatch_needs_enable_gqa():
    q, kv = randn(1, 4, 16, 32), randn(1, 2, 16, 32)
    with pytest.raises(ValueError, match="enable_gqa=True"):
        sage_sdpa(q, kv, kv)
    with pytest.raises(ValueError, match="multiple"):
        sage_sdpa(randn(1, 3, 16, 32), kv, kv, enable_gqa=True)


@pytest.mark.parametrize("q_shape, v_shape, message", [
    ((1, 2, 16, 32), (1, 2, 16, 64), "value head dim"),
    ((1, 2, 16, 256), (1, 2, 16, 256), "head dim 256"),
])
def test_head_dims_it_cannot_run(q_shape, v_shape, message):
    q, v = randn(*q_shape), randn(*v_shape)
    with pytest.raises(NotImplementedError, match=message):
        sage_sdpa(q, q, v)


def test_unsupported_dtype():
    q = randn(1, 2, 16, 32).double()
    with pytest.raises(ValueError, match="dtype"):
        sage_sdpa(q, q, q)


def test_inputs_that_require_grad_run_forward_and_refuse_backward():
    # A model in eval() without no_grad(): its projections require grad.
    q = randn(1, 2, 16, 32).requires_grad_()
    out = sage_sdpa(q, q, q)
    with torch.no_grad():
        torch.testing.assert_close(out.detach(), sage_sdpa(q, q, q), rtol=0, atol=0)
    with pytest.raises(NotImplementedError, match="no backward"):
        out.sum().backward()


@pytest.mark.parametrize("shape_q, shape_kv", [
    ((0, 2, 8, 16), (0, 2, 8, 16)),  # no batch
    ((1, 2, 0, 16), (1, 2, 8, 16)),  # no query
    ((1, 2, 8, 16), (1, 2, 0, 16)),  # no key: zeros
])
def test_empty_inputs_as_torch_sdpa(shape_q, shape_kv):
    q, k, v = randn(*shape_q, seed=1), randn(*shape_kv, seed=2), randn(*shape_kv, seed=3)
    got = sage_sdpa(q, k, v)
    assert got.shape == shape_q
    torch.testing.assert_close(got, F.scaled_dot_product_attention(q, k, v), rtol=0, atol=0)


def test_empty_key_views_need_no_contiguous_head_dim():
    """No key: nothing is read, so a strided empty view is as good as any (torch's SDPA takes it)."""
    q, kv = randn(1, 2, 16, 32), randn(1, 2, 0, 64)[..., ::2]
    assert torch.equal(sage_sdpa(q, kv, kv), torch.zeros_like(q))


def test_no_heads_gives_an_empty_output():
    q = randn(1, 0, 8, 16)  # (torch's own SDPA dies with SIGFPE here)
    assert sage_sdpa(q, q, q).shape == q.shape


def test_batch_dimensions_broadcast_as_in_torch_sdpa():
    q, k, v = randn(2, 4, 16, 32, seed=1), randn(1, 4, 24, 32, seed=2), randn(1, 4, 24, 32, seed=3)
    got = sage_sdpa(q, k, v)
    assert got.shape == F.scaled_dot_product_attention(q, k, v).shape
    expanded = sage_sdpa(q, k.expand(2, -1, -1, -1).contiguous(), v.expand(2, -1, -1, -1).contiguous())
    torch.testing.assert_close(got, expanded, rtol=0, atol=0)
    with pytest.raises(ValueError, match="do not broadcast"):
        sage_sdpa(q, randn(3, 4, 24, 32), randn(3, 4, 24, 32))


def test_key_and_value_lengths_must_agree():
    q = randn(1, 2, 16, 32)
    with pytest.raises(ValueError, match="same heads and sequence length"):
        sage_sdpa(q, randn(1, 2, 24, 32), randn(1, 2, 23, 32))


def test_is_causal_must_be_a_bool():
    q = randn(1, 2, 16, 32)
    with pytest.raises(TypeError, match="is_causal"):
        sage_sdpa(q, q, q, is_causal="no")


class SelfAttention(torch.nn.Module):
    """A model's attention written against torch's SDPA."""

    def __init__(self, dim=64, heads=4):
        super().__init__()
        self.heads, self.qkv = heads, torch.nn.Linear(dim, 3 * dim)

    def forward(self, x, mask=None):
        q, k, v = self.qkv(x).unflatten(-1, (3, self.heads, -1)).permute(2, 0, 3, 1, 4)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None).transpose(1, 2)


def test_override_sdpa_routes_a_model():
    model, x = SelfAttention(), randn(2, 24, 64)
    with torch.no_grad():
        want = model(x)
        with override_sdpa():
            got = model(x)
    assert not torch.equal(got, want), "the quantized path was not taken"
    assert cosine(got, want) > 0.995


def test_override_sdpa_leaves_sdpa_to_a_mode_entered_before_it():
    class ValueInsteadOfAttention(TorchFunctionMode):  # what diffusers' attention-score skipping does
        def __torch_function__(self, func, types, args=(), kwargs=None):
            if func is torch.nn.functional.scaled_dot_product_attention:
                return args[2]
            return func(*args, **(kwargs or {}))

    q, k, v = randn(1, 2, 8, 16, seed=1), randn(1, 2, 8, 16, seed=2), randn(1, 2, 8, 16, seed=3)
    with ValueInsteadOfAttention(), override_sdpa() as mode:
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    assert out is v and mode.calls == 0 and mode.deferred_to == {"ValueInsteadOfAttention"}
    with torch.device("cpu"), override_sdpa() as mode:  # torch's device context is not such a mode
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    assert mode.calls == 1 and not mode.deferred_to


def test_override_sdpa_refuses_a_mask():
    model, x = SelfAttention(), randn(2, 24, 64)
    with torch.no_grad(), override_sdpa(), pytest.raises(NotImplementedError, match="attn_mask"):
        model(x, mask=torch.ones(24, 24, dtype=torch.bool))
