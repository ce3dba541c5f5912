#!/usr/bin/env bash
# On a GPU machine: the GPU time of each kernel of one sageattn call (ncu, clocks unlocked), per
# Python package build, at B=2 H=32 bf16 non-causal, D in {128, 64}, N in {1024, 4096}.
#   scripts/kernel_times.sh BUILD_DIR [BUILD_DIR ...]   (e.g. build-dev, build-ab-base)
set -uo pipefail
cd "$(dirname "$0")/.."
export PATH="/usr/local/cuda/bin:$PATH"
for build in "$@"; do
  for d in 128 64; do
    for n in 1024 4096; do
      times=$(PYTHONPATH="$PWD/$build/python/pkg" timeout 120 ncu --clock-control none \
        --metrics gpu__time_duration.sum python3 -c "
import torch, sage_attention as s
q, k, v = [torch.randn(2, 32, $n, $d, dtype=torch.bfloat16, device='cuda') for _ in range(3)]
s.sageattn(q, k, v); torch.cuda.synchronize()" 2>&1 |
        grep -E "^  [a-zA-Z].*\(|gpu__time_duration" |
        sed -E 's/\(anonymous namespace\):://g; s/^  (void )?([^<(]*).*/\2/; s/.*gpu__time_duration.sum[^0-9]*([0-9.]+).*/\1/' | paste - - |
        awk '{n = split($1, part, "::"); printf "%s %s us  ", part[n], $2}')
      echo "$build D=$d N=$n: $times"
    done
  done
done
