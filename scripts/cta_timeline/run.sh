#!/usr/bin/env bash
# On a GPU machine: the per-CTA timeline of calls of N keys (B=2 H=32 D=128 bf16, non-causal;
# N from $1, default 4096), under the environment the caller sets (SAGE_PREPASS_CONCURRENT=H:P,
# ...). Builds a copy of this tree with scripts/cta_timeline/apply.py in /tmp/cta-timeline (the
# GPU tests only), runs TraceTimeline.Calls, writes the records to $OUT/cta-timeline-N.log and
# prints analyze.py's summary of calls 5-7. REUSE=1 runs the copy built by an earlier run as it is
# (another environment over the same build: one build, ~100 s of a device call, for several runs).
set -euo pipefail
cd "$(dirname "$0")/../.."
export PATH="/usr/local/cuda/bin:$PATH"
n=${1:-4096}
out=${OUT:-device-out}
mkdir -p "$out"
copy=/tmp/cta-timeline
if [[ ${REUSE:-0} != 1 || ! -x $copy/build/tests/sage_gpu_tests ]]; then
  rm -rf "$copy" && mkdir -p "$copy"
  tar --exclude='./build*' --exclude=./.git --exclude=./ab -cf - . | tar -xf - -C "$copy"
  (cd "$copy" && python3 scripts/cta_timeline/apply.py &&
   cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DSAGE_CUDA_ARCHS=90a -DSAGE_BUILD_PYTHON=OFF \
     -DSAGE_BUILD_TOOLS=OFF >"$out/cta-timeline-configure.log" 2>&1 &&
   cmake --build build --target sage_gpu_tests -j"$(nproc)" >"$out/cta-timeline-build.log" 2>&1)
fi
SAGE_TRACE_N=$n timeout 120 "$copy/build/tests/sage_gpu_tests" --gtest_filter='TraceTimeline.*' \
  >"$out/cta-timeline-$n.log" 2>&1
python3 scripts/cta_timeline/analyze.py "$out/cta-timeline-$n.log"
