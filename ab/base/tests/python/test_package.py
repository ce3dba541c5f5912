"""The package surface: version, the `info` command, the registered operators, no run-time build."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import torch

import sage_attention


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
