#!/usr/bin/env bash
# On a GPU machine, after scripts/device-check.sh built build-dev: time one build under several
# environment settings against each other (a dispatch switch such as SAGE_SM90_Q_PREPASS), the
# way scripts/ab_bench.sh times several trees: bench/bench_attention.py once per setting and
# round, settings alternating (reversed in even rounds), ROUNDS rounds (default 2), then
# scripts/ab_compare.py.
#
#   scripts/env_ab.sh NAME=[VAR=VALUE] [NAME=[VAR=VALUE] ...] [-- bench_attention.py arguments]
#
# NAME= alone runs with nothing set. Example: in the kernel vs in the pre-pass at D=128:
#   scripts/env_ab.sh dispatch= kernel=SAGE_SM90_Q_PREPASS=0 -- --dims 128 --sizes 2048,4096
# Output (JSON and logs) in $OUT (or ./ab-out); end a device call with scripts/pack_out.sh.
set -uo pipefail
cd "$(dirname "$0")/.."
settings=()
while [[ $# -gt 0 && $1 != -- ]]; do
  [[ $1 == *=* ]] || { echo "env_ab: expected NAME=[VAR=VALUE], got '$1'" >&2; exit 2; }
  settings+=("$1")
  shift
done
[[ $# -gt 0 ]] && shift  # the --
bench_args=("$@")
[[ ${#bench_args[@]} -eq 0 ]] && bench_args=(--methods sage,sage-kernel,sdpa-cudnn)
[[ ${#settings[@]} -ge 2 ]] || { echo "env_ab: give at least two settings" >&2; exit 2; }
[[ -d build-dev/python/pkg ]] || { echo "env_ab: build-dev/python/pkg missing (run scripts/device-check.sh first)" >&2; exit 2; }
out=${OUT:-ab-out}
mkdir -p "$out"

reversed=()  # even rounds in reverse order (see scripts/ab_bench.sh)
for (( i=${#settings[@]}-1; i>=0; i-- )); do reversed+=("${settings[i]}"); done
for round in $(seq "${ROUNDS:-2}"); do
  order=("${settings[@]}")
  (( round % 2 == 0 )) && order=("${reversed[@]}")
  for setting in "${order[@]}"; do
    name=${setting%%=*} assignment=${setting#*=}
    env_args=()
    [[ -n $assignment ]] && env_args=("$assignment")
    env "${env_args[@]}" PYTHONPATH="$PWD/build-dev/python/pkg" timeout 300 python3 bench/bench_attention.py \
      "${bench_args[@]}" --out "$out/$name.$round.json" >"$out/$name.$round.log" 2>&1
    echo "round $round $name ($assignment): rc=$?"
  done
done
names=()
for setting in "${settings[@]}"; do names+=("${setting%%=*}"); done
python3 scripts/ab_compare.py "$out" "${names[@]}"
