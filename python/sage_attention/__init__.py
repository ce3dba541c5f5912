"""sage-attention: quantized attention (SageAttention2) for PyTorch.

    from sage_attention import sageattn
    out = sageattn(q, k, v, tensor_layout="HND", is_causal=False)

CUDA tensors run the GPU kernels (Hopper: INT8 QK^T + FP8 PV); CPU tensors
run the library's exact emulation of the same numerics (slow; for tests).
"""

from ._attention import sageattn
from ._C import __version__, cuda_archs

__all__ = ["sageattn", "__version__", "cuda_archs"]
