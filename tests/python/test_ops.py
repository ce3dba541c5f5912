"""The torch.library contract of the operators, on CPU tensors (the emulation path):
opcheck, fake tensors, torch.compile, autograd refusal."""

from __future__ import annotations

import functools

import pytest
import torch
from torch.autograd import forward_ad as fwAD
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode

from conftest import randn
from sage_attention import merge_state, merge_state_, sageattn

forward = torch.ops.sage_attention.forward.default


def qkv(b=1, hq=2, hkv=2, nq=32, nk=48, d=32, layout="HND"):
    shape = (lambda h, n: (b, h, n, d)) if layout == "HND" else (lambda h, n: (b, n, h, d))
    return randn(*shape(hq, nq), seed=1), randn(*shape(hkv, nk), seed=2), randn(*shape(hkv, nk), seed=3)


@pytest.mark.parametrize("options", [
    ("HND", False, None, False),
    ("HND", True, 0.2, True, "bottom_right"),
    ("HND", False, None, True, "top_left", "int8", "per_thread", "fp16", "fp32", True, False, True),
])
def test_forward_opcheck(options):
    torch.library.opcheck(forward, (*qkv(hq=4), *options))


def test_forward_opcheck_nhd_strided_views():
    q, k, v = (t.transpose(1, 2) for t in qkv())  # HND storage seen as NHD views
    torch.library.opcheck(forward, (q, k, v, "NHD", True, None, True))


def test_forward_opcheck_requires_grad():
    q, k, v = qkv()
    q.requires_grad_()
    torch.library.opcheck(forward, (q, k, v), test_utils=("test_schema", "test_autograd_registration",
                                                          "test_faketensor"))


def test_merge_opchecks():
    out_a, out_b = randn(1, 2, 8, 16, seed=1), randn(1, 2, 8, 16, seed=2)
    lse_a, lse_b = randn(1, 2, 8, seed=3), randn(1, 2, 8, seed=4)
    torch.library.opcheck(torch.ops.sage_attention.merge_state.default, (out_a, lse_a, out_b, lse_b))
    torch.library.opcheck(torch.ops.sage_attention.merge_state_inplace.default, (out_a, lse_a, out_b, lse_b, "HND"))


def test_schemas_state_what_is_mutated():
    assert not torch.ops.sage_attention.forward.default._schema.is_mutable
    assert not torch.ops.sage_attention.merge_state.default._schema.is_mutable
    inplace = torch.ops.sage_attention.merge_state_inplace.default._schema
    assert [a.name for a in inplace.arguments if a.alias_info and a.alias_info.is_write] == ["out_a", "lse_a"]


def test_fake_tensors_give_shapes_without_computing():
    with FakeTensorMode():
        q, k, v = torch.empty(2, 64, 8, 64), torch.empty(2, 96, 2, 64), torch.empty(2, 96, 2, 64)
        out, lse = sageattn(q, k, v, tensor_layout="NHD", return_lse=True)
        assert out.shape == q.shape and out.is_contiguous()
        assert lse.shape == (2, 8, 64) and lse.dtype == torch.float32
        _, no_lse = forward(q, k, v, "NHD")
        assert no_lse.numel() == 0


def test_lse_is_empty_when_not_requested():
    _, lse = forward(*qkv())
    assert lse.numel() == 0 and lse.dtype == torch.float32


def test_backward_raises_not_implemented():
    q, k, v = qkv()
    q.requires_grad_()
    out = sageattn(q, k, v)
    with pytest.raises(NotImplementedError, match="no backward"):
        out.sum().backward()


def test_a_gradient_into_lse_alone_reaches_the_refusing_backward():
    q, k, v = qkv()
    q.requires_grad_()
    _, lse = sageattn(q, k, v, return_lse=True)
    assert lse.requires_grad  # (not silently cut off: q.grad would stay None with a loss on lse alone)
    with pytest.raises(NotImplementedError, match="no backward"):
        lse.sum().backward()


@pytest.mark.parametrize("transform", ["dual_level", "jvp", "grad", "vjp"])
def test_derivatives_by_forward_mode_and_torch_func_are_refused(transform):
    """The kernels would drop a tangent without a word; torch.func's transforms would fail obscurely."""
    q, k, v = qkv()
    attend = functools.partial(sageattn, k=k, v=v)
    with pytest.raises(NotImplementedError, match="no forward-mode derivative" if transform in ("dual_level", "jvp")
                       else "no backward"):
        if transform == "dual_level":
            with fwAD.dual_level():
                attend(fwAD.make_dual(q, torch.ones_like(q)))
        elif transform == "jvp":
            torch.func.jvp(attend, (q,), (torch.ones_like(q),))
        elif transform == "grad":
            torch.func.grad(lambda q: attend(q).sum())(q)
        else:
            torch.func.vjp(attend, q)
    torch.testing.assert_close(attend(q), sageattn(q, k, v))  # (no level left open)


@pytest.mark.parametrize("transform", ["grad", "vjp", "vmap"])
def test_torch_func_transforms_over_other_inputs_run_the_attention_they_close_over(transform):
    """q, k and v are plain tensors the function closes over: the call must still go through the
    dispatcher while the transform runs (the direct path made its outputs in the transform's
    layer and failed: "Cannot access data pointer" before session 72)."""
    q, k, v = qkv()
    want = sageattn(q, k, v)
    scale = torch.ones(3)
    if transform == "grad":
        got = torch.func.grad(lambda s: (sageattn(q, k, v).sum() * s).sum())(scale)
        torch.testing.assert_close(got, want.sum().expand(3), rtol=0, atol=0)
    elif transform == "vjp":
        value, _ = torch.func.vjp(lambda s: sageattn(q, k, v).sum() * s, scale)
        torch.testing.assert_close(value, want.sum() * scale, rtol=0, atol=0)
    else:
        got = torch.func.vmap(lambda s: sageattn(q, k, v) * s)(scale)
        torch.testing.assert_close(got, want.expand(3, *want.shape), rtol=0, atol=0)


def test_merges_refuse_tangents_and_torch_func_gradients():
    out_a, lse_a, out_b, lse_b = (randn(1, 2, 8, 16, seed=1), randn(1, 2, 8, seed=2), randn(1, 2, 8, 16, seed=3),
                                  randn(1, 2, 8, seed=4))
    with fwAD.dual_level():
        dual = fwAD.make_dual(out_a.clone(), torch.ones_like(out_a))
        with pytest.raises(NotImplementedError, match="no forward-mode derivative"):
            merge_state(dual, lse_a, out_b, lse_b)
        with pytest.raises(NotImplementedError, match="no forward-mode derivative"):
            merge_state_(dual, lse_a.clone(), out_b, lse_b)  # (would keep out_a's stale tangent)
    with pytest.raises(NotImplementedError, match="no backward"):
        torch.func.grad(lambda a: merge_state(a, lse_a, out_b, lse_b)[0].sum())(out_a)
    with pytest.raises(ValueError, match="lse_a: dtype must be float32, got torch.float64"):
        merge_state(out_a, lse_a.double(), out_b, lse_b)


class _EvalBlock(torch.nn.Module):
    """Projections then sageattn: in eval() without no_grad(), q, k, v require grad (the weights do)."""

    def __init__(self, dim=32, heads=2):
        super().__init__()
        self.heads, self.qkv = heads, torch.nn.Linear(dim, 3 * dim)

    def forward(self, x):
        q, k, v = self.qkv(x).unflatten(-1, (3, self.heads, -1)).permute(2, 0, 1, 3, 4)
        return sageattn(q, k, v, tensor_layout="NHD", is_causal=True)


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_compile_with_inputs_that_require_grad_matches_eager_and_refuses_backward(backend):
    # The backward is traced at compile time; it must raise only when it runs.
    torch._dynamo.reset()
    block = _EvalBlock().eval()
    x = randn(2, 24, 32, seed=5)
    eager = block(x)
    compiled = torch.compile(block, fullgraph=True, backend=backend)(x)
    assert compiled.requires_grad
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-5)
    with pytest.raises(NotImplementedError, match="no backward"):
        compiled.sum().backward()


def test_merge_backward_raises_when_run_not_when_traced():
    args = (randn(1, 2, 8, 16, seed=1).requires_grad_(), randn(1, 2, 8, seed=2), randn(1, 2, 8, 16, seed=3),
            randn(1, 2, 8, seed=4))
    torch.library.opcheck(torch.ops.sage_attention.merge_state.default, args,
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))
    compiled = torch.compile(merge_state, fullgraph=True, backend="aot_eager")
    out, _ = compiled(*args)
    torch.testing.assert_close(out, merge_state(*args)[0])
    with pytest.raises(NotImplementedError, match="no backward"):
        out.sum().backward()


def test_inplace_merge_refuses_tensors_that_require_grad():
    out_a = randn(1, 2, 8, 16, seed=1).requires_grad_() * 1.0
    lse_a, out_b, lse_b = randn(1, 2, 8, seed=2), randn(1, 2, 8, 16, seed=3), randn(1, 2, 8, seed=4)
    with pytest.raises(RuntimeError, match="no backward"):
        merge_state_(out_a, lse_a, out_b, lse_b)
    with torch.no_grad():
        merge_state_(out_a, lse_a, out_b, lse_b)


def test_meta_tensors_give_meta_outputs():
    q, k, v = (t.to("meta") for t in qkv(hq=4))
    out, lse = sageattn(q, k, v, return_lse=True)
    assert out.is_meta and out.shape == q.shape and lse.shape == (1, 4, 32)
    merged, merged_lse = merge_state(out, lse, out, lse)
    assert merged.is_meta and merged_lse.is_meta


@pytest.mark.parametrize("meta", ["q", "k", "v"])
def test_tensors_on_different_devices_are_refused(meta):
    tensors = dict(zip("qkv", qkv()))
    tensors[meta] = tensors[meta].to("meta")
    with pytest.raises(ValueError, match="one device"):
        sageattn(tensors["q"], tensors["k"], tensors["v"])
    out_a, lse_a = randn(1, 2, 8, 16), randn(1, 2, 8)
    with pytest.raises(ValueError, match="one device"):
        merge_state(out_a, lse_a, out_a.to("meta"), lse_a)


def test_no_autograd_graph_under_no_grad():
    q, k, v = qkv()
    q.requires_grad_()
    with torch.no_grad():
        assert sageattn(q, k, v).grad_fn is None


class _OpRecorder(TorchDispatchMode):
    """Records the names of the aten / custom operators dispatched under it."""

    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("torch_calls", ["loaded", "absent"])
def test_plain_eager_calls_skip_the_dispatcher_with_the_same_result(monkeypatch, torch_calls):
    from sage_attention import _ops
    # Absent, attention's Python checks decide (_eager_context, _plain_tensors), as in a package
    # built without it.
    if torch_calls == "absent":
        monkeypatch.setattr(_ops, "_torch_calls", None)
    q, k, v = qkv(hq=4)
    via_op = forward(q, k, v, "HND", True, None, True)
    dispatched = []
    monkeypatch.setattr(_ops, "forward", lambda *a: dispatched.append(a) or via_op)
    out, lse = sageattn(q, k, v, is_causal=True, return_lse=True)
    assert not dispatched
    assert torch.equal(out, via_op[0]) and torch.equal(lse, via_op[1])


class _CallCounter:
    """Counts the calls of an operator overload, and otherwise behaves as it (redispatch and the rest)."""

    def __init__(self, op):
        self.op, self.calls = op, 0

    def __call__(self, *args):
        self.calls += 1
        return self.op(*args)

    def __getattr__(self, name):
        return getattr(self.op, name)


@pytest.mark.parametrize("case", ["requires_grad", "dispatch_mode", "parameter"])
def test_calls_that_need_the_dispatcher_go_through_the_operator(case, monkeypatch):
    q, k, v = qkv()
    recorder = _OpRecorder()
    if case == "requires_grad":
        q.requires_grad_()
        out = sageattn(q, k, v)
        assert out.grad_fn is not None  # recorded on the autograd graph, whose backward refuses
    elif case == "parameter":  # a tensor subclass, even without a gradient
        from sage_attention import _ops
        spy = _CallCounter(forward)
        monkeypatch.setattr(_ops, "forward", spy)
        out = sageattn(torch.nn.Parameter(q, requires_grad=False), k, v)
        assert spy.calls == 1
    else:
        with recorder:
            out = sageattn(q, k, v)
        assert "sage_attention.forward.default" in recorder.ops
    torch.testing.assert_close(out.detach(), forward(q.detach(), k, v)[0], rtol=0, atol=0)


def _block(q, k, v):
    """A block calling sageattn between other ops, as a model would."""
    out, lse = sageattn(q * 1.0, k, v, is_causal=True, return_lse=True, smooth_k=True, scale=0.125)
    return torch.relu(out) + lse.unsqueeze(-1).mean()


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_compile_fullgraph_matches_eager(backend):
    torch._dynamo.reset()
    q, k, v = qkv(hq=4)
    compiled = torch.compile(_block, fullgraph=True, backend=backend)
    torch.testing.assert_close(compiled(q, k, v), _block(q, k, v), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dim", [1, 3])
def test_compile_with_sizes_known_at_run_time(dim):
    """The fake kernel's checks leave sizes that only the run decides (heads or head dim from .item())
    to the core, rather than failing the trace."""
    torch._dynamo.reset()

    def block(q, k, v, n):
        keep = n.item()
        return sageattn(*(t.narrow(dim, 0, keep) for t in (q, k, v)))

    q, k, v = qkv(hq=4, hkv=4)
    n = torch.tensor(2 if dim == 1 else 16)
    with torch._dynamo.config.patch(capture_scalar_outputs=True):
        compiled = torch.compile(block, fullgraph=True, backend="aot_eager")
        torch.testing.assert_close(compiled(q, k, v, n), block(q, k, v, n), rtol=0, atol=0)


def test_compile_merge_inplace_fullgraph():
    torch._dynamo.reset()

    def merged(out_a, lse_a, out_b, lse_b):
        out_a, lse_a = out_a.clone(), lse_a.clone()
        merge_state_(out_a, lse_a, out_b, lse_b)
        return out_a, lse_a

    args = (randn(1, 2, 8, 16, seed=1), randn(1, 2, 8, seed=2), randn(1, 2, 8, 16, seed=3), randn(1, 2, 8, seed=4))
    compiled = torch.compile(merged, fullgraph=True, backend="aot_eager")
    for got, want in zip(compiled(*args), merge_state(*args)):
        torch.testing.assert_close(got, want)
