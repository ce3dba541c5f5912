#!/usr/bin/env python3
"""Instructions of the sm90 attention kernel's key-tile loop, from SASS compiled here (no GPU needed).

Compiles one of the sm90 instance files to a cubin (nvcc, -Xptxas -v for its registers and spills),
disassembles the kernels whose mangled name matches --kernel with cuobjdump, and prints for each the
instructions one unmasked key tile executes per thread: the loop is the backward branch whose body
holds the Q K^T (IGMMA), the P V^T (QGMMA) and the exponentials (MUFU.EX2); from it are taken out
the score masks (the block the branch after the Q K^T wait skips) and the masked tiles' second
exponential loop (from the unconditional branch over it to its BSYNC). Counts per opcode, and
against --base (another cubin's count) when given. The same count from a profile of the running
kernel is scripts/sass_counts.py's (ncu on a GPU); this one is for comparing builds before a device
call.

cuobjdump is not in every CUDA install; PyPI has it (package nvidia-cuda-cuobjdump):
  python3 -m pip install --target build-tools nvidia-cuda-cuobjdump
and this script looks for it on PATH, then under build-tools/.

  python3 scripts/sass_loop.py [--source src/cuda/sm90/qk_int8_pv_fp8_sm90_hdim128.cu]
                               [--kernel 'ILi128ELb0E13__nv_bfloat16Lb0ELb1ELb0ELi3E'] [--save-cubin F] [--base F]
"""
import argparse
import collections
import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def find_cuobjdump():
    found = shutil.which("cuobjdump")
    if found:
        return found
    local = sorted(glob.glob(os.path.join(ROOT, "build-tools", "nvidia", "*", "bin", "cuobjdump")))
    if local:
        return local[-1]
    sys.exit("sass_loop: no cuobjdump on PATH or under build-tools/ "
             "(python3 -m pip install --target build-tools nvidia-cuda-cuobjdump)")


def compile_cubin(source, cubin):
    cmd = ["nvcc", "-std=c++20", "-gencode", "arch=compute_90a,code=sm_90a", "-O3", "-Isrc", "-Iinclude",
           "--expt-relaxed-constexpr", "-cubin", "-Xptxas", "-v", "-o", cubin, source]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(done.stderr)
    return done.stderr  # ptxas -v report


def kernels_of(cuobjdump, cubin, pattern):
    """{mangled name: [opcode text per instruction]} of the kernels matching `pattern`."""
    text = subprocess.run([cuobjdump, "-sass", cubin], capture_output=True, text=True, check=True).stdout
    kernels, name = {}, None
    for line in text.splitlines():
        head = re.match(r"\s*Function : (\S+)", line)
        if head:
            name = head.group(1) if re.search(pattern, head.group(1)) else None
            if name:
                kernels[name] = []
            continue
        instr = re.match(r"\s*/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;", line)
        if name and instr:
            kernels[name].append((int(instr.group(1), 16), instr.group(2)))
    return kernels


def opcode(text):
    return re.sub(r"^@!?U?P\w+\s+", "", text).split()[0].split(".")[0]


def unmasked_tile(instrs):
    """The opcodes one unmasked key tile runs (see the module text), or None if no loop is found."""
    index = {addr: i for i, (addr, _) in enumerate(instrs)}
    best = None
    for end, (addr, text) in enumerate(instrs):
        target = re.search(r"BRA 0x([0-9a-f]+)$", text)
        if not target or int(target.group(1), 16) >= addr or int(target.group(1), 16) not in index:
            continue
        start = index[int(target.group(1), 16)]
        body = [t for _, t in instrs[start:end + 1]]
        if all(any(op in t for t in body) for op in ("IGMMA", "QGMMA", "MUFU.EX2")):
            if best is None or end - start < best[1] - best[0]:
                best = (start, end)
    if best is None:
        return None
    start, end = best
    skip = set()
    wait = next(i for i in range(start, end) if instrs[i][1].startswith("WARPGROUP.DEPBAR"))
    over_masks = re.match(r"@!?P\d BRA 0x([0-9a-f]+)$", instrs[wait + 1][1])
    if over_masks:
        skip.update(range(wait + 2, index[int(over_masks.group(1), 16)]))
    jump = next((i for i in range(wait, end) if re.match(r"BRA 0x", instrs[i][1])), None)
    if jump is not None:
        sync = next((i for i in range(jump, end) if instrs[i][1].startswith("BSYNC")), end)
        skip.update(range(jump, sync))
    return [opcode(instrs[i][1]) for i in range(start, end + 1) if i not in skip]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", default="src/cuda/sm90/qk_int8_pv_fp8_sm90_hdim128.cu")
    ap.add_argument("--kernel", default="ILi128ELb0E13__nv_bfloat16Lb0ELb1ELb0ELi3E",
                    help="regex on the mangled name (default: non-causal, bf16, Q quantized in the kernel, 3 consumers)")
    ap.add_argument("--save-cubin", help="keep the cubin here (to pass as --base of a later run)")
    ap.add_argument("--base", help="a cubin to compare against")
    args = ap.parse_args()
    cuobjdump = find_cuobjdump()
    with tempfile.TemporaryDirectory() as tmp:
        cubin = args.save_cubin or os.path.join(tmp, "k.cubin")
        report = compile_cubin(args.source, cubin)
        base = kernels_of(cuobjdump, args.base, args.kernel) if args.base else {}
        for name, instrs in kernels_of(cuobjdump, cubin, args.kernel).items():
            spills = re.search(re.escape(name) + r".*?\n.*?(\d+ bytes stack frame.*)", report)
            print(name, "\n  ", spills.group(1) if spills else "")
            tile = unmasked_tile(instrs)
            if tile is None:
                print("   no key-tile loop found")
                continue
            counts = collections.Counter(tile)
            print(f"   {len(tile)} instructions per unmasked key tile and thread:",
                  ", ".join(f"{op} {n}" for op, n in counts.most_common()))
            if name in base:
                was = collections.Counter(unmasked_tile(base[name]) or [])
                change = {op: counts[op] - was[op] for op in counts | was if counts[op] != was[op]}
                print(f"   against --base: {len(tile) - sum(was.values()):+d}", change)


if __name__ == "__main__":
    main()
