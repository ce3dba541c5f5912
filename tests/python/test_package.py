"""The package surface: version, the `info` command, the registered operators, no run-time build."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import torch

import sage_attention
from conftest import torch_calls_module


def _declared_version(file_name, pattern):
    with open(os.path.join(os.path.dirname(__file__), "..", "..", file_name)) as f:
        return re.search(pattern, f.read(), re.MULTILINE).group(1)


def test_version_is_the_projects():
    """The package and its extension report the version that pyproject.toml and CMakeLists.txt declare."""
    declared = _declared_version("pyproject.toml", r'^version = "([^"]+)"')
    assert _declared_version("CMakeLists.txt", r"^project\(SageAttention VERSION ([0-9.]+)") == declared
    assert sage_attention.__version__ == declared
    assert sage_attention._C.__version__ == declared


def test_extension_is_prebuilt_inside_the_package():
    """The import loads a compiled module next to the package's files; nothing is built on import."""
    extension = sage_attention._C.__file__
    assert os.path.dirname(extension) == os.path.dirname(sage_attention.__file__)
    assert extension.endswith((".so", ".pyd"))
    probe = "import sys, sage_attention.integrations.transformers; print('torch.utils.cpp_extension' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False", "importing sage_attention loaded torch's JIT extension builder"


def test_operators_are_registered():
    for name in ("forward", "merge_state", "merge_state_inplace"):
        assert hasattr(torch.ops.sage_attention, name)


def test_info_command():
    result = subprocess.run([sys.executable, "-m", "sage_attention", "info"], capture_output=True, text=True,
                            check=True)
    assert f"sage-attention {sage_attention.__version__}" in result.stdout
    assert f"CUDA architectures compiled: {sage_attention.cuda_archs}" in result.stdout
    assert f"torch {torch.__version__}" in result.stdout
    assert "GPUs:" in result.stdout


def test_torch_calls_module_is_built_against_this_torch_and_loaded():
    """The CUDA calls take sage_attention._torch_calls; it declines what is not its call (host
    tensors, non-tensors) and checks its arguments."""
    torch_calls_module()
    from sage_attention import _ops, _torch_build
    assert (_torch_build.TORCH_VERSION, _torch_build.TORCH_CUDA) == (torch.__version__, torch.version.cuda)
    q = torch.zeros(1, 1, 4, 64)
    options = _ops._core_options(*_ops._with_defaults(()))
    assert _ops._torch_calls.forward(q, q, q, options._address, _ops.MAX_HEAD_DIM) is None
    assert _ops._torch_calls.forward("q", q, q, options._address, _ops.MAX_HEAD_DIM) is None
    with pytest.raises(TypeError, match="5 or 6 arguments"):
        _ops._torch_calls.forward(q, q, q)


def test_torch_calls_tell_plain_tensors_from_those_that_need_the_dispatcher():
    """With plain_only, _torch_calls answers NotImplemented (the caller's checks, then the
    dispatcher) for every tensor that _plain_tensors would not take; plain host tensors get
    None (not its call: the portable path)."""
    torch_calls_module()
    from sage_attention import _ops
    q = torch.zeros(1, 1, 4, 64)
    options = _ops._core_options(*_ops._with_defaults(()))

    def answers(odd):
        """_torch_calls' answer with `odd` as q, as k and as v (the other two plain)."""
        return [_ops._torch_calls.forward(*(odd if i == at else q for i in range(3)), options._address,
                                          _ops.MAX_HEAD_DIM, True) for at in range(3)]

    def not_plain(odd):
        """NotImplemented in every position, and the Python checks' verdict alike."""
        return answers(odd) == [NotImplemented] * 3 and not _ops._plain_tensors(odd, q, q)

    class Subclass(torch.Tensor):
        pass

    assert answers(q) == [None] * 3 and _ops._plain_tensors(q, q, q)
    with torch.no_grad():
        assert answers(q.clone().requires_grad_()) == [None] * 3  # no gradient to record
    assert not_plain(q.clone().requires_grad_())
    for other in (torch.nn.Parameter(q, requires_grad=False), q.as_subclass(Subclass), q.to("meta")):
        assert not_plain(other), other
    assert answers("q") == [NotImplemented] * 3
    seen, leaked = [], []
    torch.func.vmap(lambda row: seen.append(not_plain(row[None])) or leaked.append(row) or row)(q[0])
    torch.func.functionalize(lambda t: seen.append(not_plain(t)) or t)(q)
    torch.func.grad(lambda t: seen.append(not_plain(t)) or t.sum())(q)
    # Wrappers that the gradient check alone would not catch: detached, or made under no_grad.
    torch.func.grad(lambda t: seen.append(not_plain(t.detach())) or t.sum())(q)
    torch.func.grad(lambda t: seen.append(_no_grad(lambda: not_plain(t))) or t.sum())(q)
    assert seen == [True] * 5  # functorch and functionalization wrappers
    assert answers(leaked[0]) == [NotImplemented] * 3  # a wrapper used after its transform (3-D: no matter)


def _no_grad(fn):
    with torch.no_grad():
        return fn()


def test_torch_calls_module_runs_the_core_of_its_build():
    """_torch_calls carries no core of its own: it takes _C's entry points from a capsule named with
    the version, and without them its import fails (an ImportError the package turns into a warning)."""
    torch_calls_module()
    code = ("import sage_attention._C as C\n"
            "entries, C._framework_entries = C._framework_entries, None\n"
            "try:\n"
            "    import sage_attention._torch_calls\n"
            "except ImportError as e:\n"
            "    print('refused:', e)\n"
            "C._framework_entries = entries\n"
            "import sage_attention._torch_calls as T\n"
            "print('loaded:', callable(T.forward))\n")
    env = dict(os.environ, SAGE_TORCH_CALLS="0")  # (the package then leaves the module alone)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert f"refused: sage_attention._torch_calls: sage_attention._C of the same build (capsule " \
           f"sage_attention._C._framework_entries-{sage_attention.__version__}) is missing" in result.stdout
    assert "loaded: True" in result.stdout


def test_torch_calls_module_is_not_loaded_under_another_torch_or_when_turned_off(monkeypatch):
    torch_calls_module()
    import sage_attention
    from sage_attention import _ops, _torch_build
    monkeypatch.setattr(_torch_build, "TORCH_VERSION", "0.0.1")
    with pytest.warns(RuntimeWarning, match=r"built against torch 0\.0\.1 \(CUDA .*\) but runs with"):
        assert _ops._load_torch_calls() is None
    monkeypatch.undo()
    monkeypatch.setattr(_torch_build, "TORCH_CUDA", "9.9")
    with pytest.warns(RuntimeWarning, match=r"\(CUDA 9\.9\) but runs with"):
        assert _ops._load_torch_calls() is None
    monkeypatch.undo()
    # A module that does not load (a missing libtorch symbol, say): a warning, not a failed import.
    monkeypatch.delattr(sage_attention, "_torch_calls")
    monkeypatch.setitem(sys.modules, "sage_attention._torch_calls", None)
    with pytest.warns(RuntimeWarning, match="cannot load its module"):
        assert _ops._load_torch_calls() is None
    # A package staged without the module (configured for it, the target not built): said so.
    assert _ops._torch_calls_file_present()  # (this one has it: torch_calls_module above)
    monkeypatch.setattr(_ops, "_torch_calls_file_present", lambda: False)
    with pytest.warns(RuntimeWarning, match=r"its _torch_calls module is missing \(not built\)"):
        assert _ops._load_torch_calls() is None
    monkeypatch.undo()
    monkeypatch.setenv("SAGE_TORCH_CALLS", "0")
    assert _ops._load_torch_calls() is None
    monkeypatch.delenv("SAGE_TORCH_CALLS")
    assert _ops._load_torch_calls() is _ops._torch_calls
