"""`python -m sage_attention info`: what this build is and what it can run on."""

from __future__ import annotations

import argparse
import sys

import torch

from . import _C, __version__, _ops


def build_facts() -> list[str]:
    calls = ("torch tensors in C++ (_torch_calls)" if _ops._torch_calls is not None
             else "portable binding (_torch_calls not built for this torch, or SAGE_TORCH_CALLS=0)")
    return [f"sage-attention {__version__}",
            f"  CUDA architectures compiled: {_C.cuda_archs}",
            f"  torch {torch.__version__} (CUDA {torch.version.cuda or 'none'})",
            f"  extension: {_C.__file__}",
            f"  GPU calls: {calls}"]


def gpu_facts() -> list[str]:
    if not torch.cuda.is_available():
        return ["GPUs: none visible to torch (CPU tensors run the emulation)"]
    lines = [f"GPUs: {torch.cuda.device_count()}"]
    for ordinal in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(ordinal)
        reason = _C.device_support_error(ordinal)
        support = "supported" if not reason else f"not supported ({reason})"
        lines.append(f"  cuda:{ordinal}: {props.name}, compute capability {props.major}.{props.minor}, "
                     f"{props.total_memory / 2**30:.0f} GiB: {support}")
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sage_attention")
    parser.add_argument("command", choices=["info"], help="info: build facts and the GPUs seen")
    parser.parse_args(argv)
    print("\n".join(build_facts() + gpu_facts()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
