#!/usr/bin/env python3
"""Per-instance fingerprints of the sm90 attention kernel's SASS, to compare builds.

The consumer loop's schedule moves with edits far from it (register allocation is global), and
an unlucky schedule costs ~2% (docs/perf-notes.md, sessions 10-11). So a change is shipped per
instance only where that instance's code is the code an A/B measured. For each kernel instance
in an object file or library this prints: its traits (head dim, causal, output type, smooth_q,
Q quantized in the kernel, claimed items, consumer warpgroups), an md5 of its instruction text (addresses and encodings left out),
the instructions of its key-tile loop (the innermost loop issuing both MMAs) as executed by a
tile that needs no mask (the forward branches inside the loop taken), the loop's local-memory
accesses (spills), and an md5 of the loop's
code (branch targets inside it relative to its start, those outside it all alike, so that code
moving elsewhere in the kernel does not change it). With two files it prints both side by side and marks the instances whose
code, and whose loop, differ.

  scripts/sass_instances.py build/src/CMakeFiles/sage_sm90.dir/cuda/sm90/qk_int8_pv_fp8_sm90_hdim128.cu.o [OTHER.o]
                            [--opcodes]

Needs no GPU: on a machine without one, build the object (or a cubin: nvcc -cubin
-gencode arch=compute_90a,code=sm_90a -O3 -std=c++20 -Isrc -Iinclude --expt-relaxed-constexpr
src/cuda/sm90/qk_int8_pv_fp8_sm90_hdim128.cu) and read it here. Needs cuobjdump: on PATH, the
toolkit's, or PyPI's under build-tools/ (python3 -m pip install --target build-tools
nvidia-cuda-cuobjdump nvidia-cuda-nvdisasm: cuobjdump -sass runs nvdisasm); `--cuobjdump PATH`
otherwise.
"""
import argparse
import collections
import glob
import hashlib
import os
import re
import shutil
import subprocess
import sys

INSTRUCTION = re.compile(r"/\*([0-9a-f]{4,6})\*/\s+(.*?)\s*;")
TRAITS = re.compile(r"FwdTraitsILi(\d+)ELb(\d)E(\d+)(\w+?)Lb(\d)ELb(\d)ELb(\d)ELi(\d)E")
BRANCH = re.compile(r"\bBRA\b.*?(0x[0-9a-f]+)$")  # "@!P0 BRA 0x42d0", "@P0 BRA P3, 0xb990"


def kernels(path, cuobjdump):
    """{mangled kernel name: [(address, instruction text)]} of every kernel in `path`, in file order
    (scripts/sass_loops.py reads any kernel through this too)."""
    sass = subprocess.run([cuobjdump, "-sass", path], check=True, capture_output=True, text=True).stdout
    result = collections.OrderedDict()
    code = None
    for line in sass.splitlines():
        if "Function :" in line:
            code = result.setdefault(line.split("Function :", 1)[1].strip(), [])
            continue
        match = INSTRUCTION.search(line)
        if code is not None and match:
            code.append((int(match.group(1), 16), match.group(2)))
    return result


def instances(path, cuobjdump):
    """{instance name: [(address, instruction text)]} of the sm90 forward kernels in `path`."""
    result = collections.OrderedDict()
    for mangled, code in kernels(path, cuobjdump).items():
        match = TRAITS.search(mangled)
        if match and "qk_int8_pv_fp8_sm90_kernel" in mangled:
            d, causal, _, out, smooth_q, quantize_q, claims, consumers = match.groups()
            name = (f"D{d} {'causal' if causal == '1' else 'full  '} {out[-8:]:>8} smooth_q={smooth_q} "
                    f"q_in_kernel={quantize_q} claims={claims} consumers={consumers}")
            result[name] = code
    return result


def loops(code):
    """[(start address, end address)] of every backward branch inside `code`, in its order."""
    addresses = {address for address, _ in code}
    found = []
    for address, text in code:
        match = BRANCH.search(text)
        if match and int(match.group(1), 16) < address and int(match.group(1), 16) in addresses:
            found.append((int(match.group(1), 16), address))
    return found


def opcode(text):
    """The opcode of an instruction with its modifiers (ISETP.GE.AND), its predicate left out."""
    return re.sub(r"^@!?U?P\w+\s+", "", text).split()[0]


ADDRESS = re.compile(r"\b0x([0-9a-f]+)\b")


def loop_instructions(code):
    """(instructions of the key-tile loop (the innermost loop that issues both MMAs), its forward
    branches inside it taken: what a tile that needs no mask executes; an md5 of the loop's code
    with its code addresses made relative to the loop's start, or "out" outside it; the loop's
    local-memory accesses (LDL / STL: spills))."""
    candidates = []
    for start, end in loops(code):
        body = [t for a, t in code if start <= a <= end]
        if any("IGMMA" in t for t in body) and any("QGMMA" in t for t in body):
            candidates.append((end - start, start, end))
    if not candidates:
        return [], "-", 0
    _, start, end = min(candidates)
    last = code[-1][0]

    def relative(match):  # a code address: inside the loop relative to its start, else just "out"
        value = int(match.group(1), 16)
        if value > last or value % 16 != 0:
            return match.group(0)
        return f"L{value - start:+#x}" if start <= value <= end else "out"

    body = "\n".join(ADDRESS.sub(relative, t) for a, t in code if start <= a <= end)
    local = sum(1 for address, text in code if start <= address <= end and re.search(r"\b(LDL|STL)\b", text))
    return unmasked_path(code, start, end), hashlib.md5(body.encode()).hexdigest()[:8], local


def unmasked_path(code, start, end):
    """The loop's instructions in the order a tile that needs no mask runs them: from its start,
    forward branches inside it taken where they are unconditional (over the masked tiles' second
    exponential loop) or the first after a wgmma wait (over the score masks), not taken otherwise
    (into the masked exponentials); branches out of the loop (barrier retries) not taken."""
    index = {address: i for i, (address, _) in enumerate(code)}
    i, path, after_wait = index[start], [], False
    while code[i][0] <= end:
        address, text = code[i]
        path.append(text)
        match = BRANCH.search(text)
        target = int(match.group(1), 16) if match else None
        if target is not None and address < target <= end and (not text.startswith("@") or after_wait):
            i = index[target]
        else:
            i += 1
        if address == end:
            break
        after_wait = text.startswith("WARPGROUP.DEPBAR")
    return path


def fingerprints(path, cuobjdump):
    rows = collections.OrderedDict()
    for name, code in instances(path, cuobjdump).items():
        digest = hashlib.md5("\n".join(text for _, text in code).encode()).hexdigest()[:12]
        rows[name] = (digest, *loop_instructions(code))
    return rows


def opcode_counts(path):
    return collections.Counter(opcode(text).split(".")[0] for text in path)


def default_cuobjdump():
    """cuobjdump on PATH, the toolkit's, or PyPI's (`pip install --target build-tools nvidia-cuda-cuobjdump`:
    not every CUDA install has it, the machines without a GPU here included)."""
    found = [shutil.which("cuobjdump"), "/usr/local/cuda/bin/cuobjdump",
             *sorted(glob.glob(os.path.join(os.path.dirname(__file__), "..", "build-tools", "nvidia", "*", "bin",
                                            "cuobjdump")))]
    return next((f for f in found if f and os.path.exists(f)), "cuobjdump")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="+", help="one or two object files, libraries or cubins")
    ap.add_argument("--cuobjdump", default=default_cuobjdump())
    ap.add_argument("--opcodes", action="store_true", help="also the loop's instructions per opcode (and the change)")
    args = ap.parse_args()
    if len(args.files) > 2:
        ap.error("one or two files")
    tables = [fingerprints(f, args.cuobjdump) for f in args.files]
    if not tables[0]:
        sys.exit(f"no sm90 forward kernel instances in {args.files[0]}")
    for name, (digest, loop, loop_digest, local) in tables[0].items():
        line = f"{name}  {digest}  loop {len(loop):4d} {loop_digest} ldl/stl {local}"
        other = tables[1].get(name) if len(tables) == 2 else None
        if len(tables) == 2:
            if other is None:
                line += "  | (absent)"
            else:
                verdict = "same" if other[0] == digest else "same loop" if other[2] == loop_digest else "DIFFERS"
                line += f"  | {other[0]}  loop {len(other[1]):4d} {other[2]} ldl/stl {other[3]}  {verdict}"
        print(line)
        if args.opcodes:
            counts = opcode_counts(loop)
            print("    " + ", ".join(f"{op} {n}" for op, n in counts.most_common()))
            if other is not None:
                was = opcode_counts(other[1])
                print("    first minus second:", {op: counts[op] - was[op] for op in counts | was if counts[op] != was[op]})


if __name__ == "__main__":
    main()
