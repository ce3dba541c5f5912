#!/usr/bin/env bash
# Builds everything and runs the whole test suite (CPU tests run everywhere;
# GPU tests run where a CUDA GPU is present and are counted as skipped elsewhere).
# Where Python has torch, nanobind and pytest, the Python extension is built
# too and CTest runs the Python tests (tests/python) as `python_tests`.
# Usage: scripts/test.sh [extra cmake -D options]   (BUILD_DIR, JOBS override)
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x /usr/local/cuda/bin/nvcc ] && export PATH="/usr/local/cuda/bin:$PATH"
build=${BUILD_DIR:-build}
jobs=${JOBS:-$(nproc)}
gen=(); command -v ninja >/dev/null && gen=(-G Ninja)
[ -f "$build/CMakeCache.txt" ] && gen=()
python=()
if python3 -c "import torch, nanobind, pytest" 2>/dev/null; then
  python=(-DSAGE_BUILD_PYTHON=ON "-DPython_EXECUTABLE=$(command -v python3)")
fi
cmake -S . -B "$build" "${gen[@]}" -DCMAKE_BUILD_TYPE=Release -DSAGE_BUILD_TESTS=ON "${python[@]}" "$@"
cmake --build "$build" -j "$jobs"
if [ ! -x "$build/tests/sage_cpu_tests" ]; then  # CMake only warns, so that the library builds without it
  echo "test.sh: the GoogleTest suites were not built: GoogleTest was not found (apt-get install libgtest-dev)" >&2
  exit 1
fi
ctest --test-dir "$build" -j "$jobs" --output-on-failure --no-tests=error
