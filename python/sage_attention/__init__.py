"""sage-attention: quantized attention (SageAttention2) for PyTorch.

    from sage_attention import sageattn
    out = sageattn(q, k, v, tensor_layout="HND", is_causal=False)

    # or SDPA's signature, or every SDPA call of a model:
    out = sage_attention.scaled_dot_product_attention(q, k, v, is_causal=True)
    with sage_attention.override_sdpa():
        model(inputs)

CUDA tensors run the GPU kernels (Hopper: INT8 QK^T + FP8 PV); CPU tensors
run the library's exact emulation of the kernels (slow; for tests).
The operators are torch.ops.sage_attention.*; the extension is compiled at
install time, never on import.
"""

import torch  # noqa: F401  (first: it loads the CUDA runtime _C links to, where only torch's wheels have it)

from ._C import __version__, cuda_archs
from . import _ops  # registers torch.ops.sage_attention.*
from ._attention import sageattn
from ._merge import merge_state, merge_state_
from ._sdpa import override_sdpa, scaled_dot_product_attention
from . import calibration
from .calibration import Calibrator, Plan

__all__ = ["sageattn", "scaled_dot_product_attention", "override_sdpa", "merge_state", "merge_state_",
           "calibration", "Calibrator", "Plan", "__version__", "cuda_archs"]
