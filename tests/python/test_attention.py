"""sageattn on CPU tensors: layouts, GQA, causal alignment, LSE, keyword hygiene, errors."""

from __future__ import annotations

import enum

import pytest
import torch

from conftest import cosine, randn, reference_attention
from sage_attention import sageattn


def to_layout(t, layout):
    return t if layout == "HND" else t.transpose(1, 2).contiguous()


@pytest.mark.parametrize("layout", ["HND", "NHD"])
@pytest.mark.parametrize("heads", [(4, 4), (4, 2), (4, 1)])
@pytest.mark.parametrize("causal", [False, True])
def test_matches_exact_attention(layout, heads, causal):
    hq, hkv = heads
    q, k, v = randn(2, hq, 40, 64, seed=1), randn(2, hkv, 72, 64, seed=2), randn(2, hkv, 72, 64, seed=3)
    out, lse = sageattn(*(to_layout(t, layout) for t in (q, k, v)), tensor_layout=layout, is_causal=causal,
                        return_lse=True)
    want, want_lse = reference_attention(q, k, v, is_causal=causal)
    assert out.shape == to_layout(q, layout).shape and lse.shape == (2, hq, 40)
    assert cosine(to_layout(out, layout), want) > 0.995
    # A causal row with few keys carries its scores' INT8 error straight into the LSE: over 360
    # fresh cases the largest was 0.046 (a missing correction would be off by whole units).
    torch.testing.assert_close(lse.double(), want_lse, atol=8e-2, rtol=0)


def test_bottom_right_causal_alignment():
    q, k, v = randn(1, 2, 16, 32, seed=1), randn(1, 2, 48, 32, seed=2), randn(1, 2, 48, 32, seed=3)
    out = sageattn(q, k, v, is_causal=True, causal_align="bottom_right")
    assert cosine(out, reference_attention(q, k, v, True, causal_align="bottom_right")[0]) > 0.995


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs(dtype):
    q, k, v = (randn(1, 2, 32, 64, seed=s, dtype=dtype) for s in (1, 2, 3))
    out = sageattn(q, k, v)
    assert out.dtype == dtype and cosine(out, reference_attention(q, k, v)[0]) > 0.995


def test_strided_views_are_accepted():
    base = randn(1, 32, 3, 2, 64, seed=4)  # packed qkv, NHD per slice
    q, k, v = base.unbind(2)
    out = sageattn(q, k, v, tensor_layout="NHD")
    want = reference_attention(*(t.transpose(1, 2) for t in (q, k, v)))[0].transpose(1, 2)
    assert cosine(out, want) > 0.995


@pytest.mark.parametrize("alias", ["sm_scale", "scale", "softmax_scale"])
def test_scale_aliases(alias):
    q, k, v = (randn(1, 1, 16, 32, seed=s) for s in (1, 2, 3))
    out = sageattn(q, k, v, **{alias: 0.3})
    assert cosine(out, reference_attention(q, k, v, scale=0.3)[0]) > 0.995


def test_quantization_options_change_the_numerics():
    q, k, v = (randn(1, 2, 64, 64, seed=s) for s in (1, 2, 3))
    default = sageattn(q, k, v)
    assert torch.equal(default, sageattn(q, k, v, qk_quant_gran="per_warp", smooth_k=True, pv_format="fp8_e4m3"))
    for options in ({"qk_granularity": "per_thread"}, {"pv_format": "fp16", "pv_accum": "fp32"},
                    {"smooth_v": True}, {"smooth_k": False}, {"qk_format": "int4"}):
        out = sageattn(q, k, v, **options)
        assert not torch.equal(out, default), options
        assert cosine(out, reference_attention(q, k, v)[0]) > 0.97, options


def test_unknown_keyword_lists_the_valid_ones():
    q = randn(1, 1, 8, 16)
    with pytest.raises(TypeError, match=r"unexpected keyword argument 'causal'.*is_causal.*qk_granularity.*smooth_k"):
        sageattn(q, q, q, causal=True)


def test_scale_given_twice_is_an_error():
    q = randn(1, 1, 8, 16)
    with pytest.raises(TypeError, match="both sm_scale and its alias 'scale'"):
        sageattn(q, q, q, sm_scale=0.1, scale=0.2)


@pytest.mark.parametrize("call, error, message", [
    (lambda q: sageattn(q, q, q, sm_scale=-1.0), ValueError, "sm_scale"),
    (lambda q: sageattn(q, q, q, sm_scale=float("nan")), ValueError, "sm_scale"),
    (lambda q: sageattn(q, q, q, tensor_layout="BHND"), ValueError, "tensor_layout"),
    (lambda q: sageattn(q, q, q, qk_granularity="per_row"), ValueError, "qk_granularity.*per_block"),
    (lambda q: sageattn(q[0], q[0], q[0]), ValueError, "4-D"),
    (lambda q: sageattn(q, q.double(), q), ValueError, "dtype"),
    (lambda q: sageattn(q, q[:, :, :, :8], q), ValueError, "k: head_dim 8 differs from q's head_dim 16"),
    (lambda q: sageattn(q.repeat(1, 3, 1, 1), q.repeat(1, 2, 1, 1), q.repeat(1, 2, 1, 1)), ValueError, "multiple"),
    (lambda q: sageattn(q, q, q, smooth_k="no"), TypeError, "smooth_k: expected a bool"),
    (lambda q: sageattn(q, q, q, pv_format=None), TypeError, "pv_format: expected a str"),
    (lambda q: sageattn(q, q, q, qk_format=["int8"]), TypeError, "qk_format: expected a str"),
    (lambda q: sageattn(q, q, q, is_causal="no"), TypeError, "is_causal: expected a bool"),
    (lambda q: sageattn(q, q, q, return_lse=None), TypeError, "return_lse: expected a bool"),
    (lambda q: sageattn(q, q, q, qk_quant_gran="per_thread", qk_granularity="per_block"), TypeError,
     "both qk_granularity and its alias 'qk_quant_gran'"),
    # The kernels' limit holds on CPU too: what passes in CPU tests runs on the GPU.
    (lambda q: sageattn(*(q.repeat(1, 1, 1, 9),) * 3), NotImplementedError, "head dim 144"),
    (lambda q: sageattn(q[:0], q[:0, :, :, :8], q[:0]), ValueError, "k and v must have one shape"),
    # The operator's fake kernel (meta tensors, torch.compile's tracing) checks the options as the kernels do.
    (lambda q: torch.ops.sage_attention.forward(*(q.to("meta"),) * 3, "BHND"), ValueError, "tensor_layout"),
    (lambda q: torch.ops.sage_attention.forward(*(q.to("meta"),) * 3, "HND", False, -1.0), ValueError, "sm_scale"),
    # ... and the tensors, so that torch.compile fails when it traces a call that cannot run.
    (lambda q: sageattn(*(q.repeat(1, 1, 1, 16).to("meta"),) * 3), NotImplementedError, "head dim 256"),
    (lambda q: sageattn(*(q.double().to("meta"),) * 3), ValueError, "q: unsupported dtype torch.float64"),
    (lambda q: sageattn(q.to("meta"), *(q.repeat(1, 2, 1, 1)[:, :3].to("meta"),) * 2), ValueError, "multiple"),
    (lambda q: sageattn(*(torch.empty(*q.shape[:3], 32, device="meta")[..., ::2],) * 3), ValueError, "stride 1"),
    # A positive scale the core's float32 cannot hold is an error, not the default (0) or infinity.
    (lambda q: sageattn(q, q, q, sm_scale=1e-46), ValueError, "sm_scale: 1e-46 is 0.0 in float32"),
    (lambda q: sageattn(q, q, q, sm_scale=1e39), ValueError, "sm_scale: 1e.39 is inf in float32"),
    (lambda q: sageattn(q, q, q, sm_scale=10**400), ValueError, "sm_scale: .* too large for a float"),
    (lambda q: sageattn(q, q, q, sm_scale="0.1"), TypeError, "sm_scale: expected a number"),
    (lambda q: sageattn(q, None, q), TypeError, "k: expected a torch.Tensor, got NoneType"),
    (lambda q: sageattn(q, q, q, tensor_layout=["HND"]), TypeError, "tensor_layout"),
    (lambda q: sageattn(q.to_sparse(), q, q), ValueError, "q: expected a dense .* layout torch.sparse_coo"),
    (lambda q: sageattn(torch.nested.nested_tensor([q[0], q[0, :, :5]]), q, q), ValueError, "q: .* a nested tensor"),
    # Calls with no key or no query row check what needs no data, as the core does for the others.
    (lambda q: sageattn(q.int(), q[:, :, :0].int(), q[:, :, :0].int()), ValueError, "unsupported dtype torch.int32"),
    (lambda q: sageattn(q.repeat(1, 1, 1, 2)[..., ::2], q[:, :, :0], q[:, :, :0]), ValueError,
     "q: the last dimension must be contiguous"),
])
@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors")
def test_bad_arguments_raise_naming_the_argument(call, error, message):
    with pytest.raises(error, match=message):
        call(randn(1, 2, 8, 16))


def test_tensor_layout_may_be_a_str_subclass():
    class Layout(str, enum.Enum):
        NHD = "NHD"

    q, k, v = randn(1, 8, 2, 16, seed=1), randn(1, 8, 2, 16, seed=2), randn(1, 8, 2, 16, seed=3)
    assert torch.equal(sageattn(q, k, v, tensor_layout=Layout.NHD), sageattn(q, k, v, tensor_layout="NHD"))


def test_flags_take_bools_and_their_integers():
    q, k, v = randn(1, 2, 8, 16, seed=1), randn(1, 2, 8, 16, seed=2), randn(1, 2, 8, 16, seed=3)
    torch.testing.assert_close(sageattn(q, k, v, is_causal=1, smooth_k=0), sageattn(q, k, v, is_causal=True,
                                                                                   smooth_k=False), rtol=0, atol=0)


def test_empty_problems():
    q, k = randn(1, 2, 8, 16), randn(1, 2, 0, 16)
    out, lse = sageattn(q, k, k, return_lse=True)
    assert torch.equal(out, torch.zeros_like(q)) and torch.equal(lse, torch.full((1, 2, 8), float("-inf")))
    assert sageattn(q[:0], q[:0], q[:0]).shape == (0, 2, 8, 16)
    out, lse = sageattn(q[:, :, :0], q, q, return_lse=True)
    assert out.shape == (1, 2, 0, 16) and lse.shape == (1, 2, 0)


@pytest.mark.parametrize("tensor, value", [(0, float("nan")), (0, float("inf")), (1, float("nan")), (1, float("inf")),
                                           (1, float("-inf")), (2, float("nan")), (2, float("inf"))])
def test_nonfinite_inputs_never_give_finite_wrong_outputs(tensor, value):
    """A NaN or an infinity in q, k or v: every output SDPA makes non-finite is non-finite too (and the
    LSE of such a row NaN where the value was in q or k), and the other head stays finite."""
    qkv = [randn(1, 2, 40, 32, seed=s) for s in (1, 2, 3)]
    qkv[tensor][0, 0, 21, 7] = value
    out, lse = sageattn(*qkv, return_lse=True)
    expected = ~torch.isfinite(torch.nn.functional.scaled_dot_product_attention(*qkv))
    assert expected.any()
    assert bool((~torch.isfinite(out))[expected].all())
    if tensor != 2:
        assert bool(torch.isnan(lse)[expected.any(-1)].all())
    assert bool(torch.isfinite(out[0, 1]).all())
