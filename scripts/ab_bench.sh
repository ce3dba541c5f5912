#!/usr/bin/env bash
# On a GPU machine: time two or more source trees (or one tree under several environment
# settings) against each other in one call, the way every kernel change is judged here (absolute
# times drift between lent machines by 5-10%; runs in one call, interleaved, do not).
#
#   scripts/ab_bench.sh NAME=DIR[,VAR=VALUE] [NAME=DIR[,VAR=VALUE] ...] [-- bench_attention.py arguments]
#
# Each DIR (the working tree ".", or a copy such as one made here with
#   mkdir -p ab/base && git archive HEAD | tar -x -C ab/base
# which travels to the GPU machine as an untracked directory) gets one build of the Python
# package (build-ab-NAME, NAME of its first variant; the whole build without the tests and the
# CLI, so that the package has its _torch_calls module whatever the copy's targets say: without it
# its calls pay the portable binding's host time), all built in parallel. A variant's
# VAR=VALUE is set while it runs: a dispatch switch timed in one build, e.g. Q quantized by the
# pre-pass against the dispatch's choice (the kernel, where it can) at D=128:
#   scripts/ab_bench.sh dispatch=. prepass=.,SAGE_SM90_Q_PREPASS=1 -- --dims 128 --sizes 2048,4096
# Then bench/bench_attention.py (of the working tree) runs once per variant and round, the
# variants alternating (in reverse order in even rounds: a GPU warming up over a round favoured
# the first one every time at N=16384), ROUNDS rounds (default 2), and scripts/ab_compare.py
# prints each method's mean time per variant and its change against the first.
# TIMER=gpu times with scripts/gpu_time.py instead (GPU time only, calls launched back to back:
# the arguments after -- are its own); its 1K figures do not carry the host's noise.
# Default benchmark arguments: --methods sage,sage-kernel,sdpa-cudnn (cuDNN as the yardstick of
# each run). Before any timing, each variant's build must agree with the CPU emulation on a few
# calls (scripts/ab_smoke.py); one that does not is left out (SMOKE=0: no check). Output (JSON
# and logs) in $OUT (or ./ab-out); a device call brings back only a few files, so end it with
# scripts/pack_out.sh (one archive of $OUT).
set -uo pipefail
cd "$(dirname "$0")/.."
export PATH="/usr/local/cuda/bin:$PATH"

variants=()
declare -A seen_names
while [[ $# -gt 0 && $1 != -- ]]; do
  # NAME: letters, digits, - and _ (it names files); one optional VAR=VALUE.
  [[ $1 =~ ^[A-Za-z0-9_-]+=[^,]+(,[A-Za-z_][A-Za-z0-9_]*=[^,]*)?$ ]] ||
    { echo "ab_bench: expected NAME=DIR[,VAR=VALUE], got '$1'" >&2; exit 2; }
  [[ -z ${seen_names[${1%%=*}]:-} ]] || { echo "ab_bench: variant name '${1%%=*}' given twice" >&2; exit 2; }
  seen_names[${1%%=*}]=1
  variants+=("$1")
  shift
done
[[ $# -gt 0 ]] && shift  # the --
bench_args=("$@")
[[ ${#bench_args[@]} -eq 0 && ${TIMER:-bench} != gpu ]] && bench_args=(--methods sage,sage-kernel,sdpa-cudnn)
[[ ${#variants[@]} -ge 2 ]] || { echo "ab_bench: give at least two variants" >&2; exit 2; }
out=${OUT:-ab-out}
mkdir -p "$out"

name_of() { echo "${1%%=*}"; }
spec_of() { echo "${1#*=}"; }
dir_of() { local spec; spec=$(spec_of "$1"); echo "${spec%%,*}"; }
assignment_of() { local spec; spec=$(spec_of "$1"); [[ $spec == *,* ]] && echo "${spec#*,}"; }

declare -A build_of  # DIR -> its build directory
for variant in "${variants[@]}"; do
  dir=$(dir_of "$variant")
  [[ -n ${build_of[$dir]:-} ]] || build_of[$dir]="build-ab-$(name_of "$variant")"
done
py=$(command -v python3)
jobs=$(( $(nproc) / ${#build_of[@]} ))
start=$(date +%s)
for dir in "${!build_of[@]}"; do
  build=${build_of[$dir]}
  (cmake -S "$dir" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DSAGE_CUDA_ARCHS=90a \
     -DSAGE_BUILD_PYTHON=ON -DSAGE_BUILD_TESTS=OFF -DSAGE_BUILD_TOOLS=OFF "-DPython_EXECUTABLE=$py" >"$out/configure-${build#build-ab-}.log" 2>&1 &&
   cmake --build "$build" -j"$jobs" >"$out/build-${build#build-ab-}.log" 2>&1
   echo "build $build ($dir): rc=$?") &
done
wait
echo "builds: $(( $(date +%s) - start )) s"

# A variant whose output disagrees with the CPU emulation (or whose kernel hangs) is not timed.
# SMOKE=0 times every variant unchecked: for a ceiling probe, a build that skips a piece of
# the work on purpose (its output is wrong by design), timed to learn what that piece costs.
checked=()
[[ ${SMOKE:-1} == 0 ]] && { echo "smoke checks skipped (SMOKE=0): outputs not checked"; checked=("${variants[@]}"); variants=(); }
for variant in "${variants[@]}"; do
  name=$(name_of "$variant") assignment=$(assignment_of "$variant")
  env_args=()
  [[ -n $assignment ]] && env_args=("$assignment")
  env "${env_args[@]}" PYTHONPATH="$PWD/${build_of[$(dir_of "$variant")]}/python/pkg" timeout 180 \
    python3 scripts/ab_smoke.py >"$out/smoke-$name.log" 2>&1
  rc=$?
  echo "smoke check $name: rc=$rc $(tail -1 "$out/smoke-$name.log" | cut -c1-160)"
  (( rc == 0 )) && checked+=("$variant")
done
variants=("${checked[@]}")
[[ ${#variants[@]} -ge 1 ]] || { echo "ab_bench: no variant passed its smoke check" >&2; exit 1; }

reversed=()
for (( i=${#variants[@]}-1; i>=0; i-- )); do reversed+=("${variants[i]}"); done
for round in $(seq "${ROUNDS:-2}"); do
  order=("${variants[@]}")
  (( round % 2 == 0 )) && order=("${reversed[@]}")
  for variant in "${order[@]}"; do
    name=$(name_of "$variant") assignment=$(assignment_of "$variant")
    env_args=()
    [[ -n $assignment ]] && env_args=("$assignment")
    if [[ ${TIMER:-bench} == gpu ]]; then
      env "${env_args[@]}" PYTHONPATH="$PWD/${build_of[$(dir_of "$variant")]}/python/pkg" timeout 300 \
        python3 scripts/gpu_time.py "${bench_args[@]}" --tag "$name" >>"$out/gpu-$name.jsonl" 2>"$out/$name.$round.log"
    else
      env "${env_args[@]}" PYTHONPATH="$PWD/${build_of[$(dir_of "$variant")]}/python/pkg" timeout 300 \
        python3 bench/bench_attention.py "${bench_args[@]}" --out "$out/$name.$round.json" >"$out/$name.$round.log" 2>&1
    fi
    echo "round $round $name${assignment:+ ($assignment)}: rc=$?"
  done
done
if [[ ${TIMER:-bench} == gpu ]]; then
  python3 scripts/gpu_time.py --compare "$out" "${variants[@]%%=*}"
else
  python3 scripts/ab_compare.py "$out" "${variants[@]%%=*}"
fi
