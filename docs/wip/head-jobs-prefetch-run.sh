#!/usr/bin/env bash
# On a GPU machine (H100/H200), in two device calls of under 10 minutes each: the session-63 plan
# for head-jobs-prefetch.patch (docs/perf-notes.md, session 63). Applies the patch to the working
# tree if it is not applied yet; output under $OUT (packed into $OUT/out.tgz at the end).
#   docs/wip/head-jobs-prefetch-run.sh 1   build, the head jobs' GPU tests and their memcheck, the A/B
#   docs/wip/head-jobs-prefetch-run.sh 2   timelines, ncu of the concurrent pre-pass, energy per call
# (Call 2 needs call 1's build-dev on the same warm machine; on a fresh one it builds it first.)
set -uo pipefail
cd "$(dirname "$0")/../.."
export PATH="/usr/local/cuda/bin:$PATH"
step=${1:?give the step: 1 or 2}
out=${OUT:-device-out}
mkdir -p "$out"
if ! grep -q kKvPrefetchRing src/cuda/quant/prepass.h; then
  git apply docs/wip/head-jobs-prefetch.patch || { echo "the patch does not apply"; exit 1; }
fi
nvidia-smi --query-gpu=name,driver_version,clocks.sm,power.draw --format=csv,noheader | tee "$out/gpu.txt"
[[ -x build-dev/tests/sage_gpu_tests ]] || OUT=$out scripts/device-check.sh none >"$out/build.txt" 2>&1
[[ -x build-dev/tests/sage_gpu_tests ]] || { tail -20 "$out/build.txt"; exit 1; }
export PYTHONPATH="$PWD/build-dev/python/pkg${PYTHONPATH:+:$PYTHONPATH}"

if [[ $step == 1 ]]; then
  timeout 240 build-dev/tests/sage_gpu_tests --gtest_filter='*KvHeadJob*:*Concurrent*' >"$out/gpu-tests.log" 2>&1
  echo "head-job GPU tests: rc=$? $(grep -E '^\[  (PASSED|FAILED)  \]' "$out/gpu-tests.log" | tr '\n' ' ')"
  grep -E "^\[  FAILED  \]|Failure" "$out/gpu-tests.log" | head -20
  timeout 150 compute-sanitizer --tool memcheck --error-exitcode 9 build-dev/tests/sage_gpu_tests \
    --gtest_filter='*KvHeadJob*Small*' >"$out/memcheck.log" 2>&1
  echo "memcheck (Small head-job cases): rc=$? $(grep -E 'ERROR SUMMARY' "$out/memcheck.log" | tail -1)"
  OUT=$out/ab TIMER=gpu ROUNDS=3 scripts/ab_bench.sh off=.,SAGE_PREPASS_KV_PREFETCH=0 l2=. \
    l1=.,SAGE_PREPASS_KV_PREFETCH=3 ring=.,SAGE_PREPASS_KV_PREFETCH=5 -- --dims 128 --sizes 1024,2048,3072,4096 \
    --causal 0,1 --rest 0 2>&1 | tail -30
else
  for mode in 0 5 3; do
    reuse=$([[ $mode == 0 ]] && echo 0 || echo 1)
    echo "== timeline, SAGE_PREPASS_KV_PREFETCH=$mode"
    SAGE_PREPASS_KV_PREFETCH=$mode REUSE=$reuse OUT=$out/tl$mode scripts/cta_timeline/run.sh 4096 2>&1 | tail -12
  done
  OUT=$out scripts/profile_head_jobs_concurrent.sh 4096 0 5 2>&1 | tail -80
  timeout 120 python3 scripts/energy_per_call.py 2>&1 | tail -14
fi
scripts/pack_out.sh
