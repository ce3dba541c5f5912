#!/usr/bin/env bash
# Builds the library and the `sage` program, then runs the main job: one
# attention call on the GPU if there is one, otherwise the CPU reference on a
# small default problem (it says which). Extra arguments go to `sage run`.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x /usr/local/cuda/bin/nvcc ] && export PATH="/usr/local/cuda/bin:$PATH"
build=${BUILD_DIR:-build}
gen=(); command -v ninja >/dev/null && gen=(-G Ninja)
[ -f "$build/CMakeCache.txt" ] && gen=()
cmake -S . -B "$build" "${gen[@]}" -DCMAKE_BUILD_TYPE=Release -DSAGE_BUILD_TOOLS=ON >/dev/null
cmake --build "$build" -j "${JOBS:-$(nproc)}" --target sage
"$build/tools/sage/sage" run "$@"
