#!/usr/bin/env bash
# On a GPU machine, after scripts/device-check.sh built build-dev: one ncu profile of the sm90
# attention kernel (B=2, H=32, N=4096, D=128, bf16, non-causal) with the sections that explain
# its speed, plus the per-SASS-instruction stall samples of its hot loop. Output in $OUT.
# Usage: scripts/profile_sm90.sh [N]; PKG=<staged package dir> profiles another build than
# build-dev's (one configured with -DCMAKE_CUDA_FLAGS=-lineinfo also gets ncu-lines.csv: the
# samples per CUDA source line).
source "$(dirname "$0")/profile_common.sh"
n=${1:-4096}
call=$(sage_calls "$n" 1)
timeout 300 ncu --kernel-name regex:qk_int8_pv_fp8_sm90_kernel --launch-count 1 \
  --section SpeedOfLight --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis \
  --section WarpStateStats --section SchedulerStats --section InstructionStats --section Occupancy \
  --section SourceCounters --section LaunchStats --import-source yes -f -o "$out/sm90" python3 -c "$call" \
  >"$out/ncu.log" 2>&1
tail -3 "$out/ncu.log"
ncu --import "$out/sm90.ncu-rep" --page details >"$out/ncu-details.txt" 2>&1
ncu --import "$out/sm90.ncu-rep" --page source --csv --print-source sass >"$out/ncu-sass.csv" 2>&1
ncu --import "$out/sm90.ncu-rep" --page source --csv --print-source cuda \
  >"$out/ncu-lines.csv" 2>&1
grep -E "Duration|SM Frequency|Compute \(SM\) Throughput|Memory Throughput|L2 Cache Throughput|Issue Slots Busy|No Eligible|Active Warps Per|Eligible Warps|Warp Cycles Per Issued|Executed Ipc A" "$out/ncu-details.txt" | head -20
# Per-pipe utilization (which unit is the limit: tensor, XU/MUFU, FMA, ALU, ...).
ncu --import "$out/sm90.ncu-rep" --page raw 2>/dev/null | grep -E "sm__(inst_executed_pipe|pipe)_[a-z0-9_]+.*pct_of_peak_sustained_active" |
  awk '$NF+0 > 1' | sort -k3 -nr | head -20
