# Sourced by the scripts/profile_*.sh scripts (on a GPU machine, after a build of the Python
# package in build-dev): the repository root as working directory, $out (from $OUT, default
# ./device-out) created, the package on PYTHONPATH (PKG=<staged package dir> for another build),
# and sage_calls N COUNT [ARGS]: a Python program for `python3 -c` making COUNT end-to-end calls
# sageattn(q, k, v[, ARGS]) at B=2, H=32, N keys, D=128, bf16 (the last of them the one a
# profile takes when the earlier ones warm the dispatch's caches).
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
out=${OUT:-device-out}
mkdir -p "$out"
export PYTHONPATH="${PKG:-$PWD/build-dev/python/pkg}${PYTHONPATH:+:$PYTHONPATH}"

sage_calls() {
  local n=$1 count=$2 args=${3:+, $3}
  cat <<PY
import torch, sage_attention as s
q, k, v = [torch.randn(2, 32, $n, 128, dtype=torch.bfloat16, device='cuda') for _ in range(3)]
for _ in range($count): s.sageattn(q, k, v$args)
torch.cuda.synchronize()
PY
}
