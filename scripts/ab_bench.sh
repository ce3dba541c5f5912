#!/usr/bin/env bash
# On a GPU machine: time two or more source trees against each other in one call, the way every
# kernel change is judged here (absolute times drift between lent machines by 5-10%; runs in one
# call, interleaved, do not).
#
#   scripts/ab_bench.sh NAME=DIR [NAME=DIR ...] [-- bench_attention.py arguments]
#
# Each DIR (the working tree ".", or a copy such as one made here with
#   mkdir -p ab/base && git archive HEAD | tar -x -C ab/base
# which travels to the GPU machine as an untracked directory) gets its own build of the Python
# package in build-ab-NAME, all built in parallel. Then bench/bench_attention.py (of the working
# tree) runs once per tree and round, the trees alternating (in reverse order in even rounds),
# ROUNDS rounds (default 2), and
# scripts/ab_compare.py prints each method's mean time per tree and its change against the first.
# Default benchmark arguments: --methods sage,sage-kernel,sdpa-cudnn (cuDNN as the yardstick of
# each run). Output (JSON and logs) in $OUT (or ./ab-out); a device call brings back only a few
# files, so end it with scripts/pack_out.sh (one archive of $OUT).
set -uo pipefail
cd "$(dirname "$0")/.."
export PATH="/usr/local/cuda/bin:$PATH"

trees=()
while [[ $# -gt 0 && $1 != -- ]]; do
  [[ $1 == *=* ]] || { echo "ab_bench: expected NAME=DIR, got '$1'" >&2; exit 2; }
  trees+=("$1")
  shift
done
[[ $# -gt 0 ]] && shift  # the --
bench_args=("$@")
[[ ${#bench_args[@]} -eq 0 ]] && bench_args=(--methods sage,sage-kernel,sdpa-cudnn)
[[ ${#trees[@]} -ge 2 ]] || { echo "ab_bench: give at least two NAME=DIR trees" >&2; exit 2; }
out=${OUT:-ab-out}
mkdir -p "$out"

py=$(command -v python3)
jobs=$(( $(nproc) / ${#trees[@]} ))
start=$(date +%s)
for tree in "${trees[@]}"; do
  name=${tree%%=*} dir=${tree#*=}
  (cmake -S "$dir" -B "build-ab-$name" -G Ninja -DCMAKE_BUILD_TYPE=Release -DSAGE_CUDA_ARCHS=90a \
     -DSAGE_BUILD_PYTHON=ON -DSAGE_BUILD_TESTS=OFF "-DPython_EXECUTABLE=$py" >"$out/configure-$name.log" 2>&1 &&
   cmake --build "build-ab-$name" --target _C sage_python_package -j"$jobs" >"$out/build-$name.log" 2>&1
   echo "build $name ($dir): rc=$?") &
done
wait
echo "builds: $(( $(date +%s) - start )) s"

# Even rounds run the trees in reverse order: a GPU that warms up over a round would otherwise
# favour the first tree every time (seen at N=16384, where one run takes longest).
reversed=()
for (( i=${#trees[@]}-1; i>=0; i-- )); do reversed+=("${trees[i]}"); done
for round in $(seq "${ROUNDS:-2}"); do
  order=("${trees[@]}")
  (( round % 2 == 0 )) && order=("${reversed[@]}")
  for tree in "${order[@]}"; do
    name=${tree%%=*}
    PYTHONPATH="$PWD/build-ab-$name/python/pkg" timeout 300 python3 bench/bench_attention.py "${bench_args[@]}" \
      --out "$out/$name.$round.json" >"$out/$name.$round.log" 2>&1
    echo "round $round $name: rc=$?"
  done
done
python3 scripts/ab_compare.py "$out" "${trees[@]%%=*}"
