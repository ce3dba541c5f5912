#!/usr/bin/env bash
# Builds everything and runs the whole test suite (CPU tests run everywhere;
# GPU tests run where a CUDA GPU is present and are counted as skipped elsewhere).
# Usage: scripts/test.sh [extra cmake -D options]   (BUILD_DIR, JOBS override)
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x /usr/local/cuda/bin/nvcc ] && export PATH="/usr/local/cuda/bin:$PATH"
build=${BUILD_DIR:-build}
jobs=${JOBS:-$(nproc)}
gen=(); command -v ninja >/dev/null && gen=(-G Ninja)
[ -f "$build/CMakeCache.txt" ] && gen=()
cmake -S . -B "$build" "${gen[@]}" -DCMAKE_BUILD_TYPE=Release -DSAGE_BUILD_TESTS=ON "$@"
cmake --build "$build" -j "$jobs"
ctest --test-dir "$build" -j "$jobs" --output-on-failure --no-tests=error
