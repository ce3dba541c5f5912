#!/usr/bin/env python3
"""The loops of a kernel's SASS and what they hold, from an object file, without a GPU.

Static counts only (no profiler): for each kernel of an object (or library) whose name matches
--kernel, every backward branch's body in address order: its length in instructions and how
many of them are loads, stores, barriers, shuffles, conversions and local-memory (spill)
accesses. A loop's body holds every path through it (a branch on a whole tile and its partial
version are both counted); `--dump LO-HI` prints the instructions of an address range, to read
one path. What the counts are good for: an edit's instruction count and spills before a device
call (ptxas's -v report gives registers and spill bytes, not where they sit).

Needs cuobjdump, found as scripts/sass_instances.py finds it: on PATH, the toolkit's, or PyPI's
under build-tools/ (python3 -m pip install --target build-tools nvidia-cuda-cuobjdump
nvidia-cuda-nvdisasm: cuobjdump -sass runs nvdisasm; no GPU needed).

  scripts/sass_loops.py build/src/CMakeFiles/sage_attention.dir/cuda/quant/kv_head_jobs.cu.o \\
      --kernel 'kv_head_jobs_kernel.*bfloat16.*Li2'
  scripts/sass_loops.py OBJ --kernel REGEX --dump 0x7490-0x9710
"""
import argparse
import collections
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sass_instances import default_cuobjdump, kernels, loops, opcode  # noqa: E402

# Opcode prefixes worth a column (a prefix counts every variant, e.g. LDG.E.128.CONSTANT).
KINDS = ("LDG", "STG", "LDS", "STS", "LDL", "STL", "BAR", "SHFL", "F2I", "F2FP", "MUFU", "HGMMA", "IGMMA", "QGMMA")


def kind_counts(body):
    ops = collections.Counter(opcode(text) for _, text in body)
    return {kind: sum(n for op, n in ops.items() if op.startswith(kind)) for kind in KINDS}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("object", help="an object file or static library with sm_90a (or other) SASS")
    parser.add_argument("--kernel", default=".", help="regex on the mangled kernel name")
    parser.add_argument("--cuobjdump", default=default_cuobjdump())
    parser.add_argument("--dump", help="LO-HI: print the instructions at these addresses (hex)")
    args = parser.parse_args()
    matched = {name: code for name, code in kernels(args.object, args.cuobjdump).items() if re.search(args.kernel, name)}
    if not matched:
        sys.exit(f"sass_loops: no kernel in {args.object} matches {args.kernel!r}")
    for name, instructions in matched.items():
        print(f"{name}: {len(instructions)} instructions")
        if args.dump:
            lo, hi = (int(x, 16) for x in args.dump.split("-"))
            for address, text in instructions:
                if lo <= address <= hi:
                    print(f"  {address:#07x} {text}")
            continue
        for start, end in sorted(loops(instructions)):
            body = [(a, t) for a, t in instructions if start <= a <= end]
            counts = " ".join(f"{kind}={n}" for kind, n in kind_counts(body).items() if n)
            print(f"  loop {start:#07x}-{end:#07x}: {len(body):5d} instructions  {counts}")


if __name__ == "__main__":
    main()
