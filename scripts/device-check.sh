#!/usr/bin/env bash
# On a GPU machine: build, run the GPU tests (plus compute-sanitizer: memcheck
# of the small ones, racecheck and synccheck of the small cluster and
# head-job cluster cases),
# check the SASS for the tensor-core instructions, run
# the Python tests (tests/python, GPU ones included) and the transformers
# example, build the Python package and run the benchmark. Logs and JSON go to $OUT (or
# ./device-out). Usage: scripts/device-check.sh [gtests|pytests|tests|bench|all|pip] [--quick]
# (tests = gtests + pytests; one device call holds at most 10 minutes, so the
# parts can run as separate calls over the same build directory; any other
# mode, e.g. `none`, only builds).
set -uo pipefail
cd "$(dirname "$0")/.."
mode=${1:-all}
quick=${2:-}
out=${OUT:-device-out}
mkdir -p "$out"
export PATH="/usr/local/cuda/bin:$PATH"
summary=()

nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm --format=csv,noheader | tee "$out/gpu.txt"
cmake -S . -B build-dev -G Ninja -DCMAKE_BUILD_TYPE=Release -DSAGE_CUDA_ARCHS=90a -DSAGE_BUILD_PYTHON=ON \
  "-DPython_EXECUTABLE=$(command -v python3)" >"$out/configure.log" 2>&1 || {
  tail -30 "$out/configure.log"; exit 1; }
if ! cmake --build build-dev -j16 >"$out/build.log" 2>&1; then
  grep -E "error|Error" "$out/build.log" | head -40; exit 1
fi
summary+=("build: ok")

# The importable package staged by the build (the Python files + the extension).
export PYTHONPATH="$PWD/build-dev/python/pkg${PYTHONPATH:+:$PYTHONPATH}"
export SAGE_CLI="$PWD/build-dev/tools/sage/sage"  # the CLI that the Python calibration tests drive

if [[ $mode == gtests || $mode == tests || $mode == all ]]; then
  # A kernel that deadlocks must not eat the whole lease: everything is timed out.
  timeout 60 build-dev/tools/sage/sage run --device gpu 2>&1 | tee "$out/sage-run.log" | tail -12
  summary+=("sage run --device gpu: rc=${PIPESTATUS[0]}")
  # The binary writes to the log file only, never into a pipe: a reader that
  # stops early (head) would kill it with SIGPIPE in mid-run, silently. The
  # excerpt is taken from the file afterwards. rc: 124 timeout, 128+N signal N.
  timeout 420 build-dev/tests/sage_gpu_tests >"$out/gpu-tests.log" 2>&1
  gpu_rc=$?
  grep -E "^\[  (FAILED|PASSED|SKIPPED) |Failure|Expected|Which is|accuracy|cos|seed" "$out/gpu-tests.log" | head -80
  summary+=("gpu tests: rc=$gpu_rc $(grep -E '^\[  PASSED  \]|^\[  FAILED  \]' "$out/gpu-tests.log" | tr '\n' ' ')")
  timeout 150 compute-sanitizer --tool memcheck --error-exitcode 9 build-dev/tests/sage_gpu_tests --gtest_filter='*Small*' \
    >"$out/memcheck.log" 2>&1
  summary+=("memcheck (Small tests): rc=$? $(grep -E 'ERROR SUMMARY' "$out/memcheck.log" | tail -1)")
  # Shared-memory races and barrier misuse in the kernels with the most
  # hand-written synchronization: the pre-pass's cluster kernel (held and
  # streamed heads, its ring refilled) and the attention kernel behind it,
  # and the head-jobs kernel split over clusters (its statistics exchange).
  for tool in racecheck synccheck; do
    timeout 90 compute-sanitizer --tool $tool --error-exitcode 9 build-dev/tests/sage_gpu_tests \
      --gtest_filter='*KvClusters*Small*:*KvHeadJobBuffers*Small*' >"$out/$tool.log" 2>&1
    summary+=("$tool (Small cluster and head-job tests): rc=$? $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$out/$tool.log" | tail -1)")
  done
  sass=$(cuobjdump --dump-sass build-dev/src/libsage_attention.a 2>/dev/null)
  summary+=("SASS: IGMMA=$(grep -c IGMMA <<<"$sass") QGMMA=$(grep -c QGMMA <<<"$sass") LDL/STL=$(grep -cE 'LDL|STL' <<<"$sass")")
  ctest --test-dir build-dev -L cpu -j16 >"$out/cpu-tests.log" 2>&1
  summary+=("cpu tests on device: $(grep -E 'tests passed' "$out/cpu-tests.log")")
  ctest --test-dir build-dev -R '^cli_run_gpu$' --output-on-failure >"$out/cli-gpu-test.log" 2>&1
  summary+=("cli_run_gpu (sage run --device gpu): $(grep -E 'tests passed|Skipped|Failed' "$out/cli-gpu-test.log" | head -1)")
fi

if [[ $mode == pytests || $mode == tests || $mode == all ]]; then
  # Python tests: the CPU ones and the GPU ones (compile, CUDA graphs, 2 GPUs where present,
  # transformers bf16 model; diffusers ones skip where diffusers is not installed).
  # (The device's torch is a CUDA build with its C++ headers: where the build was asked for
  # sage_attention._torch_calls, it must have made it, and its tests fail instead of skipping.)
  expect=0; grep -q '^SAGE_TORCH_CALLS:BOOL=ON' build-dev/CMakeCache.txt && expect=1
  SAGE_EXPECT_TORCH_CALLS=$expect timeout 900 python3 -m pytest -q -rs -p no:cacheprovider tests/python \
    >"$out/python-tests.log" 2>&1
  py_rc=$?
  grep -E "FAILED|Error|SKIPPED|passed|failed" "$out/python-tests.log" | tail -30
  summary+=("python tests: rc=$py_rc $(tail -1 "$out/python-tests.log")")
  timeout 300 python3 examples/transformers_llama.py >"$out/transformers-llama.log" 2>&1
  summary+=("examples/transformers_llama.py: rc=$? $(tail -1 "$out/transformers-llama.log")")
  timeout 300 python3 examples/calibrate_llama.py >"$out/calibrate-llama.log" 2>&1
  summary+=("examples/calibrate_llama.py: rc=$? $(grep -E '^plan:' "$out/calibrate-llama.log")")
fi

if [[ $mode == bench || $mode == all ]]; then
  # Where the end-to-end time goes: GPU time of each kernel, and host time per call.
  timeout 120 ncu --clock-control none --metrics gpu__time_duration.sum python3 -c "
import torch, sage_attention as s
q, k, v = [torch.randn(2, 32, 4096, 128, dtype=torch.bfloat16, device='cuda') for _ in range(3)]
s.sageattn(q, k, v); torch.cuda.synchronize()" 2>&1 | grep -E "^  [a-z]|duration" | sed -E 's/\(.*//' >"$out/kernel-times.txt"
  paste - - <"$out/kernel-times.txt" | awk '{print "  " $1, $NF " us"}' | sed 's/void //'
  timeout 60 python3 scripts/host_overhead.py 2>&1 | tail -2
  PYTHONUNBUFFERED=1 timeout 300 python3 bench/bench_attention.py $quick --out "$out/bench.json" 2>&1 | tee "$out/bench.log"
  timeout 120 python3 scripts/smoothq_time.py 2>&1 | tee "$out/smoothq-time.log"
  summary+=("bench: $out/bench.json")
fi

if [[ $mode == pip ]]; then
  # pip install . builds the same CMake project again (into build/python-<tag>).
  python3 -m pip install --no-build-isolation --no-deps . >"$out/pip.log" 2>&1
  summary+=("pip install --no-build-isolation .: rc=$?")
  wheels=$(mktemp -d)  # not under $OUT: the wheel carries the whole CUDA library
  python3 -m pip wheel --no-build-isolation --no-deps -w "$wheels" . >"$out/wheel.log" 2>&1
  summary+=("pip wheel --no-build-isolation .: rc=$? $(cd "$wheels" && ls -s --block-size=M ./*.whl 2>/dev/null)")
  (cd /tmp && env -u PYTHONPATH python3 -m sage_attention info && env -u PYTHONPATH python3 -c "import torch, sage_attention as s; q=torch.randn(1,2,300,128,dtype=torch.bfloat16,device='cuda'); print('pip package', s.__version__, s.sageattn(q,q,q).shape)") 2>&1 | tail -8
fi

printf '\n==== summary ====\n'
printf '%s\n' "${summary[@]}"
